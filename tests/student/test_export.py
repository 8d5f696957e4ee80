"""ONNX export: the student's serving graph (interactions in the graph, one query row or one per candidate) and the
query encoder, each in parity with torch."""

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


D = 4  # embedding dimension: the student reads 4·D + the cosine + the lexical features
FEATURES = 4 * D + 1 + 11


@pytest.fixture()
def student_dir(tmp_path):
    config = StudentConfig(hidden=[16, 8])
    model = StudentMLP(FEATURES, 5, config.hidden, 0.0)
    model.feature_mean.copy_(torch.linspace(-1, 1, FEATURES))
    model.feature_std.copy_(torch.linspace(0.5, 2, FEATURES))
    model.calibration_scale.copy_(torch.tensor([1.2, 0.9, 1.0, 1.1, 0.8]))
    return Student(model.eval(), {"kind": "student", "num_grades": 5, "num_features": FEATURES, "embedding_dim": D,
                                  "config": config.model_dump()}).save(tmp_path / "student")


def _inputs(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    unit = lambda v: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(rng.normal(size=(1, D))), unit(rng.normal(size=(rows, D))), rng.normal(size=(rows, 11)).astype(np.float32)


def test_the_serving_graph_is_the_trained_student_on_its_training_vector(student_dir, tmp_path):
    from relevance.student.featurizer import assemble

    result = export_student(student_dir, tmp_path / "student.onnx")
    assert result.max_abs_diff < 1e-5 and result.inputs == ["query", "item", "lexical"] and result.outputs == ["probs"]
    session = onnx_session(result.path)
    student = Student.load(student_dir)
    for rows in (1, 7, 300):
        query, items, lexical = _inputs(rows, rows)
        expected = student.predict_proba(assemble(np.repeat(query, rows, 0), items, lexical))
        for query_rows in (query, np.repeat(query, rows, 0)):  # in process: one row; Triton: one per candidate
            probs = session.run(None, {"query": query_rows, "item": items, "lexical": lexical})[0]
            np.testing.assert_allclose(probs, expected, atol=1e-5)
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
    query, items, lexical = _inputs(2, 0)
    with pytest.raises(ExportParityError, match="differs from torch"):
        check_parity(result.path, {"query": query, "item": items, "lexical": lexical},
                     np.full((2, 5), 0.9, dtype=np.float32), 1e-4)


def test_int8_serving_graph_agrees_with_fp32_on_inputs_of_real_ranges(tmp_path):
    """Embedding interactions are ~100× smaller than lexical features; dynamic int8 quantises a MatMul's input with
    one scale, so the graph must standardise before its first MatMul or those features round to zero."""
    torch.manual_seed(0)
    model = StudentMLP(FEATURES, 5, [32], 0.0)
    std = torch.cat([torch.full((4 * D + 1,), 0.02), torch.full((11,), 5.0)])
    model.feature_mean.copy_(torch.cat([torch.zeros(4 * D + 1), torch.full((11,), 3.0)]))
    model.feature_std.copy_(std)
    directory = Student(model.eval(), {"kind": "student", "num_grades": 5, "num_features": FEATURES, "embedding_dim": D,
                                       "config": StudentConfig(hidden=[32]).model_dump()}).save(tmp_path / "student")
    result = export_student(directory, tmp_path / "student.onnx")
    int8 = quantize_int8(result.path, tmp_path / "student-int8.onnx")
    rng = np.random.default_rng(0)
    query = rng.normal(size=(1, D)).astype(np.float32)
    items = (query + rng.normal(0, 0.05, size=(500, D))).astype(np.float32)
    lexical = (3.0 + 5.0 * rng.normal(size=(500, 11))).astype(np.float32)
    feeds = {"query": query, "item": items, "lexical": lexical}
    fp32 = onnx_session(result.path).run(None, feeds)[0]
    quantized = onnx_session(int8).run(None, feeds)[0]
    assert (fp32.argmax(1) == quantized.argmax(1)).mean() >= 0.95
    assert np.abs(fp32 - quantized).mean() < 0.02


def test_query_encoder_export_fuses_a_bert_encoder(tiny_bert, tmp_path):
    import onnx

    result = export_query_encoder(str(tiny_bert), 16, tmp_path / "encoder.onnx")
    ops = {node.op_type for node in onnx.load(str(result.path)).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops, ops  # fused, and still within the parity tolerance
    assert result.fused and result.max_abs_diff < 1e-4


def test_the_one_query_graph_is_the_serving_graph_for_one_query_row(student_dir, tmp_path):
    # The in-process graph factors the item-side blocks through the query (relevance.student.export
    # ._ServingStudent, one_query): the trained student on its training vector, to rounding.
    from relevance.student.featurizer import assemble

    result = export_student(student_dir, tmp_path / "one.onnx", one_query=True)
    assert result.max_abs_diff < 1e-5
    session, student = onnx_session(result.path), Student.load(student_dir)
    for rows in (1, 7, 300):
        query, items, lexical = _inputs(rows, 100 + rows)
        expected = student.predict_proba(assemble(np.repeat(query, rows, 0), items, lexical))
        np.testing.assert_allclose(session.run(None, {"query": query, "item": items, "lexical": lexical})[0], expected,
                                   atol=1e-5)
    with pytest.raises(Exception):  # one query row only: a row per candidate is Triton's graph
        query, items, lexical = _inputs(7, 1)
        session.run(None, {"query": np.repeat(query, 7, 0), "item": items, "lexical": lexical})


def test_in_process_scorers_run_the_one_query_graph_in_fp32_only(tmp_path):
    from relevance.student.scoring import ONE_QUERY_GRAPH, STUDENT_INPUTS, ServingBundle

    (tmp_path / "bundle.json").write_text('{"student_inputs": ' + str(list(STUDENT_INPUTS)).replace("'", '"') + "}")
    for name in ("student.onnx", "student-int8.onnx"):
        (tmp_path / name).write_bytes(b"")
    bundle = ServingBundle(tmp_path)
    assert bundle.in_process_graph(False).name == "student.onnx"  # exported before the one-query graph
    (tmp_path / f"{ONE_QUERY_GRAPH}.onnx").write_bytes(b"")
    assert bundle.in_process_graph(False).name == f"{ONE_QUERY_GRAPH}.onnx"
    assert bundle.in_process_graph(True).name == "student-int8.onnx"
