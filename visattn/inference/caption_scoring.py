"""The scores of a captioner, without Lightning: BLEU-1..4, ROUGE-L and CIDEr from pycocoevalcap (METEOR too when
asked for; it runs Java), and the pointing game on FashionScenes: for every generated item word (``ITEM_WORDS``)
whose class occurs exactly once in the scene, the peak of that word's attention map on the image (its cells at
their places there, :func:`~visattn.inference.captioner.attention_centres`) must fall inside the item's box.
:class:`CaptionMetrics` scores validation and test of :class:`~visattn.tasks.captioning.CaptioningTask`, and
:func:`evaluate_captioner` a trained captioner (`visattn evaluate`, ``save-weights --dataset``).
"""
import contextlib
import functools
import io
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..data.scenes import ITEM_WORDS
from ..data.vocab import UNK, Vocabulary, tokenize
from ..errors import ConfigError, VisattnWarning, caught_warnings, outside_visattn
from ..explain.cell_centres import CellCentres
from ..explain.pointing import pointing_hit
from ..models.show_attend_tell import DecodedCaptions
from ..scores import reported_score
from ..tasks.distributed import gather_shares, in_split_order
from .captioner import Captioner, attention_centres

__all__ = ["CaptionMetrics", "caption_scores", "check_java", "evaluate_captioner", "evaluation_loader",
           "pointing_hits"]


_ITEM_CLASS = {word: k for k, word in enumerate(ITEM_WORDS)}


# ---------------------------------------------------------------------------------------------
# metrics, shared by validation and `visattn evaluate`
# ---------------------------------------------------------------------------------------------


def check_java(setting: str) -> None:
    """One line naming ``setting`` when METEOR cannot run: pycocoevalcap's runs a Java jar, and without Java it is
    a FileNotFoundError traceback, after every image has been captioned."""
    if shutil.which("java") is None:
        raise ConfigError(f"{setting}: METEOR runs Java (pycocoevalcap's METEOR 1.5 jar), and no `java` is on PATH; "
                          "install a Java runtime (e.g. apt-get install default-jre-headless), or leave METEOR out")


def caption_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]], *, meteor: bool = False) -> dict[str, float]:
    """Corpus BLEU-1..4, ROUGE-L and CIDEr (and METEOR if asked) of one hypothesis per image against its
    references, as coco-caption computes them."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if meteor:
        check_java("meteor=True")

    if len(hypotheses) != len(references) or not hypotheses:
        raise ConfigError(f"got {len(hypotheses)} captions for {len(references)} images; give one per image")
    # pycocoevalcap wants pre-tokenised, space-joined strings; use the vocabulary's tokenizer.
    res = {i: [" ".join(_scored_words(h))] for i, h in enumerate(hypotheses)}
    # A reference without a word is dropped, as the caption readers drop it; it would lower CIDEr.
    gts = {i: [" ".join(words) for words in map(tokenize, refs) if words] for i, refs in enumerate(references)}
    wordless = [i for i, refs in gts.items() if not refs]
    if wordless:
        raise ConfigError(f"the references of image {wordless[0]} ({len(wordless)} images in all) have no word "
                          "in them; give each image a caption with a word")
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its length ratios
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    scores = {f"bleu{n}": float(b) for n, b in enumerate(bleu, start=1)}
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider"] = float(cider)
    if len(hypotheses) == 1:  # every n-gram is in every image's references: all weights log(1) = 0
        warnings.warn("CIDEr of one image is 0 whatever its caption (it weighs each n-gram by how few images' "
                      "references hold it); score more images", VisattnWarning, stacklevel=outside_visattn())
    elif _same_ngrams_everywhere(gts.values()):  # every caption the same: val/cider was 0.0 every epoch, unsaid
        warnings.warn(f"CIDEr of these {len(hypotheses)} images is 0 whatever their captions: every image's "
                      "references hold the same words and phrases, and CIDEr weighs each by how few images' "
                      "references hold it; score images whose references differ", VisattnWarning,
                      stacklevel=outside_visattn())
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scores["meteor"] = float(Meteor().compute_score(gts, res)[0])
    return scores


def _same_ngrams_everywhere(references: Iterable[list[str]]) -> bool:
    """Whether each image's space-joined references hold the same 1- to 4-word n-grams (those CIDEr counts): their
    weights log(images / images holding it) are then all 0."""
    grams = ({tuple(words[i:i + n]) for words in (ref.split() for ref in refs) for n in range(1, 5)
              for i in range(len(words) - n + 1)} for refs in references)
    first = next(grams, None)
    return all(g == first for g in grams)  # stops at the first image that differs


def _scored_words(hypothesis: str) -> list[str]:
    """The words :func:`tokenize` finds, a generated ``<unk>`` kept whole: a token no tokenised reference holds
    (tokenised, it became ``unk``, which references holding ``UNK`` placeholders matched: BLEU-4 1.0, a review)."""
    first, *rest = hypothesis.split(UNK)
    return [*tokenize(first), *(word for part in rest for word in (UNK, *tokenize(part)))]


def pointing_hits(
    words: Sequence[str], maps: Tensor, boxes: np.ndarray, labels: np.ndarray, centres: CellCentres
) -> list[bool]:
    """One hit/miss per generated item word whose class occurs exactly once among ``labels``.

    Args:
        words: the generated words, one per map (:meth:`~visattn.data.vocab.Vocabulary.words`).
        maps: ``(T, h, w)`` attention map of each word.
        boxes: ``(N, 4)`` xyxy item boxes in the model input's pixels.
        labels: ``(N,)`` Fashion-MNIST class ids.
        centres: where the maps' cells sit on the model input (:func:`attention_centres`).
    """
    labels = np.asarray(labels)
    hits = []
    for word, heat in zip(words, maps):
        k = _ITEM_CLASS.get(word)
        if k is not None and (labels == k).sum() == 1:
            hits.append(pointing_hit(heat, np.asarray(boxes)[labels == k][0], None, centres=centres))
    return hits


class CaptionMetrics:
    """Accumulates generated captions, references and pointing hits over batches; ``compute()`` scores them.

    Args:
        vocab: the vocabulary the captions' token ids are decoded with.
        meteor: also compute METEOR (needs Java; slower).
    """

    def __init__(self, vocab: Vocabulary, *, meteor: bool = False) -> None:
        self.vocab, self.meteor = vocab, meteor
        self.warned: set[str] = set()  # kept over reset(): a fit's validation warned the same every epoch
        self.reset()

    def reset(self) -> None:
        """Forget the captions and references gathered so far."""
        self.hypotheses: list[str] = []
        self.references: list[list[str]] = []
        self.hits: list[bool] = []
        self.has_boxes = False
        self.centres: dict[tuple[int, ...], CellCentres] = {}  # by input size

    def update(self, decoded: DecodedCaptions, batch: dict[str, Any],
               centres_of: Callable[[tuple[int, ...]], CellCentres]) -> list[str]:
        """Add a batch decoded from ``batch["images"]``; ``batch`` holds ``references`` and, for scenes,
        ``boxes`` and ``labels`` in the pixels of the model input, where ``centres_of(input size)`` places
        the maps' cells (``partial(attention_centres, model)``; asked once per size, for scenes only)."""
        captions = [self.vocab.decode(ids.tolist()) for ids in decoded.tokens]
        self.hypotheses += captions
        self.references += [list(refs) for refs in batch["references"]]
        if "boxes" in batch:
            self.has_boxes = True
            size = tuple(batch["images"].shape[-2:])
            if size not in self.centres:
                self.centres[size] = centres_of(size)
            centres = self.centres[size]
            for ids, maps, boxes, labels in zip(decoded.tokens, decoded.attention, batch["boxes"], batch["labels"]):
                words = self.vocab.words(ids.tolist())  # one per map
                self.hits += pointing_hits(words, maps.cpu(), _numpy(boxes), _numpy(labels), centres)
        return captions

    def gather(self) -> None:
        """Every process's captions, references and hits in each process, so that each scores the whole
        split: under DDP each holds one shard, and a corpus score (CIDEr) cannot be averaged over shards.
        A collective: every process calls it."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        shards = gather_shares((self.hypotheses, self.references, self.hits, self.has_boxes))
        self.hypotheses = in_split_order([shard[0] for shard in shards])
        self.references = in_split_order([shard[1] for shard in shards])
        self.hits = [hit for shard in shards for hit in shard[2]]  # per word, not per caption: their order is moot
        self.has_boxes = any(shard[3] for shard in shards)

    def compute(self) -> dict[str, Optional[float]]:
        """BLEU-1..4, ROUGE-L and CIDEr (METEOR when asked for) of the captions gathered, and the pointing game's score
        when the data had item boxes."""
        with caught_warnings(record=True) as caught:
            warnings.simplefilter("always", VisattnWarning)
            scores = caption_scores(self.hypotheses, self.references, meteor=self.meteor)
        for shown in caught:
            if str(shown.message) not in self.warned:
                self.warned.add(str(shown.message))
                warnings.warn_explicit(shown.message, shown.category, shown.filename, shown.lineno)
        if self.has_boxes:  # None when no caption named an item that occurs once
            scores["pointing"] = float(np.mean(self.hits)) if self.hits else None
        scores["n"] = len(self.hypotheses)
        return scores


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


# ---------------------------------------------------------------------------------------------
# `visattn evaluate`
# ---------------------------------------------------------------------------------------------


def evaluation_loader(captioner: Captioner, spec: str, split: str = "test", *, limit: Optional[int] = None,
                      batch_size: int = 64, num_workers: int = 0) -> DataLoader:
    """Batches of ``fashion-scenes`` (``limit`` scenes of ``split``, default as many as the training run
    scored, else 1000, drawn at the model's input size), ``coco:ANNOTATIONS.json:IMAGES_DIR`` or
    ``karpathy:SPLITS.json:IMAGES_DIR`` (its images of ``split``), with references (and boxes for scenes)."""
    from ..data.caption_samples import CaptionSamples, SceneImages, collate_captions
    from ..data.coco import CocoCaptions, KarpathyCaptions, coco_spec, require_some_image
    from ..data.image_folder import evaluation_batches, seeded_subset
    from ..data.scenes import recorded_scenes

    transform = captioner.transform()
    if spec == "fashion-scenes":
        if split not in ("train", "val", "test"):
            raise ConfigError(f"--split {split}: fashion-scenes has the splits train, val and test")
        size = int(captioner.preprocessing["input_size"][-1])
        source = SceneImages(recorded_scenes(captioner.preprocessing, split, limit, canvas_size=size), transform)
    elif spec.startswith(("coco:", "karpathy:")) and spec.count(":") >= 2:
        annotations, images_dir = coco_spec(spec)
        if spec.startswith("coco:"):
            images = CocoCaptions(annotations, images_dir, transform=transform)
        else:
            images = KarpathyCaptions(annotations, images_dir, split=split, transform=transform)
        require_some_image(images.paths, Path(images_dir), Path(annotations))
        source = seeded_subset(images, limit)
    else:
        raise ConfigError(f"--dataset {spec}: captioners take fashion-scenes, coco:ANNOTATIONS.json:IMAGES_DIR or "
                          "karpathy:SPLITS.json:IMAGES_DIR")
    return evaluation_batches(CaptionSamples(source, captioner.vocab), batch_size=batch_size, num_workers=num_workers,
                              collate=functools.partial(collate_captions, pad_id=captioner.vocab.pad_id))


@torch.inference_mode()
def evaluate_captioner(captioner: Captioner, batches: Iterable[dict[str, Any]], *, beam_size: int = 5,
                       max_len: Optional[int] = None, length_penalty: float = 1.0,
                       meteor: bool = False) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L, CIDEr (METEOR if asked), pointing (when the batches carry boxes), ``n`` and, for a
    DataLoader of image files, ``skipped``; ``None`` batches (only broken image files) are passed over."""
    from ..data.image_folder import skipped_images

    if meteor:  # before captioning, not after it in caption_scores
        check_java("meteor=True")
    metrics = CaptionMetrics(captioner.vocab, meteor=meteor)
    for batch in (b for b in batches if b is not None):
        decoded = captioner.caption(batch["images"], beam_size=beam_size, max_len=max_len,
                                    length_penalty=length_penalty)
        metrics.update(decoded, batch, functools.partial(attention_centres, captioner.model))
    if not metrics.hypotheses:
        raise ConfigError("the evaluation dataset is empty; check --dataset, --split and --limit")
    scores = {k: reported_score(v) if isinstance(v, float) else v for k, v in metrics.compute().items()}
    return {**scores, **skipped_images(getattr(batches, "dataset", None))}
