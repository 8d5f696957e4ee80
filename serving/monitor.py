"""`relevance monitor`: is the served traffic still the traffic the student was trained for?

A window of captured traffic (relevance.traffic) is compared with the training reference: the serving bundle's
student, through the serving path's own scorer (cached query encoder aside), on training queries: each one's
BM25 candidates reranked and the ``monitor.top_k`` best kept, as users see them. For the window, a sample of the
bundle student's records has its top_k items featurized again by the same scorer. Then:

- **feature drift**: PSI (and KS) of each lexical feature and the cosine, served top-k against reference top-k;
- **score drift**: PSI of the served expected grades against the reference's;
- **query drift**: each query's similarity to its nearest reference query, for served queries against held-out
  training queries (new kinds of queries are far from every training query);
- **coverage**: the share of served queries never seen in training, of items not in the training catalog, of
  items the feature store did not know; the query cache's hit rate;
- **consistency**: the served scores against this bundle's scores for the same items (a skew between what
  serves and the bundle monitored shows here).

- **judged quality** (with a judge): the served lists themselves graded. The judge (the teacher, or any
  cross-encoder) must first agree with humans on the judge-check slice at ``monitor.judge_min_agreement``, as
  judge-eval requires. The unit is a served list (a record: traffic-weighted, what users saw), stratified by
  seen/unseen query × locale × query length (relevance.evaluation.sampling); ``monitor.judge_lists`` of the
  sampled records are drawn proportionally, the judge grades each one's first ``monitor.judge_depth`` served
  items, and each list gets nDCG@``monitor.judge_k`` of its served order against those grades (the ideal drawn
  from all graded items, so a good item left below the cut counts against the list; nothing relevant: 0).
  Overall: the stratified estimate with its interval; per stratum: its mean and t interval. Pinterest measures
  relevance from traffic this way (arXiv 2509.03764).

Outputs: ``monitor.json``, ``monitor.html`` (plots), ``monitor.prom`` (Prometheus text format, for a textfile
collector; ``--pushgateway`` pushes the same gauges). Exit codes for a CronJob: 0 no alert, 3 drift alert,
4 too little traffic of this student in the window to say, 5 judged quality below ``monitor.judged_ndcg_alert``
(over a drift alert: what users see comes first) (2: bad input, as every command).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

# EXIT_QUALITY is one of the monitor's exit codes, imported from where judged quality lives.
from relevance.serving.judged import (EXIT_QUALITY, judged_or_refused, normal_query,  # noqa: F401
                                      plot_judged, quality_alert)
from relevance.student.featurizer import LEXICAL_FEATURES
from relevance.traffic.drift import ks, nearest_similarity, psi

EXIT_OK, EXIT_DRIFT, EXIT_TOO_FEW = 0, 3, 4  # 5: EXIT_QUALITY (serving/judged.py)
SCORE = "expected_grade"
NOVELTY = "query_novelty"


@dataclass
class Sample:
    """Rankings' top-k pairs featurized by the scorer: [pairs, features], their scores, and the queries."""

    features: np.ndarray
    scores: np.ndarray
    bundle_scores: np.ndarray
    queries: list[str]
    unknown: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def featurize(scorer, rankings: list[tuple[str, str, list[str]]], top_k: int, served: list | None = None,
              skipped: list | None = None) -> Sample:
    """Each (query, locale, item ids) through ``scorer.prepare`` and its student: the cosine and lexical features
    of the top_k items (ranked by the student when ``served`` is None, else as served, with the served scores).
    A ranking the scorer refuses (over this config's request limits) is left out and its query appended to
    ``skipped``."""
    from relevance.student.scoring import RequestError

    features, scores, bundle_scores, unknown, queries = [], [], [], [], []
    for n, (query, locale, item_ids) in enumerate(rankings):
        try:
            prepared = scorer.prepare(query, locale, list(item_ids))
        except RequestError:
            if skipped is not None:
                skipped.append(query)
            continue
        queries.append(query)
        probs = scorer.student.predict(prepared.student_inputs())
        grades = probs @ np.arange(probs.shape[1])
        keep = np.argsort(-grades, kind="stable")[:top_k] if served is None else np.arange(min(top_k, len(item_ids)))
        cosine = (prepared.item_embeddings[keep] @ prepared.query_embedding)[:, None]
        features.append(np.hstack([cosine, prepared.lexical[keep]]))
        bundle_scores.append(grades[keep])
        scores.append(grades[keep] if served is None else np.asarray(served[n][:len(keep)], dtype=np.float64))
        unknown.append(prepared.unknown[keep])
    if not features:
        raise ValueError(f"none of the {len(rankings)} ranking(s) could be featurized (every one over the "
                         "serving config's request limits, or none retrieved a candidate)")
    return Sample(np.vstack(features), np.concatenate(scores), np.concatenate(bundle_scores), queries,
                  np.concatenate(unknown))


def training_queries(dataset, data_dir: Path) -> tuple[list[str], set[str]]:
    """The train split's query texts (the reference is drawn from them), and every query text training saw
    (train split and impressions), normalised, for the unseen-query share. Of the impressions only the query
    ids are read: the table may hold the whole pool."""
    import pandas as pd

    texts = dataset.query_text
    train = sorted(set(texts.reindex(dataset.split("train")["query_id"].unique()).dropna()))
    seen = set(train)
    if (data_dir / "impressions.parquet").exists():
        ids = pd.read_parquet(data_dir / "impressions.parquet", columns=["query_id"])["query_id"].astype(str)
        seen |= set(texts.reindex(ids.unique()).dropna())
    return train, {normal_query(q) for q in seen}


def drift(reference: Sample, current: Sample, held_out: np.ndarray, served: np.ndarray) -> dict:
    """Every drift statistic: per feature PSI and KS, the score's, and the query novelty's. A ranking's items
    share its query, so PSI's bins follow the number of distinct queries, not of pairs."""
    names = list(LEXICAL_FEATURES)
    queries = min(len(set(reference.queries)), len(set(current.queries)))

    def row(before, after) -> dict:
        return {"psi": psi(before, after, samples=queries), "ks": ks(before, after)[0]}

    rows = {name: row(reference.features[:, j], current.features[:, j]) for j, name in enumerate(names)}
    rows[SCORE] = row(reference.scores, current.scores)
    rows[NOVELTY] = {"psi": psi(held_out, served), "ks": ks(held_out, served)[0]}
    return {name: {key: round(value, 4) for key, value in row.items()} for name, row in rows.items()}


@dataclass
class MonitorResult:
    report: dict
    exit_code: int


def _records(bundle, traffic_dir: Path, since: datetime, until: datetime, max_records: int, seed: int):
    """The window's light columns (every record: versions, cache hits), and a sample of at most ``max_records``
    of this student's records with everything: the lists of items and scores are read for the sample only."""
    from relevance.traffic import read_traffic

    light = read_traffic(traffic_dir, since, until,
                         columns=["request_id", "instance", "model_version", "query_cache_hit"])
    versions = {str(k): int(v) for k, v in light["model_version"].value_counts().items()}
    mine = light[light["model_version"] == bundle.manifest["student_version"]]
    sample = mine.sample(n=min(max_records, len(mine)), random_state=seed)
    full = read_traffic(traffic_dir, since, until, request_ids=set(sample["request_id"])) if len(sample) else None
    if full is not None:
        full = full.merge(sample[["request_id", "instance"]], on=["request_id", "instance"])
    return light, len(mine), versions, full


def training_dataset(config):
    """The dataset the student was trained on, and its folder. A prepared one is read where it is (data.path: the
    dataset grades are imported into, which a refresh trains on, so it follows the champion with no copy to
    replace), with the judge's slices of the config, as a chain's copy records them (relevance.data.copy_prepared);
    another source is prepared into the workdir once, as the canary watch does."""
    import dataclasses

    from relevance.chain import Chain
    from relevance.data import judge_slices
    from relevance.data.schema import Dataset

    if config.data.source == "prepared":
        dataset = Dataset.load(Path(config.data.path), with_impressions=False)
        dataset.info = dataclasses.replace(dataset.info, **judge_slices(config.data))
        return dataset, Path(config.data.path)
    chain = Chain(config)
    return chain.dataset(with_impressions=False), chain.data_dir


def monitor(config, bundle_dir: Path, feature_repo: Path, traffic_dir: Path, since: datetime, until: datetime,
            out: Path, pushgateway: str | None = None, judge_dir: Path | None = None, log=print) -> MonitorResult:
    """Compare the window [since, until) of ``traffic_dir`` with the training reference (and, with
    ``judge_dir``, judge the served lists); write the reports."""
    from relevance.platform.item_source import FeastItemSource
    from relevance.student.scoring import OnlineScorer, OnnxStudent, ServingBundle

    settings = config.monitor
    if judge_dir is not None and not (Path(judge_dir) / "manifest.json").exists():  # before any of the work
        raise FileNotFoundError(f"--judge {judge_dir}: no manifest.json there; expected a saved teacher or "
                                "cross-encoder directory")
    bundle = ServingBundle(bundle_dir)
    frame, mine, versions, sample = _records(bundle, traffic_dir, since, until, settings.max_records,
                                             settings.seed)
    report = {"window": {"since": since.isoformat(), "until": until.isoformat()}, "traffic_dir": str(traffic_dir),
              "model_version": bundle.manifest["student_version"], "records": len(frame),
              "records_by_model_version": versions, "records_of_this_student": mine}
    if mine < settings.min_records:
        report["verdict"] = (f"too little traffic: {mine} record(s) of student {report['model_version']} in the "
                             f"window, monitor.min_records is {settings.min_records}")
        return _finish(report, EXIT_TOO_FEW, out, pushgateway, log)
    items = FeastItemSource.for_bundle(feature_repo, bundle.manifest, config.serving.item_cache_size,
                                       config.serving.item_cache_ttl_seconds)
    serving = config.serving.model_copy(update={"max_candidates": max(config.serving.max_candidates,
                                                                      settings.candidates)})
    scorer = OnlineScorer(bundle, items, serving, student=OnnxStudent(bundle.in_process_graph(False)))
    dataset, data_dir = training_dataset(config)
    train, seen = training_queries(dataset, data_dir)
    rng = np.random.default_rng(settings.seed)
    drawn = [train[i] for i in rng.permutation(len(train))[:2 * settings.reference_queries]]
    reference_queries, held_out_queries = drawn[::2], drawn[1::2]
    log(f"monitor: reference from {len(reference_queries)} training queries, {mine} records in the window")
    retrieved = [(q, "", scorer.bm25.top_k(q, settings.candidates)[0].tolist()) for q in reference_queries]
    reference = featurize(scorer, [ranking for ranking in retrieved if ranking[2]], settings.top_k)
    skipped: list[str] = []
    current = featurize(scorer, list(zip(sample["query"], sample["locale"], sample["item_ids"].map(list))),
                        settings.top_k, served=sample["scores"].map(list).tolist(), skipped=skipped)
    encode = scorer.encoder.encode
    anchor = encode(reference_queries)
    held_out = nearest_similarity(encode(held_out_queries), anchor)
    served = nearest_similarity(encode(sorted(set(current.queries))), anchor)
    statistics = drift(reference, current, held_out, served)
    catalog = set(dataset.items["item_id"])
    top_items = [item for ids in sample["item_ids"] for item in list(ids)[:settings.top_k]]
    hits = frame["query_cache_hit"].dropna()
    report.update({
        "drift": statistics,
        "coverage": {"unseen_queries": round(float(np.mean([normal_query(q) not in seen
                                                            for q in sample["query"]])), 4),
                     "items_not_in_training_catalog": round(float(np.mean([i not in catalog for i in top_items])), 4),
                     "unknown_items": round(float(current.unknown.mean()), 4),
                     "query_cache_hit_rate": round(float(hits.mean()), 4) if len(hits) else None},
        "consistency": {"max_abs_score_difference": round(float(np.abs(current.scores - current.bundle_scores).max()),
                                                          5)},
        "samples": {"reference_pairs": len(reference.scores), "served_pairs": len(current.scores),
                    "served_records": len(sample), "served_records_skipped": len(skipped)},
    })
    # Served queries closer to the training queries than held-out ones (the same queries again) are no drift.
    novel = float(np.mean(served)) < float(np.mean(held_out))
    alerts = [f"{name}: PSI {row['psi']} > {settings.psi_alert}" for name, row in statistics.items()
              if row["psi"] > settings.psi_alert and (name != NOVELTY or novel)]
    if report["coverage"]["unknown_items"] > settings.max_unknown_items:
        alerts.append(f"unknown items: {report['coverage']['unknown_items']} of the served top-{settings.top_k} > "
                      f"{settings.max_unknown_items}")
    report["alerts"] = alerts
    code = EXIT_DRIFT if alerts else EXIT_OK
    verdict = "drift: " + "; ".join(alerts) if alerts else "no drift above the alert thresholds"
    if judge_dir is not None:
        report["judged"] = judged_or_refused(config, dataset, Path(judge_dir), sample, seen, mine, log)
        quality = quality_alert(report["judged"], settings.judged_ndcg_alert)
        if quality:
            report["quality_alert"] = quality
            code, verdict = EXIT_QUALITY, f"quality: {quality}" + (f"; {verdict}" if alerts else "")
    report["verdict"] = verdict
    out.mkdir(parents=True, exist_ok=True)
    _plot(reference, current, held_out, served, statistics, settings.psi_alert, out)
    if "overall" in report.get("judged", {}):
        plot_judged(report["judged"], settings.judged_ndcg_alert, out)
    return _finish(report, code, out, pushgateway, log)


def _finish(report: dict, code: int, out: Path, pushgateway: str | None, log) -> MonitorResult:
    from relevance.common.files import atomic_write_json, atomic_write_text

    report["exit_code"] = code
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "monitor.json", report)
    atomic_write_text(out / "monitor.html", _html(report, out))
    _gauges(report, out / "monitor.prom", pushgateway)
    log(f"monitor: {report['verdict']} (exit {code}); report {out / 'monitor.html'}")
    return MonitorResult(report, code)


def _gauges(report: dict, path: Path, pushgateway: str | None) -> None:
    """The report's numbers as Prometheus gauges: a textfile, and pushed to a Pushgateway when one is given."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

    registry = CollectorRegistry()
    Gauge("relevance_monitor_records", "Records of the monitored student in the window",
          registry=registry).set(report["records_of_this_student"])
    Gauge("relevance_monitor_alert", "1 if the last monitor round alerted on drift",
          registry=registry).set(int(bool(report.get("alerts"))))  # also when a quality alert took the exit code
    if "drift" in report:
        gauge = Gauge("relevance_monitor_psi", "Population stability index against the training reference",
                      ["feature"], registry=registry)
        for name, row in report["drift"].items():
            gauge.labels(name).set(row["psi"])
        coverage = Gauge("relevance_monitor_share", "Coverage shares of the window's traffic", ["what"],
                         registry=registry)
        for name, value in report["coverage"].items():
            if value is not None:
                coverage.labels(name).set(value)
    if "judged" in report:
        Gauge("relevance_monitor_judge_refused", "1 if the judge was refused (below the agreement floor) or had "
              "too few lists to judge", registry=registry).set(int("refused" in report["judged"]))
    if "overall" in report.get("judged", {}):
        judged = Gauge("relevance_monitor_judged_ndcg", "Judged nDCG of served lists (the judge's grades), with "
                       "its interval bounds", ["stratum", "bound"], registry=registry)
        for name, row in {"overall": report["judged"]["overall"], **report["judged"]["strata"]}.items():
            for bound in ("mean", "ci_low", "ci_high"):
                if row[bound] is not None:
                    judged.labels(name, bound).set(row[bound])
        Gauge("relevance_monitor_quality_alert", "1 if the last monitor round alerted on judged quality",
              registry=registry).set(int(report["exit_code"] == EXIT_QUALITY))
    write_to_textfile(str(path), registry)
    if pushgateway:
        push_to_gateway(pushgateway, job="relevance-monitor", registry=registry)


def _plot(reference: Sample, current: Sample, held_out, served, statistics: dict, alert: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = list(statistics)
    values = [statistics[name]["psi"] for name in names]
    axes[0].barh(names, values, color=["tab:red" if v > alert else "tab:blue" for v in values])
    axes[0].axvline(alert, color="tab:red", linestyle="--", label=f"alert ({alert})")
    axes[0].set_xlabel("PSI against the training reference")
    axes[0].legend()
    bins = np.linspace(0, max(reference.scores.max(), current.scores.max()), 30)
    axes[1].hist([reference.scores, current.scores], bins=bins, density=True, label=["reference", "served"])
    axes[1].set_xlabel("expected grade (top-k)")
    axes[1].legend()
    axes[2].hist([held_out, served], bins=30, density=True, label=["held-out training queries", "served queries"])
    axes[2].set_xlabel("similarity to the nearest reference query")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out / "monitor.png", dpi=90)
    plt.close(fig)


def _html(report: dict, out: Path) -> str:
    import base64
    import html

    pictures = [("monitor.png", "drift"), ("judged.png", "judged")]
    picture = "".join(f'<img src="data:image/png;base64,{base64.b64encode((out / name).read_bytes()).decode()}" '
                      'width="100%">' for name, key in pictures if key in report and (out / name).exists())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>relevance monitor</title></head><body>"
            f"<h1>Traffic monitor</h1><p><b>{html.escape(report['verdict'])}</b> (exit {report['exit_code']})</p>"
            f"{picture}<pre>{html.escape(json.dumps(report, indent=2))}</pre></body></html>")
