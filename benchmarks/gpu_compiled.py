"""The compiled generic scan on one GPU, in one run: checks, compile times, timings.

    python3 -u benchmarks/gpu_compiled.py --out DIR > DIR/log      # ~5 min on an H200
    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python3 -u benchmarks/gpu_compiled.py --out DIR --variance 5
        # KMax(5) compiled five times: each compile's forward and the configurations of its costliest kernels

At (4, 1000, 32, 24), float32, for the semiring of notebooks/02_new_semiring.ipynb,
`KMaxSemiring(5)` and `EntropySemiring()` (their specializations bypassed:
`backend="compiled"` runs the generic scan, compiled, as CUDA graphs):

- compile times apart: the first forward and the first forward+backward;
- median times of the forward (under no_grad) and of the forward+backward
  (`.sum().backward()` to every input: the compiled blocks' vector-Jacobian
  products, every block kept within `compiled.KEPT_BYTES`); the same with no
  block kept (each block's backward runs its forward again), and the peak
  memory of both; the forward without CUDA graphs (the same compiled steps,
  launched one by one) shows what the graphs save;
- the kernels a position of the forward and of the forward+backward
  launches (one call under torch.profiler, the CUDA graphs' kernels
  included), their GPU time, and the forward+backward's costliest kernels:
  with kernels of a microsecond or two, the time follows their count;
- checks: the compiled results and gradients against the eager generic scan
  (`backend="reference"`, float32, on the GPU) as `max |diff| / max |eager|`,
  and the compiled and eager float32 results and gradients against the eager
  float64 scan's (float32 rounding is the same order in both).

Targets (issue 14): forward at most 20 ms, forward+backward at most 3x the
forward. Writes `gpu_compiled.json` under --out and prints the table last.
The GPU tests of the compiled rung are separate:
`python -m pytest -m gpu tests/test_compiled.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_compiled import CHOICES, forward, forward_backward, median_time, problem, relative, semirings  # noqa: E402
from cpu_compiled import measure as measure_times  # noqa: E402
from gpu_diagnose import kernel_times  # noqa: E402

SIZE = (4, 1000, 32, 24)
TARGET_FORWARD_S = 0.020
TARGET_RATIO = 3.0


def without_graphs(p, semiring, repeats: int) -> float:
    """The compiled forward's median time with its CUDA graphs off."""
    from semiring_semicrf.backends import compiled
    from semiring_semicrf.backends.reference import ScanProgram
    blocks = compiled.blocks_for(ScanProgram(p, semiring))
    graphs, blocks.graphs = blocks.graphs, False
    try:
        return median_time(lambda: forward(p, semiring, "compiled"), p.device, repeats)
    finally:
        blocks.graphs = graphs


def checkpointed(p, semiring, repeats: int) -> dict:
    """Forward+backward with no block kept (every block's backward runs its
    forward again: `KEPT_BYTES = 0`) against the shipped budget: median
    times and the peak memory each allocates beyond the inputs."""
    from semiring_semicrf.backends import compiled
    row = {}
    budget = compiled.KEPT_BYTES
    for name, kept in (("kept", budget), ("checkpointed", 0)):
        compiled.KEPT_BYTES = kept
        try:
            forward_backward(p, semiring, "compiled")  # captures this variant's graphs
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            forward_backward(p, semiring, "compiled")
            torch.cuda.synchronize()
            row[f"peak_mb_{name}"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            row[f"fwd_bwd_{name}"] = median_time(lambda: forward_backward(p, semiring, "compiled"), p.device, repeats)
        finally:
            compiled.KEPT_BYTES = budget
    return row


def kernel_profile(p, semiring) -> dict:
    """Kernels a position of the compiled forward and forward+backward
    launch, their summed GPU time a position, and the forward+backward's
    costliest kernels: where the backward's time goes."""
    row = {}
    for query, fn in (("fwd", lambda: forward(p, semiring, "compiled")),
                      ("fwd_bwd", lambda: forward_backward(p, semiring, "compiled"))):
        found = kernel_times(fn)
        row[f"{query}_kernels_per_step"] = sum(c for c, _ in found.values()) / p.T
        row[f"{query}_gpu_us_per_step"] = 1e6 * sum(t for _, t in found.values()) / p.T
        row[f"{query}_top"] = {name: [count / p.T, 1e6 * t / p.T] for name, (count, t) in list(found.items())[:12]}
    return row


def sm_clock_mhz() -> int | None:
    """The GPU's current SM clock (MHz), read with nvidia-smi (None where it cannot be read)."""
    import subprocess
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader,nounits",
                                f"--id={torch.cuda.current_device()}"], capture_output=True, text=True, timeout=10)
        return int(found.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def steady(p, semiring, seconds: float, repeats: int) -> dict:
    """Forward and forward+backward median times after `seconds` of the
    same call back to back (the GPU busy, as in training, rather than idle
    through a compile), with the SM clock before and after each warm-up."""
    row: dict = {}
    for query, fn in (("fwd", lambda: forward(p, semiring, "compiled")),
                      ("fwd_bwd", lambda: forward_backward(p, semiring, "compiled"))):
        row[f"{query}_clock_before"] = sm_clock_mhz()
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            fn()
        row[f"{query}_clock_after"] = sm_clock_mhz()
        row[f"{query}_steady"] = median_time(fn, p.device, repeats)
    return row


def measure(p, p64, name, semiring, repeats: int, warm: float = 0.0) -> dict:
    results: dict = {}
    row = measure_times(p, name, semiring, p.device, repeats, results)
    if warm > 0:
        row.update(steady(p, semiring, warm, repeats))
    row["profile"] = kernel_profile(p, semiring)
    row["fwd_no_graphs"] = without_graphs(p, semiring, max(1, repeats // 2))
    row.update(checkpointed(p, semiring, repeats))
    _, truth_grads = forward_backward(p64, semiring, "reference")
    truth = forward(p64, semiring, "reference")
    row.update(err_compiled=relative(results["compiled"], truth), err_eager=relative(results["eager"], truth))
    for backend, found in (("compiled", results["compiled_grads"]), ("reference", results["eager_grads"])):
        row[f"grad_err_{backend}"] = max(relative(g, w) for g, w in zip(found, truth_grads))
    row["meets_targets"] = row["fwd"] <= TARGET_FORWARD_S and row["fwd_bwd"] <= TARGET_RATIO * row["fwd"]
    return row


def phases(p, semiring, repeats: int) -> dict:
    """Where a compiled forward+backward's wall time goes: the tracked
    forward and the backward timed apart (median ms), and the host's
    costliest operators of one call (torch.profiler, self CPU ms): when
    the wall time exceeds the kernels', the host is what the GPU waits on."""
    import statistics

    from cpu_compiled import leaves_of, synchronize, timed

    from semiring_semicrf import semimarkov_scan
    times: dict = {"forward": [], "backward": []}
    for _ in range(repeats):
        q, leaves = leaves_of(p)
        seconds, out = timed(lambda q=q: semimarkov_scan(q, semiring, backend="compiled"), p.device)
        times["forward"].append(seconds)
        times["backward"].append(timed(lambda out=out, leaves=leaves: torch.autograd.grad(
            out.sum(), leaves, allow_unused=True), p.device)[0])
    row = {f"{k}_ms": 1e3 * statistics.median(v) for k, v in times.items()}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        forward_backward(p, semiring, "compiled")
        synchronize(p.device)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    row["host_top"] = [(e.key[:60], e.count, round(e.self_cpu_time_total / 1e3, 2)) for e in events[:14]]
    return row


def with_inductor_options(p, options: dict, repeats: int, compiles: int) -> list:
    """Each semiring compiled afresh `compiles` times under inductor's
    `options` (e.g. `coordinate_descent_tuning=True`): forward and
    forward+backward median times, to weigh an option against the shipped
    compile in one run."""
    import torch._inductor.config as inductor_config

    from semiring_semicrf.backends import compiled
    rows = []
    for name, semiring in list(semirings().items()) * compiles:
        compiled.clear_cache()
        with inductor_config.patch(options):
            forward(p, semiring, "compiled")
            forward_backward(p, semiring, "compiled")
        rows.append({"semiring": name, "options": options,
                     "fwd": median_time(lambda s=semiring: forward(p, s, "compiled"), p.device, repeats),
                     "fwd_bwd": median_time(lambda s=semiring: forward_backward(p, s, "compiled"), p.device, repeats)})
        print(rows[-1], flush=True)
    return rows


def inductor_kernels() -> dict:
    """Every inductor Triton kernel alive, by `id`: its autotuner."""
    import gc

    from torch._inductor.runtime.triton_heuristics import CachingAutotuner
    # type(), not isinstance: isinstance dereferences the weak proxies among the objects
    return {id(o): o for o in gc.get_objects() if issubclass(type(o), CachingAutotuner)}


def kernel_choice(tuner) -> dict:
    """A compiled kernel's name, the launch configuration its autotuning
    chose and a hash of its source."""
    import hashlib
    launchers = getattr(tuner, "launchers", None) or []
    return {"name": tuner.fn.__name__, "config": str(getattr(launchers[0], "config", None)) if launchers else None,
            "source": hashlib.sha1(str(getattr(tuner.fn, "src", "")).encode()).hexdigest()[:10]}


def compile_variance(p, semiring, repeats: int, compiles: int, out: str, options: dict) -> list:
    """`semiring` compiled afresh `compiles` times: each compile's forward
    time with and without its CUDA graphs, the forward's costliest kernels
    (GPU us a position) and, for each, the configuration autotuning chose
    and a hash of its source; the sources of the two costliest go to
    `out/variance/`. Where one kernel's time differs between compiles, this
    tells whether its code, its configuration or neither changed (the
    autotuner's timings of its candidates: `out/variance/autotune.log`).
    Compiled under inductor's `options`."""
    import logging

    import torch._inductor.config as inductor_config

    from semiring_semicrf.backends import compiled
    rows = []
    os.makedirs(os.path.join(out, "variance"), exist_ok=True)
    # the autotuner's timing of each candidate configuration, as it logs them
    autotuner_log = logging.getLogger("torch._inductor.runtime.triton_heuristics")
    autotuner_log.setLevel(logging.DEBUG)
    autotuner_log.addHandler(logging.FileHandler(os.path.join(out, "variance", "autotune.log")))
    for index in range(compiles):
        compiled.clear_cache()
        before = inductor_kernels()
        with inductor_config.patch(options):
            forward(p, semiring, "compiled")
        fwd = median_time(lambda: forward(p, semiring, "compiled"), p.device, repeats)
        found = kernel_times(lambda: forward(p, semiring, "compiled"), width=None)
        alive = inductor_kernels()
        tuners: dict = {}
        # this compile's kernels first; a kernel whose source an earlier compile had may be that one, reused
        for key, tuner in sorted(alive.items(), key=lambda item: item[0] in before):
            tuners.setdefault(tuner.fn.__name__, (tuner, key not in before))
        top = []
        for place, (name, (count, seconds)) in enumerate(list(found.items())[:6]):
            choice = None
            if name in tuners:
                tuner, new = tuners[name]
                choice = {**kernel_choice(tuner), "new": new}
                if place < 2:  # the sources of the two costliest
                    with open(os.path.join(out, "variance", f"compile{index}_{place}.py"), "w") as f:
                        f.write(f"# {choice}\n{getattr(tuner.fn, 'src', '')}")
            top.append({"kernel": name, "per_position": count / p.T, "us_per_position": 1e6 * seconds / p.T,
                        "choice": choice})
        rows.append({"compile": index, "fwd": fwd,
                     "fwd_no_graphs": without_graphs(p, semiring, max(1, repeats // 2)), "top": top})
        print(json.dumps(rows[-1], default=str), flush=True)
    return rows


def option_argument(text: str) -> tuple:
    key, value = text.split("=", 1)
    return key, {"True": True, "False": False}.get(value, value)


def table(rows) -> str:
    head = ("semiring", "fwd ms", "f+b ms", "f+b/fwd", "f+b checkpointed ms", "peak MB kept (ckpt)",
            "no graphs ms", "eager fwd ms", "eager f+b ms",
            "compile fwd s", "compile f+b s", "vs eager", "grads vs eager", "err f32 (eager's)",
            "grad err f32 (eager's)", "targets")
    lines, errors = [head], []
    for r in rows:
        if "error" in r:
            errors.append(f"{r['semiring']}: {r['error']}")
            continue
        ms = lambda key, r=r: f"{1e3 * r[key]:.1f}"  # noqa: E731
        lines.append((r["semiring"], ms("fwd"), ms("fwd_bwd"), f"{r['fwd_bwd'] / r['fwd']:.2f}",
                      ms("fwd_bwd_checkpointed"), f"{r['peak_mb_kept']:.0f} ({r['peak_mb_checkpointed']:.0f})",
                      ms("fwd_no_graphs"),
                      ms("eager_fwd"), ms("eager_fwd_bwd"), f"{r['compile_fwd_s']:.1f}", f"{r['compile_bwd_s']:.1f}",
                      f"{r['diff']:.1e}", f"{r['grad_diff']:.1e}", f"{r['err_compiled']:.1e} ({r['err_eager']:.1e})",
                      f"{r['grad_err_compiled']:.1e} ({r['grad_err_reference']:.1e})",
                      "met" if r["meets_targets"] else "MISSED"))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join(["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines] + errors)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_compiled.json")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--options", nargs="*", type=option_argument, default=[],
                        help="inductor options (KEY=VALUE) to time the semirings compiled under, after the main table")
    parser.add_argument("--compiles", type=int, default=1, help="fresh compiles under --options")
    parser.add_argument("--warm", type=float, default=0.0, help="also time forward and forward+backward after "
                        "this many seconds of back-to-back calls, with the SM clock (default: not)")
    parser.add_argument("--options-only", action="store_true", help="only the --options rows (no main table)")
    parser.add_argument("--only", nargs="+", choices=CHOICES, default=CHOICES, help="the semirings of the main table")
    parser.add_argument("--variance", type=int, default=0, help="only: KMax(5) compiled afresh this many times, "
                        "each compile's forward, its costliest kernels and their autotuned configurations "
                        "(under --options)")
    parser.add_argument("--phases", action="store_true", help="only the forward and backward apart, and host "
                        "profiles (no table)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_compiled.py needs a CUDA device")
    os.makedirs(args.out, exist_ok=True)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, size {SIZE}, float32", flush=True)
    p = problem(*SIZE, device="cuda")
    p64 = problem(*SIZE, device="cuda", dtype=torch.float64)
    if args.variance:
        semiring = semirings(("kmax",))["KMax(5)"]
        rows = compile_variance(p, semiring, args.repeats, args.variance, args.out, dict(args.options))
        with open(os.path.join(args.out, "gpu_compiled_variance.json"), "w") as f:
            json.dump(rows, f, indent=1, default=str)
        for r in rows:
            print(f"compile {r['compile']}: fwd {1e3 * r['fwd']:.1f} ms ({1e3 * r['fwd_no_graphs']:.1f} without "
                  "graphs)")
            for k in r["top"]:
                name = k["kernel"] if len(k["kernel"]) <= 50 else f"{k['kernel'][:44]}..{k['kernel'][-4:]}"
                print(f"    {k['per_position']:5.2f} {k['us_per_position']:6.2f}  {name:50s}  "
                      f"{(k['choice'] or {}).get('config')} {(k['choice'] or {}).get('source')}")
        return
    if args.phases:
        for name, semiring in semirings().items():
            forward_backward(p, semiring, "compiled")  # compiles
            print(name, json.dumps(phases(p, semiring, args.repeats), indent=0), flush=True)
        return
    rows = []
    for name, semiring in ([] if args.options_only else semirings(args.only).items()):
        started = time.perf_counter()
        try:
            rows.append(measure(p, p64, name, semiring, args.repeats, args.warm))
        except Exception as exc:  # noqa: BLE001 - reported in the table; the other semirings still run
            traceback.print_exc()
            rows.append({"semiring": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(f"{name}: {time.perf_counter() - started:.0f} s", rows[-1], flush=True)
    option_rows = with_inductor_options(p, dict(args.options), args.repeats, args.compiles) if args.options else []
    with open(os.path.join(args.out, "gpu_compiled.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "size": SIZE, "rows": rows,
                   "option_rows": option_rows}, f, indent=1, default=str)
    print(f"\n{SIZE} float32; targets: forward <= {1e3 * TARGET_FORWARD_S:.0f} ms, forward+backward <= "
          f"{TARGET_RATIO:.0f}x forward; 'vs eager', 'grads vs eager': max |compiled - eager| / max |eager| "
          "(float32); 'err f32', 'grad err f32': the compiled (and eager) float32 results and gradients against "
          "the float64 eager scan's")
    print(table(rows))
    print("\nKernels a position (count, GPU us) of the compiled forward and forward+backward, and the "
          "forward+backward's costliest kernels (count, GPU us a position):")
    for r in rows:
        if "profile" in r:
            prof = r["profile"]
            print(f"{r['semiring']}: fwd {prof['fwd_kernels_per_step']:.1f} kernels "
                  f"{prof['fwd_gpu_us_per_step']:.1f} us; f+b {prof['fwd_bwd_kernels_per_step']:.1f} kernels "
                  f"{prof['fwd_bwd_gpu_us_per_step']:.1f} us")
            for name, (count, us) in prof["fwd_bwd_top"].items():
                print(f"    {count:5.2f} {us:6.2f}  {name}")
    for r in rows:
        if "fwd_steady" in r:
            print(f"after {args.warm:.0f} s of calls: {r['semiring']} fwd {1e3 * r['fwd_steady']:.1f} ms, f+b "
                  f"{1e3 * r['fwd_bwd_steady']:.1f} ms ({r['fwd_bwd_steady'] / r['fwd_steady']:.2f}x); SM clock "
                  f"{r['fwd_clock_before']} -> {r['fwd_clock_after']} MHz (fwd), {r['fwd_bwd_clock_before']} -> "
                  f"{r['fwd_bwd_clock_after']} MHz (f+b)")
    for r in option_rows:
        print(f"under {r['options']}: {r['semiring']} fwd {1e3 * r['fwd']:.1f} ms, f+b {1e3 * r['fwd_bwd']:.1f} ms "
              f"({r['fwd_bwd'] / r['fwd']:.2f}x)")


if __name__ == "__main__":
    main()
