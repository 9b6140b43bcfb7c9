"""A trained Show, Attend and Tell captioner, loaded with its vocabulary and preprocessing, and `visattn caption`."""
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..data.image_io import DEFAULT_MAX_PIXELS
from ..data.transforms import check_image_batch, to_model_input
from ..data.vocab import Vocabulary
from ..errors import NotATrainingCheckpoint, WeightsError, is_count, one_line
from ..explain import map_centres
from ..explain.cell_centres import CellCentres
from ..fileio import attention_note, output_paths
from ..models.show_attend_tell import DecodedCaptions
from ..modes import eval_mode
from ..terminal_progress import FileProgress
from ..weights_index import model_weights_entry
from ..registry import create_model
from .checkpoints import (EDITED_CHECKPOINT, checkpoint_model, checkpoint_model_kwargs, inference_model,
                          inference_target, read_checkpoint, task_checkpoint, task_weights_entry)
from .classifier import Classifier


def attention_centres(model: nn.Module, image_size: Sequence[int]) -> CellCentres:
    """Where a captioner's attention cells sit on an ``image_size`` input: its encoder's map (a ViT's patches
    in equal blocks, a CNN's cells at their receptive fields' centres) average-pooled to the attention
    grid. The encoder runs once on a blank image to give its map's size."""
    weight = next(model.parameters())
    blank = weight.new_zeros((1, model.input_size[0], *image_size))
    with torch.no_grad(), eval_mode(model):
        feature_size = model.feature_map(blank).shape[-2:]
    return map_centres(model.encoder, feature_size, image_size).pooled(model.grid)


def decode(model: nn.Module, images: Tensor, *, beam_size: int = 1, max_len: int = 20,
           length_penalty: float = 1.0) -> DecodedCaptions:
    """Greedy decoding for ``beam_size == 1``, batched beam search otherwise; the model checks both settings."""
    if type(beam_size) is int and beam_size == 1:  # True and 1.0 equal 1 too: beam_search refuses them
        return model.greedy_decode(images, max_len=max_len)
    return model.beam_search(images, beam_size=beam_size, max_len=max_len, length_penalty=length_penalty)


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

    def entry_fields(self) -> dict[str, Any]:
        """What its weights entry records beside the weights (see :meth:`Classifier.entry_fields`)."""
        return {"task": "captioning", "vocab": self.vocab.to_list(), "max_len": self.max_len,
                "preprocessing": dict(self.preprocessing)}

    @torch.no_grad()  # not inference_mode: its tensors refuse in-place writes and autograd in the caller's code
    def caption(self, images: Tensor, *, beam_size: int = 5, max_len: Optional[int] = None,
                length_penalty: float = 1.0) -> DecodedCaptions:
        """Captions of normalised images ``(B, C, H, W)`` (C the model's channels) on any device, returned on the
        CPU, of at most ``max_len`` words (default :attr:`max_len`)."""
        max_len = self.max_len if max_len is None else max_len
        check_image_batch(images, channels=self.preprocessing["input_size"][0])
        if len(images) == 0:
            return DecodedCaptions.empty()
        with eval_mode(self.model):  # a model the caller set training would drop out at random
            decoded = decode(self.model, to_model_input(images, self.model), beam_size=beam_size, max_len=max_len,
                             length_penalty=length_penalty)
        return decoded.to("cpu")


def load_captioner(model: Union[str, os.PathLike, None] = None, checkpoint: Union[str, os.PathLike, None] = None, *,
                   device: Union[str, torch.device] = "cpu") -> Captioner:
    """Load ``arch.tag`` shipped weights (``arch`` alone: its default weights), a weights file visattn saved
    (``model="DIR/ARCH.TAG.safetensors"``, a path) or a training checkpoint onto ``device`` (see
    :func:`visattn.devices.inference_device`)."""
    target = inference_target(model, checkpoint, device)
    if checkpoint is not None:
        return _captioner_from_checkpoint(Path(checkpoint), target)
    arch, entry = task_weights_entry(model, "captioning")
    if not entry.get("vocab"):
        raise WeightsError(f"{arch}.{entry['tag']}: the weights entry has no vocab; save the weights again with "
                           "`visattn save-weights --checkpoint`, or pass vocab=Captioner.vocab.to_list() to "
                           "save_weights")
    if not entry.get("preprocessing"):
        raise WeightsError(f"{arch}.{entry['tag']}: the weights entry has no preprocessing (input_size, mean, std); "
                           "save them with `visattn save-weights --checkpoint`, or pass preprocessing= to save_weights")
    net = inference_model(create_model(arch, pretrained=entry["source"]), target)
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
    net = checkpoint_model(arch, functools.partial(create_model, arch, **kwargs), checkpoint, path)
    preprocessing = hparams.get("preprocessing")
    if not preprocessing:
        raise WeightsError(f"{path}: the checkpoint has no preprocessing; train it with a config that links "
                           "data.preprocessing, or from Python with CaptioningTask(preprocessing=data.preprocessing)")
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
    return model_weights_entry(model).get("task") == "captioning"


def _cut_note(finished: Optional[bool], words: int) -> str:
    """What a caption's line says of its end: nothing when the model ended it."""
    if finished:
        return ""
    if finished is None:  # a decoder that does not say (DecodedCaptions built without finished)
        return f" [{_words(words)}, as many as --max-len allows: it may have been cut; raise --max-len to see]"
    return f" [cut at {_words(words)}, before the model ended it: raise --max-len]"


def _words(count: int) -> str:
    return f"{count} word{'' if count == 1 else 's'}"


def caption_files(captioner: Captioner, paths: Sequence[str], *, beam_size: int = 5, max_len: Optional[int] = None,
                  length_penalty: float = 1.0, attention_out: Optional[str] = None, as_json: bool = False,
                  batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                  progress: Optional[FileProgress] = None) -> tuple[int, int]:
    """Print one caption per image file (folders are searched recursively); returns ``(failures, files)``.

    Files are decoded and captioned ``batch_size`` at a time, in one beam search (the same captions
    as one at a time, several times faster). A file that cannot be read is reported on its own line
    and the others go on. With ``attention_out``, a PNG per image, ``STEM.png``, shows each word's
    attention; every name is planned before anything is written, and one that would replace an
    input file is refused. ``max_pixels`` as :func:`~visattn.data.image_io.decode_image` takes it. A ``progress``
    (the command's) says how far it is on the terminal.
    """
    import json

    from ..data.image_io import list_images, run_in_batches
    from ..explain import model_view, squashed_pixel_aspect
    from ..explain.overlay import save_panels, word_panels_figure

    flag = "--attention-out"
    command = f"caption {flag}"  # what its panels are marked as written by (fileio.PNG_COMMAND)
    files = list_images(list(paths), allow_empty=False, exclude=[attention_out], rerun_of=[command])
    targets = output_paths(files, attention_out, flag=flag, commands={"": command})[""]
    centres_of = functools.lru_cache(maxsize=None)(functools.partial(attention_centres, captioner.model))
    longest = captioner.max_len if max_len is None else max_len

    def caption_batch(images: list[Tensor]) -> Iterable[tuple[Tensor, Tensor, Optional[bool]]]:
        decoded = captioner.caption(torch.stack(images), beam_size=beam_size, max_len=max_len,
                                    length_penalty=length_penalty)
        return zip(decoded.tokens, decoded.attention, decoded.finished_within(longest))

    failures = 0
    results = run_in_batches(files, batch_size, captioner.transform(), caption_batch, max_pixels=max_pixels)
    if progress is not None:
        results = progress.track(results, total=len(files), batch_size=batch_size)
    for (item, result), target in zip(results, targets):
        if item.error is not None:
            failures += 1
            print(item.error_line(as_json))
            continue
        tokens, attention, finished = result
        words = captioner.vocab.words(tokens.tolist())
        # the caption as predict writes it
        record = {"file": str(item.path), "caption": captioner.vocab.caption_text(tokens.tolist()),
                  "finished": finished}
        if target is not None:  # asked for: the record says where it went, or null for an empty caption
            fig = None
            if words:
                # The maps cover what the model saw: the photo recipe's centre crop, not the whole file.
                seen = model_view(item.prepared, captioner.preprocessing["mean"], captioner.preprocessing["std"])
                aspect = squashed_pixel_aspect(captioner.preprocessing, item.source_shape, item.prepared.shape)
                fig = word_panels_figure(seen, words, list(attention.numpy()), centres=centres_of(seen.shape[:2]),
                                         pixel_aspect=aspect)
            record["attention"] = save_panels(fig, target, flag=flag, folder=attention_out, command=command)
        line = f"{item.path}: {record['caption']}{_cut_note(finished, len(tokens))}{attention_note(record, 'words')}"
        print(json.dumps(record) if as_json else one_line(line))
    return failures, len(files)
