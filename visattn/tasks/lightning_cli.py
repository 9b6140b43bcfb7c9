"""LightningCLI front end for ``visattn fit|validate|test|predict --config FILE``.

Configs are flat YAML files (``configs/<task>/<experiment>.yaml``) naming the task and data
classes by ``class_path``. Values the data defines (``num_classes``, ``class_names``,
``preprocessing``) are linked into the model, so each is given once and lands in every
checkpoint, which is then enough to run inference.
"""
import sys
from typing import Any, Optional

import lightning.pytorch as pl
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ..errors import ConfigError, VisattnError


class VisattnCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in ("num_classes", "class_names", "preprocessing"):
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


# Lines of jsonargparse's multi-line errors that say nothing about what to fix.
_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:", "- Expected a <class 'NoneType'>")


def _first_line(err: Exception) -> str:
    """jsonargparse's error folded onto one line, without the lines that only list type unions."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    kept = [line.lstrip("- ") for line in lines if not line.startswith(_NOISE)]
    return " ".join(kept).replace("Parser key ", "") or type(err).__name__
