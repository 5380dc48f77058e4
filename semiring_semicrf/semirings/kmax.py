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

    def _top(self, lists: torch.Tensor) -> torch.Tensor:
        """The k largest entries of `lists`, `(k, n, ...)`: n lists, each
        sorted descending along dim 0 (values of this semiring). Returns
        `(k, ...)`, sorted descending, ties kept, `-inf` where there are fewer
        than k entries. Eager: `topk` over all `k * n` entries; under
        torch.compile, :func:`_merge_order`, which inductor fuses (it leaves
        topk to aten: a kernel of its own, on the GPU several)."""
        if lists.shape[1] == 0:
            lists = lists.new_full((self.k, 1, *lists.shape[2:]), float("-inf"))
        flat = lists.flatten(0, 1)
        if torch.compiler.is_compiling():
            return flat.gather(0, _merge_order(lists))
        return flat.topk(self.k, dim=0).values

    def times(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = torch.broadcast_tensors(a, b)
        return self._top(a.unsqueeze(0) + b.unsqueeze(1))  # list j: a[j] + b, sorted as b is

    def sum(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        dim = check_dim(dim)
        return self._top(x.movedim(dim, 1))  # (k, n, ...)

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


def _merge_order(lists: torch.Tensor) -> torch.Tensor:
    """Where the k largest entries of `lists`, `(k, n, ...)` (n lists, each
    sorted descending along dim 0), lie in `lists.flatten(0, 1)`, largest
    first: `(k, ...)` int64, `rank * n + list`.

    A merge of the lists in k rounds: each takes the largest of the lists'
    heads (among equal heads the first list's) and advances that list, so no
    entry is taken twice and equal entries all count. Only reductions and
    gathers, which inductor fuses (the rounds read the lists, not a sort)."""
    k, n = lists.shape[:2]
    names = torch.arange(n, device=lists.device).view(n, *[1] * (lists.dim() - 2))
    taken = torch.zeros(lists.shape[1:], dtype=torch.int64, device=lists.device)  # (n, ...): < k until the end
    order = torch.empty((k, *lists.shape[2:]), dtype=torch.int64, device=lists.device)
    for r in range(k):
        heads = lists.gather(0, taken.unsqueeze(0)).squeeze(0)
        best = heads.argmax(0, keepdim=True)  # (1, ...)
        order[r] = (taken.gather(0, best) * n + best).squeeze(0)  # not a cat: on the CPU, k views per call
        taken = taken + (names == best)
    return order
