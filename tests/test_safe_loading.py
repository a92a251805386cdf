"""Checkpoints and caches load as data (weights_only=True), never as code; remote code stays off by default."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from lightning_modules import TextClassifier
from lightning_modules.checkpoints import read_checkpoint
from lightning_modules.errors import PocketbertError
from recipes.__main__ import main
from tests.conftest import REPO

PACKAGES = ["recipes", "lightning_modules", "callbacks", "export"]


class _Payload:
    """Unpickling this runs code: it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


def test_malicious_checkpoint_is_refused_without_running_its_code(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, evil)
    with pytest.raises(PocketbertError, match="cannot read checkpoint"):
        read_checkpoint(evil)
    assert main(["test", "--config", "news16_cpu.yaml", "--ckpt_path", str(evil)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_every_torch_load_in_the_packages_is_weights_only() -> None:
    offenders = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text("utf-8")
            for match in re.finditer(r"torch\.load\(", text):
                call = text[match.start(): text.find(")", match.start()) + 1]
                if "weights_only=True" not in call:
                    offenders.append(f"{path.relative_to(REPO)}: {call}")
            if re.search(r"^\s*(import pickle|from pickle import|import dill)", text, re.M):
                offenders.append(f"{path.relative_to(REPO)} imports a pickler")
    assert not offenders, offenders


def test_remote_code_is_off_unless_a_recipe_turns_it_on() -> None:
    assert inspect.signature(TextClassifier).parameters["trust_remote_code"].default is False
    for recipe in (REPO / "recipes" / "configs").glob("*.yaml"):
        assert "trust_remote_code: true" not in recipe.read_text("utf-8").lower(), recipe.name
