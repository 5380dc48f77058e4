"""Fuzz the inference entry points (`log_partition`, `posterior`,
`segment_marginals`, `checkpointed_scan`, and `decoding.viterbi/topk`,
`sampling.sample`, which explicit edges use directly) with malformed and
edge-case inputs; results and gradients are checked against brute force
(see `test_fuzz_harness.py` for the expectations)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from test_fuzz_harness import (
    Case,
    Raises,
    Returns,
    assert_matches,
    params,
    problems,
    reference_label_marginals,
    reference_log_z,
)

from semiring_semicrf import (
    EntropySemiring,
    KLDivergenceSemiring,
    KMaxSemiring,
    LogSemiring,
    SemiMarkovPotentials,
    StdSemiring,
)
from semiring_semicrf.autograd import checkpointed_scan, log_partition, posterior, segment_marginals
from semiring_semicrf.decoding import topk, viterbi
from semiring_semicrf.sampling import sample
from semiring_semicrf.testing import enumerate_structures


def _minus_inf_kwargs(problem) -> dict:
    """Forbid one transition pair and one start label (hard constraints)."""
    kwargs = problem.kwargs()
    kwargs["transition"][problem.pick(kwargs["transition"].shape)] = float("-inf")
    kwargs["start"][problem.pick((problem.C,))] = float("-inf")
    return kwargs


def _potentials(kind: str, problem):
    """The potentials a case feeds in, and the kwargs the oracle uses."""
    if kind == "masked":
        kwargs = _minus_inf_kwargs(problem)
    elif kind == "float16":
        kwargs = {k: (v.half() if v.is_floating_point() else v) for k, v in problem.kwargs().items()}
    else:
        kwargs = problem.kwargs()
    leaves = {k: v.requires_grad_() for k, v in kwargs.items() if v.is_floating_point()}
    return SemiMarkovPotentials(**kwargs), kwargs, leaves


def log_z_and_gradient(result, info):
    """log Z matches brute force, and d log Z / d scores = label marginals."""
    potentials, kwargs, leaves = info
    low = potentials.dtype == torch.float32
    tol = dict(rtol=1e-4, atol=1e-4) if low else {}
    oracle_kwargs = {k: (v.detach().double() if v.is_floating_point() else v) for k, v in kwargs.items()}
    assert_matches(result, reference_log_z(oracle_kwargs), **tol)
    finite = torch.isfinite(result)
    (grad,) = torch.autograd.grad(result[finite].sum(), leaves["scores"], allow_unused=True)
    expected = reference_label_marginals(SemiMarkovPotentials(**oracle_kwargs))[finite]
    if leaves["scores"].dtype == torch.float16:  # the gradient of a half leaf is half
        tol = dict(rtol=2e-3, atol=2e-3)
    assert_matches(grad[finite] if grad is not None else torch.zeros_like(expected), expected, **tol)


def posterior_matches(result, info):
    potentials, kwargs, _ = info
    oracle_kwargs = {k: (v.detach().double() if v.is_floating_point() else v) for k, v in kwargs.items()}
    assert_matches(result.log_z, reference_log_z(oracle_kwargs))
    assert_matches(result.label_marginals(), reference_label_marginals(SemiMarkovPotentials(**oracle_kwargs)))


def _call(entry_fn, kind="plain", **options):
    def call(problem):
        potentials, kwargs, leaves = _potentials(kind, problem)
        return (lambda: entry_fn(potentials, **options)), (potentials, kwargs, leaves)
    return call


def _call_on(entry_fn, value_of, **options):
    def call(problem):
        value = value_of(problem)
        return (lambda: entry_fn(value, **options)), value
    return call


def _empty_batch(entry_fn):
    def call(problem):
        kwargs = problem.kwargs()
        for name in ("scores", "start_scores", "end_scores", "lengths"):
            kwargs[name] = kwargs[name][:0]
        potentials = SemiMarkovPotentials(**kwargs)
        return (lambda: entry_fn(potentials)), None
    return call


def _empty_result(result, info):
    tensor = result.log_z if hasattr(result, "log_z") else result
    assert tensor.shape[-1 if tensor.dim() == 1 else 0] == 0, tensor.shape


def _not_potentials(entry, fn, tuples=False) -> list:
    """`tuples`: the entry point takes a tuple of potentials (the scan's
    `(p, q)` convention), so a 1-tuple is valid there."""
    one_tuple = _call_on(fn, lambda p: (p.potentials(),))

    def same_as_oracle(result, pots):
        assert_matches(result, reference_log_z({**pots[0].tensors(), "lengths": pots[0].lengths}))

    return [
        Case(entry, "potentials: raw scores tensor", _call_on(fn, lambda p: p.kwargs()["scores"]),
             Raises("potentials")),
        Case(entry, "potentials: None", _call_on(fn, lambda p: None), Raises("potentials")),
        Case(entry, "potentials: kwargs dict", _call_on(fn, lambda p: p.kwargs()), Raises("potentials")),
        Case(entry, "potentials: a 1-tuple", one_tuple,
             Returns(same_as_oracle) if tuples else Raises("potentials")),
    ]


def log_partition_cases() -> list:
    entry = "log_partition"
    good = Returns(log_z_and_gradient)
    cases = _not_potentials(entry, log_partition) + [
        Case(entry, "valid", _call(log_partition), good),
        Case(entry, "backend='torch'", _call(log_partition, backend="torch"), good),
        Case(entry, "low_memory=True", _call(log_partition, low_memory=True), good),
        Case(entry, "-inf transition and start (masks)", _call(log_partition, "masked"), good),
        Case(entry, "-inf masks, low_memory", _call(log_partition, "masked", low_memory=True), good),
        Case(entry, "float16 inputs (upcast)", _call(log_partition, "float16"), good),
        Case(entry, "explicit edges", _call_on(log_partition, lambda p: SemiMarkovPotentials.from_edges(
            p.potentials().to_edges(), torch.tensor(p.lengths))),
            Returns(lambda r, edges: assert_matches(r, torch.stack([enumerate_structures(edges, b).log_partition
                                                                      for b in range(edges.batch_size)])))),
        Case(entry, "B = 0", _empty_batch(log_partition), Returns(_empty_result)),
    ]
    for backend in ("cuda", "Torch", None, 0):
        cases.append(Case(entry, f"backend={backend!r}", _call(log_partition, backend=backend), Raises("backend")))
    cases.append(Case(entry, "backend='triton' on CPU tensors", _call(log_partition, backend="triton"),
                      Raises("backend")))
    return cases


def posterior_cases() -> list:
    entry = "posterior"
    good = Returns(posterior_matches)
    return _not_potentials(entry, posterior) + [
        Case(entry, "valid", _call(posterior), good),
        Case(entry, "low_memory=True", _call(posterior, low_memory=True), good),
        Case(entry, "-inf transition and start (masks)", _call(posterior, "masked"), good),
        Case(entry, "backend='gpu'", _call(posterior, backend="gpu"), Raises("backend")),
        Case(entry, "B = 0", _empty_batch(posterior), Returns(_empty_result)),
    ]


def segment_marginals_cases() -> list:
    entry = "segment_marginals"

    def summed_to_label_marginals(result, info):
        potentials, kwargs, _ = info
        # P(t in a segment labelled c) = sum over segments [s, s+d) covering t.
        B, T, K, C = result.shape
        covered = torch.zeros(B, T, C, dtype=torch.float64)
        for s in range(T):
            for d in range(1, K + 1):
                covered[:, s:s + d] += result[:, s, d - 1].double()[:, None]
        assert_matches(covered, reference_label_marginals(potentials))

    return _not_potentials(entry, segment_marginals) + [
        Case(entry, "valid", _call(segment_marginals), Returns(summed_to_label_marginals)),
        Case(entry, "-inf masks", _call(segment_marginals, "masked"), Returns(summed_to_label_marginals)),
        Case(entry, "B = 0", _empty_batch(segment_marginals), Returns(lambda r, i: r.shape[0] == 0 or pytest.fail())),
    ]


def checkpointed_scan_cases() -> list:
    entry = "checkpointed_scan"

    def same_as_oracle(result, info):
        potentials, kwargs, leaves = info
        assert_matches(result, reference_log_z(kwargs))

    def entropy_oracle(result, info):
        potentials = info[0]
        assert_matches(result, torch.stack([enumerate_structures(potentials, b).entropy()
                                            for b in range(potentials.batch_size)]))

    def topk_oracle(result, info):
        potentials = info[0]
        assert_matches(result, torch.stack([enumerate_structures(potentials, b).topk(3)
                                            for b in range(potentials.batch_size)], dim=1))

    cases = _not_potentials(entry, checkpointed_scan, tuples=True) + [
        Case(entry, "valid (Log)", _call(checkpointed_scan), Returns(same_as_oracle)),
        Case(entry, "Entropy semiring", _call(checkpointed_scan, semiring=EntropySemiring()), Returns(entropy_oracle)),
        Case(entry, "KMax(3) semiring", _call(checkpointed_scan, semiring=KMaxSemiring(3)), Returns(topk_oracle)),
        Case(entry, "-inf masks", _call(checkpointed_scan, "masked"), Returns(same_as_oracle)),
        Case(entry, "block_size larger than T", _call(checkpointed_scan, block_size=1000), Returns(same_as_oracle)),
        Case(entry, "block_size 1", _call(checkpointed_scan, block_size=1), Returns(same_as_oracle)),
        Case(entry, "KL with one set of potentials", _call(checkpointed_scan, semiring=KLDivergenceSemiring()),
             Raises("potentials")),
        Case(entry, "a pair for Std", _call_on(checkpointed_scan, lambda p: (p.potentials(), p.potentials()),
                                               semiring=StdSemiring()), Raises("potentials")),
        Case(entry, "semiring: string", _call(checkpointed_scan, semiring="log"), Raises("semiring")),
        Case(entry, "semiring: the class", _call(checkpointed_scan, semiring=LogSemiring), Raises("semiring")),
        Case(entry, "B = 0", _empty_batch(checkpointed_scan), Returns(_empty_result)),
    ]
    for size in (0, -2, 2.0, True, "4"):
        cases.append(Case(entry, f"block_size={size!r}", _call(checkpointed_scan, block_size=size),
                          Raises("block_size")))
    return cases




def _edges(problem):
    return SemiMarkovPotentials.from_edges(problem.potentials().to_edges(), torch.tensor(problem.lengths))


def best_score_oracle(result, potentials):
    """`(score, labels, starts)`: the score is the brute-force max."""
    assert_matches(result[0], torch.stack([enumerate_structures(potentials, b).max()
                                           for b in range(potentials.batch_size)]))


def samples_are_tilings(result, potentials):
    labels, starts = result
    lengths = potentials.lengths
    inside = torch.arange(potentials.T) < lengths[:, None]
    assert ((labels >= 0) == inside).all() and starts[..., 0].all() and not (starts & ~inside).any()


def decoding_and_sampling_cases() -> list:
    cases = []
    for entry, fn in (("decoding.viterbi", viterbi), ("decoding.topk", lambda p: topk(p, 2)),
                      ("sampling.sample", lambda p: sample(p, 2))):
        cases += [
            Case(entry, "potentials: raw scores tensor", _call_on(fn, lambda p: p.kwargs()["scores"]),
                 Raises("potentials")),
            Case(entry, "potentials: None", _call_on(fn, lambda p: None), Raises("potentials")),
        ]
    cases += [
        Case("decoding.viterbi", "explicit edges", _call_on(viterbi, _edges), Returns(best_score_oracle)),
        Case("decoding.viterbi", "-inf masks",
             _call_on(viterbi, lambda p: SemiMarkovPotentials(**_minus_inf_kwargs(p))), Returns(best_score_oracle)),
        Case("sampling.sample", "explicit edges", _call_on(lambda p: sample(p, 3), _edges),
             Returns(samples_are_tilings)),
    ]
    for k in (0, -1, 1.5, False, "2"):
        cases.append(Case("decoding.topk", f"k={k!r}", _call_on(lambda p, k=k: topk(p, k), lambda p: p.potentials()),
                          Raises("k")))
    for n in (0, -2, 2.0, True, None):
        cases.append(Case("sampling.sample", f"num_samples={n!r}",
                          _call_on(lambda p, n=n: sample(p, n), lambda p: p.potentials()), Raises("num_samples")))
    for g, name in ((3, "an int"), ("cpu", "a device string")):
        cases.append(Case("sampling.sample", f"generator: {name}",
                          _call_on(lambda p, g=g: sample(p, 2, g), lambda p: p.potentials()), Raises("generator")))
    return cases


CASES = (log_partition_cases() + posterior_cases() + segment_marginals_cases() + checkpointed_scan_cases()
         + decoding_and_sampling_cases())


@pytest.mark.parametrize("case", params(CASES))
@settings(max_examples=6)
@given(problem=problems(max_T=5))
def test_fuzz_inference(case, problem):
    case.run(problem)
