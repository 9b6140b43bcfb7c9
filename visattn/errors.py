"""Errors a user can cause. Each message names the offending thing and the fix, on one line.

The CLI prints :func:`error_line` for any :class:`VisattnError` and exits non-zero without a traceback.
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


class VisattnWarning(UserWarning):
    """Base class of every warning visattn issues; the CLI prints these as one line."""


def error_line(err: VisattnError) -> str:
    """The error's own line. One raised in a DataLoader worker is rebuilt by torch with the worker's
    traceback as its message ("Caught ConfigError in DataLoader worker process 0. Original Traceback
    ..."), whose last line is ``module.Class: MESSAGE``."""
    text = str(err)
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last
