"""Config and CLI mistakes: each is one line naming the thing and the fix, exit code 2, no traceback."""
import ast
import contextlib
import importlib.util
import json
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from test_classification import CBAM_CONFIG, QUICK, REPO
from test_data import needs_fashion_mnist
from test_export import _checkpoint as write_classifier_checkpoint
from test_pretrained import _CreatesFile
from test_reliability_inputs import write_captioner_checkpoint, write_detector_checkpoint
from visattn import create_model
from visattn.cli import main
from visattn.data.transforms import to_tensor
from visattn.errors import ConfigError
from visattn.tasks.classification import ImageClassifier

IMAGEFOLDER_CONFIG = REPO / "configs" / "classification" / "imagefolder_template.yaml"
FIT = ["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_epochs", "1"]


def _scenes_run(subcommand: str) -> list[str]:
    return [subcommand, "--config", str(REPO / "configs" / "detection" / "fcos_scenes.yaml"), "--trainer.fast_dev_run",
            "true", "--data.init_args.num_workers", "0", "--data.init_args.num_train", "16", "--data.init_args.num_val",
            "8", "--data.init_args.num_test", "8", "--model.init_args.model_name", "fcos_se_resnet20_cifar.scenes"]


def _config_with(tmp_path: Path, **init_args) -> str:
    """The CBAM config with ``init_args`` of its model section replaced or added."""
    config = yaml.safe_load(CBAM_CONFIG.read_text())
    config["model"]["init_args"].update(init_args)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _cbam_checkpoint_as_last(tmp_path: Path) -> str:
    """A cbam_resnet20_cifar training checkpoint where `--ckpt_path last` finds it (with the training state a resumed
    fit needs, as a run's last.ckpt holds it)."""
    task = ImageClassifier("cbam_resnet20_cifar", num_classes=10)
    folder = tmp_path / "outputs" / CBAM_CONFIG.stem / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), "global_step": 0,
                "optimizer_states": []}, folder / "last.ckpt")
    return "last"


def _vit_weights(tmp_path: Path) -> str:
    path = tmp_path / "vit.safetensors"
    save_file(create_model("vit_tiny_patch4_28", depth=1).state_dict(), path)
    return str(path)


def _edited_checkpoint(tmp_path: Path, *, model_name: str = "cbam_resnet20_cifar", drop: str = "") -> str:
    """A classifier checkpoint recording ``model_name``, without the weight ``drop``."""
    path = write_classifier_checkpoint(tmp_path / "edited.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["model_name"] = model_name
    checkpoint["state_dict"].pop(drop, None)
    torch.save(checkpoint, path)
    return str(path)


def _split_folders(tmp_path: Path, *splits: str) -> Path:
    for split in splits:
        (tmp_path / "shapes" / split / "circle").mkdir(parents=True)
    return tmp_path / "shapes"


def _checkpoint_without_a_model_name(tmp_path: Path, *, captioner: bool = False) -> str:
    write = write_captioner_checkpoint if captioner else write_classifier_checkpoint
    path = write(tmp_path / "unnamed.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["hyper_parameters"]["model_name"]
    torch.save(checkpoint, path)
    return str(path)


def _written(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


TWICE = "model:\n  init_args:\n    lr: 0.1\nmodel:\n  init_args:\n    lr: 1\n"  # model: at lines 1 and 4
DATA_TWICE = ("class_path: visattn.data.FashionMNISTDataModule\ninit_args:\n  batch_size: 16\n  limit: 64\n"
              "  batch_size: 32\n")


def _config_naming_a_data_file(tmp_path: Path) -> str:
    """A config whose data section is the file d.yaml beside it, which gives batch_size twice."""
    _written(tmp_path, "d.yaml", DATA_TWICE)
    return _written(tmp_path, "c.yaml", "data: d.yaml\n")


def _fifo(tmp_path: Path) -> str:
    """A pipe no process writes to, which a read would wait on for ever."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("FIFOs are POSIX")
    os.mkfifo(tmp_path / "config.fifo")
    return str(tmp_path / "config.fifo")


def _weights_named_ckpt(tmp_path: Path) -> str:
    path = tmp_path / "weights.ckpt"
    save_file(create_model("vit_tiny_patch4_28", depth=1).state_dict(), path)
    return str(path)


def _broken_link(tmp_path: Path) -> str:
    (tmp_path / "photo.png").symlink_to(tmp_path / "moved" / "photo.png")
    return str(tmp_path / "photo.png")


CASES = {
    "unknown_cli_key": (lambda tmp: [*FIT, "--trainer.no_such_key", "1"], "no_such_key"),
    "unknown_config_key": (lambda tmp: ["fit", "--config", _config_with(tmp, learning_rate=0.1)], "learning_rate"),
    # the nearest argument of the class, and where its arguments are listed (`fit --help` lists the task's only)
    "misspelt_data_option": (lambda tmp: [*FIT, "--data.init_args.val_fractoin", "0.2"],
                             "Option 'val_fractoin' is not accepted; did you mean val_fraction? `visattn fit "
                             "--data.help visattn.data.FashionMNISTDataModule` lists what it takes"),
    # it had pointed to --model.help, which refuses a callback class
    "misspelt_callback_option": (lambda tmp: [*FIT, "--trainer.callbacks.dirpath", "x"],
                                 "`visattn fit --trainer.callbacks.help lightning.pytorch.callbacks.LearningRateMonitor` "
                                 "lists what it takes"),
    "wrong_type_in_config": (lambda tmp: ["fit", "--config", _config_with(tmp, lr="fast")],
                             "model.init_args.lr fast in the config: give a number"),
    "wrong_type_on_cli": (lambda tmp: ["evaluate", "--model", "m", "--dataset", "fashion-mnist", "--img-size", "two"],
                          "--img-size: invalid int"),
    "zero_batch_size": (lambda tmp: ["caption", "x.png", "--model", "m", "--batch-size", "0"],
                        "--batch-size: '0' is not a positive whole number"),
    "zero_max_len": (lambda tmp: ["caption", "x.png", "--model", "m", "--max-len", "0"],
                     "--max-len: '0' is not a positive whole number"),
    "device_this_machine_lacks": (lambda tmp: ["classify", "x.png", "--model", "se_resnet20_cifar", "--device", "cuda:64"],
                                  "--device cuda:64: this machine has"),
    "misspelt_device": (lambda tmp: ["detect", "x.png", "--model", "m", "--device", "gpu"], "--device gpu: not a device"),
    "folder_without_images": (lambda tmp: ["caption", str(tmp), "--model", "sat_cbam_resnet_scenes.scenes"],
                              "no image files found in"),
    "negative_topk": (lambda tmp: ["classify", "x.png", "--model", "m", "--topk", "-3"],
                      "--topk: '-3' is not a positive whole number"),
    "negative_num_workers": (lambda tmp: ["evaluate", "--model", "m", "--dataset", "fashion-mnist", "--num-workers", "-1"],
                             "--num-workers: '-1' is not a non-negative whole number"),
    "too_many_workers_in_config": (lambda tmp: [*FIT, "--data.init_args.num_workers", str(4 * (os.cpu_count() or 1) + 1)],
                                   f"data.init_args.num_workers={4 * (os.cpu_count() or 1) + 1}: give 0 (load in the "
                                   f"main process) to {4 * (os.cpu_count() or 1)} (4 per CPU; more only compete"),
    "negative_workers_in_config": (lambda tmp: [*FIT, "--data.init_args.num_workers", "-1"],
                                   "data.init_args.num_workers=-1: give 0 (load in the main process) to"),
    # YAML's .nan passes a `clip < 0` check, and Lightning then blamed another setting
    "nan_gradient_clip_val_in_config": (lambda tmp: [*FIT, "--config", _written(tmp, "nan.yaml",
                                                                                "trainer:\n  gradient_clip_val: .nan\n")],
                                        "trainer.gradient_clip_val=nan: give the positive norm to clip gradients to"),
    "clip_algorithm_without_a_value": (lambda tmp: [*FIT, "--trainer.gradient_clip_algorithm", "value"],
                                       "trainer.gradient_clip_algorithm value without trainer.gradient_clip_val clips "
                                       "nothing; give the value (or norm) to clip to"),
    # from a trainer-options audit: SWA reset the EMA copy's batch norms and left them so (val/top1 0.57 -> 0.17)
    "swa_with_ema": (lambda tmp: [*FIT, "--model.init_args.ema_decay", "0.9", "--trainer.callbacks+=StochasticWeightAveraging",
                                  "--trainer.callbacks.swa_lrs", "0.001"],
                     "trainer.callbacks StochasticWeightAveraging with model.init_args.ema_decay: both average"),
    "backbone_finetuning_without_a_backbone": (lambda tmp: [*FIT, "--trainer.callbacks+=BackboneFinetuning"],
                                               "trainer.callbacks BackboneFinetuning: it unfreezes the task's backbone "
                                               "attribute, and ImageClassifier has none; train the early layers slower "
                                               "with model.init_args.layer_decay instead"),
    # from a Lightning user's audit: {0: 2} ended a run at the peak learning rate, the cosine never run
    "gradient_accumulation_scheduler": (lambda tmp: [*FIT, "--trainer.callbacks+=GradientAccumulationScheduler",
                                                     "--trainer.callbacks.scheduling={0: 2}"],
                                        "trainer.callbacks GradientAccumulationScheduler: the warm-up and cosine "
                                        "learning-rate schedule is planned at the start for one accumulation"),
    "last_epoch_never_validated": (lambda tmp: [*FIT, "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "2"],
                                   "trainer.check_val_every_n_epoch 2 with trainer.max_epochs 3: the last 1 epoch(s) "
                                   "would be neither validated nor checkpointed"),
    # Lightning's own words name the trainer part to fix; the line had sent users to the model and data sections
    "barebones_with_the_configs_logger": (lambda tmp: [*FIT, "--trainer.barebones", "true"],
                                          "barebones mode.; check the trainer.logger section"),
    # one of a list of callbacks or loggers: jsonargparse's union listed every form, the bad one's complaint among them
    "wrong_type_for_an_added_callback": (lambda tmp: [*FIT, "--trainer.callbacks+=ModelCheckpoint",
                                                      "--trainer.callbacks.save_top_k", "many"],
                                         "--trainer.callbacks.save_top_k many: give a whole number"),
    # jsonargparse's "Expected a <class 'bool'> Expected a <class 'int'>", blamed on the --config
    "seed_that_is_no_number": (lambda tmp: [*FIT, "--seed_everything", "abc"],
                               "--seed_everything abc: give true or false, or a whole number"),
    # Lightning's Timer named itself, not trainer.max_time; a duration of 0 or less trained nothing, exit 0
    "max_time_of_no_duration": (lambda tmp: [*FIT, "--trainer.max_time", "1:30"],
                                "trainer.max_time 1:30: give how long to train as DD:HH:MM:SS"),
    "max_time_of_nothing": (lambda tmp: [*FIT, "--trainer.max_time", "00:00:00:00"],
                            "trainer.max_time 00:00:00:00: give how long to train"),
    "max_time_below_nothing": (lambda tmp: [*FIT, "--trainer.max_time", '{"minutes": -1}'],
                               "trainer.max_time {'minutes': -1}: give how long to train"),
    "validation_interval_of_nothing": (lambda tmp: [*FIT, "--trainer.val_check_interval", "0"],  # ZeroDivisionError
                                       "trainer.val_check_interval 0: give the training batches between validations"),
    "precision_of_no_kind": (lambda tmp: [*FIT, "--trainer.precision", "8"],
                             "--trainer.precision 8: give one of 64, 32, 16, transformer-engine"),
    "misspelt_strategy": (lambda tmp: [*FIT, "--trainer.strategy", "dpp"],
                          "trainer.strategy dpp: no strategy of that name; did you mean ddp?"),
    # the builder's refusal named the bare key, which the config holds under model_kwargs
    "model_kwarg_the_builder_refuses": (lambda tmp: [*FIT, "--model.init_args.model_kwargs", "{drop_path_rate: 2.0}"],
                                        "model.init_args.model_kwargs.drop_path_rate=2.0: give a drop probability"),
    "added_logger_without_its_required_setting": (lambda tmp: [*FIT, "--trainer.logger+=TensorBoardLogger"],
                                                  '"trainer.logger": TensorBoardLogger: the following arguments are '
                                                  "required: save_dir; see"),
    # from a journey audit: Lightning's default mode min kept the epoch of mAP 0, and stopped a run whose CIDEr rose
    "early_stopping_on_accuracy_without_mode_max": (lambda tmp: [*FIT, "--trainer.callbacks+=EarlyStopping",
                                                                 "--trainer.callbacks.monitor", "val/top1"],
                                                    "trainer.callbacks: EarlyStopping(monitor='val/top1', mode='min') "
                                                    "stops the run while it improves: val/top1 is better higher; set "
                                                    "its mode to max"),
    "two_early_stoppings_of_the_same_settings": (lambda tmp: [*FIT, *["--trainer.callbacks+=EarlyStopping",
                                                                      "--trainer.callbacks.monitor", "val/loss"] * 2],
                                                 "trainer.callbacks: two EarlyStoppings of the same settings "
                                                 "(EarlyStopping{'monitor': 'val/loss', 'mode': 'min'}) keep one saved "
                                                 "state between them; drop one"),
    "added_checkpoint_writing_the_configs_files": (lambda tmp: [*FIT, "--trainer.callbacks+=ModelCheckpoint",
                                                                "--trainer.callbacks.dirpath",
                                                                "outputs/cbam_resnet_fmnist/checkpoints",
                                                                "--trainer.callbacks.filename", "latest-{epoch:03d}"],
                                                   "write the same files into "),
    "misspelt_callback_class": (lambda tmp: [*FIT, "--trainer.callbacks+=ModelChekpoint"],
                                "trainer.callbacks: no callback class named ModelChekpoint; did you mean "
                                "ModelCheckpoint? give one of lightning.pytorch.callbacks's classes by name"),
    "misspelt_logger_class": (lambda tmp: [*FIT, "--trainer.logger+=CSVLoger"],
                              "trainer.logger: no logger class named CSVLoger; did you mean CSVLogger?"),
    "seed_out_of_bounds": (lambda tmp: [*FIT, "--seed_everything", "99999999999"],
                           "seed_everything=99999999999: give a whole number from 0 to 4294967295"),
    "unreadable_auto_augment_in_config": (lambda tmp: [*FIT, "--data.init_args.auto_augment", "rand-x9"],
                                          "data.init_args.auto_augment='rand-x9': timm cannot read it"),
    "crop_scale_for_the_small_recipe": (lambda tmp: [*FIT, "--data.init_args.scale", "[0.08, 1.0]"],
                                        "data.init_args.scale: the 'small' recipe pads and crops at full size"),
    # a recipe audit: "norm" was said of value clipping too
    "negative_gradient_clip_value": (lambda tmp: [*FIT, "--trainer.gradient_clip_val", "-1",
                                                  "--trainer.gradient_clip_algorithm", "value"],
                                     "trainer.gradient_clip_val=-1: give the positive value to clip gradients to"),
    "negative_gradient_clip_val": (lambda tmp: [*FIT, "--trainer.gradient_clip_val", "-1"],
                                   "trainer.gradient_clip_val=-1: give the positive norm to clip gradients to, "
                                   "or 0 for no clipping"),
    "split_for_a_coco_dataset": (lambda tmp: ["evaluate", "--model", DETECTOR, "--dataset", "coco:val.json:images",
                                              "--split", "banana"],
                                 "--split banana: a coco: dataset is scored on the annotations file it names; drop "
                                 "--split and name the split's file instead"),
    # Path("") is the working folder: its files of matching names were scored, exit 0
    "coco_without_images_folder": (lambda tmp: ["evaluate", "--model", DETECTOR, "--dataset", "coco:val.json:"],
                                   "--dataset coco:val.json:: name the annotations file and the images folder, e.g. "
                                   "coco:annotations/captions_val2014.json:val2014"),
    "missing_data_path": (lambda tmp: ["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "/nope"],
                          "/nope: no such folder"),
    "unknown_model_in_config": (lambda tmp: [*FIT, "--model.init_args.model_name", "cbam_resnt20_cifar"],
                                "did you mean cbam_resnet20_cifar"),
    "unknown_model_on_cli": (lambda tmp: ["classify", "x.png", "--model", "cbam_resnt18", "--json"],
                             "did you mean cbam_resnet18"),
    "checkpoint_of_another_task": (lambda tmp: ["classify", "x.png", "--checkpoint",
                                                str(write_captioner_checkpoint(tmp / "captioner.ckpt"))],
                                   "sat_cbam_resnet_scenes is a captioner, not a classifier; use `visattn caption`"),
    "explain_a_detector_checkpoint": (lambda tmp: ["explain", "x.png", "--checkpoint",
                                                   str(write_detector_checkpoint(tmp / "fcos.ckpt")), "--out", "x.png"],
                                      "fcos_resnet20_cifar is a detector, not a classifier; use `visattn detect`"),
    "caption_with_a_detector_checkpoint": (lambda tmp: ["caption", "x.png", "--checkpoint",
                                                        str(write_detector_checkpoint(tmp / "fcos.ckpt"))],
                                           "is a detector, not a captioner"),
    "detect_with_a_captioner_checkpoint": (lambda tmp: ["detect", "x.png", "--checkpoint",
                                                        str(write_captioner_checkpoint(tmp / "sat.ckpt"))],
                                           "is a captioner, not a detector; use `visattn caption`"),
    "explain_shipped_detector": (lambda tmp: ["explain", "x.png", "--model", "fcos_se_resnet20_cifar.scenes",
                                              "--out", "x.png"], "is a detector, not a classifier"),
    "export_shipped_captioner": (lambda tmp: ["export", "--model", "sat_cbam_resnet_scenes.scenes", "--out", "s.onnx"],
                                 "sat_cbam_resnet_scenes.scenes is a captioner, not a classifier"),
    "caption_with_a_classifier": (lambda tmp: ["caption", "x.png", "--model", "se_resnet20_cifar"],
                                  "se_resnet20_cifar is a classifier, not a captioner; use `visattn classify`"),
    "detect_with_a_captioner": (lambda tmp: ["detect", "x.png", "--model", "sat_cbam_resnet_scenes"],
                                "is a captioner, not a detector"),
    "resume_from_another_architecture": (lambda tmp: [*FIT, "--model.init_args.model_name", "vit_tiny_patch4_28",
                                                      "--ckpt_path", _cbam_checkpoint_as_last(tmp)],
                                         "weights do not fit ImageClassifier"),
    "pretrained_of_another_architecture": (lambda tmp: [*FIT, "--model.init_args.pretrained", _vit_weights(tmp)],
                                           "vit.safetensors: weights do not fit"),
    "run_bounded_only_by_time": (lambda tmp: [*FIT, "--trainer.max_epochs", "-1", "--trainer.max_time", "00:00:00:20"],
                                 "trainer.max_epochs -1 and trainer.max_steps -1 set no length for the run"),
    "ema_decay_of_one": (lambda tmp: [*FIT, "--model.init_args.ema_decay", "1.0"],
                         "model.init_args.ema_decay=1.0: give a decay of at least 0 and below 1"),
    # from a CLI audit: each of these named the wrong thing, or nothing a user could act on
    "config_is_a_folder": (lambda tmp: ["fit", "--config", str(REPO / "configs" / "detection")],
                           "--config " + str(REPO / "configs" / "detection") + ": a folder (it holds coco_template.yaml, "
                           "detr_scenes.yaml, detr_scenes_stage2.yaml, ...); give a config file, or a shipped config's "
                           "name (`visattn configs` lists them)"),
    "empty_config": (lambda tmp: ["fit", "--config", _written(tmp, "empty.yaml", "# nothing yet\n")],
                     "empty.yaml is empty; a config maps model:, data: and trainer: to their settings"),
    # from a config audit: a YAML error in a second config was reported under the first one's name, and no line
    "second_config_not_yaml": (lambda tmp: [*FIT, "--config", _written(tmp, "bad.yaml", "model:\n  init_args:\n    lr: [1,\n")],
                               "bad.yaml: not valid YAML (expected the node content, but found '<stream end>' at "
                               "line 4, column 1); mend the file"),
    "config_of_a_list": (lambda tmp: ["validate", "--config", _written(tmp, "list.yaml", "- model\n")],
                         "list.yaml holds a YAML list, not settings"),
    # from a CLI fuzz audit: each of these trained something else than the config says, or hung
    "config_key_given_twice": (lambda tmp: [*FIT, "--config", _written(tmp, "twice.yaml", TWICE)],
                               "twice.yaml: not valid YAML (key 'model' given twice, first at line 1, again at line 4, "
                               "column 1); mend the file"),
    # jsonargparse kept the second max_epochs of a file given to --trainer (or --data, --model), the first dropped
    "trainer_file_key_given_twice": (lambda tmp: [*FIT, "--trainer", _written(tmp, "t.yaml", "max_epochs: 1\n"
                                                                                            "max_epochs: 9\n")],
                                     "t.yaml: not valid YAML (key 'max_epochs' given twice, first at line 1, "
                                     "again at line 2, column 1); mend the file"),
    "data_file_key_given_twice": (lambda tmp: [*FIT, "--data=" + _written(tmp, "d.yaml", "init_args:\n  batch_size: 8\n"
                                                                                       "  batch_size: 4\n")],
                                  "d.yaml: not valid YAML (key 'batch_size' given twice"),
    "data_given_a_list_in_a_second_config": (lambda tmp: [*FIT, "--config", _written(tmp, "second.yaml",
                                                                                      "data:\n  - 1\n")],
                                             "second.yaml: data: holds a YAML list, not settings; give it a "
                                             "class_path"),
    # a review: a file a config names as its data section kept the second batch_size, as --data FILE had
    "config_data_file_key_given_twice": (lambda tmp: [*FIT, "--config", _config_naming_a_data_file(tmp)],
                                         "d.yaml: not valid YAML (key 'batch_size' given twice"),
    "model_file_key_given_twice": (lambda tmp: [*FIT, "--model", _written(tmp, "m.yaml", "init_args:\n  lr: 0.1\n"
                                                                                        "  lr: 0.2\n")],
                                   "m.yaml: not valid YAML (key 'lr' given twice"),
    # a path from the home folder is no working folder's (a review)
    "fashion_mnist_root_in_home_not_there": (lambda tmp: [*FIT, "--data.init_args.root", "~/no_visattn_data"],
                                             "data.init_args.root=~/no_visattn_data: no such folder; give"),
    "trainer_given_a_list": (lambda tmp: [*FIT, "--config", _written(tmp, "trainer.yaml", "trainer:\n  - 1\n")],
                             "trainer.yaml: trainer: holds a YAML list, not settings; give it its settings"),
    "config_that_is_a_pipe": (lambda tmp: ["fit", "--config", _fifo(tmp)],
                              "config.fifo: not a regular file (a pipe, socket or device), which LightningCLI cannot "
                              "read after visattn; save the config to a file and give its path"),
    "imagefolder_dataset_that_is_a_file": (lambda tmp: ["evaluate", "--model", "se_resnet20_cifar.fmnist", "--dataset",
                                                        f"imagefolder:{_written(tmp, 'labels.txt', 'cat')}"],
                                           "labels.txt: a file, not a folder (expected root/<class name>/<image file>)"),
    "unknown_architecture_of_a_tagged_name": (lambda tmp: ["classify", "x.png", "--model", "a.b.c"],
                                              "unknown model 'a' (the architecture of 'a.b.c')"),
    "checkpoint_of_an_unknown_architecture": (lambda tmp: ["classify", "x.png", "--checkpoint",
                                                           _edited_checkpoint(tmp, model_name="cbam_resnt20")],
                                              "edited.ckpt: hyper_parameters.model_name: unknown model 'cbam_resnt20'"),
    "checkpoint_missing_a_weight": (lambda tmp: ["classify", "x.png", "--checkpoint",
                                                 _edited_checkpoint(tmp, drop="model.conv1.weight")],
                                    "edited.ckpt: weights do not fit ResNet (missing: conv1.weight); the file was "
                                    "edited or damaged: use the checkpoint as training wrote it"),
    "safetensors_named_ckpt": (lambda tmp: ["classify", "x.png", "--checkpoint", _weights_named_ckpt(tmp)],
                               "weights.ckpt: a safetensors file, not a pickled checkpoint; rename it to .safetensors"),
    "ckpt_path_given_weights": (lambda tmp: [*FIT, "--ckpt_path", _weights_named_ckpt(tmp)],
                                "--ckpt_path take the .ckpt files `visattn fit` writes"),
    "zero_img_size_in_config": (lambda tmp: [*FIT, "--data.init_args.img_size", "0"],
                                "img_size=0: give the side of the model's square input in pixels"),
    "save_weights_limit_without_dataset": (lambda tmp: ["save-weights", "--checkpoint", "x.ckpt", "--tag", "t",
                                                        "--limit", "5"],
                                           "--limit 5: it limits the --dataset measurement; give --dataset too"),
    "export_out_not_onnx": (lambda tmp: ["export", "--model", "se_resnet20_cifar.fmnist", "--out", "model.pt"],
                            "--out model.pt: --out writes a .onnx file; give the file the .onnx suffix"),
    "broken_link_as_the_only_path": (lambda tmp: ["classify", _broken_link(tmp), "--model", "se_resnet20_cifar.fmnist"],
                                     "photo.png: a link to"),
    "zero_check_val_every_n_epoch": (lambda tmp: [*FIT, "--trainer.check_val_every_n_epoch", "0"],
                                     "trainer.check_val_every_n_epoch 0: give 1 or more"),  # a ZeroDivisionError
    "zero_limit_train_batches": (lambda tmp: [*FIT, "--trainer.limit_train_batches", "0"],
                                 "trainer.limit_train_batches 0: the run would train on no batch"),
    "zero_max_epochs": (lambda tmp: [*FIT, "--trainer.max_epochs", "0"],
                        "trainer.max_epochs 0: the run would train on no batch"),  # exit 0, no checkpoint
    # from a fit audit: a NaN loss from the first steps, then blamed on the learning rate
    # from a config audit: Lightning ignored a scheduler given alone; an optimizer replaced the task's AdamW, warm-up
    # and cosine while the checkpoint recorded the task's lr and warm-up as used
    "lr_scheduler_the_task_would_ignore": (lambda tmp: [*FIT, "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1"],
                                           "lr_scheduler: visattn's tasks build their AdamW, warm-up and cosine schedule "
                                           "from model.init_args lr, weight_decay and warmup_epochs; set those instead"),
    "optimizer_in_place_of_the_tasks": (lambda tmp: [*FIT, "--optimizer", "SGD", "--optimizer.lr", "0.1"],
                                        "optimizer: visattn's tasks build their AdamW"),
    # from a config audit: a training split of none was a sampler's ValueError, a test split of none scored nothing
    "no_training_scene": (lambda tmp: [*_scenes_run("fit"), "--data.init_args.num_train", "0"],
                          "data: FashionScenesDetectionDataModule holds no train samples; data.init_args.num_train is "
                          "0: give 1 or more"),
    "no_test_scene": (lambda tmp: [*_scenes_run("test"), "--data.init_args.num_test", "0"],
                      "data: FashionScenesDetectionDataModule holds no test samples; data.init_args.num_test is 0"),
    "no_scene_to_predict": (lambda tmp: [*_scenes_run("predict"), "--data.init_args.num_test", "0"],
                            "holds no test samples"),
    # from a check of DDP on the CPU: a ValueError traceback from each process
    "sync_batchnorm_on_cpu_processes": (lambda tmp: [*FIT, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                                                     "--trainer.accelerator", "cpu",
                                                     "--trainer.sync_batchnorm", "true"],
                                        "trainer.sync_batchnorm true: torch's SyncBatchNorm runs on GPUs only (DDP "
                                        "refuses it on the CPU); set it false there"),
    "half_precision_weights_on_cpu": (lambda tmp: [*FIT, "--trainer.precision", "16-true"],
                                      "trainer.precision 16-true: float16 weights trained on the CPU give a NaN loss "
                                      "within the first steps; use --trainer.precision bf16-mixed or 32-true on the CPU"),
    # from a fit audit: these named "the model and data sections", the wrong folder or no setting at all
    "model_kwargs_the_model_cannot_take": (lambda tmp: [*FIT, "--model.init_args.model_kwargs", "{attn_kwargs: 3}"],
                                           'model.init_args.model_kwargs {"attn_kwargs": 3}: cbam_resnet20_cifar could '
                                           "not be built with them (visattn.layers.create_attn.create_attn() argument "
                                           "after ** must be a mapping, not int); check their names and values"),
    "callback_argument_it_refuses": (lambda tmp: [*FIT, "--trainer.callbacks", "[{class_path: lightning.pytorch."
                                                  "callbacks.ModelCheckpoint, init_args: {mode: maxx}}]"],
                                     "error: trainer.callbacks: ModelCheckpoint: `mode` can be min, max but got maxx; "
                                     "fix its init_args in the config's trainer.callbacks"),  # no subclass forms
    "fashion_mnist_root_not_there": (lambda tmp: [*FIT, "--data.init_args.root", "nodata"],  # in tmp, the cwd
                                     "data.init_args.root=nodata: no such folder in the working folder "),
    # an operations audit: run from another folder, a config's relative root named no folder it was looked for in
    "image_folder_root_relative_and_not_there": (lambda tmp: ["fit", "--config", str(IMAGEFOLDER_CONFIG),
                                                              "--data.init_args.root", "data/train"],
                                                 "data/train: no such folder in the working folder "),
    "val_fraction_of_one": (lambda tmp: [*FIT, "--data.init_args.val_fraction", "1.0"],
                            "error: data.init_args.val_fraction=1.0: give the share of training images held out for "
                            "validation, from 0 up to (not including) 1, e.g. 0.1"),
    "crop_pct_above_one": (lambda tmp: ["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", str(tmp),
                                        "--data.init_args.crop_pct", "1.5"],
                           "error: data.init_args.crop_pct=1.5: give the fraction of the resized image kept"),
}


def _coco_edited(tmp_path: Path, change) -> tuple[Path, Path]:
    from test_detection_data import _rewritten, write_coco_instances

    path, images_dir = write_coco_instances(tmp_path / "coco")
    return _rewritten(path, change), images_dir


def _evaluate_on_coco(tmp_path: Path, change) -> list[str]:
    path, images_dir = _coco_edited(tmp_path, change)
    return ["evaluate", "--model", DETECTOR, "--dataset", f"coco:{path}:{images_dir}"]


def _fit_on_image_folder(root: Path) -> list[str]:
    return ["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", str(root)]


def _folder_with_an_empty_class(tmp_path: Path) -> Path:
    from fixtures_images import write_image_folder

    root = write_image_folder(tmp_path / "photos")
    (root / "fox").mkdir()
    return root


def _garbage_weights(tmp_path: Path) -> str:
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage" * 10)
    return str(tmp_path / "bad.safetensors")


def _one_class_folder(tmp_path: Path) -> Path:
    from fixtures_images import write_image_folder

    return write_image_folder(tmp_path / "photos", classes=("cat",))


def _fit_on_coco_without_boxes(tmp_path: Path) -> list[str]:
    path, images_dir = _coco_edited(tmp_path, lambda data: data.update(annotations=[]))
    return ["fit", "--config", str(REPO / "configs" / "detection" / "coco_template.yaml"),
            "--data.init_args.train_annotations", str(path), "--data.init_args.images_dir", str(images_dir)]


def _second_category_named_as_the_first(data: dict) -> None:
    data["categories"][1]["name"] = data["categories"][0]["name"]


# The data mistakes the first reliability promise lists, from the command line (a README audit found them tested
# only through the Python API)
CASES.update({
    "image_folder_with_one_class": (lambda tmp: _fit_on_image_folder(_one_class_folder(tmp)),
                                    "photos: one class folder (cat); a classifier needs two or more"),
    "image_folder_with_an_empty_class": (lambda tmp: _fit_on_image_folder(_folder_with_an_empty_class(tmp)),
                                         "photos: class folders ['fox'] hold no image files; add images or "
                                         "remove them"),
    "coco_without_categories": (lambda tmp: _evaluate_on_coco(tmp, lambda data: data.update(categories=[])),
                                "edited.json: lists no categories; a detector needs at least one"),
    "coco_name_on_several_ids": (lambda tmp: _evaluate_on_coco(tmp, _second_category_named_as_the_first),
                                 "edited.json: category names ['dog'] are given to several ids; give each category "
                                 "its own name"),
    "coco_training_without_boxes": (_fit_on_coco_without_boxes,
                                    "edited.json: no object box to learn from (no annotations, or only crowd "
                                    "regions or dropped boxes)"),
    "garbage_weights_file": (lambda tmp: ["classify", "x.png", "--model", _garbage_weights(tmp)],
                             "bad.safetensors: not a safetensors file that reads (damaged, cut short, or not readable "
                             "by this user); copy it again"),
})
# The command line's rough edges an operations audit found: `visattn:` said twice, no near command named, a missing
# --config named as "fit.data, fit.model", a model name given to --model read as a module path
CASES.update({
    "no_command": (lambda tmp: [], "visattn: error: the following arguments are required: COMMAND; see "
                                   "`visattn --help`"),
    "misspelt_command": (lambda tmp: ["fti"], "visattn: error: unknown command 'fti' (did you mean fit?); see "
                                              "`visattn --help`"),
    "command_in_capitals": (lambda tmp: ["FIT", "--config", str(CBAM_CONFIG)],
                            "unknown command 'FIT' (did you mean fit?)"),
    "misspelt_command_with_two_near_ones": (lambda tmp: ["evalute", "--model", "se_resnet20_cifar.fmnist"],
                                            "unknown command 'evalute' (did you mean evaluate or validate?)"),
    "fit_without_a_config": (lambda tmp: ["fit"], "fit: give --config CONFIG, the YAML file naming the model, data "
                                                  "and trainer (`visattn configs` lists the shipped ones;"),
    "validate_without_a_config": (lambda tmp: ["validate", "--trainer.max_epochs", "1"],
                                  "validate: give --config CONFIG"),
    # the data option was refused by LightningDataModule, the base class, as if the option were the mistake
    "test_options_without_a_config": (lambda tmp: ["test", "--data.num_workers", "0"], "test: give --config CONFIG"),
    # were "the following arguments are required: fit.data, fit.model"
    "config_of_a_trainer_only": (lambda tmp: ["fit", "--config", _written(tmp, "t.yaml", "trainer: {max_epochs: 1}\n")],
                                 "/t.yaml: names no model: or data: class_path; a config names the task "
                                 "(`model: class_path: visattn.tasks.ImageClassifier`) and its data"),
    "config_without_data": (lambda tmp: ["validate", "--config", _written(tmp, "m.yaml", "model:\n  class_path: "
                                                                          "visattn.tasks.ImageClassifier\n")],
                            "/m.yaml: names no data: class_path;"),
    "data_section_without_its_class": (lambda tmp: ["validate", "--config", _written(
        tmp, "m.yaml", "model: {class_path: visattn.tasks.ImageClassifier}\ndata: {init_args: {batch_size: 8}}\n")],
        "/m.yaml: names no data: class_path;"),  # a review: it said "no data: section"
    "class_path_with_an_empty_module_name": (lambda tmp: ["validate", "--config", _written(
        tmp, "m.yaml", "model: {class_path: .ImageClassifier}\n")], "Unexpected import path format: .ImageClassifier"),
    "predict_given_weights_name": (lambda tmp: ["predict", "x.png", "--model", "se_resnet20_cifar.fmnist"],
                                   "--model se_resnet20_cifar.fmnist: `visattn predict` runs a config's model on the "
                                   "config's data, and --model takes the model's task class, not a model name; "
                                   "classify image files with `visattn classify FILES --model "
                                   "se_resnet20_cifar.fmnist`, or run it from a config with --config CONFIG "
                                   "--model.init_args.model_name se_resnet20_cifar.fmnist"),
    "fit_given_detector_name": (lambda tmp: ["fit", "--config", str(CBAM_CONFIG),
                                             "--model=fcos_se_resnet20_cifar.scenes"],
                                "detect image files with `visattn detect FILES --model fcos_se_resnet20_cifar.scenes`"),
    # an architecture without weights: nothing to run on files, only a config to train it in
    "fit_given_architecture_name": (lambda tmp: ["fit", "--model.class_path", "cbam_resnet20_cifar"],
                                    "not a model name; run it from a config with --config CONFIG "
                                    "--model.init_args.model_name cbam_resnet20_cifar"),
})
NEEDS_DATA = {"unknown_model_in_config", "resume_from_another_architecture", "pretrained_of_another_architecture",
              "run_bounded_only_by_time", "ckpt_path_given_weights", "zero_img_size_in_config"}


def test_a_config_may_override_the_keys_it_merges_from_an_anchor(tmp_path):
    """A key after a YAML merge (<<: *base) overrides the merged one, as YAML means it: no key given twice."""
    from visattn.tasks.config_files import read_config

    path = _written(tmp_path, "merged.yaml", "base: &base\n  lr: 0.1\n  weight_decay: 0.0\nmodel:\n  init_args:\n"
                                             "    <<: *base\n    lr: 0.2\n")
    assert read_config(Path(path))["model"]["init_args"] == {"lr": 0.2, "weight_decay": 0.0}


@pytest.mark.parametrize("case", [pytest.param(c, marks=needs_fashion_mnist) if c in NEEDS_DATA else c for c in CASES])
def test_user_mistake_is_one_line_and_exit_code_2(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])  # as from a terminal: LightningCLI warns about pytest's own
    make_args, expected = CASES[case]
    args = make_args(tmp_path)
    try:
        code = main(args)
    except SystemExit as exit:  # argparse's usage errors exit, as argparse does
        code = exit.code
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("visattn: error:")]
    assert code == 2 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert expected in errors[0] and "Traceback" not in err
    if "--json" in args:
        assert out == ""  # nothing on stdout that a JSON reader would choke on


@needs_fashion_mnist
@pytest.mark.parametrize("missing", [ModuleNotFoundError("No module named 'stats_pkg'", name="stats_pkg"),
                                     ModuleNotFoundError("`Monitor` cannot log CPU stats as `stats_pkg` is not "
                                                         "installed.")])
def test_a_package_a_callback_needs_once_the_run_starts_is_one_line(missing, tmp_path, monkeypatch, capsys):
    """DeviceStatsMonitor without psutil ended `fit` in a traceback, at the start of training."""
    from visattn.tasks import validation_checks

    def needs_a_package(*args):
        raise missing

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    monkeypatch.setattr(validation_checks.MonitoredMetricCheck, "on_sanity_check_end", needs_a_package)
    assert main(FIT) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("visattn: error: fit: ")]
    assert "Traceback" not in err and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0]
    assert "stats_pkg" in errors[0] and errors[0].endswith("drop the setting that uses it")


def test_the_names_a_saved_config_gives_at_lightning_cli_still_import_from_there():
    """Configs, and the config.yaml of runs saved before lightning_cli.py was split into modules, name
    visattn.tasks.lightning_cli.JsonPredictionWriter (or another of its callbacks, SafeCheckpointIO): each is still
    that class there."""
    import importlib

    from visattn.tasks import lightning_cli

    for name in lightning_cli.__all__:
        found = getattr(lightning_cli, name)
        home = importlib.import_module(getattr(found, "__module__", None) or lightning_cli.__name__)
        assert getattr(home, name) is found, name
    assert {"JsonPredictionWriter", "SafeCheckpointIO", "RandomStateCheckpoint", "StopAfterSigterm",
            "MonitoredMetricCheck", "LaunchedDataCheck", "SaveConfigBesideEarlier"} <= set(lightning_cli.__all__)


@needs_fashion_mnist
def test_a_module_missing_from_an_installed_package_is_not_passed_off_as_a_setting(tmp_path, monkeypatch):
    """Only a package that is not installed is the user's to install: a module missing inside one (a bug, or a
    broken install) keeps its traceback instead of advice to `pip install torch` (from a code review)."""
    from visattn.tasks import validation_checks

    def missing_inside_torch(*args):
        raise ModuleNotFoundError("No module named 'torch.nonexistent'", name="torch.nonexistent")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    monkeypatch.setattr(validation_checks.MonitoredMetricCheck, "on_sanity_check_end", missing_inside_torch)
    with pytest.raises(ModuleNotFoundError, match="torch.nonexistent"):
        main(FIT)


@needs_fashion_mnist
@pytest.mark.parametrize("settings", [["--trainer.enable_checkpointing", "false"],
                                      ["--trainer.callbacks+=ModelCheckpoint",
                                       "--trainer.callbacks.save_on_train_epoch_end", "true"]])
def test_validation_every_second_epoch_of_three_runs_where_nothing_is_lost(settings, tmp_path, monkeypatch):
    """The refusal of a last epoch neither validated nor checkpointed holds for checkpoints written after validation
    only: it had stopped runs that checkpoint nothing or save at epoch ends (a code review)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    validated = ["--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "2"]
    if settings[0].startswith("--trainer.callbacks"):  # the configs' own callbacks would still be refused
        settings = ["--trainer.callbacks=[]", *settings]
    assert main([*FIT, *validated, *settings]) == 0


@needs_fashion_mnist
@pytest.mark.skipif(any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")),
                    reason="TensorBoardLogger builds where tensorboard is installed")
def test_an_added_logger_missing_its_package_is_named_with_its_section(tmp_path, monkeypatch, capsys):
    """With a second logger (`+=`) the line had dumped both loggers' settings and pointed nowhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    assert main([*FIT, "--trainer.logger+=TensorBoardLogger", "--trainer.logger.save_dir", "tb"]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("visattn: error: trainer.logger: TensorBoardLogger could not be built (Neither `tensorboard` "
                            "nor `tensorboardX` is available.") and "Namespace" not in error


@needs_fashion_mnist
def test_a_checkpoint_added_beside_the_configs_own_of_the_same_settings_keeps_every_epoch_and_resumes(
        tmp_path, monkeypatch, capsys):
    """Lightning keys a checkpoint callback's saved state by monitor, mode and interval alone: one added to keep every
    epoch beside the config's latest one stopped the run with a traceback (a journey audit). It also drew a warning
    that default_root_dir left "the config's" folder behind, though the user had set no default_root_dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    keep_all = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", "mine",
                "--trainer.callbacks.save_top_k", "-1"]
    assert main([*FIT, "--trainer.max_epochs", "1", *keep_all]) == 0
    assert "default_root_dir" not in capsys.readouterr().err
    assert main([*FIT, "--trainer.max_epochs", "2", *keep_all, "--ckpt_path", "last"]) == 0
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    states = torch.load(tmp_path / "mine" / "epoch=1-step=8.ckpt", weights_only=False)["callbacks"]
    ours = [key for key in states if key.startswith("ModelCheckpoint") and "'dirpath': 'mine'" in key]
    assert len(ours) == 1 and states[ours[0]]["dirpath"] == str(tmp_path / "mine")


def test_a_fit_on_a_terminal_ends_saying_where_its_checkpoints_and_logs_went(tmp_path, monkeypatch, capsys):
    """Only the epoch lines of a log said where a fit's files went: under Rich's bar, on a terminal, a fit ended on
    its bar with no word of them; and the bar showed the logger's version as a metric, "v_num: 0.000" (an output
    audit)."""
    from visattn.tasks import lightning_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lightning_cli, "interactive_output", lambda: True)  # Rich's bar, as on a terminal
    with_bar = [arg for arg in FIT if arg not in ("--trainer.enable_progress_bar", "false")]
    assert main(with_bar) == 0
    out = capsys.readouterr().out
    run = tmp_path.resolve() / "outputs" / CBAM_CONFIG.stem
    assert out.strip().splitlines()[-1] == f"checkpoints in {run / 'checkpoints'}; logs in {run / 'logs' / 'version_0'}"
    assert "val/top1: " in out and "v_num" not in out, out


def test_validate_and_test_end_saying_where_their_logger_wrote_the_scores(tmp_path, monkeypatch, capsys):
    """Lightning's table of scores was their last word, naming no file, though the logger wrote them to a new
    version folder of its own."""
    monkeypatch.chdir(tmp_path)
    assert main(FIT) == 0
    logs = tmp_path.resolve() / "outputs" / CBAM_CONFIG.stem / "logs"
    for version, (command, checkpoint) in enumerate((("validate", "last"), ("test", "best")), start=1):
        capsys.readouterr()
        assert main([command, *FIT[1:], "--ckpt_path", checkpoint]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1] == f"logs in {logs / f'version_{version}'}"
        scores = (logs / f"version_{version}" / "metrics.csv").read_text()
        assert f"{'val' if command == 'validate' else 'test'}/top1" in scores


def test_a_fast_dev_run_says_it_saved_no_checkpoint_and_warns_of_no_earlier_ones(tmp_path, monkeypatch, capsys):
    """fast_dev_run saves no checkpoint, yet Lightning's default ModelCheckpoint warned that its folder held an
    earlier run's, and the run ended with "checkpoints in" that folder (an output audit)."""
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "outputs" / CBAM_CONFIG.stem / "checkpoints"
    earlier.mkdir(parents=True)
    (earlier / "last.ckpt").write_bytes(b"an earlier run's")
    with_bar = [arg for arg in FIT if arg not in ("--trainer.enable_progress_bar", "false")]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main([*with_bar, "--trainer.fast_dev_run", "true"]) == 0
    assert not [str(w.message) for w in seen if "exists and is not empty" in str(w.message)]
    assert capsys.readouterr().out.strip().splitlines()[-1] == "no checkpoint saved"
    assert sorted(p.name for p in earlier.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("config", ["classification/cbam_resnet_fmnist.yaml", "detection/fcos_scenes.yaml"])
def test_a_fit_of_a_shipped_config_gives_no_warning_from_lightning(config, tmp_path, monkeypatch):
    """Nothing a user can act on: Lightning noted at every classifier fit, naming its own site-packages file, that
    the task's batch hook (which refuses labels past the head) is used with a data module."""
    monkeypatch.chdir(tmp_path)
    settings = (["--data.init_args.num_train", "16", "--data.init_args.num_val", "8"] if "scenes" in config else
                ["--data.init_args.limit", "64"])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["fit", "--config", str(REPO / "configs" / config), "--trainer.fast_dev_run", "true",
                     "--data.init_args.num_workers", "0", *settings]) == 0
    shown = [w for w in seen if not issubclass(w.category, DeprecationWarning)]  # Python shows those in __main__ only
    assert [f"{Path(w.filename).name}: {w.message}" for w in shown if "lightning" in w.filename] == []


def test_checkpoint_callbacks_keyed_apart_still_pickle_as_ddp_spawn_sends_them():
    from lightning.pytorch.callbacks import ModelCheckpoint
    from visattn.tasks.callback_checks import _keyed_apart

    callbacks = _keyed_apart([ModelCheckpoint(dirpath="a"), ModelCheckpoint(dirpath="b", save_top_k=-1)])
    # the first keeps Lightning's own key, under which earlier runs (and plain Lightning) saved its state
    assert callbacks[0].state_key == ModelCheckpoint(dirpath="a").state_key != callbacks[1].state_key
    assert _keyed_apart([lone := ModelCheckpoint(dirpath="c", monitor="val/loss")])[0].state_key == lone.state_key
    copies = pickle.loads(pickle.dumps(callbacks))
    assert [c.state_key for c in copies] == [c.state_key for c in callbacks] and len({c.state_key for c in copies}) == 2
    # a third writing the second's files was compared with the first only, and met Lightning's traceback (a review)
    with pytest.raises(ConfigError, match="write the same files into .*/b; give the one you add another dirpath"):
        _keyed_apart([ModelCheckpoint(dirpath="a"), ModelCheckpoint(dirpath="b"), ModelCheckpoint(dirpath="b")])
    with pytest.raises(ConfigError, match="write the same files into the run's checkpoints folder;"):
        _keyed_apart([ModelCheckpoint(), ModelCheckpoint(save_top_k=-1)])


def test_folders_typed_on_the_command_line_are_read_in_both_forms():
    from visattn.tasks.cli_arguments import _typed_values

    argv = ["fit", "--trainer.callbacks.dirpath", "a", "--trainer.logger.save_dir=b", "--trainer.callbacks.dirpath=c",
            "--model.init_args.lr", "d"]
    assert _typed_values(argv, ("--trainer.callbacks.dirpath", "--trainer.logger.save_dir")) == ("a", "b", "c")


@pytest.mark.parametrize("monitor, mode, refused", [
    ("val/map50", "min", True), ("val/cider", "min", True), ("val/pointing", "min", True), ("val/bleu4", "min", True),
    ("val/map", "min", True), ("val/meteor", "min", True), ("val/rouge_l", "min", True), ("val/top5", "min", True),
    ("val/xent", "max", True),
    ("train/loss", "max", True), ("train/attn_reg", "max", True), ("val/map50", "max", False), ("val/loss", "min", False),
    ("val/custom", "min", False), ("val/custom", "max", False),
])
def test_a_monitor_against_its_metrics_direction_is_refused(monitor, mode, refused):
    from types import SimpleNamespace
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from visattn.tasks.callback_checks import _refuse_monitors_the_wrong_way

    for callback in (ModelCheckpoint(monitor=monitor, mode=mode), EarlyStopping(monitor=monitor, mode=mode)):
        trainer = SimpleNamespace(checkpoint_callbacks=[callback] * isinstance(callback, ModelCheckpoint),
                                  early_stopping_callbacks=[callback] * isinstance(callback, EarlyStopping))
        with pytest.raises(ConfigError, match="is better") if refused else contextlib.nullcontext():
            _refuse_monitors_the_wrong_way(trainer)


@needs_fashion_mnist
@pytest.mark.parametrize("first, then, said", [
    ("null", "0.9", "was trained without a weight average, and this run keeps one (model.init_args.ema_decay 0.9)"),
    ("0.9", "null", "holds a weight average (ema_decay), and this run keeps none"),
])
def test_resuming_with_another_weight_average_setting_names_ema_decay(first, then, said, tmp_path, monkeypatch, capsys):
    """The keys' mismatch had been blamed on "the model and model_kwargs this config builds" (an EMA audit)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    assert main([*FIT, "--model.init_args.ema_decay", first]) == 0
    assert main([*FIT, "--trainer.max_epochs", "2", "--ckpt_path", "last", "--model.init_args.ema_decay", then]) == 2
    last = tmp_path / "outputs" / "cbam_resnet_fmnist" / "checkpoints" / "last.ckpt"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"visattn: error: --ckpt_path {last} {said}; drop the ema_decay setting, which then comes from the "
        f"checkpoint, or start a new run from its weights with --model.init_args.pretrained {last}")


@needs_fashion_mnist
def test_a_callback_whose_default_is_an_enum_member_runs_with_it(tmp_path, monkeypatch):
    """jsonargparse read Timer's ``interval`` default (``Interval.step``) into the config and then refused it:
    `--trainer.callbacks+=Timer` ended in a line blaming the callbacks unless the interval was typed (audit)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    assert main([*FIT, "--trainer.callbacks+=Timer", "--trainer.callbacks.duration", "00:00:10:00"]) == 0
    saved = yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())
    timer = next(c for c in saved["trainer"]["callbacks"] if c["class_path"].endswith("Timer"))
    assert timer["init_args"]["interval"] == "step"


def test_a_closed_output_pipe_ends_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "visattn", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader goes away before the command prints, as `| head -0` does
    assert proc.wait(timeout=300) == 141
    assert proc.stderr.read() == ""


def test_a_broken_pipe_that_is_not_the_output_is_not_taken_for_a_closed_reader(monkeypatch):
    """Any BrokenPipeError, a loader worker's pipe or a socket's, ended the command with 141 and no word."""
    import visattn.cli as cli

    def broken_elsewhere(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_models", broken_elsewhere)
    with pytest.raises(BrokenPipeError):
        main(["models"])


def test_results_written_to_a_full_disk_or_a_closed_output_are_one_line_not_lost_silently(monkeypatch, capsys):
    """`classify ... > /dev/full` was a traceback (or Python's "Exception ignored" at exit), and with standard
    output closed (`>&-`) every result was dropped and the exit code said 0."""
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        assert main(["models", "se_*"]) == 1
        monkeypatch.undo()
    assert capsys.readouterr().err == ("visattn: error: writing standard output: No space left on device; send it "
                                       "where there is room\n")
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["models"]) == 2
    assert capsys.readouterr().err.startswith("visattn: error: standard output is closed, and visattn writes its "
                                              "results there; give it a file (> FILE) or /dev/null")


class _UndecodableClass(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise ConfigError("photos/dog: none of its 2 training image files can be decoded")


def test_an_error_from_a_dataloader_worker_is_its_own_one_line(monkeypatch, capsys):
    import visattn.cli as cli

    def read_in_a_worker(args):  # torch rebuilds it with the worker's traceback as its message
        next(iter(torch.utils.data.DataLoader(_UndecodableClass(), num_workers=1)))

    monkeypatch.setattr(cli, "cmd_models", read_in_a_worker)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "visattn: error: photos/dog: none of its 2 training image files can be decoded\n"


def test_no_traceback_reaches_the_terminal(tmp_path):
    command = [sys.executable, "-m", "visattn.cli", "classify", "x.png", "--model", "cbam_resnt18", "--json"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["visattn: error: unknown model 'cbam_resnt18': did you mean cbam_resnet18, "
                                        "bam_resnet18, cbam_resnet101?"]


def test_a_file_name_the_console_cannot_encode_prints_escaped_not_a_traceback(tmp_path):
    _photo(tmp_path / "caf\u00e9.png")
    command = [sys.executable, "-m", "visattn.cli", "classify", "caf\u00e9.png", "--model", CLASSIFIER]
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}  # a console without the character (cp1252, a C locale)
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("caf\\xe9.png")


@pytest.mark.parametrize("subcommand", [pytest.param("fit", marks=needs_fashion_mnist), "test"])
def test_hostile_ckpt_path_is_refused_and_runs_nothing(subcommand, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil" / "last.ckpt"
    evil.parent.mkdir()
    torch.save({"state_dict": {"w": _CreatesFile(str(marker))}}, evil)
    code = main([subcommand, "--config", str(CBAM_CONFIG), *QUICK, "--ckpt_path", str(evil)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"visattn: error: {evil}: refused") and not marker.exists()


# ------------------------------------------------------------------ outputs, weights index and option values

DETECTOR, CAPTIONER, CLASSIFIER = "fcos_se_resnet20_cifar.scenes", "sat_cbam_resnet_scenes.scenes", "se_resnet20_cifar.fmnist"
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")


def _photo(path: Path, side: int = 32) -> Path:
    """A tiny RGB noise image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def _image(tmp: Path) -> str:
    return str(_photo(tmp / "img.png"))


def _a_file(tmp: Path) -> str:
    (tmp / "afile").write_text("a file, not a folder")
    return "afile"


def _a_folder(tmp: Path) -> str:
    (tmp / "adir").mkdir()
    return "adir"


def _save_weights(tmp: Path, *options: str) -> list[str]:
    return ["save-weights", "--checkpoint", str(write_classifier_checkpoint(tmp / "run.ckpt")), "--tag", "t", *options]


# Checked by test_user_mistake_is_one_line_and_exit_code_2, through test_output_and_option_mistakes_are_one_line.
OUTPUT_AND_OPTION_CASES = {
    "detect_out_is_a_file": (lambda tmp: ["detect", _image(tmp), "--model", DETECTOR, "--out", _a_file(tmp)],
                             "--out afile: cannot write there (a file stands where a folder is needed); "
                             "choose a writable --out folder"),
    "detect_out_under_a_file": (lambda tmp: ["detect", _image(tmp), "--model", DETECTOR, "--out", f"{_a_file(tmp)}/sub"],
                                "--out afile/sub: cannot write afile (a file stands where a folder is needed)"),
    "detect_out_takes_no_file": (lambda tmp: ["detect", _image(tmp), "--model", DETECTOR, "--out", "/proc/self"],
                                 "--out /proc/self: cannot write there"),
    "caption_attention_out_is_a_file": (lambda tmp: ["caption", _image(tmp), "--model", CAPTIONER,
                                                     "--attention-out", _a_file(tmp)],
                                        "--attention-out afile: cannot write there"),
    "caption_attention_out_takes_no_file": (lambda tmp: ["caption", _image(tmp), "--model", CAPTIONER,
                                                         "--attention-out", "/proc/self"],
                                            "choose a writable --attention-out folder"),
    "explain_out_under_a_file": (lambda tmp: ["explain", _image(tmp), "--model", CLASSIFIER, "--out", f"{_a_file(tmp)}/x.png"],
                                 "--out afile/x.png: cannot write afile (a file stands where a folder is needed); "
                                 "choose a writable --out file"),
    "export_out_is_a_folder": (lambda tmp: ["export", "--model", CLASSIFIER, "--out", _a_folder(tmp)],
                               "--out adir: cannot write there (it is a folder); choose a writable --out file"),
    "export_out_under_a_file": (lambda tmp: ["export", "--model", CLASSIFIER, "--out", f"{_a_file(tmp)}/m.onnx"],
                                "--out afile/m.onnx: cannot write afile (a file stands where a folder is needed)"),
    "export_path_problem_at_another_opset": (lambda tmp: ["export", "--model", CLASSIFIER, "--opset", "13",
                                                          "--out", "/proc/m.onnx"],
                                             "--out /proc/m.onnx: cannot write there"),
    "explain_out_is_stdout": (lambda tmp: ["explain", _image(tmp), "--model", CLASSIFIER, "--out", "-"],
                              "--out -: --out writes a file, not standard output; give a file path"),
    "export_out_is_stdout": (lambda tmp: ["export", "--model", CLASSIFIER, "--out", "-"],
                             "--out -: --out writes a file, not standard output; give a file path"),
    "save_weights_config_missing": (lambda tmp: _save_weights(tmp, "--out-dir", "w", "--config", "gone.yaml"),
                                    "--config gone.yaml: no such file; give the config that trained the checkpoint, "
                                    "or leave --config out"),
    # from a CLI fuzz audit: each was recorded in the index as the config that trained the weights
    "save_weights_config_of_another_task": (
        lambda tmp: _save_weights(tmp, "--out-dir", "w", "--config", "configs/detection/fcos_scenes.yaml"),
        "--config configs/detection/fcos_scenes.yaml: trains DetectionTask 'fcos_se_resnet20_cifar', not this "
        "classification checkpoint's cbam_resnet20_cifar; give the config that trained the checkpoint, or leave "
        "--config out"),
    "save_weights_config_of_another_model": (
        lambda tmp: _save_weights(tmp, "--out-dir", "w", "--config", "configs/classification/vit_fmnist.yaml"),
        "--config configs/classification/vit_fmnist.yaml: trains ImageClassifier 'vit_tiny_patch4_28', not this "
        "classification checkpoint's cbam_resnet20_cifar"),
    "save_weights_config_that_is_an_image": (lambda tmp: _save_weights(tmp, "--out-dir", "w", "--config", _image(tmp)),
                                             "img.png: not UTF-8 text; give a YAML config saved as UTF-8"),
    "save_weights_config_without_a_model": (
        lambda tmp: _save_weights(tmp, "--out-dir", "w", "--config", _written(tmp, "t.yaml", "trainer: {}\n")),
        "t.yaml: no model: class_path naming a task and its init_args, as a config `visattn fit` trains from has; "
        "give the config that trained the checkpoint, or leave --config out"),
    "save_weights_config_of_the_default_detector": (  # no model_name: the task's default architecture
        lambda tmp: _save_weights(tmp, "--out-dir", "w", "--config", _written(
            tmp, "d.yaml", "model:\n  class_path: visattn.tasks.detection.DetectionTask\n")),
        "d.yaml: trains DetectionTask 'fcos_cbam_resnet20_cifar', not this classification checkpoint's "
        "cbam_resnet20_cifar"),
    "save_weights_config_of_a_model_name_that_is_no_name": (
        lambda tmp: _save_weights(tmp, "--out-dir", "w", "--config", _written(
            tmp, "n.yaml", "model:\n  class_path: ImageClassifier\n  init_args:\n    model_name: 5\n")),
        "n.yaml: trains ImageClassifier 5, not this classification checkpoint's cbam_resnet20_cifar"),
    "save_weights_config_is_a_folder": (lambda tmp: _save_weights(tmp, "--out-dir", "w", "--config", _a_folder(tmp)),
                                        "--config adir: a folder; give the config that trained the checkpoint"),
    # from a CLI audit: save-weights' fix named --model, which it does not take
    "save_weights_from_a_weights_file": (lambda tmp: ["save-weights", "--checkpoint", _vit_weights(tmp), "--tag", "t",
                                                      "--out-dir", str(tmp / "w")],
                                         "vit.safetensors: not a Lightning checkpoint (no state_dict); save-weights "
                                         "turns the .ckpt files `visattn fit` writes into weights (to index a weights "
                                         "file, load it with create_model(ARCH, pretrained=FILE) and save it with "
                                         "visattn.save_weights in Python)"),
    # from a fine-tune audit: it named --split, which save-weights does not take
    "save_weights_dataset_without_a_test_split": (
        lambda tmp: _save_weights(tmp, "--out-dir", "w", "--dataset",
                                  f"imagefolder:{_split_folders(tmp, 'train', 'val')}"),
        "/shapes: save-weights records scores of a test split, and it has no test/ folder (its splits: train, val); "
        "give imagefolder:DIR of held-out images, or leave --dataset out"),
    "save_weights_from_a_captioner_checkpoint_without_a_model_name": (
        lambda tmp: ["save-weights", "--checkpoint", _checkpoint_without_a_model_name(tmp, captioner=True), "--tag",
                     "t", "--out-dir", str(tmp / "w")],
        "unnamed.ckpt: not a visattn captioning checkpoint (no vocab and model_name); save-weights turns"),
    "save_weights_from_a_checkpoint_without_a_model_name": (
        lambda tmp: ["save-weights", "--checkpoint", _checkpoint_without_a_model_name(tmp), "--tag", "t",
                     "--out-dir", str(tmp / "w")],
        "unnamed.ckpt: not a visattn classification checkpoint (no model_name and num_classes); save-weights turns"),
    "meteor_for_a_classifier": (lambda tmp: ["evaluate", "--model", CLASSIFIER, "--dataset", "fashion-mnist",
                                             "--meteor"],
                                f"--meteor: {CLASSIFIER} is a classifier, and only a captioner takes --meteor; "
                                "drop it"),
    "save_weights_out_dir_is_a_file": (lambda tmp: _save_weights(tmp, "--out-dir", _a_file(tmp)),
                                       "--out-dir afile: cannot write there"),
    # it had named the temp file moved there, as if it were the folder; without --overwrite it said the weights
    # "already exist; pass --overwrite", which then refused the folder (a file-writing audit)
    **{f"save_weights_file_is_a_folder{flag}": (
        lambda tmp, flag=flag: (tmp / "w" / "cbam_resnet20_cifar.t.safetensors").mkdir(parents=True)
        or _save_weights(tmp, "--out-dir", "w", *flag.split()),
        "w/cbam_resnet20_cifar.t.safetensors: a folder stands where the weights file goes; move it, or pick another "
        "--tag") for flag in ("", " --overwrite")},
    # it had named the folder, which is one ("--out-dir w: cannot write there (it is a folder)")
    "save_weights_index_lock_is_a_folder": (
        lambda tmp: (tmp / "w" / "index.json.lock").mkdir(parents=True) or _save_weights(tmp, "--out-dir", "w"),
        "--out-dir w: cannot write w/index.json.lock (it is a folder); choose a writable --out-dir folder"),
    "score_threshold_nan": (lambda tmp: ["detect", "x.png", "--model", "m", "--score-threshold", "nan"],
                            "--score-threshold: 'nan' is not a number from 0 to 1"),
    "score_threshold_negative": (lambda tmp: ["detect", "x.png", "--model", "m", "--score-threshold", "-1"],
                                 "--score-threshold: '-1' is not a number from 0 to 1"),
    "score_threshold_above_1": (lambda tmp: ["detect", "x.png", "--model", "m", "--score-threshold", "5"],
                                "--score-threshold: '5' is not a number from 0 to 1"),
    "negative_head": (lambda tmp: ["explain", "x.png", "--model", "m", "--out", "y.png", "--head", "-1"],
                      "--head: '-1' is not a non-negative whole number"),
    "more_workers_than_cpus_can_use": (lambda tmp: ["evaluate", "--model", "m", "--dataset", "fashion-mnist",
                                                    "--num-workers", "1000000", "--limit", "8"],
                                       "--num-workers: '1000000' workers for"),
    "tag_with_a_dot": (lambda tmp: ["save-weights", "--checkpoint", "x.ckpt", "--tag", "a.b"],
                       "--tag: 'a.b' is not a weights tag; use letters, digits, _ and -"),
    "empty_tag": (lambda tmp: ["save-weights", "--checkpoint", "x.ckpt", "--tag", ""], "--tag: '' is not a weights tag"),
    "tag_with_a_slash": (lambda tmp: ["save-weights", "--checkpoint", "x.ckpt", "--tag", "a/b"],
                         "--tag: 'a/b' is not a weights tag"),
    "model_given_another_librarys_weights_file": (
        lambda tmp: ["classify", "x.png", "--model", "/w/resnet18.pth"],
        "--model: '/w/resnet18.pth' is not a weights file visattn saved: --model takes a registered name, ARCH.TAG "
        "(`visattn models`) or the ARCH.TAG.safetensors file `visattn save-weights` wrote; --checkpoint FILE takes "
        "only checkpoints written by `visattn fit`; save another library's weights as ARCH.TAG in Python"),
    "model_given_a_missing_weights_file": (
        lambda tmp: ["classify", _image(tmp), "--model", str(tmp / "se_resnet20_cifar.mine.safetensors")],
        "se_resnet20_cifar.mine.safetensors: weights file not found; check the path, or give a registered name or "
        "ARCH.TAG (`visattn models --pretrained`)"),
    "model_given_a_checkpoint": (lambda tmp: ["classify", "x.png", "--model", "runs/last.ckpt"],
                                 "--model: 'runs/last.ckpt' is a training checkpoint: pass it as --checkpoint FILE"),
    "model_given_a_timm_name": (lambda tmp: ["classify", "x.png", "--model", "timm:resnet18"],
                                "--model: 'timm:resnet18': timm: names go in a `visattn fit` config"),
    "model_given_a_hub_name": (lambda tmp: ["classify", "x.png", "--model", "hf-hub:timm/resnet18.a1_in1k"],
                               "--model: 'hf-hub:timm/resnet18.a1_in1k': hf-hub: names go in a `visattn fit` config"),
    "checkpoint_given_a_weights_file": (lambda tmp: ["classify", "x.png", "--checkpoint", _vit_weights(tmp)],
                                        "vit.safetensors: not a Lightning checkpoint (no state_dict); --checkpoint "
                                        "and --ckpt_path take the .ckpt files `visattn fit` writes"),
    "models_matching_nothing": (lambda tmp: ["models", "nomatch*"],
                                "no model matches 'nomatch*'; see `visattn models` for the full list"),
    "beam_size_for_a_classifier": (lambda tmp: ["evaluate", "--model", CLASSIFIER, "--dataset", "fashion-mnist",
                                                "--beam-size", "3"],
                                   f"--beam-size: {CLASSIFIER} is a classifier, and only a captioner takes "
                                   "--beam-size; drop it"),
    "length_penalty_for_a_detector": (lambda tmp: ["evaluate", "--model", DETECTOR, "--dataset", "fashion-scenes",
                                                   "--length-penalty", "0"],
                                      f"--length-penalty: {DETECTOR} is a detector, and only a captioner takes "
                                      "--length-penalty; drop it"),
    "length_penalty_not_a_number": (lambda tmp: ["caption", "x.png", "--model", CAPTIONER, "--length-penalty", "nan"],
                                    "argument --length-penalty: 'nan' is not a finite number"),
    "img_size_for_a_detector": (lambda tmp: ["evaluate", "--model", DETECTOR, "--dataset", "fashion-scenes",
                                             "--img-size", "96"],
                                f"--img-size: {DETECTOR} is a detector, and only a classifier takes --img-size; drop it"),
    "pointing_target_for_a_captioner": (lambda tmp: ["evaluate", "--model", CAPTIONER, "--dataset", "fashion-scenes",
                                                     "--pointing-target", "label"],
                                        f"--pointing-target: {CAPTIONER} is a captioner, and only a classifier takes "
                                        "--pointing-target; drop it"),
    "pointing_target_on_pairs": (lambda tmp: ["evaluate", "--model", "se_resnet20_cifar.fmnist", "--dataset",
                                              "fashion-mnist-pairs", "--pointing-target", "prediction"],
                                 "--pointing-target: applies to the one-item scenes fashion-scenes and "
                                 "fashion-mnist-canvas, not fashion-mnist-pairs; drop it"),
    "pointing_target_for_rollout": (lambda tmp: ["evaluate", "--model", "vit_tiny_patch4_28.fmnist", "--dataset",
                                                 "fashion-mnist-canvas", "--pointing-target", "label"],
                                    "--pointing-target: vit_tiny_patch4_28.fmnist is scored with rollout, whose maps "
                                    "do not depend on the class; drop it, or add --pointing-method gradrollout (or "
                                    "gradcam)"),
    "faithfulness_on_the_pointing_scenes": (lambda tmp: ["evaluate", "--model", "se_resnet20_cifar.fmnist", "--dataset",
                                                         "fashion-mnist-pairs", "--faithfulness", "gradcam"],
                                            "--faithfulness: scores a classifier's maps on fashion-mnist or an "
                                            "imagefolder: dataset, not the pointing scenes fashion-mnist-pairs; drop "
                                            "it, or pick such a dataset"),
    "faithfulness_fill_alone": (lambda tmp: ["evaluate", "--model", "se_resnet20_cifar.fmnist", "--dataset",
                                             "fashion-mnist", "--faithfulness-fill", "mean"],
                                "--faithfulness-fill: applies with --faithfulness METHOD; add it, or drop "
                                "--faithfulness-fill"),
    "faithfulness_for_a_detector": (lambda tmp: ["evaluate", "--model", DETECTOR, "--dataset", "fashion-scenes",
                                                 "--faithfulness", "gradcam"],
                                    f"--faithfulness: {DETECTOR} is a detector, and only a classifier takes "
                                    "--faithfulness; drop it"),
    "faithfulness_method_that_does_not_fit": (lambda tmp: ["evaluate", "--model", "se_resnet20_cifar.fmnist",
                                                           "--dataset", "fashion-mnist", "--faithfulness", "rollout"],
                                              "--faithfulness rollout: does not fit ResNet; use gradcam or gradcam++"),
    "randomization_on_the_pointing_scenes": (lambda tmp: ["evaluate", "--model", CLASSIFIER, "--dataset",
                                                          "fashion-scenes", "--randomization", "gradcam"],
                                             "--randomization: scores a classifier's maps on fashion-mnist or an "
                                             "imagefolder: dataset, not the pointing scenes fashion-scenes; drop it, "
                                             "or pick such a dataset"),
    "randomization_mode_alone": (lambda tmp: ["evaluate", "--model", CLASSIFIER, "--dataset", "fashion-mnist",
                                              "--randomization-mode", "independent"],
                                 "--randomization-mode: applies with --randomization METHOD; add it, or drop "
                                 "--randomization-mode"),
    "randomization_for_a_captioner": (lambda tmp: ["evaluate", "--model", CAPTIONER, "--dataset", "fashion-scenes",
                                                   "--randomization", "gradcam"],
                                      f"--randomization: {CAPTIONER} is a captioner, and only a classifier takes "
                                      "--randomization; drop it"),
    "randomization_method_that_does_not_fit": (lambda tmp: ["evaluate", "--model", CLASSIFIER, "--dataset",
                                                            "fashion-mnist", "--randomization", "gates"],
                                               "--randomization gates: does not fit ResNet, which has no spatial "
                                               "attention gates"),
    "gradrollout_of_a_cnn": (lambda tmp: ["evaluate", "--model", "se_resnet20_cifar.fmnist", "--dataset",
                                          "fashion-mnist-pairs", "--pointing-method", "gradrollout"],
                             "--pointing-method gradrollout: rolls out a ViT's attention, and se_resnet20_cifar.fmnist "
                             "gives none; use gradcam or gradcam++"),
    "pointing_method_off_the_scenes": (lambda tmp: ["evaluate", "--model", "se_resnet20_cifar.fmnist", "--dataset",
                                                    "fashion-mnist", "--pointing-method", "gradcam++"],
                                       "--pointing-method: applies to the pointing scenes fashion-scenes, "
                                       "fashion-mnist-canvas, fashion-mnist-pairs, not fashion-mnist; drop it"),
    "pointing_method_for_a_detector": (lambda tmp: ["evaluate", "--model", DETECTOR, "--dataset", "fashion-scenes",
                                                    "--pointing-method", "gradcam"],
                                       f"--pointing-method: {DETECTOR} is a detector, and only a classifier takes "
                                       "--pointing-method; drop it"),
}
CASES.update(OUTPUT_AND_OPTION_CASES)
NEEDS_PROC = {"detect_out_takes_no_file", "caption_attention_out_takes_no_file", "export_path_problem_at_another_opset"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=needs_proc) if c in NEEDS_PROC else c
                                  for c in OUTPUT_AND_OPTION_CASES])
def test_output_and_option_mistakes_are_one_line(case, tmp_path, monkeypatch, capsys):
    test_user_mistake_is_one_line_and_exit_code_2(case, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("files_still_to_do", [200, 0])
def test_ctrl_c_that_lands_in_a_weakref_callback_still_stops_the_command(files_still_to_do, monkeypatch, capsys):
    """Python only prints a KeyboardInterrupt raised in a weakref callback (as garbage collection runs them): an
    audit's Ctrl-C during `explain --out-dir` of 400 images was lost 2 times in 6, and the run went on to the end.
    Raised again, it must arrive inside the command also when it lands in the command's last moment (a review's
    reached the caller's next statement)."""
    import time
    import weakref

    import visattn.cli as cli

    def interrupted_during_garbage_collection(args):
        class Thing:
            pass

        def callback(ref):
            raise KeyboardInterrupt  # where a SIGINT's handler raised it

        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing
        assert ref() is None  # collected, its callback run
        for _ in range(files_still_to_do):
            time.sleep(0.005)
        return 0

    monkeypatch.setattr(cli, "cmd_models", interrupted_during_garbage_collection)
    hook = sys.unraisablehook
    assert main(["models"]) == 130
    try:
        time.sleep(0.2)  # where a late interrupt would land, outside the command
    except KeyboardInterrupt:
        pytest.fail("the interrupt arrived after main() had returned")
    assert capsys.readouterr().err == "visattn: interrupted\n"
    assert sys.unraisablehook is hook  # the caller's again


def test_an_os_error_naming_a_file_is_one_line(monkeypatch, capsys):
    import visattn.cli as cli

    def denied(args):  # an OSError no command turned into its own message
        raise PermissionError(13, "Permission denied", "/srv/photos/a.png")

    monkeypatch.setattr(cli, "cmd_models", denied)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "visattn: error: /srv/photos/a.png: Permission denied\n"


def _inputs_and_outputs_in_one_place(tmp: Path) -> None:
    _photo(tmp / "inout" / "good.png")
    _photo(tmp / "victim.png")
    (tmp / "ck").mkdir()
    write_classifier_checkpoint(tmp / "ck" / "copy.ckpt")


OVERWRITES = {
    "detect": (["detect", "inout/", "--model", DETECTOR, "--out", "inout/"],
               "--out would write inout/good.png over the input file inout/good.png; choose another --out folder"),
    "caption": (["caption", "inout", "--model", CAPTIONER, "--attention-out", "inout"],
                "--attention-out would write inout/good.png over the input file inout/good.png; "
                "choose another --attention-out folder"),
    "explain": (["explain", "victim.png", "--model", CLASSIFIER, "--out", "victim.png"],
                "--out would write victim.png over the input file victim.png; choose another --out file"),
    "export": (["export", "--checkpoint", "ck/copy.ckpt", "--out", "ck/copy.ckpt"],
               "--out would write ck/copy.ckpt over the input file ck/copy.ckpt; choose another --out file"),
}


@pytest.mark.parametrize("command", OVERWRITES)
def test_no_command_writes_over_its_own_input(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _inputs_and_outputs_in_one_place(tmp_path)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    args, expected = OVERWRITES[command]
    assert main(args) == 2
    assert capsys.readouterr().err == f"visattn: error: {expected}\n"
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before  # nothing written


@pytest.mark.parametrize("attention_out", ["D", "./D/", "ABSOLUTE"])  # one folder, however it is spelt
def test_detect_out_and_attention_out_in_one_folder_write_two_files(attention_out, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "in" / "good.png")
    attention_out = str(tmp_path / "D") if attention_out == "ABSOLUTE" else attention_out
    code = main(["detect", "in", "--model", DETECTOR, "--score-threshold", "0.5", "--out", "D", "--attention-out",
                 attention_out, "--json"])
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and record["detections"], record
    assert (record["drawn"], record["attention"]) == ("D/good.png", "D/good-attention.png")
    assert sorted(path.name for path in (tmp_path / "D").iterdir()) == ["good-attention.png", "good.png"]


def test_in_one_folder_each_drawing_pairs_with_its_own_panels_by_name(tmp_path, monkeypatch, capsys):
    """An input named p-attention.png gave its drawing the name of p.png's panels (p.png's went to p-attention-2.png),
    and names that differ only in case (X.png, x.png) are one file on macOS and Windows."""
    monkeypatch.chdir(tmp_path)
    for name in ("p.png", "p-attention.png", "sub/p.png", "X.png", "x.png"):
        _photo(tmp_path / "in" / name)
    assert main(["detect", "in", "--model", DETECTOR, "--score-threshold", "0.5", "--out", "D", "--attention-out", "D",
                 "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    drawn = [Path(record["drawn"]).name for record in records]
    assert [Path(record["attention"]).name for record in records] == [f"{Path(n).stem}-attention.png" for n in drawn]
    written = [path.relative_to(tmp_path / "D").as_posix().casefold() for path in (tmp_path / "D").rglob("*.png")]
    assert len(records) == 5 and len(set(written)) == len(written) == 10, written


@pytest.mark.parametrize("command", [["detect", "photos", "--model", DETECTOR, "--out", "photos/drawn", "--json"],
                                     ["caption", "photos", "--model", CAPTIONER, "--attention-out", "photos/drawn",
                                      "--json"]])
def test_an_output_folder_inside_the_input_folder_is_not_read_as_input(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "photos" / "good.png")
    for _ in range(2):  # the second run neither reads the first run's drawing nor refuses to replace it
        assert main(command) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [record["file"] for record in records] == ["photos/good.png"]
    assert [path.name for path in (tmp_path / "photos" / "drawn").iterdir()] == ["good.png"]


@pytest.mark.parametrize("command, written", [
    (["detect", "photos", "--model", DETECTOR, "--out", "photos", "--attention-out", "photos", "--score-threshold",
      "0.5", "--json"], ["good.png", "good-attention.png", "map.png", "map-attention.png"]),
    (["caption", "photos", "--model", CAPTIONER, "--attention-out", "photos", "--json"], ["good.png", "map.png"]),
    (["explain", "photos", "--model", CLASSIFIER, "--out-dir", "photos", "--json"], ["good.png", "map.png"])])
def test_an_input_folder_given_as_the_output_folder_reads_the_photos_not_the_earlier_drawings(
        command, written, tmp_path, monkeypatch, capsys):
    """A rerun read the first run's drawing photos/good.png as an input and refused it, "would write photos/good.png
    over the input file photos/good.png", visattn's own drawing: no rerun into the input folder could run. Another
    command's output there is an input, as the user's photos are (a PNG of the name an output takes is refused)."""
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "photos" / "good.jpg")
    assert main(["explain", "photos/good.jpg", "--model", CLASSIFIER, "--out", "photos/map.jpg"]) == 0
    capsys.readouterr()
    for _ in range(2):
        assert main(command) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [record["file"] for record in records] == ["photos/good.jpg", "photos/map.jpg"]
    assert sorted(path.name for path in (tmp_path / "photos").iterdir()) == sorted(["good.jpg", "map.jpg", *written])
    if command[0] != "explain":  # another command's PNG: an input, whose output would replace it
        assert main(["explain", "photos/good.jpg", "--model", CLASSIFIER, "--out", "photos/other.png"]) == 0
        assert main(command) == 2
        assert "over the input file photos/other.png" in capsys.readouterr().err


def test_photos_in_an_output_folder_inside_the_input_are_named_not_skipped_silently(tmp_path, monkeypatch, capsys):
    """An audit's --attention-out inside its photo tree left three of four photos uncaptioned, exit 0, without a word."""
    monkeypatch.chdir(tmp_path)
    for name in ("a/x.jpg", "a/y.jpg", "b/x.jpg"):
        _photo(tmp_path / "photos" / name)
    assert main(["caption", "photos", "--model", CAPTIONER, "--attention-out", "photos/a", "--json"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["file"] for line in captured.out.splitlines()] == ["photos/b/x.jpg"]
    assert captured.err == ("warning: not read as input: photos/a/x.jpg and 1 more in the output folder, which visattn "
                            "did not write; name them as inputs, or write the output elsewhere\n")
    assert main(["caption", "photos", "--model", CAPTIONER, "--attention-out", "photos/a", "--json"]) == 0
    assert "and 1 more" in capsys.readouterr().err  # its own drawing there is not counted


@pytest.mark.parametrize("command, flag", [(["detect", "photos", "--model", DETECTOR, "--out", "photos/sub"], "--out"),
                                           (["caption", "photos", "--model", CAPTIONER, "--attention-out", "photos/sub"],
                                            "--attention-out")])
def test_an_output_folder_never_replaces_a_file_visattn_did_not_write(command, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "photos" / "good.png")
    users = _photo(tmp_path / "photos" / "sub" / "good.png", side=40)  # not read: inside the output folder
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert main(command) == 2
    assert capsys.readouterr().err == (
        "warning: not read as input: photos/sub/good.png in the output folder, which visattn did not write; name them "
        f"as inputs, or write the output elsewhere\nvisattn: error: {flag} would replace photos/sub/good.png, which "
        f"visattn did not write; move that file or choose another {flag} folder\n")
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
    users.rename(tmp_path / "photos" / "mine.png")
    assert main(command + ["--json"]) == 0
    written = json.loads(capsys.readouterr().out.splitlines()[0])
    assert Path(written.get("drawn") or written["attention"]) == Path("photos/sub/good.png")


@pytest.mark.parametrize("command", [["detect", "in", "--model", DETECTOR, "--score-threshold", "0.5", "--out", "D",
                                      "--attention-out", "D", "--json"],
                                     ["caption", "in", "--model", CAPTIONER, "--attention-out", "D", "--json"]])
def test_an_input_name_near_the_length_limit_gets_a_shortened_output_name(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    long_stem = "é" * 125 + "a"  # 251 bytes: STEM.png takes 255, the most a name takes; more, with "-attention.png"
    _photo(tmp_path / "in" / f"{long_stem}.png")
    _photo(tmp_path / "in" / "short.png")
    assert main(command) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    written = sorted(path.name for path in (tmp_path / "D").iterdir())
    assert len(records) == 2 and all(len(os.fsencode(name)) <= 255 for name in written), written
    for record in records:  # each written under a name that fits, the long one too
        assert (tmp_path / record["attention"]).is_file() and Path(record["attention"]).name in written
    long_record = next(record for record in records if long_stem in record["file"])
    assert Path(long_record.get("drawn") or long_record["attention"]).name == f"{long_stem}.png"  # 255 bytes: whole


@pytest.mark.parametrize("command", [["explain", "img.png", "--model", CLASSIFIER, "--out", "out/img.png"],
                                     # it named --out, which a folder of images cannot take (a preemption audit)
                                     ["explain", "img.png", "--model", CLASSIFIER, "--out-dir", "out"],
                                     ["detect", "img.png", "--model", DETECTOR, "--out", "out"]])
def test_a_write_that_runs_out_of_space_keeps_the_earlier_file(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "img.png")
    earlier = tmp_path / "out" / "img.png"
    earlier.parent.mkdir()
    _earlier_output(earlier)
    before = earlier.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # `ulimit -f 4`: writing past 4 KiB fails (EFBIG)
    try:
        code = main(command)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err
    flag = command[-2]
    assert code == 2 and err.startswith(f"visattn: error: {flag} out") and err.count("\n") == 1, err
    assert "cannot write there (File too large); free some space or choose another" in err
    assert err.endswith("choose another --out-dir folder\n") == (flag == "--out-dir"), err
    assert earlier.read_bytes() == before and list(earlier.parent.iterdir()) == [earlier]


def _earlier_output(path: Path) -> None:
    """A PNG as an earlier visattn run leaves it: marked, so a rerun may replace it."""
    from PIL import PngImagePlugin

    from visattn.fileio import PNG_SOFTWARE

    mark = PngImagePlugin.PngInfo()
    mark.add_text("Software", PNG_SOFTWARE)
    Image.new("RGB", (4, 4)).save(path, pnginfo=mark)


def test_explain_writes_the_format_its_suffix_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "img.png")
    assert main(["explain", "img.png", "--model", CLASSIFIER, "--out", "map.jpg"]) == 0
    with Image.open(tmp_path / "map.jpg") as written:
        assert written.format == "JPEG"
    assert main(["explain", "img.png", "--model", CLASSIFIER, "--out", "map.xyz"]) == 2
    assert capsys.readouterr().err == ("visattn: error: map.xyz: cannot write .xyz images; "
                                       "name the file .png, .jpg, .svg or .pdf\n")
    assert not (tmp_path / "map.xyz").exists()
    for suffix in ("tiff", "webp", "eps"):  # matplotlib writes them, but unmarked: a rerun refused to replace them
        assert main(["explain", "img.png", "--model", CLASSIFIER, "--out", f"map.{suffix}"]) == 2
        assert capsys.readouterr().err.startswith(f"visattn: error: map.{suffix}: cannot write .{suffix} images; name")


@pytest.mark.parametrize("index, problem", [("[1, 2]", 'not a JSON object of "ARCH.TAG": entry'),
                                            ('{"se_resnet20_cifar.x": {"sha256": "0"}}',
                                             "entry 'se_resnet20_cifar.x' is not an \"ARCH.TAG\" object with \"file\"")])
@pytest.mark.parametrize("command", [["models"], ["classify", "x.png", "--model", "se_resnet20_cifar"]])
def test_a_malformed_weights_index_is_one_line_naming_it(index, problem, command, weights_tmp, capsys):
    (weights_tmp / "index.json").write_text(index)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"visattn: error: {weights_tmp / 'index.json'}: unreadable weights index ({problem}")
    assert err.count("\n") == 1 and "restore it from git or a backup" in err


@pytest.mark.parametrize("index", ["{not json", "[1, 2]"])
def test_save_weights_checks_the_index_before_writing_anything(index, tmp_path, capsys):
    out_dir = tmp_path / "w2"
    out_dir.mkdir()
    (out_dir / "index.json").write_text(index)
    for overwrite in ([], ["--overwrite"]):
        assert main(_save_weights(tmp_path, "--out-dir", str(out_dir), *overwrite)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"visattn: error: {out_dir / 'index.json'}: unreadable weights index") and err.count("\n") == 1
    assert [path.name for path in out_dir.iterdir()] == ["index.json"]  # no orphan weights file


def test_save_weights_refuses_a_taken_name_before_the_test_set_measurement(tmp_path, monkeypatch, capsys):
    """The measurement of --dataset can take minutes: a name taken is refused before it, not after."""
    import visattn.cli as cli

    out_dir = tmp_path / "w"
    assert main(_save_weights(tmp_path, "--out-dir", str(out_dir))) == 0
    before = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    measured = []
    monkeypatch.setattr(cli, "_test_scores", lambda *args: measured.append(args) or {"top1": 0.5})
    assert main(_save_weights(tmp_path, "--out-dir", str(out_dir), "--dataset", "fashion-mnist")) == 2
    assert "already exist; pick another --tag, or pass --overwrite" in capsys.readouterr().err
    assert measured == [] and {path.name: path.read_bytes() for path in out_dir.iterdir()} == before


@pytest.mark.filterwarnings("ignore:.*saved without preprocessing or labels")
def test_save_weights_keeps_weights_another_run_saved_under_its_name_meanwhile(tmp_path, monkeypatch, capsys):
    """Two save-weights of one --tag at once, or one during a long --dataset measurement: the name checked free at
    the start is checked again under the index's lock, and the other run's weights and entry are kept."""
    import visattn.pretrained as pretrained
    import visattn.weights_saving as weights_saving

    out_dir, checked, others = tmp_path / "w", weights_saving.refuse_existing_weights, []

    def another_run_saves_meanwhile(path, overwrite=False):
        checked(path, overwrite=overwrite)
        if not others and not overwrite:  # free at the first check; then another process saves weights of that name
            others.append(pretrained.save_weights(create_model("cbam_resnet20_cifar", num_classes=3), path,
                                                  overwrite=True))

    monkeypatch.setattr(weights_saving, "refuse_existing_weights", another_run_saves_meanwhile)
    assert main(_save_weights(tmp_path, "--out-dir", str(out_dir))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights cbam_resnet20_cifar.t already exist; pick another --tag" in err
    saved = out_dir / "cbam_resnet20_cifar.t.safetensors"
    index = json.loads((out_dir / "index.json").read_text())
    assert pretrained.sha256_of(saved) == index["cbam_resnet20_cifar.t"]["sha256"] == others[0]["sha256"]


@pytest.mark.parametrize("others", [[], ["mine"]], ids=["alone", "after_another"])
def test_a_weights_folder_that_does_not_exist_is_named(others, tmp_path, monkeypatch, capsys):
    """A mistyped folder is named, not skipped: weights of the same name in a later folder would load instead."""
    for folder in others:
        (tmp_path / folder).mkdir()
    monkeypatch.setenv("VISATTN_WEIGHTS", os.pathsep.join(str(tmp_path / f) for f in [*others, "nowhere"]))
    assert main(["classify", "x.png", "--model", CLASSIFIER]) == 2
    assert capsys.readouterr().err == (f"visattn: error: the weights folder {tmp_path / 'nowhere'} in VISATTN_WEIGHTS "
                                       "does not exist; create it, or take it out of VISATTN_WEIGHTS\n")


def test_an_unreadable_file_is_named_once(tmp_path, capsys):
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    assert main(["classify", str(text), "--model", CLASSIFIER]) == 1
    assert capsys.readouterr().out == (f"{text}: error: not a supported image (unknown format or not an image at all); "
                                       "give JPEG, PNG, WebP, TIFF, BMP, GIF or AVIF files, or remove it\n")


def test_a_read_only_one_pixel_image_converts_without_a_torch_warning():
    image = np.full((1, 1, 3), 255, np.uint8)
    image.flags.writeable = False  # as decoded images are
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # else torch warns once per process, maybe before this test
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(to_tensor(image), torch.ones(3, 1, 1))
    finally:
        torch.set_warn_always(warn_always)


def test_refusing_a_hostile_pickle_prints_no_torch_warning(tmp_path, capsys):
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:  # the legacy format, whose pickle protocol torch notes in a warning
        pickle.dump({"state_dict": {"w": _CreatesFile(str(tmp_path / "pwned.txt"))}}, f)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code = main(["classify", "x.png", "--checkpoint", str(evil)])
    err = capsys.readouterr().err
    assert code == 2 and [str(w.message) for w in seen] == []
    assert err.startswith(f"visattn: error: {evil}: ") and err.count("\n") == 1 and not (tmp_path / "pwned.txt").exists()


# ------------------------------------------------------------------ warnings

def _as_on_a_terminal(message, category, filename, lineno, file=None, line=None):
    """Python's own showwarning, to stderr: pytest would record the warnings instead of printing them."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _warnings_shown_as_on_a_terminal():
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # whatever pytest was told: shown, not raised or deduplicated
        warnings.showwarning = _as_on_a_terminal
        yield


def test_a_skipped_image_warning_is_one_line(tmp_path, monkeypatch, capsys):
    """Python prints a warning as two lines, ``FILE:LINE: SkippedImageWarning: ...`` and its source line."""
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "photos" / "test", classes=("Trouser", "Bag"), per_class=1, broken=("Bag",))

    with _warnings_shown_as_on_a_terminal():
        assert main(["evaluate", "--model", CLASSIFIER, "--dataset", "imagefolder:photos", "--json"]) == 0
        assert warnings.showwarning is _as_on_a_terminal  # the command's format ends with the command
    err = capsys.readouterr().err.splitlines()
    skipped = [line for line in err if "broken.jpg" in line]
    broken = Path("photos", "test", "Bag", "broken.jpg")
    assert len(skipped) == 1, err
    assert skipped[0].startswith(f"warning: skipping {broken}: truncated or corrupt image data"), err
    assert not any("warnings.warn(" in line or "Warning:" in line for line in err), err


def test_only_the_warnings_visattn_issues_change_format(monkeypatch, capsys):
    """Each of visattn's warnings is a VisattnWarning; a library's warning that points into visattn
    (as Lightning's rank_zero_warn does) keeps its own format."""
    import visattn.cli as cli
    from visattn.data import SkippedImageWarning
    from visattn.errors import VisattnWarning

    def warn(args):
        warnings.warn("a visattn warning", SkippedImageWarning)
        warnings.warn("another visattn warning", VisattnWarning)
        warnings.warn_explicit("another library's warning", UserWarning, filename=cli.__file__, lineno=1)
        return 0

    monkeypatch.setattr(cli, "cmd_models", warn)
    with warnings.catch_warnings(record=True) as seen:  # records what Python's own format would print
        warnings.simplefilter("always")
        assert main(["models"]) == 0
    assert capsys.readouterr().err == "warning: a visattn warning\nwarning: another visattn warning\n"
    assert [str(w.message) for w in seen] == ["another library's warning"]
    categories = {}
    for source in Path(cli.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "warnings.warn":
                given = node.args[1:2] + [k.value for k in node.keywords if k.arg == "category"]
                categories[f"{source.name}:{node.lineno}"] = ast.unparse(given[0]) if given else "UserWarning"
    assert len(categories) >= 6 and set(categories.values()) <= {"VisattnWarning", "SkippedImageWarning",
                                                                 "DeprecatedArgumentWarning", "MovedNameWarning"}, \
        categories


# ------------------------------------------------------------------ a monitored metric the run never logs

SMALL_FOLDER_FIT = ["--model.init_args.model_name", "se_resnet20_cifar", "--data.init_args.img_size", "16",
                    "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1",
                    "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]


@pytest.mark.parametrize("no_validation, named", [
    pytest.param(["--data.init_args.val_fraction", "0"],
                 "(ImageFolderDataModule holds no validation data); give it validation data "
                 "(now data.init_args val_root null, val_fraction 0.0)",
                 id="val_fraction_0"),
    pytest.param(["--trainer.limit_val_batches", "0"],
                 "(trainer.limit_val_batches 0); set trainer.limit_val_batches above 0", id="limit_val_batches_0"),
    pytest.param(["--trainer.check_val_every_n_epoch", "2"],
                 "(trainer.check_val_every_n_epoch 2 > trainer.max_epochs 1)", id="check_val_after_the_last_epoch"),
])
def test_a_checkpoint_monitoring_validation_in_a_run_without_it_is_refused_before_training(
        no_validation, named, tmp_path, monkeypatch, capsys):
    """Lightning would train the whole run, warn that val/top1 is missing and never write best-*.ckpt."""
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", per_class=4)
    code = main(["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "photos", *SMALL_FOLDER_FIT,
                 *no_validation])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("visattn: error:")]
    assert code == 2 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert errors[0].startswith("visattn: error: trainer.callbacks: ModelCheckpoint(monitor='val/top1') would never "
                                "see val/top1, as this run never validates "), err
    assert named in errors[0] and errors[0].endswith(", monitor a train/ metric, or drop the callback"), err
    assert "Traceback" not in err and "could not find the monitored key" not in err
    assert not (tmp_path / "outputs").exists()  # refused before anything was trained or written


def test_a_checkpoint_folder_that_cannot_be_written_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    """A file where the folder goes (or a read-only one) was found at the first save, after a whole epoch."""
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", per_class=4)
    (tmp_path / "outputs" / "imagefolder_template").mkdir(parents=True)
    (tmp_path / "outputs" / "imagefolder_template" / "checkpoints").write_text("my notes\n")
    trained = []
    monkeypatch.setattr(ImageClassifier, "training_step", lambda *args: trained.append(1))
    assert main(["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "photos", *SMALL_FOLDER_FIT]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (f"visattn: error: ModelCheckpoint dirpath {tmp_path}/outputs/imagefolder_template/checkpoints: "
                   "cannot write there (a file stands where a folder is needed); choose a writable ModelCheckpoint "
                   "dirpath folder")
    assert not trained and (tmp_path / "outputs" / "imagefolder_template" / "checkpoints").read_text() == "my notes\n"


@pytest.mark.parametrize("naming", ["-c", "short class names"])
def test_a_task_named_by_c_or_a_short_class_name_gets_the_datas_labels(naming, tmp_path, monkeypatch, capsys):
    """`-c` (which --help lists) and `class_path: ImageClassifier` had trained the task's default 10-class head on
    3 classes, with no labels or preprocessing in the checkpoint, exit 0."""
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", classes=("cat", "dog", "fox"), per_class=4)
    config = IMAGEFOLDER_CONFIG
    if naming != "-c":
        config = tmp_path / "short.yaml"
        config.write_text(re.sub(r"class_path: visattn\.(tasks|data)\.\w+\.", "class_path: ",
                                 IMAGEFOLDER_CONFIG.read_text()))
        assert "class_path: ImageClassifier" in config.read_text()
    flag = "-c" if naming == "-c" else "--config"
    assert main(["fit", flag, str(config), "--data.init_args.root", "photos", *SMALL_FOLDER_FIT]) == 0
    saved = torch.load(tmp_path / "outputs" / "imagefolder_template" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["num_classes"] == 3
    assert saved["hyper_parameters"]["class_names"] == ["cat", "dog", "fox"] and saved["hyper_parameters"]["preprocessing"]


def test_a_fit_into_a_checkpoint_folder_another_fit_is_writing_is_one_line_before_training(tmp_path, monkeypatch,
                                                                                            capsys):
    """Two runs of one config (two terminals) had saved into one folder, each overwriting the other's last.ckpt."""
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", per_class=4)
    folder = tmp_path / "outputs" / "imagefolder_template" / "checkpoints"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from visattn.fileio import claim_folder; "
                               f"claim_folder({str(folder)!r}, setting='x', task='y'); print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        trained = []
        monkeypatch.setattr(ImageClassifier, "training_step", lambda *args: trained.append(1))
        fit = ["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "photos", *SMALL_FOLDER_FIT]
        assert main(fit) == 2
        err = capsys.readouterr().err.splitlines()[-1]
        assert err == (f"visattn: error: ModelCheckpoint dirpath {folder}: another visattn fit (process {holder.pid}) "
                       "is writing there; wait for it to end, or give this run another folder")
        assert not trained and not list(folder.iterdir())  # the lock lies beside it: Lightning warned of a full folder
    finally:
        holder.communicate("")
    monkeypatch.undo()  # the training step back: once the other run has ended, the folder is this run's
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    assert main(fit) == 0 and (folder / "last.ckpt").is_file()
    assert main([*fit, "--ckpt_path", "last", "--trainer.max_epochs", "2"]) == 0  # this process holds it: resumes


@pytest.mark.parametrize("free, size_limit, reason", [
    (0, None, "No space left on device"),
    # it was "torch could not write it: [enforce fail ...]; give a folder you can write to" (a preemption audit)
    (1 << 30, 5000, "File too large: the file-size limit (ulimit -f) is 5000 bytes"),
    # a limit the write did not reach is not blamed (a review: any limit set had been)
    (1 << 30, 1 << 40, "torch could not write it: [enforce fail at inline_container.cc:672] . unexpected pos 5578816 "
                       "vs 5578708")])
def test_a_full_disk_at_a_checkpoint_save_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys, free,
                                                                                 size_limit, reason):
    """torch's zip writer reports a full disk as a RuntimeError ("unexpected pos ..."), which no handler took for a
    write error: a 60-line traceback."""
    import resource
    from collections import namedtuple

    import visattn.tasks.checkpoint_io as checkpoint_io
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", per_class=4)

    def disk_full(obj, file, *args, **kwargs):
        Path(file).write_bytes(b"PK\x03\x04 part of a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5578816 vs 5578708")

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_full)
    monkeypatch.setattr(checkpoint_io.shutil, "disk_usage", lambda path: namedtuple("Usage", "total used free")(1, 1,
                                                                                                             free))
    limit = resource.RLIM_INFINITY if size_limit is None else size_limit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limit, limit))
    assert main(["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "photos", *SMALL_FOLDER_FIT]) == 2
    folder = tmp_path / "outputs" / "imagefolder_template" / "checkpoints"
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"visattn: error: the ModelCheckpoint dirpath {folder}: {reason} ({folder}/")
    fix = "give a folder you can write to" if reason.startswith("torch") else "free some space, or give another folder"
    assert err.endswith(f"); {fix}")
    assert not list(folder.iterdir())  # no partial checkpoint


@pytest.mark.parametrize("command", [["detect", "good.png", "--model", DETECTOR, "--out", "drawn"],
                                     ["explain", "good.png", "--model", CLASSIFIER, "--out", "drawn"]])
def test_an_output_that_is_a_link_to_nowhere_is_named_as_such_and_kept(command, tmp_path, monkeypatch, capsys):
    """A folder link to nowhere was "a file stands where a folder is needed"; explain --out replaced the user's link
    with a regular file."""
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "good.png")
    (tmp_path / "drawn").symlink_to(tmp_path / "nowhere" / "x")
    assert main(command) == 2
    assert capsys.readouterr().err == (f"visattn: error: --out drawn: a link to {tmp_path}/nowhere/x, which does not "
                                       "exist; create its target or give another --out\n")
    assert (tmp_path / "drawn").is_symlink()


@pytest.mark.parametrize("callback", ["LearningRateMonitor", "DeviceStatsMonitor"])
def test_a_logger_turned_off_beside_a_logging_callback_names_both_settings_and_writes_nothing(
        callback, tmp_path, monkeypatch, capsys):
    """Lightning refuses these callbacks without a logger once the run has started ("Cannot use
    `LearningRateMonitor` callback with `Trainer` that has no logger"), after the run's config.yaml and checkpoint
    folder claim were written."""
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", per_class=4)
    assert main(["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "photos", *SMALL_FOLDER_FIT,
                 "--trainer.logger", "false", f"--trainer.callbacks={callback}", "--trainer.max_steps", "1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"visattn: error: fit: trainer.logger is off, and trainer.callbacks' {callback} logs to it; drop "
        f"{callback} from trainer.callbacks, or keep a logger")
    assert not (tmp_path / "outputs").exists()


def test_a_run_without_validation_and_no_monitored_callback_trains(tmp_path, monkeypatch, capsys):
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", per_class=4)
    config = yaml.safe_load(IMAGEFOLDER_CONFIG.read_text())
    config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"] if "monitor" not in c["init_args"]]
    (tmp_path / "unmonitored.yaml").write_text(yaml.safe_dump(config))
    code = main(["fit", "--config", "unmonitored.yaml", "--data.init_args.root", "photos", *SMALL_FOLDER_FIT,
                 "--data.init_args.val_fraction", "0"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "outputs" / "imagefolder_template" / "checkpoints" / "last.ckpt").is_file()


def test_a_setting_lightning_refuses_once_the_run_starts_is_one_line(tmp_path, monkeypatch, capsys):
    """A fraction of validation batches that rounds to none: Lightning raises as fit starts (it printed a traceback)."""
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", per_class=4)
    code = main(["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "photos", *SMALL_FOLDER_FIT,
                 "--trainer.limit_val_batches", "0.01", "--trainer.num_sanity_val_steps", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("visattn: error: fit: ") and "limit_val_batches" in last, err
    assert last.endswith("fix the setting it names in the config or with --SECTION.KEY VALUE"), err


def test_a_smoke_run_that_ends_before_validating_says_so_in_one_line(tmp_path, monkeypatch, capsys, caplog):
    """Lightning warned at the end, in its own format, that val/top1 was missing; and every run printed a
    torch deprecation from Lightning's code and an advert for Lightning's cloud logger."""
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", per_class=4)

    with _warnings_shown_as_on_a_terminal():
        code = main(["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "photos", *SMALL_FOLDER_FIT,
                     "--data.init_args.batch_size", "2", "--trainer.max_steps", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    # 7 training images in batches of 2, the last dropped: validation comes after step 3
    assert ("warning: trainer.max_steps 1 ends the run before its first validation (after step 3): "
            "ModelCheckpoint(monitor='val/top1') will see no val/top1; use last.ckpt, or train 3 steps or more") in err
    assert "could not find the monitored key" not in err and "LeafSpec" not in err, err
    assert not any("Tip:" in record.getMessage() for record in caplog.records)


def test_the_config_warnings_of_a_fit_are_the_first_processs_to_say(tmp_path, monkeypatch, capsys):
    """Lightning starts a DDP run's other processes as the same command: the lr 0 and warm-up warnings had come
    once per process (a DDP audit); the other processes build the run without a word."""
    from lightning.pytorch.utilities import rank_zero_only

    from fixtures_images import write_image_folder

    monkeypatch.setattr(sys, "argv", ["visattn"])
    photos = write_image_folder(tmp_path / "photos", per_class=4)
    said = []
    for rank in (1, 0):
        (tmp_path / f"rank{rank}").mkdir()
        monkeypatch.chdir(tmp_path / f"rank{rank}")  # each run its own outputs/
        monkeypatch.setattr(rank_zero_only, "rank", rank)
        with _warnings_shown_as_on_a_terminal():
            # parsing (--ckpt_path last, nothing to resume), checking (lr), building the trainer (default_root_dir)
            # and before_fit (max_steps ends the run before its first validation) warn
            assert main(["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", str(photos),
                         *SMALL_FOLDER_FIT, "--model.init_args.lr", "0", "--data.init_args.batch_size", "2",
                         "--trainer.max_steps", "1", "--trainer.default_root_dir", "elsewhere",
                         "--ckpt_path", "last"]) == 0
        said.append([line.partition(":")[2].split()[0] for line in capsys.readouterr().err.splitlines()
                     if line.startswith("warning: ")])
    assert said == [[], ["--ckpt_path", "model.init_args.lr", "trainer.default_root_dir", "trainer.max_steps"]]


def test_a_fit_that_would_not_learn_or_writes_elsewhere_than_asked_says_so(tmp_path, monkeypatch, capsys):
    """lr 0, a warm-up longer than the run and a default_root_dir that the config's checkpoint and log
    folders ignore went by without a word (the run wrote into ./outputs)."""
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", per_class=4)
    with _warnings_shown_as_on_a_terminal():
        code = main(["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "photos", *SMALL_FOLDER_FIT,
                     "--trainer.max_steps", "1", "--model.init_args.lr", "0", "--model.init_args.warmup_epochs", "5",
                     "--trainer.max_epochs", "1", "--trainer.max_steps", "-1", "--trainer.limit_train_batches", "1",
                     "--trainer.default_root_dir", "elsewhere"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: model.init_args.lr 0: the weights will not change" in err
    assert ("warning: model.init_args.warmup_epochs 5.0 is longer than the run (trainer.max_epochs 1): the learning "
            "rate reaches model.init_args.lr only at the run's final step and never decays") in err
    moved = [line for line in err.splitlines() if line.startswith("warning: trainer.default_root_dir elsewhere: ")]
    assert len(moved) == 1 and moved[0].count(f"ModelCheckpoint dirpath {tmp_path}/outputs/") == 1, err  # it was twice
    assert moved[0].endswith(" stay where they are; set those too to move them"), err
    # given in a second config file rather than typed, or in a file of trainer settings (a review: no word, once the
    # warning spared a config's own root), it is warned about alike
    (tmp_path / "root.yaml").write_text("trainer:\n  default_root_dir: second\n")
    (tmp_path / "trainer.yaml").write_text("default_root_dir: third\n")
    for moving, root, folder in ((["--config", "root.yaml"], "second", "mine"),
                                 (["--trainer", "trainer.yaml"], "third", "mine2")):
        with _warnings_shown_as_on_a_terminal():
            assert main(["fit", "--config", str(IMAGEFOLDER_CONFIG), *moving, "--data.init_args.root", "photos",
                         *SMALL_FOLDER_FIT, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                         "--trainer.callbacks=[]", "--trainer.callbacks+=ModelCheckpoint",
                         "--trainer.callbacks.dirpath", folder]) == 0
        err = capsys.readouterr().err
        assert f"warning: trainer.default_root_dir {root}: the config's logger's save_dir " in err, err
        assert "ModelCheckpoint dirpath" not in err  # the one typed is where it was asked to be


@pytest.mark.parametrize("warmup, said", [(2, "as long as"), (3, "longer than"), (1.5, None)])
def test_a_warm_up_as_long_as_the_run_is_warned_of_as_one_that_never_decays(warmup, said):
    """The warm-up ends a step before the run at the latest, so one as long as the run (silent) and one longer
    (said never to reach lr, which it does at the last step) both leave the rate undecayed (a recipe audit)."""
    from jsonargparse import Namespace

    from visattn.tasks.setting_checks import _check_training

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _check_training(Namespace(init_args=Namespace(warmup_epochs=warmup, lr=0.001)),
                        Namespace(max_epochs=2, max_steps=-1))
    messages = [str(w.message) for w in caught]
    assert messages == ([] if said is None else [
        f"model.init_args.warmup_epochs {warmup} is {said} the run (trainer.max_epochs 2): the learning rate reaches "
        "model.init_args.lr only at the run's final step and never decays; shorten the warm-up"])


@pytest.mark.parametrize("logs", ["scratch/logs", "~/runs/logs"])
def test_a_configs_own_root_beside_its_folders_is_not_warned_about_and_a_tilde_in_them_is_home(logs, tmp_path,
                                                                                             monkeypatch, capsys):
    """A config keeping its logs apart from its default_root_dir was warned on every run that the logger's folder
    "stays where it is", though nothing moved it; a ~ in its folders also left a literal ./~ folder in the working
    folder, checked and made as written (an operations audit)."""
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", per_class=4)
    text = IMAGEFOLDER_CONFIG.read_text().replace("save_dir: outputs/imagefolder_template", f"save_dir: {logs}")
    text = text.replace("outputs/imagefolder_template", "~/runs/template" if logs.startswith("~") else "outputs/mine")
    (tmp_path / "mine.yaml").write_text(text)
    with _warnings_shown_as_on_a_terminal():
        code = main(["fit", "--config", "mine.yaml", "--data.init_args.root", "photos", *SMALL_FOLDER_FIT,
                     "--trainer.limit_train_batches", "1"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: trainer.default_root_dir" not in err, err
    assert {path.name for path in tmp_path.iterdir()} - {"home"} == {
        "mine.yaml", "photos", *(["outputs", "scratch"] if logs == "scratch/logs" else [])}
    if logs.startswith("~"):
        assert (tmp_path / "home" / "runs" / "template" / "checkpoints" / "last.ckpt").is_file()
        assert list((tmp_path / "home" / "runs" / "logs").glob("*/version_0/metrics.csv"))


@pytest.mark.parametrize("args, named", [
    (["classify", "photos", "--checkpiont", "X"], "visattn classify: unrecognized argument --checkpiont "
                                                  "(did you mean --checkpoint?)"),
    (["classify", "photos", "--model", CLASSIFIER, "--jsn"], "visattn classify: unrecognized argument --jsn "
                                                            "(did you mean --json?)"),
    (["classify", "photos", "--model", CLASSIFIER, "--zzzzzz"], "visattn classify: unrecognized argument --zzzzzz"),
])
def test_a_mistyped_option_is_named_before_a_missing_required_one(args, named, capsys):
    """argparse checked the required --model/--checkpoint first and never named --checkpiont."""
    with pytest.raises(SystemExit) as exit:  # argparse's usage errors exit, as argparse does
        main(args)
    assert exit.value.code == 2
    assert capsys.readouterr().err == f"visattn: error: {named}; see `visattn classify --help`\n"


def test_a_file_named_like_an_option_gets_the_hint_to_name_it_as_a_path(tmp_path, monkeypatch, capsys):
    """`classify -dash.png` said "unrecognized argument -dash.png" without saying how to give such a file."""
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "-dash.png")
    with pytest.raises(SystemExit) as exit:
        main(["classify", "-dash.png", "--model", CLASSIFIER])
    assert exit.value.code == 2 and capsys.readouterr().err == ("visattn: error: visattn classify: unrecognized argument -dash.png (a file? name "
                                       "it ./-dash.png, or put -- before it); see `visattn classify --help`\n")
    assert main(["classify", "--model", CLASSIFIER, "--", "-dash.png"]) == 0


def test_an_option_value_starting_with_a_dash_is_told_to_be_given_with_an_equals_sign(tmp_path, monkeypatch, capsys):
    """`explain --out -map.png` said "unrecognized argument -map.png", a file that was to be written."""
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "img.png")
    with pytest.raises(SystemExit) as exit:
        main(["explain", "img.png", "--model", CLASSIFIER, "--out", "-map.png"])
    assert exit.value.code == 2 and capsys.readouterr().err == (
        "visattn: error: visattn explain: --out -map.png: a value starting with '-' is read as an option; give it as "
        "--out=-map.png; see `visattn explain --help`\n")
    assert main(["explain", "img.png", "--model", CLASSIFIER, "--out=-map.png"]) == 0
    assert (tmp_path / "-map.png").is_file()
    for args, told in ((["--out", "-x=1.png"], "--out -x=1.png: a value starting with '-' is read as an option; give "
                                                "it as --out=-x=1.png"),
                       (["--out", "--jsn"], "unrecognized argument --jsn (did you mean --json?)"),  # a typo
                       (["--json", "-x.png"], "unrecognized argument -x.png"),  # no value to take
                       (["--out", "--zzzzzz"], "unrecognized argument --zzzzzz")):  # an option, the value left out
        with pytest.raises(SystemExit):
            main(["explain", "img.png", "--model", CLASSIFIER, *args])
        assert capsys.readouterr().err == f"visattn: error: visattn explain: {told}; see `visattn explain --help`\n"


@pytest.mark.parametrize("command", ["models", "evaluate", "classify", "caption", "detect", "explain", "save-weights",
                                     "export"])
def test_an_unknown_option_points_to_its_own_commands_help(command, capsys):
    """It said `see visattn --help`, where the command's options are not listed."""
    with pytest.raises(SystemExit) as exit:
        main([command, "--jsnn"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"visattn: error: visattn {command}: unrecognized argument --jsnn") and err.count("\n") == 1
    assert err.endswith(f"; see `visattn {command} --help`\n"), err


@pytest.mark.parametrize("command, shown", [
    ("classify", ["--topk TOPK", "(default: 1)", "(default: 32)", "(default: auto)"]),
    ("detect", ["(default: 0.5)", "(default: 8)"]),
    ("evaluate", ["16 for detectors) (default: 256)", "(default: 0)", "default: the size it was trained at"]),
    ("explain", ["(gradcam, gradcam++, gradrollout; default: the predicted class)"]),
    ("save-weights", ["drawn with a fixed seed, or fashion-scenes' first N"]),
    ("export", ["(default: 17)", "(default: onnx)"]),
])
def test_command_help_gives_each_default_and_what_paths_take(command, shown, capsys):
    """Defaults were in a few options' help only (`--topk`'s and `--batch-size`'s were not); PATH had no help."""
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width
    assert all(text in out for text in shown), out
    assert "(default: None)" not in out and "(default: False)" not in out and "(default: 17) (default" not in out
    if command in ("classify", "detect"):
        assert "PATH image files or folders; a folder's image files (by extension" in out


# Ctrl-C while the command imports torch, as a meta-path hook raises it at torch's import.
_INTERRUPTED_IMPORTING_TORCH = """
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
from visattn.__main__ import main
sys.exit(main())
"""


def test_ctrl_c_while_the_command_starts_is_one_line_and_import_visattn_leaves_torch_unimported():
    """Ctrl-C in the command's first second or two had been a traceback of wherever torch's import was."""
    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED_IMPORTING_TORCH, "models"], capture_output=True,
                          text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (130, "visattn: interrupted\n")
    probe = "import sys, visattn; print('torch' in sys.modules, visattn.create_model.__module__, 'torch' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert found.stdout.split() == ["False", "visattn.registry", "True"]
    import visattn

    assert all(callable(getattr(visattn, name)) for name in visattn.__all__)  # each name the package lists
    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["visattn"]
    assert entry == "visattn.__main__:main"


# Each --help, --version and a usage mistake, in one process: the exit codes, then whether torch or timm came in.
_HELP_WITHOUT_TORCH = """
import argparse, contextlib, io, sys
from visattn.cli import LIGHTNING_COMMANDS, build_parser, main
subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
mistakes = [["classify"], ["models", "--bogus"], ["classify", "--model", "se_resnet20_cifar.fmnist", "--bogus"],
            ["caption", "--model", "w.pth", "x.png"], ["save-weights", "x.ckpt", "--tag", "a.b"]]
argvs = [["--help"], ["--version"], *mistakes]
argvs += [[name, "--help"] for name in subcommands if name not in LIGHTNING_COMMANDS]
codes = []
for argv in argvs:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes.append(main(argv))
        except SystemExit as exit:
            codes.append(exit.code)
print(len(argvs), *codes, 'torch' in sys.modules, 'timm' in sys.modules)
"""


def test_help_version_and_usage_mistakes_answer_without_importing_torch():
    """`visattn --help` took 4 s, a command's --help and a mistyped option as long: the command imported torch
    and timm (through visattn.pretrained) before reading its arguments; now each takes about 0.1 s. A mistake
    after --model or --tag also took 4 s: checking their values imported torch."""
    found = subprocess.run([sys.executable, "-c", _HELP_WITHOUT_TORCH], capture_output=True, text=True, timeout=120,
                           check=True)
    count, *codes, torch_imported, timm_imported = found.stdout.split()
    assert int(count) == len(codes) > 7 and codes == ["0", "0"] + ["2"] * 5 + ["0"] * (len(codes) - 7), found.stdout
    assert (torch_imported, timm_imported) == ("False", "False")


_INFERENCE_WITHOUT_LIGHTNING = """
import contextlib, io, sys
from pathlib import Path
from PIL import Image
from visattn.cli import main
folder = Path(sys.argv[1])
Image.new("RGB", (64, 64), (200, 120, 40)).save(folder / "x.png")
argvs = [["classify", "--model", "se_resnet20_cifar.fmnist"], ["caption", "--model", "sat_cbam_resnet_scenes.scenes"],
         ["detect", "--model", "fcos_se_resnet20_cifar.scenes"], ["classify", "--checkpoint", str(folder / "cls.ckpt")],
         ["caption", "--checkpoint", str(folder / "sat.ckpt")], ["detect", "--checkpoint", str(folder / "fcos.ckpt")],
         ["explain", "--model", "se_resnet20_cifar.fmnist", "--out", str(folder / "map.png")]]
for argv in argvs:
    with contextlib.redirect_stdout(io.StringIO()):
        code = main([*argv, str(folder / "x.png"), "--device", "cpu"])
    print(argv[0], code, *sorted({"lightning", "torchmetrics", "scipy.optimize", "matplotlib"} & {*sys.modules}))
"""


def test_inference_commands_run_without_importing_lightning_or_torchmetrics(tmp_path):
    """`classify`, `explain`, `caption` and `detect` imported Lightning and torchmetrics (about 1.2 s of a 5 s
    `classify`) through the loaders, which sat beside the LightningModules in visattn.tasks; they live in
    visattn.inference now, DETR's matcher imports scipy.optimize when it matches, and matplotlib is imported
    when a map is drawn. Shipped weights and training checkpoints alike."""
    write_classifier_checkpoint(tmp_path / "cls.ckpt")
    write_captioner_checkpoint(tmp_path / "sat.ckpt")
    write_detector_checkpoint(tmp_path / "fcos.ckpt")
    found = subprocess.run([sys.executable, "-c", _INFERENCE_WITHOUT_LIGHTNING, str(tmp_path)], capture_output=True,
                           text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.splitlines() == [f"{command} 0" for command in ("classify", "caption", "detect") * 2] + [
        "explain 0 matplotlib"]


_EVALUATION_WITHOUT_LIGHTNING = """
import contextlib, io, json, sys
from visattn.cli import _test_scores, main
from visattn.inference import load_captioner, load_classifier, load_detector
def evaluate(model, dataset, *options):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(["evaluate", "--model", model, "--dataset", dataset, "--limit", "4", "--device", "cpu", "--json",
                     *options])
    print(model, dataset, code, sorted(json.loads(out.getvalue())))
evaluate("se_resnet20_cifar.fmnist", "fashion-mnist", "--per-class")
evaluate("se_resnet20_cifar.fmnist", "fashion-mnist-canvas")
print(sorted(_test_scores("classification", load_classifier("se_resnet20_cifar.fmnist"), "fashion-mnist", 4)))
print(*sorted({"lightning", "lightning.pytorch", "torchmetrics"} & {*sys.modules}))
models = ["sat_cbam_resnet_scenes.scenes", "fcos_se_resnet20_cifar.scenes", "detr_se_resnet20_cifar.scenes"]
for model in models:
    evaluate(model, "fashion-scenes")
print(sorted(_test_scores("captioning", load_captioner(models[0]), "fashion-scenes", 4)))
print(sorted(_test_scores("detection", load_detector(models[1]), "fashion-scenes", 4)))
print(*sorted({"lightning", "lightning.pytorch"} & {*sys.modules}))
"""


@needs_fashion_mnist
def test_evaluating_a_classifier_captioner_or_detector_imports_no_lightning():
    """`visattn evaluate` and save-weights' scores imported Lightning (about 2.7 s; a classifier's torchmetrics too,
    1.3 s of it) though they train nothing: the scoring and datasets sat beside the LightningModules and
    LightningDataModules; they live in visattn.inference.classifier_scoring, visattn.inference.caption_scoring,
    visattn.inference.detection_scoring, visattn.data.caption_samples and visattn.data.detection_samples now, and a
    classifier's scoring counts its hits itself."""
    found = subprocess.run([sys.executable, "-c", _EVALUATION_WITHOUT_LIGHTNING], capture_output=True, text=True,
                           timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    classified = ["n", "top1", "top5"]
    pointed = ["n", "pointing", "pointing_class_mean", "pointing_method", "top1"]
    captioned = ["bleu1", "bleu2", "bleu3", "bleu4", "cider", "n", "pointing", "rouge_l"]
    detected = ["map", "map50", "n"]
    assert found.stdout.splitlines() == [
        f"se_resnet20_cifar.fmnist fashion-mnist 0 {sorted([*classified, 'mean_class_accuracy', 'per_class'])}",
        f"se_resnet20_cifar.fmnist fashion-mnist-canvas 0 {pointed}", str(classified), "",
        f"sat_cbam_resnet_scenes.scenes fashion-scenes 0 {captioned}",
        f"fcos_se_resnet20_cifar.scenes fashion-scenes 0 {detected}",
        f"detr_se_resnet20_cifar.scenes fashion-scenes 0 {detected}", str(sorted([*captioned, "beam_size"])),
        str(detected), ""]


_MODELS_WITHOUT_AUGMENTATION = """
import sys, visattn
visattn.create_model("se_resnet20_cifar.fmnist")
visattn.list_pretrained()
import visattn.data
print(*sorted({"albumentations", "cv2", "visattn.data.transforms", "visattn.data.scenes", "visattn.data.coco",
               "visattn.data.image_folder"} & {*sys.modules}))
"""


def test_building_a_model_and_reading_the_weights_index_import_no_augmentation_library():
    """Every create_model and weights-index read imported visattn.data whole, albumentations, OpenCV and the COCO
    readers with it (0.4 s of a 4 s create_model, up to 1.4 s on a busy machine): a record's preprocessing is
    checked by visattn.data.preprocessing, and the package imports each name's module on first use."""
    found = subprocess.run([sys.executable, "-c", _MODELS_WITHOUT_AUGMENTATION], capture_output=True, text=True,
                           timeout=300, check=True)
    assert found.stdout.strip() == ""
    import visattn.data

    assert set(visattn.data.__all__) == set(dir(visattn.data)) & set(visattn.data.__all__)
    assert all(getattr(visattn.data, name) is not None for name in visattn.data.__all__)
    assert visattn.data.coco.__name__ == "visattn.data.coco"  # a submodule as an attribute, as before (a review)


@pytest.mark.parametrize("script, argv, usage", [
    (Path("visattn") / "cli.py", ["fit", "--help"], "usage: visattn [options] fit "),
    (Path("visattn") / "__main__.py", ["fit", "--data.help", "visattn.data.FashionMNISTDataModule"],
     "usage: visattn [--data.batch_size BATCH_SIZE]"),
])
def test_a_config_commands_help_names_visattn_under_python_m(script, argv, usage, monkeypatch, capsys):
    """Under `python -m visattn.cli` the usage line had read `cli.py [options] fit`, and a data module's help
    under `python -m visattn` `__main__.py [--data.batch_size ...]`."""
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(usage)


def test_a_task_class_of_a_users_module_named_like_a_model_is_no_model_name(tmp_path, monkeypatch):
    """`--model resnet18.MyTask` names a class of the user's resnet18.py, which LightningCLI imports: only a name
    that is no importable module's class is taken for a model name given to --model."""
    from visattn.tasks.cli_arguments import _refuse_model_names

    with pytest.raises(ConfigError, match="--model resnet18.MyTask: `visattn fit` runs a config's model"):
        _refuse_model_names(["fit", "--model", "resnet18.MyTask"])
    (tmp_path / "resnet18.py").write_text("MyTask = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _refuse_model_names(["fit", "--model", "resnet18.MyTask"])


@pytest.mark.parametrize("command, example", [
    ("fit", "`visattn fit --config configs/classification/se_resnet20_fmnist.yaml --trainer.max_epochs 5`"),
    ("validate", "`visattn validate --config CONFIG --ckpt_path CHECKPOINT`"),
    ("test", "`visattn test --config CONFIG --ckpt_path CHECKPOINT`"),
    ("predict", "`visattn classify|caption|detect FILES --model ARCH.TAG`")])
def test_a_config_commands_help_starts_with_what_it_does_and_an_example(command, example, monkeypatch, capsys):
    """Some 480 lines of options under "Runs the full optimization routine.", with no example and no word of
    `visattn configs` (an operations audit)."""
    monkeypatch.setattr(sys, "argv", ["visattn", command, "--help"])
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    out = capsys.readouterr().out
    about = " ".join(out.partition("\n\n")[2].partition("\n\n")[0].split())  # the paragraph after the usage lines
    assert exit.value.code == 0 and example in about and "`visattn configs` lists the shipped configs" in about, about
    assert "--model.help visattn.tasks.classification.ImageClassifier" in about  # a class path, as it takes


def test_a_tasks_and_data_modules_help_show_docstring_markup_as_plain_words(monkeypatch, capsys):
    """`--model.help` said `see :func:`visattn.create_model`.` and ``"photo"`` with its backticks (a help-text audit)."""
    shown = []
    for argv in (["fit", "--model.help", "visattn.tasks.classification.ImageClassifier"],
                 ["fit", "--data.help", "visattn.data.ImageFolderDataModule"]):
        monkeypatch.setattr(sys, "argv", ["visattn", *argv])
        with pytest.raises(SystemExit):
            main(argv)
        shown.append(" ".join(capsys.readouterr().out.split()))
    assert all("``" not in text and ":func:" not in text and ":class:" not in text for text in shown)
    assert "see visattn.create_model." in shown[0] and '"photo" (resized crop)' in shown[1]


def test_fit_help_does_not_offer_the_optimizer_options_every_run_refuses(monkeypatch, capsys):
    """`fit --help` listed LightningCLI's --optimizer and --lr_scheduler, which visattn refuses in one line pointing
    to the task's lr, weight_decay and warmup_epochs (from a help-text audit)."""
    monkeypatch.setattr(sys, "argv", ["visattn", "fit", "--help"])
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    shown = capsys.readouterr().out
    assert "--model.help" in shown and "--optimizer" not in shown and "--lr_scheduler" not in shown
    assert main(["fit", "--config", str(CBAM_CONFIG), "--optimizer", "torch.optim.SGD"]) == 2
    assert "set those instead, and drop optimizer" in capsys.readouterr().err


def test_the_task_classes_a_config_commands_help_names_are_import_paths_model_help_takes():
    """`fit --help` named captioning.CaptioningTask and detection.DetectionTask for `--model.help`, which refused
    both ("No module named 'captioning'"): it takes a class's whole import path (a command-line help audit)."""
    import pydoc

    from lightning.pytorch import LightningModule

    from visattn.tasks.lightning_cli import COMMAND_DESCRIPTIONS

    for about in COMMAND_DESCRIPTIONS.values():
        named = re.findall(r"[\w.]*\.(?:ImageClassifier|CaptioningTask|DetectionTask)\b", about)
        assert len(named) == 3, about
        for name in named:
            task = pydoc.locate(name)
            assert isinstance(task, type) and issubclass(task, LightningModule), name


def test_a_config_commands_help_titles_its_model_and_data_sections(monkeypatch, capsys):
    """They were titled from Lightning's base classes: "<class 'lightning.pytorch.core.module.LightningModule'>" and
    "A DataModule standardizes the training, val, test splits, data preparation and transforms. The main advantage
    is", a sentence cut off, 113 columns wide (a command-line help audit)."""
    monkeypatch.setattr(sys, "argv", ["visattn", "test", "--help"])
    with pytest.raises(SystemExit) as exit:
        main(["test", "--help"])
    shown = capsys.readouterr().out
    assert exit.value.code == 0
    assert "The task the config names under model:\n  --model.help" in shown
    assert "The data the config names under data:\n  --data.help" in shown
    assert "<class '" not in shown and "The main advantage is" not in shown


def _own_commands() -> list[str]:
    import argparse

    from visattn.cli import LIGHTNING_COMMANDS, build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return [name for name in commands if name not in LIGHTNING_COMMANDS]


def _help_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", _own_commands())
def test_a_commands_help_opens_with_what_it_does_and_shows_no_empty_default(command, capsys):
    """`visattn demo --help` said nothing of what demo does, nor did any command's --help say what it is for (only
    `visattn --help` did); `configs --help` gave its pattern's default as "(default: )" (a command-line help audit)."""
    from visattn.cli import build_parser

    listed = " ".join(build_parser().format_help().split())
    shown = _help_of([command, "--help"], capsys)
    about = " ".join(shown.partition("\n\n")[2].partition("\n\n")[0].split())  # the paragraph after the usage
    assert about and f"{command} {about}" in listed, shown
    assert "(default: )" not in shown


def test_visattn_help_command_prints_that_commands_help(monkeypatch, capsys):
    """`visattn help classify` was "invalid choice: 'help'", exit 2, where git's and pip's print the command's help
    (a command-line help audit)."""
    assert _help_of(["help", "classify"], capsys) == _help_of(["classify", "--help"], capsys)
    assert _help_of(["help"], capsys) == _help_of(["--help"], capsys)
    handed = []
    monkeypatch.setattr("visattn.cli.run_lightning", lambda argv: handed.append(argv) or 0)
    assert main(["help", "fit"]) == 0 and handed == [["fit", "--help"]]  # LightningCLI's, as `fit --help`
    with pytest.raises(SystemExit) as exit:
        main(["help", "fti"])
    assert exit.value.code == 2 and capsys.readouterr().err == "visattn: error: unknown command 'fti' (did you mean fit?); see `visattn --help`\n"


def test_visattn_help_parsed_as_a_command_prints_the_help_too(capsys):
    """`visattn help -- classify` (argparse's end of options) reached the help command, which had no function to run:
    an AttributeError traceback ('Namespace' object has no attribute 'func')."""
    assert _help_of(["help", "--", "classify"], capsys) == _help_of(["classify", "--help"], capsys)
    assert _help_of(["help", "classify", "--"], capsys) == _help_of(["classify", "--help"], capsys)


def test_an_unrecognized_config_command_option_is_named_with_the_nearest_and_not_blamed_on_the_config(capsys):
    """`fit --config FILE --trainer.max_stepz 1` said "fit --config FILE: unrecognized arguments: --trainer.max_stepz
    1", naming no option it takes (a README audit)."""
    assert main(["fit", "--config", str(CBAM_CONFIG), "--trainer.max_stepz", "1"]) == 2
    assert capsys.readouterr().err == ("visattn: error: fit: unrecognized argument --trainer.max_stepz (did you mean "
                                       "--trainer.max_steps?); see `visattn fit --help`\n")
    assert main(["test", "--config", str(CBAM_CONFIG), "--bogus"]) == 2
    assert capsys.readouterr().err == "visattn: error: test: unrecognized argument --bogus; see `visattn test --help`\n"
    # several, one as --option=value, and a stray word: each named (the second had been dropped), none blamed on FILE
    assert main(["fit", "--config", str(CBAM_CONFIG), "--trainer.max_stepz=1", "--trainer.min_epochz", "-1"]) == 2
    assert capsys.readouterr().err == ("visattn: error: fit: unrecognized arguments --trainer.max_stepz (did you mean "
                                       "--trainer.max_steps?), --trainer.min_epochz (did you mean "
                                       "--trainer.min_epochs?); see `visattn fit --help`\n")
    assert main(["fit", "--config", str(CBAM_CONFIG), "extra"]) == 2
    assert capsys.readouterr().err == "visattn: error: fit: unrecognized argument extra; see `visattn fit --help`\n"


@pytest.mark.parametrize("command, attention_out, threshold, note", [
    ("caption", "A", [], "; attention: A/good.png"),
    ("detect", "A", ["--score-threshold", "0.5"], "; attention: A/good.png"),
    ("detect", "A", ["--score-threshold", "1"], "; no detections, no attention map"),
])
def test_each_text_line_says_where_its_attention_map_went(command, attention_out, threshold, note, tmp_path,
                                                          monkeypatch, capsys):
    """Without --json nothing said where the PNG went, nor that an image without detections got none."""
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "in" / "good.png")
    model = CAPTIONER if command == "caption" else DETECTOR
    args = [command, "in", "--model", model, "--attention-out", attention_out, *threshold]
    assert main(args) == 0
    line = capsys.readouterr().out
    assert line.startswith("in/good.png: ") and line.endswith(f"{note}\n") and line.count("\n") == 1, line
    assert (tmp_path / "A" / "good.png").is_file() == ("no attention map" not in note)
    assert main([*args, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)  # the same: the path written, null where none was
    assert record["attention"] == (None if "no attention map" in note else "A/good.png"), record


def test_a_detect_line_says_where_its_drawn_image_went(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "in" / "good.png")
    assert main(["detect", "in", "--model", DETECTOR, "--out", "drawn", "--attention-out", "A"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("in/good.png: ") and line.endswith("; drawn: drawn/good.png; attention: A/good.png\n"), line
    assert (tmp_path / "drawn" / "good.png").is_file()


def _warn_as_a_worker_would() -> None:
    from visattn.errors import VisattnWarning

    warnings.warn("from a spawned worker", VisattnWarning)


def test_a_dataloader_worker_the_command_spawns_prints_visattn_warnings_in_one_line_too(capfd):
    """Forked workers inherit the command's format; spawned ones (macOS, Windows, Python 3.14) printed two lines."""
    import multiprocessing

    from visattn.cli import one_line_warnings
    from visattn.errors import ONE_LINE_WARNINGS_ENV

    with one_line_warnings():
        worker = multiprocessing.get_context("spawn").Process(target=_warn_as_a_worker_would)
        worker.start()
        worker.join()
    assert worker.exitcode == 0 and ONE_LINE_WARNINGS_ENV not in os.environ
    err = capfd.readouterr().err
    assert "warning: from a spawned worker\n" in err and "warnings.warn(" not in err, err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("command", [["explain", "IMAGE", "--model", "se_resnet20_cifar.fmnist"],
                                     ["export", "--model", "se_resnet20_cifar.fmnist"]])
def test_an_output_path_that_is_a_fifo_or_device_is_refused_and_left_as_it_was(tmp_path, capsys, command):
    # The atomic write's os.replace would delete it: run as root, `--out /dev/null` replaced /dev/null.
    image, out = tmp_path / "photo.png", tmp_path / ("out.onnx" if command[0] == "export" else "out.png")
    Image.new("RGB", (28, 28)).save(image)
    os.mkfifo(out)
    assert main([str(image) if arg == "IMAGE" else arg for arg in command] + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--out {out}: cannot write there (not a regular file" in err
    assert out.is_fifo()


def test_a_config_that_is_not_utf8_text_is_one_line(tmp_path, capsys):
    config = tmp_path / "binary.yaml"
    config.write_bytes(b"\xff\xfe\x00bad")
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"visattn: error: --config {config}: not UTF-8 text; give a YAML config saved as UTF-8"


def test_explain_refuses_pgf_which_needs_latex_in_one_line(tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.new("RGB", (28, 28)).save(image)
    assert main(["explain", str(image), "--model", "se_resnet20_cifar.fmnist", "--out", str(tmp_path / "map.pgf")]) == 2
    assert "cannot write .pgf images; name the file .png" in capsys.readouterr().err
    assert not (tmp_path / "map.pgf").exists()


def test_predict_keeps_each_records_index_and_file_and_writes_a_broken_files_error(tmp_path, monkeypatch, capsys):
    # collate_present leaves the broken file out: every record of that batch had "sample": null and no file.
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", per_class=4)
    write_image_folder(tmp_path / "test", per_class=2, broken=("cat",))
    data = ["--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "photos", "--data.init_args.test_root",
            "test", *SMALL_FOLDER_FIT]
    assert main(["fit", *data]) == 0
    assert main(["predict", *data, "--ckpt_path", "last"]) == 0
    written = Path("outputs") / "imagefolder_template" / "predictions.jsonl"
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"wrote 5 predictions to {written}; 1 could not be read (their records hold the error)")
    records = [json.loads(line) for line in written.read_text().splitlines()]
    assert [(r["sample"], r["file"]) for r in records] == [
        (0, "test/cat/0.png"), (1, "test/cat/1.png"), (2, "test/cat/broken.jpg"), (3, "test/dog/0.png"),
        (4, "test/dog/1.png")]
    assert [("predictions" in r, "error" in r) for r in records] == [(True, False)] * 2 + [(False, True)] + [
        (True, False)] * 2  # the broken file had no record at all
    assert records[2]["error"].startswith("test/cat/broken.jpg: ") and len(records[2]) == 3
    assert main(["predict", *data, "--ckpt_path", "last", "--data.init_args.batch_size", "1"]) == 0
    alone = [json.loads(line) for line in written.read_text().splitlines()]  # a batch of only the broken file
    assert [set(r) for r in alone] == [set(r) for r in records] and alone[2] == records[2]


@needs_fashion_mnist
def test_predict_replaces_its_own_predictions_and_refuses_a_file_it_did_not_write(tmp_path, monkeypatch, capsys):
    """A second predict replaced predictions.jsonl without a word, whoever had written it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    predict = ["predict", "--config", str(CBAM_CONFIG), *QUICK, "--model.init_args.model_name",
               "se_resnet20_cifar.fmnist", "--trainer.limit_predict_batches", "1"]
    written = Path("outputs") / CBAM_CONFIG.stem / "predictions.jsonl"
    assert main(predict) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote 16 predictions to {written}"
    assert main(predict) == 0
    assert (capsys.readouterr().out.splitlines()[-1]
            == f"wrote 16 predictions to {written} (replacing the earlier predictions there)")
    written.write_text("my notes\n")
    assert main(predict) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"visattn: error: trainer.default_root_dir would replace {written}, which visattn did not write; move that "
        "file or choose another trainer.default_root_dir folder")
    assert written.read_text() == "my notes\n"


@needs_fashion_mnist
def test_a_run_logged_to_an_earlier_runs_csv_version_keeps_the_earlier_metrics(tmp_path, monkeypatch, capsys):
    """Lightning's CSVLogger deleted the metrics.csv of a run logged to the same fixed version (as a resumed run's
    logs are kept together), with only its own warning (a file-writing audit)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    validate = ["validate", "--config", str(CBAM_CONFIG), *QUICK, "--model.init_args.model_name",
                "se_resnet20_cifar.fmnist", "--trainer.limit_val_batches", "1", "--trainer.logger.init_args.version",
                "fixed"]
    folder = Path("outputs") / CBAM_CONFIG.stem / "logs" / "fixed"
    assert main(validate) == 0
    first = (folder / "metrics.csv").read_text()
    capsys.readouterr()
    assert main(validate + ["--trainer.limit_val_batches", "2"]) == 0
    err = capsys.readouterr().err
    assert (f"warning: logger's version fixed: {folder / 'metrics.csv'} holds an earlier run's metrics, which "
            "Lightning would delete; they are kept as metrics-2.csv, and this run's go to metrics.csv"
            in err.splitlines()) and "will be deleted" not in err
    assert (folder / "metrics-2.csv").read_text() == first
    assert (folder / "metrics.csv").read_text() != first  # this run's, of 2 batches
    # a run refused before it starts moves nothing (it had moved the file, also that of a fit still writing it)
    before = {path.name: path.read_text() for path in folder.iterdir()}
    for refused in (["--model.init_args.sdpa_backend", "efficient"], ["--trainer.precision", "16-true"]):
        assert main([("fit" if "16-true" in refused else "validate"), *validate[1:], *refused]) == 2
        assert {path.name: path.read_text() for path in folder.iterdir()} == before


def test_predict_into_a_folder_it_cannot_write_is_refused_before_predicting(tmp_path, monkeypatch, capsys):
    """Every batch was predicted (15 s in a file-writing audit) and only then was the folder refused."""
    from visattn.tasks.classification import ImageClassifier

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    predicted = []
    monkeypatch.setattr(ImageClassifier, "predict_step", lambda self, *args, **kwargs: predicted.append(1))
    Path("notes.txt").write_text("mine\n")
    assert main(["predict", "--config", str(CBAM_CONFIG), *QUICK, "--model.init_args.model_name",
                 "se_resnet20_cifar.fmnist", "--trainer.limit_predict_batches", "1", "--trainer.default_root_dir",
                 "notes.txt"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "visattn: error: trainer.default_root_dir notes.txt: cannot write there (a file stands where a folder is "
        "needed)")
    assert not predicted and Path("notes.txt").read_text() == "mine\n"


def test_an_image_folder_without_split_folders_is_scored_whole_and_refuses_a_split(tmp_path, monkeypatch, capsys):
    """It was scored whole but printed as its "test" split, and --split val was taken without a word."""
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "photos", classes=("Trouser", "Bag"), per_class=2)
    assert main(["evaluate", "--model", CLASSIFIER, "--dataset", "imagefolder:photos"]) == 0
    readable, metrics = capsys.readouterr().out.strip().splitlines()[-2:]
    assert readable.startswith(f"{CLASSIFIER} on imagefolder:photos: top1=") and json.loads(metrics)["n"] == 4
    assert main(["evaluate", "--model", CLASSIFIER, "--dataset", "imagefolder:photos", "--split", "val"]) == 2
    assert capsys.readouterr().err.strip() == ("visattn: error: --split val: photos has no train/, val/, test/ folder, "
                                               "so it is scored whole; drop --split, or put its class folders in split folders")


@pytest.mark.parametrize("command, model", [("classify", CLASSIFIER), ("caption", CAPTIONER), ("detect", DETECTOR)])
def test_a_missing_path_among_others_gets_its_own_error_line_and_the_rest_go_on(command, model, tmp_path, capsys):
    image = tmp_path / "item.png"
    Image.fromarray(np.full((28, 28, 3), 128, np.uint8)).save(image)
    missing = tmp_path / "typo.png"
    assert main([command, str(missing), str(image), "--model", model, "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(missing), str(image)]
    assert lines[0]["error"] == f"{missing}: no such file" and "error" not in lines[1]


@needs_fashion_mnist
def test_caption_and_evaluate_decode_with_the_length_penalty_and_length_given(tmp_path, monkeypatch, capsys):
    """evaluate always decoded 20 words with length penalty 1, and caption had no --length-penalty (nor the
    --out DIR the other commands take)."""
    from visattn.inference import captioner

    settings, decode = [], captioner.decode
    monkeypatch.setattr(captioner, "decode",
                        lambda model, images, **kw: settings.append(kw) or decode(model, images, **kw))
    image = tmp_path / "scene.png"
    Image.fromarray(np.full((64, 64, 3), 40, np.uint8)).save(image)
    assert main(["caption", str(image), "--model", CAPTIONER, "--length-penalty", "0.5", "--max-len", "4",
                 "--out", str(tmp_path / "panels")]) == 0
    assert (tmp_path / "panels" / "scene.png").is_file()
    assert settings == [{"beam_size": 5, "max_len": 4, "length_penalty": 0.5}]
    settings.clear()
    capsys.readouterr()
    assert main(["evaluate", "--model", CAPTIONER, "--dataset", "fashion-scenes", "--limit", "2", "--max-len", "3",
                 "--length-penalty", "0", "--beam-size", "2"]) == 0
    assert settings and all(kw == {"beam_size": 2, "max_len": 3, "length_penalty": 0.0} for kw in settings)
    readable = capsys.readouterr().out.splitlines()[-2]  # it says how the captions were decoded
    assert readable.startswith(f"{CAPTIONER} on fashion-scenes test (beam_size 2, max_len 3, length_penalty 0.0): ")


# as other programs write them: an SVG titled (Inkscape writes a <dc:title>) and a PDF naming its own creator
OTHER_PROGRAMS_DOCUMENTS = {
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"><metadata>'
           b'<dc:title>My drawing</dc:title></metadata></svg>\n',
    "pdf": b"%PDF-1.4\n1 0 obj << /Creator (Inkscape) /Title (My drawing) >> endobj\n%%EOF\n",
}


@pytest.mark.parametrize("suffix", ["png", "jpg", "svg", "pdf"])
def test_explain_replaces_only_a_figure_it_wrote(tmp_path, capsys, suffix):
    """--out onto a user's photo or document replaced it with the map; a folder-like --out wrote a file named
    after the folder. A map visattn wrote there before is replaced (each format carries its mark)."""
    theirs = tmp_path / f"photo.{suffix}"
    theirs.write_bytes(OTHER_PROGRAMS_DOCUMENTS.get(suffix, b"someone's file"))
    if suffix in ("png", "jpg"):
        Image.new("RGB", (8, 8), "red").save(theirs)
    kept = theirs.read_bytes()
    for out in (str(theirs), str(tmp_path / "maps") + os.sep):
        assert main(["explain", _image(tmp_path), "--model", CLASSIFIER, "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("visattn: error: --out ")
    assert theirs.read_bytes() == kept and not (tmp_path / "maps").exists()
    ours = tmp_path / f"map.{suffix}"
    for _ in range(2):
        assert main(["explain", _image(tmp_path), "--model", CLASSIFIER, "--out", str(ours)]) == 0


def test_a_file_name_with_a_newline_stays_on_its_own_line(tmp_path, capsys):
    """A newline in a file name, printed as it was, split a result over two lines, the second read as another file's."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "a\nb.png")
    (folder / "c\nd.png").write_text("not an image")
    for command, model in (("classify", "se_resnet20_cifar.fmnist"), ("caption", "sat_cbam_resnet_scenes.scenes"),
                           ("detect", "fcos_se_resnet20_cifar.scenes")):
        assert main([command, str(folder), "--model", model]) == 1
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2, lines
        assert lines[0].startswith(f"{folder}/a\\nb.png: ") and lines[1].startswith(f"{folder}/c\\nd.png: error: ")
    assert main(["classify", str(folder / "e\nf.png"), "--model", "se_resnet20_cifar.fmnist"]) == 2
    assert capsys.readouterr().err == f"visattn: error: {folder}/e\\nf.png: no such file or folder\n"


def test_training_bam_on_batches_of_one_image_is_one_line(tmp_path, monkeypatch, capsys):
    # BAM's channel gate batch-normalises pooled features: one image per batch failed in torch's words.
    from fixtures_images import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    write_image_folder(tmp_path / "photos", per_class=2)
    fit = ["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "photos", *SMALL_FOLDER_FIT,
           "--model.init_args.model_name", "bam_resnet20_cifar", "--data.init_args.batch_size", "1"]
    assert main(fit) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "visattn: error: BAM's channel gate: a training batch of one image, and its BatchNorm normalises each "
        "channel over the batch; train with batches of 2 or more images (data.init_args.batch_size), or call "
        "model.eval()")
    assert main([*fit[:-1], "2"]) == 0


@pytest.mark.parametrize("command", [["classify", "--model", CLASSIFIER], ["caption", "--model", CAPTIONER],
                                     ["detect", "--model", DETECTOR], ["explain", "--model", CLASSIFIER, "--out", "m.png"]])
def test_max_pixels_is_the_image_limit_of_each_command_that_reads_files(command, tmp_path, monkeypatch, capsys):
    """A photo over 64 Mi pixels (a 108 MP phone photo) had no way through: the refusal said to raise max_pixels,
    which no command took."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (40, 30), "white").save("photo.png")  # 1200 pixels
    name, *options = command
    run = [name, "photo.png", *options]
    refused = main([*run, "--max-pixels", "1199"])
    captured = capsys.readouterr()
    refusal = re.search(r"photo.png: (error: )?image is 40x30 = 1200 pixels, over the limit of 1199 \(possible "
                        r"decompression bomb; for files you trust, raise the limit: --max-pixels N, "
                        r"data.init_args.max_pixels, or max_pixels=N in Python\)\n", captured.out + captured.err)
    assert refused in (1, 2) and refusal
    assert main([*run, "--max-pixels", "1200"]) == 0


def test_the_max_pixels_help_gives_the_default_limit(capsys):
    from visattn.data import DEFAULT_MAX_PIXELS

    with pytest.raises(SystemExit):
        main(["classify", "--help"])
    assert f"(default: {DEFAULT_MAX_PIXELS}, 64 Mi)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("signum, line", [(signal.SIGTERM, "visattn: terminated"),
                                          (signal.SIGHUP, "visattn: terminated (hangup: the terminal closed)")])
@pytest.mark.usefixtures("hangup_not_ignored")
def test_sigterm_while_writing_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch, capsys, signum, line):
    """kill, timeout or docker stop ended the process at once, leaving the half-written temp file in the folder;
    so did SIGHUP, a closed terminal, which no command handled (an audit of preemption: exit 129, no line)."""
    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "img.png")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}

    def terminated_mid_write(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        os.kill(os.getpid(), signum)

    monkeypatch.setattr(Figure, "savefig", terminated_mid_write)
    assert main(["explain", "img.png", "--model", CLASSIFIER, "--out", "maps/img.png"]) == 128 + signum
    assert capsys.readouterr().err == line + "\n"
    assert list((tmp_path / "maps").iterdir()) == []
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the caller's handlers are back


def test_a_hangup_that_nohup_ignores_stays_ignored(tmp_path, monkeypatch, capsys):
    """Handling SIGHUP had replaced nohup's ignoring it: closing the terminal ended a nohup'ed run (a review)."""
    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "img.png")
    real_savefig = Figure.savefig

    def hung_up_mid_write(self, fname, **kwargs):
        os.kill(os.getpid(), signal.SIGHUP)
        return real_savefig(self, fname, **kwargs)

    monkeypatch.setattr(Figure, "savefig", hung_up_mid_write)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts a command
    try:
        assert main(["explain", "img.png", "--model", CLASSIFIER, "--out", "maps/img.png"]) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert (tmp_path / "maps" / "img.png").is_file() and "terminated" not in capsys.readouterr().err


@pytest.mark.usefixtures("hangup_not_ignored")
def test_a_forked_worker_leaves_a_hangup_to_the_command_and_ends_at_a_second():
    """A DataLoader worker forked inside a command raised the command's exception on a hangup: a traceback per
    worker (a review). Then it ended at once, and a hangup of the whole process group failed the command's next
    batch (an operations audit): the command ends its workers with its run, and a second signal ends one."""
    import time

    from visattn.cli import _stop_signals_as_exception

    ready, started = os.pipe()
    told, go = os.pipe()
    with _stop_signals_as_exception():
        pid = os.fork()
        if pid == 0:  # the worker: says it runs (a signal in fork's first moments is dropped), waits to be told to go
            os.close(ready)
            os.close(go)
            os.write(started, b"x")
            os.read(told, 1)  # the hangup, sent before, is handled as this returns
            os.write(started, b"y")
            time.sleep(10)
            os._exit(0)
        os.close(started)
        os.close(told)
        os.read(ready, 1)
        os.kill(pid, signal.SIGHUP)
        with contextlib.suppress(BrokenPipeError):  # the worker ended
            os.write(go, b"g")
        lived_on = os.read(ready, 1)  # b"" had the worker ended
        os.kill(pid, signal.SIGHUP)
        _, status = os.waitpid(pid, 0)
    os.close(ready)
    os.close(go)
    assert lived_on == b"y" and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGHUP


@pytest.mark.usefixtures("hangup_not_ignored")
def test_a_forked_worker_ends_at_a_sigterm_as_its_parents_exit_needs():
    """Python's exit sends each daemonic worker one SIGTERM and waits for it: a worker that let it pass never ended,
    nor did the script that kept its loader (a review)."""
    from visattn.cli import _stop_signals_as_exception

    ready, started = os.pipe()
    with _stop_signals_as_exception():
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # a worker that lets the SIGTERM pass ends of this, not by waiting for ever
            os.write(started, b"x")
            signal.pause()
            os._exit(0)
        os.read(ready, 1)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    os.close(ready)
    os.close(started)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


WORKER_KILLED = "DataLoader worker (pid 4242) is killed by signal: Terminated. "


@pytest.mark.parametrize("stopped", [True, False])
def test_workers_killed_by_a_stop_of_the_process_group_are_the_stops_one_line(stopped, monkeypatch, capsys):
    """slurm's scancel signals the whole job: torch's loader workers die of the SIGTERM, and what torch raises in the
    command (or in a loader's __del__) had been a traceback and exit 1 instead of the stop's line and 143."""
    import types

    from visattn import cli

    monkeypatch.setattr(cli, "_STOPS_RECEIVED", [signal.SIGTERM] if stopped else [])

    def scored_as_workers_died(args):
        raise RuntimeError(WORKER_KILLED)

    monkeypatch.setattr(cli, "cmd_configs", scored_as_workers_died)
    if not stopped:  # a worker that died by itself stays torch's error
        with pytest.raises(RuntimeError, match="is killed by signal"):
            main(["configs"])
        return
    assert main(["configs"]) == 143 and capsys.readouterr().err == "visattn: terminated\n"
    seen = []
    hook = cli._KeptInterrupts(seen.append)
    hook(types.SimpleNamespace(exc_value=RuntimeError(WORKER_KILLED)))  # a loader's __del__ after the stop
    hook(types.SimpleNamespace(exc_value=RuntimeError("another failure")))
    assert [str(u.exc_value) for u in seen] == ["another failure"]


def test_a_killed_writers_temp_file_goes_at_the_next_write_of_its_file(tmp_path, monkeypatch, capsys):
    """Only checkpoints' were removed: a map's, an export's or a weights file's, left by SIGKILL, stayed for good (a
    preemption audit); another file's stays until that file is written."""
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "img.png")
    maps = tmp_path / "maps"
    maps.mkdir()
    stale, others = maps / ".img.png.k1lled0a.tmp", maps / ".img.png.x.k1lled0a.tmp"
    for path in (stale, others):
        path.write_bytes(b"\x89PNG half")
    assert main(["explain", "img.png", "--model", CLASSIFIER, "--out", "maps/img.png"]) == 0
    assert sorted(p.name for p in maps.iterdir()) == [others.name, "img.png"]
    # a second writer of the same file, at work, keeps its temp file (the sweep had made it fail, a review)
    from visattn.fileio import atomic_path

    with atomic_path(maps / "img.png") as first:
        first.write_bytes(b"first")
        with atomic_path(maps / "img.png") as second:
            second.write_bytes(b"second")
        assert first.read_bytes() == b"first"
    assert (maps / "img.png").read_bytes() == b"first"


def test_a_shipped_config_runs_by_its_readme_name_from_any_folder(tmp_path, monkeypatch, capsys):
    """The README's ``fit --config configs/...`` said "File does not exist" outside the checkout's root, and a pip
    install carried no configs; a file of that name in the working folder still comes first, and a misspelt name
    gets the nearest shipped ones."""
    from visattn.cli import main

    monkeypatch.chdir(tmp_path)
    shipped = Path(__file__).resolve().parents[1] / "configs" / "classification" / "vit_fmnist.yaml"
    for config in (["--config", "configs/classification/vit_fmnist.yaml"], ["-c", "classification/vit_fmnist.yaml"],
                   ["--config=configs/classification/vit_fmnist.yaml"]):
        with pytest.raises(SystemExit) as exit:
            main(["fit", *config, "--print_config"])
        printed = capsys.readouterr()
        assert exit.value.code == 0 and "default_root_dir: outputs/vit_fmnist" in printed.out
        name = config[-1].partition("=")[2] or config[-1]
        assert printed.err == f"visattn: no {name} here; using the shipped config {shipped}\n"
    own = tmp_path / "configs" / "classification" / "vit_fmnist.yaml"
    own.parent.mkdir(parents=True)
    own.write_text(shipped.read_text().replace("default_root_dir: outputs/vit_fmnist", "default_root_dir: mine"))
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/classification/vit_fmnist.yaml", "--print_config"])
    printed = capsys.readouterr()
    assert "default_root_dir: mine" in printed.out and printed.err == ""
    assert main(["fit", "--config", "configs/classification/vit_fmnst.yaml"]) == 2
    assert capsys.readouterr().err == ("visattn: error: --config configs/classification/vit_fmnst.yaml: no such file; "
                                       "did you mean configs/classification/vit_fmnist.yaml or "
                                       "configs/classification/vit_fmnist_stage3.yaml?\n")
    # a name as `visattn configs` lists them, without its folder or .yaml (jsonargparse's "File does not exist")
    for name, task in (("cbam_resnet_fmnist", "classification"), ("vit_fmnist", "classification"),
                       ("fcos_scenes", "detection")):
        assert main(["fit", "--config", name]) == 2
        assert capsys.readouterr().err == (f"visattn: error: --config {name}: no such file; did you mean "
                                           f"configs/{task}/{name}.yaml?\n")
    assert main(["validate", "--config", str(tmp_path / "gone.yaml")]) == 2
    gone = tmp_path / "gone.yaml"
    assert capsys.readouterr().err == (f"visattn: error: --config {gone}: no such file; give a config's path, or a "
                                       "shipped one's name (`visattn configs` lists them)\n")


def test_config_settings_urls_and_home_paths_stay_jsonargparses_and_no_shipped_name_leaves_the_folder(
        tmp_path, monkeypatch, capsys):
    """A code review: inline settings, `~` paths and fsspec URLs, which jsonargparse reads, were refused as "no such
    file"; `../Makefile` ran the repository's Makefile as "the shipped config"."""
    from visattn.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 3}}))
    for config in (["--config", "~/mine.yaml"], ["--config=~/mine.yaml"],
                   ["--config", "configs/classification/vit_fmnist.yaml", "--config", '{"trainer": {"max_epochs": 7}}']):
        with pytest.raises(SystemExit) as exit:
            main(["fit", *config, "--print_config"])
        assert exit.value.code == 0 and re.search(r"max_epochs: [37]\n", capsys.readouterr().out)
    assert main(["fit", "--config", "memory://gone.yaml"]) == 2
    assert "Path does not exist: 'memory://gone.yaml'" in capsys.readouterr().err
    for outside in ("../Makefile", "classification/../../Makefile", "../pyproject.toml"):
        assert main(["fit", "--config", outside]) == 2
        assert "shipped" not in capsys.readouterr().err
    from visattn import shipped

    (tmp_path / "package" / "configs").mkdir(parents=True)
    (tmp_path / "package" / "beside.yaml").write_text("trainer: {max_epochs: 2}\n")
    monkeypatch.setattr(shipped, "shipped_folder", lambda name: tmp_path / "package" / name)
    assert shipped.shipped_config("../beside.yaml") is None and shipped.shipped_config("x/../../beside.yaml") is None


def test_visattn_configs_lists_every_shipped_config_with_what_it_trains(tmp_path, monkeypatch, capsys):
    from visattn.cli import main

    monkeypatch.chdir(tmp_path)
    repo = Path(__file__).resolve().parents[1]
    assert main(["configs"]) == 0
    *rows, footer = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in rows] == sorted(p.relative_to(repo).as_posix() for p in repo.glob("configs/*/*.yaml"))
    assert "configs/classification/cbam_resnet_fmnist.yaml         CBAM-ResNet (CIFAR-style, <1M parameters) on " \
           "Fashion-MNIST." in rows
    assert footer.startswith(f"(shipped in {repo / 'configs'}; ")
    assert main(["configs", "fmnist"]) == 0  # a part of the name, as the README's `visattn configs fmnist`
    assert len(capsys.readouterr().out.splitlines()) == 1 + sum(1 for p in repo.glob("configs/*/*fmnist*.yaml"))
    assert main(["configs", "detection/*scenes*"]) == 0
    assert [row.split()[0] for row in capsys.readouterr().out.splitlines()[:-1]] == [
        "configs/detection/detr_scenes.yaml", "configs/detection/detr_scenes_stage2.yaml",
        "configs/detection/fcos_scenes.yaml"]
    assert main(["configs", "zzz"]) == 2
    assert capsys.readouterr().err == ("visattn: error: no shipped config matches 'zzz'; see `visattn configs` for the "
                                       "full list\n")


def test_save_weights_records_a_shipped_config_by_its_readme_name(tmp_path, monkeypatch):
    """The README's config names were refused outside the checkout's root ("no such file")."""
    from visattn.cli import main

    monkeypatch.chdir(tmp_path)
    config = "configs/classification/cbam_resnet_fmnist.yaml"  # what trains the checkpoint's cbam_resnet20_cifar
    assert main(_save_weights(tmp_path, "--out-dir", "w", "--config", config)) == 0
    entry, = json.loads((tmp_path / "w" / "index.json").read_text()).values()
    assert entry["config"] == config


def test_the_demo_trains_from_the_shipped_config_and_names_it_when_gone(tmp_path, monkeypatch, capsys):
    """A pip-installed package had no configs/, so the demo ran only from a clone; it now carries them."""
    from visattn import demo
    from visattn.shipped import shipped_folder

    assert demo.CONFIG == shipped_folder("configs") / "classification" / "demo_cbam_fmnist.yaml"
    assert demo.CONFIG.is_file()
    monkeypatch.setattr(demo, "CONFIG", tmp_path / "gone.yaml")
    assert main(["demo"]) == 2
    assert capsys.readouterr().err == (f"visattn: error: demo: {tmp_path / 'gone.yaml'} is not here; reinstall visattn, "
                                       "or restore configs/ in a clone (git checkout configs)\n")


def test_the_demo_is_a_command_of_its_own_and_a_failed_step_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    """A pip install has no Makefile, and nothing named the demo's command: `make demo` was the only way in."""
    from visattn import demo

    from visattn.cli import build_parser

    assert "demo" in build_parser().format_help()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "CONFIG", REPO / "README.md")  # the fit that reads it as a config fails
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "visattn: error: demo: `visattn fit` failed with exit code 2; its error is above"
    # Ctrl-C in a step ends the demo as it ends the step: one line, exit code 130 (a review: it was an error, 2);
    # so do a closed pipe (141) and SIGTERM (143), which the step has said
    for code in (129, 130, 141, 143):
        monkeypatch.setattr(demo.cli, "run_lightning", lambda argv, code=code: code)
        assert main(["demo"]) == code
        assert "error" not in capsys.readouterr().err


def test_the_demo_keeps_every_earlier_runs_checkpoints_and_leaves_a_running_fits_alone(tmp_path):
    """Each demo deleted the set from two runs ago (one trained further with `--ckpt_path last` too), and moved a
    still-running fit's checkpoints aside before the folder's lock refused its own fit (a file-writing audit)."""
    from visattn.demo import set_aside_previous_run
    from visattn.fileio import claims_released

    folder = tmp_path / "checkpoints"
    for run in ("first", "second"):
        folder.mkdir()
        (folder / "last.ckpt").write_text(run)
        with claims_released():
            set_aside_previous_run(folder)
    assert (tmp_path / "checkpoints-previous" / "last.ckpt").read_text() == "first"
    assert (tmp_path / "checkpoints-previous-2" / "last.ckpt").read_text() == "second"
    (tmp_path / "checkpoints-previous-3").symlink_to(tmp_path / "gone")  # a broken link's name is taken too
    folder.mkdir()
    (folder / "last.ckpt").write_text("running")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from visattn.fileio import claim_folder; "
                               f"claim_folder({str(folder)!r}, setting='s', task='t'); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with claims_released(), pytest.raises(ConfigError, match=rf"^demo: the demo's checkpoint folder {folder}: "
                                                                 r"another visattn fit \(process \d+\) is writing"):
            set_aside_previous_run(folder)
    finally:
        holder.kill()
        holder.wait()
    assert (folder / "last.ckpt").read_text() == "running" and not (tmp_path / "checkpoints-previous-4").exists()


def test_without_fcntl_as_on_windows_visattn_imports_and_locks_with_msvcrt(tmp_path, monkeypatch):
    """fileio imported fcntl, which Windows lacks: `import visattn` and every command stopped there."""
    from types import SimpleNamespace

    from visattn.fileio import claim_folder, exclusive_lock

    probe = "import sys; sys.modules['fcntl'] = None; import visattn.cli, visattn.fileio; print('ok')"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120).stdout == "ok\n"
    calls = []
    msvcrt = SimpleNamespace(LK_LOCK=1, LK_NBLCK=2, locking=lambda fd, mode, size: calls.append((mode, size)))
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", msvcrt)
    with exclusive_lock(tmp_path / "index.json.lock"):
        assert calls == [(1, 1)]

    def held(fd, mode, size):
        raise OSError(13, "Permission denied")

    msvcrt.locking = held
    with pytest.raises(ConfigError, match=r"another fit \(process unknown\) is writing there"):
        claim_folder(tmp_path / "checkpoints", setting="ModelCheckpoint dirpath", task="fit")


def test_evaluate_on_an_image_folder_takes_max_pixels(tmp_path, monkeypatch, capsys):
    """Its skip warning said to raise --max-pixels, which evaluate did not take; other datasets refuse it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds" / "Bag").mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(tmp_path / "ds" / "Bag" / "big.png")  # 1200 pixels
    Image.new("RGB", (20, 20), "white").save(tmp_path / "ds" / "Bag" / "small.png")
    evaluate = ["evaluate", "--model", CLASSIFIER, "--dataset", "imagefolder:ds", "--json", "--max-pixels"]
    for limit, counted in [("1199", {"n": 1, "skipped": 1}), ("1200", {"n": 2, "skipped": 0})]:
        assert main([*evaluate, limit]) == 0
        metrics = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert {key: metrics[key] for key in counted} == counted
    assert main(["evaluate", "--model", CLASSIFIER, "--dataset", "fashion-mnist", "--max-pixels", "5"]) == 2
    assert capsys.readouterr().err == ("visattn: error: --max-pixels: it limits the image files of a classifier's "
                                       "imagefolder: dataset, not fashion-mnist; drop it\n")


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. "
                                                                "DefaultCPUAllocator: can't allocate memory: you tried "
                                                                "to allocate 3070000000 bytes. Error code 12")])
def test_running_out_of_memory_is_one_line(error, monkeypatch, capsys):
    """A detector's --attention-out on an 8000x6000 photo ended in the allocator's traceback."""
    from visattn import cli

    def exhausted(args):
        raise error

    monkeypatch.setattr(cli, "cmd_models", exhausted)
    assert main(["models"]) == 1
    assert capsys.readouterr().err == ("visattn: error: out of memory; give fewer or smaller images at once "
                                       "(--batch-size 1, or photos resized first), a higher --score-threshold for "
                                       "--attention-out, or --device cpu\n")
    monkeypatch.setattr(cli, "cmd_models", lambda args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError keeps its traceback
        main(["models"])


def test_version_is_one_line_naming_visattn_and_the_libraries_results_depend_on(capsys):
    """`visattn --version` was "the following arguments are required: COMMAND", exit 2."""
    from importlib.metadata import version

    import visattn

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out == (f"visattn {visattn.__version__} (torch {version('torch')}, torchvision {version('torchvision')}, "
                   f"timm {version('timm')}, lightning {version('lightning')}; Python {sys.version.split()[0]})\n")
    # the version the package is installed as
    assert visattn.__version__ == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_an_abbreviated_option_is_unknown_and_names_the_option_meant(tmp_path, capsys, monkeypatch):
    """argparse took `--out` for `--out-dir`: `save-weights --out w.safetensors` made a folder named w.safetensors."""
    monkeypatch.chdir(tmp_path)
    for args in (["save-weights", "--checkpoint", "run.ckpt", "--tag", "t", "--out", "w.safetensors"],
                 ["classify", "x.png", "--model", "se_resnet20_cifar.fmnist", "--top", "2"]):
        with pytest.raises(SystemExit) as exited:
            main(args)
        assert exited.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["visattn: error: visattn save-weights: unrecognized argument --out (did you mean --out-dir?); see "
                   "`visattn save-weights --help`",
                   "visattn: error: visattn classify: unrecognized argument --top (did you mean --topk?); see "
                   "`visattn classify --help`"]
    assert list(tmp_path.iterdir()) == []


def test_naming_many_outputs_of_one_stem_tries_each_number_once(monkeypatch, tmp_path):
    """Each name of a stem met before counted up from 1 again: naming 8000 inputs of one stem took minutes before
    the first image was read."""
    from visattn import fileio

    tried = []
    fitted_name = fileio.fitted_name
    monkeypatch.setattr(fileio, "fitted_name",
                        lambda *args, **kwargs: tried.append(args) or fitted_name(*args, **kwargs))
    used, numbers = set(), {}
    named = [fileio.unique_paths("D", "Image", used, numbers=numbers)[0].name for _ in range(300)]
    assert named[:3] == ["Image.png", "Image-2.png", "Image-3.png"] and len(set(named)) == 300
    assert len(tried) == 300  # one try each, not 300 * 301 / 2
    assert fileio.unique_paths("D", "image", used, numbers=numbers)[0].name == "image-301.png"  # case-insensitive
    used = set()  # a name met after its upper-case form is not always the lower-case one
    assert [fileio.unique_paths("D", stem, used)[0].name for stem in ("Ab", "aB")] == ["Ab.png", "aB-2.png"]
    tried.clear()
    planned = fileio.output_paths([Path("in/x.png")] * 300, tmp_path / "D", flag="--out", commands={"": "detect"})
    assert planned[""][-1] == tmp_path / "D" / "x-300.png" and len(tried) == 300


def test_a_home_folder_tilde_the_shell_left_is_the_home_folder_in_every_path_option(tmp_path, monkeypatch, capsys):
    """The shell expands `~` as a word of its own but not after `--out-dir=` or `imagefolder:`: the folder existing
    was "no such folder", and outputs went to a new folder named `~` in the working folder ("written to ~/maps")."""
    from fixtures_images import write_image_folder

    from visattn.data.coco import coco_spec

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    write_image_folder(home / "photos", classes=("Trouser", "Bag"), per_class=2)
    _photo(home / "img.png")
    assert main(["evaluate", "--model", CLASSIFIER, "--dataset", "imagefolder:~/photos", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 4
    assert main(["explain", "~/img.png", f"--model={CLASSIFIER}", "--out-dir=~/maps"]) == 0
    assert (home / "maps" / "img.png").is_file() and not (work / "~").exists()
    capsys.readouterr()
    (home / "mine.safetensors").write_bytes((Path(__file__).resolve().parents[1] / "weights" /
                                              f"{CLASSIFIER}.safetensors").read_bytes())
    assert main(["classify", "~/img.png", "--model=~/mine.safetensors", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["file"] == f"{home}/img.png"
    assert main(["classify", "~/img.png", "--checkpoint=~/gone.ckpt"]) == 2
    assert f"{home}/gone.ckpt: checkpoint not found" in capsys.readouterr().err
    assert coco_spec("coco:~/a.json:~/images") == (f"{home}/a.json", f"{home}/images")


def test_save_weights_names_visattn_weights_for_the_folder_it_gave(tmp_path, monkeypatch, capsys):
    """Without --out-dir, save-weights writes into $VISATTN_WEIGHTS's first folder; a failure there had been
    reported as "--out-dir ...", an option the user had not given."""
    import visattn.weights_folders as weights_folders

    monkeypatch.chdir(tmp_path)
    checkpoint = str(write_classifier_checkpoint(tmp_path / "run.ckpt"))
    monkeypatch.setenv("VISATTN_WEIGHTS", f"{_a_file(tmp_path)}{os.pathsep}elsewhere")
    assert main(["save-weights", "--checkpoint", checkpoint, "--tag", "t"]) == 2
    assert capsys.readouterr().err == ("visattn: error: $VISATTN_WEIGHTS afile: cannot write there (a file stands "
                                       "where a folder is needed); choose a writable $VISATTN_WEIGHTS folder\n")
    assert main(["save-weights", "--checkpoint", checkpoint, "--tag", "t", "--out-dir", "afile/w"]) == 2
    assert capsys.readouterr().err.startswith("visattn: error: --out-dir afile/w: cannot write afile (a file stands")
    (tmp_path / "w" / "index.json.lock").mkdir(parents=True)  # failing inside the save, past the folder's check
    monkeypatch.setenv("VISATTN_WEIGHTS", "w")
    assert main(["save-weights", "--checkpoint", checkpoint, "--tag", "t"]) == 2
    assert capsys.readouterr().err.startswith("visattn: error: $VISATTN_WEIGHTS w: cannot write w/index.json.lock (it "
                                              "is a folder)")
    monkeypatch.setenv("VISATTN_WEIGHTS", os.pathsep)  # no folder in it: the default folder, which --out-dir replaces
    monkeypatch.setattr(weights_folders, "weights_dir", lambda: Path("afile", "default"))
    assert main(["save-weights", "--checkpoint", checkpoint, "--tag", "t"]) == 2
    assert capsys.readouterr().err.startswith("visattn: error: --out-dir afile/default: cannot write afile")


def test_new_folders_are_removed_on_error_only_where_empty(tmp_path):
    """What the block made is undone only as far as it is empty: a file written there, and any folder that
    existed before, stay."""
    from visattn.fileio import new_folders_removed_on_error

    (tmp_path / "old").mkdir()
    with pytest.raises(KeyboardInterrupt), new_folders_removed_on_error(tmp_path / "old" / "new" / "deep", None):
        (tmp_path / "old" / "new" / "deep" / "empty").mkdir(parents=True)
        (tmp_path / "old" / "new" / "kept").mkdir()
        (tmp_path / "old" / "new" / "kept" / "note.txt").write_text("mine")
        raise KeyboardInterrupt
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "old", "old/new", "old/new/kept", "old/new/kept/note.txt"]


def test_a_refused_attention_out_leaves_no_empty_out_folders(tmp_path, monkeypatch, capsys):
    """detect made --out's mirrored folders, then refused --attention-out: the empty tree stayed behind. Folders that
    were there before stay, as does anything in them."""
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "photos" / "a.png")
    _photo(tmp_path / "photos" / "sub" / "b.png")
    (tmp_path / "kept").mkdir()
    for out in ["new/drawn", "kept/drawn"]:
        assert main(["detect", "photos", "--model", DETECTOR, "--out", out, "--attention-out", _a_file(tmp_path)]) == 2
        assert capsys.readouterr().err.startswith("visattn: error: --attention-out afile: cannot write there")
    assert not (tmp_path / "new").exists() and list((tmp_path / "kept").iterdir()) == []


def test_output_folders_that_cannot_be_made_are_one_line_before_any_output_is_written(tmp_path, monkeypatch, capsys):
    """A file where a mirrored sub-folder goes, or a mirrored path past the system's length limit, stopped the run
    after the first images' outputs were written (and "choose a writable folder" was no fix for a long path)."""
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "photos" / "a.png")
    _photo(tmp_path / "photos" / "sub" / "b.png")
    (tmp_path / "drawn").mkdir()
    (tmp_path / "drawn" / "sub").write_text("my notes")
    assert main(["detect", "photos", "--model", DETECTOR, "--out", "drawn"]) == 2
    assert capsys.readouterr().err == ("visattn: error: --out drawn/sub: cannot write there (a file stands where a "
                                       "folder is needed); choose a writable --out folder\n")
    deep = Path("photos", *["d" * 200] * 18)
    _photo(tmp_path / deep / "c.png")
    longer = "o" * 250 + "/" + "p" * 250
    assert main(["detect", "photos", "--model", DETECTOR, "--out", longer]) == 2
    assert capsys.readouterr().err.endswith(": cannot write there (the path or one of its names is longer than the "
                                            "system takes); choose a shorter --out folder\n")
    assert sorted(path.name for path in (tmp_path / "drawn").iterdir()) == ["sub"]
    # nor a tree of empty folders, for any command that mirrors (they had stayed)
    for command in (["detect", "photos", "--model", DETECTOR, "--out", longer, "--attention-out", longer],
                    ["explain", "photos", "--model", CLASSIFIER, "--out-dir", longer],
                    ["caption", "photos", "--model", CAPTIONER, "--attention-out", longer]):
        assert main(command) == 2 and "choose a shorter" in capsys.readouterr().err
    assert not (tmp_path / ("o" * 250)).exists()
    assert main(["explain", "photos/a.png", "--model", CLASSIFIER, "--out", "G" * 300 + ".png"]) == 2
    assert capsys.readouterr().err.endswith("(the path or one of its names is longer than the system takes); choose a "
                                            "shorter --out file\n")  # it was "GGG...png: File name too long"


def test_a_command_run_in_the_callers_own_process_leaves_its_settings_as_they_were(tmp_path, monkeypatch, capsys):
    """main() called in a program's own process (a notebook) left Pillow's pixel limit raised by --max-pixels (the
    guard against decompression bombs, for the program's own images), the output streams' error handling changed,
    and a fit's run folder locked until the program exited (a later run there from another process was refused)."""
    import fcntl

    from fixtures_images import write_image_folder
    from PIL import Image

    from visattn.fileio import claim_folder, claims_released

    def held(lock: Path) -> bool:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open of the file: refused while it is held
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "img.png")
    program = claims_released()
    program.__enter__()  # what the program claims before: it stays held
    claim_folder(tmp_path / "mine", setting="mine", task="a program's own run")
    limit, errors = Image.MAX_IMAGE_PIXELS, sys.stdout.errors
    sys.stdout.reconfigure(errors="surrogateescape")
    try:
        assert main(["classify", "img.png", "--model", CLASSIFIER, "--max-pixels", "2000000000"]) == 0
        assert (Image.MAX_IMAGE_PIXELS, sys.stdout.errors) == (limit, "surrogateescape")
    finally:
        sys.stdout.reconfigure(errors=errors)
    write_image_folder(tmp_path / "photos", classes=("cat", "dog"), per_class=2)
    assert main(["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "photos", *SMALL_FOLDER_FIT,
                 "--trainer.max_steps", "1"]) == 0
    assert not held(next(tmp_path.glob("outputs/*/.checkpoints.visattn.lock")))
    assert held(tmp_path / ".mine.visattn.lock")
    program.__exit__(None, None, None)


def test_a_command_returning_in_one_thread_leaves_another_threads_run_folder_claimed(tmp_path):
    """Two commands run in one program's threads: the one that returned first let go of every folder claimed while it
    ran, the other's running fit's too, so another process could write into it."""
    import fcntl
    import threading

    from visattn.fileio import claim_folder, claims_released

    claimed, returned = threading.Event(), threading.Event()

    def a_fit() -> None:
        with claims_released():
            claim_folder(tmp_path / "run", setting="trainer.default_root_dir", task="visattn fit")
            claimed.set()
            returned.wait(30)

    fit = threading.Thread(target=a_fit)
    fit.start()
    with claims_released():  # another command, returning first
        claimed.wait(30)
    fd = os.open(tmp_path / ".run.visattn.lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
        returned.set()
        fit.join(30)


def test_a_checkpoint_of_the_task_its_config_names_by_another_path_is_the_configs(tmp_path):
    """A run of a config naming `visattn.tasks.ImageClassifier` recorded that path; the shipped configs name
    `visattn.tasks.classification.ImageClassifier`, and validating its checkpoint with one was refused as "a
    checkpoint of ImageClassifier cbam_resnet20_cifar, but the config trains ImageClassifier cbam_resnet20_cifar"."""
    from types import SimpleNamespace

    import torch

    from visattn.errors import WeightsError
    from visattn.tasks.checkpoint_paths import _check_checkpoint_model

    path = tmp_path / "run.ckpt"
    torch.save({"hyper_parameters": {"_class_path": "visattn.tasks.ImageClassifier", "model_name": "se_resnet20_cifar"},
                "state_dict": {}}, path)
    for named in ("visattn.tasks.classification.ImageClassifier", "ImageClassifier", "visattn.tasks.ImageClassifier"):
        _check_checkpoint_model(path, SimpleNamespace(class_path=named, init_args={"model_name": "se_resnet20_cifar"}),
                                resuming=False)
    with pytest.raises(WeightsError, match="a checkpoint of ImageClassifier se_resnet20_cifar, but the config trains "
                                           "CaptioningTask se_resnet20_cifar;"):
        _check_checkpoint_model(path, SimpleNamespace(class_path="visattn.tasks.captioning.CaptioningTask",
                                                      init_args={"model_name": "se_resnet20_cifar"}), resuming=False)
    # what a checkpoint names is compared, never imported (a review: a module it named ran; `.X` was a traceback)
    (tmp_path / "recorded_module_probe.py").write_text("raise SystemExit('imported')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        for recorded in ("recorded_module_probe.ImageClassifier", ".ImageClassifier"):
            torch.save({"hyper_parameters": {"_class_path": recorded, "model_name": "se_resnet20_cifar"},
                        "state_dict": {}}, path)
            with pytest.raises(WeightsError, match="but the config trains ImageClassifier se_resnet20_cifar;"):
                _check_checkpoint_model(path, SimpleNamespace(class_path="visattn.tasks.ImageClassifier",
                                                              init_args={"model_name": "se_resnet20_cifar"}),
                                        resuming=False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("recorded_module_probe", None)


def test_stdout_closed_tells_a_pipe_whose_reader_went_away(monkeypatch):
    """A BrokenPipeError in a Lightning command is said as closed output only when standard output is that pipe (a
    review: a callback's own broken pipe was reported as `standard output was closed`)."""
    import io
    import os

    from visattn.fileio import stdout_closed

    read, write = os.pipe()
    with os.fdopen(write, "w") as pipe:
        monkeypatch.setattr(sys, "stdout", pipe)
        assert not stdout_closed()
        os.close(read)
        assert stdout_closed()
        monkeypatch.setattr(sys, "stdout", io.StringIO())
        assert not stdout_closed()


# A terminal-environments audit: a dumb terminal, an output encoding without the characters, a closed stderr.
@pytest.mark.parametrize(("term", "bar"), [("xterm-256color", True), ("dumb", False)])
def test_a_dumb_terminal_gets_a_line_per_epoch_not_rich_bar(term, bar, monkeypatch):
    """On a `TERM=dumb` terminal (Emacs' shell, some CI consoles) Rich's bar, which cannot redraw there, was chosen,
    and drew only once the run had ended: no epoch line while it ran."""
    from visattn.tasks.progress import interactive_output

    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # Rich takes the output for a terminal, as a real one
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    monkeypatch.setenv("TERM", term)
    assert interactive_output() is bar


@pytest.mark.parametrize("widgets", [True, False])
def test_a_notebook_gets_rich_bar_only_with_the_widgets_it_draws_with(widgets, monkeypatch):
    """In a Jupyter kernel without ipywidgets Rich's bar drew nothing while the fit ran (its live display needs
    them): it warned to install ipywidgets and drew the bar once the run had ended."""
    import rich.console

    from visattn.tasks.progress import interactive_output

    for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (
        (find_spec("json") if widgets else None) if name == "ipywidgets" else find_spec(name, *args)))
    assert interactive_output() is widgets


def test_output_the_encoding_lacks_is_ascii_lookalikes_escapes_and_a_file_name_own_bytes(monkeypatch):
    """Under `PYTHONIOENCODING=ascii` Lightning's model summary, whose Rich table cuts a cell with an ellipsis, read
    `CrossEnt\\u2026` and lost its columns; under `LC_ALL=C PYTHONUTF8=0` a file name's bytes were written as
    `\\udcc3\\udca9` where Python itself writes the name as it is."""
    import io

    import visattn.cli as cli

    def prints(args):
        print("CrossEnt\u2026 | 2\u00d72 \u2192 \u2018a\u2019 caf\u00e9 \udcc3\udca9t\udcc3\udca9.png")
        return 0

    written = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(written, encoding="ascii"))
    monkeypatch.setattr(cli, "cmd_models", prints)
    assert main(["models"]) == 0
    assert written.getvalue() == b"CrossEnt. | 2x2 > 'a' caf\\xe9 \xc3\xa9t\xc3\xa9.png\n"
    assert sys.stdout.errors == "strict"  # put back for the program that called main()


def test_errors_with_standard_error_closed_stay_off_standard_output(monkeypatch, capsys):
    """`visattn models NOPE 2>&- | consumer`: with `sys.stderr` None, print(file=sys.stderr) wrote the error line to
    standard output, among the results a script reads."""
    monkeypatch.setattr(sys, "stderr", None)
    assert main(["models", "no_such_model_anywhere"]) == 2
    assert capsys.readouterr().out == "" and sys.stderr is None


def test_print_config_keeps_an_optimizer_given_so_the_printed_config_is_refused_as_the_command(tmp_path, capsys):
    """A LightningCLI audit: `fit --config C --optimizer torch.optim.SGD --print_config` printed C without the
    optimizer (jsonargparse leaves options hidden from --help out), a config that trained the task's AdamW where the
    command itself was refused."""
    with pytest.raises(SystemExit) as exit:
        main(["fit", "--config", str(CBAM_CONFIG), "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.1",
              "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert exit.value.code == 0 and printed["optimizer"]["class_path"] == "torch.optim.SGD"
    (tmp_path / "printed.yaml").write_text(yaml.safe_dump(printed))
    assert main(["fit", "--config", str(tmp_path / "printed.yaml")]) == 2
    assert "set those instead, and drop optimizer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CBAM_CONFIG), "--print_config"])
    assert not {"optimizer", "lr_scheduler"} & yaml.safe_load(capsys.readouterr().out).keys()


@pytest.mark.parametrize("key, value", [("default_root_dir", "$VISATTN_RUNS/cbam"),
                                        ("callbacks", [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                                        "init_args": {"dirpath": "${HOME}/checkpoints"}}])])
def test_an_environment_variable_in_a_config_setting_is_one_line_naming_the_setting(key, value, tmp_path, monkeypatch,
                                                                                       capsys):
    """A LightningCLI audit: jsonargparse expands no `$NAME` in a config's values, so a run wrote into a folder named
    `$VISATTN_RUNS` in the working folder, and --print_config printed the setting as if it would be expanded."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISATTN_RUNS", str(tmp_path / "runs"))
    config = yaml.safe_load(CBAM_CONFIG.read_text())
    config["trainer"][key] = value
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(config))
    setting = "default_root_dir $VISATTN_RUNS/cbam" if key == "default_root_dir" else \
        "callbacks[0].init_args.dirpath ${HOME}/checkpoints"
    for extra in (["--print_config"], ["--trainer.fast_dev_run", "true"]):
        assert main(["fit", "--config", "env.yaml", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"visattn: error: --config env.yaml: trainer.{setting}: a config's settings expand no "
                              "environment variable;") and len(err.splitlines()) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["env.yaml"]


def test_a_config_indented_with_tabs_is_one_line_saying_to_indent_with_spaces(tmp_path, capsys):
    """A LightningCLI audit: a config indented with tabs (as some editors save) was "not valid YAML ...; mend the
    file", which named no fix."""
    (tmp_path / "tabs.yaml").write_text(CBAM_CONFIG.read_text().replace("\n  ", "\n\t"))
    assert main(["fit", "--config", str(tmp_path / "tabs.yaml"), "--print_config"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"tabs\.yaml: not valid YAML \(found character '\\t' .* at line \d+, column 1\); indent it with "
                     r"spaces, which YAML takes \(not tabs\)\n$", err) and len(err.splitlines()) == 1


def test_configs_saved_with_a_bom_crlf_anchors_merge_keys_or_an_appending_second_config_print_as_written(
        tmp_path, capsys):
    """A LightningCLI audit, already right: a UTF-8 byte order mark, CRLF line ends, an anchor merged with `<<:`, and a
    second --config giving `callbacks+:` print the settings the plain config gives (a second config's `callbacks:`
    replaces the list, as jsonargparse documents)."""
    def printed(*configs: Path) -> dict:
        with pytest.raises(SystemExit) as exit:
            main(["fit", *[arg for config in configs for arg in ("--config", str(config))], "--print_config"])
        assert exit.value.code == 0
        return yaml.safe_load(capsys.readouterr().out)

    plain = printed(CBAM_CONFIG)
    (tmp_path / "bom_crlf.yaml").write_bytes(b"\xef\xbb\xbf" + CBAM_CONFIG.read_bytes().replace(b"\n", b"\r\n"))
    # the latest- checkpoint's settings merged from the best- one's (<<: *best), its own after the merge
    folder = "\n        dirpath: outputs/cbam_resnet_fmnist/checkpoints\n"
    merged = CBAM_CONFIG.read_text().replace(f"init_args:{folder}        monitor",
                                             f"init_args: &best{folder}        monitor")
    merged = merged.replace(f"init_args:{folder}        filename",
                            "init_args:\n        <<: *best\n        monitor: null\n        mode: min\n        filename")
    (tmp_path / "merged.yaml").write_text(merged)
    assert "<<: *best" in (tmp_path / "merged.yaml").read_text()
    assert printed(tmp_path / "bom_crlf.yaml") == plain and printed(tmp_path / "merged.yaml") == plain
    early_stop = {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val/top1"}}
    (tmp_path / "more.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks+": [early_stop]}}))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [early_stop]}}))
    classes = [[callback["class_path"].rpartition(".")[2]
                for callback in printed(CBAM_CONFIG, tmp_path / name)["trainer"]["callbacks"]]
               for name in ("more.yaml", "other.yaml")]
    assert classes == [["ModelCheckpoint", "ModelCheckpoint", "LearningRateMonitor", "EarlyStopping"],
                       ["EarlyStopping"]]
