"""Registry-wide model checks, parametrized over every registered architecture (as timm's tests are)."""
import pytest
import torch

from visattn import create_model, list_models
from visattn.registry import model_family

# Small inputs keep the whole sweep fast; families whose input size is fixed at build time get it here.
BUILD_KWARGS = {"vit": {"img_size": 32}}
INPUT = (2, 3, 32, 32)
# Captioners take (images, captions) and have no classifier head; tests/test_show_attend_tell.py sweeps them.
CLASSIFIERS = [name for name in list_models() if model_family(name) != "show_attend_tell"]


def _build(name: str, **kwargs):
    torch.manual_seed(0)
    return create_model(name, num_classes=7, **BUILD_KWARGS.get(model_family(name), {}), **kwargs)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_backward(name):
    model = _build(name).train()
    out = model(torch.randn(INPUT))
    assert out.shape == (INPUT[0], 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_interface(name):
    model = _build(name).eval()
    x = torch.randn(INPUT)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert torch.allclose(model.forward_head(features), logits, atol=1e-5)
    assert pooled.shape == (INPUT[0], model.num_features)
    assert getattr(model, model.classifier).out_features == model.num_classes == 7
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(x).shape == (INPUT[0], 3)
