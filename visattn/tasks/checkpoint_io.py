"""Lightning's checkpoint IO for visattn runs: checkpoints written crash-safely and read weights-only.

:class:`SafeCheckpointIO` is every run's unless its config names another ``CheckpointIO``: a checkpoint of another
model, or with a weight average the run does not keep, is a one-line error, and ``fit --ckpt_path last`` falls back to
the newest good checkpoint beside a damaged last one.
"""
import errno
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lightning.pytorch.plugins import TorchCheckpointIO

from ..errors import ConfigError, WeightsError
from ..fileio import atomic_path
from ..inference.checkpoints import read_checkpoint
from ..state_dict_fit import check_state_dict
from .cli_errors import _first_line

log = logging.getLogger(__name__)


def _failed_write(path: Path, err: RuntimeError) -> tuple[int, str]:
    """errno and reason of a torch write that failed without them: a full disk, the file-size limit (``ulimit -f``,
    which another folder does not fix), else torch's words."""
    if shutil.disk_usage(path.parent).free < 1 << 20:
        return errno.ENOSPC, os.strerror(errno.ENOSPC)
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError):  # Windows has no such limit
        limit = None
    reached = re.search(r"unexpected pos (\d+)", str(err))  # where the write stopped
    if limit is not None and limit != resource.RLIM_INFINITY and reached and int(reached[1]) >= limit - (1 << 20):
        return errno.EFBIG, f"{os.strerror(errno.EFBIG)}: the file-size limit (ulimit -f) is {limit} bytes"
    return errno.EIO, f"torch could not write it: {_first_line(err)}"


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written crash-safely and read weights-only.

    Saving goes through :func:`visattn.fileio.atomic_path` (temp file, fsync, ``os.replace``): a
    run killed mid-write leaves the previous checkpoint whole. Loading uses
    ``torch.load(weights_only=True)``, so a hostile pickle runs nothing, and a damaged file or one
    that does not fit ``module`` is a one-line :class:`WeightsError` naming it.

    Args:
        module: the LightningModule the checkpoints belong to; loads check their keys and shapes.
        resume_fallback: when the checkpoint asked for is damaged, warn and load the newest other
            ``*.ckpt`` beside it that reads (``visattn fit --ckpt_path last`` turns this on: the run's
            own folder, never a file the user named).
    """

    def __init__(self, *, module: Optional[torch.nn.Module] = None, resume_fallback: bool = False) -> None:
        super().__init__()
        self.module = module
        self.resume_fallback = resume_fallback

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote filesystems: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except RuntimeError as err:  # torch's zip writer reports a full disk as "unexpected pos ..." (no errno)
            raise OSError(*_failed_write(path, err), str(path)) from None

    def load_checkpoint(self, path: Any, map_location: Optional[Callable] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        path = Path(path)
        if path.name == _SPAWN_WEIGHTS:  # the trained weights ddp_spawn's rank 0 hands back, a bare state dict
            return torch.load(path, map_location=map_location, weights_only=True)
        try:
            checkpoint = read_checkpoint(path)
        except WeightsError as err:
            if not self.resume_fallback or not path.is_file():
                raise
            path, checkpoint = _newest_good_checkpoint(path, err)
        if self.module is not None:
            _refuse_another_average(self.module, checkpoint["state_dict"], path)
            check_state_dict(self.module, checkpoint["state_dict"], strict=getattr(self.module, "strict_loading", True),
                             source=path, fix="use a checkpoint of the model and model_kwargs this config builds")
            _follow_a_moved_run(checkpoint, path, getattr(self.module, "_trainer", None))
        return checkpoint


def _follow_a_moved_run(checkpoint: dict[str, Any], path: Path, trainer: Any) -> None:
    """Point the saved state of each of ``trainer``'s ModelCheckpoints whose folder holds ``path`` at that folder.

    Lightning restores a ModelCheckpoint's files (its ``last.ckpt``, its best ``k``) only if the folder it recorded is
    the callback's: a run moved (or copied) to another folder and resumed there had kept ``last.ckpt`` at the epoch it
    stopped, written the new epochs to ``last-v1.ckpt`` and never removed the old best and latest files."""
    states = checkpoint.get("callbacks") or {}
    for callback in getattr(trainer, "checkpoint_callbacks", None) or []:
        state = states.get(getattr(callback, "state_key", None))
        old, new = (state or {}).get("dirpath"), getattr(callback, "dirpath", None)
        if not (isinstance(old, str) and new and old != new and path.parent.resolve() == Path(new).resolve()):
            continue

        def moved(file: Any) -> Any:
            inside = isinstance(file, str) and Path(file).parent == Path(old)
            return str(Path(new) / Path(file).name) if inside else file

        state.update({key: moved(state.get(key)) for key in ("best_model_path", "kth_best_model_path",
                                                              "last_model_path") if key in state})
        state["best_k_models"] = {moved(file): score for file, score in (state.get("best_k_models") or {}).items()}
        state["dirpath"] = new


def _refuse_another_average(task: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    """One line naming ``ema_decay`` when the checkpoint holds a weight average and the task keeps none, or the
    reverse: the keys' mismatch is not the fault of "the model and model_kwargs this config builds"."""
    theirs, ours = any(key.startswith("ema.") for key in state), getattr(task, "ema", None) is not None
    if theirs == ours:
        return
    trained = {key for key in task.state_dict() if not key.startswith("ema.")}
    if trained != {key for key in state if not key.startswith("ema.")}:
        return  # another model too, which check_state_dict names
    held = ("was trained without a weight average, and this run keeps one (model.init_args.ema_decay "
            f"{task.hparams.get('ema_decay')})" if ours else "holds a weight average (ema_decay), and this run keeps none")
    raise ConfigError(f"--ckpt_path {path} {held}; drop the ema_decay setting, which then comes from the checkpoint, "
                      f"or start a new run from its weights with --model.init_args.pretrained {path}")


# The file in a fresh temporary folder through which Lightning's ddp_spawn returns rank 0's weights to the main
# process (saved and read by the checkpoint IO, then removed): read as a checkpoint, it ended a finished run in
# "not a Lightning checkpoint".
_SPAWN_WEIGHTS = ".temp.ckpt"


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
