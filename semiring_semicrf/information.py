"""Entropy, cross-entropy and KL of semi-Markov CRFs (the specialized path of
the Entropy, CrossEntropy and KL semirings on structured potentials).

Values: the backends' "information" query. A segmentation is a path of p's
backward chain (the last label, then each segment's duration given its end
and label, and the label before it given its start), so `-log p(y)` is a sum
of the surprisals of its choices, and

    H(p)     = sum over states s of P(s) H(next choice | s)
    H(p, q)  = sum over states s of P(s) E_p[-log Q(next choice | s)]
    KL(p||q) = sum over states s of P(s) KL(P(. | s) || Q(. | s))

with Q the same chain under q. Each term is a small non-negative local
quantity (no term of the size of log Z, which `log Z - <mu, theta>` would
cancel), summed in float64 by one inside sweep with an information lane
(see :mod:`semiring_semicrf.backends.torch_sweeps.lanes`; the Triton rung
does the same from the forward's tables). The error of a float32 result
scales with the result, not with log Z.

Gradients: a Hessian-vector product of log Z (the "hvp" query, dual-number
sweeps; see :mod:`semiring_semicrf.autograd.derivatives`),

    grad_p H(p)      = -hess(A_p) theta_p
    grad_p H(p, q)   = -hess(A_p) theta_q,    grad_q H(p, q) = grad A_q - grad A_p
    grad_p KL(p||q)  = hess(A_p) (theta_p - theta_q),   grad_q KL = grad A_q - grad A_p

(`A` = log Z, `theta` all of a model's potentials), so the value and the
gradient come from one formulation on every path. These are once
differentiable: a derivative of the gradient raises.

Conventions:

- `H(p, q)` and `KL(p || q)` are `+inf` where p gives positive probability
  to a segmentation that q forbids (a part q scores `-inf`, however small
  p's mass on it), on every path; their gradient there is finite but has no
  meaning.
- A sequence with no allowed segmentation under p (log Z = -inf) has
  entropy, cross-entropy and KL 0 (sums over no segmentation), with zero
  gradients; if only q has none, cross-entropy and KL are `+inf`.
"""
from __future__ import annotations

import torch

from . import backends
from .autograd import posterior
from .autograd.derivatives import direction, gradients, hvp, refuse_further_derivatives
from .posterior import Posterior
from .potentials import SemiMarkovPotentials


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


class _State:
    """What the Function's forward leaves for its backward besides tensors:
    the query, the detached models, p's posterior if the caller has it."""

    def __init__(self, kind: str, backend: str, p: SemiMarkovPotentials, q: SemiMarkovPotentials | None,
                 post: Posterior | None):
        self.kind, self.backend, self.p, self.q, self.post = kind, backend, p, q, post
        self.rung: backends.Backend | None = None  # the rung that answered
        self.saved: tuple | None = None  # its tables of p's and q's forwards
        self.tangent: SemiMarkovPotentials | None = None  # the direction of p's hvp, if p needs a gradient

    def direction(self) -> SemiMarkovPotentials:
        """The direction along which the Hessian of p's log Z gives p's
        gradient (module docstring): theta_p (entropy), theta_q
        (cross-entropy), theta_p - theta_q (KL)."""
        if self.q is None:
            return direction(self.p, self.p.tensors())  # (which takes a forbidden part's -inf as 0)
        if self.kind == "cross_entropy":
            return direction(self.p, self.q.tensors())
        other = _finite(self.q)  # then p's -inf stay -inf in the difference, and direction takes them as 0
        return direction(self.p, {name: t - other[name] for name, t in self.p.tensors().items()})


class Information(torch.autograd.Function):
    """`kind` of p (and q), differentiable w.r.t. both (see module docstring).

    `apply(state, *p_tensors, *q_tensors)`: the tensors of `state.p` and
    `state.q` (`tensors().values()` in order), which autograd tracks."""

    @staticmethod
    def forward(state: _State, *tensors):
        n = len(state.p.tensors())
        state.p = state.p.detached(tensors[:n])
        state.q = None if state.q is None else state.q.detached(tensors[n:])
        state.rung = backends.select(state.backend, state.p, "information")
        with torch.no_grad():
            # p's gradient is an hvp along a direction known now: a rung may start its sweeps here
            state.tangent = state.direction() if any(t.requires_grad for t in tensors[:n]) else None
            result, state.saved = state.rung.information(state.p.factors(), _factors(state.q), state.kind,
                                                         _factors(state.tangent))
        return result

    @staticmethod
    def setup_context(ctx, inputs, output):
        state, *tensors = inputs
        ctx.state = state
        ctx.save_for_backward(*tensors)

    @staticmethod
    def backward(ctx, grad):
        state = ctx.state
        p, q, kind = state.p, state.q, state.kind
        n = len(p.tensors())
        needs_p, needs_q = ctx.needs_input_grad[1:1 + n], ctx.needs_input_grad[1 + n:]
        post_p, dot = state.post, None
        saved_p, saved_q = (None, None) if state.saved is None else state.saved
        if any(needs_p):
            # p's posterior only for q's gradient (the tangent alone is zero where p has no segmentation)
            wanted = any(needs_q) and post_p is None
            tangent = state.direction() if state.tangent is None else state.tangent
            found, dot = hvp(p, p.factors(), tangent, state.backend, saved_p, posterior=wanted)
            post_p = post_p if found is None else found
        if any(needs_q) and post_p is None:
            post_p = posterior(p, state.backend)
        # where p has no segmentation the value is 0 whatever the potentials
        g = grad if post_p is None else torch.where(torch.isneginf(post_p.log_z), 0.0, grad)
        grads_p: list = [None] * n
        if dot is not None:
            grads_p = gradients(dot, g if kind == "kl" else -g, list(p.tensors()), needs_p, reuse=True)
        grads_q: list = [None] * len(needs_q)
        if any(needs_q):
            if saved_q is None:
                post_q = posterior(q, state.backend)
            else:
                with torch.no_grad():
                    post_q = state.rung.outside(q.factors(), saved_q)
            ours = gradients(post_q, g, list(q.tensors()), needs_q, reuse=True)
            theirs = gradients(post_p, g, list(q.tensors()), needs_q)  # p's posterior may be the caller's
            grads_q = [None if a is None else a - b.to(a.dtype) for a, b in zip(ours, theirs)]
        names = {"entropy": "the entropy", "cross_entropy": "the cross-entropy", "kl": "the KL divergence"}
        out = refuse_further_derivatives([*grads_p, *grads_q], [grad, *ctx.saved_tensors],
                                         f"the gradient of {names[kind]}")
        return (None, *out)


def _finite(potentials: SemiMarkovPotentials) -> dict:
    """The potentials' tensors with `-inf` (a forbidden part) as 0."""
    return {name: torch.where(torch.isneginf(t), 0.0, t) for name, t in potentials.tensors().items()}


def _factors(potentials: SemiMarkovPotentials | None):
    return None if potentials is None else potentials.factors()


def query(kind: str, p: SemiMarkovPotentials, q: SemiMarkovPotentials | None, backend: str,
          post: Posterior | None) -> torch.Tensor:
    """`kind` of p (and q, already checked by :func:`check_compatible`), with
    a gradient when either requires one."""
    models = [p] if q is None else [p, q]
    if not any(tracks_grad(m) for m in models):
        with torch.no_grad():
            return backends.select(backend, p, "information").information(p.factors(), _factors(q), kind)[0]
    tensors = [t for m in models for t in m.tensors().values()]
    return Information.apply(_State(kind, backend, p, q, post), *tensors)


def entropy(p: SemiMarkovPotentials, backend: str = "auto") -> torch.Tensor:
    """`H(p) (B,)` in nats (0 where p has no segmentation)."""
    return query("entropy", p, None, backend, None)


def cross_entropy(p: SemiMarkovPotentials, q: SemiMarkovPotentials, backend: str = "auto",
                  post: Posterior | None = None) -> torch.Tensor:
    """`H(p, q) = -E_p[log q(y)]` `(B,)` in nats: `+inf` where p gives mass
    to a segmentation q forbids, 0 where p has no segmentation. `post`: p's
    posterior, if computed (reused by the gradient with respect to q)."""
    check_compatible(p, q)
    return query("cross_entropy", p, q, backend, post)


def kl(p: SemiMarkovPotentials, q: SemiMarkovPotentials, backend: str = "auto",
       post: Posterior | None = None) -> torch.Tensor:
    """`KL(p || q) = E_p[log p(y) - log q(y)]` `(B,)` in nats: `+inf` where p
    gives mass to a segmentation q forbids, 0 where p has no segmentation.
    `post`: p's posterior, if computed (reused by the gradient with respect
    to q)."""
    check_compatible(p, q)
    return query("kl", p, q, backend, post)
