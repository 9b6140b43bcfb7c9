"""Image geometry: non-square, odd and tiny images keep height and width apart through decoding, preprocessing,
explanation maps, the pointing game and detection boxes. A marker in one corner of the input must land in the
matching corner of whatever comes back; square images would hide a swapped height and width."""
import io
import json
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageOps
from torch import nn

import visattn.explain as explain_module
from visattn import create_model
from visattn.data.image_io import decode_image
from visattn.data.transforms import eval_transforms, train_transforms
from visattn.errors import ConfigError, VisattnWarning
from visattn.explain import explain, pointing_hit
from visattn.explain.cell_centres import map_centres
from visattn.inference.classifier import Classifier
from visattn.inference.detector import Detector, detect_files

SHAPES = [(24, 72), (72, 24), (97, 211)]  # 3:1, 1:3 and odd sides
CORNERS = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (bottom?, right?)


class BrightnessNet(nn.Module):
    """Logits from the summed ReLU of one convolution with all-ones weights: its Grad-CAM map is the bright pixels."""

    def __init__(self, kernel: int = 1, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel, stride, padding, bias=False)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.head.weight.fill_(1.0)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).sum(dim=(2, 3)))


def _marked(height: int, width: int, corner: tuple[int, int]) -> torch.Tensor:
    """A black ``(3, H, W)`` image with a white eighth of each side in ``corner``."""
    image = torch.zeros(3, height, width)
    rows, cols = max(1, height // 8), max(1, width // 8)
    row_slice = slice(height - rows, height) if corner[0] else slice(0, rows)
    col_slice = slice(width - cols, width) if corner[1] else slice(0, cols)
    image[:, row_slice, col_slice] = 1.0
    return image


def _corner_of_peak(heat: np.ndarray) -> tuple[int, int]:
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(row >= heat.shape[0] / 2), int(col >= heat.shape[1] / 2)


@pytest.mark.parametrize("kernel, stride, padding", [(1, 1, 0), (4, 4, 0), (3, 2, 1)], ids=["1px", "tiled", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_grad_cam_map_lights_the_corner_of_a_non_square_image_the_marker_is_in(kernel, stride, padding, shape):
    model = BrightnessNet(kernel, stride, padding).eval()
    for corner in CORNERS:
        heat = explain(model, _marked(*shape, corner), "gradcam", layer="conv")
        assert heat.shape == shape
        assert _corner_of_peak(heat) == corner


@pytest.mark.parametrize("method", ["rollout", "attention"])
@pytest.mark.parametrize("shape", [(12, 36), (36, 12)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_vit_attention_to_the_top_right_patch_is_drawn_top_right_on_a_non_square_input(monkeypatch, method, shape):
    """The class token attends only to the patch in row 0, last column: the map at the image's size peaks there."""
    vit = create_model("vit_tiny_patch4_28", num_classes=3, depth=1, dynamic_img_size=True).eval()
    rows, cols = shape[0] // 4, shape[1] // 4

    def top_right_attention(model, images):
        attention = torch.eye(1 + rows * cols).repeat(1, 3, 1, 1)  # (B, heads, N, N)
        attention[:, :, 0, 0], attention[:, :, 0, cols] = 0.0, 1.0  # token `cols` is patch (0, cols - 1)
        return None, [attention]

    monkeypatch.setattr(explain_module, "collect_attentions", top_right_attention)
    heat = explain(vit, torch.randn(3, *shape), method)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert heat.shape == shape and row < 4 and col >= shape[1] - 4


@pytest.mark.parametrize("arch", ["resnet20_cifar", "vit_tiny_patch4_28"])
@pytest.mark.parametrize("grid, image", [((2, 6), (20, 60)), ((6, 2), (60, 20)), ((3, 7), (97, 211))])
def test_the_pointing_game_reads_x_along_the_width_and_y_along_the_height(arch, grid, image):
    heat = torch.zeros(grid)
    heat[0, -1] = 1.0  # top right
    centres = map_centres(create_model(arch, num_classes=3), grid, image)
    height, width = image
    assert pointing_hit(heat, [0.6 * width, 0, width, 0.4 * height], image, centres=centres)
    assert not pointing_hit(heat, [0, 0.6 * height, 0.4 * width, height], image, centres=centres)  # bottom left
    assert not pointing_hit(heat, [0, 0.6 * width, 0.4 * height, width], image, centres=centres)  # x and y swapped


def _encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _gray_marker() -> np.ndarray:
    gray = np.zeros((13, 31), np.uint8)  # odd, 1:2.4
    gray[:2, -3:] = 255  # top right
    return gray


@pytest.mark.parametrize("mode", ["L", "1", "LA", "RGBA", "P", "I;16", "F", "CMYK"])
def test_gray_alpha_palette_and_high_depth_images_decode_to_rgb_in_their_orientation(mode):
    gray = _gray_marker()
    images = {"L": Image.fromarray(gray), "1": Image.fromarray(gray).convert("1"),
              "LA": Image.fromarray(np.stack([gray, np.full_like(gray, 255)], -1), "LA"),
              "RGBA": Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 255)]), "RGBA"),
              "P": Image.fromarray(gray).convert("P"), "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
              "F": Image.fromarray(gray.astype(np.float32) / 255),
              "CMYK": Image.fromarray(np.dstack([gray] * 3)).convert("CMYK")}
    fmt = {"F": "TIFF", "CMYK": "JPEG"}.get(mode, "PNG")
    pixels = decode_image(_encoded(images[mode], fmt, **({"quality": 100} if fmt == "JPEG" else {})))
    assert pixels.shape == (13, 31, 3) and pixels.dtype == np.uint8
    assert pixels[0, -1].min() > 200 and pixels[-1, 0].max() < 60


@pytest.mark.parametrize("recipe", ["photo", "small"])
@pytest.mark.parametrize("input_size", [(3, 12, 36), (1, 36, 12), (3, 28, 28)])
@pytest.mark.parametrize("image_shape", [(1, 1, 3), (2, 3, 3), (5, 1, 3), (3, 2)], ids=str)
def test_images_smaller_than_the_model_input_are_resized_to_it(recipe, input_size, image_shape):
    image = np.full(image_shape, 128, np.uint8)
    for transform in (eval_transforms(input_size, recipe=recipe), train_transforms(input_size, recipe=recipe)):
        out = transform(image)
        assert tuple(out.shape) == input_size and torch.isfinite(out).all()


@pytest.mark.parametrize("input_size", [(3, 12, 36), (3, 36, 12)])
def test_the_small_recipe_keeps_a_top_right_marker_top_right(input_size):
    image = np.zeros((97, 211, 3), np.uint8)
    image[:12, -26:] = 255
    out = eval_transforms(input_size, recipe="small", mean=(0.0,) * 3, std=(1.0,) * 3)(image)
    row, col = divmod(int(out.sum(dim=0).argmax()), out.shape[-1])
    assert row < input_size[1] / 4 and col > 3 * input_size[2] / 4


class BrightBoxDetector(nn.Module):
    """Finds the bright pixels' bounding box, xyxy in the image's pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        found = []
        for image in images:
            ys, xs = torch.nonzero(image.float().mean(dim=0) > (0.5 if image.is_floating_point() else 128),
                                   as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            found.append({"boxes": box, "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.long)})
        return found


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_detect_boxes_are_on_the_photo_as_displayed_after_its_exif_turn(tmp_path, capsys, orientation):
    stored = np.zeros((40, 120, 3), np.uint8)
    stored[:8, 100:] = 255  # top right of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=100)
    detector = Detector(BrightBoxDetector(), ["marker"], {}, "bright", "bright", {})
    detect_files(detector, [str(path)], out=str(tmp_path / "drawn"), as_json=True)
    record = json.loads(capsys.readouterr().out)
    with Image.open(path) as raw:
        shown = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    ys, xs = np.nonzero(shown.mean(axis=-1) > 128)
    assert record["detections"][0]["box"] == pytest.approx([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], abs=1)
    drawn = np.asarray(Image.open(record["drawn"]))
    assert drawn.shape[0] * shown.shape[1] == drawn.shape[1] * shown.shape[0]  # the displayed orientation


def _timm_vit(**kwargs) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=1, **kwargs).eval()


@pytest.mark.parametrize("kwargs, size, message", [
    ({"img_size": 32}, (16, 48), r"input is \(16, 48\) but the model expects \(32, 32\); resize the image, or build "
                                 r"the model with img_size=\(16, 48\) or dynamic_img_size=True"),
    ({"img_size": 32}, (8, 8), r"input is \(8, 8\) but the model expects \(32, 32\); resize the image$"),
    ({"img_size": 32, "dynamic_img_size": True}, (33, 97), r"input is \(33, 97\), whose sides are not multiples of "
                                                          r"the patch size \(16, 16\)"),
], ids=["other-size", "smaller-than-a-patch", "not-whole-patches"])
def test_an_image_a_timm_vit_cannot_take_is_one_line_from_explain_and_predict(kwargs, size, message):
    """timm's patch embedding asserted in the forward: a bare AssertionError traceback, where visattn's ViTs say
    what to do."""
    model = _timm_vit(**kwargs)
    for method in ("gradcam", "rollout"):
        with pytest.raises(ConfigError, match=message):
            explain(model, torch.randn(3, *size), method)
    classifier = Classifier(model, ["a", "b", "c"], {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3},
                            "timm:vit_tiny_patch16_224", "timm:vit_tiny_patch16_224", {})
    with pytest.raises(ConfigError, match=message):
        classifier.predict(torch.randn(1, 3, *size))


def test_a_timm_vit_that_pads_to_whole_patches_explains_images_smaller_than_a_patch():
    model = _timm_vit(img_size=32, dynamic_img_size=True, dynamic_img_pad=True)
    with pytest.warns(VisattnWarning, match="1x1 grid"):  # one padded patch: a map, though it shows no place
        assert explain(model, torch.randn(3, 5, 11), "gradcam").shape == (5, 11)
