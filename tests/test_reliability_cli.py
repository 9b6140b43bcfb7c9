"""Config and CLI mistakes: each is one line naming the thing and the fix, exit code 2, no traceback."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from test_classification import CBAM_CONFIG, QUICK, REPO
from test_data import needs_fashion_mnist
from test_pretrained import _CreatesFile
from test_reliability_inputs import write_captioner_checkpoint, write_detector_checkpoint
from visattn import create_model
from visattn.cli import main
from visattn.tasks.classification import ImageClassifier

IMAGEFOLDER_CONFIG = REPO / "configs" / "classification" / "imagefolder_template.yaml"
FIT = ["fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.max_epochs", "1"]


def _config_with(tmp_path: Path, **init_args) -> str:
    """The CBAM config with ``init_args`` of its model section replaced or added."""
    config = yaml.safe_load(CBAM_CONFIG.read_text())
    config["model"]["init_args"].update(init_args)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _cbam_checkpoint_as_last(tmp_path: Path) -> str:
    """A cbam_resnet20_cifar training checkpoint where `--ckpt_path last` finds it."""
    task = ImageClassifier("cbam_resnet20_cifar", num_classes=10)
    folder = tmp_path / "outputs" / CBAM_CONFIG.stem / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), "global_step": 0},
               folder / "last.ckpt")
    return "last"


def _vit_weights(tmp_path: Path) -> str:
    path = tmp_path / "vit.safetensors"
    save_file(create_model("vit_tiny_patch4_28", depth=1).state_dict(), path)
    return str(path)


CASES = {
    "unknown_cli_key": (lambda tmp: [*FIT, "--trainer.no_such_key", "1"], "no_such_key"),
    "unknown_config_key": (lambda tmp: ["fit", "--config", _config_with(tmp, learning_rate=0.1)], "learning_rate"),
    "wrong_type_in_config": (lambda tmp: ["fit", "--config", _config_with(tmp, lr="fast")], '"lr": Expected'),
    "wrong_type_on_cli": (lambda tmp: ["evaluate", "--model", "m", "--dataset", "fashion-mnist", "--img-size", "two"],
                          "--img-size: invalid int"),
    "zero_batch_size": (lambda tmp: ["caption", "x.png", "--model", "m", "--batch-size", "0"],
                        "--batch-size: '0' is not a positive whole number"),
    "zero_max_len": (lambda tmp: ["caption", "x.png", "--model", "m", "--max-len", "0"],
                     "--max-len: '0' is not a positive whole number"),
    "device_this_machine_lacks": (lambda tmp: ["classify", "x.png", "--model", "se_resnet20_cifar", "--device", "cuda:64"],
                                  "--device cuda:64: this machine has"),
    "misspelt_device": (lambda tmp: ["detect", "x.png", "--model", "m", "--device", "gpu"], "--device 'gpu': not a device"),
    "folder_without_images": (lambda tmp: ["caption", str(tmp), "--model", "sat_cbam_resnet_scenes.scenes"],
                              "no image files found in"),
    "negative_topk": (lambda tmp: ["classify", "x.png", "--model", "m", "--topk", "-3"],
                      "--topk: '-3' is not a positive whole number"),
    "negative_num_workers": (lambda tmp: ["evaluate", "--model", "m", "--dataset", "fashion-mnist", "--num-workers", "-1"],
                             "--num-workers: '-1' is not a non-negative whole number"),
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
}
NEEDS_DATA = {"unknown_model_in_config", "resume_from_another_architecture", "pretrained_of_another_architecture"}


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


def test_a_closed_output_pipe_ends_quietly(monkeypatch, capfd):
    import visattn.cli as cli

    def reader_went_away(args):  # what print() raises once `| head` has exited
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_models", reader_went_away)
    monkeypatch.setattr(cli.os, "dup2", lambda fd, fd2: None)  # keep pytest's stdout
    assert main(["models"]) == 141
    assert capfd.readouterr().err == ""


def test_no_traceback_reaches_the_terminal(tmp_path):
    command = [sys.executable, "-m", "visattn.cli", "classify", "x.png", "--model", "cbam_resnt18", "--json"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["visattn: error: unknown model 'cbam_resnt18': did you mean cbam_resnet18, "
                                        "bam_resnet18, cbam_resnet101?"]


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
