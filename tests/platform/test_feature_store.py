"""Feast: apply, materialize, and read the student's feature service back offline and online."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from relevance.config import build_config
from relevance.data import prepare
from relevance.data.schema import DataContractError, Dataset
from relevance.models.bm25 import lexical_item_texts
from relevance.platform.feature_store import (
    EmbeddingVersionMismatch,
    apply_and_materialize,
    build_feature_repo,
    definitions_dir,
    feature_tables,
    item_features_from_store,
    open_store,
    repo_project,
)
from relevance.platform.item_source import FeastItemSource, online_item_features

ENCODER, TUNED = "0123456789abcdef", "fedcba9876543210"  # two encoders' fingerprints (BiEncoder.fingerprint)


def test_feast_apply_materialize_and_read_back(tmp_path):
    config = build_config("quick", {"data": {"synthetic_items": 50, "synthetic_judged_queries": 12,
                                             "synthetic_impressions": 100}})
    dataset = Dataset.load(prepare(config.data, tmp_path / "data"))
    rng = np.random.default_rng(0)
    embed = lambda texts: rng.standard_normal((len(texts), 8)).astype(np.float32)  # noqa: E731
    tables = feature_tables(dataset, lexical_item_texts(dataset.items, config.text), embed)
    repo = build_feature_repo(definitions_dir(None), tmp_path / "repo", tables, ENCODER)
    versions = apply_and_materialize(repo)
    assert versions == {"item_embeddings": "1", "item_text": "2", "encoder_fingerprint": ENCODER}
    ids = dataset.items["item_id"].tolist()
    offline = item_features_from_store(repo, ids[:5])
    expected = tables["item_embeddings"].set_index("item_id")["embedding"]
    texts = tables["item_text"].set_index("item_id")
    assert list(offline.index) == ids[:5]
    for item_id in ids[:5]:
        np.testing.assert_allclose(offline.loc[item_id, "embedding"], expected[item_id], rtol=1e-6)
        assert offline.loc[item_id, "lexical_text"] == texts.loc[item_id, "lexical_text"]
    # serving reads the same feature service online
    online = online_item_features(open_store(repo), [*ids[:3], "no-such-item"])
    np.testing.assert_allclose(online["embedding"][2], expected[ids[2]], rtol=1e-6)
    assert online["title"][:3] == texts.loc[ids[:3], "title"].tolist() and online["embedding"][3] is None
    assert set(online) == {"item_id", "embedding", "title", "lexical_text"}  # nothing but the student's features
    # the cached item source answers as the uncached one, whatever it has to evict (a cache smaller than the
    # request), and reads the store only for what it lacks
    request = [ids[4], "no-such-item", *ids[:4]]
    plain = FeastItemSource(repo, 8, cache_size=0).get(request)
    cached = FeastItemSource(repo, 8, cache_size=3)
    for _ in range(2):
        got = cached.get(request)
        np.testing.assert_array_equal(got.embeddings, plain.embeddings)
        assert (got.titles, got.texts, got.known.tolist()) == (plain.titles, plain.texts, plain.known.tolist())
    assert plain.known.tolist() == [True, False, True, True, True, True] and plain.titles[1] == ""
    reads = cached.reads
    cached.get(request[:3])  # the three it read last: still cached
    assert cached.reads == reads
    cached.get(request[3:])  # evicted for them
    assert cached.reads == reads + 1
    roomy = FeastItemSource(repo, 8, cache_size=100)
    roomy.get(request)
    assert roomy.get(request[::-1]).titles == plain.titles[::-1] and roomy.reads == 1
    # the feast CLI works on the run's repo too
    plan = subprocess.run([str(Path(sys.executable).with_name("feast")), "-c", str(repo), "plan"],
                          capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr[-2000:]
    with pytest.raises(Exception, match="no item_embeddings"):
        item_features_from_store(repo, ["not-an-item"])


def test_a_new_towers_embeddings_are_a_version_of_their_own_and_serving_refuses_another_encoders(
        tmp_path, monkeypatch, shared_feature_store):
    """The same catalog embedded by the frozen encoder and by a tuned tower: two projects in one registry and
    online store, each tagged with its encoder; the new one leaves the old one's rows alone, and an item source
    asked for one encoder refuses the other's project, at start."""
    config = build_config("quick", {"data": {"synthetic_items": 30, "synthetic_judged_queries": 10,
                                             "synthetic_impressions": 40}})
    dataset = Dataset.load(prepare(config.data, tmp_path / "data"))
    monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", str(shared_feature_store(tmp_path)))
    texts = lexical_item_texts(dataset.items, config.text)
    ids = dataset.items["item_id"].tolist()
    repos, vectors = {}, {}
    for name, encoder, seed in (("frozen", ENCODER, 0), ("tuned", TUNED, 1)):
        rng = np.random.default_rng(seed)
        tables = feature_tables(dataset, texts, lambda t: rng.standard_normal((len(t), 8)).astype(np.float32))
        vectors[name] = np.stack(tables["item_embeddings"]["embedding"].to_numpy())
        repos[name] = build_feature_repo(definitions_dir(None), tmp_path / name, tables, encoder)
        if name == "frozen":
            assert apply_and_materialize(repos[name])["encoder_fingerprint"] == ENCODER
            served = FeastItemSource(repos[name], 8, cache_size=0, project=repo_project(repos[name]),
                                     encoder_fingerprint=ENCODER).get(ids).embeddings
            np.testing.assert_array_equal(served, vectors[name])
        else:
            apply_and_materialize(repos[name])
    projects = {name: repo_project(repo) for name, repo in repos.items()}
    assert projects["frozen"] != projects["tuned"]
    # Each project serves its own vectors through the shared store; the frozen one's rows are as they were.
    for name, encoder in (("frozen", ENCODER), ("tuned", TUNED)):
        source = FeastItemSource(repos["frozen"], 8, cache_size=0, project=projects[name], encoder_fingerprint=encoder)
        np.testing.assert_array_equal(source.get(ids).embeddings, vectors[name])
    # A student reading the frozen encoder's queries is refused the tuned project, and the other way round.
    with pytest.raises(EmbeddingVersionMismatch, match=f"{projects['tuned']}.*made by encoder {TUNED}.*item tower "
                                                       f"is encoder {ENCODER}"):
        FeastItemSource(repos["frozen"], 8, project=projects["tuned"], encoder_fingerprint=ENCODER)
    with pytest.raises(EmbeddingVersionMismatch, match=f"made by encoder {ENCODER}"):
        FeastItemSource.for_bundle(repos["frozen"], {"embedding_dim": 8, "feature_project": projects["frozen"],
                                                     "encoder_fingerprint": TUNED})
    # The same tables under another encoder are another version: the tag cannot be moved without the content.
    same = feature_tables(dataset, texts, lambda t: vectors["frozen"])
    other = build_feature_repo(definitions_dir(None), tmp_path / "relabelled", same, TUNED)
    assert repo_project(other) not in projects.values()
    with pytest.raises(ValueError, match="encoder_fingerprint: expected"):
        build_feature_repo(definitions_dir(None), tmp_path / "bad", same, "not hex")


def test_definitions_without_the_student_feature_service_are_refused(tmp_path):
    repo = tmp_path / "defs"
    shutil.copytree(definitions_dir(None), repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    definitions = repo / "definitions.py"
    definitions.write_text(definitions.read_text().split("student_item_features = ")[0])
    (repo / "embedding.json").write_text('{"encoder_fingerprint": "%s"}' % ENCODER)
    with pytest.raises(DataContractError, match="student_item_features"):
        apply_and_materialize(repo)
    (repo / "embedding.json").unlink()
    with pytest.raises(ValueError, match="no readable embedding.json"):
        apply_and_materialize(repo)
