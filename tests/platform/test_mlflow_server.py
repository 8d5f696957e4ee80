"""The registry against a real MLflow tracking server on loopback (`mlflow server`, SQLite backend, a local
artifact store the clients write to directly), and its faults: the server killed during a register step and
during a canary watch round, then restarted.

One server for the module (it takes ~10–20 s to start); each test registers models of its own names.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import yaml

from relevance.config import RunConfig

# In `make test-slow` (and .ci/run): a real MLflow server per test (about 3 minutes in all).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory):
    from relevance.platform.services.mlflow_server import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@pytest.fixture(autouse=True)
def fail_fast(monkeypatch):
    """MLflow's client retries a refused connection with backoff for minutes by default (what a Job in a cluster
    wants); here a dead server must fail the call at once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


@pytest.fixture()
def restart(mlflow):
    """Leaves the server running after a test that killed it, whatever the test's outcome."""
    yield mlflow.process
    if not mlflow.process.running():
        mlflow.process.start()


def _config(mlflow, name: str, **more) -> RunConfig:
    return RunConfig(registry={"tracking_uri": mlflow.url, "student_name": f"{name}-student",
                               "teacher_name": f"{name}-teacher"}, **more)


def _model(tmp_path, name: str = "model"):
    model = tmp_path / name
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps({"kind": "student"}))
    (model / "weights.bin").write_bytes(b"\0" * 4096)
    return model


def test_registry_cli_and_downloads_go_through_the_server(mlflow, cli, tmp_path):
    from relevance.platform.registry import CHALLENGER, CHAMPION, Registry

    name = "cli-student"
    registry = Registry(uri=mlflow.url)
    env = {"MLFLOW_TRACKING_URI": mlflow.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    first = registry.register(name, _model(tmp_path, "a"), {"a": 1}, {"accuracy": 0.5}, {"data_hash": "x"},
                              alias=CHALLENGER)
    settings = ["--name", name]
    assert f"champion → v{first}" in cli("registry", "promote", *settings, env=env).stdout
    second = registry.register(name, _model(tmp_path, "b"), {"a": 2}, {"accuracy": 0.6}, {}, alias=CHALLENGER)
    cli("registry", "promote", *settings, env=env)
    assert "champion → v1 (rolled back)" in cli("registry", "rollback", *settings, env=env).stdout
    assert (registry.alias_version(name, CHAMPION), second) == (first, 2)
    listing = cli("registry", "list", "--name", name, env=env).stdout
    assert f"{name} v1 [champion]" in listing and f"{name} v2 [-]" in listing
    # The version's source is on the artifact store the clients write to, never the server's proxy scheme.
    source = registry.versions(name)[0].source
    assert source.startswith(mlflow.artifacts.as_uri())
    downloaded = registry.download(name, CHAMPION, tmp_path / "dl")
    assert (downloaded / "weights.bin").read_bytes() == b"\0" * 4096


@pytest.fixture(scope="module")
def exported_run(finished_run, cli, tmp_path_factory):
    """The tiny run's models with their ONNX export, as the pipeline's register step receives them."""
    root = tmp_path_factory.mktemp("exported")
    shutil.copytree(finished_run[0] / "run", root / "run", ignore=shutil.ignore_patterns("export"))
    config = yaml.safe_load(finished_run[1].read_text())
    config["workdir"] = str(root / "run")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli("export", "--config", str(path))
    return root / "run"


def _register_step(config: RunConfig, run):
    from relevance.common.files import read_manifest
    from relevance.platform.registry import register_run

    encoder = read_manifest(run / "student", "student")["encoder_fingerprint"]  # what its features step embedded with
    return register_run(config, run / "data", run / "teacher", run / "student", run / "export",
                        {"student_accuracy": 0.5, "student_ndcg@10": 0.7, "teacher_accuracy": 0.55},
                        {"success": 1.0, "checked_expectations": 12.0},
                        {"item_embeddings": "1", "item_text": "2", "encoder_fingerprint": encoder})


def test_a_register_step_retried_after_a_crash_registers_nothing_twice(mlflow, exported_run, restart,
                                                                       monkeypatch):
    """The server dies while the student's files upload (the teacher is registered by then); the step fails.
    Retried after the restart, it registers the student once, reuses the teacher, and the run the first attempt
    left half-uploaded is marked FAILED. A third run of the step changes nothing."""
    from mlflow import MlflowClient

    from relevance.platform.registry import CHALLENGER, REGISTRATION_KEY_TAG, Registry

    config = _config(mlflow, "retried")
    original = MlflowClient.log_artifacts
    calls = []

    def crash_on_the_student(self, run_id, local_dir, artifact_path=None):
        calls.append(local_dir)
        if len(calls) == 2:  # the teacher's upload went through; the server dies before the student's
            restart.stop(kill=True)
        return original(self, run_id, local_dir, artifact_path)

    monkeypatch.setattr(MlflowClient, "log_artifacts", crash_on_the_student)
    with pytest.raises(Exception) as crashed:  # whatever MLflow's client raises for a dead server
        _register_step(config, exported_run)
    assert not restart.running(), crashed.value
    restart.start()
    monkeypatch.setattr(MlflowClient, "log_artifacts", original)

    registry = Registry(config.registry)
    teacher_name, student_name = config.registry.teacher_name, config.registry.student_name
    assert [v.version for v in registry.versions(teacher_name)] == [1] and registry.versions(student_name) == []
    assert _register_step(config, exported_run) == {"teacher": 1, "student": 1}
    assert _register_step(config, exported_run) == {"teacher": 1, "student": 1}  # and once more: nothing new
    [student] = registry.versions(student_name)
    assert student.aliases == [CHALLENGER] and student.tags[REGISTRATION_KEY_TAG]
    assert [v.version for v in registry.versions(teacher_name)] == [1]
    runs = registry.client.search_runs([registry.client.get_experiment_by_name("relevance").experiment_id],
                                       filter_string=f"tags.{REGISTRATION_KEY_TAG} = '{student.tags[REGISTRATION_KEY_TAG]}'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert registry.client.get_run(student.run_id).info.status == "FINISHED"
    downloaded = registry.download(student_name, CHALLENGER, exported_run.parent / "downloaded")
    assert (downloaded / "onnx" / "student.onnx").exists() and (downloaded / "manifest.json").exists()


class Traffic:
    """The traffic controller's side of a canary (what kubectl is to a cluster): a share, and what was sent."""

    def __init__(self, percent: int, on_send=None):
        self.percent, self.sent, self.on_send = percent, [], on_send

    def describe(self) -> str:
        return "the test's traffic controller"

    def traffic(self):
        from relevance.serving.canary.watch import Traffic as Share

        return Share(self.percent)

    def command(self, plan) -> str:
        return f"move traffic: {plan.action}"

    def send(self, plan) -> str:
        self.sent.append(plan.action)
        self.percent = {"rollback": 0, "promote": 100}[plan.action]
        if self.on_send:
            self.on_send()
        return f"sent {plan.action}"


def _canary(mlflow, tmp_path, name: str):
    """A registry on the server with champion v1 and v2 under canary."""
    from relevance.platform.registry import CHAMPION, Registry
    from relevance.serving.canary.rollout import plan_start

    config = _config(mlflow, name, workdir=str(tmp_path / "run"))
    registry = Registry(config.registry)
    for version in (1, 2):
        registry.register(config.registry.student_name, _model(tmp_path, f"v{version}"), {}, {"accuracy": 0.5},
                          {"feature_version": "3"}, alias=CHAMPION if version == 1 else None)
    plan_start(config, registry, 2, 10).apply_registry()
    return config, registry


def _rollback_decision():
    from relevance.serving.canary.analysis import ROLLBACK, Decision

    return Decision(ROLLBACK, ["p99 latency breaches the SLO"], [], {})


def test_a_watch_round_whose_registry_dies_exits_4_and_the_next_round_completes(mlflow, restart, tmp_path):
    from relevance.platform.registry import CHAMPION
    from relevance.serving.canary import watch
    from relevance.serving.canary.rollout import CANARY

    config, registry = _canary(mlflow, tmp_path, "watched")
    name = config.registry.student_name
    target = Traffic(10)

    def server_dies_while_evidence_is_gathered():
        restart.stop(kill=True)
        return _rollback_decision(), {}

    with pytest.raises(watch.WatchError, match="nothing was changed") as error:
        watch.watch_round(config, registry, target, server_dies_while_evidence_is_gathered, tmp_path / "round-1")
    assert error.value.exit_code == watch.EXIT_NOT_DONE and target.sent == []
    restart.start()
    assert watch.aliases(registry, name) == {CANARY: 2, CHAMPION: 1}  # nothing moved, nothing half-moved

    result = watch.watch_round(config, registry, target, lambda: (_rollback_decision(), {}), tmp_path / "round-2")
    assert (result.exit_code, target.sent, target.percent) == (watch.EXIT_ROLLED_BACK, ["rollback"], 0)
    assert watch.aliases(registry, name) == {CHAMPION: 1}
    assert registry.client.get_model_version(name, "2").tags["canary"] == "rolled back"


def test_a_registry_that_dies_after_the_traffic_moved_is_left_whole_for_a_person(mlflow, restart, tmp_path, cli):
    """The worst moment: traffic sent back to the champion, then the registry dies before its step. The round
    exits 4 and says what is left; the aliases are as they were (not half-moved); after the restart the next
    round refuses to act on a registry and traffic that disagree, and `relevance canary rollback --apply` (what
    it tells a person to run) ends the canary in the registry."""
    from relevance.platform.registry import CHAMPION
    from relevance.serving.canary import watch
    from relevance.serving.canary.rollout import CANARY, plan_rollback

    config, registry = _canary(mlflow, tmp_path, "half")
    name = config.registry.student_name
    target = Traffic(10, on_send=lambda: restart.stop(kill=True))
    with pytest.raises(watch.WatchError, match="the traffic was moved .* but the registry was not") as error:
        watch.watch_round(config, registry, target, lambda: (_rollback_decision(), {}), tmp_path / "round-1")
    assert error.value.exit_code == watch.EXIT_NOT_DONE and target.sent == ["rollback"]
    restart.start()
    assert watch.aliases(registry, name) == {CANARY: 2, CHAMPION: 1}
    with pytest.raises(watch.WatchError, match="a step was left half done"):
        watch.watch_round(config, registry, target, lambda: (_rollback_decision(), {}), tmp_path / "round-2")
    plan_rollback(config, registry).apply_registry()
    assert watch.aliases(registry, name) == {CHAMPION: 1}


def test_a_stopped_server_is_an_error_and_a_restart_has_everything_back(mlflow, restart, tmp_path):
    """A stopped server is an error the registry names (never "no such alias"), and a restart on the same port
    and database has everything back."""
    from relevance.platform.registry import CHAMPION, Registry, RegistryError

    registry = Registry(uri=mlflow.url)
    registry.register("stopped-student", _model(tmp_path), {}, {}, {}, alias=CHAMPION)
    restart.stop()
    with pytest.raises(RegistryError, match="did not answer"):
        registry.alias_version("stopped-student", CHAMPION)
    restart.start()
    assert httpx.get(f"{mlflow.url}/health").status_code == 200
    assert registry.alias_version("stopped-student", CHAMPION) == 1
