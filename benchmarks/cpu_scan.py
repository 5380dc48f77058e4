"""Forward log Z on the CPU: our streaming scan against flash-semicrf 0.2.0's
PyTorch streaming forward and pytorch-struct 0.5's SemiMarkov, in one run.

    python benchmarks/cpu_scan.py            # both configs of issue 2
    python benchmarks/cpu_scan.py --quick    # a small config, seconds

Each (method, config) runs in a fresh process (see common.py): median time of
3 calls after a warm-up, peak memory growth during a call, and log Z, which
must agree across methods. Scores are zero-mean per sequence and label, so
flash-semicrf's in-model centring shift is zero and all three compute the same
model (our start = logsumexp(transition, 0) matches its free first label).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import child_main, fmt_bytes, fmt_seconds, inputs, measure, print_table, run_case  # noqa: E402

CONFIGS = [(2, 4000, 32, 24), (4, 10000, 100, 24)]
QUICK = [(2, 500, 16, 8)]
METHODS = ["ours", "flash-semicrf", "pytorch-struct"]
EDGE_LIMIT_BYTES = 8 * 2**30  # pytorch-struct materializes (B, T, K+1, C, C)
ADDRESS_SPACE_LIMIT = 12 * 2**30  # a child past this fails with MemoryError, not the machine


def child(method, B, T, K, C):
    import resource

    import torch
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    from semiring_semicrf import SemiMarkovPotentials, semimarkov_scan
    torch.set_grad_enabled(False)
    scores, transition, duration = inputs(B, T, K, C)
    start = torch.logsumexp(transition, dim=0)
    ours = SemiMarkovPotentials(scores, transition, duration, start=start)
    if method == "ours":
        fn = lambda: semimarkov_scan(ours)  # noqa: E731
    elif method == "flash-semicrf":
        from flash_semicrf.streaming import semi_crf_streaming_forward
        cum = torch.nn.functional.pad(scores.cumsum(dim=1), (0, 0, 1, 0))
        lengths = torch.full((B,), T, dtype=torch.long)
        fn = lambda: semi_crf_streaming_forward(cum, transition, duration, lengths, K, use_triton=False)  # noqa: E731
    else:
        if B * T * (K + 1) * C * C * 4 > EDGE_LIMIT_BYTES:
            return {"error": f"edges need {B * T * (K + 1) * C * C * 4 / 2**30:.0f} GiB"}
        import torch_struct
        edges = ours.to_edges()
        lengths = torch.full((B,), T + 1, dtype=torch.long)
        fn = lambda: torch_struct.SemiMarkovCRF(edges, lengths=lengths).partition  # noqa: E731
    result = measure(fn)
    result["log_z"] = fn().tolist()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--child", nargs=5)
    args = parser.parse_args()
    if args.child:
        method, *shape = args.child
        return child_main(lambda: child(method, *map(int, shape)))
    rows = []
    for shape in QUICK if args.quick else CONFIGS:
        results = {m: run_case(__file__, [m, *shape], args.timeout) for m in METHODS}
        ours = results["ours"]
        for m in METHODS:
            r = results[m]
            agree = "-"
            if "log_z" in r and "log_z" in ours:
                err = max(abs(a - b) / abs(b) for a, b in zip(r["log_z"], ours["log_z"]))
                agree = f"{err:.1e}"
            speedup = (f"{r['seconds'] / ours['seconds']:.1f}x" if "seconds" in r and "seconds" in ours else "-")
            rows.append(["x".join(map(str, shape)), m, fmt_seconds(r.get("seconds")), fmt_bytes(r.get("peak_bytes")),
                         speedup, agree, r.get("error", "")])
    print("\nforward log Z, CPU float32 (B x T x K x C); 'ours is Nx faster' = their time / ours")
    print_table(["config", "method", "time", "peak mem", "ours faster by", "rel. diff log Z", "note"], rows)


if __name__ == "__main__":
    main()
