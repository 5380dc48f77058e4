"""Padding is ignored, whatever it holds (docs/model.md).

Positions past a sequence's length are no part of the model: NaN, +-inf or
huge values there must not change any output or gradient, on any path. Each
test fills the padding of `scores`, `start_scores` and `end_scores` (and, for
explicit edges, every segment that ends past the length) and compares with
the same potentials with ordinary random padding, bitwise (every path here is
deterministic on the CPU); gradients must be exactly 0 at padded positions.
Brute force over every segmentation, which never reads padding, anchors the
values. The Triton rung runs through Triton's interpreter, in float32.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import perturbed, tiny_problems

from semiring_semicrf import (
    CrossEntropySemiring,
    EdgePotentials,
    EntropySemiring,
    KLDivergenceSemiring,
    KMaxSemiring,
    LogSemiring,
    MaxSemiring,
    SemiMarkovPotentials,
    StdSemiring,
    semimarkov_scan,
)
from semiring_semicrf.autograd import posterior
from semiring_semicrf.distribution import SemiMarkovDistribution
from semiring_semicrf.testing import enumerate_structures

pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")

FILLS = [float("nan"), float("inf"), float("-inf"), 1e30, -1e30]
PER_POSITION = ("scores", "start_scores", "end_scores")
SEMIRINGS = [LogSemiring(), MaxSemiring(), KMaxSemiring(3), StdSemiring(), EntropySemiring(), CrossEntropySemiring(),
             KLDivergenceSemiring()]


@st.composite
def padded_problems(draw, extras=True):
    """A tiny problem (tests/strategies.py) with 1 to 3 more positions,
    random like the rest: padding in every sequence."""
    p = draw(tiny_problems(max_B=3, max_T=6, max_K=3, max_C=3, extras=extras))
    extra = draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))

    def longer(t):
        return torch.cat([t, torch.randn(p.batch_size, extra, p.C, generator=g, dtype=t.dtype)], dim=1)

    tensors = {name: longer(t) if name in PER_POSITION else t for name, t in p.tensors().items()}
    return SemiMarkovPotentials(lengths=p.lengths, **tensors)


def leaves(p: SemiMarkovPotentials, fill: float | None = None, dtype=None) -> SemiMarkovPotentials:
    """`p` as fresh leaves that require grad (in `dtype`), with `fill` at
    every padded position of its per-position inputs if given; built under
    the default validation, which must accept any padding."""
    padding = ~p.valid_mask()[..., None]
    tensors = {}
    for name, t in p.tensors().items():
        t = t.detach().to(dtype or t.dtype)
        if fill is not None and name in PER_POSITION:
            t = t.masked_fill(padding, fill)
        tensors[name] = t.clone().requires_grad_()
    return SemiMarkovPotentials(lengths=p.lengths, center=p.center, **tensors)


def outputs_and_gradients(pots: tuple, run) -> tuple:
    """`run(*pots)` and the gradient of the sum of its finite entries with
    respect to every tensor of every potentials (0 where unused)."""
    out = run(*pots)
    inputs = [t for p in pots for t in p.tensors().values()]
    grads = [None] * len(inputs)
    if out.requires_grad:
        grads = torch.autograd.grad(out[torch.isfinite(out)].sum(), inputs, allow_unused=True)
    return out.detach(), [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]


def assert_padding_ignored(run, pots: tuple, fill: float, dtype=None) -> None:
    """`run` gives bitwise the same outputs and gradients whatever the
    padding holds, and gradients exactly 0 at padded positions."""
    clean = tuple(leaves(p, dtype=dtype) for p in pots)
    dirty = tuple(leaves(p, fill, dtype) for p in pots)
    (out, grads), (dirty_out, dirty_grads) = outputs_and_gradients(clean, run), outputs_and_gradients(dirty, run)
    assert torch.equal(out, dirty_out), (out, dirty_out)
    names = [name for p in pots for name in p.tensors()]
    padding = ~pots[0].valid_mask()
    for name, a, b in zip(names, grads, dirty_grads):
        assert torch.equal(a, b), name
        if name in PER_POSITION:
            assert not b[padding].any(), name  # exactly 0 (NaN counts as nonzero)


@settings(deadline=None, max_examples=30)
@given(p=padded_problems(), semiring=st.sampled_from(SEMIRINGS),
       backend=st.sampled_from(["reference", "torch", "triton"]), fill=st.sampled_from(FILLS),
       seed=st.integers(0, 2**16))
def test_padding_never_reaches_semimarkov_scan(p, semiring, backend, fill, seed):
    dtype = torch.float64
    if backend == "triton":
        if p.duration_dependent:
            return  # the kernels refuse (K, C, C) transitions
        dtype = torch.float32
    pots = (p, perturbed(p, seed))[:semiring.num_potentials]
    assert_padding_ignored(lambda *x: semimarkov_scan(x, semiring, backend=backend), pots, fill, dtype)


def detached(p: SemiMarkovPotentials) -> SemiMarkovPotentials:
    return p.replace(**{name: t.detach() for name, t in p.tensors().items()})


def as_numbers(segmentation) -> torch.Tensor:
    return torch.cat([segmentation.labels.flatten(), segmentation.starts.flatten()]).to(torch.float64)


def distribution_queries(backend: str) -> dict:
    """Every query of the distribution that gives numbers, as functions of
    the potentials `(p, q)`; each builds fresh distributions (nothing
    cached is shared between the clean and the dirty run)."""
    def d(x):
        return SemiMarkovDistribution.from_potentials(x, backend=backend)

    def sampled(dist):
        return dist.sample((4,), generator=torch.Generator().manual_seed(0))

    def log_prob_of(decode):
        def run(p, q):
            dist = d(p)
            return dist.log_prob(decode(dist))
        return run

    return {
        "partition": lambda p, q: d(p).partition,
        "log_prob(argmax)": log_prob_of(lambda dist: dist.argmax),
        "log_prob(sample)": log_prob_of(sampled),
        "topk scores": lambda p, q: d(p).topk(3).scores,
        "max": lambda p, q: d(p).max,
        "entropy": lambda p, q: d(p).entropy(),
        "entropy, no grad": lambda p, q: d(detached(p)).entropy(),
        "cross_entropy": lambda p, q: d(p).cross_entropy(d(q)),
        "cross_entropy, p fixed": lambda p, q: d(detached(p)).cross_entropy(d(q)),
        "kl": lambda p, q: d(p).kl(d(q)),
        "kl, p fixed": lambda p, q: d(detached(p)).kl(d(q)),
        "expected_score": lambda p, q: d(p).expected_score(q),
        "perplexity": lambda p, q: d(p).perplexity(),
        "count": lambda p, q: d(p).count,
        "marginals": lambda p, q: d(p).marginals.flatten(),
        "boundary_marginals": lambda p, q: d(p).boundary_marginals.flatten(),
        "transition_marginals": lambda p, q: d(p).transition_marginals.flatten(),
        "duration_marginals": lambda p, q: d(p).duration_marginals.flatten(),
        "segment_marginals": lambda p, q: d(p).segment_marginals.flatten(),
        "argmax": lambda p, q: as_numbers(d(p).argmax),
        "topk": lambda p, q: as_numbers(d(p).topk(4).segmentations),
        "sample": lambda p, q: as_numbers(sampled(d(p))),
    }


@settings(deadline=None, max_examples=12)
@given(p=padded_problems(), backend=st.sampled_from(["auto", "reference", "triton"]),
       fill=st.sampled_from(FILLS), seed=st.integers(0, 2**16))
def test_padding_never_reaches_a_distribution_query(p, backend, fill, seed):
    dtype = torch.float64
    if backend == "triton":
        if p.duration_dependent:
            return
        dtype = torch.float32
    q = perturbed(p, seed)
    for name, query in distribution_queries(backend).items():
        try:
            assert_padding_ignored(query, (p, q), fill, dtype)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from err


@settings(deadline=None, max_examples=15)
@given(p=padded_problems(), fill=st.sampled_from(FILLS), rung=st.sampled_from(["reference", "torch", "triton"]))
def test_dirty_padding_matches_brute_force_and_marginals_are_zero_past_each_length(p, fill, rung):
    dtype = torch.float32 if rung == "triton" else torch.float64
    if rung == "triton" and p.duration_dependent:
        return
    dirty = detached(leaves(p, fill, dtype))
    post = posterior(dirty, backend=rung)
    labels = post.label_marginals()
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    for b in range(p.batch_size):
        truth = enumerate_structures(p, b)  # reads only positions inside the length
        L = int(p.lengths[b])
        expected = torch.zeros(p.T, p.C, dtype=torch.float64)
        for segments, probability in zip(truth.structures, truth.probabilities):
            for s, e, c in segments:
                expected[s:e, c] += probability
        torch.testing.assert_close(post.log_z[b].double(), truth.log_partition, **tolerance)
        torch.testing.assert_close(labels[b].double(), expected, **tolerance)
        assert torch.equal(labels[b, L:], torch.zeros_like(labels[b, L:]))  # exactly, not -1e-17


@st.composite
def padded_edges(draw):
    """Explicit edges of a padded problem, with random values on every
    segment that ends past its sequence's length."""
    p = draw(padded_problems(extras=False))
    edge = p.to_edges()
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    past = edge_padding(p.lengths, p.T, p.K)[..., None, None].expand_as(edge)
    edge = torch.where(past, torch.randn(edge.shape, generator=g, dtype=edge.dtype), edge)
    return EdgePotentials(edge, p.lengths)


def edge_padding(lengths: torch.Tensor, T: int, K: int) -> torch.Tensor:
    """`(B, T, K + 1)`: the segments `[s, s + d)` that end past the length."""
    ends = torch.arange(T)[:, None] + torch.arange(K + 1)
    return ends > lengths[:, None, None]


@settings(deadline=None, max_examples=15)
@given(p=padded_edges(), semiring=st.sampled_from([LogSemiring(), MaxSemiring(), KMaxSemiring(2), EntropySemiring()]),
       fill=st.sampled_from(FILLS))
def test_padding_of_explicit_edges_is_ignored(p, semiring, fill):
    past = edge_padding(p.lengths, p.T, p.K)[..., None, None]
    clean = EdgePotentials(p.edge.clone().requires_grad_(), p.lengths)
    dirty = EdgePotentials(p.tensors()["edge"].masked_fill(past, fill).requires_grad_(), p.lengths)
    out, (grad,) = outputs_and_gradients((clean,), lambda x: semimarkov_scan(x, semiring))
    dirty_out, (dirty_grad,) = outputs_and_gradients((dirty,), lambda x: semimarkov_scan(x, semiring))
    assert torch.equal(out, dirty_out)
    assert torch.equal(grad, dirty_grad) and not dirty_grad.masked_select(past).any()
    assert torch.equal(posterior(dirty).segment_start, posterior(clean).segment_start)
    if type(semiring) is LogSemiring:
        brute = torch.stack([enumerate_structures(p, b).log_partition for b in range(p.batch_size)])
        torch.testing.assert_close(dirty_out, brute)


def test_validation_reads_only_positions_inside_the_lengths():
    B, T, K, C = 2, 5, 3, 2
    g = torch.Generator().manual_seed(0)
    args = dict(scores=torch.randn(B, T, C, generator=g), transition=torch.randn(C, C, generator=g),
                duration=torch.randn(K, C, generator=g), start_scores=torch.randn(B, T, C, generator=g),
                end_scores=torch.randn(B, T, C, generator=g))
    lengths = torch.tensor([T, 3])
    masked_logits = args["scores"].clone()
    masked_logits[1, 3:] = float("-inf")  # the common way to mask logits
    SemiMarkovPotentials(**{**args, "scores": masked_logits}, lengths=lengths)
    for name in PER_POSITION:
        for fill in FILLS:
            dirty = args[name].clone()
            dirty[1, 3:] = fill
            SemiMarkovPotentials(**{**args, name: dirty}, lengths=lengths)  # padding: anything goes
    inside = {"scores": ["nan", "inf", "-inf"], "start_scores": ["nan", "inf"], "end_scores": ["nan", "inf"]}
    for name, fills in inside.items():
        for fill in fills:
            dirty = args[name].clone()
            dirty[1, 2, 0] = float(fill)  # the last valid position of sequence 1
            word = {"nan": "NaN", "inf": r"\+inf", "-inf": "-inf"}[fill]
            with pytest.raises(ValueError, match=f"{name} contains {word} inside a sequence's length"):
                SemiMarkovPotentials(**{**args, name: dirty}, lengths=lengths)
    edge = SemiMarkovPotentials(**args, lengths=lengths).to_edges()
    edge[1, 2, 2] = float("nan")  # [2, 4) ends past the length 3
    EdgePotentials(edge, lengths)
    edge[1, 2, 1] = float("nan")  # [2, 3) does not
    with pytest.raises(ValueError, match="edge contains NaN"):
        EdgePotentials(edge, lengths)


def test_masked_logits_give_the_distribution_of_the_cut_sequences():
    """A batch padded with -inf logits is the batch of its sequences cut to
    their lengths, on every query."""
    g = torch.Generator().manual_seed(4)
    B, T, K, C = 2, 6, 3, 3
    scores = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    transition, duration = torch.randn(C, C, generator=g, dtype=torch.float64), torch.zeros(K, C, dtype=torch.float64)
    scores[1, 4:] = float("-inf")
    d = SemiMarkovDistribution(scores, transition, duration, torch.tensor([T, 4]))
    cut = SemiMarkovDistribution(scores[1:, :4], transition, duration)
    torch.testing.assert_close(d.partition[1], cut.partition[0])
    torch.testing.assert_close(d.entropy()[1], cut.entropy()[0])
    torch.testing.assert_close(d.marginals[1, :4], cut.marginals[0])
    assert d.argmax[1].to_segments() == cut.argmax[0].to_segments()


KERNEL_CASES = [
    pytest.param("cuda", 300, marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                          reason="needs a CUDA device")]),
    pytest.param("cpu", 20, id="cpu-interpreter"),  # the kernels through Triton's interpreter (conftest.py)
]


@pytest.mark.parametrize("device,T", KERNEL_CASES)
@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("semiring", [LogSemiring(), MaxSemiring(), EntropySemiring()], ids=repr)
def test_padding_is_ignored_by_the_kernels(semiring, fill, device, T):
    """`backend="triton"` (the kernels in float32): the same outputs and
    gradients (to rounding: the kernels may reduce in another order), and
    gradients exactly 0 on the padding. (NaN at the first padded start score
    once made the transition gradient NaN.)"""
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(11)
    B, K, C = 4, 8, 6

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    p = SemiMarkovPotentials(rand(B, T, C), rand(C, C), rand(K, C), torch.tensor([T, T - 7, 5, 1]), rand(C), rand(C),
                             rand(B, T, C), rand(B, T, C)).to(device)
    runs = [outputs_and_gradients((x,), lambda x: semimarkov_scan(x, semiring, backend="triton"))
            for x in (leaves(p), leaves(p, fill))]
    (out, grads), (dirty_out, dirty_grads) = runs
    torch.testing.assert_close(dirty_out, out)
    padding = ~p.valid_mask()
    for name, a, b in zip(p.tensors(), grads, dirty_grads):
        torch.testing.assert_close(b, a, msg=name)
        if name in PER_POSITION:
            assert not b[padding].any(), name
