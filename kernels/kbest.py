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

The ring holds the lists of the last `K` starts in registers, rotated as in
:mod:`.forward`, one tile per rank (a tuple of `k` tiles, so nothing is
padded to a power of two along the ranks). A top-k is a k-way merge over
the lists' heads (:func:`top_k_of_sorted_lists`): `k` pops, each taking
the heads' best, then moving the winning list one rank on. A pop is two
reductions: the heads' maximum, then the smallest list key among the heads
equal to it. Moving a list on shifts its ranks, one select each, none
waiting on another (a head picked by a rank pointer was a chain of selects,
one per rank it could have reached: 897 instructions a step at (64, 8)
against 736); the popped entry's rank is the number of pops its list won
before. Keys are
`d-1`/`c'` times `KK` plus the rank, so ties go to the smaller
`(duration, previous label, rank)`, and at the end to the smaller
`(last label, rank)`: exactly the reference's rule
(:mod:`semiring_semicrf.backends.reference.decode`). Exact ties need exact
sums (integer potentials with `center=False`); the running normalization
subtracts a value of the tiles themselves, which keeps integers exact.

The duration stage is split in two, a step apart. Of `alpha[e + 1]`'s
starts, all but the newest, `e`, are known once step `e` has its running
normalization: their best `k` (over `d >= 2`, with :func:`~.common.duration_ring`'s
table without `d = 1`) are popped in step `e`, interleaved with the
transition stage's pops (:func:`top_k_of_two_sets`: one set's instructions
fill the other's waits on its shuffles). Step `e + 1` then merges the
newest start's list, `v[e] + duration[0]`, into them
(:func:`merge_two_sorted`, ties to the newest: the shorter duration), a
few selects where `K` lists were popped. The sums are the same floats in
the same order, so the outputs are the same bits.

The tiles are laid out so that the pops' reductions never leave a warp
(:func:`kbest_tiling`): each warp holds a group of labels, its lanes a
few lists of each, a thread the rest of the lists in registers. A pop is
then a few register maxima and shuffles, with no barrier. Up to 8 labels
each warp holds one, its 32 lanes that label's lists: a pop's maximum
over the lanes is then one `REDUX` on the floats' ordered integer bits
(:func:`list_max`), where shuffles took three rounds, and each thread
holds fewer lists (`topk(5)` at (1, 10^5, 64, 8): 147.6 ms on 8 warps
against 175.0 on 2, with the same outputs, bit for bit). One barrier a
position remains, where alpha (by label) is exchanged into alpha by
previous label for the transition stage (:func:`~.common.by_previous_label`;
a gather, which Triton makes shuffles, on one warp whose lanes are
filled). On an H200 at (4, 1000, 32, 24),
k = 5, the sweep and the traceback took 3.7 ms where pops over whole `(K,
C, pad(k))` tiles, reduced across 16 warps, took 31 (`benchmarks/gpu_kbest.py`;
with each head packed into one 64-bit integer, value then key, and one
reduction a pop, 4.1 ms: the two 32-bit reductions take fewer instructions);
with the shifted lists and the split duration stage, 2.4 ms on 4 warps
(3.1 on the 16 of before), and 174 ms at (1, 10^5, 64, 8) (198 before).

Everything else a step moves between threads is kept off shared memory:
the exchange and the back-pointers are stored by the threads that hold
them (:func:`~.common.store_where_held`; a plain store first moved each
rank's values to a coalescing layout, a barrier and a shared-memory round
trip apiece), the running normalization is taken from the exchanged copy
each warp reads back, and every load (the duration tile, the rows, the
exchange) is made by the threads that use the values
(:func:`~.common.load_where_held`). Barriers a step, sm_90: 20 -> 1 at (64,
8), 42 -> 1 at (16, 16); on an H200, `topk(5)` 216 -> 198 ms at (1, 10^5,
64, 8), 4.1-4.5 -> 3.0 ms at (4, 1000, 32, 24), 58 -> 45 ms at (4,
10^4, 100, 24), with the same outputs, bit for bit.

The keys are the back-pointers, stored per position, label and rank:
`(B, T+1, C, k)` small integers for the duration stage and as many for the
transition stage (the output's order, `O(B T C k)`).

The ring costs registers: the kernels take `k <= MAX_K` and tiles of at
most `MAX_TILE` elements, counting the ranks padded (:func:`kbest_limits_reason`);
larger requests go to the reference rung.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    boundary_nans,
    boundary_row,
    by_previous_label,
    duration_ring,
    enter_factor,
    load_where_held,
    pad,
    position_inputs,
    position_rows,
    potential_nan_mark,
    reduce_min,
    sequence_inputs,
    sizes,
    small_factors,
    small_factors_nan,
    step_factors,
    store_where_held,
    sweep_tile_indices,
    sweep_tiling,
)
from .forward import backpointer_dtype

#: The largest k the kernels keep lanes for.
MAX_K = 16
#: The largest register tile (`max(KP, CP) * CP * pad(k)` elements) of the sweep.
MAX_TILE = 2 ** 15


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
def ordered_bits(x):
    """The bits of float32 `x` as int32 in the same order (`-inf` lowest,
    `-0.0` just below `0.0`), and back: the map is its own inverse."""
    i = x.to(tl.int32, bitcast=True)
    return i ^ ((i >> 31) & 0x7FFFFFFF)


@triton.jit
def list_max(x, A: tl.constexpr, B: tl.constexpr, WARP_LISTS: tl.constexpr):
    """:func:`~.common.reduce_max` over the lists' axes `A` (in registers)
    and `B` (across lanes). With `WARP_LISTS` (axis `B` is a whole warp's
    32 lanes, :func:`kbest_tiling`), `B`'s maximum is taken on
    :func:`ordered_bits`: one `REDUX` instruction, which Triton emits for a
    whole warp's int32 maximum, where a float maximum is five rounds of
    shuffles. A NaN the registers' maximum kept (all its entries NaN) may
    then win, where a shuffle's maximum would skip it; the score is NaN
    either way (:func:`~.common.potential_nan_mark`)."""
    x = tl.max(x, axis=A, keep_dims=True)
    if WARP_LISTS:
        return ordered_bits(tl.max(ordered_bits(x), axis=B, keep_dims=True)).to(tl.float32, bitcast=True)
    else:
        return tl.max(x, axis=B, keep_dims=True)


@triton.jit
def rank_entry(lists, ptr, UPTO: tl.constexpr):
    """`lists[ptr]` elementwise, for `ptr <= UPTO` (`lists` a tuple of
    tiles, `ptr` an int32 tile of the broadcast shape)."""
    entry = lists[0]
    for j in tl.static_range(1, UPTO + 1):
        entry = tl.where(ptr == j, lists[j], entry)
    return entry


@triton.jit
def with_base(lists, base, KBEST: tl.constexpr):
    """The tuple of tiles `lists[j] + base`."""
    entries = ()
    for j in tl.static_range(KBEST):
        entries = entries + (lists[j] + base,)
    return entries


@triton.jit
def pop_head(entries, values, winners, list_key, LISTS: tl.constexpr, A: tl.constexpr, B: tl.constexpr,
             WARP_LISTS: tl.constexpr):
    """One pop of :func:`top_k_of_sorted_lists`: the heads' (`entries[0]`)
    best and the key of its list appended to `values` and `winners` (the
    pops before), and the lists with the winner's moved one rank on (their
    first `len(entries) - 1` ranks, all a later pop can reach)."""
    head = entries[0]
    value = list_max(head, A, B, WARP_LISTS)
    winner = reduce_min(tl.where(head == value, list_key, LISTS), A, B)
    won = list_key == winner
    moved = ()
    for j in tl.static_range(len(entries) - 1):
        moved = moved + (tl.where(won, entries[j + 1], entries[j]),)
    return moved, values + (value,), winners + (winner,)


@triton.jit
def keys_of_pops(winners, KK: tl.constexpr):
    """The keys `list_key * KK + rank` of the entries popped from the lists
    `winners` (in pop order): an entry's rank is the number of pops its
    list won before."""
    keys = ()
    for t in tl.static_range(len(winners)):
        rank = tl.zeros(winners[t].shape, tl.int32)
        for before in tl.static_range(t):
            rank += (winners[before] == winners[t]).to(tl.int32)
        keys = keys + (winners[t] * KK + rank,)
    return keys


@triton.jit
def top_k_of_sorted_lists(lists, base, list_key, KK: tl.constexpr, LISTS: tl.constexpr, KBEST: tl.constexpr,
                          A: tl.constexpr, B: tl.constexpr, WARP_LISTS: tl.constexpr):
    """The `KBEST` best of the sorted lists `lists[j] + base`, the lists
    along axes `A` and `B` of the broadcast shape, per index of the other
    axes (`lists` a tuple of `KBEST` tiles, rank `j` in `lists[j]`, each
    list non-increasing over `j`). Returns `(values, keys)`, tuples of
    `KBEST` tensors (axes `A`, `B` of size 1), best first; the key of rank
    `j` of a list is `list_key * KK + j` (`list_key` distinct per list,
    below `LISTS`).

    A k-way merge over the lists' heads: each pop takes the heads' maximum,
    then the smallest list key among the heads equal to it (ties to the
    smaller key), and moves the winning list one rank on (each rank takes
    the next one's value: one select a rank, none waiting on another). Each
    list is sorted and its ranks' keys increase, so the merge pops exactly
    what pops over all entries would."""
    entries = with_base(lists, base, KBEST)
    values = ()
    winners = ()
    for _ in tl.static_range(KBEST):
        entries, values, winners = pop_head(entries, values, winners, list_key, LISTS, A, B, WARP_LISTS)
    return values, keys_of_pops(winners, KK)


@triton.jit
def top_k_of_two_sets(lists, base, list_key, LISTS: tl.constexpr, other_lists, other_base, other_list_key,
                      OTHER_LISTS: tl.constexpr, KK: tl.constexpr, KBEST: tl.constexpr, A: tl.constexpr,
                      B: tl.constexpr, WARP_LISTS: tl.constexpr):
    """:func:`top_k_of_sorted_lists` of two independent sets of lists (of
    one tile shape), `(values, keys, other_values, other_keys)`, their pops
    interleaved so that one set's instructions fill the other's waits on
    its shuffles."""
    entries = with_base(lists, base, KBEST)
    other_entries = with_base(other_lists, other_base, KBEST)
    values = ()
    winners = ()
    other_values = ()
    other_winners = ()
    for _ in tl.static_range(KBEST):
        entries, values, winners = pop_head(entries, values, winners, list_key, LISTS, A, B, WARP_LISTS)
        other_entries, other_values, other_winners = pop_head(other_entries, other_values, other_winners,
                                                              other_list_key, OTHER_LISTS, A, B, WARP_LISTS)
    return values, keys_of_pops(winners, KK), other_values, keys_of_pops(other_winners, KK)


@triton.jit
def merge_two_sorted(first, second, second_keys, KBEST: tl.constexpr):
    """The `KBEST` best of two sorted lists (tuples of `KBEST` tensors, best
    first), ties to `first`: `(values, keys)`, the key of `first[j]` being
    `j` and that of `second[j]` `second_keys[j]` (all above `first`'s). A
    merge: each step compares the two heads (ranks `i` and `j`, selected
    among the ranks they can have reached) and moves the taken one on."""
    i = tl.zeros(first[0].shape, tl.int32)
    j = tl.zeros(first[0].shape, tl.int32)
    values = ()
    keys = ()
    for t in tl.static_range(KBEST):
        a = rank_entry(first, i, t)
        b = rank_entry(second, j, t)
        take = a >= b
        values = values + (tl.where(take, a, b),)
        keys = keys + (tl.where(take, i, rank_entry(second_keys, j, t)),)
        i += take.to(tl.int32)
        j += 1 - take.to(tl.int32)
    return values, keys


@triton.jit
def kbest_sweep_kernel(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr,
        duration_ring_ptr, transition_ptr, start_ptr, end_ptr, lengths_ptr,
        duration_from_ptr, source_from_ptr, best_ptr, final_ptr, exchange_ptr,
        B, T, C, scores_stride, start_stride, end_stride,
        KP: tl.constexpr, CP: tl.constexpr, KK: tl.constexpr, KBEST: tl.constexpr,
        G: tl.constexpr, S: tl.constexpr,
        START_SCORES: tl.constexpr, END_SCORES: tl.constexpr):
    """One sequence per program. Writes the back-pointers
    `duration_from (B, T+1, C, KBEST)` (`(d-1) KK + rank` in `v[e-d, c]`)
    and `source_from (B, T+1, C, KBEST)` (`c' KK + rank` in `alpha[e, c']`),
    the `KBEST` best scores `best (KBEST, B)` float32 and where each ends,
    `final (KBEST, B)` (`c KK + rank` in `alpha[L, c]`); `exchange (B, 2,
    KBEST, CP)` float32 is scratch.

    Tiles are 4-d, `(lists / S, G, S, labels / G)` (:func:`kbest_tiling`):
    list `x S + s` (ring slot, or previous label), label `g (CP / G) + l`;
    with `S = 32` a label's lists span a whole warp (:func:`list_max`).
    A label's vectors are `(1, G, S, CP / G)`, the same value in each `s`,
    so that every tensor has the tiles' layout and broadcasts without moving
    data. The one exchange between threads besides the reductions, alpha by
    label into alpha by previous label, goes through `exchange` (double
    buffered by the position's parity, one barrier a position)."""
    WARP_LISTS: tl.constexpr = S == 32
    b = tl.program_id(0)
    length = tl.load(lengths_ptr + b).to(tl.int32)
    b64 = b.to(tl.int64)
    copy, labels, slots, sources = sweep_tile_indices(KP, CP, G, S)
    valid = labels < C
    stores = valid & (copy == 0)
    scores_ptr, start_scores_ptr, end_scores_ptr, mean = sequence_inputs(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr, b64, C, scores_stride, start_stride, end_stride,
        labels, True)
    pointer_rows = b64 * (T + 1) * C * KBEST + labels * KBEST
    exchange_ptr += b64 * 2 * KBEST * CP
    durations = duration_ring_ptr + b64 * 4 * KP * CP
    # the durations d >= 2 of the ring's slots in their rotated order (:func:`~.common.duration_ring`'s
    # second table), and d = 1, the same at every position
    longer = durations + 3 * KP * CP - slots * CP + labels
    shortest = load_where_held(durations + labels, valid, 0.0)
    transition = load_where_held(transition_ptr + sources * C + labels, (sources < C) & valid, float("-inf"))
    start = load_where_held(start_ptr + labels, valid, float("-inf"))
    cum = tl.zeros(labels.shape, tl.float64)
    first_start_score = boundary_row(start_scores_ptr, 0, labels, C, T, START_SCORES, True)
    v0 = start + enter_factor(cum, first_start_score)
    ring = (tl.where(slots == 0, v0, float("-inf")),)
    newest = (v0,)
    alpha = (tl.full(labels.shape, float("-inf"), tl.float32),)
    older_best = alpha
    older_from = (tl.zeros(labels.shape, tl.int32),)
    for _ in tl.static_range(1, KBEST):
        ring = ring + (tl.full(ring[0].shape, float("-inf"), tl.float32),)
        newest = newest + (alpha[0],)
        alpha = alpha + (alpha[0],)
        older_best = older_best + (alpha[0],)
        older_from = older_from + (older_from[0],)
    scale = tl.zeros(labels.shape, tl.float64)  # the same in every entry
    # NaN once a boundary score read was NaN (start_scores[0] here)
    seen = tl.where(first_start_score != first_start_score, first_start_score, 0.0)
    next_scores, next_end_score, next_start_score = position_rows(
        scores_ptr, start_scores_ptr, end_scores_ptr, 0, labels, C, T, START_SCORES, END_SCORES, True)
    for e in range(1, length + 1):
        scores, end_score, start_score = next_scores, next_end_score, next_start_score
        next_scores, next_end_score, next_start_score = position_rows(
            scores_ptr, start_scores_ptr, end_scores_ptr, e, labels, C, T, START_SCORES, END_SCORES, True)
        next_longer = load_where_held(longer + (e & (KP - 1)) * CP, valid, 0.0)  # for position e + 1
        cum, leave, enter = step_factors(cum, scores, end_score, start_score, mean)  # cum[e], leave[e-1], enter[e]
        if START_SCORES or END_SCORES:
            seen = boundary_nans(seen, start_score, end_score, e, length)

        # alpha[e]: the segments from the newest start (d = 1), merged into the best of the older ones
        # (older_best, popped in the previous step)
        shortest_segments = ()
        for j in tl.static_range(KBEST):
            shortest_segments = shortest_segments + (newest[j] + shortest,)
        alpha, alpha_from = merge_two_sorted(shortest_segments, older_best, older_from, KBEST)
        arrived = ()
        for j in tl.static_range(KBEST):
            arrived = arrived + (alpha[j] + leave,)
        by_source = by_previous_label(arrived, labels, sources, copy, exchange_ptr + (e & 1) * KBEST * CP, CP, G,
                                      True)
        best_by_source = by_source[0]
        # the best alpha over all labels, from the copy every warp now holds (no exchange between warps)
        r = list_max(best_by_source, 0, 2, WARP_LISTS)
        r = tl.where(r == float("-inf"), 0.0, r)
        older = ()
        for j in tl.static_range(KBEST):
            older = older + (ring[j] - r,)
        # u[e], and the starts before e at position e + 1 (everything alpha[e + 1] needs but v[e])
        u, u_from, best_of_older, from_older = top_k_of_two_sets(
            by_source, transition, sources, CP, older, next_longer, (e - slots) & (KP - 1), KP, KK, KBEST,
            0, 2, WARP_LISTS)
        row = pointer_rows + e * C * KBEST
        new_ring = ()
        new_alpha = ()
        new_newest = ()
        for j in tl.static_range(KBEST):
            store_where_held(duration_from_ptr + row + j, alpha_from[j].to(duration_from_ptr.dtype.element_ty), stores)
            store_where_held(source_from_ptr + row + j, u_from[j].to(source_from_ptr.dtype.element_ty), stores)
            new_alpha = new_alpha + (alpha[j] + leave - r,)
            new_newest = new_newest + (u[j] - r + enter,)
            new_ring = new_ring + (tl.where(slots == (e & (KP - 1)), new_newest[j], older[j]),)
        older_best = ()
        older_from = ()
        for j in tl.static_range(KBEST):
            older_best = older_best + (tl.broadcast_to(best_of_older[j], labels.shape),)
            older_from = older_from + (tl.broadcast_to(from_older[j], labels.shape),)
        alpha = new_alpha
        ring = new_ring
        newest = new_newest
        scale += r.to(tl.float64)

    end = load_where_held(end_ptr + labels, valid, float("-inf"))
    closing = ()
    for j in tl.static_range(KBEST):
        closing = closing + (alpha[j] + end,)
    best, final = top_k_of_sorted_lists(closing, 0.0, labels, KK, CP, KBEST, 1, 3, False)
    nan = potential_nan_mark(cum, seen)
    for t in tl.static_range(KBEST):
        first = (labels == 0) & (copy == 0)
        store_where_held(best_ptr + t * B + b + labels * 0, (scale + best[t].to(tl.float64)).to(tl.float32) + nan,
                         first)
        store_where_held(final_ptr + t * B + b + labels * 0, final[t], first)


@triton.jit
def kbest_traceback_kernel(duration_from_ptr, source_from_ptr, scores_ptr, final_ptr, duration_ptr, transition_ptr,
                           start_ptr, end_ptr, lengths_ptr, labels_ptr, starts_ptr, B, T, K, C,
                           KP: tl.constexpr, KK: tl.constexpr, KBEST: tl.constexpr, SMALL_BLOCK: tl.constexpr):
    """Program `q * B + b` writes the rank-`q` segmentation of sequence `b`
    into `labels (KBEST, B, T)` int64 and `starts (KBEST, B, T)` int8 over
    `[0, L)` (the caller fills them with -1 / 0, which a missing entry, of
    score `-inf`, keeps, and so does a NaN score). The score becomes NaN
    first if a small factor is (:func:`~.common.small_factors_nan`)."""
    chain = tl.program_id(0)
    b = chain % B
    score = tl.load(scores_ptr + chain) + small_factors_nan(duration_ptr, transition_ptr, start_ptr, end_ptr, K, C,
                                                            SMALL_BLOCK)
    tl.store(scores_ptr + chain, score, mask=score != score)
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


#: The (list, label) pairs of a position's two top-k stages, `(KP + CP) CP`, one warp takes at most
#: (:func:`kbest_num_warps`).
PAIRS_PER_WARP = 640
#: The list entries (ring and previous labels, all ranks) one thread holds at most, where more warps bring
#: it down (:func:`kbest_num_warps`).
ENTRIES_PER_THREAD = 160


#: Up to this many labels (padded), the sweep takes one warp a label (:func:`kbest_num_warps`).
WARP_A_LABEL = 8


def kbest_tiling(KP: int, CP: int, num_warps: int) -> tuple[int, int]:
    """`(G, S)` of the sweep's tiles for `num_warps`: those of
    :func:`~.common.sweep_tiling`, except where each warp holds one label
    (`G = CP`): then its 32 lanes all hold that label's lists (`S = 32`,
    slots and previous labels repeated where fewer,
    :func:`~.common.sweep_tile_indices`), and a pop's maximum over the lanes
    is one `REDUX` (:func:`list_max`)."""
    G, S = sweep_tiling(KP, CP, num_warps)
    return (G, 32) if G == CP else (G, S)


def crowds_processors(sequences: int, device: torch.device | str) -> bool:
    """Whether the sweep's `sequences` (one program each) are at least as
    many as the CUDA device's multiprocessors (never under the interpreter)."""
    device = torch.device(device)
    return device.type == "cuda" and sequences >= torch.cuda.get_device_properties(device).multi_processor_count


def kbest_num_warps(KP: int, CP: int, k: int, crowded: bool = False) -> int:
    """Warps (label groups, :func:`kbest_tiling`) for the sweep; `crowded`:
    at least as many sequences as the GPU has multiprocessors.

    Up to :data:`WARP_A_LABEL` labels and not crowded, one a label, so that
    a pop's maximum is one `REDUX`, not three shuffle rounds of a few lanes
    (where sequences share multiprocessors, the extra warps cost more than
    they save: at (512, 1000, 8, 3) the sweep and traceback took 2.24 ms on
    4 warps, a warp a label, against 2.08 on 2). On an H200, the public
    `topk(5)` (scratch A/B, against the tiling below, same outputs bit for
    bit): at (1, 10^5, 64, 8) 147.6 ms against 175.0, at (1, 10^4, 16, 4)
    11.0 against 20.1, at (2, 3000, 40, 7) 5.18 against 6.08, at (64, 500,
    8, 3) 1.14 against 1.16; `topk(16)` at (1, 10^5, 64, 8) 729 against
    819 ms. With more labels a warp a label was slower: at (16, 2000, 16,
    12) 4.61 against 4.13 ms, at (4, 1000, 32, 24) 3.50 against 2.69.

    Else at least two, and the fewest that give each warp at most :data:`PAIRS_PER_WARP`
    (list, label) pairs a position and each thread at most
    :data:`ENTRIES_PER_THREAD` list entries (up to 16 warps, and while more
    warps still bring that down). Fewer warps leave each thread more lists
    in registers, where a pop's maximum costs a few instructions, not a
    shuffle; past about 640 pairs a warp the in-thread chains win back.

    On an H200, the public `topk(5)` of the shifted, pipelined sweep
    (docs/performance.md): at (4, 1000, 32, 24) 2.62 ms at 4 warps, 3.04 at
    8, 3.59 at 16, 3.63 at 2; at (1, 10^5, 64, 8) 176 at 2, 214 at 4, 218
    at 1; at (16, 2000, 16, 12) 3.98 at 2, 4.35 at 1, 4.45 at 4; at (4,
    10^4, 100, 24) 39.4 at 8, 46.0 at 16, 58.6 at 4; at (8, 1000, 8, 3)
    1.63 at 2, 1.81 at 1, 1.91 at 4; at (2, 2000, 16, 64) 7.21 at 8, 8.40
    at 16, 8.63 at 4. The entries' bound matters for large `k` only (no
    choice at k = 5 reaches it); the sweep and traceback: at (4, 1000, 32,
    24) with k = 10 5.37 ms at 4 warps (160 entries a thread), 6.13 at 8,
    6.62 at 16, with k = 16 11.3 at 8 (128 entries), 15.5 at 16; at (16,
    2000, 16, 12) with k = 16 14.3 at 2 (128 entries), 13.7 at 4, 16.9 at
    8."""
    def entries(warps: int) -> int:
        S = sweep_tiling(KP, CP, warps)[1]
        return (KP // S + CP // S) * k

    if CP <= WARP_A_LABEL and not crowded:
        return CP
    pairs = (KP + CP) * CP
    warps = min(2, CP)
    while warps < min(16, CP):
        crowded = entries(warps) > ENTRIES_PER_THREAD and entries(2 * warps) < entries(warps)
        if pairs <= PAIRS_PER_WARP * warps and not crowded:
            break
        warps *= 2
    return warps


def kbest_decode(factors, k: int, num_warps: int | None = None):
    """The k best segmentations of float32 :class:`Factors`: `(scores (k, B)
    float32, labels (k, B, T) int64, starts (k, B, T) bool)`, best first;
    missing entries (fewer than k segmentations) have score `-inf`, labels
    -1 and no starts. `num_warps` of the sweep: :func:`kbest_num_warps` by
    default."""
    B, T, K, C = sizes(factors)
    KP, CP, KK = pad(K), pad(C), pad(k)
    ring = duration_ring(factors)  # (first: it supplies the factors' mean)
    inputs, flags = position_inputs(factors)
    device = inputs[0].device
    keys = backpointer_dtype(max(KP, CP) * KK)
    duration_from = torch.empty((B, T + 1, C, k), dtype=keys, device=device)
    source_from = torch.empty((B, T + 1, C, k), dtype=keys, device=device)
    scores = torch.full((k, B), float("-inf"), dtype=torch.float32, device=device)
    final = torch.zeros((k, B), dtype=torch.int32, device=device)
    labels = torch.full((k, B, T), -1, dtype=torch.int64, device=device)
    starts = torch.zeros((k, B, T), dtype=torch.int8, device=device)
    if B == 0:
        return scores, labels, starts.bool()
    G, S = kbest_tiling(KP, CP, num_warps or kbest_num_warps(KP, CP, k, crowds_processors(B, device)))
    exchange = torch.empty((B, 2, k, CP), dtype=torch.float32, device=device)
    small_tensors, block = small_factors(factors)  # (duration, transition, start, end)
    kbest_sweep_kernel[(B,)](
        *inputs[:4], ring, *small_tensors[1:], factors.lengths, duration_from, source_from, scores, final,
        exchange, B, T, C, *inputs[4:], KP=KP, CP=CP, KK=KK, KBEST=k, G=G, S=S, num_warps=G,
        **flags)
    kbest_traceback_kernel[(k * B,)](duration_from, source_from, scores, final, *small_tensors, factors.lengths,
                                     labels, starts, B, T, K, C, KP=KP, KK=KK, KBEST=k, SMALL_BLOCK=block,
                                     num_warps=1)
    return scores, labels, starts.bool()
