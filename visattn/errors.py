"""Errors a user can cause. Each message names the offending thing and the fix, on one line.

The CLI prints :func:`error_line` for any :class:`VisattnError` and exits non-zero without a traceback,
and each :class:`VisattnWarning` as one line (:func:`one_line_showwarning`). The argument checks that layers, models,
data and tasks share (:func:`is_whole`, :func:`is_count`, :func:`is_number`, :func:`check_count`,
:func:`check_odd_kernel`) are here too, beside the errors they raise.
"""
import contextlib
import difflib
import inspect
import os
import re
import shlex
import sys
import threading
import typing
import warnings
from collections.abc import Iterable, Iterator
from numbers import Integral, Real
from typing import Any, Callable, Optional, TextIO

import numpy as np

# Set by the CLI while a command runs, so that DataLoader workers it spawns print warnings as it does.
ONE_LINE_WARNINGS_ENV = "VISATTN_ONE_LINE_WARNINGS"
# What torch raises in the main process when a signal has ended its DataLoader workers.
WORKERS_STOPPED = re.compile(r"DataLoader worker \(pids?(\(s\))? [\d, ]+\) (is killed by signal|exited unexpectedly)")


class VisattnError(Exception):
    """Base class for every error caused by user input (names, paths, files, configs)."""


class UnknownModelError(VisattnError, ValueError):
    """A model or weights name that is not registered."""


class WeightsError(VisattnError, RuntimeError):
    """A weights file that is missing, corrupt, hostile or does not fit the model."""


class NotATrainingCheckpoint(WeightsError):
    """A ``--checkpoint`` file that is not a ``visattn fit`` checkpoint: ``problem`` is what it lacks, ``fix`` what the
    commands that also take weights (``--model``) suggest; ``save-weights`` gives its own."""

    def __init__(self, path: Any, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}; {fix}")
        self.path, self.problem, self.fix = path, problem, fix

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.problem, self.fix)


class ImageDecodeError(VisattnError, ValueError):
    """An image file that cannot be decoded safely (truncated, empty, not an image, too large)."""


class ConfigError(VisattnError, ValueError):
    """A config file, key or value that is invalid."""


class MissingSplit(ConfigError):
    """A dataset folder split into ``splits`` (e.g. train/, val/) that lacks the ``split`` asked for; commands
    that take no ``--split`` (``save-weights``) say what they need instead."""

    def __init__(self, root: Any, split: str, splits: list[str]) -> None:
        super().__init__(f"--split {split}: {root} has no {split}/ folder; its splits are {', '.join(splits)}")
        self.root, self.split, self.splits = root, split, splits

    def __reduce__(self) -> tuple:
        return type(self), (self.root, self.split, self.splits)


class ImageSizeNotDivisible(ConfigError):
    """An image size a patch embedding cannot split into whole patches; commands that take ``--img-size`` name it
    and the sizes that fit instead."""

    def __init__(self, img_size: tuple[int, int], patch_size: tuple[int, int]) -> None:
        super().__init__(f"img_size={img_size} is not divisible by patch_size={patch_size}; change one of them")
        self.img_size, self.patch_size = img_size, patch_size

    def __reduce__(self) -> tuple:
        return type(self), (self.img_size, self.patch_size)


class ExportMismatchError(VisattnError, RuntimeError):
    """An exported file whose runtime does not compute what the model computes (nothing is written)."""


class ArgumentError(ConfigError):
    """A bad value of a function's argument that a command also takes as a flag. The message names
    it as Python writes it (``layer=5: ...``); :meth:`for_flag` names the flag (``--layer 5: ...``)."""

    def __init__(self, argument: str, value: Any, reason: str) -> None:
        super().__init__(f"{argument}={value!r}: {reason}")
        self.argument, self.value, self.reason = argument, value, reason

    def __reduce__(self) -> tuple:  # rebuilt from its parts, not from the message alone
        return type(self), (self.argument, self.value, self.reason)

    def for_flag(self, flag: str) -> ConfigError:
        """The same error as the command line shows it: the flag and the value as typed."""
        return ConfigError(f"{flag} {shlex.quote(str(self.value))}: {self.reason}")


def keyword_names(function: Callable[..., Any]) -> Optional[list[str]]:
    """The keyword arguments ``function`` (a class's ``__init__``: without ``self``) takes by name; None when
    it takes any (``**kwargs``)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]


def check_keyword_arguments(owner: str, function: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """One line naming the first of ``kwargs`` that ``function`` (a class: its constructor) does not
    take, with the nearest name or the list it does take; a TypeError from deep inside otherwise."""
    accepted = keyword_names(function)
    if accepted is None:
        return
    for name in kwargs:
        if name not in accepted:
            close = difflib.get_close_matches(name, accepted, n=1)
            hint = (f"did you mean {close[0]}?" if close else
                    f"it takes {', '.join(accepted)}" if accepted else "it takes no keyword argument")
            raise ConfigError(f"{owner} has no argument {name!r}: {hint}")


def check_keyword_types(owner: str, function: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """One line naming the first of ``kwargs`` that ``function`` annotates as a flag (``bool``) or a ``float``,
    optional or not, and that is no such value: ``class_token="no"`` would build a class token ("no" is true),
    and ``mlp_ratio="4"`` fail deep inside torch. Other annotations are the function's own to check."""
    try:
        hints = typing.get_type_hints(function)
    except (NameError, TypeError):  # an annotation that does not resolve here says nothing to check against
        return
    for name, value in kwargs.items():
        hint = hints.get(name)
        kinds = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
        if value is None and type(None) in kinds:
            continue
        kinds = tuple(kind for kind in kinds if kind is not type(None))
        if kinds == (bool,) and not isinstance(value, (bool, np.bool_)):
            raise ArgumentError(name, value, f"{owner} takes True or False, not {_a_type(value)}")
        if kinds == (float,) and not (isinstance(value, Real) and not isinstance(value, (bool, np.bool_))):
            raise ArgumentError(name, value, f"{owner} takes a number, not {_a_type(value)}{_yaml_number_hint(value)}")


def _a_type(value: Any) -> str:
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _yaml_number_hint(value: Any) -> str:
    """YAML 1.1 (PyYAML's, so LightningCLI's) reads ``1e-5`` as text: a number needs a point in its mantissa."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", value.strip()):
        return f" (YAML reads {value} as text; write it with a decimal point, e.g. 1.0e-5)"
    return ""


class VisattnWarning(UserWarning):
    """Base class of every warning visattn issues; the CLI prints these as one line."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Frames between visattn and its caller that are not the caller's code: a ``with`` block's context manager, a
# module's ``__call__``.
_PASSED_THROUGH = (contextlib.__file__, os.path.join("torch", "nn", "modules", "module.py"))


def outside_visattn() -> int:
    """The ``stacklevel`` of a ``warnings.warn`` called where this is: the first frame outside visattn, so the warning
    names the user's line (a fixed level names contextlib.py where the warning passes through a ``with``)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and (frame.f_code.co_filename.startswith(_PACKAGE_DIR)
                                        or frame.f_code.co_filename.endswith(_PASSED_THROUGH)):
        frame, level = frame.f_back, level + 1
    return level


class DeprecatedArgumentWarning(VisattnWarning, FutureWarning):
    """An argument visattn has renamed or will remove: shown to users by default (Python hides DeprecationWarning
    outside ``__main__``)."""


class MovedNameWarning(VisattnWarning, FutureWarning):
    """A name imported from the module visattn moved it out of, which still gives it, for now."""


_WARNING_FILTERS = threading.RLock()
# The filters and display outside visattn's blocks, while one is entered: what a process forked meanwhile puts back.
_outside: list[tuple[list[Any], Callable[..., None]]] = []


def _after_fork_in_child() -> None:
    """A fork copies the lock as held when another thread held it (the child's DataLoader workers waited on it for
    ever), and that thread's filters (an ``always`` filter and a recording display: each warning of the child was
    swallowed); the child has neither that thread nor its block."""
    global _WARNING_FILTERS
    _WARNING_FILTERS = threading.RLock()
    if _outside:
        warnings.filters[:], warnings.showwarning = _outside.pop()


if hasattr(os, "register_at_fork"):  # not on Windows, which spawns
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def _filters_held(lock: threading.RLock, record: bool) -> Iterator[Optional[list[warnings.WarningMessage]]]:
    """``warnings.catch_warnings`` inside ``lock``, which the caller holds, recording the state outside for a fork."""
    outermost = not _outside  # the lock is re-entrant: an inner block records nothing
    if outermost:
        _outside.append((list(warnings.filters), warnings.showwarning))
    try:
        with warnings.catch_warnings(record=record) as caught:
            yield caught
    finally:
        if outermost:
            _outside.clear()
        lock.release()


@contextlib.contextmanager
def caught_warnings(*, record: bool = False) -> Iterator[Optional[list[warnings.WarningMessage]]]:
    """``warnings.catch_warnings``, which visattn's calls enter one thread at a time: it saves the process's filter
    list and puts it back on leaving, so two threads' blocks left out of order would keep one's filter for good
    (an ``always`` filter from explain_image in four threads, ahead of every filter the host program set)."""
    lock = _WARNING_FILTERS
    lock.acquire()
    with _filters_held(lock, record) as caught:
        yield caught


@contextlib.contextmanager
def ignored_unless_busy(category: type[Warning]) -> Iterator[None]:
    """``category`` ignored inside, as :func:`caught_warnings` ignores it, unless another thread's visattn call
    holds the filters (reading a checkpoint, saving a figure): then nothing is changed and such a warning shows,
    rather than the caller waiting for it (an image's decoding behind a 400 MB checkpoint's reading)."""
    lock = _WARNING_FILTERS
    if not lock.acquire(blocking=False):
        yield
        return
    with _filters_held(lock, record=False):
        warnings.simplefilter("ignore", category)
        yield


def one_line_showwarning(previous: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` printing a :class:`VisattnWarning` as ``warning: MESSAGE`` instead of
    Python's two lines (``FILE:LINE: Category: MESSAGE`` and the source line); others go to ``previous``."""

    def show(message: Any, category: type, filename: str, lineno: int, file: Optional[TextIO] = None,
             line: Optional[str] = None) -> None:
        if not issubclass(category, VisattnWarning):
            previous(message, category, filename, lineno, file, line)
            return
        stream = sys.stderr if file is None else file
        if stream is None:  # pythonw: no console
            return
        try:
            stream.write(f"warning: {one_line(str(message))}\n")
        except OSError:  # as Python's own showwarning: a closed stderr loses the warning, not the run
            pass

    return show


def error_line(err: VisattnError) -> str:
    """The error's own line. One raised in a DataLoader worker is rebuilt by torch with the worker's
    traceback as its message ("Caught ConfigError in DataLoader worker process 0. Original Traceback
    ..."), whose last line is ``module.Class: MESSAGE``."""
    text = str(err)
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return one_line(text)
    last = text.rstrip().splitlines()[-1]
    return one_line(last.split(": ", 1)[1] if ": " in last else last)


def first_few(items: Iterable[Any], limit: int = 10) -> str:
    """``items`` joined by commas, the first ``limit`` of them and a count of the rest, so that a message naming a
    list (a dataset's 1000 class names) stays one readable line."""
    items = [str(item) for item in items]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (``\\n`` for a newline in a file name), so that a
    line of output naming a file stays one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


# ---------------------------------------------------------------------------------------------
# argument checks (``True`` is no number here, though Python counts it as 1)
# ---------------------------------------------------------------------------------------------


def is_index(value: object) -> bool:
    """Whether ``value`` is an integer, as an index of a sequence is (``True`` is not one, though Python counts it as 1)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_many(value: object) -> bool:
    """Whether ``value`` holds several values, an iterable that is no str (which Python iterates letter by letter:
    ``"red"`` is one colour, not ``['r', 'e', 'd']``)."""
    return isinstance(value, Iterable) and not isinstance(value, str)


def is_whole(value: object) -> bool:
    """Whether ``value`` is a whole number >= 0."""
    return is_index(value) and value >= 0


def is_count(value: object) -> bool:
    """Whether ``value`` is a whole number >= 1."""
    return is_whole(value) and value >= 1


def is_number(value: object) -> bool:
    """Whether ``value`` is a real number (``True`` is not one, though Python counts it as 1)."""
    # int and float (what JSON numbers are) first: the abstract Real check took a third of a COCO file's box checks
    return type(value) in (int, float) or (isinstance(value, Real) and not isinstance(value, bool))


def check_count(name: str, value: object) -> int:
    """``value`` when it is a whole number >= 1, else a :class:`ConfigError` naming ``name``."""
    if not is_count(value):
        raise ConfigError(f"{name}={value!r}: give a whole number >= 1")
    return int(value)


def check_odd_kernel(name: str, value: object) -> int:
    """``value`` when it is an odd whole number >= 1, else a :class:`ConfigError` naming ``name``: "same" padding
    of ``(k - 1) / 2`` keeps a map's size only for odd kernels."""
    if not is_count(value) or value % 2 == 0:
        raise ConfigError(f"{name}={value!r}: give an odd whole number (3, 5, 7, ...): an even kernel changes the "
                          "map's size")
    return int(value)
