"""`semimarkov_scan`: the one entry point, dispatching by semiring.

The scan is written once against `Semiring` (the reference rung,
:mod:`semiring_semicrf.backends.reference`); some semirings have a faster
specialization of the same recurrence, which `semimarkov_scan` takes for them
on structured potentials:

| semiring | path | differentiable by |
|---|---|---|
| `LogSemiring()` | Log inside sweep (:func:`~semiring_semicrf.autograd.log_partition`) | the streaming outside sweep |
| `MaxSemiring()` | Viterbi sweep | the best segmentation's parts (as `log_potential`) |
| `KMaxSemiring(k)` | k-best sweep | the k segmentations' parts |
| Entropy, CrossEntropy, KL | inside sweep with an information lane (:mod:`.information`) | dual-number HVPs of log Z |
| any other, explicit edges, `backend="reference"`/`"compiled"` | generic scan (query "scan") | block checkpointing |

The rung that runs a specialization (Triton on CUDA, the torch sweeps,
the reference) or the generic scan (compiled on CUDA, the reference) is
chosen by :mod:`semiring_semicrf.backends`;
:func:`dispatch_table` lists the choice per semiring, potentials kind and
device (`semicrf info` prints it). Only the exact shipped classes are
specialized: a subclass that changes an operation runs the generic scan.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import torch

from . import backends, information
from .autograd import log_partition
from .backends.reference import RENORM_INTERVAL, ScanProgram, ScanTables, prepare, scan
from .decoding import decoded_scores
from .potentials import Potentials, SemiMarkovPotentials
from .segmentation import Segmentation
from .semirings import (
    CrossEntropySemiring,
    EntropySemiring,
    KLDivergenceSemiring,
    KMaxSemiring,
    LogSemiring,
    MaxSemiring,
    Semiring,
)

__all__ = ["semimarkov_scan", "dispatch_table", "ScanProgram", "ScanTables", "RENORM_INTERVAL"]


def _log(pots, semiring, backend, low_memory):
    return log_partition(pots[0], backend, low_memory)


def _decoded_value(p: SemiMarkovPotentials, scores: torch.Tensor, labels, starts) -> torch.Tensor:
    """The decoded scores (:func:`~semiring_semicrf.decoding.decoded_scores`)."""
    return decoded_scores(p, scores, Segmentation._decoded(labels, starts))


def _max(pots, semiring, backend, low_memory):
    p = pots[0]
    return _decoded_value(p, *backends.select(backend, p, "viterbi").viterbi(p.factors()))


def _kmax(pots, semiring, backend, low_memory):
    p, k = pots[0], semiring.k
    return _decoded_value(p, *backends.select(backend, p, "kbest", k=k).kbest(p.factors(), k))


def _entropy(pots, semiring, backend, low_memory):
    return information.entropy(pots[0], backend)


def _cross_entropy(pots, semiring, backend, low_memory):
    return information.cross_entropy(pots[0], pots[1], backend)


def _kl(pots, semiring, backend, low_memory):
    return information.kl(pots[0], pots[1], backend)


#: Specializations by exact semiring class: `(query, run)`, `query` being
#: the backend contract's query the path rests on.
SPECIALIZED: dict = {
    LogSemiring: ("log", _log),
    MaxSemiring: ("viterbi", _max),
    KMaxSemiring: ("kbest", _kmax),
    EntropySemiring: ("information", _entropy),
    CrossEntropySemiring: ("information", _cross_entropy),
    KLDivergenceSemiring: ("information", _kl),
}


#: Backends that run the generic scan whatever the semiring.
GENERIC_BACKENDS = ("reference", "compiled")


@overload
def semimarkov_scan(potentials: Potentials | Sequence[Potentials], semiring: Semiring = ..., *, backend: str = ...,
                    low_memory: bool = ..., return_tables: Literal[False] = ...) -> torch.Tensor:
    ...


@overload
def semimarkov_scan(potentials: Potentials | Sequence[Potentials], semiring: Semiring = ..., *, backend: str = ...,
                    low_memory: bool = ..., return_tables: Literal[True]) -> tuple[torch.Tensor, ScanTables]:
    ...


def semimarkov_scan(potentials: Potentials | Sequence[Potentials], semiring: Semiring = LogSemiring(), *,
                    backend: str = "auto", low_memory: bool = False,
                    return_tables: bool = False) -> torch.Tensor | tuple[torch.Tensor, ScanTables]:
    """The semiring's sum over every segmentation, per sequence.

    Args:
        potentials: :class:`SemiMarkovPotentials` or :class:`EdgePotentials`
            (or a tuple of `semiring.num_potentials` of them, e.g. `(p, q)`
            for cross-entropy and KL).
        semiring: any :class:`Semiring`.
        backend: "auto", "triton", "compiled", "torch" or "reference" (see
            :mod:`semiring_semicrf.backends`); "reference" (eager) and
            "compiled" run the generic scan whatever the semiring.
        low_memory: Log on structured potentials: checkpoint the inside sweep
            instead of keeping its `O(B T C)` tables for the backward.
        return_tables: also return the generic scan's :class:`ScanTables`
            (`O(S B T C)`; the generic scan then runs whatever the semiring).

    Returns:
        `semiring.extract(result)`: `(B,)` for scalar semirings (log Z, the
        best score, the entropy, ...), `(k, B)` for KMax; and the tables if
        asked. Differentiable with respect to every tensor of the potentials
        (see the module docstring for how).
    """
    pots = prepare(potentials, semiring)  # checks the semiring, the potentials and their agreement
    backends.check_name(backend)
    users = potentials if isinstance(potentials, (tuple, list)) else (potentials,)
    if return_tables:
        return scan(pots, semiring, return_tables=True)
    special = SPECIALIZED.get(type(semiring))
    if special is None or backend in GENERIC_BACKENDS or pots[0].is_explicit:
        return backends.select(backend, users[0], "scan").scan(pots, semiring)
    return special[1](tuple(users), semiring, backend, low_memory)


def dispatch_table(devices: Sequence[str] | None = None) -> list:
    """`(semiring, potentials kind, device, path)` rows: what
    `semimarkov_scan(..., backend="auto")` runs on each (default devices:
    the CPU and every visible GPU)."""
    if devices is None:
        devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    kinds = (("(C, C) transition", False), ("(K, C, C) transition", True))
    names: Sequence[tuple] = (("Log", LogSemiring), ("Max", MaxSemiring), ("KMax(k)", KMaxSemiring),
                              ("Entropy, CrossEntropy, KL", EntropySemiring))
    rows = []
    for label, cls in names:
        query, _ = SPECIALIZED[cls]
        for kind, dependent in kinds:
            for device in devices:
                rung = backends.select("auto", _tiny(device, dependent), query, k=2)
                rows.append((label, kind, device, f"{rung.name} ({_describe(query)})"))
    generic = (("any semiring", "explicit edges", True), ("any other semiring", "structured", False))
    for label, kind, explicit in generic:
        for device in devices:
            rung = backends.select("auto", _tiny(device, True, explicit), "scan")
            rows.append((label, kind, device, f"{rung.name} (generic scan)"))
    return rows


def _describe(query: str) -> str:
    what: dict = {"log": "Log forward-backward", "viterbi": "Viterbi sweep", "kbest": "k-best sweep",
                  "information": "local information sweep, HVP gradients"}
    return what[query]


def _tiny(device: str, duration_dependent: bool, explicit: bool = False):
    K, C = 4, 3
    transition = torch.zeros((K, C, C) if duration_dependent else (C, C), device=device)
    p = SemiMarkovPotentials(torch.zeros(1, 8, C, device=device), transition, torch.zeros(K, C, device=device))
    return SemiMarkovPotentials.from_edges(p.to_edges()) if explicit else p

