"""Teacher backbones on Home Depot under one training budget: a tiny random BERT, MiniLM-L6 frozen with a trained
head, MiniLM-L6 with LoRA, and MiniLM-L6 fully fine-tuned."""

from __future__ import annotations

import sys
import time
from pathlib import Path

TITLE = "Teacher backbones: tiny random, MiniLM frozen + head, LoRA, full fine-tuning"
QUESTION = "What does each way of building the teacher buy in accuracy and nDCG@20, and what does it cost per pair?"
# The same budget for every backbone: one pass over the 22k train pairs (the bench-quality teacher had three).
# (6,000 pairs × 2 epochs was tried first: every variant stayed at or below the majority class.)
BUDGET = {"max_train_pairs": None, "epochs": 1}
VALID_PAIRS = 1000
VARIANTS = {
    "tiny random BERT (2×64)": {"backbone": "tiny", "finetune": "full", "learning_rate": 1e-3},
    "MiniLM-L6 frozen, head trained": {"finetune": "head", "head_learning_rate": 3e-3},
    "MiniLM-L6 LoRA (r=8)": {"finetune": "lora", "learning_rate": 5e-4},
    "MiniLM-L6 full fine-tuning": {"finetune": "full", "learning_rate": 5e-5},
}


def tiny_random_bert(directory: Path, tokenizer_source: str) -> Path:
    """A 2-layer, 64-wide BERT with random weights and MiniLM's tokenizer (the floor: no pretraining)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    if not (directory / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=128, max_position_embeddings=512)
        BertModel(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def run(steps, args, command: str) -> dict:

    from benchmarks.studies import figure_png, record, table
    from relevance.config import load_config
    from relevance.data.schema import Dataset
    from relevance.models.backbones import resolve_backbone
    from relevance.models.metrics import classification_metrics, expected_grade, ranking_metrics
    from relevance.teacher.model import score_items
    from relevance.teacher.train import train_teacher

    config = load_config(args.config)
    results = {}
    for name, variant in VARIANTS.items():
        teacher_config = config.teacher.model_copy(update={**BUDGET, **variant, "eval_every_steps": None})

        def compute(teacher_config=teacher_config) -> dict:
            dataset = Dataset.load(Path(config.workdir) / "data", with_impressions=False)
            if teacher_config.backbone == "tiny":
                teacher_config = teacher_config.model_copy(update={"backbone": str(tiny_random_bert(
                    steps.directory("tiny-bert", {}), resolve_backbone(config.teacher.backbone)))})
            query_text = dataset.queries.set_index("query_id")["query"]
            valid = dataset.split("valid").sample(VALID_PAIRS, random_state=0)
            train = dataset.split("train")
            started = time.perf_counter()
            teacher = train_teacher(train, valid, query_text, dataset.items, dataset.num_grades, teacher_config,
                                    config.text, log=lambda _: None)
            seconds = time.perf_counter() - started
            seen = min(len(train), BUDGET["max_train_pairs"] or len(train)) * BUDGET["epochs"]
            test = dataset.split("test")
            probs = score_items(teacher, test, query_text, teacher.item_texts(dataset.items),
                                config.labeling.batch_size, config.labeling.precision)
            grades = test["grade"].to_numpy()
            parameters = sum(p.numel() for p in teacher.model.parameters())  # LoRA is merged on save
            return {"accuracy": classification_metrics(grades, probs)["accuracy"],
                    "ndcg@20": ranking_metrics(test["query_id"], grades, expected_grade(probs), ks=[20],
                                               num_grades=dataset.num_grades)["ndcg@20"],
                    # the trainer's own count: pairs through optimizer steps over time spent in them
                    "train_pairs_per_s": teacher.manifest["metrics"]["train_pairs_per_s"],
                    "train_seconds": seconds, "pairs_seen": seen,
                    "parameters": parameters}

        results[name] = steps(name, {"teacher": teacher_config.model_dump(), "text": config.text.model_dump(),
                                     "budget": BUDGET, "valid_pairs": VALID_PAIRS}, compute)
    rows = [[name, r["accuracy"], r["ndcg@20"], r["train_pairs_per_s"], r["parameters"]] for name, r in results.items()]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, r in results.items():
        ax.scatter(r["train_pairs_per_s"], r["accuracy"], s=60)
        ax.annotate(name, (r["train_pairs_per_s"], r["accuracy"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training pairs/s (this CPU)")
    ax.set_ylabel("test accuracy")
    best = max(results, key=lambda n: results[n]["accuracy"])
    answer = (f"Under the same budget (one epoch over the train split), "
              f"{best} is most accurate ({results[best]['accuracy']:.4f}, nDCG@20 {results[best]['ndcg@20']:.4f}); "
              + "; ".join(f"{n}: {r['accuracy']:.4f} at {r['train_pairs_per_s']:,.0f} pairs/s"
                          for n, r in results.items() if n != best) + ".")
    return record("backbones", sys.modules[__name__], answer, [table(
        f"Home Depot test split (7,405 pairs); each teacher trained for {BUDGET['epochs']} epoch over the "
        f"22,276 train pairs (validation on {VALID_PAIRS} valid pairs); majority class: 0.4271",
        ["teacher", "accuracy", "nDCG@20", "train pairs/s", "parameters"], rows)],
        {"Accuracy against training speed": figure_png(fig)}, command, steps, results=results, budget=BUDGET)
