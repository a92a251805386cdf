"""``predict`` writes what it predicts: one row per text with the predicted label and the class probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

from export import ExportError
from export.inference import prediction_records, write_predictions


class PredictionWriter(BasePredictionWriter):
    """After ``predict``, write ``<run dir>/predictions/predictions.csv`` (or ``.jsonl``; ``<name>.csv`` for the
    DataModule's ``predict_file`` ``<name>.txt``) and say where. ``python -m recipes predict`` runs in the folder of
    its checkpoint's run (``--ckpt_path``), so that is the run dir.

    Rows follow the predicted split (the DataModule's ``predict_file`` if set, else its test split): ``index``
    (position in the split), ``text`` (normalized, as the model read it), ``predicted``, ``confidence``, ``label``
    (the true label, empty when unknown), the ``top_k`` next labels and one ``p_<label>`` probability per class.
    ``python -m recipes drift`` reads the file as it is. ``python -m recipes predict`` adds this writer when the
    recipe lists none. Under DDP each rank writes its share to ``predictions.rank<N>.<format>``.

    Args:
        output_dir: Folder of the file; default ``<run dir>/predictions`` (the checkpoint's run folder).
        format: ``csv`` or ``jsonl``.
        top_k: Labels listed per row, most likely first (capped at the number of labels).
    """

    def __init__(self, output_dir: Path | None = None, format: Literal["csv", "jsonl"] = "csv", top_k: int = 3) -> None:
        super().__init__(write_interval="epoch")
        if top_k < 1:
            raise ExportError(f"PredictionWriter top_k must be positive, got {top_k}")
        self.output_dir, self.format, self.top_k = output_dir, format, top_k

    @override
    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        outputs = [item for entry in predictions for item in (entry if isinstance(entry, list) else [entry])]
        if not outputs:
            return
        probabilities = torch.cat([out["probabilities"] for out in outputs]).float().cpu().numpy()
        indices = torch.cat([out["index"] for out in outputs]).tolist()
        datamodule = getattr(trainer, "datamodule", None)
        split = getattr(datamodule, "predict_split", "test")
        texts = getattr(datamodule, "texts", {}).get(split) or [""] * (max(indices) + 1)
        truth = getattr(datamodule, "true_labels", {}).get(split)
        label_names: list[str] = list(getattr(pl_module, "label_names", None) or
                                      [str(i) for i in range(probabilities.shape[1])])
        records = prediction_records([texts[i] for i in indices], indices, probabilities, label_names,
                                     top_k=min(self.top_k, len(label_names)),
                                     true_labels=[truth[i] for i in indices] if truth is not None else None,
                                     all_probabilities=True)
        folder = self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
        shard = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        # predictions of the test split, or of predict_file: several inputs share the checkpoint's run folder
        predict_file = getattr(datamodule, "predict_file", None) if split != "test" else None
        stem = Path(str(predict_file)).stem if predict_file else "predictions"
        path = folder / f"{stem}{shard}.{self.format}"
        write_predictions(path, records)
        print(f"predict: wrote {len(records):,} predictions of the {split} split to {path}", flush=True)
