"""Scalar semirings over the reals: Log (sum-product in log space), Max
(max-plus, Viterbi) and Std (the ordinary (+, *) semiring, for counting and
tiny exact checks). Each value has a state dimension of size 1."""
from __future__ import annotations

import torch

from .base import Semiring, check_dim


def logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """`log(sum(exp(x)))` over `dim` that is `-inf` (not NaN) when every entry
    is `-inf`, with a zero (not NaN) gradient there. Without a gradient to
    track, this is torch's fused `logsumexp` (which is -inf there too)."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return torch.logsumexp(x, dim=dim)
    m = x.amax(dim=dim, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    total = (x - m).exp().sum(dim=dim)
    positive = total > 0
    safe = torch.where(positive, total, torch.ones_like(total))
    return torch.where(positive, safe.log() + m.squeeze(dim), torch.full_like(total, float("-inf")))


class LogSemiring(Semiring):
    """`(logaddexp, +, -inf, 0)`: the sum over structures of exp(score).

    Contract: results are log-masses; a reduction over all `-inf` gives
    `-inf`. Gradients of the partition w.r.t. log-potentials are marginals.
    `zero`, `one` and `extract` are the defaults.
    """

    renormalize = True

    def plus(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.logaddexp(a, b)

    def times(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def sum(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return logsumexp(x, check_dim(dim))

    def embed(self, log_potentials: torch.Tensor) -> torch.Tensor:
        return log_potentials

    def times_potential(self, a: torch.Tensor, log_potentials: torch.Tensor) -> torch.Tensor:
        return a + log_potentials

    def log_mass(self, value: torch.Tensor) -> torch.Tensor:
        return value


class MaxSemiring(LogSemiring):
    """`(max, +, -inf, 0)`: the best structure's score (Viterbi)."""

    def plus(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.maximum(a, b)

    def sum(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.amax(dim=check_dim(dim))

    def argsum(self, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(sum(x, dim), index)`: the maximum and the position along `dim`
        that attains it (the first one among ties), both `(1, ...)`."""
        values, index = x.max(dim=check_dim(dim))
        return values, index


class StdSemiring(Semiring):
    """`(+, *, 0, 1)` on exp(potentials): counts structures when every
    potential is 0, and sums probabilities exactly for tiny problems. Values
    are not in log space, so it over/underflows where Log would not (the scan
    renormalizes it like Log, which rounds; a semiring with `renormalize =
    False` keeps integer counts exact)."""

    renormalize = True

    def plus(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def times(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def sum(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.sum(dim=check_dim(dim))

    def embed(self, log_potentials: torch.Tensor) -> torch.Tensor:
        return log_potentials.exp()

    def log_mass(self, value: torch.Tensor) -> torch.Tensor:
        return value.log()
