"""The forward sweep and the outside flow by num_warps, then the Log targets with the best counts.

    python3 -u benchmarks/gpu_warps.py --out DIR      # about 2 minutes on an H200
    python3 -u benchmarks/gpu_warps.py --out DIR --configs 1x1000000x64x8 --target 1x1000000x64x8 --budget 8 --no-flash

1. At :data:`CONFIGS` (or ``--configs``), on factors prepared once: the Log forward sweep alone, the Max
   sweep alone, and the Log forward (at the shipped warps) followed by the outside flow at each count of
   :data:`WARPS` (or ``--warps``; the flow's time is that minus the forward's); log Z at every count against
   the shipped one.
2. At the target (``--target``, (16, 2000, 16, 12) by default; swept in (1) too), the public API's forward and
   forward+backward (as ``gpu_bench.py`` times them) with the shipped counts and with the best of (1) for that
   tile, against flash-semicrf's Triton path in the same run (if installed, unless ``--no-flash``).

Writes ``gpu_warps.json`` under --out and prints the tables last.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import DEVICE, flash, make_inputs, median_time, potentials, query_maker  # noqa: E402

CONFIGS = [(16, 2000, 16, 12), (4, 1000, 32, 24)]
WARPS = (1, 2, 4, 8)
TARGET = (16, 2000, 16, 12)


def sweep(shape, budget: float, warps=WARPS) -> dict:
    """Kernel seconds by warp count at `shape` (section 1)."""
    import torch

    outside_sweep = importlib.import_module("semiring_semicrf.kernels.backward").outside_sweep
    common = importlib.import_module("semiring_semicrf.kernels.common")
    forward_sweep = importlib.import_module("semiring_semicrf.kernels.forward").forward_sweep
    duration_ring, flow_num_warps, pad, sweep_num_warps = (common.duration_ring, common.flow_num_warps, common.pad,
                                                           common.sweep_num_warps)
    factors = potentials({k: v.to(DEVICE) for k, v in make_inputs(*shape).items()}).factors()
    ring = duration_ring(factors)
    KP, CP = pad(shape[2]), pad(shape[3])
    row: dict = {"shipped": [sweep_num_warps(KP, CP), flow_num_warps(KP, CP)]}
    shipped_log_z = forward_sweep(factors, ring, False, tables=False)[0]
    base = median_time(lambda: forward_sweep(factors, ring, False), budget)
    for w in warps:
        log_z = forward_sweep(factors, ring, False, num_warps=w, tables=False)[0]
        both = median_time(lambda w=w: outside_sweep(factors, ring, *forward_sweep(factors, ring, False)[2:6],
                                                     num_warps=w), budget)
        row[w] = {"forward": median_time(lambda w=w: forward_sweep(factors, ring, False, num_warps=w, tables=False),
                                         budget),
                  "max": median_time(lambda w=w: forward_sweep(factors, ring, True, num_warps=w), budget),
                  "flow": both - base if isinstance(both, float) else both,
                  "log_z_rel_diff": float(((log_z - shipped_log_z).norm() / shipped_log_z.norm()).item())}
        torch.cuda.synchronize()
    print(shape, json.dumps(row), flush=True)
    return row


def public(shape, budget: float, forward_warps=None, flow_warps=None) -> dict:
    """The public API's forward and forward+backward at `shape` (section 2,
    :func:`gpu_bench.query_maker`'s calls), the counts held if given."""
    backward: Any = importlib.import_module("semiring_semicrf.kernels.backward")
    forward: Any = importlib.import_module("semiring_semicrf.kernels.forward")
    tensors = {k: v.to(DEVICE) for k, v in make_inputs(*shape).items()}
    saved = forward.sweep_num_warps, backward.flow_num_warps
    if forward_warps:
        forward.sweep_num_warps = lambda kp, cp: forward_warps
    if flow_warps:
        backward.flow_num_warps = lambda kp, cp: flow_warps
    try:
        return {query: median_time(query_maker(query, tensors)(shape), budget) for query in ("fwd", "fwd_bwd")}
    finally:
        forward.sweep_num_warps, backward.flow_num_warps = saved


def shape_argument(text: str) -> tuple[int, int, int, int]:
    """`BxTxKxC` as a tuple of four ints."""
    B, T, K, C = (int(n) for n in text.split("x"))
    return B, T, K, C


def seconds_or_inf(seconds) -> float:
    """A time, or infinity for a failure's text."""
    return seconds if isinstance(seconds, float) else float("inf")


def ms(seconds) -> str:
    """Milliseconds to three decimals, or the failure's text."""
    return f"{1e3 * seconds:.3f}" if isinstance(seconds, float) else str(seconds)


def ratio(anchor, ours) -> str:
    """`anchor / ours` as `12.3x`, or `n/a` where either is not a time."""
    return f"{anchor / ours:.1f}x" if isinstance(anchor, float) and isinstance(ours, float) else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--configs", nargs="+", type=shape_argument, default=CONFIGS, help="BxTxKxC ...")
    parser.add_argument("--target", type=shape_argument, default=TARGET,
                        help="BxTxKxC (swept as well if not among --configs)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per timing")
    parser.add_argument("--warps", nargs="+", type=int, default=WARPS, help="counts to sweep")
    parser.add_argument("--no-flash", action="store_true", help="leave flash-semicrf out")
    args = parser.parse_args()
    configs = list(dict.fromkeys([*args.configs, args.target]))
    rows = {str(shape): sweep(shape, args.budget, args.warps) for shape in configs}
    target = rows[str(args.target)]
    best_forward = min(args.warps, key=lambda w: seconds_or_inf(target[w]["forward"]))
    best_flow = min(args.warps, key=lambda w: seconds_or_inf(target[w]["flow"]))
    tensors = {k: v.to(DEVICE) for k, v in make_inputs(*args.target).items()}
    document: dict[str, Any] = {
        "sweeps": rows, "best": [best_forward, best_flow], "shipped": public(args.target, args.budget),
        "best_counts": public(args.target, args.budget, best_forward, best_flow),
        "flash": dict.fromkeys(("fwd", "fwd_bwd"), "not run") if args.no_flash else flash(args.target, tensors)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_warps.json"), "w") as f:
        json.dump(document, f, indent=1, default=str)
    print("\nms by num_warps: forward / max / flow (log Z rel diff against the shipped count)")
    for shape, row in rows.items():
        print(shape, "shipped", row["shipped"], "; ".join(
            f"{w}: {ms(row[w]['forward'])} / {ms(row[w]['max'])} / {ms(row[w]['flow'])} "
            f"({row[w]['log_z_rel_diff']:.0e})" for w in args.warps))
    fl = document["flash"]
    for name in ("shipped", "best_counts"):
        r = document[name]
        print(f"{args.target} {name} {document['best'] if name == 'best_counts' else ''}: fwd {ms(r['fwd'])} ms "
              f"({ratio(fl['fwd'], r['fwd'])} flash), fwd_bwd {ms(r['fwd_bwd'])} ms "
              f"({ratio(fl['fwd_bwd'], r['fwd_bwd'])} flash)")


if __name__ == "__main__":
    main()
