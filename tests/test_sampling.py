"""Exact sampling: frequencies against brute-force probabilities, validity, seeds.

The PyTorch path here (`backend="auto"` on CPU, and `"torch"`, whose rung
hands sampling to the reference); the Triton kernel's frequencies are tested
the same way in tests/test_kernels_sampling.py."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import tiny_problems

from semiring_semicrf import SemiMarkovPotentials
from semiring_semicrf.sampling import sample
from semiring_semicrf.segmentation import Segmentation
from semiring_semicrf.testing import enumerate_structures


def chi_square_p_value(counts: torch.Tensor, probabilities: torch.Tensor) -> float:
    """Pearson's test of `counts` against `probabilities`, pooling the
    least likely cells into one until it is expected at least 5 times;
    upper tail of chi^2(cells - 1) via the regularized incomplete gamma
    function."""
    assert bool((counts[probabilities == 0] == 0).all()), "a structure of probability 0 was sampled"
    keep = probabilities > 0
    counts, expected = counts[keep], probabilities[keep] * counts.sum()
    order = expected.argsort()
    counts, expected = counts[order], expected[order]
    pooled = int((expected.cumsum(0) < 5).sum()) + 1  # the smallest cells whose total first reaches 5
    counts = torch.cat([counts[:pooled].sum()[None], counts[pooled:]])
    expected = torch.cat([expected[:pooled].sum()[None], expected[pooled:]])
    if len(counts) < 2:
        return 1.0
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = torch.tensor(len(counts) - 1, dtype=torch.float64)
    return float(torch.special.gammaincc(dof / 2, statistic / 2))


def sample_p_values(p: SemiMarkovPotentials, labels: torch.Tensor, starts: torch.Tensor) -> list:
    """Per sequence, the chi-square p-value of samples `(N, B, T)` of `p`
    (valid, else the test fails) against `p`'s brute-force probabilities."""
    drawn = Segmentation(labels, starts)
    drawn.validate(p)
    segments = drawn.to_segments()
    values = []
    for b in range(p.batch_size):
        enum = enumerate_structures(p, b)
        index = {s: i for i, s in enumerate(enum.structures)}
        counts = torch.zeros(len(enum.structures), dtype=torch.float64)
        for drawn_segments in segments:
            counts[index[tuple(drawn_segments[b])]] += 1
        values.append(chi_square_p_value(counts, enum.probabilities))
    return values


@pytest.mark.parametrize("backend", ["auto", "torch"])
@settings(max_examples=12, derandomize=True)
@given(p=tiny_problems(max_T=5, max_K=3), explicit=st.booleans())
def test_sample_frequencies_match_exact_probabilities(backend, p, explicit):
    explicit = explicit and backend == "auto"  # the torch rung takes structured potentials only
    potentials = SemiMarkovPotentials.from_edges(p.to_edges(), p.lengths) if explicit else p
    labels, starts = sample(potentials, 3000, torch.Generator().manual_seed(0), backend=backend)
    assert min(sample_p_values(p, labels, starts)) > 1e-3


def test_chi_square_detects_a_wrong_distribution():
    """Positive control: the test rejects samples drawn from other potentials."""
    g = torch.Generator().manual_seed(1)
    p = SemiMarkovPotentials(torch.randn(1, 4, 2, generator=g, dtype=torch.float64),
                             torch.randn(2, 2, generator=g, dtype=torch.float64),
                             torch.randn(2, 2, generator=g, dtype=torch.float64))
    other = p.replace(scores=p.scores + torch.randn(p.scores.shape, generator=g, dtype=torch.float64))
    assert sample_p_values(p, *sample(other, 3000, torch.Generator().manual_seed(0)))[0] < 1e-6


@given(p=tiny_problems(), seed=st.integers(0, 2**31 - 1))
def test_samples_are_valid_and_reproducible_under_a_generator(p, seed):
    first = sample(p, 7, torch.Generator().manual_seed(seed))
    second = sample(p, 7, torch.Generator().manual_seed(seed))
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    labels, starts = first
    assert labels.shape == starts.shape == (7, p.batch_size, p.T)
    Segmentation(labels, starts).validate(p)


def test_long_float32_sequences_sample_valid_segmentations():
    g = torch.Generator().manual_seed(0)
    B, T, K, C = 2, 400, 8, 3
    p = SemiMarkovPotentials(torch.randn(B, T, C, generator=g) + 30.0, torch.randn(C, C, generator=g),
                             torch.randn(K, C, generator=g), torch.tensor([T, 257]))
    labels, starts = sample(p, 50, torch.Generator().manual_seed(1))
    value = Segmentation(labels, starts)
    value.validate(p)
    assert value.durations().max() <= K and len({tuple(x) for x in labels[:, 0].tolist()}) > 1


def test_sequences_without_an_allowed_segmentation_sample_empty():
    transition = torch.full((2, 2), float("-inf"), dtype=torch.float64)
    p = SemiMarkovPotentials(torch.randn(2, 3, 2, dtype=torch.float64), transition,
                             torch.zeros(1, 2, dtype=torch.float64), torch.tensor([3, 1]))
    labels, starts = sample(p, 4)
    assert bool((labels[:, 0] == -1).all()) and not bool(starts[:, 0].any())
    assert bool((labels[:, 1, 0] >= 0).all())
