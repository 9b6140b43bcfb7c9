"""Seeded runs repeat: augmentation draws per DataLoader worker, per epoch and per seed, and whole `visattn fit`
runs of a detector, each in its own process, straight through or stopped at an epoch's end and resumed.

(Classification's resumes: test_reliability_checkpoints.py; its image transforms' draws: test_data.py.)
"""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from test_data import needs_fashion_mnist
from visattn.data.datamodules import EpochSeededLoader
from visattn.data.detection_samples import collate_detection, train_detection_transforms
from visattn.data.image_folder import seeded_subset

REPO = Path(__file__).resolve().parents[1]


class _SameScene(Dataset):
    """Four copies of one image with two boxes, through a training detection transform: only its draws vary."""

    def __init__(self) -> None:
        self.image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        self.boxes = np.array([[2, 3, 14, 20], [16, 8, 30, 30]], np.float32)
        self.transform = train_detection_transforms()

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.transform(self.image, self.boxes, np.array([1, 2]))


def _detection_epochs(seed: int, workers: int) -> list[list[torch.Tensor]]:
    """Two epochs of ``_SameScene`` in batches of two: ``[epoch][batch]``, each batch ``(2, 3, 32, 32)``."""
    torch.manual_seed(seed)
    loader = EpochSeededLoader(_SameScene(), batch_size=2, num_workers=workers, collate_fn=collate_detection)
    return [[torch.stack(images) for images, _ in loader] for _ in range(2)]


@pytest.mark.parametrize("workers", [0, 2])
def test_detection_augmentation_differs_by_worker_and_epoch_and_repeats_under_the_seed(workers):
    first, second = _detection_epochs(0, workers)
    # with two workers each batch is a worker's: one seeded like the other would draw the same boxes for both
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(torch.cat(first), torch.cat(second))  # each epoch draws anew
    for again, before in zip(_detection_epochs(0, workers), (first, second)):
        torch.testing.assert_close(again, before, rtol=0, atol=0)
    assert not torch.equal(torch.cat(_detection_epochs(1, workers)[0]), torch.cat(first))


def _training_epochs(module: str, **settings) -> list[list]:
    """Two epochs of ``module``'s training batches, each batch as its images (and captions, where it has them)."""
    import visattn.data as data

    torch.manual_seed(3)
    scenes = {"num_train": 16, "num_val": 2, "num_test": 2, "canvas_size": 32} if "Scenes" in module else {"limit": 32}
    datamodule = getattr(data, module)(batch_size=8, **scenes, **settings)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    if "Detection" in module:
        return [[(torch.stack(images), targets) for images, targets in loader] for _ in range(2)]
    if "Caption" in module:  # each caption without the batch's padding
        return [[(batch["images"], [c[:n] for c, n in zip(batch["captions"], batch["lengths"])]) for batch in loader]
                for _ in range(2)]
    return [[images for images, _ in loader] for _ in range(2)]


def _picks_differ_between_epochs(epochs: list[list]) -> bool:
    """Whether some image got another caption in the second epoch than in the first."""
    first = {image.numpy().tobytes(): caption for images, captions in epochs[0] for image, caption in zip(images, captions)}
    return any(not torch.equal(first[image.numpy().tobytes()], caption)
               for images, captions in epochs[1] for image, caption in zip(images, captions))


@needs_fashion_mnist
@pytest.mark.parametrize("module", ["FashionMNISTDataModule", "FashionScenesCaptionDataModule",
                                    "FashionScenesDetectionDataModule"])
def test_training_batches_are_the_same_with_any_number_of_loader_workers(module):
    """Augmentation and caption picks followed each worker's samples in order from the worker's seed, so the same
    seeded run trained on other batches with 0, 2 or persistent workers (and a resume inside an epoch, which skips
    the batches it trained, drew the rest otherwise: test_reliability_resume.py)."""
    drawn = {"FashionMNISTDataModule": {"augment": True, "auto_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.5},
             "FashionScenesDetectionDataModule": {"augment": True}}.get(module, {})  # captions: picked at random
    alone = _training_epochs(module, num_workers=0, **drawn)
    for workers in ({"num_workers": 2}, {"num_workers": 2, "persistent_workers": True}):
        torch.testing.assert_close(_training_epochs(module, **drawn, **workers), alone, rtol=0, atol=0,
                                   msg=lambda message: f"{workers}: {message}")
    if drawn:  # something was drawn: the batches differ from unaugmented ones
        plain = _training_epochs(module, num_workers=0, augment=False)[0]
        assert not all(torch.equal(a if module.startswith("FashionMNIST") else a[0], b if module.startswith(
            "FashionMNIST") else b[0]) for a, b in zip(alone[0], plain))
    else:
        assert _picks_differ_between_epochs(alone)


def test_an_evaluation_limit_picks_the_same_samples_whatever_the_global_random_state():
    picks = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        np.random.seed(seed)
        picks.append(seeded_subset(list(range(100)), 10).indices)
    assert picks[0] == picks[1] != list(range(10))


# --- whole runs, each in its own process ------------------------------------------------------

# `visattn fit` stopped, as a crash would, when its second epoch starts: after the first epoch's checkpoints
STOPPED_AT_SECOND_EPOCH = """
import os, sys
from visattn.cli import main
from visattn.tasks.detection import DetectionTask

def stop_at_second_epoch(task):
    if task.current_epoch == 1:
        os._exit(3)

DetectionTask.on_train_epoch_start = stop_at_second_epoch
sys.exit(main(sys.argv[1:]))
"""
TINY_SCENES = ["--data.init_args.num_train", "16", "--data.init_args.num_val", "4", "--data.init_args.batch_size", "8",
               "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", "--trainer.accelerator", "cpu",
               "--trainer.enable_progress_bar", "false"]


def _fit_in_a_new_process(folder: Path, script: list[str], *args: str, exit_code: int = 0) -> None:
    folder.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, *script, "fit", *args], cwd=folder, capture_output=True, text=True)
    assert proc.returncode == exit_code, proc.stderr[-3000:]


def _logged(folder: Path) -> dict[str, list[str]]:
    """Every value each metric logged, in order, over the run's CSV logs (a resumed run's second log follows its
    first)."""
    values: dict[str, list[str]] = {}
    for log in sorted(folder.glob("**/metrics.csv")):
        with open(log, newline="") as rows:
            for row in csv.DictReader(rows):
                for key, value in row.items():
                    if value:
                        values.setdefault(key, []).append(value)
    return values


def _last_checkpoint(folder: Path) -> dict:
    (path,) = folder.glob("**/last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=True)


@needs_fashion_mnist
@pytest.mark.slow
def test_a_seeded_detector_fit_repeats_in_a_new_process_and_resumed_at_an_epochs_end(tmp_path):
    # FCOS on augmented scenes loaded by two workers: the batches, their augmentation and the weights' init all drawn
    run = ["--config", str(REPO / "configs" / "detection" / "fcos_scenes.yaml"), *TINY_SCENES,
           "--data.init_args.num_workers", "2"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _fit_in_a_new_process(straight, ["-m", "visattn"], *run)
    _fit_in_a_new_process(stopped, ["-c", STOPPED_AT_SECOND_EPOCH], *run, exit_code=3)
    _fit_in_a_new_process(stopped, ["-m", "visattn"], *run, "--ckpt_path", "last")

    logged = _logged(straight)
    assert _logged(stopped) == logged  # the losses of every step, the validation metrics of every epoch
    assert len(logged["train/loss"]) == 4
    uninterrupted, resumed = _last_checkpoint(straight), _last_checkpoint(stopped)
    assert resumed["global_step"] == uninterrupted["global_step"] == 4
    torch.testing.assert_close(resumed["state_dict"], uninterrupted["state_dict"], rtol=0, atol=0)
