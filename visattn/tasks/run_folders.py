"""The folders a run writes (checkpoints, logs, the run's folder): an earlier run's ``metrics.csv`` is kept,
a ``trainer.default_root_dir`` that moves only some of them is warned of, and one that cannot be written is a one-line
error.
"""
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger

from ..errors import ConfigError, VisattnWarning
from ..fileio import FULL_ERRNOS, unique_paths


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
