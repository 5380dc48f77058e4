"""What every kernel shares: the reductions, tile sizes and the inputs.

The kernels evaluate segment log-potentials on the fly from the float32
:class:`~semiring_semicrf.factors.Factors`
(`w(s, d, c) = enter[s, c] + duration[d-1, c] + leave[s+d-1, c]`), so the
model is exactly the one every other backend runs. They compute in float32;
`K` and `C` are padded to powers of two inside (`KP`, `CP`) and masked.

Exponentials and logarithms are the hardware's approximate base-2 ones
(`ex2.approx.ftz`, `lg2.approx.ftz`: relative error ~1e-7, results below
1e-38 flushed to zero); under Triton's interpreter (CPU tests) numpy's.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
#: True when the kernels are built for Triton's interpreter (``TRITON_INTERPRET=1``
#: when this package is first imported): they then run on CPU tensors, slowly, for tests.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
#: Inline PTX is for the GPU only; the interpreter takes Triton's own exp2/log2.
HARDWARE_MATH: tl.constexpr = tl.constexpr(not INTERPRETED)


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


def duration_ring(duration: torch.Tensor) -> torch.Tensor:
    """The durations in the order a sweep's ring reads them, `(B, 2, 2 KP, CP)`.

    Two doubled tables whose row `j` holds `duration[b, j mod KP, c]`
    (`-inf` where `j mod KP >= K` or `c >= C`), so that a sweep reads the
    durations in the ring's rotated order as one contiguous, unmasked window;
    the second table also has `-inf` for `d = 1` (`j mod KP == 0`), the term
    the outside flow keeps apart. `duration (B, K, C)` float32."""
    B, K, C = duration.shape
    KP, CP = pad(K), pad(C)
    ring = duration.new_full((B, 2, 2, KP, CP), float("-inf"))
    ring[:, :, :, :K, :C] = duration.detach()[:, None, None]
    ring[:, 1, :, 0] = float("-inf")
    return ring


def sizes(factors) -> tuple:
    """`(B, T, K, C)` of the factors a kernel reads."""
    return factors.B, factors.T, factors.K, factors.C


def rows(t: torch.Tensor) -> torch.Tensor:
    """A `(B, T, C)` table whose rows the kernels can read (`C` contiguous
    values per position; any batch stride), detached."""
    t = t.detach()
    return t if t.stride(2) == 1 and t.stride(1) == t.shape[2] else t.contiguous()


def small(t: torch.Tensor) -> torch.Tensor:
    """A small factor (`duration`, `transition`, `start`, `end`) as the
    kernels read it: detached and contiguous."""
    return t.detach().contiguous()
