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
position ahead, like the rows of `enter` and `leave`.

(Measured on an H100: keeping the newest row apart, so that the `K C` sum
leaves the dependency chain, made this sweep 1.5-2.4x slower in Triton, not
faster; see docs/performance.md.)

Running normalization: after each position the ring, alpha and u are shifted
by `r[e] = max_c alpha[e, c]`, so everything stored stays O(1) at any T; the
shifts add up in float64 to the scale `N[e] = sum_{i<=e} r[i]`.

Log stores, per position, `alpha_hat[e] = alpha[e] - N[e]`,
`u_hat[e] = u[e] - N[e]` (`u_hat[0] = start`) and `N[e]` (float64): what the
outside sweep needs, `O(T C)`, the order of the gradient it returns. Max
stores the backpointers instead: the best duration `d - 1` of `alpha[e, c]`
and the best source label of `u[e, c]`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import pad, row_mask, rows, semiring_sum, sizes, small, sweep_num_warps


@triton.jit
def forward_sweep_kernel(
        enter_ptr, leave_ptr, duration_ring_ptr, transition_ptr, start_ptr, end_ptr, lengths_ptr,
        alpha_table_ptr, u_table_ptr, scale_ptr, result_ptr, final_ptr,
        T, C, enter_stride, leave_stride,
        KP: tl.constexpr, CP: tl.constexpr, MAX: tl.constexpr, TABLES: tl.constexpr):
    """One sequence per program (`enter`, `leave`: rows of C, batch strides given).

    Log: `result (B,)` gets log Z and, with `TABLES`, `alpha_table`,
    `u_table (B, T+1, C)` float32 get `alpha_hat`, `u_hat` and
    `scale (B, T+1)` float64 gets `N` (without, nothing of size T is written).
    Max: `alpha_table`, `u_table` get the integer backpointers; `result` the
    best score; `final (B,)` the best last label.
    """
    b = tl.program_id(0)
    length = tl.load(lengths_ptr + b).to(tl.int32)
    b = b.to(tl.int64)
    slots = tl.arange(0, KP)
    labels = tl.arange(0, CP)
    valid = labels < C
    enter_ptr += b * enter_stride
    leave_ptr += b * leave_stride
    table = b * (T + 1) * C
    # Slot i at position e pairs with row (e - 1) mod KP + KP - i of the first table.
    window = duration_ring_ptr + b * 4 * KP * CP + KP * CP - slots[:, None] * CP + labels[None, :]
    transition = tl.load(transition_ptr + labels[:, None] * C + labels[None, :],
                         mask=valid[:, None] & valid[None, :], other=float("-inf"))
    start = tl.load(start_ptr + labels, mask=valid, other=float("-inf"))
    if TABLES and not MAX:
        tl.store(u_table_ptr + table + labels, start, mask=valid)
        tl.store(scale_ptr + b * (T + 1), 0.0)
    v0 = start + tl.load(enter_ptr + labels, mask=valid, other=0.0)
    ring = tl.where(slots[:, None] == 0, v0[None, :], float("-inf"))
    alpha = tl.full((CP,), float("-inf"), tl.float32)
    scale = tl.full([], 0.0, tl.float64)
    next_duration = tl.load(window)
    next_leave = tl.load(leave_ptr + labels, mask=valid, other=0.0)
    next_enter = tl.load(enter_ptr + C + labels, mask=row_mask(labels, C, 1, T), other=0.0)
    for e in range(1, length + 1):
        duration, leave, enter = next_duration, next_leave, next_enter
        next_duration = tl.load(window + (e & (KP - 1)) * CP)
        next_leave = tl.load(leave_ptr + e * C + labels, mask=row_mask(labels, C, e, T), other=0.0)
        next_enter = tl.load(enter_ptr + (e + 1) * C + labels, mask=row_mask(labels, C, e + 1, T), other=0.0)

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
        u = u - r
        row = table + e * C + labels
        scale += r.to(tl.float64)
        if MAX:
            tl.store(alpha_table_ptr + row, ((e - 1 - best_slot) & (KP - 1)).to(alpha_table_ptr.dtype.element_ty),
                     mask=valid)
            tl.store(u_table_ptr + row, best_source.to(u_table_ptr.dtype.element_ty), mask=valid)
        elif TABLES:
            tl.store(alpha_table_ptr + row, alpha, mask=valid)
            tl.store(u_table_ptr + row, u, mask=valid)
            tl.store(scale_ptr + b * (T + 1) + e, scale)
        ring = tl.where(slots[:, None] == (e & (KP - 1)), (u + enter)[None, :], ring - r)

    end = tl.load(end_ptr + labels, mask=valid, other=float("-inf"))
    last = alpha + end
    closing = semiring_sum(last, 0, MAX)
    tl.store(result_ptr + b, (scale + closing.to(tl.float64)).to(tl.float32))
    if MAX:
        tl.store(final_ptr + b, tl.argmax(last, axis=0).to(final_ptr.dtype.element_ty))


def backpointer_dtype(n: int) -> torch.dtype:
    """The smallest integer dtype holding indices `< n`."""
    return torch.int16 if n <= torch.iinfo(torch.int16).max else torch.int32


def forward_sweep(factors, duration_ring: torch.Tensor, max_semiring: bool, num_warps: int | None = None,
                  tables: bool = True):
    """Launch the sweep on float32 :class:`Factors` and their
    :func:`~.common.duration_ring`. Returns `(result (B,), final (B,),
    alpha_table, u_table, scale)` as documented on
    :func:`forward_sweep_kernel` (`final` is None for Log, `scale` None for
    Max; the three tables None for Log without `tables`)."""
    B, T, K, C = sizes(factors)
    KP, CP = pad(K), pad(C)
    enter, leave = rows(factors.enter), rows(factors.leave)
    device = enter.device
    if max_semiring:
        alpha_table = torch.empty((B, T + 1, C), dtype=backpointer_dtype(KP), device=device)
        u_table = torch.empty((B, T + 1, C), dtype=backpointer_dtype(CP), device=device)
        scale = None
        final = torch.empty(B, dtype=torch.int64, device=device)
    elif tables:
        alpha_table = torch.empty((B, T + 1, C), dtype=torch.float32, device=device)
        u_table = torch.empty((B, T + 1, C), dtype=torch.float32, device=device)
        scale = torch.empty((B, T + 1), dtype=torch.float64, device=device)
        final = None
    else:
        alpha_table = u_table = scale = final = None
    result = torch.empty(B, dtype=torch.float32, device=device)
    unused = result  # a valid pointer for the arguments this launch does not write
    forward_sweep_kernel[(B,)](
        enter, leave, duration_ring, small(factors.transition), small(factors.start), small(factors.end),
        factors.lengths, unused if alpha_table is None else alpha_table, unused if u_table is None else u_table,
        unused if scale is None else scale, result, unused if final is None else final,
        T, C, enter.stride(0), leave.stride(0), KP=KP, CP=CP, MAX=max_semiring, TABLES=tables,
        num_warps=num_warps or sweep_num_warps(KP, CP))
    return result, final, alpha_table, u_table, scale
