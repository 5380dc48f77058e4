"""Built-in synthetic data: sequences with planted segments, and segment F1.

Each sequence is a chain of segments. A segment's label differs from the
previous one (uniformly among the others; the first label is uniform), and
its length is drawn uniformly from a label-specific range inside `[1, K]`
(label 0 short, the last label long; see :func:`duration_ranges`); the last
segment is cut at the sequence's length. Each position's feature vector is its
label's mean (a fixed random vector of norm `sqrt(hidden_dim)`) plus
Gaussian noise of standard deviation `noise` per dimension, so single
positions are ambiguous while durations and transitions carry the rest.
The label means are drawn from `task_seed` (one task: train and test sets
share it) and the sequences from `seed`: same arguments, same data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .segmentation import Segmentation


@dataclass(frozen=True)
class SyntheticData:
    """A batch of synthetic sequences.

    Attributes:
        hidden: `(N, T, H)` float32 features, zero past each length.
        lengths: `(N,)` int64.
        segmentation: the planted `(N, T)` :class:`Segmentation`.
        label_means: `(C, H)` the mean feature vector of each label.
    """

    hidden: torch.Tensor
    lengths: torch.Tensor
    segmentation: Segmentation
    label_means: torch.Tensor

    def __getitem__(self, index) -> SyntheticData:
        """A sub-batch (`index` over sequences: a slice, list or tensor)."""
        return SyntheticData(self.hidden[index], self.lengths[index], self.segmentation[index], self.label_means)


def duration_ranges(num_classes: int, max_duration: int) -> list:
    """`(low, high)` (inclusive) segment lengths of each label: windows of
    width about `K / 3` spread evenly over `[1, K]`, shortest for label 0."""
    width = max(1, max_duration // 3)
    lows = torch.linspace(1, max_duration - width + 1, num_classes).round().long().tolist()
    return [(low, min(max_duration, low + width - 1)) for low in lows]


def make_synthetic(num_sequences: int, *, num_classes: int = 4, max_duration: int = 12, hidden_dim: int = 16,
                   min_length: int = 40, max_length: int = 80, noise: float = 1.0, seed: int = 0,
                   task_seed: int = 0) -> SyntheticData:
    """Draw `num_sequences` sequences with planted segments (module docstring).

    Args:
        num_sequences: N >= 1.
        num_classes: C >= 2 labels.
        max_duration: K, the longest planted segment.
        hidden_dim: H, the feature size.
        min_length, max_length: sequence lengths, uniform in this range
            (T = max_length).
        noise: per-dimension standard deviation of the feature noise.
        seed: seeds the draw of the sequences (lengths, segments, noise).
        task_seed: seeds the draw of the label means (the task itself).
    """
    for name, value, low in (("num_sequences", num_sequences, 1), ("num_classes", num_classes, 2),
                             ("max_duration", max_duration, 1), ("hidden_dim", hidden_dim, 1),
                             ("min_length", min_length, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not isinstance(max_length, int) or max_length < min_length:
        raise ValueError(f"max_length must be an int >= min_length = {min_length}, got {max_length!r}")
    means = torch.randn(num_classes, hidden_dim, generator=torch.Generator().manual_seed(task_seed))
    means = means / means.norm(dim=1, keepdim=True) * hidden_dim ** 0.5
    ranges = duration_ranges(num_classes, max_duration)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, max_length + 1, (num_sequences,), generator=g)
    segments = []
    for length in lengths.tolist():
        sequence, position, label = [], 0, None
        while position < length:
            choices = [c for c in range(num_classes) if c != label]
            label = choices[int(torch.randint(len(choices), (), generator=g))]
            low, high = ranges[label]
            duration = int(torch.randint(low, high + 1, (), generator=g))
            end = min(length, position + duration)
            sequence.append((position, end, label))
            position = end
        segments.append(sequence)
    segmentation = Segmentation.from_segments(segments, max_length)
    inside = segmentation.valid_mask()[..., None]
    signal = means[segmentation.labels.clamp(min=0)]
    hidden = signal + noise * torch.randn(signal.shape, generator=g)
    hidden = torch.where(inside, hidden, torch.zeros_like(hidden))
    return SyntheticData(hidden, lengths, segmentation, means)


def segment_f1(predicted: Segmentation, gold: Segmentation) -> float:
    """Micro-averaged F1 of exactly matching segments (same start, end and
    label) over all sequences; 0 when nothing matches."""
    if predicted.shape != gold.shape:
        raise ValueError(f"predicted and gold must have one shape, got {tuple(predicted.shape)} and "
                         f"{tuple(gold.shape)}")
    gold = gold.to(predicted.device)
    same = (predicted.starts & gold.starts & (predicted.labels == gold.labels)
            & (predicted.durations() == gold.durations()))
    matched = int(same.sum())
    if matched == 0:
        return 0.0
    precision = matched / int(predicted.num_segments().sum())
    recall = matched / int(gold.num_segments().sum())
    return 2 * precision * recall / (precision + recall)
