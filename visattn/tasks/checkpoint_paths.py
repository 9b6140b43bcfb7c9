"""The checkpoint ``--ckpt_path`` names, found and checked before LightningCLI loads it.

``best`` and ``last`` are found on disk from the config's ModelCheckpoints (Lightning finds them only in the process
that trained). A file must hold the config's task class and architecture, and no class to build that the config does
not give. A fit refuses checkpoint folders that hold an earlier run's checkpoints, a resume from behind the run's last
checkpoint, and optimizer settings its restored optimizer would override; the config's other settings are put back
over the checkpoint's hyperparameters.
"""
import glob
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint

from ..errors import ConfigError, VisattnWarning, WeightsError
from ..inference.checkpoints import EDITED_CHECKPOINT, read_checkpoint
from ..registry import split_model_name
from .config_files import config_task


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


def _newest_resumable(folders: Iterable[Path]) -> Optional[Path]:
    """The checkpoint in ``folders`` a stopped run resumes from: the newest ``last*.ckpt``, else, for a run whose
    ModelCheckpoints keep no last checkpoint (top-k only, or Lightning's default), its newest checkpoint that holds
    the training state; None for none."""
    folders = list(folders)
    last = _newest_last_checkpoint(folders)
    if last is not None:
        return last
    found = sorted((path for folder in folders for path in folder.glob("*" + ModelCheckpoint.FILE_EXTENSION)),
                   key=lambda path: path.stat().st_mtime, reverse=True)
    return next((path for path in found if _holds_training_state(path)), None)


def _resume_option(path: Path) -> str:
    """``--ckpt_path``'s value that resumes from ``path`` (a :func:`_newest_resumable`): ``last``, or the file."""
    return "last" if path.name.startswith(ModelCheckpoint.CHECKPOINT_NAME_LAST) else str(path)


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
            resumed = _newest_resumable(_checkpoint_folders(callbacks))
            resume = f"resume it with --ckpt_path {_resume_option(resumed)}, or " if resumed is not None else ""
            raise ConfigError(f"{folder} holds checkpoints of an earlier run; {resume}start afresh after moving them "
                              "elsewhere (or set the ModelCheckpoint dirpath to another folder)")


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


def _same_task(recorded: str, given: Optional[str]) -> bool:
    """Whether a checkpoint's recorded class path names the config's task class, by any name it goes by
    (``visattn.tasks.ImageClassifier``, ``visattn.tasks.classification.ImageClassifier``: compared as text, such a
    checkpoint was another task's). What the checkpoint names is compared, never imported."""
    if recorded == given:
        return True
    task = config_task(given) if given else None
    return task is not None and recorded in _names_of(task)


def _names_of(cls: type) -> set[str]:
    """The class's name, and its path from its module and each package above it that gives it."""
    module = cls.__module__
    homes = [module.rsplit(".", up)[0] for up in range(module.count(".") + 1)]
    return {cls.__name__, *(f"{home}.{cls.__name__}" for home in homes
                            if getattr(sys.modules.get(home), cls.__name__, None) is cls)}


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
    same_class = theirs[0] is None or _same_task(theirs[0], ours[0])
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
