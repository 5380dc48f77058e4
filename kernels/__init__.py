"""Triton kernels for the Log and Max semirings (shipped as
``semiring_semicrf.kernels``): the Triton rung of the backend ladder
(:mod:`semiring_semicrf.backends.triton` wraps them).

- :func:`inside` (:func:`log_partition` without tables): the Log forward
  sweep, one program per sequence, the ring
  buffer of the last `K` rows in registers, segment potentials evaluated on
  the fly from the factors, float32 with running normalization.
- :func:`outside`: the posterior as a mass-conserving flow right to left
  from the forward's `O(T C)` tables, written over them (transition and
  duration counts and the label marginals accumulated on the way).
- :func:`viterbi`: the Max sweep storing small-integer backpointers, then a
  traceback kernel.
- :func:`kbest`: the Max sweep with k lanes (sorted k-lists) and
  back-pointers, then a traceback per (rank, sequence); k up to
  :data:`~.kbest.MAX_K` (:func:`kbest_limits_reason`).
- :func:`sample`: exact samples by forward filtering (the Log forward's
  tables), backward sampling, one program per (sample, sequence),
  reproducible from a `torch.Generator`.
- :func:`hvp`: the posterior and its tangent along a direction (a
  Hessian-vector product of log Z): a tangent lane along the forward's
  tables, the outside flow differentiated, then the outside flow
  (:mod:`.hvp`).
- :func:`information`: entropy, cross-entropy or KL, an information lane
  along the forward's tables (:mod:`.hvp`); on a GPU q's forward and the
  gradient's tangent sweeps run beside p's (:mod:`.streams`).

They read float32 :class:`~semiring_semicrf.factors.Factors` and run the
factorized recurrence, so potentials with duration-dependent `(K, C, C)`
transitions (and explicit edges) are not theirs: :func:`kernel_limits_reason`
says so and the ladder routes them down. On CPU tensors the kernels run only
under Triton's interpreter (``TRITON_INTERPRET=1`` set before this package is
first imported): :data:`INTERPRETED` records which mode they were built in.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from semiring_semicrf.factors import Factors
from semiring_semicrf.posterior import Posterior

from .backward import outside_sweep
from .common import INTERPRETED, duration_ring, kernel_limits_reason
from .forward import forward_sweep
from .hvp import expectation_sweep, tangent_duration_ring, tangent_flow
from .kbest import kbest_decode, kbest_limits_reason
from .sampling import sample_segmentations
from .streams import beside, join
from .traceback import viterbi_decode

__all__ = ["inside", "log_partition", "outside", "viterbi", "kbest", "sample", "hvp", "information",
           "kernel_limits_reason", "kbest_limits_reason", "InsideTables", "FlowPosterior", "INTERPRETED"]


@dataclass
class InsideTables:
    """What :func:`inside` keeps for :func:`outside`: the float32 factors and
    their duration ring, `alpha_hat`, `v_hat` `(B, T+1, C)` float32 (inside
    values minus the running scale: `v = u + enter`, the ring's entries), the
    scale `N (B, T+1)` float64, the prefix sums at each length `cum (B, C)`
    float64, and `log_z (B,)`. :func:`outside` consumes the two tables (it
    writes the posterior over them) and sets `consumed`."""

    factors: Factors
    duration_ring: torch.Tensor
    alpha_hat: torch.Tensor
    v_hat: torch.Tensor
    scale: torch.Tensor
    cum: torch.Tensor
    log_z: torch.Tensor
    consumed: bool = False
    started: StartedHvp | None = None


@dataclass
class StartedHvp:
    """The tangent of the posterior along `tangent` (the Factors object
    given) that :func:`information` launched beside its own sweeps (on the
    side stream, :mod:`.streams`) for the :func:`hvp` of the same tables and
    tangent, which joins it: `dot` (:func:`tangent_posterior`)."""

    tangent: Factors
    dot: FlowPosterior


@dataclass
class FlowPosterior(Posterior):
    """The :class:`Posterior` of :func:`outside`, with the label marginals
    the flow accumulated on its way (no prefix sum over time needed): the
    first :meth:`label_marginals` call hands that `(B, T, C)` table over
    (the caller owns it, e.g. to scale it in place into a gradient); later
    calls compute it again from the segment starts and ends."""

    marginals: torch.Tensor | None = None

    def label_marginals(self) -> torch.Tensor:
        if self.marginals is None:
            return super().label_marginals()
        marginals, self.marginals = self.marginals, None
        return marginals


def inside(factors: Factors, low_memory: bool = False):
    """Log forward sweep. Returns `(log_z (B,), saved)` with `saved` an
    :class:`InsideTables`. `low_memory` changes nothing here: the kernels
    always keep the `O(T C)` float32 alpha/v tables, the size of the
    gradient the backward returns anyway (and overwritten by it), and never
    anything of size `T K C` or `T C^2`."""
    del low_memory
    factors = factors.to(torch.float32)
    ring = duration_ring(factors)
    log_z, _, alpha_hat, v_hat, scale, cum = forward_sweep(factors, ring, max_semiring=False)
    return log_z, InsideTables(factors, ring, alpha_hat, v_hat, scale, cum, log_z)


def log_partition(factors: Factors) -> torch.Tensor:
    """`log Z (B,)` alone: the forward sweep writing no tables (nothing of
    size T beyond the inputs)."""
    factors = factors.to(torch.float32)
    return forward_sweep(factors, duration_ring(factors), max_semiring=False, tables=False)[0]


def outside(factors: Factors, saved: InsideTables, keep: bool = False) -> FlowPosterior:
    """Log backward sweep from :func:`inside`'s tables (consumed, unless
    `keep`: then the flow consumes copies of the two `(B, T+1, C)` tables and
    `saved` serves a later :func:`hvp`): the posterior expected counts (see
    :class:`~semiring_semicrf.posterior.Posterior`), with the label
    marginals (:class:`FlowPosterior`). Tables consumed by an earlier call (a
    second backward through one forward, `retain_graph=True`) are computed
    again by a forward sweep first."""
    if saved.consumed:
        saved = inside(saved.factors)[1]  # the caller's stay consumed: nothing to keep
    elif keep:
        saved = replace(saved, alpha_hat=saved.alpha_hat.clone(), v_hat=saved.v_hat.clone())
    saved.consumed = True
    segment_start, segment_end, marginals, transition, duration, first, last = outside_sweep(
        saved.factors, saved.duration_ring, saved.alpha_hat, saved.v_hat, saved.scale, saved.cum)
    return FlowPosterior(saved.log_z, segment_start, segment_end, transition, duration, first, last, marginals)


def viterbi(factors: Factors):
    """Best segmentation: `(score (B,), labels (B, T) int64, starts (B, T) bool)`,
    `labels` -1 and `starts` False past each length."""
    return viterbi_decode(factors.to(torch.float32))


def kbest(factors: Factors, k: int):
    """The k best segmentations: `(scores (k, B), labels (k, B, T) int64,
    starts (k, B, T) bool)`, best first, ties broken as the reference rung
    does; missing entries (fewer than k segmentations) have score `-inf`,
    labels -1 and no starts. `k <= MAX_K` (see :func:`kbest_limits_reason`)."""
    return kbest_decode(factors.to(torch.float32), k)


def sample(factors: Factors, num_samples: int, generator=None):
    """`num_samples` exact samples of each sequence: `(labels (N, B, T)
    int64, starts (N, B, T) bool)`, -1 / False past each length (and
    everywhere for a sequence without any allowed segmentation). The same
    state of `generator` gives the same samples."""
    _, saved = inside(factors)
    return sample_segmentations(saved.factors, saved.duration_ring, saved.alpha_hat, saved.v_hat, saved.scale,
                                num_samples, generator)


def hvp(factors: Factors, tangent: Factors, saved: InsideTables | None = None, posterior: bool = True) -> tuple:
    """`(posterior, its tangent along tangent)` (the backend contract's
    `hvp`), both :class:`FlowPosterior`: from the forward's tables (`saved`,
    if :func:`inside` left them and no outside consumed them; else a forward
    sweep first), the tangent of the posterior (:func:`tangent_posterior`,
    or the one :func:`information` started on them for this `tangent`),
    then, if `posterior`, the outside flow (which consumes the tables;
    without it the posterior is None and `saved` stays usable)."""
    factors = factors.to(torch.float32)
    started = None
    if saved is not None and saved.started is not None:
        started, saved.started = saved.started, None
        join(factors.device, posterior_tensors(started.dot))  # (before an outside writes over what it reads)
    if saved is None or saved.consumed:
        _, saved = inside(factors)
    dot = started.dot if started is not None and started.tangent is tangent else tangent_posterior(saved, tangent)
    return (outside(factors, saved) if posterior else None), dot


def tangent_posterior(saved: InsideTables, tangent: Factors) -> FlowPosterior:
    """The tangent of the posterior along `tangent` from the forward's tables
    `saved` (read, not consumed): a tangent lane along them, then the
    tangent flow. No copy of a table: beyond the forward's, the tangent's
    two `(B, T+1, C)` float32 tables, written over by the tangent of the
    posterior, and its label marginals."""
    tangent = tangent.to(torch.float32)
    ring = tangent_duration_ring(tangent)
    log_z_tangent, tables = expectation_sweep("tangent", saved, tangent=tangent, tangent_ring=ring, keep_tables=True)
    start, end, marginals, transition, duration, first, last = tangent_flow(saved, tangent, ring, tables)
    return FlowPosterior(log_z_tangent.to(torch.float32), start, end, transition, duration, first, last, marginals)


def information(p: Factors, q: Factors | None, kind: str, tangent: Factors | None = None) -> tuple:
    """`(value (B,) float32, (p's tables, q's tables))`: entropy of p, or
    cross-entropy / KL of p and q (the backend contract's `information`),
    summed in float64 by an information lane along the forward tables of p
    (and q), which it only reads: they serve a later :func:`hvp` of p and
    :func:`outside` of q (each consumes its own).

    On a GPU, independent sweeps run side by side (:mod:`.streams`): q's
    forward beside p's, and, with `tangent` (a direction of p: the
    gradient's), the tangent of p's posterior along it (a tangent lane and
    the tangent flow, :func:`tangent_posterior`) beside the information
    lane, kept in p's tables for that :func:`hvp`."""
    p = p.to(torch.float32)
    q_tables = None
    if q is not None:
        q = q.to(torch.float32)
        with beside(p.device, factor_tensors(q)):
            _, q_tables = inside(q)
    _, p_tables = inside(p)
    if q_tables is not None:
        join(p.device, table_tensors(q_tables))  # q's forward alone: what the side stream queued so far
    if tangent is not None:
        with beside(p.device, [*table_tensors(p_tables), *factor_tensors(p), *factor_tensors(tangent)]):
            p_tables.started = StartedHvp(tangent, tangent_posterior(p_tables, tangent))
    value = expectation_sweep(kind, p_tables, q_tables=q_tables)[0]
    return value.to(torch.float32), (p_tables, q_tables)


def factor_tensors(factors: Factors) -> list:
    """The tensors the kernels read of `factors`: its potentials', the
    mean and the lengths."""
    return [*factors.potentials.tensors().values(), factors.mean, factors.lengths]


def table_tensors(saved: InsideTables) -> list:
    """The tensors of :func:`inside`'s tables."""
    return [saved.duration_ring, saved.alpha_hat, saved.v_hat, saved.scale, saved.cum, saved.log_z]


def posterior_tensors(post: FlowPosterior) -> list:
    """The tensors of a :class:`FlowPosterior`."""
    fields = [getattr(post, name) for name in Posterior.FIELDS]
    return [t for t in (*fields, post.marginals) if t is not None]
