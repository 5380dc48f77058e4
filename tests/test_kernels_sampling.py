"""The Triton sampling kernel through the public API (``backend="triton"``).

Without CUDA the kernel runs on CPU tensors through Triton's interpreter
(conftest.py sets ``TRITON_INTERPRET=1``), so sizes stay tiny; tests marked
``gpu`` run at scale on a GPU. Exactness: sample frequencies against the
brute-force probabilities of every segmentation (Pearson's chi-square, as
tests/test_sampling.py does for the PyTorch path); reproducibility: the same
generator state gives the same samples, whatever the kernel's grouping of
chains into programs.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from strategies import tiny_problems  # noqa: E402
from test_kernels import converted, random_problem  # noqa: E402
from test_sampling import sample_p_values  # noqa: E402

from semiring_semicrf import SemiMarkovDistribution, SemiMarkovPotentials, backends, posterior  # noqa: E402
from semiring_semicrf.kernels import sampling as sampling_kernel  # noqa: E402
from semiring_semicrf.sampling import sample  # noqa: E402
from semiring_semicrf.segmentation import Segmentation  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def on_device(p: SemiMarkovPotentials) -> SemiMarkovPotentials:
    return converted(p, DEVICE, torch.float32)


def triton_samples(p: SemiMarkovPotentials, n: int, seed: int):
    return sample(p, n, torch.Generator(p.device).manual_seed(seed), backend="triton")


@settings(deadline=None, max_examples=6, derandomize=True)
@given(p64=tiny_problems(max_B=2, max_T=5, max_K=3, max_C=3, duration_dependent=False))
def test_sample_frequencies_match_exact_probabilities(p64):
    labels, starts = triton_samples(on_device(p64), 2000, 0)
    assert min(sample_p_values(p64, labels.cpu(), starts.cpu())) > 1e-3


def test_chi_square_rejects_samples_of_other_potentials():
    """Positive control through the kernel: samples of q tested against p's probabilities."""
    p64 = random_problem(1, 4, 2, 2, seed=21)
    q64 = random_problem(1, 4, 2, 2, seed=22)
    labels, starts = triton_samples(on_device(q64), 2000, 0)
    assert sample_p_values(p64, labels.cpu(), starts.cpu())[0] < 1e-6


@settings(deadline=None, max_examples=8)
@given(p64=tiny_problems(max_T=7, max_K=4, max_C=4, duration_dependent=False), seed=st.integers(0, 2**31 - 1))
def test_same_generator_state_same_samples(p64, seed):
    p = on_device(p64)
    first, second = triton_samples(p, 5, seed), triton_samples(p, 5, seed)
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    labels, starts = first
    assert labels.shape == starts.shape == (5, p.batch_size, p.T)
    assert labels.dtype == torch.int64 and starts.dtype == torch.bool
    Segmentation(labels.cpu(), starts.cpu()).validate(p64)


def test_the_generator_advances_and_seeds_differ():
    p = on_device(random_problem(2, 12, 4, 3, torch.tensor([12, 7]), seed=23))
    g = torch.Generator(DEVICE).manual_seed(3)
    first = sample(p, 16, g, backend="triton")
    second = sample(p, 16, g, backend="triton")
    other = triton_samples(p, 16, 4)
    again = triton_samples(p, 16, 3)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[0], second[0]) and not torch.equal(first[0], other[0])


def test_samples_do_not_depend_on_how_chains_share_programs(monkeypatch):
    """Counter-based noise: a chain's draws are keyed by (lane, draw, chain),
    so grouping chains differently (the interpreter's CHAINS) changes nothing."""
    if DEVICE == "cuda":
        pytest.skip("the grouping is an interpreter setting")
    p = on_device(random_problem(3, 9, 3, 4, torch.tensor([9, 5, 1]), extras=True, seed=24))
    grouped = triton_samples(p, 11, 5)
    monkeypatch.setattr(sampling_kernel, "INTERPRETED_CHAINS", 2)
    assert all(torch.equal(x, y) for x, y in zip(grouped, triton_samples(p, 11, 5)))


def test_sequences_without_an_allowed_segmentation_sample_empty():
    transition = torch.full((2, 2), float("-inf"))
    p = SemiMarkovPotentials(torch.randn(2, 3, 2), transition, torch.zeros(1, 2), torch.tensor([3, 1]))
    labels, starts = triton_samples(converted(p, DEVICE, torch.float32), 4, 0)
    assert bool((labels[:, 0] == -1).all()) and not bool(starts[:, 0].any())
    assert bool((labels[:, 1, 0] >= 0).all()) and bool((labels[:, 1, 1:] == -1).all())


def test_distribution_sample_runs_the_kernel():
    p = on_device(random_problem(2, 6, 3, 3, torch.tensor([6, 4]), seed=25))
    d = SemiMarkovDistribution.from_potentials(p, backend="triton")
    drawn = d.sample((2, 3), generator=torch.Generator(DEVICE).manual_seed(6))
    assert drawn.labels.shape == (2, 3, 2, 6)
    labels, starts = triton_samples(p, 6, 6)
    assert torch.equal(drawn.labels.reshape(6, 2, 6), labels) and torch.equal(drawn.starts.reshape(6, 2, 6), starts)
    assert backends.select("triton", p, "sample").name == "triton"


# -- at scale, on a GPU -------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("B,T,K,C,N", [(4, 300, 12, 7, 4000), (2, 2000, 40, 24, 2000), (1, 20000, 64, 8, 1000)])
def test_gpu_sample_label_frequencies_match_the_posterior(B, T, K, C, N):
    """The label frequencies of N samples against the exact label marginals
    (float64), the samples valid, and bitwise identical under the same seed.

    Every (position, label) cell is a binomial count; Chernoff's bound
    `P(frequency as far from m as f) <= exp(-N KL(f || m))` over all cells
    (a union bound) makes a correct sampler fail with probability below
    `2 exp(-20)`. (Six standard errors per cell failed a correct sampler at
    T = 20000: rare cells are far from normal.)"""
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(T))
    lengths[0] = T
    p = on_device(random_problem(B, T, K, C, lengths, extras=True, seed=B + T))
    labels, starts = triton_samples(p, N, 7)
    again = triton_samples(p, N, 7)
    assert torch.equal(labels, again[0]) and torch.equal(starts, again[1])
    Segmentation(labels[:64], starts[:64]).validate(p)
    marginals = posterior(p.double(), backend="torch").label_marginals()
    frequencies = torch.stack([(labels == c).double().mean(dim=0) for c in range(C)], dim=-1)
    assert bool((frequencies[marginals == 0] == 0).all()), "a label of probability 0 was sampled"
    inside = (marginals > 0) & (marginals < 1)
    f, m = frequencies[inside], marginals[inside]
    divergence = torch.special.xlogy(f, f / m) + torch.special.xlogy(1 - f, (1 - f) / (1 - m))
    worst = int(divergence.argmax())
    cells = max(int(inside.sum()), 1)
    assert float(N * divergence.max()) <= 20 + torch.log(torch.tensor(float(cells))), (
        f"frequency {float(f[worst]):.4g} against marginal {float(m[worst]):.4g} ({N} samples, {cells} cells)")
