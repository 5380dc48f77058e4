"""Brute force over every segmentation of a tiny problem.

This is the ground truth the scan, the gradients, the marginals and every fast
path are checked against. It scores each segmentation straight from the model's
definition (docs/model.md), with its own float64 prefix sums and no
factorization, so that it shares no arithmetic with the code under test.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property

import torch

from ..potentials import EdgePotentials, SemiMarkovPotentials

Segment = tuple  # (start, end, label), end exclusive


@functools.cache
def enumerate_segmentations(length: int, K: int, C: int) -> tuple:
    """All segmentations of `[0, length)` into labelled segments of length
    `<= K`: a tuple of tuples of `(start, end, label)`, in lexicographic order."""
    if length == 0:
        return ((),)
    out = []
    for d in range(1, min(K, length) + 1):
        for c in range(C):
            for rest in enumerate_segmentations(length - d, K, C):
                out.append(((0, d, c),) + tuple((s + d, e + d, x) for s, e, x in rest))
    return tuple(out)


@dataclass
class Enumeration:
    """Every structure of one sequence with its log-potential and its parts.

    `structures[i]` is a tuple of `(start, end, label)` segments; for explicit
    edges (latent first label) it is `(initial_label, segments)`.
    `parts (N, M)` float64: the whole log-potential of each segment, in
    order (content + duration + transition, or start for the first segment,
    + the optional start/end scores, + end for the last; for explicit edges
    the edge entry), `part_mask (N, M)` which of the M slots hold a segment,
    and `scores (N,)` the structures' log-potentials (their parts summed), in
    the order of `structures`.
    """

    structures: list
    parts: torch.Tensor
    part_mask: torch.Tensor

    @cached_property
    def scores(self) -> torch.Tensor:
        return torch.where(self.part_mask, self.parts, torch.zeros_like(self.parts)).sum(dim=1)

    def reduce(self, semiring, *others: Enumeration) -> torch.Tensor:
        """Any semiring's sum over the structures of the product of their
        embedded parts, in segment order: `semiring.extract(...)` of

            (+)_y  embed(part_1(y)) (x) embed(part_2(y)) (x) ... (x) embed(part_n(y))

        starting from `one`, so that it is the definition whatever the
        semiring (a non-homomorphic `embed` included). What the scan computes
        with `(K, C, C)` transitions or explicit edges, and with `(C, C)`
        transitions for a homomorphic semiring. `others`: the enumerations of
        the other potential sets (q for a `(p, q)` semiring), same structures.
        """
        sets = (self, *others)
        if len(sets) != semiring.num_potentials:
            raise ValueError(f"{semiring!r} takes {semiring.num_potentials} set(s) of potentials: give "
                             f"{semiring.num_potentials - 1} other enumeration(s), got {len(others)}")
        if any(o.parts.shape != self.parts.shape or not torch.equal(o.part_mask, self.part_mask) for o in others):
            raise ValueError("the enumerations must list the same structures (same lengths, K and C)")
        parts = torch.stack([o.parts for o in sets])  # (P, N, M)
        value = semiring.one((parts.shape[1],), dtype=torch.float64)
        for j in range(parts.shape[2]):
            value = torch.where(self.part_mask[:, j], semiring.times(value, semiring.embed(parts[:, :, j])), value)
        return semiring.extract(semiring.sum(value, dim=-1))

    @property
    def log_partition(self) -> torch.Tensor:
        return torch.logsumexp(self.scores, dim=0)

    @property
    def probabilities(self) -> torch.Tensor:
        return (self.scores - self.log_partition).exp()

    def max(self) -> torch.Tensor:
        return self.scores.max()

    def topk(self, k: int) -> torch.Tensor:
        """The k best scores, descending, padded with -inf."""
        top = self.scores.sort(descending=True).values[:k]
        return torch.cat([top, top.new_full((max(0, k - len(top)),), float("-inf"))])

    def entropy(self) -> torch.Tensor:
        p = self.probabilities
        logp = self.scores - self.log_partition
        return -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum()

    def cross_entropy(self, other: Enumeration) -> torch.Tensor:
        p = self.probabilities
        logq = other.scores - other.log_partition
        return -(torch.where(p > 0, p * logq, torch.zeros_like(p))).sum()

    def kl(self, other: Enumeration) -> torch.Tensor:
        return self.cross_entropy(other) - self.entropy()

    def count(self) -> int:
        return int(torch.isfinite(self.scores).sum())


@functools.cache
def _segment_arrays(length: int, K: int, C: int):
    """Segment tables of every segmentation, `(N, M)` int64 each (M = the
    most segments any has): start, end, label, previous label (-1 for the
    first segment), and a validity mask."""
    structures = enumerate_segmentations(length, K, C)
    M = max(len(x) for x in structures)
    rows = []
    for segs in structures:
        labels = [c for _, _, c in segs]
        row = [(s, e, c, p) for (s, e, c), p in zip(segs, [-1] + labels[:-1])]
        rows.append(row + [(0, 1, 0, -1)] * (M - len(row)))
    arr = torch.tensor(rows, dtype=torch.int64).reshape(len(structures), M, 4)
    mask = torch.tensor([[j < len(segs) for j in range(M)] for segs in structures], dtype=torch.bool)
    return arr[..., 0], arr[..., 1], arr[..., 2], arr[..., 3], mask


def _structured(pot: SemiMarkovPotentials, b: int) -> Enumeration:
    L = int(pot.lengths[b])
    s, e, c, prev, mask = _segment_arrays(L, pot.K, pot.C)
    f64 = {k: v.detach().to("cpu", torch.float64) for k, v in pot.tensors().items()}
    x = f64["scores"][b]
    cs = torch.cat([x.new_zeros(1, pot.C), x.cumsum(0)])
    d = e - s
    part = cs[e, c] - cs[s, c] + f64["duration"][(d - 1).clamp(min=0), c]
    first = prev < 0
    if pot.duration_dependent:
        trans = f64["transition"][(d - 1).clamp(min=0), prev.clamp(min=0), c]
    else:
        trans = f64["transition"][prev.clamp(min=0), c]
    part = part + torch.where(first, f64["start"][c], trans)
    if "start_scores" in f64:
        part = part + f64["start_scores"][b][s, c]
    if "end_scores" in f64:
        part = part + f64["end_scores"][b][(e - 1).clamp(min=0), c]
    last = mask.sum(1, keepdim=True) - 1
    end = torch.zeros_like(part).scatter_(1, last, f64["end"][c.gather(1, last)])
    return Enumeration(list(enumerate_segmentations(L, pot.K, pot.C)), part + end, mask)


def _explicit(pot: EdgePotentials, b: int) -> Enumeration:
    L = int(pot.lengths[b])
    s, e, c, prev, mask = _segment_arrays(L, pot.K, pot.C)
    edge = pot.edge[b].detach().to("cpu", torch.float64)
    structures: list[tuple[int, tuple]] = []
    parts = []
    for c0 in range(pot.C):
        src = torch.where(prev < 0, torch.full_like(prev, c0), prev)
        parts.append(edge[s, e - s, c, src])
        structures.extend((c0, segs) for segs in enumerate_segmentations(L, pot.K, pot.C))
    return Enumeration(structures, torch.cat(parts), mask.repeat(pot.C, 1))


def enumerate_structures(potentials, b: int) -> Enumeration:
    """Enumerate every structure of sequence `b` with its float64 parts and
    score (:class:`Enumeration`; `.reduce(semiring)` runs any semiring)."""
    if isinstance(potentials, EdgePotentials):
        return _explicit(potentials, b)
    return _structured(potentials, b)
