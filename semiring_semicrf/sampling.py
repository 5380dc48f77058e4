"""Exact sampling: forward filtering, backward sampling.

The Log scan's tables (`alpha`, and `u` on the factorized path; `O(B T C)`)
hold the total weight of every prefix, so a segmentation can be drawn from
the right end with exact conditional probabilities (DESIGN.md section 2):

- the last label `c` with probability `∝ alpha[L, c] + end[c]`;
- factorized potentials, alternately: the duration `d` of the segment ending
  at `e` with label `c`, `∝ u[e-d, c] + w(e-d, d, c)`, then the label `c'`
  before a segment starting at `s > 0` with label `c`,
  `∝ alpha[s, c'] + transition[c', c]`;
- duration-dependent transitions and explicit edges: `(d, c')` jointly,
  `∝ alpha[e-d, c'] + edge(e-d, d, c, c')` (for explicit edges the latent
  label before the first segment is drawn and dropped).

Every sample of every sequence advances in one right-to-left sweep over the
positions, each decision a Gumbel-max draw over at most `K` (`C`, `K C`)
choices, so `N` samples cost `O(N B T (K + C))` (`O(N B T K C)`) work and
`O(N B T)` memory besides the tables. Draws come from `torch.rand` with the
given generator: same generator state, same samples.
"""
from __future__ import annotations

from typing import Optional

import torch

from .potentials import require_potentials
from .scan import ScanProgram, semimarkov_scan
from .segmentation import labels_from_starts
from .semirings import LogSemiring


def sample(potentials, num_samples: int, generator: Optional[torch.Generator] = None):
    """Draw `num_samples` exact samples of every sequence.

    Args:
        potentials: :class:`~semiring_semicrf.SemiMarkovPotentials` or
            :class:`~semiring_semicrf.EdgePotentials`.
        num_samples: `N >= 1`.
        generator: a `torch.Generator` on the potentials' device, for
            reproducible draws (default: torch's global generator).

    Returns:
        `(labels (N, B, T) int64, starts (N, B, T) bool)`; labels -1 and
        starts False past each length, and everywhere for a sequence without
        any allowed segmentation (log Z = -inf).
    """
    require_potentials(potentials)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != potentials.device.type:
            raise ValueError(f"generator is on {generator.device} but the potentials are on {potentials.device}")
    with torch.no_grad():
        sampler = _Sampler(potentials, num_samples, generator)
        starts, start_labels = sampler.run()
    return labels_from_starts(starts, start_labels, potentials.lengths), starts


class _Sampler:
    """State of `N * B` chains (chain `n = i * B + b`), swept right to left.

    `end[n]`: the end (exclusive) of the segment still to be drawn, with
    label `label[n]`; `pending[n]` (factorized path): the start of the last
    drawn segment, whose previous label is still to be drawn. -1: none."""

    def __init__(self, potentials, num_samples: int, generator):
        self.p, self.generator = potentials, generator
        self.B, self.T, self.K, self.C = potentials.batch_size, potentials.T, potentials.K, potentials.C
        self.num_samples, self.N = num_samples, num_samples * self.B
        log_z, tables = semimarkov_scan(potentials, LogSemiring(), return_tables=True)
        self.alpha = tables.alpha[0]  # (B, T+1, C)
        self.u = None if tables.u is None else tables.u[0]
        if self.u is None:
            self.program = ScanProgram(potentials, LogSemiring())
        else:
            self.f = potentials.log_factors()
        device = potentials.device
        self.b = torch.arange(self.B, device=device).repeat(num_samples)
        lengths = potentials.lengths[self.b]
        alive = torch.isfinite(log_z)[self.b]
        closing = self.alpha[self.b, lengths]
        if not potentials.is_explicit:
            closing = closing + potentials.end
        self.label = self.draw(closing)
        self.end = torch.where(alive, lengths, torch.full_like(lengths, -1))
        self.pending = torch.full_like(lengths, -1)
        self.starts = torch.zeros((self.N, self.T), dtype=torch.bool, device=device)
        self.start_labels = torch.full((self.N, self.T), -1, dtype=torch.int64, device=device)

    def draw(self, log_weights: torch.Tensor) -> torch.Tensor:
        """One index per row of `log_weights (n, m)`, `P(i) ∝ exp(w[i])`
        (Gumbel-max)."""
        tiny = torch.finfo(log_weights.dtype).tiny
        uniform = torch.rand(log_weights.shape, generator=self.generator, dtype=log_weights.dtype,
                             device=log_weights.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=tiny)))
        return (log_weights + gumbel).argmax(dim=-1)

    def run(self):
        for e in range(self.T, 0, -1):
            if self.u is not None:
                self.previous_labels(e)
            self.segments_ending(e)
        shape = (self.num_samples, self.B, self.T)
        return self.starts.view(shape), self.start_labels.view(shape)

    def previous_labels(self, e: int) -> None:
        """Factorized: chains whose last drawn segment starts at `e` draw the
        label of the segment ending there."""
        n = (self.pending == e).nonzero().flatten()
        if n.numel() == 0:
            return
        weights = self.alpha[self.b[n], e] + self.f.transition[:, self.label[n]].T  # (n, C_src)
        self.label[n] = self.draw(weights)
        self.end[n] = e

    def segments_ending(self, e: int) -> None:
        """Chains with a segment ending at `e` draw its duration (and, on the
        general path, the previous label jointly)."""
        n = (self.end == e).nonzero().flatten()
        if n.numel() == 0:
            return
        b, c = self.b[n], self.label[n]
        j = torch.arange(self.K, device=self.p.device)
        s = e - 1 - j  # slot j: duration j + 1
        possible = s >= 0
        s = s.clamp(min=0)
        if self.u is not None:
            f = self.f
            weights = (self.u[b[:, None], s, c[:, None]] + f.enter[b[:, None], s, c[:, None]]
                       + f.duration[b, :, c])  # (n, K)
            j_drawn = self.draw(weights.masked_fill(~possible, float("-inf")))
            previous = None
        else:
            block = self.program.edge_block(e)[0]  # (B, K, C_dst, C_src)
            weights = self.alpha[b[:, None], s] + block[b, :, c]  # (n, K, C_src)
            weights = weights.masked_fill(~possible[:, None], float("-inf"))
            flat = self.draw(weights.reshape(len(n), -1))
            j_drawn, previous = flat.div(self.C, rounding_mode="floor"), flat % self.C
        start = e - 1 - j_drawn
        self.starts[n, start] = True
        self.start_labels[n, start] = c
        more = start > 0
        self.end[n] = -1
        if previous is None:
            self.pending[n] = torch.where(more, start, torch.full_like(start, -1))
        else:
            self.label[n] = previous
            self.end[n] = torch.where(more, start, torch.full_like(start, -1))
