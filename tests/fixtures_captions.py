"""Writes tiny caption corpora for tests: a Karpathy split JSON and a COCO captions JSON, each
with its images folder and one truncated (undecodable) image.

Image ``k`` is a ``16 x 12`` (width x height) PNG filled with the gray value ``20 * k``, so a test
can tell which image a sample came from by its pixel value.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

IMAGE_SIZE = (16, 12)  # width, height
# Karpathy fixture: (file name, sub-folder, split, captions); "broken.jpg" is truncated
KARPATHY_IMAGES = [
    ("0.png", "", "train", ["A red dog runs.", "a dog running"]),
    ("1.png", "sub", "train", ["Two cats sleep", "cats on a sofa", "a cat"]),
    ("broken.jpg", "", "train", ["never seen"]),
    ("3.png", "", "restval", ["a dog and a cat"]),
    ("4.png", "", "val", ["a bird flies"]),
    ("5.png", "", "test", ["a fish swims", "fish in water"]),
]
# COCO fixture: image id -> (file name, captions); image 7 has no caption and is left out, with a warning
COCO_IMAGES = {
    1: ("0.png", ["A red dog runs.", "a dog running"]),
    2: ("broken.jpg", ["never seen"]),
    5: ("5.png", ["a fish swims"]),
    7: ("3.png", []),
}


def write_karpathy(root: Path) -> tuple[Path, Path]:
    """Write ``root/images/...`` and ``root/dataset_tiny.json``; return ``(json path, images dir)``."""
    images_dir = Path(root) / "images"
    entries = []
    for name, folder, split, captions in KARPATHY_IMAGES:
        _write_image(images_dir / folder / name)
        sentences = [{"raw": c, "tokens": c.lower().rstrip(".").split()} for c in captions]
        entry = {"filename": name, "split": split, "sentences": sentences}
        entries.append({**entry, "filepath": folder} if folder else entry)
    path = Path(root) / "dataset_tiny.json"
    path.write_text(json.dumps({"dataset": "tiny", "images": entries}))
    return path, images_dir


def write_coco_captions(root: Path) -> tuple[Path, Path]:
    """Write ``root/coco_images/...`` and ``root/captions.json``; return ``(json path, images dir)``."""
    images_dir = Path(root) / "coco_images"
    images, annotations = [], []
    for image_id, (name, captions) in COCO_IMAGES.items():
        _write_image(images_dir / name)
        images.append({"id": image_id, "file_name": name, "width": IMAGE_SIZE[0], "height": IMAGE_SIZE[1]})
        annotations += [{"id": len(annotations) + 1, "image_id": image_id, "caption": c} for c in captions]
    path = Path(root) / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path, images_dir


def image_value(name: str) -> int:
    """The gray value of fixture image ``name`` (``"<k>.png"`` is filled with ``20 * k``)."""
    return 20 * int(Path(name).stem)


def _write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":  # the broken one: a JPEG cut short after its first 100 bytes
        Image.new("RGB", (64, 64), (90, 10, 200)).save(path, quality=90)
        path.write_bytes(path.read_bytes()[:100])
        return
    Image.new("RGB", IMAGE_SIZE, (image_value(path.name),) * 3).save(path)
