"""The ``semicrf`` command (also ``python -m semiring_semicrf``).

    semicrf demo [--out DIR]     synthetic data: summary table, PNG plots
    semicrf bench [...]          forward / forward+backward / Viterbi timings (and samples, top-k,
                                 entropy, cross-entropy, KL, double backward with --ops)
    semicrf info                 versions, devices, backend per semiring
    semicrf --version

Errors are reported as one line on stderr (``semicrf: error: ...``) with a
non-zero exit status: 2 for bad usage, 1 for a failure while running;
``semicrf --debug COMMAND`` also prints the traceback of a failure.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence

PROG = "semicrf"


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line instead of two."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- small terminal helpers -----------------------------------------------------

def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: columns holding numbers right-aligned, others left-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [any(re.fullmatch(r"[-+]?[0-9][0-9.,e+-]*x?", row[i]) for row in cells[1:]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- semicrf info -----------------------------------------------------------------

_VERSIONED = ("semiring-semicrf", "torch", "triton", "numpy", "matplotlib", "torch-struct", "flash-semicrf")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> list:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def backend_rows(devices: Sequence[str]) -> list:
    """`(semiring, potentials kind, device, path)`: what `semimarkov_scan`
    runs on each (:func:`semiring_semicrf.scan.dispatch_table`)."""
    from .scan import dispatch_table

    return dispatch_table(devices)


def command_info(args) -> int:
    import torch

    print(format_table(["package", "version"], [(name, _version(name)) for name in _VERSIONED]))
    print(f"\npython {platform.python_version()} on {platform.platform()}")
    print(f"cpu: {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
    else:
        print("cuda: not available")
    print("\nbackend='auto' picks:")
    print(format_table(["semiring", "potentials", "device", "backend (path)"], backend_rows(_devices())))
    return 0


# -- semicrf demo -----------------------------------------------------------------

def command_demo(args) -> int:
    from . import demo

    os.makedirs(args.out, exist_ok=True)
    before = {name: os.path.getmtime(os.path.join(args.out, name)) for name in os.listdir(args.out)}
    status = demo.run(args)
    written = sorted(name for name in os.listdir(args.out) if name.endswith(".png")
                     and before.get(name) != os.path.getmtime(os.path.join(args.out, name)))
    if status == 0 and not written:
        raise RuntimeError(f"the demo finished but wrote no PNG to {os.path.abspath(args.out)}")
    print(f"\n{len(written)} plot(s) in {os.path.abspath(args.out)}: {', '.join(written)}")
    return status


# -- semicrf bench ----------------------------------------------------------------

#: (B, T, K, C) per preset and device; the GPU rows are those of docs/performance.md.
BENCH_SIZES = {
    ("quick", "cpu"): [(2, 200, 8, 4)],
    ("quick", "cuda"): [(4, 1000, 32, 24)],
    ("full", "cpu"): [(2, 1000, 16, 8), (2, 4000, 32, 24), (1, 20000, 16, 8)],
    ("full", "cuda"): [(4, 1000, 32, 24), (16, 2000, 16, 12), (4, 10000, 100, 24), (1, 100000, 64, 8)],
}
#: pytorch-struct builds charts of about T K^2 C^2 entries (and more): skip it beyond this.
TORCH_STRUCT_LIMIT = 4_000_000
#: Samples drawn and entries listed by the "sample" and "topk" queries.
SAMPLES, TOPK = 100, 5
#: The other queries, timed through SemiMarkovDistribution (see :func:`query_call`).
QUERIES = ("sample", "topk", "entropy", "cross-entropy", "kl", "double-backward")
OPS = ("forward", "forward+backward", "viterbi") + QUERIES
#: What `semicrf bench` times without --ops (the anchors time these three).
DEFAULT_OPS = OPS[:3]
#: The queries that differentiate (their potentials require grad).
DIFFERENTIATED = ("forward+backward", "entropy", "cross-entropy", "kl", "double-backward")


class BenchProblem:
    """One random problem for every method: `scores (B, T, C)`, `transition
    (C, C)`, `duration (K, C)` and the `start` that makes our model equal to
    flash-semicrf's free first label (log-sum-exp over sources for Log, max
    for Viterbi); pytorch-struct gets our model through `to_edges()`.
    Every method's call returns log Z (or the best score), `(B,)`; the
    other :data:`QUERIES` return their own result (cross-entropy and KL
    against a second model whose scores are `other_scores`)."""

    def __init__(self, op: str, B: int, T: int, K: int, C: int, device: str, dtype):
        import torch

        g = torch.Generator().manual_seed(0)
        self.op, self.B, self.T, self.K, self.C, self.device = op, B, T, K, C, device
        self.scores = torch.randn(B, T, C, generator=g, dtype=dtype).to(device)
        self.transition = (0.5 * torch.randn(C, C, generator=g, dtype=dtype)).to(device)
        self.duration = (0.5 * torch.randn(K, C, generator=g, dtype=dtype)).to(device)
        self.gradient = op in DIFFERENTIATED
        self.scores.requires_grad_(self.gradient)
        self.other_scores = None
        if op in ("cross-entropy", "kl"):
            self.other_scores = self.scores.detach() + torch.randn(B, T, C, generator=g, dtype=dtype).to(device)

    def potentials(self, scores=None):
        from .potentials import SemiMarkovPotentials

        scores = self.scores if scores is None else scores
        source = self.transition.amax(dim=0) if self.op == "viterbi" else self.transition.logsumexp(dim=0)
        return SemiMarkovPotentials(scores, self.transition, self.duration, start=source)


def query_call(op: str, make: Callable, other: Callable) -> Callable:
    """`fn()` running one of :data:`QUERIES` through the public API
    (:class:`SemiMarkovDistribution`) on `make()`'s potentials, built anew
    at each call; the differentiated queries (entropy, cross-entropy and KL
    forward+backward, and the double backward of log Z: a gradient penalty
    on the scores) need `make()`'s scores to require grad. `other()`: the
    second model of cross-entropy and KL (no grad). `fn` returns a tensor."""
    import torch

    from .autograd import log_partition
    from .distribution import SemiMarkovDistribution

    def distribution(potentials):
        return SemiMarkovDistribution.from_potentials(potentials, validate_args=False)

    if op == "sample":
        return lambda: distribution(make()).sample((SAMPLES,)).labels
    if op == "topk":
        return lambda: distribution(make()).topk(TOPK).scores
    if op == "double-backward":
        def penalty():
            p = make()
            log_z = log_partition(p)
            (grad,) = torch.autograd.grad(log_z.sum(), p.scores, create_graph=True)
            (grad ** 2).sum().backward()
            return log_z
        return penalty
    measures = {"entropy": lambda d: d.entropy(), "cross-entropy": lambda d: d.cross_entropy(distribution(other())),
                "kl": lambda d: d.kl(distribution(other()))}
    if op not in measures:
        raise ValueError(f"op must be one of {QUERIES}, got {op!r}")

    def forward_backward():
        value = measures[op](distribution(make()))
        value.sum().backward()
        return value
    return forward_backward


def _ours(problem: BenchProblem) -> Callable:
    import torch

    from .autograd import log_partition
    from .decoding import viterbi

    if problem.op in QUERIES:
        return query_call(problem.op, problem.potentials, lambda: problem.potentials(problem.other_scores))
    if problem.gradient:
        def run():
            log_z = log_partition(problem.potentials())
            log_z.sum().backward()
            return log_z
        return run
    potentials = problem.potentials()
    if problem.op == "forward":
        return lambda: torch.no_grad()(log_partition)(potentials)
    return lambda: viterbi(potentials)[0]


def _torch_struct(problem: BenchProblem) -> Callable | None:
    if problem.op in QUERIES:
        return None
    if problem.T * (problem.K * problem.C) ** 2 > TORCH_STRUCT_LIMIT:
        return None
    import torch
    import torch_struct

    lengths = torch.full((problem.B,), problem.T + 1, device=problem.device)
    semiring = torch_struct.MaxSemiring if problem.op == "viterbi" else torch_struct.LogSemiring

    def run():
        with torch.set_grad_enabled(problem.gradient):
            value = torch_struct.SemiMarkov(semiring).logpartition(problem.potentials().to_edges(), lengths=lengths)[0]
        if problem.gradient:
            value.sum().backward()
        return value.reshape(problem.B)
    return run


def _flash_semicrf(problem: BenchProblem) -> Callable | None:
    if problem.op in QUERIES:
        return None
    import torch
    from flash_semicrf import semi_crf_streaming_forward

    lengths = torch.full((problem.B,), problem.T, device=problem.device, dtype=torch.long)
    options = dict(semiring="max" if problem.op == "viterbi" else "log", use_triton=problem.device.startswith("cuda"))

    def run():
        with torch.set_grad_enabled(problem.gradient):
            cum = torch.nn.functional.pad(problem.scores.cumsum(dim=1), (0, 0, 1, 0))
            value = semi_crf_streaming_forward(cum, problem.transition, problem.duration, lengths, problem.K,
                                               **options)
        if problem.gradient:
            value.sum().backward()
        return value
    return run


ANCHORS = {"torch-struct": ("torch_struct", _torch_struct), "flash-semicrf": ("flash_semicrf", _flash_semicrf)}


def time_calls(fn: Callable, repeat: int, device: str, tick: Callable[[], object] = lambda: None) -> tuple:
    """One warm-up call of `fn`, then `repeat` timed calls, each waited for
    (CUDA is synchronized); `tick()` after every call, the warm-up included.
    Returns `(seconds of each timed call, the last result)`.

    (``torch.utils.benchmark.Timer`` times a block of calls after warm-ups it
    chooses itself; a case that takes minutes per call needs one warm-up and a
    progress report after every call, which this loop gives.)"""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    tick()
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
        tick()
    return times, result


def _measure(factory, problem: BenchProblem, repeat: int, progress) -> tuple:
    """`({"median_s": ..., "times_s": [...]}, result)`, or `({"skipped": a short
    reason}, None)` when the method does not run this case. Advances
    `progress` by `1 + repeat` calls in every case."""
    import torch

    done = 0

    def tick():
        nonlocal done
        done += 1
        progress.update(1)

    try:
        fn = factory(problem)
        if fn is None:
            return {"skipped": "-" if problem.op in QUERIES else "too big"}, None
        times, result = time_calls(fn, repeat, problem.device, tick)
        return {"median_s": statistics.median(times), "times_s": times}, result
    except (torch.OutOfMemoryError, MemoryError):
        return {"skipped": "out of memory"}, None
    except RuntimeError as err:
        if "can't allocate memory" in str(err):
            return {"skipped": "out of memory"}, None
        if problem.op in QUERIES:  # a query this version cannot run (e.g. no second derivative) is a result
            return {"skipped": f"error: {str(err).splitlines()[0][:60]}"}, None
        raise
    finally:
        progress.update(1 + repeat - done)
        if problem.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _ms(entry: dict) -> str:
    return f"{entry['median_s'] * 1e3:.1f}" if "median_s" in entry else entry["skipped"]


def _ratio(anchor: dict, ours: dict) -> str:
    if "median_s" in anchor and "median_s" in ours:
        return f"{anchor['median_s'] / ours['median_s']:.1f}x"
    return "-"


def _relative_difference(results: dict) -> float | None:
    """Largest relative difference of any method's result from ours (None
    when no other method ran)."""
    if results.get("ours") is None:
        return None
    ours = results["ours"].detach().double()
    others = [r.detach().double().to(ours.device) for name, r in results.items() if name != "ours" and r is not None]
    if not others:
        return None
    return max(((o - ours).abs() / ours.abs().clamp(min=1e-30)).max().item() for o in others)


def _bench_device(asked: str) -> str:
    import torch

    if asked == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if asked == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA device")
    return asked


def run_bench(args) -> dict:
    """Time every (size, op, method) case with a progress bar on stderr (one
    step per call); returns the report that ``--json`` prints."""
    import torch
    from tqdm import tqdm

    from . import __version__

    device = _bench_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    sizes = args.size or BENCH_SIZES[("quick" if args.quick else "full", device)]
    ops = args.ops or list(DEFAULT_OPS)
    anchors = {}
    if args.anchors:
        for name, (module, factory) in ANCHORS.items():
            if importlib.util.find_spec(module) is None:
                print(f"note: {name} is not installed, no comparison with it", file=sys.stderr)
            else:
                anchors[name] = factory
    methods = {"ours": _ours, **anchors}
    cases = []
    total = len(sizes) * len(ops) * len(methods) * (1 + args.repeat)
    with tqdm(total=total, unit="call", file=sys.stderr, dynamic_ncols=True, disable=args.no_progress) as progress:
        for B, T, K, C in sizes:
            for op in ops:
                case, results = {"B": B, "T": T, "K": K, "C": C, "op": op, "methods": {}}, {}
                for name, factory in methods.items():
                    progress.set_description(f"{name} {op} B={B} T={T} K={K} C={C}")
                    problem = BenchProblem(op, B, T, K, C, device, dtype)
                    case["methods"][name], results[name] = _measure(factory, problem, args.repeat, progress)
                case["max_rel_diff"] = _relative_difference(results)
                cases.append(case)
    return {"device": device if device == "cpu" else torch.cuda.get_device_name(), "dtype": args.dtype,
            "threads": torch.get_num_threads(), "repeat": args.repeat,
            "versions": {"semiring-semicrf": __version__, "torch": torch.__version__},
            "anchors": list(anchors), "cases": cases}


def bench_table(report: dict) -> str:
    """The report of :func:`run_bench` as a text table with its caption."""
    anchors = report["anchors"]
    header = ["B", "T", "K", "C", "op", "ours ms"]
    for name in anchors:
        header += [f"{name} ms", f"{name}/ours"]
    rows = []
    for case in report["cases"]:
        ours = case["methods"]["ours"]
        row = [case["B"], case["T"], case["K"], case["C"], case["op"], _ms(ours)]
        for name in anchors:
            row += [_ms(case["methods"][name]), _ratio(case["methods"][name], ours)]
        if anchors:
            row.append("-" if case["max_rel_diff"] is None else f"{case['max_rel_diff']:.1e}")
        rows.append(row)
    lines = [f"device {report['device']}, {report['dtype']}, {report['threads']} CPU thread(s), "
             f"median of {report['repeat']} calls after a warm-up",
             format_table(header + (["max rel. diff"] if anchors else []), rows)]
    if anchors:
        lines.append("All methods compute the same model (log Z, or the best score for viterbi); 'max rel. diff' is "
                     "the largest relative difference of an anchor's result from ours. Anchor times include building "
                     "their inputs (pytorch-struct: the edge tensor; flash-semicrf: the prefix sums).")
    return "\n".join(lines)


def command_bench(args) -> int:
    report = run_bench(args)
    print(json.dumps(report, indent=1) if args.json else bench_table(report))
    return 0


def _size(text: str) -> tuple:
    try:
        size = tuple(int(x) for x in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 4 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"--size takes B,T,K,C (four positive integers), got {text!r}")
    return size


# -- entry point ------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from . import demo as demo_module

    parser = _Parser(prog=PROG, description="Exact streaming semi-Markov CRFs over any semiring.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="on a failure, print the full traceback")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = commands.add_parser("demo", help="train on synthetic data, print a summary table, write PNG plots")
    demo_module.add_arguments(demo)
    demo.set_defaults(run=command_demo)

    positive_int = demo_module.positive_int
    bench = commands.add_parser("bench",
                                help="time forward, forward+backward and Viterbi, or other queries (CPU or GPU)")
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where to run (default: cuda when available)")
    bench.add_argument("--quick", action="store_true", help="one small size, seconds")
    bench.add_argument("--size", type=_size, action="append", metavar="B,T,K,C",
                       help="a problem size (repeatable; default: a preset per device)")
    bench.add_argument("--ops", nargs="+", choices=OPS, metavar="OP",
                       help=f"what to time, among {', '.join(OPS)} (default: {', '.join(DEFAULT_OPS)}); "
                            f"sample draws {SAMPLES}, topk lists {TOPK}; entropy, cross-entropy and kl are "
                            "forward+backward with p requiring grad; double-backward differentiates "
                            "(d log Z / d scores)^2")
    bench.add_argument("--anchors", action="store_true",
                       help="also time pytorch-struct and flash-semicrf where installed, with ratios")
    bench.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    bench.add_argument("--repeat", type=positive_int, default=3, help="timed calls per case (default: %(default)s)")
    bench.add_argument("--threads", type=positive_int, default=None,
                       help="CPU threads for torch (default: torch's own choice)")
    bench.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    bench.set_defaults(run=command_bench)

    info = commands.add_parser("info", help="versions, devices, and which backend each semiring uses")
    info.set_defaults(run=command_info)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; a flag no command knows is reported as such
    (argparse alone would first complain that COMMAND is missing)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.error("the following arguments are required: COMMAND")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = None
    try:
        args = parse_args(argv)
        return args.run(args)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as err:
        if args is not None and args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {type(err).__name__}: {err}" + ("" if args is not None and args.debug else
              " (run with --debug for the traceback)"), file=sys.stderr)
        return 1
