"""Weights: loading them into visattn models, and visattn's public weights API.

Shipped weights live in ``weights/<arch>.<tag>.safetensors``, described by ``weights/index.json``
(sha256, task, dataset, metrics, preprocessing, labels or vocabulary, and the training config); the
folders of ``$VISATTN_WEIGHTS`` (a user's own weights, laid out the same way) are searched before them.
``.pth``/``.bin`` files (and timm's ``.pth.tar`` training checkpoints) are read only with
``torch.load(weights_only=True)``: a pickle that would run code is refused, never retried with full unpickling.

Here: :func:`load_weights` (key layouts converted, a head of another size dropped or taken, every check made before
anything loads) and the builders around it. The rest lives beside it, and its public names are given here too:
:mod:`~visattn.weights_folders` (where weights are looked up), :mod:`~visattn.weights_index` (the index and its
entries), :mod:`~visattn.weights_files` (reading files safely), :mod:`~visattn.weights_saving` (:func:`save_weights`),
:mod:`~visattn.state_dict_fit` (:func:`check_state_dict`), :mod:`~visattn.fetched_weights` (``timm:`` and ``hf-hub:``
names), :mod:`~visattn.recorded_preprocessing` (what weights were evaluated with) and :mod:`~visattn.wrapped_models`.
"""
import contextlib
import contextvars
import math
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from timm.models._features import FeatureGetterNet  # timm does not export it at the top
from torch import nn

from .errors import ConfigError, VisattnError, VisattnWarning, WeightsError, one_line, outside_visattn
from .fetched_weights import (_cached_hub_file, _fetch_hf_hub, _fetch_timm, _offline_weights, _refuse_other_hub_vit,
                              hub_cache_only, offline_timm_file, unreachable_hub)
from .recorded_preprocessing import (loaded_weights_preprocessing, set_pretrained_cfg, timm_pretrained_cfg,
                                     weights_preprocessing)
from .registry import Strictness, split_model_name
from .state_dict_fit import _key_list, check_state_dict, classifier_names
from .weight_names import HUB_PREFIXES
from .weights_files import (TRAINING_CHECKPOINTS, CopiedForOneLoad, StateDict, WeightsOrigin, _file_preprocessing,
                            _strip_prefixes, copied_out_of_the_map, file_records_read_once, read_pickle_checkpoint,
                            read_state_dict, require_regular_file, sha256_of)
from .weights_folders import shipped_weights_dir, user_weights_dir, weights_dir, weights_search_path
from .weights_index import (INDEX_NAME, file_weights_entry, find_weights_entry, load_index, metadata_problem,
                            model_files, model_weights_entry, named_weights_entry, recorded_module, training_run_model)
from .weights_saving import refuse_existing_weights, safetensors_bytes, save_weights
from .wrapped_models import as_module, unwrapped

__all__ = [
    "CopiedForOneLoad",
    "INDEX_NAME",
    "StateDict",
    "TRAINING_CHECKPOINTS",
    "WeightsOrigin",
    "as_module",
    "building_parts",
    "built_for_weights",
    "check_state_dict",
    "checkpoint_follows",
    "classifier_names",
    "copied_out_of_the_map",
    "file_records_read_once",
    "file_weights_entry",
    "find_weights_entry",
    "hub_cache_only",
    "load_index",
    "load_weights",
    "loaded_weights_preprocessing",
    "metadata_problem",
    "model_files",
    "model_weights_entry",
    "named_weights_entry",
    "offline_timm_file",
    "read_pickle_checkpoint",
    "read_state_dict",
    "recorded_module",
    "refuse_an_untrained_head",
    "refuse_existing_weights",
    "require_regular_file",
    "safetensors_bytes",
    "save_weights",
    "scored_as_built",
    "set_pretrained_cfg",
    "sha256_of",
    "shipped_weights_dir",
    "starting_weights_skipped",
    "timm_pretrained_cfg",
    "unreachable_hub",
    "unwrapped",
    "user_weights_dir",
    "weights_dir",
    "weights_preprocessing",
    "weights_search_path",
]


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
        raise WeightsError(f"weights source of type {type(source).__name__}: give a file path, a shipped ARCH.TAG, "
                           "'timm:NAME', 'hf-hub:ORG/REPO' or a state dict")
    wrapper, model = model, _weights_module(model)
    features_only = isinstance(as_module(wrapper, error=WeightsError), FeatureGetterNet)
    on_meta = any(p.is_meta for p in model.parameters())
    if on_meta and initialise is None:
        raise WeightsError(f"{type(model).__name__} is on the meta device, where loading weights does nothing; "
                           "build it on the CPU or a GPU, or call model.to_empty(device=...) first")
    state, grid = _read_source(source, sha256=sha256, into=model)
    named = origin or (source if not isinstance(source, dict) else "state dict")
    try:
        state = _in_model_layout(model, state, grid=grid, named=named)
        if features_only:
            state = _without_pruned_layers(model, state)
        elif head_from_weights:
            _take_the_weights_class_count(model, state)
        state, head_warning, head_error = _drop_mismatched_head(model, state, source=named, new_head=new_head,
                                                                fix=fix)
        state, channels_warning = _adapt_input_channels(model, state, source=named)
        check_state_dict(model, state, strict=strict, source=named, fix=fix)
    except WeightsError as err:
        if not fix:
            err.args = (f"{err}{_model_they_fit(source)}",)  # its class kept: callers tell some apart
        raise
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


def _model_they_fit(source: Union[str, Path, StateDict]) -> str:
    """``"; they are ARCH.TAG's weights: create_model(...) builds the model they fit"`` for weights that record the
    model they were saved from (shipped or saved ``ARCH.TAG``, a visattn ``.safetensors`` file, a training
    checkpoint), for an error about weights that do not fit: the keys alone left the model to guess (a class token,
    then the depth of the Fashion-MNIST ViT's weights, each one error); empty for others."""
    if isinstance(source, dict):
        return ""
    if named_weights_entry(str(source)) is not None:
        return f"; they are {source}'s weights: create_model({str(source)!r}) builds the model they fit"
    entry, run = file_weights_entry(source), training_run_model(source)
    if entry is None and run is None:
        return ""
    # the architecture with the file as pretrained builds as the weights were trained (registry.model_arguments)
    name = f"{entry['arch']}.{entry['tag']}" if entry is not None else run[0]
    return (f"; they are {name}'s weights: create_model({split_model_name(name)[0]!r}, "
            f"pretrained={os.fspath(source)!r}) builds the model they fit")


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
    from .registry import create_model

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
