"""Distillation scaling on Home Depot, 1× to 100× the human labels: the teacher is fixed (the bench-quality-minilm
run's), the teacher-labelled pool grows from the real impressions alone (1×) to BM25 candidates ever deeper in each
query's ranking (10×, 100×), and students are distilled from each pool with several seeds, out of core.

Where the extra pairs come from: Home Depot has 26,110 real unlabelled impressions (≈1.2× the 22,279 train pairs)
and 54,667 products. Pool m× = the impressions plus, for every unjudged and train query, its BM25 candidates down
to the depth that makes m × the train pairs; so the pools are nested, and the deeper pairs are mostly easy
negatives (the report gives the teacher's grade distribution at each size).

Students: each pool's MLP on the frozen MiniLM and on the run's tuned towers (student.towers: tuned once on the
towers study's budget and reused for every MLP, as tuning them on the 100× pool does not fit 2 cores), 3 seeds each,
with the same early stopping; at 100× the epoch budget (2, 4 or 8 epochs, each a whole cosine schedule) is
chosen on valid. The pair store writes its shards shuffled in row groups, and a shuffle window gathers row groups
from the whole pool (relevance.student.pairstore): the pool comes grouped by query, and windows of whole shards fed
the 100× students ~9% of the queries at a time.

Labels: the bf16 labelling path, checked against fp32 at the student level on the 1× pool (students distilled
from fp32 and from bf16 labels of the same pairs, same seeds).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

TITLE = "Distillation scaling: student quality against the teacher-labelled pool size, 1× to 100×"
QUESTION = ("Does more teacher-labelled data keep helping the student up to 100× the human labels (the seeds' "
            "ratio), read against seed noise?")
MULTIPLES = (1, 10, 100)
SEEDS = (0, 1, 2)
# BM25 candidates per query. At 360 the pool held 2.06M pairs once the judge-holdout queries left it, short of
# 100× (2.23M); ~5.7k pairs per rank, so 400 leaves room.
MAX_DEPTH = 400
# Epochs per pool size: the same early stopping everywhere. At 100× the default budget, 2, kept the passes over
# data (pairs × epochs) near the 10× student's (each 100× epoch is ten 10× epochs; 2 epochs = 4.5M pair passes).
EPOCHS = {1: 15, 10: 15, 100: 2}
# At 100× the cap is a setting like any other, so it is chosen on valid (the lowest mean best valid loss over the
# seeds, per kind of tower) among these budgets, each a whole cosine schedule; 2 (EPOCHS[100]) was the only one
# until 2026-12-05, when the best epoch of every 100× student was its last.
EPOCH_CHOICES = {100: (2, 4, 8)}
STUDENT = {"early_stopping_patience": 3, "table_dtype": "float16"}
LABEL_PRECISION = "bf16"
FROZEN, TUNED = "frozen MiniLM", "tuned towers"


def model_name(m: int, seed: int, suffix: str = "", precision: str = "bf16", epochs: int | None = None) -> str:
    """A student's name in the evaluation (m = 0: the judged train pairs alone; ``epochs``: a budget other than
    EPOCHS[m], one of EPOCH_CHOICES[m])."""
    base = "student (human labels only)" if m == 0 else f"student {m}×"
    budget = f", {epochs} epochs" if other_budget(m, epochs) else ""
    return f"{base} seed {seed}" + (" fp32 labels" if precision == "fp32" else "") + budget + suffix


def other_budget(m: int, epochs: int | None) -> bool:
    """Whether ``epochs`` is a budget other than EPOCHS[m] (its students are named and saved apart)."""
    return epochs not in (None, EPOCHS.get(m))


def nested_depths(pool, train_pairs: int, multiples) -> dict[int, int]:
    """For each multiple m, the smallest BM25 depth d such that the impressions plus every candidate of rank < d
    reach m × the train pairs (d = 0: the impressions alone)."""
    ranks = pool.loc[~pool["impression"], "rank"].to_numpy()
    base = int(pool["impression"].sum())
    counts = np.bincount(ranks, minlength=MAX_DEPTH + 1).cumsum()  # counts[d - 1]: candidates of rank < d
    out = {}
    for m in multiples:
        wanted = m * train_pairs
        if base >= wanted:
            out[m] = 0
            continue
        reach = np.nonzero(base + counts >= wanted)[0]
        if not len(reach):
            raise ValueError(f"the pool has {base + int(counts[-1])} pairs, fewer than {m}× the train split "
                             f"({wanted}): raise MAX_DEPTH")
        out[m] = int(reach[0]) + 1
    return out


def bm25_ranks(config, dataset, pool, depth: int):
    """``pool`` with each pair's rank in its query's BM25 list, judged pairs counted as the pool's top-K counted
    them before leaving them out (pairs outside the top ``depth``, e.g. impressions: ``depth``)."""
    import pandas as pd

    from relevance.labels.channels import iter_bm25_candidates
    from relevance.models.bm25 import BM25Index

    index = BM25Index.for_items(dataset.items, config.text, config.candidates.k1, config.candidates.b)
    queries = dataset.queries[dataset.queries["query_id"].isin(set(pool["query_id"]))]
    candidates = pd.concat(list(iter_bm25_candidates(index, queries, depth)), ignore_index=True)
    candidates["rank"] = candidates.groupby("query_id", sort=False).cumcount()
    pool = pool.merge(candidates[["query_id", "item_id", "rank"]], how="left", on=["query_id", "item_id"])
    pool["rank"] = pool["rank"].fillna(depth).astype(int)
    return pool


def _ranked_pool(config, dataset, work: Path):
    """The deepest pool (relevance.labels.pool.build_pool at MAX_DEPTH) with, per pair, whether it is an impression and
    its rank in its query's BM25 list."""
    import pandas as pd

    from relevance.labels.pool import build_pool

    pool_path = work / "pool.parquet"
    if not pool_path.exists():
        build_pool(config, dataset, pool_path, work / "data" / "impressions.parquet")
    ranked = work / "ranks.parquet"
    if not ranked.exists():
        pool = bm25_ranks(config, dataset, pd.read_parquet(pool_path), MAX_DEPTH)
        impressions = pd.read_parquet(work / "data" / "impressions.parquet", columns=["query_id", "item_id"])
        pool["impression"] = pd.MultiIndex.from_frame(pool[["query_id", "item_id"]]).isin(
            pd.MultiIndex.from_frame(impressions))
        pool.to_parquet(ranked, index=False)
    return pool_path, pd.read_parquet(ranked)


def run(steps, args, command: str) -> dict:
    from benchmarks.studies import figure_png, link, models_key, on_run_towers, record, student_settings, table
    from relevance.chain import Chain
    from relevance.common.files import read_manifest
    from relevance.config import load_config
    from relevance.data.schema import Dataset, prob_columns
    from relevance.evaluation.evaluate import evaluate_models
    from relevance.labels.labelling import label_pool, read_labels
    from relevance.student.distillation import train_students
    from relevance.student.featurizer import build_featurizer, featurizer_settings
    from relevance.student.pairstore import pair_layout
    from relevance.student.towers import TOWER_MANIFEST

    source = load_config(args.config)
    config = source.model_copy(deep=True)
    config.candidates.top_k = MAX_DEPTH
    config.candidates.include_train_queries = True
    config.labeling.precision = LABEL_PRECISION
    version = read_manifest(Path(source.workdir) / "teacher", "teacher")["teacher_version"]
    work = steps.directory("pool", {"teacher": version, "max_depth": MAX_DEPTH, "precision": LABEL_PRECISION})
    config.workdir = str(work)
    for name in ("data", "teacher", "embeddings"):  # the bench-quality run's: same data, teacher and item vectors
        link(Path(source.workdir) / name, work / name)
    dataset = Dataset.load(work / "data", with_impressions=False)
    train_pairs = len(dataset.split("train"))
    k = dataset.num_grades
    pool_path, ranked = _ranked_pool(config, dataset, work)
    depths = nested_depths(ranked, train_pairs, MULTIPLES)
    label_pool(work / "teacher", pool_path, dataset, work / "labels", config.labeling)
    labels = read_labels(work / "labels", k, pool_path).merge(ranked, on=["query_id", "item_id"])

    def pool_of(m: int):
        return labels[labels["impression"] | (labels["rank"] < depths[m])].reset_index(drop=True)

    # The fp32 check: the 1× pool labelled again in fp32.
    one_x = pool_of(MULTIPLES[0])
    fp32_pool = work / "pool-1x.parquet"
    if not fp32_pool.exists():
        one_x[["query_id", "item_id"]].to_parquet(fp32_pool, index=False)
    fp32_config = config.labeling.model_copy(update={"precision": "fp32"})
    label_pool(work / "teacher", fp32_pool, dataset, work / "labels-fp32", fp32_config)
    fp32 = read_labels(work / "labels-fp32", k, fp32_pool).merge(one_x[["query_id", "item_id"]])
    paired = one_x.merge(fp32, on=["query_id", "item_id"], suffixes=("", "_fp32"))
    bf16_p = paired[prob_columns(k)].to_numpy()
    fp32_p = paired[[f"{c}_fp32" for c in prob_columns(k)]].to_numpy()
    agreement = {"pairs": int(len(paired)), "max_abs_diff": float(np.abs(bf16_p - fp32_p).max()),
                 "mean_abs_diff": float(np.abs(bf16_p - fp32_p).mean()),
                 "argmax_agreement": float((bf16_p.argmax(1) == fp32_p.argmax(1)).mean())}

    # The students read the frozen MiniLM, and the run's tuned towers where the run has them (tuned once on the
    # towers study's budget and reused for every MLP: the fallback, as tuning them per pool does not fit
    # 2 cores). The frozen students' cache key has the form it had before the towers. The towers learnt from the
    # teacher's labels of the run's pool: on them, even the human-only and 1× students have seen the teacher.
    chain = Chain(source)
    kinds = {FROZEN: (config, "")}
    if (chain.towers_dir / TOWER_MANIFEST).exists():
        tuned = config.model_copy(deep=True)
        tuned.student, towers = on_run_towers(config.student, chain.towers_dir)
        kinds[TUNED] = (tuned, ", tuned towers")
    else:
        print(f"   scaling: {chain.towers_dir} holds no tuned towers; the frozen MiniLM's students only", flush=True)
    students, featurizers = {}, {}
    for kind, (kind_config, _) in kinds.items():
        # The pair store's layout: the students of 2026-12-05 trained on windows of whole shards, whose rows came
        # grouped by query (~600 of 6,698 queries a window at 100×); a window now gathers row groups of the pool.
        inputs = {"teacher": version, "max_depth": MAX_DEPTH, "student": STUDENT, "epochs": EPOCHS,
                  "base": student_settings(kind_config.student), "pairs": pair_layout()}
        if kind == TUNED:
            inputs["towers"] = towers
        students[kind] = steps.directory("students", inputs)

    def featurizer_of(kind: str):
        if kind not in featurizers:
            featurizers[kind] = build_featurizer(dataset.items, featurizer_settings(kinds[kind][0]),
                                                 work / "embeddings")
        return featurizers[kind]

    # The tuned towers' curve first (the question of the issue: does 100× beat 10× on them?), then the fp32 check
    # and the frozen curve; each the cheapest first, so an interrupted run has the most rows (students resume).
    # m = 0: the judged train pairs alone (human labels only).
    # Then the other epoch budgets at 100×, per kind.
    def curve_jobs(kind: str) -> list[tuple]:
        return ([(kind, m, seed, "bf16", None) for m in (0, *MULTIPLES) for seed in SEEDS]
                + [(kind, m, seed, "bf16", e) for m, budgets in EPOCH_CHOICES.items() for e in budgets
                   if e != EPOCHS[m] for seed in SEEDS])

    jobs = curve_jobs(TUNED) if TUNED in kinds else []
    jobs += [(FROZEN, MULTIPLES[0], seed, "fp32", None) for seed in SEEDS]
    jobs += curve_jobs(FROZEN)
    models = {"teacher": work / "teacher"}
    pairs = {m: int(len(pool_of(m))) for m in MULTIPLES}
    for kind, m, seed, precision, epochs in jobs:
        kind_config, suffix = kinds[kind]
        name = model_name(m, seed, suffix, precision, epochs)
        out = students[kind] / (f"student-human-only-seed-{seed}" if m == 0 else
                                model_name(m, seed, "", precision).replace(" ", "-").replace("×", "x")
                                + (f"-epochs-{epochs}" if other_budget(m, epochs) else ""))
        if not (out / "manifest.json").exists():
            run_config = kind_config.model_copy(deep=True)
            run_config.student = kind_config.student.model_copy(
                update={**STUDENT, "epochs": epochs or EPOCHS[m or MULTIPLES[0]], "seed": seed})
            part = None if m == 0 else pool_of(m) if precision == "bf16" else fp32
            if part is not None:
                part = part.drop(columns=["rank", "impression"], errors="ignore")
            role = "student_human_only" if m == 0 else "student"
            train_students(run_config, dataset, work / "teacher", part, {role: out}, featurizer_of(kind))
        models[name] = out
    featurizers.clear()

    def evaluate() -> dict:
        report = evaluate_models(config, dataset, models, students[FROZEN] / "report.json", work / "embeddings")
        return {name: {m: report["models"][name]["overall"][m] for m in ("accuracy", "ndcg@20")} for name in models}

    scores = steps("evaluate", {"students": students[FROZEN].name, "models": models_key(models)}, evaluate)

    def spread(m: int, suffix: str = "", precision: str = "bf16", epochs: int | None = None) -> dict:
        values = {metric: [scores[model_name(m, s, suffix, precision, epochs)][metric] for s in SEEDS]
                  for metric in ("accuracy", "ndcg@20")}
        return {metric: (float(np.mean(v)), float(np.std(v, ddof=1))) for metric, v in values.items()}

    def best(m: int, suffix: str, epochs: int) -> list[dict]:  # each seed's best epoch on valid
        return [read_manifest(models[model_name(m, s, suffix, "bf16", epochs)], "student")["metrics"]["best"]
                for s in SEEDS]

    # Each kind's epoch budget at 100×: the lowest mean best valid loss over the seeds.
    budgets = {kind: {m: {e: best(m, suffix, e) for e in choices} for m, choices in EPOCH_CHOICES.items()}
               for kind, (_, suffix) in kinds.items()}
    chosen = {kind: {m: min(by_budget, key=lambda e: np.mean([b["valid_loss"] for b in by_budget[e]]))
                     for m, by_budget in budgets[kind].items()} for kind in kinds}
    curves = {kind: {m: spread(m, suffix, epochs=chosen[kind].get(m)) for m in (0, *MULTIPLES)}
              for kind, (_, suffix) in kinds.items()}
    budget_rows = []
    for kind, (_, suffix) in kinds.items():
        for m, by_budget in budgets[kind].items():
            for e, seeds in by_budget.items():
                losses, test = [b["valid_loss"] for b in seeds], spread(m, suffix, epochs=e)
                budget_rows.append([f"student {m}×, {kind}", e, float(np.mean(losses)), float(np.std(losses, ddof=1)),
                                    ", ".join(str(b["epoch"]) for b in seeds), *test["accuracy"], *test["ndcg@20"],
                                    "chosen" if e == chosen[kind][m] else ""])
    fp32_curve = spread(MULTIPLES[0], precision="fp32")
    teacher = scores["teacher"]
    grade_rows = []
    for m in MULTIPLES:
        probs = pool_of(m)[prob_columns(k)].to_numpy()
        argmax = np.bincount(probs.argmax(1), minlength=k) / len(probs)
        grade_rows.append([f"{m}×", pairs[m], depths[m]] + [float(v) for v in probs.mean(0)]
                          + [float(v) for v in argmax])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [pairs[m] / train_pairs for m in MULTIPLES]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric in zip(axes, ("accuracy", "ndcg@20")):
        for kind, color in zip(kinds, ("tab:gray", "tab:orange")):
            curve = curves[kind]
            ax.errorbar(x, [curve[m][metric][0] for m in MULTIPLES], yerr=[curve[m][metric][1] for m in MULTIPLES],
                        fmt="o-", capsize=4, color=color, label=f"student, {kind} (mean ± std, {len(SEEDS)} seeds)")
            mean, std = curve[0][metric]
            ax.axhspan(mean - std, mean + std, color=color, alpha=0.12)
            ax.axhline(mean, color=color, ls=":", label=f"human labels only, {kind} (± std)")
        ax.axhline(teacher[metric], color="tab:green", ls="--", label="teacher")
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:.0f}×" for v in x])
        ax.set_xlabel("teacher-labelled pool / labelled train split")
        ax.set_ylabel(f"test {metric}")
        ax.legend(fontsize=7)
    targets = {}
    for kind in kinds:
        top, below = curves[kind][MULTIPLES[-1]], curves[kind][MULTIPLES[-2]]
        gain = top["accuracy"][0] - below["accuracy"][0]
        noise = 2 * max(top["accuracy"][1], below["accuracy"][1])
        targets[kind] = {"share_of_teacher": {metric: top[metric][0] / teacher[metric]
                                              for metric in ("accuracy", "ndcg@20")},
                         "gain_over_previous": gain, "two_seed_sd": noise, "gain_met": gain > noise,
                         "share_met": top["accuracy"][0] >= 0.99 * teacher["accuracy"]
                         and top["ndcg@20"][0] >= teacher["ndcg@20"]}
    lead = TUNED if TUNED in kinds else FROZEN

    def describe(kind: str) -> str:
        curve, target = curves[kind], targets[kind]
        share = target["share_of_teacher"]
        return (f"{kind}: " + "; ".join(f"{m}× {curve[m]['accuracy'][0]:.4f} ± {curve[m]['accuracy'][1]:.4f} / "
                                        f"{curve[m]['ndcg@20'][0]:.4f}" for m in MULTIPLES)
                + f"; human labels only {curve[0]['accuracy'][0]:.4f} ± {curve[0]['accuracy'][1]:.4f}; "
                + ", ".join(f"{m}×'s epoch budget chosen on valid: {e}" for m, e in chosen[kind].items()) + ". "
                f"{MULTIPLES[-1]}× − {MULTIPLES[-2]}×: {target['gain_over_previous'] * 100:+.2f} pt accuracy against "
                f"two seed SDs of {target['two_seed_sd'] * 100:.2f} pt (target "
                f"{'met' if target['gain_met'] else 'not met'}); "
                f"at {MULTIPLES[-1]}× {share['accuracy']:.1%} of the teacher's accuracy and {share['ndcg@20']:.1%} "
                f"of its nDCG@20 (targets 99% / 100%: {'met' if target['share_met'] else 'not met'})")

    answer = (f"Test accuracy / nDCG@20, mean ± std over {len(SEEDS)} seeds; the teacher {teacher['accuracy']:.4f} / "
              f"{teacher['ndcg@20']:.4f}; {MULTIPLES[-1]}× is {pairs[MULTIPLES[-1]]:,} pairs. "
              + ". ".join(describe(kind) for kind in sorted(kinds, key=lambda k: k != lead))
              + f". bf16 labels vs fp32 at 1× (frozen MiniLM): student accuracy "
              f"{curves[FROZEN][MULTIPLES[0]]['accuracy'][0]:.4f} vs {fp32_curve['accuracy'][0]:.4f} (labels: argmax "
              f"agreement {agreement['argmax_agreement']:.2%}, max |Δp| {agreement['max_abs_diff']:.3f})."
              + (" The tuned towers learnt from the teacher's labels of the run's pool, so on them even the "
                 "human-only and 1× students have seen the teacher." if TUNED in kinds else ""))
    rows = []
    for kind in kinds:
        curve = curves[kind]
        rows += [[f"student {m}×, {kind}", pairs[m], pairs[m] / train_pairs, depths[m], chosen[kind].get(m, EPOCHS[m]),
                  *curve[m]["accuracy"], *curve[m]["ndcg@20"]] for m in MULTIPLES]
        rows.append([f"student (human labels only), {kind}", "–", "–", "–", EPOCHS[MULTIPLES[0]],
                     *curve[0]["accuracy"], *curve[0]["ndcg@20"]])
    rows += [[f"student {MULTIPLES[0]}×, fp32 labels, {FROZEN}", pairs[MULTIPLES[0]], pairs[MULTIPLES[0]] / train_pairs,
              depths[MULTIPLES[0]], EPOCHS[MULTIPLES[0]], *fp32_curve["accuracy"], *fp32_curve["ndcg@20"]],
             ["teacher", "–", "–", "–", "–", teacher["accuracy"], 0.0, teacher["ndcg@20"], 0.0]]
    grade_names = list(dataset.info.grade_names or range(k))
    return record("scaling", sys.modules[__name__], answer, [
        table(f"Home Depot test split, mean and std over seeds {list(SEEDS)}; pool m× = the impressions plus each "
              "query's BM25 candidates down to the given depth; each student also sees the judged train pairs with "
              "the teacher's labels", ["model", "pool pairs", "× train", "BM25 depth", "epochs (max)",
                                       "accuracy", "± std", "nDCG@20", "± std"], rows),
        table("The epoch budget at 100×, chosen on valid (each budget a whole cosine schedule, early stopping "
              "within it; a longer budget has more epochs to pick its best from, a slight bias its way); best "
              "epoch: each seed's", ["model", "epochs (max)", "best valid loss (mean)", "± std",
                                                     "best epoch per seed", "test accuracy", "± std", "nDCG@20",
                                                     "± std", "choice"], budget_rows),
        table("The teacher's labels at each pool size: mean probability per grade, then the share of pairs whose "
              "most likely grade it is (deeper candidates are mostly easy negatives)",
              ["pool", "pairs", "BM25 depth"] + [f"mean p({g})" for g in grade_names]
              + [f"argmax {g}" for g in grade_names], grade_rows)],
        {"Student quality against pool size (mean ± std over seeds), with the teacher and the human-only student":
         figure_png(fig)},
        command, steps, scores=scores, pool_pairs={str(m): pairs[m] for m in MULTIPLES}, depths=depths,
        train_pairs=train_pairs, label_agreement=agreement, epochs=EPOCHS, student_settings=STUDENT,
        epoch_choices=EPOCH_CHOICES, chosen_epochs={kind: chosen[kind] for kind in kinds},
        threads=len(os.sched_getaffinity(0)), label_precision=LABEL_PRECISION, towers=list(kinds), target=targets)
