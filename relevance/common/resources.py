"""Files the package ships besides code: the Feast feature definitions, the KServe kustomize manifests, and the
Kubeflow TrainJob template with its CRD schema.

In a wheel they are package data (relevance/feature_repo, relevance/kserve, relevance/trainer); in a source
checkout (an editable install) they are the design card's top-level folders feature_repo/, infra/kserve/ and
infra/trainer/. Either way the CLI finds them without depending on the working directory.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # relevance/ (this file is relevance/common/resources.py)
# name → (where a wheel puts it, where a checkout has it)
_LOCATIONS = {
    "feature_repo": (_PACKAGE / "feature_repo", _PACKAGE.parent / "feature_repo"),
    "kserve": (_PACKAGE / "kserve", _PACKAGE.parent / "infra" / "kserve"),
    "trainer": (_PACKAGE / "trainer", _PACKAGE.parent / "infra" / "trainer"),
}


def packaged(name: str) -> Path:
    """The directory of shipped files ``name`` ("feature_repo", "kserve" or "trainer")."""
    if name not in _LOCATIONS:
        raise ValueError(f"unknown packaged resource {name!r}; expected one of {sorted(_LOCATIONS)}")
    for candidate in _LOCATIONS[name]:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the {name} files are missing from this installation (looked in "
                            f"{', '.join(str(c) for c in _LOCATIONS[name])}); reinstall the package")
