"""Serialization: the head's state_dict round-trips (also under
`weights_only=True`), a trained head saved and reloaded decodes identically,
and a distribution (its parameters, or the object itself) saved with
`torch.save` reloads to the same partition."""
from __future__ import annotations

import io

import pytest
import torch

from semiring_semicrf import SemiMarkovPotentials
from semiring_semicrf.distribution import SemiMarkovDistribution
from semiring_semicrf.nn import SemiMarkovCRFHead
from semiring_semicrf.segmentation import Segmentation
from semiring_semicrf.synthetic import make_synthetic, segment_f1

C, K, H = 3, 6, 8


def roundtrip(obj, weights_only=True):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=weights_only)


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(24, num_classes=C, max_duration=K, hidden_dim=H, min_length=12, max_length=30, seed=5)


@pytest.fixture(scope="module")
def trained(synthetic):
    """A head trained for a few steps (so no parameter is at its zero init)."""
    torch.manual_seed(0)
    head = SemiMarkovCRFHead(C, K, H)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(15):
        optimizer.zero_grad()
        head.compute_loss(synthetic.hidden, synthetic.lengths, synthetic.segmentation).backward()
        optimizer.step()
    return head


def test_state_dict_round_trips_exactly(trained):
    state = roundtrip(trained.state_dict())  # weights_only=True: plain tensors only
    assert list(state) == list(trained.state_dict())
    fresh = SemiMarkovCRFHead(C, K, H)
    assert fresh.load_state_dict(state, strict=True) is not None
    for (name, a), (_, b) in zip(trained.state_dict().items(), fresh.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert all(p.abs().sum() > 0 for p in trained.state_dict().values())


def test_trained_head_saved_and_reloaded_decodes_identically(trained, synthetic):
    fresh = SemiMarkovCRFHead(C, K, H)
    fresh.load_state_dict(roundtrip(trained.state_dict()))
    before, after = trained.decode(synthetic.hidden, synthetic.lengths), fresh.decode(synthetic.hidden,
                                                                                       synthetic.lengths)
    assert isinstance(after, Segmentation) and after.equal(before)
    assert segment_f1(before, synthetic.segmentation) > 0.3  # it did learn something
    with torch.no_grad():
        assert torch.equal(trained(synthetic.hidden, synthetic.lengths).partition,
                           fresh(synthetic.hidden, synthetic.lengths).partition)


def test_whole_head_pickles(trained, synthetic):
    """`torch.save(head)` (a pickled module: needs weights_only=False to load)."""
    copy = roundtrip(trained, weights_only=False)
    assert isinstance(copy, SemiMarkovCRFHead) and copy.extra_repr() == trained.extra_repr()
    assert copy.decode(synthetic.hidden, synthetic.lengths).equal(trained.decode(synthetic.hidden, synthetic.lengths))


def test_state_dict_of_another_size_is_refused(trained):
    with pytest.raises(RuntimeError, match="size mismatch"):
        SemiMarkovCRFHead(C + 1, K, H).load_state_dict(trained.state_dict())


def _distribution(extras: bool, dependent: bool) -> SemiMarkovDistribution:
    g = torch.Generator().manual_seed(7)
    B, T = 3, 9
    kwargs = dict(scores=torch.randn(B, T, C, generator=g),
                  transition=torch.randn(*((K,) if dependent else ()), C, C, generator=g),
                  duration=torch.randn(K, C, generator=g), lengths=torch.tensor([9, 4, 7]),
                  start=torch.randn(C, generator=g), end=torch.randn(C, generator=g))
    kwargs["transition"][..., 0, 1] = float("-inf")  # a hard constraint survives too
    if extras:
        kwargs.update(start_scores=torch.randn(B, T, C, generator=g), end_scores=torch.randn(B, T, C, generator=g))
    return SemiMarkovDistribution(**kwargs)


@pytest.mark.parametrize("extras,dependent", [(False, False), (True, True)])
def test_distribution_parameters_save_and_reload_to_the_same_partition(extras, dependent):
    d = _distribution(extras, dependent)
    saved = {**d.potentials.tensors(), "lengths": d.lengths}
    loaded = roundtrip(saved)  # weights_only=True: a dict of tensors
    again = SemiMarkovDistribution(**loaded)
    assert torch.equal(again.partition, d.partition)
    assert torch.equal(again.marginals, d.marginals)
    assert again.argmax.equal(d.argmax)


@pytest.mark.parametrize("extras,dependent", [(False, False), (True, True)])
def test_distribution_object_pickles(extras, dependent):
    d = _distribution(extras, dependent)
    _ = d.partition, d.argmax  # with filled caches
    copy = roundtrip(d, weights_only=False)
    assert isinstance(copy, SemiMarkovDistribution)
    assert torch.equal(copy.partition, d.partition) and copy.argmax.equal(d.argmax)
    fresh = SemiMarkovDistribution.from_potentials(roundtrip(d.potentials, weights_only=False))
    assert torch.equal(fresh.partition, d.partition)


def test_segmentations_and_potentials_pickle():
    d = _distribution(False, False)
    value = d.sample((2,), generator=torch.Generator().manual_seed(0))
    copy = roundtrip(value, weights_only=False)
    assert copy.equal(value) and torch.equal(d.log_prob(copy), d.log_prob(value))
    p = roundtrip(d.potentials, weights_only=False)
    assert isinstance(p, SemiMarkovPotentials) and torch.equal(p.lengths, d.lengths)
