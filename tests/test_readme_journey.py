"""What a user who runs the README's commands and snippets meets (found by a README walk-through audit)."""
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from visattn.tasks.classification import ImageClassifier

TINY_VIT = {"depth": 1, "embed_dim": 24, "num_heads": 2}


def _eval_mode_notes(task: ImageClassifier) -> list[str]:
    """Lightning's notes of modules in eval mode at the start of training, over one step of ``task``."""
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    batch = (torch.rand(2, 3, 28, 28), torch.tensor([0, 1]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(task, DataLoader([batch], batch_size=None))
    return [str(w.message) for w in caught if "in eval mode at the start of training" in str(w.message)]


def _linear_probe(ema_decay: float | None) -> ImageClassifier:
    return ImageClassifier("vit_tiny_patch4_28", num_classes=3, freeze_backbone=True, warmup_epochs=0,
                           ema_decay=ema_decay, model_kwargs=TINY_VIT)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_a_linear_probe_with_a_weight_average_fits_without_lightnings_eval_mode_note(ema_decay):
    """The README's linear probe (`vit_fmnist.yaml`, which keeps an EMA, with `freeze_backbone true`) printed
    "Found 160 module(s) in eval mode": the average's copy of the frozen backbone was counted besides the backbone."""
    assert _eval_mode_notes(_linear_probe(ema_decay)) == []


def test_a_module_left_in_eval_mode_besides_a_linear_probes_backbone_is_still_noted():
    task = _linear_probe(0.9)
    task.train()
    kept = sum(not module.training for module in task.modules())
    task.model.head.eval()
    assert [note.split(" module(s)")[0] for note in _eval_mode_notes(task)] == [f"Found {kept + 1}"]
