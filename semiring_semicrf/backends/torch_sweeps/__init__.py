"""The torch rung: the Log sweeps in PyTorch, row by row without autograd
(:mod:`.sweeps` drives them, :mod:`.recurrences` holds the two recurrences),
on structured potentials and any device. The same sweeps on several
:mod:`.lanes` give Hessian-vector products (a tangent lane, in the inside and
the outside) and entropy, cross-entropy and KL (an information lane, in the
inside). Decoding and sampling go to the reference rung, whose scan already
is plain PyTorch."""
from __future__ import annotations

from ...posterior import Posterior
from ..base import Backend
from .lanes import Lanes, StackedFactors
from .sweeps import inside, outside

__all__ = ["TorchBackend", "inside", "outside", "hvp", "information"]

_TANGENT = Lanes(("p", "tangent"))


def hvp(factors, tangent) -> tuple:
    """`(posterior, its tangent)` (see :meth:`Backend.hvp`): the inside and
    outside sweeps on p's lane and a tangent lane."""
    lanes = StackedFactors(_TANGENT, [factors, tangent])
    _, saved = inside(lanes)
    both = outside(lanes, saved)
    return tuple(Posterior(*(getattr(both, name)[lane].to(factors.dtype) for name in Posterior.FIELDS))
                 for lane in range(2))


def information(p, q, kind: str):
    """`(B,)`: `kind` of p (and q), from one inside sweep with an
    information lane (see :meth:`Backend.information`)."""
    parts = [p, None] if q is None else [p, q, None]
    kinds = ("p", kind) if q is None else ("p", "q", kind)
    results, _ = inside(StackedFactors(Lanes(kinds), parts), keep=False)
    return results[-1]


class TorchBackend(Backend):
    """The PyTorch Log sweeps (`inside`, `outside`)."""

    name = "torch"
    queries = frozenset({"log", "hvp", "information"})

    def unsupported_reason(self, potentials, requested: bool = False) -> str | None:
        if potentials.is_explicit:
            return "explicit edge potentials have no factors: they take the reference scan"
        return None

    def inside(self, prepared, low_memory: bool = False):
        return inside(prepared, low_memory)

    def log_partition(self, prepared):
        return inside(prepared, keep=False)[0]

    def outside(self, prepared, saved, keep: bool = False):
        return outside(prepared, saved)  # reads `saved` only

    def hvp(self, prepared, tangent, saved=None, posterior: bool = True):
        # the tangent lane needs p's lane alongside: both are swept again, and p's posterior comes with them
        del saved, posterior
        return hvp(prepared, tangent)

    def information(self, prepared, q, kind: str, tangent=None):
        del tangent  # an hvp sweeps p's lane again beside the tangent's: nothing to start or keep
        return information(prepared, q, kind), None
