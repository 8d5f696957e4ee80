"""The Triton model repository for the student: ``<repo>/<model>/config.pbtxt`` + ``<repo>/<model>/<v>/model.onnx``.

Two variants from one bundle, the same graph and the same inputs:

- ``onnxruntime`` (the cluster's): ``platform: "onnxruntime_onnx"``, what Triton's container image serves;
- ``python`` (loopback): ``backend: "python"`` with ``model.py`` (relevance.serving.triton_backend) running the
  same model.onnx on ONNX Runtime, for the ``tritonserver`` of the nvidia-pytriton wheel, which has no ONNX
  Runtime backend (relevance.serving.triton starts it).

config.pbtxt is written and read with Triton's own ModelConfig protobuf (shipped in tritonclient), so a field
Triton doesn't know is an error here, not at pod start. The folder name is the model name, which is also the
InferenceService's predictor model name (ServingConfig.model_name). Inputs are per candidate (``query``,
``item``, ``lexical``: relevance.student.scoring.Prepared.student_inputs with one query row per candidate), so
Triton's dynamic batcher can put several requests' candidates in one run.
"""

from __future__ import annotations

import importlib.util
import shutil
from functools import lru_cache
from pathlib import Path

import onnx

from relevance.config import ServingConfig
from relevance.student.scoring import ServingBundle

PLATFORM = "onnxruntime_onnx"
BACKENDS = ("onnxruntime", "python")


class ModelRepositoryError(ValueError):
    pass


@lru_cache(maxsize=1)
def model_config_pb2():
    """Triton's model_config.proto module, loaded by file path: importing the tritonclient.grpc package would
    also register Triton's gRPC service protos, which collide with KServe's in one process."""
    import tritonclient

    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _onnx_io(path: Path) -> tuple[dict[str, list], dict[str, list]]:
    graph = onnx.load(str(path), load_external_data=False).graph

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {v.name: dims(v) for v in graph.input}, {v.name: dims(v) for v in graph.output}


def build_model_repository(bundle_dir: str | Path, repo_dir: str | Path, config: ServingConfig,
                           version: int = 1, backend: str = "onnxruntime") -> Path:
    """Write the student's model folder (config.pbtxt + <version>/model.onnx, and model.py for the python
    backend) into ``repo_dir``; returns it."""
    if backend not in BACKENDS:
        raise ModelRepositoryError(f"backend {backend!r}: expected one of {list(BACKENDS)}")
    pb2 = model_config_pb2()
    bundle = ServingBundle(bundle_dir)
    source = bundle.model_file("student", config.int8)
    model_dir = Path(repo_dir) / config.model_name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, model_dir / str(version) / "model.onnx")
    inputs, outputs = _onnx_io(source)
    if backend == "python":
        model = pb2.ModelConfig(name=config.model_name, backend="python",
                                max_batch_size=config.triton_max_batch_size)
        shutil.copy2(Path(__file__).with_name("triton_backend.py"), model_dir / str(version) / "model.py")
        model.parameters["intra_op_threads"].string_value = str(config.onnx_threads)
    else:
        model = pb2.ModelConfig(name=config.model_name, platform=PLATFORM, max_batch_size=config.triton_max_batch_size)
    for name, dims in inputs.items():
        model.input.add(name=name, data_type=pb2.TYPE_FP32, dims=dims[1:])
    for name, dims in outputs.items():
        model.output.add(name=name, data_type=pb2.TYPE_FP32, dims=dims[1:])
    # A request is one query's candidates (up to max_candidates rows); concurrent queries batch together.
    preferred = sorted({min(size, config.triton_max_batch_size)
                        for size in (config.max_candidates, 2 * config.max_candidates)})
    model.dynamic_batching.preferred_batch_size.extend(preferred)
    model.dynamic_batching.max_queue_delay_microseconds = config.triton_max_queue_delay_us
    model.instance_group.add(kind=pb2.ModelInstanceGroup.KIND_CPU, count=1)
    model.version_policy.latest.num_versions = 1
    from google.protobuf import text_format

    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(model))
    validate_model_repository(repo_dir, config.model_name)
    return model_dir


def read_model_config(repo_dir: str | Path, model_name: str):
    from google.protobuf import text_format

    path = Path(repo_dir) / model_name / "config.pbtxt"
    if not path.exists():
        raise ModelRepositoryError(f"{path}: missing (a Triton model folder needs config.pbtxt)")
    try:
        return text_format.Parse(path.read_text(), model_config_pb2().ModelConfig())
    except text_format.ParseError as error:
        raise ModelRepositoryError(f"{path}: not a Triton ModelConfig: {error}") from None


def validate_model_repository(repo_dir: str | Path, model_name: str) -> Path:
    """Check what Triton checks at load time, offline: names, platform, versions, and that the ONNX graph's
    inputs and outputs are the config's (with a dynamic batch dimension, as max_batch_size > 0 requires).
    Returns the newest version's model.onnx."""
    pb2 = model_config_pb2()
    model_dir = Path(repo_dir) / model_name
    config = read_model_config(repo_dir, model_name)
    problems = []
    if config.name != model_dir.name:
        problems.append(f"config name {config.name!r} differs from its folder {model_dir.name!r}")
    if config.backend != "python" and config.platform != PLATFORM:
        problems.append(f"platform {config.platform!r}, expected {PLATFORM!r} (or backend 'python')")
    if config.max_batch_size <= 0:
        problems.append("max_batch_size must be > 0 for dynamic batching")
    if not config.HasField("dynamic_batching"):
        problems.append("dynamic_batching is not enabled")
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise ModelRepositoryError(f"{model_dir}: no numeric version folder (expected {model_dir}/1/model.onnx)")
    model_path = model_dir / str(versions[-1]) / "model.onnx"
    if not model_path.exists():
        raise ModelRepositoryError(f"{model_path}: missing")
    if config.backend == "python" and not model_path.with_name("model.py").exists():
        problems.append(f"backend 'python' but no {model_path.with_name('model.py')}")
    inputs, outputs = _onnx_io(model_path)
    for kind, declared, graph in (("input", config.input, inputs), ("output", config.output, outputs)):
        for tensor in declared:
            if tensor.data_type != pb2.TYPE_FP32:
                problems.append(f"{kind} {tensor.name!r}: data_type {pb2.DataType.Name(tensor.data_type)}, "
                                "expected TYPE_FP32")
            if tensor.name not in graph:
                problems.append(f"{kind} {tensor.name!r} is not in the ONNX graph ({sorted(graph)})")
                continue
            shape = graph[tensor.name]
            if shape[0] == 0 or isinstance(shape[0], int):
                problems.append(f"{kind} {tensor.name!r}: the ONNX batch dimension is fixed ({shape[0]}), "
                                "Triton batching needs it dynamic")
            if list(shape[1:]) != list(tensor.dims):
                problems.append(f"{kind} {tensor.name!r}: config dims {list(tensor.dims)}, ONNX has {shape[1:]}")
        if {t.name for t in declared} != set(graph):
            problems.append(f"{kind}s declared {sorted(t.name for t in declared)}, ONNX graph has {sorted(graph)}")
    if problems:
        raise ModelRepositoryError(f"{model_dir}: " + "; ".join(problems))
    return model_path
