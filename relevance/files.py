"""File helpers: atomic directory writes and content hashes (lineage). No heavy imports: data code uses them."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from pathlib import Path


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
