"""The Log partition as custom operators, for `torch.compile`.

Dynamo cannot trace the sweeps (Python loops over positions, whose bounds
depend on the lengths' values). Under compilation, :func:`log_partition`
calls ``semiring_semicrf::log_partition`` instead: one opaque operator with
a fake (meta) implementation, whose registered backward is
``semiring_semicrf::log_partition_backward``, also opaque. Both run the
backend contract exactly as the eager Function does (`log_partition`, then
`inside` and `outside`), so a compiled graph holds no host synchronization
of ours; the backward recomputes the inside sweep (a custom operator hands
tensors only, not a rung's tables). The potentials' value checks
(`validate_args`), which a trace skips, run in the forward operator. A
second derivative through a compiled graph is refused by `torch.compile`
itself ("does not currently support double backward"); eager
`log_partition` is twice differentiable.
"""
from __future__ import annotations

import torch

from .. import backends
from ..potentials import SemiMarkovPotentials
from .derivatives import gradients

_NAMES = ("scores", "transition", "duration", "start", "end", "start_scores", "end_scores")


def _potentials(scores, transition, duration, lengths, start, end, start_scores, end_scores,
                center: bool, validate: bool = False) -> SemiMarkovPotentials:
    """The potentials of the operators' arguments (the lengths' range, and
    with `validate` the values, are checked here, at run time: a compiled
    graph skips those host reads)."""
    return SemiMarkovPotentials(scores, transition, duration, lengths, start, end, start_scores, end_scores,
                                validate_args=validate, center=center)


@torch.library.custom_op("semiring_semicrf::log_partition", mutates_args=())
def _log_partition(scores: torch.Tensor, transition: torch.Tensor, duration: torch.Tensor, lengths: torch.Tensor,
                   start: torch.Tensor, end: torch.Tensor, start_scores: torch.Tensor | None,
                   end_scores: torch.Tensor | None, backend: str, low_memory: bool, center: bool,
                   validate: bool) -> torch.Tensor:
    p = _potentials(scores, transition, duration, lengths, start, end, start_scores, end_scores, center, validate)
    with torch.no_grad():
        return backends.get(backend, p).log_partition(p.factors())


@_log_partition.register_fake
def _(scores, transition, duration, lengths, start, end, start_scores, end_scores, backend, low_memory, center,
      validate):
    return scores.new_empty(scores.shape[0])


@torch.library.custom_op("semiring_semicrf::log_partition_backward", mutates_args=())
def _log_partition_backward(grad_log_z: torch.Tensor, scores: torch.Tensor, transition: torch.Tensor,
                            duration: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                            start_scores: torch.Tensor | None, end_scores: torch.Tensor | None, backend: str,
                            low_memory: bool, center: bool) -> list[torch.Tensor]:
    """The gradient of `sum_b grad_log_z[b] log Z_b` for each given tensor,
    in the order of `potentials.tensors()`."""
    p = _potentials(scores, transition, duration, lengths, start, end, start_scores, end_scores, center)
    rung = backends.get(backend, p)
    with torch.no_grad():
        factors = p.factors()
        _, saved = rung.inside(factors, low_memory=low_memory)
        post = rung.outside(factors, saved)
    names = list(p.tensors())
    return gradients(post, grad_log_z, names, [True] * len(names), reuse=True)


@_log_partition_backward.register_fake
def _(grad_log_z, scores, transition, duration, lengths, start, end, start_scores, end_scores, backend,
      low_memory, center):
    given = (scores, transition, duration, start, end, start_scores, end_scores)
    return [torch.empty_like(t) for t in given if t is not None]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8])
    ctx.options = inputs[8:11]  # backend, low_memory, center (the forward validated)


def _backward(ctx, grad_log_z):
    scores, transition, duration, lengths, start, end, start_scores, end_scores = ctx.saved_tensors
    grads = iter(_log_partition_backward(grad_log_z, scores, transition, duration, lengths, start, end,
                                         start_scores, end_scores, *ctx.options))
    by_name = {name: next(grads) for name, t in zip(_NAMES, (scores, transition, duration, start, end,
                                                              start_scores, end_scores)) if t is not None}
    return (by_name["scores"], by_name["transition"], by_name["duration"], None, by_name["start"], by_name["end"],
            by_name.get("start_scores"), by_name.get("end_scores"), None, None, None, None)


_log_partition.register_autograd(_backward, setup_context=_setup_context)


def log_partition(potentials: SemiMarkovPotentials, backend: str, low_memory: bool) -> torch.Tensor:
    """`log Z (B,)` through ``semiring_semicrf::log_partition``."""
    t = potentials.tensors()
    return _log_partition(t["scores"], t["transition"], t["duration"], potentials.lengths, t["start"], t["end"],
                          t.get("start_scores"), t.get("end_scores"), backend, low_memory, potentials.center,
                          potentials.validate_args)
