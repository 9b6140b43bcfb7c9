"""visattn: a vision attention model zoo for PyTorch."""
import os
import warnings

from .errors import ONE_LINE_WARNINGS_ENV, VisattnError, one_line_showwarning
from .pretrained import load_weights, save_weights
from .registry import create_model, is_model, list_models, list_pretrained, register_model

if os.environ.get(ONE_LINE_WARNINGS_ENV) == "1":
    # a process the visattn command spawned (a DataLoader worker): its warnings print as the command's do
    warnings.showwarning = one_line_showwarning(warnings.showwarning)

__version__ = "0.1.0"
__all__ = [
    "VisattnError",
    "create_model",
    "is_model",
    "list_models",
    "list_pretrained",
    "load_weights",
    "register_model",
    "save_weights",
]
