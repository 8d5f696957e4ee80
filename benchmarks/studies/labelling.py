"""Labelling speed: the Home Depot teacher scoring the test split four ways, in one run, with each way's quality
against torch fp32 (the reference the student is distilled from)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

TITLE = "Labelling speed: torch fp32 / bf16, ONNX Runtime fp32 / int8"
QUESTION = ("How many pairs per second can the teacher label on this CPU, and what does each faster path cost in "
            "label quality?")


def _quality(frame, probs, num_grades: int) -> dict:
    from relevance.models.metrics import classification_metrics, expected_grade, ranking_metrics

    grades = frame["grade"].to_numpy()
    return {"accuracy": classification_metrics(grades, probs)["accuracy"],
            "ndcg@20": ranking_metrics(frame["query_id"], grades, expected_grade(probs), ks=[20],
                                       num_grades=num_grades)["ndcg@20"]}


def run(steps, args, command: str) -> dict:
    import torch

    from benchmarks.studies import figure_png, record, table
    from relevance.common.files import read_manifest
    from relevance.common.onnx_session import onnx_session
    from relevance.common.runtime import bf16_supported, set_threads
    from relevance.config import load_config
    from relevance.data.schema import Dataset
    from relevance.student.export import export_teacher, onnx_teacher_proba, quantize_int8
    from relevance.teacher.model import Teacher

    config = load_config(args.config)
    workdir = Path(config.workdir)
    teacher_dir = workdir / "teacher"
    version = read_manifest(teacher_dir, "teacher")["teacher_version"]
    exported = steps.directory("export", {"teacher": version})
    if not (exported / "teacher-int8.onnx").exists():
        parity = export_teacher(teacher_dir, exported / "teacher.onnx").max_abs_diff
        quantize_int8(exported / "teacher.onnx", exported / "teacher-int8.onnx")
        (exported / "parity.txt").write_text(f"{parity:.3e}\n")
    parity = float((exported / "parity.txt").read_text())

    def measure() -> dict:
        set_threads()
        dataset = Dataset.load(workdir / "data", with_impressions=False)
        frame = dataset.split("test")
        teacher = Teacher.load(teacher_dir, torch.device("cpu"))
        text = dict(zip(dataset.items["item_id"], teacher.item_texts(dataset.items)))
        queries = dataset.queries.set_index("query_id")["query"].reindex(frame["query_id"]).tolist()
        items = [text[i] for i in frame["item_id"]]
        ways = {"torch fp32": lambda: teacher.predict_proba(queries, items, 128, "fp32"),
                "torch bf16": lambda: teacher.predict_proba(queries, items, 128, "bf16"),
                "onnx fp32": lambda: onnx_teacher_proba(onnx_session(exported / "teacher.onnx"), teacher, queries, items),
                "onnx int8": lambda: onnx_teacher_proba(onnx_session(exported / "teacher-int8.onnx"), teacher, queries,
                                                        items)}
        out = {"pairs": len(frame), "threads": torch.get_num_threads(), "cpu_bf16": bf16_supported(torch.device("cpu"))}
        probs = {}
        for name, label in ways.items():
            started = time.perf_counter()
            probs[name] = label()
            seconds = time.perf_counter() - started
            out[name] = {"pairs_per_s": len(frame) / seconds, **_quality(frame, probs[name], dataset.num_grades)}
        for name in ways:
            out[name]["max_abs_prob_diff"] = float(np.abs(probs[name] - probs["torch fp32"]).max())
            out[name]["argmax_agreement"] = float((probs[name].argmax(1) == probs["torch fp32"].argmax(1)).mean())
        return out

    result = steps("measure", {"teacher": version, "export": exported.name,
                               "threads": len(os.sched_getaffinity(0))}, measure)
    names = ["torch fp32", "torch bf16", "onnx fp32", "onnx int8"]
    base = result["torch fp32"]
    rows = [[n, result[n]["pairs_per_s"], result[n]["pairs_per_s"] / base["pairs_per_s"], result[n]["accuracy"],
             result[n]["accuracy"] - base["accuracy"], result[n]["ndcg@20"] - base["ndcg@20"],
             result[n]["argmax_agreement"], result[n]["max_abs_prob_diff"]] for n in names]
    fastest = max(names, key=lambda n: result[n]["pairs_per_s"])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.barh(names, [result[n]["pairs_per_s"] for n in names], color="tab:blue")
    for bar, n in zip(bars, names):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f"  Δacc {result[n]['accuracy'] - base['accuracy']:+.4f}", va="center", fontsize=8)
    ax.set_xlabel(f"teacher pairs/s ({result['threads']} threads, {result['pairs']} Home Depot test pairs)")
    ax.invert_yaxis()
    ax.set_xlim(0, max(result[n]["pairs_per_s"] for n in names) * 1.35)
    answer = (f"{fastest} is fastest at {result[fastest]['pairs_per_s']:,.0f} pairs/s, "
              f"{result[fastest]['pairs_per_s'] / base['pairs_per_s']:.1f}× torch fp32 "
              f"({base['pairs_per_s']:,.0f}); its accuracy differs by "
              f"{result[fastest]['accuracy'] - base['accuracy']:+.4f} and nDCG@20 by "
              f"{result[fastest]['ndcg@20'] - base['ndcg@20']:+.4f}. ONNX export parity {parity:.1e}.")
    return record("labelling", sys.modules[__name__], answer, [table(
        "Each way scores the whole test split once, in one run; deltas are against torch fp32",
        ["way", "pairs/s", "× fp32", "accuracy", "Δ accuracy", "Δ nDCG@20", "argmax agreement", "max |Δp|"],
        rows)], {"Teacher labelling throughput on this CPU, with the accuracy change of each way": figure_png(fig)},
        command, steps, measured=result, onnx_parity=parity)
