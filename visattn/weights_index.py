"""The weights index: each folder's ``index.json`` describes the ``<arch>.<tag>.safetensors`` files beside it (sha256,
task, dataset, metrics, preprocessing, labels or vocabulary, and the training config). The indexes of the folders
:func:`~visattn.weights_folders.weights_search_path` gives, merged in search order, give the entry of a name, the
default weights of an architecture, and the entry of a weights file.
"""
import contextlib
import json
import os
import re
import reprlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .errors import UnknownModelError, VisattnError, VisattnWarning, WeightsError, is_whole, outside_visattn
from .weight_names import FETCHED_PREFIXES, WEIGHTS_TAG, names_a_weights_file
from .weights_files import _safetensors_header, read_pickle_lazily, require_regular_file
from .weights_folders import _require_own_weights_folders, _searched, weights_search_path


INDEX_NAME = "index.json"
# What every reader of an index entry relies on; the rest (task, labels, metrics, ...) is optional.
_ENTRY_KEYS = ("file", "sha256")


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


def training_checkpoint_settings(source: Any) -> Optional[dict[str, Any]]:
    """The hyperparameters of a training checkpoint given as weights (``pretrained: last.ckpt``, a new run from an
    earlier one's weights); None for anything else, or a file that is no Lightning checkpoint (loading it says what
    is wrong with it)."""
    if (not isinstance(source, (str, os.PathLike)) or Path(source).suffix != ".ckpt"
            or named_weights_entry(os.fspath(source))):
        return None
    try:
        checkpoint = read_pickle_lazily(Path(source))
    except WeightsError:
        return None
    settings = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    return settings if isinstance(settings, dict) else None


def training_run_model(source: Any) -> Optional[tuple[str, dict[str, Any]]]:
    """The model a training checkpoint given as weights was trained as: its ``model_name`` (``ARCH`` or
    ``ARCH.TAG``) and builder arguments, the tag's recorded ones under the run's ``model_kwargs``; None for anything
    else, or a run of a ``timm:`` or hub model."""
    settings = training_checkpoint_settings(source) or {}
    name, given = settings.get("model_name"), settings.get("model_kwargs") or {}
    if not isinstance(name, str) or name.startswith(FETCHED_PREFIXES) or not isinstance(given, dict):
        return None
    return name, {**((named_weights_entry(name) or {}).get("model_kwargs") or {}), **given}


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
