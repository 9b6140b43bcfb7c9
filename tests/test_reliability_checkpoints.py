"""Training checkpoints under faults: a kill mid-write, a damaged last checkpoint, resuming, and
finding the best checkpoint again in a new process.

Every run goes through `visattn fit`, so it uses the CheckpointIO that VisattnCLI installs by default.
"""
import copy
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.fabric.utilities.data import _set_sampler_epoch

from test_classification import CBAM_CONFIG, QUICK, VIT_CONFIG
from test_data import needs_fashion_mnist
from visattn import create_model
from visattn.cli import main
from visattn.tasks.classification import ImageClassifier
from visattn.tasks.checkpoint_io import SafeCheckpointIO

pytestmark = [needs_fashion_mnist, pytest.mark.slow]
STEPS_PER_EPOCH = 4  # QUICK: 64 samples in batches of 16
CHECKPOINTS = Path("outputs") / CBAM_CONFIG.stem / "checkpoints"  # under the run's folder, as the config says
# Each epoch writes epoch=E-step=S.ckpt, then last.ckpt. (The configs keep the best checkpoint and, with a
# second callback, rewrite last.ckpt every epoch; this one keeps every epoch's, for the tests that count them.)
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


def _error(capsys) -> str:
    """The one error line, past any one-line warnings (a quick run of a 40-epoch config warns of its warm-up)."""
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_resuming_a_run_that_has_reached_its_end_says_that_it_trained_nothing(in_tmp, capsys):
    """A fine-tune audit: resumed with the same max_epochs, fit trained nothing and exited 0, with only Lightning's
    "`Trainer.fit` stopped: `max_epochs=1` reached"."""
    assert _fit("--trainer.max_epochs", "1") == 0
    capsys.readouterr()
    assert _fit("--trainer.max_epochs", "1", "--ckpt_path", "last") == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "trained nothing" in line]
    assert said == [f"warning: --ckpt_path {(in_tmp / CHECKPOINTS / 'last.ckpt').resolve()}: its run had already "
                    f"reached its end (trainer.max_epochs 1, max_steps -1; at step {STEPS_PER_EPOCH}), so this fit "
                    "trained nothing; to train on, start a new run from its weights with --model.init_args.pretrained "
                    f"{(in_tmp / CHECKPOINTS / 'last.ckpt').resolve()} (raising max_epochs continues its schedule, whose "
                    "cosine rises again from 0)"]
    assert _fit("--trainer.max_epochs", "2", "--ckpt_path", "last") == 0  # one that trains says nothing of it
    assert "trained nothing" not in capsys.readouterr().err


def test_fit_ckpt_path_last_resumes_the_full_last_checkpoint_beside_a_weights_only_one(in_tmp, capsys):
    """A weights-only ModelCheckpoint's last.ckpt, the newest, was Lightning's pick: a KeyError traceback ("checkpoint
    contains only the model"), exit 1. The run resumes from the newest last checkpoint holding its training state;
    with weights-only ones alone, or one named, it is one line."""
    weights_only = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": "weights_only", "save_last": True, "save_top_k": 0,
                                  "save_weights_only": True}}
    callbacks = json.dumps([*json.loads(EPOCH_AND_LAST), weights_only])
    assert _fit("--trainer.max_epochs", "1", "--trainer.callbacks", callbacks) == 0
    full, light = in_tmp / CHECKPOINTS / "last.ckpt", in_tmp / "weights_only" / "last.ckpt"
    os.utime(light, (full.stat().st_mtime + 5,) * 2)  # the newest, as when written a moment after
    assert "optimizer_states" not in _read(light)
    assert _fit("--trainer.max_epochs", "2", "--trainer.callbacks", callbacks, "--ckpt_path", "last") == 0
    assert _read(full)["global_step"] == 2 * STEPS_PER_EPOCH  # resumed at step 4, not trained afresh
    capsys.readouterr()
    full.unlink()
    for path in (in_tmp / CHECKPOINTS).glob("*.ckpt"):
        path.unlink()
    callbacks = json.dumps([weights_only])
    assert _fit("--trainer.max_epochs", "3", "--trainer.callbacks", callbacks, "--ckpt_path", "last") == 2
    # (last.ckpt, or last-v1.ckpt where the resumed run's callback state did not name its own last file yet)
    assert re.fullmatch(r"visattn: error: --ckpt_path (weights_only/last(-v1)?\.ckpt): holds weights only "
                        r"\(save_weights_only\), not the optimizer state a resumed fit needs; train from its weights "
                        r"in a new run with --model.init_args.pretrained \1", _error(capsys))
    light = next((in_tmp / "weights_only").glob("last*.ckpt")).relative_to(in_tmp)  # named: the same traceback
    assert _fit("--trainer.max_epochs", "3", "--trainer.callbacks", callbacks, "--ckpt_path", str(light)) == 2
    assert _error(capsys) == (f"visattn: error: --ckpt_path {light}: holds weights only (save_weights_only), not the "
                              "optimizer state a resumed fit needs; train from its weights in a new run with "
                              f"--model.init_args.pretrained {light}")


def test_resuming_from_a_checkpoint_saved_before_the_runs_last_one_is_one_line(in_tmp, capsys):
    """Resumed from epoch 0's checkpoint, Lightning kept last.ckpt at epoch 1 and wrote the resumed epochs to
    last-v1.ckpt, so evaluate and save-weights given last.ckpt used the model left behind (a CLI fuzz audit)."""
    assert _fit("--trainer.max_epochs", "2") == 0
    first, last = in_tmp / CHECKPOINTS / f"epoch=0-step={STEPS_PER_EPOCH}.ckpt", in_tmp / CHECKPOINTS / "last.ckpt"
    capsys.readouterr()
    assert _fit("--trainer.max_epochs", "3", "--ckpt_path", str(first)) == 2
    assert _error(capsys) == (f"visattn: error: --ckpt_path {first}: saved before {last}, a later epoch of the run, "
                              "which Lightning would keep while it writes the resumed epochs to last-v1.ckpt, where "
                              "commands given last.ckpt miss them; resume the newest with --ckpt_path last, or move "
                              f"last.ckpt elsewhere to go on from {first.name}")
    assert _read(last)["global_step"] == 2 * STEPS_PER_EPOCH
    second = in_tmp / CHECKPOINTS / f"epoch=1-step={2 * STEPS_PER_EPOCH}.ckpt"
    assert _fit("--trainer.max_epochs", "3", "--ckpt_path", str(second)) == 0  # saved after last.ckpt: it goes on
    assert _read(last)["global_step"] == 3 * STEPS_PER_EPOCH
    last.rename(in_tmp / "last-of-the-run-left-behind.ckpt")
    assert _fit("--trainer.max_epochs", "3", "--ckpt_path", str(first)) == 0
    assert _read(last)["global_step"] == 3 * STEPS_PER_EPOCH and not list(last.parent.glob("last-v*.ckpt"))


def test_resuming_from_a_weights_only_checkpoint_beside_last_says_it_holds_weights_only(in_tmp, capsys):
    """Not that it was saved before last.ckpt: moving last.ckpt away would not make it resumable."""
    weights_only = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(CHECKPOINTS), "filename": "weights-{epoch}", "save_top_k": -1,
                                  "save_weights_only": True}}
    callbacks = json.dumps([*json.loads(EPOCH_AND_LAST), weights_only])
    assert _fit("--trainer.max_epochs", "2", "--trainer.callbacks", callbacks) == 0
    capsys.readouterr()
    light = CHECKPOINTS / "weights-epoch=0.ckpt"
    assert _fit("--trainer.max_epochs", "3", "--trainer.callbacks", callbacks, "--ckpt_path", str(light)) == 2
    assert _error(capsys) == (f"visattn: error: --ckpt_path {light}: holds weights only (save_weights_only), not the "
                              "optimizer state a resumed fit needs; train from its weights in a new run with "
                              f"--model.init_args.pretrained {light}")


def test_fit_ckpt_path_last_with_nothing_to_resume_starts_afresh_saying_so_in_one_line(in_tmp, capsys, recwarn):
    """A job restarted until it finishes starts with nothing to resume; Lightning's warning named its own file."""
    assert _fit("--trainer.max_epochs", "1", "--ckpt_path", "last") == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "last" in line]
    assert said == [f"warning: --ckpt_path last: nothing to resume in {CHECKPOINTS} yet, so this fit starts afresh"]
    assert not [w for w in recwarn if "no last checkpoint available" in str(w.message)]
    assert _read(in_tmp / CHECKPOINTS / "last.ckpt")["global_step"] == STEPS_PER_EPOCH


@pytest.mark.parametrize("command", ["validate", "fit"])
def test_a_missing_ckpt_path_file_is_the_only_line_before_any_setup(command, in_tmp):
    """A path typo came after Lightning's "Seed set", "GPU available" and "Restoring states" lines (logged to the
    terminal, which a subprocess shows as a user sees it)."""
    proc = subprocess.run([sys.executable, "-m", "visattn", command, "--config", str(CBAM_CONFIG), *QUICK,
                           "--ckpt_path", "nope.ckpt"], cwd=in_tmp, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("visattn: error: nope.ckpt: checkpoint not found; check the path"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


def test_a_resumed_fit_is_not_warned_that_its_checkpoint_folder_holds_files(in_tmp, capsys, recwarn):
    """Lightning warned of a non-empty checkpoint folder on every `--ckpt_path last`, naming its own source file;
    a fresh run into such a folder is refused (with what to do) before Lightning's check."""
    assert _fit("--trainer.max_epochs", "1") == 0
    capsys.readouterr()
    recwarn.clear()
    assert _fit("--trainer.max_epochs", "2", "--ckpt_path", "last") == 0
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]
    err = capsys.readouterr().err
    assert "exists and is not empty" not in err and "nothing to resume" not in err


def test_a_fresh_fit_into_a_checkpoint_folder_no_config_names_is_still_warned_of_its_files(in_tmp, recwarn):
    """Without a dirpath and a logger, checkpoints go to default_root_dir/checkpoints, which the refusal of an
    earlier run's folder does not look in: Lightning's warning is all there is (a review found it filtered)."""
    unnamed = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"save_last": True}}])
    fit = ["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.callbacks", unnamed, "--trainer.logger", "false",
           "--trainer.max_epochs", "1"]
    assert main(fit) == 0
    recwarn.clear()
    assert main(fit) == 0
    assert [w for w in recwarn if "exists and is not empty" in str(w.message)]


def test_a_resumed_fit_refuses_a_typed_learning_rate_its_restored_optimizer_would_override(in_tmp, capsys):
    """It trained on at the saved lr while its checkpoints recorded the typed one."""
    assert _fit("--trainer.max_epochs", "1") == 0
    last = CHECKPOINTS / "last.ckpt"  # as the config names it, relative to the run's folder
    saved = _read(last)["hyper_parameters"]["lr"]
    capsys.readouterr()
    assert _fit("--trainer.max_epochs", "2", "--ckpt_path", "last", "--model.init_args.lr", "0.5") == 2
    assert _error(capsys) == (f"visattn: error: --model.init_args.lr 0.5: a resumed run continues with the optimizer "
                              f"and schedule it saved, at lr {saved}; drop the option, or start a new run from the "
                              f"checkpoint's weights with --model.init_args.pretrained {last}")
    # warmup_epochs too: the restored schedule kept its warm-up while the checkpoints recorded the typed one
    assert _fit("--trainer.max_epochs", "1", "--ckpt_path", "last", "--model.init_args.warmup_epochs", "3") == 2
    assert "--model.init_args.warmup_epochs 3.0: a resumed run continues with the optimizer and schedule" in (
        _error(capsys))
    # layer_decay too: the restored optimizer kept the saved layers' rates (from a features audit)
    assert _fit("--trainer.max_epochs", "2", "--ckpt_path", "last", "--model.init_args.layer_decay", "0.5") == 2
    assert "--model.init_args.layer_decay 0.5: a resumed run continues with the optimizer and schedule it saved, at " \
           "layer_decay None" in _error(capsys)
    assert _read(last)["global_step"] == STEPS_PER_EPOCH
    # from a config audit: the same lr from a second config file was taken without a word, and recorded
    Path("lr.yaml").write_text("model:\n  init_args:\n    lr: 0.5\n")
    assert _fit("--trainer.max_epochs", "2", "--ckpt_path", "last", "--config", "lr.yaml") == 2
    assert _error(capsys) == (f"visattn: error: model.init_args.lr (from the config) 0.5: a resumed run continues with "
                              f"the optimizer and schedule it saved, at lr {saved}; give the checkpoint's {saved}, or "
                              f"start a new run from the checkpoint's weights with --model.init_args.pretrained {last}")
    assert _read(last)["global_step"] == STEPS_PER_EPOCH
    # a resume file that is not there is named as such (it was blamed on the folder's earlier run)
    assert _fit("--trainer.max_epochs", "2", "--ckpt_path", "nope.ckpt") == 2
    assert _error(capsys).startswith("visattn: error: nope.ckpt: checkpoint not found; check the path")


def test_a_run_from_a_checkpoint_takes_the_settings_given_but_what_its_weights_were_built_as(in_tmp, monkeypatch):
    """LightningCLI parses a checkpoint's hyperparameters over the config's model: a config's label_smoothing (or a
    captioner's beam_size) and a typed `model_kwargs.KEY` were dropped for the checkpoint's without a word."""
    assert _fit("--trainer.max_epochs", "1", "--model.init_args.label_smoothing", "0.7") == 0
    seen = []
    monkeypatch.setattr(ImageClassifier, "test_step", lambda self, batch, index: seen.append(
        (self.hparams.label_smoothing, self.hparams.model_kwargs.get("drop_rate"), self.model.drop.p)))
    Path("smoothing.yaml").write_text("model:\n  init_args:\n    label_smoothing: 0.0\n")
    test = ["test", "--config", str(CBAM_CONFIG), *QUICK, "--ckpt_path", "last", "--trainer.limit_test_batches", "1"]
    assert main([*test, "--config", "smoothing.yaml", "--model.init_args.model_kwargs.drop_rate", "0.25"]) == 0
    assert seen == [(0.0, 0.25, 0.25)]
    saved = _read(CHECKPOINTS / "last.ckpt")["hyper_parameters"]
    assert saved["label_smoothing"] == 0.7 and "drop_rate" not in saved["model_kwargs"]


def test_a_run_from_a_checkpoint_is_rebuilt_with_the_model_kwargs_it_was_trained_with(in_tmp, monkeypatch):
    """A run trained with a typed `model_kwargs.depth` and scored with the plain config: rebuilt with the config's
    depth, its weights had been refused as not fitting (and a kwarg that keeps the shapes, silently misbuilt)."""
    vit = ["--config", str(VIT_CONFIG), *QUICK, "--model.init_args.compile", "false"]
    assert main(["fit", *vit, "--trainer.max_epochs", "1", "--model.init_args.model_kwargs.depth", "1"]) == 0
    seen = []
    monkeypatch.setattr(ImageClassifier, "validation_step", lambda self, batch, index: seen.append(
        (len(self.model.blocks), self.hparams.model_kwargs["depth"])))
    assert main(["validate", *vit, "--ckpt_path", "last", "--trainer.limit_val_batches", "1"]) == 0
    assert seen == [(1, 1)]  # the config says depth 4


def test_scoring_a_run_trained_without_a_weight_average_takes_its_ema_decay_unless_one_is_typed(in_tmp, capsys):
    """The checkpoint's ema_decay null over the config's 0.999 (else a valid command was refused); a typed one over
    the checkpoint's (else silently dropped: validate/test/predict resolve `last` to a file whose settings win)."""
    assert _fit("--trainer.max_epochs", "1", "--model.init_args.ema_decay", "null") == 0
    validate = ["validate", "--config", str(CBAM_CONFIG), *QUICK, "--ckpt_path", "last",
                "--trainer.limit_val_batches", "1"]
    capsys.readouterr()
    assert main(validate) == 0
    assert "val/top1" in capsys.readouterr().out
    assert main([*validate, "--model.init_args.ema_decay", "0.9"]) == 2
    assert re.fullmatch(r"visattn: error: --ckpt_path \S*last\.ckpt was trained without a weight average, and this "
                        r"run keeps one \(model\.init_args\.ema_decay 0\.9\); drop the ema_decay setting, .*",
                        _error(capsys))


def test_a_resumed_fit_of_another_length_warns_that_it_continues_the_saved_schedule(in_tmp, capsys):
    """Resumed into a longer run, the saved cosine rose again towards the peak rate without a word."""
    assert _fit("--trainer.max_epochs", "1") == 0
    capsys.readouterr()
    assert _fit("--trainer.max_epochs", "2", "--ckpt_path", "last") == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "planned" in line]
    last = CHECKPOINTS / "last.ckpt"
    # the config's warm-up is longer than either run, which warms up to its last step but one
    assert warned == [f"warning: --ckpt_path {last.resolve()}: its run planned {STEPS_PER_EPOCH} optimizer steps "
                      f"(3 of warm-up), this one {2 * STEPS_PER_EPOCH} (7); a resumed run continues the schedule it "
                      f"saved, whose cosine rises again after step {STEPS_PER_EPOCH}; for another length or batch "
                      f"size, start a new run from the checkpoint's weights with --model.init_args.pretrained "
                      f"{last.resolve()}"]
    assert _fit("--trainer.max_epochs", "2", "--ckpt_path", "last") == 0  # the same length: no word
    assert not [line for line in capsys.readouterr().err.splitlines() if "planned" in line]


def test_a_fit_never_writes_beside_another_runs_checkpoints(in_tmp, capsys):
    """Another run's checkpoint as --ckpt_path, or --ckpt_path last where the run left no last.ckpt, trained
    afresh into the folder and wrote last-v1.ckpt among the earlier run's files."""
    assert _fit("--trainer.max_epochs", "1") == 0
    folder = CHECKPOINTS  # as the config names it, relative to the run's folder
    elsewhere = in_tmp / "elsewhere" / "run.ckpt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes((folder / "last.ckpt").read_bytes())
    capsys.readouterr()
    assert _fit("--trainer.max_epochs", "2", "--ckpt_path", str(elsewhere)) == 2
    assert f"{folder} holds checkpoints of an earlier run" in _error(capsys)
    for path in folder.glob("last*.ckpt"):
        path.unlink()
    kept = sorted(folder.glob("*.ckpt"))
    newest = max(kept, key=lambda path: path.stat().st_mtime)
    assert _fit("--trainer.max_epochs", "2", "--ckpt_path", "last") == 2
    assert _error(capsys) == (f"visattn: error: --ckpt_path last: {folder} holds no last checkpoint; resume from its "
                              f"newest with --ckpt_path {newest}")
    assert sorted(folder.glob("*.ckpt")) == kept


def test_resuming_last_where_no_checkpoint_folder_is_named_is_one_line(in_tmp, capsys):
    """Lightning's own ModelCheckpoint writes into each run's new logs/version_N folder: --ckpt_path last found no
    checkpoint, and the run trained afresh with a warning, exit 0."""
    assert _fit_with([]) == 0
    capsys.readouterr()
    assert main(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_epochs", "2", "--trainer.callbacks", "[]",
                 "--ckpt_path", "last"]) == 2
    assert _error(capsys) == ("visattn: error: fit --ckpt_path last: the config gives no ModelCheckpoint a dirpath, so "
                              "each run checkpoints into its own new logs folder and none is found to resume "
                              "(Lightning would train afresh); resume with --ckpt_path FILE, and give a "
                              "ModelCheckpoint a dirpath and save_last: true for next time")


def test_runs_without_a_logger_keep_each_others_saved_configs(in_tmp):
    """Without a logger every run saves its config into default_root_dir: a validate replaced the config of the
    fit that trained its weights."""
    run = ["--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_epochs", "1", "--trainer.callbacks", EPOCH_AND_LAST,
           "--trainer.logger", "false", "--trainer.default_root_dir", "run"]
    assert main(["fit", *run]) == 0
    fitted = (in_tmp / "run" / "config.yaml").read_text()
    assert main(["validate", *run, "--ckpt_path", "last"]) == 0
    assert (in_tmp / "run" / "config.yaml").read_text() == fitted
    assert "ckpt_path: null" in fitted and "ckpt_path: null" not in (in_tmp / "run" / "config-2.yaml").read_text()


def test_a_misspelt_monitored_metric_is_one_line_before_the_first_epoch(in_tmp, capsys):
    """Lightning named it only after the first epoch, whose best checkpoint was then never written."""
    callbacks = json.loads(EPOCH_AND_LAST)
    callbacks[0]["init_args"]["monitor"] = "val/top_1"
    args = ["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_epochs", "1",
            "--trainer.callbacks", json.dumps(callbacks)]
    assert main(args) == 2
    assert _error(capsys) == ("visattn: error: trainer.callbacks: ModelCheckpoint(monitor='val/top_1'): the run logs "
                              "no val/top_1; did you mean val/top1?")
    assert not list((in_tmp / CHECKPOINTS).glob("*.ckpt"))


@pytest.mark.parametrize("callback", ["ModelCheckpoint", "EarlyStopping"])
@pytest.mark.parametrize("sanity_steps", [2, 0])
def test_a_monitored_metric_the_run_does_not_log_is_one_line_naming_those_it_does(in_tmp, capsys, callback,
                                                                                  sanity_steps):
    """A name with no close match was only a warning: after the first epoch ModelCheckpoint refused in Lightning's
    words and EarlyStopping in a 57-line traceback; with no sanity check nothing was checked before them."""
    callbacks = [{"class_path": f"lightning.pytorch.callbacks.{callback}", "init_args": {"monitor": "val/accuracy"}}]
    args = ["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_epochs", "2", "--trainer.callbacks",
            json.dumps(callbacks), "--trainer.num_sanity_val_steps", str(sanity_steps)]
    assert main(args) == 2
    assert _error(capsys) == (f"visattn: error: trainer.callbacks: {callback}(monitor='val/accuracy'): the run logs "
                              "no val/accuracy; monitor one it logs: val/loss, val/top1, val/top5")


def test_a_logger_that_cannot_be_built_is_one_line_naming_trainer_logger(in_tmp, capsys):
    """TensorBoardLogger without tensorboard installed was blamed on "the model and data sections"."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed here")
    args = ["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_epochs", "1", "--trainer.logger.class_path",
            "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.init_args.save_dir", "tb"]
    assert main(args) == 2
    error = _error(capsys)
    assert error.startswith("visattn: error: trainer.logger: TensorBoardLogger could not be built (Neither `tensorboard`")
    assert error.endswith("; install what it needs, fix its init_args, or keep the configs' CSVLogger")


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
    assert _fit("--trainer.max_epochs", "4", "--ckpt_path", "last") == 2  # (a FILE named is never replaced)
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


def _straight_and_interrupted_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   run: list[str]) -> tuple[dict, Path]:
    """The last checkpoint of ``run`` fitted straight through, and the folder (now the working one) of
    the same run crashed right after its first epoch's checkpoint."""
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
    return uninterrupted, interrupted


def test_resume_restores_every_state_and_reaches_the_uninterrupted_metric(tmp_path, monkeypatch):
    # Without augmentation; test_a_resumed_run_with_augmentation_reaches_the_uninterrupted_runs_weights covers augmenting runs.
    run = ["--trainer.max_epochs", "2", "--data.init_args.limit", "128", "--data.init_args.augment", "false",
           "--model.init_args.ema_decay", "0.9"]
    uninterrupted, interrupted = _straight_and_interrupted_runs(tmp_path, monkeypatch, run)
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

    loaded = _record_loads(monkeypatch)
    assert main(["test", "--config", str(CBAM_CONFIG), *QUICK, *callbacks, "--ckpt_path", "best"]) == 0
    assert loaded == [best.resolve()]


def _record_loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The checkpoint files the run's CheckpointIO loads, in order."""
    loaded = []
    real_load = SafeCheckpointIO.load_checkpoint

    def record_load(io: SafeCheckpointIO, path, *args, **kwargs) -> dict:
        loaded.append(Path(path).resolve())
        return real_load(io, path, *args, **kwargs)

    monkeypatch.setattr(SafeCheckpointIO, "load_checkpoint", record_load)
    return loaded


def _val_top1_is_the_epoch(task: ImageClassifier) -> None:
    task.log("val/top1", float(task.current_epoch))  # rises every epoch: the newest checkpoint is the best
    task.val_metrics.reset()
    task.val_loss.reset()


def _val_top1_falls(task: ImageClassifier) -> None:
    task.log("val/top1", -float(task.current_epoch))  # the first epoch's is the best
    task.val_metrics.reset()
    task.val_loss.reset()


def test_ckpt_path_best_is_a_later_epochs_checkpoint_when_the_metric_peaks_late(in_tmp, monkeypatch):
    """Every epoch's file records the best as of its epoch: the oldest's names itself, the newest's the real best."""
    callbacks = ["--trainer.callbacks", EPOCH_AND_LAST]
    with monkeypatch.context() as patch:
        patch.setattr(ImageClassifier, "on_validation_epoch_end", _val_top1_is_the_epoch)
        assert main(["fit", "--config", str(CBAM_CONFIG), *QUICK, *callbacks, "--trainer.max_epochs", "2"]) == 0
    states = _read(in_tmp / CHECKPOINTS / "last.ckpt")["callbacks"]
    best = Path(next(v["best_model_path"] for k, v in states.items() if "'val/top1'" in k))
    assert _read(best)["global_step"] == 2 * STEPS_PER_EPOCH
    assert len(list((in_tmp / CHECKPOINTS).glob("epoch=*.ckpt"))) == 2  # the first epoch's is there to be mistaken

    loaded = _record_loads(monkeypatch)
    assert main(["test", "--config", str(CBAM_CONFIG), *QUICK, *callbacks, "--ckpt_path", "best"]) == 0
    assert loaded == [best.resolve()]


def test_ckpt_path_last_with_two_last_files_scores_the_newest(in_tmp, monkeypatch):
    """Both shipped callbacks with save_last write last.ckpt and last-v1.ckpt; the monitored one's is rewritten only
    when the metric improves, so once it falls the other callback's last file is the current one."""
    callbacks = yaml.safe_load(CBAM_CONFIG.read_text())["trainer"]["callbacks"]
    for callback in callbacks:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["save_last"] = True
    run = ["--config", str(CBAM_CONFIG), *QUICK, "--trainer.callbacks", json.dumps(callbacks)]
    with monkeypatch.context() as patch:
        patch.setattr(ImageClassifier, "on_validation_epoch_end", _val_top1_falls)
        assert main(["fit", *run, "--trainer.max_epochs", "2"]) == 0
    lasts = {path.name: _read(path)["global_step"] for path in (in_tmp / CHECKPOINTS).glob("last*.ckpt")}
    assert sorted(lasts.values()) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH], lasts  # one stale, one current
    newest = next(in_tmp / CHECKPOINTS / name for name, step in lasts.items() if step == 2 * STEPS_PER_EPOCH)

    loaded = _record_loads(monkeypatch)
    assert main(["test", *run, "--ckpt_path", "last", "--trainer.limit_test_batches", "1"]) == 0
    assert loaded == [newest.resolve()]


def test_ckpt_path_best_without_checkpoints_is_a_one_line_error(in_tmp, capsys):
    assert main(["test", "--config", str(CBAM_CONFIG), *QUICK, "--ckpt_path", "best"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(CHECKPOINTS) in err and "visattn fit" in err and "--ckpt_path FILE" in err


# ---------------------------------------------------------------------------------------------
# Lightning commands: config, checkpoint and run mistakes are one line (exit 2); Ctrl-C exits 130
# ---------------------------------------------------------------------------------------------

SE_CONFIG = CBAM_CONFIG.parent / "se_resnet20_fmnist.yaml"
SHIPPED_WEIGHTS = ["--model.init_args.model_name", "se_resnet20_cifar.fmnist"]  # starts trained: no --ckpt_path needed


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("visattn: error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


TRAINER_MISTAKES = {
    "negative_lr": (["--model.init_args.lr", "-1"], "model.init_args.lr -1.0: a learning rate is a finite number of 0 "
                                                    "or more; give e.g. 0.001"),
    # refused once the trainer had written the run's config.yaml and claimed its checkpoint folder
    "negative_warmup": (["--model.init_args.warmup_epochs", "-1"], "model.init_args.warmup_epochs -1.0: a warm-up is "
                                                                   "a finite number of 0 or more"),
    "negative_max_epochs": (["--trainer.max_epochs", "-5"], "trainer: `max_epochs` must be a non-negative integer"),
    "zero_devices": (["--trainer.devices", "0"], "trainer: `Trainer(devices='0')` value is not a valid input"),
    "zero_accumulate_grad_batches": (["--trainer.accumulate_grad_batches", "0"],
                                     "trainer.accumulate_grad_batches 0: give 1 (no accumulation) or more"),
    "accelerator_this_machine_lacks": (["--trainer.accelerator", "gpu"],
                                       "trainer.accelerator gpu: this machine has no gpu device; use"),
    "fit_from_best": (["--ckpt_path", "best"], "fit --ckpt_path best: fit resumes a run, from --ckpt_path last"),
    "logs_where_nothing_can_be_written": (["--trainer.logger.init_args.save_dir", "/proc/visattn-logs"],
                                          "logger's save_dir /proc/visattn-logs: cannot write there (No such file "
                                          "or directory); choose a writable logger's save_dir folder"),
    "a_precision_needing_a_package_not_installed": (["--trainer.precision", "transformer-engine"],
                                                    "fit: a setting needs a package this environment lacks: "
                                                    "Requirement 'transformer_engine"),  # a traceback
    "label_smoothing_above_one": (["--model.init_args.label_smoothing", "1.5"],
                                  "model.init_args.label_smoothing 1.5: give a share of the target between 0 and 1"),
    "a_linked_value_in_the_model_section": (["--model.init_args.num_classes", "5"],
                                            "model.init_args.num_classes: the data section sets it (data.num_classes "
                                            "is linked to it); drop it from the model section"),  # no setting there
    "a_data_module_of_another_task": (["--data", "visattn.data.caption_datamodules.FashionScenesCaptionDataModule"],
                                      "data: FashionScenesCaptionDataModule holds captioning data, and "
                                      "ImageClassifier trains classification; give a classification data module"),
    # Lightning checks this one only once it has counted the training batches, with a plain ValueError.
    "val_check_interval_beyond_the_epoch": (["--trainer.val_check_interval", "1000000"],
                                            "trainer.val_check_interval: `val_check_interval` (1000000) must be"),
}


@pytest.mark.parametrize("case", TRAINER_MISTAKES)
def test_lightning_side_config_mistakes_are_one_line(case, in_tmp, capsys):
    extra, expected = TRAINER_MISTAKES[case]
    if case == "accelerator_this_machine_lacks" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_steps", "1", *extra]) == 2
    assert expected in _one_error_line(capsys)
    if case in ("negative_lr", "negative_warmup", "label_smoothing_above_one"):  # model settings: nothing written
        assert list(in_tmp.iterdir()) == []


def test_a_file_given_as_the_run_folder_is_named_as_the_setting_given(in_tmp, capsys):
    """With Lightning's default logger, whose folder is the run's, a file given as trainer.default_root_dir was named
    "logger's save_dir", a setting the config does not hold."""
    import yaml

    config = yaml.safe_load(CBAM_CONFIG.read_text())
    for key in ("logger", "callbacks"):
        config["trainer"].pop(key)
    Path("mine.yaml").write_text(yaml.safe_dump(config))
    Path("afile").write_text("my notes\n")
    assert main(["fit", "--config", "mine.yaml", *QUICK, "--trainer.default_root_dir", "afile"]) == 2
    assert _one_error_line(capsys) == ("visattn: error: trainer.default_root_dir afile: cannot write there (a file "
                                       "stands where a folder is needed); choose a writable trainer.default_root_dir "
                                       "folder")
    assert Path("afile").read_text() == "my notes\n"


def _task_checkpoint(path: Path, class_path: str, hparams: dict, state_dict: dict) -> Path:
    """A checkpoint as `visattn fit` writes it: LightningCLI records the task class in the hyperparameters."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state_dict, "hyper_parameters": {"_class_path": class_path, **hparams}}, path)
    return path


def _detector_checkpoint(folder: Path) -> Path:
    from test_reliability_inputs import write_detector_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    written = torch.load(write_detector_checkpoint(folder / "plain.ckpt"), weights_only=True)
    return _task_checkpoint(folder / "fcos.ckpt", "visattn.tasks.detection.DetectionTask",
                            written["hyper_parameters"], written["state_dict"])


def _cbam_checkpoint(folder: Path) -> Path:
    task = ImageClassifier("cbam_resnet20_cifar", num_classes=10)
    return _task_checkpoint(folder / "cbam.ckpt", "visattn.tasks.classification.ImageClassifier",
                            dict(task.hparams), task.state_dict())


@pytest.mark.parametrize("subcommand", ["fit", "test"])
@pytest.mark.parametrize("checkpoint, expected", [
    (_detector_checkpoint, "a checkpoint of DetectionTask fcos_resnet20_cifar, but the config trains "
                           "ImageClassifier se_resnet20_cifar; give a checkpoint of this config's runs"),
    (_cbam_checkpoint, "a checkpoint of ImageClassifier cbam_resnet20_cifar, but the config trains "
                       "ImageClassifier se_resnet20_cifar"),
], ids=["another_task", "another_architecture"])
def test_ckpt_path_of_another_task_or_architecture_is_refused_before_anything_runs(
        subcommand, checkpoint, expected, in_tmp, capsys):
    # LightningCLI builds the model the checkpoint describes, so both used to load "fine": the CBAM
    # checkpoint was tested as if it were the SE config's model, the detector crashed in the metrics.
    path = checkpoint(in_tmp / "elsewhere")
    assert main([subcommand, "--config", str(SE_CONFIG), *QUICK, "--trainer.max_steps", "1",
                 "--ckpt_path", str(path)]) == 2
    assert f"--ckpt_path {path}: {expected}" in _one_error_line(capsys)
    assert not (in_tmp / "outputs").exists()  # no checkpoints, logs or config written for the wrong model


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_a_checkpoint_naming_a_class_to_build_in_its_settings_is_refused_before_anything_is_built(
        subcommand, in_tmp, capsys):
    """LightningCLI builds the model from the checkpoint's hyperparameters, and jsonargparse builds any
    class_path under model_kwargs (typed Any): a file of plain tensors and strings ran subprocess.Popen."""
    marker = in_tmp / "built.log"
    task = ImageClassifier("cbam_resnet20_cifar", num_classes=10)
    hparams = {**task.hparams, "model_kwargs": {"foo": {"class_path": "logging.FileHandler",
                                                        "init_args": {"filename": str(marker)}}}}
    path = _task_checkpoint(in_tmp / "edited.ckpt", "visattn.tasks.classification.ImageClassifier", hparams,
                            task.state_dict())
    assert main([subcommand, "--config", str(CBAM_CONFIG), *QUICK, "--ckpt_path", str(path)]) == 2
    assert (f"--ckpt_path {path}: hyper_parameters.model_kwargs.foo names a class to build "
            '("logging.FileHandler") that the config does not give there, and loading would build it; the file '
            "was edited or damaged") in _one_error_line(capsys)
    assert not marker.exists()


@pytest.mark.parametrize("setting", ["checkpoint_path", "pretrained_cfg"])
def test_a_timm_checkpoints_settings_name_no_file_for_timm_to_read(setting, tmp_path):
    """timm.create_model read the file a checkpoint's model_kwargs named (a traceback where it was not timm's)."""
    from visattn.inference.classifier import load_classifier

    task = ImageClassifier("timm:resnet10t", num_classes=3, class_names=["a", "b", "c"],
                           preprocessing=SMALL_PREPROCESSING)
    named = {"checkpoint_path": str(tmp_path / "other.pth"), "pretrained_cfg": {"file": str(tmp_path / "other.pth")}}
    (tmp_path / "other.pth").write_bytes(b"not weights")
    hparams = {**task.hparams, "model_kwargs": {setting: named[setting]}}
    path = _task_checkpoint(tmp_path / "timm.ckpt", "visattn.tasks.classification.ImageClassifier", hparams,
                            task.state_dict())
    loaded = load_classifier(checkpoint=str(path))
    torch.testing.assert_close(loaded.model.state_dict(), task.model.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_scoring_an_untrained_model_or_a_missing_last_checkpoint_is_refused(subcommand, in_tmp, capsys):
    command = [subcommand, "--config", str(CBAM_CONFIG), *QUICK]
    assert main(command) == 2
    assert (f"visattn {subcommand} without --ckpt_path would score an untrained cbam_resnet20_cifar; give "
            "--ckpt_path best, last or FILE, or start the model from weights") in _one_error_line(capsys)
    assert main([*command, "--ckpt_path", "last"]) == 2  # Lightning only warned, then scored random weights
    assert (f"--ckpt_path last: no last checkpoint in {CHECKPOINTS}; run `visattn fit` with this config first"
            in _one_error_line(capsys))


def test_predict_writes_one_json_line_per_sample_and_says_where(in_tmp, capsys):
    assert main(["predict", "--config", str(CBAM_CONFIG), *QUICK, *SHIPPED_WEIGHTS]) == 0
    written = Path("outputs") / CBAM_CONFIG.stem / "predictions.jsonl"  # trainer.default_root_dir of the config
    assert f"wrote 64 predictions to {written}" in capsys.readouterr().out
    records = [json.loads(line) for line in (in_tmp / written).read_text().splitlines()]
    assert [r["sample"] for r in records] == list(range(64))
    labels = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}
    for record in records:
        top = record["predictions"]
        assert len(top) == 5 and {p["label"] for p in top} <= labels  # the data's class names, linked into the model
        assert [p["prob"] for p in top] == sorted((p["prob"] for p in top), reverse=True)
    assert sum(r["predictions"][0]["prob"] for r in records) / 64 > 0.6  # trained weights, not a uniform guess


def test_predictions_that_cannot_be_written_name_the_runs_folder_and_keep_the_earlier_file(in_tmp, monkeypatch,
                                                                                           capsys):
    """A file-size limit (or a full disk) at predictions.jsonl was blamed on standard output, which was empty, with
    exit 1 (a preemption audit)."""
    import errno

    written = in_tmp / "outputs" / CBAM_CONFIG.stem / "predictions.jsonl"
    written.parent.mkdir(parents=True)
    written.write_text("")  # an earlier predict's, with no predictions
    real_write_text = Path.write_text

    def too_large(self, *args, **kwargs):
        if self.name.startswith(".predictions.jsonl."):
            raise OSError(errno.EFBIG, "File too large")  # as a write(2) reports it: no file name
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", too_large)
    assert main(["predict", "--config", str(CBAM_CONFIG), *QUICK, *SHIPPED_WEIGHTS]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"visattn: error: trainer.default_root_dir {written.parent.relative_to(in_tmp)}: cannot write there (File too "
        "large); free some space or choose another trainer.default_root_dir folder")
    assert written.read_text() == "" and not list(written.parent.glob(".predictions.jsonl*"))  # no temp file left


def test_prediction_records_of_captioners_and_detectors():
    from visattn.tasks.prediction_writer import _prediction_records

    captions = [{"caption": "a red bag", "finished": True}, {"caption": "", "finished": None}]
    assert _prediction_records(captions, {}, 5) == captions
    # Boxes at full precision, as scores: rounded to 0.1 px, COCOeval on them had given another mAP than visattn's.
    found = [{"boxes": torch.tensor([[1.0, 2.0, 10.25, 20.03125]]), "scores": torch.tensor([0.91234]),
              "labels": torch.tensor([1])}, {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                             "labels": torch.zeros(0, dtype=torch.long)}]
    assert _prediction_records(found, {"class_names": ["top", "bag"]}, 5) == [
        {"detections": [{"label": "bag", "index": 1, "score": pytest.approx(0.91234), "box": [1.0, 2.0, 10.25, 20.03125]}]},
        {"detections": []}]


def test_fast_dev_run_writes_no_checkpoint_and_a_run_too_short_to_warm_up_resumes(in_tmp):
    fit = ["fit", "--config", str(CBAM_CONFIG), *QUICK]
    assert main([*fit, "--trainer.fast_dev_run", "true"]) == 0
    assert not list(in_tmp.rglob("*.ckpt"))  # Lightning's save_last wrote last.ckpt, which --ckpt_path last took
    # One step: no warm-up fits, which used to save a plain cosine schedule where a longer run has two.
    assert main([*fit, "--trainer.max_steps", "1"]) == 0
    assert main([*fit, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    resumed = _read(in_tmp / CHECKPOINTS / "last.ckpt")
    assert resumed["global_step"] > 1 and "_schedulers" in resumed["lr_schedulers"][0]


def test_a_fit_with_checkpointing_off_runs_and_writes_no_checkpoint(in_tmp):
    """Lightning refused the configs' ModelCheckpoint callbacks under enable_checkpointing false, and only
    `--trainer.callbacks=[]` (every callback) removed them (from a trainer-options audit)."""
    assert main(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_steps", "2",
                 "--trainer.enable_checkpointing", "false"]) == 0
    assert not list(in_tmp.rglob("*.ckpt")) and list(in_tmp.rglob("metrics.csv"))  # the logger still writes


def test_fit_from_an_explicitly_named_damaged_checkpoint_is_one_line_and_resumes_nothing(in_tmp, capsys):
    assert main(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_steps", "1"]) == 0
    damaged = in_tmp / CHECKPOINTS / "copy.ckpt"  # beside good checkpoints the fallback used to pick instead
    good = (in_tmp / CHECKPOINTS / "last.ckpt").read_bytes()
    damaged.write_bytes(good[: len(good) // 2])
    before = {p.name: p.read_bytes() for p in (in_tmp / CHECKPOINTS).iterdir()}
    capsys.readouterr()
    assert main(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_steps", "2",
                 "--ckpt_path", str(damaged)]) == 2
    error = _one_error_line(capsys)
    assert error.startswith(f"visattn: error: {damaged}: unreadable checkpoint") and "--ckpt_path last" in error
    assert {p.name: p.read_bytes() for p in (in_tmp / CHECKPOINTS).iterdir()} == before


def test_fresh_fit_into_a_folder_with_an_earlier_runs_checkpoints_is_refused(in_tmp, capsys):
    fit = ["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_steps", "1"]
    assert main(fit) == 0
    before = {p.name: p.read_bytes() for p in (in_tmp / CHECKPOINTS).iterdir()}
    capsys.readouterr()
    assert main(fit) == 2  # it used to write last-v1.ckpt, leaving last.ckpt the earlier run's
    assert (f"{CHECKPOINTS} holds checkpoints of an earlier run; resume it with --ckpt_path last, or start afresh "
            "after moving them elsewhere") in _one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in (in_tmp / CHECKPOINTS).iterdir()} == before  # nothing moved or deleted
    # A misspelt model is named first: the folder had been the only error, and the name the next one (a README audit).
    for name, named in (("cbam_resnet20_cifr", "unknown model 'cbam_resnet20_cifr': did you mean cbam_resnet20_cifar"),
                        ("se_resnet20_cifar.fmnst", "no weights se_resnet20_cifar.fmnst")):
        assert main([*fit, "--model.init_args.model_name", name]) == 2
        assert _one_error_line(capsys).startswith(f"visattn: error: {named}")
    # ... but not a config's model that a checkpoint replaces (its hyperparameters name the model validated)
    tagged = in_tmp / "tagged.yaml"
    tagged.write_text("model:\n  init_args:\n    model_name: cbam_resnet20_cifar.nowhere\n")
    assert main(["validate", "--config", str(CBAM_CONFIG), "--config", str(tagged), *QUICK,
                 "--ckpt_path", "last"]) == 0


def test_a_modules_own_model_name_is_not_looked_up_in_the_registry():
    """A LightningModule of one's own may take a `model_name` that is no visattn model (a review)."""
    from jsonargparse import Namespace

    from visattn.errors import UnknownModelError
    from visattn.tasks.setting_checks import _check_model_name

    own = Namespace(class_path="lightning.pytorch.LightningModule", init_args=Namespace(model_name="bert-base-uncased"))
    _check_model_name(own, None)
    task = Namespace(class_path="visattn.tasks.classification.ImageClassifier",
                     init_args=Namespace(model_name="bert-base-uncased"))
    with pytest.raises(UnknownModelError, match="unknown model 'bert-base-uncased'"):
        _check_model_name(task, None)


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt  # what Python's SIGINT handler raises in the main thread


@pytest.mark.parametrize("subcommand, step, message", [
    ("fit", "training_step", "visattn: interrupted; no checkpoint was saved yet, so run the same command again to "
                             "start afresh"),
    ("validate", "validation_step", "visattn: interrupted"),
    ("test", "test_step", "visattn: interrupted"),
    ("predict", "predict_step", "visattn: interrupted"),
], ids=["fit", "validate", "test", "predict"])
@pytest.mark.usefixtures("ctrl_c_not_ignored")
def test_ctrl_c_in_a_lightning_command_is_one_line_and_exit_code_130(subcommand, step, message, in_tmp, monkeypatch,
                                                                     capfd):
    import signal

    monkeypatch.setattr(ImageClassifier, step, _ctrl_c)
    # Lightning catches the KeyboardInterrupt, shuts down, logs a notice and exits with status 1.
    assert main([subcommand, "--config", str(CBAM_CONFIG), *QUICK, *SHIPPED_WEIGHTS]) == 130
    err = capfd.readouterr().err
    assert err.strip().splitlines()[-1] == message and "KeyboardInterrupt" not in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning had set it to ignore Ctrl-C


@pytest.mark.parametrize("rank", [0, 1])
def test_ctrl_c_is_said_by_the_first_process_only(rank, monkeypatch, capsys):
    """Ctrl-C reaches every process of a DDP run, and each had printed the line (3 runs in 4 of a DDP audit)."""
    from lightning.pytorch.utilities import rank_zero_only

    import visattn.tasks.lightning_cli as lightning_cli

    monkeypatch.setattr(lightning_cli, "run_lightning_cli", _ctrl_c)
    monkeypatch.setattr(rank_zero_only, "rank", rank)
    assert main(["validate", "--config", str(CBAM_CONFIG)]) == 130
    assert capsys.readouterr().err == ("visattn: interrupted\n" if rank == 0 else "")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
@pytest.mark.usefixtures("hangup_not_ignored")
def test_sigterm_in_fit_stops_the_run_at_its_next_step_and_is_no_success(in_tmp, monkeypatch, capfd, signame):
    """timeout, docker stop or a scheduler's SIGTERM: Lightning stops at the next step with a SystemExit without a
    code, so a preempted run exited 0 as a finished one, without a line (an audit of preemption). SIGHUP, which
    Lightning leaves, is sent on as SIGTERM: its exception had left DDP's other processes waiting (a review)."""
    import os
    import signal

    real_step, sent = ImageClassifier.training_step, []

    def terminated_in_the_second_epoch(self, *args, **kwargs):
        if self.current_epoch == 1 and not sent:
            sent.append(os.kill(os.getpid(), getattr(signal, signame)))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(ImageClassifier, "training_step", terminated_in_the_second_epoch)
    handler = signal.getsignal(signal.SIGTERM)
    fit = ["fit", "--config", str(CBAM_CONFIG), *QUICK, *SHIPPED_WEIGHTS, "--trainer.max_epochs", "3",
           "--trainer.callbacks", EPOCH_AND_LAST]
    assert main(fit) == 143
    # the epoch's first step came before Lightning stopped: lost with the epoch, which a resumed run trains again
    assert capfd.readouterr().err.strip().splitlines()[-1] == ("visattn: terminated; resume with --ckpt_path last "
                                                               "(the step since its last checkpoint is trained again)")
    assert _read(in_tmp / CHECKPOINTS / "last.ckpt")["epoch"] == 0  # the finished epoch's, whole
    assert signal.getsignal(signal.SIGTERM) is handler


# A fit with loader workers whose second epoch sends SIGTERM (or SIGHUP) to its whole process group from another
# process, as slurm's scancel or a closed terminal does (torch's workers end quietly when the main process signals).
_STOPPED_AS_A_GROUP = """
import os, signal, subprocess, sys
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal's session has it: the tests may run under nohup
from visattn.cli import main
from visattn.tasks.classification import ImageClassifier
real_step, sent = ImageClassifier.training_step, []

def stopped_in_the_second_epoch(self, batch, batch_idx):
    if self.current_epoch == 1 and batch_idx == 1 and not sent:
        sent.append(subprocess.run(["kill", "-" + sys.argv[1], "--", "-%d" % os.getpgid(0)], start_new_session=True))
    return real_step(self, batch, batch_idx)

ImageClassifier.training_step = stopped_in_the_second_epoch
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signame", ["TERM", "HUP"])
def test_a_stop_sent_to_the_whole_process_group_with_loader_workers_is_one_line(in_tmp, signame):
    """Slurm's scancel and preemption, or a closed terminal, signal the loader workers too, and they died at once:
    the next batch failed with "DataLoader worker (pid N) is killed by signal: Terminated", a 146-line traceback and
    exit 1, where the command says one line and exits 143 (an operations audit)."""
    fit = ["fit", "--config", str(CBAM_CONFIG), *QUICK, *SHIPPED_WEIGHTS, "--trainer.max_epochs", "3",
           "--trainer.callbacks", EPOCH_AND_LAST, "--data.init_args.num_workers", "2"]
    proc = subprocess.run([sys.executable, "-c", _STOPPED_AS_A_GROUP, signame, *fit], capture_output=True, text=True,
                          timeout=600, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 143 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # the step the workers died in, or the one after, when Lightning stops: which, the signals' timing decides
    assert re.fullmatch(r"visattn: terminated; resume with --ckpt_path last \(the (step|2 steps) since its last "
                        r"checkpoint (is|are) trained again\)", proc.stderr.strip().splitlines()[-1]), proc.stderr[-2000:]
    assert _read(in_tmp / CHECKPOINTS / "last.ckpt")["epoch"] == 0


def test_a_fit_logged_to_a_file_says_each_epochs_metrics_as_it_ends_and_where_its_files_went(in_tmp, capsys):
    """Output that is no terminal (slurm, nohup, `> log.txt`) had Rich's bar drawn once, after the run: the last
    epoch only, and a killed job's log showed no epoch though its checkpoints were saved (an operations audit)."""
    import csv

    quick = QUICK[:QUICK.index("--trainer.enable_progress_bar")] + QUICK[QUICK.index("--trainer.enable_progress_bar")
                                                                          + 2:]
    assert main(["fit", "--config", str(CBAM_CONFIG), *quick, *SHIPPED_WEIGHTS, "--trainer.max_epochs", "2"]) == 0
    out = capsys.readouterr().out
    epochs = re.findall(r"^epoch (\d)/1: train/loss ([\d.]+), val/top1 ([\d.]+), val/top5 ([\d.]+) "
                        r"\(step \d+, \d+ s\)$", out, re.M)
    logs = in_tmp / "outputs" / CBAM_CONFIG.stem / "logs" / "version_0"
    with open(logs / "metrics.csv") as file:
        logged = [row for row in csv.DictReader(file) if row["val/top1"]]
    assert [e[0] for e in epochs] == ["0", "1"] and "\r" not in out, out
    assert [float(e[2]) for e in epochs] == [float(f"{float(row['val/top1']):.4g}") for row in logged]
    assert out.strip().splitlines()[-1] == f"checkpoints in {in_tmp / CHECKPOINTS}; logs in {logs}"
    # an epoch that did not validate shows no scores of the last that did (a review)
    assert main(["fit", "--config", str(CBAM_CONFIG), *quick, *SHIPPED_WEIGHTS, "--trainer.max_epochs", "4",
                 "--trainer.check_val_every_n_epoch", "2", "--trainer.callbacks", EPOCH_AND_LAST.replace(
                     str(CHECKPOINTS), "every_second")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 4 and all(("val/top1" in line) == (k % 2 == 1) for k, line in enumerate(lines)), lines


@pytest.mark.parametrize("first_output", ["model summary", "epoch line"])
def test_a_fit_whose_output_pipe_is_closed_stops_with_141_and_says_how_to_resume(first_output, in_tmp):
    """`visattn fit ... | head -2`: Rich's console, meeting the closed pipe in the model summary, exited 1 without a
    word, and an epoch's line to it was a BrokenPipeError; now the exit code of a closed pipe, and one line on
    stderr for the steps a resume trains again."""
    quick = [arg for arg in QUICK if arg not in ("--trainer.enable_progress_bar", "false")]
    summary = "true" if first_output == "model summary" else "false"
    proc = subprocess.Popen([sys.executable, "-m", "visattn", "fit", "--config", str(CBAM_CONFIG), *quick,
                             "--trainer.max_epochs", "1", "--trainer.enable_model_summary", summary], cwd=in_tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader went away before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=600) == 141, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("visattn: stopped, as its standard output was closed; no checkpoint was "
                                            "saved yet, so run the same command again to start afresh")


def test_sigterm_in_predict_stops_it_writing_nothing(in_tmp, monkeypatch, capsys):
    """Lightning's predict loop never looks at SIGTERM: predict ran to its end and exited 0 (a review)."""
    import os
    import signal

    real_step = ImageClassifier.predict_step

    def terminated(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(ImageClassifier, "predict_step", terminated)
    assert main(["predict", "--config", str(CBAM_CONFIG), *QUICK, *SHIPPED_WEIGHTS]) == 143
    assert capsys.readouterr().err.splitlines()[-1] == "visattn: terminated"
    assert not (in_tmp / "outputs" / CBAM_CONFIG.stem / "predictions.jsonl").exists()


def test_sigterm_while_a_lightning_command_reads_its_config_is_one_line(monkeypatch, capsys):
    """Before Lightning's handling starts, SIGTERM ended the process at once, without a line (an audit)."""
    import os
    import signal

    import visattn.tasks.lightning_cli as lightning_cli

    def terminated(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        return argv

    monkeypatch.setattr(lightning_cli, "_with_shipped_configs", terminated)  # where run_lightning_cli looks it up
    assert main(["fit", "--config", str(CBAM_CONFIG)]) == 143
    assert capsys.readouterr().err == "visattn: terminated\n"


def test_ctrl_c_after_a_checkpoint_says_how_to_resume(in_tmp, monkeypatch, capfd):
    real_step = ImageClassifier.training_step

    def second_epoch_interrupted(self, *args, **kwargs):
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(ImageClassifier, "training_step", second_epoch_interrupted)
    fit = ["fit", "--config", str(CBAM_CONFIG), *QUICK, *SHIPPED_WEIGHTS, "--trainer.max_epochs", "2",
           "--trainer.callbacks", EPOCH_AND_LAST]
    assert main(fit) == 130
    assert capfd.readouterr().err.strip().splitlines()[-1] == "visattn: interrupted; resume with --ckpt_path last"
    assert (in_tmp / CHECKPOINTS / "last.ckpt").is_file()


# A run whose ModelCheckpoints keep no last.ckpt: every epoch's best-k file in a folder of its own, or (no callbacks)
# Lightning's default, the newest epoch's in the logger's version_N/checkpoints.
_NO_LAST = {"top-k": json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                  "init_args": {"dirpath": "topk", "save_top_k": -1, "monitor": "val/top1",
                                                "mode": "max"}}]),
            "lightning's default": "[]"}


@pytest.mark.parametrize("callbacks", list(_NO_LAST))
def test_ctrl_c_in_a_run_that_keeps_no_last_checkpoint_names_the_one_to_resume(callbacks, in_tmp, monkeypatch, capfd):
    """A stop after the first epoch's checkpoint said "no checkpoint was saved yet, so run the same command again to
    start afresh", which the top-k run's folder then refused, sending the user to `--ckpt_path last`, refused too (an
    audit of interrupted runs)."""
    real_step, interrupted = ImageClassifier.training_step, []

    def second_epoch_interrupted(self, *args, **kwargs):
        if self.current_epoch == 1 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(ImageClassifier, "training_step", second_epoch_interrupted)
    fit = ["fit", "--config", str(CBAM_CONFIG), *QUICK, *SHIPPED_WEIGHTS, "--trainer.max_epochs", "2",
           "--trainer.callbacks", _NO_LAST[callbacks]]
    assert main(fit) == 130
    saved, = in_tmp.glob("**/*.ckpt")
    line = capfd.readouterr().err.strip().splitlines()[-1]
    hint = "visattn: interrupted; resume with --ckpt_path "
    assert line.startswith(hint) and Path(line.removeprefix(hint)).resolve() == saved.resolve(), line
    if callbacks == "top-k":  # the rerun the line had advised is refused, naming the same file
        assert main(fit) == 2
        refused = capfd.readouterr().err.strip().splitlines()[-1]
        named = re.fullmatch(r"visattn: error: topk holds checkpoints of an earlier run; resume it with --ckpt_path "
                             r"(\S+), or start afresh after moving them elsewhere .*", refused)
        assert named and Path(named[1]).resolve() == saved.resolve(), refused
    assert main([*fit, "--ckpt_path", line.removeprefix(hint)]) == 0  # resumed as the line says, to the end
    assert max(_read(path)["global_step"] for path in in_tmp.glob("**/*.ckpt")) == 2 * STEPS_PER_EPOCH


# --- Resuming with augmentation ---------------------------------------------------------------


class _AugmentedImages(torch.utils.data.Dataset):
    """Eight images through a fresh training transform: its draws are all that varies. ``other_draws``
    adds a draw from each random module a dataset may use (a caption dataset picks a caption with torch)."""

    other_draws = False

    def __init__(self) -> None:
        import numpy as np

        from visattn.data.transforms import train_transforms

        self.images = np.random.default_rng(0).integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)
        self.transform = train_transforms(24)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.transform(self.images[index]).flatten().float()
        if not self.other_draws:
            return image
        import random

        import numpy as np

        return torch.cat([image, torch.rand(1), torch.tensor([np.random.rand(), random.random()])])


def _augmented_train_loader(workers: int, persistent: bool = False) -> torch.utils.data.DataLoader:
    """The training DataLoader a data module builds (the mixin's), over new objects as a new process has."""
    from lightning.fabric.utilities.data import AttributeDict

    from visattn.data.datamodules import SplitLoadersMixin

    class Module(SplitLoadersMixin):
        hparams = AttributeDict(batch_size=2, num_workers=workers, augment=True, persistent_workers=persistent)

    module = Module()
    module.datasets = {"train": _AugmentedImages()}
    return module.train_dataloader()


@pytest.mark.parametrize("workers, persistent", [(0, False), (2, False), (2, True)])
def test_augmentation_of_an_epoch_is_the_same_whether_the_epoch_before_ran_in_this_process(workers, persistent):
    torch.manual_seed(0)
    loader = _augmented_train_loader(workers, persistent)
    first = torch.cat(list(loader))
    state = torch.get_rng_state()  # what a checkpoint written after the first epoch holds
    second = torch.cat(list(loader))

    torch.manual_seed(0)  # a resumed run: seeded alike, new data objects, the random state restored
    loader = _augmented_train_loader(workers, persistent)
    torch.set_rng_state(state)
    _set_sampler_epoch(loader, 1)  # as Lightning's fit loop does before each epoch
    resumed = torch.cat(list(loader))
    # (In the main process a new pipeline drew the first epoch's augmentations again; persistent
    # workers not reseeded carried their random states over from the first epoch.)
    torch.testing.assert_close(resumed, second, rtol=0, atol=0)
    assert not torch.equal(first, second)


def test_persistent_training_workers_draw_each_epoch_what_new_workers_draw(monkeypatch):
    from lightning.fabric.utilities.seed import pl_worker_init_function

    monkeypatch.setattr(_AugmentedImages, "other_draws", True)
    epochs = {}
    for persistent in (False, True):
        torch.manual_seed(0)
        loader = _augmented_train_loader(2, persistent)
        loader.worker_init_fn = pl_worker_init_function  # as Lightning sets it under seed_everything(workers=True)
        epochs[persistent] = [torch.cat(list(loader)) for _ in range(3)]
        assert loader.persistent_workers is persistent
    for new, kept in zip(epochs[False], epochs[True]):
        torch.testing.assert_close(kept, new, rtol=0, atol=0)  # the shuffle and every draw
    assert not torch.equal(epochs[True][1], epochs[True][2])


@pytest.mark.parametrize("workers, persistent", [(0, False), (2, False), (2, True)])
def test_a_resumed_run_with_augmentation_reaches_the_uninterrupted_runs_weights(tmp_path, monkeypatch, workers,
                                                                               persistent):
    run = ["--trainer.max_epochs", "2", "--data.init_args.augment", "true",
           "--data.init_args.num_workers", str(workers), "--data.init_args.persistent_workers", str(persistent)]
    uninterrupted, interrupted = _straight_and_interrupted_runs(tmp_path, monkeypatch, run)
    assert _fit(*run, "--ckpt_path", "last") == 0

    resumed = _read(interrupted / CHECKPOINTS / "last.ckpt")
    assert resumed["global_step"] == uninterrupted["global_step"] == 2 * STEPS_PER_EPOCH
    torch.testing.assert_close(resumed["state_dict"], uninterrupted["state_dict"], rtol=0, atol=0)
    assert _final_val_top1(resumed) == _final_val_top1(uninterrupted)


# ---------------------------------------------------------------------------------------------
# checkpoints whose metadata or weights were edited or damaged, and what is no file at all
# ---------------------------------------------------------------------------------------------

EDITED = "the file was edited or damaged: use the checkpoint as training wrote it"
SMALL_PREPROCESSING = {"input_size": [3, 28, 28], "mean": [0.5] * 3, "std": [0.5] * 3, "recipe": "small"}


def _classifier_checkpoint(path: Path, **edits) -> Path:
    """A three-class resnet20_cifar checkpoint as `visattn fit` writes it, with ``edits`` to its hyperparameters."""
    torch.manual_seed(0)
    task = ImageClassifier("resnet20_cifar", num_classes=3, class_names=["a", "b", "c"],
                           preprocessing=SMALL_PREPROCESSING)
    return _task_checkpoint(path, "visattn.tasks.classification.ImageClassifier", {**task.hparams, **edits},
                            task.state_dict())


def _classify(checkpoint: Path, capsys) -> str:
    """The one error line of `visattn classify` and `visattn evaluate` (the same) with ``checkpoint``."""
    from PIL import Image

    Image.new("RGB", (28, 28), (90, 90, 90)).save(checkpoint.parent / "item.png")
    capsys.readouterr()
    assert main(["classify", str(checkpoint.parent / "item.png"), "--checkpoint", str(checkpoint)]) == 2
    error = _one_error_line(capsys)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "fashion-mnist", "--limit", "4"]) == 2
    assert _one_error_line(capsys) == error
    return error


@pytest.mark.parametrize("edits, problem", [
    ({"preprocessing": {"mean": [0.5] * 3, "std": [0.5] * 3}}, "preprocessing has no input_size"),
    ({"preprocessing": {"input_size": [3, 28, 28], "recipe": "small"}}, "preprocessing has no mean or std"),
    ({"model_kwargs": [1]}, "model_kwargs=[1]: give an object of builder arguments, e.g. {'depth': 4}"),
    ({"preprocessing": "small"}, "preprocessing='small': give an object with input_size, mean and std"),
    ({"preprocessing": {**SMALL_PREPROCESSING, "input_size": 28}},
     "preprocessing.input_size=28: give [C, H, W], C being 1 (gray) or 3 (RGB)"),
    ({"num_classes": "3"}, "num_classes='3': give a whole number of classes (0: features only)"),
    ({"class_names": "abc"}, "class_names='abc': give a list of label names, one per class"),
    ({"model_name": 7}, "model_name=7: give a model name, e.g. 'se_resnet20_cifar'"),
], ids=["no_input_size", "no_mean_std", "model_kwargs_list", "preprocessing_string", "input_size_int",
        "num_classes_string", "class_names_string", "model_name_int"])
def test_a_checkpoint_with_edited_metadata_is_one_line_naming_the_field(edits, problem, tmp_path, capsys):
    checkpoint = _classifier_checkpoint(tmp_path / "edited.ckpt", **edits)
    assert _classify(checkpoint, capsys) == f"visattn: error: {checkpoint}: hyper_parameters.{problem}; {EDITED}"


def test_a_checkpoint_whose_hyperparameters_are_no_object_is_one_line(tmp_path, capsys):
    checkpoint = _classifier_checkpoint(tmp_path / "edited.ckpt")
    written = torch.load(checkpoint, weights_only=True)
    torch.save({**written, "hyper_parameters": [1]}, checkpoint)
    assert _classify(checkpoint, capsys) == (f"visattn: error: {checkpoint}: hyper_parameters=[1]: give the run's "
                                             f"arguments as an object; {EDITED}")


@pytest.mark.parametrize("field, value, wanted", [
    ("std", [0, 0, 0], "give 3 finite numbers above 0"),
    ("std", [0.5, -0.5, 0.5], "give 3 finite numbers above 0"),
    ("std", [float("inf")] * 3, "give 3 finite numbers above 0"),
    ("mean", [float("nan")] * 3, "give 3 finite numbers"),
    ("mean", [0.5, 0.5], "give 3 finite numbers"),
], ids=["zero_std", "negative_std", "infinite_std", "nan_mean", "two_means"])
def test_normalisation_that_would_print_nan_is_refused_at_load_and_transform_time(field, value, wanted, tmp_path,
                                                                                 capsys):
    from visattn.data.transforms import eval_transforms, train_transforms
    from visattn.errors import ConfigError

    problem = f"{field}={value!r}: {wanted} (one per RGB channel) or 1 for all"
    checkpoint = _classifier_checkpoint(tmp_path / "edited.ckpt", preprocessing={**SMALL_PREPROCESSING, field: value})
    expected = f"visattn: error: {checkpoint}: hyper_parameters.preprocessing.{problem}; {EDITED}"
    assert _classify(checkpoint, capsys) == expected
    for build in (eval_transforms, train_transforms):
        with pytest.raises(ConfigError) as err:
            build(**{**SMALL_PREPROCESSING, field: value, "input_size": 28})
        assert str(err.value) == problem


def test_a_checkpoint_with_nan_weights_is_refused_not_scored(tmp_path, capsys):
    checkpoint = _classifier_checkpoint(tmp_path / "diverged.ckpt")
    written = torch.load(checkpoint, weights_only=True)
    written["state_dict"]["model.fc.weight"][0, 0] = float("nan")
    torch.save(written, checkpoint)
    assert _classify(checkpoint, capsys) == (f"visattn: error: {checkpoint}: tensor 'fc.weight' holds NaN or Inf "
                                             "values; the file is corrupt or from a diverged run: use an earlier "
                                             "checkpoint")


def test_a_fifo_given_as_checkpoint_is_not_a_regular_file_and_is_not_read(tmp_path):
    import os

    fifo = tmp_path / "run.ckpt"
    os.mkfifo(fifo)
    # A subprocess with a timeout: opening the FIFO would wait for a writer forever.
    proc = subprocess.run([sys.executable, "-m", "visattn.cli", "classify", "x.png", "--checkpoint", str(fifo)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"visattn: error: {fifo}: not a regular file (a device, FIFO or socket); give a file path\n"


def test_a_run_started_from_a_weights_file_tests_and_resumes_after_the_file_is_gone(in_tmp, capsys):
    """The checkpoint holds every weight, yet the model was first built from the starting file again: with
    it moved, test and resume failed ("weights file not found"); with it there, they warned of its dropped head."""
    start = in_tmp / "start.pth"
    torch.save(create_model("cbam_resnet20_cifar", num_classes=4).state_dict(), start)  # the data has 10 classes
    run = ["--config", str(CBAM_CONFIG), *QUICK, "--model.init_args.pretrained", str(start)]
    assert main(["fit", *run, "--trainer.max_epochs", "1"]) == 0
    assert "does not fit num_classes=10: dropped fc.weight, fc.bias" in capsys.readouterr().err
    start.unlink()
    assert main(["test", *run, "--ckpt_path", "last"]) == 0
    assert main(["fit", *run, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    # (the quick run is too short for the config's EMA and warm-up, which are warned about too)
    warned = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("warning:") and "ema_decay" not in line and "warmup_epochs" not in line]
    assert len(warned) == 1 and "its run planned 4 optimizer steps" in warned[0]  # the longer run's, and only that
    assert _read(in_tmp / CHECKPOINTS / "last.ckpt")["global_step"] == 2 * STEPS_PER_EPOCH


def _folder_predict_config(root: Path, classes: list[str]) -> Path:
    """An image folder of two 28 px images per class, and a predict config over it from the shipped weights."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / "images" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(root / "images" / name / f"{i}.png")
    config = {"trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "default_root_dir": str(root / "run")},
              "model": {"class_path": "visattn.tasks.classification.ImageClassifier",
                        "init_args": {"model_name": "se_resnet20_cifar.fmnist"}},
              "data": {"class_path": "visattn.data.ImageFolderDataModule",
                       "init_args": {"root": str(root / "images"), "test_root": str(root / "images"), "batch_size": 4,
                                     "num_workers": 0, "img_size": 28, "recipe": "small", "augment": False,
                                     "mean": [0.286] * 3, "std": [0.353] * 3}}}
    path = root / "predict.yaml"
    path.write_text(json.dumps(config))
    return path


def test_predict_from_shipped_weights_scores_their_head_or_refuses_one_it_cannot_fill(in_tmp, capsys):
    """Folders named as the README says (T-shirt_top for T-shirt/top) got a random head, as did two classes:
    near-uniform predictions, exit 0."""
    import numpy as np
    from PIL import Image

    from visattn.data import FASHION_MNIST_CLASSES
    from visattn.inference.classifier import load_classifier

    folders = [name.replace("/", "_") for name in FASHION_MNIST_CLASSES]
    assert main(["predict", "--config", str(_folder_predict_config(in_tmp / "ten", folders))]) == 0
    records = [json.loads(line) for line in (in_tmp / "ten" / "run" / "predictions.jsonl").read_text().splitlines()]
    shipped = load_classifier("se_resnet20_cifar.fmnist")
    assert len(records) == 20
    for record in records:  # the data's labels are the folders, in their sorted order
        pixels = np.asarray(Image.open(record["file"]).convert("RGB"))
        probs = shipped.predict(shipped.transform()(pixels)[None])[0]
        assert record["predictions"][0]["label"] == folders[int(probs.argmax())]
        assert record["predictions"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert main(["predict", "--config", str(_folder_predict_config(in_tmp / "two", ["cat", "dog"]))]) == 2
    assert ("visattn predict would score an untrained classifier head: the weights' classifier 'fc' does not fit "
            "num_classes=2; give --ckpt_path of a run fine-tuned on these classes") in _one_error_line(capsys)


def test_a_checkpoint_name_that_would_write_a_metrics_slash_is_one_line_before_training(in_tmp, capsys):
    """best-{epoch}-{val/loss:.4f} wrote best-epoch=0-val/loss=2.1280.ckpt in a folder --ckpt_path best never read."""
    callbacks = json.loads(EPOCH_AND_LAST)
    callbacks[0]["init_args"].update(monitor="val/loss", mode="min", filename="best-{epoch}-{val/loss:.4f}")
    assert _fit_with(callbacks) == 2
    assert _error(capsys) == (
        "visattn: error: trainer.callbacks: ModelCheckpoint(filename='best-{epoch}-{val/loss:.4f}') would write "
        "val/loss= into the file name, and its '/' makes a folder that --ckpt_path best does not look in; name it "
        "yourself, e.g. 'val_loss={val/loss:.4f}', with auto_insert_metric_name: false")
    assert not list(in_tmp.rglob("*.ckpt"))
    callbacks[0]["init_args"].update(filename="best-{epoch}-val_loss={val/loss:.4f}", auto_insert_metric_name=False)
    assert _fit_with(callbacks) == 0
    assert main(["validate", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.callbacks", json.dumps(callbacks),
                 "--ckpt_path", "best"]) == 0


def test_a_checkpoint_name_of_a_metric_the_run_does_not_log_is_one_line_before_training(in_tmp, capsys):
    """best-{epoch}-{val_loss:.4f} wrote best-epoch=0-val_loss=0.0000.ckpt: Lightning fills a metric it lacks with 0
    (from a trainer-options audit)."""
    callbacks = json.loads(EPOCH_AND_LAST)
    callbacks[0]["init_args"].update(monitor="val/loss", mode="min", filename="best-{epoch}-{val_loss:.4f}")
    assert _fit_with(callbacks) == 2
    assert _error(capsys) == (
        "visattn: error: trainer.callbacks: ModelCheckpoint(filename='best-{epoch}-{val_loss:.4f}'): the run logs no "
        "val_loss, which Lightning would write as 0; did you mean val/loss? write it as 'val_loss={val/loss:.4f}' "
        "with auto_insert_metric_name: false")
    assert not list(in_tmp.rglob("*.ckpt"))


def _fit_with(callbacks: list) -> int:
    return main(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_epochs", "1",
                 "--trainer.callbacks", json.dumps(callbacks)])


def test_nothing_to_resume_is_warned_about_in_place_of_lightnings_line(tmp_path, recwarn):
    """(The first process's only:
    test_reliability_cli.py::test_the_config_warnings_of_a_fit_are_the_first_processs_to_say.)"""
    from jsonargparse import Namespace

    from visattn.tasks import checkpoint_paths

    callbacks = [Namespace(class_path="lightning.pytorch.callbacks.ModelCheckpoint",
                           init_args=Namespace(dirpath=str(tmp_path / "checkpoints")))]
    checkpoint_paths._refuse_mixed_runs("last", callbacks)
    assert [str(w.message) for w in recwarn] == [f"--ckpt_path last: nothing to resume in {tmp_path / 'checkpoints'} "
                                                 "yet, so this fit starts afresh"]


@pytest.mark.parametrize("starting, warned", [("null", True), ("false", False), ("timm's checkpoint_path", False)])
def test_a_timm_model_left_without_starting_weights_is_said_to_start_from_random_ones(starting, warned, in_tmp,
                                                                                      capsys):
    """pretrained null loads an ARCH.TAG's weights but none of timm's: a fine-tune of timm:resnet18 ran from scratch
    without a word."""
    import timm

    pretrained = {"null": [], "false": ["--model.init_args.pretrained", "false"]}.get(starting)
    if pretrained is None:  # timm loads the file itself
        torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), in_tmp / "resnet18.pth")
        pretrained = ["--model.init_args.model_kwargs", json.dumps({"checkpoint_path": str(in_tmp / "resnet18.pth")})]
    assert _fit("--model.init_args.model_name", "timm:resnet18", "--trainer.max_steps", "1",
                "--trainer.limit_val_batches", "1", *pretrained) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "random weights" in line]
    assert said == (["warning: model.init_args.model_name timm:resnet18 starts from random weights: pretrained null "
                     "loads none of timm's; give model.init_args.pretrained true for timm's weights of resnet18 (from "
                     "the hub or its cache) or a weights FILE, or pretrained false to say that random is meant"]
                    if warned else [])


def test_a_timm_checkpoint_path_that_is_not_there_is_one_line(in_tmp, capsys):
    """timm raises FileNotFoundError without a message, which jsonargparse could not format: a 60-line traceback
    ending in an IndexError (a DDP audit)."""
    missing = in_tmp / "nope.pth"
    assert _fit("--model.init_args.model_name", "timm:resnet18", "--trainer.max_steps", "1", "--model.init_args."
                "model_kwargs", json.dumps({"checkpoint_path": str(missing)})) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"visattn: error: model.init_args.model_kwargs.checkpoint_path {missing}: no such file; give the path of a "
        "weights file timm can load (.pth, .bin, .safetensors)"]


def test_a_run_moved_to_another_folder_resumes_keeping_last_ckpt_current(in_tmp, monkeypatch):
    """Lightning dropped the ModelCheckpoints' bookkeeping when the folder they recorded had changed: last.ckpt
    stayed at the epoch the run stopped (what `evaluate --checkpoint .../last.ckpt` reads) and the finished run went
    to last-v1.ckpt, with the old best and latest files kept (from a training-correctness audit)."""
    fit = ["fit", "--config", str(CBAM_CONFIG), *QUICK]
    (in_tmp / "first").mkdir()
    monkeypatch.chdir(in_tmp / "first")
    assert main([*fit, "--trainer.max_epochs", "1"]) == 0
    (in_tmp / "first").rename(in_tmp / "moved")
    monkeypatch.chdir(in_tmp / "moved")
    assert main([*fit, "--trainer.max_epochs", "3", "--ckpt_path", "last"]) == 0
    folder = in_tmp / "moved" / CHECKPOINTS
    names = sorted(p.name for p in folder.iterdir())
    assert "last-v1.ckpt" not in names and [n for n in names if n.startswith("latest-")] == ["latest-epoch=002.ckpt"]
    assert len([n for n in names if n.startswith("best-")]) == 1
    last = _read(folder / "last.ckpt")
    assert last["epoch"] == 2 and all(state["dirpath"] == str(folder.resolve())
                                      for key, state in last["callbacks"].items() if key.startswith("ModelCheckpoint"))


@pytest.mark.filterwarnings("ignore:.*its run planned")
def test_a_run_without_warm_up_saved_by_visattn_before_2026_12_02_resumes(in_tmp, monkeypatch):
    """Its schedule was a bare CosineAnnealingLR, visattn's since a SequentialLR: resuming it was a traceback,
    KeyError: '_schedulers' (from an audit of files older versions wrote)."""
    import visattn.tasks.optimization as optimization

    fit = ["fit", "--config", str(CBAM_CONFIG), *QUICK, "--model.init_args.warmup_epochs", "0"]
    with monkeypatch.context() as old_code:
        old_code.setattr(optimization, "warmup_cosine", lambda optimizer, warmup_steps, total_steps:
                         torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps))
        assert main([*fit, "--trainer.max_epochs", "1"]) == 0
    old = _read(in_tmp / CHECKPOINTS / "last.ckpt")["lr_schedulers"][0]
    assert "_schedulers" not in old and old["last_epoch"] == old["T_max"] == 4
    assert main([*fit, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    resumed = _read(in_tmp / CHECKPOINTS / "last.ckpt")["lr_schedulers"][0]
    cosine = resumed["_schedulers"][-1]  # the saved cosine, gone on from step 4 to 8
    assert resumed["_milestones"] == [0] and (cosine["T_max"], cosine["last_epoch"], resumed["last_epoch"]) == (4, 8, 8)
