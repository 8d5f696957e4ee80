"""What the synthetic-shop studies share: a prepared shop per data setting, and a teacher trained and scored on it
(each cached as a step)."""

from __future__ import annotations

import numpy as np


def config(overrides: dict):
    from relevance.config import build_config

    return build_config("quick", overrides)


def prepared(steps, data: dict):
    """The synthetic shop for ``data`` (a DataConfig dict), prepared once."""
    from relevance.chain import Chain

    run = config({"data": data})
    run.workdir = str(steps.directory("shop", data))
    return Chain(run).dataset()


def teacher_scores(steps, name: str, data: dict, teacher: dict, text: dict, train_locale: str | None = None) -> dict:
    """Train a teacher (train split, early stopping on valid; only ``train_locale``'s queries if given) and score
    the test split: overall accuracy and nDCG@10, and accuracy per query locale."""

    def compute() -> dict:
        from relevance.models.metrics import expected_grade, ranking_metrics
        from relevance.teacher.model import Teacher, score_items
        from relevance.teacher.train import fit_teacher

        dataset = prepared(steps, data)
        run = config({"data": data, "teacher": teacher, "text": text})
        locale = dataset.queries.set_index("query_id")["locale"]
        if train_locale is not None:
            keep = locale.reindex(dataset.judgments["query_id"]).to_numpy() == train_locale
            held = dataset.judgments["split"].eq("test").to_numpy()
            dataset.judgments = dataset.judgments[keep | held].reset_index(drop=True)
        out = steps.directory(f"{name}-teacher", {"data": data, "teacher": teacher, "text": text,
                                                  "train_locale": train_locale})
        if not (out / "manifest.json").exists():
            fit_teacher(run, dataset, out)
        model = Teacher.load(out)
        test = dataset.split("test")
        probs = score_items(model, test, dataset.queries.set_index("query_id")["query"],
                            model.item_texts(dataset.items), precision="fp32")
        grades = test["grade"].to_numpy()
        correct = probs.argmax(1) == grades
        by_locale = locale.reindex(test["query_id"]).to_numpy()
        return {"accuracy": float(correct.mean()),
                "ndcg@10": ranking_metrics(test["query_id"], grades, expected_grade(probs), ks=[10],
                                           num_grades=dataset.num_grades)["ndcg@10"],
                "accuracy_by_locale": {str(l): float(correct[by_locale == l].mean()) for l in np.unique(by_locale)},
                "test_pairs": int(len(test)), "train_pairs": int(len(dataset.split("train")))}

    return steps(name, {"data": data, "teacher": teacher, "text": text, "train_locale": train_locale}, compute)
