"""Object detection as a LightningModule (FCOS and DETR-style detectors from the registry), its
mAP metric, and inference helpers for ``visattn detect``, ``evaluate`` and ``save-weights``.

Detectors follow torchvision's detection API (see :mod:`visattn.models.detection`): they take
lists of 0..1 images and 0-based labels, return a loss dict in training and per-image
``{"boxes", "scores", "labels"}`` in evaluation, and normalise and resize inside. Scores are
COCO mAP (IoU 0.50:0.95) and mAP@0.5 from torchmetrics' ``MeanAveragePrecision``.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional, Sequence, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.detection import MeanAveragePrecision

from ..data.detection import CocoDetection, SceneDetection, Target, collate_detection, require_boxes
from ..data.image_folder import evaluation_batches, seeded_subset, skipped_images
from ..data.image_io import DEFAULT_MAX_PIXELS
from ..data.transforms import check_unit_images, to_model_input
from ..errors import ConfigError, WeightsError, one_line
from ..layers.patch_embed import is_count, is_number
from ..explain.detections import check_max_side, detection_maps
from ..modes import eval_mode
from ..fileio import atomic_path, attention_note, output_errors, output_paths, png_mark
from ..models.detection import unit_floats
from ..pretrained import find_weights_entry
from ..registry import Strictness, create_model, is_model, model_family, split_model_name
from ..scores import reported_score
from .classification import (Classifier, checkpoint_model_kwargs, inference_model,
                             inference_target, load_checkpoint_weights, match_class_order, read_checkpoint,
                             recorded_labels, refuse_linked_kwargs, require_task, task_checkpoint,
                             warn_if_normalised_otherwise)
from .distributed import gather_shares, in_split_order
from .guards import (GuardedTask, NonFiniteLossGuard, TrainingLoss, any_process_scored, batch_of_one_is_one_line,
                     refuse_cast_batches, skip_missing_batch, weight_average)

if TYPE_CHECKING:
    from ..data.scenes import FashionScenes

Batch = tuple[list[Tensor], list[Target]]
Detections = list[dict[str, Tensor]]


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


def is_detection_arch(name: str) -> bool:
    """Whether ``name`` (``arch`` or ``arch.tag``) is a registered detector."""
    arch = split_model_name(name)[0]
    return is_model(arch) and model_family(arch) == "detection"


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


class DetectionTask(GuardedTask, pl.LightningModule):
    """Train and evaluate a detector.

    Args:
        model_name: a registered ``fcos_*`` or ``detr_*`` architecture (``visattn models 'fcos_*'``),
            or ``arch.tag`` to fine-tune shipped weights (unless ``pretrained`` is False).
        num_classes: object classes; linked from the datamodule in the configs.
        model_kwargs: extra builder arguments (``backbone_kwargs``, ``pretrained_backbone``,
            ``min_size``, ``num_queries``, ...).
        pretrained: None (the default): as the model name says, an ``arch.tag`` starts from its
            shipped weights and a bare architecture from random init (but for ``pretrained_backbone``);
            False: no detector weights, even for ``arch.tag`` (its architecture with random init);
            ``True`` or a weights file to start the whole detector from; a classifier head of
            another size is dropped.
        strict: see :func:`visattn.create_model`.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay, not applied to biases, norms, position embeddings and tokens
            (DETR's query embeddings are decayed, as timm decays every 2-d weight).
        warmup_epochs: linear warm-up length, then cosine decay to zero over the run.
        backbone_lr_scale: the backbone's learning rate as a fraction of ``lr`` (DETR: 0.1).
        class_names: label names, linked from the datamodule; saved in checkpoints for inference.
        category_ids: each label's category id in the training annotations (COCO's), linked from the
            datamodule; saved in checkpoints, so that detections name them (None: data without ids).
        preprocessing: what inference needs to prepare images, linked from the datamodule.
        ema_decay: keep an exponential moving average of the weights (e.g. 0.999), which validation and
            testing detect with and checkpoints' weights are read from; None disables it.
        max_bad_steps: a step whose loss is NaN or infinite is skipped (and logged as
            ``train/skipped_steps``); this many in a row stop the run with a message.
    """

    task = "detection"  # the data modules it takes say the same
    # Given once in the data section of a config and linked here by `visattn fit` (see lightning_cli.py).
    linked_data_attributes = ("num_classes", "class_names", "category_ids", "preprocessing")

    def __init__(
        self,
        model_name: str = "fcos_cbam_resnet20_cifar",
        num_classes: int = 10,
        model_kwargs: Optional[dict[str, Any]] = None,
        pretrained: Optional[Union[bool, str]] = None,
        strict: Strictness = True,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        backbone_lr_scale: float = 1.0,
        class_names: Optional[list[str]] = None,
        category_ids: Optional[list[int]] = None,
        preprocessing: Optional[dict[str, Any]] = None,
        ema_decay: Optional[float] = None,
        max_bad_steps: int = 5,
    ) -> None:
        super().__init__()
        if not is_detection_arch(model_name):
            raise ConfigError(f"model_name={model_name!r} is not a detector; pick one of `visattn models 'fcos_*'` "
                              "or `visattn models 'detr_*'`")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"{len(class_names)} class_names for num_classes={num_classes}; link both from the data")
        if category_ids is not None and len(category_ids) != num_classes:
            raise ConfigError(f"{len(category_ids)} category_ids for num_classes={num_classes}; link both from the data")
        self.save_hyperparameters()
        refuse_linked_kwargs(model_kwargs, num_classes="model.init_args.num_classes")
        self.model = create_model(model_name, num_classes=num_classes, pretrained=pretrained, strict=strict,
                                  **dict(model_kwargs or {}))
        match_class_order(self.model, model_name, pretrained, class_names)
        whole_detector = pretrained or (pretrained is None and split_model_name(model_name)[1] is not None)
        if not whole_detector and not {"image_mean", "image_std"} & set(model_kwargs or {}):  # given ones are meant
            given = {"mean": self.model.transform.image_mean, "std": self.model.transform.image_std}
            warn_if_normalised_otherwise(backbone_preprocessing(self.model), given, normaliser="the detector",
                                         weights="its backbone's starting weights",
                                         setting="model.init_args.model_kwargs.image_mean and image_std")
        self.ema = weight_average(self.model, ema_decay)
        self.loss_guard = NonFiniteLossGuard(max_bad_steps)
        self.train_loss = TrainingLoss()
        self.val_map = detection_map()
        self.test_map = detection_map()

    def setup(self, stage: str) -> None:
        # the target check had blamed the data for boxes Lightning cast to bf16 or float64 (torchvision's
        # GIoU loss fails in float64 too)
        refuse_cast_batches(self, "a detector's boxes, box losses and matching need float32",
                            precisions=("bf16-true", "16-true", "64-true"))
        check = getattr(self.model, "check_query_count", None)  # DETR's: before training, not when shuffled to
        most = getattr(self.trainer.datamodule, "most_objects", None)
        if stage == "fit" and check is not None and most is not None:
            check(most, source="the training data")

    def forward(self, images: list[Tensor]) -> Detections:
        return self.eval_model(images)

    @batch_of_one_is_one_line
    def training_step(self, batch: Batch, batch_idx: int) -> Optional[Tensor]:
        images, targets = batch
        self.loss_guard.watch(self.model)
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=len(images))
        self.train_loss.log(self, loss, batch_size=len(images))
        return self.loss_guard.check(self, loss)

    @skip_missing_batch
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        self.val_map.update(self(images), targets)

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val/")

    @skip_missing_batch
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        self.test_map.update(self(images), targets)

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test/")

    def _log_map(self, metric: MeanAveragePrecision, prefix: str) -> None:
        if any_process_scored(self, metric):
            # the same in every process once gathered; synced (by max, which keeps every digit of equal values, where
            # a mean of three moved them by 6e-8) so that Lightning does not advise it
            self.log_dict({prefix + k: v for k, v in map_scores(metric).items()}, prog_bar=True, sync_dist=True,
                          reduce_fx="max")
        metric.reset()

    @skip_missing_batch
    def predict_step(self, batch: Any, batch_idx: int) -> Detections:
        images = batch[0] if isinstance(batch, tuple) else batch
        return self(images)


def backbone_preprocessing(detector: nn.Module) -> Optional[dict[str, Any]]:
    """What the weights a detector's backbone was built from were trained with (``pretrained_backbone``);
    ``None`` when it was built from none, or from a file that recorded nothing."""
    return next((module.visattn_recorded_preprocessing for module in detector.modules() if module is not detector
                 and getattr(module, "visattn_recorded_preprocessing", None)), None)


# ---------------------------------------------------------------------------------------------
# inference: shipped weights or training checkpoints, with their class names
# ---------------------------------------------------------------------------------------------


@dataclass
class Detector:
    """A detector ready for inference, with its class names and preprocessing."""

    model: nn.Module
    class_names: list[str]
    preprocessing: dict[str, Any]
    name: str  # arch.tag or the checkpoint path
    arch: str
    model_kwargs: dict[str, Any]
    category_ids: Optional[list[int]] = None  # each label's id in the training annotations (COCO's), where known

    device = Classifier.device

    @torch.no_grad()  # not inference_mode: its tensors refuse in-place writes and autograd in the caller's code
    def detect(self, images: Sequence[Tensor], *, score_threshold: Optional[float] = None,
               attention: bool = False, attention_max_side: Optional[int] = None) -> Detections:
        """Per image ``{"boxes": (M, 4) xyxy pixels, "scores": (M,), "labels": (M,)}`` on the CPU,
        scoring at least ``score_threshold`` (None: the model's own, FCOS's ``score_thresh``, DETR's 0),
        for ``(3, H, W)`` images in 0..1 on any device, or uint8 ones (0..255), which a float32 detector turns
        into floats one at a time (a quarter of the memory for a batch of photos).

        ``attention`` adds ``"attention"`` ``(M, H, W)``: where each detection looked, its query's
        cross-attention for DETR-style detectors, else gradient × input of its score
        (:func:`visattn.explain.detections.detection_maps`); ``attention_max_side`` shrinks the maps so
        that their longer side is at most that many pixels.
        """
        check_unit_images(images)
        # NaN kept every detection from passing, without a word
        if score_threshold is not None and not (is_number(score_threshold) and 0 <= score_threshold <= 1):
            raise ConfigError(f"score_threshold={score_threshold!r}: give a number from 0 to 1, or None for the "
                              "model's own")
        check_max_side(attention_max_side, "attention_max_side")
        images = self._model_inputs(images, as_floats=attention)
        if not images:
            return []
        threshold = 0.0 if score_threshold is None else score_threshold
        # eval_mode: a detector in training mode wants targets and returns losses
        with eval_mode(self.model), _score_floor_at_most(self.model, score_threshold):
            if attention:
                detections, maps = detection_maps(self.model, images, min_score=threshold, max_side=attention_max_side)
                detections = [{**d, "attention": m} for d, m in zip(detections, maps)]
            else:
                detections = self.model(images)
        return [{k: v[d["scores"] >= threshold].cpu() for k, v in d.items()} for d in detections]

    def _model_inputs(self, images: Sequence[Tensor], *, as_floats: bool) -> list[Tensor]:
        """``images`` on the model's device; uint8 ones kept for a float32 model's transform to convert in turn,
        unless ``as_floats`` (gradient x input needs floats) or the model computes in another dtype (or has none)."""
        weight = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        keep_bytes = weight is not None and weight.dtype == torch.float32 and not as_floats
        return [image.to(weight.device) if keep_bytes and image.dtype == torch.uint8 else
                to_model_input(unit_floats(image) if image.dtype == torch.uint8 else image, self.model)
                for image in images]


@contextmanager
def _score_floor_at_most(model: nn.Module, threshold: Optional[float]) -> Iterator[None]:
    """FCOS drops candidates scoring at most its ``score_thresh`` before NMS, so a lower requested
    threshold would find nothing below it: lower it for the call, then put it back (None: leave it)."""
    floor = getattr(model, "score_thresh", None)
    if floor is None or threshold is None or threshold >= floor:
        yield
        return
    model.score_thresh = threshold
    try:
        yield
    finally:
        model.score_thresh = floor


def load_detector(model: Optional[str] = None, checkpoint: Optional[str] = None, *,
                  device: str = "cpu") -> Detector:
    """Load ``arch.tag`` shipped weights (``arch`` alone: its default weights) or a training checkpoint
    onto ``device`` (see :func:`visattn.devices.inference_device`)."""
    target = inference_target(model, checkpoint, device)
    if checkpoint is not None:
        return _detector_from_checkpoint(Path(checkpoint), target)
    require_task(model, "detection")
    arch, tag = split_model_name(model)
    entry = find_weights_entry(arch, tag)
    net = inference_model(create_model(f"{arch}.{entry['tag']}"), target)
    labels = recorded_labels(entry.get("labels"), net.num_classes, f"{arch}.{entry['tag']}'s index entry")
    return Detector(net, labels, dict(entry.get("preprocessing") or {}), f"{arch}.{entry['tag']}", arch,
                    dict(entry.get("model_kwargs") or {}), entry.get("category_ids"))


def _detector_from_checkpoint(path: Path, device: torch.device) -> Detector:
    checkpoint, hparams = task_checkpoint(path, "detection")
    if not is_detection_arch(str(hparams.get("model_name", ""))) or not is_count(hparams.get("num_classes")):
        raise WeightsError(f"{path}: not a visattn detection checkpoint (no detector model_name and num_classes); "
                           "pass a checkpoint written by `visattn fit --config configs/detection/...`")
    # The checkpoint holds every weight: the backbone's own pretrained weights need not be read again.
    arch, kwargs = checkpoint_model_kwargs(hparams, pretrained_backbone=False)
    net = create_model(arch, num_classes=hparams["num_classes"], **kwargs)
    load_checkpoint_weights(net, checkpoint, path)
    labels = recorded_labels(hparams.get("class_names"), hparams["num_classes"], str(path))
    return Detector(inference_model(net, device), labels, dict(hparams.get("preprocessing") or {}), str(path), arch, kwargs,
                    hparams.get("category_ids"))


def is_detector(model: Optional[str] = None, checkpoint: Optional[str] = None) -> bool:
    """Whether ``--model`` (its architecture) or ``--checkpoint`` (its ``model_name``) is a detector."""
    if checkpoint is not None:
        model = (read_checkpoint(Path(checkpoint), lazy=True).get("hyper_parameters") or {}).get("model_name")
    return isinstance(model, str) and is_detection_arch(model)


# ---------------------------------------------------------------------------------------------
# `visattn evaluate` and `visattn detect`
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


# One colour per class (cycled), readable on black FashionScenes canvases and on photos.
_BOX_COLOURS = ("red", "lime", "deepskyblue", "yellow", "orange", "magenta", "cyan", "white", "pink", "violet")
_MIN_DRAWN_SIDE = 256  # small images are enlarged before drawing, so the labels stay readable
_MAX_DRAWN_SIDE = 4096  # ... but not a strip beyond this (a 3000x20 panorama was drawn 39000 px wide)
# An attention panel is 200 px wide (2 in at 100 dpi); maps at a 12 MP photo's pixels took 48 MB a detection
# (a 16-query DETR: 3.6 GB and 76 s against 11 s without maps; 8000x6000 ran out of memory).
_PANEL_SIDE = 512


def detect_files(detector: Detector, paths: Sequence[str], *, score_threshold: float = 0.5,
                 out: Optional[str] = None, attention_out: Optional[str] = None, as_json: bool = False,
                 batch_size: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Print the detections of each image file (folders are searched recursively); returns ``(failures, files)``.

    Files are decoded and detected ``batch_size`` at a time, in one forward pass. A file that cannot
    be read is reported on its own line and the others go on. With ``out``, a PNG per image,
    ``STEM.png``, shows the boxes with their labels and scores; with ``attention_out``, a PNG per
    image has one panel per detection showing where it looked (see :meth:`Detector.detect`),
    ``STEM-attention.png`` when it is the ``out`` folder too. Every output name is planned before
    anything is written, and one that would replace an input file is refused. ``max_pixels`` as
    :func:`~visattn.data.image_io.decode_image` takes it.
    """
    import json

    from ..data.image_io import list_images, run_in_batches
    from ..data.transforms import to_byte_tensor

    files = list_images(list(paths), allow_empty=False, exclude=[out, attention_out])
    targets = _output_targets(files, out=out, attention_out=attention_out)
    failures = 0
    detect_batch = partial(detector.detect, score_threshold=score_threshold, attention=bool(attention_out),
                           attention_max_side=_PANEL_SIDE)
    results = run_in_batches(files, batch_size, to_byte_tensor, detect_batch, keep_images=bool(out or attention_out),
                             max_pixels=max_pixels)
    for (item, found), drawn, panels in zip(results, targets["--out"], targets["--attention-out"]):
        if item.error is not None:
            failures += 1
            print(item.error_line(as_json))
            continue
        record = {"file": str(item.path),
                  "detections": detection_records(found, detector.class_names, detector.category_ids)}
        _write_drawings(record, item.image, found, drawn=drawn, panels=panels)
        print(json.dumps(record) if as_json else _detection_line(record, score_threshold))
    return failures, len(files)


# What detect's two outputs are marked as written by (fileio.PNG_COMMAND): the drawings and the attention panels.
_DRAWINGS, _PANELS = "detect --out", "detect --attention-out"


def _output_targets(files: list[Path], *, out: Optional[str], attention_out: Optional[str]) -> dict[str, list]:
    """Each file's drawing (``--out``) and attention panels (``--attention-out``), ``None`` where not asked for.
    In one folder, an image's drawing ``NAME.png`` has its panels in ``NAME-attention.png`` (one ``-N`` for both:
    named apart, an input named ``p-attention.png`` had given its drawing the panels' name of ``p.png``)."""
    if out and attention_out and Path(out).resolve() == Path(attention_out).resolve():
        named = output_paths(files, out, flag="--out", commands={"": _DRAWINGS, "-attention": _PANELS})
        return {"--out": named[""], "--attention-out": named["-attention"]}
    return {flag: output_paths(files, folder, flag=flag, commands={"": command})[""]
            for flag, folder, command in (("--out", out, _DRAWINGS), ("--attention-out", attention_out, _PANELS))}


def _write_drawings(record: dict[str, Any], image: np.ndarray, found: dict[str, Tensor], *,
                    drawn: Optional[Path], panels: Optional[Path]) -> None:
    """Draw the boxes to ``drawn`` and each detection's attention to ``panels`` (``None``: not asked
    for), adding the paths written to ``record``."""
    from ..explain.overlay import save_panels, word_panels_figure

    if drawn is not None:
        with output_errors(drawn.parent, flag="--out"):
            draw_detections(image, record["detections"], drawn)
        record["drawn"] = str(drawn)
    if panels is not None:  # asked for: the record says where it went, or null for an image without detections
        fig = None
        if record["detections"]:
            titles = [f"{d['label']} {d['score']:.2f}" for d in record["detections"]]
            maps = found["attention"].numpy()
            fig = word_panels_figure(_resized(image, maps.shape[-2:]), titles, list(maps))
        record["attention"] = save_panels(fig, panels, flag="--attention-out", folder=panels.parent, command=_PANELS)


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image at ``size`` ``(h, w)``."""
    if image.shape[:2] == tuple(size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.LANCZOS))


def detection_records(found: dict[str, Tensor], class_names: Sequence[str],
                      category_ids: Optional[Sequence[Optional[int]]] = None) -> list[dict[str, Any]]:
    """One image's detections as ``detect --json`` and ``predict`` write them: label (its index where the names
    are unknown), index, the training annotations' ``category_id`` where the run recorded them (the label
    index is no COCO id: ids 1..K scored 0.033 against 0.094), score and xyxy box in pixels, at full precision,
    so COCOeval on them gives the mAP visattn reports (boxes rounded to 0.1 px had moved it by 0.002)."""
    records = []
    for box, score, k in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist()):
        record = {"label": class_label(class_names, k), "index": k}
        if category_ids and k < len(category_ids) and category_ids[k] is not None:
            record["category_id"] = category_ids[k]
        records.append({**record, "score": score, "box": box})
    return records


def class_label(names: Sequence[str], index: int) -> str:
    """Class ``index``'s name, or the index itself where the run recorded no names."""
    return names[index] if index < len(names) else str(index)


def _detection_line(record: dict[str, Any], score_threshold: float) -> str:
    found = record["detections"]
    # to 0.1 px: five boxes at full precision made a 500-character line (--json keeps every digit)
    boxes = (", ".join(f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.1f}' for v in d['box'])}]" for d in found)
             if found else f"no objects scoring {score_threshold} or more")
    drawn = f"; drawn: {record['drawn']}" if "drawn" in record else ""
    return one_line(f"{record['file']}: {boxes}{drawn}{attention_note(record, 'detections')}")


_BITMAP_FONT_SIZE = 11  # px, about torchvision's default label font (PIL's default), kept for drawings under 600 px


@lru_cache(maxsize=1)
def _label_font() -> Optional[str]:
    """A TrueType font that scales: matplotlib's DejaVu Sans, which it ships; None where it does not open (a broken
    install), for torchvision's own font, which does not grow, rather than a traceback."""
    from matplotlib import font_manager
    from PIL import ImageFont

    path = font_manager.findfont("DejaVu Sans")
    try:
        ImageFont.truetype(path, _BITMAP_FONT_SIZE)
    except OSError:
        return None
    return path


def draw_detections(image: np.ndarray, detections: Sequence[dict[str, Any]], path: Path) -> None:
    """Write ``image`` (``(H, W, 3)`` uint8) with each detection's box, label and score as a PNG."""
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes

    # ceil: nearest-neighbour enlargement, to a whole factor that keeps the long side within the cap
    scale = max(1, min(-(-_MIN_DRAWN_SIDE // min(image.shape[:2])), _MAX_DRAWN_SIDE // max(image.shape[:2])))
    pixels = torch.tensor(image).permute(2, 0, 1)  # (3, H, W) uint8, a copy: decoded arrays are read-only
    pixels = pixels.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    if detections:
        boxes = torch.tensor([d["box"] for d in detections], dtype=torch.float32) * scale
        labels = [f"{d['label']} {d['score']:.2f}" for d in detections]
        colours = [_BOX_COLOURS[d["index"] % len(_BOX_COLOURS)] for d in detections]
        # Lines and labels grow with the drawing: on an 8000x6000 photo a 1 px box and torchvision's 11 px bitmap
        # font could not be seen at any viewing size.
        side = min(pixels.shape[-2:])  # the shorter: a label as tall as a strip would hide it
        grows = side // 50 > _BITMAP_FONT_SIZE and _label_font() is not None
        font = {"font": _label_font(), "font_size": side // 50} if grows else {}
        width = max(1, scale // 2, side // 300)
        pixels = draw_bounding_boxes(pixels, boxes, labels=labels, colors=colours, width=width, **font)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(tmp, format="PNG", pnginfo=png_mark(_DRAWINGS))
