"""Config files read as LightningCLI reads them, with the checks it leaves to a traceback, a silent default
or a hang (a regular file, UTF-8, indented with spaces, each key once, sections that hold settings, no environment
variables), and the task and data classes a config names.

jsonargparse reads a UTF-8 byte order mark, CRLF line ends, anchors and ``<<:`` merge keys as YAML means them; it
expands no environment variable (``$HOME``) in a setting, so visattn refuses one rather than write into a folder named
``$HOME``. A second ``--config`` replaces a list the first gave (``trainer.callbacks:``); ``callbacks+:`` adds to it.
"""
import importlib
import re
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

import lightning.pytorch as pl

from ..errors import ConfigError


def _imported(class_path: Optional[str]) -> Optional[type]:
    if not class_path:
        return None
    if "." not in class_path:  # a short name, which LightningCLI resolves among the classes imported
        bases = (pl.LightningModule, pl.LightningDataModule)
        return next((cls for base in bases for cls in _subclasses(base) if cls.__name__ == class_path), None)
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):  # ValueError: an empty module name (`.ImageClassifier`)
        return None  # LightningCLI reports the bad class_path itself


def config_task(class_path: str) -> Optional[type]:
    """The task class a config's ``model: class_path`` names, in full or by class name alone (None: not one)."""
    for module in TASK_MODULES:
        importlib.import_module(module)
    return _imported(class_path)


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


# The modules of the tasks and data modules a config may name by class name alone (ImageClassifier), as
# LightningCLI resolves such names among the classes imported.
TASK_MODULES = ("visattn.tasks.classification", "visattn.tasks.captioning", "visattn.tasks.detection",
                "visattn.data.datamodules", "visattn.data.caption_datamodules", "visattn.data.detection")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping, as YAML 1.2 does (PyYAML and jsonargparse
    keep the last: a second ``model:`` block trained another model, the first block's settings dropped unsaid)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[tuple[str, Any], int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # keys after a << merge override the merged ones, as YAML means them to
            key = self.construct_object(key_node)
            if (type(key).__name__, key) in first_line:
                raise yaml.MarkedYAMLError(problem=f"key {key!r} given twice, first at line "
                                                   f"{first_line[type(key).__name__, key]}, again",
                                           problem_mark=key_node.start_mark)
            first_line[type(key).__name__, key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _config_model_class(path: Path) -> Optional[str]:
    """The ``model: class_path`` of the config file ``path`` (see :func:`read_config`)."""
    settings = read_config(path)
    model = settings.get("model") if settings is not None else None
    return model.get("class_path") if isinstance(model, dict) else None


def _read_yaml(path: Path, *, flag: str) -> Any:
    """The YAML file ``path`` that ``flag`` gives: a regular file, UTF-8, each key once, no environment variable in a
    setting; one line naming ``flag`` and the file where it is not. OSError where it cannot be read."""
    if path.exists() and not path.is_file():  # a pipe (a shell's <(...)) reads once, for visattn, or never ends
        raise ConfigError(f"{flag} {path}: not a regular file (a pipe, socket or device), which LightningCLI cannot "
                          "read after visattn; save the config to a file and give its path")
    try:
        settings = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:  # jsonargparse's own read ends in a traceback
        raise ConfigError(f"{flag} {path}: not UTF-8 text; give a YAML config saved as UTF-8") from None
    except yaml.YAMLError as err:  # LightningCLI names the first --config, whichever file it is, and no line
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or "unreadable"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        fix = "indent it with spaces, which YAML takes (not tabs)" if "'\\t'" in problem else "mend the file"
        raise ConfigError(f"{flag} {path}: not valid YAML ({problem}{where}); {fix}") from None
    _refuse_environment_variables(settings, path, flag)
    return settings


# $NAME or ${NAME}, as a shell would expand it
_ENVIRONMENT_VARIABLE = re.compile(r"\$\{?[A-Za-z_]\w*\}?")


def _refuse_environment_variables(value: Any, path: Path, flag: str, key: str = "") -> None:
    """A setting naming an environment variable (``default_root_dir: $SCRATCH/runs``), which jsonargparse keeps as
    written: the run wrote into a folder named ``$SCRATCH`` in the working folder."""
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_environment_variables(item, path, flag, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_environment_variables(item, path, flag, f"{key}[{index}]")
    elif isinstance(value, str) and _ENVIRONMENT_VARIABLE.search(value):
        raise ConfigError(f"{flag} {path}: {key} {value}: a config's settings expand no environment variable; write "
                          "the value out in the file, or give the setting on the command line, where the shell "
                          "expands it")


def _check_section_files(argv: list[str]) -> None:
    """The files given to ``--trainer``, ``--data`` or ``--model`` (each a section's settings) read as ``--config``
    files do: jsonargparse kept the last of a key given twice, the first one's setting dropped unsaid."""
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--") else [arg])]
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--trainer", "--data", "--model") and Path(value).exists() and not Path(value).is_dir():
            try:
                _read_yaml(Path(value), flag=flag)
            except OSError:
                pass  # jsonargparse names a file it cannot read


def read_config(path: Path) -> Optional[dict[str, Any]]:
    """The settings of the config file ``path``, after the checks LightningCLI leaves to a traceback, a silent
    default or a hang: a regular file, UTF-8, YAML with each key once, settings under ``trainer:``. None where it
    cannot be read (LightningCLI names that)."""
    try:
        settings = _read_yaml(path, flag="--config")
    except OSError:
        return None  # LightningCLI reports unreadable configs with their own message
    if not isinstance(settings, dict):  # jsonargparse says only "Unexpected config:"
        what = "is empty" if settings is None else f"holds a YAML {type(settings).__name__}, not settings"
        raise ConfigError(f"--config {path} {what}; a config maps model:, data: and trainer: to their settings, "
                          "as the files in configs/ do")
    trainer = settings.get("trainer")
    if trainer is not None and not isinstance(trainer, dict):  # LightningCLI trained with its defaults, unsaid
        raise ConfigError(f"--config {path}: trainer: holds a YAML {type(trainer).__name__}, not settings; give it "
                          "its settings (max_epochs: 2, ...), as the files in configs/ do")
    for section in ("model", "data"):  # jsonargparse blamed the first --config, whichever file held it
        value = settings.get(section)
        if value is not None and not isinstance(value, (dict, str)):
            raise ConfigError(f"--config {path}: {section}: holds a YAML {type(value).__name__}, not settings; give "
                              "it a class_path and its init_args, as the files in configs/ do")
        # a file of the section's settings, which jsonargparse reads from beside the config: each key once too
        nested = next((file for file in (path.parent / value, Path(value)) if file.is_file()), None) \
            if isinstance(value, str) and value.endswith((".yaml", ".yml", ".json")) else None
        if nested is not None:
            _read_yaml(nested, flag=f"--config {path}: {section}:")
    return settings
