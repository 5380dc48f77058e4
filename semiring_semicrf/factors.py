"""`Factors`: the one prepared form of structured potentials that every backend reads.

The model (docs/model.md) scores a segment `[s, s + d)` labelled `c` as
`scores[s:s+d, c].sum() + duration[d-1, c]` (plus the optional boundary
scores), and the segments' sequence through `transition`, `start` and `end`.
Every backend evaluates the segment term from three factors, defined here and
nowhere else:

    w(s, d, c) = enter[s, c] + duration[b, d-1, c] + leave[s+d-1, c]
    enter[s, c] = start_scores[s, c] - cum[s, c]
    leave[e, c] = cum[e+1, c] + end_scores[e, c]          (e: the segment's last position)
    duration[b, d-1, c] = duration_scores[d-1, c] + d * mean[b, c]

`cum` are the prefix sums of the *zero-centred* scores `x - mean[b, c]`
(`mean` over the valid positions of sequence `b`; padding contributes 0): a
segment of length `d` loses `d * mean` in `cum` and gets it back, exactly, in
its duration factor, so the model computed is the model written while the
prefix sums stay of the order of a random walk at any T. With
`center=False` the mean is 0 (exact integer potentials stay exact).

The first segment takes `start[c]` in place of a transition and the last one
is followed by `end[c]`. The factorized recurrence starts from `u[0] = start`;
the duration-dependent one (and :meth:`Factors.segments_ending_at`) sees
`start` as the transition out of a virtual source label `C`, whose inside
value is `one` at position 0 and `zero` after it
(:meth:`Factors.transition_with_start`).

A `Factors` works in one dtype (:meth:`Factors.to` gives another view of the
same potentials); it keeps autograd graphs when the potentials require grad.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .prefix import cumsum_over_time_

NEG_INF = float("-inf")


@dataclass
class FactorRows:
    """The factors of rows `[r0, r0 + n)`, time-major: row `r` is the
    boundary before position `r`, with `enter[r]` (a segment starts at `r`)
    and `leave[r - 1]` (a segment ends just before `r`), both `(n, B, C)`.
    Rows past the table (`enter` at row T, `leave` at row 0) hold finite
    fillers that the recurrences never combine with anything but `-inf`."""

    r0: int
    enter: torch.Tensor
    leave: torch.Tensor

    @property
    def n(self) -> int:
        return self.enter.shape[0]


class Factors:
    """Structured potentials prepared for the recurrences (see module docstring).

    Build it with :meth:`SemiMarkovPotentials.factors`. Attributes (in the
    working `dtype`, on the potentials' device):

    - `enter`, `leave`: `(B, T, C)`, computed on first use;
    - `duration`: `(B, K, C)`, the compensated duration factor;
    - `transition`: `(C, C)` `[src, dst]` or `(K, C, C)` `[d-1, src, dst]`;
    - `start`, `end`: `(C,)`; `lengths`: `(B,)` int64; `mean`: `(B, C)`
      float64, computed on first use (:meth:`supply_mean`).

    :meth:`rows` produces the same factors block by block (time-major), for
    sweeps that must not hold an `O(T C)` table.
    """

    is_explicit = False

    def __init__(self, potentials, dtype: torch.dtype | None = None, mean: torch.Tensor | None = None):
        self.potentials = potentials
        self.lengths = potentials.lengths
        self.dtype = potentials.dtype if dtype is None else dtype
        self._mean = mean

    # -- sizes ---------------------------------------------------------------
    B = property(lambda self: self.potentials.batch_size)
    T = property(lambda self: self.potentials.T)
    K = property(lambda self: self.potentials.K)
    C = property(lambda self: self.potentials.C)
    device = property(lambda self: self.potentials.device)
    duration_dependent = property(lambda self: self.potentials.duration_dependent)

    def to(self, dtype: torch.dtype) -> Factors:
        """The same factors in another working dtype (the mean is shared, so
        the centring and its compensation stay exact in every dtype)."""
        return self if dtype == self.dtype else Factors(self.potentials, dtype, self.mean)

    def replace(self, **tensors: torch.Tensor) -> Factors:
        """A copy with some factors (`enter`, `leave`, `duration`,
        `transition`, `start`, `end`) replaced, e.g. by leaves to
        differentiate against; the rest is derived from them."""
        unknown = set(tensors) - {"enter", "leave", "duration", "transition", "start", "end"}
        if unknown:
            raise ValueError(f"Factors.replace: unknown factors {sorted(unknown)}")
        copy = Factors(self.potentials, self.dtype, self.mean)
        copy.__dict__.update(tensors)
        return copy

    @property
    def mean(self) -> torch.Tensor:
        """`(B, C)` float64, detached: the per-sequence, per-label mean over
        the valid positions (zeros when the potentials are not centred). A
        constant for autograd: it cancels exactly between `cum` and the
        duration factor. Computed on first use, unless supplied first."""
        if self._mean is None:
            self._mean = self.centring_mean()
        return self._mean

    @property
    def has_mean(self) -> bool:
        """Whether :attr:`mean` is known yet (computed or supplied)."""
        return self._mean is not None

    def supply_mean(self, mean: torch.Tensor) -> None:
        """Set :attr:`mean`, not yet known, to `mean` `(B, C)` float64: the
        value of :meth:`centring_mean` (up to the order of its sum) from a
        kernel that reads the scores anyway (the Triton rung's preparation
        launch), sparing its separate reductions."""
        if self._mean is not None:
            raise RuntimeError("Factors.supply_mean: the mean is already known")
        self._mean = mean

    def centring_mean(self) -> torch.Tensor:
        """:attr:`mean` computed from the potentials."""
        p = self.potentials
        if not p.center:
            return torch.zeros(p.batch_size, p.C, dtype=torch.float64, device=p.device)
        x = torch.where(p.valid_mask()[..., None], p.scores.detach(), torch.zeros((), dtype=p.dtype, device=p.device))
        return x.sum(dim=1, dtype=torch.float64) / self.lengths.to(torch.float64)[:, None]

    # -- the small factors --------------------------------------------------
    @cached_property
    def duration(self) -> torch.Tensor:
        p = self.potentials
        d = torch.arange(1, p.K + 1, device=p.device, dtype=self.dtype)
        return p.duration.to(self.dtype)[None] + d[None, :, None] * self.mean.to(self.dtype)[:, None, :]

    transition = cached_property(lambda self: self.potentials.transition.to(self.dtype))
    start = cached_property(lambda self: self.potentials.start.to(self.dtype))
    end = cached_property(lambda self: self.potentials.end.to(self.dtype))

    @cached_property
    def transition_with_start(self) -> torch.Tensor:
        """`(K, C + 1, C)` `[d-1, src, dst]`: the transitions by entered
        duration (the `(C, C)` one repeated), with the virtual source label
        `C` carrying `start` (the first segment's convention)."""
        K, C = self.K, self.C
        transition = self.transition if self.duration_dependent else self.transition.expand(K, C, C)
        return torch.cat([transition, self.start.expand(K, 1, C)], dim=1)

    # -- the position factors -------------------------------------------------
    def padding(self, t0: int, t1: int) -> torch.Tensor:
        """`(B, t1 - t0, 1)` bool: True at positions of `[t0, t1)` past each
        length. Every per-position input is read through this mask (zeros
        there), so padding never reaches a factor, whatever it holds, and
        its gradient is exactly 0."""
        return torch.arange(t0, t1, device=self.device)[None, :, None] >= self.lengths[:, None, None]

    def centred(self, t0: int, t1: int) -> torch.Tensor:
        """`(B, t1 - t0, C)`: the scores of positions `[t0, t1)` minus the
        mean, 0 past each length (the zero-centring, written once)."""
        x = self.potentials.scores[:, t0:t1].to(self.dtype, copy=True)  # one buffer, then in place
        return x.sub_(self.mean.to(self.dtype)[:, None]).masked_fill_(self.padding(t0, t1), 0.0)

    def _boundary(self, name: str, t0: int, t1: int) -> torch.Tensor | None:
        """`start_scores`/`end_scores` of positions `[t0, t1)`, `(B, n, C)`,
        0 past each length; or None."""
        t = getattr(self.potentials, name)
        if t is None or t1 <= t0:
            return None
        return t[:, t0:t1].to(self.dtype).masked_fill(self.padding(t0, t1), 0.0)

    @cached_property
    def prefix_sums(self) -> torch.Tensor:
        """`cum (B, T + 1, C)`, the zero-centred prefix sums (`cum[:, 0] = 0`)."""
        return torch.nn.functional.pad(cumsum_over_time_(self.centred(0, self.T)), (0, 0, 1, 0))

    @cached_property
    def enter(self) -> torch.Tensor:
        enter = -self.prefix_sums[:, :-1]
        extra = self._boundary("start_scores", 0, self.T)
        return enter if extra is None else enter + extra

    @cached_property
    def leave(self) -> torch.Tensor:
        leave = self.prefix_sums[:, 1:]
        extra = self._boundary("end_scores", 0, self.T)
        return leave if extra is None else leave + extra

    def initial_cum(self) -> torch.Tensor:
        """`cum[0] = 0`, `(B, C)`."""
        return torch.zeros(self.B, self.C, dtype=self.dtype, device=self.device)

    def rows(self, r0: int, r1: int, cum_r0: torch.Tensor) -> tuple[FactorRows, torch.Tensor]:
        """The factors of rows `[r0, r1)` (`0 <= r0 < r1 <= T + 1`) from the
        running prefix sum `cum_r0 = cum[r0]` `(B, C)`; returns them and
        `cum[r1]` (`cum[T]` when `r1 = T + 1`). Fresh tensors the caller may
        modify in place."""
        T, n = self.T, r1 - r0
        t_hi = min(r1, T)
        cum = torch.empty((t_hi - r0 + 1, self.B, self.C), dtype=self.dtype, device=self.device)  # rows r0..t_hi
        cum[0] = cum_r0
        torch.cumsum(self.centred(r0, t_hi).transpose(0, 1), dim=0, out=cum[1:])
        cum[1:] += cum_r0
        cum_next = cum[min(n, t_hi - r0)].clone()
        leave = cum[:n]
        enter = leave.neg()
        start_scores = self._boundary("start_scores", r0, t_hi)
        if start_scores is not None:
            enter[:t_hi - r0] += start_scores.transpose(0, 1)
        lo = max(r0, 1)
        end_scores = self._boundary("end_scores", lo - 1, r1 - 1)
        if end_scores is not None:
            leave[lo - r0:] += end_scores.transpose(0, 1)
        return FactorRows(r0, enter, leave), cum_next

    # -- segments -------------------------------------------------------------
    def segment_log_potentials(self, starts: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        """`w(s, d, c)` for broadcastable index tensors `starts` and
        `durations` (shape `S`): `(B, *S, C)`, `-inf` where the segment
        leaves `[0, T)` or `d` is outside `[1, K]`."""
        T, K = self.T, self.K
        ends = starts + durations - 1
        inside = (starts >= 0) & (ends < T) & (durations >= 1) & (durations <= K)
        w = (self.enter[:, starts.clamp(0, T - 1)] + self.duration[:, (durations - 1).clamp(0, K - 1)]
             + self.leave[:, ends.clamp(0, T - 1)])
        return w.masked_fill(~inside[None, ..., None], NEG_INF)

    def segments_ending_at(self, e: int) -> torch.Tensor:
        """Log-potentials of the `K` segments ending at position `e`
        (`1 <= e <= T`, exclusive end), transition included:
        `(B, K, C_dst, C + 1)`, slot `j` = duration `j + 1` starting at
        `e - 1 - j`, last source = the virtual start label (finite only for
        segments starting at 0, where every real source is `-inf`)."""
        j = torch.arange(self.K, device=self.device)
        s = e - 1 - j
        w = self.segment_log_potentials(s, j + 1)  # (B, K, C)
        first = (s == 0)[:, None]  # (K, 1): the virtual source only at s = 0
        sources = torch.cat([first.logical_not().expand(self.K, self.C), first], dim=1)  # (K, C + 1)
        transition = self.transition_with_start.transpose(1, 2)  # (K, C_dst, C_src + 1)
        transition = transition.masked_fill(~sources[:, None, :], NEG_INF)
        return w[..., None] + transition[None]
