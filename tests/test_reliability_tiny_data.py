"""Degenerate data sets: a score that no caption can move is said, not reported as 0.0 unsaid."""
import warnings

import pytest

from visattn.errors import VisattnWarning
from visattn.data.vocab import Vocabulary
from visattn.inference.caption_scoring import CaptionMetrics, caption_scores


def test_cider_with_every_caption_the_same_warns_that_it_is_zero_whatever_the_captions():
    """Every image captioned "a dog runs": each n-gram's weight is log(3 / 3) = 0, so even the right captions
    scored CIDEr 0.0, and a checkpoint monitoring val/cider kept the first epoch's."""
    with pytest.warns(VisattnWarning, match=r"^CIDEr of these 3 images is 0 whatever their captions: every image's "
                                            r"references hold the same words"):
        scores = caption_scores(["a dog runs"] * 3, [["A dog runs.", "a dog runs"]] * 3)
    assert scores["cider"] == 0.0 and scores["bleu1"] == pytest.approx(1.0)


def test_cider_of_the_same_references_in_another_order_warns_too():
    with pytest.warns(VisattnWarning, match="CIDEr of these 2 images is 0 whatever their captions"):
        caption_scores(["a cat", "a dog"], [["a cat", "a dog"], ["a dog", "a cat"]])


def test_cider_of_references_that_differ_is_scored_without_that_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        scores = caption_scores(["a dog runs", "a cat"], [["a dog runs"], ["a dog"]])
    assert scores["cider"] > 0


def test_a_validation_set_whose_cider_is_always_zero_warns_once_per_fit_not_every_epoch():
    """A fit scoring one validation image printed the same CIDEr warning after every epoch (Python's once-per-line
    memory is cleared whenever any code changes the warning filters, as each epoch's data loading does)."""
    metrics = CaptionMetrics(Vocabulary.build(["a dog runs"]))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        for _epoch in range(3):
            metrics.hypotheses, metrics.references = ["a dog runs"], [["a dog runs"]]
            assert metrics.compute()["n"] == 1
            metrics.reset()
    assert [str(w.message) for w in shown] == [
        "CIDEr of one image is 0 whatever its caption (it weighs each n-gram by how few images' references hold it); "
        "score more images"]
