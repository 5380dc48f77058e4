"""The generic streaming semi-Markov scan, written once against `Semiring`.

Factorized recurrence (DESIGN.md section 2), for structured potentials with a
`(C, C)` transition, in any semiring:

    alpha[e, c] = (+)_{d=1..min(K,e)} u[e-d, c] (x) w(e-d, d, c)
    u[e, c]     = (+)_{c'} alpha[e, c'] (x) transition[c', c]       (u[0] = start)
    result      = (+)_c alpha[L, c] (x) end[c]

`O(K C + C^2)` work per position. With `w = enter[s] + duration[d-1] +
leave[s+d-1]` (see :class:`~semiring_semicrf.potentials.LogFactors`) the ring
buffer holds `v[s] = u[s] (x) enter[s]` for the last K starts, in age order
(slot j holds the start `e-1-j`, so it pairs with duration j+1), and
`alpha[e] = (+)_j v[slot j] (x) duration[j]  (x) leave[e-1]`.

General recurrence (explicit edges, or `(K, C, C)` transitions):

    alpha[e, c] = (+)_{d, c'} alpha[e-d, c'] (x) edge(e-d, d, c, c')

`O(K C^2)` per position, the ring holding the last K rows of alpha.

Working memory is `O(S B K C)` whatever T is (S = the semiring's state size);
`return_tables=True` additionally keeps the `O(S B T C)` tables of alpha (and
u) that sampling and decoding walk back through.

Numerics: every `RENORM_INTERVAL` positions the ring is renormalized: a
per-sequence log-scale (see :meth:`Semiring.log_mass`) is factored out and
carried in float64, so a float32 scan keeps O(1) state values at any T and the
result is exact up to float32 rounding of O(1) numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .potentials import EdgePotentials, SemiMarkovPotentials, require_potentials
from .semirings import LogSemiring, Semiring

AnyPotentials = Union[SemiMarkovPotentials, EdgePotentials]

#: Positions between two renormalizations of the ring buffer.
RENORM_INTERVAL = 16


@dataclass
class ScanTables:
    """Inside tables, semiring values with the state dim first, in float64
    (true values, renormalization undone, so long sequences keep precision).

    `alpha (S, B, T+1, C)`: all prefixes whose last segment ends at `e` with
    label `c` (`alpha[:, :, 0]` is the initial state). `u (S, B, T+1, C)`: all
    prefixes followed by a segment starting at `s` with label `c` (start
    and transition included; factorized path only, else None).
    """

    alpha: torch.Tensor
    u: Optional[torch.Tensor]


def stack_potentials(potentials, semiring: Semiring) -> tuple:
    """Normalize `potentials` to a tuple of `semiring.num_potentials` objects
    of one kind, one shape and one set of lengths."""
    if not isinstance(semiring, Semiring):
        raise TypeError(f"semiring must be a Semiring instance (e.g. LogSemiring()), got {semiring!r}")
    pots = tuple(potentials) if isinstance(potentials, (tuple, list)) else (potentials,)
    if len(pots) != semiring.num_potentials:
        raise ValueError(
            f"{semiring!r} takes {semiring.num_potentials} set(s) of potentials "
            f"(for example (p, q)), got {len(pots)}")
    for p in pots:
        require_potentials(p)
    first = pots[0]
    for i, p in enumerate(pots[1:], start=1):
        same = (type(p) is type(first) and (p.batch_size, p.T, p.K, p.C) == (first.batch_size, first.T, first.K, first.C)
                and p.dtype == first.dtype and p.device == first.device
                and p.duration_dependent == first.duration_dependent)
        if not same:
            raise ValueError(f"potentials[{i}] differs from potentials[0] in kind, shape, dtype or device")
        if not torch.equal(p.lengths, first.lengths):
            raise ValueError(f"potentials[{i}] has other lengths than potentials[0]")
    return pots


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack potential sets on a new dim 0 (a view when there is only one)."""
    tensors = list(tensors)
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors, dim=0)


class ScanProgram:
    """The recurrence for one semiring and one (stack of) potentials, as an
    initial ring buffer and a step function, so that callers can run it whole
    (:func:`semimarkov_scan`) or block by block (checkpointed backward)."""

    def __init__(self, potentials, semiring: Semiring):
        pots = stack_potentials(potentials, semiring)
        self.semiring = semiring
        first = pots[0]
        self.B, self.T, self.K, self.C = first.batch_size, first.T, first.K, first.C
        self.dtype, self.device = first.dtype, first.device
        self.lengths = first.lengths
        self.ends = frozenset(self.lengths.tolist())
        self.factorized = not first.duration_dependent
        self.explicit = first.is_explicit
        S = semiring
        if self.explicit:
            self.edge = _stack([p.edge for p in pots])  # (P, B, T, K+1, C, C)
            return
        factors = [p.log_factors() for p in pots]
        self.enter = _stack([f.enter for f in factors])  # (P, B, T, C)
        self.leave = _stack([f.leave for f in factors])  # (P, B, T, C)
        self.start = _stack([f.start for f in factors])  # (P, C)
        self.end = _stack([f.end for f in factors])  # (P, C)
        duration = _stack([f.duration for f in factors])  # (P, B, K, C)
        transition = _stack([f.transition for f in factors])  # (P, C, C) or (P, K, C, C)
        if self.factorized:
            self.duration_value = S.embed(duration)  # (S, B, K, C)
            self.transition_value = S.embed(transition[:, None])  # (S, 1, C, C)
        else:
            self.duration = duration
            # (P, K, C_dst, C_src); the first segment comes from c_src = 0 with start.
            self.transition_t = transition.transpose(-1, -2)
            first_block = torch.full((self.C, self.C), float("-inf"), dtype=self.dtype, device=self.device)
            first_block[:, 0] = 0.0
            self.first_block = first_block + self.start[:, :, None]  # (P, C_dst, C_src)

    # -- initial state --------------------------------------------------------
    def initial_ring(self) -> torch.Tensor:
        """Ring buffer before position 1, `(S, B, K, C)`, slot 0 = position 0."""
        S, B, K, C = self.semiring, self.B, self.K, self.C
        ring = S.zero((B, K, C), dtype=self.dtype, device=self.device)
        return torch.cat([self.initial_alpha_or_v().unsqueeze(2), ring[:, :, 1:]], dim=2)

    def initial_alpha_or_v(self) -> torch.Tensor:
        """Slot 0 of the initial ring `(S, B, C)`: `v[0] = start (x) enter[0]`
        (factorized), or the initial alpha row (general)."""
        S, B, C = self.semiring, self.B, self.C
        if self.explicit:
            return S.one((B, C), dtype=self.dtype, device=self.device)
        if self.factorized:
            return S.embed(self.start[:, None, :] + self.enter[:, :, 0])
        pinned = torch.full((C,), float("-inf"), dtype=self.dtype, device=self.device)
        pinned[0] = 0.0
        P = self.start.shape[0]
        return S.embed(pinned.expand(P, B, C))

    def initial_u(self) -> torch.Tensor:
        """`u[0] = start`, `(S, B, C)` (factorized path)."""
        return self.semiring.embed(self.start[:, None, :].expand(-1, self.B, -1))

    # -- the loop -------------------------------------------------------------
    def initial_state(self):
        """`(ring, offset, result)` before position 1: the initial ring, a zero
        float64 log-scale `(P, B)` and a float64 zero result `(S, B)`."""
        S = self.semiring
        offset = torch.zeros(S.num_potentials, self.B, dtype=torch.float64, device=self.device)
        return self.initial_ring(), offset, S.zero((self.B,), dtype=torch.float64, device=self.device)

    def run(self, ring, offset, result, e0: int, e1: int, record=None):
        """Positions `e0 .. e1-1` of the scan: renormalize every
        `RENORM_INTERVAL` positions (into the float64 `offset`), step, and
        collect the (float64, rescaled) result of the sequences ending there.
        `record(alpha, u, offset)`, if given, sees every position's values.
        Returns the new `(ring, offset, result)`: blocks can be chained, or
        recomputed from a saved state (checkpointing)."""
        for e in range(e0, e1):
            if e % RENORM_INTERVAL == 0:
                ring, shift = self.renormalize(ring)
                offset = offset + shift
            ring, alpha, u = self.step(ring, e)
            if e in self.ends:
                result = torch.where(self.lengths == e, self.rescale(self.finish(alpha), offset), result)
            if record is not None:
                record(alpha, u, offset)
        return ring, offset, result

    # -- one position ---------------------------------------------------------
    def step(self, ring: torch.Tensor, e: int):
        """Advance from position `e-1` to `e` (1 <= e <= T).

        Returns `(ring, alpha, u)`: the new ring, `alpha[e]` and `u[e]` (u is
        None on the general path, and on the factorized path at e == T).
        """
        S = self.semiring
        if self.factorized:
            a = S.sum(S.times(ring, self.duration_value), dim=-2)  # (S, B, C)
            alpha = S.times_potential(a, self.leave[:, :, e - 1])
            if e == self.T:
                return ring, alpha, None
            u = S.matmul(alpha, self.transition_value)
            v = S.times_potential(u, self.enter[:, :, e])
            return torch.cat([v.unsqueeze(2), ring[:, :, :-1]], dim=2), alpha, u
        block = self.edge_block(e)  # (P, B, K, C_dst, C_src) log-potentials
        x = S.times(ring.unsqueeze(-2), S.embed(block))  # (S, B, K, C_dst, C_src)
        alpha = S.sum(S.sum(x, dim=-1), dim=-2)
        return torch.cat([alpha.unsqueeze(2), ring[:, :, :-1]], dim=2), alpha, None

    def edge_block(self, e: int) -> torch.Tensor:
        """Log-potentials of the K segments ending at `e`, slot j = duration
        j+1 starting at `e-1-j`: `(P, B, K, C_dst, C_src)`; slots with a
        negative start are clamped (the ring is zero there)."""
        K = self.K
        j = torch.arange(K, device=self.device)
        s = (e - 1 - j).clamp(min=0)
        if self.explicit:
            return self.edge[:, :, s, j + 1]
        w = self.enter[:, :, s] + self.duration + self.leave[:, :, e - 1, None]  # (P, B, K, C)
        trans = self.transition_t.expand(self.start.shape[0], K, self.C, self.C)
        is_first = (s == 0)[None, :, None, None]
        trans = torch.where(is_first, self.first_block[:, None], trans)  # (P, K, C, C)
        return w[..., None] + trans[:, None]

    def renormalize(self, ring: torch.Tensor):
        """Factor a per-sequence log-scale out of the ring.

        Returns `(ring', shift)` with `ring = times_potential(ring', shift)`;
        `shift (P, B)` float64 (zeros if the semiring has no `log_mass`).
        The shift is a constant for autograd: gradients stay exact.
        """
        S = self.semiring
        mass = S.log_mass(ring.detach())
        if mass is None:
            return ring, torch.zeros(S.num_potentials, self.B, dtype=torch.float64, device=self.device)
        shift = mass.amax(dim=(-1, -2))
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        return S.times_potential(ring, -shift[..., None, None]), shift.double()

    def rescale(self, value: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """`value (S, B, ...)` times the accumulated float64 `offset (P, B)`, in float64.

        A semiring without `log_mass` never renormalizes: its value is returned
        as is (its `embed(0)` need not be `one` on the explicit-edge path)."""
        if self.semiring.log_mass(value[:, :0]) is None:
            return value.double()
        extra = value.dim() - 2
        return self.semiring.times_potential(value.double(), offset.reshape(*offset.shape, *([1] * extra)))

    def finish(self, alpha: torch.Tensor) -> torch.Tensor:
        """The result for sequences ending here, `(S, B)`."""
        S = self.semiring
        if self.explicit:
            return S.sum(alpha, dim=-1)
        return S.sum(S.times_potential(alpha, self.end[:, None, :]), dim=-1)


def semimarkov_scan(potentials, semiring: Semiring = LogSemiring(), *, return_tables: bool = False):
    """Run the streaming scan and return the semiring's result per sequence.

    Args:
        potentials: a :class:`SemiMarkovPotentials` or :class:`EdgePotentials`
            (or a tuple of `semiring.num_potentials` of them, e.g. `(p, q)`
            for cross-entropy and KL).
        semiring: any :class:`Semiring`.
        return_tables: also return the :class:`ScanTables` (`O(S B T C)`).

    Returns:
        `semiring.extract(result)`: `(B,)` for scalar semirings (log Z, the
        best score, the entropy, ...), `(k, B)` for KMax; and the tables if
        asked.
    """
    program = ScanProgram(potentials, semiring)
    S, B, C = semiring, program.B, program.C
    alphas, us = [], []
    record = None
    if return_tables:
        first = program.initial_alpha_or_v() if not program.factorized else S.zero((B, C), dtype=program.dtype,
                                                                                     device=program.device)
        alphas.append(first.double())
        us.append(program.initial_u().double() if program.factorized else None)

        def record(alpha, u, offset):
            alphas.append(program.rescale(alpha, offset))
            if program.factorized:
                us.append(program.rescale(u, offset) if u is not None else S.zero((B, C), device=program.device))

    _, _, result = program.run(*program.initial_state(), 1, program.T + 1, record)
    out = S.extract(result).to(program.dtype)
    if not return_tables:
        return out
    tables = ScanTables(torch.stack(alphas, dim=2), torch.stack(us, dim=2) if program.factorized else None)
    return out, tables
