"""Per-locale transfer on the multilingual synthetic shop: a teacher trained on one locale's judged queries,
evaluated on every locale's test queries."""

from __future__ import annotations

import sys

TITLE = "Per-locale transfer: train on one locale, evaluate on all"
QUESTION = "What transfers across locales (en_US, de_DE, fr_FR, ja_JP), and what does not?"
DATA = {"source": "synthetic", "synthetic_items": 1200, "synthetic_judged_queries": 400,
        "synthetic_impressions": 0, "seed": 0}
TEACHER = {"epochs": 3, "seed": 0}
TRAIN_LOCALES = (None, "en_US", "de_DE", "fr_FR", "ja_JP")


def run(steps, args, command: str) -> dict:
    from benchmarks.studies import figure_png, record, table
    from benchmarks.studies.synthetic import teacher_scores

    results = {locale or "all": teacher_scores(steps, f"train-{locale or 'all'}", DATA, TEACHER, {}, locale)
               for locale in TRAIN_LOCALES}
    test_locales = sorted(results["all"]["accuracy_by_locale"])
    rows = [[f"trained on {name} ({r['train_pairs']} pairs)"] + [r["accuracy_by_locale"].get(l) for l in test_locales]
            + [r["accuracy"]] for name, r in results.items()]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.array([[results[name]["accuracy_by_locale"].get(l, np.nan) for l in test_locales] for name in results])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    image = ax.imshow(grid, cmap="viridis")
    ax.set_xticks(range(len(test_locales)), test_locales)
    ax.set_yticks(range(len(results)), [f"train {n}" for n in results])
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xlabel("test locale")
    fig.colorbar(image, ax=ax, label="teacher accuracy")
    own = {l: results[l]["accuracy_by_locale"][l] for l in test_locales if l in results}
    off = {l: np.mean([results[l]["accuracy_by_locale"][t] for t in test_locales if t != l])
           for l in test_locales if l in results}
    answer = ("Accuracy on the training locale vs. the mean of the other locales: "
              + ", ".join(f"{l} {own[l]:.3f} / {off[l]:.3f}" for l in own)
              + f". Trained on all locales: {results['all']['accuracy']:.3f} overall.")
    return record("locales", sys.modules[__name__], answer, [table(
        f"Teacher (MiniLM-L6, English vocabulary) test accuracy per query locale; synthetic shop with "
        f"{DATA['synthetic_items']} items and {DATA['synthetic_judged_queries']} judged queries",
        ["training data"] + test_locales + ["all"], rows)],
        {"Train locale (rows) × test locale (columns) accuracy": figure_png(fig)}, command, steps, results=results)
