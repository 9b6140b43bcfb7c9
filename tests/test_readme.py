"""The README against the code: its commands parse, and the configs, Python names and tests it names exist.

Each README item is a test id of its own, so a drifted line is named by the test that fails. Nothing is trained
or run: ``visattn`` commands go through visattn's own argparse parser (LightningCLI's commands through their
config's classes' signatures) and ``python benchmarks/SCRIPT.py`` commands through the script's parser, stopped
as soon as it has parsed.
"""
import argparse
import importlib
import inspect
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from visattn.cli import LIGHTNING_COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "benchmarks"

# A plausible value for each placeholder the README writes in capitals.
PLACEHOLDERS = {
    "CONFIG": "configs/classification/vit_fmnist.yaml",
    "CKPT": "last.ckpt",
    "FILE": "photo.png",
    "FILES": "photo.png",
    "ARCH.TAG": "se_resnet20_cifar.fmnist",
    "ARCH": "se_resnet20_cifar",
    "TAG": "mine",
    "PHOTOS/": "photos/",
    "DIR": "out/",
    "COMMAND": "evaluate",
    "PATTERN": "cbam_*",
    "N": "2",
    "G": "2",
    "L": "layer3",
    "H": "0",
    "C": "0",
}
_PLACEHOLDER = re.compile(r"ARCH\.TAG|\b[A-Z][A-Z0-9_]*\b/?")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
_TEST_REF = re.compile(r"^(?:(?:tests/)?(test_\w+\.py))?(?:::(test_\w+)(?:\[[^\]]*\])?)?$")


def code_blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def code_spans(text: str) -> list[str]:
    """The inline code spans outside fenced blocks, as Markdown reads them (a span opened by N backticks closes at
    the next run of N), each on one line; ``\\|`` (a pipe escaped in a table) as ``|``."""
    return [span for span, _ in _spans_and_after(text)]


def _spans_and_after(text: str) -> list[tuple[str, str]]:
    """Each code span with the prose that follows it, up to the next span."""
    prose = _FENCE.sub("", text)
    matches = list(re.finditer(r"(`+)(.+?)(?<!`)\1(?!`)", prose, re.S))
    ends = [match.start() for match in matches[1:]] + [len(prose)]
    return [(" ".join(match.group(2).replace("\\|", "|").split()), prose[match.end():end])
            for match, end in zip(matches, ends)]


def block_lines(body: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    lines = [re.split(r"\s#\s", " " + line, maxsplit=1)[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line]


def visattn_part(line: str) -> list[str]:
    """The words of ``line`` from ``visattn`` on (after ``OMP_NUM_THREADS=1``, ``srun``, ``torchrun ... -m``),
    up to a pipe; [] when it runs no visattn."""
    words = shlex.split(line.split(" | ")[0])
    return words[words.index("visattn"):] if "visattn" in words else []


def readme_commands(text: str) -> list[tuple[str, bool]]:
    """Each ``visattn`` command as its words joined, with whether it is whole (a code block's line) or may be part
    of one (an inline span, such as `visattn detect --attention-out DIR`)."""
    found = [(" ".join(visattn_part(line)), True) for body in code_blocks(text, "bash") for line in block_lines(body)]
    found += [(" ".join(visattn_part(span)), False) for span in code_spans(text)
              if re.match(r"(\w+=\S+ )*(srun )?visattn [a-z-]", span) and not re.search(r"visattn [\w-]+:", span)]
    return list(dict.fromkeys((command, whole) for command, whole in found if command))


def variants(command: str) -> list[list[str]]:
    """``command``'s words with placeholders filled in, once without its ``[...]`` optional parts, once with all,
    once with each; ``a|b|c`` once for each alternative."""
    optional = re.findall(r"\[([^\[\]]+)\]", command)
    choices = [[]] + [[i] for i in range(len(optional))] + [list(range(len(optional)))]
    results = []
    for chosen in choices:
        kept = iter(range(len(optional)))
        line = re.sub(r"\[([^\[\]]+)\]", lambda m: m.group(1) if next(kept) in chosen else "", command)
        words = [_filled(word) for word in line.split() if word != "..."]
        for at, word in enumerate(words):
            alternatives = word.split("|") if "|" in word else []
            results += [words[:at] + [choice] + words[at + 1:] for choice in alternatives[1:]]
        results.append([word.split("|")[0] for word in words])
    return [list(words) for words in dict.fromkeys(tuple(words) for words in results)]


def _filled(word: str) -> str:
    def value(match: re.Match) -> str:
        if match.group() not in PLACEHOLDERS:
            raise AssertionError(f"placeholder {match.group()!r} in {word!r}: give it a value in PLACEHOLDERS")
        return PLACEHOLDERS[match.group()]
    return _PLACEHOLDER.sub(value, word)


def relaxed(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with nothing required, for an inline span that names part of a command."""
    for action in parser._actions:
        action.required = False
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                relaxed(sub)
        elif not action.option_strings and action.nargs == "+":
            action.nargs = "*"
    for group in parser._mutually_exclusive_groups:
        group.required = False
    return parser


def check_visattn_command(words: list[str], *, whole: bool = True) -> None:
    """``visattn ...`` parses as visattn would parse it; raises AssertionError naming the problem otherwise."""
    assert words[0] == "visattn", words
    if words[1] in LIGHTNING_COMMANDS:
        return check_lightning_command(words[1:])
    parser = build_parser() if whole else relaxed(build_parser())
    try:
        parser.parse_args(words[1:])
    except SystemExit as stop:  # --help and --version print and exit 0
        if stop.code != 0 or not {"--help", "-h", "--version"} & set(words):
            raise AssertionError(f"{' '.join(words)}: exit {stop.code}") from None


def check_lightning_command(words: list[str]) -> None:
    """``fit|validate|test|predict [--key value ...]``: a shipped ``--config`` exists, and every ``--section.key``
    names a parameter its class takes (the Trainer's, the config's model and data classes'), as LightningCLI's
    parser would check them."""
    options = _options(words[1:])
    config = {}
    for path in options.get("config", []):
        assert (ROOT / path).is_file(), f"--config {path}: no such file"
        config = yaml.safe_load((ROOT / path).read_text())
    fit_parameters = set(inspect.signature(getattr(_trainer_class(), words[0])).parameters)
    top = (fit_parameters - {"self", "model", "train_dataloaders", "val_dataloaders", "dataloaders", "datamodule"}
           | {"config", "print_config", "seed_everything", "help", "trainer", "model", "data"})
    for key in options:
        section, _, rest = key.partition(".")
        assert section in top, f"{' '.join(words)}: --{key}: {words[0]} takes no --{section}"
        name = re.split(r"[.+=]", rest.removeprefix("init_args."))[0]
        if not rest or name in ("help", "class_path"):
            continue
        assert section == "trainer" or section in config, f"--{key}: no --config names the {section} class"
        owner = _trainer_class() if section == "trainer" else _imported(config[section]["class_path"])
        assert name in inspect.signature(owner).parameters, f"--{key}: {owner.__name__} takes no {name!r}"


def _options(words: list[str]) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for at, word in enumerate(words):
        if word.startswith("--"):
            key, equals, value = word[2:].partition("=")
            given = value if equals else (words[at + 1] if at + 1 < len(words) else "")
            options.setdefault(key, []).append(given)
    return options


def _trainer_class() -> type:
    from lightning.pytorch import Trainer
    return Trainer


def _imported(dotted: str):
    """The module or attribute ``dotted`` names, imported."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def benchmark_commands(text: str) -> list[str]:
    """Each ``python benchmarks/SCRIPT.py ARGS`` command: in code blocks and spans, a table cell's ``SCRIPT.py ARGS``
    (the performance table), and the argument spans of a table whose header names the script (``same, `--x`` adds
    to the row above's)."""
    found = [line for body in code_blocks(text, "bash") for line in block_lines(body)]
    for span in code_spans(text):
        script = span.split(" ")[0]
        found.append(f"python benchmarks/{span}" if re.fullmatch(r"\w+\.py", script) and (BENCHMARKS / script).is_file()
                     else span)
    found += _table_benchmark_commands(text)
    # a command with `...` elides its arguments ("`python benchmarks/pointing_baseline.py ...`" over a table)
    commands = [line for line in found if re.match(r"python benchmarks/\w+\.py( |$)", line) and "..." not in line]
    return list(dict.fromkeys(commands))


def _table_benchmark_commands(text: str) -> list[str]:
    commands = []
    for table in re.findall(r"(?:^\|.*\n)+", text, re.M):
        header, *rows = table.splitlines()
        script = re.search(r"`(python benchmarks/\w+\.py) \.\.\.`", header.rsplit("|", 2)[-2])
        previous = ""
        for row in rows[1:] if script else []:
            cell = row.rsplit("|", 2)[-2].strip()
            arguments = " ".join(span for span in code_spans(cell) if span.startswith("--"))
            previous = f"{previous} {arguments}" if cell.startswith("same") else arguments
            commands.append(f"{script.group(1)} {previous.strip()}")
    return commands


class _Parsed(Exception):
    """Raised by the patched ``parse_args`` once a benchmark script's arguments have parsed."""


def check_benchmark_command(command: str, monkeypatch, capsys) -> None:
    script, *arguments = _filled(command).split()[1:]
    assert (ROOT / script).is_file(), f"{script}: no such script"
    parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(parser, *args, **kwargs):
        parse_args(parser, *args, **kwargs)
        raise _Parsed

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [script, *arguments])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    except _Parsed:
        return
    except SystemExit as stop:
        raise AssertionError(f"{command}: exit {stop.code}: {capsys.readouterr().err.strip()}") from None
    raise AssertionError(f"{command}: the script finished without parsing arguments")


def config_paths(text: str) -> list[str]:
    """Each ``configs/TASK/NAME.yaml`` path, and each config named alone in a span (``vit_fmnist_stage2.yaml``) as
    the shipped one of that name; not the ``config.yaml`` LightningCLI writes into a run's folder."""
    paths = re.findall(r"\bconfigs/[\w/.-]+\.yaml\b", text)
    shipped = {path.name: str(path.relative_to(ROOT)) for path in ROOT.glob("configs/*/*.yaml")}
    names = [span for span in code_spans(text) if re.fullmatch(r"\w+\.yaml", span) and span != "config.yaml"]
    paths += [shipped.get(name, f"configs/*/{name}") for name in names]
    return list(dict.fromkeys(paths))


def python_names(text: str) -> list[str]:
    """Each ``visattn.a.b`` a code span starts with (a call's arguments dropped), but for placeholders
    (``visattn.tasks.MODULE.CLASS``)."""
    found = [match.group() for span in code_spans(text) for match in [re.match(r"visattn(?:\.\w+)+", span)] if match]
    snippets = "\n".join(code_blocks(text, "python"))
    found += re.findall(r"\bvisattn(?:\.\w+)+", snippets)
    for module, names in re.findall(r"^from (visattn[\w.]*) import \(?([\w, ]+)", snippets, re.M):
        found += [f"{module}.{name.strip()}" for name in names.split(",") if name.strip()]
    return list(dict.fromkeys(name for name in found if not re.search(r"\.[A-Z]+\b", name)))


def readme_test_references(text: str) -> list[str]:
    """Each ``test_file.py::test_name`` a code span gives, a ``::other_test`` after it naming the last file named,
    each ``test_file.py`` named alone (as ``test_file.py::``), and each parametrize id listed after a test
    (```::test_name` (`id_a`, `id_b`)``, as ``test_file.py::test_name[id_a]``)."""
    references, current, listing = [], None, None
    for span, after in _spans_and_after(text):
        match = _TEST_REF.match(span)
        if match and any(match.groups()):
            current = match.group(1) or current
            listing = f"{current}::{match.group(2) or ''}"
            references.append(listing)
        elif listing and re.fullmatch(r"\w+", span):
            references.append(f"{listing}[{span}]")
        if not re.fullmatch(r"\s*\(?|,\s*", after):  # the list of ids goes on only as `(`a`, `b`, ...`
            listing = None
    return list(dict.fromkeys(references))


def check_test_reference(reference: str) -> None:
    """The file is in tests/, defines the test, and writes each id given as a string (``"id": (...)``,
    ``pytest.param(..., id="id")``)."""
    file, _, test = reference.partition("::")
    name, _, given = test.rstrip("]").partition("[")
    path = ROOT / "tests" / file
    assert path.is_file(), f"{reference}: no tests/{file}"
    source = path.read_text()
    assert not name or re.search(rf"^\s*(?:async )?def {name}\(", source, re.M), f"{reference}: no def {name} in it"
    assert not given or re.search(rf"[\"']{given}[\"']", source), f"{reference}: no id {given!r} in {file}"


def check_config_path(path: str) -> None:
    assert (ROOT / path).is_file(), f"{path}: no such config"


def check_python_name(name: str) -> None:
    try:
        _imported(name)
    except (ImportError, AttributeError) as err:
        raise AssertionError(f"{name}: {err}") from None


TEXT = README.read_text()


@pytest.mark.parametrize("command,whole", [pytest.param(command, whole, id=command if whole else f"inline: {command}")
                                           for command, whole in readme_commands(TEXT)])
def test_a_readme_visattn_command_parses(command, whole):
    for words in variants(command):
        check_visattn_command(words, whole=whole)


@pytest.mark.parametrize("command", [pytest.param(command, id=command) for command in benchmark_commands(TEXT)])
def test_a_readme_benchmark_command_parses_with_its_scripts_parser(command, monkeypatch, capsys):
    check_benchmark_command(command, monkeypatch, capsys)


@pytest.mark.parametrize("path", config_paths(TEXT))
def test_a_readme_config_path_exists(path):
    check_config_path(path)


@pytest.mark.parametrize("name", python_names(TEXT))
def test_a_readme_python_name_imports(name):
    check_python_name(name)


@pytest.mark.parametrize("reference", readme_test_references(TEXT))
def test_a_readme_test_reference_names_a_test(reference):
    check_test_reference(reference)


BROKEN_ITEMS = [
    (check_visattn_command, "visattn evaluate --modle ARCH.TAG --dataset fashion-mnist"),  # a misspelt option
    (check_visattn_command, "visattn evalute --model ARCH.TAG --dataset fashion-mnist"),  # a misspelt command
    (check_visattn_command, "visattn classify photos/ --model ARCH.TAG --topk three"),  # a value it refuses
    (check_visattn_command, "visattn detect scenes/ --out drawn/"),  # a whole command without its model
    (check_visattn_command, "visattn models PATTERNS"),  # a placeholder given no value
    (check_visattn_command, "visattn fit --config configs/classification/no_such.yaml"),
    (check_visattn_command, "visattn fit --config CONFIG --trainer.max_epoch 20"),
    (check_visattn_command, "visattn fit --config CONFIG --model.init_args.freeze_backbon true"),
    (check_visattn_command, "visattn fit --config CONFIG --data.init_args.rot x/"),
    (check_visattn_command, "visattn fit --config CONFIG --optimiser.lr 0.1"),
    (lambda command: check_visattn_command(command, whole=False), "visattn detect --attention-ou DIR"),
    (check_benchmark_command, "python benchmarks/vit_vs_timm.py --treads 2"),
    (check_benchmark_command, "python benchmarks/no_such.py"),
    (check_config_path, "configs/classification/no_such.yaml"),
    (check_python_name, "visattn.no_such_name"),
    (check_python_name, "visattn.data.no_such_module.Name"),
    (check_test_reference, "test_vit.py::test_no_such_test"),
    (check_test_reference, "test_no_such_file.py::test_models"),
    (check_test_reference, "test_reliability_cli.py::test_user_mistake_is_one_line_and_exit_code_2[no_such_case]"),
]


@pytest.mark.parametrize("check,item", [pytest.param(check, item, id=item) for check, item in BROKEN_ITEMS])
def test_each_check_fails_on_a_broken_readme_item(check, item, monkeypatch, capsys):
    with pytest.raises(AssertionError):
        if check is check_benchmark_command:
            check(item, monkeypatch, capsys)
        elif "visattn " in item:
            for words in variants(item):
                check(words)
        else:
            check(item)


def test_the_readme_is_read_as_markdown_reads_it():
    text = ("```bash\nvisattn fit --config CONFIG \\\n    --trainer.max_epochs 2   # a comment\n  # a comment line\n"
            "OMP_NUM_THREADS=1 visattn classify x.png --model ARCH.TAG [--json] | head\n```\n"
            "Then `visattn evaluate --img-size 30`, ``a `visattn caption` quote``, `visattn classify: 3 files`,\n"
            "`test_vit.py::test_a[x-1]`, `::test_b` (`case_a`,\n`case_b`) `case_c`, `test_models.py`,\n"
            "`visattn.create_model(\"x\")`, `python\n"
            "benchmarks/beam_search.py --threads 1`, `python benchmarks/beam_search.py ...`, "
            "`vit_vs_timm.py --threads 2`.\n")
    assert readme_commands(text) == [("visattn fit --config CONFIG --trainer.max_epochs 2", True),
                                     ("visattn classify x.png --model ARCH.TAG [--json]", True),
                                     ("visattn evaluate --img-size 30", False)]
    assert readme_test_references(text) == ["test_vit.py::test_a", "test_vit.py::test_b", "test_vit.py::test_b[case_a]",
                                            "test_vit.py::test_b[case_b]", "test_models.py::"]
    assert python_names(text) == ["visattn.create_model"]
    assert benchmark_commands(text) == ["python benchmarks/beam_search.py --threads 1",
                                        "python benchmarks/vit_vs_timm.py --threads 2"]


def test_placeholders_are_filled_and_each_optional_part_and_alternative_is_tried():
    model = ["visattn", "classify", "x.png", "--model", PLACEHOLDERS["ARCH.TAG"]]
    assert variants("visattn classify x.png --model ARCH.TAG [--json] [--topk 3]") == [
        model, model + ["--json"], model + ["--topk", "3"], model + ["--json", "--topk", "3"]]
    assert sorted(variants("visattn explain a.png --method gradcam|rollout")) == [
        ["visattn", "explain", "a.png", "--method", "gradcam"], ["visattn", "explain", "a.png", "--method", "rollout"]]
