"""Object detection as a LightningModule (FCOS and DETR-style detectors from the registry). Its mAP metric, and the
scoring of a trained detector (``visattn evaluate``, ``save-weights --dataset``), are
:mod:`visattn.inference.detection_scoring`; loading one for inference, and ``visattn detect``, are
:mod:`visattn.inference.detector`.

Detectors follow torchvision's detection API (see :mod:`visattn.models.detection`): they take
lists of 0..1 images and 0-based labels, return a loss dict in training and per-image
``{"boxes", "scores", "labels"}`` in evaluation, and normalise and resize inside. Scores are
COCO mAP (IoU 0.50:0.95) and mAP@0.5 from torchmetrics' ``MeanAveragePrecision``.
"""
from typing import Any, Optional, Union

import lightning.pytorch as pl
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision

from ..data.detection_samples import Batch
from ..errors import ConfigError
from ..inference import moved_here
from ..inference.detection_scoring import detection_map, map_scores
from ..inference.detector import Detections, is_detection_arch
from ..registry import Strictness, another_packages_note, create_model, split_model_name
from .classification import match_class_order, refuse_linked_kwargs, warn_if_normalised_otherwise
from .guards import (GuardedTask, NonFiniteLossGuard, TrainingLoss, any_process_scored, batch_of_one_is_one_line,
                     refuse_cast_batches, skip_missing_batch, weight_average)


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
        compile: ``torch.compile`` the model (and its EMA copy) when training starts; the
            checkpoint keys stay those of the plain model.
        max_bad_steps: a step whose loss is NaN or infinite is skipped (and logged as
            ``train/skipped_steps``); this many in a row stop the run with a message.
    """

    task = "detection"  # the data modules it takes say the same
    # Given once in the data section of a config and linked here by `visattn fit` (see lightning_cli.py).
    linked_data_attributes = ("num_classes", "class_names", "category_ids", "preprocessing")
    # What its checkpoints record for inference, which a fit without those links warns of.
    inference_records = ("class_names",)

    def __init__(
        self,
        model_name: str = "fcos_cbam_resnet20_cifar",
        *,
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
        compile: bool = False,
        max_bad_steps: int = 5,
    ) -> None:
        super().__init__()
        if not is_detection_arch(model_name):
            raise ConfigError(f"model_name={model_name!r} is not a detector"
                              f"{another_packages_note(model_name, 'FcosDetector or DetrDetector')}; pick one of "
                              "`visattn models 'fcos_*'` or `visattn models 'detr_*'`")
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

    def check_run(self, trainer: pl.Trainer, datamodule: Optional[pl.LightningDataModule], stage: str) -> None:
        # refused up front: the target check would blame the data for boxes Lightning casts to bf16 or float64
        # (torchvision's GIoU loss fails in float64 too)
        refuse_cast_batches(trainer, "a detector's boxes, box losses and matching need float32",
                            precisions=("bf16-true", "16-true", "64-true"))
        check = getattr(self.model, "check_query_count", None)  # DETR's: before training, not when shuffled to
        most = getattr(datamodule, "most_objects", None)
        if stage == "fit" and check is not None and most is not None:
            check(most, source="the training data")

    def forward(self, images: list[Tensor]) -> Detections:
        return self.eval_model(images)

    def forward_arguments(self, images: Tensor) -> Any:
        return (list(images),)  # forward takes one list of images

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


# Their import loaded Lightning: visattn 0.1.0's paths still give them, with a warning.
__getattr__ = moved_here(__name__, {**dict.fromkeys(("class_label", "detect_files", "detection_records",
                                                    "draw_detections", "is_detector", "load_detector", "Detector"),
                                                    "detector"),
                                    **dict.fromkeys(("COCO_IOU_THRESHOLDS", "COCO_RECALL_THRESHOLDS", "detector_scenes",
                                                     "evaluate_detector", "evaluation_loader"), "detection_scoring")})
