"""``visattn demo`` (what ``make demo`` runs): train an attention CNN briefly on Fashion-MNIST, score it on
the test set, use it, caption FashionScenes test images with the shipped captioner, drawing where each
word looked, run the shipped detectors on the same scenes, and draw where the shipped classifiers look.

Every step runs a real ``visattn`` command, printed before it runs, so each can be repeated by hand.
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from . import cli
from .errors import VisattnError
from .fileio import atomic_path, claim_folder, unique_paths
from .data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from .data.scenes import FashionScenes
from .weights_index import load_index
from .registry import model_family, split_model_name
from .shipped import shipped_folder

CONFIG = shipped_folder("configs") / "classification" / "demo_cbam_fmnist.yaml"
OUT = Path("outputs") / "demo"


class StepStopped(Exception):
    """A step interrupted (130), terminated (143), hung up on (129) or whose reader went away (141): it said so; the
    demo ends with its exit code, as the step alone would."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def run(*argv: str) -> None:
    print(f"\n$ visattn {' '.join(argv)}", flush=True)
    code = cli.main(list(argv))
    if code in (129, 130, 141, 143):
        raise StepStopped(code)
    if code != 0:
        raise VisattnError(f"demo: `visattn {argv[0]}` failed with exit code {code}; its error is above")


def write_test_images(folder: Path, count: int = 6) -> list[Path]:
    """The first ``count`` Fashion-MNIST test images as PNGs named after their true class."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = load_fashion_mnist("test")
    paths = []
    for i in range(count):
        name = FASHION_MNIST_CLASSES[labels[i]].replace("/", "-").replace(" ", "-").lower()
        path = folder / f"{i:02d}_{name}.png"
        _save_png(Image.fromarray(np.asarray(images[i])), path)
        paths.append(path)
    return paths


def write_test_scenes(folder: Path, count: int = 4) -> list[Path]:
    """The first ``count`` FashionScenes test scenes (Fashion-MNIST test items only) as PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    scenes = FashionScenes("test", num_scenes=count)
    paths = []
    for i in range(count):
        path = folder / f"scene_{i:02d}.png"
        _save_png(Image.fromarray(scenes[i].image), path)
        paths.append(path)
    return paths


def _save_png(image: Image.Image, path: Path) -> None:
    # Whole or not at all: a demo killed mid-write had left a cut-off PNG among its test images.
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def shipped(task: str, dataset: str) -> list[str]:
    """Each architecture's default shipped weights (``arch.tag``) for a task trained on a dataset; the
    non-default tags (further training stages of the same architecture) would only repeat it."""
    return sorted(name for name, entry in load_index().items()
                  if entry.get("task") == task and entry.get("dataset") == dataset and entry.get("default"))


def explain_shipped(classifiers: list[str], images: list[Path]) -> None:
    """Rollout (ViTs) and Grad-CAM maps of the shipped classifiers on a few test images."""
    for name in classifiers:
        methods = ("rollout", "gradcam") if model_family(split_model_name(name)[0]) == "vit" else ("gradcam",)
        for image in images:
            for method in methods:
                run("explain", str(image), "--model", name, "--method", method,
                    "--out", str(OUT / "explain" / f"{image.stem}_{name}_{method}.png"))


def set_aside_previous_run(folder: Path) -> None:
    """A fresh fit refuses a folder holding an earlier run's checkpoints; the demo moves the last run's beside it,
    to the first free ``NAME-previous`` (``-previous-2``, ...: an earlier set, which may have been trained on, is
    kept), so that each demo trains and scores its own model. Claimed first: a fit still writing there is one line,
    and its checkpoints stay where they are."""
    claim_folder(folder, setting="demo: the demo's checkpoint folder", task="visattn fit")
    if any(folder.glob("*.ckpt")):
        taken = {path.name.casefold() for path in folder.parent.iterdir()}  # a broken link's name too
        previous = unique_paths(folder.parent, f"{folder.name}-previous", taken, suffix="")[0]
        folder.rename(previous)
        print(f"demo: the previous demo run's checkpoints are now in {previous}")


def main() -> None:
    if not CONFIG.is_file():
        raise VisattnError(f"demo: {CONFIG} is not here; reinstall visattn, or restore configs/ in a clone "
                           "(git checkout configs)")
    checkpoint = OUT / "checkpoints" / "last.ckpt"
    set_aside_previous_run(OUT / "checkpoints")
    print("demo: train CBAM-ResNet-20 (841K parameters) for 2 epochs on 4000 Fashion-MNIST images")
    run("fit", "--config", str(CONFIG))
    print("\nTest accuracy of the demo model on all 10000 Fashion-MNIST test images:")
    run("evaluate", "--checkpoint", str(checkpoint), "--dataset", "fashion-mnist", "--split", "test")

    images = write_test_images(OUT / "images")
    run("classify", *map(str, images), "--checkpoint", str(checkpoint), "--topk", "2")
    classifiers = shipped("classification", "fashion-mnist")
    for name in classifiers:
        run("classify", *map(str, images), "--model", name, "--topk", "2")
    if not classifiers:
        print("\n(no shipped Fashion-MNIST classifier in weights/ yet, so only the demo model classified them)")

    for image in images[:2]:
        for method in ("gradcam", "gates"):
            run("explain", str(image), "--checkpoint", str(checkpoint), "--method", method,
                "--out", str(OUT / "explain" / f"{image.stem}_{method}.png"))

    scenes = write_test_scenes(OUT / "scenes")
    for name in shipped("captioning", "fashion-scenes"):
        run("caption", *map(str, scenes), "--model", name, "--attention-out", str(OUT / "attention"))
    for name in shipped("detection", "fashion-scenes"):
        run("detect", *map(str, scenes), "--model", name, "--out", str(OUT / "detections" / name),
            "--attention-out", str(OUT / "detections" / f"{name}_attention"))
    explain_shipped(classifiers, images[:3])

    print("\nOutputs:")
    print(f"  checkpoints (best and last): {OUT / 'checkpoints'}")
    print(f"  training logs (CSV):         {OUT / 'logs'}")
    print(f"  test images classified:      {OUT / 'images'}")
    print(f"  Grad-CAM, rollout, gates:    {OUT / 'explain'}")
    print(f"  test scenes captioned:       {OUT / 'scenes'}")
    print(f"  per-word attention PNGs:     {OUT / 'attention'}")
    print(f"  detections and their panels: {OUT / 'detections'}")


if __name__ == "__main__":
    sys.exit(cli.main(["demo"]))
