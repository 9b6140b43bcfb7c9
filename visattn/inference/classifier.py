"""A trained image classifier: any registered model or timm model by name, loaded from shipped weights or a
training checkpoint with its labels and preprocessing."""
import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from ..data.preprocessing import (CLASSIFIER_PREPROCESSING, default_preprocessing, preprocessing_problem,
                                  timm_data_config)
from ..data.transforms import ImageTransform, check_image_batch, eval_transform_of, to_model_input
from ..devices import model_device
from ..errors import ArgumentError, ConfigError, ImageSizeNotDivisible, NotATrainingCheckpoint, WeightsError, is_count
from ..fetched_weights import hub_cache_only, offline_timm_file, unreachable_hub
from ..layers.patch_embed import check_patch_input
from ..modes import eval_mode
from ..pretrained import checkpoint_follows, load_weights, starting_weights_skipped
from ..recorded_preprocessing import set_pretrained_cfg, timm_pretrained_cfg
from ..registry import Strictness, built_for_one_size, check_timm_name, create_model
from ..weight_names import HUB_PREFIXES
from .checkpoints import (EDITED_CHECKPOINT, checkpoint_model, checkpoint_model_kwargs, inference_model,
                          inference_target, task_checkpoint, task_weights_entry)


# timm.create_model arguments that fetch or name its starting weights.
TIMM_STARTING_WEIGHTS = ("pretrained", "pretrained_cfg_overlay", "pretrained_cfg", "checkpoint_path")


def build_classifier(model_name: str, num_classes: int, model_kwargs: Optional[dict] = None,
                     pretrained: Optional[Union[bool, str]] = None, strict: Strictness = True) -> nn.Module:
    """A registered model, or any timm model when ``model_name`` is ``"timm:NAME"``; ``pretrained`` as
    :func:`visattn.create_model` takes it (None: as the model name says, an ``arch.tag`` loads its
    shipped weights; False: no weights, even for ``arch.tag``; ``True`` for a timm model: timm's own
    weights of NAME, None or False for a timm model: none)."""
    kwargs = dict(model_kwargs or {})
    if model_name.startswith("timm:"):
        check_timm_name(model_name[5:])
        offline = None  # whether the hub can be reached: asked here for weights, else by _create_timm_model
        if starting_weights_skipped():  # the checkpoint loaded next holds every weight: no download, no file
            kwargs = {key: value for key, value in kwargs.items() if key not in TIMM_STARTING_WEIGHTS}
        elif kwargs.get("pretrained") and "pretrained_cfg_overlay" not in kwargs:
            # offline: the cached file, or one line (else timm retries the hub and the error blames model_kwargs)
            cached = offline_timm_file(model_name[5:])
            offline = cached is not None
            if offline:
                kwargs["pretrained_cfg_overlay"] = {"file": str(cached)}
        checkpoint = kwargs.get("checkpoint_path")
        if checkpoint and not Path(checkpoint).is_file():  # timm's FileNotFoundError has no message: a traceback
            raise WeightsError(f"model.init_args.model_kwargs.checkpoint_path {checkpoint}: no such file; give the "
                               "path of a weights file timm can load (.pth, .bin, .safetensors)")
        model = _create_timm_model(model_name[5:], offline=offline, num_classes=num_classes, **kwargs)
        if pretrained:
            load_weights(model, model_name if pretrained is True else pretrained, strict=strict)
        return model
    return create_model(model_name, num_classes=num_classes, pretrained=pretrained, strict=strict, **kwargs)


def _create_timm_model(name: str, *, offline: Optional[bool] = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model``; ``offline``: whether the hub is known to be unreachable (None: a hub name asks, once)."""
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    if offline is None:
        offline = name.startswith(HUB_PREFIXES) and unreachable_hub() is not None
    try:
        with hub_cache_only(offline):  # the config.json timm reads first: cached, or one line at once
            return timm.create_model(name, **kwargs)
    except LocalEntryNotFoundError:  # an hf-hub: name's config.json, which timm reads first, even without weights
        raise WeightsError(f"timm:{name}: timm reads its config.json from the Hugging Face hub, which cannot be "
                           "reached, and the file is not in the Hugging Face cache; run it once where the hub is "
                           "reachable (it caches under $HF_HOME), or name the architecture: timm:ARCH") from None


def sides_that_fit(size: int, patch_size: Sequence[int]) -> tuple[str, str]:
    """What square sides patches of ``patch_size`` take, and the two next below and above ``size`` (above only when
    none is below), as the lines refusing ``size`` say them."""
    step = math.lcm(*patch_size)
    fits = [fit for fit in (size // step * step, (size // step + 1) * step) if fit > 0]
    return f"takes sides that are multiples of its {step}-pixel patches", " or ".join(map(str, fits))


@dataclass
class Classifier:
    """A model ready for inference, with what it needs to read images and name its predictions."""

    model: nn.Module
    class_names: list[str]
    preprocessing: dict[str, Any]
    name: str  # what it was loaded from: arch.tag or the checkpoint path
    arch: str
    model_kwargs: dict[str, Any]

    def transform(self) -> ImageTransform:
        """A new evaluation transform, as the weights record it, taking an ``(H, W, 3)`` uint8 RGB array to the
        model's input: ``classifier.transform()(image)``."""
        return eval_transform_of(self.preprocessing)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def entry_fields(self) -> dict[str, Any]:
        """What its weights entry records beside the weights, so that loading them gives this classifier back:
        :func:`visattn.save_weights` of the classifier records these unless told otherwise."""
        return {"task": "classification", "labels": list(self.class_names), "preprocessing": dict(self.preprocessing)}

    @torch.no_grad()  # not inference_mode: its tensors refuse in-place writes and autograd in the caller's code
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, num_classes)`` on the CPU for normalised images ``(B, C, H, W)`` (C the model's
        channels) on any device."""
        check_image_batch(images, channels=self.preprocessing["input_size"][0])
        check_patch_input(self.model, images.shape[-2:])
        with eval_mode(self.model):  # a model the caller set training would drop out and update batch norms
            logits = self.model(to_model_input(images, self.model))
            # float32 under a caller's autocast too: bf16 probabilities rounded close classes to ties, which
            # evaluate's top-k then broke by index
            return logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1).cpu()


def load_classifier(model: Union[str, os.PathLike, None] = None, checkpoint: Union[str, os.PathLike, None] = None, *,
                    img_size: Union[int, tuple[int, int], None] = None,
                    device: Union[str, torch.device] = "cpu") -> Classifier:
    """Load ``arch.tag`` shipped weights (``arch`` alone: its default weights), a weights file visattn saved
    (``model="DIR/ARCH.TAG.safetensors"``, a path) or a training checkpoint onto ``device`` (see
    :func:`visattn.devices.inference_device`).

    ``img_size`` runs the classifier on ``img_size``-pixel square inputs instead of its training size (a pair of
    equal sides too, as ``create_model`` takes it): a ViT's position embeddings are resampled to the new patch grid,
    and CNNs pool globally anyway. Errors in an argument that a command takes as a flag are
    :class:`~visattn.errors.ArgumentError`.
    """
    target = inference_target(model, checkpoint, device)
    img_size = _square_side(img_size)
    if checkpoint is not None:
        return _classifier_from_checkpoint(Path(checkpoint), img_size, target)
    arch, entry = task_weights_entry(model, "classification")
    with _img_size_named(img_size, f"{arch}.{entry['tag']}"):
        net = inference_model(create_model(arch, pretrained=entry["source"], **_size_kwargs(arch, img_size)), target)
    _require_classes(net.num_classes, f"{arch}.{entry['tag']}")
    labels = recorded_labels(entry.get("labels"), net.num_classes, f"{arch}.{entry['tag']}'s index entry")
    # save_weights(model, path) alone records no preprocessing: the model's default, as for checkpoints.
    recorded = _classifier_preprocessing(
        entry.get("preprocessing"), net, source=f"{entry['index']}: entry '{arch}.{entry['tag']}': ",
        fix="record input_size [C, H, W], mean and std there, or save the weights again with "
            "`visattn save-weights --checkpoint`")
    preprocessing = _with_input_size(recorded, img_size)
    set_pretrained_cfg(net, timm_pretrained_cfg(net, preprocessing))  # at img_size
    return Classifier(net, labels, preprocessing, f"{arch}.{entry['tag']}",
                      arch, dict(entry.get("model_kwargs") or {}))


def _classifier_from_checkpoint(path: Path, img_size: Optional[int], device: torch.device) -> Classifier:
    checkpoint, hparams = task_checkpoint(path, "classification")
    if "model_name" not in hparams or hparams.get("num_classes") is None:
        raise NotATrainingCheckpoint(path, "not a visattn classification checkpoint (no model_name and num_classes)",
                                     "pass --model ARCH.TAG instead")
    # A run fine-tuned from ARCH.TAG is a model of ARCH with the tag's builder arguments (save-weights names its
    # file ARCH.NEWTAG; the tag left in the name would make it ARCH.TAG.NEWTAG, a name refused).
    arch, kwargs = checkpoint_model_kwargs(hparams)
    model_kwargs = {**kwargs, **_size_kwargs(hparams["model_name"], img_size)}
    def build() -> nn.Module:
        # The checkpoint holds every weight: neither the starting weights nor timm's are read again.
        with checkpoint_follows(), _img_size_named(img_size, hparams["model_name"]):
            return build_classifier(arch, hparams["num_classes"], model_kwargs, pretrained=False)

    try:
        net = checkpoint_model(arch, build, checkpoint, path)
    except (ConfigError, WeightsError) as err:
        if img_size is None or "img_size" not in model_kwargs or not hparams["model_name"].startswith("timm:"):
            raise
        raise ArgumentError("img_size", img_size, f"{hparams['model_name']} cannot take {img_size} px images with "
                            f"the weights of {path} ({err}); leave it out") from None
    labels = recorded_labels(hparams.get("class_names"), hparams["num_classes"], str(path))
    recorded = _classifier_preprocessing(hparams.get("preprocessing"), net, source=f"{path}: hyper_parameters.",
                                         fix=EDITED_CHECKPOINT)
    preprocessing = _with_input_size(recorded, img_size)
    if hasattr(net, "visattn_name"):
        set_pretrained_cfg(net, timm_pretrained_cfg(net, preprocessing))
    else:  # a timm model keeps the rest of its own pretrained_cfg (its head's name, its weights' source)
        set_pretrained_cfg(net, {**net.pretrained_cfg, **timm_data_config(preprocessing)})
    return Classifier(inference_model(net, device), labels, preprocessing, str(path), arch, kwargs)


def _classifier_preprocessing(recorded: Optional[dict[str, Any]], net: nn.Module, *, source: str,
                              fix: str) -> dict[str, Any]:
    """The recorded evaluation-transform settings; the model's default (ImageNet's statistics) when none were
    recorded, one line naming ``source`` and ``fix`` when some are missing."""
    if not recorded:
        return default_preprocessing(net)
    problem = preprocessing_problem(recorded, required=CLASSIFIER_PREPROCESSING)
    if problem:
        raise WeightsError(f"{source}{problem}; {fix}")
    return recorded


def _require_classes(num_classes: int, name: str) -> None:
    """Refuse a features-only model, which would predict a softmax over its features as if they were classes."""
    if not num_classes:
        raise WeightsError(f"{name}: weights without a classifier head (num_classes 0) give features, not classes; "
                           f"build them with create_model({name!r}) to use the features, or fine-tune a head")


def recorded_labels(recorded: Optional[Sequence[str]], num_classes: int, source: str) -> list[str]:
    """The recorded label names, one per output; ``"0"``, ``"1"``, ... when none were recorded."""
    if not recorded:
        return [str(i) for i in range(num_classes)]
    if len(recorded) != num_classes:
        raise WeightsError(f"{source}: {len(recorded)} label names for a {num_classes}-class head; "
                           "record one name per class (class_names / labels)")
    return list(recorded)


def _square_side(img_size: object) -> Optional[int]:
    """The side of the square inputs ``img_size`` asks for: a whole number of pixels, or a pair of equal ones."""
    pair = isinstance(img_size, (tuple, list)) and len(img_size) == 2
    if pair and img_size[0] != img_size[1]:
        raise ArgumentError("img_size", img_size, "the classifier runs on square inputs; give one whole number of "
                            "pixels >= 1, their side")
    side = img_size[0] if pair else img_size
    if side is not None and not is_count(side):
        raise ArgumentError("img_size", img_size, "give a whole number of pixels >= 1")
    return side


def _size_kwargs(arch: str, img_size: Optional[int]) -> dict[str, Any]:
    """Builder arguments for another input size, for a model built for one (:func:`built_for_one_size`: a timm
    model's weights are then resampled by timm's filter); CNNs pool globally anyway."""
    return {"img_size": img_size} if img_size is not None and built_for_one_size(arch) else {}


@contextlib.contextmanager
def _img_size_named(img_size: Optional[int], name: str) -> Iterator[None]:
    """A size the model's patches do not divide as one line naming ``img_size`` (a command: its ``--img-size``) and
    the sizes that fit (not the builder's ``patch_size``, which neither the loader nor the command line changes)."""
    try:
        yield
    except ImageSizeNotDivisible as err:
        if img_size is None:
            raise
        sides, fits = sides_that_fit(img_size, err.patch_size)
        raise ArgumentError("img_size", img_size, f"{name} {sides}; give {fits}") from None


def _with_input_size(preprocessing: dict[str, Any], img_size: Optional[int]) -> dict[str, Any]:
    preprocessing = dict(preprocessing)
    if img_size is not None:
        preprocessing["input_size"] = [preprocessing["input_size"][0], img_size, img_size]
    return preprocessing
