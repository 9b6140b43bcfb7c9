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

This module holds :class:`VisattnCLI`, its parser and :func:`run_lightning_cli`; the parts they use live beside it in
``visattn.tasks``: ``checkpoint_io``, ``checkpoint_paths``, ``setting_checks``, ``validation_checks``,
``callback_checks``, ``run_folders``, ``config_files``, ``cli_arguments``, ``cli_errors``, ``cli_callbacks`` and
``prediction_writer``. Their public names are importable from here too, as configs and saved ``config.yaml`` files
name them (``visattn.tasks.lightning_cli.JsonPredictionWriter``).
"""
import argparse
import contextlib
import copy
import difflib
import enum
import importlib.util
import logging
import math
import os
import re
import signal
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional

import lightning.pytorch as pl
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..errors import WORKERS_STOPPED, ConfigError, VisattnError, VisattnWarning, WeightsError
from ..fileio import claim_folder, prepare_output_dir, stdout_closed
from ..inference.checkpoints import read_checkpoint
from ..pretrained import checkpoint_follows, scored_as_built
from .callback_checks import (_check_checkpoint_names, _keyed_apart, _refuse_callbacks_the_task_cannot_serve,
                              _refuse_logging_callbacks_without_logger, _refuse_monitors_the_wrong_way,
                              _refuse_unsaved_last_epochs)
from .checkpoint_io import SafeCheckpointIO
from .checkpoint_paths import (_check_checkpoint_model, _keep_given_settings, _newest_resumable,
                               _refuse_overrides_the_optimizer_restores, _resolve_ckpt_path, _resume_option,
                               _resumed_checkpoint)
from .cli_arguments import (_model_overrides, _refuse_model_names, _root_moved, _task_links, _typed_values,
                            _with_shipped_configs)
from .cli_callbacks import RandomStateCheckpoint, SaveConfigBesideEarlier, StopAfterSigterm
from .cli_errors import (_building_error, _first_line, _late_trainer_error, _named_in_model_kwargs, _no_config,
                         _trainer_error, _unaccepted_option_hint, _unknown_trainer_class, _visattn_cause, _wrong_type)
from .config_files import TASK_MODULES, _check_section_files, _imported, config_task, read_config
from .prediction_writer import JsonPredictionWriter
from .progress import EpochLines, TerminalProgressBar, interactive_output, logs_where, saved_where
from .run_folders import _keep_earlier_metrics, _output_error, _warn_of_folders_elsewhere, _written_folders
from .setting_checks import (_check_channels, _check_model_name, _check_settings, _check_task_data, _check_training,
                             _refuse_half_weights_on_cpu, _refuse_linked_overrides, _refuse_sync_batchnorm_on_cpu,
                             _warn_of_random_timm_weights)
from .validation_checks import (LaunchedDataCheck, MonitoredMetricCheck, _check_monitored_validation,
                                _missing_validation_data, _validating_nothing)

# Also the names that moved out of this module, which configs, saved config.yaml files and code still name here.
__all__ = ["COMMAND_DESCRIPTIONS", "TASK_MODULES", "Interrupted", "JsonPredictionWriter", "LaunchedDataCheck",
           "MonitoredMetricCheck", "RandomStateCheckpoint", "SafeCheckpointIO", "SaveConfigBesideEarlier",
           "StopAfterSigterm", "VisattnCLI", "config_task", "plain_help", "read_config", "run_lightning_cli"]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a Lightning command, or with ``terminated`` SIGTERM, which Lightning stops the run for at its next
    step; ``resume_from``: the ``--ckpt_path`` that resumes the run (``last``, or the file of a run that keeps no last
    checkpoint), None when it saved none; ``steps_lost`` optimizer steps after that checkpoint, which a resumed run
    trains again."""

    def __init__(self, resume_from: Optional[str] = None, *, terminated: bool = False, steps_lost: int = 0,
                 output_closed: bool = False) -> None:
        super().__init__()
        self.resume_from, self.terminated, self.steps_lost = resume_from, terminated, steps_lost
        self.output_closed = output_closed  # the reader of standard output went away (`visattn fit ... | head`)


def _first_process() -> bool:
    """Whether this is the run's first process: Lightning starts the others as this command again."""
    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"


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


# LightningCLI's sections that every visattn run refuses, naming the task's own settings.
_REFUSED_SECTIONS = ("optimizer", "lr_scheduler")

_SECTION_TITLES = {"model": "The task the config names under model", "data": "The data the config names under data"}


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
            refused = [a for a in group._group_actions if a.dest.partition(".")[0] in _REFUSED_SECTIONS]
            for action in refused:
                action.help = argparse.SUPPRESS
            if refused and len(refused) == len(group._group_actions):
                group.title = group.description = None
        # Titled from the base classes' docstrings, they read "<class '...LightningModule'>" and "A DataModule
        # standardizes ... The main advantage is", one sentence cut off, wider than a terminal.
        for section, title in _SECTION_TITLES.items():
            if section in parser.groups:
                parser.groups[section].title = title

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
        for key in _REFUSED_SECTIONS:
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

    def after_fit(self) -> None:
        # Under Rich's bar too, which had ended a terminal's fit with no word of the files (a run without a progress
        # display, enable_progress_bar false, stays quiet)
        if self.trainer.progress_bar_callback is not None and self.trainer.is_global_zero:
            print(saved_where(self.trainer), flush=True)

    def after_validate(self) -> None:
        self._say_where_scores_went()

    def after_test(self) -> None:
        self._say_where_scores_went()

    def _say_where_scores_went(self) -> None:
        """Lightning's table of a validate's or test's scores names no file, though the run's logger wrote them."""
        logs = logs_where(self.trainer)
        if logs and self.trainer.is_global_zero:
            print(logs, flush=True)

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
        if config.get("fast_dev_run"):
            # Lightning's default ModelCheckpoint, which saves nothing then, had warned of the earlier checkpoints in
            # its folder, and the run ended naming that folder as where its checkpoints went
            kwargs["enable_checkpointing"] = False
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
            callbacks = [*callbacks, TerminalProgressBar() if interactive_output() else EpochLines()]
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
        """``resume_from``: the checkpoint the run left to resume from, only this run's (a fresh fit refuses folders
        that hold an earlier run's, and Lightning's default folder is the run's own); ``steps_lost``: the steps it
        trained after that one (a stop mid-epoch loses them)."""
        newest = _newest_resumable(Path(c.dirpath) for c in self.trainer.checkpoint_callbacks
                                   if getattr(c, "dirpath", None))
        if newest is None or not newest.is_file():
            return {}
        try:
            saved_at = read_checkpoint(newest, lazy=True).get("global_step")
        except (VisattnError, OSError):  # said when it is resumed
            saved_at = None
        lost = self.trainer.global_step - saved_at if isinstance(saved_at, int) else 0
        return {"resume_from": _resume_option(newest), "steps_lost": max(lost, 0)}

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
            if isinstance(exit.__context__, BrokenPipeError):  # Rich's console, writing to a closed pipe, exits with 1
                raise Interrupted(**self._stop_state(), output_closed=True) from None
            raise
        except BrokenPipeError:  # a line of visattn's own (an epoch's) to a closed pipe
            if not stdout_closed():  # another pipe or socket's: not ours to explain
                raise
            raise Interrupted(**self._stop_state(), output_closed=True) from None
        except MisconfigurationException as err:
            mapped = _overfit_share_error(err, self.trainer.overfit_batches)
            if mapped is None:
                raise
            raise mapped from None
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


def _overfit_share_error(err: MisconfigurationException, overfit: float) -> Optional[ConfigError]:
    """One line naming ``trainer.overfit_batches`` when its share of a loader's batches is none: Lightning sets the
    limits of training and validation batches to it, and its own line said to raise ``limit_val_batches``, which
    overfit_batches then set back."""
    found = re.search(r"`(train|val)_dataloader` but \S+ \* (\d+) < 1", str(err))
    if not overfit or found is None:
        return None
    loader = "training" if found[1] == "train" else "validation"
    return ConfigError(f"trainer.overfit_batches {overfit}: Lightning takes that share of the training and the "
                       f"validation batches, and {overfit} of this run's {found[2]} {loader} batch(es) is none; give a "
                       "number of batches instead, e.g. 2")


def _importer(err: ModuleNotFoundError) -> str:
    """The module whose import failed with ``err`` (the deepest frame outside Python's import machinery)."""
    names = [frame.f_globals.get("__name__", "") for frame, _ in traceback.walk_tb(err.__traceback__)]
    named = [name for name in names if name and not name.startswith("importlib")]
    return named[-1] if named else "the run"


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


class _VisattnParser(LightningArgumentParser):
    """Says ``visattn`` in every usage line, also those jsonargparse builds for ``--data.help CLASS`` (not
    ``cli.py`` or ``__main__.py`` under ``python -m``)."""

    def __init__(self, *args: Any, prog: str = "visattn", **kwargs: Any) -> None:
        super().__init__(*args, prog=prog, **kwargs)

    def format_help(self) -> str:
        return plain_help(super().format_help())

    def dump(self, cfg: Namespace, *args: Any, **kwargs: Any) -> str:
        """Keeps an ``optimizer`` or ``lr_scheduler`` the settings give: jsonargparse leaves out the options hidden
        from ``--help``, so ``--print_config`` printed a config training the task's AdamW where the command itself
        was refused."""
        given = [action for action in self._actions
                 if action.dest in _REFUSED_SECTIONS and cfg.get(action.dest) is not None]
        for action in given:
            action.help = None
        if "skip_none" in kwargs:
            # Lightning 2.6 still passes skip_none, which jsonargparse 4.49 renamed skip_unset: forwarded under the
            # old name, its deprecation warning would name this line as the caller.
            kwargs["skip_unset"] = kwargs.pop("skip_none")
        try:
            return super().dump(cfg, *args, **kwargs)
        finally:
            for action in given:
                action.help = argparse.SUPPRESS

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
              "visattn.tasks.classification.ImageClassifier` (or visattn.tasks.captioning.CaptioningTask, "
              "visattn.tasks.detection.DetectionTask) a task's settings.")
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
