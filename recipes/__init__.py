"""YAML recipes and the ``python -m recipes`` command line."""

import os
import sys
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent
# The shipped YAML recipes: `--config news16.yaml` (a bare name) resolves here.
CONFIGS_DIR = RECIPES_DIR / "configs"

# tqdm bars (tokenizing, teacher logits) redrawn into a log file would add ten updates a second: there, one every
# 30 s. tqdm reads TQDM_* defaults when it is imported, so this runs before anything imports it.
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_MININTERVAL", "30")
