"""Teacher variants on Home Depot, against the GBDT baselines a search team would build first.

Every variant is trained on the train split and tuned on valid only; test is read once at the end. Variants:

- the bench-quality teacher (MiniLM-L6, fully fine-tuned, cross-entropy + expected-grade MSE);
- the same with soft targets from the raters (the mean rating, two-hot on the grade axis);
- the same recipe with other seeds, and the seeds' ensemble (N× the labelling cost);
- a larger backbone, all-mpnet-base-v2 (110M), when it has been fetched (`relevance fetch-backbone mpnet-base`);
- a multi-teacher labeller: each cross-encoder with the multiclass GBDT, log-linear weights fitted on valid.

Each model is reported raw and calibrated (temperature and vector scaling fitted on valid), with top-label and
K-class ECE. The GBDTs (multiclass, LambdaMART, distilled from the teacher's pool labels) use the student's own
features. A last step distils two students from the same teacher labels, raw and temperature-calibrated, to
measure what calibrated soft labels do to the student.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

TITLE = "Teacher variants: the GBDT baselines, calibration, soft targets, ensembles and a larger backbone"
QUESTION = ("What makes the teacher worth distilling on Home Depot: does it beat gradient-boosted trees on the "
            "student's own features, and how calibrated are its soft labels?")
SEEDS = (1, 2)
METRICS = ("accuracy", "ndcg@20", "rmse_raw", "ece_top", "ece_classwise")


def _variants(source) -> dict[str, dict]:
    """Teacher settings per trained variant (overrides of the bench-quality run's teacher section)."""
    from relevance.models.backbones import fetched_path

    variants = {"minilm soft targets": {"targets": "raw_scores"}}
    variants.update({f"minilm seed {s}": {"seed": s} for s in SEEDS})
    if fetched_path("mpnet-base") is not None:
        variants = {"mpnet-base": {"backbone": "mpnet-base", "learning_rate": 3e-5}, **variants}
    return variants


def run(steps, args, command: str) -> dict:

    from benchmarks.studies import record, student_settings, table
    from relevance.common.files import read_manifest
    from relevance.common.runtime import set_threads
    from relevance.config import load_config
    from relevance.data.schema import Dataset
    from relevance.evaluation.evaluate import report_block
    from relevance.labels.labelling import read_labels
    from relevance.models.calibration import fit_calibrator, plot_reliability
    from relevance.student.distillation import distillation_targets
    from relevance.student.featurizer import build_featurizer, featurizer_settings
    from relevance.student.gbdt import GBDT, train_baselines
    from relevance.teacher.ensemble import combine, fit_weights
    from relevance.teacher.model import Teacher, score_items
    from relevance.teacher.train import fit_teacher

    set_threads()
    source = load_config(args.config)
    root = Path(source.workdir)
    dataset = Dataset.load(root / "data")
    splits = {name: dataset.split(name) for name in ("valid", "test")}
    base_teacher = root / "teacher"
    base_version = read_manifest(base_teacher, "teacher")["teacher_version"]

    def probabilities(name: str, directory: Path, inputs: dict) -> dict:
        """A teacher's raw probabilities on valid and test, and its scoring speed (cached)."""
        def compute() -> dict:
            teacher = Teacher.load(directory)
            out, texts = {}, teacher.item_texts(dataset.items)
            for split, frame in splits.items():
                started = time.perf_counter()
                probs = score_items(teacher, frame, dataset.query_text, texts, source.labeling.batch_size,
                                    source.labeling.precision, calibrated=False)
                out[split] = probs.tolist()
                out[f"{split}_pairs_per_s"] = len(frame) / (time.perf_counter() - started)
            out["train_pairs_per_s"] = teacher.manifest["metrics"].get("train_pairs_per_s")
            return out

        result = steps(f"probs-{name}", inputs, compute)
        return {**result, **{s: np.asarray(result[s], dtype=np.float32) for s in splits}}

    models: dict[str, dict] = {}  # name → {"valid", "test" probabilities, costs}
    models["minilm (bench-quality)"] = probabilities("minilm", base_teacher, {"teacher": base_version})
    for name, overrides in _variants(source).items():
        config = source.model_copy(deep=True)
        config.teacher = config.teacher.model_copy(update={**overrides, "calibration": "none"})
        # How the teacher is spread over processes does not change what it learns (relevance.chain excludes it
        # from the teacher's version the same way).
        inputs = {"teacher": config.teacher.model_dump(exclude={"distributed"}), "text": config.text.model_dump(),
                  "data": base_version}
        out = steps.directory(f"teacher-{name.replace(' ', '-')}", inputs)
        if not (out / "manifest.json").exists():
            print(f"   training {name}", flush=True)
            fit_teacher(config, dataset, out)
        models[name] = probabilities(name.replace(" ", "-"), out, {**inputs, "version": read_manifest(out)[
            "teacher_version"]})

    # The GBDT baselines on the features the config names (the frozen encoder: the run's tuned towers are its own step).
    featurizer = build_featurizer(dataset.items, featurizer_settings(source), root / "embeddings")
    gbdt_dirs = {name: steps.directory(name, {"gbdt": source.gbdt.model_dump(), "data": base_version})
                 for name in ("gbdt_multiclass", "gbdt_lambdamart", "gbdt_distilled")}
    if not all((p / "manifest.json").exists() for p in gbdt_dirs.values()):
        labels = read_labels(root / "labels", dataset.num_grades, pool_path=root / "pool.parquet")
        base_config = source.model_copy(deep=True)
        base_config.teacher = base_config.teacher.model_copy(update={"calibration": "none"})
        targets = distillation_targets(base_config, dataset, base_teacher, labels)
        started = time.perf_counter()
        train_baselines(source, dataset, featurizer, gbdt_dirs, targets, log=print)
        print(f"   GBDTs trained in {time.perf_counter() - started:.0f} s", flush=True)
    for name, directory in gbdt_dirs.items():
        def compute(directory=directory) -> dict:
            model = GBDT.load(directory)
            out = {}
            for split, frame in splits.items():
                x = featurizer.pair_features(frame, dataset.query_text)
                started = time.perf_counter()
                out[split] = model.predict_proba(x, calibrated=False).tolist()
                out[f"{split}_pairs_per_s"] = len(frame) / (time.perf_counter() - started)
            return out

        result = steps(f"probs-{name}", {"gbdt": read_manifest(directory)["gbdt_version"]}, compute)
        models[name] = {**result, **{s: np.asarray(result[s], dtype=np.float32) for s in splits}}

    grades = {split: frame["grade"].to_numpy() for split, frame in splits.items()}
    cross_encoders = [n for n in models if not n.startswith("gbdt")]
    seeds = ["minilm (bench-quality)", *[f"minilm seed {s}" for s in SEEDS]]
    if all(s in models for s in seeds):
        weights = fit_weights([models[s]["valid"] for s in seeds], grades["valid"])
        models[f"minilm × {len(seeds)} seeds"] = {
            split: combine([models[s][split] for s in seeds], weights) for split in splits} | {
            "members": len(seeds), "weights": weights}
    for name in [*cross_encoders, *(n for n in models if "seeds" in n)]:
        pair = [models[name], models["gbdt_multiclass"]]
        weights = fit_weights([m["valid"] for m in pair], grades["valid"])
        models[f"{name} + gbdt"] = {split: combine([m[split] for m in pair], weights) for split in splits} | {
            "weights": weights}

    def evaluate(probs: np.ndarray, split: str) -> dict:
        frame = splits[split].assign(locale="en_US")
        overall = report_block(frame, probs, dataset.info, source.eval)["overall"]
        return {m: overall.get(m) for m in METRICS}

    rows, results = [], {}
    for name, model in models.items():
        calibrators = {method: fit_calibrator(model["valid"], grades["valid"], method)
                       for method in ("temperature", "vector")}
        variants = {"raw": model, **{method: {split: c.apply(model[split]) for split in splits}
                                     for method, c in calibrators.items()}}
        results[name] = {variant: {split: evaluate(v[split], split) for split in splits}
                         for variant, v in variants.items()}
        results[name]["temperature_T"] = calibrators["temperature"].temperature
        label_cost = model.get("test_pairs_per_s") or (
            1 / sum(1 / models[s]["test_pairs_per_s"] for s in seeds) if "seeds" in name else None)
        results[name]["label_pairs_per_s"] = label_cost
        results[name]["train_pairs_per_s"] = model.get("train_pairs_per_s")
        raw, temp = results[name]["raw"], results[name]["temperature"]
        rows.append([name, raw["valid"]["accuracy"], temp["valid"]["accuracy"], raw["test"]["accuracy"],
                     raw["test"]["ndcg@20"], raw["test"]["rmse_raw"], raw["test"]["ece_top"],
                     temp["test"]["ece_top"], raw["test"]["ece_classwise"], temp["test"]["ece_classwise"],
                     results[name]["temperature_T"], label_cost or "–", results[name]["train_pairs_per_s"] or "–"])

    # What calibrated soft labels do to the student: the same pool labels, raw and temperature-calibrated.
    student_effect = steps("calibrated-labels-student", {"teacher": base_version,
                                                         "student": student_settings(source.student)},
                           lambda: _calibrated_label_students(source, dataset, root, featurizer,
                                                              models["minilm (bench-quality)"], grades))

    best_gbdt = max((n for n in results if n.startswith("gbdt")), key=lambda n: results[n]["raw"]["valid"]["accuracy"])
    chosen = max((n for n in results if not n.startswith("gbdt")),
                 key=lambda n: results[n]["temperature"]["valid"]["accuracy"])
    base = results["minilm (bench-quality)"]
    reduction = 1 - base["temperature"]["test"]["ece_top"] / base["raw"]["test"]["ece_top"]

    panels = {"MiniLM teacher (test)": {"raw": (models["minilm (bench-quality)"]["test"], grades["test"]),
                                        "temperature": (calibrators_apply(models["minilm (bench-quality)"],
                                                                          grades, "temperature"), grades["test"])},
              f"{chosen} (test)": {"raw": (models[chosen]["test"], grades["test"]),
                                   "temperature": (calibrators_apply(models[chosen], grades, "temperature"),
                                                   grades["test"])},
              "gbdt_multiclass (test)": {"raw": (models["gbdt_multiclass"]["test"], grades["test"]),
                                         "temperature": (calibrators_apply(models["gbdt_multiclass"], grades,
                                                                           "temperature"), grades["test"])}}
    figure = steps.root / "reliability.png"
    plot_reliability(panels, figure)
    answer = (f"The best GBDT on valid is {best_gbdt} (test accuracy {results[best_gbdt]['raw']['test']['accuracy']:.4f}, "
              f"nDCG@20 {results[best_gbdt]['raw']['test']['ndcg@20']:.4f}); the best labeller on valid is {chosen} "
              f"(test accuracy {results[chosen]['temperature']['test']['accuracy']:.4f}, nDCG@20 "
              f"{results[chosen]['temperature']['test']['ndcg@20']:.4f}). Temperature scaling cuts the MiniLM "
              f"teacher's top-label ECE on test by {reduction:.0%} "
              f"({base['raw']['test']['ece_top']:.4f} → {base['temperature']['test']['ece_top']:.4f}) at the same "
              f"accuracy. Students from raw vs calibrated labels: test accuracy "
              f"{student_effect['raw']['accuracy']:.4f} vs {student_effect['calibrated']['accuracy']:.4f}, nDCG@20 "
              f"{student_effect['raw']['ndcg@20']:.4f} vs {student_effect['calibrated']['ndcg@20']:.4f}.")
    columns = ["model", "valid acc", "valid acc (T)", "test acc", "test nDCG@20", "test rmse_1to3",
               "ECE top", "ECE top (T)", "ECE K-class", "ECE K-class (T)", "T", "label pairs/s", "train pairs/s"]
    return record("teachers", sys.modules[__name__], answer, [
        table("Home Depot, every model tuned on valid; test read once. (T): after temperature scaling fitted on "
              "valid. Ensembles' weights are fitted on valid; an N-member ensemble labels at the members' "
              "combined speed.", columns, rows),
        table("Students distilled from the bench-quality teacher's pool labels, raw vs temperature-calibrated "
              "(test split)", ["labels", "accuracy", "nDCG@20", "rmse_1to3", "ECE top"],
              [[k, v["accuracy"], v["ndcg@20"], v["rmse_raw"], v["ece_top"]] for k, v in student_effect.items()
               if isinstance(v, dict)])],
        {"Reliability diagrams (top-label), raw and temperature-scaled": figure.read_bytes()},
        command, steps, results=results, best_gbdt=best_gbdt, chosen_labeller=chosen,
        student_effect=student_effect, ece_reduction=reduction)


def calibrators_apply(model: dict, grades: dict, method: str) -> np.ndarray:
    from relevance.models.calibration import fit_calibrator

    return fit_calibrator(model["valid"], grades["valid"], method).apply(model["test"])


def _calibrated_label_students(source, dataset, root: Path, featurizer, teacher_probs: dict, grades: dict) -> dict:
    """Two students from the bench-quality teacher's pool labels: as labelled, and temperature-calibrated (exact
    for a softmax model: softmax(z/T) = softmax(log p / T))."""
    from relevance.evaluation.evaluate import report_block
    from relevance.labels.labelling import read_labels
    from relevance.models.calibration import fit_calibrator
    from relevance.student.distillation import distillation_targets
    from relevance.student.model import train_student

    labels = read_labels(root / "labels", dataset.num_grades, pool_path=root / "pool.parquet")
    config = source.model_copy(deep=True)
    config.teacher = config.teacher.model_copy(update={"calibration": "none"})
    pairs, probs = distillation_targets(config, dataset, root / "teacher", labels)
    calibrator = fit_calibrator(teacher_probs["valid"], grades["valid"], "temperature")
    train, valid, test = (dataset.split(s) for s in ("train", "valid", "test"))
    x = featurizer.pair_features(pairs, dataset.query_text)
    human = np.concatenate([np.full(len(pairs) - len(train), -1), train["grade"].to_numpy()])
    valid_x = featurizer.pair_features(valid, dataset.query_text)
    test_x = featurizer.pair_features(test, dataset.query_text)
    out = {"temperature": calibrator.temperature}
    for name, targets in (("raw", probs), ("calibrated", calibrator.apply(probs))):
        model, _ = train_student(x, targets, valid_x, valid["grade"].to_numpy(), dataset.num_grades, source.student,
                                 train_grades=human, log=print)
        import torch

        with torch.no_grad():
            test_p = torch.softmax(model(torch.from_numpy(test_x)), -1).numpy()
        overall = report_block(test.assign(locale="en_US"), test_p, dataset.info, source.eval)["overall"]
        out[name] = {m: overall.get(m) for m in METRICS}
    return out
