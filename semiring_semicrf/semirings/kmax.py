"""KMax(k): the k best structure scores (sorted, descending, with repeats
where several structures tie). State dimension: the k entries of a list."""
from __future__ import annotations

import torch

from .base import Semiring, check_dim


class KMaxSemiring(Semiring):
    """Values hold k scores sorted descending; `-inf` pads missing entries.

    `plus` merges two lists and keeps the k largest, `times` forms all
    pairwise sums and keeps the k largest. Ties are kept (a list of the k best
    *structures*, so two structures with one score appear twice). `zero`,
    `one` and `plus` are the defaults; `extract` keeps the list, `(k, ...)`,
    for every k.
    """

    renormalize = True

    def __init__(self, k: int):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"KMaxSemiring: k must be an int >= 1, got {k!r}")
        self.k = k
        self.size = k

    def __repr__(self) -> str:
        return f"KMaxSemiring(k={self.k})"

    def _top(self, x: torch.Tensor) -> torch.Tensor:
        """k largest along dim 0 (sorted descending)."""
        if x.shape[0] < self.k:
            pad = x.new_full((self.k - x.shape[0], *x.shape[1:]), float("-inf"))
            x = torch.cat([x, pad], dim=0)
        return x.topk(self.k, dim=0).values

    def times(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = torch.broadcast_tensors(a, b)
        pairs = a.unsqueeze(1) + b.unsqueeze(0)  # (k, k, ...)
        return self._top(pairs.flatten(0, 1))

    def sum(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        dim = check_dim(dim)
        moved = x.movedim(dim, 1)  # (k, n, ...)
        return self._top(moved.flatten(0, 1))

    def argsum(self, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(sum(x, dim), index)`: the k best entries over `dim` and where
        they come from, both `(k, ...)`: `index = position * k + rank` (the
        rank of the entry in its position's list). Among equal scores the
        smaller `(position, rank)` comes first."""
        dim = check_dim(dim)
        candidates = x.movedim(dim, -1).movedim(0, -1)  # (..., n, k)
        values, index = candidates.flatten(-2).sort(dim=-1, descending=True, stable=True)
        values, index = values[..., :self.k], index[..., :self.k]
        return values.movedim(-1, 0), index.movedim(-1, 0)

    def embed(self, log_potentials: torch.Tensor) -> torch.Tensor:
        first = log_potentials[:1]
        pad = first.new_full((self.k - 1, *first.shape[1:]), float("-inf"))
        return torch.cat([first, pad], dim=0)

    def extract(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def times_potential(self, a: torch.Tensor, log_potentials: torch.Tensor) -> torch.Tensor:
        return a + log_potentials

    def log_mass(self, value: torch.Tensor) -> torch.Tensor:
        return value[:1]
