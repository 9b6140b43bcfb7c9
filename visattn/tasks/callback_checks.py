"""Checks of a run's ``trainer.callbacks`` before training: a ``mode`` that goes against its metric,
two callbacks keyed alike, metric names that would make folders, callbacks the task cannot serve or that log to no
logger, and last epochs that would go unsaved.
"""
import functools
import os
import re
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import (BackboneFinetuning, BatchSizeFinder, Callback, DeviceStatsMonitor,
                                         GradientAccumulationScheduler, LearningRateFinder, LearningRateMonitor,
                                         ModelCheckpoint, StochasticWeightAveraging)
from lightning.pytorch.utilities.model_helpers import is_overridden

from ..errors import ConfigError


# The last part of the names of the metrics visattn's tasks log: accuracies, BLEU, CIDEr, pointing and mAP are
# better higher, losses lower.
_BETTER_HIGHER = re.compile(r"top\d+|bleu\d|rouge_l|cider|meteor|pointing|map(50)?")
_BETTER_LOWER = re.compile(r"\w*(loss|xent|attn_reg)")


def _refuse_monitors_the_wrong_way(trainer: pl.Trainer) -> None:
    """One line before training for a ModelCheckpoint or EarlyStopping whose ``mode`` goes against its metric:
    Lightning's default ``min`` on ``val/map50`` keeps the epoch of mAP 0, and on ``val/cider`` stops a run
    whose CIDEr rises, both silently."""
    for callback in [*trainer.checkpoint_callbacks, *trainer.early_stopping_callbacks]:
        monitor, mode = getattr(callback, "monitor", None), getattr(callback, "mode", None)
        name = monitor.rpartition("/")[2] if isinstance(monitor, str) else ""
        better = "max" if _BETTER_HIGHER.fullmatch(name) else "min" if _BETTER_LOWER.fullmatch(name) else mode
        if mode != better:
            harm = ("keeps the worst checkpoints" if isinstance(callback, ModelCheckpoint) else
                    "stops the run while it improves")
            raise ConfigError(f"trainer.callbacks: {type(callback).__name__}(monitor={monitor!r}, mode={mode!r}) "
                              f"{harm}: {monitor} is better {'higher' if better == 'max' else 'lower'}; set its "
                              f"mode to {better}")


def _keyed_apart(callbacks: list[Callback]) -> list[Callback]:
    """``callbacks``, a ModelCheckpoint added beside one of the same monitor, mode and interval keyed by its files
    too: Lightning keys a checkpoint callback's saved state by those alone, and stops the run with a traceback
    (`--trainer.callbacks+=ModelCheckpoint --trainer.callbacks.save_top_k -1` beside the configs' latest one).
    Other stateful callbacks twice over, or two checkpoints writing the same files, are one line."""
    files_of: dict[str, list[dict[str, Any]]] = {}  # each state key's checkpoints' folders and file patterns
    for callback in callbacks:
        if not is_overridden("state_dict", instance=callback, parent=Callback):
            continue
        key = callback.state_key
        if not isinstance(callback, ModelCheckpoint):
            if key in files_of:
                raise ConfigError(f"trainer.callbacks: two {type(callback).__name__}s of the same settings ({key}) "
                                  "keep one saved state between them; drop one")
            files_of[key] = []
            continue
        # relative: a project moved, or run from elsewhere with the same config, keys the state alike
        files = {"dirpath": callback.dirpath and os.path.relpath(callback.dirpath), "filename": callback.filename}
        if files in files_of.get(key, []):
            where = callback.dirpath or "the run's checkpoints folder"
            raise ConfigError(f"trainer.callbacks: two ModelCheckpoints of the same settings ({key}) write the same "
                              f"files into {where}; give the one you add another dirpath or filename")
        if key in files_of:
            callback._generate_state_key = functools.partial(_state_key_with_files, callback, files)
        files_of.setdefault(key, []).append(files)
    return callbacks


def _state_key_with_files(callback: ModelCheckpoint, files: dict[str, Any], **settings: Any) -> str:
    # A module-level function, not a lambda: ddp_spawn pickles the trainer's callbacks.
    return Callback._generate_state_key(callback, **settings, **files)


def _check_checkpoint_names(trainer: pl.Trainer) -> None:
    """One line before training for a ModelCheckpoint ``filename`` whose metric Lightning would write by name:
    visattn's metric names hold a "/", which made a folder (``best-epoch=4-val/loss=2.1280.ckpt``) that
    ``--ckpt_path best`` and the checks on an earlier run's checkpoints do not look in."""
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or not callback.auto_insert_metric_name:
            continue
        named = [name for name in re.findall(r"\{([^}:]+)", callback.filename or "") if "/" in name]
        if named:
            raise ConfigError(f"trainer.callbacks: ModelCheckpoint(filename={callback.filename!r}) would write "
                              f"{named[0]}= into the file name, and its '/' makes a folder that --ckpt_path best "
                              f"does not look in; name it yourself, e.g. '{named[0].replace('/', '_')}="
                              f"{{{named[0]}:.4f}}', with auto_insert_metric_name: false")


def _refuse_logging_callbacks_without_logger(trainer: pl.Trainer) -> None:
    """Lightning refuses these callbacks without a logger only once the run has started, after the run's folder,
    its config.yaml and its checkpoint folder's claim were written."""
    if trainer.loggers:
        return
    for callback in trainer.callbacks:
        if isinstance(callback, (LearningRateMonitor, DeviceStatsMonitor)):
            name = type(callback).__name__
            raise ConfigError(f"fit: trainer.logger is off, and trainer.callbacks' {name} logs to it; drop {name} "
                              "from trainer.callbacks, or keep a logger")


def _refuse_callbacks_the_task_cannot_serve(callbacks: list[Callback], task: pl.LightningModule) -> None:
    """One line for Lightning callbacks that need what the task does not have or cannot combine with: checked by
    ``visattn fit`` before the run's folder is made, and by the task's ``setup`` for a Trainer made in Python."""
    if getattr(task, "ema", None) is not None and any(isinstance(c, StochasticWeightAveraging) for c in callbacks):
        # SWA resets every batch norm, the average's too, and re-estimates only those of the weights it trains
        raise ConfigError("trainer.callbacks StochasticWeightAveraging with model.init_args.ema_decay: both average "
                          "the weights, and SWA's batch-norm update misses the EMA copy that is evaluated; use one "
                          "of them")
    if not hasattr(task, "backbone") and any(isinstance(c, BackboneFinetuning) for c in callbacks):
        slower = next((key for key in ("backbone_lr_scale", "layer_decay") if key in task.hparams), None)
        fix = f"train the early layers slower with model.init_args.{slower} instead" if slower else "drop it"
        raise ConfigError(f"trainer.callbacks BackboneFinetuning: it unfreezes the task's backbone attribute, and "
                          f"{type(task).__name__} has none; {fix}")
    if any(isinstance(c, GradientAccumulationScheduler) for c in callbacks):
        # the schedule is planned from the trainer's count before the callback changes it at its first epoch
        raise ConfigError("trainer.callbacks GradientAccumulationScheduler: the warm-up and cosine learning-rate "
                          "schedule is planned at the start for one accumulation, and would stop short of its end; "
                          "give trainer.accumulate_grad_batches N instead")
    _refuse_tuning_callbacks(callbacks)


def _refuse_tuning_callbacks(callbacks: list[Callback]) -> None:
    """One line for Lightning's tuning callbacks, which change the learning rate or batch size as the fit starts,
    after the task built its optimizer and schedule from them: a rate found 10 times the configured one gave every
    group that rate (layer_decay's and backbone_lr_scale's shares lost), the warm-up then climbed to 3 times it and
    the cosine fell back to the configured rate (0.02, 0.04, 0.06, then 0.002); a batch size found left the cosine
    planned for another number of steps."""
    for finder, setting in ((LearningRateFinder, "model.init_args.lr"), (BatchSizeFinder, "data.init_args.batch_size")):
        # Lightning's Tuner adds its finder for a search that ends before training (_early_exit): that one is the fix
        if any(isinstance(c, finder) and not getattr(c, "_early_exit", False) for c in callbacks):
            raise ConfigError(f"trainer.callbacks {finder.__name__}: it changes the {setting.rpartition('.')[2]} once "
                              "the task has planned its learning-rate schedule from it; run Lightning's Tuner from "
                              f"Python first, as the README shows, and give what it finds as {setting}")


def _refuse_unsaved_last_epochs(trainer_config: dict[str, Any], callbacks: list[Callback]) -> None:
    """One line when ``check_val_every_n_epoch`` would leave the run's last epochs unvalidated: the checkpoints
    are written after validation, so their training would be lost (a 3-epoch run's last.ckpt holds epoch 2). Not for
    a run that validates or checkpoints nothing, or whose checkpoints are written at epoch or step ends too."""
    every, epochs = trainer_config.get("check_val_every_n_epoch") or 1, trainer_config.get("max_epochs")
    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    if (not checkpoints or trainer_config.get("limit_val_batches") == 0 or trainer_config.get("fast_dev_run")
            or any(c._save_on_train_epoch_end or c._every_n_train_steps or c._train_time_interval
                   for c in checkpoints)):
        return
    bounded_by_epochs = trainer_config.get("max_steps") in (None, -1)
    # Fewer epochs than that validate none: MonitoredMetricCheck names it for a checkpoint that monitors validation.
    if every > 1 and bounded_by_epochs and isinstance(epochs, int) and epochs > every and epochs % every:
        raise ConfigError(f"trainer.check_val_every_n_epoch {every} with trainer.max_epochs {epochs}: the last "
                          f"{epochs % every} epoch(s) would be neither validated nor checkpointed (checkpoints are "
                          f"written after validation); give a max_epochs that is a multiple of {every}")
