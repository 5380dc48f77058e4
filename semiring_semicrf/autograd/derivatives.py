"""What the differentiable paths share: the gradients read off a Posterior,
tangent potentials, the backends' Hessian-vector products, and the mark on
a result whose further derivative is not supported.

The Hessian of `A = log Z` (per sequence) applied to a direction `v` of the
potentials is the directional derivative of the posterior: the backends'
`hvp` query runs the inside and outside sweeps on dual numbers (see
:mod:`semiring_semicrf.backends`). It is the derivative of `log_partition`'s
backward, and the gradient of entropy, cross-entropy and KL: with `theta`
all of p's potentials (the score of a segmentation is linear in them),

    H(p)     = A_p - <grad A_p, theta_p>      grad_p H = -hess(A_p) theta_p
    H(p, q)  = A_q - <grad A_p, theta_q>      grad_p = -hess(A_p) theta_q,  grad_q = grad A_q - grad A_p
    KL(p||q) = H(p, q) - H(p)                 grad_p = hess(A_p) (theta_p - theta_q)

A direction may hold anything where the model forbids a part (`-inf`): no
allowed segmentation uses that part, so its entries are taken as 0.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import backends


def direction(potentials, tensors: dict):
    """Potentials holding a direction: `tensors` by input name (missing
    ones 0), `-inf` entries 0 (see module docstring)."""
    given = {name: torch.zeros_like(t) if tensors.get(name) is None else tensors[name]
             for name, t in potentials.tensors().items()}
    return potentials.replace(**{name: torch.where(torch.isneginf(t), 0.0, t) for name, t in given.items()})


def hvp(potentials, factors, tangent, backend: str, saved=None, posterior: bool = True) -> tuple:
    """`(posterior, its tangent)` along the potentials `tangent` (see
    :meth:`~semiring_semicrf.backends.Backend.hvp`), from the rung that
    answers "hvp" starting at `backend`; the posterior may be None unless
    asked for."""
    rung = backends.select(backend, potentials, "hvp")
    with torch.no_grad():
        return rung.hvp(factors, tangent.factors(), saved, posterior)


def gradients(post, grad_log_z: torch.Tensor, names: list, needed, reuse: bool = False) -> list:
    """The gradient of `sum_b grad_log_z[b] * log_z[b]` for each named input
    (None where not `needed`), from one Posterior (or, from the tangent of a
    Posterior, the same map applied to it: a Hessian-vector product), in the
    order of `potentials.tensors()` (scores first). With `reuse` (the
    caller's last use of the Posterior) the boundary gradients scale its
    `(B, T, C)` fields in place instead of allocating new ones."""
    g = grad_log_z.to(post.segment_start.dtype)
    g3 = g[:, None, None]
    scale = torch.Tensor.mul_ if reuse else torch.mul
    out: list = []
    for name, wanted in zip(names, needed):
        if not wanted:
            out.append(None)
        elif name == "scores":
            out.append(post.label_marginals().mul_(g3))
        elif name == "start_scores":
            out.append(scale(post.segment_start, g3))
        elif name == "end_scores":
            out.append(scale(post.segment_end, g3))
        elif name == "transition":
            out.append(torch.tensordot(g, post.transition, dims=1))
        elif name == "duration":
            out.append(torch.tensordot(g, post.duration, dims=1))
        elif name == "start":
            out.append(g @ post.first)
        elif name == "end":
            out.append(g @ post.last)
        else:
            raise ValueError(f"no gradient rule for input {name!r}")
    return out


class _NoFurtherDerivative(torch.autograd.Function):
    """The identity on `outputs` whose own derivative raises: it marks
    results that a backward computed without a graph, so that
    differentiating them again fails loudly rather than dropping a term."""

    generate_vmap_rule = True

    @staticmethod
    def forward(what: str, anchors: int, *tensors):
        return tuple(t.clone() for t in tensors[anchors:])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.what = inputs[0]

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f"{ctx.what} cannot be differentiated again: it was computed with create_graph=True, "
                           "but this path implements no derivative of it. The generic scan (backend='reference') "
                           "differentiates any number of times.")


def refuse_further_derivatives(outputs: Sequence, anchors: Sequence[torch.Tensor], what: str) -> list:
    """`outputs` unchanged when no graph is being built; under
    `create_graph=True` (grad mode inside a backward), the same values tied
    to `anchors` (the inputs that require grad) through a node whose
    backward raises, naming `what`."""
    anchors = [a for a in anchors if isinstance(a, torch.Tensor) and a.requires_grad]
    present = [i for i, t in enumerate(outputs) if t is not None]
    if not (torch.is_grad_enabled() and anchors and present):
        return list(outputs)
    marked = _NoFurtherDerivative.apply(what, len(anchors), *anchors, *(outputs[i] for i in present))
    out = list(outputs)
    for i, t in zip(present, marked):
        out[i] = t
    return out
