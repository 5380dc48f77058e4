"""k-best on the GPU: the Max sweep with k lanes and back-pointers, then a
traceback, one program per sequence (sweep) and per (rank, sequence)
(traceback).

The sweep is the factorized recurrence of :mod:`.forward` in the KMax(k)
semiring: every value is a k-list sorted descending, `(x)` adds a potential
to a whole list, `(+)` keeps the k largest entries of the lists it merges.
Per position `e`:

    alpha[e, c] = top-k over (d, rank) of v[e-d, c, rank] + duration[d-1, c]   (+ leave[e-1, c])
    u[e, c]     = top-k over (c', rank) of alpha[e, c', rank] + transition[c', c]
    v[e, c]     = u[e, c] + enter[e, c]

The ring holds the lists of the last `K` starts, `(KP, CP, KK)` in
registers (`KK = pad(k)`), rotated as in :mod:`.forward`. A top-k is `k`
pops of the candidates' maximum: each candidate is packed into one int64
(the float's order-preserving bits, then its inverted key), so that one
integer max finds the best value and, among equal values, the smallest key,
and removing it is one comparison (keys are distinct). Keys are
`d-1`/`c'` times `KK` plus the rank, so ties go to the smaller
`(duration, previous label, rank)`, and at the end to the smaller
`(last label, rank)`: exactly the reference's rule
(:mod:`semiring_semicrf.backends.reference.decode`). Exact ties need exact
sums (integer potentials with `center=False`); the running normalization
subtracts a value of the tiles themselves, which keeps integers exact.

The keys are the back-pointers, stored per position, label and rank:
`(B, T+1, C, k)` small integers for the duration stage and as many for the
transition stage (the output's order, `O(B T C k)`).

The tiles cost registers: the kernels take `k <= MAX_K` and tiles of at
most `MAX_TILE` elements (:func:`kbest_limits_reason`); larger requests go
to the reference rung.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    boundary_row,
    duration_ring,
    enter_factor,
    pad,
    position_inputs,
    position_rows,
    sequence_inputs,
    sizes,
    small,
    step_factors,
)

#: The largest k the kernels keep lanes for.
MAX_K = 16
#: The largest register tile (`max(KP, CP) * CP * pad(k)` elements) of the sweep.
MAX_TILE = 2 ** 15
#: Packed value of a removed candidate: below every packed float (`-inf` included).
REMOVED: tl.constexpr = tl.constexpr(-2 ** 63)


def kbest_limits_reason(potentials, k: int) -> str | None:
    """None if the k-best kernels run these (float32, `(C, C)`) potentials
    with this `k`, else why not (the reference rung then runs them)."""
    if k > MAX_K:
        return f"the Triton k-best kernel keeps at most {MAX_K} lanes (k = {k}); larger k runs the reference scan"
    KP, CP, KK = pad(potentials.K), pad(potentials.C), pad(k)
    tile = max(KP, CP) * CP * KK
    if tile > MAX_TILE:
        return (f"the Triton k-best kernel's register tile max(K, C) x C x k = {max(KP, CP)} x {CP} x {KK} (padded) "
                f"exceeds {MAX_TILE} elements; this size runs the reference scan")
    return None


@triton.jit
def pack(value, key, KEYS: tl.constexpr):
    """An int64 ordered as `(value, then the smaller key)`; `0 <= key < KEYS`.
    The float's bits are mapped to an int32 of the same order (negative
    floats have their magnitude bits flipped; -0.0 counts as 0.0)."""
    value = tl.where(value == 0.0, 0.0, value)
    bits = value.to(tl.int32, bitcast=True)
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (bits.to(tl.int64) << 32) | (KEYS - 1 - key).to(tl.int64)


@triton.jit
def unpack(packed, KEYS: tl.constexpr):
    """`(value float32, key int32)` of :func:`pack`'s result."""
    high = packed >> 32
    bits = high.to(tl.int32)
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.to(tl.float32, bitcast=True), KEYS - 1 - (packed - (high << 32)).to(tl.int32)


@triton.jit
def top_k_lists(candidates, key, ranks, KEYS: tl.constexpr, KBEST: tl.constexpr):
    """Per label (axis 1) of `candidates (n, CP, KK)`, the `KBEST` best
    entries over axes 0 and 2: `(values (CP, KK), keys (CP, KK) int32)`,
    rank-major along the last axis, `-inf` past `KBEST`. `key (n, 1, KK)`
    holds each candidate's key (distinct within a label)."""
    packed = pack(candidates, key, KEYS)
    values = tl.full((candidates.shape[1], candidates.shape[2]), float("-inf"), tl.float32)
    keys = tl.zeros((candidates.shape[1], candidates.shape[2]), tl.int32)
    for t in tl.static_range(KBEST):
        best = tl.max(tl.max(packed, axis=2), axis=0)
        if t < KBEST - 1:
            packed = tl.where(packed == best[None, :, None], REMOVED, packed)
        value, index = unpack(best, KEYS)
        values = tl.where(ranks[None, :] == t, value[:, None], values)
        keys = tl.where(ranks[None, :] == t, index[:, None], keys)
    return values, keys


@triton.jit
def kbest_sweep_kernel(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr,
        duration_ring_ptr, transition_ptr, start_ptr, end_ptr, lengths_ptr,
        duration_from_ptr, source_from_ptr, best_ptr, final_ptr,
        B, T, C, scores_stride, start_stride, end_stride,
        KP: tl.constexpr, CP: tl.constexpr, KK: tl.constexpr, KBEST: tl.constexpr,
        START_SCORES: tl.constexpr, END_SCORES: tl.constexpr):
    """One sequence per program. Writes the back-pointers
    `duration_from (B, T+1, C, KBEST)` (`(d-1) KK + rank` in `v[e-d, c]`)
    and `source_from (B, T+1, C, KBEST)` (`c' KK + rank` in `alpha[e, c']`),
    the `KBEST` best scores `best (KBEST, B)` float32 and where each ends,
    `final (KBEST, B)` (`c KK + rank` in `alpha[L, c]`)."""
    b = tl.program_id(0)
    length = tl.load(lengths_ptr + b).to(tl.int32)
    b64 = b.to(tl.int64)
    slots = tl.arange(0, KP)
    labels = tl.arange(0, CP)
    ranks = tl.arange(0, KK)
    valid = labels < C
    scores_ptr, start_scores_ptr, end_scores_ptr, mean = sequence_inputs(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr, b64, C, scores_stride, start_stride, end_stride,
        labels)
    pointer_rows = b64 * (T + 1) * C * KBEST + labels[:, None] * KBEST + ranks[None, :]
    pointer_mask = valid[:, None] & (ranks[None, :] < KBEST)
    window = duration_ring_ptr + b64 * 4 * KP * CP + KP * CP - slots[:, None] * CP + labels[None, :]
    transition = tl.load(transition_ptr + labels[:, None] * C + labels[None, :],
                         mask=valid[:, None] & valid[None, :], other=float("-inf"))
    source_key = (labels * KK)[:, None, None] + ranks[None, None, :]  # (CP_src, 1, KK)
    start = tl.load(start_ptr + labels, mask=valid, other=float("-inf"))
    cum = tl.zeros((CP,), tl.float64)
    v0 = start + enter_factor(cum, boundary_row(start_scores_ptr, 0, labels, C, T, START_SCORES))
    first = (slots[:, None, None] == 0) & (ranks[None, None, :] == 0)
    ring = tl.where(first, v0[None, :, None], float("-inf"))
    alpha = tl.full((CP, KK), float("-inf"), tl.float32)
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

        duration_key = (((e - 1 - slots) & (KP - 1)) * KK)[:, None, None] + ranks[None, None, :]
        alpha, alpha_from = top_k_lists(ring + duration[:, :, None], duration_key, ranks, KP * KK, KBEST)
        alpha += leave[:, None]
        r = tl.max(tl.max(alpha, axis=1), axis=0)
        r = tl.where(r == float("-inf"), 0.0, r)
        u, u_from = top_k_lists(alpha[:, None, :] + transition[:, :, None], source_key, ranks, CP * KK, KBEST)
        alpha -= r
        scale += r.to(tl.float64)
        row = pointer_rows + e * C * KBEST
        tl.store(duration_from_ptr + row, alpha_from.to(duration_from_ptr.dtype.element_ty), mask=pointer_mask)
        tl.store(source_from_ptr + row, u_from.to(source_from_ptr.dtype.element_ty), mask=pointer_mask)
        ring = tl.where(slots[:, None, None] == (e & (KP - 1)), (u - r + enter[:, None])[None, :, :], ring - r)

    end = tl.load(end_ptr + labels, mask=valid, other=float("-inf"))
    last = pack(alpha + end[:, None], (labels * KK)[:, None] + ranks[None, :], CP * KK)
    for t in tl.static_range(KBEST):
        best = tl.max(tl.max(last, axis=1), axis=0)
        if t < KBEST - 1:
            last = tl.where(last == best, REMOVED, last)
        value, index = unpack(best, CP * KK)
        tl.store(best_ptr + t * B + b, (scale + value.to(tl.float64)).to(tl.float32))
        tl.store(final_ptr + t * B + b, index)


@triton.jit
def kbest_traceback_kernel(duration_from_ptr, source_from_ptr, scores_ptr, final_ptr, lengths_ptr,
                           labels_ptr, starts_ptr, B, T, C,
                           KP: tl.constexpr, KK: tl.constexpr, KBEST: tl.constexpr):
    """Program `q * B + b` writes the rank-`q` segmentation of sequence `b`
    into `labels (KBEST, B, T)` int64 and `starts (KBEST, B, T)` int8 over
    `[0, L)` (the caller fills them with -1 / 0, which a missing entry, of
    score `-inf`, keeps)."""
    chain = tl.program_id(0)
    b = chain % B
    score = tl.load(scores_ptr + chain)
    alive = (score > float("-inf")) & (score < float("inf"))
    e = tl.where(alive, tl.load(lengths_ptr + b).to(tl.int32), 0)
    table = b.to(tl.int64) * (T + 1) * C * KBEST
    out = chain.to(tl.int64) * T
    key = tl.load(final_ptr + chain)
    c = key // KK
    rank = key % KK
    offsets = tl.arange(0, KP)
    while e > 0:
        # Clamps keep the walk in bounds whatever the pointers hold.
        key = tl.load(duration_from_ptr + table + (e * C + c) * KBEST + rank).to(tl.int32)
        d = tl.minimum(key // KK + 1, e)
        s = e - d
        tl.store(labels_ptr + out + s + offsets, tl.full((KP,), 0, tl.int64) + c, mask=offsets < d)
        tl.store(starts_ptr + out + s, 1)
        key = tl.load(source_from_ptr + table + (s * C + c) * KBEST + key % KK, mask=s > 0, other=0).to(tl.int32)
        c = tl.minimum(key // KK, C - 1)
        rank = tl.minimum(key % KK, KBEST - 1)
        e = s


def pointer_dtype(n: int) -> torch.dtype:
    """The smallest integer dtype holding keys `< n`."""
    return torch.int16 if n <= torch.iinfo(torch.int16).max else torch.int32


def kbest_num_warps(tile: int) -> int:
    """Warps for a sweep whose largest tile has `tile` elements: about 512
    elements per warp (each pop reduces the whole tile), one to sixteen. On
    an H200 at (4, 1000, 32, 24), k = 5 (a tile of 8192): 31.5 ms at 16
    warps, 35.7 at 8, 68 at 4, 285 at 2."""
    return max(1, min(16, tile // 512))


def kbest_decode(factors, k: int, num_warps: int | None = None):
    """The k best segmentations of float32 :class:`Factors`: `(scores (k, B)
    float32, labels (k, B, T) int64, starts (k, B, T) bool)`, best first;
    missing entries (fewer than k segmentations) have score `-inf`, labels
    -1 and no starts. `num_warps` of the sweep: :func:`kbest_num_warps` by
    default."""
    B, T, K, C = sizes(factors)
    KP, CP, KK = pad(K), pad(C), pad(k)
    inputs, flags = position_inputs(factors)
    device = inputs[0].device
    keys = pointer_dtype(max(KP, CP) * KK)
    duration_from = torch.empty((B, T + 1, C, k), dtype=keys, device=device)
    source_from = torch.empty((B, T + 1, C, k), dtype=keys, device=device)
    scores = torch.full((k, B), float("-inf"), dtype=torch.float32, device=device)
    final = torch.zeros((k, B), dtype=torch.int32, device=device)
    labels = torch.full((k, B, T), -1, dtype=torch.int64, device=device)
    starts = torch.zeros((k, B, T), dtype=torch.int8, device=device)
    if B == 0:
        return scores, labels, starts.bool()
    kbest_sweep_kernel[(B,)](
        *inputs[:4], duration_ring(factors), small(factors.transition), small(factors.start),
        small(factors.end), factors.lengths, duration_from, source_from, scores, final,
        B, T, C, *inputs[4:], KP=KP, CP=CP, KK=KK, KBEST=k,
        num_warps=num_warps or kbest_num_warps(max(KP, CP) * CP * KK), **flags)
    kbest_traceback_kernel[(k * B,)](duration_from, source_from, scores, final, factors.lengths, labels, starts,
                                     B, T, C, KP=KP, KK=KK, KBEST=k, num_warps=1)
    return scores, labels, starts.bool()
