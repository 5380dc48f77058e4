"""Exact streaming gradients and marginals.

- :func:`log_partition`: differentiable `log Z (B,)`; its backward is the
  streaming outside sweep of a backend (PyTorch or Triton).
- :func:`posterior`: the :class:`~semiring_semicrf.posterior.Posterior`
  (label, boundary, transition, duration, first/last-label marginals).
- :func:`segment_marginals`: materialized `(B, T, K, C)` segment marginals.
- :func:`checkpointed_scan`: the generic scan in any semiring, differentiable
  with memory sublinear in T (Entropy, KL, ... objectives).
"""
from .checkpointed import checkpointed_scan
from .function import LogPartition, log_partition, posterior, segment_marginals

__all__ = ["log_partition", "posterior", "segment_marginals", "checkpointed_scan", "LogPartition"]
