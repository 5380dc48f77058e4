"""The k-best sweep on one GPU: checks, then topk against Viterbi and the sweep per warp count.

    python3 -u benchmarks/gpu_kbest.py --out DIR     # under 2 minutes on an H200
    python benchmarks/gpu_kbest.py --smoke --out DIR # CPU, Triton's interpreter, tiny sizes: the script runs

1. Checks (PASS/FAIL): at :data:`CHECK_CONFIGS`, integer potentials with `center=False` (every sum exact, so
   equal scores are real ties), the Triton lists (scores, labels, starts) equal the reference rung's (run on
   the CPU); at each timed size, the lists sorted, the first equal to Viterbi's, each entry's own score equal to
   its listed score, and every warp count's lists equal to the default's.
2. Timings (median of CUDA-event timed calls after a warm-up) at :data:`TIMED_CONFIGS`, float32 random
   potentials: ``topk(p, k, backend="triton")``, ``viterbi(p, backend="triton")``, and
   ``kernels.kbest.kbest_decode`` (sweep and traceback) with num_warps in :data:`WARPS` (k <= :data:`SWEPT_K`).

The run keeps its own clock: past :data:`DEADLINE_S` the remaining timings are skipped (and said so).
Writes ``gpu_kbest.json`` under --out and prints the table last (ms, topk / viterbi).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time

#: (B, T, K, C, k) timed; the target is topk at most 3x Viterbi at the first.
TIMED_CONFIGS = [(4, 1000, 32, 24, 5), (1, 10_000, 64, 8, 5), (4, 1000, 16, 12, 5), (4, 1000, 32, 24, 16)]
#: (B, T, K, C, k, boundary scores) checked against the reference rung: a small problem, the timed kernels at
#: T = 100-120 (one ring wrap and more), and labels over two warps' lanes (C = 40: four warps). The k = 16 check
#: has no boundary scores, as the timed problems: one kernel, compiled once.
CHECK_CONFIGS = [(2, 60, 6, 5, 5, True), (2, 120, 32, 24, 5, True), (2, 120, 32, 24, 16, False),
                 (1, 100, 64, 8, 5, True), (2, 40, 8, 40, 5, True)]
SMOKE_TIMED = [(2, 12, 4, 5, 3), (1, 16, 8, 3, 2)]
SMOKE_CHECKS = [(2, 14, 4, 5, 3, True), (1, 9, 3, 2, 4, False)]
WARPS = (1, 2, 4, 8)
#: The warp counts are swept for k up to this (a kernel with k = 16 takes about 20 s to compile).
SWEPT_K = 8
#: Seconds after which the run skips what is left of the timings.
DEADLINE_S = 90.0
WARM_UP_S = 0.2


def random_potentials(B, T, K, C, device, seed=0):
    """Float32 random potentials (scores zero-mean per sequence and label), full lengths."""
    import torch

    from semiring_semicrf import SemiMarkovPotentials
    g = torch.Generator().manual_seed(seed + T + K + C)
    scores = torch.randn(B, T, C, generator=g)
    scores = scores - scores.mean(dim=1, keepdim=True)
    transition = 0.5 * torch.randn(C, C, generator=g)
    duration = 0.5 * torch.randn(K, C, generator=g)
    start = torch.logsumexp(transition, dim=0)
    return SemiMarkovPotentials(scores.to(device), transition.to(device), duration.to(device),
                                start=start.to(device), validate_args=False)


def integer_potentials(B, T, K, C, device, boundary=True, seed=0):
    """Small-integer float32 potentials, not centred, with boundary scores if asked and a short sequence."""
    import torch

    from semiring_semicrf import SemiMarkovPotentials
    g = torch.Generator().manual_seed(seed + B + T + K + C)

    def ints(*shape):
        return torch.randint(-2, 3, shape, generator=g).float().to(device)

    lengths = torch.tensor([T] + [max(1, T // 3)] * (B - 1), device=device)
    extras = {"start_scores": ints(B, T, C), "end_scores": ints(B, T, C)} if boundary else {}
    return SemiMarkovPotentials(ints(B, T, C), ints(C, C), ints(K, C), lengths, ints(C), ints(C), center=False,
                                **extras)


def seconds(fn, device, reps_budget_s=1.0, max_reps=15):
    """Median seconds of `fn()`: one call (compiling), warm-up calls, then timed calls (CUDA events on a GPU)."""
    import torch
    cuda = device == "cuda"
    fn()
    if not cuda:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    torch.cuda.synchronize()
    begin = time.perf_counter()
    while time.perf_counter() - begin < WARM_UP_S:
        fn()
        torch.cuda.synchronize()
    times: list[float] = []
    while len(times) < 3 or (len(times) < max_reps and sum(times) < reps_budget_s):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def same_lists(ours, theirs) -> bool:
    return all(x.cpu().equal(y.cpu()) for x, y in zip(ours, theirs))


def exact_checks(configs, device) -> dict:
    """The Triton lists against the reference rung's (on the CPU) on integer potentials."""
    from semiring_semicrf.decoding import topk
    out = {}
    for B, T, K, C, k, boundary in configs:
        p = integer_potentials(B, T, K, C, device, boundary)
        cpu = integer_potentials(B, T, K, C, "cpu", boundary)
        same = same_lists(topk(p, k, backend="triton"), topk(cpu, k, backend="reference"))
        out[str((B, T, K, C, k, "boundary" if boundary else "plain"))] = "PASS" if same else "FAIL"
    return out


def consistency(p, k, lists, best) -> str:
    """PASS if the lists are sorted, start with Viterbi's (score, then structure: two paths within float32
    rounding of each other may come in either order) and each entry scores its listed score."""
    import torch

    from semiring_semicrf.segmentation import Segmentation
    scores, labels, starts = lists
    B = p.batch_size
    problems = []
    if not bool((scores.diff(dim=0) <= 0).all()):
        problems.append("not sorted")
    if not torch.allclose(scores[0], best[0], rtol=1e-5, atol=1e-3):
        problems.append("first score != viterbi's")
    elif not (labels[0].equal(best[1]) and starts[0].equal(best[2])):
        problems.append("first structure != viterbi's (a near-tie within rounding?)")
    own = Segmentation(labels.flatten(0, 1), starts.flatten(0, 1)).log_potential(p[torch.arange(B).repeat(k)])
    if not torch.allclose(own.view(k, B), scores, rtol=1e-5, atol=1e-3):
        problems.append("own scores differ")
    return "PASS" if not problems else "FAIL: " + ", ".join(problems)


def time_size(B, T, K, C, k, device, began) -> tuple[dict, dict]:
    """`(times, checks)` of one timed size."""
    import torch

    kbest = importlib.import_module("semiring_semicrf.kernels.kbest")
    from semiring_semicrf.decoding import topk, viterbi
    p = random_potentials(B, T, K, C, device)
    factors = p.factors().to(torch.float32)
    KP, CP = kbest.pad(K), kbest.pad(C)
    row: dict = {"chosen_warps": kbest.kbest_num_warps(KP, CP)}
    with torch.no_grad():
        best = viterbi(p, backend="triton")
        lists = topk(p, k, backend="triton")
        checks = {"consistent": consistency(p, k, lists, best)}
        row["viterbi"] = seconds(lambda: viterbi(p, backend="triton"), device)
        row["topk"] = seconds(lambda: topk(p, k, backend="triton"), device)
        row["sweep"] = {}
        for w in WARPS if k <= SWEPT_K else ():
            if time.perf_counter() - began > DEADLINE_S:
                row["sweep"][w] = "skipped (deadline)"
                continue
            checks[f"warps {w}"] = "PASS" if same_lists(kbest.kbest_decode(factors, k, num_warps=w), lists) else "FAIL"
            row["sweep"][w] = seconds(lambda w=w: kbest.kbest_decode(factors, k, num_warps=w), device)
    row["ratio"] = row["topk"] / row["viterbi"]
    row["topk_us_per_step"] = 1e6 * row["topk"] / T
    return row, checks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_kbest.json")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU tensors through Triton's interpreter at tiny sizes (checks the script runs)")
    args = parser.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are first imported
    import torch
    import triton
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("needs CUDA (or --smoke)")
    os.makedirs(args.out, exist_ok=True)
    began = time.perf_counter()
    document: dict = {"meta": {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)",
                               "torch": torch.__version__, "triton": triton.__version__},
                      "checks": {}, "times": {}}

    def save():
        with open(os.path.join(args.out, "gpu_kbest.json"), "w") as f:
            json.dump(document, f, indent=1)

    document["checks"]["exact"] = exact_checks(SMOKE_CHECKS if args.smoke else CHECK_CONFIGS, device)
    print("exact checks:", document["checks"]["exact"], flush=True)
    save()
    for size in SMOKE_TIMED if args.smoke else TIMED_CONFIGS:
        name = str(size)
        if time.perf_counter() - began > DEADLINE_S:
            print(f"{name}: skipped (deadline)", flush=True)
            continue
        row, checks = time_size(*size, device, began)
        document["times"][name], document["checks"][name] = row, checks
        print(f"{name}: {json.dumps(row)}; checks {checks}", flush=True)
        save()

    def ms(x):
        return f"{x * 1e3:.2f}" if isinstance(x, float) else "-"

    verdicts = [v for checks in document["checks"].values() for v in checks.values()]
    print(f"\nchecks: {'PASS' if all(v == 'PASS' for v in verdicts) else 'FAIL'} "
          f"({sum(v == 'PASS' for v in verdicts)}/{len(verdicts)}); {time.perf_counter() - began:.0f} s")
    print(f"{'(B, T, K, C, k)':<26}{'viterbi':>9}{'topk':>9}{'ratio':>7}{'us/step':>9}{'warps':>7}"
          + "".join(f"{'w=' + str(w):>8}" for w in WARPS) + "  (ms)")
    for name, row in document["times"].items():
        print(f"{name:<26}{ms(row['viterbi']):>9}{ms(row['topk']):>9}{row['ratio']:>7.2f}"
              f"{row['topk_us_per_step']:>9.2f}{row['chosen_warps']:>7}"
              + "".join(f"{ms(row['sweep'].get(w)):>8}" for w in WARPS))


if __name__ == "__main__":
    main()
