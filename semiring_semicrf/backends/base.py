"""The contract every rung of the backend ladder implements (see
:mod:`semiring_semicrf.backends`)."""
from __future__ import annotations

from typing import Optional

#: The queries of the contract: "log" is the Log forward-backward
#: (`inside` and `outside`), the others are named after their method
#: ("scan": the generic scan of any semiring).
QUERIES = ("log", "viterbi", "kbest", "sample", "scan")


class Backend:
    """One rung of the ladder. Subclasses set `name` and `queries` (the
    queries they implement themselves) and implement those methods; a query
    they do not implement goes to the rung below."""

    name: str = ""
    queries: frozenset = frozenset()

    def unsupported_reason(self, potentials, requested: bool = False) -> Optional[str]:
        """None if this rung can run these potentials at all, else why not.
        `requested`: the rung was named by the caller (not chosen by "auto")."""
        return None

    def query_reason(self, potentials, query: str, **options) -> Optional[str]:
        """None if this rung runs `query` with these `options`, else why not."""
        return None if query in self.queries else f"the {self.name} backend does not implement {query!r}"

    def answers(self, potentials, query: str, requested: bool = False, **options) -> bool:
        """Whether this rung runs `query` on these potentials."""
        return (self.unsupported_reason(potentials, requested) is None
                and self.query_reason(potentials, query, **options) is None)

    # -- the contract ---------------------------------------------------------
    def inside(self, prepared, low_memory: bool = False):
        """`(log_z (B,), saved)`: the Log forward sweep."""
        raise NotImplementedError

    def log_partition(self, prepared):
        """`log Z (B,)` when no backward follows: the forward sweep keeping
        nothing of size T (a rung may override it with a leaner sweep)."""
        return self.inside(prepared, low_memory=True)[0]

    def outside(self, prepared, saved):
        """The :class:`~semiring_semicrf.posterior.Posterior` from `inside`'s `saved`."""
        raise NotImplementedError

    def viterbi(self, prepared):
        """`(score (B,), labels (B, T) int64, starts (B, T) bool)`."""
        raise NotImplementedError

    def kbest(self, prepared, k: int):
        """`(scores (k, B), labels (k, B, T) int64, starts (k, B, T) bool)`, best first."""
        raise NotImplementedError

    def sample(self, prepared, num_samples: int, generator=None):
        """`(labels (N, B, T) int64, starts (N, B, T) bool)`: exact samples."""
        raise NotImplementedError

    def scan(self, prepared: tuple, semiring):
        """`semiring.extract(result)` of the generic scan over `prepared` (the
        tuple of `semiring.num_potentials` prepared potentials), differentiable
        when they require grad."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.name} backend>"
