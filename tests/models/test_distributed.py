"""Teacher fine-tuning on several processes (relevance.models.distributed, relevance.teacher.model) and as a Kubeflow TrainJob
(relevance.platform.trainjob).

The multi-process tests run real torchrun jobs of 2 CPU processes (gloo) on a tiny BERT: a few seconds each.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from relevance.config import RunConfig
from relevance.data.schema import Dataset, DatasetInfo
from relevance.models.distributed import FAULT_INJECTION_ENV, Context, WorkerFailedError
from relevance.platform.trainjob import (
    TrainJobError,
    TrainJobManifestError,
    launch_teacher_training,
    render_trainjob,
    stored_schema,
    unchecked_rules,
    validate_trainjob,
    wait_for_trainjob,
)
from relevance.teacher.launch import launch_local
from relevance.teacher.model import Teacher
from relevance.teacher.train import check_distributed_settings

# In `make test-slow` (and .ci/run): torch.distributed process groups (over a minute).
pytestmark = pytest.mark.slow

# Two processes follow one process's optimisation exactly, except for the order of floating-point additions
# (DDP sums each gradient bucket across ranks; each rank pads its slice to its own longest row; a rank's loss is a
# sum over its slice). Measured after 8 AdamW steps at lr 1e-3: at most 2e-7 on any parameter (DDP and FSDP) and
# 6e-8 on a probability. Adam divides by sqrt(v), so a rounding difference on a near-zero gradient can grow more
# than it would under SGD: the tolerance leaves 50× headroom, still far below what one differently composed batch
# would move (the first step alone changes parameters by ~1e-3).
PARAMETER_TOLERANCE = 1e-5
PROBABILITY_TOLERANCE = 1e-5


def _prepared_dataset(directory: Path, tiny_pairs) -> Path:
    """tiny_pairs as a prepared dataset: 40 train pairs (10 queries), 8 valid pairs (2 queries)."""
    items, queries, judgments = tiny_pairs()
    judgments["split"] = np.where(judgments["query_id"].isin(["q10", "q11"]), "valid", "train")
    return Dataset(DatasetInfo("tiny", 3), items, queries, judgments).save(directory)


def _config(backbone: Path, **teacher) -> RunConfig:
    """A global batch of 13 over 40 train pairs: batches of 13, 13, 13 and 1, so the two ranks' slices are
    unequal (7 and 6) and, at each epoch's last batch, one rank's slice is empty."""
    settings = {"backbone": str(backbone), "finetune": "full", "epochs": 2, "batch_size": 13, "head_hidden": 16,
                "dropout": 0.0, "lora_dropout": 0.0, "learning_rate": 1e-3, "head_learning_rate": 3e-3,
                "precision": "fp32", "calibration": "none", "eval_every_steps": 2, **teacher}
    return RunConfig.model_validate({"text": {"fields": ["title"], "max_length": 32}, "teacher": settings})


def _with_processes(config: RunConfig, processes: int, strategy: str = "ddp") -> RunConfig:
    config = config.model_copy(deep=True)
    config.teacher.distributed.nproc_per_node = processes
    config.teacher.distributed.strategy = strategy
    return config


def _weights(teacher_dir: Path) -> dict[str, torch.Tensor]:
    return {**{f"head.{k}": v for k, v in load_file(teacher_dir / "head.safetensors").items()},
            **{f"backbone.{k}": v for k, v in load_file(teacher_dir / "backbone" / "model.safetensors").items()}}


def _probabilities(teacher_dir: Path, dataset: Dataset) -> np.ndarray:
    teacher = Teacher.load(teacher_dir)
    texts = teacher.item_texts(dataset.items)
    pairs = dataset.judgments
    return teacher.predict_proba(dataset.query_text[pairs.query_id].tolist(), texts[pairs.item_id].tolist(),
                                 precision="fp32")


def test_each_rank_gets_its_slice_of_the_global_batch():
    batch = np.arange(13)
    slices = [Context(rank=r, world_size=2).shard(batch) for r in range(2)]
    assert [s.tolist() for s in slices] == [list(range(7)), list(range(7, 13))]
    assert Context(rank=1, world_size=2).shard(np.arange(1)).size == 0  # a last batch smaller than the world
    assert Context().shard(batch) is batch  # one process: the whole batch, untouched


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, tiny_pairs, tiny_bert_without_dropout):
    data = _prepared_dataset(tmp_path / "data", tiny_pairs)
    config = _config(tiny_bert_without_dropout)
    launch_local(config, data, tmp_path / "one")
    reference, dataset = _weights(tmp_path / "one"), Dataset.load(data)
    reference_history = json.loads((tmp_path / "one" / "manifest.json").read_text())["metrics"]["history"]
    reference_probabilities = _probabilities(tmp_path / "one", dataset)
    for strategy in ("ddp", "fsdp"):  # FSDP2 runs on CPU with gloo in torch 2.13: both are tested
        out = tmp_path / strategy
        launch_local(_with_processes(config, 2, strategy), data, out, log_dir=tmp_path / f"logs-{strategy}")
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["distributed"] == {"world_size": 2, "strategy": strategy, "backend": "gloo"}
        weights = _weights(out)
        assert weights.keys() == reference.keys()
        worst = max(float((weights[k] - reference[k]).abs().max()) for k in reference)
        assert worst <= PARAMETER_TOLERANCE, f"{strategy}: a parameter differs by {worst:.2e} from one process"
        np.testing.assert_allclose(_probabilities(out, dataset), reference_probabilities,
                                   atol=PROBABILITY_TOLERANCE, rtol=0)
        history = manifest["metrics"]["history"]
        assert [h["step"] for h in history] == [h["step"] for h in reference_history] == [2, 4, 6, 8]
        np.testing.assert_allclose([h["valid_loss"] for h in history],
                                   [h["valid_loss"] for h in reference_history], atol=1e-6)


def test_a_killed_rank_fails_the_job_and_is_named(tmp_path, tiny_pairs, tiny_bert_without_dropout, cli):
    workdir = tmp_path / "run"
    _prepared_dataset(workdir / "data", tiny_pairs)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(json.loads(_config(tiny_bert_without_dropout).model_dump_json(
        exclude_defaults=True))))
    result = cli("train-teacher", "-c", config, "-w", workdir, "--nproc-per-node", 2, check=False,
                 env={FAULT_INJECTION_ENV: "1:2"})  # rank 1 SIGKILLs itself after its 2nd step
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "rank 1 of 2 was killed by SIGKILL (exit code -9)" in errors[0]
    assert "Log of rank 1:" in errors[0]
    assert not (workdir / "teacher").exists(), "a failed job must not leave a teacher behind"


def test_a_killed_ddp_run_resumes_from_rank_zeros_checkpoint(tmp_path, tiny_pairs, tiny_bert_without_dropout,
                                                              monkeypatch):
    """Rank 1 dies after step 5; rank 0 had written the checkpoint after step 4's evaluation. Run again, both
    ranks resume from it, agree on the step, and end where a run that was never killed does (within DDP's
    rounding); the checkpoint is gone once the teacher is saved."""
    data = _prepared_dataset(tmp_path / "data", tiny_pairs)
    config = _with_processes(_config(tiny_bert_without_dropout), 2)
    launch_local(config, data, tmp_path / "whole", log_dir=tmp_path / "logs-whole")
    monkeypatch.setenv(FAULT_INJECTION_ENV, "1:5")
    with pytest.raises(WorkerFailedError, match="rank 1 of 2 was killed"):
        launch_local(config, data, tmp_path / "resumed", log_dir=tmp_path / "logs-killed")
    checkpoint = tmp_path / "resumed.checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["state"]["step"] == 4
    monkeypatch.delenv(FAULT_INJECTION_ENV)
    launch_local(config, data, tmp_path / "resumed", log_dir=tmp_path / "logs-resumed")
    logs = "".join(path.read_text() for path in (tmp_path / "logs-resumed").rglob("*") if path.is_file())
    assert "teacher: resuming from" in logs and "at epoch 1, batch 4" in logs, logs[-3000:]  # its last batch
    assert not checkpoint.exists() and not (tmp_path / "whole.checkpoint.pt").exists()
    reference, weights = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    worst = max(float((weights[k] - reference[k]).abs().max()) for k in reference)
    assert worst <= PARAMETER_TOLERANCE, f"a parameter differs by {worst:.2e} from the uninterrupted run"
    history = [json.loads((tmp_path / run / "manifest.json").read_text())["metrics"]["history"]
               for run in ("whole", "resumed")]
    assert [h["step"] for h in history[1]] == [h["step"] for h in history[0]] == [2, 4, 6, 8]


def test_lora_with_gradient_checkpointing_trains_under_ddp(tmp_path, tiny_pairs, tiny_bert, cli):
    """Only the adapters and the head train (DDP reduces only those), through non-reentrant checkpointing; the
    saved teacher is merged and loads like any other. Through the CLI, as a person runs it."""
    workdir = tmp_path / "run"
    _prepared_dataset(workdir / "data", tiny_pairs)
    config = tmp_path / "config.yaml"
    settings = _config(tiny_bert, finetune="lora", gradient_checkpointing=True, epochs=1, lora_dropout=0.05,
                       dropout=0.1)
    config.write_text(yaml.safe_dump(json.loads(settings.model_dump_json(exclude_defaults=True))))
    result = cli("train-teacher", "-c", config, "-w", workdir, "--nproc-per-node", 2)
    teacher_dir = Path(result.stdout.strip().splitlines()[-1])
    manifest = json.loads((teacher_dir / "manifest.json").read_text())
    assert manifest["distributed"]["world_size"] == 2 and manifest["finetune"] == "lora"
    assert [h["step"] for h in manifest["metrics"]["history"]] == [2, 4]
    assert not list((teacher_dir / "backbone").glob("adapter_*")), "LoRA must be merged before saving"
    probabilities = _probabilities(teacher_dir, Dataset.load(workdir / "data"))
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


def test_settings_that_cannot_work_on_several_processes_are_refused(tiny_bert):
    config = _config(tiny_bert, batch_size=3).teacher
    check_distributed_settings(config, 1)
    check_distributed_settings(config, 3)
    with pytest.raises(ValueError, match="global batch, split across 4 processes: expected at least 4, got 3"):
        check_distributed_settings(config, 4)
    config = _config(tiny_bert, finetune="qlora").teacher
    config.distributed.strategy = "fsdp"
    with pytest.raises(ValueError, match="fsdp with finetune=qlora is not supported"):
        check_distributed_settings(config, 2)
    with pytest.raises(ValueError, match="needs launcher: trainjob"):
        RunConfig.model_validate({"teacher": {"distributed": {"num_nodes": 2}}})


# -- TrainJob ---------------------------------------------------------------------------------------------------

MOUNT = "/mnt/relevance"


def _trainjob_config(**distributed) -> RunConfig:
    settings = {"launcher": "trainjob", "num_nodes": 2, "nproc_per_node": 4, **distributed}
    settings["trainjob"] = {"image": "registry.example.com/relevance:0.1.0-cuda", "node_selector": {"pool": "h100"},
                            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                            "env": {"NCCL_DEBUG": "WARN"}, **settings.get("trainjob", {})}
    return RunConfig.model_validate({"teacher": {"distributed": settings}})


def test_the_trainjob_manifest_renders_and_validates_against_the_crd():
    config = _trainjob_config()
    manifest = validate_trainjob(render_trainjob(config, f"{MOUNT}/run/data", f"{MOUNT}/run/teacher", name="t-1"))
    trainer = manifest["spec"]["trainer"]
    assert manifest["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and manifest["kind"] == "TrainJob"
    assert manifest["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                              "name": "torch-distributed"}
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": 4}}
    assert trainer["command"] == ["torchrun"] and trainer["args"][:2] == ["-m", "relevance.teacher"]
    arguments = dict(zip(trainer["args"][2::2], trainer["args"][3::2]))
    assert arguments["--dataset"] == f"{MOUNT}/run/data" and arguments["--out"] == f"{MOUNT}/run/teacher"
    assert RunConfig.model_validate_json(arguments["--config"]) == config  # the run config travels whole
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in trainer["env"]
    pod = manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "relevance-shared"
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == MOUNT
    assert pod["nodeSelector"] == {"pool": "h100"}
    # The stored schema says where it came from, and every CEL rule in it is checked (or an update-only rule).
    source = stored_schema()["source"]
    assert source["repository"] == "kubeflow/trainer" and len(source["commit"]) == 40
    assert unchecked_rules(stored_schema()["openAPIV3Schema"]) == []


@pytest.mark.parametrize("breaks,expected", [
    (lambda m: m["spec"]["trainer"].update(numNode=2),
     "spec.trainer: unknown field(s) 'numNode' (did you mean 'numNodes'?)"),
    (lambda m: m["spec"]["trainer"].update(numNodes=-1), "spec.trainer.numNodes: -1 is less than the minimum of 0"),
    (lambda m: m["spec"]["trainer"].update(numProcPerNode=0), "numProcPerNode must be greater than or equal to 1"),
    (lambda m: m["spec"].pop("runtimeRef"), "'runtimeRef' is a required property"),
    (lambda m: m["metadata"].update(name="Teacher_1"), "metadata.name must match RFC 1035 DNS label format"),
    (lambda m: m["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "3"}),
     "must not set ['PET_NNODES']"),
    (lambda m: m["spec"]["trainer"]["env"].append({"name": "NCCL_DEBUG", "value": "INFO"}),
     "spec.trainer.env: entries must be unique by ['name']"),
    (lambda m: m.update(apiVersion="kubeflow.org/v1"), "apiVersion"),
    (lambda m: m["spec"].update(managedBy="someone"), "ManagedBy must be trainer.kubeflow.org/trainjob-controller"),
])
def test_a_broken_trainjob_manifest_is_refused_with_the_field_named(breaks, expected):
    manifest = render_trainjob(_trainjob_config(), f"{MOUNT}/run/data", f"{MOUNT}/run/teacher", name="t-1")
    broken = copy.deepcopy(manifest)
    breaks(broken)
    with pytest.raises(TrainJobManifestError) as refused:
        validate_trainjob(broken)
    assert expected in str(refused.value)
    assert "kubeflow/trainer@" in str(refused.value)


def test_trainjob_paths_must_be_on_the_shared_volume(tmp_path):
    with pytest.raises(ValueError, match="shared volume mounted at /mnt/relevance"):
        render_trainjob(_trainjob_config(), tmp_path / "data", f"{MOUNT}/run/teacher")


class _FakeCluster:
    """CustomObjectsApi as the launcher uses it: the created object, then a status per poll."""

    def __init__(self, statuses: list[dict], on_complete=None):
        self.created, self.statuses, self.on_complete = [], list(statuses), on_complete

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        self.created.append((namespace, body))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if self.on_complete and any(c["type"] == "Complete" for c in status.get("conditions", [])):
            self.on_complete()
        return {"metadata": {"name": name}, "status": status}


def _condition(kind: str, reason: str = "", message: str = "") -> dict:
    return {"conditions": [{"type": kind, "status": "True", "reason": reason, "message": message}]}


def test_the_launcher_submits_the_trainjob_and_waits_for_it(tmp_path):
    out = tmp_path / "run" / "teacher"
    config = _trainjob_config(trainjob={"poll_seconds": 0.01, "shared_mount_path": str(tmp_path)})

    def nodes_write_the_teacher():  # to the shared volume, which this test's tmp_path stands for
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text("{}")

    cluster = _FakeCluster([{}, _condition("Complete")], on_complete=nodes_write_the_teacher)
    assert launch_teacher_training(config, tmp_path / "run" / "data", out, log=lambda _: None, api=cluster) == out
    namespace, body = cluster.created[0]
    assert namespace == "relevance" and body["spec"]["trainer"]["numNodes"] == 2
    nothing_written = _FakeCluster([_condition("Complete")])
    with pytest.raises(TrainJobError, match="completed, but no teacher is in"):
        launch_teacher_training(config, tmp_path / "run" / "data", tmp_path / "elsewhere", log=lambda _: None,
                                api=nothing_written)


def test_the_launcher_stages_paths_that_are_not_on_the_shared_volume(tmp_path):
    # A KFP step's artifact paths are local to its pod: the nodes read a copy of the dataset on the shared
    # volume and write the teacher there; the step copies it back.
    shared, artifacts = tmp_path / "shared", tmp_path / "artifacts"
    (artifacts / "data").mkdir(parents=True)
    (artifacts / "data" / "dataset.json").write_text("{}")
    shared.mkdir()
    config = _trainjob_config(trainjob={"poll_seconds": 0.01, "shared_mount_path": str(shared)})
    cluster = _FakeCluster([_condition("Complete")])

    def nodes_write_the_teacher():
        args = cluster.created[0][1]["spec"]["trainer"]["args"]
        data, out = Path(args[args.index("--dataset") + 1]), Path(args[args.index("--out") + 1])
        assert shared in data.parents and (data / "dataset.json").exists(), "the nodes see the staged dataset"
        out.mkdir(parents=True)
        (out / "manifest.json").write_text('{"teacher_version": "t"}')

    cluster.on_complete = nodes_write_the_teacher
    out = artifacts / "teacher"
    assert launch_teacher_training(config, artifacts / "data", out, log=lambda _: None, api=cluster) == out
    assert (out / "manifest.json").read_text() == '{"teacher_version": "t"}'
    unmounted = _trainjob_config(trainjob={"shared_mount_path": str(tmp_path / "not-mounted")})
    with pytest.raises(TrainJobError, match="is not mounted here at"):
        launch_teacher_training(unmounted, artifacts / "data", out, log=lambda _: None, api=cluster)


def test_a_failed_or_late_trainjob_is_a_clear_error():
    failed = _FakeCluster([_condition("Failed", "DeadlineExceeded", "the TrainJob ran past its deadline")])
    with pytest.raises(TrainJobError, match="relevance/t-1 failed: DeadlineExceeded: the TrainJob ran past"):
        wait_for_trainjob("t-1", "relevance", 60, 0, api=failed, log=lambda _: None, sleep=lambda _: None)
    clock = iter(range(0, 1000, 10))
    running = _FakeCluster([{"conditions": [{"type": "Suspended", "status": "False"}]}])
    with pytest.raises(TrainJobError, match="did not finish within 30 s .* still there: `kubectl get trainjob"):
        wait_for_trainjob("t-1", "relevance", 30, 10, api=running, log=lambda _: None, sleep=lambda _: None,
                          clock=lambda: next(clock))


def test_dry_run_prints_the_validated_manifest_without_a_cluster(cli, tmp_path):
    result = cli("train-teacher", "--trainjob", "--dry-run", "-p", "quick", "-w", f"{MOUNT}/runs/demo")
    manifest = yaml.safe_load(result.stdout)
    assert validate_trainjob(manifest)["spec"]["trainer"]["args"][-1] == f"{MOUNT}/runs/demo/teacher"
    refused = cli("train-teacher", "--trainjob", "--dry-run", "-p", "quick", "-w", tmp_path, check=False)
    assert refused.returncode == 2 and "must be an absolute path on the shared volume" in refused.stderr
    assert not (tmp_path / "data").exists(), "a dry run prepares nothing"
