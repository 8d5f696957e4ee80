"""Ensembles of saved models as one labeller: p ∝ Π_i p_i^{w_i}, a weighted product of the members' grade
distributions (a log-linear pool), the weights fitted on the valid split by negative log-likelihood.

Distilling from teachers of different architectures passes on more than any one of them (Hofstätter et al., 2020,
"Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation"). Here the members are a
cross-encoder and the GBDT on the student's features (what each sees differs: token interactions against
embeddings and lexical statistics), or several cross-encoders from different seeds. Free non-negative weights
also absorb calibration: they need not sum to one.

Saved layout: manifest.json (kind "ensemble", member paths relative to the ensemble's folder, weights).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relevance.common.files import MANIFEST, atomic_write_json, read_manifest
from relevance.models.saved import SavedModel, version_of

_FLOOR = 1e-7


def combine(member_probs: list[np.ndarray], weights: list[float] | np.ndarray) -> np.ndarray:
    """softmax(Σ w_i log p_i) row by row."""
    if len(member_probs) != len(weights) or not member_probs:
        raise ValueError(f"ensemble: expected one weight per member, got {len(weights)} for {len(member_probs)}")
    shapes = {p.shape for p in member_probs}
    if len(shapes) != 1:
        raise ValueError(f"ensemble: members disagree on the shape of their predictions: {sorted(shapes)}")
    logits = sum(w * np.log(np.clip(np.asarray(p, dtype=np.float64), _FLOOR, 1.0))
                 for w, p in zip(weights, member_probs))
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_weights(member_probs: list[np.ndarray], grades: np.ndarray) -> list[float]:
    """Non-negative weights minimising the NLL of ``grades`` under :func:`combine` (L-BFGS-B from equal weights)."""
    from scipy.optimize import minimize

    grades = np.asarray(grades, dtype=np.int64)
    logs = np.stack([np.log(np.clip(np.asarray(p, dtype=np.float64), _FLOOR, 1.0)) for p in member_probs])
    onehot = np.eye(logs.shape[2])[grades]

    def nll(weights: np.ndarray):
        logits = np.tensordot(weights, logs, axes=1)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(np.clip(probs[np.arange(len(grades)), grades], 1e-12, 1)))
        grad = np.einsum("mnk,nk->m", logs, probs - onehot) / len(grades)
        return loss, grad

    start = np.full(len(member_probs), 1.0 / len(member_probs))
    result = minimize(nll, start, jac=True, method="L-BFGS-B", bounds=[(0.0, 10.0)] * len(member_probs))
    return [float(w) for w in result.x]


@dataclass
class Ensemble(SavedModel):
    """A saved-model kind (relevance.models.saved) made of a manifest alone: its members are referenced, not
    copied, and pinned by version; its own version hashes the members' versions and the weights."""

    kind = "ensemble"
    manifest: dict
    member_dirs: list[Path]

    @property
    def weights(self) -> list[float]:
        return [float(w) for w in self.manifest["weights"]]

    def combine(self, member_probs: list[np.ndarray]) -> np.ndarray:
        return combine(member_probs, self.weights)

    @classmethod
    def create(cls, directory: str | Path, member_dirs: list[str | Path], weights: list[float],
               fitted_on: dict | None = None) -> "Ensemble":
        """Write an ensemble's manifest (its members are referenced, not copied)."""
        members = [read_manifest(path) for path in member_dirs]
        grades = {m["num_grades"] for m in members}
        if len(grades) != 1:
            raise ValueError(f"ensemble: members predict different numbers of grades {sorted(grades)}")
        dataset = next((m["dataset"] for m in members if m.get("dataset")), None)
        manifest = {"kind": "ensemble", "num_grades": grades.pop(), "dataset": dataset,
                    "members": _relative(member_dirs, directory), "member_versions": [version_of(m) for m in members],
                    "member_kinds": [m["kind"] for m in members], "weights": [float(w) for w in weights],
                    "combine": "log-linear", "fitted_on": fitted_on or {}}
        ensemble = cls(manifest, [Path(path) for path in member_dirs])
        ensemble.save(directory)
        return ensemble

    def content_digest(self, files: list[Path]) -> str:
        return hashlib.sha256(json.dumps([self.manifest["member_versions"], self.manifest["weights"]]).encode()
                              ).hexdigest()

    def save(self, directory: str | Path) -> Path:
        """Only the manifest, rewritten in place (atomically): the folder holds nothing else. Member paths are
        recorded relative to ``directory``."""
        self.manifest["members"] = _relative(self.member_dirs, directory)
        self.stamp_version([])
        atomic_write_json(Path(directory) / MANIFEST, self.manifest)
        return Path(directory)

    @classmethod
    def from_files(cls, directory: Path, manifest: dict) -> "Ensemble":
        members = [(directory / relative).resolve() for relative in manifest["members"]]
        for path, version in zip(members, manifest["member_versions"]):
            have = version_of(read_manifest(path))
            if have != version:
                raise ValueError(f"{directory}: member {path} is now {have or 'unversioned'}, the ensemble was "
                                 f"fitted on {version}; refit the ensemble")
        return cls(manifest, members)


def _relative(member_dirs: list[str | Path], directory: str | Path) -> list[str]:
    return [os.path.relpath(Path(path).resolve(), Path(directory).resolve()) for path in member_dirs]
