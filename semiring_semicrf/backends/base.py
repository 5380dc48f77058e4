"""The contract every rung of the backend ladder implements (see
:mod:`semiring_semicrf.backends`)."""
from __future__ import annotations

from typing import Optional

#: The queries of the contract: "log" is the Log forward-backward
#: (`inside` and `outside`), the others are named after their method.
QUERIES = ("log", "viterbi", "kbest", "sample", "hvp", "information")

#: The quantities of the "information" query.
INFORMATION = ("entropy", "cross_entropy", "kl")


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

    def hvp(self, prepared, tangent, saved=None):
        """`(posterior, its tangent)`: the :class:`~semiring_semicrf.posterior.Posterior`
        and its directional derivative along `tangent` (the `Factors` of
        potentials holding the direction, finite): every field's derivative,
        `log_z`'s being `<grad log Z, tangent>`, the other fields each
        sequence's Hessian of log Z times the tangent (forward mode: the
        inside and outside sweeps on dual numbers). `saved`: `inside`'s, if at
        hand (a rung may reuse it)."""
        raise NotImplementedError

    def information(self, p, q, kind: str):
        """`(value, saved)`: `value (B,)` in `p`'s dtype is `kind` (one of
        :data:`INFORMATION`) of the distributions of prepared `p` and `q`
        (None for "entropy"): `H(p)`, `H(p, q)` or `KL(p || q)`, in nats,
        with an error that scales with the result, not with log Z (each
        state's expected surprisal, summed in float64). Conventions: `+inf`
        where p gives mass to a segmentation q forbids; 0 where p has no
        segmentation. `saved`: None, or `(p's, q's)` forward as `inside`
        keeps it (q's None for "entropy"), for a later `hvp` of p and
        `outside` of q by this rung."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.name} backend>"
