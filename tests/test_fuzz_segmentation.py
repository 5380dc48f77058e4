"""Fuzz the Segmentation constructors and its scoring against potentials
with malformed inputs (see `test_fuzz_harness.py` for the expectations)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from test_fuzz_harness import Case, Raises, Returns, assert_matches, params, problems, random_segments

from semiring_semicrf.segmentation import Segmentation
from semiring_semicrf.testing import enumerate_structures


def parts(problem) -> dict:
    """`labels`, `starts`, `lengths` of a random valid segmentation."""
    seg = Segmentation.from_segments(random_segments(problem), problem.T)
    return {"labels": seg.labels, "starts": seg.starts, "lengths": seg.lengths}


def same_segments(result, segments):
    assert isinstance(result, Segmentation)
    assert result.to_segments() == [list(s) for s in segments]


def oracle_score(result, info):
    """The log-potential of each segmentation, from the brute-force table."""
    potentials, segments = info
    expected = []
    for b, segs in enumerate(segments):
        enum = enumerate_structures(potentials, b)
        expected.append(enum.scores[enum.structures.index(tuple(segs))] if segs else torch.tensor(float("-inf")))
    assert_matches(result, torch.stack(expected).double())


# -- Segmentation(labels, starts, lengths) ---------------------------------------------------
def _init(change):
    def call(problem):
        kwargs = parts(problem)
        change(problem, kwargs)
        return (lambda: Segmentation(**kwargs)), kwargs
    return call


def _put(name, value_of):
    def change(problem, kwargs):
        kwargs[name] = value_of(problem, kwargs[name])
    return change


def _at_random(name, value, where="inside"):
    """Set one entry of `kwargs[name]`, inside or past a length."""
    def change(problem, kwargs):
        t = kwargs[name].clone()
        b = problem.pick((problem.B,))[0]
        L = problem.lengths[b]
        if where == "inside":
            pos = problem.pick((L,))[0]
        else:
            pos = L if L < problem.T else None
        if pos is not None:
            t[b, pos] = value
        else:  # no padding to poke: lengthen nothing, make the case trivially invalid another way
            t[b, 0] = -3 if name == "labels" else False
        kwargs[name] = t
    return change


def _gap(problem, kwargs):
    """A -1 label inside a length (a hole in the tiling)."""
    _at_random("labels", -1)(problem, kwargs)


def _change_without_start(problem, kwargs):
    """A label change where no segment starts (or, for a one-position
    sequence, no start at position 0)."""
    labels, starts = kwargs["labels"].clone(), kwargs["starts"].clone()
    b = problem.pick((problem.B,))[0]
    L = problem.lengths[b]
    if L == 1:
        starts[b, 0] = False
    else:
        pos = 1 + problem.pick((L - 1,))[0]
        starts[b, pos] = False
        labels[b, pos] = labels[b, pos - 1] + 1
    kwargs["labels"], kwargs["starts"] = labels, starts


def init_cases() -> list:
    entry = "Segmentation"

    def equal_to_input(result, kwargs):
        assert torch.equal(result.labels, kwargs["labels"].long()) and torch.equal(result.starts, kwargs["starts"])

    return [
        Case(entry, "labels: nested list", _init(_put("labels", lambda p, t: t.tolist())), Raises("labels")),
        Case(entry, "labels: numpy array", _init(_put("labels", lambda p, t: t.numpy())), Raises("labels")),
        Case(entry, "labels: float dtype", _init(_put("labels", lambda p, t: t.double())), Raises("labels")),
        Case(entry, "labels: bool dtype", _init(_put("labels", lambda p, t: t > 0)), Raises("labels")),
        Case(entry, "labels: complex dtype", _init(_put("labels", lambda p, t: t.to(torch.complex64))),
             Raises("labels")),
        Case(entry, "labels: int32 (accepted)", _init(_put("labels", lambda p, t: t.int())), Returns(equal_to_input)),
        Case(entry, "labels: 0-dim", _init(lambda p, kw: kw.update(labels=kw["labels"][0, 0],
                                                                   starts=kw["starts"][0, 0], lengths=None)),
             Raises("labels")),
        Case(entry, "labels: T = 0", _init(lambda p, kw: kw.update(labels=kw["labels"][:, :0],
                                                                   starts=kw["starts"][:, :0], lengths=None)),
             Raises("labels")),
        Case(entry, "labels: meta device", _init(_put("labels", lambda p, t: t.to("meta"))),
             Raises("labels", "starts", "lengths")),
        Case(entry, "labels: gap (-1 inside a length)", _init(_gap), Raises("labels")),
        Case(entry, "labels: -2 past a length", _init(_at_random("labels", -2, "past")), Raises("labels")),
        Case(entry, "labels: label change without a start", _init(_change_without_start), Raises("labels", "starts")),
        Case(entry, "starts: int dtype", _init(_put("starts", lambda p, t: t.long())), Raises("starts")),
        Case(entry, "starts: float dtype", _init(_put("starts", lambda p, t: t.float())), Raises("starts")),
        Case(entry, "starts: nested list", _init(_put("starts", lambda p, t: t.tolist())), Raises("starts")),
        Case(entry, "starts: one position short", _init(_put("starts", lambda p, t: t[:, :-1])), Raises("starts")),
        Case(entry, "starts: extra dim", _init(_put("starts", lambda p, t: t[None])), Raises("starts")),
        Case(entry, "starts: none at position 0", _init(lambda p, kw: kw["starts"].__setitem__((0, 0), False)),
             Raises("starts")),
        Case(entry, "starts: a start past a length", _init(_at_random("starts", True, "past")),
             Raises("starts", "labels")),
        Case(entry, "starts: meta device", _init(_put("starts", lambda p, t: t.to("meta"))),
             Raises("starts", "labels")),
        Case(entry, "lengths: None (from labels)", _init(_put("lengths", lambda p, t: None)), Returns(equal_to_input)),
        Case(entry, "lengths: int32 (accepted)", _init(_put("lengths", lambda p, t: t.int())), Returns(equal_to_input)),
        Case(entry, "lengths: float dtype", _init(_put("lengths", lambda p, t: t.double())), Raises("lengths")),
        Case(entry, "lengths: list", _init(_put("lengths", lambda p, t: t.tolist())), Raises("lengths")),
        Case(entry, "lengths: T + 1", _init(_put("lengths", lambda p, t: t + p.T + 1 - t.max())), Raises("lengths")),
        Case(entry, "lengths: negative", _init(_put("lengths", lambda p, t: t - t.max() - 1)), Raises("lengths")),
        Case(entry, "lengths: disagree with labels", _init(_put("lengths", lambda p, t: t - 1)),
             Raises("lengths", "labels", "starts")),
        Case(entry, "lengths: wrong shape", _init(_put("lengths", lambda p, t: torch.cat([t, t]))), Raises("lengths")),
        Case(entry, "lengths: meta device", _init(_put("lengths", lambda p, t: t.to("meta"))), Raises("lengths")),
    ]


# -- from_segments ---------------------------------------------------------------------------------
def _segments(change, T_of=lambda p: p.T):
    def call(problem):
        segments = change(problem, random_segments(problem))
        T = T_of(problem)
        return (lambda: Segmentation.from_segments(segments, T)), segments
    return call


def _edit_last(edit):
    """Apply `edit(segment) -> segment` to the last segment of sequence 0."""
    def change(problem, segments):
        segments[0][-1] = edit(problem, segments[0][-1])
        return segments
    return change


def from_segments_cases() -> list:
    entry = "Segmentation.from_segments"
    bad = Raises("segments")
    return [
        Case(entry, "valid segments", _segments(lambda p, s: s), Returns(same_segments)),
        Case(entry, "tuples of tuples", _segments(lambda p, s: tuple(tuple(x) for x in s)),
             Returns(lambda r, s: same_segments(r, [list(x) for x in s]))),
        Case(entry, "segments: a tensor", _segments(lambda p, s: torch.tensor(s[0])), bad),
        Case(entry, "segments: a string", _segments(lambda p, s: "0-2:0"), bad),
        Case(entry, "segments: None for a sequence", _segments(lambda p, s: [None] + s[1:]), bad),
        Case(entry, "segments: flat (start, end, label) list", _segments(lambda p, s: [list(s[0][0])]), bad),
        Case(entry, "segments: a 2-tuple segment", _segments(_edit_last(lambda p, x: x[:2])), bad),
        Case(entry, "segments: a 4-tuple segment", _segments(_edit_last(lambda p, x: x + (0,))), bad),
        Case(entry, "segments: a float end", _segments(_edit_last(lambda p, x: (x[0], x[1] - 0.5, x[2]))), bad),
        Case(entry, "segments: a string label", _segments(_edit_last(lambda p, x: (x[0], x[1], "B"))), bad),
        Case(entry, "segments: a negative label", _segments(_edit_last(lambda p, x: (x[0], x[1], -1))), bad),
        Case(entry, "segments: an empty segment", _segments(_edit_last(lambda p, x: (x[0], x[0], x[2]))), bad),
        Case(entry, "segments: a reversed segment", _segments(_edit_last(lambda p, x: (x[0], x[0] - 1, x[2]))), bad),
        Case(entry, "segments: a gap", _segments(_edit_last(lambda p, x: (x[0] + 1, x[1] + 1, x[2]))), bad),
        Case(entry, "segments: an overlap", _segments(lambda p, s: [s[0] + [(0, 1, 0)]] + s[1:]), bad),
        Case(entry, "segments: past T", _segments(_edit_last(lambda p, x: (x[0], p.T + 1, x[2]))),
             Raises("segments", "T")),
        Case(entry, "T: shorter than the segments", _segments(lambda p, s: s, lambda p: p.T - 1 if p.T > 1 else 0),
             Raises("segments", "T")),
        Case(entry, "T: zero", _segments(lambda p, s: s, lambda p: 0), Raises("segments", "T")),
        Case(entry, "T: a float", _segments(lambda p, s: s, lambda p: p.T + 0.5), Raises("T")),
        Case(entry, "T: a string", _segments(lambda p, s: s, lambda p: "8"), Raises("T")),
        Case(entry, "T: None (longest length)", _segments(lambda p, s: s, lambda p: None), Returns(same_segments)),
        Case(entry, "T: more than needed (padding)", _segments(lambda p, s: s, lambda p: p.T + 3),
             Returns(same_segments)),
        Case(entry, "an empty batch", _segments(lambda p, s: [], lambda p: None),
             Returns(lambda r, s: r.shape[0] == 0 or pytest.fail(f"shape {r.shape}"))),
    ]


# -- from_labels ------------------------------------------------------------------------------------
def _labels(change):
    def call(problem):
        kwargs = parts(problem)
        change(problem, kwargs)
        return (lambda: Segmentation.from_labels(**kwargs)), kwargs
    return call


def from_labels_cases() -> list:
    entry = "Segmentation.from_labels"

    def same_as_parts(result, kwargs):
        assert torch.equal(result.labels, kwargs["labels"].long().where(result.valid_mask(), -1))

    return [
        Case(entry, "labels, starts and lengths", _labels(lambda p, kw: None), Returns(same_as_parts)),
        Case(entry, "labels only (merged runs)", _labels(lambda p, kw: kw.update(starts=None, lengths=None)),
             Returns(same_as_parts)),
        Case(entry, "labels: float dtype", _labels(_put("labels", lambda p, t: t.float())), Raises("labels")),
        Case(entry, "labels: complex dtype", _labels(_put("labels", lambda p, t: t.to(torch.complex64))),
             Raises("labels")),
        Case(entry, "labels: 0-dim", _labels(lambda p, kw: kw.update(labels=kw["labels"][0, 0], starts=None,
                                                                     lengths=None)),
             Raises("labels")),
        Case(entry, "labels: gap", _labels(lambda p, kw: (_gap(p, kw), kw.update(starts=None))), Raises("labels")),
        Case(entry, "starts: float dtype", _labels(_put("starts", lambda p, t: t.float())), Raises("starts")),
        Case(entry, "starts: wrong shape", _labels(_put("starts", lambda p, t: t[:, :-1])), Raises("starts")),
        Case(entry, "lengths: T + 1", _labels(_put("lengths", lambda p, t: t + p.T + 1 - t.max())), Raises("lengths")),
        Case(entry, "lengths: float", _labels(_put("lengths", lambda p, t: t.float() + 0.5)), Raises("lengths")),
        Case(entry, "lengths: one per sequence too many", _labels(_put("lengths", lambda p, t: torch.cat([t, t]))),
             Raises("lengths")),
        Case(entry, "lengths: 2-D", _labels(_put("lengths", lambda p, t: t[:, None])), Raises("lengths")),
    ]


# -- log_potential against potentials ------------------------------------------------------------------
def _score(change, potentials_of=lambda p: p.potentials()):
    def call(problem):
        segments = random_segments(problem)
        potentials = potentials_of(problem)
        seg = change(problem, segments)
        return (lambda: seg().log_potential(potentials)), (potentials, segments)
    return call


def _seg(problem, segments, T=None):
    return lambda: Segmentation.from_segments(segments, problem.T if T is None else T)


def log_potential_cases() -> list:
    entry = "Segmentation.log_potential"

    def relabel(problem, segments, label):
        s, e, _ = segments[0][-1]
        segments[0][-1] = (s, e, label)
        return _seg(problem, segments)

    def too_long(problem, segments):
        """Sequence 0 opens with a segment of length K + 1."""
        L = problem.lengths[0]
        assume(L > problem.K)
        segments[0] = [(0, problem.K + 1, 0)] + [(t, t + 1, 0) for t in range(problem.K + 1, L)]
        return _seg(problem, segments)

    def short(problem, segments):
        """Sequence 0 stops one position before its length."""
        s, e, c = segments[0][-1]
        assume(e > 1)
        segments[0] = segments[0][:-1] + ([(s, e - 1, c)] if e - 1 > s else [])
        return _seg(problem, segments)

    return [
        Case(entry, "valid segmentation", _score(lambda p, s: _seg(p, s)), Returns(oracle_score)),
        Case(entry, "potentials: a tensor", _score(lambda p, s: _seg(p, s), lambda p: p.kwargs()["scores"]),
             Raises("potentials")),
        Case(entry, "potentials: None", _score(lambda p, s: _seg(p, s), lambda p: None), Raises("potentials")),
        Case(entry, "label = C", _score(lambda p, s: relabel(p, s, p.C)), Raises("value", "label")),
        Case(entry, "label >> C", _score(lambda p, s: relabel(p, s, 10**9)), Raises("value", "label")),
        Case(entry, "a segment longer than K", _score(too_long), Raises("value", "length", "K")),
        Case(entry, "covers less than the length", _score(short), Raises("value")),
        Case(entry, "T differs", _score(lambda p, s: _seg(p, s, p.T + 1)), Raises("value")),
        Case(entry, "B differs", _score(lambda p, s: _seg(p, s + s[:1])), Raises("value")),
        Case(entry, "no batch dim", _score(lambda p, s: (lambda: _seg(p, s)()[0])), Raises("value")),
        Case(entry, "empty segmentation (-inf)", _score(lambda p, s: _seg(p, [[] for _ in s])),
             Returns(lambda r, info: torch.isneginf(r).all() or pytest.fail(f"{r}"))),
    ]


CASES = init_cases() + from_segments_cases() + from_labels_cases() + log_potential_cases()


@pytest.mark.parametrize("case", params(CASES))
@settings(max_examples=8)
@given(problem=problems())
def test_fuzz_segmentation(case, problem):
    case.run(problem)
