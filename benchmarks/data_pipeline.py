"""Input pipeline throughput for one worker (the main process), visattn against the plain alternative.

    python benchmarks/data_pipeline.py [--images 64] [--batches 20] [--smoke]

1. decode + albumentations training transform of photo-sized PNG and JPEG files written to a
   temporary folder: ``visattn.data.decode_image`` (size limit, EXIF, alpha, high-depth checks)
   against a bare ``PIL.Image.open(...).convert("RGB")``; both feed the same transform.
2. the training transform alone on decoded photos: visattn's ``photo`` recipe (albumentations, the
   crop resized by PIL's filter) against timm's ``create_transform(is_training=True)`` with the same
   crop scale, flip and filter (on PIL images, as timm's datasets hand them over).
3. Fashion-MNIST training batches: ``FashionMNISTDataModule`` (albumentations "small" recipe)
   against ``torchvision.datasets.FashionMNIST`` with the equivalent ``transforms.v2`` pipeline,
   same idx files, batch size and ``num_workers=0``.
"""
from __future__ import annotations

import gzip
import itertools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

import side_by_side
from visattn.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, FashionMNISTDataModule, decode_image, find_fashion_mnist
from visattn.data.transforms import train_transforms


def write_photos(folder: Path, count: int, size: tuple[int, int], suffix: str) -> list[Path]:
    """Smooth gradients with noise: compress like photos, unlike flat colour or pure noise."""
    rng = np.random.default_rng(0)
    width, height = size
    ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.3, 1.0, height)[:, None, None]
    paths = []
    for i in range(count):
        pixels = ramp * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 12, (height, width, 3))
        path = folder / f"{i:04d}{suffix}"
        options = {"quality": 90} if suffix == ".jpg" else {}
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, **options)
        paths.append(path)
    return paths


def pil_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def decode_round(decode: Callable[[Path], np.ndarray], paths: list[Path], img_size: int) -> Callable[[], None]:
    transform = train_transforms(img_size)

    def run() -> None:
        for path in paths:
            transform(decode(path))
    return run


def transform_round(transform: Callable, images: list) -> Callable[[], None]:
    def run() -> None:
        for image in images:
            transform(image)
    return run


def timm_train_transform(img_size: int) -> Callable:
    """timm's training transform with visattn's photo-recipe defaults: crop area 60-100%, flips, bilinear."""
    from timm.data import create_transform

    return create_transform(img_size, is_training=True, scale=(0.6, 1.0), hflip=0.5, color_jitter=None,
                            interpolation="bilinear")


def torchvision_fashion_mnist(folder: Path, batch_size: int) -> DataLoader:
    """torchvision's dataset over the same idx files (it wants them unzipped under FashionMNIST/raw)."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for source in find_fashion_mnist().iterdir():
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rb") as f, open(raw / source.name.removesuffix(".gz"), "wb") as out:
            shutil.copyfileobj(f, out)
    transform = v2.Compose([
        v2.PILToTensor(), v2.RGB(), v2.RandomCrop(28, padding=4), v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(FASHION_MNIST_MEAN, FASHION_MNIST_STD),
    ])
    dataset = datasets.FashionMNIST(str(folder), train=True, transform=transform, download=False)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0)


def batches_round(loader: DataLoader, batches: int) -> Callable[[], None]:
    def run() -> None:
        for _ in itertools.islice(loader, batches):
            pass
    return run


def main() -> None:
    parser = side_by_side.parser(__doc__.splitlines()[0], rounds=5)
    parser.add_argument("--images", type=int, default=64, help="files per format")
    parser.add_argument("--photo-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--img-size", type=int, default=224, help="training crop size")
    parser.add_argument("--batches", type=int, default=20, help="Fashion-MNIST batches per round")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    if args.smoke:
        args.images, args.photo_size, args.img_size, args.batches, args.batch_size, args.rounds = 4, (64, 48), 32, 2, 16, 1
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for fmt, suffix in (("png", ".png"), ("jpeg", ".jpg")):
            paths = write_photos(folder, args.images, tuple(args.photo_size), suffix)
            seconds = side_by_side.interleave({"visattn": decode_round(decode_image, paths, args.img_size),
                                               "reference": decode_round(pil_rgb, paths, args.img_size)},
                                              rounds=args.rounds)
            results.append(_figures(f"decode+train_transform {fmt} {args.photo_size[0]}x{args.photo_size[1]}",
                                    "PIL.Image.open+convert", seconds, len(paths)))
        arrays = [pil_rgb(path) for path in paths]
        seconds = side_by_side.interleave(
            {"visattn": transform_round(train_transforms(args.img_size), arrays),
             "reference": transform_round(timm_train_transform(args.img_size), [Image.fromarray(a) for a in arrays])},
            rounds=args.rounds)
        results.append(_figures(f"train_transform {args.photo_size[0]}x{args.photo_size[1]}",
                                "timm create_transform(is_training)", seconds, len(arrays)))
        data = FashionMNISTDataModule(batch_size=args.batch_size, num_workers=0)
        data.setup("fit")
        loaders = {"visattn": data.train_dataloader(), "reference": torchvision_fashion_mnist(folder, args.batch_size)}
        seconds = side_by_side.interleave({k: batches_round(v, args.batches) for k, v in loaders.items()},
                                          rounds=args.rounds)
        results.append(_figures("fashion-mnist train batches", "torchvision FashionMNIST+v2", seconds,
                                args.batches * args.batch_size))
    side_by_side.print_table(["pipeline", "reference", "visattn img/s", "reference img/s", "visattn/reference",
                              "per round"],
                             [[r["pipeline"], r["reference"], r["visattn_img_s"], r["reference_img_s"], r["ratio"],
                               "{:.3f}-{:.3f}".format(*r["ratio_spread"])] for r in results])
    side_by_side.finish("data_pipeline", {"results": results})


def _figures(pipeline: str, reference: str, seconds: dict[str, list[float]], images: int) -> dict:
    ours, theirs = side_by_side.rate(seconds["visattn"], images), side_by_side.rate(seconds["reference"], images)
    return {"pipeline": pipeline, "reference": reference, "visattn_img_s": round(ours, 1),
            "reference_img_s": round(theirs, 1), "ratio": round(ours / theirs, 3),
            "ratio_spread": side_by_side.ratio_spread(seconds, "visattn", "reference")}


if __name__ == "__main__":
    main()
