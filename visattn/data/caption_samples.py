"""Caption datasets and their collate function, without Lightning: the LightningDataModules
(:mod:`visattn.data.caption_datamodules`, which describes the batches) and `visattn evaluate`
(:mod:`visattn.inference.caption_scoring`) read them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from .scenes import FashionScenes
from .transforms import ImageTransform, sample_generator
from .vocab import Vocabulary

__all__ = ["CaptionSamples", "SceneImages", "collate_captions"]


class CaptionSamples(Dataset):
    """Dict samples with one encoded caption, from a dataset of ``(image, captions)`` or
    ``(image, captions, extras)`` items (``extras``: a dict of further per-image fields).

    Args:
        dataset: the source dataset.
        vocab: encodes the caption.
        max_len: longest encoded caption, ``<start>`` and ``<end>`` included.
        train: draw a random reference caption on each access (else the first one) and leave
            out ``references`` and the extras.
    """

    def __init__(self, dataset: Dataset, vocab: Vocabulary, *, max_len: int = 20, train: bool = False) -> None:
        self.dataset, self.vocab, self.max_len, self.train = dataset, vocab, max_len, train

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.dataset[index]
        if item is None:  # a broken image file of an evaluation split
            return None
        image, captions, *extras = item
        pick = int(torch.randint(len(captions), (), generator=sample_generator())) if self.train else 0
        sample = {"image": image, "caption": torch.tensor(self.vocab.encode(captions[pick], max_len=self.max_len))}
        if not self.train:
            sample["references"] = list(captions)
            for more in extras:
                sample.update(more)
        return sample


class SceneImages(Dataset):
    """FashionScenes as ``(image, captions, {"boxes", "labels"})`` with boxes in the frame of the
    transformed image (the transform must resize the whole canvas, like the ``"small"`` eval recipe).

    Args:
        scenes: the generated scenes of one split.
        transform: the image transform, applied to each scene's canvas.
    """

    def __init__(self, scenes: FashionScenes, transform: ImageTransform) -> None:
        self.scenes, self.transform = scenes, transform

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[str], dict[str, torch.Tensor]]:
        scene = self.scenes[index]
        image = self.transform(scene.image)  # (3, H, W)
        height, width = scene.image.shape[:2]
        scale = torch.tensor([image.shape[-1] / width, image.shape[-2] / height] * 2)
        boxes = torch.from_numpy(scene.boxes) * scale  # (N, 4) in input pixels
        return image, scene.captions, {"boxes": boxes, "labels": torch.from_numpy(scene.labels)}


def collate_captions(samples: Sequence[dict[str, Any]], *, pad_id: int = 0) -> dict[str, Any]:
    """Stack :class:`CaptionSamples` into a batch: captions padded with ``pad_id`` to the longest,
    per-image lists (``references``, ``boxes``, ``labels``) kept as lists."""
    captions = [s["caption"] for s in samples]
    batch = {
        "images": torch.stack([s["image"] for s in samples]),
        "captions": pad_sequence(captions, batch_first=True, padding_value=pad_id),  # (B, L)
        "lengths": torch.tensor([len(c) for c in captions]),
    }
    for key in ("references", "boxes", "labels"):
        if key in samples[0]:
            batch[key] = [s[key] for s in samples]
    return batch
