"""`Posterior`: the expected counts of one Log forward-backward.

Every backend's `outside` returns one; gradients of `log Z` (see
:mod:`semiring_semicrf.autograd`), marginals and the closed-form entropy are
all read off it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .prefix import cumsum_over_time_


@dataclass
class Posterior:
    """Posterior expected counts of one Log forward-backward, per sequence.

    All are probabilities/expected counts under the model, zero past each length.

    Attributes:
        log_z: `(B,)` log partition.
        segment_start: `(B, T, C)` P(a segment with label c starts at s).
        segment_end: `(B, T, C)` P(a segment with label c ends at e, inclusive,
            i.e. covers e as its last position).
        transition: `(B, C, C)` expected `[c_src, c_dst]` transition counts, or
            `(B, K, C, C)` for duration-dependent transitions.
        duration: `(B, K, C)` expected number of segments of length d, label c.
        first: `(B, C)` P(the first segment has label c).
        last: `(B, C)` P(the last segment has label c).
    """

    log_z: torch.Tensor
    segment_start: torch.Tensor
    segment_end: torch.Tensor
    transition: torch.Tensor
    duration: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor

    FIELDS = ("log_z", "segment_start", "segment_end", "transition", "duration", "first", "last")

    def clone(self) -> Posterior:
        """A copy that owns its tensors."""
        return replace(self, **{name: getattr(self, name).clone() for name in self.FIELDS})

    def label_marginals(self) -> torch.Tensor:
        """`(B, T, C)` P(position t lies in a segment labelled c): the running
        count of open segments, the prefix sum of `start[t] - end[t-1]`.
        Summing the difference (never two separate counts) keeps the running
        value in [0, 1], so float32 stays exact to rounding at any T. Exactly
        0 past each length (:meth:`covered`), where the prefix sum holds its
        rounding residue."""
        delta = self.segment_start.clone()
        delta[:, 1:] -= self.segment_end[:, :-1]
        return cumsum_over_time_(delta).masked_fill_(~self.covered()[..., None], 0.0)

    def covered(self) -> torch.Tensor:
        """`(B, T)` bool: positions at or before the last one where a segment
        ends with a nonzero probability. Since `segment_end` is exactly 0
        past each length and sums to 1 over the labels at its last position,
        these are the positions inside each length (none, for a sequence
        whose segment ends all vanish: one without an allowed segmentation)."""
        largest = torch.linalg.vector_norm(self.segment_end, ord=float("inf"), dim=-1)  # no (B, T, C) temporary
        ends = largest != 0  # (B, T): some segment ends there (NaN counts)
        T = ends.shape[1]
        last = T - 1 - ends.flip(1).to(torch.uint8).argmax(dim=1)  # T - 1 where nothing ends
        return (torch.arange(T, device=ends.device) <= last[:, None]) & ends.any(dim=1, keepdim=True)

    def boundary_marginals(self) -> torch.Tensor:
        """`(B, T)` P(a segment starts at t)."""
        return self.segment_start.sum(dim=-1)
