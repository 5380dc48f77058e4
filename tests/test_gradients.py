"""Gradients of the streaming log partition, and of the checkpointed scan.

Ground truths: autograd through the naive generic scan (`semimarkov_scan`,
which builds a graph over all positions) and brute-force expected counts
(the gradient of log Z is the posterior expectation of each input's count).
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import perturbed, tiny_problems
from test_marginals import brute_posterior

from semiring_semicrf import (
    CrossEntropySemiring,
    EdgePotentials,
    EntropySemiring,
    KLDivergenceSemiring,
    LogSemiring,
    SemiMarkovPotentials,
    semimarkov_scan,
)
from semiring_semicrf.autograd import checkpointed_scan, log_partition

TOL = dict(rtol=1e-9, atol=1e-11)


def leaves(p):
    """A copy of `p` whose tensors are fresh leaves that require grad."""
    return p.replace(**{n: t.detach().clone().requires_grad_(True) for n, t in p.tensors().items()})


def grads(value, p, weights):
    """`d sum_b weights[b] value[b] / d tensor` for each tensor of `p` (zeros where unused)."""
    tensors = list(p.tensors().values())
    out = torch.autograd.grad((value * weights).sum(), tensors, allow_unused=True)
    return {n: torch.zeros_like(t) if g is None else g for n, t, g in zip(p.tensors(), tensors, out)}


def brute_gradients(p, weights) -> dict:
    """The gradient of `sum_b weights[b] log Z_b` from brute-force counts."""
    e = brute_posterior(p)
    w = weights.double()
    rule = {"scores": ("labels", False), "start_scores": ("segment_start", False),
            "end_scores": ("segment_end", False), "transition": ("transition", True),
            "duration": ("duration", True), "start": ("first", True), "end": ("last", True)}
    out = {}
    for name in p.tensors():
        field, shared = rule[name]
        weighted = e[field] * w.reshape(-1, *[1] * (e[field].dim() - 1))
        out[name] = weighted.sum(0) if shared else weighted
    return out


@settings(deadline=None, max_examples=30)
@given(p=tiny_problems(), low_memory=st.booleans(), seed=st.integers(0, 2**16))
def test_gradients_equal_naive_scan_and_brute_force(p, low_memory, seed):
    p = leaves(p)
    weights = torch.randn(p.batch_size, generator=torch.Generator().manual_seed(seed), dtype=p.dtype)
    ours = log_partition(p, low_memory=low_memory)
    naive = semimarkov_scan(p, LogSemiring())
    torch.testing.assert_close(ours, naive, **TOL)
    got, want = grads(ours, p, weights), grads(naive, p, weights)
    brute = brute_gradients(p, weights)
    for name in p.tensors():
        torch.testing.assert_close(got[name], want[name], **TOL, msg=name)
        torch.testing.assert_close(got[name], brute[name], **TOL, msg=name)


@pytest.mark.parametrize("dependent", [False, True])
@pytest.mark.parametrize("low_memory", [False, True])
def test_gradcheck_and_gradgradcheck_on_every_input(dependent, low_memory):
    """First and second derivatives (the second: the backends' HVP) of all
    seven inputs against finite differences."""
    g = torch.Generator().manual_seed(1)
    B, T, K, C = 2, 5, 3, 2
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    inputs = (r(B, T, C), r(K, C, C) if dependent else r(C, C), r(K, C), r(C), r(C), r(B, T, C), r(B, T, C))
    lengths = torch.tensor([5, 3])

    def f(scores, transition, duration, start, end, start_scores, end_scores):
        return log_partition(SemiMarkovPotentials(scores, transition, duration, lengths, start, end,
                                                  start_scores, end_scores), low_memory=low_memory)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("case", ["lengths_of_one", "K_is_1", "K_beyond_T", "forbidden_moves"])
@pytest.mark.parametrize("dependent", [False, True])
def test_edge_cases_match_brute_force(case, dependent):
    g = torch.Generator().manual_seed(7)
    B, T, K, C = {"lengths_of_one": (3, 4, 3, 3), "K_is_1": (2, 6, 1, 3),
                  "K_beyond_T": (2, 3, 7, 2), "forbidden_moves": (2, 6, 3, 3)}[case]
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    transition = r(K, C, C) if dependent else r(C, C)
    if case == "forbidden_moves":  # BIO-like: label 2 only after label 1 or itself, never first
        transition[..., 0, 2] = float("-inf")
    start = r(C)
    if case == "forbidden_moves":
        start[2] = float("-inf")
    lengths = torch.ones(B, dtype=torch.int64) if case == "lengths_of_one" else torch.tensor([T] + [T - 1] * (B - 1))
    p = leaves(SemiMarkovPotentials(r(B, T, C), transition, r(K, C), lengths, start, r(C), r(B, T, C), r(B, T, C)))
    weights = torch.ones(B, dtype=torch.float64)
    for low_memory in (False, True):
        ours = log_partition(p, low_memory=low_memory)
        got, brute = grads(ours, p, weights), brute_gradients(p, weights)
        torch.testing.assert_close(ours, brute_posterior(p)["log_z"], **TOL)
        for name in p.tensors():
            assert torch.isfinite(got[name]).all(), name
            torch.testing.assert_close(got[name], brute[name], **TOL, msg=name)
    if case == "forbidden_moves":
        assert (got["transition"][..., 0, 2] == 0).all() and got["start"][2] == 0


@pytest.mark.parametrize("dependent", [False, True])
def test_all_forbidden_gives_minus_inf_and_zero_gradients(dependent):
    """K = 2 and no transition allowed: a sequence of length 3 has no
    segmentation (log Z = -inf, zero gradients, no NaN); its batch-mate of
    length 2 (one segment) is unaffected."""
    g = torch.Generator().manual_seed(2)
    B, T, K, C = 2, 3, 2, 2
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    transition = torch.full((K, C, C) if dependent else (C, C), float("-inf"), dtype=torch.float64)
    p = leaves(SemiMarkovPotentials(r(B, T, C), transition, r(K, C), torch.tensor([3, 2]), r(C), r(C),
                                    r(B, T, C), r(B, T, C)))
    for low_memory in (False, True):
        ours = log_partition(p, low_memory=low_memory)
        assert ours[0] == float("-inf") and torch.isfinite(ours[1])
        only_first = grads(ours, p, torch.tensor([1.0, 0.0], dtype=torch.float64))
        for name, grad in only_first.items():
            assert torch.isfinite(grad).all() and (grad == 0).all(), name
        second = grads(ours, p, torch.tensor([0.0, 1.0], dtype=torch.float64))
        brute = brute_gradients(p, torch.tensor([0.0, 1.0], dtype=torch.float64))
        for name in p.tensors():
            torch.testing.assert_close(second[name], brute[name], **TOL, msg=name)


def test_float32_gradients_follow_float64():
    g = torch.Generator().manual_seed(4)
    p64 = leaves(SemiMarkovPotentials(torch.randn(2, 300, 4, generator=g, dtype=torch.float64) * 3 + 2,
                                      torch.randn(4, 4, generator=g, dtype=torch.float64),
                                      torch.randn(8, 4, generator=g, dtype=torch.float64),
                                      torch.tensor([300, 211])))
    p32 = leaves(p64.replace(**{n: t.float() for n, t in p64.tensors().items()}))
    w = torch.tensor([1.0, -2.0])
    g64, g32 = grads(log_partition(p64), p64, w.double()), grads(log_partition(p32), p32, w)
    for name in g64:
        assert g32[name].dtype == torch.float32
        torch.testing.assert_close(g32[name].double(), g64[name], rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_penalty_is_not_dropped():
    """A penalty on the gradient (create_graph=True) reaches the potentials:
    it equals double autograd through the generic scan (the regression: the
    backward used to be once-differentiable and the penalty's graph was
    silently empty)."""
    g = torch.Generator().manual_seed(3)
    p = leaves(SemiMarkovPotentials(torch.randn(2, 6, 3, generator=g, dtype=torch.float64),
                                    torch.randn(3, 3, generator=g, dtype=torch.float64),
                                    torch.randn(4, 3, generator=g, dtype=torch.float64), torch.tensor([6, 4])))
    penalties = []
    for log_z in (log_partition(p), semimarkov_scan(p, backend="reference")):
        (grad,) = torch.autograd.grad(log_z.sum(), [p.scores], create_graph=True)
        penalty = (grad ** 2).sum() + log_z.sum()
        assert penalty.requires_grad
        penalties.append(torch.autograd.grad(penalty, list(p.tensors().values())))
    for got, want in zip(*penalties):
        torch.testing.assert_close(got, want, **TOL)


def test_user_potentials_are_left_untouched():
    """The Function works on detached copies: a later differentiable scan of
    the same potentials still builds its graph."""
    p = leaves(SemiMarkovPotentials(torch.randn(2, 5, 2), torch.randn(2, 2), torch.randn(3, 2)))
    log_partition(p).sum().backward()
    assert semimarkov_scan(p).requires_grad


# -- explicit edges -------------------------------------------------------------------------

@settings(deadline=None, max_examples=10)
@given(p=tiny_problems(max_B=2, max_T=6, max_K=3, max_C=2), seed=st.integers(0, 2**16))
def test_explicit_edge_gradients_equal_naive_scan(p, seed):
    g = torch.Generator().manual_seed(seed)
    edge = torch.randn(p.batch_size, p.T, p.K + 1, p.C, p.C, generator=g, dtype=torch.float64)
    edge.requires_grad_(True)
    edges = EdgePotentials(edge, p.lengths)
    weights = torch.randn(p.batch_size, generator=g, dtype=torch.float64)
    ours, naive = log_partition(edges), semimarkov_scan(edges)
    torch.testing.assert_close(ours, naive, **TOL)
    (got,) = torch.autograd.grad((ours * weights).sum(), [edge])
    (want,) = torch.autograd.grad((naive * weights).sum(), [edge])
    torch.testing.assert_close(got, want, **TOL)


# -- any semiring, by checkpointing ----------------------------------------------------------

SEMIRINGS = {"log": LogSemiring(), "entropy": EntropySemiring(), "cross_entropy": CrossEntropySemiring(),
             "kl": KLDivergenceSemiring()}


@settings(deadline=None, max_examples=30)
@given(p=tiny_problems(max_T=10), name=st.sampled_from(sorted(SEMIRINGS)), block=st.integers(1, 11),
       explicit=st.booleans(), seed=st.integers(0, 2**16))
def test_checkpointed_scan_gradients_equal_naive_scan(p, name, block, explicit, seed):
    semiring = SEMIRINGS[name]
    models = [p, perturbed(p, seed)][:semiring.num_potentials]
    if explicit:
        models = [EdgePotentials(m.to_edges().detach().clone().requires_grad_(True), m.lengths) for m in models]
    else:
        models = [leaves(m) for m in models]
    arg = models[0] if len(models) == 1 else tuple(models)
    params = [t for m in models for t in m.tensors().values()]
    weights = torch.randn(p.batch_size, generator=torch.Generator().manual_seed(seed), dtype=p.dtype)
    ours = checkpointed_scan(arg, semiring, block_size=block)
    naive = semimarkov_scan(arg, semiring, backend="reference")
    torch.testing.assert_close(ours, naive, **TOL)
    got = torch.autograd.grad((ours * weights).sum(), params, allow_unused=True)
    want = torch.autograd.grad((naive * weights).sum(), params, allow_unused=True)
    for a, b in zip(got, want):
        if b is None:
            assert a is None or (a == 0).all()
        else:
            torch.testing.assert_close(a, b, **TOL)


def test_checkpointed_entropy_gradient_matches_brute_force():
    """d H / d scores by finite differences of brute-force entropies."""
    from semiring_semicrf.testing import enumerate_structures
    g = torch.Generator().manual_seed(5)
    p = leaves(SemiMarkovPotentials(torch.randn(1, 5, 2, generator=g, dtype=torch.float64),
                                    torch.randn(2, 2, generator=g, dtype=torch.float64),
                                    torch.randn(3, 2, generator=g, dtype=torch.float64)))
    (got,) = torch.autograd.grad(checkpointed_scan(p, EntropySemiring(), block_size=2).sum(), [p.scores])
    eps, fd = 1e-6, torch.zeros_like(p.scores)
    for t in range(5):
        for c in range(2):
            shifted = []
            for sign in (1, -1):
                x = p.scores.detach().clone()
                x[0, t, c] += sign * eps
                shifted.append(enumerate_structures(p.replace(scores=x), 0).entropy())
            fd[0, t, c] = (shifted[0] - shifted[1]) / (2 * eps)
    torch.testing.assert_close(got, fd, rtol=1e-5, atol=1e-7)


def test_checkpointed_scan_without_grad_and_bad_block_size():
    p = SemiMarkovPotentials(torch.randn(2, 9, 3), torch.randn(3, 3), torch.randn(4, 3))
    with torch.no_grad():
        torch.testing.assert_close(checkpointed_scan(p, EntropySemiring()),
                                   semimarkov_scan(p, EntropySemiring(), backend="reference"))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="block_size"):
            checkpointed_scan(p, LogSemiring(), block_size=bad)


def test_log_partition_rejects_bad_arguments():
    p = SemiMarkovPotentials(torch.randn(1, 3, 2), torch.randn(2, 2), torch.randn(2, 2))
    with pytest.raises(TypeError, match="potentials"):
        log_partition({"scores": p.scores})
    with pytest.raises(ValueError, match="backend"):
        log_partition(p, backend="gpu")


@pytest.mark.parametrize("dependent", [False, True])
@pytest.mark.parametrize("low_memory", [False, True])
def test_empty_batch(dependent, low_memory):
    C, K = 3, 4
    p = leaves(SemiMarkovPotentials(torch.randn(0, 5, C), torch.randn(K, C, C) if dependent else torch.randn(C, C),
                                    torch.randn(K, C), start_scores=torch.randn(0, 5, C)))
    log_z = log_partition(p, low_memory=low_memory)
    assert log_z.shape == (0,)
    for name, grad in grads(log_z, p, torch.ones(0)).items():
        assert grad.shape == p.tensors()[name].shape and (grad == 0).all(), name
