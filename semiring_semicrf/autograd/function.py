"""Differentiable log partition and posterior marginals.

For structured :class:`SemiMarkovPotentials`, :func:`log_partition` is a
`torch.autograd.Function` whose forward is a backend's `inside` sweep and
whose backward is its `outside` sweep (the backend contract of
:mod:`semiring_semicrf.backends`: PyTorch here, Triton kernels on CUDA). The
gradient of `log Z` with respect to each input is an expected count of the
:class:`~semiring_semicrf.backends.Posterior`:

    scores        -> label marginals (B, T, C)        (P(t lies in a segment labelled c))
    duration      -> duration counts, summed over b   (K, C)
    transition    -> transition counts, summed over b (C, C) or (K, C, C)
    start / end   -> first / last label, summed over b (C,)
    start_scores  -> segment_start (B, T, C)
    end_scores    -> segment_end (B, T, C)

each scaled by the incoming gradient of its sequence. No autograd graph is
built over positions; the backward is exact (not a surrogate) and may be
called once (no double backward).

Explicit :class:`EdgePotentials` (`O(T K C^2)` input) have no fast path:
their `log Z` is differentiated by autograd through the block-checkpointed
generic scan (:func:`checkpointed_scan`), and their posterior comes from the
edge marginals that autograd returns.
"""
from __future__ import annotations

import torch

from .. import backends
from ..potentials import EdgePotentials, SemiMarkovPotentials
from ..semirings import LogSemiring
from . import log_sweeps
from .checkpointed import checkpointed_scan
from .explicit import edge_marginals, posterior_from_edge_marginals


def _check(potentials) -> None:
    if not isinstance(potentials, (SemiMarkovPotentials, EdgePotentials)):
        raise TypeError(f"potentials must be SemiMarkovPotentials or EdgePotentials, got {type(potentials).__name__}")


class LogPartition(torch.autograd.Function):
    """`log Z (B,)` of structured potentials through a backend's inside/outside.

    `apply(potentials, backend_module, low_memory, *tensors)` where `tensors`
    are `potentials.tensors().values()` in order (autograd tracks them).
    """

    @staticmethod
    def forward(ctx, potentials, backend, low_memory, *tensors):
        names = list(potentials.tensors())
        detached = potentials.replace(**{n: t.detach() for n, t in zip(names, tensors)})
        log_z, saved = backend.inside(detached, low_memory=low_memory)
        ctx.potentials, ctx.backend, ctx.saved, ctx.names = detached, backend, saved, names
        return log_z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_log_z):
        post = ctx.backend.outside(ctx.potentials, ctx.saved)
        grads = gradients(post, grad_log_z, ctx.names, ctx.needs_input_grad[3:])
        return (None, None, None, *grads)


def gradients(post, grad_log_z: torch.Tensor, names: list, needed) -> list:
    """The gradient of `sum_b grad_log_z[b] * log_z[b]` for each named input
    (None where not `needed`), from one Posterior, in the order of
    `potentials.tensors()` (scores first). The boundary gradients reuse the
    Posterior's storage (scaled in place): call once per Posterior."""
    g = grad_log_z.to(post.segment_start.dtype)
    g3 = g[:, None, None]
    out = []
    for name, wanted in zip(names, needed):
        if not wanted:
            out.append(None)
        elif name == "scores":
            out.append(post.label_marginals().mul_(g3))
        elif name == "start_scores":
            out.append(post.segment_start.mul_(g3))
        elif name == "end_scores":
            out.append(post.segment_end.mul_(g3))
        elif name == "transition":
            out.append(torch.tensordot(g, post.transition, dims=1))
        elif name == "duration":
            out.append(torch.tensordot(g, post.duration, dims=1))
        elif name == "start":
            out.append(g @ post.first)
        elif name == "end":
            out.append(g @ post.last)
        else:
            raise ValueError(f"no gradient rule for input {name!r}")
    return out


def log_partition(potentials, backend: str = "auto", low_memory: bool = False) -> torch.Tensor:
    """`log Z (B,)`, differentiable w.r.t. every tensor of `potentials`.

    Args:
        potentials: :class:`SemiMarkovPotentials` (fast path: exact streaming
            backward, `O(T C)` memory, or sublinear in T with `low_memory`),
            or :class:`EdgePotentials` (autograd through the checkpointed scan).
        backend: "auto", "torch" or "triton" (see :mod:`semiring_semicrf.backends`).
        low_memory: keep ring checkpoints every `~sqrt(T K)` rows instead of
            the `O(B T C)` inside tables, and recompute them in the backward.
    """
    _check(potentials)
    if potentials.is_explicit:
        return checkpointed_scan(potentials, LogSemiring())
    module = backends.get(backend, potentials)
    return LogPartition.apply(potentials, module, low_memory, *potentials.tensors().values())


def posterior(potentials, backend: str = "auto", low_memory: bool = False) -> backends.Posterior:
    """Posterior expected counts (no gradient): label/boundary marginals via
    :meth:`Posterior.label_marginals` / :meth:`Posterior.boundary_marginals`,
    transition, duration, first- and last-label counts.

    For :class:`EdgePotentials` the first label is latent and `transition`
    is `(B, K, C, C)` `[d-1, c_src, c_dst]` over real transitions only
    (segments starting at s >= 1), by the entered segment's duration."""
    _check(potentials)
    if potentials.is_explicit:
        marg, log_z = edge_marginals(potentials)
        return posterior_from_edge_marginals(marg, log_z, potentials.lengths)
    module = backends.get(backend, potentials)
    with torch.no_grad():
        _, saved = module.inside(potentials, low_memory=low_memory)
        return module.outside(potentials, saved)


def segment_marginals(potentials) -> torch.Tensor:
    """`(B, T, K, C)`: P(segment `[s, s+d)` has label `c`) at `[b, s, d-1, c]`
    (zero where `s + d` passes the length). Materialized, `O(B T K C)`: for
    moderate T. Runs on the PyTorch sweeps (or edge marginals for explicit
    potentials); no gradient."""
    _check(potentials)
    if potentials.is_explicit:
        marg, _ = edge_marginals(potentials)
        return marg[:, :, 1:].sum(dim=-1)
    B, T, K, C = potentials.batch_size, potentials.T, potentials.K, potentials.C
    out = torch.zeros((B, T, K, C), dtype=potentials.dtype, device=potentials.device)
    with torch.no_grad():
        _, saved = log_sweeps.inside(potentials)
        log_sweeps.outside(potentials, saved, segments=out)
    return out
