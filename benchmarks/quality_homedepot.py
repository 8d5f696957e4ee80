"""Quality benchmark: the whole chain on the real Home Depot grades with MiniLM-L6 (CPU).

    .venv/bin/python benchmarks/quality_homedepot.py [--config configs/homedepot.yaml] [--workdir runs/homedepot]

The teacher trains on split train and is tuned (early stopping, hyper-parameters) on valid only; the pool is the
impressions plus BM25 candidates of the unjudged queries (≥ 10× the train split). Writes
benchmarks/results/quality-homedepot.{json,md} and the confusion-matrix plot. Steps whose output exists in the
workdir are reused, so a rerun after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REPORTED = {"accuracy": "accuracy", "macro_f1": "macro_f1", "ndcg@20": "ndcg@20", "rmse_1to3": "rmse_raw",
            "auroc_ge3": "auroc_ge3", "rmse_grade": "rmse_grade", "p@5": "p@5"}


NOTES = Path(__file__).with_name("quality_homedepot_notes.md")


def markdown(result: dict) -> str:
    metrics = ["accuracy", "macro_f1", "ndcg@20", "rmse_1to3", "auroc_ge3"]
    lines = ["# Quality on Home Depot (real human grades), test split", "",
             f"{result['num_test_pairs']} test pairs; teacher trained on split train, tuned on valid; the student is "
             f"distilled from teacher labels on a pool of {result['pool_pairs']:,} unlabelled pairs.", "",
             "| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in result["models"].items():
        lines.append(f"| {name} | " + " | ".join("–" if values[m] is None else f"{values[m]:.4f}"
                                                 for m in metrics) + " |")
    lines += ["", "Throughput on this machine (pairs/s, scoring the test split): "
              f"teacher {result['pairs_per_s']['teacher']:,.0f}, student {result['pairs_per_s']['student']:,.0f}.",
              "", "## Targets", ""]
    lines += [f"- {'met' if ok else '**missed**'}: {name}" for name, ok in result["targets"].items()]
    lines += ["", "![confusion matrices](quality-homedepot-confusion.png)", ""]
    if NOTES.exists():
        lines += [NOTES.read_text().strip(), ""]
    lines += ["## Rerun", "", f"    {result['command']}", "",
              f"Machine: {result['machine']}. Date: {result['date']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/homedepot.yaml"))
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    config_path = Path(args.config).resolve()
    workdir = Path(args.workdir).resolve() if args.workdir else None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)  # the config's own relative paths (data.path, workdir) are relative to the repository
    from relevance.chain import Chain, run
    from relevance.config import load_config

    config = load_config(config_path)
    if workdir:
        config.workdir = str(workdir)
    report = run(config)
    pool_rows = pq.ParquetFile(Chain(config).pool_path).metadata.num_rows
    result = {
        "split": report["split"],
        "models": {name: {key: block["overall"].get(source) for key, source in REPORTED.items()}
                   for name, block in report["models"].items()},
        "pairs_per_s": {"teacher": report["pairs_per_s"]["teacher"], "student": report["pairs_per_s"]["student"]},
        "pool_pairs": pool_rows,
        "num_test_pairs": report["num_pairs"],
        "per_locale": {name: block.get("per_segment", {}) and {
            seg: {k: v.get(s) for k, s in REPORTED.items()} for seg, v in block["per_segment"].items()}
            for name, block in report["models"].items()},
        "command": "make bench-quality  # = .venv/bin/python benchmarks/quality_homedepot.py "
                   f"--config {os.path.relpath(config_path, ROOT)}",
        "machine": machine(),
        "date": datetime.now(timezone.utc).date().isoformat(),
    }
    teacher, student = result["models"]["teacher"], result["models"]["student"]
    result["targets"] = {
        "teacher_beats_bm25_and_majority": all(teacher[m] > result["models"][b][m] for m in ("accuracy", "ndcg@20")
                                               for b in ("bm25", "majority")),
        "student_keeps_97pct_accuracy": student["accuracy"] >= 0.97 * teacher["accuracy"],
        "student_keeps_97pct_ndcg@20": student["ndcg@20"] >= 0.97 * teacher["ndcg@20"],
        "student_beats_human_only": all(student[m] > result["models"]["student_human_only"][m]
                                        for m in ("accuracy", "ndcg@20")),
        "teacher_rmse_1to3_le_0.46": teacher["rmse_1to3"] <= 0.46,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality-homedepot.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copy(Path(config.workdir) / "confusion.png", RESULTS / "quality-homedepot-confusion.png")
    (RESULTS / "quality-homedepot.md").write_text(markdown(result))
    print(json.dumps(result["targets"], indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
