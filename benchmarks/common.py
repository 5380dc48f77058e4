"""Shared by the CPU benchmark scripts: their inputs; run one case in a fresh
subprocess and report its median time and its peak resident memory; print
tables.

Peak memory is the growth of the resident set (VmHWM, reset through
/proc/self/clear_refs) during the timed call, beyond what existed before it
(inputs included), with glibc's mmap threshold pinned so that freed blocks
leave the resident set at once. Linux only; elsewhere memory reads as None.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def inputs(B, T, K, C):
    """The benchmarks' problem (seed 0): `scores (B, T, C)` zero-mean per
    sequence and label (flash-semicrf's in-model centring shift is then zero,
    so all methods compute the same model), `transition (C, C)`,
    `duration (K, C)`."""
    import torch
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(B, T, C, generator=g)
    scores = scores - scores.mean(dim=1, keepdim=True)
    transition = torch.randn(C, C, generator=g) * 0.5
    duration = torch.randn(K, C, generator=g) * 0.5
    return scores, transition, duration


def _status(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def measure(fn, repeats: int = 3) -> dict:
    """Call `fn()` once to warm up, then `repeats` times; return the median
    seconds and the peak memory growth of the first timed call (bytes)."""
    fn()
    times, peak = [], None
    for i in range(repeats):
        if i == 0 and os.path.exists("/proc/self/clear_refs"):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _status("VmRSS:")
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if i == 0 and base is not None:
            peak = _status("VmHWM:") - base
        del out
    times.sort()
    return {"seconds": times[len(times) // 2], "peak_bytes": peak}


def run_case(script: str, args: list, timeout: float) -> dict:
    """Run `python script --child args...` in a fresh process; it must print a
    JSON dict as its last line. Returns that dict, or {"error": ...}."""
    cmd = [sys.executable, script, "--child", *map(str, args)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **CHILD_ENV})
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        return {"error": tail[:80]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(fn) -> None:
    """In a child: print `fn()`'s dict as the JSON last line."""
    print(json.dumps(fn()))


def fmt_seconds(x) -> str:
    return "-" if x is None else (f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s")


def fmt_bytes(x) -> str:
    return "-" if x is None else f"{x / 2**20:.1f} MiB"


def print_table(header: list, rows: list) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
