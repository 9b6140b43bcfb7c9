"""``make demo``: train an attention CNN briefly on Fashion-MNIST, score it on the test set, then use it.

Every step runs a real ``visattn`` command, printed before it runs, so each can be repeated by hand.
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from . import cli
from .data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from .pretrained import load_index

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "classification" / "demo_cbam_fmnist.yaml"
OUT = Path("outputs") / "demo"


def run(*argv: str) -> None:
    print(f"\n$ visattn {' '.join(argv)}", flush=True)
    code = cli.main(list(argv))
    if code != 0:
        sys.exit(f"demo: `visattn {argv[0]}` failed with exit code {code}")


def write_test_images(folder: Path, count: int = 6) -> list[Path]:
    """The first ``count`` Fashion-MNIST test images as PNGs named after their true class."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = load_fashion_mnist("test")
    paths = []
    for i in range(count):
        name = FASHION_MNIST_CLASSES[labels[i]].replace("/", "-").replace(" ", "-").lower()
        path = folder / f"{i:02d}_{name}.png"
        Image.fromarray(np.asarray(images[i])).save(path)
        paths.append(path)
    return paths


def shipped_fashion_mnist_classifiers() -> list[str]:
    return sorted(name for name, entry in load_index().items()
                  if entry.get("task") == "classification" and entry.get("dataset") == "fashion-mnist")


def main() -> None:
    checkpoint = OUT / "checkpoints" / "last.ckpt"
    print("visattn demo: train CBAM-ResNet-20 (841K parameters) for 2 epochs on 4000 Fashion-MNIST images")
    run("fit", "--config", str(CONFIG))
    print("\nTest accuracy of the demo model on all 10000 Fashion-MNIST test images:")
    run("evaluate", "--checkpoint", str(checkpoint), "--dataset", "fashion-mnist", "--split", "test")

    images = write_test_images(OUT / "images")
    run("classify", *map(str, images), "--checkpoint", str(checkpoint), "--topk", "2")
    shipped = shipped_fashion_mnist_classifiers()
    for name in shipped:
        run("classify", *map(str, images), "--model", name, "--topk", "2")
    if not shipped:
        print("\n(no shipped Fashion-MNIST weights in weights/ yet, so only the demo model classified them)")

    print("\nOutputs:")
    print(f"  checkpoints (best and last): {OUT / 'checkpoints'}")
    print(f"  training logs (CSV):         {OUT / 'logs'}")
    print(f"  test images classified:      {OUT / 'images'}")


if __name__ == "__main__":
    main()
