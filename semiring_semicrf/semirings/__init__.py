"""Semirings: the only axis along which the scan varies."""
from .base import Semiring
from .expectation import CrossEntropySemiring, EntropySemiring, ExpectationSemiring, KLDivergenceSemiring
from .kmax import KMaxSemiring
from .real import LogSemiring, MaxSemiring, StdSemiring, logsumexp

__all__ = [
    "Semiring", "LogSemiring", "MaxSemiring", "StdSemiring", "KMaxSemiring",
    "ExpectationSemiring", "EntropySemiring", "CrossEntropySemiring", "KLDivergenceSemiring",
    "logsumexp",
]
