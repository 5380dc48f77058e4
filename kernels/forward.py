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
    boundary_row,
    enter_factor,
    pad,
    position_inputs,
    position_rows,
    semiring_sum,
    sequence_inputs,
    sizes,
    small,
    step_factors,
    sweep_num_warps,
)


@triton.jit
def forward_sweep_kernel(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr,
        duration_ring_ptr, transition_ptr, start_ptr, end_ptr, lengths_ptr,
        alpha_table_ptr, v_table_ptr, scale_ptr, cum_ptr, result_ptr, final_ptr,
        T, C, scores_stride, start_stride, end_stride,
        KP: tl.constexpr, CP: tl.constexpr, MAX: tl.constexpr, TABLES: tl.constexpr,
        START_SCORES: tl.constexpr, END_SCORES: tl.constexpr):
    """One sequence per program (`scores` and the optional boundary scores:
    rows of C, batch strides given; `mean (B, C)` float64).

    Log: `result (B,)` gets log Z and, with `TABLES`, `alpha_table`,
    `v_table (B, T+1, C)` float32 get `alpha_hat`, `v_hat`, `scale (B, T+1)`
    float64 gets `N` and `cum (B, C)` float64 the prefix sum at `L` (without,
    nothing of size T is written). Max: `alpha_table`, `v_table` get the
    integer backpointers; `result` the best score; `final (B,)` the best last
    label.
    """
    b = tl.program_id(0)
    length = tl.load(lengths_ptr + b).to(tl.int32)
    b = b.to(tl.int64)
    slots = tl.arange(0, KP)
    labels = tl.arange(0, CP)
    valid = labels < C
    scores_ptr, start_scores_ptr, end_scores_ptr, mean = sequence_inputs(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr, b, C, scores_stride, start_stride, end_stride,
        labels)
    table = b * (T + 1) * C
    # Slot i at position e pairs with row (e - 1) mod KP + KP - i of the first table.
    window = duration_ring_ptr + b * 4 * KP * CP + KP * CP - slots[:, None] * CP + labels[None, :]
    transition = tl.load(transition_ptr + labels[:, None] * C + labels[None, :],
                         mask=valid[:, None] & valid[None, :], other=float("-inf"))
    start = tl.load(start_ptr + labels, mask=valid, other=float("-inf"))
    cum = tl.zeros((CP,), tl.float64)
    v0 = start + enter_factor(cum, boundary_row(start_scores_ptr, 0, labels, C, T, START_SCORES))
    if TABLES and not MAX:
        tl.store(v_table_ptr + table + labels, v0, mask=valid)
        tl.store(scale_ptr + b * (T + 1), 0.0)
    ring = tl.where(slots[:, None] == 0, v0[None, :], float("-inf"))
    alpha = tl.full((CP,), float("-inf"), tl.float32)
    scale = tl.full([], 0.0, tl.float64)
    next_duration = tl.load(window)
    next_scores, next_end_score, next_start_score = position_rows(
        scores_ptr, start_scores_ptr, end_scores_ptr, 0, labels, C, T, START_SCORES, END_SCORES)
    for e in range(1, length + 1):
        duration, scores, end_score, start_score = next_duration, next_scores, next_end_score, next_start_score
        next_duration = tl.load(window + (e & (KP - 1)) * CP)
        next_scores, next_end_score, next_start_score = position_rows(
            scores_ptr, start_scores_ptr, end_scores_ptr, e, labels, C, T, START_SCORES, END_SCORES)
        cum, leave, enter = step_factors(cum, scores, end_score, start_score, mean)  # cum[e], leave[e-1], enter[e]

        x = ring + duration
        if MAX:
            a, best_slot = tl.max(x, axis=0, return_indices=True)
        else:
            a = semiring_sum(x, 0, False)
        alpha = a + leave
        r = tl.max(alpha, axis=0)
        r = tl.where(r == float("-inf"), 0.0, r)
        y = alpha[:, None] + transition
        if MAX:
            u, best_source = tl.max(y, axis=0, return_indices=True)
        else:
            u = semiring_sum(y, 0, False)
        alpha = alpha - r
        v = u - r + enter
        row = table + e * C + labels
        scale += r.to(tl.float64)
        if MAX:
            tl.store(alpha_table_ptr + row, ((e - 1 - best_slot) & (KP - 1)).to(alpha_table_ptr.dtype.element_ty),
                     mask=valid)
            tl.store(v_table_ptr + row, best_source.to(v_table_ptr.dtype.element_ty), mask=valid)
        elif TABLES:
            tl.store(alpha_table_ptr + row, alpha, mask=valid)
            tl.store(v_table_ptr + row, v, mask=valid)
            tl.store(scale_ptr + b * (T + 1) + e, scale)
        ring = tl.where(slots[:, None] == (e & (KP - 1)), v[None, :], ring - r)

    end = tl.load(end_ptr + labels, mask=valid, other=float("-inf"))
    last = alpha + end
    closing = semiring_sum(last, 0, MAX)
    tl.store(result_ptr + b, (scale + closing.to(tl.float64)).to(tl.float32))
    if MAX:
        tl.store(final_ptr + b, tl.argmax(last, axis=0).to(final_ptr.dtype.element_ty))
    elif TABLES:
        tl.store(cum_ptr + b * C + labels, cum, mask=valid)


def backpointer_dtype(n: int) -> torch.dtype:
    """The smallest integer dtype holding indices `< n`."""
    return torch.int16 if n <= torch.iinfo(torch.int16).max else torch.int32


def forward_sweep(factors, duration_ring: torch.Tensor, max_semiring: bool, num_warps: int | None = None,
                  tables: bool = True):
    """Launch the sweep on float32 :class:`Factors` and their
    :func:`~.common.duration_ring`. Returns `(result (B,), final (B,),
    alpha_table, v_table, scale, cum)` as documented on
    :func:`forward_sweep_kernel` (`final` is None for Log, `scale` and `cum`
    None for Max; the four tables None for Log without `tables`)."""
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
    unused = result  # a valid pointer for the arguments this launch does not write
    forward_sweep_kernel[(B,)](
        *inputs[:4], duration_ring, small(factors.transition), small(factors.start), small(factors.end),
        factors.lengths, *(unused if t is None else t for t in (alpha_table, v_table, scale, cum)), result,
        unused if final is None else final, T, C, *inputs[4:], KP=KP, CP=CP, MAX=max_semiring, TABLES=tables,
        num_warps=num_warps or sweep_num_warps(KP, CP), **flags)
    return result, final, alpha_table, v_table, scale, cum
