"""The automatic rollback end to end on loopback: two real students behind the splitter (`relevance canary local
--serve`), the challenger's revision proxy adding latency; `relevance canary watch` sees the SLO breach, sends the
challenger 0% and restores the registry aliases, with no human step, and its report says why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
import yaml
from relevance.serving.canary.analysis import replay_queries
from relevance.serving.canary.rollout import CANARY, apply, plan_start
from relevance.serving.canary.watch import EXIT_ROLLED_BACK, SplitterTarget, aliases
from relevance.serving.client import rerank

from relevance.chain import Chain
from relevance.config import RunConfig
from relevance.platform.registry import CHAMPION, Registry

DELAY_MS, SLO_MS = 400, 300  # every challenger request gets +400 ms; the p99 SLO is 300 ms


@pytest.mark.slow  # two students trained and served behind the splitter (about a minute): `make test-slow`
def test_watch_rolls_back_a_challenger_that_breaks_an_slo(two_students, cli, wait_for_json, tmp_path):
    settings = {**two_students.config, "registry": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                "canary": {**two_students.config["canary"], "max_p99_ms": SLO_MS}}
    path = tmp_path / "watch.yaml"
    path.write_text(yaml.safe_dump(settings))
    config = RunConfig.model_validate(settings)
    registry, name = Registry(config.registry), config.registry.student_name
    for variant in ("champion", "challenger"):
        registry.register(name, two_students.students[variant], {}, {}, {"feature_version": "1"},
                          alias=CHAMPION if variant == "champion" else None)

    local_out, log = tmp_path / "local", tmp_path / "local.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RELEVANCE_THREADS": "1"}
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "relevance.cli", "canary", "local", "--config", str(path),
             "--champion-bundle", str(two_students.bundles["champion"]),
             "--challenger-bundle", str(two_students.bundles["challenger"]),
             "--feature-repo", str(two_students.feature_repo), "--percent", "30", "--requests", "30",
             "--challenger-delay-ms", str(DELAY_MS), "--serve", "--out", str(local_out)],
            stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        state = wait_for_json(local_out / "local-canary.json", process, log)
        splitter = SplitterTarget(state["splitter_url"])
        # `canary start`: the same plan and registry step as on the cluster, with the splitter as traffic control.
        apply(config, plan_start(config, registry, 2, 30), send=splitter.send)
        assert aliases(registry, name) == {CANARY: 2, CHAMPION: 1}

        out = tmp_path / "watch"
        watch = ["canary", "watch", "-c", path, "--splitter-url", state["splitter_url"], "--champion-url",
                 state["urls"]["champion"], "--challenger-url", state["urls"]["challenger"], "--no-judge",
                 "--rounds", "3", "--every", "1", "--out", out]
        result = cli(*watch, check=False)
        assert result.returncode == EXIT_ROLLED_BACK, result.stdout + result.stderr[-3000:]
        assert "decision: ROLLBACK" in result.stdout and "round 1: rollback" in result.stdout

        report = json.loads((out / "canary-analysis.json").read_text())
        assert report["decision"] == "rollback"
        breach = [r for r in report["reasons"] if r.startswith("SLO breached: challenger p99")]
        assert breach and f"> SLO {SLO_MS:.1f} ms" in breach[0], report["reasons"]
        assert report["slo"]["challenger"]["p99_ms"] >= DELAY_MS and report["slo"]["challenger"]["errors"] == 0
        assert [q["name"] for q in report["quality"]] == ["labelled"]  # the paired replay ran in full
        context = report["context"]
        assert context["action"].startswith(f"rolled back: splitter {state['splitter_url']}: challenger share "
                                            "30% → 0%; registry: relevance-student: canary alias v2 removed")
        assert context["aliases_before"] == {CANARY: 2, CHAMPION: 1}
        assert context["aliases_after"] == {CHAMPION: 1}
        assert (out / "canary-analysis.md").read_text().startswith("# Canary analysis\n\n**Decision: ROLLBACK**")

        # The registry: canary alias gone, champion untouched, the version marked.
        assert aliases(registry, name) == {CHAMPION: 1}
        assert registry.client.get_model_version(name, "2").tags["canary"] == "rolled back"
        # The traffic: nothing reaches the challenger any more.
        split = splitter.traffic()
        assert split.percent == 0
        dataset = Chain(config).dataset()
        labelled, _, _ = replay_queries(dataset, config, config.eval.split)
        assert len(labelled) >= 5
        for query in labelled:
            rerank(state["splitter_url"], config.serving.model_name, query.query, query.candidates, query.locale)
        assert splitter.traffic().detail["requests"] == {
            "champion": split.detail["requests"]["champion"] + len(labelled),
            "challenger": split.detail["requests"]["challenger"]}

        # Idempotent: the next round finds no canary and changes nothing, the report included.
        written = (out / "canary-analysis.json").read_text()
        again = cli(*watch, check=False)
        assert again.returncode == 0 and "no 'canary' alias" in again.stdout, again.stdout + again.stderr[-2000:]
        assert (out / "canary-analysis.json").read_text() == written and aliases(registry, name) == {CHAMPION: 1}
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=60)
    assert returncode == 0, log.read_text()[-3000:]
    for url in (*state["urls"].values(), *state["servers"].values(), state["splitter_url"]):  # all stopped
        try:
            httpx.get(f"{url}/v2/health/ready", timeout=2)
        except httpx.HTTPError:
            continue
        raise AssertionError(f"{url} still answers after `canary local --serve` stopped")
