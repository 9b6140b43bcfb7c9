"""Weights: the shipped index, safe file IO, and loading foreign checkpoints into visattn models.

Shipped weights live in ``weights/<arch>.<tag>.safetensors``, described by ``weights/index.json``
(sha256, task, dataset, metrics, preprocessing, labels or vocabulary, and the training config); the
folders of ``$VISATTN_WEIGHTS`` (a user's own weights, laid out the same way) are searched before them.
``.pth``/``.bin`` files (and timm's ``.pth.tar`` training checkpoints) are read only with
``torch.load(weights_only=True)``: a pickle that would run code is refused, never retried with full unpickling.
"""
import argparse
import contextlib
import contextvars
import copy
import dataclasses
import hashlib
import inspect
import json
import math
import os
import pickle
import re
import reprlib
import socket
import struct
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file
from safetensors.torch import save as unordered_safetensors_bytes
from timm.models._features import FeatureGetterNet  # timm does not export it at the top
from torch import nn

from .errors import (ConfigError, UnknownModelError, VisattnError, VisattnWarning, WeightsError, caught_warnings,
                     is_whole, one_line, outside_visattn)
from .fileio import SignalsDeferred, atomic_path, atomic_write_text, exclusive_lock
from .layers.create_attn import ATTN_LAYERS
from .layers.patch_embed import fixed_input_size
from .registry import Strictness
from .shipped import installed_package, shipped_folder, unstarted_shipped_run
from .weight_names import FETCHED_PREFIXES, HUB_PREFIXES, PICKLE_SUFFIXES, WEIGHTS_TAG, names_a_weights_file

StateDict = dict[str, torch.Tensor]

INDEX_NAME = "index.json"
# What every reader of an index entry relies on; the rest (task, labels, metrics, ...) is optional.
_ENTRY_KEYS = ("file", "sha256")
# Wrappers that training code puts around the weights dict, most specific first; a timm training
# checkpoint keeps its EMA weights (the ones it validated) beside the raw ones, as a visattn task does, and
# DeiT's as "model_ema" beside "model" (timm's load_checkpoint takes either EMA first).
_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
# Plain data a pickle may hold besides tensors: timm's training checkpoints carry the run's ``args``.
_SAFE_GLOBALS = [argparse.Namespace]
# Prefixes added around a whole model by DDP, torch.compile and Lightning modules (``self.model``).
_PREFIXES = ("module.", "_orig_mod.", "model.")
# A visattn task's weight average (``torch.optim.swa_utils.AveragedModel``): the weights it validates and ships.
_EMA_PREFIX = "ema.module."


# Set while models are built for a training checkpoint that replaces every weight (``--ckpt_path``).
_CHECKPOINT_FOLLOWS = contextvars.ContextVar("visattn_checkpoint_follows", default=False)
_BUILDING_PARTS = contextvars.ContextVar("visattn_building_parts", default=False)  # inside a builder: building_parts


@contextlib.contextmanager
def checkpoint_follows() -> Iterator[None]:
    """Build models without their starting weights (a file, shipped ``ARCH.TAG``, ``timm:NAME``), for a
    training checkpoint loaded next: those files need not exist any more, and what loading them would
    warn about (a dropped head, another vocabulary or normalisation) is the checkpoint's past, not news."""
    token = _CHECKPOINT_FOLLOWS.set(True)
    try:
        yield
    finally:
        _CHECKPOINT_FOLLOWS.reset(token)


def starting_weights_skipped() -> bool:
    """Whether models are being built inside :func:`checkpoint_follows`."""
    return _CHECKPOINT_FOLLOWS.get()


# What weights files record (their _read_file_record), by path, while a model is built and loaded from them.
_FILE_RECORDS = contextvars.ContextVar("visattn_file_records", default=None)


@contextlib.contextmanager
def file_records_read_once() -> Iterator[None]:
    """Read what a weights file records (the writer, the preprocessing) from it once inside: a ViT's load looks for
    its patch grid and create_model for the preprocessing, which for a pickle would each be a ``torch.load`` beside
    the weights' own."""
    token = _FILE_RECORDS.set({}) if _FILE_RECORDS.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _FILE_RECORDS.reset(token)


# Set while `visattn validate`, `test` or `predict` build a model that no checkpoint follows: its starting
# weights are what gets scored, so a head they cannot fill would be scored untrained.
_SCORED_AS_BUILT = contextvars.ContextVar("visattn_scored_as_built", default=None)


@contextlib.contextmanager
def scored_as_built(subcommand: str) -> Iterator[None]:
    """Build models for ``subcommand`` to score as their starting weights leave them: a classifier head those
    weights cannot fill (other class names, another number of classes) is one line, not a random head."""
    token = _SCORED_AS_BUILT.set(subcommand)
    try:
        yield
    finally:
        _SCORED_AS_BUILT.reset(token)


def refuse_an_untrained_head(problem: str) -> None:
    """One line inside :func:`scored_as_built`: ``problem`` says why the classifier head would start untrained."""
    subcommand = _SCORED_AS_BUILT.get()
    if subcommand is not None:
        raise ConfigError(f"visattn {subcommand} would score an untrained classifier head: {problem}; give "
                          "--ckpt_path of a run fine-tuned on these classes, or data with the weights' classes")


def weights_search_path() -> list[Path]:
    """The folders ``ARCH.TAG`` weights are looked up in, in order: those of ``$VISATTN_WEIGHTS``
    (separated by ``os.pathsep``, as in ``PATH``; ``~`` expanded; empty ones skipped), then, in an installed
    package, :func:`user_weights_dir`, then :func:`shipped_weights_dir`. A folder named twice (relatively,
    through a link, or the shipped one named in it) is searched once, where it is first named.

    An ``ARCH.TAG`` in an earlier folder hides the same name in a later one. An architecture's default
    weights (``pretrained=True``, or ``ARCH`` alone on the command line) are those marked ``"default":
    true`` by the first folder that marks one for it, so that ``visattn save-weights --default`` into your
    own folder replaces the shipped default; see :func:`find_weights_entry`.
    """
    own = [Path(folder).expanduser() for folder in os.environ.get("VISATTN_WEIGHTS", "").split(os.pathsep) if folder]
    by_place: dict[Path, Path] = {}
    user = user_weights_dir()
    for folder in [*own, *([user] if user else []), shipped_weights_dir()]:
        by_place.setdefault(folder.resolve(), folder)
    return list(by_place.values())


def weights_dir() -> Path:
    """The folder visattn saves weights to (``visattn save-weights``'s default): the first folder of
    ``$VISATTN_WEIGHTS``, else :func:`user_weights_dir` in an installed package, else the source checkout's
    ``weights/`` (where the shipped weights are made)."""
    return weights_search_path()[0]


def user_weights_dir() -> Optional[Path]:
    """An installed package's folder for the user's own weights, ``$XDG_DATA_HOME/visattn/weights``
    (``~/.local/share/visattn/weights``), not site-packages, whose next install would replace the index and
    orphan the files ``save-weights`` wrote. ``None`` in a source checkout."""
    if not installed_package():
        return None
    return Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share").expanduser() / "visattn" / "weights"


def shipped_weights_dir() -> Path:
    """The weights visattn ships: ``visattn/weights`` in an installed wheel, ``weights/`` beside the package
    in a source checkout (pyproject.toml maps the one to the other)."""
    return shipped_folder("weights")


# ---------------------------------------------------------------------------------------------
# index
# ---------------------------------------------------------------------------------------------


def load_index(directory: Optional[Union[str, Path]] = None) -> dict[str, dict[str, Any]]:
    """Read ``directory/index.json``: ``{"arch.tag": entry}``, each entry with ``path``, ``arch``, ``tag``
    and ``index`` (the index file it came from) filled in; weights files in ``directory`` the index does not
    name are there by the entry they record (:func:`file_weights_entry`), under a name the index does not take.

    Without ``directory``, the indexes along :func:`weights_search_path` merged, in search order: an
    ``arch.tag`` from an earlier folder hides the same name in a later one. A ``$VISATTN_WEIGHTS`` folder
    that does not exist is a :class:`WeightsError`; a missing shipped folder (a broken install) adds
    nothing, so that a user's own weights still load.
    """
    if directory is None:
        merged: dict[str, dict[str, Any]] = {}
        for index in _folder_indexes():
            for name, entry in index.items():
                merged.setdefault(name, entry)
        return merged
    directory = Path(directory)
    index = _indexed_entries(directory)
    indexed = {entry["file"] for entry in index.values()}
    for path in sorted(directory.glob("*.safetensors")):  # copied in without their index: found by their own entry
        if path.name not in indexed and (entry := _recorded_entry(path, skip_damaged=True)) is not None:
            index.setdefault(f"{entry['arch']}.{entry['tag']}", entry)
    return index


def _indexed_entries(directory: Path) -> dict[str, dict[str, Any]]:
    """The entries of ``directory/index.json``, with ``arch``, ``tag``, ``path`` and ``index`` filled in."""
    index = {}
    for name, entry in _read_index(directory / INDEX_NAME).items():
        arch, _, tag = name.partition(".")
        index[name] = {**entry, "arch": arch, "tag": tag, "path": str(directory / entry["file"]),
                       "index": str(directory / INDEX_NAME)}
    return index


def _folder_indexes() -> Iterator[dict[str, dict[str, Any]]]:
    """The index of each folder of :func:`weights_search_path`, in search order, each read only when reached:
    a name an earlier folder provides is found without a later folder's index, which a broken one would refuse."""
    _require_own_weights_folders()
    for folder in weights_search_path():
        yield load_index(folder)


def _read_index(index_file: Path) -> dict[str, dict[str, Any]]:
    """The entries of ``index_file`` as stored (``{}`` when there is none), checked for the shape every
    reader relies on; the one place an index is read."""
    try:
        if not index_file.exists():
            return {}
    except PermissionError as err:  # a folder of VISATTN_WEIGHTS that this user cannot read
        raise WeightsError(f"the weights folder {index_file.parent} cannot be read ({err.strerror}); fix its "
                           "permissions, or take it out of VISATTN_WEIGHTS") from None
    try:
        raw = json.loads(index_file.read_text())
    except IsADirectoryError:
        problem = "a folder, not a file"
    except (OSError, json.JSONDecodeError) as err:
        problem = str(err)
    else:
        problem = _index_problem(raw)
    if problem:
        raise WeightsError(f"{index_file}: unreadable weights index ({problem}); restore it from git or a backup, "
                           "or move it away and save the weights again with `visattn save-weights`")
    return raw


def _index_problem(raw: Any) -> Optional[str]:
    if not isinstance(raw, dict):
        return 'not a JSON object of "ARCH.TAG": entry'
    for name, entry in raw.items():
        if "." not in name or not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in _ENTRY_KEYS):
            return f'entry {name!r} is not an "ARCH.TAG" object with "file" and "sha256" strings'
        problem = metadata_problem(entry)
        if problem:
            return f"entry {name!r}: {problem}"
    return None


def _is_label_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value)


# Fields an index entry or a training checkpoint's hyperparameters may hold, each with the test its
# readers rely on and what to give instead; ``None`` is what a field left out reads as.
_METADATA_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model_name": (lambda v: isinstance(v, str), "a model name, e.g. 'se_resnet20_cifar'"),
    "num_classes": (is_whole, "a whole number of classes (0: features only)"),
    "model_kwargs": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                     "an object of builder arguments, e.g. {'depth': 4}"),
    "labels": (_is_label_list, "a list of label names, one per class"),
    "default": (lambda v: isinstance(v, bool), "true or false (whether these are the architecture's default weights)"),
    "class_names": (_is_label_list, "a list of label names, one per class"),
    "category_ids": (lambda v: isinstance(v, (list, tuple)) and all(i is None or (isinstance(i, int) and not isinstance(
        i, bool)) for i in v), "a list of whole-number category ids, one per class"),
    "module": (lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", v) is not None,
               "the dotted name of the module that registers the architecture, e.g. 'my_package.models'"),
}


def metadata_problem(meta: dict[str, Any]) -> Optional[str]:
    """``FIELD=VALUE: what to give`` for the first field of ``meta`` (a weights index entry, or a training
    checkpoint's hyperparameters) its readers could not use as recorded; None when every one can be."""
    from .data.preprocessing import preprocessing_problem

    for field, (usable, wanted) in _METADATA_FIELDS.items():
        if meta.get(field) is not None and not usable(meta[field]):
            return f"{field}={reprlib.repr(meta[field])}: give {wanted}"
    return preprocessing_problem(meta["preprocessing"]) if meta.get("preprocessing") is not None else None


def set_pretrained_cfg(model: nn.Module, cfg: dict[str, Any]) -> None:
    """Give ``model`` its ``pretrained_cfg`` and, as timm's models carry it for older code, the same dict as
    ``default_cfg`` (else a timm model's keeps its own after visattn replaces its ``pretrained_cfg``)."""
    model.pretrained_cfg = model.default_cfg = cfg


def timm_pretrained_cfg(model: nn.Module, preprocessing: Optional[dict[str, Any]]) -> dict[str, Any]:
    """A classifier's ``pretrained_cfg`` as timm's models carry it, from its weights' recorded
    ``preprocessing`` (what it lacks: the defaults of weights that recorded none), so that timm's data
    helpers (``resolve_data_config``, ``create_transform``) preprocess as visattn does, not for ImageNet."""
    from .data.preprocessing import default_preprocessing, timm_data_config

    built = default_preprocessing(model, published=not preprocessing)  # a recorded field's gap: bilinear, not bicubic
    preprocessing = {**built, **(preprocessing or {})}
    # The model as built, not as the weights were: in_chans=1, or a ViT's img_size=56 for 28 px weights
    recorded_size = preprocessing["input_size"]
    preprocessing["input_size"] = [built["input_size"][0], *(fixed_input_size(model) or recorded_size[1:])]
    data = timm_data_config(preprocessing)
    return {**data, **_timm_model_fields(model, data["input_size"]), "num_classes": model.num_classes,
            "classifier": getattr(type(model), "classifier", None)}  # the head's name, where a model names it


def _timm_model_fields(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, Any]:
    """The fields of a ``pretrained_cfg`` that timm's tools read besides the data's: the architecture
    (``save_for_hf`` fails without it), the first convolution, whether the input size is fixed and, for a
    convolutional classifier, the size of its last map at ``input_size`` (``apply_test_time_pool`` fails
    without it; a ViT's, as timm's, has none, also at any size: timm's pooling would wrap its tokens)."""
    from .registry import split_model_name

    arch = split_model_name(getattr(model, "visattn_name", type(model).__name__))[0]
    fixed = fixed_input_size(model) is not None
    fields = {"architecture": arch, "fixed_input_size": fixed,
              "first_conv": next((name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)),
                                 None)}
    levels = getattr(model, "feature_info", None)
    if getattr(model, "patch_embed", None) is None and isinstance(levels, list) and levels:
        fields["pool_size"] = tuple(math.ceil(side / levels[-1]["reduction"]) for side in input_size[1:])
    return fields


def weights_preprocessing(entry: Optional[dict[str, Any]], pretrained: Any) -> Optional[dict[str, Any]]:
    """The evaluation settings recorded with the weights a model was built from: its index entry's (or
    that of the shipped ``ARCH.TAG`` given as ``pretrained``), or for ``timm:NAME`` the mean, std, crop and
    filter timm records for those weights (known offline); else None."""
    entry = entry if entry is not None else named_weights_entry(pretrained)
    if entry is not None:
        return entry.get("preprocessing")
    if isinstance(pretrained, (str, Path)) and not str(pretrained).startswith(FETCHED_PREFIXES):
        return _file_preprocessing(Path(pretrained))  # a training checkpoint's hyper_parameters too
    # Of the rest, only a timm: name has a record to read: an hf-hub: name or a state dict has none.
    if not (isinstance(pretrained, str) and pretrained.startswith("timm:")):
        return None
    from .data.preprocessing import INTERPOLATIONS

    cfg = _timm_pretrained_cfg(pretrained[5:])
    if cfg is None:
        return None
    # input_size is left to the model, which may be built for another size than timm's weights
    recipe = "small" if cfg.crop_mode == "squash" else "photo"
    if cfg.crop_mode not in ("center", "squash") or (recipe == "small" and cfg.crop_pct != 1):
        done = "resize the whole image to the input size" if recipe == "small" else "centre-crop"
        warnings.warn(f"{pretrained}: timm evaluates these weights with crop_mode {cfg.crop_mode!r} and crop_pct "
                      f"{cfg.crop_pct}, which visattn's transforms do not do; they {done} instead, so the model sees "
                      "other inputs than timm gives it", VisattnWarning, stacklevel=outside_visattn())
    recorded = {"mean": list(cfg.mean), "std": list(cfg.std), "crop_pct": cfg.crop_pct, "recipe": recipe}
    return {**recorded, **({"interpolation": cfg.interpolation} if cfg.interpolation in INTERPOLATIONS else {})}


def loaded_weights_preprocessing(model: nn.Module, entry: Optional[dict[str, Any]],
                                 pretrained: Any) -> Optional[dict[str, Any]]:
    """What the weights loaded into ``model`` were trained with: :func:`weights_preprocessing`'s record, else for
    weights that record none how every weights timm publishes for its architecture were evaluated (a CLIP file from
    the hub; ``published_preprocessing``); None when no weights were loaded, visattn's recorded none (they may have
    been trained with anything); torchvision's ViTs' statistics for weights in their layout."""
    from .data.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    entry = entry if entry is not None else named_weights_entry(pretrained)
    if entry is not None or pretrained is None or pretrained is False:
        return weights_preprocessing(entry, pretrained)
    if isinstance(pretrained, (str, Path)) and not str(pretrained).startswith(FETCHED_PREFIXES):
        origin, recorded = _file_record(Path(pretrained))  # read once
    else:
        origin = _state_origin(pretrained) if isinstance(pretrained, dict) else "other"  # timm: and hf-hub: names too
        recorded = weights_preprocessing(None, pretrained)
    if recorded is not None:
        return recorded
    if origin == "torchvision":  # every torchvision ViT weights: ImageNet's statistics (filters and crops differ)
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if origin == "other" and getattr(model, "published_preprocessing", None):
        return copy.deepcopy(model.published_preprocessing)
    return None


def _timm_pretrained_cfg(name: str) -> Optional[Any]:
    """timm's record of weights ``name``: its registry's, or for ``local-dir:FOLDER`` the ``pretrained_cfg`` of the
    folder's config.json (what ``timm.models.save_for_hf`` writes; the registry knows no such name, so the weights'
    statistics were never compared with the data's); None when there is none."""
    import timm
    from timm.models._hub import load_model_config_from_path

    if not name.startswith("local-dir:"):
        return timm.models.get_pretrained_cfg(name)
    try:
        recorded = load_model_config_from_path(name.removeprefix("local-dir:"))[0]
    except Exception:  # timm's reader raises many kinds; loading the weights names the folder's problem
        return None
    if not isinstance(recorded, dict):
        return None
    known = {field.name for field in dataclasses.fields(timm.models.PretrainedCfg)}
    return timm.models.PretrainedCfg(**{k: v for k, v in recorded.items() if k in known})


def _file_preprocessing(path: Path) -> Optional[dict[str, Any]]:
    """The preprocessing visattn recorded in a weights file (:func:`_file_record`); None for files it did not write
    (timm's, the hub's, visattn's before it recorded them there) or that do not read."""
    return _file_record(path)[1]


WeightsOrigin = Literal["visattn", "torchvision", "other"]


def _file_record(path: Path) -> tuple[WeightsOrigin, Optional[dict[str, Any]]]:
    """Who wrote the weights file ``path``: visattn (:func:`save_weights`' safetensors header names the ``arch``; a
    training checkpoint's ``hyper_parameters`` its ``model_name``), torchvision (a ViT in its layout: those weights
    are evaluated with ImageNet's statistics, not as timm's of the name), or another; and the preprocessing visattn
    recorded there (None: none), or one line when that would build no transform. A file that does not read is
    another's here: loading it says what is wrong."""
    from .data.preprocessing import preprocessing_problem

    origin, recorded, where = _read_file_record(path)
    problem = preprocessing_problem(recorded) if recorded is not None else None
    if problem:  # else it fails in timm's data helpers, or later in a transform
        raise WeightsError(f"{path}: {where}{problem}; the file was edited or damaged: record settings a transform "
                           "takes, or save the weights again")
    return origin, recorded


def _read_file_record(path: Path) -> tuple[WeightsOrigin, Any, str]:
    """:func:`_file_record`'s origin and recorded preprocessing as read (unchecked), and where they were read from;
    inside :func:`file_records_read_once`, read from the file once (a copy each time)."""
    records = _FILE_RECORDS.get()
    if records is None:
        return _file_record_as_read(path)
    if path not in records:
        records[path] = _file_record_as_read(path)
    return copy.deepcopy(records[path])


def _file_record_as_read(path: Path) -> tuple[WeightsOrigin, Any, str]:
    """:func:`_read_file_record`'s, read from the file (for a pickle, a ``torch.load`` of its own)."""
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as weights:
                header, keys = weights.metadata() or {}, list(weights.keys())
            recorded = json.loads(header["preprocessing"]) if header.get("preprocessing") else None
        except (OSError, ValueError, SafetensorError):  # a header that is no JSON: ValueError
            return "other", None, ""
        return ("visattn" if "arch" in header else _state_origin(keys)), recorded, "the header's "
    if path.suffix.lower() not in PICKLE_SUFFIXES or not path.is_file():
        return "other", None, ""
    try:
        checkpoint = read_pickle_checkpoint(path, lazy=True)  # the tensors memory-mapped, not read
    except WeightsError:
        return "other", None, ""
    return _pickle_record(checkpoint, path)


def _pickle_record(checkpoint: Any, path: Path) -> tuple[WeightsOrigin, Any, str]:
    """What the pickle at ``path``, read as ``checkpoint``, records (:func:`_read_file_record`)."""
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if isinstance(hparams, dict) and "model_name" in hparams:  # a visattn task's (another Lightning project's: no)
        return "visattn", hparams.get("preprocessing"), "hyper_parameters."
    try:
        return _state_origin(_unwrap(checkpoint, path)), None, ""
    except WeightsError:
        return "other", None, ""


def _state_origin(keys: Iterable[str]) -> WeightsOrigin:
    """torchvision for a ViT state dict in torchvision's layout (its patch embedding ``conv_proj``), else other."""
    return "torchvision" if any(key.endswith("conv_proj.weight") for key in keys) else "other"


def named_weights_entry(pretrained: Any) -> Optional[dict[str, Any]]:
    """The index entry of weights given by name, ``pretrained="ARCH.TAG"``; None for a file, a
    ``timm:``/``hf-hub:`` name, or anything else."""
    if not isinstance(pretrained, str) or pretrained.startswith(FETCHED_PREFIXES) or Path(pretrained).exists():
        return None
    return next((index[pretrained] for index in _folder_indexes() if pretrained in index), None)


def model_weights_entry(model: Union[str, os.PathLike]) -> dict[str, Any]:
    """The index entry of the weights a model argument names, with ``source``, what ``create_model``'s
    ``pretrained`` takes to load them: ``ARCH.TAG`` (or ``ARCH``, its default weights) searched for along
    :func:`weights_search_path`, or the path of a weights file visattn saved (``FILE.safetensors``, its entry that
    of the index beside it, else the one it records)."""
    from .registry import split_model_name

    text = os.fspath(model)
    if not names_a_weights_file(text):
        entry = find_weights_entry(*split_model_name(text))
        return {**entry, "source": f"{entry['arch']}.{entry['tag']}"}
    path = Path(text)
    require_regular_file(path, missing="weights file not found; check the path, or give a registered name or ARCH.TAG "
                                       "(`visattn models --pretrained`)")
    if _safetensors_header(path) is None:
        raise WeightsError(f"{path}: not a safetensors file that reads (damaged, cut short, or not readable by this "
                           "user); copy it again, or check its permissions")
    entry = file_weights_entry(path)
    if entry is None:
        raise WeightsError(f"{path}: no record of what these weights are (architecture, labels, settings): neither "
                           f"the file (not saved by `visattn save-weights`, or before it recorded them there) nor an "
                           f"{INDEX_NAME} beside it names it; keep it beside the {INDEX_NAME} it was saved with, or "
                           "load it in Python with create_model(ARCH, pretrained=FILE)")
    return {**entry, "source": text}


def file_weights_entry(source: Any) -> Optional[dict[str, Any]]:
    """The index entry of the weights file at ``source`` (``arch``, ``tag``, ``path`` and ``index``, where it was
    read, filled in): that of the index beside it naming the file (its sha256 checked on loading, as by name), else
    the one :func:`save_weights` records in the file; None when neither has one (another library's weights, or
    visattn's saved before files recorded it, away from their index), or ``source`` is no ``.safetensors`` file."""
    if not isinstance(source, (str, os.PathLike)) or not names_a_weights_file(os.fspath(source)):
        return None
    path = Path(source)
    if not path.is_file():
        return None
    target = path.resolve()  # the index of the folder a link's target is in
    try:
        beside = _indexed_entries(target.parent)
    except WeightsError:  # an index of something else beside the file is no record of it
        beside = {}
    entry = next((entry for entry in beside.values() if entry["file"] == target.name), None)
    return entry if entry is not None else _recorded_entry(path)


def _recorded_entry(path: Path, *, skip_damaged: bool = False) -> Optional[dict[str, Any]]:
    """The index entry :func:`save_weights` recorded in the safetensors header of ``path`` (no ``sha256``: a file
    cannot hold its own); None for a file without one. A damaged one is one line, or with ``skip_damaged`` a
    warning and None (a file beside others in a weights folder)."""
    header = _safetensors_header(path)
    if not header or "entry" not in header:
        return None
    try:
        recorded = json.loads(header["entry"])
        problem = metadata_problem(recorded) if isinstance(recorded, dict) else "not a JSON object"
    except ValueError as err:
        problem = f"not JSON ({err})"
    arch, tag = header.get("arch"), header.get("tag", "")
    if not problem and not (isinstance(arch, str) and "." not in arch and WEIGHTS_TAG.fullmatch(tag)):
        problem = f"arch={arch!r}, tag={tag!r}: give the ARCH.TAG the weights were saved as"
    if problem:
        message = (f"{path}: the weights entry it records: {problem}; the file was edited or damaged: save the "
                   "weights again")
        if not skip_damaged:
            raise WeightsError(message)
        warnings.warn(message, VisattnWarning, stacklevel=outside_visattn())
        return None
    return {**recorded, "file": path.name, "sha256": None, "arch": arch, "tag": tag, "path": str(path),
            "index": str(path)}


def _safetensors_header(path: Path) -> Optional[dict[str, str]]:
    """The metadata of the safetensors file ``path`` (``{}`` when it has none); None when it does not read as one."""
    try:
        with safe_open(str(path), framework="pt") as weights:
            return weights.metadata() or {}
    except (OSError, ValueError, SafetensorError):  # a header that is no JSON: ValueError
        return None


def model_files(model: Optional[str] = None, checkpoint: Optional[str] = None) -> list[Path]:
    """The files a command reads its model from, which no output may replace: ``--checkpoint``, or the
    weights of ``--model`` (``ARCH.TAG``, ``ARCH`` or a weights file) and the index."""
    if checkpoint is not None:
        return [Path(checkpoint)]
    entry = model_weights_entry(model)
    return [Path(entry["path"]), Path(entry["index"])]


def find_weights_entry(arch: str, tag: Optional[str] = None) -> dict[str, Any]:
    """The entry for ``arch.tag`` in the merged index (see :func:`load_index`), or the architecture's
    default entry when ``tag`` is None: the one marked ``"default": true`` by the first folder of
    :func:`weights_search_path` that marks one for it (an earlier folder's entry of the same name, which
    hides it, takes the default over), else its first tag in alphabetical order."""
    from .registry import resolve_arch

    arch = resolve_arch(arch, tag=tag)  # an unknown architecture: UnknownModelError naming close matches
    entries: dict[str, dict[str, Any]] = {}  # in search order, up to the folder that settles it
    for index in _folder_indexes():
        own = [e for e in index.values() if e["arch"] == arch]
        for entry in own:
            entries.setdefault(entry["tag"], entry)
        marked = next((e["tag"] for e in own if e.get("default")), None) if tag is None else tag
        if marked in entries:  # an earlier folder that hides it marks no default of its own: it would be first
            return entries[marked]
    if tag is not None:
        have = ", ".join(f"{arch}.{t}" for t in sorted(entries)) or "none"
        raise UnknownModelError(f"no weights {arch}.{tag!s} ({_searched()}): weights for {arch} are {have}"
                                f"{_timm_weights_hint(f'{arch}.{tag}')}")
    if not entries:
        raise UnknownModelError(f"no shipped weights for {arch}, nor saved ones ({_searched()}): see "
                                "`visattn models --pretrained`; weights of your own load from a training checkpoint "
                                "(--checkpoint FILE.ckpt) or, in Python, a file (pretrained='FILE.safetensors')"
                                f"{_timm_weights_hint(arch)}")
    return entries[sorted(entries)[0]]


def recorded_module(arch: str, tag: str) -> Optional[str]:
    """The module that registers ``arch`` (another package's), as the index entry of ``arch.tag`` recorded it; None
    when no entry of that name records one, or the weights folders cannot be read."""
    with contextlib.suppress(VisattnError):
        return load_index().get(f"{arch}.{tag}", {}).get("module")
    return None


def _timm_weights_hint(name: str) -> str:
    """How timm's weights of ``name`` load, where timm has weights of that name (else a timm user's ``resnet18.a1_in1k``
    is refused with no mention of them); else nothing."""
    import timm.models

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a tag timm has no weights of
        cfg = None
    known = cfg is not None and cfg.has_weights  # an "untrained" tag has a cfg and no weights
    return f"; timm's weights of that name load as pretrained='timm:{name}'" if known else ""


def _require_own_weights_folders() -> None:
    """One line naming a ``$VISATTN_WEIGHTS`` folder that is not there: skipped, it would let a later
    folder's weights of the same name load, or be listed, instead of the user's."""
    unchecked = {shipped_weights_dir().resolve(), *([user.resolve()] if (user := user_weights_dir()) else [])}
    for folder in weights_search_path():
        if not folder.is_dir() and folder.resolve() not in unchecked:  # the user folder is made at the first save
            problem = "is not a folder" if folder.exists() else "does not exist"
            raise WeightsError(f"the weights folder {folder} in VISATTN_WEIGHTS {problem}; create it, or take it "
                               "out of VISATTN_WEIGHTS")


def _searched() -> str:
    """The folders weights are looked up in, for a message about a name found in none; a missing shipped
    folder is named with its fix."""
    shipped = shipped_weights_dir()
    searched = "searched " + ", ".join(map(str, weights_search_path()))
    if shipped.is_dir():
        return searched
    return f"{searched}; the shipped weights folder {shipped} does not exist: reinstall visattn with its weights"


def sha256_of(path: Union[str, Path]) -> str:
    """The hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# reading and writing files
# ---------------------------------------------------------------------------------------------


def read_state_dict(path: Union[str, Path], *, sha256: Optional[str] = None) -> StateDict:
    """Read a ``.safetensors`` or (weights-only) pickle checkpoint into a flat ``{name: tensor}`` dict.

    The file is memory-mapped (safetensors, torch's zip format; an index entry's is read whole, to be hashed) and the
    state dict's tensors copied out of it at once, so a checkpoint's optimizer states are never read, and the tensors
    are the dict's own: what is checked is what loads, and the file rewritten or cut after this returns changes nothing.
    """
    path = Path(path)
    if sha256 is not None:  # an index entry's file
        require_regular_file(path, missing=f"the weights file of an entry in {path.parent / 'index.json'} is missing; "
                             "restore the file, or remove its entry from that index")
    # a relative path is read from the working folder, not the config's: say which, when it is not there
    where = "" if path.is_absolute() else f" (in the working folder {Path.cwd()})"
    earlier_run = unstarted_shipped_run(path) if not path.exists() else None
    fix = (f"`visattn fit --config {earlier_run}` trains it: run that here first" if earlier_run else
           "check the path, see `visattn models --pretrained` for ARCH.TAG names")
    require_regular_file(path, missing=f"weights file not found{where}, nor weights of that name ({_searched()}); "
                                       f"{fix}, or give false for no weights")
    # Indexed safetensors weights are hashed and loaded from the same bytes: a file swapped between a check
    # and a second read would load unchecked.
    safetensors = path.suffix.lower() == ".safetensors"
    data = path.read_bytes() if sha256 is not None and safetensors else None
    if sha256 is not None and (sha256_of(path) if data is None else hashlib.sha256(data).hexdigest()) != sha256:
        restore = "restore it from git" if path.parent.resolve() == shipped_weights_dir().resolve() else \
            "restore it, or save the weights again (visattn save-weights --overwrite)"
        raise WeightsError(f"{path}: sha256 mismatch, the file is corrupt or was replaced; {restore}")
    if safetensors:
        try:
            state = load_file(path, device="cpu") if data is None else load_safetensors_bytes(data)
        except (SafetensorError, OSError, ValueError) as err:
            reason = str(err).splitlines()[0]
            raise WeightsError(f"{path}: not a valid safetensors file ({reason}); re-download or re-export it") from None
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        state = read_pickle_checkpoint(path, lazy=True)
        if (records := _FILE_RECORDS.get()) is not None:  # what it records, read with it
            records.setdefault(path, _pickle_record(state, path))
    else:
        raise WeightsError(f"{path}: unknown weights format {path.suffix!r}; "
                           "use .safetensors, .pth, .pt, .bin, .ckpt or .pth.tar")
    state = _strip_prefixes(_unwrap(state, path))
    return state if data is not None else copied_out_of_the_map(state)  # the bytes' tensors are their own


def copied_out_of_the_map(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with copies of its tensors, which a memory-mapped read left views of the file: a file rewritten or cut
    after this changes nothing (cut while they are still views, it ends the process with SIGBUS)."""
    return {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in state.items()}


class CopiedForOneLoad(dict):
    """A state dict of tensors copied for the one :func:`load_weights` it is given to (a training checkpoint's, read
    for inference): a model built on the meta device takes them as its own, as it does a file's, not copies again."""


def require_regular_file(path: Path, *, missing: str) -> None:
    """One line unless ``path`` is a regular file: ``PATH: missing`` when nothing is there; a folder, device,
    FIFO or socket is named as such before anything opens it (reading a FIFO would wait for a writer)."""
    if path.is_file():
        return
    if path.is_dir():
        raise WeightsError(f"{path}: a folder, not a weights file; give the path of the file in it")
    if path.exists():
        raise WeightsError(f"{path}: not a regular file (a device, FIFO or socket); give a file path")
    raise WeightsError(f"{path}: {missing}")


def _refused_pickle(message: str) -> str:
    """What a refused pickle holds and the fix, from torch's "GLOBAL module.Name was not an allowed global":
    a whole pickled model (``torch.save(model)``) is named as such. Only modules already imported are
    looked in: importing one a file names could run its code."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    name = found[1] if found else "objects"
    module, _, cls = name.rpartition(".")
    candidate = getattr(sys.modules.get(module), cls, None)
    if isinstance(candidate, type) and issubclass(candidate, nn.Module):
        return (f"the pickle holds a whole model ({name}), not its weights; where you trust it, save "
                "torch.save(model.state_dict(), FILE) or convert it to .safetensors")
    return (f"the pickle holds {name} besides tensors (it could run code); convert it to .safetensors where you "
            "trust it")


# What the commands' checkpoint options take, for messages about files that are something else.
TRAINING_CHECKPOINTS = "--checkpoint and --ckpt_path take the .ckpt files `visattn fit` writes"


def read_pickle_checkpoint(path: Path, *, lazy: bool = False) -> Any:
    """``torch.load(weights_only=True)``; a pickle that needs anything beyond tensors and plain containers is refused.

    ``lazy`` memory-maps the tensors instead of reading them (files in torch's zip format; older
    files, and any the mapping fails on, are read whole): a tensor is read only where it is used, as it is copied out
    of the map (:func:`copied_out_of_the_map`), so a training checkpoint's optimizer states never are.
    """
    try:
        with caught_warnings(), torch.serialization.safe_globals(_SAFE_GLOBALS):
            # torch's note on a pickle protocol it was not written with: the load below refuses what it cannot read
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
    except (pickle.UnpicklingError, KeyError, IndexError, struct.error) as err:
        # torch says "Unsupported global" for a class it lacks, "unsupported GLOBAL" for a blocked module (os);
        # text or stray bytes read as opcodes end in any of these (an unknown opcode is a KeyError)
        blocked = isinstance(err, pickle.UnpicklingError) and "unsupported global" in str(err).lower()
        if not blocked and _holds_safetensors(path):
            raise WeightsError(f"{path}: a safetensors file, not a pickled checkpoint; rename it to .safetensors "
                               f"to load it as weights ({TRAINING_CHECKPOINTS})") from None
        if not blocked:  # bytes that are no pickle at all (a text file, garbage)
            raise WeightsError(f"{path}: not a PyTorch checkpoint (no pickle torch can read); check the path, "
                               "or re-save the weights with torch.save or safetensors") from None
        raise WeightsError(f"{path}: refused, {_refused_pickle(str(err))}") from None
    except (RuntimeError, EOFError, OSError, ValueError, SafetensorError) as err:  # torch reads a *.safetensors
        # path with safetensors, whose error is none of the others
        if lazy:  # the legacy (non-zip) format has no mappable storage; a damaged file is named as read whole
            return read_pickle_checkpoint(path)
        # torch's first sentence says what broke; the rest is advice this message replaces
        reason = str(err).splitlines()[0].split(". ")[0] if str(err) else type(err).__name__
        raise WeightsError(f"{path}: unreadable checkpoint ({reason}); the file is damaged or cut short: copy or "
                           "download it again, or use another checkpoint of the run") from None


def _holds_safetensors(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does: a little-endian header length, then its JSON."""
    with contextlib.suppress(OSError), open(path, "rb") as file:
        head = file.read(9)
        return len(head) == 9 and head[8:] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= os.path.getsize(path)
    return False


def _unwrap(state: Any, path: Path) -> StateDict:
    while isinstance(state, dict) and not _is_tensor_dict(state):
        inner = next((state[k] for k in _NESTED_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not _is_tensor_dict(state):
        raise WeightsError(f"{path}: holds no state dict of tensors; save `model.state_dict()` instead")
    return state


def _is_tensor_dict(state: dict) -> bool:
    return bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def _strip_prefixes(state: StateDict) -> StateDict:
    """The model's own keys: a Lightning task's EMA copy (else its ``model.`` part, which sits beside
    other state), then without wrapper prefixes, in any nesting (``model._orig_mod.``, ``module.model.``). A
    weight average's own state dict (torchvision's ``model_ema``) drops its ``n_averaged`` count beside ``module.``."""
    state = _under(state, _EMA_PREFIX) or _under(state, "model.") or state
    if "n_averaged" in state and len(_under(state, "module.")) == len(state) - 1:
        state = _under(state, "module.")
    while True:
        wrapped = next((owned for prefix in _PREFIXES if len(owned := _under(state, prefix)) == len(state)), None)
        if not wrapped:
            return state
        state = wrapped


def _under(state: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def refuse_existing_weights(path: Union[str, Path], *, overwrite: bool = False) -> None:
    """One line when ``DIR/<arch>.<tag>.safetensors`` is the file of another entry of ``DIR/index.json`` (one
    renamed there by hand: writing the file replaced its weights, also with ``overwrite``); and unless
    ``overwrite``, when the file or its entry already exists, or a folder after ``DIR`` in
    :func:`weights_search_path` has weights of that name, which these would hide."""
    path = Path(path)
    name = path.name.removesuffix(".safetensors")
    index = _read_index(path.parent / INDEX_NAME)
    owner = next((other for other, entry in index.items() if other != name and entry.get("file") == path.name), None)
    if owner is not None:
        raise WeightsError(f"{path}: the weights file of {owner} ({path.parent / INDEX_NAME} names it there); pick "
                           f"another --tag, or give {owner} a file of its own name")
    if path.is_dir():  # --overwrite would not help: it replaces files
        raise WeightsError(f"{path}: a folder stands where the weights file goes; move it, or pick another --tag")
    if overwrite:
        return
    if path.exists() or name in index:
        raise WeightsError(f"{path}: weights {name} already exist; pick another --tag, or pass --overwrite to replace them")
    folders = weights_search_path()
    places = [folder.resolve() for folder in folders]
    if path.parent.resolve() not in places:  # a folder outside the search path hides nothing
        return
    for later in folders[places.index(path.parent.resolve()) + 1:]:
        if name in _read_index(later / INDEX_NAME):
            raise WeightsError(f"{path}: weights {name} already exist in {later / INDEX_NAME}, which these would hide; "
                               "pick another --tag, or pass --overwrite to hide them")


# Builder arguments that name weights to start from (a backbone's, an encoder's).
_WEIGHT_SOURCES = ("pretrained_backbone", "encoder_pretrained")


def _incomplete_classifier_preprocessing(arch: str, meta: dict[str, Any]) -> Optional[str]:
    """What a classifier's recorded ``preprocessing`` lacks that loading it needs (none recorded is
    allowed: it loads with its architecture's default, see :func:`_warn_unless_described`)."""
    from .data.preprocessing import CLASSIFIER_PREPROCESSING, preprocessing_problem
    from .registry import model_task

    if model_task(arch) != "classification" or not meta.get("preprocessing"):
        return None
    problem = preprocessing_problem(meta["preprocessing"], required=CLASSIFIER_PREPROCESSING)
    return problem and f"{problem}; pass preprocessing=dict(input_size=..., mean=..., std=...)"


def _contradiction(model: nn.Module, arch: str, meta: dict[str, Any]) -> Optional[str]:
    """What ``meta`` records that ``model`` cannot use: another task than its own, label names not one per class, a
    vocabulary not its word layer's size, images it does not take. Loaded, such weights would fail at every
    prediction."""
    from .registry import model_task

    if meta.get("task") is not None and meta["task"] != model_task(arch):  # the loaders pick the task from the entry
        task = model_task(arch)
        return f"task={meta['task']!r}: {arch} is a {task} model; give task={task!r} or leave it out"
    classes = getattr(model, "num_classes", None)
    for field in ("labels", "class_names"):
        names = meta.get(field)
        if names and isinstance(classes, int) and classes > 0 and len(names) != classes:
            return f"{field}: {len(names)} names for a {classes}-class head; give one name per class"
    words = getattr(model, "vocab_size", None)
    if meta.get("vocab") and isinstance(words, int) and len(meta["vocab"]) != words:
        return (f"vocab: {len(meta['vocab'])} tokens for a {words}-word output layer; give the vocabulary the "
                "model was trained with (Captioner.vocab.to_list())")
    size, channels = (meta.get("preprocessing") or {}).get("input_size"), getattr(model, "input_size", (None,))[0]
    if size and channels is not None and size[0] != channels:
        return f"preprocessing input_size {list(size)}: the model takes {channels}-channel images; give [{channels}, H, W]"
    fixed = fixed_input_size(model) if model_task(arch) != "detection" else None  # detectors resize their input
    if size and fixed and tuple(size[1:]) != fixed:
        return (f"preprocessing input_size {list(size)}: the model takes {fixed[0]}x{fixed[1]} images; give "
                f"[{size[0]}, {fixed[0]}, {fixed[1]}], or build it with img_size={size[-1]}")
    return None


def _warn_unless_described(path: Path, arch: str, model: nn.Module, meta: dict[str, Any]) -> None:
    """A classifier saved without ``preprocessing`` or ``labels`` loads with its architecture's default
    normalisation (ImageNet's, or CLIP's, ...) and labels "0".."N-1": silently wrong for anything else."""
    from .data.preprocessing import default_preprocessing
    from .registry import model_task

    missing = [key for key in ("preprocessing", "labels") if not meta.get(key)]
    if model_task(arch) == "classification" and missing:
        assumed = default_preprocessing(model)
        settings = ", ".join(f"{key} {assumed[key]}" for key in ("mean", "std", "interpolation", "crop_pct")
                             if key in assumed)
        assumptions = {"preprocessing": f"{arch}'s default {settings}", "labels": "labels '0'..'N-1'"}
        warnings.warn(f"{path}: saved without {' or '.join(missing)}; loading it will assume "
                      f"{' and '.join(assumptions[key] for key in missing)}; pass preprocessing=dict(input_size=..., "
                      "mean=..., std=...) and labels=[...] to save_weights",
                      VisattnWarning, stacklevel=outside_visattn())


def as_module(model: object, *, error: type[VisattnError] = ConfigError) -> nn.Module:
    """``model``, or the network a loaded Classifier, Captioner or Detector holds as ``.model``, out of
    ``torch.compile``'s and DataParallel's wrappers (:func:`unwrapped`); ``error``, one line, for anything else."""
    inner = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if not isinstance(inner, nn.Module):
        raise error(f"model={reprlib.repr(model)}: a {type(model).__name__}, not a torch module; give a model from "
                    "visattn.create_model, or a loaded one (load_classifier)")
    return unwrapped(inner)


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``'s (``_orig_mod``) and (Distributed)DataParallel's (``module``)
    wrappers, nested in any order; ``model`` itself when it is not wrapped."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch._dynamo's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _refuse_unbuildable(model: nn.Module, path: Path, name: str, model_kwargs: dict[str, Any]) -> None:
    """One line when ``model``'s weights would not load into what ``create_model(name)`` builds from the
    recorded arguments (another model, or one built with other hyperparameters)."""
    from .registry import create_model, split_model_name

    arch = split_model_name(name)[0]
    with torch.device("meta"):  # the keys and shapes only: no memory, no init time
        rebuilt = create_model(arch, pretrained=False, num_classes=getattr(model, "num_classes", None), **model_kwargs)
    fix = (f"create_model({name!r}) would build another model: save one built by create_model({arch!r}, ...), "
           "or pass the builder arguments it was built with as model_kwargs={...}")
    check_state_dict(rebuilt, model.state_dict(), strict=True, source=path, fix=fix)


def save_weights(
    model: nn.Module,
    path: Union[str, Path],
    *,
    overwrite: bool = False,
    task: Optional[str] = None,
    dataset: Optional[str] = None,
    metrics: Optional[dict[str, float]] = None,
    preprocessing: Optional[dict[str, Any]] = None,
    labels: Optional[Sequence[str]] = None,
    vocab: Optional[Sequence[str]] = None,
    max_len: Optional[int] = None,
    category_ids: Optional[Sequence[Optional[int]]] = None,
    config: Optional[str] = None,
    model_kwargs: Optional[dict[str, Any]] = None,
    default: Optional[bool] = None,
) -> dict[str, Any]:
    """Write ``model``'s weights to ``DIR/<arch>.<tag>.safetensors`` and its entry in ``DIR/index.json``; the
    arguments after ``overwrite`` are the entry's fields (a field left ``None`` is not recorded).

    Args:
        model: the model to save.
        path: target file; its name must be ``<arch>.<tag>.safetensors`` with a registered ``arch``.
        overwrite: replace existing weights of that name in the folder, or hide those of a later folder
            of :func:`weights_search_path` (an earlier folder's ``ARCH.TAG`` hides a later one's); without
            it both are refused, so a reused tag never silently replaces or hides shipped weights.
        task: ``"classification"``, ``"captioning"`` or ``"detection"``.
        dataset: what the weights were trained and scored on, e.g. ``"fashion-mnist"``.
        metrics: the scores measured with them, e.g. ``{"test/top1": 0.93}``.
        preprocessing: the evaluation input: ``input_size`` ``[C, H, W]``, ``mean``, ``std`` (and ``recipe``,
            ``crop_pct``, ``interpolation``), which loading the weights by name applies.
        labels: a classifier's or detector's class names, one per class.
        vocab: a captioner's words, by id.
        max_len: a captioner's longest caption in words.
        category_ids: a detector's COCO category id of each class.
        config: the training config's path.
        model_kwargs: builder arguments (default: those ``create_model`` was given, so that
            ``create_model("ARCH.TAG")`` rebuilds this model).
        default: true: the architecture's only default entry.

    Returns:
        The new index entry.
    """
    from .registry import is_model, package_module, split_model_name

    fields = dict(task=task, dataset=dataset, metrics=metrics, preprocessing=preprocessing, labels=labels, vocab=vocab,
                  max_len=max_len, category_ids=category_ids, config=config, model_kwargs=model_kwargs, default=default)
    meta = {field: value for field, value in fields.items() if value is not None}
    path, model = Path(path), as_module(model, error=WeightsError)
    arch, _, tag = path.name.removesuffix(".safetensors").partition(".")
    if path.suffix != ".safetensors" or not WEIGHTS_TAG.fullmatch(tag) or len(path.name.encode()) > 255:
        raise WeightsError(f"{path}: name weights files <arch>.<tag>.safetensors, the tag of letters, digits, _ and - "
                           "(a file name of at most 255 bytes), e.g. vit_tiny_patch4_28.fmnist.safetensors")
    if not is_model(arch):
        raise UnknownModelError(f"{path}: {arch!r} is not a registered model; name the file after its architecture")
    built_as = split_model_name(getattr(model, "visattn_name", arch))[0]
    if built_as != arch:
        raise WeightsError(f"{path}: the model is a {built_as}, not a {arch}; name the file {built_as}.{tag}.safetensors")
    if meta.get("model_kwargs") is None and getattr(model, "visattn_kwargs", None):
        meta["model_kwargs"] = model.visattn_kwargs
    module = package_module(arch)
    if module is not None:  # what to install where it is missing
        meta["module"] = module
    # The file holds every weight: rebuilding must not read where they started from, also when the
    # argument was left out (None loads what an ARCH.TAG encoder name says).
    sources = [k for k in _WEIGHT_SOURCES if k in inspect.signature(type(model).__init__).parameters]
    if meta.get("model_kwargs") or sources:
        meta["model_kwargs"] = {**(meta.get("model_kwargs") or {}), **dict.fromkeys(sources, False)}
    problem = metadata_problem(meta) or _incomplete_classifier_preprocessing(arch, meta) or _contradiction(model, arch, meta)
    if problem:  # checked before the index is written, which would refuse it from then on
        raise WeightsError(f"{path}: {problem}")
    _refuse_unbuildable(model, path, f"{arch}.{tag}", meta.get("model_kwargs") or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{path}: the index entry must be plain JSON ({err}); pass numbers as float(x)") from None
    refuse_existing_weights(path, overwrite=overwrite)  # reads the index first: a bad one leaves no orphan file
    _warn_unless_described(path, arch, model, meta)  # only for weights that will be saved
    # clone() breaks storage sharing, which safetensors refuses.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    entry = {"file": path.name, "num_classes": getattr(model, "num_classes", None), **meta}
    # The entry in the file too (less the folder's default mark), so that the file loads as ARCH.TAG without its
    # index: copied into another weights folder, or given by path; the preprocessing apart, as files recorded it first.
    recorded = {"entry": json.dumps({k: v for k, v in entry.items() if k not in ("file", "default")}, sort_keys=True)}
    if meta.get("preprocessing"):
        recorded["preprocessing"] = json.dumps(meta["preprocessing"], sort_keys=True)
    data = safetensors_bytes(tensors, metadata={"arch": arch, "tag": tag, "format": "pt", **recorded})
    return _write_weights_and_entry(path, data, entry, overwrite=overwrite)


def safetensors_bytes(tensors: StateDict, metadata: dict[str, str]) -> bytes:
    """The safetensors file of ``tensors``, the same bytes for the same weights in every process.

    safetensors writes its JSON header from a hash map, so the order of its keys (and with it the
    file's sha256) changed from one save to the next. The header is written again with sorted keys,
    padded with spaces to 8 bytes as the format asks; the tensors' offsets are into the data that
    follows, which does not move.
    """
    data = unordered_safetensors_bytes(tensors, metadata=metadata)
    header_size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + header_size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + header_size:]


def _write_weights_and_entry(path: Path, data: bytes, entry: dict[str, Any], *, overwrite: bool) -> dict[str, Any]:
    """Write the weights ``data`` to ``path``, and ``entry`` with their sha256 to the index beside it.

    The weights go to a temp file, written to disk, that is moved into place only once the index is written:
    a failed index write (a full disk) leaves the old weights and index as they were, not an index whose
    sha256 no longer matches its file, nor an orphan file that a rerun would refuse. From the index write
    to the move, Ctrl-C and SIGTERM wait (an interrupt there left an entry whose file was missing, or an
    overwrite's new sha256 beside the old file). The index is re-read and written under an exclusive lock,
    held until the weights are in place, so that saves into one folder from several processes at once keep
    each other's entries.
    """
    from .registry import split_model_name

    index_file, name = path.parent / INDEX_NAME, path.name.removesuffix(".safetensors")
    arch = name.partition(".")[0]
    with exclusive_lock(path.parent / f"{INDEX_NAME}.lock"), SignalsDeferred() as deferred, atomic_path(path) as tmp:
        refuse_existing_weights(path, overwrite=overwrite)  # again: another process may have saved this meanwhile
        index = _read_index(index_file)
        with open(tmp, "wb") as f:  # from Python: a full disk is an OSError, as for every other output
            f.write(data)
            os.fsync(f.fileno())  # the slow part of the move, done before the index names the file
        entry = {**entry, "sha256": sha256_of(tmp)}
        if "default" not in entry and index.get(name, {}).get("default"):
            entry["default"] = True  # an overwrite keeps the mark unless told otherwise (default=False)
        if entry.get("default"):
            for other_name, other in index.items():
                if split_model_name(other_name)[0] == arch:
                    other["default"] = False
        index[name] = entry
        deferred.start()
        atomic_write_text(index_file, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return entry


# ---------------------------------------------------------------------------------------------
# loading into a model
# ---------------------------------------------------------------------------------------------


def building_parts(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``build``, which builds the models it holds with their own weights (a detector's backbone, a captioner's
    encoder) as parts: for real, initialised and then loaded, as before, so that a seeded run draws the same numbers
    for the rest of the model (the shipped detectors' recipes) as it did."""
    def built() -> nn.Module:
        token = _BUILDING_PARTS.set(True)
        try:
            return build()
        finally:
            _BUILDING_PARTS.reset(token)
    return built


def built_for_weights(build: Callable[[], nn.Module], *,
                      on_meta: bool = True) -> tuple[nn.Module, Optional[Callable[[], nn.Module]]]:
    """``build()``'s model for weights to load next, and the builder :func:`load_weights` takes as ``initialise``. It
    is built on the meta device, and never initialised where the weights fill it: ViT-B's random init would be
    most of a load's time, and a load would draw from torch's random numbers. It is built for real (no builder
    returned) where not ``on_meta`` (another package's builder, which may draw, warn or keep tensors out of weights'
    reach), inside :func:`checkpoint_follows`, which loads nothing, where the builder fails on the meta device, and
    for a part (:func:`building_parts`). A part of a model built here on the meta device is built there without its
    own starting weights, as for a checkpoint: the model's weights replace them, or, where they leave part of it new,
    the model is built again for real, its parts with their weights (read, and warned about, once)."""
    if (not on_meta or _BUILDING_PARTS.get() or starting_weights_skipped()
            or torch.get_default_device().type == "meta"):
        return build(), None
    try:
        with torch.device("meta"), checkpoint_follows():
            return build(), build
    except VisattnError:
        raise
    except Exception:  # noqa: BLE001 -- a builder that needs real tensors (.item())
        return build(), None


@file_records_read_once()
def load_weights(
    model: nn.Module,
    source: Union[str, Path, StateDict],
    *,
    strict: Strictness = True,
    sha256: Optional[str] = None,
    new_head: bool = True,
    head_from_weights: bool = False,
    origin: Optional[Union[str, Path]] = None,
    fix: Optional[str] = None,
    initialise: Optional[Callable[[], nn.Module]] = None,
) -> nn.Module:
    """Load weights into ``model`` from a file, shipped weights ``"ARCH.TAG"`` (when no file has that
    name), ``"timm:NAME"``, ``"hf-hub:ORG/REPO"`` or a state dict.

    timm, torchvision and visattn key layouts are converted by the model's ``adapt_state_dict``
    (which also resamples position embeddings). A classifier head of another size (or none) is
    dropped with a warning, to be fine-tuned, unless ``new_head=False``: then it is a
    :class:`WeightsError`, as it is for weights saved with this very model; a head only partly there
    always is. ``head_from_weights``: a head of another size sets the model's class count instead (what
    :func:`~visattn.create_model` does when no ``num_classes`` is given, or its architecture builds no head
    by default, as DINOv2's). Any other difference raises :class:`WeightsError` listing the keys (before any
    error about the head), unless ``strict=False``, which keeps the model's own initialisation for keys the
    checkpoint lacks and warns with their names; ``strict="attention"`` does so only for keys of the
    model's attention modules (a plain ResNet's weights in ``cbam_resnet50``, SE's in it). ``origin``: the file a
    state-dict ``source`` came from, for the messages; ``fix``: what their hint says to do when the keys do not
    fit. Inside :func:`checkpoint_follows` nothing is loaded.

    A ``model`` built on the meta device takes ``initialise``, which builds it for real: where the weights fill the
    model it is put on torch's default device without being initialised and takes them (no init time, no random
    numbers drawn), else ``initialise()``'s model takes them and is returned.
    """
    if starting_weights_skipped():
        return initialise() if initialise is not None and any(p.is_meta for p in model.parameters()) else model
    if not isinstance(source, (str, os.PathLike, dict)):
        raise WeightsError(f"weights source {source!r}: give a file path, a shipped ARCH.TAG, 'timm:NAME', "
                           "'hf-hub:ORG/REPO' or a state dict")
    wrapper, model = model, _weights_module(model)
    features_only = isinstance(as_module(wrapper, error=WeightsError), FeatureGetterNet)
    on_meta = any(p.is_meta for p in model.parameters())
    if on_meta and initialise is None:
        raise WeightsError(f"{type(model).__name__} is on the meta device, where loading weights does nothing; "
                           "build it on the CPU or a GPU, or call model.to_empty(device=...) first")
    state, grid = _read_source(source, sha256=sha256, into=model)
    named = origin or (source if not isinstance(source, dict) else "state dict")
    state = _in_model_layout(model, state, grid=grid, named=named)
    if features_only:
        state = _without_pruned_layers(model, state)
    elif head_from_weights:
        _take_the_weights_class_count(model, state)
    state, head_warning, head_error = _drop_mismatched_head(model, state, source=named, new_head=new_head, fix=fix)
    state, channels_warning = _adapt_input_channels(model, state, source=named)
    check_state_dict(model, state, strict=strict, source=named, fix=fix)
    if head_error:  # only now: weights of another architecture misfit everywhere, not just in the head
        raise WeightsError(head_error)
    _refuse_non_finite(state, source=named)
    _refuse_whole_numbers(model, state, source=named)
    # Only now: before weights that do not fit at all, or hold NaN, the warnings would mislead.
    for warning in filter(None, (channels_warning, head_warning)):
        warnings.warn(warning, VisattnWarning, stacklevel=outside_visattn())
    if not on_meta:
        model.load_state_dict(state, strict=False)
    elif initialise is not None:
        owned = not isinstance(source, dict) or isinstance(source, CopiedForOneLoad)
        return _materialised(wrapper, model, state, initialise, owned=owned)
    return wrapper


def _read_source(source: Union[str, Path, StateDict], *, sha256: Optional[str],
                 into: nn.Module) -> tuple[StateDict, Optional[tuple[int, int]]]:
    """The state dict ``source`` gives (see :func:`load_weights`) and the patch grid a ViT's weights were trained on,
    where the source records it (``None`` otherwise)."""
    if isinstance(source, dict):
        return _strip_prefixes(source), None
    if str(source).startswith("timm:"):
        return _fetch_timm(str(source)[5:], into=into)
    if str(source).startswith(HUB_PREFIXES):  # timm reads hf_hub: too
        repo = str(source)[len("hf-hub:"):]
        cached = _offline_weights(str(source), _cached_hub_file(repo))  # the cache's where the hub cannot be reached
        weights = cached or _fetch_hf_hub(repo)
        _refuse_other_hub_vit(repo, weights, into=into, offline=cached is not None)
        return read_state_dict(weights), None
    if (entry := named_weights_entry(str(source))) is not None:
        state = read_state_dict(entry["path"], sha256=entry["sha256"])
        return state, _recorded_grid(entry.get("preprocessing"), state)
    state = read_state_dict(source, sha256=sha256)
    if "pos_embed" not in state:
        return state, None
    return state, _recorded_grid(_file_preprocessing(Path(source)), state)  # the file's header read again for it


def _in_model_layout(model: nn.Module, state: StateDict, *, grid: Optional[tuple[int, int]],
                     named: object) -> StateDict:
    """``state`` in ``model``'s key layout: converted by its ``adapt_state_dict`` (timm's, torchvision's and
    visattn's layouts, position embeddings resampled from ``grid``), or, for another package's model, timm's
    checkpoint filter."""
    adapt = getattr(model, "adapt_state_dict", None)
    if adapt is None:
        return _timm_filtered(model, state, source=named)
    try:
        return adapt(state, source_grid=grid)
    except WeightsError as err:  # a layout the model cannot take (e.g. register tokens): name the file
        raise WeightsError(f"{named}: {err}") from None


def _materialised(wrapper: nn.Module, model: nn.Module, state: StateDict,
                  initialise: Callable[[], nn.Module], *, owned: bool) -> nn.Module:
    """``wrapper`` (``model``, or what holds it), built on the meta device, with ``state`` loaded on torch's default
    device, uninitialised before where ``state`` fills ``model``: its tensors become the model's (``owned``: read
    here, no other holder), or copies of them; else ``initialise()``'s model with ``state`` loaded over its
    initialisation (a new head, attention modules new to the weights, buffers no state dict holds)."""
    own = model.state_dict()
    counters = [key for key in own if key not in state and key.endswith(".num_batches_tracked")]  # initially 0
    if len(own.keys() & state.keys()) + len(counters) == len(own) and not _holds_tensors_besides_its_state(model):
        taken: set[int] = set()
        filled = {key: _model_tensor(state[key] if key in state else torch.zeros((), dtype=torch.long), own[key],
                                     owned=owned, taken=taken) for key in own}
        model.load_state_dict(filled, assign=True)
        # a module loading its own way (copying into its meta tensors) or a wrapper's own tensors stay on meta
        if not any(tensor.is_meta for tensor in (*wrapper.parameters(), *wrapper.buffers())):
            return wrapper
    real = initialise()
    module = _weights_module(real)
    if getattr(module, "num_classes", None) != getattr(model, "num_classes", None):  # reset to the weights' count
        module.reset_classifier(model.num_classes)
    module.load_state_dict(state, strict=False)
    return real


def _model_tensor(value: torch.Tensor, like: torch.Tensor, *, owned: bool, taken: set[int]) -> torch.Tensor:
    """``value`` as the model's tensor ``like`` (its dtype, on torch's default device, contiguous): ``value`` itself
    where it is ``owned`` and alone in memory torch allocated (not a view, not another key's), else a copy."""
    moved = value.to(device=torch.get_default_device(), dtype=like.dtype)
    storage = moved.untyped_storage()
    alone = moved is not value or (owned and storage.data_ptr() not in taken and storage.nbytes() == moved.nbytes
                                   and storage.resizable())  # not a bytearray's: safetensors' bytes loads
    if not alone or not moved.is_contiguous():
        moved = moved.clone(memory_format=torch.contiguous_format)
    taken.add(moved.untyped_storage().data_ptr())
    return moved


def _weights_module(model: nn.Module) -> nn.Module:
    """The module whose state dict loaded weights fill: the :func:`as_module`, or a features-only model's
    classifier (its keys are the classifier's under ``model.``, which weights lose as a Lightning task's prefix)."""
    bare = as_module(model, error=WeightsError)
    return bare.model if isinstance(bare, FeatureGetterNet) else bare


def _holds_tensors_besides_its_state(model: nn.Module) -> bool:
    """Whether ``model`` holds tensors its state dict cannot fill: buffers it does not save, meta tensors kept as
    attributes (or in a list, tuple or dict), or tensors shared between modules, and parameters of a subclass or with
    attributes (which moving it off the meta device would untie or lose). A tensor deeper in another object is not
    seen: such a model's ``initialise`` is for its builder's caller to give or not."""
    shared = (len(list(model.named_parameters(remove_duplicate=False))) != len(list(model.parameters()))
              or len(list(model.named_buffers(remove_duplicate=False))) != len(list(model.buffers())))
    marked = any(type(p) is not nn.Parameter or vars(p) for p in model.parameters())  # lost: loading makes new ones
    return shared or marked or any(
        module._non_persistent_buffers_set or any(_holds_a_meta_tensor(value) for name, value in vars(module).items()
                                                  if name not in ("_parameters", "_buffers", "_modules"))
        for module in model.modules())


def _holds_a_meta_tensor(value: Any) -> bool:
    """Whether an attribute's value is a tensor on the meta device or a list, tuple or dict holding one (not a deeper
    object's); one made on a device named in its code (torchvision's anchors, on the CPU) holds its values."""
    values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else (value,)
    return any(isinstance(item, torch.Tensor) and item.is_meta for item in values)


def _without_pruned_layers(model: nn.Module, state: StateDict) -> StateDict:
    """``state`` less the layers a features-only ``model`` of visattn's registry pruned (those past its last level,
    and the head), so that its classifier's weights load into it as ``features_only=True`` builds it from them (else
    they are "unexpected"). Keys the whole classifier lacks too (another depth's blocks, attention modules) stay."""
    from .registry import create_model, split_model_name

    name = getattr(model, "visattn_name", None)
    if name is None:  # built elsewhere (timm): what its pruning took is not known here
        return state
    with torch.device("meta"):  # the keys only
        whole = create_model(split_model_name(name)[0], pretrained=False,
                             **{**getattr(model, "visattn_kwargs", {}), "num_classes": model.num_classes})
    pruned = set(whole.state_dict()) - set(model.state_dict())
    return {key: value for key, value in state.items() if key not in pruned}


def _recorded_grid(preprocessing: Optional[dict[str, Any]], state: StateDict) -> Optional[tuple[int, int]]:
    """The patch grid a ViT's weights saved by visattn were trained on: their recorded input size over their
    patch size, where the position embeddings hold that grid. Their positions alone do not say it: a 2x8 grid's
    16 would silently be laid out as a 4x4 one's. None for other weights."""
    size = (preprocessing or {}).get("input_size")
    patch, positions = state.get("patch_embed.proj.weight"), state.get("pos_embed")
    if not size or len(size) != 3 or patch is None or positions is None or positions.ndim != 3:
        return None
    (height, width), (patch_height, patch_width) = size[1:], patch.shape[-2:]
    grid = (height // patch_height, width // patch_width)
    prefix = ("cls_token" in state) + (state["reg_token"].shape[1] if "reg_token" in state else 0)
    fills = positions.shape[1] - grid[0] * grid[1] in (0, prefix)  # no_embed_class leaves the prefix out
    return grid if fills and height % patch_height == 0 and width % patch_width == 0 else None


def _timm_filtered(model: nn.Module, state: StateDict, *, source: Any) -> StateDict:
    """``state`` through the checkpoint filter of a timm model's module, as timm's own pretrained loading runs
    it: a ViT's position embeddings resampled to the grid of the model's ``img_size``, its patch projection
    to its ``patch_size`` (a ViT built for 384 px refused 224 px weights). Other models' state as it is."""
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None) if module and module.__name__.startswith("timm.") else None
    if filter_fn is None:
        return state
    try:
        return filter_fn(state, model)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as err:
        raise WeightsError(f"{source}: timm's checkpoint filter for {type(model).__name__} could not read it "
                           f"({one_line(str(err)) or type(err).__name__}); give weights saved from a timm model of "
                           "this architecture") from None


def _refuse_whole_numbers(model: nn.Module, state: StateDict, *, source: Any) -> None:
    """One line for integer values where the model holds floating-point weights: loading would round
    them (a conv of int64 zeros loaded silently)."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].is_floating_point() and not value.is_floating_point():
            raise WeightsError(f"{source}: {key} holds {str(value.dtype).removeprefix('torch.')} values where the "
                               "model has floating-point weights; these are not its weights")


def _refuse_non_finite(state: StateDict, *, source: Any) -> None:
    """A diverged run's weights (or a damaged file's) would silently give NaN probabilities."""
    bad = next((k for k, v in state.items() if v.is_floating_point() and not _all_finite(v)), None)
    if bad is not None:
        raise WeightsError(f"{source}: tensor {bad!r} holds NaN or Inf values; the file is corrupt or from a diverged "
                           "run: use an earlier checkpoint")


def _all_finite(tensor: torch.Tensor) -> bool:
    # A finite sum proves every value finite (NaN and Inf carry through addition) in a twentieth of isfinite's time,
    # which would be most of loading ViT-B's weights; a sum that overflows is checked value by value. Both in float32
    # (float64's own): torch sums no float8 tensor on the CPU, and checks only some of them for NaN.
    wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return bool(torch.isfinite(tensor.sum(dtype=wide))) or bool(torch.isfinite(tensor.to(wide)).all())


def _adapt_input_channels(model: nn.Module, state: StateDict, *, source: Any) -> tuple[StateDict, Optional[str]]:
    """``state`` with RGB weights of the model's first convolution (a ResNet's ``conv1``, a ViT's
    ``patch_embed.proj``) adapted to a model built with another ``in_chans``, as timm does, and the warning
    to give; ``state`` itself unless those channels are all that does not fit."""
    first = next((f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    own = model.state_dict()
    misfits = [k for k in state if k in own and own[k].shape != state[k].shape]
    if misfits != [first] or state[first].ndim != 4 or state[first].shape[1] != 3:
        return state, None
    (out, in_chans, *kernel), rgb = own[first].shape, state[first].shape
    if (out, *kernel) != (rgb[0], *rgb[2:]):
        return state, None
    how = "summed over R, G and B" if in_chans == 1 else f"repeated over the channels and scaled by 3/{in_chans}"
    warning = f"{source}: {first} holds RGB filters and the model takes in_chans={in_chans}: {how}, as timm does"
    return {**state, first: _adapt_input_conv(in_chans, state[first])}, warning


def _adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """timm's ``adapt_input_conv`` for RGB weights ``(O, 3, kh, kw)``: summed over the colours for one
    channel (a gray image then meets the filters as its RGB copy would), else the colours repeated to
    ``(O, in_chans, kh, kw)`` and scaled by ``3 / in_chans``, so that activations keep their size."""
    rgb = weight.float()  # half weights: summed in float, which the CPU has kernels for
    if in_chans == 1:
        adapted = rgb.sum(dim=1, keepdim=True)
    else:
        adapted = rgb.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / in_chans)
    return adapted.to(weight.dtype)


def _take_the_weights_class_count(model: nn.Module, state: StateDict) -> None:
    """``model``'s classifier reset to the class count of the weights' head where the two differ in it alone (else a
    10-class fine-tune's file in a model built with the default 1000 has its head dropped for a random one, and
    silently so in a model built headless by default, a DINOv2's)."""
    names = classifier_names(model)
    if len(names) != 1 or not callable(getattr(model, "reset_classifier", None)):
        return
    if callable(getattr(model, "classes_in", None)):  # a detector's head: a convolution, or classes and no-object
        count = model.classes_in(state)
        if count and count != model.num_classes:
            model.reset_classifier(count)
        return
    own, theirs = model.state_dict().get(f"{names[0]}.weight"), state.get(f"{names[0]}.weight")
    width = own.shape[1] if own is not None and own.ndim == 2 else getattr(model, "head_hidden_size",
                                                                             getattr(model, "num_features", None))
    if theirs is not None and theirs.ndim == 2 and theirs.shape[1] == width and (
            own is None or own.shape[0] != theirs.shape[0]):
        model.reset_classifier(int(theirs.shape[0]))


def _drop_mismatched_head(
    model: nn.Module, state: StateDict, *, source: Any, new_head: bool, fix: Optional[str] = None
) -> tuple[StateDict, Optional[str], Optional[str]]:
    """``state`` without a classifier head that does not fit ``model``; the warning to give when the
    model's head stays at its random init (dropped here, or absent from a features-only checkpoint); and
    the error to raise instead, once the rest of the weights fit: when not ``new_head`` (its hint ``fix``, else
    how to build a model they fit), or when the head is only partly there (its missing keys would silently keep
    their random init). A model
    without a head (``num_classes=0``, a backbone) drops the checkpoint's quietly."""
    names = classifier_names(model)
    if not names:
        return state, None, None
    head, prefixes = ", ".join(names), tuple(f"{name}." for name in names)
    own = model.state_dict()
    own_head = [k for k in own if k.startswith(prefixes) and not k.endswith(".num_batches_tracked")]
    place = {key: k for k, key in enumerate(own)}  # the model's order: a file's (sorted or not) named them otherwise
    state_head = sorted((k for k in state if k.startswith(prefixes)), key=lambda k: place.get(k, len(place)))
    # A head is kept or dropped whole: a bias that fits beside a weight that does not is not that head's.
    dropped = state_head if any(k not in own or own[k].shape != state[k].shape for k in state_head) else []
    kept = {k: v for k, v in state.items() if k not in dropped}
    if dropped and not own_head:  # features only (num_classes=0): nothing to fit
        return kept, None, None
    absent = [k for k in own_head if k not in state]
    if dropped:
        problem = (_head_width_problem(model, head, own, state, names)
                   or f"classifier {head!r} does not fit num_classes={getattr(model, 'num_classes', '?')}")
        refuse_an_untrained_head(f"the weights' {problem}")
        shapes = ", ".join(f"{k} {tuple(state[k].shape)}" for k in dropped)
        error = f"its {problem}{' recorded with it' if fix else ''} ({shapes})"  # fix: a checkpoint's own model
        warning = (f"checkpoint {problem}: dropped {', '.join(dropped)}; the new head is randomly initialised, "
                   "so fine-tune it")
    elif absent and len(absent) < len(own_head):  # neither features only nor another head: a damaged file
        fix = (f"re-export it with the whole head, or without any {head}.* key to fine-tune a new head" if new_head
               else "use the checkpoint as training wrote it")
        return state, None, (f"{source}: classifier {head!r} is incomplete (missing: {_key_list(absent)}); the file "
                             f"was edited or damaged: {fix}")
    elif absent:
        error = f"it has no classifier {head!r}"
        warning = (f"the checkpoint has no classifier {head!r} (features only): the head is randomly initialised, "
                   "so fine-tune it")
    else:
        return state, None, None
    if not new_head:
        fix = fix or ("build the model as the weights were trained (create_model with their num_classes), or pass "
                      "new_head=True to start a new head")
        return kept, None, f"{source}: {error}; {fix}"
    return kept, warning, None


def _head_width_problem(model: nn.Module, head: str, own: StateDict, state: StateDict,
                        names: tuple[str, ...]) -> Optional[str]:
    """What differs when the weights' linear head takes features of another width than the model's pooling gives
    (timm's ``catavgmax`` doubles them); None when the widths agree."""
    own_weight, weight = own.get(f"{names[0]}.weight"), state.get(f"{names[0]}.weight")
    if own_weight is None or weight is None or own_weight.ndim != 2 or weight.ndim != 2:
        return None
    theirs, ours = weight.shape[1], own_weight.shape[1]
    if theirs == ours:
        return None
    pool = getattr(getattr(model, "global_pool", None), "pool_type", None)
    hint = ""
    if pool is not None and theirs == 2 * ours:
        hint = " (build it with global_pool='catavgmax', which they were trained with)"
    elif pool == "catavgmax" and ours == 2 * theirs:
        hint = " (build it with the global_pool they were trained with: 'avg', 'max' or 'avgmax')"
    return f"classifier {head!r} takes {theirs} features where this model's pooling gives {ours}{hint}"


def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The module names of a model's classifier heads (a distilled DeiT has two; none: no head): visattn models
    give theirs as ``classifier``; timm's in their ``pretrained_cfg`` (where ``classifier`` may be the head
    module itself: EfficientNet, MobileNet)."""
    head = getattr(model, "classifier", None)
    if isinstance(head, str):
        return (head,)
    cfg = getattr(model, "pretrained_cfg", None)
    named = cfg.get("classifier") if isinstance(cfg, dict) else None
    names = (named,) if isinstance(named, str) else tuple(named) if isinstance(named, (tuple, list)) else ()
    return names if all(isinstance(name, str) for name in names) else ()


def check_state_dict(
    model: nn.Module, state: StateDict, *, strict: Strictness, source: Any, fix: Optional[str] = None
) -> None:
    """Raise :class:`WeightsError` naming ``source`` and the keys when ``state`` does not fit ``model``.

    Missing and unexpected keys count only when ``strict`` is True, those outside the model's attention
    modules when it is ``"attention"``; shapes always, and so does a state that shares no key with the
    model. ``fix`` replaces the hint.
    """
    own = model.state_dict()
    if not own.keys() & state.keys():
        raise WeightsError(f"{source}: weights do not fit {type(model).__name__} (no key in common"
                           f"{_wrapper_hint(state, own)}); {fix or 'load weights saved from this architecture'}")
    heads = tuple(f"{name}." for name in classifier_names(model))
    # Checkpoints from before PyTorch 0.4.1, and frozen-BatchNorm ones (torchvision's detectors), have no
    # BatchNorm step counters; they only matter with momentum=None.
    missing = [k for k in own if k not in state and not (heads and k.startswith(heads))
               and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if k in own and own[k].shape != state[k].shape]
    if shape or (strict is True and (missing or unexpected)):
        parts = [f"{label}: {_key_list(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape)) if keys]
        hint = fix or ("check the architecture and its kwargs (depth, widths, ...); pass strict='attention' when "
                       "the missing keys are attention modules added to the weights' architecture (a plain ResNet's "
                       "weights in cbam_resnet50)" if not shape else "check the architecture and its kwargs")
        hint = (_depth_hint(state, own, model, fix) or _block_hint(state, own) or _stem_hint(state, own)
                or _final_norm_hint(missing, unexpected) or hint)
        raise WeightsError(f"{source}: weights do not fit {type(model).__name__} ({'; '.join(parts)}); {hint}")
    attention = _attention_prefixes(model) if strict == "attention" else ()
    outside = {label: [k for k in keys if not k.startswith(attention)]
               for label, keys in (("missing", missing), ("unexpected", unexpected))} if strict == "attention" else {}
    if any(outside.values()):
        # another depth's weights (resnet18's in a resnet34, resnet101's in a resnet50) would leave whole blocks at
        # their init, or be dropped, with only a warning
        parts = "; ".join(f"{label} outside its attention modules: {_key_list(keys)}" for label, keys in outside.items() if keys)
        hint = _depth_hint(state, own, model, fix) or fix or "give weights of this architecture or of its plain version"
        raise WeightsError(f"{source}: weights do not fit {type(model).__name__} ({parts}); {hint}")
    if missing or unexpected:
        warnings.warn(
            f"{source}: loaded non-strictly; kept init for missing {_key_list(missing)}; "
            f"ignored unexpected {_key_list(unexpected)}",
            VisattnWarning,
            stacklevel=outside_visattn(),
        )


# A block's key: its stage (ResNet's layer1, ViT's blocks, also under a detector's backbone) and its index there.
_BLOCK_KEY = re.compile(r"^((?:.*\.)?(?:layer\d+|blocks))\.(\d+)\.")


def _final_norm_hint(missing: list[str], unexpected: list[str]) -> str:
    """How to load a ViT's weights whose final norm sits on the other side of pooling (timm's token-pooled weights
    in a ``global_pool='avg'`` model, which builds ``fc_norm``), else empty (without it, the hint is the generic
    strict='attention', which does not apply)."""
    before, after = {"norm.weight", "norm.bias"}, {"fc_norm.weight", "fc_norm.bias"}
    if set(missing) == after and set(unexpected) == before:
        return ("the weights normalise the tokens before pooling (norm), this model after it (fc_norm, which "
                "pooling the patch tokens builds): pass fc_norm=False to keep their norm, or strict=False to start "
                "fc_norm afresh")
    if set(missing) == before and set(unexpected) == after:
        # Not fc_norm=True alone: it would load them strictly into a token-pooled model, which computes
        # other logits than the average-pooled model (MAE, BEiT, timm's *_gap_*) such weights usually come from.
        return ("the weights normalise after pooling (fc_norm), this model the tokens before it (norm): pass "
                "global_pool='avg' if they pool the patch tokens (MAE, BEiT, timm's *_gap_* weights), or "
                "fc_norm=True if they pool the class token")
    return ""


def _block_hint(state: StateDict, own: StateDict) -> str:
    """How to build a ResNet for weights of the other block (resnet34's in a resnet50: the same 3, 4, 6, 3 blocks) or
    of other 3x3 convolutions (ResNeXt's groups, Wide ResNet's width), else empty (without it, a 776-character key list
    says only "check the architecture")."""
    first, third, grouped = "layer1.0.conv1.weight", "layer1.0.conv3.weight", "layer1.0.conv2.weight"
    if first not in state or first not in own:
        return ""
    if (third in state) != (third in own):
        bottleneck = "Bottleneck blocks (three convolutions: ResNet-50 and deeper)"
        basic = "BasicBlocks (two: ResNet-18, -34)"
        theirs, ours = (bottleneck, basic) if third in state else (basic, bottleneck)
        return f"the weights have {theirs}, this model {ours}: build the ResNet of their blocks"
    if third not in state or grouped not in own or state[grouped].shape == own[grouped].shape:
        return ""
    width, groups = state[grouped].shape[0], state[first].shape[0] // state[grouped].shape[1]
    return (f"the weights' first 3x3 convolution is {width} wide with groups={groups}, this model's "
            f"{own[grouped].shape[0]} with groups={own[first].shape[0] // own[grouped].shape[1]}: pass "
            f"cardinality={groups}, base_width={width // groups} (resnext50_32x4d: 32 and 4; wide_resnet50_2: 1 and "
            "128)")


def _stem_hint(state: StateDict, own: StateDict) -> str:
    """How to build a ResNet for weights of the other stem (a 7x7 conv, or ResNet-D's three 3x3 convs), else empty:
    their key lists alone (some 700 characters) do not say it."""
    avg_down = any(re.search(r"\.downsample\.2\.weight$", key) for key in state)
    if "conv1.weight" in state and "conv1.0.weight" in own:
        return (f"the weights have the 7x7 stem (conv1): build a ResNet without stem_type (resnet50, not resnet50d)"
                f"{', with avg_down=True' if avg_down else ', avg_down=False'}")
    if "conv1.0.weight" not in state or "conv1.3.weight" not in state:
        return ""
    width = state["conv1.3.weight"].shape[0]
    tiered = state["conv1.0.weight"].shape[0] != width
    settings = f"stem_type={'deep_tiered' if tiered else 'deep'!r}, stem_width={width}, avg_down={avg_down}"
    if "conv1.weight" in own:
        d_model = "build the ResNet-D (resnet50d), or " if (width, tiered, avg_down) == (32, False, True) else ""
        return f"the weights have a deep stem (conv1.0-conv1.6): {d_model}pass {settings}"
    stem = ("conv1.0.weight", "conv1.3.weight")
    if all(key in own for key in stem) and any(own[key].shape != state[key].shape for key in stem):
        return f"the weights' deep stem is another ({state['conv1.0.weight'].shape[0]}, {width} wide): pass {settings}"
    return ""


def _depth_hint(state: StateDict, own: StateDict, model: nn.Module, fix: Optional[str] = None) -> str:
    """``another depth: the weights hold 3, 4, 6, 3 blocks in layer1–layer4, ResNet 2, 2, 2, 2; build ...`` when the
    two have the same stages, each of blocks numbered from 0 without a gap, and count other blocks in one
    (resnet50's weights in a resnet18), else empty: the key lists alone hid it. Other stages (a CIFAR ResNet's three
    against four) are another architecture, and a gap a stray key, not a depth."""
    def blocks(keys: Iterable[str]) -> dict[str, Optional[int]]:
        indices: dict[str, set[int]] = {}
        for found in filter(None, map(_BLOCK_KEY.match, keys)):
            indices.setdefault(found[1], set()).add(int(found[2]))
        return {stage: len(found) if found == set(range(len(found))) else None for stage, found in indices.items()}

    theirs, ours = blocks(state), blocks(own)
    if not theirs or theirs.keys() != ours.keys() or None in theirs.values() or theirs == ours:
        return ""
    stages = sorted(theirs, key=lambda stage: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stage)])
    where = f" in {stages[0]}–{stages[-1]}" if len(stages) > 1 else ""
    def listed(counts: dict[str, int]) -> str:
        return ", ".join(str(counts.get(stage, 0)) for stage in stages)
    return (f"another depth: the weights hold {listed(theirs)} blocks{where}, {type(model).__name__} {listed(ours)}; "
            f"{fix or 'build the architecture of their depth, or give weights of this one'}")


def _attention_prefixes(model: nn.Module) -> tuple[str, ...]:
    """``("layer1.0.attn.", ...)``: where the model's attention modules (SE, CBAM, ..., non-local) keep their weights."""
    kinds = tuple(ATTN_LAYERS.values())
    return tuple(f"{name}." for name, module in model.named_modules() if isinstance(module, kinds))


def _wrapper_hint(state: StateDict, own: StateDict) -> str:
    """``; the weights' keys all start with 'net.': strip that prefix`` when doing so makes them the
    model's (a user's LightningModule around the model); else empty."""
    firsts = {k.split(".", 1)[0] for k in state}
    if len(firsts) != 1 or len(state) < 2:
        return ""
    prefix = next(iter(firsts)) + "."
    return f"; the weights' keys all start with {prefix!r}: strip that prefix" if _under(state, prefix).keys() & own.keys() else ""


def _key_list(keys: list[str], limit: int = 8) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def unreachable_hub() -> Optional[str]:
    """Why the Hugging Face hub cannot be reached (offline mode, or no connection within 3 s: found in a second,
    instead of minutes of retries); None when it can."""
    from urllib.parse import urlparse
    from urllib.request import getproxies

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if getproxies().get("https"):  # reached through the proxy, if at all: huggingface_hub's requests tell
        return None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as err:
        return f"{host} unreachable: {err.strerror or err}"
    return None


@contextlib.contextmanager
def hub_cache_only(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode (what ``HF_HUB_OFFLINE=1`` sets) while ``offline``: the files timm reads from
    the hub, a hub name's config.json first, come from the local cache at once, or fail at once, instead of after
    25 s of retries and a dozen "Retrying" lines."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline  # read at each request (huggingface_hub's is_offline_mode)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _offline_weights(source: str, cached: Optional[Path]) -> Optional[Path]:
    """None where the hub can be reached, so that the download checks for newer weights; else ``cached``, the
    weights already in the local Hugging Face cache, which load without it; one line when there are none."""
    reason = unreachable_hub()
    if reason and cached is None:
        raise WeightsError(
            f"{source}: cannot fetch weights ({reason}) and none are in the Hugging Face cache; download the "
            "file where the hub is reachable and pass pretrained='FILE.safetensors'"
        )
    return cached if reason else None


def _fetch_timm(name: str, *, into: nn.Module) -> tuple[StateDict, Optional[tuple[int, int]]]:
    """timm's weights ``name`` and, for a ViT, the patch grid they were trained on (``None`` otherwise)."""
    import timm

    from .registry import check_timm_name

    check_timm_name(name)
    cached = offline_timm_file(name)
    try:
        # a cached file goes through timm's own loading (its checkpoint filter) as a download would
        overlay = {"file": str(cached)} if cached is not None else None
        with hub_cache_only(cached is not None):  # an hf-hub: name's config.json too
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as err:  # timm raises many kinds when the hub is unreachable
        if cached is not None and "weights_only" in str(err):  # fetched, and refused as a pickle by torch.load
            raise WeightsError(f"timm:{name}: {cached}: refused, {_refused_pickle(str(err))}") from None
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if name.startswith("local-dir:"):
            raise WeightsError(f"timm:{name}: could not read weights ({reason}); give a folder holding timm's "
                               "config.json and model.safetensors, as timm.models.save_for_hf writes") from None
        raise WeightsError(
            f"timm:{name}: could not fetch weights ({reason}); download the file where the hub is "
            "reachable and pass pretrained='FILE.safetensors'"
        ) from None
    _refuse_other_vit_computation(model, f"timm:{name}", name.split(".")[0], into=into)
    return model.state_dict(), tuple(getattr(getattr(model, "patch_embed", None), "grid_size", ())) or None


def _refuse_other_vit_computation(model: nn.Module, source: str, arch: str, *, into: nn.Module) -> None:
    """One line for a timm ViT whose weights have the keys and shapes of ``into``, visattn's ViT, but that
    computes otherwise: post-norm or parallel blocks, an MLP activation other than exact GELU, another
    LayerNorm epsilon than the model's ``norm_eps``. They would load strictly and give other logits (timm's residual
    post-norm ViT-B by 6.0)."""
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer) or isinstance(into, VisionTransformer):  # timm's own: as trained
        return
    block = model.blocks[0]
    act = getattr(getattr(block, "mlp", None), "act", None)
    norm, own_eps = getattr(block, "norm1", None), getattr(into, "norm_eps", 1e-6)
    own_act, their_act = getattr(into, "act_layer", "gelu"), _activation_name(act)
    fix = f"use timm's own model, model_name 'timm:{arch}'"
    if type(block) is not Block:
        differs = f"its blocks are timm's {type(block).__name__}, not the pre-norm Block"
    elif their_act != own_act:
        differs = f"its MLP activation is {act}, not the {own_act!r}"
        if their_act is not None:
            fix = f"build the model with act_layer={their_act!r}, or {fix}"
    elif not (isinstance(norm, nn.LayerNorm) and norm.eps == own_eps):
        differs = f"its norms are {norm}, not LayerNorm with the eps {own_eps}"
        if isinstance(norm, nn.LayerNorm):
            fix = f"build the model with norm_eps={norm.eps}, or {fix}"
    else:
        return
    raise WeightsError(f"{source}: {differs} that visattn's ViT computes, so its weights would load and give "
                       f"other outputs; {fix}")


def _activation_name(act: Optional[nn.Module]) -> Optional[str]:
    """The ``act_layer`` name of a timm MLP activation visattn's ViT computes too; None for others."""
    if type(act) is nn.GELU:
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    return {"GELU": "gelu", "GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}.get(type(act).__name__)  # timm's


def _refuse_other_hub_vit(repo: str, weights: Path, *, into: nn.Module, offline: bool) -> None:
    """:func:`_refuse_other_vit_computation` for the timm architecture a hub repository's ``config.json``
    names beside its weights (built on the meta device: nothing is read or allocated); nothing when the
    repository has no such file or names no architecture timm knows. ``offline``: the hub cannot be reached, and
    only a cached config.json is read."""
    config = weights.parent / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import hf_hub_download

            with hub_cache_only(offline):
                config = Path(hf_hub_download(repo, "config.json"))
        except Exception:  # noqa: BLE001 -- offline, or a repository without one: nothing says what it holds
            return
    try:
        import timm

        described = json.loads(config.read_text())
        with torch.device("meta"):
            model = timm.create_model(described["architecture"], pretrained=False,
                                      num_classes=described.get("num_classes", 1000),
                                      **(described.get("model_args") or {}))
    except Exception:  # noqa: BLE001 -- not timm's layout, or an architecture this timm lacks
        return
    _refuse_other_vit_computation(model, f"hf-hub:{repo}", described["architecture"], into=into)


def offline_timm_file(name: str) -> Optional[Path]:
    """timm's weights ``name`` in the local Hugging Face cache when the hub cannot be reached (None where it
    can: timm fetches them); one line when it cannot and none are cached. None for ``local-dir:FOLDER``,
    which timm reads from the folder without the hub."""
    if name.startswith("local-dir:"):
        return None
    return _offline_weights(f"timm:{name}", _cached_timm_file(name))


def _cached_timm_file(name: str) -> Optional[Path]:
    """The file of timm's weights ``name`` already in the local Hugging Face cache; None when not there."""
    import timm

    if name.startswith(HUB_PREFIXES):  # timm has no pretrained config of a hub name: the name is the repository
        repo, _, revision = name.partition(":")[2].partition("@")
        return _cached_hub_file(repo, revision)
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a tag timm does not know: timm.create_model says so
        return None
    repo, _, revision = (getattr(cfg, "hf_hub_id", None) or "").partition("@")  # timm's ORG/REPO[@REVISION]
    return _cached_hub_file(repo, revision) if repo else None


# The weights files of a hub repository, in the order they are tried (as timm does, safetensors first).
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _cached_hub_file(repo: str, revision: str = "") -> Optional[Path]:
    """The weights of hub repository ``repo`` already in the local Hugging Face cache (``$HF_HOME``),
    found without the network, which an offline machine may still load; None when none are there."""
    from huggingface_hub import try_to_load_from_cache

    for filename in _HUB_FILES:
        try:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
        except ValueError:  # not a repository name: the download says so, or that the hub is unreachable
            return None
        if isinstance(found, str):  # else None (not cached) or a marker that the repository lacks the file
            return Path(found)
    return None


def _fetch_hf_hub(repo: str) -> Path:
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in _HUB_FILES:
        try:
            return Path(hf_hub_download(repo, filename))
        except Exception as err:  # offline, missing repo or missing file
            errors.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
    raise WeightsError(
        f"hf-hub:{repo}: could not fetch weights ({errors[-1]}); download the file where the hub is "
        "reachable and pass pretrained='FILE.safetensors'"
    )
