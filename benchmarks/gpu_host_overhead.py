"""The host's share of a Log forward on a GPU: validation, and the launches that CUDA graphs remove.

    python3 -u benchmarks/gpu_host_overhead.py      # about a minute on an H200

1. Back to back: `log_partition` under no_grad on fresh `SemiMarkovPotentials` with `validate_args=True` (the
   default: the NaN/inf checks of every potential are read back from the device once per call) and `False`,
   50 calls back to back per timing, median of 5 timings. The device read waits for the GPU work queued before
   it, so the host's work after it (the factors, two launches) is no longer hidden behind the previous call's
   kernels; without it the calls run at the kernels' pace.
2. Isolated calls (each from an idle GPU, CUDA events, as ``gpu_bench.py`` times every query): the forward and
   the forward+backward, eager (`validate_args=False`) against the same calls replayed from CUDA graphs
   (`torch.cuda.CUDAGraph` for the forward, `torch.cuda.make_graphed_callables` for forward+backward), the
   inputs copied into the graphs' static tensors inside the timing. The eager call's excess is the host's
   work before the first kernel; a replay is one launch.

3. Where the host's time goes: timestamps (`time.perf_counter`) taken inside isolated eager forward+backward
   calls, each from an idle GPU, at the entry and exit of the steps that matter (:data:`STEPS`: the
   autograd Functions, the factors' mean, each kernel's launch by Triton, the gradients' assembly), median
   over 30 calls, in microseconds from the call's start. A kernel starts on the GPU when its launch returns
   (and the kernel before it is done): the time before the forward's launch and any excess of the host's
   work between the forward's and the flow's launches over the forward kernel add to an eager call.

At :data:`SIZES` (the host-overhead target's and a small one); prints the tables last.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import statistics
import sys
import time
from typing import Any

import torch

from semiring_semicrf import SemiMarkovPotentials, log_partition

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import event_seconds  # noqa: E402

SIZES = [(16, 2000, 16, 12), (4, 1000, 32, 24), (4, 200, 8, 4)]
CALLS, TIMINGS, ISOLATED = 50, 5, 30


def per_call(fn) -> float:
    """Median seconds per call of `fn`, `CALLS` back to back per timing."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(TIMINGS):
        start = time.perf_counter()
        for _ in range(CALLS):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / CALLS)
    return statistics.median(times)


def isolated(fn) -> float:
    """Median seconds of one call of `fn` started on an idle GPU (CUDA events around it)."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(ISOLATED):
        torch.cuda.synchronize()
        times.append(event_seconds(fn))
    return statistics.median(times)


def inputs(B, T, K, C, seed=0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, T, C, generator=g)
    return ((scores - scores.mean(1, keepdim=True)).cuda(), (0.5 * torch.randn(C, C, generator=g)).cuda(),
            (0.5 * torch.randn(K, C, generator=g)).cuda())


def graphed_forward(static: tuple[torch.Tensor, ...]):
    """`replay(new_inputs) -> log Z`: a captured no-grad forward on `static`."""
    def forward():
        with torch.no_grad():
            return log_partition(SemiMarkovPotentials(*static, validate_args=False))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = forward()

    def replay(fresh):
        for target, value in zip(static, fresh):
            target.copy_(value)
        graph.replay()
        return out
    return replay


def total(scores, transition, duration):
    return log_partition(SemiMarkovPotentials(scores, transition, duration, validate_args=False)).sum()


def back_to_back(tensors) -> dict:
    """Section 1 on one problem: seconds per forward by `validate_args`."""
    def forward(validate):
        with torch.no_grad():
            return log_partition(SemiMarkovPotentials(*tensors, validate_args=validate))
    return {validate: per_call(lambda v=validate: forward(v)) for validate in (True, False)}


def eager_and_graphed(tensors) -> dict:
    """Section 2 on one problem: isolated seconds of each call."""
    leaves = [t.clone().requires_grad_() for t in tensors]
    replay = graphed_forward(tuple(t.clone() for t in tensors))
    graphed_total: Any = torch.cuda.make_graphed_callables(total, tuple(t.clone().requires_grad_() for t in tensors))
    assert torch.equal(replay(tensors), torch.no_grad()(log_partition)(SemiMarkovPotentials(*tensors)))

    def eager_forward():
        with torch.no_grad():
            return log_partition(SemiMarkovPotentials(*tensors, validate_args=False))

    return {"fwd eager": isolated(eager_forward), "fwd graphed": isolated(lambda: replay(tensors)),
            "f+b eager": isolated(lambda: total(*leaves).backward()),
            "f+b graphed": isolated(lambda: graphed_total(*leaves).backward())}


#: Section 3's timestamps: (module, owner of the attribute or None, attribute, label), each call of it marked
#: at entry and exit.
STEPS = [("semiring_semicrf.autograd.function", "LogPartition", "forward", "LogPartition.forward"),
         ("semiring_semicrf.factors", "Factors", "centring_mean", "Factors.centring_mean"),
         ("semiring_semicrf.kernels.common", "duration_ring_kernel", "run", "launch: duration ring"),
         ("semiring_semicrf.kernels.forward", "forward_sweep_kernel", "run", "launch: forward sweep"),
         ("semiring_semicrf.autograd.function", "LogPartition", "backward", "LogPartition.backward"),
         ("semiring_semicrf.kernels.backward", "outside_flow_kernel", "run", "launch: outside flow"),
         ("semiring_semicrf.autograd.function", None, "gradients", "gradients from the posterior")]


@contextlib.contextmanager
def timestamps(marks: list):
    """Within: every call of a :data:`STEPS` entry appends `(label + " >"/" <", perf_counter())` to `marks`."""
    patched = []
    for module, owner, name, label in STEPS:
        target = importlib.import_module(module)
        target = target if owner is None else getattr(target, owner)
        original, raw = getattr(target, name), vars(target).get(name)

        def marked(*args, _original=original, _label=label, **kwargs):
            marks.append((_label + " >", time.perf_counter()))
            result = _original(*args, **kwargs)
            marks.append((_label + " <", time.perf_counter()))
            return result
        wrapper = functools.wraps(original)(marked)
        setattr(target, name, staticmethod(wrapper) if isinstance(raw, staticmethod) else wrapper)
        patched.append((target, name, raw))
    try:
        yield
    finally:
        for target, name, raw in reversed(patched):
            if raw is None:  # a kernel's `run`: the class's method again
                delattr(target, name)
            else:
                setattr(target, name, raw)


def host_timeline(tensors) -> list:
    """Section 3 on one problem: `[(label, median microseconds from the call's start)]` in call order."""
    leaves = [t.clone().requires_grad_() for t in tensors]
    marks: list = []

    def call():
        marks.append(("start", time.perf_counter()))
        loss = total(*leaves)
        marks.append(("loss built", time.perf_counter()))
        loss.backward()
        marks.append(("backward returned", time.perf_counter()))

    with timestamps(marks):
        for _ in range(5):
            call()
        runs = []
        for _ in range(ISOLATED):
            torch.cuda.synchronize()
            marks.clear()
            call()
            runs.append([(label, t - marks[0][1]) for label, t in marks])
        torch.cuda.synchronize()
    labels = [label for label, _ in runs[0]]
    return [(label, 1e6 * statistics.median(run[i][1] for run in runs)) for i, label in enumerate(labels)]


def main() -> None:
    rows = []
    for shape in SIZES:
        tensors = inputs(*shape)
        rows.append((shape, back_to_back(tensors), eager_and_graphed(tensors), host_timeline(tensors)))
        print(shape, rows[-1][1:3], flush=True)
    print("\n1. back to back, ms per forward: validate_args=True / False")
    for shape, row, _, _ in rows:
        print(f"{shape}: {1e3 * row[True]:.3f} / {1e3 * row[False]:.3f}")
    print("\n2. isolated calls, ms: forward eager / graphed (saved), forward+backward eager / graphed (saved)")
    for shape, _, t, _ in rows:
        print(f"{shape}: {1e3 * t['fwd eager']:.3f} / {1e3 * t['fwd graphed']:.3f} "
              f"({1e3 * (t['fwd eager'] - t['fwd graphed']):.3f}), {1e3 * t['f+b eager']:.3f} / "
              f"{1e3 * t['f+b graphed']:.3f} ({1e3 * (t['f+b eager'] - t['f+b graphed']):.3f})")
    print("\n3. host timestamps in an isolated eager forward+backward, us from the call's start")
    for shape, _, _, timeline in rows:
        print(f"{shape}:")
        for label, us in timeline:
            print(f"  {us:8.1f}  {label}")


if __name__ == "__main__":
    main()
