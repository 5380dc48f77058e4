"""Gene structure with a semi-Markov CRF on real D. melanogaster loci.

Trains a small dilated-convolution encoder over one-hot DNA with a
`SemiMarkovCRFHead` on top, labelling every base of a locus as intergenic,
exon or intron (forward and reverse strand kept apart), and compares it with
the same model restricted to segments of length 1 (K = 1: a linear-chain CRF)
trained the same way. The data are the AUGUSTUS tutorial's training and test
loci (486 and 100 GenBank records, 381 to 118,333 bp), shipped by Debian's
`augustus-doc` package and fetched with `apt-get download` when missing.

    python examples/gene_structure.py --quick            # short loci, about 2 minutes on 2 CPU cores
    python examples/gene_structure.py --device cuda      # every locus (the full run, at most about 5 minutes)

Both stop training at a wall-clock budget (--time-budget: 200 s quick, 300 s
full) so that they end in time on a slow or loaded machine.

It prints exon-, gene- and base-level precision, recall and F1 on the test
loci and writes `metrics.json` and `gene_posterior.png` (posterior label
marginals and boundary probabilities over one test gene, with the annotated
exons beneath) to `--out`. The label scheme, the metrics and the caveats are
described in docs/gene_structure.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from semiring_semicrf import Segmentation, SemiMarkovCRFHead, SemiMarkovDistribution
from semiring_semicrf.plot import require_matplotlib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from genbank import Locus, read_genbank  # noqa: E402  (the sibling module, found from any working directory)

# -- data --------------------------------------------------------------------------------------------------------
DATA_FILES = ("genes.gb.train", "genes.gb.test")
PACKAGE = "augustus-doc"
PACKAGE_DIR = "usr/share/doc/augustus/tutorial/results"
CACHE_DIR = Path.home() / ".cache" / "semiring-semicrf" / "augustus"
ENV_VAR = "SEMICRF_GENE_DATA"

HOW_TO_GET = f"""\
The gene-structure data ({', '.join(DATA_FILES)}) come from Debian's '{PACKAGE}' package. To fetch them by hand:
    cd $(mktemp -d) && apt-get download {PACKAGE} && dpkg-deb -x {PACKAGE}_*.deb x
    mkdir -p {CACHE_DIR} && cp x/{PACKAGE_DIR}/genes.gb.t* {CACHE_DIR}/
(gunzip them if they end in .gz; 'apt-get update' first if apt-get cannot find the package), or pass
--data DIR / set {ENV_VAR}=DIR to a directory holding both files."""


class DataUnavailable(RuntimeError):
    """The data files are neither found nor fetchable; the message says how to get them."""


def data_directory(explicit: str | None = None) -> Path:
    """Where the data live or will be fetched to: `explicit` (--data), else
    ${SEMICRF_GENE_DATA}, else ~/.cache/semiring-semicrf/augustus."""
    chosen = explicit or os.environ.get(ENV_VAR)
    return Path(chosen).expanduser() if chosen else CACHE_DIR


def _complete(directory: Path) -> bool:
    """True when `directory` holds both data files (plain or .gz)."""
    return all((directory / name).is_file() or (directory / f"{name}.gz").is_file() for name in DATA_FILES)


def data_path(directory: Path, name: str) -> Path:
    """The file `name` in `directory`, plain or gzip-compressed."""
    plain = directory / name
    return plain if plain.is_file() else directory / f"{name}.gz"


def find_data(explicit: str | None = None, fetch: bool = True, log=print) -> Path:
    """A directory holding `genes.gb.train` and `genes.gb.test`.

    Looks in :func:`data_directory`, then in an installed `augustus-doc`
    (/usr/share/doc/...); if neither has them and `fetch`, downloads the
    package into the data directory (:func:`fetch_data`). Raises
    DataUnavailable with instructions otherwise.
    """
    target = data_directory(explicit)
    for directory in (target, Path("/") / PACKAGE_DIR):
        if _complete(directory):
            return directory
    if not fetch:
        raise DataUnavailable(f"no data in {target} and fetching is off (--no-fetch).\n{HOW_TO_GET}")
    return fetch_data(target, log=log)


def fetch_data(target: Path, log=print) -> Path:
    """Download `augustus-doc` with apt-get into a scratch directory, unpack
    it with dpkg-deb and copy the two data files (decompressed) to `target`.
    Each file is moved into place atomically, so concurrent runs are safe."""
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise DataUnavailable(f"cannot fetch the data: {' and '.join(missing)} not found (a Debian-based system "
                              f"is needed to fetch it automatically).\n{HOW_TO_GET}")
    log(f"fetching {PACKAGE} with apt-get download into {target} ...")
    with tempfile.TemporaryDirectory(prefix="semicrf-augustus-") as scratch_name:
        scratch = Path(scratch_name)
        _run(["apt-get", "download", PACKAGE], scratch)
        debs = sorted(scratch.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise DataUnavailable(f"apt-get download {PACKAGE} produced no .deb file.\n{HOW_TO_GET}")
        _run(["dpkg-deb", "-x", str(debs[0]), str(scratch / "x")], scratch)
        source = scratch / "x" / PACKAGE_DIR
        if not _complete(source):
            raise DataUnavailable(f"{debs[0].name} does not contain {PACKAGE_DIR}/{DATA_FILES}.\n{HOW_TO_GET}")
        target.mkdir(parents=True, exist_ok=True)
        for name in DATA_FILES:
            _install(data_path(source, name), target / name)
    return target


def _run(command: list[str], cwd: Path) -> None:
    """Run a fetch command; DataUnavailable with its output when it fails."""
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DataUnavailable(f"{' '.join(command)} failed: {error}\n{HOW_TO_GET}") from None
    if result.returncode != 0:
        raise DataUnavailable(f"{' '.join(command)} failed (exit {result.returncode}):\n"
                              f"{(result.stdout + result.stderr).strip()}\n{HOW_TO_GET}")


def _install(source: Path, destination: Path) -> None:
    """Copy `source` (decompressing .gz) to `destination` through a temporary file."""
    import gzip

    partial = destination.with_name(f".{destination.name}.{os.getpid()}.part")
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rb") as reader, open(partial, "wb") as writer:
        shutil.copyfileobj(reader, writer)
    os.replace(partial, destination)


# -- labels ------------------------------------------------------------------------------------------------------
#: Label scheme: the strand is part of the label, so that a forward intron can
#: only sit between forward exons (the transition scores learn it), and the
#: encoder's splice-site features (GT..AG forward, CT..AC reverse) feed separate labels.
LABELS = ("intergenic", "exon+", "intron+", "exon-", "intron-")
INTERGENIC = 0
EXON = {1: 1, -1: 3}
INTRON = {1: 2, -1: 4}
STRAND_OF = {1: 1, 2: 1, 3: -1, 4: -1}
EXON_LABELS = (1, 3)
#: Which label may follow which where a run ends (`GRAMMAR[a, b]`: b after a;
#: a run's own continuation, the diagonal, is always allowed): a gene starts
#: and ends with an exon, and an intron lies between two exons of its strand.
GRAMMAR = np.eye(len(LABELS), dtype=bool)
for _before, _after in ((0, 1), (0, 3), (1, 0), (1, 2), (2, 1), (3, 0), (3, 4), (4, 3)):
    GRAMMAR[_before, _after] = True


def locus_labels(locus: Locus) -> np.ndarray:
    """Per-base labels `(T,)` int64 of a locus (indices into LABELS): each
    gene's exons and the introns between them on its strand, intergenic
    elsewhere (UTRs included: the records annotate coding exons only).
    Raises ValueError when two genes overlap."""
    labels = np.zeros(len(locus), dtype=np.int64)
    for gene in locus.genes:
        if (labels[gene.start:gene.end] != INTERGENIC).any():
            raise ValueError(f"locus {locus.name}: gene {gene.name} overlaps another gene; one label per base "
                             "cannot represent overlapping genes")
        labels[gene.start:gene.end] = INTRON[gene.strand]
        for start, end in gene.exons:
            labels[start:end] = EXON[gene.strand]
    return labels


def runs(labels: Sequence[int] | np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs of equal labels `(T,)`, `(start, end, label)` with `end` exclusive."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if labels.size == 0:
        return []
    change = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    bounds = np.concatenate([[0], change, [labels.size]])
    return [(int(a), int(b), int(labels[a])) for a, b in zip(bounds[:-1], bounds[1:])]


def chop(segments: Sequence[tuple[int, int, int]], max_duration: int) -> list[tuple[int, int, int]]:
    """Split every segment longer than `max_duration` (K) into a chain of
    pieces of the same label: first the remainder, of length r in [1, K],
    then pieces of length exactly K. A segment of length L = r + m K has
    exactly this one chain (the head below allows no other), and each piece
    is at most K long."""
    if not isinstance(max_duration, int) or isinstance(max_duration, bool) or max_duration < 1:
        raise ValueError(f"max_duration must be an int >= 1, got {max_duration!r}")
    pieces = []
    for start, end, label in segments:
        if end <= start:
            raise ValueError(f"segment {(start, end, label)} is empty")
        first = (end - start - 1) % max_duration + 1
        pieces.append((start, start + first, label))
        pieces.extend((s, s + max_duration, label) for s in range(start + first, end, max_duration))
    return pieces


def chain(labels: np.ndarray, max_duration: int, num_labels: int = len(LABELS)) -> tuple[np.ndarray, np.ndarray]:
    """The gold for :class:`ChainedCRFHead`: `(states, starts)`, both `(T,)`.

    `starts` is True where a piece of :func:`chop` begins; `states` is the
    label on the first piece of each run and `label + num_labels` on its
    continuation pieces."""
    labels = np.asarray(labels)
    starts = np.zeros(labels.size, dtype=bool)
    states = labels.copy()
    for start, end, label in chop(runs(labels), max_duration):
        starts[start] = True
        if start > 0 and labels[start - 1] == label:
            states[start:end] = label + num_labels
    return states, starts


# -- genes from labels, and the metrics --------------------------------------------------------------------------
Structure = tuple[int, tuple[tuple[int, int], ...]]   # (strand, exons)


def structures(labels: Sequence[int] | np.ndarray) -> list[Structure]:
    """The genes a label sequence `(T,)` describes: each maximal stretch of
    non-intergenic bases of one strand is a gene, and its exon runs are its
    exons. A stretch that begins or ends with an intron is kept (it can only
    match no annotated gene)."""
    genes: list[Structure] = []
    current: list[tuple[int, int, int]] = []     # the runs of the gene being read, `(start, end, label)`
    strand: int | None = None                    # its strand
    for start, end, label in runs(labels) + [(0, 0, INTERGENIC)]:
        this = STRAND_OF.get(label)
        if current and this != strand:
            assert strand is not None  # set with current's first run
            genes.append((strand, tuple((s, e) for s, e, lab in current if lab in EXON_LABELS)))
            current = []
        if this is not None:
            current.append((start, end, label))
            strand = this
    return genes


def annotated_structures(locus: Locus) -> list[Structure]:
    """The annotated genes of a locus as `(strand, exons)`."""
    return [(gene.strand, gene.exons) for gene in locus.genes]


@dataclass
class Counts:
    """Matches for precision/recall: `tp` correct predictions, `predicted`
    and `annotated` totals."""

    tp: int = 0
    predicted: int = 0
    annotated: int = 0

    def add(self, predicted: set, annotated: set) -> None:
        self.tp += len(predicted & annotated)
        self.predicted += len(predicted)
        self.annotated += len(annotated)

    def scores(self) -> dict[str, float]:
        """Precision, recall and F1 (0 where undefined)."""
        precision = self.tp / self.predicted if self.predicted else 0.0
        recall = self.tp / self.annotated if self.annotated else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}


def evaluate_locus(predicted_labels: np.ndarray, locus: Locus, counts: dict[str, Counts]) -> None:
    """Add one locus's exon-, gene- and base-level matches to `counts`.

    - exon: a predicted exon (a run of one exon label) is correct when an
      annotated exon has the same strand, start and end;
    - gene: a predicted gene (see :func:`structures`) is correct when an
      annotated gene has the same strand and exactly the same exons;
    - base: a base is a true positive when both call it coding (exon label)
      on the same strand.
    """
    predicted = structures(predicted_labels)
    annotated = annotated_structures(locus)
    counts["exon"].add({(s, a, b) for s, exons in predicted for a, b in exons},
                       {(s, a, b) for s, exons in annotated for a, b in exons})
    counts["gene"].add(set(predicted), set(annotated))
    gold = locus_labels(locus)
    coding_pred, coding_gold = np.isin(predicted_labels, EXON_LABELS), np.isin(gold, EXON_LABELS)
    counts["base"].tp += int((coding_pred & coding_gold & (predicted_labels == gold)).sum())
    counts["base"].predicted += int(coding_pred.sum())
    counts["base"].annotated += int(coding_gold.sum())


# -- tensors -----------------------------------------------------------------------------------------------------
_CODE = np.full(256, 4, dtype=np.int64)
for _index, _base in enumerate("acgt"):
    _CODE[ord(_base)] = _CODE[ord(_base.upper())] = _index


def encode(sequence: str) -> np.ndarray:
    """Base codes `(T,)`: a c g t -> 0 1 2 3, anything else (n, IUPAC) -> 4."""
    return _CODE[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]


@dataclass
class Example:
    """A stretch of a locus ready for training: base `codes` and `labels`, both `(T,)`."""

    name: str
    codes: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return self.codes.size


def examples(loci: Sequence[Locus], window: int | None = None) -> list[Example]:
    """One Example per locus, or, with `window`, consecutive windows of at
    most `window` bases (a locus of length L gives ceil(L / window) windows
    of near-equal length; segments crossing a cut are cut with it)."""
    out = []
    for locus in loci:
        codes, labels = encode(locus.sequence), locus_labels(locus)
        pieces = 1 if window is None else -(-len(locus) // window)
        bounds = np.linspace(0, len(locus), pieces + 1).round().astype(int)
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            out.append(Example(f"{locus.name}[{i}]" if pieces > 1 else locus.name, codes[a:b], labels[a:b]))
    return out


#: Reverse complement: base codes a<->t, c<->g (n stays n), labels forward<->reverse strand.
COMPLEMENT_CODE = np.array([3, 2, 1, 0, 4])
OTHER_STRAND = np.array([0, 3, 4, 1, 2])


def reverse_complement(example: Example) -> Example:
    """The same stretch read from the other strand: reversed, complemented,
    and every gene label moved to the other strand (a gene on the forward
    strand of a locus lies on the reverse strand of its reverse complement)."""
    return Example(f"{example.name}(rc)", COMPLEMENT_CODE[example.codes[::-1]],
                   OTHER_STRAND[example.labels[::-1]])


def batches(items: Sequence[Example], max_tokens: int, shuffle: bool, rng: random.Random | None) -> list[list[int]]:
    """Index batches of examples of similar length, each holding at most
    `max_tokens` padded positions (or one example if it alone is longer);
    in random order when `shuffle` (drawn from `rng`, which may be None
    otherwise)."""
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * len(items[i]) > max_tokens:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    if shuffle:
        if rng is None:
            raise ValueError("shuffle=True needs an rng")
        rng.shuffle(groups)
    return groups


def collate(items: Sequence[Example], max_duration: int, device) -> tuple[torch.Tensor, torch.Tensor, Segmentation]:
    """One-hot DNA `(B, T, 4)`, lengths `(B,)` and the gold Segmentation
    `(B, T)` over the states of a ChainedCRFHead with K = `max_duration`
    (:func:`chain`: pieces of at most K)."""
    item_lengths = [len(item) for item in items]
    T = max(item_lengths)
    codes = np.full((len(items), T), 4, dtype=np.int64)
    labels = np.full((len(items), T), -1, dtype=np.int64)
    starts = np.zeros((len(items), T), dtype=bool)
    for b, item in enumerate(items):
        codes[b, :len(item)] = item.codes
        labels[b, :len(item)], starts[b, :len(item)] = chain(item.labels, max_duration)
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(codes), 5)[..., :4].float()
    lengths = torch.tensor(item_lengths)
    gold = Segmentation(torch.from_numpy(labels), torch.from_numpy(starts), lengths)
    return one_hot.to(device), lengths.to(device), gold.to(device)


# -- model -------------------------------------------------------------------------------------------------------
class DilatedConvEncoder(nn.Module):
    """One-hot DNA `(B, T, 4)` -> features `(B, T, width + motifs)`.

    Context features (`width`): a width-9 convolution, then residual blocks
    of dilated convolutions (kernel 5), layer-normalized. The dilations are
    powers of 3, so each block compares bases in the same codon position (a
    coding region's 3-periodic composition); with the default 1, 3, 9, 27, 81
    each position sees about 500 bases. Motif features (`motifs`): one
    convolution of the `motif_size` bases centred on each position, then
    GELU, beside them. Splice sites and start and stop codons are such local
    motifs, which the wide context features blur.

    With `lengths (B,)`, the context layers are zeroed past each length after
    every convolution, so that a sequence's features do not depend on the
    padding its batch gives it (the embedding's bias would otherwise reach
    ~250 bases back into it through the dilated blocks)."""

    def __init__(self, width: int = 64, dilations: Sequence[int] = (1, 3, 9, 27, 81), kernel_size: int = 5,
                 motifs: int = 32, motif_size: int = 31):
        super().__init__()
        self.embed = nn.Conv1d(4, width, 9, padding=4)
        self.blocks = nn.ModuleList(
            nn.Conv1d(width, width, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2) for d in dilations)
        self.norm = nn.LayerNorm(width)
        self.motifs = nn.Conv1d(4, motifs, motif_size, padding=motif_size // 2)
        self.out_features = width + motifs

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        bases = x.transpose(1, 2)
        inside = 1.0 if lengths is None else (torch.arange(x.shape[1], device=x.device) < lengths[:, None])[:, None]
        h = self.embed(bases) * inside
        for conv in self.blocks:
            h = (h + conv(torch.nn.functional.gelu(h))) * inside
        motifs = torch.nn.functional.gelu(self.motifs(bases))
        return torch.cat([self.norm(h.transpose(1, 2)), motifs.transpose(1, 2)], dim=-1)


def chain_potentials(scores: torch.Tensor, transition: torch.Tensor, duration: torch.Tensor, start: torch.Tensor,
                     end: torch.Tensor, run_start_scores: torch.Tensor | None = None) -> dict:
    """Potentials over 2C states from a C-label head's, such that every
    labelling is exactly one segmentation (the chain of :func:`chop`).

    State `c` is the first piece of a run of label c (any length 1..K), state
    `c + C` a continuation piece (length exactly K, only after c or c + C).
    Both share label c's scores, `c + C` scores `duration[K - 1, c]` and is
    entered with `transition[c, c]`; `c -> c` is forbidden (-inf), so a run is
    never split elsewhere. A run of length L = r + m K (r in [1, K]) scores
    `duration[r - 1, c] + m (duration[K - 1, c] + transition[c, c])`.
    Optional `run_start_scores (B, T, C)` score a run of label c starting at
    t (the segment-start scores of the first-piece states; continuation
    pieces get none), i.e. every boundary between two labels, such as a
    splice site. Transitions stay `(2C, 2C)` (the factorized scan and the
    Triton kernels apply).
    """
    C, K = transition.shape[0], duration.shape[0]
    if transition.shape != (C, C) or duration.shape != (K, C):
        raise ValueError(f"need transition (C, C) and duration (K, C), got {tuple(transition.shape)} and "
                         f"{tuple(duration.shape)}")
    forbidden = torch.full_like(transition, float("-inf"))
    same = torch.eye(C, dtype=torch.bool, device=transition.device)
    to_first = torch.where(same, forbidden, transition)               # a run of another label begins
    to_continuation = torch.where(same, transition, forbidden)        # the run goes on by K bases
    rows = torch.cat([to_first, to_continuation], dim=1)
    last = torch.arange(K, device=duration.device)[:, None] == K - 1
    continuation = torch.where(last, duration, torch.full_like(duration, float("-inf")))
    chained = {"scores": torch.cat([scores, scores], dim=-1), "transition": torch.cat([rows, rows], dim=0),
               "duration": torch.cat([duration, continuation], dim=1),
               "start": torch.cat([start, torch.full_like(start, float("-inf"))]), "end": torch.cat([end, end])}
    if run_start_scores is not None:
        chained["start_scores"] = torch.cat([run_start_scores, torch.zeros_like(run_start_scores)], dim=-1)
    return chained


class ChainedCRFHead(SemiMarkovCRFHead):
    """A `SemiMarkovCRFHead` whose runs of one label may be longer than K.

    It keeps the stock parameters (projection to C label scores, `(C, C)`
    transitions, `(K, C)` durations, start, end) and, with
    `boundary_scores`, adds a second projection of the features to C scores
    of a run of each label starting at each position (zero-initialized).
    `forward` returns the distribution over the 2C states of
    :func:`chain_potentials`, in which a run of length L is one chain of
    pieces (:func:`chop`; gold states from :func:`chain`). Map states back
    with :func:`state_labels` and state marginals with :func:`label_marginals`.
    With K = 1 every piece has length 1: a linear-chain CRF whose 2C states
    mark where runs start. `allowed`, a `(C, C)` boolean array, forbids the
    label transitions it marks False (their scores become -inf: a grammar
    such as GRAMMAR; its diagonal must be True).
    """

    #: The `allowed` argument as a `(C, C)` bool buffer (`allowed[a, b]`: label b may follow label a).
    allowed: torch.Tensor

    def __init__(self, num_classes: int, max_duration: int, hidden_dim: int, backend: str = "auto",
                 boundary_scores: bool = True, allowed: np.ndarray | None = None):
        super().__init__(num_classes, max_duration, hidden_dim, backend)
        self.boundary = nn.Linear(hidden_dim, num_classes) if boundary_scores else None
        if self.boundary is not None:
            nn.init.zeros_(self.boundary.weight)
            nn.init.zeros_(self.boundary.bias)
        allowed = np.ones((num_classes, num_classes), dtype=bool) if allowed is None else np.asarray(allowed)
        if allowed.shape != (num_classes, num_classes) or allowed.dtype != bool or not allowed.diagonal().all():
            raise ValueError(f"allowed must be a boolean ({num_classes}, {num_classes}) array with a True diagonal "
                             f"(a run's continuation), got {allowed.dtype} {allowed.shape}")
        self.register_buffer("allowed", torch.from_numpy(allowed.copy()), persistent=False)

    @property
    def num_states(self) -> int:
        """2C: the first piece of a run of each label, and its continuations."""
        return 2 * self.num_classes

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> SemiMarkovDistribution:
        potentials = super().forward(hidden, lengths).potentials      # the stock head's checks and casts
        tensors = potentials.tensors()
        run_starts = None if self.boundary is None else self.boundary(hidden).to(potentials.dtype)
        transition = tensors["transition"].masked_fill(~self.allowed, float("-inf"))
        chained = chain_potentials(tensors["scores"], transition, tensors["duration"], tensors["start"],
                                   tensors["end"], run_starts)
        return SemiMarkovDistribution(lengths=potentials.lengths, backend=self.backend, **chained)


def state_labels(states: torch.Tensor, num_labels: int = len(LABELS)) -> torch.Tensor:
    """Labels from :class:`ChainedCRFHead` states (`c + C` -> `c`; -1 stays)."""
    return torch.where(states >= num_labels, states - num_labels, states)


def label_marginals(marginals: torch.Tensor, num_labels: int = len(LABELS)) -> torch.Tensor:
    """`(..., C)` label marginals from the state marginals `(..., 2C)`."""
    return marginals[..., :num_labels] + marginals[..., num_labels:]


class GeneFinder(nn.Module):
    """The encoder and a :class:`ChainedCRFHead` with `max_duration` K over
    LABELS, its label transitions restricted to GRAMMAR."""

    def __init__(self, max_duration: int, width: int = 64, boundary_scores: bool = True):
        super().__init__()
        self.max_duration = max_duration
        self.encoder = DilatedConvEncoder(width)
        self.head = ChainedCRFHead(num_classes=len(LABELS), max_duration=max_duration,
                                   hidden_dim=self.encoder.out_features, boundary_scores=boundary_scores,
                                   allowed=GRAMMAR)

    def forward(self, one_hot: torch.Tensor, lengths: torch.Tensor) -> SemiMarkovDistribution:
        """The distribution over chained segmentations (states, see ChainedCRFHead)."""
        return self.head(self.encoder(one_hot, lengths), lengths)

    @torch.no_grad()
    def decode(self, one_hot: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Viterbi labels `(B, T)` (indices into LABELS, -1 past each length)."""
        return state_labels(self.head.decode(self.encoder(one_hot, lengths), lengths).labels)

    def loss(self, one_hot: torch.Tensor, lengths: torch.Tensor, gold: Segmentation) -> torch.Tensor:
        """Negative log-likelihood of the gold pieces, per base."""
        nll = self.head.compute_loss(self.encoder(one_hot, lengths), lengths, gold)
        return nll * len(lengths) / lengths.sum()


# -- training and evaluation -------------------------------------------------------------------------------------
def progress(iterable, total: int, description: str, enabled: bool):
    """tqdm over `iterable` when installed, `enabled` and stderr is a
    terminal (a log file gets the epoch lines only), else the iterable."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return iterable
        return tqdm(iterable, total=total, desc=description, leave=False, file=sys.stderr, mininterval=1.0,
                    disable=None)
    return iterable


def parameter_groups(model: GeneFinder, lr: float, structure_lr: float, site_lr: float) -> list[dict]:
    """Three learning rates: `structure_lr` for the head's transition,
    duration, start and end scores (a handful of numbers, shared by every
    position, that start at 0 and must travel several units); `site_lr` for
    the site scorers, the encoder's motif convolution and the head's
    run-start projection (sharp, rare signals: at the encoder's rate they
    stay a flat penalty on every boundary and no intron is ever called);
    `lr` for the rest of the encoder and the label projection."""
    head = model.head
    structure = [head.transition, head.duration, head.start, head.end]
    sites = [*model.encoder.motifs.parameters(), *(head.boundary.parameters() if head.boundary is not None else ())]
    taken = {id(p) for p in structure + sites}
    rest = [p for p in model.parameters() if id(p) not in taken]
    return [{"params": rest, "lr": lr}, {"params": structure, "lr": structure_lr},
            {"params": sites, "lr": site_lr}]


def train(model: GeneFinder, data: Sequence[Example], args, device, name: str,
          seconds: float | None = None) -> dict:
    """Adam on the per-base NLL for `args.epochs` epochs or `seconds` of wall
    clock, whichever ends first.

    The learning rates follow a cosine from their initial values to 0 along
    the fraction of training done: the larger of the steps taken over all
    epochs' steps and the time taken over `seconds`. So a run the time budget
    cuts short still anneals, and stops between two batches. Returns
    `{"train_seconds", "epochs"}` (epochs completed, fractional when cut),
    `"cut_by_time_budget"` and `"schedule_by_clock"`: whether the time ever
    led the schedule (then the run depends on the machine's speed, not only
    on the seed).
    """
    optimizer = torch.optim.Adam(parameter_groups(model, args.lr, args.structure_lr, args.site_lr))
    initial = [group["lr"] for group in optimizer.param_groups]
    rng = random.Random(args.seed)
    steps_per_epoch = len(batches(data, args.max_tokens, shuffle=False, rng=None))
    total_steps, step, by_clock = args.epochs * steps_per_epoch, 0, False
    began = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        total, positions = 0.0, 0
        groups = batches(data, args.max_tokens, shuffle=True, rng=rng)
        for group in progress(groups, len(groups), f"{name} epoch {epoch + 1}", args.progress):
            steps_done = step / total_steps
            time_done = (time.perf_counter() - began) / seconds if seconds else 0.0
            by_clock = by_clock or time_done > steps_done
            done = max(steps_done, time_done)
            if done >= 1:
                break
            for group_lr, lr in zip(optimizer.param_groups, initial):
                group_lr["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done))
            items = [data[i] if not args.augment or rng.random() < 0.5 else reverse_complement(data[i])
                     for i in group]
            one_hot, lengths, gold = collate(items, model.max_duration, device)
            loss = model.loss(one_hot, lengths, gold)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            total += loss.item() * int(lengths.sum())
            positions += int(lengths.sum())
        if positions:
            print(f"  {name}: epoch {epoch + 1}/{args.epochs}  NLL {total / positions:.4f} per base  "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
        if step < (epoch + 1) * steps_per_epoch:
            print(f"  {name}: stopped by the time budget ({seconds:.0f} s) after {step} of {total_steps} steps",
                  flush=True)
            break
    if by_clock and step == total_steps:
        print(f"  {name}: the time budget came close: the learning rates followed the clock", flush=True)
    return {"train_seconds": time.perf_counter() - began, "epochs": step / steps_per_epoch,
            "cut_by_time_budget": step < total_steps, "schedule_by_clock": by_clock}


@torch.no_grad()
def predict(model: GeneFinder, loci: Sequence[Locus], args, device, name: str) -> list[np.ndarray]:
    """Viterbi labels of each whole locus (no windows: the scan streams over T)."""
    model.eval()
    data = examples(loci)
    decoded: dict[int, np.ndarray] = {}     # labels `(T,)` by index into data
    groups = batches(data, 8 * args.max_tokens, shuffle=False, rng=random.Random(0))  # no gradients: larger batches
    for group in progress(groups, len(groups), f"{name} decoding", args.progress):
        one_hot, lengths, _ = collate([data[i] for i in group], model.max_duration, device)
        labels = model.decode(one_hot, lengths).cpu().numpy()
        for row, i in enumerate(group):
            decoded[i] = labels[row, :len(data[i])]
    return [decoded[i] for i in range(len(data))]


def evaluate(predictions: Sequence[np.ndarray], loci: Sequence[Locus]) -> dict[str, dict[str, float]]:
    """Exon-, gene- and base-level precision, recall and F1 over the loci."""
    counts = {level: Counts() for level in ("exon", "gene", "base")}
    for labels, locus in zip(predictions, loci):
        evaluate_locus(labels, locus, counts)
    return {level: count.scores() for level, count in counts.items()}


def table(results: dict[str, dict]) -> str:
    """The final comparison as text, one row per model."""
    header = (f"{'model':<22}" + "".join(f"{level + ' ' + m:>9}" for level in ("exon", "gene", "base")
                                         for m in ("P", "R", "F1")) + f"{'epochs':>8}{'train s':>9}")
    lines = [header, "-" * len(header)]
    for name, result in results.items():
        cells = "".join(f"{result[level][m]:>9.3f}" for level in ("exon", "gene", "base")
                        for m in ("precision", "recall", "f1"))
        lines.append(f"{name:<22}{cells}{result['epochs']:>8.3g}{result['train_seconds']:>9.0f}")
    return "\n".join(lines)


# -- plot --------------------------------------------------------------------------------------------------------
def pick_plot_locus(loci: Sequence[Locus], max_length: int = 4000) -> int:
    """Index of the test locus to plot: the first whose gene has at least
    three exons and that is at most `max_length` long (else the first)."""
    for i, locus in enumerate(loci):
        if len(locus) <= max_length and any(len(gene.exons) >= 3 for gene in locus.genes):
            return i
    return 0


def plot_posterior(models: dict[str, GeneFinder], locus: Locus, device, path: Path) -> None:
    """Into `path` (PNG), over one locus: each model's posterior label
    marginals and boundary probabilities (where a run of a new label starts:
    the first-piece states' segment starts; for K > 1 also where any piece
    starts, `dist.boundary_marginals`), with the annotated exon edges
    ticked; then the annotated and Viterbi gene structures."""
    require_matplotlib().use("Agg")
    plt = require_matplotlib("matplotlib.pyplot")

    one_hot, lengths, _ = collate(examples([locus]), 1, device)
    colours = {1: "tab:red", 2: "tab:orange", 3: "tab:blue", 4: "tab:cyan"}
    panels = [(name, kind) for name in models for kind in ("marginals", "boundaries")]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(10, 1.1 + 1.15 * (len(panels) + 1)), sharex=True,
                             gridspec_kw={"height_ratios": [1.6 if k == "marginals" else 1 for _, k in panels] + [1.1]},
                             constrained_layout=True)
    x = np.arange(len(locus))
    tracks = {"annotated": locus_labels(locus)}
    edges = sorted({e for gene in locus.genes for exon in gene.exons for e in exon})
    for ax, (name, kind) in zip(axes, panels):
        model = models[name]
        model.eval()
        with torch.no_grad():
            dist = model(one_hot, lengths)
            if kind == "marginals":
                marginals = label_marginals(dist.marginals[0]).cpu().numpy()
                tracks[f"{name} Viterbi"] = model.decode(one_hot, lengths)[0].cpu().numpy()
                for label, colour in colours.items():
                    ax.plot(x, marginals[:, label], color=colour, lw=0.8, label=LABELS[label])
                ax.set_ylabel("P(label)")
                ax.set_title(f"{name}: posterior label marginals", fontsize=9, loc="left")
                ax.legend(loc="upper left", fontsize=7, ncol=4, frameon=False)
            else:
                first = dist.posterior.segment_start[0, :, :len(LABELS)].sum(-1).cpu().numpy()
                if model.max_duration > 1:                # with K = 1 a piece starts everywhere
                    pieces = dist.boundary_marginals[0].cpu().numpy()
                    ax.plot(x, pieces, color="0.7", lw=0.6, label="a piece starts (boundary_marginals)")
                ax.plot(x, first, color="black", lw=0.7, label="a new label starts")
                ax.plot(edges, np.full(len(edges), -0.06), "|", color="tab:green", ms=6, label="annotated exon edges")
                ax.set_ylabel("P(boundary)")
                ax.set_title(f"{name}: boundary probabilities", fontsize=9, loc="left")
                ax.legend(loc="upper left", fontsize=7, ncol=3, frameon=False)
        ax.set_ylim(-0.1, 1.25)
    ax = axes[-1]
    for y, labels in enumerate(reversed(list(tracks.values()))):
        for start, end, label in runs(labels):
            if label in EXON_LABELS:
                ax.add_patch(plt.Rectangle((start, y - 0.35), end - start, 0.7, color=colours[label]))
            elif label != INTERGENIC:
                ax.plot([start, end], [y, y], color=colours[label], lw=1)
    ax.set_yticks(range(len(tracks)), list(reversed(list(tracks))), fontsize=8)
    ax.set_ylim(-0.6, len(tracks) - 0.4)
    ax.set_xlim(0, len(locus))
    ax.set_xlabel(f"position in {locus.name} (bp); exons as boxes (red forward, blue reverse strand), introns as lines")
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------------------------
QUICK = dict(max_length=3000, train_loci=120, test_loci=30, epochs=8, width=32, time_budget=200)
FULL = dict(epochs=30, width=64, time_budget=300)
#: The share of --time-budget kept for decoding the test loci and drawing the plot after the last training.
EVALUATION_SHARE = 0.2


def parse(argv=None) -> argparse.Namespace:
    """Command-line options (see --help)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=HOW_TO_GET)
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: short loci (<= {QUICK['max_length']} bp: the first {QUICK['train_loci']} "
                             f"training and {QUICK['test_loci']} test loci), {QUICK['epochs']} epochs, width "
                             f"{QUICK['width']}; minutes on a CPU")
    parser.add_argument("--data", default=None, help=f"directory with {' and '.join(DATA_FILES)} (default: "
                                                     f"${ENV_VAR}, else {CACHE_DIR}); fetched there when missing")
    parser.add_argument("--no-fetch", dest="fetch", action="store_false", help="never run apt-get download")
    parser.add_argument("--out", default="outputs/gene_structure", help="directory for metrics.json and the plot")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-duration", "-K", type=int, default=100,
                        help="K, the longest segment of the semi-CRF; a longer run of one label is a chain of pieces")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {QUICK['epochs']} quick, "
                                                                 f"{FULL['epochs']} full")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help=f"wall-clock seconds for the whole run (default {QUICK['time_budget']} quick, "
                             f"{FULL['time_budget']} full; 0: none): training stops early, between two batches and "
                             f"with its learning rate annealed, so that both models are trained, evaluated and "
                             f"plotted within it ({EVALUATION_SHARE:.0%} of it is kept for the evaluation)")
    parser.add_argument("--window", type=int, default=1000,
                        help="train on windows of at most this many bases (the scan's sequential cost grows with "
                             "the window, its batch dimension is nearly free); evaluation decodes whole loci")
    parser.add_argument("--max-tokens", type=int, default=8000, help="padded positions per training batch")
    parser.add_argument("--width", type=int, default=None,
                        help=f"encoder channels (default {QUICK['width']} quick, {FULL['width']} full)")
    parser.add_argument("--lr", type=float, default=3e-3,
                        help="Adam's learning rate for the encoder's context layers and the label projection")
    parser.add_argument("--structure-lr", type=float, default=0.05,
                        help="Adam's learning rate for the head's transition, duration, start and end scores")
    parser.add_argument("--site-lr", type=float, default=0.15,
                        help="Adam's learning rate for the site scorers: the encoder's motif convolution and the "
                             "head's run-start projection")
    parser.add_argument("--no-boundary-scores", dest="boundary_scores", action="store_false",
                        help="no learnt scores for a run of each label starting at each position (splice sites, "
                             "start and stop codons)")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="no reverse-complement augmentation (by default each training example is read from "
                             "the other strand with probability 1/2 at every epoch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no tqdm bars (there are none when stderr is not a terminal)")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    args.epochs = defaults["epochs"] if args.epochs is None else args.epochs
    args.width = defaults["width"] if args.width is None else args.width
    args.time_budget = defaults["time_budget"] if args.time_budget is None else args.time_budget
    for name in ("max_duration", "max_tokens", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.epochs < 1 or args.window < 1:
        parser.error("--epochs and --window must be >= 1")
    if args.time_budget < 0:
        parser.error("--time-budget must be >= 0 (0: no budget)")
    return args


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load(args) -> tuple[list[Locus], list[Locus]]:
    """The training and test loci (the quick slice with --quick)."""
    directory = find_data(args.data, fetch=args.fetch)
    train_loci = read_genbank(data_path(directory, DATA_FILES[0]))
    test_loci = read_genbank(data_path(directory, DATA_FILES[1]))
    print(f"data: {directory}  ({len(train_loci)} training loci, {len(test_loci)} test loci)")
    if args.quick:
        train_loci = [locus for locus in train_loci if len(locus) <= QUICK["max_length"]][:QUICK["train_loci"]]
        test_loci = [locus for locus in test_loci if len(locus) <= QUICK["max_length"]][:QUICK["test_loci"]]
    return train_loci, test_loci


def training_allowance(budget: float, began: float, models_left: int) -> float | None:
    """Seconds the next model may train: an equal share, among the
    `models_left` still to train, of what remains of the time `budget`
    (counted from `began`, a perf_counter time) once EVALUATION_SHARE of it
    is set aside; None when there is no budget (0)."""
    if not budget:
        return None
    remaining = began + budget * (1 - EVALUATION_SHARE) - time.perf_counter()
    return max(remaining / models_left, 1.0)


def main(argv=None) -> dict:
    """Train the semi-CRF and the K = 1 baseline, evaluate, plot; returns the
    metrics (also written to metrics.json, before the plot is drawn, with
    the seconds taken until then). Without matplotlib it says so at the
    start and runs without the plot."""
    args = parse(argv)
    began = time.perf_counter()
    device = resolve_device(args.device)
    try:
        require_matplotlib()
        can_plot = True
    except ImportError as error:
        print(f"warning: {error}; the run goes on without gene_posterior.png", file=sys.stderr)
        can_plot = False
    try:
        train_loci, test_loci = load(args)
    except DataUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    train_data = examples(train_loci, args.window)
    print(f"{'quick' if args.quick else 'full'} run on {device}: {len(train_loci)} training loci "
          f"({sum(map(len, train_data)):,} bp in {len(train_data)} examples), {len(test_loci)} test loci "
          f"({sum(map(len, test_loci)):,} bp, longest {max(map(len, test_loci)):,}), {args.epochs} epochs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models, results = {}, {}
    contenders = ((f"semi-CRF (K={args.max_duration})", args.max_duration), ("linear CRF (K=1)", 1))
    for index, (name, K) in enumerate(contenders):
        seed_everything(args.seed)
        model = GeneFinder(K, args.width, args.boundary_scores).to(device)
        print(f"training {name}")
        allowance = training_allowance(args.time_budget, began, len(contenders) - index)
        record = train(model, train_data, args, device, name, allowance)
        predictions = predict(model, test_loci, args, device, name)
        results[name] = {**evaluate(predictions, test_loci), **record}
        models[name] = model
    print()
    print(table(results))
    plot_locus = test_loci[pick_plot_locus(test_loci)]
    summary = {"mode": "quick" if args.quick else "full", "device": str(device), "max_duration": args.max_duration,
               "epochs": args.epochs, "time_budget": args.time_budget, "train_loci": len(train_loci),
               "test_loci": len(test_loci), "plot_locus": plot_locus.name if can_plot else None,
               "results": results, "seconds": time.perf_counter() - began}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    written = [f"{out / 'metrics.json'}"]
    if can_plot:
        plot_posterior(models, plot_locus, device, out / "gene_posterior.png")
        written.append(f"{out / 'gene_posterior.png'} (locus {plot_locus.name})")
    print(f"\nwrote {' and '.join(written)}; total {time.perf_counter() - began:.0f} s")
    return summary


if __name__ == "__main__":
    main()
