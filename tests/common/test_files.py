"""relevance.common.files: a killed writer leaves the old output or the new one, never half of one."""

from __future__ import annotations

import pandas as pd
import pytest

from relevance.common.files import (
    atomic_directory,
    atomic_write_json,
    read_manifest,
    sha256_of_files,
    sha256_of_frame,
)


def test_atomic_directory_keeps_the_old_output_when_the_writer_fails(tmp_path):
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError, match="killed"), atomic_directory(out) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed")
    assert (out / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary sibling left behind


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_hashes_depend_on_content_not_order(tmp_path):
    a = pd.DataFrame({"q": ["1", "2"], "i": ["x", "y"]})
    assert sha256_of_frame(a, ["q", "i"]) == sha256_of_frame(a.iloc[::-1], ["q", "i"])
    assert sha256_of_frame(a, ["q", "i"]) != sha256_of_frame(a.assign(i=["x", "z"]), ["q", "i"])
    (tmp_path / "f").write_text("one")
    before = sha256_of_files([tmp_path / "f"])
    (tmp_path / "f").write_text("two")
    assert sha256_of_files([tmp_path / "f"]) != before


def test_read_manifest_refuses_a_missing_manifest_and_another_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        read_manifest(tmp_path)
    atomic_write_json(tmp_path / "manifest.json", {"kind": "student"})
    assert read_manifest(tmp_path, "student")["kind"] == "student"
    with pytest.raises(ValueError, match="expected a teacher model, got kind='student'"):
        read_manifest(tmp_path, "teacher")
