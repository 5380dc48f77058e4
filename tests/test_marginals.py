"""Posterior marginals of the streaming forward-backward against brute force.

The oracle enumerates every segmentation of each sequence
(`enumerate_structures`), turns the probabilities of the structures into
expected counts, and every field of the Posterior must equal them in float64.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import tiny_problems

from semiring_semicrf import EdgePotentials, SemiMarkovPotentials
from semiring_semicrf.autograd import posterior, segment_marginals
from semiring_semicrf.testing import enumerate_structures

TOL = dict(rtol=1e-9, atol=1e-11)


def brute_posterior(p) -> dict:
    """Expected counts by enumeration, as float64 tensors with the Posterior's
    field names, plus `labels (B, T, C)` and `segments (B, T, K, C)`.
    Explicit potentials: their latent first label is summed over."""
    B, T, K, C = p.batch_size, p.T, p.K, p.C
    dependent = p.duration_dependent
    out = {name: np.zeros(shape) for name, shape in {
        "segment_start": (B, T, C), "segment_end": (B, T, C), "labels": (B, T, C), "segments": (B, T, K, C),
        "transition": (B, K, C, C) if dependent else (B, C, C), "duration": (B, K, C),
        "first": (B, C), "last": (B, C)}.items()}
    log_z = np.zeros(B)
    for b in range(B):
        e = enumerate_structures(p, b)
        log_z[b] = float(e.log_partition)
        if not np.isfinite(log_z[b]):
            continue
        for structure, prob in zip(e.structures, e.probabilities.tolist()):
            segs = structure[1] if p.is_explicit else structure
            prev = None
            for s, end, c in segs:
                d = end - s
                out["segment_start"][b, s, c] += prob
                out["segment_end"][b, end - 1, c] += prob
                out["labels"][b, s:end, c] += prob
                out["segments"][b, s, d - 1, c] += prob
                out["duration"][b, d - 1, c] += prob
                if prev is None:
                    out["first"][b, c] += prob
                elif dependent:
                    out["transition"][b, d - 1, prev, c] += prob
                else:
                    out["transition"][b, prev, c] += prob
                prev = c
            out["last"][b, prev] += prob
    result = {name: torch.from_numpy(value) for name, value in out.items()}
    result["log_z"] = torch.from_numpy(log_z)
    return result


def assert_posterior_matches(post, expected, **tol):
    tol = tol or TOL
    for name in ("segment_start", "segment_end", "transition", "duration", "first", "last"):
        torch.testing.assert_close(getattr(post, name).double(), expected[name], **tol, msg=name)
    torch.testing.assert_close(post.log_z.double(), expected["log_z"], **tol)
    torch.testing.assert_close(post.label_marginals().double(), expected["labels"], **tol)


@settings(deadline=None, max_examples=30)
@given(p=tiny_problems(), low_memory=st.booleans())
def test_posterior_equals_brute_force(p, low_memory):
    assert_posterior_matches(posterior(p, low_memory=low_memory), brute_posterior(p))


@settings(deadline=None, max_examples=15)
@given(p=tiny_problems(max_T=6))
def test_segment_marginals_equal_brute_force(p):
    seg = segment_marginals(p)
    expected = brute_posterior(p)["segments"]
    torch.testing.assert_close(seg, expected, **TOL)
    # and they add up to the boundary marginals
    torch.testing.assert_close(seg.sum(dim=2), posterior(p).segment_start, **TOL)


@settings(deadline=None, max_examples=25)
@given(p=tiny_problems(max_T=10, max_K=5, max_C=4), low_memory=st.booleans())
def test_marginals_are_probabilities(p, low_memory):
    post = posterior(p, low_memory=low_memory)
    labels, boundaries = post.label_marginals(), post.boundary_marginals()
    inside = p.valid_mask()
    # label marginals: a distribution over labels inside the length, zero past it
    torch.testing.assert_close(labels.sum(-1)[inside], torch.ones_like(labels.sum(-1)[inside]))
    assert (labels.sum(-1)[~inside].abs() < 1e-12).all()
    # every sequence starts a segment at t = 0, and ends one at its last position
    torch.testing.assert_close(boundaries[:, 0], torch.ones(p.batch_size, dtype=p.dtype))
    last_end = post.segment_end.sum(-1).gather(1, (p.lengths - 1)[:, None])[:, 0]
    torch.testing.assert_close(last_end, torch.ones(p.batch_size, dtype=p.dtype))
    for field in (labels, boundaries, post.segment_start, post.segment_end, post.first, post.last):
        assert (field > -1e-12).all() and (field < 1 + 1e-9).all()
    # as many segments as boundaries; first/last are distributions
    torch.testing.assert_close(post.duration.sum((1, 2)), boundaries.sum(1))
    torch.testing.assert_close(post.first.sum(-1), torch.ones(p.batch_size, dtype=p.dtype))
    torch.testing.assert_close(post.last.sum(-1), torch.ones(p.batch_size, dtype=p.dtype))


@settings(deadline=None, max_examples=20)
@given(p=tiny_problems(max_T=12, max_K=6, max_C=4))
def test_low_memory_posterior_equals_default(p):
    a, b = posterior(p), posterior(p, low_memory=True)
    for name in ("log_z", "segment_start", "segment_end", "transition", "duration", "first", "last"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), **TOL, msg=name)


@settings(deadline=None, max_examples=15)
@given(p=tiny_problems(max_B=2, max_T=6, max_K=3, max_C=2))
def test_explicit_edges_posterior_equals_brute_force(p):
    """Explicit edges from `to_edges()` (first label pinned, so the same
    model): brute force over their own structures, and the structured posterior."""
    edges = EdgePotentials(p.to_edges(), p.lengths)
    post = posterior(edges)
    expected = brute_posterior(edges)
    for name in ("segment_start", "segment_end", "duration", "first", "last"):
        torch.testing.assert_close(getattr(post, name), expected[name], **TOL, msg=name)
    structured = posterior(p)
    trans = post.transition if p.duration_dependent else post.transition.sum(1)
    torch.testing.assert_close(trans, structured.transition, **TOL)
    torch.testing.assert_close(segment_marginals(edges), segment_marginals(p), **TOL)


def test_explicit_edges_with_a_latent_first_label():
    """Random explicit edges (every c_src allowed at s = 0): counts sum over
    the latent label before the first segment."""
    g = torch.Generator().manual_seed(3)
    edge = torch.randn(2, 5, 4, 3, 3, generator=g, dtype=torch.float64)
    edges = EdgePotentials(edge, torch.tensor([5, 3]))
    post, expected = posterior(edges), brute_posterior(edges)
    for name in ("log_z", "segment_start", "segment_end", "duration", "first", "last"):
        torch.testing.assert_close(getattr(post, name), expected[name], **TOL, msg=name)
    torch.testing.assert_close(post.transition, expected["transition"], **TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_posterior_keeps_the_input_dtype(dtype):
    p = SemiMarkovPotentials(torch.randn(2, 7, 3, dtype=dtype), torch.randn(3, 3, dtype=dtype),
                             torch.randn(4, 3, dtype=dtype))
    post = posterior(p)
    for name in ("log_z", "segment_start", "segment_end", "transition", "duration", "first", "last"):
        assert getattr(post, name).dtype == dtype, name
    assert segment_marginals(p).dtype == dtype


def test_posterior_rejects_other_objects():
    with pytest.raises(TypeError, match="SemiMarkovPotentials or EdgePotentials"):
        posterior(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="backend"):
        posterior(SemiMarkovPotentials(torch.randn(1, 3, 2), torch.randn(2, 2), torch.randn(2, 2)), backend="cuda")
