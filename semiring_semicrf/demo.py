"""Demo: train a semi-Markov CRF head on built-in synthetic data (CPU, seconds).

    semicrf demo [--out DIR] [--steps N] [--seed S]
    python -m semiring_semicrf.demo [--out DIR] [--steps N] [--seed S]

Trains :class:`~semiring_semicrf.nn.SemiMarkovCRFHead` on sequences with
planted segments (:mod:`semiring_semicrf.synthetic`), then, for one held-out
sequence, prints log Z, the Viterbi segments beside the planted ones, the
top-3 segmentations, a few exact samples and the entropy; prints the segment
F1 on the held-out set and writes PNG plots (see :data:`PLOTS`) to the output
folder. Plotting needs matplotlib (``pip install "semiring-semicrf[plot]"``);
without it the demo stops before training and says so.
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import torch

from .nn import SemiMarkovCRFHead
from .plot import require_matplotlib
from .synthetic import duration_ranges, make_synthetic, segment_f1

NUM_CLASSES, MAX_DURATION, HIDDEN_DIM = 4, 12, 16
BATCH_SIZE, LEARNING_RATE = 16, 0.05
TRAIN_SIZE, TEST_SIZE = 256, 64
#: The files the demo writes, and what each shows (one held-out sequence).
PLOTS = {
    "label_marginals.png": "heat-map of P(position t lies in a segment labelled c)",
    "boundary_probabilities.png": "P(a segment starts at t), with the planted starts",
    "segmentations.png": "the planted, Viterbi, top-3 and three sampled segmentations as bars",
    "overview.png": "the three above, stacked on one position axis",
}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options, shared by ``semicrf demo`` and ``python -m semiring_semicrf.demo``."""
    parser.add_argument("--out", default="outputs", help="folder for the PNG plots (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=300, help="training steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the model (default: %(default)s)")
    return parser


def _format(segments: list) -> str:
    return " ".join(f"[{s},{e}):{c}" for s, e, c in segments)


def _train(head: SemiMarkovCRFHead, data, steps: int, seed: int) -> None:
    optimizer = torch.optim.Adam(head.parameters(), lr=LEARNING_RATE)
    order = torch.Generator().manual_seed(seed)
    n = data.lengths.shape[0]
    for step in range(1, steps + 1):
        batch = data[torch.randperm(n, generator=order)[:BATCH_SIZE]]
        loss = head.compute_loss(batch.hidden, batch.lengths, batch.segmentation)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % 50 == 0 or step == steps:
            print(f"  step {step:4d}   mean NLL {loss.item():8.3f}", flush=True)


def save_plots(out: str, marginals: torch.Tensor, boundaries: torch.Tensor, length: int, rows: dict) -> list:
    """Write :data:`PLOTS` for one sequence to the folder `out`; returns their paths.

    Args:
        marginals: `(T, C)` label marginals.
        boundaries: `(T,)` probabilities that a segment starts at each position.
        length: the sequence's length (positions past it are not drawn).
        rows: name -> segmentation of the sequence; the one named "planted"
            also marks the planted starts on the boundary plot.
    """
    require_matplotlib().use("Agg")
    plt = require_matplotlib("matplotlib.pyplot")
    from .plot import plot_boundary_probabilities, plot_label_marginals, plot_segmentations

    planted = rows.get("planted")
    gold_starts = None if planted is None else [s for s, _, _ in planted]
    draw = {
        "label_marginals.png": lambda ax: plot_label_marginals(
            marginals, length=length, ax=ax, title="Label marginals of a held-out sequence"),
        "boundary_probabilities.png": lambda ax: plot_boundary_probabilities(
            boundaries, length=length, gold_starts=gold_starts, gold_label="planted start", ax=ax,
            title="Segment boundary probabilities"),
        "segmentations.png": lambda ax: plot_segmentations(
            rows, num_labels=NUM_CLASSES, ax=ax, title="Planted, Viterbi, top-3 and samples"),
    }
    heights = {"label_marginals.png": 2.8, "boundary_probabilities.png": 2.6, "segmentations.png": 3.6}
    os.makedirs(out, exist_ok=True)
    paths = []
    for name, plot in draw.items():
        figure, ax = plt.subplots(figsize=(11, heights[name]), constrained_layout=True)
        plot(ax)
        ax.set_xlim(-0.5, length - 0.5)
        paths.append(_save(figure, os.path.join(out, name), plt))
    figure, axes = plt.subplots(3, 1, figsize=(11, sum(heights.values())), constrained_layout=True,
                                gridspec_kw={"height_ratios": list(heights.values())})
    for ax, plot in zip(axes, draw.values()):
        plot(ax)
        ax.set_xlim(-0.5, length - 0.5)
    paths.append(_save(figure, os.path.join(out, "overview.png"), plt))
    return paths


def _save(figure, path: str, plt) -> str:
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed options (see :func:`add_arguments`); returns 0."""
    require_matplotlib()  # fail before training, not after it
    began = time.perf_counter()
    torch.manual_seed(args.seed)
    shape = dict(num_classes=NUM_CLASSES, max_duration=MAX_DURATION, hidden_dim=HIDDEN_DIM, task_seed=args.seed)
    train = make_synthetic(TRAIN_SIZE, seed=args.seed, **shape)
    test = make_synthetic(TEST_SIZE, seed=args.seed + 1, **shape)
    print(f"Synthetic data: {NUM_CLASSES} labels, segment lengths per label "
          f"{duration_ranges(NUM_CLASSES, MAX_DURATION)}, {HIDDEN_DIM}-dim noisy features; "
          f"{TRAIN_SIZE} training and {TEST_SIZE} held-out sequences of length 40-80.")

    head = SemiMarkovCRFHead(NUM_CLASSES, MAX_DURATION, HIDDEN_DIM)
    print(f"Training {head} for {args.steps} steps (batch {BATCH_SIZE}, Adam lr {LEARNING_RATE}):")
    _train(head, train, args.steps, args.seed)

    f1 = segment_f1(head.decode(test.hidden, test.lengths), test.segmentation)
    one = test[:1]
    length = int(one.lengths[0])
    with torch.no_grad():
        dist = head(one.hidden, one.lengths)
        top = dist.topk(3)
        samples = dist.sample((3,), generator=torch.Generator().manual_seed(args.seed))
        gold = one.segmentation.to_segments()[0]
        best = dist.argmax.to_segments()[0]
        print(f"\nHeld-out sequence 0 (length {length}):")
        print(f"  log Z     {dist.partition.item():.4f}")
        print(f"  planted   {_format(gold)}")
        print(f"  Viterbi   {_format(best)}   (score {dist.max.item():.4f}, "
              f"p = {dist.log_prob(dist.argmax).exp().item():.4f})")
        log_probs = top.scores - dist.partition
        for rank in range(3):
            print(f"  top-{rank + 1}     {_format(top.segmentations[rank, 0].to_segments())}   "
                  f"(score {top.scores[rank, 0].item():.4f}, p = {log_probs[rank, 0].exp().item():.4f})")
        for i in range(3):
            print(f"  sample {i + 1}  {_format(samples[i, 0].to_segments())}")
        print(f"  entropy   {dist.entropy().item():.4f} nats")
        marginals, boundaries = dist.marginals[0], dist.boundary_marginals[0]
    print(f"\nSegment F1 on the {TEST_SIZE} held-out sequences: {f1:.4f}")

    rows = {"planted": gold, "Viterbi": best,
            **{f"top-{r + 1}": top.segmentations[r, 0] for r in range(1, 3)},
            **{f"sample {i + 1}": samples[i, 0] for i in range(3)}}
    for path in save_plots(args.out, marginals, boundaries, length, rows):
        print(f"  wrote {os.path.abspath(path)}: {PLOTS[os.path.basename(path)]}")
    print(f"Done in {time.perf_counter() - began:.1f} s.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m semiring_semicrf.demo``: parse `argv` and :func:`run`."""
    parser = argparse.ArgumentParser(prog="python -m semiring_semicrf.demo", description=__doc__.split("\n\n")[0])
    return run(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
