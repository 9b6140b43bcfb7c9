"""A `visattn fit` stopped inside an epoch and resumed trains on the samples, in the order, of an uninterrupted run,
augmented alike; and the same fit trains the same weights with any number of loader workers.

Each run records the training samples of every step by their images (the data module does not augment them, so an
image names its sample); epochs are 5 batches of 16 of an 80-sample training split.
"""
import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler

from test_classification import CBAM_CONFIG, QUICK
from test_data import needs_fashion_mnist
from visattn.cli import main
from visattn.data import FashionMNISTDataModule
from visattn.data.datamodules import EpochShuffle, ResumableLoader
from visattn.errors import VisattnWarning
from visattn.tasks.classification import ImageClassifier

pytestmark = [needs_fashion_mnist, pytest.mark.slow]
BATCHES, BATCH = 5, 16
SMALL = [*QUICK, "--data.init_args.limit", str(BATCHES * BATCH), "--trainer.max_epochs", "3",
         "--trainer.limit_val_batches", "1", "--model.init_args.warmup_epochs", "0"]


def _checkpoints(folder: str, **options) -> str:
    return json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": folder, "save_top_k": -1, **options}}])


@pytest.fixture
def record_steps(tmp_path, monkeypatch):
    """The list each training step appends its samples' training-split indices to, in batch order."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    data = FashionMNISTDataModule(batch_size=BATCH, num_workers=0, limit=BATCHES * BATCH, augment=False)
    data.setup("fit")
    index_of = {image.numpy().tobytes(): i for i, (image, _) in enumerate(data.datasets["train"])}
    steps: list[list[int]] = []
    training_step = ImageClassifier.training_step

    def recording(self, batch, batch_idx):
        steps.append([index_of[image.numpy().tobytes()] for image in batch[0]])
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(ImageClassifier, "training_step", recording)
    return steps


def _fit(*extra: str, augment: bool = False) -> int:
    return main(["fit", "--config", str(CBAM_CONFIG), *SMALL, "--data.init_args.augment", str(augment).lower(),
                 *extra])


def _weights(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _each_sample_once_per_epoch(steps: list[list[int]]) -> bool:
    epochs = [sum(steps[e * BATCHES:(e + 1) * BATCHES], []) for e in range(len(steps) // BATCHES)]
    return all(sorted(epoch) == list(range(BATCHES * BATCH)) for epoch in epochs)


def _straight_with_step_checkpoints(*options: str, augment: bool = False) -> None:
    """An uninterrupted run into ``straight/``, with a checkpoint every 3 steps in ``straight/steps/``."""
    callbacks = [*json.loads(_checkpoints("straight", save_last=True)),
                 *json.loads(_checkpoints("straight/steps", every_n_train_steps=3))]
    assert _fit(*options, "--trainer.callbacks", json.dumps(callbacks), augment=augment) == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_a_fit_resumed_from_a_step_checkpoint_trains_the_uninterrupted_runs_samples_and_weights(
        record_steps, workers, recwarn):
    """Resumed inside an epoch, the epoch's remaining batches were drawn from a fresh shuffle (some samples twice,
    others never) and every later epoch was shuffled otherwise; Lightning warned that the loader was not resumable."""
    options = ["--data.init_args.num_workers", str(workers)]
    _straight_with_step_checkpoints(*options)
    straight = list(record_steps)
    record_steps.clear()
    Path("resumed").mkdir()
    shutil.copy("straight/steps/epoch=1-step=6.ckpt", "resumed")  # mid-epoch 2, a batch in
    assert _fit(*options, "--trainer.callbacks", _checkpoints("resumed", save_last=True),
                "--ckpt_path", "resumed/epoch=1-step=6.ckpt") == 0
    assert record_steps == straight[6:] and len(straight) == 3 * BATCHES
    assert _each_sample_once_per_epoch(straight)
    torch.testing.assert_close(_weights("resumed/last.ckpt"), _weights("straight/last.ckpt"), rtol=0, atol=0)
    assert not [w for w in recwarn if "not resumable" in str(w.message)]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_augmented_fit_resumed_from_a_step_checkpoint_reaches_the_uninterrupted_runs_weights(
        tmp_path, monkeypatch, workers):
    """The resumed epoch's remaining batches drew other augmentations: the draws followed the epoch's samples in
    order from its seed, and the skipped batches' were not made (every final weight differed, by up to 1.9e-5)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    options = ["--data.init_args.num_workers", str(workers), "--data.init_args.auto_augment", "rand-m9-mstd0.5-inc1",
               "--data.init_args.random_erasing", "0.5"]
    _straight_with_step_checkpoints(*options, augment=True)
    Path("resumed").mkdir()
    shutil.copy("straight/steps/epoch=1-step=6.ckpt", "resumed")  # mid-epoch 2, a batch in
    assert _fit(*options, "--trainer.callbacks", _checkpoints("resumed", save_last=True), "--ckpt_path",
                "resumed/epoch=1-step=6.ckpt", augment=True) == 0
    torch.testing.assert_close(_weights("resumed/last.ckpt"), _weights("straight/last.ckpt"), rtol=0, atol=0)


def test_an_augmented_fit_trains_the_same_weights_with_any_number_of_loader_workers(tmp_path, monkeypatch):
    """Each worker drew augmentations from its own seed, so 0 and 2 workers trained other weights."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    for workers in (0, 2):
        assert _fit("--data.init_args.num_workers", str(workers), "--data.init_args.random_erasing", "0.5",
                    "--trainer.max_epochs", "2", "--trainer.callbacks", _checkpoints(f"workers{workers}", save_last=True),
                    augment=True) == 0
    torch.testing.assert_close(_weights("workers2/last.ckpt"), _weights("workers0/last.ckpt"), rtol=0, atol=0)


def test_a_fit_stopped_by_max_steps_resumes_into_the_next_epoch_in_the_uninterrupted_runs_order(record_steps):
    """Lightning ends the epoch a max_steps stop is in (its checkpoint records the epoch as done), so the resumed
    run goes on at the next epoch's first batch; that epoch was shuffled otherwise than the uninterrupted run's."""
    assert _fit("--trainer.callbacks", _checkpoints("straight", save_last=True)) == 0
    straight = list(record_steps)
    record_steps.clear()
    options = ["--trainer.callbacks", _checkpoints("stopped", save_last=True)]
    assert _fit(*options, "--trainer.max_steps", "7") == 0
    assert _fit(*options, "--ckpt_path", "last") == 0
    assert record_steps == straight[:7] + straight[2 * BATCHES:]


def test_the_training_order_is_the_seeds_and_the_epochs_alone():
    """The shuffle was drawn from the process's random state, which differs after a resume."""
    orders = []
    for state_seed in (0, 1):
        torch.manual_seed(state_seed)
        shuffle = EpochShuffle(10, seed=5)
        shuffle.set_epoch(2)
        orders.append(list(shuffle))
    assert orders[0] == orders[1] and sorted(orders[0]) == list(range(10))
    assert list(shuffle) != orders[0]  # without set_epoch, each pass is the next epoch's
    other = EpochShuffle(10, seed=6)
    other.set_epoch(2)
    assert list(other) != orders[0]


class _Indices(Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> int:
        return index


def test_a_loader_that_cannot_skip_warns_that_its_resumed_epoch_draws_afresh():
    loader = ResumableLoader(_Indices(), batch_size=4, shuffle=True)  # its order is not drawn from a seed it has
    loader.load_state_dict({"epoch": 0, "batches": 1})
    with pytest.warns(UserWarning, match="cannot leave out the 1 batches trained before"):
        assert len(list(loader)) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(loader)) == 3  # the next epoch is a whole one
    # Each DDP process's share of an epoch depends on the process count: a state saved on one cannot be skipped on 2.
    # Every process draws afresh; the first says so (each had printed the line).
    for rank in (0, 1):
        on_two = ResumableLoader(_Indices(), batch_size=2,
                                 sampler=DistributedSampler(_Indices(), num_replicas=2, rank=rank))
        on_two.load_state_dict({"epoch": 0, "batches": 1, "num_replicas": 1})
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            assert len(list(on_two)) == 3
        assert [str(w.message) for w in said if w.category is VisattnWarning] == (
            [] if rank else ["the training loader resumed inside epoch 0 on 2 processes, saved on 1, cannot leave out "
                             "the 1 batches trained before, so the epoch's remaining batches are drawn afresh; resume "
                             "from an epoch's last checkpoint, or on 1 process"])
