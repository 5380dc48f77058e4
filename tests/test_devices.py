"""Any GPU of a machine: every backend call runs on the device of its tensors.

The device guard of :mod:`semiring_semicrf.backends.base` wraps every
contract method of every rung (a public method taking `prepared` first) in
`torch.cuda.device(<the potentials' device>)` and rejects arguments on two
GPUs. On the CPU, `torch.cuda.device` is replaced by a recorder: the guard
must be entered, with the potentials' device, before any method body runs,
for every rung of the ladder and for a rung and a query defined here. On a
machine with two GPUs (tests marked `gpu`), every public query on `cuda:1`
equals, bitwise, the same query on `cuda:0`, with the current device left at
`cuda:0`, and tensors on two GPUs give a ValueError naming both.
"""
from __future__ import annotations

import contextlib
import inspect

import pytest
import torch
from test_determinism import digests, fingerprint, potentials

from semiring_semicrf import SemiMarkovDistribution, SemiMarkovPotentials, semimarkov_scan, semirings
from semiring_semicrf.autograd import log_partition, posterior
from semiring_semicrf.backends import LADDER, Backend, base
from semiring_semicrf.backends.base import call_device
from semiring_semicrf.decoding import topk, viterbi
from semiring_semicrf.sampling import sample
from semiring_semicrf.scan import SPECIALIZED

GPU0, GPU1 = torch.device("cuda", 0), torch.device("cuda", 1)
#: The queries of the contract today; others may add more (found by signature).
KNOWN_CONTRACT = {"inside", "outside", "log_partition", "viterbi", "kbest", "sample", "hvp", "information", "scan"}


class OnDevice:
    """Stands for prepared potentials (or a generator) on `device`: the
    guard reads only `.device`."""

    def __init__(self, device: torch.device):
        self.device = device


class Entered(Exception):
    """Raised by the recording `torch.cuda.device` when its context is entered."""


class DeviceRecorder:
    """A stand-in for `torch.cuda.device`: records the devices it is called
    with and keeps the stack of contexts entered (`raise_on_enter`: stop
    there, before the guarded body runs)."""

    def __init__(self, raise_on_enter: bool = False):
        self.calls, self.stack, self.raise_on_enter = [], [], raise_on_enter

    def __call__(self, device):
        self.calls.append(device)
        return self._context(device)

    @contextlib.contextmanager
    def _context(self, device):
        if self.raise_on_enter:
            raise Entered(device)
        self.stack.append(device)
        try:
            yield
        finally:
            self.stack.pop()


class Probe(Backend):
    """A rung defined here: one contract method it overrides, one it
    inherits (`log_partition` calls `inside`), and a query the contract does
    not have (yet). Each returns the device contexts it ran under."""

    name = "probe"
    queries = frozenset({"log"})

    def __init__(self, recorder: DeviceRecorder):
        self.recorder = recorder

    def inside(self, prepared, low_memory: bool = False):
        return list(self.recorder.stack), None

    def hessian_vector(self, prepared, direction):
        return list(self.recorder.stack)

    def pair(self, prepared):
        return list(self.recorder.stack)


def contract_methods(cls: type) -> list:
    """The public methods of `cls` whose first argument after `self` is
    `prepared` (the guard's rule), read from the signatures."""
    names = []
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        parameters = list(inspect.signature(member).parameters)
        if not name.startswith("_") and parameters[1:2] == ["prepared"]:
            names.append(name)
    return names


def placeholder_arguments(method) -> list:
    """Positional placeholders for the required arguments after `prepared`
    (the body never runs when the recorder raises on enter)."""
    parameters = list(inspect.signature(method).parameters.values())[2:]
    return [None for p in parameters if p.default is inspect.Parameter.empty]


@pytest.fixture
def recorder(monkeypatch):
    recorder = DeviceRecorder()
    monkeypatch.setattr(torch.cuda, "device", recorder)
    return recorder


# -- the guard, on the CPU ------------------------------------------------------------------------------------
def test_every_rung_has_the_known_contract_methods():
    for rung in (*LADDER, Probe(DeviceRecorder())):
        assert set(contract_methods(type(rung))) >= KNOWN_CONTRACT, rung
    assert {"hessian_vector", "pair"} <= set(contract_methods(Probe))


@pytest.mark.parametrize("rung", [*LADDER, Probe(DeviceRecorder())], ids=lambda r: r.name)
def test_the_guard_is_entered_with_the_potentials_device_before_every_contract_method(rung, monkeypatch):
    recorder = DeviceRecorder(raise_on_enter=True)
    monkeypatch.setattr(torch.cuda, "device", recorder)
    names = contract_methods(type(rung))
    for name in names:
        method = getattr(rung, name)
        with pytest.raises(Entered) as entered:
            method(OnDevice(GPU1), *placeholder_arguments(method))
        assert entered.value.args == (GPU1,), name
    assert recorder.calls == [GPU1] * len(names)


def test_a_rung_defined_later_runs_its_own_and_its_inherited_methods_under_the_guard(recorder):
    probe = Probe(recorder)
    assert probe.inside(OnDevice(GPU1)) == ([GPU1], None)
    assert probe.hessian_vector(OnDevice(GPU1), direction=None) == [GPU1]
    assert probe.log_partition(OnDevice(GPU1)) == [GPU1, GPU1]  # Backend's default, then the override inside
    assert probe.pair((OnDevice(GPU1), OnDevice(GPU1))) == [GPU1]
    assert recorder.stack == []  # every context exited


def test_the_guard_is_exited_after_an_exception(recorder):
    class Failing(Probe):
        def inside(self, prepared, low_memory: bool = False):
            raise RuntimeError("inside failed")

    with pytest.raises(RuntimeError, match="inside failed"):
        Failing(recorder).inside(OnDevice(GPU1))
    assert recorder.calls == [GPU1] and recorder.stack == []


def test_methods_are_wrapped_once():
    class Sub(Probe):  # inherits every method: nothing to wrap again
        pass

    assert Sub.inside is Probe.inside
    assert Probe.inside.__wrapped__.__name__ == "inside"
    assert not hasattr(Probe.inside.__wrapped__, "__wrapped__")


@pytest.mark.parametrize("query, arguments", [
    ("sample", dict(prepared=OnDevice(GPU0), num_samples=1, generator=OnDevice(GPU1))),
    ("pair", dict(prepared=(OnDevice(GPU0), OnDevice(GPU1)))),
    ("hessian_vector", dict(prepared=OnDevice(GPU1), direction=OnDevice(GPU0))),
])
def test_arguments_on_two_gpus_raise_before_anything_runs(query, arguments, monkeypatch):
    recorder = DeviceRecorder(raise_on_enter=True)
    monkeypatch.setattr(torch.cuda, "device", recorder)
    with pytest.raises(ValueError, match=r"cuda:0.*cuda:1|cuda:1.*cuda:0") as error:
        getattr(Probe(recorder), query)(**arguments)
    assert f"Probe.{query}" in str(error.value) and "one device" in str(error.value)
    assert recorder.calls == []


def test_call_device_names_the_arguments(monkeypatch):
    assert call_device("q", [("prepared", OnDevice(torch.device("cpu"))), ("k", 3)]) is None
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # "cuda" without an index: the current GPU
    assert call_device("q", [("prepared", OnDevice(GPU1)), ("generator", OnDevice(torch.device("cuda")))]) == GPU1
    assert call_device("q", [("prepared", OnDevice(GPU1)), ("generator", None)]) == GPU1
    expected = r"^q: arguments on two GPUs, the potentials\[0\] on cuda:0 and the potentials\[1\] on cuda:1"
    with pytest.raises(ValueError, match=expected):
        call_device("q", [("prepared", (OnDevice(GPU0), OnDevice(GPU1)))])


def small_potentials() -> SemiMarkovPotentials:
    """B, T, K, C = 2, 9, 4, 3 on the CPU; scores and duration require grad."""
    g = torch.Generator().manual_seed(0)
    return SemiMarkovPotentials(torch.randn(2, 9, 3, generator=g).requires_grad_(), torch.randn(3, 3, generator=g),
                                torch.randn(4, 3, generator=g).requires_grad_(), lengths=[9, 5])


def test_cpu_potentials_never_enter_a_cuda_context(recorder):
    p = small_potentials()
    for backend in ("auto", "torch", "reference", "triton"):
        log_z = log_partition(p, backend=backend)
        torch.autograd.grad(log_z.sum(), [p.scores, p.duration])  # the backward's outside, too
        posterior(p, backend=backend)
        viterbi(p, backend=backend)
        topk(p, 2, backend=backend)
        sample(p, 2, torch.Generator().manual_seed(0), backend=backend)
    assert recorder.calls == []


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_the_backward_of_log_partition_goes_through_the_guard(backend, monkeypatch):
    """Autograd runs the backward in its own thread, with the gradient's
    device current: the rung's `outside` is guarded like its `inside`."""
    seen = []
    guard = base.call_device
    monkeypatch.setattr(base, "call_device", lambda where, arguments: seen.append(where) or guard(where, arguments))
    log_z = log_partition(small_potentials(), backend=backend)
    rung = type(LADDER[[r.name for r in LADDER].index(backend)]).__name__
    assert seen == [f"{rung}.inside"]
    log_z.sum().backward()
    assert seen == [f"{rung}.inside", f"{rung}.outside"]


def test_a_pair_on_two_devices_is_rejected_naming_both():
    p = potentials(False, requires_grad=False)
    q = SemiMarkovPotentials(*(torch.zeros(t.shape, device="meta") for t in (p.scores, p.transition, p.duration)),
                             validate_args=False)
    with pytest.raises(ValueError, match="potentials\\[1\\] is on meta but potentials\\[0\\] is on cpu"):
        semimarkov_scan((p, q), semirings.KLDivergenceSemiring())


# -- two GPUs -------------------------------------------------------------------------------------------------
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")

#: Constructor arguments of the semirings that need some.
SEMIRING_ARGUMENTS = {semirings.KMaxSemiring: dict(k=3)}


def every_semiring() -> list:
    """An instance of every concrete semiring that :mod:`semiring_semicrf.semirings` exports."""
    out = []
    for name in semirings.__all__:
        cls = getattr(semirings, name)
        if isinstance(cls, type) and issubclass(cls, semirings.Semiring) and not inspect.isabstract(cls):
            out.append(cls(**SEMIRING_ARGUMENTS.get(cls, {})))
    return out


def test_every_exported_semiring_is_instantiated():
    kinds = {type(s) for s in every_semiring()}
    assert kinds >= {semirings.LogSemiring, semirings.MaxSemiring, semirings.KMaxSemiring, semirings.StdSemiring,
                     semirings.EntropySemiring, semirings.CrossEntropySemiring, semirings.KLDivergenceSemiring}


@pytest.fixture
def current_device_zero():
    """The current device is cuda:0 during the test and must still be after it."""
    previous = torch.cuda.current_device()
    torch.cuda.set_device(0)
    try:
        yield
        assert torch.cuda.current_device() == 0
    finally:
        torch.cuda.set_device(previous)


@pytest.mark.gpu
@two_gpus
@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
@pytest.mark.usefixtures("current_device_zero")
def test_every_query_on_the_second_gpu_equals_the_first_bitwise(backend):
    """log Z and its gradients (and low-memory), the posterior and its
    marginals, Viterbi, top-k, samples from a generator, entropy,
    cross-entropy and KL, the distribution's queries (see
    test_determinism.digests)."""
    on_first = digests("cuda:0", backend)
    assert torch.cuda.current_device() == 0
    on_second = digests("cuda:1", backend)
    assert torch.cuda.current_device() == 0
    assert on_first == on_second, [k for k in on_first if on_first[k] != on_second[k]]


@pytest.mark.gpu
@two_gpus
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.usefixtures("current_device_zero")
def test_every_semiring_through_the_scan_on_the_second_gpu_equals_the_first_bitwise(backend):
    """Every semiring the rungs run themselves (under `auto`, those with a
    specialization; the compiled rung's are the next test)."""
    for semiring in every_semiring():
        if backend == "auto" and type(semiring) not in SPECIALIZED:
            continue
        results = scan_on_both_gpus(semiring, backend)
        assert fingerprint(results[0]) == fingerprint(results[1]), semiring


@pytest.mark.gpu
@two_gpus
@pytest.mark.usefixtures("current_device_zero")
def test_the_compiled_rung_on_the_second_gpu_equals_the_first():
    """The semirings `auto` sends to the compiled rung on CUDA (no
    specialization), to float32 rounding (inductor compiles per device)."""
    for semiring in every_semiring():
        if type(semiring) not in SPECIALIZED:
            results = scan_on_both_gpus(semiring, "auto")
            torch.testing.assert_close(results[1], results[0], equal_nan=True)


def scan_on_both_gpus(semiring, backend: str) -> list:
    """`semimarkov_scan` of the same model on cuda:0 then cuda:1 (the current
    device cuda:0 throughout), results on the CPU."""
    results = []
    for device in (GPU0, GPU1):
        p = potentials(False, device, requires_grad=False)
        q = SemiMarkovPotentials(p.scores.flip(1), p.transition.T, p.duration, lengths=p.lengths)
        pots = (p, q)[:semiring.num_potentials]
        results.append(semimarkov_scan(pots if len(pots) > 1 else p, semiring, backend=backend).cpu())
        assert torch.cuda.current_device() == 0
    return results


@pytest.mark.gpu
@two_gpus
@pytest.mark.usefixtures("current_device_zero")
def test_the_current_gpu_may_be_the_other_one():
    """Tensors on cuda:0 under `torch.cuda.device(1)` give what they give under cuda:0."""
    expected = digests("cuda:0")
    with torch.cuda.device(1):
        assert digests("cuda:0") == expected
        assert torch.cuda.current_device() == 1


@pytest.mark.gpu
@two_gpus
@pytest.mark.usefixtures("current_device_zero")
def test_tensors_on_two_gpus_raise_naming_both():
    p0 = potentials(False, "cuda:0", requires_grad=False)
    p1 = potentials(False, "cuda:1", requires_grad=False)
    both = r"cuda:0.*cuda:1|cuda:1.*cuda:0"
    with pytest.raises(ValueError, match="lengths is on cuda:1 but the potentials are on cuda:0"):
        SemiMarkovPotentials(p0.scores, p0.transition, p0.duration, lengths=p1.lengths)
    with pytest.raises(ValueError, match="transition is on cuda:1 but scores is on cuda:0"):
        SemiMarkovPotentials(p0.scores, p1.transition, p0.duration)
    with pytest.raises(ValueError, match="generator is on cuda:1 but the potentials are on cuda:0"):
        sample(p0, 2, torch.Generator("cuda:1").manual_seed(0))
    with pytest.raises(ValueError, match=both):  # the guard, for a caller of the rung itself
        LADDER[-1].sample(p0.prepare(), 2, torch.Generator("cuda:1").manual_seed(0))
    for semiring in (semirings.CrossEntropySemiring(), semirings.KLDivergenceSemiring()):
        with pytest.raises(ValueError, match=r"potentials\[1\] is on cuda:1 but potentials\[0\] is on cuda:0"):
            semimarkov_scan((p0, p1), semiring)
    d0, d1 = SemiMarkovDistribution.from_potentials(p0), SemiMarkovDistribution.from_potentials(p1)
    for query in (d0.kl, d0.cross_entropy):
        with pytest.raises(ValueError, match=both):
            query(d1)
