"""Fuzz `SemiMarkovCRFHead` (constructor, forward, compute_loss, decode)
with malformed inputs (see `test_fuzz_harness.py` for the expectations)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from test_fuzz_harness import Case, Raises, Returns, assert_matches, params, problems, random_segments, reference_log_z

from semiring_semicrf import SemiMarkovPotentials
from semiring_semicrf.nn import SemiMarkovCRFHead
from semiring_semicrf.segmentation import Segmentation
from semiring_semicrf.testing import enumerate_structures

H = 3


def make_head(problem) -> SemiMarkovCRFHead:
    """A head with random parameters (so transitions and durations matter)."""
    head = SemiMarkovCRFHead(problem.C, problem.K, H).double()
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=problem.generator, dtype=torch.float64))
    return head


def hidden_of(problem) -> torch.Tensor:
    return torch.randn(problem.B, problem.T, H, generator=problem.generator, dtype=torch.float64)


def head_kwargs(head, hidden, lengths) -> dict:
    """The potentials the head should build, for the oracle."""
    with torch.no_grad():
        return dict(scores=head.projection(hidden), transition=head.transition.clone(),
                    duration=head.duration.clone(), start=head.start.clone(), end=head.end.clone(),
                    lengths=lengths)


# -- constructor -----------------------------------------------------------------------------------------
def _construct(**changes):
    def call(problem):
        args = dict(num_classes=problem.C, max_duration=problem.K, hidden_dim=H)
        args.update(changes)
        hidden = hidden_of(problem).float()
        return (lambda: SemiMarkovCRFHead(**args)(hidden).partition), None
    return call


def constructor_cases() -> list:
    entry = "SemiMarkovCRFHead"
    cases = [Case(entry, "backend='gpu' (at construction or forward)", _construct(backend="gpu"), Raises("backend"))]
    for name in ("num_classes", "max_duration", "hidden_dim"):
        for value in (0, -1, 2.0, True, "3", None):
            cases.append(Case(entry, f"{name}={value!r}", _construct(**{name: value}), Raises(name)))
    return cases


# -- forward and decode -------------------------------------------------------------------------------------
def _forward(hidden_change=None, lengths_change=None, method="forward"):
    def call(problem):
        head = make_head(problem)
        hidden = hidden_of(problem)
        lengths = torch.tensor(problem.lengths)
        if hidden_change is not None:
            hidden = hidden_change(problem, hidden)
        if lengths_change is not None:
            lengths = lengths_change(problem, lengths)
        if method == "forward":
            run = lambda: head(hidden, lengths).partition  # noqa: E731
        else:
            run = lambda: head.decode(hidden, lengths)  # noqa: E731
        return run, (problem, head, hidden, lengths)
    return call


def partition_oracle(result, info):
    problem, head, hidden, lengths = info
    assert_matches(result, reference_log_z(head_kwargs(head, hidden.double(), lengths)),
                   **({} if result.dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)))


def decode_oracle(result, info):
    problem, head, hidden, lengths = info
    potentials = SemiMarkovPotentials(**head_kwargs(head, hidden, lengths))
    assert isinstance(result, Segmentation)
    for b, segments in enumerate(result.to_segments()):
        enum = enumerate_structures(potentials, b)  # a best one (ties: any; decoding documents its rule)
        score = enum.scores[enum.structures.index(tuple(segments))]
        assert_matches(score, enum.max())


def hidden_cases(method: str) -> list:
    entry = f"SemiMarkovCRFHead.{method}"

    def f(hidden_change=None, lengths_change=None):
        return _forward(hidden_change, lengths_change, method)

    good = Returns(partition_oracle if method == "forward" else decode_oracle)
    cases = [
        Case(entry, "valid float64", f(), good),
        Case(entry, "lengths None (all T)", f(lengths_change=lambda p, n: None),
             Returns(lambda r, info: (partition_oracle if method == "forward" else decode_oracle)(
                 r, (*info[:3], torch.full((info[0].B,), info[0].T))))),
        Case(entry, "hidden: nested list", f(lambda p, x: x.tolist()), Raises("hidden")),
        Case(entry, "hidden: numpy array", f(lambda p, x: x.numpy()), Raises("hidden")),
        Case(entry, "hidden: None", f(lambda p, x: None), Raises("hidden")),
        Case(entry, "hidden: int dtype", f(lambda p, x: x.long()), Raises("hidden")),
        Case(entry, "hidden: bool dtype", f(lambda p, x: x > 0), Raises("hidden")),
        Case(entry, "hidden: complex dtype", f(lambda p, x: x.to(torch.complex128)), Raises("hidden")),
        Case(entry, "hidden: 2-D", f(lambda p, x: x[0]), Raises("hidden")),
        Case(entry, "hidden: 4-D", f(lambda p, x: x[None]), Raises("hidden")),
        Case(entry, "hidden: H + 1 features", f(lambda p, x: torch.cat([x, x[..., :1]], dim=-1)), Raises("hidden")),
        Case(entry, "hidden: T = 0", f(lambda p, x: x[:, :0], lambda p, n: None), Raises("hidden", "scores")),
        Case(entry, "hidden: float32 with float64 parameters", f(lambda p, x: x.float()), Raises("hidden") | good),
        Case(entry, "hidden: float16", f(lambda p, x: x.half()), Raises("hidden") | good),
        Case(entry, "hidden: meta device", f(lambda p, x: x.to("meta")), Raises("hidden")),
        Case(entry, "hidden: non-contiguous", f(lambda p, x: x.transpose(0, 1).contiguous().transpose(0, 1)), good),
        Case(entry, "lengths: 0", f(lengths_change=lambda p, n: n * 0), Raises("lengths")),
        Case(entry, "lengths: T + 1", f(lengths_change=lambda p, n: n + 1 + p.T - n.max()), Raises("lengths")),
        Case(entry, "lengths: float", f(lengths_change=lambda p, n: n.float()), Raises("lengths")),
        Case(entry, "lengths: one too many", f(lengths_change=lambda p, n: torch.cat([n, n[:1]])), Raises("lengths")),
    ]
    if method == "forward":
        cases += [
            Case(entry, "hidden: NaN", f(lambda p, x: x.index_fill(1, torch.tensor([0]), float("nan"))),
                 Raises("hidden", "scores")),
            Case(entry, "hidden: B = 0", f(lambda p, x: x[:0], lambda p, n: n[:0]),
                 Returns(lambda r, info: r.shape == (0,) or pytest.fail(f"{r.shape}"))),
        ]
    else:
        cases.append(Case(entry, "hidden: B = 0", f(lambda p, x: x[:0], lambda p, n: n[:0]),
                          Returns(lambda r, info: r.shape[0] == 0 or pytest.fail(f"{r.shape}"))))
    return cases


# -- compute_loss -----------------------------------------------------------------------------------------------
def _loss(labels_of, lengths_of=lambda p: torch.tensor(p.lengths)):
    def call(problem):
        head, hidden = make_head(problem), hidden_of(problem)
        segments = random_segments(problem)
        labels = labels_of(problem, segments)
        lengths = lengths_of(problem)
        return (lambda: head.compute_loss(hidden, lengths, labels)), (problem, head, hidden, segments)
    return call


def loss_oracle(result, info):
    problem, head, hidden, segments = info
    potentials = SemiMarkovPotentials(**head_kwargs(head, hidden, torch.tensor(problem.lengths)))
    nll = []
    for b, segs in enumerate(segments):
        enum = enumerate_structures(potentials, b)
        nll.append(enum.log_partition - enum.scores[enum.structures.index(tuple(segs))])
    assert_matches(result, torch.stack(nll).mean())


def _seg(problem, segments, T=None):
    return Segmentation.from_segments(segments, problem.T if T is None else T)


def loss_cases() -> list:
    entry = "SemiMarkovCRFHead.compute_loss"
    bad = Raises("labels")  # the argument's name, never log_prob's "value"

    def relabel(problem, segments, label):
        s, e, _ = segments[0][-1]
        segments[0][-1] = (s, e, label)
        return _seg(problem, segments)

    return [
        Case(entry, "valid", _loss(lambda p, s: _seg(p, s)), Returns(loss_oracle)),
        Case(entry, "labels: a label tensor", _loss(lambda p, s: _seg(p, s).labels), bad),
        Case(entry, "labels: a list of segments", _loss(lambda p, s: s), bad),
        Case(entry, "labels: None", _loss(lambda p, s: None), bad),
        Case(entry, "labels: label = C", _loss(lambda p, s: relabel(p, s, p.C)), bad),
        Case(entry, "labels: other T", _loss(lambda p, s: _seg(p, s, p.T + 1)), bad),
        Case(entry, "labels: other B", _loss(lambda p, s: _seg(p, s + s[:1])), bad),
        Case(entry, "labels: lengths disagree with lengths", _loss(lambda p, s: _seg(p, s),
                                                                   lambda p: torch.full((p.B,), p.T)),
             Raises("labels", "lengths") | Returns(loss_oracle)),
    ]


CASES = constructor_cases() + hidden_cases("forward") + hidden_cases("decode") + loss_cases()


@pytest.mark.parametrize("case", params(CASES))
@settings(max_examples=6)
@given(problem=problems(max_T=5))
def test_fuzz_head(case, problem):
    case.run(problem)
