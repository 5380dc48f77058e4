"""The performance figures from a ``gpu_bench.py`` JSON file.

    python benchmarks/plot_performance.py            # regenerates docs/performance.png
    python benchmarks/plot_performance.py --json results/gpu_bench.json --out results/gpu_bench.png

:func:`plot_performance`, time against T: one panel per operation (forward,
forward+backward, Viterbi). In each, one line per fixed (B, K, C), so that
only T varies along a line (a shape run at a single T is a single marker):
ours solid with filled markers, flash-semicrf dashed with hollow markers in
the same colour. Where flash-semicrf was not run because it is known to take
over a minute, a hollow triangle at 60 s marks it ">60 s". The legends sit
outside the panels, so no label covers a point.

:func:`plot_queries`, every query against its target: one panel per problem
size, a horizontal bar per query (its median time, log scale), green where
it meets its target (a black tick: a multiple of Log forward+backward or of
Viterbi), red where it misses it; a query that ran past its time budget or
failed is named at the left edge instead of a bar.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = (("fwd", "forward"), ("fwd_bwd", "forward+backward"), ("max", "Viterbi"))
OVER_S = 60.0  # where a ">60 s" anchor is drawn


def load(path: str) -> dict:
    """The JSON document ``gpu_bench.py`` writes: ``{"meta", "tests", "log_max", "queries", ...}`` (earlier
    runs: ``{"meta", "tests", "results"}``), with its Log/Max records under ``"results"`` either way."""
    with open(path) as f:
        document = json.load(f)
    document.setdefault("results", document.get("log_max"))
    if not document["results"]:
        raise ValueError(f"{path} holds no results to plot")
    return document


def _groups(results: Sequence[dict]) -> dict:
    """(B, K, C) -> that shape's records, by increasing T."""
    groups: dict = {}
    for record in sorted(results, key=lambda r: r["shape"][1]):
        B, _, K, C = record["shape"]
        groups.setdefault((B, K, C), []).append(record)
    return groups


def _anchor_points(records: Sequence[dict], key: str, figures: Mapping) -> tuple:
    """(measured [(T, s)], over a minute [T], earlier figures [(T, s)]) of
    flash-semicrf for one shape group and operation."""
    measured, over, earlier = [], [], []
    for record in records:
        T, got = record["shape"][1], record.get("flash", {}).get(key)
        figure = figures.get(tuple(record["shape"]), {}).get(key)
        if isinstance(got, (int, float)):
            measured.append((T, float(got)))
        elif got == "skipped" and figure is not None:
            (over.append(T) if math.isinf(figure) else earlier.append((T, figure)))
    return measured, over, earlier


def plot_performance(results: Sequence[dict], path: str, anchor_figures: Mapping | None = None,
                     title: str | None = None) -> str:
    """Draw the figure for `results` (the JSON's ``"results"`` list) into `path`.

    Args:
        results: one record per shape, with ``"shape"`` (B, T, K, C), ``"ours"``
            and ``"flash"`` (seconds per operation key, or a reason string).
        path: where the PNG goes.
        anchor_figures: shape tuple -> {operation key: seconds} known from an
            earlier run, for anchors this run skipped; ``inf`` draws ">60 s".
        title: the figure's title (default: names the GPU of the results).

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    figures = anchor_figures or {}
    groups = _groups(results)
    colors = {shape: f"C{i}" for i, shape in enumerate(groups)}
    markers = dict(zip(groups, "osDPXvh*"))  # no "^": it marks ">60 s"
    fig, axes = plt.subplots(1, len(OPS), figsize=(13, 4.8), sharey=True)
    any_over = any_earlier = False
    for ax, (key, name) in zip(axes, OPS):
        for shape, records in groups.items():
            style = dict(color=colors[shape], marker=markers[shape])
            ours = [(r["shape"][1], r["ours"][key]) for r in records if isinstance(r["ours"].get(key), float)]
            if ours:
                ax.plot(*zip(*ours), ls="-", **style)
            measured, over, earlier = _anchor_points(records, key, figures)
            if measured:
                ax.plot(*zip(*measured), ls="--", mfc="none", **style)
            if earlier:
                any_earlier = True
                ax.plot(*zip(*earlier), ls="none", mfc="none", alpha=0.6, ms=9, **style)
            for T in over:
                any_over = True
                ax.plot([T], [OVER_S], ls="none", marker="^", mfc="none", ms=10, mew=1.5, color=colors[shape])
                ax.annotate(">60 s", (T, OVER_S), textcoords="offset points", xytext=(0, 9), ha="center",
                            fontsize=8, color=colors[shape])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("sequence length T")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time (s), median")
    low = min(line.get_ydata().min() for ax in axes for line in ax.get_lines())
    axes[0].set_ylim(low / 2, OVER_S * 4 if any_over else None)

    shapes = [Line2D([], [], color=colors[s], marker=markers[s], ls="-", label=f"B={s[0]}, K={s[1]}, C={s[2]}")
              for s in groups]
    kinds = [Line2D([], [], color="0.3", marker="o", ls="-", label="ours"),
             Line2D([], [], color="0.3", marker="o", ls="--", mfc="none", label="flash-semicrf 0.2.0")]
    if any_earlier:
        kinds.append(Line2D([], [], color="0.3", marker="o", ls="none", mfc="none", alpha=0.6,
                            label="flash-semicrf, an earlier run's figure"))
    if any_over:
        kinds.append(Line2D([], [], color="0.3", marker="^", ls="none", mfc="none", ms=10,
                            label="flash-semicrf over 60 s (not run)"))
    fig.legend(handles=shapes, title="fixed along a line", loc="lower left", bbox_to_anchor=(0.06, 0.0),
               ncol=len(shapes), fontsize=8, title_fontsize=8, frameon=False)
    fig.legend(handles=kinds, loc="lower right", bbox_to_anchor=(0.99, 0.0), ncol=len(kinds), fontsize=8,
               frameon=False)
    gpu = results[0].get("gpu", "GPU")
    fig.suptitle(title or f"semi-Markov CRF, float32, median time against T on one {gpu}", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_queries(records: Sequence[dict], queries: Sequence[tuple], path: str) -> str:
    """Draw every query of `records` (``gpu_bench.py``'s query records: ``"shape"`` and ``"times"``, seconds or
    a reason) against its target into `path`. `queries`: `(name, the query the target multiplies, factor)`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(5.2 * len(records), 4.2), squeeze=False)
    for ax, record in zip(axes[0], records):
        times = record["times"]
        measured = [t for t in times.values() if isinstance(t, (int, float))]
        left = min(measured) / 3 if measured else 1e-4
        for row, (name, against, factor) in enumerate(queries):
            got, reference = times.get(name), times.get(against) if against else None
            goal = factor * reference if isinstance(reference, (int, float)) else None
            if isinstance(got, (int, float)):
                color = "0.5" if goal is None else ("C2" if got <= goal else "C3")
                ax.barh(row, got, left=left, color=color)
                ax.annotate(f"{got * 1e3:.3g} ms" if got < 1 else f"{got:.3g} s", (got, row),
                            textcoords="offset points", xytext=(3, -3), fontsize=7)
            else:
                ax.annotate(str(got or "not run")[:40], (left, row), textcoords="offset points", xytext=(3, -3),
                            fontsize=7, color="C3")
            if goal is not None:
                ax.plot([goal, goal], [row - 0.4, row + 0.4], color="black", lw=1.5)
        ax.set_xscale("log")
        ax.set_yticks(range(len(queries)), [q[0] for q in queries], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("median time (s)")
        ax.set_title("B x T x K x C = " + " x ".join(f"{x:,}" for x in record["shape"]), fontsize=9)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.suptitle("every query against its target (tick): green met, red missed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "gpu_bench_h100.json"),
                        help="a gpu_bench.py result (default: %(default)s)")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "performance.png"),
                        help="the PNG to write (default: %(default)s)")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gpu_bench import EARLIER  # the anchors' known figures live beside the runs that use them

    print(plot_performance(load(args.json)["results"], args.out, EARLIER["flash"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
