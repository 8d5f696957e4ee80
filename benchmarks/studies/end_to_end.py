"""Tuned towers on Home Depot, end to end against two stages: the issue's two recipes for the student's towers,
on the same pool, labels, tower budget and MLP.

- Two stages (relevance.student.towers, ``objective: listwise_kl``): the towers on a listwise KL to the teacher's
  expected grades within each query's candidates, then the MLP on the tuned vectors. The bench-quality-minilm run
  tunes exactly these (its towers step, the towers study's budget): they are reused when their settings match.
- End to end (``objective: end_to_end``): the towers and the student's MLP together, on the student's own loss (the
  KL to the teacher's distribution of each pair) through the features it serves on, the same budget of query
  groups. Two students come of it: the MLP trained with the towers, and an MLP trained again on the end-to-end
  towers as on the two-stage ones (the full distillation pass over the pool, which the joint budget does not make).

Every MLP is the run's width and seed; the choice is made on valid accuracy, as early stopping saw it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

TITLE = "Tuned towers: end to end (towers and MLP together) vs two stages (towers, then the MLP)"
QUESTION = ("Trained on the same pool, labels and tower budget, which recipe gives the better student: the towers "
            "and the MLP together on the student's KL to the teacher, or the towers first (listwise KL) and the MLP "
            "on them?")


def run(steps, args, command: str) -> dict:
    from benchmarks.studies import figure_png, record, student_settings, table
    from benchmarks.studies.towers import TOWERS
    from relevance.chain import Chain
    from relevance.common.files import read_manifest
    from relevance.config import load_config
    from relevance.evaluation.evaluate import evaluate_models
    from relevance.labels.labelling import label_chunks, pool_fingerprint
    from relevance.student.distillation import train_students
    from relevance.student.end_to_end import end_to_end_student
    from relevance.student.featurizer import build_featurizer, featurizer_settings
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

    # Two stages: the run's own towers when the run tuned them with this budget from this encoder.
    run_towers = chain.towers_dir / TOWER_MANIFEST
    saved = json.loads(run_towers.read_text()) if run_towers.exists() else {}
    if (saved.get("objective") == "listwise_kl" and saved.get("base") == source.student.encoder and saved.get("shared")
            and {k: v for k, v in saved.get("config", {}).items() if k in towers_settings} == towers_settings):
        two_stage_dir = chain.towers_dir
        two_stage = {"seconds": None, "best": saved["best"], "history": saved["history"],
                     "base_valid_loss": saved["base_valid_loss"], "valid_listwise_kl": saved["best"]["valid_loss"],
                     "from": "the bench-quality-minilm run's towers step"}
    else:
        two_stage_dir = steps.directory("two-stage towers", inputs) / "model"
        two_stage = steps("two-stage towers", inputs, lambda: tuned_with("listwise_kl", two_stage_dir))
    end_to_end_dir = steps.directory("end-to-end towers", inputs) / "model"
    end_to_end = steps("end-to-end towers", inputs, lambda: tuned_with("end_to_end", end_to_end_dir))

    def on(towers: Path):
        tuned = config.model_copy(deep=True)
        tuned.student.encoder = str(towers.resolve())
        return tuned

    students = steps.directory("students", inputs)
    labels = label_chunks(chain.labels_dir, dataset.num_grades, pool_path=chain.pool_path)

    def mlp(out: Path, run_config) -> Path:
        """The run's MLP (width, seed) distilled out of core on ``run_config``'s encoder (unless it is there)."""
        if not (out / "manifest.json").exists():
            featurizer = build_featurizer(dataset.items, featurizer_settings(run_config), chain.embeddings_dir)
            train_students(run_config, dataset, chain.teacher_dir, labels, {"student": out}, featurizer)
        return out

    from benchmarks.studies.towers import _frozen_run_student, _same_settings

    # The frozen encoder's MLP: the run's own row when its settings are these (the towers study reuses it too).
    frozen = (_frozen_run_student(chain) if _same_settings(chain, config)
              else mlp(students / "frozen", config))
    models = {"teacher": chain.teacher_dir, "frozen towers, MLP": frozen,
              "two stages: towers, then the MLP": mlp(students / "two-stage", on(two_stage_dir)),
              "end-to-end towers, MLP trained again": mlp(students / "end-to-end-retrained", on(end_to_end_dir))}
    joint = students / "end-to-end"
    if not (joint / "manifest.json").exists():
        run_config = on(end_to_end_dir)
        featurizer = build_featurizer(dataset.items, featurizer_settings(run_config), chain.embeddings_dir)
        end_to_end_student(run_config, dataset, end_to_end_dir, featurizer, joint, version)
    models["end to end: the MLP trained with its towers"] = joint

    def evaluate() -> dict:
        report = evaluate_models(config, dataset, models, students / "report.json", chain.embeddings_dir)
        scores = {name: {m: report["models"][name]["overall"][m] for m in ("accuracy", "ndcg@20")}
                  for name in models}
        for name, directory in models.items():
            if name != "teacher":
                best = read_manifest(directory, "student")["metrics"]["best"]
                scores[name]["valid_accuracy"] = best["valid_accuracy"]
        return scores

    def content(directory: Path) -> str:
        manifest = json.loads((Path(directory) / "manifest.json").read_text())
        return str(manifest.get("student_version") or manifest.get("teacher_version"))

    scores = steps("evaluate", {**inputs, "models": {k: [str(v), content(v)] for k, v in sorted(models.items())}},
                   evaluate)
    teacher = scores["teacher"]
    candidates = [name for name in models if name not in ("teacher", "frozen towers, MLP")]
    chosen = max(candidates, key=lambda name: scores[name]["valid_accuracy"])
    rows = [[name, scores[name].get("valid_accuracy", ""), scores[name]["accuracy"], scores[name]["ndcg@20"],
             scores[name]["accuracy"] / teacher["accuracy"], scores[name]["ndcg@20"] / teacher["ndcg@20"]]
            for name in models]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for label, result in (("two stages (listwise KL)", two_stage), ("end to end (the student's KL)", end_to_end)):
        history = result["history"]
        axes[0].plot([h["epoch"] for h in history], [h["valid_loss"] for h in history], "o-", label=label)
    axes[0].set_xlabel("tower epoch")
    axes[0].set_ylabel("valid loss of each recipe's own early stopping")
    axes[0].legend(fontsize=8)
    names = [name for name in models if name != "teacher"]
    short = ["frozen", "two stages", "e2e towers,\nMLP again", "end to end"]
    for ax, metric in zip(axes[1:], ("accuracy", "ndcg@20")):
        values = [scores[name][metric] for name in names]
        colors = ["tab:gray" if name == "frozen towers, MLP" else "tab:orange" if name == chosen else "tab:blue"
                  for name in names]
        ax.bar(range(len(names)), values, color=colors)
        ax.axhline(teacher[metric], color="tab:green", ls="--", label="teacher")
        ax.set_xticks(range(len(names)), short, fontsize=8)
        ax.set_ylim(min(values + [teacher[metric]]) - 0.01, max(values + [teacher[metric]]) + 0.005)
        ax.set_ylabel(f"test {metric}")
        ax.legend(fontsize=8)
    fig.suptitle(f"chosen on valid (orange): {chosen}", fontsize=9)
    fig.tight_layout()

    def minutes(result: dict) -> str:
        return "reused" if result.get("seconds") is None else f"{result['seconds'] / 60:.0f} min"

    answer = (f"The same tower budget ({TOWERS['epochs']} epochs of {TOWERS['max_queries_per_epoch']} queries × up to "
              f"{TOWERS['candidates_per_query']} candidates) and the run's MLP {list(config.student.hidden)} "
              f"(seed {config.student.seed}). Two stages ({minutes(two_stage)}): valid listwise KL "
              f"{two_stage['valid_listwise_kl']:.4f} (frozen {two_stage['base_valid_loss']:.4f}). End to end "
              f"({minutes(end_to_end)}): best valid cross-entropy {end_to_end['best']['valid_loss']:.4f} at epoch "
              f"{end_to_end['best']['epoch']}; its towers' valid listwise KL {end_to_end['valid_listwise_kl']:.4f}. "
              "Valid / test accuracy, test nDCG@20: "
              + "; ".join(f"{name} {scores[name]['valid_accuracy']:.4f} / {scores[name]['accuracy']:.4f}, "
                          f"{scores[name]['ndcg@20']:.4f}" for name in names)
              + f"; the teacher {teacher['accuracy']:.4f}, {teacher['ndcg@20']:.4f}. Chosen on valid: {chosen} "
              f"({scores[chosen]['accuracy'] / teacher['accuracy']:.1%} of the teacher's accuracy, "
              f"{scores[chosen]['ndcg@20'] / teacher['ndcg@20']:.1%} of its nDCG@20). One seed, one pool (~10×).")
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
        chosen_on_valid=chosen, scores=scores,
        towers={"two_stage": two_stage, "end_to_end": end_to_end})

