"""SemiMarkovCRFHead, the synthetic data, segment F1 and the demo."""
import os

import pytest
import torch

from semiring_semicrf.distribution import SemiMarkovDistribution
from semiring_semicrf.nn import SemiMarkovCRFHead
from semiring_semicrf.segmentation import Segmentation
from semiring_semicrf.synthetic import duration_ranges, make_synthetic, segment_f1


def test_head_gives_a_distribution_and_a_loss_with_gradients_everywhere():
    torch.manual_seed(0)
    head = SemiMarkovCRFHead(3, 4, 5)
    data = make_synthetic(4, num_classes=3, max_duration=4, hidden_dim=5, min_length=6, max_length=9)
    dist = head(data.hidden, data.lengths)
    assert isinstance(dist, SemiMarkovDistribution) and dist.batch_shape == (4,) and dist.event_shape == (9,)
    loss = head.compute_loss(data.hidden, data.lengths, data.segmentation)
    torch.testing.assert_close(loss, -dist.log_prob(data.segmentation).mean())
    loss.backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name
    decoded = head.decode(data.hidden, data.lengths)
    assert isinstance(decoded, Segmentation) and decoded.shape == (4, 9)
    decoded.validate(dist.potentials)
    assert head.double()(data.hidden.double(), data.lengths).potentials.dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head.float()(data.hidden, data.lengths).potentials.dtype == torch.float32


def test_head_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_duration must be an int >= 1"):
        SemiMarkovCRFHead(3, 0, 5)
    head = SemiMarkovCRFHead(3, 4, 5)
    with pytest.raises(ValueError, match=r"hidden must have shape \(B, T, H\) with H = hidden_dim = 5"):
        head(torch.zeros(2, 7, 6))
    with pytest.raises(TypeError, match="hidden must be a floating tensor"):
        head(torch.zeros(2, 7, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="lengths must lie in"):
        head(torch.zeros(2, 7, 5), torch.tensor([8, 3]))
    with pytest.raises(TypeError, match="hidden has dtype torch.float64 but the head's parameters have torch.float32"):
        head(torch.zeros(2, 7, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="hidden is on meta"):
        head(torch.zeros(2, 7, 5, device="meta"))


def test_head_recovers_planted_segments():
    """Training on synthetic data reaches segment F1 >= 0.9 on held-out data."""
    torch.manual_seed(0)
    shape = dict(num_classes=4, max_duration=10, hidden_dim=16, min_length=20, max_length=40)
    train, test = make_synthetic(64, seed=0, **shape), make_synthetic(32, seed=1, **shape)
    head = SemiMarkovCRFHead(4, 10, 16)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    order = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = train[torch.randperm(64, generator=order)[:16]]
        loss = head.compute_loss(batch.hidden, batch.lengths, batch.segmentation)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    f1 = segment_f1(head.decode(test.hidden, test.lengths), test.segmentation)
    print(f"segment F1 = {f1:.4f}")
    assert f1 >= 0.9


def test_synthetic_data_is_deterministic_and_planted_as_documented():
    a = make_synthetic(8, seed=3)
    b = make_synthetic(8, seed=3)
    assert torch.equal(a.hidden, b.hidden) and a.segmentation.equal(b.segmentation)
    assert not torch.equal(make_synthetic(8, seed=4).hidden, a.hidden)
    assert torch.equal(make_synthetic(8, seed=4).label_means, a.label_means)
    ranges = duration_ranges(4, 12)
    for segments, length in zip(a.segmentation.to_segments(), a.lengths.tolist()):
        assert segments[-1][1] == length
        for (s, e, c), previous in zip(segments, [None] + segments[:-1]):
            low, high = ranges[c]
            assert e - s <= high and (e - s >= low or e == length)
            assert previous is None or previous[2] != c
    assert bool((a.hidden[~a.segmentation.valid_mask()] == 0).all())


def test_segment_f1():
    gold = Segmentation.from_segments([[(0, 2, 0), (2, 5, 1)], [(0, 3, 1)]], T=5)
    assert segment_f1(gold, gold) == 1.0
    predicted = Segmentation.from_segments([[(0, 2, 0), (2, 4, 1), (4, 5, 1)], [(0, 3, 0)]], T=5)
    precision, recall = 1 / 4, 1 / 3
    assert segment_f1(predicted, gold) == pytest.approx(2 * precision * recall / (precision + recall))
    assert segment_f1(Segmentation.from_segments([[(0, 5, 2)], [(0, 3, 2)]], T=5), gold) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        segment_f1(gold[:1], gold)


def test_demo_runs_and_writes_its_plot(tmp_path, capsys):
    from semiring_semicrf import demo

    assert demo.main(["--out", str(tmp_path), "--steps", "3"]) == 0
    printed = capsys.readouterr().out
    for words in ("log Z", "Viterbi", "top-3", "sample 3", "entropy", "Segment F1", "label_marginals.png"):
        assert words in printed
    assert os.path.getsize(tmp_path / "label_marginals.png") > 10_000


def test_compute_loss_errors_name_the_labels():
    head = SemiMarkovCRFHead(3, 2, 5)
    data = make_synthetic(2, num_classes=3, max_duration=2, hidden_dim=5, min_length=4, max_length=6, seed=0)
    gold = data.segmentation.to_segments()
    assert data.lengths.tolist() == [6, 4] and gold[0][0] == (0, 2, 2)
    cases = {
        "labels must be a Segmentation": data.segmentation.labels,
        r"labels\[0\]: label 3 at position 0 is out of range \[0, 3\)":
            Segmentation.from_segments([[(0, 2, 3)] + gold[0][1:], gold[1]], T=6),
        r"labels must be a Segmentation of shape \(\.\.\., B, T\)": Segmentation.from_segments(gold, T=7),
        r"labels\[1\]: the segmentation covers \[0, 6\) but the sequence has length 4":
            Segmentation.from_segments([gold[0], gold[0]], T=6),
    }
    for message, labels in cases.items():
        with pytest.raises((TypeError, ValueError), match=message):
            head.compute_loss(data.hidden, data.lengths, labels)


def test_the_loss_compiles_whole_and_equals_eager():
    """`torch.compile(head.compute_loss, fullgraph=True)`: one graph around
    the log partition's custom operator, the eager loss and gradients, with
    torch.distributions' validation on (the gold segmentation's checks, host
    reads, are skipped while dynamo traces)."""
    data = make_synthetic(4, num_classes=3, max_duration=5, hidden_dim=6, min_length=9, max_length=20)
    head = SemiMarkovCRFHead(3, 5, 6)
    compiled = torch.compile(head.compute_loss, fullgraph=True, backend="eager")
    default = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    try:
        losses = [fn(data.hidden, data.lengths, data.segmentation) for fn in (head.compute_loss, compiled)]
    finally:
        torch.distributions.Distribution.set_default_validate_args(default)
    torch.testing.assert_close(losses[1], losses[0])
    params = list(head.parameters())
    for want, got in zip(torch.autograd.grad(losses[0], params), torch.autograd.grad(losses[1], params)):
        torch.testing.assert_close(got, want)
