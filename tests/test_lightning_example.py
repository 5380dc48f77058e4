"""examples/lightning_train.py shows Lightning's progress bar and logs its
metrics through the CSV logger under --root (its training itself is checked
in tests/test_ddp.py)."""
from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lightning_train.py"


def test_progress_bar_and_csv_metrics_under_root(tmp_path, capsys):
    pytest.importorskip("lightning")
    spec = importlib.util.spec_from_file_location("lightning_train_logging", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    result = example.main(["--epochs", "1", "--train-size", "16", "--val-size", "8", "--batch-size", "8",
                           "--max-length", "20", "--root", str(tmp_path)])
    out, err = capsys.readouterr()
    assert "Epoch 0: 100%" in out + err  # Lightning's progress bar
    metrics = tmp_path / "lightning_train" / "version_0" / "metrics.csv"
    assert f"logs in {metrics.parent}" in out and str(metrics) in out
    rows = list(csv.DictReader(metrics.open()))
    assert {"epoch", "train_loss", "val_f1"} <= set(rows[0])
    logged = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert logged and abs(logged[0] - result["train_loss_first"]) < 1e-4
