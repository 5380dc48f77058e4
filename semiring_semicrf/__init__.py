"""semiring-semicrf: exact streaming inference for semi-Markov CRFs over any semiring.

The public API is re-exported here; the implementation lives in the modules
below (see the package layout in README.md).
"""
from importlib import metadata as _metadata

from .autograd import checkpointed_scan, log_partition, posterior, segment_marginals
from .distribution import SemiMarkovDistribution
from .factors import Factors
from .nn import SemiMarkovCRFHead
from .posterior import Posterior
from .potentials import EdgePotentials, LogFactors, SemiMarkovPotentials
from .scan import ScanProgram, ScanTables, semimarkov_scan
from .segmentation import Segmentation
from .semirings import (
    CrossEntropySemiring,
    EntropySemiring,
    ExpectationSemiring,
    KLDivergenceSemiring,
    KMaxSemiring,
    LogSemiring,
    MaxSemiring,
    Semiring,
    StdSemiring,
)

try:  # one source of truth: the installed metadata, i.e. pyproject.toml's [project] version
    __version__: str = _metadata.version("semiring-semicrf")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "SemiMarkovPotentials", "EdgePotentials", "Factors", "LogFactors",
    "semimarkov_scan", "ScanProgram", "ScanTables",
    "log_partition", "posterior", "segment_marginals", "checkpointed_scan", "Posterior",
    "SemiMarkovDistribution", "Segmentation", "SemiMarkovCRFHead",
    "Semiring", "LogSemiring", "MaxSemiring", "StdSemiring", "KMaxSemiring",
    "ExpectationSemiring", "EntropySemiring", "CrossEntropySemiring", "KLDivergenceSemiring",
]
