"""The `semicrf` command line (run in-process through `cli.main`, and once as
`python -m semiring_semicrf` to check the module entry point)."""
from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from semiring_semicrf import cli


def run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_module_entry_point_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "semiring_semicrf", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("demo", "bench", "info"):
        assert command in result.stdout


@pytest.mark.parametrize("argv, fragment", [
    ([], "required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["bench", "--size", "2,100"], "B,T,K,C"),
    (["bench", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["bench", "--repeat", "0"], "expected a positive integer"),
    (["demo", "--steps", "-3"], "expected a positive integer"),
])
def test_bad_usage_is_one_line_and_exit_code_2(capsys, argv, fragment):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("semicrf: error: ") and fragment in lines[0], err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    status, _, err = run(capsys, "bench", "--device", "cuda")
    assert status == 2 and err.count("\n") == 1 and "no CUDA device" in err


def test_failures_while_running_are_one_line_and_exit_code_1(capsys, monkeypatch):
    def broken(args):
        raise ValueError("scores must have shape (B, T, C)")
    monkeypatch.setattr(cli, "command_info", broken)
    status, _, err = run(capsys, "info")
    assert status == 1
    assert err == "semicrf: error: ValueError: scores must have shape (B, T, C)\n"


def test_info_prints_versions_devices_and_backends(capsys):
    status, out, _ = run(capsys, "info")
    assert status == 0
    for fragment in ("semiring-semicrf", "torch", "cpu:", "backend='auto' picks", "KMax(k)", "generic scan"):
        assert fragment in out
    rows = cli.backend_rows(["cpu"])
    assert ("Log", "(C, C) transition", "cpu", "torch (Log forward-backward)") == rows[0]
    assert ("Max", "(C, C) transition", "cpu", "reference (Viterbi sweep)") in rows


def test_progress_bar_counts_steps():
    stream = io.StringIO()
    bar = cli.ProgressBar(4, stream=stream, width=8)
    for i in range(4):
        bar.step(f"case {i}")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[--------] 0/4 case 0"
    assert lines[2] == "[####----] 2/4 case 2"


def test_format_table_aligns_numbers_right_and_text_left():
    table = cli.format_table(["name", "ms"], [("ours", "1.5"), ("torch-struct", "120.0")])
    assert table.splitlines() == [
        "name             ms",
        "------------  -----",
        "ours            1.5",
        "torch-struct  120.0",
    ]


def test_bench_prints_a_table_with_agreeing_anchors(capsys):
    status, out, err = run(capsys, "bench", "--device", "cpu", "--size", "2,30,4,3", "--repeat", "1", "--anchors")
    assert status == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("B "))
    rows = [line.split() for line in lines if line.startswith("2 ")]
    assert [row[4] for row in rows] == ["forward", "forward+backward", "viterbi"]
    if "max rel. diff" in header:  # anchors installed: every one agrees with us
        assert all(float(row[-1]) < 1e-4 for row in rows), out
    assert re.search(r"^\[[#-]+\] 0/(3|6|9) ours forward B=2 T=30", err, re.M), err  # progress on stderr


def test_bench_skips_pytorch_struct_when_its_charts_would_be_huge(capsys):
    import torch

    problem = cli.BenchProblem("forward", 1, 10_000, 32, 24, "cpu", torch.float32)
    assert cli._torch_struct(problem) is None


def test_demo_writes_its_plots_and_says_where(capsys, tmp_path):
    status, out, err = run(capsys, "demo", "--out", str(tmp_path), "--steps", "5")
    assert status == 0, err
    pngs = sorted(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 10_000 for p in pngs)
    for fragment in ("log Z", "Viterbi", "top-1", "sample 1", "entropy", "Segment F1"):
        assert fragment in out
    assert f"plot(s) in {tmp_path}: " in out and pngs[0].name in out.splitlines()[-1]
