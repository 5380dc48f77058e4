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
`C`-wide operations per step. The sweep runs on the forward's 4-d
label-group tiles (:func:`~.common.sweep_tiling`) with one barrier a step
(see :func:`outside_flow_kernel`). The duration counts are accumulated on
the way (the step's `(KP, CP)` masses, rotated from ring slots to durations
through a small scratch buffer, summed in float64 registers), as are the
label marginals (the running sum above, in float64): one kernel, in a fixed
order, bitwise reproducible.

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
    by_previous_label,
    enter_factor,
    fast_exp2,
    flow_num_warps,
    label_sums_of_lists,
    leave_factor,
    load_row,
    load_tile,
    load_where_held,
    pad,
    position_inputs,
    reduce_max,
    reduce_sum,
    retreat_prefix_sum,
    sequence_inputs,
    sizes,
    small,
    store_tile,
    store_where_held,
    sweep_tile_indices,
    sweep_tiling,
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
                      KP: tl.constexpr, HELD: tl.constexpr = False):
    """Zeros where no segment starts, ends or lies past the length: rows
    `L+1..T` of the two tables a flow writes its masses over (row `t + 1` =
    position `t`) and rows `L..T-1` of its label marginals (one sequence's
    pointers; `KP` rows a block, `slots`, `labels` and `valid` tiles that
    broadcast to a ring's shape, each `(slot, label)` once; `HELD`: by
    :func:`~.common.store_where_held`)."""
    zeros = (slots * 0 + labels * 0).to(tl.float32)
    for first_row in range(length + 1, T + 1, KP):
        block = first_row + slots
        past = (block <= T) & valid
        store_tile(end_rows_ptr + block * C + labels, zeros, past, HELD)
        store_tile(start_rows_ptr + block * C + labels, zeros, past, HELD)
        store_tile(marginals_ptr + (block - 1) * C + labels, zeros, past, HELD)


@triton.jit
def starts_window(v_ptr, scale_row, base, length, K, C, slots, labels, valid, other, KP: tl.constexpr,
                  HELD: tl.constexpr = False):
    """The ring of a forward table's rows `v[s] + (N[s] - base)` for the
    starts `L-K+1 .. L-1` (slot `s mod KP`), `other` in the slots no such
    start fills (one sequence's pointers; `scale_row` its `N`; `slots`,
    `labels` and `valid` tiles that broadcast to the ring's shape; `HELD`:
    by :func:`~.common.load_where_held`)."""
    starts = (length - 1) - ((length - 1 - slots) & (KP - 1))
    in_window = (starts >= 0) & (starts > length - K)
    at = tl.maximum(starts, 0)
    window = load_tile(v_ptr + at * C + labels, in_window & valid, other, HELD)
    return window + (load_tile(scale_row + at, at >= 0, 0.0, HELD) - base).to(tl.float32)


@triton.jit
def outside_flow_kernel(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr, cum_ptr,
        duration_ring_ptr, transition_ptr, end_ptr, lengths_ptr,
        alpha_table_ptr, v_table_ptr, scale_ptr,
        marginals_ptr, transition_count_ptr, duration_count_ptr, first_last_ptr, exchange_ptr, segments_ptr,
        T, K, C, scores_stride, start_stride, end_stride,
        KP: tl.constexpr, CP: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
        START_SCORES: tl.constexpr, END_SCORES: tl.constexpr):
    """One sequence per program. Reads the forward's `alpha_hat`, `v_hat`
    `(B, T+1, C)`, `N (B, T+1)` and `cum[L] (B, C)`; overwrites rows `1..T`
    of `alpha_table` with `segment_end` and of `v_table` with
    `segment_start` (row `t + 1` = position `t`; 0 past the length), and
    writes `marginals (B, T, C)` (0 past the length), `transition_count
    (B, C, C)`, `duration_count (B, K, C)` and the first and last labels'
    probabilities `first_last (B, 2, C)`. `exchange (B, 2 G + 1, CP)` and
    `segments (B, 2, KP, CP)` float32 are scratch.

    Tiles `(lists / S, G, S, CP / G)` (:func:`~.common.sweep_tiling`), on `G`
    warps: each warp a group of labels, its lanes `S` ring slots (or
    previous labels) of each. The ring's sums over the slots and the
    transition's normalizers `sum_{c'} w[c', c]` run over the lists, inside
    a warp. The end masses `sum_c w[c', c] coef_t[c]` run over the labels:
    each warp sums its own, and the step's one exchange, through `exchange`
    and one barrier, adds the `G` partial sums by label
    (:func:`~.common.label_sums_of_lists`). The same barrier orders the
    duration counts' rotation: each step stores its `(KP, CP)` segment
    masses by ring slot to `segments` and the next step reads them back by
    duration (both double buffered by parity).
    Every load and store is made by the threads that hold the values
    (:func:`~.common.load_where_held`, :func:`~.common.store_where_held`).
    The duration counts are summed in float64 registers and written once.

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
    copy, labels, slots, sources = sweep_tile_indices(KP, CP, G, S)
    valid = labels < C
    stores = valid & (copy == 0)
    scores_ptr, start_scores_ptr, end_scores_ptr, mean = sequence_inputs(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr, b, C, scores_stride, start_stride, end_stride,
        labels, True)
    alpha_ptr = alpha_table_ptr + b * (T + 1) * C
    v_ptr = v_table_ptr + b * (T + 1) * C
    marginals_out = marginals_ptr + b * T * C
    scale_row = scale_ptr + b * (T + 1)
    exchange_ptr += b * (2 * G + 1) * CP
    segments_ptr += b * 2 * KP * CP
    durations = duration_ring_ptr + b * 4 * KP * CP
    duration_1 = load_where_held(durations + labels, valid, float("-inf"))
    # d >= 2 (second table): at end e, slot i pairs with row (e - 1) mod KP + KP - i.
    longer_window = durations + 3 * KP * CP - slots * CP + labels
    # transition[c', c], the previous label c' along the lists
    from_source = load_where_held(transition_ptr + sources * C + labels, (sources < C) & valid, float("-inf"))

    clear_past_length(alpha_ptr, v_ptr, marginals_out, length, T, C, slots, labels, valid, KP, True)

    # Ring of v_hat[s] + (N[s] - base) for the starts L-K+1 .. L-1 (slot s mod
    # KP); `base` (a scale N) moves every KP positions, so entries stay O(K r).
    base = tl.load(scale_row + length)
    inside = starts_window(v_ptr, scale_row, base, length, K, C, slots, labels, valid, float("-inf"), KP, True)
    mass = tl.zeros(slots.shape, tl.float32)
    transition_count = tl.zeros(sources.shape, tl.float32)  # [c' (lists), c (labels)]
    duration_count = tl.zeros(slots.shape, tl.float64)  # row d - 1 along the lists
    duration_1_count = tl.zeros(labels.shape, tl.float64)
    marginal = tl.zeros(labels.shape, tl.float64)

    end = load_where_held(end_ptr + labels, valid, float("-inf"))
    last = load_where_held(alpha_ptr + length * C + labels, valid, float("-inf")) + end
    lasts = by_previous_label((last,), labels, sources, copy, exchange_ptr + 2 * G * CP, CP, G, False)[0]
    top = reduce_max(lasts, 0, 2)
    w_lasts = fast_exp2((lasts - top) * LOG2E)
    start_mass = divide(fast_exp2((last - top) * LOG2E),
                        reduce_sum(w_lasts, 0, 2))  # the end mass at L
    store_where_held(first_last_ptr + b * 2 * C + C + labels, start_mass, stores)
    cum = load_where_held(cum_ptr + b * C + labels, valid, 0.0)  # cum[L]
    v_e = load_where_held(v_ptr + length * C + labels, valid, float("-inf"))

    # What position e reads, loaded one position ahead (rows clamped at 0; a
    # start before 0 has v_hat = -inf).
    alpha = load_where_held(alpha_ptr + length * C + labels, valid, float("-inf"))
    scores = load_row(scores_ptr, length - 1, labels, C, T, True)
    end_score = boundary_row(end_scores_ptr, length - 1, labels, C, T, END_SCORES, True)
    start_score = boundary_row(start_scores_ptr, length, labels, C, T, START_SCORES, True)
    newest = load_where_held(v_ptr + (length - 1) * C + labels, valid, float("-inf"))
    scale_newest = tl.load(scale_row + length - 1)
    oldest_row = tl.maximum(length - K, 0)
    oldest = load_where_held(v_ptr + oldest_row * C + labels, valid & (labels * 0 + length - K >= 0), float("-inf"))
    scale_oldest = tl.load(scale_row + oldest_row)
    for i in range(0, length):
        e = length - i
        prev = tl.maximum(e - 2, 0)
        next_alpha = load_where_held(alpha_ptr + (e - 1) * C + labels, valid, float("-inf"))
        next_scores = load_row(scores_ptr, e - 2, labels, C, T, True)
        next_end_score = boundary_row(end_scores_ptr, e - 2, labels, C, T, END_SCORES, True)
        next_start_score = boundary_row(start_scores_ptr, e - 1, labels, C, T, START_SCORES, True)
        next_newest = load_where_held(v_ptr + prev * C + labels, valid, float("-inf"))
        next_scale_newest = tl.load(scale_row + prev)
        next_oldest_row = tl.maximum(e - 1 - K, 0)
        next_oldest = load_where_held(v_ptr + next_oldest_row * C + labels, valid & (labels * 0 + e - 1 - K >= 0),
                                      float("-inf"))
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
        inside = tl.where(slots == slot_oldest, oldest, inside)
        mass = tl.where(slots == slot_oldest, 0.0, mass)
        log_sum = alpha - leave
        log_sum = tl.where(log_sum == float("-inf"), 0.0, log_sum)
        dither = ((((e & 65535) * 25173 + 13849) & 65535).to(tl.float32) * (1.0 / 65536.0))
        stabilizer = (log_sum + (scale_e - base).to(tl.float32)) * LOG2E + dither
        w = fast_exp2((inside + load_where_held(longer_window + ((e - 1) & (KP - 1)) * CP, valid, float("-inf")))
                      * LOG2E - stabilizer)
        w_1 = fast_exp2((newest + (scale_newest - base).to(tl.float32) + duration_1) * LOG2E - stabilizer)
        newest_mass = tl.where(slots == ((e - 1) & (KP - 1)), mass, 0.0)
        total, arrived = tl.reduce(tl.reduce((w, newest_mass), 0, add_pairs, keep_dims=True), 2, add_pairs,
                                   keep_dims=True)
        total += w_1
        transition_log_sum = tl.where(transition_log_sum == float("-inf"), 0.0, transition_log_sum)
        stabilizer_t = transition_log_sum * LOG2E + dither
        alpha_by_source = load_where_held(alpha_ptr + e * C + sources, sources < C, float("-inf"))
        w_t = fast_exp2((alpha_by_source + from_source) * LOG2E - stabilizer_t)  # [c' (lists), c]
        total_t = reduce_sum(w_t, 0, 2)

        # The chain: start mass at e -> end mass at e -> start mass at e - 1.
        later = e < length
        coef_t = divide(start_mass, total_t)
        # (at e = L no transition follows, and w_t may hold what the padding's start score made of it)
        flow = tl.where(later, w_t * coef_t, 0.0)  # [c' (lists), c]
        transition_count += flow
        end_mass = label_sums_of_lists(flow, labels, sources, exchange_ptr + (e & 1) * G * CP, CP, G)
        # (the barrier also orders the previous step's segment masses, read back by duration)
        if i > 0:
            duration_count += load_where_held(
                segments_ptr + ((e + 1) & 1) * KP * CP + ((e - slots) & (KP - 1)) * CP + labels, valid,
                0.0).to(tl.float64)
        end_mass = tl.where(later, end_mass, start_mass)
        marginal += (end_mass - tl.where(later, start_mass, 0.0)).to(tl.float64)
        store_where_held(alpha_ptr + e * C + labels, end_mass, stores)  # segment_end[e-1]
        store_where_held(marginals_out + (e - 1) * C + labels, marginal.to(tl.float32), stores)
        coef = divide(end_mass, total)
        start_mass = arrived + w_1 * coef
        store_where_held(v_ptr + e * C + labels, start_mass, stores)  # segment_start[e-1]
        segments = w * coef
        mass += segments
        store_where_held(segments_ptr + (e & 1) * KP * CP + slots * CP + labels, segments, valid)
        duration_1_count += (w_1 * coef).to(tl.float64)

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

    tl.debug_barrier()  # (the last step's segment masses, end 1's: parity 1, duration d = 1 - start)
    if length > 0:
        duration_count += load_where_held(segments_ptr + KP * CP + ((0 - slots) & (KP - 1)) * CP + labels,
                                          valid, 0.0).to(tl.float64)
    duration_count += tl.where(slots == 0, duration_1_count, 0.0)
    store_where_held(duration_count_ptr + b * K * C + slots * C + labels, duration_count.to(tl.float32),
                     (slots < K) & valid)
    store_where_held(transition_count_ptr + b * C * C + sources * C + labels, transition_count,
                     (sources < C) & valid)
    store_where_held(first_last_ptr + b * 2 * C + labels, start_mass, stores)


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
        G, S = sweep_tiling(KP, CP, num_warps or flow_num_warps(KP, CP))
        device = alpha_table.device
        exchange = torch.empty((B, 2 * G + 1, CP), dtype=torch.float32, device=device)
        segments = torch.empty((B, 2, KP, CP), dtype=torch.float32, device=device)
        outside_flow_kernel[(B,)](
            *inputs[:4], cum, duration_ring, small(factors.transition), small(factors.end), factors.lengths,
            alpha_table, v_table, scale, marginals, transition, duration, first_last, exchange, segments,
            T, K, C, *inputs[4:], KP=KP, CP=CP, G=G, S=S, num_warps=G, **flags)
    return v_table[:, 1:], alpha_table[:, 1:], marginals, transition, duration, first_last[:, 0], first_last[:, 1]
