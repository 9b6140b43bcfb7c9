"""Saving weights: ``DIR/<arch>.<tag>.safetensors`` and its entry in ``DIR/index.json``, refused before anything is
written when the name is taken or what the entry records would not load; written so that a failure or an interrupt
leaves the weights and the index as they were, and the same weights save to the same bytes."""
import inspect
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import save as unordered_safetensors_bytes
from torch import nn

from .errors import UnknownModelError, VisattnWarning, WeightsError, outside_visattn
from .fileio import SignalsDeferred, atomic_path, atomic_write_text, exclusive_lock
from .layers.patch_embed import fixed_input_size
from .state_dict_fit import check_state_dict
from .weight_names import WEIGHTS_TAG
from .weights_files import StateDict, sha256_of
from .weights_folders import weights_search_path
from .weights_index import INDEX_NAME, _read_index, metadata_problem
from .wrapped_models import as_module


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


# The save_weights argument that records each field of an entry, as the messages asking for it name it.
_RECORDED_BY = {"preprocessing": "preprocessing=dict(input_size=..., mean=..., std=...)", "labels": "labels=[...]",
                "vocab": "vocab=[...] (its words by id: Captioner.vocab.to_list())"}
# A captioner's entry without these does not load (load_captioner refuses it): its words are nowhere else, and it
# has no default transform to fall back on.
_CAPTIONER_NEEDS = ("vocab", "preprocessing")


def _incomplete_entry(arch: str, meta: dict[str, Any]) -> Optional[str]:
    """What ``meta`` lacks that loading the weights for their task needs: a captioner's vocabulary and
    preprocessing, or what a classifier's recorded ``preprocessing`` lacks (none recorded is allowed: it loads
    with its architecture's default, see :func:`_warn_unless_described`)."""
    from .data.preprocessing import CLASSIFIER_PREPROCESSING, preprocessing_problem
    from .registry import model_task

    task = model_task(arch)
    missing = [field for field in _CAPTIONER_NEEDS if not meta.get(field)] if task == "captioning" else []
    if missing:
        return (f"a captioner's weights load only with their {' and '.join(missing)}; pass "
                f"{' and '.join(_RECORDED_BY[field] for field in missing)}, or save the loaded Captioner, "
                "which carries them")
    if task != "classification" or not meta.get("preprocessing"):
        return None
    problem = preprocessing_problem(meta["preprocessing"], required=CLASSIFIER_PREPROCESSING)
    return problem and f"{problem}; pass {_RECORDED_BY['preprocessing']}"


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


# What an entry of each task may leave out, each loaded then with a default that is silently wrong for weights
# trained on anything else.
_ASSUMED_WITHOUT = {"classification": ("preprocessing", "labels"), "detection": ("labels",)}


def _warn_unless_described(path: Path, arch: str, model: nn.Module, meta: dict[str, Any]) -> None:
    """A classifier saved without ``preprocessing`` or ``labels`` loads with its architecture's default
    normalisation (ImageNet's, or CLIP's, ...) and labels "0".."N-1", a detector without ``labels`` with those
    labels: silently wrong for anything else."""
    from .data.preprocessing import default_settings
    from .registry import model_task

    task = model_task(arch)
    missing = [key for key in _ASSUMED_WITHOUT.get(task, ()) if not meta.get(key)]
    if not missing:
        return
    assumptions = {"labels": "labels '0'..'N-1'"}
    if "preprocessing" in missing:
        assumptions["preprocessing"] = f"{arch}'s default {default_settings(model)}"
    loader = {"classification": "load_classifier", "detection": "load_detector"}[task]
    warnings.warn(f"{path}: saved without {' or '.join(missing)}; loading it will assume "
                  f"{' and '.join(assumptions[key] for key in missing)}; pass "
                  f"{' and '.join(_RECORDED_BY[key] for key in missing)} to save_weights, or save what {loader} "
                  "returned, which carries them", VisattnWarning, stacklevel=outside_visattn())


def _loaded_fields(model: object) -> dict[str, Any]:
    """What a loaded Classifier, Captioner or Detector carries beside its network, as a weights entry records it
    (its ``entry_fields()``); nothing for a module, whose labels or vocabulary are not in it."""
    if isinstance(model, nn.Module):
        return {}
    fields = getattr(model, "entry_fields", None)
    return fields() if callable(fields) else {}


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
        model: the model to save, or what :func:`~visattn.inference.load_classifier`, ``load_captioner`` or
            ``load_detector`` returned, whose labels (or vocabulary and ``max_len``), category ids,
            preprocessing and task are then the defaults of those arguments.
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
    # A loaded object's labels, vocabulary, ... unless given: loading the file gives the same object back.
    given = {field: value for field, value in fields.items() if value is not None}
    meta = {field: value for field, value in {**_loaded_fields(model), **given}.items() if value is not None}
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
    problem = metadata_problem(meta) or _incomplete_entry(arch, meta) or _contradiction(model, arch, meta)
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
