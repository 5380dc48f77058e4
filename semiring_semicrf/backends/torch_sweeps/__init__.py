"""The torch rung: the Log sweeps in PyTorch, row by row without autograd
(:mod:`.sweeps` drives them, :mod:`.recurrences` holds the two recurrences),
on structured potentials and any device. Decoding and sampling go to the
reference rung, whose scan already is plain PyTorch."""
from __future__ import annotations

from typing import Optional

from ..base import Backend
from .sweeps import inside, outside

__all__ = ["TorchBackend", "inside", "outside"]


class TorchBackend(Backend):
    """The PyTorch Log sweeps (`inside`, `outside`)."""

    name = "torch"
    queries = frozenset({"log"})

    def unsupported_reason(self, potentials, requested: bool = False) -> Optional[str]:
        if potentials.is_explicit:
            return "explicit edge potentials have no factors: they take the reference scan"
        return None

    def inside(self, prepared, low_memory: bool = False):
        return inside(prepared, low_memory)

    def log_partition(self, prepared):
        return inside(prepared, keep=False)[0]

    def outside(self, prepared, saved):
        return outside(prepared, saved)
