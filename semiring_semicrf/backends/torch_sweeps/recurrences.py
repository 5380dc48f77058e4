"""The Log-semiring sweeps, one row at a time, without autograd.

All log-values here are in bits (base-2 logs, see :mod:`.sweeps`).

Each sweep walks the rows of :meth:`Factors.rows` (left to right for the inside,
right to left for the outside) holding a ring of the last K rows, and writes
per-row tables when asked. Every per-row value is stored *relative to a
running per-sequence log-scale* `R[r]` (float64, `(B,)`): after each row the
row's maximum over labels is moved into `R` and subtracted from the ring, so
that every stored value stays of the order of a few segments' scores at any
T (tables may then be kept in float32 without loss that accumulates), and
`alpha + abar - log Z` is formed as `alpha_hat + abar_hat + (R_in + R_out -
log Z)` with the large terms cancelling in float64.

Factorized transitions `(C, C)` (docs/algorithm.md). The inside sweep

    alpha[r, c] = leave_rows[r, c] + LSE_d (v[r-d, c] + duration[d-1, c])
    u[r, c]     = LSE_c' alpha[r, c'] + transition[c', c]       (u[0] = start)
    v[r, c]     = u[r, c] + enter_rows[r, c]

is also the outside sweep of the mirrored problem (rows walked backwards,
`enter_rows` and `leave_rows` swapped, the transition transposed, `end` in
the role of `start`, injected at row `lengths[b]`): its `alpha` is
`ubar[r]` (all suffixes from a segment starting at r), its `u` is `abar[r]`
(all suffixes after a segment ending at r). One loop serves both.

Duration-dependent transitions `(K, C, C)` (`[d-1, src, dst]`, d the
duration of the *entered* segment) do not factorize; per row, `O(K C^2)`:

    alpha[r, c] = leave_rows[r, c] + LSE_{d, c'} (alpha~[r-d, c'] + trans~[d-1, c', c]
                                                  + enter_rows[r-d, c] + duration[d-1, c])
    abar[r, c'] = LSE_{d, c} (trans[d-1, c', c] + enter_rows[r, c] + duration[d-1, c]
                              + abar[r+d, c] + leave_rows[r+d, c])      (abar[L] = end)

where `alpha~` appends the virtual start label of
:meth:`Factors.transition_with_start` (0 at row 0, `-inf` after it), so the
first segment needs no special case.

Rings (:class:`Ring`) are double-buffered windows of K rows in age order:
slot `j` holds the row `K - j` rows away (duration `K - j`), so they pair
with `duration.flip`; a push is one shifted subtract (the rebase) plus one
write.

Lanes. Every sum above goes through the sweeps' :mod:`.lanes` (`self.lanes`):
the plain Log sweeps carry p's log-values only; with several lanes (a
tangent for Hessian-vector products, a second model and an information lane
for entropy, cross-entropy and KL) every per-row tensor gets a lane axis just
before its batch axis (`(K, L, B, C)` rings, `(n, L, B, C)` tables), and the
same loops below run them all: only the lanes' sum, rebase and zero differ.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...factors import FactorRows
from .lanes import LOG, LOG2E, NEG_INF, StackedFactors

WORK_DTYPE = torch.float64


@dataclass
class SweepTables:
    """Per-row results of one sweep over rows `[r0, r0 + n)`, relative to `scale`.

    `alpha (n, B, C)`: inside alpha, or outside ubar (None where the sweep
    does not produce it); `u (n, B, C)`: inside u, or outside abar (None for
    the duration-dependent inside); `scale (n, B)` float64: the log-scale R
    (with lanes: `(n, L, B, C)` and `(n, L, B)`). Tables may carry extra rows
    past the block (the outside keeps the K rows after it there).
    """

    r0: int
    alpha: torch.Tensor | None
    u: torch.Tensor | None
    scale: torch.Tensor

    def rows(self, r0: int, r1: int) -> SweepTables:
        """Views of rows `[r0, r1)` (absolute row numbers)."""
        i0, i1 = r0 - self.r0, r1 - self.r0
        pick = lambda t: None if t is None else t[i0:i1]  # noqa: E731
        return SweepTables(r0, pick(self.alpha), pick(self.u), self.scale[i0:i1])

    def store(self, block: SweepTables) -> None:
        """Copy (and cast) a block's tables into these, at its rows."""
        view = self.rows(block.r0, block.r0 + block.scale.shape[0])
        for mine, theirs in ((view.alpha, block.alpha), (view.u, block.u), (view.scale, block.scale)):
            if mine is not None:
                assert theirs is not None  # both made by inside_tables with the same fields
                mine.copy_(theirs)


def new_tables(sweeps: _Sweeps, r0: int, n: int, alpha: bool, u: bool, extra_rows: int = 0,
               dtype: torch.dtype | None = None) -> SweepTables:
    shape = (n + extra_rows, *sweeps.lanes.lead, sweeps.B, sweeps.C)
    dtype = dtype or WORK_DTYPE
    make = lambda wanted: torch.empty(shape, dtype=dtype, device=sweeps.device) if wanted else None  # noqa: E731
    return SweepTables(r0, make(alpha), make(u), torch.empty(shape[:-1], dtype=torch.float64, device=sweeps.device))


class Ring:
    """A double-buffered window of the last K rows along `axis`, oldest first.

    :meth:`push` shifts it by one row (optionally subtracting a broadcastable
    per-sequence rebase on the way) and returns the newest slot to fill; the
    buffers' views are made once, so a push costs one op plus the write.
    """

    def __init__(self, window: torch.Tensor, axis: int = 0):
        self.axis = axis
        self._buffers = (window, torch.empty_like(window))
        self._views = tuple((b.narrow(axis, 1, b.shape[axis] - 1), b.narrow(axis, 0, b.shape[axis] - 1),
                             b.select(axis, -1)) for b in self._buffers)
        self._current = 0

    @property
    def window(self) -> torch.Tensor:
        return self._buffers[self._current]

    def push(self, rebase: torch.Tensor | None = None) -> torch.Tensor:
        older, _, _ = self._views[self._current]
        self._current ^= 1
        _, kept, newest = self._views[self._current]
        if rebase is None:
            kept.copy_(older)
        else:
            torch.sub(older, rebase, out=kept)
        return newest

    def clone(self) -> Ring:
        return Ring(self.window.clone(), self.axis)


@dataclass
class RingState:
    """A sweep's state between rows: its ring(s), the log-scale `R (B,)`
    (float64, bits) and, for the inside, the log partition found so far
    (with lanes: `(L, B)`, each lane's result)."""

    rings: tuple
    scale: torch.Tensor
    log_z: torch.Tensor

    def clone(self) -> RingState:
        return RingState(tuple(r.clone() for r in self.rings), self.scale.clone(), self.log_z.clone())


class _Sweeps:
    """What both recurrences share: buffers, the rebase, injections, log Z.

    A subclass names the tables its sweeps fill (`INSIDE_TABLES`,
    `OUTSIDE_TABLES`) and defines `initial_inside/outside`, `inside`,
    `outside`, `segment_terms` and `combine_chunk`.
    """

    INSIDE_TABLES: tuple = ()
    OUTSIDE_TABLES: tuple = ()

    def __init__(self, factors):
        self.lanes = factors.lanes if isinstance(factors, StackedFactors) else LOG
        f = self.factors = factors.to(WORK_DTYPE)
        self.K, self.B, self.C, self.T = f.K, f.B, f.C, f.T
        self.lengths, self.device = f.lengths, f.device
        self.duration = f.duration * LOG2E  # (B, K, C)
        self.start, self.end = f.start * LOG2E, f.end * LOG2E
        self.durf = self.duration.flip(-2).movedim(-2, 0).contiguous()  # (K, B, C): slot j <-> d = K - j
        self.length_rows = frozenset(f.lengths.tolist())
        # plain sweeps keep their tables in the potentials' dtype; lanes keep float64
        self.table_dtype = factors.dtype if self.lanes.plain else WORK_DTYPE

    def rows(self, r0: int, r1: int, cum_r0: torch.Tensor) -> tuple[FactorRows, torch.Tensor]:
        """:meth:`Factors.rows` in bits (the running prefix sum stays in nats)."""
        rows, cum = self.factors.rows(r0, r1, cum_r0)
        rows.enter.mul_(LOG2E)
        rows.leave.mul_(LOG2E)
        return rows, cum

    def empty(self, *shape) -> torch.Tensor:
        return torch.empty(shape, dtype=WORK_DTYPE, device=self.device)

    def lane_empty(self, *shape_from_batch, before: tuple = ()) -> torch.Tensor:
        """`empty(*before, *lanes, *shape_from_batch)`: a buffer with the lane
        axis (if any) just before the batch axis."""
        return self.empty(*before, *self.lanes.lead, *shape_from_batch)

    def inside_tables(self, r0: int, n: int, dtype: torch.dtype | None = None) -> SweepTables:
        """Empty tables for the inside sweep over rows `[r0, r0 + n)`."""
        names = self.INSIDE_TABLES
        return new_tables(self, r0, n, "alpha" in names, "u" in names, dtype=dtype)

    def outside_tables(self, r0: int, n: int) -> SweepTables:
        """Empty tables for the outside sweep over rows `[r0, r0 + n)`, plus
        K rows after them (filled by the caller with the next block's head)."""
        names = self.OUTSIDE_TABLES
        return new_tables(self, r0, n, "alpha" in names, "u" in names, extra_rows=self.K)

    def _state(self, *rings: tuple) -> RingState:
        """Rings of `zero` from `(before, from_batch, axis)`: their shape is
        `(*before, *lanes, *from_batch)` and they move along `axis`."""
        made = []
        for before, from_batch, axis in rings:
            window = self.lane_empty(*from_batch, before=before)
            made.append(Ring(self.lanes.zero_(window, lane_axis=len(before)), axis))
        lead = (*self.lanes.lead, self.B)
        return RingState(tuple(made), torch.zeros(lead, dtype=torch.float64, device=self.device),
                         torch.full(lead, NEG_INF, dtype=torch.float64, device=self.device))

    def _rows_out(self, tables: SweepTables | None, name: str, n: int) -> tuple:
        """Row views of `tables.<name>`, or one scratch row reused n times."""
        table = getattr(tables, name) if tables is not None else None
        return table.unbind(0) if table is not None else (self.lane_empty(self.B, self.C),) * n

    def _shifts(self, n: int) -> torch.Tensor:
        """A block's per-row rebases `(n, B, 1)`, summed into the scale after it
        (zeros: lanes that are not rebased keep them)."""
        return torch.zeros((n, *self.lanes.lead, self.B, 1), dtype=WORK_DTYPE, device=self.device)

    @staticmethod
    def _advance_scale(state: RingState, shifts: torch.Tensor, tables: SweepTables | None, reverse: bool) -> None:
        """`R` after each row of a block from its rebases (in sweep order)."""
        steps = shifts[..., 0].to(torch.float64)
        if reverse:
            scale = state.scale + steps.flip(0).cumsum(0).flip(0)
            last = scale[0] if len(scale) else state.scale
        else:
            scale = state.scale + steps.cumsum(0)
            last = scale[-1] if len(scale) else state.scale
        if tables is not None:
            tables.scale[:len(scale)].copy_(scale)
        state.scale = last

    def _record_log_z(self, state: RingState, r: int, alpha_hat: torch.Tensor, shifts_so_far: torch.Tensor) -> None:
        """At a row where some sequences end, their log Z (bits) from alpha[r] + end."""
        scale = state.scale + shifts_so_far[..., 0].to(torch.float64).sum(0)
        z = self.lanes.total(alpha_hat + self.end) + scale
        state.log_z = torch.where(self.lengths == r, z, state.log_z)

    def _inject(self, row: torch.Tensor, r: int, value: torch.Tensor) -> None:
        """Set `row[b] = value` for the sequences with `lengths[b] == r`."""
        row.copy_(torch.where((self.lengths == r)[:, None], value, row))


class FactorizedSweeps(_Sweeps):
    """Inside and outside sweeps for `(C, C)` transitions (one loop, mirrored)."""

    INSIDE_TABLES = ("alpha", "u")  # alpha, u
    OUTSIDE_TABLES = ("alpha", "u")  # ubar, abar

    def __init__(self, factors):
        super().__init__(factors)
        K, B, C = self.K, self.B, self.C
        transition = self.factors.transition * LOG2E
        self.transition = transition.contiguous()
        self.transition_t = transition.transpose(-1, -2).contiguous()
        self._x, self._peak_k = self.lane_empty(B, C, before=(K,)), self.empty(1, B, C)
        self._y, self._peak_c = self.lane_empty(B, C, C), self.empty(B, 1, C)

    def initial_inside(self) -> RingState:
        """Ring: `v` rows `(K, B, C)`."""
        return self._state(((self.K,), (self.B, self.C), 0))

    def initial_outside(self) -> RingState:
        """Ring: `abar + leave_rows` rows `(K, B, C)` (the mirrored `v`)."""
        return self._state(((self.K,), (self.B, self.C), 0))

    def inside(self, state: RingState, rows: FactorRows, tables: SweepTables | None = None) -> RingState:
        """Rows `rows.r0 ..` left to right; `tables.alpha/u` get alpha and u."""
        return self._run(state, rows, tables, reverse=False)

    def outside(self, state: RingState, rows: FactorRows, tables: SweepTables | None = None) -> RingState:
        """Rows right to left; `tables.alpha` gets ubar, `tables.u` gets abar."""
        return self._run(state, rows, tables, reverse=True)

    def _run(self, state: RingState, rows: FactorRows, tables: SweepTables | None, reverse: bool) -> RingState:
        n = rows.n
        if reverse:
            close, open_, first, first_rows = rows.enter, rows.leave, self.end, self.length_rows
            trans = self.transition_t
            order = range(n - 1, -1, -1)
        else:
            close, open_, first, first_rows = rows.leave, rows.enter, self.start, frozenset([0])
            trans = self.transition
            order = range(n)
        closes, opens = close.unbind(0), open_.unbind(0)
        alphas, us = self._rows_out(tables, "alpha", n), self._rows_out(tables, "u", n)
        shifts = self._shifts(n)
        shift_rows = shifts.unbind(0)
        x, peak_k, y, peak_c, durf = self._x, self._peak_k, self._y, self._peak_c, self.durf
        lanes = self.lanes
        (ring,) = state.rings
        for i in order:
            r = rows.r0 + i
            alpha, u, shift = alphas[i], us[i], shift_rows[i]
            torch.add(ring.window, durf, out=x)
            lanes.sum_into(x, 0, peak_k, alpha, lane_axis=1).add_(closes[i])
            lanes.rebase_(alpha, shift)
            if not reverse and r in self.length_rows:
                self._record_log_z(state, r, alpha, shifts[:i + 1])
            torch.add(alpha.unsqueeze(-1), trans, out=y)
            lanes.sum_into(y, -2, peak_c, u)
            if r in first_rows:
                if reverse:
                    self._inject(u, r, first)
                else:
                    u.copy_(first)
            torch.add(u, opens[i], out=ring.push(shift))
        self._advance_scale(state, shifts, tables, reverse)
        return state

    def segment_terms(self, ins: SweepTables, outs: SweepTables, rows: FactorRows, i0: int, i1: int,
                      later: torch.Tensor, offset: torch.Tensor, acc) -> torch.Tensor:
        """Accumulate the posterior of segments starting at rows `[i0, i1)` of
        the block, and of transitions at those rows; return the per-segment
        probabilities `(m, B, K, C)` `[s, b, d-1, c]`.

        `later (m, B, K, C)`: `abar + leave_rows` at row `s + d`, relative to
        its own scale; `offset (m, B, K)`: `R_in[s] + R_out[s+d] - log Z`.
        """
        assert ins.alpha is not None and ins.u is not None and outs.alpha is not None  # INSIDE_/OUTSIDE_TABLES
        probabilities_ = self.lanes.probabilities_
        v = ins.u[i0:i1] + rows.enter[i0:i1]  # (m, B, C)
        seg = later + offset[..., None]
        seg += self.duration
        seg += v.unsqueeze(-2)
        probabilities_(seg, lane_axis=1)
        acc.duration += seg.sum(0)
        row_offset = (ins.scale[i0:i1] + outs.scale[i0:i1] - acc.log_z_safe).to(seg.dtype)  # (m, B)
        pair = ins.alpha[i0:i1].unsqueeze(-1) + self.transition
        pair += outs.alpha[i0:i1].unsqueeze(-2)
        pair += row_offset[..., None, None]
        acc.transition += probabilities_(pair, lane_axis=1).sum(0)
        acc.write_starts(rows.r0 + i0, probabilities_(ins.u[i0:i1] + outs.alpha[i0:i1] + row_offset[..., None],
                                                      lane_axis=1))
        return seg

    def combine_chunk(self) -> int:
        """How many rows' `(B, K, C)` and `(B, C, C)` terms one chunk may hold."""
        return max(self.K, self.C)


class DurationSweeps(_Sweeps):
    """Inside and outside sweeps for duration-dependent `(K, C, C)` transitions.

    Per row, one `(B, C, K, C')` block of terms is reduced over its last two
    dims (duration slot and the summed-over label), which keeps the
    reductions contiguous; rings are laid out `(B, K, .)` to match.
    """

    INSIDE_TABLES = ("alpha",)
    OUTSIDE_TABLES = ("u",)  # abar

    def __init__(self, factors):
        super().__init__(factors)
        K, B, C = self.K, self.B, self.C
        # (K, C+1, C) [d-1, src, dst], the virtual start label last
        self.transition_ext = (self.factors.transition_with_start * LOG2E).contiguous()
        trans = self.transition_ext[..., :C, :]
        # [dst, slot j, src~] and [src, slot j, dst], slot j <-> d = K - j
        self._trans_in = self.transition_ext.flip(-3).movedim(-1, -3).contiguous()
        self._trans_out = trans.flip(-3).movedim(-2, -3).contiguous()
        self._durf_ckj = self.durf.movedim(0, -1).contiguous()  # (B, C, K)
        self._durf_kc = self.durf.movedim(0, -2).contiguous()  # (B, K, C)
        self._per_slot_in, self._per_slot_out = self.lane_empty(B, C, K), self.lane_empty(B, K, C)
        self._x_in, self._x_out = self.lane_empty(B, C, K, C + 1), self.lane_empty(B, C, K, C)
        self._peak = self.empty(B, C, 1, 1)

    def initial_inside(self) -> RingState:
        """Rings: alpha~ rows `(B, K, C+1)` and their enter rows `(B, C, K)`."""
        return self._state(((), (self.B, self.K, self.C + 1), -2), ((), (self.B, self.C, self.K), -1))

    def initial_outside(self) -> RingState:
        """Ring: `abar + leave_rows` rows `(B, K, C)`."""
        return self._state(((), (self.B, self.K, self.C), -2))

    def inside(self, state: RingState, rows: FactorRows, tables: SweepTables | None = None) -> RingState:
        """Rows left to right; `tables.alpha` gets alpha."""
        C, n, x, peak, per_slot = self.C, rows.n, self._x_in, self._peak, self._per_slot_in
        alphas, leaves, enters_in = self._rows_out(tables, "alpha", n), rows.leave.unbind(0), rows.enter.unbind(0)
        shifts = self._shifts(n)
        shift_rows = shifts.unbind(0)
        lanes = self.lanes
        ring, enters = state.rings
        for i in range(n):
            r = rows.r0 + i
            alpha, shift = alphas[i], shift_rows[i]
            torch.add(enters.window, self._durf_ckj, out=per_slot)
            torch.add(ring.window.unsqueeze(-3), self._trans_in, out=x)
            x += per_slot.unsqueeze(-1)
            lanes.sum_into(x, (-2, -1), peak, alpha).add_(leaves[i])
            lanes.rebase_(alpha, shift)
            if r in self.length_rows:
                self._record_log_z(state, r, alpha, shifts[:i + 1])
            newest = ring.push(shift.unsqueeze(-1))
            newest[..., :C].copy_(alpha)
            lanes.virtual_(newest[..., C], r == 0)
            enters.push().copy_(enters_in[i])
        self._advance_scale(state, shifts, tables, reverse=False)
        return state

    def outside(self, state: RingState, rows: FactorRows, tables: SweepTables | None = None) -> RingState:
        """Rows right to left; `tables.u` gets abar."""
        n = rows.n
        x, peak, per_slot = self._x_out, self._peak, self._per_slot_out
        abars, enters, leaves = self._rows_out(tables, "u", n), rows.enter.unbind(0), rows.leave.unbind(0)
        shifts = self._shifts(n)
        shift_rows = shifts.unbind(0)
        lanes = self.lanes
        (ring,) = state.rings
        for i in range(n - 1, -1, -1):
            r = rows.r0 + i
            abar, shift = abars[i], shift_rows[i]
            torch.add(ring.window, self._durf_kc, out=per_slot)
            per_slot += enters[i].unsqueeze(-2)
            torch.add(per_slot.unsqueeze(-3), self._trans_out, out=x)
            lanes.sum_into(x, (-2, -1), peak, abar)
            if r in self.length_rows:
                self._inject(abar, r, self.end)
            lanes.rebase_(abar, shift)
            torch.add(abar, leaves[i], out=ring.push(shift.unsqueeze(-1)))
        self._advance_scale(state, shifts, tables, reverse=True)
        return state

    def segment_terms(self, ins: SweepTables, outs: SweepTables, rows: FactorRows, i0: int, i1: int,
                      later: torch.Tensor, offset: torch.Tensor, acc) -> torch.Tensor:
        """As :meth:`FactorizedSweeps.segment_terms`, summing over the source
        label (and the virtual start label) of the `(m, B, K, C+1, C)` terms."""
        assert ins.alpha is not None  # INSIDE_TABLES
        C = self.C
        virtual = self.lanes.zero_(torch.empty_like(ins.alpha[i0:i1, ..., :1]), lane_axis=1)
        if rows.r0 + i0 == 0:
            virtual[0] = 0.0
        source = torch.cat([ins.alpha[i0:i1], virtual], dim=-1)  # (m, B, C+1)
        entered = later + offset[..., None]
        entered += self.duration
        entered += rows.enter[i0:i1].unsqueeze(-2)  # (m, B, K, C)
        terms = source[..., None, :, None] + self.transition_ext
        terms += entered.unsqueeze(-2)
        self.lanes.probabilities_(terms, lane_axis=1)  # (m, B, K, C+1, C)
        acc.transition += terms[..., :C, :].sum(0)
        seg = terms.sum(-2)
        acc.duration += seg.sum(0)
        acc.write_starts(rows.r0 + i0, seg.sum(-2))
        return seg

    def combine_chunk(self) -> int:
        return self.K * (self.C + 1)
