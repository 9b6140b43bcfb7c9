"""Files handed to a user by someone else: pickles that would run code, configs naming classes to build. The
marker file each hostile input would write must never appear."""
import json
from pathlib import Path

import pytest
import torch
from test_classification import CBAM_CONFIG, QUICK
from test_data import needs_fashion_mnist

from visattn.cli import main


class _WritesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@needs_fashion_mnist
@pytest.mark.parametrize("command", ["classify", "fit"])
def test_a_pickle_that_would_run_code_runs_nothing_from_the_command_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    marker, path = tmp_path / "ran", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model_name": "se_resnet20_cifar"},
                "callbacks": _WritesMarker(marker)}, path)
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    argv = {"classify": ["classify", str(image), "--checkpoint", str(path)],
            "fit": ["fit", "--config", str(CBAM_CONFIG), *QUICK, "--ckpt_path", str(path)]}[command]
    assert main(argv) == 2
    assert "refused, the pickle holds io.open besides tensors (it could run code)" in capsys.readouterr().err
    assert not marker.exists()


_BUILT = {"class_path": "logging.FileHandler", "init_args": {"filename": "MARKER"}}


@needs_fashion_mnist
@pytest.mark.parametrize("setting", ["model", "data", "optimizer", "trainer.callbacks", "trainer.logger",
                                     "trainer.plugins", "trainer.strategy", "yaml tag"])
def test_a_config_naming_a_class_of_another_kind_builds_nothing(setting, tmp_path, monkeypatch, capsys):
    """jsonargparse builds only subclasses of each setting's type (a LightningModule, a Callback, ...), and YAML's
    python tags are no YAML visattn reads: a config handed to a user cannot build logging.FileHandler there."""
    monkeypatch.chdir(tmp_path)
    section, _, key = setting.partition(".")
    config = tmp_path / "hostile.yaml"
    if setting == "yaml tag":
        config.write_text("model: !!python/object/apply:logging.FileHandler ['MARKER']\n")
    else:
        value = [_BUILT] if key in ("callbacks", "plugins") else _BUILT
        config.write_text(json.dumps({section: {key: value}} if key else {section: value}))
    assert main(["fit", "--config", str(CBAM_CONFIG), "--config", str(config), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("visattn: error: ") and "Traceback" not in err
    assert not (tmp_path / "MARKER").exists()
