"""Reading the training checkpoints `visattn fit` writes, and preparing a loaded model for inference."""
import os
import reprlib
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from ..devices import inference_device
from ..errors import ConfigError, NotATrainingCheckpoint, UnknownModelError, WeightsError
from ..pretrained import built_for_weights, load_weights
from ..registry import built_by_visattn, missing_module_hint, model_arguments, model_task
from ..weight_names import model_source_problem, names_a_weights_file
from ..weights_files import (TRAINING_CHECKPOINTS, CopiedForOneLoad, copied_out_of_the_map, read_pickle_checkpoint,
                             require_regular_file)
from ..weights_index import metadata_problem, model_weights_entry

# A training checkpoint's record of the module of another package that registers its model (what to install).
PACKAGE_MODULE_KEY = "visattn_module"


def inference_model(model: nn.Module, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """``model`` in eval mode on ``device`` with its 4-d weights in channels-last layout.

    oneDNN's CPU convolutions then run on NHWC activations with no reorder around each call: batch-64
    inference on 2 cores of an AMD EPYC was 1.28x faster for SE-ResNet-20, 1.66x for the captioner's
    CBAM encoder and 1.07-1.15x for the scenes detectors (ViTs: unchanged), outputs within 3e-5.
    cuDNN prefers the same layout.
    """
    return model.eval().to(device=device, memory_format=torch.channels_last)


TASK_NOUNS = {"classification": "classifier", "captioning": "captioner", "detection": "detector"}
TASK_COMMANDS = {"classification": "`visattn classify`, `explain` or `export`", "captioning": "`visattn caption`",
                 "detection": "`visattn detect`"}


def require_task(name: str, task: str) -> None:
    """One line naming the commands that do take ``name`` when it is a model for another task."""
    actual = model_task(name)
    if actual != task:
        raise ConfigError(f"{name} is a {TASK_NOUNS[actual]}, not a {TASK_NOUNS[task]}; use {TASK_COMMANDS[actual]} "
                          "(or `visattn evaluate`) with it")


def task_weights_entry(model: Union[str, os.PathLike], task: str) -> tuple[str, dict[str, Any]]:
    """The architecture of the weights ``model`` names (``arch.tag``, ``arch`` alone: its default weights, or a
    weights file visattn saved) and their entry (:func:`~visattn.weights_index.model_weights_entry`); one line when
    they are a model for another task."""
    text = os.fspath(model)
    if names_a_weights_file(text):
        entry = model_weights_entry(text)
        require_task(entry["arch"], task)
    else:
        require_task(text, task)  # before the weights are looked for: a captioner's name, not "no weights"
        entry = model_weights_entry(text)
    return entry["arch"], entry


def task_checkpoint(path: Path, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training checkpoint at ``path`` and its hyperparameters; one line when it holds a model for another task."""
    checkpoint = read_checkpoint(path, lazy=True)  # the optimizer's states are never read
    checkpoint["state_dict"] = CopiedForOneLoad(copied_out_of_the_map(checkpoint["state_dict"]))
    hparams = checkpoint.get("hyper_parameters") or {}
    if isinstance(hparams.get("model_name"), str):
        try:
            require_task(hparams["model_name"], task)
        except UnknownModelError as err:  # the message would not say which file named it
            module = checkpoint.get(PACKAGE_MODULE_KEY)
            hint = missing_module_hint(module, "the checkpoint records") if isinstance(module, str) else None
            problem = f"unknown model {hparams['model_name']!r}: {hint}" if hint else str(err)
            raise WeightsError(f"{path}: hyper_parameters.model_name: {problem}") from None
    return checkpoint, hparams


def inference_target(model: Union[str, os.PathLike, None], checkpoint: Union[str, os.PathLike, None],
                     device: Union[str, torch.device]) -> torch.device:
    """The device to load onto, once exactly one weights source (``model`` or ``checkpoint``) is named; both are
    checked before any weights are read. (A command's parser asks for exactly one of ``--model`` and
    ``--checkpoint`` itself.)"""
    if (model is None) == (checkpoint is None):
        raise ConfigError(f"model={reprlib.repr(model)}, checkpoint={reprlib.repr(checkpoint)}: give exactly one of "
                          "model='ARCH.TAG' (or a weights file visattn saved) and checkpoint='FILE.ckpt' (a training "
                          "checkpoint)")
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise ConfigError(f"model={reprlib.repr(model)}: give a registered name or ARCH.TAG as a string, or the path "
                          "of a weights file visattn saved; pass a training checkpoint file as checkpoint=")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise ConfigError(f"checkpoint={reprlib.repr(checkpoint)}: give the path of a training checkpoint")
    problem = model is not None and model_source_problem(os.fspath(model), model="model", checkpoint="checkpoint=")
    if problem:  # a checkpoint or hub name given first would be split as ARCH.TAG
        raise ConfigError(problem)
    return inference_device(device)


def checkpoint_model_kwargs(hparams: dict[str, Any], **overrides: Any) -> tuple[str, dict[str, Any]]:
    """Architecture and builder arguments of a training checkpoint's model, as ``create_model`` took them in
    training: the ``model_kwargs`` of the weights entry it started from (``arch.tag``, or ``pretrained`` naming this
    architecture's weights by name or a file visattn saved), then the run's own, then ``overrides``. A ``timm:``
    name is its architecture whole (its dot names timm's weights, not a visattn tag)."""
    own = {**dict(hparams.get("model_kwargs") or {}), **overrides}
    if hparams["model_name"].startswith("timm:"):
        return hparams["model_name"], own
    arch, _, kwargs = model_arguments(hparams["model_name"], pretrained=hparams.get("pretrained"), **own)
    kwargs.pop("num_classes", None)  # the run's, which a fine-tune may have changed: the checkpoint records it
    return arch, kwargs


def read_checkpoint(path: Path, *, lazy: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint, read with ``weights_only=True``; ``lazy`` memory-maps its tensors (for a
    look at its hyperparameters or callback states without reading the weights)."""
    require_regular_file(path, missing="checkpoint not found; check the path (Lightning writes them under "
                         "checkpoints/)")
    checkpoint = read_pickle_checkpoint(path, lazy=lazy)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise NotATrainingCheckpoint(path, "not a Lightning checkpoint (no state_dict)",
                                     f"{TRAINING_CHECKPOINTS}: use shipped weights with --model ARCH.TAG, train from a "
                                     "weights file with --model.pretrained FILE, or load one in Python with "
                                     "create_model(ARCH, pretrained=FILE)")
    hparams = checkpoint.get("hyper_parameters")
    if hparams is not None and not isinstance(hparams, dict):
        raise WeightsError(f"{path}: hyper_parameters={reprlib.repr(hparams)}: give the run's arguments as an object; "
                           f"{EDITED_CHECKPOINT}")
    problem = metadata_problem(hparams or {})
    if problem:
        raise WeightsError(f"{path}: hyper_parameters.{problem}; {EDITED_CHECKPOINT}")
    return checkpoint


EDITED_CHECKPOINT = "the file was edited or damaged: use the checkpoint as training wrote it"


def load_checkpoint_weights(net: nn.Module, checkpoint: dict[str, Any], path: Path, *,
                            initialise: Optional[Callable[[], nn.Module]] = None) -> nn.Module:
    """Load a training checkpoint's weights (its EMA copy when the run kept one) into the model its
    hyperparameters built: they fit it whole, so any key that does not is an edited or damaged file. The model, as
    :func:`~visattn.pretrained.load_weights` returns it (``initialise``: its builder, for one on the meta device)."""
    return load_weights(net, checkpoint["state_dict"], new_head=False, origin=path, fix=EDITED_CHECKPOINT,
                        initialise=initialise)


def checkpoint_model(arch: str, build: Callable[[], nn.Module], checkpoint: dict[str, Any], path: Path) -> nn.Module:
    """``build()``'s model of ``arch`` with a training checkpoint's weights, built on the meta device where visattn
    builds ``arch`` (:func:`~visattn.pretrained.built_for_weights`): not initialised for weights replacing it all."""
    net, initialise = built_for_weights(build, on_meta=built_by_visattn(arch))
    return load_checkpoint_weights(net, checkpoint, path, initialise=initialise)
