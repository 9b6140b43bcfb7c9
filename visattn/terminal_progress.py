"""The progress line of the commands that work through image files (``classify``, ``caption``, ``detect``,
``explain``): ``visattn classify: 544 of 3000 files (18%), 2 min 34 s left`` on standard error, in place.

It is drawn only where nothing else can garble it or be garbled by it: standard error is a terminal (not a log, a
pipe or a test's capture, whose text stays byte for byte what it was), ``TERM`` is not ``dumb``, and standard output
is no pipe (what reads it, ``tee``, ``less`` or ``grep``, may write to the same terminal at any moment). Each result
line and each warning is printed on a cleared line, and the line is cleared when the work ends, stops or fails.
"""
import math
import os
import stat
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Iterator, Optional, TextIO, TypeVar

CLEAR_LINE = "\r\033[K"  # back to the line's start, then erase to its end
FALLBACK_COLUMNS = 80  # a stream whose width cannot be asked (a test's fake terminal)

T = TypeVar("T")


class FileProgress:
    """The progress line of one command, for ``with``: its exit clears the line, also at Ctrl-C or an error.

    Args:
        command: what the line starts with, e.g. ``visattn classify``.
        enabled: False draws nothing (``--no-progress``).
        clock: seconds, for the estimate of the time left.
    """

    def __init__(self, command: str, *, enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.command, self.enabled, self.clock = command, enabled, clock
        self.stream: Optional[TextIO] = None  # standard error while the line is drawn there
        self.done, self.total, self.started, self.shown = 0, 0, 0.0, False
        self._warning_hook: Optional[Callable[..., None]] = None  # ours while drawn, over the command's
        self._previous_showwarning: Callable[..., None] = warnings.showwarning

    def __enter__(self) -> "FileProgress":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.clear()
        self.stream = None
        if self._warning_hook is not None and warnings.showwarning is self._warning_hook:  # else theirs stays
            warnings.showwarning = self._previous_showwarning

    def track(self, pairs: Iterable[T], *, total: int, batch_size: int) -> Iterator[T]:
        """``pairs``, one per file (as ``run_in_batches`` yields them), each handed on with the line cleared for
        its result to be printed, and the line redrawn once it has been; drawn only for more than one batch."""
        if not (self.enabled and total > batch_size and _terminal_beside_the_results()):
            yield from pairs
            return
        self.stream, self.total, self.started = sys.stderr, total, self.clock()
        self._clear_for_warnings()
        self.show()
        for done, pair in enumerate(pairs, start=1):
            self.clear()
            yield pair
            self.done = done
            self.show()

    def line(self) -> str:
        """e.g. ``visattn classify: 544 of 3000 files (18%), 2 min 34 s left``."""
        text = f"{self.command}: {self.done} of {self.total} files ({100 * self.done // self.total}%)"
        if 0 < self.done < self.total:
            rate = self.done / max(self.clock() - self.started, 1e-9)  # files a second
            text += f", {_duration((self.total - self.done) / rate)} left"
        return text

    def show(self) -> None:
        if self.stream is not None:
            # One column short of the width: a line filling it would wrap, and \r return to the second row only.
            self._write(CLEAR_LINE + self.line()[: _columns(self.stream) - 1])
            self.shown = self.stream is not None  # not once a write has failed

    def clear(self) -> None:
        if self.shown:
            self._write(CLEAR_LINE)
            self.shown = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal: the line goes, as a warning would, not the run
            self.stream, self.shown = None, False

    def _clear_for_warnings(self) -> None:
        """Warnings print on a line of their own: the progress line is cleared first, and redrawn after."""
        previous = self._previous_showwarning = warnings.showwarning

        def show_warning(*args: Any, **kwargs: Any) -> None:
            was_shown = self.shown
            self.clear()
            previous(*args, **kwargs)
            if was_shown:  # while a result is printed the line stays cleared
                self.show()

        warnings.showwarning = self._warning_hook = show_warning


def _terminal_beside_the_results() -> bool:
    """Standard error is a terminal that can erase a line, and standard output is no pipe."""
    stderr = sys.stderr
    if stderr is None or not stderr.isatty() or os.environ.get("TERM") == "dumb":
        return False
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (AttributeError, OSError, ValueError):  # no file behind it (a notebook, a test's capture): no pipe
        return True
    return not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode))


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or FALLBACK_COLUMNS
    except (AttributeError, OSError, ValueError):
        return FALLBACK_COLUMNS


def _duration(seconds: float) -> str:
    """``34 s``, ``4 min 05 s``, ``2 h 07 min``."""
    whole = math.ceil(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole // 60 % 60:02d} min"
