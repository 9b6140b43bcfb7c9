"""What weights were evaluated with: the preprocessing recorded with them (their index entry's, their file's, or timm's
record of its weights), and the ``pretrained_cfg`` made from it that timm's data helpers read."""
import copy
import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any, Optional

from torch import nn

from .errors import VisattnWarning, outside_visattn
from .layers.patch_embed import fixed_input_size
from .weight_names import FETCHED_PREFIXES
from .weights_files import _file_preprocessing, _file_record, _state_origin
from .weights_index import named_weights_entry


def set_pretrained_cfg(model: nn.Module, cfg: dict[str, Any]) -> None:
    """Give ``model`` its ``pretrained_cfg`` and, as timm's models carry it for older code, the same dict as
    ``default_cfg`` (else a timm model's keeps its own after visattn replaces its ``pretrained_cfg``)."""
    model.pretrained_cfg = model.default_cfg = cfg


def timm_pretrained_cfg(model: nn.Module, preprocessing: Optional[dict[str, Any]]) -> dict[str, Any]:
    """A classifier's ``pretrained_cfg`` as timm's models carry it, from its weights' recorded
    ``preprocessing`` (what it lacks: the defaults of weights that recorded none), so that timm's data
    helpers (``resolve_data_config``, ``create_transform``) preprocess as visattn does, not for ImageNet."""
    from .data.preprocessing import default_preprocessing, timm_data_config

    built = default_preprocessing(model, published=not preprocessing)  # a recorded field's gap: bilinear, not bicubic
    preprocessing = {**built, **(preprocessing or {})}
    # The model as built, not as the weights were: in_chans=1, or a ViT's img_size=56 for 28 px weights
    recorded_size = preprocessing["input_size"]
    preprocessing["input_size"] = [built["input_size"][0], *(fixed_input_size(model) or recorded_size[1:])]
    data = timm_data_config(preprocessing)
    return {**data, **_timm_model_fields(model, data["input_size"]), "num_classes": model.num_classes,
            "classifier": getattr(type(model), "classifier", None)}  # the head's name, where a model names it


def _timm_model_fields(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, Any]:
    """The fields of a ``pretrained_cfg`` that timm's tools read besides the data's: the architecture
    (``save_for_hf`` fails without it), the first convolution, whether the input size is fixed and, for a
    convolutional classifier, the size of its last map at ``input_size`` (``apply_test_time_pool`` fails
    without it; a ViT's, as timm's, has none, also at any size: timm's pooling would wrap its tokens)."""
    from .registry import split_model_name

    arch = split_model_name(getattr(model, "visattn_name", type(model).__name__))[0]
    fixed = fixed_input_size(model) is not None
    fields = {"architecture": arch, "fixed_input_size": fixed,
              "first_conv": next((name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)),
                                 None)}
    levels = getattr(model, "feature_info", None)
    if getattr(model, "patch_embed", None) is None and isinstance(levels, list) and levels:
        fields["pool_size"] = tuple(math.ceil(side / levels[-1]["reduction"]) for side in input_size[1:])
    return fields


def weights_preprocessing(entry: Optional[dict[str, Any]], pretrained: Any) -> Optional[dict[str, Any]]:
    """The evaluation settings recorded with the weights a model was built from: its index entry's (or
    that of the shipped ``ARCH.TAG`` given as ``pretrained``), or for ``timm:NAME`` the mean, std, crop and
    filter timm records for those weights (known offline); else None."""
    entry = entry if entry is not None else named_weights_entry(pretrained)
    if entry is not None:
        return entry.get("preprocessing")
    if isinstance(pretrained, (str, Path)) and not str(pretrained).startswith(FETCHED_PREFIXES):
        return _file_preprocessing(Path(pretrained))  # a training checkpoint's hyper_parameters too
    # Of the rest, only a timm: name has a record to read: an hf-hub: name or a state dict has none.
    if not (isinstance(pretrained, str) and pretrained.startswith("timm:")):
        return None
    from .data.preprocessing import INTERPOLATIONS

    cfg = _timm_pretrained_cfg(pretrained[5:])
    if cfg is None:
        return None
    # input_size is left to the model, which may be built for another size than timm's weights
    recipe = "small" if cfg.crop_mode == "squash" else "photo"
    if cfg.crop_mode not in ("center", "squash") or (recipe == "small" and cfg.crop_pct != 1):
        done = "resize the whole image to the input size" if recipe == "small" else "centre-crop"
        warnings.warn(f"{pretrained}: timm evaluates these weights with crop_mode {cfg.crop_mode!r} and crop_pct "
                      f"{cfg.crop_pct}, which visattn's transforms do not do; they {done} instead, so the model sees "
                      "other inputs than timm gives it", VisattnWarning, stacklevel=outside_visattn())
    recorded = {"mean": list(cfg.mean), "std": list(cfg.std), "crop_pct": cfg.crop_pct, "recipe": recipe}
    return {**recorded, **({"interpolation": cfg.interpolation} if cfg.interpolation in INTERPOLATIONS else {})}


def loaded_weights_preprocessing(model: nn.Module, entry: Optional[dict[str, Any]],
                                 pretrained: Any) -> Optional[dict[str, Any]]:
    """What the weights loaded into ``model`` were trained with: :func:`weights_preprocessing`'s record, else for
    weights that record none how every weights timm publishes for its architecture were evaluated (a CLIP file from
    the hub; ``published_preprocessing``); None when no weights were loaded, visattn's recorded none (they may have
    been trained with anything); torchvision's ViTs' statistics for weights in their layout."""
    from .data.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    entry = entry if entry is not None else named_weights_entry(pretrained)
    if entry is not None or pretrained is None or pretrained is False:
        return weights_preprocessing(entry, pretrained)
    if isinstance(pretrained, (str, Path)) and not str(pretrained).startswith(FETCHED_PREFIXES):
        origin, recorded = _file_record(Path(pretrained))  # read once
    else:
        origin = _state_origin(pretrained) if isinstance(pretrained, dict) else "other"  # timm: and hf-hub: names too
        recorded = weights_preprocessing(None, pretrained)
    if recorded is not None:
        return recorded
    if origin == "torchvision":  # every torchvision ViT weights: ImageNet's statistics (filters and crops differ)
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if origin == "other" and getattr(model, "published_preprocessing", None):
        return copy.deepcopy(model.published_preprocessing)
    return None


def _timm_pretrained_cfg(name: str) -> Optional[Any]:
    """timm's record of weights ``name``: its registry's, or for ``local-dir:FOLDER`` the ``pretrained_cfg`` of the
    folder's config.json (what ``timm.models.save_for_hf`` writes; the registry knows no such name, so the weights'
    statistics were never compared with the data's); None when there is none."""
    import timm
    from timm.models._hub import load_model_config_from_path

    if not name.startswith("local-dir:"):
        return timm.models.get_pretrained_cfg(name)
    try:
        recorded = load_model_config_from_path(name.removeprefix("local-dir:"))[0]
    except Exception:  # timm's reader raises many kinds; loading the weights names the folder's problem
        return None
    if not isinstance(recorded, dict):
        return None
    known = {field.name for field in dataclasses.fields(timm.models.PretrainedCfg)}
    return timm.models.PretrainedCfg(**{k: v for k, v in recorded.items() if k in known})
