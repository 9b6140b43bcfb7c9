"""The scores of a detector, without Lightning: COCO mAP (IoU 0.50:0.95) and mAP@0.5 from torchmetrics'
``MeanAveragePrecision``, as pycocotools' COCOeval computes them. :func:`detection_map` scores validation and
test of :class:`~visattn.tasks.detection.DetectionTask`, and :func:`evaluate_detector` a trained detector
(``visattn evaluate``, ``save-weights --dataset``).
"""
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np
from torch.utils.data import DataLoader
from torchmetrics.detection import MeanAveragePrecision

from ..data.detection_samples import Batch, CocoDetection, SceneDetection, collate_detection, require_boxes
from ..data.image_folder import evaluation_batches, seeded_subset, skipped_images
from ..errors import ConfigError
from ..scores import reported_score
from ..tasks.distributed import gather_shares, in_split_order
from .detector import Detector

if TYPE_CHECKING:
    from ..data.scenes import FashionScenes

__all__ = ["COCO_IOU_THRESHOLDS", "COCO_RECALL_THRESHOLDS", "detection_map", "detector_scenes", "evaluate_detector",
           "evaluation_loader", "map_scores"]


# COCOeval's IoU and recall grids in float64: torchmetrics' defaults are float32 (0.55 is 0.5500000119),
# which moved mAP by up to 6e-4 from pycocotools' on the same detections.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).tolist()
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101).tolist()


class _MeanAveragePrecision(MeanAveragePrecision):
    """torchmetrics' mAP, its processes' images gathered whole under DDP: its own sync runs one collective per
    image, which processes holding different numbers of images (validation without repeats) leave unmatched.
    The images are put back in the split's order (process ``r`` holds images ``r, r + W, ...``), which for
    COCO files is image id order: COCOeval breaks ties between equal scores by it."""

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
        group = process_group or self.process_group
        for name in self._reductions:  # each state is a list with an entry per image (dist_reduce_fx None)
            shares = gather_shares([t.cpu() for t in getattr(self, name)], group)
            setattr(self, name, [t.to(self.device) for t in in_split_order(shares)])


def detection_map() -> MeanAveragePrecision:
    """COCO-style box mAP, as pycocotools' COCOeval scores it; :func:`map_scores` reads ``map`` and ``map50``."""
    return _MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=COCO_IOU_THRESHOLDS,
                                 rec_thresholds=COCO_RECALL_THRESHOLDS)


def map_scores(metric: MeanAveragePrecision) -> dict[str, float]:
    """``map`` (IoU 0.50:0.95) and ``map50``; -1 when the data holds no ground-truth box."""
    scores = metric.compute()
    return {"map": reported_score(scores["map"]), "map50": reported_score(scores["map_50"])}


# ---------------------------------------------------------------------------------------------
# `visattn evaluate`
# ---------------------------------------------------------------------------------------------


def detector_scenes(detector: Detector, split: str, limit: Optional[int] = None) -> "FashionScenes":
    """``limit`` FashionScenes of ``split`` drawn as the detector's training run drew them (by default as many
    as it scored, else 1000), at its input size."""
    from ..data.scenes import recorded_scenes

    side = int(detector.preprocessing.get("input_size", [3, 64, 64])[-1])
    return recorded_scenes(detector.preprocessing, split, limit, canvas_size=side)


def evaluation_loader(detector: Detector, spec: str, split: str = "test", *, limit: Optional[int] = None,
                      batch_size: int = 16, num_workers: int = 0) -> DataLoader:
    """Batches of ``fashion-scenes`` (``limit`` scenes of ``split``, default as many as the training run
    scored, else 1000, at the training canvas size) or ``coco:ANNOTATIONS.json:IMAGES_DIR`` (categories mapped by name onto the detector's classes)."""
    from ..data.coco import coco_spec, require_some_image

    if spec == "fashion-scenes":
        if split not in ("train", "val", "test"):
            raise ConfigError(f"--split {split}: fashion-scenes has the splits train, val and test")
        dataset = SceneDetection(detector_scenes(detector, split, limit))
    elif spec.startswith("coco:") and spec.count(":") >= 2:
        annotations, images_dir = coco_spec(spec)
        dataset = CocoDetection(annotations, images_dir, class_names=detector.class_names,
                                category_ids=detector.category_ids, evaluation=True)
        require_some_image(dataset.paths, Path(images_dir), Path(annotations))
        dataset = seeded_subset(dataset, limit)
        require_boxes(dataset, annotations)  # with none, mAP is -1
    else:
        raise ConfigError(f"--dataset {spec}: detectors take fashion-scenes or coco:ANNOTATIONS.json:IMAGES_DIR")
    return evaluation_batches(dataset, batch_size=batch_size, num_workers=num_workers, collate=collate_detection)


def evaluate_detector(detector: Detector, batches: Iterable[Batch]) -> dict[str, Any]:
    """``map`` (IoU 0.50:0.95), ``map50``, ``n`` (images) and, for a DataLoader of image files,
    ``skipped`` of ``detector`` over ``(images, targets)`` batches; ``None`` batches (only broken image
    files) are passed over."""
    metric, n = detection_map(), 0
    for images, targets in (b for b in batches if b is not None):
        metric.update(detector.detect(images), targets)
        n += len(images)
    if n == 0:
        raise ConfigError("the evaluation dataset is empty; check --dataset, --split and --limit")
    return {**map_scores(metric), "n": n, **skipped_images(getattr(batches, "dataset", None))}
