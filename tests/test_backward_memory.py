"""Memory of the streaming forward+backward.

Peak resident memory is measured in a fresh subprocess: the high-water mark
(VmHWM) is reset through /proc/self/clear_refs once the inputs exist, and
read after `log_partition(...).backward()` (or the same through
`semimarkov_scan(p, LogSemiring())`). What counts is the peak beyond
the inputs and the gradients (which stay allocated). glibc is told to serve
every block above 64 KiB by mmap, so that freed tensors leave the resident
set at once instead of hiding later allocations in reused heap.

The inputs carry both boundary-score extras, so every `(B, T, C)` field of
the Posterior is itself a gradient (the backward scales it in place): the
streaming pass must then need only `O(B T C)` (default mode: the inside's
tables) or memory sublinear in T (low-memory mode) on top.

A dispatch-mode probe also checks that no tensor storage of `T K C` elements
is ever allocated, in either mode.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from semiring_semicrf import SemiMarkovPotentials
from semiring_semicrf.autograd import log_partition

PROBE = textwrap.dedent("""
    import json, sys, torch
    from semiring_semicrf import LogSemiring, SemiMarkovPotentials, semimarkov_scan
    from semiring_semicrf.autograd import log_partition
    torch.set_num_threads(1)
    T, low_memory = int(sys.argv[1]), sys.argv[2] == "low"
    if sys.argv[3] == "scan":
        log_partition = lambda p, low_memory: semimarkov_scan(p, LogSemiring(), low_memory=low_memory)
    B, K, C = 4, 8, 32
    g = torch.Generator().manual_seed(0)
    def make(T):
        r = lambda *s: torch.randn(*s, generator=g).requires_grad_(True)
        lengths = torch.tensor([T] + [T - T // 4] * (B - 1))
        return SemiMarkovPotentials(r(B, T, C), r(C, C), r(K, C), lengths, r(C), r(C), r(B, T, C), r(B, T, C))
    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    log_partition(make(64), low_memory=low_memory).sum().backward()  # warm-up
    p = make(T)
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS:")
    log_partition(p, low_memory=low_memory).sum().backward()
    peak = status("VmHWM:")
    grads = sum(t.grad.numel() * t.grad.element_size() for t in p.tensors().values())
    print(json.dumps({"extra": peak - base - grads, "btc": B * T * C * 4}))
""")


def probe(T: int, low_memory: bool, entry: str = "log_partition") -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(T), "low" if low_memory else "default", entry],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                                reason="needs Linux /proc peak-RSS reset")


@pytest.mark.slow
@needs_proc
def test_default_mode_needs_a_small_multiple_of_BTC():
    small, large = probe(10_000, low_memory=False), probe(100_000, low_memory=False)
    # the inside tables are 2 (T+1) B C float32 values: the probe must see them ...
    assert large["extra"] > 1.5 * large["btc"], large
    # ... and little more (measured 2.3x)
    assert large["extra"] < 4 * large["btc"], (small, large)
    assert large["extra"] > 8 * small["extra"], (small, large)


@pytest.mark.slow
@needs_proc
def test_semimarkov_scan_log_backward_builds_no_graph_over_T():
    # semimarkov_scan(p, LogSemiring()) takes the streaming autograd Function:
    # an autograd graph over positions would hold O(T K C) (far above 4 BTC).
    small, large = probe(10_000, False, "scan"), probe(100_000, False, "scan")
    assert 1.5 * large["btc"] < large["extra"] < 4 * large["btc"], (small, large)
    assert large["extra"] > 8 * small["extra"], (small, large)


@pytest.mark.slow
@needs_proc
def test_low_memory_mode_is_sublinear_in_T():
    small, large = probe(10_000, low_memory=True), probe(100_000, low_memory=True)
    # no (B, T, C)-sized buffer at all (one float32 table would be 1.0) ...
    assert large["extra"] < 0.5 * large["btc"], (small, large)
    # ... and 10x longer inputs: checkpoints and blocks grow like sqrt(T) ~ 3.2x
    # (measured ~6x here with a constant floor; linear growth would be 10x)
    assert large["extra"] < 7.5 * small["extra"], (small, large)


class StorageSizes(TorchDispatchMode):
    """Records the storage size (in elements) of every tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type != "meta":
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


@pytest.mark.parametrize("dependent", [False, True])
@pytest.mark.parametrize("low_memory", [False, True])
def test_no_tensor_of_T_K_C_elements(dependent, low_memory):
    B, T, K, C = 2, 1500, 12, 4
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).requires_grad_(True)  # noqa: E731
    p = SemiMarkovPotentials(r(B, T, C), r(K, C, C) if dependent else r(C, C), r(K, C), None, r(C), r(C),
                             r(B, T, C), r(B, T, C))
    with StorageSizes() as sizes:
        log_partition(p, low_memory=low_memory).sum().backward()
    assert sizes.largest >= B * T * C  # the probe sees the (B, T, C) gradients
    assert sizes.largest < T * K * C, sizes.largest
