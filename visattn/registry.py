"""Model registry: ``@register_model`` entrypoints keyed by function name.

A registry key is always the name of the function that builds the model, so
``grep -rn "def cbam_resnet18"`` finds its definition.

Other installed packages add their own models by naming a module in the ``visattn.models`` entry-point group
(``pyproject.toml``: ``[project.entry-points."visattn.models"]`` ``mine = "my_package.models"``): it is imported
with visattn's models, and its ``@register_model`` builders are then models like visattn's, in Python, in
``visattn models`` and as a config's ``model_name``.
"""
import copy
import difflib
import fnmatch
import functools
import inspect
import os
import re
import sys
import threading
import typing
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Literal, Optional, Union

import numpy as np
import torch
from torch import nn

from .errors import (ArgumentError, ConfigError, DeprecatedArgumentWarning, UnknownModelError, VisattnWarning,
                     check_keyword_arguments, check_keyword_types, is_whole, keyword_names, one_line,
                     outside_visattn)
from .weight_names import HUB_PREFIXES

# True: every weight must fit; "attention": only attention modules added to the weights' architecture
# (SE, CBAM, ... on a plain ResNet) may be missing; False: any missing weight keeps its initialisation.
Strictness = Union[bool, Literal["attention"]]

Patterns = Union[str, Sequence[str]]  # one fnmatch pattern, or several (a name matching any)

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_model_family: dict[str, str] = {}  # arch -> module short name, e.g. "vit"; another package's: see model_family
MODEL_ENTRY_POINTS = "visattn.models"  # the entry-point group of other packages' model modules
_MODELS = "visattn.models."  # the modules of visattn's own builders and model classes
_entry_points_imported = False
# Held while they import: another thread's lookup waits for their models (a reentrant lock: a module that builds a
# model as it is imported comes back in the same thread, and finds them imported).
_entry_points_lock = threading.RLock()


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model builder under its function name; a second registration of a name raises.

    For visattn's own builders, the function returned builds as ``create_model(NAME, **kwargs)`` does, as a timm model
    function builds with its ``pretrained_cfg`` (``pretrained=True`` loads the architecture's default weights):
    called directly, the builder gave a model without it, so timm's data helpers prepared its images for ImageNet.
    Another package's builder stays as it is written (it may take ``pretrained`` or positional arguments itself).
    Its module registering the name again (a notebook cell run again, ``importlib.reload``) replaces the builder."""
    name = getattr(fn, "__name__", None)
    if not callable(fn) or not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"register_model({fn!r}): decorate a function def NAME(**kwargs) that returns the model; "
                        "its name is the registry key")
    if not fn.__module__.startswith(_MODELS):
        _import_models()  # visattn's and installed packages' names first: a name taken is refused here, not there
    registered = _model_entrypoints.get(name)
    if registered is not None and (registered.__module__, registered.__qualname__) != (fn.__module__, fn.__qualname__):
        raise ValueError(f"model {name!r} is already registered by {registered.__module__}; give the "
                         "function another name (registry keys are builder function names)")
    _model_entrypoints[name] = fn
    if not fn.__module__.startswith(_MODELS):  # another package's: its family is found from what it builds
        _model_family.pop(name, None)  # a builder registered again may build another family
        return fn
    _model_family[name] = _module_family(fn.__module__)

    @functools.wraps(fn)
    def built_as_registered(*args: Any, **kwargs: Any) -> nn.Module:
        if args:
            raise TypeError(f"{name}() takes keyword arguments only, as create_model({name!r}, ...) passes them")
        return create_model(name, **kwargs)

    return built_as_registered


def _module_family(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def evaluated_with(**preprocessing: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorate an entrypoint with how every weights published for its architecture were evaluated, where all of
    timm's for the name agree and differ from visattn's defaults (ImageNet's ``mean`` and ``std``, ``bilinear``
    ``interpolation``, ``crop_pct`` 0.875): weights that record nothing (a file from the hub) are evaluated so, and
    fine-tuning compares the data's settings with these. The model carries them as ``published_preprocessing``."""
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        @functools.wraps(builder)
        def build(**kwargs: Any) -> nn.Module:
            model = builder(**kwargs)
            model.published_preprocessing = copy.deepcopy(preprocessing)  # the model's own: the next keeps these
            return model
        return build
    return decorate


def _import_models() -> None:
    # Importing visattn.models runs every @register_model decorator; then other packages' modules run theirs.
    from . import models  # noqa: F401

    _import_entry_point_models()


def _import_entry_point_models() -> None:
    """Import each installed package's ``visattn.models`` module, once. One that fails to import (or registers
    a name taken) is a warning naming it and its package; visattn's models and the other packages' still load."""
    global _entry_points_imported
    with _entry_points_lock:
        if not _entry_points_imported:
            _entry_points_imported = True  # first: a module that builds a model as it is imported comes back here
            _import_each_entry_point()


def _import_each_entry_point() -> None:
    from importlib.metadata import entry_points

    for entry in entry_points(group=MODEL_ENTRY_POINTS):
        package = entry.dist.name if entry.dist is not None else "an installed package"
        named = f"{MODEL_ENTRY_POINTS} entry point {entry.name} = {entry.value} of {package}"
        if entry.pattern.fullmatch(entry.value) is None:  # loading it would fail on importlib's own AttributeError
            warnings.warn(f"{named} names no module ('{entry.value}'); give the module whose import registers the "
                          "models, e.g. my_package.models, in its pyproject.toml", VisattnWarning)
            continue
        try:
            loaded = entry.load()
        except (Exception, SystemExit) as err:  # its error, or its sys.exit(): its models are missing, not visattn
            warnings.warn(f"{named} failed to import ({type(err).__name__}: {one_line(str(err))}); its models may be "
                          f"missing: fix it, or uninstall {package}", VisattnWarning)
            continue
        if entry.attr:  # `module:function` loads the function, which nothing would call
            warnings.warn(f"{named} names {type(loaded).__name__} {entry.attr}, not a module; name the module whose "
                          f"import registers the models ({entry.module})", VisattnWarning)


def is_model(name: str) -> bool:
    """Whether ``name``'s architecture is registered: ``arch`` or ``arch.tag``, whose tag is not looked up
    (as ``timm.is_model`` takes a pretrained tag)."""
    _import_models()
    return isinstance(name, str) and name.partition(".")[0] in _model_entrypoints


def built_by_visattn(arch: str) -> bool:
    """Whether visattn's own builder makes registered architecture ``arch`` (not another package's, not
    ``timm:NAME``): such a model builds alike on the meta device, drawing nothing and warning of nothing, and holds
    nothing weights cannot fill, as :func:`~visattn.pretrained.built_for_weights` needs."""
    _import_models()
    builder = _model_entrypoints.get(arch)
    return builder is not None and builder.__module__.startswith(f"{__package__}.")


def model_module(name: str) -> str:
    """The module whose ``@register_model`` builds a registered architecture (``arch`` or ``arch.tag``)."""
    arch, tag = split_model_name(name)
    return _model_entrypoints[resolve_arch(arch, tag=tag)].__module__


def model_family(name: str) -> str:
    """The module a registered architecture (``arch`` or ``arch.tag``) lives in (``"vit"``, ``"resnet"``, ...); for
    another package's, that of the visattn model it builds (:func:`_remember_family`)."""
    arch, tag = split_model_name(name)
    arch = resolve_arch(arch, tag=tag)
    if arch in _model_family:
        return _model_family[arch]
    builder = _model_entrypoints[arch]
    try:  # another package's: the family of what its builder returns without arguments, on the meta device
        with torch.device("meta"):
            return _remember_family(arch, builder())
    except (Exception, SystemExit):  # it needs arguments (or loads weights): the class it names, until it is built
        return _visattn_family(_annotated_class(builder)) or builder.__module__


def _remember_family(arch: str, model: nn.Module) -> str:
    """Another package's architecture is of the family of the visattn model its builder returns, or of a subclass
    of one (a wrapper of visattn's ViT is a ``"vit"``: ``img_size`` and detector backbones take it as one); of any
    other class, its builder's module (``"my_package.models"``: ``my_package.detection`` makes no detector)."""
    return _model_family.setdefault(arch, _visattn_family(type(model)) or _model_entrypoints[arch].__module__)


def _visattn_family(model_class: Optional[type]) -> Optional[str]:
    """The family of the first of ``model_class``'s classes that is one of visattn's models; None for none."""
    found = next((c.__module__ for c in getattr(model_class, "__mro__", ()) if c.__module__.startswith(_MODELS)), None)
    return _module_family(found) if found else None


def _annotated_class(builder: Callable[..., nn.Module]) -> Optional[type]:
    """The class ``builder``'s return annotation names (the first class of ``Optional[...]`` or ``Union[...]``); None
    for none, or one that does not resolve here (a class imported only for type checkers)."""
    try:
        found = typing.get_type_hints(builder).get("return")
    except Exception:  # NameError, or whatever evaluating another package's annotations raises
        return None
    return next((c for c in typing.get_args(found) or (found,) if isinstance(c, type)), None)


def built_for_one_size(name: str) -> bool:
    """Whether ``name`` (``arch``, ``arch.tag`` or ``timm:NAME``) is built for one input size, which its builder's
    ``img_size`` sets: a ViT (its position embeddings), or a timm model that records a fixed input size (Swin's
    windows, LeViT's attention biases too)."""
    if name.startswith("timm:"):
        import timm

        return bool(getattr(timm.models.get_pretrained_cfg(name[len("timm:"):]), "fixed_input_size", False))
    return model_family(name) == "vit"


def model_task(name: str) -> str:
    """``"classification"``, ``"captioning"`` or ``"detection"`` for ``arch``, ``arch.tag`` or ``timm:NAME``."""
    if name.startswith("timm:"):
        return "classification"
    family = model_family(name)
    return {"detection": "detection", "show_attend_tell": "captioning"}.get(family, "classification")


# torchvision's names of architectures visattn has under timm's (its ResNets share theirs)
_TORCHVISION_NAMES = {"vit_b_16": "vit_base_patch16_224", "vit_b_32": "vit_base_patch32_224",
                      "vit_l_16": "vit_large_patch16_224"}


def resolve_arch(name: str, *, tag: Optional[str] = None) -> str:
    """``name`` if registered; otherwise UnknownModelError naming up to 3 close architectures (``tag``:
    the ``.TAG`` the name carried, so that architectures shipping those weights come first)."""
    _import_models()
    if name in _model_entrypoints:
        return name
    if name.startswith("timm:"):  # the tasks' model_name and pretrained take these; the registry holds visattn's
        name = name if tag is None else f"{name}.{tag}"
        raise UnknownModelError(f"{name!r}: create_model builds visattn's registered models; build a timm model with "
                                f"visattn.inference.classifier.build_classifier({name!r}, num_classes) (or "
                                "timm.create_model), or train one with model_name timm:NAME in a config")
    if name.startswith(HUB_PREFIXES):  # else ORG/REPO[.TAG] would be read as ARCH.TAG
        name = name if tag is None else f"{name}.{tag}"
        raise UnknownModelError(f"{name!r}: a hub model is built by timm: name it 'timm:{name}' (a config's "
                                f"model_name, or build_classifier), or load hub weights into a visattn architecture "
                                f"with create_model(ARCH, pretrained={name!r})")
    close = _close_archs(name, tag)
    hint = (f"did you mean {', '.join(close)}?" if close else "run `visattn models` to list them; a model of your own "
            f"is known once its module is imported, in the visattn command when a {MODEL_ENTRY_POINTS} entry point of "
            "an installed package names the module (README: Your own models)")
    if tag is not None:
        from .weights_index import recorded_module

        hint = missing_module_hint(recorded_module(name, tag), "its weights record") or hint
    if name in _TORCHVISION_NAMES:  # whose weights load into visattn's of another name
        hint = (f"torchvision's name for visattn's {_TORCHVISION_NAMES[name]}, into which its weights load "
                f"(create_model({_TORCHVISION_NAMES[name]!r}, pretrained='FILE.pth'))")
    named = f"{name!r}" if tag is None else f"{name!r} (the architecture of '{name}.{tag}')"
    raise UnknownModelError(f"unknown model {named}: {hint}")


def missing_module_hint(module: Optional[str], record: str) -> Optional[str]:
    """What to install for an architecture that weights or a checkpoint (``record``: "its weights record") say
    ``module`` of another package registers; None when they name none."""
    if module in sys.modules:  # the package is there, in another version
        return (f"{record} that {module} registers it, which the installed {module} does not: install the version "
                "of its package that has it")
    if module is not None:  # saved where another package was installed
        return (f"{record} that {module} registers it, and no installed package's {MODEL_ENTRY_POINTS} entry point "
                "imports that module: install the package that has it")
    return None


def package_module(name: Any) -> Optional[str]:
    """The module of another package whose ``@register_model`` builds ``name``, which weights and checkpoints of it
    record; None for visattn's own, a script's (whose models have no package to name) and names no builder
    registers (``timm:NAME``, unknown ones)."""
    if not is_model(name):
        return None
    module = model_module(name)
    return None if module.startswith((_MODELS, "__main__")) else module


def another_packages_note(name: str, classes: str) -> str:
    """Why another package's ``name`` is not of a task whose models are visattn's ``classes``: its builder returns
    none of them (a wrapper around one is a model of its own class); "" for visattn's own and unknown names."""
    module = package_module(name)
    return f" (its builder in {module} returns none of visattn's {classes}, nor a subclass of one)" if module else ""


def _close_archs(name: str, tag: Optional[str], n: int = 3) -> list[str]:
    """The ``n`` registered architectures nearest ``name``, deterministic: those shipping ``tag`` weights
    first (only they load ``name.tag``), then completions of ``name`` (a name cut short, ``se_resnet20``
    for ``se_resnet20_cifar``, is far in edit distance from its longer completion), then edit distance."""
    names = sorted(_model_entrypoints)  # sorted: the order does not depend on the import order
    name = name.lower()  # registered names are lower case: SE_RESNET20_CIFAR would get no suggestion
    prefixed = sorted((a for a in names if name and a.startswith(name)), key=lambda a: (len(a), a))
    # more than n edit-distance matches, so that a tagged one further down can still move up
    similar = difflib.get_close_matches(name, names, n=4 * n)
    candidates = list(dict.fromkeys(prefixed + similar))  # each once, completions first
    tagged = _archs_with_tag(tag) if tag else set()
    return sorted(candidates, key=lambda a: a not in tagged)[:n]  # stable: keeps the order within each


def check_timm_name(name: str) -> None:
    """UnknownModelError naming up to 3 close timm architectures (or the architecture's weights tags)
    unless timm has ``name`` (``ARCH`` or ``ARCH.TAG``); timm's own "Unknown model" names none, and a
    weights fetch would take it for a network failure."""
    import timm

    if name.startswith((*HUB_PREFIXES, "local-dir:")):  # timm finds these itself
        return
    arch = timm.models.get_arch_name(name)
    if not timm.models.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(f'timm:{c}' for c in close)}?" if close else "see timm.list_models()."
        raise UnknownModelError(f"timm has no model {arch!r}: {hint}")
    if name != arch:
        tags = timm.list_pretrained(f"{arch}.*")
        if name not in tags:
            raise UnknownModelError(f"timm has no weights {name!r}: {arch}'s are {', '.join(tags) or 'none'}")


def _archs_with_tag(tag: str) -> set[str]:
    """Architectures whose weights (shipped, or in a $VISATTN_WEIGHTS folder) include ``ARCH.tag``."""
    return {arch for arch, weights_tag in map(split_model_name, list_pretrained()) if weights_tag == tag}


def split_model_name(name: str) -> tuple[str, Optional[str]]:
    """``"vit_tiny_patch4_28.fmnist"`` -> ``("vit_tiny_patch4_28", "fmnist")``; a bare arch has tag ``None``."""
    if not isinstance(name, str):
        raise UnknownModelError(f"model name {name!r}: give a string such as 'vit_tiny_patch16_224' or "
                                "'se_resnet20_cifar.fmnist'; `visattn models` lists them")
    arch, dot, tag = name.partition(".")
    if dot and not tag:
        raise UnknownModelError(f"model name {name!r} ends in a dot: give {arch!r} alone or {arch}.TAG; "
                                "`visattn models --pretrained` lists the tags")
    return arch, (tag or None)


def list_models(filter: Patterns = "*", pretrained: bool = False, *, exclude_filters: Patterns = (),
                module: Union[str, Sequence[str]] = "", pattern: Optional[Patterns] = None) -> list[str]:
    """Sorted registered architectures matching an fnmatch pattern ``filter`` (or any of a list; named as in timm)
    and none of ``exclude_filters``; ``pretrained`` keeps those with weights; ``module`` (or a list) those registered
    in that module, as timm's (:func:`list_modules`). ``pattern``: ``filter``'s former name, deprecated."""
    if not isinstance(pretrained, bool):  # timm's second: list_models("*", "resnet") kept the models with weights
        hint = (f"; timm's second argument, module, goes by name here: list_models(..., module={pretrained!r})"
                if isinstance(pretrained, str) else "")
        raise ConfigError(f"pretrained={pretrained!r}: give True or False{hint}")
    _import_models()
    names = matching_names(_model_entrypoints, _renamed_pattern(filter, pattern), exclude_filters)
    if module:
        wanted = _known_modules([module] if isinstance(module, str) else module)
        names = [n for n in names if _registering_module(n) in wanted]
    if pretrained:
        with_weights = {split_model_name(n)[0] for n in list_pretrained()}
        names = [n for n in names if n in with_weights]
    return names


def list_modules() -> list[str]:
    """Sorted names of the modules that register architectures (``"resnet"``, ``"vit"``, ...: the last part of the
    module's name), which :func:`list_models` takes as ``module``, as timm's ``list_modules``."""
    _import_models()
    return sorted({_registering_module(name) for name in _model_entrypoints})


def _registering_module(arch: str) -> str:
    return _module_family(_model_entrypoints[arch].__module__)


def _known_modules(modules: Sequence[str]) -> set[str]:
    known = list_modules()
    if not modules or not all(isinstance(m, str) and m in known for m in modules):
        raise ConfigError(f"module={modules if len(modules) != 1 else modules[0]!r}: no architecture is registered "
                          f"there; give one of {', '.join(known)} (visattn.list_modules())")
    return set(modules)


def list_pretrained(filter: Patterns = "*", *, exclude_filters: Patterns = (),
                    pattern: Optional[Patterns] = None) -> list[str]:
    """Sorted ``arch.tag`` names of the weights (shipped, or in a $VISATTN_WEIGHTS folder) matching ``filter`` and
    none of ``exclude_filters``. ``pattern``: ``filter``'s former name, deprecated."""
    from .weights_index import load_index

    return matching_names(load_index(), _renamed_pattern(filter, pattern), exclude_filters)


def _renamed_pattern(filter: Patterns, pattern: Optional[Patterns]) -> Patterns:
    """``filter``, or ``pattern`` (its name before it took timm's) with a warning."""
    if pattern is None:
        return filter
    if filter != "*":  # else filter would be silently ignored for pattern
        raise ConfigError(f"filter={filter!r} and pattern={pattern!r}: pattern= is filter='s former name; give filter= "
                          "only")
    warnings.warn("pattern= is now filter=, as timm names it; pattern= will be removed", DeprecatedArgumentWarning,
                  stacklevel=outside_visattn())
    return pattern


def matching_names(names: Iterable[str], pattern: Optional[Patterns], exclude_filters: Optional[Patterns] = ()
                   ) -> list[str]:
    """Sorted ``names`` matching ``pattern`` (any of a list; ``''`` or ``[]``: every name) and none of
    ``exclude_filters``, as :func:`list_models` and :func:`list_pretrained` match."""
    if isinstance(pattern, (str, list, tuple)) and not pattern:  # timm's filter='' (or []) lists everything
        pattern = None
    include, exclude = (_patterns(pattern, "filter", default=["*"]), _patterns(exclude_filters, "exclude_filters"))
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)
                  and not any(fnmatch.fnmatchcase(n, p) for p in exclude))


def _patterns(value: Optional[Patterns], name: str, *, default: Sequence[str] = ()) -> list[str]:
    """fnmatch patterns from one string, a list of them or ``None`` (``default``); one line for anything else."""
    patterns = list(default) if value is None else [value] if isinstance(value, str) else value
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"{name}={value!r}: give an fnmatch pattern such as 'vit_*', or a list of them")
    return list(patterns)


def model_arguments(
    name: str, *, pretrained: Union[bool, str, None] = None, num_classes: Optional[int] = None, **kwargs
) -> tuple[str, Optional[dict[str, Any]], dict[str, Any]]:
    """What :func:`create_model` builds for these arguments: the architecture, the shipped weights entry
    it loads (``None`` for no weights or a file) and the builder's keyword arguments.

    An ``arch.tag`` name (or ``pretrained=True``) picks an entry whose recorded hyperparameters and label
    count go under the caller's; the entry loads unless ``pretrained=False``, which builds its
    architecture with random init.
    """
    from .weights_index import file_weights_entry, find_weights_entry, named_weights_entry, training_run_model

    arch, tag = split_model_name(name)
    arch = resolve_arch(arch, tag=tag)  # the tag: suggestions shipping its weights first
    if pretrained == "":  # else it would silently build random weights
        raise ConfigError("pretrained='': give a weights file, True, a shipped ARCH.TAG, 'timm:NAME' or "
                          "'hf-hub:ORG/REPO'; None or False for no weights")
    if tag is None and str(pretrained).startswith(f"{arch}.") and named_weights_entry(pretrained) is not None:
        # This architecture's own weights: built with their hyperparameters, as create_model("arch.tag") is
        tag, pretrained = pretrained[len(arch) + 1:], None
    if tag is not None and pretrained == name:  # the same weights named twice (a config's model_name and pretrained)
        pretrained = None
    if tag is not None and not isinstance(pretrained, bool) and pretrained is not None:
        # a path as typed, not PosixPath(...); a state dict's repr would be megabytes of tensors
        given = repr(os.fspath(pretrained)) if isinstance(pretrained, (str, os.PathLike)) else "..."
        raise ConfigError(f"{name} names shipped weights and pretrained={given} other weights; "
                          f"give one: create_model({arch!r}, pretrained={given}) or create_model({name!r})")
    # timm's switches left at a value that asks for nothing (scriptable=False, as ported scripts pass them) are
    # dropped: the model builds as without them
    kwargs = {k: v for k, v in kwargs.items() if not (k in _TIMM_SWITCHES and not v)}
    _refuse_other_libraries_arguments(arch, kwargs)  # first: the weights lookup's "no shipped weights" would hide why
    entry = find_weights_entry(arch, tag) if tag is not None or pretrained is True else None
    if entry is None and tag is None and (own := file_weights_entry(pretrained)) is not None and own["arch"] == arch:
        entry = own  # a file visattn saved for this architecture builds as its ARCH.TAG does (a captioner's vocabulary)
    run = training_run_model(pretrained) if entry is None and tag is None else None
    if run is not None and split_model_name(run[0])[0] == arch:
        kwargs = {**run[1], **kwargs}  # a run's checkpoint builds as the run did (a tag's 4-block ViT is no 12-block)
    if entry is not None:  # the weights' architecture, whether or not they load
        kwargs = {**(entry.get("model_kwargs") or {}), **kwargs}
        if num_classes is None:
            num_classes = entry.get("num_classes")
    if num_classes is not None:
        kwargs["num_classes"] = check_num_classes(num_classes)
    _check_builder_arguments(arch, kwargs)
    return arch, (None if pretrained is False else entry), kwargs


# timm.create_model's ways of naming weights and their preprocessing, and visattn's for them.
_WEIGHTS_FILE = "give create_model(..., pretrained='FILE') for a weights file"
_PREPROCESSING = ("a model's preprocessing comes from its weights (an index entry, a checkpoint or timm:NAME); set "
                  "model.pretrained_cfg after building it to change what timm's data helpers read")
# torchvision's builders name their weights by a WeightsEnum: visattn loads its state dict from a file
_TORCHVISION_WEIGHTS = ("save torchvision's weights with torch.save(Weights.get_state_dict(), 'FILE.pth') and give "
                        "create_model(..., pretrained='FILE.pth'); without weights is the default")
_TIMM_SWITCHES = ("scriptable", "exportable", "no_jit", "cache_dir")
_ONE_VARIANT = "visattn builds one variant of each layer: trace, torch.export or `visattn export` the model as built"
_OTHER_LIBRARIES_ARGUMENTS = {
    "checkpoint_path": ("timm.create_model takes", _WEIGHTS_FILE),
    "pretrained_cfg_overlay": ("timm.create_model takes", f"{_WEIGHTS_FILE}; {_PREPROCESSING}"),
    "pretrained_cfg": ("timm.create_model takes", f"{_WEIGHTS_FILE}; {_PREPROCESSING}"),
    # timm's layer-config switches: visattn's layers have no scripted or export-only variants to switch to
    "scriptable": ("timm.create_model takes", f"leave it out ({_ONE_VARIANT}; TorchScript scripting is not "
                   "supported)"),
    "exportable": ("timm.create_model takes", f"leave it out ({_ONE_VARIANT})"),
    "no_jit": ("timm.create_model takes", f"leave it out ({_ONE_VARIANT})"),
    "cache_dir": ("timm.create_model takes", "set $HF_HUB_CACHE (or $HF_HOME) for where hub weights are kept"),
    "weights": ("torchvision's builders take", _TORCHVISION_WEIGHTS),
    "weights_backbone": ("torchvision's builders take", _TORCHVISION_WEIGHTS)}


def _refuse_other_libraries_arguments(arch: str, kwargs: dict[str, Any]) -> None:
    """timm's and torchvision's ways of naming weights as one line with visattn's way, not "it takes img_size, ..."
    (for torchvision's ``weights``, not "did you mean widths?")."""
    for name, (taken_by, instead) in _OTHER_LIBRARIES_ARGUMENTS.items():
        if name in kwargs:
            raise ConfigError(f"{arch} has no argument {name!r}, which {taken_by}: {instead}")


def _check_builder_arguments(arch: str, kwargs: dict[str, Any]) -> None:
    """A keyword the architecture's class does not take is one line with the nearest name, not a TypeError from
    deep inside its constructor. Another package's builder is checked against its own parameters: those it takes
    for itself are not its class's."""
    builder = _model_entrypoints[arch]
    if not builder.__module__.startswith(_MODELS):
        check_keyword_arguments(arch, builder, kwargs)
        _check_handed_on_arguments(arch, builder, kwargs)
        return
    _refuse_channels_of_detectors(arch, kwargs)
    model_class = typing.get_type_hints(builder).get("return")  # every visattn builder names its class
    if isinstance(model_class, type):
        _refuse_timm_class_arguments(arch, model_class, kwargs)
        check_keyword_arguments(arch, model_class.__init__, kwargs)
        check_keyword_types(arch, model_class.__init__, kwargs)


def _check_handed_on_arguments(arch: str, builder: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    """The keywords another package's builder takes as ``**kwargs`` checked against the class its return annotation
    names, which it hands them to (``def mynet(**kwargs) -> MyNet``): one line with the nearest name, not a TypeError
    from the class. A class of visattn's is left to ``create_model``, which the builder hands them to."""
    parameters = inspect.signature(builder).parameters
    model_class = _annotated_class(builder)
    if (not any(p.kind is p.VAR_KEYWORD for p in parameters.values()) or model_class is None
            or _visattn_family(model_class) is not None):
        return
    check_keyword_arguments(arch, model_class.__init__, {k: v for k, v in kwargs.items() if k not in parameters})


def _refuse_channels_of_detectors(arch: str, kwargs: dict[str, Any]) -> None:
    """``in_chans`` for a visattn detector, which takes RGB images only, as one line saying so, not the nearest name
    it takes ("did you mean out_channels?": the channels of its feature pyramid, another thing altogether)."""
    if "in_chans" in kwargs and model_task(arch) == "detection":
        raise ConfigError(f"{arch} has no argument 'in_chans': detectors take 3-channel (RGB) images only; leave it "
                          "out, and give gray images as RGB (their one channel repeated)")


# timm's builder arguments that visattn's classes take under another name
_OUR_NAMES_OF_TIMMS = {"zero_init_last": "zero_init_residual"}


def _refuse_timm_class_arguments(arch: str, model_class: type, kwargs: dict[str, Any]) -> None:
    """A keyword that timm's class of the same name takes and visattn's does not (``drop_block_rate``, ``act_layer``)
    as one line saying so, not the nearest visattn name ("did you mean drop_rate?" for ``drop_block_rate``)."""
    import timm
    import timm.models

    theirs, ours = getattr(timm.models, model_class.__name__, None), keyword_names(model_class.__init__)
    if not isinstance(theirs, type) or ours is None:
        return
    for name in kwargs:
        if name in _OUR_NAMES_OF_TIMMS and _OUR_NAMES_OF_TIMMS[name] in ours:
            raise ConfigError(f"{arch} has no argument {name!r}, which timm's {theirs.__name__} takes: visattn's "
                              f"name for it is {_OUR_NAMES_OF_TIMMS[name]}")
        if name not in ours and name in (keyword_names(theirs.__init__) or ()):
            # create_model refuses timm: names, which the tasks' model_name takes
            instead = (f"; timm's own model takes it: model_name timm:{arch} in a config, "
                       f"timm.create_model({arch!r}, ...) in Python") if timm.is_model(arch) else ""
            raise ConfigError(f"{arch} has no argument {name!r}: timm's {theirs.__name__} takes it, visattn's "
                              f"{model_class.__name__} does not{instead}")


def check_num_classes(num_classes: Any) -> int:
    """``num_classes`` as an int when it is a whole number of classes (numpy's too), 0 for features only; one line
    otherwise (also for the models' ``reset_classifier``, where "10" would be a TypeError deep inside and -1 taken)."""
    if is_whole(num_classes):
        return int(num_classes)
    raise ConfigError(f"num_classes={num_classes!r}: give a whole number of classes (0: features only)")


def classifier_head(model: nn.Module, in_features: int, num_classes: int) -> nn.Module:
    """A fresh ``nn.Linear(in_features, num_classes)`` on the device and in the dtype of ``model``'s weights, as timm's
    ``reset_classifier`` makes it (else a head reset on a bf16 model is float32, and fails in its first forward);
    ``nn.Identity`` for 0 classes."""
    if num_classes == 0:
        return nn.Identity()
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    where = {} if weight is None else {"device": weight.device, "dtype": weight.dtype}
    return nn.Linear(in_features, num_classes, **where)


def create_model(
    name: str,
    pretrained: Union[bool, str, os.PathLike, dict[str, torch.Tensor], None] = None,  # second by position, as timm's
    *,
    num_classes: Optional[int] = None,
    strict: Strictness = True,
    features_only: bool = False,
    out_indices: Union[int, Sequence[int], None] = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model, optionally with weights.

    Args:
        name: a registered architecture, or ``arch.tag`` naming a shipped weights entry, which
            sets the architecture's hyperparameters and label count (and loads, see ``pretrained``).
        pretrained: ``None`` (the default) as the name says: ``arch.tag`` loads the tag's weights,
            a bare ``arch`` none. ``False``: no weights, also for ``arch.tag`` (its architecture
            with random init, as timm does). ``True`` for the tag's (or the architecture's default)
            shipped weights; a path to a ``.safetensors``/``.pth``/``.bin`` file; another shipped
            ``"ARCH.TAG"`` (e.g. a backbone's); ``"timm:NAME"`` or ``"hf-hub:ORG/REPO"``.
        num_classes: classifier size. Defaults to the weights entry's label count for ``arch.tag``
            or ``pretrained=True``, and to the head's size in other weights given as ``pretrained`` (a file,
            ``timm:NAME``); a value that differs from the checkpoint drops its head with a warning.
        strict: when ``"attention"``, parameters of attention modules the checkpoint lacks (a plain
            backbone's weights in an SE or CBAM one) keep their initialisation and a warning lists them;
            when ``False``, any parameter the checkpoint lacks does.
        features_only: a classifier's feature maps instead of its logits, as timm's ``features_only``: the
            model returns the list of maps at ``out_indices`` (its ``feature_info`` gives their channels and
            strides), without the layers past the last one or the head.
        out_indices: the levels of ``features_only``: an int takes the last n, a sequence those listed
            (negative from the end); default, as timm: every level of a ResNet (0 the stem, k stage k),
            a ViT's last three blocks.
        **kwargs: architecture hyperparameters passed to the builder (``img_size``, ``drop_path_rate``, ...).
    """
    from .pretrained import load_weights
    from .recorded_preprocessing import loaded_weights_preprocessing
    from .weights_files import file_records_read_once

    _check_create_options(strict=strict, features_only=features_only, out_indices=out_indices)
    with file_records_read_once():  # a pickle's record (a run's model, its preprocessing) read with its weights
        arch, entry, kwargs = model_arguments(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
        if features_only and model_task(arch) != "classification":
            raise ArgumentError("features_only", True, f"{arch} is a {model_task(arch)} model; build its backbone, "
                                                       "a classifier, with features_only=True")
        weighted = entry is not None or (pretrained is not None and pretrained is not False)
        model, initialise = _built(arch, kwargs, weighted=weighted)
        if entry is not None:
            model = load_weights(model, entry["path"], strict=strict, sha256=entry["sha256"], initialise=initialise)
        elif weighted:  # an empty state dict too: load_weights refuses it
            model = load_weights(model, pretrained, strict=strict, head_from_weights=num_classes is None,
                                 initialise=initialise)
        # What the loaded weights were trained with (None: no weights, or a file that recorded nothing of an
        # architecture whose weights share no statistics), which the tasks compare with the data's normalisation.
        model.visattn_recorded_preprocessing = loaded_weights_preprocessing(model, entry, pretrained)
    _record_provenance(model, arch, entry, kwargs, _unloaded_tag_preprocessing(name, arch, pretrained))
    if features_only:
        from .models.features import features_only as feature_maps

        model = feature_maps(model, out_indices)
    return model


def _named_as_asked(err: ConfigError, arch: str) -> ConfigError:
    """Another package's builder that hands its keyword arguments on to ``create_model``: the inner model's
    refusal of one names ``arch``, the model asked for, and the one it is built as."""
    inner, _, rest = str(err).partition(" has no argument ")
    if not rest or inner == arch or built_by_visattn(arch):  # visattn's: a backbone's own arguments
        return err
    return ConfigError(f"{arch} (built as {inner}) has no argument {rest}")


def _unexpected_argument(err: TypeError, arch: str, kwargs: dict[str, Any]) -> Exception:
    """Another package's builder handing on (``**kwargs``) a keyword its model does not take: one line naming it
    (the class its return annotation names finds the nearest name first); any other TypeError as it is."""
    unexpected = re.search(r"(\S+)\(\) got an unexpected keyword argument '(\w+)'", str(err))
    if built_by_visattn(arch) or unexpected is None or unexpected[2] not in kwargs:
        return err
    return ConfigError(f"{arch} has no argument {unexpected[2]!r}: its builder hands it to {unexpected[1]}, which "
                       "does not take it")


def _check_create_options(*, strict: object, features_only: object, out_indices: object) -> None:
    if not isinstance(strict, bool) and strict != "attention":  # "no" is true
        raise ConfigError(f"strict={strict!r}: give True (every weight must fit), 'attention' (attention modules "
                          "may be new) or False (any weight may be missing)")
    if not isinstance(features_only, bool):  # "no" is true
        raise ArgumentError("features_only", features_only, "give True (feature maps) or False (the classifier)")
    if out_indices is not None and not features_only:
        raise ArgumentError("out_indices", out_indices, "selects the maps of features_only=True; add it, or drop "
                                                        "out_indices")


def _built(arch: str, kwargs: dict[str, Any], *, weighted: bool) -> tuple[nn.Module, Optional[Callable[[], nn.Module]]]:
    """The model ``arch``'s builder gives and, when weights load next (``weighted``), the builder
    :func:`~visattn.pretrained.load_weights` takes as ``initialise`` (see ``built_for_weights``)."""
    from .pretrained import building_parts, built_for_weights

    build = building_parts(functools.partial(_model_entrypoints[arch], **kwargs))
    try:
        model, initialise = built_for_weights(build, on_meta=built_by_visattn(arch)) if weighted else (build(), None)
    except ConfigError as err:
        raise _named_as_asked(err, arch) from None
    except TypeError as err:
        raise _unexpected_argument(err, arch, kwargs) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{arch}: its builder ({_model_entrypoints[arch].__module__}) returned "
                          f"{type(model).__name__}, not a torch.nn.Module; return the model it builds")
    _remember_family(arch, model)
    if model_task(arch) == "classification" and not isinstance(getattr(model, "num_classes", None), int):
        raise ConfigError(f"{arch}: its builder ({_model_entrypoints[arch].__module__}) gave a {type(model).__name__} "
                          "without num_classes; give the model its head's class count as num_classes (0 without a "
                          "head), as timm's models have")
    return model, initialise


def _unloaded_tag_preprocessing(name: str, arch: str, pretrained: Any) -> Optional[dict[str, Any]]:
    """The preprocessing recorded with the weights ``ARCH.TAG`` names when ``pretrained=False`` builds their
    architecture without them: timm keeps the tag's ``pretrained_cfg`` then, so that its data helpers prepare
    images as the tag's recipe did (they gave the Fashion-MNIST ViT ImageNet's statistics and crop)."""
    from .weights_index import find_weights_entry

    tag = split_model_name(name)[1]
    return find_weights_entry(arch, tag).get("preprocessing") if pretrained is False and tag is not None else None


def _record_provenance(model: nn.Module, arch: str, entry: Optional[dict[str, Any]], kwargs: dict[str, Any],
                       tag_preprocessing: Optional[dict[str, Any]] = None) -> None:
    """Set what the model was built as: ``visattn_name``, ``visattn_kwargs`` (what save_weights records, so that
    the weights rebuild this model by name) and, for a classifier, timm's ``pretrained_cfg`` (from the loaded
    weights' preprocessing, else ``tag_preprocessing``)."""
    from .recorded_preprocessing import set_pretrained_cfg, timm_pretrained_cfg

    model.visattn_name = f"{arch}.{entry['tag']}" if entry else arch
    # numpy's scalars as Python's: the index is JSON
    model.visattn_kwargs = {k: v.item() if isinstance(v, np.generic) else v for k, v in kwargs.items()
                            if k != "num_classes"}
    if model_task(arch) == "classification":
        set_pretrained_cfg(model, timm_pretrained_cfg(model, model.visattn_recorded_preprocessing or tag_preprocessing))
