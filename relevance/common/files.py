"""File helpers: atomic writes (of a file or a directory) and content hashes (lineage). No heavy imports: data
code uses them.

Every output of the platform is written through these, so a killed process leaves either the previous complete
output or none, never half of one: that is what lets every step skip an output that exists, and resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

MANIFEST = "manifest.json"  # what every saved model directory (teacher, student) describes itself in


@contextlib.contextmanager
def atomic_write(path: str | Path):
    """Yield a temporary path next to ``path`` to write; on success it replaces ``path`` in one rename.

    The temporary name is unique per writer (two concurrent writers never share one) and starts with a dot, so
    globs for the final names (``shard-*.parquet``) never see it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, value, **dump_options) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, **dump_options) + "\n")


@contextlib.contextmanager
def atomic_directory(directory: str | Path):
    """Yield a temporary sibling of ``directory`` to fill; on success it replaces ``directory`` in one rename,
    so readers (and a resumed run) see the old output or the complete new one, never half of it."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)


def sha256_of_frame(frame, columns: list[str]) -> str:
    """A content hash of a table (order-independent), recorded in manifests as lineage."""
    ordered = frame[columns].astype(str).sort_values(columns).to_numpy()
    digest = hashlib.sha256()
    for row in ordered:
        digest.update("\x1f".join(row).encode("utf-8"))
        digest.update(b"\x1e")
    return digest.hexdigest()


def sha256_of_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | Path, expected_kind: str | None = None) -> dict:
    """A saved model's manifest.json; with ``expected_kind``, refuse a directory of another kind."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no {MANIFEST}; expected a saved teacher or student directory")
    manifest = json.loads(path.read_text())
    if expected_kind and manifest.get("kind") != expected_kind:
        raise ValueError(f"{directory}: expected a {expected_kind} model, got kind={manifest.get('kind')!r}")
    return manifest
