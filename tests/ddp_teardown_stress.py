"""Spawn the DDP test's two gloo ranks many times and count the jobs that hang.

    python tests/ddp_teardown_stress.py --runs 30
    git show d00c7f4:tests/test_ddp.py > /tmp/old_ddp.py && python tests/ddp_teardown_stress.py --module /tmp/old_ddp.py

Each job runs `_rank_main` of the module (default: tests/test_ddp.py) in two
spawned processes; one that has not ended after `--limit` seconds counts as
a hang and is killed. Before the teardown fix (d00c7f4) 4 of 30 jobs hung on
a 2-core machine, after it 0 of 30: the deadlock of gloo's destructor that
held CI until its limit (see `_rank_main`).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

import torch.multiprocessing as mp


def load(path: str):
    """The module at `path`, imported by name so that spawned processes can unpickle its functions."""
    sys.path.insert(0, str(Path(path).resolve().parent))
    return importlib.import_module(Path(path).stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", default=str(Path(__file__).with_name("test_ddp.py")))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--limit", type=float, default=60.0, help="seconds before a job counts as hung")
    args = parser.parse_args()
    module, hangs = load(args.module), 0
    for run in range(args.runs):
        job = mp.start_processes(module._rank_main, args=(module.free_port(), tempfile.mkdtemp()), nprocs=2,
                                 join=False, start_method="spawn")
        started = time.monotonic()
        try:
            while not job.join(timeout=1):
                if time.monotonic() - started > args.limit:
                    hangs += 1
                    for process in job.processes:
                        process.kill()
                    break
        except mp.ProcessExitedException as exc:  # a rank that failed (not hung): say so, go on
            print(f"job {run}: {exc}", flush=True)
        print(f"job {run}: {time.monotonic() - started:.1f} s, {hangs} hung so far", flush=True)
    print(f"{args.module}: {hangs} of {args.runs} jobs hung")


if __name__ == "__main__":
    main()
