"""The Triton kernels against the float64 PyTorch scan, on fresh random inputs.

Every check goes through the public API with ``backend="triton"``. Without
CUDA the kernels run on CPU tensors through Triton's interpreter
(``TRITON_INTERPRET=1``, set by conftest.py before Triton is imported), so
sizes stay tiny. Tests marked ``gpu`` run at scale when a GPU is present.

References: log Z and the best score from :func:`semimarkov_scan` in float64;
posteriors as gradients of its log Z (one sequence at a time); a decoded
path is scored from the model's definition and must reach the best score.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from strategies import tiny_problems  # noqa: E402

from semiring_semicrf import (  # noqa: E402  # noqa: E402
    MaxSemiring,
    SemiMarkovPotentials,
    backends,
    kernels,
    log_partition,
    posterior,
    semimarkov_scan,
)
from semiring_semicrf.decoding import viterbi  # noqa: E402
from semiring_semicrf.kernels import common  # noqa: E402
from semiring_semicrf.posterior import Posterior  # noqa: E402

# log(0) = -inf ends a log-sum-exp over impossible terms, 1/0 a weight sum of an
# impossible label (then masked); the interpreter (numpy) warns about both.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
POSTERIOR_FIELDS = ("segment_start", "segment_end", "transition", "duration", "first", "last")


# -- references ---------------------------------------------------------------
def converted(p: SemiMarkovPotentials, device, dtype) -> SemiMarkovPotentials:
    """The same model with every tensor in `dtype` on `device`."""
    return SemiMarkovPotentials(lengths=p.lengths.to(device), validate_args=False,
                                **{k: v.detach().to(device, dtype) for k, v in p.tensors().items()})


def reference_posterior(p: SemiMarkovPotentials) -> Posterior:
    """Expected counts as gradients of the float64 scan's log Z, one sequence
    at a time, w.r.t. (zero) boundary scores, transition, duration, start, end."""
    p = converted(p, p.device, torch.float64)
    B, T, C = p.batch_size, p.T, p.C
    leaves = {k: v.clone().requires_grad_() for k, v in p.tensors().items()}
    for name in ("start_scores", "end_scores"):
        leaves.setdefault(name, torch.zeros(B, T, C, dtype=torch.float64, device=p.device, requires_grad=True))
    log_z = semimarkov_scan(SemiMarkovPotentials(lengths=p.lengths, validate_args=False, **leaves))
    names = ("start_scores", "end_scores", "transition", "duration", "start", "end")
    inputs = [leaves[n] for n in names]
    grads = [[torch.zeros_like(x) if g is None else g
              for x, g in zip(inputs, torch.autograd.grad(log_z[b], inputs, retain_graph=True, allow_unused=True))]
             for b in range(B)]
    per_sequence = [torch.stack([g[i][b] if i < 2 else g[i] for b, g in enumerate(grads)]) for i in range(6)]
    return Posterior(log_z.detach(), *per_sequence)


def segments_of(labels: torch.Tensor, starts: torch.Tensor, length: int) -> list:
    """`[(start, end, label), ...]` of one decoded sequence; the labels must
    be constant inside each segment."""
    bounds = [t for t in range(length) if bool(starts[t])] + [length]
    assert bounds[0] == 0, "the first position must start a segment"
    segments = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        assert bool((labels[s:e] == labels[s]).all()), f"label changes inside segment [{s}, {e})"
        segments.append((s, e, int(labels[s])))
    return segments


def segmentation_score(p: SemiMarkovPotentials, b: int, segments: list) -> float:
    """Float64 score of one segmentation of sequence `b` from the model's
    definition (no prefix sums, no factorization)."""
    t = {k: v.detach().to("cpu", torch.float64) for k, v in p.tensors().items()}
    total, previous = 0.0, None
    for s, e, c in segments:
        total += float(t["scores"][b, s:e, c].sum() + t["duration"][e - s - 1, c])
        total += float(t["start"][c] if previous is None else t["transition"][previous, c])
        total += float(t["start_scores"][b, s, c]) if "start_scores" in t else 0.0
        total += float(t["end_scores"][b, e - 1, c]) if "end_scores" in t else 0.0
        previous = c
    return total + float(t["end"][previous])


# -- checks -------------------------------------------------------------------
def check_log_z(p64: SemiMarkovPotentials, rtol=1e-4):
    p = converted(p64, DEVICE, torch.float32)
    log_z = log_partition(p, backend="triton")
    ref = semimarkov_scan(p64)
    assert log_z.dtype == torch.float32 and log_z.shape == (p.batch_size,)
    torch.testing.assert_close(log_z.double().cpu(), ref.cpu(), rtol=rtol, atol=rtol)


def check_posterior(p64: SemiMarkovPotentials, atol=2e-5):
    p = converted(p64, DEVICE, torch.float32)
    post = posterior(p, backend="triton")
    ref = reference_posterior(p64)
    torch.testing.assert_close(post.log_z.double().cpu(), ref.log_z.cpu(), rtol=1e-4, atol=1e-4)
    for name in POSTERIOR_FIELDS:
        got, want = getattr(post, name), getattr(ref, name)
        assert got.shape == want.shape and got.dtype == torch.float32, name
        torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=1e-4, atol=atol, msg=name)


def check_viterbi(p64: SemiMarkovPotentials, rtol=1e-4):
    p = converted(p64, DEVICE, torch.float32)
    score, labels, starts = viterbi(p, backend="triton")
    best = semimarkov_scan(p64, MaxSemiring())
    torch.testing.assert_close(score.double().cpu(), best.cpu(), rtol=rtol, atol=rtol)
    assert labels.dtype == torch.int64 and starts.dtype == torch.bool
    labels, starts = labels.cpu(), starts.cpu()
    for b, length in enumerate(p64.lengths.tolist()):
        assert bool((labels[b, length:] == -1).all()) and not bool(starts[b, length:].any())
        segments = segments_of(labels[b], starts[b], length)
        assert all(1 <= e - s <= p64.K and 0 <= c < p64.C for s, e, c in segments)
        path = segmentation_score(p64, b, segments)
        assert abs(path - float(best[b])) <= rtol * max(1.0, abs(float(best[b]))), (b, path, float(best[b]))


def structured_problems(**kw):
    return tiny_problems(duration_dependent=False, **kw)


def random_problem(B, T, K, C, lengths=None, extras=False, seed=0, device="cpu", scale=1.0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(device)

    extra = {"start_scores": rand(B, T, C), "end_scores": rand(B, T, C)} if extras else {}
    return SemiMarkovPotentials(rand(B, T, C), rand(C, C), rand(K, C), lengths, start=rand(C), end=rand(C),
                                **extra)


# -- property tests (tiny, interpreter-friendly) -------------------------------
@settings(deadline=None, max_examples=25)
@given(structured_problems(max_B=4, max_T=9, max_K=6, max_C=5))
def test_inside_matches_scan(p64):
    check_log_z(p64)


@settings(deadline=None, max_examples=15)
@given(structured_problems(max_B=3, max_T=8, max_K=5, max_C=4))
def test_outside_matches_scan_gradients(p64):
    check_posterior(p64)


@settings(deadline=None, max_examples=20)
@given(structured_problems(max_B=3, max_T=9, max_K=5, max_C=5))
def test_viterbi_reaches_the_best_score(p64):
    check_viterbi(p64)


@pytest.mark.parametrize("C", [3, 5, 7])
@pytest.mark.parametrize("K", [1, 2, 5])
def test_odd_sizes_all_kernels(K, C):
    # T = 4 < K = 5 covers K > T; lengths of 1 and mixed; K = 5, C = 3 more
    # ring slots than labels (the tiles' lists then hold more slots than
    # previous labels).
    p64 = random_problem(3, 4, K, C, torch.tensor([4, 1, 3]), extras=(C == 5), seed=10 * K + C)
    check_log_z(p64)
    check_posterior(p64)
    check_viterbi(p64)


@pytest.mark.parametrize("K,C", [(3, 5), (9, 2), (5, 12)])
def test_every_tiling_of_the_outside_flow_gives_the_reference(K, C, monkeypatch):
    """The outside flow runs on the forward's 4-d tiles at its own warp
    counts: the end masses summed across label groups through scratch
    (`kernels.common.label_sums_of_lists`), the duration counts rotated
    from ring slots to durations through scratch. Every count gives the
    reference posterior."""
    backward = importlib.import_module("semiring_semicrf.kernels.backward")
    p64 = random_problem(2, 7, K, C, torch.tensor([7, 4]), extras=True, seed=K * C + 2)
    for warps in (1, 2, 4, 8, 16):
        monkeypatch.setattr(backward, "flow_num_warps", lambda kp, cp, w=warps: w)
        check_posterior(p64)


@pytest.mark.parametrize("K,C", [(3, 5), (9, 2), (5, 12)])
def test_every_tiling_of_the_forward_gives_the_reference(K, C):
    """The forward's 4-d tiles (`kernels.common.sweep_tiling`: label groups
    on warps, ring slots on lanes and registers) differ with the warp count,
    and so does the exchange of alpha between threads (a shuffle on one
    warp on the GPU, else through scratch memory and a barrier). Every count
    gives the reference's log Z and best score, tables that agree to
    rounding, and the same back-pointers."""
    from semiring_semicrf.kernels.common import duration_ring, pad, sweep_tiling
    from semiring_semicrf.kernels.forward import forward_sweep
    p64 = random_problem(2, 7, K, C, torch.tensor([7, 4]), extras=True, seed=K * C + 1)
    factors = converted(p64, DEVICE, torch.float32).factors()
    ring = duration_ring(factors)
    log_z, best = semimarkov_scan(p64).cpu(), semimarkov_scan(p64, MaxSemiring()).cpu()
    first = forward_sweep(factors, ring, False, num_warps=1)
    first_max = forward_sweep(factors, ring, True, num_warps=1)
    tilings = set()
    for warps in (1, 2, 4, 8, 16):
        tilings.add(sweep_tiling(pad(K), pad(C), warps))
        result, _, alpha_hat, v_hat, scale, cum = forward_sweep(factors, ring, False, num_warps=warps)
        torch.testing.assert_close(result.double().cpu(), log_z, rtol=1e-5, atol=1e-5)
        without_tables = forward_sweep(factors, ring, False, num_warps=warps, tables=False)[0]
        torch.testing.assert_close(without_tables, result, rtol=1e-6, atol=1e-6)
        for b, length in enumerate((7, 4)):  # rows 1..L are written (v_hat and N from row 0)
            for got, want in zip((alpha_hat, v_hat, scale), first[2:5]):
                torch.testing.assert_close(got[b, 1:length + 1], want[b, 1:length + 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cum, first[5])
        score, final, duration_from, source_from, _, _ = forward_sweep(factors, ring, True, num_warps=warps)
        torch.testing.assert_close(score.double().cpu(), best, rtol=1e-5, atol=1e-5)
        assert torch.equal(final, first_max[1])
        for b, length in enumerate((7, 4)):
            for got, want in zip((duration_from, source_from), first_max[2:4]):
                assert torch.equal(got[b, 1:length + 1], want[b, 1:length + 1])
    assert len(tilings) >= 2


def test_many_sequences_mixed_lengths():
    B = 40
    lengths = torch.randint(1, 6, (B,), generator=torch.Generator().manual_seed(3))
    p64 = random_problem(B, 5, 3, 3, lengths, seed=4)
    check_posterior(p64)
    check_viterbi(p64)


def test_posterior_sums():
    p64 = random_problem(2, 7, 3, 4, torch.tensor([7, 5]), seed=5)
    p = converted(p64, DEVICE, torch.float32)
    post = posterior(p, backend="triton")
    n_segments = post.segment_start.sum(dim=(1, 2))
    torch.testing.assert_close(post.first.sum(-1), torch.ones(2, device=DEVICE))
    torch.testing.assert_close(post.last.sum(-1), torch.ones(2, device=DEVICE))
    torch.testing.assert_close(post.duration.sum(dim=(1, 2)), n_segments)
    torch.testing.assert_close(post.transition.sum(dim=(1, 2)), n_segments - 1)
    torch.testing.assert_close(post.segment_end.sum(dim=(1, 2)), n_segments)
    inside = p.valid_mask()
    torch.testing.assert_close(post.label_marginals().sum(-1)[inside], torch.ones(12, device=DEVICE))


def test_outputs_zero_past_length():
    p = converted(random_problem(2, 6, 2, 3, torch.tensor([6, 2]), seed=6), DEVICE, torch.float32)
    post = posterior(p, backend="triton")
    assert not bool(post.segment_start[1, 2:].any()) and not bool(post.segment_end[1, 2:].any())


def test_hard_constraints_and_large_scores():
    # -inf transitions (no path through some pairs) and scores ~100: no NaN,
    # same answers as the float64 scan.
    p64 = random_problem(2, 8, 3, 4, torch.tensor([8, 6]), seed=7, scale=30.0)
    transition = p64.transition.clone()
    transition[0, 1:] = float("-inf")
    transition[2, 0] = float("-inf")
    p64 = p64.replace(transition=transition)
    check_log_z(p64)
    check_posterior(p64, atol=1e-4)
    check_viterbi(p64)


@triton.jit
def _factor_rows_kernel(scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr, enter_ptr, leave_ptr, leave_back_ptr,
                        T, C, scores_stride, start_stride, end_stride, CP: tl.constexpr,
                        START_SCORES: tl.constexpr, END_SCORES: tl.constexpr):
    """`enter`, `leave (B, T, C)` as the sweeps evaluate them left to right
    (the forward, k-best), and `leave` as the flow does, carrying `cum` back
    from `cum[T]` (past a sequence's length the scores are read as they
    are, which the sweeps never do)."""
    b = tl.program_id(0).to(tl.int64)
    labels = tl.arange(0, CP)
    valid = labels < C
    scores_ptr, start_scores_ptr, end_scores_ptr, mean = common.sequence_inputs(
        scores_ptr, start_scores_ptr, end_scores_ptr, mean_ptr, b, C, scores_stride, start_stride, end_stride, labels)
    out = b * T * C + labels
    cum = tl.zeros((CP,), tl.float64)
    start_score = common.boundary_row(start_scores_ptr, 0, labels, C, T, START_SCORES)
    tl.store(enter_ptr + out, common.enter_factor(cum, start_score), mask=valid)
    for e in range(1, T + 1):
        scores, end_score, start_score = common.position_rows(scores_ptr, start_scores_ptr, end_scores_ptr, e - 1,
                                                              labels, C, T, START_SCORES, END_SCORES)
        cum, leave, enter = common.step_factors(cum, scores, end_score, start_score, mean)
        tl.store(leave_ptr + out + (e - 1) * C, leave, mask=valid)
        tl.store(enter_ptr + out + e * C, enter, mask=valid & (labels * 0 + e < T))
    for i in range(0, T):
        t = T - 1 - i
        end_score = common.boundary_row(end_scores_ptr, t, labels, C, T, END_SCORES)
        tl.store(leave_back_ptr + out + t * C, common.leave_factor(cum, end_score), mask=valid)
        cum = common.retreat_prefix_sum(cum, common.load_row(scores_ptr, t, labels, C, T), mean)


@settings(deadline=None, max_examples=10)
@given(structured_problems(max_B=3, max_T=9, max_K=3, max_C=5), st.floats(-50, 50), st.booleans())
def test_kernel_factors_are_the_factors_definition(p64, offset, center):
    """The sweeps evaluate `enter`/`leave` from the scores (zero-centred
    prefix sums carried in float64), never from the tables of
    :class:`Factors`: on the CPU they are the same bits (PyTorch's CPU
    cumsum also sums float32 in double); carried back from `cum[T]` (the
    flow) they are equal to rounding."""
    if DEVICE == "cuda":
        pytest.skip("the bitwise comparison is with PyTorch's CPU cumsum")
    p = SemiMarkovPotentials(lengths=p64.lengths, center=center, validate_args=False,
                             **{k: v.float() for k, v in p64.replace(scores=p64.scores + offset).tensors().items()})
    factors = p.factors()
    inputs, flags = common.position_inputs(factors)
    B, T, C = p.batch_size, p.T, p.C
    enter, leave, leave_back = (torch.empty(B, T, C) for _ in range(3))
    _factor_rows_kernel[(B,)](*inputs[:4], enter, leave, leave_back, T, C, *inputs[4:], CP=common.pad(C), **flags)
    valid = p.valid_mask()  # the sweeps stop at each length; the test kernel runs on to T
    assert torch.equal(enter[valid], factors.enter[valid]) and torch.equal(leave[valid], factors.leave[valid])
    torch.testing.assert_close(leave_back[valid], factors.leave[valid], rtol=1e-6, atol=1e-5)


@settings(deadline=None, max_examples=12)
@given(structured_problems(max_B=3, max_T=9, max_K=3, max_C=5), st.floats(-50, 50), st.booleans(),
       st.sampled_from([1, 2, 16]))
def test_the_preparation_launch_supplies_the_centring_mean(p64, offset, center, rows):
    """The launch that builds the duration ring computes the factors' mean
    when it is not known yet and the sequences are short (summing `rows`
    positions a step), from
    scores with any batch stride, never reading past a length (the padding
    holds NaN here); it equals :meth:`Factors.centring_mean`, and the ring
    holds `Factors.duration`, the same bits."""
    from unittest import mock

    from semiring_semicrf.factors import Factors
    B, T, K, C = p64.batch_size, p64.T, p64.K, p64.C
    wide = torch.full((B, T + 2, C), float("nan"), dtype=torch.float32)
    wide[:, :T] = (p64.scores + offset).float().masked_fill(~p64.valid_mask()[..., None], float("nan"))
    tensors = {k: v.to(DEVICE, torch.float32) for k, v in p64.tensors().items()}
    p = SemiMarkovPotentials(lengths=p64.lengths.to(DEVICE), center=center, validate_args=False,
                             **tensors | {"scores": wide.to(DEVICE)[:, :T]})
    supplied = Factors(p)
    with mock.patch.object(common, "MEAN_BLOCK", rows * common.pad(C)):
        ring = common.duration_ring(supplied)
    assert supplied.has_mean
    torch.testing.assert_close(supplied.mean, Factors(p).centring_mean(), rtol=1e-15, atol=0)
    with pytest.raises(RuntimeError, match="already known"):
        supplied.supply_mean(supplied.mean)
    tables = ring.view(B, 4, common.pad(K), common.pad(C))[..., :K, :C]
    assert torch.equal(tables[:, 0], supplied.duration) and torch.equal(tables[:, 1], supplied.duration)
    assert torch.equal(tables[:, 2, 1:], supplied.duration[:, 1:]) and torch.equal(tables[:, 3], tables[:, 2])
    assert bool((tables[:, 2:, 0] == float("-inf")).all())
    known = Factors(p, mean=supplied.mean + 1.0)  # a known mean is read, not computed again
    ring = common.duration_ring(known).view(B, 4, common.pad(K), common.pad(C))
    assert torch.equal(ring[:, 0, :K, :C], known.duration) and torch.equal(known.mean, supplied.mean + 1.0)
    long = Factors(p)  # past MEAN_IN_LAUNCH, PyTorch's reductions compute the mean first
    with mock.patch.object(common, "MEAN_IN_LAUNCH", T * common.pad(C) - 1):
        ring = common.duration_ring(long).view(B, 4, common.pad(K), common.pad(C))
    assert torch.equal(long.mean, Factors(p).centring_mean()) and torch.equal(ring[:, 0, :K, :C], long.duration)


def test_gradients_through_the_kernels():
    """`log_partition(backend="triton")` differentiated: the flow's label
    marginals handed to the gradient of the scores, every other input's
    gradient from its counts, against the float64 torch rung."""
    p64 = random_problem(3, 8, 3, 4, torch.tensor([8, 5, 2]), extras=True, seed=12)
    grads = {}
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float64)):
        p = converted(p64, DEVICE, dtype)
        leaves = {k: v.detach().requires_grad_() for k, v in p.tensors().items()}
        weights = torch.tensor([1.0, -2.0, 0.5], device=DEVICE, dtype=dtype)
        log_partition(SemiMarkovPotentials(lengths=p.lengths, **leaves), backend=backend).mul(weights).sum().backward()
        grads[backend] = {k: v.grad.double().cpu() for k, v in leaves.items()}
    for name, want in grads["torch"].items():
        torch.testing.assert_close(grads["triton"][name], want, rtol=1e-4, atol=2e-5, msg=name)


def test_a_second_backward_through_one_forward():
    """The flow writes the posterior over the forward's tables: a second
    backward (retain_graph=True) recomputes them and gets the same gradient."""
    p = converted(random_problem(2, 7, 3, 4, torch.tensor([7, 4]), extras=True, seed=15), DEVICE, torch.float32)
    leaves = {k: v.detach().requires_grad_() for k, v in p.tensors().items()}
    log_z = log_partition(SemiMarkovPotentials(lengths=p.lengths, **leaves), backend="triton")
    first = torch.autograd.grad(log_z.sum(), list(leaves.values()), retain_graph=True)
    second = torch.autograd.grad(log_z.sum(), list(leaves.values()))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_label_marginals_are_handed_over_once_then_recomputed():
    p = converted(random_problem(2, 7, 3, 4, torch.tensor([7, 5]), seed=13), DEVICE, torch.float32)
    post = posterior(p, backend="triton")
    first = post.label_marginals()
    second = post.label_marginals()
    assert first is not second
    torch.testing.assert_close(first, second, rtol=0, atol=1e-6)


def test_bitwise_deterministic():
    p = converted(random_problem(3, 9, 4, 5, torch.tensor([9, 4, 7]), seed=8), DEVICE, torch.float32)
    runs = []
    for _ in range(2):
        post = posterior(p, backend="triton")
        runs.append([post.log_z] + [getattr(post, n) for n in POSTERIOR_FIELDS] + list(viterbi(p, backend="triton")))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["tangent", "entropy", "cross_entropy", "kl"])
def test_a_lane_sweep_loading_a_position_ahead_gives_the_same_bits(kind, monkeypatch):
    """`lane_loads_ahead` moves each step's loads one position earlier (rows
    clamped at the length) and nothing else: both ways give the same value
    and, for the tangent, the same tables where it writes them (lengths
    under and at K, boundary scores present)."""
    lanes = importlib.import_module("semiring_semicrf.kernels.hvp")
    lengths = torch.tensor([9, 2, 6])
    p, q, t = (converted(random_problem(3, 9, 4, 5, lengths, extras=True, seed=seed), DEVICE, torch.float32).factors()
               for seed in (16, 17, 18))
    _, p_tables = kernels.inside(p)
    _, q_tables = kernels.inside(q)
    runs = []
    for ahead in (False, True):
        monkeypatch.setattr(lanes, "lane_loads_ahead", lambda *args, ahead=ahead: ahead)
        result, tables = lanes.expectation_sweep(
            kind, p_tables, q_tables=None if kind in ("tangent", "entropy") else q_tables,
            tangent=t if kind == "tangent" else None,
            tangent_ring=lanes.tangent_duration_ring(t) if kind == "tangent" else None, keep_tables=kind == "tangent")
        rows = torch.arange(p.T + 1, device=DEVICE)
        written = rows <= lengths.to(DEVICE)[:, None]  # rows 0..L (alpha's from 1)
        masks = (written & (rows > 0), written, written)
        runs.append([result, *(torch.where(m if x.ndim == 2 else m[..., None], x, 0)
                               for x, m in zip(tables or (), masks))])
    assert torch.isfinite(runs[0][0]).all()
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# -- what the kernels refuse --------------------------------------------------
def test_unsupported_reason():
    p = random_problem(1, 4, 2, 3, seed=9)
    assert "CUDA" in backends.triton_unsupported_reason(p)
    dependent = p.replace(transition=torch.randn(2, 3, 3, dtype=torch.float64))
    assert "duration-dependent" in kernels.kernel_limits_reason(dependent)
    assert "float32" in kernels.kernel_limits_reason(p)
    with pytest.raises(ValueError, match="duration-dependent"):
        log_partition(converted(dependent, DEVICE, torch.float32), backend="triton")
    explicit = SemiMarkovPotentials.from_edges(p.to_edges())
    assert "explicit" in kernels.kernel_limits_reason(explicit)
    assert kernels.kernel_limits_reason(converted(p, DEVICE, torch.float32)) is None


def test_without_the_interpreter_cpu_tensors_get_a_clear_error():
    """Every query of the Triton rung on CPU tensors without TRITON_INTERPRET:
    the one error that says how to run the kernels on the CPU."""
    if torch.cuda.is_available():
        pytest.skip("the error concerns machines without CUDA")
    code = textwrap.dedent("""
        import torch
        from semiring_semicrf import SemiMarkovPotentials, log_partition
        from semiring_semicrf.decoding import topk, viterbi
        from semiring_semicrf.sampling import sample
        p = SemiMarkovPotentials(torch.zeros(1, 4, 2), torch.zeros(2, 2), torch.zeros(2, 2))
        for query in (log_partition, viterbi, lambda p, backend: topk(p, 2, backend),
                      lambda p, backend: sample(p, 2, backend=backend)):
            try:
                query(p, backend="triton")
            except ValueError as error:
                print(error)
    """)
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    errors = out.stdout.strip().splitlines()
    assert len(errors) == 4, out.stdout + out.stderr
    assert all("backend='triton' cannot run these potentials" in e and "TRITON_INTERPRET=1" in e for e in errors)


# -- at scale, on a GPU -------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("B,T,K,C", [(8, 300, 12, 7), (5, 200, 40, 24), (2, 150, 100, 3)])
def test_gpu_against_scan(B, T, K, C):
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(T))
    lengths[0] = T
    p64 = random_problem(B, T, K, C, lengths, extras=True, seed=B + T)
    check_log_z(p64)
    check_viterbi(p64)
    check_posterior(p64, atol=1e-4)


@pytest.mark.gpu
@gpu
def test_gpu_long_sequence_float32_holds():
    # T = 1e5: running normalization keeps float32 within 1e-4 of float64,
    # and the outside flow conserves probability mass (its rounding errors
    # random-walk: ~1e-5 here, ~1e-4 at T = 1e6).
    p64 = random_problem(1, 100_000, 8, 4, seed=11)
    check_log_z(p64)
    check_viterbi(p64)
    p = converted(p64, DEVICE, torch.float32)
    post = posterior(p, backend="triton")
    n_segments = post.segment_start.double().sum()
    assert abs(float(post.first.sum()) - 1) < 1e-4 and abs(float(post.last.sum()) - 1) < 1e-4
    assert abs(float(post.duration.double().sum() / n_segments) - 1) < 1e-4
    assert abs(float(post.transition.double().sum() / (n_segments - 1)) - 1) < 1e-4
