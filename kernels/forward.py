"""The inside sweep (Log) and the Max sweep, left to right, one program per
sequence.

Per position `e = 1..L` (the factorized recurrence of docs/algorithm.md):

    alpha[e, c] = leave[e-1, c] (x) (+)_{d=1..K} v[e-d, c] (x) duration[d-1, c]
    u[e, c]     = (+)_{c'} alpha[e, c'] (x) transition[c', c]
    v[e, c]     = u[e, c] (x) enter[e, c]                 (v[0] = start (x) enter[0])

The last `K` rows of `v` live in a `(KP, CP)` ring held in registers: the
start `s` sits in slot `s mod KP`, so at position `e` slot `i` pairs with
duration `d = ((e - 1 - i) mod KP) + 1`; the durations are read in that
rotated order from a doubled table (see :func:`~.common.duration_ring`), one
position ahead, like the rows of scores.

`enter` and `leave` are not read from tables: the sweep carries the
zero-centred prefix sum `cum[e]` of the scores in float64 (the definition of
:mod:`semiring_semicrf.factors`, see :func:`~.common.advance_prefix_sum`),
so that nothing of size `T` is prepared before it runs.

(Measured on an H100: keeping the newest row apart, so that the `K C` sum
leaves the dependency chain, made this sweep 1.5-2.4x slower in Triton, not
faster; see docs/performance.md.)

The tiles are the k-best sweep's (:func:`~.common.sweep_tiling`): 4-d,
`(KP / S, G, S, CP / G)`, each of the `G` warps a group of labels, its lanes
`S` ring slots (or previous labels) of each, a thread the rest in
registers. Both sums of a step, over the slots and over the previous
labels, then stay inside a warp (registers and shuffles), and a label's
vectors are `(1, G, S, CP / G)`, the same in each `s`. The one exchange
between threads a step, alpha by label into alpha by previous label, is a
shuffle (one warp, no tables stored) or a store, a barrier and a load
through a small scratch buffer (:func:`~.common.by_previous_label`). Every
load and store goes through :func:`~.common.load_where_held` /
:func:`~.common.store_where_held`, so that Triton keeps this one layout
throughout: a `tl.load`'s coalescing layout spreads into the step and
brings moves through shared memory. Barriers a step (sm_90): 14 -> 1 at
(16, 16) on four warps, 3 -> 0 or 1 at (64, 8) on one. On an H200
(`benchmarks/gpu_warps.py`): at (16, 2000, 16, 12) the forward 1.40 ->
0.65 ms, at (4, 1000, 32, 24) 0.85 -> 0.55 ms (now on four warps), at (1,
10^5, 64, 8) 45.4 -> 38.4 ms (42.6 with tables, was 47.0), the Max sweep
35.6 -> 28.8 ms; at (4, 1000, 32, 128) 4.0 -> 2.0 ms.

The Max sweep's back-pointers are the smallest keys at the maximum (the
smaller duration, the smaller previous label, and at the end the smaller
last label): the documented tie-breaking rule, the k-best sweep's with k = 1.

Running normalization: after each position the ring, alpha and u are shifted
by `r[e] = max_c alpha[e, c]`, so everything stored stays O(1) at any T; the
shifts add up in float64 to the scale `N[e] = sum_{i<=e} r[i]`.

Log stores, per position, `alpha_hat[e] = alpha[e] - N[e]`,
`v_hat[e] = v[e] - N[e]` (`v_hat[0] = start + enter[0]`) and `N[e]`
(float64), and `cum[L]` per sequence: what the outside sweep and the sampler
need, `O(T C)`, the order of the gradient the backward returns. Max stores
the backpointers instead: the best duration `d - 1` of `alpha[e, c]` and the
best source label of `u[e, c]`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    LN2,
    LOG2E,
    boundary_nans,
    boundary_row,
    by_previous_label,
    enter_factor,
    fast_exp2,
    fast_log2,
    load_where_held,
    pad,
    position_inputs,
    position_rows,
    potential_nan_mark,
    reduce_max,
    reduce_min,
    reduce_sum,
    sequence_inputs,
    sizes,
    small,
    step_factors,
    store_where_held,
    sweep_num_warps,
    sweep_tile_indices,
    sweep_tiling,
)


@triton.jit
def forward_sweep_kernel(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr,
        duration_ring_ptr, transition_ptr, start_ptr, end_ptr, lengths_ptr,
        alpha_table_ptr, v_table_ptr, scale_ptr, cum_ptr, result_ptr, final_ptr, exchange_ptr,
        T, C, scores_stride, start_stride, end_stride,
        KP: tl.constexpr, CP: tl.constexpr, G: tl.constexpr, S: tl.constexpr, MAX: tl.constexpr,
        TABLES: tl.constexpr, START_SCORES: tl.constexpr, END_SCORES: tl.constexpr):
    """One sequence per program (`scores` and the optional boundary scores:
    rows of C, batch strides given; `mean (B, C)` float64).

    Log: `result (B,)` gets log Z and, with `TABLES`, `alpha_table`,
    `v_table (B, T+1, C)` float32 get `alpha_hat`, `v_hat`, `scale (B, T+1)`
    float64 gets `N` and `cum (B, C)` float64 the prefix sum at `L` (without,
    nothing of size T is written). Max: `alpha_table`, `v_table` get the
    integer backpointers; `result` the best score; `final (B,)` the best last
    label. `exchange (B, 2, CP)` float32 is scratch (alpha between warps).
    Tiles `(KP / S, G, S, CP / G)` (:func:`~.common.sweep_tiling`), launched
    on `G` warps.
    """
    SHUFFLE: tl.constexpr = not (TABLES or MAX)
    b = tl.program_id(0)
    length = tl.load(lengths_ptr + b).to(tl.int32)
    b = b.to(tl.int64)
    copy, labels, slots, sources = sweep_tile_indices(KP, CP, G, S)
    valid = labels < C
    stores = valid & (copy == 0)
    scores_ptr, start_scores_ptr, end_scores_ptr, mean = sequence_inputs(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr, b, C, scores_stride, start_stride, end_stride,
        labels, True)
    table = b * (T + 1) * C
    exchange_ptr += b * 2 * CP
    # Slot i at position e pairs with row (e - 1) mod KP + KP - i of the first table.
    window = duration_ring_ptr + b * 4 * KP * CP + KP * CP - slots * CP + labels
    transition = load_where_held(transition_ptr + sources * C + labels, (sources < C) & valid, float("-inf"))
    start = load_where_held(start_ptr + labels, valid, float("-inf"))
    cum = tl.zeros(labels.shape, tl.float64)
    first_start_score = boundary_row(start_scores_ptr, 0, labels, C, T, START_SCORES, True)
    v0 = start + enter_factor(cum, first_start_score)
    scale = tl.zeros(labels.shape, tl.float64)  # the same in every entry
    # Max: NaN once a boundary score read was NaN (start_scores[0] here)
    seen = tl.where(first_start_score != first_start_score, first_start_score, 0.0)
    if TABLES and not MAX:
        store_where_held(v_table_ptr + table + labels, v0, stores)
        store_where_held(scale_ptr + b * (T + 1) + labels * 0, scale, (labels == 0) & (copy == 0))
    ring = tl.where(slots == 0, v0, float("-inf"))
    alpha = tl.full(labels.shape, float("-inf"), tl.float32)
    next_duration = load_where_held(window, valid, 0.0)
    next_scores, next_end_score, next_start_score = position_rows(
        scores_ptr, start_scores_ptr, end_scores_ptr, 0, labels, C, T, START_SCORES, END_SCORES, True)
    for e in range(1, length + 1):
        duration, scores, end_score, start_score = next_duration, next_scores, next_end_score, next_start_score
        next_duration = load_where_held(window + (e & (KP - 1)) * CP, valid, 0.0)
        next_scores, next_end_score, next_start_score = position_rows(
            scores_ptr, start_scores_ptr, end_scores_ptr, e, labels, C, T, START_SCORES, END_SCORES, True)
        cum, leave, enter = step_factors(cum, scores, end_score, start_score, mean)  # cum[e], leave[e-1], enter[e]
        if MAX and (START_SCORES or END_SCORES):
            seen = boundary_nans(seen, start_score, end_score, e, length)

        x = ring + duration
        a = tiled_sum(x, MAX)
        alpha = a + leave
        # alpha by previous label, along the lists' axes: the one exchange between threads a step (through
        # `exchange`, double buffered by the position's parity, where it crosses warps)
        by_source = by_previous_label((alpha,), labels, sources, copy, exchange_ptr + (e & 1) * CP, CP, G,
                                      SHUFFLE)[0]
        r = reduce_max(by_source, 0, 2)
        r = tl.where(r == float("-inf"), 0.0, r)
        y = by_source + transition
        u = tiled_sum(y, MAX)
        alpha = alpha - r
        v = u - r + enter
        row = table + e * C + labels
        scale += r.to(tl.float64)
        if MAX:
            best_slot = first_at_max(x, a, (e - 1 - slots) & (KP - 1), KP)
            best_source = first_at_max(y, u, sources, CP)
            store_where_held(alpha_table_ptr + row, best_slot.to(alpha_table_ptr.dtype.element_ty), stores)
            store_where_held(v_table_ptr + row, best_source.to(v_table_ptr.dtype.element_ty), stores)
        elif TABLES:
            store_where_held(alpha_table_ptr + row, alpha, stores)
            store_where_held(v_table_ptr + row, v, stores)
            store_where_held(scale_ptr + b * (T + 1) + e + labels * 0, scale, (labels == 0) & (copy == 0))
        ring = tl.where(slots == (e & (KP - 1)), v, ring - r)

    end = load_where_held(end_ptr + labels, valid, float("-inf"))
    tl.debug_barrier()  # (every warp is past its last step's reads of `exchange`)
    lasts = by_previous_label((alpha + end,), labels, sources, copy, exchange_ptr, CP, G, SHUFFLE)[0]
    closing = tiled_sum(lasts, MAX)
    first = (labels == 0) & (copy == 0)
    result = (scale + closing.to(tl.float64)).to(tl.float32)
    if MAX:
        result += potential_nan_mark(cum, seen)
    store_where_held(result_ptr + b + labels * 0, result, first)
    if MAX:
        store_where_held(final_ptr + b + labels * 0, first_at_max(lasts, closing, sources, CP).to(tl.int64), first)
    elif TABLES:
        store_where_held(cum_ptr + b * C + labels, cum, stores)


@triton.jit
def tiled_sum(x, MAX: tl.constexpr):
    """`(+)` of log-values over axes 0 and 2 (the lists) of a sweep tile,
    both kept: log-sum-exp (Log) or max (Max); `-inf` where all are."""
    m = reduce_max(x, 0, 2)
    if MAX:
        return m
    safe = tl.where(m == float("-inf"), 0.0, m)
    w = fast_exp2(x * LOG2E - safe * LOG2E)
    return safe + LN2 * fast_log2(reduce_sum(w, 0, 2))


@triton.jit
def first_at_max(x, m, key, N: tl.constexpr):
    """The smallest `key` over axes 0 and 2 where `x` equals its maximum `m`."""
    return reduce_min(tl.where(x == m, key, N), 0, 2)


def backpointer_dtype(n: int) -> torch.dtype:
    """The smallest integer dtype holding indices `< n`."""
    return torch.int16 if n <= torch.iinfo(torch.int16).max else torch.int32


def forward_sweep(factors, duration_ring: torch.Tensor, max_semiring: bool, num_warps: int | None = None,
                  tables: bool = True):
    """Launch the sweep on float32 :class:`Factors` and their
    :func:`~.common.duration_ring`. Returns `(result (B,), final (B,),
    alpha_table, v_table, scale, cum)` as documented on
    :func:`forward_sweep_kernel` (`final` is None for Log, `scale` and `cum`
    None for Max; the four tables None for Log without `tables`).
    `num_warps`: the tiles' label groups (:func:`~.common.sweep_tiling`, at
    most `CP`); :func:`~.common.sweep_num_warps` by default."""
    B, T, K, C = sizes(factors)
    KP, CP = pad(K), pad(C)
    inputs, flags = position_inputs(factors)
    device = inputs[0].device
    alpha_table = v_table = scale = cum = final = None
    if max_semiring:
        alpha_table = torch.empty((B, T + 1, C), dtype=backpointer_dtype(KP), device=device)
        v_table = torch.empty((B, T + 1, C), dtype=backpointer_dtype(CP), device=device)
        final = torch.empty(B, dtype=torch.int64, device=device)
    elif tables:
        alpha_table = torch.empty((B, T + 1, C), dtype=torch.float32, device=device)
        v_table = torch.empty((B, T + 1, C), dtype=torch.float32, device=device)
        scale = torch.empty((B, T + 1), dtype=torch.float64, device=device)
        cum = torch.empty((B, C), dtype=torch.float64, device=device)
    result = torch.empty(B, dtype=torch.float32, device=device)
    if B == 0:
        return result, final, alpha_table, v_table, scale, cum
    warps = num_warps or sweep_num_warps(KP, CP)
    G, S = sweep_tiling(KP, CP, warps)
    exchange = torch.empty((B, 2, CP), dtype=torch.float32, device=device)
    unused = result  # a valid pointer for the arguments this launch does not write
    forward_sweep_kernel[(B,)](
        *inputs[:4], duration_ring, small(factors.transition), small(factors.start), small(factors.end),
        factors.lengths, *(unused if t is None else t for t in (alpha_table, v_table, scale, cum)), result,
        unused if final is None else final, exchange, T, C, *inputs[4:], KP=KP, CP=CP, G=G, S=S, MAX=max_semiring,
        TABLES=tables, num_warps=G, **flags)
    return result, final, alpha_table, v_table, scale, cum
