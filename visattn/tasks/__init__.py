"""The LightningModules that train and score visattn's models: ``visattn.tasks.ImageClassifier``,
``CaptioningTask`` and ``DetectionTask``, the class paths a config's ``model:`` section names."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .captioning import CaptioningTask
    from .classification import ImageClassifier
    from .detection import DetectionTask

# Imported on first use: `import visattn.tasks.progress` or a command that only evaluates imports no Lightning task.
_MODULES = {".captioning": "CaptioningTask", ".classification": "ImageClassifier", ".detection": "DetectionTask"}
_LAZY = {name: module for module, name in _MODULES.items()}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["CaptioningTask", "DetectionTask", "ImageClassifier"]
