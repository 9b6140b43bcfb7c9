"""Datasets, safe image decoding and transforms for image classification."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FashionMNIST,
    find_fashion_mnist,
    load_fashion_mnist,
    read_idx,
)
from .image_folder import ImageFolder, SkippedImageWarning, find_classes
from .image_io import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_image, list_images
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    eval_transforms,
    to_tensor,
    train_transforms,
)

if TYPE_CHECKING:
    from .datamodules import FashionMNISTDataModule, ImageFolderDataModule, split_indices

# The data modules import Lightning (seconds); load them on first use so that CLI commands that
# only decode images (classify, explain) start fast.
_LAZY = {"FashionMNISTDataModule", "ImageFolderDataModule", "split_indices"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(".datamodules", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FashionMNIST",
    "FashionMNISTDataModule",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "ImageFolderDataModule",
    "ImageTransform",
    "SkippedImageWarning",
    "decode_image",
    "eval_transforms",
    "find_classes",
    "find_fashion_mnist",
    "list_images",
    "load_fashion_mnist",
    "read_idx",
    "split_indices",
    "to_tensor",
    "train_transforms",
]
