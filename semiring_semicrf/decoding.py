"""Decoding: the best segmentation (Viterbi) and the k best.

Both are the scan in the Max / KMax(k) semiring with back-pointers (the
reference rung, :mod:`semiring_semicrf.backends.reference.decode`, which also
documents the deterministic tie-breaking), or the Triton Viterbi and k-best
kernels on CUDA, which break exact ties by the same rule. Nothing of size
`T K C` or `T C^2` is allocated; the back-pointers take `O(B T C k)` small
integers, the order of the output itself.
"""
from __future__ import annotations

import torch

from . import backends
from .information import tracks_grad
from .potentials import Potentials, require_potentials
from .segmentation import Segmentation


def viterbi(potentials: Potentials, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best segmentation of each sequence.

    Args:
        potentials: :class:`~semiring_semicrf.SemiMarkovPotentials` or
            :class:`~semiring_semicrf.EdgePotentials`.
        backend: "auto", "triton", "torch" or "reference".

    Returns:
        `(score (B,), labels (B, T) int64, starts (B, T) bool)`: the best
        score (`-inf` if no segmentation is allowed), the label of each
        position (-1 past the length) and the segment starts (False past the
        length); a sequence without any allowed segmentation gets all -1 and
        False.
    """
    require_potentials(potentials)
    return backends.select(backend, potentials, "viterbi").viterbi(potentials.prepare())


def topk(potentials: Potentials, k: int, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k best distinct segmentations of each sequence, best first.

    Returns:
        `(scores (k, B), labels (k, B, T), starts (k, B, T))` as in
        :func:`viterbi`. Where a sequence has fewer than k segmentations, the
        missing entries have score `-inf` and are empty (labels -1, starts
        False). For explicit edges two entries may share their segments and
        differ in the latent first label (as in their partition).
    """
    require_potentials(potentials)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    return backends.select(backend, potentials, "kbest", k=k).kbest(potentials.prepare(), k)


def decoded_scores(potentials: Potentials, scores: torch.Tensor, value: Segmentation) -> torch.Tensor:
    """The scores of decoded segmentations `value` as the queries return
    them: the decoder's own `scores` where those are the segmentations'
    log-potentials already (structured potentials, in their dtype, no
    gradient asked for), else `value.log_potential(potentials)`:
    differentiable through the decoded parts, and for explicit edges the
    first label summed out, as in their partition. The decoder's scores
    equal the log-potentials to rounding; skipping the rescoring saves its
    small operations (about 0.6 ms of an H200's time per top-k)."""
    if potentials.is_explicit or scores.dtype != potentials.dtype or tracks_grad(potentials):
        return value.log_potential(potentials, validate=False)
    return scores
