"""Judge-based offline evaluation: compare two rankers on queries nobody graded (``relevance judge-eval``).

1. The judge (the teacher, or any saved cross-encoder) is calibrated against humans first: its grades on the
   judge-check slice of valid (relevance.data.schema.Dataset.judge_check_pairs: valid queries the teacher
   neither early-stopped nor calibrated on), exact agreement, Kendall's τ and Spearman's ρ, per locale. Below
   ``min_agreement`` (exact) no judged effect is reported. The report says whether the judge's manifest records
   having set that slice aside; a judge trained elsewhere may have seen it, and its agreement is then optimistic.
2. The population is the judge-holdout queries (Dataset.judge_holdout_queries: unjudged queries the pool never
   takes, so neither ranker was distilled on them) that had traffic (impressions), stratified by locale × query
   length × traffic band (relevance.evaluation.sampling). A proportional pilot sample measures each stratum's spread of the per-query
   difference; the main sample is allocated by Neyman's rule (or proportionally) and drawn from the rest.
3. For each sampled query both rankers rerank the catalog's BM25 top-N candidates (score: expected grade); the
   judge grades the union of their top-k (relevance.evaluation.judge) and each ranking gets nDCG@k.
4. The difference candidate − baseline is estimated with the stratified estimator and its confidence interval,
   next to what simple random sampling would give with the same data (the design effect), with the minimum
   detectable effect and the queries a 1% effect would need.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from relevance.data.schema import DataContractError, Dataset


def _population(dataset: Dataset) -> tuple[pd.DataFrame, pd.Series | None]:
    """The judge-holdout queries, with their traffic (impressions per query) where the dataset has impressions
    (then only those with traffic)."""
    if not dataset.info.judge_holdout_fraction:
        raise DataContractError(f"{dataset.info.missing_slice('judge_holdout_fraction')}: every unjudged query may be "
                                "in the pool a student was distilled on, so a judged comparison would score its "
                                "training pairs. Set data.judge_holdout_fraction and rebuild what depends on it: the "
                                "prepared data, the pool, the labels and the students (in a chain workdir: data/, "
                                "pool.parquet, labels/, student*/, gbdt_*/)")
    queries = dataset.judge_holdout_queries()
    traffic = None
    if dataset.impressions is not None and len(dataset.impressions):
        traffic = dataset.impressions.groupby("query_id").size()
        traffic = traffic[traffic.index.isin(queries["query_id"])]
        queries = queries[queries["query_id"].isin(traffic.index)]
    if queries.empty:
        raise DataContractError(f"judge-eval needs judge-holdout queries (unjudged, kept out of the pool, with "
                                f"traffic where there are impressions); the dataset has none at "
                                f"judge_holdout_fraction {dataset.info.judge_holdout_fraction}")
    return queries.reset_index(drop=True), traffic


def judge_agreement(judge, dataset: Dataset, judge_text: pd.Series) -> dict:
    """The judge's agreement with humans on the judge-check pairs, and which pairs those were: whether the
    judge's manifest records having set exactly them aside (``untouched``)."""
    from relevance.evaluation.judge import human_agreement

    pairs = dataset.judge_check_pairs()
    locale = dataset.queries.set_index("query_id")["locale"] if "locale" in dataset.queries.columns else None
    report = human_agreement(judge, pairs, dataset.query_text, judge_text, locale)
    recorded = (judge.manifest.get("judge_check") or {}).get("pairs_hash")
    untouched = recorded is not None and recorded == dataset.judge_check_fingerprint()
    report["measured_on"] = {
        "pairs": int(len(pairs)), "queries": int(pairs["query_id"].nunique()), "untouched": untouched,
        "what": ("the judge-check slice of valid, which this judge neither early-stopped nor calibrated on"
                 if untouched else
                 "the judge-check slice of valid, which this judge's manifest does not record setting aside (trained "
                 "before the slice existed, or on other data): it may have early-stopped or calibrated on these "
                 "pairs, so the agreement may be optimistic")}
    return report


def ranker_holdout(directory: Path, dataset: Dataset) -> dict:
    """Whether a ranker can have learnt the judge-holdout queries. A teacher learns from judgments only; a
    student, GBDT or bundle records the holdout its training data was built without (``judge_holdout``), which
    must be the dataset's. A different record is refused (it may have been distilled on today's holdout
    queries); a model that records none (made before the record existed) is flagged."""
    from relevance.evaluation.evaluate import saved_manifest

    manifest = saved_manifest(directory)
    if manifest.get("kind") == "teacher":
        return {"untouched": True, "what": "a teacher: trained on judgments only"}
    if "judge_holdout" not in manifest:
        return {"untouched": False, "what": "records no judge holdout (made before models recorded it): it may have "
                "been distilled on these queries"}
    recorded, expected = manifest["judge_holdout"], dataset.judge_holdout_fingerprint()
    if recorded is None:
        return {"untouched": False, "what": "trained on data built with no judge holdout: it may have been "
                "distilled on these queries"}
    # Which queries are held out is a function of the query text and the fraction (a hash slice), so the same
    # fraction is the same slice: new traffic or a holdout query graded since changes the query count, not the
    # line. Another fraction may have let today's holdout queries into the pool.
    if recorded.get("fraction") != expected["fraction"]:
        raise DataContractError(f"{directory} was trained on data built without a judge holdout of fraction "
                                f"{recorded.get('fraction')}, but the dataset holds out {expected['fraction']} of "
                                "the unjudged queries: it may have been distilled on the queries judge-eval would "
                                "rank. Retrain it on a pool built with this dataset's holdout")
    return {"untouched": True, "what": "trained on data built without the judge-holdout queries"}


def judge_eval(config, dataset: Dataset, baseline_dir: Path, candidate_dir: Path, judge_dir: Path,
               cache_dir: Path, queries: int = 300, allocation: str = "neyman", pilot_share: float = 0.25,
               candidates: int = 50, k: int = 10, min_agreement: float = 0.4, seed: int = 0, log=print) -> dict:
    """Compare ``candidate_dir`` with ``baseline_dir`` (saved models or serving bundles: anything
    relevance.evaluation.evaluate.load_scorer opens) on ``queries`` sampled unjudged queries, judged by the cross-encoder
    at ``judge_dir``. Returns the report."""
    from relevance.models.bm25 import BM25Index
    from relevance.evaluation.evaluate import load_scorer
    from relevance.evaluation.sampling import allocate, query_strata, stratified_sample

    if not 0 < pilot_share < 1:
        raise ValueError(f"pilot_share must be in (0, 1), got {pilot_share}")
    if queries < 4:
        raise ValueError(f"judge-eval needs at least 4 queries (a pilot and a sample), got {queries}")
    population, traffic = _population(dataset)  # before loading anything: a dataset without the slice fails fast
    rankers = {"baseline": ranker_holdout(Path(baseline_dir), dataset),
               "candidate": ranker_holdout(Path(candidate_dir), dataset)}
    for name, state in rankers.items():
        if not state["untouched"]:
            log(f"judge-eval: WARNING the {name} {state['what']}")
    judge, judge_text, calibration = calibrated_judge(judge_dir, dataset, min_agreement, log)

    strata = query_strata(population, traffic)
    sizes = strata.value_counts()
    pilot_n = max(2, int(round(queries * pilot_share)))
    pilot = stratified_sample(strata, allocate(sizes, pilot_n, "proportional"), seed)
    rest = strata[~strata.index.isin(pilot)]

    index = BM25Index.for_items(dataset.items, config.text, config.candidates.k1, config.candidates.b)
    scorers = {"baseline": load_scorer(baseline_dir, dataset.items, cache_dir),
               "candidate": load_scorer(candidate_dir, dataset.items, cache_dir)}

    def differences(query_ids: pd.Index) -> tuple[pd.DataFrame, int]:
        return _judged_differences(population[population["query_id"].isin(query_ids)], index, scorers,
                                   dataset.query_text, judge, judge_text, candidates, k)

    pilot_scores, pilot_judged = differences(pilot)
    stds = pilot_scores["difference"].groupby(strata.reindex(pilot_scores.index)).std()
    plan = allocate(rest.value_counts(), queries - pilot_n, allocation, stds if allocation == "neyman" else None)
    main = stratified_sample(rest, plan, seed + 1)
    scored, judged = differences(main)
    figures, estimate = _estimates(scored, rest, config.canary.confidence, log)
    report = {
        "baseline": str(baseline_dir), "candidate": str(candidate_dir), "judge": str(judge_dir),
        "judge_version": judge.version, "metric": f"ndcg@{k}", "candidates_per_query": candidates,
        "judge_agreement": calibration, "min_agreement": min_agreement,
        "population_queries": int(len(population)), "strata": int(len(sizes)), "allocation": allocation,
        "pilot_queries": int(len(pilot)), "sampled_queries": int(len(main)), "scored_queries": int(len(scored)),
        "judged_pairs": int(pilot_judged + judged),
        **figures,
        "allocation_plan": {str(h): int(n) for h, n in plan.items() if n},
        "estimator_notes": estimate.notes(), "rankers_holdout": rankers,
    }
    low, high = estimate.interval
    report["verdict"] = ("candidate better" if low > 0 else "baseline better" if high < 0 else
                         "no difference detected")
    return report


def calibrated_judge(judge_dir: Path, dataset: Dataset, min_agreement: float, log) -> tuple:
    """The judge, its item texts and its agreement with humans, which must reach ``min_agreement`` (exact)."""
    from relevance.evaluation.judge import require_agreement
    from relevance.teacher.model import Teacher

    judge = Teacher.load(judge_dir)
    judge_text = judge.item_texts(dataset.items)
    calibration = judge_agreement(judge, dataset, judge_text)
    measured = calibration["measured_on"]
    log(f"judge vs humans on {measured['pairs']} judge-check pairs "
        f"({'untouched by the judge' if measured['untouched'] else 'not recorded as untouched: may be optimistic'}): "
        f"exact {calibration['overall']['exact']:.3f}, Kendall's tau {calibration['overall']['kendall_tau']}, "
        f"Spearman's rho {calibration['overall']['spearman_rho']}")
    require_agreement(calibration, min_agreement)
    return judge, judge_text, calibration


def _judged_differences(chosen: pd.DataFrame, index, scorers: dict, query_text: pd.Series, judge,
                        judge_text: pd.Series, candidates: int, k: int) -> tuple[pd.DataFrame, int]:
    """Both rankers rerank each chosen query's BM25 top ``candidates``; the judge grades the union of their top
    ``k``. One row per query both rankings could be scored on (nDCG@k of each, and candidate − baseline), and the
    number of pairs judged."""
    from relevance.evaluation.judge import judge_grades, judged_ndcg
    from relevance.labels.channels import bm25_candidates
    from relevance.models.metrics import expected_grade

    pairs = bm25_candidates(index, chosen, candidates)
    tops = {}
    for name, scorer in scorers.items():
        score = expected_grade(scorer.score(pairs, query_text).probs)
        ranked = pairs.assign(score=score).sort_values(["query_id", "score"], ascending=[True, False])
        tops[name] = ranked.groupby("query_id")["item_id"].apply(list).to_dict()
    text = {q: query_text[q] for q in chosen["query_id"]}
    per_query, judged = judged_ndcg(
        tops, text, lambda ids, items: judge_grades(judge, [text[q] for q in ids], judge_text.reindex(items)
                                                    .fillna("").tolist()), k, judge.num_grades)
    shared = sorted(set(per_query["baseline"]) & set(per_query["candidate"]))
    frame = pd.DataFrame({name: [per_query[name][q] for q in shared] for name in scorers}, index=shared)
    return frame.assign(difference=frame["candidate"] - frame["baseline"]), judged


def _estimates(scored: pd.DataFrame, rest: pd.Series, confidence: float, log) -> tuple[dict, object]:
    """The report's figures from the main sample (each ranker's mean, the difference, what simple random sampling
    would give, the design effect, the minimum detectable effect) and the stratified estimate of the difference."""
    from relevance.evaluation.sampling import (minimum_detectable_effect, population_variance, queries_needed,
                                               srs_estimate, stratified_estimate)

    diffs = scored["difference"]
    if len(diffs) < 2:
        raise DataContractError(f"only {len(diffs)} sampled queries had anything the judge found relevant; sample "
                                "more queries")
    # The estimator uses the strata sizes the main sample was drawn from (the population minus the pilot).
    # Every figure is weighted by the strata: the plain mean or spread of a Neyman sample is biased.
    sizes_rest = rest.value_counts()
    estimate = stratified_estimate(diffs, rest, sizes_rest, confidence)
    srs = srs_estimate(diffs, len(rest), confidence, rest, sizes_rest)
    means = {name: stratified_estimate(scored[name], rest, sizes_rest).mean for name in ("baseline", "candidate")}
    for note in estimate.notes():
        log(f"judge-eval: {note}")
    per_query_std = population_variance(diffs, rest, sizes_rest) ** 0.5
    design_effect = (estimate.std_error / srs.std_error) ** 2 if srs.std_error > 0 else None
    mde = minimum_detectable_effect(estimate.std_error)
    return {
        "baseline_mean": means["baseline"], "candidate_mean": means["candidate"],
        "difference": estimate.to_dict(), "srs_difference": srs.to_dict(),
        "design_effect": design_effect,
        "variance_reduction": None if design_effect is None else 1 - design_effect,
        "minimum_detectable_effect": mde,
        "queries_for_0.01": queries_needed(0.01, per_query_std, design_effect=design_effect or 1.0),
    }, estimate


def write_report(report: dict, out: str | Path) -> Path:
    """judge-eval.json (every figure) and judge-eval.md (what a person reads) in ``out``, each written atomically."""
    from relevance.common.files import atomic_write_json, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "judge-eval.json", report)
    atomic_write_text(out / "judge-eval.md", report_markdown(report))
    return out


def report_markdown(report: dict) -> str:
    d, s = report["difference"], report["srs_difference"]
    agreement = report["judge_agreement"]["overall"]
    reduction = report["variance_reduction"]
    lines = [f"# Judged comparison: {report['candidate']} vs {report['baseline']}", "",
             f"- Judge {report['judge_version']}: exact agreement with humans {agreement['exact']:.3f}, Kendall's "
             f"tau {agreement['kendall_tau']}, Spearman's rho {agreement['spearman_rho']} on {agreement['pairs']} "
             f"pairs of {report['judge_agreement']['measured_on']['what']} (floor {report['min_agreement']}).",
             f"- Population: {report['population_queries']} judge-holdout queries, which the pool never used, so "
             "neither ranker was distilled on them.",
             f"- {report['scored_queries']} scored of {report['sampled_queries']} sampled queries ({report['allocation']} "
             f"allocation over {report['strata']} strata, after a {report['pilot_queries']}-query pilot); "
             f"{report['judged_pairs']} pairs judged.",
             f"- {report['metric']} difference (candidate − baseline): {d['mean']:+.4f}, {d['confidence']:.0%} CI "
             f"{d['ci_low']:+.4f} .. {d['ci_high']:+.4f}: **{report['verdict']}**.",
             f"- Simple random sampling with the same data: SE {s['std_error']:.4f} against {d['std_error']:.4f} "
             f"stratified" + ("" if reduction is None else f" (variance reduction {reduction:.0%})") + ".",
             f"- Minimum detectable effect at this sample: {report['minimum_detectable_effect']:.4f}; a 0.01 effect "
             f"needs {report['queries_for_0.01']} queries."]
    lines += [f"- Estimator: {note}." for note in report.get("estimator_notes", [])]
    lines += [f"- **Warning**: the {name} {state['what']}." for name, state in report.get("rankers_holdout", {}).items()
              if not state["untouched"]]
    return "\n".join(lines) + "\n"
