"""Tuned towers on Home Depot, end to end against two stages: the issue's two recipes for the student's towers,
on the same pool, labels, tower budget and MLP.

- Two stages (relevance.student.towers, ``objective: listwise_kl``): the towers on a listwise KL to the teacher's
  expected grades within each query's candidates, then the MLP on the tuned vectors. The bench-quality-minilm run
  tunes exactly these (its towers step, the towers study's budget): they are reused when their settings match.
- End to end (``objective: end_to_end``): the towers and the student's MLP together, on the student's own loss (the
  KL to the teacher's distribution of each pair) through the features it serves on, the same budget of query
  groups. Two students come of it: the MLP trained with the towers, and an MLP trained again on the end-to-end
  towers as on the two-stage ones (the full distillation pass over the pool, which the joint budget does not make).

Every MLP is the run's width, with 3 seeds on each recipe's towers (tuned once); the choice is made on the mean valid
accuracy, as early stopping saw it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

TITLE = "Tuned towers: end to end (towers and MLP together) vs two stages (towers, then the MLP)"
QUESTION = ("Trained on the same pool, labels and tower budget, which recipe gives the better student: the towers "
            "and the MLP together on the student's KL to the teacher, or the towers first (listwise KL) and the MLP "
            "on them?")
SEEDS = (0, 1, 2)  # the MLP's, on each recipe's towers (tuned once, on the towers study's budget)


def run(steps, args, command: str) -> dict:
    from benchmarks.studies import figure_png, models_key, record, student_settings, table
    from benchmarks.studies.towers import TOWERS
    from relevance.chain import Chain
    from relevance.common.files import read_manifest
    from relevance.config import load_config
    from relevance.evaluation.evaluate import evaluate_models
    from relevance.labels.labelling import label_chunks, pool_fingerprint
    from relevance.student.distillation import train_students
    from relevance.student.end_to_end import RECIPE, end_to_end_student
    from relevance.student.featurizer import build_featurizer, featurizer_settings
    from relevance.models.backbones import resolve_backbone
    from relevance.student.towers import TOWER_MANIFEST

    source = load_config(args.config)
    chain = Chain(source)
    dataset = chain.dataset()
    version = read_manifest(chain.teacher_dir, "teacher")["teacher_version"]
    config = source.model_copy(deep=True)
    config.student = source.student.without_encoder_steps()  # the study names every encoder itself
    config.student.towers = config.student.towers.model_copy(update={**TOWERS, "objective": "listwise_kl"})
    towers_settings = config.student.towers.model_dump(exclude={"enabled", "shared", "objective",
                                                                "checkpoint_every_batches"})
    inputs = {"teacher": version, "pool": pool_fingerprint(chain.pool_path), "encoder": source.student.encoder,
              "max_length": source.student.encoder_max_length, "towers": towers_settings,
              "student": student_settings(config.student)}

    def tuned_with(objective: str, out: Path) -> dict:
        run_config = config.model_copy(deep=True)
        run_config.student.towers = config.student.towers.model_copy(update={"objective": objective})
        started = time.perf_counter()
        Chain(run_config).towers(dataset, out)  # resumes from its checkpoint when killed
        manifest = json.loads((out / TOWER_MANIFEST).read_text())
        return {"seconds": time.perf_counter() - started, "best": manifest["best"], "history": manifest["history"],
                "base_valid_loss": manifest["base_valid_loss"],
                "valid_listwise_kl": manifest.get("valid_listwise_kl", manifest["best"]["valid_loss"])}

    # Two stages: the run's own towers when the run tuned them with this budget, from this encoder, after its labels
    # were last written (the run's steps retune them when the labels change).
    run_towers = chain.towers_dir / TOWER_MANIFEST
    saved = json.loads(run_towers.read_text()) if run_towers.exists() else {}
    labels_written = max((p.stat().st_mtime for p in chain.labels_dir.glob("*.parquet")), default=float("inf"))
    if (saved.get("objective", "listwise_kl") == "listwise_kl" and saved.get("base") == source.student.encoder
            and saved.get("shared")
            and saved.get("max_length") == source.student.encoder_max_length
            and run_towers.stat().st_mtime > labels_written
            and {k: v for k, v in saved.get("config", {}).items() if k in towers_settings} == towers_settings):
        two_stage_dir = chain.towers_dir
        two_stage = {"seconds": None, "best": saved["best"], "history": saved["history"],
                     "base_valid_loss": saved["base_valid_loss"], "valid_listwise_kl": saved["best"]["valid_loss"],
                     "from": "the bench-quality-minilm run's towers step"}
    else:
        two_stage_dir = steps.directory("two-stage towers", inputs) / "model"
        two_stage = steps("two-stage towers", inputs, lambda: tuned_with("listwise_kl", two_stage_dir))
    # The recipe's version keys its towers (and the students on them): a change to how it trains trains again.
    e2e_inputs = {**inputs, "recipe": RECIPE}
    end_to_end_dir = steps.directory("end-to-end towers", e2e_inputs) / "model"
    end_to_end = steps("end-to-end towers", e2e_inputs, lambda: tuned_with("end_to_end", end_to_end_dir))
    e2e_key = json.loads((end_to_end_dir / TOWER_MANIFEST).read_text())["key"]

    def on(towers: Path):
        tuned = config.model_copy(deep=True)
        tuned.student.encoder = str(towers.resolve())
        return tuned

    students = steps.directory("students", inputs)
    labels = label_chunks(chain.labels_dir, dataset.num_grades, pool_path=chain.pool_path)

    def mlp(out: Path, run_config) -> Path:
        """The run's MLP (width, seed) distilled out of core on ``run_config``'s encoder (unless it is there: then
        it must have been trained on that encoder, not on towers the study read before)."""
        if (out / "manifest.json").exists():
            trained_on, wanted = read_manifest(out, "student")["encoder"], run_config.student.encoder
            if Path(resolve_backbone(trained_on)).resolve() != Path(resolve_backbone(wanted)).resolve():
                raise RuntimeError(f"{out} was trained on {trained_on}, not {wanted}: delete it")
        else:
            featurizer = build_featurizer(dataset.items, featurizer_settings(run_config), chain.embeddings_dir)
            train_students(run_config, dataset, chain.teacher_dir, labels, {"student": out}, featurizer)
        return out

    from benchmarks.studies.towers import _frozen_run_student, _same_settings

    # The frozen encoder's MLP: the run's own row when its settings are these (the towers study reuses it too).
    frozen = (_frozen_run_student(chain) if _same_settings(chain, config)
              else mlp(students / "frozen", config))
    frozen_name = f"frozen towers, MLP, seed {config.student.seed}"
    models = {"teacher": chain.teacher_dir, frozen_name: frozen}
    recipes = {"two stages: towers, then the MLP": ("two-stage", two_stage_dir),
               "end-to-end towers, MLP trained again": (f"end-to-end-retrained-{e2e_key}", end_to_end_dir)}
    rows_of: dict[str, list[str]] = {}
    for recipe, (folder, towers) in recipes.items():  # the towers tuned once; the MLP's seeds give the spread
        for seed in SEEDS:
            seeded = on(towers)
            seeded.student.seed = seed
            name = f"{recipe}, seed {seed}"
            models[name] = mlp(students / (folder if seed == config.student.seed else f"{folder}-seed-{seed}"), seeded)
            rows_of.setdefault(recipe, []).append(name)
    joint = students / f"end-to-end-{e2e_key}"
    if not (joint / "manifest.json").exists():
        run_config = on(end_to_end_dir)
        featurizer = build_featurizer(dataset.items, featurizer_settings(run_config), chain.embeddings_dir)
        end_to_end_student(run_config, dataset, end_to_end_dir, featurizer, joint, version)
    joint_name = "end to end: the MLP trained with its towers (one run: its seed is the towers')"
    models[joint_name] = joint
    rows_of["end to end: the MLP trained with its towers"] = [joint_name]

    def evaluate() -> dict:
        report = evaluate_models(config, dataset, models, students / "report.json", chain.embeddings_dir)
        scores = {name: {m: report["models"][name]["overall"][m] for m in ("accuracy", "ndcg@20")}
                  for name in models}
        for name, directory in models.items():
            if name != "teacher":
                best = read_manifest(directory, "student")["metrics"]["best"]
                scores[name]["valid_accuracy"] = best["valid_accuracy"]
        return scores

    scores = steps("evaluate", {**inputs, "models": models_key(models)}, evaluate)
    teacher = scores["teacher"]
    metrics = ("valid_accuracy", "accuracy", "ndcg@20")
    stats = {recipe: {m: (float(np.mean([scores[n][m] for n in names])),
                          float(np.std([scores[n][m] for n in names], ddof=1)) if len(names) > 1 else 0.0)
                      for m in metrics} for recipe, names in rows_of.items()}
    chosen = max(stats, key=lambda recipe: stats[recipe]["valid_accuracy"][0])
    rows = [[name, scores[name].get("valid_accuracy", ""), scores[name]["accuracy"], scores[name]["ndcg@20"],
             scores[name]["accuracy"] / teacher["accuracy"], scores[name]["ndcg@20"] / teacher["ndcg@20"]]
            for name in models]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    kl = {"frozen": two_stage["base_valid_loss"], "two stages": two_stage["valid_listwise_kl"],
          "end to end": end_to_end["valid_listwise_kl"]}
    axes[0].bar(range(len(kl)), list(kl.values()), color=["tab:gray", "tab:blue", "tab:purple"])
    axes[0].set_xticks(range(len(kl)), list(kl), fontsize=8)
    axes[0].set_ylabel("the towers' valid listwise KL (lower: ranks as judged)")
    short = {"two stages: towers, then the MLP": "two stages", "end-to-end towers, MLP trained again":
             "e2e towers,\nMLP again", "end to end: the MLP trained with its towers": "end to end\n(1 run)"}
    frozen_scores = scores[frozen_name]
    for ax, metric in zip(axes[1:], ("accuracy", "ndcg@20")):
        means = [stats[recipe][metric][0] for recipe in stats]
        ax.bar(range(len(stats)), means, yerr=[stats[recipe][metric][1] for recipe in stats], capsize=6,
               color=["tab:orange" if recipe == chosen else "tab:blue" for recipe in stats])
        ax.axhline(teacher[metric], color="tab:green", ls="--", label="teacher")
        ax.axhline(frozen_scores[metric], color="tab:gray", ls=":", label=f"frozen towers (seed {config.student.seed})")
        ax.set_xticks(range(len(stats)), [short[recipe] for recipe in stats], fontsize=8)
        ax.set_ylim(min(means + [teacher[metric], frozen_scores[metric]]) - 0.01,
                    max(means + [teacher[metric]]) + 0.005)
        ax.set_ylabel(f"test {metric} (mean ± std over the MLP's seeds)")
        ax.legend(fontsize=8)
    fig.suptitle(f"chosen on valid (orange): {chosen}", fontsize=9)
    fig.tight_layout()

    def minutes(result: dict) -> str:
        return "reused" if result.get("seconds") is None else f"{result['seconds'] / 60:.0f} min"

    def shown(recipe: str) -> str:
        parts = [f"{stats[recipe][m][0]:.4f}" + (f" ± {stats[recipe][m][1]:.4f}" if len(rows_of[recipe]) > 1 else "")
                 for m in metrics]
        return f"{recipe} {parts[0]} / {parts[1]}, {parts[2]}"

    runner_up = max((r for r in stats if r != chosen), key=lambda recipe: stats[recipe]["valid_accuracy"][0])
    margin = stats[chosen]["valid_accuracy"][0] - stats[runner_up]["valid_accuracy"][0]
    noise = max(stats[chosen]["valid_accuracy"][1], stats[runner_up]["valid_accuracy"][1])
    answer = (f"The same tower budget ({TOWERS['epochs']} epochs of {TOWERS['max_queries_per_epoch']} queries × up to "
              f"{TOWERS['candidates_per_query']} candidates) and the run's MLP {list(config.student.hidden)}, "
              f"{len(SEEDS)} seeds of it on each recipe's towers. Two stages ({minutes(two_stage)}): the towers' valid "
              f"listwise KL {two_stage['valid_listwise_kl']:.4f} (frozen {two_stage['base_valid_loss']:.4f}). End to "
              f"end ({minutes(end_to_end)}): best valid cross-entropy {end_to_end['best']['valid_loss']:.4f} at epoch "
              f"{end_to_end['best']['epoch']}; its towers' valid listwise KL {end_to_end['valid_listwise_kl']:.4f}. "
              "Valid / test accuracy, test nDCG@20 (mean ± std): "
              + "; ".join(shown(recipe) for recipe in stats)
              + f"; the frozen towers (seed {config.student.seed}) {frozen_scores['valid_accuracy']:.4f} / "
              f"{frozen_scores['accuracy']:.4f}"
              f", {frozen_scores['ndcg@20']:.4f}; the teacher {teacher['accuracy']:.4f}, {teacher['ndcg@20']:.4f}. "
              f"Chosen on valid: {chosen} (valid accuracy {margin * 100:+.2f} pt over {runner_up}, "
              f"{'more' if margin > 2 * noise else 'less'} than two seed standard deviations, "
              f"{2 * noise * 100:.2f} pt; {stats[chosen]['accuracy'][0] / teacher['accuracy']:.1%} of the teacher's "
              f"accuracy, {stats[chosen]['ndcg@20'][0] / teacher['ndcg@20']:.1%} of its nDCG@20). One pool (~10×).")
    return record("end_to_end", sys.modules[__name__], answer, [
        table(f"Students on the bench-quality pool and labels ({config.eval.split} split; valid accuracy as early "
              "stopping saw it, the end-to-end MLP's measured again on the featurizer's vectors)",
              ["model", "valid accuracy", "test accuracy", "test nDCG@20", "accuracy / teacher",
               "nDCG@20 / teacher"], rows),
        table("Tower training per epoch (each recipe's own valid loss: listwise KL on judged lists; end to end, the "
              "MLP's cross-entropy on human grades)", ["recipe", "epoch", "valid loss", "valid accuracy"],
              [["two stages", h["epoch"], h["valid_loss"], ""] for h in two_stage["history"]]
              + [["end to end", h["epoch"], h["valid_loss"], h.get("valid_accuracy", "")]
                 for h in end_to_end["history"]]),
    ], {"End to end vs two stages": figure_png(fig)}, command, steps, towers_settings=TOWERS,
        chosen_on_valid=chosen, scores=scores, seeds=list(SEEDS),
        recipes={recipe: {m: {"mean": v[0], "sd": v[1]} for m, v in stats[recipe].items()} for recipe in stats},
        towers={"two_stage": two_stage, "end_to_end": end_to_end})

