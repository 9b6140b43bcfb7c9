"""Patch embedding: image to a sequence of patch tokens (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words")."""
from typing import Union

import torch
from torch import nn

from ..errors import ConfigError


def to_2tuple(value: Union[int, tuple[int, int]]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and project each to ``embed_dim`` with a strided conv.

    Args:
        img_size: input height and width the position embeddings are laid out for.
        patch_size: patch height and width; must divide ``img_size``.
        in_chans: input channels.
        embed_dim: token size.
    """

    def __init__(
        self,
        img_size: Union[int, tuple[int, int]] = 224,
        patch_size: Union[int, tuple[int, int]] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        if any(i % p for i, p in zip(self.img_size, self.patch_size)):
            raise ConfigError(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}; change one of them")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.img_size:
            raise ConfigError(
                f"input is {tuple(x.shape[-2:])} but the model expects {self.img_size}; "
                f"resize the image or build the model with img_size={tuple(x.shape[-2:])}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, num_patches, embed_dim)
