"""The Triton kernels on one GPU, in one run: checks, then timings.

    python benchmarks/gpu_bench.py --out DIR          # everything (~5 min on an H100)
    python benchmarks/gpu_bench.py --quick --out DIR  # small configs, seconds

1. the GPU tests (``pytest -m gpu`` on :data:`GPU_TEST_FILES`);
2. per config (B, T, K, C): log Z, the Viterbi score and (small configs) the
   posteriors of our float32 kernels against the float64 PyTorch scan on the
   CPU (computed in background processes while the GPU works), bitwise
   run-to-run determinism, and the agreement of flash-semicrf's log Z;
3. median times of forward (`log_partition` under no_grad), forward+backward
   (`log_partition(...).sum().backward()`: the gradient of every input) and
   Viterbi (max sweep + traceback):
   ours, flash-semicrf 0.2.0's Triton path and pytorch-struct 0.5 where they
   fit (an anchor is skipped where its earlier figures say it takes over a
   minute; those figures are printed instead); peak GPU memory beyond the
   inputs; our time per position (time / T) per sweep;
4. a sweep of num_warps for our two sweeps (how the heuristic was chosen).

Writes ``gpu_bench.json`` and ``gpu_bench.png`` (time vs T) under --out and
prints the table last. Scores are zero-mean per sequence and label and
`start = logsumexp(transition, 0)`, so flash-semicrf's model equals ours.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import gc
import json
import math
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GPU_TEST_FILES = ["tests/test_kernels.py", "tests/test_determinism.py"]  # those with tests marked gpu
CONFIGS = [(4, 1000, 32, 24), (16, 2000, 16, 12), (4, 10000, 100, 24), (1, 100000, 64, 8), (1, 1000000, 64, 8)]
QUICK = [(4, 1000, 32, 24), (1, 20000, 64, 8)]
# flash-semicrf 0.2.0 Triton on an H100 (docs/performance.md, "Anchor figures"), seconds; inf: "over 60 s".
ANCHOR_FIGURES = {
    (4, 1000, 32, 24): {"fwd": 0.040, "fwd_bwd": 0.500, "max": 0.011},
    (16, 2000, 16, 12): {"fwd": 0.038, "fwd_bwd": 0.275, "max": 0.010},
    (4, 10000, 100, 24): {"fwd": 1.3, "fwd_bwd": math.inf},
    (1, 100000, 64, 8): {"fwd": 4.8, "fwd_bwd": math.inf},
}
WARM_UP_S = 0.3  # busy GPU before each timing: a forward timed right after the CPU-side checks read 3.7 ms, not 1.9
ANCHOR_LIMIT_S = 20.0  # an anchor run expected to take longer is skipped (device time is scarce)
ANCHOR_MAX_T = 100_000  # beyond: not run (T-scaling the row above gives ~48 s forward)
TORCH_STRUCT_MAX_T = 2000  # its chart grows with T; it already fails at the first config
EDGE_LIMIT_BYTES = 4 * 2**30  # pytorch-struct's (B, T, K+1, C, C) edge tensor
POSTERIOR_FIELDS = ("segment_start", "segment_end", "transition", "duration", "first", "last")
# On-chip latency of one log-semiring step (docs/performance.md, "Anchor figures"), us, by padded C.
STEP_FLOOR_US = {8: 0.19, 16: 0.33, 32: 0.6}


# -- inputs and float64 references (CPU, background processes) ---------------
def make_inputs(B, T, K, C, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed + T + K + C)
    scores = torch.randn(B, T, C, generator=g)
    scores = scores - scores.mean(dim=1, keepdim=True)
    transition = 0.5 * torch.randn(C, C, generator=g)
    duration = 0.5 * torch.randn(K, C, generator=g)
    return scores, transition, duration, torch.logsumexp(transition, dim=0)


def potentials(tensors, device, dtype):
    from semiring_semicrf import SemiMarkovPotentials
    scores, transition, duration, start = (t.to(device, dtype) for t in tensors)
    return SemiMarkovPotentials(scores, transition, duration, start=start, validate_args=False)


def reference_job(shape, what):
    """float64 CPU reference: 'log' / 'max' -> list (the PyTorch scan);
    'posterior' -> dict of tensors (the PyTorch backend's outside pass)."""
    import torch
    torch.set_num_threads(1)
    from semiring_semicrf import MaxSemiring, semimarkov_scan
    p = potentials(make_inputs(*shape), "cpu", torch.float64)
    if what == "log":
        return semimarkov_scan(p).tolist()
    if what == "max":
        return semimarkov_scan(p, MaxSemiring()).tolist()
    from semiring_semicrf.backends import torch_sweeps
    factors = p.factors()
    ref = torch_sweeps.outside(factors, torch_sweeps.inside(factors)[1])
    return {name: getattr(ref, name) for name in POSTERIOR_FIELDS}


def start_references(configs):
    workers = max(2, min(len(configs) * 2 + 2, (os.cpu_count() or 4) - 2))
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    jobs = {}
    for shape in sorted(configs, key=lambda s: -s[1]):  # the longest first
        for what in ("log", "max"):
            jobs[(shape, what)] = pool.submit(reference_job, shape, what)
        jobs[(shape, "posterior")] = pool.submit(reference_job, shape, "posterior")
    return pool, jobs


# -- timing -------------------------------------------------------------------
def event_seconds(fn):
    import torch
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    end.synchronize()
    del out
    return start.elapsed_time(end) / 1e3


def cuda_time(fn, budget_s=2.0, max_reps=20, warm_up=True):
    """Median seconds of `fn()` (CUDA events), after warm-up calls for at
    least WARM_UP_S (the GPU's clocks rise from idle; one call, unless the
    caller already made one, where a call takes longer); calls over 2 s are
    timed once."""
    import torch
    begin = time.perf_counter()
    while warm_up or time.perf_counter() - begin < WARM_UP_S:
        fn()
        torch.cuda.synchronize()
        warm_up = False
    times = [event_seconds(fn)]
    more = 0 if times[0] > 2 else max(2, min(max_reps, int(budget_s / max(times[0], 1e-5))))
    times += [event_seconds(fn) for _ in range(more)]
    return statistics.median(times)


def peak_bytes(fn):
    """Peak GPU memory allocated during `fn()` beyond what existed before
    (the inputs), outputs included."""
    import torch
    gc.collect()  # a collection inside the window once freed earlier tensors: negative peaks
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def guarded(fn):
    """`fn()`, or the reason it failed (OOM, compile error) as a string."""
    import torch
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "out of memory"
    except Exception as exc:  # noqa: BLE001 - an anchor failing is a result, not a crash
        torch.cuda.empty_cache()
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:60] if str(exc) else ''}"


# -- one config -----------------------------------------------------------------
def ours(shape, tensors, refs, record):
    import torch
    from semiring_semicrf import kernels, log_partition
    from semiring_semicrf.kernels.backward import outside_sweep
    from semiring_semicrf.kernels.common import duration_ring, flow_num_warps, pad, sweep_num_warps
    from semiring_semicrf.kernels.forward import forward_sweep
    from semiring_semicrf.posterior import Posterior
    B, T, K, C = shape
    gpu = [t.cuda() for t in tensors]

    def fresh():
        return potentials(gpu, "cuda", torch.float32)

    def fwd():
        with torch.no_grad():
            return log_partition(fresh(), backend="triton")

    def fwd_bwd():  # the public path: every gradient, as flash-semicrf's timing
        leaves = [t.detach().requires_grad_() for t in gpu]
        log_partition(potentials(leaves, "cuda", torch.float32), backend="triton").sum().backward()
        return [t.grad for t in leaves]

    def vit():
        return kernels.viterbi(fresh().factors())

    # correctness and determinism
    p = fresh().factors()
    log_z, saved = kernels.inside(p)
    post = kernels.outside(p, saved)
    score, labels, starts = kernels.viterbi(p)
    again_z, again_saved = kernels.inside(p)
    again_post = kernels.outside(p, again_saved)
    again_vit = kernels.viterbi(p)
    record["bitwise_deterministic"] = bool(
        torch.equal(log_z, again_z) and all(torch.equal(getattr(post, f), getattr(again_post, f)) for f in POSTERIOR_FIELDS)
        and all(torch.equal(a, b) for a, b in zip((score, labels, starts), again_vit)))
    n_seg = post.segment_start.sum(dim=(1, 2))
    record["posterior_sums_error"] = max(
        float((post.first.sum(-1) - 1).abs().max()), float((post.last.sum(-1) - 1).abs().max()),
        float(((post.duration.sum(dim=(1, 2)) - n_seg) / n_seg).abs().max()),
        float(((post.transition.sum(dim=(1, 2)) - (n_seg - 1)) / n_seg).abs().max()))
    record["log_z"] = log_z.tolist()
    record["log_z_rel_err"] = rel_err(log_z.cpu().double(), torch.tensor(refs["log"].result()))
    record["viterbi_rel_err"] = rel_err(score.cpu().double(), torch.tensor(refs["max"].result()))
    record["viterbi_path_valid"] = bool((labels >= 0).all() and starts[:, 0].all())
    ref = refs["posterior"].result()
    record["posterior_rel_err"] = {k: rel_err(getattr(post, k).cpu().double(), ref[k]) for k in POSTERIOR_FIELDS}
    record["posterior_max_abs_err"] = max(float((getattr(post, k).cpu().double() - ref[k]).abs().max())
                                          for k in ("segment_start", "segment_end", "first", "last"))
    ref_labels = Posterior(None, ref["segment_start"], ref["segment_end"], *(None,) * 4).label_marginals()
    record["label_marginals_max_abs_err"] = float((post.label_marginals().cpu().double() - ref_labels).abs().max())
    del post, again_post, saved, again_saved

    # timings and memory
    record["ours"] = {"fwd": cuda_time(fwd), "fwd_bwd": cuda_time(fwd_bwd), "max": cuda_time(vit),
                      "mem_fwd_bwd": peak_bytes(fwd_bwd), "mem_fwd": peak_bytes(fwd)}
    record["input_bytes"] = sum(t.numel() * t.element_size() for t in gpu)

    # num_warps sweep of the two sweeps alone (factors prepared once)
    def prepare():
        factors = fresh().factors()
        return factors, duration_ring(factors.duration), factors.enter, factors.leave

    inputs, ring, _, _ = prepare()
    KP, CP = pad(K), pad(C)
    chosen = f"{sweep_num_warps(KP, CP)}/{flow_num_warps(KP, CP)}"
    sweep = {}
    for w in (1, 2, 4, 8):
        if (w == 1 and KP * CP > 4096) or (w == 8 and KP * CP < 4096):
            continue
        f = cuda_time(lambda: forward_sweep(inputs, ring, False, num_warps=w), budget_s=1.0)
        _, _, alpha_hat, u_hat, scale = forward_sweep(inputs, ring, False, num_warps=w)
        o = cuda_time(lambda: outside_sweep(inputs, ring, alpha_hat, u_hat, scale, num_warps=w), budget_s=1.0)
        m = cuda_time(lambda: forward_sweep(inputs, ring, True, num_warps=w), budget_s=1.0)
        sweep[w] = {"forward_sweep": f, "outside": o, "max_sweep": m}
    record["num_warps_sweep"] = {"chosen": chosen, "times": sweep}
    record["ours"]["prepare"] = cuda_time(prepare)


def rel_err(got, want):
    import torch
    return float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp(min=1e-30))


def flash(shape, tensors, record):
    import torch
    from flash_semicrf.streaming import semi_crf_streaming_forward
    B, T, K, C = shape
    if T > ANCHOR_MAX_T:
        record["flash"] = {k: "skipped" for k in ("fwd", "fwd_bwd", "max")}
        return
    scores, transition, duration, _ = (t.cuda() for t in tensors)
    cum = torch.nn.functional.pad(scores.cumsum(dim=1), (0, 0, 1, 0))
    lengths = torch.full((B,), T, dtype=torch.long, device="cuda")
    figures = ANCHOR_FIGURES.get(shape, {})

    def run(semiring):
        with torch.no_grad():
            return semi_crf_streaming_forward(cum, transition, duration, lengths, K, semiring=semiring)

    def run_grad():
        c, tr, du = (x.clone().requires_grad_() for x in (cum, transition, duration))
        semi_crf_streaming_forward(c, tr, du, lengths, K).sum().backward()
        return c.grad

    z = guarded(lambda: run("log"))  # also the forward's warm-up (compilation)
    if not isinstance(z, str):
        record["flash_log_z_rel_diff"] = rel_err(z.double().cpu(), torch.tensor(record["log_z"]).double())
    out = {}
    for name, fn in (("fwd", lambda: run("log")), ("fwd_bwd", run_grad), ("max", lambda: run("max"))):
        if figures.get(name, 0.0) > ANCHOR_LIMIT_S:
            out[name] = "skipped"
        elif name == "fwd" and isinstance(z, str):
            out[name] = z
        else:
            out[name] = guarded(lambda: cuda_time(fn, budget_s=3.0, warm_up=name != "fwd"))
    record["flash"] = out


def torch_struct(shape, tensors, record):
    import torch
    B, T, K, C = shape
    need = B * T * (K + 1) * C * C * 4
    if need > EDGE_LIMIT_BYTES or T > TORCH_STRUCT_MAX_T:
        record["torch_struct"] = {k: "skipped" for k in ("fwd", "fwd_bwd", "max")}
        return
    import torch_struct as ts
    p = potentials([t.cuda() for t in tensors], "cuda", torch.float32)
    edges = guarded(p.to_edges)
    if isinstance(edges, str):
        record["torch_struct"] = {"fwd": edges, "fwd_bwd": "-", "max": "-"}
        return
    lengths = torch.full((B,), T + 1, dtype=torch.long, device="cuda")

    def fwd_bwd():
        e = edges.clone().requires_grad_()
        ts.SemiMarkovCRF(e, lengths=lengths).partition.sum().backward()
        return e.grad

    fwd = guarded(lambda: cuda_time(lambda: ts.SemiMarkovCRF(edges, lengths=lengths).partition))
    record["torch_struct"] = {"fwd": fwd, "fwd_bwd": "-", "max": "-"}
    if not isinstance(fwd, str):
        record["torch_struct"]["fwd_bwd"] = guarded(lambda: cuda_time(fwd_bwd))
        record["torch_struct"]["max"] = guarded(lambda: cuda_time(lambda: ts.SemiMarkovCRF(edges, lengths=lengths).max))
    del edges
    torch.cuda.empty_cache()


# -- report ---------------------------------------------------------------------
def fmt(x):
    if not isinstance(x, float):
        return "-" if x in (None, "skipped") else str(x)[:14]
    if math.isinf(x):
        return ">60 s"
    return f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.2f} s"


def anchor(record, key):
    """(seconds or None, shown): measured here, else the earlier figure in brackets."""
    got = record["flash"].get(key)
    if isinstance(got, float):
        return got, fmt(got)
    figure = ANCHOR_FIGURES.get(tuple(record["shape"]), {}).get(key)
    if figure is not None and got == "skipped":
        return figure, f"[{fmt(figure)}]"
    return None, fmt(got)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {"fwd": ("forward", "o"), "fwd_bwd": ("forward+backward", "s"), "max": ("Viterbi / max", "^")}
    for color, (key, (label, marker)) in zip(("C0", "C1", "C2"), styles.items()):
        ax.plot([r["shape"][1] for r in results], [r["ours"][key] for r in results], marker=marker, color=color,
                label=f"ours: {label}")
        measured, figures = [], []
        for r in results:
            seconds, _ = anchor(r, key)
            if seconds is not None and not math.isinf(seconds):
                (measured if isinstance(r["flash"].get(key), float) else figures).append((r["shape"][1], seconds))
        if measured:
            ax.plot(*zip(*measured), marker=marker, color=color, ls="--", mfc="none",
                    label=f"flash-semicrf: {label}")
        if figures:
            ax.plot(*zip(*figures), marker=marker, color=color, ls="none", mfc="none", ms=9, alpha=0.6,
                    label=f"flash-semicrf, earlier figure: {label}")
    for i, r in enumerate(results):  # labels alternate below/above the points; the last one leftwards
        last = i == len(results) - 1
        ax.annotate("B={} K={} C={}".format(r["shape"][0], r["shape"][2], r["shape"][3]),
                    (r["shape"][1], r["ours"]["fwd"]), textcoords="offset points",
                    xytext=(-6 if last else 4, -24 if last else -13 if i % 2 == 0 else -22), ha="right" if last else "left",
                    fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("time (s), median")
    ax.set_title(f"semi-Markov CRF, log semiring and max, one {results[0]['gpu']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def table(results):
    header = ["B x T x K x C", "op", "ours", "us/step", "floor us", "flash-semicrf", "flash/ours",
              "torch-struct", "GPU mem ours"]
    rows = []
    for r in results:
        B, T, K, C = r["shape"]
        floor = STEP_FLOOR_US[min(max(8, 2 ** math.ceil(math.log2(C))), 32)]
        for key, sweeps in (("fwd", 1), ("fwd_bwd", 2), ("max", 1)):
            mine = r["ours"][key]
            seconds, shown = anchor(r, key)
            speedup = "-" if seconds is None else (
                f">{60 / mine:.0f}x" if math.isinf(seconds) else f"{seconds / mine:.0f}x")
            mem = {"fwd": r["ours"]["mem_fwd"], "fwd_bwd": r["ours"]["mem_fwd_bwd"]}.get(key)
            rows.append([f"{B}x{T}x{K}x{C}" if key == "fwd" else "", key, fmt(mine),
                         f"{mine / T / sweeps * 1e6:.3f}", f"{floor:.2f}", shown, speedup,
                         fmt(r["torch_struct"].get(key)), f"{mem / 2**20:.0f} MiB" if mem is not None else ""])
    widths = [max(len(str(x[i])) for x in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def checks_table(results):
    lines = ["config             logZ rel err  viterbi rel err  posterior rel err (max abs)  label marg max abs  "
             "sums err  flash logZ diff  bitwise  prep ms  num_warps (chosen) w:fwd/outside/max ms"]
    for r in results:
        sweep = " ".join(f"{w}:{t['forward_sweep'] * 1e3:.2f}/{t['outside'] * 1e3:.2f}/{t['max_sweep'] * 1e3:.2f}"
                         for w, t in r["num_warps_sweep"]["times"].items())
        lines.append(f"{'x'.join(map(str, r['shape'])):<18} {r['log_z_rel_err']:<13.1e} {r['viterbi_rel_err']:<16.1e} "
                     f"{max(r['posterior_rel_err'].values()):<8.1e} ({r['posterior_max_abs_err']:.1e})        "
                     f"{r['label_marginals_max_abs_err']:<19.1e} "
                     f"{r['posterior_sums_error']:<9.1e} "
                     f"{r.get('flash_log_z_rel_diff', float('nan')):<16.1e} {str(r['bitwise_deterministic']):<8} "
                     f"{r['ours']['prepare'] * 1e3:<8.2f} "
                     f"({r['num_warps_sweep']['chosen']}) {sweep}")
    return "\n".join(lines)


def run_gpu_tests():
    t0 = time.perf_counter()
    # -P: the installed package, not the source folder (whose kernels/ lies outside it)
    cmd = [sys.executable, "-P", "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *GPU_TEST_FILES]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    summary = (out.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"returncode": out.returncode, "summary": summary, "seconds": time.perf_counter() - t0,
            "tail": out.stdout[-3000:] + out.stderr[-2000:]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--no-anchors", action="store_true")
    args = parser.parse_args()
    import torch
    import triton
    configs = QUICK if args.quick else CONFIGS
    pool, jobs = start_references(configs)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    print(meta, flush=True)
    tests = None if args.skip_tests else run_gpu_tests()
    if tests:
        print("gpu tests:", tests["summary"], f"({tests['seconds']:.0f} s)", flush=True)
        if tests["returncode"] != 0:
            print(tests["tail"], flush=True)
    results = []
    for shape in configs:
        t0 = time.perf_counter()
        tensors = make_inputs(*shape)
        refs = {what: jobs[(shape, what)] for what in ("log", "max", "posterior") if (shape, what) in jobs}
        record = {"shape": list(shape), "gpu": meta["gpu"], "flash": {}, "torch_struct": {}}
        ours(shape, tensors, refs, record)
        if not args.no_anchors:
            flash(shape, tensors, record)
            torch_struct(shape, tensors, record)
        results.append(record)
        print(f"{shape}: done in {time.perf_counter() - t0:.0f} s; ours {record['ours']}; "
              f"flash {record['flash']}; torch-struct {record['torch_struct']}", flush=True)
        with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
            json.dump({"meta": meta, "tests": tests, "results": results}, f, indent=1, default=str)
    pool.shutdown(cancel_futures=True)
    from plot_performance import plot_performance  # beside this script
    plot_performance(results, os.path.join(args.out, "gpu_bench.png"), ANCHOR_FIGURES)
    print("\nchecks (float32 kernels vs float64 PyTorch scan on CPU; rel err = ||ours - ref|| / ||ref||)")
    print(checks_table(results))
    print(f"\n{meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}; median times; "
          "us/step = time / T per sweep (fwd+bwd: 2 sweeps); floor = on-chip step latency (docs/performance.md); "
          "[..] = earlier figure (docs/performance.md), not run here")
    if tests:
        print("gpu tests:", tests["summary"])
    print(table(results))


if __name__ == "__main__":
    main()
