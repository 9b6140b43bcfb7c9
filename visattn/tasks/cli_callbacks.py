"""Callbacks of every visattn run: :class:`StopAfterSigterm` stops every loop after SIGTERM,
:class:`RandomStateCheckpoint` makes a resumed run draw the batches an uninterrupted one would, and
:class:`SaveConfigBesideEarlier` saves the run's config beside an earlier run's instead of over it.
"""
import contextlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..fileio import atomic_path, claim_folder, unique_paths
from .distributed import gather_shares
from .guards import seed_apart


class StopAfterSigterm(Callback):
    """Stop after the batch in which SIGTERM came, in every loop: Lightning's predict loop never looks (a `predict`
    sent SIGTERM would run to its end and exit 0), and its evaluation loops not after their last batch."""

    def _stop_if_told(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.received_sigterm:
            raise SIGTERMException

    on_predict_batch_end = on_validation_batch_end = on_test_batch_end = _stop_if_told


class RandomStateCheckpoint(Callback):
    """Keeps the Python, NumPy and torch (CPU and CUDA) random states in every checkpoint and restores
    them on resume, so the batches after a resume are those of an uninterrupted run.

    Augmentation pipelines that own a generator (visattn's recipes) reseed from each epoch's DataLoader
    seed, which these restored states draw again, so a run resumed at an epoch's end augments as the
    uninterrupted run did. A resumed run starts with a sanity-check validation that an uninterrupted run
    does not have at that point; it leaves the states as it found them. Under DDP every process's states
    are gathered into the checkpoint and each process takes its own back (another process count draws
    apart afresh). The states are stored as tensors and tuples, so checkpoints still load with
    ``weights_only=True``.
    """

    def __init__(self) -> None:
        self._before_sanity_check: dict[str, Any] = {}

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_sanity_check = _random_states()

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _set_random_states(self._before_sanity_check)

    def state_dict(self) -> dict[str, Any]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every process saves
            return {"ranks": gather_shares(_random_states())}  # (DDP processes draw apart: GuardedTask)
        return _random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "ranks" not in state_dict:
            _set_random_states(state_dict)
            return
        ranks = state_dict["ranks"]
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        _set_random_states(ranks[rank if rank < len(ranks) else 0])
        if len(ranks) != (torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1):
            seed_apart(rank)  # another process count: the saved states do not fit, so draw apart afresh


def _random_states() -> dict[str, Any]:
    """This process's Python, NumPy and torch (CPU and CUDA) random states, as tensors and tuples."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    # NumPy's uint32 keys as int64: torch cannot unpickle a uint32 tensor, as all_gather_object does under DDP
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_random_states(state_dict: dict[str, Any]) -> None:
    random.setstate(state_dict["python"])
    kind, keys, position, has_gauss, gauss = state_dict["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state_dict["torch"])
    if state_dict["cuda"] and len(state_dict["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state_dict["cuda"])


class SaveConfigBesideEarlier(SaveConfigCallback):
    """Saves the run's settings as LightningCLI does, into its log folder, as ``config.yaml`` or, where an earlier
    run's is, ``config-2.yaml``, ``config-3.yaml``...: without a logger every run of a ``default_root_dir`` saves
    into that folder, and a ``validate`` would replace the config of the ``fit`` that trained its weights. The file
    is written whole or not at all (a run killed mid-write left a cut-off config that a resume from it read as
    complete). A fit claims the folder first (:func:`~visattn.fileio.claim_folder`): Lightning's own checkpoints
    go into it when no ModelCheckpoint names a folder, where two fits at once had written theirs side by side."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved or not self.save_to_log_dir:
            super().setup(trainer, pl_module, stage)
            return
        # The folder broadcast by Lightning: every process names it; a logger's keeps a config's ~ as written
        folder, path = Path(trainer.log_dir).expanduser(), None
        if trainer.is_global_zero:
            if stage == "fit":
                setting = "the logger's folder" if trainer.loggers else "trainer.default_root_dir"
                claim_folder(folder, setting=setting, task="visattn fit")
            taken = {entry.name.casefold() for entry in folder.iterdir()} if folder.is_dir() else set()
            path = unique_paths(folder, "config", taken, suffix=".yaml")[0]  # numbered as the commands' outputs
        path = trainer.strategy.broadcast(path)
        # Lightning writes the temp file (only the first process writes; overwrite: it exists), moved into place after
        with atomic_path(path) if trainer.is_global_zero else contextlib.nullcontext(path) as written:
            self.config_filename = written.name
            super().setup(trainer, pl_module, stage)
        self.config_filename = path.name
