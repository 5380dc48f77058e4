"""Train a `SemiMarkovCRFHead` with PyTorch Lightning on the built-in synthetic data.

Lightning is an optional dependency (`pip install lightning`). A small
encoder (a bidirectional GRU) turns the noisy per-position features into
scores for the semi-Markov CRF head; the loss is the head's mean negative
log-likelihood of the planted segmentations, and validation reports the
segment F1 of the Viterbi decode.

    python examples/lightning_train.py --epochs 10
    python examples/lightning_train.py --epochs 10 --devices 2   # 2 processes: 2 GPUs over NCCL (CPUs: gloo)

Lightning shows its progress bar, and its CSV logger writes the per-epoch
training loss and validation F1 to `ROOT/lightning_train/version_N/metrics.csv`
(`--root`, default `outputs/lightning`). `accelerator="auto"`: a GPU when there
is one, else the CPU.

With `--devices 2` (or more) the strategy is "ddp" unless `--strategy` says
otherwise: Lightning starts one process per device and wraps the module in
DistributedDataParallel; each process gets an equal share of every batch
and gradients are averaged, which for a mean loss over equal shards is
the gradient of the whole batch (checked in tests/test_ddp.py, and on two
GPUs by examples/ddp_train.py; docs/multi_gpu.md).
"""
from __future__ import annotations

import argparse
import os

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from semiring_semicrf.nn import SemiMarkovCRFHead
from semiring_semicrf.segmentation import Segmentation
from semiring_semicrf.synthetic import make_synthetic, segment_f1


class Segmenter(L.LightningModule):
    """A BiGRU encoder `(B, T, H) -> (B, T, 2 * width)` and a semi-Markov CRF head."""

    def __init__(self, num_classes: int, max_duration: int, hidden_dim: int, width: int = 32, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.GRU(hidden_dim, width, batch_first=True, bidirectional=True)
        self.head = SemiMarkovCRFHead(num_classes, max_duration, 2 * width)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.encoder(hidden)[0]

    def training_step(self, batch, batch_idx):
        hidden, lengths, labels, starts = batch
        loss = self.head.compute_loss(self.features(hidden), lengths, Segmentation(labels, starts, lengths))
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        hidden, lengths, labels, starts = batch
        predicted = self.head.decode(self.features(hidden), lengths)
        f1 = segment_f1(predicted, Segmentation(labels, starts, lengths))
        self.log("val_f1", f1, prog_bar=True, batch_size=len(lengths), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


def loader(data, batch_size: int, shuffle: bool) -> DataLoader:
    """Segmentations travel as their `labels`/`starts` tensors and are rebuilt per batch."""
    seg = data.segmentation
    dataset = TensorDataset(data.hidden, data.lengths, seg.labels, seg.starts)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(0) if shuffle else None)


class LossHistory(L.Callback):
    """Keeps the epoch-mean training loss of every epoch."""

    def __init__(self):
        self.losses = []

    def on_train_epoch_end(self, trainer, module):
        self.losses.append(float(trainer.callback_metrics["train_loss"]))


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--val-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=4)
    parser.add_argument("--max-duration", type=int, default=12)
    parser.add_argument("--hidden-dim", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=80)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default=None,
                        help='Lightning\'s strategy (default: "ddp" with several devices, else "auto")')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=os.path.join("outputs", "lightning"),
                        help="folder for Lightning's CSV logs (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.strategy is None:
        args.strategy = "ddp" if args.devices > 1 else "auto"
    return args


def main(argv=None) -> dict:
    """Train and validate; returns the first/last epoch losses and the final validation F1."""
    args = parse(argv)
    L.seed_everything(args.seed, verbose=False)
    sizes = dict(num_classes=args.num_classes, max_duration=args.max_duration, hidden_dim=args.hidden_dim,
                 min_length=args.max_length // 2, max_length=args.max_length)
    train = make_synthetic(args.train_size, seed=args.seed, **sizes)
    val = make_synthetic(args.val_size, seed=args.seed + 1, **sizes)
    module = Segmenter(args.num_classes, args.max_duration, args.hidden_dim, lr=args.lr)
    history = LossHistory()
    logger = CSVLogger(args.root, name="lightning_train")
    batches = -(-args.train_size // (args.batch_size * args.devices))
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="auto", devices=args.devices, strategy=args.strategy,
                        callbacks=[history], default_root_dir=args.root, logger=logger, enable_checkpointing=False,
                        log_every_n_steps=max(1, min(50, batches)), num_sanity_val_steps=0)
    if trainer.is_global_zero:
        print(f"Training a BiGRU + semi-Markov CRF head for {args.epochs} epochs on {args.train_size} synthetic "
              f"sequences; logs in {os.path.abspath(logger.log_dir)}", flush=True)
    trainer.fit(module, loader(train, args.batch_size, True), loader(val, args.batch_size, False))
    metrics = trainer.validate(module, loader(val, args.batch_size, False), verbose=False)[0]
    result = {"train_loss_first": history.losses[0] if history.losses else float("nan"),
              "train_loss_last": history.losses[-1] if history.losses else float("nan"),
              "val_f1": metrics["val_f1"]}
    if trainer.is_global_zero:
        print(", ".join(f"{k} = {v:.4f}" for k, v in result.items()))
        print(f"metrics per epoch: {os.path.join(os.path.abspath(logger.log_dir), 'metrics.csv')}")
    return result


if __name__ == "__main__":
    main()
