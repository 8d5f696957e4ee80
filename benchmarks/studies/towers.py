"""Tuned towers on Home Depot: the student's bi-encoder distilled from the teacher's soft labels
(relevance.student.towers, listwise KL within each query's candidates), then the MLP trained on the tuned vectors,
against the same MLP on the frozen all-MiniLM-L6-v2.

Everything but the encoder is the bench-quality-minilm run's: its teacher, its pool (impressions + BM25 top-56,
~10× the train split) and its labels. The frozen student with seed 0 is that run's frozen-encoder student (the
same settings: its student_frozen_towers/ row, as the run tunes its own towers); other seeds are trained here.
The towers are tuned once, on a stated budget that fits 2 cores, and reused by every seed (issue: "tune them once
on a stated budget, reuse them for every MLP, and say so").
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

TITLE = "Tuned towers: the student's bi-encoder distilled from the teacher vs the frozen MiniLM"
QUESTION = ("Does tuning the student's query/item tower on the teacher's soft labels (listwise KL, two stages: "
            "towers, then the MLP on the tuned vectors) lift the student over the frozen all-MiniLM-L6-v2, on the "
            "same pool and labels?")
# The budget: 3 epochs of 1,500 of the pool's ~3,300 queries × 8 of their candidates (each epoch draws its queries
# and candidates afresh), chosen to fit a session on 2 cores.
TOWERS = {"epochs": 3, "max_queries_per_epoch": 1500, "candidates_per_query": 8, "queries_per_batch": 16}
SEEDS = (0, 1, 2)  # the MLP's seeds (the towers are tuned once): 1× and 100× pools are still to come
WIDTHS = ([256], [1024, 256])  # the MLP widths tried on the tuned towers (seed 0), besides the run's own
# Separate query towers: layers kept of the tuned tower's 6 (relevance.student.query_tower), and their training.
QUERY_LAYERS = (3, 2)
QUERY_TOWER = {"epochs": 3, "batch_size": 128, "pseudo_queries_per_item": 1, "learning_rate": 1e-4}
QUERY_TOLERANCE = 0.002  # valid accuracy a separate query tower may give up (the serving path's quality bar)


def _frozen_run_student(chain) -> Path:
    """The bench-quality run's student on the frozen encoder: its report row beside tuned towers, else its student."""
    frozen = chain.root / "student_frozen_towers"
    return frozen if (frozen / "manifest.json").exists() else chain.student_dirs["student"]


def _same_settings(chain, source) -> bool:
    """Whether the bench-quality run's frozen-encoder student was trained with ``source``'s student settings (how
    often it checkpointed, and the tower settings it never read, aside)."""
    from benchmarks.studies import student_settings
    from relevance.common.files import read_manifest

    aside = {"checkpoint_every_batches"}  # (how the run makes its encoders is never in student_settings)
    saved = student_settings(read_manifest(_frozen_run_student(chain), "student")["config"])
    return ({k: v for k, v in saved.items() if k not in aside}
            == {k: v for k, v in student_settings(source.student).items() if k not in aside})


def run(steps, args, command: str) -> dict:
    from benchmarks.studies import figure_png, models_key, record, student_settings, table
    from relevance.chain import Chain
    from relevance.common.files import read_manifest
    from relevance.config import load_config
    from relevance.evaluation.evaluate import evaluate_models
    from relevance.labels.labelling import label_chunks, pool_fingerprint
    from relevance.student.distillation import train_students
    from relevance.student.featurizer import build_featurizer, featurizer_settings
    from relevance.student.towers import QUERY_TOWER_DIR, TOWER_MANIFEST

    source = load_config(args.config)
    chain = Chain(source)
    dataset = chain.dataset()
    version = read_manifest(chain.teacher_dir, "teacher")["teacher_version"]
    config = source.model_copy(deep=True)
    # The study tunes and distils its own (the run's steps off: it names every encoder itself).
    config.student = source.student.without_encoder_steps()
    config.student.towers = config.student.towers.model_copy(update=TOWERS)
    inputs = {"teacher": version, "pool": pool_fingerprint(chain.pool_path), "encoder": source.student.encoder,
              "max_length": source.student.encoder_max_length,
              "towers": config.student.towers.model_dump(exclude={"enabled", "shared"})}  # shared: as before it existed
    model_dir = steps.directory("towers", inputs) / "model"

    def tune(run_config, out: Path) -> dict:
        started = time.perf_counter()
        Chain(run_config).towers(dataset, out)  # resumes from its checkpoint when killed
        manifest = json.loads((out / TOWER_MANIFEST).read_text())
        return {"seconds": time.perf_counter() - started, "best": manifest["best"], "history": manifest["history"]}

    tuned = steps("towers", inputs, lambda: tune(config, model_dir))

    def frozen_loss() -> dict:  # the same valid loss of the frozen tower: what the tuned one's history reads against
        from relevance.models.bm25 import lexical_item_texts
        from relevance.student.towers import tower_valid_loss

        recorded = json.loads((model_dir / TOWER_MANIFEST).read_text()).get("base_valid_loss")
        if recorded is not None:  # measured by the tuning run itself, before its first step
            return {"valid_loss": recorded}
        valid = dataset.split("valid")[["query_id", "item_id", "grade"]]
        return {"valid_loss": tower_valid_loss(source.student.encoder, valid, dataset.query_text,
                                               lexical_item_texts(dataset.items, source.text),
                                               source.student.encoder_max_length, config.student.towers,
                                               steps.directory("frozen-tower", inputs))}

    frozen_tower = steps("frozen tower", inputs, frozen_loss)
    tuned_config = config.model_copy(deep=True)
    tuned_config.student.encoder = str(model_dir.resolve())
    students = steps.directory("students", {**inputs, "student": student_settings(config.student)})
    models = {"teacher": chain.teacher_dir}

    def student(out: Path, run_config, seed: int, hidden: list[int] | None = None) -> Path:
        """The MLP trained in ``out`` (unless it is there already) on ``run_config``'s towers."""
        if (out / "manifest.json").exists() and run_config is not config:  # tuned: the very towers?
            from relevance.student.encoder import BiEncoder

            saved, length = read_manifest(out, "student"), source.student.encoder_max_length
            towers_now = {"encoder_fingerprint": BiEncoder(run_config.student.encoder, length).fingerprint,
                          "query_encoder_fingerprint": (BiEncoder(run_config.student.query_encoder, length).fingerprint
                                                        if run_config.student.query_encoder else None)}
            if any(saved.get(k) != v for k, v in towers_now.items()):
                raise RuntimeError(f"{out} was trained on other towers than {run_config.student.encoder}"
                                   f" / {run_config.student.query_encoder}: delete it")
        if not (out / "manifest.json").exists():
            seeded = run_config.model_copy(deep=True)
            seeded.student.seed = seed
            if hidden is not None:
                seeded.student.hidden = list(hidden)
            featurizer = build_featurizer(dataset.items, featurizer_settings(seeded), chain.embeddings_dir)
            labels = label_chunks(chain.labels_dir, dataset.num_grades, pool_path=chain.pool_path)
            train_students(seeded, dataset, chain.teacher_dir, labels, {"student": out}, featurizer)
        return out

    for seed in SEEDS:
        for kind, run_config in (("frozen", config), ("tuned", tuned_config)):
            name = f"student, {kind} towers, seed {seed}"
            if kind == "frozen" and seed == source.student.seed and _same_settings(chain, source):
                models[name] = _frozen_run_student(chain)  # the bench-quality run's: these very settings
                continue
            models[name] = student(students / f"{kind}-seed-{seed}", run_config, seed)
    # The MLP's width on the tuned towers, chosen on valid: the run's [64] was chosen on frozen vectors, for its
    # serving cost (the Pareto study), and the trees on the tuned vectors beat it.
    widths = {tuple(source.student.hidden): f"student, tuned towers, seed {SEEDS[0]}"}
    for hidden in WIDTHS:
        if tuple(hidden) not in widths:
            widths[tuple(hidden)] = name = f"student {list(hidden)}, tuned towers, seed {SEEDS[0]}"
            models[name] = student(students / f"tuned-{'x'.join(map(str, hidden))}-seed-{SEEDS[0]}", tuned_config,
                                   SEEDS[0], hidden)
    # The width chosen on valid gets the other seeds too, so its test numbers carry a spread like the run's own.
    chosen = max(widths, key=lambda hidden: read_manifest(models[widths[hidden]], "student")["metrics"]["best"]
                 ["valid_accuracy"])
    chosen_rows = [f"student, tuned towers, seed {seed}" for seed in SEEDS]
    if chosen != tuple(source.student.hidden):
        chosen_rows = [widths[chosen]]
        for seed in SEEDS[1:]:
            chosen_rows.append(name := f"student {list(chosen)}, tuned towers, seed {seed}")
            models[name] = student(students / f"tuned-{'x'.join(map(str, chosen))}-seed-{seed}", tuned_config, seed,
                                   chosen)

    # Separate towers: a smaller query tower distilled into the tuned tower's space (a query is embedded online on a
    # cache miss, an item offline), and the chosen MLP trained on its query vectors (seed 0). The fewest layers whose
    # valid accuracy stays within QUERY_TOLERANCE of the shared tower's is chosen.
    from relevance.student.query_tower import QUERY_TOWER_MANIFEST

    query_towers, query_rows, qt_configs = {}, {}, {}
    chosen_name = "x".join(map(str, chosen))
    for layers in QUERY_LAYERS:
        settings = {**QUERY_TOWER, "layers": layers}
        qt_inputs = {**inputs, "query_tower": settings}
        qt_dir = steps.directory("query-tower", qt_inputs) / "model"
        qt_config = tuned_config.model_copy(deep=True)
        qt_config.student.query_tower = qt_config.student.query_tower.model_copy(update=settings)

        def distil(qt_dir=qt_dir, qt_config=qt_config) -> dict:
            started = time.perf_counter()
            Chain(qt_config).query_tower(dataset, qt_dir)  # resumes from its checkpoint when killed
            manifest = json.loads((qt_dir / QUERY_TOWER_MANIFEST).read_text())
            return {"seconds": time.perf_counter() - started, "best": manifest["best"],
                    "start_valid_loss": manifest["start_valid_loss"], "training_texts": manifest["training_texts"],
                    "history": manifest["history"]}

        query_towers[layers] = steps(f"query tower {layers}", qt_inputs, distil)
        qt_config.student.query_encoder = str(qt_dir.resolve())
        query_rows[layers] = name = f"student {list(chosen)}, tuned towers, {layers}-layer query tower, seed {SEEDS[0]}"
        models[name] = student(students / f"tuned-{chosen_name}-query{layers}-seed-{SEEDS[0]}", qt_config, SEEDS[0],
                               chosen)
        qt_configs[layers] = qt_config

    def valid_accuracy(name: str) -> float:  # as early stopping saw it (the manifest's)
        return read_manifest(models[name], "student")["metrics"]["best"]["valid_accuracy"]

    query_choice = next((layers for layers in sorted(QUERY_LAYERS) if valid_accuracy(query_rows[layers])
                         >= valid_accuracy(chosen_rows[0]) - QUERY_TOLERANCE), None)
    # The serving width (the run's MLP, chosen for its cost by the Pareto study) on the chosen query tower: the
    # student benchmarks.serving_student serves, for a cache miss at the query tower's cost.
    serving_row = None
    if query_choice is not None and tuple(chosen) != tuple(source.student.hidden):
        hidden = list(source.student.hidden)
        serving_row = f"student {hidden}, tuned towers, {query_choice}-layer query tower, seed {SEEDS[0]}"
        models[serving_row] = student(students / f"tuned-{'x'.join(map(str, hidden))}-query{query_choice}-seed-"
                                      f"{SEEDS[0]}", qt_configs[query_choice], SEEDS[0], hidden)

    # Shared or separate weights: the same tower budget with a query tower of its own (both from the frozen MiniLM),
    # the chosen MLP on it (seed 0), against the shared towers' row of the same width and seed.
    separate_inputs = {**inputs, "towers": {**inputs["towers"], "shared": False}}
    separate_dir = steps.directory("towers", separate_inputs) / "model"
    separate_config = config.model_copy(deep=True)
    separate_config.student.towers = config.student.towers.model_copy(update={"shared": False})
    separate = steps("separate towers", separate_inputs, lambda: tune(separate_config, separate_dir))
    separate_student = tuned_config.model_copy(deep=True)
    separate_student.student.encoder = str(separate_dir.resolve())
    separate_student.student.query_encoder = str((separate_dir / QUERY_TOWER_DIR).resolve())
    separate_row = f"student {list(chosen)}, separate towers, seed {SEEDS[0]}"
    models[separate_row] = student(students / f"separate-{chosen_name}-seed-{SEEDS[0]}", separate_student, SEEDS[0],
                                   chosen)

    # The GBDTs on the same features as each student (frozen or tuned vectors, the same lexical block): the
    # issue's fairness bar. The human-label trees (multiclass, LambdaMART) and the trees distilled from the same
    # teacher labels as the students.
    from relevance.labels.labelling import read_labels
    from relevance.student.distillation import distillation_targets
    from relevance.student.gbdt import BASELINE_NAMES, train_baselines

    gbdts = steps.directory("gbdts", {**inputs, "gbdt": source.gbdt.model_dump(exclude={"objectives", "enabled"})})
    targets = None
    for kind, run_config in (("frozen", config), ("tuned", tuned_config)):
        outputs = {name: gbdts / kind / name for name in BASELINE_NAMES.values()}
        if not all((path / "manifest.json").exists() for path in outputs.values()):
            if targets is None:
                labels = read_labels(chain.labels_dir, dataset.num_grades, pool_path=chain.pool_path)
                targets = distillation_targets(source, dataset, chain.teacher_dir, labels)
            featurizer = build_featurizer(dataset.items, featurizer_settings(run_config), chain.embeddings_dir)
            train_baselines(run_config, dataset, featurizer, outputs, targets)
        for name, path in outputs.items():
            models[f"{name.replace('_', ' ')}, {kind} towers"] = path

    def evaluate() -> dict:
        report = evaluate_models(config, dataset, models, students / "report.json", chain.embeddings_dir)
        scores = {name: {m: report["models"][name]["overall"][m] for m in ("accuracy", "ndcg@20")}
                  for name in models}
        for name, directory in models.items():
            if name.startswith("student"):
                best = read_manifest(directory, "student")["metrics"]["best"]
                scores[name]["valid_accuracy"] = best["valid_accuracy"]
        return scores

    scores = steps("evaluate", {**inputs, "models": models_key(models)}, evaluate)
    teacher = scores["teacher"]
    rows = [[name, s.get("valid_accuracy", ""), s["accuracy"], s["ndcg@20"], s["accuracy"] / teacher["accuracy"],
             s["ndcg@20"] / teacher["ndcg@20"]] for name, s in scores.items()]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    history = tuned["history"]
    axes[0].plot([h["epoch"] for h in history], [h["valid_loss"] for h in history], "o-", label="tuned")
    axes[0].axhline(frozen_tower["valid_loss"], color="tab:red", ls=":", label="frozen MiniLM")
    axes[0].legend(fontsize=8)
    axes[0].set_xlabel("tower epoch")
    axes[0].set_ylabel("valid listwise KL (human grades)")
    kinds = ("frozen", "tuned")
    per_kind = {kind: [scores[f"student, {kind} towers, seed {s}"] for s in SEEDS] for kind in kinds}
    # The best GBDT on each kind of features, by test accuracy (a stricter bar than choosing it on valid).
    best_gbdt = {kind: max(((n, v) for n, v in scores.items() if n.startswith("gbdt") and n.endswith(f"{kind} towers")),
                           key=lambda nv: nv[1]["accuracy"]) for kind in kinds}

    def spread(values: list[dict], metric: str) -> tuple[float, float]:
        data = np.array([v[metric] for v in values])
        return float(data.mean()), float(data.std(ddof=1)) if len(data) > 1 else 0.0

    for ax, metric in zip(axes[1:], ("accuracy", "ndcg@20")):
        stats = [spread(per_kind[kind], metric) for kind in kinds]
        ax.bar(range(len(kinds)), [m for m, _ in stats], yerr=[sd for _, sd in stats], capsize=6, color="tab:blue")
        ax.axhline(teacher[metric], color="tab:green", ls="--", label="teacher")
        ax.scatter(range(len(kinds)), [best_gbdt[kind][1][metric] for kind in kinds], marker="_", s=900,
                   color="tab:orange", label="best GBDT (test accuracy), same features", zorder=3)
        ax.set_xticks(range(len(kinds)), [f"{kind} towers\n({len(SEEDS)} seeds)" for kind in kinds], fontsize=8)
        low = min(scores[n][metric] for n in scores)
        ax.set_ylim(low - 0.02, max(scores[n][metric] for n in scores) + 0.01)
        ax.set_ylabel(f"test {metric} (mean ± std)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    frozen, tuned_scores = per_kind["frozen"], per_kind["tuned"]

    def mean(values: list[dict], metric: str) -> float:
        return spread(values, metric)[0]

    def sd(values: list[dict], metric: str) -> float:
        return spread(values, metric)[1]

    delta = {m: mean(tuned_scores, m) - mean(frozen, m) for m in ("valid_accuracy", "accuracy", "ndcg@20")}
    chosen_scores = [scores[name] for name in chosen_rows]
    chosen_margin = mean(chosen_scores, "accuracy") - best_gbdt["tuned"][1]["accuracy"]
    shared = scores[chosen_rows[0]]  # the chosen width, seed 0: what a separate query tower reads against
    margin = {kind: mean(per_kind[kind], "accuracy") - best_gbdt[kind][1]["accuracy"] for kind in kinds}
    answer = (f"Towers tuned in {tuned['seconds'] / 60:.0f} min ({TOWERS['epochs']} epochs of "
              f"{TOWERS['max_queries_per_epoch']} queries × up to {TOWERS['candidates_per_query']} candidates; best "
              "valid listwise KL "
              f"{tuned['best']['valid_loss']:.4f} at epoch {tuned['best']['epoch']}, the frozen tower's "
              f"{frozen_tower['valid_loss']:.4f}). The MLP on the tuned towers vs on the frozen ones (mean ± std over "
              f"{len(SEEDS)} seeds): valid accuracy {delta['valid_accuracy']:+.4f}; test accuracy "
              f"{mean(tuned_scores, 'accuracy'):.4f} ± {sd(tuned_scores, 'accuracy'):.4f} vs "
              f"{mean(frozen, 'accuracy'):.4f} ± {sd(frozen, 'accuracy'):.4f} ({delta['accuracy']:+.4f}), nDCG@20 "
              f"{mean(tuned_scores, 'ndcg@20'):.4f} ± {sd(tuned_scores, 'ndcg@20'):.4f} vs "
              f"{mean(frozen, 'ndcg@20'):.4f} ± {sd(frozen, 'ndcg@20'):.4f} ({delta['ndcg@20']:+.4f}); the teacher: "
              f"{teacher['accuracy']:.4f} / {teacher['ndcg@20']:.4f}, so the tuned student keeps "
              f"{mean(tuned_scores, 'accuracy') / teacher['accuracy']:.1%} of its accuracy and "
              f"{mean(tuned_scores, 'ndcg@20') / teacher['ndcg@20']:.1%} of its nDCG@20. The best GBDT on the same "
              f"features: {best_gbdt['tuned'][0]} {best_gbdt['tuned'][1]['accuracy']:.4f} on the tuned towers "
              f"(student margin {margin['tuned'] * 100:+.2f} pt; target ≥ +1.5 pt), {best_gbdt['frozen'][0]} "
              f"{best_gbdt['frozen'][1]['accuracy']:.4f} on the frozen ones (margin {margin['frozen'] * 100:+.2f} "
              f"pt). Width on the tuned towers, chosen on valid (seed {SEEDS[0]}): "
              + ", ".join(f"{list(h)} {scores[n]['valid_accuracy']:.4f} valid / {scores[n]['accuracy']:.4f} test"
                          for h, n in widths.items())
              + f" → {list(chosen)}, whose test accuracy over {len(chosen_rows)} seeds is "
              f"{mean(chosen_scores, 'accuracy'):.4f} ± {sd(chosen_scores, 'accuracy'):.4f} and nDCG@20 "
              f"{mean(chosen_scores, 'ndcg@20'):.4f} ± {sd(chosen_scores, 'ndcg@20'):.4f} "
              f"({chosen_margin * 100:+.2f} pt over the best GBDT, "
              f"{mean(chosen_scores, 'accuracy') / teacher['accuracy']:.1%} of the teacher's accuracy, "
              f"{mean(chosen_scores, 'ndcg@20') / teacher['ndcg@20']:.1%} of its nDCG@20). "
              f"Separate towers (the {list(chosen)} MLP, seed {SEEDS[0]}, on a query tower distilled into the tuned "
              f"tower's space; the shared tower's valid / test accuracy {shared['valid_accuracy']:.4f} / "
              f"{shared['accuracy']:.4f}): "
              + ", ".join(f"{layers} layers (valid 1 − cosine to the tower {query_towers[layers]['best']['valid_loss']:.4f}"
                          f", from {query_towers[layers]['start_valid_loss']:.4f} untrained) "
                          f"{scores[query_rows[layers]]['valid_accuracy']:.4f} / {scores[query_rows[layers]]['accuracy']:.4f}"
                          f", nDCG@20 {scores[query_rows[layers]]['ndcg@20']:.4f}" for layers in QUERY_LAYERS)
              + (f" → {query_choice} layers, the fewest within {QUERY_TOLERANCE} valid accuracy of the shared tower"
                 if query_choice else f" → none within {QUERY_TOLERANCE} valid accuracy of the shared tower")
              + (f"; at the serving width {list(source.student.hidden)} on it: valid / test accuracy "
                 f"{scores[serving_row]['valid_accuracy']:.4f} / {scores[serving_row]['accuracy']:.4f}, nDCG@20 "
                 f"{scores[serving_row]['ndcg@20']:.4f} (the student benchmarks/results/serving-query-tower.md serves)"
                 if serving_row else "")
              + f". Shared or separate weights (the same budget; separate: a query tower of its own, tuned in "
              f"{separate['seconds'] / 60:.0f} min, best valid listwise KL {separate['best']['valid_loss']:.4f} vs the "
              f"shared {tuned['best']['valid_loss']:.4f}): the {list(chosen)} MLP (seed {SEEDS[0]}) reaches valid / "
              f"test accuracy {scores[separate_row]['valid_accuracy']:.4f} / {scores[separate_row]['accuracy']:.4f}, "
              f"nDCG@20 {scores[separate_row]['ndcg@20']:.4f}, against the shared towers' "
              f"{shared['valid_accuracy']:.4f} / {shared['accuracy']:.4f}, {shared['ndcg@20']:.4f} → "
              f"{'separate' if scores[separate_row]['valid_accuracy'] > shared['valid_accuracy'] else 'shared'} "
              "on valid. One pool (~10×), one tower budget: not yet the issue's whole study (1× and 100×, "
              "multi-channel pools).")
    return record("towers", sys.modules[__name__], answer, [
        table(f"Students on the bench-quality pool and labels ({config.eval.split} split; valid accuracy as early "
              "stopping saw it)",
              ["model", "valid accuracy", "test accuracy", "test nDCG@20", "accuracy / teacher",
               "nDCG@20 / teacher"], rows),
        table("Tower training (valid listwise KL on human grades, per epoch)", ["epoch", "valid listwise KL"],
              [["frozen (before tuning)", frozen_tower["valid_loss"]]] + [[h["epoch"], h["valid_loss"]] for h in history]),
    ], {"Tower valid loss and the students against the teacher": figure_png(fig)}, command, steps,
        towers_settings=TOWERS, seeds=list(SEEDS),
        gbdt_margin_pt={kind: margin[kind] * 100 for kind in kinds},
        best_gbdt={kind: best_gbdt[kind][0] for kind in kinds},
        width_on_tuned_towers={"chosen_on_valid": list(chosen), "chosen_seeds": {
            m: {"mean": mean(chosen_scores, m), "sd": sd(chosen_scores, m)} for m in ("accuracy", "ndcg@20")},
            "chosen_gbdt_margin_pt": chosen_margin * 100, "tried": {
            "x".join(map(str, hidden)): {m: scores[name][m] for m in ("valid_accuracy", "accuracy", "ndcg@20")}
            for hidden, name in widths.items()}},
        shared_or_separate={"chosen_on_valid": "separate" if scores[separate_row]["valid_accuracy"]
                            > shared["valid_accuracy"] else "shared",
                            "separate": {**{m: scores[separate_row][m] for m in ("valid_accuracy", "accuracy",
                                                                                 "ndcg@20")},
                                         "tower_valid_loss": separate["best"]["valid_loss"],
                                         "minutes": separate["seconds"] / 60},
                            "shared": {**{m: shared[m] for m in ("valid_accuracy", "accuracy", "ndcg@20")},
                                       "tower_valid_loss": tuned["best"]["valid_loss"]}},
        separate_query_tower={"settings": QUERY_TOWER, "tolerance": QUERY_TOLERANCE, "chosen_layers": query_choice,
                              "serving_width": None if serving_row is None else {
                                  "hidden": list(source.student.hidden), "student": str(models[serving_row]),
                                  **{m: scores[serving_row][m] for m in ("valid_accuracy", "accuracy", "ndcg@20")}},
                              "shared": {m: shared[m] for m in ("valid_accuracy", "accuracy", "ndcg@20")},
                              "tried": {str(layers): {
                                  **{m: scores[query_rows[layers]][m] for m in ("valid_accuracy", "accuracy", "ndcg@20")},
                                  "valid_cosine_loss": query_towers[layers]["best"]["valid_loss"],
                                  "untrained_valid_cosine_loss": query_towers[layers]["start_valid_loss"],
                                  "training_texts": query_towers[layers]["training_texts"],
                                  "minutes": query_towers[layers]["seconds"] / 60} for layers in QUERY_LAYERS}})
