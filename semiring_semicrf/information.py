"""Entropy, cross-entropy and KL of semi-Markov CRFs, from one Log
forward-backward (the specialized path of the Entropy, CrossEntropy and KL
semirings).

The expected counts `mu_p` of every part under `p` (label marginals,
durations, transitions, first/last labels, segment starts/ends: the
:class:`~semiring_semicrf.posterior.Posterior`) make these linear in the
potentials `theta`:

    H(p)     = log Z_p - <mu_p, theta_p>
    H(p, q)  = log Z_q - <mu_p, theta_q>
    KL(p||q) = H(p, q) - H(p)

Their gradient with respect to `q` is exact this way (`mu_q - mu_p`); a
gradient with respect to `p` needs the derivative of `mu_p` itself, so when
`p`'s potentials require grad the value comes from the block-checkpointed
generic scan in the Entropy / CrossEntropy / KL semiring instead (the same
value, differentiable, memory sublinear in T).
"""
from __future__ import annotations

from typing import Optional

import torch

from .autograd import checkpointed_scan, log_partition, posterior
from .posterior import Posterior
from .potentials import SemiMarkovPotentials
from .semirings import CrossEntropySemiring, EntropySemiring, KLDivergenceSemiring


def tracks_grad(potentials: SemiMarkovPotentials) -> bool:
    """Whether a result computed from `potentials` must carry a gradient."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in potentials.tensors().values())


def check_compatible(p: SemiMarkovPotentials, q: SemiMarkovPotentials) -> None:
    """Raise ValueError unless `p` and `q` describe models over the same
    segmentations (shapes, dtype, device, kind of transition, lengths)."""
    if not isinstance(q, SemiMarkovPotentials):
        raise TypeError(f"potentials must be SemiMarkovPotentials, got {type(q).__name__}")
    same = ((p.batch_size, p.T, p.K, p.C) == (q.batch_size, q.T, q.K, q.C) and p.dtype == q.dtype
            and p.device == q.device and p.duration_dependent == q.duration_dependent)
    if not same:
        raise ValueError(
            f"the two distributions must share B, T, K, C, dtype, device and the kind of transition: got "
            f"(B, T, K, C) = {(p.batch_size, p.T, p.K, p.C)} vs {(q.batch_size, q.T, q.K, q.C)}, "
            f"{p.dtype}/{q.dtype}, {p.device}/{q.device}, duration-dependent {p.duration_dependent}/"
            f"{q.duration_dependent}")
    if not torch.equal(p.lengths, q.lengths):
        raise ValueError("the two distributions must have the same lengths")


def expected_score(post: Posterior, p: SemiMarkovPotentials, q: SemiMarkovPotentials) -> torch.Tensor:
    """`(B,)`: `E_p[score_q(y)]` from p's expected counts `post`,
    differentiable w.r.t. `q`.

    A part that `q` forbids (`-inf`) contributes `-inf` if p gives it an
    expected count above `sqrt(eps)` of the dtype, else 0 (its true count is
    then 0 up to rounding)."""
    tolerance = torch.finfo(post.segment_start.dtype).eps ** 0.5
    valid = p.valid_mask()[..., None]

    def dot(count, value):
        value = value.expand_as(count)
        forbidden = torch.isneginf(value)
        term = torch.where(forbidden, torch.where(count > tolerance, value, torch.zeros_like(value)),
                           count * torch.where(forbidden, torch.zeros_like(value), value))
        return term.flatten(1).sum(dim=1)

    def inside(value):  # padding is no part of the model, whatever it holds
        return torch.where(valid, value, torch.zeros_like(value))

    total = dot(post.label_marginals(), inside(q.scores))
    total = total + dot(post.duration, q.duration) + dot(post.transition, q.transition)
    total = total + dot(post.first, q.start) + dot(post.last, q.end)
    if q.start_scores is not None:
        total = total + dot(post.segment_start, inside(q.start_scores))
    if q.end_scores is not None:
        total = total + dot(post.segment_end, inside(q.end_scores))
    return total


def entropy(p: SemiMarkovPotentials, backend: str = "auto", post: Optional[Posterior] = None) -> torch.Tensor:
    """`H(p) (B,)` in nats. `post`: p's posterior, if already computed."""
    if tracks_grad(p):
        return checkpointed_scan(p, EntropySemiring())
    post = posterior(p, backend) if post is None else post
    return post.log_z - expected_score(post, p, p)


def cross_entropy(p: SemiMarkovPotentials, q: SemiMarkovPotentials, backend: str = "auto",
                  post: Optional[Posterior] = None) -> torch.Tensor:
    """`H(p, q) = -E_p[log q(y)]` `(B,)`."""
    check_compatible(p, q)
    if tracks_grad(p):
        return checkpointed_scan((p, q), CrossEntropySemiring())
    post = posterior(p, backend) if post is None else post
    return log_partition(q, backend) - expected_score(post, p, q)


def kl(p: SemiMarkovPotentials, q: SemiMarkovPotentials, backend: str = "auto",
       post: Optional[Posterior] = None) -> torch.Tensor:
    """`KL(p || q) = E_p[log p(y) - log q(y)]` `(B,)`."""
    check_compatible(p, q)
    if tracks_grad(p):
        return checkpointed_scan((p, q), KLDivergenceSemiring())
    post = posterior(p, backend) if post is None else post
    return cross_entropy(p, q, backend, post) - entropy(p, backend, post)
