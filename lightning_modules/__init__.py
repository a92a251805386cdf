"""LightningModules, the DataModule, losses and metrics of pocketbert."""

from lightning_modules.checkpoints import ExportableModel, load_exportable, read_checkpoint
from lightning_modules.classifier import TextClassifier
from lightning_modules.datamodule import NewsDataModule
from lightning_modules.distillation import DistillationModule
from lightning_modules.encoders import PRESETS, EncoderSpec
from lightning_modules.errors import PocketbertError

__all__ = [
    "PRESETS",
    "DistillationModule",
    "EncoderSpec",
    "ExportableModel",
    "NewsDataModule",
    "PocketbertError",
    "TextClassifier",
    "load_exportable",
    "read_checkpoint",
]
