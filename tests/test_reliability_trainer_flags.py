"""Lightning Trainer flags and callbacks a user brings to `visattn fit`, with each task: they run and do what they
say (the schedule and the weight average step once per optimizer step), or are one line naming the fix."""
import json
import re
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.tuner import Tuner

from fixtures_images import write_image_folder
from test_classification import REPO
from test_data import needs_fashion_mnist
from visattn.cli import main
from visattn.data import ImageFolderDataModule
from visattn.errors import ConfigError
from visattn.tasks.classification import ImageClassifier

# Each task's config and a tiny run of it: 4 training batches an epoch and 1 validation batch, and the validation
# metric its shipped config monitors.
TASKS = {
    "classification": ("classification/imagefolder_template.yaml", "val/top1", [
        "--model.init_args.model_name", "se_resnet20_cifar", "--data.init_args.root", "photos",
        "--data.init_args.img_size", "16", "--data.init_args.batch_size", "4", "--data.init_args.val_fraction", "0.2"]),
    "captioning": ("captioning/sat_scenes.yaml", "val/cider", [
        "--model.init_args.model_name", "sat_cbam_resnet_scenes", "--model.init_args.max_len", "6",
        "--model.init_args.model_kwargs", json.dumps({"encoder_kwargs": {"layers": [1, 1], "widths": [8, 16],
                                                                         "small_input": False},
                                                      "img_size": 64, "grid_size": 4, "embed_dim": 16,
                                                      "hidden_dim": 16, "attn_dim": 16}),
        "--data.init_args.num_train", "32", "--data.init_args.num_val", "8", "--data.init_args.batch_size", "8"]),
    "detection": ("detection/fcos_scenes.yaml", "val/map50", [
        "--model.init_args.model_name", "fcos_resnet20_cifar", "--trainer.precision", "32-true",
        "--model.init_args.model_kwargs", json.dumps({"backbone_kwargs": {"layers": [1, 1, 1], "widths": [8, 16, 32]},
                                                      "out_channels": 32, "min_size": 48, "max_size": 64}),
        "--data.init_args.num_train", "32", "--data.init_args.num_val", "8", "--data.init_args.batch_size", "8"]),
}
QUIET = ["--data.init_args.num_workers", "0", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]


def _fit_args(task: str, tmp_path: Path, *extra: str) -> list[str]:
    config, _, settings = TASKS[task]
    if task == "classification":
        write_image_folder(tmp_path / "photos", per_class=10, size=(16, 16))
    return ["fit", "--config", str(REPO / "configs" / config), *settings, *QUIET, *extra]


def _callbacks(*callbacks: tuple[str, dict]) -> list[str]:
    return ["--trainer.callbacks", json.dumps([{"class_path": f"lightning.pytorch.callbacks.{name}", "init_args": args}
                                               for name, args in callbacks])]


@pytest.mark.parametrize("task", [pytest.param("classification"),
                                  pytest.param("captioning", marks=needs_fashion_mnist),
                                  pytest.param("detection", marks=needs_fashion_mnist)])
def test_trainer_flags_run_with_each_task_and_the_schedule_steps_per_optimizer_step(task, tmp_path, monkeypatch):
    """One fit with the flags a Lightning user brings: accumulation, clipping, validation twice an epoch, a full
    sanity check, anomaly detection, the simple profiler, a logging interval longer than the epoch, no logger, a
    run folder of its own, and the task's validation metric monitored by ModelCheckpoint and EarlyStopping in the
    mode the README gives it. With accumulation the warm-up and cosine are planned in optimizer steps and end at the
    run's last one, and the weight average takes one update per optimizer step (4 here, of 8 batches)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    metric = TASKS[task][1]
    run = tmp_path / "run"
    assert main(_fit_args(
        task, tmp_path, "--trainer.max_epochs", "2", "--trainer.accumulate_grad_batches", "2",
        "--trainer.gradient_clip_val", "1.0", "--trainer.gradient_clip_algorithm", "norm",
        "--trainer.val_check_interval", "0.5", "--trainer.num_sanity_val_steps", "-1",
        "--trainer.detect_anomaly", "true", "--trainer.profiler", "simple", "--trainer.log_every_n_steps", "100",
        "--trainer.logger", "false", "--trainer.default_root_dir", str(run), "--model.init_args.ema_decay", "0.5",
        *_callbacks(("ModelCheckpoint", {"dirpath": str(run / "ckpt"), "monitor": metric, "mode": "max",
                                         "filename": "best-{step}"}),
                    ("ModelCheckpoint", {"dirpath": str(run / "ckpt"), "save_last": True, "filename": "latest"}),
                    ("EarlyStopping", {"monitor": metric, "mode": "max", "patience": 10})))) == 0
    checkpoint = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    schedule = checkpoint["lr_schedulers"][0]
    planned = schedule["_milestones"][-1] + schedule["_schedulers"][-1]["T_max"]
    assert checkpoint["global_step"] == schedule["last_epoch"] == planned == 4
    assert int(checkpoint["state_dict"]["ema.n_averaged"]) == 4
    assert [group["lr"] for group in checkpoint["optimizer_states"][0]["param_groups"]] == [0.0, 0.0]  # cosine's end
    assert len(list((run / "ckpt").glob("best-step=*.ckpt"))) == 1  # the monitored metric was logged
    assert not list(tmp_path.rglob("metrics.csv"))


def test_overfitting_on_batches_without_checkpoints_or_a_time_limit_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    assert main(_fit_args("classification", tmp_path, "--trainer.max_epochs", "2", "--trainer.overfit_batches", "2",
                          "--trainer.enable_checkpointing", "false", "--trainer.max_time", "00:00:10:00",
                          "--trainer.num_sanity_val_steps", "0")) == 0
    scores = (tmp_path / "outputs" / "imagefolder_template" / "logs" / "version_0" / "metrics.csv").read_text()
    assert scores.splitlines()[0].split(",").count("val/top1") == 1 and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("settings, said", [
    # It set the found rate on every group after the schedule was built: the warm-up climbed to 3 times it, then the
    # cosine fell back to the configured rate; the checkpoint recorded the found one.
    (_callbacks(("LearningRateFinder", {})), "trainer.callbacks LearningRateFinder: it changes the lr once the task "
     "has planned its learning-rate schedule from it; run Lightning's Tuner from Python first, as the README shows, "
     "and give what it finds as model.init_args.lr"),
    # It changed the batch size after the cosine was planned for the configured one's steps, and its trial
    # checkpoint drew the warning of a resumed run's changed schedule, naming the file as --ckpt_path.
    (_callbacks(("BatchSizeFinder", {})), "trainer.callbacks BatchSizeFinder: it changes the batch_size once the "
     "task has planned its learning-rate schedule from it; run Lightning's Tuner from Python first, as the README "
     "shows, and give what it finds as data.init_args.batch_size"),
    # Lightning's line said to raise limit_val_batches, which overfit_batches then set back to its share.
    (["--trainer.overfit_batches", "0.5"], "trainer.overfit_batches 0.5: Lightning takes that share of the training "
     "and the validation batches, and 0.5 of this run's 1 validation batch(es) is none; give a number of batches "
     "instead, e.g. 2"),
])
def test_a_flag_the_task_cannot_honour_is_one_line_naming_the_fix(settings, said, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    assert main(_fit_args("classification", tmp_path, "--trainer.max_epochs", "1", *settings)) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"visattn: error: {said}" and "Traceback" not in err


def test_the_readmes_tuner_route_trains_at_the_rate_it_finds(tmp_path):
    """The way README's training section gives for Lightning's Tuner, which `visattn fit` refuses as a callback."""
    pl.seed_everything(0)
    data = ImageFolderDataModule(str(write_image_folder(tmp_path / "photos", per_class=16, size=(16, 16))),
                                 img_size=16, batch_size=2, num_workers=0)
    task = ImageClassifier("se_resnet20_cifar", num_classes=data.num_classes, class_names=data.class_names,
                           preprocessing=data.preprocessing, lr=0.001, warmup_epochs=0)

    def trainer() -> pl.Trainer:
        return pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)

    found = Tuner(trainer()).lr_find(task, datamodule=data, num_training=14, early_stop_threshold=None).suggestion()
    assert found is not None and found != 0.001 and task.hparams.lr == found
    fit = trainer()
    fit.fit(task, datamodule=data)
    assert [group["initial_lr"] for group in fit.optimizers[0].param_groups] == [found, found]


@pytest.mark.parametrize(("callback", "said"), [
    ("LearningRateFinder", "trainer.callbacks LearningRateFinder: it changes the lr once the task has planned"),
    ("BatchSizeFinder", "trainer.callbacks BatchSizeFinder: it changes the batch_size once the task has planned"),
    ("GradientAccumulationScheduler", "trainer.callbacks GradientAccumulationScheduler: the warm-up and cosine"),
])
def test_a_python_trainer_with_a_callback_the_task_cannot_serve_is_refused_before_training(callback, said, tmp_path):
    """Only `visattn fit` refused them: a Trainer made in Python trained with the schedule the callback broke."""
    from lightning.pytorch import callbacks

    data = ImageFolderDataModule(str(write_image_folder(tmp_path / "photos", per_class=4, size=(16, 16))),
                                 img_size=16, batch_size=2, num_workers=0)
    task = ImageClassifier("se_resnet20_cifar", num_classes=data.num_classes, class_names=data.class_names,
                           preprocessing=data.preprocessing, warmup_epochs=0)
    made = getattr(callbacks, callback)(**({"scheduling": {0: 2}} if callback.startswith("Gradient") else {}))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[made],
                         default_root_dir=tmp_path)
    start = {name: value.clone() for name, value in task.state_dict().items()}
    with pytest.raises(ConfigError, match="^" + re.escape(said)):
        trainer.fit(task, datamodule=data)
    assert all(torch.equal(value, start[name]) for name, value in task.state_dict().items())  # nothing trained
