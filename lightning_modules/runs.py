"""``tb_logs/<name>/latest``: a one-line file naming the newest run folder of a recipe, and paths read through it.

A symlink to the run folder would be a second copy of the run for TensorBoard, which follows links while it scans
``--logdir`` (every curve drawn twice, the HParams table doubled). A file is no run: TensorBoard skips it, and the
paths that recipes, docs and users type (``tb_logs/news16_cpu/latest/best.ckpt``) are read through it by
:func:`resolve_run_path`, which every pocketbert command and path-taking argument calls. From a shell:
``cat tb_logs/news16_cpu/latest`` prints the run folder's name.
"""

from __future__ import annotations

import os
from pathlib import Path

from export.files import write_text
from lightning_modules.errors import PocketbertError

LATEST = "latest"


def point_latest(run_dir: Path) -> None:
    """Make ``<run_dir>/../latest`` name ``run_dir`` (atomically: readers see the old run or the new one)."""
    pointer = run_dir.parent / LATEST
    if pointer.is_dir() and not pointer.is_symlink():
        raise PocketbertError(f"{pointer} is a folder; move it away so it can name the newest run")
    write_text(pointer, f"{run_dir.name}\n")  # os.replace: also replaces a `latest` symlink left by older versions


def read_pointer(pointer: Path) -> str:
    """The run folder name written in ``pointer``."""
    name = pointer.read_text("utf-8").strip()
    if not name or os.sep in name or name in (".", ".."):
        raise PocketbertError(f"{pointer} should hold the name of a run folder (e.g. version_3), found {name!r}; "
                              "delete it and rerun fit")
    return name


def resolve_run_path(path: str | Path) -> Path:
    """``path`` with a ``latest`` pointer file in it replaced by the run folder it names; other paths unchanged.

    ``tb_logs/news16_cpu/latest/best.ckpt`` -> ``tb_logs/news16_cpu/version_3/best.ckpt``. A ``latest`` that is a
    folder or a symlink (made by older versions) is left to the file system.
    """
    path = Path(path)
    parts = path.parts
    for i, part in enumerate(parts):
        if part != LATEST:
            continue
        pointer = Path(*parts[: i + 1])
        if pointer.is_file() and not pointer.is_symlink():
            return Path(pointer.parent, read_pointer(pointer), *parts[i + 1:])
    return path


def run_dir_of_checkpoint(checkpoint: str | Path) -> Path | None:
    """The run folder (holding ``config.yaml``) of ``<run>/best.ckpt`` or ``<run>/checkpoints/*.ckpt``, else None."""
    checkpoint = resolve_run_path(checkpoint)
    for folder in (checkpoint.parent, checkpoint.parent.parent, checkpoint.resolve().parent.parent):
        if (folder / "config.yaml").is_file():
            return folder
    return None
