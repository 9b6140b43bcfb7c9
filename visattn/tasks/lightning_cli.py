"""LightningCLI front end for ``visattn fit|validate|test|predict --config FILE``.

Configs are flat YAML files (``configs/<task>/<experiment>.yaml``) naming the task and data
classes by ``class_path``. Values the data defines are linked into the model, so each is given
once and lands in every checkpoint, which is then enough to run inference. Which values depends
on the task: its class lists them in ``linked_data_attributes`` (a classifier takes
``num_classes``, ``class_names`` and ``preprocessing``; a captioner takes its vocabulary).

Every run gets :class:`SafeCheckpointIO` unless its config names another ``CheckpointIO``: checkpoints
are written crash-safely and read without unpickling code, a checkpoint for another model is a
one-line error, and ``fit --ckpt_path last`` resumes from the newest good checkpoint of the run's
folder when its last one is damaged (a damaged FILE named explicitly is a one-line error). Every run
also gets :class:`RandomStateCheckpoint`, so a run resumed at an epoch's end draws the same batches as one
that never stopped (from a step checkpoint it does not: README, known limits).
``validate|test|predict --ckpt_path best|last`` find the config's best or last checkpoint on disk, so they
work in a process that did not train; without ``--ckpt_path`` they refuse a model that starts from no
weights rather than score it.

``--ckpt_path FILE`` must hold the config's task class and architecture: LightningCLI builds the
model from the checkpoint's hyperparameters, so another model would otherwise run in its place. A
fresh ``fit``, or one from another run's checkpoint, refuses a checkpoint folder that holds an earlier
run's checkpoints (Lightning would write ``last-v1.ckpt`` beside them), and ``fit --ckpt_path last`` one
whose run left no last checkpoint (with no checkpoint at all it starts afresh, saying so, as a job restarted until
it finishes wants); ``fast_dev_run`` writes no checkpoints. A resumed fit refuses a typed
``lr`` or ``weight_decay``, which its restored optimizer would override. A ``fit`` whose ModelCheckpoint
or EarlyStopping monitors a ``val/`` metric is refused before training when the run would never validate (no
validation data, ``limit_val_batches 0``, ``check_val_every_n_epoch`` past ``max_epochs``): Lightning would
only warn that the metric is missing, and never write the best checkpoint. Data whose ``channels`` (3, or 1 for
gray) differ from what the model's first convolution takes (``model_kwargs.in_chans``) is refused before training,
as is a CPU ``fit`` at ``trainer.precision 16-true`` (float16 weights, whose loss turns NaN within steps).

``visattn predict`` writes one JSON object per sample to ``<trainer.default_root_dir>/predictions.jsonl``
(:class:`JsonPredictionWriter`, unless the config has a prediction writer): a classifier's top classes
with names and probabilities, a captioner's caption, a detector's boxes with labels and scores. It replaces
the file an earlier predict wrote, and refuses one visattn did not write.

Ctrl-C ends every command with ``visattn: interrupted`` and exit code 130, as elsewhere in visattn.
"""
import argparse
import ast
import contextlib
import copy
import difflib
import enum
import errno
import functools
import glob
import importlib
import importlib.util
import inspect
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NoReturn, Optional, Sequence

import numpy as np
import torch
import yaml

import lightning.pytorch as pl
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import (BackboneFinetuning, BasePredictionWriter, Callback, DeviceStatsMonitor,
                                         EarlyStopping, GradientAccumulationScheduler, LearningRateMonitor,
                                         ModelCheckpoint, ProgressBar, RichProgressBar, StochasticWeightAveraging,
                                         Timer)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden

from ..data.datamodules import SplitLoadersMixin
from ..data.image_folder import image_files_of
from ..errors import WORKERS_STOPPED, ConfigError, VisattnError, VisattnWarning, WeightsError, keyword_names
from ..fileio import (FULL_ERRNOS, atomic_path, claim_folder, output_errors, prepare_output_dir,
                      refuse_replacing_others_files, unique_paths)
from ..inference.checkpoints import EDITED_CHECKPOINT, read_checkpoint
from ..inference.detector import class_label, detection_records
from ..pretrained import checkpoint_follows, scored_as_built
from ..registry import model_arguments, split_model_name
from ..shipped import bare_config_name, config_file_name, nearest_shipped_configs, shipped_config
from ..state_dict_fit import check_state_dict
from ..weight_names import FETCHED_PREFIXES
from .distributed import gather_shares
from .guards import GuardedTask, seed_apart
from .optimization import check_optimizer_settings
from .progress import EpochLines, interactive_output

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a Lightning command, or with ``terminated`` SIGTERM, which Lightning stops the run for at its next
    step; ``resumable``: the run left a last checkpoint for ``--ckpt_path last``, ``steps_lost`` optimizer steps
    before it stopped, which a resumed run trains again."""

    def __init__(self, resumable: bool, *, terminated: bool = False, steps_lost: int = 0) -> None:
        super().__init__()
        self.resumable, self.terminated, self.steps_lost = resumable, terminated, steps_lost


def _failed_write(path: Path, err: RuntimeError) -> tuple[int, str]:
    """errno and reason of a torch write that failed without them: a full disk, the file-size limit (``ulimit -f``,
    which another folder does not fix), else torch's words."""
    if shutil.disk_usage(path.parent).free < 1 << 20:
        return errno.ENOSPC, os.strerror(errno.ENOSPC)
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError):  # Windows has no such limit
        limit = None
    reached = re.search(r"unexpected pos (\d+)", str(err))  # where the write stopped
    if limit is not None and limit != resource.RLIM_INFINITY and reached and int(reached[1]) >= limit - (1 << 20):
        return errno.EFBIG, f"{os.strerror(errno.EFBIG)}: the file-size limit (ulimit -f) is {limit} bytes"
    return errno.EIO, f"torch could not write it: {_first_line(err)}"


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written crash-safely and read weights-only.

    Saving goes through :func:`visattn.fileio.atomic_path` (temp file, fsync, ``os.replace``): a
    run killed mid-write leaves the previous checkpoint whole. Loading uses
    ``torch.load(weights_only=True)``, so a hostile pickle runs nothing, and a damaged file or one
    that does not fit ``module`` is a one-line :class:`WeightsError` naming it.

    Args:
        module: the LightningModule the checkpoints belong to; loads check their keys and shapes.
        resume_fallback: when the checkpoint asked for is damaged, warn and load the newest other
            ``*.ckpt`` beside it that reads (``visattn fit --ckpt_path last`` turns this on: the run's
            own folder, never a file the user named).
    """

    def __init__(self, *, module: Optional[torch.nn.Module] = None, resume_fallback: bool = False) -> None:
        super().__init__()
        self.module = module
        self.resume_fallback = resume_fallback

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote filesystems: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except RuntimeError as err:  # torch's zip writer reports a full disk as "unexpected pos ..." (no errno)
            raise OSError(*_failed_write(path, err), str(path)) from None

    def load_checkpoint(self, path: Any, map_location: Optional[Callable] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        path = Path(path)
        if path.name == _SPAWN_WEIGHTS:  # the trained weights ddp_spawn's rank 0 hands back, a bare state dict
            return torch.load(path, map_location=map_location, weights_only=True)
        try:
            checkpoint = read_checkpoint(path)
        except WeightsError as err:
            if not self.resume_fallback or not path.is_file():
                raise
            path, checkpoint = _newest_good_checkpoint(path, err)
        if self.module is not None:
            _refuse_another_average(self.module, checkpoint["state_dict"], path)
            check_state_dict(self.module, checkpoint["state_dict"], strict=getattr(self.module, "strict_loading", True),
                             source=path, fix="use a checkpoint of the model and model_kwargs this config builds")
        return checkpoint


def _refuse_another_average(task: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    """One line naming ``ema_decay`` when the checkpoint holds a weight average and the task keeps none, or the
    reverse: the keys' mismatch is not the fault of "the model and model_kwargs this config builds"."""
    theirs, ours = any(key.startswith("ema.") for key in state), getattr(task, "ema", None) is not None
    if theirs == ours:
        return
    trained = {key for key in task.state_dict() if not key.startswith("ema.")}
    if trained != {key for key in state if not key.startswith("ema.")}:
        return  # another model too, which check_state_dict names
    held = ("was trained without a weight average, and this run keeps one (model.init_args.ema_decay "
            f"{task.hparams.get('ema_decay')})" if ours else "holds a weight average (ema_decay), and this run keeps none")
    raise ConfigError(f"--ckpt_path {path} {held}; drop the ema_decay setting, which then comes from the checkpoint, "
                      f"or start a new run from its weights with --model.init_args.pretrained {path}")


# The file in a fresh temporary folder through which Lightning's ddp_spawn returns rank 0's weights to the main
# process (saved and read by the checkpoint IO, then removed): read as a checkpoint, it ended a finished run in
# "not a Lightning checkpoint".
_SPAWN_WEIGHTS = ".temp.ckpt"


def _newest_good_checkpoint(damaged: Path, err: WeightsError) -> tuple[Path, dict[str, Any]]:
    """The newest other ``*.ckpt`` beside ``damaged`` that reads, with a one-line warning; else ``err``."""
    others = sorted((p for p in damaged.parent.glob("*.ckpt") if p != damaged),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for path in others:
        try:
            checkpoint = read_checkpoint(path)
        except WeightsError:
            continue
        log.warning("skipping %s; resuming from %s (step %s) instead", err, path, checkpoint.get("global_step"))
        return path, checkpoint
    raise WeightsError(f"{err}; no other checkpoint in {damaged.parent} reads either, "
                       "so start without --ckpt_path") from None


def _best_checkpoint(callbacks: Any) -> Path:
    """The best checkpoint of the first monitored ``ModelCheckpoint`` among the config's ``callbacks``.

    Its state, saved in every checkpoint of the run, names the best file; the newest checkpoint that
    reads has the latest. Failing that, the best is the one file its ``filename`` pattern matches.
    """
    monitored = [settings for settings in _callback_settings(callbacks)
                 if settings.get("monitor") and settings.get("dirpath")]
    if not monitored:
        raise ConfigError("--ckpt_path best: the config has no ModelCheckpoint with monitor and dirpath to find "
                          "the best checkpoint in; pass --ckpt_path FILE")
    settings = monitored[0]
    folder = Path(settings.dirpath)
    literal_parts = re.split(r"\{[^}]*\}", settings.filename or "{epoch}-{step}")  # Lightning's default name
    candidates = list(folder.glob("*".join(map(glob.escape, literal_parts)) + ModelCheckpoint.FILE_EXTENSION))
    for path in sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            states = read_checkpoint(path, lazy=True).get("callbacks", {})
        except WeightsError:
            continue
        recorded = [folder / Path(state["best_model_path"]).name for state in states.values()
                    if isinstance(state, dict) and state.get("monitor") == settings.monitor
                    and state.get("best_model_path")]
        # By name, as the run's folder may have moved since; the pattern tells apart callbacks on one metric.
        best = [p for p in recorded if p in candidates]
        if best:
            return best[0]
    if len(candidates) == 1:
        return candidates[0]
    raise ConfigError(f"--ckpt_path best: no best {settings.monitor} checkpoint found in {folder}; "
                      "run `visattn fit` with this config first or pass --ckpt_path FILE")


def _callback_settings(callbacks: Any) -> list[Any]:
    """The ``init_args`` of each callback in the config's ``trainer.callbacks`` (one or a list)."""
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []
    return [c.init_args for c in callbacks if getattr(c, "init_args", None) is not None]


def _checkpoint_folders(callbacks: Any) -> list[Path]:
    return sorted({Path(settings.dirpath) for settings in _callback_settings(callbacks) if settings.get("dirpath")})


def _last_checkpoint(callbacks: Any) -> Path:
    """The newest ``last*.ckpt`` in the config's checkpoint folders, the one Lightning's ``ckpt_path="last"``
    picks; where there is none Lightning only warns and scores the untrained model."""
    newest = _newest_last_checkpoint(_checkpoint_folders(callbacks))
    if newest is None:
        where = ", ".join(map(str, _checkpoint_folders(callbacks))) or "the config (no ModelCheckpoint with a dirpath)"
        raise ConfigError(f"--ckpt_path last: no last checkpoint in {where}; run `visattn fit` with this config "
                          "first or pass --ckpt_path FILE")
    return newest


def _newest_last_checkpoint(folders: Iterable[Path]) -> Optional[Path]:
    """The newest ``last*.ckpt`` in ``folders``, the one Lightning's ``ckpt_path="last"`` picks; None for none."""
    found = _last_checkpoints_in(folders)
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def _resumable_last(callbacks: Any) -> str:
    """``"last"``, or where Lightning's pick, the newest last checkpoint, holds weights only (a ModelCheckpoint with
    ``save_weights_only``, whose file Lightning cannot resume from), the newest last checkpoint that holds the
    training state; where none does, the newest, which :func:`_check_checkpoint_model` refuses in one line."""
    found = sorted(_last_checkpoints(callbacks), key=lambda path: path.stat().st_mtime, reverse=True)
    if not found or _holds_training_state(found[0]):
        return "last"
    return str(next((path for path in found[1:] if _holds_training_state(path)), found[0]))


def _holds_training_state(path: Path) -> bool:
    """Whether the checkpoint at ``path`` holds the optimizer state a resumed fit restores (a damaged one counts:
    the run's checkpoint IO says so, or falls back)."""
    try:
        return "optimizer_states" in read_checkpoint(path, lazy=True)
    except WeightsError:
        return True


def _last_checkpoints(callbacks: Any) -> list[Path]:
    return _last_checkpoints_in(_checkpoint_folders(callbacks))


def _last_checkpoints_in(folders: Iterable[Path]) -> list[Path]:
    return [path for folder in folders for path in folder.glob("last*" + ModelCheckpoint.FILE_EXTENSION)]


def _refuse_earlier_run(callbacks: Any) -> None:
    """A fresh run would write ``last-v1.ckpt`` beside an earlier run's ``last.ckpt``, which ``--ckpt_path
    last`` and scripts would then still find; nothing is moved or deleted."""
    for folder in _checkpoint_folders(callbacks):
        if any(folder.glob("*" + ModelCheckpoint.FILE_EXTENSION)):
            raise ConfigError(f"{folder} holds checkpoints of an earlier run; resume it with --ckpt_path last, or "
                              "start afresh after moving them elsewhere (or set the ModelCheckpoint dirpath to "
                              "another folder)")


def _refuse_mixed_runs(ckpt_path: Optional[str], callbacks: Any) -> None:
    """A fit writes into the config's checkpoint folders only as the run they hold: resuming it (``last``, or
    one of its files), or a new run into empty folders (also one started from another run's checkpoint)."""
    if ckpt_path == "last":
        if not _checkpoint_folders(callbacks):  # Lightning's own checkpoints go to each run's new version_N folder
            raise ConfigError("fit --ckpt_path last: the config gives no ModelCheckpoint a dirpath, so each run "
                              "checkpoints into its own new logs folder and none is found to resume (Lightning "
                              "would train afresh); resume with --ckpt_path FILE, and give a ModelCheckpoint a "
                              "dirpath and save_last: true for next time")
        others = [path for folder in _checkpoint_folders(callbacks) for path in folder.glob("*.ckpt")]
        if others and not _last_checkpoints(callbacks):  # Lightning would warn and train afresh beside them
            newest = max(others, key=lambda path: path.stat().st_mtime)
            raise ConfigError(f"--ckpt_path last: {newest.parent} holds no last checkpoint; resume from its newest "
                              f"with --ckpt_path {newest}")
        if not others:  # in place of Lightning's, which named its own source file
            folders = ", ".join(map(str, _checkpoint_folders(callbacks)))
            warnings.warn(f"--ckpt_path last: nothing to resume in {folders} yet, so this fit starts afresh",
                          VisattnWarning)
        return
    if ckpt_path not in (None, "best") and not Path(ckpt_path).exists():
        return  # named as missing where the path is checked, not blamed on the folder's earlier run
    folders = {folder.resolve() for folder in _checkpoint_folders(callbacks)}
    if ckpt_path is None or Path(ckpt_path).resolve().parent not in folders:
        _refuse_earlier_run(callbacks)
    elif ckpt_path != "best":
        _refuse_resuming_behind_last(Path(ckpt_path), callbacks)


def _refuse_resuming_behind_last(ckpt_path: Path, callbacks: Any) -> None:
    """Resuming from a checkpoint of the run saved before its folder's ``last.ckpt`` was (``best-epoch=000.ckpt``),
    Lightning keeps that file, a later epoch, and writes the resumed epochs to ``last-v1.ckpt``: ``last.ckpt``,
    which evaluate, classify and save-weights are given, stayed the model left behind (a CLI fuzz audit)."""
    kept_last = {Path(settings.dirpath).resolve() for settings in _callback_settings(callbacks)
                 if settings.get("dirpath") and settings.get("save_last")}
    name = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    # (a last checkpoint itself, last-v1.ckpt too, is the run's newest)
    itself_last = ckpt_path.name.startswith(ModelCheckpoint.CHECKPOINT_NAME_LAST)
    lasts = [folder / name for folder in sorted(kept_last)
             if (folder / name).is_file() and not (itself_last and ckpt_path.resolve().parent == folder)]
    if not lasts:
        return
    try:
        checkpoint = read_checkpoint(ckpt_path, lazy=True)
    except WeightsError:
        return  # named where the checkpoint is read
    if "optimizer_states" not in checkpoint:
        return  # weights only: refused as not resumable
    states = checkpoint.get("callbacks") or {}
    written = {Path(state["last_model_path"]).resolve() for state in states.values()
               if isinstance(state, dict) and isinstance(state.get("last_model_path"), str)
               and state["last_model_path"]}
    last = next((last for last in lasts if last not in written), None)
    if last is not None:
        raise ConfigError(f"--ckpt_path {ckpt_path}: saved before {last}, a later epoch of the run, which "
                          "Lightning would keep while it writes the resumed epochs to last-v1.ckpt, where commands "
                          f"given last.ckpt miss them; resume the newest with --ckpt_path last, or move "
                          f"{last.name} elsewhere to go on from {ckpt_path.name}")


def _loads_weights(model: Any) -> bool:
    """Whether the config's model section starts from trained weights: ``pretrained``, shipped
    ``arch.tag`` weights (unless ``pretrained: false``, which builds the tag's architecture with random
    init), or a timm model built with ``pretrained`` in its ``model_kwargs``."""
    init_args = getattr(model, "init_args", None) or {}
    name = init_args.get("model_name")
    if isinstance(name, str) and name.startswith("timm:"):
        return bool(init_args.get("pretrained") or (init_args.get("model_kwargs") or {}).get("pretrained"))
    pretrained = init_args.get("pretrained")
    if pretrained is not None:  # given: it decides, also for an arch.tag name (as create_model takes it)
        return bool(pretrained)
    return isinstance(name, str) and split_model_name(name)[1] is not None


def _resolve_ckpt_path(subcommand: str, settings: Any) -> Optional[str]:
    """``--ckpt_path`` of ``settings`` (the subcommand's config), with ``best`` and ``last`` found on disk
    for validate|test|predict (Lightning finds them only in the process that trained); one line for a
    choice that would train or score the wrong weights."""
    ckpt_path = settings.get("ckpt_path")
    callbacks = settings.trainer.get("callbacks")
    if subcommand == "fit":
        if ckpt_path == "best":
            raise ConfigError("fit --ckpt_path best: fit resumes a run, from --ckpt_path last (the run's own last "
                              "checkpoint) or --ckpt_path FILE; best is for validate, test and predict")
        if not settings.trainer.get("fast_dev_run"):
            _refuse_mixed_runs(ckpt_path, callbacks)
        return _resumable_last(callbacks) if ckpt_path == "last" else ckpt_path
    if ckpt_path == "best":
        return str(_best_checkpoint(callbacks))
    if ckpt_path == "last":
        return str(_last_checkpoint(callbacks))
    if ckpt_path is None and not _loads_weights(settings.model):
        name = (getattr(settings.model, "init_args", None) or {}).get("model_name", "model")
        raise ConfigError(f"visattn {subcommand} without --ckpt_path would score an untrained {name}; give "
                          "--ckpt_path best, last or FILE, or start the model from weights "
                          "(model.init_args.pretrained, or a model_name ARCH.TAG)")
    return ckpt_path


def _check_checkpoint_model(path: Path, model: Any, *, resuming: bool) -> None:
    """One line when the checkpoint at ``path`` is damaged or holds another task class or architecture than
    ``model`` (the config's model section): LightningCLI builds the model from the checkpoint's
    hyperparameters instead of the config's, so weights would load into, and run as, the other model."""
    try:
        checkpoint = read_checkpoint(path, lazy=True)
    except WeightsError as err:
        if resuming:  # an explicitly named file: no fallback to another checkpoint the user did not name
            raise WeightsError(f"{err}; or resume the config's run from its newest good checkpoint with "
                               "--ckpt_path last") from None
        raise
    hparams = checkpoint.get("hyper_parameters") or {}
    _refuse_objects_to_build(path, hparams, model)
    theirs = (hparams.get("_class_path"), hparams.get("model_name"))
    ours = (getattr(model, "class_path", None), (getattr(model, "init_args", None) or {}).get("model_name"))
    same_class = theirs[0] is None or theirs[0] == ours[0]
    same_arch = not all(isinstance(name, str) for name in (theirs[1], ours[1])) or (
        split_model_name(theirs[1])[0] == split_model_name(ours[1])[0])
    if not (same_class and same_arch):
        raise WeightsError(f"--ckpt_path {path}: a checkpoint of {_described(*theirs)}, but the config trains "
                           f"{_described(*ours)}; give a checkpoint of this config's runs, or the config it was "
                           "trained with")
    if resuming and "optimizer_states" not in checkpoint:  # Lightning's restore ends in a KeyError traceback
        raise ConfigError(f"--ckpt_path {path}: holds weights only (save_weights_only), not the optimizer state a "
                          f"resumed fit needs; train from its weights in a new run with --model.init_args.pretrained "
                          f"{path}")


def _refuse_objects_to_build(path: Path, hparams: dict, model: Any) -> None:
    """One line for a ``class_path`` in the checkpoint's hyperparameters that the config does not type at the
    same place: LightningCLI builds the model from them, and jsonargparse builds any class under an ``Any``
    type (``model_kwargs``), so a file of plain tensors and strings could run ``subprocess.Popen``."""
    init_args = getattr(model, "init_args", None) or {}
    typed = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args)
    for where, found in _class_paths(hparams, ""):
        if _at(typed, where) != found:
            raise WeightsError(f"--ckpt_path {path}: hyper_parameters{where} names a class to build "
                               f"({json.dumps(found.get('class_path'))}) that the config does not give there, and "
                               f"loading would build it; {EDITED_CHECKPOINT}")


def _class_paths(value: Any, where: str) -> Iterator[tuple[str, dict]]:
    """Each dict holding a ``class_path`` in ``value``, with its place (``.model_kwargs.norm``, ``[0]``)."""
    if isinstance(value, dict):
        if "class_path" in value:
            yield where, value
        for key, item in value.items():
            yield from _class_paths(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _class_paths(item, f"{where}[{index}]")


def _at(value: Any, where: str) -> Any:
    """The item of nested dicts and lists at a place :func:`_class_paths` names; None where there is none."""
    for key, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", where):
        try:
            value = value[int(index)] if index else value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _resumed_checkpoint(ckpt_path: Optional[str], callbacks: Any) -> Optional[Path]:
    """The file ``--ckpt_path`` names, or for ``last`` the config's newest last checkpoint; None for none."""
    if ckpt_path == "last":
        return _newest_last_checkpoint(_checkpoint_folders(callbacks))
    return Path(ckpt_path) if ckpt_path is not None and Path(ckpt_path).is_file() else None


# Task hyperparameters that a resumed fit takes from the optimizer state it restores, whatever is typed.
_RESTORED_WITH_THE_OPTIMIZER = ("lr", "weight_decay", "backbone_lr_scale", "layer_decay", "warmup_epochs")


def _refuse_overrides_the_optimizer_restores(path: Path, given: dict[str, Any], typed: Sequence[str]) -> None:
    """One line for an ``lr`` (or weight decay, warm-up) that a resumed fit is given, typed or in a config, other
    than its checkpoint's: the run would continue at the saved optimizer's values while its checkpoints record the
    given ones (a config's too, silently)."""
    if not set(given) & set(_RESTORED_WITH_THE_OPTIMIZER):
        return
    try:
        theirs = read_checkpoint(path, lazy=True).get("hyper_parameters") or {}
    except WeightsError:  # a damaged last checkpoint: the run's checkpoint IO falls back, or says so
        return
    if theirs.get("model_name") != given.get("model_name"):
        return  # another model's checkpoint: its weights are refused at the load, which names the real mistake
    for key in _RESTORED_WITH_THE_OPTIMIZER:
        if key in given and key in theirs and given[key] != theirs[key]:
            where, fix = ((f"--model.init_args.{key}", "drop the option") if key in typed else
                          (f"model.init_args.{key} (from the config)", f"give the checkpoint's {theirs[key]}"))
            raise ConfigError(f"{where} {given[key]}: a resumed run continues with the optimizer and schedule it "
                              f"saved, at {key} {theirs[key]}; {fix}, or start a new run from the checkpoint's "
                              f"weights with --model.init_args.pretrained {path}")


# What a checkpoint's weights were built as: LightningCLI builds the model from the checkpoint's values of these.
_BUILT_AS = ("model_name", "model_kwargs", "pretrained", "strict", "ema_decay")


def _keep_given_settings(built: Namespace, given: dict[str, Any], typed: Sequence[str]) -> None:
    """Put back over the checkpoint's hyperparameters, which LightningCLI (2.6) parses over the config's model
    for any ``--ckpt_path`` file, the settings the config and command line give: all but what the weights were
    built as (:data:`_BUILT_AS`), unless typed, and typed keys inside ``model_kwargs``. A config's ``beam_size``
    or ``label_smoothing``, and ``--model.init_args.model_kwargs.detections_per_img``, would otherwise be silently
    dropped for the checkpoint's."""
    for key, value in given.items():
        if key in built and (key not in _BUILT_AS or key in typed):
            built[key] = value
    for path in (path.split(".") for path in typed if "." in path):
        inner, source = built.get(path[0]), given.get(path[0])
        for part in path[1:-1]:
            inner, source = (inner or {}).get(part), (source or {}).get(part)
        if isinstance(inner, dict) and isinstance(source, dict) and path[-1] in source:
            inner[path[-1]] = source[path[-1]]


def _described(class_path: Optional[str], model_name: Any) -> str:
    parts = [class_path.rpartition(".")[2] if class_path else None, model_name if isinstance(model_name, str) else None]
    return " ".join(filter(None, parts)) or "an unnamed model"


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
    name = init_args.get("model_name")
    if init_args.get("pretrained") is False and isinstance(name, str) and split_model_name(name)[1] is not None:
        warnings.warn(f"model.init_args.pretrained false with model_name {name}: {split_model_name(name)[0]} starts "
                      f"from random weights; leave pretrained out (or null) to start from {name}'s", VisattnWarning)
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


def _first_process() -> bool:
    """Whether this is the run's first process: Lightning starts the others as this command again."""
    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"


def _keep_earlier_metrics(trainer: pl.Trainer, *, logs_metrics: bool = True) -> None:
    """Lightning's CSVLogger deletes the ``metrics.csv`` of an earlier run logged to the same ``version`` (fixed to
    keep a resumed run's logs in one folder), also in a run that logs no metrics (``logs_metrics``: predict): it is
    kept as ``metrics-2.csv``, ``metrics-3.csv``... as the runs' ``config.yaml`` are."""
    for logger in trainer.loggers:
        metrics = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
        if metrics is None or not metrics.is_file():
            continue
        kept = unique_paths(metrics.parent, "metrics", {p.name.casefold() for p in metrics.parent.iterdir()},
                            suffix=".csv")[0]
        metrics.rename(kept)
        ours = f", and this run's go to {metrics.name}" if logs_metrics else ""
        warnings.warn(f"logger's version {logger.version}: {metrics} holds an earlier run's metrics, which Lightning "
                      f"would delete; they are kept as {kept.name}{ours}", VisattnWarning)


def _warn_of_folders_elsewhere(trainer: pl.Trainer, typed: Sequence[str] = (), *, root_moved: bool = True) -> None:
    """``trainer.default_root_dir`` moves neither checkpoints nor logs whose folders the config names: a
    run given another one (``root_moved``: see :func:`_root_moved`) writes them into ./outputs/... (into the
    repository, run from there), so say so. Folders ``typed`` on the command line (an added callback's ``dirpath``)
    are where they were asked to be."""
    if not root_moved:
        return
    root, asked = Path(trainer.default_root_dir).expanduser().resolve(), {
        Path(folder).expanduser().resolve() for folder in typed}
    elsewhere = [f"{setting} {folder}" for setting, folder in _written_folders(trainer)
                 if (where := Path(folder).expanduser().resolve()) != root and root not in where.parents
                 and where not in asked]
    if elsewhere:
        stay = ("stay where they are; set those too to move them" if len(elsewhere) > 1 else
                "stays where it is; set it too to move it")
        warnings.warn(f"trainer.default_root_dir {trainer.default_root_dir}: the config's {', '.join(elsewhere)} "
                      f"{stay}", VisattnWarning)


# A monitored key that only validation logs (the tasks log val/top1, val/map50, val/cider).
_VALIDATION_KEY = re.compile(r"val(id(ation)?)?[/_.]")


def _check_monitored_validation(trainer: pl.Trainer, model: pl.LightningModule,
                                datamodule: Optional[pl.LightningDataModule]) -> None:
    """One line before training when a ModelCheckpoint or (strict) EarlyStopping monitors a validation
    metric and the run never validates: Lightning would only warn that the key is missing and never write
    the best checkpoint (or stop with a traceback in EarlyStopping), after the whole run."""
    watched = _validation_monitors(trainer)
    if not watched:
        return
    never = _never_validates(trainer, model, datamodule)
    first = _first_validation_step(trainer, datamodule) if never is None else None
    if first is not None and 0 <= trainer.max_steps < first:  # a smoke run: it may, but say so once
        warnings.filterwarnings("ignore", message=".*could not find the monitored key")  # Lightning's, at the end
        warnings.warn(f"trainer.max_steps {trainer.max_steps} ends the run before its first validation (after step "
                      f"{first}): {type(watched[0]).__name__}(monitor={watched[0].monitor!r}) will see no "
                      f"{watched[0].monitor}; use last.ckpt, or train {first} steps or more", VisattnWarning)
    if never is not None:
        raise _never_seen(watched[0], never)


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


def _validating_nothing(missing: tuple[str, str]) -> ConfigError:
    return ConfigError(f"validate: {missing[0]}; {missing[1]}")


def _validation_monitors(trainer: pl.Trainer) -> list[Callback]:
    """The run's ModelCheckpoint and (strict) EarlyStopping callbacks that monitor a validation metric."""
    return [c for c in [*trainer.checkpoint_callbacks, *trainer.early_stopping_callbacks]
            if isinstance(getattr(c, "monitor", None), str) and _VALIDATION_KEY.match(c.monitor)
            and (not isinstance(c, EarlyStopping) or c.strict)]


def _never_seen(callback: Callback, never: tuple[str, str]) -> ConfigError:
    reason, fix = never
    return ConfigError(f"trainer.callbacks: {type(callback).__name__}(monitor={callback.monitor!r}) would never "
                       f"see {callback.monitor}, as this run never validates ({reason}); {fix}, monitor a train/ "
                       "metric, or drop the callback")


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


def _first_validation_step(trainer: pl.Trainer, datamodule: Optional[pl.LightningDataModule]) -> Optional[int]:
    """The optimizer step after which a run on the default schedule (validation at the end of every
    ``check_val_every_n_epoch``-th epoch) first validates; None when the schedule or the data is not known here."""
    every = trainer.check_val_every_n_epoch
    if trainer.val_check_interval != 1.0 or not isinstance(every, int) or "train" not in getattr(datamodule, "datasets", {}):
        return None
    batches, limit = len(datamodule.train_dataloader()), trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    return every * math.ceil(batches / trainer.accumulate_grad_batches)


def _never_validates(trainer: pl.Trainer, model: pl.LightningModule,
                     datamodule: Optional[pl.LightningDataModule]) -> Optional[tuple[str, str]]:
    """Why a fit with these would run no validation, and the fix; None when it validates (or may)."""
    if trainer.limit_val_batches == 0:
        return f"trainer.limit_val_batches {trainer.limit_val_batches}", "set trainer.limit_val_batches above 0"
    every, epochs = trainer.check_val_every_n_epoch, trainer.max_epochs
    if isinstance(every, int) and isinstance(epochs, int) and 0 < epochs < every:
        return (f"trainer.check_val_every_n_epoch {every} > trainer.max_epochs {epochs}",
                f"set trainer.check_val_every_n_epoch to at most {epochs}")
    if not is_overridden("validation_step", model):
        return f"{type(model).__name__} has no validation_step", "use a model with a validation_step"
    return _missing_validation_data(trainer, datamodule, "fit")


def _missing_validation_data(trainer: pl.Trainer, datamodule: Optional[pl.LightningDataModule],
                             stage: str, *, launched: bool = False) -> Optional[tuple[str, str]]:
    """That a visattn data module holds no validation data, and the fix; None when it holds some (or may).
    ``launched``: asked inside a run of several processes, once each has set up its data."""
    # visattn's data modules keep what setup builds, so the setup in the run reuses it: nothing is read twice.
    # With several processes each sets up its own data once launched, after prepare_data: LaunchedDataCheck
    # asks then.
    if isinstance(datamodule, SplitLoadersMixin) and (launched or trainer.num_devices * trainer.num_nodes == 1):
        datamodule.setup(stage)
        if len(datamodule.datasets.get("val", ())) == 0:
            return f"{type(datamodule).__name__} holds no validation data", datamodule.how_to_validate()
    return None


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


def _data_settings_apart(ours: Any, theirs: Any) -> str:
    """``: data.init_args.KEY THEIRS (here OURS), ...`` for the data settings (loader settings aside) that differ
    from those Lightning saved in the run's checkpoint; nothing when none do or the checkpoint holds none."""
    apart = [f"data.init_args.{key} {theirs[key]} (here {value})" for key, value in ours.items()
             if key in theirs and theirs[key] != value and key not in _LOADER_SETTINGS]
    return f": {', '.join(apart)}" if apart else ""


# Data settings that change how batches are loaded, not what they hold.
_LOADER_SETTINGS = frozenset({"batch_size", "num_workers", "persistent_workers"})


def _first_difference(ours: list[str], theirs: list[str], thing: str, things: str) -> str:
    if len(ours) != len(theirs):
        return f"{len(ours)} {things} here, {len(theirs)} in the checkpoint"
    index = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    return f"{thing} {index} is {ours[index]!r} here, {theirs[index]!r} in the checkpoint"


def _imported(class_path: Optional[str]) -> Optional[type]:
    if not class_path:
        return None
    if "." not in class_path:  # a short name, which LightningCLI resolves among the classes imported
        bases = (pl.LightningModule, pl.LightningDataModule)
        return next((cls for base in bases for cls in _subclasses(base) if cls.__name__ == class_path), None)
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None  # LightningCLI reports the bad class_path itself


def config_task(class_path: str) -> Optional[type]:
    """The task class a config's ``model: class_path`` names, in full or by class name alone (None: not one)."""
    for module in TASK_MODULES:
        importlib.import_module(module)
    return _imported(class_path)


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


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


# What the config's model, data and trainer.callbacks sections build.
_SECTION_CLASSES = (pl.LightningModule, pl.LightningDataModule, Callback, Logger)


def _building_error(err: Exception, model: Any) -> ConfigError:
    """One line for ``err``, raised while jsonargparse built the config's classes: the section whose class
    raised it, with that class's own message (not jsonargparse's list of the forms a section may take)."""
    built, cause = _being_built(err)
    message = _first_line(cause or err)
    problem = _class_problem(err)
    if built is None and problem is not None:  # one of a list of loggers or callbacks: its own complaint
        built_class, message = _imported(problem[0]) or type(None), problem[1]
    else:
        built_class = type(built)
    name = getattr(built_class, "__name__", "?")
    if isinstance(built, pl.LightningModule):
        return _model_error(built, message, model)
    if issubclass(built_class, Callback):
        return ConfigError(f"trainer.callbacks: {name}: {message}; fix its init_args in the config's trainer.callbacks")
    if issubclass(built_class, pl.LightningDataModule):
        return ConfigError(f"data: {name} could not be built ({message}); check data.init_args")
    if issubclass(built_class, Logger):  # TensorBoardLogger without tensorboard installed, WandbLogger without wandb
        return ConfigError(f"trainer.logger: {name} could not be built ({message}); install what it needs, fix its "
                           "init_args, or keep the configs' CSVLogger")
    return ConfigError(f"config: {message}; check the {_section_in(message)}")


def _section_in(message: str) -> str:
    """The config section a building error's own words point to (a Timer's or Trainer's name): the model and data
    sections unless they name a trainer part."""
    for word, section in (("Callback", "trainer.callbacks section"), ("Logger", "trainer.logger section"),
                          ("Trainer", "trainer section")):
        if word in message:
            return section
    return "model and data sections"


def _being_built(err: BaseException) -> tuple[Any, Optional[BaseException]]:
    """The model, data module or callback whose ``__init__`` raised ``err`` or an error it wraps, with that
    error; (None, None) when none did (jsonargparse's wrapping keeps the original as the context)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for frame, _ in traceback.walk_tb(err.__traceback__):
            built = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
            if isinstance(built, _SECTION_CLASSES):
                return built, err
        err = err.__cause__ or err.__context__
    return None, None


def _named_in_model_kwargs(err: VisattnError, model: Any) -> VisattnError:
    """A builder's refusal of one of the config's ``model_kwargs`` (``score_thresh=1.5: ...``) named as the
    config's key, ``model.init_args.model_kwargs.score_thresh``; any other error as it is."""
    kwargs = (getattr(model, "init_args", None) or {}).get("model_kwargs") or {}
    key, equals, _ = str(err).partition("=")
    if not (isinstance(err, ConfigError) and equals and isinstance(kwargs, dict) and key in kwargs):
        return err
    return ConfigError(f"model.init_args.model_kwargs.{err}")


def _model_error(task: pl.LightningModule, message: str, model: Any) -> ConfigError:
    init_args = getattr(model, "init_args", None) or {}
    name, kwargs = init_args.get("model_name"), init_args.get("model_kwargs")
    if kwargs:  # what a config passes on to the architecture unchecked
        return ConfigError(f"model.init_args.model_kwargs {json.dumps(kwargs, default=str)}: {name} could not be "
                           f"built with them ({message}); check their names and values")
    return ConfigError(f"model: {type(task).__name__} {name} could not be built ({message}); check model.init_args")


def _trainer_error(err: MisconfigurationException, config: dict[str, Any]) -> ConfigError:
    """Lightning's complaint about the trainer settings, on one line naming the setting."""
    message = _first_line(err).rstrip(".")
    if "backend found" in message:  # "No supported gpu backend found!" names no setting
        accelerator = config.get("accelerator")
        return ConfigError(f"trainer.accelerator {accelerator}: this machine has no {accelerator} device; "
                           "use --trainer.accelerator auto or cpu")
    return ConfigError(f"trainer: {message}; fix it in the config's trainer section or with --trainer.KEY VALUE")


def _late_trainer_error(err: ValueError) -> Optional[ConfigError]:
    """One line for the trainer settings Lightning checks only once it has the data (``val_check_interval``
    against the number of training batches); None for any other ValueError, which keeps its traceback."""
    setting = re.search(r"`(\w+)`", str(err))
    raised_in = traceback.extract_tb(err.__traceback__)[-1].filename if err.__traceback__ else ""
    if setting is None or setting[1] not in _TRAINER_SETTINGS or f"{os.sep}lightning{os.sep}" not in raised_in:
        return None
    return ConfigError(f"trainer.{setting[1]}: {' '.join(str(err).split())}")


_TRAINER_SETTINGS = frozenset(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}


def _written_folders(trainer: pl.Trainer) -> list[tuple[str, str]]:
    """The folders the run's checkpoint callbacks and loggers write to, each with the setting that names it,
    once (the configs' two ModelCheckpoints share a folder); a logger's folder that is the run's folder is named
    as the setting the user gave (a file given as trainer.default_root_dir, not "logger's save_dir")."""
    folders = [("ModelCheckpoint dirpath", c.dirpath) for c in trainer.checkpoint_callbacks
               if getattr(c, "dirpath", None)]
    folders += [("trainer.default_root_dir" if logger.save_dir == trainer.default_root_dir else "logger's save_dir",
                 logger.save_dir) for logger in trainer.loggers if logger.save_dir]
    # as the loggers read ~ (checked and made as written, a literal ./~ folder had been left in the working folder)
    return list(dict.fromkeys((setting, os.path.expanduser(folder)) for setting, folder in folders))


def _output_error(trainer: pl.Trainer, err: OSError, default_root_dir: Optional[str]) -> Optional[ConfigError]:
    """One line when ``err`` is about a folder the run writes to (checkpoints, logs, the run's folder);
    None for any other file, whose error keeps its traceback."""
    if not err.filename:
        return None
    failed = Path(os.path.abspath(err.filename))
    folders = [(f"the {setting}", folder) for setting, folder in _written_folders(trainer)]
    folders += [("trainer.default_root_dir", default_root_dir)] if default_root_dir else []
    for setting, folder in folders:
        folder = Path(os.path.abspath(folder))
        if failed == folder or folder in failed.parents or failed in folder.parents:
            where = "" if failed == folder else f" ({failed})"
            full = err.errno in FULL_ERRNOS
            fix = "free some space, or give another folder" if full else "give a folder you can write to"
            return ConfigError(f"{setting} {folder}: {err.strerror or err}{where}; {fix}")
    return None


class StopAfterSigterm(Callback):
    """Stop after the batch in which SIGTERM came, in every loop: Lightning's predict loop never looks (a `predict`
    sent SIGTERM would run to its end and exit 0), and its evaluation loops not after their last batch."""

    def _stop_if_told(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.received_sigterm:
            raise SIGTERMException

    on_predict_batch_end = on_validation_batch_end = on_test_batch_end = _stop_if_told


class MonitoredMetricCheck(Callback):
    """After the sanity check, before any training (else after the first validation, with
    ``num_sanity_val_steps 0``): one line when a ModelCheckpoint or EarlyStopping monitors a validation
    metric the run does not log, naming the closest (``val/top_1`` for ``val/top1``) or those it logs; a
    warning for an EarlyStopping with ``strict`` off, which goes on without it. Lightning said so only after
    the first epoch, whose best checkpoint was then never written (EarlyStopping in a traceback)."""

    checked = False

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.checked or trainer.sanity_checking):
            self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        logged = sorted(key for key in trainer.callback_metrics if _VALIDATION_KEY.match(key))
        self.checked = bool(logged)  # a sanity check of broken images only logs nothing
        watched = [c for c in [*trainer.checkpoint_callbacks, *trainer.early_stopping_callbacks]
                   if isinstance(getattr(c, "monitor", None), str) and _VALIDATION_KEY.match(c.monitor)]
        for callback in watched if logged else []:
            if callback.monitor not in logged:
                _refuse_unlogged_monitor(callback, logged)
        for callback in trainer.checkpoint_callbacks if logged else []:
            _refuse_unlogged_filename_metric(callback, trainer, logged)


def _refuse_unlogged_monitor(callback: Callback, logged: list[str]) -> None:
    named = f"trainer.callbacks: {type(callback).__name__}(monitor={callback.monitor!r})"
    close = difflib.get_close_matches(callback.monitor, logged, n=1, cutoff=0.8)
    if close:
        raise ConfigError(f"{named}: the run logs no {callback.monitor}; did you mean {close[0]}?")
    if isinstance(callback, EarlyStopping) and not callback.strict:
        warnings.warn(f"{named}: the run logs no {callback.monitor}, only {', '.join(logged)}", VisattnWarning)
        return
    raise ConfigError(f"{named}: the run logs no {callback.monitor}; monitor one it logs: {', '.join(logged)}")


def _refuse_unlogged_filename_metric(callback: Callback, trainer: pl.Trainer, logged: list[str]) -> None:
    """One line for a ModelCheckpoint ``filename`` field naming a metric the run does not log but nearly names
    one of its validation metrics (``{val_loss}`` for ``val/loss``): Lightning wrote it as 0 into every name."""
    for field in re.findall(r"\{([^}:]+)", getattr(callback, "filename", None) or ""):
        close = difflib.get_close_matches(field, logged, n=1, cutoff=0.8)
        if field not in ("epoch", "step") and field not in trainer.callback_metrics and close:
            raise ConfigError(f"trainer.callbacks: ModelCheckpoint(filename={callback.filename!r}): the run logs no "
                              f"{field}, which Lightning would write as 0; did you mean {close[0]}? write it as "
                              f"'{close[0].replace('/', '_')}={{{close[0]}:.4f}}' with auto_insert_metric_name: false")


class LaunchedDataCheck(Callback):
    """In a run of several processes, once each has set up its data: the checks one process makes before the
    run, that ``validate`` has validation data and that a fit monitoring a validation metric validates. Every
    process raises the same line together (none waits on another); before, validate exited 0 with no metric,
    and a fit monitoring val/top1 trained to its end and never wrote its best checkpoint."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size == 1 or stage not in ("fit", "validate"):
            return
        missing = _missing_validation_data(trainer, trainer.datamodule, stage, launched=True)
        if missing is not None and stage == "validate":
            raise _validating_nothing(missing)
        watched = _validation_monitors(trainer)
        if missing is not None and watched:
            raise _never_seen(watched[0], missing)


class RandomStateCheckpoint(Callback):
    """Keeps the Python, NumPy and torch (CPU and CUDA) random states in every checkpoint and restores
    them on resume, so the batches after a resume are those of an uninterrupted run.

    Augmentation pipelines that own a generator (visattn's recipes) reseed from each epoch's DataLoader
    seed, which these restored states draw again, so a run resumed at an epoch's end augments as the
    uninterrupted run did. A resumed run starts with a sanity-check validation that an uninterrupted run
    does not have at that point; it leaves the states as it found them. Under DDP every process's states
    are gathered into the checkpoint and each process takes its own back (another process count draws
    apart afresh). The states are stored as tensors and tuples, so checkpoints still load with
    ``weights_only=True``.
    """

    def __init__(self) -> None:
        self._before_sanity_check: dict[str, Any] = {}

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_sanity_check = _random_states()

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _set_random_states(self._before_sanity_check)

    def state_dict(self) -> dict[str, Any]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every process saves
            return {"ranks": gather_shares(_random_states())}  # (DDP processes draw apart: GuardedTask)
        return _random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "ranks" not in state_dict:
            _set_random_states(state_dict)
            return
        ranks = state_dict["ranks"]
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        _set_random_states(ranks[rank if rank < len(ranks) else 0])
        if len(ranks) != (torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1):
            seed_apart(rank)  # another process count: the saved states do not fit, so draw apart afresh


def _random_states() -> dict[str, Any]:
    """This process's Python, NumPy and torch (CPU and CUDA) random states, as tensors and tuples."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    # NumPy's uint32 keys as int64: torch cannot unpickle a uint32 tensor, as all_gather_object does under DDP
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_random_states(state_dict: dict[str, Any]) -> None:
    random.setstate(state_dict["python"])
    kind, keys, position, has_gauss, gauss = state_dict["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state_dict["torch"])
    if state_dict["cuda"] and len(state_dict["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state_dict["cuda"])


class JsonPredictionWriter(BasePredictionWriter):
    """Writes what ``visattn predict`` predicts to ``<trainer.default_root_dir>/predictions.jsonl``, one
    JSON object per sample (``sample`` is its index in the predict dataset), and prints where.

    A classifier's record holds its ``topk`` classes with names and probabilities, a captioner's its
    caption, a detector's its boxes with labels and scores, in the shapes ``visattn classify|caption|detect
    --json`` print; an image file that could not be read, its ``error``, as they print; another task's output
    is written as lists, one line per batch. The file is replaced
    whole once all batches are done, so a run that fails leaves the previous one. An earlier run's file is
    replaced (the printed line says so); a file of that name visattn did not write is refused before predicting.

    Args:
        topk: classes per sample for a classifier.
    """

    def __init__(self, *, topk: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.topk = topk
        self.records: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.records = []
        path = _predictions_path(trainer)
        prepare_output_dir(path.parent, flag="trainer.default_root_dir")  # before predicting, not once it is done
        refuse_replacing_others_files([path], flag="trainer.default_root_dir", ours=_written_by_the_writer)

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Optional[list[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        records = [] if prediction is None else _prediction_records(prediction, pl_module.hparams, self.topk)
        if records is None:
            self.records.append({"batch": batch_idx, "prediction": _as_lists(prediction)})
            return
        loaders = trainer.predict_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        files, positions = image_files_of(getattr(loader, "dataset", None))
        broken = set()  # collate_present left these files out of the batch (all of it when prediction is None)
        if files is not None and batch_indices is not None:
            broken = {i for i in batch_indices if files.is_broken(positions[i])}
        present = [i for i in batch_indices or () if i not in broken]
        if batch_indices is None or len(present) != len(records):
            self.records.extend({"sample": None, **record} for record in records)
            return
        by_sample = dict(zip(present, records))
        for i in batch_indices:
            where = {"file": str(files.paths[positions[i]])} if files is not None else {}
            record = by_sample[i] if i in by_sample else {"error": files.failure(positions[i])}
            self.records.append({"sample": int(i), **where, **record})

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        records = self.records
        if trainer.world_size > 1:  # one file, written by the first process, in sample order
            records = [record for share in gather_shares(records) for record in share]
            if trainer.global_rank != 0:
                return
            if all(isinstance(record.get("sample"), int) for record in records):
                records.sort(key=lambda record: record["sample"])
        path = _predictions_path(trainer)
        replaced = " (replacing the earlier predictions there)" if path.exists() else ""
        # a failed write names the folder (a file-size limit, a full disk), not standard output
        with output_errors(path.parent, flag="trainer.default_root_dir"), atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(record) + "\n" for record in records))
        unread = sum("error" in record for record in records)
        failed = f"; {unread} could not be read (their records hold the error)" if unread else ""
        print(f"wrote {len(records)} predictions to {path}{replaced}{failed}")


def _predictions_path(trainer: pl.Trainer) -> Path:
    return Path(trainer.default_root_dir) / "predictions.jsonl"


def _written_by_the_writer(path: Path) -> bool:
    """Whether ``path`` is a file :class:`JsonPredictionWriter` wrote: empty (no predictions), or its first line
    one of its records."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        record = json.loads(first or "{}")
    except (OSError, ValueError):  # a folder, unreadable, not text or not JSON
        return False
    return not first or (isinstance(record, dict) and ("sample" in record or "batch" in record))


def _prediction_records(prediction: Any, hparams: Any, topk: int) -> Optional[list[dict[str, Any]]]:
    """One JSON-ready record per sample of a visattn task's ``predict_step`` output; None for other outputs."""
    names = hparams.get("class_names") or []
    if isinstance(prediction, torch.Tensor) and prediction.ndim == 2:  # a classifier's probabilities (B, classes)
        top = prediction.float().topk(min(topk, prediction.shape[1]), dim=1)
        return [{"predictions": [{"label": class_label(names, k), "index": k, "prob": p}
                                 for p, k in zip(probs, ks)]}
                for probs, ks in zip(top.values.tolist(), top.indices.tolist())]
    if isinstance(prediction, list) and all(isinstance(p, str) for p in prediction):  # a captioner's captions
        return [{"caption": caption} for caption in prediction]
    if isinstance(prediction, list) and all(isinstance(p, dict) and "boxes" in p for p in prediction):  # detections
        return [{"detections": detection_records(found, names, hparams.get("category_ids"))} for found in prediction]
    return None


def _plain_enum_values(config: Namespace) -> None:
    """Replaces enum members in ``config`` by their values. jsonargparse reads a default such as Timer's
    ``interval: str = Interval.step`` into the config as the member, then refuses it when checking the config
    ("cannot represent an object"), so the callback was usable only with the setting typed."""
    for key, value in config.items():
        if isinstance(value, enum.Enum) and value.name == value.value:  # the value is what jsonargparse reads back
            config[key] = value.value
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Namespace):
                    _plain_enum_values(item)


def _nulls_in_model_dicts(model: Any) -> None:
    """``null`` for a key of a task's dict argument on the command line (``--model.init_args.model_kwargs.KEY
    null``) is None: jsonargparse passes it into a subclass's dict as the text ``'None'``, which the builder would
    refuse, naming None as the fix. No builder takes that text."""
    init_args = getattr(model, "init_args", None) or {}
    for key, value in init_args.items():
        if isinstance(value, dict):
            init_args[key] = _with_nulls(value)


def _with_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _with_nulls(v) for k, v in value.items()}
    return None if value == "None" else value


def _as_lists(value: Any) -> Any:
    """``value`` with tensors as (nested) lists, so ``json.dumps`` takes it; other objects as their text."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _as_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


@contextlib.contextmanager
def _said_by_the_first_process() -> Iterator[None]:
    """Lightning starts a run's other processes as this command again: what reading the config and building the
    run warn of is the first process's to say (under DDP the warm-up, lr 0 and weights warnings would come once
    per process). Warnings of training itself, a process's own batches, are every process's. The first process's
    filters set meanwhile stay (for Lightning's warnings, which only it gives)."""
    if rank_zero_only.rank == 0:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VisattnWarning)
        yield


class VisattnCLI(LightningCLI):
    def __init__(self, *args: Any, linked_data_attributes: tuple[str, ...] = (),
                 model_overrides: tuple[str, ...] = (), typed_folders: tuple[str, ...] = (), root_moved: bool = False,
                 **kwargs: Any) -> None:
        self.linked_data_attributes = linked_data_attributes
        self.model_overrides = model_overrides  # model init_args given on the command line
        self.typed_folders = typed_folders  # callbacks' and loggers' folders given on the command line
        self.root_moved = root_moved  # trainer.default_root_dir given apart from the config's folders
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in self.linked_data_attributes:
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")

    def _add_arguments(self, parser: LightningArgumentParser) -> None:
        super()._add_arguments(parser)
        # LightningCLI's --optimizer and --lr_scheduler stay parsed, so that before_instantiate_classes names the
        # task's own settings instead; --help no longer offers what every run refuses.
        for group in parser._action_groups:
            refused = [a for a in group._group_actions if a.dest.partition(".")[0] in ("optimizer", "lr_scheduler")]
            for action in refused:
                action.help = argparse.SUPPRESS
            if refused and len(refused) == len(group._group_actions):
                group.title = group.description = None

    def _parse_ckpt_path(self) -> None:
        with _said_by_the_first_process():
            self._parse_and_check_ckpt_path()

    def _parse_and_check_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return super()._parse_ckpt_path()
        settings = self.config[subcommand]
        _check_model_name(settings.get("model"), settings.get("ckpt_path"))
        settings["ckpt_path"] = _resolve_ckpt_path(subcommand, settings)
        # LightningCLI (2.6) swaps the config's model for the one a checkpoint file's hyperparameters
        # describe; this is the last point where the config's model is known.
        _refuse_linked_overrides(settings.model, self.linked_data_attributes)
        # a missing file too, before Lightning's setup lines, so a path typo is the first line of output
        if settings.ckpt_path not in (None, "best", "last", "hpc") and "://" not in str(settings.ckpt_path):
            _check_checkpoint_model(Path(settings.ckpt_path), settings.model, resuming=subcommand == "fit")
        given = copy.deepcopy(vars(settings.model.get("init_args") or Namespace()))
        resumed = _resumed_checkpoint(settings.ckpt_path, settings.trainer.get("callbacks"))
        if subcommand == "fit" and resumed is not None:
            # A resumed run's folder holds its checkpoints (Lightning warned on every resume, naming its own file);
            # a fresh run's warning stays, for a folder _refuse_earlier_run does not see (no dirpath given).
            # (run_lightning_cli's catch_warnings ends the filter with the command.)
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            typed = [path.partition(".")[0] for path in self.model_overrides]
            _refuse_overrides_the_optimizer_restores(resumed, given, typed)
        super()._parse_ckpt_path()
        if "init_args" in self.config[subcommand].model:
            _keep_given_settings(self.config[subcommand].model.init_args, given, self.model_overrides)

    def before_instantiate_classes(self) -> None:
        with _said_by_the_first_process():
            self._check_config()

    def _check_config(self) -> None:
        _plain_enum_values(self.config)
        _nulls_in_model_dicts(self._get(self.config, "model"))
        # The links were chosen from the command line before parsing: a way of naming the task that reading
        # missed would train without the data's labels and preprocessing (a 10-class head on 3 classes).
        task = _imported(self._get(self.config, "model").get("class_path"))
        if tuple(getattr(task, "linked_data_attributes", ())) != self.linked_data_attributes:
            raise ConfigError(f"model.class_path {task.__name__ if task else '?'}: name the task in a --config file or "
                              "with --model.class_path visattn.tasks.MODULE.CLASS, so that the data's labels reach it")
        for key in ("optimizer", "lr_scheduler"):
            if self._get(self.config, key) is not None:
                # Lightning ignored a scheduler given alone, and an optimizer replaced the task's AdamW, warm-up and
                # cosine while the checkpoint recorded the task's lr and warm-up as used
                raise ConfigError(f"{key}: visattn's tasks build their AdamW, warm-up and cosine schedule from "
                                  "model.init_args lr, weight_decay and warmup_epochs; set those instead, and drop "
                                  f"{key}")
        _check_settings(self._get(self.config, "model"), self._get(self.config, "trainer"))
        if self.subcommand == "fit":
            _check_training(self._get(self.config, "model"), self._get(self.config, "trainer"))
            if self._get(self.config, "ckpt_path") is None:  # a resume's weights are its checkpoint's
                _warn_of_random_timm_weights(self._get(self.config, "model"))
        _check_task_data(self._get(self.config, "model"), self._get(self.config, "data"))

    def before_fit(self) -> None:
        with _said_by_the_first_process():
            self._check_fit()
            self._keep_earlier_metrics("fit")

    def _check_run(self, stage: str) -> None:
        check_run = getattr(self.model, "check_run", None)  # a visattn task's; the config may name another
        if check_run is not None:
            check_run(self.trainer, self.datamodule, stage)

    def _keep_earlier_metrics(self, stage: str) -> None:
        """Last before the run: a run refused moves no earlier run's metrics (nor those of a fit still writing)."""
        if _first_process():
            _keep_earlier_metrics(self.trainer, logs_metrics=stage != "predict")

    def _check_fit(self) -> None:
        self._check_run("fit")
        _check_checkpoint_names(self.trainer)
        _refuse_monitors_the_wrong_way(self.trainer)
        _check_monitored_validation(self.trainer, self.model, self.datamodule)
        for setting, folder in _written_folders(self.trainer):  # before training, not after its first epoch
            prepare_output_dir(folder, flag=setting)
        if _first_process():  # the others write no checkpoint: no claim
            for callback in self.trainer.checkpoint_callbacks:
                if getattr(callback, "dirpath", None):
                    claim_folder(callback.dirpath, setting="ModelCheckpoint dirpath", task="visattn fit")

    def before_validate(self) -> None:
        missing = _missing_validation_data(self.trainer, self.datamodule, "validate")
        if missing is not None:  # Lightning validates nothing, prints no metric and exits 0
            raise _validating_nothing(missing)
        self._before_scoring("validate")

    def before_test(self) -> None:
        self._before_scoring("test")

    def before_predict(self) -> None:
        self._before_scoring("predict")

    def _before_scoring(self, stage: str) -> None:
        with _said_by_the_first_process():
            self._check_run(stage)
            self._keep_earlier_metrics(stage)

    def instantiate_classes(self) -> None:
        # A checkpoint replaces every weight: the model's starting weights are neither read nor warned about.
        # Without one, validate, test and predict score the starting weights, which must fill the head.
        if self._checkpoint_file() is not None:
            building = checkpoint_follows()
        elif self.subcommand in ("validate", "test", "predict"):
            building = scored_as_built(self.subcommand)
        else:
            building = contextlib.nullcontext()
        try:
            with building, _said_by_the_first_process():
                super().instantiate_classes()
            self._check_data_fits_checkpoint()
            _check_channels(self.model, self.datamodule)
        except (ValueError, TypeError) as err:
            # jsonargparse wraps errors raised while building the model or data; surface ours as they are.
            cause = _visattn_cause(err)
            if cause is not None:
                raise _named_in_model_kwargs(cause, self._get(self.config, "model")) from None
            raise _building_error(err, self._get(self.config, "model")) from None

    def _checkpoint_file(self) -> Optional[Path]:
        """The file ``--ckpt_path`` loads: the one named, or for ``fit --ckpt_path last`` the run's newest last
        checkpoint; None when there is none (fit then starts afresh)."""
        callbacks = self._get(self.config, "trainer").get("callbacks")
        return _resumed_checkpoint(self._get(self.config, "ckpt_path"), callbacks)

    def _check_data_fits_checkpoint(self) -> None:
        """The data's labels or vocabulary, linked into the model, must be the checkpoint's: the same count in
        another order would silently decode every id as another word (or class)."""
        path = self._checkpoint_file()
        if path is None:
            return
        try:
            checkpoint = read_checkpoint(path, lazy=True)
        except WeightsError:  # a damaged last checkpoint: the run's checkpoint IO falls back, or says so
            return
        theirs = checkpoint.get("hyper_parameters") or {}
        for key, thing, things in (("vocab", "word", "words"), ("class_names", "class", "classes")):
            ours = self.model.hparams.get(key)
            if key in self.linked_data_attributes and theirs.get(key) and ours and list(ours) != list(theirs[key]):
                settings = _data_settings_apart(getattr(self.datamodule, "hparams", {}),
                                                checkpoint.get("datamodule_hyper_parameters") or {})
                raise ConfigError(f"--ckpt_path {path}: the data gives other {things} than the run was trained on: "
                                  f"{_first_difference(list(ours), list(theirs[key]), thing, things)}; give the "
                                  f"data settings of that run{settings}")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        config = self._get(self.config_init, "trainer", default={})
        clip = config.get("gradient_clip_val")
        if clip is not None and not (math.isfinite(clip) and clip >= 0):  # a negative norm turns the gradients round
            bound = "value" if config.get("gradient_clip_algorithm") == "value" else "norm"
            raise ConfigError(f"trainer.gradient_clip_val={clip}: give the positive {bound} to clip gradients to, "
                              "or 0 for no clipping")
        if config.get("gradient_clip_algorithm") is not None and not clip:  # Lightning clips nothing then
            raise ConfigError(f"trainer.gradient_clip_algorithm {config['gradient_clip_algorithm']} without "
                              "trainer.gradient_clip_val clips nothing; give the value (or norm) to clip to")
        kwargs["callbacks"] = _keyed_apart(self._callbacks(config))
        if self.subcommand == "fit":
            _refuse_callbacks_the_task_cannot_serve(kwargs["callbacks"], self.model)
            _refuse_unsaved_last_epochs(config, kwargs["callbacks"])
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        # SafeCheckpointIO by default, unless the config chose a CheckpointIO (as a plugin or in its strategy).
        strategy_io = getattr(config.get("strategy"), "_checkpoint_io", None)
        if not any(isinstance(p, CheckpointIO) for p in plugins) and strategy_io is None:
            resume_last = self.subcommand == "fit" and self._get(self.config, "ckpt_path") == "last"
            kwargs["plugins"] = [*plugins, SafeCheckpointIO(module=self.model, resume_fallback=resume_last)]
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:
            raise _trainer_error(err, config) from None
        if self.subcommand == "fit":
            _refuse_logging_callbacks_without_logger(trainer)
            _refuse_half_weights_on_cpu(trainer)
            _refuse_sync_batchnorm_on_cpu(trainer, config)
            _warn_of_folders_elsewhere(trainer, self.typed_folders, root_moved=self.root_moved)
        return trainer

    def _callbacks(self, config: dict[str, Any]) -> list[Callback]:
        """The config's callbacks and visattn's defaults, which a config can replace with its own."""
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("fast_dev_run") or config.get("enable_checkpointing") is False:
            # fast_dev_run: Lightning skips their saves, but for save_last's at the end: a last.ckpt of a one-batch
            # run that a later --ckpt_path last would resume. enable_checkpointing false: Lightning refused the
            # configs' checkpoint callbacks, which only `--trainer.callbacks=[]` (all callbacks) removed.
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        # Rich's progress bar on a terminal, a line per epoch in a log; a config can still pick a bar or turn bars off.
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks = [*callbacks, RichProgressBar() if interactive_output() else EpochLines()]
        if not any(isinstance(c, RandomStateCheckpoint) for c in callbacks):
            callbacks = [*callbacks, RandomStateCheckpoint()]
        if self.subcommand == "fit":
            callbacks = [MonitoredMetricCheck(), *callbacks]  # its validation end before EarlyStopping's
        if self.subcommand in ("fit", "validate"):
            callbacks = [*callbacks, LaunchedDataCheck()]
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks = [*callbacks, JsonPredictionWriter()]
        return [*callbacks, StopAfterSigterm()]

    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if not isinstance(seed, bool) and not (isinstance(seed, int) and 0 <= seed < 2**32):
            raise ConfigError(f"seed_everything={seed!r}: give a whole number from 0 to {2**32 - 1}, true (seed 0, as "
                              "Lightning takes it), or false for none")
        super()._set_seed()

    def _stop_state(self) -> dict[str, Any]:
        """``resumable``: the run left a last checkpoint, only this run's (a fresh fit refuses folders that hold an
        earlier run's); ``steps_lost``: the steps it trained after the newest one (a stop mid-epoch loses them)."""
        newest = _newest_last_checkpoint(Path(c.dirpath) for c in self.trainer.checkpoint_callbacks
                                         if getattr(c, "dirpath", None))
        if newest is None or not newest.is_file():
            return {"resumable": False}
        try:
            saved_at = read_checkpoint(newest, lazy=True).get("global_step")
        except (VisattnError, OSError):  # said when it is resumed
            saved_at = None
        lost = self.trainer.global_step - saved_at if isinstance(saved_at, int) else 0
        return {"resumable": True, "steps_lost": max(lost, 0)}

    def _run_subcommand(self, subcommand: str) -> None:
        sigint = signal.getsignal(signal.SIGINT)
        try:
            with _log_filter(_not_interrupt_notice):
                super()._run_subcommand(subcommand)
        except KeyboardInterrupt:  # before Lightning's own handling started, e.g. while reading the data
            raise Interrupted(**self._stop_state()) from None
        except SIGTERMException:  # a SystemExit without a code: a preempted run would exit 0, as a finished one
            raise Interrupted(**self._stop_state(), terminated=True) from None
        except RuntimeError as err:
            # A SIGTERM sent to the whole process group (slurm's scancel) ends the loader workers too, and torch
            # raises that in the step Lightning was to stop after: a traceback and exit 1 had followed.
            if not (self.trainer.received_sigterm and WORKERS_STOPPED.search(str(err))):
                raise
            raise Interrupted(**self._stop_state(), terminated=True) from None
        except SystemExit as exit:
            if isinstance(exit.__context__, KeyboardInterrupt):  # Lightning's shutdown after Ctrl-C exits with 1
                raise Interrupted(**self._stop_state()) from None
            raise
        except ValueError as err:
            mapped = _late_trainer_error(err)
            if mapped is None:
                raise
            raise mapped from None
        except ModuleNotFoundError as err:  # a package a chosen callback or logger needs once the run starts
            if err.name is None:  # raised by Lightning with its own words (DeviceStatsMonitor without psutil)
                raise ConfigError(f"{subcommand}: {_first_line(err).strip().rstrip('.')}; install the package it "
                                  "names, or drop the setting that uses it") from None
            package = err.name.partition(".")[0]
            if importlib.util.find_spec(package) is not None:  # a module missing from an installed package: a bug
                raise
            raise ConfigError(f"{subcommand}: the module {package} is not installed, and {_importer(err)} needs it; "
                              f"install the package that provides it, or drop the setting that uses it") from None
        except OSError as err:
            mapped = _output_error(self.trainer, err, self._get(self.config, "trainer").get("default_root_dir"))
            if mapped is None:
                raise
            raise mapped from None
        finally:
            if signal.getsignal(signal.SIGINT) is not sigint:  # Lightning ignores Ctrl-C from its shutdown on
                signal.signal(signal.SIGINT, sigint)


def _importer(err: ModuleNotFoundError) -> str:
    """The module whose import failed with ``err`` (the deepest frame outside Python's import machinery)."""
    names = [frame.f_globals.get("__name__", "") for frame, _ in traceback.walk_tb(err.__traceback__)]
    named = [name for name in names if name and not name.startswith("importlib")]
    return named[-1] if named else "the run"


def _refuse_callbacks_the_task_cannot_serve(callbacks: list[Callback], task: pl.LightningModule) -> None:
    """One line for Lightning callbacks that need what the task does not have or cannot combine with."""
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


# Lightning logs "Detected KeyboardInterrupt, attempting graceful shutdown ..." here, which visattn says in one
# line, and an advert for its cloud logger on every run.
_rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")


def _not_interrupt_notice(record: logging.LogRecord) -> bool:
    return "Detected KeyboardInterrupt" not in record.getMessage()


def _not_an_advert(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip:")


def run_lightning_cli(argv: list[str]) -> VisattnCLI:
    with warnings.catch_warnings(), _log_filter(_not_an_advert), _log_filter(_not_a_cpu_notice, _cpp_extension_log):
        # Nothing a user can act on: torch deprecated an API Lightning (2.6) calls on every fit, and
        # Lightning's model summary sizes bf16 models as fp32.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        warnings.filterwarnings("ignore", message=r"Precision .* is not supported by the model summary")
        # What it guards against, args and sys.argv that disagree, is a shipped config's path put for its name.
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
        warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint')
        # A data module without validation data gives [] on purpose: the run trains without validation.
        warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
        # The CSV logger's: the file it deletes, metrics.csv, is kept by _keep_earlier_metrics, which says so (its
        # hparams.yaml, which it writes again, holds the run's hyperparameters).
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        return _build_and_run(_with_shipped_configs(argv))


def _with_shipped_configs(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config`` that names no file here but a shipped config (``configs/<task>/x.yaml``, the
    README's commands, run from another folder or a pip install) given as that config's path."""
    resolved = list(argv)
    for k, arg in enumerate(argv):
        if arg in ("--config", "-c") and k + 1 < len(argv):
            at, value, prefix = k + 1, argv[k + 1], ""
        elif arg.startswith("--config="):
            at, value, prefix = k, arg.partition("=")[2], "--config="
        else:
            continue
        if Path(value).expanduser().is_dir():  # jsonargparse's "Path is not a file" names no config to give
            held = sorted(path.name for path in Path(value).expanduser().glob("*.yaml"))
            inside = f" (it holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''})" if held else ""
            raise ConfigError(f"--config {value}: a folder{inside}; give a config file, or a shipped config's name "
                              "(`visattn configs` lists them)")
        shipped = shipped_config(value)
        # jsonargparse's line names no shipped config; settings, URLs and `~` paths are its to read
        named = config_file_name(value) or bare_config_name(value)
        if shipped is None and named and not Path(value).expanduser().exists():
            nearest = nearest_shipped_configs(value)
            fix = f"did you mean {' or '.join(nearest)}?" if nearest else \
                "give a config's path, or a shipped one's name (`visattn configs` lists them)"
            raise ConfigError(f"--config {value}: no such file; {fix}")
        if shipped is not None:
            resolved[at] = prefix + str(shipped)
            if rank_zero_only.rank == 0:  # Lightning starts the other processes as this command again
                print(f"visattn: no {value} here; using the shipped config {shipped}", file=sys.stderr)
    return resolved


# torch.compile on a CPU machine logs "No CUDA runtime is found, using CUDA_HOME=..." here.
_cpp_extension_log = logging.getLogger("torch.utils.cpp_extension")


def _not_a_cpu_notice(record: logging.LogRecord) -> bool:
    return "No CUDA runtime is found" not in record.getMessage()


@contextlib.contextmanager
def _log_filter(keep: Callable[[logging.LogRecord], bool], log: logging.Logger = _rank_zero_log) -> Iterator[None]:
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


class SaveConfigBesideEarlier(SaveConfigCallback):
    """Saves the run's settings as LightningCLI does, into its log folder, as ``config.yaml`` or, where an earlier
    run's is, ``config-2.yaml``, ``config-3.yaml``...: without a logger every run of a ``default_root_dir`` saves
    into that folder, and a ``validate`` would replace the config of the ``fit`` that trained its weights."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            folder = Path(trainer.log_dir)  # broadcast by Lightning: every process names the same file
            free = None
            if trainer.is_global_zero:  # numbered as the commands number their outputs
                taken = {path.name.casefold() for path in folder.iterdir()} if folder.is_dir() else set()
                free = unique_paths(folder, "config", taken, suffix=".yaml")[0].name
            self.config_filename = trainer.strategy.broadcast(free)
        super().setup(trainer, pl_module, stage)


class _VisattnParser(LightningArgumentParser):
    """Says ``visattn`` in every usage line, also those jsonargparse builds for ``--data.help CLASS`` (not
    ``cli.py`` or ``__main__.py`` under ``python -m``)."""

    def __init__(self, *args: Any, prog: str = "visattn", **kwargs: Any) -> None:
        super().__init__(*args, prog=prog, **kwargs)

    def format_help(self) -> str:
        return plain_help(super().format_help())

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        """Unrecognized options (``--trainer.max_stepz 1``) are named without their values, each with the nearest
        option this parser takes."""
        if message.startswith("unrecognized arguments: "):
            tokens = message.removeprefix("unrecognized arguments: ").split()
            options = [token for token in tokens if re.match(r"-[^\d.]", token)] or tokens  # not values, "-1" too
            plural = "s" if len(options) > 1 else ""
            message = f"unrecognized argument{plural} {', '.join(self._with_nearest(option) for option in options)}"
        super().error(message, ex)

    def _with_nearest(self, option: str) -> str:
        name = option.partition("=")[0]
        close = difflib.get_close_matches(name, list(self._option_string_actions), n=1, cutoff=0.8)
        return f"{name} (did you mean {close[0]}?)" if close and name.startswith("--") else name


# Sphinx roles and literals in the docstrings LightningCLI shows as help: :func:`visattn.create_model`, ``"photo"``.
_REST_MARKUP = re.compile(r":(?:func|class|meth|attr|mod|data):`(~?)([^`]+)`|``([^`]+)``")


def plain_help(text: str) -> str:
    """``text`` with reST roles and double-backtick literals as the plain words they mark (``:class:`~a.B``` as B)."""
    def plain(match: re.Match) -> str:
        short, target, literal = match.groups()
        if literal is not None:
            return literal
        return target.rpartition(".")[2] if short else target

    return _REST_MARKUP.sub(plain, text)


_TASK_HELP = ("`visattn configs` lists the shipped configs, and `--model.help "
              "visattn.tasks.classification.ImageClassifier` (or captioning.CaptioningTask, detection.DetectionTask) "
              "a task's settings.")
# What `visattn COMMAND --help` says first, in place of the Trainer method's docstring ("Runs the full optimization
# routine."), above some 480 lines of options.
COMMAND_DESCRIPTIONS = {
    "fit": "Train the model a config names on its data: `visattn fit --config CONFIG [--section.key VALUE ...]`, e.g. "
           "`visattn fit --config configs/classification/se_resnet20_fmnist.yaml --trainer.max_epochs 5`; resume a "
           f"stopped run with `--ckpt_path last`. {_TASK_HELP}",
    "validate": "Score a config's model on the config's validation split: `visattn validate --config CONFIG "
                "--ckpt_path CHECKPOINT` (or `--model.init_args.model_name ARCH.TAG` for shipped weights). "
                f"{_TASK_HELP}",
    "test": "Score a config's model on the config's test split: `visattn test --config CONFIG --ckpt_path CHECKPOINT` "
            f"(or `--model.init_args.model_name ARCH.TAG` for shipped weights). {_TASK_HELP}",
    "predict": "Write a config's model's predictions on the config's test split to predictions.jsonl in the run's "
               "folder: `visattn predict --config CONFIG --ckpt_path CHECKPOINT`; for image files, use `visattn "
               f"classify|caption|detect FILES --model ARCH.TAG`. {_TASK_HELP}",
}


def _build_and_run(argv: list[str]) -> VisattnCLI:
    _check_section_files(argv)
    _refuse_model_names(argv)
    try:
        return VisattnCLI(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            parser_kwargs={"exit_on_error": False, **{command: {"description": about}
                                                      for command, about in COMMAND_DESCRIPTIONS.items()}},
            parser_class=_VisattnParser,
            save_config_callback=SaveConfigBesideEarlier,
            save_config_kwargs={"overwrite": True},  # into a name no file has (SaveConfigBesideEarlier)
            linked_data_attributes=_task_links(argv),
            model_overrides=_model_overrides(argv),
            root_moved=_root_moved(argv),
            typed_folders=_typed_values(argv, ("--trainer.callbacks.dirpath", "--trainer.callbacks.init_args.dirpath",
                                               "--trainer.logger.save_dir", "--trainer.logger.init_args.save_dir")),
        )
    except ArgumentError as err:
        mapped = _no_config(err, argv) or _unknown_trainer_class(err) or _wrong_type(err, argv)
        if mapped is not None:
            raise mapped from None
        blamed = argv[:1] if str(err).startswith("unrecognized argument") else argv[:3]  # the option, not the config
        raise ConfigError(f"{' '.join(blamed)}: {_first_line(err)}{_unaccepted_option_hint(err, argv[0])}") from None
    except ModuleNotFoundError as err:
        # Lightning's requirement check for a setting it offers (trainer.precision transformer-engine)
        if not re.match(r"Requirement '.+' not met", _first_line(err)):
            raise
        raise ConfigError(f"{argv[0]}: a setting needs a package this environment lacks: "
                          f"{_first_line(err).rstrip('.')}; install it, or choose another setting") from None
    except MisconfigurationException as err:  # a setting Lightning refuses once the run starts
        raise ConfigError(f"{argv[0]}: {_first_line(err).rstrip('.')}; fix the setting it names in the "
                          "config or with --SECTION.KEY VALUE") from None


def _unknown_trainer_class(err: Exception) -> Optional[ConfigError]:
    """One line for a callback or logger class that jsonargparse cannot import (``--trainer.callbacks+=ModelChekpoint``:
    "Expected a path but ... Expected a dot import path string"), with Lightning's nearest; None for other errors."""
    found = re.search(r'Parser key "trainer\.(callbacks|logger)":.*Expected a dot import path string: ([\w.]+)',
                      str(err), re.S)
    if found is None:
        return None
    kind, module = ("callback", pl.callbacks) if found[1] == "callbacks" else ("logger", pl.loggers)
    close = difflib.get_close_matches(found[2].rpartition(".")[2], module.__all__, n=1, cutoff=0.6)
    meant = f"did you mean {close[0]}? " if close else ""
    return ConfigError(f"trainer.{found[1]}: no {kind} class named {found[2]}; {meant}give one of "
                       f"{module.__name__}'s classes by name, or a class path (package.module.Class)")


# What jsonargparse's "Expected a <class 'int'>" asks for, in a user's words.
_TYPE_WORDS = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text"}


def _wrong_type(err: Exception, argv: list[str]) -> Optional[ConfigError]:
    """One line for a value of the wrong type, naming the option as typed (or the config's setting), its value and
    what it takes; None for any other error."""
    found = _expected_values(str(err))
    if found is None:
        return None
    keys, value, wanted = found
    setting = ".init_args.".join(keys)  # a class's own key: model.init_args.lr, trainer.callbacks.init_args.mode
    typed = {f"--{setting}", f"--{keys[0]}.{keys[-1]}"}
    option = next((arg.partition("=")[0] for arg in argv if arg.partition("=")[0] in typed), None)
    where = f"{option} {value}" if option else f"{setting} {value} in the config"
    return ConfigError(f"{where}: give {wanted}")


def _expected_values(text: str) -> Optional[tuple[list[str], str, str]]:
    """The keys (outer, then a class's own), the given value and what is wanted, in words, of jsonargparse's error
    when each of its complaints is "Expected a <class 'T'>" of a type in ``_TYPE_WORDS`` or "Expected a
    typing.Literal[...]"; None otherwise."""
    named = _CLASS_PROBLEM.search(text)  # a union over classes: the named class's own complaint
    text = text[:named.end()] if named else text
    keys = re.findall(r'Parser key "([\w.]+)"', text)
    value = re.search(r"(?:Given|Got) value: (.*)", text)
    complaints = [line.strip().lstrip("- ") for line in (named[3] if named else text).splitlines()]
    complaints = [line for line in complaints
                  if line and not line.startswith(_NOISE) and not re.fullmatch(r'Parser key "[\w.]+":', line)]
    types = [re.fullmatch(r"Expected a <class '(\w+)'>(?:\. Got value: .*)?", line) for line in complaints]
    choices = [re.fullmatch(r"Expected a typing\.Literal\[(.*)\](?:\. Got value: .*)?", line) for line in complaints]
    if (not 0 < len(keys) <= 2 or value is None or not complaints
            or not all((t and t[1] in _TYPE_WORDS) or c for t, c in zip(types, choices))):
        return None
    wanted = [_TYPE_WORDS[t[1]] for t in types if t]
    literals = [str(v) for c in choices if c for v in ast.literal_eval(f"[{c[1]}]")]
    if literals:
        wanted.append(f"one of {', '.join(dict.fromkeys(literals))}")
    return keys, value[1], ", or ".join(dict.fromkeys(wanted))


def _unaccepted_option_hint(err: Exception, subcommand: str) -> str:
    """For jsonargparse's "Problem with given class_path 'C': Option 'O' is not accepted", C's nearest argument to
    O and where C's arguments are listed (``--help`` lists the task's, not a data module's); else ``--help``."""
    problem = _class_problem(err)
    found = re.search(r"Option '(\w+)' is not accepted", problem[1]) if problem else None
    cls = _imported(problem[0]) if found else None
    if cls is None:
        return f"; see `visattn {subcommand} --help`"
    close = difflib.get_close_matches(found.group(1), keyword_names(cls.__init__) or [], n=3, cutoff=0.5)
    section = re.match(r'Parser key "([\w.]+)"', str(err))  # also "trainer.callbacks"
    section = section.group(1) if section else "model"
    meant = f"did you mean {' or '.join(close)}? " if close else ""
    return f"; {meant}`visattn {subcommand} --{section}.help {problem[0]}` lists what it takes"


def _visattn_cause(err: BaseException) -> Optional[VisattnError]:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, VisattnError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


# The modules of the tasks and data modules a config may name by class name alone (ImageClassifier), as
# LightningCLI resolves such names among the classes imported.
TASK_MODULES = ("visattn.tasks.classification", "visattn.tasks.captioning", "visattn.tasks.detection",
                "visattn.data.datamodules", "visattn.data.caption_datamodules", "visattn.data.detection")


def _task_links(argv: list[str]) -> tuple[str, ...]:
    """``linked_data_attributes`` of the task class the config (or a ``--model.class_path`` override) names."""
    class_path = None
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--") else [arg])]
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--config", "-c"):
            class_path = _config_model_class(Path(value)) or class_path
        elif flag in ("--model", "--model.class_path"):
            class_path = value
    return tuple(getattr(config_task(class_path), "linked_data_attributes", ()) if class_path else ())


def _root_moved(argv: list[str]) -> bool:
    """Whether ``trainer.default_root_dir`` comes from the command line or from a config that names no checkpoint or
    log folder of its own (a second ``--config`` moving the run): a config that names its folders and its root beside
    them chose them all, and was warned about on every run."""
    if _typed_values(argv, ("--trainer.default_root_dir",)):
        return True
    trainers = [(read_config(Path(value)) or {}).get("trainer") or {}
                for value in _typed_values(argv, ("--config", "-c")) if Path(value).is_file()]
    # a file of trainer settings given to --trainer (after the configs, as its settings apply after theirs)
    trainers += [_read_yaml(Path(value), flag="--trainer") for value in _typed_values(argv, ("--trainer",))
                 if Path(value).is_file()]
    setting = [trainer for trainer in trainers if isinstance(trainer, dict) and "default_root_dir" in trainer][-1:]
    return bool(setting) and not ({"callbacks", "logger"} & setting[0].keys())


def _typed_values(argv: list[str], options: Sequence[str]) -> tuple[str, ...]:
    """The values ``argv`` gives any of ``options`` (``--option VALUE`` or ``--option=VALUE``)."""
    values = []
    for k, arg in enumerate(argv):
        option, equals, value = arg.partition("=")
        if option in options:
            values += [value] if equals else argv[k + 1:k + 2]
    return tuple(values)


def _model_overrides(argv: list[str]) -> tuple[str, ...]:
    """The model ``init_args`` keys ``argv`` sets (``--model.init_args.KEY`` or ``--model.KEY``), dotted for keys
    inside one (``model_kwargs.depth``)."""
    typed = (re.fullmatch(r"--model\.(?:init_args\.)?(\w+(?:\.\w+)*)(=.*)?", arg) for arg in argv)
    return tuple(match[1] for match in typed if match and match[1].partition(".")[0] not in ("class_path", "init_args",
                                                                                           "dict_kwargs"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping, as YAML 1.2 does (PyYAML and jsonargparse
    keep the last: a second ``model:`` block trained another model, the first block's settings dropped unsaid)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[tuple[str, Any], int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # keys after a << merge override the merged ones, as YAML means them to
            key = self.construct_object(key_node)
            if (type(key).__name__, key) in first_line:
                raise yaml.MarkedYAMLError(problem=f"key {key!r} given twice, first at line "
                                                   f"{first_line[type(key).__name__, key]}, again",
                                           problem_mark=key_node.start_mark)
            first_line[type(key).__name__, key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _config_model_class(path: Path) -> Optional[str]:
    """The ``model: class_path`` of the config file ``path`` (see :func:`read_config`)."""
    settings = read_config(path)
    model = settings.get("model") if settings is not None else None
    return model.get("class_path") if isinstance(model, dict) else None


def _read_yaml(path: Path, *, flag: str) -> Any:
    """The YAML file ``path`` that ``flag`` gives: a regular file, UTF-8, each key once; one line naming ``flag`` and
    the file where it is not. OSError where it cannot be read."""
    if path.exists() and not path.is_file():  # a pipe (a shell's <(...)) reads once, for visattn, or never ends
        raise ConfigError(f"{flag} {path}: not a regular file (a pipe, socket or device), which LightningCLI cannot "
                          "read after visattn; save the config to a file and give its path")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:  # jsonargparse's own read ends in a traceback
        raise ConfigError(f"{flag} {path}: not UTF-8 text; give a YAML config saved as UTF-8") from None
    except yaml.YAMLError as err:  # LightningCLI names the first --config, whichever file it is, and no line
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{flag} {path}: not valid YAML ({getattr(err, 'problem', None) or 'unreadable'}{where}); "
                          "mend the file") from None


def _no_config(err: ArgumentError, argv: list[str]) -> Optional[ConfigError]:
    """For a command given no ``--config``, whose model or data LightningCLI then lacks ("the following arguments are
    required: fit.data, fit.model", or a data option refused by the base class LightningDataModule), the one line
    saying to give one; None for any other error."""
    subcommand = argv[0]
    if _typed_values(argv, ("--config", "-c")):
        return None
    lacking = re.search(rf"arguments are required: {subcommand}\.(data|model)\b", str(err)) \
        or re.search(r'"(data|model)": Lightning(DataModule|Module): ', _first_line(err))
    if lacking is None:
        return None
    return ConfigError(f"{subcommand}: give --config CONFIG, the YAML file naming the model, data and trainer "
                       f"(`visattn configs` lists the shipped ones; e.g. `visattn {subcommand} --config "
                       "configs/classification/demo_cbam_fmnist.yaml`)")


def _refuse_model_names(argv: list[str]) -> None:
    """A registered model name or ARCH.TAG given to ``--model``, which takes a task class (jsonargparse read
    ``se_resnet20_cifar.fmnist`` as a module path: "No module named 'se_resnet20_cifar'"), is one line saying where a
    model name goes: to a config's ``model_name``, or to the command that runs it on files."""
    from ..registry import is_model, list_pretrained, model_task

    given = [(option, value) for option in ("--model", "--model.class_path") for value in _typed_values(argv, [option])]
    # a file of the model section's settings is no model name, even where its stem is one, nor is a class of a
    # module that imports (a user's resnet18.py)
    named = [(option, value) for option, value in given
             if not (config_file_name(value) or Path(value).expanduser().exists() or _importable(value))
             and is_model(value)]
    if not named:
        return
    option, value = named[0]
    arch, tag = split_model_name(value)
    verb = {"detection": "detect", "captioning": "caption"}.get(model_task(arch), "classify")
    weighted = tag is not None or any(split_model_name(name)[0] == arch for name in list_pretrained())
    files = f"{verb} image files with `visattn {verb} FILES --model {value}`, or " if weighted else ""
    raise ConfigError(f"{option} {value}: `visattn {argv[0]}` runs a config's model on the config's data, and "
                      f"{option} takes the model's task class, not a model name; {files}run it from a config "
                      f"with --config CONFIG --model.init_args.model_name {value}")


def _importable(class_path: str) -> bool:
    module = class_path.rpartition(".")[0]
    try:
        return bool(module) and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that does not import, or an empty name part
        return False


def _check_section_files(argv: list[str]) -> None:
    """The files given to ``--trainer``, ``--data`` or ``--model`` (each a section's settings) read as ``--config``
    files do: jsonargparse kept the last of a key given twice, the first one's setting dropped unsaid."""
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--") else [arg])]
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--trainer", "--data", "--model") and Path(value).exists() and not Path(value).is_dir():
            try:
                _read_yaml(Path(value), flag=flag)
            except OSError:
                pass  # jsonargparse names a file it cannot read


def read_config(path: Path) -> Optional[dict[str, Any]]:
    """The settings of the config file ``path``, after the checks LightningCLI leaves to a traceback, a silent
    default or a hang: a regular file, UTF-8, YAML with each key once, settings under ``trainer:``. None where it
    cannot be read (LightningCLI names that)."""
    try:
        settings = _read_yaml(path, flag="--config")
    except OSError:
        return None  # LightningCLI reports unreadable configs with their own message
    if not isinstance(settings, dict):  # jsonargparse says only "Unexpected config:"
        what = "is empty" if settings is None else f"holds a YAML {type(settings).__name__}, not settings"
        raise ConfigError(f"--config {path} {what}; a config maps model:, data: and trainer: to their settings, "
                          "as the files in configs/ do")
    trainer = settings.get("trainer")
    if trainer is not None and not isinstance(trainer, dict):  # LightningCLI trained with its defaults, unsaid
        raise ConfigError(f"--config {path}: trainer: holds a YAML {type(trainer).__name__}, not settings; give it "
                          "its settings (max_epochs: 2, ...), as the files in configs/ do")
    for section in ("model", "data"):  # jsonargparse blamed the first --config, whichever file held it
        value = settings.get(section)
        if value is not None and not isinstance(value, (dict, str)):
            raise ConfigError(f"--config {path}: {section}: holds a YAML {type(value).__name__}, not settings; give "
                              "it a class_path and its init_args, as the files in configs/ do")
        # a file of the section's settings, which jsonargparse reads from beside the config: each key once too
        nested = next((file for file in (path.parent / value, Path(value)) if file.is_file()), None) \
            if isinstance(value, str) and value.endswith((".yaml", ".yml", ".json")) else None
        if nested is not None:
            _read_yaml(nested, flag=f"--config {path}: {section}:")
    return settings


# Lines of jsonargparse's multi-line errors that say nothing about what to fix.
_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:", "Given value:",
          "Expected a <class 'NoneType'>")

# The first entry of a jsonargparse union error naming a class (a callback's or logger's): its class path, and its
# lines, indented under it. The union's other entries say only that the value is no bool, None or base class.
_CLASS_PROBLEM = re.compile(r"^( *)- Problem with given class_path '([\w.]+)':\n((?:\1 +\S.*\n?)+)", re.M)


def _first_line(err: Exception) -> str:
    """jsonargparse's error folded onto one line, without the lines that only list type unions; of a union over
    classes, the named class's own complaint (``TensorBoardLogger: the following arguments are required: ...``)."""
    problem = _class_problem(err)
    if problem is None:
        return _folded(str(err)) or type(err).__name__
    key = re.match(r'Parser key ("[\w.]+"):', str(err))
    return f"{key[1] + ': ' if key else ''}{problem[0].rpartition('.')[2]}: {problem[1]}"


def _class_problem(err: Exception) -> Optional[tuple[str, str]]:
    """The class path and the folded complaint of the union error's entry naming a class; None without one."""
    found = _CLASS_PROBLEM.search(str(err))
    return (found[2], _folded(found[3])) if found else None


def _folded(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kept = [line for line in (line.lstrip("- ") for line in lines) if not line.startswith(_NOISE)]
    return " ".join(dict.fromkeys(kept)).replace("Parser key ", "")
