"""Float32 forward+backward at T = 1e5 follows float64.

Zero-centred prefix sums still wander to hundreds of nats over 1e5
positions; the sweeps must not let their rounding accumulate (see
:mod:`semiring_semicrf.autograd.problem`). Every gradient of a float32 run,
in both memory modes and both transition kinds, must be within 1e-4
(relative, norm-wise) of the same run in float64. `SEMICRF_LONG_T` sets
another T (e.g. 1000000: minutes on a CPU, not for CI).
"""
import os

import pytest
import torch

from semiring_semicrf import SemiMarkovPotentials
from semiring_semicrf.autograd import log_partition


def run(tensors: dict, lengths, dtype, low_memory):
    leaves = {n: t.to(dtype).detach().requires_grad_(True) for n, t in tensors.items()}
    log_z = log_partition(SemiMarkovPotentials(lengths=lengths, **leaves), low_memory=low_memory)
    log_z.backward(torch.tensor([1.0, -0.5], dtype=dtype))
    return log_z.detach().double(), {n: t.grad.double() for n, t in leaves.items()}


@pytest.mark.slow
@pytest.mark.parametrize("dependent", [False, True])
def test_float32_at_T_1e5_within_1e4_of_float64(dependent):
    B, T, K, C = 2, int(os.environ.get("SEMICRF_LONG_T", 100_000)), 6, 3
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    tensors = dict(scores=2 * r(B, T, C) + 1, transition=r(K, C, C) if dependent else r(C, C), duration=r(K, C),
                   start=r(C), end=r(C), start_scores=r(B, T, C), end_scores=r(B, T, C))
    lengths = torch.tensor([T, T - T // 3])
    z64, g64 = run(tensors, lengths, torch.float64, low_memory=False)
    for low_memory in (False, True):
        z32, g32 = run(tensors, lengths, torch.float32, low_memory)
        assert ((z32 - z64).abs() / z64.abs()).max() < 1e-6
        for name in g64:
            error = (g32[name] - g64[name]).norm() / g64[name].norm()
            assert error < 1e-4, (name, low_memory, float(error))
