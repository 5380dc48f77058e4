"""Viterbi and k-best against brute force: scores, structures, tie-breaking."""
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import tiny_problems

from semiring_semicrf import EdgePotentials, MaxSemiring, SemiMarkovPotentials, semimarkov_scan
from semiring_semicrf.decoding import topk, viterbi
from semiring_semicrf.segmentation import Segmentation
from semiring_semicrf.testing import enumerate_structures


def close(actual, expected, tol=1e-9):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def random_edges(p: SemiMarkovPotentials, seed: int) -> EdgePotentials:
    """Explicit potentials with a free latent first label."""
    g = torch.Generator().manual_seed(seed)
    edge = torch.randn(p.batch_size, p.T, p.K + 1, p.C, p.C, generator=g, dtype=torch.float64)
    return SemiMarkovPotentials.from_edges(edge, p.lengths)


def tie_key(structure) -> tuple:
    """The documented tie-breaking order: segments from the last to the
    first, (label, duration) each, then the latent first label if any."""
    latent, segments = structure if isinstance(structure[0], int) else (None, structure)
    key = [x for s, e, c in reversed(segments) for x in (c, e - s)]
    return tuple(key + ([] if latent is None else [latent]))


def brute_force_ranking(potentials, b: int, k: int):
    """The k best structures of sequence b, by score then tie key."""
    enum = enumerate_structures(potentials, b)
    order = sorted(range(len(enum.structures)), key=lambda i: (-float(enum.scores[i]), tie_key(enum.structures[i])))
    finite = [i for i in order if torch.isfinite(enum.scores[i])]
    return [enum.structures[i] for i in finite[:k]], enum.topk(k)


@st.composite
def integer_problems(draw, max_B=2, max_T=6, max_K=3, max_C=3):
    """Integer potentials whose scores have zero mean per sequence and label,
    so that every sum is exact and ties are real ties."""
    B, T, K, C = (draw(st.integers(1, m)) for m in (max_B, max_T, max_K, max_C))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def ints(*shape):
        return torch.randint(-1, 2, shape, generator=g).double()

    scores = ints(B, T, C)
    for b, L in enumerate(lengths):
        scores[b, L - 1] -= scores[b, :L].sum(dim=0)
    transition = ints(K, C, C) if draw(st.booleans()) else ints(C, C)
    extras = {name: ints(B, T, C) for name in ("start_scores", "end_scores")} if draw(st.booleans()) else {}
    return SemiMarkovPotentials(scores, transition, ints(K, C), torch.tensor(lengths), ints(C), ints(C), **extras)


def structures_of(labels, starts, b):
    """Our (rank, sequence b) entries as brute-force style segment tuples."""
    return [tuple(x) for x in Segmentation(labels[:, b], starts[:, b]).to_segments()]


@given(p=tiny_problems(), k=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_topk_scores_and_structures_match_brute_force(p, k, seed):
    for potentials in (p, random_edges(p, seed)):
        scores, labels, starts = topk(potentials, k)
        assert scores.shape == (k, p.batch_size) and labels.shape == starts.shape == (k, p.batch_size, p.T)
        for b in range(p.batch_size):
            found, expected = brute_force_ranking(potentials, b, k)
            close(scores[:, b], expected)
            ours = structures_of(labels, starts, b)
            finite = torch.isfinite(scores[:, b])
            assert all(s == () for s, ok in zip(ours, finite) if not ok), "missing entries are empty"
            if not potentials.is_explicit:
                assert len(set(ours[:len(found)])) == len(found), "entries are distinct"
    scores, labels, starts = topk(p, k)
    if bool(torch.isfinite(scores).all()):
        close(Segmentation(labels, starts).log_potential(p), scores)


@given(p=integer_problems(), k=st.integers(1, 5), explicit=st.booleans())
def test_ties_are_broken_by_the_documented_rule(p, k, explicit):
    potentials = SemiMarkovPotentials.from_edges(p.to_edges(), p.lengths) if explicit else p
    scores, labels, starts = topk(potentials, k)
    for b in range(p.batch_size):
        found, expected = brute_force_ranking(p, b, k)
        assert structures_of(labels, starts, b)[:len(found)] == found
        close(scores[:, b], expected)
    again = topk(potentials, k)
    assert all(torch.equal(x, y) for x, y in zip((scores, labels, starts), again))


@given(p=tiny_problems())
def test_viterbi_is_the_first_of_topk_and_scores_itself(p):
    score, labels, starts = viterbi(p)
    scores, all_labels, all_starts = topk(p, 3)
    close(score, scores[0])
    assert torch.equal(labels, all_labels[0]) and torch.equal(starts, all_starts[0])
    best = Segmentation(labels, starts)
    best.validate(p)
    close(best.log_potential(p), score)
    assert bool((labels[~p.valid_mask()] == -1).all()) and not bool(starts[~p.valid_mask()].any())


def test_long_sequences_keep_their_precision_in_float32():
    """Past many renormalizations the float32 decode matches float64."""
    g = torch.Generator().manual_seed(3)
    B, T, K, C = 2, 300, 6, 4
    args = [torch.randn(B, T, C, generator=g, dtype=torch.float64) + 20.0,
            torch.randn(C, C, generator=g, dtype=torch.float64), torch.randn(K, C, generator=g, dtype=torch.float64)]
    lengths = torch.tensor([T, 211])
    p64 = SemiMarkovPotentials(*args, lengths)
    p32 = SemiMarkovPotentials(*(a.float() for a in args), lengths)
    score, labels, starts = viterbi(p64)
    close(score, semimarkov_scan(p64, MaxSemiring()))
    score32, labels32, starts32 = viterbi(p32)
    close(score32.double(), score, tol=1e-5)
    assert torch.equal(labels32, labels) and torch.equal(starts32, starts)
    top = topk(p64, 4)[0]
    close(top[0], score)
    assert bool((top[1:] <= top[:-1]).all())


def test_sequences_without_an_allowed_segmentation_decode_to_empty():
    transition = torch.full((2, 2), float("-inf"), dtype=torch.float64)
    p = SemiMarkovPotentials(torch.randn(2, 3, 2, dtype=torch.float64), transition,
                             torch.zeros(1, 2, dtype=torch.float64), torch.tensor([3, 1]))
    score, labels, starts = viterbi(p)
    assert score[0] == float("-inf") and bool((labels[0] == -1).all()) and not bool(starts[0].any())
    assert torch.isfinite(score[1]) and labels[1, 0] >= 0 and bool(starts[1, 0])


def test_k_must_be_a_positive_int():
    p = SemiMarkovPotentials(torch.zeros(1, 2, 2), torch.zeros(2, 2), torch.zeros(2, 2))
    for bad in (0, -1, 2.0, True):
        try:
            topk(p, bad)
        except ValueError as error:
            assert "k must be an int >= 1" in str(error)
        else:
            raise AssertionError(f"k={bad!r} was accepted")
