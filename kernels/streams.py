"""Independent sweeps side by side on one GPU.

A sweep runs one program per sequence, so with a few sequences it keeps a
few of the GPU's multiprocessors busy, and a second sweep that does not
depend on the first runs as fast beside it as alone when it is launched on
another stream. :func:`beside` launches a block of work on the device's side
stream (created once per device) after everything the current stream has
queued; :func:`join` makes the current stream wait for what the side stream
has queued so far. Off CUDA (Triton's interpreter on CPU tensors) both do
nothing and the work runs in order.

Two streams sharing tensors need two kinds of care. Order: the side
stream's work waits for its inputs (what the current stream queued before
:func:`beside`), and the current stream for the side stream's results
(:func:`join`, before it reads them). Memory: PyTorch's caching allocator
hands a freed block to its own stream's next allocation at once, so a
tensor one stream allocated and the other uses is recorded on the other
(`Tensor.record_stream`): :func:`beside` records what the side stream reads,
:func:`join` what the current stream will read of the side stream's.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

_SIDE: dict[torch.device, torch.cuda.Stream] = {}


def side_stream(device: torch.device) -> torch.cuda.Stream | None:
    """`device`'s side stream (created on first use), None off CUDA."""
    if device.type != "cuda":
        return None
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    if device not in _SIDE:
        _SIDE[device] = torch.cuda.Stream(device=device)
    return _SIDE[device]


@contextlib.contextmanager
def beside(device: torch.device, reads: Iterable[torch.Tensor] = ()) -> Iterator[None]:
    """Launch the block's work on `device`'s side stream, after everything
    the current stream has queued; `reads`: the current stream's tensors it
    reads (recorded on the side stream)."""
    side = side_stream(device)
    if side is None:
        yield
        return
    side.wait_stream(torch.cuda.current_stream(side.device))
    for t in reads:
        t.record_stream(side)
    with torch.cuda.stream(side):
        yield


def join(device: torch.device, results: Iterable[torch.Tensor] = ()) -> None:
    """Make the current stream wait for what `device`'s side stream has
    queued so far; `results`: the side stream's tensors that the current
    stream will read (recorded on it)."""
    side = side_stream(device)
    if side is None:
        return
    current = torch.cuda.current_stream(side.device)
    current.wait_stream(side)
    for t in results:
        t.record_stream(current)
