"""Active learning on Home Depot, simulated from the human grades the train split already has.

Each seed starts from a random 25% of the train split's judged pairs. The rest of train is the unlabelled pool:
its grades are hidden until a strategy picks the pair. Each round:

1. the teacher is retrained from the pretrained backbone on the pairs labelled so far (early stopping on valid);
2. it is scored on test (accuracy, nDCG@20);
3. it labels the pool, and each strategy (relevance.labels.active.select, the code behind ``relevance select``, at most
   ``PER_QUERY`` pairs per query per round) picks the next 22.5% of train to "send to raters".

The rounds go 25% → 47.5% → 70%. The reference is the teacher trained by the same recipe on all of train.

The per-round teacher is the bench-quality MiniLM recipe cut to one epoch. Four strategies × three seeds × two
rounds, the three shared starts and three references are 30 fine-tunes on two CPU cores; three epochs each, or
15% rounds, would not fit the session that ran it. The reference uses the same one-epoch recipe, so the
comparison is like for like. The production three-epoch teacher is listed for scale.

What each strategy needs:
- ``entropy`` and ``diverse`` need the round's teacher probabilities on the pool;
- ``diverse`` also needs pair embeddings: query + item MiniLM vectors from the run's embedding cache;
- ``disagreement`` also needs a student. It is the run's student MLP on the run's features, trained each round on
  the teacher's probabilities for the pool and the one-hot human grades for the pairs labelled so far.
"""

from __future__ import annotations

import hashlib
import sys
import time
from functools import cached_property
from pathlib import Path

import numpy as np

TITLE = "Active learning: which train pairs to grade, 25% → 70% of the labels, against the full-train teacher"
QUESTION = ("Starting from 25% of Home Depot's train labels and acquiring 22.5% more per round, does a strategy "
            "(random, teacher entropy, student–teacher disagreement, diversity-aware entropy) reach the full-train "
            "teacher's test accuracy with at most 70% of the labels?")
SEEDS = (0, 1, 2)
START, STEP, ROUNDS = 0.25, 0.225, 2
PER_QUERY = 3
STRATEGIES = ("random", "entropy", "disagreement", "diverse")
ROUND_TEACHER = {"epochs": 1, "eval_every_steps": None}
METRICS = ("accuracy", "ndcg@20")


def _labelled_key(rows: np.ndarray) -> str:
    return hashlib.sha256(np.sort(rows).astype(np.int64).tobytes()).hexdigest()[:16]


class _Simulation:
    """One Home Depot run's data, features and teacher recipe, shared by every round of every seed."""

    def __init__(self, config, dataset, featurizer):
        self.config, self.dataset, self.featurizer = config, dataset, featurizer
        self.train = dataset.split("train").reset_index(drop=True)
        self.valid = dataset.split("valid").reset_index(drop=True)
        self.test = dataset.split("test").reset_index(drop=True).assign(locale="en_US")
        self.teacher_config = config.teacher.model_copy(update=ROUND_TEACHER)
        info = dataset.info
        self.raw_scale = (info.raw_score_min, info.raw_score_max) if info.raw_score_min is not None else None

    # Computed on first use, then kept: only disagreement needs the features, only diverse the pair vectors.
    @cached_property
    def train_features(self) -> np.ndarray:
        return self.featurizer.pair_features(self.train, self.dataset.query_text)

    @cached_property
    def valid_features(self) -> np.ndarray:
        return self.featurizer.pair_features(self.valid, self.dataset.query_text)

    @cached_property
    def pair_vectors(self) -> np.ndarray:
        """Query + item embedding of every train pair (the ``diverse`` strategy's similarity space)."""
        q, i = self.featurizer.embeddings(self.dataset.query_text.reindex(self.train["query_id"]).tolist(),
                                          self.train["item_id"].tolist())
        return q + i

    def teacher_round(self, seed: int, labelled: np.ndarray, score_pool: bool) -> dict:
        """Fine-tune on the labelled train rows, evaluate on test, and (``score_pool``) label the rest of train."""
        from relevance.evaluation.evaluate import report_block
        from relevance.teacher.model import score_items
        from relevance.teacher.train import train_teacher

        started = time.perf_counter()
        settings = self.teacher_config.model_copy(update={"seed": seed})
        teacher = train_teacher(self.train.iloc[labelled], self.valid, self.dataset.query_text, self.dataset.items,
                                self.dataset.num_grades, settings, self.config.text,
                                log=lambda line: print(f"      {line}", flush=True), raw_scale=self.raw_scale)
        trained = time.perf_counter() - started
        texts = teacher.item_texts(self.dataset.items)

        def probs(frame):
            return score_items(teacher, frame, self.dataset.query_text, texts, self.config.labeling.batch_size,
                               self.config.labeling.precision, calibrated=False)

        overall = report_block(self.test, probs(self.test), self.dataset.info, self.config.eval)["overall"]
        out = {"labelled": len(labelled), "train_seconds": trained, **{m: overall[m] for m in METRICS},
               "valid_accuracy": teacher.manifest["metrics"].get("valid_accuracy")}
        if score_pool:
            pool = np.setdiff1d(np.arange(len(self.train)), labelled)
            out["pool_rows"] = pool.tolist()
            out["pool_probs"] = np.round(probs(self.train.iloc[pool]), 6).tolist()
        return out

    def student_probs(self, labelled: np.ndarray, pool: np.ndarray, pool_probs: np.ndarray) -> np.ndarray:
        """The round's student (teacher labels on the pool, human grades on the labelled pairs), on the pool."""
        import torch

        from relevance.student.model import train_student

        x = self.train_features
        k = self.dataset.num_grades
        targets = np.zeros((len(self.train), k), dtype=np.float32)
        targets[pool] = pool_probs
        targets[labelled, self.train["grade"].to_numpy()[labelled]] = 1.0
        rows = np.concatenate([labelled, pool])
        model, _ = train_student(x[rows], targets[rows], self.valid_features, self.valid["grade"].to_numpy(), k,
                                 self.config.student, log=lambda line: None)
        model.eval()
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(x[pool])), -1).numpy()

    def acquire(self, strategy: str, seed: int, round_: int, labelled: np.ndarray, result: dict) -> np.ndarray:
        """The train rows ``strategy`` sends to the raters after this round's teacher."""
        from relevance.data.schema import prob_columns
        from relevance.labels.active import select

        budget = int(round(STEP * len(self.train)))
        if strategy == "random":
            pool = np.setdiff1d(np.arange(len(self.train)), labelled)
            pool_probs = np.full((len(pool), self.dataset.num_grades), 1.0 / self.dataset.num_grades)
        else:
            pool, pool_probs = np.asarray(result["pool_rows"]), np.asarray(result["pool_probs"])
        candidates = self.train.iloc[pool][["query_id", "item_id"]].reset_index(drop=True)
        candidates[prob_columns(self.dataset.num_grades)] = pool_probs
        candidates["row"] = pool
        student = self.student_probs(labelled, pool, pool_probs) if strategy == "disagreement" else None
        vectors = self.pair_vectors[pool] if strategy == "diverse" else None
        chosen = select(candidates, budget, strategy, self.dataset.num_grades, PER_QUERY, seed=seed * 100 + round_,
                        student_probs=student, embeddings=vectors)
        return np.sort(np.concatenate([labelled, chosen["row"].to_numpy()]))


def run(steps, args, command: str) -> dict:
    from benchmarks.studies import figure_png, record, table
    from relevance.common.files import read_manifest
    from relevance.common.runtime import set_threads
    from relevance.config import load_config
    from relevance.data.schema import Dataset
    from relevance.student.featurizer import build_featurizer, featurizer_settings

    set_threads()
    config = load_config(args.config)
    root = Path(config.workdir)
    dataset = Dataset.load(root / "data", with_impressions=False)
    featurizer = build_featurizer(dataset.items, featurizer_settings(config), root / "embeddings")
    sim = _Simulation(config, dataset, featurizer)
    n = len(sim.train)
    recipe = {"data": dataset.training_data_hash(), "teacher": sim.teacher_config.model_dump(),
              "text": config.text.model_dump(), "precision": config.labeling.precision}

    def teacher_step(seed: int, labelled: np.ndarray, score_pool: bool) -> dict:
        inputs = {**recipe, "seed": seed, "labelled": _labelled_key(labelled), "pairs": len(labelled),
                  "score_pool": score_pool}
        print(f"   seed {seed}: teacher on {len(labelled)} labelled pairs ({len(labelled) / n:.0%})", flush=True)
        return steps("teacher", inputs, lambda: sim.teacher_round(seed, labelled, score_pool))

    curves = {s: {seed: [] for seed in SEEDS} for s in STRATEGIES}
    state = {}
    for seed in SEEDS:
        start = np.sort(np.random.default_rng([seed, 25]).choice(n, int(round(START * n)), replace=False))
        first = teacher_step(seed, start, True)
        for strategy in STRATEGIES:
            curves[strategy][seed].append(first)
            state[strategy, seed] = (start, first)
    # Round-major, so that every strategy has advanced as far as the others whenever the run is stopped.
    for round_ in range(1, ROUNDS + 1):
        for seed in SEEDS:
            for strategy in STRATEGIES:
                labelled, result = state[strategy, seed]
                print(f"  round {round_}, seed {seed}, {strategy}", flush=True)
                labelled = sim.acquire(strategy, seed, round_, labelled, result)
                result = teacher_step(seed, labelled, round_ < ROUNDS and strategy != "random")
                curves[strategy][seed].append(result)
                state[strategy, seed] = (labelled, result)

    reference = {seed: teacher_step(seed, np.arange(n), False) for seed in SEEDS}

    def stats(results: list[dict], metric: str) -> tuple[float, float]:
        values = np.array([r[metric] for r in results])
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

    fractions = [START + STEP * r for r in range(ROUNDS + 1)]
    ref = {m: stats(list(reference.values()), m) for m in METRICS}
    production = read_manifest(root / "teacher", "teacher")["teacher_version"]
    report = root / "report.json"  # the run's own evaluation on test (relevance evaluate)
    production_metrics = None
    if report.exists():
        import json

        overall = json.loads(report.read_text()).get("models", {}).get("teacher", {}).get("overall", {})
        production_metrics = {m: overall[m] for m in METRICS if m in overall} or None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # What each strategy made the raters grade: the grade mix of its labelled set after the last round, against
    # the train split's (what random sampling keeps) and test's. A strategy that over-samples some grades trains
    # the teacher on a prior that test does not have.
    k = dataset.num_grades
    grades = sim.train["grade"].to_numpy()

    def mix(values: np.ndarray) -> np.ndarray:
        return np.bincount(values, minlength=k) / len(values)

    mixes = {s: np.mean([mix(grades[state[s, seed][0]]) for seed in SEEDS], axis=0) for s in STRATEGIES}
    mixes = {"train split": mix(grades), "test split": mix(sim.test["grade"].to_numpy()), **mixes}

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2), gridspec_kw={"width_ratios": [1, 1, 0.8], "wspace": 0.45})
    for ax, metric in zip(axes, METRICS):
        for offset, strategy in enumerate(STRATEGIES):
            points = [stats([curves[strategy][seed][r] for seed in SEEDS], metric) for r in range(ROUNDS + 1)]
            mean, std = np.array(points).T
            dodge = (offset - (len(STRATEGIES) - 1) / 2) * 0.5  # side by side, so the error bars stay readable
            ax.errorbar(np.array(fractions) * 100 + dodge, mean, yerr=std, marker="o", capsize=3, label=strategy)
        ax.axhline(ref[metric][0], color="black", lw=1, label="full train, same recipe (mean)")
        ax.axhspan(ref[metric][0] - ref[metric][1], ref[metric][0] + ref[metric][1], color="black", alpha=0.08)
        ax.set_xticks(np.array(fractions) * 100)
        ax.set_xlabel("train labels used (%)")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"teacher {metric}, mean ± std over {len(SEEDS)} seeds")
    axes[0].legend(fontsize=8, loc="lower right")
    left = np.zeros(len(mixes))
    for grade in range(k):
        shares = np.array([m[grade] for m in mixes.values()])
        axes[2].barh(list(mixes), shares, left=left, label=dataset.info.grade_names[grade])
        left += shares
    axes[2].invert_yaxis()
    axes[2].set_xlabel("share of pairs")
    axes[2].set_title(f"grade mix of the labelled set at {fractions[-1]:.1%}")
    axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.15), ncol=3)

    rows = []
    reached = {}
    for strategy in STRATEGIES:
        for r, fraction in enumerate(fractions):
            results = [curves[strategy][seed][r] for seed in SEEDS]
            acc, nd = stats(results, "accuracy"), stats(results, "ndcg@20")
            rows.append([strategy, f"{fraction:.1%}", results[0]["labelled"], acc[0], acc[1], nd[0], nd[1]])
            if acc[0] >= ref["accuracy"][0] and strategy not in reached:
                reached[strategy] = fraction
    rows.append(["all of train (reference)", "100%", n, *ref["accuracy"], *ref["ndcg@20"]])
    if production_metrics:
        rows.append(["all of train, production recipe (3 epochs, one seed)", "100%", n,
                     production_metrics["accuracy"], "", production_metrics["ndcg@20"], ""])
    final = {s: stats([curves[s][seed][ROUNDS] for seed in SEEDS], "accuracy")[0] for s in STRATEGIES}
    best = max(final, key=final.get)
    gap = ref["accuracy"][0] - final[best]
    if reached:
        first = min(reached, key=reached.get)
        verdict = (f"Target met: {first} reaches the full-train teacher's mean test accuracy "
                   f"({ref['accuracy'][0]:.4f}) with {reached[first]:.1%} of the labels")
    else:
        verdict = (f"Target missed: at {fractions[-1]:.1%} of the labels the best strategy, {best}, is at "
                   f"{final[best]:.4f} test accuracy, {gap:.4f} under the full-train teacher's "
                   f"{ref['accuracy'][0]:.4f} "
                   f"(seed std {ref['accuracy'][1]:.4f})")
    answer = (verdict + f". Test accuracy at {fractions[-1]:.1%}: "
              + ", ".join(f"{s} {final[s]:.4f}" for s in STRATEGIES)
              + f"; at 25% (shared start) {stats([curves['random'][s][0] for s in SEEDS], 'accuracy')[0]:.4f}. "
              f"Per-round teachers are the MiniLM recipe cut to one epoch (the reference too); "
              f"{len(SEEDS)} seeds. Grade mix of the labelled set at {fractions[-1]:.1%} (lowest / highest grade "
              "share): train "
              f"{mixes['train split'][0]:.2f} / {mixes['train split'][-1]:.2f}, "
              + ", ".join(f"{s} {mixes[s][0]:.2f} / {mixes[s][-1]:.2f}" for s in STRATEGIES) + ".")
    return record("active", sys.modules[__name__], answer, [table(
        "Teacher test metrics by strategy and labels used (mean and std over seeds); each round retrains the "
        "teacher from the pretrained backbone", ["strategy", "labels", "pairs", "accuracy", "± std", "nDCG@20",
                                                  "± std"], rows),
        table("Grade mix of the labelled set after the last round (mean over seeds)",
              ["labelled set", *dataset.info.grade_names], [[name, *m.tolist()] for name, m in mixes.items()])],
        {"Test accuracy and nDCG@20 of the retrained teacher against train labels used": figure_png(fig)},
        command, steps, reference={str(k): {m: v[m] for m in METRICS} for k, v in reference.items()},
        curves={s: {str(seed): [{m: r[m] for m in ("labelled", *METRICS, "train_seconds")} for r in c]
                    for seed, c in per_seed.items()} for s, per_seed in curves.items()},
        reached=reached, production_teacher=production, production_metrics=production_metrics,
        grade_mix={name: m.tolist() for name, m in mixes.items()})
