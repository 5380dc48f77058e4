"""What every kernel shares: the reductions, tile sizes and the inputs.

The kernels evaluate segment log-potentials on the fly from the factors of
:meth:`SemiMarkovPotentials.log_factors`
(`w(s, d, c) = enter[s, c] + duration[d-1, c] + leave[s+d-1, c]`), so the
model is exactly the one the PyTorch scan runs. They compute in float32; `K`
and `C` are padded to powers of two inside (`KP`, `CP`) and masked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def semiring_sum(x, axis: tl.constexpr, MAX: tl.constexpr):
    """`(+)` over `axis` of log-values: log-sum-exp (Log) or max (Max).

    A slice that is all `-inf` sums to `-inf` (no NaN)."""
    m = tl.max(x, axis=axis)
    if MAX:
        return m
    safe = tl.where(m == float("-inf"), 0.0, m)
    return safe + tl.log(tl.sum(tl.exp(x - tl.expand_dims(safe, axis)), axis=axis))


@triton.jit
def semiring_plus(a, b, MAX: tl.constexpr):
    """Elementwise `(+)` of log-values: log-add-exp (Log) or max (Max)."""
    m = tl.maximum(a, b)
    if MAX:
        return m
    safe = tl.where(m == float("-inf"), 0.0, m)
    return m + tl.log(1.0 + tl.exp(tl.minimum(a, b) - safe))


@triton.jit
def row_mask(labels, C, row, rows):
    """Mask of a row of `(rows, C)` at index `row`: `labels < C` when
    `0 <= row < rows`, else all False (a tensor mask also where `row` and
    `rows` are plain integers, as under the interpreter)."""
    row = labels * 0 + row
    return (labels < C) & (row >= 0) & (row < rows)


def pad(n: int) -> int:
    """The power of two >= n that a tile axis of size n is padded to."""
    return triton.next_power_of_2(max(int(n), 1))


def sweep_num_warps(kp: int, cp: int) -> int:
    """Warps for a sweep whose ring tile is `(KP, CP)`: enough threads to
    spread the `KP x CP` exponentials, few enough that the per-step
    reductions stay within a warp or two (the sweep is latency bound)."""
    size = kp * cp
    if size <= 1024:
        return 1
    if size <= 2048:
        return 2
    if size <= 4096:
        return 4
    return 8


# Offsets inside one sequence are 32-bit in the kernels.
_MAX_SEQUENCE_ELEMENTS = 2 ** 31 - 1


def kernel_limits_reason(potentials) -> Optional[str]:
    """None if the kernels compute these potentials exactly (device aside)."""
    if getattr(potentials, "is_explicit", False):
        return "explicit edge potentials have no factorized form"
    if potentials.duration_dependent:
        return "duration-dependent (K, C, C) transitions break the factorized recurrence"
    if potentials.dtype != torch.float32:
        return f"the kernels compute in float32; {potentials.dtype} potentials take the PyTorch path"
    if (potentials.T + 1) * max(potentials.C, potentials.K) > _MAX_SEQUENCE_ELEMENTS:
        return "one sequence exceeds the kernels' 32-bit offsets ((T + 1) * max(C, K) >= 2**31)"
    return None



@dataclass(frozen=True)
class KernelInputs:
    """The factors as contiguous float32 tensors on the potentials' device.

    Shapes: `enter`, `leave (B, T, C)` (rows contiguous; the batch stride
    may differ from `T C`); `duration (B, K, C)`; `transition (C, C)`
    `[src, dst]`; `start`, `end (C,)`; `lengths (B,)` int64.

    `duration_ring (B, 2, 2 KP, CP)`: two doubled tables whose row `j` holds
    `duration[b, j mod KP, c]` (`-inf` where `j mod KP >= K` or `c >= C`),
    so that a sweep reads the durations in the ring's rotated order as one
    contiguous, unmasked window; the second table also has `-inf` for
    `d = 1` (`j mod KP == 0`), the term the forward keeps apart.
    """

    enter: torch.Tensor
    leave: torch.Tensor
    duration: torch.Tensor
    duration_ring: torch.Tensor
    transition: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    lengths: torch.Tensor

    @property
    def shape(self) -> tuple:
        """`(B, T, K, C)`."""
        B, T, C = self.enter.shape
        return B, T, self.duration.shape[1], C


def kernel_inputs(potentials) -> KernelInputs:
    """Gather the factors the kernels read (no autograd graph).

    Raises:
        ValueError: when the kernels cannot run these potentials (see
            :func:`semiring_semicrf.kernels.unsupported_reason`, CPU tensors
            aside: those run under ``TRITON_INTERPRET=1``).
    """
    why_not = kernel_limits_reason(potentials)
    if why_not is not None:
        raise ValueError(f"the Triton kernels cannot run these potentials: {why_not}")
    f = potentials.log_factors()

    def prep(t: torch.Tensor) -> torch.Tensor:
        return t.detach().contiguous()

    def rows(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t if t.stride(2) == 1 and t.stride(1) == t.shape[2] else t.contiguous()

    duration = prep(f.duration)
    B, K, C = duration.shape
    KP, CP = pad(K), pad(C)
    duration_ring = duration.new_full((B, 2, 2, KP, CP), float("-inf"))
    duration_ring[:, :, :, :K, :C] = duration[:, None, None]
    duration_ring[:, 1, :, 0] = float("-inf")
    return KernelInputs(rows(f.enter), rows(f.leave), duration, duration_ring,
                        prep(f.transition), prep(f.start), prep(f.end),
                        potentials.lengths.to(potentials.device).contiguous())
