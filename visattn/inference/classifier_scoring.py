"""The scores of a trained classifier, without Lightning or torchmetrics: top-1 and top-5 accuracy, and with
``per_class`` each class's accuracy and the class it is most often mistaken for, over ``fashion-mnist`` or an
``imagefolder:DIR`` (`visattn evaluate`, ``save-weights --dataset``). Validation and test of
:class:`~visattn.tasks.classification.ImageClassifier` count with torchmetrics, which syncs DDP processes, and give
the same figures; torchmetrics' import (it imports scipy.signal and matplotlib) takes over a second.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from torch.utils.data import Dataset

from ..data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST
from ..data.image_folder import ImageFolder, evaluation_batches, seeded_subset, skipped_images, split_folders
from ..data.image_io import DEFAULT_MAX_PIXELS
from ..errors import ConfigError, MissingSplit
from ..scores import reported_score
from .classifier import Classifier

if TYPE_CHECKING:
    from ..data.transforms import ImageTransform

__all__ = ["check_fashion_mnist_labels", "class_accuracies", "evaluate_classifier", "evaluation_dataset",
           "imagefolder_root"]


def evaluation_dataset(spec: str, split: Optional[str], transform: ImageTransform, class_names: Sequence[str], *,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """``fashion-mnist`` (split train|test) or ``imagefolder:DIR``: ``DIR/<split>/<class>/`` when DIR
    has split folders, else ``DIR/<class>/`` (``split`` None). Class folders are matched to ``class_names`` (the
    classifier's labels, in label order) by name, a ``/`` in a label being ``_`` in its folder name; its image
    files may declare up to ``max_pixels`` pixels."""
    if spec == "fashion-mnist":
        if split not in ("train", "test"):
            raise ConfigError(f"--split {split}: fashion-mnist has the splits train and test")
        check_fashion_mnist_labels(class_names, spec)
        return FashionMNIST(split, transform)
    if spec.startswith("imagefolder:"):
        root = imagefolder_root(spec)
        splits = split_folders(root)
        if splits and split not in splits:
            raise MissingSplit(root, split, splits)
        return ImageFolder(root / split if splits else root, transform, classes=_class_folders(spec, class_names),
                           max_pixels=max_pixels)
    raise ConfigError(f"--dataset {spec}: a classifier is scored on fashion-mnist or imagefolder:DIR (and, by "
                      "`visattn evaluate`, on the pointing scenes fashion-scenes, fashion-mnist-canvas, "
                      "fashion-mnist-pairs)")


def _class_folders(spec: str, class_names: Sequence[str]) -> list[str]:
    """The folder name of each label, a ``/`` being ``_``; one line when two labels share one (each image
    of the folder was scored once under each label)."""
    label_of_folder: dict[str, str] = {}
    for name in class_names:
        other = label_of_folder.setdefault(name.replace("/", "_"), name)
        if other != name:
            raise ConfigError(f"{spec}: the classifier's labels {other!r} and {name!r} both read the class folder "
                              f"{name.replace('/', '_')} (a '/' in a label is '_' in its folder's name), so its "
                              "images cannot be scored; evaluate a model whose labels differ there")
    return [name.replace("/", "_") for name in class_names]


def imagefolder_root(spec: str) -> Path:
    """The folder of an ``imagefolder:DIR`` dataset (``~`` the home folder: the shell leaves it after a colon)."""
    if spec == "imagefolder:":  # Path("") is the working folder, which the user did not name
        raise ConfigError("--dataset imagefolder: names no folder; give one, e.g. imagefolder:photos")
    return Path(spec[len("imagefolder:"):]).expanduser()


def check_fashion_mnist_labels(class_names: Sequence[str], dataset: str) -> None:
    """One line unless a classifier's labels are Fashion-MNIST's, in their order: those datasets'
    targets are Fashion-MNIST label indices. Unnamed labels (``"0"``..``"9"``) are taken as they come."""
    unnamed = [str(i) for i in range(len(FASHION_MNIST_CLASSES))]
    if list(class_names) in (list(FASHION_MNIST_CLASSES), unnamed):
        return
    shown = ", ".join(class_names[:5]) + (", ..." if len(class_names) > 5 else "")
    raise ConfigError(f"--dataset {dataset}: the model's {len(class_names)} labels ({shown}) are not Fashion-MNIST's "
                      f"{len(FASHION_MNIST_CLASSES)}; score it on its own images with --dataset imagefolder:DIR")


@torch.inference_mode()
def evaluate_classifier(classifier: Classifier, dataset: Dataset, *, batch_size: int = 256,
                        num_workers: int = 0, limit: Optional[int] = None, per_class: bool = False) -> dict[str, Any]:
    """Top-1/top-5 accuracy of ``classifier`` over ``dataset`` (``limit`` samples drawn across it with
    a fixed seed, if given); broken image files are left out, ``n`` counts the images scored and
    ``skipped`` (for image files) those left out. ``per_class`` adds :func:`class_accuracies`."""
    dataset = seeded_subset(dataset, limit)
    num_classes = len(classifier.class_names)
    top_k = min(5, num_classes)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long)  # (true, predicted), flattened
    top1 = top5 = n = 0
    for images, targets in (b for b in evaluation_batches(dataset, batch_size=batch_size, num_workers=num_workers)
                            if b is not None):
        scores, targets = classifier.predict(images), _checked_targets(targets, num_classes)
        # as torchmetrics' MulticlassAccuracy picks (argmax; topk for top-5), so that ties break as in training's
        predicted = scores.argmax(dim=1)
        top1 += int((predicted == targets).sum())
        top5 += int((scores.topk(top_k, dim=1).indices == targets[:, None]).any(dim=1).sum())
        confusion += torch.bincount(targets * num_classes + predicted, minlength=num_classes * num_classes)
        n += len(targets)
    if n == 0:
        skipped = skipped_images(dataset).get("skipped")
        if skipped:  # not "empty": the folder's images all failed to decode
            raise ConfigError(f"none of the {skipped} image files drawn could be decoded (the warnings name each); "
                              "replace or remove them")
        raise ConfigError("the evaluation dataset is empty; check --dataset and --split")
    by_class = class_accuracies(confusion.view(num_classes, num_classes), classifier.class_names) if per_class else {}
    return {"top1": reported_score(top1 / n), "top5": reported_score(top5 / n), "n": n, **by_class,
            **skipped_images(dataset)}


def _checked_targets(targets: Any, num_classes: int) -> torch.Tensor:
    """The batch's class indices; one line for one that is no class of the classifier (counted a miss, it
    lowered the accuracy without a word)."""
    targets = torch.as_tensor(targets)
    whole = not targets.is_floating_point() or bool((targets == targets.round()).all())  # NaN is not
    if targets.dim() != 1 or targets.dtype == torch.bool or not whole:
        raise ConfigError(f"the dataset's targets are {targets.dtype} of shape {tuple(targets.shape)}; give each "
                          f"sample's class index, a whole number from 0 to {num_classes - 1}")
    outside = targets[(targets < 0) | (targets >= num_classes)]
    if len(outside):
        raise ConfigError(f"the dataset's target {outside[0].item():g} is no class of the classifier's {num_classes} "
                          f"(0 to {num_classes - 1}); give the class indices of its labels, in their order")
    return targets.long()


def class_accuracies(confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """From a ``(true, predicted)`` confusion matrix: ``mean_class_accuracy`` (the mean over the classes that
    have samples of each one's accuracy, what a skewed split's top-1 hides) and ``per_class``: each such
    class's ``accuracy``, ``n`` and the class its samples were most often mistaken for (``mistaken_for``,
    null when never; the lowest-numbered of classes taken for it as often)."""
    per_class, accuracies = {}, []
    for k, row in enumerate(confusion.tolist()):
        n = sum(row)
        if n:
            wrong = [count if j != k else 0 for j, count in enumerate(row)]
            mistaken = max(range(len(row)), key=wrong.__getitem__)
            accuracies.append(row[k] / n)
            per_class[class_names[k]] = {"accuracy": reported_score(row[k] / n), "n": n,
                                         "mistaken_for": class_names[mistaken] if wrong[mistaken] else None}
    mean = sum(accuracies) / len(accuracies)  # of the unrounded accuracies
    return {"mean_class_accuracy": reported_score(mean), "per_class": per_class}
