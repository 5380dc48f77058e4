"""Exact samples on the GPU: forward filtering, backward sampling from the
Log forward's tables, one program per (sample, sequence).

The forward (:func:`~.forward.forward_sweep`) stores `alpha_hat`, `v_hat`
and the float64 scale `N` per position; these hold the weight of every
prefix, so a segmentation is drawn from the right end with the exact
conditionals of :mod:`semiring_semicrf.backends.reference.sample`:

- the last label `c`, `∝ alpha[L, c] + end[c]`;
- the duration `d` of the segment ending at `e` with label `c`,
  `∝ u[e-d, c] + w(e-d, d, c)`, that is `v[e-d, c] + duration[d-1, c]`
  (`leave[e-1, c]` is common to all `d` and dropped; `v[e-d] = v_hat[e-d] +
  N[e-d]`, taken relative to `N[e]`);
- the label `c'` before a segment starting at `s > 0` with label `c`,
  `∝ alpha[s, c'] + transition[c', c]` (one row, one scale: no `N`).

Each draw is a Gumbel-max over at most `KP` or `CP` lanes. The noise is
counter-based: Philox keyed by one 62-bit seed per call (drawn from the
caller's `torch.Generator`), with the counter `(lane, draw, chain, 0)`, so
every uniform of every chain is distinct and the result depends only on the
seed: the same generator state gives the same samples, on any launch
configuration. A chain walks one segment per iteration, two dependent loads
each (the duration's column of `v_hat`, then one row of `alpha_hat`), so `N`
samples of `B` sequences cost the forward plus `N B` parallel walks of
`O(number of segments)` steps.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import INTERPRETED, pad, sizes, small

#: Chains per program under Triton's interpreter (numpy), whose cost is per
#: operation: grouping chains amortizes it. On a GPU each chain has its program.
INTERPRETED_CHAINS = 256
#: Seeds are drawn in [0, 2**62): distinct calls share a key with negligible probability.
SEED_BOUND = 2 ** 62


@triton.jit
def gumbel(seed, draw, chain, lanes):
    """Standard Gumbel noise `-log(-log(U))` for `lanes` (int32, `(n,)`) of
    draw `draw` of chain `chain`: Philox keyed by `seed`, counter
    `(lane, draw, chain, 0)`. A uniform of exactly 0 gives `-inf` (that lane
    cannot win; probability 2**-31)."""
    zero = lanes * 0
    bits, _, _, _ = tl.philox(seed, lanes, zero + draw, zero + chain, zero)
    uniform = tl.uint_to_uniform_float(bits)
    return -tl.log(-tl.log(uniform))


@triton.jit
def sample_kernel(
        duration_ring_ptr, transition_ptr, end_ptr, lengths_ptr,
        alpha_table_ptr, v_table_ptr, scale_ptr, seed_ptr,
        labels_ptr, starts_ptr,
        B, T, K, C, NUM_CHAINS,
        KP: tl.constexpr, CP: tl.constexpr, CHAINS: tl.constexpr):
    """Chain `n * B + b` draws sample `n` of sequence `b` into
    `labels (N, B, T)` int64 (label over each drawn segment) and
    `starts (N, B, T)` int8 (1 at each segment start); the caller fills both
    beforehand (-1 / 0), which is what a sequence without any allowed
    segmentation keeps. Program `i` runs chains `[i CHAINS, (i+1) CHAINS)`
    side by side, one segment each per iteration (on a GPU `CHAINS = 1`:
    one program per chain; the interpreter groups them to amortize its
    per-operation cost). A chain's draws do not depend on the grouping."""
    chains = tl.program_id(0) * CHAINS + tl.arange(0, CHAINS)
    real = chains < NUM_CHAINS
    b = (chains % B).to(tl.int64)
    length = tl.load(lengths_ptr + b, mask=real, other=0).to(tl.int32)
    seed = tl.load(seed_ptr)
    slots = tl.arange(0, KP)[None, :]  # duration slot j: d = j + 1
    labels = tl.arange(0, CP)[None, :]
    valid = labels < C
    table = (b * (T + 1) * C)[:, None]
    scale_row = scale_ptr + b * (T + 1)
    out = labels_ptr + (chains.to(tl.int64) * T)[:, None]
    starts_out = starts_ptr + chains.to(tl.int64) * T

    last = (tl.load(alpha_table_ptr + table + length[:, None] * C + labels, mask=valid & real[:, None],
                    other=float("-inf"))
            + tl.load(end_ptr + labels, mask=valid, other=float("-inf")))
    alive = tl.max(last, axis=1) > float("-inf")
    c = tl.argmax(last + gumbel(seed, 0, chains[:, None], labels), axis=1).to(tl.int32)
    e = tl.where(alive, length, 0)
    draw = tl.max(length, axis=0) * 0 + 1
    while tl.max(e, axis=0) > 0:
        active = e > 0
        # The duration of the segment [e - d, e) labelled c.
        s = e[:, None] - 1 - slots
        possible = active[:, None] & (slots < K) & (s >= 0)
        row = tl.maximum(s, 0)
        column = c[:, None]
        shift = (tl.load(scale_row[:, None] + row, mask=possible, other=0.0)
                 - tl.load(scale_row + e, mask=active, other=0.0)[:, None]).to(tl.float32)
        weight = (tl.load(v_table_ptr + table + row * C + column, mask=possible, other=float("-inf"))
                  + tl.load(duration_ring_ptr + (b[:, None] * 4 * KP + slots) * CP + column, mask=possible, other=0.0)
                  + shift)
        j = tl.argmax(weight + gumbel(seed, draw, chains[:, None], slots), axis=1).to(tl.int32)
        start = e - 1 - j
        tl.store(out + start[:, None] + slots, column.to(tl.int64) + slots * 0,
                 mask=active[:, None] & (slots <= j[:, None]))
        tl.store(starts_out + start, tl.full((CHAINS,), 1, tl.int8), mask=active)
        # The label before it (row 0 of alpha_hat is never read: nothing ends at 0).
        more = active & (start > 0)
        before = (tl.load(alpha_table_ptr + table + tl.maximum(start, 0)[:, None] * C + labels,
                          mask=valid & more[:, None], other=float("-inf"))
                  + tl.load(transition_ptr + labels * C + column, mask=valid, other=float("-inf")))
        previous = tl.argmax(before + gumbel(seed, draw + 1, chains[:, None], labels), axis=1).to(tl.int32)
        c = tl.where(more, previous, c)
        e = tl.where(active, start, e)
        draw += 2


def draw_seed(generator, device) -> torch.Tensor:
    """One seed in `[0, SEED_BOUND)`, `(1,)` int64 on `device`, from
    `generator` (default: torch's generator of that device), which advances."""
    where = generator.device if generator is not None else device
    seed = torch.randint(0, SEED_BOUND, (1,), generator=generator, device=where, dtype=torch.int64)
    return seed.to(device)


def sample_segmentations(factors, duration_ring, alpha_table, v_table, scale, num_samples: int, generator=None):
    """`num_samples` exact samples of every sequence of float32
    :class:`Factors` from the Log forward's tables and duration ring: `(labels (N, B, T)
    int64, starts (N, B, T) bool)`, -1 / False past each length and for a
    sequence without any allowed segmentation."""
    B, T, K, C = sizes(factors)
    device = alpha_table.device
    labels = torch.full((num_samples, B, T), -1, dtype=torch.int64, device=device)
    starts = torch.zeros((num_samples, B, T), dtype=torch.int8, device=device)
    if num_samples * B == 0 or T == 0:
        return labels, starts.bool()
    num_chains = num_samples * B
    chains = min(pad(num_chains), INTERPRETED_CHAINS) if INTERPRETED else 1
    sample_kernel[(triton.cdiv(num_chains, chains),)](
        duration_ring, small(factors.transition), small(factors.end), factors.lengths,
        alpha_table, v_table, scale, draw_seed(generator, device), labels, starts,
        B, T, K, C, num_chains, KP=pad(K), CP=pad(C), CHAINS=chains, num_warps=1)
    return labels, starts.bool()
