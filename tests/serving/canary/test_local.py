"""A local canary end to end: two different students served for real behind the weighted splitter; and the loop as
the library functions `relevance canary local` calls (bundles, judge, analyse once or serve), without servers."""

from __future__ import annotations

import json

import pytest
from relevance.serving.canary import analysis, local

from relevance.config import RunConfig


@pytest.mark.slow  # two students trained and served (about two minutes): `make test-slow`
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


# ---- the loop as a library function (what `relevance canary local` calls), without servers ----------------------


def test_bundles_come_from_the_registry_and_a_missing_one_is_named_before_anything_starts(registry_config, tmp_path):
    config, _ = registry_config  # a champion, no challenger
    champion = local.registry_bundle(config, "champion", tmp_path)
    assert champion.name == "onnx" and (champion.parent / "manifest.json").exists()
    with pytest.raises(ValueError, match="no --challenger-bundle and the registry has no 'challenger' for "
                                         "relevance-student"):
        local.run_local(config, ["--profile", "quick"])
    assert not (tmp_path / "run").exists(), "no dataset prepared, no server started"


def test_the_judge_is_the_run_teacher_unless_turned_off(tmp_path):
    config = RunConfig(workdir=str(tmp_path / "run"))
    assert local.judge_teacher(config, None, judge=False) is None
    assert local.judge_teacher(RunConfig(canary={"judge_queries": 0}), None, judge=True) is None
    with pytest.raises(FileNotFoundError, match=f"teacher {tmp_path / 'run' / 'teacher'} not found: pass --teacher"):
        local.judge_teacher(config, None, judge=True)


def test_run_local_analyses_once_or_serves_for_the_watch(tmp_path, monkeypatch):
    import relevance.chain

    config = RunConfig(workdir=str(tmp_path / "run"))
    calls = []
    chain = type("Chain", (), {"dataset": lambda self, **kw: "data"})
    monkeypatch.setattr(relevance.chain, "Chain", lambda config: chain())
    monkeypatch.setattr(local, "judge_teacher", lambda config, teacher_dir, judge: ("judge", teacher_dir, judge))
    monkeypatch.setattr(local, "run_local_canary", lambda *args, **kwargs: calls.append(("once", args)) or {})
    monkeypatch.setattr(local, "serve_local_canary", lambda *args, **kwargs: calls.append(("serve", args)) or {})
    faults = local.Faults(5.0)
    local.run_local(config, ["--profile", "quick"], tmp_path / "a", tmp_path / "b", percent=30, requests=7,
                    faults=faults)
    local.run_local(config, ["--profile", "quick"], tmp_path / "a", tmp_path / "b", tmp_path / "repo",
                    out_dir=tmp_path / "out", serve=True)
    run = tmp_path / "run"
    assert calls == [
        ("once", (config, ["--profile", "quick"], tmp_path / "a", tmp_path / "b", run / "feature_repo", "data",
                  ("judge", None, True), 30, 7, run / "canary-local")),
        ("serve", (config, ["--profile", "quick"], tmp_path / "a", tmp_path / "b", tmp_path / "repo", "data", 10,
                   200, tmp_path / "out", None)),
    ]


def test_serving_the_loop_writes_its_urls_and_says_how_to_watch_it(tmp_path, monkeypatch):
    from contextlib import contextmanager
    from types import SimpleNamespace

    config = RunConfig(workdir=str(tmp_path / "run"))
    splitter = SimpleNamespace(counts={"champion": 3, "challenger": 1}, percent=25)
    canary = local.LocalCanary({"champion": "http://s:1", "challenger": "http://s:2"},
                               {"champion": "http://p:1", "challenger": "http://p:2"}, splitter, "http://split:9",
                               local.Faults())
    started, waited, logged = [], [], []

    @contextmanager
    def fake_local_canary(settings, champion, challenger, repo, percent, out, seed, faults, log):
        started.append((settings, champion, challenger, repo, percent, out))
        yield canary

    query = SimpleNamespace(query="sofa", candidates=["a"], locale="")
    monkeypatch.setattr(local, "local_canary", fake_local_canary)
    monkeypatch.setattr(local, "send_traffic", lambda canary, model, traffic, requests: 1)
    monkeypatch.setattr(analysis, "replay_queries", lambda dataset, config, split: ([query], None, [query]))
    state = local.serve_local_canary(config, ["--profile", "quick"], tmp_path / "a", tmp_path / "b", tmp_path / "r",
                                     "data", 25, 4, tmp_path / "out", log=logged.append,
                                     wait=lambda: waited.append(1))
    assert started == [(["--profile", "quick"], tmp_path / "a", tmp_path / "b", tmp_path / "r", 25, tmp_path / "out")]
    assert waited == [1] and state == canary.to_dict()
    assert json.loads((tmp_path / "out" / "local-canary.json").read_text())["splitter_url"] == "http://split:9"
    assert logged[0] == "traffic: 4 requests {'champion': 3, 'challenger': 1}, failed 1"
    assert logged[1].endswith("relevance canary watch --profile quick --splitter-url http://split:9 "
                              "--champion-url http://p:1 --challenger-url http://p:2")
