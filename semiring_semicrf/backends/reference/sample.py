"""Exact sampling: forward filtering, backward sampling.

The Log scan's tables (`alpha`, and `u` on the factorized path; `O(B T C)`,
:func:`.scan.scan`) hold the total weight of every prefix, so a segmentation
can be drawn from the right end with exact conditional probabilities:

- the last label `c` with probability `∝ alpha[L, c] + end[c]`;
- factorized potentials, alternately: the duration `d` of the segment ending
  at `e` with label `c`, `∝ u[e-d, c] + w(e-d, d, c)`, then the label `c'`
  before a segment starting at `s > 0` with label `c`,
  `∝ alpha[s, c'] + transition[c', c]`;
- the general path: `(d, c')` jointly, `∝ alpha[e-d, c'] + edge(e-d, d, c,
  c')` over the scan's source labels (the virtual start label, or the latent
  label before the first segment of explicit edges, is drawn and dropped).

Every sample of every sequence advances in one right-to-left sweep over the
positions, each decision a Gumbel-max draw over at most `K` (`C`, `K C`)
choices, so `N` samples cost `O(N B T (K + C))` (`O(N B T K C)`) work and
`O(N B T)` memory besides the tables. Draws come from `torch.rand` with the
given generator: same generator state, same samples.
"""
from __future__ import annotations

import torch

from ...segmentation import labels_from_starts
from ...semirings import LogSemiring
from .scan import ScanProgram, run_with_tables


def sample(prepared, num_samples: int, generator=None):
    """`(labels (N, B, T) int64, starts (N, B, T) bool)`: `N` exact samples
    of each sequence of :class:`Factors` or explicit edges; labels -1 and
    starts False past each length, and everywhere for a sequence without any
    allowed segmentation (log Z = -inf)."""
    with torch.no_grad():
        sampler = _Sampler(prepared, num_samples, generator)
        starts, start_labels = sampler.run()
    return labels_from_starts(starts, start_labels, sampler.program.lengths), starts


class _Sampler:
    """State of `N * B` chains (chain `n = i * B + b`), swept right to left.

    `end[n]`: the end (exclusive) of the segment still to be drawn, with
    label `label[n]`; `pending[n]` (factorized path): the start of the last
    drawn segment, whose previous label is still to be drawn. -1: none."""

    def __init__(self, prepared, num_samples: int, generator):
        self.generator = generator
        program = self.program = ScanProgram(prepared, LogSemiring())
        self.B, self.T, self.K, self.C = program.B, program.T, program.K, program.C
        self.num_samples, self.N = num_samples, num_samples * self.B
        log_z, tables = run_with_tables(program)
        self.alpha = tables.alpha[0]  # (B, T+1, C)
        self.u = None if tables.u is None else tables.u[0]
        if not program.factorized:  # the sources' inside values: alpha, and the initial row
            initial = program.initial_row()[0].double()  # (B, sources)
            sources = torch.cat([self.alpha, initial.new_full((self.B, self.T + 1, program.sources - self.C),
                                                              float("-inf"))], dim=-1)
            sources[:, 0] = initial
            self.sources = sources  # (B, T+1, sources)
        device = program.device
        self.b = torch.arange(self.B, device=device).repeat(num_samples)
        lengths = program.lengths[self.b]
        alive = torch.isfinite(log_z)[self.b]
        closing = self.alpha[self.b, lengths]
        if not program.explicit:
            closing = closing + program.end[0]
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
        transition = self.program.transition[0, 0]  # (C_src, C_dst)
        weights = self.alpha[self.b[n], e] + transition[:, self.label[n]].T  # (n, C_src)
        self.label[n] = self.draw(weights)
        self.end[n] = e

    def segments_ending(self, e: int) -> None:
        """Chains with a segment ending at `e` draw its duration (and, on the
        general path, the previous label jointly)."""
        n = (self.end == e).nonzero().flatten()
        if n.numel() == 0:
            return
        b, c = self.b[n], self.label[n]
        j = torch.arange(self.K, device=self.program.device)
        s = e - 1 - j  # slot j: duration j + 1
        possible = s >= 0
        s = s.clamp(min=0)
        program = self.program
        if self.u is not None:
            weights = (self.u[b[:, None], s, c[:, None]] + program.enter[0, b[:, None], s, c[:, None]]
                       + program.duration[0, b, :, c])  # (n, K)
            j_drawn = self.draw(weights.masked_fill(~possible, float("-inf")))
            previous = None
        else:
            block = program.block(e)[0]  # (B, K, C_dst, sources)
            weights = self.sources[b[:, None], s] + block[b, :, c]  # (n, K, sources)
            weights = weights.masked_fill(~possible[:, None], float("-inf"))
            flat = self.draw(weights.reshape(len(n), -1))
            sources = block.shape[-1]
            j_drawn, previous = flat.div(sources, rounding_mode="floor"), flat % sources
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
