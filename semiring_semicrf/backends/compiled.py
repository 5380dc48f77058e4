"""The compiled rung: the generic scan of any semiring, compiled.

The reference's recurrence (:class:`~semiring_semicrf.backends.reference.ScanProgram`)
is compiled as it is written, not copied: `torch.compile` (inductor: Triton
on CUDA, C++ on the CPU) compiles `ScanProgram.step`, with the position given
as a 0-d tensor so that one compiled step serves every position, and a
block's opening (`ScanProgram.renormalize`, and the rows of the tables its
steps read).

The scan runs from position 1 to T as blocks of `BLOCK` steps, each opened
by a renormalization (for a semiring that renormalizes), that end either at
one of the sequences' lengths or `BLOCK` positions after the previous block
(:func:`schedule`); a block that follows a length (and the first one) runs
its steps before its `start` as no-ops. After the block that ends at a length
`L`, the sequences of length `L` are finished with the reference's
:meth:`ScanProgram.finish` (eager: a few ends per batch).

Off CUDA (the CPU) the untracked forward runs a block as one compiled call
whose steps are a `scan` (:func:`_scanned_block`): a loop in the generated
code, so that no position pays a compiled call's host time.

On CUDA a block is captured once as a CUDA graph over static buffers (the
tables the steps read, the ring, the position) and replayed for every block,
so the per-position launch cost disappears; the untracked forward's graph
writes its ring back into its input, so that between two blocks the host
only copies the next position in and replays. Gradients go through one
autograd function per scan (:class:`_Scan`), whose backward runs the
blocks' vector-Jacobian products in reverse, summing the tables'
gradients itself (a function per block had cost the host more than the
GPU's work on a slow host, on an H200). A block keeps what
its compiled steps' autograd graph saved (:class:`_Tape`; on CUDA the
forward under autograd is captured once, its saved storages copied out
after each block and back in before its backward), and its backward is
only its vector-Jacobian product, on CUDA a CUDA graph of its own; past
:data:`KEPT_BYTES` of saved activations a scan's blocks keep only their
input ring (block checkpointing, like
:func:`~semiring_semicrf.autograd.checkpointed_scan`) and their backward
runs their forward again first, so memory stays bounded whatever the
length. Off CUDA graphs (the CPU) a kept block keeps its own autograd
graph.

Compiled steps are cached per semiring (class and parameters), kind of
potentials, number of potential sets, `(B, T, K, C)`, dtype and device
(:data:`CACHE_SIZE` entries, least recently used dropped); the first call of
an entry compiles, later ones reuse it. `auto` picks this rung on CUDA for a
semiring without a specialization; on the CPU it runs when named
(`backend="compiled"`): there it is faster than the eager scan at every size
measured (benchmarks/cpu_compiled.py: 1.6-5.4x the forward, 1.5-7.3x
forward+backward), but compiling takes seconds, which short runs do not
repay.
"""
from __future__ import annotations

import types
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch

from ..autograd.derivatives import refuse_further_derivatives
from .base import Backend
from .reference import ScanProgram

try:  # torch's loop operator (a prototype; inductor compiles it to a loop in the generated code)
    from torch._higher_order_ops import scan as _scan
except ImportError:  # older torch: every step is a compiled call of its own
    _scan = None  # type: ignore[assignment]

#: Steps per block (on CUDA, one replay of a CUDA graph).
BLOCK = 16
#: Cache entries kept (least recently used dropped).
CACHE_SIZE = 32
#: Runs of a function before its CUDA graph is captured (the first compiles).
_WARMUP = 2
#: Bytes of saved activations a tracked scan keeps (0: none). A block whose
#: activations fit is kept (:class:`_Tape`), and its backward is only its
#: vector-Jacobian product; the blocks past the budget keep their input ring
#: alone and run their forward again in the backward (block checkpointing),
#: so memory stays bounded whatever the length.
KEPT_BYTES = 1 << 30
#: Inductor options by device type. On the CPU: one thread, as a step's
#: tensors are small and OpenMP's barriers cost more than the work (30x on a
#: loaded 2-core machine); and the vectorized tail loops of inductor's C++
#: index the scatter of a gather's backward wrongly on small dims (torch
#: 2.13: wrong gradients of the `(K, C, C)` step, seen in
#: tests/test_compiled.py), so tails run scalar.
_OPTIONS: dict[str, dict[str, Any]] = {"cpu": {"cpp.threads": 1, "cpp.enable_loop_tail_vec": False}}
#: Inductor's option (where this torch has it) that picks a reduction's
#: launch configuration by its rule rather than by timing the candidates.
#: A step's reductions take microseconds, which inductor's timing of one
#: launch at a time cannot tell apart: KMax(5)'s list merge at 4 x 1000 x
#: 32 x 24 on an H200 measured within 1% for its four candidates, and its
#: pick cost 9.6 to 19.3 us a position from one compile to the next
#: (forward 16.5 to 27.2 ms); by the rule, 9.6-9.8 us in eight compiles of
#: eight (16.2-17.4 ms): `benchmarks/gpu_compiled.py --variance`.
_REDUCTION_RULE = "force_filter_reduction_configs"


def _options(device_type: str) -> dict[str, Any] | None:
    """The inductor options the blocks are compiled with on `device_type`."""
    if device_type != "cuda":
        return _OPTIONS.get(device_type)
    import torch._inductor.config as inductor_config
    if hasattr(getattr(inductor_config, "test_configs", None), _REDUCTION_RULE):
        return {f"test_configs.{_REDUCTION_RULE}": True}
    return None


def _compile(fn, options: dict[str, Any] | None):
    """`torch.compile(fn)` (whole graph, static shapes), keeping
    torch.distributions' default argument validation as it was: dynamo turns
    it off for the whole process the first time it is set up, which would
    silently drop the checks of every later `SemiMarkovDistribution` (and of
    the head's gold labels) once this rung had run."""
    default = torch.distributions.Distribution._validate_args
    try:
        return torch.compile(fn, fullgraph=True, dynamic=False, options=options)
    finally:
        torch.distributions.Distribution.set_default_validate_args(default)


def _keepable():
    """A context in which compiled steps are compiled so that their
    autograd graphs can be run backward more than once (`retain_graph`):
    AOT autograd otherwise donates the saved tensors to the backward's
    buffers and refuses a second backward. A kept block's graph, captured
    once as a CUDA graph, is run backward for every block."""
    return torch._functorch.config.patch(donated_buffer=False)


class _Tape:
    """A block's forward under autograd, kept: its leaves (input ring, then
    tables), its outputs `(ring, previous, alpha)`, its offset after it and
    the storages its autograd graph saved, less the tables': what differs from block to
    block. On CUDA graphs one tape (the capture's) serves every block: a
    block's saved bytes are copied out after its forward (:meth:`values`)
    and back in before its backward (:meth:`restore`), on CUDA by one
    kernel launch each way (:mod:`semiring_semicrf.kernels.storage_copy`)."""

    def __init__(self, leaves: list, outputs: tuple, offset: torch.Tensor, saved: list):
        shared = {t.untyped_storage().data_ptr() for t in leaves[1:]}
        storages: dict[int, Any] = {}
        for t in saved:
            storage = t.untyped_storage()
            if storage.data_ptr() not in shared:
                storages.setdefault(storage.data_ptr(), storage)
        self.leaves, self.outputs, self.offset = leaves, outputs, offset
        self.storages = list(storages.values())
        self.nbytes = sum(s.nbytes() for s in self.storages)
        self._flat: Any = None  # the storages' copy table on CUDA (made on first use)

    @classmethod
    def record(cls, block, tables, state, positions, start, collect: bool = True) -> _Tape:
        """`block(tables, state, positions, start)` (:meth:`CompiledBlocks._block`)
        under autograd, with what its graph saves collected where `collect`
        (a block run again for one backward needs none: collecting costs
        the host a Python call a saved tensor)."""
        saved: list = []

        def pack(t):
            saved.append(t)
            return len(saved) - 1

        ring, offset = state
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, saved.__getitem__) if collect else nullcontext()
        with torch.enable_grad(), _keepable():
            leaves = [t.detach().requires_grad_() for t in (ring, *tables)]
            with hooks:
                out_ring, offset, previous, alpha = block(leaves[1:], (leaves[0], offset), positions, start)
        return cls(leaves, (out_ring, previous, alpha), offset, saved)

    def _copier(self):
        """The storages' :class:`~semiring_semicrf.kernels.storage_copy.FlatStorages`
        on CUDA, else None (torch's copies)."""
        if self._flat is None and self.storages and self.storages[0].device.type == "cuda":
            from semiring_semicrf.kernels.storage_copy import FlatStorages
            self._flat = FlatStorages(self.storages)
        return self._flat

    def values(self) -> torch.Tensor:
        """The saved bytes, one uint8 tensor (each storage at a 16-byte
        aligned offset)."""
        from semiring_semicrf.kernels.storage_copy import gather_reference
        copier = self._copier()
        return gather_reference(self.storages) if copier is None else copier.gather()

    def restore(self, values: torch.Tensor) -> None:
        """Write `values` (from :meth:`values`) back into the saved storages."""
        from semiring_semicrf.kernels.storage_copy import scatter_reference
        copier = self._copier()
        if copier is None:
            scatter_reference(self.storages, values)
        else:
            copier.scatter(values)

    def vjp(self, grads, retain: bool) -> tuple:
        """Gradients of the first `len(grads)` outputs, given as `grads`
        (the ring's alone, or with `previous` and `alpha`'s), with respect to
        the leaves (zeros where unused), keeping the graph where `retain`."""
        with _keepable():
            found = torch.autograd.grad(self.outputs[:len(grads)], self.leaves, grads, allow_unused=True,
                                        retain_graph=retain)
        return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(found, self.leaves))


def _step(program: ScanProgram, ring, e, active, rows=None, with_alpha: bool = True):
    """`ScanProgram.step` at position `e` (0-d int64) reading `rows` (see
    :meth:`ScanProgram.step`), leaving the ring as it was where `active`
    (0-d bool: `e` at or past the block's first stepped position) is False:
    `(ring, alpha)`, alpha None unless `with_alpha`. The block computes
    `active` (a step that compared `e` itself saved the comparison for its
    backward, a kernel of its own a position in the tracked forward on the
    GPU), and asks for alpha at its last step alone (an output with no
    gradient gets one of zeros in the backward, a fill a step)."""
    stepped, alpha, _ = program.step(ring, e, rows=rows)
    return torch.where(active, stepped, ring), alpha if with_alpha else None


def _scanned_block(program: ScanProgram, ring, offset, positions, start):
    """A whole block in one compiled call, for the untracked forward off
    CUDA graphs: the opening's renormalization, then the steps at
    `positions` as one `scan` (a loop inside the compiled code, so a
    position costs no compiled call's host time: about 60 us on the CPU,
    more than a k-best step's whole work at small sizes). Returns what
    :meth:`CompiledBlocks._block` does."""
    if program.semiring.renormalize:
        ring, offset = program.renormalize(ring, offset)

    def one_step(carry, e):
        ring, _ = carry
        stepped, alpha = _step(program, ring, e, e >= start)
        return (stepped, ring.clone()), alpha  # scan's outputs may not alias its carry

    (ring, previous), alphas = _scan(one_step, (ring, ring.clone()), positions)
    return ring, offset, previous, alphas[-1]


def _open(program: ScanProgram, ring, offset, positions):
    """A block's opening: the ring renormalized (a semiring that
    renormalizes, :meth:`ScanProgram.renormalize`) and, on the factorized
    path (see :func:`_gathers_rows`), the rows its steps read
    (:meth:`ScanProgram.rows` at `positions`), each `(BLOCK, P, B, C)` and
    contiguous, so that a step's rows are too (see
    :meth:`CompiledBlocks._per_step`). Where the program
    :attr:`~ScanProgram.embeds_ahead`, the rows (then `(BLOCK, S, B, C)`)
    and the shared factors are embedded here, once a block
    (:meth:`ScanProgram.with_embedded`): a step that embedded its factors
    itself saved their masks for its backward and embedded the transition
    apart, kernels of their own a position on the GPU. Returns `(ring,
    offset, rows, shared)`, `rows` empty where not gathered, `shared` the
    embedded `(duration, transition)` or empty."""
    if program.semiring.renormalize:
        ring, offset = program.renormalize(ring, offset)
    if not _gathers_rows(program):
        return ring, offset, (), ()
    rows, shared = program.rows(positions), []
    if program.embeds_ahead:
        *shared, rows = program.embed_factors(rows)
    return ring, offset, tuple(r.movedim(2, 0).contiguous() for r in rows), tuple(shared)


def _gathers_rows(program: ScanProgram) -> bool:
    """Whether a block's opening gathers its steps' rows: on the factorized
    path, under autograd or off the CPU (the GPU's CUDA graphs were measured
    so; on the CPU untracked steps that read the tables themselves are
    10-15% faster, as each compiled call's inputs cost host time)."""
    return program.factorized and (torch.is_grad_enabled() or program.device.type != "cpu")


def _aligned_unbind(x: torch.Tensor, pad: bool | None = None) -> tuple:
    """`x.unbind(0)` for a contiguous `x`, with every piece 16-byte aligned
    where `pad` (default: off the CPU), `x` copied with padding when its
    pieces are not: a compiled step is compiled for aligned inputs, as the
    first step's are, and on a GPU clones each input it finds misaligned,
    one copy a step (the positions' int64 elements, 8 bytes apart, cost a
    copy every other step). On the CPU inductor checks no alignment, and
    padding would only cost time."""
    n = x[0].numel()
    per = max(1, 16 // x.element_size())
    width = -(-n // per) * per
    if width == n or not (x.device.type != "cpu" if pad is None else pad):
        return x.unbind(0)
    padded = torch.nn.functional.pad(x.reshape(x.shape[0], n), (0, width - n))
    return tuple(row[:n].view(x.shape[1:]) for row in padded.unbind(0))


def _own_code(function):
    """`function` with a code object of its own: torch.compile keeps its
    cache (and its recompilation limit) per code object, and each entry of
    this rung's cache compiles its own step once."""
    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)


def unavailable_reason() -> str | None:
    """None if torch.compile can run here, else why not."""
    try:
        import torch._dynamo as dynamo
    except ImportError as exc:  # a torch built without the compiler
        return f"torch.compile is not available ({exc})"
    if not dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    return None


class _Graph:
    """`function()` captured as a CUDA graph: it reads and writes static
    buffers only; `replay()` runs it again and returns the outputs of the
    capture (static: refreshed by every replay).

    The graph keeps `function` (and so every tensor its closure holds): a
    replay reads those tensors' memory, which must not be freed and reused.
    (It once was: the block's position offsets, held by the closure alone,
    were freed after the capture, and later allocations overwrote them; the
    replays stepped at wrong positions, which showed as wrong gradients.)

    Captured on a stream of the current device (the caller makes the
    tensors' device current): `torch.cuda.graph`'s default capture stream is
    made once, on the device current then, and a capture on it records
    nothing of another device's kernels (on cuda:1, every replay did
    nothing)."""

    def __init__(self, function):
        self.function = function
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(_WARMUP):
                function()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream):
            self.outputs = function()

    def replay(self):
        self.graph.replay()
        return self.outputs


class CompiledBlocks:
    """The compiled step and renormalization of one cache entry, and the
    block of `BLOCK` steps made of them, run as CUDA graphs on CUDA
    (``graphs=True``) or called directly.

    `template` is a program of the entry; calls pass the tables of their own
    program (:meth:`ScanProgram.tables`) and a `ticket` naming the scan they
    belong to: on CUDA graphs the tables are copied into static buffers when
    another scan's are loaded.
    """

    def __init__(self, template: ScanProgram, graphs: bool):
        self.template = template
        self.names = tuple(template.tables())
        options = _options(template.device.type)
        self.step = _compile(_own_code(_step), options)
        self.open = _compile(_own_code(_open), options)
        # off CUDA graphs the untracked forward is one compiled call a block (the steps' backward stays per step:
        # scan's backward was slower, and compiled for several times as long, on the CPU)
        self.scanned: Any = None if graphs or _scan is None else _compile(_own_code(_scanned_block), options)
        self.graphs = graphs
        self.tape: Any = None  # on CUDA graphs, the kept block's captured tape (:class:`_Tape`)
        self.kept_bytes = 0  # a kept block's saved bytes (0 until one is kept)
        self._graphs: dict = {}
        self._loaded: object | None = None

    def _block(self, tables, state, positions, start):
        """The block ending at `positions[-1]` from `state = (ring, offset)`:
        a renormalization, then a step at each of `positions` (`(BLOCK,)`
        int64), compiled. Returns the ring and offset after it, the ring
        before its last step and that step's alpha (what
        :meth:`ScanProgram.finish` takes)."""
        program = self.template.with_tables(dict(zip(self.names, tables)))
        (ring, offset), rows, shared = state, (), ()
        if program.semiring.renormalize or _gathers_rows(program):
            ring, offset, rows, shared = self.open(program, ring, offset, positions)
        previous = alpha = ring
        steps = zip(_aligned_unbind(positions), _aligned_unbind(positions >= start),
                    *self._per_step(program, rows, shared))
        for i, (e, active, step_program, step_rows) in enumerate(steps):
            previous = ring
            ring, alpha = self.step(step_program, ring, e, active, step_rows, i == BLOCK - 1)
        return ring, offset, previous, alpha

    @staticmethod
    def _per_step(program: ScanProgram, rows: tuple, shared: tuple) -> tuple:
        """What each step of a block reads: a program and its rows (None
        where `_open` gathered none: the step reads the tables), the program
        reading the embedded `shared = (duration, transition)` where `_open`
        embedded them (:meth:`ScanProgram.with_embedded`). Under
        autograd every step gets views of its own, the rows unbound from
        the block's and the shared tables (duration, transition) expanded
        over the block and unbound, so that autograd stacks a block's
        gradients once rather than adding or scattering a step's into the
        whole tables (which cost the backward six kernels a position on
        the GPU)."""
        if not rows:
            return [program] * BLOCK, [None] * BLOCK
        if shared:
            program = program.with_embedded(*shared)
        step_rows = list(zip(*(_aligned_unbind(r) for r in rows)))
        if not torch.is_grad_enabled():
            return [program] * BLOCK, step_rows
        views = {name: getattr(program, name).expand(BLOCK, *getattr(program, name).shape).unbind(0)
                 for name in ("duration", "transition")}
        programs = [program.with_tables({name: step[i] for name, step in views.items()}) for i in range(BLOCK)]
        return programs, step_rows

    def _vjp(self, tables, state, positions, start):
        """From `state = (ring, offset, *grads)`: the gradients of the
        block's first `len(grads)` outputs, given as `grads`, with respect to
        its input ring and tables, running its forward again."""
        ring, offset, *grads = state
        tape = _Tape.record(self._block, tables, (ring, offset), positions, start, collect=False)
        return tape.vjp(grads, retain=False)

    def _chained(self, tables, state, positions, start):
        """:meth:`_block`, its ring and offset written back into `state`'s
        tensors and returned as such: on CUDA graphs the untracked forward's
        next block reads them where they are, with no copy between blocks."""
        ring, offset, previous, alpha = self._block(tables, state, positions, start)
        if previous is state[0]:  # a block of one step: the ring before it is its input, overwritten below
            previous = previous.clone()
        state[0].copy_(ring)
        state[1].copy_(offset)
        return state[0], state[1], previous, alpha

    def _keep(self, tables, state, positions, start):
        """The block under autograd, its tape recorded: returns what
        :meth:`_block` does, then the tape (on CUDA graphs, the capture's,
        kept as `self.tape`, serves every block)."""
        # off CUDA graphs the saved bytes are collected once an entry, to size the budget: every block saves as much
        collect = self.graphs or self.kept_bytes == 0
        tape = _Tape.record(self._block, tables, state, positions, start, collect=collect)
        if collect:
            self.kept_bytes = tape.nbytes
        if self.graphs:
            self.tape = tape
        ring, previous, alpha = (t.detach() for t in tape.outputs)
        return ring, tape.offset, previous, alpha, tape

    def _kept_vjp(self, tables, state, positions, start):
        """From `state = grads`: the vector-Jacobian product through the
        captured tape (its saved bytes restored before the replay)."""
        return self.tape.vjp(state, retain=True)

    def spans(self, blocks: list, device: torch.device) -> list:
        """The :class:`Span` of each of `blocks` (:func:`schedule`), on CUDA
        graphs with their positions on the device (one copy a scan)."""
        rows: Any = [None] * len(blocks)
        if self.graphs and blocks:
            rows = torch.tensor([[e_last, start] for e_last, start, _ in blocks], dtype=torch.int64, device=device)
        return [Span(e_last, start, finishes, row) for (e_last, start, finishes), row in zip(blocks, rows)]

    def forward(self, ticket: object, tables, ring, offset, span: Span):
        """`(ring, offset, previous, alpha)` after the block of `span`, with
        no autograd graph. On CUDA graphs these are the graphs' static
        tensors, refreshed by the next call (the ring and offset are the
        graph's own inputs, which its next block reads where they are)."""
        function = self._chained if self.graphs else self._block if self.scanned is None else self._scanned
        with torch.no_grad():  # detached: the tracked forward reuses the untracked one's compiled functions
            return self._call(function, ticket, tables, (ring, offset), span)

    def forward_keeping(self, ticket: object, tables, ring, offset, span: Span):
        """:meth:`forward` under autograd, keeping what the backward needs
        (no forward again there): `(ring, offset, previous, alpha, kept)`,
        `kept` what :meth:`kept_vjp` takes (on CUDA graphs the block's saved
        bytes, copied out of the captured tape's storages; else its tape,
        the block's own autograd graph)."""
        *out, tape = self._call(self._keep, ticket, tables, (ring, offset), span)
        return (*out, tape.values() if self.graphs else tape)

    def kept_vjp(self, ticket: object, tables, kept, span: Span, grads):
        """:meth:`vjp` of a block run by :meth:`forward_keeping`, given its `kept`."""
        if not self.graphs:
            return kept.vjp(grads, retain=True)  # retained: a user may run the scan's backward twice
        self.tape.restore(kept)
        return self._call(self._kept_vjp, ticket, tables, tuple(grads), span)

    def _scanned(self, tables, state, positions, start):
        """:meth:`_block` as one compiled call (:func:`_scanned_block`), or
        as its steps where `scan` refuses the program: its tensors share
        memory (the general path's potential sets are views of one stacked
        table), which a `scan` body may not read."""
        from torch._dynamo.exc import UncapturedHigherOrderOpError

        program = self.template.with_tables(dict(zip(self.names, tables)))
        try:
            return self.scanned(program, *state, positions, start)
        except UncapturedHigherOrderOpError:
            self.scanned = None
            return self._block(tables, state, positions, start)

    def vjp(self, ticket: object, tables, ring, offset, span: Span, grads):
        """Gradients of the block's first `len(grads)` outputs `(ring,
        previous, alpha)`, given as `grads`, with respect to its input ring
        and its tables, running its forward again (on CUDA graphs the
        graph's static tensors, refreshed by the next call)."""
        return self._call(self._vjp, ticket, tables, (ring, offset, *grads), span)

    def _call(self, function, ticket, tables, state, span: Span):
        """`function(tables, state, positions, start)` for the block of
        `span`, or (on a CUDA entry) its CUDA graph, captured on its first
        call with as many state tensors, over static copies of the inputs (a
        graph of the vector-Jacobian product captures the compiled steps'
        backward too)."""
        device = state[0].device
        if not self.graphs:
            positions = torch.arange(span.e_last - BLOCK + 1, span.e_last + 1, device=device)
            return function(tables, state, positions, torch.tensor(span.start, device=device))
        with torch.cuda.device(device):
            return self._replay(function, ticket, tables, state, span, device)

    def _replay(self, function, ticket, tables, state, span: Span, device: torch.device):
        """`_call`'s CUDA graph path (`device`, the tensors', current). A
        state tensor that is the graph's own input already is not copied."""
        key = (function.__name__, len(state))
        if key not in self._graphs:
            if self._loaded is None:
                self.static_tables = [t.detach().clone() for t in tables]
                self.static_positions = span.row.clone()  # the block's last position and the first it steps
                self._loaded = ticket
            static_state = [t.detach().clone() for t in state]
            backwards = torch.arange(BLOCK - 1, -1, -1, device=device)
            graph = _Graph(lambda: function(self.static_tables, static_state, self.static_positions[0] - backwards,
                                            self.static_positions[1]))
            self._graphs[key] = (graph, static_state)
        graph, static_state = self._graphs[key]
        if ticket is not self._loaded:
            for static, t in zip(self.static_tables, tables):
                static.copy_(t.detach())
            self._loaded = ticket
        for static, t in zip(static_state, state):
            if t is not static:
                static.copy_(t.detach())
        self.static_positions.copy_(span.row)
        return graph.replay()


class Span(NamedTuple):
    """One block of a scan (:func:`schedule`): its last position, the first
    position it steps, whether sequences end at its last position, and on
    CUDA graphs the first two as an int64 `(2,)` device tensor, copied into
    the graphs' static positions."""

    e_last: int
    start: int
    finishes: bool
    row: Any = None


class _Scan(torch.autograd.Function):
    """A tracked compiled scan, every block of it in one autograd node, so
    that the host does little a block (on CUDA graphs, a few copies and a
    replay each way).

    Forward: the blocks in order, each kept
    (:meth:`CompiledBlocks.forward_keeping`) while the scan's budget of
    saved bytes lasts, the rest keeping only their input ring and offset.
    Returns `(previous, alpha, offset)` after each block at which sequences
    end (what :meth:`ScanProgram.finish` and :meth:`ScanProgram.collect`
    take), the offsets not differentiable.

    Backward: the blocks in reverse, each a vector-Jacobian product (a
    checkpointed block's runs its forward again first) of the ring's
    gradient, with `previous` and `alpha`'s where sequences end; the
    tables' gradients summed over the blocks. Once differentiable: under
    `create_graph=True` the results are marked so that differentiating them
    raises, rather than dropping a term."""

    @staticmethod
    def forward(ctx, blocks: CompiledBlocks, ticket: object, spans: list, budget: int, ring, offset, *tables):
        ctx.set_materialize_grads(False)
        ctx.blocks, ctx.ticket, ctx.spans, ctx.kept = blocks, ticket, spans, []
        ctx.save_for_backward(ring, *tables)
        ends: list = []
        for span in spans:
            keep = budget > 0 and blocks.kept_bytes <= budget  # kept_bytes known after the entry's first kept block
            if keep:
                ring, offset, previous, alpha, kept = blocks.forward_keeping(ticket, tables, ring, offset, span)
                budget -= blocks.kept_bytes
            else:  # checkpointed: its input, for its forward again
                kept = (ring.detach().clone(), offset.clone())
                ring, offset, previous, alpha = blocks.forward(ticket, tables, ring, offset, span)
            ctx.kept.append(kept)
            if span.finishes:
                ends += [previous.clone(), alpha.clone(), offset.clone()]
        ctx.shapes = [t.shape for t in (ring, *ends[:2])]  # the ring's, previous' and alpha's, for zero gradients
        ctx.mark_non_differentiable(*ends[2::3])
        return tuple(ends)

    @staticmethod
    def backward(ctx, *grads):
        blocks, ticket = ctx.blocks, ctx.ticket
        ring, *tables = ctx.saved_tensors
        ends = [grads[i:i + 2] for i in range(0, len(grads), 3)]  # (previous, alpha)'s where sequences end
        totals = [torch.zeros_like(t) for t in tables]
        grad_ring = None
        for span, kept in zip(reversed(ctx.spans), reversed(ctx.kept)):
            upstream = [grad_ring]
            if span.finishes:
                here = ends.pop()
                if any(g is not None for g in here):
                    upstream += here
            if all(g is None for g in upstream):
                continue  # nothing of this block reaches a result
            upstream = [ring.new_zeros(shape) if g is None else g for g, shape in zip(upstream, ctx.shapes)]
            if isinstance(kept, tuple):
                found = blocks.vjp(ticket, tables, *kept, span, upstream)
            else:
                found = blocks.kept_vjp(ticket, tables, kept, span, upstream)
            torch._foreach_add_(totals, list(found[1:]))
            grad_ring = found[0]
        found = [None if grad_ring is None else grad_ring.clone(), *totals]
        found = refuse_further_derivatives(found, [*grads, ring, *tables], "the gradient of the compiled scan")
        return (None, None, None, None, found[0], None, *found[1:])


def schedule(lengths) -> list:
    """The blocks of a scan: `(e_last, start, finishes)` in order, `finishes`
    True when `e_last` is a sequence's length (every length ends a block)."""
    blocks, previous = [], 0
    for end in sorted({int(x) for x in lengths}):
        e_last = previous + (end - previous - 1) % BLOCK + 1
        while e_last <= end:
            blocks.append((e_last, previous + 1, e_last == end))
            e_last += BLOCK
        previous = end
    return blocks


_CACHE: OrderedDict[tuple, CompiledBlocks] = OrderedDict()


def cache_key(program: ScanProgram) -> tuple:
    """What a compiled block depends on: the semiring (class and parameters),
    the kind of potentials, the number of sets, the sizes, dtype and device."""
    semiring = program.semiring
    parameters = tuple(sorted((name, repr(value)) for name, value in vars(semiring).items()))
    return (type(semiring), parameters, program.kind, semiring.num_potentials, program.B, program.T, program.K,
            program.C, program.dtype, str(program.device))


def blocks_for(program: ScanProgram) -> CompiledBlocks:
    """The cached :class:`CompiledBlocks` of `program`'s entry (made on first use)."""
    key = cache_key(program)
    blocks = _CACHE.get(key)
    if blocks is None:
        blocks = _CACHE[key] = CompiledBlocks(program, graphs=program.device.type == "cuda")
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return blocks


def clear_cache() -> None:
    """Drop every compiled block (and torch.compile's own caches of them)."""
    _CACHE.clear()


def compiled_scan(prepared, semiring) -> torch.Tensor:
    """The generic scan of `prepared` (as for :class:`ScanProgram`) in
    `semiring`, compiled: `semiring.extract(result)`, differentiable when a
    gradient is tracked (one :class:`_Scan`: kept blocks, then block
    checkpointing past :data:`KEPT_BYTES`)."""
    program = ScanProgram(prepared, semiring)
    blocks = blocks_for(program)
    tables = tuple(program.tables().values())
    ring, offset, result = program.initial_state()
    spans = blocks.spans(schedule(program.lengths.tolist()), ring.device)
    tracked = (torch.is_grad_enabled() and ring.is_floating_point()
               and any(t.requires_grad for t in (ring, *tables)))
    ticket = object()
    ends = iter(_Scan.apply(blocks, ticket, spans, KEPT_BYTES, ring, offset, *tables) if tracked else ())
    for span in spans:
        if not tracked:
            ring, offset, previous, alpha = blocks.forward(ticket, tables, ring, offset, span)
        if span.finishes:
            if tracked:  # the function ran every block; its outputs hold each finishing block's values
                previous, alpha, offset = next(ends), next(ends), next(ends)
            result = program.collect(result, program.finish(previous, alpha, span.e_last), offset, span.e_last)
    return program.extract(result)


class CompiledBackend(Backend):
    """The generic scan of any semiring, compiled (`scan`)."""

    name = "compiled"
    queries = frozenset({"scan"})

    def answers(self, potentials, query: str, requested: bool = False, **options) -> bool:
        # the query first: the other queries pass by without importing the compiler
        return query in self.queries and super().answers(potentials, query, requested, **options)

    def unsupported_reason(self, potentials, requested: bool = False) -> str | None:
        device = potentials.device.type
        if device not in ("cpu", "cuda"):
            return f"tensors are on {potentials.device}; the compiled scan runs on cpu and cuda"
        if device == "cpu" and not requested:
            return ("on the CPU compiling costs seconds a semiring and shape, which short runs do not repay "
                    "(benchmarks/cpu_compiled.py); backend='compiled' compiles there")
        return unavailable_reason()

    def scan(self, prepared, semiring):
        from torch._dynamo.exc import TorchDynamoException

        try:
            return compiled_scan(prepared, semiring)
        except TorchDynamoException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RuntimeError(f"torch.compile cannot compile the scan in {semiring!r} ({type(exc).__name__}: "
                               f"{first}); backend='reference' runs it eagerly") from exc
