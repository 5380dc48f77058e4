"""Hypothesis strategies shared by the test-suite: tiny semi-Markov problems."""
from __future__ import annotations

import torch
from hypothesis import strategies as st

from semiring_semicrf import SemiMarkovPotentials


@st.composite
def tiny_problems(draw, max_B=3, max_T=8, max_K=4, max_C=3, extras=None, duration_dependent=None,
                  dtype=torch.float64):
    """A random `SemiMarkovPotentials` of a brute-forceable size.

    `extras`/`duration_dependent`: None draws them, True/False forces them.
    Potentials are drawn from a seed (hypothesis shrinks the shapes, torch
    makes the values), with some `-inf` transitions when drawn.
    """
    B = draw(st.integers(1, max_B))
    T = draw(st.integers(1, max_T))
    K = draw(st.integers(1, max_K))
    C = draw(st.integers(1, max_C))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    lengths[0] = T
    with_extras = draw(st.booleans()) if extras is None else extras
    dependent = draw(st.booleans()) if duration_dependent is None else duration_dependent
    with_start_end = draw(st.booleans())
    forbid = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    transition = rand(K, C, C) if dependent else rand(C, C)
    if forbid and C > 1:
        transition[..., 0, 1] = float("-inf")
    return SemiMarkovPotentials(
        rand(B, T, C), transition, rand(K, C), torch.tensor(lengths),
        start=rand(C) if with_start_end else None, end=rand(C) if with_start_end else None,
        start_scores=rand(B, T, C) if with_extras else None,
        end_scores=rand(B, T, C) if with_extras else None)


def perturbed(potentials: SemiMarkovPotentials, seed: int) -> SemiMarkovPotentials:
    """A second model q of the same shapes as p (for cross-entropy and KL)."""
    g = torch.Generator().manual_seed(seed)
    return potentials.replace(**{name: t + torch.randn(t.shape, generator=g, dtype=t.dtype)
                                 for name, t in potentials.tensors().items()})
