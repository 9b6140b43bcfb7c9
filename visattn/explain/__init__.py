"""See where a model looks: one ``explain`` call for every family, plus the pieces it is built from.

==============  ==========================  =============================================
method          families                    what the map is
==============  ==========================  =============================================
``rollout``     ViT                         attention rolled out through all blocks
``attention``   ViT                         one block's class-token attention (one head or mean)
``gradcam``     ViT (also timm's), any CNN  gradient-weighted activations of a target layer
``gradcam++``   ViT (also timm's), any CNN  the same activations, weighed by their positive gradients
``gradrollout`` ViT                         attention weighed by a class's gradient, rolled out through all blocks
``gates``       CBAM/BAM/coord/NL/GC CNNs   the attention modules' own spatial gates
==============  ==========================  =============================================
"""
from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence, Union, get_args

import albumentations as A
import numpy as np
import torch
from torch import Tensor, nn

from ..data.transforms import check_image_batch, rgb_array
from ..errors import ArgumentError, ConfigError, VisattnWarning, first_few, outside_visattn
from .attention import (as_index, attention_map, attention_pool_reading, check_gives_attention,
                        collect_attentions, gives_attention, input_channels, is_vit, model_batch, recorded_inputs,
                        token_grid)
from .cell_centres import CellCentres, map_centres
from .faithfulness import Fill, check_fill, curve_area, deletion_fill, deletion_insertion_curves
from .gates import gate_maps, gate_modules, missing_gates
from ..models.vit import PATCH_POOLS
from ..modes import eval_mode
from ..wrapped_models import as_module
from ..scores import reported_score
from .gradcam import TargetClass, grad_cam, grad_cam_plus_plus
from .gradient_rollout import attention_gradients, gradient_rollout
from .overlay import (check_figure_path, heatmap_overlay, normalize_map, overlay_figure, resize_map, save_figure,
                      save_overlay, save_word_panels)
from .pointing import pointing_accuracy, pointing_hit
from .randomization import Mode, check_mode, forward_stages, map_similarity, randomized_models
from .rollout import attention_rollout

if TYPE_CHECKING:  # tasks import Lightning; explain must not need it
    from PIL import Image

    from torch.utils.data import Dataset

    from ..data.scenes import Scene
    from ..data.transforms import ImageTransform
    from ..inference.classifier import Classifier

__all__ = [
    "METHODS", "CellCentres", "applicable_methods", "attention_map", "attention_rollout", "check_method",
    "curve_area", "deletion_fill", "deletion_insertion_curves", "evaluate_class_pointing", "evaluate_faithfulness",
    "evaluate_pointing", "evaluate_randomization", "explain", "explain_batch", "explain_image", "gate_maps",
    "grad_cam", "grad_cam_plus_plus", "gradient_rollout", "heatmap_overlay", "map_centres", "normalize_map",
    "pointing_accuracy", "pointing_hit", "resize_map", "save_overlay", "save_word_panels",
]

Method = Literal["rollout", "attention", "gradcam", "gradcam++", "gradrollout", "gates"]
PointingTarget = Literal["label", "prediction"]  # whose class map the one-item pointing game scores
METHODS = ("rollout", "attention", "gradcam", "gradcam++", "gradrollout", "gates")
LAYER_CLASS_METHODS = ("gradcam", "gradcam++")  # one layer's activations weighed by a class's gradient: any model
CLASS_METHODS = (*LAYER_CLASS_METHODS, "gradrollout")  # the maps that explain one class


def _class_map(method: str) -> Callable[..., tuple[Tensor, Tensor]]:
    """The function of a Grad-CAM method, looked up when called (a test or a user may wrap grad_cam here)."""
    return grad_cam if method == "gradcam" else grad_cam_plus_plus


def applicable_methods(model: nn.Module) -> tuple[str, ...]:
    """The explain methods that fit ``model``'s family."""
    model = as_module(model)
    if gives_attention(model):
        return ("rollout", "attention", *CLASS_METHODS)
    if is_vit(model):  # built elsewhere (timm): no attention maps to read
        return LAYER_CLASS_METHODS
    return (*LAYER_CLASS_METHODS, "gates") if gate_modules(model) else LAYER_CLASS_METHODS


# Where the models that are not classifiers show where they look.
OTHER_TASKS_MAPS = {"captioning": "each word's map: Captioner.caption(images).attention (`visattn caption --attention-out`)",
                    "detection": "each detection's map: Detector.detect(images, attention=True) "
                                 "(`visattn detect --attention-out`)"}


def check_method(model: nn.Module, method: str) -> None:
    """One line unless ``method`` is an explain method that fits ``model``; it names those that do."""
    _check_arguments(as_module(model), method, None, None, None)


def _check_arguments(model: nn.Module, method: str, layer, head, target_class) -> None:
    from ..registry import model_task

    name = getattr(model, "visattn_name", None)  # set by create_model; a model built elsewhere is taken as it is
    task = model_task(name) if name else "classification"
    if task != "classification":
        raise ConfigError(f"explain takes classifiers; {name} is for {task}: use {OTHER_TASKS_MAPS[task]}")
    if method not in METHODS:
        raise ArgumentError("method", method, f"use one of {', '.join(METHODS)}")
    if method in ("rollout", "attention", "gradrollout") and is_vit(model):
        check_gives_attention(model, method=method)
    fits = applicable_methods(model)
    if method not in fits:
        lacks = f", which has {missing_gates(model)}" if method == "gates" and not is_vit(model) else ""
        raise ArgumentError("method", method, f"does not fit {type(model).__name__}{lacks}; use {' or '.join(fits)}")
    if head is not None and method != "attention":
        raise ArgumentError("head", head, f"applies to method attention only, not {method}; drop it")
    if layer is not None and method in ("rollout", "gradrollout"):
        raise ArgumentError("layer", layer, f"does not apply to {method} (it spans every block); "
                                            "use method attention for one block")
    if target_class is not None and method not in CLASS_METHODS:
        raise ArgumentError("target_class", target_class,
                            f"applies to {', '.join(CLASS_METHODS[:-1])} and {CLASS_METHODS[-1]} only ({method} maps "
                            "do not depend on the class); drop it")


def _normalized(model: nn.Module, maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``model``'s ``(B, h, w)`` maps at each pixel of a ``size`` input, min-max scaled to [0, 1] per image."""
    maps = map_centres(model, maps.shape[-2:], size).resample(maps, size)
    low = maps.amin(dim=(1, 2), keepdim=True)
    return (maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)


def _gate_map(model: nn.Module, images: Tensor, layer: Union[str, int, None]) -> Tensor:
    _, maps = gate_maps(model, images)
    names = list(maps)
    if layer is None:  # every module's map at the input size, each scaled to [0, 1], averaged
        size = tuple(images.shape[-2:])
        return torch.stack([_normalized(model, m, size) for m in maps.values()]).mean(dim=0)
    index = as_index(layer)
    if index is not None:
        if not -len(names) <= index < len(names):
            raise ArgumentError("layer", layer, f"this model has {len(names)} spatial gates: {', '.join(names)}")
        return maps[names[index]]
    if layer not in maps:
        raise ArgumentError("layer", layer, f"no spatial gate by that name; choose one of {', '.join(names)}")
    return maps[layer]


def explain_batch(
    model: nn.Module,
    images: Tensor,
    method: Method = "gradcam",
    *,
    layer: Union[str, int, None] = None,
    head: Optional[int] = None,
    target_class: TargetClass = None,
    head_fusion: Literal["mean", "max", "min"] = "mean",
    discard_ratio: float = 0.0,
) -> Tensor:
    """Maps ``(B, h, w)`` of a batch of normalised images ``(B, C, H, W)`` on the method's own grid
    (the patch grid, the target layer's grid, the gate's grid; the default gates average is at ``(H, W)``).

    See :func:`explain` for the arguments; ``head_fusion`` and ``discard_ratio`` tune rollout.
    """
    model = as_module(model)
    images = model_batch(model, images)
    _check_arguments(model, method, layer, head, target_class)
    if method != "rollout" and (head_fusion != "mean" or discard_ratio != 0.0):
        raise ConfigError(f"head_fusion and discard_ratio tune rollout only, not {method}; drop them")
    if method in LAYER_CLASS_METHODS:
        return _class_map(method)(model, images, layer=layer, target_class=target_class)[0]
    if method == "gates":
        return _gate_map(model, images, layer)
    pool = _read_attention_pool(model)
    # the pool's input is caught on the way: no second forward
    with eval_mode(model), recorded_inputs([pool] if pool is not None else []) as pool_inputs:
        if method == "gradrollout":
            attentions, gradients, _ = attention_gradients(model, images, target_class)
        else:
            _, attentions = collect_attentions(model, images)
    pooled = _patch_reading(model, pool_inputs)
    grid = token_grid(model, images.shape[-2:])
    if method == "gradrollout":
        return gradient_rollout(attentions, gradients, grid, num_prefix_tokens=model.num_prefix_tokens,
                                pooled=pooled)[0]
    if method == "rollout":
        return attention_rollout(attentions, grid, num_prefix_tokens=model.num_prefix_tokens,
                                 head_fusion=head_fusion, discard_ratio=discard_ratio, pooled=pooled)[0]
    return attention_map(attentions, grid, layer=_block_index(layer), head=head,
                         num_prefix_tokens=model.num_prefix_tokens, pooled=pooled)


def _read_attention_pool(model: nn.Module) -> Optional[nn.Module]:
    """The attention pool whose reading of the patch tokens weighs their rows: visattn's or timm's, but not one of
    timm's that reads the prefix tokens too (``pool_include_prefix``), which is taken as a mean."""
    pool = getattr(model, "attn_pool", None)
    if getattr(pool, "latent", None) is None or getattr(model, "pool_include_prefix", False):
        return None
    return pool


def _patch_reading(model: nn.Module, pool_inputs: list[tuple[nn.Module, Tensor]]) -> Union[bool, Tensor]:
    """Whether the head reads the patch tokens rather than the class token (their mean, max or both), or, given the
    patch tokens an attention pool took (``pool_inputs``), how much it reads of each, ``(B, patches)``. Without a
    class token the prefix tokens are registers, whose rows no head reads (register 0's is not the class
    token's)."""
    if pool_inputs:
        pool, tokens = pool_inputs[-1]
        with torch.no_grad():
            return attention_pool_reading(pool, tokens)
    no_class_token = hasattr(model, "cls_token") and model.cls_token is None
    return getattr(model, "global_pool", "token") in (*PATCH_POOLS, "map") or no_class_token


def _block_index(layer: Union[str, int, None]) -> int:
    index = -1 if layer is None else as_index(layer)
    if index is None:
        raise ArgumentError("layer", layer, "method attention takes a block index, e.g. 0 or -1")
    return index


def explain(
    model: nn.Module,
    image_tensor: Tensor,
    method: Method = "gradcam",
    *,
    layer: Union[str, int, None] = None,
    head: Optional[int] = None,
    target_class: TargetClass = None,
) -> np.ndarray:
    """Where ``model`` looks in one image, as an ``(H, W)`` float map at the image's size.

    Args:
        model: a registered ViT or (attention) ResNet classifier (or, for ``gradcam`` and ``gradcam++``, a timm
            ViT or CNN; for the ViT methods, a timm ViT of its plain ``Attention``), or a loaded ``Classifier`` of one.
        image_tensor: a normalised image ``(C, H, W)`` (or ``(1, C, H, W)``), ``C`` the model's
            channels (3, or 1 for ``in_chans=1``), as its evaluation transform gives it; any floating
            dtype (it runs in the model's).
        method: ``"rollout"``, ``"attention"``, ``"gradcam"``, ``"gradcam++"``, ``"gradrollout"`` or ``"gates"``; see
            the table above.
        layer: ``attention``: block index (default last); ``gradcam(++)``: module name or ViT block
            index (default last stage / ``blocks[-1].norm1``); ``gates``: module name or index
            among the spatial gates (default: mean of all, each normalised).
        head: ``attention`` only: head index (default: mean over heads).
        target_class: ``gradcam``, ``gradcam++`` and ``gradrollout`` only: class to explain (default: the predicted
            one).

    Raises:
        ConfigError: the method does not fit the model (the message names those that do), or an
            argument is out of range.
    """
    model = as_module(model)
    images = image_tensor[None] if getattr(image_tensor, "ndim", 0) == 3 else image_tensor
    check_image_batch(images, channels=input_channels(model))
    if images.shape[0] != 1:
        raise ConfigError(f"image tensor has shape {tuple(image_tensor.shape)}; give one image (3, H, W)")
    maps = explain_batch(model, images, method, layer=layer, head=head, target_class=target_class)
    if method in CLASS_METHODS and maps[0].amax() == maps[0].amin():  # it would draw a blank figure: say why
        why = (_blank_grad_cam(model, maps[0], layer, target_class) if method in LAYER_CLASS_METHODS else
               "the gradrollout map is the same everywhere: no block's attention raises the class's score; method "
               "rollout shows where the model looks whatever the class")
        warnings.warn(why, VisattnWarning, stacklevel=outside_visattn())
    size = tuple(images.shape[-2:])
    return resize_map(maps[0], size, centres=map_centres(model, maps.shape[-2:], size))


def _blank_grad_cam(model: nn.Module, cam: Tensor, layer: Union[str, int, None], target_class: Any) -> str:
    """Why a Grad-CAM map is the same everywhere, and what to do: a grid of one cell (a ResNet's last stage at
    32 px) shows no place; a zero map of an asked-for class can be the answer (Grad-CAM keeps only evidence for
    the class); of the predicted class it points at the layer."""
    at = f"the Grad-CAM map at layer {layer if layer is not None else '(default)'}"
    height, width = cam.shape[-2:]
    if cam.any() or height * width == 1:
        return (f"{at} is the same over its whole {height}x{width} grid, so it shows no place; pick an earlier layer, "
                "with a finer grid (layer=, or --layer), or give larger images")
    if target_class is not None:
        return (f"{at} is zero everywhere: nothing there weighs for class {target_class!r}, which the image may not "
                "show (Grad-CAM keeps only evidence for the class); another layer may still find some")
    why = (" (a class-token ViT's final norm reaches only the class token)"
           if is_vit(model) and getattr(model, "global_pool", None) == "token" else "")
    return f"{at} is zero everywhere: no activation there weighs for the class{why}; pick another layer (layer=, or --layer)"


def model_view(image_tensor: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo normalisation: a ``(3, H, W)`` model input (``(1, H, W)`` gray) back to the ``(H, W, 3)``
    uint8 image the model saw."""
    channels = image_tensor.shape[0]  # a gray input is normalised with the first channel's values
    mean_t = torch.as_tensor(mean, dtype=torch.float32)[:channels, None, None]
    std_t = torch.as_tensor(std, dtype=torch.float32)[:channels, None, None]
    pixels = (image_tensor.detach().float().cpu() * std_t + mean_t).clamp(0, 1).expand(3, -1, -1)
    return (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _class_to_index(target_class: Union[int, str, None], class_names: Sequence[str]) -> Optional[int]:
    """A class name's index, else a number's; where labels are numbers too, a warning says which was read (with
    labels "1".."10", "0" and "1" would otherwise both silently mean label "1")."""
    if target_class is None or isinstance(target_class, int):
        return target_class
    names, text = list(class_names), str(target_class)
    if target_class not in names and not text.isdigit():
        raise ArgumentError("target_class", target_class,
                            f"not a class of this model; use an index 0..{len(names) - 1} or one of {first_few(names)}")
    index = names.index(target_class) if target_class in names else int(text)
    if text.isdigit() and any(name.isdigit() for name in names) and index < len(names):
        how = "the label" if target_class in names else "the index"
        warnings.warn(f"class {text!r}: read as {how}, class {index} ({names[index]!r}), as names are read before "
                      "indices", VisattnWarning, stacklevel=outside_visattn())
    return index


def explain_image(
    classifier: Classifier,
    image: Union[np.ndarray, "Image.Image"],
    method: Method,
    out: Union[str, os.PathLike],
    *,
    layer: Union[str, int, None] = None,
    head: Optional[int] = None,
    target_class: Union[int, str, None] = None,
) -> dict:
    """Classify and explain one decoded image with a loaded classifier and write the overlay image.

    Args:
        classifier: a :class:`visattn.inference.classifier.Classifier`.
        image: ``(H, W, 3)`` uint8 RGB image, e.g. from ``decode_image``, or what ``classifier.transform()`` takes
            besides (a gray array, a PIL image).
        method: see :func:`explain`.
        out: image path (PNG unless its suffix names another format): the image as the model sees it (the
            photo recipe's centre crop, so titled; the ``small`` recipe's whole image, at its own shape), the map
            over it, and the predicted label. A file already there is replaced only if visattn wrote it.
        layer, head: see :func:`explain`.
        target_class: ``gradcam``, ``gradcam++`` and ``gradrollout`` only: class index or name to explain
            (default: the prediction).

    Returns:
        ``{"label", "index", "prob", "method", "explained", "drawn_on", "out"}``: the prediction, the class
        whose map was drawn, ``"centre crop"`` or ``"whole image"`` and the written file.
    """
    target = check_figure_path(out, flag="out")  # before the work, as `visattn explain` checks --out
    image = rgb_array(image)  # its shape gives the squashed aspect below
    tensor = _loaded(classifier).transform()(image).to(classifier.device)  # (3, h, w), normalised
    probs = classifier.predict(tensor[None])[0]
    index = int(probs.argmax())
    explained = _class_to_index(target_class, classifier.class_names)
    try:
        heatmap = explain(classifier.model, tensor, method, layer=layer, head=head, target_class=explained)
    except ArgumentError as err:  # it names the index a class name was turned into (--class 8 for --class Bag)
        if err.argument != "target_class":
            raise
        raise ArgumentError("target_class", target_class, err.reason) from None
    label = classifier.class_names[index]
    title = f"{label} ({float(probs[index]):.2f}), {method}"
    if explained is not None and explained != index:
        title += f" for {classifier.class_names[explained]}"
    seen = model_view(tensor, classifier.preprocessing["mean"], classifier.preprocessing["std"])
    aspect = squashed_pixel_aspect(classifier.preprocessing, image.shape, tensor.shape)
    # the photo recipe's model sees a centre crop, and the map covers only that: titled "image", an object off the
    # centre of a wide photo would be in neither panel
    drawn_on = "centre crop" if classifier.preprocessing.get("recipe", "photo") == "photo" else "whole image"
    fig = overlay_figure(seen, heatmap, title=title, pixel_aspect=aspect,
                         image_title="the model's centre crop" if drawn_on == "centre crop" else "image")
    save_figure(fig, target, argument="out", command="explain")
    shown = classifier.class_names[index if explained is None else explained]
    return {"label": label, "index": index, "prob": float(probs[index]), "method": method,
            "explained": shown, "drawn_on": drawn_on, "out": str(out)}


def squashed_pixel_aspect(preprocessing: dict, source_shape: Sequence[int], input_shape: Sequence[int]) -> float:
    """Height over width of a model-input pixel (``input_shape`` ``(..., H, W)``) in the source image
    (``source_shape`` ``(H, W, ...)``): the ``small`` recipe squashes the whole image to the input size (a 120x40
    photo drew as a 28x28 square); the ``photo`` recipe's crop keeps its shape."""
    if preprocessing.get("recipe") != "small":
        return 1.0
    (height, width), (rows, cols) = source_shape[:2], input_shape[-2:]
    return (height / rows) / (width / cols)


def _with_boxes(transform: ImageTransform) -> A.Compose:
    """The classifier's evaluation pipeline, also moving ``pascal_voc`` (xyxy pixel) boxes with the image."""
    return A.Compose(list(transform.pipeline.transforms),
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]))


def evaluate_pointing(
    classifier: Classifier,
    scenes: Sequence[Scene],
    *,
    method: Optional[Method] = None,
    batch_size: int = 32,
    limit: Optional[int] = None,
    tolerance: float = 0.0,
    target: PointingTarget = "label",
) -> dict:
    """Top-1 accuracy and pointing-game accuracy of a classifier on single-object scenes.

    Each scene goes through the classifier's evaluation transform; its box goes through the same
    resize/crop (albumentations), and the map's peak on the model input must land in the box.

    Args:
        classifier: a :class:`visattn.inference.classifier.Classifier`.
        scenes: a sequence of scenes with one item each (``FashionScenes(min_items=1, max_items=1)``):
            objects with ``image`` ``(H, W, 3)`` uint8, ``boxes`` ``(1, 4)`` xyxy and ``labels`` ``(1,)``.
        method: explain method; default ``rollout`` for ViTs and ``gradcam`` for CNNs.
        batch_size: images explained at once.
        limit: score only the first ``limit`` scenes.
        tolerance: pixels (of the model input) by which boxes are grown.
        target: the class whose map (Grad-CAM's, Grad-CAM++'s, gradient rollout's) is scored: ``label``, the
            scene's class, as Zhang et al.'s pointing game asks, or ``prediction``, the class the classifier chose.
            Rollout, attention and gate maps do not depend on the class.

    Returns:
        ``{"top1", "pointing", "pointing_class_mean", "pointing_method", "n"}``: ``pointing`` over all scenes,
        ``pointing_class_mean`` the mean of each class's, as Zhang et al. average it; scenes whose box the crop
        removes are skipped.
    """
    method = method or ("rollout" if gives_attention(_loaded(classifier).model) else "gradcam")
    if target not in get_args(PointingTarget):
        raise ArgumentError("target", target, "use label (the scene's class, as the pointing game asks) or prediction")
    by_label = method in CLASS_METHODS and target == "label"
    pipeline = _with_boxes(classifier.transform())
    count = len(scenes) if limit is None else min(limit, len(scenes))
    correct, tally = 0, _PointingTally()
    for start in range(0, count, batch_size):
        batch, boxes, labels = _scene_batch(pipeline, scenes, range(start, min(start + batch_size, count)))
        if not boxes:
            continue
        batch = batch.to(classifier.device)  # once, for the prediction and the map
        predictions = classifier.predict(batch).argmax(dim=1)
        explained = labels.to(classifier.device) if by_label else None
        maps = explain_batch(classifier.model, batch, method, target_class=explained).cpu()
        size = tuple(batch.shape[-2:])
        centres = map_centres(classifier.model, maps.shape[-2:], size)
        tally.add(labels, [pointing_hit(m, b, size, tolerance=tolerance, centres=centres) for m, b in zip(maps, boxes)])
        correct += int((predictions == labels).sum())
    scores = tally.scores()
    if method in CLASS_METHODS:
        method = f"{method} of the {'true' if by_label else 'predicted'} class"
    return {"top1": reported_score(correct / tally.n), **scores, "pointing_method": method, "n": tally.n}


def evaluate_class_pointing(
    classifier: Classifier,
    scenes: Sequence[Scene],
    *,
    method: Optional[Literal["gradcam", "gradcam++", "gradrollout"]] = None,
    batch_size: int = 32,
    limit: Optional[int] = None,
    tolerance: float = 0.0,
) -> dict:
    """The pointing game with distractors (Zhang et al., "Top-down Neural Attention by Excitation
    Backprop", ECCV 2016): in scenes of several items, the Grad-CAM map of each class present must
    peak inside a box of that class.

    On one bright item on a black canvas, a map that merely follows brightness finds the item, and
    an untrained network's often does; with a second item of another class, such a map can hit the
    named one only about half the time. The maps are asked for the true class, not the prediction.

    Args:
        classifier: a :class:`visattn.inference.classifier.Classifier`.
        scenes: scenes of one or more items (``FashionScenes``, or ``fashion-mnist-pairs``' scenes).
        method: the class's map: ``gradcam`` (the default), ``gradcam++`` or, for ViTs, ``gradrollout``.
        batch_size: (scene, class) pairs explained at once.
        limit: score only the first ``limit`` scenes.
        tolerance: pixels (of the model input) by which boxes are grown.

    Returns:
        ``{"pointing", "pointing_class_mean", "pointing_method", "n"}``, ``n`` counting (scene, class) pairs:
        ``pointing`` over all pairs, ``pointing_class_mean`` the mean of each class's accuracy, as Zhang et al.
        average it.
    """
    method = method or "gradcam"
    if method not in CLASS_METHODS:
        raise ArgumentError("method", method, "the pointing game with distractors asks for a class's map; use "
                                              "gradcam, gradcam++ or, for a ViT, gradrollout")
    pipeline = _with_boxes(_loaded(classifier).transform())
    count = len(scenes) if limit is None else min(limit, len(scenes))
    tally = _PointingTally()
    for start in range(0, count, batch_size):
        images, classes, boxes = _class_queries(pipeline, scenes, range(start, min(start + batch_size, count)))
        if not boxes:
            continue
        maps = explain_batch(classifier.model, images.to(classifier.device), method,
                             target_class=classes.to(classifier.device))
        size = tuple(images.shape[-2:])
        centres = map_centres(classifier.model, maps.shape[-2:], size)
        tally.add(classes, [pointing_hit(m, b, size, tolerance=tolerance, centres=centres)
                            for m, b in zip(maps.cpu(), boxes)])
    return {**tally.scores(), "pointing_method": f"{method} of each class present", "n": tally.n}


def evaluate_faithfulness(
    classifier: Classifier,
    dataset: Dataset,
    *,
    method: Optional[Method] = None,
    fill: Fill = "black",
    steps: int = 16,
    batch_size: int = 32,
    limit: Optional[int] = None,
) -> dict:
    """Deletion and insertion areas (RISE's, :mod:`visattn.explain.faithfulness`) of a classifier's maps of its
    predicted classes over a labelled dataset, beside those of random maps of the same images.

    Args:
        classifier: a :class:`visattn.inference.classifier.Classifier`.
        dataset: ``(image, label)`` samples through the classifier's evaluation transform
            (:func:`visattn.inference.classifier_scoring.evaluation_dataset`).
        method: explain method; default ``rollout`` for ViTs and ``gradcam`` for CNNs.
        fill: what deleted pixels become: ``black``, ``mean`` (the normalisation's mean colour, RISE's), ``blur``
            or ``imputed`` (from their neighbours, ROAD's noisy linear imputation; seeded).
        steps: points of each curve besides the first.
        batch_size: images explained at once.
        limit: score ``limit`` images drawn across the dataset with a fixed seed.

    Returns:
        ``{"deletion", "insertion", "random_deletion", "random_insertion", "faithfulness_method", "fill", "steps",
        "n"}``: mean areas over the images (deletion: lower is more faithful; insertion: higher), and the random
        maps' (uniform noise drawn with a fixed seed) to measure them against.
    """
    from ..data.image_folder import evaluation_batches, seeded_subset

    model = _loaded(classifier).model
    method = method or ("rollout" if gives_attention(model) else "gradcam")
    check_method(model, method)  # before any image is scored
    check_fill(fill)
    noise, imputation_noise = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    areas: dict[str, list[Tensor]] = {"deletion": [], "insertion": [], "random_deletion": [], "random_insertion": []}
    for batch in evaluation_batches(seeded_subset(dataset, limit), batch_size=batch_size):
        if batch is None:  # only broken files
            continue
        images = batch[0].to(classifier.device)
        classes = classifier.predict(images).argmax(dim=1)
        size = tuple(images.shape[-2:])
        maps = _normalized(model, explain_batch(model, images, method, target_class=classes if method in
                                                CLASS_METHODS else None), size)
        random_maps = torch.rand(len(images), *size, generator=noise).to(images.device)
        deleted = deletion_fill(images, fill, classifier.preprocessing["mean"], classifier.preprocessing["std"],
                                generator=imputation_noise)
        for prefix, heat in (("", maps), ("random_", random_maps)):
            deletion, insertion = deletion_insertion_curves(model, images, heat, classes, deleted, steps=steps)
            areas[f"{prefix}deletion"].append(curve_area(deletion).cpu())
            areas[f"{prefix}insertion"].append(curve_area(insertion).cpu())
    if not areas["deletion"]:
        raise ConfigError("no images to score; check --dataset, --split and --limit")
    means = {key: reported_score(float(torch.cat(values).mean())) for key, values in areas.items()}
    count = sum(len(values) for values in areas["deletion"])
    return {**means, "faithfulness_method": method, "fill": fill, "steps": steps, "n": count}


def evaluate_randomization(
    classifier: Classifier,
    dataset: Dataset,
    *,
    method: Optional[Method] = None,
    mode: Mode = "cascading",
    batch_size: int = 32,
    limit: Optional[int] = None,
) -> dict:
    """The model parameter randomization test (Adebayo et al.'s, :mod:`visattn.explain.randomization`) of a
    classifier's maps of its predicted classes over a labelled dataset.

    Args:
        classifier: a :class:`visattn.inference.classifier.Classifier`.
        dataset: ``(image, label)`` samples through the classifier's evaluation transform
            (:func:`visattn.inference.classifier_scoring.evaluation_dataset`).
        method: explain method; default ``rollout`` for ViTs and ``gradcam`` for CNNs.
        mode: ``cascading`` re-draws the model from its output down to each stage in turn; ``independent`` each
            stage alone.
        batch_size: images explained at once.
        limit: score ``limit`` images drawn across the dataset with a fixed seed.

    Returns:
        ``{"method", "mode", "another_image": {"spearman", "ssim"}, "steps": [{"stage", "spearman", "ssim"}, ...],
        "n"}``: mean similarities of each image's map to the trained model's, for each step's model (a method that
        passes falls towards 0 in the cascade), and of another image's map by the trained model, the level any two
        of its maps share.
    """
    from ..data.image_folder import evaluation_batches, seeded_subset

    model = as_module(_loaded(classifier).model)
    method = method or ("rollout" if gives_attention(model) else "gradcam")
    check_method(model, method)
    check_mode(mode)
    stages = None
    # "" holds each trained map against the next image's in its batch (a batch of one has none)
    similarities: dict[str, list[tuple[Tensor, Tensor]]] = {"": []}
    for batch in evaluation_batches(seeded_subset(dataset, limit), batch_size=batch_size):
        if batch is None:  # only broken files
            continue
        images = model_batch(model, batch[0].to(classifier.device))
        classes = classifier.predict(images).argmax(dim=1) if method in CLASS_METHODS else None
        stages = stages or forward_stages(model, images[:1])
        size = tuple(images.shape[-2:])
        trained = _normalized(model, explain_batch(model, images, method, target_class=classes), size)
        if len(images) > 1:
            similarities[""].append(map_similarity(trained, trained.roll(1, dims=0)))
        for name, randomized in randomized_models(model, stages, mode=mode):
            maps = _normalized(randomized, explain_batch(randomized, images, method, target_class=classes), size)
            similarities.setdefault(name, []).append(map_similarity(trained, maps))
    if stages is None:
        raise ConfigError("no images to score; check --dataset, --split and --limit")
    means = {name: {measure: reported_score(float(torch.cat(values).mean()))
                    for measure, values in zip(("spearman", "ssim"), zip(*pairs))} if pairs else None
             for name, pairs in similarities.items()}
    reference = means.pop("")
    count = sum(len(spearman) for spearman, _ in similarities[stages[-1][0]])
    return {"method": method, "mode": mode, "another_image": reference,
            "steps": [{"stage": name, **scores} for name, scores in means.items()], "n": count}


class _PointingTally:
    """Hits of the pointing game by class: ``pointing`` over all items, and ``pointing_class_mean``, the mean of
    each class's accuracy, which is how Zhang et al. (and TorchRay) average it; the two differ when classes are
    unequally often asked about."""

    def __init__(self) -> None:
        self.hits: dict[int, list[bool]] = {}

    @property
    def n(self) -> int:
        return sum(len(hits) for hits in self.hits.values())

    def add(self, classes: Tensor, hits: Sequence[bool]) -> None:
        for cls, hit in zip(classes.tolist(), hits):
            self.hits.setdefault(cls, []).append(bool(hit))

    def scores(self) -> dict[str, float]:
        if not self.hits:
            raise ConfigError("no scenes to score; check --dataset, --split and --limit")
        per_class = [sum(hits) / len(hits) for hits in self.hits.values()]
        return {"pointing": reported_score(sum(map(sum, self.hits.values())) / self.n),
                "pointing_class_mean": reported_score(sum(per_class) / len(per_class))}


def _loaded(classifier: Any) -> Classifier:
    """``classifier`` when it is a loaded classifier, which knows how its images are prepared; one line for a bare
    model, which does not (the explain functions that take one take either)."""
    if not all(hasattr(classifier, name) for name in ("transform", "model", "device", "predict")):
        raise ArgumentError("classifier", type(classifier).__name__, "give a loaded classifier, "
                            "visattn.load_classifier(...): it knows how its images are prepared, a bare model does not")
    return classifier


def _class_queries(pipeline: A.Compose, scenes: Sequence[Scene], indices: range) -> tuple[Tensor, Tensor, list]:
    """One row per (scene, class present): the transformed image ``(Q, 3, h, w)``, the class ``(Q,)``
    and that class's moved boxes ``(K, 4)``."""
    images, classes, boxes = [], [], []
    for index in indices:
        scene = scenes[index]
        out = pipeline(image=scene.image, bboxes=scene.boxes, labels=scene.labels)
        moved, labels = np.asarray(out["bboxes"]).reshape(-1, 4), np.asarray(out["labels"])
        for label in np.unique(labels):
            images.append(out["image"])
            classes.append(int(label))
            boxes.append(moved[labels == label])
    batch = torch.stack(images) if images else torch.empty(0)
    return batch, torch.tensor(classes, dtype=torch.long), boxes


def _scene_batch(pipeline: A.Compose, scenes: Sequence[Scene], indices: range) -> tuple[Tensor, list, Tensor]:
    """Transformed images ``(B, 3, h, w)``, their moved boxes and labels ``(B,)``, skipping cropped-out items."""
    images, boxes, labels = [], [], []
    for index in indices:
        scene = scenes[index]
        if len(scene.boxes) != 1:
            raise ConfigError(f"scene {index} has {len(scene.boxes)} items; pointing needs single-object scenes")
        out = pipeline(image=scene.image, bboxes=scene.boxes, labels=scene.labels)
        if len(out["bboxes"]):
            images.append(out["image"])
            boxes.append(np.asarray(out["bboxes"][0]))
            labels.append(int(scene.labels[0]))
    batch = torch.stack(images) if images else torch.empty(0)
    return batch, boxes, torch.tensor(labels, dtype=torch.long)
