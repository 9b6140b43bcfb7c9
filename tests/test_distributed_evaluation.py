"""Validation and test under DDP score each sample once, as one process does.

Lightning gave evaluation loaders a DistributedSampler that pads a split to a multiple of the process
count, so a sample or more was scored twice: 5 validation samples on 2 processes were scored as 6.
"""
import functools
import json
import os
import random
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torchmetrics
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, TensorDataset

from visattn.data.datamodules import SplitLoadersMixin
from visattn.data.transforms import sample_generator
from visattn.errors import VisattnWarning
from visattn.tasks.guards import GuardedTask, NonFiniteLossGuard

N_EVAL = 5  # not a multiple of the 2 processes: a padding sampler scores one sample twice


class _Numbers(SplitLoadersMixin, pl.LightningDataModule):
    """Samples that are their own index: 8 to train on, N_EVAL to validate and test on."""

    def __init__(self, n_eval: int = N_EVAL, batch_size: int = 2, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.datasets = {}

    def setup(self, stage: str) -> None:
        evaluation = TensorDataset(torch.arange(float(self.hparams.n_eval)))
        self.datasets = {"train": TensorDataset(torch.arange(8.0)), "val": evaluation, "test": evaluation}


class _Counter(pl.LightningModule):
    """Logs how many samples a split scored (``n``), their mean and the samples themselves, all synced by
    torchmetrics; BatchNorm gives DDP buffers, which must not hold a process that runs one batch fewer."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
        self.n, self.mean, self.seen = torchmetrics.SumMetric(), torchmetrics.MeanMetric(), torchmetrics.CatMetric()
        self.samples: dict[str, list[float]] = {}

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.net(x[:, None]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def _evaluate(self, batch, prefix: str) -> None:
        (x,) = batch
        self.net(x[:, None])
        self.n.update(torch.tensor(float(len(x))))
        self.mean.update(x)
        self.seen.update(x)
        self.log(prefix + "n", self.n)
        self.log(prefix + "mean", self.mean)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val/")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test/")

    def _record(self, prefix: str) -> None:
        if not self.trainer.sanity_checking:
            self.samples[prefix] = sorted(self.seen.compute().tolist())  # every process's, gathered
        self.seen.reset()

    def on_validation_epoch_end(self) -> None:
        self._record("val/")

    def on_test_epoch_end(self) -> None:
        self._record("test/")


def _trainer(root: str, devices: int) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=1,
                      default_root_dir=root, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)


def _run(root: str, devices: int) -> dict:
    """Fit one epoch (validating at its end), validate and test; what each logged and scored."""
    model, data, figures = _Counter(), _Numbers(), {}
    trainer = _trainer(root, devices)
    trainer.fit(model, datamodule=data)
    figures["fit"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    figures["validate"] = trainer.validate(model, datamodule=data, verbose=False)[0]
    figures["test"] = trainer.test(model, datamodule=data, verbose=False)[0]
    figures["samples"] = model.samples
    return figures


def _free_port() -> int:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


def _as_process_of_two(rank: int, port: int, run: Callable[[], Any], out: str) -> None:
    """Rank ``rank`` of a gloo group of two, set up as a launcher (torchrun) starts them, so that Lightning's DDP
    joins it instead of starting its own processes; writes what ``run()`` returns to ``OUT.RANK`` as JSON."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    result = run()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)
    torch.distributed.destroy_process_group()  # gloo aborts a process that exits with its group open


def _in_two_processes(run: Callable[[], Any], out: Path) -> list[Any]:
    """What ``run()`` (a module-level function, or a partial of one) returns in each of two DDP processes."""
    import torch.multiprocessing

    # forked: a spawned process imports torch, Lightning and visattn anew, over nine tenths of this file's run time,
    # and its loader workers are spawned too (a process a launcher starts forks them)
    torch.multiprocessing.start_processes(_as_process_of_two, args=(_free_port(), run, str(out)), nprocs=2,
                                          start_method="fork")
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]


def test_ddp_validate_and_test_score_each_sample_once(tmp_path):
    ranks = _in_two_processes(functools.partial(_run, str(tmp_path), devices=2), tmp_path / "figures")
    single = _run(str(tmp_path), devices=1)
    whole = [float(i) for i in range(N_EVAL)]
    assert single["samples"] == {"val/": whole, "test/": whole}
    assert single["validate"] == {"val/n": N_EVAL, "val/mean": pytest.approx(2.0)}
    for figures in ranks:
        assert figures["samples"] == single["samples"]  # each sample once, none twice
        for run in ("fit", "validate"):
            assert figures[run]["val/n"] == N_EVAL and figures[run]["val/mean"] == pytest.approx(2.0)
        assert figures["test"] == pytest.approx(single["test"]) == {"test/n": N_EVAL, "test/mean": 2.0}


def _attached(data: _Numbers, rank: int, replicas: int, use_distributed_sampler: bool = True) -> _Numbers:
    data.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": replicas, "rank": rank},
                                   _accelerator_connector=SimpleNamespace(
                                       use_distributed_sampler=use_distributed_sampler))
    return data


def test_predicting_fewer_samples_than_processes_is_one_line():
    """From a DDP audit: Lightning's predict sampler failed an assertion on the process without a sample (a
    traceback on each), where evaluation splits warn; padding would write a prediction twice."""
    from visattn.errors import ConfigError

    data = _attached(_Numbers(n_eval=1), rank=0, replicas=2)
    data.setup("predict")
    with pytest.raises(ConfigError, match=r"^predict: the test split holds fewer samples \(1\) than processes \(2\); "
                                          r"predict with trainer.devices 1 or fewer$"):
        data.predict_dataloader()
    assert len(_attached(_Numbers(n_eval=2), rank=0, replicas=2).predict_dataloader().dataset) == 2


def test_evaluation_loaders_split_the_data_between_processes_without_repeats():
    shards = []
    for rank in (0, 1):
        data = _attached(_Numbers(), rank, 2)
        for loader in (data.val_dataloader(), data.test_dataloader()):
            assert isinstance(loader.sampler, UnrepeatedDistributedSampler)
        shards.append([x for (batch,) in data.val_dataloader() for x in batch.tolist()])
        # training and predict keep what Lightning gives them: a shuffled DistributedSampler; predict's own unrepeated one
        assert not isinstance(data.train_dataloader().sampler, DistributedSampler)
        assert not isinstance(data.predict_dataloader().sampler, DistributedSampler)
    assert shards == [[0.0, 2.0, 4.0], [1.0, 3.0]]


def test_one_process_and_unsharded_runs_keep_the_plain_loaders():
    for data in (_Numbers(), _attached(_Numbers(), 0, 1), _attached(_Numbers(), 0, 2, use_distributed_sampler=False)):
        assert not isinstance(data.val_dataloader().sampler, DistributedSampler)


def test_a_split_smaller_than_the_process_count_is_left_to_lightning_with_a_warning():
    # A process without a sample would skip the epoch-end sync the others wait in.
    data = _attached(_Numbers(n_eval=1), 1, 2)
    with pytest.warns(VisattnWarning, match=r"^the val split is padded from 1 to 2 samples for 2 processes \(a process "
                                            r"without a sample would hold the others up\), so its metrics count 1 twice; "
                                            r"give it at least 2 samples"):
        loader = data.val_dataloader()
    assert not isinstance(loader.sampler, DistributedSampler)


def _map_of_unequal_detection_shares() -> dict:
    from visattn.inference.detection_scoring import detection_map, map_scores

    metric = detection_map()
    rank = torch.distributed.get_rank()
    for i in UnrepeatedDistributedSampler(range(N_EVAL), num_replicas=2, rank=rank, shuffle=False):  # 3 here, 2 there
        metric.update(*_image_detections(i))
    return map_scores(metric)


def _image_detections(i: int) -> tuple[list[dict], list[dict]]:
    """Image ``i``'s detections and targets: a hit, a loose box and a miss, some images two objects."""
    truth = torch.tensor([[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 40.0, 44.0]])[: 1 + i % 2]
    boxes = torch.tensor([[4.0, 4.0, 20.0 - i, 20.0], [28.0, 33.0, 40.0, 44.0], [50.0, 50.0, 60.0, 60.0]])
    predictions = {"boxes": boxes, "scores": torch.tensor([0.9, 0.3 + 0.1 * i, 0.5]), "labels": torch.zeros(3, dtype=torch.long)}
    return [predictions], [{"boxes": truth, "labels": torch.zeros(len(truth), dtype=torch.long)}]


def test_detection_map_syncs_unequal_shares_as_one_process_scores_them(tmp_path):
    # torchmetrics' own sync ran one collective per image: 3 images here and 2 there aborted gloo.
    from visattn.inference.detection_scoring import detection_map, map_scores

    ranks = _in_two_processes(_map_of_unequal_detection_shares, tmp_path / "map")
    whole = detection_map()
    for i in range(N_EVAL):
        whole.update(*_image_detections(i))
    expected = map_scores(whole)
    assert 0 < expected["map"] < expected["map50"] < 1
    assert ranks == [pytest.approx(expected)] * 2


CAPTIONS = ["a red top", "a bag", "a top and a bag", "a red bag", "a top"]
REFERENCES = [["a red top"], ["a red bag", "a bag"], ["a bag and a top"], ["two red bags"], ["a red top"]]


def _scores_of_unequal_caption_shares() -> dict:
    from visattn.data.vocab import Vocabulary
    from visattn.inference.caption_scoring import CaptionMetrics

    rank = torch.distributed.get_rank()
    share = list(UnrepeatedDistributedSampler(CAPTIONS, num_replicas=2, rank=rank, shuffle=False))  # 3 here, 2 there
    metrics = CaptionMetrics(Vocabulary.from_list(["<pad>", "<start>", "<end>", "<unk>", "a", "red", "top", "bag"]))
    metrics.hypotheses, metrics.references = [CAPTIONS[i] for i in share], [REFERENCES[i] for i in share]
    metrics.gather()
    return metrics.compute()


def test_caption_metrics_gather_unequal_shares(tmp_path):
    # The captioning task gathers its processes' captions (all_gather_object) before scoring the split:
    # shares one caption apart must give the single-process scores.
    from visattn.inference.caption_scoring import caption_scores

    ranks = _in_two_processes(_scores_of_unequal_caption_shares, tmp_path / "scores")
    whole = caption_scores(CAPTIONS, REFERENCES)
    assert whole["cider"] > 0
    for scores in ranks:
        assert scores["n"] == N_EVAL and scores["cider"] == pytest.approx(whole["cider"])


class _NaNOnRankOne(GuardedTask, pl.LightningModule):
    """A task whose loss is NaN on rank 1 at step 1 only; records its weights around every step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(1, 1)
        self.loss_guard = NonFiniteLossGuard(max_bad_steps=3)
        self.weights: list[list[float]] = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = self.net(x[:, None]).square().mean()
        if self.global_step == 1 and self.global_rank == 1:
            loss = loss * float("nan")
        self.loss_guard.watch(self.net)
        return self.loss_guard.check(self, loss)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.weights.append([float(p.detach().sum()) for p in self.net.parameters()])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.5)


def _guarded_fit() -> dict:
    torch.manual_seed(0)
    task, data = _NaNOnRankOne(), _Numbers()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0)
    trainer.fit(task, datamodule=data)
    return {"weights": task.weights, "skipped": task.loss_guard.skipped}


def test_a_non_finite_loss_on_one_rank_skips_the_update_on_every_rank_under_ddp(tmp_path):
    """The guard returned None, which Lightning refuses under DDP: the run crashed at its first NaN loss."""
    runs = _in_two_processes(_guarded_fit, tmp_path / "guarded")
    assert runs[0] == runs[1] and runs[0]["skipped"] == 1  # one decision, the same weights on both ranks
    before, skipped, after = runs[0]["weights"]
    assert skipped == before and after != skipped  # no weight decay or momentum moved the skipped step's weights


class _NaNInSecondMicroBatch(_NaNOnRankOne):
    """Loss NaN in the second micro-batch of the first accumulation window, on the last process."""

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = self.net(x[:, None]).square().mean()
        if batch_idx == 1 and self.global_rank == self.trainer.world_size - 1:
            loss = loss * float("nan")
        self.loss_guard.watch(self.net)
        return self.loss_guard.check(self, loss)


def _accumulated_fit(devices: int) -> dict:
    torch.manual_seed(0)
    task, start = _NaNInSecondMicroBatch(), None
    start = [float(p.detach().sum()) for p in task.net.parameters()]
    pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=1,
               accumulate_grad_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(task, datamodule=_Numbers())
    return {"start": start, "after": task.weights[-1], "skipped": task.loss_guard.skipped}


def test_a_non_finite_micro_batch_keeps_the_windows_good_gradients_as_in_one_process(tmp_path):
    """From a DDP audit: under DDP the skipped micro-batch dropped the gradients of the window's good ones, so the
    step updated nothing; one process updated with them."""
    single = _accumulated_fit(devices=1)
    ranks = _in_two_processes(functools.partial(_accumulated_fit, devices=2), tmp_path / "accumulated")
    for run in (single, *ranks):
        assert run["skipped"] == 1 and run["after"] != run["start"]
    assert ranks[0] == ranks[1]


class _Images(SplitLoadersMixin, pl.LightningDataModule):
    """N_EVAL seeded 8-px images of 3 classes to validate on: 3 on one process, 2 on the other."""

    def __init__(self, batch_size: int = 2, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.datasets = {}

    def setup(self, stage: str) -> None:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(N_EVAL, 3, 8, 8, generator=generator)
        self.datasets = {"val": TensorDataset(images, torch.arange(N_EVAL) % 3)}


def _validate_classifier(root: str, devices: int) -> dict:
    from visattn.tasks.classification import ImageClassifier

    torch.manual_seed(0)
    model = ImageClassifier("resnet20_cifar", num_classes=3, pretrained=False, label_smoothing=0.0)
    return _trainer(root, devices).validate(model, datamodule=_Images(), verbose=False)[0]


def test_a_classifiers_validation_loss_on_unequal_shares_is_one_processs(tmp_path):
    # Lightning's mean of a logged loss divided by the processes' integer sample count averaged (5 // 2):
    # shares of 3 and 2 read 5/4 of the loss one process gives.
    ranks = _in_two_processes(functools.partial(_validate_classifier, str(tmp_path), devices=2), tmp_path / "loss")
    single = _validate_classifier(str(tmp_path), devices=1)
    assert single["val/loss"] > 0
    assert ranks == [pytest.approx(single, rel=1e-5)] * 2


def _validate_on_photos(root: str, devices: int) -> dict:
    from visattn.data.datamodules import ImageFolderDataModule
    from visattn.tasks.classification import ImageClassifier

    torch.manual_seed(0)
    model = ImageClassifier("resnet20_cifar", num_classes=2, pretrained=False)
    data = ImageFolderDataModule(f"{root}/photos", val_root=f"{root}/photos", img_size=8, batch_size=4, num_workers=0,
                                 augment=False)
    return _trainer(root, devices).validate(model, datamodule=data, verbose=False)[0]


def test_a_process_whose_share_of_images_is_all_broken_scores_as_one_process_does(tmp_path):
    """From a DDP audit: the second process's share is only cat/broken.jpg, so its steps logged nothing and the
    first synced the metrics alone: a 60-line gloo traceback, exit 1 (fit blamed the checkpoint's monitor)."""
    from fixtures_images import write_image_folder

    write_image_folder(tmp_path / "photos", per_class=1, broken=("cat",))  # cat/0.png, cat/broken.jpg, dog/0.png
    ranks = _in_two_processes(functools.partial(_validate_on_photos, str(tmp_path), devices=2), tmp_path / "val")
    single = _validate_on_photos(str(tmp_path), devices=1)
    assert set(single) == {"val/loss", "val/top1", "val/top5"}
    assert ranks == [pytest.approx(single, rel=1e-5)] * 2


def _validate_no_data(root: str, devices: int) -> str:
    from visattn.errors import ConfigError
    from visattn.tasks.validation_checks import LaunchedDataCheck

    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp", default_root_dir=root, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[LaunchedDataCheck()])
    try:
        trainer.validate(_Counter(), datamodule=_Numbers(n_eval=0), verbose=False)
    except ConfigError as err:
        return str(err)
    return "validated"


def test_validate_without_validation_data_is_one_line_in_every_process(tmp_path):
    """From a DDP audit: the check that one process makes before the run was skipped with several, so validate
    scored nothing and exited 0 (and a fit monitoring val/top1 never wrote its best checkpoint)."""
    ranks = _in_two_processes(functools.partial(_validate_no_data, str(tmp_path), devices=2), tmp_path / "none")
    assert ranks == ["validate: _Numbers holds no validation data; give it validation data"] * 2


def test_an_evaluation_loss_is_the_mean_over_samples_and_reads_nan_when_one_is():
    """torchmetrics 1.9 drops the weights under nan_strategy "disable": the mean of batch means (2.0 here), so a
    split's val/loss and test/loss depended on its batching and on the process count."""
    from visattn.tasks.classification import sample_mean_loss

    loss = sample_mean_loss()
    loss.update(torch.tensor(1.0), weight=1)
    loss.update(torch.tensor(3.0), weight=3)  # a batch of 3 whose mean loss is 3
    assert float(loss.compute()) == 2.5
    loss.update(torch.tensor(float("nan")), weight=2)
    assert torch.isnan(loss.compute())


class _Draws(GuardedTask, pl.LightningModule):
    """Records the random numbers each training step draws from torch, NumPy and ``random``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(1, 1)
        self.loss_guard = NonFiniteLossGuard()
        self.draws: list[list[float]] = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        self.draws.append([float(torch.rand(())), float(np.random.rand()), random.random()])
        return self.net(x[:, None]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _draws(devices: int, max_steps: int = 2, folder: Optional[str] = None, resume: bool = False) -> list[list[float]]:
    """The draws of each training step of a run, which checkpoints into ``folder`` (at epoch ends: 2 steps a
    process under DDP) and ``resume``s from its last checkpoint if asked."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from visattn.tasks.cli_callbacks import RandomStateCheckpoint

    pl.seed_everything(0, verbose=False)
    task = _Draws()
    saving = [ModelCheckpoint(dirpath=folder, save_last=True)] if folder else []
    pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=max_steps,
               logger=False, enable_checkpointing=bool(folder), enable_progress_bar=False, enable_model_summary=False,
               limit_val_batches=0, callbacks=[RandomStateCheckpoint(), *saving]).fit(
        task, datamodule=_Numbers(), ckpt_path=f"{folder}/last.ckpt" if resume else None)
    return task.draws


def test_ddp_processes_draw_apart_and_repeatably(tmp_path):
    # seed_everything seeds every process alike: both ranks drew the same dropout, MixUp and augmentation numbers.
    runs = {(run, rank): draws for run in ("first", "again")
            for rank, draws in enumerate(_in_two_processes(functools.partial(_draws, devices=2), tmp_path / run))}
    assert runs["first", 0] == runs["again", 0] and runs["first", 1] == runs["again", 1]
    for step in range(2):
        assert all(a != b for a, b in zip(runs["first", 0][step], runs["first", 1][step]))  # torch, NumPy, random
    assert _draws(devices=1) == _draws(devices=1)


def test_a_resumed_ddp_run_draws_as_the_uninterrupted_one(tmp_path):
    # Each process restored rank 0's saved states, and the processes drew alike again after a resume.
    whole = _in_two_processes(functools.partial(_draws, devices=2, max_steps=4, folder=str(tmp_path / "whole_run")),
                              tmp_path / "whole")
    folder = str(tmp_path / "checkpoints")
    _in_two_processes(functools.partial(_draws, devices=2, max_steps=2, folder=folder), tmp_path / "first")
    resumed = _in_two_processes(functools.partial(_draws, devices=2, max_steps=4, folder=folder, resume=True),
                                tmp_path / "resumed")
    # The first step after the resume draws as the uninterrupted run's third, on each process, and the processes
    # apart. (Later steps of this bare Trainer drift from it in one torch draw, in one process too; `visattn fit`
    # resumes exactly: test_a_resumed_run_with_augmentation_reaches_the_uninterrupted_runs_weights.)
    assert [draws[0] for draws in resumed] == [draws[2] for draws in whole] and resumed[0][0] != resumed[1][0]


class _Seer(pl.LightningModule):
    """Keeps the samples of each training step; sizes its schedule as visattn's tasks do, which makes Lightning set
    up the training loader before a resumed run's epoch is restored."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(1, 1)
        self.seen: list[list[float]] = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        self.seen.append(x.tolist())
        return self.net(x[:, None]).square().mean()

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"interval": "step", "scheduler": torch.optim.lr_scheduler.
                CosineAnnealingLR(optimizer, T_max=self.trainer.estimated_stepping_batches)}}


def _seen(devices: int, max_epochs: int, folder: str, resume: bool = False) -> list[list[float]]:
    """The samples of each training step of a run with two loader workers, which checkpoints into ``folder`` at
    each epoch's end and ``resume``s from its last checkpoint if asked."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    pl.seed_everything(0, verbose=False)
    task = _Seer()
    pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=max_epochs,
               logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
               callbacks=[ModelCheckpoint(dirpath=folder, save_last=True)]).fit(
        task, datamodule=_Numbers(num_workers=2), ckpt_path=f"{folder}/last.ckpt" if resume else None)
    return task.seen


def test_a_ddp_run_resumed_with_loader_workers_trains_on_the_epochs_own_order(tmp_path):
    """Lightning made the resumed run's first training iterator before it set the DistributedSampler's epoch, and
    workers take their first indices when it is made: epoch 1 trained on epoch 0's order again (a DDP audit)."""
    folder = str(tmp_path / "checkpoints")
    first = _in_two_processes(functools.partial(_seen, devices=2, max_epochs=1, folder=folder), tmp_path / "first")
    resumed = _in_two_processes(functools.partial(_seen, devices=2, max_epochs=2, folder=folder, resume=True),
                                tmp_path / "resumed")
    # what an uninterrupted run trains on in each process: Lightning's shuffling sampler, seeded by seed_everything
    orders = {epoch: [] for epoch in (0, 1)}
    for rank in (0, 1):
        sampler = DistributedSampler(TensorDataset(torch.arange(8.0)), num_replicas=2, rank=rank, shuffle=True, seed=0)
        for epoch, order in orders.items():
            sampler.set_epoch(epoch)
            indices = [float(i) for i in sampler]
            order.append([indices[:2], indices[2:]])  # batches of 2
    assert first == orders[0] and orders[1] != orders[0]
    assert resumed == orders[1]


class _Jittered(Dataset):
    """Samples that are their index plus a jitter in [0, 0.5) drawn as augmentation draws, from the batch's stream:
    a sample's value says which it is and what it drew."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor]:
        return (index + 0.5 * torch.rand((), generator=sample_generator()),)


class _JitteredNumbers(_Numbers):
    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.datasets["train"] = _Jittered()


def _fit_around_a_step_checkpoint(folder: str, ckpt_path: Optional[str] = None) -> dict:
    """The samples of each training step of a 3-epoch DDP run (2 batches of 2 a process an epoch) and its weights; it
    checkpoints every 3 steps into ``folder`` and resumes from ``ckpt_path`` if given."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    pl.seed_everything(0, verbose=False)
    task = _Seer()
    pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, logger=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0,
               callbacks=[ModelCheckpoint(dirpath=folder, every_n_train_steps=3, save_top_k=-1)]).fit(
        task, datamodule=_JitteredNumbers(), ckpt_path=ckpt_path)
    return {"seen": task.seen, "weights": [p.tolist() for p in task.net.parameters()]}


def test_a_ddp_run_resumed_inside_an_epoch_trains_the_uninterrupted_runs_remaining_batches(tmp_path):
    """Each process trained the resumed epoch's remaining batches from a fresh pass of its DistributedSampler (a
    batch trained twice), with a warning, and every later batch drew other augmentations (the loader's base seed
    came from the process's random state, restored as it was at the checkpoint, not at the epoch's start)."""
    straight = _in_two_processes(functools.partial(_fit_around_a_step_checkpoint, str(tmp_path / "straight")),
                                 tmp_path / "straight_run")
    resumed = _in_two_processes(functools.partial(_fit_around_a_step_checkpoint, str(tmp_path / "resumed"),
                                                  str(tmp_path / "straight" / "epoch=1-step=3.ckpt")),  # 1 batch in
                                tmp_path / "resumed_run")
    for rank in (0, 1):
        assert len(straight[rank]["seen"]) == 6 and resumed[rank]["seen"] == straight[rank]["seen"][3:]
        assert resumed[rank]["weights"] == straight[rank]["weights"]
    epochs = [sorted(int(x) for rank in (0, 1) for step in straight[rank]["seen"][2 * e:2 * e + 2] for x in step)
              for e in range(3)]
    assert epochs == [list(range(8))] * 3 and straight[0]["seen"][0] != straight[1]["seen"][0]


class _Predictor(pl.LightningModule):
    """Predicts class "high" with probability x / 10 for sample x, so each record shows which sample it is."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"class_names": ["low", "high"]})
        self.net = nn.Linear(1, 1)

    def predict_step(self, batch, batch_idx):
        (x,) = batch
        return torch.stack([1 - x / 10, x / 10], dim=1)  # (B, 2) probabilities


def _predict(root: str, devices: int) -> None:
    from visattn.tasks.prediction_writer import JsonPredictionWriter

    pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
               default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[JsonPredictionWriter(topk=1)]).predict(_Predictor(), datamodule=_Numbers())


def test_ddp_predict_writes_one_file_in_sample_order(tmp_path):
    # Each process wrote its own predictions-rankN.jsonl, samples 0, 2, 4 in one and 1, 3 in the other.
    _in_two_processes(functools.partial(_predict, str(tmp_path / "two"), devices=2), tmp_path / "predicted")
    _predict(str(tmp_path / "one"), devices=1)
    written = [(tmp_path / run / "predictions.jsonl").read_text() for run in ("two", "one")]
    assert written[0] == written[1] and sorted(p.name for p in (tmp_path / "two").iterdir()) == ["predictions.jsonl"]
    records = [json.loads(line) for line in written[0].splitlines()]
    assert [(r["sample"], r["predictions"][0]["label"]) for r in records] == [
        (0, "low"), (1, "low"), (2, "low"), (3, "low"), (4, "low")]
    assert [r["predictions"][0]["prob"] for r in records] == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6])


def _detr_losses(images: list, targets: list) -> dict:
    from visattn import create_model

    torch.manual_seed(0)
    model = create_model("detr_cbam_resnet20_cifar", num_classes=4).eval()
    model.training = True  # losses, with batch norm and dropout fixed: the same features in any batch
    return {k: float(v) for k, v in model(images, targets).items()}


def _detr_scene(i: int) -> tuple:
    torch.manual_seed(10 + i)
    boxes = [[4.0, 6.0, 28.0, 30.0], [34.0, 30.0, 60.0, 58.0], [10.0, 40.0, 24.0, 60.0]][: 1 + 2 * i]  # 1 box, 3 boxes
    return torch.rand(3, 64, 64), {"boxes": torch.tensor(boxes), "labels": torch.arange(len(boxes)) % 4}


def _detr_losses_of_this_rank() -> dict:
    image, target = _detr_scene(torch.distributed.get_rank())
    return _detr_losses([image], [target])


def _fcos_losses(images: list, targets: list) -> dict:
    from visattn import create_model

    torch.manual_seed(0)
    model = create_model("fcos_cbam_resnet20_cifar", num_classes=4).eval()
    model.training = True  # losses, with batch norm fixed: the same features in any batch
    return {k: float(v) for k, v in model(images, targets).items()}


def _fcos_losses_of_this_rank() -> dict:
    image, target = _detr_scene(torch.distributed.get_rank())
    return _fcos_losses([image], [target])


def test_fcos_losses_under_ddp_average_to_one_process_on_the_whole_batch(tmp_path):
    """torchvision's FCOS divides by each process's own foreground locations: the process with one box weighed
    its locations about three times as much as the one with three boxes did."""
    ranks = _in_two_processes(_fcos_losses_of_this_rank, tmp_path / "fcos")
    whole = _fcos_losses(*map(list, zip(*(_detr_scene(i) for i in (0, 1)))))
    assert set(whole) == {"classification", "bbox_regression", "bbox_ctrness"}
    for key in whole:
        assert (ranks[0][key] + ranks[1][key]) / 2 == pytest.approx(whole[key], rel=1e-5), key


def test_detr_box_losses_under_ddp_average_to_one_process_on_the_whole_batch(tmp_path):
    # Each process divided its box losses by its own box count: 1 box here and 3 there weighed the one box 3 times.
    ranks = _in_two_processes(_detr_losses_of_this_rank, tmp_path / "detr")
    whole = _detr_losses(*map(list, zip(*(_detr_scene(i) for i in (0, 1)))))
    for key in [k for k in whole if k.startswith(("loss_bbox", "loss_giou"))]:
        assert (ranks[0][key] + ranks[1][key]) / 2 == pytest.approx(whole[key], rel=1e-5), key


def _detector_validation_of_this_rank() -> dict:
    import warnings

    from visattn.tasks.detection import DetectionTask

    torch.manual_seed(0)
    task = DetectionTask("fcos_cbam_resnet20_cifar", num_classes=4)
    scenes = [_detr_scene(i % 2) for i in range(N_EVAL)]
    loader = torch.utils.data.DataLoader(scenes, batch_size=2, collate_fn=lambda batch: tuple(map(list, zip(*batch))))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        scores = _trainer("unused", devices=2).validate(task, loader, verbose=False)[0]
    return {"scores": scores, "sync advice": [str(w.message) for w in said if "sync_dist" in str(w.message)]}


def test_a_detectors_validation_map_under_ddp_is_not_said_to_need_syncing(tmp_path):
    """mAP is gathered from every process before it is logged, yet Lightning advised sync_dist=True for val/map and
    val/map50, as if each process had logged its own share's (a DDP audit)."""
    ranks = _in_two_processes(_detector_validation_of_this_rank, tmp_path / "validate")
    assert [rank["sync advice"] for rank in ranks] == [[], []]
    assert ranks[0]["scores"] == ranks[1]["scores"] and set(ranks[0]["scores"]) == {"val/map", "val/map50"}
