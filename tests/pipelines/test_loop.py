"""The production loop end to end on loopback, with tiny models: a first student from the pipeline (kfp.local)
promoted by hand, its served traffic captured, the monitor with a judge, served pairs to human grading and back,
a refresh run (`relevance pipeline run --local --refresh`) that registers a challenger and starts its canary, and
the canary watch acting on its own decision. A refresh with nothing new to learn stops before any training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from relevance.platform.registry import CHALLENGER, CHAMPION, Registry

CANARY_SETTINGS = {"ndcg_k": 10, "judge_queries": 0, "min_queries": 5, "bootstrap_samples": 500,
                   "max_p99_ms": 5000, "max_p99_ratio": 50, "refresh_percent": 30}
ENV = {"HF_HUB_OFFLINE": "1", "RELEVANCE_THREADS": "1", "RELEVANCE_CPU_BF16": "0"}


def _pipeline_run(cli, config: Path, root: Path, *extra) -> tuple[subprocess.CompletedProcess, Path | None]:
    result = cli("pipeline", "run", "--local", "--config", config, "--pipeline-root", root, *extra, check=False)
    runs = sorted((p for p in root.glob("*/") if p.is_dir()), key=lambda p: p.stat().st_mtime) if root.exists() else []
    return result, runs[-1] if runs else None


@pytest.mark.slow  # three pipeline runs, a served student, the monitor, the canary loop: `make test-slow`
def test_served_traffic_becomes_labels_a_refreshed_student_and_a_canary_the_watch_decides(
        cli, tiny_overrides, label_studio_export, wait_for_json, tmp_path):
    from relevance.common.processes import wait_until
    from relevance.config import RunConfig
    from relevance.serving.canary.rollout import CANARY
    from relevance.serving.canary.watch import EXIT_NOT_DONE, EXIT_ROLLED_BACK, aliases
    from relevance.serving.process import free_port, model_server
    from relevance.traffic import read_traffic

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Tiny models: the gate lets a refreshed student through on any nDCG, so that the canary decides.
    settings = tiny_overrides(registry={"tracking_uri": uri, "min_gain_over_champion": -1.0},
                              canary=CANARY_SETTINGS, eval={"ks": [5, 10]}, serving={"max_candidates": 50,
                                                                                     "traffic_segment_seconds": 0.3})
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({"profile": "quick", "workdir": str(tmp_path / "first"), **settings}))

    # 1. The first student: the pipeline registers it as challenger; the first deployment promotes it by hand.
    result, run1 = _pipeline_run(cli, first, tmp_path / "root1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cli("registry", "promote", "--tracking-uri", uri)
    config = RunConfig.model_validate(yaml.safe_load(first.read_text()))
    registry, name = Registry(config.registry), config.registry.student_name
    assert aliases(registry, name) == {CHAMPION: 1}

    # The loop's workdir: the dataset the champion was trained on (grades are imported into it) and its teacher.
    workdir = tmp_path / "loop"
    shutil.copytree(run1 / "prepare-data/dataset", workdir / "data")
    shutil.copytree(run1 / "finetune-teacher/teacher", workdir / "teacher")
    loop = tmp_path / "loop.yaml"
    loop.write_text(yaml.safe_dump({"profile": "quick", "workdir": str(workdir), **settings,
                                    "data": {**settings["data"], "source": "prepared",
                                             "path": str(workdir / "data")},
                                    "monitor": {"min_records": 20, "reference_queries": 20, "candidates": 50,
                                                "judge_lists": 20, "judge_k": 5, "judge_depth": 20,
                                                "judge_min_agreement": 0.0}}))

    # 2. A refresh with nothing new to learn stops at its check, before anything trains or registers.
    result, run = _pipeline_run(cli, loop, tmp_path / "root-nothing-new", "--refresh")
    assert result.returncode == 1 and "no new judgments" in result.stdout + result.stderr, result.stderr[-3000:]
    assert not (run / "finetune-teacher").exists() and [v.version for v in registry.versions(name)] == [1]

    # 3. The champion serves and captures its traffic: queries it was trained on, and new ones.
    bundle, repo = run1 / "export-onnx/onnx_model", run1 / "compute-features/feature_repo"
    traffic = tmp_path / "traffic"
    from relevance.data.schema import Dataset
    from relevance.models.bm25 import BM25Index

    dataset = Dataset.load(workdir / "data", with_impressions=False)
    index = BM25Index.load(bundle / "bm25")
    queries = sorted(set(dataset.query_text.reindex(dataset.split("train")["query_id"])))[:30]
    words = sorted({w for title in dataset.items["title"].head(40) for w in title.lower().split()})
    queries += [f"{a} {b} new" for a, b in zip(words[::2], words[1::2])][:15]
    with model_server(["serve", "--config", str(first), "--bundle", str(bundle), "--feature-repo", str(repo),
                       "--traffic-dir", str(traffic)], free_port(), tmp_path / "serve.log", ENV) as url:
        with httpx.Client(timeout=30) as client:
            for n, query in enumerate(queries * 2):
                candidates = index.top_k(query, 30)[0].tolist() or dataset.items["item_id"].head(20).tolist()
                response = client.post(f"{url}/v1/models/{config.serving.model_name}:predict",
                                       headers={"x-request-id": f"loop-{n}"},
                                       json={"instances": [{"query": query, "candidates": candidates}]})
                assert response.status_code == 200, response.text
    wait_until(lambda: len(read_traffic(traffic)) == 2 * len(queries), "every request's record")  # compacted at stop

    # 4. The monitor: drift and the judge's verdict on the served lists.
    monitored = cli("monitor", "--config", loop, "--bundle", bundle, "--feature-repo", repo, "--traffic-dir",
                    traffic, "--since", "2000-01-01T00:00:00+00:00", "--judge", workdir / "teacher",
                    "--out", tmp_path / "monitor", check=False)
    report = json.loads((tmp_path / "monitor/monitor.json").read_text())
    assert monitored.returncode in (0, 3), monitored.stdout + monitored.stderr[-3000:]
    assert report["records_of_this_student"] == 2 * len(queries) and report["coverage"]["unseen_queries"] > 0
    # The tiny teacher grades everything alike and is refused as a judge (test_monitor.py checks the figures).
    judged = report["judged"]
    assert "same grade" in judged.get("refused", "") or (
        judged["judged_lists"] == 20 and any(s.startswith("unseen|") for s in judged["strata"])), judged

    # 5. Served pairs to human grading, and the grades back into the loop's dataset.
    cli("select", "--config", loop, "--from-traffic", traffic, "--budget", 40, "--per-query", 2, "--strategy",
        "entropy", "--top-k", 5, "--out", tmp_path / "project")
    tasks = json.loads((tmp_path / "project/tasks.json").read_text())
    assert tasks
    (tmp_path / "export.json").write_text(json.dumps(label_studio_export(tasks, dataset.info.grade_names)))
    cli("import-labels", tmp_path / "export.json", "--round", 1, "--config", loop)

    # 6. The refresh run: it learns from the new grades, registers a challenger and puts it under canary.
    result, run2 = _pipeline_run(cli, loop, tmp_path / "root2", "--refresh")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no cluster (kfp.local)" in result.stdout + result.stderr
    assert aliases(registry, name) == {CHAMPION: 1, CHALLENGER: 2, CANARY: 2}
    tags = {v.version: v.tags for v in registry.versions(name)}
    assert tags[2]["data_hash"] != tags[1]["data_hash"]  # trained on the imported grades

    # 7. The local loop serves champion v1 against the canary v2; the watch decides and acts, nobody else.
    local_out, log = tmp_path / "local", tmp_path / "local.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "relevance.cli", "canary", "local", "--config", str(loop), "--feature-repo",
             str(run2 / "compute-features/feature_repo"), "--percent", str(CANARY_SETTINGS["refresh_percent"]),
             "--requests", "40", "--serve", "--out", str(local_out)],
            stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    try:
        state = wait_for_json(local_out / "local-canary.json", process, log)
        watch = cli("canary", "watch", "-c", loop, "--splitter-url", state["splitter_url"], "--champion-url",
                    state["urls"]["champion"], "--challenger-url", state["urls"]["challenger"], "--no-judge",
                    "--out", tmp_path / "watch", check=False)
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert watch.returncode != EXIT_NOT_DONE and watch.returncode in (0, EXIT_ROLLED_BACK), \
        watch.stdout + watch.stderr[-3000:]
    decision = json.loads((tmp_path / "watch/canary-analysis.json").read_text())["decision"]
    after = aliases(registry, name)
    expected = {"promote": {CHAMPION: 2}, "rollback": {CHAMPION: 1}, "hold": {CHAMPION: 1, CANARY: 2}}[decision]
    assert {k: v for k, v in after.items() if k != CHALLENGER} == expected, (decision, after)
