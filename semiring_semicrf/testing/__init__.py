"""Ground truth for tests: explicit enumeration of all segmentations."""
from .brute_force import Enumeration, enumerate_segmentations, enumerate_structures

__all__ = ["Enumeration", "enumerate_segmentations", "enumerate_structures"]
