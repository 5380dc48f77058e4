"""Every Triton kernel the public API launches compiles for an sm_90 GPU.

CI has no GPU: the kernels' other tests run through Triton's interpreter,
which skips the compiler's checks. Here the queries run once more under the
interpreter with their launches recorded (tests/kernel_compile.py), and a
process without the interpreter compiles each recorded launch (its argument
types, constexprs and warps) through Triton's compiler for compute
capability 9.0. A kernel that only the compiler rejects (a name whose type
changes through a loop, once) fails here, not on the first GPU it meets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from kernel_compile import recorded_launches  # noqa: E402
from test_kernels import converted, random_problem  # noqa: E402

from semiring_semicrf import KMaxSemiring, SemiMarkovDistribution, semimarkov_scan  # noqa: E402
from semiring_semicrf.autograd import log_partition  # noqa: E402
from semiring_semicrf.decoding import topk, viterbi  # noqa: E402
from semiring_semicrf.kernels import storage_copy  # noqa: E402
from semiring_semicrf.sampling import sample  # noqa: E402

HERE = Path(__file__).resolve().parent
pytestmark = [
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or torch.cuda.is_available(),
                       reason="records launches through Triton's interpreter (CPU CI); a GPU compiles them anyway"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


def leaves(p):
    p = converted(p, "cpu", torch.float32)
    return p.replace(**{n: t.clone().requires_grad_(True) for n, t in p.tensors().items()})


def distribution(p):
    return SemiMarkovDistribution(p.scores, p.transition, p.duration, p.lengths, start=p.start, end=p.end,
                                  start_scores=p.start_scores, end_scores=p.end_scores, backend="triton")


def every_query(B, T, K, C, extras):
    """Each query of the Triton rung once: log Z with its gradient and a
    gradient penalty's, entropy/cross-entropy/KL with gradients, Viterbi,
    k-best, the KMax scan and samples."""
    lengths = torch.tensor([T] + [max(1, T - 2)] * (B - 1))
    p = leaves(random_problem(B, T, K, C, lengths, extras=extras, seed=T))
    q = leaves(random_problem(B, T, K, C, lengths, extras=extras, seed=T + 1))
    tensors = list(p.tensors().values())
    grads = torch.autograd.grad(log_partition(p, backend="triton").sum(), tensors, create_graph=True)
    sum((g ** 2).sum() for g in grads).backward()
    d, e = distribution(p), distribution(q)
    (d.entropy().sum() + d.cross_entropy(e).sum() + d.kl(e).sum()).backward()
    with torch.no_grad():
        viterbi(p, backend="triton")
        topk(p, 3, backend="triton")
        semimarkov_scan(p, KMaxSemiring(2), backend="triton")
        sample(p, 5, torch.Generator().manual_seed(0), backend="triton")


def storage_round_trip():
    """The compiled rung's copies of a kept block's saved storages (on CUDA
    only, so launched here directly): out to a flat buffer and back."""
    storages = [torch.randn(n).untyped_storage() for n in (3, 1500)]
    copier = storage_copy.FlatStorages(storages)
    copier.scatter(copier.gather())


def test_every_launched_kernel_compiles_for_sm90(tmp_path):
    with recorded_launches() as launches:
        every_query(2, 9, 4, 3, extras=True)
        every_query(1, 6, 3, 5, extras=False)
        storage_round_trip()
    names = {launch["name"] for launch in launches}
    assert {"forward_sweep_kernel", "outside_flow_kernel", "expectation_sweep_kernel", "tangent_flow_kernel",
            "traceback_kernel", "kbest_sweep_kernel", "sample_kernel", "copy_storages_kernel"} <= names, names
    path = tmp_path / "launches.json"
    path.write_text(json.dumps(launches))
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run([sys.executable, str(HERE / "kernel_compile.py"), str(path)], capture_output=True,
                            text=True, env=env, timeout=600)
    if result.returncode != 0 and "FAILED" not in result.stdout:
        pytest.skip(f"Triton cannot compile for CUDA on this machine: {result.stderr.strip().splitlines()[-1:]}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
