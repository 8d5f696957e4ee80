"""The monitor's judged quality (serving/judged.py) on a judge whose grades are known (word overlap), so the figures can be checked
exactly; the whole monitor against a served student is in test_server.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relevance.config import build_config
from relevance.models.metrics import ranking_metrics
from relevance.serving.judged import JudgeRefused, judged_quality, quality_alert


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
    calibration = {"overall": {"exact": 1.0, "pairs": 10, "kendall_tau": 1.0}, "measured_on": {"what": "a known judge"}}
    monkeypatch.setattr("relevance.evaluation.judge_eval.calibrated_judge",
                        lambda *_: (OverlapJudge(), pd.Series(TEXTS), calibration))


def _config(**monitor):
    return build_config("quick", {"monitor": {"judge_k": 2, "judge_depth": 5, "judge_lists": 50, **monitor}})


def _sample(rows):
    return pd.DataFrame(rows, columns=["query", "locale", "item_ids"])


def test_served_lists_are_judged_as_served_per_stratum(judge):
    sample = _sample([
        ("red lamp", "en-US", ["i3", "i4", "i0", "i1", "i2"]),  # the perfect item served third: below k = 2
        ("red lamp", "en-US", ["i0", "i3"]),  # the same query served again counts again: what users saw
        ("blue chair", "en-US", ["i1", "i5", "i2"]),  # perfect order
        ("green sofa", "en-US", ["i4", "i0"]),
        ("blue lamp", "en-US", ["i2", "zz-not-in-catalog", "i5"]),  # the unknown item keeps its place, graded 0
        ("purple desk", "en-US", ["i0", "i1"]),  # nothing relevant served: 0, not left out
    ])
    report = judged_quality(_config(), None, "judge", sample, {"red lamp", "blue lamp"}, 6, log=lambda _: None)
    assert report["population_lists"] == report["judged_lists"] == 6 and report["unjudgeable_items"] == 1
    assert report["lists_with_nothing_relevant"] == 1
    strata = report["strata"]
    assert set(strata) == {"seen|en-US|len≤2", "unseen|en-US|len≤2"}

    def ndcg(grades):
        grades = np.array(grades)
        return ranking_metrics(np.zeros(len(grades)), grades, -np.arange(len(grades), dtype=float), ks=[2],
                               num_grades=3)["ndcg@2"]

    red, blue_lamp = ndcg([1, 0, 2, 0, 1]), ndcg([0, 0, 2])  # against the ideal of every graded item
    assert red < 0.5 and blue_lamp == 0.0  # were the unknown item dropped, i5 would rise into the top 2
    assert strata["seen|en-US|len≤2"]["mean"] == pytest.approx((red + 1 + blue_lamp) / 3, abs=1e-4)
    unseen = strata["unseen|en-US|len≤2"]
    assert unseen["mean"] == pytest.approx(2 / 3, abs=1e-4) and unseen["n"] == 3 and unseen["nothing_relevant"] == 1
    overall = report["overall"]
    assert overall["mean"] == pytest.approx((red + 1 + blue_lamp + 2) / 6, abs=1e-4)
    # The window had these 6 records and all were judged, but a window is a sample of the traffic: an interval.
    assert overall["ci_low"] < overall["mean"] < overall["ci_high"] and overall["std_error"] > 0

    # Judged only to the cut (depth = k), the same list looks better: its order among its own top-2 is all
    # that counts then, which is why the monitor grades deeper.
    shallow = judged_quality(_config(judge_depth=2), None, "judge", sample, {"red lamp", "blue lamp"}, 6,
                             log=lambda _: None)
    assert shallow["strata"]["seen|en-US|len≤2"]["mean"] > strata["seen|en-US|len≤2"]["mean"]


def test_a_sample_of_a_window_has_an_interval_and_alerts_only_when_all_of_it_is_below(judge):
    rng = np.random.default_rng(0)
    items = list(TEXTS)
    rows = [(f"{w} {v}", "en-US", list(rng.permutation(items))) for w in ("red", "blue", "green") for v in
            ("lamp", "chair", "sofa", "shade")]
    rows += [(f"{w} {v} x{n}", "en-US", list(rng.permutation(items))) for n in range(30) for w, v in
             [("red", "lamp")]]
    # Every sampled record judged, but the sample is 42 of the window's 1,000: no census, the interval stays.
    report = judged_quality(_config(judge_lists=42), None, "judge", _sample(rows), set(), 1000, log=lambda _: None)
    overall = report["overall"]
    assert report["judged_lists"] == 42 and report["population_lists"] == 1000
    assert overall["ci_low"] < overall["mean"] < overall["ci_high"] and overall["std_error"] > 0
    assert quality_alert(report, None) is None
    assert quality_alert(report, overall["ci_high"]) is None  # the interval reaches the threshold
    assert "below" in quality_alert(report, overall["ci_high"] + 0.01)
    assert quality_alert({"refused": "a weak judge"}, 0.9) is None


def test_no_estimate_from_one_list_or_a_judge_below_the_floor(judge, monkeypatch):
    from relevance.data.schema import DataContractError

    with pytest.raises(JudgeRefused, match="at least 2 served lists"):
        judged_quality(_config(), None, "judge", _sample([("red lamp", "en-US", ["i0"])]), set(), 1,
                       log=lambda _: None)

    def below_the_floor(*_):
        raise DataContractError("the judge agrees with humans at exact = 0.200, below the floor 0.4")

    monkeypatch.setattr("relevance.evaluation.judge_eval.calibrated_judge", below_the_floor)
    with pytest.raises(JudgeRefused, match="below the floor"):
        judged_quality(_config(), None, "judge", _sample([("red lamp", "en-US", ["i0"])] * 2), set(), 2,
                       log=lambda _: None)
    flat = {"overall": {"exact": 0.6, "pairs": 11, "kendall_tau": None}, "measured_on": {"what": "a flat judge"}}
    monkeypatch.setattr("relevance.evaluation.judge_eval.calibrated_judge",
                        lambda *_: (OverlapJudge(), pd.Series(TEXTS), flat))
    with pytest.raises(JudgeRefused, match="same grade"):  # passes an exact floor, ranks nothing
        judged_quality(_config(), None, "judge", _sample([("red lamp", "en-US", ["i0"])] * 2), set(), 2,
                       log=lambda _: None)


def test_the_judged_figures_reach_the_gauges_and_the_html(judge, tmp_path):
    from relevance.serving.judged import EXIT_QUALITY, plot_judged
    from relevance.serving.monitor import _finish

    sample = _sample([("red lamp", "en-US", ["i3", "i4", "i0"]), ("blue chair", "en-US", ["i1", "i5"])] * 3)
    judged = judged_quality(_config(), None, "judge", sample, {"red lamp"}, 60, log=lambda _: None)
    report = {"records_of_this_student": 60, "verdict": "quality", "alerts": ["cosine: PSI 0.4 > 0.25"],
              "judged": judged, "quality_alert": quality_alert(judged, 1.0)}
    plot_judged(judged, 1.0, tmp_path)
    _finish(report, EXIT_QUALITY, tmp_path, None, lambda _: None)
    prom = (tmp_path / "monitor.prom").read_text()
    assert 'relevance_monitor_judged_ndcg{bound="ci_high",stratum="overall"}' in prom
    assert 'relevance_monitor_judged_ndcg{bound="mean",stratum="unseen|en-US|len≤2"}' in prom
    assert "relevance_monitor_quality_alert 1.0" in prom and "relevance_monitor_judge_refused 0.0" in prom
    assert "relevance_monitor_alert 1.0" in prom  # the drift alert stays visible under the quality exit code
    assert (tmp_path / "monitor.html").read_text().count("data:image/png;base64") == 1  # judged.png


def test_the_judged_depth_cannot_be_below_k():
    with pytest.raises(ValueError, match="judge_depth"):
        _config(judge_k=10, judge_depth=5)
