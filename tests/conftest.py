import os

import pytest
import torch

# Tests never reach a hub; fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # two xdist workers share two cores


@pytest.fixture
def weights_tmp(tmp_path, monkeypatch):
    """An empty weights folder used as the shipped index for the duration of a test."""
    monkeypatch.setenv("VISATTN_WEIGHTS", str(tmp_path))
    return tmp_path
