"""Errors a user can cause. Each message names the offending thing and the fix, on one line.

The CLI prints ``str(err)`` for any :class:`VisattnError` and exits non-zero without a traceback.
"""


class VisattnError(Exception):
    """Base class for every error caused by user input (names, paths, files, configs)."""


class UnknownModelError(VisattnError, ValueError):
    """A model or weights name that is not registered."""


class WeightsError(VisattnError, RuntimeError):
    """A weights file that is missing, corrupt, hostile or does not fit the model."""


class ImageDecodeError(VisattnError, ValueError):
    """An image file that cannot be decoded safely (truncated, empty, not an image, too large)."""


class ConfigError(VisattnError, ValueError):
    """A config file, key or value that is invalid."""
