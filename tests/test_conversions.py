"""`.to`, `.double()` and `.float()` on potentials and distributions.

They follow `torch.Tensor.to`'s arguments (a dtype, a device, both,
keywords, a tensor), keep the lengths int64 and `center` (and, for a
distribution, the backend and `validate_args`), and the converted model is
the same model: checked against brute force in float64.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from strategies import tiny_problems

from semiring_semicrf import EdgePotentials, SemiMarkovPotentials, semimarkov_scan
from semiring_semicrf.distribution import SemiMarkovDistribution
from semiring_semicrf.testing import enumerate_structures

F64 = torch.float64
#: Each spelling of "float64 on the CPU" that torch.Tensor.to takes.
TO_FLOAT64 = {
    "to(dtype)": lambda x: x.to(F64),
    "to(device, dtype)": lambda x: x.to("cpu", F64),
    "to(torch.device, dtype)": lambda x: x.to(torch.device("cpu"), F64),
    "to(dtype=)": lambda x: x.to(dtype=F64),
    "to(device=, dtype=)": lambda x: x.to(device="cpu", dtype=F64),
    "to(tensor)": lambda x: x.to(torch.zeros((), dtype=F64)),
    "double()": lambda x: x.double(),
}


def float32(p: SemiMarkovPotentials) -> SemiMarkovPotentials:
    return SemiMarkovPotentials(lengths=p.lengths.to(torch.int32), center=p.center,
                                **{name: t.float() for name, t in p.tensors().items()})


def brute_log_z(p) -> torch.Tensor:
    return torch.stack([enumerate_structures(p, b).log_partition for b in range(p.batch_size)])


@pytest.mark.parametrize("convert", TO_FLOAT64.values(), ids=TO_FLOAT64.keys())
@settings(deadline=None, max_examples=5)
@given(p=tiny_problems())
def test_potentials_to_float64_every_spelling(p, convert):
    p32 = float32(p)
    p64 = convert(p32)
    assert isinstance(p64, SemiMarkovPotentials) and p64.dtype == F64
    assert all(t.dtype == F64 for t in p64.tensors().values())
    assert p64.lengths.dtype == torch.int64 and torch.equal(p64.lengths, p.lengths)
    assert p64.center == p32.center and p64.duration_dependent == p.duration_dependent
    # the float32 values, exactly, as a float64 model
    torch.testing.assert_close(semimarkov_scan(p64), brute_log_z(p32), rtol=1e-12, atol=1e-12)
    back = p64.float()
    assert back.dtype == torch.float32 and back.lengths.dtype == torch.int64
    assert all(torch.equal(a, b) for a, b in zip(back.tensors().values(), p32.tensors().values()))


def test_potentials_to_keeps_center_the_extras_and_gradients():
    g = torch.Generator().manual_seed(0)
    B, T, K, C = 2, 6, 3, 2
    scores = torch.randn(B, T, C, generator=g).requires_grad_()
    p = SemiMarkovPotentials(scores, torch.randn(K, C, C, generator=g), torch.randn(K, C, generator=g),
                             torch.tensor([6, 4]), start_scores=torch.randn(B, T, C, generator=g), center=False)
    p64 = p.to(F64)
    assert not p64.center and p64.start_scores.dtype == F64 and p64.end_scores is None
    (grad,) = torch.autograd.grad(semimarkov_scan(p64).sum(), scores)  # through the conversion
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad.double(), SemiMarkovDistribution.from_potentials(p64).marginals)
    assert p.to(torch.float32) is p and p.to("cpu") is p  # nothing to convert
    assert p.to(torch.float16).dtype == torch.float32  # low precision is upcast, as at construction


def test_conversion_to_a_non_floating_dtype_is_refused():
    p = SemiMarkovPotentials(torch.randn(1, 3, 2), torch.randn(2, 2), torch.randn(2, 2))
    with pytest.raises(TypeError, match="SemiMarkovPotentials.to: .* need a floating dtype, got torch.int64"):
        p.to(torch.int64)
    with pytest.raises(TypeError, match="EdgePotentials.to: .* floating dtype"):
        SemiMarkovPotentials.from_edges(p.to_edges()).to(torch.zeros(1, dtype=torch.int32))


@pytest.mark.parametrize("convert", TO_FLOAT64.values(), ids=TO_FLOAT64.keys())
def test_edge_potentials_to_float64(convert):
    g = torch.Generator().manual_seed(1)
    p = SemiMarkovPotentials.from_edges(torch.randn(2, 5, 3, 2, 2, generator=g), torch.tensor([5, 3]))
    p64 = convert(p)
    assert isinstance(p64, EdgePotentials) and p64.dtype == F64 and p64.edge.dtype == F64
    assert p64.lengths.dtype == torch.int64 and p64.lengths.tolist() == [5, 3]
    torch.testing.assert_close(semimarkov_scan(p64), brute_log_z(p), rtol=1e-12, atol=1e-12)
    assert p64.float().dtype == torch.float32


@pytest.mark.parametrize("convert", TO_FLOAT64.values(), ids=TO_FLOAT64.keys())
def test_distribution_to_float64_keeps_backend_and_validation(convert):
    g = torch.Generator().manual_seed(2)
    B, T, K, C = 2, 5, 3, 3
    d = SemiMarkovDistribution(torch.randn(B, T, C, generator=g), torch.randn(C, C, generator=g),
                               torch.randn(K, C, generator=g), torch.tensor([5, 2], dtype=torch.int32),
                               backend="torch", validate_args=False)
    d64 = convert(d)
    assert isinstance(d64, SemiMarkovDistribution)
    assert d64.potentials.dtype == F64 and d64.lengths.dtype == torch.int64 and d64.lengths.tolist() == [5, 2]
    assert d64.backend == "torch" and d64._validate_args is False
    torch.testing.assert_close(d64.partition, brute_log_z(d.potentials), rtol=1e-12, atol=1e-12)
    assert d64.marginals.dtype == F64 and d64.float().partition.dtype == torch.float32
    assert d64.to("cpu").potentials.dtype == F64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_a_device_moves_the_lengths_too():
    g = torch.Generator().manual_seed(3)
    d = SemiMarkovDistribution(torch.randn(2, 6, 3, generator=g), torch.randn(3, 3, generator=g),
                               torch.randn(2, 3, generator=g), torch.tensor([6, 4]))
    for moved in (d.to("cuda"), d.to("cuda", F64), d.to(torch.zeros((), device="cuda"))):
        assert moved.potentials.device.type == "cuda" and moved.lengths.device.type == "cuda"
        assert moved.lengths.dtype == torch.int64
        torch.testing.assert_close(moved.partition.cpu(), d.partition.to(moved.potentials.dtype))
    back = d.to("cuda", F64).to("cpu")
    assert back.lengths.device.type == "cpu" and back.potentials.dtype == F64


def test_replace_moves_the_lengths_with_the_tensors():
    """`replace` with tensors on another device takes the lengths along (a
    benchmark moved the tensors to a GPU and kept CPU lengths, and the
    factors then mixed devices)."""
    g = torch.Generator().manual_seed(0)
    p = SemiMarkovPotentials(torch.randn(2, 5, 3, generator=g), torch.randn(3, 3, generator=g),
                             torch.randn(2, 3, generator=g), torch.tensor([5, 3]))
    moved = p.replace(**{name: t.to("meta") for name, t in p.tensors().items()})
    assert moved.lengths.device.type == "meta" and moved.device.type == "meta"
    assert p.replace(scores=p.scores + 1).lengths is p.lengths


def test_detached_keeps_everything_but_the_graph():
    """`detached` (what an autograd Function's forward keeps of its inputs)
    holds the given views detached, with the same lengths, `center` and
    `validate_args`, no factors of the original, and nothing checked or
    launched again."""
    g = torch.Generator().manual_seed(1)
    p = SemiMarkovPotentials(torch.randn(2, 5, 3, generator=g).requires_grad_(), torch.randn(3, 3, generator=g),
                             torch.randn(2, 3, generator=g), torch.tensor([5, 3]), center=False,
                             end_scores=torch.randn(2, 5, 3, generator=g), validate_args=False)
    views = [t * 1.0 for t in p.tensors().values()]
    copy = p.detached(views)
    assert list(copy.tensors()) == list(p.tensors()) and not any(t.requires_grad for t in copy.tensors().values())
    assert all(torch.equal(a, b) for a, b in zip(copy.tensors().values(), views))
    assert copy.lengths is p.lengths and copy.center is False and copy.validate_args is False
    plain = p.detached()
    assert plain.factors() is plain.factors()  # cached: nothing requires grad
    shifted = plain.detached([t + 1.0 for t in plain.tensors().values()])
    assert shifted.factors() is not plain.factors() and shifted.factors().potentials is shifted
    assert torch.equal(semimarkov_scan(copy), semimarkov_scan(p).detach())
    assert all(a is not b and torch.equal(a, b) for a, b in zip(p.detached().tensors().values(), p.tensors().values()))
    with pytest.raises(ValueError, match="expected 6 tensors"):
        p.detached(views[:2])
