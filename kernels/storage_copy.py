"""Many small buffers copied into one flat byte buffer and back, in one launch each way.

The compiled rung keeps each block's saved activations
(:class:`semiring_semicrf.backends.compiled._Tape`): the storages its
compiled steps' autograd graph saved, a few hundred of a few KB each,
copied out after every replay of the block's CUDA graph and back in before
its backward. As torch ops (`torch.cat` of the storages, then
`torch._foreach_copy_` back) those copies took 5.1 and 2.5 us a position at
(B, T, K, C) = (4, 1000, 32, 24) on an H200, a fifth of the forward+backward
(`benchmarks/gpu_compiled.py`): batched copies of tiny tensors. Here one
program copies a chunk of one buffer, its address read from a table, so a
block's few hundred buffers are one launch.

:class:`FlatStorages` holds the table; :func:`gather_reference` and
:func:`scatter_reference` are the same copies as torch ops, which the CPU
(no interpreter) runs and the tests compare the kernel with.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Bytes between the starts of two buffers in the flat buffer (16: aligned word copies).
ALIGN = 16
#: 4-byte words a program copies.
WORDS = 1024


@triton.jit
def copy_storages_kernel(addresses, nbytes, offsets, flat, TO_FLAT: tl.constexpr, WORDS: tl.constexpr):
    """Program `(i, c)`: the `c`-th chunk of `WORDS` 4-byte words of buffer
    `i` (at the int64 address `addresses[i]`, `nbytes[i]` bytes) to or from
    `flat[offsets[i]:]` (`TO_FLAT`), and chunk 0 also the last `nbytes % 4`
    bytes. Buffers start 4-byte aligned (allocations) and offsets are
    multiples of :data:`ALIGN`."""
    i = tl.program_id(0)
    n = tl.load(nbytes + i)
    address = tl.load(addresses + i)
    flat_i = flat + tl.load(offsets + i)
    own_words = address.to(tl.pointer_type(tl.int32))
    flat_words = flat_i.to(tl.pointer_type(tl.int32), bitcast=True)
    w = tl.program_id(1) * WORDS + tl.arange(0, WORDS)
    in_words = w < n // 4
    if TO_FLAT:
        tl.store(flat_words + w, tl.load(own_words + w, mask=in_words), mask=in_words)
    else:
        tl.store(own_words + w, tl.load(flat_words + w, mask=in_words), mask=in_words)
    if tl.program_id(1) == 0:
        own_bytes = address.to(tl.pointer_type(tl.uint8))
        b = (n // 4) * 4 + tl.arange(0, 4)
        in_tail = b < n
        if TO_FLAT:
            tl.store(flat_i + b, tl.load(own_bytes + b, mask=in_tail), mask=in_tail)
        else:
            tl.store(own_bytes + b, tl.load(flat_i + b, mask=in_tail), mask=in_tail)


def as_bytes(storage) -> torch.Tensor:
    """`storage` (an untyped storage) as a `(nbytes,)` uint8 tensor (no copy)."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def layout(storages) -> tuple[list[int], int]:
    """Each storage's offset in the flat buffer (multiples of :data:`ALIGN`)
    and the flat buffer's bytes."""
    offsets, total = [], 0
    for s in storages:
        offsets.append(total)
        total += -(-s.nbytes() // ALIGN) * ALIGN
    return offsets, total


def gather_reference(storages) -> torch.Tensor:
    """:meth:`FlatStorages.gather` as torch ops."""
    offsets, total = layout(storages)
    flat = torch.zeros(total, dtype=torch.uint8, device=storages[0].device if storages else None)
    for s, offset in zip(storages, offsets):
        flat[offset:offset + s.nbytes()] = as_bytes(s)
    return flat


def scatter_reference(storages, flat: torch.Tensor) -> None:
    """:meth:`FlatStorages.scatter` as torch ops."""
    offsets, _ = layout(storages)
    views = [as_bytes(s) for s in storages]
    if views:
        torch._foreach_copy_(views, [flat[o:o + v.numel()] for o, v in zip(offsets, views)])


class FlatStorages:
    """Storages (untyped, on one device; a storage starts where its
    allocation does, so at least 4-byte aligned) and where each lies
    in a flat uint8 buffer of :attr:`nbytes`: :meth:`gather` copies them
    into a new one, :meth:`scatter` back. Holds their addresses, not the
    storages: the caller keeps them alive. Make it outside a CUDA graph's
    capture (its table is copied to the device)."""

    def __init__(self, storages):
        self.count = len(storages)
        self.device = storages[0].device if storages else torch.device("cpu")
        offsets, self.nbytes = layout(storages)
        sizes = [s.nbytes() for s in storages]
        self.table = torch.tensor([[s.data_ptr() for s in storages], sizes, offsets], dtype=torch.int64,
                                  device=self.device)
        self.chunks = max([-(-(n // 4) // WORDS) for n in sizes] + [1])

    def _launch(self, flat: torch.Tensor, to_flat: bool) -> None:
        if self.count:
            addresses, sizes, offsets = self.table
            copy_storages_kernel[(self.count, self.chunks)](addresses, sizes, offsets, flat, TO_FLAT=to_flat,
                                                             WORDS=WORDS, num_warps=4)

    def gather(self) -> torch.Tensor:
        """A new `(nbytes,)` uint8 tensor holding every storage's bytes."""
        flat = torch.empty(self.nbytes, dtype=torch.uint8, device=self.device)
        self._launch(flat, True)
        return flat

    def scatter(self, flat: torch.Tensor) -> None:
        """Write `flat` (from :meth:`gather`) back into the storages."""
        if flat.dtype != torch.uint8 or flat.shape != (self.nbytes,) or flat.device != self.device:
            raise ValueError(f"flat must be ({self.nbytes},) uint8 on {self.device}; got {tuple(flat.shape)} "
                             f"{flat.dtype} on {flat.device}")
        self._launch(flat, False)
