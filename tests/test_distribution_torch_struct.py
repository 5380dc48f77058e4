"""SemiMarkovDistribution against pytorch-struct's SemiMarkovCRF on the same
potentials (`to_edges()`, one sequence at a time, lengths + 1: docs/model.md
explains the pinned first label; pytorch-struct 0.5 sets its chart up from the
batch's shortest length, so a batch of mixed lengths is wrong for the longer
sequences there)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import tiny_problems

from semiring_semicrf.distribution import SemiMarkovDistribution

torch_struct = pytest.importorskip("torch_struct")


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-8, atol=1e-8)


def theirs(p, forbidden=float("-inf")):
    """pytorch-struct's distribution; its entropy is NaN at -inf edges, so
    `forbidden` may replace them by a finite number whose exp underflows to 0."""
    L = int(p.lengths[0])
    edges = p.to_edges()[:, :L]
    return torch_struct.SemiMarkovCRF(edges.masked_fill(torch.isneginf(edges), forbidden), lengths=p.lengths + 1)


@settings(max_examples=25)
@given(p=tiny_problems(max_B=1), k=st.integers(1, 4))
def test_partition_max_kmax_entropy_match_pytorch_struct(p, k):
    ours, ref = SemiMarkovDistribution.from_potentials(p), theirs(p)
    close(ours.partition, ref.partition)
    close(ours.max, ref.max)
    kmax, missing = ref.kmax(k), ref.kmax(k) < -1e4  # it pads short lists with about -1e5
    close(ours.topk(k).scores, kmax.masked_fill(missing, float("-inf")))
    close(ours.entropy(), theirs(p, forbidden=-1e5).entropy)


@settings(max_examples=25)
@given(p=tiny_problems(max_B=1))
def test_marginals_match_pytorch_struct_edge_marginals_summed(p):
    ours, ref = SemiMarkovDistribution.from_potentials(p), theirs(p)
    L, T = int(p.lengths[0]), p.T
    edge = ref.marginals[:, :, 1:]  # (1, L, K, C_dst, C_src): P(segment [s, s+d) with c after c_src)
    edge = torch.nn.functional.pad(edge, (0, 0, 0, 0, 0, 0, 0, T - L))
    segments = edge.sum(dim=-1)  # (1, T, K, C)
    close(ours.segment_marginals, segments)
    close(ours.boundary_marginals, segments.sum(dim=(-1, -2)))
    close(ours.duration_marginals, segments.sum(dim=1))
    later = edge[:, 1:].transpose(-1, -2)  # (1, T-1, K, C_src, C_dst): the first segment has no transition
    close(ours.transition_marginals, later.sum(dim=1) if p.duration_dependent else later.sum(dim=(1, 2)))
    s = torch.arange(T)[:, None, None]
    d = torch.arange(1, p.K + 1)[None, :, None]
    t = torch.arange(T)[None, None, :]
    covers = ((s <= t) & (t < s + d)).double()  # (T_start, K, T)
    close(ours.marginals, torch.einsum("bskc,skt->btc", segments, covers))
