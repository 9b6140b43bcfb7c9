"""Trained models for inference: shipped weights or training checkpoints, loaded with their labels (or
vocabulary) and preprocessing, and the commands that run them on image files.

Nothing here imports Lightning, which training (:mod:`visattn.tasks`) needs, and only the detectors' scoring
(:mod:`~visattn.inference.detection_scoring`, for mAP) imports torchmetrics: `visattn classify`, `explain`, `caption`
and `detect` start a second sooner without them, and `evaluate` of any model some 1.3 s sooner (a classifier's
scoring counts its hits itself: torchmetrics took as long again to import).
"""
import importlib
import warnings
from typing import Any, Callable

from ..errors import MovedNameWarning, outside_visattn

# The loaders, imported on first use: each module imports moved_here from this package.
_LOADERS = {"load_classifier": "classifier", "load_captioner": "captioner", "load_detector": "detector"}
__all__ = ["load_captioner", "load_classifier", "load_detector", "moved_here"]


def __getattr__(name: str) -> Any:
    if name not in _LOADERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LOADERS[name]}", __name__), name)


def moved_here(module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A ``__getattr__`` for the visattn.tasks ``module`` that still gives the ``names`` that moved (each to its
    module in this package, or to the full module path given), with a warning naming the new place: code written
    for visattn 0.1.0 runs on."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new = names[name] if names[name].startswith("visattn.") else f"visattn.inference.{names[name]}"
        warnings.warn(f"{module}.{name} moved to {new}.{name}; import it from there (the old place will go)",
                      MovedNameWarning, stacklevel=outside_visattn())
        return getattr(importlib.import_module(new), name)

    return __getattr__
