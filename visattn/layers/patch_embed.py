"""Patch embedding: image to a sequence of patch tokens (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words")."""
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..errors import ConfigError, ImageSizeNotDivisible, check_count, is_count


def fixed_input_size(model: nn.Module) -> Optional[tuple[int, int]]:
    """The ``(H, W)`` a model's (or its encoder's) patch embedding takes and no other: a ViT's; None when any size goes."""
    for module in model.modules():
        embed = getattr(module, "patch_embed", None)
        if getattr(embed, "img_size", None) is not None:
            # timm's ViTs built with dynamic_img_size take any size
            return tuple(embed.img_size) if getattr(embed, "strict_img_size", True) else None
    return None


def to_2tuple(value: Union[int, tuple[int, int]], name: str = "size") -> tuple[int, int]:
    """``(value, value)`` for one whole number, ``value`` for a (height, width) pair; both >= 1."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(map(is_count, pair)):
        raise ConfigError(f"{name}={value!r}: give a whole number >= 1 or a (height, width) pair of them")
    return int(pair[0]), int(pair[1])


def check_image_layout(x: torch.Tensor, in_chans: int, weight: torch.Tensor) -> None:
    """One line unless ``x`` is a channels-first batch ``(B, in_chans, H, W)`` of ``weight``'s device and dtype
    (another dtype under autocast); shapes only, so no device sync. Skipped while ``torch.fx`` traces the model
    (torchvision's ``create_feature_extractor``): no shapes then."""
    if isinstance(x, torch.fx.Proxy):
        return
    if not isinstance(x, torch.Tensor):  # one line instead of "'list' object has no attribute 'ndim'"
        how = "torch.stack(images)" if isinstance(x, (list, tuple)) else "torch.as_tensor(x)"
        raise ConfigError(f"input is a {type(x).__name__}, not a tensor; give a batch tensor (B, {in_chans}, H, W), "
                          f"e.g. {how}")
    if not x.is_floating_point():  # uint8 pixels reached the first convolution as a dtype error
        raise ConfigError(f"input holds {str(x.dtype).removeprefix('torch.')} values; give normalised floating-point "
                          "images, as timm's create_transform(**resolve_data_config(model=model)) makes them")
    expected = f"the model expects a batch (B, {in_chans}, H, W)"
    if x.ndim != 4:
        fix = "add the batch dimension with x.unsqueeze(0)" if x.ndim == 3 else "give a batch of images"
        raise ConfigError(f"input has shape {tuple(x.shape)} but {expected}; {fix}")
    if x.shape[1] != in_chans:
        fix = ("it is channels-last: x.permute(0, 3, 1, 2)" if x.shape[-1] == in_chans
               else f"give {in_chans}-channel images or build the model with in_chans={x.shape[1]}")
        raise ConfigError(f"input has shape {tuple(x.shape)} but {expected}; {fix}")
    # torch's own messages: "Input type (CPUBFloat16Type) and weight type (torch.FloatTensor) should be the same ..."
    if x.device != weight.device:
        raise ConfigError(f"input is on {x.device} but the model's weights are on {weight.device}; move it with "
                          f"x.to('{weight.device}')")
    cast = torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64  # autocast leaves float64 alone
    if x.dtype != weight.dtype and not cast:
        dtype = str(weight.dtype).removeprefix("torch.")
        raise ConfigError(f"input holds {str(x.dtype).removeprefix('torch.')} values but the model's weights are "
                          f"{dtype}; cast it with x.to(torch.{dtype})")


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and project each to ``embed_dim`` with a strided conv.

    Args:
        img_size: input height and width the position embeddings are laid out for.
        patch_size: patch height and width; must divide ``img_size``.
        in_chans: input channels.
        embed_dim: token size.
        strict_img_size: refuse inputs of another size than ``img_size`` (timm's name); False takes any size
            whose sides are multiples of the patch (a ViT's ``dynamic_img_size``).
        bias: a bias on the projection (CLIP's has none: a norm follows it).
    """

    def __init__(
        self,
        img_size: Union[int, tuple[int, int]] = 224,
        patch_size: Union[int, tuple[int, int]] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        strict_img_size: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_chans = check_count("in_chans", in_chans)
        self.strict_img_size = strict_img_size
        self._set_grid(img_size, patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def _set_grid(self, img_size: Union[int, tuple[int, int]], patch_size: Union[int, tuple[int, int]]) -> None:
        img_size, patch_size = to_2tuple(img_size, "img_size"), to_2tuple(patch_size, "patch_size")
        if not whole_patches(img_size, patch_size):
            raise ImageSizeNotDivisible(img_size, patch_size)
        self.img_size, self.patch_size = img_size, patch_size
        self.grid_size = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    @torch.no_grad()
    def set_input_size(self, img_size: Union[int, tuple[int, int], None] = None,
                       patch_size: Union[int, tuple[int, int], None] = None) -> None:
        """Take ``img_size`` images in ``patch_size`` patches (None: as now), the projection's kernel resampled to
        a new patch size by FlexiViT's pseudo-inverse (Beyer et al. 2023), as timm's ``set_input_size``."""
        from timm.layers import resample_patch_embed

        old_patch = self.patch_size
        self._set_grid(self.img_size if img_size is None else img_size,
                       old_patch if patch_size is None else patch_size)
        if self.patch_size != old_patch:
            proj = nn.Conv2d(self.proj.in_channels, self.proj.out_channels, kernel_size=self.patch_size,
                             stride=self.patch_size, bias=self.proj.bias is not None,
                             device=self.proj.weight.device, dtype=self.proj.weight.dtype)
            proj.weight.copy_(resample_patch_embed(self.proj.weight, list(self.patch_size)))
            proj.weight.requires_grad_(self.proj.weight.requires_grad)
            if self.proj.bias is not None:  # its own flag: BitFit trains the biases of frozen weights
                proj.bias.copy_(self.proj.bias)
                proj.bias.requires_grad_(self.proj.bias.requires_grad)
            proj.train(self.proj.training)
            self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_layout(x, self.in_chans, self.proj.weight)
        if not isinstance(x, torch.fx.Proxy):
            check_input_size(self, x.shape[-2:])  # the ONNX tracer gives sizes as tensors
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, num_patches, embed_dim)


def check_input_size(patch_embed: nn.Module, size: Sequence[int]) -> None:
    """One line unless a patch embedding (visattn's or timm's) takes ``size = (H, W)`` images: timm's asserts in its
    forward, a bare traceback."""
    size, img_size = (int(size[0]), int(size[1])), patch_embed.img_size
    if img_size is None:  # timm's takes any size without one
        return
    if patch_embed.strict_img_size and size != tuple(img_size):
        fits = whole_patches(size, patch_embed.patch_size)
        how = f", or build the model with img_size={size} or dynamic_img_size=True" if fits else ""
        raise ConfigError(f"input is {size} but the model expects {tuple(img_size)}; resize the image{how}")
    if not patch_embed.strict_img_size and not getattr(patch_embed, "dynamic_img_pad", False):
        check_whole_patches(size, tuple(patch_embed.patch_size))


def check_patch_input(model: nn.Module, size: Sequence[int]) -> None:
    """One line unless a timm model's patch embedding (a ViT's, a Swin's) takes ``size = (H, W)`` images, as
    visattn's own ViTs check in their forward."""
    from timm.layers import PatchEmbed as TimmPatchEmbed

    embed = getattr(model, "patch_embed", None)
    if isinstance(embed, TimmPatchEmbed):
        check_input_size(embed, size)


def whole_patches(size: Sequence[int], patch_size: Sequence[int]) -> bool:
    """Whether each side of ``size`` is a multiple of the patch's."""
    return not any(s % p for s, p in zip(size, patch_size))


def patch_grid(patch_embed: nn.Module, image_size: Sequence[int]) -> tuple[int, int]:
    """The ``(rows, cols)`` patch grid a patch embedding (visattn's or timm's) makes of an ``image_size = (H, W)``
    image: its whole patches, or with timm's ``dynamic_img_pad`` the image padded up to whole patches."""
    (patch_h, patch_w), height, width = patch_embed.patch_size, int(image_size[0]), int(image_size[1])
    if getattr(patch_embed, "dynamic_img_pad", False):
        return -(-height // patch_h), -(-width // patch_w)
    return height // patch_h, width // patch_w


def check_whole_patches(size: tuple[int, int], patch_size: tuple[int, int]) -> None:
    """One line unless each side of ``size`` is a multiple of the patch's: a ViT of any size takes those only."""
    if not whole_patches(size, patch_size):
        raise ConfigError(f"input is {size}, whose sides are not multiples of the patch size {patch_size}; "
                          "resize or crop the image to multiples of it")
