"""The student on Triton's Python backend: ``model.py`` of the loopback model repository
(relevance.serving.model_repository, backend "python").

The nvidia-pytriton wheel's ``tritonserver`` has no ONNX Runtime backend, so this runs the bundle's model.onnx on
ONNX Runtime inside Triton's Python-backend stub: Triton's HTTP and gRPC front ends, request validation against
config.pbtxt, the dynamic batcher and the metrics are Triton's own; only the model call is ours. In a cluster the
same folder is served with ``platform: "onnxruntime_onnx"`` instead.

This file is copied into the model repository and imported by Triton's stub, not by the package: it imports
nothing of ``relevance`` and imports Triton's ``triton_python_backend_utils`` only when Triton calls it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class TritonPythonModel:
    """Triton's Python-backend contract: initialize(args), execute(requests) → responses, finalize()."""

    def initialize(self, args: dict) -> None:
        import onnxruntime

        config = json.loads(args["model_config"])
        threads = int(config.get("parameters", {}).get("intra_op_threads", {}).get("string_value", "1"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.output = self.session.get_outputs()[0].name

    def execute(self, requests: list) -> list:
        """The dynamic batcher's requests in one ONNX Runtime run (their rows concatenated), split back per
        request. Triton has checked names, datatypes, shapes and that the inputs agree on their rows against
        config.pbtxt (a 400 before the model is reached); a request that still disagrees gets its own 400 here,
        and the others are answered."""
        import triton_python_backend_utils as pb_utils

        responses: list = [None] * len(requests)
        feeds: dict[str, list[np.ndarray]] = {name: [] for name in self.inputs}
        rows: list[tuple[int, int]] = []
        for position, request in enumerate(requests):
            arrays = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            counts = {name: len(array) for name, array in arrays.items()}
            if len(set(counts.values())) != 1:
                responses[position] = pb_utils.InferenceResponse(error=pb_utils.TritonError(  # 400, not 500
                    f"inputs must have one row per candidate each, got rows {counts}", pb_utils.TritonError.INVALID_ARG))
                continue
            for name, array in arrays.items():
                feeds[name].append(array)
            rows.append((position, len(arrays[self.inputs[0]])))
        if rows:
            probs = self.session.run([self.output], {name: np.concatenate(parts) for name, parts in feeds.items()})[0]
            start = 0
            for position, count in rows:
                output = pb_utils.Tensor(self.output, probs[start:start + count])
                responses[position] = pb_utils.InferenceResponse(output_tensors=[output])
                start += count
        return responses

    def finalize(self) -> None:
        self.session = None
