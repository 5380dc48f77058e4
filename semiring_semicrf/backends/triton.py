"""The Triton rung: the kernels of ``semiring_semicrf.kernels`` (Log inside
and outside, Viterbi, k-best, samples, Hessian-vector products, entropy,
cross-entropy and KL) on CUDA, for structured float32 potentials with a
`(C, C)` transition. With ``TRITON_INTERPRET=1`` set before the kernels are
first imported, ``backend="triton"`` also runs them on CPU tensors through
Triton's interpreter (tests; `"auto"` never picks that)."""
from __future__ import annotations

import warnings

from .base import Backend


class KBestFallbackWarning(UserWarning):
    """A k-best that the Triton rung declines (k or the tiles too large) runs
    on the reference rung instead, much more slowly (shown once per process
    by Python's default warning filter)."""


def _kernels():
    """The kernels package (ImportError when Triton is missing)."""
    import semiring_semicrf.kernels as kernels
    return kernels


class TritonBackend(Backend):
    """The Triton kernels (`inside`, `outside`, `viterbi`, `kbest`, `sample`,
    `hvp`, `information`)."""

    name = "triton"
    queries = frozenset({"log", "viterbi", "kbest", "sample", "hvp", "information"})

    def unsupported_reason(self, potentials, requested: bool = False) -> str | None:
        if potentials.is_explicit:
            return "explicit edge potentials have no factorized form"
        device = potentials.device.type
        if device == "cpu" and not requested:  # decided before importing Triton
            return "tensors are on cpu, the kernels need CUDA (or backend='triton' under TRITON_INTERPRET=1)"
        if device not in ("cpu", "cuda"):
            return f"tensors are on {potentials.device}, the kernels need CUDA"
        try:
            kernels = _kernels()
        except ImportError as exc:  # Triton not installed
            return f"Triton is not importable ({exc})"
        if device == "cpu" and not kernels.INTERPRETED:
            return ("tensors are on cpu: the kernels run on CPU tensors only through Triton's interpreter; set "
                    "TRITON_INTERPRET=1 before semiring_semicrf's kernels are first imported")
        return kernels.kernel_limits_reason(potentials)

    def query_reason(self, potentials, query: str, **options) -> str | None:
        """As the base class; "kbest" also needs `k` within the kernel's
        lanes and registers (:func:`~semiring_semicrf.kernels.kbest_limits_reason`).
        A k-best this rung could run but for `k` warns once
        (:class:`KBestFallbackWarning`): the reference scan that runs it
        instead is far slower."""
        why_not = super().query_reason(potentials, query, **options)
        if why_not is None and query == "kbest":
            why_not = _kernels().kbest_limits_reason(potentials, options["k"])
            if why_not is not None:
                warnings.warn(f"topk/KMaxSemiring on {potentials.device}: {why_not}", KBestFallbackWarning,
                              stacklevel=2)
        return why_not

    def inside(self, prepared, low_memory: bool = False):
        return _kernels().inside(prepared, low_memory)

    def log_partition(self, prepared):
        return _kernels().log_partition(prepared)

    def outside(self, prepared, saved, keep: bool = False):
        return _kernels().outside(prepared, saved, keep)

    def viterbi(self, prepared):
        return _kernels().viterbi(prepared)

    def kbest(self, prepared, k: int):
        return _kernels().kbest(prepared, k)

    def sample(self, prepared, num_samples: int, generator=None):
        return _kernels().sample(prepared, num_samples, generator)

    def hvp(self, prepared, tangent, saved=None, posterior: bool = True):
        return _kernels().hvp(prepared, tangent, saved, posterior)

    def information(self, prepared, q, kind: str, tangent=None):
        return _kernels().information(prepared, q, kind, tangent)
