"""Demo: train a semi-Markov CRF head on built-in synthetic data (CPU, seconds).

    python -m semiring_semicrf.demo [--out DIR] [--steps N] [--seed S]

Trains :class:`~semiring_semicrf.nn.SemiMarkovCRFHead` on sequences with
planted segments (:mod:`semiring_semicrf.synthetic`), then, for one held-out
sequence, prints log Z, the Viterbi segments beside the planted ones, the
top-3 segmentations, a few exact samples and the entropy; prints the segment
F1 on the held-out set and writes a PNG of the label marginals (with the
segmentations drawn below) to the output folder.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Optional, Sequence

import torch

from .nn import SemiMarkovCRFHead
from .synthetic import duration_ranges, make_synthetic, segment_f1

NUM_CLASSES, MAX_DURATION, HIDDEN_DIM = 4, 12, 16
BATCH_SIZE, LEARNING_RATE = 16, 0.05


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
            print(f"  step {step:4d}   mean NLL {loss.item():8.3f}")


def _save_plot(path: str, marginals: torch.Tensor, length: int, rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot import plot_label_marginals, plot_segmentations

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(12, 5.5), constrained_layout=True,
                                         gridspec_kw={"height_ratios": [1.2, 1.0]})
    plot_label_marginals(marginals, length=length, ax=top, title="Label marginals of a held-out sequence")
    plot_segmentations(rows, num_labels=NUM_CLASSES, ax=bottom, title="Planted, Viterbi, top-3 and samples")
    bottom.set_xlim(top.get_xlim())
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semiring_semicrf.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="./outputs", help="folder for the PNG (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the model (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    began = time.perf_counter()
    torch.manual_seed(args.seed)
    shape = dict(num_classes=NUM_CLASSES, max_duration=MAX_DURATION, hidden_dim=HIDDEN_DIM, task_seed=args.seed)
    train = make_synthetic(256, seed=args.seed, **shape)
    test = make_synthetic(64, seed=args.seed + 1, **shape)
    print(f"Synthetic data: {NUM_CLASSES} labels, segment lengths per label {duration_ranges(NUM_CLASSES, MAX_DURATION)}, "
          f"{HIDDEN_DIM}-dim noisy features; 256 training and 64 held-out sequences of length 40-80.")

    head = SemiMarkovCRFHead(NUM_CLASSES, MAX_DURATION, HIDDEN_DIM)
    print(f"Training {head} for {args.steps} steps (batch {BATCH_SIZE}, Adam lr {LEARNING_RATE}):")
    _train(head, train, args.steps, args.seed)

    f1 = segment_f1(head.decode(test.hidden, test.lengths), test.segmentation)
    one = test[:1]
    with torch.no_grad():
        dist = head(one.hidden, one.lengths)
        top = dist.topk(3)
        samples = dist.sample((3,), generator=torch.Generator().manual_seed(args.seed))
        gold = one.segmentation.to_segments()[0]
        best = dist.argmax.to_segments()[0]
        print(f"\nHeld-out sequence 0 (length {int(one.lengths[0])}):")
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
        marginals = dist.marginals[0]
    print(f"\nSegment F1 on the 64 held-out sequences: {f1:.4f}")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "label_marginals.png")
    rows = {"planted": gold, "Viterbi": best,
            **{f"top-{r + 1}": top.segmentations[r, 0] for r in range(1, 3)},
            **{f"sample {i + 1}": samples[i, 0] for i in range(3)}}
    _save_plot(path, marginals, int(one.lengths[0]), rows)
    print(f"Label marginals plot written to {os.path.abspath(path)}")
    print(f"Done in {time.perf_counter() - began:.1f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
