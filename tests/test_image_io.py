"""decode_image and list_images on the shared corpus of good, odd and broken image files."""
from __future__ import annotations

import io
import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from fixtures_images import (
    BAD_IMAGES,
    EXPECTED_SHAPES,
    GREEN,
    RED,
    RGBA_COLOUR,
    WHITE,
    png_header_bomb,
    write_image_corpus,
)
from PIL import Image, ImageFile

from visattn.data.image_io import DEFAULT_MAX_PIXELS, decode_image, list_images, run_in_batches
from visattn.errors import ConfigError, ImageDecodeError, VisattnError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_image_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_good_files_decode_to_rgb_uint8(corpus, name):
    image = decode_image(corpus[name])
    assert image.shape == EXPECTED_SHAPES[name]
    assert image.dtype == np.uint8


def test_bytes_and_path_decode_alike(corpus):
    path = corpus["rgb_png"]
    np.testing.assert_array_equal(decode_image(path.read_bytes()), decode_image(path))
    np.testing.assert_array_equal(decode_image(str(path)), decode_image(path))


def test_bytearray_and_memoryview_decode_as_bytes(corpus):
    data = corpus["rgb_png"].read_bytes()
    np.testing.assert_array_equal(decode_image(bytearray(data)), decode_image(data))
    np.testing.assert_array_equal(decode_image(memoryview(data)), decode_image(data))


@pytest.mark.parametrize("make_source, kind", [
    (lambda path: None, "NoneType"),
    (lambda path: np.zeros((4, 4, 3), np.uint8), "ndarray"),
    (lambda path: open(path, "rb"), "BufferedReader"),
    (lambda path: Image.open(path), "PngImageFile"),
])
def test_a_source_that_is_no_path_or_bytes_is_one_line(corpus, make_source, kind):
    """os.fspath raised a raw TypeError for anything but a path or bytes."""
    source = make_source(corpus["rgb_png"])
    try:
        with pytest.raises(ConfigError, match=rf"^source: a {kind}, not a file path or an image file's bytes; give a "
                                              r"path \(str or pathlib.Path\) or the bytes \(an open file's .read\(\)\)$"):
            decode_image(source)
    finally:
        getattr(source, "close", lambda: None)()


@pytest.mark.parametrize("background", ["white", (1, 2), (0, 0, 256), (0.5, 0, 0), (True, 0, 0), None])
def test_a_background_that_is_no_rgb_colour_is_one_line_naming_background(corpus, background):
    """"white" was blamed on the file ("cannot decode image: color must be int..."), and (1, 2) was taken."""
    with pytest.raises(ConfigError, match=r"^background=.*: give an RGB colour, three ints 0..255, "
                                          r"e.g. \(255, 255, 255\) for white$"):
        decode_image(corpus["rgba_png"], background=background)


def test_png_pixels_are_exact(corpus):
    image = decode_image(corpus["rgb_png"])
    assert (image[:, :24] == RED).all() and (image[:, 24:] == (0, 0, 255)).all()


def test_jpeg_colour_within_compression_error(corpus):
    image = decode_image(corpus["rgb_jpg"]).astype(int)
    assert np.abs(image - (200, 100, 50)).max() <= 3


def test_cmyk_becomes_the_expected_rgb(corpus):
    # CMYK (0, 255, 255, 0) is pure red
    image = decode_image(corpus["cmyk_jpg"]).astype(int)
    assert np.abs(image - RED).max() <= 8


@pytest.mark.parametrize("background", [WHITE, (10, 20, 30)])
def test_rgba_is_blended_on_the_background(corpus, background):
    image = decode_image(corpus["rgba_png"], background=background).astype(int)
    assert (image[:, :10] == background).all()  # fully transparent: the background, not black
    assert (image[:, 20:] == RGBA_COLOUR).all()  # opaque: the colour itself
    half = (np.array(RGBA_COLOUR) * 128 + np.array(background) * 127) / 255
    assert np.abs(image[:, 10:20] - half).max() <= 1


def test_palette_transparency_is_blended(corpus):
    image = decode_image(corpus["palette_png"])
    assert (image[:, :10] == WHITE).all()
    assert (image[:, 10:] == GREEN).all()


def test_16_bit_is_rescaled_not_clipped(corpus):
    assert Image.open(corpus["gray16_png"]).mode.startswith("I;16")
    columns = decode_image(corpus["gray16_png"])[0, :, 0]  # 0, 32768, 65535
    assert columns[0] == 0 and columns[2] == 255
    assert abs(int(columns[1]) - 128) <= 1


def test_16_bit_values_keep_their_brightness_when_they_do_not_span_the_range(tmp_path):
    """A 12-bit scan stored as 16-bit (0..4095) was stretched to full brightness: brightness is the fixed
    0..65535 range's, as torchvision scales 16-bit pixels to uint8 (v >> 8, within 1 of the rounded v / 257)."""
    import torch
    from torchvision.transforms.v2.functional import to_dtype

    pixels = np.array([[0, 1000, 4095]], np.uint16)
    Image.fromarray(pixels).save(tmp_path / "12bit.png")
    assert Image.open(tmp_path / "12bit.png").mode.startswith("I;16")
    decoded = decode_image(tmp_path / "12bit.png")[0, :, 0].astype(int)
    assert decoded.tolist() == [0, 4, 16]  # rint(v * 255 / 65535)
    by_torchvision = to_dtype(torch.from_numpy(pixels), torch.uint8, scale=True)[0].numpy().astype(int)  # 0, 3, 15
    assert np.abs(decoded - by_torchvision).max() <= 1


def test_exif_orientation_is_applied(corpus):
    with Image.open(corpus["exif_rotated_jpg"]) as raw:
        assert raw.size == (40, 20) and raw.getexif()[0x0112] == 6
    image = decode_image(corpus["exif_rotated_jpg"])
    assert image.shape[:2] == (40, 20)
    # the stored left half (red) ends up on top after a 90-degree clockwise turn
    assert image[5, 10, 0] > 200 and image[35, 10, 0] < 50


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_files_raise_one_line_error_naming_the_file(corpus, name):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(corpus[name])
    message = str(info.value)
    assert corpus[name].name in message
    assert "\n" not in message
    assert isinstance(info.value, (VisattnError, ValueError))


@pytest.mark.parametrize(
    ("name", "reason"),
    [("truncated_jpg", r"truncated .*\(re-export or remove the file\)$"),
     ("empty_jpg", "empty file .0 bytes.; copy it again from its source, or remove it$"),
     ("text_png", "not a supported image .*; give JPEG, PNG, WebP, TIFF, BMP, GIF or AVIF files, or remove it$")],
)
def test_bad_files_say_why_and_what_to_do(corpus, name, reason):
    """An empty or unsupported file had been named without a fix."""
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(corpus[name])


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(ImageDecodeError, match="nothere.jpg: no such file"):
        decode_image(tmp_path / "nothere.jpg")
    with pytest.raises(ImageDecodeError, match="folder"):
        decode_image(tmp_path)


@pytest.mark.parametrize(
    "size",
    [(30000, 30000), (10000, 10000), (9000, 8000)],
    ids=["pillow-error", "pillow-warning", "own-cap"],
)
def test_bomb_header_is_refused_before_any_pixel_memory_without_warnings(tmp_path, size, monkeypatch):
    assert size[0] * size[1] > DEFAULT_MAX_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_bomb(*size))
    loads = []  # ImageFile.load allocates the whole image (72M+ pixels here), then decodes into it
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda img: loads.append(img.size) or real_load(img))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused = rf"bomb.png: image is (\d+x\d+ = )?\d+ pixels, over the limit of {DEFAULT_MAX_PIXELS} "
        with pytest.raises(ImageDecodeError, match=refused):
            decode_image(path)
    assert loads == []
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.parametrize("size", [(10000, 10000), (14000, 14000)], ids=["over-pillows-warning", "over-pillows-error"])
def test_max_pixels_is_the_limit_a_larger_image_is_decoded_under(tmp_path, size, monkeypatch):
    """A 100 MP photo (108 MP phone sensors) stayed refused at any max_pixels: Pillow's warning, made an error,
    refused it first; above Pillow's error, max_pixels raises Pillow's limit too (only allow_pixels, which
    --max-pixels called, had: a data module's max_pixels was refused by Pillow)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # decode_image raises it
    path = tmp_path / "photo.png"
    path.write_bytes(png_header_bomb(*size))
    loads = []  # the header passed every check once the decoder allocates the pixels: stop it there

    def stop(img):
        loads.append(img.size)
        raise OSError("stopped before allocating")

    monkeypatch.setattr(ImageFile.ImageFile, "load", stop)
    limit = size[0] * size[1]
    if size == (14000, 14000):  # at the default max_pixels Pillow's limit refuses it first: named as max_pixels'
        with pytest.raises(ImageDecodeError, match=rf"photo.png: image is 196000000 pixels, over the limit of "
                           rf"{DEFAULT_MAX_PIXELS} \(possible decompression bomb; for files you trust, raise the "
                           r"limit: --max-pixels N, data.init_args.max_pixels, or max_pixels=N in Python\)$"):
            decode_image(path)
    with pytest.raises(ImageDecodeError, match=re.escape(f"over the limit of {limit - 1} (possible decompression "
                                                         "bomb; for files you trust, raise the limit: --max-pixels N")):
        decode_image(path, max_pixels=limit - 1)
    with pytest.raises(ImageDecodeError, match="photo.png: cannot decode image: stopped before allocating"):
        decode_image(path, max_pixels=limit)
    assert loads == [size]


def test_max_pixels_refuses_a_good_image(corpus):
    with pytest.raises(ImageDecodeError, match="over the limit of 100"):
        decode_image(corpus["rgb_png"], max_pixels=100)
    assert decode_image(corpus["rgb_png"], max_pixels=32 * 48).shape == (32, 48, 3)


def _touch_images(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_list_images_expands_folders_sorted(tmp_path):
    names = ["b.png", "a.JPG", "notes.txt", ".hidden.jpg", "sub/c.webp", ".cache/d.png"]
    _touch_images(tmp_path, names)
    found = list_images(tmp_path)
    assert found == [tmp_path / "a.JPG", tmp_path / "b.png", tmp_path / "sub" / "c.webp"]
    assert list_images(tmp_path, recursive=False) == [tmp_path / "a.JPG", tmp_path / "b.png"]


@pytest.mark.parametrize("paths", [5, None, [5], ["a.png", None]])
def test_list_images_of_what_is_no_path_is_one_line(paths):
    """From Python: a number or None was a TypeError deep inside ("'int' object is not iterable")."""
    with pytest.raises(ConfigError, match=r"^paths=.*: give an image file or folder path, or a list of them$"):
        list_images(paths)


def test_list_images_keeps_explicit_files_in_order_without_repeats(tmp_path):
    _touch_images(tmp_path, ["z.png", "dir/y.png", "readme.md"])
    z, readme, folder = tmp_path / "z.png", tmp_path / "readme.md", tmp_path / "dir"
    assert list_images([z, readme, folder, z]) == [z, readme, folder / "y.png"]
    assert list_images(str(tmp_path / "z.png")) == [tmp_path / "z.png"]


def test_list_images_lists_a_file_named_two_ways_once(tmp_path, monkeypatch):
    """Relative and absolute, through .. or a link: the same file gave two records (and two output PNGs)."""
    _touch_images(tmp_path, ["dir/a.png", "dir/b.png"])
    (tmp_path / "link.png").symlink_to(tmp_path / "dir" / "b.png")
    monkeypatch.chdir(tmp_path)
    found = list_images(["dir/a.png", str(tmp_path / "dir" / "a.png"), "dir/../dir", "link.png"])
    assert found == [Path("dir/a.png"), Path("dir/../dir") / "b.png"]


def test_list_images_missing_path(tmp_path):
    with pytest.raises(ImageDecodeError, match="missing: no such file or folder"):
        list_images([tmp_path / "missing"])


@pytest.mark.parametrize("keep_images", [False, True])
def test_run_in_batches_keeps_order_reports_bad_files_and_keeps_images_only_when_asked(tmp_path, keep_images):
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        if i == 2:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(np.full((4, 6, 3), i, np.uint8)).save(path)
        paths.append(path)
    batches_seen = []

    def run(prepared: list[int]) -> list[int]:
        batches_seen.append(list(prepared))
        return [value * 10 for value in prepared]

    results = list(run_in_batches(paths, 2, lambda image: int(image[0, 0, 0]), run, keep_images=keep_images))
    assert [item.path for item, _ in results] == paths
    assert [result for _, result in results] == [0, 10, None, 30, 40]
    assert batches_seen == [[0, 1], [3], [4]]  # the unreadable file leaves a batch of one
    assert "2.png" in results[2][0].error_line() and results[2][0].image is None
    assert all((item.image is not None) == keep_images for item, _ in results if item.error is None)


def test_list_images_can_require_at_least_one(tmp_path):
    (tmp_path / "notes.txt").write_text("no pictures here")
    assert list_images(tmp_path) == []
    with pytest.raises(ConfigError, match=f"no image files found in {tmp_path}; give image files or folders"):
        list_images(iter([tmp_path]), allow_empty=False)


def _jpeg_bytes(size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), RED).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_folder_scan_lists_jfif_heic_dangling_links_and_link_loops_and_each_says_why(tmp_path):
    (tmp_path / "a.jfif").write_bytes(_jpeg_bytes())
    (tmp_path / "b.jif").write_bytes(_jpeg_bytes())
    (tmp_path / "c.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(12))  # an iPhone photo's header
    (tmp_path / "d.png").symlink_to("gone.png")
    (tmp_path / "e.png").symlink_to("e.png")
    assert list_images(tmp_path) == [tmp_path / name for name in ("a.jfif", "b.jif", "c.heic", "d.png", "e.png")]
    assert decode_image(tmp_path / "a.jfif").shape == decode_image(tmp_path / "b.jif").shape == (16, 16, 3)
    reasons = {"c.heic": "HEIC/HEIF is not supported by Pillow; convert it to JPEG or PNG",
               "d.png": "a link to gone.png, which does not exist; point it at an existing file", "e.png": "symbolic link loop; point the link at an image file"}
    for name, reason in reasons.items():
        with pytest.raises(ImageDecodeError, match=f"{name}: {reason}$"):
            decode_image(tmp_path / name)


def test_folder_scan_follows_symlinked_folders_once_each_without_looping(tmp_path):
    root, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    _touch_images(root, ["x.png", ".hidden/h.png"])
    _touch_images(elsewhere, ["y.png", ".h.png"])
    (root / "linked").symlink_to(elsewhere)
    (root / "same").symlink_to(elsewhere)  # the same real folder again: its files once
    (root / "up").symlink_to(root)  # a loop back to the top
    (root / ".hidden_link").symlink_to(elsewhere)
    assert list_images(root) == [root / "linked" / "y.png", root / "x.png"]
    assert list_images(root, recursive=False) == [root / "x.png"]


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    pipe = tmp_path / "x.png"
    os.mkfifo(pipe)
    errors = []

    def decode() -> None:
        try:
            decode_image(pipe)
        except ImageDecodeError as err:
            errors.append(str(err))

    reader = threading.Thread(target=decode, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # blocked opening the pipe: a writer that closes at once frees it
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=10)
    assert errors == [f"{pipe}: not a regular file (a pipe, socket or device); give an image file"]
    assert list_images(pipe) == [pipe]  # named explicitly, so that reading it reports it


def test_a_truncated_jpeg_whose_decoder_says_truncated_in_capitals_gets_the_fix():
    data = _jpeg_bytes()
    with pytest.raises(ImageDecodeError, match=r"Truncated File Read \(re-export or remove the file\)$"):
        decode_image(data[: len(data) // 2])


def test_a_truncated_image_a_user_opened_is_an_image_decode_error_naming_the_file(tmp_path):
    """Pillow decodes an opened file once its pixels are read, inside visattn's transform: a bare OSError
    ("image file is truncated") that named neither the file nor the fix."""
    from visattn.data.image_io import rgb_pixels

    path = tmp_path / "cut.png"
    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data, "PNG")
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with Image.open(path) as img:
        with pytest.raises(ImageDecodeError, match=f"^{re.escape(str(path))}: truncated or corrupt image data: .*"
                           r"\(re-export or remove the file\)$"):
            rgb_pixels(img)


def test_a_link_up_to_the_dataset_folder_does_not_give_a_class_the_other_classes_images(tmp_path):
    from visattn.data.image_folder import ImageFolder

    root = tmp_path / "data"
    _touch_images(root, ["cat/c.png", "dog/d.png"])
    (root / "cat" / "everything").symlink_to(root)  # a parent of the class folder: dog/d.png again, as a cat
    (root / "cat" / "deeper").symlink_to(tmp_path)
    assert list_images(root / "cat") == [root / "cat" / "c.png"]
    assert [(path.name, label) for path, label in ImageFolder(root).samples] == [("c.png", 0), ("d.png", 1)]


def test_a_missing_path_among_others_is_listed_for_its_own_error_line(tmp_path):
    """One typo among several paths ended the whole run: nothing was classified, captioned or detected."""
    _touch_images(tmp_path, ["a.png"])
    a, missing = tmp_path / "a.png", tmp_path / "missing.png"
    assert list_images([missing, a]) == [missing, a]
    with pytest.raises(ImageDecodeError, match="missing.png: no such file or folder"):
        list_images([missing, tmp_path / "gone"])


def test_when_no_path_exists_each_is_named(tmp_path):
    """Only the first was named: two typos took two runs to find."""
    paths = [tmp_path / f"typo{k}.png" for k in range(5)]
    with pytest.raises(ImageDecodeError) as error:
        list_images(paths[:2])
    assert str(error.value) == f"{paths[0]}: no such file or folder; {paths[1]}: no such file or folder"
    with pytest.raises(ImageDecodeError, match=r"typo2.png: no such file or folder; and 2 more paths that do not exist$"):
        list_images(paths)


@pytest.mark.parametrize("values, expected", [
    ([[0.5, 0.5]], [128, 128]),  # one value: it was black whatever it was
    ([[0.0, 0.25]], [0, 64]),  # within 0..1: x 255, as torchvision reads floats, not stretched to 255
    ([[-1.0, 3.0]], [0, 255]),  # outside 0..1: stretched
    ([[300.0, 300.0]], [255, 255]),
])
def test_float_images_keep_their_brightness(tmp_path, values, expected):
    Image.fromarray(np.array(values, np.float32)).save(tmp_path / "f.tif")
    assert decode_image(tmp_path / "f.tif")[0, :, 0].tolist() == expected


def test_the_transparent_value_of_a_16_bit_gray_png_is_blended_like_any_other_transparency(tmp_path):
    """Its tRNS key was ignored: transparent pixels came out dark gray, where 8-bit and palette ones are white."""
    pixels = np.array([[1000, 65535]], np.uint16)
    Image.fromarray(pixels).save(tmp_path / "g16.png", transparency=1000)
    assert Image.open(tmp_path / "g16.png").info["transparency"] == 1000
    assert decode_image(tmp_path / "g16.png").tolist() == [[[255, 255, 255], [255, 255, 255]]]
    assert decode_image(tmp_path / "g16.png", background=(0, 0, 255))[0].tolist() == [[0, 0, 255], [255, 255, 255]]


def test_a_folder_or_a_file_without_read_permission_is_named_with_the_fix(tmp_path, monkeypatch):
    """For a user who is not root, opening a folder without read permission raises PermissionError, not
    IsADirectoryError: the folder whose images went unread and a file without read permission were both
    "permission denied", without the fix."""
    locked, closed = tmp_path / "locked", tmp_path / "closed.png"
    locked.mkdir()
    Image.new("RGB", (28, 28)).save(closed)
    scandir, image_open = os.scandir, Image.open

    def refused(path):
        if os.fspath(path) in (str(locked), str(closed)):  # as chmod 000 does for a user that is not root
            raise PermissionError(13, "Permission denied", os.fspath(path))

    monkeypatch.setattr(os, "scandir", lambda path=".", *args, **kw: refused(path) or scandir(path, *args, **kw))
    monkeypatch.setattr(Image, "open", lambda fp, *args, **kwargs: refused(fp) or image_open(fp, *args, **kwargs))
    with pytest.raises(ImageDecodeError, match=f"^{re.escape(str(locked))}: a folder that cannot be listed "
                       r"\(Permission denied\), so its images were not read; give read permission to it "
                       r"\(chmod \+rx\)"):
        decode_image(locked)
    with pytest.raises(ImageDecodeError, match=f"^{re.escape(str(closed))}: permission denied; give read permission "
                       r"to it \(chmod \+r\) or leave it out$"):
        decode_image(closed)


def test_a_folder_that_cannot_be_listed_is_reported_on_its_own_line_not_passed_over(tmp_path, monkeypatch, capsys):
    """``os.walk`` passed over a folder it could not list (no read permission, an I/O error): its images were left
    out of the output and the count without a word, and such a folder given alone was "no image files found"."""
    from visattn.cli import main

    Image.new("RGB", (28, 28)).save(tmp_path / "ok.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    Image.new("RGB", (28, 28)).save(locked / "inside.png")
    scandir = os.scandir

    def refuse_locked(path=".", *args, **kwargs):  # as chmod 000 does for a user that is not root
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    assert list_images([tmp_path]) == [locked, tmp_path / "ok.png"]
    reason = (r"a folder that cannot be listed \(Permission denied\), so its images were not read; give read "
              r"permission to it \(chmod \+rx\) or leave it out$")
    with pytest.raises(ImageDecodeError, match=f"^{re.escape(str(locked))}: {reason}"):
        decode_image(locked)
    for paths, total in (([tmp_path], 2), ([locked], 1)):
        assert main(["classify", *map(str, paths), "--model", "se_resnet20_cifar.fmnist"]) == 1
        out, err = capsys.readouterr()
        assert re.search(f"^{re.escape(str(locked))}: error: {reason}", out, re.M), out
        assert err == f"visattn: 1 of {total} files could not be classified\n"


def _large_image(mode: str) -> Image.Image:
    """A 4096x1024 image of ``mode`` (16 MiB as Pillow's RGBA), rows darkest at the top and brightest at the
    bottom, so a strip of rows does not span the image's range."""
    rows = np.linspace(0, 1, 1024)[:, None] * np.ones((1, 4096))  # (H, W)
    if mode in ("I", "F"):  # stretched by their own range: -7 .. 200000
        return Image.fromarray((rows * 200007 - 7).astype(np.int32 if mode == "I" else np.float32))
    if mode == "I;16":
        return Image.fromarray((rows * 65535).astype(np.uint16))
    gray = Image.fromarray((rows * 255).astype(np.uint8))
    if mode == "P":  # a gray palette, index 0 (the top row) transparent
        palette = Image.frombytes("P", gray.size, gray.tobytes())
        palette.putpalette(np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes())
        return palette
    return gray.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "CMYK", "I;16", "I", "F"])
def test_a_large_image_is_decoded_holding_little_more_than_its_pixels(tmp_path, mode):
    """Converting the whole image at once held two (8-bit modes) to eight (16-bit and float) times its decoded
    pixels in Python memory, besides Pillow's own copy: a 108 MP RGBA PNG peaked at 2 GiB over its 309 MiB of pixels,
    a 12000x9000 JPEG at 1 GiB. Rows are converted a strip at a time, to the values of the whole image at once."""
    import tracemalloc

    image = _large_image(mode)
    path = tmp_path / ("large.tif" if mode in ("I", "F", "CMYK") else "large.png")
    image.save(path, **({"transparency": 0} if mode == "P" else {}))
    decode_image(path)  # Pillow's plugins imported, outside the measurement
    tracemalloc.start()
    try:
        decoded = decode_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded.shape == (1024, 4096, 3)
    assert peak < 1.6 * decoded.nbytes
    assert set(decoded[0].flat) == ({255} if mode == "P" else {0})  # palette: transparent, on white
    assert set(decoded[-1].flat) == {255}
    assert np.abs(decoded[512].astype(int) - 128).max() <= 1  # mid-gray by the whole image's range, not its strip's
