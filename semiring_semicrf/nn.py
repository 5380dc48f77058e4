"""`SemiMarkovCRFHead`: a semi-Markov CRF output layer for encoder features."""
from __future__ import annotations

import torch
from torch import nn

from .distribution import SemiMarkovDistribution
from .segmentation import Segmentation


class SemiMarkovCRFHead(nn.Module):
    """Segment-level output layer: a linear projection of each position's
    features to `C` label scores, and learnable transition `(C, C)`,
    duration `(K, C)`, start and end `(C,)` scores (all initialized to 0).

    Args:
        num_classes: C, the number of labels.
        max_duration: K, the longest segment.
        hidden_dim: H, the size of the encoder's features.
        backend: "auto", "torch" or "triton", for the Log and Max sweeps.

    `forward(hidden (B, T, H), lengths (B,))` returns the
    :class:`~semiring_semicrf.distribution.SemiMarkovDistribution`. Label
    scores in half precision (e.g. under autocast) are upcast to float32, and
    the structure parameters are cast to the scores' dtype.
    """

    def __init__(self, num_classes: int, max_duration: int, hidden_dim: int, backend: str = "auto"):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("max_duration", max_duration), ("hidden_dim", hidden_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.num_classes, self.max_duration, self.hidden_dim = num_classes, max_duration, hidden_dim
        self.backend = backend
        self.projection = nn.Linear(hidden_dim, num_classes)
        self.transition = nn.Parameter(torch.zeros(num_classes, num_classes))
        self.duration = nn.Parameter(torch.zeros(max_duration, num_classes))
        self.start = nn.Parameter(torch.zeros(num_classes))
        self.end = nn.Parameter(torch.zeros(num_classes))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, max_duration={self.max_duration}, hidden_dim={self.hidden_dim}, "
                f"backend={self.backend!r}")

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> SemiMarkovDistribution:
        """The distribution over segmentations given `hidden (B, T, H)` and
        `lengths (B,)` (default: all T)."""
        if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point():
            raise TypeError(f"hidden must be a floating tensor of shape (B, T, H), got "
                            f"{type(hidden).__name__ if not isinstance(hidden, torch.Tensor) else hidden.dtype}")
        if hidden.dim() != 3 or hidden.shape[-1] != self.hidden_dim:
            raise ValueError(f"hidden must have shape (B, T, H) with H = hidden_dim = {self.hidden_dim}, "
                             f"got {tuple(hidden.shape)}")
        weight = self.projection.weight
        if hidden.device != weight.device:
            raise ValueError(f"hidden is on {hidden.device} but the head's parameters are on {weight.device}")
        if hidden.dtype != weight.dtype and not torch.is_autocast_enabled(hidden.device.type):
            raise TypeError(f"hidden has dtype {hidden.dtype} but the head's parameters have {weight.dtype}; "
                            f"cast one to the other (e.g. head.to({hidden.dtype})) or run under torch.autocast")
        scores = self.projection(hidden)
        dtype = scores.dtype if scores.dtype in (torch.float32, torch.float64) else torch.float32
        return SemiMarkovDistribution(scores.to(dtype), self.transition.to(dtype), self.duration.to(dtype), lengths,
                                      self.start.to(dtype), self.end.to(dtype), backend=self.backend)

    def compute_loss(self, hidden: torch.Tensor, lengths: torch.Tensor | None, labels: Segmentation) -> torch.Tensor:
        """Mean negative log-likelihood of the gold segmentations `labels`
        (a `(B, T)` :class:`Segmentation`) over the batch; errors about the
        gold segmentations name `labels`."""
        return -self(hidden, lengths)._log_prob(labels, "labels").mean()

    @torch.no_grad()
    def decode(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> Segmentation:
        """The Viterbi segmentation `(B, T)` of each sequence."""
        return self(hidden, lengths).argmax
