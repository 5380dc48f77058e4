"""The compiled rung (`backend="compiled"`) against the eager reference scan.

Compiling costs seconds per (semiring, kind of potentials, shapes), so the
problems keep fixed shapes and Hypothesis draws their values, lengths and
extras. On the CPU a few cases run in every test run; the full matrix (every
shipped semiring and the semirings defined in test_semirings.py, on the three
kinds of potentials) is marked slow, and runs on the GPU too (marked gpu:
CUDA graphs, float64 and float32).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_semirings import SEMIRINGS as SHIPPED
from test_semirings import BooleanSemiring, BottleneckSemiring, MaxCountSemiring

from semiring_semicrf import (
    CrossEntropySemiring,
    EntropySemiring,
    KMaxSemiring,
    LogSemiring,
    MaxSemiring,
    Segmentation,
    SemiMarkovDistribution,
    SemiMarkovPotentials,
    StdSemiring,
    backends,
    semimarkov_scan,
)
from semiring_semicrf.backends import compiled
from semiring_semicrf.backends.reference import ScanProgram
from semiring_semicrf.scan import dispatch_table

B, T, K, C = 3, 21, 3, 2  # T spans more than one block
KINDS = ("factorized", "general", "explicit")
#: Semirings whose results are exact on integer potentials (compared bit for bit).
EXACT = (MaxCountSemiring, BooleanSemiring, BottleneckSemiring)
#: Semirings whose plus selects one of its arguments.
SELECTIVE = (MaxSemiring, KMaxSemiring, BottleneckSemiring)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def problem(kind: str, seed: int, lengths, extras: bool, dtype=torch.float64, device="cpu", integer=False):
    """Potentials of the fixed shapes, of one kind ("factorized": (C, C)
    transitions, "general": (K, C, C), "explicit": edges)."""
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        return ((2 * x).round() if integer else x).to(dtype=dtype, device=device)

    transition = draw(K, C, C) if kind != "factorized" else draw(C, C)
    transition[..., 0, 1] = float("-inf")
    # integer potentials uncentred, so that their edges are exact integers (exact ties)
    p = SemiMarkovPotentials(draw(B, T, C), transition, draw(K, C), torch.tensor(lengths, device=device),
                             start=draw(C), end=draw(C), start_scores=draw(B, T, C) if extras else None,
                             end_scores=draw(B, T, C) if extras else None, center=not integer)
    return SemiMarkovPotentials.from_edges(p.to_edges(), p.lengths) if kind == "explicit" else p


def with_grad(p):
    """A copy of `p` whose tensors are leaves that require grad, and them."""
    leaves = {name: t.detach().clone().requires_grad_() for name, t in p.tensors().items()}
    if p.is_explicit:
        return SemiMarkovPotentials.from_edges(leaves["edge"], p.lengths), leaves
    return SemiMarkovPotentials(lengths=p.lengths, **leaves), leaves


def assert_compiled_equals_eager(semiring, pots, rtol=1e-10):
    got = semimarkov_scan(pots, semiring, backend="compiled")
    want = semimarkov_scan(pots, semiring, backend="reference")
    assert got.dtype == want.dtype and got.shape == want.shape
    if isinstance(semiring, EXACT) or not want.is_floating_point():
        assert torch.equal(got, want), (semiring, got, want)
    else:
        scale = float(want[torch.isfinite(want)].abs().max()) if torch.isfinite(want).any() else 1.0
        torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * max(scale, 1.0))


def assert_gradients_equal(semiring, pots, rtol=1e-9):
    """The compiled scan's gradients (its blocks' vector-Jacobian products)
    against the reference's (block checkpointing), relative to the largest.

    Infinite results (a k-best list shorter than k) carry no gradient. A
    selective semiring (max, k-best, max-min) has many subgradients where
    structures tie, and each implementation picks one: its gradients are
    checked through what every subgradient satisfies instead, `<grad, theta>
    = the weighted results` (the results are sums of parts, linear in theta).
    """
    copies = [with_grad(p) for p in pots]
    leaves = [t for _, named in copies for t in named.values()]
    weights = torch.linspace(0.5, 1.5, pots[0].batch_size, dtype=pots[0].dtype, device=pots[0].device)
    grads, losses = {}, {}
    for backend in ("compiled", "reference"):
        out = semimarkov_scan(tuple(p for p, _ in copies), semiring, backend=backend)
        losses[backend] = (torch.where(torch.isfinite(out), out, torch.zeros_like(out)) * weights).sum()
        grads[backend] = torch.autograd.grad(losses[backend], leaves, allow_unused=True)
    if isinstance(semiring, SELECTIVE):
        for backend, found in grads.items():
            euler = sum((g * torch.where(torch.isfinite(x), x, torch.zeros_like(x))).sum()
                        for g, x in zip(found, leaves) if g is not None)
            torch.testing.assert_close(euler, losses[backend].detach(), rtol=1e-9, atol=1e-9, msg=backend)
        return
    for got, want in zip(grads["compiled"], grads["reference"]):
        if want is None:
            assert got is None or not got.any()
        else:
            scale = float(want.abs().max()) if want.numel() else 0.0
            torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * max(scale, 1.0))


lengths_drawn = st.lists(st.integers(1, T), min_size=B, max_size=B).map(lambda x: [T] + x[1:])


# -- without compiling ------------------------------------------------------------
@given(lengths=st.lists(st.integers(1, 70), min_size=1, max_size=6))
def test_schedule_steps_every_position_once_and_ends_a_block_at_every_length(lengths):
    blocks = compiled.schedule(lengths)
    stepped = [e for e_last, start, _ in blocks for e in range(max(start, e_last - compiled.BLOCK + 1), e_last + 1)]
    assert stepped == list(range(1, max(lengths) + 1))
    assert [e_last for e_last, _, finishes in blocks if finishes] == sorted(set(lengths))


def test_the_compiled_rung_answers_the_scan_when_named_and_on_cuda_under_auto():
    p = problem("factorized", 0, [T] * B, False)
    assert backends.select("compiled", p, "scan").name == "compiled"
    assert backends.select("auto", p, "scan").name == "reference"  # on the CPU
    assert backends.select("compiled", p, "log").name == "torch"  # the compiled rung answers only "scan"
    rows = {(r[0], r[2]): r[3] for r in dispatch_table(["cpu"])}
    assert rows[("any other semiring", "cpu")] == "reference (generic scan)"


def test_cache_key_holds_the_semiring_parameters_kind_sizes_and_dtype():
    p = problem("factorized", 0, [T] * B, False)
    key = lambda semiring, q=p: compiled.cache_key(ScanProgram(q, semiring))  # noqa: E731
    assert key(KMaxSemiring(2)) == key(KMaxSemiring(2)) != key(KMaxSemiring(3))
    assert key(LogSemiring()) != key(LogSemiring(), problem("general", 0, [T] * B, False))
    assert key(LogSemiring()) != key(LogSemiring(), p.replace(**{k: t.float() for k, t in p.tensors().items()}))


def test_cuda_blocks_pick_reduction_configurations_by_rule_not_by_timing():
    """On CUDA the blocks compile under inductor's option that picks each
    reduction's launch configuration by rule: timed one launch at a time,
    the candidates of a step's microsecond reductions measure alike and the
    pick, which set KMax's forward, changed from compile to compile
    (`benchmarks/gpu_compiled.py --variance`). This torch has the option, and
    torch.compile takes it (through the rung's `_compile`, which keeps the
    distributions' argument validation on: a bare torch.compile turns it off
    for the rest of the process, and later tests' bad labels went unchecked)."""
    import torch._inductor.config as inductor_config
    options = compiled._options("cuda")
    assert options == {"test_configs.force_filter_reduction_configs": True}
    with inductor_config.patch(options):
        assert inductor_config.test_configs.force_filter_reduction_configs
    assert compiled._options("cpu") == {"cpp.threads": 1, "cpp.enable_loop_tail_vec": False}
    assert compiled._compile(lambda x: x + 1, options)(torch.ones(2)).tolist() == [2.0, 2.0]


# -- compiled on the CPU ----------------------------------------------------------
@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), lengths=lengths_drawn, extras=st.booleans())
def test_max_count_compiled_is_exact_and_stays_int64(seed, lengths, extras):
    assert_compiled_equals_eager(MaxCountSemiring(), (problem("factorized", seed, lengths, extras, integer=True),))


@settings(max_examples=3)
@given(seed=st.integers(0, 2**16), lengths=lengths_drawn)
def test_boolean_compiled_on_explicit_edges_stays_bool(seed, lengths):
    assert_compiled_equals_eager(BooleanSemiring(), (problem("explicit", seed, lengths, False),))


@settings(max_examples=3)
@given(seed=st.integers(0, 2**16), lengths=lengths_drawn, extras=st.booleans())
def test_entropy_compiled_gradients_equal_the_reference(seed, lengths, extras):
    p = problem("general", seed, lengths, extras)
    assert_compiled_equals_eager(EntropySemiring(), (p,))
    assert_gradients_equal(EntropySemiring(), (p,))


def test_kmax_sum_and_times_compiled_equal_eager_bit_for_bit():
    """Compiled, KMax merges its sorted lists where eager calls topk: the
    same lists, on values with repeated scores and -inf entries."""
    S = KMaxSemiring(4)
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(-2, 3, (1, 3, 5, 6), generator=g).double()
    values = S.sum(S.embed(scores.masked_fill(scores < -1, float("-inf"))), dim=-1)  # (4, 3, 5)
    assert (values[:-1] == values[1:]).any() and torch.isinf(values).any()
    eager = (S.sum(values, dim=-1), S.times(values, values.flip(-1)))
    step = compiled._compile(lambda v: (S.sum(v, dim=-1), S.times(v, v.flip(-1))), None)
    for got, want in zip(step(values), eager):
        assert torch.equal(got, want)


def test_the_compiled_rung_leaves_distribution_validation_on(monkeypatch):
    """Dynamo turns torch.distributions' default validation off when it is
    first set up; the rung puts it back, so a distribution built after a
    compiled scan still checks its arguments."""
    from torch._dynamo.eval_frame import TorchPatcher
    from torch.distributions import Distribution

    monkeypatch.setattr(Distribution, "_validate_args", True)
    TorchPatcher.patch.cache_clear()  # as in a fresh process: the next torch.compile sets dynamo up
    semimarkov_scan(problem("factorized", 0, [T] * B, False), MaxCountSemiring(), backend="compiled")
    assert Distribution._validate_args
    d = SemiMarkovDistribution(torch.randn(1, 4, C), torch.randn(C, C), torch.randn(K, C))
    with pytest.raises(ValueError, match="label"):
        d.log_prob(Segmentation.from_segments([[(0, 4, C)]], T=4))


def test_a_semiring_torch_compile_cannot_trace_gets_a_clear_error():
    class HostSum(LogSemiring):
        def sum(self, x, dim):  # a Python branch on a tensor's value
            return x.amax(dim=dim) if bool((x > 0).any()) else x.amin(dim=dim)

    with pytest.raises(RuntimeError, match="backend='reference'"):
        semimarkov_scan(problem("factorized", 0, [T] * B, False), HostSum(), backend="compiled")


# -- the full matrix: slow on the CPU, and on the GPU -------------------------------
MATRIX = [(s, kind) for s in SHIPPED + [MaxCountSemiring(), BooleanSemiring(), BottleneckSemiring()] for kind in KINDS
          if not (isinstance(s, BottleneckSemiring) and kind == "factorized")]


def check_case(semiring, kind, seed, lengths, extras, device, dtype=torch.float64, rtol=1e-10):
    integer = isinstance(semiring, EXACT)
    pots = tuple(problem(kind, seed + i, lengths, extras, dtype, device, integer)
                 for i in range(semiring.num_potentials))
    assert_compiled_equals_eager(semiring, pots, rtol)
    if dtype == torch.float64 and not isinstance(semiring, (BooleanSemiring, MaxCountSemiring)):
        assert_gradients_equal(semiring, pots)


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow),
                                    pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
@pytest.mark.parametrize("semiring, kind", MATRIX, ids=[f"{s!r}-{k}" for s, k in MATRIX])
@settings(max_examples=3)
@given(seed=st.integers(0, 2**16), lengths=lengths_drawn, extras=st.booleans())
def test_compiled_equals_eager(semiring, kind, device, seed, lengths, extras):
    """float64; on CUDA through the CUDA graphs."""
    check_case(semiring, kind, seed, lengths, extras, device)


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("semiring", [LogSemiring(), KMaxSemiring(3), EntropySemiring(), MaxCountSemiring()], ids=repr)
def test_compiled_float32_on_the_gpu_is_as_accurate_as_eager(semiring):
    """float32 on CUDA graphs: within float32 rounding of the float64 scan
    (exact for MaxCount on integers), at a size of several blocks."""
    integer = isinstance(semiring, EXACT)
    p64 = problem("factorized", 5, [T, 17, 9], True, torch.float64, "cuda", integer)
    p32 = p64.replace(**{k: t.float() for k, t in p64.tensors().items()})
    got = semimarkov_scan(p32, semiring, backend="compiled")
    want = semimarkov_scan(p64, semiring, backend="reference")
    if integer:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@CUDA
def test_graph_replays_read_nothing_freed_since_their_capture():
    """A CUDA graph reads the memory of the tensors it was captured with:
    after a capture, small blocks are freed and refilled with other values,
    and a scan under autograd (replaying the graph) still has the eager
    scan's value and gradients. (The block's position offsets were once held
    by nothing but the capture's closure: overwritten, the replays stepped
    at wrong positions.)"""
    compiled.clear_cache()
    p = problem("factorized", 11, [T, 17, 9], True, torch.float64, "cuda")
    with torch.no_grad():
        semimarkov_scan(p, LogSemiring(), backend="compiled")  # captures the block's graph
    filler = [torch.full((n,), 10 ** 6, dtype=torch.int64, device="cuda") for n in range(1, 64) for _ in range(8)]
    assert_compiled_equals_eager(LogSemiring(), (p,))
    assert_gradients_equal(LogSemiring(), (p,))
    del filler


def test_a_second_derivative_through_the_compiled_scan_raises():
    """The blocks' backward is once differentiable: a gradient penalty
    through it raises, naming the reference rung, instead of dropping its
    second-order term (and `loss + penalty` does not pass silently)."""
    p = problem("factorized", 3, [T, 17, 9], True)
    q, named = with_grad(p)
    out = semimarkov_scan(q, StdSemiring(), backend="compiled")
    (grad,) = torch.autograd.grad(out.sum(), [named["scores"]], create_graph=True)
    with pytest.raises(RuntimeError, match="the gradient of the compiled scan cannot be differentiated again"):
        (out.sum() + (grad ** 2).sum()).backward()


@pytest.mark.parametrize("shape, dtype", [((16, 1, 3, 5), torch.float32), ((16, 2, 3), torch.float64),
                                          ((16,), torch.int64), ((16, 4, 8), torch.float32)])
def test_aligned_unbind_gives_the_pieces_of_unbind_each_16_byte_aligned(shape, dtype):
    """A compiled step clones an input that is not 16-byte aligned (one copy
    a step on a GPU): the block's pieces (positions, rows) are aligned there,
    and equal `unbind`'s; pieces already aligned, and every piece on the
    CPU (where nothing is cloned), are `unbind`'s own views."""
    x = torch.arange(torch.Size(shape).numel(), dtype=torch.float64).reshape(shape).to(dtype)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(compiled._aligned_unbind(x), x.unbind(0)))  # the CPU's
    pieces = compiled._aligned_unbind(x, pad=True)  # a GPU's
    assert len(pieces) == shape[0]
    for got, want in zip(pieces, x.unbind(0)):
        assert torch.equal(got, want) and got.shape == want.shape
        assert got.data_ptr() % 16 == 0
    if x[0].numel() * x.element_size() % 16 == 0:
        assert all(piece.data_ptr() == want.data_ptr() for piece, want in zip(pieces, x.unbind(0)))


def test_a_factorized_step_reads_rows_gathered_for_it_as_it_reads_the_tables():
    """`ScanProgram.rows` at a vector of positions stacks the rows of each
    position, and a step given its rows equals the step that reads them."""
    program = ScanProgram(problem("factorized", 5, [T, 17, 9], True), LogSemiring())
    positions = torch.arange(3, 3 + compiled.BLOCK)
    stacked = program.rows(positions)
    ring = program.initial_ring()
    for i, e in enumerate(positions.tolist()):
        if e >= T:
            break
        rows = program.rows(e)
        for row, block_rows in zip(rows, stacked):
            assert torch.equal(row, block_rows[:, :, i])
        stepped = program.step(ring, e)
        for got, want in zip(program.step(ring, e, rows=rows), stepped):
            assert torch.equal(got, want)
        ring = stepped[0]


@pytest.mark.parametrize("semiring", SHIPPED + [MaxCountSemiring()], ids=repr)
def test_a_step_reading_factors_embedded_ahead_equals_the_step_that_embeds_them(semiring):
    """Where the semiring's `times_potential` is the default `times(a,
    embed(x))`, a program embeds its factors ahead (the compiled rung does
    once a block), and its steps then equal, bit for bit, the steps that
    embed them; the Log, Max and KMax semirings add log-potentials without
    embedding and do not. An embedded program's step refuses to read the
    raw tables."""
    pots = tuple(problem("factorized", 5 + i, [T, 17, 9], True, integer=isinstance(semiring, EXACT))
                 for i in range(semiring.num_potentials))
    program = ScanProgram(pots, semiring)
    assert program.embeds_ahead == (not isinstance(semiring, (LogSemiring, KMaxSemiring)))
    if not program.embeds_ahead:
        return
    ring = program.initial_ring()
    for e in (1, 4, T - 1):
        duration, transition, rows = program.embed_factors(program.rows(e))
        embedded = program.with_embedded(duration, transition)
        for got, want in zip(embedded.step(ring, e, rows=rows), program.step(ring, e)):
            assert torch.equal(got, want)
        ring = program.step(ring, e)[0]
    with pytest.raises(ValueError, match="rows embedded"):
        embedded.step(ring, T - 1)


def test_a_blocks_backward_gathers_each_row_table_once():
    """The steps of a block read rows gathered once for the block, and
    views of the shared tables of their own: the block's autograd graph has
    one gather of each per-position table (not one a step, each of whose
    gradients scattered into the whole `(P, B, T, C)` table and cost the
    backward six kernels a position on the GPU)."""
    p = problem("factorized", 5, [T, 17, 9], True)
    program = ScanProgram(p, LogSemiring())
    blocks = compiled.CompiledBlocks.__new__(compiled.CompiledBlocks)  # its functions uncompiled
    blocks.template, blocks.names = program, tuple(program.tables())
    blocks.step, blocks.open = compiled._step, compiled._open
    tables = [t.detach().requires_grad_() for t in program.tables().values()]
    ring, offset, _ = program.initial_state()
    out_ring = blocks._block(tables, (ring, offset), torch.arange(1, 1 + compiled.BLOCK), torch.tensor(1))[0]
    seen, stack, gathers = set(), [out_ring.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        gathers += type(node).__name__.startswith("IndexSelectBackward")
        stack.extend(next_node for next_node, _ in node.next_functions)
    assert gathers == 2  # enter's and leave's


def last_used_blocks() -> compiled.CompiledBlocks:
    """The compiled blocks of the scan that ran last."""
    return next(reversed(compiled._CACHE.values()))


def test_on_the_cpu_the_untracked_forward_runs_each_block_as_one_compiled_scan(monkeypatch):
    """Off CUDA graphs a block of the forward is one call whose steps are a
    `scan`, not a compiled call a step (whose host time cost more than a
    k-best step's work), and it equals the block made of steps."""
    semiring, p = KMaxSemiring(3), problem("factorized", 7, [T, 17, 9], True)
    semimarkov_scan(p, semiring, backend="compiled")  # makes (and compiles) the entry
    blocks = last_used_blocks()
    steps = []
    monkeypatch.setattr(blocks, "step", lambda *args: steps.append(args) or compiled._step(*args))
    assert_compiled_equals_eager(semiring, p)  # p requires no gradient: the untracked forward
    assert blocks.scanned is not None and not steps

    program = ScanProgram(p, semiring)
    tables, (ring, offset, _) = list(program.tables().values()), program.initial_state()
    positions, start = torch.arange(2, 2 + compiled.BLOCK), torch.tensor(3)
    scanned = blocks._scanned(tables, (ring, offset), positions, start)
    stepped = blocks._block(tables, (ring, offset), positions, start)
    assert len(steps) == compiled.BLOCK
    for a, b in zip(scanned, stepped):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_program_whose_tensors_share_memory_runs_a_compiled_call_a_step():
    """A `scan` body may not read tensors that share memory, as the two
    potential sets of cross-entropy on `(K, C, C)` transitions do (views of
    one stacked table): that entry falls back to a compiled call a step,
    and still equals the eager scan."""
    semiring = CrossEntropySemiring()
    pots = (problem("general", 3, [T, 12, 5], False), problem("general", 4, [T, 12, 5], False))
    assert_compiled_equals_eager(semiring, pots)
    assert last_used_blocks().scanned is None


# -- kept blocks and checkpointed ones -------------------------------------------
def spy_on_kept_blocks(monkeypatch) -> list:
    """The `e_last` of every block that `forward_keeping` runs, in order."""
    kept, original = [], compiled.CompiledBlocks.forward_keeping

    def spy(self, ticket, tables, ring, offset, span):
        kept.append(span.e_last)
        return original(self, ticket, tables, ring, offset, span)

    monkeypatch.setattr(compiled.CompiledBlocks, "forward_keeping", spy)
    return kept


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
@pytest.mark.parametrize("semiring, kind", [(EntropySemiring(), "general"), (LogSemiring(), "factorized"),
                                            (KMaxSemiring(3), "factorized")], ids=repr)
def test_kept_and_checkpointed_blocks_give_the_reference_gradients(semiring, kind, device, monkeypatch):
    """Every block kept, the budget's first two kept and the third run again
    in the backward, and none kept: the reference's gradients each time (on
    CUDA through the captured tape and the recomputing graph both)."""
    p = problem(kind, 13, [T, 17, 9], True, device=device)  # three blocks: (1..9), (10..17), (18..21)
    kept = spy_on_kept_blocks(monkeypatch)
    monkeypatch.setattr(compiled, "KEPT_BYTES", 1 << 40)
    assert_gradients_equal(semiring, (p,))
    assert kept == [9, 17, 21]
    per_block = last_used_blocks().kept_bytes
    assert per_block > 0
    for budget, expected in ((2 * per_block, [9, 17]), (0, [])):
        kept.clear()
        monkeypatch.setattr(compiled, "KEPT_BYTES", budget)
        assert_gradients_equal(semiring, (p,))
        assert kept == expected


def test_a_tracked_scan_is_one_autograd_node_whatever_its_blocks():
    """Every block of a tracked scan runs inside one autograd function (its
    backward runs theirs in reverse): one node for three blocks, none a
    block, so the host does not pay autograd's work a block."""
    p, _ = with_grad(problem("factorized", 7, [T, 17, 9], True))  # three blocks, each where sequences end
    value = semimarkov_scan(p, LogSemiring(), backend="compiled")
    seen, stack = set(), [value.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    assert sum(type(node).__name__ == "_ScanBackward" for node in seen) == 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
def test_kept_scans_run_backward_twice_and_each_through_its_own_tables(device, monkeypatch):
    """Two scans of one cache entry, then one backward through both (on
    CUDA graphs the second scan's tables replace the first's in the static
    buffers, and the first's backward must load them back), run twice with
    `retain_graph`: the reference's gradients, twice."""
    monkeypatch.setattr(compiled, "KEPT_BYTES", 1 << 40)
    semiring = EntropySemiring()
    copies = [with_grad(problem("factorized", seed, [T, 17, 9], True, device=device)) for seed in (21, 22)]
    leaves = [t for _, named in copies for t in named.values()]
    want = torch.autograd.grad(sum(semimarkov_scan(q, semiring, backend="reference").sum() for q, _ in copies),
                               leaves, allow_unused=True)
    total = sum(semimarkov_scan(q, semiring, backend="compiled").sum() for q, _ in copies)
    for retain in (True, False):
        got = torch.autograd.grad(total, leaves, allow_unused=True, retain_graph=retain)
        for g, w in zip(got, want):
            if w is None:
                assert g is None or not g.any()
            else:
                torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_a_blocks_saved_bytes_determine_its_backward():
    """Beyond the tables, a kept block's backward reads only the storages
    its autograd graph saved: a tape recorded from other inputs, given a
    block's saved bytes, gives that block's gradients bit for bit (as the
    captured tape on CUDA graphs does for every block). The tables' own
    storages are not among the bytes."""
    program = ScanProgram(problem("factorized", 5, [T, 17, 9], True), EntropySemiring())
    blocks = compiled.blocks_for(program)
    tables = [t.detach() for t in program.tables().values()]
    ring, offset, _ = program.initial_state()
    first = compiled._Tape.record(blocks._block, tables, (ring, offset), torch.arange(1, 17), torch.tensor(1))
    later_ring = first.outputs[0].detach()
    second = compiled._Tape.record(blocks._block, tables, (later_ring, first.offset), torch.arange(6, 22),
                                   torch.tensor(6))
    assert {s.data_ptr() for s in first.storages}.isdisjoint(t.untyped_storage().data_ptr() for t in tables)
    g = torch.Generator().manual_seed(0)
    upstream = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in first.outputs]
    want = first.vjp(upstream, retain=True)
    before = second.vjp(upstream, retain=True)
    assert any(not torch.equal(a, b) for a, b in zip(before, want))  # the two blocks' gradients differ
    second.restore(first.values())
    for got, expected in zip(second.vjp(upstream, retain=True), want):
        assert torch.equal(got, expected)
