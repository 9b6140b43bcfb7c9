"""visattn: a vision attention model zoo for PyTorch."""
from .errors import VisattnError
from .pretrained import load_weights, save_weights
from .registry import create_model, list_models, list_pretrained, register_model

__version__ = "0.1.0"
__all__ = [
    "VisattnError",
    "create_model",
    "list_models",
    "list_pretrained",
    "load_weights",
    "register_model",
    "save_weights",
]
