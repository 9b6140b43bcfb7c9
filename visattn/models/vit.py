"""Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words"); DeiT sizes from Touvron et al. 2021.

Parameter names and shapes are those of timm's ``VisionTransformer``, so a timm state dict loads
strictly. torchvision's ``VisionTransformer`` layout is converted on load, and position
embeddings are resampled when the checkpoint's patch grid differs from the model's.
"""
import math
import warnings
from typing import Any, Literal, Optional, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError, VisattnWarning, WeightsError, check_count, is_number, is_whole, outside_visattn
from ..layers.attention import SelfAttention
from ..layers.attention_pool import AttentionPoolLatent
from ..layers.drop_path import DropPath, check_rate
from ..layers.layer_scale import LayerScale
from ..layers.mlp import Activation, Mlp
from ..layers.patch_embed import PatchEmbed, check_whole_patches
from ..layers.pos_embed import resample_abs_pos_embed
from ..registry import check_num_classes, classifier_head, evaluated_with, register_model
from .features import Indices, take_indices

Attentions = list[torch.Tensor]
PoolType = Literal["token", "avg", "avgmax", "max", "map", ""]
# Poolings that read the patch tokens (not the class token); timm builds fc_norm for them by default.
PATCH_POOLS = ("avg", "avgmax", "max")
# Parameters trained without weight decay, as in timm (which reads them from ``no_weight_decay()``).
NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "reg_token")
# How Google's ViT weights (also SigLIP's) and OpenAI's CLIP weights are evaluated (timm's records).
GOOGLE_VIT_EVALUATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "crop_pct": 0.9}
OPENAI_CLIP_EVALUATION = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                          "interpolation": "bicubic"}


def _layer_norm(dim: int, eps: float = 1e-6) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=eps)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    Args:
        dim: token size.
        num_heads: attention heads; ``dim`` must divide by them.
        mlp_ratio: MLP hidden size over ``dim``.
        qkv_bias: bias on the QKV projection.
        init_values: LayerScale init; None disables LayerScale.
        proj_drop: dropout after the attention projection and in the MLP.
        attn_drop: dropout on the attention probabilities.
        drop_path: stochastic depth rate of both residual branches.
        norm_eps: the LayerNorms' epsilon.
        act_layer: the MLP's activation (see :class:`~visattn.layers.mlp.Mlp`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: Optional[float] = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        act_layer: Activation = "gelu",
    ) -> None:
        super().__init__()
        self.norm1 = _layer_norm(dim, norm_eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = _layer_norm(dim, norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, act_layer=act_layer)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True)
        else:
            y, attn = self.attn(self.norm1(x)), None
        x = x + self.drop_path1(self.ls1(y))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return (x, attn) if return_attention else x


class VisionTransformer(nn.Module):
    """ViT classifier.

    Args:
        img_size: input size the position embeddings are laid out for.
        patch_size: patch size; must divide ``img_size``.
        in_chans: input channels.
        num_classes: classes; 0 gives a model without head (``forward`` returns pooled features).
        global_pool: ``"token"`` (class token), ``"avg"``, ``"max"`` or ``"avgmax"`` (mean of the two) over the
            patch tokens, or ``"map"``, a learned query's attention over them (SigLIP's head), as timm's; ``""``
            for none, where ``forward`` returns the ``(B, prefix + N, C)`` tokens and ``num_classes`` must be 0.
        embed_dim: token size.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden size over ``embed_dim``.
        qkv_bias: bias on the QKV projection.
        init_values: LayerScale init; None disables LayerScale.
        class_token: prepend a learned class token.
        reg_tokens: learned register tokens after the class token (Darcet et al. 2024, "Vision Transformers Need
            Registers"), which no pooling reads.
        no_embed_class: position embeddings for the patches only, added before the class and register tokens are
            put in front (DeiT III, DINOv2 with registers); else one for every token, added after.
        pre_norm: a LayerNorm on the tokens before the blocks, and no bias on the patch projection (CLIP's image
            tower, Radford et al. 2021), as timm's switch of the same name.
        norm_eps: every LayerNorm's epsilon: timm's 1e-6, CLIP's 1e-5.
        act_layer: the MLPs' activation (timm's names): ``"gelu"`` (exact), ``"gelu_tanh"`` or ``"quick_gelu"``
            (OpenAI CLIP's weights were trained with it).
        fc_norm: put the final norm after pooling; None means "when pooling patch tokens", as in timm.
        drop_rate: dropout before the head.
        pos_drop_rate: dropout after adding position embeddings.
        proj_drop_rate: dropout after attention and MLP projections.
        attn_drop_rate: dropout on attention probabilities.
        drop_path_rate: stochastic depth, increased linearly to this value over the blocks.
        dynamic_img_size: take images of any size whose sides are multiples of the patch, the position embeddings
            resampled to each batch's grid in every forward (timm's switch of the same name); ``img_size`` is then
            the grid they are stored on.
    """

    classifier = "head"

    def __init__(
        self,
        *,
        img_size: Union[int, tuple[int, int]] = 224,
        patch_size: Union[int, tuple[int, int]] = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: PoolType = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: Optional[float] = None,
        class_token: bool = True,
        reg_tokens: int = 0,
        no_embed_class: bool = False,
        pre_norm: bool = False,
        fc_norm: Optional[bool] = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dynamic_img_size: bool = False,
        norm_eps: float = 1e-6,
        act_layer: Activation = "gelu",
    ) -> None:
        super().__init__()
        _check_pool(global_pool, class_token, num_classes)
        reg_tokens = _check_sizes(depth=depth, embed_dim=embed_dim, num_heads=num_heads, reg_tokens=reg_tokens,
                                  norm_eps=norm_eps)
        for name, rate in (("drop_rate", drop_rate), ("pos_drop_rate", pos_drop_rate), ("proj_drop_rate", proj_drop_rate),
                           ("attn_drop_rate", attn_drop_rate), ("drop_path_rate", drop_path_rate)):
            check_rate(name, rate)
        use_fc_norm = global_pool in PATCH_POOLS if fc_norm is None else fc_norm
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = int(class_token) + reg_tokens
        self.num_reg_tokens = reg_tokens
        self.no_embed_class = no_embed_class

        self.dynamic_img_size = dynamic_img_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=not dynamic_img_size,
                                      bias=not pre_norm)
        self.input_size = (in_chans, *self.patch_embed.img_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.embedded_prefix_tokens,
                                                  embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.norm_eps, self.act_layer = norm_eps, act_layer  # what timm's weights are checked to compute against
        self.norm_pre = _layer_norm(embed_dim, norm_eps) if pre_norm else nn.Identity()
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth decay rule
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, init_values=init_values,
                  proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=rate, norm_eps=norm_eps,
                  act_layer=act_layer)
            for rate in rates
        ])
        self.norm = nn.Identity() if use_fc_norm else _layer_norm(embed_dim, norm_eps)
        self.attn_pool = (AttentionPoolLatent(embed_dim, num_heads, mlp_ratio=mlp_ratio, norm_eps=norm_eps,
                                              act_layer=act_layer) if global_pool == "map" else None)
        self.fc_norm = _layer_norm(embed_dim, norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=max(self.patch_embed.patch_size))
                             for i in range(depth)]
        self.init_weights()

    def init_weights(self) -> None:
        """timm's default ViT init: truncated normal (std 0.02) for linears and position embeddings."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:  # qkv_bias=False
                    nn.init.zeros_(module.bias)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    @property
    def embedded_prefix_tokens(self) -> int:
        """The prefix tokens ``pos_embed`` holds positions for, before the patches' (none with ``no_embed_class``)."""
        return 0 if self.no_embed_class else self.num_prefix_tokens

    @property
    def _other_layouts_prefix(self) -> int:
        """The prefix positions of the other ``no_embed_class`` layout: what weights laid out that way hold."""
        return self.num_prefix_tokens - self.embedded_prefix_tokens

    def get_classifier(self) -> nn.Module:
        return self.head

    def no_weight_decay(self) -> set[str]:
        """Names timm's optimizer factory (``timm.optim.create_optimizer_v2``) trains without weight decay."""
        return set(NO_WEIGHT_DECAY)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups, in depth order (layer-wise learning-rate decay in
        ``timm.optim.create_optimizer_v2(..., layer_decay=)``): the embeddings, then each block, the final norm
        with the last block."""
        return {"stem": r"^cls_token|reg_token|pos_embed|patch_embed|norm_pre",
                "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Keep only each block's input for the backward pass and recompute the rest there (timm's
        switch of the same name): activation memory drops from every block's intermediates to one
        ``(B, N, C)`` tensor a block, for about one more forward pass of compute. Gradients are
        unchanged; dropout and drop-path draw the same masks when recomputed."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh ``head`` of ``num_classes`` outputs (0: identity); ``global_pool`` switches the pooling
        and, as in timm, leaves ``norm`` / ``fc_norm`` as they were built."""
        num_classes = check_num_classes(num_classes)
        _check_pool(self.global_pool if global_pool is None else global_pool, self.cls_token is not None, num_classes)
        if global_pool == "map" and self.attn_pool is None:
            raise ConfigError("global_pool='map' needs the attention pool's weights, which this model was built "
                              "without; build it with global_pool='map'")
        if global_pool is not None:
            if global_pool != "map":
                self.attn_pool = None  # as timm: another pooling drops it
            self.global_pool = global_pool
            if hasattr(self, "visattn_kwargs"):  # what save_weights records, so that ARCH.TAG pools the same way
                built_norm = not isinstance(self.fc_norm, nn.Identity)  # fc_norm defaults from global_pool
                self.visattn_kwargs = {**self.visattn_kwargs, "global_pool": global_pool, "fc_norm": built_norm}
        self.num_classes = num_classes
        self.head = classifier_head(self, self.embed_dim, num_classes)

    def set_input_size(self, img_size: Union[int, tuple[int, int], None] = None,
                       patch_size: Union[int, tuple[int, int], None] = None) -> None:
        """Take ``img_size`` images in ``patch_size`` patches (None: as now), as timm's ``set_input_size``: the
        position embeddings resampled to the new patch grid, the patch projection to the new patch size. The
        new size is what ``input_size``, ``pretrained_cfg`` and ``save_weights`` then record."""
        old_grid = self.grid_size
        self.patch_embed.set_input_size(img_size, patch_size)
        if self.grid_size != old_grid:
            resampled = resample_abs_pos_embed(self.pos_embed.detach(), new_size=self.grid_size, old_size=old_grid,
                                               num_prefix_tokens=self.embedded_prefix_tokens)
            self.pos_embed = nn.Parameter(resampled, requires_grad=self.pos_embed.requires_grad)
        self.input_size = (self.input_size[0], *self.patch_embed.img_size)
        for level in self.feature_info:
            level["reduction"] = max(self.patch_embed.patch_size)
        if isinstance(getattr(self, "pretrained_cfg", None), dict) and "input_size" in self.pretrained_cfg:
            self.pretrained_cfg["input_size"] = self.input_size
        if hasattr(self, "visattn_kwargs"):  # so that ARCH.TAG rebuilds the model at this size
            self.visattn_kwargs = {**self.visattn_kwargs, "img_size": self.patch_embed.img_size,
                                   "patch_size": self.patch_embed.patch_size}

    def _token_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The patch grid of images ``x``: ``grid_size`` unless the model takes any size."""
        return _whole_patch_grid(x, self.patch_embed.patch_size) if self.dynamic_img_size else self.grid_size

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens with the prefix and position embeddings added, ``(B, prefix + N, C)``, and their grid."""
        grid = self._token_grid(x)
        pos_embed = self.pos_embed
        if self.dynamic_img_size:  # a call, not a branch on the grid, so that fx traces it as one
            pos_embed = _pos_embed_for_grid(pos_embed, grid, self.grid_size, self.embedded_prefix_tokens)
        return self.with_prefix_and_positions(self.patch_embed(x), pos_embed), grid

    def with_prefix_and_positions(self, x: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, N, C)`` with the class and register tokens put in front and ``pos_embed`` (laid out for
        their grid) added, in timm's order for ``no_embed_class``, then position dropout and ``norm_pre`` (CLIP's):
        ``(B, prefix + N, C)``."""
        prefix = [token.expand(x.shape[0], -1, -1) for token in (self.cls_token, self.reg_token) if token is not None]
        if self.no_embed_class:
            x = x + pos_embed
        if prefix:
            x = torch.cat([*prefix, x], dim=1)
        if not self.no_embed_class:
            x = x + pos_embed
        return self.norm_pre(self.pos_drop(x))

    def forward_features(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> Union[torch.Tensor, tuple[torch.Tensor, Attentions]]:
        """Tokens after the last block and norm, ``(B, prefix + N, C)``; with ``return_attention``
        also each block's attention probabilities, a list of ``(B, heads, prefix + N, prefix + N)``
        (kept for every block, which gradient checkpointing would not keep: the blocks then run without it)."""
        x, _ = self._embed(x)
        if not return_attention:
            if self.grad_checkpointing and torch.is_grad_enabled():
                for block in self.blocks:
                    x = checkpoint(block, x, use_reentrant=False)
                return self.norm(x)
            return self.norm(self.blocks(x))
        attentions = []
        for block in self.blocks:
            x, attn = block(x, return_attention=True)
            attentions.append(attn)
        return self.norm(x), attentions

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_intermediates(
        self, x: torch.Tensor, indices: Indices = None, return_prefix_tokens: bool = False, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> Union[list, tuple[torch.Tensor, list]]:
        """timm's feature API: ``(forward_features(x), maps)``, or the maps alone with ``intermediates_only``.
        Level i is block i's patch tokens, ``(B, C, h, w)`` (``output_fmt="NLC"``: ``(B, h * w, C)``), each
        ``(tokens, prefix tokens)`` with ``return_prefix_tokens``; ``norm`` passes them through the final norm;
        ``indices`` takes the last n blocks (an int), those listed, or all (None); ``stop_early`` skips the
        blocks past the last one taken."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ConfigError(f"output_fmt={output_fmt!r}: give 'NCHW' (maps) or 'NLC' (tokens)")
        taken, last = take_indices(len(self.blocks), indices)  # as timm: pruning shortens blocks
        x, grid = self._embed(x)
        maps = []
        for i, block in enumerate(self.blocks[:last + 1] if stop_early else self.blocks):
            x = self._run_block(block, x)
            if i in taken:
                maps.append(self.norm(x) if norm else x)
        prefixes = [y[:, :self.num_prefix_tokens] for y in maps]
        maps = [y[:, self.num_prefix_tokens:] for y in maps]  # (B, h * w, C)
        if output_fmt == "NCHW":
            maps = [y.reshape(y.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous() for y in maps]  # (B, C, h, w)
        if return_prefix_tokens and self.num_prefix_tokens:
            maps = list(zip(maps, prefixes))
        return maps if intermediates_only else (self.norm(x), maps)

    def prune_intermediate_layers(self, indices: Indices = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks past the last one in ``indices``, the final norm with ``prune_norm`` and the head and
        pooling with ``prune_head`` (``forward`` then gives the tokens), as timm's ViTs do for a features-only model;
        returns the blocks taken."""
        taken, last = take_indices(len(self.blocks), indices)  # as timm: pruning shortens blocks
        self.blocks = self.blocks[:last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, "")
        return taken

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.attn_pool is not None:
            x = self.attn_pool(x[:, self.num_prefix_tokens:])
        else:
            x = _pool_tokens(x, self.global_pool, self.num_prefix_tokens)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> Union[torch.Tensor, tuple[torch.Tensor, Attentions]]:
        """Logits ``(B, num_classes)``; with ``return_attention=True``, ``(logits, attentions)``
        where ``attentions`` holds one ``(B, heads, N, N)`` tensor per block."""
        # torchvision's create_feature_extractor traces every argument of forward: the default path for it
        if not isinstance(return_attention, torch.fx.Proxy) and return_attention:
            x, attentions = self.forward_features(x, return_attention=True)
            return self.forward_head(x), attentions
        return self.forward_head(self.forward_features(x))

    def timm_state_dict(self) -> dict[str, torch.Tensor]:
        """This model's weights for the ``load_state_dict`` of timm's ViT of the same settings (the ResNets' method
        of the name renames block attention; a ViT's keys are timm's already)."""
        return self.state_dict()

    def adapt_state_dict(self, state: dict[str, torch.Tensor], *,
                         source_grid: Optional[tuple[int, int]] = None) -> dict[str, torch.Tensor]:
        """Convert a torchvision ViT state dict to timm names and resample the patch projection to this patch
        size and the position embeddings to this grid, from ``source_grid`` where the weights' source records
        it (timm's), else from the square grid their positions fill."""
        if "conv_proj.weight" in state:
            state = convert_torchvision_vit(state)
        if "dist_token" in state:
            raise WeightsError("the weights are a distilled DeiT (dist_token, head_dist), which visattn does not "
                               "register; load a plain deit_*_patch16_224 or vit_* checkpoint")
        registers = state["reg_token"].shape[1] if "reg_token" in state else 0
        if "pos_embed" in state and registers != self.num_reg_tokens:  # a partial state dict says nothing of them
            raise WeightsError(f"the weights have {registers} register tokens (reg_token) and this model "
                               f"{self.num_reg_tokens}; build it with reg_tokens={registers}")
        if "pos_embed" in state and ("cls_token" in state) != (self.cls_token is not None):
            if "cls_token" in state:
                raise WeightsError("the weights have a class token and this model does not; build it with "
                                   "class_token=True")
            raise WeightsError("the weights lack a class token and this model does; build it with "
                               "class_token=False, global_pool='avg'")
        if "pos_embed" in state and ("attn_pool.latent" in state) != (self.attn_pool is not None):
            if "attn_pool.latent" in state:
                raise WeightsError("the weights pool by attention (attn_pool, SigLIP's head) and this model does "
                                   "not; build it with global_pool='map'")
            raise WeightsError(f"the weights have no attention pool (attn_pool) and this model pools by one; build "
                               f"it with global_pool={'token' if 'cls_token' in state else 'avg'!r}")
        pre_norm = "norm_pre.weight" in state
        if "pos_embed" in state and pre_norm == isinstance(self.norm_pre, nn.Identity):
            raise WeightsError(f"the weights {'have' if pre_norm else 'lack'} a norm before the blocks (norm_pre, "
                               f"CLIP's) and this model {'does not' if pre_norm else 'does'}; build it with "
                               f"pre_norm={pre_norm}")
        patch_weight = state.get("patch_embed.proj.weight")
        if patch_weight is not None and tuple(patch_weight.shape[-2:]) != tuple(self.patch_embed.patch_size):
            # FlexiViT's pseudo-inverse resize (Beyer et al. 2023): timm's, as its checkpoint filter loads such weights
            from timm.layers import resample_patch_embed

            theirs, ours = "x".join(map(str, patch_weight.shape[-2:])), "x".join(map(str, self.patch_embed.patch_size))
            warnings.warn(f"the weights' {theirs} px patch projection is resampled to this model's {ours} px patches "
                          "(FlexiViT's resize): the model computes otherwise than the weights did; build it with "
                          "their patch_size to keep their outputs, or fine-tune",
                          VisattnWarning, stacklevel=outside_visattn())
            state = {**state, "patch_embed.proj.weight": resample_patch_embed(patch_weight, list(self.patch_embed.patch_size))}
        if "pos_embed" in state:
            state = {**state, "pos_embed": self._pos_embed_on_grid(state["pos_embed"], source_grid)}
        return state

    def _pos_embed_on_grid(self, pos_embed: torch.Tensor, source_grid: Optional[tuple[int, int]]) -> torch.Tensor:
        """``pos_embed`` on this model's grid: resampled from ``source_grid`` where the weights' source records
        it, else from the square grid its positions fill; kept when it has this model's shape and no recorded
        grid says otherwise."""
        if source_grid is None and pos_embed.shape == self.pos_embed.shape:
            self._warn_if_another_grid(pos_embed.shape[1] - self.embedded_prefix_tokens)
            return pos_embed
        if source_grid is None and self.num_prefix_tokens and (
                pos_embed.shape[1] - self._other_layouts_prefix == self.patch_embed.num_patches):
            # this model's grid in the other layout: read in its own, a 3x3 grid's 9 positions would pass for a 2x2
            # one after 5 prefix tokens and be silently resampled
            raise WeightsError(f"pos_embed {tuple(pos_embed.shape)} holds this model's {self.grid_size[0]}x"
                               f"{self.grid_size[1]} grid in the other position layout; "
                               f"{self._layout_hint(pos_embed, None)}")
        if not _holds_grid(pos_embed.shape[1] - self.embedded_prefix_tokens, source_grid):
            grid = "a square patch grid" if source_grid is None else f"the {source_grid[0]}x{source_grid[1]} patch grid"
            hint = self._layout_hint(pos_embed, source_grid)
            raise WeightsError(f"pos_embed {tuple(pos_embed.shape)} does not hold {grid} after "
                               f"{self.embedded_prefix_tokens} prefix tokens; {hint}")
        if source_grid is not None and tuple(source_grid) == tuple(self.grid_size):
            return pos_embed
        return resample_abs_pos_embed(pos_embed, new_size=self.grid_size, old_size=source_grid,
                                      num_prefix_tokens=self.embedded_prefix_tokens)

    def _layout_hint(self, pos_embed: torch.Tensor, source_grid: Optional[tuple[int, int]]) -> str:
        """What to build for weights whose position embeddings do not fit: the other ``no_embed_class`` where
        they are laid out that way (DeiT III's and DINOv2-with-registers' leave the prefix tokens out)."""
        if self.num_prefix_tokens and _holds_grid(pos_embed.shape[1] - self._other_layouts_prefix, source_grid):
            held = "leave out" if self.embedded_prefix_tokens else "hold one for each of"
            return (f"its positions {held} the prefix tokens (class, registers): build the model with "
                    f"no_embed_class={not self.no_embed_class}")
        return "the weights are for another layout"

    def _warn_if_another_grid(self, patches: int) -> None:
        """Weights holding as many positions as this non-square grid, and as a square one, may be for either:
        a file does not say (``timm:NAME`` weights come with the grid timm trained them on)."""
        side = math.isqrt(patches)
        if self.grid_size[0] != self.grid_size[1] and side * side == patches:
            warnings.warn(f"pos_embed: the weights' {patches} positions were kept as this model's {self.grid_size[0]}x"
                          f"{self.grid_size[1]} grid; if they were trained on a {side}x{side} grid (a square image), "
                          f"they sit wrong: resample them with visattn.layers.pos_embed.resample_abs_pos_embed(..., "
                          f"old_size=({side}, {side})) or load them as timm:NAME",
                          VisattnWarning, stacklevel=outside_visattn())


def drop_pooled_head(model: nn.Module) -> nn.Module:
    """``model`` (a visattn or timm ViT used for its tokens: a captioner's encoder, a detector's backbone)
    without the layers only its pooled output goes through, ``fc_norm`` (built by ``global_pool='avg'``) and
    timm's ``attn_pool``: their weights would get no gradient, on which DDP stops at the second step."""
    if isinstance(getattr(model, "fc_norm", None), nn.Module):
        model.fc_norm = nn.Identity()
    if isinstance(getattr(model, "attn_pool", None), nn.Module):
        model.attn_pool = None
    return model


def _holds_grid(patches: int, grid: Optional[tuple[int, int]]) -> bool:
    """Whether ``patches`` positions fill ``grid``, or a square one when it is not known."""
    if grid is None:
        return patches >= 1 and math.isqrt(patches) ** 2 == patches
    return patches == grid[0] * grid[1]


@torch.fx.wrap
def _whole_patch_grid(x: torch.Tensor, patch_size: tuple[int, int]) -> tuple[int, int]:
    """The patch grid of images ``x``, checked to be whole when the model runs, also as an fx graph (which skips the
    patch embedding's checks: its sizes are symbols there, and a traced model cropped a 40x40 image to 32x32)."""
    size = (int(x.shape[-2]), int(x.shape[-1]))
    check_whole_patches(size, patch_size)
    return size[0] // patch_size[0], size[1] // patch_size[1]


@torch.fx.wrap
def _pos_embed_for_grid(pos_embed: torch.Tensor, grid: tuple[int, int], built_grid: tuple[int, int],
                        num_prefix_tokens: int) -> torch.Tensor:
    """``pos_embed`` resampled from ``built_grid`` to ``grid`` (itself when they are one): one leaf in an fx graph,
    whose sizes are known only when it runs."""
    return resample_abs_pos_embed(pos_embed, new_size=grid, old_size=built_grid, num_prefix_tokens=num_prefix_tokens)


def _pool_tokens(x: torch.Tensor, global_pool: str, num_prefix_tokens: int) -> torch.Tensor:
    """``(B, C)`` from the ``(B, prefix + N, C)`` tokens (timm's ``global_pool_nlc``); the tokens for ``""``."""
    if global_pool == "token":
        return x[:, 0]
    if not global_pool:
        return x
    patches = x[:, num_prefix_tokens:]
    if global_pool == "avg":
        return patches.mean(dim=1)
    if global_pool == "max":
        return patches.amax(dim=1)
    if global_pool == "map":  # the model's attention pool reads them, dropped from a backbone, which pools nothing
        raise ConfigError("global_pool='map': this ViT's attention pool was dropped (a backbone's); use its tokens")
    return 0.5 * (patches.amax(dim=1) + patches.mean(dim=1))  # avgmax


def _check_sizes(*, depth: int, embed_dim: int, num_heads: int, reg_tokens: int, norm_eps: float) -> int:
    """One line for a size the ViT cannot be built with; the register count as an int."""
    for name, count in (("depth", depth), ("embed_dim", embed_dim), ("num_heads", num_heads)):
        check_count(name, count)  # a width or head count of 0 would be a ZeroDivisionError
    if not is_whole(reg_tokens):
        raise ConfigError(f"reg_tokens={reg_tokens!r}: give a whole number >= 0 (0: no register tokens)")
    if not (is_number(norm_eps) and 0 < norm_eps < math.inf):  # 0 divides by 0 on a constant token, inf erases all
        raise ConfigError(f"norm_eps={norm_eps!r}: give a small positive number, timm's 1e-6 or CLIP's 1e-5")
    return int(reg_tokens)


def _check_pool(global_pool: str, class_token: bool, num_classes: int) -> None:
    if global_pool not in ("token", *PATCH_POOLS, "map", ""):
        raise ConfigError(f"global_pool={global_pool!r}: use 'token', 'avg', 'max', 'avgmax', 'map' or '' (no "
                          "pooling)")
    if global_pool == "token" and not class_token:
        raise ConfigError("global_pool='token' needs class_token=True; use global_pool='avg' without it")
    if global_pool == "" and num_classes > 0:
        raise ConfigError(f"global_pool='' leaves the tokens unpooled and num_classes={num_classes} needs pooled "
                          "features: give num_classes=0 for the tokens, or global_pool='token' or 'avg'")


def convert_torchvision_vit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``torchvision.models.VisionTransformer`` keys to timm/visattn keys.

    torchvision packs Q, K and V into ``in_proj_weight`` in the same (q, k, v) order as timm's
    ``qkv``, so the weights carry over unchanged.
    """
    renames = {
        "class_token": "cls_token",
        "conv_proj.": "patch_embed.proj.",
        "encoder.pos_embedding": "pos_embed",
        "encoder.ln.": "norm.",
        "heads.head.": "head.",
        "self_attention.in_proj_weight": "attn.qkv.weight",
        "self_attention.in_proj_bias": "attn.qkv.bias",
        "self_attention.out_proj.": "attn.proj.",
        "ln_1.": "norm1.",
        "ln_2.": "norm2.",
        "mlp.0.": "mlp.fc1.",
        "mlp.3.": "mlp.fc2.",
        "mlp.linear_1.": "mlp.fc1.",
        "mlp.linear_2.": "mlp.fc2.",
    }
    out = {}
    for key, value in state.items():
        if key.startswith("encoder.layers.encoder_layer_"):
            index, rest = key[len("encoder.layers.encoder_layer_"):].split(".", 1)
            key = f"blocks.{index}.{rest}"
        for old, new in renames.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def _create_vit(model_args: dict, kwargs: dict) -> VisionTransformer:
    # User kwargs (img_size, num_classes, drop_path_rate, ...) override the architecture's defaults.
    return VisionTransformer(**{**model_args, **kwargs})


@register_model
@evaluated_with(**GOOGLE_VIT_EVALUATION)
def vit_tiny_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-Ti/16, 224 px."""
    return _create_vit(dict(patch_size=16, embed_dim=192, depth=12, num_heads=3), kwargs)


@register_model
@evaluated_with(interpolation="bicubic", crop_pct=0.9)
def vit_small_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-S/16, 224 px."""
    return _create_vit(dict(patch_size=16, embed_dim=384, depth=12, num_heads=6), kwargs)


@register_model
@evaluated_with(interpolation="bicubic")
def vit_base_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-B/16, 224 px."""
    return _create_vit(dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), kwargs)


@register_model
@evaluated_with(**GOOGLE_VIT_EVALUATION)
def vit_base_patch32_224(**kwargs) -> VisionTransformer:
    """ViT-B/32, 224 px."""
    return _create_vit(dict(patch_size=32, embed_dim=768, depth=12, num_heads=12), kwargs)


@register_model
@evaluated_with(interpolation="bicubic", crop_pct=0.9)
def vit_large_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-L/16, 224 px."""
    return _create_vit(dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16), kwargs)


@register_model
@evaluated_with(interpolation="bicubic", crop_pct=0.9)
def deit_tiny_patch16_224(**kwargs) -> VisionTransformer:
    """DeiT-Ti/16, 224 px (architecture of ViT-Ti, DeiT training recipe)."""
    return _create_vit(dict(patch_size=16, embed_dim=192, depth=12, num_heads=3), kwargs)


@register_model
@evaluated_with(interpolation="bicubic", crop_pct=0.9)
def deit_small_patch16_224(**kwargs) -> VisionTransformer:
    """DeiT-S/16, 224 px."""
    return _create_vit(dict(patch_size=16, embed_dim=384, depth=12, num_heads=6), kwargs)


@register_model
@evaluated_with(interpolation="bicubic", crop_pct=0.9)
def deit_base_patch16_224(**kwargs) -> VisionTransformer:
    """DeiT-B/16, 224 px."""
    return _create_vit(dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), kwargs)


@register_model
@evaluated_with(interpolation="bicubic")
def deit3_small_patch16_224(**kwargs) -> VisionTransformer:
    """DeiT III-S/16, 224 px (Touvron et al. 2022, "DeiT III: Revenge of the ViT"): LayerScale, no class position."""
    return _create_vit(dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, no_embed_class=True,
                            init_values=1e-6), kwargs)


@register_model
@evaluated_with(interpolation="bicubic")
def deit3_base_patch16_224(**kwargs) -> VisionTransformer:
    """DeiT III-B/16, 224 px."""
    return _create_vit(dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, no_embed_class=True,
                            init_values=1e-6), kwargs)


@register_model
@evaluated_with(interpolation="bicubic", crop_pct=1.0)
def vit_small_patch14_dinov2(**kwargs) -> VisionTransformer:
    """DINOv2 ViT-S/14, 518 px (Oquab et al. 2023), a feature extractor: no head unless num_classes, or weights
    with one, say otherwise."""
    return _create_vit(dict(img_size=518, patch_size=14, embed_dim=384, depth=12, num_heads=6, init_values=1e-5,
                            num_classes=0), kwargs)


@register_model
@evaluated_with(interpolation="bicubic", crop_pct=1.0)
def vit_base_patch14_dinov2(**kwargs) -> VisionTransformer:
    """DINOv2 ViT-B/14, 518 px."""
    return _create_vit(dict(img_size=518, patch_size=14, embed_dim=768, depth=12, num_heads=12, init_values=1e-5,
                            num_classes=0), kwargs)


@register_model
@evaluated_with(interpolation="bicubic", crop_pct=1.0)
def vit_small_patch14_reg4_dinov2(**kwargs) -> VisionTransformer:
    """DINOv2 ViT-S/14 with 4 register tokens (Darcet et al. 2024), 518 px."""
    return _create_vit(dict(img_size=518, patch_size=14, embed_dim=384, depth=12, num_heads=6, init_values=1e-5,
                            reg_tokens=4, no_embed_class=True, num_classes=0), kwargs)


@register_model
@evaluated_with(interpolation="bicubic", crop_pct=1.0)
def vit_base_patch14_reg4_dinov2(**kwargs) -> VisionTransformer:
    """DINOv2 ViT-B/14 with 4 register tokens, 518 px."""
    return _create_vit(dict(img_size=518, patch_size=14, embed_dim=768, depth=12, num_heads=12, init_values=1e-5,
                            reg_tokens=4, no_embed_class=True, num_classes=0), kwargs)


@register_model
def vit_base_patch16_reg4_gap_256(**kwargs) -> VisionTransformer:
    """ViT-B/16, 256 px, with 4 register tokens and no class token: the patch tokens are averaged."""
    return _create_vit(dict(img_size=256, patch_size=16, embed_dim=768, depth=12, num_heads=12, class_token=False,
                            reg_tokens=4, no_embed_class=True, global_pool="avg"), kwargs)


@register_model
@evaluated_with(**GOOGLE_VIT_EVALUATION)
def vit_base_patch16_siglip_224(**kwargs) -> VisionTransformer:
    """SigLIP's ViT-B/16 image encoder, 224 px (Zhai et al. 2023): no class token, attention-pooled; no head unless
    num_classes, or weights with one, say otherwise."""
    return _create_vit(dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, class_token=False,
                            global_pool="map", num_classes=0), kwargs)


@register_model
@evaluated_with(**GOOGLE_VIT_EVALUATION)
def vit_so400m_patch14_siglip_224(**kwargs) -> VisionTransformer:
    """SigLIP's shape-optimised 400M ViT/14 image encoder, 224 px (Alabdulmohsin et al. 2023)."""
    return _create_vit(dict(patch_size=14, embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362,
                            class_token=False, global_pool="map", num_classes=0), kwargs)


@register_model
@evaluated_with(**OPENAI_CLIP_EVALUATION)
def vit_base_patch16_clip_224(**kwargs) -> VisionTransformer:
    """CLIP's ViT-B/16 image tower, 224 px (Radford et al. 2021): a norm before the blocks, LayerNorm eps 1e-5."""
    return _create_vit(dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, pre_norm=True, norm_eps=1e-5),
                       kwargs)


@register_model
@evaluated_with(**OPENAI_CLIP_EVALUATION)
def vit_base_patch32_clip_224(**kwargs) -> VisionTransformer:
    """CLIP's ViT-B/32 image tower, 224 px."""
    return _create_vit(dict(patch_size=32, embed_dim=768, depth=12, num_heads=12, pre_norm=True, norm_eps=1e-5),
                       kwargs)


@register_model
@evaluated_with(**OPENAI_CLIP_EVALUATION)
def vit_base_patch16_clip_quickgelu_224(**kwargs) -> VisionTransformer:
    """CLIP's ViT-B/16 image tower with QuickGELU, which OpenAI's CLIP weights were trained with; its head is CLIP's
    512-wide image projection, as timm's default weights have it."""
    return _create_vit(dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, pre_norm=True, norm_eps=1e-5,
                            act_layer="quick_gelu", num_classes=512), kwargs)


@register_model
@evaluated_with(**OPENAI_CLIP_EVALUATION)
def vit_base_patch32_clip_quickgelu_224(**kwargs) -> VisionTransformer:
    """CLIP's ViT-B/32 image tower with QuickGELU and CLIP's 512-wide image projection as its head."""
    return _create_vit(dict(patch_size=32, embed_dim=768, depth=12, num_heads=12, pre_norm=True, norm_eps=1e-5,
                            act_layer="quick_gelu", num_classes=512), kwargs)


@register_model
def vit_tiny_patch4_28(**kwargs) -> VisionTransformer:
    """ViT-Ti with 4 px patches for 28 px images (Fashion-MNIST): a 7x7 grid of 49 tokens."""
    return _create_vit(dict(img_size=28, patch_size=4, embed_dim=192, depth=12, num_heads=3), kwargs)


@register_model
def vit_small_patch4_28(**kwargs) -> VisionTransformer:
    """ViT-S with 4 px patches for 28 px images."""
    return _create_vit(dict(img_size=28, patch_size=4, embed_dim=384, depth=12, num_heads=6), kwargs)


@register_model
def vit_tiny_patch4_32(**kwargs) -> VisionTransformer:
    """ViT-Ti with 4 px patches for 32 px images (CIFAR scale): an 8x8 grid of 64 tokens."""
    return _create_vit(dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3), kwargs)
