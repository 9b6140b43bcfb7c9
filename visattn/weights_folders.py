"""Where ``ARCH.TAG`` weights are looked up and saved: the folders of ``$VISATTN_WEIGHTS``, then, in an installed
package, the user's own weights folder, then the weights visattn ships, searched in that order."""
import os
from pathlib import Path
from typing import Optional

from .errors import WeightsError
from .shipped import installed_package, shipped_folder


def weights_search_path() -> list[Path]:
    """The folders ``ARCH.TAG`` weights are looked up in, in order: those of ``$VISATTN_WEIGHTS``
    (separated by ``os.pathsep``, as in ``PATH``; ``~`` expanded; empty ones skipped), then, in an installed
    package, :func:`user_weights_dir`, then :func:`shipped_weights_dir`. A folder named twice (relatively,
    through a link, or the shipped one named in it) is searched once, where it is first named.

    An ``ARCH.TAG`` in an earlier folder hides the same name in a later one. An architecture's default
    weights (``pretrained=True``, or ``ARCH`` alone on the command line) are those marked ``"default":
    true`` by the first folder that marks one for it, so that ``visattn save-weights --default`` into your
    own folder replaces the shipped default; see :func:`find_weights_entry`.
    """
    own = [Path(folder).expanduser() for folder in os.environ.get("VISATTN_WEIGHTS", "").split(os.pathsep) if folder]
    by_place: dict[Path, Path] = {}
    user = user_weights_dir()
    for folder in [*own, *([user] if user else []), shipped_weights_dir()]:
        by_place.setdefault(folder.resolve(), folder)
    return list(by_place.values())


def weights_dir() -> Path:
    """The folder visattn saves weights to (``visattn save-weights``'s default): the first folder of
    ``$VISATTN_WEIGHTS``, else :func:`user_weights_dir` in an installed package, else the source checkout's
    ``weights/`` (where the shipped weights are made)."""
    return weights_search_path()[0]


def user_weights_dir() -> Optional[Path]:
    """An installed package's folder for the user's own weights, ``$XDG_DATA_HOME/visattn/weights``
    (``~/.local/share/visattn/weights``), not site-packages, whose next install would replace the index and
    orphan the files ``save-weights`` wrote. ``None`` in a source checkout."""
    if not installed_package():
        return None
    return Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share").expanduser() / "visattn" / "weights"


def shipped_weights_dir() -> Path:
    """The weights visattn ships: ``visattn/weights`` in an installed wheel, ``weights/`` beside the package
    in a source checkout (pyproject.toml maps the one to the other)."""
    return shipped_folder("weights")


def _require_own_weights_folders() -> None:
    """One line naming a ``$VISATTN_WEIGHTS`` folder that is not there: skipped, it would let a later
    folder's weights of the same name load, or be listed, instead of the user's."""
    unchecked = {shipped_weights_dir().resolve(), *([user.resolve()] if (user := user_weights_dir()) else [])}
    for folder in weights_search_path():
        if not folder.is_dir() and folder.resolve() not in unchecked:  # the user folder is made at the first save
            problem = "is not a folder" if folder.exists() else "does not exist"
            raise WeightsError(f"the weights folder {folder} in VISATTN_WEIGHTS {problem}; create it, or take it "
                               "out of VISATTN_WEIGHTS")


def _searched() -> str:
    """The folders weights are looked up in, for a message about a name found in none; a missing shipped
    folder is named with its fix."""
    shipped = shipped_weights_dir()
    searched = "searched " + ", ".join(map(str, weights_search_path()))
    if shipped.is_dir():
        return searched
    return f"{searched}; the shipped weights folder {shipped} does not exist: reinstall visattn with its weights"
