"""Lanes: what the Log sweeps carry per (row, label), and the sum that
combines them. All log-values are in bits (see :mod:`.sweeps`).

The plain sweeps carry one value, p's log-sum (:data:`LOG`). The same
recurrences (:mod:`.recurrences`, written once) also run on several values
per (row, label), stacked on a *lane* axis just before the batch axis of
every per-row tensor (`(K, L, B, C)` rings, `(n, L, B, C)` tables, `(L, B, C)`
rows). Lane 0 is always p's log-value; :class:`Lanes` names the others:

- `"q"`: a second model's log-value (its own log-sum-exp);
- `"tangent"`: the directional derivative of p's log-value along a tangent
  of the potentials, a dual number: a log-sum-exp's tangent is the
  softmax-weighted sum of the tangents, `sum_j P_j x'_j`;
- `"entropy"`, `"cross_entropy"`, `"kl"`: an information lane.

Every sum a sweep takes is a choice of p's *backward chain* (docs/algorithm.md):
the duration (and, with `(K, C, C)` transitions, the previous label) of the
segment that ends at a row with a label, or the label before a segment that
starts at a row; `P_j = softmax(p)_j` is the probability of choice `j` given
that state. An information lane holds, per state, the expected surprisal of
everything to its left, `sum_j P_j (h_j + s_j)` with the local surprisal

    entropy:        s_j = -log2 P_j
    cross_entropy:  s_j = -log2 Q_j          (Q = softmax(q), q's chain)
    kl:             s_j = log2 P_j - log2 Q_j

so that at the end it is H(p), H(p, q) or KL(p || q) as a sum of
non-negative local terms (each state's own entropy or KL is >= 0): no term
is of the size of log Z, and the float64 sum keeps the digits of a small
entropy at any T. Conventions: a choice with `P_j = 0` adds nothing (even
where `s_j` is infinite); a choice that `q` forbids (`Q_j = 0`, including a
state q cannot reach) with `P_j > 0` makes the lane `+inf`; a state p cannot
reach holds 0.

Value lanes ("p", "q") are rebased by the sweeps (their per-row maximum moves
into a float64 scale); tangent and information lanes are not (the sweeps
work in float64, where their values keep 15 digits at any T).
"""
from __future__ import annotations

import math

import torch

from ...factors import FactorRows

LOG2E = 1.0 / math.log(2.0)  # nats -> bits
LN2 = math.log(2.0)  # bits -> nats
NEG_INF = float("-inf")
INF = float("inf")

#: The information lanes, by the name of the quantity they compute.
INFORMATION = ("entropy", "cross_entropy", "kl")


def logsumexp_into(x: torch.Tensor, dims, peak: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out = log2(sum(exp2(x), dims))` (bits), `-inf` (not NaN) where all of
    `x` is `-inf`. Overwrites `x` and `peak` (`x.amax(dims, keepdim=True)`'s shape)."""
    torch.amax(x, dims, keepdim=True, out=peak)
    peak.nan_to_num_(neginf=0.0)
    x.sub_(peak).exp2_()
    torch.sum(x, dims, out=out)
    return out.log2_().add_(peak.view(out.shape))


def rebase_(row: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move the per-sequence maximum of `row` `(B, C)` into `shift` `(B, 1)`
    (0 where the row is all `-inf`) and subtract it from `row`."""
    torch.amax(row, -1, keepdim=True, out=shift)
    shift.nan_to_num_(neginf=0.0)
    return row.sub_(shift)


def log2sumexp2(x: torch.Tensor, dims) -> torch.Tensor:
    """`log2(sum(exp2(x), dims))` kept as size-1 dims, `-inf` where all is `-inf`."""
    peak = x.amax(dims, keepdim=True).nan_to_num_(neginf=0.0)
    return (x - peak).exp2_().sum(dims, keepdim=True).log2_().add_(peak)


class LogLanes:
    """One lane, p's log-values, and no lane axis: the plain Log sweeps."""

    kinds = ("p",)
    lead: tuple = ()
    values = 1
    plain = True

    def sum_into(self, x, dims, peak, out, lane_axis: int = 0):
        return logsumexp_into(x, dims, peak, out)

    def rebase_(self, row, shift):
        return rebase_(row, shift)

    def total(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over the last dim (labels) of a row, a new float64 tensor."""
        return torch.logsumexp(x.to(torch.float64) * LN2, dim=-1) * LOG2E

    def zero_(self, t: torch.Tensor, lane_axis: int = 0) -> torch.Tensor:
        return t.fill_(NEG_INF)

    def virtual_(self, t: torch.Tensor, first: bool) -> torch.Tensor:
        """The virtual start label's value: `one` at row 0, `zero` after it."""
        return t.fill_(0.0 if first else NEG_INF)

    def probabilities_(self, x: torch.Tensor, lane_axis: int = 0) -> torch.Tensor:
        """Log-probabilities (bits) to probabilities, in place."""
        return x.exp2_()

    def split(self, t: torch.Tensor, lane_axis: int = 0) -> tuple:
        return (t,)


#: The plain Log sweeps.
LOG = LogLanes()


class Lanes(LogLanes):
    """Lane 0 is p's log-value; `kinds` names every lane (see module
    docstring): `("p", "tangent")`, `("p", "entropy")`,
    `("p", "q", "cross_entropy")` or `("p", "q", "kl")`."""

    plain = False

    def __init__(self, kinds: tuple):
        kinds = tuple(kinds)
        allowed = {("p", "tangent"), ("p", "entropy"), ("p", "q", "cross_entropy"), ("p", "q", "kl")}
        if kinds not in allowed:
            raise ValueError(f"lanes must be one of {sorted(allowed)}, got {kinds}")
        self.kinds = kinds
        self.lead = (len(kinds),)
        self.values = 2 if "q" in kinds else 1
        self.extra = kinds[-1]

    def __repr__(self) -> str:
        return f"Lanes{self.kinds}"

    def sum_into(self, x, dims, peak, out, lane_axis: int = 0):
        """The lanes' sum over `dims` (of the lane-selected tensor) into
        `out` (lane axis first); `x`'s lane axis is `lane_axis`. Overwrites
        `x`'s first lane and `peak` (the keep-dim shape of one lane)."""
        lanes, outs = x.unbind(lane_axis), out.unbind(0)
        shape = outs[0].shape
        log_weight = lanes[0]
        torch.amax(log_weight, dims, keepdim=True, out=peak)
        peak.nan_to_num_(neginf=0.0)
        log_weight.sub_(peak)
        weight = log_weight.exp2()
        total = weight.sum(dims)
        log_total = total.log2()
        torch.add(log_total, peak.view(shape), out=outs[0])
        # 1 / total, and 0 (not NaN) from a sum of zero weights: an unreachable state (a NaN stays NaN)
        inverse = total.clamp(min=torch.finfo(total.dtype).tiny).reciprocal_()
        extra = lanes[-1]
        if self.extra == "tangent":
            torch.sum(weight * extra, dims, out=outs[-1])
            outs[-1].mul_(inverse)
            return out
        if self.extra == "entropy":
            # sum_j P_j (h_j - log2 P_j) = (sum_j w_j h_j - sum_j w_j log2 w_j) / total + log2 total
            mean = (weight * extra).sum(dims).sub_(torch.special.xlogy(weight, weight).sum(dims), alpha=LOG2E)
            outs[-1].copy_(torch.where(total == 0, 0.0, mean.mul_(inverse).add_(log_total)))
            return out
        q = lanes[1]
        q_total = log2sumexp2(q, dims)
        outs[1].copy_(q_total.view(shape))
        term = extra + torch.where(torch.isneginf(q_total), INF, q_total - q)
        if self.extra == "kl":
            term += log_weight
            term -= log_total.view(q_total.shape)
        mean = torch.where(weight == 0, 0.0, weight * term).sum(dims)
        outs[-1].copy_(torch.where(total == 0, 0.0, mean.mul_(inverse)))
        return out

    def rebase_(self, row, shift):
        """Rebase the value lanes of `row` `(L, B, C)` by their own maxima
        (`shift (L, B, 1)`, whose other lanes hold 0)."""
        v = self.values
        torch.amax(row[:v], -1, keepdim=True, out=shift[:v])
        shift[:v].nan_to_num_(neginf=0.0)
        return row.sub_(shift)

    def total(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64, copy=True)
        out = torch.empty(x.shape[:-1], dtype=x.dtype, device=x.device)
        return self.sum_into(x, -1, torch.empty_like(x[0, ..., :1]), out)

    def zero_(self, t, lane_axis: int = 0):
        t.fill_(0.0)
        t.narrow(lane_axis, 0, self.values).fill_(NEG_INF)
        return t

    def virtual_(self, t, first: bool):
        t.fill_(0.0)
        if not first:
            t[:self.values].fill_(NEG_INF)
        return t

    def probabilities_(self, x, lane_axis: int = 0):
        """Lane 0 to probabilities `mu = exp2(x_0)`, the tangent lanes to
        theirs, `mu ln2 x'` (tangents in bits, results in nats)."""
        if self.extra != "tangent":
            raise ValueError(f"{self!r} carry no posterior: only tangent lanes are differentiated")
        mu = x.select(lane_axis, 0).exp2_()
        x.select(lane_axis, 1).mul_(mu).mul_(LN2)
        return x

    def split(self, t, lane_axis: int = 0) -> tuple:
        return t.unbind(lane_axis)


class StackedFactors:
    """The :class:`Factors` of every lane, stacked on the lane axis, with the
    attributes the sweeps read. `parts[i]` holds lane i's factors (a model's,
    or a tangent's: the factors of potentials holding the tangent), or None
    for an information lane (all-zero factors)."""

    def __init__(self, lanes: Lanes, parts: list):
        if len(parts) != len(lanes.kinds) or parts[0] is None:
            raise ValueError(f"{lanes!r} need {len(lanes.kinds)} sets of factors, p's first")
        self.lanes, self.parts = lanes, list(parts)
        p = parts[0]
        self.K, self.B, self.C, self.T = p.K, p.B, p.C, p.T
        self.lengths, self.device, self.dtype = p.lengths, p.device, p.dtype
        self.duration_dependent = p.duration_dependent

    def to(self, dtype: torch.dtype) -> StackedFactors:
        return StackedFactors(self.lanes, [None if f is None else f.to(dtype) for f in self.parts])

    def _stack(self, name: str, shape: tuple) -> torch.Tensor:
        p = self.parts[0]
        zeros = torch.zeros(shape, dtype=p.dtype, device=self.device)
        return torch.stack([zeros if f is None else getattr(f, name).expand(shape) for f in self.parts])

    @property
    def duration(self) -> torch.Tensor:
        """`(L, B, K, C)`."""
        return self._stack("duration", (self.B, self.K, self.C))

    @property
    def transition(self) -> torch.Tensor:
        """`(L, 1, C, C)` (factorized transitions)."""
        return self._stack("transition", (self.C, self.C))[:, None]

    @property
    def transition_with_start(self) -> torch.Tensor:
        """`(L, 1, K, C + 1, C)`."""
        return self._stack("transition_with_start", (self.K, self.C + 1, self.C))[:, None]

    @property
    def start(self) -> torch.Tensor:
        """`(L, 1, C)`."""
        return self._stack("start", (self.C,))[:, None]

    @property
    def end(self) -> torch.Tensor:
        """`(L, 1, C)`."""
        return self._stack("end", (self.C,))[:, None]

    def initial_cum(self) -> list:
        return [None if f is None else f.initial_cum() for f in self.parts]

    def rows(self, r0: int, r1: int, cums: list) -> tuple[FactorRows, list]:
        """:meth:`Factors.rows` of every lane, stacked: `(n, L, B, C)`."""
        enters: list = []
        leaves: list = []
        nexts: list = []
        for f, cum in zip(self.parts, cums):
            if f is None:
                zeros = torch.zeros((r1 - r0, self.B, self.C), dtype=self.parts[0].dtype, device=self.device)
                enters.append(zeros)
                leaves.append(zeros)
                nexts.append(None)
                continue
            rows, cum_next = f.rows(r0, r1, cum)
            enters.append(rows.enter)
            leaves.append(rows.leave)
            nexts.append(cum_next)
        return FactorRows(r0, torch.stack(enters, dim=1), torch.stack(leaves, dim=1)), nexts

