"""``visattn predict``'s default prediction writer, :class:`JsonPredictionWriter`, and the JSON
records it writes for each task's predictions.
"""
import json
from pathlib import Path
from typing import Any, Optional

import torch

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from ..data.image_folder import image_files_of
from ..fileio import atomic_path, output_errors, prepare_output_dir, refuse_replacing_others_files
from ..inference.detector import class_label, detection_records
from .distributed import gather_shares


class JsonPredictionWriter(BasePredictionWriter):
    """Writes what ``visattn predict`` predicts to ``<trainer.default_root_dir>/predictions.jsonl``, one
    JSON object per sample (``sample`` is its index in the predict dataset), and prints where.

    A classifier's record holds its ``topk`` classes with names and probabilities, a captioner's its
    caption, a detector's its boxes with labels and scores, in the shapes ``visattn classify|caption|detect
    --json`` print; an image file that could not be read, its ``error``, as they print; another task's output
    is written as lists, one line per batch. The file is replaced
    whole once all batches are done, so a run that fails leaves the previous one. An earlier run's file is
    replaced (the printed line says so); a file of that name visattn did not write is refused before predicting.

    Args:
        topk: classes per sample for a classifier.
    """

    def __init__(self, *, topk: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.topk = topk
        self.records: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.records = []
        path = _predictions_path(trainer)
        prepare_output_dir(path.parent, flag="trainer.default_root_dir")  # before predicting, not once it is done
        refuse_replacing_others_files([path], flag="trainer.default_root_dir", ours=_written_by_the_writer)

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Optional[list[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        records = [] if prediction is None else _prediction_records(prediction, pl_module.hparams, self.topk)
        if records is None:
            self.records.append({"batch": batch_idx, "prediction": _as_lists(prediction)})
            return
        loaders = trainer.predict_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        files, positions = image_files_of(getattr(loader, "dataset", None))
        broken = set()  # collate_present left these files out of the batch (all of it when prediction is None)
        if files is not None and batch_indices is not None:
            broken = {i for i in batch_indices if files.is_broken(positions[i])}
        present = [i for i in batch_indices or () if i not in broken]
        if batch_indices is None or len(present) != len(records):
            self.records.extend({"sample": None, **record} for record in records)
            return
        by_sample = dict(zip(present, records))
        for i in batch_indices:
            where = {"file": str(files.paths[positions[i]])} if files is not None else {}
            record = by_sample[i] if i in by_sample else {"error": files.failure(positions[i])}
            self.records.append({"sample": int(i), **where, **record})

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        records = self.records
        if trainer.world_size > 1:  # one file, written by the first process, in sample order
            records = [record for share in gather_shares(records) for record in share]
            if trainer.global_rank != 0:
                return
            if all(isinstance(record.get("sample"), int) for record in records):
                records.sort(key=lambda record: record["sample"])
        path = _predictions_path(trainer)
        replaced = " (replacing the earlier predictions there)" if path.exists() else ""
        # a failed write names the folder (a file-size limit, a full disk), not standard output
        with output_errors(path.parent, flag="trainer.default_root_dir"), atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(record) + "\n" for record in records))
        unread = sum("error" in record for record in records)
        failed = f"; {unread} could not be read (their records hold the error)" if unread else ""
        print(f"wrote {len(records)} predictions to {path}{replaced}{failed}")


def _predictions_path(trainer: pl.Trainer) -> Path:
    return Path(trainer.default_root_dir) / "predictions.jsonl"


def _written_by_the_writer(path: Path) -> bool:
    """Whether ``path`` is a file :class:`JsonPredictionWriter` wrote: empty (no predictions), or its first line
    one of its records."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        record = json.loads(first or "{}")
    except (OSError, ValueError):  # a folder, unreadable, not text or not JSON
        return False
    return not first or (isinstance(record, dict) and ("sample" in record or "batch" in record))


def _prediction_records(prediction: Any, hparams: Any, topk: int) -> Optional[list[dict[str, Any]]]:
    """One JSON-ready record per sample of a visattn task's ``predict_step`` output; None for other outputs."""
    names = hparams.get("class_names") or []
    if isinstance(prediction, torch.Tensor) and prediction.ndim == 2:  # a classifier's probabilities (B, classes)
        top = prediction.float().topk(min(topk, prediction.shape[1]), dim=1)
        return [{"predictions": [{"label": class_label(names, k), "index": k, "prob": p}
                                 for p, k in zip(probs, ks)]}
                for probs, ks in zip(top.values.tolist(), top.indices.tolist())]
    if isinstance(prediction, list) and all(isinstance(p, dict) and "caption" in p for p in prediction):  # captions
        return [{"caption": p["caption"], "finished": p.get("finished")} for p in prediction]
    if isinstance(prediction, list) and all(isinstance(p, dict) and "boxes" in p for p in prediction):  # detections
        return [{"detections": detection_records(found, names, hparams.get("category_ids"))} for found in prediction]
    return None


def _as_lists(value: Any) -> Any:
    """``value`` with tensors as (nested) lists, so ``json.dumps`` takes it; other objects as their text."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _as_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
