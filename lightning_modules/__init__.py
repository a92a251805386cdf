"""LightningModules, the DataModule, losses and metrics of pocketbert."""

from lightning_modules.augmentation import Augmentation, EdaAugmentation
from lightning_modules.back_translation import BackTranslation
from lightning_modules.checkpoints import ExportableModel, load_exportable, read_checkpoint
from lightning_modules.classifier import TextClassifier
from lightning_modules.datamodule import NewsDataModule
from lightning_modules.distillation import DistillationModule
from lightning_modules.encoders import PRESETS, EncoderSpec
from lightning_modules.errors import PocketbertError
from lightning_modules.pretraining import MaskedLMPretraining
from lightning_modules.teachers import CheckpointTeacher, LogitTeacher, NaiveBayesTeacher, TfidfTeacher
from lightning_modules.text_datamodule import PretrainingDataModule, TextSource

__all__ = [
    "PRESETS",
    "Augmentation",
    "BackTranslation",
    "CheckpointTeacher",
    "DistillationModule",
    "EdaAugmentation",
    "EncoderSpec",
    "ExportableModel",
    "LogitTeacher",
    "MaskedLMPretraining",
    "NaiveBayesTeacher",
    "NewsDataModule",
    "PocketbertError",
    "PretrainingDataModule",
    "TextClassifier",
    "TextSource",
    "TfidfTeacher",
    "load_exportable",
    "read_checkpoint",
]
