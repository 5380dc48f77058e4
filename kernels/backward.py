"""The outside sweep (Log), right to left, and the expected counts.

Outside recurrence (DESIGN.md section 2), per position `e = L..1`:

    abar[e, c]   = end[c]                                            (e = L)
                 = (+)_{c''} ubar[e, c''] (x) transition[c, c'']     (e < L)
    ubar[s, c]   = enter[s, c] (x) (+)_{d} vbar[s+d, c] (x) duration[d-1, c]
    vbar[e, c]   = abar[e, c] (x) leave[e-1, c]

The sweep runs in the forward's frame: it stores `abar'[e] = abar[e] + N[e]
- Z` and `ubar'[s] = ubar[s] + N[s] - Z` (`N` the forward's running scale,
`Z` log Z), so that `alpha_hat[e] + abar'[e]` is a log-probability and no
large number is ever formed. The ring of the last `K` rows of `vbar'` moves
from frame `N[e]` to `N[e-1]` by subtracting the forward's shift `r[e]`.

On the way it writes the two posteriors of a position:
`segment_end[e-1] = exp(alpha_hat[e] + abar'[e])` and
`segment_start[s] = exp(u_hat[s] + ubar'[s])`; and it stores `vbar'`, `ubar'`
for :func:`expected_counts_kernel`, which sums the transition and duration
counts over blocks of positions in parallel (fixed-order partial sums, so
results are bitwise reproducible).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import KernelInputs, pad, row_mask, semiring_sum, sweep_num_warps


@triton.jit
def outside_sweep_kernel(
        enter_ptr, leave_ptr, duration_ring_ptr, transition_ptr, end_ptr, lengths_ptr,
        alpha_table_ptr, u_table_ptr, norm_ptr, final_ptr,
        vbar_table_ptr, ubar_table_ptr, segment_start_ptr, segment_end_ptr,
        T, K, C,
        KP: tl.constexpr, CP: tl.constexpr):
    """One sequence per program. Reads the forward's `alpha_hat`, `u_hat`
    `(B, T+1, C)`, `r (B, T+1)` and `final (B,)`; writes `vbar'`, `ubar'`
    `(B, T+1, C)` (rows 1..L and 0..L-1) and `segment_start`, `segment_end`
    `(B, T, C)` (rows 0..L-1)."""
    b = tl.program_id(0)
    length = tl.load(lengths_ptr + b)
    b = b.to(tl.int64)
    slots = tl.arange(0, KP)
    labels = tl.arange(0, CP)
    valid = labels < C
    seq = b * T * C
    table = b * (T + 1) * C
    norm_row = norm_ptr + b * (T + 1)
    # Computing ubar'[e - 1], slot i pairs with duration_ring[(-e) mod KP + i].
    ring_window = duration_ring_ptr + b * 2 * KP * CP + slots[:, None] * CP + labels[None, :]
    # transition[c, c''] with c (source) on rows: reduce over the columns.
    transition = tl.load(transition_ptr + labels[:, None] * C + labels[None, :],
                         mask=valid[:, None] & valid[None, :], other=float("-inf"))
    end = tl.load(end_ptr + labels, mask=valid, other=float("-inf"))
    abar_last = end - tl.load(final_ptr + b)
    ring = tl.full((KP, CP), float("-inf"), tl.float32)
    ubar = tl.full((CP,), float("-inf"), tl.float32)
    # Inputs of position e are loaded one position ahead.
    next_duration = tl.load(ring_window + ((0 - length) & (KP - 1)) * CP)
    next_leave = tl.load(leave_ptr + seq + (length - 1) * C + labels, mask=valid, other=0.0)
    next_enter = tl.load(enter_ptr + seq + (length - 1) * C + labels, mask=valid, other=0.0)
    next_alpha = tl.load(alpha_table_ptr + table + length * C + labels, mask=valid, other=float("-inf"))
    next_u = tl.load(u_table_ptr + table + (length - 1) * C + labels, mask=valid, other=float("-inf"))
    next_shift = tl.load(norm_row + length)
    for i in range(0, length):
        e = length - i
        duration, leave, enter = next_duration, next_leave, next_enter
        alpha, u, shift = next_alpha, next_u, next_shift
        more = row_mask(labels, C, e - 2, T)  # rows e - 2 exist: e > 1
        next_duration = tl.load(ring_window + ((1 - e) & (KP - 1)) * CP)
        next_leave = tl.load(leave_ptr + seq + (e - 2) * C + labels, mask=more, other=0.0)
        next_enter = tl.load(enter_ptr + seq + (e - 2) * C + labels, mask=more, other=0.0)
        next_alpha = tl.load(alpha_table_ptr + table + (e - 1) * C + labels, mask=more,
                             other=float("-inf"))
        next_u = tl.load(u_table_ptr + table + (e - 2) * C + labels, mask=more, other=float("-inf"))
        next_shift = tl.load(norm_row + e - 1)

        abar = semiring_sum(ubar[None, :] + transition, 1, False)
        abar = tl.where(e == length, abar_last, abar)
        tl.store(segment_end_ptr + seq + (e - 1) * C + labels, tl.exp(alpha + abar), mask=valid)
        vbar = abar + leave
        tl.store(vbar_table_ptr + table + e * C + labels, vbar, mask=valid)
        ring = tl.where(slots[:, None] == (e & (KP - 1)), vbar[None, :], ring) - shift
        ubar = enter + semiring_sum(ring + duration, 0, False)
        tl.store(ubar_table_ptr + table + (e - 1) * C + labels, ubar, mask=valid)
        tl.store(segment_start_ptr + seq + (e - 1) * C + labels, tl.exp(u + ubar), mask=valid)


@triton.jit
def expected_counts_kernel(
        enter_ptr, duration_ptr, transition_ptr, lengths_ptr,
        alpha_table_ptr, u_table_ptr, norm_ptr, vbar_table_ptr, ubar_table_ptr,
        transition_partial_ptr, duration_partial_ptr,
        T, K, C, NUM_BLOCKS,
        BLOCK: tl.constexpr, CP: tl.constexpr, SUB: tl.constexpr):
    """Program `b * NUM_BLOCKS + j` sums over the positions `[j BLOCK, (j+1) BLOCK)`:

    - transitions at the boundaries `e` in the block, `0 < e < L`:
      `exp(alpha_hat[e, c'] + transition[c', c] + ubar'[e, c])`, in `SUB`
      positions at a time, into `transition_partial[b, j] (C, C)`;
    - segments starting at `s` in the block, for every `d` with `s + d <= L`:
      `exp(u_hat[s] + enter[s] + duration[d-1] + vbar'[s+d] - (N[s+d] - N[s]))`
      into `duration_partial[b, j] (K, C)`.
    """
    program = tl.program_id(0)
    b = program // NUM_BLOCKS
    j = program % NUM_BLOCKS
    length = tl.load(lengths_ptr + b)
    b = b.to(tl.int64)
    labels = tl.arange(0, CP)
    valid = labels < C
    seq = b * T * C
    table = b * (T + 1) * C
    first = j * BLOCK

    transition = tl.load(transition_ptr + labels[:, None] * C + labels[None, :],
                         mask=valid[:, None] & valid[None, :], other=float("-inf"))
    sub = tl.arange(0, SUB)
    pair_sum = tl.zeros((CP, CP), tl.float32)
    for k in range(0, BLOCK, SUB):
        e = first + k + sub
        inside = (e > 0) & (e < length)
        mask = inside[:, None] & valid[None, :]
        rows = table + e[:, None] * C + labels[None, :]
        alpha = tl.load(alpha_table_ptr + rows, mask=mask, other=float("-inf"))
        ubar = tl.load(ubar_table_ptr + rows, mask=mask, other=float("-inf"))
        x = alpha[:, :, None] + transition[None, :, :] + ubar[:, None, :]
        pair_sum += tl.sum(tl.exp(x), axis=0)
    out = transition_partial_ptr + (b * NUM_BLOCKS + j) * C * C
    tl.store(out + labels[:, None] * C + labels[None, :], pair_sum, mask=valid[:, None] & valid[None, :])

    s = first + tl.arange(0, BLOCK)
    starts = s < length
    smask = starts[:, None] & valid[None, :]
    v = (tl.load(u_table_ptr + table + s[:, None] * C + labels[None, :], mask=smask, other=float("-inf"))
         + tl.load(enter_ptr + seq + s[:, None] * C + labels[None, :], mask=smask, other=0.0))
    window = tl.zeros((BLOCK,), tl.float32)
    out = duration_partial_ptr + (b * NUM_BLOCKS + j) * K * C
    for d in range(1, K + 1):
        e = s + d
        ends = e <= length
        window += tl.load(norm_ptr + b * (T + 1) + e, mask=ends, other=0.0)
        vbar = tl.load(vbar_table_ptr + table + e[:, None] * C + labels[None, :],
                       mask=ends[:, None] & valid[None, :], other=float("-inf"))
        dur = tl.load(duration_ptr + (b * K + d - 1) * C + labels, mask=valid, other=float("-inf"))
        p = tl.exp(v + dur[None, :] + vbar - window[:, None])
        tl.store(out + (d - 1) * C + labels, tl.sum(p, axis=0), mask=valid)


def outside_sweep(inputs: KernelInputs, alpha_table, u_table, norm, final, num_warps: int | None = None):
    """Launch the outside sweep and the counts. Returns `(segment_start,
    segment_end (B, T, C), transition (B, C, C), duration (B, K, C))`."""
    B, T, K, C = inputs.shape
    KP, CP = pad(K), pad(C)
    device = inputs.enter.device
    vbar_table = torch.empty((B, T + 1, C), dtype=torch.float32, device=device)
    ubar_table = torch.empty((B, T + 1, C), dtype=torch.float32, device=device)
    segment_start = torch.zeros((B, T, C), dtype=torch.float32, device=device)
    segment_end = torch.zeros((B, T, C), dtype=torch.float32, device=device)
    outside_sweep_kernel[(B,)](
        inputs.enter, inputs.leave, inputs.duration_ring, inputs.transition, inputs.end, inputs.lengths,
        alpha_table, u_table, norm, final, vbar_table, ubar_table, segment_start, segment_end,
        T, K, C, KP=KP, CP=CP, num_warps=num_warps or sweep_num_warps(KP, CP))

    block = min(pad(T), max(16, 2048 // CP))
    sub = max(1, min(block, 4096 // (CP * CP)))
    num_blocks = triton.cdiv(T, block)
    transition_partial = torch.empty((B, num_blocks, C, C), dtype=torch.float32, device=device)
    duration_partial = torch.empty((B, num_blocks, K, C), dtype=torch.float32, device=device)
    expected_counts_kernel[(B * num_blocks,)](
        inputs.enter, inputs.duration, inputs.transition, inputs.lengths,
        alpha_table, u_table, norm, vbar_table, ubar_table, transition_partial, duration_partial,
        T, K, C, num_blocks, BLOCK=block, CP=CP, SUB=sub, num_warps=4)
    return segment_start, segment_end, transition_partial.sum(dim=1), duration_partial.sum(dim=1)
