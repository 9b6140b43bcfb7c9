"""The progress line of ``classify``, ``caption``, ``detect`` and ``explain`` over a folder: drawn on standard error
when that is a terminal, never where it could change or garble what is printed."""
import io
import os
import re
import sys
import warnings

import pytest
from PIL import Image

from visattn.cli import main, one_line_warnings
from visattn.errors import VisattnWarning
from visattn.inference.classifier import Classifier
from visattn.terminal_progress import CLEAR_LINE, FileProgress

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


def _fake_terminal(monkeypatch) -> FakeTerminal:
    """Standard error as a terminal that can erase a line, whatever TERM the tests run under. Set in the test itself:
    pytest's capture sets sys.stderr anew once fixtures are set up."""
    fake = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", fake)
    monkeypatch.setenv("TERM", "xterm")
    return fake


def _folder(tmp_path, files: int = FILES):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(files):
        Image.new("RGB", (32, 32), (40 * i, 90, 200 - 30 * i)).save(folder / f"{i}.png")
    return folder


def _drawn(text: str) -> list[str]:
    """The progress lines drawn, in order (what is between the erasures)."""
    return [frame for frame in text.split(CLEAR_LINE) if frame]


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
    assert [re.sub(r", \d+ s left$", "", line) for line in drawn] == \
        [f"visattn {command}: {done} of {FILES} files ({100 * done // FILES}%)" for done in range(FILES + 1)]
    assert all(line.endswith(" s left") for line in drawn[1:-1])
    assert fake.getvalue().endswith(CLEAR_LINE)  # the terminal's line left empty

    assert main([*run, "--no-progress"]) == 0
    assert fake.getvalue().endswith(CLEAR_LINE) and _drawn(fake.getvalue()) == drawn  # nothing more drawn


def _screen(text: str) -> list[str]:
    """The rows a terminal shows for ``text``: CLEAR_LINE erases the row the cursor is on."""
    rows = [""]
    for piece in re.split(f"({re.escape(CLEAR_LINE)}|\n)", text):
        if piece == CLEAR_LINE:
            rows[-1] = ""
        elif piece == "\n":
            rows.append("")
        else:
            rows[-1] += piece
    return rows


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
    before, _, last = terminal.getvalue().rpartition(CLEAR_LINE)
    assert last == "visattn: interrupted\n"  # on a line of its own, the progress line erased first
    assert _drawn(before)[-1].startswith("visattn classify: 2 of 5 files (40%), ")


def test_the_time_left_is_estimated_from_the_rate_so_far(monkeypatch):
    terminal = _fake_terminal(monkeypatch)
    now = [0.0]
    with FileProgress("visattn classify", clock=lambda: now[0]) as progress:
        for _ in progress.track(range(3000), total=3000, batch_size=32):
            now[0] += 1 / 16  # 16 files a second
    drawn = _drawn(terminal.getvalue())
    assert drawn[1] == "visattn classify: 1 of 3000 files (0%), 3 min 08 s left"  # 2999 / 16 = 187.4 s
    assert drawn[544] == "visattn classify: 544 of 3000 files (18%), 2 min 34 s left"
    assert drawn[2990] == "visattn classify: 2990 of 3000 files (99%), 1 s left"
    assert drawn[-1] == "visattn classify: 3000 of 3000 files (100%)"
    with FileProgress("visattn explain", clock=lambda: now[0]) as progress:
        for _ in progress.track(range(3), total=3, batch_size=1):
            now[0] += 3000.0
    assert _drawn(terminal.getvalue())[-3] == "visattn explain: 1 of 3 files (33%), 1 h 40 min left"


def test_a_line_too_wide_for_the_terminal_is_cut_to_fit_on_one_row(monkeypatch):
    terminal = _fake_terminal(monkeypatch)
    with FileProgress("visattn " + "x" * 200, clock=lambda: 0.0) as progress:
        list(progress.track(range(4), total=4, batch_size=1))
    assert {len(line) for line in _drawn(terminal.getvalue())} == {79}  # the fake terminal's 80 columns, less one


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
