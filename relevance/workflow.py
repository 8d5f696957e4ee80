"""The chain, step by step: prepare → teacher → candidates → labels → students → evaluation report.

Each step reads and writes files under the run's workdir, and a step whose output already exists is skipped, so
a rerun after a crash (or after changing only a late step's settings and deleting its output) redoes only what
is missing. The KFP components of the platform wrap these same functions one-to-one.

    workdir/data/            canonical dataset (relevance.data.schema)
    workdir/teacher/         fine-tuned teacher
    workdir/pool.parquet     unlabelled pool: impressions + BM25 candidates, minus judged pairs
    workdir/labels/          teacher soft labels, one parquet per shard
    workdir/student/         distilled student;  workdir/student_human_only/  the human-labels baseline
    workdir/embeddings/      content-addressed embedding cache shared by all steps
    workdir/report.json|md   quality report with confusion matrices
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from relevance.config import RunConfig
from relevance.data import prepare
from relevance.data.schema import Dataset, DataContractError, prob_columns
from relevance.files import sha256_of_frame

console = Console(stderr=True)


def _log(message: str) -> None:
    console.print(f"[cyan]relevance[/] {message}")


def paths(config: RunConfig) -> dict[str, Path]:
    root = Path(config.workdir)
    return {name: root / rel for name, rel in {
        "data": "data", "teacher": "teacher", "pool": "pool.parquet", "labels": "labels",
        "student": "student", "student_human_only": "student_human_only", "embeddings": "embeddings",
        "report": "report.json"}.items()}


STEP_SETTINGS = {  # the config sections each step's output depends on
    "data": ("data",),
    "pool": ("data", "text", "candidates"),
    "teacher": ("data", "text", "teacher"),
    "students": ("data", "text", "candidates", "student"),
}


def _settings_hash(config: RunConfig, step: str) -> str:
    # Only values that differ from their defaults: a new config field (with a default that keeps the old
    # behaviour) then leaves existing runs valid.
    settings = {section: getattr(config, section).model_dump(exclude_defaults=True)
                for section in STEP_SETTINGS[step]}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _reuse(config: RunConfig, step: str, output_exists: bool) -> bool:
    """Whether a step can be skipped: its output exists and was made with the same settings.

    An output made with other settings is an error, not a silent reuse: the user deletes it (or picks a new
    workdir) so that a report never mixes models trained under different configs.
    """
    record = Path(config.workdir) / "steps.json"
    recorded = json.loads(record.read_text()) if record.exists() else {}
    current = _settings_hash(config, step)
    if output_exists and recorded.get(step) not in (None, current):
        sections = ", ".join(STEP_SETTINGS[step])
        raise ValueError(f"{config.workdir}: the {step} output was made with other settings ({sections} changed); "
                         f"delete it to redo the step, or use another workdir")
    if not output_exists or step not in recorded:
        recorded[step] = current
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(recorded, indent=2))
        os.replace(tmp, record)
    return output_exists


def step_prepare(config: RunConfig) -> Dataset:
    out = paths(config)["data"]
    if not _reuse(config, "data", (out / "dataset.json").exists()):
        _log(f"prepare: {config.data.source} → {out}")
        prepare(config.data, out)
    return Dataset.load(out)


def training_data_hash(dataset: Dataset) -> str:
    return sha256_of_frame(dataset.judgments[dataset.judgments["split"].isin(["train", "valid"])],
                           ["query_id", "item_id", "grade", "split"])


def step_teacher(config: RunConfig, dataset: Dataset) -> Path:
    out = paths(config)["teacher"]
    if _reuse(config, "teacher", (out / "manifest.json").exists()):
        return out
    return fit_teacher(config, dataset, out)


def fit_teacher(config: RunConfig, dataset: Dataset, out: Path) -> Path:
    """Fine-tune the teacher on the train split (early stopping on valid) and save it to ``out``."""
    from relevance.teacher import train_teacher

    teacher = train_teacher(dataset.split("train"), dataset.split("valid"),
                            dataset.queries.set_index("query_id")["query"], dataset.items, dataset.num_grades,
                            config.teacher, config.text, data_hash=training_data_hash(dataset), log=_log)
    teacher.manifest["dataset"] = dataset.info.__dict__
    teacher.save(out)
    _log(f"teacher: saved {teacher.version} → {out}")
    return out


def step_pool(config: RunConfig, dataset: Dataset) -> Path:
    out = paths(config)["pool"]
    if _reuse(config, "pool", out.exists()):
        return out
    return build_pool(config, dataset, out)


def build_pool(config: RunConfig, dataset: Dataset, out: Path) -> Path:
    """Impressions plus BM25 top-K for every query without judgments, deduplicated against judged pairs."""
    from relevance.candidates import BM25Index, bm25_candidates
    from relevance.runtime import progress_bar

    judged = dataset.judgments[["query_id", "item_id"]]
    candidate_queries = ~dataset.queries["query_id"].isin(judged["query_id"])
    if config.candidates.include_train_queries:  # e.g. ESCI and WANDS, where every query is judged
        candidate_queries |= dataset.queries["query_id"].isin(dataset.split("train")["query_id"])
    unjudged = dataset.queries[candidate_queries]
    parts = []
    if config.candidates.include_impressions and dataset.impressions is not None:
        parts.append(dataset.impressions[["query_id", "item_id"]])
    if config.candidates.top_k > 0 and len(unjudged):
        index = BM25Index.for_items(dataset.items, config.text, config.candidates.k1, config.candidates.b)
        with progress_bar() as bar:
            task = bar.add_task(f"BM25 top-{config.candidates.top_k}", total=len(unjudged))
            candidates = bm25_candidates(index, unjudged, config.candidates.top_k, exclude=judged,
                                         on_query=lambda: bar.update(task, advance=1))
        parts.append(candidates[["query_id", "item_id"]])
    if not parts:
        raise DataContractError("the unlabelled pool is empty: no impressions and no unjudged queries for BM25")
    pool = pd.concat(parts, ignore_index=True).drop_duplicates(["query_id", "item_id"])
    judged_keys = pd.MultiIndex.from_frame(judged)
    pool = pool[~pd.MultiIndex.from_frame(pool).isin(judged_keys)]
    held_out = _held_out_query_mask(pool, dataset)
    if held_out.any():
        _log(f"pool: dropped {int(held_out.sum())} pair(s) of valid/test queries (same id or same text), so "
             "evaluation queries never reach the student through teacher labels")
    pool = pool[~held_out].reset_index(drop=True)
    if pool.empty:
        raise DataContractError("the unlabelled pool is empty after removing judged pairs and held-out queries")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    pool.to_parquet(tmp, index=False, row_group_size=config.labeling.shard_rows)
    tmp.rename(out)
    _log(f"pool: {len(pool)} unlabelled pairs over {pool['query_id'].nunique()} queries "
         f"({len(pool) / max(len(dataset.split('train')), 1):.1f}× the train split) → {out}")
    return out


def _held_out_query_mask(pairs: pd.DataFrame, dataset: Dataset) -> np.ndarray:
    """Rows whose query is a valid/test query, by id or by normalised text (a source may give one query two ids)."""
    from relevance.data.splits import normalize_query

    held = dataset.judgments.loc[dataset.judgments["split"].isin(["valid", "test"]), "query_id"].unique()
    text = dataset.queries.set_index("query_id")["query"].map(normalize_query)
    held_texts = set(text.reindex(held).dropna())
    return pairs["query_id"].isin(held).to_numpy() | text.reindex(pairs["query_id"]).isin(held_texts).to_numpy()


def step_labels(config: RunConfig, dataset: Dataset, teacher_dir: Path, pool_path: Path) -> Path:
    from relevance.labeling import label_pool

    out = paths(config)["labels"]
    started = time.perf_counter()
    label_pool(teacher_dir, pool_path, dataset.queries, dataset.items, out, config.labeling.shard_rows,
               config.labeling.batch_size, config.labeling.precision)
    _log(f"labels: {out} ({time.perf_counter() - started:.0f} s)")
    return out


def student_featurizer(config: RunConfig, dataset: Dataset, cache_dir: Path, item_vectors: pd.Series | None = None):
    """The offline featurizer for this config's catalog; ``item_vectors`` as read from the feature store, if any."""
    from relevance.features import build_featurizer

    return build_featurizer(dataset.items, config.text, config.student.encoder, config.student.encoder_max_length,
                            config.candidates.k1, config.candidates.b, cache_dir, item_vectors)


def step_students(config: RunConfig, dataset: Dataset, teacher_dir: Path, labels_dir: Path) -> dict[str, Path]:
    """Distil the student from teacher labels, and train the human-labels-only baseline on the same features."""
    outputs = {"student": paths(config)["student"], "student_human_only": paths(config)["student_human_only"]}
    if _reuse(config, "students", all((p / "manifest.json").exists() for p in outputs.values())):
        return outputs
    return train_students(config, dataset, teacher_dir, labels_dir, paths(config)["pool"], outputs,
                          student_featurizer(config, dataset, paths(config)["embeddings"]))


def train_students(config: RunConfig, dataset: Dataset, teacher_dir: Path, labels_dir: Path, pool_path: Path,
                   outputs: dict[str, Path], featurizer, lineage: dict | None = None,
                   pool_queries: set | None = None) -> dict[str, Path]:
    """Train the students named in ``outputs`` that are not saved yet: ``student`` (distilled from the teacher's
    labels of the pool, or of only ``pool_queries``' part of it) and/or ``student_human_only`` (the baseline on
    human labels alone)."""
    from relevance.features import FEATURE_VERSION, LEXICAL_FEATURES
    from relevance.labeling import read_labels
    from relevance.student import Student, train_student
    from relevance.teacher import Teacher, read_manifest, score_items

    if all((p / "manifest.json").exists() for p in outputs.values()):
        return outputs  # nothing to train: skip the features too (the scaling study calls this per pool size)
    k = dataset.num_grades
    encoder = featurizer.cache.encoder
    query_text = dataset.queries.set_index("query_id")["query"]

    def features(pairs: pd.DataFrame) -> np.ndarray:
        return featurizer.transform(query_text.reindex(pairs["query_id"]).tolist(), pairs["item_id"])

    train, valid = dataset.split("train"), dataset.split("valid")
    _log("student: computing features")
    train_x, valid_x = features(train), features(valid)
    teacher_manifest = read_manifest(teacher_dir, "teacher")
    manifest = {
        "kind": "student", "num_grades": k, "num_features": int(train_x.shape[1]),
        "feature_version": FEATURE_VERSION, "lexical_features": list(LEXICAL_FEATURES),
        "encoder": config.student.encoder, "encoder_max_length": config.student.encoder_max_length,
        "encoder_fingerprint": encoder.fingerprint, "embedding_dim": encoder.dimension,
        "catalog_hash": featurizer.catalog_hash,
        "text": config.text.model_dump(), "bm25": {"k1": config.candidates.k1, "b": config.candidates.b},
        "config": config.student.model_dump(), "dataset": dataset.info.__dict__,
        "train_data_hash": training_data_hash(dataset), **(lineage or {}),
    }
    if "student_human_only" in outputs and not (outputs["student_human_only"] / "manifest.json").exists():
        model, metrics = train_student(train_x, train["grade"].to_numpy(), valid_x, valid["grade"].to_numpy(), k,
                                       config.student, human_only=True, log=_log)
        Student(model, {**manifest, "trained_on": "human labels (train split)", "teacher_version": None,
                        "metrics": metrics}).save(outputs["student_human_only"])
    if "student" in outputs and not (outputs["student"] / "manifest.json").exists():
        labels = read_labels(labels_dir, k, pool_path=pool_path)
        if pool_queries is not None:
            labels = labels[labels["query_id"].isin(pool_queries)].reset_index(drop=True)
        if labels["teacher_version"].iloc[0] != teacher_manifest["teacher_version"]:
            raise DataContractError(f"{labels_dir} holds labels of {labels['teacher_version'].iloc[0]}, but the "
                                    f"teacher is {teacher_manifest['teacher_version']}")
        pool_x = features(labels)
        pool_p = labels[prob_columns(k)].to_numpy(np.float32)
        pool_p /= pool_p.sum(1, keepdims=True)
        # The teacher also labels the judged train pairs, so distillation sees them with both label kinds.
        _log("student: teacher labels for the judged train pairs")
        teacher = Teacher.load(teacher_dir)
        train_p = score_items(teacher, train, query_text, teacher.item_texts(dataset.items),
                              config.labeling.batch_size, config.labeling.precision)
        x = np.concatenate([pool_x, train_x])
        p = np.concatenate([pool_p, train_p])
        human = np.concatenate([np.full(len(pool_x), -1), train["grade"].to_numpy()])
        model, metrics = train_student(x, p, valid_x, valid["grade"].to_numpy(), k, config.student,
                                       train_grades=human, log=_log)
        Student(model, {**manifest, "trained_on": f"teacher soft labels on {len(pool_x)} pool + {len(train_x)} "
                        "train pairs", "teacher_version": teacher_manifest["teacher_version"],
                        "distillation_pairs": int(len(x)), "metrics": metrics}).save(outputs["student"])
    return outputs


def step_report(config: RunConfig, dataset: Dataset, model_dirs: dict[str, Path]) -> dict:
    return evaluate_models(config, dataset, model_dirs, paths(config)["report"], paths(config)["embeddings"])


def evaluate_models(config: RunConfig, dataset: Dataset, model_dirs: dict[str, Path], out: Path,
                    embeddings_dir: Path) -> dict:
    """Every model and baseline on the same evaluation split, overall and per locale; JSON, markdown, plot."""
    from relevance.candidates import BM25Index
    from relevance.evaluation import (bm25_probs, load_scorer, majority_probs, plot_confusion_matrices,
                                      report_block, with_locale)

    split = config.eval.split
    frame = with_locale(dataset.split(split), dataset.queries)
    train = dataset.split("train")
    query_text = dataset.queries.set_index("query_id")["query"]
    models: dict[str, dict] = {}
    pairs_per_s: dict[str, float] = {}
    for name, directory in model_dirs.items():
        scorer = load_scorer(directory, dataset.items, embeddings_dir)
        scored = scorer.score(frame, query_text)
        models[name] = report_block(frame, scored.probs, dataset.info, config.eval)
        pairs_per_s[name] = scored.pairs_per_s()
    index = BM25Index.for_items(dataset.items, config.text, config.candidates.k1, config.candidates.b)
    train_bm25 = index.score_pairs(query_text.reindex(train["query_id"]), train["item_id"])
    eval_bm25 = index.score_pairs(query_text.reindex(frame["query_id"]), frame["item_id"])
    k = dataset.num_grades
    models["bm25"] = report_block(frame, bm25_probs(train_bm25, train["grade"].to_numpy(), eval_bm25, k),
                                  dataset.info, config.eval, scores=eval_bm25)
    models["majority"] = report_block(frame, majority_probs(train["grade"].to_numpy(), k, len(frame)),
                                      dataset.info, config.eval)
    report = {"split": split, "dataset": dataset.info.name, "num_pairs": int(len(frame)), "models": models,
              "pairs_per_s": pairs_per_s, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    matrices = {name: models[name]["overall"]["confusion_matrix"] for name in model_dirs}
    plot_confusion_matrices(matrices, dataset.info.grade_names, out.with_name("confusion.png"))
    out.with_suffix(".md").write_text(markdown_report(report, "confusion.png"))
    _log(f"report: {out} and {out.with_suffix('.md')}")
    return report


SUMMARY_METRICS = ("accuracy", "macro_f1", "ndcg@20", "rmse_grade", "rmse_raw", "auroc_ge3")


def markdown_report(report: dict, plot: str | None = None) -> str:
    columns = [m for m in SUMMARY_METRICS if any(m in b["overall"] for b in report["models"].values())]
    lines = [f"# Quality on {report['dataset']} ({report['split']} split, {report['num_pairs']} pairs)", "",
             "| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, block in report["models"].items():
        values = [block["overall"].get(m) for m in columns]
        lines.append(f"| {name} | " + " | ".join("–" if v is None else f"{v:.4f}" for v in values) + " |")
    if report.get("pairs_per_s"):
        lines += ["", "Throughput (pairs/s, this machine): " +
                  ", ".join(f"{k} {v:,.0f}" for k, v in report["pairs_per_s"].items())]
    if plot:
        lines += ["", f"![confusion matrices]({plot})"]
    return "\n".join(lines) + "\n"


def run(config: RunConfig) -> dict:
    Path(config.workdir).mkdir(parents=True, exist_ok=True)
    (Path(config.workdir) / "config.json").write_text(config.model_dump_json(indent=2))
    dataset = step_prepare(config)
    pool_path = step_pool(config, dataset)  # before the teacher: a dataset with no possible pool fails in seconds
    teacher_dir = step_teacher(config, dataset)
    labels_dir = step_labels(config, dataset, teacher_dir, pool_path)
    students = step_students(config, dataset, teacher_dir, labels_dir)
    return step_report(config, dataset, {"teacher": teacher_dir, **students})


# ---- Steps of the KFP pipeline (components/steps.py) that the local chain above does not have ----------------
# Each takes explicit paths (a component's artifacts), and imports Feast, GX or MLflow only when called.


def materialize_features(config: RunConfig, dataset: Dataset, repo_dir: str | Path,
                         embeddings_dir: str | Path | None = None) -> dict[str, str]:
    """Compute the student's item and query features, write them as the Feast offline store next to a copy of
    the repo's definitions, apply and materialize online. Returns {view: version} plus the definitions' hash.
    ``embeddings_dir``: an embedding cache to reuse (a pipeline step starts from none)."""
    import tempfile

    from relevance.feature_store import (apply_and_materialize, build_feature_repo, definitions_version,
                                         feature_tables)

    with tempfile.TemporaryDirectory() as cache_dir:
        featurizer = student_featurizer(config, dataset, Path(embeddings_dir or cache_dir))
        tables = feature_tables(dataset, featurizer.item_text,
                                lambda texts: featurizer.cache.embed(texts, "item embeddings"))
    build_feature_repo(config.features.repo, repo_dir, tables)
    versions = apply_and_materialize(repo_dir)
    _log(f"features: {len(tables['item_embeddings'])} items and {len(tables['query_stats'])} queries "
         f"materialized → {repo_dir}")
    return {**versions, "definitions": definitions_version(config.features.repo)}


def distill_from_shards(config: RunConfig, dataset: Dataset, teacher_dir: Path, pool_path: Path,
                        shard_dirs: list[Path], feature_repo: Path, out: Path, lineage: dict) -> Path:
    """The distillation step of the pipeline: label shards from the fan-out are joined and checked (contract and
    Great Expectations), item embeddings come from the Feast offline store, then :func:`train_students`."""
    import tempfile

    from relevance.feature_store import item_embeddings_from_store
    from relevance.validation import validate_teacher_labels

    with tempfile.TemporaryDirectory() as tmp:
        joined = Path(tmp) / "labels"
        joined.mkdir()
        for directory in shard_dirs:
            for shard in Path(directory).glob("shard-*.parquet"):
                (joined / shard.name).symlink_to(shard.resolve())
        labels = pd.concat([pd.read_parquet(p) for p in sorted(joined.glob("shard-*.parquet"))], ignore_index=True)
        validate_teacher_labels(labels, dataset.num_grades, config.validation).raise_for_failures()
        vectors = item_embeddings_from_store(feature_repo, dataset.items["item_id"].tolist())
        featurizer = student_featurizer(config, dataset, Path(tmp) / "embeddings", vectors)
        train_students(config, dataset, teacher_dir, joined, pool_path, {"student": out}, featurizer, lineage)
    return out


def _largest_ndcg(config: RunConfig) -> str:
    return f"ndcg@{max(config.eval.ks)}"


def evaluate_for_registry(config: RunConfig, dataset: Dataset, student_dir: Path, teacher_dir: Path,
                          html_path: Path) -> dict:
    """Student, teacher and the registry's current champion on the same split; the challenger gate's decision;
    an HTML report for the KFP UI."""
    import tempfile

    from relevance.registry import CHAMPION, Registry, challenger_gate

    with tempfile.TemporaryDirectory() as tmp:
        models = {"student": student_dir, "teacher": teacher_dir}
        champion = Registry(config.registry).download(config.registry.student_name, CHAMPION, Path(tmp) / "champion")
        if champion is not None:
            models["champion"] = champion
        report = evaluate_models(config, dataset, models, Path(tmp) / "report.json", Path(tmp) / "embeddings")
        plot = (Path(tmp) / "confusion.png").read_bytes()
    ndcg = _largest_ndcg(config)
    overall = {name: block["overall"] for name, block in report["models"].items()}
    passed, reason = challenger_gate(overall["student"], overall.get("champion"), config.registry, ndcg)
    _log(f"challenger gate: {'pass' if passed else 'fail'}: {reason}")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(html_report(report, plot, f"Challenger gate: {'PASS' if passed else 'FAIL'} ({reason})"))
    metrics = {f"{name}_{metric}".replace("@", "_at_"): float(block[metric])
               for name, block in overall.items() for metric in ("accuracy", "macro_f1", ndcg) if metric in block}
    return {"metrics": metrics, "gate_passed": passed, "gate_reason": reason,
            "grade_names": dataset.info.grade_names, "confusion_matrix": overall["student"]["confusion_matrix"]}


def html_report(report: dict, confusion_png: bytes, headline: str) -> str:
    """A self-contained HTML page (the plot inlined) that the KFP UI can show as an HTML artifact."""
    import base64
    import html

    columns = [m for m in SUMMARY_METRICS if any(m in b["overall"] for b in report["models"].values())]
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th>" + "".join(
            f"<td>{block['overall'][m]:.4f}</td>" if m in block["overall"] else "<td>–</td>" for m in columns)
        + "</tr>" for name, block in report["models"].items())
    image = base64.b64encode(confusion_png).decode()
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Relevance evaluation</title>"
            "<style>body{font-family:sans-serif} td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style>"
            f"</head><body><h1>Quality on {html.escape(report['dataset'])} ({report['split']} split, "
            f"{report['num_pairs']} pairs)</h1><p><b>{html.escape(headline)}</b></p><table><tr><th>model</th>"
            + "".join(f"<th>{m}</th>" for m in columns) + f"</tr>{rows}</table>"
            f"<h2>Confusion matrices</h2><img src='data:image/png;base64,{image}'/></body></html>")


def register_run(config: RunConfig, dataset_dir: Path, teacher_dir: Path, student_dir: Path, onnx_dir: Path,
                 evaluation: dict, validation: dict, feature_views: dict) -> dict[str, int]:
    """Register the teacher and the student (with its ONNX export) in MLflow; the student becomes `challenger`.

    Lineage tags: the training data's hash, the Great Expectations result, the teacher version and the feature
    views' versions, so any model version can be traced to what it was trained on.
    """
    import shutil
    import tempfile

    from relevance.registry import CHALLENGER, Registry
    from relevance.teacher import read_manifest

    dataset = Dataset.load(dataset_dir, with_impressions=False)
    teacher_manifest = read_manifest(teacher_dir, "teacher")
    student_manifest = read_manifest(student_dir, "student")
    ndcg = _largest_ndcg(config).replace("@", "_at_")
    numbers = {k: float(v) for k, v in evaluation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    lineage = {
        "data_hash": training_data_hash(dataset), "dataset": dataset.info.name,
        "gx_success": str(bool(float(validation.get("success", 0)))),
        "gx_checked_expectations": str(int(float(validation.get("checked_expectations", 0)))),
        "teacher_version": teacher_manifest["teacher_version"],
        "feature_views": json.dumps(feature_views, sort_keys=True),
        "feature_version": str(student_manifest["feature_version"]),
        "gate_reason": str(evaluation.get("gate_reason", "")),
    }
    registry = Registry(config.registry)
    teacher_version = registry.register(
        config.registry.teacher_name, teacher_dir, {"teacher": config.teacher.model_dump(), "text": config.text.model_dump()},
        {k.removeprefix("teacher_"): v for k, v in numbers.items() if k.startswith("teacher_")}, lineage)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "student"
        shutil.copytree(student_dir, bundle)
        shutil.copytree(onnx_dir, bundle / "onnx")
        student_version = registry.register(
            config.registry.student_name, bundle,
            {"student": config.student.model_dump(), "candidates": config.candidates.model_dump(),
             "labeling": config.labeling.model_dump()},
            {k.removeprefix("student_"): v for k, v in numbers.items() if k.startswith("student_")},
            {**lineage, "teacher_model_version": str(teacher_version),
             "accuracy": f"{numbers.get('student_accuracy', float('nan')):.4f}",
             "ndcg": f"{numbers.get(f'student_{ndcg}', float('nan')):.4f}"},
            alias=CHALLENGER)
    _log(f"registry: {config.registry.teacher_name} v{teacher_version}, {config.registry.student_name} "
         f"v{student_version} as {CHALLENGER} ({registry.uri})")
    return {"teacher": teacher_version, "student": student_version}
