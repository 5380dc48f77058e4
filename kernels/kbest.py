"""k-best on the GPU: the Max sweep with k-lists and back-pointers, then a
traceback, one program per sequence (sweep) and per (rank, sequence)
(traceback).

The sweep is the factorized recurrence of :mod:`.forward` in the KMax(k)
semiring: every value is a k-list sorted descending, `(x)` adds a potential
to a whole list, `(+)` keeps the k largest entries of the lists it merges.
Per position `e`:

    alpha[e, c] = top-k over (d, rank) of v[e-d, c, rank] + duration[d-1, c]   (+ leave[e-1, c])
    u[e, c]     = top-k over (c', rank) of alpha[e, c', rank] + transition[c', c]
    v[e, c]     = u[e, c] + enter[e, c]

Each top-k merges lists that are already sorted (ranks are given in the
order entries are taken), so it is a k-way tournament over the lists'
heads: per destination label `c`, a column of heads (one per duration,
`KP`, or per source label, `CP`), `k` pops of its maximum, and after each
pop only the winner's list advances: its next entry is loaded and replaces
its head (an exhausted list's head is removed). Labels sit on the lanes and
a label's heads inside its thread, so that up to `32 x 32` heads (one warp)
a pop is a maximum in registers, without shuffles or barriers; larger tiles
spread the heads over lanes and warps (:func:`kbest_num_warps`). The
`(ROWS, CP)` index tiles are built full-shape (:func:`rows_tile`) to keep
that layout. A candidate is packed into one int64 (the float's
order-preserving bits, then its inverted key), so that one integer max
finds the best value and, among equal values, the smallest key. Keys are
`d-1`/`c'` times `KK = pad(k)` plus the rank, so ties go to the smaller
`(duration, previous label, rank)`, and at the end to the smaller `(last
label, rank)`. As each list is sorted in that same order, the pops follow
the global order of the packed candidates: exactly the reference's rule
(:mod:`semiring_semicrf.backends.reference.decode`). Exact ties need exact
sums (integer potentials with `center=False`).

The lists live in per-sequence scratch, `O(B K C k)`: `lists (B, KP, CP,
k)`, the lists `v[s]` of the last `KP` starts (start `s` in slot
`s mod KP`), and `alpha (B, CP, k)`, the lists `alpha[e]`. The duration
stage reads only its own label's lists; the transition stage reads every
label's `alpha`, written by other lanes and warps, after a barrier
(`bar.sync` orders a block's global writes before its later reads); a
second barrier per position orders the lists a step writes before the next
step reads them. Registers keep the heads, the rank-0 entries of the ring
(as :mod:`.forward`'s ring) and the transitions.

Running normalization: `v[s]` is stored less `N[s]` (the float64 sum of the
shifts `r = max_c alpha` up to `s`, kept per slot in `shifts (B, KP, CP)`),
and read at step `e` with `N[s] - N[e-1]` (rounded to float32) added, by
one formula for every rank, so that a list stays sorted. Integers stay
exact.

The keys are the back-pointers, stored per position, label and rank:
`(B, T+1, C, k)` small integers for the duration stage and as many for the
transition stage (the output's order, `O(B T C k)`).

The heads cost registers, not `k`: the kernels take `k <= MAX_K` and head
tiles of at most `MAX_TILE` elements (:func:`kbest_limits_reason`); larger
requests go to the reference rung.
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

#: The largest k the kernels keep lists for.
MAX_K = 16
#: The largest head tile (`max(KP, CP) * CP` elements) of the sweep: 32 heads per thread at 16 warps.
MAX_TILE = 2 ** 14
#: Packed value of a removed candidate: below every packed float (`-inf` included).
REMOVED: tl.constexpr = tl.constexpr(-2 ** 63)


def kbest_limits_reason(potentials, k: int) -> str | None:
    """None if the k-best kernels run these (float32, `(C, C)`) potentials
    with this `k`, else why not (the reference rung then runs them)."""
    if k > MAX_K:
        return f"the Triton k-best kernel keeps at most {MAX_K} lanes (k = {k}); larger k runs the reference scan"
    KP, CP = pad(potentials.K), pad(potentials.C)
    if max(KP, CP) * CP > MAX_TILE:
        return (f"the Triton k-best kernel's register tile of heads max(K, C) x C = {max(KP, CP)} x {CP} (padded) "
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
def rows_tile(ROWS: tl.constexpr, CP: tl.constexpr):
    """Row indices `0..ROWS-1` as a `(ROWS, CP)` tile, the same for every
    label. Full-shape on purpose: a `(ROWS, 1)` index tile would take
    Triton's default layout for that shape (rows on the lanes), and the
    layout passes then spread the whole tournament that way (labels in
    every thread, a pop across lanes)."""
    return tl.broadcast_to(tl.arange(0, ROWS)[:, None], (ROWS, CP))


@triton.jit
def kbest_sweep_kernel(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr,
        duration_ring_ptr, transition_ptr, start_ptr, end_ptr, lengths_ptr,
        lists_ptr, shifts_ptr, alpha_ptr, duration_from_ptr, source_from_ptr, best_ptr, final_ptr,
        B, T, C, scores_stride, start_stride, end_stride,
        KP: tl.constexpr, CP: tl.constexpr, KK: tl.constexpr, KBEST: tl.constexpr,
        START_SCORES: tl.constexpr, END_SCORES: tl.constexpr):
    """One sequence per program. Writes the back-pointers
    `duration_from (B, T+1, C, KBEST)` (`(d-1) KK + rank` in `v[e-d, c]`)
    and `source_from (B, T+1, C, KBEST)` (`c' KK + rank` in `alpha[e, c']`),
    the `KBEST` best scores `best (KBEST, B)` float32 and where each ends,
    `final (KBEST, B)` (`c KK + rank` in `alpha[L, c]`). Scratch, each entry
    written before it is read: `lists (B, KP, CP, KBEST)` float32 (the ring
    of `v[s] - N[s]`), `shifts (B, KP, CP)` float64 (`N[s]` of each slot,
    the same for every label: the loads then run along the labels, as the
    tiles' layout wants) and `alpha (B, CP, KBEST)` float32
    (`alpha[e] - N[e-1]`)."""
    b = tl.program_id(0)
    length = tl.load(lengths_ptr + b).to(tl.int32)
    b64 = b.to(tl.int64)
    labels = tl.arange(0, CP)
    valid = labels < C
    columns = labels[None, :]
    slots = rows_tile(KP, CP)  # the starts' ring slots
    sources = rows_tile(CP, CP)  # the source labels
    scores_ptr, start_scores_ptr, end_scores_ptr, mean = sequence_inputs(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr, b64, C, scores_stride, start_stride, end_stride,
        labels)
    lists_ptr += b64 * KP * CP * KBEST
    shifts_ptr += b64 * KP * CP
    alpha_ptr += b64 * CP * KBEST
    pointer_row = b64 * (T + 1) * C * KBEST + labels * KBEST
    # Slot i at position e pairs with row (e - 1) mod KP + KP - i of the first table; row j holds duration[j].
    window = duration_ring_ptr + b64 * 4 * KP * CP + KP * CP - slots * CP + columns
    durations = duration_ring_ptr + b64 * 4 * KP * CP + labels
    transition = tl.load(transition_ptr + sources * C + columns, mask=(sources < C) & (columns < C),
                         other=float("-inf"))
    start = tl.load(start_ptr + labels, mask=valid, other=float("-inf"))
    cum = tl.zeros((CP,), tl.float64)
    scale = tl.full([], 0.0, tl.float64)
    v0 = start + enter_factor(cum, boundary_row(start_scores_ptr, 0, labels, C, T, START_SCORES))
    ranks = tl.arange(0, KK)[None, :]
    tl.store(lists_ptr + labels[:, None] * KBEST + ranks, tl.where(ranks == 0, v0[:, None], float("-inf")),
             mask=ranks < KBEST)
    tl.store(shifts_ptr + labels, tl.zeros((CP,), tl.float64))  # N[0]
    ring = tl.where(slots == 0, v0[None, :], float("-inf"))  # rank 0 of each slot's list, less its N
    r = tl.full([], 0.0, tl.float32)
    next_scores, next_end_score, next_start_score = position_rows(
        scores_ptr, start_scores_ptr, end_scores_ptr, 0, labels, C, T, START_SCORES, END_SCORES)
    for e in range(1, length + 1):
        scores, end_score, start_score = next_scores, next_end_score, next_start_score
        next_scores, next_end_score, next_start_score = position_rows(
            scores_ptr, start_scores_ptr, end_scores_ptr, e, labels, C, T, START_SCORES, END_SCORES)
        cum, leave, enter = step_factors(cum, scores, end_score, start_score, mean)  # cum[e], leave[e-1], enter[e]
        scale += r.to(tl.float64)  # N[e-1]
        duration = tl.load(window + ((e - 1) & (KP - 1)) * CP)
        row = pointer_row + e * C * KBEST

        # Duration stage: per slot i (start s, d = e - s), the list v[s, c] + duration[d-1, c], its entries
        # lists[i, c, rank] + (N[s] - N[e-1] + duration[d-1, c]): one formula for the heads and for the
        # entries loaded later, so that each list stays sorted.
        tl.debug_barrier()  # what the previous step stored (other threads included) is visible
        shift = (tl.load(shifts_ptr + slots * CP + columns, mask=slots < e, other=0.0) - scale).to(tl.float32)
        heads = pack(ring + (shift + duration), ((e - 1 - slots) & (KP - 1)) * KK, KP * KK)
        for t in tl.static_range(KBEST):
            value, key = unpack(tl.max(heads, axis=0), KP * KK)
            tl.store(duration_from_ptr + row + t, key.to(duration_from_ptr.dtype.element_ty), mask=valid)
            tl.store(alpha_ptr + labels * KBEST + t, value + leave)
            if t == 0:
                r = tl.max(value + leave, axis=0)
                r = tl.where(r == float("-inf"), 0.0, r)
            if t < KBEST - 1:
                d = key // KK  # d - 1 of the winning list
                rank = key % KK + 1
                slot = (e - 1 - d) & (KP - 1)
                more = rank < KBEST
                started = more & (d < e)  # the slots of starts s < 0 were never written: -inf lists
                entry = tl.load(lists_ptr + (slot * CP + labels) * KBEST + rank, mask=started, other=float("-inf"))
                slot_shift = (tl.load(shifts_ptr + slot * CP + labels, mask=started, other=0.0) - scale).to(tl.float32)
                head = pack(entry + (slot_shift + tl.load(durations + d * CP)), key + 1, KP * KK)
                heads = tl.where(slots == slot[None, :], tl.where(more, head, REMOVED)[None, :], heads)

        # Transition stage: lists alpha[e, c'] + transition[c', c], one per source label.
        tl.debug_barrier()  # every label's alpha list
        heads = pack(tl.load(alpha_ptr + sources * KBEST) + transition, sources * KK, CP * KK)
        newest = e & (KP - 1)
        for t in tl.static_range(KBEST):
            value, key = unpack(tl.max(heads, axis=0), CP * KK)
            v = value - r + enter
            tl.store(source_from_ptr + row + t, key.to(source_from_ptr.dtype.element_ty), mask=valid)
            tl.store(lists_ptr + (newest * CP + labels) * KBEST + t, v)
            if t == 0:
                ring = tl.where(slots == newest, v[None, :], ring)
            if t < KBEST - 1:
                source = key // KK
                rank = key % KK + 1
                more = rank < KBEST
                entry = tl.load(alpha_ptr + source * KBEST + rank, mask=more, other=float("-inf"))
                weight = tl.load(transition_ptr + source * C + labels, mask=more & (source < C) & valid,
                                 other=float("-inf"))
                head = pack(entry + weight, key + 1, CP * KK)
                heads = tl.where(sources == source[None, :], tl.where(more, head, REMOVED)[None, :],
                                 heads)
        tl.store(shifts_ptr + newest * CP + labels, tl.zeros((CP,), tl.float64) + (scale + r.to(tl.float64)))  # N[e]

    # The lists alpha[L, c] + end[c], from the scratch (its last step's barrier made them visible).
    end = tl.load(end_ptr + labels, mask=valid, other=float("-inf"))
    last = pack(tl.load(alpha_ptr + labels * KBEST) + end, labels * KK, CP * KK)
    for t in tl.static_range(KBEST):
        value, key = unpack(tl.max(last, axis=0), CP * KK)
        tl.store(best_ptr + t * B + b, (scale + value.to(tl.float64)).to(tl.float32))
        tl.store(final_ptr + t * B + b, key)
        if t < KBEST - 1:
            label = key // KK
            rank = key % KK + 1
            more = rank < KBEST
            entry = tl.load(alpha_ptr + label * KBEST + rank, mask=more, other=float("-inf"))
            head = pack(entry + tl.load(end_ptr + label, mask=more & (label < C), other=float("-inf")), key + 1,
                        CP * KK)
            last = tl.where(labels == label, tl.where(more, head, REMOVED), last)


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


def kbest_num_warps(kp: int, cp: int) -> int:
    """Warps for a sweep with `(KP, CP)` duration heads and `(CP, CP)`
    transition heads: one warp up to `32 x 32` (each label's 32 heads in its
    lane's registers: every pop in-thread, 204 registers at k = 5), else
    one warp per 512 elements of the larger tile (16 heads per thread), up
    to 16. Register counts from Triton 3.9's sm_90 build: one warp spills
    at 32 heads per thread when C < 32 (rows over lanes: (64, 16), (128,
    8)), and so do two warps at (64, 32); 16 per thread does not spill up to
    8 warps (16 warps cap a thread at 128 registers)."""
    tile = max(kp, cp) * cp
    return 1 if cp == 32 and tile <= 1024 else max(1, min(16, tile // 512))


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
    lists = torch.empty((B, KP, CP, k), dtype=torch.float32, device=device)
    shifts = torch.empty((B, KP, CP), dtype=torch.float64, device=device)
    alpha = torch.empty((B, CP, k), dtype=torch.float32, device=device)
    kbest_sweep_kernel[(B,)](
        *inputs[:4], duration_ring(factors), small(factors.transition), small(factors.start),
        small(factors.end), factors.lengths, lists, shifts, alpha, duration_from, source_from, scores, final,
        B, T, C, *inputs[4:], KP=KP, CP=CP, KK=KK, KBEST=k,
        num_warps=num_warps or kbest_num_warps(KP, CP), **flags)
    kbest_traceback_kernel[(k * B,)](duration_from, source_from, scores, final, factors.lengths, labels, starts,
                                     B, T, C, KP=KP, KK=KK, KBEST=k, num_warps=1)
    return scores, labels, starts.bool()
