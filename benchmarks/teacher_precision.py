"""Is bf16 autocast faster than fp32 for the MiniLM-L6 teacher on this CPU? Measured, not assumed.

    .venv/bin/python -m benchmarks.teacher_precision [--pairs 2048] [--repeats 3]

Times training steps (full fine-tune, batch 32) and inference (batch 128) on real Home Depot query/title pairs
(padded to each batch's longest, as the teacher does), fp32 and bf16 interleaved in one run so that machine
noise hits both alike. Writes benchmarks/results/teacher-precision.json. `precision: auto` picks bf16 only where
the CPU has native bf16 instructions (relevance.common.runtime.bf16_supported).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "homedepot"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import pandas as pd
    import torch

    from benchmarks import machine
    from relevance.common.runtime import autocast, bf16_supported, set_threads
    from relevance.config import TeacherConfig, TextConfig
    from relevance.teacher.model import build_cross_encoder, collate, encode_pairs, length_batches

    set_threads()
    judged = pd.read_parquet(DATA / "judgments.parquet").head(args.pairs)
    titles = pd.read_parquet(DATA / "products.parquet").set_index("product_id")["title"]
    text = TextConfig(fields=["title"], field_token_budgets={"title": 48}, max_length=72)
    dev = torch.device("cpu")
    model, tokenizer, _ = build_cross_encoder(TeacherConfig(finetune="full"), 5, dev)
    encodings = encode_pairs(tokenizer, judged["query"].tolist(),
                             ("title: " + titles.reindex(judged["product_id"])).tolist(), text)
    lengths = np.array([len(e["input_ids"]) for e in encodings])
    labels = torch.tensor(judged["grade"].to_numpy(), dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train_pass(precision: str) -> float:
        model.train()
        started = time.perf_counter()
        for index in length_batches(lengths[:512], 32):
            with autocast(precision, dev):
                logits = model(**collate(tokenizer, encodings, index, dev))
            loss = torch.nn.functional.cross_entropy(logits.float(), labels[index])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return 512 / (time.perf_counter() - started)

    @torch.no_grad()
    def infer_pass(precision: str) -> float:
        model.eval()
        started = time.perf_counter()
        for index in length_batches(lengths, 128):
            with autocast(precision, dev):
                model(**collate(tokenizer, encodings, index, dev))
        return len(encodings) / (time.perf_counter() - started)

    results: dict[str, dict[str, list[float]]] = {p: {"train": [], "infer": []} for p in ("fp32", "bf16")}
    infer_pass("fp32"), infer_pass("bf16")  # warm-up (oneDNN kernel selection)
    for _ in range(args.repeats):
        for precision in ("fp32", "bf16"):
            results[precision]["train"].append(train_pass(precision))
            results[precision]["infer"].append(infer_pass(precision))
    summary = {p: {f"{k}_pairs_per_s_median": statistics.median(v) for k, v in r.items()}
               for p, r in results.items()}
    report = {
        "measured": summary,
        "bf16_over_fp32": {k: summary["bf16"][f"{k}_pairs_per_s_median"] / summary["fp32"][f"{k}_pairs_per_s_median"]
                           for k in ("train", "infer")},
        "cpu_has_native_bf16": bf16_supported(dev),
        "mean_tokens_per_pair": float(lengths.mean()),
        "command": f".venv/bin/python -m benchmarks.teacher_precision --pairs {args.pairs} --repeats {args.repeats}",
        "machine": machine(),
        "date": datetime.now(timezone.utc).date().isoformat(),
    }
    out = ROOT / "benchmarks/results/teacher-precision.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
