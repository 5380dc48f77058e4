"""What every kernel shares: the reductions, tile sizes and the inputs.

The kernels evaluate segment log-potentials on the fly from the factors of
:meth:`SemiMarkovPotentials.log_factors`
(`w(s, d, c) = enter[s, c] + duration[d-1, c] + leave[s+d-1, c]`), so the
model is exactly the one the PyTorch scan runs. They compute in float32; `K`
and `C` are padded to powers of two inside (`KP`, `CP`) and masked.

Exponentials and logarithms are the hardware's approximate base-2 ones
(`ex2.approx.ftz`, `lg2.approx.ftz`: relative error ~1e-7, results below
1e-38 flushed to zero); under Triton's interpreter (CPU tests) numpy's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
#: Inline PTX is for the GPU only; the interpreter takes Triton's own exp2/log2.
HARDWARE_MATH: tl.constexpr = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") in ("", "0"))


@triton.jit
def fast_exp2(x):
    """`2 ** x`, one MUFU.EX2 instruction (denormal results flushed to zero)."""
    if HARDWARE_MATH:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def fast_log2(x):
    """`log2(x)`, one MUFU.LG2 instruction."""
    if HARDWARE_MATH:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def semiring_sum(x, axis: tl.constexpr, MAX: tl.constexpr):
    """`(+)` over `axis` of log-values: log-sum-exp (Log) or max (Max).

    A slice that is all `-inf` sums to `-inf` (no NaN)."""
    m = tl.max(x, axis=axis)
    if MAX:
        return m
    safe = tl.where(m == float("-inf"), 0.0, m)
    scaled = tl.expand_dims(safe * LOG2E, axis)
    return safe + LN2 * fast_log2(tl.sum(fast_exp2(x * LOG2E - scaled), axis=axis))


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
    """Warps for the forward sweep whose ring tile is `(KP, CP)`: one warp
    keeps every per-step reduction in registers and shuffles (measured
    fastest on an H100 up to 2048 elements); larger tiles spread their
    exponentials over more warps."""
    size = kp * cp
    if size <= 2048:
        return 1
    if size <= 4096:
        return 4
    return 8


def flow_num_warps(kp: int, cp: int) -> int:
    """Warps for the outside flow, as measured on an H100: one for narrow
    tiles (`C <= 8`, up to 1024 elements), where the `C x C` step is small;
    else four (eight beyond 4096 elements)."""
    if cp <= 8 and kp * cp <= 1024:
        return 1
    return 4 if kp * cp <= 4096 else 8


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
    `d = 1` (`j mod KP == 0`), the term the outside flow keeps apart.
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
