"""Where the GPU time of each query goes, and where the compiled rung's
gradients go wrong, in one run.

    python3 -u benchmarks/gpu_diagnose.py --out DIR > DIR/log     # ~3 min on an H200

1. Profiles at (4, 1000, 32, 24): the CUDA kernels of each query through the
   public API (torch.profiler), by total time, with the number of launches,
   and each query's wall time.
2. The lane sweeps (entropy, cross-entropy, KL, tangent) and the tangent
   flow alone, by warp count, at (4, 1000, 32, 24) and (1, 10^5, 64, 8): what
   `kernels.hvp.lane_num_warps` is chosen from; then each lane at its
   shipped warps with its loads issued a position ahead and in the step:
   what `kernels.hvp.lane_loads_ahead` is chosen from
   (``--lanes-only --warps`` runs this part alone, about a minute).
3. Compiled rung, small problems, float64 and float32 on CUDA: the gradients
   of `semimarkov_scan(p, S, backend="compiled")` against the eager
   reference scan (a) as shipped (CUDA graphs) and (b) without graphs; for
   one step alone, (c) inductor's and (d) AOTAutograd's (no inductor)
   gradients against eager autograd; and (e) block by block, where a scan
   under autograd with graphs first differs from one without (its value,
   the rings each block saved, the gradients each block received and
   returned). This located the graphs' defect fixed on 2026-11-30 (a tensor
   the graph read was freed after the capture).

Writes `gpu_diagnose.json` under --out and prints the tables last.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_compiled import forward_backward, problem, relative  # noqa: E402

PROFILE_SIZE = (4, 1000, 32, 24)
PROFILED = ("fwd_bwd", "viterbi", "topk", "sample", "entropy", "cross-entropy", "kl", "double-backward")


def grad_error(p, semiring, truth) -> float:
    _, grads = forward_backward(p, semiring, "compiled")
    return max(relative(g, w) for g, w in zip(grads, truth))


def compiled_variants(p, semiring) -> dict:
    """Gradient errors of the compiled rung (1 a-b) against eager."""
    from semiring_semicrf.backends import compiled
    from semiring_semicrf.backends.reference import ScanProgram
    _, truth = forward_backward(p, semiring, "reference")
    compiled.clear_cache()
    blocks = compiled.blocks_for(ScanProgram(p, semiring))
    row = {"shipped": grad_error(p, semiring, truth)}
    blocks.graphs = False
    row["no_graphs"] = grad_error(p, semiring, truth)
    return row


def one_step(p, semiring) -> dict:
    """Gradient errors of one step (3 c-d) against eager autograd, for the
    ring and every table, at a middle position."""
    from semiring_semicrf.backends import compiled
    from semiring_semicrf.backends.reference import ScanProgram
    program = ScanProgram(p, semiring)
    ring = program.initial_ring()
    for position in range(1, p.T // 2):  # a ring with values in every slot
        ring = program.step(ring, position)[0]
    tables = program.tables()
    e = torch.tensor(p.T // 2, device=p.device)
    start = torch.tensor(1, device=p.device)
    g = torch.Generator(device="cpu").manual_seed(1)

    def grads(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (ring, *tables.values())]
        out_ring, alpha = fn(program.with_tables(dict(zip(tables, leaves[1:]))), leaves[0], e, start)
        weights = [torch.rand(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)
                   for t in (out_ring, alpha)]
        found = torch.autograd.grad([(w * t).sum() for w, t in zip(weights, (out_ring, alpha))], leaves,
                                    allow_unused=True)
        return [torch.zeros_like(x) if f is None else f for f, x in zip(found, leaves)]

    names = ["ring", *tables]
    g.manual_seed(1)
    truth = grads(compiled._step)
    row = {}
    for backend in ("inductor", "aot_eager_decomp_partition", "aot_eager"):
        torch._dynamo.reset()
        fn = torch.compile(compiled._own_code(compiled._step), backend=backend, fullgraph=True, dynamic=False)
        g.manual_seed(1)
        found = grads(fn)
        row[backend] = {n: relative(f, t) for n, f, t in zip(names, found, truth)}
    torch.distributions.Distribution.set_default_validate_args(True)
    return row


def block_records(p, semiring, graphs: bool) -> dict:
    """One tracked compiled scan (3 e): its value, the ring each kept
    block took and gave, the gradients each kept block's backward received
    and the ring's gradient it returned."""
    from semiring_semicrf import semimarkov_scan
    from semiring_semicrf.backends import compiled
    from semiring_semicrf.backends.reference import ScanProgram
    compiled.blocks_for(ScanProgram(p, semiring)).graphs = graphs
    saved, received, returned = [], [], []
    Blocks = compiled.CompiledBlocks
    keeping, kept_vjp = Blocks.forward_keeping, Blocks.kept_vjp

    def recording_keeping(self, ticket, tables, ring, offset, span):
        taken = (ring.detach().clone(), offset.clone())
        out = keeping(self, ticket, tables, ring, offset, span)
        saved.append((*taken, out[0].detach().clone()))
        return out

    def recording_vjp(self, ticket, tables, kept, span, grads):
        received.append([g.clone() for g in grads])
        found = kept_vjp(self, ticket, tables, kept, span, grads)
        returned.append(found[0].clone())
        return found

    setattr(Blocks, "forward_keeping", recording_keeping)  # noqa: B010 - methods replaced while it runs
    setattr(Blocks, "kept_vjp", recording_vjp)  # noqa: B010
    try:
        q, leaves = __import__("cpu_compiled").leaves_of(p)
        value = semimarkov_scan(q, semiring, backend="compiled")
        grads = torch.autograd.grad(value.sum(), leaves, allow_unused=True)
    finally:
        setattr(Blocks, "forward_keeping", keeping)  # noqa: B010
        setattr(Blocks, "kept_vjp", kept_vjp)  # noqa: B010
    return {"value": value.detach(), "saved": saved, "received": received, "returned": returned, "grads": grads}


def graph_experiments(p, semiring) -> dict:
    """Where the graphs' tracked scan first differs from the scan without
    graphs (3 e): value, saved rings per block, gradients per block."""
    from semiring_semicrf.backends import compiled
    compiled.clear_cache()
    with torch.no_grad():
        from semiring_semicrf import semimarkov_scan
        untracked = semimarkov_scan(p, semiring, backend="compiled")
    off = block_records(p, semiring, graphs=False)
    on = block_records(p, semiring, graphs=True)
    row: dict[str, Any] = {"untracked_vs_tracked_value": relative(untracked, on["value"]),
           "value": relative(on["value"], off["value"])}
    row["saved_in"] = [relative(a[0], b[0]) for a, b in zip(on["saved"], off["saved"])]
    row["saved_out"] = [relative(a[2], b[2]) for a, b in zip(on["saved"], off["saved"])]
    row["offset"] = [relative(a[1], b[1]) for a, b in zip(on["saved"], off["saved"])]
    row["received"] = [[relative(x, y) for x, y in zip(a, b) if x is not None and y is not None]
                       for a, b in zip(on["received"], off["received"])]
    row["returned"] = [relative(a, b) for a, b in zip(on["returned"], off["returned"])]
    return row


def diagnose_compiled(variants: bool = True) -> list:
    from semiring_semicrf import EntropySemiring, KMaxSemiring, LogSemiring
    from semiring_semicrf.semirings import StdSemiring
    rows = []
    for dtype in (torch.float64, torch.float32):
        p = problem(2, 48, 4, 3, device="cuda", dtype=dtype)
        for name, semiring in (("Log", LogSemiring()), ("Std", StdSemiring()), ("Entropy", EntropySemiring()),
                               ("KMax(3)", KMaxSemiring(3))):
            row: dict[str, Any] = {"semiring": name, "dtype": str(dtype)}
            try:
                if variants:
                    row.update(compiled_variants(p, semiring))
                    row["one_step"] = one_step(p, semiring)
                row["graphs"] = graph_experiments(p, semiring)
            except Exception as exc:  # noqa: BLE001 - reported; the others still run
                traceback.print_exc()
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            print(row, flush=True)
            rows.append(row)
    return rows


def kernel_times(fn, width: int | None = 70) -> dict:
    """The GPU kernels one call of `fn` launches (CUDA graphs' included),
    by name (its first `width` characters; None: whole): `{name: [count,
    GPU seconds]}`, most time first."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    found: dict = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = found.setdefault(event.name[:width], [0, 0.0])
            entry[0] += 1
            entry[1] += 1e-6 * event.device_time_total
    return dict(sorted(found.items(), key=lambda kv: -kv[1][1]))


def profile_queries() -> list:
    from gpu_bench import make_inputs, query_maker
    tensors = {k: v.cuda() for k, v in make_inputs(*PROFILE_SIZE).items()}
    rows = []
    for query in PROFILED:
        fn = query_maker(query, tensors)(PROFILE_SIZE)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / 5
        kernels = kernel_times(fn)
        rows.append({"query": query, "wall_ms": 1e3 * wall,
                     "kernel_ms": 1e3 * sum(t for _, t in kernels.values()),
                     "launches": sum(c for c, _ in kernels.values()),
                     "top": [(n, 1e3 * t, c) for n, (c, t) in list(kernels.items())[:8]]})
        print(rows[-1], flush=True)
    return rows


def lane_jobs(size) -> dict:
    """The lane sweeps and the tangent flow at `size`, each a function."""
    from gpu_bench import make_inputs, potentials

    from semiring_semicrf import kernels
    tensors = {k: v.cuda() for k, v in make_inputs(*size).items()}
    p = potentials(tensors).factors()
    q = potentials(tensors, tensors["other"]).factors()
    tangent = potentials(tensors).factors()
    ring = kernels.tangent_duration_ring(tangent)
    _, p_tables = kernels.inside(p)
    _, q_tables = kernels.inside(q)

    def tangent_lane():
        return kernels.expectation_sweep("tangent", p_tables, tangent=tangent, tangent_ring=ring, keep_tables=True)

    t_tables = tangent_lane()[1]
    jobs: dict[str, Callable[[], Any]] = {
        kind: functools.partial(kernels.expectation_sweep, kind, p_tables, q_tables=q_tables)
        for kind in ("entropy", "cross_entropy", "kl")}
    jobs["tangent"] = tangent_lane
    jobs["tangent_flow"] = lambda: kernels.tangent_flow(p_tables, tangent, ring, tuple(t.clone() for t in t_tables))
    return jobs


def timed_ms(job, runs: int = 6) -> float:
    """Median of `runs - 1` CUDA-event timings of `job()` (the first dropped)."""
    import statistics
    times = []
    for _ in range(runs):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        job()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times[1:])


def lane_sweeps(sizes=((4, 1000, 32, 24), (1, 100_000, 64, 8)), warp_counts=(1, 2, 4, 8, 16)) -> list:
    """Median times (ms) of each lane sweep and of the tangent flow by warp
    count (`kernels.hvp.lane_num_warps` held at each value in turn), then of
    each lane at the shipped warps with `kernels.hvp.lane_loads_ahead` held
    False ("in step") and True ("ahead")."""
    lanes = importlib.import_module("semiring_semicrf.kernels.hvp")
    common = importlib.import_module("semiring_semicrf.kernels.common")
    rows = []
    for size in sizes:
        KP, CP = common.pad(size[2]), common.pad(size[3])
        for name, job in lane_jobs(size).items():
            warps = lanes.lane_num_warps(name, KP, CP)
            row: dict[Any, Any] = {"size": size, "job": name, "shipped": warps}
            for count in warp_counts:
                with held(lanes, "lane_num_warps", lambda job, kp, cp, count=count: count):
                    row[count] = timed_ms(job)
            if name != "tangent_flow":
                row["shipped ahead"] = lanes.lane_loads_ahead(name, KP, CP, warps)
                for label, ahead in (("in step", False), ("ahead", True)):
                    with held(lanes, "lane_loads_ahead", lambda *args, ahead=ahead: ahead):
                        row[label] = timed_ms(job)
            print(row, flush=True)
            rows.append(row)
    return rows


@contextlib.contextmanager
def held(module, name: str, replacement):
    """`module.name` replaced by `replacement` inside the block."""
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--skip-compiled", action="store_true")
    parser.add_argument("--skip-profiles", action="store_true")
    parser.add_argument("--graphs-only", action="store_true", help="of the compiled rung's checks, 3 e alone")
    parser.add_argument("--lanes-only", action="store_true", help="part 2 alone")
    parser.add_argument("--warps", type=int, nargs="*", default=[1, 2, 4, 8, 16],
                        help="warp counts of part 2 (none: the loads-ahead comparison alone)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_diagnose.py needs a CUDA device")
    os.makedirs(args.out, exist_ok=True)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    profiles = [] if args.skip_profiles or args.lanes_only else profile_queries()
    warps = lane_sweeps(warp_counts=args.warps)
    compiled_rows = [] if args.skip_compiled or args.lanes_only else diagnose_compiled(not args.graphs_only)
    with open(os.path.join(args.out, "gpu_diagnose.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "profiles": profiles, "lane_warps": warps,
                   "compiled": compiled_rows}, f, indent=1, default=str)
    print("\nqueries at", PROFILE_SIZE)
    for r in profiles:
        print(f"{r['query']:16s} wall {r['wall_ms']:8.2f} ms  kernels {r['kernel_ms']:8.2f} ms  "
              f"launches {r['launches']}")
        for name, ms, count in r["top"]:
            print(f"    {ms:8.3f} ms  x{count:<5d} {name}")
    print("\nlane sweeps and tangent flow by num_warps, then loads in the step or ahead (ms; 'shipped' = the "
          "warps and loads chosen now)")
    for r in warps:
        print(r)
    print("\ncompiled rung: gradient errors (max |diff| / max |eager|)")
    for r in compiled_rows:
        print(r)


if __name__ == "__main__":
    main()
