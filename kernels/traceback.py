"""Viterbi traceback: segments out of the Max sweep's backpointers.

One program per sequence walks back from the best last label at `L`:
the best duration `d` of `alpha[e, c]` gives the segment `[e - d, e)`
labelled `c` (written as one masked block store), then the best source label
of `u[e - d, c]` gives the label of the segment before. Two dependent loads
per segment.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import duration_ring, pad, sizes, small_factors, small_factors_nan
from .forward import forward_sweep


@triton.jit
def traceback_kernel(best_duration_ptr, best_source_ptr, final_ptr, score_ptr, duration_ptr, transition_ptr, start_ptr,
                     end_ptr, lengths_ptr, labels_ptr, starts_ptr, T, K, C, KP: tl.constexpr,
                     SMALL_BLOCK: tl.constexpr):
    """Writes `labels (B, T)` int64 and `starts (B, T)` bool over `[0, L)`
    (the caller fills the rest with -1 / False), except where the score is
    NaN (a NaN potential: no segmentation, as the reference rung gives).
    The score becomes NaN first if a small factor is
    (:func:`~.common.small_factors_nan`)."""
    b = tl.program_id(0)
    score = tl.load(score_ptr + b) + small_factors_nan(duration_ptr, transition_ptr, start_ptr, end_ptr, K, C,
                                                       SMALL_BLOCK)
    tl.store(score_ptr + b, score, mask=score != score)
    e = tl.where(score == score, tl.load(lengths_ptr + b), 0)
    b = b.to(tl.int64)
    table = b * (T + 1) * C
    row = b * T
    c = tl.load(final_ptr + b).to(tl.int32)
    offsets = tl.arange(0, KP)
    while e > 0:
        # Clamps keep the walk in bounds when no path has a finite score.
        d = tl.minimum(tl.load(best_duration_ptr + table + e * C + c).to(tl.int32) + 1, e)
        s = e - d
        tl.store(labels_ptr + row + s + offsets, tl.full((KP,), 0, tl.int64) + c, mask=offsets < d)
        tl.store(starts_ptr + row + s, 1)
        source = tl.load(best_source_ptr + table + s * C + c, mask=s > 0, other=0).to(tl.int32)
        c = tl.minimum(source, C - 1)
        e = s


def viterbi_decode(factors, num_warps: int | None = None):
    """Max sweep + traceback on float32 :class:`Factors`. Returns `(score
    (B,), labels (B, T) int64, starts (B, T) bool)`, -1 / False past each length."""
    B, T, K, C = sizes(factors)
    score, last_label, best_duration, best_source, _, _ = forward_sweep(factors, duration_ring(factors), True,
                                                                     num_warps)
    labels = torch.full((B, T), -1, dtype=torch.int64, device=score.device)
    starts = torch.zeros((B, T), dtype=torch.int8, device=score.device)
    small_tensors, block = small_factors(factors)
    traceback_kernel[(B,)](best_duration, best_source, last_label, score, *small_tensors, factors.lengths, labels,
                           starts, T, K, C, KP=pad(K), SMALL_BLOCK=block, num_warps=1)
    return score, labels, starts.bool()
