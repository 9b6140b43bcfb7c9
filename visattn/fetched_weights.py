"""Weights fetched by name: ``timm:NAME`` through timm and ``hf-hub:ORG/REPO`` through huggingface_hub, from the
local Hugging Face cache where the hub cannot be reached. A timm ViT's weights that fit visattn's ViT but compute
otherwise (post-norm blocks, another activation or norm epsilon) are refused for it."""
import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .errors import WeightsError
from .weight_names import HUB_PREFIXES
from .weights_files import StateDict, _refused_pickle


def unreachable_hub() -> Optional[str]:
    """Why the Hugging Face hub cannot be reached (offline mode, or no connection within 3 s: found in a second,
    instead of minutes of retries); None when it can."""
    from urllib.parse import urlparse
    from urllib.request import getproxies

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if getproxies().get("https"):  # reached through the proxy, if at all: huggingface_hub's requests tell
        return None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as err:
        return f"{host} unreachable: {err.strerror or err}"
    return None


@contextlib.contextmanager
def hub_cache_only(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode (what ``HF_HUB_OFFLINE=1`` sets) while ``offline``: the files timm reads from
    the hub, a hub name's config.json first, come from the local cache at once, or fail at once, instead of after
    25 s of retries and a dozen "Retrying" lines."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline  # read at each request (huggingface_hub's is_offline_mode)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _offline_weights(source: str, cached: Optional[Path]) -> Optional[Path]:
    """None where the hub can be reached, so that the download checks for newer weights; else ``cached``, the
    weights already in the local Hugging Face cache, which load without it; one line when there are none."""
    reason = unreachable_hub()
    if reason and cached is None:
        raise WeightsError(
            f"{source}: cannot fetch weights ({reason}) and none are in the Hugging Face cache; download the "
            "file where the hub is reachable and pass pretrained='FILE.safetensors'"
        )
    return cached if reason else None


def _fetch_timm(name: str, *, into: nn.Module) -> tuple[StateDict, Optional[tuple[int, int]]]:
    """timm's weights ``name`` and, for a ViT, the patch grid they were trained on (``None`` otherwise)."""
    import timm

    from .registry import check_timm_name

    check_timm_name(name)
    cached = offline_timm_file(name)
    try:
        # a cached file goes through timm's own loading (its checkpoint filter) as a download would
        overlay = {"file": str(cached)} if cached is not None else None
        with hub_cache_only(cached is not None):  # an hf-hub: name's config.json too
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as err:  # timm raises many kinds when the hub is unreachable
        if cached is not None and "weights_only" in str(err):  # fetched, and refused as a pickle by torch.load
            raise WeightsError(f"timm:{name}: {cached}: refused, {_refused_pickle(str(err))}") from None
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if name.startswith("local-dir:"):
            raise WeightsError(f"timm:{name}: could not read weights ({reason}); give a folder holding timm's "
                               "config.json and model.safetensors, as timm.models.save_for_hf writes") from None
        raise WeightsError(
            f"timm:{name}: could not fetch weights ({reason}); download the file where the hub is "
            "reachable and pass pretrained='FILE.safetensors'"
        ) from None
    _refuse_other_vit_computation(model, f"timm:{name}", name.split(".")[0], into=into)
    return model.state_dict(), tuple(getattr(getattr(model, "patch_embed", None), "grid_size", ())) or None


def _refuse_other_vit_computation(model: nn.Module, source: str, arch: str, *, into: nn.Module) -> None:
    """One line for a timm ViT whose weights have the keys and shapes of ``into``, visattn's ViT, but that
    computes otherwise: post-norm or parallel blocks, an MLP activation other than exact GELU, another
    LayerNorm epsilon than the model's ``norm_eps``. They would load strictly and give other logits (timm's residual
    post-norm ViT-B by 6.0)."""
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer) or isinstance(into, VisionTransformer):  # timm's own: as trained
        return
    block = model.blocks[0]
    act = getattr(getattr(block, "mlp", None), "act", None)
    norm, own_eps = getattr(block, "norm1", None), getattr(into, "norm_eps", 1e-6)
    own_act, their_act = getattr(into, "act_layer", "gelu"), _activation_name(act)
    fix = f"use timm's own model, model_name 'timm:{arch}'"
    if type(block) is not Block:
        differs = f"its blocks are timm's {type(block).__name__}, not the pre-norm Block"
    elif their_act != own_act:
        differs = f"its MLP activation is {act}, not the {own_act!r}"
        if their_act is not None:
            fix = f"build the model with act_layer={their_act!r}, or {fix}"
    elif not (isinstance(norm, nn.LayerNorm) and norm.eps == own_eps):
        differs = f"its norms are {norm}, not LayerNorm with the eps {own_eps}"
        if isinstance(norm, nn.LayerNorm):
            fix = f"build the model with norm_eps={norm.eps}, or {fix}"
    else:
        return
    raise WeightsError(f"{source}: {differs} that visattn's ViT computes, so its weights would load and give "
                       f"other outputs; {fix}")


def _activation_name(act: Optional[nn.Module]) -> Optional[str]:
    """The ``act_layer`` name of a timm MLP activation visattn's ViT computes too; None for others."""
    if type(act) is nn.GELU:
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    return {"GELU": "gelu", "GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}.get(type(act).__name__)  # timm's


def _refuse_other_hub_vit(repo: str, weights: Path, *, into: nn.Module, offline: bool) -> None:
    """:func:`_refuse_other_vit_computation` for the timm architecture a hub repository's ``config.json``
    names beside its weights (built on the meta device: nothing is read or allocated); nothing when the
    repository has no such file or names no architecture timm knows. ``offline``: the hub cannot be reached, and
    only a cached config.json is read."""
    config = weights.parent / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import hf_hub_download

            with hub_cache_only(offline):
                config = Path(hf_hub_download(repo, "config.json"))
        except Exception:  # noqa: BLE001 -- offline, or a repository without one: nothing says what it holds
            return
    try:
        import timm

        described = json.loads(config.read_text())
        with torch.device("meta"):
            model = timm.create_model(described["architecture"], pretrained=False,
                                      num_classes=described.get("num_classes", 1000),
                                      **(described.get("model_args") or {}))
    except Exception:  # noqa: BLE001 -- not timm's layout, or an architecture this timm lacks
        return
    _refuse_other_vit_computation(model, f"hf-hub:{repo}", described["architecture"], into=into)


def offline_timm_file(name: str) -> Optional[Path]:
    """timm's weights ``name`` in the local Hugging Face cache when the hub cannot be reached (None where it
    can: timm fetches them); one line when it cannot and none are cached. None for ``local-dir:FOLDER``,
    which timm reads from the folder without the hub."""
    if name.startswith("local-dir:"):
        return None
    return _offline_weights(f"timm:{name}", _cached_timm_file(name))


def _cached_timm_file(name: str) -> Optional[Path]:
    """The file of timm's weights ``name`` already in the local Hugging Face cache; None when not there."""
    import timm

    if name.startswith(HUB_PREFIXES):  # timm has no pretrained config of a hub name: the name is the repository
        repo, _, revision = name.partition(":")[2].partition("@")
        return _cached_hub_file(repo, revision)
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a tag timm does not know: timm.create_model says so
        return None
    repo, _, revision = (getattr(cfg, "hf_hub_id", None) or "").partition("@")  # timm's ORG/REPO[@REVISION]
    return _cached_hub_file(repo, revision) if repo else None


# The weights files of a hub repository, in the order they are tried (as timm does, safetensors first).
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _cached_hub_file(repo: str, revision: str = "") -> Optional[Path]:
    """The weights of hub repository ``repo`` already in the local Hugging Face cache (``$HF_HOME``),
    found without the network, which an offline machine may still load; None when none are there."""
    from huggingface_hub import try_to_load_from_cache

    for filename in _HUB_FILES:
        try:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
        except ValueError:  # not a repository name: the download says so, or that the hub is unreachable
            return None
        if isinstance(found, str):  # else None (not cached) or a marker that the repository lacks the file
            return Path(found)
    return None


def _fetch_hf_hub(repo: str) -> Path:
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in _HUB_FILES:
        try:
            return Path(hf_hub_download(repo, filename))
        except Exception as err:  # offline, missing repo or missing file
            errors.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
    raise WeightsError(
        f"hf-hub:{repo}: could not fetch weights ({errors[-1]}); download the file where the hub is "
        "reachable and pass pretrained='FILE.safetensors'"
    )
