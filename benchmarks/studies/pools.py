"""Harder pools on Home Depot: the same teacher labelling a pool whose candidates come from several channels (BM25,
the tuned tower's nearest items, the current student's own top-ranked items) against a BM25-only pool of the same
size, and both against the impressions alone (1×), with the MLP on the run's tuned towers and, for comparison, on
the frozen MiniLM, 3 seeds each.

- The towers are the bench-quality-minilm run's (tuned once on the towers study's budget, reused for every MLP:
  the issue's fallback, as tuning them per pool does not fit 2 cores). Its students' encoders and labels are
  reused; the multi-channel pool is built (relevance.labels.pool.build_pool: the run's guards, held-out queries
  and judged pairs, hold) and labelled by the run's teacher.
- BM25-only at the same size: the run's pool (impressions + BM25 top-56 of every unjudged query) cut at the smallest
  BM25 depth where it holds at least as many pairs as the multi-channel pool (one rank more would be one rank too
  many), as the scaling study nests its pools.
- 1×: the impressions alone, the part both pools share. (Every student also distils the teacher's labels of the
  judged train pairs, as the run's does.)

Not here: 100× pools. The scaling study measures BM25's at 1× / 10× / 100× on the tuned towers and the frozen
MiniLM; a multi-channel pool at 100× would take another ~1.5 h of labelling on these 2 cores (~2.2M pairs at
~400 pairs/s, bf16), before its students.
"""

from __future__ import annotations

import sys

import numpy as np

TITLE = ("Harder pools: multi-channel candidates (BM25, tuned-tower ANN, the student's own top items) vs BM25 alone, "
         "on tuned and frozen towers")
QUESTION = ("At the same pool size and labelling budget, do candidates from several retrieval channels teach the "
            "student more than BM25's alone, and how far are both above the impressions alone (1×)?")
# Per unjudged query: BM25 top-24, the tuned tower's 24 nearest items, and the 16 best of the current student's
# rerank of BM25's and the tower's top-100 (de-duplicated in that order).
CHANNELS = {"top_k": 24, "embedding_top_k": 24, "student_top_k": 16, "student_depth": 100}
SEEDS = (0, 1, 2)
POOLS = ("1× impressions", "BM25 only", "multi-channel")


def run(steps, args, command: str) -> dict:
    import pandas as pd

    from benchmarks.studies import figure_png, models_key, not_run, on_run_towers, record, student_settings, table
    from relevance.chain import Chain
    from relevance.common.files import read_manifest
    from relevance.config import load_config
    from relevance.data.schema import prob_columns
    from relevance.evaluation.evaluate import evaluate_models
    from relevance.labels.labelling import label_pool, pool_fingerprint, read_labels
    from relevance.labels.pool import build_pool
    from relevance.student.distillation import train_students
    from relevance.student.featurizer import build_featurizer, featurizer_settings
    from relevance.student.towers import TOWER_MANIFEST

    source = load_config(args.config)
    chain = Chain(source)
    if not (chain.towers_dir / TOWER_MANIFEST).exists():
        return not_run("pools", sys.modules[__name__], chain, command)
    dataset = chain.dataset()
    k = dataset.num_grades
    version = read_manifest(chain.teacher_dir, "teacher")["teacher_version"]
    config = source.model_copy(deep=True)
    config.student, towers = on_run_towers(source.student, chain.towers_dir)
    channel_student = chain.student_dirs["student"]  # the run's student: its own top-ranked items
    inputs = {"teacher": version, "pool": pool_fingerprint(chain.pool_path), "towers": towers,
              "channel_student": read_manifest(channel_student, "student")["student_version"], "channels": CHANNELS}

    # The multi-channel pool, built and labelled under the study's cache (each label shard resumes).
    work = steps.directory("multi-channel pool", inputs)
    work.mkdir(parents=True, exist_ok=True)
    multi_config = config.model_copy(deep=True)
    # Validated (a student channel deeper than what it reranks is refused), not copied around the validators.
    multi_config.candidates = type(config.candidates).model_validate(
        {**config.candidates.model_dump(), **CHANNELS, "student_model": str(channel_student)})
    pool_path = work / "pool.parquet"
    if not pool_path.exists():
        build_pool(multi_config, dataset, pool_path, chain.data_dir / "impressions.parquet",
                   embeddings_dir=chain.embeddings_dir)
    label_pool(chain.teacher_dir, pool_path, dataset, work / "labels", multi_config.labeling)
    multi_pool = pd.read_parquet(pool_path)
    multi = read_labels(work / "labels", k, pool_path).merge(multi_pool, on=["query_id", "item_id"])

    # BM25 alone at the multi-channel pool's size: the run's pool cut at the matching BM25 depth.
    depth = source.candidates.top_k

    def ranked_run_pool() -> dict:
        from benchmarks.studies.scaling import bm25_ranks, nested_depths

        run_pool = pd.read_parquet(chain.pool_path)
        others = set(run_pool["channel"]) - {"impression", "bm25"}
        if others:
            raise SystemExit(f"{chain.pool_path} holds {sorted(others)} pairs besides BM25's and the impressions: the "
                             "BM25-only pool is cut from a run whose pool is BM25's alone")
        run_pool = bm25_ranks(source, dataset, run_pool, depth)
        run_pool["impression"] = run_pool["channel"] == "impression"
        try:  # the scaling study's nesting: the smallest depth whose pool holds the multi-channel pool's pairs
            cut = nested_depths(run_pool, len(multi), (1,))[1]
        except ValueError:  # the multi-channel pool is larger than the run's whole pool: all of it
            cut = depth + 1
        kept = run_pool[run_pool["impression"] | (run_pool["rank"] < cut)]
        path = steps.directory("bm25 pool", {**inputs, "pairs": int(len(multi))}).with_suffix(".parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        kept[["query_id", "item_id", "channel"]].to_parquet(path, index=False)
        return {"depth": cut, "pairs": int(len(kept)), "path": str(path)}

    bm25_cut = steps("bm25 pool", {**inputs, "pairs": int(len(multi))}, ranked_run_pool)
    run_labels = read_labels(chain.labels_dir, k, chain.pool_path)
    bm25 = run_labels.merge(pd.read_parquet(bm25_cut["path"]), on=["query_id", "item_id"])
    pools = {"1× impressions": bm25[bm25["channel"] == "impression"].reset_index(drop=True),
             "BM25 only": bm25, "multi-channel": multi}
    train_pairs = len(dataset.split("train"))

    # The same MLPs on the frozen MiniLM too: whether the tuned towers' gain holds on every pool.
    frozen = config.model_copy(deep=True)
    frozen.student = config.student.model_copy(update={"encoder": source.student.encoder, "query_encoder": None})
    models = {"teacher": chain.teacher_dir}
    for kind, kind_config in (("", config), (", frozen towers", frozen)):
        students = steps.directory("students", {**inputs, "student": student_settings(kind_config.student)})
        featurizer = build_featurizer(dataset.items, featurizer_settings(kind_config), chain.embeddings_dir)
        for name in POOLS:  # the smallest first: an interrupted run has its cheap rows (a student resumes)
            for seed in SEEDS:
                out = students / f"{name.split()[0].replace('×', 'x')}-seed-{seed}"
                seeded = kind_config.model_copy(deep=True)
                seeded.student.seed = seed
                frame = pools[name].drop(columns=["channel", "rank"], errors="ignore")
                train_students(seeded, dataset, chain.teacher_dir, frame, {"student": out}, featurizer)
                models[f"{name}{kind}, seed {seed}"] = out
    students = steps.directory("students", {**inputs, "student": student_settings(config.student)})

    def evaluate() -> dict:
        report = evaluate_models(config, dataset, models, students / "report.json", chain.embeddings_dir)
        return {name: {m: report["models"][name]["overall"][m] for m in ("accuracy", "ndcg@20")} for name in models}

    scores = steps("evaluate", {**inputs, "models": models_key(models)}, evaluate)
    teacher = scores["teacher"]
    valid = {name: read_manifest(models[name], "student")["metrics"]["best"]["valid_accuracy"]
             for name in models if name != "teacher"}

    def spread(pool: str, metric: str) -> tuple[float, float]:
        values = np.array([valid[f"{pool}, seed {s}"] if metric == "valid_accuracy" else
                           scores[f"{pool}, seed {s}"][metric] for s in SEEDS])
        return float(values.mean()), float(values.std(ddof=1))

    stats = {pool: {m: spread(pool, m) for m in ("valid_accuracy", "accuracy", "ndcg@20")} for pool in POOLS}
    frozen_stats = {pool: {m: spread(f"{pool}, frozen towers", m) for m in ("valid_accuracy", "accuracy", "ndcg@20")}
                    for pool in POOLS}
    composition = {pool: {c: int(n) for c, n in frame["channel"].value_counts().items()}
                   for pool, frame in pools.items()}
    grades = {}
    for pool, frame in pools.items():
        probs = frame[prob_columns(k)].to_numpy()
        grades[pool] = {"expected_grade": float((probs @ np.arange(k)).mean()),
                        "argmax_share": (np.bincount(probs.argmax(1), minlength=k) / len(probs)).tolist()}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes[:2], ("accuracy", "ndcg@20")):
        means = [stats[pool][metric][0] for pool in POOLS]
        frozen_means = [frozen_stats[pool][metric][0] for pool in POOLS]
        at = np.arange(len(POOLS))
        ax.bar(at - 0.2, means, 0.4, yerr=[stats[pool][metric][1] for pool in POOLS], capsize=4,
               color="tab:orange", label="tuned towers")
        ax.bar(at + 0.2, frozen_means, 0.4, yerr=[frozen_stats[pool][metric][1] for pool in POOLS], capsize=4,
               color="tab:gray", label="frozen MiniLM")
        ax.axhline(teacher[metric], color="tab:green", ls="--", label="teacher")
        ax.set_xticks(at, [f"{p}\n{len(pools[p]):,} pairs" for p in POOLS], fontsize=8)
        ax.set_ylim(min(means + frozen_means + [teacher[metric]]) - 0.01, max(means + [teacher[metric]]) + 0.005)
        ax.set_ylabel(f"test {metric} (mean ± std, {len(SEEDS)} seeds)")
        ax.legend(fontsize=8)
    bottom = np.zeros(len(POOLS))
    for grade in range(k):
        share = np.array([grades[p]["argmax_share"][grade] for p in POOLS])
        axes[2].bar(range(len(POOLS)), share, bottom=bottom, label=f"grade {grade}")
        bottom += share
    axes[2].set_xticks(range(len(POOLS)), list(POOLS), fontsize=8)
    axes[2].set_ylabel("teacher's argmax grade, share of pairs")
    axes[2].legend(fontsize=7)
    fig.tight_layout()

    gap = stats["multi-channel"]["accuracy"][0] - stats["BM25 only"]["accuracy"][0]
    noise = max(stats["multi-channel"]["accuracy"][1], stats["BM25 only"]["accuracy"][1])
    answer = (f"On the run's tuned towers (MLP {list(config.student.hidden)}, {len(SEEDS)} seeds; test accuracy / "
              "nDCG@20 mean ± std): "
              + "; ".join(f"{pool} ({len(pools[pool]):,} pairs, {len(pools[pool]) / train_pairs:.1f}× the train "
                          f"split) {stats[pool]['accuracy'][0]:.4f} ± {stats[pool]['accuracy'][1]:.4f} / "
                          f"{stats[pool]['ndcg@20'][0]:.4f} ± {stats[pool]['ndcg@20'][1]:.4f}" for pool in POOLS)
              + f"; the teacher {teacher['accuracy']:.4f} / {teacher['ndcg@20']:.4f}. Every pool's student also "
              f"distils the teacher's labels of the {train_pairs:,} judged train pairs. Multi-channel − BM25 only: "
              f"{gap * 100:+.2f} pt accuracy ({'more' if abs(gap) > 2 * noise else 'less'} than two seed standard "
              f"deviations, {2 * noise * 100:.2f} pt), nDCG@20 "
              f"{stats['multi-channel']['ndcg@20'][0] - stats['BM25 only']['ndcg@20'][0]:+.4f}. The multi-channel "
              "pool holds " + ", ".join(f"{n:,} {c}" for c, n in composition["multi-channel"].items())
              + " pairs; BM25 only is " + (f"the run's pool cut at depth {bm25_cut['depth']}"
                                          if bm25_cut["depth"] <= depth else "the run's whole pool")
              + ". The teacher's mean expected "
              "grade: " + ", ".join(f"{pool} {grades[pool]['expected_grade']:.2f}" for pool in POOLS)
              + ". The same MLPs on the frozen MiniLM: "
              + "; ".join(f"{pool} {frozen_stats[pool]['accuracy'][0]:.4f} ± {frozen_stats[pool]['accuracy'][1]:.4f} "
                          f"/ {frozen_stats[pool]['ndcg@20'][0]:.4f} (tuned − frozen "
                          f"{(stats[pool]['accuracy'][0] - frozen_stats[pool]['accuracy'][0]) * 100:+.2f} pt)"
                          for pool in POOLS)
              + ". 100× pools: BM25's in the scaling study (tuned and frozen towers); a multi-channel one is not "
              "measured (~1.5 h more labelling on 2 cores).")
    rows = [[name, valid.get(name, ""), s["accuracy"], s["ndcg@20"], s["accuracy"] / teacher["accuracy"],
             s["ndcg@20"] / teacher["ndcg@20"]] for name, s in scores.items()]
    return record("pools", sys.modules[__name__], answer, [
        table(f"Students on each pool ({config.eval.split} split; valid accuracy as early stopping saw it)",
              ["model", "valid accuracy", "test accuracy", "test nDCG@20", "accuracy / teacher",
               "nDCG@20 / teacher"], rows),
        table("The pools: pairs by channel and the teacher's grades", ["pool", "pairs", "× train split", "channels",
                                                                      "mean expected grade", "argmax grade shares"],
              [[pool, len(pools[pool]), len(pools[pool]) / train_pairs,
                ", ".join(f"{c} {n:,}" for c, n in composition[pool].items()), grades[pool]["expected_grade"],
                " / ".join(f"{v:.2f}" for v in grades[pool]["argmax_share"])] for pool in POOLS]),
    ], {"Students by pool, and the teacher's grades in each": figure_png(fig)}, command, steps,
        channels=CHANNELS, seeds=list(SEEDS), bm25_depth=bm25_cut["depth"],
        pools={pool: {"pairs": len(pools[pool]), "channels": composition[pool], **grades[pool],
                      **{m: {"mean": stats[pool][m][0], "sd": stats[pool][m][1]}
                         for m in ("valid_accuracy", "accuracy", "ndcg@20")},
                      "frozen_towers": {m: {"mean": frozen_stats[pool][m][0], "sd": frozen_stats[pool][m][1]}
                                        for m in ("valid_accuracy", "accuracy", "ndcg@20")}} for pool in POOLS})
