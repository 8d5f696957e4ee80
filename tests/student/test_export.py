"""ONNX export: dynamic batch and parity with torch for the student MLP and the query encoder."""

import numpy as np
import pytest
import torch

from relevance.common.onnx_session import onnx_session
from relevance.config import StudentConfig
from relevance.student.export import (
    ExportParityError,
    check_parity,
    export_query_encoder,
    export_student,
    quantize_int8,
)
from relevance.student.model import Student, StudentMLP


@pytest.fixture()
def student_dir(tmp_path):
    config = StudentConfig(hidden=[16, 8])
    model = StudentMLP(12, 5, config.hidden, 0.0)
    model.feature_mean.copy_(torch.linspace(-1, 1, 12))
    model.feature_std.copy_(torch.linspace(0.5, 2, 12))
    return Student(model.eval(), {"kind": "student", "num_grades": 5, "num_features": 12,
                                  "config": config.model_dump()}).save(tmp_path / "student")


def test_student_export_matches_torch_at_any_batch_size(student_dir, tmp_path):
    result = export_student(student_dir, tmp_path / "student.onnx")
    assert result.max_abs_diff < 1e-5 and result.inputs == ["features"] and result.outputs == ["probs"]
    session = onnx_session(result.path)
    student = Student.load(student_dir)
    for rows in (1, 7, 300):
        features = np.random.default_rng(rows).normal(size=(rows, 12)).astype(np.float32)
        probs = session.run(None, {"features": features})[0]
        np.testing.assert_allclose(probs, student.predict_proba(features), atol=1e-5)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_query_encoder_export_matches_the_bi_encoder(tiny_bert, tmp_path):
    from relevance.student.encoder import BiEncoder
    result = export_query_encoder(str(tiny_bert), 16, tmp_path / "encoder.onnx")
    assert result.max_abs_diff < 1e-4
    encoder = BiEncoder(str(tiny_bert), 16, precision="fp32")
    queries = ["a much longer drill query than the others", "rug"]
    batch = encoder.tokenizer(queries, padding=True, truncation=True, max_length=16, return_tensors="np",
                              return_token_type_ids=True)
    got = onnx_session(result.path).run(None, {k: batch[k] for k in result.inputs})[0]
    np.testing.assert_allclose(got, encoder.encode(queries), atol=1e-4)
    quantized = quantize_int8(result.path, tmp_path / "encoder-int8.onnx")
    int8 = onnx_session(quantized).run(None, {k: batch[k] for k in result.inputs})[0]
    assert int8.shape == got.shape and np.all(np.isfinite(int8))


def test_parity_failures_raise(tmp_path, student_dir):
    result = export_student(student_dir, tmp_path / "s.onnx")
    features = np.zeros((2, 12), dtype=np.float32)
    with pytest.raises(ExportParityError, match="differs from torch"):
        check_parity(result.path, {"features": features}, np.full((2, 5), 0.9, dtype=np.float32), 1e-4)
