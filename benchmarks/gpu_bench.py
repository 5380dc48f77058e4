"""Every query on one GPU, in one run: checks, then timings against the targets.

    python3 -u benchmarks/gpu_bench.py --out DIR > DIR/log   # everything (about 6 minutes on one H200)
    python3 -u benchmarks/gpu_bench.py --quick --out DIR     # the queries at (4, 1000, 32, 24) only

flash-semicrf 0.2.0 (the anchor) is imported if installed (it is not in the GPU image: install its wheel with
``pip install --no-deps flash_semicrf-0.2.0-*.whl`` first); without it the anchor columns say why.

1. The GPU tests (``pytest -m gpu`` on :data:`GPU_TEST_FILES`): every kernel against float64 references at scale.
2. Queries, through the public API, float32, median, at :data:`QUERY_CONFIGS` (B, T, K, C) = (4, 1000, 32, 24)
   and (1, 10^5, 64, 8): Log forward (``log_partition`` under no_grad) and forward+backward (every gradient),
   Viterbi, ``sample((100,))``, ``topk(5)``, ``entropy()``/``cross_entropy(q)``/``kl(q)`` forward+backward with p
   requiring grad, and the double backward of log Z (a gradient penalty on the scores), each against its target:
   a sample at most 2x Log forward+backward, topk(5) at most 3x Viterbi, the others at most 3x Log
   forward+backward. Every query runs under a time budget (:func:`budget_for`); one that runs past it is
   interrupted and reported "over budget" (beyond T = 1000 its time at T = 256 is extrapolated first, so that a
   slow path costs seconds, not minutes). Checks: log Z and the Viterbi score against the float64 PyTorch scan
   (CPU, background processes), the posterior against the float64 torch sweeps, samples valid and their label
   frequencies against the posterior marginals, the top-k sorted, scoring themselves, first = Viterbi; entropy
   and KL >= 0, cross-entropy = entropy + KL; every kernel bitwise run to run.
3. The Log/Max targets: forward and forward+backward against flash-semicrf's Triton path at
   :data:`FLASH_CONFIGS`; forward+backward at (1, 10^6, 64, 8); the host overhead (the public call minus its
   kernels) at small sizes; large label sets; peak GPU memory of forward+backward at (256, 1000, 32, 24) per
   B*T*C element beyond the inputs.
4. :data:`ONCE_CONFIG` (4, 10^4, 100, 24): every query once (budgeted).
5. Sweeps of num_warps: the forward sweep and the outside flow at :data:`SWEEP_CONFIGS`, the k-best kernels at
   :data:`KBEST_SWEEP_CONFIG`.

``--queries-only`` runs 2, 4 and 5 (no GPU tests, no Log/Max targets), for a second run after a kernel change.

The run keeps its own clock (:data:`TESTS_TIMEOUT_S`, :data:`ONCE_UNTIL_S`): whatever is slow, it ends well
under 8 minutes, saying what it did not run.

Writes ``gpu_bench.json``, ``gpu_bench.png`` (Log/Max time against T, with flash-semicrf) and
``gpu_queries.png`` (every query against its target) under --out, and prints the tables last.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import gc
import json
import math
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GPU_TEST_FILES = ["tests/test_kernels.py", "tests/test_kernels_kbest.py", "tests/test_kernels_sampling.py",
                  "tests/test_determinism.py"]  # those with tests marked gpu
QUERY_CONFIGS = [(4, 1000, 32, 24), (1, 100_000, 64, 8)]
ONCE_CONFIG = (4, 10_000, 100, 24)
FLASH_CONFIGS = [(4, 1000, 32, 24), (16, 2000, 16, 12)]
LONG_CONFIG = (1, 1_000_000, 64, 8)
WIDE_CONFIGS = [(4, 1000, 32, 128), (2, 1000, 16, 256)]
MEMORY_CONFIG = (256, 1000, 32, 24)
SWEEP_CONFIGS = [(16, 2000, 16, 12), (4, 1000, 32, 128), (2, 1000, 16, 256)]
KBEST_SWEEP_CONFIG = (4, 1000, 32, 24)
#: (query, the query its target multiplies, the factor).
QUERIES = [("fwd", None, None), ("fwd_bwd", None, None), ("viterbi", None, None), ("sample", "fwd_bwd", 2),
           ("topk", "viterbi", 3), ("entropy", "fwd_bwd", 3), ("cross-entropy", "fwd_bwd", 3), ("kl", "fwd_bwd", 3),
           ("double-backward", "fwd_bwd", 3)]
#: The previous measurements on an H100 (docs/performance.md), seconds: what the targets are relative to.
EARLIER: dict[str, dict] = {
    "flash": {(4, 1000, 32, 24): {"fwd": 0.0401, "fwd_bwd": 0.496, "max": 0.0109},
              (16, 2000, 16, 12): {"fwd": 0.0364, "fwd_bwd": 0.272, "max": 0.00965},
              (4, 10000, 100, 24): {"fwd": 1.31, "fwd_bwd": math.inf, "max": 0.324},
              (1, 100000, 64, 8): {"fwd": 4.79, "fwd_bwd": math.inf, "max": 1.14}},
    "wide_fwd_bwd": {(2, 1000, 16, 256): 0.215}}
DEVICE = "cuda"
WARM_UP_S = 0.3  # busy GPU before each timing: its clocks rise from idle
COMPILE_S = 60.0  # allowance for the first call of a query (Triton compiles its kernels, up to 32 warps)
#: The run's own clock (seconds since it started), so that it stays well under 8 minutes whatever is slow:
#: the GPU tests stop after TESTS_TIMEOUT_S; a query of the every-query-once config that would start past
#: ONCE_UNTIL_S is not run, nor the num_warps sweep past SWEEP_FROM_S, which stops at ONCE_UNTIL_S.
TESTS_TIMEOUT_S = 150.0
SWEEP_FROM_S = 360.0
ONCE_UNTIL_S = 420.0
STARTED = time.perf_counter()
PROBE_T = 256  # beyond T = 1000, a query is first timed here and extrapolated (divisible by 16, as the long T)
ANCHOR_LIMIT_S = 20.0  # an anchor run expected to take longer is skipped
POSTERIOR_FIELDS = ("segment_start", "segment_end", "transition", "duration", "first", "last")


# -- inputs and float64 references (CPU, background processes) -------------------
def make_inputs(B, T, K, C, seed=0):
    """Scores zero-mean per sequence and label and `start = logsumexp(transition, 0)`: flash-semicrf's model
    equals ours. Also the scores of a second model q (cross-entropy, KL)."""
    import torch
    g = torch.Generator().manual_seed(seed + T + K + C)
    scores = torch.randn(B, T, C, generator=g)
    scores = scores - scores.mean(dim=1, keepdim=True)
    transition = 0.5 * torch.randn(C, C, generator=g)
    duration = 0.5 * torch.randn(K, C, generator=g)
    other = scores + torch.randn(B, T, C, generator=g)
    return {"scores": scores, "transition": transition, "duration": duration,
            "start": torch.logsumexp(transition, dim=0), "other": other}


def potentials(tensors, scores=None, requires_grad=False):
    """`SemiMarkovPotentials` of `tensors` (`scores` replaced if given); fresh leaves requiring grad if asked."""
    from semiring_semicrf import SemiMarkovPotentials
    names = ("scores", "transition", "duration", "start")
    chosen = [tensors[n] if n != "scores" or scores is None else scores for n in names]
    if requires_grad:
        chosen = [t.detach().requires_grad_() for t in chosen]
    return SemiMarkovPotentials(*chosen[:3], start=chosen[3], validate_args=False)


def reference_job(shape, what):
    """float64 CPU reference: 'log' / 'max' -> list (the PyTorch scan); 'posterior' -> dict of tensors (the
    torch rung's outside sweep)."""
    import torch
    torch.set_num_threads(1)
    from semiring_semicrf import MaxSemiring, semimarkov_scan
    tensors = {k: v.double() for k, v in make_inputs(*shape).items()}
    p = potentials(tensors)
    if what == "log":
        return semimarkov_scan(p).tolist()
    if what == "max":
        return semimarkov_scan(p, MaxSemiring()).tolist()
    from semiring_semicrf.backends import torch_sweeps
    factors = p.factors()
    ref = torch_sweeps.outside(factors, torch_sweeps.inside(factors)[1])
    return {name: getattr(ref, name) for name in POSTERIOR_FIELDS} | {"label_marginals": ref.label_marginals()}


def start_references(jobs_wanted):
    pool = cf.ProcessPoolExecutor(max_workers=max(2, min(len(jobs_wanted), (os.cpu_count() or 4) - 2)),
                                  mp_context=mp.get_context("spawn"))
    return pool, {job: pool.submit(reference_job, *job) for job in sorted(jobs_wanted, key=lambda j: -j[0][1])}


# -- timing under a budget ----------------------------------------------------------
class OverBudget(Exception):
    """A timed call ran past its budget."""


@contextlib.contextmanager
def deadline(seconds):
    """Raise OverBudget in the main thread after `seconds` (the library's slow paths are Python loops, which
    the signal interrupts; a CUDA kernel finishes first)."""
    def expire(signum, frame):
        raise OverBudget

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def event_seconds(fn):
    import torch
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    end.synchronize()
    del out
    return start.elapsed_time(end) / 1e3


def recover():
    """After an interrupted or failed call: let the GPU finish, free what the call held."""
    import torch
    with contextlib.suppress(Exception):
        torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()


def failure(exc, budget_s) -> str:
    import torch
    recover()
    cause = exc
    while cause is not None:  # (Triton's interpreter wraps what a kernel's call raised)
        if isinstance(cause, OverBudget):
            return f"over budget (>{budget_s:.3g} s)"
        cause = cause.__cause__
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of memory"
    return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:70] if str(exc) else ''}"


def median_time(fn, budget_s, first_allowance_s=COMPILE_S, max_reps=20, once=False):
    """Median seconds of `fn()` (CUDA events): one call (with `first_allowance_s` more for compiling), warm-up
    calls for WARM_UP_S, then timed calls while half the budget lasts (at least 3 when they fit; a call over
    1 s is timed once). `once`: the first call alone, timed (its kernels compiled already). A string instead
    when a call runs past the budget or fails."""
    import torch
    try:
        if once:
            with deadline(budget_s + first_allowance_s):
                return event_seconds(fn)
        with deadline(budget_s + first_allowance_s):
            fn()
            torch.cuda.synchronize()
        with deadline(budget_s):
            begin = time.perf_counter()
            while time.perf_counter() - begin < WARM_UP_S:
                fn()
                torch.cuda.synchronize()
            times = [event_seconds(fn)]
            reps = 0 if times[0] > 1 else max(2, min(max_reps, int(0.5 * budget_s / times[0])))
            times += [event_seconds(fn) for _ in range(reps)]
        return statistics.median(times)
    except Exception as exc:  # noqa: BLE001 - a query failing or too slow is a result
        return failure(exc, budget_s)


def synchronized_seconds(fn) -> float:
    """Wall-clock seconds of `fn()` until the GPU has finished it (nothing else timed: a garbage collection
    here once made a 1 ms probe look like 0.1 s)."""
    import torch
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    del out
    return time.perf_counter() - start


def budgeted_time(make_fn, shape, budget_s, once=False):
    """`median_time` of `make_fn(shape)()`; beyond T = 1000, first the time at T = PROBE_T (a first call
    compiles the same kernel variants; the next two are timed), extrapolated linearly: over the budget, the
    query is not run at T. (The compiling call once stood for the probe's time when it ran past the budget:
    a query whose kernels compiled there, the first at that K, was reported ~100 s over budget.)"""
    B, T, K, C = shape
    if T > 1000:
        probe = make_fn((B, PROBE_T, K, C))
        try:
            with deadline(max(budget_s, COMPILE_S)):
                synchronized_seconds(probe)  # compiles
            with deadline(budget_s):
                seconds = min(synchronized_seconds(probe) for _ in range(2))
        except Exception as exc:  # noqa: BLE001
            return failure(exc, budget_s) + f" at T={PROBE_T}"
        del probe
        recover()
        estimate = seconds * T / PROBE_T
        if estimate > budget_s:
            return f"over budget (~{estimate:.0f} s from T={PROBE_T})"
    return median_time(make_fn(shape), budget_s, first_allowance_s=COMPILE_S if T <= 1000 else 5.0, once=once)


def budget_for(query, times):
    """Seconds a query may take: ten times its target (at least 2 s, at most 20 s); 20 s for the Log and
    Viterbi queries the targets refer to."""
    _, against, factor = next(q for q in QUERIES if q[0] == query)
    reference = times.get(against) if against else None
    if not isinstance(reference, float):
        return 20.0
    return min(20.0, max(2.0, 10 * factor * reference))


def peak_bytes(fn):
    """Peak GPU memory allocated during `fn()` beyond what existed before (the inputs), outputs included."""
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


# -- the queries ----------------------------------------------------------------------
def query_maker(query, device_tensors):
    """`make(shape) -> fn` for one query through the public API (the scores of `shape` cut or tiled from the
    config's own inputs, so that the probe at T = 256 sees the same values)."""
    import torch

    from semiring_semicrf import log_partition
    from semiring_semicrf.cli import query_call
    from semiring_semicrf.decoding import viterbi

    def sized(name, T):
        t = device_tensors[name]
        return t if t.shape[1] == T else t[:, :T].contiguous()

    def make(shape):
        T = shape[1]

        def fresh(requires_grad=query in ("fwd_bwd", "entropy", "cross-entropy", "kl", "double-backward")):
            return potentials(device_tensors, sized("scores", T), requires_grad)

        if query == "fwd":
            return lambda: torch.no_grad()(log_partition)(fresh(False))
        if query == "fwd_bwd":
            def fwd_bwd():
                p = fresh()
                log_partition(p).sum().backward()
                return p.scores.grad
            return fwd_bwd
        if query == "viterbi":
            return lambda: viterbi(fresh(False))[0]
        return query_call(query, fresh, lambda: potentials(device_tensors, sized("other", T)))
    return make


def check_queries(shape, tensors, refs, record):
    """Correctness of every query at `shape` (see the module docstring), into `record["checks"]`."""
    import torch

    from semiring_semicrf import SemiMarkovDistribution, log_partition, posterior
    from semiring_semicrf.decoding import topk, viterbi
    from semiring_semicrf.sampling import sample
    from semiring_semicrf.segmentation import Segmentation
    B, T, K, C = shape
    p = potentials(tensors)
    checks = {}
    with torch.no_grad():
        log_z = log_partition(p)
        best, labels, starts = viterbi(p)
        post = posterior(p)
        marginals = post.label_marginals()
        scores, top_labels, top_starts = topk(p, 5)
        drawn = sample(p, 100, torch.Generator(DEVICE).manual_seed(0))
        again = (log_partition(p), viterbi(p), posterior(p).label_marginals(), topk(p, 5),
                 sample(p, 100, torch.Generator(DEVICE).manual_seed(0)))
    checks["bitwise"] = bool(torch.equal(log_z, again[0]) and all(torch.equal(a, b) for a, b in zip(
        (best, labels, starts), again[1])) and torch.equal(marginals, again[2])
        and all(torch.equal(a, b) for a, b in zip((scores, top_labels, top_starts), again[3]))
        and all(torch.equal(a, b) for a, b in zip(drawn, again[4])))
    checks["log_z_rel_err"] = rel_err(log_z.cpu().double(), torch.tensor(refs["log"].result()))
    checks["viterbi_rel_err"] = rel_err(best.cpu().double(), torch.tensor(refs["max"].result()))
    if "posterior" in refs:
        ref = refs["posterior"].result()
        checks["posterior_rel_err"] = max(rel_err(getattr(post, k).cpu().double(), ref[k]) for k in POSTERIOR_FIELDS)
        checks["label_marginals_max_abs_err"] = float((marginals.cpu().double() - ref["label_marginals"]).abs().max())
    # samples: valid, label frequencies within a few standard errors of the marginals
    Segmentation(drawn[0][:8], drawn[1][:8]).validate(p)
    frequencies = torch.stack([(drawn[0] == c).double().mean(dim=0) for c in range(C)], dim=-1)
    spread = (marginals.double() * (1 - marginals.double()) / 100).sqrt().clamp(min=1e-3)
    checks["sample_max_z"] = float(((frequencies - marginals.double()).abs() / spread).max())
    # top-k: sorted, the first is Viterbi, each entry scores itself, entries distinct
    own = Segmentation(top_labels.flatten(0, 1), top_starts.flatten(0, 1)).log_potential(
        p[torch.arange(B, device=DEVICE).repeat(5)], validate=False).view(5, B)
    checks["topk_sorted"] = bool((scores[1:] <= scores[:-1]).all())
    checks["topk_first_is_viterbi"] = rel_err(scores[0].double(), best.double())
    checks["topk_own_score_rel_err"] = rel_err(own.double(), scores.double())
    checks["topk_distinct"] = all(len({tuple(top_labels[q, b].tolist()) + tuple(top_starts[q, b].tolist())
                                       for q in range(5)}) == 5 for b in range(min(B, 2)))
    # information: signs and the identity CE = H + KL
    d = SemiMarkovDistribution.from_potentials(p, validate_args=False)
    q = SemiMarkovDistribution.from_potentials(potentials(tensors, tensors["other"]), validate_args=False)
    with torch.no_grad():
        entropy, kl, cross = d.entropy(), d.kl(q), d.cross_entropy(q)
    checks["entropy_min"], checks["kl_min"] = float(entropy.min()), float(kl.min())
    checks["cross_entropy_identity_rel_err"] = rel_err(cross.double(), (entropy + kl).double())
    record["checks"] = checks


def rel_err(got, want):
    import torch
    return float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp(min=1e-30))


def run_queries(shape, tensors, names, record):
    """Times of `names` at `shape` into `record["times"]` (seconds or a reason), each under its budget."""
    times = record.setdefault("times", {})
    for query in names:
        budget = budget_for(query, times)
        times[query] = budgeted_time(query_maker(query, tensors), shape, budget)
        print(f"  {query}: {fmt(times[query])} (budget {budget:.3g} s)", flush=True)


# -- the Log/Max targets --------------------------------------------------------------
def kernels_alone(tensors):
    """(forward sweep, forward sweep with tables + outside flow) seconds on factors prepared once: what the
    public call adds is host overhead."""
    from semiring_semicrf.kernels.backward import outside_sweep
    from semiring_semicrf.kernels.common import duration_ring
    from semiring_semicrf.kernels.forward import forward_sweep
    factors = potentials(tensors).factors()
    ring = duration_ring(factors)
    forward = median_time(lambda: forward_sweep(factors, ring, False, tables=False), 5.0)
    both = median_time(lambda: outside_sweep(factors, ring, *forward_sweep(factors, ring, False)[2:6]), 5.0)
    return forward, both


def flash(shape, tensors):
    """flash-semicrf 0.2.0's Triton path: {'fwd', 'fwd_bwd', 'max'} seconds or a reason, and the relative
    difference of its log Z from ours."""
    import torch
    try:
        from flash_semicrf.streaming import semi_crf_streaming_forward
    except ImportError as exc:
        reason = f"not installed ({exc.name})"
        return dict.fromkeys(("fwd", "fwd_bwd", "max"), reason)
    B, T, K, C = shape
    cum = torch.nn.functional.pad(tensors["scores"].cumsum(dim=1), (0, 0, 1, 0))
    transition, duration = tensors["transition"], tensors["duration"]
    lengths = torch.full((B,), T, dtype=torch.long, device=DEVICE)

    def run(semiring):
        with torch.no_grad():
            return semi_crf_streaming_forward(cum, transition, duration, lengths, K, semiring=semiring)

    def run_grad():
        c, tr, du = (x.clone().requires_grad_() for x in (cum, transition, duration))
        semi_crf_streaming_forward(c, tr, du, lengths, K).sum().backward()
        return c.grad

    out = {}
    for key, fn in (("fwd", lambda: run("log")), ("fwd_bwd", run_grad), ("max", lambda: run("max"))):
        earlier = EARLIER["flash"].get(shape, {}).get(key, 0.0)
        out[key] = "skipped" if earlier > ANCHOR_LIMIT_S else median_time(fn, 8.0, max_reps=5)
    if isinstance(out["fwd"], float):
        from semiring_semicrf import log_partition
        with torch.no_grad():
            ours = log_partition(potentials(tensors)).double().cpu()
        out["log_z_rel_diff"] = rel_err(run("log").double().cpu(), ours)
    return out


def log_max_targets(device_inputs, args, measured):
    """Every item of the Log/Max targets (see the module docstring): `{"flash": [...], "long": {...},
    "wide": [...], "memory": {...}}`, each entry with its `shape`. `measured`: shape -> the query times
    already taken there (not measured again)."""
    import torch
    targets = {"flash": [], "wide": []}
    for shape in FLASH_CONFIGS:
        tensors = device_inputs(shape)
        times = {q: measured[shape][q] if shape in measured else median_time(query_maker(q, tensors)(shape), 20.0)
                 for q in ("fwd", "fwd_bwd", "viterbi")}
        anchor = (dict.fromkeys(("fwd", "fwd_bwd", "max"), "not run (--no-anchors)") if args.no_anchors
                  else flash(shape, tensors))
        kernel_fwd, kernel_both = kernels_alone(tensors)
        overhead = {"fwd": times["fwd"] - kernel_fwd if isinstance(kernel_fwd, float) else kernel_fwd,
                    "fwd_bwd": times["fwd_bwd"] - kernel_both if isinstance(kernel_both, float) else kernel_both,
                    "kernels_fwd": kernel_fwd, "kernels_fwd_bwd": kernel_both}
        targets["flash"].append({"shape": list(shape), "ours": times, "flash": anchor, "overhead": overhead})
        print(f"{shape}: ours {fmt_dict(times)}; flash {fmt_dict(anchor)}; overhead {fmt_dict(overhead)}", flush=True)
        del tensors
    if not args.quick:
        tensors = device_inputs(LONG_CONFIG)
        targets["long"] = {q: median_time(query_maker(q, tensors)(LONG_CONFIG), 20.0, max_reps=3)
                           for q in ("fwd", "fwd_bwd", "viterbi")}
        targets["long"]["mem_fwd_bwd"] = peak_bytes(query_maker("fwd_bwd", tensors)(LONG_CONFIG))
        print(f"{LONG_CONFIG}: {fmt_dict(targets['long'])}", flush=True)
        del tensors
        for shape in WIDE_CONFIGS:
            tensors = device_inputs(shape)
            entry = {"shape": list(shape)} | {q: median_time(query_maker(q, tensors)(shape), 20.0)
                                              for q in ("fwd", "fwd_bwd")}
            targets["wide"].append(entry)
            print(f"{shape}: {fmt_dict(entry)}", flush=True)
            del tensors
    tensors = device_inputs(MEMORY_CONFIG)
    B, T, K, C = MEMORY_CONFIG
    peak = peak_bytes(query_maker("fwd_bwd", tensors)(MEMORY_CONFIG))
    targets["memory"] = {"shape": list(MEMORY_CONFIG), "peak_bytes": peak, "bytes_per_element": peak / (B * T * C)}
    print(f"{MEMORY_CONFIG}: peak {peak / 2**20:.0f} MiB = {peak / (B * T * C):.1f} bytes per B*T*C", flush=True)
    del tensors
    torch.cuda.empty_cache()
    return targets


def elapsed():
    return time.perf_counter() - STARTED


def num_warps_sweep(device_inputs):
    """Forward sweep and forward sweep + flow per num_warps, on factors prepared once, until ONCE_UNTIL_S
    (each setting compiles both kernels anew)."""
    from semiring_semicrf.kernels.backward import outside_sweep
    from semiring_semicrf.kernels.common import duration_ring, flow_num_warps, pad, sweep_num_warps
    from semiring_semicrf.kernels.forward import forward_sweep
    out = {}
    for shape in SWEEP_CONFIGS:
        factors = potentials(device_inputs(shape)).factors()
        ring = duration_ring(factors)
        KP, CP = pad(shape[2]), pad(shape[3])
        row = {"chosen": f"{sweep_num_warps(KP, CP)}/{flow_num_warps(KP, CP)}"}
        for w in (1, 4, 8, 16, 32) if CP < 64 else (4, 8, 16, 32):  # one warp spills C >= 64's C x C tiles
            if elapsed() > ONCE_UNTIL_S:
                row[w] = "not run (the run's time)"
                continue

            def forward(w=w, factors=factors, ring=ring):
                return forward_sweep(factors, ring, False, num_warps=w, tables=False)

            def both(w=w, factors=factors, ring=ring):
                return outside_sweep(factors, ring, *forward_sweep(factors, ring, False, num_warps=w)[2:6],
                                     num_warps=w)
            row[w] = {"forward": median_time(forward, 3.0), "forward+flow": median_time(both, 3.0)}
        out[str(shape)] = row
        print(f"num_warps {shape}: chosen {row['chosen']}; " + "; ".join(
            f"{w}: {fmt(t['forward'])} / {fmt(t['forward+flow'])}" if isinstance(t, dict) else f"{w}: {t}"
            for w, t in row.items() if w != "chosen"), flush=True)
    return out


def kbest_num_warps_sweep(device_inputs, k=5):
    """The k-best sweep and traceback per num_warps at :data:`KBEST_SWEEP_CONFIG` (the topk query's kernels)."""
    from semiring_semicrf.kernels.common import pad
    from semiring_semicrf.kernels.kbest import crowds_processors, kbest_decode, kbest_num_warps
    shape = KBEST_SWEEP_CONFIG
    factors = potentials(device_inputs(shape)).factors()
    row = {"chosen": kbest_num_warps(pad(shape[2]), pad(shape[3]), k, crowds_processors(shape[0], DEVICE))}
    for w in (1, 2, 4, 8, 16):
        row[w] = median_time(lambda w=w: kbest_decode(factors, k, num_warps=w), 3.0)
    print(f"k-best num_warps {shape}, k = {k}: chosen {row['chosen']}; "
          + "; ".join(f"{w}: {fmt(t)}" for w, t in row.items() if w != "chosen"), flush=True)
    return {str(shape): row}


# -- report -----------------------------------------------------------------------------
def fmt(x):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "-" if x is None else str(x)
    if math.isinf(x):
        return ">60 s"
    return f"{x * 1e3:.2f} ms" if abs(x) < 1 else f"{x:.2f} s"


def fmt_dict(d):
    return ", ".join(f"{k} {f'{v / 2**20:.0f} MiB' if k.startswith('mem') else fmt(v)}" for k, v in d.items()
                     if k != "shape" and not isinstance(v, dict))


def queries_table(records):
    lines = [f"{'config':<18} {'query':<16} {'median':<30} {'ratio':<22} {'target':<16} status"]
    for r in records:
        times = r["times"]
        for query, against, factor in QUERIES:
            got = times.get(query)
            if got is None:
                continue
            ratio = target = status = ""
            if against:
                reference = times.get(against)
                runs_only = tuple(r["shape"]) == ONCE_CONFIG  # the target there: every query runs
                target = "runs" if runs_only else f"<= {factor}x {against}"
                if isinstance(got, float) and isinstance(reference, float):
                    ratio = f"{got / reference:.2f}x {against}"
                    status = "runs" if runs_only else "met" if got <= factor * reference else "missed"
                else:
                    status = "missed" if not isinstance(got, float) else "-"
            lines.append(f"{'x'.join(map(str, r['shape'])):<18} {query:<16} {fmt(got)[:30]:<30} {ratio:<22} "
                         f"{target:<16} {status}")
    return "\n".join(lines)


def checks_table(records):
    keys = ("bitwise", "log_z_rel_err", "viterbi_rel_err", "posterior_rel_err", "label_marginals_max_abs_err",
            "sample_max_z", "topk_sorted", "topk_first_is_viterbi", "topk_own_score_rel_err", "topk_distinct",
            "entropy_min", "kl_min", "cross_entropy_identity_rel_err")
    lines = []
    for r in records:
        checks = r.get("checks", {})
        lines.append("x".join(map(str, r["shape"])) + ": " + ", ".join(
            f"{k} {checks[k]:.1e}" if isinstance(checks.get(k), float) else f"{k} {checks.get(k)}"
            for k in keys if k in checks))
    return "\n".join(lines)


def targets_table(targets):
    rows = []

    def add(name, measured, goal, met):
        rows.append(f"{name:<58} {measured:<34} {goal:<22} {'met' if met else 'missed' if met is False else '-'}")

    for entry in targets["flash"]:
        shape = tuple(entry["shape"])
        for key, factor in (("fwd_bwd", 100), ("fwd", 20)):
            ours, theirs = entry["ours"].get(key), entry["flash"].get(key)
            if isinstance(ours, float) and isinstance(theirs, float):
                add(f"{shape} {key}: flash-semicrf / ours", f"{theirs / ours:.0f}x ({fmt(ours)} vs {fmt(theirs)})",
                    f">= {factor}x", theirs / ours >= factor)
            else:
                add(f"{shape} {key}: flash-semicrf / ours", f"ours {fmt(ours)}, flash {fmt(theirs)}"[:34],
                    f">= {factor}x", None)
        overhead = entry["overhead"]
        add(f"{shape} host overhead fwd / fwd_bwd", f"{fmt(overhead['fwd'])} / {fmt(overhead['fwd_bwd'])}",
            "~0 (was 0.3-0.9 ms)", None)
    if "long" in targets:
        got = targets["long"]["fwd_bwd"]
        add(f"{LONG_CONFIG} fwd_bwd", fmt(got), "< 1.5 s", isinstance(got, float) and got < 1.5)
        add(f"{LONG_CONFIG} fwd_bwd peak memory", f"{targets['long']['mem_fwd_bwd'] / 2**20:.0f} MiB", "< 1 GiB",
            targets["long"]["mem_fwd_bwd"] < 2**30)
    for entry in targets["wide"]:
        shape, fwd, both = tuple(entry["shape"]), entry["fwd"], entry["fwd_bwd"]
        if not (isinstance(fwd, float) and isinstance(both, float)):
            add(f"{shape} fwd / fwd_bwd", f"{fmt(fwd)} / {fmt(both)}", "", None)
        elif shape in EARLIER["wide_fwd_bwd"]:
            earlier = EARLIER["wide_fwd_bwd"][shape]
            add(f"{shape} fwd_bwd (H100 before: {fmt(earlier)})", fmt(both), f"<= {fmt(earlier / 2)}",
                both <= earlier / 2)
        else:
            add(f"{shape} backward / forward", f"{(both - fwd) / fwd:.1f} ({fmt(both - fwd)} / {fmt(fwd)})", "<= 3",
                both - fwd <= 3 * fwd)
    memory = targets["memory"]
    add(f"{tuple(memory['shape'])} fwd_bwd peak memory per B*T*C", f"{memory['bytes_per_element']:.1f} bytes "
        f"({memory['peak_bytes'] / 2**20:.0f} MiB)", "<= 16 bytes", memory["bytes_per_element"] <= 16)
    return "\n".join([f"{'Log/Max target':<58} {'measured':<34} {'target':<22} status"] + rows)


def run_gpu_tests():
    t0 = time.perf_counter()
    # -P: the installed package, not the source folder (whose kernels/ lies outside it)
    cmd = [sys.executable, "-P", "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *GPU_TEST_FILES]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=TESTS_TIMEOUT_S,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return {"returncode": None, "summary": f"stopped after {TESTS_TIMEOUT_S:.0f} s (progress: "
                f"{text.strip().splitlines()[-1] if text.strip() else 'none'})", "seconds": TESTS_TIMEOUT_S,
                "tail": text[-3000:]}
    summary = (out.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"returncode": out.returncode, "summary": summary, "seconds": time.perf_counter() - t0,
            "tail": out.stdout[-3000:] + out.stderr[-2000:]}


def log_max_records(query_records, once_record, targets):
    """Records of Log/Max times per shape for the time-against-T figure (plot_performance)."""
    times = {tuple(r["shape"]): (r["times"], {}) for r in query_records + ([once_record] if once_record else [])}
    for entry in targets["flash"]:
        ours, anchor = times.get(tuple(entry["shape"]), (entry["ours"], {}))
        times[tuple(entry["shape"])] = (ours, entry["flash"])
    if "long" in targets:
        times[LONG_CONFIG] = (targets["long"], {})
    return [{"shape": list(shape), "ours": {"fwd": ours.get("fwd"), "fwd_bwd": ours.get("fwd_bwd"),
                                            "max": ours.get("viterbi")},
             "flash": {k: anchor.get(k, "skipped") for k in ("fwd", "fwd_bwd", "max")}}
            for shape, (ours, anchor) in sorted(times.items(), key=lambda kv: kv[0][1])]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--quick", action="store_true", help="the queries at (4, 1000, 32, 24), the small targets")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--no-anchors", action="store_true")
    parser.add_argument("--no-sweeps", action="store_true", help="skip the num_warps sweeps (5)")
    parser.add_argument("--queries-only", action="store_true",
                        help="no GPU tests and no Log/Max targets: the queries, every query once, the num_warps sweeps")
    args = parser.parse_args()
    import torch
    import triton
    query_configs = QUERY_CONFIGS[:1] if args.quick else QUERY_CONFIGS
    wanted = {(shape, what) for shape in query_configs for what in ("log", "max", "posterior")}
    pool, jobs = start_references(wanted)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    print(meta, flush=True)
    tests = None if args.skip_tests or args.quick or args.queries_only else run_gpu_tests()
    if tests:
        print("gpu tests:", tests["summary"], f"({tests['seconds']:.0f} s)", flush=True)
        if tests["returncode"] != 0:
            print(tests["tail"], flush=True)

    def device_inputs(shape):
        return {k: v.to(DEVICE) for k, v in make_inputs(*shape).items()}

    document = {"meta": meta, "tests": tests, "queries": []}

    def save():
        with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
            json.dump(document, f, indent=1, default=str)

    names = [q for q, _, _ in QUERIES]
    for shape in query_configs:
        t0 = time.perf_counter()
        print(f"{shape}:", flush=True)
        tensors = device_inputs(shape)
        record = {"shape": list(shape)}
        run_queries(shape, tensors, names, record)
        check_queries(shape, tensors, {what: jobs[(shape, what)] for what in ("log", "max", "posterior")}, record)
        record["mem_fwd_bwd"] = peak_bytes(query_maker("fwd_bwd", tensors)(shape))
        print(f"{shape}: done in {time.perf_counter() - t0:.0f} s; checks {record['checks']}", flush=True)
        document["queries"].append(record)
        save()
        del tensors
    measured = {tuple(r["shape"]): r["times"] for r in document["queries"]}
    if not args.queries_only:
        document["targets"] = log_max_targets(device_inputs, args, measured)
        save()
    once = None
    if not args.quick:
        print(f"{ONCE_CONFIG} (every query once):", flush=True)
        once = {"shape": list(ONCE_CONFIG), "times": {}}
        tensors = device_inputs(ONCE_CONFIG)
        for query in names:
            budget = budget_for(query, once["times"])
            once["times"][query] = (budgeted_time(query_maker(query, tensors), ONCE_CONFIG, budget, once=True)
                                    if elapsed() < ONCE_UNTIL_S else f"not run ({elapsed():.0f} s into the run)")
            print(f"  {query}: {fmt(once['times'][query])}", flush=True)
        document["once"] = once
        del tensors
        save()
    if not (args.quick or args.no_sweeps) and elapsed() < SWEEP_FROM_S:
        document["kbest_num_warps"] = kbest_num_warps_sweep(device_inputs)
        document["num_warps"] = num_warps_sweep(device_inputs)
        save()
    pool.shutdown(cancel_futures=True)
    from plot_performance import plot_performance, plot_queries  # beside this script
    if "targets" in document:
        document["log_max"] = log_max_records(document["queries"], once, document["targets"])
        plot_performance(document["log_max"], os.path.join(args.out, "gpu_bench.png"), EARLIER["flash"])
    plot_queries(document["queries"] + ([once] if once else []), QUERIES, os.path.join(args.out, "gpu_queries.png"))
    save()
    print("\nchecks (float32 kernels against float64 references on the CPU; rel err = ||ours - ref|| / ||ref||)")
    print(checks_table(document["queries"]))
    if "num_warps" in document:
        print("\nnum_warps (forward sweep / forward sweep + flow):", json.dumps(document["num_warps"], default=fmt))
    print(f"\n{meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}; median times through the public API")
    if tests:
        print("gpu tests:", tests["summary"])
    if "targets" in document:
        print(targets_table(document["targets"]))
    print()
    print(queries_table(document["queries"] + ([once] if once else [])))


if __name__ == "__main__":
    main()
