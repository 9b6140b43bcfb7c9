"""Deletion and insertion scores of saliency maps (RISE), checked against curves built pixel by pixel."""
import json

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from visattn import create_model, load_classifier
from visattn.cli import main
from visattn.errors import ConfigError
from visattn.explain import curve_area, deletion_fill, deletion_insertion_curves, evaluate_faithfulness
from visattn.explain.linear_imputation import noisy_linear_imputation
from visattn.inference.classifier_scoring import evaluation_dataset

from test_data import needs_fashion_mnist


class _PixelEvidence(nn.Module):
    """Two classes; class 1's logit is the weighted sum of the pixels, class 0's is 0."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = nn.Parameter(weights)  # (C, H, W)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        evidence = (images * self.weights).sum(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(evidence), evidence], dim=1)


def _curves_pixel_by_pixel(model, image, heat, cls, fill, steps):
    """The curves as RISE describes them, one image, moving pixels one at a time in the map's order."""
    order = sorted(range(heat.numel()), key=lambda i: (-float(heat.flatten()[i]), i))
    width = image.shape[-1]
    deleted, inserted = image.clone(), TF.gaussian_blur(image[None], [11, 11], [5.0, 5.0])[0]
    counts = [round(step * heat.numel() / steps) for step in range(steps + 1)]
    deletion, insertion, moved = [], [], 0
    for count in counts:
        for index in order[moved:count]:
            row, col = divmod(index, width)
            deleted[:, row, col] = fill[:, row, col]
            inserted[:, row, col] = image[:, row, col]
        moved = count
        deletion.append(model(deleted[None]).softmax(dim=1)[0, cls])
        insertion.append(model(inserted[None]).softmax(dim=1)[0, cls])
    return torch.stack(deletion), torch.stack(insertion)


def test_curves_follow_the_class_probability_as_the_maps_pixels_move_one_by_one():
    generator = torch.Generator().manual_seed(0)
    model = _PixelEvidence(torch.randn(3, 12, 11, generator=generator))
    images = torch.randn(2, 3, 12, 11, generator=generator)
    maps = torch.randn(2, 12, 11, generator=generator)
    maps[1, :2] = 0.0  # ties: taken in raster order
    classes = torch.tensor([1, 0])
    fill = deletion_fill(images, "black", mean=[0.3, 0.4, 0.5], std=[0.2, 0.25, 0.5])
    deletion, insertion = deletion_insertion_curves(model, images, maps, classes, fill, steps=7)
    assert deletion.shape == insertion.shape == (2, 8) and not (deletion == deletion[:, :1]).all()
    for b in range(2):
        expected = _curves_pixel_by_pixel(model, images[b], maps[b], int(classes[b]), fill[b], 7)
        torch.testing.assert_close(deletion[b], expected[0].detach())
        torch.testing.assert_close(insertion[b], expected[1].detach())


def test_a_map_that_ranks_the_evidence_first_deletes_it_fastest():
    """Class 1's evidence sits in the top-left 3x3 pixels: the map that ranks them first scores the lowest deletion
    area and the highest insertion area; the map that ranks them last the reverse."""
    right = torch.zeros(1, 12, 12)
    right[:, :3, :3] = 1.0
    model = _PixelEvidence(right.clone())
    images = right[None].clone()  # the evidence alone: blurred, it spreads out of the 3x3 pixels
    fill = deletion_fill(images, "mean", mean=[0.5], std=[0.5])  # 0 here: no evidence
    areas = {}
    for name, heat in (("right", right), ("wrong", -right)):
        deletion, insertion = deletion_insertion_curves(model, images, heat, torch.tensor([1]), fill, steps=4)
        areas[name] = (float(curve_area(deletion)), float(curve_area(insertion)))
        torch.testing.assert_close(deletion[:, 0], model(images).softmax(dim=1)[:, 1])  # the whole image first
        torch.testing.assert_close(deletion[:, -1], torch.tensor([0.5]))  # all deleted: no evidence either way
    assert areas["right"][0] < areas["wrong"][0] and areas["right"][1] > areas["wrong"][1]


def _neighbour_mean(image: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """ROAD's weighted mean of a pixel's neighbours in the image: 1/6 beside, 1/12 diagonal, none outside."""
    total, weights = torch.zeros(image.shape[0], dtype=torch.float64), 0.0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            y, x = row + dy, col + dx
            if (dy, dx) != (0, 0) and 0 <= y < image.shape[1] and 0 <= x < image.shape[2]:
                weight = 1 / 12 if dy and dx else 1 / 6
                total += weight * image[:, y, x].double()
                weights += weight
    return total / weights


def test_imputed_pixels_are_the_weighted_mean_of_their_neighbours_and_the_rest_stay():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 9, 7, generator=generator)
    removed = torch.rand(2, 1, 9, 7, generator=generator) < 0.4
    removed[1, 0, :5, :4] = True  # a block whose inner pixels have only removed neighbours
    filled = noisy_linear_imputation(images, removed, noise_std=0.0)
    torch.testing.assert_close(filled[~removed.expand_as(images)], images[~removed.expand_as(images)], rtol=0, atol=0)
    for b, row, col in removed[:, 0].nonzero().tolist():
        torch.testing.assert_close(filled[b, :, row, col].double(), _neighbour_mean(filled[b], row, col),
                                   rtol=0, atol=1e-5)
    every = noisy_linear_imputation(images, torch.ones(2, 9, 7, dtype=torch.bool), noise_std=0.0)
    assert not every.any()  # nothing to impute from: the normalised mean colour
    noisy = [noisy_linear_imputation(images, removed, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    torch.testing.assert_close(noisy[0], noisy[1], rtol=0, atol=0)  # seeded
    spread = (noisy[0] - filled)[removed.expand_as(images)]
    assert 0.008 < float(spread.std()) < 0.012 and not (noisy[0] - filled)[~removed.expand_as(images)].any()


def test_imputed_deletion_fills_each_step_from_the_pixels_left():
    generator = torch.Generator().manual_seed(0)
    model = _PixelEvidence(torch.randn(3, 8, 8, generator=generator))
    images = torch.randn(2, 3, 8, 8, generator=generator)
    maps = torch.rand(2, 8, 8, generator=generator)
    fill = deletion_fill(images, "imputed", mean=[0.5] * 3, std=[0.5] * 3, generator=torch.Generator().manual_seed(1))
    deletion, _ = deletion_insertion_curves(model, images, maps, torch.tensor([1, 1]), fill, steps=4)
    noise = torch.Generator().manual_seed(1)
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    for step, count in enumerate([0, 16, 32, 48, 64]):
        removed = torch.zeros(2, 64, dtype=torch.bool).scatter_(1, order[:, :count], True).view(2, 1, 8, 8)
        expected = model(noisy_linear_imputation(images, removed, generator=noise)).softmax(dim=1)[:, 1]
        torch.testing.assert_close(deletion[:, step], expected.detach())


def test_curve_area_integrates_over_the_unit_interval():
    torch.testing.assert_close(curve_area(torch.ones(3, 5)), torch.ones(3))
    torch.testing.assert_close(curve_area(torch.linspace(0, 1, 9)), torch.tensor(0.5))
    torch.testing.assert_close(curve_area(torch.tensor([1.0, 0.0, 0.0])), torch.tensor(0.25))


def test_deletion_fill_is_black_the_mean_colour_or_the_blurred_image():
    images = torch.randn(2, 3, 12, 12)
    black = deletion_fill(images, "black", mean=[0.2, 0.4, 0.6], std=[0.5, 0.5, 0.25])
    torch.testing.assert_close(black[1, :, 5, 7], torch.tensor([-0.4, -0.8, -2.4]))  # pixel 0 normalised
    assert black.shape == images.shape
    gray = deletion_fill(images[:, :1], "black", mean=[0.2, 0.4, 0.6], std=[0.5, 0.5, 0.25])
    torch.testing.assert_close(gray[0, :, 0, 0], torch.tensor([-0.4]))  # a gray input: the first channel's
    assert not deletion_fill(images, "mean", mean=[0.2] * 3, std=[0.5] * 3).any()
    torch.testing.assert_close(deletion_fill(images, "blur", mean=[0.2] * 3, std=[0.5] * 3),
                               TF.gaussian_blur(images, [11, 11], [5.0, 5.0]))
    tiny = torch.randn(1, 3, 5, 4)  # reflect padding takes at most 3 px here: a 7-pixel kernel
    torch.testing.assert_close(deletion_fill(tiny, "blur", mean=[0.2] * 3, std=[0.5] * 3),
                               TF.gaussian_blur(tiny, [7, 7], [5.0, 5.0]))
    with pytest.raises(ConfigError, match="^fill='white': use one of black, mean, blur, imputed$"):
        deletion_fill(images, "white", mean=[0.2] * 3, std=[0.5] * 3)


def test_curves_refuse_maps_that_do_not_cover_the_images():
    model = _PixelEvidence(torch.ones(3, 8, 8))
    images = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"^maps of shape \(2, 4, 4\) do not cover images of shape \(2, 3, 8, 8\)"):
        deletion_insertion_curves(model, images, torch.zeros(2, 4, 4), torch.tensor([0, 1]), images)
    with pytest.raises(ConfigError, match="^steps=0: give a whole number of curve steps"):
        deletion_insertion_curves(model, images, torch.zeros(2, 8, 8), torch.tensor([0, 1]), images, steps=0)


@needs_fashion_mnist
def test_evaluate_faithfulness_scores_the_maps_beside_random_ones():
    classifier = load_classifier("se_resnet20_cifar.fmnist")
    dataset = evaluation_dataset("fashion-mnist", "test", classifier.transform(), classifier.class_names)
    scores = evaluate_faithfulness(classifier, dataset, method="gradcam", steps=4, batch_size=8, limit=16)
    assert scores.keys() == {"deletion", "insertion", "random_deletion", "random_insertion", "faithfulness_method",
                             "fill", "steps", "n"}
    assert (scores["faithfulness_method"], scores["fill"], scores["steps"], scores["n"]) == ("gradcam", "black", 4, 16)
    assert all(0.0 <= scores[key] <= 1.0 for key in ("deletion", "insertion", "random_deletion", "random_insertion"))
    # the same images drawn again score the same (the random maps are seeded)
    assert evaluate_faithfulness(classifier, dataset, method="gradcam", steps=4, batch_size=8, limit=16) == scores
    with pytest.raises(ConfigError, match="^method='rollout': does not fit ResNet; use gradcam or gradcam"):
        evaluate_faithfulness(classifier, dataset, method="rollout", limit=16)
    with pytest.raises(ConfigError, match="^fill='white': use one of black, mean, blur, imputed$"):
        evaluate_faithfulness(classifier, dataset, fill="white", limit=16)


def test_evaluate_faithfulness_explains_a_vits_predicted_class_with_a_class_method():
    model = create_model("vit_tiny_patch4_28", depth=2, num_classes=10, embed_dim=48, num_heads=3).eval()
    from visattn.inference.classifier import Classifier

    preprocessing = {"input_size": [3, 28, 28], "mean": [0.5] * 3, "std": [0.5] * 3, "recipe": "small"}
    classifier = Classifier(model, [str(i) for i in range(10)], preprocessing, "tiny", "vit_tiny_patch4_28", {})
    samples = [(torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(i)), i % 10) for i in range(6)]
    for method in ("rollout", "gradrollout"):
        scores = evaluate_faithfulness(classifier, samples, method=method, steps=2, batch_size=4)
        assert scores["n"] == 6 and scores["faithfulness_method"] == method


@needs_fashion_mnist
def test_cli_evaluate_adds_the_faithfulness_scores(capsys):
    assert main(["evaluate", "--model", "se_resnet20_cifar.fmnist", "--dataset", "fashion-mnist", "--limit", "8",
                 "--faithfulness", "gradcam++", "--faithfulness-fill", "blur", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"top1", "deletion", "insertion", "random_deletion", "random_insertion"} <= metrics.keys()
    assert (metrics["faithfulness_method"], metrics["fill"], metrics["n"]) == ("gradcam++", "blur", 8)
