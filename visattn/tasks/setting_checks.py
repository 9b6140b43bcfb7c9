"""Checks of a config's model, data and trainer settings that Lightning leaves to a traceback deep in
training, or to a run that silently trains nothing: on the parsed config before its classes are built, and on the
built model, data module and trainer.
"""
import difflib
import inspect
import warnings
from typing import Any, Optional

import torch

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.strategies import StrategyRegistry

from ..errors import ConfigError, VisattnWarning
from ..registry import model_arguments, split_model_name
from ..weight_names import FETCHED_PREFIXES
from .config_files import _imported
from .guards import GuardedTask
from .optimization import check_optimizer_settings


def _check_model_name(model: Any, ckpt_path: Optional[str]) -> None:
    """A visattn task's unknown ``model_name`` with its nearest names, before the checks of the folders the run
    writes, so that an earlier run's checkpoints there do not hide the misspelt name until they are dealt
    with. Not with ``--ckpt_path``, whose file's hyperparameters replace the config's model; nor for a module of
    one's own, whose ``model_name`` may be anything."""
    task = _imported(getattr(model, "class_path", None))
    name = (getattr(model, "init_args", None) or {}).get("model_name")
    if ckpt_path is not None or not (isinstance(task, type) and issubclass(task, GuardedTask)):
        return
    if isinstance(name, str) and not name.startswith(FETCHED_PREFIXES):  # timm's are checked as it builds
        model_arguments(name)  # an unknown ARCH or TAG: UnknownModelError with the nearest names


def _warn_of_random_timm_weights(model: Any) -> None:
    """One line when a ``timm:NAME`` model starts from random weights because ``pretrained`` was left null, which
    loads an ``ARCH.TAG``'s weights but none of timm's (a fine-tune would otherwise silently start from scratch)."""
    init_args = getattr(model, "init_args", None) or {}
    name, kwargs = init_args.get("model_name"), init_args.get("model_kwargs") or {}
    if (isinstance(name, str) and name.startswith("timm:") and init_args.get("pretrained") is None
            and not (kwargs.get("pretrained") or kwargs.get("checkpoint_path"))):  # what loads timm's weights
        warnings.warn(f"model.init_args.model_name {name} starts from random weights: pretrained null loads none "
                      f"of timm's; give model.init_args.pretrained true for timm's weights of {name[5:]} (from the "
                      "hub or its cache) or a weights FILE, or pretrained false to say that random is meant",
                      VisattnWarning)


def _check_settings(model: Any, trainer: Any) -> None:
    """Values that would fail with a traceback deep inside training (Lightning checks neither)."""
    init_args = getattr(model, "init_args", None) or {}
    check_optimizer_settings(init_args)
    name, pretrained = init_args.get("model_name"), init_args.get("pretrained")
    arch, tag = split_model_name(name) if isinstance(name, str) else (None, None)
    if pretrained is False and tag is not None:
        warnings.warn(f"model.init_args.pretrained false with model_name {name}: {arch} starts from random weights; "
                      f"leave pretrained out (or null) to start from {name}'s", VisattnWarning)
    if tag is not None and isinstance(pretrained, str) and pretrained != name:  # create_model's refusal speaks Python
        raise ConfigError(f"model.init_args.model_name {name} names shipped weights and model.init_args.pretrained "
                          f"{pretrained} other weights; give model_name {arch} to start from {pretrained}, or leave "
                          f"pretrained out (or null) to start from {name}'s")
    smoothing = init_args.get("label_smoothing")
    if isinstance(smoothing, (int, float)) and not 0 <= smoothing <= 1:
        raise ConfigError(f"model.init_args.label_smoothing {smoothing}: give a share of the target between 0 and 1, "
                          "e.g. 0.1")
    accumulate = trainer.get("accumulate_grad_batches")
    if isinstance(accumulate, int) and accumulate < 1:  # a division by zero when the schedule is sized
        raise ConfigError(f"trainer.accumulate_grad_batches {accumulate}: give 1 (no accumulation) or more")
    if trainer.get("max_time") is not None:
        _check_max_time(trainer["max_time"])
    if isinstance(trainer.get("strategy"), str):
        _check_strategy_name(trainer["strategy"])


def _check_strategy_name(strategy: str) -> None:
    """A strategy name Lightning knows: its own refusal is a paragraph, raised where it reads as the model's or
    the data's error."""
    names = ["auto", *StrategyRegistry.available_strategies()]
    if strategy.lower() not in names:
        close = difflib.get_close_matches(strategy.lower(), names, n=1)
        meant = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"trainer.strategy {strategy}: no strategy of that name; {meant}give auto, ddp, ddp_spawn, "
                          "fsdp, deepspeed or another name in Lightning's StrategyRegistry")


def _check_max_time(max_time: Any) -> None:
    """A duration Lightning's Timer reads, of more than zero: the Timer's own message names the Timer, not the
    setting, and a run of zero time or less trains nothing and exits 0."""
    try:
        seconds = Timer(duration=max_time).time_remaining()
    except (MisconfigurationException, TypeError, ValueError, OverflowError):
        seconds = None
    if seconds is None or seconds <= 0:
        raise ConfigError(f"trainer.max_time {max_time}: give how long to train as DD:HH:MM:SS (00:12:00:00 is 12 "
                          "hours) or as days, hours, minutes and seconds ({hours: 12}), more than 0")


def _check_training(model: Any, trainer: Any) -> None:
    """A fit that would crash, or silently train nothing (exit 0, no checkpoint, weights unchanged)."""
    every = trainer.get("check_val_every_n_epoch")
    if isinstance(every, int) and every < 1:  # Lightning divides by it
        raise ConfigError(f"trainer.check_val_every_n_epoch {every}: give 1 or more (validate every that many "
                          "epochs), or trainer.limit_val_batches 0 for no validation")
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and interval <= 0:  # 0 divides by zero; 0.0 validates after every batch
        raise ConfigError(f"trainer.val_check_interval {interval}: give the training batches between validations "
                          "(1 or more) or a share of the epoch (0.25: four times an epoch), or "
                          "trainer.limit_val_batches 0 for no validation")
    for key in ("limit_train_batches", "max_epochs", "max_steps"):
        if trainer.get(key) == 0:
            raise ConfigError(f"trainer.{key} 0: the run would train on no batch; give 1 or more "
                              "(`visattn validate` scores without training)")
    init_args = getattr(model, "init_args", None) or {}
    if init_args.get("lr") == 0:
        warnings.warn("model.init_args.lr 0: the weights will not change; give a learning rate, e.g. 0.001",
                      VisattnWarning)
    warmup, epochs = init_args.get("warmup_epochs"), trainer.get("max_epochs")
    bounded_by_epochs = isinstance(epochs, int) and trainer.get("max_steps", -1) == -1
    # The warm-up ends a step before the run does at the latest: the rate reaches lr at the last step, not decayed.
    if isinstance(warmup, (int, float)) and bounded_by_epochs and 0 < epochs <= warmup:
        longer = "longer than" if warmup > epochs else "as long as"
        warnings.warn(f"model.init_args.warmup_epochs {warmup} is {longer} the run (trainer.max_epochs {epochs}): the "
                      "learning rate reaches model.init_args.lr only at the run's final step and never decays; shorten "
                      "the warm-up", VisattnWarning)


def _check_task_data(model: Any, data: Any) -> None:
    """A data module of another task would fail mid-step (a caption batch unpacked as images and labels)."""
    task, data_class = _imported(getattr(model, "class_path", None)), _imported(getattr(data, "class_path", None))
    wanted, given = getattr(task, "task", None), getattr(data_class, "task", None)
    if wanted and given and wanted != given:
        raise ConfigError(f"data: {data_class.__name__} holds {given} data, and {task.__name__} trains {wanted}; "
                          f"give a {wanted} data module (see configs/{wanted}/)")


def _check_channels(model: pl.LightningModule, datamodule: Any) -> None:
    """One line when the data's ``channels`` differ from what the model's first convolution takes: the model's
    ``in_chans`` sits in ``model_kwargs``, which no link reaches, and the first batch would fail after setup."""
    channels = getattr(datamodule, "hparams", {}).get("channels")
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if channels is None or first is None or first.in_channels == channels:
        return
    raise ConfigError(f"data.init_args.channels={channels} but the model takes {first.in_channels}-channel images; "
                      f"set model.init_args.model_kwargs.in_chans: {channels}, or data.init_args.channels: "
                      f"{first.in_channels}")


def _refuse_linked_overrides(model: Any, linked: tuple[str, ...]) -> None:
    """A model value the data section links in would be silently replaced by the data's. No data module
    takes these as settings (they come from its files: a COCO file's categories), so the fix is to drop it."""
    task, init_args = _imported(getattr(model, "class_path", None)), getattr(model, "init_args", None) or {}
    if task is None:
        return
    defaults = inspect.signature(task.__init__).parameters
    for key in linked:
        if key in init_args and key in defaults and init_args[key] != defaults[key].default:
            raise ConfigError(f"model.init_args.{key}: the data section sets it (data.{key} is linked to it); "
                              "drop it from the model section")


def _refuse_half_weights_on_cpu(trainer: pl.Trainer) -> None:
    """float16 weights trained on the CPU give a NaN loss within the first steps (Lightning turns only
    ``16-mixed`` into ``bf16-mixed`` there): the loss guard would stop the run blaming the learning rate, and a
    shorter run end with exit 0 and nothing learnt."""
    if trainer.precision == "16-true" and isinstance(trainer.accelerator, CPUAccelerator):
        raise ConfigError(f"trainer.precision {trainer.precision}: float16 weights trained on the CPU give a NaN loss "
                          "within the first steps; use --trainer.precision bf16-mixed or 32-true on the CPU "
                          "(16-true is for GPUs)")


def _refuse_sync_batchnorm_on_cpu(trainer: pl.Trainer, config: dict[str, Any]) -> None:
    """torch's DDP refuses SyncBatchNorm layers on the CPU: several CPU processes with ``sync_batchnorm`` ended in a
    ValueError traceback from each process as training started."""
    if config.get("sync_batchnorm") and trainer.world_size > 1 and isinstance(trainer.accelerator, CPUAccelerator):
        raise ConfigError("trainer.sync_batchnorm true: torch's SyncBatchNorm runs on GPUs only (DDP refuses it on the "
                          "CPU); set it false there, where each process normalises its own batches")
