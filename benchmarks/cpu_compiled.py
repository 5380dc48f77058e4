"""The compiled generic scan against the eager one, on the CPU.

    python benchmarks/cpu_compiled.py                       # the default sizes
    python benchmarks/cpu_compiled.py --sizes 2,200,8,6 --threads 2
    python benchmarks/cpu_compiled.py --semirings kmax   # KMaxSemiring(5) only

For the semiring of notebooks/02_new_semiring.ipynb (read from the notebook
itself), `KMaxSemiring(5)` and `EntropySemiring()` (whose specializations are
bypassed: both run the generic scan), at each size (B, T, K, C), float32:

- the eager generic scan (`backend="reference"`): forward (under no_grad)
  and forward+backward (`.sum().backward()` to every input, block
  checkpointing);
- the compiled scan (`backend="compiled"`): its first forward and its first
  forward+backward (compiling; reported apart), then the same medians;
- the relative difference of the compiled results and gradients from the
  eager ones (`max |compiled - eager| / max |eager|`).

Prints one table (times in ms, compile in s). `auto` keeps the eager scan on
the CPU unless the compiled one is faster at every size measured here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "02_new_semiring.ipynb"
NOTEBOOK_SEMIRING = "ScoreMomentsSemiring"
SIZES = [(2, 200, 8, 6), (4, 1000, 32, 24)]


def notebook_semiring():
    """An instance of the semiring written in notebook 02 (its defining cell, run)."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    source = next("".join(c["source"]) for c in cells
                  if c["cell_type"] == "code" and f"class {NOTEBOOK_SEMIRING}(" in "".join(c["source"]))
    namespace: dict = {}
    exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    return namespace[NOTEBOOK_SEMIRING]()


#: What `--semirings` takes: the rows whose name starts with one of them (in lower case).
CHOICES = ("notebook", "kmax", "entropy")


def semirings(only=CHOICES) -> dict:
    """The semirings measured, by row name (the rows `only` names, see :data:`CHOICES`)."""
    from semiring_semicrf import EntropySemiring, KMaxSemiring
    rows = {"notebook": notebook_semiring(), "KMax(5)": KMaxSemiring(5), "Entropy": EntropySemiring()}
    return {name: semiring for name, semiring in rows.items() if name.lower().startswith(tuple(only))}


def problem(B, T, K, C, device="cpu", dtype=torch.float32, seed=0):
    """Random structured potentials, `(C, C)` transitions, all lengths T."""
    from semiring_semicrf import SemiMarkovPotentials
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, T, C, generator=g)
    return SemiMarkovPotentials((scores - scores.mean(dim=1, keepdim=True)).to(device, dtype),
                                (0.5 * torch.randn(C, C, generator=g)).to(device, dtype),
                                (0.5 * torch.randn(K, C, generator=g)).to(device, dtype))


def leaves_of(p):
    """`p` rebuilt from leaves that require grad, and the leaves."""
    from semiring_semicrf import SemiMarkovPotentials
    leaves = {name: t.detach().clone().requires_grad_() for name, t in p.tensors().items()}
    return SemiMarkovPotentials(lengths=p.lengths, **leaves), list(leaves.values())


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """`(seconds, result)` of one call."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def median_time(fn, device, repeats: int) -> float:
    return statistics.median(timed(fn, device)[0] for _ in range(repeats))


def relative(got, want) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    finite = torch.isfinite(want)
    if not torch.equal(finite, torch.isfinite(got)):
        return float("inf")
    scale = want[finite].abs().max() if finite.any() else torch.tensor(1.0, dtype=torch.float64)
    return float((got[finite] - want[finite]).abs().max() / scale.clamp(min=1e-30)) if finite.any() else 0.0


def forward(p, semiring, backend):
    from semiring_semicrf import semimarkov_scan
    with torch.no_grad():
        return semimarkov_scan(p, semiring, backend=backend)


def forward_backward(p, semiring, backend):
    """The result and the gradients of its sum with respect to every input."""
    from semiring_semicrf import semimarkov_scan
    q, leaves = leaves_of(p)
    out = semimarkov_scan(q, semiring, backend=backend)
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    return out.detach(), [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]


def measure(p, name, semiring, device, repeats: int, results: dict | None = None) -> dict:
    """One row: eager and compiled timings, compile times, differences
    (the results and gradients themselves into `results`, if given)."""
    row: dict = {"semiring": name, "size": (p.batch_size, p.T, p.K, p.C)}
    first_fwd, out = timed(lambda: forward(p, semiring, "compiled"), device)
    first_bwd, (_, grads) = timed(lambda: forward_backward(p, semiring, "compiled"), device)
    row["fwd"] = median_time(lambda: forward(p, semiring, "compiled"), device, repeats)
    row["fwd_bwd"] = median_time(lambda: forward_backward(p, semiring, "compiled"), device, repeats)
    row["compile_fwd_s"] = first_fwd - row["fwd"]
    row["compile_bwd_s"] = first_bwd - row["fwd_bwd"]
    eager_fwd, want = timed(lambda: forward(p, semiring, "reference"), device)
    eager_bwd, (_, want_grads) = timed(lambda: forward_backward(p, semiring, "reference"), device)
    row.update(eager_fwd=eager_fwd, eager_fwd_bwd=eager_bwd, diff=relative(out, want),
               grad_diff=max(relative(g, w) for g, w in zip(grads, want_grads)))
    if results is not None:
        results.update(compiled=out, eager=want, compiled_grads=grads, eager_grads=want_grads)
    return row


def table(rows) -> str:
    """The rows as a text table (ms; compile in s)."""
    head = ("semiring", "B x T x K x C", "eager fwd", "compiled fwd", "eager f+b", "compiled f+b", "compile fwd s",
            "compile f+b s", "vs eager", "grads vs eager")
    lines, errors = [head], []
    for r in rows:
        size = "x".join(map(str, r["size"]))
        if "error" in r:
            errors.append(f"{r['semiring']} {size}: {r['error']}")
            continue
        ms = lambda key, r=r: f"{1e3 * r[key]:.1f}"  # noqa: E731
        lines.append((r["semiring"], size, ms("eager_fwd"), ms("fwd"), ms("eager_fwd_bwd"), ms("fwd_bwd"),
                      f"{r['compile_fwd_s']:.1f}", f"{r['compile_bwd_s']:.1f}", f"{r['diff']:.1e}",
                      f"{r['grad_diff']:.1e}"))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join(["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines] + errors)


def run_rows(sizes, repeats: int, only=CHOICES) -> list:
    """Every semiring (that `only` names) at every size on the CPU; an error
    is a row, not the end of the run."""
    rows = []
    for size in sizes:
        p = problem(*size)
        for name, semiring in semirings(only).items():
            try:
                rows.append(measure(p, name, semiring, "cpu", repeats))
            except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
                rows.append({"semiring": name, "size": size, "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="*", default=[",".join(map(str, s)) for s in SIZES],
                        help="B,T,K,C (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--semirings", nargs="+", choices=CHOICES, default=CHOICES,
                        help="which semirings (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [tuple(int(x) for x in s.split(",")) for s in args.sizes]
    rows = run_rows(sizes, args.repeats, args.semirings)
    print(f"\nCPU, {torch.get_num_threads()} threads, float32, torch {torch.__version__}")
    print(table(rows))


if __name__ == "__main__":
    main()
