"""One evaluation path: `relevance run` (the chain's report) and the pipeline's evaluate step score models with the
same function; the step adds the champion, the GBDT baselines on the student's features (items from a feature
store when one is given) and the challenger gate."""

from __future__ import annotations

import json

import pytest

from relevance.config import RegistryConfig, build_config
from relevance.evaluation.challenger import (
    gate_decision,
    evaluate_run,
    gate_challenger,
    gbdt_baselines,
    largest_ndcg,
)


def test_challenger_gate_needs_thresholds_and_a_win_over_the_champion():
    config = RegistryConfig(min_accuracy=0.4, min_ndcg=0.8)
    good = {"accuracy": 0.5, "ndcg@20": 0.9}
    assert gate_decision(good, None, config, "ndcg@20")[0]
    assert not gate_decision({"accuracy": 0.3, "ndcg@20": 0.9}, None, config, "ndcg@20")[0]
    assert not gate_decision({"accuracy": 0.5, "ndcg@20": 0.7}, None, config, "ndcg@20")[0]
    assert gate_decision(good, {"accuracy": 0.5, "ndcg@20": 0.89}, config, "ndcg@20")[0]
    passed, reason = gate_decision(good, {"accuracy": 0.5, "ndcg@20": 0.9}, config, "ndcg@20")
    assert not passed and "not above" in reason  # a tie keeps the champion


@pytest.fixture(scope="module")
def prepared(run_settings, tmp_path_factory):
    """A small synthetic shop, prepared, and GBDTs on its student features to stand in for the run's models."""
    from relevance.data import prepare
    from relevance.data.schema import Dataset

    root = tmp_path_factory.mktemp("challenger")
    settings = run_settings(items=150, judged_queries=40, impressions=200)
    fast_trees = {"objectives": ["multiclass"], "max_rounds": 40, "early_stopping_rounds": 10}
    config = build_config("quick", {"workdir": str(root / "run"), "eval": {"ks": [5, 10]}, "gbdt": fast_trees,
                                    **{k: settings[k] for k in ("data", "text", "student")}})
    prepare(config.data, root / "data")
    dataset = Dataset.load(root / "data", with_impressions=False)
    models = gbdt_baselines(config, dataset, root / "models", root / "embeddings")
    return config, dataset, models, root


def test_the_pipeline_step_adds_the_champion_the_baselines_and_the_gate(prepared, tmp_path):
    config, dataset, models, _ = prepared
    asked = []

    def item_features(item_ids):  # the feature store's read, as the platform passes it in
        asked.append(item_ids)
        return None

    html = tmp_path / "report.html"
    model = models["gbdt_multiclass"]  # stands in for the student, the teacher and the champion
    outcome = gate_challenger(config, dataset, model, model, html, tmp_path / "work", champion=model,
                              item_features=item_features)
    assert asked == [dataset.items["item_id"].tolist()]
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    assert [m for m in report["models"] if "uncalibrated" not in m] == [
        "student", "teacher", "champion", "gbdt_multiclass", "bm25", "majority"]
    overall = {name: block["overall"] for name, block in report["models"].items()}
    ndcg = largest_ndcg(config)
    assert ndcg == "ndcg@10"
    assert (outcome["gate_passed"], outcome["gate_reason"]) == gate_decision(
        overall["student"], overall["champion"], config.registry, ndcg)
    assert outcome["metrics"]["student_accuracy"] == overall["student"]["accuracy"]
    assert outcome["metrics"]["champion_ndcg_at_10"] == overall["champion"]["ndcg@10"]
    assert outcome["confusion_matrix"] == overall["student"]["confusion_matrix"]
    assert outcome["grade_names"] == dataset.info.grade_names
    assert f"Challenger gate: {'PASS' if outcome['gate_passed'] else 'FAIL'}" in html.read_text()


def test_the_run_and_the_pipeline_score_a_model_the_same_way(prepared, tmp_path):
    """The chain's report (evaluate_run on its models) and the pipeline's give the same numbers for a model."""
    from relevance.chain import Chain

    config, dataset, models, root = prepared
    chain = Chain(config)
    chain_report = chain.report(dataset, {"student": models["gbdt_multiclass"]})
    assert [m for m in chain_report["models"] if "uncalibrated" not in m] == ["student", "bm25", "majority"]
    assert chain.report_path.exists() and chain.report_path.with_suffix(".md").exists()
    gated = evaluate_run(config, dataset, {"student": models["gbdt_multiclass"]}, tmp_path / "report.json",
                         root / "embeddings", champion=models["gbdt_multiclass"])
    assert gated["models"]["student"] == chain_report["models"]["student"]
    assert list(gated["models"])[:3] == ["student", "student (uncalibrated)", "champion"]
    assert gbdt_baselines(config.model_copy(update={"gbdt": config.gbdt.model_copy(update={"enabled": False})}),
                          dataset, tmp_path, tmp_path) == {}
