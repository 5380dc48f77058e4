"""One dispatch point for the Log/Max fast paths.

A *backend* specializes the scan for the Log and Max semirings on structured
potentials. It implements three operations, all without building an autograd
graph over positions:

- ``inside(potentials, low_memory=False) -> (log_z (B,), saved)``: the Log
  forward sweep; ``saved`` is whatever ``outside`` needs (tables of alpha/u,
  or ring-buffer checkpoints in low-memory mode).
- ``outside(potentials, saved) -> Posterior``: the Log backward sweep and the
  expected counts it yields (gradients and marginals all follow from them).
- ``viterbi(potentials) -> (score (B,), labels (B, T) int64, starts (B, T) bool)``:
  the Max sweep and its traceback; ``labels`` is -1 and ``starts`` False past
  each length.

``"torch"`` (pure PyTorch, any device) always exists; ``"triton"`` (CUDA)
exists when Triton imports and a GPU is present. ``backend="auto"`` picks
Triton on CUDA tensors when it is available and supports the potentials, else
PyTorch. Anything a backend does not support is routed to PyTorch, never
computed approximately.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .prefix import cumsum_over_time_

BACKEND_NAMES = ("auto", "triton", "torch")


@dataclass
class Posterior:
    """Posterior expected counts of one Log forward-backward, per sequence.

    All are probabilities/expected counts under the model, zero past each length.

    Attributes:
        log_z: `(B,)` log partition.
        segment_start: `(B, T, C)` P(a segment with label c starts at s).
        segment_end: `(B, T, C)` P(a segment with label c ends at e, inclusive,
            i.e. covers e as its last position).
        transition: `(B, C, C)` expected `[c_src, c_dst]` transition counts, or
            `(B, K, C, C)` for duration-dependent transitions.
        duration: `(B, K, C)` expected number of segments of length d, label c.
        first: `(B, C)` P(the first segment has label c).
        last: `(B, C)` P(the last segment has label c).
    """

    log_z: torch.Tensor
    segment_start: torch.Tensor
    segment_end: torch.Tensor
    transition: torch.Tensor
    duration: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor

    def label_marginals(self) -> torch.Tensor:
        """`(B, T, C)` P(position t lies in a segment labelled c): the running
        count of open segments, the prefix sum of `start[t] - end[t-1]`.
        Summing the difference (never two separate counts) keeps the running
        value in [0, 1], so float32 stays exact to rounding at any T."""
        delta = self.segment_start.clone()
        delta[:, 1:] -= self.segment_end[:, :-1]
        return cumsum_over_time_(delta)

    def boundary_marginals(self) -> torch.Tensor:
        """`(B, T)` P(a segment starts at t)."""
        return self.segment_start.sum(dim=-1)


def resolve(backend: str, potentials) -> str:
    """The concrete backend name ("triton" or "torch") for these potentials.

    Raises ValueError for an unknown name, or when "triton" is asked for but
    cannot run these potentials (no CUDA tensors, Triton missing, or an
    unsupported option such as duration-dependent transitions).
    """
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    if backend == "torch":
        return "torch"
    why_not = triton_unsupported_reason(potentials)
    if backend == "triton" and why_not is not None:
        raise ValueError(f"backend='triton' cannot run these potentials: {why_not}")
    return "torch" if why_not is not None else "triton"


def triton_unsupported_reason(potentials) -> Optional[str]:
    """None if the Triton kernels can run these potentials, else why not."""
    if getattr(potentials, "is_explicit", False):
        return "explicit edge potentials take the O(K C^2) PyTorch path"
    if potentials.device.type != "cuda":
        return f"tensors are on {potentials.device}, the kernels need CUDA"
    try:
        from . import kernels  # noqa: F401
    except ImportError as exc:  # Triton not installed
        return f"Triton is not importable ({exc})"
    return kernels.unsupported_reason(potentials)


def get(name: str, potentials):
    """The backend module implementing inside/outside/viterbi."""
    name = resolve(name, potentials)
    if name == "triton":
        from . import kernels
        return kernels
    from . import torch_backend
    return torch_backend
