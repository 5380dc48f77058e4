"""The reference rung: the generic streaming scan (:mod:`.scan`) and what
falls out of it, in any semiring, on any potentials and device.

- Log: the scan in `LogSemiring`; the posterior is the gradient of its
  `log Z` with respect to the factors (autograd, one sequence at a time:
  this rung is the plainest form, not the fast one), and its tangent (a
  Hessian-vector product) the gradient of that gradient's directional
  derivative (double autograd through the scan);
- entropy, cross-entropy, KL: the scan in `EntropySemiring`,
  `CrossEntropySemiring`, `KLDivergenceSemiring`;
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
from ...semirings import CrossEntropySemiring, EntropySemiring, KLDivergenceSemiring, LogSemiring
from ..base import QUERIES, Backend
from .decode import kbest
from .sample import sample
from .scan import RENORM_INTERVAL, ScanProgram, ScanTables, prepare, scan, tracks_grad

__all__ = ["ReferenceBackend", "ScanProgram", "ScanTables", "RENORM_INTERVAL", "prepare", "scan", "kbest", "sample"]

#: The factors whose gradients are the posterior's fields.
_FACTOR_FIELDS = (("enter", "segment_start"), ("leave", "segment_end"), ("transition", "transition"),
                  ("duration", "duration"), ("start", "first"), ("end", "last"))

#: The expectation semiring of each "information" quantity.
_INFORMATION = {"entropy": EntropySemiring(), "cross_entropy": CrossEntropySemiring(),
                "kl": KLDivergenceSemiring()}


class ReferenceBackend(Backend):
    """The generic scan: every query, any potentials."""

    name = "reference"
    queries = frozenset(QUERIES)

    def inside(self, prepared, low_memory: bool = False):
        del low_memory  # the reference keeps nothing between its two passes
        with torch.no_grad():
            return scan(prepared, LogSemiring()), None

    def outside(self, prepared, saved, keep: bool = False) -> Posterior:
        """The expected counts as gradients of each sequence's `log Z` with
        respect to its factors (`enter` -> segment starts, `leave` -> segment
        ends, ...). Structured potentials only."""
        return _posteriors(prepared)[0]

    def hvp(self, prepared, tangent, saved=None, posterior: bool = True):
        """The posterior and its tangent along `tangent`: the gradient of
        `<grad log Z, tangent>` with respect to the factors, per sequence
        (the posterior comes with it, asked for or not)."""
        del saved, posterior  # the reference keeps nothing between its passes
        return _posteriors(prepared, tangent)

    def information(self, prepared, q, kind: str, tangent=None):
        """The scan in the expectation semiring of `kind`."""
        del tangent  # the reference keeps nothing between its passes
        with torch.no_grad():
            return scan(prepared if q is None else (prepared, q), _INFORMATION[kind]), None

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


def _posteriors(prepared, tangent=None) -> tuple:
    """`(posterior,)`, or `(posterior, its tangent)` along the factors
    `tangent`, one sequence at a time."""
    if prepared.is_explicit:
        raise TypeError("the reference posterior takes structured Factors; explicit edges go through "
                        "semiring_semicrf.autograd.posterior (edge marginals)")
    rows = [_sequence_posteriors(prepared, b, tangent) for b in range(prepared.B)]
    lanes = []
    for lane in range(1 if tangent is None else 2):
        fields = {}
        for name in Posterior.FIELDS:
            values = [getattr(row[lane], name) for row in rows]
            fields[name] = torch.stack(values) if values else _empty_field(prepared, name)
        lanes.append(Posterior(**fields))
    return tuple(lanes)


def _sequence_posteriors(prepared, b: int, tangent=None) -> tuple:
    """Sequence b's posterior (the gradient of its log Z with respect to its
    factors) and, along `tangent`, the gradient of the directional
    derivative `<grad log Z, tangent>` (its Hessian times the tangent)."""
    one = prepared.potentials[b].factors().to(prepared.dtype)
    leaves = {name: getattr(one, name).detach().clone().requires_grad_() for name, _ in _FACTOR_FIELDS}
    inputs = list(leaves.values())
    with torch.enable_grad():
        log_z = scan(one.replace(**leaves), LogSemiring())
        grads = _filled(torch.autograd.grad(log_z.sum(), inputs, allow_unused=True, create_graph=tangent is not None),
                        inputs)
        rows = [(log_z.detach()[0], [g.detach() for g in grads])]
        if tangent is not None:
            direction = tangent.potentials[b].factors().to(prepared.dtype)
            directional = sum((g * getattr(direction, name)).sum() for g, name in zip(grads, leaves))
            second = (torch.autograd.grad(directional, inputs, allow_unused=True)
                      if directional.requires_grad else (None,) * len(inputs))
            rows.append((directional.detach(), _filled(second, inputs)))
    out = []
    for value, derivatives in rows:
        fields = {field: g for (_, field), g in zip(_FACTOR_FIELDS, derivatives)}
        for field in ("segment_start", "segment_end", "duration"):
            fields[field] = fields[field][0]
        out.append(Posterior(log_z=value.reshape(()), **fields))
    return tuple(out)


def _filled(grads, inputs) -> list:
    """Gradients with zeros for the unused inputs."""
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def _empty_field(prepared, name: str) -> torch.Tensor:
    """A field of a Posterior of zero sequences."""
    B, T, K, C = prepared.B, prepared.T, prepared.K, prepared.C
    shapes = {"log_z": (B,), "segment_start": (B, T, C), "segment_end": (B, T, C), "duration": (B, K, C),
              "transition": (B, K, C, C) if prepared.duration_dependent else (B, C, C), "first": (B, C),
              "last": (B, C)}
    return torch.zeros(shapes[name], dtype=prepared.dtype, device=prepared.device)
