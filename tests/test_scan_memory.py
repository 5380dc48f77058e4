"""Working memory of the forward scan does not grow with T.

Measured in a fresh subprocess: the peak resident set (VmHWM, reset through
/proc/self/clear_refs after the inputs and their factors exist) while the
scan runs, at T = 1e4 and T = 1e5. Only the inputs' own size may grow.
glibc's mmap threshold is pinned so that freed large blocks leave the resident
set at once (otherwise reused heap hides allocations from the probe).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import json, sys, torch
    from semiring_semicrf import SemiMarkovPotentials, semimarkov_scan
    torch.set_num_threads(1)
    T, tables = int(sys.argv[1]), sys.argv[2] == "tables"; B, K, C = 2, 16, 32
    g = torch.Generator().manual_seed(0)
    p = SemiMarkovPotentials(torch.randn(B, T, C, generator=g), torch.randn(C, C, generator=g),
                             torch.randn(K, C, generator=g))
    p.log_factors().mean  # the factors, their centring mean (computed on first use) included
    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    with torch.no_grad():
        semimarkov_scan(SemiMarkovPotentials(p.scores[:, :64], p.transition, p.duration))  # warm-up
        open("/proc/self/clear_refs", "w").write("5")
        base = rss("VmRSS:")
        semimarkov_scan(p, return_tables=tables)
        peak = rss("VmHWM:")
    print(json.dumps({"working": peak - base, "inputs": p.scores.numel() * 4}))
""")


def probe(T, tables=False):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(T), "tables" if tables else "streaming"],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_forward_working_memory_is_independent_of_T():
    # Control: the probe sees O(T C) tables (float64 alpha and u, 8x the inputs' bytes).
    control = probe(100_000, tables=True)
    assert control["working"] > 4 * control["inputs"], control
    small, large = probe(10_000), probe(100_000)
    # The inputs grow 10x (25 MB at T=1e5); the scan's working memory must not.
    assert large["inputs"] == 10 * small["inputs"]
    assert large["working"] < 0.2 * large["inputs"], (small, large)
    assert large["working"] < 2 * small["working"] + 4 * 2**20, (small, large)
