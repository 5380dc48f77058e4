"""The Log sweeps' view of structured potentials: small tensors up front, the
`O(T C)` position factors produced block by block.

Rows. The sweeps walk *rows* `r = 0..T` (the boundaries between positions).
Row `r` carries two factors of a segment's log-potential
`w(s, d, c) = enter[s, c] + duration[d-1, c] + leave[s+d-1, c]`
(:class:`~semiring_semicrf.potentials.LogFactors`):

    enter_rows[r] = enter[r]     = start_scores[r] - cum[r]   (a segment starts at row r)
    leave_rows[r] = leave[r - 1] = cum[r] + end_scores[r-1]   (a segment ends at row r)

so `w(s, d, c) = enter_rows[s, c] + duration[d-1, c] + leave_rows[s+d, c]`.
Rows past the table (`enter_rows[T]`, `leave_rows[0]`) hold finite fillers
that the recurrences never combine with anything but `-inf`.

`cum` are the zero-centred prefix sums of
:meth:`SemiMarkovPotentials.prefix_sums` (mean over the valid positions
removed, `d * mean` put back into the duration), computed here over any
block of rows from the running sum at its first row, so that the low-memory
mode never holds an `O(T C)` factor table. Rows are time-major `(n, B, C)`:
one row is one contiguous `(B, C)` slice.

Precision. The sweeps work in float64 whatever the input dtype (outputs are
cast back). A row's log-sum-exp adds and removes prefix sums that reach
hundreds of nats at T = 1e5; in float32 their rounding (~3e-5 per row)
random-walks apart between the inside and outside sweeps and left the
float32 gradients 0.5% off at T = 1e5 (measured), while float64 keeps them
within 1e-5 of a float64 run. On the CPU the per-row ops are bound by
dispatch, not arithmetic, so this costs no measurable time; the tables take
twice the bytes.

Units. Every log-potential the sweeps see is in *bits* (base-2 logs:
nats times `log2(e)`), so that their reductions use `exp2`/`log2`: on the
CPU, torch's `exp` takes a slow path on very negative or `-inf` inputs
(~100 us instead of ~1 us for 1,536 floats, measured with torch 2.13),
which are everywhere in a semi-Markov ring; `exp2` does not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import math

import torch

from ..potentials import SemiMarkovPotentials

WORK_DTYPE = torch.float64
LOG2E = 1.0 / math.log(2.0)  # nats -> bits
LN2 = math.log(2.0)  # bits -> nats


@dataclass
class FactorRows:
    """Factors of rows `[r0, r0 + n)`: `enter`, `leave` `(n, B, C)`, in bits."""

    r0: int
    enter: torch.Tensor
    leave: torch.Tensor

    @property
    def n(self) -> int:
        return self.enter.shape[0]


@dataclass
class LogProblem:
    """Detached, prepared inputs of the Log sweeps for one set of potentials.

    The `(B, T, C)` tensors stay as the user gave them (rows convert one
    block at a time); the small ones are in the working dtype (float64).

    Attributes:
        scores, start_scores, end_scores: the user's `(B, T, C)` tensors
            (extras None when absent), detached.
        lengths: `(B,)` int64.
        mean: `(B, C)` the per-sequence, per-label mean removed from scores (nats).
        duration: `(B, K, C)` duration scores plus the exact compensation
            `d * mean`, in bits.
        transition: `(C, C)` `[src, dst]` or `(K, C, C)` `[d-1, src, dst]`, in bits.
        start, end: `(C,)`, in bits.
    """

    scores: torch.Tensor
    start_scores: Optional[torch.Tensor]
    end_scores: Optional[torch.Tensor]
    lengths: torch.Tensor
    mean: torch.Tensor
    duration: torch.Tensor
    transition: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor

    @classmethod
    def from_potentials(cls, potentials) -> "LogProblem":
        if not isinstance(potentials, SemiMarkovPotentials):
            raise TypeError(
                "the Log sweeps take SemiMarkovPotentials, got "
                f"{type(potentials).__name__}; explicit EdgePotentials go through "
                "semiring_semicrf.autograd.log_partition / posterior (autograd through the scan)")
        t = {name: value.detach() for name, value in potentials.tensors().items()}
        small = {name: t[name].to(WORK_DTYPE) for name in ("transition", "duration", "start", "end")}
        scores, lengths = t["scores"], potentials.lengths
        sums = [scores[b, :n].sum(dim=0, dtype=WORK_DTYPE) / n for b, n in enumerate(lengths.tolist())]
        mean = torch.stack(sums) if sums else torch.zeros((0, scores.shape[2]), dtype=WORK_DTYPE, device=scores.device)
        K = small["duration"].shape[0]
        d = torch.arange(1, K + 1, device=scores.device, dtype=WORK_DTYPE)
        duration = small["duration"][None] + d[None, :, None] * mean[:, None, :]
        return cls(scores, t.get("start_scores"), t.get("end_scores"), lengths, mean, duration * LOG2E,
                   small["transition"] * LOG2E, small["start"] * LOG2E, small["end"] * LOG2E)

    # -- sizes ---------------------------------------------------------------
    @property
    def B(self) -> int:
        return self.scores.shape[0]

    @property
    def T(self) -> int:
        return self.scores.shape[1]

    @property
    def C(self) -> int:
        return self.scores.shape[2]

    @property
    def K(self) -> int:
        return self.duration.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        """The working dtype of every sweep tensor."""
        return WORK_DTYPE

    @property
    def out_dtype(self) -> torch.dtype:
        """The potentials' dtype, that of the results."""
        return self.scores.dtype

    @property
    def device(self) -> torch.device:
        return self.scores.device

    @property
    def duration_dependent(self) -> bool:
        return self.transition.dim() == 3

    def initial_cum(self) -> torch.Tensor:
        """`cum[0] = 0`, `(B, C)`."""
        return torch.zeros(self.B, self.C, dtype=WORK_DTYPE, device=self.device)

    def rows(self, r0: int, r1: int, cum_r0: torch.Tensor) -> tuple[FactorRows, torch.Tensor]:
        """Factors of rows `[r0, r1)` (`0 <= r0 < r1 <= T + 1`), in bits, from
        the running prefix sum `cum_r0 = cum[r0]` `(B, C)` (nats); returns
        them and `cum[r1]`."""
        T, n = self.T, r1 - r0
        t_hi = min(r1, T)
        m = t_hi - r0  # positions r0 .. t_hi-1
        centred = torch.empty((m, self.B, self.C), dtype=WORK_DTYPE, device=self.device)
        centred.copy_(self.scores[:, r0:t_hi].transpose(0, 1)).sub_(self.mean)
        valid = torch.arange(r0, t_hi, device=self.device)[:, None] < self.lengths[None, :]
        centred.masked_fill_(~valid[..., None], 0.0)
        cum = torch.empty((m + 1, self.B, self.C), dtype=WORK_DTYPE, device=self.device)  # rows r0 .. t_hi
        cum[0] = cum_r0
        torch.cumsum(centred, dim=0, out=cum[1:])
        del centred
        cum[1:] += cum_r0
        cum_next = cum[n].clone() if r1 <= T else cum[-1].clone()
        leave = cum[:n]
        enter = leave.neg()
        if self.start_scores is not None:
            enter[:m] += self.start_scores[:, r0:t_hi].transpose(0, 1)
        if self.end_scores is not None:
            lo = max(r0, 1)
            leave[lo - r0:] += self.end_scores[:, lo - 1:r1 - 1].transpose(0, 1)
        return FactorRows(r0, enter.mul_(LOG2E), leave.mul_(LOG2E)), cum_next
