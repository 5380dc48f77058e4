"""`check_semiring`: the laws the scan relies on, checked on drawn values.

Hypothesis draws log-potentials (small integers, so that ties occur, reals on
a grid of 1/64, so that every sum of them is exact in float32 and float64 and
semirings that rely on exact sums can be checked exactly, and `-inf`), builds
semiring values from them (embedded parts summed, and the identities), and checks every law below on each draw; a
failing law is shrunk to a small example and raised as an `AssertionError`
that names the law and shows its values. Callable from a notebook or from a
user's pytest (it needs the `hypothesis` package).
"""
from __future__ import annotations

import math

import torch

from ..semirings import Semiring

#: Log-potentials are drawn from these: integers (ties), reals on a grid of 1/_GRID in
#: [-_REALS, _REALS] (exact sums), and -inf.
_INTEGERS = (-3, 3)
_REALS, _GRID = 4, 64


class _Laws:
    """The laws of one semiring on values of shape `(size, n)`."""

    def __init__(self, semiring: Semiring, n: int, dtype: torch.dtype, rtol: float, atol: float):
        self.S, self.n, self.dtype, self.rtol, self.atol = semiring, n, dtype, rtol, atol
        self.name = repr(semiring)

    def equal(self, law: str, left: torch.Tensor, right: torch.Tensor, **values: torch.Tensor) -> None:
        """Raise an AssertionError naming `law` and its values unless `left`
        equals `right` as an element of the semiring (compared through
        :meth:`Semiring.canonical`)."""
        left, right = self.S.canonical(left), self.S.canonical(right)
        try:
            assert left.shape == right.shape, f"shapes differ: {tuple(left.shape)} and {tuple(right.shape)}"
            if left.is_floating_point() or right.is_floating_point():
                torch.testing.assert_close(left, right, rtol=self.rtol, atol=self.atol, equal_nan=False,
                                           check_dtype=False)
            else:
                assert torch.equal(left, right), "values differ"
        except AssertionError as exc:
            shown = "".join(f"\n  {k} = {v!r}" for k, v in values.items())
            raise AssertionError(f"{self.name}: {law}, on{shown}\n  left  = {left!r}\n  right = {right!r}\n"
                                 f"  ({str(exc).splitlines()[0]})") from None

    def zero(self):
        return self.S.zero((self.n,), dtype=self.dtype)

    def one(self):
        return self.S.one((self.n,), dtype=self.dtype)

    def check(self, a, b, c, x, y) -> None:
        """Every law on the values `a, b, c` `(size, n)` and the
        log-potentials `x, y` `(num_potentials, n)`."""
        S, eq = self.S, self.equal
        zero, one = self.zero(), self.one()
        eq("embed(-inf) is not zero", S.embed(torch.full_like(x, -math.inf)), zero)
        eq("zero is not the identity of plus: plus(a, zero) != a", S.plus(a, zero), a, a=a)
        eq("one is not the identity of times: times(a, one) != a", S.times(a, one), a, a=a)
        eq("zero does not annihilate: times(a, zero) != zero", S.times(a, zero), zero, a=a)
        eq("plus is not commutative: plus(a, b) != plus(b, a)", S.plus(a, b), S.plus(b, a), a=a, b=b)
        eq("times is not commutative: times(a, b) != times(b, a)", S.times(a, b), S.times(b, a), a=a, b=b)
        eq("plus is not associative: plus(plus(a, b), c) != plus(a, plus(b, c))",
           S.plus(S.plus(a, b), c), S.plus(a, S.plus(b, c)), a=a, b=b, c=c)
        eq("times is not associative: times(times(a, b), c) != times(a, times(b, c))",
           S.times(S.times(a, b), c), S.times(a, S.times(b, c)), a=a, b=b, c=c)
        eq("times does not distribute over plus: times(a, plus(b, c)) != plus(times(a, b), times(a, c))",
           S.times(a, S.plus(b, c)), S.plus(S.times(a, b), S.times(a, c)), a=a, b=b, c=c)
        stacked = torch.stack([a, b, c], dim=-1)
        eq("sum does not fold plus: sum(stack([a, b, c], -1), -1) != plus(plus(a, b), c)",
           S.sum(stacked, dim=-1), S.plus(S.plus(a, b), c), a=a, b=b, c=c)
        eq("sum over dim -2 differs from sum over dim -1 of the transposed values",
           S.sum(stacked.transpose(-1, -2), dim=-2), S.sum(stacked, dim=-1), a=a, b=b, c=c)
        outer = S.times(a.unsqueeze(-1), b.unsqueeze(-2))
        expanded = S.times(a.unsqueeze(-1).expand(-1, -1, self.n).contiguous(),
                           b.unsqueeze(-2).expand(-1, self.n, -1).contiguous())
        eq("times does not broadcast like torch: times(a[..., :, None], b[..., None, :])", outer, expanded, a=a, b=b)
        eq("times_potential(a, x) != times(a, embed(x))", S.times_potential(a, x), S.times(a, S.embed(x)), a=a, x=x)
        if S.homomorphic:
            eq("embed(0) is not one (set homomorphic = False if embed is not a homomorphism)",
               S.embed(torch.zeros_like(x)), one)
            eq("embed is not a homomorphism: embed(x + y) != times(embed(x), embed(y)) (set homomorphic = False "
               "if that is intended)", S.embed(x + y), S.times(S.embed(x), S.embed(y)), x=x, y=y)
        if S.renormalize:
            mass = S.log_mass(a)
            eq("log_mass(a) is not (num_potentials, n) without NaN", torch.isnan(mass),
               torch.zeros((S.num_potentials, self.n), dtype=torch.bool), a=a)


def check_semiring(semiring: Semiring, *, max_examples: int = 60, n: int = 3, dtype: torch.dtype = torch.float64,
                   rtol: float = 1e-7, atol: float = 1e-9) -> None:
    """Check the laws the scan relies on; raise AssertionError on the first
    that fails (the message names the law and shows the values, shrunk by
    Hypothesis to a small example).

    The laws: `embed(-inf)` is `zero`; `zero` and `one` are the identities of
    `plus` and `times` and `zero` annihilates; `plus` and `times` are
    commutative and associative, `times` distributes over `plus`; `sum`
    folds `plus` (over dim -1 and -2) and `times` broadcasts like torch;
    `times_potential(a, x) == times(a, embed(x))`; if `semiring.homomorphic`,
    `embed(0)` is `one` and `embed(x + y) == times(embed(x), embed(y))`; if
    `semiring.renormalize`, `log_mass` gives `(num_potentials, n)` without NaN.

    Args:
        semiring: the semiring to check.
        max_examples: draws (each checks every law).
        n: the values' width, `(size, n)`.
        dtype: the dtype the values are drawn in.
        rtol, atol: the tolerance of floating comparisons (integer and bool
            values compare exactly).
    """
    try:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import strategies as st
    except ImportError as exc:
        raise ImportError("check_semiring draws values with Hypothesis: pip install hypothesis") from exc
    if not isinstance(semiring, Semiring):
        raise TypeError(f"semiring must be a Semiring instance, got {semiring!r}")
    laws = _Laws(semiring, n, dtype, rtol, atol)
    P = semiring.num_potentials
    entry = st.one_of(st.integers(*_INTEGERS).map(float),
                      st.integers(-_REALS * _GRID, _REALS * _GRID).map(lambda i: i / _GRID), st.just(-math.inf))

    def potentials(data, *shape) -> torch.Tensor:
        count = math.prod(shape)
        return torch.tensor(data.draw(st.lists(entry, min_size=count, max_size=count)), dtype=dtype).reshape(shape)

    def value(data) -> torch.Tensor:
        kind = data.draw(st.sampled_from(["parts", "parts", "parts", "zero", "one"]))
        if kind != "parts":
            return laws.zero() if kind == "zero" else laws.one()
        items = data.draw(st.integers(1, 3))
        return semiring.sum(semiring.embed(potentials(data, P, n, items)), dim=-1)

    phases = [phase for phase in Phase if phase is not Phase.explain]  # explaining a failure costs minutes

    @settings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=phases)
    @given(data=st.data())
    def run(data):
        a, b, c = value(data), value(data), value(data)
        laws.check(a, b, c, potentials(data, P, n), potentials(data, P, n))

    run()
