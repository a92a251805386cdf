"""YAML recipes and the ``python -m recipes`` command line."""

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent
