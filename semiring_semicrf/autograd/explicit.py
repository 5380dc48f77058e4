"""Posterior of explicit :class:`EdgePotentials` from autograd.

Explicit edges `edge[b, s, d, c_dst, c_src]` are an `O(T K C^2)` input with
no factorized structure, so their marginals are the gradient of `log Z`
with respect to the edges, taken by autograd through the block-checkpointed
generic scan. Their first label is latent (pytorch-struct's convention): the
counts below sum over it, and `transition` counts only real transitions
(segments starting at s >= 1), by the entered segment's duration.
"""
from __future__ import annotations

import torch

from ..posterior import Posterior
from ..potentials import EdgePotentials
from ..semirings import LogSemiring
from .checkpointed import checkpointed_scan


def edge_marginals(potentials: EdgePotentials) -> tuple[torch.Tensor, torch.Tensor]:
    """`(marginals (B, T, K+1, C, C), log_z (B,))`: P(edge `[b, s, d, c_dst,
    c_src]` is used), zero in the unused slot `d = 0`; no gradient."""
    with torch.enable_grad():
        edge = potentials.edge.detach().requires_grad_(True)
        log_z = checkpointed_scan(EdgePotentials(edge, potentials.lengths, validate_args=False), LogSemiring())
        (marginals,) = torch.autograd.grad(log_z.sum(), edge)
    return marginals, log_z.detach()


def posterior_from_edge_marginals(marginals: torch.Tensor, log_z: torch.Tensor, lengths: torch.Tensor) -> Posterior:
    """Expected counts from edge marginals: `transition (B, K, C, C)`
    `[d-1, c_src, c_dst]` over segments starting at s >= 1."""
    B, T, K1, C, _ = marginals.shape
    K = K1 - 1
    per_segment = marginals[:, :, 1:].sum(dim=-1)  # (B, T, K, C) [b, s, d-1, c]
    segment_start = per_segment.sum(dim=2)
    segment_end = torch.zeros_like(segment_start)
    for d in range(1, min(K, T) + 1):
        segment_end[:, d - 1:] += per_segment[:, :T - d + 1, d - 1]
    transition = marginals[:, 1:, 1:].sum(dim=1).transpose(-1, -2)  # (B, K, C_src, C_dst)
    last = segment_end.gather(1, (lengths - 1)[:, None, None].expand(-1, 1, C))[:, 0]
    return Posterior(log_z, segment_start, segment_end, transition, per_segment.sum(dim=1),
                     segment_start[:, 0].clone(), last)
