"""Reading weights files safely: ``.safetensors``, and ``.pth``/``.bin``/``.ckpt`` pickles (and timm's ``.pth.tar``
training checkpoints) only with ``torch.load(weights_only=True)``: a pickle that would run code is refused, never
retried with full unpickling. Also the sha256 an index entry is checked with, the state dict inside the wrappers of a
training checkpoint, and what a file records of who wrote it and of the preprocessing its weights were trained with.
"""
import argparse
import contextlib
import contextvars
import copy
import hashlib
import json
import os
import pickle
import re
import struct
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file
from torch import nn

from .errors import WeightsError, caught_warnings
from .fileio import shared_lock_if_present
from .shipped import unstarted_shipped_run
from .weight_names import PICKLE_SUFFIXES
from .weights_folders import _searched, shipped_weights_dir

StateDict = dict[str, torch.Tensor]


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


def sha256_of(path: Union[str, Path]) -> str:
    """The hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    safetensors = path.suffix.lower() == ".safetensors"
    data = _checked_bytes(path, sha256, read=safetensors) if sha256 is not None else None
    if safetensors:
        try:
            state = load_file(path, device="cpu") if data is None else load_safetensors_bytes(data)
        except (SafetensorError, OSError, ValueError) as err:
            reason = str(err).splitlines()[0]
            raise WeightsError(f"{path}: not a valid safetensors file ({reason}); re-download or re-export it") from None
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        state = read_pickle_lazily(path)
    else:
        raise WeightsError(f"{path}: unknown weights format {path.suffix!r}; "
                           "use .safetensors, .pth, .pt, .bin, .ckpt or .pth.tar")
    state = _strip_prefixes(_unwrap(state, path))
    return state if data is not None else copied_out_of_the_map(state)  # the bytes' tensors are their own


def _checked_bytes(path: Path, sha256: str, *, read: bool) -> Optional[bytes]:
    """The bytes of the index entry's file ``path`` (``None`` unless ``read``: a pickle is hashed, then loaded),
    checked against its ``sha256``: indexed safetensors weights are hashed and loaded from the same bytes, as a file
    swapped between a check and a second read would load unchecked. A mismatch is looked at again once any save into
    the folder is done (a save holds the index's lock from its index write to its file's move): the entry may have
    been read from the new index before the new file was in place."""
    from .weights_index import INDEX_NAME, _read_index

    def contents() -> tuple[Optional[bytes], str]:
        data = path.read_bytes() if read else None
        return data, sha256_of(path) if data is None else hashlib.sha256(data).hexdigest()

    data, digest = contents()
    if digest == sha256:
        return data
    with shared_lock_if_present(path.parent / f"{INDEX_NAME}.lock"):
        data, digest = contents()
        indexed = {entry["file"]: entry["sha256"] for entry in _read_index(path.parent / INDEX_NAME).values()}
    if digest == sha256:
        return data
    if indexed.get(path.name) == digest:
        raise WeightsError(f"{path}: saved again (visattn save-weights --overwrite) while this loaded its earlier "
                           "index entry; load it again")
    restore = "restore it from git" if path.parent.resolve() == shipped_weights_dir().resolve() else \
        "restore it, or save the weights again (visattn save-weights --overwrite)"
    raise WeightsError(f"{path}: sha256 mismatch, the file is corrupt or was replaced; {restore}")


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


def _safetensors_header(path: Path) -> Optional[dict[str, str]]:
    """The metadata of the safetensors file ``path`` (``{}`` when it has none); None when it does not read as one."""
    try:
        with safe_open(str(path), framework="pt") as weights:
            return weights.metadata() or {}
    except (OSError, ValueError, SafetensorError):  # a header that is no JSON: ValueError
        return None


# What weights files record (their _read_file_record), and pickles as read lazily, by path, while a model is built
# and loaded from them.
_FILE_RECORDS = contextvars.ContextVar("visattn_file_records", default=None)
_LAZY_PICKLES = contextvars.ContextVar("visattn_lazy_pickles", default=None)


@contextlib.contextmanager
def file_records_read_once() -> Iterator[None]:
    """Read what a weights file records (the writer, the preprocessing, a training run's settings) from it once
    inside: a ViT's load looks for its patch grid and create_model for the preprocessing and the run's model, which
    for a pickle would each be a ``torch.load`` beside the weights' own."""
    tokens = (_FILE_RECORDS.set({}), _LAZY_PICKLES.set({})) if _FILE_RECORDS.get() is None else None
    try:
        yield
    finally:
        if tokens is not None:
            _FILE_RECORDS.reset(tokens[0])
            _LAZY_PICKLES.reset(tokens[1])


def read_pickle_lazily(path: Path) -> Any:
    """``read_pickle_checkpoint(path, lazy=True)``, inside :func:`file_records_read_once` read once (a training
    checkpoint's settings and its weights from one map)."""
    read = _LAZY_PICKLES.get()
    if read is None:
        return read_pickle_checkpoint(path, lazy=True)
    if path not in read:
        read[path] = read_pickle_checkpoint(path, lazy=True)
    return read[path]


WeightsOrigin = Literal["visattn", "torchvision", "other"]


def _file_preprocessing(path: Path) -> Optional[dict[str, Any]]:
    """The preprocessing visattn recorded in a weights file (:func:`_file_record`); None for files it did not write
    (timm's, the hub's, visattn's before it recorded them there) or that do not read."""
    return _file_record(path)[1]


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
        checkpoint = read_pickle_lazily(path)  # the tensors memory-mapped, not read; once with the weights
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
