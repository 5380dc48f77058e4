"""The backend ladder: every rung against the reference (the generic scan).

- The reference posterior (gradients of the generic scan's log Z with
  respect to the factors) against brute force.
- One test parameterized over the rungs: every Posterior field of each rung
  against the reference, on odd and prime sizes, by relative RMSE.
- For each shipped semiring, `semimarkov_scan` on every backend equals the
  generic scan (`backend="reference"`) on hypothesis-drawn problems.

The Triton rung runs through Triton's interpreter without CUDA (conftest.py
sets TRITON_INTERPRET=1 before Triton is imported), in float32; the other
rungs in float64.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import perturbed, tiny_problems

from semiring_semicrf import (
    CrossEntropySemiring,
    EntropySemiring,
    KLDivergenceSemiring,
    KMaxSemiring,
    LogSemiring,
    MaxSemiring,
    SemiMarkovPotentials,
    StdSemiring,
    backends,
    posterior,
    semimarkov_scan,
)
from semiring_semicrf.backends.reference import ReferenceBackend
from semiring_semicrf.posterior import Posterior
from semiring_semicrf.testing import enumerate_structures

# log(0) = -inf ends a log-sum-exp over impossible terms; the interpreter (numpy) warns.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
RUNGS = ["torch", "triton"]
FIELDS = list(Posterior.FIELDS)
# (B, T, K, C): odd and prime sizes, K > T, T = 1, a single label.
SIZES = [(3, 7, 5, 3), (2, 11, 3, 5), (5, 13, 7, 2), (2, 3, 5, 7), (1, 1, 3, 1)]


def relative_rmse(out: torch.Tensor, ref: torch.Tensor, floor: float = 1e-6) -> float:
    """`||out - ref|| / max(||ref||, floor)` in float64 (survives long
    reductions better than an elementwise tolerance)."""
    out, ref = out.double().cpu(), ref.double().cpu()
    return float((out - ref).norm() / max(float(ref.norm()), floor))


def random_problem(B, T, K, C, seed, dtype=torch.float64, dependent=False):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    transition = rand(K, C, C) if dependent else rand(C, C)
    tensors = dict(scores=rand(B, T, C), transition=transition, duration=rand(K, C), start=rand(C), end=rand(C),
                   start_scores=rand(B, T, C), end_scores=rand(B, T, C))
    return SemiMarkovPotentials(lengths=lengths, **{k: v.to(dtype) for k, v in tensors.items()})


def as_dtype(p: SemiMarkovPotentials, dtype) -> SemiMarkovPotentials:
    return SemiMarkovPotentials(lengths=p.lengths, validate_args=False,
                                **{k: v.detach().to(dtype) for k, v in p.tensors().items()})


def reference_posterior(p: SemiMarkovPotentials) -> Posterior:
    rung = ReferenceBackend()
    factors = as_dtype(p, torch.float64).factors()
    return rung.outside(factors, rung.inside(factors)[1])


# -- the reference itself -------------------------------------------------------
@settings(deadline=None, max_examples=20)
@given(tiny_problems(max_B=2, max_T=6, max_K=3, max_C=3))
def test_reference_posterior_equals_brute_force(p):
    post = reference_posterior(p)
    for b in range(p.batch_size):
        truth = enumerate_structures(p, b)
        L = int(p.lengths[b])
        starts = torch.zeros(p.T, p.C, dtype=torch.float64)
        ends = torch.zeros(p.T, p.C, dtype=torch.float64)
        first = torch.zeros(p.C, dtype=torch.float64)
        for segments, prob in zip(truth.structures, truth.probabilities):
            for s, e, c in segments:
                starts[s, c] += prob
                ends[e - 1, c] += prob
            first[segments[0][2]] += prob
        torch.testing.assert_close(post.log_z[b], truth.log_partition)
        torch.testing.assert_close(post.segment_start[b], starts)
        torch.testing.assert_close(post.segment_end[b], ends)
        torch.testing.assert_close(post.first[b], first)
        assert not post.segment_start[b, L:].any()


# -- the ladder ---------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("rung", RUNGS)
def test_every_rung_matches_the_reference_posterior(rung, size):
    dtype = torch.float32 if rung == "triton" else torch.float64
    tolerance = 1e-5 if rung == "triton" else 1e-12
    p64 = random_problem(*size, seed=sum(size))
    ref = reference_posterior(p64)
    post = posterior(as_dtype(p64, dtype), backend=rung)
    for name in FIELDS:
        got, want = getattr(post, name), getattr(ref, name)
        assert got.shape == want.shape and got.dtype == dtype, name
        assert relative_rmse(got, want) < tolerance, (name, relative_rmse(got, want))
    assert relative_rmse(post.label_marginals(), ref.label_marginals()) < tolerance


@pytest.mark.parametrize("size", SIZES[:3], ids=lambda s: "x".join(map(str, s)))
def test_torch_rung_matches_the_reference_with_duration_dependent_transitions(size):
    p = random_problem(*size, seed=7 * sum(size), dependent=True)
    ref, post = reference_posterior(p), posterior(p, backend="torch")
    for name in FIELDS:
        assert relative_rmse(getattr(post, name), getattr(ref, name)) < 1e-12, name


def test_select_walks_down_the_ladder():
    p = random_problem(2, 5, 3, 2, seed=0)
    assert backends.select("auto", p, "log").name == "torch"  # on the CPU
    assert backends.select("auto", p, "viterbi").name == "reference"
    assert backends.select("torch", p, "sample").name == "reference"  # torch does not sample itself
    assert backends.select("reference", p, "log").name == "reference"
    explicit = SemiMarkovPotentials.from_edges(p.to_edges())
    assert backends.select("auto", explicit, "log").name == "reference"
    with pytest.raises(ValueError, match="float32"):
        backends.select("triton", p, "log")  # named explicitly, it cannot run float64
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.select("cuda", p, "log")
    with pytest.raises(ValueError, match="query"):
        backends.select("auto", p, "marginals")


# -- semimarkov_scan: every semiring on every backend ---------------------------------
SEMIRINGS = [LogSemiring(), MaxSemiring(), KMaxSemiring(3), StdSemiring(), EntropySemiring(), CrossEntropySemiring(),
             KLDivergenceSemiring()]


@settings(deadline=None, max_examples=15)
@given(p=tiny_problems(max_B=3, max_T=7, max_K=4, max_C=3), semiring=st.sampled_from(SEMIRINGS),
       backend=st.sampled_from(["auto", "torch", "triton"]), seed=st.integers(0, 2**16))
def test_semimarkov_scan_equals_the_generic_scan_on_every_backend(p, semiring, backend, seed):
    if backend == "triton":
        if p.duration_dependent:
            return  # the kernels refuse (K, C, C) transitions: test_kernels checks the error
        p = as_dtype(p, torch.float32)
    pots = (p, perturbed(p, seed))[:semiring.num_potentials]
    got = semimarkov_scan(pots, semiring, backend=backend)
    want = semimarkov_scan(tuple(as_dtype(x, torch.float64) for x in pots), semiring, backend="reference")
    assert got.shape == want.shape
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), (got, want)
    tolerance = 2e-4 if p.dtype == torch.float32 else 1e-9
    assert relative_rmse(got[finite], want[finite], floor=1.0) < tolerance, (got, want)


@pytest.mark.parametrize("semiring", [LogSemiring(), MaxSemiring(), KMaxSemiring(2), EntropySemiring()])
def test_semimarkov_scan_is_differentiable_on_every_path(semiring):
    p = random_problem(2, 6, 3, 2, seed=3)
    leaves = {k: v.clone().requires_grad_() for k, v in p.tensors().items()}
    q = SemiMarkovPotentials(lengths=p.lengths, **leaves)
    fast = torch.autograd.grad(semimarkov_scan(q, semiring).sum(), list(leaves.values()))
    slow = torch.autograd.grad(semimarkov_scan(q, semiring, backend="reference").sum(), list(leaves.values()))
    for name, a, b in zip(leaves, fast, slow):
        torch.testing.assert_close(a, b, msg=name)
