"""The harness every fuzz test runs its malformed inputs through, and its
positive controls (a harness that cannot fail proves nothing).

A fuzz *case* is one input class at one public entry point: a function that
takes a valid random :class:`Problem` (drawn by hypothesis), breaks one thing
about it, and calls the entry point. Its :class:`Expect` says what a correct
library does with that input:

- :class:`Raises`: a ``ValueError``/``TypeError`` whose message names the
  argument (as a whole word), raised before anything else goes wrong;
- :class:`Returns`: a result, checked against the brute-force oracle.

Anything else fails the case: another exception type (a crash deep inside),
no exception where one is due, a message that does not name the argument, a
wrong number, or a call that runs past :data:`HANG_SECONDS`.
"""
from __future__ import annotations

import re
import signal
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from semiring_semicrf import SemiMarkovPotentials
from semiring_semicrf.testing import enumerate_structures

#: A call on a problem of at most a few dozen positions that takes longer hangs.
HANG_SECONDS = 30

#: Finite stand-in for -inf in the oracle: exp(-1e4) underflows to 0 in
#: float64, so the oracle sums the same structures, without -inf - -inf.
MASKED = -1.0e4

TENSOR_NAMES = ("scores", "transition", "duration", "start", "end", "start_scores", "end_scores")


# -- random valid problems -------------------------------------------------------
@dataclass
class Problem:
    """A valid tiny semi-Markov problem (float64, CPU) plus a seeded generator
    that cases use to pick where to put a bad value."""

    B: int
    T: int
    K: int
    C: int
    lengths: list
    tensors: dict
    generator: torch.Generator = field(repr=False)

    def kwargs(self, **overrides) -> dict:
        """Fresh copies of every constructor argument, with overrides."""
        out = {name: t.clone() for name, t in self.tensors.items()}
        out["lengths"] = torch.tensor(self.lengths)
        out.update(overrides)
        return out

    def potentials(self, **overrides) -> SemiMarkovPotentials:
        return SemiMarkovPotentials(**self.kwargs(**overrides))

    def pick(self, shape) -> tuple:
        """A random index into a tensor of `shape`."""
        return tuple(int(torch.randint(n, (), generator=self.generator)) for n in shape)

    def poke(self, name: str, value: float, index: tuple | None = None) -> tuple:
        """Kwargs with `tensors[name][index] = value`; returns (kwargs, index)."""
        kwargs = self.kwargs()
        index = self.pick(kwargs[name].shape) if index is None else index
        kwargs[name][index] = value
        return kwargs, index


@st.composite
def problems(draw, max_B=3, max_T=6, max_K=3, max_C=3, min_B=1):
    B = draw(st.integers(min_B, max_B))
    T = draw(st.integers(1, max_T))
    K = draw(st.integers(1, max_K))
    C = draw(st.integers(1, max_C))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    if lengths:
        lengths[0] = T
    dependent = draw(st.booleans())
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    tensors = {"scores": rand(B, T, C), "transition": rand(K, C, C) if dependent else rand(C, C),
               "duration": rand(K, C), "start": rand(C), "end": rand(C),
               "start_scores": rand(B, T, C), "end_scores": rand(B, T, C)}
    return Problem(B, T, K, C, lengths, tensors, g)


def random_segments(problem) -> list:
    """One valid segmentation per sequence: `(start, end, label)` lists."""
    out = []
    for length in problem.lengths:
        position, segments = 0, []
        while position < length:
            d = 1 + problem.pick((min(problem.K, length - position),))[0]
            segments.append((position, position + d, problem.pick((problem.C,))[0]))
            position += d
        out.append(segments)
    return out


# -- the oracle ------------------------------------------------------------------
def unmask(x: torch.Tensor) -> torch.Tensor:
    """`x` with -inf replaced by :data:`MASKED` (NaN and +inf kept)."""
    return torch.where(torch.isneginf(x), torch.full_like(x, MASKED), x)


def reference_log_z(kwargs: dict) -> torch.Tensor:
    """Brute-force `log Z (B,)` in float64; -inf entries are masked with
    :data:`MASKED` so the oracle never forms -inf - -inf, and a sequence whose
    every structure is masked gets -inf."""
    clean = {k: (unmask(v.detach().to(torch.float64)) if isinstance(v, torch.Tensor) and v.is_floating_point()
                 else v) for k, v in kwargs.items()}
    pot = SemiMarkovPotentials(**clean)
    out = torch.stack([enumerate_structures(pot, b).log_partition for b in range(pot.batch_size)]) \
        if pot.batch_size else torch.zeros(0, dtype=torch.float64)
    return torch.where(out < MASKED / 2, torch.full_like(out, float("-inf")), out)


def reference_label_marginals(potentials) -> torch.Tensor:
    """Brute-force `(B, T, C)` P(position t lies in a segment labelled c)
    (zero past each length, and for a sequence without any allowed
    segmentation)."""
    B, T, C = potentials.batch_size, potentials.T, potentials.C
    out = torch.zeros(B, T, C, dtype=torch.float64)
    for b in range(B):
        enum = enumerate_structures(potentials, b)
        if not torch.isfinite(enum.log_partition):
            continue
        probabilities = enum.probabilities
        for structure, prob in zip(enum.structures, probabilities.tolist()):
            segments = structure[1] if potentials.is_explicit else structure
            for s, e, c in segments:
                out[b, s:e, c] += prob
    return out


def assert_matches(result: torch.Tensor, expected: torch.Tensor, rtol=1e-7, atol=1e-7) -> None:
    """`result` equals `expected` (same -inf pattern; no NaN unless expected)."""
    result = result.detach().to("cpu", torch.float64)
    torch.testing.assert_close(result, expected.to(torch.float64), rtol=rtol, atol=atol, equal_nan=False)


# -- expectations ------------------------------------------------------------------
class Expect:
    def check(self, call: Callable[[], Any], info: Any) -> None:
        """Run `call` and fail unless its outcome is the expected one; `info`
        is what the case passed along for the oracle (e.g. the kwargs used)."""
        raise NotImplementedError

    def __or__(self, other: Returns) -> Either:
        return Either(self, other)


@dataclass(frozen=True)
class Raises(Expect):
    """A ValueError/TypeError naming one of `names` (whole word)."""

    names: tuple

    def __init__(self, *names: str):
        object.__setattr__(self, "names", names)

    def check(self, call, info):
        try:
            with time_limit():
                result = call()
        except (ValueError, TypeError) as exc:
            self.check_message(exc)
            return
        except Hang:
            raise
        except Exception as exc:  # noqa: BLE001 - the point: any other type is a deep crash
            pytest.fail(f"expected ValueError/TypeError naming {self.names}, got "
                        f"{type(exc).__name__} from deep inside: {exc}")
        pytest.fail(f"expected ValueError/TypeError naming {self.names}, got a result: {result!r:.200}")

    def check_message(self, exc: Exception) -> None:
        message = str(exc)
        if not any(re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", message) for n in self.names):
            pytest.fail(f"{type(exc).__name__} does not name {' or '.join(self.names)}: {message!r}")


@dataclass(frozen=True)
class Returns(Expect):
    """A result, which `verify(result, info)` checks against the oracle."""

    verify: Callable[[Any, Any], None]

    def check(self, call, info):
        try:
            with time_limit():
                result = call()
        except Hang:
            raise
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"expected a correct result, got {type(exc).__name__}: {exc}")
        self.verify(result, info)


@dataclass(frozen=True)
class Either(Expect):
    """A clear error as `raises` demands, or a result `returns` accepts (for
    inputs that are valid in some problems and not in others)."""

    raises: Raises
    returns: Returns

    def check(self, call, info):
        try:
            with time_limit():
                result = call()
        except (ValueError, TypeError) as exc:
            self.raises.check_message(exc)
            return
        except Hang:
            raise
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"expected a clear error or a correct result, got {type(exc).__name__}: {exc}")
        self.returns.verify(result, info)


#: The per-position inputs, whose padding (past each length) is ignored.
PER_POSITION = ("scores", "start_scores", "end_scores")


def poked_oracle(result, info):
    """The brute-force log Z of a case whose info is `(kwargs, name, index)`."""
    assert_matches(result, reference_log_z(info[0]))


class ByPosition(Expect):
    """A value poked into an input (info `(kwargs, name, index)`): `inside`
    is expected unless it landed in the padding of a per-position input,
    which is ignored whatever it holds: then the exact log Z (the brute-force
    oracle never reads padding)."""

    def __init__(self, inside: Expect):
        self.inside = inside

    def check(self, call, info):
        kwargs, name, index = info
        past = name in PER_POSITION and index[1] >= int(kwargs["lengths"][index[0]])
        (Returns(poked_oracle) if past else self.inside).check(call, info)


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: int = HANG_SECONDS):
    """Fail a call that runs past `seconds` (SIGALRM; main thread only)."""
    def on_alarm(signum, frame):
        raise Hang(f"call still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class Case:
    """One input class at one entry point: `call(problem)` returns
    `(thunk, info)`, the malformed call and what the oracle needs."""

    entry: str
    name: str
    call: Callable[[Problem], tuple]
    expect: Expect

    def run(self, problem: Problem) -> None:
        thunk, info = self.call(problem)
        self.expect.check(thunk, info)


def params(cases: list) -> list:
    """`pytest.param`s with readable ids."""
    ids = [f"{c.entry}: {c.name}" for c in cases]
    assert len(set(ids)) == len(ids), "duplicate fuzz case ids"
    return [pytest.param(c, id=i) for c, i in zip(cases, ids)]


# -- positive controls: the harness catches what it must ---------------------------
def _deep_crash():
    raise RuntimeError("index out of range in self")


def _nameless():
    raise ValueError("shape mismatch")


def _wrong_word():
    raise ValueError("start_scores must have shape (B, T, C)")


@pytest.mark.parametrize("call,why", [
    (_deep_crash, "from deep inside"),
    (_nameless, "does not name"),
    (_wrong_word, "does not name"),  # 'scores' inside 'start_scores' is not the argument
    (lambda: 1.0, "got a result"),
])
def test_raises_rejects_what_is_not_a_clear_error(call, why):
    with pytest.raises(pytest.fail.Exception, match=why):
        Raises("scores").check(call, None)


def test_returns_rejects_a_crash_and_a_wrong_number():
    with pytest.raises(pytest.fail.Exception, match="expected a correct result"):
        Returns(lambda r, p: None).check(_deep_crash, None)
    with pytest.raises(AssertionError):
        assert_matches(torch.tensor([1.0]), torch.tensor([1.001]))
    with pytest.raises(AssertionError):
        assert_matches(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_time_limit_stops_a_hang():
    with pytest.raises(Hang), time_limit(1):
        while True:
            pass


@settings(max_examples=10)
@given(problem=problems())
def test_oracle_masks_minus_inf_exactly(problem):
    """The -inf stand-in changes nothing the oracle sums, and an all-forbidden
    sequence comes out as -inf."""
    kwargs = problem.kwargs()
    plain = torch.stack([enumerate_structures(SemiMarkovPotentials(**kwargs), b).log_partition
                         for b in range(problem.B)])
    assert_matches(reference_log_z(kwargs), plain)
    kwargs["start"][:] = float("-inf")
    assert torch.isneginf(reference_log_z(kwargs)).all()
