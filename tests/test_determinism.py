"""Determinism: the same inputs give bitwise identical results, call to call
and process to process, on the CPU (and, on a CUDA machine, through the GPU
kernels); samples are reproducible under a `torch.Generator`.

Every query's outputs are reduced to a SHA-256 of their bytes, so the
comparison is exact and a fresh Python process can report its digests.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from semiring_semicrf import EntropySemiring, KMaxSemiring, MaxSemiring, SemiMarkovPotentials, semimarkov_scan
from semiring_semicrf.autograd import checkpointed_scan, log_partition, posterior
from semiring_semicrf.decoding import topk, viterbi
from semiring_semicrf.distribution import SemiMarkovDistribution
from semiring_semicrf.sampling import sample

SIZES = dict(B=3, T=40, K=6, C=4)


def potentials(dependent: bool, device="cpu", requires_grad=True) -> SemiMarkovPotentials:
    g = torch.Generator().manual_seed(11)
    B, T, K, C = SIZES["B"], SIZES["T"], SIZES["K"], SIZES["C"]
    tensors = dict(scores=torch.randn(B, T, C, generator=g) * 2 + 1,
                   transition=torch.randn(*((K,) if dependent else ()), C, C, generator=g),
                   duration=torch.randn(K, C, generator=g), start=torch.randn(C, generator=g),
                   end=torch.randn(C, generator=g), start_scores=torch.randn(B, T, C, generator=g),
                   end_scores=torch.randn(B, T, C, generator=g))
    tensors["transition"][..., 1, 2] = float("-inf")
    tensors = {k: v.to(device).requires_grad_(requires_grad) for k, v in tensors.items()}
    return SemiMarkovPotentials(**tensors, lengths=torch.tensor([T, T - 17, 9], device=device))


def fingerprint(value) -> str:
    """SHA-256 of the bytes (and dtype/shape) of a tensor or a tuple of them."""
    h = hashlib.sha256()
    for t in (value if isinstance(value, (tuple, list)) else (value,)):
        t = t.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def gradients(p: SemiMarkovPotentials, value: torch.Tensor) -> tuple:
    leaves = list(p.tensors().values())
    return torch.autograd.grad(value.sum(), leaves)


def digests(device="cpu", backend="auto") -> dict:
    """Fingerprints of every query on two problems (factorized and
    duration-dependent potentials)."""
    out = {}
    for dependent in (False, True):
        tag = "dependent" if dependent else "factorized"
        p = potentials(dependent, device)
        log_z = log_partition(p, backend=backend)
        out[f"{tag}/log_partition"] = fingerprint(log_z)
        out[f"{tag}/log_partition grads"] = fingerprint(gradients(p, log_z))
        low = log_partition(p, backend=backend, low_memory=True)
        out[f"{tag}/low-memory grads"] = fingerprint(gradients(p, low))
        post = posterior(p, backend=backend)
        out[f"{tag}/posterior"] = fingerprint((post.log_z, post.segment_start, post.segment_end, post.transition,
                                               post.duration, post.first, post.last, post.label_marginals()))
        out[f"{tag}/viterbi"] = fingerprint(viterbi(p))
        out[f"{tag}/topk(3)"] = fingerprint(topk(p, 3))
        out[f"{tag}/samples"] = fingerprint(sample(p, 8, torch.Generator(device).manual_seed(5)))
        with torch.no_grad():
            out[f"{tag}/scan log"] = fingerprint(semimarkov_scan(p))
            out[f"{tag}/scan max"] = fingerprint(semimarkov_scan(p, MaxSemiring()))
            out[f"{tag}/scan kmax(2)"] = fingerprint(semimarkov_scan(p, KMaxSemiring(2)))
            out[f"{tag}/scan entropy"] = fingerprint(semimarkov_scan(p, EntropySemiring()))
        if not dependent:  # the generic scan's autograd is the same code on both paths (and slow on this one)
            entropy = checkpointed_scan(p, EntropySemiring())
            out[f"{tag}/checkpointed entropy grads"] = fingerprint(gradients(p, entropy))
        d = SemiMarkovDistribution.from_potentials(p, backend=backend)
        q = SemiMarkovDistribution.from_potentials(potentials(dependent, device, requires_grad=False), backend=backend)
        with torch.no_grad():
            information = (d.entropy(), d.kl(q), d.cross_entropy(q))
        drawn = d.sample((2,), generator=torch.Generator(device).manual_seed(9))
        out[f"{tag}/distribution"] = fingerprint((*information, d.max, d.topk(2).scores, drawn.labels, drawn.starts))
    return out


@functools.cache
def cpu_digests() -> tuple:
    return tuple(digests().items())


def test_every_query_is_bitwise_identical_call_to_call():
    first, second = dict(cpu_digests()), digests()
    assert first == second, [k for k in first if first[k] != second[k]]


def test_every_query_is_bitwise_identical_in_a_fresh_process():
    """...with one intra-op thread there (the default here): results do not
    depend on how the CPU work is split."""
    here = dict(cpu_digests())
    code = ("import json, sys, torch; torch.set_num_threads(1); sys.path.insert(0, sys.argv[1]); "
            "import test_determinism as t; print(json.dumps(t.digests()))")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    run = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__)], capture_output=True, text=True,
                         env=env, timeout=300, check=True)
    there = json.loads(run.stdout.strip().splitlines()[-1])
    assert here == there, [k for k in here if here[k] != there[k]]


def test_samples_follow_the_generator():
    """Same generator state, same samples; another seed, other samples; the
    global RNG is neither used nor needed."""
    p = potentials(False, requires_grad=False)
    a = sample(p, 16, torch.Generator().manual_seed(1))
    torch.manual_seed(999)
    b = sample(p, 16, torch.Generator().manual_seed(1))
    c = sample(p, 16, torch.Generator().manual_seed(2))
    assert fingerprint(a) == fingerprint(b) and fingerprint(a) != fingerprint(c)
    g = torch.Generator().manual_seed(3)
    first, second = sample(p, 4, g), sample(p, 4, g)  # the generator advances
    assert fingerprint(first) != fingerprint(second)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_kernels_are_bitwise_identical_run_to_run():
    first, second = digests("cuda"), digests("cuda")
    assert first == second, [k for k in first if first[k] != second[k]]
