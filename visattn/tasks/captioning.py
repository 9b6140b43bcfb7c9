"""Image captioning as a LightningModule (Show, Attend and Tell). Its metrics, and the scoring of a trained captioner
(`visattn evaluate`), are :mod:`visattn.inference.caption_scoring`; loading one for inference is
:mod:`visattn.inference.captioner`.
"""
import functools
import math
import warnings
from typing import Any, Callable, Optional, Union

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..data.vocab import Vocabulary
from ..errors import ConfigError, VisattnWarning, is_number, outside_visattn
from ..inference import moved_here
from ..inference.caption_scoring import CaptionMetrics, check_java
from ..inference.captioner import attention_centres, decode
from ..models.show_attend_tell import (DecodedCaptions, check_decoding, doubly_stochastic_penalty,
                                       refuse_token_ids_past_the_vocab)
from ..pretrained import load_weights, starting_weights_skipped
from ..registry import another_packages_note, create_model, model_task, split_model_name
from ..weights_files import read_state_dict
from ..weights_index import file_weights_entry, find_weights_entry, named_weights_entry, training_checkpoint_settings
from .classification import (check_data_size, refuse_linked_kwargs, sample_mean_loss, warn_if_cropped_otherwise,
                             warn_if_normalised_otherwise)
from .guards import (GuardedTask, NonFiniteLossGuard, TrainingLoss, any_process_scored, batch_of_one_is_one_line,
                     refuse_cast_batches, skip_missing_batch, weight_average)


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
                      "new ids, the other words' start afresh, the rest is loaded",
                      VisattnWarning, stacklevel=outside_visattn())
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
    hyperparameters, a weights file visattn saved: ``vocab``, ``preprocessing``), and how to read those weights;
    ``{}`` when nothing is read or nothing recorded (random init, another library's weights file)."""
    nothing: tuple[dict[str, Any], Callable[[], dict[str, Tensor]]] = ({}, dict)
    if pretrained is False or starting_weights_skipped():
        return nothing
    settings = training_checkpoint_settings(pretrained)
    if settings is not None:
        return settings, lambda: read_state_dict(pretrained)
    if isinstance(pretrained, str):
        entry = named_weights_entry(pretrained) or file_weights_entry(pretrained)  # a file records its vocabulary
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
        alpha_c: λ of the doubly stochastic attention regulariser, weighed against the words as in the paper's
            loss (:func:`~visattn.models.show_attend_tell.doubly_stochastic_penalty`).
        label_smoothing: the training loss's label smoothing (``val/xent`` is unsmoothed).
        max_len: longest generated caption, in words.
        beam_size: validation/test decoding: 1 is greedy, more is beam search.
        length_penalty: beam search ranks hypotheses by ``log p / length ** length_penalty``.
        meteor: also compute METEOR (needs Java; slower).
        ema_decay: keep an exponential moving average of the weights (e.g. 0.999), which validation and
            testing decode with and checkpoints' weights are read from; None disables it.
        compile: ``torch.compile`` the model (and its EMA copy) when training starts; the
            checkpoint keys stay those of the plain model.
        max_bad_steps: a step whose loss is NaN or infinite is skipped (and logged as
            ``train/skipped_steps``); this many in a row stop the run with a message.
    """

    task = "captioning"  # the data modules it takes say the same
    # Given once in the data section of a config and linked here by `visattn fit` (see lightning_cli.py).
    linked_data_attributes = ("vocab", "preprocessing")
    # What its checkpoints record for inference, which a fit without those links warns of.
    inference_records = ("preprocessing",)

    def __init__(
        self,
        model_name: str = "sat_cbam_resnet_scenes",
        *,
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
        compile: bool = False,
        max_bad_steps: int = 5,
    ) -> None:
        super().__init__()
        if model_task(model_name) != "captioning":
            raise ConfigError(f"model_name={model_name!r} is not a captioner"
                              f"{another_packages_note(model_name, 'ShowAttendTell')}; pick one of `visattn models "
                              "'sat_*'`")
        if not vocab:
            raise ConfigError("CaptioningTask needs a vocabulary: link data.vocab in the config (see configs/captioning/)")
        if meteor:
            check_java("model.init_args.meteor=true")
        if not (is_number(alpha_c) and 0 <= alpha_c < math.inf):  # a negative one rewarded uneven attention
            raise ConfigError(f"model.init_args.alpha_c={alpha_c!r}: give a finite weight of 0 or more (1 in the paper)")
        try:  # before training, not at the first validation
            check_decoding(max_len=max_len, beam_size=beam_size, length_penalty=length_penalty)
        except ConfigError as err:
            raise ConfigError(f"model.init_args.{err}") from None
        self.save_hyperparameters()
        self.vocab = Vocabulary.from_list(vocab)
        refuse_linked_kwargs(model_kwargs, vocab_size="model.init_args.vocab (the data's vocabulary)")
        self.model = build_captioner(model_name, self.vocab, dict(model_kwargs or {}), pretrained)
        check_data_size(self.model, model_name, preprocessing)
        # The captioner's own weights' record, else its encoder's (encoder_pretrained)
        recorded = (getattr(self.model, "visattn_recorded_preprocessing", None)
                    or getattr(self.model.encoder, "visattn_recorded_preprocessing", None))
        warn_if_normalised_otherwise(recorded, preprocessing or {})
        warn_if_cropped_otherwise(recorded, preprocessing or {})
        self.ema = weight_average(self.model, ema_decay)
        self.val_metrics = CaptionMetrics(self.vocab, meteor=meteor)
        self.test_metrics = CaptionMetrics(self.vocab, meteor=meteor)
        self.val_xent = sample_mean_loss()
        self.loss_guard = NonFiniteLossGuard(max_bad_steps)
        self.train_loss = TrainingLoss()

    def check_run(self, trainer: pl.Trainer, datamodule: Optional[pl.LightningDataModule], stage: str) -> None:
        # a traceback in the first validation: the scenes' item boxes reached the pointing score in bf16
        refuse_cast_batches(trainer, "the captioner scores captions and attention from float32 batches and "
                                     "keeps its beam scores in float32")

    def forward(self, images: Tensor) -> DecodedCaptions:
        h = self.hparams
        return decode(self.eval_model, images, beam_size=h.beam_size, max_len=h.max_len,
                      length_penalty=h.length_penalty)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # On the host, before the batch moves: the model checks the ids neither on a GPU (its embedding then stops
        # with a device-side assert) nor compiled (the check would break the graph; the embedding's IndexError).
        captions = batch.get("captions") if isinstance(batch, dict) else None
        if isinstance(captions, Tensor) and self.trainer.state.fn != "predict":
            refuse_token_ids_past_the_vocab(captions, self.model.vocab_size)
        return batch

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
    def predict_step(self, batch: Any, batch_idx: int) -> list[dict[str, Any]]:
        """Per image ``{"caption": text, "finished": bool}`` (False: cut at ``max_len``), as ``caption --json``."""
        images = batch["images"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (tuple, list)) else batch
        decoded = self(images)
        return [{"caption": self.vocab.caption_text(ids.tolist()), "finished": finished}
                for ids, finished in zip(decoded.tokens, decoded.finished_within(self.hparams.max_len))]


# Their import loaded Lightning: visattn 0.1.0's paths still give them, with a warning.
__getattr__ = moved_here(__name__, {**dict.fromkeys(("Captioner", "caption_files", "is_captioner", "load_captioner"),
                                                    "captioner"),
                                    **dict.fromkeys(("caption_scores", "evaluate_captioner", "evaluation_loader",
                                                     "pointing_hits"), "caption_scoring")})
