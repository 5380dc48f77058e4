"""The generic streaming scan against brute force, pytorch-struct and itself."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import perturbed, tiny_problems

from semiring_semicrf import (CrossEntropySemiring, EntropySemiring, KLDivergenceSemiring, KMaxSemiring,
                              LogSemiring, MaxSemiring, SemiMarkovPotentials, StdSemiring, semimarkov_scan)
from semiring_semicrf.testing import enumerate_structures


def brute(potentials, query):
    return torch.stack([query(enumerate_structures(potentials, b)) for b in range(potentials.batch_size)])


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)


@given(p=tiny_problems())
def test_log_max_std_match_brute_force(p):
    close(semimarkov_scan(p, LogSemiring()), brute(p, lambda e: e.log_partition))
    close(semimarkov_scan(p, MaxSemiring()), brute(p, lambda e: e.max()))
    close(semimarkov_scan(p, StdSemiring()), brute(p, lambda e: e.log_partition).exp())


@given(p=tiny_problems(), k=st.integers(1, 5))
def test_kmax_matches_brute_force_top_k(p, k):
    close(semimarkov_scan(p, KMaxSemiring(k)).T, brute(p, lambda e: e.topk(k)))


@given(p=tiny_problems(), seed=st.integers(0, 10**6))
def test_entropy_cross_entropy_kl_match_brute_force(p, seed):
    q = perturbed(p, seed)
    close(semimarkov_scan(p, EntropySemiring()), brute(p, lambda e: e.entropy()))
    pairs = [(enumerate_structures(p, b), enumerate_structures(q, b)) for b in range(p.batch_size)]
    close(semimarkov_scan((p, q), CrossEntropySemiring()), torch.stack([a.cross_entropy(b) for a, b in pairs]))
    close(semimarkov_scan((p, q), KLDivergenceSemiring()), torch.stack([a.kl(b) for a, b in pairs]))


@given(p=tiny_problems())
def test_std_on_unit_potentials_counts_segmentations(p):
    unit = p.replace(**{name: torch.zeros_like(t) for name, t in p.tensors().items()})
    counts = semimarkov_scan(unit, StdSemiring())
    assert counts.tolist() == [float(enumerate_structures(unit, b).count()) for b in range(p.batch_size)]


@given(p=tiny_problems())
def test_explicit_edges_match_brute_force_and_structured(p):
    edges = SemiMarkovPotentials.from_edges(p.to_edges(), p.lengths)
    for semiring, query in [(LogSemiring(), lambda e: e.log_partition), (MaxSemiring(), lambda e: e.max()),
                            (EntropySemiring(), lambda e: e.entropy())]:
        close(semimarkov_scan(edges, semiring), brute(edges, query))
        # the pinned first label makes the latent-label model equal ours
        close(semimarkov_scan(edges, semiring), semimarkov_scan(p, semiring))


@settings(max_examples=15)
@given(p=tiny_problems(max_B=1))
def test_log_partition_equals_pytorch_struct(p):
    torch_struct = pytest.importorskip("torch_struct")
    L = int(p.lengths[0])
    edges = p.to_edges()[:, :L]
    theirs = torch_struct.SemiMarkovCRF(edges, lengths=p.lengths + 1).partition
    close(semimarkov_scan(p), theirs)


@given(p=tiny_problems(max_B=2))
def test_tables_hold_alpha_and_u(p):
    log_z, tables = semimarkov_scan(p, LogSemiring(), return_tables=True)
    B = p.batch_size
    alpha_at_length = tables.alpha[0, torch.arange(B), p.lengths]
    close(torch.logsumexp(alpha_at_length + p.end, dim=-1), log_z)
    if not p.duration_dependent:
        close(tables.u[0, :, 0], p.start.expand(B, -1))


@given(p=tiny_problems(max_T=6))
def test_float32_agrees_with_float64(p):
    p32 = p.replace(**{name: t.float() for name, t in p.tensors().items()})
    torch.testing.assert_close(semimarkov_scan(p32).double(), semimarkov_scan(p), rtol=1e-5, atol=1e-5)


def test_long_sequence_float32_is_exact_despite_a_large_mean():
    """Zero-centring: scores with a large mean do not drift the prefix sums."""
    g = torch.Generator().manual_seed(0)
    B, T, K, C = 2, 20000, 8, 4
    scores = torch.randn(B, T, C, generator=g, dtype=torch.float64) + 50.0
    args = (torch.randn(C, C, generator=g, dtype=torch.float64), torch.randn(K, C, generator=g, dtype=torch.float64))
    lengths = torch.tensor([T, T - 1234])
    with torch.no_grad():
        ref = semimarkov_scan(SemiMarkovPotentials(scores, *args, lengths))
        ours = semimarkov_scan(SemiMarkovPotentials(scores.float(), *(a.float() for a in args), lengths))
    assert ((ours.double() - ref).abs() / ref.abs()).max() < 1e-6


def test_semiring_without_log_mass_is_not_rescaled():
    """Max-min (bottleneck) is no homomorphic image of (R, +): on explicit edges it
    still runs, and the scan must not multiply its result by embed(0)."""
    from semiring_semicrf import MaxSemiring as Max

    class Bottleneck(Max):
        def times(self, a, b):
            return torch.minimum(a, b)

        def times_potential(self, a, log_potentials):
            return torch.minimum(a, log_potentials)

        def one(self, shape, dtype=torch.float64, device=None):
            return torch.full((1, *shape), float("inf"), dtype=dtype, device=device)

        def log_mass(self, value):
            return None

    g = torch.Generator().manual_seed(0)
    edge = torch.randn(1, 4, 3, 2, 2, generator=g, dtype=torch.float64) + 5.0
    edges = SemiMarkovPotentials.from_edges(edge)
    enum = enumerate_structures(edges, 0)
    widest = max(min(float(edge[0, s, e - s, c, prev]) for (s, e, c), prev in zip(segs, (c0,) + tuple(x[2] for x in segs)))
                 for c0, segs in enum.structures)
    assert semimarkov_scan(edges, Bottleneck()).item() == widest


def test_factors_cached_without_grad_never_serve_a_differentiable_call():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(1, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    p = SemiMarkovPotentials(scores, torch.zeros(2, 2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64))
    with torch.no_grad():
        semimarkov_scan(p)
    log_z = semimarkov_scan(p)
    assert log_z.requires_grad
    log_z.sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
