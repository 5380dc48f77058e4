"""The Triton k-best kernels through the public API (``backend="triton"``).

Without CUDA they run on CPU tensors through Triton's interpreter (conftest.py
sets ``TRITON_INTERPRET=1``), so sizes stay tiny; tests marked ``gpu`` run at
scale on a GPU. The k-best lists must equal the reference rung's and brute
force: scores and structures, with ties (integer potentials, `center=False`,
where every sum is exact) broken by the documented rule, and sequences with
fewer than k segmentations padded the same way.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from strategies import tiny_problems  # noqa: E402
from test_decoding import brute_force_ranking, structures_of  # noqa: E402
from test_kernels import converted, random_problem  # noqa: E402

from semiring_semicrf import KMaxSemiring, SemiMarkovPotentials, backends, semimarkov_scan  # noqa: E402
from semiring_semicrf.backends.triton import KBestFallbackWarning  # noqa: E402
from semiring_semicrf.decoding import topk, viterbi  # noqa: E402
from semiring_semicrf.kernels import kbest_limits_reason  # noqa: E402
from semiring_semicrf.segmentation import Segmentation  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@st.composite
def integer_problems(draw, max_B=2, max_T=6, max_K=3, max_C=3):
    """Float32 potentials holding small integers, not centred: every sum is
    exact, so equal scores are real ties."""
    B, T, K, C = (draw(st.integers(1, m)) for m in (max_B, max_T, max_K, max_C))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def ints(*shape):
        return torch.randint(-1, 2, shape, generator=g).float().to(DEVICE)

    extras = {name: ints(B, T, C) for name in ("start_scores", "end_scores")} if draw(st.booleans()) else {}
    return SemiMarkovPotentials(ints(B, T, C), ints(C, C), ints(K, C), torch.tensor(lengths, device=DEVICE),
                                ints(C), ints(C), center=False, **extras)


def assert_same_lists(ours, theirs):
    for x, y in zip(ours, theirs):
        assert torch.equal(x.cpu(), y.cpu())


@settings(deadline=None, max_examples=15)
@given(p=integer_problems(), k=st.integers(1, 7))
def test_ties_and_missing_entries_equal_the_reference_and_brute_force(p, k):
    ours = topk(p, k, backend="triton")
    assert ours[0].dtype == torch.float32 and ours[1].shape == (k, p.batch_size, p.T)
    assert_same_lists(ours, topk(p, k, backend="reference"))
    scores, labels, starts = (t.cpu() for t in ours)
    for b in range(p.batch_size):
        found, expected = brute_force_ranking(converted(p, "cpu", torch.float64), b, k)
        assert structures_of(labels, starts, b) == found + [()] * (k - len(found))
        assert torch.equal(scores[:, b].double(), expected)


@settings(deadline=None, max_examples=15)
@given(p=integer_problems())
def test_viterbi_kernel_breaks_ties_like_the_first_of_topk(p):
    """The Max forward breaks exact ties by the documented rule too: the
    smaller last label, then the smaller duration, then the smaller
    previous label (its backpointers are the smallest keys at the maximum)."""
    score, labels, starts = viterbi(p, backend="triton")
    scores, all_labels, all_starts = topk(p, 1, backend="reference")
    assert torch.equal(score.cpu(), scores[0].cpu())
    assert torch.equal(labels.cpu(), all_labels[0].cpu()) and torch.equal(starts.cpu(), all_starts[0].cpu())


@settings(deadline=None, max_examples=15)
@given(p64=tiny_problems(max_T=7, max_K=4, max_C=4, duration_dependent=False), k=st.integers(1, 6))
def test_random_potentials_match_the_float64_ranking(p64, k):
    """Continuous potentials: the scores within float32 rounding of the
    float64 reference, each entry's own score equal to its listed score, and
    the structures the reference's wherever its scores are not within
    rounding of a neighbour's."""
    scores, labels, starts = (t.cpu() for t in topk(converted(p64, DEVICE, torch.float32), k, backend="triton"))
    # one entry more: whether the k-th is within rounding of the next one, which the list leaves out
    longer_scores, ref_labels, ref_starts = topk(p64, k + 1, backend="reference")
    ref_scores = longer_scores[:k]
    torch.testing.assert_close(scores.double(), ref_scores, rtol=1e-5, atol=1e-5)
    finite = torch.isfinite(ref_scores)
    assert torch.equal(torch.isfinite(scores), finite)
    own = Segmentation(labels[finite], starts[finite]).log_potential(p64[torch.nonzero(finite)[:, 1]])
    torch.testing.assert_close(own, ref_scores[finite], rtol=1e-5, atol=1e-5)
    close = longer_scores.diff(dim=0).abs() < 1e-4  # (k, B): entry q and entry q + 1
    separated = ~close
    separated[1:] &= ~close[:-1]
    for q, b in torch.nonzero(separated & finite).tolist():
        assert torch.equal(labels[q, b], ref_labels[q, b]) and torch.equal(starts[q, b], ref_starts[q, b])
    assert bool((labels[~finite] == -1).all()) and not bool(starts[~finite].any())


def test_fewer_segmentations_than_k():
    # T = 2, K = 2, one label: two segmentations; and a sequence of length 1: one.
    p = SemiMarkovPotentials(torch.tensor([[[1.0], [2.0]], [[0.5], [0.0]]], device=DEVICE),
                             torch.zeros(1, 1, device=DEVICE), torch.tensor([[0.0], [1.0]], device=DEVICE),
                             torch.tensor([2, 1], device=DEVICE), center=False)
    scores, labels, starts = topk(p, 4, backend="triton")
    assert scores.cpu().tolist() == [[4.0, 0.5], [3.0, float("-inf")], [float("-inf")] * 2, [float("-inf")] * 2]
    assert labels[:, 1, 1].tolist() == [-1] * 4 and labels[1, 1, 0] == -1 and not bool(starts[2:].any())
    assert_same_lists((scores, labels, starts), topk(p, 4, backend="reference"))


def test_viterbi_and_kmax_scan_agree_with_the_first_list_entry():
    p = converted(random_problem(3, 8, 3, 4, torch.tensor([8, 5, 1]), extras=True, seed=31), DEVICE, torch.float32)
    scores, labels, starts = topk(p, 3, backend="triton")
    best = viterbi(p, backend="triton")
    torch.testing.assert_close(scores[0], best[0])
    assert torch.equal(labels[0], best[1]) and torch.equal(starts[0], best[2])
    with torch.no_grad():
        torch.testing.assert_close(semimarkov_scan(p, KMaxSemiring(3), backend="triton"), scores)


@pytest.mark.parametrize("K,C", [(3, 5), (9, 2), (5, 12)])
def test_every_tiling_of_the_sweep_gives_the_same_lists(K, C):
    """The sweep's 4-d tiles (`kernels.kbest.kbest_tiling`: label groups,
    lanes per list, lists per thread) differ with the warp count; every
    count gives the reference's lists, and all of them the same bits. At
    one warp a label, the lists span the warp's 32 lanes (repeated where
    `K` or `C` is smaller) and a pop's maximum is taken on ordered integer
    bits."""
    from semiring_semicrf.kernels.common import pad
    from semiring_semicrf.kernels.kbest import kbest_decode, kbest_tiling
    p = converted(random_problem(2, 7, K, C, torch.tensor([7, 4]), extras=True, seed=K * C), DEVICE, torch.float32)
    scores, labels, starts = topk(p, 4, backend="reference")
    first = kbest_decode(p.factors(), 4, num_warps=1)
    torch.testing.assert_close(first[0], scores)
    assert torch.equal(first[1], labels) and torch.equal(first[2], starts)
    tilings = {kbest_tiling(pad(K), pad(C), 1)}
    for warps in (2, 4, 8, 16):
        tilings.add(kbest_tiling(pad(K), pad(C), warps))
        assert_same_lists(kbest_decode(p.factors(), 4, num_warps=warps), first)
    assert len(tilings) >= 2 and (pad(C), 32) in tilings


@pytest.mark.parametrize("K,C,k", [(6, 5, 6), (9, 2, 16), (1, 3, 3)])
def test_ties_over_a_rotating_ring_equal_the_reference(K, C, k):
    """Longer sequences than the ring (T = 24, every slot reused), integer
    ties: the split duration stage (the older starts popped a step ahead,
    the newest merged in) and the shifted pops give the reference's lists
    at every warp count, `K = 1` (no older start) included."""
    from semiring_semicrf.kernels.kbest import kbest_decode
    g = torch.Generator().manual_seed(K * C * k)

    def ints(*shape):
        return torch.randint(-1, 2, shape, generator=g).float().to(DEVICE)

    p = SemiMarkovPotentials(ints(2, 24, C), ints(C, C), ints(K, C), torch.tensor([24, 17], device=DEVICE), ints(C),
                             ints(C), center=False, start_scores=ints(2, 24, C))
    expected = topk(p, k, backend="reference")
    assert_same_lists(topk(p, k, backend="triton"), expected)
    for warps in (1, 4):
        assert_same_lists(kbest_decode(p.factors(), k, num_warps=warps), expected)


def test_warp_counts_are_the_measured_best():
    """`kbest_num_warps` picks, at the sizes measured on an H200 with k = 5
    (its docstring), the count that measured fastest: one warp a label up to
    eight labels, then at k = 16 fewer entries a thread."""
    from semiring_semicrf.kernels.kbest import kbest_num_warps, kbest_tiling
    best = {(32, 32): 4, (64, 8): 8, (16, 16): 2, (128, 32): 8, (8, 4): 4, (16, 64): 8}
    assert {size: kbest_num_warps(*size, 5) for size in best} == best
    assert kbest_num_warps(32, 32, 10) == 4 and kbest_num_warps(32, 32, 16) == 8
    assert kbest_num_warps(1, 1, 5) == 1 and kbest_num_warps(4, 2, 5) == 2
    assert kbest_num_warps(64, 8, 5, crowded=True) == 2 and kbest_num_warps(8, 4, 5, crowded=True) == 2
    assert kbest_tiling(64, 8, 8) == (8, 32) and kbest_tiling(8, 4, 16) == (4, 32)
    assert kbest_tiling(16, 16, 2) == (2, 4) and kbest_tiling(64, 8, 2) == (2, 8)


@pytest.mark.parametrize("where", ["scores", "scores past the length", "start_scores", "start_scores at the length",
                                   "end_scores", "transition", "duration", "start", "end"])
@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
def test_nan_potentials_give_the_references_nan_not_a_finite_score(where):
    """Without validation, a NaN potential gives what the reference rung
    gives: NaN scores and no segmentation where a sequence reads it, the
    other sequences' lists unchanged. (The kernels' maxima skip NaN; a NaN
    the sequence reads would otherwise give a finite, wrong score.)"""
    g = torch.Generator().manual_seed(5)
    B, T, K, C = 2, 9, 3, 3
    tensors = {"scores": torch.randn(B, T, C, generator=g), "transition": torch.randn(C, C, generator=g),
               "duration": torch.randn(K, C, generator=g), "start": torch.randn(C, generator=g),
               "end": torch.randn(C, generator=g), "start_scores": torch.randn(B, T, C, generator=g),
               "end_scores": torch.randn(B, T, C, generator=g)}
    name = where.split()[0]
    index = {"scores": (1, 4, 1), "scores past the length": (1, 7, 1), "start_scores": (1, 3, 2),
             "start_scores at the length": (1, 7, 0), "end_scores": (1, 5, 0), "transition": (2, 1),
             "duration": (2, 0), "start": (1,), "end": (2,)}[where]
    tensors[name][index] = float("nan")
    lengths = torch.tensor([9, 7])
    p = SemiMarkovPotentials(**{k: v.to(DEVICE) for k, v in tensors.items()}, lengths=lengths.to(DEVICE),
                             validate_args=False)
    for query in (lambda backend: viterbi(p, backend=backend), lambda backend: topk(p, 3, backend=backend)):
        ours, theirs = query("triton"), query("reference")
        torch.testing.assert_close(ours[0], theirs[0], equal_nan=True)
        assert torch.equal(ours[1], theirs[1]) and torch.equal(ours[2], theirs[2])
        poisoned = torch.isnan(ours[0]).reshape(-1, B).any(0).tolist()
        assert poisoned == {"scores past the length": [False, False], "start_scores at the length": [False, False],
                            "transition": [True, True], "duration": [True, True], "start": [True, True],
                            "end": [True, True]}.get(where, [False, True])


def test_bitwise_deterministic():
    p = converted(random_problem(3, 9, 4, 5, torch.tensor([9, 4, 7]), seed=32), DEVICE, torch.float32)
    assert_same_lists(topk(p, 5, backend="triton"), topk(p, 5, backend="triton"))


def test_large_k_runs_the_reference_with_a_stated_reason():
    p = converted(random_problem(1, 4, 2, 3, seed=33), DEVICE, torch.float32)
    assert "at most 16 lanes" in kbest_limits_reason(p, 17)
    assert kbest_limits_reason(p, 16) is None
    with pytest.warns(KBestFallbackWarning, match="at most 16 lanes"):
        assert backends.select("triton", p, "kbest", k=17).name == "reference"
    wide = converted(random_problem(1, 4, 2, 64, seed=34), DEVICE, torch.float32)
    assert "register tile" in kbest_limits_reason(wide, 16)
    with pytest.warns(KBestFallbackWarning):
        scores = topk(wide, 16, backend="triton")[0]
    torch.testing.assert_close(scores, topk(wide, 16, backend="reference")[0])


# -- at scale, on a GPU -------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("B,T,K,C,k", [(4, 200, 12, 7, 5), (2, 300, 32, 24, 16), (1, 2000, 100, 24, 5)])
def test_gpu_kbest_against_the_reference(B, T, K, C, k):
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(T))
    lengths[0] = T
    p64 = random_problem(B, T, K, C, lengths, extras=True, seed=B + T)
    scores, labels, starts = (t.cpu() for t in topk(converted(p64, DEVICE, torch.float32), k, backend="triton"))
    ref_scores = topk(p64, k, backend="reference")[0]
    torch.testing.assert_close(scores.double(), ref_scores, rtol=1e-5, atol=1e-4)
    own = Segmentation(labels.flatten(0, 1), starts.flatten(0, 1)).log_potential(
        p64[torch.arange(B).repeat(k)]).view(k, B)
    torch.testing.assert_close(own, ref_scores, rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
@gpu
def test_gpu_integer_ties_equal_the_reference():
    g = torch.Generator().manual_seed(35)
    B, T, K, C = 3, 500, 16, 12

    def ints(*shape):
        return torch.randint(-2, 3, shape, generator=g).float()

    tensors = dict(scores=ints(B, T, C), transition=ints(C, C), duration=ints(K, C), start=ints(C), end=ints(C))
    lengths = torch.tensor([T, 333, 1])
    cpu = SemiMarkovPotentials(**tensors, lengths=lengths, center=False)
    gpu_p = SemiMarkovPotentials(**{n: t.cuda() for n, t in tensors.items()}, lengths=lengths.cuda(), center=False)
    reference = topk(cpu, 8, backend="reference")
    assert_same_lists(topk(gpu_p, 8, backend="triton"), reference)
    assert_same_lists(viterbi(gpu_p, backend="triton"), (x[0] for x in reference))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("B,T,K,C", [(2, 300, 8, 3), (1, 600, 64, 8), (2, 300, 16, 12)])
def test_gpu_every_warp_count_gives_the_reference_lists(B, T, K, C):
    """Every tiling of the sweep on the GPU, the one-warp sweep (whose
    exchange is a gather) included: the reference's scores, and the same
    bits at every count."""
    from semiring_semicrf.kernels.kbest import kbest_decode
    p64 = random_problem(B, T, K, C, extras=True, seed=B * T + K)
    reference = topk(p64, 5, backend="reference")[0]
    factors = converted(p64, DEVICE, torch.float32).factors()
    first = kbest_decode(factors, 5, num_warps=1)
    torch.testing.assert_close(first[0].double().cpu(), reference, rtol=1e-5, atol=1e-4)
    for warps in (2, 4, 8, 16):
        assert_same_lists(kbest_decode(factors, 5, num_warps=warps), first)
