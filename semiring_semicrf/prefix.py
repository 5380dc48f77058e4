"""Prefix sums along the time axis of `(B, T, C)` tensors."""
from __future__ import annotations

import torch


def cumsum_over_time_(x: torch.Tensor) -> torch.Tensor:
    """`out[b, t, c] = sum_{s <= t} x[b, s, c]` for `x (B, T, C)`, contiguous.

    Pass a tensor you own and use the result: on the CPU it is `x` itself,
    summed in place (no second `(B, T, C)` buffer: the low-memory backward
    counts on it). On CUDA it is a new tensor, summed with time as the
    innermost axis: PyTorch scans any other axis there with one sequential
    thread per `(b, c)` column, which took 249 ms for a `(1, 10^6, 8)` tensor
    on an H100, against 1.7 ms innermost.
    """
    if x.device.type == "cuda":
        return x.transpose(1, 2).cumsum(dim=-1).transpose(1, 2).contiguous()
    return x.cumsum_(dim=1)
