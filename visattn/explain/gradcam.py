"""Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization") and Grad-CAM++ (Chattopadhay et al. 2018, "Grad-CAM++: Generalized
Gradient-based Visual Explanations for Deep Convolutional Networks").

The target layer's activations ``A`` (channels ``k``) are weighted by the spatial mean of the
class score's gradient, ``w_k = mean_ij dy_c / dA_kij``, and ``relu(sum_k w_k A_k)`` is the map.
Grad-CAM++ weighs each position's positive gradient instead, ``w_k = sum_ij a_kij relu(g_kij)`` with
``g = dy_c / dA`` and ``a_kij = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (the paper's closed form for the
exponential of the score), so a channel that fires strongly at a few places is not averaged away.
For a Vision Transformer the target layer yields tokens ``(B, N, C)``: the prefix (class) tokens
are dropped and the patch tokens are laid back on their grid, ``(B, C, rows, cols)``. Tokens of other
timm transformers (LeViT, XCiT, EfficientFormer, CoaT, CrossViT, MViTv2) are laid out the same way, on
the grid of the image's aspect that their count (less 0 to 2 prefix tokens) fills; a layer that
returns a tuple (PiT's map and class tokens, CrossViT's branches) is explained by its first map.

Default target layers: the last stage of a ResNet (``layer4``, or ``layer3`` in the CIFAR
layout) or of a timm CNN (its ``feature_info``'s last module), and the first norm of the last ViT block (``blocks[-1].norm1``), whose patch tokens
still carry spatial information (the final norm's do not reach the class-token head).
"""
from __future__ import annotations

import math
import re
from typing import Optional, Union

import torch
from torch import Tensor, nn

from ..errors import ArgumentError, ConfigError
from ..modes import eval_mode
from ..wrapped_models import as_module
from .attention import as_index, is_vit, model_batch, token_grid

TargetClass = Union[int, Tensor, None]


def default_target_layer(model: nn.Module) -> nn.Module:
    """``blocks[-1].norm1`` of a ViT, else the last stage of a ResNet (``model.stage_names[-1]``) or of a timm
    model (its ``feature_info``'s last module; where that is missing, its last ``stages`` or ``blocks``), else a
    torchvision ResNet's last ``layerN``."""
    if is_vit(model):
        return model.blocks[-1].norm1
    stages = getattr(model, "stage_names", None)
    if stages:
        return getattr(model, stages[-1])
    features = getattr(model, "feature_info", None)
    if isinstance(features, list) and features and isinstance(features[-1], dict) and "module" in features[-1]:
        try:
            return _called(model.get_submodule(features[-1]["module"]))
        except AttributeError:  # timm's MViTv2 and Twins name a module they do not have ("block.3")
            last = getattr(model, "stages", None) or getattr(model, "blocks", None)
            if isinstance(last, (nn.ModuleList, nn.Sequential)) and len(last):
                return _called(last[-1])
    layers = [module for name, module in model.named_children() if re.fullmatch(r"layer\d+", name)]
    if layers:  # torchvision's ResNets, which have no feature_info (timm's HRNet has a layer1, its first stage)
        return layers[-1]
    top = ", ".join(name for name, _ in model.named_children())
    raise ConfigError(f"no default Grad-CAM layer for {type(model).__name__}; name one with --layer (layer= in "
                      f"Python): a stage among {top}")


def resolve_target_layer(model: nn.Module, layer: Union[str, int, nn.Module, None]) -> nn.Module:
    """A module given by name (``"layer3"``, ``"blocks.5.norm1"``, an ``nn.Sequential``'s ``"0"``), by ViT block
    index, or the default."""
    if layer is None:
        return default_target_layer(model)
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(model.named_modules())
    index = as_index(layer)
    if index is not None and not is_vit(model) and isinstance(layer, str) and layer in modules:
        index = None  # an nn.Sequential's child (torchvision's features.N at the top: "0")
    if index is not None:
        if not is_vit(model):
            raise ArgumentError("layer", layer, "a block index needs a ViT; name a module instead, e.g. 'layer3'")
        if not -len(model.blocks) <= index < len(model.blocks):
            raise ArgumentError("layer", layer, f"this model has {len(model.blocks)} blocks")
        return model.blocks[index].norm1
    if layer not in modules:
        stages = ", ".join(n for n in modules if n and "." not in n)
        raise ArgumentError("layer", layer, f"no such module; top-level modules are {stages}")
    return _called(modules[layer])


def _called(module: nn.Module) -> nn.Module:
    """The module itself, or the last one of a ModuleList, which the forward never calls as a whole
    (timm's CoaT names one in its ``feature_info``)."""
    while isinstance(module, nn.ModuleList) and len(module):
        module = module[-1]
    return module


def _unused_layer_message(model: nn.Module, target: nn.Module) -> str:
    name = next(n for n, m in model.named_modules() if m is target)
    blocks = getattr(target, "blocks", None)
    example = f", e.g. {name}.blocks.{len(blocks) - 1}" if isinstance(blocks, nn.Sequential) and len(blocks) else ""
    return (f"the class score does not depend on the map of the Grad-CAM layer {name or 'the model'} (timm's PiT "
            f"passes on only the class token of its last stage); name a layer inside it with --layer (layer= in "
            f"Python){example}")


def _first_map(output: object) -> Optional[Tensor]:
    """The layer's output, or the first ``(B, C, H, W)`` map or ``(B, N, C)`` tokens of a tuple or list."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)):
        return next((t for t in output if torch.is_tensor(t) and t.ndim in (3, 4)), None)
    return None


def _token_grid(count: int, image_size: tuple[int, int]) -> Optional[tuple[int, int]]:
    """``(rows, cols)`` with ``rows * cols == count`` that some stride ``s`` gives for the image,
    ``rows = ceil(H / s)`` and ``cols = ceil(W / s)``; ``None`` if none does (a square image: a square grid)."""
    height, width = image_size
    for rows in range(1, count + 1):
        cols = count // rows
        if rows * cols != count:
            continue
        low = max(height / rows, width / cols)  # strides at which ceil(H / s) == rows and ceil(W / s) == cols
        high = min(height / (rows - 1) if rows > 1 else math.inf, width / (cols - 1) if cols > 1 else math.inf)
        if low < high:
            return rows, cols
    return None


def _transformer_tokens_map(model: nn.Module, tokens: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Tokens ``(B, N, C)`` of a transformer other than a ViT on their grid; the model's prefix tokens (class,
    distillation) first, else none to two, as many as leave a grid of the image (XCiT adds its class
    token after the blocks, CoaT's and CrossViT's do not say how many they have)."""
    declared = getattr(model, "num_prefix_tokens", None)
    for prefix in dict.fromkeys(p for p in (declared, 0, 1, 2) if isinstance(p, int) and p < tokens.shape[1]):
        grid = _token_grid(tokens.shape[1] - prefix, image_size)
        if grid:
            patches = tokens[:, prefix:]  # (B, rows * cols, C)
            return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)  # (B, C, rows, cols)
    raise ConfigError(f"the Grad-CAM layer gives {tokens.shape[1]} tokens, which lie on no grid of a "
                      f"{image_size[0]}x{image_size[1]} image; name a layer of {type(model).__name__} that gives a "
                      "map with layer= (--layer)")


def _as_feature_map(model: nn.Module, activation: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``(B, C, h, w)`` from a conv activation (channels-last ``(B, h, w, C)`` where the model says so, as timm's
    Swin does), or from ViT tokens ``(B, N, C)`` without the prefix tokens."""
    if activation.ndim == 4:
        return activation.permute(0, 3, 1, 2) if getattr(model, "output_fmt", "NCHW") == "NHWC" else activation
    if activation.ndim == 3 and is_vit(model):
        rows, cols = token_grid(model, image_size)
        # (B, rows * cols, C); a layer before the class token is added (patch_embed) has none to drop
        patches = activation if activation.shape[1] == rows * cols else activation[:, model.num_prefix_tokens:]
        if patches.shape[1] != rows * cols:
            raise ConfigError(f"the target layer gives {patches.shape[1]} patch tokens, not a {rows}x{cols} grid; "
                              "pick a layer inside the transformer blocks")
        # C from the tokens, not -1: an empty batch leaves -1 undetermined
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], rows, cols)  # (B, C, rows, cols)
    if activation.ndim == 3:
        return _transformer_tokens_map(model, activation, image_size)
    raise ConfigError(f"the Grad-CAM layer outputs shape {tuple(activation.shape)}, not a (B, C, H, W) map or a ViT's "
                      f"patch tokens; name a layer of {type(model).__name__} that gives a map with layer= (--layer)")


def explained_classes(logits: Tensor, target_class: TargetClass) -> Tensor:
    """The class explained in each image ``(B,)``: ``target_class`` (one, or one per image), else the predicted."""
    if target_class is None:
        return logits.argmax(dim=1)
    try:
        index = torch.as_tensor(target_class, device=logits.device)
        if index.is_floating_point() or index.dtype == torch.bool or index.ndim > 1:  # True would be class 1
            raise TypeError
        index = index.long().expand(logits.shape[0])
    except (TypeError, ValueError, RuntimeError):
        given = (f"a tensor of shape {tuple(target_class.shape)}" if isinstance(target_class, Tensor)
                 else repr(target_class))  # a tensor's repr takes a line per row
        raise ConfigError(f"target_class={given}: give one class index, or one per image "
                          f"({logits.shape[0]} here); class names go through explain_image or --class") from None
    if index.min() < 0 or index.max() >= logits.shape[1]:
        raise ArgumentError("target_class", target_class,
                            f"the model has {logits.shape[1]} classes (0..{logits.shape[1] - 1})")
    return index


def grad_cam(
    model: nn.Module,
    images: Tensor,
    *,
    layer: Union[str, int, nn.Module, None] = None,
    target_class: TargetClass = None,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps of a batch.

    Args:
        model: a classifier returning logits ``(B, classes)`` (or a loaded ``Classifier``); run in eval mode
            for the call.
        images: normalised float images ``(B, C, H, W)``, ``C`` the model's channels; any device and
            floating dtype (they run on the model's).
        layer: target module, its name, a ViT block index, or ``None`` for the default.
        target_class: class index (or one per image) to explain; ``None``: the predicted class.

    Returns:
        ``(maps, classes)``: non-negative float32 maps ``(B, h, w)`` on the layer's grid, and the
        explained class of each image ``(B,)``.
    """
    features, grads, classes = _feature_map_and_gradient(model, images, layer, target_class)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    return torch.relu((weights * features).sum(dim=1)), classes  # (B, h, w)


def grad_cam_plus_plus(
    model: nn.Module,
    images: Tensor,
    *,
    layer: Union[str, int, nn.Module, None] = None,
    target_class: TargetClass = None,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM++ maps of a batch: :func:`grad_cam`'s arguments, layers and returns, with each channel weighed by
    its positive gradients, each scaled by the paper's ``a_kij``.

    pytorch-grad-cam's ``GradCAMPlusPlus`` (1.5.7) adds 1e-6 to the denominator of ``a_kij``, which outweighs
    ``2 g^2`` where gradients are small: with it added here, a one-off check found its maps and these equal within
    1.4e-6 (each scaled to [0, 1]) on SE-ResNet-20, ResNet-18 and CBAM-ResNet-18; without it, as here, they differ
    by up to 0.07."""
    features, grads, classes = _feature_map_and_gradient(model, images, layer, target_class)
    # a = g^2 / (2 g^2 + S g^3) = 1 / (2 + S g) where g != 0 (g^2 of a small gradient underflows in float32); where
    # g == 0, relu(g) weighs a by 0
    spread = 2 + features.sum(dim=(2, 3), keepdim=True) * grads  # (B, C, h, w)
    alpha = torch.where(spread != 0, spread.reciprocal(), 0.0)
    weights = (alpha * torch.relu(grads)).sum(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    return torch.relu((weights * features).sum(dim=1)), classes  # (B, h, w)


def _feature_map_and_gradient(model: nn.Module, images: Tensor, layer: Union[str, int, nn.Module, None],
                              target_class: TargetClass) -> tuple[Tensor, Tensor, Tensor]:
    """The target layer's activation and its class score's gradient as float32 maps ``(B, C, h, w)``, and the
    explained classes ``(B,)``."""
    model = as_module(model)
    if getattr(model, "num_classes", None) == 0:  # it would explain the largest pooled feature as a class
        raise ConfigError(f"Grad-CAM explains a class score, and this {type(model).__name__} has no classifier head "
                          "(num_classes=0); build it with num_classes=N or load a classifier's weights (a ViT's "
                          "attention is explained without one: method 'rollout' or 'attention')")
    images = model_batch(model, images)
    target = resolve_target_layer(model, layer)
    features, grads, classes = _activation_and_gradient(model, target, images, target_class)
    size = tuple(images.shape[-2:])
    # float32 whatever the model's dtype, as the other maps are (numpy, and so the overlays, take no bfloat16)
    return _as_feature_map(model, features, size).float(), _as_feature_map(model, grads, size).float(), classes


def _activation_and_gradient(model: nn.Module, target: nn.Module, images: Tensor,
                             target_class: TargetClass) -> tuple[Tensor, Tensor, Tensor]:
    """``target``'s output in ``model``'s forward of ``images``, the gradient of each image's explained class score
    with respect to it, and those classes ``(B,)``."""
    captured: list[Tensor] = []

    def capture(module: nn.Module, args: tuple, output: object) -> object:
        explained = _first_map(output)
        if explained is None:
            return output
        captured.append(explained)
        # The rest of the forward gets a copy: an in-place op after the layer (ReLU(inplace=True) after a
        # BN) would otherwise overwrite the activation explained with its own output.
        if torch.is_tensor(output):
            return explained.clone()
        copied = [t.clone() if t is explained else t for t in output]
        return type(output)(*copied) if hasattr(output, "_fields") else type(output)(copied)  # a named tuple's fields

    # Works under an outer inference_mode / no_grad; the input needs a gradient even if the parameters are
    # frozen, so every activation is on the autograd graph. The model's lock (eval_mode) keeps the hook this
    # call's: without it, the hook can record another thread's forward.
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        handle = target.register_forward_hook(capture)
        try:
            inputs = images.detach().clone().requires_grad_(True)
            logits = model(inputs)
            classes = explained_classes(logits, target_class)
            if not captured:
                raise ConfigError("the Grad-CAM layer did not produce a map in the forward pass; pick another layer")
            score = logits.gather(1, classes[:, None]).sum()  # images are independent in eval mode
            (grads,) = torch.autograd.grad(score, captured[-1], allow_unused=True)
            if grads is None:
                raise ConfigError(_unused_layer_message(model, target))
        finally:
            handle.remove()
    return captured[-1].detach(), grads, classes.detach()
