"""Reduced precision on the CPU: bf16 autocast around the Python API, and ``trainer.precision`` bf16-true, keep
what is summed or reported (caption scores, explanation maps, loss means) in float32."""
import pytest
import torch
from torch.nn import functional as F

from visattn import create_model, load_classifier
from visattn.explain import CellCentres, attention_rollout
from visattn.tasks.classification import ImageClassifier


def test_greedy_captions_under_bf16_autocast_score_and_map_in_float32_as_beam_search_does():
    """Greedy decoding summed bf16 log-probabilities into bf16 scores (up to 0.015 off beam 1's float32 sums of the
    same words on 200 of the shipped captioner's test scenes) and gave bf16 maps, where beam search gave float32."""
    torch.manual_seed(0)
    model = create_model("sat_cbam_resnet_scenes", vocab_size=12, pretrained=False).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        greedy = model.greedy_decode(images, max_len=12)
        beam = model.beam_search(images, beam_size=1, max_len=12, length_penalty=0.0)  # log p itself
    assert greedy.scores.dtype == torch.float32 and all(m.dtype == torch.float32 for m in greedy.attention)
    for ours, theirs in zip(greedy.tokens, beam.tokens):
        assert torch.equal(ours, theirs)
    torch.testing.assert_close(greedy.scores, beam.scores, rtol=0, atol=1e-5)  # both sum float32 log-probabilities
    for ours, theirs in zip(greedy.attention, beam.attention):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_rollout_and_maps_resized_to_the_image_stay_float32_under_bf16_autocast():
    """Both multiplied under autocast in bf16: rollout rows summed to 1 only within 0.002, and resized maps (every
    ``explain`` map, DETR's per-detection maps) came back bf16, though documented as float32."""
    torch.manual_seed(0)
    attentions = [torch.rand(2, 3, 17, 17).softmax(dim=-1) for _ in range(4)]  # (B, heads, N, N), 4 blocks
    heat = torch.rand(2, 4, 4)
    centres = CellCentres.blocks((4, 4), (28, 28))
    plain = attention_rollout(attentions, (4, 4)), centres.resample(heat, (28, 28))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = attention_rollout(attentions, (4, 4)), centres.resample(heat, (28, 28))
    assert cast[0][1].dtype == cast[1].dtype == torch.float32
    torch.testing.assert_close(cast[0][1].sum(dim=-1), torch.ones(2, 17), rtol=0, atol=1e-6)
    torch.testing.assert_close(cast[0], plain[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(cast[1], plain[1], rtol=0, atol=1e-6)


def test_a_bf16_true_tasks_losses_are_summed_in_float32():
    """bf16-true casts the whole task, as Lightning does with ``.to(torch.bfloat16)``, which reached the loss means'
    states: val/loss summed in bf16 (1.921875 in a tiny ViT run; 1.926861 summed in float32), train/loss_epoch too."""
    torch.manual_seed(0)
    task = ImageClassifier("resnet20_cifar", num_classes=3, model_kwargs={"layers": [1, 1], "widths": [8, 16]})
    task.eval().to(torch.bfloat16)
    losses = []
    with torch.no_grad():
        for _ in range(20):
            images, labels = torch.randn(7, 3, 8, 8, dtype=torch.bfloat16), torch.randint(0, 3, (7,))
            task._evaluate((images, labels), task.val_metrics, task.val_loss)
            losses.append(F.cross_entropy(task.model(images).float(), labels))
    assert task.val_loss.mean_value.dtype == task.train_loss.mean_value.dtype == torch.float32
    assert float(task.val_loss.compute()) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-6)


def test_classifier_probabilities_are_float32_under_bf16_autocast():
    """Under a caller's bf16 autocast, probabilities came back in bf16 (8 bits of mantissa): close classes rounded to
    ties, which top-k broke by class index."""
    classifier = load_classifier("se_resnet20_cifar.fmnist")
    images = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    plain = classifier.predict(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = classifier.predict(images)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast.sum(dim=-1), torch.ones(4), rtol=0, atol=1e-6)
    torch.testing.assert_close(cast, plain, rtol=0, atol=0.05)
