"""The semiring interface that every scan, distribution and notebook runs on.

A semiring value is a tensor whose **first dimension is the semiring's state**
(`size` entries: 1 for Log/Max/Std, k for KMax(k), 2 or 3 for the expectation
semirings); all other dimensions are batch/label dimensions. Reductions and
products therefore take *negative* dims, which never touch the state.

Real log-potentials (edge scores, transitions, durations) enter a semiring
through :meth:`Semiring.embed`, which takes a tensor with a leading dimension of
size `num_potentials` (1 for most semirings, 2 for the ones comparing two
models p and q) and returns a semiring value. `embed` must be a homomorphism
from `(R ∪ {-inf}, +)` to `(S, times)`: `embed(x + y) == times(embed(x),
embed(y))`. The factorized scan relies on that to split a segment's score into
per-position and per-duration factors.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Semiring(ABC):
    """Abstract semiring `(S, plus, times, zero, one)` over tensors.

    Subclasses implement :meth:`zero`, :meth:`one`, :meth:`plus`,
    :meth:`times`, :meth:`sum`, :meth:`embed` and :meth:`extract`; the rest
    has generic defaults that a subclass may override for speed.

    Attributes:
        size: length of the leading state dimension of every value.
        num_potentials: how many sets of log-potentials `embed` takes (the
            leading dimension of its input).
    """

    size: int = 1
    num_potentials: int = 1

    # -- identities ---------------------------------------------------------
    @abstractmethod
    def zero(self, shape, dtype=torch.float64, device=None) -> torch.Tensor:
        """Additive identity of shape `(size, *shape)`."""

    @abstractmethod
    def one(self, shape, dtype=torch.float64, device=None) -> torch.Tensor:
        """Multiplicative identity of shape `(size, *shape)`."""

    # -- operations ---------------------------------------------------------
    @abstractmethod
    def plus(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Semiring addition of two broadcastable values."""

    @abstractmethod
    def times(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Semiring multiplication of two broadcastable values."""

    @abstractmethod
    def sum(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Semiring sum over one non-state dimension (`dim` < 0)."""

    @abstractmethod
    def embed(self, log_potentials: torch.Tensor) -> torch.Tensor:
        """Map real log-potentials `(num_potentials, *shape)` to a value
        `(size, *shape)`. `-inf` means "forbidden" and must map to zero."""

    @abstractmethod
    def extract(self, value: torch.Tensor) -> torch.Tensor:
        """Turn a final value `(size, *shape)` into the user-facing result:
        `(*shape)` for scalar semirings, `(k, *shape)` for KMax."""

    # -- derived operations (override for speed) ----------------------------
    def times_potential(self, a: torch.Tensor, log_potentials: torch.Tensor) -> torch.Tensor:
        """`times(a, embed(log_potentials))`."""
        return self.times(a, self.embed(log_potentials))

    def matmul(self, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Vector-matrix product: `out[..., j] = sum_i a[..., i] (x) m[..., i, j]`.

        `a` is `(size, *batch, n)`, `m` is `(size, *batch', n, p)`.
        """
        return self.sum(self.times(a.unsqueeze(-1), m), dim=-2)

    def argsum(self, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(sum(x, dim), index)` for semirings whose `plus` *selects* among
        its arguments (Max, KMax): the reduced value and, per state entry,
        where it came from, `index = position * size + rank` (an int tensor
        of the value's shape). Decoding follows these back-pointers. Other
        semirings have no such reduction."""
        raise NotImplementedError(
            f"{self!r} has no index-returning reduction (argsum): back-pointers need a semiring whose plus "
            "selects one of its arguments, such as MaxSemiring or KMaxSemiring")

    def log_mass(self, value: torch.Tensor):
        """Log-magnitude of a value per potential set, `(num_potentials, *shape)`,
        or None if the semiring has no such notion.

        The scan uses it to renormalize: it factors a per-sequence shift `s`
        out of its state as `value = times_potential(value', s)` (exact, as
        `embed` is a homomorphism) and carries `s` in float64, so float32
        states stay O(1) at any T. Returning None (the default) opts out.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_dim(dim: int) -> int:
    """Semiring reductions take negative dims so the state dim is never hit."""
    if dim >= 0:
        raise ValueError(f"semiring reductions take a negative dim (counted from the right), got dim={dim}")
    return dim


def full(size: int, shape, value: float, dtype, device) -> torch.Tensor:
    return torch.full((size, *tuple(shape)), value, dtype=dtype, device=device)
