"""The backend ladder: one recurrence per rung, one small contract for all.

Rungs, slowest and plainest first:

- ``"reference"`` (:mod:`.reference`): the generic streaming scan over any
  semiring, the recurrence in its plainest form. It implements every query,
  on structured and explicit potentials, on any device.
- ``"torch"`` (:mod:`.torch_sweeps`): the Log sweeps in PyTorch, row by row
  without autograd (structured potentials).
- ``"compiled"`` (:mod:`.compiled`): the generic scan of any semiring,
  compiled by torch.compile and replayed as CUDA graphs (CUDA under "auto";
  the CPU when named).
- ``"triton"`` (:mod:`.triton`, the kernels of ``semiring_semicrf.kernels``):
  the Log sweeps and the Max sweep on CUDA (structured potentials, `(C, C)`
  transitions, float32).

The contract (:class:`Backend`), on prepared potentials (a
:class:`~semiring_semicrf.factors.Factors`, or explicit edges for the
reference):

- ``inside(prepared, low_memory=False) -> (log_z (B,), saved)``: the Log
  forward sweep; ``saved`` is whatever ``outside`` needs;
- ``outside(prepared, saved) -> Posterior``: the Log backward sweep and its
  expected counts (gradients and marginals all follow from them);
- ``viterbi(prepared) -> (score (B,), labels (B, T) int64, starts (B, T) bool)``;
- ``kbest(prepared, k) -> (scores (k, B), labels (k, B, T), starts (k, B, T))``;
- ``sample(prepared, n, generator) -> (labels (n, B, T), starts (n, B, T))``;
- ``scan(prepared, semiring) -> semiring.extract(result)``: the generic scan
  of any semiring (`prepared` a tuple of potential sets), differentiable by
  block checkpointing.

Labels are -1 and starts False past each length. None of the first five
builds an autograd graph over positions.

A rung implements some queries itself (:attr:`Backend.queries`) and hands the
others to the rung below. ``backend="auto"`` takes the highest rung that can
run the potentials (Triton on CUDA when it imports, then the compiled scan
on CUDA, else torch, else the reference); naming a rung starts there. Anything a rung cannot run is routed
down the ladder, never computed approximately; only a rung named explicitly
that cannot run the potentials at all raises.
"""
from __future__ import annotations

from ..posterior import Posterior
from .base import QUERIES, Backend
from .compiled import CompiledBackend
from .reference import ReferenceBackend
from .torch_sweeps import TorchBackend
from .triton import TritonBackend

BACKEND_NAMES = ("auto", "triton", "compiled", "torch", "reference")

#: Highest rung first.
LADDER: tuple = (TritonBackend(), CompiledBackend(), TorchBackend(), ReferenceBackend())
_BY_NAME = {rung.name: rung for rung in LADDER}

__all__ = ["Backend", "Posterior", "BACKEND_NAMES", "LADDER", "QUERIES", "check_name", "select", "get", "resolve",
           "triton_unsupported_reason"]


def check_name(backend: str) -> str:
    """Raise ValueError unless `backend` is one of :data:`BACKEND_NAMES`."""
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    return backend


def select(backend: str, potentials, query: str, **options) -> Backend:
    """The rung that answers `query` (one of :data:`QUERIES`) for these
    potentials, starting the ladder at `backend` ("auto": the top).

    `options` are the query's arguments that matter to the choice (`k` for
    "kbest"). Raises ValueError for an unknown name, or when a rung named
    explicitly cannot run these potentials at all (no CUDA, a dtype or an
    option it does not take)."""
    check_name(backend)
    if query not in QUERIES:
        raise ValueError(f"query must be one of {QUERIES}, got {query!r}")
    requested = backend != "auto"
    start = 0 if backend == "auto" else LADDER.index(_BY_NAME[backend])
    if requested:
        why_not = LADDER[start].unsupported_reason(potentials, requested=True)
        if why_not is not None:
            raise ValueError(f"backend={backend!r} cannot run these potentials: {why_not}")
    for rung in LADDER[start:]:
        if rung.answers(potentials, query, requested=requested and rung is LADDER[start], **options):
            return rung
    raise AssertionError("the reference rung answers every query")


def get(name: str, potentials) -> Backend:
    """The rung that runs the Log sweeps (`inside`/`outside`) of these
    potentials when `name` is asked for."""
    return select(name, potentials, "log")


def resolve(backend: str, potentials) -> str:
    """The name of the rung that runs the Log sweeps (see :func:`get`)."""
    return get(backend, potentials).name


def triton_unsupported_reason(potentials) -> str | None:
    """None if the Triton kernels run these potentials under `"auto"`, else why not."""
    return _BY_NAME["triton"].unsupported_reason(potentials)
