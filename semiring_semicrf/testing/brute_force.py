"""Brute force over every segmentation of a tiny problem.

This is the ground truth the scan, the gradients, the marginals and every fast
path are checked against. It scores each segmentation straight from the model's
definition (DESIGN.md section 1), with its own float64 prefix sums and no
factorization, so that it shares no arithmetic with the code under test.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..potentials import EdgePotentials, SemiMarkovPotentials

Segment = tuple  # (start, end, label), end exclusive


@functools.lru_cache(maxsize=None)
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
    """Every structure of one sequence with its log-potential.

    `structures[i]` is a tuple of `(start, end, label)` segments; for explicit
    edges (latent first label) it is `(initial_label, segments)`.
    `scores (N,)` float64 log-potentials, in the order of `structures`.
    """

    structures: list
    scores: torch.Tensor

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

    def cross_entropy(self, other: "Enumeration") -> torch.Tensor:
        p = self.probabilities
        logq = other.scores - other.log_partition
        return -(torch.where(p > 0, p * logq, torch.zeros_like(p))).sum()

    def kl(self, other: "Enumeration") -> torch.Tensor:
        return self.cross_entropy(other) - self.entropy()

    def count(self) -> int:
        return int(torch.isfinite(self.scores).sum())


def _structured(pot: SemiMarkovPotentials, b: int) -> Enumeration:
    L = int(pot.lengths[b])
    structures = list(enumerate_segmentations(L, pot.K, pot.C))
    x = pot.scores[b].detach().to(torch.float64)
    cs = torch.cat([x.new_zeros(1, pot.C), x.cumsum(0)])
    f64 = {k: v.detach().to(torch.float64) for k, v in pot.tensors().items()}
    scores = []
    for segs in structures:
        total = x.new_zeros(())
        prev = None
        for s, e, c in segs:
            d = e - s
            total = total + cs[e, c] - cs[s, c] + f64["duration"][d - 1, c]
            if prev is None:
                total = total + f64["start"][c]
            elif pot.duration_dependent:
                total = total + f64["transition"][d - 1, prev, c]
            else:
                total = total + f64["transition"][prev, c]
            if "start_scores" in f64:
                total = total + f64["start_scores"][b, s, c]
            if "end_scores" in f64:
                total = total + f64["end_scores"][b, e - 1, c]
            prev = c
        scores.append(total + f64["end"][prev])
    return Enumeration(structures, torch.stack(scores))


def _explicit(pot: EdgePotentials, b: int) -> Enumeration:
    L = int(pot.lengths[b])
    edge = pot.edge[b].detach().to(torch.float64)
    structures, scores = [], []
    for c0 in range(pot.C):
        for segs in enumerate_segmentations(L, pot.K, pot.C):
            total = edge.new_zeros(())
            prev = c0
            for s, e, c in segs:
                total = total + edge[s, e - s, c, prev]
                prev = c
            structures.append((c0, segs))
            scores.append(total)
    return Enumeration(structures, torch.stack(scores))


def enumerate_structures(potentials, b: int) -> Enumeration:
    """Enumerate every structure of sequence `b` with its float64 score."""
    if isinstance(potentials, EdgePotentials):
        return _explicit(potentials, b)
    return _structured(potentials, b)
