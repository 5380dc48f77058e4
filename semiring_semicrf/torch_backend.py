"""The pure-PyTorch backend (any device): the reference the kernels are
checked against. See :mod:`semiring_semicrf.backends` for the contract."""
from .autograd.log_sweeps import inside, outside
from .decoding import viterbi

__all__ = ["inside", "outside", "viterbi"]
