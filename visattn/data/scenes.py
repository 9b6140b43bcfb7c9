"""FashionScenes: real Fashion-MNIST items, tinted and laid out on a black canvas, with exact
boxes and reference captions, generated deterministically from ``(seed, split, index)``.

A scene holds ``min_items`` to ``max_items`` items. Each item is a Fashion-MNIST image scaled to
a side of 5/16 to 7/16 of the canvas (20-28 px on the 64 px canvas), tinted with a named colour
(pixel = gray value x colour) and pasted where its box keeps a gap of 2 px from every other
box, so items never overlap (rejection sampling with the scene's own random generator; on a
crowded canvas, one random cell of a 2 x 2 grid per item, so at most 4 items fit). The box is
tight around the item's visible (non-black) pixels. Some items repeat the class and colour of
the one before, so captions also count ("two green shirts").

Captions come from a small grammar (:func:`describe_scene`): every caption names every item's
colour and class word (plural for counted groups) and several add absolute positions ("on the
left") or the relation between two items ("a red sneaker to the left of a blue bag"), computed
from box centres.

Item sources: ``train`` scenes use Fashion-MNIST training images 0..49999, ``val`` scenes the
training images 50000..59999, and ``test`` scenes only the Fashion-MNIST test images.
:attr:`Scene.source_indices` says which image each item came from.
"""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, is_count, is_index, is_whole
from ..fileio import atomic_path, atomic_write_text, prepare_output_file
from .fashion_mnist import load_fashion_mnist, shared_tensor

__all__ = [
    "COLORS",
    "ITEM_PLURALS",
    "ITEM_CATEGORY_IDS",
    "ITEM_WORDS",
    "SCENES_MEAN",
    "SCENES_STD",
    "FashionScenes",
    "Scene",
    "describe_scene",
    "export_coco",
    "check_scene_counts",
    "recorded_scenes",
    "scene_settings",
]

# one caption word per Fashion-MNIST class, index = class id
ITEM_WORDS = ("top", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
# each item class's COCO category id (COCO's start at 1), as export_coco writes them and scenes detectors name them
ITEM_CATEGORY_IDS = tuple(range(1, len(ITEM_WORDS) + 1))
ITEM_PLURALS = {
    "top": "tops", "trousers": "trousers", "pullover": "pullovers", "dress": "dresses", "coat": "coats",
    "sandal": "sandals", "shirt": "shirts", "sneaker": "sneakers", "bag": "bags", "boot": "boots",
}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 40, 40),
    "green": (40, 200, 40),
    "blue": (50, 90, 255),
    "yellow": (255, 230, 40),
    "orange": (255, 140, 0),
    "purple": (160, 60, 220),
    "pink": (255, 120, 200),
    "white": (255, 255, 255),
}
# per-channel statistics of the first 1000 default training scenes (64 px canvas, 1-3 items)
SCENES_MEAN = (0.060, 0.045, 0.042)
SCENES_STD = (0.184, 0.141, 0.149)

Split = Literal["train", "val", "test"]
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_VAL_START = 50000  # Fashion-MNIST training images from here on are the val scenes' items
_MIN_SIDE, _MAX_SIDE = 5 / 16, 7 / 16  # item side as a fraction of the canvas side
_REPEAT_PROB = 0.3  # chance that an item repeats the previous item's class and colour
_GAP = 2  # pixels kept free between item boxes
_TRIES = 64  # candidate positions drawn at once per item
_LAYOUTS = 8  # random layouts tried before falling back to a grid
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass
class Scene:
    """One generated scene.

    Attributes:
        image: ``(H, W, 3)`` uint8, black canvas with tinted items.
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2`` pixel edges, tight around each item's
            visible pixels (the item covers columns ``x1 .. x2 - 1``).
        labels: ``(N,)`` int64 Fashion-MNIST class ids.
        colors: the ``N`` colour names.
        captions: at least 5 lower-case reference captions (none when drawn without, for detection).
        source_indices: ``(N,)`` int64 index of each item's image in the Fashion-MNIST split it
            came from (``train`` for train and val scenes, ``test`` for test scenes).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    colors: list[str]
    captions: list[str]
    source_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class FashionScenes(Dataset):
    """Scenes of tinted Fashion-MNIST items with boxes and captions; ``dataset[i]`` is a :class:`Scene`.

    Scenes are generated on access (a fraction of a millisecond each), so nothing is cached
    but the Fashion-MNIST arrays.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (items from disjoint Fashion-MNIST images).
        num_scenes: length of the dataset.
        canvas_size: side of the square scene images in pixels.
        min_items: fewest items in a scene.
        max_items: most items in a scene (``min_items = max_items = 1``: single-object scenes).
        colors: the tints items are drawn in (keys of :data:`COLORS`); ``("white",)`` leaves the
            Fashion-MNIST items gray, as classifiers trained on Fashion-MNIST know them.
        distinct_classes: every item of a scene of another class (by default an item repeats the
            previous one's class and colour 30% of the time, which captions count as "two bags").
        seed: with ``split`` and the index, determines each scene.
        root: folder holding the Fashion-MNIST idx files, as :class:`FashionMNIST` takes it.
    """

    def __init__(
        self,
        split: Split = "train",
        *,
        num_scenes: int = 10000,
        canvas_size: int = 64,
        min_items: int = 1,
        max_items: int = 3,
        colors: Sequence[str] | None = None,
        distinct_classes: bool = False,
        seed: int = 0,
        root: str | os.PathLike | None = None,
    ) -> None:
        _check_options(split, num_scenes, canvas_size, min_items, max_items, seed)
        _check_colors(colors)
        self.colors = list(colors or COLORS)
        self.split, self.num_scenes, self.canvas_size = split, num_scenes, canvas_size
        self.min_items, self.max_items, self.seed = min_items, max_items, seed
        self.distinct_classes = distinct_classes
        self.side_range = (round(_MIN_SIDE * canvas_size), round(_MAX_SIDE * canvas_size))
        images, labels = load_fashion_mnist("test" if split == "test" else "train", root=root)
        pool = np.arange(len(labels))
        if split != "test":
            pool = pool[_VAL_START:] if split == "val" else pool[:_VAL_START]
        self._images = shared_tensor(images)  # (M, 28, 28) uint8
        self._pool_by_class = [pool[labels[pool] == k] for k in range(len(ITEM_WORDS))]
        if any(len(p) == 0 for p in self._pool_by_class):
            raise ConfigError(f"Fashion-MNIST {split} items: some classes have no images; check the idx files")

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> Scene:
        return self.draw(index)

    def draw(self, index: int, *, captions: bool = True) -> Scene:
        """Scene ``index``; without ``captions`` (detection reads none) its ``captions`` are empty and the rest
        is the same: they are worded last, from the random numbers left after the drawing."""
        index = int(index)
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"scene {index} out of range 0..{self.num_scenes - 1}")
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
        labels, colors, sources = self._draw_items(rng)
        patches = [self._render_item(rng, source, color) for source, color in zip(sources, colors)]
        corners = _layout(rng, [p.shape[:2] for p in patches], self.canvas_size)
        image = np.zeros((self.canvas_size, self.canvas_size, 3), np.uint8)
        boxes = np.zeros((len(patches), 4), np.float32)
        for i, ((y, x), patch) in enumerate(zip(corners, patches)):
            h, w = patch.shape[:2]
            image[y : y + h, x : x + w] = patch  # boxes never overlap, so plain assignment
            boxes[i] = (x, y, x + w, y + h)
        described = describe_scene(labels, colors, boxes, canvas_size=self.canvas_size, rng=rng) if captions else []
        return Scene(image, boxes, labels, colors, described, sources)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, num_scenes={self.num_scenes}, "
            f"canvas_size={self.canvas_size}, items={self.min_items}..{self.max_items}, seed={self.seed})"
        )

    def _draw_items(self, rng: np.random.Generator) -> tuple[np.ndarray, list[str], np.ndarray]:
        count = int(rng.integers(self.min_items, self.max_items + 1))
        names = self.colors
        if self.distinct_classes:
            labels = [int(k) for k in rng.choice(len(ITEM_WORDS), size=count, replace=False)]
            colors = [names[rng.integers(len(names))] for _ in labels]
        else:
            labels, colors = [], []
            for i in range(count):
                if i > 0 and rng.random() < _REPEAT_PROB:
                    labels.append(labels[-1])
                    colors.append(colors[-1])
                else:
                    labels.append(int(rng.integers(len(ITEM_WORDS))))
                    colors.append(names[rng.integers(len(names))])
        sources = [rng.choice(self._pool_by_class[label]) for label in labels]
        return np.array(labels, np.int64), colors, np.array(sources, np.int64)

    def _render_item(self, rng: np.random.Generator, source: int, color: str) -> np.ndarray:
        """The tinted, scaled item cropped to its visible pixels: ``(h, w, 3)`` uint8."""
        side = int(rng.integers(self.side_range[0], self.side_range[1] + 1))
        gray = self._images[source].numpy()
        interpolation = cv2.INTER_AREA if side < gray.shape[0] else cv2.INTER_LINEAR
        gray = cv2.resize(gray, (side, side), interpolation=interpolation)
        rgb = np.array(COLORS[color], np.uint16)
        # a tinted pixel gray * rgb // 255 is visible (non-black) iff gray * max(rgb) >= 255
        visible = gray.astype(np.uint16) * rgb.max() >= 255
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        gray = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return (gray[:, :, None] * rgb // 255).astype(np.uint8)  # (h, w, 3)


def _check_options(split: str, num_scenes: int, canvas_size: int, min_items: int, max_items: int,
                   seed: int) -> None:
    if not isinstance(split, str) or split not in _SPLIT_CODES:  # a list was a TypeError (unhashable)
        raise ConfigError(f"split={split!r}: FashionScenes has splits 'train', 'val' and 'test'")
    # "64" was a TypeError deep inside; 2.5 and True were taken, 2.5 scenes failing at len()
    if not is_whole(num_scenes):
        raise ConfigError(f"num_scenes={num_scenes!r}: give a whole number of 0 or more")
    if not is_index(canvas_size) or canvas_size < 16:
        raise ConfigError(f"canvas_size={canvas_size!r}: give a whole number of pixels, 16 or more")
    if not is_whole(seed):  # numpy's "expected non-negative integer" named no setting
        raise ConfigError(f"seed={seed!r}: give a whole number of 0 or more")
    for name, value in (("min_items", min_items), ("max_items", max_items)):
        if not is_count(value):
            raise ConfigError(f"{name}={value!r}: give a whole number of items, 1 or more")
    if not min_items <= max_items:
        raise ConfigError(f"min_items={min_items}, max_items={max_items}: need 1 <= min_items <= max_items")
    per_row = _items_per_row(canvas_size)
    if max_items > per_row**2:
        raise ConfigError(
            f"max_items={max_items}: at most {per_row**2} items fit on a {canvas_size} px canvas; "
            "raise canvas_size or lower max_items"
        )


def _check_colors(colors: Sequence[str] | None) -> None:
    """One line unless ``colors`` is None or a non-empty sequence of :data:`COLORS` names: ``"red"`` had been
    spelt ``['r', 'e', 'd']`` in the refusal, and ``3`` was a TypeError."""
    if colors is None:
        return
    if isinstance(colors, str) or not isinstance(colors, Sequence):
        raise ConfigError(f"colors={colors!r}: give a list of colour names, e.g. [{next(iter(COLORS))!r}]; "
                          f"choose from {', '.join(COLORS)}")
    if not colors or set(colors) - set(COLORS):
        raise ConfigError(f"colors={list(colors)}: choose one or more of {', '.join(COLORS)}")


def _items_per_row(canvas_size: int) -> int:
    """How many of the largest items fit side by side, gaps included."""
    return canvas_size // (round(_MAX_SIDE * canvas_size) + _GAP)


def _layout(rng: np.random.Generator, sizes: list[tuple[int, int]], canvas: int) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` for patches of ``sizes`` ``(h, w)`` whose boxes keep ``_GAP``
    pixels apart: rejection sampling, or for a crowded canvas where that keeps failing, one
    random cell of a grid per patch (always room, as ``len(sizes) <= _items_per_row() ** 2``)."""
    for _ in range(_LAYOUTS):
        corners: list[tuple[int, int]] = []
        placed: list[tuple[int, int, int, int]] = []  # y1, x1, y2, x2 of the boxes so far
        for h, w in sizes:
            candidates = rng.integers(0, (canvas - h + 1, canvas - w + 1), (_TRIES, 2)).tolist()
            free = (c for c in candidates if all(_apart((c[0], c[1], c[0] + h, c[1] + w), b) for b in placed))
            corner = next(free, None)
            if corner is None:
                break
            corners.append(corner)
            placed.append((corner[0], corner[1], corner[0] + h, corner[1] + w))
        else:
            return corners
    per_row = _items_per_row(canvas)
    cell = canvas // per_row  # >= largest side + _GAP, so items in neighbouring cells keep the gap
    cells = rng.permutation(per_row**2)[: len(sizes)].tolist()
    return [
        (row * cell + int(rng.integers(cell - _GAP - h + 1)), col * cell + int(rng.integers(cell - _GAP - w + 1)))
        for (row, col), (h, w) in zip((divmod(c, per_row) for c in cells), sizes)
    ]


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether boxes ``(y1, x1, y2, x2)`` are at least ``_GAP`` pixels apart along some axis."""
    return a[2] + _GAP <= b[0] or b[2] + _GAP <= a[0] or a[3] + _GAP <= b[1] or b[3] + _GAP <= a[1]


# --- captions ------------------------------------------------------------------------------


@dataclass
class _Group:
    """Items of one class and colour, described together ("two green shirts")."""

    word: str
    color: str
    centres: list[tuple[float, float]]  # (x, y) box centre of each item

    @property
    def count(self) -> int:
        return len(self.centres)


def describe_scene(
    labels: np.ndarray,
    colors: list[str],
    boxes: np.ndarray,
    *,
    canvas_size: int,
    rng: np.random.Generator | None = None,
) -> list[str]:
    """Reference captions of a scene: at least 5 distinct lower-case sentences, each naming every
    item's colour and class word (plural in a counted group).

    Positions and relations come from box centres and are only stated when they hold for every
    item of a counted group ("two green shirts in different places" otherwise).

    Args:
        labels: ``(N,)`` Fashion-MNIST class ids, ``N >= 1``.
        colors: the ``N`` colour names.
        boxes: ``(N, 4)`` ``x1, y1, x2, y2`` boxes.
        canvas_size: side of the canvas (for "on the left", "in the upper half", "in the middle").
        rng: picks between synonymous wordings; default: a fixed seed.
    """
    if not len(labels) or not len(labels) == len(colors) == len(boxes):  # else an IndexError deep in the wording
        raise ConfigError(f"describe_scene: {len(labels)} labels, {len(colors)} colors and {len(boxes)} boxes; give "
                          "one of each per item, one item or more")
    rng = rng if rng is not None else np.random.default_rng(0)
    groups = sorted(_groups(labels, colors, boxes), key=lambda g: g.centres[0])
    phrases = [_phrase(g) for g in groups]
    places = [_place(g, canvas_size) for g in groups]
    be = "is" if groups[0].count == 1 else "are"
    picture = ("a picture of", "an image of", "a photo of")[rng.integers(3)]
    background = ("on a black background", "against a dark background")[rng.integers(2)]
    if len(groups) == 1:
        (phrase,), (place,) = phrases, places
        captions = [phrase, f"{phrase} {place}", f"there {be} {phrase} {place}",
                    f"{phrase} {background}", f"{picture} {phrase}", f"{place} {be} {phrase}"]
    else:
        total = sum(g.count for g in groups)
        captions = [
            _join_and(phrases),
            f"there {be} {_join_and(phrases)}",
            _join_and([f"{p} {place}" for p, place in zip(phrases, places)]),
            *_relation_captions(groups, phrases, places, fallback=f"{_join_and(phrases)} {background}"),
            f"{picture} {_number(total)} items: {_join_and(phrases)}",
        ]
    return list(dict.fromkeys(captions))


def _relation_captions(groups: list[_Group], phrases: list[str], places: list[str], *, fallback: str) -> list[str]:
    """ "A left of B" and "B right of A" for the first pair of groups with a clear relation, the
    other groups by their place; without such a pair, ``fallback`` and the reversed listing."""
    for i, j in itertools.combinations(range(len(groups)), 2):
        forward, backward = _relation(groups[i], groups[j]), _relation(groups[j], groups[i])
        if forward is not None:  # then backward is its mirror image
            others = [k for k in range(len(groups)) if k not in (i, j)]
            extras = "".join(f" and {phrases[k]} {places[k]}" for k in others)
            return [f"{phrases[i]} {forward} {phrases[j]}{extras}", f"{phrases[j]} {backward} {phrases[i]}{extras}"]
    return [fallback, _join_and(phrases[::-1])]


def _groups(labels: np.ndarray, colors: list[str], boxes: np.ndarray) -> list[_Group]:
    keys = [(int(label), color) for label, color in zip(labels, colors)]
    centres = [((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in np.asarray(boxes).tolist()]
    return [
        _Group(ITEM_WORDS[label], color, [c for c, key in zip(centres, keys) if key == (label, color)])
        for label, color in dict.fromkeys(keys)  # first-seen order
    ]


def _phrase(group: _Group) -> str:
    """ "a red sneaker", "an orange bag", "two green shirts", "a pair of blue trousers"."""
    if group.count == 1:
        article = "an" if group.color[0] in "aeiou" else "a"
        pair = "pair of " if group.word == "trousers" else ""
        return f"{article} {pair}{group.color} {group.word}"
    pairs = "pairs of " if group.word == "trousers" else ""
    return f"{_number(group.count)} {pairs}{group.color} {ITEM_PLURALS[group.word]}"


def _place(group: _Group, canvas_size: int) -> str:
    """Where the group's items lie on the canvas, if they all lie in the same place."""
    places = {_point_place(x, y, canvas_size) for x, y in group.centres}
    return places.pop() if len(places) == 1 else "in different places"


def _point_place(x: float, y: float, canvas_size: int) -> str:
    """Where a point lies, along its larger offset from the middle of the canvas."""
    dx, dy = x - canvas_size / 2, y - canvas_size / 2
    if max(abs(dx), abs(dy)) < canvas_size / 8:
        return "in the middle"
    if abs(dx) >= abs(dy):
        return "on the left" if dx < 0 else "on the right"
    return "in the upper half" if dy < 0 else "in the lower half"  # not "top": an item word


def _relation(a: _Group, b: _Group) -> str | None:
    """Where ``a`` is seen from ``b``, along the axis their centres differ most (y grows
    downwards); ``None`` when the items of the groups disagree."""
    relations = {_point_relation(pa, pb) for pa in a.centres for pb in b.centres}
    return relations.pop() if len(relations) == 1 else None


def _point_relation(a: tuple[float, float], b: tuple[float, float]) -> str:
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _join_and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _number(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


# --- COCO export ---------------------------------------------------------------------------


_DRAWN_BY = ("canvas_size", "min_items", "max_items", "seed")
_SCORED_SIZES = ("num_val", "num_test")  # a run scores every scene of these splits; it samples train


def scene_settings(hparams: Any) -> dict[str, int]:
    """What draws a data module's scenes (canvas size, item counts, seed) and how many its run validated
    and tested on, for its ``preprocessing`` record: ``visattn evaluate`` then scores the model on the
    scenes its training run scored."""
    return {key: int(hparams[key]) for key in (*_DRAWN_BY, *_SCORED_SIZES)}


def scenes_split(hparams: Any, split: Split) -> FashionScenes:
    """The scenes of ``split`` a data module's settings draw (``num_train``, ``num_val`` or ``num_test`` of
    them, with its canvas size, item counts, seed and Fashion-MNIST ``root``). A setting it refuses is named as the
    data module's: ``data.init_args.num_train``."""
    try:
        return FashionScenes(split, num_scenes=hparams[f"num_{split}"], canvas_size=hparams["canvas_size"],
                             min_items=hparams["min_items"], max_items=hparams["max_items"], seed=hparams["seed"],
                             root=hparams["root"])
    except ConfigError as err:
        key, equals, rest = str(err).partition("=")
        if not equals or key not in (*hparams, "num_scenes"):
            raise
        raise ConfigError(f"data.init_args.{f'num_{split}' if key == 'num_scenes' else key}={rest}") from None


def check_scene_counts(hparams: Any) -> None:
    """One line naming a data module's ``num_train``, ``num_val`` or ``num_test`` that is no count of scenes, when the
    module is made: a split other than the one it draws then was refused only at its setup (2.5 scenes, "10")."""
    for key in ("num_train", "num_val", "num_test"):
        if not is_whole(hparams[key]):
            raise ConfigError(f"data.init_args.{key}={hparams[key]!r}: give a whole number of 0 or more")


def recorded_scenes(preprocessing: dict[str, Any], split: Split, num_scenes: int | None = None, *,
                    canvas_size: int) -> FashionScenes:
    """``num_scenes`` scenes of ``split`` drawn with the settings ``preprocessing["scenes"]`` records
    (:func:`scene_settings`); by default as many as that run validated or tested on, else 1000 (the train
    split; older and shipped weights, which record no sizes). A record without settings gets
    ``canvas_size`` and the defaults. Scene ``i`` of a split is the same whatever the count."""
    recorded = preprocessing.get("scenes", {})
    drawn_by = {key: value for key, value in recorded.items() if key in _DRAWN_BY}
    count = num_scenes or recorded.get(f"num_{split}", 1000)
    return FashionScenes(split, num_scenes=count, **{"canvas_size": canvas_size, **drawn_by})


def export_coco(scenes: FashionScenes, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the scenes as COCO data: ``images/<split>_<index>.png``, ``instances_<split>.json``
    (detection; category id from :data:`ITEM_CATEGORY_IDS`, Fashion-MNIST class id + 1, name from :data:`ITEM_WORDS`,
    ``bbox`` = ``[x, y, w, h]``) and ``captions_<split>.json`` (COCO captions), named by split as COCO's
    are, so that the splits share a folder. Image id = index + 1. An earlier export's files are replaced,
    a JSON file of that name visattn did not write is refused; an export stopped midway leaves no JSON of the split.

    Returns:
        ``{"images": folder, "instances": path, "captions": path}``.
    """
    out_dir = Path(out_dir)
    paths = {"images": out_dir / "images", "instances": out_dir / f"instances_{scenes.split}.json",
             "captions": out_dir / f"captions_{scenes.split}.json"}
    for kind in ("instances", "captions"):
        prepare_output_file(paths[kind], flag="out_dir", ours=_exported_scenes)
    # An export killed midway had left the earlier export's JSON naming images half replaced by other scenes, one
    # cut off: the JSON goes first and comes back last, so a JSON there names only whole images of its scenes.
    for kind in ("instances", "captions"):
        if paths[kind].is_file():
            paths[kind].unlink()
    images_dir = paths["images"]
    images_dir.mkdir(parents=True, exist_ok=True)
    images, instances, captions = [], [], []
    for index in range(len(scenes)):
        scene, image_id = scenes[index], index + 1
        file_name = f"{scenes.split}_{index:06d}.png"
        with atomic_path(images_dir / file_name) as tmp:
            Image.fromarray(scene.image).save(tmp, format="PNG")
        height, width = scene.image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for (x1, y1, x2, y2), label in zip(scene.boxes.tolist(), scene.labels.tolist()):
            bbox = [x1, y1, x2 - x1, y2 - y1]
            instances.append({"id": len(instances) + 1, "image_id": image_id, "category_id": ITEM_CATEGORY_IDS[label],
                              "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
        captions += [{"id": len(captions) + k + 1, "image_id": image_id, "caption": text}
                     for k, text in enumerate(scene.captions)]
    categories = [{"id": id_, "name": word, "supercategory": "fashion"}
                  for id_, word in zip(ITEM_CATEGORY_IDS, ITEM_WORDS)]
    info = {"description": repr(scenes)}
    atomic_write_text(paths["instances"], json.dumps(
        {"info": info, "images": images, "annotations": instances, "categories": categories}))
    atomic_write_text(paths["captions"], json.dumps({"info": info, "images": images, "annotations": captions}))
    return paths


def _exported_scenes(path: Path) -> bool:
    """Whether ``path`` is a COCO file :func:`export_coco` wrote (its description names the scenes)."""
    try:
        description = json.loads(path.read_text(encoding="utf-8"))["info"]["description"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(description, str) and description.startswith(f"{FashionScenes.__name__}(")
