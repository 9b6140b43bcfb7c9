"""How every visattn task trains: AdamW over parameter groups (no weight decay on biases, norms and tokens; a slower
backbone; BEiT's layer-wise decay), stepped per batch through a linear warm-up and a cosine, and the checks a run's
schedule, groups and weight average get before it starts or resumes.
"""
import fnmatch
import math
import warnings
from typing import Any, Mapping, Optional

import lightning.pytorch as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from ..errors import ConfigError, VisattnWarning, is_number, outside_visattn
from ..models.vit import NO_WEIGHT_DECAY


def adamw_warmup_cosine(task: pl.LightningModule) -> dict[str, Any]:
    """AdamW over ``task.model`` with warm-up + cosine stepped per batch, from the task's ``lr``,
    ``weight_decay`` and ``warmup_epochs`` hyperparameters; shared by every visattn task."""
    optimizer = torch.optim.AdamW(task_parameter_groups(task), lr=task.hparams.lr)
    scheduler = warmup_cosine(optimizer, *_planned_schedule(task))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# The optimizer settings a task may have, what each is and a value to give, for the line refusing one that is
# negative or not finite (a YAML .nan or .inf reaches a task unchecked; a negative backbone_lr_scale made the backbone
# climb the loss).
_OPTIMIZER_SETTINGS = {"lr": ("a learning rate", "0.001"), "weight_decay": ("a weight decay", "0.05"),
                       "warmup_epochs": ("a warm-up", "1"),
                       "backbone_lr_scale": ("a backbone's share of the lr", "0.1")}


def check_optimizer_settings(settings: Mapping[str, Any]) -> None:
    """One line for a task's optimizer setting (``lr``, ``weight_decay``, ``warmup_epochs``, ``backbone_lr_scale``)
    that is negative or not finite."""
    for key, (what, example) in _OPTIMIZER_SETTINGS.items():
        value = settings.get(key)
        if is_number(value) and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"model.init_args.{key} {value}: {what} is a finite number of 0 or more; give e.g. "
                              f"{example}")


def task_parameter_groups(task: pl.LightningModule) -> list[dict[str, Any]]:
    """:func:`weight_decay_groups` of ``task.model`` with the task's ``weight_decay``, ``lr``, ``backbone_lr_scale``
    and ``layer_decay`` hyperparameters."""
    check_optimizer_settings(task.hparams)
    return weight_decay_groups(task.model, task.hparams.weight_decay, lr=task.hparams.lr,
                               backbone_lr_scale=task.hparams.get("backbone_lr_scale", 1.0),
                               layer_decay=task.hparams.get("layer_decay"))


def refuse_other_parameter_groups(task: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
    """One line when a resumed fit would group the parameters, or share the learning rate among the groups,
    otherwise than the checkpoint's optimizer did (another ``layer_decay`` or ``backbone_lr_scale``): torch's
    optimizer refused another grouping with a traceback, and restored the saved rates over other shares silently.
    ``visattn fit`` names such a setting from the checkpoint's hyperparameters before the run; this reads the
    optimizer's state, for runs started otherwise (``Trainer.fit(ckpt_path=...)``) and checkpoints that predate
    the setting."""
    states = checkpoint.get("optimizer_states") or [{}]
    saved = _group_shares([(group.get("name"), len(group["params"]), group.get("initial_lr", group.get("lr")))
                           for group in states[0].get("param_groups", [])])
    now = _group_shares([(group["name"], len(group["params"]), group.get("lr", task.hparams.lr))
                         for group in task_parameter_groups(task)])
    # Checkpoints from before the groups were named hold sizes only.
    if saved and (len(saved) != len(now) or any(
            name not in (None, other) or size != other_size or not math.isclose(share, other_share, rel_tol=1e-6)
            for (name, size, share), (other, other_size, other_share) in zip(saved, now))):
        path = task.trainer.ckpt_path
        raise ConfigError(f"--ckpt_path {path}: its run grouped the parameters as {_names(saved)}, this run's "
                          f"settings as {_names(now)}; resume with the settings it was saved with (layer_decay, "
                          f"backbone_lr_scale, and what trains: a detector's trainable_backbone_layers), or start a "
                          f"new run from its weights with --model.init_args.pretrained {path}")


def _group_shares(groups: list[tuple[Optional[str], int, Optional[float]]]) -> list[tuple[Optional[str], int, float]]:
    """Each group's learning rate as a share of the highest (1 for all when a rate is missing or 0)."""
    top = max((rate or 0 for _, _, rate in groups), default=0)
    return [(name, size, rate / top if top and rate else 1.0) for name, size, rate in groups]


def _names(groups: list[tuple[Optional[str], int, float]]) -> str:
    names = [f"{name or 'unnamed'} ({size}{'' if share == 1 else f', lr x{share:.3g}'})" for name, size, share in groups]
    return ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])}, ... ({len(names)} groups)"


def _planned_schedule(task: pl.LightningModule) -> tuple[int, int]:
    """This run's warm-up steps and total optimizer steps."""
    total = max(_scheduled_steps(task.trainer), 1)
    return min(int(task.hparams.warmup_epochs * _steps_per_epoch(task.trainer, total)), total - 1), total


def warn_of_a_starting_average(task: pl.LightningModule) -> None:
    """One line when the run is too short for its EMA: the average starts as a copy of the weights after the first
    step, which keep ``ema_decay ** (n - 1)`` of it after ``n`` steps, and it is what validation scores and the
    checkpoints hold (0.999 over a 39-step fine-tune keeps 96%: every validation at chance while the trained
    weights score 0.64; 0.9 over 10 steps keeps 39% and scores 0.325 against 0.600)."""
    decay = task.hparams.get("ema_decay")
    total = _planned_schedule(task)[1] if decay else 0
    if total < 2:
        return
    kept = decay ** (total - 1)
    if kept > 0.1:
        shorter = math.floor(0.01 ** (1 / (total - 1)) * 1000) / 1000  # leaves 1% of the first step's after the run
        warnings.warn(f"model.init_args.ema_decay {decay} over this run's {total} optimizer steps keeps {kept:.0%} of "
                      f"the first step's weights in the average that validation scores and the checkpoints hold; give "
                      f"about {shorter} for so short a run, or null for no average",
                      VisattnWarning, stacklevel=outside_visattn())


def upgrade_a_bare_cosine(checkpoint: dict[str, Any]) -> None:
    """A checkpoint's schedule of a run without warm-up as visattn saved it before 2026-12-02, a bare
    ``CosineAnnealingLR``, laid out as the :func:`warmup_cosine` built now (a warm-up of 0 steps, then that cosine,
    which goes on from the step it reached): resuming it was a ``KeyError: '_schedulers'`` traceback."""
    for index, state in enumerate(checkpoint.get("lr_schedulers") or []):
        if not isinstance(state, dict) or "_schedulers" in state or "T_max" not in state:
            continue
        groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in state["base_lrs"]]
        upgraded = warmup_cosine(torch.optim.SGD(groups), 0, state["T_max"]).state_dict()
        upgraded["_schedulers"][-1] = state
        upgraded["last_epoch"], upgraded["_last_lr"] = state["last_epoch"], state["_last_lr"]
        checkpoint["lr_schedulers"][index] = upgraded


def warn_of_a_changed_schedule(task: pl.LightningModule) -> None:
    """One line when a resumed fit's schedule (its length or batches per epoch) is not the one the checkpoint's
    run planned: the run continues the schedule it restores, whose cosine rises again after its planned end
    (a 4-epoch run resumed to 7 ends at 1.99e-3 of a 2e-3 peak)."""
    path = task.trainer.ckpt_path
    restored = task.lr_schedulers() if path else None
    if not isinstance(restored, SequentialLR) or not isinstance(restored._schedulers[-1], CosineAnnealingLR):
        return  # a fresh run, or a schedule visattn did not build
    warmup, total = _planned_schedule(task)
    saved_warmup, saved_cosine = restored._milestones[-1], restored._schedulers[-1].T_max
    if (saved_warmup, saved_cosine) != (warmup, max(total - warmup, 1)):
        saved_total = saved_warmup + saved_cosine
        warnings.warn(f"--ckpt_path {path}: its run planned {saved_total} optimizer steps ({saved_warmup} of warm-up), "
                      f"this one {total} ({warmup}); a resumed run continues the schedule it saved, whose cosine rises "
                      f"again after step {saved_total}; for another length or batch size, start a new run from the "
                      f"checkpoint's weights with --model.init_args.pretrained {path}",
                      VisattnWarning, stacklevel=outside_visattn())


def warn_of_a_finished_run(task: pl.LightningModule) -> None:
    """One line when a resumed fit trained nothing, its run having reached trainer.max_epochs or max_steps: Lightning
    says only "`Trainer.fit` stopped: `max_epochs=3` reached", exit 0, as for a run that trained."""
    path, trainer = task.trainer.ckpt_path, task.trainer
    warnings.warn(f"--ckpt_path {path}: its run had already reached its end (trainer.max_epochs {trainer.max_epochs}, "
                  f"max_steps {trainer.max_steps}; at step {trainer.global_step}), so this fit trained nothing; to "
                  f"train on, start a new run from its weights with --model.init_args.pretrained {path} (raising "
                  "max_epochs continues its schedule, whose cosine rises again from 0)",
                  VisattnWarning, stacklevel=outside_visattn())


def _scheduled_steps(trainer: pl.Trainer) -> int:
    """The run's optimizer steps, which the cosine decays over; one line when nothing bounds them: Lightning
    counts max_epochs -1 (or null with max_time) as infinite, and data of unknown length without max_steps as -1."""
    steps = trainer.estimated_stepping_batches  # this sets up the training batches too
    if math.isinf(steps) or steps < 0:
        raise ConfigError(f"trainer.max_epochs {trainer.max_epochs} and trainer.max_steps {trainer.max_steps} set no "
                          "length for the run, which the warm-up + cosine schedule needs (max_time alone does not); "
                          "set trainer.max_steps, or trainer.max_epochs for data of known length")
    return int(steps)


def _steps_per_epoch(trainer: pl.Trainer, total: int) -> float:
    """Optimizer steps in one epoch: from the epoch's batches, since ``max_steps`` may end the run
    before ``max_epochs`` does (or with none); from ``total`` for data of unknown length."""
    batches = trainer.num_training_batches
    if math.isinf(batches) and trainer.train_dataloader is None:  # max_epochs -1: Lightning loaded no data to count
        trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
    if math.isinf(batches):
        return total / max(trainer.max_epochs or 1, 1)
    return max(math.ceil(batches / trainer.accumulate_grad_batches), 1)


def weight_decay_groups(model: nn.Module, weight_decay: float, *, lr: Optional[float] = None,
                        backbone_lr_scale: float = 1.0, layer_decay: Optional[float] = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups: ``weight_decay`` on weights, none on biases, norms, position embeddings, tokens
    and what the model or a submodule lists in ``no_weight_decay()``.

    The groups are named (``decay``, ``no_decay``) for LearningRateMonitor's columns.
    With ``backbone_lr_scale != 1`` the backbone's parameters (detectors) get two more groups at
    ``lr * backbone_lr_scale``, as DETR trains its pretrained backbone ten times slower than its head:
    those named ``model.backbone_prefix`` (``backbone.`` when the model names none), which leaves out
    an FCOS's newly made FPN.
    With ``layer_decay`` (layer-wise learning-rate decay, BEiT's fine-tuning recipe) each layer of the model's
    ``group_matcher`` gets ``lr * layer_decay ** (layers above it)``, as timm's ``param_groups_layer_decay``
    scales them (groups ``layer_K_decay``, ``layer_K_no_decay``): the head learns at ``lr``, the stem slowest.
    """
    prefix = getattr(model, "backbone_prefix", "backbone.")
    undecayed = _listed_no_weight_decay(model)
    # A norm's gain and shift whatever their shape: a global-context block's LayerNorm over (C, 1, 1) has (C, 1, 1)
    normed = {id(param) for module in model.modules() if isinstance(module, _NORMS)
              for param in module.parameters(recurse=False)}
    layers = layer_ids(model) if layer_decay is not None else {}
    top = max(layers.values(), default=0)
    groups: dict[tuple[bool, int, bool], list[nn.Parameter]] = {} if layers else {(False, 0, True): [],
                                                                                  (False, 0, False): []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            # Biases, norm scales, position embeddings and tokens are 1-D, norms' or named so: no decay.
            decay = not (param.ndim <= 1 or id(param) in normed or name.rpartition(".")[2] == "bias"
                         or name.endswith(NO_WEIGHT_DECAY)
                         or any(fnmatch.fnmatch(name, pattern) for pattern in undecayed))
            backbone = backbone_lr_scale != 1.0 and name.startswith(prefix)
            groups.setdefault((backbone, layers.get(name, top), decay), []).append(param)
    if (backbone_lr_scale != 1.0 or layers) and lr is None:
        raise ConfigError("lr=None: backbone_lr_scale and layer_decay scale the base learning rate; pass lr")

    def group_lr(backbone: bool, layer: int) -> dict[str, float]:
        scale = (backbone_lr_scale if backbone else 1.0) * (layer_decay ** (top - layer) if layers else 1.0)
        return {"lr": lr * scale} if backbone or layers else {}

    # named, so that LearningRateMonitor's columns say which is which (lr-AdamW/no_decay, not pg1 and pg2)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0,
             # layer ids zero-padded, so that the learning-rate monitor's columns sort in layer order
             "name": f"{'backbone_' if backbone else ''}{f'layer_{layer:0{len(str(top))}d}_' if layers else ''}"
                     f"{'decay' if decay else 'no_decay'}", **group_lr(backbone, layer)}
            for (backbone, layer, decay), params in groups.items() if params or not backbone]


# Normalisation layers, subclasses included (timm's LayerNorm2d, BatchNormAct2d, GroupNorm1).
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _listed_no_weight_decay(model: nn.Module) -> set[str]:
    """The names and fnmatch patterns that ``model`` and its submodules list in ``no_weight_decay()`` (a Swin's
    relative position bias tables, a DeiT's distillation token, a LeViT's attention biases), each prefixed with
    the submodule's name: a captioner's timm encoder lists its own, which reading the outer model's alone had
    decayed. A module's list speaks for all inside it, as timm's optimizer factory reads only the model it is given
    (an XCiT lists its position embedding, not its attention's temperatures, which timm decays)."""
    if callable(getattr(model, "no_weight_decay", None)):
        return set(model.no_weight_decay())
    listed: set[str] = set()
    speaking: list[str] = []  # the submodules whose lists are read, to skip what is inside them
    for name, module in model.named_modules():
        if name and callable(getattr(module, "no_weight_decay", None)) and not any(
                name.startswith(f"{outer}.") for outer in speaking):
            speaking.append(name)
            listed |= {f"{name}.{pattern}" for pattern in module.no_weight_decay()}
    return listed


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Each parameter's layer, counted from the input (0), by the model's ``group_matcher``, as timm's
    layer-wise decay counts them; one line when the model has no matcher or all its parameters are one layer."""
    from timm.models import group_parameters

    if not callable(getattr(model, "group_matcher", None)):
        raise ConfigError(f"model.init_args.layer_decay: {type(model).__name__} has no group_matcher() to tell its "
                          "layers apart; leave layer_decay out")
    layers = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    if len(set(layers.values())) < 2:
        raise ConfigError(f"model.init_args.layer_decay: {type(model).__name__}'s parameters are all one layer, so "
                          "layer-wise decay would change nothing; leave layer_decay out")
    return layers


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LRScheduler:
    """Linear warm-up over ``warmup_steps``, then cosine decay to zero at ``total_steps`` (stepped per batch).

    The same two schedulers with or without warm-up (a milestone at 0 runs the cosine from the first
    step), so a checkpoint of a run too short to warm up still resumes into a longer one.
    """
    cosine = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1))
    warmup_steps = max(warmup_steps, 0)
    warmup = LinearLR(optimizer, start_factor=1.0 / (warmup_steps + 1), total_iters=max(warmup_steps, 1))
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])

