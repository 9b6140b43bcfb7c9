"""Training images/s of the real ``visattn fit`` path against a bare PyTorch loop doing the same work.

    python benchmarks/lightning_overhead.py [--config configs/classification/cbam_resnet_fmnist.yaml] [--steps 30] [--smoke]

A: ``visattn fit --config CONFIG`` through the LightningCLI, with the config's logger, checkpoint
and learning-rate callbacks and the rich progress bar users get. B: a hand-written loop over the
same datamodule's DataLoader with the same model, AdamW groups, warm-up + cosine schedule,
label-smoothed loss and EMA. Each round is one fresh run; only steps after ``--skip`` are timed
(start-up, sanity validation and worker start are not), in both. The figure is the cost per
training step: each window runs from the start of step ``--skip`` to the start of the step after the
last timed one, so it holds every timed step's own work, hooks and next batch on both sides, and no
validation, checkpoint or logger write (a window reaching the config's ``log_every_n_steps`` or the
epoch's end is refused).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import side_by_side
from visattn.data import FashionMNISTDataModule
from visattn.registry import create_model
from visattn.tasks.optimization import warmup_cosine, weight_decay_groups
from visattn.tasks.lightning_cli import run_lightning_cli

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "classification" / "cbam_resnet_fmnist.yaml"


class BatchClock(pl.Callback):
    """Time stamps of every training batch's start (its data already loaded)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.starts.append(time.perf_counter())


def window(starts: list[float], skip: int, steps: int) -> float:
    """Seconds from the start of step ``skip`` to the start of step ``skip + steps``: ``steps`` whole steps,
    the module's own end-of-step hooks (Lightning calls them after the callbacks') and next batch included."""
    return starts[skip + steps] - starts[skip]


def lightning_round(config: Path, overrides: list[str], skip: int, steps: int) -> Callable[[], float]:
    def run() -> float:
        with tempfile.TemporaryDirectory() as tmp, _working_dir(tmp):  # the config writes under outputs/
            cli = run_lightning_cli(["fit", "--config", str(config), "--trainer.max_steps", str(skip + steps + 1),
                                     "--trainer.accelerator", "cpu", *overrides,
                                     "--trainer.callbacks+=__main__.BatchClock"])
        clock = next(c for c in cli.trainer.callbacks if isinstance(c, BatchClock))
        return window(clock.starts, skip, steps)
    return run


def bare_round(model_args: dict, data: FashionMNISTDataModule, skip: int, steps: int, max_epochs: int) -> Callable[[], float]:
    def run() -> float:
        pl.seed_everything(0, verbose=False)
        loader = data.train_dataloader()
        model = create_model(model_args["model_name"], num_classes=data.num_classes, **(model_args.get("model_kwargs") or {}))
        model.train()
        optimizer = torch.optim.AdamW(weight_decay_groups(model, model_args.get("weight_decay", 0.05)),
                                      lr=model_args.get("lr", 1e-3))
        total = len(loader) * max_epochs
        scheduler = warmup_cosine(optimizer, int(model_args.get("warmup_epochs", 1) * len(loader)), total)
        criterion = nn.CrossEntropyLoss(label_smoothing=model_args.get("label_smoothing", 0.0))
        decay = model_args.get("ema_decay")
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if decay else None
        starts = []
        for step, (images, targets) in enumerate(loader):
            starts.append(time.perf_counter())
            if step == skip + steps:
                break
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
        return window(starts, skip, steps)
    return run


@contextlib.contextmanager
def _working_dir(path: str):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def main() -> None:
    parser = side_by_side.parser(__doc__.splitlines()[0], rounds=5)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per round")
    parser.add_argument("--skip", type=int, default=5, help="untimed steps at the start of each round")
    parser.add_argument("--num-workers", type=int, default=None, help="override the config's data.num_workers")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    data_args = dict(config["data"]["init_args"])
    overrides = []
    if args.smoke:
        args.steps, args.skip, args.rounds = 3, 1, 1
        data_args.update(batch_size=16, limit=128)
        overrides += ["--data.init_args.batch_size", "16", "--data.init_args.limit", "128"]
    if args.num_workers is not None:
        data_args["num_workers"] = args.num_workers
        overrides += ["--data.init_args.num_workers", str(args.num_workers)]
    torch.set_num_threads(args.threads)
    data = FashionMNISTDataModule(**data_args)
    data.setup("fit")
    batches = len(data.train_dataloader())
    if args.skip + args.steps >= batches:  # the bare loop runs one epoch; Lightning's window would hold its end
        parser.error(f"--skip {args.skip} + --steps {args.steps} reach an epoch's {batches} batches; "
                     "lower --steps or raise the data's limit")
    log_every = config["trainer"].get("log_every_n_steps", 50)
    if args.skip + args.steps >= log_every:  # Lightning would write its logs in the window, the bare loop nothing
        parser.error(f"--skip {args.skip} + --steps {args.steps} reach the config's log_every_n_steps {log_every}; "
                     "lower --steps")
    model_args = config["model"]["init_args"]
    max_epochs = config["trainer"].get("max_epochs") or 1
    seconds = side_by_side.interleave({
        "lightning": lightning_round(args.config, overrides, args.skip, args.steps),
        "bare": bare_round(model_args, data, args.skip, args.steps, max_epochs),
    }, rounds=args.rounds, warmup=0)
    images = args.steps * data_args["batch_size"]
    ours, bare = side_by_side.rate(seconds["lightning"], images), side_by_side.rate(seconds["bare"], images)
    side_by_side.print_table(["path", "img/s (median)", "rounds (s)"],
                             [["visattn fit (Lightning)", ours, " ".join(f"{s:.2f}" for s in seconds["lightning"])],
                              ["bare PyTorch loop", bare, " ".join(f"{s:.2f}" for s in seconds["bare"])]])
    spread = side_by_side.ratio_spread(seconds, "lightning", "bare")
    print(f"visattn fit / bare loop: {ours / bare:.3f} (per round {spread[0]:.3f}-{spread[1]:.3f})")
    side_by_side.finish("lightning_overhead", {
        "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
        "model": model_args["model_name"], "batch_size": data_args["batch_size"], "num_workers": data_args["num_workers"],
        "timed_steps": args.steps, "lightning_img_s": round(ours, 1), "bare_img_s": round(bare, 1),
        "ratio": round(ours / bare, 3), "ratio_spread": spread,
    })


if __name__ == "__main__":
    main()
