"""Fixed 2-D sine position encoding for feature maps, as DETR uses it.

Papers: Vaswani et al. 2017, "Attention Is All You Need", §3.5 (1-D sinusoids); Parmar et al.
2018, "Image Transformer" and Carion et al. 2020, "End-to-End Object Detection with Transformers"
(DETR), §A.3: half the channels encode the row, half the column, each with sines and cosines of
geometrically spaced frequencies. Positions count valid (unpadded) pixels only and are normalised
to ``[0, 2π]``, so an image padded in a batch gets the same encoding as alone.
"""
import math

import torch


def sine_position_encoding_2d(mask: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Encode every position of a ``(B, H, W)`` padding mask (``True`` on padding) as ``(B, dim, H, W)``.

    Channels ``[0, dim/2)`` encode the row, ``[dim/2, dim)`` the column, sine and cosine interleaved.

    Args:
        mask: ``True`` where the feature map covers padding.
        dim: encoding size; a multiple of 4.
        temperature: the largest wavelength factor (10000 as in the papers).
    """
    if dim % 4:
        raise ValueError(f"dim={dim}: the 2-D sine encoding needs a multiple of 4")
    valid = (~mask).to(torch.float32)
    rows = valid.cumsum(1)  # (B, H, W): 1-based row index among valid pixels
    cols = valid.cumsum(2)
    eps = 1e-6
    rows = rows / (rows[:, -1:, :] + eps) * 2 * math.pi
    cols = cols / (cols[:, :, -1:] + eps) * 2 * math.pi
    half = dim // 2
    freq = torch.arange(half, dtype=torch.float32, device=mask.device)
    freq = temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / half)  # (half,)
    rows, cols = rows[..., None] / freq, cols[..., None] / freq  # (B, H, W, half)
    rows = torch.stack((rows[..., 0::2].sin(), rows[..., 1::2].cos()), dim=4).flatten(3)
    cols = torch.stack((cols[..., 0::2].sin(), cols[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((rows, cols), dim=3).permute(0, 3, 1, 2)  # (B, dim, H, W)
