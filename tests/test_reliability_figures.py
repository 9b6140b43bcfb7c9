"""What users see in the figures visattn draws: titles inside the figure and apart, panels that fill their figure
at the image's shape, detection labels that can be read on any background and stay in the picture. Text is
measured with matplotlib's renderer, detection drawings by their pixels."""
import itertools

import numpy as np
import pytest
from PIL import Image

from visattn.explain.overlay import overlay_figure, word_panels_figure
from visattn.inference.detector import draw_detections

LONG = "refrigerator-freezer combination 0.99"  # a detection panel's title: a long class name and its score


def _texts(fig):
    """``(text, pixel box)`` of each title and colour-bar label drawn (the hidden axes' tick labels are not)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = list(fig.texts)
    for axis in fig.axes:
        texts.append(axis.title)
        if axis.axison:
            texts += [*axis.get_xticklabels(), *axis.get_yticklabels(), axis.xaxis.label, axis.yaxis.label]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text() and t.get_visible()]


def _assert_texts_inside_and_apart(fig):
    width, height = fig.bbox.width, fig.bbox.height
    texts = _texts(fig)
    for text, box in texts:
        assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5, text
    for (one, a), (other, b) in itertools.combinations(texts, 2):
        assert not a.overlaps(b), (one, other)


@pytest.mark.parametrize("shape", [(64, 64), (8, 64), (64, 8)])
def test_long_panel_titles_wrap_inside_their_panel(shape):
    """A long class name in a detection panel's title ran over its neighbours' titles and off the figure."""
    image = np.full((*shape, 3), 128, np.uint8)
    fig = word_panels_figure(image, [LONG, "pneumonoultramicroscopicsilicovolcanoconiosis", "a"],
                             [np.random.rand(4, 4)] * 3)
    _assert_texts_inside_and_apart(fig)
    assert fig.axes[0].get_title().replace("\n", " ") == LONG  # wrapped, nothing cut


def test_a_long_overlay_title_wraps_inside_the_figure():
    title = "a class name someone trained with that is long " * 3 + "(0.92), gradcam"
    for image in (np.zeros((64, 64, 3), np.uint8), np.zeros((8, 64, 3), np.uint8)):
        _assert_texts_inside_and_apart(overlay_figure(image, np.random.rand(4, 4), title=title))


def _image_rows_share(fig):
    """The share of the figure's height that the first column's images fill."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    first_column = [axis for axis in fig.axes if axis.get_subplotspec().colspan.start == 0]
    return sum(axis.get_window_extent(renderer).height for axis in first_column) / fig.bbox.height


def test_a_wide_images_word_panels_fill_their_figure():
    """A 40x300 photo's panels were 0.3 in high in rows of 2.2 in: a figure of blank bands between thin strips."""
    image = np.zeros((40, 300, 3), np.uint8)
    fig = word_panels_figure(image, ["word"] * 10, [np.random.rand(7, 7)] * 10)
    assert _image_rows_share(fig) > 0.5
    panel = fig.axes[0].get_window_extent(fig.canvas.get_renderer())
    assert panel.width / panel.height == pytest.approx(300 / 40, rel=0.05)  # at the image's shape, not squashed
    square = word_panels_figure(np.zeros((64, 64, 3), np.uint8), ["word"] * 10, [np.random.rand(7, 7)] * 10)
    assert _image_rows_share(square) > 0.8


def test_a_wide_images_overlay_is_no_taller_than_its_panels_and_titles_need():
    image = np.zeros((40, 300, 3), np.uint8)
    fig = overlay_figure(image, np.random.rand(7, 7), title="Bag (0.90), gradcam")
    _assert_texts_inside_and_apart(fig)  # the colour bar's label too
    panel = fig.axes[0].get_window_extent(fig.canvas.get_renderer())
    assert panel.height / fig.bbox.height > 0.15 and fig.bbox.height <= 250


def _drawn(tmp_path, image, detections):
    draw_detections(image, detections, tmp_path / "drawn.png")
    return np.asarray(Image.open(tmp_path / "drawn.png").convert("RGB")).astype(int)


def _is(pixels, rgb):
    return (np.abs(pixels - np.array(rgb)) <= 8).all(-1)


def _dark(pixels):
    return (pixels < 100).all(-1)  # black text, anti-aliased


YELLOW, RED, SKY = (255, 255, 0), (255, 0, 0), (0, 191, 255)  # classes 3, 0 and 2


def test_a_label_is_black_on_its_boxs_colour_on_a_white_photo(tmp_path):
    """A yellow label on a white photo (a white one on white) could not be read: only the text was drawn, in the
    box's colour."""
    drawn = _drawn(tmp_path, np.full((64, 64, 3), 255, np.uint8),
                   [{"box": [8.0, 8.0, 56.0, 56.0], "label": "dress", "score": 0.9, "index": 3}])
    band = drawn[8 * 4 + 3:8 * 4 + 20, 8 * 4 + 3:56 * 4 - 3]  # (rows, cols, 3) under the box's top line
    assert _dark(band).sum() > 20 and _is(band, YELLOW).sum() > 100  # black text on a yellow patch
    assert _is(drawn[:8 * 4 - 2], (255, 255, 255)).all()  # the photo above the box untouched


def test_labels_of_one_object_under_two_classes_do_not_overprint(tmp_path):
    """Two classes' boxes around one item wrote their labels on one spot, one garbled word."""
    box = [8.0, 8.0, 56.0, 56.0]
    drawn = _drawn(tmp_path, np.zeros((64, 64, 3), np.uint8),
                   [{"box": box, "label": "top", "score": 0.9, "index": 0},
                    {"box": box, "label": "pullover", "score": 0.8, "index": 2}])
    band = drawn[8 * 4 + 3:8 * 4 + 40, 8 * 4 + 3:56 * 4 - 3]
    red_rows, sky_rows = (set(np.nonzero(_is(band, rgb).sum(1) > 5)[0]) for rgb in (RED, SKY))
    assert red_rows and sky_rows and not red_rows & sky_rows


def test_a_label_at_the_right_edge_moves_into_the_picture(tmp_path):
    """A box at the right edge had its label cut off by the edge: 'trousers 0.99' read 'trouse'."""
    drawn = _drawn(tmp_path, np.zeros((64, 64, 3), np.uint8),
                   [{"box": [52.0, 8.0, 64.0, 56.0], "label": "trousers", "score": 0.99, "index": 3}])
    band = drawn[8 * 4 + 3:8 * 4 + 16]  # the label's rows, the whole width
    patch_columns = np.nonzero(_is(band, YELLOW).sum(0) > 3)[0]
    text_columns = np.nonzero(_dark(band).any(0))[0]
    text_columns = text_columns[text_columns >= patch_columns.min()]  # black on the patch, not the canvas
    assert patch_columns.min() < 52 * 4  # moved left of the box, to fit
    assert len(text_columns) > 30 and text_columns.max() < 255  # the last glyph inside the picture


def test_titles_holding_dollar_signs_are_drawn_as_typed_not_parsed_as_tex(tmp_path):
    """A class name or word with a pair of `$` was parsed as TeX: "$^$" failed to save with a ParseSyntaxException
    traceback, and "$5 to $6" drew "5 to" in italics without the dollars."""
    image, heat = np.zeros((32, 32, 3), np.uint8), np.ones((4, 4))
    for fig in (overlay_figure(image, heat, title="$5 to $6", image_title="$^$"),
                word_panels_figure(image, ["$^$", "a"], [heat, heat])):
        fig.savefig(tmp_path / "titles.png")
        assert "$^$" in [axis.get_title() for axis in fig.axes]


def test_a_caption_cut_at_one_word_says_word():
    from visattn.inference.captioner import _cut_note

    assert _cut_note(False, 1) == " [cut at 1 word, before the model ended it: raise --max-len]"
    assert _cut_note(None, 1).startswith(" [1 word, as many as --max-len allows")
    assert _cut_note(False, 2).startswith(" [cut at 2 words,")
