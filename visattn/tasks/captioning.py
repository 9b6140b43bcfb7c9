"""Image captioning as a LightningModule (Show, Attend and Tell), its metrics, and inference helpers.

Metrics: BLEU-1..4 and CIDEr from pycocoevalcap (METEOR too when asked for; it runs Java), and
the pointing game on FashionScenes: for every generated item word (``ITEM_WORDS``) whose class
occurs exactly once in the scene, the peak of that word's attention map on the image (its cells at
their places there, :func:`attention_centres`) must fall inside the item's box.
"""
import contextlib
import functools
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ..data.image_io import DEFAULT_MAX_PIXELS
from ..data.scenes import ITEM_WORDS
from ..data.transforms import check_image_batch, to_model_input
from ..data.vocab import Vocabulary, tokenize
from ..errors import ConfigError, NotATrainingCheckpoint, VisattnWarning, WeightsError, one_line
from ..modes import eval_mode
from ..explain import map_centres
from ..explain.cell_centres import CellCentres
from ..explain.pointing import pointing_hit
from ..fileio import attention_note, output_paths
from ..layers.patch_embed import is_count, is_number
from ..models.show_attend_tell import DecodedCaptions, doubly_stochastic_penalty
from ..pretrained import (find_weights_entry, load_weights, named_weights_entry, read_state_dict,
                          starting_weights_skipped)
from ..registry import create_model, model_task, split_model_name
from ..scores import reported_score
from .classification import (EDITED_CHECKPOINT, Classifier, check_data_size,
                             checkpoint_model_kwargs, inference_model, inference_target, load_checkpoint_weights,
                             read_checkpoint, refuse_linked_kwargs, require_task, sample_mean_loss,
                             starting_checkpoint_settings, task_checkpoint, warn_if_normalised_otherwise)
from .distributed import gather_shares, in_split_order
from .guards import (GuardedTask, NonFiniteLossGuard, TrainingLoss, any_process_scored, batch_of_one_is_one_line,
                     refuse_cast_batches, skip_missing_batch, weight_average)

_ITEM_CLASS = {word: k for k, word in enumerate(ITEM_WORDS)}


# ---------------------------------------------------------------------------------------------
# metrics, shared by validation and `visattn evaluate`
# ---------------------------------------------------------------------------------------------


def caption_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]], *, meteor: bool = False) -> dict[str, float]:
    """Corpus BLEU-1..4 and CIDEr (and METEOR if asked) of one hypothesis per image against its references."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if len(hypotheses) != len(references) or not hypotheses:
        raise ConfigError(f"got {len(hypotheses)} captions for {len(references)} images; give one per image")
    # pycocoevalcap wants pre-tokenised, space-joined strings; use the vocabulary's tokenizer.
    res = {i: [" ".join(tokenize(h))] for i, h in enumerate(hypotheses)}
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
    scores["cider"] = float(cider)
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scores["meteor"] = float(Meteor().compute_score(gts, res)[0])
    return scores


def attention_centres(model: nn.Module, image_size: Sequence[int]) -> CellCentres:
    """Where a captioner's attention cells sit on an ``image_size`` input: its encoder's map (a ViT's patches
    in equal blocks, a CNN's cells at their receptive fields' centres) average-pooled to the attention
    grid. The encoder runs once on a blank image to give its map's size."""
    weight = next(model.parameters())
    blank = weight.new_zeros((1, model.input_size[0], *image_size))
    with torch.no_grad(), eval_mode(model):
        feature_size = model.feature_map(blank).shape[-2:]
    return map_centres(model.encoder, feature_size, image_size).pooled(model.grid)


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


def decode(model: nn.Module, images: Tensor, *, beam_size: int = 1, max_len: int = 20,
           length_penalty: float = 1.0) -> DecodedCaptions:
    """Greedy decoding for ``beam_size == 1``, batched beam search otherwise; the model checks both settings."""
    if type(beam_size) is int and beam_size == 1:  # True and 1.0 equal 1 too: beam_search refuses them
        return model.greedy_decode(images, max_len=max_len)
    return model.beam_search(images, beam_size=beam_size, max_len=max_len, length_penalty=length_penalty)


class CaptionMetrics:
    """Accumulates generated captions, references and pointing hits over batches; ``compute()`` scores them."""

    def __init__(self, vocab: Vocabulary, *, meteor: bool = False) -> None:
        self.vocab, self.meteor = vocab, meteor
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

    def compute(self) -> dict[str, float]:
        """BLEU-1..4 and CIDEr (METEOR when asked for) of the captions gathered, and the pointing game's score
        when the data had item boxes."""
        scores = caption_scores(self.hypotheses, self.references, meteor=self.meteor)
        if self.has_boxes:  # None when no caption named an item that occurs once
            scores["pointing"] = float(np.mean(self.hits)) if self.hits else None
        scores["n"] = len(self.hypotheses)
        return scores


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def build_captioner(model_name: str, vocab: Vocabulary, model_kwargs: dict[str, Any],
                    pretrained: Optional[Union[bool, str]] = None) -> nn.Module:
    """The captioner ``model_name`` names, for ``vocab``, from the weights ``pretrained`` names (as
    ``create_model``'s; also taken from ``model_kwargs``). Weights recorded with another vocabulary (shipped
    ``ARCH.TAG`` weights, a training checkpoint) are loaded with the rows of the layers per token id
    (``vocab_layers``) moved to each word's id in ``vocab``, words the weights never saw starting afresh, with a
    warning: loaded as they were, their rows would read each id as the word it had in the other vocabulary (or
    not fit its size)."""
    kwargs = dict(model_kwargs)
    if "pretrained" in kwargs:
        if pretrained is not None:
            raise ConfigError("model.init_args.pretrained and model_kwargs.pretrained both name starting weights; "
                              "give pretrained only")
        pretrained = kwargs.pop("pretrained")
    record, source = _starting_record(model_name, pretrained)
    recorded = record.get("vocab")
    if recorded is None or recorded == vocab.to_list():
        model = create_model(model_name, vocab_size=len(vocab), pretrained=pretrained, **kwargs)
    else:
        model = create_model(model_name, pretrained=False, vocab_size=len(vocab), **kwargs)
        state, shared = _rows_by_word(source(), model, recorded, vocab.to_list())
        warnings.warn(f"{pretrained if isinstance(pretrained, str) else model_name}: its weights were trained on "
                      f"another vocabulary ({len(recorded)} tokens; this data's has {len(vocab)}, {shared} of them in "
                      f"both): the word embedding's and output layer's rows of those {shared} move to their words' "
                      "new ids, the other words' start afresh, the rest is loaded", VisattnWarning, stacklevel=2)
        load_weights(model, state, origin=pretrained if isinstance(pretrained, str) else model_name)
    if record.get("preprocessing"):  # also a training checkpoint's, which create_model does not read
        model.visattn_recorded_preprocessing = record["preprocessing"]
    return model


def _rows_by_word(state: dict[str, Tensor], model: nn.Module, theirs: list[str], ours: list[str],
                  ) -> tuple[dict[str, Tensor], int]:
    """``state`` with each per-token layer's rows (``vocab_layers``: one row per token id) in ``ours``'s order: a
    word both vocabularies hold keeps its trained row, the others take ``model``'s fresh ones; and how many words
    are shared."""
    at = {word: k for k, word in enumerate(theirs)}
    moved = [(new, at[word]) for new, word in enumerate(ours) if word in at]
    new, old = (torch.tensor(ids, dtype=torch.long) for ids in zip(*moved)) if moved else (None, None)
    per_token = tuple(f"{name}." for name in type(model).vocab_layers)
    rows = {}
    for key, fresh in model.state_dict().items():
        if key.startswith(per_token):
            rows[key] = fresh.clone()
            if moved and key in state and state[key].shape[1:] == fresh.shape[1:]:  # else load_weights names it
                rows[key][new] = state[key][old].to(fresh.dtype)
    return {**{k: v for k, v in state.items() if not k.startswith(per_token)}, **rows}, len(moved)


def _starting_record(model_name: str, pretrained: Optional[Union[bool, str]],
                     ) -> tuple[dict[str, Any], Callable[[], dict[str, Tensor]]]:
    """What was recorded with the weights a captioner starts from (a shipped entry, or a training checkpoint's
    hyperparameters: ``vocab``, ``preprocessing``), and how to read those weights; ``{}`` when nothing is read or
    nothing recorded (random init, a plain weights file)."""
    nothing: tuple[dict[str, Any], Callable[[], dict[str, Tensor]]] = ({}, dict)
    if pretrained is False or starting_weights_skipped():
        return nothing
    settings = starting_checkpoint_settings(pretrained)
    if settings is not None:
        return settings, lambda: read_state_dict(pretrained)
    if isinstance(pretrained, str):
        entry = named_weights_entry(pretrained)
    else:
        arch, tag = split_model_name(model_name)  # True on a bare architecture: its default weights
        entry = find_weights_entry(arch, tag) if tag is not None or pretrained is True else None
    if entry is None:
        return nothing
    return entry, lambda: read_state_dict(entry["path"], sha256=entry["sha256"])


class CaptioningTask(GuardedTask, pl.LightningModule):
    """Train and evaluate a Show, Attend and Tell captioner.

    Args:
        model_name: a registered ``sat_*`` architecture (``visattn models 'sat_*'``), or ``arch.tag``.
        model_kwargs: extra builder arguments (``encoder_name``, ``grid_size``, ``hidden_dim``, ...).
        pretrained: None (the default): as the model name says, an ``arch.tag`` starts from its shipped
            weights and a bare architecture from random init (but for its encoder's); False: no
            captioner weights, even for ``arch.tag``; a weights file, a training checkpoint or an
            ``ARCH.TAG`` to start from (a new run from an earlier one's weights). Weights of another
            vocabulary start the word embedding and output layer afresh, with a warning.
        vocab: every token in id order (``Vocabulary.to_list()``), linked from the datamodule.
        preprocessing: ``input_size``, ``mean``, ``std``, ``recipe`` of the evaluation transform,
            linked from the datamodule; saved in checkpoints for inference.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay, not applied to biases, norms, position embeddings and tokens
            (the word embeddings are decayed, as timm decays every 2-d weight).
        warmup_epochs: linear warm-up length, then cosine decay to zero.
        alpha_c: λ of the doubly stochastic attention regulariser.
        label_smoothing: the training loss's label smoothing (``val/xent`` is unsmoothed).
        max_len: longest generated caption, in words.
        beam_size: validation/test decoding: 1 is greedy, more is beam search.
        length_penalty: beam search ranks hypotheses by ``log p / length ** length_penalty``.
        meteor: also compute METEOR (needs Java; slower).
        ema_decay: keep an exponential moving average of the weights (e.g. 0.999), which validation and
            testing decode with and checkpoints' weights are read from; None disables it.
        max_bad_steps: a step whose loss is NaN or infinite is skipped (and logged as
            ``train/skipped_steps``); this many in a row stop the run with a message.
    """

    task = "captioning"  # the data modules it takes say the same
    # Given once in the data section of a config and linked here by `visattn fit` (see lightning_cli.py).
    linked_data_attributes = ("vocab", "preprocessing")

    def __init__(
        self,
        model_name: str = "sat_cbam_resnet_scenes",
        model_kwargs: Optional[dict[str, Any]] = None,
        pretrained: Optional[Union[bool, str]] = None,
        vocab: Optional[list[str]] = None,
        preprocessing: Optional[dict[str, Any]] = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        alpha_c: float = 1.0,
        label_smoothing: float = 0.0,
        max_len: int = 20,
        beam_size: int = 1,
        length_penalty: float = 1.0,
        meteor: bool = False,
        ema_decay: Optional[float] = None,
        max_bad_steps: int = 5,
    ) -> None:
        super().__init__()
        if model_task(model_name) != "captioning":
            raise ConfigError(f"model_name={model_name!r} is not a captioner; pick one of `visattn models 'sat_*'`")
        if not vocab:
            raise ConfigError("CaptioningTask needs a vocabulary: link data.vocab in the config (see configs/captioning/)")
        if not (is_number(alpha_c) and 0 <= alpha_c < math.inf):  # a negative one rewarded uneven attention
            raise ConfigError(f"model.init_args.alpha_c={alpha_c!r}: give a finite weight of 0 or more (1 in the paper)")
        self.save_hyperparameters()
        self.vocab = Vocabulary.from_list(vocab)
        refuse_linked_kwargs(model_kwargs, vocab_size="model.init_args.vocab (the data's vocabulary)")
        self.model = build_captioner(model_name, self.vocab, dict(model_kwargs or {}), pretrained)
        check_data_size(self.model, model_name, preprocessing)
        # The captioner's own weights' record, else its encoder's (encoder_pretrained)
        recorded = (getattr(self.model, "visattn_recorded_preprocessing", None)
                    or getattr(self.model.encoder, "visattn_recorded_preprocessing", None))
        warn_if_normalised_otherwise(recorded, preprocessing or {})
        self.ema = weight_average(self.model, ema_decay)
        self.val_metrics = CaptionMetrics(self.vocab, meteor=meteor)
        self.test_metrics = CaptionMetrics(self.vocab, meteor=meteor)
        self.val_xent = sample_mean_loss()
        self.loss_guard = NonFiniteLossGuard(max_bad_steps)
        self.train_loss = TrainingLoss()

    def setup(self, stage: str) -> None:
        # a traceback in the first validation: the scenes' item boxes reached the pointing score in bf16
        refuse_cast_batches(self, "the captioner scores captions and attention from float32 batches and "
                                    "keeps its beam scores in float32")

    def forward(self, images: Tensor) -> DecodedCaptions:
        h = self.hparams
        return decode(self.eval_model, images, beam_size=h.beam_size, max_len=h.max_len,
                      length_penalty=h.length_penalty)

    def caption_loss(self, batch: dict[str, Any], model: Optional[nn.Module] = None, *,
                     smoothed: bool = True) -> tuple[Tensor, Tensor]:
        """Teacher-forced cross-entropy over real words (PAD ignored), with the run's ``label_smoothing`` unless not
        ``smoothed`` (validation's, as timm validates), and the attention regulariser, of ``model`` (the trained
        weights by default)."""
        captions = batch["captions"]
        logits, alphas = (model or self.model)(batch["images"], captions)  # (B, T, V), (B, T, P)
        targets = captions[:, 1:]
        cross_entropy = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=self.vocab.pad_id,
                                        label_smoothing=self.hparams.label_smoothing if smoothed else 0.0)
        penalty = doubly_stochastic_penalty(alphas, targets != self.vocab.pad_id, self.hparams.alpha_c)
        return cross_entropy, penalty

    @batch_of_one_is_one_line
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[Tensor]:
        self.loss_guard.watch(self.model)
        cross_entropy, penalty = self.caption_loss(batch)
        loss = cross_entropy + penalty
        # train/loss, what is optimised, under the name the classifier and detector tasks log it by
        self.train_loss.log(self, loss, batch_size=len(batch["images"]))
        self.log("train/xent", cross_entropy)
        self.log("train/attn_reg", penalty)
        return self.loss_guard.check(self, loss)

    @skip_missing_batch
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # weighted by the batch's words, over which caption_loss averages: val/xent is then the mean over the
        # split's words whatever the batching (weighted by images, it moved with the batch size and process count)
        words = int((batch["captions"][:, 1:] != self.vocab.pad_id).sum())
        self.val_xent.update(self.caption_loss(batch, self.eval_model, smoothed=False)[0], weight=words)
        self.val_metrics.update(self(batch["images"]), batch, functools.partial(attention_centres, self.eval_model))

    def on_validation_epoch_end(self) -> None:
        if any_process_scored(self, self.val_xent):  # Lightning computes, syncs and resets what is logged here
            self.log("val/xent", self.val_xent)
        self._log_metrics(self.val_metrics, "val/")

    @skip_missing_batch
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.test_metrics.update(self(batch["images"]), batch, functools.partial(attention_centres, self.eval_model))

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test/")

    def _log_metrics(self, metrics: CaptionMetrics, prefix: str) -> None:
        metrics.gather()
        if metrics.hypotheses:
            scores = metrics.compute()  # the same in every process once gathered: max keeps every digit (a mean not)
            self.log_dict({prefix + k: v for k, v in scores.items() if k != "n" and v is not None}, prog_bar=True,
                          sync_dist=True, reduce_fx="max")
        metrics.reset()

    @skip_missing_batch
    def predict_step(self, batch: Any, batch_idx: int) -> list[str]:
        images = batch["images"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (tuple, list)) else batch
        return [self.vocab.caption_text(ids.tolist()) for ids in self(images).tokens]


# ---------------------------------------------------------------------------------------------
# inference: shipped weights or training checkpoints, with their vocabulary and preprocessing
# ---------------------------------------------------------------------------------------------


@dataclass
class Captioner:
    """A captioning model ready for inference, with its vocabulary and preprocessing."""

    model: nn.Module
    vocab: Vocabulary
    preprocessing: dict[str, Any]
    name: str  # arch.tag or the checkpoint path
    arch: str
    model_kwargs: dict[str, Any]
    max_len: int = 20  # the default longest caption: what its training run decoded (``max_len``) when recorded

    # The evaluation transform and device from the same fields as a classifier's.
    transform = Classifier.transform
    device = Classifier.device

    @torch.no_grad()  # not inference_mode: its tensors refuse in-place writes and autograd in the caller's code
    def caption(self, images: Tensor, *, beam_size: int = 5, max_len: Optional[int] = None,
                length_penalty: float = 1.0) -> DecodedCaptions:
        """Captions of normalised images ``(B, C, H, W)`` (C the model's channels) on any device, returned on the CPU, of at most
        ``max_len`` words (default :attr:`max_len`)."""
        max_len = self.max_len if max_len is None else max_len
        check_image_batch(images, channels=self.preprocessing["input_size"][0])
        if len(images) == 0:
            return DecodedCaptions([], [], torch.zeros(0))
        with eval_mode(self.model):  # a model the caller set training would drop out at random
            decoded = decode(self.model, to_model_input(images, self.model), beam_size=beam_size, max_len=max_len,
                             length_penalty=length_penalty)
        return decoded.to("cpu")


def load_captioner(model: Optional[str] = None, checkpoint: Optional[str] = None, *,
                   device: str = "cpu") -> Captioner:
    """Load ``arch.tag`` shipped weights (``arch`` alone: its default weights) or a training checkpoint
    onto ``device`` (see :func:`visattn.devices.inference_device`)."""
    target = inference_target(model, checkpoint, device)
    if checkpoint is not None:
        return _captioner_from_checkpoint(Path(checkpoint), target)
    require_task(model, "captioning")
    arch, tag = split_model_name(model)
    entry = find_weights_entry(arch, tag)
    if not entry.get("vocab"):
        raise WeightsError(f"{arch}.{entry['tag']}: the weights entry has no vocab; save the weights again with "
                           "`visattn save-weights --checkpoint`, or pass vocab=Captioner.vocab.to_list() to save_weights")
    if not entry.get("preprocessing"):
        raise WeightsError(f"{arch}.{entry['tag']}: the weights entry has no preprocessing (input_size, mean, std); "
                           "save them with `visattn save-weights --checkpoint`, or pass preprocessing= to save_weights")
    net = inference_model(create_model(f"{arch}.{entry['tag']}"), target)
    vocab = Vocabulary.from_list(entry["vocab"])
    if len(vocab) != net.vocab_size:
        raise WeightsError(f"{entry['index']}: entry '{arch}.{entry['tag']}': {len(vocab)} vocab tokens for a "
                           f"{net.vocab_size}-word output layer; record the vocabulary the weights were trained with")
    max_len = _recorded_max_len(entry, f"{entry['index']}: entry '{arch}.{entry['tag']}': ", fix="record a whole "
                                f"number of words >= 1, or leave max_len out for {Captioner.max_len}")
    return Captioner(net, vocab, dict(entry["preprocessing"]),
                     f"{arch}.{entry['tag']}", arch, dict(entry.get("model_kwargs") or {}), max_len)


def _captioner_from_checkpoint(path: Path, device: torch.device) -> Captioner:
    checkpoint, hparams = task_checkpoint(path, "captioning")
    if not hparams.get("vocab") or "model_name" not in hparams:
        raise NotATrainingCheckpoint(path, "not a visattn captioning checkpoint (no vocab and model_name)",
                                     "pass --model ARCH.TAG instead")
    vocab = Vocabulary.from_list(hparams["vocab"])
    # The checkpoint holds every weight: the encoder's own pretrained weights need not be fetched again.
    arch, kwargs = checkpoint_model_kwargs(hparams, vocab_size=len(vocab), encoder_pretrained=False)
    net = create_model(arch, **kwargs)
    load_checkpoint_weights(net, checkpoint, path)
    preprocessing = hparams.get("preprocessing")
    if not preprocessing:
        raise WeightsError(f"{path}: the checkpoint has no preprocessing; train it with a config that links data.preprocessing")
    max_len = _recorded_max_len(hparams, f"{path}: hyper_parameters.", fix=EDITED_CHECKPOINT)
    return Captioner(inference_model(net, device), vocab, dict(preprocessing), str(path), arch, kwargs, max_len)


def _recorded_max_len(record: dict[str, Any], source: str, *, fix: str) -> int:
    """The longest caption a training run decoded, as its checkpoint or weights entry records it (the
    default when neither does)."""
    max_len = record.get("max_len", Captioner.max_len)
    if not is_count(max_len):
        raise WeightsError(f"{source}max_len={max_len!r}; {fix}")
    return max_len


def is_captioner(model: Optional[str] = None, checkpoint: Optional[str] = None) -> bool:
    """Whether ``--model`` (its index entry's task) or ``--checkpoint`` (its hyperparameters) is a captioner."""
    if checkpoint is not None:
        return bool((read_checkpoint(Path(checkpoint), lazy=True).get("hyper_parameters") or {}).get("vocab"))
    if model is None:
        return False
    arch, tag = split_model_name(model)
    return find_weights_entry(arch, tag).get("task") == "captioning"


# ---------------------------------------------------------------------------------------------
# `visattn caption` and `visattn evaluate`
# ---------------------------------------------------------------------------------------------


def caption_files(captioner: Captioner, paths: Sequence[str], *, beam_size: int = 5, max_len: Optional[int] = None,
                  length_penalty: float = 1.0, attention_out: Optional[str] = None, as_json: bool = False,
                  batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Print one caption per image file (folders are searched recursively); returns ``(failures, files)``.

    Files are decoded and captioned ``batch_size`` at a time, in one beam search (the same captions
    as one at a time, several times faster). A file that cannot be read is reported on its own line
    and the others go on. With ``attention_out``, a PNG per image, ``STEM.png``, shows each word's
    attention; every name is planned before anything is written, and one that would replace an
    input file is refused. ``max_pixels`` as :func:`~visattn.data.image_io.decode_image` takes it.
    """
    import json

    from ..data.image_io import list_images, run_in_batches
    from ..explain import model_view, squashed_pixel_aspect
    from ..explain.overlay import save_panels, word_panels_figure

    files = list_images(list(paths), allow_empty=False, exclude=[attention_out])
    flag = "--attention-out"
    command = f"caption {flag}"  # what its panels are marked as written by (fileio.PNG_COMMAND)
    targets = output_paths(files, attention_out, flag=flag, commands={"": command})[""]
    centres_of = functools.lru_cache(maxsize=None)(functools.partial(attention_centres, captioner.model))

    def caption_batch(images: list[Tensor]) -> Iterable[tuple[Tensor, Tensor]]:
        decoded = captioner.caption(torch.stack(images), beam_size=beam_size, max_len=max_len,
                                    length_penalty=length_penalty)
        return zip(decoded.tokens, decoded.attention)

    failures = 0
    results = run_in_batches(files, batch_size, captioner.transform(), caption_batch, max_pixels=max_pixels)
    for (item, result), target in zip(results, targets):
        if item.error is not None:
            failures += 1
            print(item.error_line(as_json))
            continue
        tokens, attention = result
        words = captioner.vocab.words(tokens.tolist())
        record = {"file": str(item.path), "caption": captioner.vocab.caption_text(tokens.tolist())}  # as predict writes it
        if target is not None:  # asked for: the record says where it went, or null for an empty caption
            fig = None
            if words:
                # The maps cover what the model saw: the photo recipe's centre crop, not the whole file.
                seen = model_view(item.prepared, captioner.preprocessing["mean"], captioner.preprocessing["std"])
                aspect = squashed_pixel_aspect(captioner.preprocessing, item.source_shape, item.prepared.shape)
                fig = word_panels_figure(seen, words, list(attention.numpy()), centres=centres_of(seen.shape[:2]),
                                         pixel_aspect=aspect)
            record["attention"] = save_panels(fig, target, flag=flag, folder=attention_out, command=command)
        line = f"{item.path}: {record['caption']}{attention_note(record, 'words')}"
        print(json.dumps(record) if as_json else one_line(line))
    return failures, len(files)


def evaluation_loader(captioner: Captioner, spec: str, split: str = "test", *, limit: Optional[int] = None,
                      batch_size: int = 64, num_workers: int = 0) -> DataLoader:
    """Batches of ``fashion-scenes`` (``limit`` scenes of ``split``, default as many as the training run
    scored, else 1000, drawn at the model's input size), ``coco:ANNOTATIONS.json:IMAGES_DIR`` or
    ``karpathy:SPLITS.json:IMAGES_DIR`` (its images of ``split``), with references (and boxes for scenes)."""
    from ..data.caption_datamodules import CaptionSamples, SceneImages, collate_captions
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
    """BLEU-1..4, CIDEr (METEOR if asked), pointing (when the batches carry boxes), ``n`` and, for a
    DataLoader of image files, ``skipped``; ``None`` batches (only broken image files) are passed over."""
    from ..data.image_folder import skipped_images

    metrics = CaptionMetrics(captioner.vocab, meteor=meteor)
    for batch in (b for b in batches if b is not None):
        decoded = captioner.caption(batch["images"], beam_size=beam_size, max_len=max_len,
                                    length_penalty=length_penalty)
        metrics.update(decoded, batch, functools.partial(attention_centres, captioner.model))
    if not metrics.hypotheses:
        raise ConfigError("the evaluation dataset is empty; check --dataset, --split and --limit")
    scores = {k: reported_score(v) if isinstance(v, float) else v for k, v in metrics.compute().items()}
    return {**scores, **skipped_images(getattr(batches, "dataset", None))}
