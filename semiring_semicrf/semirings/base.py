"""The semiring interface that every scan, distribution and notebook runs on.

A semiring value is a tensor whose **first dimension is the semiring's state**
(`size` entries: 1 for Log/Max/Std, k for KMax(k), 2 or 3 for the expectation
semirings); all other dimensions are batch/label dimensions. Reductions and
products therefore take *negative* dims, which never touch the state.

Real log-potentials (edge scores, transitions, durations) enter a semiring
through :meth:`Semiring.embed`, which takes a tensor with a leading dimension of
size `num_potentials` (1 for most semirings, 2 for the ones comparing two
models p and q) and returns a semiring value.

A new semiring needs three methods, :meth:`~Semiring.times`,
:meth:`~Semiring.sum` and :meth:`~Semiring.embed`; the rest derives from them
(`zero = embed(-inf)`, `one = embed(0)`, `plus` = `sum` over a stack of two,
`extract` = the single state entry), and class attributes say what the scan
may do with it:

- `homomorphic` (default True): `embed(x + y) == times(embed(x), embed(y))`
  and `embed(0) == one`. The factorized scan (`(C, C)` transitions) splits a
  segment's log-potential into factors and embeds each, so it needs this; a
  semiring that sets it False (a max-min "bottleneck", say) runs on `(K, C,
  C)` transitions and explicit edges, which embed each segment whole, and
  defines its own `one`.
- `renormalize` (default False): the scan factors a per-sequence log-scale
  out of its state every few positions (:meth:`Semiring.log_mass` says how
  much), so float32 states stay of order one at any T. Needs `log_mass` and
  a homomorphic `embed`.
- `center` (default True): the scan may zero-centre the scores before their
  prefix sums (exact in real arithmetic, float rounding in practice). A
  semiring that needs exact sums, for exact ties on integer potentials, sets
  it False and gets uncentred factors.

`semiring_semicrf.testing.check_semiring` checks the laws, the identities and
the homomorphism of a semiring on drawn values.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch


class Semiring(ABC):
    """Abstract semiring `(S, plus, times, zero, one)` over tensors.

    Subclasses implement :meth:`times`, :meth:`sum` and :meth:`embed`; the
    rest has defaults derived from them, which a subclass may override (for
    speed, or where the default does not hold: a non-homomorphic `embed` needs
    its own `one`).

    Attributes:
        size: length of the leading state dimension of every value.
        num_potentials: how many sets of log-potentials `embed` takes (the
            leading dimension of its input).
        homomorphic: `embed` is a homomorphism from `(R ∪ {-inf}, +)` to
            `(S, times)`; required by the factorized `(C, C)` scan.
        renormalize: the scan renormalizes the state through
            :meth:`log_mass` (set it with `log_mass`).
        center: the scan may zero-centre the scores (False: exact sums).
    """

    size: int = 1
    num_potentials: int = 1
    homomorphic: bool = True
    renormalize: bool = False
    center: bool = True

    # -- what every semiring defines ----------------------------------------
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

    # -- derived (override where they do not fit, or for speed) --------------
    def zero(self, shape: Sequence[int], dtype: torch.dtype = torch.float64,
                device: torch.device | str | None = None) -> torch.Tensor:
        """Additive identity of shape `(size, *shape)`: `embed(-inf)`."""
        return self.embed(torch.full((self.num_potentials, *tuple(shape)), float("-inf"), dtype=dtype,
                                     device=device))

    def one(self, shape: Sequence[int], dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> torch.Tensor:
        """Multiplicative identity of shape `(size, *shape)`: `embed(0)`
        (what a homomorphic `embed` gives; a semiring whose `embed(0)` is
        not its `one` overrides this)."""
        return self.embed(torch.zeros((self.num_potentials, *tuple(shape)), dtype=dtype, device=device))

    def plus(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Semiring addition of two broadcastable values: `sum` over them stacked."""
        a, b = torch.broadcast_tensors(a, b)
        return self.sum(torch.stack([a, b], dim=-1), dim=-1)

    def extract(self, value: torch.Tensor) -> torch.Tensor:
        """Turn a final value `(size, *shape)` into the user-facing result:
        by default the state entry `(*shape)` when `size == 1`, else the
        whole value (`(k, *shape)` for KMax). Its dtype is kept (a bool or an
        integer count is returned as such)."""
        return value[0] if self.size == 1 else value

    def canonical(self, value: torch.Tensor) -> torch.Tensor:
        """`value` in a canonical form, in which values that are one element
        of the semiring compare equal (`check_semiring` compares through
        it): by default `value` itself. A semiring whose elements have
        several representations (the expectation semirings' zero: any `E`
        with p's mass `-inf`) maps them to one."""
        return value

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

    def log_mass(self, value: torch.Tensor) -> torch.Tensor:
        """Log-magnitude of a value per potential set, `(num_potentials, *shape)`.

        With `renormalize = True` the scan factors a per-sequence shift `s`
        out of its state as `value = times_potential(value', s)` (exact, as
        `embed` is a homomorphism) and carries `s` in float64.
        """
        raise NotImplementedError(
            f"{type(self).__name__} sets renormalize = True but defines no log_mass(value): define it, or set "
            "renormalize = False")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_dim(dim: int) -> int:
    """Semiring reductions take negative dims so the state dim is never hit."""
    if dim >= 0:
        raise ValueError(f"semiring reductions take a negative dim (counted from the right), got dim={dim}")
    return dim
