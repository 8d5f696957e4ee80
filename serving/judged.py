"""Judged quality of served traffic (`relevance monitor --judge`): a judge grades a stratified sample of the lists
the student served, and the monitor reports judged nDCG with its interval, overall and per stratum.

The judge (the teacher, or any cross-encoder) must first agree with humans on the judge-check slice at
``monitor.judge_min_agreement`` (exact agreement), as judge-eval requires, and must rank at all (one grade for
every pair is refused). The unit is a served list (a record: traffic-weighted, what users saw), stratified by
seen/unseen query × locale × query length (relevance.evaluation.sampling). Pinterest measures relevance from
traffic this way (arXiv 2509.03764).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EXIT_QUALITY = 5  # `relevance monitor`: judged quality below monitor.judged_ndcg_alert


def normal_query(query: str) -> str:
    return " ".join(query.lower().split())


def _interval(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """The t interval of a mean (None with fewer than two values)."""
    from scipy.stats import t

    if len(values) < 2:
        return None, None
    half = float(t.ppf(1 - (1 - confidence) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return float(values.mean()) - half, float(values.mean()) + half


class JudgeRefused(Exception):
    """No judged estimate this round (a judge below the agreement floor, fewer than two served lists): the drift
    report still stands, with the reason in it."""


def judged_quality(config, dataset, judge_dir: Path, sample, seen: set[str], window_records: int,
                   log=print) -> dict:
    """The judge's verdict on the served lists of ``sample`` (a random sample of the ``window_records`` records of
    this student in the window): judged nDCG@judge_k overall (stratified estimate and interval) and per stratum.

    The unit is a served list (a record), so the estimate is traffic-weighted: what users saw, a head query as often
    as it was served. Every position counts as served: an item the judge has no text for (outside its catalog) is
    graded 0, never dropped (which would move the items below it up), and a list with nothing relevant in its
    judged depth scores 0 (users saw nothing relevant, whoever's fault: retrieval's or the ranker's)."""
    import pandas as pd

    from relevance.data.schema import DataContractError
    from relevance.evaluation.judge import judge_grades, per_query_ndcg
    from relevance.evaluation.judge_eval import calibrated_judge
    from relevance.evaluation.sampling import allocate, query_strata, stratified_estimate, stratified_sample

    settings = config.monitor
    records = sample.reset_index(drop=True)
    if len(records) < 2:
        raise JudgeRefused(f"judged quality needs at least 2 served lists, the window's sample has {len(records)}")
    try:
        judge, judge_text, calibration = calibrated_judge(judge_dir, dataset, settings.judge_min_agreement, log)
    except DataContractError as error:  # below the floor: what it would say measures the judge
        raise JudgeRefused(str(error)) from None
    if calibration["overall"]["kendall_tau"] is None:
        # One grade for every judge-check pair passes an exact-agreement floor where humans mostly agree on one
        # grade, and would call every served order ideal.
        raise JudgeRefused(f"the judge gives every one of the {calibration['overall']['pairs']} judge-check pairs the "
                           "same grade (no rank correlation with humans): it cannot tell a good order from a bad one")
    keys = pd.Index([f"list{n}" for n in range(len(records))])
    novelty = np.where(records["query"].map(normal_query).isin(seen).to_numpy(), "seen", "unseen")
    strata = query_strata(pd.DataFrame({"query_id": keys, "query": records["query"].to_numpy(),
                                        "locale": records["locale"].to_numpy()}), traffic_bands=0)
    strata = pd.Series([f"{n}|{h}" for n, h in zip(novelty, strata)], index=keys, name="stratum")
    drawn = strata.value_counts()
    chosen = stratified_sample(strata, allocate(drawn, min(settings.judge_lists, len(strata)), "proportional"),
                               settings.seed)
    # The strata are weighted as the sample's records fall into them (a proportional sample of the window). The
    # question is the model's quality on the traffic it serves, of which a window is itself a sample: no
    # finite-population correction (so no window size), and judging every list of a small window is no census with
    # a zero-width interval (an alert on 20 lists would otherwise be as certain as one on 20,000).
    population = drawn
    position = {key: n for n, key in enumerate(keys)}
    rows = [(key, records.at[position[key], "query"], str(item), rank) for key in chosen
            for rank, item in enumerate(list(records.at[position[key], "item_ids"])[:settings.judge_depth])]
    frame = pd.DataFrame(rows, columns=["key", "query", "item", "rank"])
    known = frame["item"].isin(set(judge_text.dropna().index))
    pairs = frame.loc[known, ["query", "item"]].drop_duplicates()  # a list served again is graded once
    pairs["grade"] = judge_grades(judge, pairs["query"].tolist(), judge_text.reindex(pairs["item"]).tolist())
    frame = frame.merge(pairs, on=["query", "item"], how="left").fillna({"grade": 0})
    scores = per_query_ndcg(frame["key"].to_numpy(), frame["grade"].astype(int).to_numpy(),
                            -frame["rank"].to_numpy(float), settings.judge_k, judge.num_grades)
    values = pd.Series({key: scores.get(key, 0.0) for key in chosen}, dtype=float)
    nothing = pd.Series({key: key not in scores for key in chosen})
    estimate = stratified_estimate(values, strata, population, settings.confidence, finite=False)
    low, high = estimate.interval
    per_stratum = {}
    for name in sorted(drawn.index):
        mine = values[strata.reindex(values.index) == name].to_numpy()
        lower, upper = _interval(mine, settings.confidence)
        per_stratum[str(name)] = {
            "lists": int(drawn[name]), "n": int(len(mine)),
            "mean": round(float(mine.mean()), 4) if len(mine) else None,
            "ci_low": None if lower is None else round(lower, 4), "ci_high": None if upper is None else round(upper, 4),
            "nothing_relevant": int(nothing[strata.reindex(nothing.index) == name].sum())}
    log(f"monitor: judged nDCG@{settings.judge_k} {estimate.mean:.4f} ({settings.confidence:.0%} CI {low:.4f} .. "
        f"{high:.4f}) on {len(values)} served lists, {len(pairs)} pairs judged")
    return {"metric": f"ndcg@{settings.judge_k}", "judge": str(judge_dir), "judge_version": judge.version,
            "judge_agreement": calibration["overall"], "agreement_measured_on": calibration["measured_on"]["what"],
            "min_agreement": settings.judge_min_agreement, "depth": settings.judge_depth,
            "population_lists": int(max(window_records, len(records))), "sampled_records": int(len(records)),
            "judged_lists": int(len(values)), "lists_with_nothing_relevant": int(nothing.sum()),
            "judged_pairs": int(len(pairs)), "unjudgeable_items": int((~known).sum()),
            "overall": {"mean": round(estimate.mean, 4), "ci_low": round(low, 4), "ci_high": round(high, 4),
                        "std_error": round(estimate.std_error, 5), "n": estimate.n,
                        "confidence": settings.confidence, "notes": estimate.notes()},
            "strata": per_stratum}


def quality_alert(judged: dict, threshold: float | None) -> str | None:
    """The alert when the judged quality's whole interval lies below ``threshold`` (a mean below it alone may be
    noise); None without a threshold or a judged estimate."""
    overall = judged.get("overall")
    if threshold is None or not overall or overall["ci_high"] >= threshold:
        return None
    return (f"judged {judged['metric']} {overall['mean']} ({overall['confidence']:.0%} CI up to "
            f"{overall['ci_high']}) below {threshold}")


def judged_or_refused(config, dataset, judge_dir: Path, sample, seen: set[str], window_records: int, log) -> dict:
    """judged_quality's report, or the reason there is none: a weak judge must not blind the monitor, so the drift
    report still stands and the refusal is in it (and a gauge)."""
    try:
        return judged_quality(config, dataset, judge_dir, sample, seen, window_records, log)
    except JudgeRefused as error:
        log(f"monitor: no judged quality: {error}")
        return {"refused": str(error)}


def plot_judged(judged: dict, alert: float | None, out: Path) -> None:
    """Judged nDCG per stratum and overall, with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"overall": judged["overall"], **{k: v for k, v in judged["strata"].items() if v["mean"] is not None}}
    names = list(rows)
    means = np.array([rows[n]["mean"] for n in names], dtype=float)
    low = np.array([rows[n]["ci_low"] if rows[n]["ci_low"] is not None else rows[n]["mean"] for n in names], float)
    high = np.array([rows[n]["ci_high"] if rows[n]["ci_high"] is not None else rows[n]["mean"] for n in names], float)
    fig, axis = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
    axis.errorbar(means, range(len(names)), xerr=[means - low, high - means], fmt="o", capsize=3)
    axis.set_yticks(range(len(names)), [f"{n} (n={rows[n]['n']})" for n in names])
    axis.invert_yaxis()
    if alert is not None:
        axis.axvline(alert, color="tab:red", linestyle="--", label=f"alert ({alert})")
        axis.legend()
    axis.set_xlabel(f"judged {judged['metric']} of served lists ({judged['overall']['confidence']:.0%} CI)")
    fig.tight_layout()
    fig.savefig(out / "judged.png", dpi=90)
    plt.close(fig)
