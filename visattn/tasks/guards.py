"""Guards that keep a training run from failing silently.

:class:`NonFiniteLossGuard` skips an update whose loss is NaN or infinite and stops the run, with a
message that says what to try, when that happens several steps in a row. :func:`skip_missing_batch`
lets evaluation steps pass over a batch whose image files were all broken, and :func:`any_process_scored`
tells epoch-end hooks, which every process reaches, whether there is a metric to log.
"""
import functools
import logging
import math
import random
import reprlib
import warnings
from typing import Any, Callable, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.strategies import Strategy
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torchmetrics import MeanMetric, Metric

from ..data.preprocessing import default_settings
from ..errors import ConfigError, VisattnError, VisattnWarning, outside_visattn
from ..inference.checkpoints import PACKAGE_MODULE_KEY, TASK_NOUNS
from ..registry import package_module
from .callback_checks import _refuse_callbacks_the_task_cannot_serve
from .optimization import (adamw_warmup_cosine, refuse_other_parameter_groups, upgrade_a_bare_cosine,
                           warn_of_a_changed_schedule, warn_of_a_finished_run, warn_of_a_starting_average)

log = logging.getLogger(__name__)


def skip_missing_batch(step: Callable[..., Any]) -> Callable[..., Any]:
    """A validation, test or predict step that returns ``None`` for a ``None`` batch: evaluation loaders
    leave broken image files out (:func:`visattn.data.image_folder.collate_present`), and a batch of
    only broken files is ``None``."""
    @functools.wraps(step)
    def guarded(self: pl.LightningModule, batch: Any, *args: Any, **kwargs: Any) -> Any:
        return None if batch is None else step(self, batch, *args, **kwargs)
    return guarded


def any_process_scored(task: pl.LightningModule, metric: Any) -> bool:
    """Whether any process updated ``metric`` (a torchmetrics metric) this epoch. Metrics are logged from epoch-end
    hooks under this test: a process whose share of images all failed to decode logs nothing from its steps,
    and the others would sync the metric alone (a gloo traceback); the sanity check may stop before any update."""
    return task.trainer.strategy.reduce_boolean_decision(bool(metric.update_count), all=False)


def batch_of_one_is_one_line(step: Callable[..., Any]) -> Callable[..., Any]:
    """A training step whose BatchNorm meets one value per channel (a batch of one image reaching a 1x1 map;
    BAM's pooled channel gate says so itself) fails in one line naming the batch size, not in torch's words."""
    @functools.wraps(step)
    def guarded(self: pl.LightningModule, *args: Any, **kwargs: Any) -> Any:
        try:
            return step(self, *args, **kwargs)
        except ValueError as err:
            if "Expected more than 1 value per channel when training" not in str(err):
                raise
            raise ConfigError("a training batch of one image: the model's BatchNorm normalises each channel over "
                              "the batch (on a 1x1 feature map) and needs 2 or more; set "
                              "data.init_args.batch_size to 2 or more") from None
    return guarded


class NonFiniteLossError(VisattnError, RuntimeError):
    """The loss was not finite for too many training steps in a row."""


class Float32Mean(MeanMetric):
    """A mean whose sums stay float32 when its task is cast to 16 bits: bf16-true casts the task with
    ``.to(torch.bfloat16)``, which torchmetrics lets reach the states (it stops ``.half()`` and ``.bfloat16()``
    alone), and a val/loss summed in bf16 read 1.921875 (1.926861 in float32)."""

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = "") -> nn.Module:
        this = super()._apply(fn, exclude_state)
        if this.mean_value.dtype in (torch.bfloat16, torch.float16):
            this.set_dtype(torch.float32)  # which comes back through here in float32
        return this


class TrainingLoss(Float32Mean):
    """A task's training loss as it logs it: ``train/loss`` at each logged step (and on the progress bar), and
    ``train/loss_epoch``, the mean over the epoch's samples of the finite losses (a step's value alone is one
    batch's; a skipped step's NaN or inf stays out of the mean, as its update does)."""

    def __init__(self) -> None:
        super().__init__(nan_strategy="ignore")

    def log(self, task: pl.LightningModule, loss: Tensor, batch_size: int) -> None:
        task.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        detached = loss.detach().float()
        self.update(torch.where(torch.isfinite(detached), detached, torch.nan), weight=batch_size)  # no sync
        task.log("train/loss_epoch", self, on_step=False, on_epoch=True)


class NonFiniteLossGuard:
    """Skips training steps whose loss is not finite; stops the run after ``max_bad_steps`` in a row.

    A task calls :meth:`watch` before its forward pass and returns :meth:`check`'s result from
    ``training_step``: ``None`` for a bad step, so Lightning skips its backward pass and leaves the
    weights as they were. Lightning still counts the step: ``global_step``, the learning-rate schedule
    and the EMA average advance by one. The forward pass may already have written NaN into BatchNorm
    running statistics, so the model's floating-point buffers are put back as they were. Each skipped
    step logs the total so far as ``train/skipped_steps``; under DDP every rank skips when any rank's
    loss is bad.

    Args:
        max_bad_steps: consecutive non-finite losses after which :class:`NonFiniteLossError` stops the run.
    """

    def __init__(self, max_bad_steps: int = 5) -> None:
        if max_bad_steps < 1:
            raise ConfigError(f"model.init_args.max_bad_steps={max_bad_steps!r}: give a whole number >= 1 (the "
                              "non-finite losses in a row that stop the run)")
        self.max_bad_steps = max_bad_steps
        self.bad_in_a_row = 0
        self.skipped = 0
        self._first_bad_step = 0  # the global step at which the bad steps in a row began
        self._saved_buffers: list[tuple[Tensor, Tensor]] = []
        self._skipping = False  # check() returned a zero loss in place of a bad one (DDP)
        self._gradless: list[nn.Parameter] = []  # parameters without a gradient before that loss's backward

    def watch(self, model: nn.Module) -> None:
        """Keep a copy of ``model``'s floating-point buffers (BatchNorm statistics) before a forward pass."""
        self._saved_buffers = [(b, b.detach().clone()) for b in model.buffers() if b.is_floating_point()]

    def check(self, task: pl.LightningModule, loss: Tensor) -> Optional[Tensor]:
        """``loss`` when it is finite on every rank; otherwise undo the buffer updates, log and return ``None``."""
        finite_here = finite = bool(torch.isfinite(loss.detach()).all())
        strategy = _strategy(task)
        if strategy is not None:
            finite = strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self.bad_in_a_row = 0
            return loss
        with torch.no_grad():
            for buffer, saved in self._saved_buffers:
                buffer.copy_(saved)
        # a process whose own loss is finite must not report that value as the bad one
        value = loss.detach().float().sum().item() if not finite_here else "not finite on another process"
        step = task.global_step
        self.bad_in_a_row += 1
        self.skipped += 1
        self._first_bad_step = step if self.bad_in_a_row == 1 else self._first_bad_step
        task.log("train/skipped_steps", float(self.skipped))
        if self.bad_in_a_row >= self.max_bad_steps:
            raise NonFiniteLossError(f"training stopped at step {step}: the loss was {value} for {self.bad_in_a_row} "
                                     f"steps in a row {self._likely_cause()}")
        log.warning("step %d: the loss is %s; skipped this update (%d in a row, the run stops at %d)",
                    step, value, self.bad_in_a_row, self.max_bad_steps)
        if strategy is None or strategy.world_size == 1:
            return None
        # Lightning refuses None from a step under DDP, whose backward must reach every parameter on every
        # rank: a zero loss through all of them. It adds nothing to gradients that earlier micro-batches of an
        # accumulation window left (one process keeps them too); drop_skipped_gradients removes the zeros it gives
        # parameters that had none.
        self._skipping = True
        return sum((p.sum() * 0.0 for p in task.parameters() if p.requires_grad), loss.new_zeros(()))

    def note_gradients(self, task: pl.LightningModule) -> None:
        """Before the backward pass (after Lightning zeroes gradients, which it does after the step): which
        parameters have no gradient, for :meth:`drop_skipped_gradients`."""
        if self._skipping:
            self._gradless = [p for p in task.parameters() if p.requires_grad and p.grad is None]
            self._skipping = False

    def drop_skipped_gradients(self) -> None:
        """After the backward pass of a step :meth:`check` skipped under DDP: no gradient where there was none
        before it, so the optimizer leaves those weights and their state as they were, as it does for a skipped
        step in one process. Gradients of earlier micro-batches of an accumulation window stay (they were
        dropped, so the window's good micro-batches updated nothing with several processes and did with one)."""
        for parameter in self._gradless:
            parameter.grad = None
        self._gradless = []

    def _likely_cause(self) -> str:
        if self._first_bad_step == 0:  # skipped steps update nothing: the weights are the starting ones
            return ("from the first step on, before any update (so the learning rate is not the cause): the model's "
                    "output or the data hold NaN or inf values; check trainer.precision (32-true is the safe one) and "
                    "the data")
        return ("(the learning rate may be too high, or the data hold NaN or inf values); lower the learning rate "
                "(model.init_args.lr), set trainer.gradient_clip_val (e.g. 1.0), or check the data")


def weight_average(model: nn.Module, decay: Optional[float]) -> Optional[AveragedModel]:
    """An exponential moving average of ``model``'s weights and float buffers (Polyak & Juditsky, 1992; timm's
    ``ModelEmaV3``), each step keeping ``decay`` of the average, with integer buffers (batch norm's
    ``num_batches_tracked``) copied; None for no ``decay``."""
    if not decay:
        return None
    if not 0 <= decay < 1:  # at 1 the average never moves, and validation would score the initial weights
        raise ConfigError(f"model.init_args.ema_decay={decay}: give a decay of at least 0 and below 1, e.g. 0.999, "
                          "or null for no average")
    ema = AveragedModel(model, multi_avg_fn=ExponentialAverageUpdate(decay), use_buffers=True)
    ema.requires_grad_(False)  # updated by averaging, never by gradients (and DDP must not wait for them)
    return ema


class ExponentialAverageUpdate:
    """torch's ``get_ema_multi_avg_fn(decay)`` as an object that pickles (``ddp_spawn`` sends the task to its
    processes, and torch's function, a closure, cannot be pickled), copying integer tensors as timm's
    ``ModelEmaV3`` does where torch's averages and truncates them."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    @torch.no_grad()
    def __call__(self, averaged: list[Tensor], current: list[Tensor], _: Any) -> None:
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):  # what foreach lerp takes
            torch._foreach_lerp_(averaged, current, 1 - self.decay)
        else:  # counts, as timm's ModelEmaV3 keeps them: an average truncated to int stayed at the first step's
            torch._foreach_copy_(averaged, current)


def quiet_the_note_of_modules_kept_in_eval(task: nn.Module) -> None:
    """Silence Lightning's note of modules in eval mode at the start of training when they are exactly those
    ``task.train()`` keeps there by design (a frozen encoder's, backbone's or norms'); a module left in eval mode
    besides them changes the count, and the note stands."""
    modes = {module: module.training for module in task.modules()}
    task.train()
    kept_in_eval = sum(not module.training for module in task.modules())
    for module, training in modes.items():
        module.training = training
    if kept_in_eval:
        warnings.filterwarnings("ignore", message=rf"Found {kept_in_eval} module\(s\) in eval mode at the start of "
                                                  "training")


class GuardedTask:
    """The hooks every visattn task shares, before its LightningModule base: the optimizer
    (:func:`~visattn.tasks.optimization.adamw_warmup_cosine`), a skipped step's gradients dropped (its
    ``loss_guard``, :class:`NonFiniteLossGuard`), the weight average (``ema``, :func:`weight_average`) updated
    and evaluated, the model and its average compiled (a task's ``compile`` switch), a resumed fit whose schedule
    changed warned about and one whose parameter groups changed refused, and DDP processes drawing apart."""

    loss_guard: NonFiniteLossGuard
    model: nn.Module
    ema: Optional[AveragedModel]  # set by the task; no class default, which would hide nn.Module's submodule

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation, testing and prediction use: the average when there is one, else the trained."""
        ema = getattr(self, "ema", None)
        return ema.module if ema is not None else self.model

    @property
    def example_input_array(self) -> Any:
        """What was set, else one blank image of the data's ``input_size`` in the weights' dtype, on which Lightning's
        model summary counts a forward's FLOPs and gives each module's input and output sizes (its table read 0
        FLOPs); none with ``compile``, which the summary's batch of one would compile once more."""
        given = self._example_input_array
        size = (self.hparams.get("preprocessing") or {}).get("input_size")
        if given is not None or size is None or self.hparams.get("compile"):
            return given
        return self.forward_arguments(torch.zeros(1, *size, dtype=self.dtype))

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self._example_input_array = example

    def forward_arguments(self, images: Tensor) -> Any:
        """``forward``'s arguments for a batch of ``images`` ``(B, C, H, W)``."""
        return images

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Lightning's note, at the first batch of a run with a data module, that the task's batch hook is used: the
        # classifier's and captioner's are meant to be (they check labels and token ids on the host).
        warnings.filterwarnings("ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule` "
                                                  r"but have passed in a `LightningDataModule`")
        if stage == "fit":
            quiet_the_note_of_modules_kept_in_eval(self)
            _refuse_callbacks_the_task_cannot_serve(self.trainer.callbacks, self)
        check_data_links(self, self.trainer.datamodule, stage)
        self.check_run(self.trainer, self.trainer.datamodule, stage)

    def check_run(self, trainer: pl.Trainer, datamodule: Optional[pl.LightningDataModule], stage: str) -> None:
        """One line for a setting of ``trainer`` or ``datamodule`` this task cannot ``stage`` with (``fit``, ...).
        ``setup`` calls it; ``visattn fit`` calls it first, before it writes the run's folder."""

    def configure_model(self) -> None:
        # nn.Module.compile compiles in place, so state-dict keys (and checkpoints) are those of the plain model.
        if self.hparams.get("compile"):
            for module in {id(m): m for m in (self.model, self.eval_model)}.values():
                module.compile()

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        super().backward(loss * self._short_window_scale(), *args, **kwargs)

    def _short_window_scale(self) -> float:
        """Lightning divides each batch's loss by ``accumulate_grad_batches``, the epoch's last, shorter window's
        too, whose gradient came out that many times too small (one batch under accumulation 4: a quarter, which
        changed what clipping clipped): that window's batches are scaled to a mean over its own length, as timm's
        train.py divides them."""
        trainer = self.trainer  # type: ignore[attr-defined]
        every, batches = trainer.accumulate_grad_batches, trainer.num_training_batches
        if every == 1 or not math.isfinite(batches):
            return 1.0
        short = int(batches) % every
        return every / short if short and trainer.fit_loop.epoch_loop.batch_idx >= int(batches) - short else 1.0

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Once per optimizer step (a batch that only accumulates steps nothing), and here rather than at batch
        # end, which Lightning reaches after the checkpoint callbacks': a step checkpoint held the average one
        # update behind its weights. A step whose loss was skipped updates no weight, so the average then
        # takes in the weights unchanged.
        if getattr(self, "ema", None) is not None:
            self.ema.update_parameters(self.model)

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        module = package_module(self.hparams.get("model_name"))
        if module is not None:  # loading it where that package is missing names what to install
            checkpoint[PACKAGE_MODULE_KEY] = module

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        ours = type(self).configure_optimizers is GuardedTask.configure_optimizers  # a task may build its own
        if ours and self._trainer is not None and self.trainer.state.fn == "fit":
            refuse_other_parameter_groups(self, checkpoint)
            upgrade_a_bare_cosine(checkpoint)

    def on_before_backward(self, loss: Tensor) -> None:
        self.loss_guard.note_gradients(self)

    def on_after_backward(self) -> None:
        self.loss_guard.drop_skipped_gradients()

    def on_fit_start(self) -> None:
        self._trained_this_fit = False
        # A validate, test or predict of this module before (a notebook's fit, validate, fit) left its metrics' states
        # as inference-mode tensors, which fit's updates in place refused ("Inplace update to inference tensor").
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()

    def on_train_start(self) -> None:
        self._trained_this_fit = True  # not called when a resumed run has already reached its end
        if self.trainer.is_global_zero:  # once per run, not once per DDP process
            warn_of_a_changed_schedule(self)
            warn_of_a_starting_average(self)
        if self.trainer.world_size > 1 and self.trainer.ckpt_path is None:  # a resume restores each process's states
            seed_apart(self.trainer.global_rank)

    def on_fit_end(self) -> None:
        # (fast_dev_run's one step may be what stopped it)
        if (self.trainer.ckpt_path and not self._trained_this_fit and self.trainer.is_global_zero
                and not self.trainer.fast_dev_run):
            warn_of_a_finished_run(self)


def check_data_links(task: pl.LightningModule, datamodule: Optional[pl.LightningDataModule], stage: str) -> None:
    """A visattn data module given to a Trainer of one's own must give the task what `visattn fit` links from it
    (``linked_data_attributes``): one line before the run when the task was built with other values (a head of
    another size; another class order, scored silently), or, for a fit, with none, which its checkpoints would
    record (loaded with classes '0', '1', ... and ImageNet's mean and std; a captioner's refused by
    ``load_captioner``). A fit without such a data module warns of what its checkpoints will lack."""
    name, links = type(task).__name__, getattr(task, "linked_data_attributes", ())
    if datamodule is None or getattr(datamodule, "task", None) != getattr(task, "task", None):
        missing = [key for key in getattr(task, "inference_records", ()) if task.hparams.get(key) is None]
        if stage == "fit" and missing and task.trainer.is_global_zero:  # once per run, not once per process
            warnings.warn(f"{name} was given no {' or '.join(missing)}, which its checkpoints record for inference "
                          f"(load_{TASK_NOUNS[task.task]}, `visattn evaluate`), else {_unrecorded(task, missing)}; "
                          f"pass {name}({', '.join(f'{key}=...' for key in missing)}) as your data has them",
                          VisattnWarning, stacklevel=outside_visattn())
        return
    differ = [key for key in links if getattr(datamodule, key, None) is not None
              and _plain(task.hparams.get(key)) != _plain(getattr(datamodule, key))
              and (stage == "fit" or task.hparams.get(key) is not None)]
    if differ:
        none = [key for key in differ if task.hparams.get(key) is None]
        reasons = "; ".join([f"{' and '.join(none)} not given"] * bool(none) + [
            f"{key} {reprlib.repr(task.hparams[key])} for {reprlib.repr(getattr(datamodule, key))}"
            for key in differ if key not in none])
        built = f"{name}(..., {', '.join(f'{key}=data.{key}' for key in links)}) where data is the data module"
        # A trained task's values are its training data's: rebuilt with these data's, it is scored as wrongly, unwarned
        fix = (f"build it with {built}, as `visattn fit` links them" if stage == "fit" else
               f"run it on data of its own {' and '.join(differ)}, or build it with {built}")
        raise ConfigError(f"{name}'s {' and '.join(differ)} {'is' if len(differ) == 1 else 'are'} not "
                          f"{type(datamodule).__name__}'s ({reasons}); {fix}")


def _unrecorded(task: pl.LightningModule, missing: list[str]) -> str:
    if task.task == "captioning":  # load_captioner takes no default preprocessing
        return "they are refused"
    assumed = ["its classes are named '0', '1', ..."] if "class_names" in missing else []
    if "preprocessing" in missing:  # the architecture's: CLIP's statistics for a CLIP tower, say
        assumed.append(f"images are prepared with {task.hparams.model_name}'s default {default_settings(task.model)}")
    return " and ".join(assumed)


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists, as a checkpoint's hyperparameters and a config's links may give either."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return [_plain(item) for item in value] if isinstance(value, (list, tuple)) else value


def refuse_cast_batches(trainer: pl.Trainer, why: str,
                        precisions: tuple[str, ...] = ("bf16-true", "16-true")) -> None:
    """One line before the run when ``trainer.precision`` is one of ``precisions``, which keep weights and
    batches in another dtype than float32, and ``why`` says this task cannot take: Lightning casts every
    float of a batch too."""
    precision = str(trainer.precision)
    if precision in precisions:
        raise ConfigError(f"trainer.precision {precision}: {why}; use trainer.precision bf16-mixed (16-bit "
                          "arithmetic, float32 weights) or 32-true")


def seed_apart(rank: int) -> None:
    """Reseed torch, NumPy and ``random`` with this process's seed plus ``rank``: ``seed_everything`` seeds
    every DDP process alike, so each drew the same dropout, drop-path and MixUp/CutMix numbers (and
    augmentations, with no DataLoader workers) for its own images. timm seeds its ranks apart the same way."""
    seed = (torch.initial_seed() + rank) % 2**64
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _strategy(task: pl.LightningModule) -> Optional[Strategy]:
    try:
        return task.trainer.strategy
    except RuntimeError:  # not attached to a Trainer, e.g. training_step called directly
        return None
