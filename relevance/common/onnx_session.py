"""ONNX Runtime sessions, set up one way for export checks, labelling, evaluation and serving."""

from __future__ import annotations

from pathlib import Path


def onnx_session(path: str | Path, threads: int | None = None):
    """A CPU session for ``path``. ``threads``: intra-op threads (serving pins one core per process); None lets
    ONNX Runtime use every core, which is what batch work (labelling, parity checks) wants."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers etc. are noise to a user
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
