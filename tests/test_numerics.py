"""Numerics: NaN in gives a clear error or NaN out (never a finite wrong
number); -inf potentials are hard constraints that every query respects;
half/bfloat16 inputs are upcast to `validation.UPCAST_DTYPE`; float32 holds
against float64 at T = 1e5 on the CPU."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_harness import TENSOR_NAMES, assert_matches, problems, reference_label_marginals

from semiring_semicrf import EntropySemiring, SemiMarkovPotentials, semimarkov_scan, validation
from semiring_semicrf.autograd import log_partition, posterior
from semiring_semicrf.decoding import topk, viterbi
from semiring_semicrf.distribution import SemiMarkovDistribution
from semiring_semicrf.sampling import sample
from semiring_semicrf.segmentation import Segmentation
from semiring_semicrf.testing import enumerate_structures

NEG_INF = float("-inf")


# -- hard constraints ------------------------------------------------------------------------------
@st.composite
def constrained_problems(draw):
    """A tiny problem with -inf transitions (label pairs), start and end
    labels and durations; some sequences may have no allowed segmentation."""
    problem = draw(problems(max_T=5))
    kwargs = problem.kwargs()
    for name in ("transition", "start", "end", "duration"):
        tensor = kwargs[name]
        forbid = torch.tensor(draw(st.lists(st.booleans(), min_size=tensor.numel(), max_size=tensor.numel())))
        rate = draw(st.sampled_from([0.0, 0.3, 1.0]))
        keep = torch.rand(tensor.shape, generator=problem.generator) >= rate
        tensor.masked_fill_(forbid.view(tensor.shape) & ~keep, NEG_INF)
    return problem, kwargs


def forbidden_moves(segments, kwargs) -> list:
    """The -inf terms a segmentation `[(start, end, label), ...]` uses."""
    bad = []
    transition, duration = kwargs["transition"], kwargs["duration"]
    for i, (s, e, c) in enumerate(segments):
        if duration[e - s - 1, c] == NEG_INF:
            bad.append(("duration", e - s, c))
        if i == 0:
            if kwargs["start"][c] == NEG_INF:
                bad.append(("start", c))
        else:
            prev = segments[i - 1][2]
            pair = transition[e - s - 1, prev, c] if transition.dim() == 3 else transition[prev, c]
            if pair == NEG_INF:
                bad.append(("transition", prev, c))
    if segments and kwargs["end"][segments[-1][2]] == NEG_INF:
        bad.append(("end", segments[-1][2]))
    return bad


def check_structures(labels, starts, potentials, kwargs, feasible, what):
    """Every entry `(..., B, T)` is empty exactly where the sequence has no
    allowed segmentation, and otherwise a valid segmentation using no
    forbidden move."""
    seg = Segmentation(labels, starts)
    nested = seg.to_segments()
    flat = nested if labels.dim() == 2 else [row for rows in nested for row in rows]
    for i, segments in enumerate(flat):
        b = i % potentials.batch_size
        if not feasible[b]:
            assert segments == [], f"{what}: sequence {b} has no allowed segmentation, got {segments}"
            continue
        assert forbidden_moves(segments, kwargs) == [], f"{what} uses forbidden moves: {segments}"
        assert segments[-1][1] == int(potentials.lengths[b])


@settings(max_examples=40)
@given(case=constrained_problems())
def test_minus_inf_constraints_hold_in_every_query(case):
    problem, kwargs = case
    leaves = {k: v.requires_grad_() for k, v in kwargs.items() if v.is_floating_point()}
    potentials = SemiMarkovPotentials(**kwargs)
    enums = [enumerate_structures(potentials, b) for b in range(problem.B)]
    feasible = [bool(torch.isfinite(e.log_partition)) for e in enums]

    # partition and its gradients: exact, finite, zero on forbidden entries
    log_z = log_partition(potentials)
    assert_matches(log_z, torch.stack([e.log_partition for e in enums]))
    grads = dict(zip(leaves, torch.autograd.grad(log_z[torch.isfinite(log_z)].sum(), list(leaves.values()),
                                                 allow_unused=True)))
    for name, grad in grads.items():
        grad = torch.zeros_like(leaves[name]) if grad is None else grad
        assert torch.isfinite(grad).all(), f"d log Z / d {name} is not finite"
        assert (grad[torch.isneginf(leaves[name].detach())] == 0).all(), f"gradient on a forbidden {name} entry"

    # marginals: zero on forbidden moves, and exact
    post = posterior(potentials)
    assert_matches(post.label_marginals(), reference_label_marginals(potentials))
    forbidden_pairs = torch.isneginf(kwargs["transition"].detach())
    assert (post.transition[forbidden_pairs.expand_as(post.transition)] == 0).all()
    assert (post.first[:, torch.isneginf(kwargs["start"].detach())] == 0).all()
    assert (post.last[:, torch.isneginf(kwargs["end"].detach())] == 0).all()
    assert (post.duration[:, torch.isneginf(kwargs["duration"].detach())] == 0).all()

    # max / argmax / k-best never use a forbidden move
    score, labels, starts = viterbi(potentials)
    assert_matches(score, torch.stack([e.max() for e in enums]))
    check_structures(labels, starts, potentials, kwargs, feasible, "viterbi")
    scores, labels, starts = topk(potentials, 4)
    assert_matches(scores, torch.stack([e.topk(4) for e in enums], dim=1))
    for r in range(4):
        reachable = [f and bool(torch.isfinite(scores[r, b])) for b, f in enumerate(feasible)]
        check_structures(labels[r], starts[r], potentials, kwargs, reachable, f"top-{r + 1}")

    # samples never contain a forbidden move
    labels, starts = sample(potentials, 30, torch.Generator().manual_seed(0))
    check_structures(labels, starts, potentials, kwargs, feasible, "sample")

    # entropy: finite and exact wherever a segmentation is allowed, on each
    # path: the Entropy semiring, the distribution's closed form from expected
    # counts (no grad), and its differentiable checkpointed scan (grad)
    d = SemiMarkovDistribution.from_potentials(potentials)
    with torch.no_grad():
        closed_form = d.entropy()
    expected = torch.stack([e.entropy() for e in enums])
    ok = torch.tensor(feasible)
    for entropy in (semimarkov_scan(potentials, EntropySemiring()), closed_form, d.entropy()):
        assert torch.isfinite(entropy[ok]).all()
        assert_matches(entropy[ok], expected[ok])

    # the distribution's own argmax and samples
    argmax = d.argmax
    check_structures(argmax.labels, argmax.starts, potentials, kwargs, feasible, "distribution argmax")
    drawn = d.sample((5,), generator=torch.Generator().manual_seed(1))
    check_structures(drawn.labels, drawn.starts, potentials, kwargs, feasible, "distribution sample")


@pytest.mark.parametrize("dependent", [False, True])
def test_all_forbidden_sequence_has_minus_inf_log_z_and_zero_finite_gradients(dependent):
    """Sequence 1 cannot be segmented at all (its only start label cannot
    reach an allowed end label); sequence 0 (length 1) can."""
    g = torch.Generator().manual_seed(0)
    B, T, K, C = 2, 6, 3, 3
    transition = torch.randn(*((K,) if dependent else ()), C, C, generator=g, dtype=torch.float64)
    transition[..., 0, :] = NEG_INF  # nothing follows label 0
    start = torch.tensor([0.0, NEG_INF, NEG_INF], dtype=torch.float64)  # only label 0 starts
    duration = torch.randn(K, C, generator=g, dtype=torch.float64)
    duration[:, 0] = torch.tensor([0.0, NEG_INF, NEG_INF])  # label 0 lasts one position
    kwargs = dict(scores=torch.randn(B, T, C, generator=g, dtype=torch.float64), transition=transition,
                  duration=duration, start=start, end=torch.zeros(C, dtype=torch.float64))
    leaves = {k: v.requires_grad_() for k, v in kwargs.items()}
    potentials = SemiMarkovPotentials(**kwargs, lengths=torch.tensor([1, T]))

    log_z = log_partition(potentials)
    assert torch.isfinite(log_z[0]) and log_z[1] == NEG_INF
    grads = torch.autograd.grad(log_z.sum(), list(leaves.values()))
    for name, grad in zip(leaves, grads):
        assert torch.isfinite(grad).all(), name
    scores_grad = grads[0]
    assert (scores_grad[1] == 0).all()
    # the finite sequence alone gives the same gradients (the -inf one adds nothing)
    grads_alone = torch.autograd.grad(log_partition(potentials)[0], list(leaves.values()))
    for grad, alone in zip(grads, grads_alone):
        torch.testing.assert_close(grad, alone, rtol=0, atol=0)

    post = posterior(potentials)
    assert (post.label_marginals()[1] == 0).all() and (post.transition[1] == 0).all()
    score, labels, starts = viterbi(potentials)
    assert score[1] == NEG_INF and (labels[1] == -1).all() and not starts[1].any()
    labels, starts = sample(potentials, 5, torch.Generator().manual_seed(1))
    assert (labels[:, 1] == -1).all() and not starts[:, 1].any()


# -- NaN ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TENSOR_NAMES)
def test_nan_is_a_clear_error_under_validate_args(name):
    g = torch.Generator().manual_seed(2)
    B, T, K, C = 2, 5, 3, 2
    kwargs = dict(scores=torch.randn(B, T, C, generator=g), transition=torch.randn(C, C, generator=g),
                  duration=torch.randn(K, C, generator=g), start=torch.randn(C, generator=g),
                  end=torch.randn(C, generator=g), start_scores=torch.randn(B, T, C, generator=g),
                  end_scores=torch.randn(B, T, C, generator=g))
    kwargs[name].view(-1)[-1] = float("nan")
    with pytest.raises(ValueError, match=rf"^{name} contains NaN"):
        SemiMarkovPotentials(**kwargs)


def _poisoned(problem, position):
    """(clean, poisoned) potentials: one NaN score inside sequence 1's length."""
    b = 1
    kwargs = problem.kwargs()
    kwargs["scores"][b, position % problem.lengths[b], position % problem.C] = float("nan")
    return problem.potentials(), SemiMarkovPotentials(**kwargs, validate_args=False)


def _nan_log_z(potentials):
    return log_partition(potentials)[:, None]


def _nan_gradient(potentials):
    scores = potentials.scores.detach().requires_grad_()
    (grad,) = torch.autograd.grad(log_partition(potentials.replace(scores=scores)).sum(), scores)
    return grad


def _nan_marginals(potentials):
    return posterior(potentials).label_marginals()


def _nan_entropy(potentials):
    return semimarkov_scan(potentials, EntropySemiring())[:, None]


def _nan_viterbi(potentials):
    score, labels, starts = viterbi(potentials)
    return torch.where(starts, labels, -2).double().where(~score.isnan()[:, None], float("nan"))


def _nan_samples(potentials):
    labels, starts = sample(potentials, 4, torch.Generator().manual_seed(0))
    empty = (labels == -1).all(0).all(-1) & ~starts.any(0).any(-1)  # (B,)
    return labels.transpose(0, 1).flatten(1).double().where(~empty[:, None], float("nan"))


@pytest.mark.parametrize("query", [
    pytest.param(_nan_log_z, id="log_partition"),
    pytest.param(_nan_gradient, id="gradient"),
    pytest.param(_nan_marginals, id="marginals"),
    pytest.param(_nan_entropy, id="entropy"),
    pytest.param(_nan_viterbi, id="viterbi"),
    pytest.param(_nan_samples, id="samples (empty = NaN)"),
])
@settings(max_examples=20)
@given(problem=problems(min_B=2), position=st.integers(0, 10**6))
def test_nan_scores_without_validation_give_nan_never_a_finite_wrong_number(query, problem, position):
    """A NaN inside sequence 1's length poisons exactly sequence 1: its
    result is all NaN (an empty argmax and empty samples count as NaN), the
    other sequences' results are bitwise those of the clean input (for
    samples, which draw fewer random numbers then: not empty)."""
    clean, poisoned = _poisoned(problem, position)
    result, expected = query(poisoned), query(clean)
    valid = torch.arange(problem.T) < problem.lengths[1]
    row = result[1, valid.expand(result.shape[1] // problem.T, -1).flatten()] if result.shape[1] > 1 else result[1]
    assert torch.isnan(row).all(), f"finite output for a NaN sequence: {row}"
    others = torch.arange(problem.B) != 1
    if query is _nan_samples:
        assert not torch.isnan(result[others]).any()
    else:
        torch.testing.assert_close(result[others], expected[others], rtol=0, atol=0)


@pytest.mark.parametrize("query", [
    pytest.param(_nan_gradient, id="gradient"),
    pytest.param(_nan_marginals, id="marginals"),
])
def test_nan_in_a_one_position_sequence_gives_nan_marginals(query):
    """Label 1's one-segment path never meets the NaN of label 0, so only a
    NaN log Z can poison its probability."""
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(1, 1, 2, generator=g, dtype=torch.float64)
    scores[0, 0, 0] = float("nan")
    potentials = SemiMarkovPotentials(scores, torch.randn(2, 2, generator=g, dtype=torch.float64),
                                      torch.randn(1, 2, generator=g, dtype=torch.float64), validate_args=False)
    result = query(potentials)
    assert torch.isnan(result).all(), result


# -- low precision ------------------------------------------------------------------------------------
def test_upcast_rule_is_float32():
    assert torch.float32 == validation.UPCAST_DTYPE
    assert "float32" in validation.__doc__ + validation.as_float_tensor.__doc__


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_exactly_as_their_float32_upcast(low):
    """Half/bfloat16 inputs give bitwise the float32 results of the same
    (rounded) values in every query; a half leaf gets a half gradient."""
    g = torch.Generator().manual_seed(3)
    B, T, K, C = 2, 7, 3, 3
    raw = dict(scores=torch.randn(B, T, C, generator=g), transition=torch.randn(C, C, generator=g),
               duration=torch.randn(K, C, generator=g), start=torch.randn(C, generator=g))
    lengths = torch.tensor([T, 4])
    low_kwargs = {k: v.to(low).requires_grad_() for k, v in raw.items()}
    up_kwargs = {k: v.detach().float().requires_grad_() for k, v in low_kwargs.items()}
    low_p = SemiMarkovPotentials(**low_kwargs, lengths=lengths)
    up_p = SemiMarkovPotentials(**up_kwargs, lengths=lengths)
    assert low_p.dtype == torch.float32

    def same(a, b):
        assert a.dtype == b.dtype and torch.equal(a, b), (a, b)

    log_z, log_z_up = log_partition(low_p), log_partition(up_p)
    same(log_z, log_z_up)
    grads = torch.autograd.grad(log_z.sum(), list(low_kwargs.values()))
    grads_up = torch.autograd.grad(log_z_up.sum(), list(up_kwargs.values()))
    for grad, grad_up in zip(grads, grads_up):
        assert grad.dtype == low
        same(grad, grad_up.to(low))
    same(semimarkov_scan(low_p), semimarkov_scan(up_p))
    same(semimarkov_scan(low_p, EntropySemiring()), semimarkov_scan(up_p, EntropySemiring()))
    same(posterior(low_p).label_marginals(), posterior(up_p).label_marginals())
    for x, y in zip(viterbi(low_p), viterbi(up_p)):
        same(x, y)
    samples = [sample(p, 3, torch.Generator().manual_seed(0)) for p in (low_p, up_p)]
    for x, y in zip(*samples):
        same(x, y)


def test_low_precision_mixed_with_float64_is_a_clear_error():
    """The rule is 'upcast to float32, then one dtype': half next to float64 is an error."""
    B, T, K, C = 1, 3, 2, 2
    with pytest.raises(ValueError, match="transition has dtype torch.float64 but scores has torch.float32"):
        SemiMarkovPotentials(torch.randn(B, T, C, dtype=torch.float16), torch.randn(C, C, dtype=torch.float64),
                             torch.randn(K, C, dtype=torch.float64))


# -- long sequences ---------------------------------------------------------------------------------------
def long_problem(dtype, T=100_000, K=6, C=3, seed=0):
    """B = 1; scores with a large common offset (stresses the prefix sums)."""
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(1, T, C, generator=g, dtype=torch.float64) * 2 + 5).to(dtype).requires_grad_()
    transition = torch.randn(C, C, generator=g, dtype=torch.float64).to(dtype)
    duration = torch.randn(K, C, generator=g, dtype=torch.float64).to(dtype)
    return scores, SemiMarkovPotentials(scores, transition, duration)


def long_sequence_errors(T=100_000):
    """`(relative error of log Z, max-abs error of the label marginals)` of
    float32 against float64 at length T."""
    out = {}
    for dtype in (torch.float32, torch.float64):
        scores, potentials = long_problem(dtype, T)
        log_z = log_partition(potentials)
        (marginals,) = torch.autograd.grad(log_z.sum(), scores)
        out[dtype] = log_z.detach().double(), marginals.double()
    (z32, m32), (z64, m64) = out[torch.float32], out[torch.float64]
    return float(((z32 - z64).abs() / z64.abs()).max()), float((m32 - m64).abs().max())


@pytest.mark.slow
def test_float32_matches_float64_at_T_1e5():
    rel_log_z, marginal_err = long_sequence_errors()
    assert rel_log_z < 1e-4, rel_log_z
    assert marginal_err < 1e-3, marginal_err
