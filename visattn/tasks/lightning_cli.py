"""LightningCLI front end for ``visattn fit|validate|test|predict --config FILE``.

Configs are flat YAML files (``configs/<task>/<experiment>.yaml``) naming the task and data
classes by ``class_path``. Values the data defines are linked into the model, so each is given
once and lands in every checkpoint, which is then enough to run inference. Which values depends
on the task: its class lists them in ``linked_data_attributes`` (a classifier takes
``num_classes``, ``class_names`` and ``preprocessing``; a captioner takes its vocabulary).

Every run gets :class:`SafeCheckpointIO` unless its config names another ``CheckpointIO``: checkpoints
are written crash-safely and read without unpickling code, a checkpoint for another model is a
one-line error, and ``fit --ckpt_path`` resumes from the newest good checkpoint when the one named
is damaged. Every run also gets :class:`RandomStateCheckpoint`, so a resumed run draws the same
batches as one that never stopped. ``validate|test|predict --ckpt_path best`` finds the best checkpoint
of the config's monitored ``ModelCheckpoint`` on disk, so it works in a process that did not train.
"""
import glob
import importlib
import logging
import random
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import yaml

import lightning.pytorch as pl
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins import CheckpointIO, TorchCheckpointIO

from ..errors import ConfigError, VisattnError, WeightsError
from ..fileio import atomic_path
from ..pretrained import check_state_dict
from .classification import read_checkpoint

log = logging.getLogger(__name__)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written crash-safely and read weights-only.

    Saving goes through :func:`visattn.fileio.atomic_path` (temp file, fsync, ``os.replace``): a
    run killed mid-write leaves the previous checkpoint whole. Loading uses
    ``torch.load(weights_only=True)``, so a hostile pickle runs nothing, and a damaged file or one
    that does not fit ``module`` is a one-line :class:`WeightsError` naming it.

    Args:
        module: the LightningModule the checkpoints belong to; loads check their keys and shapes.
        resume_fallback: when the checkpoint asked for is damaged, warn and load the newest other
            ``*.ckpt`` beside it that reads (``visattn fit`` turns this on).
    """

    def __init__(self, *, module: Optional[torch.nn.Module] = None, resume_fallback: bool = False) -> None:
        super().__init__()
        self.module = module
        self.resume_fallback = resume_fallback

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote filesystems: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a writer that was killed
            stale.unlink(missing_ok=True)

    def load_checkpoint(self, path: Any, map_location: Optional[Callable] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        path = Path(path)
        try:
            checkpoint = read_checkpoint(path)
        except WeightsError as err:
            if not self.resume_fallback or not path.is_file():
                raise
            path, checkpoint = _newest_good_checkpoint(path, err)
        if self.module is not None:
            check_state_dict(self.module, checkpoint["state_dict"], strict=getattr(self.module, "strict_loading", True),
                             source=path, fix="use a checkpoint of the model and model_kwargs this config builds")
        return checkpoint


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
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    monitored = [c.init_args for c in callbacks
                 if getattr(getattr(c, "init_args", None), "monitor", None) and getattr(c.init_args, "dirpath", None)]
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


class RandomStateCheckpoint(Callback):
    """Keeps the Python, NumPy and torch (CPU and CUDA) random states in every checkpoint and restores
    them on resume, so the batches after a resume are those of an uninterrupted run.

    Augmentation pipelines that own a generator (visattn's recipes) are reseeded on resume instead, so
    their draws differ. A resumed run starts with a sanity-check validation that an uninterrupted run
    does not have at that point; it leaves the states as it found them. The states are stored as
    tensors and tuples, so checkpoints still load with ``weights_only=True``.
    """

    def __init__(self) -> None:
        self._before_sanity_check: dict[str, Any] = {}

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_sanity_check = self.state_dict()

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.load_state_dict(self._before_sanity_check)

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        return {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.copy()), position, has_gauss, gauss),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy(), position, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class VisattnCLI(LightningCLI):
    def __init__(self, *args: Any, linked_data_attributes: tuple[str, ...] = (), **kwargs: Any) -> None:
        self.linked_data_attributes = linked_data_attributes
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in self.linked_data_attributes:
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        # Lightning resolves "best" only in the process that trained; after that it raises.
        if subcommand not in (None, "fit") and self.config[subcommand].get("ckpt_path") == "best":
            callbacks = self.config[subcommand].trainer.get("callbacks")
            self.config[subcommand]["ckpt_path"] = str(_best_checkpoint(callbacks))
        # LightningCLI (2.6) reads an explicit --ckpt_path file for its hyperparameters before building
        # anything; a damaged file must give our one-line error, or, for fit, the fallback at load time.
        try:
            super()._parse_ckpt_path()
        except Exception:
            path = self.config[self.config.subcommand].get("ckpt_path")
            try:
                read_checkpoint(Path(path))
            except WeightsError:
                if self.config.subcommand != "fit":
                    raise
                return  # SafeCheckpointIO warns and resumes from the newest good checkpoint
            raise

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            # jsonargparse wraps errors raised while building the model or data; surface ours as they are.
            cause = _visattn_cause(err)
            if cause is not None:
                raise cause from None
            raise ConfigError(f"config: {_first_line(err)}; check the model and data sections") from None

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        # Rich progress bar by default; a config can still pick another bar or turn bars off.
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks = [*callbacks, RichProgressBar()]
        if not any(isinstance(c, RandomStateCheckpoint) for c in callbacks):
            callbacks = [*callbacks, RandomStateCheckpoint()]
        kwargs["callbacks"] = callbacks
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        # SafeCheckpointIO by default, unless the config chose a CheckpointIO (as a plugin or in its strategy).
        strategy_io = getattr(config.get("strategy"), "_checkpoint_io", None)
        if not any(isinstance(p, CheckpointIO) for p in plugins) and strategy_io is None:
            checkpoint_io = SafeCheckpointIO(module=self.model, resume_fallback=self.subcommand == "fit")
            kwargs["plugins"] = [*plugins, checkpoint_io]
        return super().instantiate_trainer(**kwargs)


def run_lightning_cli(argv: list[str]) -> VisattnCLI:
    try:
        return VisattnCLI(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=None if argv == sys.argv[1:] else argv,  # LightningCLI warns when both are given
            parser_kwargs={"exit_on_error": False},
            save_config_kwargs={"overwrite": True},
            linked_data_attributes=_task_links(argv),
        )
    except ArgumentError as err:
        raise ConfigError(f"{' '.join(argv[:3])}: {_first_line(err)}; see `visattn {argv[0]} --help`") from None


def _visattn_cause(err: BaseException) -> Optional[VisattnError]:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, VisattnError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _task_links(argv: list[str]) -> tuple[str, ...]:
    """``linked_data_attributes`` of the task class the config (or a ``--model.class_path`` override) names."""
    class_path = None
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--") else [arg])]
    for flag, value in zip(argv, argv[1:]):
        if flag == "--config":
            class_path = _config_model_class(Path(value)) or class_path
        elif flag in ("--model", "--model.class_path"):
            class_path = value
    if class_path is None or "." not in class_path:
        return ()
    module, _, name = class_path.rpartition(".")
    try:
        task = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return ()  # LightningCLI reports the bad class_path itself
    return tuple(getattr(task, "linked_data_attributes", ()))


def _config_model_class(path: Path) -> Optional[str]:
    try:
        model = (yaml.safe_load(path.read_text()) or {}).get("model")
    except (OSError, yaml.YAMLError, AttributeError):
        return None  # LightningCLI reports unreadable configs with their own message
    return model.get("class_path") if isinstance(model, dict) else None


# Lines of jsonargparse's multi-line errors that say nothing about what to fix.
_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:", "Given value:",
          "- Expected a <class 'NoneType'>")


def _first_line(err: Exception) -> str:
    """jsonargparse's error folded onto one line, without the lines that only list type unions."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    kept = [line.lstrip("- ") for line in lines if not line.startswith(_NOISE)]
    return " ".join(kept).replace("Parser key ", "") or type(err).__name__
