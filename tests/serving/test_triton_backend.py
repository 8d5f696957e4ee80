"""The Python-backend model.py without Triton: the dynamic batcher's requests run as one ONNX Runtime call and are
split back in order; a request whose inputs disagree on their rows gets its own 400 and the others are answered.
The real tritonserver runs it in tests/serving/test_server.py."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import onnx
from onnx import TensorProto, helper


class _Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Error:
    INVALID_ARG = 3

    def __init__(self, message: str, code: int = 0):
        self.message, self.code = message, code


class _Response:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors or [], error


def _fake_pb_utils(monkeypatch):
    """Just the part of triton_python_backend_utils that model.py calls."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor, module.TritonError, module.InferenceResponse = _Tensor, _Error, _Response
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)


def _model(tmp_path):
    """probs = softmax(concat(query, item, lexical) @ W): the serving graph's contract, tiny."""
    weight = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Concat", ["query", "item", "lexical"], ["x"], axis=1),
         helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"])],
        "tiny", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", w])
                 for n, w in (("query", 2), ("item", 2), ("lexical", 1))],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.reshape(-1))])
    (tmp_path / "1").mkdir()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(tmp_path / "1/model.onnx"))
    return weight


def test_requests_batch_into_one_run_and_split_back_and_a_bad_one_fails_alone(tmp_path, monkeypatch):
    from relevance.serving.triton_backend import TritonPythonModel

    _fake_pb_utils(monkeypatch)
    weight = _model(tmp_path)
    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps({"parameters": {"intra_op_threads": {"string_value": "1"}}}),
                      "model_repository": str(tmp_path), "model_version": "1"})
    rng = np.random.default_rng(1)

    def request(rows: int, item_rows: int | None = None) -> dict:
        return {"query": _Tensor("query", rng.normal(size=(rows, 2)).astype(np.float32)),
                "item": _Tensor("item", rng.normal(size=(item_rows or rows, 2)).astype(np.float32)),
                "lexical": _Tensor("lexical", rng.normal(size=(rows, 1)).astype(np.float32))}

    requests = [request(3), request(2, item_rows=4), request(5)]
    responses = model.execute(requests)
    assert len(responses) == 3
    assert responses[1].error is not None and responses[1].error.code == _Error.INVALID_ARG
    assert "one row per candidate" in responses[1].error.message
    for position in (0, 2):
        arrays = {name: tensor.array for name, tensor in requests[position].items()}
        logits = np.concatenate([arrays["query"], arrays["item"], arrays["lexical"]], 1) @ weight
        expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        (probs,) = responses[position].output_tensors
        assert responses[position].error is None and probs.name == "probs"
        np.testing.assert_allclose(probs.array, expected, rtol=1e-5)
    assert model.execute([request(1, item_rows=2)])[0].error is not None  # nothing valid: no run at all
    model.finalize()
