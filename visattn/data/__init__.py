"""Datasets, safe image decoding and transforms for image classification and captioning."""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .caption_datamodules import FashionScenesCaptionDataModule, KarpathyCaptionDataModule
    from .caption_samples import collate_captions
    from .coco import CaptionImages, CocoCaptions, KarpathyCaptions, read_karpathy
    from .datamodules import FashionMNISTDataModule, ImageFolderDataModule, split_indices
    from .detection import CocoDetectionDataModule, FashionScenesDetectionDataModule
    from .detection_samples import CocoDetection, SceneDetection, collate_detection
    from .fashion_mnist import (FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FashionMNIST,
                                find_fashion_mnist, load_fashion_mnist, read_idx)
    from .image_folder import (ImageFiles, ImageFolder, SkippedImageWarning, collate_present, decode_next_good,
                               find_classes, for_evaluation)
    from .image_io import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_image, list_images
    from .scenes import (COLORS, ITEM_CATEGORY_IDS, ITEM_WORDS, SCENES_MEAN, SCENES_STD, FashionScenes, Scene,
                         describe_scene, export_coco)
    from .preprocessing import IMAGENET_MEAN, IMAGENET_STD
    from .transforms import ImageTransform, eval_transforms, to_tensor, train_transforms
    from .vocab import Vocabulary, tokenize

# Each name is imported from its module on first use: a command that decodes one image, or reads a weights index,
# imports that module alone, not albumentations, OpenCV's scene drawing, the COCO readers and Lightning (the data
# modules) with it.
_MODULES = {
    ".caption_datamodules": ("FashionScenesCaptionDataModule", "KarpathyCaptionDataModule"),
    ".caption_samples": ("collate_captions",),
    ".coco": ("CaptionImages", "CocoCaptions", "KarpathyCaptions", "read_karpathy"),
    ".datamodules": ("FashionMNISTDataModule", "ImageFolderDataModule", "split_indices"),
    ".detection": ("CocoDetectionDataModule", "FashionScenesDetectionDataModule"),
    ".detection_samples": ("CocoDetection", "SceneDetection", "collate_detection"),
    ".fashion_mnist": ("FASHION_MNIST_CLASSES", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FashionMNIST",
                       "find_fashion_mnist", "load_fashion_mnist", "read_idx"),
    ".image_folder": ("ImageFiles", "ImageFolder", "SkippedImageWarning", "collate_present", "decode_next_good",
                      "find_classes", "for_evaluation"),
    ".image_io": ("DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "decode_image", "list_images"),
    ".scenes": ("COLORS", "ITEM_CATEGORY_IDS", "ITEM_WORDS", "SCENES_MEAN", "SCENES_STD", "FashionScenes", "Scene",
                "describe_scene", "export_coco"),
    ".preprocessing": ("IMAGENET_MEAN", "IMAGENET_STD"),
    ".transforms": ("ImageTransform", "eval_transforms", "to_tensor", "train_transforms"),
    ".vocab": ("Vocabulary", "tokenize"),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # visattn.data.transforms, as before it was lazy
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
