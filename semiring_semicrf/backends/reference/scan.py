"""The generic streaming scan, written once against `Semiring`: the reference
rung of the backend ladder, and the recurrence in its plainest form.

Factorized recurrence (docs/algorithm.md), for structured potentials with a
`(C, C)` transition, in any semiring:

    alpha[e, c] = (+)_{d=1..min(K,e)} u[e-d, c] (x) w(e-d, d, c)
    u[e, c]     = (+)_{c'} alpha[e, c'] (x) transition[c', c]       (u[0] = start)
    result      = (+)_c alpha[L, c] (x) end[c]

`O(K C + C^2)` work per position. With `w = enter[s] + duration[d-1] +
leave[s+d-1]` (:class:`~semiring_semicrf.factors.Factors`) the ring buffer
holds `v[s] = u[s] (x) enter[s]` for the last K starts, in age order (slot j
holds the start `e-1-j`, so it pairs with duration j+1), and
`alpha[e] = (+)_j v[slot j] (x) duration[j]  (x) leave[e-1]`.

General recurrence (`(K, C, C)` transitions, or explicit edges):

    alpha[e, c] = (+)_{d, c'} alpha[e-d, c'] (x) edge(e-d, d, c, c')

`O(K C^2)` per position, the ring holding the last K rows of alpha over the
*source* labels: for structured potentials these include the virtual start
label (:meth:`Factors.segments_ending_at`), and the last segment's edge
includes `end`, so that every segment's whole log-potential is embedded at
once; for explicit edges the label before the first segment is latent (every
source is `one` at position 0).

Working memory is `O(S B K C)` whatever T is (S = the semiring's state size).

Numerics: for a semiring with `renormalize = True`, every `RENORM_INTERVAL`
positions the ring is renormalized: a per-sequence log-scale (see
:meth:`Semiring.log_mass`) is factored out and carried in float64, so a
float32 scan keeps O(1) state values at any T. Other semirings never are, and
their values keep the working dtype (or their own: a bool state stays bool).

What a semiring declares (:class:`~semiring_semicrf.semirings.Semiring`) is
honoured in :func:`prepare`: `center = False` gets uncentred factors (exact
sums on integer potentials), and a non-`homomorphic` semiring is refused on
the factorized path, whose factors it cannot multiply back.

A step takes its position `e` as an int, or as a 0-d integer tensor (the
compiled rung replays one block of steps for every block,
:mod:`semiring_semicrf.backends.compiled`): rows are then gathered with the
index clamped into the tables, and a step outside `[1, T]` computes values its
caller discards.

Selective semirings (Max, KMax) can run the same steps with index-returning
reductions (:meth:`Semiring.argsum`): `keep(name, e, index)` then receives
the back-pointers of every reduction (see :mod:`.decode`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...factors import Factors
from ...potentials import EdgePotentials, SemiMarkovPotentials
from ...semirings import Semiring

#: Positions between two renormalizations of the ring buffer.
RENORM_INTERVAL = 16

#: `keep(name, e, index)`: receives the back-pointers of a reduction
#: ("duration", "transition", "segment" or "final") at position `e`.
Keep = Callable[[str, int, torch.Tensor], None]


@dataclass
class ScanTables:
    """Inside tables, semiring values with the state dim first, in float64
    (true values, renormalization undone, so long sequences keep precision).

    `alpha (S, B, T+1, C)`: all prefixes whose last segment ends at `e` with
    label `c` (`alpha[:, :, 0]` is `zero`). `u (S, B, T+1, C)`: all prefixes
    followed by a segment starting at `s` with label `c` (start and
    transition included; factorized path only, else None).
    """

    alpha: torch.Tensor
    u: torch.Tensor | None


def prepare(potentials, semiring: Semiring) -> tuple:
    """`potentials` (one, or a tuple of `semiring.num_potentials`, e.g. `(p, q)`)
    as a tuple of :class:`Factors` or :class:`EdgePotentials` of one kind, one
    shape and one set of lengths, prepared for the semiring: uncentred
    factors when it sets `center = False` (a :class:`Factors` given is used
    as it is). Raises ValueError for a semiring the potentials cannot run:
    a non-homomorphic one on the factorized `(C, C)` path."""
    if not isinstance(semiring, Semiring):
        raise TypeError(f"semiring must be a Semiring instance (e.g. LogSemiring()), got {semiring!r}")
    if semiring.renormalize and not semiring.homomorphic:
        raise ValueError(f"{semiring!r} sets renormalize = True and homomorphic = False: renormalizing multiplies "
                         "the state by embedded log-scales, exact only when embed is a homomorphism")
    pots = tuple(potentials) if isinstance(potentials, (tuple, list)) else (potentials,)
    if len(pots) != semiring.num_potentials:
        raise ValueError(
            f"{semiring!r} takes {semiring.num_potentials} set(s) of potentials "
            f"(for example (p, q)), got {len(pots)}")
    prepared = []
    for i, p in enumerate(pots):
        if isinstance(p, SemiMarkovPotentials):
            p = p.factors() if semiring.center or not p.center else _uncentred(p)
        elif not isinstance(p, (Factors, EdgePotentials)):
            name = "potentials" if len(pots) == 1 else f"potentials[{i}]"
            raise TypeError(f"{name} must be SemiMarkovPotentials or EdgePotentials, got {type(p).__name__}")
        prepared.append(p)
    first = prepared[0]
    for i, p in enumerate(prepared[1:], start=1):
        if p.device != first.device:
            raise ValueError(f"potentials[{i}] is on {p.device} but potentials[0] is on {first.device}; "
                             "put both on one device")
        same = (type(p) is type(first) and (p.B, p.T, p.K, p.C) == (first.B, first.T, first.K, first.C)
                and p.dtype == first.dtype and p.duration_dependent == first.duration_dependent)
        if not same:
            raise ValueError(f"potentials[{i}] differs from potentials[0] in kind, shape or dtype")
        if not torch.equal(p.lengths, first.lengths):
            raise ValueError(f"potentials[{i}] has other lengths than potentials[0]")
    if not semiring.homomorphic and not first.duration_dependent:
        raise ValueError(
            f"{semiring!r} declares homomorphic = False (embed(x + y) is not times(embed(x), embed(y))), and "
            "(C, C) transitions take the factorized scan, which embeds each segment's start, duration and end "
            "factors apart: give (K, C, C) transitions (transition.expand(K, C, C)) or explicit edges "
            "(SemiMarkovPotentials.from_edges(p.to_edges(), p.lengths)), which embed each segment whole")
    return tuple(prepared)


def tracks_grad(prepared: tuple) -> bool:
    """Whether a scan of `prepared` (from :func:`prepare`) must carry a gradient."""
    sources = (p.potentials if isinstance(p, Factors) else p for p in prepared)
    return torch.is_grad_enabled() and any(t.requires_grad for s in sources for t in s.tensors().values())


def _uncentred(potentials: SemiMarkovPotentials) -> Factors:
    """The factors of `potentials` without the zero-centring (mean 0)."""
    mean = torch.zeros(potentials.batch_size, potentials.C, dtype=torch.float64, device=potentials.device)
    return Factors(potentials, mean=mean)


def _stack(tensors) -> torch.Tensor:
    """Stack potential sets on a new dim 0 (a view when there is only one)."""
    tensors = list(tensors)
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors, dim=0)


def _fill_caches(factors: Factors) -> None:
    """Compute the cached factors the general path's steps read now, not
    inside a (checkpointed) step."""
    for name in ("enter", "leave", "duration", "transition_with_start"):
        getattr(factors, name)


def _row(table: torch.Tensor, r) -> torch.Tensor:
    """`table[:, :, r]` of a `(P, B, T, C)` table: `r` an int, or an integer
    tensor of positions clamped into `[0, T)` (see the module docstring),
    0-d (a row `(P, B, C)`) or `(n,)` (rows `(P, B, n, C)`)."""
    if isinstance(r, int):
        return table[:, :, r]
    rows = table.index_select(2, r.clamp(0, table.shape[2] - 1).reshape(-1))
    return rows.squeeze(2) if r.dim() == 0 else rows


class ScanProgram:
    """The recurrence for one semiring and one (stack of `P`) potentials, as
    an initial state and a step function, so that callers can run it whole
    or block by block (the checkpointed backward).

    Log-potentials are stacked `(P, ...)` and enter the semiring through
    `times_potential`; values are `(S, ...)`.
    """

    def __init__(self, potentials, semiring: Semiring):
        pots = prepare(potentials, semiring)
        self.semiring = semiring
        first = pots[0]
        self.prepared = pots
        self.B, self.T, self.K, self.C = first.B, first.T, first.K, first.C
        self.dtype, self.device = first.dtype, first.device
        self.lengths = first.lengths
        self.ends = frozenset(self.lengths.tolist())
        self.explicit = first.is_explicit
        self.factorized = not first.duration_dependent
        self.embedded = False  # see with_embedded
        if self.explicit:
            self.edge = _stack([p.edge for p in pots])  # (P, B, T, K+1, C, C)
            self.sources = self.C
            return
        self.end = _stack([f.end for f in pots])[:, None, :]  # (P, 1, C)
        if self.factorized:
            self.enter = _stack([f.enter for f in pots])  # (P, B, T, C)
            self.leave = _stack([f.leave for f in pots])  # (P, B, T, C)
            self.duration = _stack([f.duration for f in pots])  # (P, B, K, C)
            self.transition = _stack([f.transition for f in pots])[:, None]  # (P, 1, C_src, C_dst)
            self.start = _stack([f.start for f in pots])[:, None, :]  # (P, 1, C)
        else:
            self.sources = self.C + 1  # the virtual start label last
            for f in pots:
                _fill_caches(f)

    # -- the tensors the steps read -------------------------------------------
    #: Per kind of path, the names of :meth:`tables`.
    _TABLES = {"explicit": ("edge",), "factorized": ("enter", "leave", "duration", "transition"),
               "general": ("enter", "leave", "duration", "transition", "start")}

    @property
    def kind(self) -> str:
        """"factorized", "general" (`(K, C, C)` transitions) or "explicit"."""
        return "explicit" if self.explicit else "factorized" if self.factorized else "general"

    def tables(self) -> dict:
        """The tensors :meth:`step` reads, by name, stacked `(P, ...)` over the
        potential sets: what a compiled block takes as inputs and is
        differentiated against (:meth:`with_tables` puts them back)."""
        names = self._TABLES[self.kind]
        if self.kind == "general":
            return {name: _stack([getattr(f, name) for f in self.prepared]) for name in names}
        return {name: getattr(self, name) for name in names}

    def with_tables(self, tables: dict) -> ScanProgram:
        """A copy of this program whose steps read `tables` (as returned by
        :meth:`tables`, e.g. leaves to differentiate against) instead."""
        copy = object.__new__(ScanProgram)
        copy.__dict__.update(self.__dict__)
        if self.kind != "general":
            copy.__dict__.update(tables)
            return copy
        copy.prepared = tuple(f.replace(**{name: t[i] for name, t in tables.items()})
                              for i, f in enumerate(self.prepared))
        for f in copy.prepared:
            _fill_caches(f)
        return copy

    @property
    def embeds_ahead(self) -> bool:
        """Whether the factorized step's factors are worth embedding ahead of
        the steps (:meth:`with_embedded`): the semiring's `times_potential`
        is the default `times(a, embed(x))`, which embeds a factor again at
        every step (the Log, Max and KMax semirings add a log-potential to
        their state without embedding it, more cheaply than `times`)."""
        return self.factorized and type(self.semiring).times_potential is Semiring.times_potential

    def with_embedded(self, duration: torch.Tensor, transition: torch.Tensor) -> ScanProgram:
        """A copy of this factorized program whose steps read `duration` and
        `transition` as semiring values, embedded ahead (`(S, B, K, C)` and
        `(S, 1, C, C)`, :meth:`embed_factors`), and take their rows so too,
        multiplying by `times`: what a step computes is unchanged, and the
        embedding (with its masks, and their gradients) is done once for
        many steps (the compiled rung embeds once a block)."""
        copy = self.with_tables({"duration": duration, "transition": transition})
        copy.embedded = True
        return copy

    def embed_factors(self, rows: tuple) -> tuple:
        """`(duration, transition, rows)` embedded, for :meth:`with_embedded`
        and its steps' `rows` (each of `rows` `(P, ...)`, as :meth:`rows`
        gives them)."""
        embed = self.semiring.embed
        return embed(self.duration), embed(self.transition), tuple(embed(r) for r in rows)

    # -- the state ------------------------------------------------------------
    def _select(self, mask: torch.Tensor, shape) -> torch.Tensor:
        """`one` where `mask`, `zero` elsewhere, `(S, *shape)`."""
        S = self.semiring
        one = S.one(shape, dtype=self.dtype, device=self.device)
        zero = S.zero(shape, dtype=self.dtype, device=self.device)
        return torch.where(mask, one, zero)

    def initial_row(self) -> torch.Tensor:
        """Slot 0 of the initial ring, `(S, B, C or sources)`: `v[0] = start
        (x) enter[0]` (factorized), else the sources of the first segment:
        the virtual start label, or every (latent) label of explicit edges."""
        S, B, C = self.semiring, self.B, self.C
        if self.factorized:
            return S.times_potential(self.initial_u(), self.enter[:, :, 0])
        if self.explicit:
            return self._select(torch.ones(C, dtype=torch.bool, device=self.device), (B, C))
        virtual = torch.arange(self.sources, device=self.device) == C
        return self._select(virtual, (B, self.sources))

    def initial_u(self) -> torch.Tensor:
        """`u[0] = start`, `(S, B, C)` (factorized path)."""
        one = self.semiring.one((self.B, self.C), dtype=self.dtype, device=self.device)
        return self.semiring.times_potential(one, self.start)

    def initial_ring(self) -> torch.Tensor:
        """Ring buffer before position 1, `(S, B, K, C or sources)`, slot 0 =
        position 0, the rest `zero`."""
        row = self.initial_row()
        rest = self.semiring.zero((self.B, self.K - 1, row.shape[-1]), dtype=self.dtype, device=self.device)
        return torch.cat([row.unsqueeze(2), rest], dim=2)

    def initial_state(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(ring, offset, result)` before position 1: the initial ring, a zero
        float64 log-scale `(P, B)` and a `zero` result `(S, B)` (float64 when
        the semiring renormalizes, else in the working dtype)."""
        S = self.semiring
        offset = torch.zeros(S.num_potentials, self.B, dtype=torch.float64, device=self.device)
        result_dtype = torch.float64 if S.renormalize else self.dtype
        return self.initial_ring(), offset, S.zero((self.B,), dtype=result_dtype, device=self.device)

    # -- the loop -------------------------------------------------------------
    def run(self, ring, offset, result, e0: int, e1: int, record=None, keep: Keep | None = None):
        """Positions `e0 .. e1-1` of the scan: renormalize every
        `RENORM_INTERVAL` positions (into the float64 `offset`), step, and
        collect the (float64, rescaled) result of the sequences ending there.
        `record(alpha, u, offset)`, if given, sees every position's values;
        `keep` makes the reductions index-returning (see module docstring).
        Returns the new `(ring, offset, result)`: blocks can be chained, or
        recomputed from a saved state (checkpointing)."""
        for e in range(e0, e1):
            if e % RENORM_INTERVAL == 0 and self.semiring.renormalize:
                ring, offset = self.renormalize(ring, offset)
            previous = ring
            ring, alpha, u = self.step(ring, e, keep)
            if e in self.ends:
                result = self.collect(result, self.finish(previous, alpha, e, keep), offset, e)
            if record is not None:
                record(alpha, u, offset)
        return ring, offset, result

    def collect(self, result: torch.Tensor, here: torch.Tensor, offset: torch.Tensor, e: int) -> torch.Tensor:
        """`result` with the sequences of length `e` set to `here` (their
        :meth:`finish`), rescaled by `offset`."""
        return torch.where(self.lengths == e, self.rescale(here, offset), result)

    def _reduce(self, x: torch.Tensor, dim: int, name: str, e: int, keep: Keep | None) -> torch.Tensor:
        if keep is None:
            return self.semiring.sum(x, dim)
        value, index = self.semiring.argsum(x, dim)
        keep(name, e, index)
        return value

    # -- one position ---------------------------------------------------------
    def rows(self, e):
        """What the factorized step at `e` reads of the per-position tables:
        `(leave[e-1], enter[e])`, each `(P, B, C)` for an int or 0-d `e`, or
        `(P, B, n, C)` for `(n,)` positions (a block of steps gathers its
        rows at once; see :meth:`step`); `enter[e]` is None at `e == T` (an
        int), where no segment starts."""
        enter = None if isinstance(e, int) and e == self.T else _row(self.enter, e)
        return _row(self.leave, e - 1), enter

    def step(self, ring: torch.Tensor, e: int, keep: Keep | None = None, rows: tuple | None = None):
        """Advance from position `e-1` to `e` (1 <= e <= T).

        `rows` (factorized path): :meth:`rows` of `e`, when the caller has
        gathered them (the compiled blocks do: a step's gradient is then the
        rows' own, not a scatter into the whole `(P, B, T, C)` tables).

        Returns `(ring, alpha, u)`: the new ring, `alpha[e]` `(S, B, C)` and
        `u[e]` (None on the general path, and on the factorized one at e == T).
        """
        S = self.semiring
        if self.factorized:
            if rows is None and self.embedded:
                raise ValueError("an embedded program's steps take their rows embedded (see with_embedded)")
            leave, enter = self.rows(e) if rows is None else rows
            times = S.times if self.embedded else S.times_potential
            a = self._reduce(times(ring, self.duration), -2, "duration", e, keep)
            alpha = times(a, leave)
            if isinstance(e, int) and e == self.T:  # no segment starts at T (a tensor e computes a discarded u)
                return ring, alpha, None
            u = self._reduce(times(alpha.unsqueeze(-1), self.transition), -2, "transition", e, keep)
            v = times(u, enter)
            return torch.cat([v.unsqueeze(2), ring[:, :, :-1]], dim=2), alpha, u
        alpha = self._reduce(self._segments(ring, self.block(e)), -1, "segment", e, keep)
        row = alpha
        if self.sources > self.C:  # the virtual start label is zero after position 0
            row = torch.cat([alpha, S.zero((self.B, 1), dtype=alpha.dtype, device=self.device)], dim=-1)
        return torch.cat([row.unsqueeze(2), ring[:, :, :-1]], dim=2), alpha, None

    def _segments(self, ring: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """Every segment ending here after every source, `(S, B, C_dst, K *
        sources)` (duration slot major): `ring (S, B, K, sources)` times the
        `block (P, B, K, C_dst, sources)` of log-potentials."""
        x = self.semiring.times_potential(ring.unsqueeze(-2), block)  # (S, B, K, C_dst, sources)
        return x.transpose(-3, -2).flatten(-2)

    def block(self, e: int) -> torch.Tensor:
        """Log-potentials of the K segments ending at `e` (general path),
        slot j = duration j+1 starting at `e-1-j`: `(P, B, K, C_dst,
        sources)`; `-inf` for starts before 0."""
        if not self.explicit:
            return _stack([f.segments_ending_at(e) for f in self.prepared])
        j = torch.arange(self.K, device=self.device)
        s = e - 1 - j
        block = self.edge[:, :, s.clamp(0, self.T - 1), j + 1]
        return block.masked_fill(((s < 0) | (s >= self.T))[None, None, :, None, None], float("-inf"))

    def finish(self, previous: torch.Tensor, alpha: torch.Tensor, e: int, keep: Keep | None = None):
        """The result `(S, B)` for sequences ending at `e`: `alpha (x) end`
        summed over labels. On the general path the last segment's edge
        includes `end` (each segment embedded whole), recomputed from the ring
        `previous` (the ring before position e) at the few ends only."""
        S = self.semiring
        if self.explicit:
            closing = alpha
        elif self.factorized:
            closing = S.times_potential(alpha, self.end)
        else:
            block = self.block(e) + self.end[:, :, None, :, None]
            closing = S.sum(self._segments(previous, block), -1)
        return self._reduce(closing, -1, "final", e, keep)

    def renormalize(self, ring: torch.Tensor, offset: torch.Tensor):
        """Factor a per-sequence log-scale out of the ring (a semiring with
        `renormalize = True`; see :meth:`Semiring.log_mass`).

        Returns `(ring', offset + shift)` with `ring = times_potential(ring',
        shift)`, `shift (P, B)` float64. The shift is a constant for
        autograd: gradients stay exact.
        """
        S = self.semiring
        shift = S.log_mass(ring.detach()).amax(dim=(-1, -2))
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        return S.times_potential(ring, -shift[..., None, None].to(ring.dtype)), offset + shift.double()

    def extract(self, result: torch.Tensor) -> torch.Tensor:
        """The user-facing result, `semiring.extract(result)`, in the
        potentials' dtype when it is a floating value (other dtypes, such as
        bool or exact integer counts, are kept)."""
        out = self.semiring.extract(result)
        return out.to(self.dtype) if out.is_floating_point() else out

    def rescale(self, value: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """`value (S, B, ...)` times the accumulated float64 `offset (P, B)`,
        in float64; unchanged for a semiring that does not renormalize."""
        if not self.semiring.renormalize:
            return value
        extra = value.dim() - 2
        return self.semiring.times_potential(value.double(), offset.reshape(*offset.shape, *([1] * extra)))


def scan(potentials, semiring: Semiring, return_tables: bool = False):
    """Run the whole scan: `semiring.extract(result)` (`(B,)`, or `(k, B)`
    for KMax), and the :class:`ScanTables` (`O(S B T C)`) if asked."""
    program = ScanProgram(potentials, semiring)
    if return_tables:
        return run_with_tables(program)
    _, _, result = program.run(*program.initial_state(), 1, program.T + 1)
    return program.extract(result)


def run_with_tables(program: ScanProgram):
    """`(semiring.extract(result), ScanTables)` of a whole scan."""
    S, B, C = program.semiring, program.B, program.C
    factorized = program.factorized
    first = S.zero((B, C), dtype=program.dtype, device=program.device) if factorized else program.initial_row()
    alphas = [first[..., :C].double()]
    us = [program.initial_u().double()] if factorized else None

    def record(alpha, u, offset):
        alphas.append(program.rescale(alpha, offset).double())
        if us is not None:
            us.append(program.rescale(u, offset).double() if u is not None
                      else S.zero((B, C), dtype=torch.float64, device=program.device))

    _, _, result = program.run(*program.initial_state(), 1, program.T + 1, record)
    tables = ScanTables(torch.stack(alphas, dim=2), None if us is None else torch.stack(us, dim=2))
    return program.extract(result), tables
