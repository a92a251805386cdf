"""Atomic file writes, content hashes and the export manifest (``export/manifest.json``).

Every artifact is written under a temporary name in its final folder and renamed into place only when complete,
so a crash never leaves a half-written file that looks valid. The manifest records, per artifact, its format,
path (relative to the export folder), size, SHA-256 and any parity figures measured when it was written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to write (a file or a folder); rename it to ``final`` on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        if tmp.is_dir():
            # os.replace cannot replace a non-empty folder: move the old one aside first, then drop it.
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (an ``.mlpackage`` is a folder)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def sha256_of(path: Path) -> str:
    """SHA-256 of a file; for a folder, of every file's relative path and bytes in sorted order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_manifest(export_dir: Path) -> dict[str, Any]:
    path = export_dir / MANIFEST
    if not path.is_file():
        return {"artifacts": {}}
    manifest: dict[str, Any] = json.loads(path.read_text("utf-8"))
    manifest.setdefault("artifacts", {})
    return manifest


def record(export_dir: Path, name: str, fmt: str, path: Path, **figures: Any) -> dict[str, Any]:
    """Add or replace the manifest entry ``name`` for the artifact at ``path`` (inside ``export_dir``)."""
    entry = {"format": fmt, "path": path.relative_to(export_dir).as_posix(), "bytes": size_of(path),
             "sha256": sha256_of(path), **figures}
    manifest = read_manifest(export_dir)
    manifest["artifacts"][name] = entry
    write_json(export_dir / MANIFEST, manifest)
    return entry


def start_manifest(export_dir: Path, **info: Any) -> None:
    """A fresh manifest (no artifacts) with top-level fields shared by every artifact (source checkpoint, labels)."""
    write_json(export_dir / MANIFEST, {**info, "artifacts": {}})
