"""What visattn ships beside its code: the pretrained ``weights/`` and the training ``configs/``.

A source checkout keeps them at the repository's root, beside the package; pyproject.toml maps them into an
installed wheel as ``visattn/weights`` and ``visattn/configs``, where an installed package finds them.
"""
import difflib
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


def shipped_config(value: Union[str, Path]) -> Optional[Path]:
    """The shipped config a ``--config`` value names when no file is there: ``configs/classification/x.yaml``
    (the README's form, from any folder or a pip install) or ``classification/x.yaml``. ``None`` for an existing
    file, an absolute path, or a name no shipped config has."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return None
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    candidate = shipped_folder("configs").joinpath(*parts) if parts else None
    return candidate if candidate is not None and candidate.is_file() else None


def shipped_config_names() -> list[str]:
    """Every shipped config as the README names it: ``configs/<task>/<experiment>.yaml``."""
    folder = shipped_folder("configs")
    return sorted(f"configs/{path.relative_to(folder).as_posix()}" for path in folder.glob("*/*.yaml"))


def nearest_shipped_configs(value: Union[str, Path]) -> list[str]:
    """The shipped configs whose names are nearest ``value`` (a misspelt one), nearest first."""
    name = Path(value).as_posix()
    name = name if name.startswith("configs/") else f"configs/{name}"
    return difflib.get_close_matches(name, shipped_config_names(), n=2, cutoff=0.8)
