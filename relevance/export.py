"""ONNX export of what serves online: the student MLP and the query encoder, each with a parity check.

- Student: input ``features`` [batch, F] (raw featurizer output; the standardisation is inside the graph),
  output ``probs`` [batch, K]. Exported with the torch.export-based exporter.
- Query encoder: inputs ``input_ids`` / ``attention_mask`` (+ ``token_type_ids`` for BERT) [batch, seq], output
  ``embedding`` [batch, d], mean-pooled and L2-normalised exactly as :class:`relevance.encoder.BiEncoder`.
  Exported with the TorchScript exporter from an eager-attention model: that is the graph onnxruntime's
  transformer optimiser fuses (attention, layer norm, GELU); the torch.export graph is not fused by it.

Every export is checked against torch on sample inputs before it is returned; the maximum absolute difference is
part of the result, and an export beyond ``tolerance`` raises instead of leaving a wrong model behind.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from relevance.encoder import BiEncoder
from relevance.student import Student
from relevance.teacher import pool


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    inputs: list[str]
    outputs: list[str]


class ExportParityError(RuntimeError):
    pass


class _StudentProbabilities(nn.Module):
    def __init__(self, student: Student):
        super().__init__()
        self.mlp = student.model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.mlp(features), dim=-1)


class _QueryEncoder(nn.Module):
    """Mean pooling + L2 normalisation around the backbone, with explicit arguments (exporters want them)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
        return nn.functional.normalize(pool(hidden, attention_mask, "mean"), dim=-1)


def _session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check(path: Path, feeds: dict[str, np.ndarray], expected: np.ndarray, tolerance: float) -> float:
    got = _session(path).run(None, feeds)[0]
    if got.shape != expected.shape:
        raise ExportParityError(f"{path}: ONNX output shape {got.shape} differs from torch {expected.shape}")
    diff = float(np.max(np.abs(got - expected)))
    if diff > tolerance:
        raise ExportParityError(f"{path}: ONNX differs from torch by {diff:.2e} (> tolerance {tolerance:.0e})")
    return diff


def export_student(student_dir: str | Path, out_path: str | Path, tolerance: float = 1e-4,
                   sample_rows: int = 64) -> ExportResult:
    student = Student.load(student_dir)
    module = _StudentProbabilities(student).eval()
    num_features = student.model.feature_mean.shape[0]
    # Sample inputs spread like real features (the model standardises them): mean ± 3 std.
    rng = np.random.default_rng(0)
    mean, std = student.model.feature_mean.numpy(), student.model.feature_std.numpy()
    sample = (mean + std * rng.normal(0, 1.5, size=(sample_rows, num_features))).astype(np.float32)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(sample[:2]),), str(out_path), dynamo=True,
                          input_names=["features"], output_names=["probs"],
                          dynamic_shapes={"features": {0: batch}}, verbose=False)
    with torch.no_grad():
        expected = module(torch.from_numpy(sample)).numpy()
    diff = _check(out_path, {"features": sample}, expected, tolerance)
    return ExportResult(out_path, diff, ["features"], ["probs"])


def export_query_encoder(encoder_name: str, max_length: int, out_path: str | Path, tolerance: float = 1e-4,
                         sample_queries: list[str] | None = None) -> ExportResult:
    from transformers import AutoModel

    reference = BiEncoder(encoder_name, max_length, precision="fp32")
    backbone = AutoModel.from_pretrained(reference.path, attn_implementation="eager").eval()
    module = _QueryEncoder(backbone).eval()
    queries = sample_queries or ["cordless drill", "red leather sofa for the living room", "2x4 lumber 8 ft",
                                 "lampe de sol", "angle bracket"]
    batch = reference.tokenizer(queries, padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt", return_token_type_ids=True)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    args = tuple(batch[name] for name in names)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; see the module docstring
        torch.onnx.export(module, args, str(out_path), dynamo=False, input_names=names,
                          output_names=["embedding"], opset_version=17,
                          dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                                        "embedding": {0: "batch"}})
    expected = reference.encode(queries)
    diff = _check(out_path, {n: batch[n].numpy() for n in names}, expected, tolerance)
    return ExportResult(out_path, diff, names, ["embedding"])


def quantize_int8(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Dynamic int8 quantization, per channel (per-tensor loses too much on MiniLM: DESIGN.md measured top-10
    overlap 0.74 vs 0.87). Check its quality on relevance data before serving it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx_path), str(out_path), per_channel=True, weight_type=QuantType.QInt8)
    return Path(out_path)


def export_bundle(student_dir: str | Path, out_dir: str | Path, int8: bool = False) -> list[ExportResult]:
    """Everything online scoring needs from a student: student.onnx and query_encoder.onnx (plus int8 copies)."""
    from relevance.teacher import read_manifest

    manifest = read_manifest(student_dir, expected_kind="student")
    out_dir = Path(out_dir)
    results = [export_student(student_dir, out_dir / "student.onnx"),
               export_query_encoder(manifest["encoder"], manifest["encoder_max_length"],
                                    out_dir / "query_encoder.onnx")]
    if int8:
        for result in list(results):
            quantize_int8(result.path, result.path.with_name(result.path.stem + "-int8.onnx"))
    return results
