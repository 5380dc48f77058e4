"""Segmentations as values: what `log_prob`, `argmax`, `topk` and `sample` speak.

A :class:`Segmentation` holds, for every sequence of a batch,

- ``labels (..., T)`` int64: the label of the segment covering each position,
  ``-1`` past the sequence's length;
- ``starts (..., T)`` bool: True where a segment starts (always at position 0
  of a non-empty sequence), False past the length;
- ``lengths (...)`` int64: the number of positions covered.

The leading dims ``...`` are sample/batch dims; the last of them is the
potentials' batch dim ``B`` when the value is scored against potentials
(``(B, T)`` for one segmentation per sequence, ``(N, B, T)`` for ``N``
samples or the ``k`` best). A segment runs from a start up to (excluding) the
next start or the length, so two adjacent segments with one label are kept
apart by their starts. A sequence of length 0 (all ``-1``) is the *empty*
segmentation: it marks a missing entry (a k-best list shorter than k, or a
sequence without any allowed segmentation) and is never a valid structure.

Conversions: :meth:`Segmentation.from_segments` / :meth:`Segmentation.to_segments`
(lists of ``(start, end, label)``, end exclusive) and
:meth:`Segmentation.from_labels` (per-position labels; a new segment wherever
the label changes unless ``starts`` say otherwise) / the ``labels`` attribute.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from .potentials import EdgePotentials, Potentials, SemiMarkovPotentials


class Segmentation:
    """Labelled segmentations of a batch of sequences (see module docstring).

    Args:
        labels: `(..., T)` integer tensor, `-1` past each length.
        starts: `(..., T)` bool tensor, True where a segment starts.
        lengths: `(...)` integer tensor; default: the number of labels >= 0.

    Raises:
        ValueError: (TypeError for wrong dtypes) when the three do not describe
            a tiling of each `[0, length)`: a label below 0 inside the length or
            not -1 past it, a start past the length, no start at position 0, or
            a label change without a start.
    """

    def __init__(self, labels: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor | None = None):
        labels = _checked_labels(labels)
        if not isinstance(starts, torch.Tensor) or starts.dtype != torch.bool:
            raise TypeError(f"starts must be a bool tensor of shape (..., T), got {_describe(starts)}")
        _check_has_values("starts", starts)
        if starts.shape != labels.shape:
            raise ValueError(f"starts must have the shape of labels {tuple(labels.shape)}, got {tuple(starts.shape)}")
        lengths = (labels >= 0).sum(dim=-1) if lengths is None else _checked_lengths(lengths, labels)
        self.labels, self.starts, self.lengths = labels, starts.to(labels.device), lengths
        self._check_tiling()

    # -- structure ------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        """`(..., T)`, the shape of `labels`."""
        return self.labels.shape

    @property
    def T(self) -> int:
        return self.labels.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def valid_mask(self) -> torch.Tensor:
        """`(..., T)` bool: position `t < lengths`."""
        return torch.arange(self.T, device=self.device) < self.lengths[..., None]

    def ends(self) -> torch.Tensor:
        """`(..., T)` bool: True at the last position of each segment."""
        following = torch.nn.functional.pad(self.starts[..., 1:], (0, 1), value=True)
        last = torch.arange(self.T, device=self.device) == (self.lengths[..., None] - 1)
        return self.valid_mask() & (following | last)

    def durations(self) -> torch.Tensor:
        """`(..., T)` int64: the length of the segment starting at each start,
        0 elsewhere."""
        t = torch.arange(self.T, device=self.device)
        marker = torch.where(self.starts, t, torch.full_like(t, self.T))
        following = torch.nn.functional.pad(marker[..., 1:], (0, 1), value=self.T)
        next_start = following.flip(-1).cummin(dim=-1).values.flip(-1)
        next_start = torch.minimum(next_start, self.lengths[..., None])
        return torch.where(self.starts, next_start - t, torch.zeros_like(next_start))

    def num_segments(self) -> torch.Tensor:
        """`(...)` int64: the number of segments of each sequence."""
        return self.starts.sum(dim=-1)

    def __getitem__(self, index) -> Segmentation:
        """Index the leading dims (never T): `seg[0]`, `seg[:, 2]`, ..."""
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis for i in index):
            raise IndexError("Segmentation indexing takes the leading dims explicitly (no Ellipsis)")
        if len(index) > self.lengths.dim():
            raise IndexError(f"too many indices for a Segmentation with {self.lengths.dim()} leading dim(s)")
        return Segmentation._unchecked(self.labels[index], self.starts[index], self.lengths[index])

    def to(self, device: torch.device | str) -> Segmentation:
        return Segmentation._unchecked(self.labels.to(device), self.starts.to(device), self.lengths.to(device))

    def clone(self) -> Segmentation:
        """A copy that owns its tensors."""
        return Segmentation._unchecked(self.labels.clone(), self.starts.clone(), self.lengths.clone())

    def expand(self, *shape) -> Segmentation:
        """The same segmentations broadcast to the leading dims `shape` (the
        sizes before T; an int or a sequence of ints), as
        `torch.Tensor.expand` does: views, no copy."""
        shape = torch.Size(shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
        return Segmentation._unchecked(self.labels.expand(*shape, self.T), self.starts.expand(*shape, self.T),
                                       self.lengths.expand(shape))

    def equal(self, other: Segmentation) -> bool:
        """True when both hold the same segmentations (same shape)."""
        return (self.shape == other.shape and torch.equal(self.labels, other.labels.to(self.device))
                and torch.equal(self.starts, other.starts.to(self.device))
                and torch.equal(self.lengths, other.lengths.to(self.device)))

    def __repr__(self) -> str:
        if self.labels.numel() <= 200:
            return f"Segmentation({self.to_segments()})"
        return f"Segmentation(shape={tuple(self.shape)})"

    # -- conversions ----------------------------------------------------------
    @classmethod
    def from_segments(cls, segments: Sequence, T: int | None = None, *,
                      device: torch.device | str | None = None) -> Segmentation:
        """From one list of `(start, end, label)` segments per sequence.

        Args:
            segments: a list (the batch) of lists of `(start, end, label)`
                with `end` exclusive, in order, tiling `[0, length)`.
            T: number of positions (default: the longest length, at least 1).

        Returns:
            a `(B, T)` Segmentation.

        Raises:
            ValueError: naming the sequence and the segment that is empty,
                overlaps the previous one, leaves a gap, has a negative label or
                runs past `T`.
        """
        if not isinstance(segments, (list, tuple)):
            raise TypeError(f"segments must be a list (one entry per sequence) of lists of (start, end, label), "
                            f"got {type(segments).__name__}")
        if T is not None:
            try:
                T = operator.index(T)
            except TypeError:
                raise ValueError(f"T must be an int >= 1 (the number of positions), got {T!r}") from None
            if T < 1:
                raise ValueError(f"T must be an int >= 1 (the number of positions), got {T}")
        label_rows, start_rows = [], []
        for b, sequence in enumerate(segments):
            if not isinstance(sequence, (list, tuple)):
                raise ValueError(f"segments[{b}] must be a list of (start, end, label), got {type(sequence).__name__}")
            labels: list[int] = []
            starts: list[bool] = []
            for segment in sequence:
                try:
                    start, end, label = (operator.index(x) for x in segment)
                except (TypeError, ValueError):
                    raise ValueError(f"segments[{b}]: each segment must be (start, end, label) integers, "
                                     f"got {segment!r}") from None
                position = len(labels)
                if start < position:
                    raise ValueError(f"segments[{b}]: segment {tuple(segment)} overlaps the previous segment, "
                                     f"which ends at {position}")
                if start > position:
                    raise ValueError(f"segments[{b}]: segment {tuple(segment)} leaves a gap [{position}, {start})")
                if end <= start:
                    raise ValueError(f"segments[{b}]: segment {tuple(segment)} is empty (end <= start)")
                if label < 0:
                    raise ValueError(f"segments[{b}]: segment {tuple(segment)} has a negative label")
                labels += [label] * (end - start)
                starts += [True] + [False] * (end - start - 1)
            label_rows.append(labels)
            start_rows.append(starts)
        lengths = [len(row) for row in label_rows]
        T = max(max(lengths, default=0), 1) if T is None else T
        if max(lengths, default=0) > T:
            b = max(range(len(lengths)), key=lambda i: lengths[i])
            raise ValueError(f"segments[{b}] covers [0, {lengths[b]}), past T = {T}")
        label_table = torch.tensor([row + [-1] * (T - len(row)) for row in label_rows], dtype=torch.int64).view(-1, T)
        start_table = torch.tensor([row + [False] * (T - len(row)) for row in start_rows], dtype=torch.bool).view(-1, T)
        return cls(label_table.to(device), start_table.to(device),
                   torch.tensor(lengths, dtype=torch.int64, device=device))

    def to_segments(self) -> list:
        """Nested lists (one level per leading dim) of `(start, end, label)`."""
        starts, ends, labels = self.starts.cpu(), self.ends().cpu(), self.labels.cpu()

        def convert(s, e, lab):
            if s.dim() > 1:
                return [convert(s[i], e[i], lab[i]) for i in range(s.shape[0])]
            first = s.nonzero().flatten().tolist()
            last = e.nonzero().flatten().tolist()
            return [(a, z + 1, int(lab[a])) for a, z in zip(first, last)]

        return convert(starts, ends, labels)

    @classmethod
    def from_labels(cls, labels: torch.Tensor, starts: torch.Tensor | None = None,
                    lengths: torch.Tensor | None = None) -> Segmentation:
        """From per-position labels `(..., T)`.

        Args:
            labels: integer labels; positions past `lengths` are ignored
                (set to -1). Without `lengths`, the labels >= 0 must form a
                prefix of each sequence and define the length.
            starts: where segments start; default: position 0 and wherever
                the label changes (so adjacent segments of one label merge;
                pass `starts` to keep them apart).
            lengths: `(...)`, optional.
        """
        labels = _checked_labels(labels)
        if lengths is not None:
            lengths = _checked_lengths(lengths, labels)
            inside = torch.arange(labels.shape[-1], device=labels.device) < lengths[..., None]
            labels = torch.where(inside, labels, torch.full_like(labels, -1))
        if starts is None:
            changed = labels[..., 1:] != labels[..., :-1]
            starts = torch.nn.functional.pad(changed, (1, 0), value=True) & (labels >= 0)
        return cls(labels, starts, lengths)

    # -- checks against a problem -----------------------------------------------
    def validate(self, potentials: Potentials, *, name: str = "value") -> None:
        """Raise ValueError unless every entry is a segmentation allowed by
        `potentials` or empty: shape `(..., B, T)`, lengths equal to the
        potentials' (no segment past the length, none missing), labels in
        `[0, C)` and durations in `[1, K]`. `name`: what the messages call
        the segmentations."""
        wrong_length, bad_label, too_long = self._misfits(potentials, name)
        lengths = potentials.lengths.to(self.device)
        if wrong_length.any():
            where = wrong_length.nonzero()[0].tolist()
            got, want = int(self.lengths[tuple(where)]), int(lengths[where[-1]])
            what = "runs past the sequence's length" if got > want else "does not cover the whole sequence"
            raise ValueError(f"{name}{where}: the segmentation covers [0, {got}) but the sequence has length "
                             f"{want}: it {what}")
        if bad_label.any():
            where = bad_label.nonzero()[0].tolist()
            raise ValueError(f"{name}{where[:-1]}: label {int(self.labels[tuple(where)])} at position {where[-1]} "
                             f"is out of range [0, {potentials.C})")
        if too_long.any():
            where = too_long.nonzero()[0].tolist()
            raise ValueError(f"{name}{where[:-1]}: the segment starting at {where[-1]} has length "
                             f"{int(self.durations()[tuple(where)])}, longer than K = {potentials.K}")

    def allowed(self, potentials: Potentials) -> torch.Tensor:
        """`(...)` bool: whether each entry is a segmentation of its sequence
        that `potentials` allow (it tiles `[0, length)` with labels in
        `[0, C)` and durations in `[1, K]`, and no part of it is forbidden
        by a `-inf`); False for empty entries. Raises ValueError only when
        the shape is not `(..., B, T)`."""
        wrong_length, bad_label, too_long = self._misfits(potentials)
        fits = ~wrong_length & ~bad_label.any(dim=-1) & ~too_long.any(dim=-1) & (self.lengths > 0)
        keep = fits[..., None]
        fitting = Segmentation(torch.where(keep, self.labels, torch.full_like(self.labels, -1)), self.starts & keep,
                               torch.where(fits, self.lengths, torch.zeros_like(self.lengths)))
        return fits & torch.isfinite(fitting.log_potential(potentials, validate=False).detach())

    def _misfits(self, potentials: Potentials, name: str = "value") -> tuple:
        """What keeps entries from being segmentations of their sequences:
        `(wrong_length (...), bad_label (..., T), too_long (..., T))`, an
        empty entry fitting any sequence. Raises ValueError unless the shape
        is `(..., B, T)`."""
        B, T = potentials.batch_size, potentials.T
        if self.labels.dim() < 2 or self.shape[-2:] != (B, T):
            raise ValueError(f"{name} must be a Segmentation of shape (..., B, T) = (..., {B}, {T}), "
                             f"got {tuple(self.shape)}")
        wrong_length = (self.lengths != potentials.lengths.to(self.device)) & (self.lengths > 0)
        return wrong_length, self.labels >= potentials.C, self.durations() > potentials.K

    # -- scores -----------------------------------------------------------------
    def log_potential(self, potentials: Potentials, *, validate: bool = True) -> torch.Tensor:
        """The (unnormalized) log-potential of each segmentation, `(...)`;
        `-inf` for empty entries.

        `O(T C)`: gathers of the content scores, durations, transitions and
        boundary terms (summed in float64), differentiable w.r.t. every
        potential. For explicit edge potentials the latent label before the
        first segment is summed out (log-sum-exp), as in their partition.

        Args:
            potentials: the problem the segmentations belong to.
            validate: check them first (:meth:`validate`); without the check
                an invalid segmentation gets a meaningless number.
        """
        if not isinstance(potentials, (SemiMarkovPotentials, EdgePotentials)):
            raise TypeError(f"potentials must be SemiMarkovPotentials or EdgePotentials, "
                            f"got {type(potentials).__name__}")
        if validate:
            self.validate(potentials)
        if isinstance(potentials, EdgePotentials):
            total = self._edge_log_potential(potentials)
        else:
            total = self._structured_log_potential(potentials)
        return torch.where(self.lengths > 0, total, torch.full_like(total, float("-inf")))

    def _structured_log_potential(self, potentials: SemiMarkovPotentials) -> torch.Tensor:
        label = self.labels.clamp(min=0)
        inside, starts, ends = self.valid_mask(), self.starts, self.ends()
        duration = self.durations().clamp(min=1)
        previous = torch.nn.functional.pad(label[..., :-1], (1, 0))
        zero = potentials.scores.new_zeros(())

        def at(table, index, mask):
            """`sum_t table[..., t, index[..., t]]` over positions in `mask`."""
            values = table.expand(*self.shape, table.shape[-1]).gather(-1, index[..., None]).squeeze(-1)
            return torch.where(mask, values, zero).sum(dim=-1, dtype=torch.float64)

        total = at(potentials.scores, label, inside)
        total = total + at(potentials.duration.flatten()[None], (duration - 1) * potentials.C + label, starts)
        if potentials.duration_dependent:
            pair = ((duration - 1) * potentials.C + previous) * potentials.C + label
        else:
            pair = previous * potentials.C + label
        later = starts.clone()
        later[..., 0] = False
        total = total + at(potentials.transition.flatten()[None], pair, later)
        total = total + potentials.start[label[..., 0]]
        last = label.gather(-1, (self.lengths - 1).clamp(min=0)[..., None]).squeeze(-1)
        total = total + potentials.end[last]
        if potentials.start_scores is not None:
            total = total + at(potentials.start_scores, label, starts)
        if potentials.end_scores is not None:
            total = total + at(potentials.end_scores, label, ends)
        return total.to(potentials.dtype)

    def _edge_log_potential(self, potentials: EdgePotentials) -> torch.Tensor:
        B, T, K, C = potentials.batch_size, potentials.T, potentials.K, potentials.C
        label = self.labels.clamp(min=0)
        duration = self.durations()
        previous = torch.nn.functional.pad(label[..., :-1], (1, 0))
        t = torch.arange(T, device=self.device)
        b = torch.arange(B, device=self.device)[:, None].expand(B, T)
        # flat index of edge[b, s, d, c, c_prev] (c_prev = 0 at s = 0, fixed below)
        index = ((((b * T + t) * (K + 1) + duration) * C + label) * C + previous)
        flat = potentials.edge.flatten()
        later = self.starts.clone()
        later[..., 0] = False
        zero = potentials.edge.new_zeros(())
        rest = torch.where(later, flat[index], zero).sum(dim=-1)
        first_index = index[..., 0]  # (..., B), c_prev = 0: the latent label spans [0, C)
        first = flat[first_index[..., None] + torch.arange(C, device=self.device)]
        return rest + torch.logsumexp(first, dim=-1)

    # -- internal -------------------------------------------------------------
    def _check_tiling(self) -> None:
        """Raises on the first violated rule of a tiling; reads the device
        once when the segmentation is valid (each rule reduced on the
        device, the flags read together)."""
        inside = self.valid_mask()
        changed = (self.labels[..., 1:] != self.labels[..., :-1]) & inside[..., 1:]
        violations = {
            "lengths": (self.lengths < 0) | (self.lengths > self.T),
            "gap": inside & (self.labels < 0),
            "past": ~inside & (self.labels != -1),
            "start past": ~inside & self.starts,
            "first": inside[..., 0] & ~self.starts[..., 0],
            "change": changed & ~self.starts[..., 1:],
        }
        if not bool(torch.stack([v.any() for v in violations.values()]).any()):
            return
        name = next(n for n, v in violations.items() if bool(v.any()))
        where = violations[name].nonzero()[0].tolist()
        if name == "lengths":
            raise ValueError(f"lengths must lie in [0, T] = [0, {self.T}]")
        if name == "gap":
            raise ValueError(f"labels{where}: negative label inside the length (a gap in the segmentation)")
        if name == "past":
            raise ValueError(f"labels{where}: labels past the length must be -1 (a segment runs past the length)")
        if name == "start past":
            raise ValueError(f"starts{where}: a segment starts past the length")
        if name == "first":
            raise ValueError("starts: every non-empty sequence must have a segment starting at position 0")
        where[-1] += 1
        raise ValueError(f"labels{where}: the label changes inside a segment (no start there)")

    @classmethod
    def _decoded(cls, labels: torch.Tensor, starts: torch.Tensor) -> Segmentation:
        """A segmentation one of our decoders (k-best, sampling, argmax)
        built, a tiling by construction: `labels` int64, `starts` bool,
        `(..., T)`. See :meth:`_unchecked`."""
        return cls._unchecked(labels, starts, (labels >= 0).sum(dim=-1))

    @classmethod
    def _unchecked(cls, labels: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor) -> Segmentation:
        """A segmentation known to be a tiling (a decoder's output, or a view
        or copy of a checked one): nothing is checked and nothing read from
        the device, so the work queued after a decoder's kernels does not
        wait for them."""
        value = cls.__new__(cls)
        value.labels, value.starts, value.lengths = labels, starts, lengths
        return value


def labels_from_starts(starts: torch.Tensor, start_labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-position labels `(..., T)` from the segment starts `(..., T)` and
    the label at each start (`start_labels`, read only where `starts`): each
    label is carried forward to the next start; -1 past `lengths`
    (broadcastable to `(...)`) and everywhere in an entry without a start."""
    t = torch.arange(starts.shape[-1], device=starts.device)
    last_start = torch.where(starts, t, torch.full_like(t, -1)).cummax(dim=-1).values
    labels = start_labels.gather(-1, last_start.clamp(min=0))
    inside = (t < lengths[..., None]) & (last_start >= 0)
    return torch.where(inside, labels, torch.full_like(labels, -1))


def _is_integer_tensor(value) -> bool:
    return (isinstance(value, torch.Tensor) and not value.is_floating_point() and not value.is_complex()
            and value.dtype != torch.bool)


def _check_has_values(name: str, value: torch.Tensor) -> None:
    if value.device.type == "meta":
        raise ValueError(f"{name} is on the meta device; a Segmentation needs its values")


def _checked_labels(labels) -> torch.Tensor:
    """`labels` as int64 `(..., T)`, T >= 1, or a clear error."""
    if not _is_integer_tensor(labels):
        raise TypeError(f"labels must be an integer tensor of shape (..., T), got {_describe(labels)}")
    _check_has_values("labels", labels)
    if labels.dim() < 1 or labels.shape[-1] < 1:
        raise ValueError(f"labels must have shape (..., T) with T >= 1, got {tuple(labels.shape)}")
    return labels.to(torch.int64)


def _checked_lengths(lengths, labels: torch.Tensor) -> torch.Tensor:
    """`lengths` as int64 of shape `labels.shape[:-1]` on the labels' device."""
    if not _is_integer_tensor(lengths):
        raise TypeError(f"lengths must be an integer tensor of shape {tuple(labels.shape[:-1])}, "
                        f"got {_describe(lengths)}")
    _check_has_values("lengths", lengths)
    if lengths.shape != labels.shape[:-1]:
        raise ValueError(f"lengths must have shape labels.shape[:-1] = {tuple(labels.shape[:-1])}, "
                         f"got {tuple(lengths.shape)}")
    return lengths.to(device=labels.device, dtype=torch.int64)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    return type(value).__name__
