"""The whole chain on tiny random models and a small synthetic shop, through the real CLI.

Also: `relevance evaluate` on a judgments file the model never saw (Home Depot column names), a labelling run
killed mid-way that resumes with nothing lost or duplicated, and clear errors for bad input.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from relevance.data.schema import prob_columns

CLI = [sys.executable, "-m", "relevance.cli"]


def test_run_writes_every_artifact_and_a_complete_report(finished_run):
    tmp_path, _ = finished_run
    run = tmp_path / "run"
    for artifact in ("data/dataset.json", "teacher/manifest.json", "teacher/head.safetensors", "pool.parquet",
                     "labels/labels.json", "student/manifest.json", "student_human_only/manifest.json",
                     "report.json", "report.md", "confusion.png"):
        assert (run / artifact).exists(), artifact
    report = json.loads((run / "report.json").read_text())
    calibrated = {"teacher", "student", "student_human_only", "gbdt_multiclass", "gbdt_lambdamart"}
    # every calibrated model also reported before its calibration, to show what calibration did
    assert set(report["models"]) == calibrated | {f"{m} (uncalibrated)" for m in calibrated} | {"bm25", "majority"}
    assert (run / "reliability.png").exists() and "reliability.png" in (run / "report.md").read_text()
    for block in report["models"].values():
        overall = block["overall"]
        assert 0 <= overall["accuracy"] <= 1 and 0 <= overall["macro_f1"] <= 1
        assert {"ndcg@20", "p@5", "rmse_grade", "auroc_ge1", "auroc_ge4", "ece_top", "ece_classwise"} <= set(overall)
        assert set(block["per_segment"]) == {"en_US", "de_DE", "fr_FR", "ja_JP"}
    assert report["pairs_per_s"]["student"] > 0 and report["pairs_per_s"]["teacher"] > 0


def test_labels_cover_the_pool_exactly_once(finished_run):
    tmp_path, _ = finished_run
    run = tmp_path / "run"
    pool = pd.read_parquet(run / "pool.parquet")
    labels = pd.concat(pd.read_parquet(p) for p in sorted((run / "labels").glob("shard-*.parquet")))
    assert len(labels) == len(pool)
    assert not labels.duplicated(["query_id", "item_id"]).any()
    judged = pd.read_parquet(run / "data/judgments.parquet")
    assert pool.merge(judged, on=["query_id", "item_id"]).empty, "the pool must exclude judged pairs"
    held_out = judged.loc[judged["split"].isin(["valid", "test"]), "query_id"]
    assert not pool["query_id"].isin(held_out).any(), "evaluation queries never reach the student"
    assert (labels[prob_columns(5)].sum(axis=1) - 1).abs().max() < 1e-4
    teacher = json.loads((run / "teacher/manifest.json").read_text())
    assert (labels["teacher_version"] == teacher["teacher_version"]).all()
    student = json.loads((run / "student/manifest.json").read_text())
    assert student["teacher_version"] == teacher["teacher_version"]


def test_evaluate_on_an_unseen_homedepot_shaped_file(cli, finished_run, tmp_path):
    run_dir = finished_run[0] / "run"
    items = pd.read_parquet(run_dir / "data/items.parquet")
    queries = pd.read_parquet(run_dir / "data/queries.parquet")
    judged = pd.read_parquet(run_dir / "data/judgments.parquet")
    test = judged[judged["split"] == "test"].merge(queries, on="query_id")
    # Home Depot column names, as in ../shared/data/homedepot: product_id instead of item_id.
    test.rename(columns={"item_id": "product_id"})[["query_id", "query", "product_id", "grade", "split"]] \
        .to_parquet(tmp_path / "judgments.parquet")
    items.rename(columns={"item_id": "product_id"}).to_parquet(tmp_path / "products.parquet")
    for model in ("teacher", "student"):
        out = tmp_path / f"{model}.json"
        cli("evaluate", "--model", str(run_dir / model), "--items", str(tmp_path / "products.parquet"),
             "--judgments", str(tmp_path / "judgments.parquet"), "--out", str(out),
             "--cache-dir", str(tmp_path / "cache"))
        report = json.loads(out.read_text())
        assert report["kind"] == model and report["overall"]["num_pairs"] == len(test)
    # The standalone evaluation agrees with the run's own report.
    run_report = json.loads((run_dir / "report.json").read_text())
    standalone = json.loads((tmp_path / "teacher.json").read_text())
    assert standalone["overall"]["accuracy"] == pytest.approx(run_report["models"]["teacher"]["overall"]["accuracy"])


def test_evaluate_rejects_bad_input_with_a_clear_message(cli, finished_run, tmp_path):
    run_dir = finished_run[0] / "run"
    items = tmp_path / "items.parquet"
    pd.read_parquet(run_dir / "data/items.parquet").to_parquet(items)
    bad = pd.DataFrame({"query_id": ["q1"], "query": ["red sofa"], "item_id": ["nope"], "grade": [7]})
    bad.to_parquet(tmp_path / "bad.parquet")
    result = cli("evaluate", "--model", str(run_dir / "teacher"), "--items", str(items), "--judgments",
                  str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "out.json"), check=False)
    assert result.returncode == 2 and "out of range" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.json").exists(), "nothing is written on bad input"
    no_grade = bad.drop(columns="grade")
    no_grade.to_parquet(tmp_path / "nograde.parquet")
    result = cli("evaluate", "--model", str(run_dir / "teacher"), "--items", str(items), "--judgments",
                  str(tmp_path / "nograde.parquet"), "--out", str(tmp_path / "out.json"), check=False)
    assert result.returncode == 2 and "grade" in result.stderr


def test_export_writes_checked_onnx_models(cli, finished_run):
    tmp_path, config = finished_run
    result = cli("export", "--config", str(config))
    assert "student.onnx" in result.stdout and "query_encoder.onnx" in result.stdout
    assert (tmp_path / "run/export/student.onnx").exists() and (tmp_path / "run/export/query_encoder.onnx").exists()
    # The in-process graph (one query row), fp32 only, checked at export like the others.
    export = tmp_path / "run/export"
    assert (export / "student_one_query.onnx").exists() and not (export / "student_one_query-int8.onnx").exists()
    assert json.loads((export / "bundle.json").read_text())["max_abs_diff"]["student_one_query"] < 1e-4


def test_a_student_distilled_from_the_teacher_and_gbdt_labeller(cli, finished_run, tmp_path):
    """Same data, teacher and labels; the student learns from the teacher × GBDT ensemble instead."""
    import shutil

    source, config = finished_run[0] / "run", yaml.safe_load(finished_run[1].read_text())
    shutil.copytree(source, tmp_path / "run", ignore=shutil.ignore_patterns("student", "export"))
    config.update(workdir=str(tmp_path / "run"))
    config["student"]["labeller"] = "teacher+gbdt"
    path = tmp_path / "labeller.yaml"
    path.write_text(yaml.safe_dump(config))
    cli("train-student", "--config", str(path))
    labeller = json.loads((tmp_path / "run/labeller/manifest.json").read_text())
    assert labeller["member_kinds"] == ["teacher", "gbdt"] and all(w >= 0 for w in labeller["weights"])
    student = json.loads((tmp_path / "run/student/manifest.json").read_text())
    assert student["labeller"]["ensemble_version"] == labeller["ensemble_version"]
    assert "labeller" in student["trained_on"] and student["metrics"]["calibration"]["method"] == "temperature"
    report = json.loads(cli("evaluate", "--model", tmp_path / "run/labeller", "--items",
                            tmp_path / "run/data/items.parquet", "--judgments", _judgments_file(tmp_path / "run"),
                            "--out", tmp_path / "labeller.json").stdout and (tmp_path / "labeller.json").read_text())
    assert report["kind"] == "ensemble" and 0 <= report["overall"]["accuracy"] <= 1


def _judgments_file(run: Path) -> Path:
    """The run's judgments with their query text, the columns `relevance evaluate` reads."""
    judgments = pd.read_parquet(run / "data/judgments.parquet").merge(
        pd.read_parquet(run / "data/queries.parquet")[["query_id", "query"]], on="query_id")
    path = run.parent / "judgments-with-text.parquet"
    judgments[judgments["split"] == "test"].to_parquet(path)
    return path


def test_changed_settings_never_silently_reuse_an_output(cli, finished_run):
    tmp_path, config = finished_run
    changed = yaml.safe_load(config.read_text())
    changed["teacher"]["epochs"] = 5
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    result = cli("train-teacher", "--config", str(path), check=False)
    assert result.returncode == 2 and "teacher output was made with other settings" in result.stderr


def test_unknown_backbone_and_bad_config_fail_cleanly(run_settings, cli, tmp_path, tiny_bert, write_config):
    config = write_config(tmp_path, run_settings(), teacher={"backbone": str(tmp_path / "missing-model")})
    cli("prepare", "--config", str(config))
    result = cli("train-teacher", "--config", str(config), check=False)
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "run/teacher").exists()
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"teacher": {"epohcs": 3}}))
    result = cli("run", "--config", str(typo), check=False)
    assert result.returncode == 2 and "epohcs" in result.stderr


def test_killed_labelling_resumes_without_losing_or_duplicating_rows(cli, finished_run, tmp_path):
    """SIGKILL the labeller after its first shard lands, resume, and compare with the uninterrupted run."""
    source_run, config = finished_run[0] / "run", finished_run[1]
    labels_dir = source_run / "labels"
    reference = pd.concat(pd.read_parquet(p) for p in sorted(labels_dir.glob("shard-*.parquet")))
    shards = sorted(labels_dir.glob("shard-*.parquet"))
    assert len(shards) >= 3, "the test needs several shards"
    for path in [*shards, labels_dir / "labels.json"]:
        path.unlink()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RELEVANCE_THREADS": "1"}
    process = subprocess.Popen([*CLI, "label", "--config", str(config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(labels_dir.glob("shard-*.parquet")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before_kill = list(labels_dir.glob("shard-*.parquet"))
    assert 1 <= len(finished_before_kill) < len(shards), "kill must land mid-way"
    from relevance.data.schema import DataContractError
    from relevance.labels.labelling import read_labels

    with pytest.raises(DataContractError, match="labelled rows of a"):
        read_labels(labels_dir, 5, pool_path=source_run / "pool.parquet")  # distillation refuses a partial set
    cli("label", "--config", str(config))
    resumed = read_labels(labels_dir, 5, pool_path=source_run / "pool.parquet")
    assert not list(labels_dir.glob("*.tmp")), "no partial shard is left behind"
    key = ["query_id", "item_id"]
    assert len(resumed) == len(reference), "0 lost"
    assert not resumed.duplicated(key).any(), "0 duplicated"
    merged = reference.merge(resumed, on=key, suffixes=("", "_resumed"))
    assert len(merged) == len(reference)
    for column in prob_columns(5):
        assert (merged[column] - merged[f"{column}_resumed"]).abs().max() < 1e-4


@pytest.mark.parametrize("strategy", ["entropy", "disagreement", "diverse"])
def test_select_then_import_labels_round_trip(cli, finished_run, tmp_path, strategy):
    """`relevance select` writes a Label Studio project; its JSON export comes back through `import-labels`.

    The export is written here (in 1.23.2's shape), so that every strategy, the per-query cap, the stale-teacher
    refusal and a refused import that leaves the judgments unchanged run in the default suite; the same loop
    through a running Label Studio is tests/labels/test_label_studio.py (make test-slow)."""
    import shutil

    source, config = finished_run[0] / "run", yaml.safe_load(finished_run[1].read_text())
    shutil.copytree(source, tmp_path / "run", ignore=shutil.ignore_patterns("export"))
    config.update(workdir=str(tmp_path / "run"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli("select", "--config", str(path), "--budget", "12", "--strategy", strategy, "--per-query", "2")
    project = tmp_path / "run/label-studio"
    tasks = json.loads((project / "tasks.json").read_text())
    assert len(tasks) == 12 and "predictions" not in tasks[0]
    assert pd.DataFrame([t["data"] for t in tasks]).groupby("query_id").size().max() <= 2
    grades = json.loads((tmp_path / "run/data/dataset.json").read_text())["grade_names"]
    export = [{"id": n, "data": task["data"], "annotations": [
        {"id": 10 * n + a, "completed_by": a, "was_cancelled": False, "result": [
            {"id": f"x{n}{a}", "from_name": "grade", "to_name": "item", "type": "choices", "origin": "manual",
             "value": {"choices": [grades[(n + a) % len(grades)]]}}]} for a in (1, 2)]}
        for n, task in enumerate(tasks)]
    (tmp_path / "export.json").write_text(json.dumps(export))
    before = pd.read_parquet(tmp_path / "run/data/judgments.parquet")
    out = cli("import-labels", str(tmp_path / "export.json"), "--round", "1", "--config", str(path)).stdout
    assert "24 rating(s) by 2 annotator(s)" in out and "12 new train judgment(s)" in out
    after = pd.read_parquet(tmp_path / "run/data/judgments.parquet")
    assert len(after) == len(before) + 12 and set(after.loc[after["round"] == 1, "split"]) == {"train"}
    if strategy == "entropy":  # the teacher never saw the new judgments: the chain must not reuse it
        stale = cli("label", "--config", str(path), check=False)
        assert stale.returncode == 2 and "judgments changed since the teacher was trained" in stale.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**export[0], "annotations": [{**export[0]["annotations"][0], "result": [
        {**export[0]["annotations"][0]["result"][0], "value": {"choices": ["superb"]}}]}]}]))
    failed = cli("import-labels", str(bad), "--round", "2", "--config", str(path), check=False)
    assert failed.returncode == 2 and "not one of the rubric" in failed.stderr
    assert pd.read_parquet(tmp_path / "run/data/judgments.parquet").equals(after)


def test_a_distillation_killed_with_sigkill_resumes_from_its_checkpoint(cli, finished_run, tmp_path):
    """SIGKILL `train-student` once its first checkpoint lands, rerun it: it resumes mid-training from the
    checkpoint (the pair store and tables already written are reused) and ends with the student an uninterrupted
    run gets."""
    import shutil

    from safetensors.numpy import load_file

    source, config = finished_run[0] / "run", yaml.safe_load(finished_run[1].read_text())
    config["student"].update(batch_size=8, epochs=3, early_stopping_patience=5, checkpoint_every_batches=5)
    paths = {}
    for name in ("killed", "straight"):
        shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("student*", "export"))
        (tmp_path / name / "steps.json").unlink()  # other student settings: a new step record
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({**config, "workdir": str(tmp_path / name)}))
    cli("train-student", "--config", str(paths["straight"]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RELEVANCE_THREADS": "1"}
    process = subprocess.Popen([*CLI, "train-student", "--config", str(paths["killed"])], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed/.student.distill/checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not checkpoint.exists():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not (tmp_path / "killed/student/manifest.json").exists(), "killed mid-way"
    resumed = cli("train-student", "--config", str(paths["killed"]))
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert not (tmp_path / "killed/.student.distill").exists(), "the work directory goes once the student is saved"
    straight = load_file(tmp_path / "straight/student/model.safetensors")
    killed = load_file(tmp_path / "killed/student/model.safetensors")
    assert straight.keys() == killed.keys()
    for name in straight:
        np.testing.assert_array_equal(killed[name], straight[name], err_msg=name)


def test_judge_eval_compares_two_students_and_refuses_a_weak_judge(cli, finished_run, tmp_path):
    run, config = finished_run[0] / "run", finished_run[1]
    common = ["judge-eval", "--config", str(config), "--baseline", run / "student_human_only", "--candidate",
              run / "student", "--queries", "24", "--out", tmp_path]
    refused = cli(*common, "--min-agreement", "0.99", check=False)
    assert refused.returncode == 2 and "below the floor 0.99" in refused.stderr
    assert not (tmp_path / "judge-eval.json").exists()
    out = cli(*common, "--min-agreement", "0", "--allocation", "proportional").stdout
    report = json.loads((tmp_path / "judge-eval.json").read_text())
    assert report["pilot_queries"] + report["sampled_queries"] <= 24 and report["scored_queries"] >= 2
    assert report["difference"]["ci_low"] <= report["difference"]["mean"] <= report["difference"]["ci_high"]
    # Every figure weights the strata like the estimate: the two means differ by the estimated difference, and
    # the simple-random-sampling comparison reports the same mean (its point is the variance).
    assert report["candidate_mean"] - report["baseline_mean"] == pytest.approx(report["difference"]["mean"], abs=1e-9)
    assert report["srs_difference"]["mean"] == pytest.approx(report["difference"]["mean"], abs=1e-9)
    # Agreement on the judge-check pairs, which the teacher (the judge here) set aside from early stopping and
    # calibration; queries from the judge holdout, which the pool (so the distilled student) never saw.
    from relevance.data.schema import Dataset

    dataset = Dataset.load(run / "data", with_impressions=False)
    check = dataset.judge_check_pairs().merge(dataset.queries, on="query_id")
    measured = report["judge_agreement"]["measured_on"]
    assert measured["untouched"] and measured["pairs"] == len(check) == report["judge_agreement"]["overall"]["pairs"]
    assert set(report["judge_agreement"]["per_group"]) == set(check["locale"])  # per locale of those queries
    teacher = json.loads((run / "teacher/manifest.json").read_text())
    assert teacher["calibration"]["fitted_on"]["pairs"] == len(dataset.teacher_valid())
    pool_queries = set(pd.read_parquet(run / "pool.parquet")["query_id"])
    holdout = set(dataset.judge_holdout_queries()["query_id"])
    assert report["population_queries"] <= len(holdout) and not holdout & pool_queries
    assert report["verdict"] in out and "Simple random sampling" in out and "judge-holdout" in out


def test_judge_eval_replays_a_served_bundle_as_the_server_scores_it(cli, finished_run, tmp_path):
    """A serving bundle is a ranker too: scored through the serving path (ONNX encoder and student, one request
    per query), it gives the probabilities of the student it was exported from, and judge-eval compares it."""
    from relevance.data.schema import Dataset
    from relevance.evaluation.evaluate import BundleScorer, load_scorer

    run, config = finished_run[0] / "run", finished_run[1]
    cli("export", "--config", str(config))
    dataset = Dataset.load(run / "data", with_impressions=False)
    pairs = dataset.split("valid")
    bundle = load_scorer(run / "export", dataset.items, run / "embeddings")
    assert isinstance(bundle, BundleScorer)
    served = bundle.score(pairs, dataset.query_text).probs
    trained = load_scorer(run / "student", dataset.items, run / "embeddings").score(pairs, dataset.query_text)
    np.testing.assert_allclose(served, trained.probs, atol=1e-3)  # the ONNX student carries its calibration

    cli("judge-eval", "--config", str(config), "--baseline", run / "student_human_only", "--candidate",
        run / "export", "--queries", "24", "--min-agreement", "0", "--out", tmp_path)
    report = json.loads((tmp_path / "judge-eval.json").read_text())
    assert report["candidate"] == str(run / "export") and report["scored_queries"] >= 2
    judged = pairs.merge(dataset.queries, on="query_id")[["query_id", "query", "item_id", "grade"]]
    judged.to_parquet(tmp_path / "valid.parquet")
    cli("evaluate", "--model", run / "export", "--items", run / "data/items.parquet", "--judgments",
        tmp_path / "valid.parquet", "--out", tmp_path / "bundle.json", "--cache-dir", run / "embeddings")
    evaluated = json.loads((tmp_path / "bundle.json").read_text())
    assert evaluated["kind"] == "serving-bundle" and evaluated["overall"]["num_pairs"] == len(pairs)

    manifest = json.loads((run / "export/bundle.json").read_text())
    old = tmp_path / "old-bundle"
    old.mkdir()
    (old / "bundle.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "text"}))
    refused = cli("judge-eval", "--config", str(config), "--baseline", run / "student_human_only", "--candidate",
                  old, "--queries", "24", "--min-agreement", "0", "--out", tmp_path / "o", check=False)
    assert refused.returncode == 2 and "re-export" in refused.stderr
