"""The plotting helpers the docs and notebooks use: labelled axes, legends,
the right number of drawn items, clear errors for wrong shapes."""
from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from semiring_semicrf import plot  # noqa: E402
from semiring_semicrf.segmentation import Segmentation  # noqa: E402


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
