"""SemiMarkovDistribution as a torch Distribution: construction, checks,
errors, torch's conventions (mode, expand, support, broadcasting log_prob,
what has no meaning), and cached results that callers own."""
import pytest
import torch
from hypothesis import given, settings
from strategies import tiny_problems

from semiring_semicrf import SemiMarkovPotentials
from semiring_semicrf.distribution import SemiMarkovDistribution
from semiring_semicrf.segmentation import Segmentation
from semiring_semicrf.testing import enumerate_structures


def make(B=2, T=5, K=3, C=3, lengths=(5, 3), seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    return SemiMarkovDistribution(torch.randn(B, T, C, generator=g, dtype=torch.float64),
                                  torch.randn(C, C, generator=g, dtype=torch.float64),
                                  torch.randn(K, C, generator=g, dtype=torch.float64),
                                  torch.tensor(lengths), **kwargs)


def test_shapes_and_a_torch_distribution():
    d = make()
    assert isinstance(d, torch.distributions.Distribution)
    assert d.batch_shape == (2,) and d.event_shape == (5,)
    assert d.partition.shape == d.entropy().shape == d.max.shape == d.count.shape == (2,)
    assert d.marginals.shape == (2, 5, 3) and d.boundary_marginals.shape == (2, 5)
    assert d.segment_marginals.shape == (2, 5, 3, 3) and d.duration_marginals.shape == (2, 3, 3)
    assert d.transition_marginals.shape == (2, 3, 3)
    assert "B=2, T=5, K=3, C=3" in repr(d)


def test_constructor_and_from_potentials_agree():
    g = torch.Generator().manual_seed(1)
    args = dict(scores=torch.randn(2, 4, 3, generator=g, dtype=torch.float64),
                transition=torch.randn(2, 3, 3, generator=g, dtype=torch.float64),
                duration=torch.randn(2, 3, generator=g, dtype=torch.float64), lengths=torch.tensor([4, 2]),
                start=torch.randn(3, generator=g, dtype=torch.float64),
                end=torch.randn(3, generator=g, dtype=torch.float64),
                start_scores=torch.randn(2, 4, 3, generator=g, dtype=torch.float64),
                end_scores=torch.randn(2, 4, 3, generator=g, dtype=torch.float64))
    a = SemiMarkovDistribution(**args)
    b = SemiMarkovDistribution.from_potentials(SemiMarkovPotentials(**args))
    torch.testing.assert_close(a.partition, b.partition)
    assert a.argmax.equal(b.argmax)


def test_from_potentials_rejects_explicit_edges():
    p = make().potentials
    with pytest.raises(TypeError, match="explicit edge"):
        SemiMarkovDistribution.from_potentials(SemiMarkovPotentials.from_edges(p.to_edges(), p.lengths))


def test_log_prob_rejects_bad_values_with_clear_errors():
    d = make(B=1, T=4, K=2, C=2, lengths=(3,))
    cases = {
        "runs past the sequence's length": [[(0, 2, 1), (2, 4, 0)]],
        "does not cover the whole sequence": [[(0, 2, 1)]],
        "out of range": [[(0, 2, 1), (2, 3, 5)]],
        "longer than K = 2": [[(0, 3, 1)]],
    }
    for message, segments in cases.items():
        with pytest.raises(ValueError, match=message):
            d.log_prob(Segmentation.from_segments(segments, T=4))
    with pytest.raises(ValueError, match="overlaps"):
        d.log_prob(Segmentation.from_segments([[(0, 2, 1), (1, 3, 0)]], T=4))
    with pytest.raises(TypeError, match="value must be a Segmentation"):
        d.log_prob(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., B, T\)"):
        d.log_prob(Segmentation.from_segments([[(0, 3, 1)]], T=3))


def test_validate_args_is_honoured():
    scores = torch.randn(1, 3, 2)
    scores[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="scores contains NaN"):
        SemiMarkovDistribution(scores, torch.zeros(2, 2), torch.zeros(2, 2), validate_args=True)
    d = SemiMarkovDistribution(scores, torch.zeros(2, 2), torch.zeros(2, 2), validate_args=False)
    assert torch.isnan(d.partition).all()
    past_the_length = Segmentation.from_segments([[(0, 2, 1), (2, 4, 0)]], T=4)
    quiet = make(B=1, T=4, K=2, C=2, lengths=(3,), validate_args=False)
    assert quiet.log_prob(past_the_length).shape == (1,)  # unchecked: a number, meaningless
    with pytest.raises(ValueError, match="runs past the sequence's length"):
        make(B=1, T=4, K=2, C=2, lengths=(3,), validate_args=True).log_prob(past_the_length)


def test_empty_entries_have_probability_zero():
    d = make()
    top = d.topk(10_000)
    assert bool((top.scores[-1] == float("-inf")).all())
    assert bool((d.log_prob(top.segmentations)[-1] == float("-inf")).all())


def test_kl_divergence_is_registered():
    p, q = make(seed=0), make(seed=1)
    torch.testing.assert_close(torch.distributions.kl_divergence(p, q), p.kl(q))
    assert bool((p.kl(q) > 0).all()) and torch.allclose(p.kl(p), torch.zeros(2, dtype=torch.float64), atol=1e-9)


def test_cross_entropy_needs_a_compatible_distribution():
    with pytest.raises(ValueError, match="must share B, T, K, C"):
        make().cross_entropy(make(K=2))
    with pytest.raises(ValueError, match="same lengths"):
        make().kl(make(lengths=(5, 4)))
    with pytest.raises(TypeError, match="SemiMarkovDistribution"):
        make().kl(torch.distributions.Normal(0.0, 1.0))


def test_count_is_exact_at_large_numbers():
    """Std without renormalization: integer counts stay exact past T = 16."""
    T, K, C = 27, 4, 2
    d = SemiMarkovDistribution(torch.zeros(1, T, C), torch.zeros(C, C), torch.zeros(K, C))
    counts = [1]
    for L in range(1, T + 1):
        counts.append(C * sum(counts[max(0, L - K):L]))
    assert counts[T] < 2**53 and int(d.count[0]) == counts[T]
    forbid = torch.zeros(C, C)
    forbid[0, 1] = float("-inf")
    assert int(SemiMarkovDistribution(torch.zeros(1, 6, C), forbid, torch.zeros(K, C)).count[0]) < counts[6]


def test_enumerate_support_refuses_large_problems():
    with pytest.raises(ValueError, match="more than limit=10000 segmentations"):
        SemiMarkovDistribution(torch.zeros(1, 30, 3), torch.zeros(3, 3), torch.zeros(4, 3)).enumerate_support()
    assert make().enumerate_support(limit=10**6).shape[1:] == (2, 5)


def test_to_device_keeps_the_distribution():
    d = make(backend="torch")
    moved = d.to("cpu")
    torch.testing.assert_close(moved.partition, d.partition)
    assert moved.backend == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        make(backend="cuda")


def test_partition_and_max_are_differentiable():
    d = make()
    tensors = d.potentials.tensors()
    scores = tensors["scores"].requires_grad_()
    d = SemiMarkovDistribution.from_potentials(d.potentials)
    (grad,) = torch.autograd.grad(d.partition.sum(), scores)
    torch.testing.assert_close(grad, d.marginals)
    (grad,) = torch.autograd.grad(d.max.sum(), scores)
    best = d.argmax
    expected = torch.nn.functional.one_hot(best.labels.clamp(min=0), 3) * (best.labels >= 0)[..., None]
    torch.testing.assert_close(grad, expected.double())


def test_sample_and_query_arguments_are_checked():
    d = make()
    assert d.sample((0, 3)).shape == (0, 3, 2, 5)
    with pytest.raises(ValueError, match="sample_shape must hold non-negative ints"):
        d.sample((-1,))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        d.sample((2,), generator=3)
    with pytest.raises(ValueError, match="must share B, T, K, C"):
        d.kl(make(B=3, lengths=(5, 3, 2)))
    with pytest.raises(TypeError, match="potentials must be SemiMarkovPotentials"):
        d.expected_score(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="limit must be an int >= 0"):
        d.enumerate_support(limit="x")


def test_an_empty_batch_gives_empty_results_where_the_distribution_decides():
    d = SemiMarkovDistribution(torch.zeros(0, 4, 3), torch.zeros(3, 3), torch.zeros(2, 3))
    assert d.argmax.shape == (0, 4) and d.topk(2).scores.shape == (2, 0) and d.count.shape == (0,)
    assert d.sample((2,)).shape == (2, 0, 4) and d.enumerate_support().shape == (0, 0, 4)


# -- torch.distributions conventions ----------------------------------------------------
def brute_log_prob(p: SemiMarkovPotentials, b: int, segments: list) -> torch.Tensor:
    """log p(segments) in sequence b by brute force (-inf if not allowed)."""
    truth = enumerate_structures(p, b)
    for structure, probability in zip(truth.structures, truth.probabilities):
        if list(structure) == list(segments):
            return probability.log()
    return torch.tensor(float("-inf"), dtype=torch.float64)


@settings(deadline=None, max_examples=15)
@given(p=tiny_problems(max_T=6))
def test_mode_is_the_most_probable_segmentation(p):
    d = SemiMarkovDistribution.from_potentials(p)
    assert d.mode.equal(d.argmax)
    for b in range(p.batch_size):
        truth = enumerate_structures(p, b)
        torch.testing.assert_close(d.log_prob(d.mode)[b], truth.max() - truth.log_partition)


def test_expand_broadcasts_a_batch_of_one():
    one = make(B=1, T=5, lengths=(4,), seed=5)
    wide = one.expand((3,))
    assert isinstance(wide, SemiMarkovDistribution) and wide.batch_shape == (3,) and wide.event_shape == (5,)
    assert wide.potentials.scores.data_ptr() == one.potentials.scores.data_ptr()  # a view, no copy
    assert wide.lengths.tolist() == [4, 4, 4] and wide.backend == one.backend
    truth = enumerate_structures(one.potentials, 0)
    torch.testing.assert_close(wide.partition, truth.log_partition.expand(3))
    torch.testing.assert_close(wide.entropy(), truth.entropy().expand(3))
    torch.testing.assert_close(wide.marginals, one.marginals.expand(3, -1, -1))
    assert wide.argmax.to_segments() == one.argmax.to_segments() * 3
    samples = wide.sample((2,))
    assert samples.shape == (2, 3, 5) and bool(wide.support.check(samples).all())
    assert one.expand(torch.Size([1])).batch_shape == (1,)
    two = make()
    assert two.expand((2,)).batch_shape == (2,)
    with pytest.raises(ValueError, match="a batch of 2 sequences broadcasts to 2"):
        two.expand((3,))
    with pytest.raises(ValueError, match=r"1-D batch \(B,\)"):
        one.expand((2, 3))


@settings(deadline=None, max_examples=20)
@given(p=tiny_problems(max_T=5))
def test_support_is_the_allowed_segmentations(p):
    d = SemiMarkovDistribution.from_potentials(p)
    assert isinstance(d.support, torch.distributions.constraints.Constraint)
    assert d.support.is_discrete and d.support.event_dim == 1
    for b in range(p.batch_size):
        truth = enumerate_structures(p, b)  # every segmentation, forbidden ones included
        listed = Segmentation.from_segments([list(s) for s in truth.structures], p.T)
        value = Segmentation(listed.labels[:, None].expand(-1, p.batch_size, -1).clone(),
                             listed.starts[:, None].expand(-1, p.batch_size, -1).clone())
        allowed = d.support.check(value)
        assert allowed.shape == (len(truth.structures), p.batch_size)
        assert allowed[:, b].tolist() == (truth.probabilities > 0).tolist()
        same_length = p.lengths == int(p.lengths[b])
        assert not allowed[:, ~same_length].any()  # another length: not a segmentation of that sequence


def test_support_rejects_labels_and_durations_out_of_range_and_empty_entries():
    d = make(B=1, T=4, K=2, C=2, lengths=(4,))
    listed = Segmentation.from_segments([[(0, 2, 1), (2, 4, 0)], [(0, 2, 1), (2, 4, 2)], [(0, 3, 1), (3, 4, 0)],
                                         [(0, 2, 1), (2, 3, 0)], []], T=4)
    value = Segmentation(listed.labels[:, None], listed.starts[:, None], listed.lengths[:, None])  # (5, B, T)
    assert d.support.check(value).tolist() == [[True], [False], [False], [False], [False]]
    assert repr(d.support) == "SegmentationsOf(B=1, T=4, K=2, C=2)"
    with pytest.raises(ValueError, match=r"value must be a Segmentation of shape \(\.\.\., B, T\)"):
        d.support.check(Segmentation.from_segments([[(0, 3, 1)]], T=3))


def test_log_prob_broadcasts_a_segmentation_over_the_batch():
    d = make(B=3, T=5, K=3, C=3, lengths=(5, 5, 5), seed=2)
    segments = [(0, 2, 1), (2, 5, 0)]
    one = Segmentation.from_segments([segments], T=5)
    expected = torch.stack([brute_log_prob(d.potentials, b, segments) for b in range(3)])
    torch.testing.assert_close(d.log_prob(one[0]), expected)  # (T,)
    torch.testing.assert_close(d.log_prob(one), expected)  # (1, T)
    samples = d.sample((4,))  # (N, B, T)
    stacked = Segmentation(samples.labels[:, :1], samples.starts[:, :1])  # (N, 1, T)
    assert d.log_prob(stacked).shape == (4, 3)
    for n, rows in enumerate(stacked.to_segments()):
        torch.testing.assert_close(d.log_prob(stacked)[n],
                                   torch.stack([brute_log_prob(d.potentials, b, rows[0]) for b in range(3)]))
    with pytest.raises(ValueError, match=r"or one that broadcasts to it"):
        d.log_prob(Segmentation.from_segments([segments] * 2, T=5))  # (2, T) against B = 3


UNSUPPORTED = {  # what a segmentation lacks, and what the message must point to
    "mean": (lambda d: d.mean, r"\.marginals"),
    "variance": (lambda d: d.variance, r"\.marginals"),
    "stddev": (lambda d: d.stddev, r"\.marginals"),
    "rsample": (lambda d: d.rsample(), r"\.sample\(\)"),
    "cdf": (lambda d: d.cdf(d.argmax), r"\.log_prob"),
    "icdf": (lambda d: d.icdf(torch.zeros(2)), r"\.sample\(\)"),
}


@pytest.mark.parametrize("use,pointer", UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_what_segmentations_lack_raises_with_what_to_use(use, pointer):
    with pytest.raises(NotImplementedError, match=pointer):
        use(make())


def test_perplexity_is_the_exponentiated_entropy():
    d = make()
    truth = torch.stack([enumerate_structures(d.potentials, b).entropy() for b in range(2)])
    torch.testing.assert_close(d.perplexity(), truth.exp())


# -- cached results are the caller's own ----------------------------------------------
def test_editing_a_returned_result_in_place_changes_no_later_query():
    d = make(seed=3)
    p = d.potentials
    truth = [enumerate_structures(p, b) for b in range(2)]
    entropy = torch.stack([t.entropy() for t in truth])
    log_z = torch.stack([t.log_partition for t in truth])
    before = {"marginals": d.marginals, "transition": d.transition_marginals, "count": d.count,
              "argmax": d.argmax.to_segments()}
    for result in (d.transition_marginals, d.duration_marginals, d.partition, d.count, d.marginals,
                   d.boundary_marginals, d.max.detach()):
        result /= result.sum()  # what `tm = d.transition_marginals; tm /= tm.sum()` did to the cache
    posterior = d.posterior
    for name in posterior.FIELDS:
        getattr(posterior, name).mul_(7.0)
    best = d.argmax
    best.labels.fill_(0)
    best.starts.fill_(True)
    torch.testing.assert_close(d.entropy(), entropy)
    torch.testing.assert_close(d.partition, log_z)
    torch.testing.assert_close(d.marginals, before["marginals"])
    torch.testing.assert_close(d.transition_marginals, before["transition"])
    assert torch.equal(d.count, before["count"]) and d.argmax.to_segments() == before["argmax"]
    torch.testing.assert_close(d.kl(d), torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(d.log_prob(d.argmax), torch.stack([t.max() for t in truth]) - log_z)
