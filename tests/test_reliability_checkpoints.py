"""Training checkpoints under faults: a kill mid-write, a damaged last checkpoint, resuming, and
finding the best checkpoint again in a new process.

Every run goes through `visattn fit`, so it uses the CheckpointIO that VisattnCLI installs by default.
"""
import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_classification import CBAM_CONFIG, QUICK
from test_data import needs_fashion_mnist
from visattn.cli import main
from visattn.tasks.classification import ImageClassifier
from visattn.tasks.lightning_cli import SafeCheckpointIO

pytestmark = [needs_fashion_mnist, pytest.mark.slow]
STEPS_PER_EPOCH = 4  # QUICK: 64 samples in batches of 16
CHECKPOINTS = Path("outputs") / CBAM_CONFIG.stem / "checkpoints"  # under the run's folder, as the config says
# Each epoch writes epoch=E-step=S.ckpt, then last.ckpt. (The configs' callback keeps only the best, and
# Lightning 2.6 then rewrites last.ckpt only in epochs that improve val/top1.)
EPOCH_AND_LAST = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                              "init_args": {"dirpath": str(CHECKPOINTS), "save_last": True, "save_top_k": -1,
                                            "monitor": "val/top1", "mode": "max"}}])

# Runs `visattn fit` with torch.save patched: the second epoch's last.ckpt (its second save) is cut
# off half-way through its bytes, flushed to disk, and the process SIGKILLed, as a crash would.
KILLED_MID_SAVE = """
import io, os, signal, sys
import torch
from visattn.cli import main

real_save = torch.save
saves_in_second_epoch = 0

def save_half_then_die(obj, f, *args, **kwargs):
    global saves_in_second_epoch
    saves_in_second_epoch += isinstance(obj, dict) and obj.get("epoch") == 1
    if saves_in_second_epoch == 2:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        half = buffer.getvalue()[: buffer.tell() // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                out.write(half)
                out.flush()
                os.fsync(out.fileno())
        else:  # an in-memory buffer: nothing has reached the disk yet
            f.write(half)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save_half_then_die
sys.exit(main(sys.argv[1:]))
"""


def _fit(*extra: str) -> int:
    return main(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.callbacks", EPOCH_AND_LAST, *extra])


def _read(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    """As from a terminal: LightningCLI warns (on stderr) when it sees pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["visattn"])


def test_sigkill_mid_checkpoint_write_keeps_the_previous_checkpoint(in_tmp):
    args = ["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.callbacks", EPOCH_AND_LAST,
            "--trainer.max_epochs", "2"]
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, *args], cwd=in_tmp, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]  # killed inside the second epoch's checkpoint write

    last = in_tmp / CHECKPOINTS / "last.ckpt"
    assert _read(last)["global_step"] == STEPS_PER_EPOCH  # the first epoch's checkpoint, whole
    for path in (in_tmp / CHECKPOINTS).glob("*.ckpt"):  # no torn file under a checkpoint name
        _read(path)
    assert list((in_tmp / CHECKPOINTS).glob(".last.ckpt.*.tmp")), "the killed write went elsewhere"

    assert _fit("--trainer.max_epochs", "2", "--ckpt_path", "last") == 0
    assert _read(last)["global_step"] == 2 * STEPS_PER_EPOCH
    assert not list((in_tmp / CHECKPOINTS).glob(".*.tmp"))  # the next good write removed the torn one


def test_damaged_last_checkpoint_falls_back_to_the_newest_good_one(in_tmp, capsys, caplog):
    assert _fit("--trainer.max_epochs", "2") == 0
    last = in_tmp / CHECKPOINTS / "last.ckpt"
    others = [p for p in (in_tmp / CHECKPOINTS).glob("*.ckpt") if p != last]
    assert others and _read(last)["global_step"] == 2 * STEPS_PER_EPOCH
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a copy cut short, a full disk

    with caplog.at_level(logging.WARNING):
        assert _fit("--trainer.max_epochs", "3", "--ckpt_path", "last") == 0
    warning = [r.getMessage() for r in caplog.records if "resuming from" in r.getMessage()]
    assert len(warning) == 1 and str(last) in warning[0] and "\n" not in warning[0]
    assert _read(last)["global_step"] == 3 * STEPS_PER_EPOCH  # picked up where the good checkpoint left off

    for path in (in_tmp / CHECKPOINTS).glob("*.ckpt"):  # nothing left that reads: a one-line error, exit 2
        path.write_bytes(path.read_bytes()[:100])
    capsys.readouterr()
    assert _fit("--trainer.max_epochs", "4", "--ckpt_path", str(last)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(last) in err and "no other checkpoint" in err


def _interrupt_at_second_epoch(task: ImageClassifier) -> None:
    if task.current_epoch == 1:
        raise _Interrupted


class _Interrupted(Exception):
    """Stands for a crash right after the first epoch's checkpoint was written."""


def _final_val_top1(checkpoint: dict) -> float:
    states = checkpoint["callbacks"]
    return float(next(v["current_score"] for k, v in states.items() if k.startswith("ModelCheckpoint")))


def test_resume_restores_every_state_and_reaches_the_uninterrupted_metric(tmp_path, monkeypatch):
    # Without augmentation (its pipeline keeps a random state of its own) a resumed CPU run is exact.
    run = ["--trainer.max_epochs", "2", "--data.init_args.limit", "128", "--data.init_args.augment", "false",
           "--model.init_args.ema_decay", "0.9"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    straight.mkdir()
    interrupted.mkdir()
    monkeypatch.chdir(straight)
    assert _fit(*run) == 0
    uninterrupted = _read(straight / CHECKPOINTS / "last.ckpt")

    monkeypatch.chdir(interrupted)
    with monkeypatch.context() as patch, pytest.raises(_Interrupted):
        patch.setattr(ImageClassifier, "on_train_epoch_start", _interrupt_at_second_epoch)
        _fit(*run)
    saved = _read(interrupted / CHECKPOINTS / "last.ckpt")

    restored = {}

    def record_restored_state(task: ImageClassifier) -> None:
        trainer = task.trainer
        restored.update(step=trainer.global_step, optimizer=copy.deepcopy(trainer.optimizers[0].state_dict()),
                        scheduler=trainer.lr_scheduler_configs[0].scheduler.state_dict(),
                        ema={k: v.clone() for k, v in task.ema.state_dict().items()})

    monkeypatch.setattr(ImageClassifier, "on_train_start", record_restored_state)
    assert _fit(*run, "--ckpt_path", "last") == 0

    assert restored["step"] == saved["global_step"] == 8
    torch.testing.assert_close(restored["optimizer"]["state"], saved["optimizer_states"][0]["state"])
    assert restored["optimizer"]["state"][0]["exp_avg"].abs().sum() > 0
    assert restored["scheduler"] == saved["lr_schedulers"][0] and restored["scheduler"]["last_epoch"] == 8
    ema = {k[len("ema."):]: v for k, v in saved["state_dict"].items() if k.startswith("ema.")}
    torch.testing.assert_close(restored["ema"], ema)
    assert int(ema["n_averaged"]) == 8

    resumed = _read(interrupted / CHECKPOINTS / "last.ckpt")
    # The same batches in the same order (the random state is in the checkpoint): the same run.
    assert _final_val_top1(resumed) == _final_val_top1(uninterrupted) > 0.1
    torch.testing.assert_close(resumed["state_dict"], uninterrupted["state_dict"], rtol=0, atol=0)


def test_shipped_configs_keep_last_checkpoint_current_when_the_metric_stalls(in_tmp):
    # lr 0: val/top1 never improves after the first epoch, so the monitored callback saves nothing more.
    assert main(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_epochs", "2",
                 "--model.init_args.lr", "0.0"]) == 0
    checkpoints = in_tmp / CHECKPOINTS
    assert _read(checkpoints / "last.ckpt")["global_step"] == 2 * STEPS_PER_EPOCH
    assert [_read(p)["global_step"] for p in checkpoints.glob("best-*.ckpt")] == [STEPS_PER_EPOCH]


@pytest.mark.parametrize("callbacks", [[], ["--trainer.callbacks", EPOCH_AND_LAST]], ids=["shipped", "every_epoch"])
def test_ckpt_path_best_in_a_new_process_tests_the_best_checkpoint(in_tmp, monkeypatch, callbacks):
    # lr 0: val/top1 peaks in the first epoch, so the best checkpoint is not the newest. With every
    # epoch kept, the filename pattern matches them all and only the saved callback state tells.
    assert main(["fit", "--config", str(CBAM_CONFIG), *QUICK, *callbacks, "--trainer.max_epochs", "2",
                 "--model.init_args.lr", "0.0"]) == 0
    states = _read(in_tmp / CHECKPOINTS / "last.ckpt")["callbacks"]
    best = Path(next(v["best_model_path"] for k, v in states.items() if "'val/top1'" in k))
    assert _read(best)["global_step"] == STEPS_PER_EPOCH

    loaded = []
    real_load = SafeCheckpointIO.load_checkpoint

    def record_load(io: SafeCheckpointIO, path, *args, **kwargs) -> dict:
        loaded.append(Path(path).resolve())
        return real_load(io, path, *args, **kwargs)

    monkeypatch.setattr(SafeCheckpointIO, "load_checkpoint", record_load)
    assert main(["test", "--config", str(CBAM_CONFIG), *QUICK, *callbacks, "--ckpt_path", "best"]) == 0
    assert loaded == [best.resolve()]


def test_ckpt_path_best_without_checkpoints_is_a_one_line_error(in_tmp, capsys):
    assert main(["test", "--config", str(CBAM_CONFIG), *QUICK, "--ckpt_path", "best"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(CHECKPOINTS) in err and "visattn fit" in err and "--ckpt_path FILE" in err
