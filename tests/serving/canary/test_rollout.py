"""Canary patches round-trip through `kubectl patch --local` and validate again; the registry aliases follow;
the CLI prints the command and changes nothing without --apply."""

from __future__ import annotations

import pytest
import yaml
from relevance.serving.canary.manifests import inference_service, patch_local, validate
from relevance.serving.canary.rollout import CANARY as CANARY_ALIAS
from relevance.serving.canary.rollout import (
    CanaryError,
    dry_run,
    model_repository_uri,
    plan_promote,
    plan_rollback,
    plan_start,
)


def _uri(registry, name, version) -> str:
    return model_repository_uri(next(v.source for v in registry.versions(name) if v.version == version))


def test_start_promote_rollback_patches_round_trip(registry_config, rendered):
    from relevance.platform.registry import CHALLENGER, CHAMPION

    config, registry = registry_config
    registry.client.set_registered_model_alias(config.registry.student_name, CHALLENGER, "3")  # a nightly run
    name = config.registry.student_name
    prod = inference_service(rendered["prod"])
    others = [r for r in rendered["prod"] if r["kind"] != "InferenceService"]

    start = plan_start(config, registry, 2, 25)
    assert start.command[:4] == ["kubectl", "patch", "inferenceservice", "relevance-student"]
    assert "--namespace" in start.command and "relevance" in start.command
    canary = patch_local(prod, start.patch)
    predictor = canary["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 25
    assert predictor["model"]["storageUri"] == _uri(registry, name, 2)
    assert canary["metadata"] == prod["metadata"]  # no annotation churn: KServe copies them into pod templates
    assert predictor["model"]["runtime"] == "relevance-triton"  # a merge patch keeps what it does not name
    # file:// sources (the local registry) are not fetchable by KServe: the validator says so, nothing else.
    assert [e for e in validate([*others, canary]) if "storageUri" not in e] == []
    start.apply_registry()
    assert registry.alias_version(name, CANARY_ALIAS) == 2
    registry.client.set_registered_model_alias(name, CHALLENGER, "3")  # a pipeline run meanwhile: no effect

    # rollback during the canary: all traffic back on the champion's revision, champion's model in the spec
    abort = plan_rollback(config, registry)
    aborted = patch_local(canary, abort.patch)
    assert aborted["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert aborted["spec"]["predictor"]["model"]["storageUri"] == _uri(registry, name, 1)
    assert [e for e in validate([*others, aborted]) if "storageUri" not in e] == []

    promote = plan_promote(config, registry)
    promoted = patch_local(canary, promote.patch)
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert promoted["spec"]["predictor"]["model"]["storageUri"] == _uri(registry, name, 2)
    assert [e for e in validate([*others, promoted]) if "storageUri" not in e] == []
    promote.apply_registry()
    assert registry.alias_version(name, CHAMPION) == 2 and registry.alias_version(name, CANARY_ALIAS) is None

    # rollback after the promotion: the previous champion's model back, at 100%
    undo = plan_rollback(config, registry)
    restored = patch_local(promoted, undo.patch)
    assert "canaryTrafficPercent" not in restored["spec"]["predictor"]
    assert restored["spec"]["predictor"]["model"]["storageUri"] == _uri(registry, name, 1)
    undo.apply_registry()
    assert registry.alias_version(name, CHAMPION) == 1


def test_start_refuses_what_cannot_work(registry_config):
    config, registry = registry_config
    with pytest.raises(CanaryError, match="computes feature version 4 with graph inputs features, the champion v1 "
                                          "feature version 3 with features"):
        plan_start(config, registry, 3, 10)
    with pytest.raises(CanaryError, match="graph inputs query,item,lexical, the champion v1 feature version 3 with "
                                          "features"):
        plan_start(config, registry, 4, 10)
    with pytest.raises(CanaryError, match="already the champion"):
        plan_start(config, registry, 1, 10)
    with pytest.raises(CanaryError, match="has no version 9"):
        plan_start(config, registry, 9, 10)
    with pytest.raises(CanaryError, match="expected an integer in 1..99"):
        plan_start(config, registry, 2, 100)
    with pytest.raises(CanaryError, match="start a canary first"):
        plan_promote(config, registry)
    plan_start(config, registry, 2, 10).apply_registry()
    assert plan_start(config, registry, 2, 50).patch["spec"]["predictor"]["canaryTrafficPercent"] == 50  # a ramp
    with pytest.raises(CanaryError, match="v2 is under canary: starting v3 would replace the version"):
        plan_start(config, registry, 3, 10)


def test_start_refuses_a_challenger_on_another_encoder(registry_config, tmp_path):
    """Tuned towers change every vector: the champion's transformer (its query tower, its feature project)
    cannot serve the challenger's student."""
    config, registry = registry_config
    name = config.registry.student_name
    model = tmp_path / "student-tuned"
    model.mkdir()
    (model / "manifest.json").write_text('{"kind": "student"}')
    tuned = registry.register(name, model, {}, {"accuracy": 0.5},
                              {"feature_version": "3", "encoder_fingerprint": "fedcba9876543210"})
    plan_start(config, registry, tuned, 10)  # the champion predates the tag: nothing to compare with
    registry.client.set_model_version_tag(name, "1", "encoder_fingerprint", "0123456789abcdef")
    with pytest.raises(CanaryError, match=f"v{tuned} reads the vectors of encoder fedcba9876543210, the champion v1 "
                                          "those of encoder 0123456789abcdef"):
        plan_start(config, registry, tuned, 10)
    registry.client.set_model_version_tag(name, "2", "encoder_fingerprint", "0123456789abcdef")
    plan_start(config, registry, 2, 10)  # the same encoder: the shared transformer serves both


def test_dry_run_patches_the_rendered_overlay(registry_config):
    config, registry = registry_config
    patched, problems = dry_run(config, plan_start(config, registry, 2, 10))
    assert patched["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert patched["metadata"]["namespace"] == "relevance"
    assert len(problems) == 1 and "file://" in problems[0]  # the local registry's URIs, and nothing else


def test_cli_prints_the_command_and_changes_nothing_without_apply(cli, registry_config, tmp_path):
    config, registry = registry_config
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"registry": {"tracking_uri": config.registry.tracking_uri}}))
    out = cli("canary", "start", "--model-version", "2", "--percent", "10", "-c", str(path)).stdout
    assert out.startswith("kubectl patch inferenceservice relevance-student --namespace relevance --type merge -p ")
    assert '"canaryTrafficPercent": 10' in out and "registry (with --apply): relevance-student: canary → v2" in out
    assert registry.alias_version(config.registry.student_name, CANARY_ALIAS) is None

    dry = cli("canary", "start", "--model-version", "2", "--percent", "10", "-c", str(path), "--dry-run", check=False)
    assert dry.returncode == 1 and "canaryTrafficPercent: 10" in dry.stdout and "file://" in dry.stderr

    bad = cli("canary", "start", "--model-version", "2", "--percent", "150", "-c", str(path), check=False)
    assert bad.returncode == 2 and "less than or equal to 99" in bad.stderr
    # --apply with the local registry's file:// URIs: refused before kubectl runs; nothing changes.
    applied = cli("canary", "start", "--model-version", "2", "--percent", "10", "-c", str(path), "--apply",
                   check=False)
    assert applied.returncode == 2 and "nothing was changed" in applied.stderr
    assert registry.alias_version(config.registry.student_name, CANARY_ALIAS) is None


def test_apply_leaves_the_registry_alone_when_kubectl_fails(registry_config, tmp_path, monkeypatch):
    from relevance.serving.canary.rollout import apply

    config, registry = registry_config
    plan = plan_start(config, registry, 2, 10)
    plan.patch["spec"]["predictor"]["model"]["storageUri"] = "s3://models/student/2/onnx/model_repository"
    kubeconfig = tmp_path / "no-cluster"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(ValueError, match="kubectl patch inferenceservice relevance-student .* failed"):
        apply(config, plan)
    assert registry.alias_version(config.registry.student_name, CANARY_ALIAS) is None


def test_a_plan_moves_the_registry_only_if_the_canary_is_still_the_one_it_was_made_for(registry_config):
    from relevance.platform.registry import CHAMPION

    config, registry = registry_config
    name = config.registry.student_name
    plan_start(config, registry, 2, 10).apply_registry()
    promote, abort = plan_promote(config, registry), plan_rollback(config, registry, analysed=2)
    registry.client.delete_registered_model_alias(name, CANARY_ALIAS)  # someone ended the canary meanwhile
    for plan in (promote, abort):
        with pytest.raises(CanaryError, match="now names nothing"):
            plan.apply_registry()
    assert registry.alias_version(name, CHAMPION) == 1
    with pytest.raises(CanaryError, match="decided for .* v2, but the 'canary' alias now names nothing"):
        plan_rollback(config, registry, analysed=2)


def test_apply_sends_nothing_when_the_canary_alias_moved_since_the_plan(registry_config):
    """The traffic must not move on a plan whose canary someone else ended: the registry step would then refuse,
    and the old advice (finish the registry step by hand) would undo the other person's action."""
    from relevance.serving.canary.rollout import apply

    config, registry = registry_config
    name = config.registry.student_name
    plan_start(config, registry, 2, 10).apply_registry()
    promote = plan_promote(config, registry, analysed=2)
    registry.client.delete_registered_model_alias(name, CANARY_ALIAS)
    sent = []
    with pytest.raises(CanaryError, match="now names nothing"):
        apply(config, promote, send=lambda plan: sent.append(plan) or "sent")
    assert sent == []

    plan_start(config, registry, 2, 10).apply_registry()
    abort = plan_rollback(config, registry, analysed=2)

    def send_then_someone_acts(plan):
        registry.client.delete_registered_model_alias(name, CANARY_ALIAS)  # between the send and the registry step
        return "sent"

    with pytest.raises(CanaryError, match="someone else acted .* do not finish this step by hand"):
        apply(config, abort, send=send_then_someone_acts)
