"""The k-best kernels by num_warps, and the public ``topk(5)`` against Viterbi (issue 13: at most 3x).

    python3 -u benchmarks/gpu_kbest.py --out DIR      # about 2 minutes on an H200

At each shape of :data:`CONFIGS` (or ``--configs``):

1. ``kbest_decode`` (the sweep and the traceback) on factors prepared once, at each count of :data:`WARPS`,
   the shipped count marked; each count's scores against the shipped count's, bitwise;
2. the public ``viterbi`` and ``topk(5)``, as ``gpu_bench.py`` times them (potentials built per call); the first
   k-best score against Viterbi's.

Writes ``gpu_kbest.json`` under --out and prints the table last.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import DEVICE, make_inputs, median_time, potentials, query_maker  # noqa: E402
from gpu_warps import ms, shape_argument  # noqa: E402

CONFIGS = [(4, 1000, 32, 24), (1, 100000, 64, 8), (4, 10000, 100, 24)]
WARPS = (1, 2, 4, 8, 16)
K_BEST = 5


def measure(shape, budget: float) -> dict:
    """Section 1 and 2 at `shape`."""
    import importlib

    import torch

    kbest = importlib.import_module("semiring_semicrf.kernels.kbest")
    pad = importlib.import_module("semiring_semicrf.kernels.common").pad
    tensors = {k: v.to(DEVICE) for k, v in make_inputs(*shape).items()}
    factors = potentials(tensors).factors()
    KP, CP = pad(shape[2]), pad(shape[3])
    shipped = kbest.kbest_num_warps(KP, CP, K_BEST, kbest.crowds_processors(shape[0], DEVICE))
    reference = kbest.kbest_decode(factors, K_BEST)[0]
    row: dict = {"shipped": shipped, "kernels": {}}
    for w in WARPS:
        scores = kbest.kbest_decode(factors, K_BEST, num_warps=w)[0]
        row["kernels"][w] = {"time": median_time(lambda w=w: kbest.kbest_decode(factors, K_BEST, num_warps=w),
                                                 budget),
                             "bitwise": bool(torch.equal(scores, reference))}
    viterbi_score = query_maker("viterbi", tensors)(shape)()
    row["first_vs_viterbi_rel_err"] = float(((reference[0] - viterbi_score).norm() / viterbi_score.norm()).item())
    row["sorted"] = bool((reference[1:] <= reference[:-1]).all().item())
    row["viterbi"] = median_time(query_maker("viterbi", tensors)(shape), budget)
    row["topk"] = median_time(query_maker("topk", tensors)(shape), budget)
    print(shape, json.dumps(row, default=str), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--configs", nargs="+", type=shape_argument, default=CONFIGS, help="BxTxKxC ...")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per timing")
    args = parser.parse_args()
    rows = {str(shape): measure(shape, args.budget) for shape in args.configs}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_kbest.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    print(f"\nk = {K_BEST}: kbest_decode ms by num_warps (bitwise equal to the shipped count's), public Viterbi "
          "and topk")
    for shape, row in rows.items():
        kernels = "; ".join(f"{w}{'*' if w == row['shipped'] else ''}: {ms(t['time'])}"
                            f"{'' if t['bitwise'] else ' (differs)'}" for w, t in row["kernels"].items())
        topk, viterbi = row["topk"], row["viterbi"]
        ratio = f"{topk / viterbi:.2f}x" if isinstance(topk, float) and isinstance(viterbi, float) else "n/a"
        print(f"{shape} {kernels} | viterbi {ms(viterbi)} topk {ms(topk)} = {ratio} Viterbi "
              f"(first vs Viterbi {row['first_vs_viterbi_rel_err']:.1e}, sorted {row['sorted']})")


if __name__ == "__main__":
    main()
