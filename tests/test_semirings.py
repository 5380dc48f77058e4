"""Semiring laws (`check_semiring`) for every shipped semiring and for the
semirings defined here as a user would (max with counts of optima, max-min
bottleneck, Boolean), and the shipped ones' specifics."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from semiring_semicrf import (
    CrossEntropySemiring,
    EntropySemiring,
    KLDivergenceSemiring,
    KMaxSemiring,
    LogSemiring,
    MaxSemiring,
    Semiring,
    StdSemiring,
)
from semiring_semicrf.semirings.kmax import _merge_order
from semiring_semicrf.testing import check_semiring

SEMIRINGS = [LogSemiring(), MaxSemiring(), StdSemiring(), KMaxSemiring(3), EntropySemiring(),
             CrossEntropySemiring(), KLDivergenceSemiring()]
IDS = [repr(s) for s in SEMIRINGS]


class MaxCountSemiring(Semiring):
    """(max, number of optima): the best score and how many structures reach
    it. Exact ties need exact sums, so it asks for uncentred factors."""

    size = 2
    renormalize = True
    center = False

    def times(self, a, b):
        a, b = torch.broadcast_tensors(a, b)
        return torch.stack([a[0] + b[0], a[1] * b[1]])

    def sum(self, x, dim):
        best = x[0].amax(dim=dim)
        ties = x[0] == best.unsqueeze(dim)
        return torch.stack([best, torch.where(ties, x[1], torch.zeros_like(x[1])).sum(dim=dim)])

    def embed(self, log_potentials):
        return torch.stack([log_potentials[0], torch.isfinite(log_potentials[0]).to(log_potentials.dtype)])

    def extract(self, value):
        return value[1].to(torch.int64)

    def log_mass(self, value):
        return value[:1]


class BottleneckSemiring(Semiring):
    """(max, min): the best structure's weakest part. `min` is no image of
    `+`, so `embed` is not a homomorphism and `one` (+inf) is not `embed(0)`."""

    homomorphic = False

    def one(self, shape, dtype=torch.float64, device=None):
        return torch.full((1, *shape), float("inf"), dtype=dtype, device=device)

    def times(self, a, b):
        return torch.minimum(a, b)

    def sum(self, x, dim):
        return x.amax(dim=dim)

    def embed(self, log_potentials):
        return log_potentials


class BooleanSemiring(Semiring):
    """(or, and) on bool values: is any structure allowed?"""

    def times(self, a, b):
        return a & b

    def sum(self, x, dim):
        return x.any(dim=dim)

    def embed(self, log_potentials):
        return torch.isfinite(log_potentials)


#: Semirings defined only here: a new one written as a user would.
DEFINED_HERE = [MaxCountSemiring(), BottleneckSemiring(), BooleanSemiring()]


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


@pytest.mark.parametrize("semiring", SEMIRINGS + DEFINED_HERE, ids=repr)
def test_every_semiring_satisfies_the_laws(semiring):
    check_semiring(semiring, max_examples=40)


@pytest.mark.parametrize("semiring", SEMIRINGS, ids=IDS)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 5))
def test_matmul_is_the_sum_of_products(semiring, seed, n):
    g = torch.Generator().manual_seed(seed)
    S = semiring
    x = torch.randn(S.num_potentials, 3, n, generator=g, dtype=torch.float64)
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


scores_with_ties = st.one_of(st.sampled_from([float("-inf"), -1.0, 0.0, 2.5]),
                             st.floats(-1e3, 1e3, allow_nan=False, width=32))


@given(k=st.integers(1, 6), n=st.integers(1, 6), columns=st.integers(1, 3), data=st.data())
def test_kmax_merge_order_takes_what_topk_takes_from_sorted_lists(k, n, columns, data):
    """KMax under torch.compile merges its n sorted lists (`_merge_order`)
    where eager calls `topk`: the same values bit for bit, repeated values
    and -inf included, taken from k distinct entries."""
    scores = data.draw(st.lists(scores_with_ties, min_size=k * n * columns, max_size=k * n * columns))
    lists = torch.tensor(scores, dtype=torch.float32).view(k, n, columns).sort(dim=0, descending=True).values
    flat = lists.flatten(0, 1)
    order = _merge_order(lists)
    assert order.shape == (k, columns) and order.dtype == torch.int64
    assert torch.equal(flat.gather(0, order), flat.topk(k, dim=0).values)
    assert all(len(set(column)) == k for column in order.T.tolist())


def test_forbidden_potentials_are_zero_and_never_nan():
    """`embed(-inf)` is a zero (canonically: the expectation semirings embed
    a forbidden part with its functional's E, unmasked), and neither a sum
    with it nor the gradient of one through it is NaN."""
    for S in SEMIRINGS:
        x = torch.full((S.num_potentials, 3), float("-inf"), dtype=torch.float64)
        value = S.embed(x)
        close(S.canonical(value), S.canonical(S.zero((3,))))
        total = S.sum(S.times(value, S.embed(torch.zeros_like(x))).unsqueeze(-1), dim=-1)
        assert not torch.isnan(total).any(), S
        if S.size == 1 or not S.renormalize:
            continue
        mixed = torch.cat([x, torch.randn(S.num_potentials, 2, dtype=torch.float64)], dim=-1).requires_grad_()
        summed = S.sum(S.embed(mixed), dim=-1)
        (grad,) = torch.autograd.grad(S.extract(summed).sum(), mixed)
        assert not torch.isnan(grad).any() and torch.equal(grad[:, :3], torch.zeros_like(grad[:, :3])), S


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


@pytest.mark.parametrize("S", [EntropySemiring(), CrossEntropySemiring(), KLDivergenceSemiring()], ids=repr)
@pytest.mark.parametrize("carried", [0.0, float("inf"), float("nan")])
def test_a_zeros_expectation_reaches_no_result_nor_gradient(S, carried):
    """The expectation semirings' `times` adds every component, so a zero
    (p's mass -inf) may carry any expectation; `sum` weights it by exactly
    0: a sum with such a zero equals the sum without it, value and
    gradient, and is canonically the same element."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(S.num_potentials, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    zero = S.zero((2, 1), dtype=torch.float64).clone()
    zero[-1] = carried
    with_zero = S.sum(torch.cat([S.embed(x), zero], dim=-1), dim=-1)
    without = S.sum(S.embed(x), dim=-1)
    torch.testing.assert_close(with_zero, without, rtol=1e-12, atol=0)
    (got,) = torch.autograd.grad(with_zero.sum(), x)
    (want,) = torch.autograd.grad(without.sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    product = S.times(S.embed(x[..., :1]), zero)  # a zero, whatever expectation it carries
    assert torch.isneginf(product[0]).all()
    torch.testing.assert_close(S.canonical(product), S.canonical(S.zero((2, 1), dtype=torch.float64)), equal_nan=False)
