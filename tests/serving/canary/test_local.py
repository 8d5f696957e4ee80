"""A local canary end to end: two different students served for real behind the weighted splitter."""

from __future__ import annotations

import copy
import json
import shutil

import yaml
from relevance.serving.canary import analysis

from relevance.config import RunConfig


def test_local_canary_with_two_students(run_settings, cli, tmp_path, tiny_bert):
    """Champion: a tiny run's student; challenger: a student distilled from the same labels with a different
    architecture and training. Both serve for real behind the splitter; the analysis decides."""
    settings = run_settings(items=200, judged_queries=60, impressions=800)
    champion = {"profile": "quick", "workdir": str(tmp_path / "champion"), **settings,
                "serving": {"max_candidates": 50}, "eval": {"ks": [5, 10]},
                "canary": {"ndcg_k": 10, "judge_queries": 20, "judge_top_k": 5, "min_queries": 5,
                           "bootstrap_samples": 500, "max_p99_ms": 5000, "max_p99_ratio": 50}}
    champion_config = tmp_path / "champion.yaml"
    champion_config.write_text(yaml.safe_dump(champion))
    cli("run", "--config", str(champion_config))
    cli("features", "--config", str(champion_config))
    cli("export", "--config", str(champion_config))
    # Same data, teacher and labels; the students are trained anew.
    shutil.copytree(tmp_path / "champion", tmp_path / "challenger",
                    ignore=shutil.ignore_patterns("export", "student", "student_human_only"))
    challenger = copy.deepcopy(champion)
    challenger["workdir"] = str(tmp_path / "challenger")
    challenger["student"] = {**challenger["student"], "hidden": [8], "epochs": 1}
    challenger_config = tmp_path / "challenger.yaml"
    challenger_config.write_text(yaml.safe_dump(challenger))
    cli("train-student", "--config", str(challenger_config))
    cli("export", "--config", str(challenger_config))

    out = tmp_path / "canary"
    result = cli("canary", "local", "--config", str(champion_config), "--champion-bundle",
                  str(tmp_path / "champion/export"), "--challenger-bundle", str(tmp_path / "challenger/export"),
                  "--feature-repo", str(tmp_path / "champion/feature_repo"), "--percent", "30", "--requests", "60",
                  "--out", str(out))
    report = json.loads((out / "canary-analysis.json").read_text())
    assert report["decision"] in (analysis.PROMOTE, analysis.HOLD, analysis.ROLLBACK)
    assert f"decision: {report['decision'].upper()}" in result.stdout
    split = report["context"]["split_requests"]
    assert split["champion"] + split["challenger"] == 60 and 5 <= split["challenger"] <= 35
    quality = {q["name"]: q for q in report["quality"]}
    labelled, judged = quality["labelled"], quality["teacher judge"]
    assert labelled["queries"] >= 5 and judged["queries"] >= 5
    # Two different students: they disagree somewhere (ranking quality or predicted grades).
    accuracy = labelled["extra"]["accuracy"]
    assert (labelled["champion"], accuracy[0]) != (labelled["challenger"], accuracy[1])
    # Both servers answered the split traffic and the paired replays, without server errors.
    for server in ("champion", "challenger"):
        assert report["slo"][server]["requests"] >= split[server] + labelled["queries"]
        assert report["slo"][server]["errors"] == 0 and report["slo"][server]["p99_ms"] > 0
    # The decision is the rule applied to the evidence it reports.
    evidence = [analysis.QualityEvidence(**q) for q in report["quality"]]
    slo = {k: analysis.SloEvidence(**{f: v[f] for f in ("server", "requests", "errors", "p50_ms", "p99_ms")})
           for k, v in report["slo"].items()}
    config = RunConfig.model_validate(champion).canary
    assert analysis.decide(evidence, slo, config).action == report["decision"]
    assert (out / "canary-analysis.md").read_text().startswith("# Canary analysis")
