"""The contract every rung of the backend ladder implements (see
:mod:`semiring_semicrf.backends`), and the device guard around it.

Device guard: every *contract method* (a public method whose first argument
after `self` is `prepared`: `inside`, `outside`, `log_partition`, `viterbi`,
`kbest`, `sample`, and any query added later, on :class:`Backend` or on a
rung) runs under `torch.cuda.device(<the potentials' device>)` when that
device is a GPU, whatever the caller's current device is: a Triton kernel
launches on the current device, so tensors on `cuda:1` with the current
device `cuda:0` would otherwise fail inside the launch. Arguments on two
different GPUs (the potentials, a `(p, q)` pair, a generator, a tensor)
raise a ValueError naming both before the method runs. The guard is applied
once per class (:meth:`Backend.__init_subclass__`), so a new rung or query
is guarded without its author doing anything.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator

import torch

#: The queries of the contract: "log" is the Log forward-backward
#: (`inside` and `outside`), the others are named after their method
#: ("scan": the generic scan of any semiring).
QUERIES = ("log", "viterbi", "kbest", "sample", "hvp", "information", "scan")

#: The quantities of the "information" query.
INFORMATION = ("entropy", "cross_entropy", "kl")


class Backend:
    """One rung of the ladder. Subclasses set `name` and `queries` (the
    queries they implement themselves) and implement those methods; a query
    they do not implement goes to the rung below. Every contract method (a
    public method taking `prepared` first) runs on the potentials' GPU,
    whatever the current device (the device guard, module docstring)."""

    name: str = ""
    queries: frozenset = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        guard_contract(cls)

    def unsupported_reason(self, potentials, requested: bool = False) -> str | None:
        """None if this rung can run these potentials at all, else why not.
        `requested`: the rung was named by the caller (not chosen by "auto")."""
        return None

    def query_reason(self, potentials, query: str, **options) -> str | None:
        """None if this rung runs `query` with these `options`, else why not."""
        return None if query in self.queries else f"the {self.name} backend does not implement {query!r}"

    def answers(self, potentials, query: str, requested: bool = False, **options) -> bool:
        """Whether this rung runs `query` on these potentials."""
        return (self.unsupported_reason(potentials, requested) is None
                and self.query_reason(potentials, query, **options) is None)

    # -- the contract ---------------------------------------------------------
    def inside(self, prepared, low_memory: bool = False):
        """`(log_z (B,), saved)`: the Log forward sweep."""
        raise NotImplementedError

    def log_partition(self, prepared):
        """`log Z (B,)` when no backward follows: the forward sweep keeping
        nothing of size T (a rung may override it with a leaner sweep)."""
        return self.inside(prepared, low_memory=True)[0]

    def outside(self, prepared, saved, keep: bool = False):
        """The :class:`~semiring_semicrf.posterior.Posterior` from `inside`'s
        `saved`. `keep`: leave `saved` usable by a later `hvp` (a rung whose
        outside consumes its tables then works on copies)."""
        raise NotImplementedError

    def viterbi(self, prepared):
        """`(score (B,), labels (B, T) int64, starts (B, T) bool)`."""
        raise NotImplementedError

    def kbest(self, prepared, k: int):
        """`(scores (k, B), labels (k, B, T) int64, starts (k, B, T) bool)`, best first."""
        raise NotImplementedError

    def sample(self, prepared, num_samples: int, generator=None):
        """`(labels (N, B, T) int64, starts (N, B, T) bool)`: exact samples."""
        raise NotImplementedError

    def hvp(self, prepared, tangent, saved=None, posterior: bool = True):
        """`(posterior, its tangent)`: the :class:`~semiring_semicrf.posterior.Posterior`
        and its directional derivative along `tangent` (the `Factors` of
        potentials holding the direction, finite): every field's derivative,
        `log_z`'s being `<grad log Z, tangent>`, the other fields each
        sequence's Hessian of log Z times the tangent (forward mode: the
        inside and outside sweeps on dual numbers). `saved`: `inside`'s, if at
        hand (a rung may reuse it). With `posterior=False` the caller needs
        the tangent only: a rung may then skip the posterior's own sweep and
        return None in its place."""
        raise NotImplementedError

    def information(self, prepared, q, kind: str, tangent=None):
        """`(value, saved)`: `value (B,)` in `prepared`'s dtype is `kind` (one
        of :data:`INFORMATION`) of the distributions of prepared `p =
        prepared` and `q`
        (None for "entropy"): `H(p)`, `H(p, q)` or `KL(p || q)`, in nats,
        with an error that scales with the result, not with log Z (each
        state's expected surprisal, summed in float64). Conventions: `+inf`
        where p gives mass to a segmentation q forbids; 0 where p has no
        segmentation. `saved`: None, or `(p's, q's)` forward as `inside`
        keeps it (q's None for "entropy"), for a later `hvp` of p and
        `outside` of q by this rung. `tangent`: None, or the `Factors` of the
        direction of that later `hvp` (the gradient's), which a rung may
        start on in this pass and keep in `saved` for an `hvp` given the same
        object."""
        raise NotImplementedError

    def scan(self, prepared: tuple, semiring):
        """`semiring.extract(result)` of the generic scan over `prepared` (the
        tuple of `semiring.num_potentials` prepared potentials), differentiable
        when they require grad."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.name} backend>"


# -- the device guard ---------------------------------------------------------
#: Set on a method wrapped by :func:`on_device` (so that nothing is wrapped twice).
GUARDED = "__device_guarded__"


def is_contract_method(name: str, member) -> bool:
    """Whether `member`, found as `name` in a class body, is a contract
    method: a public function whose first argument after `self` is
    `prepared`."""
    if name.startswith("_") or not inspect.isfunction(member) or getattr(member, GUARDED, False):
        return False
    parameters = list(inspect.signature(member).parameters)
    return len(parameters) >= 2 and parameters[1] == "prepared"


def guard_contract(cls: type) -> None:
    """Wrap every contract method that `cls` defines itself in :func:`on_device`."""
    for name, member in list(vars(cls).items()):
        if is_contract_method(name, member):
            setattr(cls, name, on_device(member))


def on_device(method: Callable) -> Callable:
    """`method(self, prepared, ...)` run under `torch.cuda.device(d)`, `d`
    the one GPU its arguments live on (:func:`call_device`); unchanged when
    they live on no GPU."""
    names = list(inspect.signature(method).parameters)[1:]

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        device = call_device(f"{type(self).__name__}.{method.__name__}", [*zip(names, args), *kwargs.items()])
        if device is None:
            return method(self, *args, **kwargs)
        with torch.cuda.device(device):
            return method(self, *args, **kwargs)

    setattr(guarded, GUARDED, True)
    return guarded


def call_device(where: str, arguments) -> torch.device | None:
    """The GPU that the `(name, value)` `arguments` of one call live on, or
    None when none is on a GPU. Values with a `device` (tensors, generators,
    prepared potentials), and tuples or lists of them, are looked at. Raises
    ValueError, naming `where` and both devices, when two GPUs appear."""
    found: tuple | None = None
    for name, device in _gpu_devices(arguments):
        if found is None:
            found = (name, device)
        elif device != found[1]:
            raise ValueError(f"{where}: arguments on two GPUs, {found[0]} on {found[1]} and {name} on {device}; "
                             "put every tensor of one call on one device")
    return None if found is None else found[1]


def _gpu_devices(arguments) -> Iterator[tuple]:
    """`(name, device)` of every argument (or item of a tuple/list argument) on a GPU."""
    for name, value in arguments:
        label = "the potentials" if name == "prepared" else name
        if isinstance(value, (tuple, list)):
            yield from _gpu_devices((f"{label}[{i}]", item) for i, item in enumerate(value))
            continue
        device = getattr(value, "device", None)
        if isinstance(device, torch.device) and device.type == "cuda":
            yield label, device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


guard_contract(Backend)
