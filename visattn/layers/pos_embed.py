"""Resampling learned absolute position embeddings to a new patch grid (Dosovitskiy et al. 2020, §3.2).

Fine-tuning at another resolution keeps the patch size, so the grid changes; the paper
interpolates the pre-trained embeddings in 2-D. As timm does, this uses bicubic interpolation
with antialiasing and leaves prefix (class/register) tokens untouched.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ArgumentError


def resample_abs_pos_embed(
    pos_embed: torch.Tensor,
    new_size: tuple[int, int],
    old_size: Optional[tuple[int, int]] = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resample ``pos_embed`` of shape ``(1, prefix + H*W, C)`` to the grid ``new_size``.

    Args:
        pos_embed: the embeddings, prefix tokens first.
        new_size: target grid ``(H', W')``.
        old_size: source grid; inferred as square when None.
        num_prefix_tokens: leading tokens (class token) that are not on the grid.
        interpolation: ``F.interpolate`` mode.
        antialias: antialias when shrinking.
    """
    num_grid = pos_embed.shape[1] - num_prefix_tokens
    if old_size is None:
        side = math.isqrt(num_grid)
        if side * side != num_grid:  # else a reshape error naming no argument
            raise ArgumentError("old_size", None, f"{num_grid} grid tokens make no square grid; give the grid (H, W)")
        old_size = (side, side)
    if old_size[0] * old_size[1] != num_grid:
        raise ArgumentError("old_size", tuple(old_size), f"holds {old_size[0] * old_size[1]} cells, and pos_embed "
                                                         f"{num_grid} grid tokens after its {num_prefix_tokens} prefix")
    if tuple(new_size) == tuple(old_size) and num_grid == new_size[0] * new_size[1]:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim, dtype = grid.shape[-1], grid.dtype
    grid = grid.to(torch.promote_types(dtype, torch.float32))  # bf16 interpolation is coarse; float64 stays
    grid = grid.reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2)  # (1, C, H, W)
    grid = F.interpolate(grid, size=new_size, mode=interpolation, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(dtype)  # (1, H'*W', C)
    return torch.cat([prefix, grid], dim=1)
