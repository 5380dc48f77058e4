"""What every kernel shares: the reductions, tile sizes and the inputs.

The kernels evaluate segment log-potentials on the fly from the float32
:class:`~semiring_semicrf.factors.Factors`
(`w(s, d, c) = enter[s, c] + duration[d-1, c] + leave[s+d-1, c]`), so the
model is exactly the one every other backend runs. They compute in float32;
`K` and `C` are padded to powers of two inside (`KP`, `CP`) and masked.

Exponentials and logarithms are the hardware's approximate base-2 ones
(`ex2.approx.ftz`, `lg2.approx.ftz`: relative error ~1e-7, results below
1e-38 flushed to zero); under Triton's interpreter (CPU tests) numpy's.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
#: True when the kernels are built for Triton's interpreter (``TRITON_INTERPRET=1``
#: when this package is first imported): they then run on CPU tensors, slowly, for tests.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
#: Inline PTX is for the GPU only; the interpreter takes Triton's own exp2/log2.
HARDWARE_MATH: tl.constexpr = tl.constexpr(not INTERPRETED)


@triton.jit
def fast_exp2(x):
    """`2 ** x`, one MUFU.EX2 instruction (denormal results flushed to zero)."""
    if HARDWARE_MATH:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def store_where_held(ptr, value, mask):
    """`tl.store(ptr, value, mask=mask)` of 16-, 32- or 64-bit values by
    the threads that hold them. Triton gives a store the layout that
    coalesces its addresses and first moves the values there, through
    shared memory and barriers (and that layout can spread back into the
    computation that makes them); this one leaves them in place: each thread
    stores its own elements (an element held by several threads is stored
    by each, with the same value). For small scattered stores of a sweep,
    where the move costs more than the stores."""
    if HARDWARE_MATH:
        address = ptr.to(tl.int64, bitcast=True)
        if value.dtype.primitive_bitwidth == 16:
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.b16 [$1], $2; mov.b32 $0, 0; }",
                "=r,l,h,r", [address, value.to(tl.int16, bitcast=True), mask.to(tl.int32)], dtype=tl.int32,
                is_pure=False, pack=1)
        elif value.dtype.primitive_bitwidth == 64:
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.b64 [$1], $2; mov.b32 $0, 0; }",
                "=r,l,l,r", [address, value.to(tl.int64, bitcast=True), mask.to(tl.int32)], dtype=tl.int32,
                is_pure=False, pack=1)
        else:
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.b32 [$1], $2; mov.b32 $0, 0; }",
                "=r,l,r,r", [address, value.to(tl.int32, bitcast=True), mask.to(tl.int32)], dtype=tl.int32,
                is_pure=False, pack=1)
    else:
        tl.store(ptr, value, mask=mask)


@triton.jit
def load_where_held(ptr, mask, other):
    """`tl.load(ptr, mask=mask, other=other)` of float32 or float64 values
    by the threads that use them. Triton gives a load the layout that
    coalesces its addresses and moves the values to the layout of their use,
    through shared memory and barriers (or lets the load's layout spread to
    the computation that reads them); here each thread loads its own
    elements (an element held by several threads is loaded by each). For
    a sweep's small tiles, read from L1, where the move costs more than
    uncoalesced loads."""
    if HARDWARE_MATH:
        address = ptr.to(tl.int64, bitcast=True)
        if ptr.dtype.element_ty == tl.float64:
            return tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $2, 0; mov.b64 $0, $3; @p ld.global.b64 $0, [$1]; }", "=l,l,r,l",
                [address, mask.to(tl.int32), (other + address * 0).to(tl.float64).to(tl.int64, bitcast=True)],
                dtype=tl.int64, is_pure=True, pack=1).to(tl.float64, bitcast=True)
        else:
            return tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.b32 p, $2, 0; mov.b32 $0, $3; @p ld.global.b32 $0, [$1]; }", "=r,l,r,r",
                [address, mask.to(tl.int32), (other + address * 0).to(tl.float32).to(tl.int32, bitcast=True)],
                dtype=tl.int32, is_pure=True, pack=1).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptr, mask=mask, other=other)


@triton.jit
def load_tile(ptr, mask, other, HELD: tl.constexpr):
    """`tl.load(ptr, mask=mask, other=other)`, or with `HELD` by
    :func:`load_where_held`: for the helpers that kernels of either kind of
    tile share."""
    if HELD:
        return load_where_held(ptr, mask, other)
    else:
        return tl.load(ptr, mask=mask, other=other)


@triton.jit
def store_tile(ptr, value, mask, HELD: tl.constexpr):
    """:func:`load_tile`'s store: `tl.store`, or with `HELD`
    :func:`store_where_held`."""
    if HELD:
        store_where_held(ptr, value, mask)
    else:
        tl.store(ptr, value, mask=mask)


@triton.jit
def sweep_tile_indices(KP: tl.constexpr, CP: tl.constexpr, G: tl.constexpr, S: tl.constexpr):
    """The indices of the 4-d tiles `(lists / S, G, S, CP / G)` of
    :func:`sweep_tiling`: `(copy, labels, slots, sources)`. `copy` and
    `labels` are `(1, G, S, CP / G)`: the lane `s` along the lists (a label
    vector holds the same value in each) and the label `g (CP / G) + l`;
    `slots` `(KP / S, G, S, CP / G)` the ring slot and `sources` `(CP / S, G,
    S, CP / G)` the previous label, both `x S + s` (the order
    :func:`by_previous_label` relies on). Where `S` exceeds `KP` (or `CP`),
    the tile has one row and lane `s` repeats slot `s mod KP` (label `s mod
    CP`): the k-best sweep's whole-warp lists (:func:`~.kbest.kbest_tiling`);
    a maximum, a top-k and a ring update are the same over the copies."""
    L: tl.constexpr = CP // G
    copy = tl.arange(0, S)[None, None, :, None] + tl.zeros((1, G, S, L), tl.int32)
    labels = tl.arange(0, G)[None, :, None, None] * L + tl.arange(0, L)[None, None, None, :] + copy * 0
    slots = (tl.arange(0, max(1, KP // S))[:, None, None, None] * S + copy) & (KP - 1)
    sources = (tl.arange(0, max(1, CP // S))[:, None, None, None] * S + copy) & (CP - 1)
    return copy, labels, slots, sources


@triton.jit
def reduce_max(x, A: tl.constexpr, B: tl.constexpr):
    """The maximum over axes `A` and `B` of `x`, both kept (as size 1):
    `A` first (the axis a thread holds in registers in the sweep's tiles,
    so that `B`'s shuffles move one value, not one per register)."""
    return tl.max(tl.max(x, axis=A, keep_dims=True), axis=B, keep_dims=True)


@triton.jit
def reduce_min(x, A: tl.constexpr, B: tl.constexpr):
    """:func:`reduce_max`'s minimum."""
    return tl.min(tl.min(x, axis=A, keep_dims=True), axis=B, keep_dims=True)


@triton.jit
def reduce_sum(x, A: tl.constexpr, B: tl.constexpr):
    """:func:`reduce_max`'s sum. An axis `A` of one element is not summed:
    Triton moved the outside flow's tile to another layout for that sum
    (more barriers a step at (64, 8))."""
    if x.shape[A] > 1:
        x = tl.sum(x, axis=A, keep_dims=True)
    return tl.sum(x, axis=B, keep_dims=True)


@triton.jit
def by_previous_label(values, labels, sources, copy, exchange, CP: tl.constexpr, G: tl.constexpr,
                      SHUFFLE: tl.constexpr):
    """Label vectors of a sweep's 4-d tiles (:func:`sweep_tiling`), along the
    lists' axes: `values` a tuple of `(1, G, S, L)` vectors (the same in
    each `s`); returns the tuple of tiles whose entry `(x, g, s, l)` is the
    value of label `x S + s`.

    With `SHUFFLE`, one warp and its 32 lanes filled (`S CP >= 32`): a
    gather along the labels' axis, which Triton makes warp shuffles (one a
    register) wherever its layouts put the labels. (An inline `shfl.sync`
    that took label `c` from lane `c` read the wrong lanes in the k-best
    sweep, whose layouts Triton chose otherwise: its one-warp lists were
    wrong on the GPU. With fewer lanes filled, Triton gives the gather a
    layout that repeats the labels over the idle lanes and holds twice the
    lists a thread.) Else through `exchange` (`len(values) *
    CP` float32 of scratch, which a step still reading it must not share:
    double buffer it) and one barrier: an L1 round trip, which is what
    several warps need and, on an H200, was also faster for the one-warp
    sweeps that store tables each step (the Log forward with tables at (1,
    10^5, 64, 8): 42.6 ms against 45.2 with shuffles; without tables 38.4
    against 55.9). Where the lanes are not filled, the scratch costs the
    forward without tables 5-13% against the inline shuffle it replaced
    (docs/performance.md, "One warp's exchange")."""
    if SHUFFLE and G == 1 and sources.shape[2] * CP >= 32:
        out = ()
        for j in tl.static_range(len(values)):
            out = out + (tl.gather(tl.broadcast_to(values[j], sources.shape), sources, 3),)
        return out
    else:
        for j in tl.static_range(len(values)):
            store_where_held(exchange + j * CP + labels, values[j], copy == 0)
        tl.debug_barrier()
        out = ()
        for j in tl.static_range(len(values)):
            out = out + (load_where_held(exchange + j * CP + sources, sources < CP, 0.0),)
        return out


@triton.jit
def boundary_nans(seen, start_score, end_score, e, length):
    """`seen` (a label vector) with NaN where the boundary scores a sweep's
    step at position `e` reads are NaN: `end_scores[e-1]`, and
    `start_scores[e]` before the sequence's `length` (what
    :func:`potential_nan_mark` takes)."""
    start_score = tl.where(e < length, start_score, 0.0)
    seen = tl.where(end_score != end_score, end_score, seen)
    return tl.where(start_score != start_score, start_score, seen)


@triton.jit
def nan_mark(parts):
    """0.0, or NaN if one of the sweep tiles in `parts` (a tuple of label
    vectors and `(lists / S, G, S, CP / G)` tiles, float32 or float64)
    holds a NaN, as a float32 scalar. A sum over the NaN entries alone, so
    `-inf` (a forbidden move) does not count; one reduction across warps."""
    total = tl.sum(tl.where(parts[0] != parts[0], float("nan"), 0.0).to(tl.float32), axis=0, keep_dims=True)
    for j in tl.static_range(1, len(parts)):
        total += tl.sum(tl.where(parts[j] != parts[j], float("nan"), 0.0).to(tl.float32), axis=0, keep_dims=True)
    return tl.sum(total)


@triton.jit
def potential_nan_mark(cum, seen):
    """What the Max and k-best sweeps add to a sequence's scores: NaN if a
    potential it read is NaN, else 0.0 (:func:`nan_mark`). Their maxima
    skip NaN (`tl.maximum`'s default) where the reference rung's propagate
    it, so a NaN potential would otherwise give a finite, wrong score.
    `cum`, the prefix sum, keeps a NaN of the scores before the length to
    the end; `seen` has the boundary scores (:func:`boundary_nans`, and
    `start_scores[0]` before the loop). A NaN in `duration`, `transition`,
    `start` or `end` is the tracebacks' to mark (:func:`small_factors_nan`).
    With these two tiles, which the loop carries anyway, the loops compile
    to the instructions they had without a mark (sm_90, Triton 3.6, without
    boundary scores). A mark that also read the small factors' tiles and
    `v[0]` after the loop made ptxas schedule the loop otherwise: on an
    H200 the Viterbi at (1, 10^5, 64, 8) took 58.3 ms, against 51.4 without
    a mark and 51.1 with this one; any other read after the loop changed
    the schedule too."""
    return nan_mark((cum, seen))


@triton.jit
def nan_of(ptr, n, BLOCK: tl.constexpr):
    """0.0, or NaN if one of the `n` float32 values at `ptr` is NaN."""
    offsets = tl.arange(0, BLOCK)
    total = tl.zeros((BLOCK,), tl.float32)
    for first in range(0, n, BLOCK):
        x = tl.load(ptr + first + offsets, mask=first + offsets < n, other=0.0)
        total += tl.where(x != x, x, 0.0)
    return tl.sum(total)


@triton.jit
def small_factors_nan(duration_ptr, transition_ptr, start_ptr, end_ptr, K, C, BLOCK: tl.constexpr):
    """0.0, or NaN if :func:`small_factors` (`duration (K, C)`, `transition
    (C, C)`, `start`, `end`) hold a NaN: what the Max tracebacks add to
    their scores, for :func:`potential_nan_mark`."""
    return (nan_of(duration_ptr, K * C, BLOCK) + nan_of(transition_ptr, C * C, BLOCK) + nan_of(start_ptr, C, BLOCK)
            + nan_of(end_ptr, C, BLOCK))


def small_factors(factors) -> tuple:
    """`(duration (K, C), transition (C, C), start (C,), end (C,))` float32,
    as the kernels read them (:func:`small`), and the block of
    :func:`small_factors_nan`."""
    K, C = factors.potentials.K, factors.potentials.C
    return (small(factors.potentials.duration.to(torch.float32)), small(factors.transition), small(factors.start),
            small(factors.end)), min(1024, triton.next_power_of_2(max(K, C) * C))


@triton.jit
def label_sums_of_lists(x, labels, sources, exchange, CP: tl.constexpr, G: tl.constexpr):
    """The sums over the labels of a sweep tile indexed `(list, label)`
    (:func:`sweep_tiling`, `sources` its list indices), as a label vector
    (the inverse move of :func:`by_previous_label`): entry `c` of the result
    is `sum_l x[c, l]`. Each warp sums its own labels in registers and
    stores its partial sums by list to `exchange` (`G CP` float32 of scratch
    that a step still reading it must not share: double buffer it); after
    one barrier each label's threads add the `G` partial sums, in a fixed
    order."""
    L: tl.constexpr = CP // G
    partial = tl.broadcast_to(tl.sum(x, axis=3, keep_dims=True), sources.shape)
    store_where_held(exchange + (labels // L) * CP + sources, partial, (labels % L) == 0)
    tl.debug_barrier()
    total = load_where_held(exchange + labels, labels < CP, 0.0)
    for g in tl.static_range(1, G):
        total += load_where_held(exchange + g * CP + labels, labels < CP, 0.0)
    return total


@triton.jit
def add_pairs(a, b, x, y):
    """Two sums in one `tl.reduce` (one exchange between warps for both)."""
    return a + x, b + y


@triton.jit
def add_quads(a, b, c, d, x, y, z, w):
    """Four sums in one `tl.reduce`."""
    return a + x, b + y, c + z, d + w


@triton.jit
def label_square(ptr, C, slots, labels, valid, other, KP: tl.constexpr, CP: tl.constexpr):
    """The `(C, C)` float32 table at `ptr` as a `(CP, CP)` tile (`other`
    past `C`). With more ring slots than labels it is loaded as a `(KP, CP)`
    tile of `KP / CP` copies and reduced over the copies, so that it takes
    the ring tiles' layout: a `C x C` step's reductions over either axis
    then stay inside one warp (a `(CP, CP)` load gets a layout that spreads
    its rows over warps)."""
    if KP > CP:
        rows = slots[:, None] % CP
        copies = tl.load(ptr + rows * C + labels[None, :], mask=(rows < C) & valid[None, :], other=other)
        return tl.max(tl.reshape(copies, (KP // CP, CP, CP)), axis=0)
    else:
        return tl.load(ptr + labels[:, None] * C + labels[None, :], mask=valid[:, None] & valid[None, :], other=other)


@triton.jit
def fast_log2(x):
    """`log2(x)`, one MUFU.LG2 instruction."""
    if HARDWARE_MATH:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def row_mask(labels, C, row, rows):
    """Mask of a row of `(rows, C)` at index `row`: `labels < C` when
    `0 <= row < rows`, else all False (a tensor mask also where `row` and
    `rows` are plain integers, as under the interpreter)."""
    row = labels * 0 + row
    return (labels < C) & (row >= 0) & (row < rows)


@triton.jit
def load_row(ptr, row, labels, C, rows, HELD: tl.constexpr = False):
    """Row `row` of a `(rows, C)` float32 table as a `(CP,)` vector (or any
    tile of `labels`), 0 outside `[0, rows)` and past `C`; `HELD`: by
    :func:`load_where_held`."""
    return load_tile(ptr + row * C + labels, row_mask(labels, C, row, rows), 0.0, HELD)


@triton.jit
def boundary_row(ptr, row, labels, C, rows, PRESENT: tl.constexpr, HELD: tl.constexpr = False):
    """Row `row` of the optional `start_scores`/`end_scores` (zeros when the
    potentials have none)."""
    if PRESENT:
        return load_row(ptr, row, labels, C, rows, HELD)
    else:
        return (labels * 0).to(tl.float32)


# The zero-centred prefix sums of factors.py, evaluated inside the sweeps from
# the scores: `cum[t+1] = cum[t] + (scores[t] - mean)`, the increment in the
# working dtype (float32) as `Factors.centred` forms it, the sum carried in
# float64 and rounded to float32 where used (as PyTorch's CPU cumsum does, so
# the values are the same bits). `enter[s] = start_scores[s] - cum[s]`,
# `leave[e-1] = cum[e] + end_scores[e-1]`.
@triton.jit
def advance_prefix_sum(cum, scores, mean):
    """`cum[t+1]` (float64) from `cum[t]` and the scores of position `t`."""
    return cum + (scores - mean).to(tl.float64)


@triton.jit
def retreat_prefix_sum(cum, scores, mean):
    """`cum[t]` (float64) from `cum[t+1]` and the scores of position `t`
    (the float64 sums are exact for float32 increments of similar
    magnitude, so this retraces :func:`advance_prefix_sum`)."""
    return cum - (scores - mean).to(tl.float64)


@triton.jit
def enter_factor(cum, start_score):
    """`enter[s]` from `cum[s]` (float64) and `start_scores[s]`."""
    return start_score - cum.to(tl.float32)


@triton.jit
def leave_factor(cum, end_score):
    """`leave[e-1]` from `cum[e]` (float64) and `end_scores[e-1]`."""
    return cum.to(tl.float32) + end_score


@triton.jit
def sequence_inputs(scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr, b, C, scores_stride, start_stride,
                    end_stride, labels, HELD: tl.constexpr = False):
    """Sequence `b`'s rows of the position inputs (:func:`position_inputs`)
    and its mean, in float32 as `Factors.centred` subtracts it (`HELD`: by
    :func:`load_where_held`)."""
    mean = load_tile(mean_ptr + b * C + labels, labels < C, 0.0, HELD).to(tl.float32)
    return scores_ptr + b * scores_stride, start_scores_ptr + b * start_stride, end_scores_ptr + b * end_stride, mean


@triton.jit
def position_rows(scores_ptr, start_scores_ptr, end_scores_ptr, e, labels, C, T,
                  START_SCORES: tl.constexpr, END_SCORES: tl.constexpr, HELD: tl.constexpr = False):
    """What the left-to-right step after position `e` reads (loaded one
    position ahead): `scores[e]`, `end_scores[e]`, `start_scores[e + 1]`."""
    return (load_row(scores_ptr, e, labels, C, T, HELD),
            boundary_row(end_scores_ptr, e, labels, C, T, END_SCORES, HELD),
            boundary_row(start_scores_ptr, e + 1, labels, C, T, START_SCORES, HELD))


@triton.jit
def step_factors(cum, scores, end_score, start_score, mean):
    """At position `e`, from `cum[e-1]` and :func:`position_rows` of `e-1`:
    `(cum[e], leave[e-1], enter[e])`."""
    cum = advance_prefix_sum(cum, scores, mean)
    return cum, leave_factor(cum, end_score), enter_factor(cum, start_score)


def pad(n: int) -> int:
    """The power of two >= n that a tile axis of size n is padded to."""
    return triton.next_power_of_2(max(int(n), 1))


def sweep_num_warps(kp: int, cp: int) -> int:
    """Warps (label groups of :func:`sweep_tiling`) for the forward sweep
    whose ring tile is `(KP, CP)`. Measured on an H200 (the 4-d tiles,
    `benchmarks/gpu_warps.py`): one warp up to 16 labels and 2048 elements,
    whose sweep then exchanges nothing through memory (at (16, 16), T =
    2000, B = 16: the forward 0.65 ms against 0.68 at two warps and 0.79 at
    four, with tables 0.80 against 0.86 at four, the Max sweep 0.54 against
    0.62; at (64, 8), T = 10^5: 38.4 ms against 40.9 at two); four with 32
    labels, whose `C x C` tile would hold 32 values a thread on one warp (at
    (32, 32), T = 1000, B = 4: 0.55 ms against 0.82 at one and 0.64 at two
    or eight; the Max sweep 0.44 against 0.77); larger tiles spread their
    exponentials over more warps; from `CP = 64` on, enough warps to hold
    the `C x C` tiles (:func:`register_warps`)."""
    size = kp * cp
    if size <= 2048:
        warps = 1 if cp <= 16 else 4
    elif size <= 4096:
        warps = 4
    else:
        warps = 8
    return max(warps, register_warps(2 * cp * cp + 3 * kp * cp, cp))


def sweep_tiling(KP: int, CP: int, num_warps: int) -> tuple[int, int]:
    """`(G, S)` of the 4-d tiles `(lists / S, G, S, labels / G)` of the
    forward and k-best sweeps and the outside flow for `num_warps`: `G`
    label groups (one per warp, at most `CP`), `S` lists (ring slots or
    previous labels) across a warp's threads beside its `CP / G` labels (the
    rest of the lists in each thread's registers). Triton spreads a tile's
    fastest axes over a warp's lanes and the next over warps, so a sum or
    top-k over the lists stays inside one warp (shuffles, no barrier) when
    `S (CP / G)` fills the 32 lanes; with fewer (more warps than `CP S /
    32`), Triton puts the lists on several warps too."""
    G = max(1, min(num_warps, CP))
    S = max(1, min(32 // max(1, CP // G), KP, CP))
    return G, S


def flow_num_warps(kp: int, cp: int) -> int:
    """Warps (label groups of :func:`sweep_tiling`) for the outside flow on
    its 4-d tiles. Measured on an H200 (Triton 3.6, the flow alone): four
    up to 16 labels (at (64, 8), T = 10^5: 64.4 ms against 102.8 at two,
    107.9 at eight and 132.2 at one; at (16, 16), B = 16, T = 2000: 1.46 ms
    against 1.53 at two and 1.57 at eight), eight with 32 labels (at (32,
    32), B = 4, T = 1000: 1.25 ms against 1.37 at four), and from `CP = 64`
    on enough warps to hold its `C x C` tiles (:func:`register_warps`, the
    tiles counted with the spills measured: at (32, 128), 16 warps took 6.6
    ms against 23.3 at eight and 13.8 at 32)."""
    return max(4 if cp <= 16 else 8, register_warps(8 * cp * cp + 4 * kp * cp, cp))


#: float32 values per thread (the counted live tiles over the threads) that
#: the wide-C warp counts are chosen for. Not a register budget: on an H200
#: (`python3 -u benchmarks/gpu_bench.py`, num_warps sweep) some spilling to
#: local memory cost less than the synchronization of more warps. With 448,
#: the forward at (K, C) = (32, 128) takes 4 warps (measured best: 4.0 ms
#: against 5.7 at 8, 10.1 at 16) and the flow 8 (14.3 ms against 44.7 at 4,
#: 26.3 at 16); at (16, 256) the forward 16 (26.3 ms; 25.4 at 32, 37.1 at 8)
#: and the flow 16 (61.6 ms; 66.0 at 32, 126 at 8).
VALUES_PER_THREAD = 448


def register_warps(live_values: int, cp: int) -> int:
    """Warps for `live_values` float32 live per step (a sweep's `C x C` and
    ring tiles, counted in the kernels) at :data:`VALUES_PER_THREAD` per
    thread, a power of two up to 32, for `CP >= 64` (below, the choices
    measured on an H100 stand)."""
    if cp < 64:
        return 1
    return min(32, pad(-(-live_values // (VALUES_PER_THREAD * 32))))


# Offsets inside one sequence are 32-bit in the kernels.
_MAX_SEQUENCE_ELEMENTS = 2 ** 31 - 1


def kernel_limits_reason(potentials) -> str | None:
    """None if the kernels compute these potentials exactly (device aside)."""
    if getattr(potentials, "is_explicit", False):
        return "explicit edge potentials have no factorized form"
    if potentials.duration_dependent:
        return "duration-dependent (K, C, C) transitions break the factorized recurrence"
    if potentials.dtype != torch.float32:
        return f"the kernels compute in float32; {potentials.dtype} potentials take the PyTorch path"
    if (potentials.T + 1) * max(potentials.C, potentials.K) > _MAX_SEQUENCE_ELEMENTS:
        return "one sequence exceeds the kernels' 32-bit offsets ((T + 1) * max(C, K) >= 2**31)"
    return None


@triton.jit
def duration_ring_kernel(duration_ptr, scores_ptr, lengths_ptr, mean_ptr, ring_ptr, K, C, scores_stride,
                         KP: tl.constexpr, CP: tl.constexpr, MEAN: tl.constexpr, CENTER: tl.constexpr,
                         ROWS: tl.constexpr):
    """Program `b` writes sequence `b`'s four `(KP, CP)` tables of
    :func:`duration_ring`: the compensated durations `duration[d-1, c] +
    d * mean[b, c]` (float32 product, then sum: launched without FMA
    contraction, the same bits as `Factors.duration`) twice, then twice
    again without `d = 1`.

    With `MEAN` it first computes `mean[b]` `(C,)` float64 and writes it to
    `mean_ptr`: the float32 scores of the positions before `lengths[b]`
    summed in float64, `ROWS` rows at a time, divided by the length (zeros
    without `CENTER`); without `MEAN` it reads it there."""
    b = tl.program_id(0).to(tl.int64)
    slots = tl.arange(0, KP)[:, None]
    labels = tl.arange(0, CP)[None, :]
    if MEAN:
        mean64 = tl.zeros((1, CP), tl.float64)
        if CENTER:
            length = tl.load(lengths_ptr + b)
            rows = tl.arange(0, ROWS)[:, None]
            total = tl.zeros((ROWS, CP), tl.float64)
            for first in range(0, length, ROWS):
                t = first + rows
                total += tl.load(scores_ptr + b * scores_stride + t * C + labels, mask=(t < length) & (labels < C),
                                 other=0.0).to(tl.float64)
            mean64 = tl.sum(total, axis=0, keep_dims=True) / length.to(tl.float64)
        tl.store(mean_ptr + b * C + labels, mean64, mask=labels < C)
        mean = mean64.to(tl.float32)
    else:
        mean = tl.load(mean_ptr + b * C + labels, mask=labels < C, other=0.0).to(tl.float32)
    present = (slots < K) & (labels < C)
    value = tl.load(duration_ptr + slots * C + labels, mask=present, other=0.0) + (slots + 1).to(tl.float32) * mean
    value = tl.where(present, value, float("-inf"))
    longer = tl.where(slots == 0, float("-inf"), value)
    out = ring_ptr + b * 4 * KP * CP + slots * CP + labels
    tl.store(out, value)
    tl.store(out + KP * CP, value)
    tl.store(out + 2 * KP * CP, longer)
    tl.store(out + 3 * KP * CP, longer)


#: Score values the mean's loop of :func:`duration_ring_kernel` sums per step (`ROWS x CP`).
MEAN_BLOCK = 2048
#: The most score values of one sequence (`T x CP`) whose mean :func:`duration_ring` computes in its launch.
#: One program per sequence streams them at about 15 GB/s (2.1 ms at T = 10^6, C = 8 on an H200, where
#: PyTorch's reductions, parallel over positions, take 0.15 ms); below this the launch's GPU time stays
#: under the host's work that precedes the sweep's launch, about 0.1 ms.
MEAN_IN_LAUNCH = 2 ** 18


def duration_ring(factors) -> torch.Tensor:
    """The durations in the order a sweep's ring reads them, `(B, 2, 2 KP, CP)`.

    Two doubled tables whose row `j` holds `Factors.duration[b, j mod KP, c]`
    (`-inf` where `j mod KP >= K` or `c >= C`), so that a sweep reads the
    durations in the ring's rotated order as one contiguous, unmasked window;
    the second table also has `-inf` for `d = 1` (`j mod KP == 0`), the term
    the outside flow keeps apart. Built by one launch from the potentials'
    `duration (K, C)` and the float32 :class:`Factors`' mean (as
    :func:`position_inputs`, the potentials' own tensors are read).

    That launch is also the preparation of every Triton sweep: when the
    factors' mean is not known yet and a sequence is short (at most
    :data:`MEAN_IN_LAUNCH` score values), it computes it from the scores and
    supplies it (:meth:`Factors.supply_mean`), in place of the separate
    masking and reductions of :meth:`Factors.centring_mean` (about 0.2 ms
    of the host's time on an H200, before the first sweep can start)."""
    B, T, K, C = sizes(factors)
    KP, CP = pad(K), pad(C)
    duration = small(factors.potentials.duration.to(torch.float32))
    device = duration.device
    ring = torch.empty((B, 2, 2, KP, CP), dtype=torch.float32, device=device)
    known = factors.has_mean or T * CP > MEAN_IN_LAUNCH
    mean = factors.mean.contiguous() if known else torch.empty((B, C), dtype=torch.float64, device=device)
    if B > 0:
        # (the scores are read only for the mean: else any valid pointer, with no copy made)
        scores = duration if known else rows(factors.potentials.scores.to(torch.float32))
        duration_ring_kernel[(B,)](duration, scores, factors.lengths, mean, ring, K, C, scores.stride(0), KP=KP,
                                   CP=CP, MEAN=not known, CENTER=factors.potentials.center,
                                   ROWS=max(1, MEAN_BLOCK // CP), num_warps=4, enable_fp_fusion=False)
    if not known:
        factors.supply_mean(mean)
    return ring


def position_inputs(factors) -> tuple:
    """What the sweeps read per position instead of prefix-sum tables:
    `(args, flags)`, `args = (scores, start_scores, end_scores, mean,
    scores_stride, start_stride, end_stride)` (absent boundary scores are
    replaced by `scores`, never read) and `flags` the constexprs
    `START_SCORES`, `END_SCORES`. Float32 `(B, T, C)` rows and the float64
    mean `(B, C)` of the :class:`Factors` (its definition of the centring).

    The kernels thus evaluate `enter` and `leave` from the potentials
    themselves: a :class:`Factors` whose `enter`/`leave` were replaced
    (:meth:`Factors.replace`) is not theirs (the torch rung reads those)."""
    p = factors.potentials
    scores = rows(p.scores.to(torch.float32))
    start = None if p.start_scores is None else rows(p.start_scores.to(torch.float32))
    end = None if p.end_scores is None else rows(p.end_scores.to(torch.float32))
    args = (scores, scores if start is None else start, scores if end is None else end,
            factors.mean.contiguous(), scores.stride(0), (scores if start is None else start).stride(0),
            (scores if end is None else end).stride(0))
    return args, {"START_SCORES": start is not None, "END_SCORES": end is not None}


def sizes(factors) -> tuple:
    """`(B, T, K, C)` of the factors a kernel reads."""
    return factors.B, factors.T, factors.K, factors.C


def rows(t: torch.Tensor) -> torch.Tensor:
    """A `(B, T, C)` table whose rows the kernels can read (`C` contiguous
    values per position; any batch stride), detached."""
    t = t.detach()
    return t if t.stride(2) == 1 and t.stride(1) == t.shape[2] else t.contiguous()


def small(t: torch.Tensor) -> torch.Tensor:
    """A small factor (`duration`, `transition`, `start`, `end`) as the
    kernels read it: detached and contiguous."""
    return t.detach().contiguous()
