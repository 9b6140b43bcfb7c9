"""Caption datasets for users' images: COCO captions JSON and Karpathy split JSON.

- COCO captions (``captions_train2014.json`` and the like, or :func:`~visattn.data.scenes.export_coco`'s
  ``captions_<split>.json``): ``images`` with ``id`` and ``file_name``, ``annotations`` with ``image_id``
  and ``caption``; read through pycocotools' ``COCO``.
- Karpathy splits (``dataset_flickr8k.json``, ``dataset_coco.json``): ``images`` with
  ``filename``, optional ``filepath`` (a sub-folder of the images folder), ``split`` (``train``,
  ``val``, ``test`` or ``restval``) and ``sentences`` with ``raw`` (and ``tokens``).

Each sample is ``(image, captions)``: the transform's tensor and every reference caption of the
image. A caption with no word in it (see :func:`~visattn.data.vocab.tokenize`) is dropped when read:
it would train the model to stop at once and make CIDEr fail. An image left with no caption is
left out, with one warning naming the file; a file with no caption that has a word is refused, and
so is one whose annotations name an image it does not list (:func:`check_image_ids`, as for
detection).
Broken image files are skipped the way :class:`~visattn.data.image_folder.ImageFolder` skips them
(see :func:`visattn.data.image_folder.decode_next_good`): warned about once, counted in
``num_skipped``, and replaced by the next decodable sample, so batches keep their size (or, for
evaluation, left out: :func:`visattn.data.image_folder.for_evaluation`).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import reprlib
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any, Callable, Literal

import numpy as np
import torch

from ..errors import ConfigError, outside_visattn
from ..fileio import not_a_folder
from .image_folder import ImageFiles, SkippedImageWarning
from .image_io import DEFAULT_MAX_PIXELS, path_argument
from .transforms import to_tensor
from .vocab import has_word

__all__ = [
    "CaptionImages",
    "CocoCaptions",
    "KarpathyCaptions",
    "KarpathySplit",
    "check_image_ids",
    "image_paths",
    "load_coco",
    "read_karpathy",
]

KarpathySplit = Literal["train", "val", "test", "restval"]
Transform = Callable[[np.ndarray], torch.Tensor]


def coco_spec(spec: str) -> tuple[str, str]:
    """``(FILE.json, IMAGES_DIR)`` of a ``--dataset coco:ANNOTATIONS.json:IMAGES_DIR`` (or
    ``karpathy:SPLITS.json:IMAGES_DIR``), split after ``.json`` so that the images folder may hold a colon; one
    line when either part is empty (``Path("")`` is the working folder, which the user did not name: its files
    of matching names were scored). A leading ``~`` of either is the home folder: the shell leaves it after a colon."""
    kind, _, rest = spec.partition(":")
    cut = rest.find(".json:")
    annotations, images_dir = (rest[:cut + 5], rest[cut + 6:]) if cut >= 0 else rest.rpartition(":")[::2]
    if not annotations or not images_dir:
        example = "karpathy:dataset_flickr8k.json:Flicker8k_Dataset" if kind == "karpathy" else \
            "coco:annotations/captions_val2014.json:val2014"
        raise ConfigError(f"--dataset {spec}: name the {'split' if kind == 'karpathy' else 'annotations'} file and "
                          f"the images folder, e.g. {example}")
    return os.path.expanduser(annotations), os.path.expanduser(images_dir)


class CaptionImages(ImageFiles):
    """Image files with their reference captions; ``dataset[i]`` is ``(image, captions)``.

    Args:
        samples: ``(image path, captions)`` pairs, each with at least one caption.
        transform: callable from an HWC uint8 array to a tensor; default: a ``(3, H, W)``
            float tensor in 0..1.
        max_pixels: images declaring more pixels are refused (and skipped).
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, list[str]]],
        *,
        transform: Transform | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self._track([path for path, _ in samples], max_pixels)
        self.captions = [list(captions) for _, captions in samples]
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[str]] | None:
        i, image = self._decode(index)
        if image is None:
            return None
        return (self.transform(image) if self.transform is not None else to_tensor(image)), self.captions[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, transform={self.transform})"


class CocoCaptions(CaptionImages):
    """A COCO captions JSON file and its images folder; images without captions are left out.

    Args:
        annotations: the captions JSON (``images`` + ``annotations`` with ``caption``).
        images_dir: the folder holding each image's ``file_name``.
        transform: callable from an HWC uint8 array to a tensor.
        max_pixels: images declaring more pixels are refused (and skipped).
    """

    def __init__(
        self,
        annotations: str | os.PathLike,
        images_dir: str | os.PathLike,
        *,
        transform: Transform | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.annotations = path_argument("annotations", annotations, "file")
        images_dir = path_argument("images_dir", images_dir)
        coco = load_coco(self.annotations)
        require_images_dir(images_dir, self.annotations)
        samples, self.image_ids, wordless = [], [], []
        try:
            images = coco.dataset.get("images", [])
            paths = image_paths(self.annotations, images, images_dir)
            annotations = coco.dataset.get("annotations", [])
            if not annotations:  # before the images left out for want of a caption
                raise ConfigError(f"{self.annotations}: no image has a caption; is it a COCO captions file?")
            check_image_ids(self.annotations, images, [ann["image_id"] for ann in annotations])
            _check_caption_texts(self.annotations, annotations)
            for image, path in zip(images, paths):
                given = [ann["caption"] for ann in coco.imgToAnns.get(image["id"], [])]
                captions = _with_words(given)
                if captions:
                    samples.append((path, captions))
                    self.image_ids.append(image["id"])
                else:  # no caption, or none with a word: scored n would drop it unsaid
                    wordless.append(image["file_name"])
        except (KeyError, TypeError, AttributeError) as err:
            raise ConfigError(
                f"{self.annotations}: not COCO captions JSON (bad or missing {err}); "
                "expected images with id and file_name, annotations with image_id and caption"
            ) from None
        _check_wordless(self.annotations, wordless, kept=len(samples))
        super().__init__(samples, transform=transform, max_pixels=max_pixels)


class KarpathyCaptions(CaptionImages):
    """One split of a Karpathy split JSON (``dataset_flickr8k.json``, ``dataset_coco.json``, ...).

    Args:
        split_json: the JSON file.
        images_dir: the folder holding the images (joined with each image's ``filepath`` if any).
        split: the split to read, or several (``("train", "restval")`` is the usual COCO training set).
        transform: callable from an HWC uint8 array to a tensor.
        max_pixels: images declaring more pixels are refused (and skipped).
        entries: the file's images as :func:`read_karpathy` gave them, so that the splits of one file read and
            tokenize it once; default: read ``split_json``.
    """

    def __init__(
        self,
        split_json: str | os.PathLike,
        images_dir: str | os.PathLike,
        *,
        split: KarpathySplit | Sequence[KarpathySplit] = "train",
        transform: Transform | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        entries: Sequence[dict] | None = None,
    ) -> None:
        self.split_json = path_argument("split_json", split_json, "file")
        images_dir = path_argument("images_dir", images_dir)
        splits = {split} if isinstance(split, str) else set(split)
        entries = read_karpathy(self.split_json) if entries is None else entries
        require_images_dir(images_dir, self.split_json)
        samples = [(image_file(images_dir, os.path.join(e["filepath"], e["filename"])), e["captions"]) for e in entries
                   if e["split"] in splits]
        if not samples:
            found = sorted({e["split"] for e in entries})
            raise ConfigError(f"{self.split_json}: no images with captions in split {sorted(splits)} (it has {found})")
        super().__init__(samples, transform=transform, max_pixels=max_pixels)


def read_karpathy(path: str | os.PathLike) -> list[dict]:
    """The images of a Karpathy split JSON as ``{"filename", "filepath", "split", "captions"}``
    dicts (``filepath`` is ``""`` when absent); sentences with no word in them are dropped, and
    images left without sentences are left out.

    Raises:
        ConfigError: missing file, invalid JSON, not the Karpathy layout, or no sentence with a word.
    """
    source = path_argument("path", path, "file")  # made once: a Path made per sentence was half the read's time
    data = _read_json(source)
    entries, wordless = [], []
    try:
        for index, image in enumerate(_object_list(source, data, "images", required=True)):
            entry = _karpathy_entry(source, index, image)
            given = [_sentence_text(source, entry, k, s) for k, s in enumerate(image["sentences"])]
            captions = _with_words(given)
            if captions:
                entries.append({**entry, "captions": captions})
            else:  # "sentences": [] too, so that no image leaves the scored n unsaid
                wordless.append(os.path.join(entry["filepath"], entry["filename"]))
    except (KeyError, TypeError, AttributeError) as err:
        raise ConfigError(
            f"{path}: not a Karpathy split JSON (bad or missing {err}); "
            "expected images with filename, split and sentences [{raw, tokens}]"
        ) from None
    _check_wordless(source, wordless, kept=len(entries))
    _refuse_repeated_images(source, [os.path.join(e["filepath"], e["filename"]) for e in entries])
    return entries


def _karpathy_entry(path: Path, index: int, image: dict) -> dict:
    """An image's ``filename``, ``filepath`` and ``split``; one line naming the image and the field that is not
    text (else a number is a traceback of the path join, a list of splits one of an unhashable type)."""
    for field in ("filename", "split", "sentences"):
        if field not in image:
            raise ConfigError(f'{path}: not a Karpathy split JSON: images[{index}] has no "{field}"; give each '
                              'image its "filename", "split" ("train", "val", "test", ...) and "sentences"')
    entry = {"filename": image["filename"], "filepath": image.get("filepath") or "", "split": image["split"]}
    for field, value in entry.items():
        if not isinstance(value, str) or (field != "filepath" and not value):
            name = f"image {json.dumps(image['filename'])}" if field != "filename" else f"images[{index}]"
            raise ConfigError(f"{path}: {name}'s {field} is {json.dumps(value)}; give it as "
                              f"{'one split name' if field == 'split' else 'a file or folder name'} in quotes")
    if not isinstance(image["sentences"], list):
        raise ConfigError(f"{path}: image {json.dumps(entry['filename'])}'s sentences are "
                          f"{reprlib.repr(image['sentences'])}; give a list of {{\"raw\": TEXT}} objects")
    return entry


def _object_list(path: Path, data: dict, key: str, *, required: bool = False) -> list[dict]:
    """``data[key]``, a list of JSON objects; one line naming the key or the entry that is not (instead of Python's
    "string indices must be integers"). ``[]`` for a key not there, unless ``required``."""
    if key not in data and not required:
        return []
    entries = data.get(key)
    if not isinstance(entries, list):
        given = "missing" if key not in data else _described(entries)
        raise ConfigError(f'{path}: "{key}" is {given}, not a list; give "{key}" as a list of objects')
    odd = next((k for k, entry in enumerate(entries) if not isinstance(entry, dict)), None)
    if odd is not None:
        raise ConfigError(f"{path}: {key}[{odd}] is {_described(entries[odd])}, not an object; give each of {key} "
                          "as {...}")
    return entries


def _described(value: Any) -> str:
    return "null" if value is None else f"{_json_type(value)} {reprlib.repr(value)}"


def _sentence_text(path: Path, entry: dict, index: int, sentence: Any) -> str:
    """A Karpathy sentence's ``raw`` text, or its ``tokens`` joined when ``raw`` is empty or absent; one line
    naming the image and the sentence when neither is text."""
    raw = sentence.get("raw") if isinstance(sentence, dict) else None
    tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
    if isinstance(raw, str) and (raw.strip() or tokens is None):
        return raw  # a blank one has no word, and is left out as such
    words = isinstance(tokens, list) and all(isinstance(token, str) for token in tokens)
    if words and (raw is None or isinstance(raw, str)):
        return " ".join(tokens)
    name = os.path.join(entry["filepath"], entry["filename"])
    raise ConfigError(f"{path}: sentence {index} of image {name} is {reprlib.repr(sentence)}, with no text; give "
                      'each sentence its "raw" text as a string (or "tokens", a list of words)')


def _refuse_repeated_images(path: Path, names: list[str]) -> None:
    """An image listed twice would be trained on twice as often, or scored twice."""
    counts = Counter(names)
    repeated = next((name for name, count in counts.items() if count > 1), None)
    if repeated is not None:
        raise ConfigError(f"{path}: image {repeated} is listed {counts[repeated]} times; list each image once, "
                          "with all its sentences")


def _check_caption_texts(path: Path, annotations: list[dict]) -> None:
    """One line naming the annotation whose caption is no text (a number, a list, null), which the
    tokenizer cannot read."""
    for annotation in annotations:  # each has an id: pycocotools' index refused the file otherwise
        caption = annotation.get("caption", "")
        if not isinstance(caption, str):
            raise ConfigError(f"{path}: the caption of annotation {json.dumps(annotation['id'])} is "
                              f"{json.dumps(caption)}, not text; write each caption as a string in quotes, e.g. "
                              '"a dog on a sofa"')


def _with_words(captions: Iterable[str]) -> list[str]:
    """The captions, stripped, less those the tokenizer finds no word in."""
    return [c for c in (c.strip() for c in captions) if has_word(c)]


def _check_wordless(path: Path, wordless: list[str], *, kept: int) -> None:
    """Refuse a file whose captions all lack words; warn once naming the images left out for it."""
    if wordless and not kept:
        raise ConfigError(f"{path}: no caption with a word in it; give each image captions in words")
    if wordless:
        more = f" and {len(wordless) - 3} more" if len(wordless) > 3 else ""
        warnings.warn(f"{path}: left out {', '.join(wordless[:3])}{more}: no caption with a word in it",
                      SkippedImageWarning, stacklevel=outside_visattn())


def _read_json(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; give the path of the annotations JSON") from None
    except OSError as err:  # the file's contents are not to blame: "re-download" is no fix for a permission
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err}); give the path of an annotations JSON file "
                          "this user may read") from None
    try:  # bytes: UTF-8 with or without a byte-order mark, UTF-16 (Notepad's "Unicode") or UTF-32, told apart by json
        data = json.loads(raw)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: {_not_unicode(raw, err)}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not readable JSON ({_one_line(err)}); re-download or fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level is a {type(data).__name__}, expected an object with 'images'")
    return data


def _not_unicode(raw: bytes, err: UnicodeDecodeError) -> str:
    """Where a JSON file's text is not in its Unicode encoding: a caption saved as Latin-1 or Windows-1252 (``é`` as
    the one byte 0xe9)."""
    line = raw.count(b"\n", 0, err.start) + 1
    column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
    return (f"byte 0x{raw[err.start]:02x} at line {line}, column {column} is not {err.encoding.upper()} text (a "
            "Latin-1 or Windows-1252 character?); save the file as UTF-8, e.g. iconv -f cp1252 -t utf-8")


def load_coco(path: Path):  # -> pycocotools.coco.COCO
    """A pycocotools ``COCO`` index of an annotations file, with one-line errors for bad files."""
    from pycocotools.coco import COCO  # imported on first use: CLI commands that never read COCO start faster

    data = _read_json(path)  # our one-line errors for missing or invalid files
    for key in ("images", "annotations", "categories"):
        odd = next((k for k, entry in enumerate(_object_list(path, data, key)) if "id" not in entry), None)
        if odd is not None:  # pycocotools' KeyError named neither the list nor the entry
            raise ConfigError(f'{path}: not COCO JSON: {key}[{odd}] has no "id"; give each of {key} its own id')
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        try:
            coco.createIndex()
        except (KeyError, TypeError) as err:
            raise ConfigError(
                f"{path}: not COCO JSON (bad or missing {_one_line(err)}); check its images and annotations"
            ) from None
    return coco


def require_images_dir(images_dir: Path, annotations: Path) -> None:
    """One line for a missing images folder, not a warning per image and then an empty dataset."""
    if not images_dir.is_dir():
        raise ConfigError(f"{images_dir}: {not_a_folder(images_dir)}; give the folder holding the images of "
                          f"{annotations}")


def image_paths(annotations: Path, images: list[dict], images_dir: Path) -> list[Path]:
    """Each image entry's file in ``images_dir``; one line for a ``file_name`` that is no file name."""
    odd = next((image for image in images if not (isinstance(image["file_name"], str) and image["file_name"])), None)
    if odd is not None:
        raise ConfigError(f"{annotations}: image {json.dumps(odd.get('id'))}'s file_name {json.dumps(odd['file_name'])} is not "
                          "a file name; give each image the name of its file in the images folder")
    return [image_file(images_dir, image["file_name"]) for image in images]


def image_file(images_dir: Path, name: str) -> Path:
    """``images_dir / name``, or where only another spelling of ``name`` is there (else the image is skipped as "no
    such file", and the mAP taken over the rest): a Windows-made name's backslashes read as folders (``sub\\a.jpg``),
    or the name in the other Unicode form (a "café.jpg" of the JSON, unzipped from macOS decomposed)."""
    path = images_dir / name
    if os.path.lexists(path):
        return path
    names = [name, PureWindowsPath(name).as_posix()] if "\\" in name else [name]
    spellings = [unicodedata.normalize(form, each) for each in names for form in ("NFC", "NFD")]
    return next((images_dir / other for other in dict.fromkeys(names + spellings)
                 if os.path.lexists(images_dir / other)), path)


def require_some_image(paths: Sequence[Path], images_dir: Path, annotations: Path, *,
                       setting: str | None = None) -> None:
    """One line when ``images_dir`` (the value of ``setting``, where a data module's) holds none of the images a
    file lists (another split's folder, say): a warning per image, then "the evaluation dataset is empty" naming
    options that were not given, or a run that scored nothing. Stops at the first found."""
    if not paths or any(os.path.lexists(path) for path in paths):
        return
    if all(path.is_absolute() and not path.is_relative_to(images_dir) for path in paths):  # no folder finds them
        raise ConfigError(f"{annotations}: none of the {len(paths)} images it lists is where its absolute file_name "
                          f"says (e.g. {paths[0]}); give each file_name relative to the images folder")
    example = next(os.path.relpath(path, images_dir) for path in paths if path.is_relative_to(images_dir))
    raise ConfigError(f"{images_dir}: holds none of the {len(paths)} images {annotations} lists (e.g. {example}); "
                      "give the folder holding them" + (f" as {setting}" if setting else ""))


def check_image_ids(annotations: Path, images: list[dict], referenced: list[Any]) -> None:
    """One line for an id given to several images, or for annotations of images the file does not list
    (pycocotools would give both images the same boxes or captions, or drop those annotations silently)."""
    odd = next((image for image in images if _json_type(image["id"]) not in ("number", "string")), None)
    if odd is not None:
        raise ConfigError(f"{annotations}: image {json.dumps(odd['file_name'])} has id {json.dumps(odd['id'])}; "
                          "give each image a number as its id")
    counts = Counter(image["id"] for image in images)
    repeated = next((image_id for image_id, n in counts.items() if n > 1), None)
    if repeated is not None:
        names = ", ".join(image["file_name"] for image in images if image["id"] == repeated)
        raise ConfigError(f"{annotations}: image id {json.dumps(repeated)} is given to {counts[repeated]} images "
                          f"({names}); give each image its own id")
    orphans = [image_id for image_id in referenced if image_id not in counts]
    if orphans:
        raise ConfigError(f"{annotations}: annotations name image ids that no image has ({len(orphans)} of "
                          f"{len(referenced)}, e.g. {json.dumps(orphans[0])}{json_type_hint(orphans[0], list(counts))}); "
                          "make each annotation's image_id the id of its image")


def json_type_hint(value: Any, listed: list[Any]) -> str:
    """`` (a string, not the number 1)`` when an id listed reads as ``value`` but has another JSON type."""
    like = next((x for x in listed if str(x) == str(value) and _json_type(x) != _json_type(value)), None)
    return "" if like is None else f" (a {_json_type(value)}, not the {_json_type(like)} {json.dumps(like)})"


def _json_type(value: Any) -> str:
    kinds = {bool: "boolean", type(None): "null", int: "number", float: "number", str: "string", list: "list"}
    return kinds.get(type(value), "object")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__
