"""Lightning's and jsonargparse's exceptions as one-line ConfigErrors that name the setting and the fix: a
section's class that could not be built, trainer settings Lightning refuses, values of the wrong type, unknown options
and classes, and a command given no config.
"""
import ast
import difflib
import inspect
import json
import os
import re
import traceback
from typing import Any, Optional

import lightning.pytorch as pl
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

from ..errors import ConfigError, VisattnError, keyword_names
from .cli_arguments import _typed_values
from .config_files import _imported


# What the config's model, data and trainer.callbacks sections build.
_SECTION_CLASSES = (pl.LightningModule, pl.LightningDataModule, Callback, Logger)


def _building_error(err: Exception, model: Any) -> ConfigError:
    """One line for ``err``, raised while jsonargparse built the config's classes: the section whose class
    raised it, with that class's own message (not jsonargparse's list of the forms a section may take)."""
    built, cause = _being_built(err)
    message = _first_line(cause or err)
    problem = _class_problem(err)
    if built is None and problem is not None:  # one of a list of loggers or callbacks: its own complaint
        built_class, message = _imported(problem[0]) or type(None), problem[1]
    else:
        built_class = type(built)
    name = getattr(built_class, "__name__", "?")
    if isinstance(built, pl.LightningModule):
        return _model_error(built, message, model)
    if issubclass(built_class, Callback):
        return ConfigError(f"trainer.callbacks: {name}: {message}; fix its init_args in the config's trainer.callbacks")
    if issubclass(built_class, pl.LightningDataModule):
        return ConfigError(f"data: {name} could not be built ({message}); check data.init_args")
    if issubclass(built_class, Logger):  # TensorBoardLogger without tensorboard installed, WandbLogger without wandb
        return ConfigError(f"trainer.logger: {name} could not be built ({message}); install what it needs, fix its "
                           "init_args, or keep the configs' CSVLogger")
    return ConfigError(f"config: {message}; check the {_section_in(message)}")


def _section_in(message: str) -> str:
    """The config section a building error's own words point to (a Timer's or Trainer's name): the model and data
    sections unless they name a trainer part."""
    for word, section in (("Callback", "trainer.callbacks section"), ("Logger", "trainer.logger section"),
                          ("Trainer", "trainer section")):
        if word in message:
            return section
    return "model and data sections"


def _being_built(err: BaseException) -> tuple[Any, Optional[BaseException]]:
    """The model, data module or callback whose ``__init__`` raised ``err`` or an error it wraps, with that
    error; (None, None) when none did (jsonargparse's wrapping keeps the original as the context)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for frame, _ in traceback.walk_tb(err.__traceback__):
            built = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
            if isinstance(built, _SECTION_CLASSES):
                return built, err
        err = err.__cause__ or err.__context__
    return None, None


def _named_in_model_kwargs(err: VisattnError, model: Any) -> VisattnError:
    """A builder's refusal of one of the config's ``model_kwargs`` (``score_thresh=1.5: ...``) named as the
    config's key, ``model.init_args.model_kwargs.score_thresh``; any other error as it is."""
    kwargs = (getattr(model, "init_args", None) or {}).get("model_kwargs") or {}
    key, equals, _ = str(err).partition("=")
    if not (isinstance(err, ConfigError) and equals and isinstance(kwargs, dict) and key in kwargs):
        return err
    return ConfigError(f"model.init_args.model_kwargs.{err}")


def _model_error(task: pl.LightningModule, message: str, model: Any) -> ConfigError:
    init_args = getattr(model, "init_args", None) or {}
    name, kwargs = init_args.get("model_name"), init_args.get("model_kwargs")
    if kwargs:  # what a config passes on to the architecture unchecked
        return ConfigError(f"model.init_args.model_kwargs {json.dumps(kwargs, default=str)}: {name} could not be "
                           f"built with them ({message}); check their names and values")
    return ConfigError(f"model: {type(task).__name__} {name} could not be built ({message}); check model.init_args")


def _trainer_error(err: MisconfigurationException, config: dict[str, Any]) -> ConfigError:
    """Lightning's complaint about the trainer settings, on one line naming the setting."""
    message = _first_line(err).rstrip(".")
    if "backend found" in message:  # "No supported gpu backend found!" names no setting
        accelerator = config.get("accelerator")
        return ConfigError(f"trainer.accelerator {accelerator}: this machine has no {accelerator} device; "
                           "use --trainer.accelerator auto or cpu")
    return ConfigError(f"trainer: {message}; fix it in the config's trainer section or with --trainer.KEY VALUE")


def _late_trainer_error(err: ValueError) -> Optional[ConfigError]:
    """One line for the trainer settings Lightning checks only once it has the data (``val_check_interval``
    against the number of training batches); None for any other ValueError, which keeps its traceback."""
    setting = re.search(r"`(\w+)`", str(err))
    raised_in = traceback.extract_tb(err.__traceback__)[-1].filename if err.__traceback__ else ""
    if setting is None or setting[1] not in _TRAINER_SETTINGS or f"{os.sep}lightning{os.sep}" not in raised_in:
        return None
    return ConfigError(f"trainer.{setting[1]}: {' '.join(str(err).split())}")


_TRAINER_SETTINGS = frozenset(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}


def _unknown_trainer_class(err: Exception) -> Optional[ConfigError]:
    """One line for a callback or logger class that jsonargparse cannot import (``--trainer.callbacks+=ModelChekpoint``:
    "Expected a path but ... Expected a dot import path string"), with Lightning's nearest; None for other errors."""
    found = re.search(r'Parser key "trainer\.(callbacks|logger)":.*Expected a dot import path string: ([\w.]+)',
                      str(err), re.S)
    if found is None:
        return None
    kind, module = ("callback", pl.callbacks) if found[1] == "callbacks" else ("logger", pl.loggers)
    close = difflib.get_close_matches(found[2].rpartition(".")[2], module.__all__, n=1, cutoff=0.6)
    meant = f"did you mean {close[0]}? " if close else ""
    return ConfigError(f"trainer.{found[1]}: no {kind} class named {found[2]}; {meant}give one of "
                       f"{module.__name__}'s classes by name, or a class path (package.module.Class)")


# What jsonargparse's "Expected a <class 'int'>" asks for, in a user's words.
_TYPE_WORDS = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text"}


def _wrong_type(err: Exception, argv: list[str]) -> Optional[ConfigError]:
    """One line for a value of the wrong type, naming the option as typed (or the config's setting), its value and
    what it takes; None for any other error."""
    found = _expected_values(str(err))
    if found is None:
        return None
    keys, value, wanted = found
    setting = ".init_args.".join(keys)  # a class's own key: model.init_args.lr, trainer.callbacks.init_args.mode
    typed = {f"--{setting}", f"--{keys[0]}.{keys[-1]}"}
    option = next((arg.partition("=")[0] for arg in argv if arg.partition("=")[0] in typed), None)
    where = f"{option} {value}" if option else f"{setting} {value} in the config"
    return ConfigError(f"{where}: give {wanted}")


def _expected_values(text: str) -> Optional[tuple[list[str], str, str]]:
    """The keys (outer, then a class's own), the given value and what is wanted, in words, of jsonargparse's error
    when each of its complaints is "Expected a <class 'T'>" of a type in ``_TYPE_WORDS`` or "Expected a
    typing.Literal[...]"; None otherwise."""
    named = _CLASS_PROBLEM.search(text)  # a union over classes: the named class's own complaint
    text = text[:named.end()] if named else text
    keys = re.findall(r'Parser key "([\w.]+)"', text)
    value = re.search(r"(?:Given|Got) value: (.*)", text)
    complaints = [line.strip().lstrip("- ") for line in (named[3] if named else text).splitlines()]
    complaints = [line for line in complaints
                  if line and not line.startswith(_NOISE) and not re.fullmatch(r'Parser key "[\w.]+":', line)]
    types = [re.fullmatch(r"Expected a <class '(\w+)'>(?:\. Got value: .*)?", line) for line in complaints]
    choices = [re.fullmatch(r"Expected a typing\.Literal\[(.*)\](?:\. Got value: .*)?", line) for line in complaints]
    if (not 0 < len(keys) <= 2 or value is None or not complaints
            or not all((t and t[1] in _TYPE_WORDS) or c for t, c in zip(types, choices))):
        return None
    wanted = [_TYPE_WORDS[t[1]] for t in types if t]
    literals = [str(v) for c in choices if c for v in ast.literal_eval(f"[{c[1]}]")]
    if literals:
        wanted.append(f"one of {', '.join(dict.fromkeys(literals))}")
    return keys, value[1], ", or ".join(dict.fromkeys(wanted))


def _unaccepted_option_hint(err: Exception, subcommand: str) -> str:
    """For jsonargparse's "Problem with given class_path 'C': Option 'O' is not accepted", C's nearest argument to
    O and where C's arguments are listed (``--help`` lists the task's, not a data module's); else ``--help``."""
    problem = _class_problem(err)
    found = re.search(r"Option '(\w+)' is not accepted", problem[1]) if problem else None
    cls = _imported(problem[0]) if found else None
    if cls is None:
        return f"; see `visattn {subcommand} --help`"
    close = difflib.get_close_matches(found.group(1), keyword_names(cls.__init__) or [], n=3, cutoff=0.5)
    section = re.match(r'Parser key "([\w.]+)"', str(err))  # also "trainer.callbacks"
    section = section.group(1) if section else "model"
    meant = f"did you mean {' or '.join(close)}? " if close else ""
    return f"; {meant}`visattn {subcommand} --{section}.help {problem[0]}` lists what it takes"


def _visattn_cause(err: BaseException) -> Optional[VisattnError]:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, VisattnError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _no_config(err: ArgumentError, argv: list[str]) -> Optional[ConfigError]:
    """For a command whose model or data LightningCLI lacks ("the following arguments are required: fit.data,
    fit.model", or a data option refused by the base class LightningDataModule), the one line saying to give a config,
    or, given configs, the sections they lack; None for any other error."""
    subcommand = argv[0]
    lacking = re.search(rf"arguments are required: ({subcommand}\.(data|model)\b.*)", str(err)) \
        or re.search(r'"(data|model)": Lightning(DataModule|Module): ', _first_line(err))
    if lacking is None:
        return None
    configs = _typed_values(argv, ("--config", "-c"))
    if configs:  # a section missing, or one without its class (`data:` holding only `batch_size: 8`)
        sections = " or ".join(f"{name}:" for name in sorted(set(re.findall(r"\b(data|model)\b", lacking[1])),
                                                             reverse=True))
        return ConfigError(f"{subcommand} --config {' '.join(configs)}: names no {sections} class_path; a config "
                           "names the task (`model: class_path: visattn.tasks.ImageClassifier`) and its data "
                           "(`data: class_path: visattn.data.FashionMNISTDataModule`), as the shipped ones do "
                           "(`visattn configs`); add it, or give a second --config naming it")
    return ConfigError(f"{subcommand}: give --config CONFIG, the YAML file naming the model, data and trainer "
                       f"(`visattn configs` lists the shipped ones; e.g. `visattn {subcommand} --config "
                       "configs/classification/demo_cbam_fmnist.yaml`)")


# Lines of jsonargparse's multi-line errors that say nothing about what to fix.
_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:", "Given value:",
          "Expected a <class 'NoneType'>")

# The first entry of a jsonargparse union error naming a class (a callback's or logger's): its class path, and its
# lines, indented under it. The union's other entries say only that the value is no bool, None or base class.
_CLASS_PROBLEM = re.compile(r"^( *)- Problem with given class_path '([\w.]+)':\n((?:\1 +\S.*\n?)+)", re.M)


def _first_line(err: Exception) -> str:
    """jsonargparse's error folded onto one line, without the lines that only list type unions; of a union over
    classes, the named class's own complaint (``TensorBoardLogger: the following arguments are required: ...``)."""
    problem = _class_problem(err)
    if problem is None:
        return _folded(str(err)) or type(err).__name__
    key = re.match(r'Parser key ("[\w.]+"):', str(err))
    return f"{key[1] + ': ' if key else ''}{problem[0].rpartition('.')[2]}: {problem[1]}"


def _class_problem(err: Exception) -> Optional[tuple[str, str]]:
    """The class path and the folded complaint of the union error's entry naming a class; None without one."""
    found = _CLASS_PROBLEM.search(str(err))
    return (found[2], _folded(found[3])) if found else None


def _folded(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kept = [line for line in (line.lstrip("- ") for line in lines) if not line.startswith(_NOISE)]
    return " ".join(dict.fromkeys(kept)).replace("Parser key ", "")
