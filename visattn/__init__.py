"""visattn: a vision attention model zoo for PyTorch."""
import importlib
import os
import warnings
from typing import TYPE_CHECKING, Any

from .errors import ONE_LINE_WARNINGS_ENV, MovedNameWarning, VisattnError, VisattnWarning, one_line_showwarning

if TYPE_CHECKING:
    from .inference.captioner import load_captioner
    from .inference.classifier import load_classifier
    from .inference.detector import load_detector
    from .pretrained import load_weights, save_weights
    from .registry import create_model, is_model, list_models, list_modules, list_pretrained, register_model

if os.environ.get(ONE_LINE_WARNINGS_ENV) == "1":
    # a process the visattn command spawned (a DataLoader worker): its warnings print as the command's do
    warnings.showwarning = one_line_showwarning(warnings.showwarning)

__version__ = "0.1.0"

# Imported on first use, so that `import visattn` does not import torch: the `visattn` command (visattn.__main__)
# then starts its Ctrl-C handling in milliseconds, not after torch's second or two of import.
_LAZY = {
    "create_model": "registry",
    "is_model": "registry",
    "list_models": "registry",
    "list_modules": "registry",
    "list_pretrained": "registry",
    "register_model": "registry",
    "load_weights": "pretrained",
    "save_weights": "pretrained",
    "load_classifier": "inference.classifier",
    "load_captioner": "inference.captioner",
    "load_detector": "inference.detector",
}
__all__ = [
    "MovedNameWarning",
    "VisattnError",
    "VisattnWarning",
    "create_model",
    "is_model",
    "list_models",
    "list_modules",
    "list_pretrained",
    "load_captioner",
    "load_classifier",
    "load_detector",
    "load_weights",
    "register_model",
    "save_weights",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'visattn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
