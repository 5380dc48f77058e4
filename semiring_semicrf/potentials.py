"""Potentials of a semi-Markov CRF: what a segmentation's score is made of.

Conventions (docs/model.md). A segmentation tiles `[0, L)` with labelled
segments; segment `[s, s + d)` labelled `c` after a segment labelled `c'`
scores

    scores[s:s+d, c].sum() + duration[d-1, c] + transition[c', c]   (or start[c] if s == 0)
    + start_scores[s, c] + end_scores[s+d-1, c]                      (optional extras)
    + end[c]                                                         (if s + d == L)

with `transition` either `(C, C)` (`[c_src, c_dst]`) or duration-dependent
`(K, C, C)` (`[d-1, c_src, c_dst]`, flash-semicrf's layout).

:class:`SemiMarkovPotentials` holds and checks the user's tensors; every
backend reads them prepared as :class:`~semiring_semicrf.factors.Factors`
(zero-centred prefix sums, the segment factors, the first-segment
convention), built once by :meth:`SemiMarkovPotentials.factors`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, TypeVar

import torch

from . import validation as V
from .factors import Factors

#: The former name of :class:`~semiring_semicrf.factors.Factors`.
LogFactors = Factors


#: The per-position `(B, T, C)` inputs: their padding is never read.
PER_POSITION = ("scores", "start_scores", "end_scores")


def _valid_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """`(B, T)` bool: position `t < lengths[b]`."""
    return torch.arange(T, device=lengths.device) < lengths[:, None]


_Converted = TypeVar("_Converted", bound="_Conversions")


class _Conversions:
    """`to`, `double` and `float` for potentials (`tensors()` and `lengths`;
    `_with(tensors, lengths)` builds the copy)."""

    lengths: torch.Tensor

    if TYPE_CHECKING:  # what a subclass defines
        def tensors(self) -> dict[str, torch.Tensor]:
            ...

        def _with(self: _Converted, tensors: dict, lengths: torch.Tensor) -> _Converted:
            ...

    def to(self: _Converted, *args, **kwargs) -> _Converted:
        """The potentials converted by `torch.Tensor.to(*args, **kwargs)`: a
        dtype, a device, both (`to(device, dtype)`, keywords), or a tensor
        whose dtype and device to take. Lengths stay int64 and move with the
        tensors; half and bfloat16 are upcast to float32 as at construction.
        Differentiable; `self` when nothing changes."""
        tensors = self.tensors()
        converted = {name: t.to(*args, **kwargs) for name, t in tensors.items()}
        if all(converted[name] is t for name, t in tensors.items()):
            return self
        first = next(iter(converted.values()))
        if not first.is_floating_point():
            raise TypeError(f"{type(self).__name__}.to: potentials are log-potentials and need a floating dtype, "
                            f"got {first.dtype}")
        return self._with(converted, self.lengths.to(first.device))

    def double(self: _Converted) -> _Converted:
        """`self.to(torch.float64)`."""
        return self.to(torch.float64)

    def float(self: _Converted) -> _Converted:
        """`self.to(torch.float32)`."""
        return self.to(torch.float32)


class SemiMarkovPotentials(_Conversions):
    """Structured potentials (see module docstring for the score).

    Args:
        scores: `(B, T, C)` per-position label scores.
        transition: `(C, C)` `[c_src, c_dst]`, or `(K, C, C)` `[d-1, c_src, c_dst]`.
        duration: `(K, C)` `[d-1, c]`; its first dim defines K (>= 1).
        lengths: `(B,)` integers in `[1, T]`; default all T.
        start, end: `(C,)` first/last-segment label scores; default zeros.
        start_scores, end_scores: optional `(B, T, C)` scores of a segment
            starting at / ending at (inclusive) a position.
        validate_args: also reject NaN and +inf in any input, and -inf in
            `scores`, at the positions inside the lengths (shape, dtype and
            range checks always run). These checks read values; while
            `torch.compile` traces, they are made where the values are used
            instead (the log partition's custom operator), so that
            `fullgraph=True` compiles. During a CUDA graph capture no value
            can be read: pass False there (True raises), and the lengths'
            range is not checked (they are clamped into `[0, T]`).
        center: zero-centre the scores before their prefix sums (the
            default: float32 stays accurate at any T). Turn it off when the
            potentials are exact integers and a semiring needs exact ties.

    Half and bfloat16 inputs are upcast to float32; all floating inputs must
    then share one dtype and one device (lengths may live on the CPU).
    Positions past a sequence's length are ignored, whatever `scores`,
    `start_scores` and `end_scores` hold there (NaN, -inf from masked
    logits, ...): every backend reads them through
    :class:`~semiring_semicrf.factors.Factors`, which zeroes them, and
    their gradient is exactly 0.

    :meth:`to`, :meth:`double` and :meth:`float` convert every tensor as
    `torch.Tensor.to` would, keeping the lengths (int64) and `center`.
    """

    is_explicit: Literal[False] = False

    def __init__(self, scores: torch.Tensor, transition: torch.Tensor, duration: torch.Tensor,
                 lengths: torch.Tensor | Sequence[int] | None = None, start: torch.Tensor | None = None,
                 end: torch.Tensor | None = None, start_scores: torch.Tensor | None = None,
                 end_scores: torch.Tensor | None = None, *, validate_args: bool = True, center: bool = True):
        scores = V.as_float_tensor("scores", scores, ndim=3)
        B, T, C = scores.shape
        if T < 1 or C < 1:
            raise ValueError(f"scores must have shape (B, T, C) with T >= 1 and C >= 1, got {tuple(scores.shape)}")
        duration = V.as_float_tensor("duration", duration, ndim=2)
        K = duration.shape[0]
        if K < 1:
            raise ValueError("duration must have shape (K, C) with K >= 1 (the longest segment), "
                             f"got {tuple(duration.shape)}")
        V.check_shape("duration", duration, (K, C), "(K, C)")
        transition = V.as_float_tensor("transition", transition)
        if transition.dim() == 3:
            V.check_shape("transition", transition, (K, C, C), "(K, C, C)")
        else:
            V.check_shape("transition", transition, (C, C), "(C, C) or (K, C, C)")
        start = scores.new_zeros(C) if start is None else V.as_float_tensor("start", start)
        end = scores.new_zeros(C) if end is None else V.as_float_tensor("end", end)
        V.check_shape("start", start, (C,), "(C,)")
        V.check_shape("end", end, (C,), "(C,)")
        extras = {}
        for name, value in (("start_scores", start_scores), ("end_scores", end_scores)):
            if value is not None:
                value = V.as_float_tensor(name, value)
                V.check_shape(name, value, (B, T, C), "(B, T, C)")
            extras[name] = value
        named = {"transition": transition, "duration": duration, "start": start, "end": end,
                 **{k: v for k, v in extras.items() if v is not None}}
        for name, value in named.items():
            V.check_same(name, value, scores, "scores")
        V.check_capturable(validate_args, scores.device)
        self.lengths = V.check_lengths(lengths, B, T, scores.device)
        self.validate_args = bool(validate_args)
        if validate_args and not torch.compiler.is_compiling():  # padding is never read: only inside the lengths
            V.check_potential_values(scores, named, _valid_mask(self.lengths, T), PER_POSITION)
        self.scores, self.transition, self.duration = scores, transition, duration
        self.start, self.end = start, end
        self.start_scores, self.end_scores = extras["start_scores"], extras["end_scores"]
        self.center = bool(center)
        self._factors: Factors | None = None  # cached when no input needs grad

    # -- sizes ---------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.scores.shape[0]

    B = batch_size

    @property
    def T(self) -> int:
        return self.scores.shape[1]

    @property
    def C(self) -> int:
        return self.scores.shape[2]

    @property
    def K(self) -> int:
        return self.duration.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.scores.dtype

    @property
    def device(self) -> torch.device:
        return self.scores.device

    @property
    def duration_dependent(self) -> bool:
        """True when `transition` is `(K, C, C)` (no factorized scan then)."""
        return self.transition.dim() == 3

    def tensors(self) -> dict[str, torch.Tensor]:
        """The user's tensors by name (extras only where given)."""
        out = {"scores": self.scores, "transition": self.transition, "duration": self.duration,
               "start": self.start, "end": self.end}
        for name in ("start_scores", "end_scores"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def replace(self, **tensors: torch.Tensor) -> SemiMarkovPotentials:
        """A copy with some tensors replaced, their shapes, dtypes and devices
        checked again; the same lengths, not checked again (their range check
        reads them on the host: a device sync on CUDA), moved to the new
        tensors' device if they went elsewhere."""
        return self._with({**self.tensors(), **tensors}, self.lengths)

    def detached(self, tensors: Sequence[torch.Tensor] | None = None) -> SemiMarkovPotentials:
        """A copy holding `tensors` (in the order of :meth:`tensors`; by
        default its own) detached from autograd. They must be views of its
        own values (such as those an autograd Function's forward receives),
        so nothing is checked again: no new launch or device sync; the same
        lengths, `center` and `validate_args`."""
        own = self.tensors()
        names = list(own)
        given = list(own.values()) if tensors is None else list(tensors)
        if len(given) != len(names):
            raise ValueError(f"detached: expected {len(names)} tensors ({', '.join(names)}), got {len(given)}")
        copy = object.__new__(SemiMarkovPotentials)
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update({name: t.detach() for name, t in zip(names, given)})
        copy._factors = None
        return copy

    def _with(self, tensors: dict, lengths: torch.Tensor) -> SemiMarkovPotentials:
        """New potentials of these tensors (checked) and these lengths (not
        checked again), with this `center` and `validate_args` (the values
        are not checked again here; a compiled log partition checks them)."""
        copy = SemiMarkovPotentials(validate_args=False, center=self.center, **tensors)
        copy.lengths = lengths.to(copy.device)
        copy.validate_args = self.validate_args
        return copy

    def __getitem__(self, index) -> SemiMarkovPotentials:
        """The potentials of some sequences of the batch: an int (kept as a
        batch of one), a slice, or a 1-D index tensor or list."""
        if isinstance(index, int) and not isinstance(index, bool):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        per_sequence = {name: t[index] for name, t in self.tensors().items() if name in PER_POSITION}
        return self._with({**self.tensors(), **per_sequence}, self.lengths[index])

    def expand(self, batch_size: int) -> SemiMarkovPotentials:
        """A batch of `batch_size` from a batch of one (or of `batch_size`:
        itself), broadcast as `torch.Tensor.expand` does: views, no copy."""
        size = self.batch_size
        if size not in (1, batch_size) or batch_size < 0:
            raise ValueError(f"expand: a batch of {size} sequences broadcasts to {size} (or, from 1, to any "
                             f"size), not to {batch_size}")
        if size == batch_size:
            return self
        per_sequence = {name: t.expand(batch_size, *t.shape[1:]) for name, t in self.tensors().items()
                        if name in PER_POSITION}
        return self._with({**self.tensors(), **per_sequence}, self.lengths.expand(batch_size))

    # -- derived quantities ---------------------------------------------------
    def valid_mask(self) -> torch.Tensor:
        """`(B, T)` bool: position `t < lengths[b]`."""
        return _valid_mask(self.lengths, self.T)

    def factors(self) -> Factors:
        """The prepared :class:`~semiring_semicrf.factors.Factors` that every
        backend reads (zero-centred prefix sums, segment factors).

        Cached only when no input requires grad (a cached graph would be freed
        by the first backward, and factors made under `torch.no_grad()` must
        never serve a differentiable call). Potentials are snapshots:
        build new ones after changing a tensor in place.
        """
        if self._factors is not None:
            return self._factors
        factors = Factors(self)
        if not any(t.requires_grad for t in self.tensors().values()):
            self._factors = factors
        return factors

    prepare = factors
    log_factors = factors  # the former name

    def segment_log_potentials(self) -> torch.Tensor:
        """`w[b, s, d-1, c]`: a segment `[s, s+d)` labelled `c`, without
        transition/start/end terms; `-inf` where `s + d > T`. Shape
        `(B, T, K, C)`: materialized, for tests and small problems only."""
        s = torch.arange(self.T, device=self.device)[:, None]
        d = torch.arange(1, self.K + 1, device=self.device)[None, :]
        return self.factors().segment_log_potentials(s, d)

    def to_edges(self) -> torch.Tensor:
        """Materialize pytorch-struct's edge tensor `edge[b, s, d, c_dst, c_src]`,
        shape `(B, T, K+1, C, C)` (slot `d = 0` unused, `-inf`).

        The label before the first segment is pinned to `c_src = 0`, which
        carries `start[c_dst]` (all other `c_src` at `s = 0` are `-inf`);
        `end[c]` is added to segments that end at `lengths[b]`, and segments
        past the length are `-inf`. Feed pytorch-struct `lengths + 1`.
        """
        B, T, K, C = self.batch_size, self.T, self.K, self.C
        f = self.factors()
        w = self.segment_log_potentials()  # (B, T, K, C)
        s = torch.arange(T, device=self.device)
        d = torch.arange(1, K + 1, device=self.device)
        ends = s[:, None] + d[None, :]  # (T, K)
        w = w.masked_fill(ends[None, :, :, None] > self.lengths[:, None, None, None], float("-inf"))
        at_end = (ends[None] == self.lengths[:, None, None])[..., None]
        w = w + torch.where(at_end, self.end, torch.zeros_like(self.end))
        transition = f.transition_with_start.transpose(-1, -2)  # (K, C_dst, C_src + 1), virtual source last
        edge = w[..., None] + transition[None, None, ..., :C]  # (B, T, K, C_dst, C_src)
        first = torch.full((K, C, C), float("-inf"), dtype=self.dtype, device=self.device)
        first[..., 0] = transition[..., C]  # the virtual start label, pinned to c_src = 0
        edge = torch.cat([w[:, :1, ..., None] + first, edge[:, 1:]], dim=1)
        pad = torch.full((B, T, 1, C, C), float("-inf"), dtype=self.dtype, device=self.device)
        return torch.cat([pad, edge], dim=2)

    @staticmethod
    def from_edges(edge: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None, *,
                   validate_args: bool = True) -> EdgePotentials:
        """Explicit potentials from an edge tensor in pytorch-struct's layout;
        see :class:`EdgePotentials`."""
        return EdgePotentials(edge, lengths, validate_args=validate_args)


def require_potentials(potentials: object, name: str = "potentials") -> None:
    """Raise a TypeError naming `name` unless it holds potentials."""
    if not isinstance(potentials, (SemiMarkovPotentials, EdgePotentials)):
        raise TypeError(f"{name} must be SemiMarkovPotentials or EdgePotentials, got {type(potentials).__name__}")


class EdgePotentials(_Conversions):
    """Explicit potentials `edge[b, s, d, c_dst, c_src]`, shape
    `(B, T, K+1, C, C)` (slot `d = 0` ignored), pytorch-struct's layout.

    As in pytorch-struct, the label before the first segment is latent: the
    partition sums (Max maximizes) over it, and there is no end term.
    `lengths (B,)` in `[1, T]` are sequence lengths (pytorch-struct's minus 1).
    Cost of a scan: `O(K C^2)` per position.

    The edges of segments that end past their sequence's length
    (`s + d > lengths[b]`) are padding: whatever the input holds there,
    :attr:`edge` reads zeros (so their gradient is exactly 0), and
    `validate_args` does not look at them.
    """

    is_explicit: Literal[True] = True
    duration_dependent = True

    def __init__(self, edge: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None, *,
                 validate_args: bool = True):
        edge = V.as_float_tensor("edge", edge, ndim=5)
        B, T, K1, C, C2 = edge.shape
        if K1 < 2 or C != C2 or T < 1 or C < 1:
            raise ValueError(
                "edge must have shape (B, T, K+1, C, C) with K >= 1 and T, C >= 1, "
                f"got {tuple(edge.shape)}")
        V.check_capturable(validate_args, edge.device)
        self.lengths = V.check_lengths(lengths, B, T, edge.device)
        self._edge = edge
        if validate_args:
            V.check_no_nan("edge", self.edge)

    @property
    def edge(self) -> torch.Tensor:
        """The input edges, zero past each length (a fresh masked copy at
        every access, so that each use owns its autograd graph)."""
        ends = torch.arange(self.T, device=self.device)[:, None] + torch.arange(self.K + 1, device=self.device)
        return self._edge.masked_fill((ends > self.lengths[:, None, None])[..., None, None], 0.0)

    batch_size = property(lambda self: self._edge.shape[0])
    B = batch_size
    T = property(lambda self: self._edge.shape[1])
    K = property(lambda self: self._edge.shape[2] - 1)
    C = property(lambda self: self._edge.shape[3])
    dtype = property(lambda self: self._edge.dtype)
    device = property(lambda self: self._edge.device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The input tensors by name (`edge`: as given, padding included)."""
        return {"edge": self._edge}

    def _with(self, tensors: dict, lengths: torch.Tensor) -> EdgePotentials:
        """New potentials of these edges and these lengths (not checked
        again: the range check reads them on the host)."""
        copy = EdgePotentials(tensors["edge"], validate_args=False)
        copy.lengths = lengths
        return copy

    def prepare(self) -> EdgePotentials:
        """Explicit edges are their own prepared form (the reference scan reads them)."""
        return self

    def to_edges(self) -> torch.Tensor:
        return self.edge


#: What the scans, decoders and samplers take: structured or explicit potentials.
Potentials = SemiMarkovPotentials | EdgePotentials
