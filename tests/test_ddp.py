"""Data-parallel training of `SemiMarkovCRFHead` on existing engines.

- `torch.nn.parallel.DistributedDataParallel`, two CPU processes (gloo,
  `torch.multiprocessing.spawn`, a free localhost port): each rank takes an
  equal shard of one batch; the loss is a mean over the shard and DDP
  averages gradients over ranks, so the synced gradients (and the
  parameters after SGD steps) equal single-process training on the
  concatenated batch.
- The PyTorch Lightning example (`examples/lightning_train.py`), when
  Lightning is installed.
- The data-parallel example (`examples/ddp_train.py`, NCCL on GPUs; here
  its `--cpu` mode, gloo): its check of 1 and 2 processes through torchrun
  (gradients against one process on the concatenated batch, throughput
  table), and one process without torchrun. Its GPU run is the lead's
  (docs/multi_gpu.md).
"""
from __future__ import annotations

import faulthandler
import gc
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from semiring_semicrf.nn import SemiMarkovCRFHead
from semiring_semicrf.segmentation import Segmentation
from semiring_semicrf.synthetic import make_synthetic

WORLD = 2
PER_RANK = 3
STEPS = 3
LR = 0.5
RANK_TIMEOUT_S = 300
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lightning_train.py"


def data():
    """One batch of `WORLD * PER_RANK` sequences of different lengths (float64)."""
    d = make_synthetic(WORLD * PER_RANK, num_classes=3, max_duration=6, hidden_dim=5, min_length=9, max_length=20,
                       seed=3)
    return d.hidden.double(), d.lengths, d.segmentation


def fresh_head() -> SemiMarkovCRFHead:
    torch.manual_seed(0)
    head = SemiMarkovCRFHead(3, 6, 5).double()
    with torch.no_grad():  # non-zero transitions/durations so that every gradient is exercised
        for p in (head.transition, head.duration, head.start, head.end):
            p.normal_()
    return head


def train(model, hidden, lengths, segmentation, record):
    """`STEPS` SGD steps on the mean NLL; `record(step, model)` after each backward."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = -model(hidden, lengths).log_prob(segmentation).mean()
        loss.backward()
        record(step, model)
        optimizer.step()


def _train_rank(rank: int, out_dir: str) -> None:
    """Train this rank's shard and save its gradients and parameters; the DDP model dies on return."""
    hidden, lengths, segmentation = data()
    shard = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    model = DistributedDataParallel(fresh_head())
    grads = []
    train(model, hidden[shard], lengths[shard], segmentation[shard],
          lambda step, m: grads.append({n: p.grad.clone() for n, p in m.module.named_parameters()}))
    params = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    torch.save({"grads": grads, "params": params}, os.path.join(out_dir, f"rank{rank}.pt"))


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    # A rank that hangs writes every thread's stack to stderr and exits, so that the spawn fails instead of
    # waiting forever (a CI run hung here once: see the `finally` below).
    faulthandler.dump_traceback_later(RANK_TIMEOUT_S, exit=True)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        _train_rank(rank, out_dir)
    finally:
        # The DDP model (its C++ Reducer holds the process group) must be freed while the group is still
        # registered. Freed after `destroy_process_group`, the Reducer drops the group's last reference with the
        # GIL held, the gloo destructor joins its worker threads, and a worker that is destroying a finished
        # all-reduce waits for the GIL: a deadlock (torch 2.13, seen in CI). Freed here, the group dies in
        # `destroy_process_group`, whose binding releases the GIL.
        gc.collect()
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo")
def test_ddp_gradients_equal_single_process_training_on_the_concatenated_batch(tmp_path):
    mp.spawn(_rank_main, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    hidden, lengths, segmentation = data()
    single_grads = []
    head = fresh_head()
    train(head, hidden, lengths, segmentation,
          lambda step, m: single_grads.append({n: p.grad.clone() for n, p in m.named_parameters()}))

    names = [n for n, _ in head.named_parameters()]
    assert set(names) == {"transition", "duration", "start", "end", "projection.weight", "projection.bias"}
    for step in range(STEPS):
        for name in names:
            # every rank holds the same averaged gradient ...
            torch.testing.assert_close(ranks[1]["grads"][step][name], ranks[0]["grads"][step][name], rtol=0, atol=0)
            # ... which is the full batch's gradient (sums in another order: float64 rounding only)
            torch.testing.assert_close(ranks[0]["grads"][step][name], single_grads[step][name],
                                       rtol=1e-10, atol=1e-12, msg=f"step {step}, {name}")
            assert single_grads[step][name].abs().max() > 0, name
    for name, value in head.named_parameters():
        torch.testing.assert_close(ranks[0]["params"][name], value.detach(), rtol=1e-10, atol=1e-12)


def test_shards_are_a_partition_of_the_batch():
    """The comparison above is only meaningful if the shards cover the batch once."""
    hidden, lengths, segmentation = data()
    parts = [segmentation[slice(r * PER_RANK, (r + 1) * PER_RANK)] for r in range(WORLD)]
    joined = Segmentation(torch.cat([p.labels for p in parts]), torch.cat([p.starts for p in parts]),
                          torch.cat([p.lengths for p in parts]))
    assert joined.equal(segmentation) and len(set(lengths.tolist())) > 1


# -- PyTorch Lightning ----------------------------------------------------------------------------------------
def load_example():
    spec = importlib.util.spec_from_file_location("lightning_train", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["lightning_train"] = module
    spec.loader.exec_module(module)
    return module


def test_lightning_example_trains_the_head(tmp_path):
    pytest.importorskip("lightning")
    example = load_example()
    result = example.main(["--epochs", "4", "--train-size", "64", "--val-size", "16", "--batch-size", "16",
                           "--max-length", "40", "--root", str(tmp_path)])
    assert result["train_loss_last"] < result["train_loss_first"], result
    assert result["val_f1"] > 0.5, result


def test_lightning_example_takes_ddp_with_several_devices():
    pytest.importorskip("lightning")
    example = load_example()
    assert example.parse(["--devices", "2"]).strategy == "ddp"
    assert example.parse([]).strategy == "auto"
    assert example.parse(["--devices", "2", "--strategy", "ddp_spawn"]).strategy == "ddp_spawn"


# -- examples/ddp_train.py (NCCL on GPUs; here gloo on CPU processes) -------------------------------------------
DDP_EXAMPLE = EXAMPLE.parent / "ddp_train.py"
TINY = ["--cpu", "--batch-size", "3", "--batches", "2", "--steps", "2", "--warmup", "1", "--num-classes", "3",
        "--max-duration", "5", "--hidden-dim", "6", "--min-length", "9", "--max-length", "20", "--val-size", "4"]


def run_ddp_example(*args, timeout=900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(DDP_EXAMPLE), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_ddp_example_check_runs_one_and_two_processes_and_their_gradients_agree(tmp_path):
    # The 2-process gloo job once hung now and then after its workers had written their results: the gloo
    # teardown deadlock that `train` now avoids (see its `finally`). Should a worker hang again, the check's
    # timeout stops torchrun and the worker writes every thread's stack to its log (faulthandler on SIGTERM),
    # whose end the failure message shows.
    run = run_ddp_example("--check", "--no-lightning", "--timeout", "240", "--out", str(tmp_path), *TINY)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = run.stdout.strip().splitlines()[-10:]
    assert table[0] == "| data parallel | 1 CPU process | 2 CPU processes |", run.stdout
    assert any(line.startswith("| sequences/s |") and "(x" in line for line in table)
    for world in (1, 2):
        result = json.loads((tmp_path / f"ddp_train_{world}.json").read_text())
        assert result["processes"] == world and result["backend"] == "gloo" and result["log_sweeps"] == "torch"
        check = result["gradient_check"]
        assert check["ok"] and check["max_relative_error"] <= 1e-5, check
        assert set(check["relative_error"]) == {"transition", "duration", "start", "end", "projection.weight",
                                                "projection.bias"}
        assert result["sequences_per_s"] > 0 and result["positions_per_s"] > result["sequences_per_s"]
        assert (tmp_path / f"ddp_train_{world}.log").stat().st_size > 0
    assert "gradient agreement, DDP on 2 processes" in run.stdout


def test_ddp_example_runs_as_one_process_without_torchrun(tmp_path):
    run = run_ddp_example("--out", str(tmp_path), *TINY)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads((tmp_path / "ddp_train_1.json").read_text())["gradient_check"]["ok"]
    assert "throughput over 2 steps" in run.stdout


def test_ddp_example_table_marks_runs_that_failed_or_did_not_run():
    spec = importlib.util.spec_from_file_location("ddp_train", DDP_EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    text = example.table({}, {1: 1, 2: None}, {"command": "lightning_train.py --devices 2", "exit": 1}, cpu=False)
    assert "| data parallel | 1 GPU | 2 GPUs |" in text
    assert "| sequences/s | failed (1) | not run |" in text
    assert "Lightning (`lightning_train.py --devices 2`): exit 1" in text
