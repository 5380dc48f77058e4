"""Data-parallel training of `SemiMarkovCRFHead` over NCCL, one process per GPU.

    torchrun --nproc_per_node 2 examples/ddp_train.py --out DIR   # two GPUs
    torchrun --nproc_per_node 1 examples/ddp_train.py --out DIR   # one GPU (or: python examples/ddp_train.py)
    python3 -u examples/ddp_train.py --check --out DIR            # the whole check: 1 GPU, 2 GPUs, Lightning on 2

Each process takes the GPU of its local rank and an equal shard of every
global batch of the built-in synthetic data (semiring_semicrf.synthetic); the
loss is the mean negative log-likelihood over the shard, and
DistributedDataParallel averages the gradients over the processes, which is
the gradient of the mean over the concatenated batch.

What one run prints (rank 0), and writes to `DIR/ddp_train_<N>.json`:

1. the gradient agreement: after the first backward, every parameter's
   DDP-averaged gradient against one process's gradient on the whole global
   batch (the concatenation of the shards) on its own GPU, in float32, as
   the relative error `||g_ddp - g_one|| / ||g_one||`; the run fails above
   `--tolerance` (1e-5);
2. the throughput of `--steps` timed training steps (Adam) after
   `--warmup` steps: sequences/s and positions/s (summed lengths) of the
   whole job, with every process on its own shard;
3. the training loss of the first and last step and the segment F1 of the
   Viterbi decoding on held-out sequences.

`--check` runs the 1-process and the 2-process jobs through torchrun (logs
in `DIR/ddp_train_<N>.log`), then `examples/lightning_train.py --devices 2
--strategy ddp` (log in `DIR/lightning_2.log`, its CSV metrics copied to
`DIR/lightning_metrics.csv`), and prints a table of 1 GPU against 2 last.
It keeps NVLink multicast off in the processes it starts
(`NCCL_NVLS_ENABLE=0` unless already set: the gradients are a few KiB).
`--cpu` runs everything on the CPU over gloo instead (tests).

The script imports the installed package (`pip install .`: the Triton
kernels ship inside it as `semiring_semicrf.kernels`); it prints the rung
that runs the Log sweeps (`triton` on GPUs, unless the kernels are missing).
"""
from __future__ import annotations

import argparse
import csv
import faulthandler
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from semiring_semicrf import backends
from semiring_semicrf.nn import SemiMarkovCRFHead
from semiring_semicrf.synthetic import make_synthetic, segment_f1

HERE = os.path.dirname(os.path.abspath(__file__))
LIGHTNING_EXAMPLE = os.path.join(HERE, "lightning_train.py")
#: Kept set in every process the check starts (never unset, never overridden).
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
WORLD_SIZES = (1, 2)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="run 1 and 2 processes (and Lightning), print a table")
    parser.add_argument("--cpu", action="store_true", help="CPU processes over gloo instead of GPUs over NCCL")
    parser.add_argument("--out", default=None, help="folder for the results (JSON) and, with --check, the logs")
    parser.add_argument("--batch-size", type=int, default=128, help="sequences per process and step")
    parser.add_argument("--batches", type=int, default=4, help="distinct global batches, cycled over the steps")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=10, help="training steps before the timed ones")
    parser.add_argument("--num-classes", type=int, default=8)
    parser.add_argument("--max-duration", type=int, default=16)
    parser.add_argument("--hidden-dim", type=int, default=32)
    parser.add_argument("--min-length", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest relative gradient error allowed")
    parser.add_argument("--no-lightning", action="store_true", help="--check: skip the Lightning run")
    parser.add_argument("--lightning-epochs", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=150, help="--check: seconds allowed to each run")
    args = parser.parse_args(argv)
    for name in ("batch_size", "batches", "steps", "val_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# -- one process of the job ------------------------------------------------------------------------------------
def init_process_group(cpu: bool) -> torch.device:
    """Join the job (torchrun's environment, or a job of one process when
    started without it); the process's device."""
    if "RANK" not in os.environ:  # started without torchrun: a job of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    if cpu or not torch.cuda.is_available():
        dist.init_process_group("gloo")
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    return device


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_head(args) -> SemiMarkovCRFHead:
    """The same head in every process: small random structure scores, so
    that every gradient is exercised from the first step."""
    torch.manual_seed(args.seed)
    head = SemiMarkovCRFHead(args.num_classes, args.max_duration, args.hidden_dim)
    with torch.no_grad():
        for p in (head.transition, head.duration, head.start, head.end):
            p.normal_(std=0.1)
    return head


class Shards:
    """The global batches of the job on this process's device: batch `i`
    holds sequences `[i * W * B, (i + 1) * W * B)` of one synthetic draw
    (W processes, B = `--batch-size`), process `r` its `r`-th block of B."""

    def __init__(self, args, world: int, rank: int, device: torch.device):
        sizes = dict(num_classes=args.num_classes, max_duration=args.max_duration, hidden_dim=args.hidden_dim,
                     min_length=args.min_length, max_length=args.max_length)
        per_batch = world * args.batch_size
        self.data = make_synthetic(args.batches * per_batch, seed=args.seed, **sizes)
        self.validation = make_synthetic(args.val_size, seed=args.seed + 1, **sizes)
        self.device, self.per_batch, self.count = device, per_batch, args.batches
        lo, hi = rank * args.batch_size, (rank + 1) * args.batch_size
        self.local = [self.batch(i, slice(lo, hi)) for i in range(args.batches)]
        #: Positions (summed lengths) of each global batch, over every process.
        self.positions = [int(self.data.lengths[i * per_batch:(i + 1) * per_batch].sum()) for i in range(args.batches)]

    def batch(self, i: int, part: slice = slice(None)) -> tuple:
        """`(hidden, lengths, segmentation)` of part of global batch `i`, on the device."""
        index = range(i * self.per_batch, (i + 1) * self.per_batch)[part]
        d = self.data[slice(index.start, index.stop)]
        return d.hidden.to(self.device), d.lengths.to(self.device), d.segmentation.to(self.device)


def nll(model, hidden, lengths, segmentation) -> torch.Tensor:
    """The mean negative log-likelihood of the gold segmentations."""
    return -model(hidden, lengths).log_prob(segmentation).mean()


def gradient_agreement(model: DistributedDataParallel, shards: Shards, args) -> dict:
    """One DDP backward on this process's shard of global batch 0 against
    one process's backward on the whole batch (on this process's device),
    from the same parameters; the relative error of every gradient (the
    largest over the processes)."""
    single = fresh_head(args).to(shards.device)
    single.load_state_dict(model.module.state_dict())
    model.zero_grad(set_to_none=True)
    loss = nll(model, *shards.local[0])
    loss.backward()
    whole = nll(single, *shards.batch(0))
    whole.backward()
    errors = {}
    for (name, p), q in zip(model.module.named_parameters(), single.parameters()):
        assert p.grad is not None and q.grad is not None, name  # every parameter enters the loss
        errors[name] = float((p.grad - q.grad).norm() / q.grad.norm())
    worst = torch.tensor(list(errors.values()), dtype=torch.float64, device=shards.device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    errors = dict(zip(errors, worst.tolist()))
    job_loss = loss.detach().clone()
    dist.all_reduce(job_loss)
    return {"relative_error": errors, "max_relative_error": max(errors.values()), "tolerance": args.tolerance,
            "ok": max(errors.values()) <= args.tolerance, "loss_ddp": float(job_loss) / dist.get_world_size(),
            "loss_one_process": float(whole)}


def train_step(model, optimizer, batch) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = nll(model, *batch)
    loss.backward()
    optimizer.step()
    return loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()


def train(args) -> dict:
    """One process of the job (see the module docstring); rank 0 returns and
    writes the results."""
    device = init_process_group(args.cpu)
    rank = dist.get_rank()
    torch.set_float32_matmul_precision("highest")  # float32 products in float32 (no TF32): the check is 1e-5
    try:
        result = train_in_group(args, device)
    finally:
        # The DDP model (its C++ Reducer holds the process group) is freed, cycles included, while the group is
        # still registered. Freed after `destroy_process_group`, the Reducer would drop the group's last
        # reference with the GIL held; gloo's destructor joins its worker threads, and a worker destroying a
        # finished all-reduce waits for the GIL: the job hangs after writing its results (torch 2.13).
        gc.collect()
        dist.destroy_process_group()
    if not result["gradient_check"]["ok"]:
        raise SystemExit(f"rank {rank}: gradients disagree beyond {args.tolerance}")
    return result


def train_in_group(args, device: torch.device) -> dict:
    """`train`'s work inside the process group; the DDP model dies on return."""
    rank, world = dist.get_rank(), dist.get_world_size()
    shards = Shards(args, world, rank, device)
    model = DistributedDataParallel(fresh_head(args).to(device),
                                    device_ids=[device.index] if device.type == "cuda" else None)
    hidden, lengths, _ = shards.local[0]
    rung = backends.resolve(model.module.backend, model.module(hidden, lengths).potentials)
    check = gradient_agreement(model, shards, args)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    optimizer.step()  # step 0 on the gradients just checked
    for step in range(1, 1 + args.warmup):
        loss = train_step(model, optimizer, shards.local[step % shards.count])
    synchronize(device)
    started = time.perf_counter()
    timed = [step % shards.count for step in range(1 + args.warmup, 1 + args.warmup + args.steps)]
    for i in timed:
        loss = train_step(model, optimizer, shards.local[i])
    synchronize(device)
    seconds = time.perf_counter() - started
    sequences, positions = len(timed) * shards.per_batch, sum(shards.positions[i] for i in timed)
    last_loss = loss.detach().clone()
    dist.all_reduce(last_loss)
    result = {
        "processes": world, "backend": dist.get_backend(), "log_sweeps": rung,
        "devices": [torch.cuda.get_device_name(device)] * world if device.type == "cuda" else ["cpu"] * world,
        "sizes": {k: getattr(args, k) for k in ("batch_size", "batches", "steps", "warmup", "num_classes",
                                                 "max_duration", "hidden_dim", "min_length", "max_length")},
        "gradient_check": check,
        "seconds": seconds, "sequences_per_s": sequences / seconds, "positions_per_s": positions / seconds,
        "step_ms": 1e3 * seconds / args.steps,
        "loss_first": check["loss_ddp"], "loss_last": float(last_loss) / world,
    }
    if rank == 0:
        result["val_f1"] = validation_f1(model.module, shards)
        report(result, args.out)
    dist.barrier()
    return result


@torch.no_grad()
def validation_f1(head: SemiMarkovCRFHead, shards: Shards) -> float:
    v = shards.validation
    predicted = head.decode(v.hidden.to(shards.device), v.lengths.to(shards.device))
    return segment_f1(predicted, v.segmentation.to(shards.device))


def report(result: dict, out) -> None:
    check, world = result["gradient_check"], result["processes"]
    unit = "process" if world == 1 else "processes"
    print(f"{world} {unit} ({result['backend']}, {result['devices'][0]}), {result['sizes']['batch_size']} "
          f"sequences per process and step; the Log sweeps on the {result['log_sweeps']} rung")
    print(f"gradient agreement, DDP on {world} {unit} vs one process on the concatenated batch "
          f"(float32, relative error per parameter):")
    for name, error in check["relative_error"].items():
        print(f"  {name:<18} {error:.2e}")
    print(f"  largest {check['max_relative_error']:.2e} (tolerance {check['tolerance']:.0e}): "
          f"{'ok' if check['ok'] else 'FAILED'}; loss {check['loss_ddp']:.6f} vs {check['loss_one_process']:.6f}")
    print(f"throughput over {result['sizes']['steps']} steps: {result['sequences_per_s']:.1f} sequences/s, "
          f"{result['positions_per_s']:.4g} positions/s ({result['step_ms']:.2f} ms/step)")
    print(f"training loss {result['loss_first']:.4f} -> {result['loss_last']:.4f}; "
          f"validation segment F1 {result['val_f1']:.3f}", flush=True)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"ddp_train_{world}.json"), "w") as f:
            json.dump(result, f, indent=2)


# -- the check: 1 process, 2 processes, Lightning -------------------------------------------------------------
def child_environment() -> dict:
    env = dict(os.environ)
    for name, value in MULTICAST_OFF.items():
        env.setdefault(name, value)
    return env


def run_logged(command: list, log_path: str, timeout: float) -> int:
    """Run `command`, its output to `log_path`; its exit status (124 on
    timeout, after a SIGTERM that torchrun and Lightning pass on to their
    workers)."""
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_environment())
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            status = 124
    print(f"  exit {status} after {time.perf_counter() - started:.0f} s; log {log_path}", flush=True)
    if status != 0:
        with open(log_path) as log:
            print("".join(log.readlines()[-30:]), flush=True)
    return status


def worker_arguments(args) -> list:
    names = ("batch_size", "batches", "steps", "warmup", "num_classes", "max_duration", "hidden_dim", "min_length",
             "max_length", "val_size", "lr", "seed", "tolerance")
    out = [f"--{n.replace('_', '-')}={getattr(args, n)}" for n in names]
    return out + (["--cpu"] if args.cpu else [])


def lightning_run(args, out: str) -> dict:
    """`lightning_train.py --devices 2 --strategy ddp`: its exit status and
    its first/last training loss and last validation F1 (from its CSV log)."""
    root = tempfile.mkdtemp(prefix="lightning_")
    command = [sys.executable, LIGHTNING_EXAMPLE, "--devices", "2", "--strategy", "ddp", "--epochs",
               str(args.lightning_epochs), "--root", root]
    status = run_logged(command, os.path.join(out, "lightning_2.log"), args.timeout)
    result = {"command": " ".join([os.path.relpath(LIGHTNING_EXAMPLE), *command[2:-2]]), "exit": status}
    metrics = os.path.join(root, "lightning_train", "version_0", "metrics.csv")
    if os.path.exists(metrics):
        shutil.copy(metrics, os.path.join(out, "lightning_metrics.csv"))
        with open(metrics) as f:
            rows = list(csv.DictReader(f))
        losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
        scores = [float(r["val_f1"]) for r in rows if r.get("val_f1")]
        result.update(train_loss_first=losses[0] if losses else None, train_loss_last=losses[-1] if losses else None,
                      val_f1=scores[-1] if scores else None)
    shutil.rmtree(root, ignore_errors=True)
    return result


def check(args) -> int:
    """1 process, then 2 (through torchrun), then Lightning on 2; a table last."""
    out = args.out or tempfile.mkdtemp(prefix="ddp_check_")
    os.makedirs(out, exist_ok=True)
    available = (os.cpu_count() or 1) if args.cpu else torch.cuda.device_count()
    print(f"{'CPU processes over gloo' if args.cpu else f'{available} GPU(s) over NCCL'}; results under {out}",
          flush=True)
    results: dict = {}
    statuses: dict = {}  # exit status of each job (None: not run)
    for world in WORLD_SIZES:
        if world > available:
            print(f"{world} processes: not run ({available} device(s))", flush=True)
            statuses[world] = None
            continue
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                   os.path.abspath(__file__), f"--out={out}", *worker_arguments(args)]
        path = os.path.join(out, f"ddp_train_{world}.json")
        if os.path.exists(path):
            os.remove(path)  # a result from an earlier run must not stand for this one
        statuses[world] = run_logged(command, os.path.join(out, f"ddp_train_{world}.log"), args.timeout)
        if os.path.exists(path):  # written by rank 0 also when the gradient check fails
            with open(path) as f:
                results[world] = json.load(f)
            report(results[world], None)
    lightning = None
    if not args.no_lightning and available >= 2:
        lightning = lightning_run(args, out)
    print(table(results, statuses, lightning, args.cpu))
    ok = all(s == 0 for s in statuses.values()) and (lightning is None or lightning["exit"] == 0)
    return 0 if ok and len(results) == len(WORLD_SIZES) else 1


def table(results: dict, statuses: dict, lightning, cpu: bool) -> str:
    """1 process against 2: throughput, gradient agreement, training."""
    worlds = list(statuses)
    names = {w: f"{w} CPU process{'es' if w > 1 else ''}" if cpu else f"{w} GPU{'s' if w > 1 else ''}" for w in worlds}
    cells = {w: results.get(w) for w in worlds}

    def row(label, fmt):
        values = [fmt(cells[w]) if cells[w] else ("not run" if statuses[w] is None else f"failed ({statuses[w]})")
                  for w in worlds]
        return f"| {label} | " + " | ".join(values) + " |"

    base = cells.get(1)
    lines = ["", "| data parallel | " + " | ".join(names[w] for w in worlds) + " |",
             "|---|" + "---|" * len(worlds),
             row("sequences/s", lambda r: f"{r['sequences_per_s']:,.1f}"
                 + (f" (x{r['sequences_per_s'] / base['sequences_per_s']:.2f})" if base and r is not base else "")),
             row("positions/s", lambda r: f"{r['positions_per_s']:,.0f}"),
             row("ms per step", lambda r: f"{r['step_ms']:.2f}"),
             row("sequences per step", lambda r: f"{r['processes'] * r['sizes']['batch_size']}"),
             row("Log sweeps on", lambda r: r["log_sweeps"]),
             row("gradient rel. error vs 1 process", lambda r: f"{r['gradient_check']['max_relative_error']:.1e}"
                 f" ({'ok' if r['gradient_check']['ok'] else 'FAILED'})"),
             row("loss first -> last", lambda r: f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}"),
             row("validation F1", lambda r: f"{r['val_f1']:.3f}")]
    if lightning is not None:
        def number(key):
            return "-" if lightning.get(key) is None else f"{lightning[key]:.3f}"
        lines.append(f"\nLightning (`{lightning['command']}`): exit {lightning['exit']}; training loss "
                     f"{number('train_loss_first')} -> {number('train_loss_last')}; validation F1 {number('val_f1')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    if args.check:
        return check(args)
    # A worker stopped by torchrun (the check's timeout sends SIGTERM) writes every thread's stack to its log
    # first: on a loaded 2-core machine a 2-process gloo job has hung after writing its results, cause unknown.
    faulthandler.register(signal.SIGTERM, chain=True, all_threads=True)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
