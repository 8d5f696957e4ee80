"""A local canary end to end: two different students served for real behind the weighted splitter."""

from __future__ import annotations

import json

from relevance.serving.canary import analysis

from relevance.config import RunConfig


def test_local_canary_with_two_students(two_students, cli, tmp_path):
    """Champion: a tiny run's student; challenger: a student distilled from the same labels with a different
    architecture and training. Both serve for real behind the splitter; the analysis decides."""
    champion = two_students.config
    out = tmp_path / "canary"
    result = cli("canary", "local", "--config", str(two_students.config_path), "--champion-bundle",
                 str(two_students.bundles["champion"]), "--challenger-bundle", str(two_students.bundles["challenger"]),
                 "--feature-repo", str(two_students.feature_repo), "--percent", "30", "--requests", "60",
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
