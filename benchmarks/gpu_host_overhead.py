"""What input validation costs a back-to-back Log forward on a GPU.

    python3 -u benchmarks/gpu_host_overhead.py      # seconds on an H200

`log_partition` under no_grad on fresh `SemiMarkovPotentials` with
`validate_args=True` (the default: the NaN/inf checks of every potential
are read back from the device once per call) and `False`, 50 calls back to
back per timing, median of 5 timings, at the sizes of the host-overhead
target. The device read waits for the GPU work queued before it, so the
host's work after it (the factors, two launches) is no longer hidden behind
the previous call's kernels; without it the calls run at the kernels' pace.
"""
from __future__ import annotations

import statistics
import time

import torch

from semiring_semicrf import SemiMarkovPotentials, log_partition

SIZES = [(16, 2000, 16, 12), (4, 1000, 32, 24)]
CALLS, TIMINGS = 50, 5


def per_call(fn) -> float:
    """Median seconds per call of `fn`, `CALLS` back to back per timing."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(TIMINGS):
        start = time.perf_counter()
        for _ in range(CALLS):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / CALLS)
    return statistics.median(times)


def main() -> None:
    g = torch.Generator().manual_seed(0)
    for B, T, K, C in SIZES:
        scores = torch.randn(B, T, C, generator=g)
        scores = (scores - scores.mean(1, keepdim=True)).cuda()
        transition = (0.5 * torch.randn(C, C, generator=g)).cuda()
        duration = (0.5 * torch.randn(K, C, generator=g)).cuda()
        for validate in (True, False):
            def forward(inputs=(scores, transition, duration), validate=validate):
                with torch.no_grad():
                    return log_partition(SemiMarkovPotentials(*inputs, validate_args=validate))
            print(f"{(B, T, K, C)} validate_args={validate}: {1e3 * per_call(forward):.3f} ms per forward", flush=True)


if __name__ == "__main__":
    main()
