"""Forward+backward of log Z on the CPU: our streaming outside pass (default
and low-memory modes, and through `semimarkov_scan(p, LogSemiring())`, which
must dispatch to the same path) against flash-semicrf 0.2.0's PyTorch
streaming path, in one run.

    python benchmarks/cpu_backward.py            # B=2, T=4000, K=32, C=24 (float32)
    python benchmarks/cpu_backward.py --quick    # a small config, seconds

Each (method, pass) runs in a fresh process (see common.py): the median time
of `--repeats` calls after a warm-up, and the peak resident-memory growth
during one call (inputs excluded; the gradients it allocates included).
Scores are zero-mean per sequence and label, so flash-semicrf's in-model
centring shift is zero, and our `start = logsumexp(transition, 0)` matches
its free first label: both compute the same model. The run checks that they
agree on log Z and on the gradient w.r.t. the scores (flash-semicrf's
gradient w.r.t. its prefix sums, summed back to positions).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from common import child_main, fmt_bytes, fmt_seconds, inputs, measure, print_table, run_case  # noqa: E402

CONFIG = (2, 4000, 32, 24)
QUICK = (2, 300, 8, 6)
SCAN = "ours via semimarkov_scan"
METHODS = ["ours", "ours (low-memory)", SCAN, "flash-semicrf"]


def child(method, pass_, B, T, K, C, repeats, out_dir):
    import torch

    from semiring_semicrf import LogSemiring, SemiMarkovPotentials, semimarkov_scan
    from semiring_semicrf.autograd import log_partition
    scores, transition, duration = inputs(B, T, K, C)
    backward = pass_ == "backward"
    if method.startswith("ours"):
        leaves = [t.clone().requires_grad_(backward) for t in (scores, transition, duration)]
        low_memory = method.endswith("(low-memory)")

        def log_z():
            s, tr, du = leaves
            p = SemiMarkovPotentials(s, tr, du, start=torch.logsumexp(tr, dim=0))
            if method == SCAN:
                return semimarkov_scan(p, LogSemiring())
            return log_partition(p, low_memory=low_memory)

        def scores_grad():
            return leaves[0].grad
    else:
        from flash_semicrf.streaming import semi_crf_streaming_forward
        cum = torch.nn.functional.pad(scores.cumsum(dim=1), (0, 0, 1, 0))
        leaves = [t.clone().requires_grad_(backward) for t in (cum, transition, duration)]
        lengths = torch.full((B,), T, dtype=torch.long)

        def log_z():
            return semi_crf_streaming_forward(*leaves, lengths, K, use_triton=False)

        def scores_grad():  # d/d scores[t] = sum of d/d cum[j] for j > t
            return leaves[0].grad[:, 1:].flip(1).cumsum(1).flip(1)

    def call():
        for t in leaves:
            t.grad = None
        value = log_z()
        if backward:
            value.sum().backward()
        return value

    with torch.set_grad_enabled(backward):
        result = measure(call, repeats=repeats)
        value = call().detach()
    if backward:
        torch.save(scores_grad(), os.path.join(out_dir, f"{method}.pt"))
    return {**result, "log_z": value.tolist()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a small config (seconds)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (median)")
    parser.add_argument("--flash-repeats", type=int, default=1, help="timed calls for flash-semicrf (slow)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per case")
    args = parser.parse_args()
    if args.child:
        method, pass_, *sizes, repeats, out_dir = args.child
        B, T, K, C = map(int, sizes)
        return child_main(lambda: child(method, pass_, B, T, K, C, int(repeats), out_dir))

    import torch
    B, T, K, C = QUICK if args.quick else CONFIG
    print(f"B={B} T={T} K={K} C={C} float32, CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; forward = log Z only, backward = forward + backward\n")
    results = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for method in METHODS:
            repeats = args.flash_repeats if method == "flash-semicrf" else args.repeats
            for pass_ in ("forward", "backward"):
                results[method, pass_] = run_case(__file__, [method, pass_, B, T, K, C, repeats, out_dir], args.timeout)
        grads = {m: torch.load(os.path.join(out_dir, f"{m}.pt")) for m in METHODS
                 if os.path.exists(os.path.join(out_dir, f"{m}.pt"))}

    flash = results["flash-semicrf", "backward"]
    rows = []
    for method in METHODS:
        fwd, bwd = results[method, "forward"], results[method, "backward"]
        if "error" in bwd:
            rows.append([method, fwd.get("error", "-"), bwd["error"], "-", "-", "-"])
            continue
        speedup = f"{flash['seconds'] / bwd['seconds']:.0f}x" if "seconds" in flash else "-"
        rows.append([method, fmt_seconds(fwd.get("seconds")), fmt_seconds(bwd["seconds"]),
                     fmt_bytes(bwd["peak_bytes"]), speedup, f"{bwd['log_z'][0]:.4f}"])
    print_table(["method", "forward", "forward+backward", "peak memory (f+b)", "f+b speed-up vs flash", "log Z[0]"],
                rows)

    ours, scan = results["ours", "backward"], results[SCAN, "backward"]
    if "seconds" in ours and "seconds" in scan:
        print(f"\nsemimarkov_scan(p, LogSemiring()) forward+backward / log_partition's: "
              f"{scan['seconds'] / ours['seconds']:.2f}x (target: at most 1.2x)")
    if "log_z" in ours and "log_z" in flash:
        dz = max(abs(a - b) / abs(b) for a, b in zip(ours["log_z"], flash["log_z"]))
        print(f"\nlog Z, ours vs flash-semicrf: max relative difference {dz:.1e}")
    reference = float64_scores_grad(B, T, K, C)
    for method, grad in grads.items():
        print(f"d log Z / d scores, {method} (float32) vs ours in float64: "
              f"max abs difference {(grad.double() - reference).abs().max().item():.1e}")


def float64_scores_grad(B, T, K, C):
    """Reference gradient w.r.t. the scores: our sweeps on float64 inputs."""
    import torch

    from semiring_semicrf import SemiMarkovPotentials
    from semiring_semicrf.autograd import log_partition
    scores, transition, duration = (t.double() for t in inputs(B, T, K, C))
    scores.requires_grad_(True)
    potentials = SemiMarkovPotentials(scores, transition, duration, start=torch.logsumexp(transition, dim=0))
    log_partition(potentials).sum().backward()
    return scores.grad

if __name__ == "__main__":
    main()
