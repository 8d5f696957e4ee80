"""The saved-model contract (relevance.models.saved) as each kind implements it: teacher, student, GBDT and ensemble
round-trip through save and load, their versions hash their content (and nothing else), and loading by kind
refuses a directory of another kind."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from relevance.common.files import sha256_of_files
from relevance.config import GBDTConfig
from relevance.models.saved import SavedModel, load_saved, saved_kind, version_of
from relevance.student.gbdt import GBDT, train_gbdt
from relevance.student.model import Student, StudentMLP
from relevance.teacher.ensemble import Ensemble
from relevance.teacher.model import Teacher


def _student() -> Student:
    """A student with fixed weights (no random draw), calibrated in its manifest's metrics."""
    model = StudentMLP(4, 3, [5], 0.0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.linspace(-1, 1, parameter.numel()).reshape(parameter.shape))
    return Student(model, {"kind": "student", "num_grades": 3, "num_features": 4, "config": {"hidden": [5]}})


def _gbdt() -> GBDT:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    grades = np.digitize(x[:, 0], [-0.5, 0.5])
    config = GBDTConfig(learning_rate=0.2, num_leaves=4, min_child_samples=5, max_rounds=20, early_stopping_rounds=5)
    return train_gbdt("multiclass", x[:200], grades[:200], x[200:], grades[200:], 3, config, {"note": "test"},
                      log=lambda _: None)


def test_every_kind_implements_the_contract():
    for kind in (Teacher, Student, GBDT, Ensemble):
        assert issubclass(kind, SavedModel)
    assert [k.kind for k in (Teacher, Student, GBDT, Ensemble)] == ["teacher", "student", "gbdt", "ensemble"]


def test_student_round_trips_under_a_version_of_its_weights_alone(tmp_path):
    student = _student()
    saved = student.save(tmp_path / "student")
    # The same string as before the contract existed, for the same weights (pinned: versions are lineage).
    assert student.version == "student-898ab14eca8b"
    assert student.version == "student-" + sha256_of_files([saved / "model.safetensors"])[:12]
    loaded = Student.load(saved)
    assert loaded.version == student.version and loaded.num_grades == 3 and loaded.manifest == student.manifest
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(x), student.predict_proba(x))
    # Metadata is not content: the same weights with another note are the same version.
    again = Student(loaded.model, {**loaded.manifest, "note": "another"})
    again.save(tmp_path / "again")
    assert again.version == student.version
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (saved / "model.safetensors").read_bytes()
    assert loaded.calibrator.method == "none"  # nothing fitted: the identity


def test_gbdt_round_trips_and_its_version_is_the_trees(tmp_path):
    model = _gbdt()
    saved = model.save(tmp_path / "gbdt")
    assert model.version == "gbdt-" + sha256_of_files([saved / "model.txt"])[:12]
    loaded = GBDT.load(saved)
    assert loaded.version == model.version and loaded.num_grades == 3
    assert loaded.calibrator.to_dict() == model.calibrator.to_dict() and loaded.calibrator.method == "temperature"
    x = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_proba(x), model.predict_proba(x), rtol=1e-6)
    assert GBDT.load(loaded.save(tmp_path / "again")).version == model.version
    # The manifest is written as it always was: indented, no final newline.
    assert (saved / "manifest.json").read_text() == json.dumps(loaded.manifest, indent=2)


def test_teacher_round_trips_and_a_calibration_is_part_of_its_version(tmp_path, tiny_teacher):
    directory, items, queries, judgments = tiny_teacher
    teacher = Teacher.load(directory)
    resaved = teacher.save(tmp_path / "teacher")
    assert teacher.version == json.loads((directory / "manifest.json").read_text())["teacher_version"]
    weights = sorted((resaved / "backbone").glob("*.safetensors")) + [resaved / "head.safetensors"]
    assert teacher.version == "teacher-" + sha256_of_files(weights)[:12]
    teacher.calibrate(judgments, queries.set_index("query_id")["query"], items, "temperature", precision="fp32")
    teacher.save(tmp_path / "calibrated")
    calibration = json.dumps({k: teacher.calibrator.to_dict()[k] for k in ("method", "scale", "bias")},
                             sort_keys=True)
    expected = hashlib.sha256(f"{sha256_of_files(weights)}:{calibration}".encode()).hexdigest()[:12]
    assert teacher.version == f"teacher-{expected}"
    loaded = Teacher.load(tmp_path / "calibrated")
    assert loaded.version == teacher.version and loaded.num_grades == 3
    assert loaded.calibrator.to_dict() == teacher.calibrator.to_dict()


def test_ensemble_is_pinned_to_its_members_and_versioned_by_them(tmp_path):
    student = _student()
    student.save(tmp_path / "student")
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "manifest.json").write_text(json.dumps({"kind": "teacher", "num_grades": 3,
                                                                    "teacher_version": "teacher-aaa"}))
    ensemble = Ensemble.create(tmp_path / "labeller", [tmp_path / "teacher", tmp_path / "student"], [0.7, 0.4])
    expected = hashlib.sha256(json.dumps([["teacher-aaa", student.version], [0.7, 0.4]]).encode()).hexdigest()
    assert ensemble.version == f"ensemble-{expected[:12]}"
    text = (tmp_path / "labeller" / "manifest.json").read_text()
    assert text == json.dumps(ensemble.manifest, indent=2) + "\n"  # written as it always was
    assert list(json.loads(text)) == ["kind", "num_grades", "dataset", "members", "member_versions",
                                      "member_kinds", "weights", "combine", "fitted_on", "ensemble_version"]
    loaded = Ensemble.load(tmp_path / "labeller")
    assert loaded.version == ensemble.version and loaded.num_grades == 3 and loaded.calibrator.method == "none"
    assert loaded.manifest["members"] == ["../teacher", "../student"]
    assert loaded.member_dirs == [(tmp_path / "teacher").resolve(), (tmp_path / "student").resolve()]
    # Pinned: the same members and weights give the same version as before the contract existed.
    for name, version in (("teacher", "teacher-aaa"), ("gbdt", "gbdt-bbb")):
        (tmp_path / "pinned" / name).mkdir(parents=True)
        (tmp_path / "pinned" / name / "manifest.json").write_text(json.dumps({"kind": name, "num_grades": 3,
                                                                              f"{name}_version": version}))
    pinned = Ensemble.create(tmp_path / "pinned" / "e", [tmp_path / "pinned" / "teacher",
                                                         tmp_path / "pinned" / "gbdt"], [0.7, 0.4])
    assert pinned.version == "ensemble-b561545d7b5b"


def test_version_of_reads_a_manifest_in_the_order_ensembles_pin_members():
    assert version_of({"kind": "gbdt", "gbdt_version": "gbdt-1"}) == "gbdt-1"
    assert version_of({"kind": "student", "teacher_version": None, "student_version": "student-2"}) == "student-2"
    # A distilled student records its teacher first (kept as it was: ensembles saved before pin it so).
    assert version_of({"kind": "student", "teacher_version": "teacher-3", "student_version": "student-2"}) == \
        "teacher-3"
    assert version_of({"kind": "teacher"}) == ""


def test_loading_by_kind_refuses_another_kind_with_a_clear_error(tmp_path):
    _student().save(tmp_path / "student")
    _gbdt().save(tmp_path / "gbdt")
    with pytest.raises(ValueError, match=r"expected a gbdt model, got kind='student'"):
        GBDT.load(tmp_path / "student")
    with pytest.raises(ValueError, match=r"expected a teacher model, got kind='gbdt'"):
        Teacher.load(tmp_path / "gbdt")
    with pytest.raises(ValueError, match=r"expected a ensemble model, got kind='student'"):
        Ensemble.load(tmp_path / "student")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        Student.load(tmp_path)
    assert saved_kind(tmp_path / "gbdt") == "gbdt"
    assert isinstance(load_saved(tmp_path / "student"), Student)
    assert isinstance(load_saved(tmp_path / "gbdt", expected_kind="gbdt"), GBDT)
    with pytest.raises(ValueError, match="expected a student model, got kind='gbdt'"):
        load_saved(tmp_path / "gbdt", expected_kind="student")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "manifest.json").write_text(json.dumps({"kind": "serving-bundle", "num_grades": 3}))
    with pytest.raises(ValueError, match="'serving-bundle' is not one of the loaded kinds"):
        load_saved(tmp_path / "odd")


def test_a_failed_save_leaves_the_previous_model(tmp_path):
    student = _student()
    student.save(tmp_path / "student")
    before = (tmp_path / "student" / "model.safetensors").read_bytes()

    class Broken(Student):
        def write_files(self, directory):
            super().write_files(directory)
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        Broken(student.model, dict(student.manifest)).save(tmp_path / "student")
    assert (tmp_path / "student" / "model.safetensors").read_bytes() == before
    assert Student.load(tmp_path / "student").version == student.version
    assert not (tmp_path / "student.tmp").exists()
