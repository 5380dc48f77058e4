"""Second-order queries on one GPU, in one run: checks against float64, then timings.

    python3 -u benchmarks/gpu_second_order.py --out DIR > DIR/log     # everything (a few minutes)
    python3 -u benchmarks/gpu_second_order.py --quick --out DIR       # small configs

1. the GPU tests of tests/test_second_order.py and tests/test_information.py
   (``pytest -m gpu``);
2. correctness of the float32 kernels against float64 (the PyTorch sweeps on
   the CPU): the Hessian-vector product (every Posterior field), the double
   backward of log Z (a gradient penalty's gradient), entropy, cross-entropy
   and KL with their gradients with respect to p and q; relative RMSE
   `||got - ref|| / ||ref||`;
3. median times through the public API at :data:`CONFIGS`: Log
   forward+backward (the yardstick), the HVP query, the double backward
   (`(grad ** 2).sum().backward()` with `create_graph=True`), entropy forward,
   and entropy, cross-entropy and KL forward+backward (gradients of p and q),
   each as a multiple of Log forward+backward (target: at most 3x), with
   peak GPU memory beyond the inputs;
4. the float32 entropy/CE/KL accuracy table on the GPU over T up to 10^5
   (benchmarks/entropy_accuracy.py).

Writes ``gpu_second_order.json`` under --out and prints the tables last.
It imports the installed package (`kernels/` ships inside it as
`semiring_semicrf.kernels`: ``pip install .`` or ``pip install -e .``) and
stops if the Triton rung does not answer on the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = [(4, 1000, 32, 24), (1, 100_000, 64, 8)]
QUICK = [(4, 1000, 32, 24), (1, 10_000, 64, 8)]
CHECK_SHAPE = (2, 300, 16, 8)
TARGET = 3.0
RMSE_LIMIT = 1e-4
TEST_FILES = ["tests/test_second_order.py", "tests/test_information.py"]


def make(B, T, K, C, device, dtype, seed=0, requires_grad=False):
    """`(p, q)`: zero-mean scores, `(C, C)` transitions; q = p plus noise."""
    import torch

    from semiring_semicrf import SemiMarkovPotentials
    g = torch.Generator().manual_seed(seed + T + K + C)
    scores = torch.randn(B, T, C, generator=g)
    scores = scores - scores.mean(dim=1, keepdim=True)
    tensors = {"scores": scores, "transition": 0.5 * torch.randn(C, C, generator=g),
               "duration": 0.5 * torch.randn(K, C, generator=g)}
    noisy = {name: t + 0.3 * torch.randn(t.shape, generator=g) for name, t in tensors.items()}
    build = lambda ts: SemiMarkovPotentials(**{n: t.to(device, dtype).requires_grad_(requires_grad)  # noqa: E731
                                               for n, t in ts.items()}, validate_args=False)
    return build(tensors), build(noisy)


def rmse(got, ref) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).norm() / ref.norm().clamp(min=1e-300))


def correctness(device: str) -> list:
    """`(check, relative RMSE)` rows, float32 kernels against float64 sweeps."""
    import torch

    from semiring_semicrf import backends, information
    from semiring_semicrf.autograd import log_partition
    from semiring_semicrf.autograd.derivatives import direction
    rows = []
    p32, q32 = make(*CHECK_SHAPE, device, torch.float32)
    p64, q64 = make(*CHECK_SHAPE, "cpu", torch.float64)
    g = torch.Generator().manual_seed(1)
    v = {n: torch.randn(t.shape, generator=g, dtype=torch.float64) for n, t in p64.tensors().items()}
    triton_rung, torch_rung = backends.select("auto", p32, "hvp"), backends.select("torch", p64, "hvp")
    _, got = triton_rung.hvp(p32.factors(), direction(p32, {n: t.to(device, torch.float32)
                                                             for n, t in v.items()}).factors())
    _, want = torch_rung.hvp(p64.factors(), direction(p64, v).factors())
    for name in ("log_z", "segment_start", "segment_end", "transition", "duration"):
        rows.append((f"hvp ({triton_rung.name}): {name}", rmse(getattr(got, name), getattr(want, name))))

    def penalty_gradients(p, backend):
        leaves = {n: t.detach().clone().requires_grad_() for n, t in p.tensors().items()}
        model = p.replace(**leaves)
        (grad,) = torch.autograd.grad(log_partition(model, backend=backend).sum(), [leaves["scores"]],
                                      create_graph=True)
        return dict(zip(leaves, torch.autograd.grad((grad ** 2).sum(), list(leaves.values()))))

    got, want = penalty_gradients(p32, "auto"), penalty_gradients(p64, "torch")
    for name in got:
        rows.append((f"double backward: d/d {name}", rmse(got[name], want[name])))
    functions: dict[str, Callable[..., Any]] = {"entropy": information.entropy,
                                                "cross_entropy": information.cross_entropy, "kl": information.kl}
    for kind, fn in functions.items():
        results = []
        for p, q, backend in ((p32, q32, "auto"), (p64, q64, "torch")):
            models = [m.replace(**{n: t.detach().clone().requires_grad_() for n, t in m.tensors().items()})
                      for m in ((p,) if kind == "entropy" else (p, q))]
            value = fn(*models, backend=backend)
            tensors = [t for m in models for t in m.tensors().values()]
            results.append((value, torch.autograd.grad(value.sum(), tensors)))
        (value, grads), (value64, grads64) = results
        rows.append((f"{kind}: value", rmse(value, value64)))
        names = [f"{who} {n}" for who in ("p", "q")[:1 if kind == "entropy" else 2] for n in p32.tensors()]
        for name, a, b in zip(names, grads, grads64):
            rows.append((f"{kind}: d/d {name}", rmse(a, b)))
    return rows


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` after a warm-up (CUDA synchronized)."""
    import torch
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(fn) -> int:
    import torch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def timings(config: tuple[int, int, int, int], device: str) -> dict:
    """Seconds and peak bytes of each query at one (B, T, K, C)."""
    import torch

    from semiring_semicrf import SemiMarkovDistribution, backends, information
    from semiring_semicrf.autograd import log_partition
    from semiring_semicrf.autograd.derivatives import direction
    p, q = make(*config, device, torch.float32, requires_grad=True)
    rung = backends.select("auto", p, "hvp")
    tangent = direction(p, {n: torch.randn_like(t) for n, t in p.tensors().items()}).factors()
    factors = p.factors()
    params = list(p.tensors().values()) + list(q.tensors().values())

    def clear():
        for t in params:
            t.grad = None

    def log_fb():
        clear()
        log_partition(p).sum().backward()

    def hvp():
        with torch.no_grad():
            rung.hvp(factors, tangent)

    def double_backward():
        clear()
        (grad,) = torch.autograd.grad(log_partition(p).sum(), [p.scores], create_graph=True)
        (grad ** 2).sum().backward()

    def entropy_f():
        with torch.no_grad():
            information.entropy(p)

    def entropy_fb():
        clear()
        SemiMarkovDistribution.from_potentials(p).entropy().sum().backward()

    def cross_entropy_fb():
        clear()
        information.cross_entropy(p, q).sum().backward()

    def kl_fb():
        clear()
        information.kl(p, q).sum().backward()

    queries = {"Log forward+backward": log_fb, f"HVP ({rung.name})": hvp, "double backward": double_backward,
               "entropy forward": entropy_f, "entropy forward+backward": entropy_fb,
               "cross-entropy forward+backward": cross_entropy_fb, "KL forward+backward": kl_fb}
    repeats = 10 if config[1] <= 10_000 else 3
    out = {}
    for name, fn in queries.items():
        out[name] = {"seconds": timed(fn, repeats), "peak_bytes": peak_bytes(fn)}
        print(f"  {config} {name}: {out[name]['seconds'] * 1e3:.2f} ms", flush=True)
    return out


def run_gpu_tests() -> str:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", *TEST_FILES], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[-1] if lines else f"pytest exited {result.returncode}"


def main(argv=None) -> int:
    import entropy_accuracy
    import torch
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=".")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA")
        return 2
    device = "cuda"
    from semiring_semicrf import backends
    probe, _ = make(1, 8, 2, 2, device, torch.float32)
    rungs = {query: backends.select("auto", probe, query).name for query in ("log", "hvp", "information")}
    if set(rungs.values()) != {"triton"}:
        print(f"the Triton kernels do not answer on the GPU ({rungs}): {backends.triton_unsupported_reason(probe)}")
        return 2
    report: dict = {"device": torch.cuda.get_device_name(0)}
    print("GPU tests:", flush=True)
    report["gpu_tests"] = run_gpu_tests()
    print(" ", report["gpu_tests"], flush=True)
    print("correctness against float64:", flush=True)
    report["correctness"] = correctness(device)
    print("timings:", flush=True)
    configs = QUICK if args.quick else CONFIGS
    report["timings"] = {str(c): timings(c, device) for c in configs}
    print("float32 information accuracy:", flush=True)
    lengths = entropy_accuracy.QUICK_LENGTHS if args.quick else entropy_accuracy.LENGTHS
    report["accuracy"] = entropy_accuracy.measure(lengths, device, max(1, min(16, (os.cpu_count() or 2) - 1)))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_second_order.json"), "w") as f:
        json.dump(report, f, indent=1)

    print(f"\n== {report['device']} ==\nGPU tests: {report['gpu_tests']}")
    print(f"\ncorrectness (relative RMSE against float64 on the CPU; limit {RMSE_LIMIT:g})")
    for name, value in report["correctness"]:
        print(f"  {name:45s} {value:.2e} {'ok' if value <= RMSE_LIMIT else 'OVER'}")
    print("\n| B x T x K x C | query | time | x Log fwd+bwd | peak memory |\n|---|---|---|---|---|")
    for config, rows in report["timings"].items():
        base = rows["Log forward+backward"]["seconds"]
        for name, row in rows.items():
            ratio = row["seconds"] / base
            flag = "" if name.startswith(("Log", "entropy forward ")) or ratio <= TARGET else " (over 3x)"
            print(f"| {config} | {name} | {row['seconds'] * 1e3:.2f} ms | {ratio:.2f}{flag} | "
                  f"{row['peak_bytes'] / 2**20:.0f} MiB |")
    entropy_accuracy.print_table(report["accuracy"], device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
