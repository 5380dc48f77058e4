"""Triton kernels for the Log and Max semirings (shipped as
``semiring_semicrf.kernels``): the Triton rung of the backend ladder
(:mod:`semiring_semicrf.backends.triton` wraps them).

- :func:`inside` (:func:`log_partition` without tables): the Log forward
  sweep, one program per sequence, the ring
  buffer of the last `K` rows in registers, segment potentials evaluated on
  the fly from the factors, float32 with running normalization.
- :func:`outside`: the posterior as a mass-conserving flow right to left
  from the forward's `O(T C)` tables (transition counts on the way), then
  the duration counts as a parallel, fixed-order reduction over blocks.
- :func:`viterbi`: the Max sweep storing small-integer backpointers, then a
  traceback kernel.
- :func:`hvp`: the posterior and its tangent along a direction (a
  Hessian-vector product of log Z): a tangent lane along the forward's
  tables, then the outside flow and its tangent (:mod:`.hvp`).
- :func:`information`: entropy, cross-entropy or KL, an information lane
  along the forward's tables (:mod:`.hvp`).

They read float32 :class:`~semiring_semicrf.factors.Factors` and run the
factorized recurrence, so potentials with duration-dependent `(K, C, C)`
transitions (and explicit edges) are not theirs: :func:`kernel_limits_reason`
says so and the ladder routes them down. On CPU tensors the kernels run only
under Triton's interpreter (``TRITON_INTERPRET=1`` set before this package is
first imported): :data:`INTERPRETED` records which mode they were built in.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..factors import Factors
from ..posterior import Posterior
from .backward import outside_sweep
from .common import duration_ring, kernel_limits_reason
from .forward import forward_sweep
from .hvp import expectation_sweep, tangent_duration_ring, tangent_flow
from .traceback import viterbi_decode

__all__ = ["inside", "log_partition", "outside", "viterbi", "hvp", "information", "kernel_limits_reason",
           "InsideTables", "INTERPRETED"]

#: True when the kernels were built for Triton's interpreter (they then run
#: on CPU tensors, slowly, for tests).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass
class InsideTables:
    """What :func:`inside` keeps for :func:`outside`: the float32 factors and
    their duration ring, `alpha_hat`, `u_hat` `(B, T+1, C)` float32 (inside
    values minus the running scale), the scale `N (B, T+1)` float64, and
    `log_z (B,)`."""

    factors: Factors
    duration_ring: torch.Tensor
    alpha_hat: torch.Tensor
    u_hat: torch.Tensor
    scale: torch.Tensor
    log_z: torch.Tensor


def inside(factors: Factors, low_memory: bool = False):
    """Log forward sweep. Returns `(log_z (B,), saved)` with `saved` an
    :class:`InsideTables`. `low_memory` changes nothing here: the kernels
    always keep the `O(T C)` float32 alpha/u tables, the size of the
    gradient the backward returns anyway, and never anything of size
    `T K C` or `T C^2`."""
    del low_memory
    factors = factors.to(torch.float32)
    ring = duration_ring(factors.duration)
    log_z, _, alpha_hat, u_hat, scale = forward_sweep(factors, ring, max_semiring=False)
    return log_z, InsideTables(factors, ring, alpha_hat, u_hat, scale, log_z)


def log_partition(factors: Factors) -> torch.Tensor:
    """`log Z (B,)` alone: the forward sweep writing no tables (nothing of
    size T beyond the inputs)."""
    factors = factors.to(torch.float32)
    return forward_sweep(factors, duration_ring(factors.duration), max_semiring=False, tables=False)[0]


def outside(factors: Factors, saved: InsideTables) -> Posterior:
    """Log backward sweep from :func:`inside`'s tables: the posterior
    expected counts (see :class:`~semiring_semicrf.posterior.Posterior`)."""
    segment_start, segment_end, transition, duration = outside_sweep(saved.factors, saved.duration_ring,
                                                                     saved.alpha_hat, saved.u_hat, saved.scale)
    batch = torch.arange(segment_end.shape[0], device=segment_end.device)
    last = segment_end[batch, factors.lengths - 1]
    return Posterior(saved.log_z, segment_start, segment_end, transition, duration,
                     segment_start[:, 0].clone(), last)


def viterbi(factors: Factors):
    """Best segmentation: `(score (B,), labels (B, T) int64, starts (B, T) bool)`,
    `labels` -1 and `starts` False past each length."""
    return viterbi_decode(factors.to(torch.float32))


def hvp(factors: Factors, tangent: Factors, saved: InsideTables | None = None) -> tuple:
    """`(posterior, its tangent along tangent)` (the backend contract's
    `hvp`): the forward's tables (`saved`, if :func:`inside` left them),
    the outside flow, a tangent sweep along the tables and the tangent flow."""
    factors = factors.to(torch.float32)
    tangent = tangent.to(torch.float32)
    if saved is None:
        _, saved = inside(factors)
    post = outside(factors, saved)
    ring = tangent_duration_ring(duration_ring(tangent.duration))
    log_z_tangent, *tangent_tables = expectation_sweep("tangent", factors, saved, tangent=tangent, tangent_ring=ring,
                                                       keep_tables=True)
    segment_start, segment_end, transition, duration = tangent_flow(factors, saved, tangent, ring, tangent_tables,
                                                                    post.segment_start, post.segment_end)
    batch = torch.arange(segment_end.shape[0], device=segment_end.device)
    dot = Posterior(log_z_tangent.to(torch.float32), segment_start, segment_end, transition, duration,
                    segment_start[:, 0].clone(), segment_end[batch, factors.lengths - 1])
    return post, dot


def information(p: Factors, q: Factors | None, kind: str) -> tuple:
    """`(value (B,) float32, (p's tables, q's tables))`: entropy of p, or
    cross-entropy / KL of p and q (the backend contract's `information`),
    summed in float64 by an information lane along the forward tables of p
    (and q); the tables serve a later :func:`hvp` of p and :func:`outside`
    of q."""
    p = p.to(torch.float32)
    _, p_tables = inside(p)
    q_tables = None
    if q is not None:
        q = q.to(torch.float32)
        _, q_tables = inside(q)
    value = expectation_sweep(kind, p, p_tables, q=q, q_tables=q_tables)[0]
    return value.to(torch.float32), (p_tables, q_tables)
