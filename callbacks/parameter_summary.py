"""A model summary that lists what it can count (parameters), not what it cannot (FLOPs)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from typing_extensions import override


class ParameterSummary(Callback):
    """At fit start, print each top-level submodule's type and parameters, the totals and the fp32 size.

    Lightning's default summary also prints FLOPs, counted by running ``example_input_array`` through the model;
    pocketbert modules have none (inputs are variable-length token ids), so it printed ``Total FLOPs: 0``.
    ``python -m recipes`` uses this summary instead unless a recipe sets ``enable_model_summary: false``.
    """

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        rows = [(name, type(module).__name__, sum(p.numel() for p in module.parameters()))
                for name, module in pl_module.named_children()]
        total = sum(p.numel() for p in pl_module.parameters())
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        width = max((len(name) for name, _, _ in rows), default=4)
        type_width = max((len(kind) for _, kind, _ in rows), default=4)
        lines = [f"  {name:<{width}}  {kind:<{type_width}}  {get_human_readable_count(count):>7}"
                 for name, kind, count in rows]
        rank_zero_info(f"{type(pl_module).__name__}: {get_human_readable_count(total)} parameters "
                       f"({get_human_readable_count(trainable)} trainable, {4 * total / 1e6:.1f} MB in fp32)\n"
                       + "\n".join(lines))
