"""Non-local block (embedded Gaussian).

Paper: Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018 (arXiv:1711.07971).

Every position attends to every other position: ``y_i = sum_j softmax_j(theta(x_i) . phi(x_j)) g(x_j)``,
then ``z = BN(W_z y) + x``. The BN scale starts at zero, so a freshly inserted block is the identity
and does not disturb a pretrained backbone.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .se import reduced_channels


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block over the ``H * W`` positions of a feature map.

    The affinity is the paper's unscaled ``softmax(theta^T phi)``, with no sub-sampling of ``phi``/``g``. It goes
    through SDPA's fused kernels, in float32, which never hold the ``(H * W) ** 2`` matrix whole, so memory grows
    with ``H * W``; only with ``keep_gate`` is it computed whole, ``(H * W) ** 2`` floats an image.

    Explainability: set ``keep_gate = True`` and each forward stores
    ``last_gate = {"affinity": (B, H*W, H*W)}``, the detached attention of each query position
    (row) over all key positions (columns); rows lie in [0, 1] and sum to 1.

    Args:
        channels: number of input (and output) channels.
        reduction: ``theta``/``phi``/``g`` embed into ``channels // reduction`` channels (2 in the paper).
        keep_gate: store the affinity in ``last_gate`` on every forward.
    """

    def __init__(self, channels: int, *, reduction: int = 2, keep_gate: bool = False):
        super().__init__()
        inner = reduced_channels(channels, reduction, min_channels=1)
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)
        self.g = nn.Conv2d(channels, inner, kernel_size=1)
        self.out_proj = nn.Conv2d(inner, channels, kernel_size=1)
        self.norm = nn.BatchNorm2d(channels)
        self.keep_gate = keep_gate
        self.last_gate: dict[str, Tensor] = {}
        self.init_affinity()
        self.zero_init_last()

    def init_affinity(self) -> None:
        """Draw the embeddings from N(0, 0.01) as the authors' code does: with a ResNet's fan-out init of its
        convs the unscaled dot products are large and the softmax starts one-hot, passing its logits no gradient."""
        for conv in (self.theta, self.phi, self.g):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def zero_init_last(self) -> None:
        """Zero the output BN so the block starts as the identity (Sec. 4.1 of the paper)."""
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        # (B, 1, HW, inner): one head, contiguous, as SDPA's fused kernels take them (else it runs the math path)
        embedded = [conv(x).flatten(2).transpose(1, 2).unsqueeze(1) for conv in (self.theta, self.phi, self.g)]
        dtype = embedded[2].dtype  # autocast's, where it runs
        # float32 even under autocast: unscaled fp16 dot products overflow once activations near 100 (float64 stays)
        query, key, value = (t.to(torch.promote_types(dtype, torch.float32)).contiguous() for t in embedded)
        with torch.autocast(x.device.type, enabled=False):
            if self.keep_gate:
                affinity = torch.softmax(query @ key.transpose(2, 3), dim=-1)  # (B, 1, HW, HW)
                self.last_gate = {"affinity": affinity.detach().squeeze(1)}
                y = affinity @ value
            else:
                # scale 1: the paper's unscaled product; the fused kernels never hold the (HW, HW) affinity
                y = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # (B, 1, HW, inner)
        y = y.to(dtype).squeeze(1).transpose(1, 2).reshape(b, self.g.out_channels, h, w)  # (B, inner, H, W)
        return x + self.norm(self.out_proj(y))
