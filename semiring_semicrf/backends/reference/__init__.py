"""The reference rung: the generic streaming scan (:mod:`.scan`) and what
falls out of it, in any semiring, on any potentials and device.

- Log: the scan in `LogSemiring`; the posterior is the gradient of its
  `log Z` with respect to the factors (autograd, one sequence at a time:
  this rung is the plainest form, not the fast one);
- Viterbi and k-best: the scan in `MaxSemiring` / `KMaxSemiring(k)` with
  back-pointers (:mod:`.decode`);
- samples: forward filtering, backward sampling from the scan's tables
  (:mod:`.sample`);
- the generic scan of any semiring (`scan`): eager, block-checkpointed
  (:func:`~semiring_semicrf.autograd.checkpointed_scan`) when a gradient is
  tracked.
"""
from __future__ import annotations

import torch

from ...posterior import Posterior
from ...semirings import LogSemiring
from ..base import QUERIES, Backend
from .decode import kbest
from .sample import sample
from .scan import RENORM_INTERVAL, ScanProgram, ScanTables, prepare, scan, tracks_grad

__all__ = ["ReferenceBackend", "ScanProgram", "ScanTables", "RENORM_INTERVAL", "prepare", "scan", "kbest", "sample"]

#: The factors whose gradients are the posterior's fields.
_FACTOR_FIELDS = (("enter", "segment_start"), ("leave", "segment_end"), ("transition", "transition"),
                  ("duration", "duration"), ("start", "first"), ("end", "last"))


class ReferenceBackend(Backend):
    """The generic scan: every query, any potentials."""

    name = "reference"
    queries = frozenset(QUERIES)

    def inside(self, prepared, low_memory: bool = False):
        del low_memory  # the reference keeps nothing between its two passes
        with torch.no_grad():
            return scan(prepared, LogSemiring()), None

    def outside(self, prepared, saved) -> Posterior:
        """The expected counts as gradients of each sequence's `log Z` with
        respect to its factors (`enter` -> segment starts, `leave` -> segment
        ends, ...). Structured potentials only."""
        if prepared.is_explicit:
            raise TypeError("the reference posterior takes structured Factors; explicit edges go through "
                            "semiring_semicrf.autograd.posterior (edge marginals)")
        rows = [self._sequence_posterior(prepared, b) for b in range(prepared.B)]
        fields = {}
        for name in Posterior.FIELDS:
            values = [getattr(row, name) for row in rows]
            fields[name] = torch.stack(values) if values else _empty_field(prepared, name)
        return Posterior(**fields)

    @staticmethod
    def _sequence_posterior(prepared, b: int) -> Posterior:
        one = prepared.potentials[b].factors().to(prepared.dtype)
        leaves = {name: getattr(one, name).detach().clone().requires_grad_() for name, _ in _FACTOR_FIELDS}
        with torch.enable_grad():
            log_z = scan(one.replace(**leaves), LogSemiring())
            grads = torch.autograd.grad(log_z.sum(), list(leaves.values()), allow_unused=True)
        fields = {field: (torch.zeros_like(leaves[name]) if g is None else g)
                  for (name, field), g in zip(_FACTOR_FIELDS, grads)}
        for field in ("segment_start", "segment_end", "duration"):
            fields[field] = fields[field][0]
        return Posterior(log_z=log_z.detach()[0], **fields)

    def viterbi(self, prepared):
        scores, labels, starts = kbest(prepared, 1)
        return scores[0], labels[0], starts[0]

    def kbest(self, prepared, k: int):
        return kbest(prepared, k)

    def sample(self, prepared, num_samples: int, generator=None):
        return sample(prepared, num_samples, generator)

    def scan(self, prepared, semiring):
        from ...autograd.checkpointed import checkpointed_scan  # autograd builds on this package

        return checkpointed_scan(prepared, semiring) if tracks_grad(prepared) else scan(prepared, semiring)


def _empty_field(prepared, name: str) -> torch.Tensor:
    """A field of a Posterior of zero sequences."""
    B, T, K, C = prepared.B, prepared.T, prepared.K, prepared.C
    shapes = {"log_z": (B,), "segment_start": (B, T, C), "segment_end": (B, T, C), "duration": (B, K, C),
              "transition": (B, K, C, C) if prepared.duration_dependent else (B, C, C), "first": (B, C),
              "last": (B, C)}
    return torch.zeros(shapes[name], dtype=prepared.dtype, device=prepared.device)
