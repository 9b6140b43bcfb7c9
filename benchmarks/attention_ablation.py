"""Which attention module helps? ResNet-20 with none and with each of the seven, trained by one recipe from
several seeds, scored on all 10000 Fashion-MNIST test images and on where its Grad-CAM maps look.

    python benchmarks/attention_ablation.py [--train-images 6000] [--epochs 3] [--seeds 0 1 2] [--threads 1]

Every model gets the same training images (``--train-images`` of the 54000 training images, the subset a
seed picks), the same augmentation, AdamW schedule and label smoothing (``configs/classification/
se_resnet20_fmnist.yaml``'s, without EMA), in fp32, and is scored with its last weights: nothing is selected
on the test images. Pointing is the pointing game with distractors (`visattn evaluate --dataset
fashion-mnist-pairs --img-size 64`): on 64 px canvases of two test items of different classes, the Grad-CAM map
of each item's class must peak inside that item's box (a map that follows brightness alone scores about half).
Seeds run in turn, each model within a seed, so load from other processes falls on
every model alike; training images/s is given as a ratio to the plain ResNet-20's, over the same seeds.

A difference smaller than the seeds' spread is no difference: at this scale the recipe, not the module,
sets most of the score.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch

import side_by_side
from visattn.cli import pointing_scenes
from visattn.data import FashionMNISTDataModule
from visattn.explain import evaluate_class_pointing
from visattn.inference.checkpoints import inference_model
from visattn.inference.classifier import Classifier
from visattn.registry import create_model
from visattn.tasks.classification import ImageClassifier

MODELS = ("resnet20_cifar", "se_resnet20_cifar", "eca_resnet20_cifar", "cbam_resnet20_cifar", "bam_resnet20_cifar",
          "coord_resnet20_cifar", "gc_resnet20_cifar", "nl_resnet20_cifar")
BASELINE = MODELS[0]
NOISE_NOTE = ("seeds run in turn, every model within each, so load from other processes falls on all alike; a top-1 "
              "difference inside the seeds' spread is no difference")


class TrainingClock(pl.Callback):
    """Seconds spent in training epochs (validation and the test excluded) and the images trained on."""

    def __init__(self) -> None:
        self.seconds, self.images = 0.0, 0
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.images += len(batch[0])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._start


def train_and_test(model_name: str, seed: int, *, train_images: int, epochs: int, test_images: int | None,
                   batch_size: int, pointing_scenes_count: int) -> dict[str, float]:
    """Test top-1 and pointing of ``model_name`` trained from ``seed``, and its training images/s."""
    pl.seed_everything(seed, verbose=False)
    data = FashionMNISTDataModule(batch_size=batch_size, num_workers=0, seed=seed, val_fraction=0.1,
                                  limit=train_images)
    task = ImageClassifier(model_name, num_classes=10, lr=0.002, weight_decay=0.05,
                           warmup_epochs=min(1.0, epochs / 4), label_smoothing=0.1,
                           class_names=data.class_names, preprocessing=data.preprocessing)
    clock = TrainingClock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=epochs, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock])
    trainer.fit(task, datamodule=data)
    test_data = FashionMNISTDataModule(batch_size=256, num_workers=0, limit=test_images)
    scores = trainer.test(task, datamodule=test_data, verbose=False)[0]
    classifier = Classifier(inference_model(task.model), data.class_names,
                            {**data.preprocessing, "input_size": [3, 64, 64]}, model_name, model_name, {})
    scenes = pointing_scenes("fashion-mnist-pairs", "test", pointing_scenes_count)
    pointing = evaluate_class_pointing(classifier, scenes)
    return {"top1": scores["test/top1"], "pointing": pointing["pointing"], "train_img_s": clock.images / clock.seconds}


def summarise(model_name: str, runs: list[dict[str, float]], baseline: list[dict[str, float]]) -> dict[str, Any]:
    top1 = [run["top1"] for run in runs]
    pointing = [run["pointing"] for run in runs]
    speed = [run["train_img_s"] / base["train_img_s"] for run, base in zip(runs, baseline)]
    return {"model": model_name,
            "parameters": sum(p.numel() for p in create_model(model_name, num_classes=10).parameters()),
            "top1": [round(value, 4) for value in top1],
            "top1_mean": round(statistics.fmean(top1), 4),
            "top1_std": round(statistics.stdev(top1), 4) if len(top1) > 1 else 0.0,
            "top1_gain": round(statistics.fmean(top1) - statistics.fmean(b["top1"] for b in baseline), 4),
            "pointing": [round(value, 4) for value in pointing],
            "pointing_mean": round(statistics.fmean(pointing), 4),
            "pointing_std": round(statistics.stdev(pointing), 4) if len(pointing) > 1 else 0.0,
            "train_speed_ratio": round(statistics.median(speed), 3)}


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--models", nargs="+", default=list(MODELS), help=f"architectures (default: all; {BASELINE} "
                      "is always run, as the baseline)")
    args.add_argument("--train-images", type=int, default=6000, help="training images (default: 6000)")
    args.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    args.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    args.add_argument("--pointing-scenes", type=int, default=500, help="two-item test scenes the pointing game "
                      "plays on (default: 500)")
    args.add_argument("--batch-size", type=int, default=128, help="training batch size (default: 128)")
    args.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args.add_argument("--smoke", action="store_true", help="two models, 256 images, one epoch, two seeds, 512 test "
                      "images: checks the script runs")
    options = args.parse_args()
    torch.set_num_threads(options.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # its device and fit-stopped lines per run
    models = [BASELINE, *(name for name in options.models if name != BASELINE)]
    sizes = dict(train_images=options.train_images, epochs=options.epochs, test_images=None,
                 batch_size=options.batch_size, pointing_scenes_count=options.pointing_scenes)
    seeds = options.seeds
    if options.smoke:
        models, seeds = models[:2] if len(models) > 1 else [BASELINE, MODELS[1]], seeds[:2]
        sizes = dict(train_images=256, epochs=1, test_images=512, batch_size=64, pointing_scenes_count=16)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")  # its notes on worker counts and a small dataset
        for seed in seeds:
            for name in models:
                runs[name].append(train_and_test(name, seed, **sizes))
                run = runs[name][-1]
                print(f"seed {seed}  {name}: top-1 {run['top1']:.4f}  pointing {run['pointing']:.3f}", flush=True)
    results = [summarise(name, runs[name], runs[BASELINE]) for name in models]
    print(f"\n{sizes['epochs']} epochs on {sizes['train_images']} training images, seeds {seeds}; test top-1 on "
          f"{sizes['test_images'] or 10000} test images; pointing on {sizes['pointing_scenes_count']} two-item scenes")
    side_by_side.print_table(
        ["model", "parameters", "top-1 mean", "std", "vs plain", "pointing mean", "std", "train img/s vs plain"],
        [[r["model"], f"{r['parameters']:,}", f"{r['top1_mean']:.4f}", f"{r['top1_std']:.4f}",
          f"{r['top1_gain']:+.4f}", f"{r['pointing_mean']:.3f}", f"{r['pointing_std']:.3f}",
          f"{r['train_speed_ratio']:.3f}"] for r in results])
    figures = {"epochs": sizes["epochs"], "train_images": sizes["train_images"],
               "pointing_scenes": sizes["pointing_scenes_count"], "seeds": seeds, "results": results}
    side_by_side.finish("attention_ablation", figures, note=NOISE_NOTE)


if __name__ == "__main__":
    main()
