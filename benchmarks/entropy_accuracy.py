"""Float32 entropy, cross-entropy and KL against float64, over T and sharpness.

    python benchmarks/entropy_accuracy.py                  # T up to 10^5 (minutes: the float64 references)
    python benchmarks/entropy_accuracy.py --quick          # T up to 10^3, seconds
    python benchmarks/entropy_accuracy.py --max-T 10000    # T up to 10^4
    python benchmarks/entropy_accuracy.py --out DIR        # also writes entropy_accuracy.json

The float32 values run where `backend="auto"` puts them (the Triton kernels
on CUDA, the PyTorch sweeps on the CPU); the float64 references run the
PyTorch sweeps on the CPU, on the same float32 inputs converted exactly, in
background processes. Each problem is p: scores `scale * N(0, 1)`,
`(C, C)` transitions and durations `N(0, 1)` (the larger the scale, the
sharper p and the larger log Z), or "planted": one label per position 20
above the others and segments longer than 1 forbidden 20 below (log Z about
11 T, an entropy of about 1e-7 per position); q: p plus `N(0, 1)` noise on
every input.
For each, the table gives the float64 value, the float32 error, and the
budget of issue 15: `1e-4 |value| + 1e-6 T`; and, for the entropy, the
error of the former formula `log Z - <mu, theta>` in float32 (on the same
device), which cancels two terms of the size of log Z.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys

LENGTHS = (100, 1_000, 10_000, 100_000)
QUICK_LENGTHS = (100, 1_000)
SHARPNESS = ("scale 0.5", "scale 3", "scale 30", "planted")
B, K, C = 1, 8, 4
KINDS = ("entropy", "cross_entropy", "kl")


def problem(T: int, sharpness: str, seed: int = 0):
    """`(p, q)` float32 potentials on the CPU (see module docstring)."""
    import torch

    from semiring_semicrf import SemiMarkovPotentials
    g = torch.Generator().manual_seed(seed + T)
    if sharpness == "planted":
        planted = torch.nn.functional.one_hot(torch.randint(C, (B, T), generator=g), C).bool()
        scores = torch.where(planted, 11.0, -9.0) + 0.1 * torch.randn(B, T, C, generator=g)
        duration = torch.zeros(K, C)
        duration[1:] = -20.0
        p = SemiMarkovPotentials(scores, torch.zeros(C, C), duration)
    else:
        scale = float(sharpness.split()[1])
        p = SemiMarkovPotentials(scale * torch.randn(B, T, C, generator=g), torch.randn(C, C, generator=g),
                                 torch.randn(K, C, generator=g))
    q = p.replace(**{name: t + torch.randn(t.shape, generator=g) for name, t in p.tensors().items()})
    return p, q


def values(p, q) -> dict:
    """The three quantities of `(p, q)` by the default dispatch, as floats."""
    from semiring_semicrf import information
    return {"entropy": float(information.entropy(p)[0]), "cross_entropy": float(information.cross_entropy(p, q)[0]),
            "kl": float(information.kl(p, q)[0])}


def reference(T: int, sharpness: str) -> dict:
    """The float64 values (a background process on the CPU)."""
    import torch
    torch.set_num_threads(1)
    p, q = problem(T, sharpness)
    cast = lambda m: m.replace(**{name: t.double() for name, t in m.tensors().items()})  # noqa: E731
    return values(cast(p), cast(q))


def former_entropy(p) -> float:
    """`log Z - <mu, theta>`, the closed form the float32 entropy used to take."""
    from semiring_semicrf import information
    from semiring_semicrf.autograd import posterior
    post = posterior(p)
    return float((post.log_z - information.expected_score(post, p, p))[0])


def measure(lengths, device: str, workers: int) -> list:
    """One row per (T, sharpness, quantity)."""
    import torch
    grid = [(T, sharpness) for T in lengths for sharpness in SHARPNESS]
    rows = []
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        references = {key: pool.submit(reference, *key) for key in grid}
        for T, sharpness in grid:
            p, q = problem(T, sharpness)
            move = lambda m: m.replace(**{name: t.to(device) for name, t in m.tensors().items()})  # noqa: E731
            p, q = move(p), move(q)
            with torch.no_grad():
                got, former = values(p, q), former_entropy(p)
            exact = references[(T, sharpness)].result()
            for kind in KINDS:
                error = abs(got[kind] - exact[kind])
                budget = 1e-4 * abs(exact[kind]) + 1e-6 * T
                rows.append({"T": T, "sharpness": sharpness, "quantity": kind, "float64": exact[kind],
                             "float32": got[kind], "error": error, "budget": budget, "ok": error <= budget,
                             "former_error": abs(former - exact[kind]) if kind == "entropy" else None})
            print(f"T={T:>6} {sharpness:>9}: " + ", ".join(
                f"{kind} {got[kind]:.6g} (err {abs(got[kind] - exact[kind]):.2e})" for kind in KINDS), flush=True)
    return rows


def print_table(rows: list, device: str) -> None:
    print(f"\nfloat32 on {device} against float64 (B={B}, K={K}, C={C}); budget = 1e-4 |value| + 1e-6 T")
    print("| T | p | quantity | float64 | float32 error | budget | ok | former formula's error |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        former = "" if r["former_error"] is None else f"{r['former_error']:.2e}"
        print(f"| {r['T']:,} | {r['sharpness']} | {r['quantity']} | {r['float64']:.6g} | {r['error']:.2e} | "
              f"{r['budget']:.2e} | {'yes' if r['ok'] else 'NO'} | {former} |")
    print(f"\n{sum(r['ok'] for r in rows)}/{len(rows)} within budget")


def main(argv=None) -> int:
    import torch
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"T in {QUICK_LENGTHS} only")
    parser.add_argument("--max-T", type=int, default=max(LENGTHS), help="drop the lengths above this one")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--out", help="directory for entropy_accuracy.json")
    args = parser.parse_args(argv)
    lengths = [length for length in (QUICK_LENGTHS if args.quick else LENGTHS) if length <= args.max_T]
    rows = measure(lengths, args.device, args.workers)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "entropy_accuracy.json"), "w") as f:
            json.dump({"device": args.device, "rows": rows}, f, indent=1)
    print_table(rows, args.device)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
