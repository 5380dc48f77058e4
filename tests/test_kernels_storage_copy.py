"""The storage-copy kernel (kernels/storage_copy.py) against its torch reference.

On CPU tensors it runs through Triton's interpreter (conftest.py sets
``TRITON_INTERPRET=1`` without CUDA); on a GPU (marked ``gpu``) compiled.
The compiled rung uses it to keep each block's saved activations
(tests/test_compiled.py checks the gradients through it on CUDA).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from semiring_semicrf.kernels import storage_copy  # noqa: E402
from semiring_semicrf.kernels.common import INTERPRETED  # noqa: E402

DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(
               not INTERPRETED, reason="the kernel runs on CPU tensors only under TRITON_INTERPRET=1")),
           pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
               not torch.cuda.is_available(), reason="needs CUDA")])]
DTYPES = (torch.float32, torch.float64, torch.int64, torch.bool, torch.uint8, torch.float16)


def buffers(sizes_and_dtypes, device, seed=0):
    """Fresh random tensors of the given sizes and dtypes (bytes not a multiple of 4 included)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, dtype in sizes_and_dtypes:
        x = torch.randint(0, 255, (n,), generator=g, dtype=torch.int64)
        out.append((x > 127 if dtype == torch.bool else x.to(dtype)).to(device))
    return out


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=8, deadline=None)
@given(layout=st.lists(st.tuples(st.integers(0, 2 * storage_copy.WORDS + 7), st.sampled_from(DTYPES)),
                       max_size=6), seed=st.integers(0, 2 ** 16))
def test_gather_and_scatter_equal_the_torch_reference(layout, seed, device):
    """Gathered bytes equal the reference's at every storage's offset (padding
    aside); scattered back over zeroed storages, every byte is restored."""
    tensors = buffers(layout, device, seed)
    storages = [t.untyped_storage() for t in tensors]
    want = [t.clone() for t in tensors]
    copier = storage_copy.FlatStorages(storages)
    flat, reference = copier.gather(), storage_copy.gather_reference(storages)
    offsets, total = storage_copy.layout(storages)
    assert flat.shape == reference.shape == (total,) and all(o % storage_copy.ALIGN == 0 for o in offsets)
    for s, o in zip(storages, offsets):
        assert torch.equal(flat[o:o + s.nbytes()], reference[o:o + s.nbytes()])
    for t in tensors:
        t.zero_()
    copier.scatter(flat)
    assert all(torch.equal(t, w) for t, w in zip(tensors, want))
    for t in tensors:
        t.zero_()
    storage_copy.scatter_reference(storages, reference)
    assert all(torch.equal(t, w) for t, w in zip(tensors, want))


def test_scatter_refuses_a_flat_buffer_of_another_layout():
    storages = [t.untyped_storage() for t in buffers([(5, torch.float32)], "cpu")]
    copier = storage_copy.FlatStorages(storages)
    with pytest.raises(ValueError, match=r"flat must be \(32,\) uint8"):
        copier.scatter(torch.zeros(20, dtype=torch.uint8))
