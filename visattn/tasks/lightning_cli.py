"""LightningCLI front end for ``visattn fit|validate|test|predict --config FILE``.

Configs are flat YAML files (``configs/<task>/<experiment>.yaml``) naming the task and data
classes by ``class_path``. Values the data defines are linked into the model, so each is given
once and lands in every checkpoint, which is then enough to run inference. Which values depends
on the task: its class lists them in ``linked_data_attributes`` (a classifier takes
``num_classes``, ``class_names`` and ``preprocessing``; a captioner takes its vocabulary).
"""
import importlib
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

import lightning.pytorch as pl
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ..errors import ConfigError, VisattnError


class VisattnCLI(LightningCLI):
    def __init__(self, *args: Any, linked_data_attributes: tuple[str, ...] = (), **kwargs: Any) -> None:
        self.linked_data_attributes = linked_data_attributes
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in self.linked_data_attributes:
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")

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
            kwargs["callbacks"] = [*callbacks, RichProgressBar()]
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
_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:", "- Expected a <class 'NoneType'>")


def _first_line(err: Exception) -> str:
    """jsonargparse's error folded onto one line, without the lines that only list type unions."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    kept = [line.lstrip("- ") for line in lines if not line.startswith(_NOISE)]
    return " ".join(kept).replace("Parser key ", "") or type(err).__name__
