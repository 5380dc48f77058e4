"""CUDA graphs: log Z and its gradient replay from a captured graph.

A capture records kernel launches without running the host's code again,
which removes the per-call host overhead (the preparation's small
operations and the Triton launches) at small sizes; a capture cannot read a
value on the host or copy one from it. The log partition's forward and
backward have no host reads once the potentials skip their value checks
(`validate_args=False`); the lengths' range check is the one read they keep
outside a capture, and inside one they are clamped on the device instead.
On the CPU, the capture logic runs with a capture simulated; on a GPU
(tests marked `gpu`), `torch.cuda.make_graphed_callables` and a captured
forward replay bitwise what the eager calls compute.
"""
from __future__ import annotations

import pytest
import torch

from semiring_semicrf import SemiMarkovPotentials, log_partition
from semiring_semicrf import validation as V

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_a_capture_refuses_validation_and_clamps_the_lengths(monkeypatch):
    monkeypatch.setattr(V, "capturing", lambda device: True)
    B, T, K, C = 3, 6, 2, 2
    args = (torch.randn(B, T, C), torch.randn(C, C), torch.randn(K, C))
    with pytest.raises(ValueError, match="validate_args=True reads the potentials' values on the host"):
        SemiMarkovPotentials(*args, torch.tensor([6, 2, 1]))
    p = SemiMarkovPotentials(*args, torch.tensor([9, 2, -1]), validate_args=False)
    assert p.lengths.tolist() == [6, 2, 0]


def test_outside_a_capture_the_lengths_are_still_checked():
    B, T, K, C = 2, 6, 2, 2
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\]"):
        SemiMarkovPotentials(torch.randn(B, T, C), torch.randn(C, C), torch.randn(K, C), torch.tensor([7, 2]),
                             validate_args=False)


def problem(B=3, T=300, K=12, C=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, C, generator=g).cuda(), (0.5 * torch.randn(C, C, generator=g)).cuda(),
            (0.5 * torch.randn(K, C, generator=g)).cuda())


@pytest.mark.gpu
@gpu
def test_log_partition_and_its_gradient_replay_from_cuda_graphs():
    lengths = torch.tensor([300, 211, 1], device="cuda")

    def total(scores, transition, duration):
        return log_partition(SemiMarkovPotentials(scores, transition, duration, lengths,
                                                  validate_args=False)).sum()

    example = [t.requires_grad_() for t in problem()]
    graphed = torch.cuda.make_graphed_callables(total, tuple(example))
    for seed in (1, 2):
        eager_inputs = [t.requires_grad_() for t in problem(seed=seed)]
        graph_inputs = [t.detach().clone().requires_grad_() for t in eager_inputs]
        eager = total(*eager_inputs)
        eager.backward()
        replayed = graphed(*graph_inputs)
        replayed.backward()
        assert torch.equal(replayed, eager)
        for a, b in zip(graph_inputs, eager_inputs):
            assert torch.equal(a.grad, b.grad)


@pytest.mark.gpu
@gpu
def test_a_captured_forward_replays_on_new_inputs():
    static = problem()
    lengths = torch.tensor([300, 17, 150], device="cuda")

    def forward():
        with torch.no_grad():
            return log_partition(SemiMarkovPotentials(*static, lengths, validate_args=False))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        forward()  # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = forward()
    for seed in (3, 4):
        fresh = problem(seed=seed)
        for target, value in zip(static, fresh):
            target.copy_(value)
        lengths.copy_(torch.tensor([5, 300, 299]))
        graph.replay()
        expected = log_partition(SemiMarkovPotentials(*fresh, lengths.clone()))
        assert torch.equal(out, expected)


@pytest.mark.gpu
@gpu
def test_validation_inside_a_capture_is_a_clear_error():
    scores, transition, duration = problem()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(ValueError, match="CUDA graph capture forbids"), torch.cuda.graph(graph):
        SemiMarkovPotentials(scores, transition, duration)
