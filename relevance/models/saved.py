"""The saved-model contract every kind implements once: teacher, student, GBDT and ensemble.

A saved model is a directory holding its files and ``manifest.json``. The manifest names the ``kind``, the number of
grades the model predicts (``num_grades``), the calibration fitted on valid (``calibration``, where the kind keeps
one there) and a version, ``<kind>_version`` = ``<kind>-`` + the first 12 hex digits of a hash of the model's
content: two saves of the same weights (and, for a calibrated teacher, the same calibration) get the same version,
and anything that changes what the model predicts changes it.

Saving goes through :func:`relevance.common.files.atomic_directory`: readers (and a resumed run) see the previous
complete model or the new one, never half of one. Loading refuses a directory of another kind with a clear error.

A kind subclasses :class:`SavedModel` (a dataclass with a ``manifest`` field) and provides ``kind``, the files it
writes (:meth:`SavedModel.write_files`, returning those its version hashes) and how it is rebuilt from them
(:meth:`SavedModel.from_files`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from relevance.common.files import MANIFEST, atomic_directory, read_manifest, sha256_of_files
from relevance.models.calibration import Calibrator

# Where each kind keeps its version in its manifest, in the order a manifest is searched for "its" version
# (:func:`version_of`). A distilled student's manifest also records its teacher's version, which comes first.
VERSION_KEYS = ("teacher_version", "student_version", "gbdt_version", "ensemble_version")

_KINDS: dict[str, type["SavedModel"]] = {}


def version_key(kind: str) -> str:
    return f"{kind}_version"


def version_of(manifest: dict) -> str:
    """The first version a manifest records (:data:`VERSION_KEYS` order), "" for none: how an ensemble pins its
    members."""
    return next((manifest[key] for key in VERSION_KEYS if manifest.get(key)), "")


def write_manifest(directory: Path, manifest: dict) -> Path:
    """``manifest.json`` as every model kind but the ensemble writes it (indented, no final newline)."""
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    return path


class SavedModel:
    """Save (atomic directory, hashed version, manifest), load by kind, number of grades, calibration."""

    kind: ClassVar[str]
    manifest: dict

    def __init_subclass__(cls, **options):
        super().__init_subclass__(**options)
        if "kind" in cls.__dict__:
            _KINDS[cls.kind] = cls

    # -- what every kind reads from its manifest ------------------------------------------------------------------

    @property
    def num_grades(self) -> int:
        return int(self.manifest["num_grades"])

    @property
    def version(self) -> str:
        return self.manifest[version_key(self.kind)]

    @property
    def calibrator(self) -> Calibrator:
        """The calibration fitted on valid (the identity for a model without one)."""
        return Calibrator.from_dict(self.manifest.get("calibration"), self.num_grades)

    # -- what a kind provides -------------------------------------------------------------------------------------

    def write_files(self, directory: Path) -> list[Path]:
        """Write the model's files into ``directory`` (empty); return those its version is a hash of."""
        raise NotImplementedError

    def content_digest(self, files: list[Path]) -> str:
        """The hex digest the version is cut from: the hash of the model's files."""
        return sha256_of_files(files)

    @classmethod
    def from_files(cls, directory: Path, manifest: dict, **options) -> "SavedModel":
        """The model saved in ``directory``, whose manifest (of this kind) is ``manifest``."""
        raise NotImplementedError

    # -- the contract ---------------------------------------------------------------------------------------------

    def stamp_version(self, files: list[Path]) -> str:
        """Record the version of the content in ``files`` in the manifest, and return it."""
        version = f"{self.kind}-{self.content_digest(files)[:12]}"
        self.manifest[version_key(self.kind)] = version
        return version

    def save(self, directory: str | Path) -> Path:
        """Write the model to ``directory`` (replacing what was there, in one rename) under its version."""
        with atomic_directory(directory) as tmp:
            self.stamp_version(self.write_files(tmp))
            write_manifest(tmp, self.manifest)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path, **options):
        """The model saved in ``directory``; a directory of another kind is refused (ValueError naming both)."""
        directory = Path(directory)
        return cls.from_files(directory, read_manifest(directory, expected_kind=cls.kind), **options)


def saved_kind(directory: str | Path) -> str | None:
    """The kind a saved model's manifest names."""
    return read_manifest(directory).get("kind")


def load_saved(directory: str | Path, expected_kind: str | None = None, **options) -> SavedModel:
    """The model saved in ``directory``, of whichever kind its manifest names (``expected_kind``: refuse another).
    The kind's module must have been imported (relevance.teacher.model, relevance.student.model, …): models/ does
    not import the stages above it."""
    kind = saved_kind(directory) if expected_kind is None else expected_kind
    if kind not in _KINDS:
        raise ValueError(f"{directory}: model kind {kind!r} is not one of the loaded kinds {sorted(_KINDS)}")
    return _KINDS[kind].load(directory, **options)
