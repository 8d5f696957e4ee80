"""The monitor's judged quality on a judge whose grades are known (word overlap), so the figures can be checked
exactly; the whole monitor against a served student is in test_server.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relevance.config import build_config
from relevance.models.metrics import ranking_metrics
from relevance.serving.monitor import judged_quality, quality_alert


class OverlapJudge:
    """Grade 2 when every query word is in the item's text, 1 when some is, else 0 (one-hot probabilities)."""

    num_grades, version = 3, "overlap"

    def predict_proba(self, queries, items):
        out = np.zeros((len(queries), 3))
        for row, (query, item) in enumerate(zip(queries, items)):
            words, text = set(query.split()), set(str(item).split())
            out[row, 2 if words <= text else 1 if words & text else 0] = 1.0
        return out


TEXTS = {"i0": "red lamp", "i1": "blue chair", "i2": "red chair", "i3": "lamp shade", "i4": "green sofa",
         "i5": "blue lamp"}


@pytest.fixture
def judge(monkeypatch):
    calibration = {"overall": {"exact": 1.0, "pairs": 10}, "measured_on": {"what": "a known judge"}}
    monkeypatch.setattr("relevance.evaluation.judge_eval.calibrated_judge",
                        lambda *_: (OverlapJudge(), pd.Series(TEXTS), calibration))


def _config(**monitor):
    return build_config("quick", {"monitor": {"judge_k": 2, "judge_depth": 5, "judge_lists": 50, **monitor}})


def _sample(rows):
    return pd.DataFrame(rows, columns=["query", "locale", "item_ids"])


def test_served_lists_are_judged_against_every_graded_item_per_stratum(judge):
    sample = _sample([
        ("red lamp", "en-US", ["i3", "i4", "i0", "i1", "i2"]),  # the perfect item served third: below k = 2
        ("red lamp", "en-US", ["i0", "i3"]),  # the same query again: one list per distinct query
        ("blue chair", "en-US", ["i1", "i5", "i2"]),  # perfect order
        ("green sofa", "en-US", ["i4", "i0"]),
        ("blue lamp", "en-US", ["i2", "i5", "zz-not-in-catalog"]),
    ])
    report = judged_quality(_config(), None, "judge", sample, seen={"red lamp", "blue lamp"}, log=lambda _: None)
    assert report["population_lists"] == 4 and report["sampled_lists"] == 4 and report["unjudgeable_items"] == 1
    strata = report["strata"]
    assert set(strata) == {"seen|en-US|len≤2", "unseen|en-US|len≤2"}
    # red lamp, served i3 (1), i4 (0), i0 (2), …: nDCG@2 against the ideal of all five graded items.
    grades = np.array([1, 0, 2, 0, 1])
    red = ranking_metrics(np.zeros(5), grades, -np.arange(5.0), ks=[2], num_grades=3)["ndcg@2"]
    blue_lamp = ranking_metrics(np.zeros(2), np.array([0, 2]), -np.arange(2.0), ks=[2], num_grades=3)["ndcg@2"]
    assert red < 0.5 and strata["seen|en-US|len≤2"]["mean"] == pytest.approx((red + blue_lamp) / 2, abs=1e-4)
    assert strata["unseen|en-US|len≤2"]["mean"] == 1.0 and strata["unseen|en-US|len≤2"]["n"] == 2
    overall = report["overall"]
    assert overall["mean"] == pytest.approx((red + blue_lamp + 2) / 4, abs=1e-4)
    assert overall["std_error"] == 0.0  # every list of the population judged: a census has no sampling error

    # Judged only to the cut (depth = k), the same list looks better: its order among its own top-2 is all
    # that counts then, which is why the monitor grades deeper.
    shallow = judged_quality(_config(judge_depth=2), None, "judge", sample, seen={"red lamp", "blue lamp"},
                             log=lambda _: None)
    assert shallow["strata"]["seen|en-US|len≤2"]["mean"] > strata["seen|en-US|len≤2"]["mean"]


def test_a_sample_of_lists_has_an_interval_and_alerts_only_when_all_of_it_is_below(judge):
    rng = np.random.default_rng(0)
    items = list(TEXTS)
    rows = [(f"{w} {v}", "en-US", list(rng.permutation(items))) for w in ("red", "blue", "green") for v in
            ("lamp", "chair", "sofa", "shade")]
    rows += [(f"{w} {v} x{n}", "en-US", list(rng.permutation(items))) for n in range(30) for w, v in
             [("red", "lamp")]]
    report = judged_quality(_config(judge_lists=20), None, "judge", _sample(rows), seen=set(), log=lambda _: None)
    overall = report["overall"]
    assert report["sampled_lists"] == 20 and report["population_lists"] == len(rows)
    assert overall["ci_low"] < overall["mean"] < overall["ci_high"] and overall["std_error"] > 0
    assert quality_alert(report, None) is None
    assert quality_alert(report, overall["ci_high"]) is None  # the interval reaches the threshold
    assert "below" in quality_alert(report, overall["ci_high"] + 0.01)
    assert quality_alert({"refused": "a weak judge"}, 0.9) is None


def test_too_few_judgeable_lists_is_an_error_the_monitor_records(judge):
    sample = _sample([("purple desk", "en-US", ["i0", "i1"])])  # nothing relevant: nDCG undefined
    with pytest.raises(ValueError, match="judged quality: 0 of 1"):
        judged_quality(_config(), None, "judge", sample, seen=set(), log=lambda _: None)


def test_the_judged_depth_cannot_be_below_k():
    with pytest.raises(ValueError, match="judge_depth"):
        _config(judge_k=10, judge_depth=5)
