"""`SemiMarkovDistribution`: a semi-Markov CRF as a `torch.distributions.Distribution`.

The distribution over segmentations of each of `B` sequences,
`p(y) = exp(score(y)) / Z` (docs/model.md). Values are
:class:`~semiring_semicrf.segmentation.Segmentation` objects (`(..., B, T)`).

Everything is streamed (nothing of size `T K C` unless asked for with
:attr:`segment_marginals`) and goes through the same dispatch as
:func:`~semiring_semicrf.scan.semimarkov_scan` (the backend ladder of
:mod:`semiring_semicrf.backends`):

- `partition`, the marginals and the expected counts: one Log forward-backward
  (:mod:`semiring_semicrf.autograd`);
- `argmax`/`max`: Viterbi; `topk`: the k-best scan
  (:mod:`semiring_semicrf.decoding`); `sample`: forward filtering, backward
  sampling (:mod:`semiring_semicrf.sampling`);
- `entropy`, `cross_entropy`, `kl`: from the expected counts of `p`
  (:mod:`semiring_semicrf.information`).

Results are computed once per distribution (and grad mode) and cached; what
a property or method returns is the caller's own (a copy of the cached
value, or fresh), so editing it in place never changes a later query.

From torch's `Distribution` API it implements `mode` (the argmax),
`expand` (a batch of one broadcast to `B'` sequences), `support` (a
constraint that checks :class:`Segmentation` values), `log_prob` with
torch's broadcasting, `entropy`, `perplexity`, `enumerate_support` and
`sample`; `mean`, `variance`, `stddev`, `rsample`, `cdf` and `icdf` have no
meaning for segmentations and raise NotImplementedError naming what to use.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch.distributions import Distribution, constraints, register_kl

from . import autograd, backends, information
from .decoding import decoded_scores, viterbi
from .decoding import topk as kbest
from .posterior import Posterior
from .potentials import SemiMarkovPotentials
from .sampling import sample as draw_samples
from .scan import semimarkov_scan
from .segmentation import Segmentation
from .semirings import StdSemiring
from .testing import enumerate_segmentations

#: Default limit on the number of segmentations of one sequence that
#: :meth:`SemiMarkovDistribution.enumerate_support` will list.
SUPPORT_LIMIT = 10_000


class TopK(NamedTuple):
    """The k best segmentations: `scores (k, B)` (differentiable, `-inf` for
    missing entries) and `segmentations` `(k, B, T)`, best first."""

    scores: torch.Tensor
    segmentations: Segmentation


class SegmentationsOf(constraints.Constraint):
    """The support of a :class:`SemiMarkovDistribution`: the segmentations
    its potentials allow. `check(value)` takes a :class:`Segmentation`
    broadcastable to `(..., B, T)` and returns `(..., B)` bool: whether each
    entry tiles its sequence `[0, length)` with labels in `[0, C)`,
    durations in `[1, K]` and no part forbidden by a `-inf` (an empty entry
    is not in the support)."""

    is_discrete = True
    event_dim = 1

    def __init__(self, distribution: SemiMarkovDistribution):
        self.distribution = distribution

    def check(self, value: Segmentation) -> torch.Tensor:
        return self.distribution._broadcast(value, "value").allowed(self.distribution.potentials)

    def __repr__(self) -> str:
        p = self.distribution.potentials
        return f"SegmentationsOf(B={p.batch_size}, T={p.T}, K={p.K}, C={p.C})"


class _CountingSemiring(StdSemiring):
    """Std without the scan's renormalization, so that counts of
    segmentations stay exact integers in float64 (up to 2**53)."""

    renormalize = False


class SemiMarkovDistribution(Distribution):
    """Distribution over the segmentations of a batch of sequences.

    Args:
        scores: `(B, T, C)` per-position label scores.
        transition: `(C, C)` `[c_src, c_dst]` or `(K, C, C)` `[d-1, c_src, c_dst]`.
        duration: `(K, C)` `[d-1, c]` (K = the longest segment).
        lengths: `(B,)` in `[1, T]` (default all T).
        start, end: `(C,)` scores of the first / last segment's label.
        start_scores, end_scores: optional `(B, T, C)` scores of a segment
            starting / ending (inclusive) at a position.
        backend: "auto", "torch" or "triton" for the Log and Max sweeps.
        validate_args: check the potentials for NaN and the values given to
            :meth:`log_prob` (default: torch's global setting).

    `batch_shape` is `(B,)`, `event_shape` `(T,)`.
    """

    arg_constraints: dict = {}
    has_enumerate_support = True

    def __init__(self, scores: torch.Tensor, transition: torch.Tensor, duration: torch.Tensor,
                 lengths: torch.Tensor | Sequence[int] | None = None, start: torch.Tensor | None = None,
                 end: torch.Tensor | None = None, *, start_scores: torch.Tensor | None = None,
                 end_scores: torch.Tensor | None = None, backend: str = "auto", validate_args: bool | None = None):
        check = Distribution._validate_args if validate_args is None else bool(validate_args)
        potentials = SemiMarkovPotentials(scores, transition, duration, lengths, start, end,
                                          start_scores=start_scores, end_scores=end_scores, validate_args=check)
        self._setup(potentials, backend, validate_args)

    @classmethod
    def from_potentials(cls, potentials: SemiMarkovPotentials, backend: str = "auto",
                        validate_args: bool | None = None) -> SemiMarkovDistribution:
        """The distribution of existing :class:`SemiMarkovPotentials`."""
        if not isinstance(potentials, SemiMarkovPotentials):
            raise TypeError(
                f"potentials must be SemiMarkovPotentials, got {type(potentials).__name__} (explicit edge "
                "potentials carry a latent first label; use semiring_semicrf.decoding / .sampling on them)")
        self = cls.__new__(cls)
        self._setup(potentials, backend, validate_args)
        return self

    def _setup(self, potentials: SemiMarkovPotentials, backend: str, validate_args: bool | None) -> None:
        backends.check_name(backend)
        self.potentials, self.backend = potentials, backend
        self._cache: dict = {}
        super().__init__(torch.Size([potentials.batch_size]), torch.Size([potentials.T]), validate_args=validate_args)

    def __repr__(self) -> str:
        p = self.potentials
        return (f"SemiMarkovDistribution(B={p.batch_size}, T={p.T}, K={p.K}, C={p.C}, dtype={p.dtype}, "
                f"device={p.device}, backend={self.backend!r})")

    def _cached(self, name: str, compute):
        """Compute once per distribution and grad mode; a result that carries
        an autograd graph is recomputed at every call (so each use owns its
        graph and can be backpropagated on its own). For use inside the
        class: the public properties hand out copies."""
        key = (name, torch.is_grad_enabled())
        if key in self._cache:
            return self._cache[key]
        result = compute()
        if not (isinstance(result, torch.Tensor) and result.requires_grad):
            self._cache[key] = result
        return result

    @property
    def lengths(self) -> torch.Tensor:
        return self.potentials.lengths

    # -- conversions and shapes ------------------------------------------------------
    def to(self, *args, **kwargs) -> SemiMarkovDistribution:
        """The same distribution with its potentials converted by
        `torch.Tensor.to`'s arguments (a dtype, a device, both, keywords, or
        a tensor; see :meth:`SemiMarkovPotentials.to`), keeping the lengths
        (int64), `center`, the backend and `validate_args`."""
        return self._with(self.potentials.to(*args, **kwargs))

    def double(self) -> SemiMarkovDistribution:
        """`self.to(torch.float64)`."""
        return self.to(torch.float64)

    def float(self) -> SemiMarkovDistribution:
        """`self.to(torch.float32)`."""
        return self.to(torch.float32)

    def expand(self, batch_shape: Sequence[int],
               _instance: SemiMarkovDistribution | None = None) -> SemiMarkovDistribution:
        """The distribution broadcast to `batch_shape = (B',)`: a batch of one
        sequence repeated `B'` times (views, as `torch.Tensor.expand`), or
        the same batch when `B' = B`."""
        batch_shape = torch.Size(batch_shape)
        if len(batch_shape) != 1:
            raise ValueError(f"expand: a SemiMarkovDistribution has a 1-D batch (B,); batch_shape must be (B',), "
                             f"got {tuple(batch_shape)}")
        new = self._get_checked_instance(SemiMarkovDistribution, _instance)
        new._setup(self.potentials.expand(batch_shape[0]), self.backend, self._validate_args)
        return new

    def _with(self, potentials: SemiMarkovPotentials) -> SemiMarkovDistribution:
        return SemiMarkovDistribution.from_potentials(potentials, self.backend, self._validate_args)

    def _broadcast(self, value: Segmentation, name: str) -> Segmentation:
        """`value` broadcast to `(..., B, T)` as torch broadcasts: `(T,)`,
        `(1, T)` or `(N, 1, T)` over the batch."""
        if not isinstance(value, Segmentation):
            raise TypeError(f"{name} must be a Segmentation (see Segmentation.from_segments / from_labels), "
                            f"got {type(value).__name__}")
        B, T = self.potentials.batch_size, self.potentials.T
        leading = value.lengths.shape
        if value.T != T or (leading and leading[-1] not in (1, B)):
            raise ValueError(f"{name} must be a Segmentation of shape (..., B, T) = (..., {B}, {T}) (or one that "
                             f"broadcasts to it, such as (T,) or (N, 1, T)), got {tuple(value.shape)}")
        shape = torch.Size((*leading[:-1], B))
        return value if shape == leading else value.expand(shape)

    @property
    def support(self) -> SegmentationsOf:
        """The segmentations this distribution allows (:class:`SegmentationsOf`)."""
        return SegmentationsOf(self)

    # -- normalizer and probabilities ---------------------------------------------
    def _partition(self) -> torch.Tensor:
        return self._cached("partition", lambda: autograd.log_partition(self.potentials, backend=self.backend))

    @property
    def partition(self) -> torch.Tensor:
        """`log Z (B,)`, differentiable (streaming backward)."""
        return self._partition().clone()

    # The values of this distribution are Segmentations where torch's base class types them as Tensors:
    # log_prob, sample, mode and enumerate_support override it with that type (type: ignore[override]).
    def log_prob(self, value: Segmentation) -> torch.Tensor:  # type: ignore[override]
        """`log p(value)`, `(..., B)` for a Segmentation that broadcasts to
        `(..., B, T)` (`(T,)` or `(1, T)`: one segmentation scored in every
        sequence; `(N, 1, T)`: N of them); `-inf` for empty entries, and for
        every value of a sequence with no allowed segmentation (log Z = -inf;
        finite zero gradients there). Raises ValueError (under
        `validate_args`) for segments past the length, gaps, labels out of
        range or segments longer than K; those checks read values on the
        host and are skipped while `torch.compile` traces (as dynamo turns
        torch.distributions' validation off), so that a compiled loss is
        one graph."""
        return self._log_prob(value, "value")

    def _log_prob(self, value: Segmentation, name: str) -> torch.Tensor:
        """:meth:`log_prob`, with errors that call the value `name`."""
        value = self._broadcast(value, name)
        if self._validate_args and not torch.compiler.is_compiling():
            value.validate(self.potentials, name=name)
        partition = self._partition()
        score = value.log_potential(self.potentials, validate=False)
        return torch.where(torch.isneginf(partition), float("-inf"), score - partition)

    @property
    def count(self) -> torch.Tensor:
        """`(B,)` float64: the number of allowed segmentations (forbidden
        `-inf` potentials excluded), exact integers up to 2**53."""
        def compute():
            tensors: dict[str, Any] = {name: torch.where(torch.isneginf(t), t, torch.zeros_like(t)).double().detach()
                       for name, t in self.potentials.tensors().items()}
            unit = SemiMarkovPotentials(lengths=self.lengths, validate_args=False, **tensors)
            with torch.no_grad():
                return semimarkov_scan(unit, _CountingSemiring())
        return self._cached("count", compute).clone()

    def enumerate_support(  # type: ignore[override]  # a Segmentation (see log_prob)
            self, expand: bool = True, *, limit: int = SUPPORT_LIMIT) -> Segmentation:
        """Every allowed segmentation, `(n, B, T)`, for tiny problems.

        `n` is the largest number of allowed segmentations of a sequence;
        shorter lists are padded with empty entries (`log_prob` -inf). The
        support differs per sequence, so it is always expanded (`expand` is
        accepted for torch's API). Raises ValueError when a sequence has more
        than `limit` segmentations, forbidden ones included (checked before
        listing any).
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        p = self.potentials
        sizes = [_number_of_segmentations(L, p.K, p.C) for L in p.lengths.tolist()]
        if max(sizes, default=0) > limit:
            b = max(range(len(sizes)), key=lambda i: sizes[i])
            raise ValueError(f"enumerate_support: sequence {b} (length {int(p.lengths[b])}, K={p.K}, C={p.C}) has "
                             f"more than limit={limit} segmentations; it is meant for tiny problems")
        n = max(sizes, default=0)
        batch = [[list(enumerate_segmentations(L, p.K, p.C)[i]) if i < size else [] for L, size in
                  zip(p.lengths.tolist(), sizes)] for i in range(n)]
        flat = Segmentation.from_segments([seq for row in batch for seq in row], p.T, device=p.device)
        shape = (n, p.batch_size, p.T)
        value = Segmentation(flat.labels.view(shape), flat.starts.view(shape), flat.lengths.view(shape[:-1]))
        allowed = torch.isfinite(value.log_potential(p).detach())
        order = torch.sort(allowed.to(torch.int8), dim=0, descending=True, stable=True).indices  # allowed first
        n_allowed = int(allowed.sum(dim=0).max()) if allowed.numel() else 0
        labels = value.labels.gather(0, order[..., None].expand(shape))[:n_allowed]
        starts = value.starts.gather(0, order[..., None].expand(shape))[:n_allowed]
        keep = allowed.gather(0, order)[:n_allowed, :, None]
        return Segmentation(torch.where(keep, labels, torch.full_like(labels, -1)), starts & keep)

    # -- marginals ------------------------------------------------------------------
    def _posterior(self) -> Posterior:
        return self._cached("posterior", lambda: autograd.posterior(self.potentials, backend=self.backend))

    @property
    def posterior(self) -> Posterior:
        """The :class:`~semiring_semicrf.posterior.Posterior` expected counts
        (no gradient; a copy of the cached one)."""
        return self._posterior().clone()

    @property
    def marginals(self) -> torch.Tensor:
        """`(B, T, C)`: P(position t lies in a segment labelled c)."""
        return self._posterior().label_marginals()

    @property
    def boundary_marginals(self) -> torch.Tensor:
        """`(B, T)`: P(a segment starts at t)."""
        return self._posterior().boundary_marginals()

    @property
    def segment_marginals(self) -> torch.Tensor:
        """`(B, T, K, C)`: P(segment `[s, s+d)` labelled c) at `[b, s, d-1, c]`.
        Materialized (`O(B T K C)`): for moderate sizes."""
        return autograd.segment_marginals(self.potentials)

    @property
    def transition_marginals(self) -> torch.Tensor:
        """`(B, C, C)` expected `[c_src, c_dst]` transition counts (or
        `(B, K, C, C)` for duration-dependent transitions)."""
        return self._posterior().transition.clone()

    @property
    def duration_marginals(self) -> torch.Tensor:
        """`(B, K, C)` expected number of segments of length d with label c."""
        return self._posterior().duration.clone()

    # -- decoding -------------------------------------------------------------------
    def _argmax(self) -> Segmentation:
        def compute():
            _, labels, starts = viterbi(self.potentials, self.backend)
            return Segmentation._decoded(labels, starts)
        return self._cached("argmax", compute)

    @property
    def argmax(self) -> Segmentation:
        """The Viterbi segmentation `(B, T)` (ties: see :mod:`semiring_semicrf.decoding`);
        empty where no segmentation is allowed."""
        return self._argmax().clone()

    @property
    def mode(self) -> Segmentation:  # type: ignore[override]  # a Segmentation (see log_prob)
        """The most probable segmentation: :attr:`argmax`."""
        return self.argmax

    @property
    def max(self) -> torch.Tensor:
        """`(B,)` the best score, differentiable (its gradient is the
        indicator of the argmax's parts); `-inf` where nothing is allowed."""
        return self._argmax().log_potential(self.potentials, validate=False)

    def topk(self, k: int) -> TopK:
        """The k best distinct segmentations and their scores, best first."""
        scores, labels, starts = kbest(self.potentials, k, self.backend)
        value = Segmentation._decoded(labels, starts)
        return TopK(decoded_scores(self.potentials, scores, value), value)

    def sample(  # type: ignore[override]  # a Segmentation (see log_prob)
            self, sample_shape: Sequence[int] = torch.Size(),
            generator: torch.Generator | None = None) -> Segmentation:
        """Exact samples, `(*sample_shape, B, T)`; reproducible with `generator`."""
        sample_shape = torch.Size(sample_shape)
        if any(n < 0 for n in sample_shape):
            raise ValueError(f"sample_shape must hold non-negative ints, got {tuple(sample_shape)}")
        shape = (*sample_shape, self.potentials.batch_size, self.potentials.T)
        if sample_shape.numel() == 0 or self.potentials.batch_size == 0:
            device = self.potentials.device
            return Segmentation(torch.full(shape, -1, dtype=torch.int64, device=device),
                                torch.zeros(shape, dtype=torch.bool, device=device))
        labels, starts = draw_samples(self.potentials, sample_shape.numel(), generator, self.backend)
        return Segmentation._decoded(labels.reshape(shape), starts.reshape(shape))

    # -- information ------------------------------------------------------------------
    def expected_score(self, potentials: SemiMarkovPotentials | None = None) -> torch.Tensor:
        """`(B,)`: `E_p[score(y)]` under `potentials` (default p's own), from
        p's expected counts; differentiable w.r.t. `potentials` only.

        A part that `potentials` forbid (`-inf`) contributes `-inf` if p gives
        it an expected count above `sqrt(eps)` of the dtype, else 0 (its true
        count is then 0 up to rounding)."""
        q = self.potentials if potentials is None else potentials
        information.check_compatible(self.potentials, q)
        return information.expected_score(self._posterior(), self.potentials, q)

    def _other(self, other) -> SemiMarkovDistribution:
        """`other`, checked to be a distribution of the same shapes."""
        if not isinstance(other, SemiMarkovDistribution):
            raise TypeError(f"other must be a SemiMarkovDistribution, got {type(other).__name__}")
        information.check_compatible(self.potentials, other.potentials)
        return other

    def _own_posterior(self) -> Posterior | None:
        """The cached posterior, unless the result must carry p's gradient."""
        return None if information.tracks_grad(self.potentials) else self._posterior()

    def entropy(self) -> torch.Tensor:
        """`H(p) (B,)` in nats; 0 for a sequence with no allowed segmentation.
        Accurate to a fraction of itself whatever log Z is (a sum of local
        terms, :mod:`~semiring_semicrf.information`)."""
        return information.entropy(self.potentials, self.backend)

    def cross_entropy(self, other: SemiMarkovDistribution) -> torch.Tensor:
        """`H(p, q) = -E_p[log q(y)]` `(B,)`, `p = self`, `q = other`:
        `+inf` where p gives any probability to a segmentation q forbids
        (a part q scores `-inf`), 0 where p allows no segmentation."""
        q = self._other(other)  # checked here, before p's posterior: the unchecked query follows
        return information.query("cross_entropy", self.potentials, q.potentials, self.backend, self._own_posterior())

    def kl(self, other: SemiMarkovDistribution) -> torch.Tensor:
        """`KL(p || q) = E_p[log p(y) - log q(y)]` `(B,)`, `p = self`, `q = other`:
        `+inf` where p gives any probability to a segmentation q forbids
        (a part q scores `-inf`), 0 where p allows no segmentation."""
        q = self._other(other)  # checked here, before p's posterior: the unchecked query follows
        return information.query("kl", self.potentials, q.potentials, self.backend, self._own_posterior())

    # -- what segmentations do not have --------------------------------------------
    @property
    def mean(self):
        raise NotImplementedError("a segmentation has no mean; use .marginals for the expected labels "
                                  "(P(position t lies in a segment labelled c)) and .boundary_marginals for the "
                                  "expected segment starts")

    @property
    def variance(self):
        raise NotImplementedError("a segmentation has no variance; each position's label indicator has variance "
                                  "m (1 - m) for m = .marginals, and .entropy() measures the spread")

    @property
    def stddev(self):
        raise NotImplementedError("a segmentation has no standard deviation; use .marginals (m (1 - m) is each "
                                  "label indicator's variance) or .entropy()")

    def rsample(self, sample_shape=()):
        raise NotImplementedError("segmentations are discrete: there is no reparameterized sample; use .sample() "
                                  "(exact, not differentiable) with a score-function estimator (log_prob is "
                                  "differentiable), or .marginals as a differentiable relaxation")

    def cdf(self, value):
        raise NotImplementedError("segmentations have no order, hence no cdf; use .log_prob(value), or "
                                  ".enumerate_support() with .log_prob on tiny problems")

    def icdf(self, value):
        raise NotImplementedError("segmentations have no order, hence no icdf; use .sample() to draw "
                                  "segmentations or .topk(k) for the most probable ones")


@register_kl(SemiMarkovDistribution, SemiMarkovDistribution)
def _kl_semimarkov(p: SemiMarkovDistribution, q: SemiMarkovDistribution) -> torch.Tensor:
    return p.kl(q)


def _number_of_segmentations(length: int, K: int, C: int) -> int:
    """The number of segmentations of `[0, length)` with no part forbidden,
    `N(L) = C * sum_{d <= K} N(L - d)`, in Python integers (exact, and cheap
    before any listing)."""
    counts = [1]
    for L in range(1, length + 1):
        counts.append(C * sum(counts[max(0, L - K):L]))
    return counts[length]
