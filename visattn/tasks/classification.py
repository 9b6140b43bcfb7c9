"""Image classification as a LightningModule: any registered model (or ``timm:NAME``) by name. The scoring of a
trained classifier (`visattn evaluate`) is :mod:`visattn.inference.classifier_scoring`; loading one for inference is
:mod:`visattn.inference.classifier`."""
import contextlib
import math
import unicodedata
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from ..errors import ConfigError, VisattnWarning, is_number, one_line, outside_visattn
from ..inference import moved_here
from ..inference.classifier import build_classifier, sides_that_fit
from ..layers.attention import SelfAttention
from ..layers.patch_embed import fixed_input_size, whole_patches
from ..modes import eval_mode
from ..pretrained import refuse_an_untrained_head, starting_weights_skipped
from ..recorded_preprocessing import weights_preprocessing
from ..registry import Strictness, model_arguments
from ..state_dict_fit import classifier_names
from ..weights_index import named_weights_entry, training_checkpoint_settings
from .guards import (Float32Mean, GuardedTask, NonFiniteLossGuard, TrainingLoss, any_process_scored,
                     batch_of_one_is_one_line, skip_missing_batch, weight_average)


def refuse_linked_kwargs(model_kwargs: Optional[dict], **linked: str) -> None:
    """One line for a ``model_kwargs`` key the task sets itself from the data (``num_classes``, a captioner's
    ``vocab_size``): the builder got it twice ("multiple values for keyword argument")."""
    for key, source in linked.items():
        if key in (model_kwargs or {}):
            raise ConfigError(f"model.init_args.model_kwargs.{key}: {source} sets it, from the data; drop it from "
                              "model_kwargs")


def _starting_weights(model_name: str, model_kwargs: Optional[dict],
                      pretrained: Optional[Union[bool, str]]) -> Optional[Union[bool, str]]:
    """The weights a model starts from, as ``pretrained`` names them: a timm model built with ``pretrained``
    in its ``model_kwargs`` starts from timm's own weights of NAME (``True``), unless ``pretrained`` names
    others, which :func:`build_classifier` loads over them."""
    # timm.create_model loads them for any true value, also beside the task's pretrained: false
    if model_name.startswith("timm:") and not pretrained and (model_kwargs or {}).get("pretrained"):
        return True
    return pretrained


def _warn_if_normalised_otherwise(model: nn.Module, model_name: str, pretrained: Optional[Union[bool, str]],
                                  preprocessing: Optional[dict[str, Any]]) -> None:
    """Warn when the data normalises images otherwise than the starting weights recorded they were trained (or,
    recording none, as every weights of their architecture were): fine-tuning Fashion-MNIST weights with an image
    folder's ImageNet defaults would otherwise go unnoticed."""
    if not preprocessing or starting_weights_skipped():
        return
    if model_name.startswith("timm:"):  # pretrained=True: timm's own weights of NAME, as build_classifier loads
        recorded = weights_preprocessing(None, model_name if pretrained is True else pretrained) or {}
    else:  # as create_model found them
        recorded = model.visattn_recorded_preprocessing or {}
    warn_if_normalised_otherwise(recorded, preprocessing)
    warn_if_cropped_otherwise(recorded, preprocessing)


def warn_if_cropped_otherwise(recorded: Optional[dict[str, Any]], given: dict[str, Any]) -> None:
    """Warn when photos are centre-cropped or resized otherwise (``crop_pct``, ``interpolation``) than the starting
    weights ``recorded`` they were evaluated: an image folder's defaults (0.875, bilinear) under timm's augreg ViTs
    (0.9, bicubic)."""
    if starting_weights_skipped():  # a checkpoint's weights replace them
        return
    recorded = recorded or {}
    photos = recorded.get("recipe", "photo") == given.get("recipe", "photo") == "photo"  # others crop nothing
    differs = _differing(recorded, given, ("crop_pct", "interpolation")) if photos else []
    if differs:
        warnings.warn(f"the data evaluates with {_listed(given, differs)} but the starting weights were "
                      f"evaluated with {_listed(recorded, differs)}; set data.init_args.{' and '.join(differs)} to the "
                      "weights' values, unless that is meant", VisattnWarning, stacklevel=outside_visattn())


def warn_if_normalised_otherwise(recorded: Optional[dict[str, Any]], given: dict[str, Any], *,
                                 normaliser: str = "the data", weights: str = "the starting weights",
                                 setting: str = "data.init_args.mean and std") -> None:
    """Warn when ``given``'s mean and std differ from those the starting weights ``recorded`` they were trained
    with (``None``: no weights, or none recorded); not while a checkpoint's weights follow."""
    differs = [] if starting_weights_skipped() else _differing(recorded or {}, given, ("mean", "std"))
    if differs:
        warnings.warn(f"{normaliser} normalises with {_listed(given, differs)} but {weights} were trained with "
                      f"{_listed(recorded, differs)}; set {setting} to the weights' values, unless that is meant",
                      VisattnWarning, stacklevel=outside_visattn())


def _differing(recorded: dict[str, Any], given: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """The ``keys`` both record, with other values (numbers compared to float rounding)."""
    return [key for key in keys if key in recorded and key in given and not _same(recorded[key], given[key])]


def _same(a: Any, b: Any) -> bool:
    return a == b if isinstance(a, str) or isinstance(b, str) else bool(np.allclose(a, b))


def _listed(preprocessing: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{key} {list(value) if isinstance(value, (list, tuple)) else value}"
                     for key, value in ((key, preprocessing[key]) for key in keys))


def match_class_order(model: nn.Module, model_name: str, pretrained: Optional[Union[bool, str]],
                      class_names: Optional[Sequence[str]]) -> None:
    """Put the class head's rows in the data's label order when the starting weights' recorded labels are the
    same names in another order, or start it afresh (with a warning) for other names: a head of the right size
    was kept by position, each row scoring another class. A head of another size was dropped already.
    Detectors permute and reset their own heads (``reorder_classes``, ``reset_class_head``); a classifier's is
    the last ``nn.Linear`` of its ``classifier``."""
    if not class_names or starting_weights_skipped():
        return
    # compared in composed form: a macOS folder's labels were recorded decomposed before class names were kept NFC
    recorded = [unicodedata.normalize("NFC", label) for label in starting_weights_labels(model_name, pretrained) or []]
    as_folders = {label.replace("/", "_"): label for label in recorded}  # an image folder's name for a label
    named = [as_folders.get(name, name) if name not in recorded else name for name in class_names]
    unnamed = [str(i) for i in range(len(class_names))]  # unnamed: labels go by position
    if len(recorded) != len(named) or recorded == named or unnamed in (recorded, named):
        return
    reorder, reset = _class_head_edits(model)
    if reorder is None:
        return
    with torch.no_grad():
        if sorted(recorded) == sorted(named):
            reorder([recorded.index(name) for name in named])
            return
        reset()
    unknown = [name for name in named if name not in recorded]
    problem = (f"the data's class names {_first_names(unknown)} are not among the starting weights' labels "
               f"({_first_names(recorded)})")
    refuse_an_untrained_head(problem)
    head = ", ".join(classifier_names(model))
    warnings.warn(f"{problem}: classifier {head!r} is randomly initialised, so fine-tune it", VisattnWarning,
                  stacklevel=outside_visattn())


def _class_head_edits(model: nn.Module) -> tuple[Optional[Callable[[list[int]], None]], Optional[Callable[[], None]]]:
    """``(reorder(rows), reset())`` of ``model``'s class head; ``(None, None)`` without one."""
    if hasattr(model, "reorder_classes"):
        return model.reorder_classes, model.reset_class_head
    heads = _head_linears(model)
    if not heads:
        return None, None

    def reorder(rows: list[int]) -> None:
        for head in heads:
            head.weight.copy_(head.weight[rows])
            if head.bias is not None:
                head.bias.copy_(head.bias[rows])

    def reset() -> None:
        for head in heads:
            head.reset_parameters()
    return reorder, reset


def _first_names(names: Sequence[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def starting_weights_labels(model_name: str, pretrained: Optional[Union[bool, str]]) -> Optional[list[str]]:
    """The labels recorded with the weights a model starts from: shipped weights (``arch.tag``, ``pretrained=True``
    or another ``"ARCH.TAG"``), or a training checkpoint's ``class_names`` (a new run from an earlier one's weights);
    None for none, a weights file that records none, or timm's or the hub's weights."""
    settings = training_checkpoint_settings(pretrained)
    if settings is not None:
        return settings.get("class_names")
    if model_name.startswith("timm:"):
        return None
    entry = named_weights_entry(pretrained) or model_arguments(model_name, pretrained=pretrained)[1]
    return (entry or {}).get("labels")


def _head_linears(model: nn.Module) -> list[nn.Linear]:
    """The last ``nn.Linear`` of each of the model's classifier heads (:func:`classifier_names`: a distilled DeiT
    has two), which :func:`load_weights` drops when their size differs."""
    linears = [[m for m in model.get_submodule(name).modules() if isinstance(m, nn.Linear)]
               for name in classifier_names(model)]
    return [found[-1] for found in linears if found]


def check_data_size(model: nn.Module, model_name: str, preprocessing: Optional[dict[str, Any]]) -> None:
    """Refuse data of another size than a ViT's position embeddings are laid out for, naming both config keys,
    before a run starts: the patch embedding would refuse the first batch, after the trainer has set up."""
    size = fixed_input_size(model)
    if preprocessing and size is None and getattr(model, "dynamic_img_size", False):  # timm's still records fixed
        _check_whole_patches(model, model_name, preprocessing["input_size"])
    elif preprocessing and size is None and (getattr(model, "pretrained_cfg", None) or {}).get("fixed_input_size"):
        _check_runs_at(model, model_name, preprocessing["input_size"])  # timm's LeViT: sized attention biases
    if not preprocessing or size is None or tuple(preprocessing["input_size"][1:]) == size:
        return
    data_size = preprocessing["input_size"][-1]
    raise ConfigError(f"data.init_args.img_size={data_size} but {model_name} takes {size[0]}x{size[1]} images; set "
                      f"model.init_args.model_kwargs.img_size: {data_size} (pretrained position embeddings are "
                      f"resampled), or data.init_args.img_size: {size[0]}")


def _check_whole_patches(model: nn.Module, model_name: str, input_size: Sequence[int]) -> None:
    """A ViT of any size takes sides that are multiples of its patch: another would fail in the first step, after
    the trainer has set up, naming no config key. (timm's ``dynamic_img_pad`` pads any size.)"""
    embed = model.patch_embed
    if getattr(embed, "dynamic_img_pad", False) or whole_patches(input_size[1:], embed.patch_size):
        return
    data_size = input_size[-1]
    sides, fits = sides_that_fit(data_size, embed.patch_size)
    raise ConfigError(f"data.init_args.img_size={data_size} but {model_name} {sides}; set data.init_args.img_size to "
                      f"{fits}")


def _check_runs_at(model: nn.Module, model_name: str, input_size: Sequence[int]) -> None:
    """One line unless ``model``, which records a fixed input size but has no patch grid to read it from, runs on
    one image of ``input_size`` ``[C, H, W]``: else it fails in the first step, after the trainer has set up."""
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, *input_size))
    except (RuntimeError, AssertionError, ValueError) as err:
        data_size = input_size[-1]
        raise ConfigError(f"data.init_args.img_size={data_size} but {model_name} cannot take {data_size}x{data_size} "
                          f"images ({one_line(str(err))}); set model.init_args.model_kwargs.img_size: {data_size}, or "
                          "data.init_args.img_size to the size it was built for") from None


# `sdpa_backend` names -> the kernel F.scaled_dot_product_attention is restricted to.
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def sample_mean_loss() -> MeanMetric:
    """A loss averaged over the samples of a split, summed across DDP processes before dividing: a logged
    tensor's mean divides by Lightning's integer count averaged over processes (100 for shares of 101
    and 100)."""
    # A NaN loss reads NaN, as it would in one process: NaN "replaced" by NaN. (torchmetrics 1.9's "disable" drops
    # the weights, giving the mean of batch means: 2.3469 against the samples' 2.3413 on a 7-sample split.)
    return Float32Mean(nan_strategy=float("nan"))


def accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 and top-5 accuracy (top-k capped at ``num_classes``)."""
    return MetricCollection(
        {
            "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        },
        prefix=prefix,
    )


class ImageClassifier(GuardedTask, pl.LightningModule):
    """Train and evaluate an image classifier.

    Args:
        model_name: a registered architecture (``visattn models``), ``arch.tag`` for shipped
            weights, or ``timm:NAME``.
        num_classes: classes; linked from the datamodule in the configs.
        model_kwargs: extra builder arguments (``img_size``, ``drop_path_rate``, ...).
        pretrained: None (the default): as the model name says, an ``arch.tag`` starts from its
            shipped weights and a bare architecture from random init; False: no weights, even for
            ``arch.tag`` (its architecture with random init); ``True``, a weights file, ``timm:NAME``
            or ``hf-hub:ORG/REPO`` to start from.
        strict: see :func:`visattn.create_model`.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay, not applied to biases, norms, position embeddings and tokens.
        warmup_epochs: linear warm-up length, then cosine decay to zero over the run.
        label_smoothing: the training loss's label smoothing (``val/loss`` and ``test/loss`` are unsmoothed).
        mixup_alpha: MixUp Beta(α, α); 0 disables it.
        cutmix_alpha: CutMix Beta(α, α); 0 disables it. With both, each batch picks one.
        layer_decay: layer-wise learning-rate decay for fine-tuning (BEiT's; timm's ``--layer-decay``, e.g.
            0.75): each layer of the model's ``group_matcher`` learns at this fraction of the layer above's
            rate, the head at ``lr``; None: every layer at ``lr``.
        freeze_backbone: train the classifier head(s) alone (linear probing, as DINO, CLIP and MAE evaluate
            pretrained features, or a fine-tune's cheap first stage): every other parameter keeps its starting
            value and stays out of the optimizer, and every module outside the head runs in eval mode (batch-norm
            statistics fixed, no dropout or drop path: the head learns from the features inference computes).
        ema_decay: keep an exponential moving average of the weights (e.g. 0.999) and evaluate
            with it; None disables it.
        class_names: label names, linked from the datamodule; saved in checkpoints for inference.
        preprocessing: ``input_size``, ``mean``, ``std`` and ``recipe`` of the evaluation
            transform, linked from the datamodule; saved in checkpoints for inference.
        compile: ``torch.compile`` the model (and its EMA copy) when training starts; the
            checkpoint keys stay those of the plain model.
        sdpa_backend: restrict ``F.scaled_dot_product_attention`` in every step to one kernel:
            ``"flash"``, ``"efficient"``, ``"math"`` or ``"cudnn"`` (flash and math also run on
            CPU; flash on CUDA needs 16-bit precision); None lets PyTorch choose.
        grad_checkpointing: recompute each block's activations in the backward pass instead of
            keeping them (the model's ``set_grad_checkpointing``: ViTs, ResNets, and timm models
            that have it): less memory for about a third more compute a step, the same gradients.
        max_bad_steps: a step whose loss is NaN or infinite is skipped (and logged as
            ``train/skipped_steps``); this many in a row stop the run with a message.

    bf16 autocast is Lightning's: set ``trainer.precision: bf16-mixed`` in the config.
    """

    task = "classification"  # the data modules it takes say the same
    # Given once in the data section of a config and linked here by `visattn fit` (see lightning_cli.py).
    linked_data_attributes = ("num_classes", "class_names", "preprocessing")
    # What its checkpoints record for inference, which a fit without those links warns of.
    inference_records = ("class_names", "preprocessing")

    def __init__(
        self,
        model_name: str = "cbam_resnet20_cifar",
        *,
        num_classes: int = 10,
        model_kwargs: Optional[dict[str, Any]] = None,
        pretrained: Optional[Union[bool, str]] = None,
        strict: Strictness = True,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        layer_decay: Optional[float] = None,
        freeze_backbone: bool = False,
        ema_decay: Optional[float] = None,
        class_names: Optional[list[str]] = None,
        preprocessing: Optional[dict[str, Any]] = None,
        compile: bool = False,
        sdpa_backend: Optional[str] = None,
        grad_checkpointing: bool = False,
        max_bad_steps: int = 5,
    ) -> None:
        super().__init__()
        if sdpa_backend is not None and sdpa_backend not in SDPA_BACKENDS:
            raise ConfigError(f"model.init_args.sdpa_backend={sdpa_backend!r}: use one of {', '.join(SDPA_BACKENDS)}, "
                              "or null for automatic")
        if layer_decay is not None and not (is_number(layer_decay) and 0 < layer_decay <= 1):
            raise ConfigError(f"model.init_args.layer_decay={layer_decay!r}: give each layer's learning rate as a "
                              "fraction of the next one's, above 0 and at most 1 (e.g. 0.75), or null for none")
        if freeze_backbone:
            _refuse_settings_a_frozen_backbone_voids(layer_decay=layer_decay, grad_checkpointing=grad_checkpointing)
        self.save_hyperparameters()
        refuse_linked_kwargs(model_kwargs, num_classes="model.init_args.num_classes")
        self.model = build_classifier(model_name, num_classes, model_kwargs, pretrained, strict)
        check_data_size(self.model, model_name, preprocessing)
        starting = _starting_weights(model_name, model_kwargs, pretrained)
        match_class_order(self.model, model_name, starting, class_names)
        _warn_if_normalised_otherwise(self.model, model_name, starting, preprocessing)
        if sdpa_backend is not None and not _calls_sdpa(self.model):  # e.g. an attention ResNet
            warnings.warn(f"model.init_args.sdpa_backend {sdpa_backend}: {model_name} has no scaled-dot-product "
                          "attention for it to pick a kernel for, so it changes nothing; drop it", VisattnWarning)
        if grad_checkpointing:
            enable_grad_checkpointing(self.model, model_name)
        if freeze_backbone:  # before the average copies the model, and the optimizer groups what trains
            freeze_all_but_the_head(self.model, model_name)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.batch_mix = self._batch_mix(num_classes, mixup_alpha, cutmix_alpha)
        self.ema = weight_average(self.model, ema_decay)
        self.val_metrics = accuracy_metrics(num_classes, "val/")
        self.test_metrics = accuracy_metrics(num_classes, "test/")
        self.val_loss, self.test_loss = sample_mean_loss(), sample_mean_loss()
        self.loss_guard = NonFiniteLossGuard(max_bad_steps)
        self.train_loss = TrainingLoss()

    @staticmethod
    def _batch_mix(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> Optional[v2.Transform]:
        for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if not (math.isfinite(alpha) and alpha >= 0):  # below 0, the mix would be silently off
                raise ConfigError(f"model.init_args.{name}={alpha}: give the Beta distribution's alpha above 0, "
                                  "or 0 for none")
        mixes = ([v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []) + (
            [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else [])
        return v2.RandomChoice(mixes) if mixes else None

    def train(self, mode: bool = True) -> "ImageClassifier":
        super().train(mode)
        if self.hparams.get("freeze_backbone"):
            # the average too: it copied the frozen model's modes, and Lightning counts its modules in eval mode
            for model in (self.model, self.ema.module) if self.ema is not None else (self.model,):
                keep_the_backbone_in_eval(model)
        return self

    def check_run(self, trainer: pl.Trainer, datamodule: Optional[pl.LightningDataModule], stage: str) -> None:
        # The device the run is on: the model itself moves there only after setup.
        check_sdpa_backend(self.hparams.sdpa_backend, trainer.strategy.root_device, str(trainer.precision))
        if stage == "fit" and self.ema is not None and str(trainer.precision) in ("bf16-true", "16-true"):
            raise ConfigError(f"model.init_args.ema_decay with trainer.precision {trainer.precision}: the average "
                              "would be kept in 16 bits, which cannot take its small steps (it stayed near the "
                              "starting weights); use trainer.precision bf16-mixed, whose weights are float32")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit":
            refuse_another_frozen_backbone(self, checkpoint)
        super().on_load_checkpoint(checkpoint)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        # Under the steps' sdpa_backend too: gradient checkpointing recomputes the attention here, and another
        # kernel than the forward's fails torch's recomputation check.
        with self.attention_kernel():
            super().backward(loss, *args, **kwargs)

    def attention_kernel(self) -> contextlib.AbstractContextManager:
        """The ``sdpa_backend`` context the steps run in (a no-op when it is None)."""
        backend = self.hparams.sdpa_backend
        return sdpa_kernel(SDPA_BACKENDS[backend]) if backend else contextlib.nullcontext()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.attention_kernel():
            return self.eval_model(x)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # On the host, before the batch moves: a label past the head was "Target 12 is out of bounds" mid-epoch
        # (on a GPU a device-side assert, which ends the process's CUDA use) and torchmetrics' "Class values must
        # be smaller than num_classes" in validation.
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and self.trainer.state.fn != "predict":
            refuse_labels_past_the_head(batch[1], self.hparams.num_classes)
        return batch

    @batch_of_one_is_one_line
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Optional[torch.Tensor]:
        images, targets = batch
        if self.batch_mix is not None:
            images, targets = self.batch_mix(images, targets)  # targets become (B, num_classes) soft labels
        self.loss_guard.watch(self.model)
        with self.attention_kernel():
            logits = self.model(images)
        loss = self.criterion(logits.float(), targets)  # bf16-true's bf16 logits give a loss of 3 digits
        self.train_loss.log(self, loss, batch_size=len(images))
        return self.loss_guard.check(self, loss)

    @skip_missing_batch
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation(self.val_metrics, self.val_loss, "val/loss")

    @skip_missing_batch
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_loss)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation(self.test_metrics, self.test_loss, "test/loss")

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection, loss: MeanMetric) -> None:
        images, targets = batch
        logits = self(images).float()  # bf16-true's bf16 logits: a val/loss of 3 significant digits (0.640625)
        metrics.update(logits, targets)
        # the labels' plain cross-entropy, as timm validates: the training loss's smoothing would give val/loss a
        # floor above 0 (1.14 where timm reads 0.56 on the same logits)
        loss.update(F.cross_entropy(logits, targets), weight=len(targets))

    def _log_evaluation(self, metrics: MetricCollection, loss: MeanMetric, loss_name: str) -> None:
        if any_process_scored(self, loss):  # Lightning computes, syncs and resets what is logged here
            self.log(loss_name, loss)
            self.log_dict(metrics, prog_bar=True)

    @skip_missing_batch
    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        # in float32 under bf16 autocast (the configs' precision): a bf16 softmax ties top-5 probabilities
        return self(images).float().softmax(dim=-1)


def refuse_labels_past_the_head(labels: Any, num_classes: int) -> None:
    """One line for a batch's class index outside ``0 .. num_classes - 1``: the task was built for fewer classes
    than the data has (``num_classes``, which `visattn fit` links from the data module). Class indices on the host
    only (soft labels, and tensors already on a GPU, which this would wait for, are let through)."""
    indices = isinstance(labels, torch.Tensor) and labels.device.type == "cpu" and not labels.is_floating_point()
    outside = labels[(labels < 0) | (labels >= num_classes)] if indices else ()
    if len(outside):
        raise ConfigError(f"a batch holds class {outside[0].item()}, and the task was built with num_classes="
                          f"{num_classes} (classes 0 to {num_classes - 1}); build it with the data's number of classes "
                          "(num_classes=data.num_classes for a visattn data module)")


def freeze_all_but_the_head(model: nn.Module, model_name: str) -> None:
    """Train ``model``'s classifier heads alone (:func:`classifier_names`: a distilled DeiT has two): every other
    parameter gets no gradient, so the optimizer's groups leave it out, and :func:`keep_the_backbone_in_eval`. One
    line for a model that names no head with parameters."""
    heads = classifier_names(model)
    if not heads or not all(_has_parameters(model, name) for name in heads):
        raise ConfigError(f"model.init_args.freeze_backbone: {model_name} names no classifier head to train alone "
                          "(a visattn model's classifier attribute, a timm model's pretrained_cfg['classifier']); set "
                          "freeze_backbone false, or give a model that names its head")
    model.requires_grad_(False)
    for name in heads:
        model.get_submodule(name).requires_grad_(True)
    keep_the_backbone_in_eval(model)


def keep_the_backbone_in_eval(model: nn.Module) -> None:
    """Eval mode for every module of ``model`` outside its classifier heads but those holding one (the model itself):
    frozen batch norms keep their statistics (in train mode each batch moved them), and the frozen features are
    those inference computes, without dropout or drop path, as in the linear probes of MAE and DINO."""
    heads = classifier_names(model)
    for name, module in model.named_modules():
        if not any(_inside_or_holding(name, head) for head in heads):
            module.train(False)


def _inside_or_holding(name: str, head: str) -> bool:
    return not name or name == head or name.startswith(f"{head}.") or head.startswith(f"{name}.")


def _has_parameters(model: nn.Module, name: str) -> bool:
    try:
        return next(model.get_submodule(name).parameters(), None) is not None
    except AttributeError:  # a pretrained_cfg naming a module the model does not have
        return False


def _refuse_settings_a_frozen_backbone_voids(*, layer_decay: Optional[float], grad_checkpointing: bool) -> None:
    """One line for a setting that would change nothing with only the head training."""
    if layer_decay is not None:
        raise ConfigError(f"model.init_args.layer_decay={layer_decay} with freeze_backbone: only the head trains, so "
                          "there are no lower layers to slow down; drop layer_decay, or set freeze_backbone false")
    if grad_checkpointing:
        raise ConfigError("model.init_args.grad_checkpointing with freeze_backbone: a frozen backbone keeps no "
                          "activations for the backward pass, so there is nothing to recompute; drop "
                          "grad_checkpointing, or set freeze_backbone false")


def refuse_another_frozen_backbone(task: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
    """One line when a resumed fit's ``freeze_backbone`` is not its checkpoint's: the optimizer state it restores holds
    the head alone, or every layer (checkpoints from before the setting trained every layer)."""
    saved = bool((checkpoint.get("hyper_parameters") or {}).get("freeze_backbone", False))
    if saved != bool(task.hparams.get("freeze_backbone")):
        path = task.trainer.ckpt_path
        raise ConfigError(f"--ckpt_path {path}: its run trained {'the head alone' if saved else 'every layer'} "
                          f"(freeze_backbone {str(saved).lower()}); resume with model.init_args.freeze_backbone "
                          f"{str(saved).lower()}, or start a new run from its weights with --model.init_args.pretrained "
                          f"{path}")


def enable_grad_checkpointing(model: nn.Module, model_name: str) -> None:
    """``model.set_grad_checkpointing(True)``; one line naming ``model_name`` for a model without it."""
    try:
        model.set_grad_checkpointing(True)
    except (AttributeError, AssertionError, NotImplementedError):  # timm's models without it assert
        raise ConfigError(f"model.init_args.grad_checkpointing: {model_name} cannot recompute its activations; "
                          "visattn's ViTs and ResNets and most timm models can; set it to false") from None


def _calls_sdpa(model: nn.Module) -> bool:
    """Whether one of ``model``'s layers calls ``F.scaled_dot_product_attention``: visattn's self-attention, or
    timm's attention layers (which carry ``fused_attn``)."""
    return any(isinstance(module, SelfAttention) or hasattr(module, "fused_attn") for module in model.modules())


def check_sdpa_backend(backend: Optional[str], device: torch.device, precision: str) -> None:
    """CUDA's flash kernel takes fp16 and bf16 only: in float32 every attention call would fail with
    "No available kernel" (the CPU's flash kernel takes float32, so CPU runs do not tell). The CPU has
    only the flash and math kernels: the others fail at the sanity check's first attention."""
    if backend in ("efficient", "cudnn") and device.type == "cpu":
        raise ConfigError(f"model.init_args.sdpa_backend {backend}: the CPU has no {backend} attention kernel; use "
                          "math or flash there, or null to let PyTorch choose")
    if backend == "flash" and device.type == "cuda" and not precision.startswith(("16", "bf16")):
        raise ConfigError(f"model.init_args.sdpa_backend flash: CUDA's flash kernel needs 16-bit inputs, and "
                          f"trainer.precision is {precision}; use --trainer.precision bf16-mixed, or sdpa_backend "
                          "efficient")


# Their import loaded Lightning: visattn 0.1.0's paths still give them, with a warning.
__getattr__ = moved_here(__name__, {
    **dict.fromkeys(("Classifier", "load_classifier", "recorded_labels", "TIMM_STARTING_WEIGHTS"), "classifier"),
    **dict.fromkeys(("check_fashion_mnist_labels", "class_accuracies", "evaluate_classifier", "evaluation_dataset",
                     "imagefolder_root"), "classifier_scoring"),
    **dict.fromkeys(("EDITED_CHECKPOINT", "TASK_COMMANDS", "TASK_NOUNS", "checkpoint_model_kwargs", "inference_model",
                     "inference_target", "load_checkpoint_weights", "read_checkpoint", "require_task",
                     "task_checkpoint"), "checkpoints"),
    **dict.fromkeys(("adamw_warmup_cosine", "warmup_cosine", "warn_of_a_changed_schedule", "weight_decay_groups"),
                    "visattn.tasks.optimization"),
    "split_folders": "visattn.data.image_folder",
})
