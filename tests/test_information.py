"""Entropy, cross-entropy and KL: accuracy in float32, the +inf convention
for what q forbids, and sequences with no allowed segmentation.

Ground truths: brute force over every segmentation (float64) and the same
model in float64 (float32 inputs converted exactly). The Triton kernels run
through Triton's interpreter on CPU tensors (conftest.py).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import perturbed, tiny_problems

from semiring_semicrf import (
    CrossEntropySemiring,
    EntropySemiring,
    KLDivergenceSemiring,
    SemiMarkovDistribution,
    SemiMarkovPotentials,
    semimarkov_scan,
)
from semiring_semicrf import information as info
from semiring_semicrf.autograd import posterior
from semiring_semicrf.testing import enumerate_structures

SEMIRINGS = {"entropy": EntropySemiring(), "cross_entropy": CrossEntropySemiring(), "kl": KLDivergenceSemiring()}
FUNCTIONS = {"entropy": info.entropy, "cross_entropy": info.cross_entropy, "kl": info.kl}
pytestmark = [pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]


def cast(p: SemiMarkovPotentials, dtype, requires_grad: bool = False) -> SemiMarkovPotentials:
    return p.replace(**{n: t.detach().to(dtype).requires_grad_(requires_grad) for n, t in p.tensors().items()})


def value(kind: str, p, q=None, backend: str = "auto") -> torch.Tensor:
    return FUNCTIONS[kind](p, backend=backend) if kind == "entropy" else FUNCTIONS[kind](p, q, backend=backend)


def brute(kind: str, p, q=None) -> torch.Tensor:
    out = []
    for b in range(p.batch_size):
        e = enumerate_structures(cast(p, torch.float64), b)
        if kind == "entropy":
            out.append(e.entropy())
        else:
            other = enumerate_structures(cast(q, torch.float64), b)
            if torch.isneginf(other.log_partition) and torch.isfinite(e.log_partition):
                out.append(torch.tensor(math.inf, dtype=torch.float64))  # every segmentation of p is q-forbidden
            else:
                out.append(e.cross_entropy(other) if kind == "cross_entropy" else e.kl(other))
    return torch.stack(out)


def within_budget(got: torch.Tensor, exact: torch.Tensor, T: int) -> bool:
    """The accuracy asked of float32: 1e-4 of the value plus 1e-6 per position."""
    return bool(((got.double() - exact).abs() <= 1e-4 * exact.abs() + 1e-6 * T).all())


def sharp(T: int, margin: float, high: float = 11.0, C: int = 4, seed: int = 0) -> SemiMarkovPotentials:
    """A planted label per position `margin` above the others (and segments of
    length 2 `margin` below length 1): log Z about `high * T`, entropy tiny."""
    g = torch.Generator().manual_seed(seed)
    planted = torch.nn.functional.one_hot(torch.randint(C, (1, T), generator=g), C).bool()
    scores = torch.where(planted, high, high - margin) + 0.1 * torch.randn(1, T, C, generator=g)
    duration = torch.zeros(2, C)
    duration[1] = -margin
    return SemiMarkovPotentials(scores, torch.zeros(C, C), duration)


# -- item 1: float32 keeps the digits of a small entropy ------------------------------------------

@pytest.mark.parametrize("backend, T", [("auto", 4000), ("triton", 600)])  # the interpreter is slow
def test_sharp_model_keeps_the_entropy(backend, T):
    """At T = 4000, log Z about 4.4e4 and an entropy about 6e-4:
    `log Z - <mu, theta>` in float32 returned -0.0039; the local sum is
    within budget of float64, and within 1e-3 of it."""
    p32 = sharp(T, margin=20.0)
    exact = info.entropy(cast(p32, torch.float64))
    assert 1e-5 < float(exact) < 1e-3
    naive = posterior(p32).log_z - info.expected_score(posterior(p32), p32, p32)
    assert abs(float(naive) - float(exact)) > 0.5 * float(exact)  # the example does exercise the cancellation
    got = info.entropy(p32, backend=backend)
    assert got.dtype == torch.float32 and within_budget(got, exact, T)
    assert abs(float(got) - float(exact)) <= 1e-3 * float(exact)


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_eight_positions_with_large_transitions_give_a_positive_exact_entropy(backend):
    """Transitions of scale 100: `log Z - <mu, theta>` in float32 was
    negative (-3.1e-5) for an entropy of 1.7e-7."""
    g = torch.Generator().manual_seed(3)
    p = SemiMarkovPotentials(torch.randn(1, 8, 3, generator=g), 100 * torch.randn(3, 3, generator=g),
                             torch.randn(3, 3, generator=g))
    exact = brute("entropy", p)
    got = info.entropy(p, backend=backend)
    assert float(got) >= 0
    torch.testing.assert_close(got.double(), exact, rtol=1e-4, atol=1e-12)


def test_grad_and_no_grad_paths_agree_at_T_2000_scale_30():
    """They used to differ (407.60 against 406.32, float64 406.38): one
    computation now serves both, and it follows float64."""
    g = torch.Generator().manual_seed(0)
    p = SemiMarkovPotentials(30 * torch.randn(1, 2000, 4, generator=g), torch.randn(4, 4, generator=g),
                             torch.randn(4, 4, generator=g))
    q = perturbed(cast(p, torch.float64), 1)
    q32 = cast(q, torch.float32)
    for kind in sorted(SEMIRINGS):
        other = None if kind == "entropy" else q32
        without = value(kind, p, other)
        with_grad = value(kind, cast(p, torch.float32, requires_grad=True), other)
        assert with_grad.requires_grad
        torch.testing.assert_close(with_grad.detach(), without, rtol=0, atol=0)
        exact = value(kind, cast(p, torch.float64), None if kind == "entropy" else q)
        assert within_budget(without, exact, 2000), kind


@settings(deadline=None, max_examples=5)
@given(T=st.integers(20, 120), margin=st.floats(0.5, 25.0), kind=st.sampled_from(sorted(SEMIRINGS)),
       seed=st.integers(0, 2**16))
def test_triton_float32_error_scales_with_the_entropy(T, margin, kind, seed):
    p32 = sharp(T, margin=margin, seed=seed)
    q32 = None if kind == "entropy" else cast(perturbed(cast(p32, torch.float64), seed), torch.float32)
    exact = value(kind, cast(p32, torch.float64), None if q32 is None else cast(q32, torch.float64))
    assert within_budget(value(kind, p32, q32, backend="triton"), exact, T)


# -- every rung against brute force ---------------------------------------------------------------------

@settings(deadline=None, max_examples=30)
@given(p=tiny_problems(), kind=st.sampled_from(sorted(SEMIRINGS)), backend=st.sampled_from(["auto", "reference"]),
       seed=st.integers(0, 2**16))
def test_information_equals_brute_force(p, kind, backend, seed):
    q = None if kind == "entropy" else perturbed(p, seed)
    torch.testing.assert_close(value(kind, p, q, backend), brute(kind, p, q), rtol=1e-9, atol=1e-10)


@settings(deadline=None, max_examples=8)
@given(p=tiny_problems(max_B=2, max_T=6, max_K=3, max_C=3, duration_dependent=False),
       kind=st.sampled_from(sorted(SEMIRINGS)), seed=st.integers(0, 2**16))
def test_triton_information_equals_brute_force(p, kind, seed):
    q = None if kind == "entropy" else perturbed(p, seed)
    got = value(kind, cast(p, torch.float32), None if q is None else cast(q, torch.float32), "triton")
    torch.testing.assert_close(got.double(), brute(kind, p, q), rtol=2e-5, atol=2e-6)


# -- item 2: +inf where p gives mass to what q forbids ------------------------------------------------

def forbidden_pair(mass_gap: float):
    """p allows the transition 0 -> 1 with a small probability; q forbids it."""
    g = torch.Generator().manual_seed(9)
    p = SemiMarkovPotentials(torch.randn(2, 6, 2, generator=g, dtype=torch.float64),
                             torch.tensor([[0.0, -mass_gap], [0.0, 0.0]], dtype=torch.float64),
                             torch.randn(3, 2, generator=g, dtype=torch.float64), torch.tensor([6, 4]))
    q = p.replace(transition=torch.tensor([[0.0, -math.inf], [0.0, 0.0]], dtype=torch.float64))
    return p, q


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cross_entropy_and_kl_are_inf_for_any_mass_on_a_forbidden_part(dtype):
    p, q = forbidden_pair(23.0)
    mass = posterior(p).transition[:, 0, 1]
    assert (mass > 1e-10).all() and (mass < 1e-8).all()  # a tolerance of sqrt(eps) used to drop it
    for kind in ("cross_entropy", "kl"):
        assert torch.isinf(brute(kind, p, q)).all()
        p_, q_ = cast(p, dtype), cast(q, dtype)
        paths = {"no grad": value(kind, p_, q_), "triton": value(kind, p_, q_, "triton") if dtype == torch.float32
                 else value(kind, p_, q_), "grad": value(kind, cast(p, dtype, True), cast(q, dtype, True)),
                 "generic scan": semimarkov_scan((p_, q_), SEMIRINGS[kind], backend="reference"),
                 "distribution": getattr(SemiMarkovDistribution.from_potentials(p_), kind)(
                     SemiMarkovDistribution.from_potentials(q_))}
        for name, got in paths.items():
            assert torch.isposinf(got).all(), (kind, name, got)


def test_a_part_q_forbids_that_p_never_uses_keeps_kl_finite():
    p, q = forbidden_pair(math.inf)
    for kind in ("cross_entropy", "kl"):
        got = value(kind, p, q)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, brute(kind, p, q))


# -- item 3: no allowed segmentation ----------------------------------------------------------------------

def untileable(dtype=torch.float64, requires_grad=False):
    """Only segments of length 2: the first sequence (length 3) has no
    segmentation, the second (length 2) has."""
    g = torch.Generator().manual_seed(2)
    duration = torch.randn(2, 2, generator=g, dtype=dtype)
    duration[0] = -math.inf
    tensors = (torch.randn(2, 3, 2, generator=g, dtype=dtype), torch.randn(2, 2, generator=g, dtype=dtype), duration)
    return [t.requires_grad_(requires_grad) for t in tensors]


@pytest.mark.parametrize("backend", ["auto", "torch", "triton", "reference"])
def test_no_segmentation_has_defined_values_and_finite_gradients(backend):
    dtype = torch.float32 if backend == "triton" else torch.float64
    scores, transition, duration = untileable(dtype, requires_grad=True)
    d = SemiMarkovDistribution(scores, transition, duration, lengths=torch.tensor([3, 2]), backend=backend)
    assert torch.isneginf(d.partition[0]) and torch.isfinite(d.partition[1])
    log_prob = d.log_prob(d.argmax)
    assert torch.isneginf(log_prob[0]) and torch.isfinite(log_prob[1])
    values = {"entropy": d.entropy(), "kl": d.kl(d), "cross_entropy": d.cross_entropy(d)}
    assert all(float(v[0].detach()) == 0.0 for v in values.values())
    torch.testing.assert_close(values["entropy"][1].double(), brute("entropy", d.potentials)[1], rtol=1e-5, atol=1e-6)
    assert float(values["kl"][1]) == pytest.approx(0.0, abs=1e-6)
    total = sum(v.sum() for v in values.values()) + torch.where(torch.isfinite(log_prob), log_prob, 0.0).sum()
    grads = torch.autograd.grad(total, [scores, transition, duration])
    for grad in grads:
        assert torch.isfinite(grad).all()
    assert torch.equal(grads[0][0], torch.zeros_like(grads[0][0]))  # every value of sequence 0 is a constant


def test_no_segmentation_agrees_with_the_generic_scan_and_brute_force():
    scores, transition, duration = untileable()
    p = SemiMarkovPotentials(scores, transition, duration, torch.tensor([3, 2]))
    for kind in sorted(SEMIRINGS):
        other = None if kind == "entropy" else p
        generic = semimarkov_scan(p if other is None else (p, other), SEMIRINGS[kind], backend="reference")
        torch.testing.assert_close(value(kind, p, other), generic)
        torch.testing.assert_close(generic, brute(kind, p, other))
        assert float(generic[0]) == 0.0


def test_only_q_without_segmentation_makes_kl_inf():
    scores, transition, duration = untileable()
    q = SemiMarkovPotentials(scores, transition, duration, torch.tensor([3, 2]))
    p = q.replace(duration=torch.zeros_like(duration))
    for kind in ("cross_entropy", "kl"):
        got = value(kind, p, q)
        assert torch.isposinf(got[0])
        torch.testing.assert_close(got, brute(kind, p, q))
        torch.testing.assert_close(semimarkov_scan((p, q), SEMIRINGS[kind], backend="reference"), got)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("margin", [None, 20.0])
def test_gpu_float32_information_within_budget_at_T_20000(margin):
    """The kernels on hardware (approximate exp2/log2) against float64 on the CPU."""
    T = 20_000
    if margin is None:
        g = torch.Generator().manual_seed(5)
        p = SemiMarkovPotentials(3 * torch.randn(1, T, 6, generator=g), torch.randn(6, 6, generator=g),
                                 torch.randn(12, 6, generator=g))
    else:
        p = sharp(T, margin=margin)
    q = cast(perturbed(cast(p, torch.float64), 6), torch.float32)

    def on_gpu(m):
        moved = m.replace(**{n: t.cuda() for n, t in m.tensors().items()})
        moved.lengths = m.lengths.cuda()
        return moved

    for kind in sorted(SEMIRINGS):
        other = None if kind == "entropy" else q
        exact = value(kind, cast(p, torch.float64), None if other is None else cast(other, torch.float64))
        got = value(kind, on_gpu(p), None if other is None else on_gpu(other)).cpu()
        assert within_budget(got, exact, T), (kind, float(got), float(exact))
