"""The progress a run reports: Rich's bar on a terminal, a line per epoch where the output is no terminal (a slurm or
nohup log, ``> log.txt``, a pipe), and, either way, where a fit's checkpoints and logs went."""
from __future__ import annotations

import importlib.util
import os
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar


def interactive_output() -> bool:
    """Whether the progress bar draws on a terminal (or in a notebook with ipywidgets), where Rich's bar redraws in
    place; not on a ``TERM=dumb`` one (Emacs' shell, some CI consoles), nor in a notebook without ipywidgets, where
    Rich drew the bar only once the run had ended (in the notebook, after a warning to install ipywidgets)."""
    from rich.console import Console

    console = Console()  # as Lightning's RichProgressBar makes its own: stdout, and Rich's FORCE_COLOR and TTY rules
    return console.is_interactive or (console.is_jupyter and importlib.util.find_spec("ipywidgets") is not None)


class TerminalProgressBar(RichProgressBar):
    """Lightning's Rich bar, less ``v_num``, the logger's version, which it formatted as a metric ("v_num: 0.000"); the
    fit's last line names the logs folder instead, and :class:`EpochLines` leaves it out too."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class EpochLines(ProgressBar):
    """One plain line as each training epoch ends, with the metrics a bar shows; the progress bar of a run whose
    output is no terminal.

    Rich's bar, Lightning's default, draws in a log only once the run has ended, and then only the last epoch, so a
    killed job's log showed no epoch at all; TQDM's fills a log with carriage-return frames."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._epoch_started = time.monotonic()
        self._validated = False  # this epoch: else the line leaves out the last validation's scores

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        print(*args, **kwargs, flush=True)  # a pipe's buffer had kept the lines until the run ended

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started, self._validated = time.monotonic(), False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled:
            return
        metrics = {name: value for name, value in self.get_metrics(trainer, pl_module).items()
                   if name != "v_num" and (self._validated or not name.startswith("val"))}
        shown = ", ".join(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
                          for name, value in metrics.items())
        # numbered as Rich's bar and the checkpoint names number them: from 0 to max_epochs - 1
        last = "" if trainer.max_epochs in (None, -1) else f"/{trainer.max_epochs - 1}"
        took = time.monotonic() - self._epoch_started
        self.print(f"epoch {trainer.current_epoch}{last}: {shown or 'no metric logged'} "
                   f"(step {trainer.global_step}, {took:.0f} s)")


def saved_where(trainer: pl.Trainer) -> str:
    """Where a fit's checkpoints and logs went, as its last line says: ``checkpoints in FOLDER; logs in FOLDER``."""
    folders = dict.fromkeys(str(c.dirpath) for c in trainer.checkpoint_callbacks
                            if isinstance(c, ModelCheckpoint) and c.dirpath)
    saved = f"checkpoints in {', '.join(folders)}" if folders else "no checkpoint saved"
    logs = logs_where(trainer)
    return f"{saved}; {logs}" if logs else saved


def logs_where(trainer: pl.Trainer) -> str:
    """``logs in FOLDER``, where the run's logger wrote its scores (``metrics.csv`` with Lightning's CSVLogger); ""
    for a run without a logger."""
    return f"logs in {os.path.abspath(trainer.log_dir)}" if trainer.loggers and trainer.log_dir else ""
