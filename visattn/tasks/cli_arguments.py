"""What visattn reads from a ``fit|validate|test|predict`` command line before LightningCLI parses it:
shipped configs given by name, the task whose data attributes are linked, the model settings and folders typed, and
model names given where a task class goes.
"""
import importlib.util
import re
import sys
from pathlib import Path
from typing import Sequence

from lightning.pytorch.utilities import rank_zero_only

from ..errors import ConfigError
from ..registry import split_model_name
from ..shipped import bare_config_name, config_file_name, nearest_shipped_configs, shipped_config
from .config_files import _config_model_class, _read_yaml, config_task, read_config


def _with_shipped_configs(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config`` that names no file here but a shipped config (``configs/<task>/x.yaml``, the
    README's commands, run from another folder or a pip install) given as that config's path."""
    resolved = list(argv)
    for k, arg in enumerate(argv):
        if arg in ("--config", "-c") and k + 1 < len(argv):
            at, value, prefix = k + 1, argv[k + 1], ""
        elif arg.startswith("--config="):
            at, value, prefix = k, arg.partition("=")[2], "--config="
        else:
            continue
        if Path(value).expanduser().is_dir():  # jsonargparse's "Path is not a file" names no config to give
            held = sorted(path.name for path in Path(value).expanduser().glob("*.yaml"))
            inside = f" (it holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''})" if held else ""
            raise ConfigError(f"--config {value}: a folder{inside}; give a config file, or a shipped config's name "
                              "(`visattn configs` lists them)")
        shipped = shipped_config(value)
        # jsonargparse's line names no shipped config; settings, URLs and `~` paths are its to read
        named = config_file_name(value) or bare_config_name(value)
        if shipped is None and named and not Path(value).expanduser().exists():
            nearest = nearest_shipped_configs(value)
            fix = f"did you mean {' or '.join(nearest)}?" if nearest else \
                "give a config's path, or a shipped one's name (`visattn configs` lists them)"
            raise ConfigError(f"--config {value}: no such file; {fix}")
        if shipped is not None:
            resolved[at] = prefix + str(shipped)
            if rank_zero_only.rank == 0:  # Lightning starts the other processes as this command again
                print(f"visattn: no {value} here; using the shipped config {shipped}", file=sys.stderr)
    return resolved


def _task_links(argv: list[str]) -> tuple[str, ...]:
    """``linked_data_attributes`` of the task class the config (or a ``--model.class_path`` override) names."""
    class_path = None
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--") else [arg])]
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--config", "-c"):
            class_path = _config_model_class(Path(value)) or class_path
        elif flag in ("--model", "--model.class_path"):
            class_path = value
    return tuple(getattr(config_task(class_path), "linked_data_attributes", ()) if class_path else ())


def _root_moved(argv: list[str]) -> bool:
    """Whether ``trainer.default_root_dir`` comes from the command line or from a config that names no checkpoint or
    log folder of its own (a second ``--config`` moving the run): a config that names its folders and its root beside
    them chose them all, and was warned about on every run."""
    if _typed_values(argv, ("--trainer.default_root_dir",)):
        return True
    trainers = [(read_config(Path(value)) or {}).get("trainer") or {}
                for value in _typed_values(argv, ("--config", "-c")) if Path(value).is_file()]
    # a file of trainer settings given to --trainer (after the configs, as its settings apply after theirs)
    trainers += [_read_yaml(Path(value), flag="--trainer") for value in _typed_values(argv, ("--trainer",))
                 if Path(value).is_file()]
    setting = [trainer for trainer in trainers if isinstance(trainer, dict) and "default_root_dir" in trainer][-1:]
    return bool(setting) and not ({"callbacks", "logger"} & setting[0].keys())


def _typed_values(argv: list[str], options: Sequence[str]) -> tuple[str, ...]:
    """The values ``argv`` gives any of ``options`` (``--option VALUE`` or ``--option=VALUE``)."""
    values = []
    for k, arg in enumerate(argv):
        option, equals, value = arg.partition("=")
        if option in options:
            values += [value] if equals else argv[k + 1:k + 2]
    return tuple(values)


def _model_overrides(argv: list[str]) -> tuple[str, ...]:
    """The model ``init_args`` keys ``argv`` sets (``--model.init_args.KEY`` or ``--model.KEY``), dotted for keys
    inside one (``model_kwargs.depth``)."""
    typed = (re.fullmatch(r"--model\.(?:init_args\.)?(\w+(?:\.\w+)*)(=.*)?", arg) for arg in argv)
    return tuple(match[1] for match in typed if match and match[1].partition(".")[0] not in ("class_path", "init_args",
                                                                                           "dict_kwargs"))


def _refuse_model_names(argv: list[str]) -> None:
    """A registered model name or ARCH.TAG given to ``--model``, which takes a task class (jsonargparse read
    ``se_resnet20_cifar.fmnist`` as a module path: "No module named 'se_resnet20_cifar'"), is one line saying where a
    model name goes: to a config's ``model_name``, or to the command that runs it on files."""
    from ..registry import is_model, list_pretrained, model_task

    given = [(option, value) for option in ("--model", "--model.class_path") for value in _typed_values(argv, [option])]
    # a file of the model section's settings is no model name, even where its stem is one, nor is a class of a
    # module that imports (a user's resnet18.py)
    named = [(option, value) for option, value in given
             if not (config_file_name(value) or Path(value).expanduser().exists() or _importable(value))
             and is_model(value)]
    if not named:
        return
    option, value = named[0]
    arch, tag = split_model_name(value)
    verb = {"detection": "detect", "captioning": "caption"}.get(model_task(arch), "classify")
    weighted = tag is not None or any(split_model_name(name)[0] == arch for name in list_pretrained())
    files = f"{verb} image files with `visattn {verb} FILES --model {value}`, or " if weighted else ""
    raise ConfigError(f"{option} {value}: `visattn {argv[0]}` runs a config's model on the config's data, and "
                      f"{option} takes the model's task class, not a model name; {files}run it from a config "
                      f"with --config CONFIG --model.init_args.model_name {value}")


def _importable(class_path: str) -> bool:
    module = class_path.rpartition(".")[0]
    try:
        return bool(module) and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that does not import, or an empty name part
        return False
