"""ONNX export of what serves online: the student MLP and the query encoder, each with a parity check; and of
the teacher, for labelling on ONNX Runtime (fp32 or int8).

- Student, the serving graph: inputs ``query`` [1 or batch, d], ``item`` [batch, d], ``lexical`` [batch, L]
  (relevance.student.scoring.Prepared.student_inputs), output ``probs`` [batch, K]. The interactions, the
  standardisation and the calibration are inside the graph; see :class:`_ServingStudent`.
- Query encoder: inputs ``input_ids`` / ``attention_mask`` (+ ``token_type_ids`` for BERT) [batch, seq], output
  ``embedding`` [batch, d], mean-pooled and L2-normalised exactly as :class:`relevance.student.encoder.BiEncoder`.
  Exported with the TorchScript exporter from an eager-attention model: that is the graph onnxruntime's
  transformer optimiser fuses (attention, layer norm, GELU); the torch.export graph is not fused by it.

Every export is checked against torch on sample inputs before it is returned; the maximum absolute difference is
part of the result, and an export beyond ``tolerance`` raises instead of leaving a wrong model behind.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from relevance.common.onnx_session import onnx_session
from relevance.models.pooling import pool_hidden
from relevance.student.encoder import BiEncoder
from relevance.student.model import Student
from relevance.student.scoring import ONE_QUERY_GRAPH, STUDENT_INPUTS


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    inputs: list[str]
    outputs: list[str]
    fused: bool = False  # rewritten with ONNX Runtime's transformer fusions (fuse_transformer)


class ExportParityError(RuntimeError):
    pass


class _ServingStudent(nn.Module):
    """The student as served: (query [1 or N, d], item [N, d], lexical [N, L]) → calibrated probabilities [N, K].

    The interactions are computed in the graph (relevance.student.featurizer.pair_blocks, the training
    definition), so a caller sends 2·d + L floats per candidate, not the 4·d + L + 1 of the training vector. The
    first layer's query columns are applied to the query rows alone: with one query row (the in-process server) that share of the first layer is computed once per
    request, not once per candidate; with N rows (Triton, where requests batch together) it broadcasts nothing.

    ``one_query``: the graph in-process scorers run, for exactly one query row. The first layer's item-side blocks
    are then factored through the query: (q⊙i)·W = i·(diag(q)·W) and the cosine's column likewise, so the item
    vectors meet one [d, H] weight built per request instead of the [N, 3d + 1 + L] interaction matrix (0.22 →
    0.16 ms for 100 candidates and a [64] MLP on one core). The same function to rounding, checked at export
    against the trained student on its training vector (relevance.student.featurizer.pair_blocks)."""

    def __init__(self, student: Student, dimension: int, one_query: bool = False):
        super().__init__()
        mlp = student.model
        first = mlp.layers[0]
        # (x − μ)/σ · Wᵀ + b = (x/σ) · Wᵀ + (b − W·μ/σ): the mean folds into the bias, but the scaling stays a step
        # of its own. Dynamic int8 quantises a MatMul's input with one scale per tensor, and raw inputs mix lexical
        # features (~10) with embedding interactions (~0.003), which would round to zero; divided by σ, they share
        # one range.
        inverse = 1.0 / mlp.feature_std
        self.register_buffer("query_scale", inverse[:dimension].clone())
        self.register_buffer("pair_scale", inverse[dimension:].clone())
        self.register_buffer("query_weight", first.weight[:, :dimension].T.detach().contiguous())
        self.register_buffer("pair_weight", first.weight[:, dimension:].T.detach().contiguous())
        self.register_buffer("bias", (first.bias - first.weight @ (mlp.feature_mean * inverse)).detach().clone())
        self.rest = mlp.layers[1:]
        self.register_buffer("calibration_scale", mlp.calibration_scale.clone())
        self.register_buffer("calibration_bias", mlp.calibration_bias.clone())
        self.one_query = one_query
        if one_query:  # the pair blocks' scaling folded into their rows of the weight (this graph is never int8)
            scaled = self.pair_scale[:, None] * self.pair_weight
            self.register_buffer("item_weight", scaled[:dimension].contiguous())
            self.register_buffer("product_weight", scaled[dimension:2 * dimension].contiguous())
            self.register_buffer("distance_weight", scaled[2 * dimension:3 * dimension].contiguous())
            self.register_buffer("cosine_weight", scaled[3 * dimension].contiguous())
            self.register_buffer("lexical_weight", scaled[3 * dimension + 1:].contiguous())

    def forward(self, query: torch.Tensor, item: torch.Tensor, lexical: torch.Tensor) -> torch.Tensor:
        from relevance.student.featurizer import pair_blocks

        query_share = (query * self.query_scale) @ self.query_weight + self.bias
        if self.one_query:
            column = query.reshape(-1, 1)  # [d, 1]: the one query row
            # [i, q⊙i, cosine] · W = i · (W_i + diag(q)·(W_q⊙i + 1·w_cosine)), the cosine being i·q
            weight = self.item_weight + column * (self.product_weight + self.cosine_weight)
            hidden = (item @ weight + torch.abs(query - item) @ self.distance_weight
                      + lexical @ self.lexical_weight + query_share)
        else:
            _, *pair = pair_blocks(query, item, lexical)
            hidden = (torch.cat(pair, 1) * self.pair_scale) @ self.pair_weight + query_share
        logits = torch.log_softmax(self.rest(hidden), dim=-1)
        return torch.softmax(self.calibration_scale * logits + self.calibration_bias, dim=-1)


class _QueryEncoder(nn.Module):
    """Mean pooling + L2 normalisation around the backbone, with explicit arguments (exporters want them)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
        return nn.functional.normalize(pool_hidden(hidden, attention_mask, "mean"), dim=-1)


def check_parity(path: Path, feeds: dict[str, np.ndarray], expected: np.ndarray, tolerance: float) -> float:
    got = onnx_session(path).run(None, feeds)[0]
    if got.shape != expected.shape:
        raise ExportParityError(f"{path}: ONNX output shape {got.shape} differs from torch {expected.shape}")
    diff = float(np.max(np.abs(got - expected)))
    if diff > tolerance:
        raise ExportParityError(f"{path}: ONNX differs from torch by {diff:.2e} (> tolerance {tolerance:.0e})")
    return diff


def export_student(student_dir: str | Path, out_path: str | Path, tolerance: float = 1e-4,
                   sample_rows: int = 64, one_query: bool = False) -> ExportResult:
    """The serving graph (:class:`_ServingStudent`), checked against the trained model on its training vector
    (relevance.student.featurizer.assemble) with one query row and with one per candidate (``one_query``: the
    in-process graph, one query row only)."""
    from relevance.student.featurizer import assemble

    student = Student.load(student_dir)
    dimension = int(student.manifest["embedding_dim"])
    module = _ServingStudent(student, dimension, one_query).eval()
    lexical_width = student.model.feature_mean.shape[0] - 4 * dimension - 1
    # Sample inputs like real ones: unit vectors (the items near the query), lexical features at mean ± 3 std.
    rng = np.random.default_rng(0)
    query = _unit(rng.normal(size=(1, dimension)))
    items = _unit(query + rng.normal(0, 0.8, size=(sample_rows, dimension)))
    mean, std = (buffer.numpy()[-lexical_width:] for buffer in (student.model.feature_mean, student.model.feature_std))
    lexical = (mean + std * rng.normal(0, 1.5, size=(sample_rows, lexical_width))).astype(np.float32)
    rows = np.repeat(query, sample_rows, 0)
    with torch.no_grad():
        expected = torch.softmax(student.model(torch.from_numpy(assemble(rows, items, lexical))), -1).numpy()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter: it traces the broadcast of the query rows as ONNX broadcasting, whatever their
    # number; torch.export specialises a dimension traced at 1, or unifies it with the batch traced at 2.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(torch.from_numpy(a[:3]) for a in (query, items, lexical)), str(out_path),
                          dynamo=False, input_names=list(STUDENT_INPUTS), output_names=["probs"], opset_version=17,
                          dynamic_axes={**({} if one_query else {"query": {0: "queries"}}), "item": {0: "batch"},
                                        "lexical": {0: "batch"}, "probs": {0: "batch"}})
    diff = max(check_parity(out_path, {"query": q, "item": items, "lexical": lexical}, expected, tolerance)
               for q in ((query,) if one_query else (query, rows)))
    return ExportResult(out_path, diff, list(STUDENT_INPUTS), ["probs"])


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def export_query_encoder(encoder_name: str, max_length: int, out_path: str | Path, tolerance: float = 1e-4,
                         sample_queries: list[str] | None = None) -> ExportResult:
    from transformers import AutoModel

    reference = BiEncoder(encoder_name, max_length, precision="fp32")
    if reference.tokenizer.padding_side != "right":
        raise ValueError(f"{encoder_name}: its tokenizer pads on the {reference.tokenizer.padding_side}; the "
                         "exported query encoder (fused attention) expects right padding")
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
    fused = fuse_transformer(out_path, backbone.config)
    expected = reference.encode(queries)
    diff = check_parity(out_path, {n: batch[n].numpy() for n in names}, expected, tolerance)
    return ExportResult(out_path, diff, names, ["embedding"], fused)


def fuse_transformer(path: str | Path, config) -> bool:
    """Rewrite a BERT-family encoder's ONNX graph in place with ONNX Runtime's transformer fusions (attention,
    embedding + layer norm, skip layer norm, bias GELU): a cache miss runs the query encoder inside the request,
    and fewer, fused kernels answer it sooner on one core (not measured in benchmarks/results). Other
    architectures are left as exported. Returns whether it fused.

    The fused graph holds ONNX Runtime contrib ops (com.microsoft domain): it runs on ONNX Runtime (the server
    and Triton's onnxruntime backend), not on other ONNX engines. Its attention takes the mask's row sums as
    lengths, so it assumes right padding, which is what the bi-encoder's tokenizer does (relevance.student.encoder)
    and what serving's QueryEncoder asks for."""
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    if getattr(config, "model_type", None) != "bert":
        return False
    # Its modules log each fusion they try under their own top-level names (fusion_attention, onnx_model, …):
    # silence everything below ERROR for the call, then restore whatever was disabled before.
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        model = optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size)
    finally:
        logging.disable(disabled)
    model.save_model_to_file(str(path))
    return True


def quantize_int8(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Dynamic int8 quantization, per channel (per-tensor loses too much on MiniLM: DESIGN.md measured top-10
    overlap 0.74 vs 0.87). Check its quality on relevance data before serving it."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The torch.export-based exporter leaves intermediate shapes (value_info) that onnx's shape inference, run by
    # the quantizer, rejects ("inferred shape and existing shape differ"): quantize a copy without them.
    model = onnx.load(str(onnx_path))
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "model.onnx"
        onnx.save(model, str(plain))
        # DefaultTensorType: shape inference cannot type the outputs of ONNX Runtime's fused (contrib) ops.
        quantize_dynamic(str(plain), str(out_path), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return Path(out_path)


class _TeacherProbabilities(nn.Module):
    """The cross-encoder's calibrated probabilities: softmax(scale ⊙ log_softmax(logits) + bias)."""

    def __init__(self, cross_encoder: nn.Module, names: list[str], calibrator):
        super().__init__()
        self.cross_encoder = cross_encoder
        self.names = names
        self.register_buffer("scale", torch.tensor(calibrator.scale, dtype=torch.float32))
        self.register_buffer("bias", torch.tensor(calibrator.bias, dtype=torch.float32))

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        logits = self.cross_encoder(**dict(zip(self.names, tensors)))
        return torch.softmax(self.scale * torch.log_softmax(logits, dim=-1) + self.bias, dim=-1)


def export_teacher(teacher_dir: str | Path, out_path: str | Path, tolerance: float = 1e-4) -> ExportResult:
    """The teacher cross-encoder as ONNX: token ids (as :func:`relevance.teacher.model.encode_pairs` makes them) →
    ``probs`` [batch, K]. TorchScript exporter on eager attention, like the query encoder."""
    from relevance.teacher.model import Teacher, collate, encode_pairs

    teacher = Teacher.load(teacher_dir, torch.device("cpu"), attn_implementation="eager")
    encodings = encode_pairs(teacher.tokenizer, ["cordless drill", "red sofa", "x"],
                             ["20V cordless drill with battery", "leather sofa red three seats", "y"],
                             teacher.text_config)
    batch = collate(teacher.tokenizer, encodings, np.arange(len(encodings)), torch.device("cpu"))
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in batch]
    module = _TeacherProbabilities(teacher.model, names, teacher.calibrator).eval()
    args = tuple(batch[n] for n in names)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(out_path), dynamo=False, input_names=names, output_names=["probs"],
                          opset_version=17, dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                                                          "probs": {0: "batch"}})
    with torch.no_grad():
        expected = module(*args).numpy()
    diff = check_parity(out_path, {n: batch[n].numpy() for n in names}, expected, tolerance)
    return ExportResult(out_path, diff, names, ["probs"])


def onnx_teacher_proba(session, teacher, queries: list[str], item_texts: list[str],
                       batch_size: int = 128) -> np.ndarray:
    """Class probabilities [N, K] from an exported teacher on ONNX Runtime, batched like
    :meth:`relevance.teacher.model.Teacher.predict_proba` (same tokenisation, length buckets)."""
    from relevance.teacher.model import encode_pairs, length_batches

    names = {i.name for i in session.get_inputs()}
    encodings = encode_pairs(teacher.tokenizer, queries, item_texts, teacher.text_config)
    lengths = np.array([len(e["input_ids"]) for e in encodings])
    probs = np.zeros((len(encodings), teacher.num_grades), dtype=np.float32)
    for index in length_batches(lengths, batch_size):
        batch = teacher.tokenizer.pad([encodings[i] for i in index], return_tensors="np")
        probs[index] = session.run(None, {n: batch[n].astype(np.int64) for n in names})[0]
    return probs


def export_bundle(student_dir: str | Path, out_dir: str | Path, items, int8: bool = False,
                  feature_project: str | None = None) -> list[ExportResult]:
    """Everything online scoring needs from a student, in one folder (a "serving bundle"):

    - ``student.onnx`` and ``query_encoder.onnx`` (plus ``-int8`` copies with ``int8``), each checked against torch;
    - ``student_one_query.onnx``: the student for in-process scorers, one query row (see :class:`_ServingStudent`);
    - ``tokenizer/``: the query encoder's tokenizer, so serving tokenizes queries as training did;
    - ``bm25/``: the BM25 index of the catalog the student was trained on (its IDF and average length), rebuilt
      from ``items`` and checked against the catalog hash in the student's manifest;
    - ``bundle.json``: what the server checks it is compatible with (feature version, dimensions, grades), and
      ``feature_project``: the versioned feature-store project whose item features the server reads (None when
      the features were not materialized before the export: the server then reads its feature repo's).

    The Triton model repository (relevance.serving.model_repository) is built from this folder.
    """
    from relevance.common.files import atomic_directory, read_manifest
    from relevance.config import TextConfig
    from relevance.models.bm25 import BM25Index, lexical_item_texts
    from relevance.student.featurizer import FEATURE_VERSION, catalog_hash

    manifest = read_manifest(student_dir, expected_kind="student")
    if manifest.get("feature_version") != FEATURE_VERSION:
        raise ValueError(f"{student_dir}: student was trained on feature version {manifest.get('feature_version')}, "
                         f"this code computes version {FEATURE_VERSION}; retrain the student")
    item_text = lexical_item_texts(items, TextConfig(**manifest["text"]))
    found = catalog_hash(item_text)
    if found != manifest["catalog_hash"]:
        raise ValueError(f"the catalog given has hash {found}, the student was trained on catalog "
                         f"{manifest['catalog_hash']}: BM25 features would differ from training")
    def trained_on(name_key: str) -> BiEncoder:
        # e.g. towers tuned again in place after the student was trained: the bundle would embed queries with
        # weights its student never read, under the old fingerprint.
        reference = BiEncoder(manifest[name_key], manifest["encoder_max_length"], precision="fp32")
        if reference.fingerprint != manifest.get(f"{name_key}_fingerprint"):
            raise ValueError(f"{student_dir}: the student was trained on {name_key} "
                             f"{manifest.get(f'{name_key}_fingerprint')}, but {manifest[name_key]} is now "
                             f"{reference.fingerprint}; retrain the student on it (or restore the one it was "
                             "trained on)")
        return reference

    reference = trained_on("encoder")
    # The queries' tower: a separate, smaller one where the student was trained with one (student.query_encoder).
    query_reference = trained_on("query_encoder") if manifest.get("query_encoder") else reference
    query_name = manifest.get("query_encoder") or manifest["encoder"]
    with atomic_directory(out_dir) as tmp:
        results = [export_student(student_dir, tmp / "student.onnx"),
                   export_query_encoder(query_name, manifest["encoder_max_length"], tmp / "query_encoder.onnx")]
        if int8:
            for result in list(results):
                quantize_int8(result.path, result.path.with_name(result.path.stem + "-int8.onnx"))
        # Not quantised: its item weight is built per request, which dynamic int8 leaves in fp32, and the int8
        # student graph is faster still (relevance.student.scoring.ServingBundle.in_process_graph).
        results.append(export_student(student_dir, tmp / f"{ONE_QUERY_GRAPH}.onnx", one_query=True))
        query_reference.tokenizer.save_pretrained(tmp / "tokenizer")
        BM25Index(item_text.index.to_numpy(), item_text.tolist(), manifest["bm25"]["k1"],
                  manifest["bm25"]["b"]).save(tmp / "bm25")
        bundle = {
            "kind": "serving-bundle", "student_version": manifest["student_version"],
            "feature_version": FEATURE_VERSION, "num_features": manifest["num_features"],
            "num_grades": manifest["num_grades"], "grade_names": manifest["dataset"].get("grade_names"),
            "embedding_dim": manifest["embedding_dim"], "encoder": manifest["encoder"],
            "encoder_max_length": manifest["encoder_max_length"],
            "encoder_fingerprint": manifest["encoder_fingerprint"], "catalog_hash": manifest["catalog_hash"],
            # Where queries are embedded by a separate tower (None: the encoder's own, as its items).
            "query_encoder": manifest.get("query_encoder"),
            "query_encoder_fingerprint": manifest.get("query_encoder_fingerprint"),
            # How item text was assembled and what the grades mean: an offline replay (relevance evaluate,
            # judge-eval) rebuilds the same features and reads the probabilities right.
            "text": manifest["text"], "dataset": manifest["dataset"],
            "catalog_items": int(len(item_text)), "int8": int8, "student_inputs": list(STUDENT_INPUTS),
            "feature_project": feature_project,
            "max_abs_diff": {result.path.stem: result.max_abs_diff for result in results},
            # The encoder graph's form: "fused" holds ONNX Runtime contrib ops (fuse_transformer).
            "query_encoder_graph": "fused" if results[1].fused else "plain",
        }
        if "judge_holdout" in manifest:  # a student made before the record existed has none, and its bundle neither
            bundle["judge_holdout"] = manifest["judge_holdout"]
        (tmp / "bundle.json").write_text(json.dumps(bundle, indent=2))
    out_dir = Path(out_dir)
    return [ExportResult(out_dir / r.path.name, r.max_abs_diff, r.inputs, r.outputs, r.fused) for r in results]
