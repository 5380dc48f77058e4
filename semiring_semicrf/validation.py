"""Argument checks shared by every public entry point.

Each check raises a `TypeError` (wrong kind of object or dtype) or a
`ValueError` (wrong shape, range or device) that names the argument, the
expected and the given shape, before any computation runs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

#: Low-precision floats are upcast to this dtype before any scan (the prefix
#: sums and log-sum-exps need float32's mantissa at least).
UPCAST_DTYPE = torch.float32
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def as_float_tensor(name: str, value, *, ndim: int | None = None) -> torch.Tensor:
    """Check that `value` is a floating tensor (half/bfloat16 upcast to float32)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if value.dtype in _LOW_PRECISION:
        value = value.to(UPCAST_DTYPE)
    return value


def check_shape(name: str, value: torch.Tensor, expected: Sequence[int], meaning: str) -> None:
    """Raise unless `value.shape == expected`; `meaning` spells the axes."""
    if tuple(value.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {meaning} = {tuple(expected)}, got {tuple(value.shape)}")


def check_same(name: str, value: torch.Tensor, reference: torch.Tensor, ref_name: str) -> None:
    """Raise unless `value` has the dtype and device of `reference`."""
    if value.dtype != reference.dtype:
        raise ValueError(
            f"{name} has dtype {value.dtype} but {ref_name} has {reference.dtype}; "
            "pass every potential in one floating dtype")
    if value.device != reference.device:
        raise ValueError(
            f"{name} is on {value.device} but {ref_name} is on {reference.device}; "
            "put every potential on one device")


def capturing(device: torch.device) -> bool:
    """True while `device`'s current CUDA stream is being captured into a
    CUDA graph, where reading a value on the host (or copying one from it)
    is an error."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def check_capturable(validate_args: bool, device: torch.device) -> None:
    """Raise if value checks were asked for during a CUDA graph capture."""
    if validate_args and capturing(device):
        raise ValueError("validate_args=True reads the potentials' values on the host, which a CUDA graph capture "
                         "forbids; pass validate_args=False to the potentials built inside a captured region "
                         "(and check the inputs before the graph replays)")


def check_lengths(lengths, batch: int, T: int, device: torch.device) -> torch.Tensor:
    """Return `lengths` as int64 `(B,)` on `device`; default: all `T`.

    Their range is read on the host, except while `torch.compile` traces
    (the compiled operator checks it) and during a CUDA graph capture, where
    they are clamped into `[0, T]` on the device instead, so that no kernel
    reads or writes out of bounds (the caller vouches for them:
    `validate_args=False`, see :func:`check_capturable`)."""
    if lengths is None:
        return torch.full((batch,), T, dtype=torch.int64, device=device)
    if not isinstance(lengths, torch.Tensor):
        if isinstance(lengths, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in lengths):
            lengths = torch.tensor(lengths, dtype=torch.int64)
        else:
            raise TypeError(f"lengths must be a 1-D integer tensor (or list of ints), got {type(lengths).__name__}")
    if lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
        raise TypeError(f"lengths must have an integer dtype, got {lengths.dtype}")
    check_shape("lengths", lengths, (batch,), "(B,)")
    if lengths.device.type == "meta":
        raise ValueError("lengths is on the meta device, which holds no values to check; "
                         "pass lengths on the CPU or on the potentials' device")
    if lengths.device.type == device.type == "cuda" and lengths.device != device:  # two GPUs
        raise ValueError(f"lengths is on {lengths.device} but the potentials are on {device}; "
                         "pass lengths on the CPU or on the potentials' GPU")
    if capturing(device):
        if lengths.device != device:
            raise ValueError(f"lengths is on {lengths.device}; during a CUDA graph capture pass them on {device} "
                             "(a copy from the host cannot be captured)")
        return lengths.to(torch.int64).clamp(0, T)
    # Reading the values syncs with the device (once); under torch.compile the range
    # is checked where the lengths are used (the log partition's custom operator).
    if lengths.numel() and not torch.compiler.is_compiling() and bool(((lengths < 1) | (lengths > T)).any()):
        raise ValueError(
            f"lengths must lie in [1, T] = [1, {T}], got values in [{int(lengths.min())}, {int(lengths.max())}]")
    return lengths.to(device=device, dtype=torch.int64)


def _inside(value: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """`value` with the positions outside `valid` (padding) set to 0: the
    values a check must see."""
    return value if valid is None else value.masked_fill(~valid[..., None], 0.0)


def check_no_nan(name: str, value: torch.Tensor, valid: torch.Tensor | None = None) -> None:
    """Raise if `value` holds NaN or +inf (used under `validate_args`).

    Log-potentials are finite, or -inf for a forbidden move; +inf has no
    meaning (it would make the partition infinite). `valid`: for a
    per-position `(B, T, C)` input, the `(B, T)` positions inside each
    length; padding is not part of the model and may hold anything.
    """
    value = _inside(value, valid)
    where = "" if valid is None else " inside a sequence's length"
    if torch.isnan(value).any():
        raise ValueError(f"{name} contains NaN{where}")
    if torch.isposinf(value).any():
        raise ValueError(f"{name} contains +inf{where}; log-potentials must be finite, or -inf to forbid a move")


def check_potential_values(scores: torch.Tensor, named: dict, valid: torch.Tensor, per_position) -> None:
    """Raise unless the `scores (B, T, C)` are finite and the other
    potentials `named` (by name) hold no NaN or +inf, at the `(B, T)`
    positions `valid` for the per-position inputs (names in
    `per_position`): the checks of :func:`check_finite_scores` and
    :func:`check_no_nan`, reduced on the device and read back in one
    synchronization; only when something is wrong do those checks run one by
    one, to name it."""
    small = [v.detach().reshape(-1) for name, v in named.items() if name not in per_position]
    padding = ~valid[..., None]
    fine = [(scores.detach().abs() < float("inf")).logical_or_(padding).all()]  # False at NaN and +-inf
    fine += [(v < float("inf")).logical_or_(padding).all() for name, v in named.items() if name in per_position]
    if small:
        fine.append((torch.cat(small) < float("inf")).all())
    if bool(torch.stack(fine).all()):
        return
    check_finite_scores(scores, valid)
    for name, value in named.items():
        check_no_nan(name, value, valid if name in per_position else None)


def check_finite_scores(value: torch.Tensor, valid: torch.Tensor) -> None:
    """Raise unless the per-position `scores (B, T, C)` are finite at the
    `(B, T)` positions `valid` (inside each length) (used under `validate_args`).

    Scores enter through prefix sums, where an infinity would poison every
    later segment; moves are forbidden with -inf in `transition`, `duration`,
    `start`, `end`, `start_scores` or `end_scores` instead. Padding may hold
    anything (e.g. -inf from masking logits): it is never read.
    """
    check_no_nan("scores", value, valid)
    if torch.isinf(_inside(value, valid)).any():
        raise ValueError("scores contains -inf inside a sequence's length; per-position scores must be finite "
                         "there (they enter prefix sums): forbid moves with -inf in transition, duration, start, "
                         "end, start_scores or end_scores")
