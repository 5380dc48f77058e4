"""The outside pass (Log) as a flow of posterior probability, right to left.

Given the forward's tables, the posterior is a backward Markov chain over
segment boundaries: the last segment ends at `L` with label `c` w.p.
`softmax_c(alpha[L, c] + end[c])`; a segment that ends at `e` with label `c`
has duration `d` w.p. `P(d | e, c) ∝ v[e-d, c] (x) duration[d-1, c]`
(normalized over `d`); a segment that starts at `s > 0` with label `c`
follows label `c'` w.p. `P(c' | s, c) ∝ alpha[s, c'] (x) transition[c', c]`
(normalized over `c'`). Pushing the mass of each end back along these
conditionals gives, exactly (the outside recurrence of docs/algorithm.md in
another form):

    segment_end[e-1, c] = P(a segment with label c ends at e)
    segment_start[s, c] = P(a segment with label c starts at s)
    transition[c', c]   = sum_e P(c' -> c at boundary e)

Each conditional is normalized by dividing by its own sum, so probability
mass is conserved at every step up to unbiased rounding: nothing drifts at
T = 10^6 (an outside pass in log space accumulates the bias of the
approximate exp/log of every step). All values are probabilities in [0, 1].

The sweep keeps a `(KP, CP)` ring of the mass arriving at the last `K`
starts and a ring of the forward's inside values `v_hat[s]` (shifted to a
common scale); the `K C` duration weights depend on the forward's tables
only, so they are computed off the dependency chain, which is one `C x C`
product and a few `C`-wide operations per step. It stores the log-normalizer of `P(d | e, c)`; the
duration counts `sum_e P(d, e, c)` are then summed in parallel over blocks
of ends (fixed order: bitwise reproducible).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LN2, LOG2E, fast_exp2, fast_log2, flow_num_warps, pad, rows, sizes, small


@triton.jit
def divide(num, den):
    """`num / den` to within rounding, 0 where `den == 0`: the approximate
    quotient refined by one Newton step, so that the error has no bias
    (normalized flows then conserve mass over millions of steps)."""
    ok = den > 0
    den = tl.where(ok, den, 1.0)
    q = num / den
    q = tl.fma(tl.fma(-q, den, num), 1.0 / den, q)
    return tl.where(ok, q, 0.0)


@triton.jit
def outside_flow_kernel(
        enter_ptr, leave_ptr, duration_ring_ptr, transition_ptr, end_ptr, lengths_ptr,
        alpha_table_ptr, u_table_ptr, scale_ptr,
        segment_start_ptr, segment_end_ptr, transition_count_ptr, duration_lognorm_ptr,
        T, K, C, enter_stride, leave_stride,
        KP: tl.constexpr, CP: tl.constexpr):
    """One sequence per program. Reads the forward's `alpha_hat`, `u_hat`
    `(B, T+1, C)` and `N (B, T+1)`; writes `segment_start`, `segment_end`
    `(B, T, C)` (rows `0..L-1`), `transition_count (B, C, C)` and the
    log-normalizers of `P(d | e, c)` into `duration_lognorm (B, T+1, C)`
    (rows `1..L`).

    The forward's own log-sums stabilize the exponentials (`alpha_hat[e] -
    leave[e-1]` is the log-sum of the duration terms of end `e`, `u_hat[e]`
    that of the transition terms), so no maximum is taken; the weights are
    still normalized by their computed sums. Those sums would then always be
    within ~1e-7 of 1, where float32 rounding is biased the same way at
    every step (mass drifts by ~1e-8 per step); a deterministic per-step
    dither of the stabilizer by a fraction of a binade spreads the sums over
    [0.5, 1] and makes the rounding errors cancel instead."""
    b = tl.program_id(0)
    length = tl.load(lengths_ptr + b).to(tl.int32)
    b = b.to(tl.int64)
    slots = tl.arange(0, KP)
    labels = tl.arange(0, CP)
    valid = labels < C
    enter_ptr += b * enter_stride
    leave_ptr += b * leave_stride
    alpha_ptr = alpha_table_ptr + b * (T + 1) * C
    u_ptr = u_table_ptr + b * (T + 1) * C
    lognorm_ptr = duration_lognorm_ptr + b * (T + 1) * C
    start_out = segment_start_ptr + b * T * C
    end_out = segment_end_ptr + b * T * C
    scale_row = scale_ptr + b * (T + 1)
    durations = duration_ring_ptr + b * 4 * KP * CP
    duration_1 = tl.load(durations + labels)
    # d >= 2 (second table): at end e, slot i pairs with row (e - 1) mod KP + KP - i.
    longer_window = durations + 3 * KP * CP - slots[:, None] * CP + labels[None, :]
    transition = tl.load(transition_ptr + labels[:, None] * C + labels[None, :],
                         mask=valid[:, None] & valid[None, :], other=float("-inf"))

    # Ring of v_hat[s] + (N[s] - base) for the starts L-K+1 .. L-1 (slot s mod
    # KP); `base` (a scale N) moves every KP positions, so entries stay O(K r).
    base = tl.load(scale_row + length)
    starts = (length - 1) - ((length - 1 - slots) & (KP - 1))
    in_window = (starts >= 0) & (starts > length - K)
    window_mask = in_window[:, None] & valid[None, :]
    rows = tl.maximum(starts, 0)[:, None] * C + labels[None, :]
    inside = (tl.load(u_ptr + rows, mask=window_mask, other=float("-inf"))
              + tl.load(enter_ptr + rows, mask=window_mask, other=0.0))
    inside += (tl.load(scale_row + tl.maximum(starts, 0)) - base).to(tl.float32)[:, None]
    mass = tl.zeros((KP, CP), tl.float32)
    transition_count = tl.zeros((CP, CP), tl.float32)

    end = tl.load(end_ptr + labels, mask=valid, other=float("-inf"))
    last = tl.load(alpha_ptr + length * C + labels, mask=valid, other=float("-inf")) + end
    w_last = fast_exp2((last - tl.max(last, axis=0)) * LOG2E)
    start_mass = divide(w_last, tl.sum(w_last, axis=0))  # at e = L: the end mass
    transition_log_sum = tl.load(u_ptr + length * C + labels, mask=valid, other=0.0)

    # What position e reads, loaded one position ahead (rows clamped at 0; a
    # start before 0 has v_hat = -inf).
    alpha = tl.load(alpha_ptr + length * C + labels, mask=valid, other=float("-inf"))
    leave = tl.load(leave_ptr + (length - 1) * C + labels, mask=valid, other=0.0)
    u_newest = tl.load(u_ptr + (length - 1) * C + labels, mask=valid, other=float("-inf"))
    enter_newest = tl.load(enter_ptr + (length - 1) * C + labels, mask=valid, other=0.0)
    scale_newest = tl.load(scale_row + length - 1)
    oldest_row = tl.maximum(length - K, 0)
    oldest = (tl.load(u_ptr + oldest_row * C + labels, mask=valid, other=float("-inf"))
              + tl.load(enter_ptr + oldest_row * C + labels, mask=valid, other=0.0))
    oldest = tl.where(length - K >= 0, oldest, float("-inf"))
    scale_oldest = tl.load(scale_row + oldest_row)
    for i in range(0, length):
        e = length - i
        prev = tl.maximum(e - 2, 0)
        next_alpha = tl.load(alpha_ptr + (e - 1) * C + labels, mask=valid, other=float("-inf"))
        next_leave = tl.load(leave_ptr + prev * C + labels, mask=valid, other=0.0)
        next_u_newest = tl.load(u_ptr + prev * C + labels, mask=valid, other=float("-inf"))
        next_enter_newest = tl.load(enter_ptr + prev * C + labels, mask=valid, other=0.0)
        next_scale_newest = tl.load(scale_row + prev)
        next_oldest_row = tl.maximum(e - 1 - K, 0)
        next_oldest = (tl.load(u_ptr + next_oldest_row * C + labels, mask=valid, other=float("-inf"))
                       + tl.load(enter_ptr + next_oldest_row * C + labels, mask=valid, other=0.0))
        next_oldest = tl.where(e - 1 - K >= 0, next_oldest, float("-inf"))
        next_scale_oldest = tl.load(scale_row + next_oldest_row)

        # N[e] is read again (an L1 hit), not carried: carried beside `base`, which
        # starts equal to it, it made Triton 3.x drop `base` from the loop state.
        scale_e = tl.load(scale_row + e)
        if (e & (KP - 1)) == 0:
            inside -= (scale_e - base).to(tl.float32)
            base = scale_e
        # Off the chain: the start e - K enters the window; weights of end e
        # (stabilized by their forward log-sum alpha_hat[e] - leave[e-1]).
        slot_oldest = (e - K) & (KP - 1)
        oldest = oldest + (scale_oldest - base).to(tl.float32)
        inside = tl.where(slots[:, None] == slot_oldest, oldest[None, :], inside)
        mass = tl.where(slots[:, None] == slot_oldest, 0.0, mass)
        log_sum = alpha - leave
        log_sum = tl.where(log_sum == float("-inf"), 0.0, log_sum)
        dither = ((((e & 65535) * 25173 + 13849) & 65535).to(tl.float32) * (1.0 / 65536.0))
        stabilizer = (log_sum + (scale_e - base).to(tl.float32)) * LOG2E + dither
        w = fast_exp2((inside + tl.load(longer_window + ((e - 1) & (KP - 1)) * CP)) * LOG2E - stabilizer[None, :])
        newest = u_newest + enter_newest + (scale_newest - base).to(tl.float32) + duration_1
        w_1 = fast_exp2(newest * LOG2E - stabilizer)
        total = tl.sum(w, axis=0) + w_1
        tl.store(lognorm_ptr + e * C + labels, log_sum + LN2 * (dither + fast_log2(total)), mask=valid)
        arrived = tl.sum(tl.where(slots[:, None] == ((e - 1) & (KP - 1)), mass, 0.0), axis=0)
        transition_log_sum = tl.where(transition_log_sum == float("-inf"), 0.0, transition_log_sum)
        w_t = fast_exp2((alpha[:, None] + transition) * LOG2E - (transition_log_sum * LOG2E + dither)[None, :])
        total_t = tl.sum(w_t, axis=0)

        # The chain: start mass at e -> end mass at e -> start mass at e - 1.
        coef_t = tl.where(e < length, divide(start_mass, total_t), 0.0)
        flow = w_t * coef_t[None, :]
        transition_count += flow
        end_mass = tl.where(e < length, tl.sum(flow, axis=1), start_mass)
        tl.store(end_out + (e - 1) * C + labels, end_mass, mask=valid)
        coef = divide(end_mass, total)
        start_mass = arrived + w_1 * coef
        tl.store(start_out + (e - 1) * C + labels, start_mass, mask=valid)
        mass += w * coef[None, :]

        transition_log_sum = u_newest
        alpha = next_alpha
        leave = next_leave
        u_newest = next_u_newest
        enter_newest = next_enter_newest
        scale_newest = next_scale_newest
        oldest = next_oldest
        scale_oldest = next_scale_oldest

    tl.store(transition_count_ptr + b * C * C + labels[:, None] * C + labels[None, :], transition_count,
             mask=valid[:, None] & valid[None, :])


@triton.jit
def duration_counts_kernel(
        enter_ptr, duration_ptr, lengths_ptr, u_table_ptr, scale_ptr, segment_end_ptr, duration_lognorm_ptr,
        duration_partial_ptr,
        T, K, C, NUM_BLOCKS, enter_stride,
        BLOCK: tl.constexpr, CP: tl.constexpr):
    """Program `b * NUM_BLOCKS + j` sums, over the ends `e` in
    `[j BLOCK, (j+1) BLOCK)`, `P(d, e, c) = segment_end[e-1, c] P(d | e, c)`
    with `P(d | e, c) = exp(v_hat[e-d, c] + duration[d-1, c] - (N[e] - N[e-d])
    - lognorm[e, c])`, into `duration_partial[b, j] (K, C)`."""
    program = tl.program_id(0)
    b = program // NUM_BLOCKS
    j = program % NUM_BLOCKS
    length = tl.load(lengths_ptr + b).to(tl.int32)
    b = b.to(tl.int64)
    labels = tl.arange(0, CP)
    valid = labels < C
    enter_ptr += b * enter_stride
    table = b * (T + 1) * C
    seq = b * T * C
    e = j * BLOCK + tl.arange(0, BLOCK)
    ends = (e >= 1) & (e <= length)
    emask = ends[:, None] & valid[None, :]
    end_mass = tl.load(segment_end_ptr + seq + (e[:, None] - 1) * C + labels[None, :], mask=emask, other=0.0)
    lognorm = tl.load(duration_lognorm_ptr + table + e[:, None] * C + labels[None, :], mask=emask, other=0.0)
    scale_e = tl.load(scale_ptr + b * (T + 1) + e, mask=ends, other=0.0)
    out = duration_partial_ptr + (b * NUM_BLOCKS + j) * K * C
    for d in range(1, K + 1):
        s = e - d
        ok = ends & (s >= 0)
        smask = ok[:, None] & valid[None, :]
        inside = (tl.load(u_table_ptr + table + s[:, None] * C + labels[None, :], mask=smask, other=float("-inf"))
                  + tl.load(enter_ptr + s[:, None] * C + labels[None, :], mask=smask, other=0.0))
        shift = (scale_e - tl.load(scale_ptr + b * (T + 1) + s, mask=ok, other=0.0)).to(tl.float32)
        duration = tl.load(duration_ptr + (b * K + d - 1) * C + labels, mask=valid, other=float("-inf"))
        # an end no segment reaches has lognorm -inf: its (zero) mass adds nothing, not NaN
        p = tl.where(end_mass > 0, end_mass * tl.exp(inside + duration[None, :] - shift[:, None] - lognorm), 0.0)
        tl.store(out + (d - 1) * C + labels, tl.sum(p, axis=0), mask=valid)


def outside_sweep(factors, duration_ring: torch.Tensor, alpha_table, u_table, scale,
                  num_warps: int | None = None):
    """Launch the outside flow and the duration counts on float32
    :class:`Factors` and the forward's tables. Returns `(segment_start,
    segment_end (B, T, C), transition (B, C, C), duration (B, K, C))`."""
    B, T, K, C = sizes(factors)
    KP, CP = pad(K), pad(C)
    enter, leave, duration = rows(factors.enter), rows(factors.leave), small(factors.duration)
    device = enter.device
    segment_start = torch.zeros((B, T, C), dtype=torch.float32, device=device)
    segment_end = torch.zeros((B, T, C), dtype=torch.float32, device=device)
    transition = torch.empty((B, C, C), dtype=torch.float32, device=device)
    duration_lognorm = torch.empty((B, T + 1, C), dtype=torch.float32, device=device)
    outside_flow_kernel[(B,)](
        enter, leave, duration_ring, small(factors.transition), small(factors.end), factors.lengths,
        alpha_table, u_table, scale, segment_start, segment_end, transition, duration_lognorm,
        T, K, C, enter.stride(0), leave.stride(0), KP=KP, CP=CP,
        num_warps=num_warps or flow_num_warps(KP, CP))

    block = min(pad(T + 1), max(16, 2048 // CP))
    num_blocks = triton.cdiv(T + 1, block)
    duration_partial = torch.empty((B, num_blocks, K, C), dtype=torch.float32, device=device)
    duration_counts_kernel[(B * num_blocks,)](
        enter, duration, factors.lengths, u_table, scale, segment_end, duration_lognorm,
        duration_partial, T, K, C, num_blocks, enter.stride(0), BLOCK=block, CP=CP, num_warps=4)
    return segment_start, segment_end, transition, duration_partial.sum(dim=1)
