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
    duration[d-1, c]    = sum_e P(a segment [e-d, e) with label c)
    marginals[t, c]     = P(t lies in a segment with label c)
                        = marginals[t+1, c] + segment_end[t, c] - segment_start[t+1, c]

Each conditional is normalized by dividing by its own sum, so probability
mass is conserved at every step up to unbiased rounding: nothing drifts at
T = 10^6 (an outside pass in log space accumulates the bias of the
approximate exp/log of every step). All values are probabilities in [0, 1].

The sweep keeps a `(KP, CP)` ring of the mass arriving at the last `K`
starts and a ring of the forward's `v_hat[s]` (shifted to a common scale);
the `K C` duration weights depend on the forward's tables only, so they are
computed off the dependency chain, which is one `C x C` product and a few
`C`-wide operations per step. The duration counts are accumulated on the
way (the step's `(KP, CP)` masses, rotated from ring slots to durations by
one `tl.gather`, summed in blocks of positions), as are the label marginals
(the running sum above, in float64): one kernel, in a fixed order, bitwise
reproducible.

Memory: the flow writes `segment_end[e-1]` and `segment_start[e-1]` over row
`e` of the forward's `alpha_hat` and `v_hat` tables once the sweep has read
them for the last time (rows are read only at positions `>= e - 1 - K` and
`< e` after step `e`), so the posterior takes no new `(B, T, C)` table but the
label marginals: the forward's tables are consumed. The prefix sums are
carried back from `cum[L]` (:func:`~.common.retreat_prefix_sum`), as the
forward carried them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    LOG2E,
    add_pairs,
    boundary_row,
    enter_factor,
    fast_exp2,
    flow_num_warps,
    label_square,
    leave_factor,
    load_row,
    pad,
    position_inputs,
    retreat_prefix_sum,
    sequence_inputs,
    sizes,
    small,
)


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
def clear_past_length(end_rows_ptr, start_rows_ptr, marginals_ptr, length, T, C, slots, labels, valid,
                      KP: tl.constexpr):
    """Zeros where no segment starts, ends or lies past the length: rows
    `L+1..T` of the two tables a flow writes its masses over (row `t + 1` =
    position `t`) and rows `L..T-1` of its label marginals (one sequence's
    pointers)."""
    zeros = tl.zeros((KP, labels.shape[0]), tl.float32)
    for first_row in range(length + 1, T + 1, KP):
        block = first_row + slots[:, None]
        past = (block <= T) & valid[None, :]
        tl.store(end_rows_ptr + block * C + labels[None, :], zeros, mask=past)
        tl.store(start_rows_ptr + block * C + labels[None, :], zeros, mask=past)
        tl.store(marginals_ptr + (block - 1) * C + labels[None, :], zeros, mask=past)


@triton.jit
def starts_window(v_ptr, scale_row, base, length, K, C, slots, labels, valid, other, KP: tl.constexpr):
    """The ring of a forward table's rows `v[s] + (N[s] - base)` for the
    starts `L-K+1 .. L-1` (slot `s mod KP`), `other` in the slots no such
    start fills (one sequence's pointers; `scale_row` its `N`)."""
    starts = (length - 1) - ((length - 1 - slots) & (KP - 1))
    in_window = (starts >= 0) & (starts > length - K)
    at = tl.maximum(starts, 0)
    window = tl.load(v_ptr + at[:, None] * C + labels[None, :], mask=in_window[:, None] & valid[None, :], other=other)
    return window + (tl.load(scale_row + at) - base).to(tl.float32)[:, None]


@triton.jit
def zero_duration_counts(duration_count_ptr, b, K, C, slots, labels, valid, KP: tl.constexpr):
    """Sequence `b`'s rows of the duration counts `(B, K, C)`, zeroed, for
    :func:`count_durations`: `(count (KP, CP), count_1 (CP,), out, mask)`,
    row `j` duration `j + 1` (`d = 1` kept apart until added in)."""
    count = tl.zeros((KP, labels.shape[0]), tl.float32)
    out = duration_count_ptr + b * K * C + slots[:, None] * C + labels[None, :]
    mask = (slots[:, None] < K) & valid[None, :]
    tl.store(out, count, mask=mask)
    return count, tl.zeros((labels.shape[0],), tl.float32), out, mask


@triton.jit
def count_durations(count, count_1, segments, segment_1, e, i, slots, labels, out, mask,
                    KP: tl.constexpr, BLOCK: tl.constexpr):
    """Adds end `e`'s segment masses to the duration counts: `segments (KP,
    CP)` by ring slot (`d >= 2`), rotated to durations (row `d - 1`) by one
    `tl.gather`, and `segment_1 (CP,)` (`d = 1`), in float32 registers
    `count`, `count_1`; every `BLOCK` steps (`i` the step's index) and at
    `e = 1` adds them to the output rows `out (KP, CP)` (a float32 sum runs
    over at most `BLOCK` positions). Returns the new `(count, count_1)`;
    :func:`zero_duration_counts` gives the first ones."""
    count += tl.gather(segments, ((e - 1 - slots) & (KP - 1))[:, None] + labels[None, :] * 0, 0)
    count_1 += segment_1
    if ((i + 1) % BLOCK == 0) | (e == 1):
        count += tl.where(slots[:, None] == 0, count_1[None, :], 0.0)
        tl.store(out, tl.load(out, mask=mask, other=0.0) + count, mask=mask)
        count = tl.zeros_like(count)
        count_1 = tl.zeros_like(count_1)
    return count, count_1


@triton.jit
def outside_flow_kernel(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr, cum_ptr,
        duration_ring_ptr, transition_ptr, end_ptr, lengths_ptr,
        alpha_table_ptr, v_table_ptr, scale_ptr,
        marginals_ptr, transition_count_ptr, duration_count_ptr, first_last_ptr,
        T, K, C, scores_stride, start_stride, end_stride,
        KP: tl.constexpr, CP: tl.constexpr, START_SCORES: tl.constexpr, END_SCORES: tl.constexpr,
        DURATION_BLOCK: tl.constexpr):
    """One sequence per program. Reads the forward's `alpha_hat`, `v_hat`
    `(B, T+1, C)`, `N (B, T+1)` and `cum[L] (B, C)`; overwrites rows `1..T`
    of `alpha_table` with `segment_end` and of `v_table` with
    `segment_start` (row `t + 1` = position `t`; 0 past the length), and
    writes `marginals (B, T, C)` (0 past the length), `transition_count
    (B, C, C)`, `duration_count (B, K, C)` and the first and last labels'
    probabilities `first_last (B, 2, C)`.

    The forward's own log-sums stabilize the exponentials (`alpha_hat[e] -
    leave[e-1]` is the log-sum of the duration terms of end `e`, `u_hat[e] =
    v_hat[e] - enter[e]` that of the transition terms), so no maximum is
    taken; the weights are still normalized by their computed sums. Those
    sums would then always be within ~1e-7 of 1, where float32 rounding is
    biased the same way at every step (mass drifts by ~1e-8 per step); a
    deterministic per-step dither of the stabilizer by a fraction of a binade
    spreads the sums over [0.5, 1] and makes the rounding errors cancel
    instead."""
    b = tl.program_id(0)
    length = tl.load(lengths_ptr + b).to(tl.int32)
    b = b.to(tl.int64)
    slots = tl.arange(0, KP)
    labels = tl.arange(0, CP)
    valid = labels < C
    scores_ptr, start_scores_ptr, end_scores_ptr, mean = sequence_inputs(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr, b, C, scores_stride, start_stride, end_stride, labels)
    alpha_ptr = alpha_table_ptr + b * (T + 1) * C
    v_ptr = v_table_ptr + b * (T + 1) * C
    marginals_out = marginals_ptr + b * T * C
    scale_row = scale_ptr + b * (T + 1)
    durations = duration_ring_ptr + b * 4 * KP * CP
    duration_1 = tl.load(durations + labels)
    # d >= 2 (second table): at end e, slot i pairs with row (e - 1) mod KP + KP - i.
    longer_window = durations + 3 * KP * CP - slots[:, None] * CP + labels[None, :]
    transition = label_square(transition_ptr, C, slots, labels, valid, float("-inf"), KP, CP)

    clear_past_length(alpha_ptr, v_ptr, marginals_out, length, T, C, slots, labels, valid, KP)

    # Ring of v_hat[s] + (N[s] - base) for the starts L-K+1 .. L-1 (slot s mod
    # KP); `base` (a scale N) moves every KP positions, so entries stay O(K r).
    base = tl.load(scale_row + length)
    inside = starts_window(v_ptr, scale_row, base, length, K, C, slots, labels, valid, float("-inf"), KP)
    mass = tl.zeros((KP, CP), tl.float32)
    transition_count = tl.zeros((CP, CP), tl.float32)
    # Duration counts: float32 over blocks of DURATION_BLOCK positions, the blocks summed into the output.
    duration_count, duration_1_count, duration_out, duration_mask = zero_duration_counts(
        duration_count_ptr, b, K, C, slots, labels, valid, KP)
    marginal = tl.zeros((CP,), tl.float64)

    end = tl.load(end_ptr + labels, mask=valid, other=float("-inf"))
    last = tl.load(alpha_ptr + length * C + labels, mask=valid, other=float("-inf")) + end
    w_last = fast_exp2((last - tl.max(last, axis=0)) * LOG2E)
    start_mass = divide(w_last, tl.sum(w_last, axis=0))  # at e = L: the end mass
    tl.store(first_last_ptr + b * 2 * C + C + labels, start_mass, mask=valid)
    cum = tl.load(cum_ptr + b * C + labels, mask=valid, other=0.0)  # cum[L]
    v_e = tl.load(v_ptr + length * C + labels, mask=valid, other=float("-inf"))

    # What position e reads, loaded one position ahead (rows clamped at 0; a
    # start before 0 has v_hat = -inf).
    alpha = tl.load(alpha_ptr + length * C + labels, mask=valid, other=float("-inf"))
    scores = load_row(scores_ptr, length - 1, labels, C, T)
    end_score = boundary_row(end_scores_ptr, length - 1, labels, C, T, END_SCORES)
    start_score = boundary_row(start_scores_ptr, length, labels, C, T, START_SCORES)
    newest = tl.load(v_ptr + (length - 1) * C + labels, mask=valid, other=float("-inf"))
    scale_newest = tl.load(scale_row + length - 1)
    oldest_row = tl.maximum(length - K, 0)
    oldest = tl.load(v_ptr + oldest_row * C + labels, mask=valid, other=float("-inf"))
    oldest = tl.where(length - K >= 0, oldest, float("-inf"))
    scale_oldest = tl.load(scale_row + oldest_row)
    for i in range(0, length):
        e = length - i
        prev = tl.maximum(e - 2, 0)
        next_alpha = tl.load(alpha_ptr + (e - 1) * C + labels, mask=valid, other=float("-inf"))
        next_scores = load_row(scores_ptr, e - 2, labels, C, T)
        next_end_score = boundary_row(end_scores_ptr, e - 2, labels, C, T, END_SCORES)
        next_start_score = boundary_row(start_scores_ptr, e - 1, labels, C, T, START_SCORES)
        next_newest = tl.load(v_ptr + prev * C + labels, mask=valid, other=float("-inf"))
        next_scale_newest = tl.load(scale_row + prev)
        next_oldest_row = tl.maximum(e - 1 - K, 0)
        next_oldest = tl.load(v_ptr + next_oldest_row * C + labels, mask=valid, other=float("-inf"))
        next_oldest = tl.where(e - 1 - K >= 0, next_oldest, float("-inf"))
        next_scale_oldest = tl.load(scale_row + next_oldest_row)
        leave = leave_factor(cum, end_score)  # leave[e-1]
        transition_log_sum = v_e - enter_factor(cum, start_score)  # u_hat[e]

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
        w_1 = fast_exp2((newest + (scale_newest - base).to(tl.float32) + duration_1) * LOG2E - stabilizer)
        total, arrived = tl.reduce((w, tl.where(slots[:, None] == ((e - 1) & (KP - 1)), mass, 0.0)), 0, add_pairs)
        total += w_1
        transition_log_sum = tl.where(transition_log_sum == float("-inf"), 0.0, transition_log_sum)
        w_t = fast_exp2((alpha[:, None] + transition) * LOG2E - (transition_log_sum * LOG2E + dither)[None, :])
        total_t = tl.sum(w_t, axis=0)

        # The chain: start mass at e -> end mass at e -> start mass at e - 1.
        later = e < length
        coef_t = tl.where(later, divide(start_mass, total_t), 0.0)
        # (at e = L no transition follows, and w_t may hold what the padding's start score made of it)
        flow = tl.where(later, w_t * coef_t[None, :], 0.0)
        transition_count += flow
        end_mass = tl.where(later, tl.sum(flow, axis=1), start_mass)
        marginal += (end_mass - tl.where(later, start_mass, 0.0)).to(tl.float64)
        tl.store(alpha_ptr + e * C + labels, end_mass, mask=valid)  # segment_end[e-1]
        tl.store(marginals_out + (e - 1) * C + labels, marginal.to(tl.float32), mask=valid)
        coef = divide(end_mass, total)
        start_mass = arrived + w_1 * coef
        tl.store(v_ptr + e * C + labels, start_mass, mask=valid)  # segment_start[e-1]
        segments = w * coef[None, :]
        mass += segments
        duration_count, duration_1_count = count_durations(duration_count, duration_1_count, segments, w_1 * coef,
                                                           e, i, slots, labels, duration_out, duration_mask, KP,
                                                           DURATION_BLOCK)

        cum = retreat_prefix_sum(cum, scores, mean)  # cum[e-1]
        v_e = newest
        alpha = next_alpha
        scores = next_scores
        end_score = next_end_score
        start_score = next_start_score
        newest = next_newest
        scale_newest = next_scale_newest
        oldest = next_oldest
        scale_oldest = next_scale_oldest

    tl.store(transition_count_ptr + b * C * C + labels[:, None] * C + labels[None, :], transition_count,
             mask=valid[:, None] & valid[None, :])
    tl.store(first_last_ptr + b * 2 * C + labels, start_mass, mask=valid)


#: Positions whose duration counts are summed in float32 registers before they
#: are added to the output (so that no float32 sum runs over T terms).
DURATION_BLOCK = 1024


def flow_outputs(B: int, T: int, K: int, C: int, device) -> tuple:
    """The float32 buffers a flow writes besides the tables it consumes (the
    outside flow's counts, or the tangent flow's tangents of them):
    `(marginals (B, T, C), transition (B, C, C), duration (B, K, C),
    first_last (B, 2, C))`."""
    return tuple(torch.empty(shape, dtype=torch.float32, device=device)
                 for shape in ((B, T, C), (B, C, C), (B, K, C), (B, 2, C)))


def outside_sweep(factors, duration_ring: torch.Tensor, alpha_table, v_table, scale, cum,
                  num_warps: int | None = None):
    """Launch the outside flow on float32 :class:`Factors` and the forward's
    tables, which it consumes (see the module docstring). Returns
    `(segment_start, segment_end, marginals (B, T, C), transition (B, C, C),
    duration (B, K, C), first (B, C), last (B, C))`; the first two are views
    of `v_table` and `alpha_table`."""
    B, T, K, C = sizes(factors)
    KP, CP = pad(K), pad(C)
    inputs, flags = position_inputs(factors)
    marginals, transition, duration, first_last = flow_outputs(B, T, K, C, alpha_table.device)
    if B > 0:
        outside_flow_kernel[(B,)](
            *inputs[:4], cum, duration_ring, small(factors.transition), small(factors.end), factors.lengths,
            alpha_table, v_table, scale, marginals, transition, duration, first_last, T, K, C, *inputs[4:],
            KP=KP, CP=CP, DURATION_BLOCK=DURATION_BLOCK, num_warps=num_warps or flow_num_warps(KP, CP), **flags)
    return v_table[:, 1:], alpha_table[:, 1:], marginals, transition, duration, first_last[:, 0], first_last[:, 1]
