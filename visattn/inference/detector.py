"""A trained detector, loaded with its class names and preprocessing, and `visattn detect`."""
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..data.image_io import DEFAULT_MAX_PIXELS
from ..data.transforms import check_unit_images, to_model_input
from ..errors import ConfigError, WeightsError, is_count, is_number, one_line
from ..explain.detections import check_max_side, detection_maps
from ..fileio import atomic_path, attention_note, new_folders_removed_on_error, output_errors, output_paths, png_mark
from ..models.detection import unit_floats
from ..modes import eval_mode
from ..terminal_progress import FileProgress
from ..weights_index import model_weights_entry
from ..registry import create_model, is_model, model_family, split_model_name
from ..weight_names import names_a_weights_file
from .checkpoints import (checkpoint_model, checkpoint_model_kwargs, inference_model, inference_target,
                          read_checkpoint, task_checkpoint, task_weights_entry)
from .classifier import Classifier, recorded_labels


Detections = list[dict[str, Tensor]]


def is_detection_arch(name: str) -> bool:
    """Whether ``name`` (``arch`` or ``arch.tag``) is a registered detector."""
    arch = split_model_name(name)[0]
    return is_model(arch) and model_family(arch) == "detection"


@dataclass
class Detector:
    """A detector ready for inference, with its class names and preprocessing."""

    model: nn.Module
    class_names: list[str]
    preprocessing: dict[str, Any]
    name: str  # arch.tag or the checkpoint path
    arch: str
    model_kwargs: dict[str, Any]
    category_ids: Optional[list[int]] = None  # each label's id in the training annotations (COCO's), where known

    device = Classifier.device

    def entry_fields(self) -> dict[str, Any]:
        """What its weights entry records beside the weights (see :meth:`Classifier.entry_fields`); no
        preprocessing where none was recorded: the model resizes and normalises its input itself."""
        return {"task": "detection", "labels": list(self.class_names), "category_ids": self.category_ids or None,
                "preprocessing": dict(self.preprocessing) or None}

    @torch.no_grad()  # not inference_mode: its tensors refuse in-place writes and autograd in the caller's code
    def detect(self, images: Sequence[Tensor], *, score_threshold: Optional[float] = None,
               attention: bool = False, attention_max_side: Optional[int] = None) -> Detections:
        """Per image ``{"boxes": (M, 4) xyxy pixels, "scores": (M,), "labels": (M,)}`` on the CPU,
        scoring at least ``score_threshold`` (None: the model's own, FCOS's ``score_thresh``, DETR's 0),
        for ``(3, H, W)`` images in 0..1 on any device, or uint8 ones (0..255), which a float32 detector turns
        into floats one at a time (a quarter of the memory for a batch of photos).

        ``attention`` adds ``"attention"`` ``(M, H, W)``: where each detection looked, its query's
        cross-attention for DETR-style detectors, else gradient × input of its score
        (:func:`visattn.explain.detections.detection_maps`); ``attention_max_side`` shrinks the maps so
        that their longer side is at most that many pixels.
        """
        check_unit_images(images)
        # NaN would silently keep every detection from passing
        if score_threshold is not None and not (is_number(score_threshold) and 0 <= score_threshold <= 1):
            raise ConfigError(f"score_threshold={score_threshold!r}: give a number from 0 to 1, or None for the "
                              "model's own")
        check_max_side(attention_max_side, "attention_max_side")
        images = self._model_inputs(images, as_floats=attention)
        if not images:
            return []
        threshold = 0.0 if score_threshold is None else score_threshold
        # eval_mode: a detector in training mode wants targets and returns losses
        with eval_mode(self.model), _score_floor_at_most(self.model, score_threshold):
            if attention:
                detections, maps = detection_maps(self.model, images, min_score=threshold, max_side=attention_max_side)
                detections = [{**d, "attention": m} for d, m in zip(detections, maps)]
            else:
                detections = self.model(images)
        return [{k: v[d["scores"] >= threshold].cpu() for k, v in d.items()} for d in detections]

    def _model_inputs(self, images: Sequence[Tensor], *, as_floats: bool) -> list[Tensor]:
        """``images`` on the model's device; uint8 ones kept for a float32 model's transform to convert in turn,
        unless ``as_floats`` (gradient x input needs floats) or the model computes in another dtype (or has none)."""
        weight = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        keep_bytes = weight is not None and weight.dtype == torch.float32 and not as_floats
        return [image.to(weight.device) if keep_bytes and image.dtype == torch.uint8 else
                to_model_input(unit_floats(image) if image.dtype == torch.uint8 else image, self.model)
                for image in images]


@contextmanager
def _score_floor_at_most(model: nn.Module, threshold: Optional[float]) -> Iterator[None]:
    """FCOS drops candidates scoring at most its ``score_thresh`` before NMS, so a lower requested
    threshold would find nothing below it: lower it for the call, then put it back (None: leave it)."""
    floor = getattr(model, "score_thresh", None)
    if floor is None or threshold is None or threshold >= floor:
        yield
        return
    model.score_thresh = threshold
    try:
        yield
    finally:
        model.score_thresh = floor


def load_detector(model: Union[str, os.PathLike, None] = None, checkpoint: Union[str, os.PathLike, None] = None, *,
                  device: Union[str, torch.device] = "cpu") -> Detector:
    """Load ``arch.tag`` shipped weights (``arch`` alone: its default weights), a weights file visattn saved
    (``model="DIR/ARCH.TAG.safetensors"``, a path) or a training checkpoint onto ``device`` (see
    :func:`visattn.devices.inference_device`)."""
    target = inference_target(model, checkpoint, device)
    if checkpoint is not None:
        return _detector_from_checkpoint(Path(checkpoint), target)
    arch, entry = task_weights_entry(model, "detection")
    net = inference_model(create_model(arch, pretrained=entry["source"]), target)
    labels = recorded_labels(entry.get("labels"), net.num_classes, f"{arch}.{entry['tag']}'s index entry")
    return Detector(net, labels, dict(entry.get("preprocessing") or {}), f"{arch}.{entry['tag']}", arch,
                    dict(entry.get("model_kwargs") or {}), entry.get("category_ids"))


def _detector_from_checkpoint(path: Path, device: torch.device) -> Detector:
    checkpoint, hparams = task_checkpoint(path, "detection")
    if not is_detection_arch(str(hparams.get("model_name", ""))) or not is_count(hparams.get("num_classes")):
        raise WeightsError(f"{path}: not a visattn detection checkpoint (no detector model_name and num_classes); "
                           "pass a checkpoint written by `visattn fit --config configs/detection/...`")
    # The checkpoint holds every weight: the backbone's own pretrained weights need not be read again.
    arch, kwargs = checkpoint_model_kwargs(hparams, pretrained_backbone=False)
    net = checkpoint_model(arch, partial(create_model, arch, num_classes=hparams["num_classes"], **kwargs), checkpoint,
                           path)
    labels = recorded_labels(hparams.get("class_names"), hparams["num_classes"], str(path))
    return Detector(inference_model(net, device), labels, dict(hparams.get("preprocessing") or {}), str(path), arch,
                    kwargs, hparams.get("category_ids"))


def is_detector(model: Optional[str] = None, checkpoint: Optional[str] = None) -> bool:
    """Whether ``--model`` (its architecture) or ``--checkpoint`` (its ``model_name``) is a detector."""
    if checkpoint is not None:
        model = (read_checkpoint(Path(checkpoint), lazy=True).get("hyper_parameters") or {}).get("model_name")
    elif model is not None and names_a_weights_file(os.fspath(model)):
        model = model_weights_entry(model)["arch"]
    return isinstance(model, str) and is_detection_arch(model)


# One colour per class (cycled), readable on black FashionScenes canvases and on photos.
_BOX_COLOURS = ("red", "lime", "deepskyblue", "yellow", "orange", "magenta", "cyan", "white", "pink", "violet")
_MIN_DRAWN_SIDE = 256  # small images are enlarged before drawing, so the labels stay readable
_MAX_DRAWN_SIDE = 4096  # ... but not a strip beyond this (a 3000x20 panorama would be drawn 39000 px wide)
# An attention panel is 200 px wide (2 in at 100 dpi); maps at a 12 MP photo's pixels take 48 MB a detection
# (a 16-query DETR: 3.6 GB and 76 s against 11 s without maps; 8000x6000 ran out of memory).
_PANEL_SIDE = 512


# What detect's two outputs are marked as written by (fileio.PNG_COMMAND): the drawings and the attention panels.
_DRAWINGS, _PANELS = "detect --out", "detect --attention-out"


def detect_files(detector: Detector, paths: Sequence[str], *, score_threshold: float = 0.5,
                 out: Optional[str] = None, attention_out: Optional[str] = None, as_json: bool = False,
                 batch_size: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS,
                 progress: Optional[FileProgress] = None) -> tuple[int, int]:
    """Print the detections of each image file (folders are searched recursively); returns ``(failures, files)``.

    Files are decoded and detected ``batch_size`` at a time, in one forward pass. A file that cannot
    be read is reported on its own line and the others go on. With ``out``, a PNG per image,
    ``STEM.png``, shows the boxes with their labels and scores; with ``attention_out``, a PNG per
    image has one panel per detection showing where it looked (see :meth:`Detector.detect`),
    ``STEM-attention.png`` when it is the ``out`` folder too. Every output name is planned before
    anything is written, and one that would replace an input file is refused. ``max_pixels`` as
    :func:`~visattn.data.image_io.decode_image` takes it. A ``progress`` (the command's) says how far it is on the
    terminal.
    """
    import json

    from ..data.image_io import list_images, run_in_batches
    from ..data.transforms import to_byte_tensor

    files = list_images(list(paths), allow_empty=False, exclude=[out, attention_out],
                        rerun_of=[_DRAWINGS, _PANELS])
    targets = _output_targets(files, out=out, attention_out=attention_out)
    failures = 0
    detect_batch = partial(detector.detect, score_threshold=score_threshold, attention=bool(attention_out),
                           attention_max_side=_PANEL_SIDE)
    results = run_in_batches(files, batch_size, to_byte_tensor, detect_batch, keep_images=bool(out or attention_out),
                             max_pixels=max_pixels)
    if progress is not None:
        results = progress.track(results, total=len(files), batch_size=batch_size)
    for (item, found), drawn, panels in zip(results, targets["--out"], targets["--attention-out"]):
        if item.error is not None:
            failures += 1
            print(item.error_line(as_json))
            continue
        record = {"file": str(item.path),
                  "detections": detection_records(found, detector.class_names, detector.category_ids)}
        _write_drawings(record, item.image, found, drawn=drawn, panels=panels)
        print(json.dumps(record) if as_json else _detection_line(record, score_threshold))
    return failures, len(files)


def _output_targets(files: list[Path], *, out: Optional[str], attention_out: Optional[str]) -> dict[str, list]:
    """Each file's drawing (``--out``) and attention panels (``--attention-out``), ``None`` where not asked for.
    In one folder, an image's drawing ``NAME.png`` has its panels in ``NAME-attention.png`` (one ``-N`` for both:
    named apart, an input named ``p-attention.png`` would give its drawing the panels' name of ``p.png``)."""
    if out and attention_out and Path(out).resolve() == Path(attention_out).resolve():
        named = output_paths(files, out, flag="--out", commands={"": _DRAWINGS, "-attention": _PANELS})
        return {"--out": named[""], "--attention-out": named["-attention"]}
    with new_folders_removed_on_error(out, attention_out):
        return {flag: output_paths(files, folder, flag=flag, commands={"": command})[""]
                for flag, folder, command in (("--out", out, _DRAWINGS), ("--attention-out", attention_out, _PANELS))}


def _write_drawings(record: dict[str, Any], image: np.ndarray, found: dict[str, Tensor], *,
                    drawn: Optional[Path], panels: Optional[Path]) -> None:
    """Draw the boxes to ``drawn`` and each detection's attention to ``panels`` (``None``: not asked
    for), adding the paths written to ``record``."""
    from ..explain.overlay import save_panels, word_panels_figure

    if drawn is not None:
        with output_errors(drawn.parent, flag="--out"):
            draw_detections(image, record["detections"], drawn)
        record["drawn"] = str(drawn)
    if panels is not None:  # asked for: the record says where it went, or null for an image without detections
        fig = None
        if record["detections"]:
            titles = [f"{d['label']} {d['score']:.2f}" for d in record["detections"]]
            maps = found["attention"].numpy()
            fig = word_panels_figure(_resized(image, maps.shape[-2:]), titles, list(maps))
        record["attention"] = save_panels(fig, panels, flag="--attention-out", folder=panels.parent, command=_PANELS)


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image at ``size`` ``(h, w)``."""
    if image.shape[:2] == tuple(size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.LANCZOS))


def detection_records(found: dict[str, Tensor], class_names: Sequence[str],
                      category_ids: Optional[Sequence[Optional[int]]] = None) -> list[dict[str, Any]]:
    """One image's detections as ``detect --json`` and ``predict`` write them: label (its index where the names
    are unknown), index, the training annotations' ``category_id`` where the run recorded them (the label
    index is no COCO id: ids 1..K scored 0.033 against 0.094), score and xyxy box in pixels, at full precision,
    so COCOeval on them gives the mAP visattn reports (boxes rounded to 0.1 px move it by 0.002)."""
    records = []
    for box, score, k in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist()):
        record = {"label": class_label(class_names, k), "index": k}
        if category_ids and k < len(category_ids) and category_ids[k] is not None:
            record["category_id"] = category_ids[k]
        records.append({**record, "score": score, "box": box})
    return records


def class_label(names: Sequence[str], index: int) -> str:
    """Class ``index``'s name, or the index itself where the run recorded no names."""
    return names[index] if index < len(names) else str(index)


def _detection_line(record: dict[str, Any], score_threshold: float) -> str:
    found = record["detections"]
    # to 0.1 px: five boxes at full precision made a 500-character line (--json keeps every digit)
    boxes = (", ".join(f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.1f}' for v in d['box'])}]" for d in found)
             if found else f"no objects scoring {score_threshold} or more")
    drawn = f"; drawn: {record['drawn']}" if "drawn" in record else ""
    return one_line(f"{record['file']}: {boxes}{drawn}{attention_note(record, 'detections')}")


_BITMAP_FONT_SIZE = 11  # px, about PIL's default font, kept for drawings under 600 px


@lru_cache(maxsize=1)
def _label_font() -> Optional[str]:
    """A TrueType font that scales: matplotlib's DejaVu Sans, which it ships; None where it does not open (a broken
    install), for PIL's default font, which does not grow, rather than a traceback."""
    from matplotlib import font_manager
    from PIL import ImageFont

    path = font_manager.findfont("DejaVu Sans")
    try:
        ImageFont.truetype(path, _BITMAP_FONT_SIZE)
    except OSError:
        return None
    return path


def draw_detections(image: np.ndarray, detections: Sequence[dict[str, Any]], path: Path) -> None:
    """Write ``image`` (``(H, W, 3)`` uint8) with each detection's box, label and score as a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    # ceil: nearest-neighbour enlargement, to a whole factor that keeps the long side within the cap
    scale = max(1, min(-(-_MIN_DRAWN_SIDE // min(image.shape[:2])), _MAX_DRAWN_SIDE // max(image.shape[:2])))
    drawing = Image.fromarray(np.ascontiguousarray(image)).resize((image.shape[1] * scale, image.shape[0] * scale),
                                                                  Image.Resampling.NEAREST)
    if detections:
        # Lines and labels grow with the drawing: on an 8000x6000 photo a 1 px box and an 11 px font could not be
        # seen at any viewing size.
        side = min(drawing.size)  # the shorter: a label as tall as a strip would hide it
        grows = side // 50 > _BITMAP_FONT_SIZE and _label_font() is not None
        font = ImageFont.truetype(_label_font(), side // 50) if grows else ImageFont.load_default()
        width = max(1, scale // 2, side // 300)
        draw = ImageDraw.Draw(drawing)
        boxes = [_covered_pixels([v * scale for v in d["box"]]) for d in detections]
        colours = [_BOX_COLOURS[d["index"] % len(_BOX_COLOURS)] for d in detections]
        for (x0, y0, x1, y1), colour in zip(boxes, colours):
            # a dark rim: a white or yellow line alone vanished on a light photo
            draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline="black", width=width + 2)
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        texts = [f"{d['label']} {d['score']:.2f}" for d in detections]
        bounds = [draw.textbbox((0, 0), text, font=font) for text in texts]  # (left, top, right, bottom)
        sizes = [(right - left + 2, bottom - top + 2) for left, top, right, bottom in bounds]  # a pixel's margin
        places = _label_places(boxes, sizes, drawing.size, inset=width)
        for (x, y), (w, h), (left, top, _, _), text, colour in zip(places, sizes, bounds, texts, colours):
            # black on a patch of the box's colour (all bright): the label in its colour alone could not be read
            # on a light photo, nor on an item of a like colour
            draw.rectangle((x, y, x + w - 1, y + h - 1), fill=colour)
            draw.text((x + 1 - left, y + 1 - top), text, fill="black", font=font)
    with atomic_path(path) as tmp:
        drawing.save(tmp, format="PNG", pnginfo=png_mark(_DRAWINGS))


def _covered_pixels(box: Sequence[float]) -> tuple[int, int, int, int]:
    """An xyxy box's first and last pixel columns and rows: its x2 and y2 are the edges after its last pixels."""
    x0, y0 = round(box[0]), round(box[1])
    return x0, y0, max(x0, round(box[2]) - 1), max(y0, round(box[3]) - 1)


def _label_places(boxes: Sequence[Sequence[int]], sizes: Sequence[tuple[int, int]], image_size: tuple[int, int], *,
                  inset: int) -> list[tuple[int, int]]:
    """The top-left corner of each box's label of ``sizes`` ``(w, h)`` in an image of ``image_size`` ``(W, H)``:
    inside the box's top where it covers at most half of it, else above the box, else below; moved left to stay
    in the image, and down past the labels placed before it (boxes of one object under two classes put their labels
    on one spot)."""
    image_w, image_h = image_size
    placed: list[tuple[int, int, int, int]] = []
    for (x0, y0, x1, y1), (w, h) in zip(boxes, sizes):
        if y1 - y0 >= 2 * h:
            y = y0 + inset
        elif y0 - h >= 0:
            y = y0 - h
        elif y1 + 1 + h <= image_h:
            y = y1 + 1
        else:
            y = y0 + inset
        x = max(0, min(x0 + inset, image_w - w))
        y = max(0, min(y, image_h - h))
        start = y
        while any(x < px1 and px0 < x + w and y < py1 and py0 < y + h for px0, py0, px1, py1 in placed):
            y += h
        if y + h > image_h:  # no free place below: overlap rather than leave the image
            y = start
        placed.append((x, y, x + w, y + h))
    return [(x, y) for x, y, _, _ in placed]
