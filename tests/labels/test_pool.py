"""The unlabelled pool: BM25 candidates without judged pairs, and never a held-out query."""

from __future__ import annotations

import pandas as pd
import pytest

from relevance.config import build_config
from relevance.data.schema import DataContractError, Dataset, DatasetInfo
from relevance.labels.channels import bm25_candidates
from relevance.labels.pool import CHANNELS, build_pool, pool_channels


def test_candidates_exclude_judged_pairs(index):
    queries = pd.DataFrame({"query_id": ["q1", "q2"], "query": ["drill", "red sofa"]})
    judged = pd.DataFrame({"query_id": ["q1"], "item_id": ["drill"]})
    candidates = bm25_candidates(index, queries, 5, exclude=judged)
    assert set(map(tuple, candidates[["query_id", "item_id"]].to_numpy())) == {("q1", "bits"), ("q2", "sofa")}


def _fully_judged_dataset() -> Dataset:
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"],
                          "title": ["red sofa", "blue sofa", "brass lamp", "floor lamp"]})
    queries = pd.DataFrame({"query_id": ["q1", "q2", "q3", "q4"],
                            "query": ["sofa", "lamp", "floor lamp", "Floor  Lamp"]})
    judgments = pd.DataFrame({"query_id": ["q1", "q2", "q3"], "item_id": ["a", "c", "d"], "grade": [2, 2, 1],
                              "split": ["train", "test", "valid"]})
    # q4 is unjudged but is the valid query q3 under another id: its impression must not reach the pool.
    impressions = pd.DataFrame({"query_id": ["q4"], "item_id": ["a"]})
    return Dataset(DatasetInfo("tiny", 3), items, queries, judgments, impressions).validated()


def test_pool_takes_train_query_candidates_and_never_held_out_queries(tmp_path):
    dataset = _fully_judged_dataset()
    no_candidates = {"workdir": str(tmp_path / "a"), "candidates": {"top_k": 0}}
    with pytest.raises(DataContractError, match="pool is empty"):
        build_pool(build_config("quick", no_candidates), dataset, tmp_path / "a.parquet")
    config = build_config("quick", {"workdir": str(tmp_path / "b"),
                                    "candidates": {"include_train_queries": True, "top_k": 10}})
    # (q4 gets BM25 candidates too, as an unjudged query, and loses them all to the held-out filter.)
    pool = pd.read_parquet(build_pool(config, dataset, tmp_path / "b.parquet"))
    # Only the train query's unjudged items: never a valid/test query, nor a judged pair.
    assert set(pool["query_id"]) == {"q1"} and set(pool["item_id"]) == {"b"}


def _shop(tmp_path):
    """A dataset whose impressions repeat pairs BM25 also finds, read back from disk as the chain does."""
    items = pd.DataFrame({"item_id": [f"i{n}" for n in range(12)],
                          "title": ["red sofa", "blue sofa", "green sofa", "oak table", "glass table", "floor lamp",
                                    "table lamp", "drill", "drill bits", "sofa cushion", "red cushion", "rug"]})
    queries = pd.DataFrame({"query_id": [f"q{n}" for n in range(8)],
                            "query": ["sofa", "table", "lamp", "drill", "red sofa", "cushion", "Sofa", "rug"]})
    judgments = pd.DataFrame({"query_id": ["q0", "q1", "q2"], "item_id": ["i0", "i3", "i5"], "grade": [2, 2, 1],
                              "split": ["train", "valid", "test"]})
    impressions = pd.DataFrame({"query_id": ["q3", "q3", "q4", "q4", "q5", "q6", "q0", "q2"],
                                "item_id": ["i7", "i8", "i0", "i1", "i9", "i1", "i0", "i6"]})
    dataset = Dataset(DatasetInfo("tiny", 3), items, queries, judgments, impressions).validated()
    dataset.save(tmp_path / "data")
    return Dataset.load(tmp_path / "data", with_impressions=False), tmp_path / "data" / "impressions.parquet"


def test_pool_streams_through_buckets_with_the_same_pairs(tmp_path):
    dataset, impressions = _shop(tmp_path)
    config = build_config("quick", {"workdir": str(tmp_path / "w"), "candidates": {"top_k": 3}})
    one = pd.read_parquet(build_pool(config, dataset, tmp_path / "one.parquet", impressions))
    many = pd.read_parquet(build_pool(config, dataset, tmp_path / "many.parquet", impressions, bucket_rows=3))
    pairs = set(map(tuple, one[["query_id", "item_id"]].to_numpy()))
    assert set(map(tuple, one.to_numpy())) == set(map(tuple, many.to_numpy()))  # channels too
    assert len(many) == len(pairs)  # no pair twice, in any bucket
    assert ("q3", "i7") in pairs and ("q0", "i0") not in pairs  # impressions in; a judged pair out
    # q1 (valid) and q6 (the train query q0's text, but q0 is train: allowed); q2 is test: nothing of it.
    assert not {q for q, _ in pairs} & {"q1", "q2"}
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers  # the buckets were temporary


def test_pool_refuses_impressions_of_unknown_ids(tmp_path):
    dataset, impressions = _shop(tmp_path)
    bad = pd.read_parquet(impressions)
    bad.loc[0, "item_id"] = "ghost"
    bad.to_parquet(impressions, index=False)
    config = build_config("quick", {"workdir": str(tmp_path / "w"), "candidates": {"top_k": 0}})
    with pytest.raises(DataContractError, match=r"name a query or item the dataset does not have.*ghost"):
        build_pool(config, dataset, tmp_path / "pool.parquet", impressions)
    assert not (tmp_path / "pool.parquet").exists()


def test_the_embedding_channel_adds_nearest_items_under_every_guard(tmp_path, tiny_bert):
    """BM25 and the student's bi-encoder as channels: each pair is recorded under the first channel that found
    it (an impression stays an impression), and the nearest items go through the same guards as BM25's (no
    judged pair, no valid/test query by id or text)."""
    dataset, impressions = _shop(tmp_path)
    settings = {"workdir": str(tmp_path / "w"), "student": {"encoder": str(tiny_bert)}}
    bm25_only = build_config("quick", {**settings, "candidates": {"top_k": 2}})
    both = build_config("quick", {**settings, "candidates": {"top_k": 2, "embedding_top_k": 12}})
    before = pd.read_parquet(build_pool(bm25_only, dataset, tmp_path / "bm25.parquet", impressions))
    after = pd.read_parquet(build_pool(both, dataset, tmp_path / "both.parquet", impressions,
                                       embeddings_dir=tmp_path / "embeddings"))
    assert set(after["channel"]) == set(CHANNELS) - {"student"}
    assert not after.duplicated(["query_id", "item_id"]).any()
    keyed = after.set_index(["query_id", "item_id"])["channel"]
    # Every pair the BM25-only pool had keeps its channel; the new ones are the embedding channel's.
    assert (keyed.reindex(pd.MultiIndex.from_frame(before[["query_id", "item_id"]])).to_numpy()
            == before["channel"].to_numpy()).all()
    assert keyed[("q3", "i7")] == "impression"
    # Top-12 of a 12-item catalog: every item of every unjudged query the guards allow, and nothing else.
    unjudged = set(dataset.queries["query_id"]) - set(dataset.judgments["query_id"])  # q6: a train query's text
    judge_holdout = set(dataset.judge_holdout_queries()["query_id"])
    embedded = after[after["channel"] == "embedding"]
    assert set(embedded["query_id"]) <= unjudged - judge_holdout
    assert not after.merge(dataset.judgments, on=["query_id", "item_id"]).shape[0]
    assert not {"q1", "q2"} & set(after["query_id"])  # valid and test
    per_query = after[after["query_id"].isin(unjudged - judge_holdout)].groupby("query_id").size()
    assert (per_query == len(dataset.items)).all()
    assert pool_channels(tmp_path / "both.parquet") == after["channel"].value_counts().to_dict()
    assert any((tmp_path / "embeddings").rglob("part-*.parquet"))  # the cache the student reads next


def test_a_bad_index_spec_fails_before_any_channel_runs(tmp_path, tiny_bert):
    dataset, impressions = _shop(tmp_path)
    config = build_config("quick", {"workdir": str(tmp_path / "w"), "student": {"encoder": str(tiny_bert)},
                                    "candidates": {"embedding_top_k": 3, "ann_index": "NoSuchIndex"}})
    with pytest.raises(ValueError, match="'NoSuchIndex' is not a faiss index-factory string"):
        build_pool(config, dataset, tmp_path / "pool.parquet", impressions, embeddings_dir=tmp_path / "e")
    assert not (tmp_path / "pool.parquet").exists() and not list(tmp_path.glob(".pool.parquet*"))


def _champion(tmp_path, config, dataset, hidden=(8,)):
    """A student over the config's features with random weights, saved as training saves one."""
    import torch

    from relevance.config import StudentConfig
    from relevance.student.featurizer import LEXICAL_FEATURES, build_featurizer, featurizer_settings, model_manifest
    from relevance.student.model import Student, StudentMLP

    featurizer = build_featurizer(dataset.items, featurizer_settings(config), tmp_path / "embeddings")
    features = 4 * featurizer.cache.encoder.dimension + len(LEXICAL_FEATURES)
    torch.manual_seed(0)
    model = StudentMLP(features, dataset.num_grades, list(hidden), 0.0).eval()
    manifest = {"kind": "student", **model_manifest(config, dataset, featurizer, features),
                "config": StudentConfig(hidden=list(hidden)).model_dump()}
    return Student(model, manifest).save(tmp_path / "champion"), featurizer


def test_the_student_channel_adds_what_the_current_student_ranks_first(tmp_path, tiny_bert):
    """Each unjudged query gets the student's top-k of its BM25 top-depth (scored independently here), under
    every guard (an unjudged query with a valid query's text gets nothing), after the channels before it; the
    pool records the student, and refuses to be reused once another student is in its directory."""
    from relevance.labels.pool import STUDENT_CHANNEL_KEY, check_pool_student
    from relevance.models.metrics import expected_grade
    from relevance.student.model import Student

    dataset, impressions = _shop(tmp_path)
    # q8: unjudged, but its text is valid query q1's ("table"): the held-out guard drops it by text.
    dataset.queries = pd.concat([dataset.queries, pd.DataFrame({"query_id": ["q8"], "query": ["Table "]})],
                                ignore_index=True)
    settings = {"workdir": str(tmp_path / "w"), "student": {"encoder": str(tiny_bert)}}
    champion, featurizer = _champion(tmp_path, build_config("quick", settings), dataset)
    config = build_config("quick", {**settings, "candidates": {
        # 3 of 5: "red sofa" and "Sofa" have 5 and 4 BM25 candidates, at most 2 of them in the pool already, so
        # the student adds some whatever its random weights rank first (with 2, one draw in three added none).
        "top_k": 1, "student_top_k": 3, "student_depth": 5, "student_model": str(champion)}})
    pool = pd.read_parquet(build_pool(config, dataset, tmp_path / "pool.parquet", impressions,
                                      embeddings_dir=tmp_path / "embeddings"))
    assert not pool.duplicated(["query_id", "item_id"]).any()
    assert set(pool["channel"]) == {"impression", "bm25", "student"}
    student = Student.load(champion)
    judge_holdout = set(dataset.judge_holdout_queries()["query_id"])
    unjudged = set(dataset.queries["query_id"]) - set(dataset.judgments["query_id"]) - judge_holdout - {"q8"}
    text = dataset.queries.set_index("query_id")["query"]
    earlier = pool[pool["channel"] != "student"]
    expected = set()
    for query_id in sorted(unjudged):
        retrieved = list(featurizer.bm25.top_k(text[query_id], 5)[0])
        scores = expected_grade(student.predict_proba(featurizer.transform([text[query_id]] * len(retrieved),
                                                                           retrieved)))
        best = [retrieved[i] for i in sorted(range(len(retrieved)), key=lambda i: -scores[i])[:3]]
        expected |= {(query_id, item) for item in best}
    expected -= set(zip(earlier["query_id"], earlier["item_id"]))
    expected -= set(zip(dataset.judgments["query_id"], dataset.judgments["item_id"]))
    found = pool[pool["channel"] == "student"]
    assert set(zip(found["query_id"], found["item_id"])) == expected and expected
    assert "q8" not in set(pool["query_id"])
    assert pool_channels(tmp_path / "pool.parquet")["student"] == len(found)
    import pyarrow.parquet as pq

    recorded = pq.read_schema(tmp_path / "pool.parquet").metadata[STUDENT_CHANNEL_KEY.encode()]
    assert student.manifest["student_version"] in recorded.decode()
    check_pool_student(tmp_path / "pool.parquet", config)  # the same student: reusable
    _champion(tmp_path, build_config("quick", settings), dataset, hidden=(4,))  # a new champion, same directory
    with pytest.raises(DataContractError, match="delete the pool"):
        check_pool_student(tmp_path / "pool.parquet", config)


def test_the_student_channel_reranks_the_nearest_items_too(tmp_path, tiny_bert):
    """With the embedding channel on, the student also ranks each query's nearest student_depth items (deeper
    than the embedding channel's own top-k), found before the ANN index is dropped."""
    dataset, impressions = _shop(tmp_path)
    settings = {"workdir": str(tmp_path / "w"), "student": {"encoder": str(tiny_bert)}}
    champion, _ = _champion(tmp_path, build_config("quick", settings), dataset)
    base = {"top_k": 0, "include_impressions": False, "embedding_top_k": 1, "student_depth": 12}
    nearest_only = build_config("quick", {**settings, "candidates": {**base, "embedding_top_k": 12}})
    config = build_config("quick", {**settings, "candidates": {
        **base, "student_top_k": 12, "student_model": str(champion)}})
    everything = pd.read_parquet(build_pool(nearest_only, dataset, tmp_path / "all.parquet", impressions,
                                            embeddings_dir=tmp_path / "embeddings"))
    pool = pd.read_parquet(build_pool(config, dataset, tmp_path / "pool.parquet", impressions,
                                      embeddings_dir=tmp_path / "embeddings"))
    # The student's top-12 of everything its lists hold = every allowed pair; the embedding channel kept 1 each.
    assert set(zip(pool["query_id"], pool["item_id"])) == set(zip(everything["query_id"], everything["item_id"]))
    assert (pool[pool["channel"] == "embedding"].groupby("query_id").size() == 1).all()
    assert not pool.duplicated(["query_id", "item_id"]).any()


def test_the_student_channel_refuses_what_is_not_a_trained_student(tmp_path, tiny_bert, monkeypatch):
    """Refused before any channel runs: a missing directory, another kind of model, a student of other
    features."""
    import json

    dataset, impressions = _shop(tmp_path)
    base = {"workdir": str(tmp_path / "w"), "student": {"encoder": str(tiny_bert)}}
    with pytest.raises(ValueError, match="student_top_k needs candidates.student_model"):
        build_config("quick", {**base, "candidates": {"student_top_k": 3}})
    with pytest.raises(ValueError, match=r"student_top_k \(9\) must not exceed student_depth \(4\)"):
        build_config("quick", {**base, "candidates": {"student_top_k": 9, "student_depth": 4,
                                                      "student_model": "x"}})
    champion, _ = _champion(tmp_path, build_config("quick", base), dataset)
    gbdt, old = tmp_path / "gbdt", tmp_path / "old-student"
    for directory, manifest in ((gbdt, {"kind": "gbdt"}),
                                (old, {**json.loads((champion / "manifest.json").read_text()), "feature_version": 1})):
        directory.mkdir()
        (directory / "manifest.json").write_text(json.dumps(manifest))
    from relevance.labels import pool as pool_module

    def channel_ran(*args, **kwargs):
        raise AssertionError("a channel ran before the student was checked")

    monkeypatch.setattr(pool_module, "_impression_chunks", channel_ran)
    monkeypatch.setattr(pool_module.BM25Index, "for_items", channel_ran)
    for model, message in ((tmp_path / "missing", "is not a directory"), (gbdt, "expected a student model"),
                           (old, "feature version 1")):
        config = build_config("quick", {**base, "candidates": {"student_top_k": 2, "student_model": str(model)}})
        with pytest.raises((FileNotFoundError, ValueError), match=message):
            build_pool(config, dataset, tmp_path / "pool.parquet", impressions, embeddings_dir=tmp_path / "e")
        assert not (tmp_path / "pool.parquet").exists()


def test_the_student_channel_skips_judged_pairs_before_its_top_k(tmp_path, tiny_bert, monkeypatch):
    """On a train query (include_train_queries) the student's top-k are its best *unjudged* items, not judged
    ones the pool's filter would then drop; chunks of 2 queries give what one chunk gives (the embedding
    channel's saved lists line up with the student channel's chunks)."""
    from relevance.labels import pool as pool_module

    dataset, impressions = _shop(tmp_path)
    settings = {"workdir": str(tmp_path / "w"), "student": {"encoder": str(tiny_bert)}}
    champion, _ = _champion(tmp_path, build_config("quick", settings), dataset)
    config = build_config("quick", {**settings, "candidates": {
        "top_k": 0, "include_impressions": False, "include_train_queries": True, "embedding_top_k": 1,
        "student_top_k": 11, "student_depth": 12, "student_model": str(champion)}})
    whole = pd.read_parquet(build_pool(config, dataset, tmp_path / "whole.parquet", impressions,
                                       embeddings_dir=tmp_path / "embeddings"))
    # q0 (train, judged on i0): 12 items, 1 judged; its 11 unjudged ones all make the student's top-11.
    assert len(whole[whole["query_id"] == "q0"]) == 11 and "i0" not in set(whole.loc[whole["query_id"] == "q0",
                                                                                          "item_id"])
    monkeypatch.setattr(pool_module, "CHUNK_QUERIES", 2)
    chunked = pd.read_parquet(build_pool(config, dataset, tmp_path / "chunked.parquet", impressions,
                                         embeddings_dir=tmp_path / "embeddings"))
    key = ["query_id", "item_id", "channel"]
    assert chunked.sort_values(key).reset_index(drop=True).equals(whole.sort_values(key).reset_index(drop=True))


def test_a_pool_whose_student_channel_had_no_query_stays_reusable(tmp_path, tiny_bert):
    from relevance.labels.pool import check_pool_student

    dataset, impressions = _shop(tmp_path)
    settings = {"workdir": str(tmp_path / "w"), "student": {"encoder": str(tiny_bert)}}
    champion, _ = _champion(tmp_path, build_config("quick", settings), dataset)
    everyone_judged = dataset.queries[dataset.queries["query_id"].isin(dataset.judgments["query_id"])]
    dataset.queries = everyone_judged.reset_index(drop=True)
    logged = tmp_path / "logged.parquet"  # impressions of the train query only
    pd.DataFrame({"query_id": ["q0", "q0"], "item_id": ["i3", "i4"]}).to_parquet(logged, index=False)
    config = build_config("quick", {**settings, "candidates": {"student_top_k": 2, "student_model": str(champion)}})
    pool = build_pool(config, dataset, tmp_path / "pool.parquet", logged, embeddings_dir=tmp_path / "e")
    assert set(pd.read_parquet(pool)["channel"]) == {"impression"}
    check_pool_student(pool, config)  # nothing the student chose: nothing to go stale
