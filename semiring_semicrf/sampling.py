"""Exact sampling of segmentations: forward filtering, backward sampling
(:mod:`semiring_semicrf.backends.reference.sample` documents the algorithm)."""
from __future__ import annotations

import torch

from . import backends
from .potentials import Potentials, require_potentials


@torch.compiler.disable(reason="sampling walks the sequences on the host (their lengths and the draws decide the "
                                "steps); it runs eagerly, as a graph break, and fullgraph=True cannot hold it")
def sample(potentials: Potentials, num_samples: int, generator: torch.Generator | None = None,
           backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `num_samples` exact samples of every sequence. Under
    `torch.compile` it runs eagerly (a graph break; `fullgraph=True` raises
    and names the reason).

    Args:
        potentials: :class:`~semiring_semicrf.SemiMarkovPotentials` or
            :class:`~semiring_semicrf.EdgePotentials`.
        num_samples: `N >= 1`.
        generator: a `torch.Generator` on the potentials' device (the same
            GPU), for reproducible draws (default: torch's global generator).
        backend: "auto", "triton", "torch" or "reference".

    Returns:
        `(labels (N, B, T) int64, starts (N, B, T) bool)`; labels -1 and
        starts False past each length, and everywhere for a sequence without
        any allowed segmentation (log Z = -inf).
    """
    require_potentials(potentials)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        where = generator.device  # on a GPU, the potentials' GPU: cuda:1 is not cuda:0
        if where.type != potentials.device.type or where.index not in (None, potentials.device.index):
            raise ValueError(f"generator is on {generator.device} but the potentials are on {potentials.device}")
    rung = backends.select(backend, potentials, "sample")
    return rung.sample(potentials.prepare(), num_samples, generator)
