"""The classification front end: configs, fit/evaluate/classify/save-weights, DDP and resume after SIGKILL."""
import json
import re
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from visattn import create_model, save_weights
from visattn.cli import main
from visattn.data.transforms import eval_transforms
from visattn.errors import ConfigError, MissingSplit, VisattnWarning, WeightsError
from visattn.inference.captioner import load_captioner
from visattn.tasks.captioning import CaptioningTask
from visattn.inference.classifier import Classifier, load_classifier
from visattn.tasks.classification import ImageClassifier
from visattn.inference.detector import load_detector
from visattn.tasks.optimization import adamw_warmup_cosine, warmup_cosine, weight_decay_groups

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "classification").glob("*.yaml"))
# a later-stage config -> the config whose last.ckpt it starts from
PREVIOUS_STAGE = {"vit_fmnist_stage2": "vit_fmnist", "vit_fmnist_stage3": "vit_fmnist_stage2"}
CBAM_CONFIG = REPO / "configs" / "classification" / "cbam_resnet_fmnist.yaml"
VIT_CONFIG = REPO / "configs" / "classification" / "vit_fmnist.yaml"
# Small, fast runs of the shipped configs.
QUICK = ["--data.init_args.num_workers", "0", "--data.init_args.batch_size", "16", "--data.init_args.limit", "64",
         "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]


def _image_folder(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def _fit(tmp_path: Path, *extra: str, config: Path = CBAM_CONFIG) -> Path:
    """Train in ``tmp_path`` (the current folder: configs write under outputs/); return last.ckpt."""
    assert main(["fit", "--config", str(config), *QUICK, "--trainer.max_epochs", "1", *extra]) == 0
    return tmp_path / "outputs" / config.stem / "checkpoints" / "last.ckpt"


def _fit_previous_stages(config: Path, tmp_path: Path) -> None:
    """A later-stage config starts from its previous stage's last.ckpt, so the stages before it run first."""
    if config.stem not in PREVIOUS_STAGE:
        return
    previous = config.parent / f"{PREVIOUS_STAGE[config.stem]}.yaml"
    _fit_previous_stages(previous, tmp_path)
    assert _fit(tmp_path, "--trainer.max_steps", "2", "--model.init_args.compile", "false", config=previous).exists()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_runs_fast_dev_run(config, in_tmp):
    extra = []
    if "imagefolder" in config.stem:
        root = _image_folder(in_tmp / "photos")
        extra = ["--data.init_args.root", str(root), "--data.init_args.img_size", "32",
                 "--model.init_args.model_name", "cbam_resnet20_cifar"]
    if config.stem in PREVIOUS_STAGE:
        _fit_previous_stages(config, in_tmp)
        extra = ["--model.init_args.compile", "false"]
    assert main(["fit", "--config", str(config), *QUICK, "--trainer.fast_dev_run", "true", *extra]) == 0


def test_num_classes_labels_and_preprocessing_reach_the_checkpoint(in_tmp):
    root = _image_folder(in_tmp / "photos")
    config = REPO / "configs" / "classification" / "imagefolder_template.yaml"
    ckpt = _fit(in_tmp, "--data.init_args.root", str(root), "--data.init_args.img_size", "32",
                "--model.init_args.model_name", "cbam_resnet20_cifar", config=config)
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["num_classes"] == 2 and hparams["class_names"] == ["blue", "red"]
    assert hparams["preprocessing"]["input_size"] == [3, 32, 32]


def test_a_task_named_in_a_way_the_data_links_miss_is_one_line_not_a_run_without_the_labels(in_tmp, capsys):
    """A whole `--model` JSON object is read for the links as no task: unrefused, the run had trained the default
    10-class head on 2 classes, with no labels or preprocessing in its checkpoint, exit 0."""
    root = _image_folder(in_tmp / "photos", per_class=2)
    config = REPO / "configs" / "classification" / "imagefolder_template.yaml"
    model = json.dumps({"class_path": "visattn.tasks.classification.ImageClassifier",
                        "init_args": {"model_name": "cbam_resnet20_cifar"}})
    assert main(["fit", "--config", str(config), *QUICK, "--trainer.max_epochs", "1", "--data.init_args.root",
                 str(root), "--data.init_args.img_size", "32", "--model", model]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("visattn: error:")] == [
        "visattn: error: model.class_path ImageClassifier: name the task in a --config file or with --model.class_path "
        "visattn.tasks.MODULE.CLASS, so that the data's labels reach it"]
    assert not list(in_tmp.rglob("*.ckpt"))


def test_evaluate_classify_and_save_weights(in_tmp, capsys, monkeypatch):
    ckpt = _fit(in_tmp, "--trainer.max_steps", "3")
    assert ckpt.exists()
    capsys.readouterr()

    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "fashion-mnist", "--limit", "200", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) == {"top1", "top5", "n"} and metrics["n"] == 200
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0

    images = in_tmp / "images"
    (images / "nested").mkdir(parents=True)
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(images / "good.png")
    Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(images / "nested" / "good2.jpg")
    (images / "broken.png").write_text("not an image")
    assert main(["classify", str(images), "--checkpoint", str(ckpt), "--topk", "2", "--json"]) == 1
    captured = capsys.readouterr()
    results = {Path(r["file"]).name: r for r in map(json.loads, captured.out.strip().splitlines())}
    assert set(results) == {"good.png", "good2.jpg", "broken.png"}
    assert len(results["good.png"]["predictions"]) == 2 and "broken.png" in results["broken.png"]["error"]
    assert "Traceback" not in captured.err and "1 of 3 files" in captured.err

    weights = in_tmp / "weights"
    monkeypatch.setenv("VISATTN_WEIGHTS", str(weights))
    assert main(["save-weights", "--checkpoint", str(ckpt), "--tag", "unit", "--out-dir", str(weights), "--default"]) == 0
    entry = json.loads((weights / "index.json").read_text())["cbam_resnet20_cifar.unit"]
    assert entry["labels"][0] == "T-shirt/top" and entry["preprocessing"]["input_size"] == [3, 28, 28]
    capsys.readouterr()
    assert main(["evaluate", "--model", "cbam_resnet20_cifar.unit", "--dataset", "fashion-mnist", "--limit", "200", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == metrics  # same weights, same numbers

    # the same tag again is refused before anything is measured or written; --overwrite replaces it
    saved = (weights / "cbam_resnet20_cifar.unit.safetensors").read_bytes()
    again = ["save-weights", "--checkpoint", str(ckpt), "--tag", "unit", "--out-dir", str(weights),
             "--dataset", "fashion-mnist"]
    import visattn.cli

    measured, measure = [], visattn.cli._test_scores  # a refusal after the measurement had passed the checks above
    monkeypatch.setattr(visattn.cli, "_test_scores", lambda *args: measured.append(args) or measure(*args))
    assert main(again) == 2
    assert "cbam_resnet20_cifar.unit already exist; pick another --tag, or pass --overwrite" in capsys.readouterr().err
    assert (weights / "cbam_resnet20_cifar.unit.safetensors").read_bytes() == saved and measured == []
    capsys.readouterr()
    assert main([*again, "--limit", "50", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test/n"] == 50 and len(measured) == 1
    overwritten = json.loads((weights / "index.json").read_text())["cbam_resnet20_cifar.unit"]
    assert overwritten["metrics"]["test/n"] == 50 and overwritten["default"]  # the mark stays without --default


def test_a_run_fine_tuned_from_shipped_weights_saves_and_reloads_by_name(in_tmp, capsys, monkeypatch):
    """save-weights named the file vit_tiny_patch4_28.fmnist.mine and refused it: the run's model_name holds a tag.
    The tag's builder arguments (4 blocks, no class token) must come along, or the weights rebuild as a 12-block ViT."""
    ckpt = _fit(in_tmp, "--trainer.max_steps", "2", "--model.init_args.model_name", "vit_tiny_patch4_28.fmnist",
                config=VIT_CONFIG)
    weights = in_tmp / "weights"
    monkeypatch.setenv("VISATTN_WEIGHTS", str(weights))
    assert main(["save-weights", "--checkpoint", str(ckpt), "--tag", "mine", "--out-dir", str(weights)]) == 0
    assert json.loads((weights / "index.json").read_text())["vit_tiny_patch4_28.mine"]["model_kwargs"] == {
        "class_token": False, "depth": 4, "global_pool": "avg"}
    tuned, saved = load_classifier(checkpoint=str(ckpt)), load_classifier("vit_tiny_patch4_28.mine")
    images = torch.randn(3, 3, 28, 28)
    torch.testing.assert_close(saved.predict(images), tuned.predict(images))


def test_bad_config_value_is_one_line(in_tmp, capsys):
    assert main(["fit", "--config", str(CBAM_CONFIG), "--trainer.max_epochs", "many"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("visattn: error:") and "max_epochs" in err and len(err.splitlines()) == 1


def test_bad_model_name_in_config_is_one_line(in_tmp, capsys):
    code = main(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--model.init_args.model_name", "cbam_resnet_20"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown model 'cbam_resnet_20'" in err and len(err.splitlines()) == 1


def test_missing_checkpoint_and_unknown_dataset(in_tmp, capsys):
    assert main(["evaluate", "--checkpoint", "nope.ckpt", "--dataset", "fashion-mnist"]) == 2
    assert "nope.ckpt: checkpoint not found" in capsys.readouterr().err


def test_warmup_cosine_schedule():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=4, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[4] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5])) and all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def _step_gradients(batches: int, accumulate: int) -> list[torch.Tensor]:
    """The gradient each optimizer step of one epoch takes, of a classifier fit on ``batches`` fixed batches of 4."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    task = ImageClassifier("resnet20_cifar", num_classes=3, model_kwargs={"layers": (1, 1, 1)}, lr=1e-3)
    images = torch.randn(4 * batches, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    data = DataLoader(TensorDataset(images, torch.arange(4 * batches) % 3), batch_size=4)
    seen: list[torch.Tensor] = []

    class Gradients(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(torch.cat([p.grad.flatten() for p in pl_module.model.parameters() if p.grad is not None]))

    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu", limit_val_batches=0, accumulate_grad_batches=accumulate,
               callbacks=[Gradients()]).fit(task, data)
    return seen


def test_the_epochs_last_shorter_accumulation_window_averages_over_its_own_batches():
    """Lightning divided its loss by accumulate_grad_batches too: one batch under accumulation 4 took a quarter of
    its gradient (a recipe audit; timm's train.py divides the last window by its own length)."""
    alone, = _step_gradients(1, 1)
    short, = _step_gradients(1, 4)
    torch.testing.assert_close(short, alone)
    pair, = _step_gradients(2, 2)  # a whole window of two batches: their mean, as Lightning takes it
    short_pair, = _step_gradients(2, 3)
    torch.testing.assert_close(short_pair, pair)


def test_accumulation_over_batches_of_no_known_count_steps_as_lightning_does():
    """An iterable dataset has no last window to scale: its gradients are the full windows' mean (a review)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            generator = torch.Generator().manual_seed(1)
            return iter([(torch.randn(3, 32, 32, generator=generator), k % 3) for k in range(8)])

    task = ImageClassifier("resnet20_cifar", num_classes=3, model_kwargs={"layers": (1, 1, 1)}, lr=1e-3)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", limit_val_batches=0, accumulate_grad_batches=3)
    trainer.fit(task, DataLoader(Stream(), batch_size=2))
    assert trainer.global_step == 2


def test_one_task_fits_again_after_it_was_validated_in_the_same_process():
    """A notebook's fit, validate, fit: the second fit stopped in its sanity check, "Inplace update to inference tensor
    outside InferenceMode" (validate had reset the metrics under inference mode; from a long-use audit)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 32, 32, generator=generator), torch.arange(8) % 3)
    task = ImageClassifier("resnet20_cifar", num_classes=3, model_kwargs={"layers": (1, 1, 1)}, lr=1e-3)
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    accelerator="cpu")
    for _ in range(2):
        trainer = pl.Trainer(max_steps=1, **settings)
        trainer.fit(task, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
        validated = pl.Trainer(**settings).validate(task, DataLoader(data, batch_size=4), verbose=False)
        assert trainer.global_step == 1 and 0 <= validated[0]["val/top1"] <= 1


def test_a_trainer_of_ones_own_given_a_data_module_refuses_a_task_built_without_the_datas_labels(tmp_path):
    """`trainer.fit(task, datamodule=data)` outside `visattn fit`, which links the data's labels and preprocessing
    into the task: without them the run trained, and its checkpoint loaded with labels '0', '1' and ImageNet's mean
    and std; with another class order, validation scored each image against another class's logit."""
    from visattn.data.datamodules import ImageFolderDataModule

    data = ImageFolderDataModule(str(_image_folder(tmp_path / "photos", per_class=2)), img_size=8, batch_size=2,
                                 num_workers=0, augment=False)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=tmp_path)
    small = {"layers": (1, 1, 1)}
    with pytest.raises(ConfigError, match=re.escape(
            "ImageClassifier's class_names and preprocessing are not ImageFolderDataModule's (class_names and "
            "preprocessing not given); build it with ImageClassifier(..., num_classes=data.num_classes, "
            "class_names=data.class_names, preprocessing=data.preprocessing) where data is the data module")):
        trainer.fit(ImageClassifier("resnet20_cifar", num_classes=2, model_kwargs=small), datamodule=data)
    assert not list(tmp_path.rglob("*.ckpt"))
    task = ImageClassifier("resnet20_cifar", num_classes=data.num_classes, class_names=data.class_names,
                           preprocessing=data.preprocessing, model_kwargs=small)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer.fit(task, datamodule=data)
    # Lightning's note that the task's own batch hook (its label check) runs with a data module, at every such fit
    assert not [str(w.message) for w in seen if "on_before_batch_transfer" in str(w.message)]
    loaded = load_classifier(checkpoint=trainer.checkpoint_callback.best_model_path)
    assert loaded.class_names == ["blue", "red"] and loaded.preprocessing == data.preprocessing
    swapped = ImageClassifier("resnet20_cifar", num_classes=2, class_names=["red", "blue"], model_kwargs=small)
    with pytest.raises(ConfigError, match=re.escape("ImageClassifier's class_names is not ImageFolderDataModule's "
                                                    "(class_names ['red', 'blue'] for ['blue', 'red'])")):
        pl.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu").validate(swapped, datamodule=data)


def test_a_task_validated_on_data_of_another_class_order_is_told_to_take_data_of_its_own(tmp_path):
    """The one fix named was to build the task with the data's class_names: a trained task so rebuilt still scores
    each image against another class's logit, and the check no longer says so."""
    from visattn.data.datamodules import ImageFolderDataModule

    data = ImageFolderDataModule(str(_image_folder(tmp_path / "photos", per_class=2)), img_size=8, batch_size=2,
                                 num_workers=0, augment=False)
    trained = ImageClassifier("resnet20_cifar", num_classes=2, class_names=["red", "blue"],
                              model_kwargs={"layers": (1, 1, 1)})
    with pytest.raises(ConfigError, match=re.escape("(class_names ['red', 'blue'] for ['blue', 'red']); run it on "
                                                    "data of its own class_names, or build it with ImageClassifier(")):
        pl.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu").validate(trained, datamodule=data)


def test_a_fit_on_loaders_of_ones_own_warns_of_the_labels_and_preprocessing_its_checkpoints_lack():
    """Without them, its checkpoints loaded with labels '0', '1', ... and the architecture's default preprocessing,
    silently; a CLIP tower's is CLIP's statistics and filter (the warning said ImageNet's mean and std for any)."""
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.randn(4, 3, 8, 8), torch.arange(4) % 2), batch_size=2)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    task = ImageClassifier("resnet20_cifar", num_classes=2, model_kwargs={"layers": (1, 1, 1)})
    with pytest.warns(VisattnWarning, match=re.escape(
            "ImageClassifier was given no class_names or preprocessing, which its checkpoints record for inference "
            "(load_classifier, `visattn evaluate`), else its classes are named '0', '1', ... and images are "
            "prepared with resnet20_cifar's default mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]; pass "
            "ImageClassifier(class_names=..., preprocessing=...)")) as seen:
        trainer.fit(task, loader)
    assert sum("was given no class_names" in str(warning.message) for warning in seen) == 1  # once a run, not a step
    clip = ImageClassifier("vit_base_patch16_clip_224", num_classes=2, class_names=["a", "b"],
                           model_kwargs={"depth": 1, "embed_dim": 16, "num_heads": 2, "img_size": 8, "patch_size": 4})
    with pytest.warns(VisattnWarning, match=re.escape(
            "else images are prepared with vit_base_patch16_clip_224's default mean [0.48145466, 0.4578275, "
            "0.40821073], std [0.26862954, 0.26130258, 0.27577711], interpolation bicubic; pass "
            "ImageClassifier(preprocessing=...)")):
        pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu").fit(clip, loader)


def test_a_label_past_the_tasks_num_classes_is_one_line_before_the_batch_is_scored():
    """A task built for 10 classes on data of 12 (a Trainer of one's own, which no data module links): "Target 11 is
    out of bounds" in the first training step, torchmetrics' "Class values must be smaller than num_classes" in
    validation, a device-side assert on a GPU."""
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.randn(4, 3, 8, 8), torch.tensor([0, 11, 3, 4])), batch_size=4)
    task = ImageClassifier("resnet20_cifar", num_classes=10, model_kwargs={"layers": (1, 1, 1)})
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    accelerator="cpu")
    problem = re.escape("a batch holds class 11, and the task was built with num_classes=10 (classes 0 to 9); build "
                        "it with the data's number of classes (num_classes=data.num_classes for a visattn data module)")
    with pytest.raises(ConfigError, match=problem):
        pl.Trainer(max_steps=1, num_sanity_val_steps=0, **settings).fit(task, loader)
    with pytest.raises(ConfigError, match=problem):
        pl.Trainer(**settings).validate(task, loader, verbose=False)
    assert pl.Trainer(**settings).predict(task, loader)[0].shape == (4, 10)  # its labels are not read


@pytest.mark.parametrize("max_epochs, accumulate, expected", [(None, 1, 20), (-1, 1, 20), (1000, 1, 20), (None, 3, 7)])
def test_warm_up_lasts_its_epochs_when_max_steps_ends_the_run(max_epochs, accumulate, expected):
    """An epoch of 20 batches, a run of 30 steps, warmup_epochs 1: the warm-up had been 0 or 29 steps."""
    from lightning.pytorch.utilities import AttributeDict
    trainer = SimpleNamespace(estimated_stepping_batches=30, num_training_batches=20, max_epochs=max_epochs,
                              accumulate_grad_batches=accumulate)
    task = SimpleNamespace(model=torch.nn.Linear(2, 2), trainer=trainer,
                           hparams=AttributeDict(lr=1.0, weight_decay=0.0, warmup_epochs=1))
    scheduler = adamw_warmup_cosine(task)["lr_scheduler"]["scheduler"]
    assert scheduler._milestones == [expected]


@pytest.mark.parametrize("max_epochs", [None, -1])
def test_warm_up_lasts_its_epochs_in_a_lightning_run_bounded_by_max_steps_alone(max_epochs):
    """Lightning counts no batches when only max_steps bounds the run, so the whole run had been warm-up
    (an epoch of 10 batches, 30 steps: warm-up to step 29, the last step at the peak learning rate)."""
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import AttributeDict
    from torch.utils.data import DataLoader, TensorDataset

    class Task(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Linear(2, 1)
            self._hparams = AttributeDict(lr=1.0, weight_decay=0.0, warmup_epochs=1)

        def training_step(self, batch, batch_idx):
            return self.model(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return adamw_warmup_cosine(self)

    data = DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=4)  # 10 batches an epoch
    trainer = pl.Trainer(max_steps=30, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Task(), data)
    assert trainer.global_step == 30 and trainer.lr_scheduler_configs[0].scheduler._milestones == [10]


def test_weight_decay_groups_and_a_slower_backbone():
    model = torch.nn.Module()
    model.backbone, model.head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    plain = weight_decay_groups(model, 0.05)
    assert [(len(g["params"]), g["weight_decay"], "lr" in g) for g in plain] == [(2, 0.05, False), (2, 0.0, False)]
    scaled = torch.optim.AdamW(weight_decay_groups(model, 0.05, lr=1e-3, backbone_lr_scale=0.1), lr=1e-3)
    # LearningRateMonitor's columns were lr-AdamW/pg1, pg2, ...: named, they say which group is which
    assert [g["name"] for g in scaled.param_groups] == ["decay", "no_decay", "backbone_decay", "backbone_no_decay"]
    by_param = {id(p): g["lr"] for g in scaled.param_groups for p in g["params"]}
    assert by_param[id(model.backbone.weight)] == by_param[id(model.backbone.bias)] == pytest.approx(1e-4)
    assert by_param[id(model.head.weight)] == by_param[id(model.head.bias)] == pytest.approx(1e-3)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "se_resnet20_cifar", "resnet50"])
def test_layer_decay_gives_each_parameter_timms_learning_rate_and_weight_decay(name):
    """BEiT's fine-tuning recipe, as timm's `create_optimizer_v2(layer_decay=0.75)` scales it: the task had no
    layer-wise decay, so `visattn fit` trained every layer of a fine-tuned ViT at the head's rate."""
    from timm.optim import create_optimizer_v2

    model = create_model(name)
    names = {id(p): n for n, p in model.named_parameters()}
    ours = {names[id(p)]: (g["lr"], g["weight_decay"])
            for g in weight_decay_groups(model, 0.05, lr=1e-3, layer_decay=0.75) for p in g["params"]}
    theirs = {names[id(p)]: (1e-3 * g["lr_scale"], g["weight_decay"])
              for g in create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75).param_groups
              for p in g["params"]}
    assert ours.keys() == theirs.keys() == set(names.values())
    assert all(ours[k][0] == pytest.approx(theirs[k][0], rel=1e-12) and ours[k][1] == theirs[k][1] for k in ours)
    rates = sorted({lr for lr, _ in ours.values()})
    assert len(rates) >= 8 and rates[-1] == 1e-3 and rates[-2] == pytest.approx(0.75e-3)  # the head at lr
    names = [g["name"] for g in weight_decay_groups(model, 0.05, lr=1e-3, layer_decay=0.75)]
    assert sorted(names) == sorted(names, key=lambda n: (int(n.split("_")[1]), n))  # the monitor's columns in order


def test_layer_decay_holds_through_warm_up_and_cosine_in_a_run():
    """Each group's rate keeps its share of the head's through the schedule, and the groups are named for the
    learning-rate monitor (`layer_3_decay`)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    task = ImageClassifier("vit_tiny_patch4_28", num_classes=3, model_kwargs={"depth": 2}, layer_decay=0.5,
                           warmup_epochs=1)
    data = DataLoader(TensorDataset(torch.randn(8, 3, 28, 28), torch.tensor([0, 1, 2, 0] * 2)), batch_size=2)
    seen: list[list[tuple[str, float]]] = []

    class Rates(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append([(g["name"], g["lr"]) for g in trainer.optimizers[0].param_groups])

    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", limit_val_batches=0, callbacks=[Rates()])
    trainer.fit(task, data)
    heads = []
    for groups in seen:
        layers = {name: int(name.split("_")[1]) for name, _ in groups}
        head = dict(groups)[f"layer_{max(layers.values())}_decay"]
        assert all(lr == pytest.approx(head * 0.5 ** (max(layers.values()) - layers[name]), rel=1e-9)
                   for name, lr in groups)
        heads.append(head)
    assert len(seen) == 8 and heads[0] < heads[4] == pytest.approx(1e-3) and heads[-1] < heads[4]  # warm-up, cosine


def test_a_resumed_fit_with_another_layer_decay_is_one_line(tmp_path):
    """torch's optimizer refused the checkpoint's state with a traceback (another number of parameter groups), and
    another decay of the same groups resumed at the saved rates without a word (from a features audit)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    data = DataLoader(TensorDataset(torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 2, 0])), batch_size=2)

    def fit(layer_decay, epochs, ckpt_path=None):
        task = ImageClassifier("vit_tiny_patch4_28", num_classes=3, model_kwargs={"depth": 2}, layer_decay=layer_decay)
        trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             accelerator="cpu", limit_val_batches=0, default_root_dir=tmp_path)
        trainer.fit(task, data, ckpt_path=ckpt_path)
        return trainer

    fit(None, 1).save_checkpoint(tmp_path / "saved.ckpt")
    with pytest.raises(ConfigError, match=r"^--ckpt_path .*saved.ckpt: its run grouped the parameters as decay "
                                          r"\(\d+\), no_decay \(\d+\), this run's settings as "
                                          r"layer_0_no_decay \(3, lr x0.422\), layer_0_decay.*; resume with the "
                                          r"settings it was saved with \(layer_decay, backbone_lr_scale, and what "
                                          r"trains: a detector's trainable_backbone_layers\)"):
        fit(0.75, 2, tmp_path / "saved.ckpt")
    assert fit(None, 2, tmp_path / "saved.ckpt").global_step == 4  # the same settings resume
    # the same groups at other shares of the rate: the optimizer had restored the saved rates without a word
    fit(0.75, 1).save_checkpoint(tmp_path / "decayed.ckpt")
    with pytest.raises(ConfigError, match=r"its run grouped the parameters as layer_0_no_decay \(3, lr x0.422\), .*"
                                          r"this run's settings as layer_0_no_decay \(3, lr x0.125\)"):
        fit(0.5, 2, tmp_path / "decayed.ckpt")
    assert fit(0.75, 2, tmp_path / "decayed.ckpt").global_step == 4


@pytest.mark.parametrize(("value", "model_name", "message"), [
    (0.0, "resnet20_cifar", "model.init_args.layer_decay=0.0: give each layer's learning rate as a fraction"),
    (1.5, "resnet20_cifar", "model.init_args.layer_decay=1.5: give each layer's learning rate as a fraction"),
    (float("nan"), "resnet20_cifar", "model.init_args.layer_decay=nan: give"),
])
def test_a_layer_decay_that_is_no_fraction_is_one_line(value, model_name, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        ImageClassifier(model_name, num_classes=3, layer_decay=value)


def test_layer_decay_on_a_model_without_layers_to_tell_apart_is_one_line():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"^model.init_args.layer_decay: Sequential has no group_matcher\(\) to tell "
                                          r"its layers apart; leave layer_decay out$"):
        weight_decay_groups(model, 0.05, lr=1e-3, layer_decay=0.75)
    model.group_matcher = lambda coarse=False: {"stem": r"^\d+"}  # every parameter one group
    with pytest.raises(ConfigError, match="parameters are all one layer, so layer-wise decay would change nothing"):
        weight_decay_groups(model, 0.05, lr=1e-3, layer_decay=0.75)
    task = ImageClassifier("vit_tiny_patch4_28", num_classes=3, model_kwargs={"depth": 2}, layer_decay=0.75)
    with pytest.raises(ConfigError, match=r"^lr=None: backbone_lr_scale and layer_decay scale the base learning rate; "
                                          r"pass lr$"):
        weight_decay_groups(task.model, 0.05, layer_decay=0.75)


@pytest.mark.parametrize(("decay", "kept"), [(0.999, "100%"), (0.6, "22%"), (0.47, "10%"), (0.46, None)])
def test_an_average_that_a_short_run_leaves_near_the_starting_weights_is_warned_about(decay, kept, recwarn):
    """ema_decay 0.999 over a 39-step fine-tune kept 96% of the starting weights in the average validation scored:
    every validation at chance, without a word (from a fine-tuning journey audit). The average starts as a copy of
    the first step's weights: 4 steps keep decay**3 of them (decay**4 had been said, an EMA audit). Above a tenth
    is warned about: 0.9 over 10 steps kept 39%, which had passed unsaid, and scored 0.325 where the weights scored
    0.600."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    task = ImageClassifier("resnet20_cifar", num_classes=3, ema_decay=decay)
    data = DataLoader(TensorDataset(torch.randn(8, 3, 28, 28), torch.tensor([0, 1, 2, 0] * 2)), batch_size=4)
    pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu", limit_val_batches=0).fit(task, data)
    messages = [str(w.message) for w in recwarn if issubclass(w.category, VisattnWarning) and "ema_decay" in str(w.message)]
    expected = [f"model.init_args.ema_decay {decay} over this run's 4 optimizer steps keeps {kept} of the first step's "
                "weights in the average that validation scores and the checkpoints hold; give about 0.215 for so short "
                "a run, or null for no average"] if kept else []
    assert messages == expected
    assert float(task.ema.n_averaged) == 4  # the copy after the first step, then three updates


def test_the_runs_warnings_at_train_start_are_said_by_the_first_process_only(monkeypatch):
    """Under DDP each process had warned of the short run's average (and a changed schedule) again."""
    from types import SimpleNamespace

    import visattn.tasks.guards as guards

    said = []
    monkeypatch.setattr(guards, "warn_of_a_starting_average", lambda task: said.append("average"))
    monkeypatch.setattr(guards, "warn_of_a_changed_schedule", lambda task: said.append("schedule"))
    task = ImageClassifier("resnet20_cifar", num_classes=3, ema_decay=0.999)
    for first in (False, True):
        task._trainer = SimpleNamespace(is_global_zero=first, world_size=1, ckpt_path=None)
        task.on_train_start()
    assert said == ["schedule", "average"]


def test_ema_mixup_and_cutmix_train_step():
    task = ImageClassifier("cbam_resnet20_cifar", num_classes=10, mixup_alpha=0.2, cutmix_alpha=1.0, ema_decay=0.9)
    images, targets = torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 2, 3])
    loss = task.training_step((images, targets), 0)
    loss.backward()
    before = [p.detach().clone() for p in task.ema.module.parameters()]
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(1.0)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.0)
    for step in (0, 1):  # the first update copies, later ones average
        task.optimizer_step(0, step, optimizer)
    after = list(task.ema.module.parameters())
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, after))
    assert task.eval_model is task.ema.module


def test_ema_averages_once_per_optimizer_step_when_batches_accumulate(in_tmp):
    """With accumulate_grad_batches 2 it averaged every batch: 0.999 became 0.999**2 per step."""
    assert main(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_epochs", "1",
                 "--trainer.limit_val_batches", "1", "--trainer.accumulate_grad_batches", "2"]) == 0
    checkpoint = torch.load(next(Path("outputs").rglob("last.ckpt")), weights_only=True)
    assert checkpoint["global_step"] == 2 and int(checkpoint["state_dict"]["ema.n_averaged"]) == 2


def _run(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "visattn.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_ddp_fit_with_two_cpu_processes(in_tmp):
    proc = _run(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                 "--trainer.max_steps", "3", "--trainer.limit_val_batches", "2"], in_tmp)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert (in_tmp / "outputs" / "cbam_resnet_fmnist" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_ddp_spawn_fit_with_a_weight_average(in_tmp):
    """ddp_spawn pickles the task for its processes: torch's EMA update, a closure, stopped the run with a traceback,
    and without EMA the weights rank 0 hands back (a bare state dict) were refused as "not a Lightning checkpoint"
    after training (an EMA audit)."""
    proc = _run(["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.strategy", "ddp_spawn", "--trainer.devices",
                 "2", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--model.init_args.ema_decay",
                 "0.5"], in_tmp)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    state = torch.load(in_tmp / "outputs" / "cbam_resnet_fmnist" / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(state["state_dict"]["ema.n_averaged"]) == 2


def test_the_average_updates_floats_as_torchs_ema_function_and_copies_counts():
    from torch.optim.swa_utils import get_ema_multi_avg_fn
    from visattn.tasks.guards import ExponentialAverageUpdate

    update = pickle.loads(pickle.dumps(ExponentialAverageUpdate(0.9)))
    for dtype in (torch.float32, torch.int64):
        start, step = [torch.arange(6, dtype=dtype) * 7, torch.ones(3, dtype=dtype)], [torch.arange(6, dtype=dtype),
                                                                                     torch.full((3,), 9, dtype=dtype)]
        ours, theirs = [t.clone() for t in start], [t.clone() for t in start]
        update(ours, step, 1)
        get_ema_multi_avg_fn(0.9)(theirs, step, 1)
        assert all(torch.equal(a, b if dtype.is_floating_point else s) for a, b, s in zip(ours, theirs, step))


def test_the_averages_batch_norm_counts_are_the_models_as_in_timms_model_ema():
    """An audit against timm's ModelEmaV3: the int64 num_batches_tracked was averaged and truncated, staying at 1."""
    from timm.utils import ModelEmaV3
    from torch import nn
    from visattn.tasks.guards import weight_average

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema, timm_ema = weight_average(model, 0.9), ModelEmaV3(model, decay=0.9)
    for step in range(6):
        model(torch.randn(4, 3))
        ema.update_parameters(model)
        timm_ema.update(model, step=step + 1)  # timm counts updates from 1: the first copies the weights, as ours
    ours, theirs = ema.module.state_dict(), timm_ema.module.state_dict()
    assert int(ours["1.num_batches_tracked"]) == int(model[1].num_batches_tracked) == 6
    assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-6) for k in theirs)


@pytest.mark.slow
def test_sigkill_mid_fit_then_resume_from_last(in_tmp):
    args = ["fit", "--config", str(CBAM_CONFIG), *QUICK, "--data.init_args.limit", "128", "--trainer.max_epochs", "4"]
    last = in_tmp / "outputs" / "cbam_resnet_fmnist" / "checkpoints" / "last.ckpt"
    proc = _run(args, in_tmp)
    deadline = time.time() + 600  # the first epoch's checkpoint, however loaded the machine
    at_kill = None
    while at_kill is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            at_kill = torch.load(last, weights_only=True)  # a whole checkpoint is on disk
        except (FileNotFoundError, RuntimeError, EOFError):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert at_kill is not None and at_kill["epoch"] < 3, "no checkpoint before the kill, or the run had finished"
    steps_per_epoch = at_kill["global_step"] // (at_kill["epoch"] + 1)

    resumed = _run([*args, "--ckpt_path", "last"], in_tmp)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == 4 * steps_per_epoch  # all four epochs, none repeated
    # Lightning saves at train-epoch end, after an epoch is marked processed and before it is marked completed.
    assert final["epoch"] == 3 and final["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 4
    create_model("cbam_resnet20_cifar", num_classes=10, pretrained=str(last))  # the result loads


@pytest.mark.parametrize("load, name", [
    (load_classifier, "se_resnet20_cifar.fmnist"),
    (load_captioner, "sat_cbam_resnet_scenes.scenes"),
    (load_detector, "fcos_se_resnet20_cifar.scenes"),
])
def test_loaded_models_are_in_eval_mode_with_channels_last_convolutions(load, name):
    loaded = load(name).model
    convs = [m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and not loaded.training
    assert all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs)


@pytest.mark.parametrize("load, name, size", [
    (load_classifier, "se_resnet20_cifar.fmnist", 28),
    (load_captioner, "sat_cbam_resnet_scenes.scenes", 64),
])
def test_channels_last_models_give_the_plain_models_outputs(load, name, size):
    loaded, plain = load(name).model, create_model(name).eval()
    run = (lambda model, x: model.encode(x)) if name.startswith("sat") else (lambda model, x: model(x))
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(run(loaded, images), run(plain, images), atol=1e-4)


class _BrightnessOracle(torch.nn.Module):
    """Predicts the class whose gray value (0..1) is nearest the image's mean."""

    def __init__(self, grays: list[float]) -> None:
        super().__init__()
        self.register_buffer("grays", torch.tensor(grays))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return -(images.mean(dim=(1, 2, 3))[:, None] - self.grays).square()


def test_an_image_folder_is_scored_by_class_name_not_folder_position(tmp_path):
    """Folders 'T-shirt_top' and 'dog' hold the classifier's labels 2 and 1: sorted positions 0 and 1 would mislabel both."""
    from fixtures_images import write_image_folder

    from visattn.inference.classifier import Classifier
    from visattn.inference.classifier_scoring import evaluate_classifier, evaluation_dataset

    root = write_image_folder(tmp_path / "photos" / "test", classes=("T-shirt_top", "dog"), per_class=2)  # gray 0, 40
    labels = ["cat", "dog", "T-shirt/top"]
    classifier = Classifier(_BrightnessOracle([0.9, 40 / 255, 0.0]), labels,
                            {"input_size": [3, 16, 16], "mean": [0.0] * 3, "std": [1.0] * 3}, "oracle", "oracle", {})
    spec = f"imagefolder:{root.parent}"
    dataset = evaluation_dataset(spec, "test", classifier.transform(), classifier.class_names)
    assert evaluate_classifier(classifier, dataset)["top1"] == 1.0
    with pytest.raises(MissingSplit, match=r"--split val: .*photos has no val/ folder; its splits are test") as caught:
        evaluation_dataset(spec, "val", classifier.transform(), classifier.class_names)
    assert (caught.value.split, caught.value.splits) == ("val", ["test"])  # what save-weights rephrases
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is MissingSplit and str(copy) == str(caught.value)
    (root / "fox").mkdir()  # a folder that is none of the labels
    with pytest.raises(ConfigError, match=r"class folders \['fox'\] are not among the classes"):
        evaluation_dataset(spec, "test", classifier.transform(), classifier.class_names)


def test_labels_that_share_a_class_folder_are_one_line_not_each_image_scored_twice(tmp_path):
    """Labels 'a/b' and 'a_b' both read folder a_b: each of its images was scored once under each label (n doubled,
    that folder's accuracy at most 50%), without a word."""
    from fixtures_images import write_image_folder

    from visattn.data.image_folder import ImageFolder
    from visattn.inference.classifier_scoring import evaluation_dataset

    root = write_image_folder(tmp_path / "photos", classes=("a_b", "c"), per_class=2)
    with pytest.raises(ConfigError, match=r"labels 'a/b' and 'a_b' both read the class folder a_b \("):
        evaluation_dataset(f"imagefolder:{root}", None, None, ["a/b", "a_b", "c"])
    with pytest.raises(ConfigError, match=r"^classes: \['a_b'\] appear more than once; give each class once$"):
        ImageFolder(root, classes=["a_b", "c", "a_b"])


def test_an_image_folder_with_a_class_named_like_a_split_is_scored_as_classes(tmp_path):
    """A class folder `train` (CIFAR-100 has one) was taken for a split folder: without --split there was "no test/
    folder", with --split train "no class sub-folders", so the folder could not be scored at all."""
    from fixtures_images import write_image_folder

    from visattn.cli import evaluation_split
    from visattn.inference.classifier import Classifier
    from visattn.inference.classifier_scoring import evaluate_classifier, evaluation_dataset

    root = write_image_folder(tmp_path / "vehicles", classes=("bus", "train"), per_class=2)  # gray 0, 40
    classifier = Classifier(_BrightnessOracle([0.0, 40 / 255]), ["bus", "train"],
                            {"input_size": [3, 16, 16], "mean": [0.0] * 3, "std": [1.0] * 3}, "oracle", "oracle", {})
    spec = f"imagefolder:{root}"
    split = evaluation_split(spec, None)
    assert split is None  # scored whole
    metrics = evaluate_classifier(classifier, evaluation_dataset(spec, split, classifier.transform(), ["bus", "train"]))
    assert metrics["top1"] == 1.0 and metrics["n"] == 4
    (root / "bus").rename(root / "test")  # only split names: a split layout (with one class each)
    assert evaluation_split(spec, None) == "test"


@pytest.mark.parametrize("dataset", ["fashion-mnist", "fashion-mnist-pairs"])
def test_a_classifier_of_other_labels_is_not_scored_on_fashion_mnist_by_position(dataset):
    """Their targets are Fashion-MNIST label indices: a cat/dog/fox model would be scored as if 'cat' were T-shirt/top."""
    import argparse

    from visattn.cli import cmd_evaluate_pointing
    from visattn.data import FASHION_MNIST_CLASSES
    from visattn.inference.classifier_scoring import evaluation_dataset

    def score(labels: list[str]) -> None:
        model = create_model("resnet20_cifar", num_classes=len(labels)).eval()
        preprocessing = {"input_size": [3, 28, 28], "mean": [0.0] * 3, "std": [1.0] * 3}
        classifier = Classifier(model, labels, preprocessing, "tiny", "resnet20_cifar", {})
        if dataset == "fashion-mnist":
            evaluation_dataset(dataset, "test", classifier.transform(), classifier.class_names)
        else:
            cmd_evaluate_pointing(classifier, argparse.Namespace(dataset=dataset, split="test", limit=2, batch_size=2,
                                                                     pointing_target=None, pointing_method=None))

    with pytest.raises(ConfigError, match=rf"--dataset {dataset}: the model's 3 labels \(cat, dog, fox\) are not "
                                          r"Fashion-MNIST's 10; score it on its own images with --dataset imagefolder:DIR"):
        score(["cat", "dog", "fox"])
    score(list(FASHION_MNIST_CLASSES))
    score([str(k) for k in range(10)])  # unnamed labels: taken in order


def test_predict_with_a_model_left_training_gives_its_eval_probabilities_and_keeps_its_mode():
    model = create_model("resnet20_cifar", num_classes=10).eval()
    labels = [str(k) for k in range(10)]
    classifier = Classifier(model, labels, {"input_size": [3, 32, 32]}, "tiny", "resnet20_cifar", {})
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = classifier.predict(images)
    model.train()  # batch statistics would replace (and update) the running ones
    torch.testing.assert_close(classifier.predict(images), expected)
    torch.testing.assert_close(classifier.predict(images), expected)
    assert all(m.training for m in model.modules())


def test_fewer_label_names_than_classes_is_one_line_at_load(weights_tmp):
    """Not an IndexError when the model predicts class 9 of a 3-name list (an index edited by hand:
    save_weights refuses such labels)."""
    save_weights(create_model("resnet20_cifar", num_classes=10), weights_tmp / "resnet20_cifar.few.safetensors",
                 labels=list("abcdefghij"))
    index = json.loads((weights_tmp / "index.json").read_text())
    index["resnet20_cifar.few"]["labels"] = ["a", "b", "c"]
    (weights_tmp / "index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=r"resnet20_cifar.few's index entry: 3 label names for a 10-class head"):
        load_classifier("resnet20_cifar.few")


def test_a_checkpoint_whose_head_disagrees_with_its_num_classes_is_one_line_not_a_random_head(tmp_path):
    from test_export import _checkpoint

    checkpoint = torch.load(_checkpoint(tmp_path / "run.ckpt"), weights_only=True)  # a 3-class head
    checkpoint["hyper_parameters"].update(num_classes=5, class_names=list("abcde"))  # hand-edited
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    with pytest.raises(WeightsError, match=r"edited.ckpt: its classifier 'fc' does not fit num_classes=5 recorded "
                                           r"with it \(fc.weight \(3, 112\), fc.bias \(3,\)\); the file was edited"):
        load_classifier(checkpoint=str(tmp_path / "edited.ckpt"))


def test_weights_saved_without_preprocessing_classify_with_the_models_default(weights_tmp, capsys):
    """README's example: save_weights(model, path, dataset=..., metrics=...) records no preprocessing."""
    model = create_model("resnet20_cifar", num_classes=10)
    save_weights(model, weights_tmp / "resnet20_cifar.mine.safetensors", dataset="mine", metrics={"top1": 0.5})
    assert load_classifier("resnet20_cifar.mine").preprocessing["input_size"] == [3, 32, 32]
    image = weights_tmp / "images" / "gray.png"
    image.parent.mkdir()
    Image.fromarray(np.full((40, 30), 90, np.uint8)).save(image)
    assert main(["classify", str(image), "--model", "resnet20_cifar.mine", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]


def test_every_inference_command_takes_a_saved_weights_file_by_its_path_as_by_its_name(weights_tmp, tmp_path, capsys,
                                                                                       monkeypatch):
    """`--model w/ARCH.TAG.safetensors` was "is a file: --model takes a registered name or ARCH.TAG": a file
    copied to another machine could not be used without its folder's index."""
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", num_classes=3)
    save_weights(model, weights_tmp / "resnet20_cifar.mine.safetensors", labels=["cat", "dog", "owl"],
                 preprocessing={"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3})
    image = tmp_path / "gray.png"
    Image.fromarray(np.full((40, 30), 90, np.uint8)).save(image)
    outputs = {}
    for source in ("resnet20_cifar.mine", str(weights_tmp / "resnet20_cifar.mine.safetensors")):
        assert main(["classify", str(image), "--model", source, "--json"]) == 0
        assert main(["explain", str(image), "--model", source, "--out", str(tmp_path / "map.png")]) == 0
        assert main(["export", "--model", source, "--out", str(tmp_path / f"{len(outputs)}.onnx")]) == 0
        outputs[source] = capsys.readouterr().out.replace(str(tmp_path / f"{len(outputs)}.onnx"), "ONNX")
    by_name, by_path = outputs.values()
    assert by_name == by_path and re.search(r'"label": "(cat|dog|owl)"', by_name)
    monkeypatch.chdir(weights_tmp)  # a file in the working folder, named without a folder
    assert main(["classify", str(image), "--model", "resnet20_cifar.mine.safetensors", "--json"]) == 0
    assert capsys.readouterr().out == by_name.splitlines(keepends=True)[0]


@pytest.mark.parametrize("starting_weights", ["vit_tiny_patch4_28.fmnist", "FILE"])
def test_a_run_fine_tuned_from_weights_named_in_pretrained_reloads_from_its_checkpoint(starting_weights, tmp_path):
    """`model_name: vit_tiny_patch4_28` with `pretrained: vit_tiny_patch4_28.fmnist` (or its file) builds the
    weights' 4 blocks without a class token, which the run's model_kwargs do not record: its checkpoint was
    rebuilt with 12 blocks and refused ("the weights lack a class token")."""
    from visattn.pretrained import find_weights_entry

    if starting_weights == "FILE":
        entry = find_weights_entry("vit_tiny_patch4_28", "fmnist")
        starting_weights = str(tmp_path / "vit_tiny_patch4_28.mine.safetensors")
        save_weights(create_model("vit_tiny_patch4_28.fmnist"), starting_weights, labels=entry["labels"],
                     preprocessing=entry["preprocessing"])
        (tmp_path / "index.json").unlink()
    task = ImageClassifier(model_name="vit_tiny_patch4_28", num_classes=3, pretrained=starting_weights)
    assert len(task.model.blocks) == 4 and task.hparams["model_kwargs"] is None
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, tmp_path / "last.ckpt")
    loaded = load_classifier(checkpoint=str(tmp_path / "last.ckpt"))
    assert len(loaded.model.blocks) == 4 and loaded.model.num_classes == 3


def test_a_timm_classifier_loads_the_pretrained_file_it_is_given(tmp_path):
    """`pretrained` reached create_model for registered names only: a timm: model trained from random weights."""
    import timm
    from safetensors.torch import save_file

    from visattn.inference.classifier import build_classifier

    source = timm.create_model("resnet18", num_classes=3)
    save_file(source.state_dict(), tmp_path / "r18.safetensors")
    loaded = build_classifier("timm:resnet18", 3, pretrained=str(tmp_path / "r18.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values()))
    with pytest.raises(WeightsError, match="no/such.pth"):
        build_classifier("timm:resnet18", 3, pretrained="/no/such.pth")


@pytest.mark.parametrize("name, head", [("mobilenetv3_small_050", ("classifier",)), ("resnet18", ("fc",)),
                                        ("deit_tiny_distilled_patch16_224", ("head", "head_dist"))])
def test_a_timm_classifier_fine_tunes_a_file_of_another_label_count_dropping_timms_head(tmp_path, name, head):
    """timm names its head in pretrained_cfg, not as visattn's `classifier` string: a MobileNet's (whose `classifier`
    is the Linear itself) was a TypeError traceback at every load, and any other timm model's head of another size
    a shape error blaming the architecture, where timm drops it."""
    import timm
    from safetensors.torch import save_file

    from visattn.inference.classifier import build_classifier

    source = timm.create_model(name, num_classes=7)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    same = build_classifier(f"timm:{name}", 7, pretrained=str(tmp_path / "w.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), source.state_dict().values()))
    with pytest.warns(UserWarning, match=rf"checkpoint classifier '{', '.join(head)}' does not fit num_classes=3: "
                                         "dropped .*; the new head is randomly initialised, so fine-tune it"):
        tuned = build_classifier(f"timm:{name}", 3, pretrained=str(tmp_path / "w.safetensors"))
    body = {k: v for k, v in source.state_dict().items() if not k.startswith(tuple(f"{h}." for h in head))}
    assert body and all(torch.equal(tuned.state_dict()[k], v) for k, v in body.items())


def test_a_timm_vit_built_for_another_size_takes_a_file_of_weights_as_timm_resamples_them(tmp_path):
    """The size check's own hint (set model_kwargs.img_size: position embeddings are resampled) ended in a pos_embed
    shape error: nothing resampled a timm model's file, as timm's checkpoint filter does for its pretrained loads."""
    import timm
    from safetensors.torch import save_file

    from visattn.inference.classifier import build_classifier

    source = timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=3)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    ours = build_classifier("timm:vit_tiny_patch16_224", 3, {"depth": 1, "img_size": 64},
                            pretrained=str(tmp_path / "w.safetensors")).state_dict()
    timms = timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=3, img_size=64, pretrained=True,
                              pretrained_cfg_overlay={"file": str(tmp_path / "w.safetensors")}).state_dict()
    assert ours["pos_embed"].shape == (1, 17, 192)
    # timm resets the head of weights recorded for another num_classes than 1000; the file's fits here
    assert all(torch.equal(ours[k], v) for k, v in timms.items() if not k.startswith("head."))


def test_a_timm_checkpoint_scored_at_another_img_size_is_resampled_or_refused_in_one_line(tmp_path):
    """evaluate --img-size on a timm ViT checkpoint was a traceback (the model was built at its training size while
    the preprocessing said the new one), and so was LeViT's, whose attention biases fit one size only."""
    from timm.layers import resample_abs_pos_embed

    task = ImageClassifier("timm:vit_tiny_patch16_224", num_classes=3, model_kwargs={"depth": 1, "img_size": 32})
    path = tmp_path / "vit.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    loaded = load_classifier(checkpoint=str(path), img_size=64)
    assert loaded.predict(torch.randn(2, 3, 64, 64)).shape == (2, 3) and loaded.preprocessing["input_size"] == [3, 64, 64]
    torch.testing.assert_close(loaded.model.pos_embed, resample_abs_pos_embed(task.model.pos_embed, (4, 4),
                                                                              num_prefix_tokens=1))
    levit = ImageClassifier("timm:levit_128s", num_classes=3)
    path = tmp_path / "levit.ckpt"
    torch.save({"state_dict": levit.state_dict(), "hyper_parameters": dict(levit.hparams)}, path)
    with pytest.raises(ConfigError, match=rf"^img_size=64: timm:levit_128s cannot take 64 px images with the weights of "
                                          rf"{re.escape(str(path))} \(.*attention_biases.*\); leave it out$"):
        load_classifier(checkpoint=str(path), img_size=64)


def test_a_timm_model_of_fixed_size_without_a_patch_grid_refuses_data_of_another_size_before_training():
    """timm's LeViT at 64 px data failed in the first step, a 153-line traceback after the trainer had set up."""
    preprocessing = {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3, "recipe": "small"}
    with pytest.raises(ConfigError, match=r"^data.init_args.img_size=64 but timm:levit_128s cannot take 64x64 images "
                                          r"\(.*\); set model.init_args.model_kwargs.img_size: 64, or "
                                          r"data\.init_args\.img_size to the size it was built for$"):
        ImageClassifier("timm:levit_128s", num_classes=3, preprocessing=preprocessing)
    ImageClassifier("timm:levit_128s", num_classes=3, preprocessing=preprocessing, model_kwargs={"img_size": 64})


SHIPPED_CLASSIFIER = "vit_tiny_patch4_28.fmnist"  # small; its entry records ViT hyperparameters and 10 labels


def test_an_arch_tag_model_name_fine_tunes_the_shipped_weights_unless_pretrained_is_false(monkeypatch):
    """The task's default used to be pretrained=False, which create_model now takes as "no weights" for arch.tag."""
    shipped = create_model(SHIPPED_CLASSIFIER).state_dict()
    task = ImageClassifier(model_name=SHIPPED_CLASSIFIER)
    assert task.hparams.pretrained is None
    torch.testing.assert_close(task.model.state_dict()["head.weight"], shipped["head.weight"])
    assert all(torch.equal(v, shipped[k]) for k, v in task.model.state_dict().items())

    import visattn.pretrained

    def no_file(*args, **kwargs):
        raise AssertionError(f"pretrained=False read weights: {args[1:]}")

    monkeypatch.setattr(visattn.pretrained, "load_weights", no_file)
    random = ImageClassifier(model_name=SHIPPED_CLASSIFIER, pretrained=False).model.state_dict()
    assert {k: v.shape for k, v in random.items()} == {k: v.shape for k, v in shipped.items()}  # the tag's architecture
    assert random["head.weight"].shape[0] == 10
    assert not torch.equal(random["head.weight"], shipped["head.weight"])
    assert not torch.equal(random["patch_embed.proj.weight"], shipped["patch_embed.proj.weight"])


def test_a_checkpoint_of_an_arch_tag_run_is_rebuilt_without_reading_the_shipped_file(tmp_path, monkeypatch):
    """The checkpoint holds every weight: the shipped file the run started from is not read again."""
    import visattn.pretrained

    task = ImageClassifier(model_name="se_resnet20_cifar.fmnist", pretrained=False)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    read = []
    real = visattn.pretrained.load_weights
    monkeypatch.setattr(visattn.pretrained, "load_weights", lambda model, source, **kw: (read.append(source),
                                                                                          real(model, source, **kw))[1])
    loaded = load_classifier(checkpoint=str(path))
    assert read == []
    assert all(torch.equal(v, task.model.state_dict()[k]) for k, v in loaded.model.state_dict().items())


@pytest.mark.parametrize("init_args, expected", [
    ({"model_name": "se_resnet20_cifar.fmnist"}, True),
    ({"model_name": "se_resnet20_cifar.fmnist", "pretrained": None}, True),
    ({"model_name": "se_resnet20_cifar.fmnist", "pretrained": False}, False),  # the tag's architecture, random init
    ({"model_name": "se_resnet20_cifar.fmnist", "pretrained": True}, True),
    ({"model_name": "se_resnet20_cifar", "pretrained": None}, False),
    ({"model_name": "se_resnet20_cifar", "pretrained": "outputs/run/last.ckpt"}, True),
    ({"model_name": "timm:resnet18", "pretrained": "resnet18.safetensors"}, True),  # build_classifier loads it
    ({"model_name": "timm:resnet18", "model_kwargs": {"pretrained": True}}, True),
    ({"model_name": "timm:resnet18"}, False),
], ids=["tag", "tag_none", "tag_false", "tag_true", "arch_none", "arch_file", "timm_file", "timm_kwargs", "timm"])
def test_loads_weights_follows_create_model(init_args, expected):
    from visattn.tasks.checkpoint_paths import _loads_weights

    assert _loads_weights(SimpleNamespace(init_args=init_args)) is expected


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_scoring_an_arch_tag_with_pretrained_false_is_refused_as_untrained(subcommand, in_tmp, capsys):
    config = REPO / "configs" / "classification" / "se_resnet20_fmnist.yaml"
    assert main([subcommand, "--config", str(config), *QUICK, "--model.init_args.model_name", "se_resnet20_cifar.fmnist",
                 "--model.init_args.pretrained", "false"]) == 2
    err = capsys.readouterr().err
    assert (f"visattn {subcommand} without --ckpt_path would score an untrained se_resnet20_cifar.fmnist; give "
            "--ckpt_path best, last or FILE, or start the model from weights") in err


def test_an_arch_tag_with_other_starting_weights_is_one_line_in_the_configs_terms():
    """model_name ARCH.TAG with pretrained last.ckpt (the resume messages' advice for a run of ARCH.TAG) was
    create_model's refusal, which names create_model calls to a command-line user."""
    from visattn.tasks.setting_checks import _check_settings

    with pytest.raises(ConfigError) as info:
        _check_settings(SimpleNamespace(init_args={"model_name": "se_resnet20_cifar.fmnist",
                                                   "pretrained": "run/last.ckpt"}), {})
    assert str(info.value) == ("model.init_args.model_name se_resnet20_cifar.fmnist names shipped weights and "
                               "model.init_args.pretrained run/last.ckpt other weights; give model_name "
                               "se_resnet20_cifar to start from run/last.ckpt, or leave pretrained out (or null) to "
                               "start from se_resnet20_cifar.fmnist's")
    for pretrained in ("se_resnet20_cifar.fmnist", None, True):
        _check_settings(SimpleNamespace(init_args={"model_name": "se_resnet20_cifar.fmnist",
                                                   "pretrained": pretrained}), {})


def test_training_an_arch_tag_with_pretrained_false_warns_that_it_starts_from_random_weights(recwarn):
    from visattn.errors import VisattnWarning
    from visattn.tasks.setting_checks import _check_settings

    with pytest.warns(VisattnWarning, match=r"^model.init_args.pretrained false with model_name se_resnet20_cifar.fmnist: "
                                            r"se_resnet20_cifar starts from random weights; leave pretrained out"):
        _check_settings(SimpleNamespace(init_args={"model_name": "se_resnet20_cifar.fmnist", "pretrained": False}), {})
    recwarn.clear()
    for init_args in ({"model_name": "se_resnet20_cifar.fmnist", "pretrained": None},
                      {"model_name": "se_resnet20_cifar", "pretrained": False}):
        _check_settings(SimpleNamespace(init_args=init_args), {})
    assert not [w for w in recwarn if issubclass(w.category, VisattnWarning)]


class _LookupLogits(torch.nn.Module):
    """Returns row ``k`` of ``table`` for an image whose first pixel is ``k``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.table[images[:, 0, 0, 0].round().long()]


def _ranked_logits(labels: torch.Tensor, ranks: list[int], num_classes: int) -> torch.Tensor:
    """Logits whose true class of row ``i`` is the ``ranks[i]``-th largest (1 = the top), no ties."""
    rows = []
    for label, rank in zip(labels.tolist(), ranks):
        others = [c for c in range(num_classes) if c != label]
        order = others[: rank - 1] + [label] + others[rank - 1:]  # classes from the largest logit down
        row = torch.empty(num_classes)
        row[torch.tensor(order)] = torch.arange(num_classes, 0, -1, dtype=torch.float)
        rows.append(row)
    return torch.stack(rows)


def test_top1_and_top5_accuracy_equal_a_hand_count_where_they_differ():
    """20 samples of 10 classes: the true class ranks 1st in 7 of them, 2nd..5th in 8 more and 6th..10th
    in the last 5, so top-1 is 7/20 and top-5 is 15/20, through the task's metrics and `evaluate_classifier`."""
    from visattn.inference.classifier import Classifier
    from visattn.inference.classifier_scoring import evaluate_classifier
    from visattn.tasks.classification import ImageClassifier, accuracy_metrics

    num_classes, labels = 10, torch.arange(20) % 10
    ranks = [1] * 7 + [2, 3, 4, 5, 5, 4, 3, 2] + [6, 7, 8, 9, 10]
    logits = _ranked_logits(labels, ranks, num_classes)
    hand_top1 = sum(int(logits[i].argmax() == labels[i]) for i in range(20))
    hand_top5 = sum(int(labels[i] in logits[i].topk(5).indices) for i in range(20))
    assert (hand_top1, hand_top5) == (7, 15)

    metrics = accuracy_metrics(num_classes, prefix="test/")
    metrics.update(logits[:12], labels[:12])  # over two batches, as an epoch accumulates them
    metrics.update(logits[12:], labels[12:])
    scores = {k: float(v) for k, v in metrics.compute().items()}
    assert scores == pytest.approx({"test/top1": 7 / 20, "test/top5": 15 / 20})

    task = ImageClassifier(num_classes=num_classes)
    for collection, prefix in ((task.val_metrics, "val/"), (task.test_metrics, "test/")):
        collection.update(logits, labels)
        assert {k: float(v) for k, v in collection.compute().items()} == pytest.approx(
            {f"{prefix}top1": 0.35, f"{prefix}top5": 0.75})

    images = torch.arange(20, dtype=torch.float)[:, None, None, None].expand(20, 3, 4, 4).clone()
    dataset = list(zip(images, labels))
    classifier = Classifier(_LookupLogits(logits), [f"c{k}" for k in range(num_classes)],
                            {"input_size": [3, 4, 4], "mean": [0.0] * 3, "std": [1.0] * 3}, "lookup", "lookup", {})
    assert evaluate_classifier(classifier, dataset, batch_size=8) == {"top1": 0.35, "top5": 0.75, "n": 20}


def test_per_class_accuracy_equals_a_hand_count_and_leaves_out_classes_without_samples():
    """Each class's accuracy, count and most frequent wrong prediction, counted here from the logits' argmax; the
    mean over the classes that have samples (a split of a subset of the classes scored absent ones as 0)."""
    from visattn.inference.classifier import Classifier
    from visattn.inference.classifier_scoring import evaluate_classifier

    num_classes, labels = 10, torch.arange(20) % 10
    logits = _ranked_logits(labels, [1] * 7 + [2, 3, 4, 5, 5, 4, 3, 2] + [6, 7, 8, 9, 10], num_classes)
    # class 9 has no sample, class 0 only its correctly ranked one, class 7 one wrongly ranked
    keep = (labels != 9) & (torch.arange(20) != 10) & (torch.arange(20) != 17)
    logits, labels = logits[keep], labels[keep]
    names = [f"c{k}" for k in range(num_classes)]
    predicted = logits.argmax(1)
    expected = {}
    for k in range(9):
        rows = labels == k
        wrong = predicted[rows & (predicted != k)].tolist()
        expected[f"c{k}"] = {"accuracy": round((predicted[rows] == k).float().mean().item(), 6), "n": int(rows.sum()),
                             "mistaken_for": f"c{max(set(wrong), key=wrong.count)}" if wrong else None}
    images = torch.arange(len(labels), dtype=torch.float)[:, None, None, None].expand(-1, 3, 4, 4).clone()
    classifier = Classifier(_LookupLogits(logits), names, {"input_size": [3, 4, 4], "mean": [0.0] * 3,
                                                           "std": [1.0] * 3}, "lookup", "lookup", {})
    scores = evaluate_classifier(classifier, list(zip(images, labels)), batch_size=5, per_class=True)
    assert scores["per_class"] == expected and "c9" not in scores["per_class"]
    assert scores["mean_class_accuracy"] == pytest.approx(sum(c["accuracy"] for c in expected.values()) / 9, abs=1e-6)
    assert scores["top1"] == pytest.approx(7 / 16) and scores["mean_class_accuracy"] == pytest.approx(4 / 9)
    assert expected["c0"] == {"accuracy": 1.0, "n": 1, "mistaken_for": None}


def _lookup_classifier(logits: torch.Tensor) -> tuple[Classifier, torch.Tensor]:
    """A classifier giving row ``k`` of ``logits`` for image ``k``, and those images."""
    images = torch.arange(len(logits), dtype=torch.float)[:, None, None, None].expand(-1, 3, 4, 4).clone()
    classifier = Classifier(_LookupLogits(logits), [f"c{k}" for k in range(logits.shape[1])],
                            {"input_size": [3, 4, 4], "mean": [0.0] * 3, "std": [1.0] * 3}, "lookup", "lookup", {})
    return classifier, images


@pytest.mark.parametrize("num_classes", [3, 7])
def test_evaluate_classifier_counts_tied_scores_as_the_tasks_torchmetrics_do(num_classes):
    """`evaluate` counts top-1, top-5 and the confusion matrix itself (torchmetrics' import cost 1.3 s): on scores
    full of ties its figures are those of the task's metrics, which break ties as torch's argmax and topk do."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    from visattn.inference.classifier_scoring import class_accuracies, evaluate_classifier
    from visattn.tasks.classification import accuracy_metrics

    generator = torch.Generator().manual_seed(num_classes)
    logits = torch.randint(0, 3, (300, num_classes), generator=generator).float()  # most rows tie somewhere
    labels = torch.randint(0, num_classes, (300,), generator=generator)
    classifier, images = _lookup_classifier(logits)
    scores = evaluate_classifier(classifier, list(zip(images, labels)), batch_size=64, per_class=True)

    probabilities = logits.softmax(dim=-1)  # what the classifier's predict gives
    metrics = accuracy_metrics(num_classes, prefix="")
    metrics.update(probabilities, labels)
    confusion = MulticlassConfusionMatrix(num_classes)
    confusion.update(probabilities, labels)
    expected = {k: round(float(v), 6) for k, v in metrics.compute().items()}
    assert {k: scores[k] for k in ("top1", "top5")} == pytest.approx(expected, abs=1e-6)
    assert expected["top1"] < expected["top5"] < 1 or num_classes == 3
    by_class = class_accuracies(confusion.compute(), classifier.class_names)
    assert {k: scores[k] for k in by_class} == by_class


@pytest.mark.parametrize("target, problem", [
    (3, "the dataset's target 3 is no class of the classifier's 3 (0 to 2)"),
    (-1, "the dataset's target -1 is no class of the classifier's 3 (0 to 2)"),
    (0.5, "the dataset's targets are torch.float32 of shape (2,); give each sample's class index"),
])
def test_a_target_that_is_no_class_of_the_classifier_is_one_line(target, problem):
    """torchmetrics counted a target outside the classes as a miss: the accuracy dropped without a word."""
    from visattn.inference.classifier_scoring import evaluate_classifier

    classifier, images = _lookup_classifier(torch.eye(3)[:2])
    with pytest.raises(ConfigError, match=rf"^{re.escape(problem)}"):
        evaluate_classifier(classifier, [(images[0], 0), (images[1], target)])
    assert evaluate_classifier(classifier, [(images[0], 0.0), (images[1], 1.0)]) == {"top1": 1.0, "top5": 1.0, "n": 2}


def test_evaluate_per_class_prints_a_line_per_class_and_refuses_what_it_cannot_score(capsys):
    assert main(["evaluate", "--model", "se_resnet20_cifar.fmnist", "--dataset", "fashion-mnist", "--limit", "200",
                 "--per-class"]) == 0
    lines = capsys.readouterr().out.splitlines()
    scores = json.loads(lines[-1])
    assert [line.split(":")[0].strip() for line in lines[1:-1]] == list(scores["per_class"])
    assert sum(c["n"] for c in scores["per_class"].values()) == scores["n"] == 200
    for model, dataset, message in (("fcos_se_resnet20_cifar.scenes", "fashion-scenes", "--per-class: "
                                     "fcos_se_resnet20_cifar.scenes is a detector, and only a classifier takes "
                                     "--per-class; drop it"),
                                    ("se_resnet20_cifar.fmnist", "fashion-mnist-canvas", "--per-class: "
                                     "fashion-mnist-canvas scores the pointing game")):
        assert main(["evaluate", "--model", model, "--dataset", dataset, "--per-class"]) == 2
        assert capsys.readouterr().err.startswith(f"visattn: error: {message}")


def test_a_one_channel_classifier_classifies_its_own_images(weights_tmp, tmp_path, capsys):
    # in_chans=1: the model's transform gives gray (1, H, W) images, from the files and through the command.
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", in_chans=1, num_classes=3)
    save_weights(model, weights_tmp / "resnet20_cifar.gray.safetensors", labels=["a", "b", "c"],
                 preprocessing={"input_size": [1, 28, 28], "mean": [0.5], "std": [0.5], "recipe": "small"})
    classifier = load_classifier("resnet20_cifar.gray")
    rgb = np.full((40, 30, 3), (200, 100, 50), dtype=np.uint8)
    image = classifier.transform()(rgb)
    gray = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    assert image.shape == (1, 28, 28) and torch.allclose(image, torch.full_like(image, (gray - 0.5) / 0.5), atol=0.01)
    torch.testing.assert_close(classifier.predict(image[None]), model.eval()(image[None]).softmax(-1))
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    assert main(["classify", str(tmp_path / "photo.png"), "--model", "resnet20_cifar.gray", "--json", "--topk", "3"]) == 0
    found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    probs = classifier.predict(image[None])[0]
    assert [(p["label"], p["prob"]) for p in found] == [  # unrounded, as predict writes them (they had 4 decimals)
        (["a", "b", "c"][int(i)], float(probs[i])) for i in probs.argsort(descending=True)]


@pytest.mark.parametrize("value", [-10.0, float("nan")])
def test_a_backbone_lr_scale_or_attention_weight_that_is_not_finite_or_negative_is_one_line(value):
    # from a config audit: a negative scale trained the backbone up the loss, NaN gave a NaN loss; both exit 0
    from visattn.tasks.captioning import CaptioningTask
    from visattn.tasks.detection import DetectionTask

    task = DetectionTask(model_name="fcos_resnet20_cifar", num_classes=2, backbone_lr_scale=value)
    with pytest.raises(ConfigError, match=rf"^model.init_args.backbone_lr_scale {value}: a backbone's share of the lr "
                                          "is a finite number of 0 or more; give e.g. 0.1$"):
        adamw_warmup_cosine(task)
    with pytest.raises(ConfigError, match=rf"^model.init_args.alpha_c={value}: give a finite weight of 0 or more"):
        CaptioningTask(vocab=["<pad>", "<start>", "<end>", "<unk>", "a"], alpha_c=value)


def test_an_input_size_of_two_channels_is_one_line():
    with pytest.raises(ConfigError, match=r"input_size=\(2, 28, 28\).*3 channels \(RGB\) or 1 \(gray\)"):
        eval_transforms((2, 28, 28))


@pytest.mark.parametrize("key, value", [("lr", float("nan")), ("lr", float("inf")), ("weight_decay", float("nan")),
                                        ("lr", -1e-3), ("warmup_epochs", -1.0)])
def test_a_learning_rate_weight_decay_or_warmup_that_is_not_finite_or_negative_is_one_line(key, value):
    task = ImageClassifier(model_name="resnet20_cifar", num_classes=3, **{key: value})
    with pytest.raises(ConfigError, match=rf"^model.init_args.{key} {value}: a .+ is a finite number of 0 or more"):
        adamw_warmup_cosine(task)


@pytest.mark.parametrize("key", ["mixup_alpha", "cutmix_alpha"])
@pytest.mark.parametrize("value", [-0.2, float("nan")])
def test_a_negative_or_nan_mixing_alpha_is_one_line_not_mixing_silently_off(key, value):
    with pytest.raises(ConfigError, match=rf"^model.init_args.{key}={value}: give the Beta distribution's alpha above 0, "
                                          "or 0 for none$"):
        ImageClassifier(model_name="resnet20_cifar", num_classes=3, **{key: value})


def test_an_imagefolder_dataset_without_a_folder_is_one_line_not_the_working_folder(tmp_path, monkeypatch):
    from visattn.inference.classifier_scoring import evaluation_dataset
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="^--dataset imagefolder: names no folder; give one, e.g. imagefolder:photos$"):
        evaluation_dataset("imagefolder:", "test", eval_transforms(28), ["a", "b"])


@pytest.mark.parametrize("name, slow, full", [
    ("fcos_resnet20_cifar", "backbone.body.conv1.weight", "backbone.fpn.inner_blocks.0.0.weight"),
    ("detr_resnet20_cifar", "backbone.conv1.weight", "input_proj.weight"),
])
def test_a_slower_backbone_is_the_registered_backbone_not_the_pyramid_built_on_it(name, slow, full):
    """An FCOS's FPN (and P6/P7) start from scratch but sat under ``backbone.``, so they trained slowly too."""
    from visattn import create_model

    model = create_model(name, num_classes=3)
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.05, lr=1e-3, backbone_lr_scale=0.1), lr=1e-3)
    lr_of = {param_name: group["lr"] for group in optimizer.param_groups
             for param_name, param in model.named_parameters() if any(param is p for p in group["params"])}
    assert lr_of[slow] == pytest.approx(1e-4) and lr_of[full] == pytest.approx(1e-3)
    assert lr_of["head.classification_head.cls_logits.weight" if name.startswith("fcos") else "class_embed.weight"] == 1e-3


def test_a_checkpoint_given_as_the_model_name_from_python_says_checkpoint(tmp_path):
    """load_classifier('run/last.ckpt') stripped '.ckpt' as a tag and called it an unknown model."""
    from visattn.inference.classifier import load_classifier

    path = tmp_path / "last.ckpt"
    path.write_bytes(b"not read")
    with pytest.raises(ConfigError, match=rf"^'{path}' is a training checkpoint: pass it as checkpoint=$"):
        load_classifier(str(path))


def test_fine_tuning_shipped_weights_with_other_normalisation_warns_naming_both():
    """An image folder's ImageNet defaults on Fashion-MNIST weights (mean 0.286, std 0.353) trained silently."""
    import warnings

    from visattn.errors import VisattnWarning

    imagenet = {"input_size": [3, 28, 28], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with pytest.warns(VisattnWarning, match=r"^the data normalises with mean \[0.485, 0.456, 0.406\], std .* but the "
                                            r"starting weights were trained with mean \[0.286"):
        ImageClassifier("se_resnet20_cifar", num_classes=3, pretrained="se_resnet20_cifar.fmnist", preprocessing=imagenet)
    own = load_classifier("se_resnet20_cifar.fmnist").preprocessing
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        ImageClassifier("se_resnet20_cifar.fmnist", num_classes=10, preprocessing=own)
        ImageClassifier("se_resnet20_cifar", num_classes=10, pretrained=False, preprocessing=imagenet)


VOCAB = ["<pad>", "<start>", "<end>", "<unk>", "shoe"]


@pytest.mark.parametrize("build, name", [
    (lambda pre: ImageClassifier("vit_tiny_patch4_28", preprocessing=pre), "vit_tiny_patch4_28 takes 28x28"),
    (lambda pre: ImageClassifier("timm:vit_tiny_patch16_224", model_kwargs={"depth": 1}, preprocessing=pre),
     "timm:vit_tiny_patch16_224 takes 224x224"),
    (lambda pre: CaptioningTask("sat_vit_small_patch16_224", vocab=VOCAB, preprocessing=pre,
                                model_kwargs={"encoder_kwargs": {"depth": 1}}), "sat_vit_small_patch16_224 takes 224x224"),
], ids=["vit", "timm_vit", "vit_captioner"])
def test_data_of_another_size_than_a_vit_takes_is_refused_at_build_naming_both_config_keys(build, name):
    """It failed only at the first batch, in the patch embedding, without naming the config keys."""
    data = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}
    with pytest.raises(ConfigError, match=rf"^data.init_args.img_size=32 but {name} images; set "
                                          r"model.init_args.model_kwargs.img_size: 32 \(pretrained position "
                                          r"embeddings are resampled\), or data\.init_args\.img_size: \d+$"):
        build(data)


def test_models_that_take_any_size_accept_data_of_any_size():
    data = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}
    ImageClassifier("vit_tiny_patch4_28", model_kwargs={"img_size": 32, "depth": 1}, preprocessing=data)
    ImageClassifier("vit_tiny_patch4_28", model_kwargs={"depth": 1, "dynamic_img_size": True}, preprocessing=data)
    ImageClassifier("timm:vit_tiny_patch16_224", model_kwargs={"depth": 1, "dynamic_img_size": True}, preprocessing=data)
    ImageClassifier("cbam_resnet20_cifar", preprocessing={**data, "input_size": [3, 48, 48]})
    CaptioningTask("sat_cbam_resnet_scenes", vocab=VOCAB, preprocessing=data)


def test_a_fit_config_whose_data_size_differs_from_its_vits_is_one_line(in_tmp, capsys):
    assert main(["fit", "--config", str(VIT_CONFIG), *QUICK, "--data.init_args.img_size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("visattn: error: data.init_args.img_size=32 but vit_tiny_patch4_28") and len(err.splitlines()) == 1


def test_a_checkpoint_validated_on_folders_of_other_classes_is_refused(in_tmp, capsys):
    """Linked from the data, the class names of the folders at hand replaced the run's: two classes
    either way, so the head's outputs were scored, and named, as other classes."""
    root = _image_folder(in_tmp / "photos")
    config = REPO / "configs" / "classification" / "imagefolder_template.yaml"
    run = ["--data.init_args.root", str(root), "--data.init_args.img_size", "32",
           "--model.init_args.model_name", "cbam_resnet20_cifar"]
    ckpt = _fit(in_tmp, *run, config=config)
    (root / "red").rename(root / "green")
    capsys.readouterr()
    assert main(["validate", "--config", str(config), *QUICK, *run, "--ckpt_path", str(ckpt)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"visattn: error: --ckpt_path {ckpt}: the data gives other classes than the run was trained on: class 1 is "
        "'green' here, 'red' in the checkpoint; give the data settings of that run")


@pytest.mark.parametrize("max_epochs, max_steps, stepping", [(-1, -1, float("inf")), (5, -1, -1)],
                         ids=["max_time_alone", "data_of_unknown_length"])
def test_a_run_of_no_set_length_is_one_line_naming_max_epochs_and_max_steps(max_epochs, max_steps, stepping):
    """max_epochs -1 (or null) with only max_time set ended in OverflowError: float infinity to integer."""
    from lightning.pytorch.utilities import AttributeDict
    trainer = SimpleNamespace(estimated_stepping_batches=stepping, num_training_batches=float("inf"),
                              max_epochs=max_epochs, max_steps=max_steps, accumulate_grad_batches=1)
    task = SimpleNamespace(model=torch.nn.Linear(2, 2), trainer=trainer,
                           hparams=AttributeDict(lr=1.0, weight_decay=0.0, warmup_epochs=1))
    with pytest.raises(ConfigError, match=f"trainer.max_epochs {max_epochs} and trainer.max_steps -1 set no length"):
        adamw_warmup_cosine(task)


def _undecayed(model: torch.nn.Module, groups: list[dict]) -> set[str]:
    ids = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("name, kwargs", [("deit_tiny_distilled_patch16_224", {"depth": 1}),
                                          ("levit_128s", {}),
                                          ("swin_tiny_patch4_window7_224", {"depths": (1, 1, 1, 1)})])
def test_weight_decay_groups_leave_out_what_a_timm_model_lists_in_no_weight_decay(name, kwargs):
    """A Swin's relative position bias tables, a DeiT's dist_token and a LeViT's attention biases were decayed."""
    import timm
    from timm.optim._param_groups import param_groups_weight_decay

    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    timms = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    assert _undecayed(model, weight_decay_groups(model, 0.05)) == _undecayed(model, timms)



@pytest.mark.parametrize("encoder_name, encoder_kwargs, listed", [
    ("timm:swin_tiny_patch4_window7_224", {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                                           "window_size": 2}, "relative_position_bias_table"),
    ("timm:deit_tiny_distilled_patch16_224", {"depth": 1}, "dist_token")])
def test_a_captioners_timm_encoder_is_decayed_as_timms_optimizer_factory_decays_it(encoder_name, encoder_kwargs,
                                                                                   listed):
    """Only the captioner's own no_weight_decay() was read, which it has none of: the encoder's Swin relative
    position bias tables and DeiT distillation token were decayed, which timm and visattn's classifier exempt."""
    from timm.optim import create_optimizer_v2
    from visattn.tasks.optimization import task_parameter_groups

    task = CaptioningTask("sat_resnet50", vocab=["<pad>", "<start>", "<end>", "<unk>", "a"], weight_decay=0.05,
                          model_kwargs={"encoder_name": encoder_name, "encoder_kwargs": encoder_kwargs,
                                        "encoder_pretrained": False, "img_size": 64, "grid_size": 2})
    encoder = task.model.encoder
    ours = {name.removeprefix("encoder.") for name in _undecayed(task.model, task_parameter_groups(task))
            if name.startswith("encoder.")}
    timms = _undecayed(encoder, create_optimizer_v2(encoder, "adamw", weight_decay=0.05).param_groups)
    assert ours == timms
    assert any(listed in name and p.ndim > 1 for name, p in encoder.named_parameters() if name in ours)


def test_norm_parameters_and_biases_of_any_shape_are_not_decayed():
    """A global-context block's LayerNorm over (C, 1, 1) has (C, 1, 1) weights and biases, which the 1-D rule
    decayed, against the docstring (none on biases and norms) and timm, which exempts every name ending in .bias."""
    model = create_model("gc_resnet20_cifar", num_classes=10)
    undecayed = _undecayed(model, weight_decay_groups(model, 0.05))
    norms = {f"{module_name}.{name}" for module_name, module in model.named_modules()
             if isinstance(module, torch.nn.LayerNorm) for name, _ in module.named_parameters()}
    biases = {name for name, _ in model.named_parameters() if name.endswith(".bias")}
    shaped = {name for name, p in model.named_parameters() if name in norms | biases and p.ndim > 1}
    assert len(shaped) == 12 and norms | biases <= undecayed, sorted(norms | biases - undecayed)


@pytest.mark.parametrize("name, kwargs", [
    *[(f"{attention}resnet20_cifar", {}) for attention in ("", "se_", "cbam_", "bam_", "gc_", "nl_", "coord_", "eca_")],
    ("vit_tiny_patch4_28", {"depth": 2}), ("detr_resnet20_cifar", {"num_classes": 3}),
    ("fcos_resnet20_cifar", {"num_classes": 3}), ("sat_cbam_resnet_scenes", {"vocab_size": 20})])
def test_the_decayed_parameters_are_those_timms_rule_decays_less_norms(name, kwargs):
    """timm's rule (not 1-D, not named .bias, not listed in no_weight_decay(); visattn adds nested position
    embeddings and tokens by name) with every normalisation layer's parameters left out, whatever their shape."""
    from timm.optim._param_groups import param_groups_weight_decay

    model = create_model(name, pretrained=False, **kwargs)
    listed = {*(model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()),
              "*pos_embed", "*cls_token", "*reg_token"}
    norms = {f"{module_name}.{p_name}" for module_name, module in model.named_modules()
             if isinstance(module, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm))
             for p_name, _ in module.named_parameters(recurse=False)}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    timms = trained - _undecayed(model, param_groups_weight_decay(model, 0.05, no_weight_decay_list=listed))
    assert trained - _undecayed(model, weight_decay_groups(model, 0.05)) == timms - norms

@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1, float("nan")])
def test_an_ema_decay_outside_zero_to_one_is_one_line_naming_the_key(decay):
    """At 1.0 the average never moved, and validation and checkpoint selection scored the initial weights."""
    with pytest.raises(ConfigError, match=r"model.init_args.ema_decay=.*below 1"):
        ImageClassifier("cbam_resnet20_cifar", num_classes=10, ema_decay=decay)


def test_fine_tuning_a_shipped_classifier_on_its_labels_in_another_order_keeps_each_names_logit():
    """The head kept the rows of the shipped order: each reordered label was scored by another class's row."""
    from visattn.data.fashion_mnist import FASHION_MNIST_CLASSES

    names = list(FASHION_MNIST_CLASSES)
    permuted = [names[i] for i in (3, 7, 0, 9, 1, 5, 8, 2, 6, 4)]
    original = ImageClassifier("se_resnet20_cifar.fmnist", class_names=names).eval()
    reordered = ImageClassifier("se_resnet20_cifar.fmnist", class_names=permuted).eval()
    images = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        before, after = original(images), reordered(images)
    for column, name in enumerate(permuted):
        torch.testing.assert_close(after[:, column], before[:, names.index(name)])


def test_fine_tuning_a_shipped_classifier_on_other_label_names_starts_a_new_head_with_a_warning():
    shipped = create_model("se_resnet20_cifar.fmnist").state_dict()
    with pytest.warns(UserWarning, match="class names .* are not among the starting weights' labels .* randomly initialised"):
        task = ImageClassifier("se_resnet20_cifar.fmnist", class_names=[f"part{i}" for i in range(10)])
    assert not torch.equal(task.model.fc.weight, shipped["fc.weight"])
    assert torch.equal(task.model.conv1.weight, shipped["conv1.weight"])


@pytest.mark.parametrize("name", ["se_resnet20_cifar", "timm:resnet10t", "timm:deit_tiny_distilled_patch16_224"])
def test_a_new_run_from_a_checkpoint_matches_its_class_names_as_from_shipped_weights(tmp_path, name):
    """The checkpoint's class_names were not read: the head was kept by position (a timm model's always), each
    row scoring another class, on data of the same names in another order or of other names."""
    kwargs = {"model_kwargs": {"depth": 1, "img_size": 32}} if "deit" in name else {}
    first = ImageClassifier(name, num_classes=3, class_names=["bird", "cat", "dog"], **kwargs).eval()
    path = tmp_path / "first.ckpt"
    torch.save({"state_dict": first.state_dict(), "hyper_parameters": dict(first.hparams)}, path)
    images = torch.randn(2, 3, 32, 32)
    reordered = ImageClassifier(name, num_classes=3, class_names=["dog", "bird", "cat"], pretrained=str(path),
                                **kwargs).eval()
    with torch.no_grad():
        before, after = first(images), reordered(images)
    torch.testing.assert_close(after, before[:, [2, 0, 1]])
    with pytest.warns(UserWarning, match=r"class names fox are not among the starting weights' labels "
                                         r"\(bird, cat, dog\): classifier .* is randomly initialised"):
        other = ImageClassifier(name, num_classes=3, class_names=["cat", "dog", "fox"], pretrained=str(path), **kwargs)
    with torch.no_grad():
        assert not torch.allclose(other.eval()(images), before)


def test_a_checkpoint_recording_labels_as_macos_spells_them_keeps_its_head_on_the_same_names_spelled_composed(
        tmp_path):
    """A run on a macOS folder recorded "éclair" decomposed (NFD) before class names were kept composed (NFC):
    fine-tuning its checkpoint on a copy of the folder made elsewhere reset the head, warning that the names (the
    same to the eye) were not among its labels."""
    import unicodedata

    decomposed, composed = (unicodedata.normalize(form, "éclair") for form in ("NFD", "NFC"))
    first = ImageClassifier("resnet20_cifar", num_classes=2, class_names=[decomposed, "fig"],
                            model_kwargs={"layers": (1, 1, 1)}).eval()
    path = tmp_path / "mac.ckpt"
    torch.save({"state_dict": first.state_dict(), "hyper_parameters": dict(first.hparams)}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "randomly initialised" warning
        again = ImageClassifier("resnet20_cifar", num_classes=2, class_names=["fig", composed], pretrained=str(path),
                                model_kwargs={"layers": (1, 1, 1)}).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(images), first(images)[:, [1, 0]])


@pytest.fixture
def offline(monkeypatch):
    """Every way timm fetches weights fails, as with HF_HUB_OFFLINE=1 and no cache."""
    import timm.models._builder
    import timm.models._hub

    def no_network(*args, **kwargs):
        raise OSError(f"offline: tried to fetch {args}")

    for module, name in ((timm.models._hub, "hf_hub_download"), (timm.models._builder, "load_state_dict_from_url"),
                         (timm.models._builder, "download_cached_file")):
        monkeypatch.setattr(module, name, no_network)


def test_a_checkpoint_of_a_timm_run_from_timm_weights_loads_offline(tmp_path, offline):
    """model_kwargs pretrained: true went to timm.create_model on every load, which contacted the hub."""
    from visattn.pretrained import checkpoint_follows

    task = ImageClassifier("timm:resnet18", num_classes=3)
    hparams = {**task.hparams, "model_kwargs": {"pretrained": True,
                                                "pretrained_cfg_overlay": {"hf_hub_id": "timm/resnet18.a1_in1k"}}}
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": hparams}, path)
    with pytest.raises(OSError, match="offline"):  # what the fixture stands for: training from timm's weights
        ImageClassifier(**hparams)
    loaded = load_classifier(checkpoint=str(path))  # classify, evaluate, export, explain
    assert all(torch.equal(v, task.model.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    with checkpoint_follows():  # how validate/test --ckpt_path build the task before loading the checkpoint
        ImageClassifier(**hparams)


def test_fine_tuning_timm_weights_with_other_normalisation_warns_as_for_shipped_weights(monkeypatch, offline):
    """timm:vit_tiny_patch16_224.augreg_in21k (trained with mean and std 0.5) fine-tuned on ImageNet's
    statistics went by without a word, while pretrained='timm:...' on visattn's ViT warned."""
    import warnings

    from visattn.errors import VisattnWarning

    monkeypatch.setattr("visattn.inference.classifier.load_weights", lambda *args, **kwargs: None)  # no download
    name, small = "timm:vit_tiny_patch16_224.augreg_in21k", {"depth": 1}
    imagenet = {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with pytest.warns(VisattnWarning, match=r"^the data normalises with mean \[0.485, 0.456, 0.406\], std .* but the "
                                            r"starting weights were trained with mean \[0.5, 0.5, 0.5\], std \[0.5"):
        ImageClassifier(name, num_classes=3, model_kwargs=small, pretrained=True, preprocessing=imagenet)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        ImageClassifier(name, num_classes=3, model_kwargs=small, pretrained=True,
                        preprocessing={**imagenet, "mean": [0.5] * 3, "std": [0.5] * 3})
        ImageClassifier(name, num_classes=3, model_kwargs=small, pretrained=False, preprocessing=imagenet)


def test_a_clip_file_recording_nothing_is_taken_as_trained_with_clips_statistics(tmp_path):
    """A CLIP tower's weights from the hub record no statistics: fine-tuning them on ImageNet's went by without a word
    and `classify` evaluated them with ImageNet's, while every CLIP weights were trained with OpenAI's."""
    import warnings

    import timm
    from safetensors.torch import save_file

    from visattn.errors import VisattnWarning
    from visattn.models.vit import OPENAI_CLIP_EVALUATION

    small = {"depth": 1, "img_size": 32}
    path = tmp_path / "open_clip.safetensors"
    save_file(timm.create_model("vit_base_patch32_clip_224", num_classes=3, **small).state_dict(), path)
    imagenet = {"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with pytest.warns(VisattnWarning, match=r"^the data normalises with mean \[0.485, 0.456, 0.406\], std .* but the "
                                            r"starting weights were trained with mean \[0.4814"):
        ImageClassifier("vit_base_patch32_clip_224", num_classes=3, model_kwargs=small, pretrained=str(path),
                        preprocessing=imagenet)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        ImageClassifier("vit_base_patch32_clip_224", num_classes=3, model_kwargs=small, pretrained=str(path),
                        preprocessing={**imagenet, **OPENAI_CLIP_EVALUATION})
        ImageClassifier("vit_base_patch32_clip_224", num_classes=3, model_kwargs=small, preprocessing=imagenet)
        ImageClassifier("vit_base_patch32_clip_224", num_classes=3, model_kwargs=small, pretrained=False,
                        preprocessing=imagenet)
    loaded = create_model("vit_base_patch32_clip_224", pretrained=str(path), **small)
    assert loaded.visattn_recorded_preprocessing == OPENAI_CLIP_EVALUATION
    assert create_model("vit_base_patch32_clip_224", **small).visattn_recorded_preprocessing is None  # no weights
    assert create_model("vit_base_patch32_clip_224", pretrained=False, **small).visattn_recorded_preprocessing is None


def test_a_visattn_checkpoint_as_starting_weights_is_taken_as_trained_with_what_it_records(tmp_path):
    """A stage-1 training checkpoint of an architecture whose published weights use other statistics (Google's ViT-Ti:
    0.5, bicubic, 0.9) was taken as recording nothing: fine-tuning on the ImageNet statistics it was trained with
    warned to switch to 0.5. Its hyper_parameters are read; a visattn file recording none stays unknown."""
    import warnings

    from visattn.errors import VisattnWarning

    small = {"img_size": 32, "depth": 1}
    recorded = {"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                "recipe": "photo", "crop_pct": 0.875, "interpolation": "bilinear"}
    model = create_model("vit_tiny_patch16_224", num_classes=3, **small)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"model_name": "vit_tiny_patch16_224", "num_classes": 3,
                                                          "preprocessing": recorded}}, path)
    assert create_model("vit_tiny_patch16_224", num_classes=3, pretrained=str(path),
                        **small).visattn_recorded_preprocessing == recorded
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        ImageClassifier("vit_tiny_patch16_224", num_classes=3, model_kwargs=small, pretrained=str(path),
                        preprocessing=recorded)
    with pytest.warns(VisattnWarning, match=r"^the data normalises with mean \[0.5, 0.5, 0.5\], std .* but the "
                                            r"starting weights were trained with mean \[0.485"):
        ImageClassifier("vit_tiny_patch16_224", num_classes=3, model_kwargs=small, pretrained=str(path),
                        preprocessing={**recorded, "mean": [0.5] * 3, "std": [0.5] * 3})
    torch.save({"state_dict": state, "hyper_parameters": {"model_name": "vit_tiny_patch16_224", "num_classes": 3}},
               path)
    assert create_model("vit_tiny_patch16_224", num_classes=3, pretrained=str(path),
                        **small).visattn_recorded_preprocessing is None


def test_fine_tuning_a_timm_local_dir_with_other_normalisation_warns_from_its_config(tmp_path, offline):
    """`pretrained: timm:local-dir:FOLDER` whose config.json records mean and std 0.5 trained on ImageNet's statistics
    without a word: timm's registry knows no such name (from a fine-tuning journey audit)."""
    import json
    import warnings

    import timm
    from timm.models import save_for_hf

    reference = timm.create_model("resnet18", num_classes=3, pretrained_cfg_overlay={"mean": (0.5,) * 3,
                                                                                      "std": (0.5,) * 3})
    save_for_hf(reference, tmp_path / "folder", safe_serialization=True)
    assert json.loads((tmp_path / "folder" / "config.json").read_text())["pretrained_cfg"]["mean"] == [0.5] * 3
    imagenet = {"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    source = f"timm:local-dir:{tmp_path / 'folder'}"
    with pytest.warns(VisattnWarning, match=r"^the data normalises with mean \[0.485, 0.456, 0.406\], std .* but the "
                                            r"starting weights were trained with mean \[0.5, 0.5, 0.5\]"):
        ImageClassifier("resnet18", num_classes=3, pretrained=source, preprocessing=imagenet)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        ImageClassifier("resnet18", num_classes=3, pretrained=source,
                        preprocessing={**imagenet, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.95,
                                       "interpolation": "bicubic"})  # timm's resnet18 records these


def test_fine_tuning_timm_weights_with_another_crop_or_filter_warns(monkeypatch, offline):
    """An image folder's defaults (crop_pct 0.875, bilinear) under timm's augreg ViT (0.9, bicubic) went by
    without a word, though only a mean or std that differed warned."""
    import warnings

    from visattn.errors import VisattnWarning

    monkeypatch.setattr("visattn.inference.classifier.load_weights", lambda *args, **kwargs: None)  # no download
    name, small = "timm:vit_tiny_patch16_224.augreg_in21k", {"depth": 1}
    folder = {"input_size": [3, 224, 224], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.875,
              "interpolation": "bilinear"}
    with pytest.warns(VisattnWarning, match=r"^the data evaluates with crop_pct 0.875, interpolation bilinear but the "
                                            r"starting weights were evaluated with crop_pct 0.9, interpolation bicubic; "
                                            r"set data.init_args.crop_pct and interpolation to the weights' values"):
        ImageClassifier(name, num_classes=3, model_kwargs=small, pretrained=True, preprocessing=folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        ImageClassifier(name, num_classes=3, model_kwargs=small, pretrained=True,
                        preprocessing={**folder, "crop_pct": 0.9, "interpolation": "bicubic"})


def test_a_timm_run_checkpoint_gives_timm_the_preprocessing_the_run_recorded(tmp_path, offline):
    """timm's resolve_data_config(model=...) read the stock vit_tiny cfg (mean 0.5, crop 0.9, bicubic)
    off a loaded timm run, not what the run recorded and visattn's own transform uses."""
    from timm.data import resolve_data_config

    recorded = {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                "crop_pct": 0.875, "interpolation": "bilinear"}
    task = ImageClassifier("timm:vit_tiny_patch16_224", num_classes=3, model_kwargs={"depth": 1}, preprocessing=recorded)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    loaded = load_classifier(checkpoint=str(path))
    assert resolve_data_config(model=loaded.model) == {
        "input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bilinear"}
    assert loaded.model.pretrained_cfg["classifier"] == "head"  # the rest of timm's own cfg stays
    # timm's alias for older code: it had kept timm's ImageNet cfg beside the replaced pretrained_cfg
    assert loaded.model.default_cfg is loaded.model.pretrained_cfg
    shipped = load_classifier("se_resnet20_cifar.fmnist").model
    assert shipped.default_cfg is shipped.pretrained_cfg and shipped.default_cfg["input_size"] == (3, 28, 28)


def test_save_weights_of_a_timm_run_says_to_use_the_checkpoint_and_writes_nothing(tmp_path, capsys):
    """It said "name the file after its architecture", which save-weights names itself."""
    from visattn.cli import main

    task = ImageClassifier("timm:resnet10t", num_classes=3)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    assert main(["save-weights", "--checkpoint", str(path), "--tag", "mine", "--out-dir", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err == (f"visattn: error: --checkpoint {path}: a timm:resnet10t run has no visattn "
                                       "architecture to index its weights under; use the checkpoint itself (classify, "
                                       "evaluate, explain and export take --checkpoint, Python "
                                       "load_classifier(checkpoint=...))\n")
    assert not any((tmp_path / "w").iterdir())


def test_save_weights_of_a_tag_too_long_for_a_file_name_is_one_line_before_measuring(tmp_path, capsys):
    """It was "...safetensors: File name too long", after the --dataset measurement had run."""
    from visattn.cli import main

    task = ImageClassifier("resnet20_cifar", num_classes=3)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    assert main(["save-weights", "--checkpoint", str(path), "--tag", "t" * 240, "--out-dir", str(tmp_path / "w"),
                 "--dataset", "imagefolder:nowhere"]) == 2
    assert capsys.readouterr().err == (f"visattn: error: --tag {'t' * 240}: the file resnet20_cifar.TAG.safetensors "
                                       "would have a name of 267 bytes, and file names take at most 255; give a "
                                       "shorter tag\n")


@pytest.mark.parametrize("pretrained", [None, False])
def test_timm_weights_asked_for_in_model_kwargs_warn_of_other_normalisation_as_the_pretrained_option_does(
        monkeypatch, offline, pretrained):
    """model_kwargs pretrained: true starts from timm's weights as pretrained: true does, but fine-tuning them
    on other statistics than theirs went by without a word."""
    import warnings

    import timm.models._builder

    from visattn.errors import VisattnWarning
    from visattn.inference import classifier

    fetched = []  # what timm would download: the weights the run starts from
    monkeypatch.setattr(timm.models._builder, "load_pretrained",
                        lambda model, pretrained_cfg, **kwargs: fetched.append(pretrained_cfg["hf_hub_id"]))
    monkeypatch.setattr(classifier, "offline_timm_file", lambda name: None)  # as where the hub is reachable
    name, imagenet = "timm:vit_tiny_patch16_224.augreg_in21k", {
        "input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with pytest.warns(VisattnWarning, match=r"^the data normalises with mean \[0.485, 0.456, 0.406\], std .* but the "
                                            r"starting weights were trained with mean \[0.5, 0.5, 0.5\], std \[0.5") as record:
        ImageClassifier(name, num_classes=3, model_kwargs={"depth": 1, "pretrained": True}, pretrained=pretrained,
                        preprocessing=imagenet)
    assert fetched == ["timm/vit_tiny_patch16_224.augreg_in21k"]
    assert len([w for w in record if w.category is VisattnWarning]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        ImageClassifier(name, num_classes=3, model_kwargs={"depth": 1, "pretrained": True}, pretrained=pretrained,
                        preprocessing={**imagenet, "mean": [0.5] * 3, "std": [0.5] * 3})
        ImageClassifier(name, num_classes=3, model_kwargs={"depth": 1, "pretrained": False}, pretrained=pretrained,
                        preprocessing=imagenet)


def test_a_step_checkpoint_holds_the_average_of_its_own_step(tmp_path):
    """Lightning ran the checkpoint callbacks' batch end before the module's, where the average was updated:
    a step checkpoint held the weights of step k and the average of step k - 1."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    task = ImageClassifier("resnet20_cifar", num_classes=3, pretrained=False, ema_decay=0.5, warmup_epochs=0.0)
    data = DataLoader(TensorDataset(torch.randn(16, 3, 16, 16), torch.arange(16) % 3), batch_size=4)
    saved = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, filename="{step}")
    pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[saved]).fit(task, train_dataloaders=data)
    state = torch.load(tmp_path / "step=2.ckpt", weights_only=True)["state_dict"]
    assert int(state["ema.n_averaged"]) == 2
    for name, value in task.ema.module.state_dict().items():
        torch.testing.assert_close(state[f"ema.module.{name}"], value)


def test_validation_loss_is_the_labels_plain_cross_entropy_as_timm_validates_while_training_smooths():
    """A recipe audit: val/loss took the training loss's label smoothing (1.14 where timm's validate read 0.56 on the
    same logits), so it could not be compared with timm's logs and never came near 0."""
    torch.manual_seed(0)
    task = ImageClassifier("resnet20_cifar", num_classes=3, label_smoothing=0.1).eval()
    images, labels = torch.randn(8, 3, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2, 2, 2])
    with torch.no_grad():
        for part in (slice(0, 6), slice(6, 8)):  # batches of unequal size: the mean is over samples
            task._evaluate((images[part], labels[part]), task.val_metrics, task.val_loss)
        logits = task.model(images)
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert float(task.val_loss.compute()) == pytest.approx(float(plain), rel=1e-6)
    assert float(task.criterion(logits, labels)) != pytest.approx(float(plain), rel=1e-5)  # training smooths


def test_an_image_folder_whose_files_all_fail_to_decode_says_so_not_empty(tmp_path, capsys):
    """It said "the evaluation dataset is empty; check --dataset and --split" of a folder of two image files."""
    for name in ("Bag/fake.png", "Trouser/broken.jpg"):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / name).write_bytes(b"not an image")
    dataset = f"imagefolder:{tmp_path / 'photos'}"
    assert main(["evaluate", "--model", "se_resnet20_cifar.fmnist", "--dataset", dataset]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("visattn: error: none of the 2 image files drawn could be "
                                                        "decoded (the warnings name each); replace or remove them")


def test_image_files_beside_the_class_folders_are_named_not_left_out_unsaid(tmp_path):
    """An image left unsorted in the folder's root was in no class and left out: n shrank without a word."""
    from visattn.data.image_folder import ImageFolder

    root = _image_folder(tmp_path / "photos", per_class=2)
    Image.new("RGB", (8, 8)).save(root / "stray.png")
    Image.new("RGB", (8, 8)).save(root / "other.jpg")
    (root / "notes.txt").write_text("not an image")
    (root / "scans.png").mkdir()  # a class folder, whatever its name
    Image.new("RGB", (8, 8)).save(root / "scans.png" / "0.png")
    with pytest.warns(VisattnWarning, match=r"photos: other\.jpg and 1 more image files sit beside the class folders, "
                                            r"in no class, and are not read; move each into its class's folder$"):
        dataset = ImageFolder(root)
    assert len(dataset) == 5 and dataset.classes == ["blue", "red", "scans.png"]


@pytest.mark.parametrize("img_size, fits", [(30, "28 or 32"), (2, "4")])
def test_an_img_size_the_vits_patches_do_not_divide_names_the_option_and_sizes_that_fit(img_size, fits, capsys):
    """It read "img_size=(30, 30) is not divisible by patch_size=(4, 4); change one of them": neither is an option.
    Python's caller reads its argument, the command line its flag (from Python it read --img-size)."""
    from visattn.cli import main
    from visattn.inference.classifier import load_classifier

    reason = rf"vit_tiny_patch4_28\.fmnist takes sides that are multiples of its 4-pixel patches; give {fits}"
    with pytest.raises(ConfigError, match=rf"^img_size={img_size}: {reason}$"):
        load_classifier("vit_tiny_patch4_28.fmnist", img_size=img_size)
    assert main(["evaluate", "--model", "vit_tiny_patch4_28.fmnist", "--dataset", "fashion-mnist", "--device", "cpu",
                 "--img-size", str(img_size)]) == 2
    assert re.fullmatch(rf"visattn: error: --img-size {img_size}: {reason}\n", capsys.readouterr().err)


@pytest.mark.parametrize("name, fits", [("vit_tiny_patch4_28", "28 or 32"), ("timm:vit_tiny_patch16_224", "16 or 32")])
def test_data_a_vit_of_any_size_cannot_split_into_patches_is_refused_at_build_naming_the_key(name, fits):
    """It failed in the first step, after the trainer had set up, with "input is (30, 30), ..." naming no key (timm's
    got a hint to set model_kwargs.img_size, after which it was refused alike); timm's padding patch embedding takes
    any size."""
    data = {"input_size": [3, 30, 30], "mean": [0.5] * 3, "std": [0.5] * 3}
    with pytest.raises(ConfigError, match=rf"^data\.init_args\.img_size=30 but {name} takes sides that are "
                                          rf"multiples of its \d+-pixel patches; set data\.init_args\.img_size to "
                                          rf"{fits}$"):
        ImageClassifier(name, model_kwargs={"depth": 1, "dynamic_img_size": True}, preprocessing=data)
    ImageClassifier("timm:vit_tiny_patch16_224", model_kwargs={"depth": 1, "dynamic_img_size": True,
                                                               "dynamic_img_pad": True}, preprocessing=data)


def test_mean_class_accuracy_averages_the_unrounded_accuracies():
    """Averaged after rounding each to 6 digits, 0, 2/3 and 2/3 gave 0.444445 where their mean is 0.4444444."""
    from visattn.inference.classifier_scoring import class_accuracies

    scores = class_accuracies(torch.tensor([[0, 1, 0], [0, 2, 1], [1, 0, 2]]), ["a", "b", "c"])
    assert scores["mean_class_accuracy"] == 0.444444
    assert [c["accuracy"] for c in scores["per_class"].values()] == [0.0, 0.666667, 0.666667]


# ------------------------------------------------- what the steps compute (from a mutation review of the tasks)


def _mutation_review_batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 28, 28, generator=generator), torch.arange(n) % 10


def test_forward_validation_and_predict_use_the_weight_average():
    """forward on the trained weights passed every test: validation, test and predict would not score the average
    the checkpoints keep."""
    torch.manual_seed(0)
    task = ImageClassifier("resnet20_cifar", num_classes=10, ema_decay=0.5)
    task.ema.update_parameters(task.model)  # the first update copies
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(0.5)  # the trained weights now differ from the average
    task.eval()
    images, _ = _mutation_review_batch()
    with torch.no_grad():
        averaged, trained, got = task.ema.module(images), task.model(images), task(images)
    assert not torch.allclose(averaged, trained)
    torch.testing.assert_close(got, averaged)


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_the_training_loss_is_that_of_timm_style_mixed_images_and_soft_labels(mixup, cutmix):
    """The mix never applied, MixUp built as CutMix and both applied to every batch had each passed (the only test
    asked for a finite loss); with both, each batch takes one, as timm's mixup_switch_prob."""
    from torch.nn import functional as F
    from torchvision.transforms import v2

    task = ImageClassifier("resnet20_cifar", num_classes=10, mixup_alpha=mixup, cutmix_alpha=cutmix,
                           label_smoothing=0.1)
    images, targets = _mutation_review_batch(8)
    mixes = ([v2.MixUp(alpha=mixup, num_classes=10)] if mixup else []) + (
        [v2.CutMix(alpha=cutmix, num_classes=10)] if cutmix else [])
    torch.manual_seed(123)
    mixed, soft = v2.RandomChoice(mixes)(images, targets)
    assert soft.shape == (8, 10)
    state = {k: v.clone() for k, v in task.model.state_dict().items()}
    expected = F.cross_entropy(task.model(mixed).float(), soft, label_smoothing=0.1)
    task.model.load_state_dict(state)  # the forward above moved batch norm's running statistics
    torch.manual_seed(123)
    torch.testing.assert_close(task.training_step((images, targets), 0), expected)


def test_predict_step_gives_probabilities_of_the_forward_logits():
    """`visattn predict` writes these as "prob": logits had passed."""
    task = ImageClassifier("resnet20_cifar", num_classes=10).eval()
    images, _ = _mutation_review_batch()
    with torch.no_grad():
        probs, logits = task.predict_step(images, 0), task(images)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(images)))
    torch.testing.assert_close(probs, logits.softmax(dim=-1))


def test_validation_scores_the_validation_batches_into_the_validation_metrics():
    """Validation updating the test metrics had passed: val/top1 would be computed from metrics never updated."""
    task = ImageClassifier("resnet20_cifar", num_classes=10).eval()
    images, targets = _mutation_review_batch(20)
    with torch.no_grad():
        task.validation_step((images, targets), 0)
        hand = (task(images).argmax(dim=1) == targets).float().mean()
    assert task.test_metrics["top1"].update_count == 0
    torch.testing.assert_close(task.val_metrics.compute()["val/top1"], hand)


@pytest.mark.parametrize("name, kwargs", [("sat_vit_small_patch16_224", dict(vocab_size=20, encoder_pretrained=False)),
                                          ("detr_vit_small_patch16_224", dict(num_classes=3))])
def test_a_nested_vits_position_embedding_and_class_token_are_not_decayed(name, kwargs):
    """The outer model lists no no_weight_decay(): only the name check keeps them out, and dropping it passed."""
    model = create_model(name, pretrained=False, **kwargs)
    nested = {n: p for n, p in model.named_parameters() if n.endswith(("pos_embed", "cls_token"))}
    assert len(nested) == 2 and all(p.ndim == 3 for p in nested.values())
    assert set(nested) <= _undecayed(model, weight_decay_groups(model, 0.05)), sorted(nested)


# ------------------------------------------------- freeze_backbone: linear probing and a fine-tune's first stage


def _probe_fit(task: ImageClassifier, tmp_path: Path, steps: int, ckpt_path: Path | None = None) -> pl.Trainer:
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(8, 3, 28, 28, generator=generator), torch.arange(8) % 3), batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(task, data, ckpt_path=ckpt_path)
    return trainer


def _head_and_rest(task: ImageClassifier, head: str) -> tuple[dict, dict]:
    state = {name: value.clone() for name, value in task.model.state_dict().items()}
    inside = {name: value for name, value in state.items() if name.startswith(f"{head}.")}
    return inside, {name: value for name, value in state.items() if name not in inside}


@pytest.mark.parametrize("name, head", [("resnet20_cifar", "fc"), ("vit_tiny_patch4_28", "head")])
def test_freeze_backbone_trains_the_head_alone_and_keeps_batch_norm_statistics(tmp_path, name, head):
    """Linear probing: every parameter and batch-norm statistic outside the head bitwise unchanged after two steps
    (the EMA copy's too), the head trained, the optimizer holding the head alone; a caller's train() (a notebook's)
    leaves the frozen part in eval mode, whose batch norms had taken each batch's statistics, without Lightning's
    warning of modules in eval mode."""
    torch.manual_seed(0)
    task = ImageClassifier(name, num_classes=3, model_kwargs={"depth": 2} if "vit" in name else {}, pretrained=False,
                           ema_decay=0.5, warmup_epochs=0.0, lr=0.1, freeze_backbone=True).train()
    head_before, rest_before = _head_and_rest(task, head)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _probe_fit(task, tmp_path, steps=2)
    assert not [w for w in caught if "in eval mode at the start of training" in str(w.message)]  # as meant
    head_after, rest_after = _head_and_rest(task, head)
    assert rest_after.keys() == rest_before.keys() and any("running_mean" in key for key in rest_after) == (
        name == "resnet20_cifar")
    assert all(torch.equal(rest_after[key], value) for key, value in rest_before.items())
    assert not any(torch.equal(head_after[key], value) for key, value in head_before.items())
    averaged = {key: value for key, value in task.ema.module.state_dict().items() if key in rest_before}
    assert all(torch.equal(averaged[key], value) for key, value in rest_before.items())
    grouped = [id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in task.model.get_submodule(head).parameters())


def test_a_probes_frozen_features_are_those_inference_computes():
    """Drop path and dropout outside the head would make a probe's features differ from batch to batch."""
    task = ImageClassifier("vit_tiny_patch4_28", num_classes=3, pretrained=False, freeze_backbone=True,
                           model_kwargs={"depth": 2, "drop_path_rate": 0.5, "proj_drop_rate": 0.5, "drop_rate": 0.5})
    images = torch.randn(2, 3, 28, 28)
    task.train()
    with torch.no_grad():
        probed = [task.model.forward_head(task.model.forward_features(images), pre_logits=True) for _ in range(2)]
        torch.testing.assert_close(probed[0], probed[1], rtol=0, atol=0)
        task.eval()
        torch.testing.assert_close(task.model.forward_head(task.model.forward_features(images), pre_logits=True),
                                   probed[0])
    assert task.model.head.training is False and task.train().model.head.training


def test_freeze_backbone_of_a_distilled_timm_deit_trains_both_heads():
    from visattn.tasks.optimization import task_parameter_groups

    task = ImageClassifier("timm:deit_tiny_distilled_patch16_224", num_classes=3, model_kwargs={"depth": 1},
                           freeze_backbone=True)
    names = {id(p): n for n, p in task.model.named_parameters()}
    groups = {group["name"]: sorted(names[id(p)] for p in group["params"]) for group in task_parameter_groups(task)}
    assert groups == {"decay": ["head.weight", "head_dist.weight"], "no_decay": ["head.bias", "head_dist.bias"]}


def test_a_resumed_probe_stays_frozen_and_another_freeze_backbone_is_one_line(tmp_path):
    def task(freeze: bool) -> ImageClassifier:
        torch.manual_seed(0)
        return ImageClassifier("resnet20_cifar", num_classes=3, pretrained=False, freeze_backbone=freeze)

    probe = task(True)
    _, start = _head_and_rest(probe, "fc")
    _probe_fit(probe, tmp_path, steps=2).save_checkpoint(tmp_path / "probe.ckpt")
    resumed = task(True)
    assert _probe_fit(resumed, tmp_path, steps=4, ckpt_path=tmp_path / "probe.ckpt").global_step == 4
    _, rest = _head_and_rest(resumed, "fc")
    assert all(torch.equal(rest[key], value) for key, value in start.items())
    with pytest.raises(ConfigError, match=r"^--ckpt_path .*probe\.ckpt: its run trained the head alone "
                                          r"\(freeze_backbone true\); resume with model\.init_args\.freeze_backbone "
                                          r"true, or start a new run from its weights with "
                                          r"--model\.init_args\.pretrained .*probe\.ckpt$"):
        _probe_fit(task(False), tmp_path, steps=4, ckpt_path=tmp_path / "probe.ckpt")
    _probe_fit(task(False), tmp_path, steps=2).save_checkpoint(tmp_path / "full.ckpt")
    with pytest.raises(ConfigError, match=r"its run trained every layer \(freeze_backbone false\); resume with "
                                          r"model\.init_args\.freeze_backbone false"):
        _probe_fit(task(True), tmp_path, steps=4, ckpt_path=tmp_path / "full.ckpt")


def test_settings_a_frozen_backbone_voids_and_a_model_naming_no_head_are_one_line(monkeypatch):
    with pytest.raises(ConfigError, match=r"^model\.init_args\.layer_decay=0\.75 with freeze_backbone: only the head "
                                          r"trains, so there are no lower layers to slow down; drop layer_decay, or "
                                          r"set freeze_backbone false$"):
        ImageClassifier("resnet20_cifar", num_classes=3, layer_decay=0.75, freeze_backbone=True)
    with pytest.raises(ConfigError, match=r"^model\.init_args\.grad_checkpointing with freeze_backbone: a frozen "
                                          r"backbone keeps no activations for the backward pass"):
        ImageClassifier("resnet20_cifar", num_classes=3, grad_checkpointing=True, freeze_backbone=True)
    from visattn.models.resnet import ResNet

    monkeypatch.setattr(ResNet, "classifier", None)  # a user's registered model that names no head
    with pytest.raises(ConfigError, match=r"^model\.init_args\.freeze_backbone: resnet20_cifar names no classifier "
                                          r"head to train alone \(a visattn model's classifier attribute, a timm "
                                          r"model's pretrained_cfg\['classifier'\]\); set freeze_backbone false, or "
                                          r"give a model that names its head$"):
        ImageClassifier("resnet20_cifar", num_classes=3, freeze_backbone=True)


def test_a_probe_from_the_cli_keeps_the_shipped_backbone_resumes_frozen_and_loads_for_inference(in_tmp, capsys,
                                                                                                monkeypatch):
    shipped = create_model("vit_tiny_patch4_28.fmnist").state_dict()
    probe = ["--model.init_args.model_name", "vit_tiny_patch4_28.fmnist", "--model.init_args.freeze_backbone", "true",
             "--model.init_args.compile", "false", "--data.init_args.limit", "32"]

    def trained(ckpt: Path) -> list[str]:
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert state.keys() >= {f"model.{key}" for key in shipped}
        return sorted(key for key, value in shipped.items() if not torch.equal(state[f"model.{key}"], value))

    ckpt = _fit(in_tmp, "--trainer.max_steps", "2", *probe, config=VIT_CONFIG)
    assert trained(ckpt) == ["head.bias", "head.weight"]
    assert main(["fit", "--config", str(VIT_CONFIG), *QUICK, "--trainer.max_steps", "4", "--ckpt_path", "last",
                 *probe]) == 0
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4 and trained(ckpt) == ["head.bias", "head.weight"]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "fashion-mnist", "--limit", "50", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 50
    weights = in_tmp / "weights"
    monkeypatch.setenv("VISATTN_WEIGHTS", str(weights))
    assert main(["save-weights", "--checkpoint", str(ckpt), "--tag", "probe", "--out-dir", str(weights)]) == 0
    images = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(load_classifier("vit_tiny_patch4_28.probe").predict(images),
                               load_classifier(checkpoint=str(ckpt)).predict(images))
