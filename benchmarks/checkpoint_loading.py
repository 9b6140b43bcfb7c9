"""Loading a training checkpoint for inference: visattn's ``load_classifier(checkpoint=FILE)`` against Lightning's
``ImageClassifier.load_from_checkpoint(FILE)``.

    python benchmarks/checkpoint_loading.py [--models vit_base_patch16_224 resnet50] [--rounds 7] [--threads 2]
        [--smoke]

The checkpoint is what ``visattn fit`` writes after one AdamW step: the model's weights, the optimizer's two moments
of each, the run's hyperparameters. Both sides load the same file. Lightning reads all of it and initialises the
model before loading its weights; visattn memory-maps it, builds the model on the meta device and reads only the
model's tensors into it. The two models' logits on one image are compared before anything is timed; the ratio is
Lightning's seconds per load over visattn's (above 1: visattn loads faster).
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import side_by_side
from weights_loading import load_round, parsed_models
from visattn import load_classifier
from visattn.tasks.classification import ImageClassifier

NUM_CLASSES = 10


def write_checkpoint(name: str, kwargs: dict, path: Path) -> int:
    """``name``'s checkpoint after one training step on two random images, at ``path``; the images' size."""
    size = kwargs.get("img_size", 224)
    torch.manual_seed(0)
    task = ImageClassifier(name, num_classes=NUM_CLASSES, model_kwargs=kwargs, warmup_epochs=0.0)
    images = TensorDataset(torch.randn(2, 3, size, size), torch.tensor([1, 2]))
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=path.parent)
    trainer.fit(task, DataLoader(images, batch_size=2))
    trainer.save_checkpoint(path)
    return size


def visattn_load(path: Path) -> torch.nn.Module:
    return load_classifier(checkpoint=str(path)).model


def lightning_load(path: Path) -> torch.nn.Module:
    return ImageClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True).model


def compare(name: str, path: Path, size: int, rounds: int) -> dict:
    """Seconds per load of the checkpoint at ``path`` on each side."""
    image = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ours, theirs = (load(path).eval()(image) for load in (visattn_load, lightning_load))
    difference = (ours - theirs).abs().max().item()
    side_by_side.require_agreement(difference <= side_by_side.LOGIT_TOLERANCE["fp32"],
                                   f"{name} from {path.name}: visattn's and Lightning's logits differ by up to "
                                   f"{difference:.1e}")
    seconds = side_by_side.interleave({"visattn": load_round(visattn_load, path),
                                       "lightning": load_round(lightning_load, path)}, rounds=rounds)
    visattn_s, lightning_s = (statistics.median(seconds[k]) for k in ("visattn", "lightning"))
    return {"model": name, "mib": round(path.stat().st_size / 2**20, 1), "visattn_s": round(visattn_s, 5),
            "lightning_s": round(lightning_s, 5), "ratio": round(lightning_s / visattn_s, 3),
            "ratio_spread": side_by_side.ratio_spread(seconds, "visattn", "lightning"), "max_logit_diff": difference}


def main() -> None:
    args, models = parsed_models(side_by_side.parser(__doc__.splitlines()[0], rounds=7))
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name, kwargs in models.items():
            path = Path(folder) / f"{name}.ckpt"
            size = write_checkpoint(name, kwargs, path)
            results.append(compare(name, path, size, args.rounds))
            path.unlink()  # ViT-B's is about 1 GB
    side_by_side.print_table(
        ["model", "checkpoint MiB", "visattn s/load", "Lightning s/load", "Lightning/visattn", "per round",
         "max |diff|"],
        [[r["model"], r["mib"], r["visattn_s"], r["lightning_s"], r["ratio"],
          "{:.3f}-{:.3f}".format(*r["ratio_spread"]), f"{r['max_logit_diff']:.1e}"] for r in results],
    )
    side_by_side.finish("checkpoint_loading", {"results": results})


if __name__ == "__main__":
    main()
