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
built over positions; the backward is exact (not a surrogate).

The backward is itself differentiable (:class:`LogPartitionGrad`): its
derivative is the Hessian-vector product of the backend's dual sweeps (the
"hvp" query), so gradient penalties and `torch.autograd.gradgradcheck` work;
a third derivative raises. The Functions define `setup_context`, so
`torch.func.grad` and `jacrev` apply; under `torch.compile` the partition is
one opaque custom operator (:mod:`.ops`).

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
from ..potentials import Potentials, require_potentials
from ..semirings import LogSemiring
from . import ops
from .checkpointed import checkpointed_scan
from .derivatives import direction, gradients, hvp, refuse_further_derivatives
from .explicit import edge_marginals, posterior_from_edge_marginals


class Tables:
    """What a Function's forward leaves for its `setup_context` besides
    tensors (torch.func's Functions get no `ctx` in `forward`): the detached
    potentials, their factors and a rung's saved tables."""

    def __init__(self):
        self.potentials = self.factors = self.saved = None


class LogPartition(torch.autograd.Function):
    """`log Z (B,)` of structured potentials through a backend's inside/outside.

    `apply(tables, potentials, backend, low_memory, *tensors)` where
    `tables` is a fresh :class:`Tables`, `backend` a rung of
    :data:`semiring_semicrf.backends.LADDER` and `tensors` are
    `potentials.tensors().values()` in order (autograd tracks them).
    """

    @staticmethod
    def forward(tables, potentials, backend, low_memory, *tensors):
        detached = potentials.detached(tensors)
        tables.potentials, tables.factors = detached, detached.factors()
        log_z, tables.saved = backend.inside(tables.factors, low_memory=low_memory)
        return log_z

    @staticmethod
    def setup_context(ctx, inputs, output):
        tables, _, backend, _, *tensors = inputs
        ctx.tables, ctx.backend = tables, backend
        ctx.save_for_backward(*tensors)

    @staticmethod
    def backward(ctx, grad_log_z):
        needed = ctx.needs_input_grad[4:]
        if not (torch.is_grad_enabled() or torch._C._are_functorch_transforms_active()):
            # no graph to build (nor a transform to batch it): the gradient alone, without a
            # Function's bookkeeping, a host cost paid before the outside's launch
            grads = LogPartitionGrad.forward(ctx.tables, ctx.backend, needed, grad_log_z)
        else:
            # the inputs join only a graph being built (create_graph=True): without
            # one, the backward touches no saved tensor and may run again
            tensors = ctx.saved_tensors if torch.is_grad_enabled() else ()
            grads = LogPartitionGrad.apply(ctx.tables, ctx.backend, needed, grad_log_z, *tensors)
        return (None, None, None, None, *grads)


class LogPartitionGrad(torch.autograd.Function):
    """:class:`LogPartition`'s backward, differentiable: the gradient of
    `sum_b g[b] log Z_b` for each input (None where not `needed`), from the
    backend's `outside`.

    `apply(tables, backend, needed, g, *tensors)`. Its derivative along the
    directions `v` (one per output) is `sum_b g[b] hess(log Z_b) v` for the
    inputs and `<grad log Z_b, v>` for `g`: one `hvp` of the backend, on the
    forward's tables (kept by the outside when this backward builds a
    graph: `tensors` given).
    Under `vmap` (`torch.func.jacrev`: a batch of `g`), one outside serves
    every `g`.
    """

    @staticmethod
    def forward(tables, backend, needed, grad_log_z, *tensors):
        post = backend.outside(tables.factors, tables.saved, keep=bool(tensors))
        return tuple(gradients(post, grad_log_z, list(tables.potentials.tensors()), needed, reuse=True))

    @staticmethod
    def vmap(info, in_dims, tables, backend, needed, grad_log_z, *tensors):
        if in_dims[3] is None or any(d is not None for d in in_dims[4:]):
            raise NotImplementedError("log_partition's backward is batched over its incoming gradient only")
        post = backend.outside(tables.factors, tables.saved)
        names = list(tables.potentials.tensors())
        rows = [gradients(post, g, names, needed) for g in grad_log_z.unbind(in_dims[3])]
        out = tuple(None if row[0] is None else torch.stack(row) for row in zip(*rows))
        return out, tuple(None if t is None else 0 for t in out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        tables, backend, needed, grad_log_z, *tensors = inputs
        ctx.tables, ctx.backend = tables, backend
        ctx.save_for_backward(grad_log_z, *tensors)

    @staticmethod
    def backward(ctx, *directions):
        grad_log_z, *tensors = ctx.saved_tensors
        tables = ctx.tables
        names = list(tables.potentials.tensors())
        tangent = direction(tables.potentials, dict(zip(names, directions)))
        _, dot = hvp(tables.potentials, tables.factors, tangent, ctx.backend.name, tables.saved, posterior=False)
        grads = gradients(dot, grad_log_z, names, ctx.needs_input_grad[4:], reuse=True)
        grad_g = dot.log_z.to(grad_log_z.dtype) if ctx.needs_input_grad[3] else None
        grad_g, *grads = refuse_further_derivatives([grad_g, *grads], [grad_log_z, *tensors, *directions],
                                                    "the second derivative of log_partition")
        return (None, None, None, grad_g, *grads)


def log_partition(potentials: Potentials, backend: str = "auto", low_memory: bool = False) -> torch.Tensor:
    """`log Z (B,)`, differentiable w.r.t. every tensor of `potentials`.

    Twice differentiable (the second derivative is a Hessian-vector
    product of the backend's dual sweeps); `torch.func.grad`/`jacrev` and
    `torch.compile(fullgraph=True)` apply.

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
    if torch.compiler.is_compiling():  # one opaque operator for dynamo
        return ops.log_partition(potentials, backends.check_name(backend), low_memory)
    rung = backends.get(backend, potentials)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in potentials.tensors().values())):
        with torch.no_grad():  # no backward follows: keep nothing of size T
            return rung.log_partition(potentials.factors())
    return LogPartition.apply(Tables(), potentials, rung, low_memory, *potentials.tensors().values())


def posterior(potentials: Potentials, backend: str = "auto", low_memory: bool = False) -> Posterior:
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


def segment_marginals(potentials: Potentials) -> torch.Tensor:
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
