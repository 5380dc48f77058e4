"""Differentiable log partition and posterior marginals.

For structured :class:`SemiMarkovPotentials`, :func:`log_partition` is a
`torch.autograd.Function` whose forward is a backend's `inside` sweep and
whose backward is its `outside` sweep (the backend contract of
:mod:`semiring_semicrf.backends`: the torch sweeps, or the Triton kernels on
CUDA). The gradient of `log Z` with respect to each input is an expected
count of the :class:`~semiring_semicrf.posterior.Posterior`:

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
from ..backends import torch_sweeps
from ..posterior import Posterior
from ..potentials import require_potentials
from ..semirings import LogSemiring
from .checkpointed import checkpointed_scan
from .explicit import edge_marginals, posterior_from_edge_marginals


class LogPartition(torch.autograd.Function):
    """`log Z (B,)` of structured potentials through a backend's inside/outside.

    `apply(potentials, backend, low_memory, *tensors)` where `backend` is a
    rung of :data:`semiring_semicrf.backends.LADDER` and `tensors` are
    `potentials.tensors().values()` in order (autograd tracks them).
    """

    @staticmethod
    def forward(ctx, potentials, backend, low_memory, *tensors):
        names = list(potentials.tensors())
        detached = potentials.replace(**{n: t.detach() for n, t in zip(names, tensors)}).factors()
        log_z, saved = backend.inside(detached, low_memory=low_memory)
        ctx.factors, ctx.backend, ctx.saved, ctx.names = detached, backend, saved, names
        return log_z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_log_z):
        post = ctx.backend.outside(ctx.factors, ctx.saved)
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
    require_potentials(potentials)
    if potentials.is_explicit:
        backends.check_name(backend)
        return checkpointed_scan(potentials, LogSemiring())
    rung = backends.get(backend, potentials)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in potentials.tensors().values())):
        with torch.no_grad():  # no backward follows: keep nothing of size T
            return rung.log_partition(potentials.factors())
    return LogPartition.apply(potentials, rung, low_memory, *potentials.tensors().values())


def posterior(potentials, backend: str = "auto", low_memory: bool = False) -> Posterior:
    """Posterior expected counts (no gradient): label/boundary marginals via
    :meth:`Posterior.label_marginals` / :meth:`Posterior.boundary_marginals`,
    transition, duration, first- and last-label counts.

    For :class:`EdgePotentials` the first label is latent and `transition`
    is `(B, K, C, C)` `[d-1, c_src, c_dst]` over real transitions only
    (segments starting at s >= 1), by the entered segment's duration."""
    require_potentials(potentials)
    if potentials.is_explicit:
        backends.check_name(backend)
        marg, log_z = edge_marginals(potentials)
        return posterior_from_edge_marginals(marg, log_z, potentials.lengths)
    rung = backends.get(backend, potentials)
    with torch.no_grad():
        factors = potentials.factors()
        _, saved = rung.inside(factors, low_memory=low_memory)
        return rung.outside(factors, saved)


def segment_marginals(potentials) -> torch.Tensor:
    """`(B, T, K, C)`: P(segment `[s, s+d)` has label `c`) at `[b, s, d-1, c]`
    (zero where `s + d` passes the length). Materialized, `O(B T K C)`: for
    moderate T. Runs on the PyTorch sweeps (or edge marginals for explicit
    potentials); no gradient."""
    require_potentials(potentials)
    if potentials.is_explicit:
        marg, _ = edge_marginals(potentials)
        return marg[:, :, 1:].sum(dim=-1)
    B, T, K, C = potentials.batch_size, potentials.T, potentials.K, potentials.C
    out = torch.zeros((B, T, K, C), dtype=potentials.dtype, device=potentials.device)
    with torch.no_grad():
        factors = potentials.factors()
        _, saved = torch_sweeps.inside(factors)
        torch_sweeps.outside(factors, saved, segments=out)
    return out
