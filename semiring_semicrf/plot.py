"""Plotting helpers (matplotlib) for one sequence's posterior and decodings.

Every function draws on the `ax` it is given, or on a new figure when `ax` is
None, labels its axes, adds a legend or colour bar, and returns the axes.
Inputs are one sequence: a `(T, C)` marginal table, a `(T,)` boundary
vector, lists of `(start, end, label)` segments (or 1-D ``Segmentation``
values). Tensors may live on any device and may require grad.

matplotlib is an optional dependency (``pip install "semiring-semicrf[plot]"``),
imported when a function draws; without it the functions raise an ImportError
that says how to install it. Scripts without a display should select a
non-interactive backend before the first figure (``matplotlib.use("Agg")``);
the ``semicrf`` command does.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_INSTALL_HINT = 'pip install "semiring-semicrf[plot]" (or pip install matplotlib)'


def require_matplotlib(submodule: str = "matplotlib") -> Any:
    """Import and return `submodule` of matplotlib (e.g. ``"matplotlib.pyplot"``),
    or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(submodule)
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] != "matplotlib":
            raise
        raise ImportError(f"plotting needs matplotlib, which is not installed: {_INSTALL_HINT}") from err


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=float)


def _new_axes(ax, figsize):
    if ax is not None:
        return ax
    plt = require_matplotlib("matplotlib.pyplot")
    _, ax = plt.subplots(figsize=figsize, constrained_layout=True)
    return ax


def label_colors(num_labels: int) -> list:
    """One RGBA colour per label, the same in every plot of this module."""
    matplotlib = require_matplotlib()
    cmap = matplotlib.colormaps["tab10" if num_labels <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(num_labels)]


def _label_names(label_names: Sequence[str] | None, num_labels: int) -> list:
    if label_names is None:
        return [f"label {c}" for c in range(num_labels)]
    if len(label_names) != num_labels:
        raise ValueError(f"label_names must have one name per label ({num_labels}), got {len(label_names)}")
    return list(label_names)


def plot_label_marginals(marginals, *, length: int | None = None, label_names: Sequence[str] | None = None,
                         ax=None, title: str = "Label marginals"):
    """Heat-map of `P(position t lies in a segment labelled c)`.

    Args:
        marginals: `(T, C)` probabilities of one sequence.
        length: draw only the first `length` positions (default all T).
        label_names: `C` names for the rows (default "label c").
        ax: axes to draw on (default: a new figure).
        title: the axes title.

    Returns:
        the axes, with a colour bar labelled "probability".
    """
    m = _numpy(marginals)
    if m.ndim != 2:
        raise ValueError(f"marginals must have shape (T, C) for one sequence, got {m.shape}")
    m = m[: m.shape[0] if length is None else int(length)]
    T, C = m.shape
    ax = _new_axes(ax, (max(6.0, min(14.0, T / 8)), 1.2 + 0.4 * C))
    image = ax.imshow(m.T, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis",
                      vmin=0.0, vmax=1.0, extent=(-0.5, T - 0.5, -0.5, C - 0.5))
    ax.set_yticks(range(C))
    ax.set_yticklabels(_label_names(label_names, C))
    ax.set_xlabel("position t")
    ax.set_ylabel("label")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label="probability", pad=0.01)
    return ax


def plot_boundary_probabilities(boundaries, *, length: int | None = None, gold_starts=None,
                                gold_label: str = "gold start", ax=None, title: str = "Segment boundaries"):
    """`P(a segment starts at t)` as bars, with optional gold starts.

    Args:
        boundaries: `(T,)` probabilities of one sequence.
        length: draw only the first `length` positions (default all T).
        gold_starts: positions (or a `(T,)` bool mask) where a reference
            segmentation starts a segment, drawn as dashed lines.
        gold_label: the legend entry of those lines.
        ax: axes to draw on (default: a new figure).
        title: the axes title.
    """
    p = _numpy(boundaries)
    if p.ndim != 1:
        raise ValueError(f"boundaries must have shape (T,) for one sequence, got {p.shape}")
    p = p[: p.shape[0] if length is None else int(length)]
    T = p.shape[0]
    ax = _new_axes(ax, (max(6.0, min(14.0, T / 8)), 2.6))
    ax.bar(np.arange(T), p, width=0.9, color="tab:blue", label="P(segment starts at t)")
    if gold_starts is not None:
        for i, t in enumerate(_positions(gold_starts)):
            ax.axvline(t, color="black", linestyle="--", linewidth=0.8, label=gold_label if i == 0 else None)
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("position t")
    ax.set_ylabel("probability")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return ax


def _positions(starts) -> np.ndarray:
    """Positions from a list of ints or a bool mask."""
    if hasattr(starts, "detach"):
        starts = starts.detach().cpu().numpy()
    starts = np.asarray(starts)
    return np.flatnonzero(starts) if starts.dtype == bool else starts.astype(int)


def _segments_of(value) -> list:
    """`(start, end, label)` tuples from a list of them or a 1-D Segmentation."""
    if hasattr(value, "to_segments"):
        if value.labels.dim() != 1:
            raise ValueError(f"plot one sequence at a time: got a Segmentation of shape {tuple(value.shape)}")
        value = value.to_segments()
    return [(int(s), int(e), int(c)) for s, e, c in value]


def plot_segmentations(segmentations: Mapping[str, object], *, num_labels: int | None = None,
                       label_names: Sequence[str] | None = None, ax=None, title: str = "Segmentations"):
    """Each segmentation as a row of coloured bars over the positions.

    Args:
        segmentations: row name -> segmentation of one sequence, as a list of
            `(start, end, label)` (end exclusive) or a 1-D ``Segmentation``;
            rows are drawn top to bottom in the mapping's order
            (e.g. ``{"gold": ..., "Viterbi": ..., "sample 1": ...}``).
        num_labels: number of labels C (default: the largest label + 1).
        label_names: `C` names for the legend.
        ax: axes to draw on (default: a new figure).
        title: the axes title.
    """
    rows = {name: _segments_of(value) for name, value in segmentations.items()}
    if not rows:
        raise ValueError("segmentations must hold at least one row")
    used = [c for segs in rows.values() for _, _, c in segs]
    C = num_labels if num_labels is not None else max(used, default=0) + 1
    if used and max(used) >= C:
        raise ValueError(f"a segment has label {max(used)} but num_labels = {C}")
    T = max((e for segs in rows.values() for _, e, _ in segs), default=1)
    colors, names = label_colors(C), _label_names(label_names, C)
    ax = _new_axes(ax, (max(6.0, min(14.0, T / 8)), 1.0 + 0.45 * len(rows)))
    for row, segs in enumerate(rows.values()):
        y = len(rows) - 1 - row
        ax.broken_barh([(s - 0.5, e - s) for s, e, _ in segs], (y - 0.38, 0.76),
                       facecolors=[colors[c] for _, _, c in segs], edgecolor="white", linewidth=1.0)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(list(rows)[::-1])
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("position t")
    ax.set_title(title)
    Patch = require_matplotlib("matplotlib.patches").Patch
    present = sorted(set(used))
    ax.legend(handles=[Patch(facecolor=colors[c], label=names[c]) for c in present], loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize="small", title="label")
    return ax


def plot_benchmark(curves: Mapping[str, tuple], *, xlabel: str = "sequence length T", ylabel: str = "seconds",
                   logx: bool = True, logy: bool = True, ax=None, title: str = "Benchmark"):
    """Curves of a measured quantity against a size.

    Args:
        curves: method name -> `(xs, ys)`; points where `ys` is None or NaN
            (did not fit, timed out) are skipped.
        xlabel: the x-axis label.
        ylabel: the y-axis label (say the unit).
        logx: logarithmic x-axis.
        logy: logarithmic y-axis.
        ax: axes to draw on (default: a new figure).
        title: the axes title.
    """
    ax = _new_axes(ax, (6.0, 4.0))
    markers = "osD^v<>p*h"
    for i, (name, (xs, ys)) in enumerate(curves.items()):
        pairs = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None and np.isfinite(float(y))]
        if not pairs:
            continue
        x, y = zip(*pairs)
        ax.plot(x, y, marker=markers[i % len(markers)], label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return ax
