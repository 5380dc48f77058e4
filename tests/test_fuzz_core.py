"""Fuzz the core entry points with malformed inputs: the potentials
constructor (every argument), `SemiMarkovPotentials.from_edges`, and
`semimarkov_scan` (potentials/semiring combinations). See
`test_fuzz_harness.py` for what each expectation demands."""
from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from test_fuzz_harness import (
    TENSOR_NAMES,
    ByPosition,
    Case,
    Expect,
    Raises,
    Returns,
    assert_matches,
    params,
    poked_oracle,
    problems,
    reference_log_z,
)

from semiring_semicrf import (
    CrossEntropySemiring,
    EntropySemiring,
    KLDivergenceSemiring,
    KMaxSemiring,
    LogSemiring,
    MaxSemiring,
    SemiMarkovPotentials,
    semimarkov_scan,
)
from semiring_semicrf.testing import enumerate_structures

REQUIRED = ("scores", "transition", "duration")


# -- helpers: build the call and the oracle --------------------------------------------
def scan_of(kwargs: dict, validate_args: bool = True):
    """The call under test: construct, then run the scan that consumes it."""
    return lambda: semimarkov_scan(SemiMarkovPotentials(**kwargs, validate_args=validate_args))


def oracle(result, kwargs):
    assert_matches(result, reference_log_z(kwargs))


def oracle_float32(result, kwargs):
    assert result.dtype == torch.float32
    assert_matches(result, reference_log_z(kwargs), rtol=1e-5, atol=1e-4)


def never_finite_wrong(result, info):
    """A poisoned entry (NaN/+inf): each sequence's result is non-finite, or
    the poisoned entry is unused there (two stand-ins agree) and it is exact."""
    kwargs, name, index = info
    refs = []
    for stand_in in (0.0, 1.0):
        clean = dict(kwargs)
        clean[name] = kwargs[name].clone()
        clean[name][index] = stand_in
        refs.append(reference_log_z(clean))
    result = result.detach().double()
    finite = torch.isfinite(result)
    unused = refs[0] == refs[1]
    assert not (finite & ~unused).any(), f"finite log Z {result} from a poisoned {name}{list(index)}"
    assert_matches(result[finite], refs[0][finite])


def without_extras(problem) -> dict:
    kwargs = problem.kwargs()
    del kwargs["start_scores"], kwargs["end_scores"]
    return kwargs


def grow(dim: int):
    """One more entry along `dim` (copied from the first)."""
    return lambda t: torch.cat([t, t.narrow(dim, 0, 1)], dim=dim)


def poke_case(name, value, validate_args):
    def call(problem):
        kwargs, index = problem.poke(name, value)
        return scan_of(kwargs, validate_args), (kwargs, name, index)
    return call


def as_float32(problem) -> dict:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in problem.kwargs().items()}


def with_value(name, value_of):
    """Case call: one argument replaced; the oracle gets the same kwargs."""
    def call(problem):
        kwargs = problem.kwargs()
        kwargs[name] = value_of(kwargs[name])
        return scan_of(kwargs), kwargs
    return call


# -- SemiMarkovPotentials: every tensor argument ---------------------------------------
def tensor_argument_cases(name: str) -> list:
    entry = "SemiMarkovPotentials"
    other = "scores" if name != "scores" else "transition"
    cases = [
        Case(entry, f"{name}: nested list", with_value(name, lambda t: t.tolist()), Raises(name)),
        Case(entry, f"{name}: numpy array", with_value(name, lambda t: t.numpy()), Raises(name)),
        Case(entry, f"{name}: python float", with_value(name, lambda t: 1.0), Raises(name)),
        Case(entry, f"{name}: string", with_value(name, lambda t: "zeros"), Raises(name)),
        Case(entry, f"{name}: int64 dtype", with_value(name, lambda t: t.long()), Raises(name)),
        Case(entry, f"{name}: int32 dtype", with_value(name, lambda t: t.int()), Raises(name)),
        Case(entry, f"{name}: bool dtype", with_value(name, lambda t: t > 0), Raises(name)),
        Case(entry, f"{name}: complex dtype", with_value(name, lambda t: t.to(torch.complex128)), Raises(name)),
        Case(entry, f"{name}: float32 among float64", with_value(name, lambda t: t.float()), Raises(name, other)),
        Case(entry, f"{name}: float16 among float64", with_value(name, lambda t: t.half()), Raises(name, other)),
        Case(entry, f"{name}: meta device", with_value(name, lambda t: t.to("meta")), Raises(name, other)),
        Case(entry, f"{name}: extra leading dim", with_value(name, lambda t: t.unsqueeze(0)),
             Raises(name, "transition") | Returns(oracle) if name == "transition" else Raises(name, "transition")),
        Case(entry, f"{name}: missing dim", with_value(name, lambda t: t[0]),
             Raises(name) | Returns(oracle) if name == "transition" else Raises(name, "transition")),
        Case(entry, f"{name}: empty tensor", with_value(name, lambda t: t.new_empty(0)), Raises(name)),
        Case(entry, f"{name}: NaN (validated)", poke_case(name, float("nan"), True), ByPosition(Raises(name))),
        Case(entry, f"{name}: NaN (not validated)", poke_case(name, float("nan"), False),
             Returns(never_finite_wrong)),
        Case(entry, f"{name}: +inf (validated)", poke_case(name, float("inf"), True), ByPosition(Raises(name))),
        Case(entry, f"{name}: +inf (not validated)", poke_case(name, float("inf"), False),
             Returns(never_finite_wrong)),
        Case(entry, f"{name}: requires_grad", with_value(name, lambda t: t.requires_grad_()), Returns(oracle)),
        Case(entry, f"{name}: non-contiguous view", with_value(name, lambda t: t.mT.contiguous().mT
                                                              if t.dim() >= 2 else t.repeat(2)[::2]),
             Returns(oracle)),
        Case(entry, f"{name}: float16 among float32 (upcast)", lambda p: _low_precision(p, name, torch.float16),
             Returns(oracle_float32)),
        Case(entry, f"{name}: bfloat16 among float32 (upcast)", lambda p: _low_precision(p, name, torch.bfloat16),
             Returns(oracle_float32)),
    ]
    if name in REQUIRED:
        cases.append(Case(entry, f"{name}: None", with_value(name, lambda t: None), Raises(name)))
    else:
        cases.append(Case(entry, f"{name}: None (default)", with_value(name, lambda t: None), Returns(oracle)))
    cases.append(Case(entry, f"{name}: -inf entry (mask)", poke_case(name, float("-inf"), True),
                      ByPosition(Raises(name) if name == "scores" else Returns(poked_oracle))))
    cases += [Case(entry, f"{name}: dim {d} one too long", _grown(name, d), _grown_expect(name, d))
              for d in range(_ndim(name))]
    return cases


def _ndim(name: str) -> int:
    return {"scores": 3, "start_scores": 3, "end_scores": 3, "transition": 2, "duration": 2}.get(name, 1)


def _grown(name, d):
    def call(problem):
        kwargs = without_extras(problem) if name == "scores" else problem.kwargs()
        if name == "transition" and kwargs["transition"].dim() == 3:
            d_ = d + 1  # grow a C axis of a (K, C, C) transition
        else:
            d_ = d
        kwargs[name] = grow(d_)(kwargs[name])
        return scan_of(kwargs), kwargs
    return call


def _grown_expect(name, d):
    if name == "scores" and d == 1:
        return Returns(oracle)  # more padding positions: a valid problem
    if name == "scores":
        return Raises("scores", "duration", "lengths", "transition")
    if name == "transition" and d == 0:
        return Raises(name) | Returns(oracle)  # (1, C, C) is valid when K = 1
    if name == "duration" and d == 0:
        return Raises("transition", "duration") | Returns(oracle)  # K+1: valid unless transition is (K, C, C)
    return Raises(name)


def _low_precision(problem, name, dtype):
    """`name` in `dtype`, the other tensors in float32 (or all in `dtype`
    when `name` is None); the oracle gets the rounded values in float64."""
    kwargs = as_float32(problem)
    for key in (TENSOR_NAMES if name is None else (name,)):
        kwargs[key] = kwargs[key].to(dtype)
    rounded = {k: (v.double() if v.is_floating_point() else v) for k, v in kwargs.items()}
    return scan_of(kwargs), rounded


# -- SemiMarkovPotentials: lengths ------------------------------------------------------
def _lengths(value_of):
    def call(problem):
        kwargs = problem.kwargs()
        kwargs["lengths"] = value_of(problem, kwargs["lengths"])
        return scan_of(kwargs), kwargs
    return call


def _set_first(value):
    def change(problem, lengths):
        lengths = lengths.clone()
        lengths[problem.pick((problem.B,))] = value(problem) if callable(value) else value
        return lengths
    return change


def lengths_cases() -> list:
    entry = "SemiMarkovPotentials"
    bad = Raises("lengths")
    good = Returns(oracle)
    return [
        Case(entry, "lengths: list of ints", _lengths(lambda p, n: n.tolist()), good),
        Case(entry, "lengths: tuple of ints", _lengths(lambda p, n: tuple(n.tolist())), good),
        Case(entry, "lengths: int32", _lengths(lambda p, n: n.int()), good),
        Case(entry, "lengths: uint8", _lengths(lambda p, n: n.to(torch.uint8)), good),
        Case(entry, "lengths: non-contiguous", _lengths(lambda p, n: n.repeat_interleave(2)[::2]), good),
        Case(entry, "lengths: None (all T)", _lengths(lambda p, n: None),
             Returns(lambda r, kw: oracle(r, {**kw, "lengths": None}))),
        Case(entry, "lengths: a zero", _lengths(_set_first(0)), bad),
        Case(entry, "lengths: negative", _lengths(_set_first(-1)), bad),
        Case(entry, "lengths: T + 1", _lengths(_set_first(lambda p: p.T + 1)), bad),
        Case(entry, "lengths: huge", _lengths(_set_first(2**62)), bad),
        Case(entry, "lengths: float dtype", _lengths(lambda p, n: n.double()), bad),
        Case(entry, "lengths: bool dtype", _lengths(lambda p, n: n > 0), bad),
        Case(entry, "lengths: complex dtype", _lengths(lambda p, n: n.to(torch.complex64)), bad),
        Case(entry, "lengths: list of floats", _lengths(lambda p, n: [float(x) for x in n]), bad),
        Case(entry, "lengths: list with a bool", _lengths(lambda p, n: [True] + n.tolist()[1:]), bad),
        Case(entry, "lengths: numpy array", _lengths(lambda p, n: n.numpy()), bad),
        Case(entry, "lengths: python int", _lengths(lambda p, n: p.T), bad),
        Case(entry, "lengths: string", _lengths(lambda p, n: "full"), bad),
        Case(entry, "lengths: one too few", _lengths(lambda p, n: n[1:]), bad),
        Case(entry, "lengths: one too many", _lengths(lambda p, n: torch.cat([n, n[:1]])), bad),
        Case(entry, "lengths: 2-D", _lengths(lambda p, n: n[None]), bad),
        Case(entry, "lengths: 0-dim", _lengths(lambda p, n: n[0]), bad),
        Case(entry, "lengths: empty list", _lengths(lambda p, n: []), bad),
        Case(entry, "lengths: meta device", _lengths(lambda p, n: n.to("meta")), bad),
    ]


# -- SemiMarkovPotentials: sizes --------------------------------------------------------
def size_cases() -> list:
    entry = "SemiMarkovPotentials"

    def empty(problem, axis):
        kwargs = without_extras(problem)
        B, T, K, C = (0 if a == axis else getattr(problem, a) for a in "BTKC")
        kwargs.update(scores=torch.randn(B, T, C, dtype=torch.float64), duration=torch.randn(K, C, dtype=torch.float64),
                      transition=torch.randn(C, C, dtype=torch.float64), start=torch.randn(C, dtype=torch.float64),
                      end=torch.randn(C, dtype=torch.float64), lengths=torch.full((B,), max(T, 1)))
        return scan_of(kwargs), kwargs

    def shape_is_b(result, kwargs):
        assert result.shape == (0,)

    return [
        Case(entry, "every tensor float16 (upcast)", lambda p: _low_precision(p, None, torch.float16),
             Returns(oracle_float32)),
        Case(entry, "every tensor bfloat16 (upcast)", lambda p: _low_precision(p, None, torch.bfloat16),
             Returns(oracle_float32)),
        Case(entry, "B = 0 (empty batch)", lambda p: empty(p, "B"), Returns(shape_is_b)),
        Case(entry, "T = 0", lambda p: empty(p, "T"), Raises("scores")),
        Case(entry, "K = 0", lambda p: empty(p, "K"), Raises("duration")),
        Case(entry, "C = 0", lambda p: empty(p, "C"), Raises("scores")),
        Case(entry, "duration K differs from (K, C, C) transition", _k_mismatch, Raises("transition")),
        Case(entry, "scores given as keyword only, no transition", _missing_argument, Raises("transition")),
    ]


def _k_mismatch(problem):
    kwargs = problem.kwargs()
    kwargs["transition"] = torch.randn(problem.K + 1, problem.C, problem.C, dtype=torch.float64)
    return scan_of(kwargs), kwargs


def _missing_argument(problem):
    kwargs = problem.kwargs()
    del kwargs["transition"]
    return scan_of(kwargs), kwargs


# -- from_edges ---------------------------------------------------------------------------
def edges_of(problem) -> torch.Tensor:
    return problem.potentials().to_edges()


def edge_oracle(result, info):
    edge, lengths = info
    pot = SemiMarkovPotentials.from_edges(edge.detach().double(), lengths)
    expected = torch.stack([enumerate_structures(pot, b).log_partition for b in range(pot.batch_size)])
    assert_matches(result, expected, rtol=1e-5 if edge.dtype == torch.float32 else 1e-7,
                   atol=1e-4 if edge.dtype == torch.float32 else 1e-7)


def _edge_call(value_of, lengths_of=None, validate_args=True):
    def call(problem):
        edge = value_of(problem, edges_of(problem))
        lengths = torch.tensor(problem.lengths) if lengths_of is None else lengths_of(problem)

        def run():
            return semimarkov_scan(SemiMarkovPotentials.from_edges(edge, lengths, validate_args=validate_args))
        return run, (edge, lengths)
    return call


class EdgeByPosition(Expect):
    """A NaN or +inf poked into an edge: a clear error naming `edge` when the
    segment lies inside its sequence's length, the exact result when it ends
    past it (padding). Info: `(edge, lengths)`."""

    def check(self, call, info):
        edge, lengths = info
        b, s, d = ((torch.isnan(edge) | torch.isposinf(edge)).nonzero()[0, :3]).tolist()
        (Returns(edge_oracle) if s + d > int(lengths[b]) else Raises("edge")).check(call, info)


def _edge_poke(value):
    def change(problem, edge):
        edge = edge.clone()
        edge[problem.pick(edge.shape)] = value
        return edge
    return change


def _edge_poke_valid(value):
    """Poke a slot the model uses (d >= 1)."""
    def change(problem, edge):
        edge = edge.clone()
        b, s, d, c, c2 = problem.pick(edge.shape)
        edge[b, s, 1 + d % problem.K, c, c2] = value
        return edge
    return change


def edge_poison_check(result, info):
    edge, lengths = info
    finite = torch.isfinite(result)
    clean = torch.nan_to_num(edge, nan=0.0, posinf=0.0)
    clean2 = torch.nan_to_num(edge, nan=1.0, posinf=1.0)
    refs = []
    for e in (clean, clean2):
        pot = SemiMarkovPotentials.from_edges(e, lengths)
        refs.append(torch.stack([enumerate_structures(pot, b).log_partition for b in range(pot.batch_size)]))
    unused = refs[0] == refs[1]
    assert not (finite & ~unused).any(), f"finite log Z {result} from a poisoned edge"
    assert_matches(result[finite], refs[0][finite])


def edge_cases() -> list:
    entry = "from_edges"
    bad = Raises("edge")
    return [
        Case(entry, "edge: nested list", _edge_call(lambda p, e: e.tolist()), bad),
        Case(entry, "edge: numpy array", _edge_call(lambda p, e: e.numpy()), bad),
        Case(entry, "edge: None", _edge_call(lambda p, e: None), bad),
        Case(entry, "edge: int64 dtype", _edge_call(lambda p, e: e.nan_to_num(neginf=-9).long()), bad),
        Case(entry, "edge: bool dtype", _edge_call(lambda p, e: e > 0), bad),
        Case(entry, "edge: complex dtype", _edge_call(lambda p, e: e.to(torch.complex64)), bad),
        Case(entry, "edge: 4-D", _edge_call(lambda p, e: e[0]), bad),
        Case(entry, "edge: 6-D", _edge_call(lambda p, e: e[None]), bad),
        Case(entry, "edge: K + 1 = 1 (K = 0)", _edge_call(lambda p, e: e[:, :, :1]), bad),
        Case(entry, "edge: C_dst != C_src", _edge_call(lambda p, e: torch.cat([e, e[..., :1]], dim=-1)), bad),
        Case(entry, "edge: T = 0", _edge_call(lambda p, e: e[:, :0], lambda p: None), bad),
        Case(entry, "edge: empty tensor", _edge_call(lambda p, e: e.new_empty(0)), bad),
        Case(entry, "edge: NaN (validated)", _edge_call(_edge_poke(float("nan"))), EdgeByPosition()),
        Case(entry, "edge: NaN (not validated)", _edge_call(_edge_poke_valid(float("nan")), validate_args=False),
             Returns(edge_poison_check)),
        Case(entry, "edge: +inf (validated)", _edge_call(_edge_poke_valid(float("inf"))), EdgeByPosition()),
        Case(entry, "edge: -inf entries (masks)", _edge_call(_edge_poke(float("-inf"))), Returns(edge_oracle)),
        Case(entry, "edge: float16 (upcast)", _edge_call(lambda p, e: e.half()),
             Returns(lambda r, info: edge_oracle(r, (info[0].float(), info[1])))),
        Case(entry, "edge: B = 0", _edge_call(lambda p, e: e[:0], lambda p: None),
             Returns(lambda r, info: r.shape == (0,) or pytest.fail(f"shape {r.shape}"))),
        Case(entry, "edge: lengths T + 1", _edge_call(lambda p, e: e, lambda p: torch.full((p.B,), p.T + 1)),
             Raises("lengths")),
        Case(entry, "edge: lengths 0", _edge_call(lambda p, e: e, lambda p: torch.zeros(p.B, dtype=torch.long)),
             Raises("lengths")),
        Case(entry, "edge: lengths float", _edge_call(lambda p, e: e, lambda p: torch.ones(p.B)), Raises("lengths")),
        Case(entry, "edge: lengths wrong count", _edge_call(lambda p, e: e, lambda p: torch.ones(p.B + 1,
                                                                                                  dtype=torch.long)),
             Raises("lengths")),
        Case(entry, "edge: lengths meta", _edge_call(lambda p, e: e, lambda p: torch.tensor(p.lengths).to("meta")),
             Raises("lengths")),
    ]


# -- semimarkov_scan: potentials x semiring -------------------------------------------------
def _scan(potentials_of, semiring_of):
    """Case call: the semiring is made inside the call (its constructor is
    part of the entry point)."""
    def call(problem):
        pots = potentials_of(problem)
        return (lambda: semimarkov_scan(pots, semiring_of(problem))), (problem, pots, semiring_of)
    return call


def _other(problem, **changes):
    """A second model q: the same shapes, other values (or the given changes)."""
    kwargs = problem.kwargs()
    kwargs = {k: (v + 0.5 if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
              for k, v in kwargs.items()}
    kwargs.update(changes)
    return SemiMarkovPotentials(**kwargs)


def _topk_oracle(result, info):
    problem, pots, semiring_of = info
    k = semiring_of(problem).k
    expected = torch.stack([enumerate_structures(pots, b).topk(k) for b in range(problem.B)], dim=1)
    assert_matches(result, expected)


def scan_cases() -> list:
    entry = "semimarkov_scan"
    log, kl = (lambda p: LogSemiring()), (lambda p: KLDivergenceSemiring())
    pot = lambda p: p.potentials()  # noqa: E731
    cases = [
        Case(entry, "potentials: raw scores tensor", _scan(lambda p: p.kwargs()["scores"], log), Raises("potentials")),
        Case(entry, "potentials: None", _scan(lambda p: None, log), Raises("potentials")),
        Case(entry, "potentials: kwargs dict", _scan(lambda p: p.kwargs(), log), Raises("potentials")),
        Case(entry, "potentials: empty tuple", _scan(lambda p: (), log), Raises("potentials")),
        Case(entry, "potentials: a pair for Log", _scan(lambda p: (pot(p), pot(p)), log), Raises("potentials")),
        Case(entry, "potentials: one set for KL", _scan(pot, kl), Raises("potentials")),
        Case(entry, "potentials: three sets for KL", _scan(lambda p: (pot(p),) * 3, kl), Raises("potentials")),
        Case(entry, "potentials: one set for cross-entropy", _scan(pot, lambda p: CrossEntropySemiring()),
             Raises("potentials")),
        Case(entry, "potentials: a pair for Entropy", _scan(lambda p: (pot(p), pot(p)), lambda p: EntropySemiring()),
             Raises("potentials")),
        Case(entry, "potentials: pair with a non-potential", _scan(lambda p: (pot(p), p.kwargs()["scores"]), kl),
             Raises("potentials")),
        Case(entry, "potentials: pair of other lengths",
             _scan(lambda p: assume(p.T > 1) and (pot(p), _other(p, lengths=torch.tensor(p.lengths) % p.T + 1)), kl),
             Raises("potentials")),
        Case(entry, "potentials: pair of other dtype",
             _scan(lambda p: (pot(p), _other(p, **{k: v.float() for k, v in p.kwargs().items()
                                                   if v.is_floating_point()})), kl),
             Raises("potentials")),
        Case(entry, "potentials: pair of other batch size",
             _scan(lambda p: (pot(p), SemiMarkovPotentials(
                 **{k: (torch.cat([v, v[:1]]) if k in ("scores", "start_scores", "end_scores", "lengths") else v)
                    for k, v in p.kwargs().items()})), kl),
             Raises("potentials")),
        Case(entry, "potentials: pair structured/explicit",
             _scan(lambda p: (pot(p), SemiMarkovPotentials.from_edges(edges_of(p), torch.tensor(p.lengths))), kl),
             Raises("potentials")),
        Case(entry, "semiring: string 'log'", _scan(pot, lambda p: "log"), Raises("semiring")),
        Case(entry, "semiring: None", _scan(pot, lambda p: None), Raises("semiring")),
        Case(entry, "semiring: the class, not an instance", _scan(pot, lambda p: LogSemiring), Raises("semiring")),
        Case(entry, "KMaxSemiring: k more than the structures", _scan(pot, lambda p: KMaxSemiring(400)),
             Returns(_topk_oracle)),
        Case(entry, "KMaxSemiring: k = 1", _scan(pot, lambda p: KMaxSemiring(1)), Returns(_topk_oracle)),
        Case(entry, "Max on an all-forbidden problem",
             _scan(lambda p: p.potentials(start=torch.full((p.C,), float("-inf"), dtype=torch.float64)),
                   lambda p: MaxSemiring()),
             Returns(lambda r, info: torch.isneginf(r).all() or pytest.fail(f"max {r}"))),
    ]
    for k in (0, -1, 2.0, True, "2", None):
        cases.append(Case(entry, f"KMaxSemiring: k = {k!r}", _scan(pot, lambda p, k=k: KMaxSemiring(k)), Raises("k")))
    return cases


CONSTRUCTOR_CASES = [c for name in TENSOR_NAMES for c in tensor_argument_cases(name)] + lengths_cases() + size_cases()
CASES = CONSTRUCTOR_CASES + edge_cases() + scan_cases()


@pytest.mark.parametrize("case", params(CASES))
@settings(max_examples=8)
@given(problem=problems())
def test_fuzz_core(case, problem):
    case.run(problem)

