"""Hessian-vector products of log Z and entropy, cross-entropy and KL, from
the forward's tables (:mod:`.forward`) and the outside flow's masses
(:mod:`.backward`).

Every sum of the inside sweep is a choice of the *backward chain*: at end `e`
with label `c`, the duration `d` of the segment, with probability
`P(d | e, c) = softmax_d(v[e-d, c] + duration[d-1, c])`; at a start `s > 0`
with label `c`, the label `c'` before it, `P(c' | s, c) =
softmax_c'(alpha[s, c'] + transition[c', c])`. The forward's tables give
these weights again (the ring of `v` is rebuilt exactly as the forward built
it), so a *lane* can ride along them in a second, lighter sweep
(:func:`expectation_sweep`, one program per sequence):

    lane_alpha[e, c] = sum_d P(d | e, c) (lane_v[e-d, c] + local_d) (+ leave tangent)
    lane_u[s, c]     = sum_c' P(c' | s, c) (lane_alpha[s, c'] + local_c')
    result           = sum_c P(last = c) (lane_alpha[L, c] + local_c)

- tangent (forward mode, dual numbers): `local` is the tangent of the
  potential of the choice; the result is `<grad log Z, tangent>` and the
  tables `alpha'`, `u'` are the tangents of the forward's;
- entropy / cross-entropy / KL: `local` is the choice's surprisal
  `-log P`, `-log Q` (q's chain, from q's tables) or `log P - log Q`; the
  result is H(p), H(p, q) or KL(p || q), a sum of non-negative local terms
  (see :mod:`semiring_semicrf.information`).

Each state's weights are normalized by their own sum (so a dominant choice's
surprisal is `log(1 + small)`, exact to rounding), and a lane is rebased per
position like the forward's values (by its value at the position's best
label, carried in float64): it stays of the order of one position's terms,
and the most probable path's stays near 0, where a tiny entropy keeps its
relative digits.

The posterior's tangent (:func:`tangent_flow`) is the outside flow
differentiated: with the primal masses `m` of :mod:`.backward` read back,
the tangent masses `m'` flow right to left along the same conditionals and
pick up `m P (x' - mean_P x')` at every choice (the tangent of a softmax).
Then the tangent duration counts are summed in parallel over blocks of ends
(:func:`tangent_durations`), as the primal ones are.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LOG2E, flow_num_warps, pad, row_mask, rows, sizes, small, sweep_num_warps

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
        enter_ptr, duration_ring_ptr, transition_ptr, end_ptr, lengths_ptr, alpha_ptr, u_ptr, scale_ptr,
        q_enter_ptr, q_duration_ring_ptr, q_transition_ptr, q_end_ptr, q_alpha_ptr, q_u_ptr, q_scale_ptr,
        t_enter_ptr, t_leave_ptr, t_duration_ring_ptr, t_transition_ptr, t_start_ptr, t_end_ptr,
        t_alpha_ptr, t_u_ptr, t_scale_ptr, result_ptr,
        T, C, enter_stride, q_enter_stride, t_enter_stride, t_leave_stride,
        KP: tl.constexpr, CP: tl.constexpr, KIND: tl.constexpr, TABLES: tl.constexpr):
    """One sequence per program; `KIND` as in :data:`KINDS`. Reads p's
    forward tables (`alpha`, `u` `(B, T+1, C)` float32, `scale (B, T+1)`
    float64) and factors; q's for cross-entropy and KL; the tangent's
    factors for a tangent. Writes `result (B,)` float64 and, for a tangent
    with `TABLES`, the tangent tables `t_alpha`, `t_u`, `t_scale` (the
    forward's layout, relative to their own float64 scale)."""
    b, length, slots, labels, valid, pair = _program_sequence(lengths_ptr, C, KP, CP)
    table = b * (T + 1) * C
    scale_row = scale_ptr + b * (T + 1)
    enter_ptr += b * enter_stride
    window = b * 4 * KP * CP + KP * CP - slots[:, None] * CP + labels[None, :]
    transition = tl.load(transition_ptr + labels[:, None] * C + labels[None, :], mask=pair, other=float("-inf"))
    ring = tl.where(slots[:, None] == 0, (tl.load(u_ptr + table + labels, mask=valid, other=float("-inf"))
                                          + tl.load(enter_ptr + labels, mask=valid, other=0.0))[None, :],
                    float("-inf"))
    lane_ring = tl.zeros((KP, CP), tl.float32)
    if KIND >= 2:
        q_enter_ptr += b * q_enter_stride
        q_scale_row = q_scale_ptr + b * (T + 1)
        q_transition = tl.load(q_transition_ptr + labels[:, None] * C + labels[None, :], mask=pair,
                               other=float("-inf"))
        q_ring = tl.where(slots[:, None] == 0, (tl.load(q_u_ptr + table + labels, mask=valid, other=float("-inf"))
                                                + tl.load(q_enter_ptr + labels, mask=valid, other=0.0))[None, :],
                          float("-inf"))
    if KIND == 0:
        t_enter_ptr += b * t_enter_stride
        t_leave_ptr += b * t_leave_stride
        t_transition = tl.load(t_transition_ptr + labels[:, None] * C + labels[None, :], mask=pair, other=0.0)
        t_start = tl.load(t_start_ptr + labels, mask=valid, other=0.0)
        lane_ring = tl.where(slots[:, None] == 0,
                             (t_start + tl.load(t_enter_ptr + labels, mask=valid, other=0.0))[None, :], 0.0)
        if TABLES:
            tl.store(t_u_ptr + table + labels, t_start, mask=valid)
            tl.store(t_scale_ptr + b * (T + 1), 0.0)
    lane_scale = tl.full([], 0.0, tl.float64)
    lane_alpha = tl.zeros((CP,), tl.float32)
    alpha = tl.full((CP,), float("-inf"), tl.float32)
    q_alpha = tl.full((CP,), float("-inf"), tl.float32)
    for e in range(1, length + 1):
        rotated = window + ((e - 1) & (KP - 1)) * CP
        # the duration of the segment that ends at e
        x = ring + tl.load(duration_ring_ptr + rotated)
        w, inverse, surprisal = _softmax_parts(x, 0)
        if KIND == 0:
            lane_in = lane_ring + tl.load(t_duration_ring_ptr + rotated)
        elif KIND == 1:
            lane_in = lane_ring + surprisal
        else:
            q_surprisal = _q_surprisal(q_ring + tl.load(q_duration_ring_ptr + rotated), 0)
            if KIND == 2:
                lane_in = lane_ring + q_surprisal
            else:
                lane_in = lane_ring + q_surprisal - surprisal
        lane_alpha = _mean(w, inverse, lane_in, 0)
        if KIND == 0:
            lane_alpha += tl.load(t_leave_ptr + (e - 1) * C + labels, mask=valid, other=0.0)
        # the label before a segment that starts at e
        row = table + e * C + labels
        alpha = tl.load(alpha_ptr + row, mask=valid, other=float("-inf"))
        y = alpha[:, None] + transition
        wy, inverse_y, surprisal_y = _softmax_parts(y, 0)
        if KIND == 0:
            lane_in_y = lane_alpha[:, None] + t_transition
        elif KIND == 1:
            lane_in_y = lane_alpha[:, None] + surprisal_y
        else:
            q_alpha = tl.load(q_alpha_ptr + row, mask=valid, other=float("-inf"))
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
        if KIND == 0 and TABLES:
            tl.store(t_alpha_ptr + row, lane_alpha, mask=valid)
            tl.store(t_u_ptr + row, lane_u, mask=valid)
            tl.store(t_scale_ptr + b * (T + 1) + e, lane_scale)
        # the rings take start e, rebased as the forward's
        newest = slots[:, None] == (e & (KP - 1))
        enter_mask = row_mask(labels, C, e, T)
        step = (tl.load(scale_row + e) - tl.load(scale_row + e - 1)).to(tl.float32)
        v = tl.load(u_ptr + row, mask=valid, other=float("-inf")) + tl.load(enter_ptr + e * C + labels,
                                                                             mask=enter_mask, other=0.0)
        ring = tl.where(newest, v[None, :], ring - step)
        if KIND == 0:
            lane_v = lane_u + tl.load(t_enter_ptr + e * C + labels, mask=enter_mask, other=0.0)
        else:
            lane_v = lane_u
        lane_ring = tl.where(newest, lane_v[None, :], lane_ring - shift)
        if KIND >= 2:
            q_step = (tl.load(q_scale_row + e) - tl.load(q_scale_row + e - 1)).to(tl.float32)
            q_v = tl.load(q_u_ptr + row, mask=valid, other=float("-inf")) + tl.load(
                q_enter_ptr + e * C + labels, mask=enter_mask, other=0.0)
            q_ring = tl.where(newest, q_v[None, :], q_ring - q_step)

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


@triton.jit
def tangent_flow_kernel(
        enter_ptr, duration_ring_ptr, transition_ptr, end_ptr, lengths_ptr, alpha_ptr, u_ptr, scale_ptr,
        t_enter_ptr, t_duration_ring_ptr, t_transition_ptr, t_end_ptr, t_alpha_ptr, t_u_ptr, t_scale_ptr,
        segment_start_ptr, segment_end_ptr,
        d_start_ptr, d_end_ptr, d_transition_ptr, lognorm_ptr, mean_ptr,
        T, K, C, enter_stride, t_enter_stride,
        KP: tl.constexpr, CP: tl.constexpr):
    """One sequence per program, right to left. Reads p's forward tables and
    factors, the tangent's (tables from :func:`expectation_sweep`), and the
    primal masses `segment_start`, `segment_end` `(B, T, C)`; writes their
    tangents `d_start`, `d_end` `(B, T, C)`, the transition counts' tangent
    `d_transition (B, C, C)`, and per end `e` and label: the log-normalizer of
    `P(d | e, c)` (relative to the scale at e) and the `P`-mean of the
    durations' tangent logits (relative to the tangent scale at e), both
    `(B, T+1, C)`, for :func:`tangent_durations_kernel`."""
    b, length, slots, labels, valid, pair = _program_sequence(lengths_ptr, C, KP, CP)
    table = b * (T + 1) * C
    sequence = b * T * C
    scale_row = scale_ptr + b * (T + 1)
    t_scale_row = t_scale_ptr + b * (T + 1)
    enter_ptr += b * enter_stride
    t_enter_ptr += b * t_enter_stride
    durations = duration_ring_ptr + b * 4 * KP * CP
    t_durations = t_duration_ring_ptr + b * 4 * KP * CP
    duration_1 = tl.load(durations + labels)
    t_duration_1 = tl.load(t_durations + labels)
    # d >= 2 (second table): at end e, slot i pairs with row (e - 1) mod KP + KP - i.
    longer = 3 * KP * CP - slots[:, None] * CP + labels[None, :]
    transition = tl.load(transition_ptr + labels[:, None] * C + labels[None, :], mask=pair, other=float("-inf"))
    t_transition = tl.load(t_transition_ptr + labels[:, None] * C + labels[None, :], mask=pair, other=0.0)

    # Rings over the starts L-K+1 .. L-1 (slot s mod KP): v and its tangent,
    # relative to moving bases (as in the outside flow), and tangent mass.
    base = tl.load(scale_row + length)
    t_base = tl.load(t_scale_row + length)
    starts = (length - 1) - ((length - 1 - slots) & (KP - 1))
    in_window = ((starts >= 0) & (starts > length - K))[:, None] & valid[None, :]
    at = tl.maximum(starts, 0)
    rows_ = at[:, None] * C + labels[None, :]
    inside = (tl.load(u_ptr + table + rows_, mask=in_window, other=float("-inf"))
              + tl.load(enter_ptr + rows_, mask=in_window, other=0.0)
              + (tl.load(scale_row + at) - base).to(tl.float32)[:, None])
    t_inside = (tl.load(t_u_ptr + table + rows_, mask=in_window, other=0.0)
                + tl.load(t_enter_ptr + rows_, mask=in_window, other=0.0)
                + (tl.load(t_scale_row + at) - t_base).to(tl.float32)[:, None])
    d_mass = tl.zeros((KP, CP), tl.float32)
    d_transition = tl.zeros((CP, CP), tl.float32)

    # at e = L: the last label's tangent mass
    z = (tl.load(alpha_ptr + table + length * C + labels, mask=valid, other=float("-inf"))
         + tl.load(end_ptr + labels, mask=valid, other=float("-inf")))
    t_z = (tl.load(t_alpha_ptr + table + length * C + labels, mask=valid, other=0.0)
           + tl.load(t_end_ptr + labels, mask=valid, other=0.0))
    wz, inverse_z, _ = _softmax_parts(z[:, None], 0)
    p_last = tl.sum(wz * inverse_z[None, :], axis=1)
    d_start_mass = p_last * (t_z - tl.sum(tl.where(p_last == 0, 0.0, p_last * t_z), axis=0))

    for i in range(0, length):
        e = length - i
        scale_e = tl.load(scale_row + e)
        t_scale_e = tl.load(t_scale_row + e)
        if (e & (KP - 1)) == 0:
            inside -= (scale_e - base).to(tl.float32)
            base = scale_e
            t_inside -= (t_scale_e - t_base).to(tl.float32)
            t_base = t_scale_e
        # the start e - K enters the window
        oldest = slots[:, None] == ((e - K) & (KP - 1))
        oldest_row = tl.maximum(e - K, 0)
        entering = (labels * 0 + e - K >= 0) & valid
        v_old = (tl.load(u_ptr + table + oldest_row * C + labels, mask=entering, other=float("-inf"))
                 + tl.load(enter_ptr + oldest_row * C + labels, mask=entering, other=0.0)
                 + (tl.load(scale_row + oldest_row) - base).to(tl.float32))
        t_v_old = (tl.load(t_u_ptr + table + oldest_row * C + labels, mask=entering, other=0.0)
                   + tl.load(t_enter_ptr + oldest_row * C + labels, mask=entering, other=0.0)
                   + (tl.load(t_scale_row + oldest_row) - t_base).to(tl.float32))
        inside = tl.where(oldest, v_old[None, :], inside)
        t_inside = tl.where(oldest, t_v_old[None, :], t_inside)
        d_mass = tl.where(oldest, 0.0, d_mass)
        # the duration of the segment that ends at e (d = 1 apart: the newest start)
        rotated = ((e - 1) & (KP - 1)) * CP
        x = inside + tl.load(durations + longer + rotated)
        newest = e - 1
        x_1 = (tl.load(u_ptr + table + newest * C + labels, mask=valid, other=float("-inf"))
               + tl.load(enter_ptr + newest * C + labels, mask=valid, other=0.0)
               + (tl.load(scale_row + newest) - base).to(tl.float32) + duration_1)
        t_x = t_inside + tl.load(t_durations + longer + rotated)
        t_x_1 = (tl.load(t_u_ptr + table + newest * C + labels, mask=valid, other=0.0)
                 + tl.load(t_enter_ptr + newest * C + labels, mask=valid, other=0.0)
                 + (tl.load(t_scale_row + newest) - t_base).to(tl.float32) + t_duration_1)
        m = tl.maximum(tl.max(x, axis=0), x_1)
        m = tl.where(m == float("-inf"), 0.0, m)
        w = tl.exp2((x - m[None, :]) * LOG2E)
        w_1 = tl.exp2((x_1 - m) * LOG2E)
        total = tl.sum(w, axis=0) + w_1
        inverse = tl.where(total == 0, 0.0, 1.0 / tl.where(total == 0, 1.0, total))
        mean = (tl.sum(tl.where(w == 0, 0.0, w * t_x), axis=0) + tl.where(w_1 == 0, 0.0, w_1 * t_x_1)) * inverse
        lognorm = m + tl.log(tl.where(total == 0, 1.0, total)) - (scale_e - base).to(tl.float32)
        tl.store(lognorm_ptr + table + e * C + labels, lognorm, mask=valid)
        tl.store(mean_ptr + table + e * C + labels, mean - (t_scale_e - t_base).to(tl.float32), mask=valid)
        # the label before a segment that starts at e (e < L), then the end mass at e
        if e < length:
            alpha_e = tl.load(alpha_ptr + table + e * C + labels, mask=valid, other=float("-inf"))
            wy, inverse_y, _ = _softmax_parts(alpha_e[:, None] + transition, 0)
            t_y = tl.load(t_alpha_ptr + table + e * C + labels, mask=valid, other=0.0)[:, None] + t_transition
            p_y = wy * inverse_y[None, :]
            t_mean_y = tl.sum(tl.where(p_y == 0, 0.0, p_y * t_y), axis=0)
            m_start = tl.load(segment_start_ptr + sequence + e * C + labels, mask=valid, other=0.0)
            flow = tl.where(p_y == 0, 0.0,
                            p_y * (d_start_mass[None, :] + m_start[None, :] * (t_y - t_mean_y[None, :])))
            d_transition += flow
            d_end_mass = tl.sum(flow, axis=1)
        else:
            d_end_mass = d_start_mass
        tl.store(d_end_ptr + sequence + (e - 1) * C + labels, d_end_mass, mask=valid)
        # the end mass at e flows to the starts e-1 .. e-K
        m_end = tl.load(segment_end_ptr + sequence + (e - 1) * C + labels, mask=valid, other=0.0)
        arrived = tl.sum(tl.where(slots[:, None] == ((e - 1) & (KP - 1)), d_mass, 0.0), axis=0)
        d_start_mass = arrived + tl.where(w_1 == 0, 0.0, w_1 * inverse * (d_end_mass + m_end * (t_x_1 - mean)))
        tl.store(d_start_ptr + sequence + (e - 1) * C + labels, d_start_mass, mask=valid)
        d_mass += tl.where(w == 0, 0.0,
                           w * inverse[None, :] * (d_end_mass[None, :] + m_end[None, :] * (t_x - mean[None, :])))

    tl.store(d_transition_ptr + b * C * C + labels[:, None] * C + labels[None, :], d_transition, mask=pair)


@triton.jit
def tangent_durations_kernel(
        enter_ptr, duration_ptr, lengths_ptr, u_ptr, scale_ptr,
        t_enter_ptr, t_duration_ptr, t_u_ptr, t_scale_ptr,
        segment_end_ptr, d_end_ptr, lognorm_ptr, mean_ptr, partial_ptr,
        T, K, C, NUM_BLOCKS, enter_stride, t_enter_stride,
        BLOCK: tl.constexpr, CP: tl.constexpr):
    """Program `b * NUM_BLOCKS + j` sums, over the ends `e` in
    `[j BLOCK, (j+1) BLOCK)`, the tangent of `P(d, e, c) = m_end P(d | e, c)`,
    `P(d | e, c) (m_end' + m_end (x'_d - mean))`, into `partial[b, j] (K, C)`."""
    program = tl.program_id(0)
    b = program // NUM_BLOCKS
    j = program % NUM_BLOCKS
    length = tl.load(lengths_ptr + b).to(tl.int32)
    b = b.to(tl.int64)
    labels = tl.arange(0, CP)
    valid = labels < C
    enter_ptr += b * enter_stride
    t_enter_ptr += b * t_enter_stride
    table = b * (T + 1) * C
    sequence = b * T * C
    e = j * BLOCK + tl.arange(0, BLOCK)
    ends = (e >= 1) & (e <= length)
    emask = ends[:, None] & valid[None, :]
    at_end = (e[:, None] - 1) * C + labels[None, :]
    m_end = tl.load(segment_end_ptr + sequence + at_end, mask=emask, other=0.0)
    d_end = tl.load(d_end_ptr + sequence + at_end, mask=emask, other=0.0)
    lognorm = tl.load(lognorm_ptr + table + e[:, None] * C + labels[None, :], mask=emask, other=0.0)
    mean = tl.load(mean_ptr + table + e[:, None] * C + labels[None, :], mask=emask, other=0.0)
    scale_e = tl.load(scale_ptr + b * (T + 1) + e, mask=ends, other=0.0)
    t_scale_e = tl.load(t_scale_ptr + b * (T + 1) + e, mask=ends, other=0.0)
    out = partial_ptr + (b * NUM_BLOCKS + j) * K * C
    for d in range(1, K + 1):
        s = e - d
        ok = ends & (s >= 0)
        smask = ok[:, None] & valid[None, :]
        at = s[:, None] * C + labels[None, :]
        x = (tl.load(u_ptr + table + at, mask=smask, other=float("-inf")) + tl.load(enter_ptr + at, mask=smask,
                                                                                      other=0.0)
             + (tl.load(scale_ptr + b * (T + 1) + s, mask=ok, other=0.0) - scale_e).to(tl.float32)[:, None]
             + tl.load(duration_ptr + (b * K + d - 1) * C + labels, mask=valid, other=float("-inf"))[None, :])
        t_x = (tl.load(t_u_ptr + table + at, mask=smask, other=0.0) + tl.load(t_enter_ptr + at, mask=smask, other=0.0)
               + (tl.load(t_scale_ptr + b * (T + 1) + s, mask=ok, other=0.0) - t_scale_e).to(tl.float32)[:, None]
               + tl.load(t_duration_ptr + (b * K + d - 1) * C + labels, mask=valid, other=0.0)[None, :])
        p = tl.exp2((x - lognorm) * LOG2E)
        term = tl.where(p == 0, 0.0, p * (d_end + m_end * (t_x - mean)))
        tl.store(out + (d - 1) * C + labels, tl.sum(term, axis=0), mask=valid)


def tangent_duration_ring(ring_of_tangent: torch.Tensor) -> torch.Tensor:
    """A tangent's durations in :func:`~.common.duration_ring`'s layout, with
    0 (no tangent) where that layout pads with `-inf`."""
    return torch.nan_to_num(ring_of_tangent, neginf=0.0)


def expectation_sweep(kind: str, factors, tables, q=None, q_tables=None, tangent=None, tangent_ring=None,
                      keep_tables: bool = False):
    """Launch :func:`expectation_sweep_kernel` on float32 :class:`Factors`
    and their forward tables (:class:`~semiring_semicrf.kernels.InsideTables`).
    Returns `(result (B,) float64, t_alpha, t_u, t_scale)` (the tangent
    tables None unless `keep_tables`)."""
    B, T, K, C = sizes(factors)
    KP, CP = pad(K), pad(C)
    enter = rows(factors.enter)
    device = enter.device
    result = torch.empty(B, dtype=torch.float64, device=device)
    t_alpha = t_u = t_scale = None
    if keep_tables:
        t_alpha = torch.empty((B, T + 1, C), dtype=torch.float32, device=device)
        t_u = torch.empty((B, T + 1, C), dtype=torch.float32, device=device)
        t_scale = torch.empty((B, T + 1), dtype=torch.float64, device=device)
    unused = result  # a valid pointer for the arguments this launch does not read or write
    q_enter = rows(q.enter) if q is not None else enter
    t_enter = rows(tangent.enter) if tangent is not None else enter
    t_leave = rows(tangent.leave) if tangent is not None else enter
    q_args = ((q_enter, q_tables.duration_ring, small(q.transition), small(q.end), q_tables.alpha_hat,
               q_tables.u_hat, q_tables.scale) if q is not None else (unused,) * 7)
    t_args = ((t_enter, t_leave, tangent_ring, small(tangent.transition), small(tangent.start), small(tangent.end))
              if tangent is not None else (unused,) * 6)
    table_args = (t_alpha, t_u, t_scale) if keep_tables else (unused,) * 3
    expectation_sweep_kernel[(B,)](
        enter, tables.duration_ring, small(factors.transition), small(factors.end), factors.lengths,
        tables.alpha_hat, tables.u_hat, tables.scale, *q_args, *t_args, *table_args, result,
        T, C, enter.stride(0), q_enter.stride(0), t_enter.stride(0), t_leave.stride(0),
        KP=KP, CP=CP, KIND=KINDS[kind], TABLES=keep_tables, num_warps=sweep_num_warps(KP, CP))
    return result, t_alpha, t_u, t_scale


def tangent_flow(factors, tables, tangent, tangent_ring, tangent_tables, segment_start, segment_end):
    """Launch :func:`tangent_flow_kernel` and :func:`tangent_durations_kernel`.
    `tangent_tables = (t_alpha, t_u, t_scale)` from :func:`expectation_sweep`.
    Returns the tangents `(segment_start, segment_end (B, T, C),
    transition (B, C, C), duration (B, K, C))`."""
    B, T, K, C = sizes(factors)
    KP, CP = pad(K), pad(C)
    enter, t_enter = rows(factors.enter), rows(tangent.enter)
    t_alpha, t_u, t_scale = tangent_tables
    device = enter.device
    d_start = torch.zeros((B, T, C), dtype=torch.float32, device=device)
    d_end = torch.zeros((B, T, C), dtype=torch.float32, device=device)
    d_transition = torch.empty((B, C, C), dtype=torch.float32, device=device)
    lognorm = torch.zeros((B, T + 1, C), dtype=torch.float32, device=device)
    mean = torch.zeros((B, T + 1, C), dtype=torch.float32, device=device)
    tangent_flow_kernel[(B,)](
        enter, tables.duration_ring, small(factors.transition), small(factors.end), factors.lengths,
        tables.alpha_hat, tables.u_hat, tables.scale,
        t_enter, tangent_ring, small(tangent.transition), small(tangent.end), t_alpha, t_u, t_scale,
        segment_start, segment_end, d_start, d_end, d_transition, lognorm, mean,
        T, K, C, enter.stride(0), t_enter.stride(0), KP=KP, CP=CP, num_warps=flow_num_warps(KP, CP))
    block = min(pad(T + 1), max(16, 2048 // CP))
    num_blocks = triton.cdiv(T + 1, block)
    partial = torch.empty((B, num_blocks, K, C), dtype=torch.float32, device=device)
    tangent_durations_kernel[(B * num_blocks,)](
        enter, small(factors.duration), factors.lengths, tables.u_hat, tables.scale,
        t_enter, small(tangent.duration), t_u, t_scale, segment_end, d_end, lognorm, mean, partial,
        T, K, C, num_blocks, enter.stride(0), t_enter.stride(0), BLOCK=block, CP=CP, num_warps=4)
    return d_start, d_end, d_transition, partial.sum(dim=1)
