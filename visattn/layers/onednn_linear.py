"""``F.linear`` for large fp32 inference products on the CPU, through oneDNN's inner product.

Reference: oneDNN's inner-product primitive (https://uxlfoundation.github.io/oneDNN/dev_guide_inner_product.html),
which PyTorch ships as ``torch.ops.mkldnn._linear_pointwise``: the op ``torch.compile``'s CPU
``freezing`` pass lowers linear layers to. Eager ``F.linear`` calls MKL's sgemm instead, which on the
AMD EPYC (AVX-512) we measured ran at 195 GFLOP/s with two threads where oneDNN ran at 415-455: the
captioner's LSTM product ``(320, 256) x (256, 1024)`` took 0.86 ms against 0.39 ms. oneDNN costs about
10 us more per call, so products up to ``MIN_MULTIPLY_ADDS`` stay with ``F.linear``, as does anything
autograd, autocast or another device or dtype would see: the op has no autocast rule and is not what
training differentiates. Under ``torch.export`` every product stays with ``F.linear``: the size test on a dynamic
batch held the exported graph to the batches on one side of ``MIN_MULTIPLY_ADDS`` (2 to 4 images of the scenes
captioner's first step), and the oneDNN op would tie the graph to the CPU.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Rows x in x out above which oneDNN goes: (64, 256) x (256, 1024) took 0.09 ms against MKL's 0.19. Below
# it MKL's smaller fixed cost wins, or oneDNN's reorder of an uncached weight: one-image decoding's
# (5, 256) x (256, 1024) product ran faster through oneDNN alone but slowed a search down by 4%.
MIN_MULTIPLY_ADDS = 1 << 21


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, add: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, weight, bias) + add`` for ``x`` of shape ``(..., in)``; ``add`` (``(rows, out)`` for a
    2-d ``x``, given without ``bias``) is summed in place of a bias, as ``torch.addmm(add, x, weight.t())``.
    TorchScript compiles the ``F.linear`` path."""
    if not torch.jit.is_scripting():
        if _onednn_computes(x, weight):
            rows = x.reshape(-1, x.shape[-1]).contiguous()  # (rows, in): oneDNN's inner product takes 2-d input
            out = torch.ops.mkldnn._linear_pointwise(rows, weight.contiguous(), bias, "none", [], "")
            out = out.view(*x.shape[:-1], weight.shape[0])
            return out if add is None else out.add_(add)
    return F.linear(x, weight, bias) if add is None else torch.addmm(add, x, weight.t())


def _onednn_computes(x: Tensor, weight: Tensor) -> bool:
    # The size first (after export, which must not test a symbolic size): decoding one image asks this of every
    # small product, each step.
    return (not torch.compiler.is_exporting()
            and x.numel() * weight.shape[0] > MIN_MULTIPLY_ADDS  # rows x in x out
            and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
