"""The plotting helpers the docs and notebooks use: labelled axes, legends,
the right number of drawn items, clear errors for wrong shapes."""
from __future__ import annotations

import re

import pytest
import torch

from semiring_semicrf import plot
from semiring_semicrf.segmentation import Segmentation

matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is an optional extra: pip install -e '.[plot]'")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_label_marginals_heat_map():
    marginals = torch.softmax(torch.randn(30, 3, requires_grad=True), dim=-1)
    ax = plot.plot_label_marginals(marginals, length=20, label_names=["O", "A", "B"])
    assert ax.get_xlabel() == "position t" and ax.get_ylabel() == "label"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["O", "A", "B"]
    image = ax.get_images()[0]
    assert image.get_array().shape == (3, 20)
    assert any(a.get_ylabel() == "probability" for a in ax.figure.axes if a is not ax)  # the colour bar


def test_boundary_probabilities_with_gold_starts():
    starts = torch.zeros(25, dtype=torch.bool)
    starts[[0, 7, 15]] = True
    ax = plot.plot_boundary_probabilities(torch.rand(25), gold_starts=starts, gold_label="planted")
    assert len(ax.patches) == 25
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["planted", "P(segment starts at t)"]
    assert sorted(line.get_xdata()[0] for line in ax.get_lines()) == [0, 7, 15]


def test_segmentations_as_rows_of_bars():
    seg = Segmentation.from_segments([[(0, 4, 1), (4, 10, 0)]], 10)
    ax = plot.plot_segmentations({"gold": [(0, 5, 1), (5, 10, 2)], "Viterbi": seg[0]}, num_labels=3)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Viterbi", "gold"]  # first row on top
    assert len(ax.collections) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["label 0", "label 1", "label 2"]


def test_benchmark_curves_skip_missing_points():
    ax = plot.plot_benchmark({"ours": ([10, 100], [0.1, 1.0]), "anchor": ([10, 100], [2.0, None])},
                             ylabel="seconds")
    lines = ax.get_lines()
    assert [len(line.get_xdata()) for line in lines] == [2, 1]
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "seconds"


@pytest.mark.parametrize("call, message", [
    (lambda: plot.plot_label_marginals(torch.rand(2, 5, 3)), "shape (T, C)"),
    (lambda: plot.plot_boundary_probabilities(torch.rand(5, 2)), "shape (T,)"),
    (lambda: plot.plot_label_marginals(torch.rand(5, 3), label_names=["a"]), "one name per label"),
    (lambda: plot.plot_segmentations({"x": [(0, 3, 4)]}, num_labels=3), "num_labels = 3"),
    (lambda: plot.plot_segmentations({}), "at least one row"),
    (lambda: plot.plot_segmentations({"x": Segmentation.from_segments([[(0, 2, 0)], [(0, 1, 0)]])}),
     "one sequence at a time"),
])
def test_wrong_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_without_matplotlib_the_error_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(plot.importlib, "import_module", missing)
    with pytest.raises(ImportError, match=re.escape('pip install "semiring-semicrf[plot]"')):
        plot.plot_label_marginals(torch.rand(5, 3))


def test_performance_figure_has_one_line_per_shape_and_marks_the_slow_anchors(tmp_path, monkeypatch):
    """benchmarks/plot_performance.py on the committed H100 run: per panel, one
    'ours' line per fixed (B, K, C) (T alone varies along it) and a '>60 s'
    mark where flash-semicrf was known to take over a minute."""
    import importlib.util
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    spec = importlib.util.spec_from_file_location("plot_performance", bench / "plot_performance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.load(str(bench / "gpu_bench_h100.json"))["results"]
    over = {(4, 10000, 100, 24): {"fwd_bwd": float("inf")}, (1, 100000, 64, 8): {"fwd_bwd": float("inf")}}
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect it
    path = module.plot_performance(results, str(tmp_path / "performance.png"), over)
    assert (tmp_path / "performance.png").stat().st_size > 20_000 and path.endswith("performance.png")
    axes = figures[0].axes
    assert [ax.get_title() for ax in axes] == ["forward", "forward+backward", "Viterbi"]
    shapes = {(r["shape"][0], r["shape"][2], r["shape"][3]) for r in results}
    for ax in axes:
        solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
        assert len(solid) == len(shapes)  # one line per (B, K, C)
        for line in solid:  # along a line only T varies, increasing
            xs = list(line.get_xdata())
            assert xs == sorted(xs) and len(set(xs)) == len(xs)
    texts = [t.get_text() for t in axes[1].texts]
    assert texts.count(">60 s") == 2 and not axes[0].texts
