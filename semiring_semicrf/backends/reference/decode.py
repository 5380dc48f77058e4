"""Decoding as the scan: the k best segmentations from the Max/KMax scan's
back-pointers.

The scan of :mod:`.scan` runs in `KMaxSemiring(k)` (`MaxSemiring` for k = 1)
with index-returning reductions (:meth:`Semiring.argsum`), and every
reduction's back-pointers are kept per position (`O(B T C k)` small integers,
the order of the output itself); a traceback then follows them from each
sequence's end. Nothing of size `T K C` or `T C^2` is allocated.

A back-pointer is `position * k + rank`: the position along the reduced axis
(factorized: the duration slot `j`, then the source label `c'`; general: the
pair `(j, c')` as `j * sources + c'`) and the rank of the entry in that
position's k-list.

Ties are broken deterministically: among equal candidates the smaller
(duration, previous label, rank) wins, and at the end the smaller last label.
Hence, reading segments from the last to the first, the Viterbi segmentation
is, among all best-scoring ones, the smallest in the lexicographic order of
``(label_n, duration_n, label_{n-1}, duration_{n-1}, ..., label_1,
duration_1[, latent label])``, and the k-best list is sorted by score
(descending) then by that key. Exact ties need exactly representable sums
(integer potentials with `center=False`, or whose per-label means are
integers); otherwise float rounding decides.
"""
from __future__ import annotations

import numpy as np
import torch

from ...segmentation import labels_from_starts
from ...semirings import KMaxSemiring, MaxSemiring
from .scan import ScanProgram


class _Pointers:
    """Receives the scan's back-pointers (the `keep` callback): one table per
    reduction, `(T+1, k, B, C)` in the smallest integer dtype that holds
    them, and the final pointers `(k, B)` of each sequence's end."""

    def __init__(self, program: ScanProgram, k: int):
        self.k, self.lengths = k, program.lengths
        B, T, C = program.B, program.T, program.C
        largest = k * (program.K * program.sources if not program.factorized else max(program.K, C))
        dtype = torch.int16 if largest <= 2**15 else torch.int32 if largest <= 2**31 else torch.int64
        names = ("duration", "transition") if program.factorized else ("segment",)
        self.tables = {name: torch.zeros((T + 1, k, B, C), dtype=dtype, device=program.device) for name in names}
        self.final = torch.zeros((k, B), dtype=torch.int64, device=program.device)

    def __call__(self, name: str, e: int, index: torch.Tensor) -> None:
        if name == "final":
            self.final = torch.where(self.lengths == e, index, self.final)
        else:
            self.tables[name][e] = index


def kbest(prepared, k: int):
    """The k best segmentations of :class:`Factors` or explicit edges:
    `(scores (k, B), labels (k, B, T) int64, starts (k, B, T) bool)`, best
    first; missing entries (fewer than k segmentations) have score `-inf`,
    labels -1 and no starts."""
    semiring = MaxSemiring() if k == 1 else KMaxSemiring(k)
    with torch.no_grad():
        program = ScanProgram(prepared, semiring)
        pointers = _Pointers(program, k)
        _, _, result = program.run(*program.initial_state(), 1, program.T + 1, keep=pointers)
        best = result.to(program.dtype)  # (k, B)
        starts, start_labels = _traceback(program, pointers, torch.isfinite(best))
    return best, labels_from_starts(starts, start_labels, program.lengths), starts


def _traceback(program: ScanProgram, pointers: _Pointers, alive: torch.Tensor):
    """Follow the pointers of every `(rank, sequence)` chain at once, on the
    host (one small step per segment: numpy's per-call cost, not a device
    launch, bounds it). Returns `starts (k, B, T)` bool and the label at each
    start `(k, B, T)` int64 (-1 elsewhere), on the potentials' device."""
    k, B, T = pointers.k, program.B, program.T
    tables = {name: table.cpu().numpy() for name, table in pointers.tables.items()}
    final = pointers.final.reshape(-1).cpu().numpy()
    n = np.flatnonzero(alive.reshape(-1).cpu().numpy())  # chain n = rank * B + sequence
    b = n % B
    e = program.lengths.cpu().numpy()[b]
    c, r = final[n] // k, final[n] % k
    starts = np.zeros((k * B, T), dtype=bool)
    start_labels = np.full((k * B, T), -1, dtype=np.int64)
    while n.size:
        if program.factorized:
            index = tables["duration"][e, r, b, c].astype(np.int64)
            s = e - 1 - index // k
            index = tables["transition"][s, index % k, b, c].astype(np.int64)  # row 0 unused: s = 0 ends
            previous, rank = index // k, index % k
        else:
            index = tables["segment"][e, r, b, c].astype(np.int64)
            pair, rank = index // k, index % k
            s, previous = e - 1 - pair // program.sources, pair % program.sources
        starts[n, s] = True
        start_labels[n, s] = c
        more = s > 0
        n, b, e, c, r = n[more], b[more], s[more], previous[more], rank[more]
    device = program.device
    return (torch.from_numpy(starts).view(k, B, T).to(device),
            torch.from_numpy(start_labels).view(k, B, T).to(device))
