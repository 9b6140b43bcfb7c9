"""A run that monitors a validation metric must validate and log it.

``validate`` without validation data, and a fit whose ModelCheckpoint or EarlyStopping monitors a ``val/`` metric it
would never see (no validation data, ``limit_val_batches 0``, ``check_val_every_n_epoch`` past ``max_epochs``) or that
the run does not log, are one line: checked before the run in its first process, and by the callbacks
:class:`MonitoredMetricCheck` and :class:`LaunchedDataCheck` once it runs.
"""
import difflib
import math
import re
import warnings
from typing import Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.utilities.model_helpers import is_overridden

from ..data.datamodules import SplitLoadersMixin
from ..errors import ConfigError, VisattnWarning


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
