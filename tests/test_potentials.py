"""Validation of potentials: clear errors naming the argument, before any scan."""
import pytest
import torch

from semiring_semicrf import SemiMarkovPotentials, semimarkov_scan

B, T, K, C = 2, 5, 3, 4


def good(**overrides):
    args = dict(scores=torch.randn(B, T, C), transition=torch.randn(C, C), duration=torch.randn(K, C))
    args.update(overrides)
    return args


@pytest.mark.parametrize("name,value,match", [
    ("scores", torch.randn(B, T), r"scores must have 3 dimensions"),
    ("scores", torch.randn(B, 0, C), r"scores must have shape \(B, T, C\) with T >= 1"),
    ("transition", torch.randn(C, C + 1), r"transition must have shape \(C, C\) or \(K, C, C\) = \(4, 4\)"),
    ("transition", torch.randn(K + 1, C, C), r"transition must have shape \(K, C, C\) = \(3, 4, 4\)"),
    ("duration", torch.randn(K, C + 1), r"duration must have shape \(K, C\) = \(3, 4\)"),
    ("duration", torch.randn(0, C), r"K >= 1"),
    ("duration", torch.randn(K), r"duration must have 2 dimensions"),
    ("start", torch.randn(C + 1), r"start must have shape \(C,\) = \(4,\)"),
    ("end", torch.randn(1, C), r"end must have shape \(C,\)"),
    ("start_scores", torch.randn(B, T, C + 1), r"start_scores must have shape \(B, T, C\) = \(2, 5, 4\)"),
    ("end_scores", torch.randn(B + 1, T, C), r"end_scores must have shape \(B, T, C\)"),
    ("lengths", torch.tensor([T, 0]), r"lengths must lie in \[1, T\] = \[1, 5\]"),
    ("lengths", torch.tensor([T + 1, 2]), r"lengths must lie in \[1, T\]"),
    ("lengths", torch.tensor([T, 2, 1]), r"lengths must have shape \(B,\) = \(2,\)"),
    ("transition", torch.randn(C, C, dtype=torch.float64), r"transition has dtype torch.float64 but scores"),
    ("duration", torch.randn(K, C, device="meta"), r"duration is on meta but scores is on cpu"),
    ("scores", torch.full((B, T, C), float("nan")), r"scores contains NaN"),
    ("transition", torch.full((C, C), float("nan")), r"transition contains NaN"),
])
def test_bad_values_raise_value_error_naming_the_argument(name, value, match):
    with pytest.raises(ValueError, match=match):
        SemiMarkovPotentials(**good(**{name: value}))


@pytest.mark.parametrize("name,value,match", [
    ("scores", [[1.0]], r"scores must be a torch.Tensor, got list"),
    ("scores", torch.ones(B, T, C, dtype=torch.int64), r"scores must be a floating-point tensor"),
    ("lengths", torch.tensor([5.0, 2.0]), r"lengths must have an integer dtype"),
    ("lengths", "5", r"lengths must be a 1-D integer tensor"),
])
def test_bad_kinds_raise_type_error(name, value, match):
    with pytest.raises(TypeError, match=match):
        SemiMarkovPotentials(**good(**{name: value}))


def test_nan_passes_through_without_validation():
    scores = torch.randn(B, T, C)
    scores[1, 0, 0] = float("nan")
    out = semimarkov_scan(SemiMarkovPotentials(**good(scores=scores), validate_args=False))
    assert torch.isfinite(out[0]) and torch.isnan(out[1])


def test_nan_in_padding_is_ignored():
    """Positions past a length are not part of the model."""
    args = good()
    clean = SemiMarkovPotentials(**args, lengths=torch.tensor([T, 2]))
    args["scores"] = args["scores"].clone()
    args["scores"][1, 3:] = float("nan")
    padded = SemiMarkovPotentials(**args, lengths=torch.tensor([T, 2]), validate_args=False)
    torch.testing.assert_close(semimarkov_scan(padded), semimarkov_scan(clean))


def test_low_precision_inputs_are_upcast_to_float32():
    p = SemiMarkovPotentials(**{k: v.to(torch.bfloat16) for k, v in good().items()})
    assert p.dtype == torch.float32 and semimarkov_scan(p).dtype == torch.float32
    mixed = SemiMarkovPotentials(**good(scores=torch.randn(B, T, C, dtype=torch.float16)))
    assert mixed.dtype == torch.float32


def test_lengths_default_to_T_and_accept_lists():
    assert SemiMarkovPotentials(**good()).lengths.tolist() == [T, T]
    assert SemiMarkovPotentials(**good(), lengths=[3, 1]).lengths.tolist() == [3, 1]


def test_edges_validation():
    with pytest.raises(ValueError, match=r"edge must have shape \(B, T, K\+1, C, C\)"):
        SemiMarkovPotentials.from_edges(torch.randn(B, T, 1, C, C))
    with pytest.raises(ValueError, match="edge must have 5 dimensions"):
        SemiMarkovPotentials.from_edges(torch.randn(B, T, C, C))


def test_zero_centring_is_exact():
    """The removed mean comes back as a duration term: w is the raw segment sum."""
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 3 + 7
    p = SemiMarkovPotentials(scores, torch.zeros(C, C, dtype=torch.float64), torch.zeros(K, C, dtype=torch.float64),
                             lengths=torch.tensor([T, 3]))
    w = p.segment_log_potentials()
    for b, length in enumerate(p.lengths.tolist()):
        for s in range(length):
            for d in range(1, K + 1):
                if s + d <= length:
                    torch.testing.assert_close(w[b, s, d - 1], scores[b, s:s + d].sum(0))


BAD_VALUES = [(name, bad) for name in ("scores", "transition", "duration", "start", "end", "start_scores",
                                       "end_scores") for bad in ("nan", "inf")] + [("scores", "-inf")]


@pytest.mark.parametrize("name,bad", BAD_VALUES)
def test_every_bad_value_of_every_potential_is_named(name, bad):
    """NaN or +inf in any potential (and -inf in the scores), inside the
    lengths, raises naming the argument, whichever entry holds it; the same
    value in the padding is ignored."""
    args = good(start=torch.randn(C), end=torch.randn(C), start_scores=torch.randn(B, T, C),
                end_scores=torch.randn(B, T, C))
    value = args[name].clone()
    index = (1, 1, C - 1) if value.dim() == 3 else (-1,) * value.dim()
    value[index] = float(bad)
    args[name] = value
    word = {"nan": "NaN", "inf": r"\+inf", "-inf": "-inf"}[bad]
    with pytest.raises(ValueError, match=rf"^{name} contains {word}"):
        SemiMarkovPotentials(**args)
    if value.dim() == 3:
        SemiMarkovPotentials(**args, lengths=torch.tensor([T, 1]))  # position 1 of sequence 1 is padding


def test_validation_reads_the_device_once_for_the_values_and_once_for_the_lengths():
    """Each read of a value on the host waits for a GPU: the checks of every
    potential are reduced on the device and read back together."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            HostReads.count += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    args = good(start=torch.randn(C), end=torch.randn(C), start_scores=torch.randn(B, T, C))
    for lengths, reads in ((None, 1), (torch.tensor([T, 2]), 2)):
        HostReads.count = 0
        with HostReads():
            SemiMarkovPotentials(**args, lengths=lengths)
        assert HostReads.count == reads
