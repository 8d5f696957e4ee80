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

from relevance.common.files import atomic_write_json, read_manifest

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
class Ensemble:
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
        directory = Path(directory)
        members = [read_manifest(path) for path in member_dirs]
        grades = {m["num_grades"] for m in members}
        if len(grades) != 1:
            raise ValueError(f"ensemble: members predict different numbers of grades {sorted(grades)}")
        versions = [next((m[k] for k in ("teacher_version", "student_version", "gbdt_version", "ensemble_version")
                          if m.get(k)), "") for m in members]
        relative = [os.path.relpath(Path(path).resolve(), directory.resolve()) for path in member_dirs]
        digest = hashlib.sha256(json.dumps([versions, weights]).encode()).hexdigest()[:12]
        dataset = next((m["dataset"] for m in members if m.get("dataset")), None)
        manifest = {"kind": "ensemble", "num_grades": grades.pop(), "dataset": dataset, "members": relative,
                    "member_versions": versions,
                    "member_kinds": [m["kind"] for m in members], "weights": [float(w) for w in weights],
                    "combine": "log-linear", "fitted_on": fitted_on or {}, "ensemble_version": f"ensemble-{digest}"}
        atomic_write_json(directory / "manifest.json", manifest)
        return cls(manifest, [Path(path) for path in member_dirs])

    @classmethod
    def load(cls, directory: str | Path) -> "Ensemble":
        directory = Path(directory)
        manifest = read_manifest(directory, expected_kind="ensemble")
        members = [(directory / relative).resolve() for relative in manifest["members"]]
        for path, version in zip(members, manifest["member_versions"]):
            found = read_manifest(path)
            have = next((found[k] for k in ("teacher_version", "student_version", "gbdt_version",
                                            "ensemble_version") if found.get(k)), "")
            if have != version:
                raise ValueError(f"{directory}: member {path} is now {have or 'unversioned'}, the ensemble was "
                                 f"fitted on {version}; refit the ensemble")
        return cls(manifest, members)
