"""Datasets, safe image decoding and transforms for image classification and captioning."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .coco import CaptionImages, CocoCaptions, KarpathyCaptions, read_karpathy
from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FashionMNIST,
    find_fashion_mnist,
    load_fashion_mnist,
    read_idx,
)
from .image_folder import (
    ImageFiles,
    ImageFolder,
    SkippedImageWarning,
    collate_present,
    decode_next_good,
    for_evaluation,
    find_classes,
)
from .image_io import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_image, list_images
from .scenes import (
    COLORS,
    ITEM_CATEGORY_IDS,
    ITEM_WORDS,
    SCENES_MEAN,
    SCENES_STD,
    FashionScenes,
    Scene,
    describe_scene,
    export_coco,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    eval_transforms,
    to_tensor,
    train_transforms,
)
from .vocab import Vocabulary, tokenize

if TYPE_CHECKING:
    from .caption_datamodules import FashionScenesCaptionDataModule, KarpathyCaptionDataModule, collate_captions
    from .datamodules import FashionMNISTDataModule, ImageFolderDataModule, split_indices

# The data modules import Lightning (seconds); load them on first use so that CLI commands that
# only decode images (classify, explain) start fast.
_LAZY = {
    "FashionMNISTDataModule": ".datamodules",
    "ImageFolderDataModule": ".datamodules",
    "split_indices": ".datamodules",
    "FashionScenesCaptionDataModule": ".caption_datamodules",
    "KarpathyCaptionDataModule": ".caption_datamodules",
    "collate_captions": ".caption_datamodules",
    "CocoDetection": ".detection",
    "CocoDetectionDataModule": ".detection",
    "FashionScenesDetectionDataModule": ".detection",
    "SceneDetection": ".detection",
    "collate_detection": ".detection",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COLORS",
    "CaptionImages",
    "CocoCaptions",
    "CocoDetection",
    "CocoDetectionDataModule",
    "DEFAULT_MAX_PIXELS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FashionMNIST",
    "FashionMNISTDataModule",
    "FashionScenes",
    "FashionScenesCaptionDataModule",
    "FashionScenesDetectionDataModule",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ITEM_CATEGORY_IDS",
    "ITEM_WORDS",
    "ImageFiles",
    "ImageFolder",
    "ImageFolderDataModule",
    "ImageTransform",
    "KarpathyCaptionDataModule",
    "KarpathyCaptions",
    "SCENES_MEAN",
    "SCENES_STD",
    "Scene",
    "SceneDetection",
    "SkippedImageWarning",
    "Vocabulary",
    "collate_captions",
    "collate_detection",
    "collate_present",
    "decode_image",
    "decode_next_good",
    "describe_scene",
    "for_evaluation",
    "eval_transforms",
    "export_coco",
    "find_classes",
    "find_fashion_mnist",
    "list_images",
    "load_fashion_mnist",
    "read_idx",
    "read_karpathy",
    "split_indices",
    "to_tensor",
    "tokenize",
    "train_transforms",
]
