"""The outside pass (Log) as a flow of posterior probability, right to left.

Given the forward's tables, the posterior is a backward Markov chain over
segment boundaries: the last segment ends at `L` with label `c` w.p.
`softmax_c(alpha[L, c] + end[c])`; a segment that ends at `e` with label `c`
has duration `d` w.p. `P(d | e, c) ∝ v[e-d, c] (x) duration[d-1, c]`
(normalized over `d`); a segment that starts at `s > 0` with label `c`
follows label `c'` w.p. `P(c' | s, c) ∝ alpha[s, c'] (x) transition[c', c]`
(normalized over `c'`). Pushing the mass of each end back along these
conditionals gives, exactly (DESIGN.md section 2's outside recurrence in
another form):

    segment_end[e-1, c] = P(a segment with label c ends at e)
    segment_start[s, c] = P(a segment with label c starts at s)
    transition[c', c]   = sum_e P(c' -> c at boundary e)

Each conditional is normalized by dividing by its own sum, so probability
mass is conserved at every step up to unbiased rounding: nothing drifts at
T = 10^6 (an outside pass in log space accumulates the bias of the
approximate exp/log of every step). All values are probabilities in [0, 1].

The sweep keeps a `(KP, CP)` ring of the mass arriving at the last `K`
starts and a ring of `v_hat[s] - (N[e] - N[s])` (the forward's inside values
in the frame of the current end); only the `d = 1` term depends on the
previous step, so the `K C` duration weights are computed off the
dependency chain. It stores the log-normalizer of `P(d | e, c)`; the
duration counts `sum_e P(d, e, c)` are then summed in parallel over blocks
of ends (fixed order: bitwise reproducible).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import KernelInputs, pad, row_mask, sweep_num_warps


@triton.jit
def inside_value(u_table_ptr, enter_ptr, table, s, labels, C, T):
    """`v_hat[s] = u_hat[s] + enter[s]` `(CP,)`, `-inf` where `s` is outside `[0, T)`."""
    mask = row_mask(labels, C, s, T)
    return (tl.load(u_table_ptr + table + s * C + labels, mask=mask, other=float("-inf"))
            + tl.load(enter_ptr + s * C + labels, mask=mask, other=0.0))


@triton.jit
def position_inputs(alpha_table_ptr, u_table_ptr, enter_ptr, scale_row, table, e, K, labels, C, T):
    """What the step at end `e` reads: `alpha_hat[e]`, `v_hat[e-1]`, `N[e-1]`,
    and for the start `e - K` entering the window `v_hat[e-K]`, `N[e-K]`."""
    alpha = tl.load(alpha_table_ptr + table + e * C + labels, mask=row_mask(labels, C, e, T + 1),
                    other=float("-inf"))
    newest = inside_value(u_table_ptr, enter_ptr, table, e - 1, labels, C, T)
    oldest = inside_value(u_table_ptr, enter_ptr, table, e - K, labels, C, T)
    scale_newest = tl.load(scale_row + tl.maximum(e - 1, 0))
    scale_oldest = tl.load(scale_row + tl.maximum(e - K, 0))
    return alpha, newest, scale_newest, oldest, scale_oldest


@triton.jit
def normalized_weights(x, axis: tl.constexpr):
    """`(w, 1 / sum w)` of log-weights `x` along `axis`, `w = exp(x - max)`;
    an all `-inf` slice gives zero weights and a zero inverse (no NaN). The
    inverse is correctly rounded, so `sum(w) * inverse` is 1 up to an
    unbiased rounding: normalized flows conserve mass."""
    m = tl.max(x, axis=axis)
    safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(x - tl.expand_dims(safe, axis))
    total = tl.sum(w, axis=axis)
    return w, tl.where(total > 0, tl.math.div_rn(1.0, total), 0.0)


@triton.jit
def outside_flow_kernel(
        enter_ptr, duration_ring_ptr, transition_ptr, end_ptr, lengths_ptr,
        alpha_table_ptr, u_table_ptr, scale_ptr,
        segment_start_ptr, segment_end_ptr, transition_count_ptr, duration_lognorm_ptr,
        T, K, C, enter_stride,
        KP: tl.constexpr, CP: tl.constexpr):
    """One sequence per program. Reads the forward's `alpha_hat`, `u_hat`
    `(B, T+1, C)` and `N (B, T+1)`; writes `segment_start`, `segment_end`
    `(B, T, C)` (rows `0..L-1`), `transition_count (B, C, C)` and the
    log-normalizers of `P(d | e, c)` into `duration_lognorm (B, T+1, C)`
    (rows `1..L`)."""
    b = tl.program_id(0)
    length = tl.load(lengths_ptr + b).to(tl.int32)
    b = b.to(tl.int64)
    slots = tl.arange(0, KP)
    labels = tl.arange(0, CP)
    valid = labels < C
    enter_ptr += b * enter_stride
    table = b * (T + 1) * C
    seq = b * T * C
    scale_row = scale_ptr + b * (T + 1)
    durations = duration_ring_ptr + b * 4 * KP * CP
    duration_1 = tl.load(durations + labels)
    # d >= 2 (second table): at end e, slot i pairs with row (e - 1) mod KP + KP - i.
    longer_window = durations + 3 * KP * CP - slots[:, None] * CP + labels[None, :]
    transition = tl.load(transition_ptr + labels[:, None] * C + labels[None, :],
                         mask=valid[:, None] & valid[None, :], other=float("-inf"))

    # Ring of v_hat[s] - (N[L] - N[s]) for the starts L-K+1 .. L-1 (slot s mod KP).
    scale_end = tl.load(scale_row + length)
    starts = (length - 1) - ((length - 1 - slots) & (KP - 1))
    in_window = (starts >= 0) & (starts > length - K)
    window_mask = in_window[:, None] & valid[None, :]
    inside = (tl.load(u_table_ptr + table + starts[:, None] * C + labels[None, :], mask=window_mask,
                      other=float("-inf"))
              + tl.load(enter_ptr + starts[:, None] * C + labels[None, :], mask=window_mask, other=0.0))
    shift = scale_end - tl.load(scale_row + starts, mask=in_window, other=0.0)
    inside = inside - shift.to(tl.float32)[:, None]
    mass = tl.zeros((KP, CP), tl.float32)
    transition_count = tl.zeros((CP, CP), tl.float32)

    end = tl.load(end_ptr + labels, mask=valid, other=float("-inf"))
    last = tl.load(alpha_table_ptr + table + length * C + labels, mask=valid, other=float("-inf")) + end
    w_last, inv_last = normalized_weights(last, 0)
    start_mass = w_last * inv_last  # at e = L this is already the end mass
    scale_e = scale_end
    a1, n1, s1, o1, so1 = position_inputs(alpha_table_ptr, u_table_ptr, enter_ptr, scale_row, table, length, K,
                                          labels, C, T)
    a2, n2, s2, o2, so2 = position_inputs(alpha_table_ptr, u_table_ptr, enter_ptr, scale_row, table, length - 1,
                                          K, labels, C, T)
    for i in range(0, length):
        e = length - i
        alpha, newest, scale_newest, oldest, scale_oldest = a1, n1, s1, o1, so1
        a1, n1, s1, o1, so1 = a2, n2, s2, o2, so2
        a2, n2, s2, o2, so2 = position_inputs(alpha_table_ptr, u_table_ptr, enter_ptr, scale_row, table, e - 2, K,
                                              labels, C, T)

        # Off the chain: the start e - K enters the window; duration weights of end e.
        slot_oldest = (e - K) & (KP - 1)
        oldest = oldest - (scale_e - scale_oldest).to(tl.float32)
        inside = tl.where(slots[:, None] == slot_oldest, oldest[None, :], inside)
        mass = tl.where(slots[:, None] == slot_oldest, 0.0, mass)
        x = inside + tl.load(longer_window + ((e - 1) & (KP - 1)) * CP)
        x_1 = newest - (scale_e - scale_newest).to(tl.float32) + duration_1
        m = tl.maximum(tl.max(x, axis=0), x_1)
        m = tl.where(m == float("-inf"), 0.0, m)
        w = tl.exp(x - m[None, :])
        w_1 = tl.exp(x_1 - m)
        total = tl.sum(w, axis=0) + w_1
        inv = tl.where(total > 0, tl.math.div_rn(1.0, total), 0.0)
        tl.store(duration_lognorm_ptr + table + e * C + labels, m + tl.log(total), mask=valid)
        arrived = tl.sum(tl.where(slots[:, None] == ((e - 1) & (KP - 1)), mass, 0.0), axis=0)
        # ... and the transition weights at boundary e (used when e < L).
        wt, inv_t = normalized_weights(alpha[:, None] + transition, 0)

        # The chain: start mass at e -> end mass at e -> start mass at e - 1.
        if e < length:
            coef_t = start_mass * inv_t
            flow = wt * coef_t[None, :]
            end_mass = tl.sum(flow, axis=1)
            transition_count += flow
        else:
            end_mass = start_mass
        tl.store(segment_end_ptr + seq + (e - 1) * C + labels, end_mass, mask=valid)
        coef = end_mass * inv
        start_mass = arrived + w_1 * coef
        tl.store(segment_start_ptr + seq + (e - 1) * C + labels, start_mass, mask=valid)
        mass += w * coef[None, :]

        inside = inside + (scale_e - scale_newest).to(tl.float32)
        scale_e = scale_newest

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
        p = end_mass * tl.exp(inside + duration[None, :] - shift[:, None] - lognorm)
        tl.store(out + (d - 1) * C + labels, tl.sum(p, axis=0), mask=valid)


def outside_sweep(inputs: KernelInputs, alpha_table, u_table, scale, num_warps: int | None = None):
    """Launch the outside flow and the duration counts. Returns
    `(segment_start, segment_end (B, T, C), transition (B, C, C), duration (B, K, C))`."""
    B, T, K, C = inputs.shape
    KP, CP = pad(K), pad(C)
    device = inputs.enter.device
    segment_start = torch.zeros((B, T, C), dtype=torch.float32, device=device)
    segment_end = torch.zeros((B, T, C), dtype=torch.float32, device=device)
    transition = torch.empty((B, C, C), dtype=torch.float32, device=device)
    duration_lognorm = torch.empty((B, T + 1, C), dtype=torch.float32, device=device)
    outside_flow_kernel[(B,)](
        inputs.enter, inputs.duration_ring, inputs.transition, inputs.end, inputs.lengths,
        alpha_table, u_table, scale, segment_start, segment_end, transition, duration_lognorm,
        T, K, C, inputs.enter.stride(0), KP=KP, CP=CP, num_warps=num_warps or sweep_num_warps(KP, CP))

    block = min(pad(T + 1), max(16, 2048 // CP))
    num_blocks = triton.cdiv(T + 1, block)
    duration_partial = torch.empty((B, num_blocks, K, C), dtype=torch.float32, device=device)
    duration_counts_kernel[(B * num_blocks,)](
        inputs.enter, inputs.duration, inputs.lengths, u_table, scale, segment_end, duration_lognorm,
        duration_partial, T, K, C, num_blocks, inputs.enter.stride(0), BLOCK=block, CP=CP, num_warps=4)
    return segment_start, segment_end, transition, duration_partial.sum(dim=1)
