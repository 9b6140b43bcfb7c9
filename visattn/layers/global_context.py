"""Global context (GC) block.

Paper: Cao, Xu, Lin, Wei, Hu, "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and
Beyond", ICCV Workshops 2019 (arXiv:1904.11492).

A query-independent simplification of the non-local block: one softmax attention map pools the
feature map into a single context vector, a LayerNorm bottleneck transforms it, and the result is
added to every position (fusion by addition).
"""
import torch
from torch import Tensor, nn

from .se import reduced_channels


class GlobalContextBlock(nn.Module):
    """GC block: ``x + transform(sum_j softmax_j(w_k x_j) x_j)``.

    The last 1x1 conv of the transform starts at zero, so a freshly inserted block is the identity.

    Explainability: set ``keep_gate = True`` and each forward stores
    ``last_gate = {"spatial": (B, 1, H, W)}``, the detached attention-pooling weights in [0, 1]
    (they sum to 1 over the ``H * W`` positions).

    Args:
        channels: number of input (and output) channels.
        reduction: bottleneck ratio of the transform (16 in the paper).
        min_hidden: lower bound on the bottleneck width.
        keep_gate: store the pooling weights in ``last_gate`` on every forward.
    """

    def __init__(self, channels: int, *, reduction: int = 16, min_hidden: int = 8, keep_gate: bool = False):
        super().__init__()
        hidden = reduced_channels(channels, reduction, min_hidden)
        self.attn_logits = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        self.keep_gate = keep_gate
        self.last_gate: dict[str, Tensor] = {}
        self.init_affinity()
        self.zero_init_last()

    def init_affinity(self) -> None:
        """Kaiming fan-in init of the attention logits, as the authors' code: a ResNet's fan-out init gives this
        one-output conv weights of std sqrt(2), and the softmax starts one-hot, passing its logits no gradient."""
        if self.attn_logits.weight.is_meta:  # torch's kaiming_normal_ draws even there (a meta build's time)
            return
        nn.init.kaiming_normal_(self.attn_logits.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.attn_logits.bias)

    def zero_init_last(self) -> None:
        """Zero the transform's output conv so the block starts as the identity."""
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        weights = torch.softmax(self.attn_logits(x).view(b, 1, h * w), dim=-1)  # (B, 1, HW)
        if self.keep_gate:
            self.last_gate = {"spatial": weights.view(b, 1, h, w).detach()}
        context = (x.reshape(b, c, h * w) @ weights.transpose(1, 2)).view(b, c, 1, 1)  # (B, C, 1, 1)
        return x + self.transform(context)
