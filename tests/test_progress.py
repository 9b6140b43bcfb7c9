"""The progress line of ``classify``, ``caption``, ``detect`` and ``explain`` over a folder: drawn on standard error
when that is a terminal, never where it could change or garble what is printed."""
import io
import os
import re
import struct
import sys
import warnings
from typing import Iterator

import pytest
from PIL import Image

from visattn.cli import main, one_line_warnings
from visattn.errors import VisattnWarning
from visattn.inference.classifier import Classifier
from visattn.terminal_progress import FileProgress

FILES = 5
# Each command's shipped tiny model; all but explain (one image at a time) run batches of 2: three batches.
COMMANDS = {
    "classify": ["--model", "se_resnet20_cifar.fmnist", "--batch-size", "2"],
    "caption": ["--model", "sat_cbam_resnet_scenes.scenes", "--beam-size", "1", "--max-len", "3", "--batch-size", "2"],
    "detect": ["--model", "fcos_se_resnet20_cifar.scenes", "--batch-size", "2"],
    "explain": ["--model", "se_resnet20_cifar.fmnist"],
}


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fake_terminal(monkeypatch, fake: FakeTerminal | None = None) -> FakeTerminal:
    """Standard error as a terminal that can erase a line, whatever TERM the tests run under; of no width unless
    ``fake`` has one (an older tqdm read COLUMNS for it). Set in the test itself: pytest's capture sets sys.stderr
    anew once fixtures are set up."""
    fake = FakeTerminal() if fake is None else fake
    monkeypatch.setattr(sys, "stderr", fake)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("COLUMNS", raising=False)
    return fake


def _folder(tmp_path, files: int = FILES):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(files):
        Image.new("RGB", (32, 32), (40 * i, 90, 200 - 30 * i)).save(folder / f"{i}.png")
    return folder


def _drawn(text: str) -> list[str]:
    """The progress lines drawn, in order: each starts at the row's start, and erasing writes blanks there."""
    return [frame.rstrip(" ") for frame in text.split("\r") if frame.strip(" ")]


def _screen(text: str) -> list[str]:
    """The rows a terminal shows for ``text``: \\r goes back to the row's start, what follows writes over it."""
    assert "\033" not in text  # one row, drawn in place: no cursor moves
    rows, column = [[]], 0
    for char in text:
        if char == "\r":
            column = 0
        elif char == "\n":
            rows.append([])
            column = 0
        else:
            rows[-1][column:column + 1] = [char]
            column += 1
    return ["".join(row).rstrip(" ") for row in rows]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_terminal_is_shown_how_many_files_are_done_and_the_output_stays_as_without_one(
        command, tmp_path, monkeypatch, capsys):
    run = [command, str(_folder(tmp_path)), *COMMANDS[command]]
    if command == "explain":
        run += ["--out-dir", str(tmp_path / "maps")]
    assert main(run) == 0
    plain = capsys.readouterr()
    assert plain.err == "" and len(plain.out.splitlines()) == FILES

    fake = _fake_terminal(monkeypatch)
    assert main(run) == 0
    assert capsys.readouterr().out == plain.out
    drawn = _drawn(fake.getvalue())
    assert [line.rpartition(", ")[0] for line in drawn] == \
        [f"visattn {command}: {done} of {FILES} files ({100 * done // FILES}%)" for done in range(FILES + 1)]
    assert drawn[0].endswith(", ? left") and all(re.search(r", \d\d:\d\d left$", line) for line in drawn[1:])
    assert _screen(fake.getvalue()) == [""]  # the terminal's line left empty

    drawn_before = fake.getvalue()
    assert main([*run, "--no-progress"]) == 0
    assert fake.getvalue() == drawn_before  # nothing more drawn


def test_results_warnings_and_error_lines_on_the_same_terminal_are_whole_lines(tmp_path, monkeypatch):
    terminal = _fake_terminal(monkeypatch)
    monkeypatch.setattr(sys, "stdout", terminal)
    folder = _folder(tmp_path)
    (folder / "2b.png").write_bytes(b"not a png")
    predict = Classifier.predict

    def warning_predict(self, images):
        warnings.warn("a note from the batch", VisattnWarning)
        return predict(self, images)

    monkeypatch.setattr(Classifier, "predict", warning_predict)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["classify", str(folder), *COMMANDS["classify"]]) == 1

    def kind(row: str) -> str:
        if re.fullmatch(r"\S+\.png: (\S+ \d\.\d{3}|error: not a supported image .*)", row):
            return row.split(": ")[0].rsplit("/", 1)[-1]
        return {"warning: a note from the batch": "warning",
                "visattn: 1 of 6 files could not be classified": "summary"}.get(row, row)

    assert [kind(row) for row in _screen(terminal.getvalue())] == [  # one warning a batch, as the model runs
        "warning", "0.png", "1.png", "warning", "2.png", "2b.png", "warning", "3.png", "4.png", "summary", ""]


def test_a_warning_while_a_result_is_printed_leaves_the_line_for_the_result(monkeypatch):
    terminal = _fake_terminal(monkeypatch)
    monkeypatch.setattr(sys, "stdout", terminal)
    with one_line_warnings(), warnings.catch_warnings(), FileProgress("visattn caption") as progress:
        warnings.simplefilter("always")
        for i in progress.track(range(4), total=4, batch_size=2):
            warnings.warn(f"panel {i} has no words", VisattnWarning)  # as its PNG is written
            print(f"{i}.png: a caption")
    assert _screen(terminal.getvalue()) == [
        row for i in range(4) for row in (f"warning: panel {i} has no words", f"{i}.png: a caption")] + [""]


def test_ctrl_c_leaves_the_terminals_line_cleared_for_its_one_line(tmp_path, monkeypatch):
    terminal = _fake_terminal(monkeypatch)
    predict, calls = Classifier.predict, []

    def interrupted_predict(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return predict(self, images)

    monkeypatch.setattr(Classifier, "predict", interrupted_predict)
    assert main(["classify", str(_folder(tmp_path)), *COMMANDS["classify"]]) == 130
    assert _screen(terminal.getvalue()) == ["visattn: interrupted", ""]  # the progress line erased first
    assert _drawn(terminal.getvalue())[-2].startswith("visattn classify: 2 of 5 files (40%), ")


def test_the_time_left_is_estimated_from_the_rate_so_far(monkeypatch):
    """Files come a batch at a time: the rate is the average since the start, not that of the last gap (0 s within a
    batch, the batch's time before its first file)."""
    terminal = _fake_terminal(monkeypatch)
    now = [0.0]
    monkeypatch.setattr("tqdm.std.time", lambda: now[0])  # tqdm's clock, taken when a line starts

    def batches(total: int, batch_size: int, seconds: float) -> Iterator[int]:
        for i in range(total):
            if i % batch_size == 0:
                now[0] += seconds
            yield i

    with FileProgress("visattn classify") as progress:
        list(progress.track(batches(3000, 32, 2.0), total=3000, batch_size=32))  # 16 files a second
    drawn = _drawn(terminal.getvalue())
    assert drawn[0] == "visattn classify: 0 of 3000 files (0%), ? left"
    assert drawn[32] == "visattn classify: 32 of 3000 files (1%), 03:05 left"  # 2968 / 16 = 185.5 s
    assert drawn[544] == "visattn classify: 544 of 3000 files (18%), 02:33 left"
    assert drawn[2976] == "visattn classify: 2976 of 3000 files (99%), 00:01 left"
    assert drawn[-1] == "visattn classify: 3000 of 3000 files (100%), 00:00 left"
    with FileProgress("visattn explain") as progress:
        list(progress.track(batches(3, 1, 3000.0), total=3, batch_size=1))
    assert _drawn(terminal.getvalue())[-3] == "visattn explain: 1 of 3 files (33%), 1:40:00 left"


def test_the_line_is_cut_to_the_terminals_width_as_it_changes(monkeypatch):
    termios, fcntl = pytest.importorskip("termios"), pytest.importorskip("fcntl")

    reader, writer = os.openpty()

    def resize(columns: int) -> None:
        fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))

    class SizedTerminal(FakeTerminal):
        def fileno(self) -> int:  # the pty's size, the text kept to read
            return writer

    terminal = _fake_terminal(monkeypatch, SizedTerminal())
    resize(40)
    try:
        with FileProgress("visattn " + "x" * 200) as progress:
            for i in progress.track(range(4), total=4, batch_size=1):
                if i == 2:
                    resize(30)
    finally:
        os.close(reader)
        os.close(writer)
    widths = [len(line) for line in _drawn(terminal.getvalue())]
    assert len(widths) == 5 and all(39 <= width <= 40 for width in widths[:3])  # a line filling the row may wrap
    assert all(29 <= width <= 30 for width in widths[3:])


def _stdout_a_pipe(monkeypatch) -> None:
    read, write = os.pipe()
    os.close(read)
    monkeypatch.setattr(sys, "stdout", os.fdopen(write, "w"))


@pytest.mark.parametrize("case", ["not enabled", "TERM=dumb", "stdout a pipe", "one batch", "no terminal"])
def test_no_line_is_drawn_where_it_could_garble_the_output(case, monkeypatch):
    terminal = _fake_terminal(monkeypatch)
    total, batch_size = (2, 2) if case == "one batch" else (6, 2)
    if case == "TERM=dumb":
        monkeypatch.setenv("TERM", "dumb")
    if case == "stdout a pipe":  # what reads it (tee, less, grep) may write to the terminal at any moment
        _stdout_a_pipe(monkeypatch)
    if case == "no terminal":
        monkeypatch.setattr(terminal, "isatty", lambda: False)
    try:
        with FileProgress("visattn classify", enabled=case != "not enabled") as progress:
            assert list(progress.track(range(total), total=total, batch_size=batch_size)) == list(range(total))
    finally:
        if case == "stdout a pipe":
            sys.stdout.close()
    assert terminal.getvalue() == ""
