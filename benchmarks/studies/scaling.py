"""Distillation scaling on Home Depot, 1× to 100× the human labels: the teacher is fixed (the bench-quality-minilm
run's), the teacher-labelled pool grows from the real impressions alone (1×) to BM25 candidates ever deeper in each
query's ranking (10×, 100×), and students are distilled from each pool with several seeds, out of core.

Where the extra pairs come from: Home Depot has 26,110 real unlabelled impressions (≈1.2× the 22,279 train pairs)
and 54,667 products. Pool m× = the impressions plus, for every unjudged and train query, its BM25 candidates down
to the depth that makes m × the train pairs; so the pools are nested, and the deeper pairs are mostly easy
negatives (the report gives the teacher's grade distribution at each size).

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
MAX_DEPTH = 360  # BM25 candidates per query: at 320 the pool had 2.08M pairs, short of 100× (2.23M)
# Epochs per pool size: the same early stopping everywhere, and at 100× a cap that keeps the passes over data
# (pairs × epochs) near the 10× student's (each 100× epoch is ten 10× epochs; 2 epochs = 4.5M pair passes).
EPOCHS = {1: 15, 10: 15, 100: 2}
STUDENT = {"early_stopping_patience": 3, "table_dtype": "float16"}
LABEL_PRECISION = "bf16"


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
    from benchmarks.studies import figure_png, link, record, student_settings, table
    from relevance.common.files import read_manifest
    from relevance.config import load_config
    from relevance.data.schema import Dataset, prob_columns
    from relevance.evaluation.evaluate import evaluate_models
    from relevance.labels.labelling import label_pool, read_labels
    from relevance.student.distillation import train_students
    from relevance.student.featurizer import build_featurizer, featurizer_settings

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

    students = steps.directory("students", {"teacher": version, "max_depth": MAX_DEPTH, "student": STUDENT,
                                            "epochs": EPOCHS, "base": student_settings(config.student)})
    featurizer = build_featurizer(dataset.items, featurizer_settings(config), work / "embeddings")
    models = {"teacher": work / "teacher"}
    pairs = {m: int(len(pool_of(m))) for m in MULTIPLES}
    for seed in SEEDS:
        out = students / f"student-human-only-seed-{seed}"
        run_config = config.model_copy(deep=True)
        run_config.student = config.student.model_copy(update={**STUDENT, "epochs": EPOCHS[MULTIPLES[0]],
                                                               "seed": seed})
        train_students(run_config, dataset, work / "teacher", None, {"student_human_only": out}, featurizer)
        models[f"student (human labels only) seed {seed}"] = out

    # Cheapest first, so that an interrupted run has the fp32 check and the small pools (students resume).
    runs = [(MULTIPLES[0], s, "fp32") for s in SEEDS] + [(m, seed, "bf16") for m in MULTIPLES for seed in SEEDS]
    for m, seed, precision in runs:
        name = f"student {m}× seed {seed}" + (" fp32 labels" if precision == "fp32" else "")
        out = students / name.replace(" ", "-").replace("×", "x")
        if not (out / "manifest.json").exists():
            run_config = config.model_copy(deep=True)
            run_config.student = config.student.model_copy(update={**STUDENT, "epochs": EPOCHS[m], "seed": seed})
            part = pool_of(m) if precision == "bf16" else fp32
            train_students(run_config, dataset, work / "teacher", part.drop(columns=["rank", "impression"],
                                                                            errors="ignore"),
                           {"student": out}, featurizer)
        models[name] = out

    def evaluate() -> dict:
        report = evaluate_models(config, dataset, models, students / "report.json", work / "embeddings")
        return {name: {m: report["models"][name]["overall"][m] for m in ("accuracy", "ndcg@20")} for name in models}

    scores = steps("evaluate", {"students": students.name, "models": sorted(models)}, evaluate)

    def spread(prefix: str, suffix: str = "") -> dict:
        values = {metric: [scores[f"{prefix} seed {s}{suffix}"][metric] for s in SEEDS]
                  for metric in ("accuracy", "ndcg@20")}
        return {metric: (float(np.mean(v)), float(np.std(v, ddof=1))) for metric, v in values.items()}

    curve = {m: spread(f"student {m}×") for m in MULTIPLES}
    human = spread("student (human labels only)")
    fp32_curve = spread(f"student {MULTIPLES[0]}×", " fp32 labels")
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
        ax.errorbar(x, [curve[m][metric][0] for m in MULTIPLES], yerr=[curve[m][metric][1] for m in MULTIPLES],
                    fmt="o-", capsize=4, label=f"distilled student (mean ± std, {len(SEEDS)} seeds)")
        ax.axhline(teacher[metric], color="tab:green", ls="--", label="teacher")
        mean, std = human[metric]
        ax.axhspan(mean - std, mean + std, color="tab:red", alpha=0.15)
        ax.axhline(mean, color="tab:red", ls=":", label="human labels only (± std)")
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:.0f}×" for v in x])
        ax.set_xlabel("teacher-labelled pool / labelled train split")
        ax.set_ylabel(f"test {metric}")
        ax.legend(fontsize=8)
    last = curve[MULTIPLES[-1]]
    share = {metric: last[metric][0] / teacher[metric] for metric in ("accuracy", "ndcg@20")}
    met = all(v >= 1.0 for v in share.values())
    answer = (f"At {MULTIPLES[-1]}× ({pairs[MULTIPLES[-1]]:,} pairs) the student reaches "
              f"{last['accuracy'][0]:.4f} ± {last['accuracy'][1]:.4f} accuracy and {last['ndcg@20'][0]:.4f} ± "
              f"{last['ndcg@20'][1]:.4f} nDCG@20: {share['accuracy']:.1%} and {share['ndcg@20']:.1%} of the "
              f"teacher's {teacher['accuracy']:.4f} / {teacher['ndcg@20']:.4f} (target 100%: "
              f"{'met' if met else 'not met'}). "
              + "; ".join(f"{m}×: {curve[m]['accuracy'][0]:.4f} ± {curve[m]['accuracy'][1]:.4f}" for m in MULTIPLES)
              + f"; human labels only {human['accuracy'][0]:.4f} ± {human['accuracy'][1]:.4f}. bf16 labels vs fp32 "
              f"at 1×: student accuracy {curve[MULTIPLES[0]]['accuracy'][0]:.4f} vs {fp32_curve['accuracy'][0]:.4f} "
              f"(labels: argmax agreement {agreement['argmax_agreement']:.2%}, max |Δp| "
              f"{agreement['max_abs_diff']:.3f}).")
    rows = [[f"student {m}×", pairs[m], pairs[m] / train_pairs, depths[m], EPOCHS[m], *curve[m]["accuracy"],
             *curve[m]["ndcg@20"]] for m in MULTIPLES]
    rows += [[f"student {MULTIPLES[0]}×, fp32 labels", pairs[MULTIPLES[0]], pairs[MULTIPLES[0]] / train_pairs,
              depths[MULTIPLES[0]], EPOCHS[MULTIPLES[0]], *fp32_curve["accuracy"], *fp32_curve["ndcg@20"]],
             ["student (human labels only)", "–", "–", "–", EPOCHS[MULTIPLES[0]], *human["accuracy"],
              *human["ndcg@20"]],
             ["teacher", "–", "–", "–", "–", teacher["accuracy"], 0.0, teacher["ndcg@20"], 0.0]]
    grade_names = list(dataset.info.grade_names or range(k))
    return record("scaling", sys.modules[__name__], answer, [
        table(f"Home Depot test split, mean and std over seeds {list(SEEDS)}; pool m× = the impressions plus each "
              "query's BM25 candidates down to the given depth; each student also sees the judged train pairs with "
              "the teacher's labels", ["model", "pool pairs", "× train", "BM25 depth", "epochs (max)",
                                       "accuracy", "± std", "nDCG@20", "± std"], rows),
        table("The teacher's labels at each pool size: mean probability per grade, then the share of pairs whose "
              "most likely grade it is (deeper candidates are mostly easy negatives)",
              ["pool", "pairs", "BM25 depth"] + [f"mean p({g})" for g in grade_names]
              + [f"argmax {g}" for g in grade_names], grade_rows)],
        {"Student quality against pool size (mean ± std over seeds), with the teacher and the human-only student":
         figure_png(fig)},
        command, steps, scores=scores, pool_pairs={str(m): pairs[m] for m in MULTIPLES}, depths=depths,
        train_pairs=train_pairs, label_agreement=agreement, epochs=EPOCHS, student_settings=STUDENT,
        threads=len(os.sched_getaffinity(0)), label_precision=LABEL_PRECISION,
        target={"share_of_teacher": share, "met": met})
