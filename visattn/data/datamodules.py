"""LightningDataModules for image classification: Fashion-MNIST and users' image folders.

Validation is carved from the training data with a seeded permutation, so it is the same on
every run and every machine (stratified by class for image folders); the test split is only ever
used by ``test`` and ``predict``.
``num_classes``, ``class_names`` and ``preprocessing`` are known right after construction, so
a LightningCLI config can link ``data.num_classes -> model.num_classes`` (and the others).
``channels: 1`` gives gray images for a one-channel model (``model_kwargs: {in_chans: 1}``); the
recorded ``preprocessing`` then says so, and evaluation and inference read gray images too.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import random
import reprlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, get_args

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset, default_collate
from torch.utils.data._utils.worker import _generate_state
from torch.utils.data.dataloader import _BaseDataLoaderIter, _SingleProcessDataLoaderIter

from ..devices import MAX_WORKERS_PER_CPU, max_workers
from ..errors import (ArgumentError, ConfigError, VisattnWarning, check_keyword_types, is_count, is_many, is_number,
                      is_whole, outside_visattn)
from .fashion_mnist import (FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FashionMNIST,
                           find_fashion_mnist)
from .image_io import DEFAULT_MAX_PIXELS, path_argument
from .image_folder import (ImageFolder, check_class_count, collate_present, find_classes, for_evaluation,
                           image_files_of, seeded_subset, split_folders)
from .preprocessing import (IMAGENET_MEAN, IMAGENET_STD, DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, Interpolation,
                            preprocessing_problem)
from .transforms import (AugmentationStream, ImageTransform, Recipe, active_augmentation_stream, augmentation_problem,
                         eval_transform_of, train_transforms, unknown_recipe)

__all__ = ["FashionMNISTDataModule", "ImageFolderDataModule", "split_indices"]

Split = Literal["train", "val", "test"]


def split_indices(
    n: int, val_fraction: float, seed: int, *, labels: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministically split ``range(n)`` into shuffled train and validation indices.

    Validation holds ``round(n * val_fraction)`` samples, but at least one when ``val_fraction > 0``
    and training can spare it (a small set whose share rounds to none would otherwise validate
    nothing). Without ``labels`` they are the first of the permutation (the shipped Fashion-MNIST
    split). With ``labels`` the split is stratified: each class gives its share, the largest
    remainders taking the samples rounding leaves over, but keeps at least one sample for training,
    so training sees every class; validation is empty when every class has a single sample.
    ``val_fraction`` is from 0 to below 1.
    """
    if not (is_number(val_fraction) and 0 <= val_fraction < 1):  # -0.1 had validated on all but one sample
        raise ArgumentError("val_fraction", val_fraction, "give the share of samples held out, from 0 to below 1")
    # else numpy's errors, naming neither: "axis 0 is out of bounds" for n "10", "expected non-negative integer"
    if not is_whole(n):
        raise ArgumentError("n", n, "give the number of samples, a whole number of 0 or more")
    if not is_whole(seed):
        raise ArgumentError("seed", seed, "give a whole number of 0 or more")
    if labels is not None and len(labels) != n:  # else an IndexError, or a split of the first n labels only
        raise ConfigError(f"labels={reprlib.repr(labels)}: give one label per sample, {n}, not {len(labels)}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = round(n * val_fraction)
    if n_val == 0 and val_fraction > 0 and n >= 2:
        n_val = 1  # rounding is the only change: a split that already validates on something stays put
    if labels is None:
        return order[n_val:], order[:n_val]
    shuffled = np.asarray(labels)[order]
    classes, counts = np.unique(shuffled, return_counts=True)
    quotas = val_fraction * counts
    per_class = np.minimum(np.floor(quotas).astype(int), counts - 1)
    spare = n_val - int(per_class.sum())
    for k in np.argsort(np.floor(quotas) - quotas, kind="stable"):  # largest remainder first
        if spare > 0 and per_class[k] < counts[k] - 1:
            per_class[k] += 1
            spare -= 1
    in_val = np.zeros(n, dtype=bool)
    for label, take in zip(classes, per_class):
        in_val[np.flatnonzero(shuffled == label)[:take]] = True  # positions in order: a random pick of the class
    return order[~in_val], order[in_val]


class EpochSeededLoader(DataLoader):
    """A DataLoader whose single-process iterators seed augmentation as its worker processes are seeded:
    from the base seed torch draws from the main random state for every iterator (a worker's seed is that
    plus its id), so each epoch's draws depend on the run's random state, not on the epochs before it in
    this process; :class:`~visattn.data.transforms.ImageTransform` reseeds from it at the epoch's first call.

    Persistent workers over a :class:`BatchSeeded` dataset are seeded the same way: from the second
    epoch on, the loader draws the base seed a new iterator would draw and the workers reseed from it,
    then run the ``worker_init_fn`` (Lightning's reseeds them again under ``seed_everything(workers=True)``),
    so they draw what new workers would.

    Under a sampler whose order comes from ``set_epoch`` (DDP's shuffling ``DistributedSampler``), the iterator is
    made at its first batch: Lightning makes a fit's first training iterator early (before a resumed run's epoch is
    restored and set), and worker processes take their indices when the iterator is made, so a run resumed at
    epoch 1 trained on epoch 0's order again (Lightning issue #21938).
    """

    def __iter__(self) -> Iterator[Any]:
        if any(callable(getattr(sampler, "set_epoch", None)) and getattr(sampler, "shuffle", False)
               for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None))):
            return _MadeAtFirstBatch(self._iterator_now)
        return self._iterator_now()

    def _iterator_now(self) -> _BaseDataLoaderIter:
        reseeded = self.dataset if self.persistent_workers and isinstance(self.dataset, BatchSeeded) else None
        if reseeded is not None and self._iterator is None:
            reseeded.worker_init_fn = self.worker_init_fn  # set after construction by Lightning; workers copy it
        elif reseeded is not None:
            reseeded.epoch_seed.fill_(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        return super().__iter__()

    def _get_iterator(self) -> _BaseDataLoaderIter:
        return _EpochSeededIterator(self) if self.num_workers == 0 else super()._get_iterator()


class EpochShuffle(Sampler[int]):
    """``0 .. n - 1`` in an order drawn from ``(seed, epoch)`` alone, not from the random state of the process.

    Lightning calls :meth:`set_epoch` before each training epoch; a loop that does not gets the next epoch's order
    on each pass, as from a shuffling DataLoader.

    Args:
        n: samples in the dataset.
        seed: the run's seed (:class:`SplitLoadersMixin` gives ``torch.initial_seed()``).
    """

    shuffle: ClassVar[bool] = True  # as DistributedSampler's flag: its order changes with set_epoch

    def __init__(self, n: int, *, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seeds(self.seed, self.epoch)[0])
        self.epoch += 1
        return iter(torch.randperm(self.n, generator=generator).tolist())


class _LeftOut(Sampler[int]):
    """``sampler``'s next pass without its first ``start`` indices (``start`` is 0 again after it): the samples a
    resumed epoch had trained, which are then never loaded. A DataLoader refuses a new ``sampler`` once built, so
    :class:`ResumableLoader` puts this in its batch sampler."""

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler, self.start = sampler, 0

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return itertools.islice(iter(self.sampler), start, None)


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def batch_seed(base_seed: int, indices: Sequence[int]) -> int:
    """The seed of the batch of samples ``indices`` in an epoch of ``base_seed``."""
    key = np.asarray([base_seed, *indices], np.uint64).tobytes()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int]:
    """Two independent seeds of ``epoch`` in a run of ``seed``: its sample order's and its iterator's base seed."""
    order, base = np.random.SeedSequence(seed, spawn_key=(epoch,)).generate_state(2, np.uint64)
    return int(order), int(base) % 2**63  # a base seed as torch draws one: a non-negative int64


class ResumableLoader(EpochSeededLoader):
    """The training loader, resumable inside an epoch: :meth:`state_dict` (saved in Lightning's checkpoints) is the
    epoch of the loader's latest iterator and the batches that iterator gave the training loop (counted here, not
    in workers, which load ahead), and :meth:`load_state_dict` makes the next iterator of that epoch leave them out.

    Over an :class:`EpochShuffle` (one process) or DDP's ``DistributedSampler``, each epoch's order and each
    process's base seed (augmentation, worker seeds) come from ``(seed, epoch, rank)`` and the iterator draws nothing
    from the process's random state, so a run resumed anywhere on as many processes shuffles as the uninterrupted
    one and its later epochs augment alike; the skipped samples are not read. The seed is saved too, so a resumed
    run keeps its order whatever it was seeded with. Over another sampler (the sequential one of
    ``overfit_batches``), or on another number of processes, an epoch resumed inside trains its remaining batches
    from a fresh iterator, with a warning.
    """

    _epoch: Optional[int] = None  # the epoch of the latest iterator (None: not made yet)
    _given = 0  # batches that iterator gave the loop, the skipped ones of a resumed epoch included
    _resume: Optional[dict[str, Any]] = None  # a loaded state, until the next iterator is made

    def state_dict(self) -> dict[str, Any]:
        order = self._order()
        epoch = self._epoch if self._epoch is not None else getattr(self.sampler, "epoch", 0)
        return {"epoch": epoch, "batches": self._given, "num_replicas": self._replicas(),
                **({"seed": order.seed} if order else {})}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Kept until the next iterator: under DDP, Lightning rebuilds this loader with its sampler after the data
        # module loads the state (replaying this assignment), so the sampler it resumes is not known yet.
        self._resume = dict(state_dict)

    def _iterator_now(self) -> Iterator[Any]:
        order = self._order()
        self._epoch = getattr(self.sampler, "epoch", 0)
        resume, self._resume = self._resume or {}, None
        done = resume.get("batches", 0) if resume.get("epoch") == self._epoch else 0
        replicas = resume.get("num_replicas", 1)  # older checkpoints: taken as one process's
        if order is not None and replicas == self._replicas():
            order.seed = resume.get("seed", order.seed)
        elif done:
            self._warn_drawn_afresh(done, saved_replicas=replicas)
            done = 0
        if order is not None:
            self._left_out().start = done * self.batch_size
            rank = getattr(order, "rank", 0)  # processes draw apart, as seed_apart seeds them
            self.generator = torch.Generator().manual_seed(epoch_seeds(order.seed + rank, self._epoch)[1])
        self._given = done
        return self._counted(super()._iterator_now())

    def _warn_drawn_afresh(self, done: int, *, saved_replicas: int) -> None:
        if getattr(self.sampler, "rank", 0):  # every DDP process resumes alike: the first says so
            return
        if self._order() is None:
            why, fix = f"under a {type(self.sampler).__name__}, which", ""
        else:  # each process's share of an epoch depends on the process count
            why = f"on {_processes(self._replicas())}, saved on {saved_replicas},"
            fix = f", or on {_processes(saved_replicas)}"
        warnings.warn(f"the training loader resumed inside epoch {self._epoch} {why} cannot leave out the {done} "
                      "batches trained before, so the epoch's remaining batches are drawn afresh; resume from an "
                      f"epoch's last checkpoint{fix}", VisattnWarning, stacklevel=outside_visattn())

    def _order(self) -> EpochShuffle | DistributedSampler | None:
        """The sampler, if its order is a function of its seed and epoch (and rank) alone."""
        return self.sampler if type(self.sampler) in (EpochShuffle, DistributedSampler) else None

    def _replicas(self) -> int:
        return getattr(self.sampler, "num_replicas", 1)

    def _left_out(self) -> _LeftOut:
        """The batch sampler's sampler, wrapped at the first iterator so that a pass can leave out samples."""
        if not isinstance(self.batch_sampler.sampler, _LeftOut):
            self.batch_sampler.sampler = _LeftOut(self.batch_sampler.sampler)
        return self.batch_sampler.sampler

    def _counted(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._given += 1
            yield batch


class _MadeAtFirstBatch:
    """The iterator ``make()`` gives, made when its first batch is asked for."""

    def __init__(self, make: Callable[[], Iterator[Any]]) -> None:
        self._make = make
        self._iterator: Optional[Iterator[Any]] = None

    def __iter__(self) -> "_MadeAtFirstBatch":
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._make()
        return next(self._iterator)


class BatchSeeded(Dataset):
    """The training ``dataset``, each batch of which draws its random numbers (augmentation, a caption's pick) from
    an :class:`~visattn.data.transforms.AugmentationStream` of the epoch's base seed and the batch's indices: a
    batch is the same whichever worker loads it, with any number of workers or none, and a fit resumed inside an
    epoch draws for the batches it has left what the uninterrupted run drew (the draws had followed each worker's
    samples in order, so skipped batches shifted the rest).

    The epoch's base seed is the one torch draws for the DataLoader iterator, which a single-process iterator of
    :class:`EpochSeededLoader` holds and a worker's seed is plus its id. Persistent workers are kept from epoch to
    epoch, so the loader sets ``epoch_seed`` (shared memory) to the base seed a new iterator would draw, and they
    reseed ``random``, numpy and torch as torch seeds a new worker and run ``worker_init_fn`` as a new worker does:
    they would carry their random states over, which a run resumed at an epoch's end starts without.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.epoch_seed = torch.full((), -1, dtype=torch.int64).share_memory_()  # -1: the first epoch's own seeds
        self._seeded_from = -1
        self.worker_init_fn: Optional[Callable[[int], None]] = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        """The samples of one batch, as DataLoader fetches a batch."""
        reseeded = int(self.epoch_seed)
        if reseeded != self._seeded_from:
            self._seeded_from = reseeded
            self._seed_as_new_worker(reseeded)
        with AugmentationStream(batch_seed(self._base_seed(reseeded), indices)).active():
            fetch = getattr(self.dataset, "__getitems__", None)
            return fetch(indices) if fetch is not None else [self.dataset[i] for i in indices]

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    @staticmethod
    def _base_seed(reseeded: int) -> int:
        """The epoch's base seed; ``reseeded``: the one the loader set for persistent workers (-1: none)."""
        stream = active_augmentation_stream()  # a single-process iterator's
        if stream is not None:
            return stream.seed
        worker = torch.utils.data.get_worker_info()
        if worker is None:  # read outside a DataLoader
            return torch.initial_seed()
        return reseeded if reseeded >= 0 else worker.seed - worker.id

    def _seed_as_new_worker(self, base_seed: int) -> None:
        """This worker's random states as torch's worker loop sets them in a new worker of ``base_seed``."""
        worker = torch.utils.data.get_worker_info()
        if worker is None:  # read in the main process, whose random states are the run's
            return
        random.seed(base_seed + worker.id)
        torch.manual_seed(base_seed + worker.id)
        np.random.seed(_generate_state(base_seed, worker.id))
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker.id)


class _EpochSeededIterator(_SingleProcessDataLoaderIter):
    def __init__(self, loader: DataLoader) -> None:
        super().__init__(loader)
        self._augmentation = AugmentationStream(self._base_seed)

    def _next_data(self) -> Any:
        with self._augmentation.active():
            return super()._next_data()


class SplitLoadersMixin:
    """The DataLoader hooks of a LightningDataModule over its ``datasets`` dict, filled by ``setup``.

    ``predict`` reads the test split; an empty validation split turns validation off. Data modules
    whose samples need batching other than default collation set ``collate_fn``. Validation and
    test leave broken image files out instead of counting a substitute twice (:func:`for_evaluation`);
    a batch of only broken files is ``None``, which the tasks' steps skip.

    Augmentation draws from the seed torch draws for each epoch's DataLoader iterator (:class:`EpochSeededLoader`),
    so a run resumed at an epoch's end draws what the uninterrupted run drew; each training batch draws from that
    seed and its samples (:class:`BatchSeeded`), whatever the number of workers. That seed and the training order come
    from the run's seed and the epoch (and a DDP process's rank), and a fit resumed inside an epoch trains the batches
    the uninterrupted run had left, augmented alike (:class:`ResumableLoader`). Evaluation workers persist;
    training workers persist when ``hparams.persistent_workers`` says so, reseeded each epoch as new
    ones are, and otherwise start afresh each epoch.

    Under several processes (DDP) validation and test split their data between the processes without
    repeating a sample (:meth:`_evaluation_sampler`), so each sample is scored once, as in one process;
    training and predict keep the samplers Lightning gives them.
    """

    datasets: dict[Split, Dataset]
    collate_fn: Optional[Callable[[list], Any]] = None
    _train_resume: Optional[dict[str, Any]] = None  # the training loader's state a resumed fit restored
    # Each setting that names a file or a folder, and which: checked as the data module's setting, since the
    # dataset a value reaches names its own argument (`annotations=5` for `val_annotations=5`).
    path_settings: ClassVar[dict[str, str]] = {}

    def state_dict(self) -> dict[str, Any]:
        """The fit's training loader's state (:class:`ResumableLoader`), saved in checkpoints.

        Lightning saves it in its fit loop's state too, but restores that only into a loader built after the restore,
        and the tasks' schedules build theirs before it (``estimated_stepping_batches``), so a resumed fit trained the
        stopped epoch afresh; a data module's state is restored before, and each training loader built takes it."""
        loader = getattr(self.trainer, "train_dataloader", None) if self.trainer is not None else None
        return {"train_loader": loader.state_dict()} if isinstance(loader, ResumableLoader) else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_resume = state_dict.get("train_loader")

    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        if stage == "fit":  # a later fit of this data module starts afresh
            self._train_resume = None

    def how_to_validate(self) -> str:
        """What to give this data module for a validation split, where it has none."""
        given = ", ".join(f"{key} {json.dumps(value)}" for key, value in self.hparams.items()
                          if key.startswith(("val", "num_val")) and isinstance(value, (str, int, float, type(None))))
        return f"give it validation data (now data.init_args {given})" if given else "give it validation data"

    def _check_setting_types(self) -> None:
        """One line naming a flag setting that is not True or False, or a number setting that is no number: from
        Python, which does not check them as the CLI does, ``augment="no"`` augmented and ``val_fraction="0.1"`` was a
        TypeError."""
        try:
            check_keyword_types(type(self).__name__, type(self).__init__, dict(self.hparams))
        except ArgumentError as err:
            raise ConfigError(f"data.init_args.{err}") from None
        for name, kind in self.path_settings.items():
            if self.hparams.get(name) is not None:
                path_argument(f"data.init_args.{name}", self.hparams[name], kind)

    def _check_loader_options(self) -> None:
        """One line for a batch size under 1, or a worker count under 0 or over the machine's :func:`max_workers`."""
        h = self.hparams
        if not is_count(h.batch_size):  # "8" was a TypeError; 8.5 failed in the DataLoader
            raise ConfigError(f"data.init_args.batch_size={h.batch_size!r}: give 1 or more samples per batch")
        if not is_whole(h.num_workers) or not h.num_workers <= max_workers():
            raise ConfigError(f"data.init_args.num_workers={h.num_workers!r}: give 0 (load in the main process) to "
                              f"{max_workers()} ({MAX_WORKERS_PER_CPU} per CPU; more only compete for them)")

    def _check_preprocessing(self) -> None:
        """One line naming the data setting when the ``preprocessing`` recorded for checkpoints would build no
        transform (a ``crop_pct`` above 1, an unknown filter)."""
        problem = preprocessing_problem(self.preprocessing)
        if problem:
            raise ConfigError(f"data.init_args.{problem.removeprefix('preprocessing.')}")

    def _check_validation_readable(self) -> None:
        """One line when no validation image decodes: validation would run on nothing after a whole
        training epoch, and its metrics (what a checkpoint monitors) would never be logged. Stops at the
        first good file, so it costs one decode, and marks the broken files it meets (warned about once,
        as in training). On failure the fit splits are dropped, so a later setup reads the fixed files."""
        files, positions = image_files_of(self.datasets.get("val"))
        if files is None or not positions or files.any_readable(positions):
            return
        del self.datasets["train"], self.datasets["val"]
        where, fix = self._validation_source()
        raise ConfigError(f"{where}: none of its {len(positions)} validation image files can be decoded "
                          f"(see the warnings); {fix}")

    def _validation_source(self) -> tuple[str, str]:
        """Where the validation images come from, and how to fix them, for :meth:`_check_validation_readable`."""
        return "the validation split", "replace the broken images"

    def _dataset(self, split: Split) -> Dataset:
        if split not in self.datasets:
            self.setup("test" if split == "test" else "fit")
        return self.datasets[split]

    def _evaluation_sampler(self, dataset: Dataset, split: Split) -> Optional[Sampler]:
        """This process's share of an evaluation split under several processes, no sample repeated.

        Lightning would otherwise give the loader a ``DistributedSampler``, which pads the split to a
        multiple of the process count: a sample or more is scored twice, and metrics count more samples
        than the split holds. Lightning's ``UnrepeatedDistributedSampler`` (its predict sampler) gives the
        processes shares that differ by one at most; a ``DistributedSampler`` set here is one Lightning
        leaves in place. None (Lightning's choice) in one process and when the trainer's
        ``use_distributed_sampler`` is off; also, with a warning when padding repeats samples, when a
        process would get no sample (it would skip the epoch-end sync the others wait in).
        """
        trainer, kwargs = getattr(self, "trainer", None), self._sampler_kwargs()
        if kwargs.get("num_replicas", 1) < 2:
            return None
        if not getattr(getattr(trainer, "_accelerator_connector", None), "use_distributed_sampler", True):
            return None
        n, processes = len(dataset), kwargs["num_replicas"]
        if n >= processes:
            return UnrepeatedDistributedSampler(dataset, **{**kwargs, "shuffle": False})
        repeated = processes - n
        warnings.warn(f"the {split} split is padded from {n} to {processes} samples for {processes} processes (a "
                      f"process without a sample would hold the others up), so its metrics count {repeated} twice; "
                      f"give it at least {processes} samples, or evaluate with trainer.devices 1", VisattnWarning,
                      stacklevel=outside_visattn())
        return None

    def _sampler_kwargs(self) -> dict[str, Any]:
        """The attached trainer's ``distributed_sampler_kwargs`` (``num_replicas``, ``rank``); empty without one."""
        return getattr(getattr(self, "trainer", None), "distributed_sampler_kwargs", None) or {}

    def _loader(self, split: Split, *, evaluation: bool = False) -> DataLoader:
        """``split``'s loader; ``evaluation`` (validation and test) scores each sample once under DDP."""
        dataset, train = self._dataset(split), split == "train"
        if not len(dataset):  # training would fail in the sampler; test and predict score nothing with exit 0
            count = self.hparams.get(f"num_{split}")
            fix = (f"data.init_args.num_{split} is {count}: give 1 or more" if count is not None
                   else f"check what data.init_args gives the {split} split")
            raise ConfigError(f"data: {type(self).__name__} holds no {split} samples; {fix}")
        if not train:
            for_evaluation(dataset)
        workers = self.hparams.num_workers
        persistent = workers > 0 and (not train or self.hparams.get("persistent_workers", False))
        sampler = self._evaluation_sampler(dataset, split) if evaluation else self._training_order(dataset, split)
        return (ResumableLoader if train else EpochSeededLoader)(
            BatchSeeded(dataset) if train else dataset,
            batch_size=self.hparams.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            # a ragged last batch (size 1 at worst) upsets BatchNorm statistics
            drop_last=train and len(dataset) > self.hparams.batch_size,
            collate_fn=functools.partial(collate_present, collate=self.collate_fn or default_collate),
            num_workers=workers,
            persistent_workers=persistent,
            pin_memory=torch.cuda.is_available(),
        )

    def _training_order(self, dataset: Dataset, split: Split) -> Optional[EpochShuffle]:
        """The training split's order in one process: from the seed torch was seeded with last (``seed_everything``'s,
        which a resumed run sets again; torch's own random one without it, saved in the checkpoint all the same), and
        the epoch. An explicit setting would be a second seed beside ``seed_everything``, which users expect to
        change the order. None for other splits, and under DDP (Lightning gives its ``DistributedSampler``)."""
        if split != "train" or self._sampler_kwargs():
            return None
        return EpochShuffle(len(dataset), seed=torch.initial_seed())

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train")
        if self._train_resume is not None:
            loader.load_state_dict(self._train_resume)
        return loader

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", evaluation=True) if len(self._dataset("val")) else []  # [] = no validation

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", evaluation=True)

    def predict_dataloader(self) -> DataLoader:
        processes, n = self._sampler_kwargs().get("num_replicas", 1), len(self._dataset("test"))
        if 0 < n < processes:  # Lightning's predict sampler fails an assertion (padding would write records twice)
            raise ConfigError(f"predict: the test split holds fewer samples ({n}) than processes ({processes}); "
                              f"predict with trainer.devices {n} or fewer")
        return self._loader("test")


def split_images_dir(hparams: Any, split: Split) -> str:
    """The images folder of ``split`` in a data module with ``images_dir`` and the optional
    ``val_images_dir`` and ``test_images_dir`` (COCO keeps ``val2014/`` apart)."""
    own = {"train": hparams.images_dir, "val": hparams.val_images_dir, "test": hparams.test_images_dir}[split]
    return own or hparams.images_dir


COCO_VALIDATION_FIX = "point data.init_args.val_images_dir at the folder holding them, or replace them"
# What a data module of COCO files needs for a validation split
COCO_VALIDATION_SETTING = "set data.init_args.val_annotations (and val_images_dir, if its images are in another folder)"


class _ClassificationDataModule(SplitLoadersMixin, pl.LightningDataModule):
    """Splits, transforms and DataLoaders shared by the data modules below.

    Subclasses call ``save_hyperparameters()`` and implement ``_source`` (a whole split with a
    transform) and ``class_names``; they may override ``_train_val_sets`` and ``_test_set``.
    """

    task = "classification"  # the task whose model these batches feed; `visattn fit` pairs them

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[Split, Dataset] = {}

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def preprocessing(self) -> dict:
        """The evaluation transform's settings, for checkpoints; ``input_size`` is timm-style ``[C, H, W]``."""
        h = self.hparams
        resize = {key: h[key] for key in ("crop_pct", "interpolation") if key in h}  # image folders set them
        # A gray image is normalised with the first mean and std, as albumentations does: record only those.
        return {"input_size": [h.channels, h.img_size, h.img_size], "mean": per_channel(h.mean)[:h.channels],
                "std": per_channel(h.std)[:h.channels], "recipe": h.recipe, **resize}

    def train_transform(self) -> ImageTransform:
        h, p = self.hparams, self.preprocessing
        if not h.augment:
            return self.eval_transform()
        return train_transforms(p["input_size"], p["mean"], p["std"], recipe=h.recipe, hflip=h.hflip,
                                **self._augmentation_settings(),
                                interpolation=p.get("interpolation", DEFAULT_INTERPOLATION))

    def _augmentation_settings(self) -> dict[str, Any]:
        """The augmentation settings given to :func:`train_transforms` and checked by :func:`augmentation_problem`
        (an unset ``scale`` leaves the recipe's)."""
        h = self.hparams
        scale = {} if h.scale is None else {"scale": h.scale}
        return {**scale, "color_jitter": h.color_jitter, "auto_augment": h.auto_augment,
                "random_erasing": h.random_erasing}

    def eval_transform(self) -> ImageTransform:
        return eval_transform_of(self.preprocessing)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and "train" not in self.datasets:
            train, val = self._train_val_sets()
            self.datasets["train"], self.datasets["val"] = self._limited(train), self._limited(val)
        if stage in (None, "test", "predict") and "test" not in self.datasets:
            self.datasets["test"] = self._limited(self._test_set())

    def _source(self, split: Literal["train", "test"], transform: ImageTransform) -> Dataset:
        raise NotImplementedError

    def _train_val_sets(self) -> tuple[Dataset, Dataset]:
        train_full = self._source("train", self.train_transform())
        train_idx, val_idx = split_indices(len(train_full), self.hparams.val_fraction, self.hparams.seed)
        val_full = self._source("train", self.eval_transform())
        return Subset(train_full, train_idx.tolist()), Subset(val_full, val_idx.tolist())

    def _test_set(self) -> Dataset:
        return self._source("test", self.eval_transform())

    def _limited(self, dataset: Dataset) -> Dataset:
        limit = self.hparams.limit
        if limit is None or limit >= len(dataset):
            return dataset
        if isinstance(dataset, Subset):  # already shuffled: its first samples are a random pick
            return Subset(dataset.dataset, dataset.indices[:limit])
        return seeded_subset(dataset, limit, seed=self.hparams.seed)

    def _check_options(self) -> None:
        h = self.hparams
        self._check_setting_types()
        if not is_count(h.channels) or h.channels not in (1, 3):  # before preprocessing_problem names input_size
            raise ConfigError(f"data.init_args.channels={h.channels!r}: give 3 (RGB) or 1 (gray, for a model with "
                              "in_chans 1)")
        check_img_size(h.img_size)  # before preprocessing_problem names input_size, which the config does not set
        if not 0 <= h.val_fraction < 1:
            raise ConfigError(f"data.init_args.val_fraction={h.val_fraction!r}: give the share of training images held "
                              "out for validation, from 0 up to (not including) 1, e.g. 0.1")
        if h.limit is not None and not is_count(h.limit):
            raise ConfigError(f"data.init_args.limit={h.limit!r}: give a whole number of samples, 1 or more, or null "
                              "for all")
        if not is_whole(h.seed):  # else numpy's "expected non-negative integer" at setup, naming no setting
            raise ConfigError(f"data.init_args.seed={h.seed!r}: give a whole number of 0 or more")
        self._check_preprocessing()
        self._check_augmentation_options()
        self._check_loader_options()

    def _check_augmentation_options(self) -> None:
        """One line for a training augmentation setting that cannot be used, or that would change nothing."""
        h = self.hparams
        if h.recipe not in get_args(Recipe):  # else refused only once setup builds the first transform
            raise ConfigError(f"data.init_args.{unknown_recipe(h.recipe)}")
        problem = augmentation_problem(**self._augmentation_settings())
        if problem:
            raise ConfigError(f"data.init_args.{problem}")
        if h.scale is not None and h.recipe != "photo":
            raise ConfigError(f"data.init_args.scale: the {h.recipe!r} recipe pads and crops at full size, so a crop "
                              "scale changes nothing; set recipe photo, or leave scale out")
        asked = [name for name, off in AUGMENTATION_DEFAULTS.items() if h[name] != off]
        if asked and not h.augment:
            raise ConfigError(f"data.init_args.{asked[0]}: augment is false, so training images are not augmented; "
                              f"set augment true, or leave {asked[0]} out")


# The classification data modules' augmentation settings that add to their recipe, at their values that add nothing.
AUGMENTATION_DEFAULTS = {"scale": None, "color_jitter": 0.0, "auto_augment": None, "random_erasing": 0.0}


def per_channel(values: Any) -> list[Any]:
    """A data module's ``mean`` or ``std`` as the list its ``preprocessing`` records: one number is for all channels
    (0.5 was a TypeError, and "0.5" refused spelt as ['0', '.', '5']); any other sequence (a numpy array) as a list."""
    return list(values) if is_many(values) else [values]


def check_img_size(img_size: object) -> None:
    """One line naming ``data.init_args.img_size`` (a data module's option) when it is no side in pixels."""
    if not is_count(img_size):
        raise ConfigError(f"data.init_args.img_size={img_size!r}: give the side of the model's square input in pixels "
                          "(>= 1)")


class FashionMNISTDataModule(_ClassificationDataModule):
    """Fashion-MNIST: 60000 training images (minus the validation part) and 10000 test images.

    Args:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        persistent_workers: keep the training workers from epoch to epoch instead of starting new ones
            (seconds an epoch under spawn, as on macOS and Windows); they draw what new ones would.
        img_size: side of the square images the model takes (the 28x28 images are resized).
        mean: per-channel normalisation mean (default: Fashion-MNIST's own statistics).
        std: per-channel normalisation standard deviation.
        val_fraction: fraction of the training images held out for validation.
        seed: seed of the validation split (and of the subset ``limit`` picks).
        augment: augment training images (``False``: training uses the evaluation transform).
        recipe: transform recipe, ``"small"`` (pad + crop) or ``"photo"`` (resized crop).
        hflip: flip half the training images left to right (``False`` for digits, text or signs).
        scale: ``"photo"`` only: the least and most of the image a training crop keeps (default ``[0.6, 1.0]``;
            timm's and torchvision's ImageNet recipe: ``[0.08, 1.0]``).
        color_jitter: brightness, contrast and saturation jitter on every training image; 0: none.
        auto_augment: timm's augmentation policy string, e.g. ``"rand-m9-mstd0.5-inc1"`` (RandAugment, DeiT's);
            None: none.
        random_erasing: probability of erasing a random rectangle of a training image (timm's ``re_prob``;
            DeiT's 0.25); 0: none.
        limit: use at most this many samples of each split (quick runs and tests).
        root: folder holding the idx files; default: ``$VISATTN_DATA``, then the Debian package.
        channels: image channels the model takes: 3 (the gray values repeated) or 1 (for ``in_chans`` 1).
    """

    path_settings = {"root": "folder"}

    def __init__(
        self,
        *,
        batch_size: int = 128,
        num_workers: int = 2,
        persistent_workers: bool = False,
        img_size: int = 28,
        mean: Sequence[float] = FASHION_MNIST_MEAN,
        std: Sequence[float] = FASHION_MNIST_STD,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = True,
        recipe: Recipe = "small",
        hflip: bool = True,
        scale: tuple[float, float] | None = None,
        color_jitter: float = 0.0,
        auto_augment: str | None = None,
        random_erasing: float = 0.0,
        limit: int | None = None,
        root: str | None = None,
        channels: int = 3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_options()

    @property
    def class_names(self) -> list[str]:
        return list(FASHION_MNIST_CLASSES)

    def prepare_data(self) -> None:
        """Find (or download) the files once, early: the train split's for fit and validate (validation is carved
        from it), the test split's for test and predict (a fit does not require the t10k files it never reads)."""
        stage = getattr(getattr(self.trainer, "state", None), "fn", None)
        split = "test" if stage in ("test", "predict") else "train"
        find_fashion_mnist(self.hparams.root, splits=(split,), setting="data.init_args.root")

    def _source(self, split: Literal["train", "test"], transform: ImageTransform) -> Dataset:
        return FashionMNIST(split, transform, root=self._root(split))

    def _root(self, split: Literal["train", "test"]) -> Optional[Path]:
        """The folder ``root`` names for ``split``, looked up here so that a problem names the setting."""
        root = self.hparams.root
        return None if root is None else find_fashion_mnist(root, splits=(split,), setting="data.init_args.root")


class ImageFolderDataModule(_ClassificationDataModule):
    """Users' images in ``root/<class>/<image>`` folders (see :class:`ImageFolder`).

    Args:
        root: training images, one sub-folder per class.
        val_root: validation images in the same layout; default: ``val_fraction`` of ``root``.
        test_root: test images in the same layout; needed only for ``test`` and ``predict``.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        persistent_workers: keep the training workers from epoch to epoch instead of starting new ones
            (seconds an epoch under spawn, as on macOS and Windows); they draw what new ones would.
        img_size: side of the square images the model takes.
        mean: per-channel normalisation mean (default: ImageNet's).
        std: per-channel normalisation standard deviation.
        val_fraction: fraction of ``root`` held out for validation when there is no ``val_root``
            (at least one image when above 0; a folder of one image per class cannot spare one).
        seed: seed of the validation split (and of the subset ``limit`` picks).
        augment: augment training images (``False``: training uses the evaluation transform).
        recipe: transform recipe, ``"photo"`` (resized crop) or ``"small"`` (pad + crop).
        hflip: flip half the training images left to right (``False`` for digits, text or signs).
        scale: ``"photo"`` only: the least and most of the image a training crop keeps (default ``[0.6, 1.0]``;
            timm's and torchvision's ImageNet recipe: ``[0.08, 1.0]``).
        color_jitter: brightness, contrast and saturation jitter on every training image; 0: none.
        auto_augment: timm's augmentation policy string, e.g. ``"rand-m9-mstd0.5-inc1"`` (RandAugment, DeiT's);
            None: none.
        random_erasing: probability of erasing a random rectangle of a training image (timm's ``re_prob``;
            DeiT's 0.25); 0: none.
        crop_pct: ``"photo"`` evaluation: the centre crop's share of the resized image (timm's ``crop_pct``;
            fine-tuning timm weights, give their ``pretrained_cfg``'s, e.g. 0.9 for its augreg ViTs).
        interpolation: resize filter, ``"bilinear"`` or ``"bicubic"`` (timm's ViTs: bicubic), of evaluation and of
            training's crops (``"photo"``) or whole images (``"small"``), as timm's training transform.
        limit: use at most this many samples of each split (quick runs and tests).
        channels: image channels the model takes: 3 (RGB) or 1 (gray, for ``in_chans`` 1; ``mean`` and
            ``std`` keep their first value).
        max_pixels: image files whose header declares more pixels (width x height) are skipped, with a
            warning, before decoding: a guard against decompression bombs (see ``decode_image``).
    """

    path_settings = {"root": "folder", "val_root": "folder", "test_root": "folder"}

    def __init__(
        self,
        root: str,
        *,
        val_root: str | None = None,
        test_root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 2,
        persistent_workers: bool = False,
        img_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = True,
        recipe: Recipe = "photo",
        hflip: bool = True,
        scale: tuple[float, float] | None = None,
        color_jitter: float = 0.0,
        auto_augment: str | None = None,
        random_erasing: float = 0.0,
        crop_pct: float = DEFAULT_CROP_PCT,
        interpolation: Interpolation = DEFAULT_INTERPOLATION,
        limit: int | None = None,
        channels: int = 3,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_options()
        if not is_count(max_pixels):
            raise ConfigError(f"data.init_args.max_pixels={max_pixels!r}: give the most pixels (width x height) an "
                              f"image file may declare, e.g. {DEFAULT_MAX_PIXELS}")
        self._class_names = find_classes(root)  # fails early, and num_classes is known now
        splits = split_folders(Path(root))
        if splits:  # a split-folder layout, as evaluate's imagefolder: reads: it would train a "test vs train" model
            given = ", ".join(f"{key} {Path(root) / name}" for key, name in
                              (("root", "train"), ("val_root", "val"), ("test_root", "test")) if name in splits)
            raise ConfigError(f"data.init_args.root {root}: its folders are the splits {', '.join(splits)}, not "
                              f"classes; give {given}")
        check_class_count(root, self._class_names)  # before the model is built with num_classes=1

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def num_skipped(self) -> int:
        """Broken image files skipped so far, each counted once over all splits set up."""
        return len({path for folder in self._folders() for path in folder.skipped})

    def _source(self, split: Literal["train", "test"], transform: ImageTransform) -> Dataset:
        root = self.hparams.root if split == "train" else self.hparams.test_root
        if root is None:
            raise ConfigError(
                "ImageFolderDataModule: set data.init_args.test_root to test or predict "
                "(the test split is never carved from root)"
            )
        # The training folder defines the classes: built without classes=, it refuses an empty class folder.
        return ImageFolder(root, transform, classes=None if split == "train" else self._class_names,
                           max_pixels=self.hparams.max_pixels)

    def _train_val_sets(self) -> tuple[Dataset, Dataset]:
        if self.hparams.val_root is None:
            return self._carved_train_val_sets()
        val = ImageFolder(self.hparams.val_root, self.eval_transform(), classes=self._class_names,
                          max_pixels=self.hparams.max_pixels)
        return self._source("train", self.train_transform()), val

    def _carved_train_val_sets(self) -> tuple[Subset, Subset]:
        """Validation carved from ``root``, stratified by class; the two splits share bad-file marks and
        a broken file is replaced only from its own split (else training would read validation images)."""
        train = self._source("train", self.train_transform())
        val = train.with_transform(self.eval_transform())
        h = self.hparams
        train_idx, val_idx = split_indices(len(train), h.val_fraction, h.seed, labels=train.targets)
        if h.val_fraction > 0 and len(val_idx) == 0:  # before training: a monitored val metric would never appear
            raise ConfigError(
                f"{h.root}: {len(train)} images, one per class, leave none for validation "
                f"(val_fraction={h.val_fraction}; each class keeps one for training); add images, give a "
                "validation folder as data.init_args.val_root, or set data.init_args.val_fraction 0 (and monitor no "
                "val/ metric) to train without validation"
            )
        return train.split(train_idx), val.split(val_idx)

    def setup(self, stage: str | None = None) -> None:
        fresh = "val" not in self.datasets
        super().setup(stage)
        if fresh and "val" in self.datasets:
            self._check_validation_readable()

    def _validation_source(self) -> tuple[str, str]:
        h = self.hparams
        if h.val_root is not None:
            return h.val_root, "replace them or add readable images"
        return (f"{h.root} (val_fraction={h.val_fraction})",
                "replace them, add images, or give a validation folder as data.init_args.val_root")

    def _folders(self) -> list[ImageFolder]:
        return [d.dataset if isinstance(d, Subset) else d for d in self.datasets.values()]
