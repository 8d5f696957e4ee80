"""Item-text ablation on the synthetic shop, in Pinterest's table form: the teacher sees more of an item's text
row by row; each row is trained with several seeds."""

from __future__ import annotations

import sys

import numpy as np

TITLE = "Item-text ablation: what each text field adds to the teacher"
QUESTION = ("How much does teacher accuracy gain from each item-text field: caption → + title/description → + board "
            "titles → + engagement queries → + link titles?")
ROWS = [("caption only", ["caption"]),
        ("+ title, description", ["caption", "title", "description"]),
        ("+ board titles", ["caption", "title", "description", "board_titles"]),
        ("+ engagement queries", ["caption", "title", "description", "board_titles", "engagement_queries"]),
        ("+ link titles", ["caption", "title", "description", "board_titles", "engagement_queries", "link_titles"])]
SEEDS = (0, 1, 2)
DATA = {"source": "synthetic", "synthetic_items": 600, "synthetic_judged_queries": 150,
        "synthetic_impressions": 0, "seed": 0}
TEACHER = {"epochs": 3}  # the quick profile's MiniLM-L6, fully fine-tuned
# Room for every field's token budget (title 32 + description 48 + caption 24 + 3 × 16 + the query): with the
# quick profile's 96 the later fields would be cut off and the rows would measure truncation, not the fields.
MAX_LENGTH = 192


def run(steps, args, command: str) -> dict:
    from benchmarks.studies import figure_png, record, table
    from benchmarks.studies.synthetic import teacher_scores

    results = {label: [teacher_scores(steps, f"row{i}-seed{seed}", DATA, {**TEACHER, "seed": seed},
                                      {"fields": fields, "max_length": MAX_LENGTH}) for seed in SEEDS]
               for i, (label, fields) in enumerate(ROWS)}
    rows = []
    for label, runs in results.items():
        accuracy = np.array([r["accuracy"] for r in runs])
        ndcg = np.array([r["ndcg@10"] for r in runs])
        rows.append([label, f"{accuracy.mean():.4f} ± {accuracy.std(ddof=1):.4f}",
                     f"{ndcg.mean():.4f} ± {ndcg.std(ddof=1):.4f}", len(runs)])
    means = [np.mean([r["accuracy"] for r in runs]) for runs in results.values()]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.4))
    for seed_index in range(len(SEEDS)):
        ax.plot(range(len(ROWS)), [runs[seed_index]["accuracy"] for runs in results.values()], "o", color="grey",
                alpha=0.5)
    ax.plot(range(len(ROWS)), means, "o-", color="tab:blue", label=f"mean of {len(SEEDS)} seeds")
    ax.set_xticks(range(len(ROWS)), [label for label, _ in ROWS], fontsize=8)
    ax.set_ylabel("teacher test accuracy")
    ax.legend()
    gains = [b - a for a, b in zip(means, means[1:])]
    best = int(np.argmax(gains))
    answer = (f"Teacher accuracy {means[0]:.4f} with the caption alone → {means[-1]:.4f} with every field; the "
              f"largest step is '{ROWS[best + 1][0]}' ({gains[best]:+.4f}). Steps: "
              + ", ".join(f"{ROWS[i + 1][0]} {g:+.4f}" for i, g in enumerate(gains)) + ".")
    return record("ablation", sys.modules[__name__], answer, [table(
        f"Synthetic shop ({DATA['synthetic_items']} items, {DATA['synthetic_judged_queries']} judged queries), "
        f"MiniLM-L6 teacher fully fine-tuned, mean ± std over seeds {list(SEEDS)} (teacher seed; same data)",
        ["item text", "accuracy", "nDCG@10", "seeds"], rows)],
        {"Teacher accuracy per item-text row (grey: single seeds)": figure_png(fig)}, command, steps,
        results=results)
