"""Expectation semirings in log space: Entropy, CrossEntropy, KL.

A value holds `m` log-masses `A_1..A_m` (one per model: p, or p and q) and
`E`, the expectation under the normalized weights of `A_1` (the model p) of an
additive functional `f` of the structure's log-potentials. Products add every
component (the functional is additive over a structure's parts); sums combine
log-masses by log-sum-exp and expectations as mixtures weighted by p.

For a whole set of structures with `A_p = log Z_p`, `A_q = log Z_q`:

- Entropy:        f = -log p~,        H(p)      = A_p + E
- CrossEntropy:   f = -log q~,        H(p, q)   = A_q + E
- KL:             f = log p~ - log q~, KL(p||q) = A_q - A_p + E

(`p~`, `q~` unnormalized weights). Forbidden parts (`-inf` under p) carry
`f = 0` so that a zero weight never multiplies an infinity.
"""
from __future__ import annotations

from abc import abstractmethod

import torch

from .base import Semiring, check_dim
from .real import logsumexp


def _weights(log_mass: torch.Tensor, total: torch.Tensor, dim: int) -> torch.Tensor:
    """`exp(log_mass - total)` along `dim`, 0 where the total is `-inf`."""
    finite = torch.isfinite(total).unsqueeze(dim)
    safe_total = torch.where(finite, total.unsqueeze(dim), torch.zeros_like(total.unsqueeze(dim)))
    return torch.where(finite, (log_mass - safe_total).exp(), torch.zeros_like(log_mass))


def _weighted(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`weights * values` with 0 (not NaN) where a weight is 0."""
    return torch.where(weights > 0, weights * values, torch.zeros_like(values))


class ExpectationSemiring(Semiring):
    """Base of the log-space expectation semirings (see module docstring).

    A subclass sets `num_potentials` (m) and defines :meth:`functional`
    (the additive `f` from the log-potentials) and :meth:`finalize`. `zero`
    (`(-inf, ..., 0)`), `one` and `plus` are the defaults.
    """

    num_potentials = 1
    renormalize = True

    @property  # read-only here: it follows num_potentials
    def size(self) -> int:  # type: ignore[override]  # m log-masses and one expectation
        return self.num_potentials + 1

    @abstractmethod
    def functional(self, log_potentials: torch.Tensor) -> torch.Tensor:
        """The additive functional `f`, from `(num_potentials, *shape)`."""

    @abstractmethod
    def finalize(self, log_masses: torch.Tensor, expectation: torch.Tensor) -> torch.Tensor:
        """The user-facing result from `(m, *shape)` log-masses and `E`."""

    def times(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = a + b
        # Keep zero canonical, (-inf, ..., 0): a zero weight carries no expectation.
        forbidden = out[0] == float("-inf")
        return torch.cat([out[:-1], torch.where(forbidden, torch.zeros_like(out[-1]), out[-1]).unsqueeze(0)])

    def sum(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        dim = check_dim(dim)
        masses = logsumexp(x[:-1], dim)
        weights = _weights(x[0], masses[0], dim)
        expectation = _weighted(weights, x[-1]).sum(dim=dim)
        return torch.cat([masses, expectation.unsqueeze(0)], dim=0)

    def embed(self, log_potentials: torch.Tensor) -> torch.Tensor:
        if log_potentials.shape[0] != self.num_potentials:
            raise ValueError(
                f"{type(self).__name__}.embed expects {self.num_potentials} stacked potential sets, "
                f"got a leading dimension of {log_potentials.shape[0]}")
        f = self.functional(log_potentials)
        f = torch.where(log_potentials[0] == float("-inf"), torch.zeros_like(f), f)
        return torch.cat([log_potentials, f.unsqueeze(0)], dim=0)

    def extract(self, value: torch.Tensor) -> torch.Tensor:
        """`finalize(...)`, with the conventions of every path
        (:mod:`semiring_semicrf.information`): `+inf` where p gives mass to
        what q forbids (`E = +inf`), 0 where p allows nothing."""
        result = torch.where(torch.isposinf(value[-1]), value[-1], self.finalize(value[:-1], value[-1]))
        return torch.where(torch.isneginf(value[0]), torch.zeros_like(result), result)

    def log_mass(self, value: torch.Tensor) -> torch.Tensor:
        return value[:-1]


class EntropySemiring(ExpectationSemiring):
    """Entropy `H(p) = -sum_y p(y) log p(y)` over structures (nats)."""

    num_potentials = 1

    def functional(self, log_potentials: torch.Tensor) -> torch.Tensor:
        return -log_potentials[0]

    def finalize(self, log_masses: torch.Tensor, expectation: torch.Tensor) -> torch.Tensor:
        return log_masses[0] + expectation


class CrossEntropySemiring(ExpectationSemiring):
    """Cross-entropy `H(p, q) = -sum_y p(y) log q(y)`; embeds `(p, q)` stacked."""

    num_potentials = 2

    def functional(self, log_potentials: torch.Tensor) -> torch.Tensor:
        return -log_potentials[1]

    def finalize(self, log_masses: torch.Tensor, expectation: torch.Tensor) -> torch.Tensor:
        return log_masses[1] + expectation


class KLDivergenceSemiring(ExpectationSemiring):
    """`KL(p || q) = sum_y p(y) log(p(y) / q(y))`; embeds `(p, q)` stacked."""

    num_potentials = 2

    def functional(self, log_potentials: torch.Tensor) -> torch.Tensor:
        return log_potentials[0] - log_potentials[1]

    def finalize(self, log_masses: torch.Tensor, expectation: torch.Tensor) -> torch.Tensor:
        return log_masses[1] - log_masses[0] + expectation
