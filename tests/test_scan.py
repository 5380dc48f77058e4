"""The generic streaming scan against brute force, pytorch-struct and itself."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import perturbed, tiny_problems
from test_semirings import SEMIRINGS as SHIPPED
from test_semirings import BooleanSemiring, BottleneckSemiring, MaxCountSemiring

from semiring_semicrf import (
    CrossEntropySemiring,
    EntropySemiring,
    KLDivergenceSemiring,
    KMaxSemiring,
    LogSemiring,
    MaxSemiring,
    SemiMarkovPotentials,
    StdSemiring,
    checkpointed_scan,
    semimarkov_scan,
)
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


def integer_valued(p: SemiMarkovPotentials) -> SemiMarkovPotentials:
    """`p` with every potential rounded to an integer (exact sums, ties)."""
    return p.replace(**{name: (2 * t).round() for name, t in p.tensors().items()})


@settings(max_examples=15)
@given(p=tiny_problems(max_T=6), explicit=st.booleans())
def test_every_semiring_equals_the_brute_force_reduction(p, explicit):
    """The scan against `Enumeration.reduce`, the semiring's sum over every
    segmentation of the product of its segments' embedded log-potentials
    (MaxCount, whose ties need exact sums, below on integer potentials)."""
    q = perturbed(p, 0)
    if explicit:
        p, q = (SemiMarkovPotentials.from_edges(x.to_edges(), x.lengths) for x in (p, q))
    for semiring in SHIPPED + [BooleanSemiring()]:
        pots = (p, q)[:semiring.num_potentials]
        got = semimarkov_scan(pots, semiring)
        want = [enumerate_structures(pots[0], b).reduce(semiring, *(enumerate_structures(x, b) for x in pots[1:]))
                for b in range(p.batch_size)]
        want = torch.stack(want, dim=-1)
        assert got.dtype == (want.dtype if not want.is_floating_point() else p.dtype), semiring
        if want.is_floating_point():
            close(got, want)
        else:
            assert torch.equal(got, want), (semiring, got, want)


@given(p=tiny_problems())
def test_max_count_is_exact_on_integer_potentials(p):
    """(max, number of optima) asks for uncentred factors (`center = False`):
    on integer potentials every tie is exact, on every path."""
    p = integer_valued(p)
    counts = semimarkov_scan(p, MaxCountSemiring())
    assert counts.dtype == torch.int64
    truth = [enumerate_structures(p, b).reduce(MaxCountSemiring()) for b in range(p.batch_size)]
    assert counts.tolist() == [int(t) for t in truth]
    best = [enumerate_structures(p, b).scores.max() for b in range(p.batch_size)]
    optima = [int((enumerate_structures(p, b).scores == m).sum()) if torch.isfinite(m) else 0
              for b, m in enumerate(best)]
    assert counts.tolist() == optima


@settings(max_examples=20)
@given(p=tiny_problems(duration_dependent=True), explicit=st.booleans())
def test_bottleneck_equals_brute_force_where_segments_are_embedded_whole(p, explicit):
    """A semiring whose embed is no homomorphism and whose one is not
    embed(0) runs on (K, C, C) transitions and explicit edges."""
    if explicit:
        p = SemiMarkovPotentials.from_edges(p.to_edges(), p.lengths)
    widest = semimarkov_scan(p, BottleneckSemiring())
    truth = torch.stack([enumerate_structures(p, b).reduce(BottleneckSemiring()) for b in range(p.batch_size)])
    close(widest, truth)


def test_a_non_homomorphic_semiring_is_refused_on_the_factorized_path():
    p = SemiMarkovPotentials(torch.randn(1, 5, 2), torch.randn(2, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"\(K, C, C\) transitions"):
        semimarkov_scan(p, BottleneckSemiring())
    with pytest.raises(ValueError, match="renormalize"):
        semimarkov_scan(p.replace(transition=p.transition.expand(3, 2, 2)), type("Bad", (BottleneckSemiring,),
                                                                                    {"renormalize": True})())


def test_extract_keeps_bool_and_integer_results_on_every_path():
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(-2, 3, (2, 6, 2), generator=g).double()
    p = SemiMarkovPotentials(scores, torch.zeros(2, 2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64),
                             lengths=torch.tensor([6, 4]))
    for semiring, dtype in ((BooleanSemiring(), torch.bool), (MaxCountSemiring(), torch.int64)):
        eager = semimarkov_scan(p, semiring, backend="reference")
        assert eager.dtype == dtype
        assert torch.equal(checkpointed_scan(p, semiring), eager)
        p32 = p.replace(**{k: t.float() for k, t in p.tensors().items()})
        assert torch.equal(semimarkov_scan(p32, semiring), eager)


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
