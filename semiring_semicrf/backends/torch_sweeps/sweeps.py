"""The PyTorch Log sweeps: `inside` and `outside` of the backend contract
(:mod:`semiring_semicrf.backends`), for structured :class:`Factors`.

`inside(factors, low_memory=False) -> (log_z (B,), saved)` runs the
forward sweep (:mod:`.recurrences`); `outside(factors, saved) ->
Posterior` runs the backward sweep right to left and turns the two into
expected counts. Both walk blocks of `~sqrt(T K)` rows: a block's factor
rows, outside tables and the parallel pass that forms its counts (chunked,
no temporary above a block's own size) exist one block at a time. Neither
builds an autograd graph; nothing of size `T K C` or `T C^2` is allocated.

Memory (beyond the inputs and the `(B, T, C)` fields of the Posterior):

- default: the inside keeps its alpha and u for every row, `2 (T+1) B C`
  values in the potentials' dtype: `O(B T C)`, the inputs' order, and the
  outside needs no recomputation.
- `low_memory=True`: the inside keeps only a ring checkpoint (`K` rows) and
  the running prefix sum per block; the outside recomputes one block of
  inside rows at a time: `O(B C sqrt(T K))`, for a second inside sweep.

Cost per row: `O(K C + C^2)` for `(C, C)` transitions, `O(K C^2)` for
duration-dependent ones. Each row is a fixed handful of fused tensor ops
with preallocated buffers; on the CPU the sweeps run with one intra-op
thread when their per-row tensors are too small to gain from more (see
:func:`sweep_threads`).

Precision. The sweeps work in float64 whatever the input dtype (the factors
are taken with :meth:`Factors.to`; outputs are cast back). A row's
log-sum-exp adds and removes prefix sums that reach hundreds of nats at
T = 1e5; in float32 their rounding (~3e-5 per row) random-walks apart between
the inside and outside sweeps and left the float32 gradients 0.5% off at
T = 1e5 (measured), while float64 keeps them within 1e-5 of a float64 run.
On the CPU the per-row ops are bound by dispatch, not arithmetic, so this
costs no measurable time; the tables take twice the bytes.

Units. Every log-potential the sweeps see is in *bits* (base-2 logs: nats
times `log2(e)`), so that their reductions use `exp2`/`log2`: on the CPU,
torch's `exp` takes a slow path on very negative or `-inf` inputs (~100 us
instead of ~1 us for 1,536 floats, measured with torch 2.13), which are
everywhere in a semi-Markov ring; `exp2` does not.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from ...factors import FactorRows
from ...posterior import Posterior
from .lanes import LN2
from .recurrences import WORK_DTYPE, DurationSweeps, FactorizedSweeps, SweepTables

#: Per-row tensors below this many elements run single-threaded on the CPU:
#: thread hand-offs would cost more than the arithmetic.
SMALL_ROW_ELEMENTS = 1 << 18


@dataclass
class InsideSaved:
    """What :func:`inside` leaves for :func:`outside`.

    `log_z (B,)` float64, in bits; `blocks`: row ranges `[(r0, r1), ...]`
    covering `[0, T+1)`; `cums[i]`: the prefix sum at block i's first row;
    default mode: `tables` (the inside's alpha/u for all rows, in the
    potentials' dtype, and their float64 scale); low-memory:
    `checkpoints[i]` = the ring state before block i.
    """

    log_z: torch.Tensor
    blocks: list
    cums: list
    tables: SweepTables | None = None
    checkpoints: list | None = None


def sweeps_for(factors):
    """The sweeps of :class:`Factors` (or of :class:`~.lanes.StackedFactors`:
    the same sweeps on several lanes)."""
    return DurationSweeps(factors) if factors.duration_dependent else FactorizedSweeps(factors)


#: Rows per block of a forward sweep that keeps nothing for an outside.
FORWARD_ONLY_BLOCK = 256


def block_rows(T: int, K: int, size: int | None = None) -> list:
    """Row ranges covering `[0, T+1)`, of `size` rows (default `~sqrt((T+1)
    K)`: per-block work tensors and low-memory checkpoints then both stay
    sublinear in T; a forward sweep that keeps nothing takes a fixed size,
    so that its working memory does not depend on T at all)."""
    rows = T + 1
    size = max(1, min(rows, math.isqrt(rows * K) if size is None else size))
    return [(r0, min(rows, r0 + size)) for r0 in range(0, rows, size)]


@contextlib.contextmanager
def sweep_threads(sweeps):
    """Run the sweeps with one intra-op thread on the CPU when a row's
    largest tensor is small (tiny ops do not amortize thread hand-offs;
    measured: `exp2` on 1,536 floats takes ~1 us on one thread, ~20 us on two
    on a busy 2-core machine). The caller's setting is restored on exit."""
    width = sweeps.K * sweeps.B * sweeps.C * (sweeps.C if sweeps.factors.duration_dependent else 1)
    width *= len(sweeps.lanes.kinds)
    previous = torch.get_num_threads()
    single = sweeps.device.type == "cpu" and width < SMALL_ROW_ELEMENTS and previous > 1
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(previous)


@torch.no_grad()
def inside(factors, low_memory: bool = False, keep: bool = True):
    """Forward sweep: `(log_z (B,), saved)` (see module docstring); with
    `keep=False` nothing is saved (`saved` is None: no outside follows).
    On :class:`~.lanes.StackedFactors`, `log_z` is `(L, B)`: every lane's
    result (log Z, its tangent, an entropy, ...)."""
    sweeps = sweeps_for(factors)
    blocks = block_rows(sweeps.T, sweeps.K, None if keep else FORWARD_ONLY_BLOCK)
    state = sweeps.initial_inside()
    cum = sweeps.factors.initial_cum()
    cums: list = []
    checkpoints: list | None = [] if keep and low_memory else None
    tables = sweeps.inside_tables(0, sweeps.T + 1, dtype=sweeps.table_dtype) if keep and not low_memory else None
    with sweep_threads(sweeps):
        for r0, r1 in blocks:
            if keep:
                cums.append(cum)
            if checkpoints is not None:
                checkpoints.append(state.clone())
            rows, cum = sweeps.rows(r0, r1, cum)
            if tables is None:
                state = sweeps.inside(state, rows)
            else:
                block = sweeps.inside_tables(r0, r1 - r0)
                state = sweeps.inside(state, rows, block)
                tables.store(block)
    saved = InsideSaved(state.log_z, blocks, cums, tables, checkpoints) if keep else None
    return (state.log_z * LN2).to(factors.dtype), saved


class _Accumulator:
    """The Posterior under construction (`(B, T, C)` fields written block by
    block, counts summed in float64)."""

    def __init__(self, sweeps, log_z: torch.Tensor, segments: torch.Tensor | None):
        p = self.factors = sweeps.factors
        self.lanes, self.dtype = sweeps.lanes, sweeps.table_dtype
        B, T, K, C = p.B, p.T, p.K, p.C
        lead = self.lanes.lead
        zeros = lambda *s, dtype=WORK_DTYPE: torch.zeros((*lead, *s), dtype=dtype, device=p.device)  # noqa: E731
        self.log_z = log_z
        # -inf (no segmentation) -> 0 so that every probability is exp2(-inf) = 0;
        # NaN (a NaN input) stays NaN and poisons that sequence's counts.
        self.log_z_safe = torch.where(torch.isneginf(log_z), torch.zeros_like(log_z), log_z)
        self.segment_start = zeros(B, T, C, dtype=self.dtype)
        self.segment_end = zeros(B, T, C, dtype=self.dtype)
        self.transition = zeros(B, K, C, C) if p.duration_dependent else zeros(B, C, C)
        self.duration = zeros(B, K, C)
        self.segments = segments  # (B, T, K, C) or None

    def write_starts(self, r0: int, values: torch.Tensor) -> None:
        """`values (m, B, C)` = P(a segment starts at rows r0..r0+m-1); row T dropped."""
        m = min(values.shape[0], self.factors.T - r0)
        self.segment_start[..., r0:r0 + m, :] = values[:m].movedim(0, -2)

    def write_ends(self, r0: int, values: torch.Tensor) -> None:
        """`values (m, B, C)` = P(a segment ends at rows r0..r0+m-1), i.e. its
        last position is the row minus one; row 0 dropped."""
        lo = 1 if r0 == 0 else 0
        self.segment_end[..., r0 + lo - 1:r0 + values.shape[0] - 1, :] = values[lo:].movedim(0, -2)

    def posterior(self) -> Posterior:
        """The Posterior (with lanes, each field has the lane axis first)."""
        p, dtype = self.factors, self.dtype
        last = self.segment_end[..., torch.arange(p.B, device=p.device), p.lengths - 1, :]
        return Posterior((self.log_z * LN2).to(dtype), self.segment_start, self.segment_end,
                         self.transition.to(dtype), self.duration.to(dtype),
                         self.segment_start[..., 0, :].clone(), last)


#: A parallel chunk holds at least this many elements (when the block has
#: them), so that small problems are not cut into needlessly many chunks.
CHUNK_FLOOR = 1 << 15


def _combine(sweeps, rows: FactorRows, ins: SweepTables, outs: SweepTables, acc: _Accumulator) -> tuple:
    """Add one block's expected counts to `acc`. `outs` has K extra rows
    holding the tail (`abar + leave_rows` of the K rows after the block, and
    their scale); returns the tail for the block before."""
    K, B, C, T, n, r0 = sweeps.K, sweeps.B, sweeps.C, sweeps.T, rows.n, rows.r0
    width = sweeps.combine_chunk()
    chunk = max(1, min(n, max(n // width, CHUNK_FLOOR // max(1, B * C * width))))
    assert ins.alpha is not None and outs.u is not None  # every sweep's INSIDE_/OUTSIDE_TABLES
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        ends = ins.alpha[i0:i1] + outs.u[i0:i1]
        ends += (ins.scale[i0:i1] + outs.scale[i0:i1] - acc.log_z_safe).to(WORK_DTYPE)[..., None]
        acc.write_ends(r0 + i0, acc.lanes.probabilities_(ends, lane_axis=1))
    later, later_scale = outs.u, outs.scale  # rows r0 .. r0+n+K-1
    later[:n] += rows.leave
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        # windows of the K rows after each start: (m, B, C, K) -> (m, B, K, C)
        window = later[i0 + 1:i1 + K].unfold(0, K, 1).transpose(-1, -2)
        window_scale = later_scale[i0 + 1:i1 + K].unfold(0, K, 1)  # (m, B, K)
        offset = (ins.scale[i0:i1, ..., None] + window_scale - acc.log_z_safe[..., None]).to(WORK_DTYPE)
        seg = sweeps.segment_terms(ins, outs, rows, i0, i1, window, offset, acc)
        if acc.segments is not None:
            m = min(i1, T - r0) - i0
            if m > 0:
                acc.segments[:, r0 + i0:r0 + i0 + m] = seg[:m].transpose(0, 1)
    return later[:K].clone(), later_scale[:K].clone()


@torch.no_grad()
def outside(factors, saved: InsideSaved, segments: torch.Tensor | None = None) -> Posterior:
    """Backward sweep and expected counts (see module docstring).

    `segments`, if given, is a `(B, T, K, C)` tensor that receives
    P(segment `[s, s+d)` has label `c`) at `[b, s, d-1, c]` (on request only:
    it is `O(T K C)`). On :class:`~.lanes.StackedFactors` of p and a tangent,
    every field has a lane axis first: the posterior and its tangent."""
    sweeps = sweeps_for(factors)
    acc = _Accumulator(sweeps, saved.log_z, segments)
    B, C, K = sweeps.B, sweeps.C, sweeps.K
    tail = (sweeps.lanes.zero_(sweeps.lane_empty(B, C, before=(K,)), lane_axis=1),
            torch.zeros((K, *sweeps.lanes.lead, B), dtype=torch.float64, device=sweeps.device))
    state = sweeps.initial_outside()
    with sweep_threads(sweeps):
        for index in range(len(saved.blocks) - 1, -1, -1):
            r0, r1 = saved.blocks[index]
            n = r1 - r0
            rows, _ = sweeps.rows(r0, r1, saved.cums[index])
            if saved.tables is not None:
                ins = saved.tables.rows(r0, r1)
            else:  # low memory: recompute the block's inside from its checkpoint
                assert saved.checkpoints is not None
                ins = sweeps.inside_tables(r0, n)
                sweeps.inside(saved.checkpoints[index].clone(), rows, ins)
            outs = sweeps.outside_tables(r0, n)
            outs.u[n:], outs.scale[n:] = tail
            state = sweeps.outside(state, rows, outs)
            tail = _combine(sweeps, rows, ins, outs, acc)
    return acc.posterior()
