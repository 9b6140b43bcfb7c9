"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one.

Commands check their output options here first (:func:`output_paths` for a folder of outputs,
:func:`prepare_output_file` for one file, :func:`prepare_output_dir`), so a bad path, or one that would replace an
input file, is one line naming the option before anything is written; and they wrap their writes in
:func:`output_errors`, so a write that fails later (disk full) is one line too.
"""
import contextlib
import errno
import glob
import importlib.util
import os
import select
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

from .errors import ConfigError

PathLike = Union[str, Path]

# The PNG "Software" text of every image a command writes into an output folder: a rerun replaces the
# files carrying it and refuses any other, such as a user's own photo of the same name.
PNG_SOFTWARE = "visattn"
# The PNG text naming the command whose folder output a file is (caption, detect, explain), so that one command's
# output never silently replaces another's of the same name in a folder both are given.
PNG_COMMAND = "visattn-command"
NAME_MAX = 255  # bytes in one file name on Linux filesystems (ext4, xfs, btrfs, tmpfs)
_TEMP_EXTRA = len("..XXXXXXXX.tmp")  # what atomic_path's temp name adds to the name it is made from


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and ``os.replace`` it into place, and remove the temp
    files of ``path`` that killed writers left (SIGKILL, a power cut). A device, FIFO or socket at ``path`` is
    refused: replacing it would delete it (``--out /dev/null`` as root). A link is written through: its target is
    replaced, and the link kept (replacing the link by a file would leave the old contents in the target that
    anything following the link reads)."""
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise OSError(errno.EINVAL, "not a regular file (a device, FIFO or socket); give a file path", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{fitted_name(path.name, '', limit=NAME_MAX - _TEMP_EXTRA)}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    tmp = Path(tmp)
    try:
        if _ADVISORY_LOCKS:  # held while it is written: the sweep below passes over a living writer's temp
            _lock(fd, wait=False)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        _remove_dead_writers_temps(path.parent.glob(f"{glob.escape(prefix)}{'?' * 8}.tmp"))  # mkstemp's 8 characters
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)


class SignalsDeferred:
    """From :meth:`start` to the end of its ``with`` block, Ctrl-C, SIGTERM and SIGHUP are noted, and raised again
    for the handlers there were once the block ends: for writes of two files that must change together (an index
    and the file it names). In the main thread only, where Python runs signal handlers. (A thread's signal mask
    would not do: another thread of the process, such as torch's, takes the signal, and Python still raises it.)"""

    _HELD = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)

    def __init__(self) -> None:
        self._handlers: dict[int, Any] = {}
        self._received: list[int] = []

    def __enter__(self) -> "SignalsDeferred":
        return self

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread() and not self._handlers:
            self._handlers = {signum: signal.signal(signum, self._note) for signum in self._HELD}

    def _note(self, signum: int, frame: Any) -> None:
        self._received.append(signum)

    def __exit__(self, *exc: Any) -> None:
        handlers, received = self._handlers, set(self._received)
        self._handlers, self._received = {}, []
        for signum, handler in handlers.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        # a stop (SIGTERM, SIGHUP) first: Ctrl-C's KeyboardInterrupt would leave it unsaid, and the command exit 130
        for signum in sorted(received, key=lambda s: s == signal.SIGINT):
            signal.raise_signal(signum)


def _remove_dead_writers_temps(temps: Iterable[Path]) -> None:
    """Delete the temp files no process holds locked: their writers were killed (another writer of the same file,
    at work, holds its own). Not on Windows, whose locks would also stop the writer's own writes."""
    if not _ADVISORY_LOCKS:
        return
    for temp in temps:
        try:
            fd = os.open(temp, os.O_RDWR)
        except OSError:  # gone meanwhile, or not ours to open
            continue
        try:
            _lock(fd, wait=False)
        except BlockingIOError:
            continue
        finally:
            os.close(fd)
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive_lock(path: Union[str, Path]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (created if absent) for the block, so that
    processes doing a read-modify-write of one shared file (a weights index) take turns instead of each
    writing back what it read before the other's change. The lock file stays: deleting it while another
    process waits on it would let a third lock a new file at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _lock(fd, wait=True)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def shared_lock_if_present(path: Union[str, Path]) -> Iterator[None]:
    """Wait for any :func:`exclusive_lock` on ``path`` to end, and hold a shared lock for the block, so that what the
    exclusive holder writes is read whole. Nothing is created (a reader may not write the folder): without the lock
    file, or without shared locks (Windows), the block runs at once."""
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _lock(fd: int, *, wait: bool) -> None:
    """An exclusive lock on the open file ``fd``, released when it is closed: ``flock`` on POSIX, a lock on its
    first byte on Windows, which has no ``fcntl`` (imported here, not at the top, so ``import visattn`` works there).
    BlockingIOError when another process holds it and ``wait`` is false."""
    try:
        import fcntl
    except ImportError:
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
        except OSError as err:  # LK_LOCK gives up after 10 s, LK_NBLCK at once
            raise BlockingIOError(err.errno, "locked by another process") from err
        return
    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))


_ADVISORY_LOCKS = importlib.util.find_spec("fcntl") is not None  # flock's; Windows' byte locks bar other writes

_held_locks: dict[str, int] = {}  # lock file -> its descriptor, held until released or the process exits
_claims = threading.local()  # .made: the lock files claimed in this thread inside claims_released


def claim_folder(folder: PathLike, *, setting: str, task: str) -> None:
    """Hold an exclusive lock on ``.NAME.visattn.lock`` beside ``folder`` until this process exits (or the command
    that claimed it returns, :func:`claims_released`), so that two processes do not write one folder's files at
    once (two runs of one config would overwrite each other's ``last.ckpt``); one line naming the other process
    when one holds it. The lock file stays out of the folder, whose files Lightning counts (it would warn of a
    folder not empty). Claiming a folder this process holds is a no-op; filesystems without locks (some network mounts),
    and folders whose parent this user cannot write (the lock file's place), are not checked."""
    folder = os.path.abspath(folder)
    path = os.path.join(os.path.dirname(folder), f".{os.path.basename(folder)}.visattn.lock")
    if path in _held_locks:
        return
    os.makedirs(folder, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # a folder whose parent takes no file: not checked
            return
        raise
    try:
        _lock(fd, wait=False)
    except BlockingIOError:
        try:
            other = os.read(fd, 32).decode(errors="replace").strip()
        except OSError:  # Windows refuses reads of a region another process locked
            other = ""
        os.close(fd)
        raise ConfigError(f"{setting} {folder}: another {task} (process {other or 'unknown'}) is writing there; wait "
                          "for it to end, or give this run another folder") from None
    except OSError:
        os.close(fd)
        return
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held_locks[path] = fd
    if getattr(_claims, "made", None) is not None:
        _claims.made.append(path)


@contextlib.contextmanager
def claims_released() -> Iterator[None]:
    """Let go, on leaving, of the folders :func:`claim_folder` claims inside, in this thread: a command's run folders,
    for a program that runs commands in its own process. Those claimed before, or by other threads, stay held."""
    outer = getattr(_claims, "made", None)
    _claims.made = []
    try:
        yield
    finally:
        made, _claims.made = _claims.made, outer
        for lock in made:
            fd = _held_locks.pop(lock, None)
            if fd is not None:
                os.close(fd)  # which releases its lock


def unique_paths(directory: Union[str, Path], stem: str, used: set[str], tags: Sequence[str] = ("",),
                 suffix: str = ".png", numbers: Optional[dict[str, int]] = None) -> list[Path]:
    """``directory/stem{tag}.png`` for each of ``tags``, or ``stem-2{tag}.png``, ``stem-3{tag}.png``... with the
    first number that leaves every name free of ``used`` (earlier outputs' names, compared case-insensitively:
    ``X.png`` and ``x.png`` are one file on macOS and Windows), so that one input's outputs pair by name; a stem
    too long for a file name is shortened (see :func:`fitted_name`). ``numbers`` keeps each stem's next number
    to try across calls (without it, naming n inputs of one stem tried n^2 / 2 names: minutes for 8000)."""
    numbers = {} if numbers is None else numbers
    n = numbers.get(stem.casefold(), 1)
    while True:
        number = f"-{n}" if n > 1 else ""
        names = [fitted_name(stem, f"{number}{tag}{suffix}") for tag in tags]
        if not any(name.casefold() in used for name in names):
            used.update(name.casefold() for name in names)
            numbers[stem.casefold()] = n + 1
            return [Path(directory) / name for name in names]
        n += 1


def fitted_name(stem: str, suffix: str, *, limit: int = NAME_MAX) -> str:
    """``stem + suffix``, the stem cut short (whole characters) until the name takes at most ``limit``
    bytes: an input named near the limit would otherwise give an output name no filesystem takes."""
    while len(os.fsencode(stem + suffix)) > limit:
        stem = stem[:-1]
    return stem + suffix


def missing_reason(path: PathLike, what: str = "file") -> str:
    """Why ``path``, which does not exist, cannot be read: a dangling link names its target."""
    if Path(path).is_symlink():
        return f"a link to {os.readlink(path)}, which does not exist; point it at an existing {what}"
    return f"no such {what}"


def not_a_folder(path: PathLike) -> str:
    """Why ``path``, which is no folder, cannot be read as one; a relative one names the working folder it was looked
    for in (a config's relative data root run from another folder was "data/train: no such folder")."""
    if Path(path).exists():
        return "a file, not a folder"
    where = "" if Path(path).expanduser().is_absolute() else f" in the working folder {Path.cwd()}"
    return f"no such folder{where}"


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def output_errors(path: PathLike, *, flag: str, kind: str = "folder") -> Iterator[None]:
    """An OSError inside the block (unwritable place, disk full) as one line naming the option ``flag``,
    its value ``path``, the OS reason and the fix; ``kind`` is what the option takes, "folder" or "file"."""
    try:
        yield
    except OSError as err:
        reason = write_failure(err, _option_value(flag, kind), _in_the_way(err, path))
        raise ConfigError(f"{flag} {path}: {reason}") from None


def _option_value(flag: str, kind: str) -> str:
    """What ``flag`` takes, for "choose another ...": ``--out file``, ``out_dir folder``; a function's ``path``
    alone, which says what it is ("another path file" read as a slip)."""
    return flag if flag == "path" else f"{flag} {kind}"


def _in_the_way(err: OSError, path: PathLike) -> str:
    """Where in ``path`` a write failed, for :func:`write_failure`: the file or folder standing where another is
    needed when it is not ``path`` itself (e.g. a folder named like the weights index's lock file inside an output
    folder, which is to blame rather than the output folder); else ``there``. That is the
    target of a move (``filename2``: not the temp file moved), and for a path below a file, the file."""
    named = err.filename2 if err.filename2 is not None else err.filename
    if err.errno not in _SHAPE_ERRNOS or named is None:
        return "there"
    named = Path(os.fsdecode(named))
    while not os.path.lexists(named) and named != named.parent:  # makedirs names the first folder below the file
        named = named.parent
    return "there" if named == Path(path) else os.fspath(named)


def write_failure(err: OSError, kind: str, where: str = "there") -> str:
    """Why a write failed and the fix, for a message that has named the path: ``cannot write there (No
    space left on device); free some space or choose another KIND``; ``where`` names what failed inside it."""
    reason = _OS_REASONS.get(err.errno) or err.strerror or str(err)
    fix = ("free some space or choose another" if err.errno in FULL_ERRNOS else
           "choose a shorter" if err.errno == errno.ENAMETOOLONG else "choose a writable")
    return f"cannot write {where} ({reason}); {fix} {kind}"


def prepare_output_dir(path: PathLike, *, flag: str) -> Path:
    """Create the output folder ``path`` (the value of ``flag``) and check that it takes a new file."""
    path = Path(path)
    with output_errors(path, flag=flag):  # also a path too long to look at
        _refuse_a_dangling_link(path, flag=flag)
        _writable_dir(path)
    return path


def _refuse_a_dangling_link(path: Path, *, flag: str) -> None:
    """A link to nowhere read as "a file stands where a folder is needed", and an output file written there
    replaced the user's link with a regular file."""
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{flag} {path}: a link to {os.readlink(path)}, which does not exist; create its target "
                          f"or give another {flag}")


def prepare_output_file(path: PathLike, *, flag: str, inputs: Iterable[PathLike] = (),
                        ours: Optional[Callable[[Path], bool]] = None, suffix: Optional[str] = None,
                        command: Optional[str] = None) -> Path:
    """Check that ``path`` (the value of ``flag``) can be written as a file, creating its folder, that it is
    none of the command's ``inputs``, has ``suffix`` (checked before the folder is made) and that a file already
    there is one visattn wrote (``ours``, default :func:`written_by_visattn`), and given the ``command`` writing,
    not another command's folder output: a rerun replaces its own output, never a user's photo, checkpoint or
    config, nor a drawing of ``detect --out``."""
    if os.fspath(path) == "-":  # the usual name for standard output, which an image or model file does not go to
        raise ConfigError(f"{flag} -: {flag} writes a file, not standard output; give a file path")
    if os.fspath(path).endswith(("/", os.sep)):  # Path() would drop the slash and write a file of that name
        raise ConfigError(f"{flag} {os.fspath(path)}: names a folder; give a file path in it")
    path = Path(path)
    with output_errors(path, flag=flag, kind="file"):  # also a name too long to look at
        _refuse_a_dangling_link(path, flag=flag)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    refuse_overwriting_inputs([path], inputs, flag=flag, kind="file")
    if suffix is not None and path.suffix.lower() != suffix:
        raise ConfigError(f"{flag} {path}: {flag} writes a {suffix} file; give the file the {suffix} suffix")
    with output_errors(path, flag=flag, kind="file"):
        _writable_dir(path.parent)
    if path.is_file():  # not a FIFO, which reading would block on, nor a device: atomic_path names those
        refuse_replacing_others_files([path], flag=flag, kind="file", ours=ours, command=command)
    return path


def output_paths(inputs: Sequence[Path], directory: Optional[PathLike], *, flag: str,
                 commands: dict[str, str]) -> dict[str, list[Optional[Path]]]:
    """For each tag of ``commands``, ``directory/FOLDERS/STEM{tag}.png`` for each input file, where ``FOLDERS`` is
    the file's folder below the inputs' common folder (see :func:`unique_paths` for a stem met twice in one folder),
    planned before anything is written: the folder is prepared (:func:`prepare_output_dir`) and a name that would
    replace an input, or an output of another command than the tag's (``"detect --out"``), is refused up front.
    No ``directory`` (the option not given): ``None`` for each file. Mirroring the tree keeps an image's output
    name its own: numbered across one flat folder, adding an image to a sub-folder renamed others' outputs, and
    an earlier run's file of that name held another image's map."""
    tags = list(commands)
    if not directory:
        return {tag: [None] * len(inputs) for tag in tags}
    with new_folders_removed_on_error(directory):  # a refused name or mirrored folder: no empty tree left
        return _planned_outputs(inputs, directory, flag=flag, commands=commands)


def _planned_outputs(inputs: Sequence[Path], directory: PathLike, *, flag: str,
                     commands: dict[str, str]) -> dict[str, list[Optional[Path]]]:
    tags = list(commands)
    directory = prepare_output_dir(directory, flag=flag)
    used: dict[Path, tuple[set[str], dict[str, int]]] = {}  # per output folder: names taken, stems' next numbers
    planned = []
    for path, folder in zip(inputs, _folders_below_common(inputs)):
        names, numbers = used.setdefault(Path(str(folder).casefold()), (set(), {}))
        planned.append(unique_paths(directory / folder, path.stem, names, tags, numbers=numbers))
    outputs = [output for paths in planned for output in paths]
    refuse_overwriting_inputs(outputs, inputs, flag=flag)
    for k, tag in enumerate(tags):
        refuse_replacing_others_files([paths[k] for paths in planned], flag=flag, command=commands[tag])
    # Mirrored folders made now: a file in one's place, or a path past the system's limit, would stop the run midway
    for folder in dict.fromkeys(output.parent for output in outputs if output.parent != directory):
        prepare_output_dir(folder, flag=flag)
    return {tag: [paths[k] for paths in planned] for k, tag in enumerate(tags)}


@contextlib.contextmanager
def new_folders_removed_on_error(*paths: Optional[PathLike]) -> Iterator[None]:
    """The folders ``paths`` and their parents that do not exist yet are removed again, where still empty, if the
    block raises: planning a second output folder that is refused left the first one's tree of empty mirrored
    folders behind. Only empty folders go (``rmdir``), never a file."""
    new = [top for path in paths if path for top in [_first_missing(Path(os.path.abspath(path)))] if top is not None]
    try:
        yield
    except BaseException:
        for top in new:
            for folder, _, _ in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
        raise


def _first_missing(path: Path) -> Optional[Path]:
    """The outermost of ``path`` and its parents that does not exist; None when ``path`` exists."""
    missing = None
    for folder in [path, *path.parents]:
        if os.path.lexists(folder):
            break
        missing = folder
    return missing


def _folders_below_common(inputs: Sequence[Path]) -> list[Path]:
    """Each input's folder relative to the folder holding them all (``.`` for the files directly in it)."""
    folders = [os.path.dirname(os.path.abspath(path)) for path in inputs]
    try:
        common = os.path.commonpath(folders) if folders else ""
    except ValueError:  # on different Windows drives: no common folder, so the names go flat
        return [Path()] * len(inputs)
    return [Path(os.path.relpath(folder, common)) for folder in folders]


def refuse_replacing_others_files(outputs: Iterable[Path], *, flag: str, kind: str = "folder",
                                  ours: Optional[Callable[[Path], bool]] = None, command: Optional[str] = None) -> None:
    """One line naming ``flag`` when a planned output name is taken by a file visattn did not write
    (``ours``, default :func:`written_by_visattn`, false): a user's file there, which an output must not replace;
    or, given the ``command`` writing, by another command's output (:func:`written_by_command`)."""
    for output in outputs:
        if not os.path.lexists(output):
            continue
        if not (ours or written_by_visattn)(output):
            raise ConfigError(f"{flag} would replace {output}, which visattn did not write; "
                              f"move that file or choose another {_option_value(flag, kind)}")
        other = written_by_command(output) if command else None
        if other not in (None, command):
            raise ConfigError(f"{flag} would replace {output}, which `visattn {other}` wrote; choose another "
                              f"{_option_value(flag, kind)}, or move that file")


def remove_stale_output(path: PathLike) -> None:
    """Delete an earlier run's output at ``path`` (a file visattn wrote) that this run has nothing to put in:
    a panel of detections the image no longer has would pass for this run's."""
    if os.path.lexists(path) and written_by_visattn(path):
        Path(path).unlink()


def written_by_visattn(path: PathLike) -> bool:
    """Whether ``path`` is an image visattn wrote: a PNG or JPEG carrying its :data:`PNG_SOFTWARE` mark
    (:func:`figure_mark`), read from the header only, or a PDF or SVG naming it as creator."""
    from PIL import Image

    if Path(path).suffix.lower() in (".pdf", ".svg"):
        return _names_creator(Path(path))
    try:
        with Image.open(path) as image:
            mark = {"PNG": image.info.get("Software"), "JPEG": image.info.get("comment", b"").decode("latin-1")}
            return mark.get(image.format) == PNG_SOFTWARE
    except (OSError, ValueError, Image.DecompressionBombError):  # a folder, unreadable or not an image: not ours
        return False


def written_by_command(path: PathLike) -> Optional[str]:
    """The command whose folder output the PNG ``path`` is (its :data:`PNG_COMMAND` text); None for any other file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.info.get(PNG_COMMAND) if image.format == "PNG" else None
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def figure_mark(image_format: str, command: Optional[str] = None) -> dict[str, Any]:
    """matplotlib ``savefig`` arguments marking a figure of ``image_format`` as visattn's (see
    :func:`written_by_visattn`): PNG text, a JPEG comment, PDF and SVG creator metadata; a PNG also names the
    ``command`` whose output it is."""
    if image_format in ("jpg", "jpeg"):
        return {"pil_kwargs": {"comment": PNG_SOFTWARE.encode()}}
    if image_format == "png" and command:
        return {"metadata": {"Software": PNG_SOFTWARE, PNG_COMMAND: command}}
    key = {"png": "Software", "pdf": "Creator", "svg": "Creator"}.get(image_format)
    return {"metadata": {key: PNG_SOFTWARE}} if key else {}


def png_mark(command: str) -> Any:
    """PIL's ``pnginfo`` marking a PNG as ``command``'s output, as :func:`figure_mark` marks matplotlib's: a
    rerun may replace it (:func:`written_by_visattn`), another command may not (:func:`written_by_command`)."""
    from PIL import PngImagePlugin

    mark = PngImagePlugin.PngInfo()
    for key, value in figure_mark("png", command)["metadata"].items():
        mark.add_text(key, value)
    return mark


def _names_creator(path: Path) -> bool:
    try:
        data = path.read_bytes()[:1 << 20]  # matplotlib's figures are small; a large file is not one of ours
    except OSError:
        return False
    return f"/Creator ({PNG_SOFTWARE})".encode() in data or f"<dc:title>{PNG_SOFTWARE}</dc:title>".encode() in data


def attention_note(record: dict, what: str) -> str:
    """``; attention: PATH`` for a text line, so that each PNG of --attention-out is found without --json;
    ``; no WHAT, no attention map`` where none was written; nothing where none was asked for."""
    if "attention" not in record:
        return ""
    return f"; attention: {record['attention']}" if record["attention"] else f"; no {what}, no attention map"


def refuse_overwriting_inputs(outputs: Iterable[PathLike], inputs: Iterable[PathLike], *, flag: str,
                              kind: str = "folder") -> None:
    """One line naming ``flag`` when an output is one of the command's input files on disk (through
    ``..``, links or a case-insensitive filesystem too); outputs from an earlier run may be replaced."""
    existing = {key: source for source in inputs if (key := _file_key(source)) is not None}
    for output in outputs:
        source = existing.get(_file_key(output))
        if source is not None:
            raise ConfigError(f"{flag} would write {output} over the input file {source}; "
                              f"choose another {_option_value(flag, kind)}")


# Reasons worded for the path the user gave, where the OS names a part of it.
_OS_REASONS = {errno.EEXIST: "a file stands where a folder is needed",
               errno.ENOTDIR: "a file stands where a folder is needed",
               errno.EISDIR: "it is a folder",
               errno.ENAMETOOLONG: "the path or one of its names is longer than the system takes"}
_SHAPE_ERRNOS = (errno.EEXIST, errno.ENOTDIR, errno.EISDIR)  # a file or folder in the way of what is written


def stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader went away (``visattn ... | head``): a BrokenPipeError is then
    that, not one of a socket or pipe some other code writes to."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, ValueError, OSError):  # no file behind sys.stdout (a notebook, a test's capture)
        return False
    return any(events & select.POLLERR for _, events in poller.poll(0))


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # the disk, a quota or the file size limit (ulimit -f)


def _writable_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=path).close()  # /proc/self and read-only mounts exist but take no file


def _file_key(path: PathLike) -> Optional[tuple[int, int]]:
    try:
        found = os.stat(path)
    except OSError:  # no file there yet: it replaces nothing
        return None
    return found.st_dev, found.st_ino


def _umask() -> int:
    """The process's umask, read where the system tells it: setting it to read it back (``os.umask``, the only
    way elsewhere) let another thread of the program create world-writable files meanwhile."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status") as status:  # Linux 4.7+
        return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
