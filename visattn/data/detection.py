"""LightningDataModules for object detection: FashionScenes and COCO instances files, with the pipelines and
datasets of :mod:`visattn.data.detection_samples`.
"""
from __future__ import annotations

import reprlib
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import lightning.pytorch as pl
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError, VisattnWarning, outside_visattn
from .coco import require_some_image
from .datamodules import COCO_VALIDATION_FIX, COCO_VALIDATION_SETTING, SplitLoadersMixin, split_images_dir
from .detection_samples import (MIN_BOX_SIDE, CocoDetection, DetectionTransform, SceneDetection, _objects_per_image,
                                collate_detection, eval_detection_transforms, require_boxes,
                                train_detection_transforms)
from .scenes import ITEM_CATEGORY_IDS, ITEM_WORDS, check_scene_counts, scene_settings, scenes_split

__all__ = [
    "CocoDetection",
    "CocoDetectionDataModule",
    "DetectionTransform",
    "FashionScenesDetectionDataModule",
    "MIN_BOX_SIDE",
    "SceneDetection",
    "collate_detection",
    "eval_detection_transforms",
    "require_boxes",
    "train_detection_transforms",
]

Split = Literal["train", "val", "test"]


def _warn_of_classes_without_boxes(dataset: CocoDetection) -> None:
    """A training category without a box gets a class the head learns from no example (as detectron2's
    instance histogram would show)."""
    seen = set().union(*(labels[crowd == 0].tolist() for _, labels, crowd in dataset.targets))
    empty = [name for index, name in enumerate(dataset.class_names) if index not in seen]
    if empty:
        warnings.warn(f"{dataset.annotations}: categories {reprlib.repr(empty)} have no object box to learn from, "
                      "yet the detector gets a class for each; add their boxes or remove them from categories",
                      VisattnWarning, stacklevel=outside_visattn())


# ---------------------------------------------------------------------------------------------
# data modules
# ---------------------------------------------------------------------------------------------


class _DetectionDataModule(SplitLoadersMixin, pl.LightningDataModule):
    """Splits and DataLoaders shared by the detection data modules.

    Subclasses call ``save_hyperparameters()`` and implement ``class_names`` and
    ``_source(split, transform)``; ``preprocessing`` is what checkpoints keep for inference.
    """

    task = "detection"  # the task whose model these batches feed; `visattn fit` pairs them

    collate_fn = staticmethod(collate_detection)

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[Split, Dataset] = {}

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def most_objects(self) -> Optional[int]:
        """The most object boxes one training image can hold, which a DETR-style detector needs queries for
        (None: not known before the images are read)."""
        return None

    @property
    def category_ids(self) -> Optional[list[int]]:
        """Each label's category id in the data's annotation files (COCO's), which checkpoints keep so that
        detections name them; None for data without such ids."""
        return None

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Detectors take 0..1 RGB pixels and normalise and resize inside the model."""
        return {"recipe": "detection"}

    def train_transform(self) -> DetectionTransform:
        h = self.hparams
        return train_detection_transforms(hflip=h.hflip) if h.augment else eval_detection_transforms()

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and "train" not in self.datasets:
            # both or neither: a split refused here is read again at the next setup
            train, val = self._source("train", self.train_transform()), self._source("val", eval_detection_transforms())
            self.datasets.update(train=train, val=val)
            self._check_validation_readable()
        if stage in (None, "test", "predict") and "test" not in self.datasets:
            self.datasets["test"] = self._source("test", eval_detection_transforms())

    def _source(self, split: Split, transform: DetectionTransform) -> Dataset:
        raise NotImplementedError


class FashionScenesDetectionDataModule(_DetectionDataModule):
    """:class:`~visattn.data.scenes.FashionScenes` with their item boxes (train, val and test
    scenes from disjoint Fashion-MNIST images); 10 classes named by ``ITEM_WORDS``.

    Args:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        persistent_workers: keep the training workers from epoch to epoch instead of starting new ones
            (seconds an epoch under spawn, as on macOS and Windows); they draw what new ones would.
        canvas_size: side of the generated scenes in pixels.
        num_train: training scenes.
        num_val: validation scenes.
        num_test: test scenes.
        min_items: fewest items per scene.
        max_items: most items per scene.
        seed: seed of the scenes.
        augment: flip, zoom, shift and colour-jitter training scenes (boxes follow).
        hflip: with ``augment``, flip half the training scenes left to right.
        root: folder holding the Fashion-MNIST idx files; default: ``$VISATTN_DATA``, then the Debian package.
    """

    path_settings = {"root": "folder"}

    def __init__(
        self,
        *,
        batch_size: int = 32,
        num_workers: int = 2,
        persistent_workers: bool = False,
        canvas_size: int = 64,
        num_train: int = 20000,
        num_val: int = 500,
        num_test: int = 1000,
        min_items: int = 1,
        max_items: int = 3,
        seed: int = 0,
        augment: bool = True,
        hflip: bool = True,
        root: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_setting_types()
        self._check_loader_options()
        check_scene_counts(self.hparams)
        scenes_split(self.hparams, "test")  # checks the scene options and finds Fashion-MNIST early

    @property
    def class_names(self) -> list[str]:
        return list(ITEM_WORDS)

    @property
    def most_objects(self) -> int:
        return self.hparams.max_items

    @property
    def category_ids(self) -> list[int]:
        """The ids :func:`~visattn.data.scenes.export_coco` gives the item classes, so that detections name the
        categories of the scenes' COCO files."""
        return list(ITEM_CATEGORY_IDS)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Also the scene size and how the scenes are drawn, so ``visattn evaluate --dataset fashion-scenes``
        draws the same scenes."""
        side = self.hparams.canvas_size
        return {**super().preprocessing, "input_size": [3, side, side], "scenes": scene_settings(self.hparams)}

    def _source(self, split: Split, transform: DetectionTransform) -> Dataset:
        return SceneDetection(scenes_split(self.hparams, split), transform)


# The setting naming each split's images folder (val and test default to the training one's)
_IMAGES_DIRS = {"train": "data.init_args.images_dir", "val": "data.init_args.val_images_dir",
                "test": "data.init_args.test_images_dir"}


class CocoDetectionDataModule(_DetectionDataModule):
    """Users' images with COCO instances JSON files (the classes are the training file's categories).

    Args:
        train_annotations: the training instances JSON.
        images_dir: the folder holding the training images.
        val_annotations: validation instances JSON; without it, no validation.
        test_annotations: test instances JSON; needed only for ``test`` and ``predict``.
        val_images_dir: the validation images folder; default: ``images_dir``.
        test_images_dir: the test images folder; default: ``images_dir``.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        persistent_workers: keep the training workers from epoch to epoch instead of starting new ones
            (seconds an epoch under spawn, as on macOS and Windows); they draw what new ones would.
        augment: flip, zoom, shift and colour-jitter training images (boxes follow).
        hflip: with ``augment``, flip half the training images left to right (``False`` for text, signs, or
            classes such as left and right hands; the rest of ``augment`` stays).
        drop_empty: leave training images without an object box out, as torchvision's and detectron2's
            references do: FCOS divides its loss by the batch's boxes, and a batch with none gave a loss 80 to
            900 times a usual one's. ``False`` trains on them too (as negatives); validation and test keep
            every image either way.
    """

    path_settings = {"train_annotations": "file", "images_dir": "folder", "val_annotations": "file",
                     "test_annotations": "file", "val_images_dir": "folder", "test_images_dir": "folder"}

    def __init__(
        self,
        train_annotations: str,
        images_dir: str,
        *,
        val_annotations: str | None = None,
        test_annotations: str | None = None,
        val_images_dir: str | None = None,
        test_images_dir: str | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        persistent_workers: bool = False,
        augment: bool = True,
        hflip: bool = True,
        drop_empty: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_setting_types()
        self._check_loader_options()
        self._train = train = CocoDetection(train_annotations, images_dir)  # fails early; setup reuses it
        # before the model is built and validation runs: one line, not a warning per image at the first epoch
        require_some_image(train.paths, Path(images_dir), Path(train_annotations), setting=_IMAGES_DIRS["train"])
        if not train.num_objects:
            raise ConfigError(f"{train_annotations}: no object box to learn from (no annotations, or only crowd "
                              "regions or dropped boxes); give the instances JSON with the training boxes")
        _warn_of_classes_without_boxes(train)

    @property
    def class_names(self) -> list[str]:
        return list(self._train.class_names)

    @property
    def category_ids(self) -> list[int]:
        return list(self._train.category_ids)

    @property
    def most_objects(self) -> int:
        return max(_objects_per_image(self._train, range(len(self._train))))

    @property
    def num_skipped(self) -> int:
        """Broken image files skipped so far, each counted once over all splits set up (splits may share files)."""
        return len({path for dataset in [self._train, *self.datasets.values()] if isinstance(dataset, CocoDetection)
                    for path in dataset.skipped})

    def how_to_validate(self) -> str:
        return COCO_VALIDATION_SETTING

    def _source(self, split: Split, transform: DetectionTransform) -> Dataset:
        h = self.hparams
        annotations = {"train": h.train_annotations, "val": h.val_annotations, "test": h.test_annotations}[split]
        if annotations is None and split == "val":
            return []  # empty: no validation
        if annotations is None:
            raise ConfigError(f"CocoDetectionDataModule: set data.init_args.{split}_annotations to use the {split} split")
        if split == "train":  # read once: else its dropped-box warnings are given twice
            self._train.transform = transform
            return self._train if not h.drop_empty else self._boxed_training_images()
        dataset = CocoDetection(annotations, split_images_dir(h, split), transform=transform,
                                class_names=self._train.class_names, category_ids=self._train.category_ids,
                                evaluation=True)
        # a split with no image found is refused: else `test` warns once per image and scores nothing, with exit 0
        require_some_image(dataset.paths, Path(split_images_dir(h, split)), Path(annotations),
                           setting=_IMAGES_DIRS[split])
        if split == "val":  # with no box, val/map is -1 every epoch, and checkpoints are chosen on it
            require_boxes(dataset, annotations)
        return dataset

    def _boxed_training_images(self) -> Subset:
        """The training images that hold an object box (``drop_empty``), a broken one replaced by one of them."""
        train, count = self._train, len(self._train)
        boxed = [i for i, n in enumerate(_objects_per_image(train, range(count))) if n]
        if len(boxed) < count:
            warnings.warn(f"{self.hparams.train_annotations}: {count - len(boxed)} of its {count} training images hold "
                          "no object box and are left out, as torchvision's references leave them; "
                          "data.init_args.drop_empty: false trains on them too", VisattnWarning,
                          stacklevel=outside_visattn())
        return train.split(boxed)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if stage == "test":  # else mAP -1 would be reported as the score; predict needs no boxes
            require_boxes(self.datasets["test"], self.hparams.test_annotations)

    def _validation_source(self) -> tuple[str, str]:
        h = self.hparams
        return f"{h.val_annotations} (images in {split_images_dir(h, 'val')})", COCO_VALIDATION_FIX

