"""The gene-structure example: its GenBank parser and labels on a hand-made
fixture (tests/data/fixture.gb), its metrics, and the --quick run end to end
on the real AUGUSTUS loci (fetched once into the user cache, skipped only when
they cannot be fetched)."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import gene_structure as gs  # noqa: E402
from genbank import Gene, parse_genbank, parse_location, read_genbank  # noqa: E402

from semiring_semicrf import Segmentation  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "data" / "fixture.gb"


@pytest.fixture(scope="module")
def loci():
    return read_genbank(FIXTURE)


# -- parser ------------------------------------------------------------------------------------------------------
def test_fixture_records(loci):
    assert [locus.name for locus in loci] == ["FIX_FWD", "FIX_REV"]
    assert [len(locus) for locus in loci] == [120, 150]
    assert loci[0].sequence.startswith("ttgacatataatgaaacccg") and loci[0].sequence.endswith("ataaataaat")
    assert loci[1].sequence[120:] == "atatatatatgcgcgcgcgctatatatata"
    assert "n" in loci[0].sequence and loci[0].sequence == loci[0].sequence.lower()


def test_fixture_genes(loci):
    forward, reverse = loci[0].genes
    assert forward == Gene("fwdA", 1, ((10, 30), (40, 60)))          # join(11..30,41..60), 1-based inclusive
    assert forward.introns == ((30, 40),) and (forward.start, forward.end) == (10, 60)
    assert reverse == Gene("revB", -1, ((90, 110),))                 # complement(91..110), /locus_tag
    (spliced,) = loci[1].genes                                       # location over two lines, no /gene
    assert spliced == Gene("FIX_REV.cds0", -1, ((0, 20), (40, 55), (70, 100)), open_5prime=False, open_3prime=True)
    assert spliced.introns == ((20, 40), (55, 70))


def test_gzip_file_reads_the_same(loci, tmp_path):
    path = tmp_path / "fixture.gb.gz"
    path.write_bytes(gzip.compress(FIXTURE.read_bytes()))
    assert read_genbank(path) == loci


@pytest.mark.parametrize("text, expected", [
    ("1..10", (1, ((0, 10),), False, False)),
    ("5", (1, ((4, 5),), False, False)),
    ("join(1..10, 20..30)", (1, ((0, 10), (19, 30)), False, False)),
    ("complement(join(20..30,1..10))", (-1, ((0, 10), (19, 30)), False, False)),
    ("join(complement(20..30),complement(1..10))", (-1, ((0, 10), (19, 30)), False, False)),
    ("<1..>200", (1, ((0, 200),), True, True)),
    ("join(<1..10,20..30)", (1, ((0, 10), (19, 30)), True, False)),
    ("complement(join(<1..10,20..30))", (-1, ((0, 10), (19, 30)), False, True)),
    ("complement(1..>30)", (-1, ((0, 30),), True, False)),
])
def test_parse_location(text, expected):
    assert parse_location(text) == expected


@pytest.mark.parametrize("text, message", [
    ("order(1..10,20..30)", "unsupported location"),
    ("J00194.1:100..202", "unsupported location"),
    ("10^11", "unsupported location"),
    ("join(1..10,complement(20..30))", "mixes both strands"),
    ("join(1..10,5..30)", "overlapping exons"),
    ("join(1..10,,20..30)", "empty element"),
    ("join(1..10", "unbalanced"),
    ("30..10", "1 <= start <= end"),
    ("1..500", "runs past the record's length 100"),
    ("", "empty location"),
])
def test_parse_location_errors(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_location(text, length=100)


def test_malformed_records_name_the_problem():
    good = FIXTURE.read_text().split("//\n")[0]
    with pytest.raises(ValueError, match="but LOCUS says 121"):
        parse_genbank(good.replace("FIX_FWD   120 bp", "FIX_FWD   121 bp") + "//\n")
    with pytest.raises(ValueError, match="no ORIGIN"):
        parse_genbank(good.split("ORIGIN")[0] + "//\n")
    with pytest.raises(ValueError, match="not terminated"):
        parse_genbank(good)
    with pytest.raises(ValueError, match="must start with a LOCUS line"):
        parse_genbank("FEATURES   x\n//\n")


# -- labels and chopping -----------------------------------------------------------------------------------------
def label_runs(locus):
    return gs.runs(gs.locus_labels(locus))


def test_label_arrays(loci):
    ig, ef, nf, er, nr = range(5)
    assert gs.LABELS == ("intergenic", "exon+", "intron+", "exon-", "intron-")
    assert label_runs(loci[0]) == [(0, 10, ig), (10, 30, ef), (30, 40, nf), (40, 60, ef), (60, 90, ig),
                                   (90, 110, er), (110, 120, ig)]
    assert label_runs(loci[1]) == [(0, 20, er), (20, 40, nr), (40, 55, er), (55, 70, nr), (70, 100, er),
                                   (100, 150, ig)]
    labels = gs.locus_labels(loci[0])
    assert labels.dtype == np.int64 and labels.shape == (120,)


def test_overlapping_genes_are_rejected(loci):
    locus = loci[0]
    clash = type(locus)(locus.name, locus.sequence, locus.genes + (Gene("x", 1, ((50, 70),)),))
    with pytest.raises(ValueError, match="overlaps another gene"):
        gs.locus_labels(clash)


@pytest.mark.parametrize("K", [1, 3, 8, 20, 50, 200])
def test_chop_into_pieces_of_at_most_K(loci, K):
    for locus in loci:
        segments = label_runs(locus)
        pieces = gs.chop(segments, K)
        assert all(0 < end - start <= K for start, end, _ in pieces)
        assert pieces[0][0] == 0 and pieces[-1][1] == len(locus)
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))        # they tile the locus
        labels = np.concatenate([[label] * (end - start) for start, end, label in pieces])
        assert (labels == gs.locus_labels(locus)).all()
        for start, end, _ in segments:                                      # the remainder, then K, K, ...
            inside = [e - s for s, e, _ in pieces if start <= s < end]
            first = (end - start - 1) % K + 1
            assert inside == [first] + [K] * ((end - start - first) // K)
        starts = np.zeros(len(locus), dtype=bool)
        starts[[s for s, _, _ in pieces]] = True
        states, chain_starts = gs.chain(gs.locus_labels(locus), K)
        assert (chain_starts == starts).all()
        first_pieces = np.zeros(len(locus), dtype=bool)                  # on the first piece of its run
        for start, end, _ in segments:
            first_pieces[start:start + (end - start - 1) % K + 1] = True
        expected = np.where(first_pieces, labels, labels + len(gs.LABELS))
        assert (states == expected).all()


def test_chop_example(loci):
    assert gs.chop([(0, 20, 3), (20, 36, 4), (36, 37, 0)], 8) == [(0, 4, 3), (4, 12, 3), (12, 20, 3),
                                                                  (20, 28, 4), (28, 36, 4), (36, 37, 0)]
    with pytest.raises(ValueError, match="max_duration must be an int >= 1"):
        gs.chop([(0, 5, 1)], 0)


@pytest.mark.parametrize("K", [1, 8])
def test_collate_gives_a_valid_gold_segmentation(loci, K):
    items = gs.examples(loci)
    one_hot, lengths, gold = gs.collate(items, K, "cpu")
    assert one_hot.shape == (2, 150, 4) and lengths.tolist() == [120, 150]
    assert one_hot[0, 86:88].sum() == 0 and one_hot[0, :120].sum() == 118    # the two n's, and the padding
    pieces = [(a, b, int(gs.state_labels(torch.tensor(c)))) for a, b, c in gold.to_segments()[1]]
    assert pieces == gs.chop(label_runs(loci[1]), K)
    head = gs.ChainedCRFHead(len(gs.LABELS), K, 4)
    loss = head.compute_loss(torch.randn(2, 150, 4), lengths, gold)         # validates the pieces against K
    assert torch.isfinite(loss)


def test_windows_cut_long_loci(loci):
    windows = gs.examples(loci, window=50)
    assert [len(w) for w in windows] == [40, 40, 40, 50, 50, 50]
    assert np.concatenate([w.labels for w in windows[:3]]).tolist() == gs.locus_labels(loci[0]).tolist()


# -- the chained head: one segmentation per labelling ------------------------------------------------------------
def random_potentials(T, K, C, seed):
    g = torch.Generator().manual_seed(seed)
    shapes = {"scores": (1, T, C), "transition": (C, C), "duration": (K, C), "start": (C,), "end": (C,),
              "run_start_scores": (1, T, C)}
    return {name: torch.randn(*shape, generator=g, dtype=torch.float64) for name, shape in shapes.items()}


def labelling_score(labels, K, p):
    """Brute-force score of a labelling under the chain model: each run of
    length L = r + m K scores its content, duration[r - 1] + m (duration[K - 1]
    + transition[c, c]), its run-start score, the transition from the previous
    run or start, and end."""
    total = 0.0
    segments = gs.runs(np.array(labels))
    for i, (a, b, c) in enumerate(segments):
        r = (b - a - 1) % K + 1
        m = (b - a - r) // K
        total += float(p["scores"][0, a:b, c].sum() + p["duration"][r - 1, c]
                       + m * (p["duration"][K - 1, c] + p["transition"][c, c]) + p["run_start_scores"][0, a, c])
        total += float(p["start"][c] if i == 0 else p["transition"][segments[i - 1][2], c])
    return total + float(p["end"][segments[-1][2]])


@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_every_labelling_is_exactly_one_chain(K):
    """Brute force over a tiny problem: the chained potentials allow exactly
    one segmentation per labelling (C ** T of them), the chain of `chop`,
    scored as the docstring says."""
    from semiring_semicrf import SemiMarkovDistribution

    T, C = 6, 2
    p = random_potentials(T, K, C, seed=K)
    dist = SemiMarkovDistribution(**gs.chain_potentials(**p))
    support = dist.enumerate_support(limit=200_000)          # over all 2C-state segmentations, forbidden ones dropped
    labellings = [tuple(gs.state_labels(row, C).tolist()) for row in support.labels[:, 0]]
    assert support.shape[0] == len(set(labellings)) == C ** T
    log_z = torch.logsumexp(torch.tensor([labelling_score(lab, K, p) for lab in labellings], dtype=torch.float64), 0)
    assert torch.allclose(dist.partition, log_z[None])
    for labels in ([0] * T, [1, 1, 0, 0, 0, 1], [0, 1, 1, 1, 1, 0]):
        states, starts = gs.chain(np.array(labels), K, num_labels=C)
        gold = Segmentation(torch.from_numpy(states)[None], torch.from_numpy(starts)[None])
        assert torch.allclose(dist.log_prob(gold), labelling_score(labels, K, p) - log_z)


def test_chain_potentials_shapes_and_forbidden_moves():
    p = random_potentials(4, 3, 2, seed=0)
    q = gs.chain_potentials(**p)
    assert q["scores"].shape == (1, 4, 4) and q["transition"].shape == (4, 4) and q["duration"].shape == (3, 4)
    assert torch.equal(q["start_scores"][..., :2], p["run_start_scores"]) and (q["start_scores"][..., 2:] == 0).all()
    # forbidden: a new run of the label a run is in (from c or c + C to c), and another label's continuation
    assert torch.isneginf(q["transition"][[0, 0, 1, 1, 2, 3], [0, 3, 1, 2, 0, 1]]).all()
    assert torch.equal(q["transition"][0, 2], p["transition"][0, 0])          # continue a run of label 0
    assert torch.isneginf(q["duration"][:2, 2:]).all() and torch.equal(q["duration"][2, 2:], p["duration"][2])
    assert torch.isneginf(q["start"][2:]).all()
    with pytest.raises(ValueError, match="need transition"):
        gs.chain_potentials(p["scores"], torch.zeros(2, 3), p["duration"], p["start"], p["end"])
    plain = gs.chain_potentials(*(p[k] for k in ("scores", "transition", "duration", "start", "end")))
    assert "start_scores" not in plain


@pytest.mark.parametrize("K", [1, 6])
def test_chained_potentials_in_the_triton_kernels(K):
    """On CUDA the head's "auto" backend runs the chained (2C-state, -inf
    laden) potentials through the Triton kernels: they must agree with the
    PyTorch sweeps and the reference Viterbi (without a GPU, through Triton's
    interpreter on tiny sizes; conftest.py sets TRITON_INTERPRET)."""
    pytest.importorskip("triton")
    from semiring_semicrf import SemiMarkovDistribution, backends

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    B, T, C = 2, 30, len(gs.LABELS)
    shapes = {"scores": (B, T, C), "transition": (C, C), "duration": (K, C), "start": (C,), "end": (C,),
              "run_start_scores": (B, T, C)}
    raw = {name: torch.randn(*shape, generator=g) for name, shape in shapes.items()}
    raw["transition"] = raw["transition"].masked_fill(~torch.from_numpy(gs.GRAMMAR), float("-inf"))  # as GeneFinder
    chained = {name: t.to(device) for name, t in gs.chain_potentials(**raw).items()}
    lengths = torch.tensor([30, 19], device=device)
    fast = SemiMarkovDistribution(lengths=lengths, backend="triton", **chained)
    slow = SemiMarkovDistribution(lengths=lengths, backend="reference", **chained)
    asked = "auto" if device == "cuda" else "triton"          # what the head asks for on a GPU
    assert {backends.select(asked, fast.potentials, query).name for query in ("log", "viterbi")} == {"triton"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # the interpreter's log(0) = -inf
        log_z, marginals, best_score, best = fast.partition, fast.marginals, fast.max, fast.argmax
    assert torch.allclose(log_z, slow.partition, rtol=1e-5)
    assert torch.allclose(marginals, slow.marginals, atol=1e-5)
    assert torch.allclose(best_score, slow.max, rtol=1e-5)
    assert torch.equal(best.labels, slow.argmax.labels) and torch.equal(best.starts, slow.argmax.starts)


def test_chained_head_on_the_fixture(loci):
    torch.manual_seed(0)
    head = gs.ChainedCRFHead(len(gs.LABELS), 8, 4)
    with torch.no_grad():
        for parameter in (head.duration, head.transition, head.boundary.weight):
            parameter.normal_()
    assert head.num_states == 10
    _, lengths, gold = gs.collate(gs.examples(loci), 8, "cpu")
    dist = head(torch.randn(2, 150, 4), lengths)
    assert dist.potentials.C == 10
    loss = -dist.log_prob(gold)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    best = dist.argmax                                       # the Viterbi path is a chain too
    for states, starts, n in zip(best.labels, best.starts, lengths.tolist()):
        labels = gs.state_labels(states[:n]).numpy()
        expected_states, expected_starts = gs.chain(labels, 8)
        assert states[:n].tolist() == expected_states.tolist() and starts[:n].tolist() == expected_starts.tolist()
    merged = gs.label_marginals(dist.marginals)
    assert merged.shape == (2, 150, 5)
    assert torch.allclose(merged.sum(-1)[0, :120], torch.ones(120), atol=1e-5)


def test_grammar_allows_the_genes_and_forbids_the_rest(loci):
    for locus in loci:                                              # every annotated transition is allowed
        labels = [label for _, _, label in label_runs(locus)]
        assert all(gs.GRAMMAR[a, b] for a, b in zip(labels, labels[1:]))
    torch.manual_seed(0)
    head = gs.ChainedCRFHead(len(gs.LABELS), 4, 3, allowed=gs.GRAMMAR)
    with torch.no_grad():
        head.transition.normal_()
    with torch.no_grad():
        dist = head(torch.randn(1, 24, 3))
    gene = [0] * 4 + [1] * 5 + [2] * 6 + [1] * 5 + [0] * 4             # intergenic, exon, intron, exon, intergenic
    strand_swap = [0] * 4 + [1] * 5 + [2] * 6 + [4] * 5 + [3] * 4       # a forward intron into a reverse one
    gold = {}
    for name, labels in (("gene", gene), ("swap", strand_swap)):
        states, starts = gs.chain(np.array(labels), 4)
        gold[name] = float(dist.log_prob(Segmentation(torch.from_numpy(states)[None], torch.from_numpy(starts)[None])))
    assert np.isfinite(gold["gene"]) and gold["swap"] == float("-inf")
    for sample in dist.sample((20,)).labels[:, 0]:
        runs = [label for _, _, label in gs.runs(gs.state_labels(sample).numpy())]
        assert all(gs.GRAMMAR[a, b] for a, b in zip(runs, runs[1:]))
    with pytest.raises(ValueError, match="True diagonal"):
        gs.ChainedCRFHead(len(gs.LABELS), 4, 3, allowed=~gs.GRAMMAR)


def test_padding_does_not_reach_a_sequence(loci):
    """A locus gets the same features and Viterbi labels alone as in a
    batch with a longer one (the dilated blocks would carry the padding's
    activations ~250 bases into it)."""
    torch.manual_seed(0)
    model = gs.GeneFinder(8, width=8).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    one_hot, lengths, _ = gs.collate(gs.examples(loci), 8, "cpu")
    alone, alone_lengths, _ = gs.collate(gs.examples(loci[:1]), 8, "cpu")
    with torch.no_grad():
        batched, single = model.encoder(one_hot, lengths)[0, :120], model.encoder(alone, alone_lengths)[0]
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.equal(model.decode(one_hot, lengths)[0, :120], model.decode(alone, alone_lengths)[0])


def test_reverse_complement_swaps_strands(loci):
    (forward,) = gs.examples(loci[:1])
    reverse = gs.reverse_complement(forward)
    assert "".join("acgtn"[c] for c in reverse.codes) == "".join("acgtn"[c] for c in forward.codes[::-1]).translate(
        str.maketrans("acgt", "tgca"))
    # revB (reverse strand, [90, 110)) is now a forward gene at [10, 30); fwdA a reverse gene at [60, 110)
    assert gs.runs(reverse.labels) == [(0, 10, 0), (10, 30, 1), (30, 60, 0), (60, 80, 3), (80, 90, 4), (90, 110, 3),
                                       (110, 120, 0)]
    back = gs.reverse_complement(reverse)
    assert (back.codes == forward.codes).all() and (back.labels == forward.labels).all()


def test_batches_bound_the_padded_size():
    items = [gs.Example(str(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))
             for n in (5, 50, 7, 30, 100, 8)]
    groups = gs.batches(items, 60, shuffle=False, rng=None)
    assert sorted(i for group in groups for i in group) == list(range(6))
    assert all(len(group) * max(len(items[i]) for i in group) <= 60 or len(group) == 1 for group in groups)
    assert groups == [[0, 2, 5], [3], [1], [4]]


# -- metrics -----------------------------------------------------------------------------------------------------
def scores(predicted, locus):
    counts = {level: gs.Counts() for level in ("exon", "gene", "base")}
    gs.evaluate_locus(np.asarray(predicted), locus, counts)
    return {level: count.scores() for level, count in counts.items()}


def test_structures_from_labels():
    labels = [0, 1, 1, 2, 1, 0, 3, 3, 4, 4, 3, 3, 1, 0]
    assert gs.structures(labels) == [(1, ((1, 3), (4, 5))), (-1, ((6, 8), (10, 12))), (1, ((12, 13),))]
    assert gs.structures([0, 0]) == [] and gs.structures([2, 2, 1]) == [(1, ((2, 3),))]


def test_metrics_on_the_fixture(loci):
    locus = loci[0]
    gold = gs.locus_labels(locus)
    perfect = scores(gold, locus)
    assert all(perfect[level]["f1"] == 1.0 for level in ("exon", "gene", "base"))
    shifted = gold.copy()
    shifted[40] = 2                                   # the second exon starts one base late
    result = scores(shifted, locus)
    assert result["exon"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert result["gene"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2})  # revB still right
    assert result["base"]["recall"] == pytest.approx(59 / 60) and result["base"]["precision"] == 1.0
    wrong_strand = gold.copy()
    wrong_strand[90:110] = 1                          # revB called on the forward strand: no match
    assert scores(wrong_strand, locus)["exon"]["recall"] == pytest.approx(2 / 3)
    nothing = scores(np.zeros(120, dtype=np.int64), locus)
    assert nothing["exon"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


# -- data lookup and the quick run -------------------------------------------------------------------------------
def test_data_directory_order(monkeypatch, tmp_path):
    monkeypatch.delenv(gs.ENV_VAR, raising=False)
    assert gs.data_directory() == gs.CACHE_DIR
    monkeypatch.setenv(gs.ENV_VAR, str(tmp_path))
    assert gs.data_directory() == tmp_path
    assert gs.data_directory(str(tmp_path / "x")) == tmp_path / "x"


def test_no_fetch_says_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(gs, "PACKAGE_DIR", "nonexistent/for/this/test")
    with pytest.raises(gs.DataUnavailable, match="apt-get download augustus-doc"):
        gs.find_data(str(tmp_path), fetch=False)


@pytest.mark.parametrize("boundary_scores", [True, False])
def test_parameter_groups_cover_every_parameter_once(boundary_scores):
    model = gs.GeneFinder(8, width=4, boundary_scores=boundary_scores)
    rest, structure, sites = gs.parameter_groups(model, 1e-3, 0.05, 0.15)
    assert [group["lr"] for group in (rest, structure, sites)] == [1e-3, 0.05, 0.15]
    ids = [id(p) for group in (rest, structure, sites) for p in group["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    expected = {*model.encoder.motifs.parameters(), *(model.head.boundary.parameters() if boundary_scores else ())}
    assert {id(p) for p in sites["params"]} == {id(p) for p in expected}
    features = model.encoder(torch.zeros(2, 50, 4))
    assert features.shape == (2, 50, model.encoder.out_features) == (2, 50, 4 + 32)


def test_time_budget_defaults_and_shares(monkeypatch):
    assert gs.parse(["--quick"]).time_budget == gs.QUICK["time_budget"]
    assert gs.parse([]).time_budget == gs.FULL["time_budget"]
    assert gs.parse(["--time-budget", "0"]).time_budget == 0
    with pytest.raises(SystemExit):
        gs.parse(["--time-budget", "-1"])
    monkeypatch.setattr(gs.time, "perf_counter", lambda: 1000.0)
    assert gs.training_allowance(0, 1000.0, 2) is None
    assert gs.training_allowance(200, 1000.0, 2) == pytest.approx(200 * (1 - gs.EVALUATION_SHARE) / 2)
    assert gs.training_allowance(200, 900.0, 1) == pytest.approx(200 * (1 - gs.EVALUATION_SHARE) - 100)
    assert gs.training_allowance(200, 0.0, 1) == 1.0                  # past the budget: one second, not less


def tiny_training(loci, epochs):
    args = gs.parse(["--epochs", str(epochs), "--width", "4", "--max-tokens", "100", "--no-progress"])
    torch.manual_seed(0)
    model = gs.GeneFinder(4, args.width)
    return model, args, gs.examples(loci)                            # two examples: one batch each


def test_training_without_a_budget_runs_its_epochs_reproducibly(loci):
    trained = []
    for _ in range(2):
        model, args, data = tiny_training(loci, 2)
        before = [p.detach().clone() for p in model.parameters()]
        record = gs.train(model, data, args, "cpu", "tiny")
        assert record["epochs"] == 2 and not record["cut_by_time_budget"] and not record["schedule_by_clock"]
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        trained.append(list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(*trained))


def test_time_budget_stops_between_batches(loci, monkeypatch):
    """A clock that advances one second per reading: a budget of 3.5 s lets
    a few batches run, then stops training before the epochs are done."""
    model, args, data = tiny_training(loci, 5)
    clock = iter(range(10_000))
    monkeypatch.setattr(gs.time, "perf_counter", lambda: float(next(clock)))
    record = gs.train(model, data, args, "cpu", "tiny", seconds=3.5)
    assert record["cut_by_time_budget"] and record["schedule_by_clock"]
    assert 0 < record["epochs"] < 5 and (2 * record["epochs"]).is_integer()
    model, args, data = tiny_training(loci, 5)
    before = [p.detach().clone() for p in model.parameters()]
    record = gs.train(model, data, args, "cpu", "tiny", seconds=1e-9)
    assert record["cut_by_time_budget"] and record["epochs"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_main_on_the_fixture_without_matplotlib(loci, monkeypatch, capsys, tmp_path):
    """main end to end in-process, on the fixture's two loci (for training
    and test): without matplotlib it says so first, then trains both models
    and writes metrics.json, without the plot."""
    def missing(submodule="matplotlib"):
        raise ImportError("plotting needs matplotlib, which is not installed: pip install ...")

    monkeypatch.setattr(gs, "require_matplotlib", missing)
    monkeypatch.setattr(gs, "load", lambda args: (loci, loci))
    summary = gs.main(["--epochs", "2", "--width", "4", "-K", "8", "--device", "cpu", "--no-progress",
                       "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: plotting needs matplotlib")
    assert "semi-CRF (K=8)" in captured.out and "linear CRF (K=1)" in captured.out
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(summary))
    assert set(summary["results"]) == {"semi-CRF (K=8)", "linear CRF (K=1)"} and summary["plot_locus"] is None
    assert all(result["epochs"] == 2 for result in summary["results"].values())
    assert not (tmp_path / "gene_posterior.png").exists()


@pytest.fixture(scope="session")
def gene_data():
    """The real data directory, fetched once into the user cache (or
    $SEMICRF_GENE_DATA); the test skips, with the reason, only when it
    cannot be fetched."""
    try:
        return gs.find_data(fetch=True)
    except gs.DataUnavailable as error:
        pytest.skip(f"the AUGUSTUS gene data cannot be fetched here: {error}")


@pytest.mark.slow
def test_quick_run(gene_data, tmp_path):
    """`examples/gene_structure.py --quick` finishes, prints the table of
    exon F1 for both models and writes metrics.json and the plot."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "gene_structure.py"), "--quick", "--no-progress",
         "--data", str(gene_data), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1200, env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0, f"--quick failed:\n{result.stdout}\n{result.stderr}"
    header = next(line for line in result.stdout.splitlines() if line.startswith("model"))
    assert "exon F1" in header and "gene F1" in header
    models = ("semi-CRF (K=100)", "linear CRF (K=1)")
    assert all(any(line.startswith(name) for line in result.stdout.splitlines()) for name in models), result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mode"] == "quick" and set(metrics["results"]) == set(models)
    for result in metrics["results"].values():
        assert all(0.0 <= result[level][m] <= 1.0 for level in ("exon", "gene", "base")
                   for m in ("precision", "recall", "f1"))
        assert 0 < result["epochs"] <= metrics["epochs"]
    assert (tmp_path / "gene_posterior.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "gene_posterior.png").stat().st_size > 10_000
