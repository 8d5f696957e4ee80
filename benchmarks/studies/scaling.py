"""Distillation scaling on Home Depot: the teacher is fixed (the bench-quality run's), the teacher-labelled pool
grows from 1× to 20× the labelled train split by adding the BM25 candidates of more queries, and a student is
distilled from each pool (nested: a larger pool contains the smaller ones)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

TITLE = "Distillation scaling: student quality against the teacher-labelled pool size"
QUESTION = "Does more teacher-labelled data keep helping the student (the seeds' claim)?"
MULTIPLES = (1, 2, 5, 10, 20)
TOP_K = 64  # BM25 candidates per query: 7,640 candidate queries × 64 ≈ 21× the 22,276 train pairs
STUDENT = {"epochs": 15, "early_stopping_patience": 3}  # the 20× pool is ~450k pairs: bounded time per student


def _link(target: Path, link: Path) -> None:
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target.resolve(), target_is_directory=target.is_dir())


def nested_query_sets(pool, train_pairs: int, multiples, seed: int = 0) -> dict[int, set]:
    """Queries in one fixed random order; pool m× takes the first queries whose pairs reach m × train_pairs."""
    sizes = pool.groupby("query_id").size()
    order = sizes.sample(frac=1.0, random_state=seed)
    cumulative = order.cumsum()
    out = {}
    for m in multiples:
        wanted = m * train_pairs
        if cumulative.iloc[-1] < wanted:
            raise ValueError(f"the pool has {int(cumulative.iloc[-1])} pairs, fewer than {m}× the train split "
                             f"({wanted}): raise TOP_K")
        out[m] = set(order.index[: int(np.searchsorted(cumulative.to_numpy(), wanted)) + 1])
    return out


def run(steps, args, command: str) -> dict:
    import pandas as pd

    from benchmarks.studies import figure_png, record, table
    from relevance.config import load_config
    from relevance.data.schema import Dataset
    from relevance.distillation import train_students
    from relevance.evaluation import evaluate_models
    from relevance.featurizer import build_featurizer, featurizer_settings
    from relevance.files import read_manifest
    from relevance.labeling import label_pool, read_labels
    from relevance.pool import build_pool

    source = load_config(args.config)
    config = source.model_copy(deep=True)
    config.candidates.top_k = TOP_K
    config.candidates.include_train_queries = True
    config.student = config.student.model_copy(update=STUDENT)
    version = read_manifest(Path(source.workdir) / "teacher", "teacher")["teacher_version"]
    work = steps.directory("work", {"teacher": version, "top_k": TOP_K, "student": config.student.model_dump()})
    config.workdir = str(work)
    for name in ("data", "teacher", "embeddings"):  # the bench-quality run's: same data, teacher and item vectors
        _link(Path(source.workdir) / name, work / name)
    dataset = Dataset.load(work / "data")
    train_pairs = len(dataset.split("train"))
    pool_path = work / "pool.parquet"
    if not pool_path.exists():
        build_pool(config, dataset, pool_path)
    label_pool(work / "teacher", pool_path, dataset, work / "labels", config.labeling)
    pool = pd.read_parquet(pool_path)
    query_sets = nested_query_sets(pool, train_pairs, MULTIPLES)
    featurizer = build_featurizer(dataset.items, featurizer_settings(config), work / "embeddings")
    labels = None  # read once, and only if some student still has to be trained
    models = {"teacher": work / "teacher", "student (human labels only)": work / "student_human_only"}
    pairs = {}
    for m in MULTIPLES:
        out = work / f"student-{m}x"
        pairs[m] = int(pool["query_id"].isin(query_sets[m]).sum())
        if not (out / "manifest.json").exists():
            labels = read_labels(work / "labels", dataset.num_grades, pool_path) if labels is None else labels
            part = labels[labels["query_id"].isin(query_sets[m])].reset_index(drop=True)
            train_students(config, dataset, work / "teacher", part, {"student": out}, featurizer)
        models[f"student {m}×"] = out
    train_students(config, dataset, work / "teacher", None, {"student_human_only": work / "student_human_only"},
                   featurizer)

    def evaluate() -> dict:
        report = evaluate_models(config, dataset, models, work / "report.json", work / "embeddings")
        return {name: {m: report["models"][name]["overall"][m] for m in ("accuracy", "ndcg@20")} for name in models}

    scores = steps("evaluate", {"work": work.name, "models": sorted(models), "multiples": MULTIPLES}, evaluate)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [pairs[m] / train_pairs for m in MULTIPLES]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric in zip(axes, ("accuracy", "ndcg@20")):
        ax.plot(x, [scores[f"student {m}×"][metric] for m in MULTIPLES], "o-", label="distilled student")
        ax.axhline(scores["teacher"][metric], color="tab:green", ls="--", label="teacher")
        ax.axhline(scores["student (human labels only)"][metric], color="tab:red", ls=":", label="human labels only")
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:.0f}×" for v in x])
        ax.set_xlabel("teacher-labelled pool / labelled train split")
        ax.set_ylabel(f"test {metric}")
        ax.legend(fontsize=8)
    rows = [[f"student {m}×", pairs[m], pairs[m] / train_pairs, scores[f"student {m}×"]["accuracy"],
             scores[f"student {m}×"]["ndcg@20"]] for m in MULTIPLES]
    rows += [[name, "–", "–", scores[name]["accuracy"], scores[name]["ndcg@20"]]
             for name in ("student (human labels only)", "teacher")]
    first, last = scores[f"student {MULTIPLES[0]}×"], scores[f"student {MULTIPLES[-1]}×"]
    teacher, human = scores["teacher"], scores["student (human labels only)"]
    steps_up = [scores[f"student {b}×"]["accuracy"] - scores[f"student {a}×"]["accuracy"]
                for a, b in zip(MULTIPLES, MULTIPLES[1:])]
    closed = (last["accuracy"] - first["accuracy"]) / max(teacher["accuracy"] - first["accuracy"], 1e-9)
    verdict = ("It keeps helping at every step." if all(d > 0 for d in steps_up) else
               "The trend is up but not at every step; with one seed per size, wiggles of a few tenths of a point "
               "are not tested against seed noise.")
    answer = (f"From 1× to {MULTIPLES[-1]}× the pool, student accuracy goes {first['accuracy']:.4f} → "
              f"{last['accuracy']:.4f} ({closed:.0%} of the gap to the teacher's {teacher['accuracy']:.4f} closed; "
              f"human labels only: {human['accuracy']:.4f}) and nDCG@20 {first['ndcg@20']:.4f} → "
              f"{last['ndcg@20']:.4f} (teacher {teacher['ndcg@20']:.4f}). Accuracy steps: "
              + ", ".join(f"{a}→{b}× {d:+.4f}" for (a, b), d in zip(zip(MULTIPLES, MULTIPLES[1:]), steps_up))
              + ". " + verdict)
    return record("scaling", sys.modules[__name__], answer, [table(
        "Home Depot test split; each student is distilled from the teacher's labels of the first queries (fixed "
        "random order) whose BM25 top-64 pairs reach m× the train split, plus the judged train pairs",
        ["model", "pool pairs", "× train", "accuracy", "nDCG@20"], rows)],
        {"Student quality against pool size, with the teacher and the human-only student": figure_png(fig)},
        command, steps, scores=scores, pool_pairs={str(m): pairs[m] for m in MULTIPLES}, train_pairs=train_pairs,
        student_settings=STUDENT, top_k=TOP_K, threads=len(os.sched_getaffinity(0)))
