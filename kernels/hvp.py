"""Hessian-vector products of log Z and entropy, cross-entropy and KL, from
the forward's tables (:mod:`.forward`).

Every sum of the inside sweep is a choice of the *backward chain*: at end `e`
with label `c`, the duration `d` of the segment, with probability
`P(d | e, c) = softmax_d(v[e-d, c] + duration[d-1, c])`; at a start `s > 0`
with label `c`, the label `c'` before it, `P(c' | s, c) =
softmax_c'(alpha[s, c'] + transition[c', c])`. The forward's tables
(`alpha_hat`, `v_hat`, the scale) give these weights again (the ring of `v`
is rebuilt from `v_hat` exactly as the forward built it), so a *lane* can
ride along them in a second, lighter sweep (:func:`expectation_sweep`, one
program per sequence):

    lane_alpha[e, c] = sum_d P(d | e, c) (lane_v[e-d, c] + local_d) (+ leave tangent)
    lane_u[s, c]     = sum_c' P(c' | s, c) (lane_alpha[s, c'] + local_c')
    result           = sum_c P(last = c) (lane_alpha[L, c] + local_c)

- tangent (forward mode, dual numbers): `local` is the tangent of the
  potential of the choice; the result is `<grad log Z, tangent>` and the
  tables `alpha'`, `v' = u' + enter'` are the tangents of the forward's.
  The tangent's `enter` and `leave` are evaluated as the forward evaluates
  p's: from the tangent's scores, by the zero-centred prefix sums of
  :mod:`semiring_semicrf.factors` carried in float64
  (:func:`~.common.step_factors`);
- entropy / cross-entropy / KL: `local` is the choice's surprisal
  `-log P`, `-log Q` (q's chain, from q's tables) or `log P - log Q`; the
  result is H(p), H(p, q) or KL(p || q), a sum of non-negative local terms
  (see :mod:`semiring_semicrf.information`). They read no factor of size T.

Each state's weights are normalized by their own sum (so a dominant choice's
surprisal is `log(1 + small)`, exact to rounding), and a lane is rebased per
position like the forward's values (by its value at the position's best
label, carried in float64): it stays of the order of one position's terms,
and the most probable path's stays near 0, where a tiny entropy keeps its
relative digits.

The posterior's tangent (:func:`tangent_flow`) is the outside flow
differentiated, on dual numbers: the primal masses `m` flow right to left
along the conditionals as in :mod:`.backward`, and beside them the tangent
masses `m'`, which pick up `m P (x' - mean_P x')` at every choice (the
tangent of a softmax). Like the outside flow it sums the duration counts'
and label marginals' tangents on the way and writes the boundary masses'
tangents over the tangent tables, which it consumes. It reads p's forward
tables without writing them, so :func:`~semiring_semicrf.kernels.hvp` runs
it before the outside flow, which consumes those.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import backward
from .backward import clear_past_length, starts_window
from .common import (
    LOG2E,
    add_quads,
    boundary_row,
    duration_ring,
    enter_factor,
    label_square,
    pad,
    position_inputs,
    position_rows,
    register_warps,
    sequence_inputs,
    sizes,
    small,
    step_factors,
)

#: The lanes :func:`expectation_sweep` runs (its `KIND`).
KINDS = {"tangent": 0, "entropy": 1, "cross_entropy": 2, "kl": 3}


@triton.jit
def _softmax_parts(x, axis: tl.constexpr):
    """`(weights, 1 / sum, log(sum) - (x - max))` of log-values `x` along
    `axis`: unnormalized weights (0 at `-inf`), the reciprocal of their sum
    (0 where all are `-inf`) and each entry's surprisal in nats.

    The sum is `1 + excess` (the maximum weighs 1); `log(sum)` is taken as
    `log1p(excess)`, by its series below 1/32 (truncated after the fourth
    power: relative error under 2e-7, whatever the accuracy of the log
    instruction near 1), so a dominant choice's surprisal keeps its digits
    where `excess` is below float32's epsilon (a sharp model's whole
    entropy)."""
    m = tl.max(x, axis=axis)
    m = tl.where(m == float("-inf"), 0.0, m)
    shifted = x - tl.expand_dims(m, axis)
    w = tl.exp2(shifted * LOG2E)
    total = tl.sum(w, axis=axis)
    ties = tl.sum(tl.where(shifted == 0, 1.0, 0.0), axis=axis) - 1.0
    excess = tl.maximum(ties + tl.sum(tl.where(shifted < 0, w, 0.0), axis=axis), 0.0)
    series = excess * (1.0 - excess * (0.5 - excess * (1.0 / 3.0 - excess * 0.25)))
    log_total = tl.where(excess < 0.03125, series, tl.log(1.0 + excess))
    inverse = tl.where(total == 0, 0.0, 1.0 / tl.where(total == 0, 1.0, total))
    surprisal = tl.expand_dims(log_total, axis) - shifted
    return w, inverse, surprisal


@triton.jit
def _q_surprisal(xq, axis: tl.constexpr):
    """`-log Q` of q's log-values `xq` along `axis`; `+inf` where q forbids
    the entry or allows nothing."""
    _, inverse, surprisal = _softmax_parts(xq, axis)
    return tl.where(tl.expand_dims(inverse, axis) == 0, float("inf"), surprisal)


@triton.jit
def _mean(w, inverse, values, axis: tl.constexpr):
    """`sum(w * values) * inverse` along `axis`, terms of weight 0 dropped
    (even infinite ones; a NaN weight stays NaN)."""
    return tl.sum(tl.where(w == 0, 0.0, w * values), axis=axis) * inverse


@triton.jit
def _durations(duration_ring_ptr, window, e, KP: tl.constexpr, CP: tl.constexpr):
    """The durations `(KP, CP)` paired with a lane sweep's ring slots at end
    `e` (`window` the offsets of the sequence's duration ring)."""
    return tl.load(duration_ring_ptr + window + ((e - 1) & (KP - 1)) * CP)


@triton.jit
def _table_row(ptr, table, e, length, labels, C, valid):
    """Row `min(e, length)` of a forward table (`table` the sequence's
    offset in it), `-inf` past `C`."""
    return tl.load(ptr + table + tl.minimum(e, length) * C + labels, mask=valid, other=float("-inf"))


@triton.jit
def _model_inputs(duration_ring_ptr, alpha_ptr, v_ptr, scale_row, table, window, e, length, labels, C, valid,
                  KP: tl.constexpr, CP: tl.constexpr):
    """What a lane sweep's step at end `e` reads of one model's forward (p's
    or q's; `scale_row` its `N`): `(durations, alpha_hat[e], v_hat[e],
    N[e])`, rows clamped to `length`."""
    return (_durations(duration_ring_ptr, window, e, KP, CP), _table_row(alpha_ptr, table, e, length, labels, C, valid),
            _table_row(v_ptr, table, e, length, labels, C, valid), tl.load(scale_row + tl.minimum(e, length)))


@triton.jit
def _lane_inputs(e, length, table, window, labels, valid, C, T,
                 duration_ring_ptr, alpha_ptr, v_ptr, scale_row,
                 q_duration_ring_ptr, q_alpha_ptr, q_v_ptr, q_scale_row,
                 t_duration_ring_ptr, t_scores_ptr, t_start_scores_ptr, t_end_scores_ptr,
                 KP: tl.constexpr, CP: tl.constexpr, KIND: tl.constexpr,
                 START_SCORES: tl.constexpr, END_SCORES: tl.constexpr):
    """Everything :func:`expectation_sweep_kernel`'s step at end `e` loads,
    for `AHEAD`: `(p's, q's, the tangent's)`, p's and q's as
    :func:`_model_inputs` gives them (q's `()` unless `KIND >= 2`), the
    tangent's :func:`_tangent_inputs` (`()` unless `KIND == 0`)."""
    p = _model_inputs(duration_ring_ptr, alpha_ptr, v_ptr, scale_row, table, window, e, length, labels, C, valid,
                      KP, CP)
    q = ()
    if KIND >= 2:
        q = _model_inputs(q_duration_ring_ptr, q_alpha_ptr, q_v_ptr, q_scale_row, table, window, e, length, labels,
                          C, valid, KP, CP)
    t = ()
    if KIND == 0:
        t = _tangent_inputs(t_duration_ring_ptr, t_scores_ptr, t_start_scores_ptr, t_end_scores_ptr, window, e,
                            labels, C, T, KP, CP, START_SCORES, END_SCORES)
    return p, q, t


@triton.jit
def _tangent_inputs(t_duration_ring_ptr, t_scores_ptr, t_start_scores_ptr, t_end_scores_ptr, window, e, labels, C,
                    T, KP: tl.constexpr, CP: tl.constexpr, START_SCORES: tl.constexpr, END_SCORES: tl.constexpr):
    """What the tangent lane's step at end `e` reads of the tangent: `(its
    durations, its position rows of e - 1)` (:func:`~.common.position_rows`)."""
    return (_durations(t_duration_ring_ptr, window, e, KP, CP),
            position_rows(t_scores_ptr, t_start_scores_ptr, t_end_scores_ptr, e - 1, labels, C, T, START_SCORES,
                          END_SCORES))


@triton.jit
def _rebased(ring, newest, step, v):
    """A lane sweep's ring of a model's `v` after end `e`: `v = v_hat[e]` in
    the `newest` slot, the others moved to the scale of `e` (`step = N[e] -
    N[e-1]`)."""
    return tl.where(newest, v[None, :], ring - step)


@triton.jit
def _flow_rows(v_ptr, alpha_ptr, scale_row, e, K, C, labels, valid, other):
    """What the tangent flow reads at end `e` of a forward table pair (one
    sequence's pointers, p's or the tangent's; `other` fills the missing
    entries): `(v[e - K], N[e - K], v[e - 1], N[e - 1], alpha[e])`, rows
    clamped at 0 and `v[e - K]` all `other` where `e < K`."""
    oldest_row = tl.maximum(e - K, 0)
    newest_row = tl.maximum(e - 1, 0)
    entering = (labels * 0 + e - K >= 0) & valid
    return (tl.load(v_ptr + oldest_row * C + labels, mask=entering, other=other), tl.load(scale_row + oldest_row),
            tl.load(v_ptr + newest_row * C + labels, mask=valid, other=other), tl.load(scale_row + newest_row),
            tl.load(alpha_ptr + e * C + labels, mask=valid, other=other))


@triton.jit
def _program_sequence(lengths_ptr, C, KP: tl.constexpr, CP: tl.constexpr):
    """The sequence of a one-sequence-per-program kernel: `(b (int64), its
    length, the ring's slots, the labels, the valid labels, the valid label
    pairs)`."""
    b = tl.program_id(0)
    length = tl.load(lengths_ptr + b).to(tl.int32)
    labels = tl.arange(0, CP)
    valid = labels < C
    return b.to(tl.int64), length, tl.arange(0, KP), labels, valid, valid[:, None] & valid[None, :]


@triton.jit
def expectation_sweep_kernel(
        duration_ring_ptr, transition_ptr, end_ptr, lengths_ptr, alpha_ptr, v_ptr, scale_ptr,
        q_duration_ring_ptr, q_transition_ptr, q_end_ptr, q_alpha_ptr, q_v_ptr, q_scale_ptr,
        t_scores_ptr, t_start_scores_ptr, t_end_scores_ptr, t_mean_ptr,
        t_duration_ring_ptr, t_transition_ptr, t_start_ptr, t_end_ptr,
        t_alpha_ptr, t_v_ptr, t_scale_ptr, result_ptr,
        T, C, t_scores_stride, t_start_stride, t_end_stride,
        KP: tl.constexpr, CP: tl.constexpr, KIND: tl.constexpr, TABLES: tl.constexpr,
        START_SCORES: tl.constexpr, END_SCORES: tl.constexpr, AHEAD: tl.constexpr):
    """One sequence per program; `KIND` as in :data:`KINDS`; with `AHEAD`,
    each step's loads (:func:`_lane_inputs`) are issued by the step before,
    else where they are used (:func:`lane_loads_ahead`). Reads p's
    forward tables (`alpha_hat`, `v_hat` `(B, T+1, C)` float32, `scale
    (B, T+1)` float64) and small factors; q's for cross-entropy and KL; for a
    tangent, its small factors and the position inputs of
    :func:`~.common.position_inputs` (`START_SCORES`, `END_SCORES` its
    flags). Writes `result (B,)` float64 and, for a tangent with `TABLES`,
    the tangent tables `t_alpha`, `t_v`, `t_scale` (the forward's layout,
    relative to their own float64 scale)."""
    b, length, slots, labels, valid, pair = _program_sequence(lengths_ptr, C, KP, CP)
    table = b * (T + 1) * C
    scale_row = scale_ptr + b * (T + 1)
    window = b * 4 * KP * CP + KP * CP - slots[:, None] * CP + labels[None, :]
    transition = tl.load(transition_ptr + labels[:, None] * C + labels[None, :], mask=pair, other=float("-inf"))
    ring = tl.where(slots[:, None] == 0, tl.load(v_ptr + table + labels, mask=valid, other=float("-inf"))[None, :],
                    float("-inf"))
    lane_ring = tl.zeros((KP, CP), tl.float32)
    q_scale_row = q_scale_ptr + b * (T + 1)
    if KIND >= 2:
        q_transition = tl.load(q_transition_ptr + labels[:, None] * C + labels[None, :], mask=pair,
                               other=float("-inf"))
        q_ring = tl.where(slots[:, None] == 0,
                          tl.load(q_v_ptr + table + labels, mask=valid, other=float("-inf"))[None, :], float("-inf"))
    if KIND == 0:
        t_scores_ptr, t_start_scores_ptr, t_end_scores_ptr, t_mean = sequence_inputs(
            t_scores_ptr, t_start_scores_ptr, t_end_scores_ptr, t_mean_ptr, b, C, t_scores_stride, t_start_stride,
            t_end_stride, labels)
        t_transition = tl.load(t_transition_ptr + labels[:, None] * C + labels[None, :], mask=pair, other=0.0)
        t_cum = tl.zeros((CP,), tl.float64)
        t_v = (tl.load(t_start_ptr + labels, mask=valid, other=0.0)
               + enter_factor(t_cum, boundary_row(t_start_scores_ptr, 0, labels, C, T, START_SCORES)))
        lane_ring = tl.where(slots[:, None] == 0, t_v[None, :], 0.0)
        if TABLES:
            tl.store(t_v_ptr + table + labels, t_v, mask=valid)
            tl.store(t_scale_ptr + b * (T + 1), 0.0)
    lane_scale = tl.full([], 0.0, tl.float64)
    lane_alpha = tl.zeros((CP,), tl.float32)
    alpha = tl.full((CP,), float("-inf"), tl.float32)
    q_alpha = tl.full((CP,), float("-inf"), tl.float32)
    if AHEAD:
        scale_prev = tl.load(scale_row)  # N[e - 1]
        if KIND >= 2:
            q_scale_prev = tl.load(q_scale_row)
        ahead = _lane_inputs(1, length, table, window, labels, valid, C, T, duration_ring_ptr, alpha_ptr, v_ptr,
                             scale_row, q_duration_ring_ptr, q_alpha_ptr, q_v_ptr, q_scale_row, t_duration_ring_ptr,
                             t_scores_ptr, t_start_scores_ptr, t_end_scores_ptr, KP, CP, KIND, START_SCORES,
                             END_SCORES)
    for e in range(1, length + 1):
        if AHEAD:
            p_in, q_in, t_in = ahead
            ahead = _lane_inputs(e + 1, length, table, window, labels, valid, C, T, duration_ring_ptr, alpha_ptr,
                                 v_ptr, scale_row, q_duration_ring_ptr, q_alpha_ptr, q_v_ptr, q_scale_row,
                                 t_duration_ring_ptr, t_scores_ptr, t_start_scores_ptr, t_end_scores_ptr, KP, CP,
                                 KIND, START_SCORES, END_SCORES)
        rotated = window + ((e - 1) & (KP - 1)) * CP
        # the duration of the segment that ends at e
        x = ring + (p_in[0] if AHEAD else tl.load(duration_ring_ptr + rotated))
        w, inverse, surprisal = _softmax_parts(x, 0)
        if KIND == 0:
            t_rows = t_in[1] if AHEAD else position_rows(t_scores_ptr, t_start_scores_ptr, t_end_scores_ptr, e - 1,
                                                         labels, C, T, START_SCORES, END_SCORES)
            t_cum, t_leave, t_enter = step_factors(t_cum, *t_rows, t_mean)
            lane_in = lane_ring + (t_in[0] if AHEAD else tl.load(t_duration_ring_ptr + rotated))
        elif KIND == 1:
            lane_in = lane_ring + surprisal
        else:
            q_surprisal = _q_surprisal(q_ring + (q_in[0] if AHEAD else tl.load(q_duration_ring_ptr + rotated)), 0)
            if KIND == 2:
                lane_in = lane_ring + q_surprisal
            else:
                lane_in = lane_ring + q_surprisal - surprisal
        lane_alpha = _mean(w, inverse, lane_in, 0)
        if KIND == 0:
            lane_alpha += t_leave
        # the label before a segment that starts at e
        row = table + e * C + labels
        alpha = p_in[1] if AHEAD else tl.load(alpha_ptr + row, mask=valid, other=float("-inf"))
        y = alpha[:, None] + transition
        wy, inverse_y, surprisal_y = _softmax_parts(y, 0)
        if KIND == 0:
            lane_in_y = lane_alpha[:, None] + t_transition
        elif KIND == 1:
            lane_in_y = lane_alpha[:, None] + surprisal_y
        else:
            q_alpha = q_in[1] if AHEAD else tl.load(q_alpha_ptr + row, mask=valid, other=float("-inf"))
            q_surprisal_y = _q_surprisal(q_alpha[:, None] + q_transition, 0)
            if KIND == 2:
                lane_in_y = lane_alpha[:, None] + q_surprisal_y
            else:
                lane_in_y = lane_alpha[:, None] + q_surprisal_y - surprisal_y
        lane_u = _mean(wy, inverse_y, lane_in_y, 0)
        # rebase the lane by its value at the row's best label
        best = tl.argmax(alpha, axis=0)
        shift = tl.sum(tl.where(labels == best, lane_alpha, 0.0), axis=0)
        shift = tl.where((shift == shift) & (tl.abs(shift) < float("inf")), shift, 0.0)
        lane_alpha -= shift
        lane_u -= shift
        lane_scale += shift.to(tl.float64)
        # the rings take start e, rebased as the forward's
        newest = slots[:, None] == (e & (KP - 1))
        if AHEAD:
            ring = _rebased(ring, newest, (p_in[3] - scale_prev).to(tl.float32), p_in[2])
            scale_prev = p_in[3]
        else:
            ring = _rebased(ring, newest, (tl.load(scale_row + e) - tl.load(scale_row + e - 1)).to(tl.float32),
                            tl.load(v_ptr + row, mask=valid, other=float("-inf")))
        if KIND == 0:
            lane_v = lane_u + t_enter
            if TABLES:
                tl.store(t_alpha_ptr + row, lane_alpha, mask=valid)
                tl.store(t_v_ptr + row, lane_v, mask=valid)
                tl.store(t_scale_ptr + b * (T + 1) + e, lane_scale)
        else:
            lane_v = lane_u
        lane_ring = tl.where(newest, lane_v[None, :], lane_ring - shift)
        if KIND >= 2:
            if AHEAD:
                q_ring = _rebased(q_ring, newest, (q_in[3] - q_scale_prev).to(tl.float32), q_in[2])
                q_scale_prev = q_in[3]
            else:
                q_ring = _rebased(q_ring, newest,
                                  (tl.load(q_scale_row + e) - tl.load(q_scale_row + e - 1)).to(tl.float32),
                                  tl.load(q_v_ptr + row, mask=valid, other=float("-inf")))

    # the last label
    z = alpha + tl.load(end_ptr + labels, mask=valid, other=float("-inf"))
    wz, inverse_z, surprisal_z = _softmax_parts(z[:, None], 0)
    if KIND == 0:
        lane_in_z = lane_alpha[:, None] + tl.load(t_end_ptr + labels, mask=valid, other=0.0)[:, None]
    elif KIND == 1:
        lane_in_z = lane_alpha[:, None] + surprisal_z
    else:
        q_z = q_alpha + tl.load(q_end_ptr + labels, mask=valid, other=float("-inf"))
        q_surprisal_z = _q_surprisal(q_z[:, None], 0)
        if KIND == 2:
            lane_in_z = lane_alpha[:, None] + q_surprisal_z
        else:
            lane_in_z = lane_alpha[:, None] + q_surprisal_z - surprisal_z
    last = tl.sum(_mean(wz, inverse_z, lane_in_z, 0), axis=0)
    nothing = tl.sum(inverse_z, axis=0) == 0  # p has no segmentation: the value is 0
    tl.store(result_ptr + b, tl.where(nothing, 0.0, lane_scale + last.to(tl.float64)))


#: Positions whose duration counts' tangents are summed in float32 registers before they
#: are added to the output (so that no float32 sum runs over T terms).
DURATION_BLOCK = 1024


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
def tangent_flow_kernel(
        duration_ring_ptr, transition_ptr, end_ptr, lengths_ptr, alpha_ptr, v_ptr, scale_ptr,
        t_duration_ring_ptr, t_transition_ptr, t_end_ptr, t_alpha_ptr, t_v_ptr, t_scale_ptr,
        d_marginals_ptr, d_transition_ptr, d_duration_ptr, d_first_last_ptr,
        T, K, C, KP: tl.constexpr, CP: tl.constexpr, DURATION_BLOCK: tl.constexpr):
    """One sequence per program, right to left. Reads p's forward tables
    (`alpha_hat`, `v_hat`, `scale`; not written) and small factors, and the
    tangent's (tables from :func:`expectation_sweep`); carries the primal
    masses and their tangents. Overwrites rows `1..T` of `t_alpha` with the
    tangent of `segment_end` and of `t_v` with that of `segment_start` (row
    `t + 1` = position `t`; 0 past the length), as the outside flow does with
    p's tables, and writes the tangents of the label marginals `d_marginals
    (B, T, C)`, the transition counts `d_transition (B, C, C)`, the duration
    counts `d_duration (B, K, C)` and the first and last labels'
    probabilities `d_first_last (B, 2, C)`."""
    b, length, slots, labels, valid, pair = _program_sequence(lengths_ptr, C, KP, CP)
    alpha_ptr += b * (T + 1) * C
    v_ptr += b * (T + 1) * C
    t_alpha_ptr += b * (T + 1) * C
    t_v_ptr += b * (T + 1) * C
    d_marginals_ptr += b * T * C
    scale_row = scale_ptr + b * (T + 1)
    t_scale_row = t_scale_ptr + b * (T + 1)
    durations = duration_ring_ptr + b * 4 * KP * CP
    t_durations = t_duration_ring_ptr + b * 4 * KP * CP
    duration_1 = tl.load(durations + labels)
    t_duration_1 = tl.load(t_durations + labels)
    # d >= 2 (second table): at end e, slot i pairs with row (e - 1) mod KP + KP - i.
    longer = 3 * KP * CP - slots[:, None] * CP + labels[None, :]
    transition = label_square(transition_ptr, C, slots, labels, valid, float("-inf"), KP, CP)
    t_transition = label_square(t_transition_ptr, C, slots, labels, valid, 0.0, KP, CP)
    ring_slots, ring_labels, ring_valid = slots[:, None], labels[None, :], valid[None, :]
    clear_past_length(t_alpha_ptr, t_v_ptr, d_marginals_ptr, length, T, C, ring_slots, ring_labels, ring_valid, KP)

    # Rings over the starts L-K+1 .. L-1 (slot s mod KP): v and its tangent,
    # relative to moving bases (as in the outside flow), the mass and its tangent.
    base = tl.load(scale_row + length)
    t_base = tl.load(t_scale_row + length)
    inside = starts_window(v_ptr, scale_row, base, length, K, C, ring_slots, ring_labels, ring_valid,
                           float("-inf"), KP)
    t_inside = starts_window(t_v_ptr, t_scale_row, t_base, length, K, C, ring_slots, ring_labels, ring_valid,
                             0.0, KP)
    mass = tl.zeros((KP, CP), tl.float32)
    d_mass = tl.zeros((KP, CP), tl.float32)
    d_transition = tl.zeros((CP, CP), tl.float32)
    d_count, d_count_1, d_duration_out, d_duration_mask = zero_duration_counts(d_duration_ptr, b, K, C, slots,
                                                                               labels, valid, KP)
    d_marginal = tl.zeros((CP,), tl.float64)

    # at e = L: the last label's mass and its tangent
    z = (tl.load(alpha_ptr + length * C + labels, mask=valid, other=float("-inf"))
         + tl.load(end_ptr + labels, mask=valid, other=float("-inf")))
    t_z = (tl.load(t_alpha_ptr + length * C + labels, mask=valid, other=0.0)
           + tl.load(t_end_ptr + labels, mask=valid, other=0.0))
    # (not `_`: compiled Triton keeps a name's type through the loop below, where it is reassigned)
    wz, inverse_z, _surprisal_z = _softmax_parts(z[:, None], 0)
    start_mass = tl.sum(wz * inverse_z[None, :], axis=1)
    d_start_mass = start_mass * (t_z - tl.sum(tl.where(start_mass == 0, 0.0, start_mass * t_z), axis=0))
    tl.store(d_first_last_ptr + b * 2 * C + C + labels, d_start_mass, mask=valid)

    # What position e reads, loaded by the step before, as the outside flow does (on an H200 at (1, 10^5,
    # 64, 8): 149 ms against 198 loaded in the step; at (4, 1000, 32, 24) 2.6 against 3.2)
    rows = _flow_rows(v_ptr, alpha_ptr, scale_row, length, K, C, labels, valid, float("-inf"))
    t_rows = _flow_rows(t_v_ptr, t_alpha_ptr, t_scale_row, length, K, C, labels, valid, 0.0)
    for i in range(0, length):
        e = length - i
        v_old, scale_old, v_newest, scale_newest, alpha_e = rows
        t_v_old, t_scale_old, t_v_newest, t_scale_newest, t_alpha_e = t_rows
        rows = _flow_rows(v_ptr, alpha_ptr, scale_row, e - 1, K, C, labels, valid, float("-inf"))
        t_rows = _flow_rows(t_v_ptr, t_alpha_ptr, t_scale_row, e - 1, K, C, labels, valid, 0.0)
        if (e & (KP - 1)) == 0:  # the bases move (N[e] read here alone)
            scale_e = tl.load(scale_row + e)
            t_scale_e = tl.load(t_scale_row + e)
            inside -= (scale_e - base).to(tl.float32)
            base = scale_e
            t_inside -= (t_scale_e - t_base).to(tl.float32)
            t_base = t_scale_e
        # the start e - K enters the window
        oldest = slots[:, None] == ((e - K) & (KP - 1))
        v_old += (scale_old - base).to(tl.float32)
        t_v_old += (t_scale_old - t_base).to(tl.float32)
        inside = tl.where(oldest, v_old[None, :], inside)
        t_inside = tl.where(oldest, t_v_old[None, :], t_inside)
        mass = tl.where(oldest, 0.0, mass)
        d_mass = tl.where(oldest, 0.0, d_mass)
        # the duration of the segment that ends at e (d = 1 apart: the newest start)
        rotated = ((e - 1) & (KP - 1)) * CP
        x = inside + tl.load(durations + longer + rotated)
        x_1 = v_newest + (scale_newest - base).to(tl.float32) + duration_1
        t_x = t_inside + tl.load(t_durations + longer + rotated)
        t_x_1 = t_v_newest + (t_scale_newest - t_base).to(tl.float32) + t_duration_1
        m = tl.maximum(tl.max(x, axis=0), x_1)
        m = tl.where(m == float("-inf"), 0.0, m)
        w = tl.exp2((x - m[None, :]) * LOG2E)
        w_1 = tl.exp2((x_1 - m) * LOG2E)
        # one exchange between warps for four sums over the ring: the weights, their tangent-weighted
        # sum, and the mass and its tangent arriving at the newest start
        at_newest = slots[:, None] == ((e - 1) & (KP - 1))
        total, weighted, arrived, d_arrived = tl.reduce(
            (w, tl.where(w == 0, 0.0, w * t_x), tl.where(at_newest, mass, 0.0), tl.where(at_newest, d_mass, 0.0)),
            0, add_quads)
        total += w_1
        inverse = tl.where(total == 0, 0.0, 1.0 / tl.where(total == 0, 1.0, total))
        mean = (weighted + tl.where(w_1 == 0, 0.0, w_1 * t_x_1)) * inverse
        # the label before a segment that starts at e (e < L), then the end mass at e. (Selected, not
        # branched: Triton 3.6 gave an `if`'s two end masses, reduced along different axes, one layout.)
        later = e < length
        wy, inverse_y, _surprisal_y = _softmax_parts(alpha_e[:, None] + transition, 0)
        t_y = t_alpha_e[:, None] + t_transition
        p_y = wy * inverse_y[None, :]
        t_mean_y = tl.sum(tl.where(p_y == 0, 0.0, p_y * t_y), axis=0)
        d_flow = tl.where(later & (p_y != 0),
                          p_y * (d_start_mass[None, :] + start_mass[None, :] * (t_y - t_mean_y[None, :])), 0.0)
        d_transition += d_flow
        end_mass = tl.where(later, tl.sum(p_y * start_mass[None, :], axis=1), start_mass)
        d_end_mass = tl.where(later, tl.sum(d_flow, axis=1), d_start_mass)
        d_marginal += (d_end_mass - tl.where(later, d_start_mass, 0.0)).to(tl.float64)
        tl.store(t_alpha_ptr + e * C + labels, d_end_mass, mask=valid)  # the tangent of segment_end[e-1]
        tl.store(d_marginals_ptr + (e - 1) * C + labels, d_marginal.to(tl.float32), mask=valid)
        # the end mass at e flows to the starts e-1 .. e-K
        coef = end_mass * inverse
        d_segments = tl.where(w == 0, 0.0,
                              w * inverse[None, :] * (d_end_mass[None, :] + end_mass[None, :] * (t_x - mean[None, :])))
        d_segment_1 = tl.where(w_1 == 0, 0.0, w_1 * inverse * (d_end_mass + end_mass * (t_x_1 - mean)))
        start_mass = arrived + w_1 * coef
        d_start_mass = d_arrived + d_segment_1
        tl.store(t_v_ptr + e * C + labels, d_start_mass, mask=valid)  # the tangent of segment_start[e-1]
        mass += w * coef[None, :]
        d_mass += d_segments
        d_count, d_count_1 = count_durations(d_count, d_count_1, d_segments, d_segment_1, e, i, slots, labels,
                                             d_duration_out, d_duration_mask, KP, DURATION_BLOCK)

    tl.store(d_transition_ptr + b * C * C + labels[:, None] * C + labels[None, :], d_transition, mask=pair)
    tl.store(d_first_last_ptr + b * 2 * C + labels, d_start_mass, mask=valid)


def lane_loads_ahead(job: str, kp: int, cp: int, num_warps: int) -> bool:
    """Whether a lane sweep (`job` one of :data:`KINDS`) issues each step's
    loads a position ahead (`AHEAD` of :func:`expectation_sweep_kernel`):
    the tangent and cross-entropy lanes, where a duration tile holds at
    most 16 values a thread (each load ahead keeps its tile live through a
    whole step).

    Both ways compute the same bits; which is faster is the compiler's
    scheduling, so the choice is measured (one H200, Triton 3.6,
    `python3 -u benchmarks/gpu_diagnose.py --out DIR --lanes-only --warps`,
    `benchmarks/gpu_lanes_h200.json`; ms in the step / ahead):

    | lane | (1, 10^5, 64, 8), 1 warp | (4, 1000, 32, 24) |
    |---|---|---|
    | tangent | 129.7 / 88.9 | 1.72 / 2.01 (1 warp) |
    | cross-entropy | 262.5 / 222.3 | 3.98 / 3.71 (4 warps) |
    | entropy | 129.6 / 171.4 | 2.14 / 2.27 (1 warp) |
    | KL | 250.5 / 306.9 | 4.73 / 5.03 (4 warps) |
    """
    return job in ("tangent", "cross_entropy") and kp * cp <= 16 * 32 * num_warps


def lane_num_warps(job: str, kp: int, cp: int) -> int:
    """Warps for a lane sweep (`job` one of :data:`KINDS`) or the tangent
    flow (`"tangent_flow"`): the choice for these 2-d tiles
    (:func:`lane_sweep_base_warps`, :func:`tangent_flow_base_warps`), with
    the exceptions measured on an H200 (`benchmarks/gpu_diagnose.py`, lane
    sweeps by warp count): the cross-entropy and KL lanes, which carry q's
    softmaxes beside p's, take four warps from `CP = 32` on (at (K, C) = (32, 24): 3.9 and 4.8 ms
    against 4.2 and 5.7 at one), and the tangent flow eight from `KP = 64`
    on (at (64, 8): 198 ms against 263 at one, T = 10^5); from `CP = 64` on,
    at least enough warps to hold the tiles: about six `C x C` and nine `K x
    C` tiles live per step (counted in the kernels), twice the forward's
    (:func:`~.common.register_warps`)."""
    if job == "tangent_flow":
        warps = max(tangent_flow_base_warps(kp, cp), 8 if kp >= 64 else 1)
    else:
        warps = max(lane_sweep_base_warps(kp, cp), 4 if job in ("cross_entropy", "kl") and cp >= 32 else 1)
    return max(warps, register_warps(6 * cp * cp + 9 * kp * cp, cp))


def tangent_flow_base_warps(kp: int, cp: int) -> int:
    """The tangent flow's warps before its exceptions, for its 2-d tiles
    (the outside flow's rule before that flow took the 4-d tiles), as
    measured on an H100: one for narrow tiles (`C <= 8`, up to 256
    elements), eight from 512 (an H200 at (64, 8): 1.08 s against 1.28 at
    one warp at T = 10^6) and with 16 labels and at most 16 durations (an
    H200 at (16, 16): 1.60 ms against 1.79 at four), else four up to 4096
    elements and eight beyond."""
    if cp <= 8 and kp * cp <= 256:
        return 1
    if cp <= 8 or (cp == 16 and kp <= 16):
        return 8
    return 4 if kp * cp <= 4096 else 8


def lane_sweep_base_warps(kp: int, cp: int) -> int:
    """The lane sweeps' warps before their exceptions: one warp up to 2048
    elements of the `(KP, CP)` tile (its reductions in registers and
    shuffles; measured fastest on an H100, and on an H200 at (32, 32)), but
    four with 16 labels and at most 16 durations (the forward with these
    2-d tiles, an H200 at (16, 16): 1.38 ms against 1.65 at one warp), four
    up to 4096 elements and eight beyond. (The forward's own choice,
    :func:`~.common.sweep_num_warps`, is for its 4-d tiles.)"""
    if cp == 16 and kp <= 16:
        return 4
    return 1 if kp * cp <= 2048 else 4 if kp * cp <= 4096 else 8


def tangent_duration_ring(tangent) -> torch.Tensor:
    """The tangent's durations in :func:`~.common.duration_ring`'s layout,
    with 0 (no tangent) where that layout pads with `-inf` (a NaN stays)."""
    ring = duration_ring(tangent)
    return ring.masked_fill_(ring == float("-inf"), 0.0)


def expectation_sweep(kind: str, tables, q_tables=None, tangent=None, tangent_ring=None,
                      keep_tables: bool = False):
    """Launch :func:`expectation_sweep_kernel` on p's forward tables
    (:class:`~semiring_semicrf.kernels.InsideTables`, not consumed), q's for
    cross-entropy and KL, or the float32 tangent :class:`Factors` and its
    :func:`tangent_duration_ring`. Returns `(result (B,) float64,
    tangent_tables)`: `(t_alpha, t_v, t_scale)` with `keep_tables`, else
    None."""
    factors = tables.factors
    B, T, K, C = sizes(factors)
    KP, CP = pad(K), pad(C)
    device = tables.alpha_hat.device
    result = torch.empty(B, dtype=torch.float64, device=device)
    tangent_tables = None
    if keep_tables:
        tangent_tables = (torch.empty((B, T + 1, C), dtype=torch.float32, device=device),
                          torch.empty((B, T + 1, C), dtype=torch.float32, device=device),
                          torch.empty((B, T + 1), dtype=torch.float64, device=device))
    if B == 0:
        return result, tangent_tables
    unused = result  # a valid pointer for the arguments this launch does not read or write
    q_args = (unused,) * 6
    if q_tables is not None:
        q = q_tables.factors
        q_args = (q_tables.duration_ring, small(q.transition), small(q.end), q_tables.alpha_hat, q_tables.v_hat,
                  q_tables.scale)
    t_args, strides, flags = (unused,) * 8, (0, 0, 0), {"START_SCORES": False, "END_SCORES": False}
    if tangent is not None:
        inputs, flags = position_inputs(tangent)
        t_args = (*inputs[:4], tangent_ring, small(tangent.transition), small(tangent.start), small(tangent.end))
        strides = inputs[4:]
    warps = lane_num_warps(kind, KP, CP)
    expectation_sweep_kernel[(B,)](
        tables.duration_ring, small(factors.transition), small(factors.end), factors.lengths, tables.alpha_hat,
        tables.v_hat, tables.scale, *q_args, *t_args, *(tangent_tables or (unused,) * 3), result, T, C, *strides,
        KP=KP, CP=CP, KIND=KINDS[kind], TABLES=keep_tables, AHEAD=lane_loads_ahead(kind, KP, CP, warps),
        num_warps=warps, **flags)
    return result, tangent_tables


def tangent_flow(tables, tangent, tangent_ring, tangent_tables):
    """Launch :func:`tangent_flow_kernel` on p's forward tables (read, not
    consumed) and the tangent's (`tangent_tables = (t_alpha, t_v, t_scale)`
    from :func:`expectation_sweep`, consumed). Returns the tangents of
    :func:`~.backward.outside_sweep`'s results: `(segment_start, segment_end,
    marginals (B, T, C), transition (B, C, C), duration (B, K, C), first
    (B, C), last (B, C))`, the first two views of `t_v` and `t_alpha`."""
    factors = tables.factors
    B, T, K, C = sizes(factors)
    KP, CP = pad(K), pad(C)
    t_alpha, t_v, t_scale = tangent_tables
    d_marginals, d_transition, d_duration, d_first_last = backward.flow_outputs(B, T, K, C, t_alpha.device)
    if B > 0:
        tangent_flow_kernel[(B,)](
            tables.duration_ring, small(factors.transition), small(factors.end), factors.lengths, tables.alpha_hat,
            tables.v_hat, tables.scale, tangent_ring, small(tangent.transition), small(tangent.end), t_alpha, t_v,
            t_scale, d_marginals, d_transition, d_duration, d_first_last, T, K, C, KP=KP, CP=CP,
            DURATION_BLOCK=DURATION_BLOCK, num_warps=lane_num_warps("tangent_flow", KP, CP))
    return (t_v[:, 1:], t_alpha[:, 1:], d_marginals, d_transition, d_duration, d_first_last[:, 0],
            d_first_last[:, 1])
