"""Raw self-attention maps of a Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth
16x16 Words", Fig. 6): the attention one layer's class token (or, without one, the average token)
pays to each image patch.

The attention comes from ``model(x, return_attention=True)``, which visattn ViTs compute on an
explicit softmax path, so it is available even when fused scaled-dot-product attention is on; timm's ViTs of
its plain ``Attention`` have it recomputed from each block's input, caught by a hook, as their fused kernel
computes it.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..data.transforms import check_image_batch, to_model_input
from ..errors import ArgumentError, ConfigError, is_count, is_index
from ..layers.attention import attention_probs
from ..layers.patch_embed import check_patch_input, patch_grid
from ..wrapped_models import as_module


def is_vit(model: nn.Module) -> bool:
    """Whether ``model`` is a Vision Transformer: ``blocks`` over prefix tokens and a patch grid
    (``model.grid_size`` of visattn's, ``model.patch_embed.grid_size`` of timm's)."""
    grid = getattr(model, "grid_size", None) or getattr(getattr(model, "patch_embed", None), "grid_size", None)
    return grid is not None and hasattr(model, "num_prefix_tokens") and hasattr(model, "blocks")


def gives_attention(model: nn.Module) -> bool:
    """Whether ``model`` is a ViT whose per-block attention can be read: visattn's return it
    (``forward(x, return_attention=True)``); timm's compute it inside fused kernels, and it is recomputed here for
    those whose every block has timm's plain ``Attention``."""
    if not is_vit(model):
        return False
    return returns_attention(model) or bool(timm_attention_modules(model))


def returns_attention(model: nn.Module) -> bool:
    """Whether ``model``'s forward takes ``return_attention`` (visattn's ViTs), giving each block's probabilities."""
    return "return_attention" in inspect.signature(model.forward).parameters


def timm_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The blocks' attention modules of a timm ViT whose probabilities :func:`collect_attentions` recomputes exactly
    (timm's ``Attention``: ``qkv``, its q and k norms, the scaled softmax); none for others (rotary, windowed)."""
    from timm.models.vision_transformer import Attention  # where every timm 1.0 has it

    modules = [getattr(block, "attn", None) for block in getattr(model, "blocks", ())]
    return modules if modules and all(type(module) is Attention for module in modules) else []


def check_gives_attention(model: nn.Module, *, method: Optional[str] = None) -> None:
    """One line unless ``model`` gives per-block attention (see :func:`gives_attention`); it names
    ``method``, the explain method that asked, if one did."""
    if gives_attention(model):
        return
    name = type(model).__name__
    if is_vit(model):
        reason = (f"only visattn's ViTs and timm's of its plain Attention give their attention; use method 'gradcam' "
                  f"for {name}")
        if method is not None:
            raise ArgumentError("method", method, reason)
        raise ConfigError(f"attention maps: {reason}")
    raise ConfigError(f"{name} has no transformer attention; use method 'gradcam' (or 'gates' for attention CNNs)")


def input_channels(model: nn.Module) -> int:
    """The image channels ``model`` reads: ``input_size[0]`` of registered models, else its first
    convolution's (the stem or patch embedding of a model built elsewhere, e.g. by timm)."""
    size = getattr(model, "input_size", None)
    if size:
        return int(size[0])
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first_conv.in_channels if first_conv is not None else 3


def model_batch(model: nn.Module, images: Tensor) -> Tensor:
    """``images`` checked to be a float batch ``(B, C, H, W)`` of ``model``'s channels and a size its patch embedding
    takes, on its device in its dtype."""
    check_image_batch(images, channels=input_channels(model))
    check_patch_input(model, images.shape[-2:])
    return to_model_input(images, model)


def token_grid(model: nn.Module, image_size: Sequence[int]) -> tuple[int, int]:
    """Patch grid ``(rows, cols)`` of a ViT for an input of ``image_size = (H, W)``."""
    embed = getattr(model, "patch_embed", None)
    if getattr(embed, "patch_size", None) is None:
        return tuple(model.grid_size)
    return patch_grid(embed, image_size)


def as_index(layer: Union[str, int, None]) -> Optional[int]:
    """``layer`` as an integer index when it is one (``3``, ``"-1"``), else ``None`` (a name, or no layer)."""
    if is_index(layer):
        return int(layer)
    if isinstance(layer, str) and layer.lstrip("-").isdigit():
        return int(layer)
    return None


@torch.no_grad()
def collect_attentions(model: nn.Module, images: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Logits ``(B, classes)`` and every block's attention probabilities, a list of ``(B, heads, N, N)``."""
    model = as_module(model)  # a compiled model runs no hook added after its first call
    check_gives_attention(model)
    if returns_attention(model):
        logits, attentions = model(images, return_attention=True)
        return logits, list(attentions)
    modules = timm_attention_modules(model)
    with recorded_inputs(modules) as inputs:
        logits = model(images)
    return logits, [_timm_attention_probs(module, x) for module, x in once_each_in_order(model, inputs, modules)]


@contextlib.contextmanager
def recorded_inputs(modules: Sequence[nn.Module]) -> Iterator[list[tuple[nn.Module, Tensor]]]:
    """Each call of ``modules`` inside the block, in call order, as ``(module, its first input)``: caught by forward
    pre-hooks, which are removed on the way out (left on, they would keep every later forward's inputs)."""
    inputs: list[tuple[nn.Module, Tensor]] = []
    handles = [module.register_forward_pre_hook(lambda module, args: inputs.append((module, args[0])))
               for module in modules]
    try:
        yield inputs
    finally:
        for handle in handles:
            handle.remove()


def once_each_in_order(model: nn.Module, inputs: list[tuple[nn.Module, Tensor]],
                       modules: Sequence[nn.Module]) -> list[tuple[nn.Module, Tensor]]:
    """``inputs`` (of :func:`recorded_inputs`) when ``modules`` ran once each, in order; one line otherwise (a block
    run twice, or skipped: the maps would be another's)."""
    if [module for module, _ in inputs] != list(modules):
        raise ConfigError(f"{type(model).__name__} ran its blocks' attention otherwise than once each in order; "
                          "use method 'gradcam'")
    return inputs


def _timm_attention_probs(module: nn.Module, x: Tensor) -> Tensor:
    """timm's ``Attention`` probabilities for its input ``x`` ``(B, N, C)``: ``(B, heads, N, N)``."""
    # (3, B, heads, N, head_dim)
    qkv = module.qkv(x).reshape(x.shape[0], x.shape[1], 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    return attention_probs(module.q_norm(qkv[0]), module.k_norm(qkv[1]), module.scale)


def attention_pool_reading(pool: nn.Module, tokens: Tensor) -> Tensor:
    """How much an attention pool (visattn's or timm's ``AttentionPoolLatent``) reads of each of the tokens it
    pools, ``(B, N)``: its query's attention over them, averaged over its heads (timm's several latent queries:
    the first's, whose output it keeps, or their mean where it averages them)."""
    if getattr(pool, "pos_embed", None) is not None:  # timm's "abs" pool embeds the tokens' positions first
        tokens = tokens + pool.pos_embed.unsqueeze(0).to(tokens.dtype)
    batch, count, _ = tokens.shape
    latents = pool.latent.shape[1]
    # query (1, heads, latents, head_dim); keys (B, heads, N, head_dim), the kv projection's first half
    query = pool.q(pool.latent).reshape(1, latents, pool.num_heads, pool.head_dim).transpose(1, 2)
    keys = pool.kv(tokens).reshape(batch, count, 2, pool.num_heads, pool.head_dim)[:, :, 0].transpose(1, 2)
    query, keys = getattr(pool, "q_norm", nn.Identity())(query), getattr(pool, "k_norm", nn.Identity())(keys)
    probs = attention_probs(query.expand(batch, -1, -1, -1), keys, pool.scale)  # (B, heads, latents, N)
    reading = probs.mean(dim=2) if getattr(pool, "pool", "token") == "avg" else probs[:, :, 0]
    return reading.mean(dim=1)


def token_map(rows: Tensor, grid: tuple[int, int], num_prefix_tokens: int, *,
              pooled: Union[bool, Tensor] = False) -> Tensor:
    """``(B, N, N)`` attention (or rollout) -> ``(B, rows, cols)`` map over the patches.

    The rows of the tokens the head reads: the class token's, or, when the head pools the patch
    tokens (``pooled``, ``global_pool="avg"``; always without prefix tokens), the patch tokens' rows
    averaged, or weighted by ``pooled`` where it holds how much an attention pool reads of each patch token,
    ``(B, rows * cols)`` (``global_pool="map"``).
    """
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2 and all(map(is_count, grid))):
        raise ArgumentError("grid", grid, "give the patch grid as (rows, cols), e.g. (14, 14)")
    if torch.is_tensor(pooled):
        weights = (pooled[:, :, None].to(rows.dtype) * rows[:, num_prefix_tokens:]).sum(dim=1)  # (B, N)
    elif num_prefix_tokens > 0 and not pooled:
        weights = rows[:, 0]
    else:
        weights = rows[:, num_prefix_tokens:].mean(dim=1)
    patches = weights[:, num_prefix_tokens:]  # (B, rows * cols)
    if patches.shape[1] != grid[0] * grid[1]:
        raise ConfigError(f"{patches.shape[1]} patch tokens do not fill a {grid[0]}x{grid[1]} grid; "
                          "check num_prefix_tokens")
    return patches.reshape(-1, *grid)


def attention_map(
    attentions: Sequence[Tensor],
    grid: tuple[int, int],
    *,
    layer: int = -1,
    head: Optional[int] = None,
    num_prefix_tokens: int = 1,
    pooled: Union[bool, Tensor] = False,
) -> Tensor:
    """One layer's attention over the patch grid.

    Args:
        attentions: per-block attention probabilities, each ``(B, heads, N, N)``.
        grid: patch grid ``(rows, cols)``; ``N = num_prefix_tokens + rows * cols``.
        layer: block index (negative counts from the last).
        head: head index; ``None`` averages the heads.
        num_prefix_tokens: class/register tokens before the patches; with none, the map is the
            attention each patch receives averaged over all query tokens.
        pooled: the head averages the patch tokens (``global_pool="avg"``) instead of reading the
            class token: the map is then their rows' mean, as without prefix tokens; or ``(B, rows * cols)``
            weights, an attention pool's reading of each patch token, for their rows' weighted sum.

    Returns:
        ``(B, rows, cols)`` map.
    """
    if not is_index(layer):
        raise ArgumentError("layer", layer, "give a block's index, a whole number (-1 for the last block)")
    if not -len(attentions) <= layer < len(attentions):
        raise ArgumentError("layer", layer, f"this model has {len(attentions)} blocks (use 0..{len(attentions) - 1} or -1)")
    attn = attentions[layer]  # (B, heads, N, N)
    if head is None:
        attn = attn.mean(dim=1)
    elif not is_index(head):
        raise ArgumentError("head", head, "give a head's index, a whole number, or omit it for the mean of the heads")
    elif -attn.shape[1] <= head < attn.shape[1]:
        attn = attn[:, head]
    else:
        raise ArgumentError("head", head, f"this model has {attn.shape[1]} heads (use 0..{attn.shape[1] - 1}, "
                                          "or omit it for the mean)")
    return token_map(attn, grid, num_prefix_tokens, pooled=pooled)
