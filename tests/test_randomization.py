"""The model parameter randomization test (Adebayo et al. 2018): its stages, its cascade and its similarities."""
import json

import pytest
import scipy.stats
import torch
from torch import nn

from visattn import create_model
from visattn.cli import EXPLAIN_METHODS, main
from visattn.errors import ArgumentError
from visattn.explain import METHODS, evaluate_randomization
from visattn.explain.randomization import forward_stages, map_similarity, randomized_models
from visattn.inference.classifier import Classifier

from test_data import needs_fashion_mnist


class _HeadFirst(nn.Module):
    """Registers its modules out of forward order; one is never run, one has no parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 4)
        self.blocks = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.offset = nn.Parameter(torch.full((1, 4, 1, 1), 0.5))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(images) + self.offset).mean(dim=(2, 3)))


def _changed(model: nn.Module, reference: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, value in model.state_dict().items() if not torch.equal(value, reference[name])}


def test_stages_follow_the_forward_and_the_model_holds_its_own_parameters_in_the_first():
    model = _HeadFirst()
    stages = forward_stages(model, torch.randn(1, 1, 6, 6))
    assert [name for name, _, _ in stages] == ["stem + offset", "blocks.0", "blocks.1", "head"]
    assert [module for _, module, _ in stages] == [model.stem, model.blocks[0], model.blocks[1], model.head]
    assert stages[0][2] == [model.offset] and all(own == [] for _, _, own in stages[1:])


def _trained_head_first() -> _HeadFirst:
    torch.manual_seed(1)  # not the cascade's seed 0, which would draw this head again
    model = _HeadFirst()
    with torch.no_grad():
        for value in (model.blocks[1].weight, model.blocks[1].bias, model.blocks[1].running_mean):
            value.fill_(0.3)  # as trained: batch norm's reset puts back ones and zeros
    return model


def test_the_cascade_redraws_one_more_stage_from_the_output_at_each_step_and_leaves_the_model():
    model = _trained_head_first()
    trained = {name: value.clone() for name, value in model.state_dict().items()}
    stages = forward_stages(model, torch.randn(1, 1, 6, 6))
    rng = torch.get_rng_state()
    steps = [(name, _changed(copy, trained), copy.state_dict()) for name, copy in randomized_models(model, stages)]
    assert torch.equal(torch.get_rng_state(), rng)  # the seeded draws leave the caller's random state alone
    assert [(name, changed) for name, changed, _ in steps] == [
        ("head", {"head.weight", "head.bias"}),
        ("blocks.1", {"head.weight", "head.bias", "blocks.1.weight", "blocks.1.bias", "blocks.1.running_mean"}),
        ("blocks.0", {"head.weight", "head.bias", "blocks.1.weight", "blocks.1.bias", "blocks.1.running_mean",
                      "blocks.0.weight", "blocks.0.bias"}),
        ("stem + offset", set(trained) - {"blocks.1.running_var", "blocks.1.num_batches_tracked", "unused.weight",
                                          "unused.bias"}),
    ]
    assert _changed(model, trained) == set()
    torch.manual_seed(7)  # the cascade draws alike whatever the caller's random state
    again = [copy.state_dict() for _, copy in randomized_models(model, stages)]
    assert all(torch.equal(a, b) for a, b in zip(steps[-1][2].values(), again[-1].values()))


def test_independent_randomization_redraws_each_stage_alone_as_the_cascade_draws_it():
    model = _trained_head_first()
    stages = forward_stages(model, torch.randn(1, 1, 6, 6))
    trained = {name: value.clone() for name, value in model.state_dict().items()}
    cascade = [{key: value.clone() for key, value in copy.state_dict().items()}
               for _, copy in randomized_models(model, stages)]
    alone = [(name, {key: value.clone() for key, value in copy.state_dict().items()})
             for name, copy in randomized_models(model, stages, mode="independent")]
    assert [name for name, _ in alone] == ["head", "blocks.1", "blocks.0", "stem + offset"]
    for name, state in alone:
        prefix = name.split(" ")[0]
        changed = {key for key, value in state.items() if not torch.equal(value, trained[key])}
        assert changed and all(key.startswith(prefix) or key == "offset" for key in changed)
        for key in changed:  # drawn as the cascade drew that stage
            assert torch.equal(state[key], cascade[-1][key])
    with pytest.raises(ArgumentError, match="^mode='both': use one of cascading, independent$"):
        next(randomized_models(model, stages, mode="both"))


def test_map_similarity_is_spearmans_rank_correlation_and_ssim_of_each_pair():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 9, 8, generator=generator)
    others = torch.rand(3, 9, 8, generator=generator)
    others[0, :4] = 0.5  # ties take their mean rank, as scipy's
    spearman, ssim = map_similarity(maps, others)
    expected = [scipy.stats.spearmanr(a.flatten(), b.flatten()).statistic for a, b in zip(maps, others)]
    torch.testing.assert_close(spearman, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=0)
    assert ssim.shape == (3,) and (ssim < 0.5).all()
    same, same_ssim = map_similarity(maps, maps.clone())
    inverted, _ = map_similarity(maps, 1 - maps)
    blank, _ = map_similarity(maps, torch.zeros_like(maps))
    torch.testing.assert_close(same, torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(same_ssim, torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(inverted, -torch.ones(3), atol=1e-5, rtol=0)
    assert blank.abs().max() < 1e-6  # a constant map has no order to share
    small, _ = map_similarity(maps[:, :5, :5], maps[:, :5, :5])  # a window narrower than SSIM's 11
    torch.testing.assert_close(small, torch.ones(3), atol=1e-5, rtol=0)


def _tiny_vit_classifier() -> Classifier:
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch4_28", depth=2, num_classes=10, embed_dim=48, num_heads=3).eval()
    preprocessing = {"input_size": [3, 28, 28], "mean": [0.5] * 3, "std": [0.5] * 3, "recipe": "small"}
    return Classifier(model, [str(i) for i in range(10)], preprocessing, "tiny", "vit_tiny_patch4_28", {})


def test_rollout_does_not_read_the_head_and_gradient_rollout_does():
    classifier = _tiny_vit_classifier()
    samples = [(torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(i)), i % 10) for i in range(5)]
    rollout = evaluate_randomization(classifier, samples, method="rollout", batch_size=4)
    assert rollout.keys() == {"method", "mode", "another_image", "steps", "n"}
    assert (rollout["method"], rollout["mode"], rollout["n"]) == ("rollout", "cascading", 5)
    assert [step["stage"] for step in rollout["steps"]] == ["head", "norm", "blocks.1", "blocks.0",
                                                                "patch_embed + cls_token + pos_embed"]
    for step in rollout["steps"][:2]:  # the head and the norm before it: rollout reads neither
        assert step["spearman"] == pytest.approx(1.0, abs=1e-5) and step["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert rollout["steps"][-1]["spearman"] < 0.9
    gradient = evaluate_randomization(classifier, samples, method="gradrollout", batch_size=4)
    assert gradient["steps"][0]["spearman"] < 0.99
    assert -1.0 <= gradient["another_image"]["spearman"] < 1.0


def test_the_commands_offer_every_explain_method():
    assert EXPLAIN_METHODS == METHODS


@needs_fashion_mnist
def test_cli_evaluate_prints_the_randomization_cascade(capsys):
    assert main(["evaluate", "--model", "se_resnet20_cifar.fmnist", "--dataset", "fashion-mnist", "--limit", "9",
                 "--batch-size", "4", "--randomization", "gradcam"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    test = json.loads(lines[-1])["randomization"]
    assert (test["method"], test["mode"], test["n"]) == ("gradcam", "cascading", 9)
    assert [step["stage"] for step in test["steps"]][:2] == ["fc", "layer3.2"]
    assert test["steps"][-1]["stage"] == "conv1"
    assert lines[1].startswith("  cascading randomization test of gradcam maps on 9 images, each against the "
                               "trained model's map (another image's map: spearman "
                               f"{test['another_image']['spearman']}, ssim ")
    assert lines[2] == (f"    re-drawn down to fc: spearman {test['steps'][0]['spearman']}, "
                        f"ssim {test['steps'][0]['ssim']}")
    assert len(lines) == 2 + len(test["steps"]) + 1
    assert main(["evaluate", "--model", "se_resnet20_cifar.fmnist", "--dataset", "fashion-mnist", "--limit", "9",
                 "--batch-size", "4", "--randomization", "gradcam", "--randomization-mode", "independent"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    alone = json.loads(lines[-1])["randomization"]
    assert alone["mode"] == "independent" and alone["steps"][0] == test["steps"][0]  # the head alone, either way
    assert lines[1].startswith("  independent randomization test of gradcam maps on 9 images")
    assert lines[3] == (f"    layer3.2 alone re-drawn: spearman {alone['steps'][1]['spearman']}, "
                        f"ssim {alone['steps'][1]['ssim']}")


def test_a_cnns_gates_read_no_stage_after_the_last_gate():
    """Spatial gates come from the forward alone: re-drawing the head leaves them as they were, and re-drawing the
    stages that hold the gates changes them."""
    torch.manual_seed(0)
    model = create_model("cbam_resnet20_cifar", num_classes=4).eval()
    preprocessing = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "recipe": "small"}
    classifier = Classifier(model, [str(i) for i in range(4)], preprocessing, "tiny", "cbam_resnet20_cifar", {})
    samples = [(torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)), 0) for i in range(3)]
    gates = evaluate_randomization(classifier, samples, method="gates", batch_size=3)
    assert [step["stage"] for step in gates["steps"]][:2] == ["fc", "layer3.2"]
    assert gates["steps"][0]["spearman"] == pytest.approx(1.0, abs=1e-5)
    assert gates["steps"][-1]["spearman"] < 0.9
