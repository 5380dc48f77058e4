"""The `semicrf` command line (run in-process through `cli.main`, and once as
`python -m semiring_semicrf` to check the module entry point)."""
from __future__ import annotations

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
    (["--frob"], "unrecognized arguments: --frob"),
    (["--frob", "info"], "unrecognized arguments: --frob"),
    (["demo", "--frob"], "unrecognized arguments: --frob"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["bench", "--size", "2,100"], "B,T,K,C"),
    (["bench", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["bench", "--repeat", "0"], "expected a positive integer"),
    (["demo", "--steps", "-3"], "expected a positive integer"),
    (["bench", "--threads", "0"], "expected a positive integer"),
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
    assert err == ("semicrf: error: ValueError: scores must have shape (B, T, C) "
                   "(run with --debug for the traceback)\n")


def test_debug_prints_the_traceback_of_a_failure(capsys, monkeypatch):
    def broken(args):
        raise ValueError("scores must have shape (B, T, C)")
    monkeypatch.setattr(cli, "command_info", broken)
    status, _, err = run(capsys, "--debug", "info")
    assert status == 1
    assert err.startswith("Traceback (most recent call last):") and 'in broken' in err
    assert err.endswith("semicrf: error: ValueError: scores must have shape (B, T, C)\n")


def test_version_is_the_installed_metadata(capsys):
    import importlib.metadata

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"semicrf {importlib.metadata.version('semiring-semicrf')}\n"


def test_info_prints_versions_devices_and_backends(capsys):
    status, out, _ = run(capsys, "info")
    assert status == 0
    for fragment in ("semiring-semicrf", "torch", "cpu:", "backend='auto' picks", "KMax(k)", "generic scan"):
        assert fragment in out
    rows = cli.backend_rows(["cpu"])
    assert rows[0] == ("Log", "(C, C) transition", "cpu", "torch (Log forward-backward)")
    assert ("Max", "(C, C) transition", "cpu", "reference (Viterbi sweep)") in rows


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
    # progress on stderr, one step per call: a warm-up and one timed call per method and op
    counts = {int(m.group(2)) for m in re.finditer(r"(\d+)/(\d+) \[", err)}
    assert counts <= {6, 12, 18} and len(counts) == 1, err
    assert "ours forward B=2 T=30 K=4 C=3" in err and "call/s" in err, err


def test_bench_times_the_other_queries(capsys):
    """--ops takes the other queries (never timed by default): each gets its row, a time or why it cannot run."""
    import json

    queries = ["sample", "topk", "entropy", "cross-entropy", "kl", "double-backward"]
    status, out, err = run(capsys, "bench", "--device", "cpu", "--size", "1,8,3,2", "--repeat", "1",
                           "--ops", *queries, "--json", "--no-progress")
    assert status == 0 and err == "", err
    cases = json.loads(out)["cases"]
    assert [case["op"] for case in cases] == queries
    for case in cases:
        ours = case["methods"]["ours"]
        assert "median_s" in ours or ours["skipped"].startswith("error: "), case


def test_bench_json_and_threads(capsys):
    import json

    import torch

    threads = torch.get_num_threads()
    try:
        status, out, err = run(capsys, "bench", "--device", "cpu", "--size", "1,20,3,2", "--repeat", "2",
                               "--ops", "forward", "viterbi", "--threads", "1", "--json", "--no-progress")
    finally:
        torch.set_num_threads(threads)
    assert status == 0 and err == "", err
    report = json.loads(out)
    assert report["threads"] == 1 and report["repeat"] == 2 and report["device"] == "cpu"
    assert [case["op"] for case in report["cases"]] == ["forward", "viterbi"]
    for case in report["cases"]:
        assert (case["B"], case["T"], case["K"], case["C"]) == (1, 20, 3, 2)
        ours = case["methods"]["ours"]
        assert len(ours["times_s"]) == 2 and ours["median_s"] > 0


def test_a_skipped_case_still_advances_the_progress_by_its_calls():
    class Counter:
        n = 0

        def update(self, k):
            self.n += k

    import torch

    progress = Counter()
    problem = cli.BenchProblem("forward", 1, 10_000, 32, 24, "cpu", torch.float32)
    entry, result = cli._measure(cli._torch_struct, problem, 3, progress)
    assert entry == {"skipped": "too big"} and result is None and progress.n == 4


def test_bench_skips_pytorch_struct_when_its_charts_would_be_huge(capsys):
    import torch

    problem = cli.BenchProblem("forward", 1, 10_000, 32, 24, "cpu", torch.float32)
    assert cli._torch_struct(problem) is None


def test_demo_writes_its_plots_and_says_where(capsys, tmp_path):
    from semiring_semicrf import demo

    status, out, err = run(capsys, "demo", "--out", str(tmp_path), "--steps", "5")
    assert status == 0, err
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(demo.PLOTS) and all((tmp_path / p).stat().st_size > 10_000 for p in pngs)
    for fragment in ("log Z", "Viterbi", "top-1", "sample 1", "entropy", "Segment F1"):
        assert fragment in out
    assert f"{len(pngs)} plot(s) in {tmp_path}: {', '.join(pngs)}" == out.splitlines()[-1]


def test_demo_options_are_defined_once():
    from semiring_semicrf import demo

    standalone = demo.add_arguments(__import__("argparse").ArgumentParser()).parse_args([])
    subcommand = cli.parse_args(["demo"])
    assert {k: v for k, v in vars(subcommand).items() if k not in ("command", "run", "debug")} == vars(standalone)


def test_demo_without_matplotlib_says_how_to_install_it(capsys, monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr("importlib.import_module", lambda name: no_matplotlib(name))
    status, out, err = run(capsys, "demo", "--out", str(tmp_path), "--steps", "5")
    assert status == 1 and out == "" and not list(tmp_path.iterdir())
    assert "plotting needs matplotlib" in err and "semiring-semicrf[plot]" in err, err
