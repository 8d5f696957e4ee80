"""A canary whose challenger has a new tower, on loopback: the champion's student on the frozen encoder, the
challenger's on towers tuned from the same run's labels (`relevance distil-towers`). Both runs materialize into
one Feast registry and online store (absolute SQLite paths named by FEAST_FS_YAML_FILE_PATH, as a cluster's SQL
registry and Redis are shared), each under its own versioned project tagged with its encoder."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from relevance.serving.canary.local import VARIANT_HEADER, local_canary

from relevance.platform.feature_store import built_encoder, repo_project
from relevance.platform.item_source import FeastItemSource

MODEL = "relevance-student"


def _run_copy(source, root, name: str, settings: dict, ignore: tuple, **student) -> tuple:
    shutil.copytree(source, root / name, ignore=shutil.ignore_patterns(*ignore))
    config = {**settings, "workdir": str(root / name)}
    config["student"] = {**config.get("student", {}), **student}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return root / name, path


@pytest.fixture(scope="module")
def tower_canary(finished_run, cli, tmp_path_factory, shared_feature_store):
    """Two exported runs: ``champion`` (the tiny run's student, frozen encoder) and ``challenger`` (a student on
    towers tuned from the same labels), their features materialized into the shared store, champion first."""
    root = tmp_path_factory.mktemp("tower-canary")
    env = {"FEAST_FS_YAML_FILE_PATH": str(shared_feature_store(root))}
    settings = yaml.safe_load(finished_run[1].read_text())
    champion, champion_config = _run_copy(finished_run[0] / "run", root, "champion", settings,
                                          ("export", "feature_repo"))
    cli("features", "--config", champion_config, env=env)
    cli("export", "--config", champion_config, env=env)
    repo = champion / "feature_repo"
    served = pd.read_parquet(repo / "data" / "item_embeddings.parquet")
    cli("distil-towers", "--config", champion_config, "--out", root / "towers", env=env)
    challenger, challenger_config = _run_copy(champion, root, "challenger", settings,
                                              ("export", "feature_repo", "student", "student_human_only"),
                                              encoder=str(root / "towers"))
    cli("train-student", "--config", challenger_config, env=env)
    cli("features", "--config", challenger_config, env=env)
    cli("export", "--config", challenger_config, env=env)
    bundles = {name: json.loads((run / "export" / "bundle.json").read_text())
               for name, run in (("champion", champion), ("challenger", challenger))}
    return {"root": root, "env": env, "repo": repo, "served": served, "bundles": bundles,
            "dirs": {"champion": champion / "export", "challenger": challenger / "export"},
            "configs": {"champion": champion_config, "challenger": challenger_config},
            "repos": {"champion": repo, "challenger": challenger / "feature_repo"}}


def _predict(url: str, query: str, candidates: list[str]) -> httpx.Response:
    body = {"instances": [{"query": query, "locale": "en_US", "candidates": candidates}]}
    response = httpx.post(f"{url}/v1/models/{MODEL}:predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response


def _champion_rows(canary) -> np.ndarray:
    ids = canary["served"]["item_id"].tolist()
    source = FeastItemSource.for_bundle(canary["repo"], canary["bundles"]["champion"], cache_size=0)
    return source.get(ids).embeddings


@pytest.mark.slow  # a run's features twice, towers tuned, a student trained, two servers (about two minutes)
def test_a_challenger_with_a_new_tower_serves_beside_the_champion_and_a_rollback_returns_to_it(
        tower_canary, monkeypatch, tmp_path):
    canary, bundles = tower_canary, tower_canary["bundles"]
    for name, value in canary["env"].items():
        monkeypatch.setenv(name, value)
    # Two towers, two versions: each bundle names its project and carries its own query tower.
    encoders = {name: bundle["encoder_fingerprint"] for name, bundle in bundles.items()}
    projects = {name: bundle["feature_project"] for name, bundle in bundles.items()}
    assert encoders["champion"] != encoders["challenger"] and projects["champion"] != projects["challenger"]
    for name in ("champion", "challenger"):
        assert projects[name] == repo_project(canary["repos"][name])
        assert built_encoder(canary["repos"][name]) == encoders[name]
        assert (canary["dirs"][name] / "query_encoder.onnx").exists()
    # Materializing the challenger's tower left the champion's rows as they were written.
    expected = np.stack(canary["served"]["embedding"].to_numpy())
    np.testing.assert_array_equal(_champion_rows(canary), expected)

    items = canary["served"]["item_id"].tolist()
    queries = [(f"query {i}", items[i * 7 % len(items):][:12] or items[:12]) for i in range(8)]
    settings = ["--config", str(canary["configs"]["champion"])]
    with local_canary(settings, canary["dirs"]["champion"], canary["dirs"]["challenger"], canary["repo"], 50,
                      tmp_path / "canary", seed=3) as served:
        alone = {name: [_predict(served.servers[name], q, c).json()["predictions"][0] for q, c in queries]
                 for name in ("champion", "challenger")}
        for name in ("champion", "challenger"):  # each server reads its own version
            assert {p["embedding_version"] for p in alone[name]} == {projects[name]}
            assert {p["model_version"] for p in alone[name]} == {bundles[name]["student_version"]}
        assert [p["items"] for p in alone["champion"]] != [p["items"] for p in alone["challenger"]]

        # Side by side behind the splitter: every answer is its variant's, scored as that server scores alone.
        seen = set()
        for _ in range(3):
            for (query, candidates), champion, challenger in zip(queries, alone["champion"], alone["challenger"]):
                response = _predict(served.split_url, query, candidates)
                variant = response.headers[VARIANT_HEADER]
                seen.add(variant)
                prediction = response.json()["predictions"][0]
                answer = champion if variant == "champion" else challenger
                assert (prediction["items"], prediction["embedding_version"]) == (answer["items"],
                                                                                   answer["embedding_version"])
        assert seen == {"champion", "challenger"}, served.splitter.state()

        # The rollback (what `relevance canary watch` does to a local canary): all traffic to the champion,
        # answered as before; its table is the one checked above, which nothing but its own features step wrote.
        served.splitter.set_percent(0)
        for (query, candidates), champion in zip(queries, alone["champion"]):
            response = _predict(served.split_url, query, candidates)
            assert response.headers[VARIANT_HEADER] == "champion"
            assert response.json()["predictions"][0]["items"] == champion["items"]


@pytest.mark.slow
def test_a_server_refuses_at_start_item_embeddings_of_another_tower(tower_canary, cli, tmp_path):
    """The challenger's bundle pointed at the champion's project (an export against the wrong features): the
    server does not start, and says which encoders disagree."""
    canary = tower_canary
    wrong = tmp_path / "bundle"
    shutil.copytree(canary["dirs"]["challenger"], wrong)
    bundle = {**canary["bundles"]["challenger"], "feature_project": canary["bundles"]["champion"]["feature_project"]}
    (wrong / "bundle.json").write_text(json.dumps(bundle))
    result = cli("serve", "--config", canary["configs"]["champion"], "--bundle", wrong, "--feature-repo",
                 canary["repo"], check=False, env=canary["env"])
    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    message = " ".join(result.stderr.split())
    champion, challenger = (canary["bundles"][n]["encoder_fingerprint"] for n in ("champion", "challenger"))
    assert f"made by encoder {champion}" in message and f"item tower is encoder {challenger}" in message, message
