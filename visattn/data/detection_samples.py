"""Object detection data without Lightning: bbox-aware albumentations pipelines, FashionScenes and COCO instances
datasets, and their collate function; the LightningDataModules (:mod:`visattn.data.detection`) and
`visattn evaluate` (:mod:`visattn.inference.detection_scoring`) read them.

Samples are ``(image, target)``: ``image`` a ``(3, H, W)`` float tensor in 0..1 (detectors
normalise and resize inside the model, so nothing here normalises), ``target``
``{"boxes": (N, 4) float32 xyxy pixels, "labels": (N,) int64 0-based class ids}``, N >= 0.
:func:`collate_detection` keeps batches as lists, since images may differ in size.

Every training pipeline clips boxes to the image and drops those left narrower or lower than
:data:`MIN_BOX_SIDE` (zero-area, inverted or outside the image, before or after a transform);
albumentations moves each label with its box (``label_fields``), so they stay aligned.
:class:`CocoDetection` drops such boxes already when it reads them, with a warning, so that its
box counts are those the pipelines keep. Evaluation targets that no transform moves keep their boxes
as annotated, as pycocotools' COCOeval scores them, zero-area ones too; only inverted boxes are dropped (which
COCOeval keeps).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import reprlib
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import (ConfigError, VisattnWarning, caught_warnings, first_few, is_number, is_whole,
                      outside_visattn)
from .coco import check_image_ids, image_paths, json_type_hint, load_coco, require_images_dir
from .image_folder import ImageFiles
from .image_io import DEFAULT_MAX_PIXELS, exif_orientation, path_argument
from .scenes import ITEM_WORDS, FashionScenes
from .transforms import ImageTransform, to_tensor

__all__ = [
    "Batch",
    "CocoDetection",
    "DetectionTransform",
    "MIN_BOX_SIDE",
    "SceneDetection",
    "Target",
    "collate_detection",
    "eval_detection_transforms",
    "require_boxes",
    "train_detection_transforms",
]

Target = dict[str, torch.Tensor]
Batch = tuple[list[torch.Tensor], list[Target]]  # what collate_detection gives
_CROWD_FLAGS = (0, 1, "0", "1")  # an annotation's iscrowd; bool("0") is True: a string is read as its number
MIN_BOX_SIDE = 1.0  # pixels; thinner boxes are annotation noise (and degenerate for torchvision heads)


class DetectionTransform(ImageTransform):
    """An albumentations pipeline called as ``transform(image, boxes, labels) -> (tensor, target)``.

    Seeded like :class:`~visattn.data.transforms.ImageTransform`: in visattn's training loaders from each batch's
    seed, elsewhere from the DataLoader's (a worker's, or the single-process iterator's), so seeded runs repeat and
    resumed runs draw what uninterrupted ones did.

    Args:
        transforms: albumentations transforms applied in order to an HWC uint8 RGB array and
            its ``pascal_voc`` (xyxy pixel) boxes.
    """

    def __init__(self, transforms: Sequence[A.BasicTransform] = ()) -> None:
        # albumentations takes boxes to float32 0..1 and back: a side of exactly MIN_BOX_SIDE comes back 0.99999
        # at most places (a 1 px box would be dropped at 80 of 119 x positions in a 120 px wide image)
        least = MIN_BOX_SIDE - 1e-3
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels", "iscrowd"], clip=True,
                                   filter_invalid_bboxes=True, min_width=least, min_height=least)
        # The evaluation pipeline has no transform on purpose: its targets stay as annotated (see __call__).
        with caught_warnings():
            warnings.filterwarnings("ignore", message="Got processor for bboxes, but no transform")
            self.pipeline = A.Compose(list(transforms), bbox_params=bbox_params)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 iscrowd: np.ndarray | None = None) -> tuple[torch.Tensor, Target]:
        """``iscrowd`` (evaluation targets): 1 for crowd regions, kept in the target as ``"iscrowd"``.
        Evaluation targets through a pipeline without transforms keep their boxes as given: clipped and
        filtered, mAP would score against other boxes than the annotated ones COCOeval scores."""
        self._seed_once()
        labels = np.asarray(labels, np.int64).reshape(-1)
        crowd = np.zeros_like(labels) if iscrowd is None else np.asarray(iscrowd, np.int64).reshape(-1)
        if iscrowd is not None and not self.pipeline.transforms:
            return to_tensor(image), {"boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
                                      "labels": torch.as_tensor(labels), "iscrowd": torch.as_tensor(crowd)}
        out = self.pipeline(image=image, bboxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=labels, iscrowd=crowd)
        target = {
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(out["labels"], np.int64).reshape(-1)),
        }
        if iscrowd is not None:
            target["iscrowd"] = torch.as_tensor(np.asarray(out["iscrowd"], np.int64).reshape(-1))
        return to_tensor(out["image"]), target


def train_detection_transforms(
    *,
    hflip: bool = True,
    scale: tuple[float, float] = (0.8, 1.2),
    translate: float = 0.1,
    color_jitter: float = 0.2,
) -> DetectionTransform:
    """Training augmentation that moves boxes with the pixels.

    Args:
        hflip: random horizontal flips.
        scale: scale range of the random affine, applied to half the images (the image keeps its size;
            borders are black). Each axis draws its own scale, so objects also stretch (by up to
            1.2 / 0.8 = 1.5x in aspect with the default).
        translate: largest shift of the random affine, as a fraction of the image side.
        color_jitter: brightness/contrast/saturation jitter strength, applied to half the images (as
            torchvision's detection references' photometric distortion); 0 turns it off.
    """
    steps: list[A.BasicTransform] = [A.HorizontalFlip(p=0.5)] if hflip else []
    steps.append(A.Affine(scale=scale, translate_percent=(-translate, translate), fill=0, p=0.5))
    if color_jitter > 0:
        steps.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, hue=0.0))
    return DetectionTransform(steps)


def eval_detection_transforms() -> DetectionTransform:
    """No augmentation: training targets are clipped and filtered, evaluation targets kept as annotated."""
    return DetectionTransform()


def collate_detection(samples: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """``(images, targets)`` lists: the torchvision detection API takes images of different sizes."""
    return [image for image, _ in samples], [target for _, target in samples]


class SceneDetection(Dataset):
    """:class:`~visattn.data.scenes.FashionScenes` as detection samples; labels are Fashion-MNIST
    class ids (names in :data:`~visattn.data.scenes.ITEM_WORDS`)."""

    class_names = list(ITEM_WORDS)

    def __init__(self, scenes: FashionScenes, transform: DetectionTransform | None = None) -> None:
        self.scenes = scenes
        self.transform = transform if transform is not None else eval_detection_transforms()

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        draw = getattr(self.scenes, "draw", None)  # FashionScenes; a Subset or list of scenes gives them drawn
        scene = draw(index, captions=False) if draw else self.scenes[index]  # captions cost a tenth of the drawing
        return self.transform(scene.image, scene.boxes, scene.labels)


def _in_id_order(images: list[dict]) -> list[dict]:
    """The images sorted by id, the order in which COCOeval walks them and breaks ties between equal
    scores; ids of mixed types (which COCOeval cannot sort) keep the file's order."""
    try:
        return sorted(images, key=lambda image: image["id"])
    except TypeError:
        return images


class CocoDetection(ImageFiles):
    """A COCO instances JSON and its images folder; every image is kept, with or without boxes.

    Category ids become contiguous 0-based labels in the order of ``class_names``: by default
    the categories sorted by id, named by their ``name``. Crowd annotations (``iscrowd: 1``) are
    left out of training; evaluation targets (:func:`~visattn.data.image_folder.for_evaluation`)
    keep them with ``"iscrowd"``, so that mAP, as COCO's, neither counts detections on a crowd
    region as false positives nor expects them. ``bbox`` ``[x, y, w, h]`` becomes
    ``x1, y1, x2, y2``. A box the training pipelines would drop (narrower or lower than
    :data:`MIN_BOX_SIDE`, or outside the image's declared ``width`` and ``height``) is dropped when read,
    with one warning per file counting them, so that ``num_objects`` counts what a detector learns
    from; ``evaluation`` targets keep every box that is not inverted as annotated, as COCOeval scores them (it keeps
    inverted ones too).
    An image whose ``file_name`` is no string, an annotation naming an image the file does not
    list, an id shared by two images or two annotations, a ``bbox`` that is not four numbers or an ``iscrowd`` other
    than 0 or 1 is a one-line :class:`~visattn.errors.ConfigError`. Boxes of a photo that EXIF turns
    on decoding turn with it when the image's ``width`` and ``height`` are those of the stored frame;
    another size than the declared one is warned about once per file. Broken image files are
    skipped as :class:`~visattn.data.image_folder.ImageFolder` skips them: warned about once,
    counted in ``num_skipped``, and replaced by the next decodable image (with its own boxes), or
    left out of evaluation (:func:`~visattn.data.image_folder.for_evaluation`).

    Args:
        annotations: the instances JSON (``images``, ``annotations`` with ``bbox``, ``categories``).
        images_dir: the folder holding each image's ``file_name``.
        transform: a :class:`DetectionTransform`; default: :func:`eval_detection_transforms`.
        class_names: map categories by name onto these labels (give the training classes when
            reading validation or test annotations, so labels agree).
        category_ids: each of ``class_names``' ids in the training annotations, where known: a category of the
            same name with another id here is warned about.
        max_pixels: images declaring more pixels are refused (and skipped).
        evaluation: read targets to score detections against (see
            :func:`~visattn.data.image_folder.for_evaluation`, which the loaders of such data call too).
    """

    def __init__(
        self,
        annotations: str | os.PathLike,
        images_dir: str | os.PathLike,
        *,
        transform: DetectionTransform | None = None,
        class_names: Sequence[str] | None = None,
        category_ids: Sequence[int | None] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        evaluation: bool = False,
    ) -> None:
        self.annotations = path_argument("annotations", annotations, "file")
        images_dir = path_argument("images_dir", images_dir)
        self.evaluation = evaluation
        self.transform = transform if transform is not None else eval_detection_transforms()
        require_images_dir(images_dir, self.annotations)
        coco = load_coco(self.annotations)
        try:
            self.class_names, label_of = self._labels(coco.dataset["categories"], class_names)
            # each label's category id in this file (None for a training class the file does not list)
            id_of = {label: category for category, label in label_of.items()}
            self.category_ids = [id_of.get(label) for label in range(len(self.class_names))]
            self._warn_of_moved_ids(category_ids or [])
            images = _in_id_order(coco.dataset["images"])
            self._track(image_paths(self.annotations, images, images_dir), max_pixels)
            if not self.paths:
                raise ConfigError(f"{self.annotations}: lists no images; is it a COCO instances file?")
            self._declared_sizes = [_declared_size(image) for image in images]
            self.targets = self._targets(images, coco.dataset.get("annotations", []), label_of)
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                f"{self.annotations}: not COCO instances JSON (bad or missing {err}); expected images with id "
                "and file_name, annotations with image_id, category_id and bbox, categories with id and name"
            ) from None
        self._size_warned = torch.zeros(len(self.paths), dtype=torch.bool).share_memory_()  # as _bad: once over workers
        # EXIF orientation read once per image over workers; one warning per dataset for a frame its size cannot tell
        self._orientation_read = torch.zeros(len(self.paths), dtype=torch.bool).share_memory_()
        self._frame_warned = torch.zeros(1, dtype=torch.bool).share_memory_()

    @property
    def num_objects(self) -> int:
        """Boxes of objects over all images (crowd regions are none): what a detector learns from and is scored on."""
        return sum(_objects_per_image(self, range(len(self))))

    def _warn_of_moved_ids(self, trained_ids: Sequence[int | None]) -> None:
        """Categories are matched to the training classes by name, so scores hold; but detections name their
        training ids (``predict``, ``detect --json``), which this file gives other categories or none: scored
        against it by pycocotools, a measured mAP of 0.1125 falls to 0.0919."""
        moved = [(name, here, there) for name, here, there in zip(self.class_names, self.category_ids, trained_ids)
                 if here is not None and there is not None and here != there]
        if moved:
            name, here, there = moved[0]
            warnings.warn(f"{self.annotations}: {len(moved)} of its categories have other ids than in the training "
                          f"annotations (e.g. {json.dumps(name)}: id {here} here, {there} there); they are matched by "
                          "name, but predictions name the training ids; give the categories their training ids",
                          VisattnWarning, stacklevel=outside_visattn())

    def _labels(self, categories: list[dict], class_names: Sequence[str] | None) -> tuple[list[str], dict[int, int]]:
        """Class names in label order and ``{category id: label}``."""
        odd = next((c for c in categories if not is_whole(c["id"])), None)
        if odd is not None:  # labels follow the sorted ids, and "10" sorts before "2"
            raise ConfigError(f"{self.annotations}: category {json.dumps(odd.get('name'))} has id {json.dumps(odd['id'])}; "
                              "write category ids as whole numbers, as COCO does")
        categories = sorted(categories, key=lambda c: c["id"])
        names = [c["name"] for c in categories]
        if not names:
            raise ConfigError(f"{self.annotations}: lists no categories; a detector needs at least one")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ConfigError(f"{self.annotations}: category names {repeated} are given to several ids; "
                              "give each category its own name")
        ids = [c["id"] for c in categories]
        shared = sorted({i for i in ids if ids.count(i) > 1})
        if shared:  # the id would map to the last of them, and the others would never train
            raise ConfigError(f"{self.annotations}: category ids {shared} are given to several categories; "
                              "give each category its own id")
        if class_names is None:
            return names, {c["id"]: k for k, c in enumerate(categories)}
        index = {name: k for k, name in enumerate(class_names)}
        unknown = sorted(c["name"] for c in categories if c["name"] not in index)
        if unknown:
            raise ConfigError(f"{self.annotations}: categories {reprlib.repr(unknown)} are not among the classes "
                              f"({first_few(class_names)}); use annotations with the training categories")
        return list(class_names), {c["id"]: index[c["name"]] for c in categories}

    def _targets(self, images: list[dict], annotations: list[dict],
                 label_of: dict[int, int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each image's ``(N, 4)`` float32 xyxy boxes, ``(N,)`` int64 labels and ``(N,)`` int64 crowd flags that the
        pipelines would keep, once every annotation is known to name one image and one category. Read as arrays of
        all annotations at once: small arrays made per image had cost 2.5 times the JSON parse."""
        check_image_ids(self.annotations, images, [a["image_id"] for a in annotations])
        self._check_annotation_ids(annotations)
        odd = next((a for a in annotations if isinstance(a["category_id"], bool)), None)
        if odd is not None:  # true is 1 to a dict: it would be read as category 1 (other types are unknown ids below)
            raise ConfigError(f"{self.annotations}: annotation {json.dumps(odd.get('id'))} has category_id "
                              f"{json.dumps(odd['category_id'])}; write category ids as whole numbers, as COCO does")
        unknown = {a["category_id"] for a in annotations} - set(label_of)
        if unknown:
            hint = json_type_hint(next(iter(unknown)), list(label_of))
            shown = reprlib.repr(sorted(unknown, key=str))
            raise ConfigError(f"{self.annotations}: annotations use category ids {shown}{hint} that its categories "
                              "do not list; add them to categories or remove those annotations")
        position = {image["id"]: k for k, image in enumerate(images)}
        owner = np.array([position[a["image_id"]] for a in annotations], np.int64)
        order = np.argsort(owner, kind="stable")  # grouped by image, in the images' order, each in the file's order
        owner, given = owner[order], [annotations[k] for k in order]
        self._check_boxes(given, owner)
        xywh = np.array([a["bbox"] for a in given], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        labels = np.array([label_of[a["category_id"]] for a in given], np.int64)
        crowd = np.array([int(a.get("iscrowd", 0)) for a in given], np.int64)
        return self._drop_unusable(boxes, labels, crowd, owner, given)

    def _check_annotation_ids(self, annotations: list[dict]) -> None:
        """pycocotools indexes annotations by id, so a repeated id keeps one of them and changes the mAP."""
        counts = Counter(a["id"] for a in annotations)
        repeated = next((ann_id for ann_id, n in counts.items() if n > 1), None)
        if repeated is not None:
            raise ConfigError(f"{self.annotations}: annotation id {json.dumps(repeated)} is given to {counts[repeated]} "
                              "annotations; give each annotation its own id")

    def _check_boxes(self, annotations: list[dict], owner: np.ndarray) -> None:
        """One line for the first bbox that is not four finite numbers or iscrowd that is not 0 or 1, of
        ``annotations`` grouped by image (each image's ``owner`` index): an image's bboxes are checked before its
        iscrowd flags. All are checked at once first; only a file with a bad one is walked annotation by annotation."""
        bboxes = [a.get("bbox") for a in annotations]
        flags = [a.get("iscrowd", 0) for a in annotations]
        if (set(map(type, bboxes)) <= {list} and set(map(len, bboxes)) <= {4}
                and set(map(type, itertools.chain.from_iterable(bboxes))) <= {int, float}
                and np.isfinite(np.array(bboxes, np.float64)).all() and all(f in _CROWD_FLAGS for f in flags)):
            return
        for _, group in itertools.groupby(zip(owner.tolist(), annotations), key=lambda pair: pair[0]):
            image_annotations = [annotation for _, annotation in group]
            for annotation in image_annotations:
                self._bbox(annotation)
            for annotation in image_annotations:
                self._crowd(annotation)

    def _drop_unusable(self, boxes: np.ndarray, labels: np.ndarray, crowd: np.ndarray, owner: np.ndarray,
                       annotations: list[dict]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each image's ``boxes``, ``labels`` and ``crowd`` flags (of all ``annotations``, grouped by image: box
        ``k`` is of image ``owner[k]``) less the boxes :func:`_why_unusable` finds; one warning counting them and
        saying why."""
        sizes = np.array([size or (np.inf, np.inf) for size in self._declared_sizes], np.float64)  # (images, 2)
        why = _why_unusable(boxes, sizes[owner], evaluation=self.evaluation)
        usable = why == ""
        dropped = Counter(why[~usable].tolist())
        if dropped:
            reasons = ", ".join(f"{n} {why}" for why, n in dropped.most_common())
            example = annotations[int(np.argmin(usable))]
            warnings.warn(f"{self.annotations}: dropped {dropped.total()} of {len(boxes)} boxes "
                          f"({reasons}; e.g. annotation {json.dumps(example.get('id'))}'s bbox {json.dumps(example['bbox'])}); "
                          "fix or remove those annotations", VisattnWarning, stacklevel=outside_visattn())
        cuts = np.cumsum(np.bincount(owner[usable], minlength=len(sizes)))[:-1]
        return list(zip(np.split(boxes[usable], cuts), np.split(labels[usable], cuts), np.split(crowd[usable], cuts)))

    def _bbox(self, annotation: dict) -> list[float]:
        bbox = annotation["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) and math.isfinite(v) for v in bbox)):
            raise ConfigError(f"{self.annotations}: annotation {json.dumps(annotation['id'])}'s bbox {json.dumps(bbox)} is "
                              "not [x, y, width, height]; fix or remove that annotation")
        return bbox

    def _crowd(self, annotation: dict) -> int:
        flag = annotation.get("iscrowd", 0)
        if flag not in _CROWD_FLAGS:
            raise ConfigError(f"{self.annotations}: annotation {json.dumps(annotation['id'])}'s iscrowd {json.dumps(flag)} is "
                              "not 0 or 1; write 1 for a crowd region and 0 for an object")
        return int(flag)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target] | None:
        i, image = self._decode(index)
        if image is None:
            return None
        boxes, labels, crowd = self.targets[i]
        boxes = self._in_decoded_frame(i, boxes, image.shape[:2])
        if self.evaluation:
            return self.transform(image, boxes, labels, iscrowd=crowd)
        return self.transform(image, boxes[crowd == 0], labels[crowd == 0])  # a crowd box is no object to learn

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.annotations)!r}, classes={len(self.class_names)}, n={len(self)})"

    def _in_decoded_frame(self, i: int, boxes: np.ndarray, decoded: tuple[int, int]) -> np.ndarray:
        """``boxes`` on the decoded pixels (height, width ``decoded``). Decoding applies EXIF orientation,
        so when the JSON declares the stored frame's size the boxes turn with the pixels; any other
        disagreement with the declared size is warned about once per file."""
        declared = self._declared_sizes[i]
        if declared is None or declared == decoded:
            self._warn_of_an_unknown_frame(i, declared, has_boxes=len(boxes) > 0)
            return boxes
        orientation = exif_orientation(self.paths[i]) if declared == decoded[::-1] else 1
        if orientation in _AXES_SWAPPING:
            return _turn_boxes(boxes, orientation, height=decoded[0], width=decoded[1])
        if not self._size_warned[i]:
            self._size_warned[i] = True
            warnings.warn(f"{self.paths[i]}: decoded {decoded[1]}x{decoded[0]} (width x height), but "
                          f"{self.annotations} declares {declared[1]}x{declared[0]}; its boxes may miss the objects: "
                          "fix its width and height or the image", VisattnWarning, stacklevel=outside_visattn())
        return boxes

    def _warn_of_an_unknown_frame(self, i: int, declared: tuple[int, int] | None, *, has_boxes: bool) -> None:
        """Warn, for the first such photo of the dataset, when its EXIF orientation moved the pixels but nothing
        tells whether its boxes were drawn before or after (a mirror or half turn keeps the size; so does any
        turn of a square photo, or of one whose size the JSON leaves out): they are taken as drawn after."""
        if not has_boxes or self._orientation_read[i] or self._frame_warned[0]:
            return
        self._orientation_read[i] = True
        orientation = exif_orientation(self.paths[i])
        if orientation == 1 or (declared is not None and declared[0] != declared[1] and orientation in _AXES_SWAPPING):
            return  # a turn that swaps a non-square photo's sides, whose declared size is then the displayed one's
        self._frame_warned[0] = True
        why = "declares no width and height" if declared is None else "declares a size the turn does not change"
        warnings.warn(f"{self.paths[i]}: EXIF orientation {orientation} turns or mirrors its pixels and {self.annotations} "
                      f"{why}, so its boxes are taken to be on the photo as displayed; if they were drawn on the "
                      "stored pixels, remove the EXIF orientation from such photos (warned for the first one only)",
                      VisattnWarning, stacklevel=outside_visattn())


def require_boxes(dataset: Dataset, source: str | os.PathLike) -> None:
    """One line unless ``dataset`` (a :class:`CocoDetection` or a ``Subset`` of one) holds an object
    box (crowd regions are none): without one, mAP has nothing to score detections against."""
    indices = range(len(dataset))
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, dataset.indices
    if isinstance(dataset, CocoDetection) and not sum(_objects_per_image(dataset, indices)):
        raise ConfigError(f"{source}: no object box to score detections against in the {len(indices)} images read "
                          "(no annotations, or only crowd regions or dropped boxes); "
                          "give the instances JSON with the boxes")


def _objects_per_image(dataset: CocoDetection, indices: Sequence[int]) -> Iterator[int]:
    """Each image's object boxes (crowd regions are none)."""
    return (int((dataset.targets[i][2] == 0).sum()) for i in indices)


# EXIF orientations that swap width and height (PIL's exif_transpose): whether x, then y, is mirrored
# once the axes are swapped; 5 is a plain transpose, 6 a clockwise quarter turn.
_AXES_SWAPPING = {5: (False, False), 6: (True, False), 7: (True, True), 8: (False, True)}


def _why_unusable(boxes: np.ndarray, declared: np.ndarray, *, evaluation: bool) -> np.ndarray:
    """Why each of the ``(N, 4)`` xyxy ``boxes`` is dropped, ``""`` for none: for ``evaluation``, only an
    inverted box (COCOeval scores the rest as annotated); for training, as the pipelines would: narrower or
    lower than :data:`MIN_BOX_SIDE` (inverted, empty), or so once clipped to its image's ``declared``
    ``(height, width)``, a row of ``(N, 2)`` (outside the image; unknown where the row is infinite)."""
    why = np.full(len(boxes), "", dtype=object)
    if evaluation:  # a zero-area box stays: COCOeval expects it found, and no detection can match it
        why[(boxes[:, 2:] < boxes[:, :2]).any(axis=1)] = "with a negative width or height"
        return why
    height, width = declared[:, :1], declared[:, 1:]
    clipped = np.clip(boxes, 0, np.concatenate([width, height, width, height], axis=1).astype(np.float32))
    outside = (clipped[:, 2:] - clipped[:, :2] < MIN_BOX_SIDE).any(axis=1)
    why[outside & np.isfinite(declared[:, 0])] = "outside their image"
    too_thin = (boxes[:, 2:] - boxes[:, :2] < MIN_BOX_SIDE).any(axis=1)
    why[too_thin] = f"with a width or height under {MIN_BOX_SIDE:g} pixel"
    return why


def _turn_boxes(boxes: np.ndarray, orientation: int, *, height: int, width: int) -> np.ndarray:
    """xyxy ``boxes`` of a stored image in the ``width`` x ``height`` frame its EXIF ``orientation`` turns it into."""
    x1, y1, x2, y2 = boxes[:, 1], boxes[:, 0], boxes[:, 3], boxes[:, 2]  # the axes swapped
    mirror_x, mirror_y = _AXES_SWAPPING[orientation]
    if mirror_x:
        x1, x2 = width - x2, width - x1
    if mirror_y:
        y1, y2 = height - y2, height - y1
    return np.stack([x1, y1, x2, y2], axis=1)


def _declared_size(image: dict) -> tuple[int, int] | None:
    """The ``(height, width)`` an image entry declares; ``None`` without both (COCO tools often leave them out)."""
    size = image.get("height"), image.get("width")
    if all(is_number(side) and float(side).is_integer() and side > 0 for side in size):
        return int(size[0]), int(size[1])
    return None
