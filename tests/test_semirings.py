"""Semiring laws as property tests, for every shipped semiring."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from semiring_semicrf import (CrossEntropySemiring, EntropySemiring, KLDivergenceSemiring, KMaxSemiring,
                              LogSemiring, MaxSemiring, StdSemiring)

SEMIRINGS = [LogSemiring(), MaxSemiring(), StdSemiring(), KMaxSemiring(3), EntropySemiring(),
             CrossEntropySemiring(), KLDivergenceSemiring()]
IDS = [repr(s) for s in SEMIRINGS]


def random_value(semiring, seed, n=4, items=3, forbid=False):
    """A semiring value of shape (size, n): a semiring sum of `items`
    embedded random potentials, so KMax lists and expectations are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(semiring.num_potentials, n, items, generator=g, dtype=torch.float64)
    if forbid:
        x[:, 0] = float("-inf")
    return semiring.sum(semiring.embed(x), dim=-1)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("semiring", SEMIRINGS, ids=IDS)
@given(seeds=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)),
       forbid=st.booleans())
def test_laws(semiring, seeds, forbid):
    a, b, c = (random_value(semiring, s, forbid=forbid and i == 0) for i, s in enumerate(seeds))
    S = semiring
    zero = S.zero((4,))
    one = S.one((4,))
    close(S.plus(a, b), S.plus(b, a))
    close(S.plus(S.plus(a, b), c), S.plus(a, S.plus(b, c)))
    close(S.times(a, b), S.times(b, a))
    close(S.times(S.times(a, b), c), S.times(a, S.times(b, c)))
    close(S.plus(a, zero), a)
    close(S.times(a, one), a)
    close(S.times(a, zero), zero)
    close(S.times(a, S.plus(b, c)), S.plus(S.times(a, b), S.times(a, c)))


@pytest.mark.parametrize("semiring", SEMIRINGS, ids=IDS)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 5))
def test_sum_folds_plus_and_embed_is_a_homomorphism(semiring, seed, n):
    g = torch.Generator().manual_seed(seed)
    S = semiring
    x = torch.randn(S.num_potentials, 3, n, generator=g, dtype=torch.float64)
    y = torch.randn(S.num_potentials, 3, n, generator=g, dtype=torch.float64)
    folded = S.embed(x[..., 0])
    for i in range(1, n):
        folded = S.plus(folded, S.embed(x[..., i]))
    close(S.sum(S.embed(x), dim=-1), folded)
    close(S.embed(x + y), S.times(S.embed(x), S.embed(y)))
    close(S.times_potential(S.embed(x), y), S.times(S.embed(x), S.embed(y)))
    m = torch.randn(S.num_potentials, n, 2, generator=g, dtype=torch.float64)
    expected = S.sum(S.times(S.embed(x).unsqueeze(-1), S.embed(m).unsqueeze(1)), dim=-2)
    close(S.matmul(S.embed(x), S.embed(m).unsqueeze(1)), expected)


@given(seed=st.integers(0, 10**6), k=st.integers(1, 5))
def test_kmax_lists_stay_sorted_and_keep_ties(seed, k):
    S = KMaxSemiring(k)
    a = random_value(S, seed, items=4)
    assert torch.all(a[:-1] >= a[1:]) if k > 1 else True
    tied = S.plus(S.embed(torch.zeros(1, 1, dtype=torch.float64)), S.embed(torch.zeros(1, 1, dtype=torch.float64)))
    assert tied[: min(k, 2), 0].tolist() == [0.0] * min(k, 2)


def test_forbidden_potentials_are_zero_and_never_nan():
    for S in SEMIRINGS:
        x = torch.full((S.num_potentials, 3), float("-inf"), dtype=torch.float64)
        value = S.embed(x)
        close(value, S.zero((3,)))
        total = S.sum(S.times(value, S.embed(torch.zeros_like(x))).unsqueeze(-1), dim=-1)
        assert not torch.isnan(total).any(), S


def test_kmax_rejects_bad_k():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be an int"):
            KMaxSemiring(bad)


def test_reductions_refuse_the_state_dim():
    with pytest.raises(ValueError, match="negative dim"):
        LogSemiring().sum(torch.zeros(1, 3), dim=0)


def test_logsumexp_gradient_is_zero_where_everything_is_forbidden():
    x = torch.full((1, 2, 3), float("-inf"), dtype=torch.float64, requires_grad=True)
    out = LogSemiring().sum(x, dim=-1)
    out.sum().backward() if torch.isfinite(out).any() else out.exp().sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
