"""Fuzz `SemiMarkovDistribution` (constructor, from_potentials and every
method that takes an argument, plus the empty batch) with malformed inputs
(see `test_fuzz_harness.py` for the expectations)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from test_fuzz_harness import (
    ByPosition,
    Case,
    Raises,
    Returns,
    assert_matches,
    params,
    problems,
    random_segments,
    reference_log_z,
)

from semiring_semicrf import SemiMarkovPotentials
from semiring_semicrf.distribution import SemiMarkovDistribution
from semiring_semicrf.segmentation import Segmentation
from semiring_semicrf.testing import enumerate_structures


def dist(problem, **options) -> SemiMarkovDistribution:
    return SemiMarkovDistribution(**problem.kwargs(), **options)


def _on_dist(method, **options):
    """Case call: `method(distribution)` on a valid distribution."""
    def call(problem):
        d = dist(problem, **options)
        return (lambda: method(d, problem)), (problem, d)
    return call


def _ctor(change, **options):
    def call(problem):
        kwargs = problem.kwargs()
        change(problem, kwargs)
        return (lambda: SemiMarkovDistribution(**kwargs, **options).partition), kwargs
    return call


def _set(name, value_of):
    def change(problem, kwargs):
        kwargs[name] = value_of(problem, kwargs[name])
    return change


def _poked(name, value, **options):
    """Case call: one entry of `name`, anywhere, set to `value` (info:
    `(kwargs, name, index)`, for :class:`ByPosition`)."""
    def call(problem):
        kwargs, index = problem.poke(name, value)
        return (lambda: SemiMarkovDistribution(**kwargs, **options).partition), (kwargs, name, index)
    return call


def partition_oracle(result, kwargs):
    assert_matches(result, reference_log_z(kwargs))


def constructor_cases() -> list:
    entry = "SemiMarkovDistribution"
    cases = [
        Case(entry, "valid", _ctor(lambda p, kw: None), Returns(partition_oracle)),
        Case(entry, "backend='torch'", _ctor(lambda p, kw: None, backend="torch"), Returns(partition_oracle)),
        Case(entry, "backend='gpu'", _ctor(lambda p, kw: None, backend="gpu"), Raises("backend")),
        Case(entry, "backend=None", _ctor(lambda p, kw: None, backend=None), Raises("backend")),
        Case(entry, "backend='triton' on CPU", _ctor(lambda p, kw: None, backend="triton"), Raises("backend")),
        Case(entry, "lengths: T + 1", _ctor(_set("lengths", lambda p, t: t + p.T)), Raises("lengths")),
        Case(entry, "lengths: float", _ctor(_set("lengths", lambda p, t: t.float())), Raises("lengths")),
    ]
    for name in ("scores", "transition", "duration", "start", "end", "start_scores", "end_scores"):
        cases += [
            Case(entry, f"{name}: int dtype", _ctor(_set(name, lambda p, t: t.long())), Raises(name)),
            Case(entry, f"{name}: nested list", _ctor(_set(name, lambda p, t: t.tolist())), Raises(name)),
            Case(entry, f"{name}: extra dim", _ctor(_set(name, lambda p, t: t[None])),
                 Raises(name) | Returns(partition_oracle) if name == "transition" else Raises(name)),
            Case(entry, f"{name}: NaN (validate_args=True)", _poked(name, float("nan"), validate_args=True),
                 ByPosition(Raises(name))),
            Case(entry, f"{name}: meta device", _ctor(_set(name, lambda p, t: t.to("meta"))),
                 Raises(name, "transition", "scores")),
        ]
    cases.append(Case(entry, "scores: NaN (validate_args=False)",
                      _ctor(lambda p, kw: kw["scores"].__setitem__((0, 0, 0), float("nan")), validate_args=False),
                      Returns(lambda r, kw: torch.isnan(r[0]) or pytest.fail(f"finite {r} from NaN scores"))))
    return cases


def from_potentials_cases() -> list:
    entry = "SemiMarkovDistribution.from_potentials"

    def call(value_of, **options):
        def make(problem):
            value = value_of(problem)
            return (lambda: SemiMarkovDistribution.from_potentials(value, **options).partition), problem.kwargs()
        return make

    return [
        Case(entry, "valid", call(lambda p: p.potentials()), Returns(partition_oracle)),
        Case(entry, "potentials: a tensor", call(lambda p: p.kwargs()["scores"]), Raises("potentials")),
        Case(entry, "potentials: None", call(lambda p: None), Raises("potentials")),
        Case(entry, "potentials: explicit edges", call(lambda p: SemiMarkovPotentials.from_edges(
            p.potentials().to_edges(), torch.tensor(p.lengths))), Raises("potentials")),
        Case(entry, "backend='fast'", call(lambda p: p.potentials(), backend="fast"), Raises("backend")),
    ]


# -- log_prob --------------------------------------------------------------------------------------
def _log_prob(value_of):
    def call(problem):
        d = dist(problem)
        segments = random_segments(problem)
        value = value_of(problem, segments)
        return (lambda: d.log_prob(value)), (problem, segments)
    return call


def log_prob_oracle(result, info):
    problem, segments = info
    potentials = problem.potentials()
    expected = []
    for b, segs in enumerate(segments):
        enum = enumerate_structures(potentials, b)
        expected.append(enum.scores[enum.structures.index(tuple(segs))] - enum.log_partition)
    assert_matches(result, torch.stack(expected))


def _seg(problem, segments, T=None):
    return Segmentation.from_segments(segments, problem.T if T is None else T)


def log_prob_cases() -> list:
    entry = "SemiMarkovDistribution.log_prob"

    def relabel(problem, segments, label):
        s, e, _ = segments[0][-1]
        segments[0][-1] = (s, e, label)
        return _seg(problem, segments)

    def one_segment_too_long(problem, segments):
        L = problem.lengths[0]
        if L > problem.K:
            segments[0] = [(0, problem.K + 1, 0)] + [(t, t + 1, 0) for t in range(problem.K + 1, L)]
        else:  # no room for a segment longer than K: run past the length instead
            segments[0] = [(0, L + 1, 0)]
        return _seg(problem, segments, problem.T + (L == problem.T))

    def stacked(problem, segments):
        one = _seg(problem, segments)
        return Segmentation(torch.stack([one.labels] * 3), torch.stack([one.starts] * 3),
                            torch.stack([one.lengths] * 3))

    return [
        Case(entry, "valid (B, T)", _log_prob(lambda p, s: _seg(p, s)), Returns(log_prob_oracle)),
        Case(entry, "valid (3, B, T)", _log_prob(stacked),
             Returns(lambda r, info: [log_prob_oracle(row, info) for row in r])),
        Case(entry, "value: labels tensor", _log_prob(lambda p, s: _seg(p, s).labels), Raises("value")),
        Case(entry, "value: list of segments", _log_prob(lambda p, s: s), Raises("value")),
        Case(entry, "value: None", _log_prob(lambda p, s: None), Raises("value")),
        Case(entry, "value: label = C", _log_prob(lambda p, s: relabel(p, s, p.C)), Raises("value")),
        Case(entry, "value: a segment longer than K or past the length", _log_prob(one_segment_too_long),
             Raises("value")),
        Case(entry, "value: other T", _log_prob(lambda p, s: _seg(p, s, p.T + 1)), Raises("value")),
        Case(entry, "value: other B", _log_prob(lambda p, s: _seg(p, s + s[:1])), Raises("value")),
        Case(entry, "value: no batch dim (broadcast)", _log_prob(lambda p, s: _seg(p, s)[0]),
             Raises("value") | Returns(lambda r, info: log_prob_oracle(r, (info[0], [info[1][0]] * info[0].B)))),
        Case(entry, "value: empty entries (-inf)", _log_prob(lambda p, s: _seg(p, [[] for _ in s])),
             Returns(lambda r, info: torch.isneginf(r).all() or pytest.fail(f"{r}"))),
    ]


# -- topk, sample, information, expected_score, enumerate_support ------------------------------------
def topk_oracle(k):
    def verify(result, info):
        problem, d = info
        potentials = problem.potentials()
        expected = torch.stack([enumerate_structures(potentials, b).topk(k) for b in range(problem.B)], dim=1)
        assert_matches(result.scores, expected)
    return verify


def sample_shape_is(shape):
    def verify(result, info):
        problem, _ = info
        assert tuple(result.shape) == (*shape, problem.B, problem.T), result.shape
    return verify


def method_cases() -> list:
    entry = "SemiMarkovDistribution"
    cases = [
        Case(entry, "topk(1)", _on_dist(lambda d, p: d.topk(1)), Returns(topk_oracle(1))),
        Case(entry, "topk(k) with k beyond the structures", _on_dist(lambda d, p: d.topk(500)),
             Returns(topk_oracle(500))),
        Case(entry, "sample()", _on_dist(lambda d, p: d.sample()), Returns(sample_shape_is(()))),
        Case(entry, "sample((2, 3))", _on_dist(lambda d, p: d.sample((2, 3))), Returns(sample_shape_is((2, 3)))),
        Case(entry, "sample(torch.Size([4]))", _on_dist(lambda d, p: d.sample(torch.Size([4]))),
             Returns(sample_shape_is((4,)))),
        Case(entry, "sample((0,))", _on_dist(lambda d, p: d.sample((0,))), Returns(sample_shape_is((0,)))),
        Case(entry, "sample((-1,))", _on_dist(lambda d, p: d.sample((-1,))), Raises("sample_shape")),
        Case(entry, "sample((2.5,))", _on_dist(lambda d, p: d.sample((2.5,))), Raises("sample_shape", "Size")),
        Case(entry, "sample(generator=int)", _on_dist(lambda d, p: d.sample((2,), generator=3)), Raises("generator")),
        Case(entry, "sample(generator='cpu')", _on_dist(lambda d, p: d.sample((2,), generator="cpu")),
             Raises("generator")),
        Case(entry, "cross_entropy(a tensor)", _on_dist(lambda d, p: d.cross_entropy(p.kwargs()["scores"])),
             Raises("other")),
        Case(entry, "kl(None)", _on_dist(lambda d, p: d.kl(None)), Raises("other")),
        Case(entry, "kl(other batch size)", _on_dist(lambda d, p: d.kl(SemiMarkovDistribution(
            **{k: (torch.cat([v, v[:1]]) if k in ("scores", "start_scores", "end_scores", "lengths") else v)
               for k, v in p.kwargs().items()}))), Raises("other", "distributions")),
        Case(entry, "cross_entropy(other batch size)", _on_dist(lambda d, p: d.cross_entropy(SemiMarkovDistribution(
            **{k: (torch.cat([v, v[:1]]) if k in ("scores", "start_scores", "end_scores", "lengths") else v)
               for k, v in p.kwargs().items()}))), Raises("other", "distributions")),
        Case(entry, "kl(other dtype)", _on_dist(lambda d, p: d.kl(SemiMarkovDistribution(
            **{k: (v.float() if v.is_floating_point() else v) for k, v in p.kwargs().items()}))),
            Raises("other", "distributions")),
        Case(entry, "kl(self) = 0", _on_dist(lambda d, p: d.kl(d)),
             Returns(lambda r, info: assert_matches(r, torch.zeros_like(r), atol=1e-9))),
        Case(entry, "expected_score(a tensor)", _on_dist(lambda d, p: d.expected_score(p.kwargs()["scores"])),
             Raises("potentials")),
        Case(entry, "enumerate_support(limit='x')", _on_dist(lambda d, p: d.enumerate_support(limit="x")),
             Raises("limit")),
        Case(entry, "enumerate_support(limit=0)", _on_dist(lambda d, p: d.enumerate_support(limit=0)),
             Raises("limit")),
    ]
    for k in (0, -3, 2.0, True, "3", None):
        cases.append(Case(entry, f"topk({k!r})", _on_dist(lambda d, p, k=k: d.topk(k)), Raises("k")))
    return cases


def empty_batch_cases() -> list:
    entry = "SemiMarkovDistribution (B = 0)"

    def empty(problem):
        kwargs = problem.kwargs()
        for name in ("scores", "start_scores", "end_scores", "lengths"):
            kwargs[name] = kwargs[name][:0]
        return SemiMarkovDistribution(**kwargs)

    def on_empty(query):
        def call(problem):
            d = empty(problem)
            return (lambda: query(d, problem)), None
        return call

    def is_empty(result, info):
        tensor = result.labels if isinstance(result, Segmentation) else result
        assert 0 in tuple(tensor.shape), tensor.shape

    queries = {
        "partition": lambda d, p: d.partition,
        "marginals": lambda d, p: d.marginals,
        "entropy": lambda d, p: d.entropy(),
        "sample((2,))": lambda d, p: d.sample((2,)),
        "log_prob": lambda d, p: d.log_prob(Segmentation(torch.zeros(0, p.T, dtype=torch.long),
                                                         torch.zeros(0, p.T, dtype=torch.bool))),
        "enumerate_support": lambda d, p: d.enumerate_support(),
        "argmax": lambda d, p: d.argmax,
        "topk(2)": lambda d, p: d.topk(2).scores,
        "count": lambda d, p: d.count,
    }
    return [Case(entry, name, on_empty(query), Returns(is_empty)) for name, query in queries.items()]


CASES = constructor_cases() + from_potentials_cases() + log_prob_cases() + method_cases() + empty_batch_cases()


@pytest.mark.parametrize("case", params(CASES))
@settings(max_examples=6)
@given(problem=problems(max_T=5))
def test_fuzz_distribution(case, problem):
    case.run(problem)
