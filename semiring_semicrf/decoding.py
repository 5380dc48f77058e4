"""Decoding: the best segmentation (Viterbi) and the k best, streamed.

One forward sweep in the max-plus semiring keeps, per position and label, the
k best partial scores in a ring buffer of the last K rows (`O(B K C k)`
floats) and a table of back-pointers of small integers (`O(B T C k)`, the
order of the output itself); a traceback then follows the pointers from the
end. Nothing of size `T K C` or `T C^2` is allocated. Work per position:

- factorized potentials (`(C, C)` transitions), two half-steps as in the scan
  (:mod:`semiring_semicrf.scan`):
  ``alpha[e, c] = best_d u[e-d, c] + w(e-d, d, c)`` (pointer: `d`, rank) and
  ``u[e, c] = best_c' alpha[e, c'] + transition[c', c]`` (pointer: `c'`, rank),
  `O((K C + C^2) k)`;
- duration-dependent transitions and explicit edges, one step over
  `(d, c')` jointly (:meth:`ScanProgram.edge_block`), `O(K C^2 k)`; explicit
  edges also choose the latent label before the first segment.

Every `RENORM_INTERVAL` positions each sequence's best ring entry is
subtracted from its ring and carried in float64, so the compared numbers stay
O(1) (and float32 keeps its resolution) at any T.

Ties are broken deterministically: among equal candidates the smaller
(duration, previous label, rank) wins, and at the end the smaller last label.
Hence, reading segments from the last to the first, the Viterbi segmentation
is, among all best-scoring ones, the smallest in the lexicographic order of
``(label_n, duration_n, label_{n-1}, duration_{n-1}, ..., label_1,
duration_1[, latent label])``, and the k-best list is sorted by score
(descending) then by that key. Exact ties need exactly representable sums
(e.g. integer potentials whose per-label means are integers, since the scores
are zero-centred before the prefix sums); otherwise float rounding decides.
"""
from __future__ import annotations

import numpy as np
import torch

from .potentials import require_potentials
from .scan import RENORM_INTERVAL, ScanProgram
from .segmentation import labels_from_starts
from .semirings import MaxSemiring


def viterbi(potentials):
    """The best segmentation of each sequence.

    Args:
        potentials: :class:`~semiring_semicrf.SemiMarkovPotentials` or
            :class:`~semiring_semicrf.EdgePotentials`.

    Returns:
        `(score (B,), labels (B, T) int64, starts (B, T) bool)`: the best
        score (`-inf` if no segmentation is allowed), the label of each
        position (-1 past the length) and the segment starts (False past the
        length); a sequence without any allowed segmentation gets all -1 and
        False.
    """
    scores, labels, starts = topk(potentials, 1)
    return scores[0], labels[0], starts[0]


def topk(potentials, k: int):
    """The k best distinct segmentations of each sequence, best first.

    Returns:
        `(scores (k, B), labels (k, B, T), starts (k, B, T))` as in
        :func:`viterbi`. Where a sequence has fewer than k segmentations, the
        missing entries have score `-inf` and are empty (labels -1, starts
        False). For explicit edges two entries may share their segments and
        differ in the latent first label (as in their partition).
    """
    require_potentials(potentials)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    with torch.no_grad():
        sweep = _FactorizedSweep(potentials, k) if not potentials.duration_dependent else _GeneralSweep(potentials, k)
        best, final = sweep.run()
        starts, first_labels = sweep.traceback(final, torch.isfinite(best))
    labels = labels_from_starts(starts, first_labels, potentials.lengths)
    return best.T.contiguous(), labels, starts


def _top(candidates: torch.Tensor, k: int):
    """The k largest along the last dim, `(values, indices)`, sorted
    descending; among equal values the smaller index first."""
    if k == 1:
        return candidates.max(dim=-1, keepdim=True)  # the first maximal index
    if candidates.shape[-1] < k:
        pad = candidates.new_full((*candidates.shape[:-1], k - candidates.shape[-1]), float("-inf"))
        candidates = torch.cat([candidates, pad], dim=-1)
    values, index = candidates.sort(dim=-1, descending=True, stable=True)
    return values[..., :k], index[..., :k]


def _pointer_table(B: int, T: int, C: int, k: int, largest: int, device) -> torch.Tensor:
    """An empty `(B, T+1, C, k)` back-pointer table of the smallest integer
    dtype holding values below `largest`."""
    dtype = torch.int16 if largest <= 2**15 else torch.int32 if largest <= 2**31 else torch.int64
    return torch.zeros((B, T + 1, C, k), dtype=dtype, device=device)


class _Sweep:
    """Shared parts of the two max-plus sweeps: sizes, the final selection
    at each sequence's end, and the traceback driver."""

    def __init__(self, potentials, k: int):
        self.p, self.k = potentials, k
        self.B, self.T, self.K, self.C = potentials.batch_size, potentials.T, potentials.K, potentials.C
        self.lengths = potentials.lengths

    def run(self):
        """Forward sweep; returns `best (B, k)` and the final pointers
        `(B, k)` (flat `(c, rank)` at the last position)."""
        B, k = self.B, self.k
        best = torch.full((B, k), float("-inf"), dtype=torch.float64, device=self.p.device)
        final = torch.zeros((B, k), dtype=torch.int64, device=self.p.device)
        offset = torch.zeros(B, dtype=torch.float64, device=self.p.device)
        ends = set(self.lengths.tolist())
        for e in range(1, self.T + 1):
            if e % RENORM_INTERVAL == 0:
                offset = offset + self.renormalize()
            alpha = self.step(e)  # (B, C, k)
            if e in ends:
                values, index = _top(self.closing(alpha).reshape(B, -1), k)
                here = (self.lengths == e)[:, None]
                best = torch.where(here, values.double() + offset[:, None], best)
                final = torch.where(here, index, final)
        return best.to(self.p.dtype), final

    def renormalize(self) -> torch.Tensor:
        """Subtract each sequence's best ring entry from its ring (decisions
        compare entries of one sequence, so none changes) and return it,
        `(B,)` float64: scores stay O(1) and keep their precision at any T."""
        shift = self.ring.flatten(1).amax(dim=1)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        self.ring = self.ring - shift[:, None, None, None]
        return shift.double()

    def traceback(self, final: torch.Tensor, alive: torch.Tensor):
        """Follow the pointers of every `(rank, sequence)` chain at once, on
        the host (one small step per segment: numpy's per-call cost, not a
        device launch, bounds it).

        Returns `starts (k, B, T)` bool and `first_labels (k, B, T)` int64
        (the label at each start, -1 elsewhere), on the potentials' device."""
        k, B, T = self.k, self.B, self.T
        self.host = {name: table.cpu().numpy() for name, table in self.pointers.items()}
        final = final.T.reshape(-1).cpu().numpy()
        n = np.flatnonzero(alive.T.reshape(-1).cpu().numpy())  # chain n = rank * B + sequence
        b = n % B
        e = self.lengths.cpu().numpy()[b]
        c, r = final[n] // k, final[n] % k
        starts = np.zeros((k * B, T), dtype=bool)
        first_labels = np.full((k * B, T), -1, dtype=np.int64)
        while n.size:
            s, c_prev, r_prev = self.back(b, e, c, r)
            starts[n, s] = True
            first_labels[n, s] = c
            more = s > 0
            n, b, e, c, r = n[more], b[more], s[more], c_prev[more], r_prev[more]
        device = self.p.device
        return (torch.from_numpy(starts).view(k, B, T).to(device),
                torch.from_numpy(first_labels).view(k, B, T).to(device))


class _FactorizedSweep(_Sweep):
    """`(C, C)` transitions: alternate the duration and transition half-steps."""

    def __init__(self, potentials, k: int):
        super().__init__(potentials, k)
        B, T, K, C = self.B, self.T, self.K, self.C
        self.f = potentials.log_factors()
        self.transition_t = self.f.transition.T[None, :, :, None]  # (1, C_dst, C_src, 1)
        ring = torch.full((B, C, K, k), float("-inf"), dtype=potentials.dtype, device=potentials.device)
        ring[:, :, 0, 0] = self.f.start + self.f.enter[:, 0]
        self.ring = ring  # v[s] = u[s] + enter[s], slot j = start e-1-j (dim 2)
        self.duration = self.f.duration.transpose(1, 2)[..., None]  # (B, C, K, 1)
        self.pointers = {"alpha": _pointer_table(B, T, C, k, K * k, potentials.device),  # (j, rank)
                         "u": _pointer_table(B, T, C, k, C * k, potentials.device)}  # (c', rank)

    def step(self, e: int) -> torch.Tensor:
        B, K, C, k = self.B, self.K, self.C, self.k
        candidates = (self.ring + self.duration).view(B, C, K * k)
        values, index = _top(candidates, k)
        self.pointers["alpha"][:, e] = index
        alpha = values + self.f.leave[:, e - 1, :, None]
        if e < self.T:
            candidates = (alpha[:, None] + self.transition_t).reshape(B, C, C * k)
            values, index = _top(candidates, k)
            self.pointers["u"][:, e] = index
            v = values + self.f.enter[:, e, :, None]
            self.ring = torch.cat([v[:, :, None], self.ring[:, :, :-1]], dim=2)
        return alpha

    def closing(self, alpha: torch.Tensor) -> torch.Tensor:
        return alpha + self.f.end[None, :, None]

    def back(self, b, e, c, r):
        """From chains at `(b, e, c, r)` (numpy): the start of their segment,
        the previous label and its rank."""
        k = self.k
        index = self.host["alpha"][b, e, c, r].astype(np.int64)
        s = e - 1 - index // k
        index = self.host["u"][b, s, c, index % k].astype(np.int64)  # row 0 unused: s = 0 ends the chain
        return s, index // k, index % k


class _GeneralSweep(_Sweep):
    """Duration-dependent transitions or explicit edges: one joint step over
    (duration, previous label)."""

    def __init__(self, potentials, k: int):
        super().__init__(potentials, k)
        B, T, K, C = self.B, self.T, self.K, self.C
        self.program = ScanProgram(potentials, MaxSemiring())
        ring = torch.full((B, K, C, k), float("-inf"), dtype=potentials.dtype, device=potentials.device)
        ring[:, 0, :, 0] = self.program.initial_alpha_or_v()[0]
        self.ring = ring  # alpha rows, slot j = position e-1-j
        self.pointers = {"alpha": _pointer_table(B, T, C, k, K * C * k, potentials.device)}  # (j, c', rank)

    def step(self, e: int) -> torch.Tensor:
        B, K, C, k = self.B, self.K, self.C, self.k
        block = self.program.edge_block(e)[0]  # (B, K, C_dst, C_src)
        candidates = self.ring[:, :, None] + block[..., None]  # (B, K, C_dst, C_src, k)
        values, index = _top(candidates.permute(0, 2, 1, 3, 4).reshape(B, C, K * C * k), k)
        self.pointers["alpha"][:, e] = index
        self.ring = torch.cat([values[:, None], self.ring[:, :-1]], dim=1)
        return values

    def closing(self, alpha: torch.Tensor) -> torch.Tensor:
        if self.p.is_explicit:
            return alpha
        return alpha + self.p.end[None, :, None]

    def back(self, b, e, c, r):
        k, C = self.k, self.C
        index = self.host["alpha"][b, e, c, r].astype(np.int64)
        j, rest = index // (C * k), index % (C * k)
        return e - 1 - j, rest // k, rest % k
