"""The report machinery: the step cache reruns only what changed and never keeps a half-written step, the
report embeds its figures and tables, the teacher exports to ONNX with parity (the labelling study's fast
paths), and the GPU script runs end to end on a tiny model on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import benchmarks.studies as studies

ROOT = Path(__file__).resolve().parents[2]


def test_steps_cache_reruns_only_what_changed(tmp_path):
    steps = studies.Steps("demo", root=tmp_path)
    calls = []

    def compute(value):
        calls.append(value)
        return {"value": value}

    assert steps("a", {"x": 1}, lambda: compute(1)) == {"value": 1}
    assert steps("a", {"x": 1}, lambda: compute(99)) == {"value": 1}  # same inputs: the cached result
    assert steps("a", {"x": 2}, lambda: compute(2)) == {"value": 2}  # changed inputs: computed again
    assert calls == [1, 2] and steps.reused == ["a"] and steps.computed == ["a", "a"]

    def killed():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        steps("b", {"x": 1}, killed)
    assert not list((tmp_path / "demo").glob("b-*"))  # nothing half-written to be mistaken for a result
    assert steps.directory("model", {"x": 1}) == steps.directory("model", {"x": 1}) != steps.directory("model", {})


def test_report_embeds_figures_and_tables(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(studies, "RESULTS", tmp_path)
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    module = type("M", (), {"TITLE": "A study", "QUESTION": "Does it work?"})
    rec = studies.record("scaling", module, "It works.", [studies.table("numbers", ["model", "accuracy"],
                                                                        [["student", 0.4601]])],
                         {"a line": studies.figure_png(fig)}, "python -m benchmarks.studies --only scaling")
    data, page = studies.write({"scaling": rec}, tmp_path)
    text = page.read_text()
    assert "data:image/png;base64," in text and "0.4601" in text and "It works." in text
    assert "python -m benchmarks.studies --only scaling" in text
    saved = json.loads(data.read_text())["scaling"]
    assert saved["figures"] == {"a line": "studies/scaling-0.png"} and (tmp_path / "studies/scaling-0.png").exists()
    assert saved["machine"] and saved["date"]
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{studies.README_BEGIN}\nold\n{studies.README_END}\nrest\n")
    assert studies.update_readme({"scaling": rec}, readme)
    assert readme.read_text() == (f"intro\n{studies.README_BEGIN}\n| study | what the run says |\n|---|---|\n"
                                  f"| [A study](benchmarks/results/report.html#scaling) | It works. |\n"
                                  f"{studies.README_END}\nrest\n")


def test_teacher_onnx_export_labels_like_torch(tiny_teacher, tmp_path):
    from relevance.common.onnx_session import onnx_session
    from relevance.student.export import export_teacher, onnx_teacher_proba, quantize_int8
    from relevance.teacher.model import Teacher

    teacher_dir, items, queries, judgments = tiny_teacher
    result = export_teacher(teacher_dir, tmp_path / "teacher.onnx")
    assert result.max_abs_diff < 1e-4 and result.outputs == ["probs"]
    teacher = Teacher.load(teacher_dir)
    query_text, item_text = queries.set_index("query_id")["query"], teacher.item_texts(items)
    q, t = query_text[judgments.query_id].tolist(), item_text[judgments.item_id].tolist()
    expected = teacher.predict_proba(q, t, precision="fp32")
    np.testing.assert_allclose(onnx_teacher_proba(onnx_session(tmp_path / "teacher.onnx"), teacher, q, t, batch_size=5),
                               expected, atol=1e-4)
    quantize_int8(tmp_path / "teacher.onnx", tmp_path / "teacher-int8.onnx")
    int8 = onnx_teacher_proba(onnx_session(tmp_path / "teacher-int8.onnx"), teacher, q, t)
    assert int8.shape == expected.shape and np.allclose(int8.sum(1), 1, atol=1e-4)


def test_gpu_script_runs_on_a_tiny_model(tmp_path):
    out = tmp_path / "tiny.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_teacher.py"), "--size", "tiny", "--device", "cpu",
                    "--batch-size", "4", "--seq-len", "16", "--steps", "2", "--label-batches", "2", "--out",
                    str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert 0 < result["trainable_parameters"] < result["parameters"]  # LoRA + head only
    for phase in ("train", "label"):
        assert result[phase]["tokens_per_s"] > 0 and result[phase]["pairs_per_s"] > 0 and result[phase]["mfu"] > 0


def test_gpu_script_says_when_there_is_no_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_teacher.py"), "--size", "tiny", "--out",
                             str(tmp_path / "x.json")], capture_output=True, text=True)
    assert result.returncode != 0 and "no CUDA device is visible" in result.stderr


def test_synthetic_teacher_study_step_trains_once_and_scores_per_locale(tmp_path, tiny_bert):
    from benchmarks.studies.synthetic import teacher_scores

    steps = studies.Steps("locales", root=tmp_path)
    data = {"source": "synthetic", "synthetic_items": 150, "synthetic_judged_queries": 100,
            "synthetic_impressions": 0, "seed": 0}
    teacher = {"backbone": str(tiny_bert), "epochs": 1, "batch_size": 16, "precision": "fp32", "head_hidden": 16}
    text = {"fields": ["title"], "max_length": 48, "max_query_tokens": 16}
    first = teacher_scores(steps, "train-en", data, teacher, text, train_locale="en_US")
    assert 0 <= first["accuracy"] <= 1 and first["test_pairs"] > 0
    assert set(first["accuracy_by_locale"]) <= {"en_US", "de_DE", "fr_FR", "ja_JP"}
    everything = teacher_scores(steps, "train-all", data, teacher, text)
    assert everything["train_pairs"] > first["train_pairs"]  # the locale filter kept only en_US training queries
    again = teacher_scores(steps, "train-en", data, teacher, text, train_locale="en_US")
    assert again == first and steps.reused == ["train-en"]


def test_scaling_pools_nest_by_bm25_depth():
    import pandas as pd

    from benchmarks.studies.scaling import nested_depths

    # 3 impressions, then 4 queries' candidates at ranks 0..4: depth d adds 4 pairs per rank.
    pool = pd.DataFrame({"impression": [True] * 3 + [False] * 20,
                         "rank": [320] * 3 + [r for r in range(5) for _ in range(4)]})
    assert nested_depths(pool, train_pairs=3, multiples=(1, 3, 7)) == {1: 0, 3: 2, 7: 5}
    with pytest.raises(ValueError, match="fewer than 8× the train split"):
        nested_depths(pool, train_pairs=3, multiples=(8,))


@pytest.mark.slow  # over a minute: `make test-slow`
def test_the_scale_benchmark_runs_every_stage_in_smoke_mode(tmp_path):
    """benchmarks/scale.py end to end at 10k-40k pairs: every stage in its own process, the report written to
    the work directory (a smoke run is not a result)."""
    import os

    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "benchmarks.scale", "--smoke", "--work", str(tmp_path)], cwd=root,
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    summary = json.loads((tmp_path / "scale-smoke.json").read_text())
    distils = [s for s in summary["stages"] if s["stage"] == "distil"]
    assert [d["size"] for d in distils] == [10_000, 20_000, 40_000]
    assert all(d["pairs"] >= d["size"] and d["pairs_per_s"] > 0 and d["peak_rss_mb"] > 100 for d in distils)
    assert {s["stage"] for s in summary["stages"]} == {"generate", "pool", "labels", "embeddings", "distil"}
    assert "NOT the measurement" in (tmp_path / "scale-smoke.md").read_text()
    assert (tmp_path / "scale-smoke.png").exists()


def test_active_learning_rounds_send_a_capped_budget_of_new_pairs_per_strategy(finished_run):
    """One simulated round on the tiny run: the retrained teacher is scored on test and labels the rest of train;
    every strategy then adds a round's budget of pairs it had not labelled, at most PER_QUERY per query, and
    entropy picks pairs the teacher is less sure of than the pool's average."""
    import pandas as pd

    from benchmarks.studies import active
    from relevance.config import load_config
    from relevance.data.schema import Dataset
    from relevance.labels.active import entropy
    from relevance.student.featurizer import build_featurizer, featurizer_settings

    run, config = finished_run[0] / "run", load_config(finished_run[1])
    dataset = Dataset.load(run / "data", with_impressions=False)
    sim = active._Simulation(config, dataset, build_featurizer(dataset.items, featurizer_settings(config),
                                                                run / "embeddings"))
    n = len(sim.train)
    start = np.arange(0, n, 4)
    result = sim.teacher_round(0, start, score_pool=True)
    assert 0 <= result["accuracy"] <= 1 and 0 <= result["ndcg@20"] <= 1
    assert result["pool_rows"] == np.setdiff1d(np.arange(n), start).tolist()
    pool_entropy = entropy(np.asarray(result["pool_probs"]))
    budget = int(round(active.STEP * n))
    for strategy in active.STRATEGIES:
        after = sim.acquire(strategy, 0, 1, start, result)
        new = np.setdiff1d(after, start)
        assert len(np.unique(after)) == len(after) == len(start) + len(new), strategy
        assert len(new) == budget, strategy
        assert pd.Series(sim.train["query_id"].to_numpy()[new]).value_counts().max() <= active.PER_QUERY
        if strategy == "entropy":
            chosen = pool_entropy[np.searchsorted(result["pool_rows"], new)]
            assert chosen.mean() > pool_entropy.mean()
