"""What visattn ships beside its code: the pretrained ``weights/`` and the training ``configs/``.

A source checkout keeps them at the repository's root, beside the package; pyproject.toml maps them into an
installed wheel as ``visattn/weights`` and ``visattn/configs``, where an installed package finds them.
"""
import difflib
import os
import re
from pathlib import Path
from typing import Optional, Union

PACKAGE = Path(__file__).resolve().parent


def shipped_folder(name: str) -> Path:
    """``visattn/<name>`` in an installed wheel, else ``<name>/`` beside the package (a source checkout)."""
    packaged = PACKAGE / name
    return packaged if packaged.is_dir() else PACKAGE.parent / name


def installed_package() -> bool:
    """Whether this visattn is an installed wheel (whose data lies inside the package), not a source checkout."""
    return shipped_folder("weights").parent == PACKAGE


CONFIG_SUFFIXES = (".yaml", ".yml")


def config_file_name(value: Union[str, Path]) -> bool:
    """Whether a ``--config`` value names a YAML file, rather than holding the settings themselves (jsonargparse
    reads ``{"trainer": ...}`` as a config) or naming a URL (``s3://``, which LightningCLI reads through fsspec)."""
    text = str(value)
    return text.lower().endswith(CONFIG_SUFFIXES) and "://" not in text and "\n" not in text and "{" not in text


def shipped_config(value: Union[str, Path]) -> Optional[Path]:
    """The shipped config a ``--config`` value names when no file is there: ``configs/classification/x.yaml``
    (the README's form, from any folder or a pip install) or ``classification/x.yaml``. ``None`` for an existing
    file, an absolute or ``~`` path, settings or a URL, or a name no shipped config has (one outside the configs
    folder, ``../Makefile``, too)."""
    path = Path(value)
    if not config_file_name(value) or path.expanduser().is_absolute() or path.exists():
        return None
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    folder = shipped_folder("configs").resolve()
    candidate = folder.joinpath(*parts).resolve() if parts else folder
    return candidate if candidate.is_relative_to(folder) and candidate.is_file() else None


def shipped_config_names() -> list[str]:
    """Every shipped config as the README names it: ``configs/<task>/<experiment>.yaml``."""
    folder = shipped_folder("configs")
    return sorted(f"configs/{path.relative_to(folder).as_posix()}" for path in folder.glob("*/*.yaml"))


def unstarted_shipped_run(path: Union[str, Path]) -> Optional[str]:
    """The shipped config (its README name) whose run, not yet started in the working folder, would write ``path``:
    the ``trainer.default_root_dir`` it trains into holds ``path`` (a later stage's start, ``outputs/vit_fmnist/...``)
    and is not there."""
    import yaml  # only for this message's look at the configs

    target = Path(os.path.abspath(path))
    for name in shipped_config_names():
        config = shipped_folder("configs") / name.removeprefix("configs/")
        settings = yaml.safe_load(config.read_text(encoding="utf-8"))
        trainer = settings.get("trainer") if isinstance(settings, dict) else None
        root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
        if isinstance(root, str) and target.is_relative_to(os.path.abspath(root)):
            return None if os.path.exists(root) else name
    return None


def bare_config_name(value: Union[str, Path]) -> bool:
    """Whether a ``--config`` value is a name without a suffix (``cbam_resnet_fmnist``), not settings or a URL."""
    return re.fullmatch(r"[\w/-]+", str(value)) is not None


def nearest_shipped_configs(value: Union[str, Path]) -> list[str]:
    """The shipped configs whose names are nearest ``value`` (a misspelt one, or one without ``.yaml``),
    nearest first."""
    name = Path(value).as_posix()
    name = name if name.lower().endswith(CONFIG_SUFFIXES) else f"{name}.yaml"
    same_name = [config for config in shipped_config_names() if config.rsplit("/", 1)[-1] == name]
    if same_name:  # the name without its task folder (short ones are too far from it for the cutoff below)
        return same_name
    name = name if name.startswith("configs/") else f"configs/{name}"
    return difflib.get_close_matches(name, shipped_config_names(), n=2, cutoff=0.8)
