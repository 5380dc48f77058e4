"""semiring-semicrf: exact streaming inference for semi-Markov CRFs over any semiring."""
from .potentials import EdgePotentials, LogFactors, SemiMarkovPotentials
from .scan import ScanProgram, ScanTables, semimarkov_scan
from .semirings import (CrossEntropySemiring, EntropySemiring, ExpectationSemiring, KLDivergenceSemiring,
                        KMaxSemiring, LogSemiring, MaxSemiring, Semiring, StdSemiring)

__version__ = "0.1.0"

__all__ = [
    "SemiMarkovPotentials", "EdgePotentials", "LogFactors",
    "semimarkov_scan", "ScanProgram", "ScanTables",
    "Semiring", "LogSemiring", "MaxSemiring", "StdSemiring", "KMaxSemiring",
    "ExpectationSemiring", "EntropySemiring", "CrossEntropySemiring", "KLDivergenceSemiring",
]
