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

(`p~`, `q~` unnormalized weights). A zero (p's mass `-inf`) is any value
with p's mass `-inf`, whatever its `E`: a forbidden part (`-inf` under p)
embeds with the `f` its functional gives (`+inf` for Entropy, NaN for KL
where q forbids it too), products add every component, as the Log
semiring's do, so a product with a zero may carry any `E` (`+inf` where q
forbids a part); sums weight it by exactly 0 (it never reaches a result,
nor a gradient as NaN), `extract` reads none, and
:meth:`~ExpectationSemiring.canonical` sets it to 0 for comparisons.
Products and embeddings with no mask are what the compiled scan needs: a
mask costs the compiled backward a kernel a product (four a position, an
eighth of Entropy's compiled kernels on the GPU), and the tracked forward
one a masked embedding (the shared tables' two a position).
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch

from .base import Semiring, check_dim


class ExpectationSemiring(Semiring):
    """Base of the log-space expectation semirings (see module docstring).

    A subclass sets `num_potentials` (m) and defines :meth:`functional`
    (the additive `f` from the log-potentials) and :meth:`finalize`. `one`
    and `plus` are the defaults; `zero` is `(-inf, ..., 0)`, the canonical
    zero (`embed(-inf)` would carry the functional's `E` of `-inf`).
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
        return a + b  # a zero's E is left as it comes (see the module docstring)

    def sum(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Log-masses by log-sum-exp; `E` as the p-weighted mean, from the
        same scaled masses: `E = sum(p~ E) / sum(p~)` with `p~ = exp(A_p -
        max A_p)` (a zero weight's `E` taken as 0), one pass over `dim`
        whose backward needs no reduction. `(-inf, ..., 0)` where p gives
        no mass."""
        dim = check_dim(dim)
        log_masses, expectation = x[:-1], x[-1]
        peak = log_masses.amax(dim=dim, keepdim=True).detach()  # a constant: log-sum-exp is exact for any
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        scaled = (log_masses - peak).exp()
        total = scaled.sum(dim=dim)
        positive = total > 0
        safe_total = torch.where(positive, total, torch.ones_like(total))
        masses = torch.where(positive, safe_total.log() + peak.squeeze(dim), torch.full_like(total, float("-inf")))
        weight = scaled[0]
        weighted = (weight * torch.where(weight > 0, expectation, torch.zeros_like(expectation))).sum(dim=dim)
        mean = torch.where(positive[0], weighted / safe_total[0], torch.zeros_like(weighted))
        return torch.cat([masses, mean.unsqueeze(0)], dim=0)

    def embed(self, log_potentials: torch.Tensor) -> torch.Tensor:
        if log_potentials.shape[0] != self.num_potentials:
            raise ValueError(
                f"{type(self).__name__}.embed expects {self.num_potentials} stacked potential sets, "
                f"got a leading dimension of {log_potentials.shape[0]}")
        # a forbidden part keeps its functional's E (see the module docstring): no mask
        return torch.cat([log_potentials, self.functional(log_potentials).unsqueeze(0)], dim=0)

    def zero(self, shape: Sequence[int], dtype: torch.dtype = torch.float64,
             device: torch.device | str | None = None) -> torch.Tensor:
        """`(-inf, ..., -inf, 0)` of shape `(size, *shape)`: the canonical zero."""
        value = torch.full((self.size, *tuple(shape)), float("-inf"), dtype=dtype, device=device)
        value[-1] = 0
        return value

    def canonical(self, value: torch.Tensor) -> torch.Tensor:
        """`value` with a zero's `E` set to 0 (p's mass `-inf`)."""
        forbidden = torch.isneginf(value[0])
        return torch.cat([value[:-1], torch.where(forbidden, torch.zeros_like(value[-1]), value[-1]).unsqueeze(0)])

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
