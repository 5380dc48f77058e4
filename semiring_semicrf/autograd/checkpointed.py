"""Gradients through the generic scan in any semiring, by block checkpointing.

:func:`checkpointed_scan` runs :class:`~semiring_semicrf.backends.reference.ScanProgram`
block by block under `torch.utils.checkpoint`: the forward keeps only the
ring buffer (and the running result) at block boundaries, and the backward
recomputes one block's steps at a time. With blocks of `~sqrt(T)` steps the
saved state is `O(S B K C sqrt(T))` instead of the naive scan's
`O(S B K C T)` autograd graph (S = the semiring's state size), so Entropy,
cross-entropy or KL objectives can be differentiated at long T. (A block's
recomputed graph holds `O(K C)` per step, like one ring, hence `sqrt(T)`
rather than `sqrt(T K)`.)
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from ..backends.reference import ScanProgram
from ..potentials import Potentials
from ..semirings import LogSemiring, Semiring


def checkpointed_scan(potentials: Potentials | Sequence[Potentials], semiring: Semiring = LogSemiring(),
                      block_size: int | None = None) -> torch.Tensor:
    """The generic scan's result (`semiring.extract(...)`: `(B,)`, or `(k, B)`
    for KMax), differentiable with memory sublinear in T.

    Args:
        potentials: structured or explicit potentials (or a `(p, q)` tuple for
            cross-entropy/KL), as for `semimarkov_scan`.
        semiring: any :class:`Semiring`.
        block_size: steps per checkpointed block; default `ceil(sqrt(T))`.
    """
    program = ScanProgram(potentials, semiring)
    T = program.T
    if block_size is None:
        block_size = math.isqrt(T - 1) + 1
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    ring, offset, result = program.initial_state()
    tracked = torch.is_grad_enabled()
    for e0 in range(1, T + 1, block_size):
        e1 = min(T + 1, e0 + block_size)
        if tracked:
            ring, offset, result = checkpoint(program.run, ring, offset, result, e0, e1, use_reentrant=False)
        else:
            ring, offset, result = program.run(ring, offset, result, e0, e1)
    return program.extract(result)
