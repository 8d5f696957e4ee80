"""The judge's two slices of a dataset: judge-holdout queries (unjudged, never in the pool, where judge-eval and the
canary's judge draw) and judge-check pairs (valid pairs the teacher neither early-stops nor calibrates on, where a
judge's agreement with humans is measured). Both are hash slices of the query text, recorded in dataset.json."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from relevance.config import DataConfig, build_config
from relevance.data import prepare
from relevance.data.schema import DataContractError, Dataset, DatasetInfo
from relevance.labels.pool import build_pool

WORDS = ["sofa", "lamp", "drill", "rug", "table", "mug", "hose", "paint", "tile", "faucet"]


def _shop(holdout: float | None = 0.3, check: float | None = 0.4) -> Dataset:
    """100 queries (60 unjudged, one of them the text of another under a second id), 10 items."""
    items = pd.DataFrame({"item_id": [f"i{n}" for n in range(10)], "title": [f"red {w}" for w in WORDS]})
    texts = [f"{a} {b} {n}" for n, (a, b) in enumerate(zip(WORDS * 10, WORDS[3:] * 10 + WORDS[:3] * 10))][:99]
    queries = pd.DataFrame({"query_id": [f"q{n}" for n in range(100)], "query": texts + [texts[60].upper()]})
    splits = ["train"] * 20 + ["valid"] * 10 + ["test"] * 10
    judgments = pd.DataFrame({"query_id": [f"q{n}" for n in range(40)], "item_id": [f"i{n % 10}" for n in range(40)],
                              "grade": [n % 3 for n in range(40)], "split": splits})
    impressions = pd.DataFrame({"query_id": [f"q{n}" for n in range(40, 100)],
                                "item_id": [f"i{n % 10}" for n in range(40, 100)]})
    info = DatasetInfo("shop", 3, judge_holdout_fraction=holdout, judge_check_fraction=check)
    return Dataset(info, items, queries, judgments, impressions).validated()


def test_judge_holdout_is_a_stable_hash_slice_of_the_unjudged_queries():
    shop = _shop()
    holdout = set(shop.judge_holdout_queries()["query_id"])
    unjudged = {f"q{n}" for n in range(40, 100)}
    assert holdout < unjudged and 8 <= len(holdout) <= 30  # ~30% of 60
    assert ("q60" in holdout) == ("q99" in holdout)  # one text under two ids: one slice
    # Grading a holdout query takes it out of the holdout (it is judged now) and moves no other query.
    graded = next(iter(sorted(holdout)))
    more = pd.concat([shop.judgments, pd.DataFrame({"query_id": [graded], "item_id": ["i0"], "grade": [1],
                                                    "split": ["train"]})], ignore_index=True)
    after = Dataset(shop.info, shop.items, shop.queries, more, shop.impressions)
    assert set(after.judge_holdout_queries()["query_id"]) == holdout - {graded}
    assert _shop(holdout=None).judge_holdout_queries().empty


def test_the_pool_never_takes_a_judge_holdout_query(tmp_path):
    config = build_config("quick", {"workdir": str(tmp_path), "candidates": {"top_k": 3}})
    shop = _shop()
    holdout = set(shop.judge_holdout_queries()["query_id"])
    pool = pd.read_parquet(build_pool(config, shop, tmp_path / "pool.parquet"))
    assert holdout and not holdout & set(pool["query_id"])
    assert set(pool["query_id"]) == {f"q{n}" for n in range(40, 100)} - holdout  # every other unjudged query
    # A dataset prepared before the slice existed keeps its old pool (and judge-eval refuses it, below).
    legacy = pd.read_parquet(build_pool(config, _shop(holdout=None), tmp_path / "legacy.parquet"))
    assert holdout <= set(legacy["query_id"])


def test_teacher_valid_and_judge_check_split_valid_in_two():
    shop = _shop()
    valid, fit, check = shop.split("valid"), shop.teacher_valid(), shop.judge_check_pairs()
    assert len(fit) + len(check) == len(valid) and not set(fit["query_id"]) & set(check["query_id"])
    assert len(check) and len(fit)
    # The slice never takes every valid query: the teacher must early-stop on something.
    greedy = _shop(check=0.999)
    assert len(greedy.teacher_valid()) >= 1 and len(greedy.judge_check_pairs()) == len(valid) - len(greedy.teacher_valid())
    with pytest.raises(DataContractError, match="records no judge_check_fraction"):
        _shop(check=None).judge_check_pairs()
    assert len(_shop(check=None).teacher_valid()) == len(valid)  # an old dataset: the teacher keeps all of valid


def test_prepare_records_the_slices_in_dataset_json(tmp_path):
    config = DataConfig(source="synthetic", synthetic_items=50, synthetic_judged_queries=20, synthetic_impressions=200,
                        judge_holdout_fraction=0.15, judge_check_fraction=0.3)
    recorded = json.loads((prepare(config, tmp_path / "synthetic") / "dataset.json").read_text())
    assert (recorded["judge_holdout_fraction"], recorded["judge_check_fraction"]) == (0.15, 0.3)
    # A prepared directory from elsewhere gets this run's slices too.
    copied = prepare(DataConfig(source="prepared", path=str(tmp_path / "synthetic"), judge_holdout_fraction=0.05),
                     tmp_path / "copied")
    assert json.loads((copied / "dataset.json").read_text())["judge_holdout_fraction"] == 0.05
    with pytest.raises(DataContractError, match="must be in"):
        DatasetInfo("x", 3, judge_holdout_fraction=1.5)


def test_judge_eval_refuses_a_dataset_without_a_holdout():
    from relevance.evaluation.judge_eval import _population

    with pytest.raises(DataContractError, match="records no judge_holdout_fraction"):
        _population(_shop(holdout=None))
    population, traffic = _population(_shop())
    assert set(population["query_id"]) == set(_shop().judge_holdout_queries()["query_id"])
    assert set(traffic.index) == set(population["query_id"])


def test_the_canary_judge_replays_only_judge_holdout_queries():
    from relevance.serving.canary.analysis import replay_queries

    config = build_config("quick", {"canary": {"judge_queries": 1000}})
    shop = _shop()
    labelled, _, unlabelled = replay_queries(shop, config, "valid")
    holdout = set(shop.judge_holdout_queries()["query_id"])
    assert labelled and {q.query_id for q in unlabelled} == holdout
    assert replay_queries(_shop(holdout=None), config, "valid")[2] == []


def test_a_pool_or_a_ranker_built_without_this_holdout_is_caught(tmp_path):
    """A pool reused after the data was prepared again with a holdout (the chain's pool step hashes only settings)
    is read for holdout queries and refused; judge-eval refuses a ranker trained under another holdout and flags
    one that records none."""
    from relevance.evaluation.judge_eval import ranker_holdout
    from relevance.labels.pool import check_pool_holdout, pool_judge_holdout

    config = build_config("quick", {"workdir": str(tmp_path), "candidates": {"top_k": 3}})
    shop = _shop()
    fresh = build_pool(config, shop, tmp_path / "fresh.parquet")
    assert pool_judge_holdout(fresh) == shop.judge_holdout_fingerprint()
    check_pool_holdout(fresh, shop)
    stale = build_pool(config, _shop(holdout=None), tmp_path / "stale.parquet")
    with pytest.raises(DataContractError, match="pair\\(s\\) of judge-holdout queries"):
        check_pool_holdout(stale, shop)

    def ranker(name: str, **manifest):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "manifest.json").write_text(json.dumps({"kind": "student", **manifest}))
        return directory

    assert ranker_holdout(ranker("same", judge_holdout=shop.judge_holdout_fingerprint()), shop)["untouched"]
    assert not ranker_holdout(ranker("legacy"), shop)["untouched"]
    with pytest.raises(DataContractError, match="may have been distilled on the queries"):
        ranker_holdout(ranker("other", judge_holdout=_shop(holdout=0.5).judge_holdout_fingerprint()), shop)
    # Trained with no holdout at all (or a bundle of such a student): flagged, not refused.
    assert not ranker_holdout(ranker("none", judge_holdout=None), shop)["untouched"]
    # New traffic (one more holdout query) or a holdout query graded since: the same slice, still untouched.
    refreshed = dict(shop.judge_holdout_fingerprint(), queries=shop.judge_holdout_fingerprint()["queries"] + 1,
                     hash="0" * 16)
    assert ranker_holdout(ranker("refreshed", judge_holdout=refreshed), shop)["untouched"]
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "manifest.json").write_text(json.dumps({"kind": "teacher"}))
    assert ranker_holdout(teacher, shop)["untouched"]  # a teacher learns from judgments only
