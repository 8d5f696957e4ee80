"""Automated canary analysis: should the challenger student replace the champion?

Evidence, all paired (both servers rank the same queries):

1. **Labelled replay.** The evaluation split's judged queries are replayed to both servers; each query's
   nDCG@k is computed against the human grades, and so is the accuracy of the predicted grade on every pair.
2. **Teacher as judge.** Unlabelled replayed queries (search impressions) are ranked by both servers and the
   teacher grades the union of their top-k: LLM-as-judge evaluation of rankings that have no human labels, as
   Pinterest does for search relevance. Each query's nDCG@k is computed against the teacher's grades.
3. **SLOs.** Latency and errors from each server's Prometheus metrics over the analysis window.

For each nDCG difference (challenger − champion, per query) a percentile bootstrap confidence interval of the
mean is computed (Efron & Tibshirani, 1993, *An Introduction to the Bootstrap*, ch. 13).

Decision (:func:`decide`): **rollback** if the challenger breaks an SLO or a confidence interval lies wholly
below zero; **promote** if a confidence interval over at least ``min_queries`` queries lies wholly above zero and
none says worse; otherwise **hold** (the difference is noise at this sample size: keep the canary running).
The teacher's verdict is not independent of a student distilled from it (it prefers its imitators), so by
default (``canary.judge_can_promote: false``) a judged win alone does not promote; a judged loss does roll back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from relevance.config import CanaryConfig

PROMOTE, HOLD, ROLLBACK = "promote", "hold", "rollback"
LABELLED, JUDGE = "labelled", "teacher judge"
LATENCY_METRIC = "relevance_request_seconds"
OUTCOME_METRIC = "relevance_requests_total"
SERVER_INFO_METRIC = "relevance_server_info"


class EvidenceError(RuntimeError):
    """Metrics that are no evidence either way (the canary watch exits 4, and a retry may find some): a page that
    does not parse, or two scrapes of one variant that cannot be one server's window (another replica answered,
    or counters went down with nothing to tell a restart from a replica)."""


# ------------------------------------------------------------------------------------------------------------
# Evidence
# ------------------------------------------------------------------------------------------------------------


@dataclass
class QualityEvidence:
    """A paired per-query comparison: ``diffs[i]`` = challenger − champion on query i."""

    name: str  # "labelled" or "teacher judge"
    metric: str  # e.g. "ndcg@20"
    queries: int
    champion: float
    challenger: float
    mean_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.name}: {self.metric} {self.champion:.4f} → {self.challenger:.4f} on {self.queries} queries, "
                f"diff {self.mean_diff:+.4f} ({self.confidence:.0%} CI {self.ci_low:+.4f} .. {self.ci_high:+.4f})")


def bootstrap_ci(diffs: np.ndarray, samples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (resampling queries with replacement)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 1 or diffs.size == 0:
        raise ValueError(f"expected a non-empty 1-D array of per-query differences, got shape {diffs.shape}")
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(samples, diffs.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def compare(name: str, metric: str, champion: np.ndarray, challenger: np.ndarray, config: CanaryConfig,
            **extra) -> QualityEvidence:
    champion, challenger = np.asarray(champion, float), np.asarray(challenger, float)
    if champion.shape != challenger.shape:
        raise ValueError(f"{name}: expected paired per-query values, got {champion.shape} and {challenger.shape}")
    diffs = challenger - champion
    low, high = bootstrap_ci(diffs, config.bootstrap_samples, config.confidence, config.seed)
    return QualityEvidence(name, metric, int(diffs.size), float(champion.mean()), float(challenger.mean()),
                           float(diffs.mean()), low, high, config.confidence, extra)


@dataclass
class SloEvidence:
    """One server over the analysis window."""

    server: str
    requests: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    # The same instance (host) with a later process start inside the window: the process restarted (a crash, an
    # OOM kill), and the numbers above count only what it served since. A rescheduled pod is another host: no
    # evidence at all (analysis.EvidenceError), not a restart.
    restarted: bool = False

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def line(self) -> str:
        p50 = "n/a" if self.p50_ms is None else f"{self.p50_ms:.1f} ms"
        p99 = "n/a" if self.p99_ms is None else f"{self.p99_ms:.1f} ms"
        return (f"{self.server}: {self.requests} requests, error rate {self.error_rate:.2%}, p50 {p50}, "
                f"p99 {p99}" + (" (restarted during the window: counted since the restart)" if self.restarted else ""))


def parse_metrics(text: str) -> dict:
    """The counters the SLOs need from a Prometheus exposition: latency buckets, request outcomes, and which
    process they belong to (``instance`` from relevance_server_info, ``started`` from the default registry's
    process_start_time_seconds; None where the exposition has none)."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    outcomes: dict[str, float] = {}
    instance = started = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == SERVER_INFO_METRIC:
                instance = sample.labels.get("instance")
            elif sample.name == "process_start_time_seconds":
                started = float(sample.value)
            elif sample.name == f"{LATENCY_METRIC}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == OUTCOME_METRIC:
                outcome = sample.labels.get("outcome", "")
                outcomes[outcome] = outcomes.get(outcome, 0.0) + sample.value
    return {"buckets": buckets, "outcomes": outcomes, "instance": instance, "started": started}


def scrape(url: str, timeout: float = 10.0) -> dict:
    import httpx

    response = httpx.get(f"{url.rstrip('/')}/metrics", timeout=timeout)
    response.raise_for_status()
    try:
        return parse_metrics(response.text)
    except ValueError as error:  # prometheus_client's parser: a page that is not an exposition
        raise EvidenceError(f"{url}/metrics is not a Prometheus exposition: {error}") from None


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the q-th observation."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            inside = count - previous_count
            return previous_bound + (bound - previous_bound) * ((rank - previous_count) / inside if inside else 1.0)
        previous_bound, previous_count = bound, count
    return previous_bound


def slo_window(server: str, before: dict, after: dict) -> SloEvidence:
    """The SLO numbers of what happened between two scrapes of one server.

    A restart is the same instance with a later process start: the window is then what it served since, marked
    ``restarted``, which :func:`decide` treats as a breach for the challenger (a crash or an OOM kill). Scrapes of
    another instance (a second replica behind one URL), or counters that went down where the exposition does not
    say which process it is, are no window at all: :class:`EvidenceError`, never a restart, since a healthy
    replica with fewer requests would otherwise be rolled back."""
    buckets = {b: after["buckets"].get(b, 0.0) - before["buckets"].get(b, 0.0) for b in after["buckets"]}
    outcomes = {o: after["outcomes"].get(o, 0.0) - before["outcomes"].get(o, 0.0) for o in after["outcomes"]}
    went_down = any(v < 0 for v in [*buckets.values(), *outcomes.values()]) or \
        bool(set(before["outcomes"]) - set(after["outcomes"]))
    ids = [(m.get("instance"), m.get("started")) for m in (before, after)]
    known = all(i is not None and t is not None for i, t in ids)
    if known and ids[0][0] != ids[1][0]:
        raise EvidenceError(f"{server}: the two scrapes reached different instances ({ids[0][0]} → {ids[1][0]}): "
                             "several replicas behind one URL; analyse one server process per variant")
    restarted = known and ids[1][1] > ids[0][1]
    if went_down and not restarted:
        raise EvidenceError(f"{server}: its counters went down between the two scrapes, and its metrics do not say "
                             "whether it restarted or another replica answered; analyse one server process per "
                             "variant (relevance serve exposes relevance_server_info and process_start_time_seconds)")
    if restarted:
        buckets, outcomes = dict(after["buckets"]), dict(after["outcomes"])
    requests = int(round(sum(outcomes.values())))
    # Server errors only: a bad request is the client's, and both servers are sent the same requests.
    errors = int(round(outcomes.get("error", 0.0)))
    p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
    return SloEvidence(server, requests, errors, None if p50 is None else p50 * 1e3,
                       None if p99 is None else p99 * 1e3, restarted)


# ------------------------------------------------------------------------------------------------------------
# Decision
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Decision:
    action: str
    reasons: list[str]
    quality: list[QualityEvidence]
    slo: dict[str, SloEvidence]

    def to_dict(self) -> dict:
        return {"decision": self.action, "reasons": self.reasons, "quality": [asdict(q) for q in self.quality],
                "slo": {k: {**asdict(v), "error_rate": v.error_rate} for k, v in self.slo.items()}}

    def markdown(self, title: str = "Canary analysis") -> str:
        lines = [f"# {title}", "", f"**Decision: {self.action.upper()}**", ""]
        lines += [f"- {reason}" for reason in self.reasons]
        lines += ["", "## Quality (paired, challenger − champion)", "",
                  "| evidence | metric | queries | champion | challenger | diff | CI |", "|---|---|---|---|---|---|---|"]
        for q in self.quality:
            lines.append(f"| {q.name} | {q.metric} | {q.queries} | {q.champion:.4f} | {q.challenger:.4f} | "
                         f"{q.mean_diff:+.4f} | {q.confidence:.0%}: {q.ci_low:+.4f} .. {q.ci_high:+.4f} |")
            for key, value in q.extra.items():
                lines.append(f"|  | {key} | | {value[0]:.4f} | {value[1]:.4f} | {value[1] - value[0]:+.4f} | |"
                             if isinstance(value, (list, tuple)) else f"|  | {key} | | {value} | | | |")
        lines += ["", "## SLOs (analysis window, from each server's Prometheus metrics)", ""]
        lines += [f"- {s.line()}" for s in self.slo.values()]
        return "\n".join(lines) + "\n"


def decide(quality: list[QualityEvidence], slo: dict[str, SloEvidence], config: CanaryConfig) -> Decision:
    """promote / hold / rollback, with one sentence per reason (module docstring: the rules)."""
    reasons: list[str] = []
    challenger, champion = slo.get("challenger"), slo.get("champion")
    breaches = []
    if challenger is not None:
        if challenger.restarted:
            breaches.append("the challenger restarted during the analysis window (the same instance, a later process "
                            "start): a crash or an OOM kill")
        if challenger.error_rate > config.max_error_rate:
            breaches.append(f"challenger error rate {challenger.error_rate:.2%} > SLO {config.max_error_rate:.2%}")
        if challenger.p99_ms is not None and challenger.p99_ms > config.max_p99_ms:
            breaches.append(f"challenger p99 {challenger.p99_ms:.1f} ms > SLO {config.max_p99_ms:.1f} ms")
        # A champion that restarted has a window of another length: its p99 is no yardstick this round.
        if challenger.p99_ms is not None and champion is not None and champion.p99_ms and not champion.restarted \
                and challenger.p99_ms > config.max_p99_ratio * champion.p99_ms:
            breaches.append(f"challenger p99 {challenger.p99_ms:.1f} ms > {config.max_p99_ratio:g} × champion's "
                            f"{champion.p99_ms:.1f} ms")
    worse = [q for q in quality if q.ci_high < 0 and q.queries >= config.min_queries]
    wins = [q for q in quality if q.ci_low > 0 and q.queries >= config.min_queries]
    better = [q for q in wins if q.name != JUDGE or config.judge_can_promote]
    if breaches or worse:
        reasons += [f"SLO breached: {b}" for b in breaches]
        reasons += [f"worse beyond noise: {q.line()}" for q in worse]
        return Decision(ROLLBACK, reasons, quality, slo)
    if not quality:
        return Decision(HOLD, ["no quality evidence (no replayed queries)"], quality, slo)
    if challenger is not None and (challenger.requests == 0 or challenger.p99_ms is None):
        return Decision(HOLD, ["the challenger served no requests in the analysis window: its SLOs are unknown"],
                        quality, slo)
    if better:
        reasons += [f"better beyond noise: {q.line()}" for q in better]
        reasons += ["SLOs met" if challenger is not None else "no SLO metrics were read"]
        return Decision(PROMOTE, reasons, quality, slo)
    for q in quality:
        if q in wins:
            reasons.append(f"{q.name} favours the challenger but cannot promote alone (canary.judge_can_promote "
                           f"is off: the challenger was distilled from this teacher): {q.line()}")
        elif q.queries < config.min_queries:
            reasons.append(f"too few queries to decide on {q.name} ({q.queries} < canary.min_queries "
                           f"{config.min_queries}): {q.line()}")
        else:
            reasons.append(f"no difference beyond noise: {q.line()}")
    return Decision(HOLD, reasons, quality, slo)


# ------------------------------------------------------------------------------------------------------------
# Replay
# ------------------------------------------------------------------------------------------------------------


@dataclass
class ReplayQuery:
    query_id: str
    query: str
    candidates: list[str]
    locale: str = ""


def replay(url: str, model: str, queries: list[ReplayQuery], progress: str | None = None) -> dict[str, dict]:
    """Each query's ranking from one server (V2, tritonclient.http): query_id → {item_id: (score, probs)}."""
    from rich.progress import track

    from relevance.serving.client import rerank

    out = {}
    for q in track(queries, description=progress or f"replay → {url}", transient=True, disable=progress is None):
        ranking = rerank(url, model, q.query, q.candidates, q.locale)
        out[q.query_id] = {item["item_id"]: (item["score"], item["probs"]) for item in ranking["items"]}
    return out


def labelled_evidence(pairs, rankings: dict[str, dict[str, dict]], num_grades: int,
                      config: CanaryConfig) -> QualityEvidence:
    """nDCG@k per query and accuracy per pair against human grades. ``pairs``: query_id, item_id, grade."""
    from relevance.evaluation.judge import per_query_ndcg

    k = config.ndcg_k
    per_server, accuracy = {}, {}
    for server in ("champion", "challenger"):
        ranked = rankings[server]
        scores = np.array([ranked[q][i][0] for q, i in zip(pairs["query_id"], pairs["item_id"])])
        predicted = np.array([int(np.argmax(ranked[q][i][1])) for q, i in zip(pairs["query_id"], pairs["item_id"])])
        per_server[server] = per_query_ndcg(pairs["query_id"], pairs["grade"], scores, k, num_grades)
        accuracy[server] = float((predicted == pairs["grade"].to_numpy()).mean())
    queries = sorted(per_server["champion"])
    return compare(LABELLED, f"ndcg@{k}", np.array([per_server["champion"][q] for q in queries]),
                   np.array([per_server["challenger"][q] for q in queries]), config,
                   accuracy=(accuracy["champion"], accuracy["challenger"]), pairs=int(len(pairs)))


def judge_evidence(queries: list[ReplayQuery], rankings: dict[str, dict[str, dict]], teacher,
                   item_text: dict[str, str], config: CanaryConfig) -> QualityEvidence | None:
    """The teacher grades the union of both servers' top-k for each unlabelled query; nDCG@k of each ranking
    against those grades (relevance.evaluation.judge, the judge offline evaluation uses too)."""
    from relevance.evaluation.judge import judge_grades, judged_ndcg

    k = config.judge_top_k
    text = {q.query_id: q.query for q in queries}
    tops = {server: {q.query_id: sorted(rankings[server][q.query_id],
                                        key=lambda i, r=rankings[server][q.query_id]: -r[i][0])[:k]
                     for q in queries}
            for server in ("champion", "challenger")}
    per_server, judged = judged_ndcg(
        tops, text, lambda ids, items: judge_grades(teacher, [text[q] for q in ids],
                                                    [item_text.get(i, "") for i in items]),
        k, teacher.num_grades)
    shared = sorted(set(per_server["champion"]) & set(per_server["challenger"]))
    if not shared:
        return None
    return compare(JUDGE, f"ndcg@{k}", np.array([per_server["champion"][q] for q in shared]),
                   np.array([per_server["challenger"][q] for q in shared]), config, judged_pairs=judged)


def replay_queries(dataset, config, split: str) -> tuple[list[ReplayQuery], "object", list[ReplayQuery]]:
    """What to replay: the judged queries of ``split`` (with their judged items as candidates, and the pairs
    with grades), and up to ``canary.judge_queries`` unlabelled impression queries for the teacher to judge,
    drawn from the judge-holdout queries only (relevance.data.schema.Dataset.judge_holdout_queries): the pool
    never took them, so the challenger was not distilled on the pairs the judge grades."""
    import pandas as pd

    limit = config.serving.max_candidates
    text = dataset.queries.set_index("query_id")["query"]
    locale = dataset.queries.set_index("query_id")["locale"] if "locale" in dataset.queries else None
    pairs = dataset.split(split)[["query_id", "item_id", "grade"]]
    pairs = pairs.groupby("query_id", sort=True).head(limit).reset_index(drop=True)

    def as_replay(query_id, items) -> ReplayQuery:
        return ReplayQuery(str(query_id), str(text[query_id]), [str(i) for i in items],
                           str(locale[query_id]) if locale is not None and pd.notna(locale[query_id]) else "")

    labelled = [as_replay(q, group["item_id"]) for q, group in pairs.groupby("query_id", sort=True)]
    unlabelled = []
    if dataset.impressions is not None and config.canary.judge_queries > 0:
        holdout = set(dataset.judge_holdout_queries()["query_id"])
        pool = dataset.impressions[dataset.impressions["query_id"].isin(holdout)]
        ids = pool["query_id"].drop_duplicates().sort_values()
        chosen = ids.sample(min(len(ids), config.canary.judge_queries), random_state=config.canary.seed)
        pool = pool[pool["query_id"].isin(set(chosen))].groupby("query_id", sort=True).head(limit)
        unlabelled = [as_replay(q, group["item_id"]) for q, group in pool.groupby("query_id", sort=True)]
    return labelled, pairs, unlabelled


def analyze(config, champion_url: str, challenger_url: str, dataset, teacher=None, before: dict | None = None,
            split: str | None = None) -> Decision:
    """Replay, judge, read the SLOs and decide. ``before``: each server's metrics at the start of the window
    (default: scraped now, so the window is this replay)."""
    urls = {"champion": champion_url, "challenger": challenger_url}
    before = before or {server: scrape(url) for server, url in urls.items()}
    labelled, pairs, unlabelled = replay_queries(dataset, config, split or config.eval.split)
    model = config.serving.model_name
    quality = []
    rankings = {s: replay(u, model, labelled, progress=f"labelled queries → {s}") for s, u in urls.items()}
    if labelled:
        quality.append(labelled_evidence(pairs, rankings, dataset.info.num_grades, config.canary))
    if unlabelled and teacher is not None:
        rankings = {s: replay(u, model, unlabelled, progress=f"unlabelled queries → {s}") for s, u in urls.items()}
        item_text = dict(zip(dataset.items["item_id"].astype(str), teacher.item_texts(dataset.items)))
        judged = judge_evidence(unlabelled, rankings, teacher, item_text, config.canary)
        if judged is not None:
            quality.append(judged)
    slo = {server: slo_window(server, before[server], scrape(url)) for server, url in urls.items()}
    decision = decide(quality, slo, config.canary)
    if teacher is not None and config.canary.judge_queries > 0 and not unlabelled:
        decision.reasons.append("no teacher-judge evidence: the dataset has no judge-holdout queries with "
                                "impressions (data.judge_holdout_fraction), and the judge never grades queries a "
                                "student may have been distilled on")
    return decision


def write_report(decision: Decision, out_dir: str | Path, context: dict) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "canary-analysis.md", out_dir / "canary-analysis.json"
    text = decision.markdown()
    text += "\n## Context\n\n" + "\n".join(f"- {k}: {v}" for k, v in context.items()) + "\n"
    md.write_text(text)
    js.write_text(json.dumps({**decision.to_dict(), "context": context}, indent=2, default=str))
    return md, js
