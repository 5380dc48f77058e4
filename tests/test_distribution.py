"""SemiMarkovDistribution against brute force over every segmentation."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import perturbed, tiny_problems

from semiring_semicrf import (
    CrossEntropySemiring,
    EntropySemiring,
    KLDivergenceSemiring,
    SemiMarkovPotentials,
    semimarkov_scan,
)
from semiring_semicrf.distribution import SemiMarkovDistribution
from semiring_semicrf.testing import enumerate_structures


def close(actual, expected, tol=1e-9):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def brute(p, query):
    return torch.stack([torch.as_tensor(query(enumerate_structures(p, b)), dtype=torch.float64)
                        for b in range(p.batch_size)])


def dist(p: SemiMarkovPotentials) -> SemiMarkovDistribution:
    return SemiMarkovDistribution.from_potentials(p)


def with_grad(p: SemiMarkovPotentials) -> SemiMarkovPotentials:
    return p.replace(**{name: t.detach().clone().requires_grad_() for name, t in p.tensors().items()})


@given(p=tiny_problems(max_T=6))
def test_support_is_every_allowed_segmentation_and_log_prob_sums_to_one(p):
    d = dist(p)
    support = d.enumerate_support()
    probabilities = d.log_prob(support).exp()
    close(probabilities.sum(dim=0), torch.ones(p.batch_size, dtype=torch.float64))
    segments = support.to_segments()
    for b in range(p.batch_size):
        enum = enumerate_structures(p, b)
        allowed = {s: float(x) for s, x in zip(enum.structures, enum.probabilities) if x > 0}
        ours = {tuple(row[b]): float(x) for row, x in zip(segments, probabilities[:, b]) if row[b]}
        assert ours.keys() == allowed.keys()
        close(torch.tensor([ours[s] for s in allowed]), torch.tensor(list(allowed.values())))
    assert d.count.tolist() == brute(p, lambda e: e.count()).tolist()


@given(p=tiny_problems(), k=st.integers(1, 5))
def test_partition_max_argmax_topk_match_brute_force(p, k):
    d = dist(p)
    close(d.partition, brute(p, lambda e: e.log_partition))
    close(d.max, brute(p, lambda e: e.max()))
    close(d.log_prob(d.argmax), d.max - d.partition)
    top = d.topk(k)
    close(top.scores, torch.stack([enumerate_structures(p, b).topk(k) for b in range(p.batch_size)], dim=1))
    assert top.segmentations.shape == (k, p.batch_size, p.T)
    assert top.segmentations[0].equal(d.argmax)


@given(p=tiny_problems(), seed=st.integers(0, 10**6))
def test_entropy_cross_entropy_kl_match_brute_force_and_the_semirings(p, seed):
    q = perturbed(p, seed)
    dp, dq = dist(p), dist(q)
    pairs = [(enumerate_structures(p, b), enumerate_structures(q, b)) for b in range(p.batch_size)]
    expected = {"entropy": brute(p, lambda e: e.entropy()),
                "cross_entropy": torch.stack([a.cross_entropy(b) for a, b in pairs]),
                "kl": torch.stack([a.kl(b) for a, b in pairs])}
    with torch.no_grad():  # the marginal path
        close(dp.entropy(), expected["entropy"])
        close(dp.cross_entropy(dq), expected["cross_entropy"])
        close(dp.kl(dq), expected["kl"])
        close(torch.distributions.kl_divergence(dp, dq), expected["kl"])
    close(semimarkov_scan(p, EntropySemiring()), dp.entropy())
    close(semimarkov_scan((p, q), CrossEntropySemiring()), dp.cross_entropy(dq))
    close(semimarkov_scan((p, q), KLDivergenceSemiring()), dp.kl(dq))
    dg = dist(with_grad(p))  # the differentiable semiring path
    close(dg.entropy().detach(), expected["entropy"])
    close(dg.cross_entropy(dq).detach(), expected["cross_entropy"])
    close(dg.kl(dq).detach(), expected["kl"])


def differentiable_brute_entropy_terms(p: SemiMarkovPotentials, q: SemiMarkovPotentials):
    """`(H(p), H(p, q), KL)` summed over the batch, by autograd through
    `log_prob` on the enumerated support (shares no code with the scans)."""
    support = dist(p.replace(**{n: t.detach() for n, t in p.tensors().items()})).enumerate_support()
    lp = support.log_potential(p)
    lq = support.log_potential(q)
    lp, lq = lp - torch.logsumexp(lp, dim=0), lq - torch.logsumexp(lq, dim=0)
    weights = torch.where(torch.isfinite(lp), lp.exp(), torch.zeros_like(lp))

    def expect(x):
        return torch.where(weights > 0, weights * x, torch.zeros_like(x)).sum()

    return -expect(lp), -expect(lq), expect(lp - lq)


@settings(max_examples=20)
@given(p=tiny_problems(max_T=5, max_K=3), seed=st.integers(0, 10**6))
def test_gradients_of_entropy_cross_entropy_kl_match_brute_force(p, seed):
    p, q = with_grad(p), with_grad(perturbed(p, seed))
    tensors = list(p.tensors().values()) + list(q.tensors().values())
    dp, dq = dist(p), dist(q)
    ours = (dp.entropy().sum(), dp.cross_entropy(dq).sum(), dp.kl(dq).sum())
    for mine, reference in zip(ours, differentiable_brute_entropy_terms(p, q)):
        got = torch.autograd.grad(mine, tensors, allow_unused=True)
        want = torch.autograd.grad(reference, tensors, allow_unused=True, retain_graph=True)
        for a, b, t in zip(got, want, tensors):
            close(torch.zeros_like(t) if a is None else a, torch.zeros_like(t) if b is None else b, tol=1e-7)
    # with p fixed, the marginal path carries the exact gradient w.r.t. q
    fixed = dist(p.replace(**{n: t.detach() for n, t in p.tensors().items()}))
    q_tensors = list(q.tensors().values())
    for mine, reference in ((fixed.cross_entropy(dq).sum(), differentiable_brute_entropy_terms(fixed.potentials, q)[1]),
                            (fixed.kl(dq).sum(), differentiable_brute_entropy_terms(fixed.potentials, q)[2])):
        for a, b in zip(torch.autograd.grad(mine, q_tensors), torch.autograd.grad(reference, q_tensors)):
            close(a, b, tol=1e-7)


@given(p=tiny_problems(max_T=6))
def test_marginals_match_brute_force_expectations(p):
    d = dist(p)
    support = d.enumerate_support()
    weights = d.log_prob(support).exp()  # (n, B)
    C, K = p.C, p.K
    inside = support.labels >= 0
    labels = torch.nn.functional.one_hot(support.labels.clamp(min=0), C) * inside[..., None]
    close(d.marginals, torch.einsum("nb,nbtc->btc", weights, labels.double()))
    close(d.boundary_marginals, torch.einsum("nb,nbt->bt", weights, support.starts.double()))
    durations = support.durations()
    segments = torch.nn.functional.one_hot((durations - 1).clamp(min=0), K)[..., None] * labels[..., None, :]
    segments = segments * support.starts[..., None, None]  # (n, B, T, K, C) at each start
    close(d.segment_marginals, torch.einsum("nb,nbtkc->btkc", weights, segments.double()))
    close(d.duration_marginals, torch.einsum("nb,nbtkc->bkc", weights, segments.double()))
    previous = torch.nn.functional.pad(labels[..., :-1, :], (0, 0, 1, 0))
    later = support.starts.clone()
    later[..., 0] = False
    pairs = previous[..., :, None] * labels[..., None, :] * later[..., None, None]  # (n, B, T, C, C)
    if p.duration_dependent:
        by_duration = torch.nn.functional.one_hot((durations - 1).clamp(min=0), K)
        expected = torch.einsum("nb,nbtk,nbtij->bkij", weights, by_duration.double(), pairs.double())
    else:
        expected = torch.einsum("nb,nbtij->bij", weights, pairs.double())
    close(d.transition_marginals, expected)


@given(p=tiny_problems(max_T=6), seed=st.integers(0, 10**6))
def test_expected_score_matches_brute_force(p, seed):
    q = perturbed(p, seed)
    d = dist(p)
    support = d.enumerate_support()
    weights = d.log_prob(support).exp()
    scores = support.log_potential(q)
    expected = torch.where(weights > 0, weights * scores, torch.zeros_like(scores)).sum(dim=0)
    close(d.expected_score(q), expected)


@settings(max_examples=10)
@given(p=tiny_problems(max_T=5, max_K=2))
def test_sample_shape_and_reproducibility(p):
    d = dist(p)
    drawn = d.sample((3, 2), generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 2, p.batch_size, p.T)
    assert bool(torch.isfinite(d.log_prob(drawn)).all())
    assert drawn.equal(d.sample((3, 2), generator=torch.Generator().manual_seed(0)))
    assert d.sample().shape == (p.batch_size, p.T)
