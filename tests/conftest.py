import os
import signal
from pathlib import Path

import pytest
import torch
from hypothesis import settings


# Tests never reach a hub; fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The Python processes tests start import the visattn under test, as pytest does, not the one an editable
# install points at (another checkout's, whose behaviour a test would then check).
os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                            *filter(None, [os.environ.get("PYTHONPATH")])])
torch.set_num_threads(1)  # two xdist workers share two cores
# CI draws the same property-test examples every run (a red CI names a change, not a draw); other runs explore anew
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def hangup_not_ignored():
    """SIGHUP as a terminal's session has it: a test run under nohup (as CI may be) ignores it, which visattn's
    commands then keep ignoring."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGHUP, previous)


@pytest.fixture
def ctrl_c_not_ignored():
    """Ctrl-C as a terminal's Python has it: a test run started in the background (``nohup pytest &``) ignores
    SIGINT, which visattn's commands then keep ignoring."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def weights_tmp(tmp_path, tmp_path_factory, monkeypatch):
    """An empty weights folder, the only one searched for the duration of a test: VISATTN_WEIGHTS names
    it, and an empty folder stands in for the shipped weights, so a test sees only what it saves there."""
    no_shipped_weights = tmp_path_factory.mktemp("no_shipped_weights")
    monkeypatch.setenv("VISATTN_WEIGHTS", str(tmp_path))
    for module in ("visattn.weights_folders", "visattn.weights_files"):  # where it is looked up
        monkeypatch.setattr(f"{module}.shipped_weights_dir", lambda: no_shipped_weights)
    return tmp_path


@pytest.fixture
def user_weights(tmp_path, monkeypatch):
    """An empty folder of the user's own weights, searched before the shipped ones (VISATTN_WEIGHTS)."""
    folder = tmp_path / "my_weights"
    folder.mkdir()
    monkeypatch.setenv("VISATTN_WEIGHTS", str(folder))
    return folder
