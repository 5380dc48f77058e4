"""Triton kernels for the Log and Max semirings (shipped as
``semiring_semicrf.kernels``): the backend contract of
:mod:`semiring_semicrf.backends`.

- :func:`inside`: the Log forward sweep, one program per sequence, the ring
  buffer of the last `K` rows in registers, segment potentials evaluated on
  the fly from the factors, float32 with running normalization.
- :func:`outside`: the posterior as a mass-conserving flow right to left
  from the forward's `O(T C)` tables (transition counts on the way), then
  the duration counts as a parallel, fixed-order reduction over blocks.
- :func:`viterbi`: the Max sweep storing small-integer backpointers, then a
  traceback kernel.

They run the factorized recurrence, so potentials with duration-dependent
`(K, C, C)` transitions (and explicit edges) are not theirs:
:func:`unsupported_reason` says so and the dispatcher routes them to PyTorch.
Boundary scores (`start_scores`, `end_scores`) are part of the factors and run
here. On CPU tensors the kernels run only under ``TRITON_INTERPRET=1`` (tests);
:func:`unsupported_reason` reports CPU tensors so that dispatch never picks them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..backends import Posterior
from .backward import outside_sweep
from .common import KernelInputs, kernel_inputs, kernel_limits_reason
from .forward import forward_sweep
from .traceback import viterbi_decode

__all__ = ["inside", "outside", "viterbi", "unsupported_reason", "InsideTables"]


@dataclass
class InsideTables:
    """What :func:`inside` keeps for :func:`outside`: the kernels' inputs
    (gathered once), `alpha_hat`, `u_hat` `(B, T+1, C)` float32 (inside
    values minus the running scale), the scale `N (B, T+1)` float64, and
    `log_z (B,)`."""

    inputs: KernelInputs
    alpha_hat: torch.Tensor
    u_hat: torch.Tensor
    scale: torch.Tensor
    log_z: torch.Tensor


def unsupported_reason(potentials) -> Optional[str]:
    """None if the kernels run these potentials (CUDA, float32, `(C, C)`
    transition), else why not (the dispatcher then uses PyTorch)."""
    if potentials.device.type != "cuda":
        return f"tensors are on {potentials.device}, the kernels need CUDA"
    return kernel_limits_reason(potentials)


def inside(potentials, low_memory: bool = False):
    """Log forward sweep. Returns `(log_z (B,), saved)` with `saved` an
    :class:`InsideTables`. `low_memory` changes nothing here: the kernels
    always keep the `O(T C)` float32 alpha/u tables, the size of the
    gradient the backward returns anyway, and never anything of size
    `T K C` or `T C^2`."""
    del low_memory
    inputs = kernel_inputs(potentials)
    log_z, _, alpha_hat, u_hat, scale = forward_sweep(inputs, max_semiring=False)
    return log_z, InsideTables(inputs, alpha_hat, u_hat, scale, log_z)


def outside(potentials, saved: InsideTables) -> Posterior:
    """Log backward sweep from :func:`inside`'s tables: the posterior
    expected counts (see :class:`~semiring_semicrf.backends.Posterior`)."""
    segment_start, segment_end, transition, duration = outside_sweep(saved.inputs, saved.alpha_hat, saved.u_hat,
                                                                     saved.scale)
    batch = torch.arange(segment_end.shape[0], device=segment_end.device)
    last = segment_end[batch, potentials.lengths.to(segment_end.device) - 1]
    return Posterior(saved.log_z, segment_start, segment_end, transition, duration,
                     segment_start[:, 0].clone(), last)


def viterbi(potentials):
    """Best segmentation: `(score (B,), labels (B, T) int64, starts (B, T) bool)`,
    `labels` -1 and `starts` False past each length."""
    return viterbi_decode(kernel_inputs(potentials))
