"""The PyTorch Log backend: `inside` and `outside` of the backend contract
(:mod:`semiring_semicrf.backends`), for :class:`SemiMarkovPotentials`.

`inside(potentials, low_memory=False) -> (log_z (B,), saved)` runs the
forward sweep (:mod:`.recurrences`); `outside(potentials, saved) ->
Posterior` runs the backward sweep right to left and turns the two into
expected counts, in one parallel pass per block of rows (chunked so that no
temporary exceeds a block's own `(rows, B, C)` tables). Neither builds an
autograd graph; nothing of size `T K C` or `T C^2` is ever allocated.

Memory (beyond the inputs and the `(B, T, C)` fields of the Posterior):

- default: the inside keeps alpha and u, `2 (T+1) B C` values, and the
  outside its own two tables: `O(B T C)`, the inputs' order; the sweeps are
  independent, and nothing is computed twice.
- `low_memory=True`: the inside keeps only a ring checkpoint (`K` rows, and
  the running prefix sum) every `~sqrt(T K)` rows; the outside recomputes one
  block of inside rows at a time. `O(B C sqrt(T K))`, at the price of a
  second inside sweep.

Cost per row: `O(K C + C^2)` for `(C, C)` transitions, `O(K C^2)` for
duration-dependent ones. Each row is a fixed handful of fused tensor ops
with preallocated buffers; on the CPU the sweeps run with one intra-op
thread when their per-row tensors are too small to gain from more (see
:func:`sweep_threads`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..backends import Posterior
from .problem import LN2, FactorRows, LogProblem
from .recurrences import NEG_INF, DurationSweeps, FactorizedSweeps, RingState, SweepTables, new_tables

#: Per-row tensors below this many elements run single-threaded on the CPU:
#: thread hand-offs would cost more than the arithmetic.
SMALL_ROW_ELEMENTS = 1 << 18


@dataclass
class InsideSaved:
    """What :func:`inside` leaves for :func:`outside`.

    `log_z (B,)` float64, in bits; `blocks`: row ranges `[(r0, r1), ...]` covering
    `[0, T+1)`; default mode: `tables` (the inside's alpha/u/scale for all
    rows); low-memory: `checkpoints[i] = (ring state before block i, cum
    at its first row)`.
    """

    log_z: torch.Tensor
    blocks: list
    low_memory: bool
    tables: Optional[SweepTables] = None
    checkpoints: Optional[list] = None


def sweeps_for(problem: LogProblem):
    return DurationSweeps(problem) if problem.duration_dependent else FactorizedSweeps(problem)


def _initial_inside(sweeps) -> RingState:
    return sweeps.initial_inside() if isinstance(sweeps, DurationSweeps) else sweeps.initial()


def _initial_outside(sweeps) -> RingState:
    return sweeps.initial_outside() if isinstance(sweeps, DurationSweeps) else sweeps.initial()


def _inside_tables(sweeps, r0: int, n: int) -> SweepTables:
    factorized = isinstance(sweeps, FactorizedSweeps)
    return new_tables(sweeps.problem, r0, n, alpha=True, u=factorized)


def _outside_tables(sweeps, r0: int, n: int) -> SweepTables:
    factorized = isinstance(sweeps, FactorizedSweeps)
    return new_tables(sweeps.problem, r0, n, alpha=factorized, u=True)


def block_rows(T: int, K: int, low_memory: bool) -> list:
    """Row ranges: one block `[0, T+1)`, or blocks of `~sqrt((T+1) K)` rows."""
    rows = T + 1
    size = rows if not low_memory else max(1, min(rows, math.isqrt(rows * K)))
    return [(r0, min(rows, r0 + size)) for r0 in range(0, rows, size)]


@contextlib.contextmanager
def sweep_threads(problem: LogProblem):
    """Run the sweeps with one intra-op thread on the CPU when a row's
    largest tensor is small (tiny ops do not amortize thread hand-offs;
    measured: `exp` on 1,536 floats takes ~1 us on one thread, ~20 us on two
    on a busy 2-core machine). The caller's setting is restored on exit."""
    width = problem.K * problem.B * problem.C * (problem.C if problem.duration_dependent else 1)
    previous = torch.get_num_threads()
    single = problem.device.type == "cpu" and width < SMALL_ROW_ELEMENTS and previous > 1
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(previous)


@torch.no_grad()
def inside(potentials, low_memory: bool = False):
    """Forward sweep: `(log_z (B,), saved)` (see module docstring)."""
    problem = LogProblem.from_potentials(potentials)
    sweeps = sweeps_for(problem)
    blocks = block_rows(problem.T, problem.K, low_memory)
    state = _initial_inside(sweeps)
    cum = problem.initial_cum()
    checkpoints, tables = [], None
    with sweep_threads(problem):
        for r0, r1 in blocks:
            if low_memory:
                checkpoints.append((state.clone(), cum))
            rows, cum = problem.rows(r0, r1, cum)
            if not low_memory:
                tables = _inside_tables(sweeps, r0, r1 - r0)
            state = sweeps.inside(state, rows, tables)
    saved = InsideSaved(state.log_z, blocks, low_memory, tables=tables,
                        checkpoints=checkpoints if low_memory else None)
    return (state.log_z * LN2).to(problem.out_dtype), saved


class _Accumulator:
    """The Posterior under construction, `(T, B, C)`-strided views into
    `(B, T, C)` outputs so that rows are written in place."""

    def __init__(self, problem: LogProblem, log_z: torch.Tensor, segments: Optional[torch.Tensor]):
        p = self.problem = problem
        B, T, K, C = p.B, p.T, p.K, p.C
        zeros = lambda *s, dtype=p.dtype: torch.zeros(s, dtype=dtype, device=p.device)  # noqa: E731
        self.log_z = log_z
        self.log_z_safe = torch.where(torch.isfinite(log_z), log_z, torch.zeros_like(log_z))
        self.segment_start = zeros(B, T, C, dtype=p.out_dtype)
        self.segment_end = zeros(B, T, C, dtype=p.out_dtype)
        self.transition = zeros(B, K, C, C) if p.duration_dependent else zeros(B, C, C)
        self.duration = zeros(B, K, C)
        self.segments = segments  # (B, T, K, C) or None

    def write_starts(self, r0: int, values: torch.Tensor) -> None:
        """`values (m, B, C)` = P(a segment starts at rows r0..r0+m-1); row T dropped."""
        m = min(values.shape[0], self.problem.T - r0)
        self.segment_start[:, r0:r0 + m] = values[:m].transpose(0, 1)

    def posterior(self) -> Posterior:
        p = self.problem
        last = self.segment_end.gather(1, (p.lengths - 1)[:, None, None].expand(-1, 1, p.C))[:, 0]
        return Posterior((self.log_z * LN2).to(p.out_dtype), self.segment_start, self.segment_end,
                         self.transition.to(p.out_dtype), self.duration.to(p.out_dtype),
                         self.segment_start[:, 0].clone(), last)


def _combine(sweeps, rows: FactorRows, ins: SweepTables, outs: SweepTables, tail: tuple,
             acc: _Accumulator) -> tuple:
    """Add one block's expected counts to `acc`; return the tail (the block's
    first K rows of `abar + leave_rows` and their scale) for the block before."""
    p = sweeps.problem
    K, n, r0 = p.K, rows.n, rows.r0
    tail_later, tail_scale = tail
    row_offset = (ins.scale + outs.scale - acc.log_z_safe).to(p.dtype)  # (n, B)
    lo = 1 if r0 == 0 else 0  # row 0 ends no segment
    ends = ins.alpha[lo:] + outs.u[lo:]
    ends += row_offset[lo:, :, None]
    acc.segment_end[:, r0 + lo - 1:r0 + n - 1] = ends.exp2_().transpose(0, 1)
    del ends
    later = torch.cat([outs.u + rows.leave, tail_later], dim=0)  # rows r0 .. r0+n+K-1
    later_scale = torch.cat([outs.scale, tail_scale], dim=0)
    chunk = max(1, n // sweeps.combine_chunk())
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        # windows of the K rows after each start: (m, B, C, K) -> (m, B, K, C)
        window = later[i0 + 1:i1 + K].unfold(0, K, 1).permute(0, 1, 3, 2)
        window_scale = later_scale[i0 + 1:i1 + K].unfold(0, K, 1)  # (m, B, K)
        offset = (ins.scale[i0:i1, :, None] + window_scale - acc.log_z_safe[:, None]).to(p.dtype)
        seg = sweeps.segment_terms(ins, outs, rows, i0, i1, window, offset, acc)
        if acc.segments is not None:
            m = min(i1, p.T - r0) - i0
            if m > 0:
                acc.segments[:, r0 + i0:r0 + i0 + m] = seg[:m].transpose(0, 1)
    return later[:K].clone(), later_scale[:K].clone()


@torch.no_grad()
def outside(potentials, saved: InsideSaved, segments: Optional[torch.Tensor] = None) -> Posterior:
    """Backward sweep and expected counts (see module docstring).

    `segments`, if given, is a `(B, T, K, C)` tensor that receives
    P(segment `[s, s+d)` has label `c`) at `[b, s, d-1, c]` (on request only:
    it is `O(T K C)`)."""
    problem = LogProblem.from_potentials(potentials)
    sweeps = sweeps_for(problem)
    acc = _Accumulator(problem, saved.log_z, segments)
    B, C, K = problem.B, problem.C, problem.K
    tail = (torch.full((K, B, C), NEG_INF, dtype=problem.dtype, device=problem.device),
            torch.zeros((K, B), dtype=torch.float64, device=problem.device))
    state = _initial_outside(sweeps)
    with sweep_threads(problem):
        for index in range(len(saved.blocks) - 1, -1, -1):
            r0, r1 = saved.blocks[index]
            if saved.low_memory:
                checkpoint, cum = saved.checkpoints[index]
                rows, _ = problem.rows(r0, r1, cum)
                ins = _inside_tables(sweeps, r0, r1 - r0)
                sweeps.inside(checkpoint.clone(), rows, ins)
            else:
                rows, _ = problem.rows(r0, r1, problem.initial_cum())
                ins = saved.tables
            outs = _outside_tables(sweeps, r0, r1 - r0)
            state = sweeps.outside(state, rows, outs)
            tail = _combine(sweeps, rows, ins, outs, tail, acc)
    return acc.posterior()
