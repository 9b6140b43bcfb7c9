"""Every attention path stays finite, forward and backward, under bf16 and fp16 autocast with large
activations, and with fully masked rows."""
import json

import pytest
import torch
from torch.nn import functional as F

from visattn import create_model
from visattn.layers.additive_attention import AdditiveAttention
from visattn.layers.attention import SelfAttention
from visattn.layers.create_attn import ATTN_LAYERS, create_attn
from visattn.models.show_attend_tell import PAD_ID, doubly_stochastic_penalty
from visattn.scores import reported_score

# bf16 has float32's range, so activations of 1e4 must pass everywhere. fp16 tops out at 65504: a
# convolution over 1e4-sized activations overflows in any network (loss scaling exists for that), so
# fp16 runs at 1e3, where activations fit but unscaled attention dot products (~1e6) would not.
PRECISIONS = [pytest.param(torch.bfloat16, 1e4, id="bf16-x1e4"), pytest.param(torch.float16, 1e3, id="fp16-x1e3")]
TINY_SAT = json.dumps(dict(encoder_kwargs=dict(layers=[1, 1], widths=[8, 16], small_input=False), img_size=32,
                           grid_size=4, embed_dim=16, hidden_dim=16, attn_dim=16))


def _finite_forward_and_backward(module: torch.nn.Module, *inputs: torch.Tensor, dtype: torch.dtype, **kwargs):
    """Run ``module(*inputs, **kwargs)`` under CPU autocast, assert that its outputs and the gradients of
    its inputs and parameters are finite, and return the outputs."""
    inputs = [x.requires_grad_() if x.is_floating_point() else x for x in inputs]
    try:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            outputs = module(*inputs, **kwargs)
    except RuntimeError as err:  # an op without a CPU kernel for this dtype
        if "not implemented for" in str(err):
            pytest.skip(f"{dtype} on CPU: {err}")
        raise
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    tensors = [t for out in outputs for t in (out if isinstance(out, list) else [out])]  # ViT: (logits, [attn])
    for out in tensors:
        assert torch.isfinite(out).all(), f"non-finite output under {dtype}"
    # a mean, as a training loss is: upstream gradients stay small, as they do in training
    loss = sum((out.float() * torch.randn(out.shape)).mean() for out in tensors)
    leaves = [x for x in inputs if x.requires_grad] + [p for p in module.parameters() if p.requires_grad]
    for grad in torch.autograd.grad(loss, leaves, allow_unused=True):
        assert grad is None or torch.isfinite(grad).all(), f"non-finite gradient under {dtype}"
    return outputs


@pytest.mark.parametrize(("dtype", "scale"), PRECISIONS)
@pytest.mark.parametrize("return_attention", [False, True], ids=["sdpa", "explicit"])
def test_self_attention_paths_stay_finite(dtype, scale, return_attention):
    torch.manual_seed(0)
    x = torch.randn(2, 10, 32) * scale
    outputs = _finite_forward_and_backward(SelfAttention(32, 4), x, dtype=dtype, return_attention=return_attention)
    if return_attention:
        torch.testing.assert_close(outputs[1].float().sum(-1), torch.ones(2, 4, 10))


@pytest.mark.parametrize(("dtype", "scale"), PRECISIONS)
@pytest.mark.parametrize("name", sorted(ATTN_LAYERS))
def test_attention_cnn_layers_stay_finite(dtype, scale, name):
    torch.manual_seed(0)
    module = create_attn(name, 32)
    with torch.no_grad():  # move zero-initialised outputs (non-local, GC) off zero so attention is in the path
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    _finite_forward_and_backward(module, torch.randn(2, 32, 7, 5) * scale, dtype=dtype)


@pytest.mark.parametrize(("dtype", "scale"), PRECISIONS)
def test_vit_stays_finite_with_and_without_returned_attention(dtype, scale):
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch4_28", depth=2, num_classes=10)
    images = torch.randn(2, 3, 28, 28) * scale
    _finite_forward_and_backward(model, images, dtype=dtype)
    _, attentions = _finite_forward_and_backward(model, images, dtype=dtype, return_attention=True)
    assert len(attentions) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_fully_masked_row_gets_zero_weight_and_finite_gradients(dtype):
    torch.manual_seed(0)
    attention = AdditiveAttention(8, 6, attn_dim=4)
    features, query = torch.randn(3, 5, 8), torch.randn(3, 6)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])  # all, some, none
    context, alpha = _finite_forward_and_backward(attention, features, query, dtype=dtype, mask=mask)
    assert (alpha[1, 2:] == 0).all() and (alpha[2] == 0).all() and (context[2] == 0).all()
    torch.testing.assert_close(alpha[:2].float().sum(-1), torch.ones(2), atol=1e-2, rtol=0)


class _CaptionLoss(torch.nn.Module):
    """CaptioningTask's training loss: cross-entropy over real words plus the attention regulariser."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        logits, alphas = self.model(images, captions)  # (B, T, V), (B, T, P)
        targets = captions[:, 1:]
        xent = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=PAD_ID)
        return xent + doubly_stochastic_penalty(alphas.float(), targets != PAD_ID)


@pytest.mark.parametrize(("dtype", "scale"), PRECISIONS)
def test_caption_decoder_with_padded_captions_stays_finite(dtype, scale):
    torch.manual_seed(0)
    model = create_model("sat_cbam_resnet_scenes", vocab_size=9, **json.loads(TINY_SAT))
    images = torch.randn(2, 3, 32, 32) * scale
    captions = torch.tensor([[1, 4, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0, 0]])  # the second is mostly padding
    _finite_forward_and_backward(_CaptionLoss(model), images, captions, dtype=dtype)


@pytest.mark.parametrize("value, shown", [(0.0, 0.0), (0.7161564, 0.716156), (4.3778712, 4.377871), (0.0012345678, 0.001235),
                                          (4.5123456e-07, 4.51235e-07), (-1.0, -1.0),
                                          (0.000123456789, 0.000123457), (-0.000123456789, -0.000123457),
                                          (-1234.5678912, -1234.567891)])
def test_scores_are_reported_to_six_decimals_or_six_significant_digits_below_a_thousandth(value, shown):
    assert reported_score(value) == shown
