"""The prototyping kit of `semiring_semicrf.testing`: `check_semiring`
rejects broken semirings (positive controls) and `Enumeration.reduce` is the
definition of every query it generalizes."""
import math

import pytest
import torch
from hypothesis import given, settings
from strategies import perturbed, tiny_problems
from test_semirings import BottleneckSemiring, MaxCountSemiring

from semiring_semicrf import (
    EntropySemiring,
    KLDivergenceSemiring,
    KMaxSemiring,
    LogSemiring,
    MaxSemiring,
    SemiMarkovPotentials,
    StdSemiring,
)
from semiring_semicrf.testing import check_semiring, enumerate_structures


class HalvedLogSemiring(LogSemiring):
    """Log with half the log-sum-exp correction: commutative, 0 = -inf is its
    identity, times distributes over it, but plus is not associative."""

    def plus(self, a, b):
        top = torch.maximum(a, b)
        gap = torch.where(torch.isfinite(top), (a - b).abs(), torch.full_like(top, math.inf))
        return top + 0.5 * torch.log1p(torch.exp(-gap))

    def sum(self, x, dim):
        out = x.select(dim, 0)
        for i in range(1, x.shape[dim]):
            out = self.plus(out, x.select(dim, i))
        return out


class WrongOneSemiring(BottleneckSemiring):
    """Bottleneck whose `one` is 0 (the default `embed(0)`), not +inf."""

    def one(self, shape, dtype=torch.float64, device=None):
        return self.embed(torch.zeros((1, *shape), dtype=dtype, device=device))


class WrongZeroSemiring(MaxSemiring):
    """Max whose zero is a large finite number instead of -inf."""

    def zero(self, shape, dtype=torch.float64, device=None):
        return torch.full((1, *shape), -1e9, dtype=dtype, device=device)


@pytest.mark.parametrize("broken, law", [
    (HalvedLogSemiring(), "plus is not associative"),
    (WrongOneSemiring(), "one is not the identity of times"),
    (WrongZeroSemiring(), "is not zero"),
    (type("Declared", (BottleneckSemiring,), {"homomorphic": True})(), "embed(0) is not one"),
], ids=["non-associative plus", "wrong one", "wrong zero", "undeclared non-homomorphism"])
def test_check_semiring_names_the_law_that_fails_and_its_values(broken, law):
    with pytest.raises(AssertionError) as info:
        check_semiring(broken, max_examples=30)
    message = str(info.value)
    assert law in message and repr(broken) in message
    assert "left  = tensor" in message and "right = tensor" in message


def test_check_semiring_refuses_what_is_not_a_semiring():
    with pytest.raises(TypeError, match="Semiring instance"):
        check_semiring(LogSemiring)


@settings(max_examples=15)
@given(p=tiny_problems(max_T=6))
def test_reduce_is_the_definition_of_every_query(p):
    q = perturbed(p, 1)
    for b in range(p.batch_size):
        e, f = enumerate_structures(p, b), enumerate_structures(q, b)
        torch.testing.assert_close(e.reduce(LogSemiring()), e.log_partition)
        torch.testing.assert_close(e.reduce(StdSemiring()), e.log_partition.exp())
        torch.testing.assert_close(e.reduce(MaxSemiring()), e.max())
        torch.testing.assert_close(e.reduce(KMaxSemiring(3)), e.topk(3))
        torch.testing.assert_close(e.reduce(EntropySemiring()), e.entropy())
        torch.testing.assert_close(e.reduce(KLDivergenceSemiring(), f), e.kl(f))


def test_parts_are_the_segments_whole_log_potentials():
    """Parts: content + duration + transition (start first) + end (last);
    a bottleneck and a count of optima reduce over them as written."""
    g = torch.Generator().manual_seed(2)
    K, C, T = 3, 2, 5
    p = SemiMarkovPotentials(torch.randint(-2, 3, (1, T, C), generator=g).double(),
                             torch.randint(-2, 3, (K, C, C), generator=g).double(),
                             torch.randint(-2, 3, (K, C), generator=g).double(),
                             start=torch.tensor([1.0, -1.0], dtype=torch.float64),
                             end=torch.tensor([0.0, 2.0], dtype=torch.float64))
    e = enumerate_structures(p, 0)
    x = p.tensors()
    for segments, parts, mask in zip(e.structures, e.parts, e.part_mask):
        expected = []
        for i, (s, end, c) in enumerate(segments):
            part = x["scores"][0, s:end, c].sum() + x["duration"][end - s - 1, c]
            part += x["start"][c] if i == 0 else x["transition"][end - s - 1, segments[i - 1][2], c]
            expected.append(float(part + (x["end"][c] if i == len(segments) - 1 else 0.0)))
        assert parts[mask].tolist() == expected
    best = e.scores.max()
    assert int(e.reduce(MaxCountSemiring())) == int((e.scores == best).sum())
    assert float(e.reduce(BottleneckSemiring())) == max(float(parts[mask].min()) for parts, mask in
                                                        zip(e.parts, e.part_mask))


def test_reduce_wants_one_enumeration_per_potential_set():
    p = SemiMarkovPotentials(torch.randn(1, 3, 2), torch.randn(2, 2), torch.randn(2, 2))
    with pytest.raises(ValueError, match="takes 2 set"):
        enumerate_structures(p, 0).reduce(KLDivergenceSemiring())
