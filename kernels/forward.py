"""The inside sweep (Log) and the Max sweep, left to right, one program per
sequence.

Per position `e = 1..L` (DESIGN.md section 2, factorized recurrence):

    alpha[e, c] = leave[e-1, c] (x) (+)_{d=1..K} v[e-d, c] (x) duration[d-1, c]
    u[e, c]     = (+)_{c'} alpha[e, c'] (x) transition[c', c]
    v[e, c]     = u[e, c] (x) enter[e, c]                 (v[0] = start (x) enter[0])

The last `K` rows of `v` live in a `(KP, CP)` ring held in registers: the
start `s` sits in slot `s mod KP`, so at position `e` slot `i` pairs with
duration `d = ((e - 1 - i) mod KP) + 1`; the durations are read in that
rotated order from a doubled table (see :class:`~.common.KernelInputs`).

Only the newest row `v[e-1]` of the ring depends on the previous position,
so each position splits its sum: the part over `d >= 2` (`K C` terms) is
computed one position ahead, off the dependency chain, and the chain itself
is `alpha = (v[e-1] (x) duration[0]) (+) partial`, then the `C x C` product
with the transition.

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

from .common import KernelInputs, pad, row_mask, semiring_plus, semiring_sum, sweep_num_warps


@triton.jit
def forward_sweep_kernel(
        enter_ptr, leave_ptr, duration_ring_ptr, transition_ptr, start_ptr, end_ptr, lengths_ptr,
        alpha_table_ptr, u_table_ptr, scale_ptr, result_ptr, final_ptr,
        T, C, enter_stride, leave_stride,
        KP: tl.constexpr, CP: tl.constexpr, MAX: tl.constexpr):
    """One sequence per program (`enter`, `leave`: rows of C, batch strides given).

    Log: `alpha_table`, `u_table (B, T+1, C)` float32 get `alpha_hat`,
    `u_hat`; `scale (B, T+1)` float64 gets `N`; `result (B,)` log Z;
    `final (B,)` `log sum_c exp(alpha_hat[L, c] + end[c])`.
    Max: `alpha_table`, `u_table` get the integer backpointers; `result` the
    best score; `final` the best last label.
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
    durations = duration_ring_ptr + b * 4 * KP * CP
    duration_1 = tl.load(durations + labels)
    # d >= 2 only (the second table): slot i at position e pairs with row (e - 1) mod KP + KP - i.
    longer_window = durations + 3 * KP * CP - slots[:, None] * CP + labels[None, :]
    transition = tl.load(transition_ptr + labels[:, None] * C + labels[None, :],
                         mask=valid[:, None] & valid[None, :], other=float("-inf"))
    start = tl.load(start_ptr + labels, mask=valid, other=float("-inf"))
    if not MAX:
        tl.store(u_table_ptr + table + labels, start, mask=valid)
        tl.store(scale_ptr + b * (T + 1), 0.0)
    newest = start + tl.load(enter_ptr + labels, mask=valid, other=0.0)  # v[0]
    ring = tl.where(slots[:, None] == 0, newest[None, :], float("-inf"))
    partial = tl.full((CP,), float("-inf"), tl.float32)  # d >= 2 part of position 1: none
    partial_best = tl.zeros((CP,), tl.int32)
    alpha = tl.full((CP,), float("-inf"), tl.float32)
    scale = tl.full([], 0.0, tl.float64)
    # Rows of `leave` / `enter` are loaded two positions ahead.
    leave_1 = tl.load(leave_ptr + labels, mask=valid, other=0.0)
    leave_2 = tl.load(leave_ptr + C + labels, mask=row_mask(labels, C, 1, T), other=0.0)
    enter_1 = tl.load(enter_ptr + C + labels, mask=row_mask(labels, C, 1, T), other=0.0)
    enter_2 = tl.load(enter_ptr + 2 * C + labels, mask=row_mask(labels, C, 2, T), other=0.0)
    for e in range(1, length + 1):
        leave, enter = leave_1, enter_1
        leave_1, enter_1 = leave_2, enter_2
        leave_2 = tl.load(leave_ptr + (e + 1) * C + labels, mask=row_mask(labels, C, e + 1, T), other=0.0)
        enter_2 = tl.load(enter_ptr + (e + 2) * C + labels, mask=row_mask(labels, C, e + 2, T), other=0.0)

        # Off the chain: the d >= 2 part of position e + 1 (slot e mod KP is d = 1 there: -inf row).
        x = ring + tl.load(longer_window + (e & (KP - 1)) * CP)
        if MAX:
            next_partial, next_slot = tl.max(x, axis=0, return_indices=True)
            next_best = (e - next_slot) & (KP - 1)
        else:
            next_partial = semiring_sum(x, 0, False)

        # The chain: alpha[e] from the newest row and the partial, then u[e].
        newest_term = newest + duration_1
        a = semiring_plus(newest_term, partial, MAX)
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
        if MAX:
            best = tl.where(newest_term >= partial, 0, partial_best)
            tl.store(alpha_table_ptr + row, best.to(alpha_table_ptr.dtype.element_ty), mask=valid)
            tl.store(u_table_ptr + row, best_source.to(u_table_ptr.dtype.element_ty), mask=valid)
        else:
            tl.store(alpha_table_ptr + row, alpha, mask=valid)
            tl.store(u_table_ptr + row, u, mask=valid)
        scale += r.to(tl.float64)
        if not MAX:
            tl.store(scale_ptr + b * (T + 1) + e, scale)
        newest = u + enter
        partial = next_partial - r
        if MAX:
            partial_best = next_best
        ring = tl.where(slots[:, None] == (e & (KP - 1)), newest[None, :], ring - r)

    end = tl.load(end_ptr + labels, mask=valid, other=float("-inf"))
    last = alpha + end
    final = semiring_sum(last, 0, MAX)
    tl.store(result_ptr + b, (scale + final.to(tl.float64)).to(tl.float32))
    if MAX:
        tl.store(final_ptr + b, tl.argmax(last, axis=0).to(final_ptr.dtype.element_ty))
    else:
        tl.store(final_ptr + b, final)


def backpointer_dtype(n: int) -> torch.dtype:
    """The smallest integer dtype holding indices `< n`."""
    return torch.int16 if n <= torch.iinfo(torch.int16).max else torch.int32


def forward_sweep(inputs: KernelInputs, max_semiring: bool, num_warps: int | None = None):
    """Launch the sweep. Returns `(result (B,), final (B,), alpha_table,
    u_table, scale)` as documented on :func:`forward_sweep_kernel` (`scale`
    is None for Max)."""
    B, T, K, C = inputs.shape
    KP, CP = pad(K), pad(C)
    device = inputs.enter.device
    if max_semiring:
        alpha_table = torch.empty((B, T + 1, C), dtype=backpointer_dtype(KP), device=device)
        u_table = torch.empty((B, T + 1, C), dtype=backpointer_dtype(CP), device=device)
        scale = None
        final = torch.empty(B, dtype=torch.int64, device=device)
    else:
        alpha_table = torch.empty((B, T + 1, C), dtype=torch.float32, device=device)
        u_table = torch.empty((B, T + 1, C), dtype=torch.float32, device=device)
        scale = torch.empty((B, T + 1), dtype=torch.float64, device=device)
        final = torch.empty(B, dtype=torch.float32, device=device)
    result = torch.empty(B, dtype=torch.float32, device=device)
    forward_sweep_kernel[(B,)](
        inputs.enter, inputs.leave, inputs.duration_ring, inputs.transition, inputs.start, inputs.end,
        inputs.lengths, alpha_table, u_table, alpha_table if scale is None else scale, result, final,
        T, C, inputs.enter.stride(0), inputs.leave.stride(0), KP=KP, CP=CP, MAX=max_semiring,
        num_warps=num_warps or sweep_num_warps(KP, CP))
    return result, final, alpha_table, u_table, scale
