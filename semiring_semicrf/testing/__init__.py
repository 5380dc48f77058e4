"""Ground truth and checks for semirings: brute force over every segmentation
of tiny problems (:func:`enumerate_structures`, whose `.reduce(semiring)` runs
any semiring by its definition) and the semiring laws
(:func:`check_semiring`)."""
from .brute_force import Enumeration, enumerate_segmentations, enumerate_structures
from .laws import check_semiring

__all__ = ["Enumeration", "enumerate_segmentations", "enumerate_structures", "check_semiring"]
