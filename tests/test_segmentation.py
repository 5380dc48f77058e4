"""Segmentation values: conversions, checks, and their scores against brute force."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import tiny_problems

from semiring_semicrf import SemiMarkovPotentials
from semiring_semicrf.segmentation import Segmentation, labels_from_starts
from semiring_semicrf.testing import enumerate_segmentations, enumerate_structures


@st.composite
def segment_lists(draw, max_B=3, max_T=7, max_K=3, max_C=3):
    """`(segments per sequence, T)`, each a segmentation of a drawn length."""
    T, K, C = draw(st.integers(1, max_T)), draw(st.integers(1, max_K)), draw(st.integers(1, max_C))
    batch = []
    for _ in range(draw(st.integers(1, max_B))):
        choices = enumerate_segmentations(draw(st.integers(1, T)), K, C)
        batch.append(list(draw(st.sampled_from(choices))))
    return batch, T


@given(drawn=segment_lists())
def test_segments_round_trip(drawn):
    segments, T = drawn
    value = Segmentation.from_segments(segments, T)
    assert value.shape == (len(segments), T)
    assert value.to_segments() == segments
    assert value.lengths.tolist() == [seq[-1][1] for seq in segments]
    assert value.num_segments().tolist() == [len(seq) for seq in segments]
    for b, seq in enumerate(segments):
        assert value.durations()[b][value.starts[b]].tolist() == [e - s for s, e, _ in seq]
        assert value.ends()[b].nonzero().flatten().tolist() == [e - 1 for _, e, _ in seq]


@given(drawn=segment_lists())
def test_labels_round_trip_and_starts_keep_equal_neighbours_apart(drawn):
    segments, T = drawn
    value = Segmentation.from_segments(segments, T)
    assert Segmentation.from_labels(value.labels, value.starts).equal(value)
    assert Segmentation.from_labels(value.labels, value.starts, value.lengths).equal(value)
    start_labels = torch.where(value.starts, value.labels, torch.full_like(value.labels, -1))
    assert torch.equal(labels_from_starts(value.starts, start_labels, value.lengths), value.labels)
    merged = Segmentation.from_labels(value.labels)
    for seq, merged_seq in zip(segments, merged.to_segments()):
        runs = []
        for s, e, c in seq:
            if runs and runs[-1][2] == c:
                runs[-1] = (runs[-1][0], e, c)
            else:
                runs.append((s, e, c))
        assert merged_seq == runs


@given(drawn=segment_lists())
def test_leading_dims_index_and_convert(drawn):
    segments, T = drawn
    value = Segmentation.from_segments(segments, T)
    stacked = Segmentation(torch.stack([value.labels] * 2), torch.stack([value.starts] * 2))
    assert stacked.to_segments() == [segments, segments]
    assert stacked[1].equal(value) and stacked[0, 0].to_segments() == segments[0]


def test_from_segments_rejects_bad_tilings():
    cases = {
        "overlaps the previous segment": [[(0, 2, 0), (1, 3, 1)]],
        "leaves a gap": [[(0, 1, 0), (2, 3, 1)]],
        "is empty": [[(0, 0, 1)]],
        "negative label": [[(0, 2, -1)]],
        r"past T = 2": [[(0, 3, 0)]],
    }
    for message, segments in cases.items():
        with pytest.raises(ValueError, match=message):
            Segmentation.from_segments(segments, T=2 if "past" in message else None)


def test_constructor_rejects_what_is_not_a_tiling():
    labels = torch.tensor([[0, 0, 1]])
    with pytest.raises(ValueError, match="label changes inside a segment"):
        Segmentation(labels, torch.tensor([[True, False, False]]))
    with pytest.raises(ValueError, match="starting at position 0"):
        Segmentation(labels, torch.tensor([[False, False, True]]))
    with pytest.raises(ValueError, match="starts past the length"):
        Segmentation(torch.tensor([[0, -1]]), torch.tensor([[True, True]]))
    with pytest.raises(ValueError, match="gap"):
        Segmentation(torch.tensor([[0, -1, 1]]), torch.tensor([[True, False, True]]), torch.tensor([3]))
    with pytest.raises(ValueError, match="past the length must be -1"):
        Segmentation(labels, torch.tensor([[True, False, True]]), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\]"):
        Segmentation(labels, torch.tensor([[True, False, True]]), torch.tensor([4]))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        Segmentation(labels.float(), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="starts must be a bool tensor"):
        Segmentation(labels, torch.ones(1, 3))


def test_the_tiling_check_reads_the_device_once():
    """Each read of a value on the host waits for a GPU: the rules are
    reduced on the device and read back together."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            HostReads.count += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    value = Segmentation.from_segments([[(0, 2, 1), (2, 5, 0)], [(0, 1, 2)]], 5)
    with HostReads():
        Segmentation(value.labels, value.starts, value.lengths)
        value.clone()[1:].expand(2, 1)
    assert HostReads.count == 1


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_decoded_values_are_tilings(backend):
    """argmax, topk and samples skip the tiling check (their kernels build
    tilings); the check, run on their outputs, passes."""
    from semiring_semicrf import SemiMarkovDistribution
    if backend == "triton":
        pytest.importorskip("triton")
    torch.manual_seed(0)
    B, T, K, C = 3, 9, 4, 3
    d = SemiMarkovDistribution(torch.randn(B, T, C), torch.randn(C, C), torch.randn(K, C),
                               torch.tensor([9, 5, 1]), backend=backend)
    for value in (d.argmax, d.topk(3).segmentations, d.sample((5,), generator=torch.Generator().manual_seed(1))):
        checked = Segmentation(value.labels, value.starts, value.lengths)
        assert checked.equal(value)
        assert torch.isfinite(d.log_prob(checked)).all()


def test_validate_names_what_the_problem_forbids():
    p = SemiMarkovPotentials(torch.zeros(1, 4, 2), torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([3]))
    ok = Segmentation.from_segments([[(0, 2, 1), (2, 3, 0)]], T=4)
    ok.validate(p)
    cases = {
        "runs past the sequence's length": [[(0, 2, 1), (2, 4, 0)]],
        "does not cover the whole sequence": [[(0, 2, 1)]],
        r"label 2 at position 2 is out of range \[0, 2\)": [[(0, 2, 1), (2, 3, 2)]],
        "has length 3, longer than K = 2": [[(0, 3, 1)]],
    }
    for message, segments in cases.items():
        with pytest.raises(ValueError, match=message):
            Segmentation.from_segments(segments, T=4).validate(p)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., B, T\) = \(\.\.\., 1, 4\)"):
        Segmentation.from_segments([[(0, 3, 0)]], T=3).validate(p)


@given(p=tiny_problems(max_T=5, max_K=3))
def test_log_potential_equals_brute_force_score_of_every_structure(p):
    filler = [[(t, t + 1, 0) for t in range(int(L))] for L in p.lengths]
    for b in range(p.batch_size):
        enum = enumerate_structures(p, b)
        flat = [seq for s in enum.structures for seq in filler[:b] + [list(s)] + filler[b + 1:]]
        values = Segmentation.from_segments(flat, p.T)
        batched = Segmentation(values.labels.view(-1, p.batch_size, p.T), values.starts.view(-1, p.batch_size, p.T))
        scores = batched.log_potential(p)[:, b]
        torch.testing.assert_close(scores, enum.scores, rtol=1e-9, atol=1e-9)


@given(p=tiny_problems(max_T=5, max_K=2), seed=st.integers(0, 10**6))
def test_log_potential_of_explicit_edges_sums_out_the_first_label(p, seed):
    pinned = SemiMarkovPotentials.from_edges(p.to_edges(), p.lengths)
    filler = Segmentation.from_segments([[(t, t + 1, 0) for t in range(int(L))] for L in p.lengths], p.T)
    torch.testing.assert_close(filler.log_potential(pinned), filler.log_potential(p), rtol=1e-9, atol=1e-9)
    g = torch.Generator().manual_seed(seed)
    free = SemiMarkovPotentials.from_edges(torch.randn(p.to_edges().shape, generator=g, dtype=torch.float64),
                                           p.lengths)
    for b in range(p.batch_size):
        enum = enumerate_structures(free, b)
        mine = tuple(filler[b].to_segments())
        expected = torch.logsumexp(torch.stack([s for (_, segs), s in zip(enum.structures, enum.scores)
                                                if segs == mine]), dim=0)
        torch.testing.assert_close(filler.log_potential(free)[b], expected, rtol=1e-9, atol=1e-9)


def test_log_potential_gradient_counts_the_parts():
    torch.manual_seed(0)
    B, T, K, C = 1, 5, 3, 3
    p = SemiMarkovPotentials(torch.randn(B, T, C, requires_grad=True), torch.randn(C, C, requires_grad=True),
                             torch.randn(K, C, requires_grad=True), start=torch.randn(C, requires_grad=True),
                             end=torch.randn(C, requires_grad=True))
    value = Segmentation.from_segments([[(0, 2, 1), (2, 3, 1), (3, 5, 0)]])
    grads = torch.autograd.grad(value.log_potential(p).sum(), [p.scores, p.transition, p.duration, p.start, p.end])
    assert torch.equal(grads[0][0], torch.nn.functional.one_hot(torch.tensor([1, 1, 1, 0, 0]), C).float())
    transitions = torch.zeros(C, C)
    transitions[1, 1] = transitions[1, 0] = 1
    durations = torch.zeros(K, C)
    durations[1, 1] = durations[0, 1] = durations[1, 0] = 1
    assert torch.equal(grads[1], transitions) and torch.equal(grads[2], durations)
    assert grads[3].tolist() == [0, 1, 0] and grads[4].tolist() == [1, 0, 0]
