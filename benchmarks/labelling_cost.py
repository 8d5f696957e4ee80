"""Labelling throughput and cost: the teacher's pairs/s per device at each precision this machine has, and the
plan for labelling 30M pairs within an hour with an 8B decoder teacher.

    python -m benchmarks.labelling_cost                                   # CPU: torch fp32 / bf16, ONNX fp32 / int8
    python -m benchmarks.labelling_cost --device cuda --decoder 8b        # on a GPU: the same, and an 8B decoder
    python -m benchmarks.labelling_cost --smoke --note "CPU shared"       # seconds; marked as not a measurement

Measured: the packaged MiniLM-L6 cross-encoder (``teacher.backbone: minilm-l6``, the default profile's teacher)
scoring unlabelled pairs of the synthetic shop with the default profile's text settings, through the public API
(``relevance.teacher.model``, ``relevance.student.export``). The teacher is fine-tuned for a few steps only: its speed does not
depend on its weights. Each way scores the same pairs ``--repeats`` times after a warm-up; the report gives the
median and the best pass. With ``--decoder``, a Llama-shaped cross-encoder (random weights, bf16) scores batches of
``--decoder-tokens`` tokens per pair: ``8b`` is Llama-3-8B's shape (for a GPU), ``tiny`` a smoke test of the code.

Estimated: where no GPU measured the 8B decoder, its rate comes from FLOPs (2 per parameter per token) at a stated
MFU of the datasheet peak (relevance.labels.capacity.pairs_per_s_from_flops). The plan (devices, shard size, waves,
wall time) is relevance.labels.capacity's, with the gpu profile's cluster.labeling settings: the same numbers the
compiled pipeline uses. Writes benchmarks/results/labelling-cost.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

TARGET_PAIRS = 30_000_000
# The 8B decoder teacher, estimated. Llama-3-8B has 8.03B parameters; 2·N·tokens counts the embedding table
# (0.5B) that costs no FLOPs, so the estimate errs towards more GPUs.
DECODER_PARAMETERS = 8e9
TOKENS_PER_PAIR = 128  # a query (~10 tokens) and an item's title, description and more within text.max_length 160
# Dense bf16 tensor-core peak, datasheet (with sparsity it is twice that; labelling has none). The H200 has the
# H100's compute and more memory bandwidth, which a compute-bound forward pass does not use.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}
MFU = 0.35
MFU_WHY = ("Labelling is a forward pass only (no decoding, no KV cache) over batches of 64–256 pairs × ~128 "
           "tokens, so its matrix multiplies are large (8k–32k rows × 4096–14336) and run near peak; attention at "
           "this short length, norms and activations (memory-bound), padding, tokenisation and host-to-device "
           "copies pull the whole pass down. 30–40% is typical for such prefill-only inference; 35% is the middle, "
           "until a GPU measures it (--device cuda --decoder 8b).")
DECODER_SHAPES = {  # Llama-3-8B, and a tiny one that runs anywhere
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
}
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return []
    return [flag for flag in CPU_FLAGS if flag in flags]


def teacher_and_pairs(workdir: Path, pairs: int):
    """A MiniLM-L6 cross-encoder teacher (a few training steps) and ``pairs`` unlabelled pairs as texts."""
    from relevance.config import build_config
    from relevance.data import prepare
    from relevance.data.schema import Dataset
    from relevance.teacher.model import Teacher
    from relevance.teacher.train import fit_teacher

    config = build_config("default", {
        "workdir": str(workdir),
        "data": {"synthetic_items": 600, "synthetic_judged_queries": 150, "synthetic_impressions": max(4000, pairs)},
        "teacher": {"backbone": "minilm-l6", "epochs": 1, "max_train_pairs": 64, "calibration": "none"}})
    prepare(config.data, workdir / "data")
    dataset = Dataset.load(workdir / "data")
    fit_teacher(config, dataset, workdir / "teacher")
    teacher = Teacher.load(workdir / "teacher")
    sample = dataset.impressions.head(pairs)
    item_text = dict(zip(dataset.items["item_id"], teacher.item_texts(dataset.items)))
    queries = dataset.query_text.reindex(sample["query_id"]).tolist()
    return teacher, queries, [item_text[i] for i in sample["item_id"]]


def time_ways(ways: dict, pairs: int, repeats: int) -> dict:
    results = {}
    for name, label in ways.items():
        label(warm_up=True)  # kernel selection, allocations, ONNX session creation
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            label(warm_up=False)
            seconds.append(time.perf_counter() - started)
        results[name] = {"pairs_per_s_median": pairs / statistics.median(seconds),
                         "pairs_per_s_best": pairs / min(seconds), "seconds": seconds}
        print(f"{name}: {results[name]['pairs_per_s_median']:,.0f} pairs/s (median of {repeats})", flush=True)
    return results


def measure_cross_encoder(args, workdir: Path) -> dict:
    import numpy as np
    import torch

    from relevance.common.onnx_session import onnx_session
    from relevance.common.runtime import bf16_supported, set_threads
    from relevance.student.export import export_teacher, onnx_teacher_proba, quantize_int8
    from relevance.teacher.model import encode_pairs

    set_threads()
    teacher, queries, items = teacher_and_pairs(workdir, args.pairs)
    dev = torch.device(args.device)
    teacher.model.to(dev)
    lengths = np.array([len(e["input_ids"]) for e in encode_pairs(teacher.tokenizer, queries, items,
                                                                  teacher.text_config)])
    warm = slice(0, min(len(queries), args.batch_size))

    def torch_way(precision):
        return lambda warm_up: teacher.predict_proba(queries[warm] if warm_up else queries,
                                                     items[warm] if warm_up else items, args.batch_size, precision)

    ways, skipped = {"torch fp32": torch_way("fp32")}, {}
    if bf16_supported(dev):
        ways["torch bf16"] = torch_way("bf16")
    else:
        skipped["torch bf16"] = ("no native bf16 on this CPU (avx512_bf16 / amx_bf16): bf16 would be emulated, "
                                 "slower than fp32" if dev.type == "cpu" else "this GPU has no bf16")
    if dev.type == "cpu":
        parity = export_teacher(workdir / "teacher", workdir / "teacher.onnx").max_abs_diff
        quantize_int8(workdir / "teacher.onnx", workdir / "teacher-int8.onnx")
        for name, path in (("onnx fp32", "teacher.onnx"), ("onnx int8", "teacher-int8.onnx")):
            session = onnx_session(workdir / path, threads=torch.get_num_threads())
            ways[name] = (lambda s: lambda warm_up: onnx_teacher_proba(
                s, teacher, queries[warm] if warm_up else queries, items[warm] if warm_up else items,
                args.batch_size))(session)
    else:
        parity = None
        skipped["onnx fp32"] = skipped["onnx int8"] = "ONNX Runtime is installed for CPU only (onnx_session)"
    results = time_ways(ways, len(queries), args.repeats)
    for result in results.values():
        result["tokens_per_s_median"] = result["pairs_per_s_median"] * float(lengths.mean())
    return {"device": args.device, "threads": torch.get_num_threads(),
            "teacher": "MiniLM-L6 cross-encoder (teacher.backbone: minilm-l6), default profile text settings",
            "parameters": sum(p.numel() for p in teacher.model.parameters()), "pairs": len(queries),
            "mean_tokens_per_pair": float(lengths.mean()), "max_tokens_per_pair": int(lengths.max()),
            "batch_size": args.batch_size, "repeats": args.repeats, "ways": results, "skipped": skipped,
            "onnx_parity_max_abs_diff": parity}


def measure_decoder(args) -> dict:
    """A Llama-shaped cross-encoder (random weights: speed does not depend on them) in bf16, forward only."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    from relevance.teacher.model import CrossEncoder

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is visible: run on a GPU machine, or --device cpu")
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build the weights in bf16 on the device: 16 GB for 8B, not 32
    try:
        with dev:
            backbone = LlamaModel(LlamaConfig(**DECODER_SHAPES[args.decoder], max_position_embeddings=512))
            model = CrossEncoder(backbone, num_grades=5, pooling="last", head_hidden=256, dropout=0.0,
                                 positions_from_mask=True).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    parameters = sum(p.numel() for p in backbone.parameters())
    batch, tokens = args.decoder_batch_size, args.decoder_tokens
    ids = torch.randint(3, backbone.config.vocab_size, (batch, tokens), device=dev)
    mask = torch.ones_like(ids)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
        model(input_ids=ids, attention_mask=mask)
        sync()
        started = time.perf_counter()
        for _ in range(args.decoder_batches):
            model(input_ids=ids, attention_mask=mask).float().softmax(-1)
        sync()
    seconds = time.perf_counter() - started
    pairs_per_s = args.decoder_batches * batch / seconds
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    peak = next((flops for gpu, flops in PEAK_BF16_FLOPS.items() if gpu in name), None)
    return {"shape": args.decoder, "device": name, "parameters": parameters, "batch_size": batch,
            "tokens_per_pair": tokens, "batches": args.decoder_batches, "pairs_per_s": pairs_per_s,
            "tokens_per_s": pairs_per_s * tokens,
            "mfu_of_datasheet_peak": 2 * parameters * pairs_per_s * tokens / peak if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else None}


def plan_30m(cross_encoder: dict, decoder: dict | None) -> dict:
    from relevance.config import build_config
    from relevance.labels.capacity import pairs_per_s_from_flops, plan_for, plan_labelling

    capacity = build_config("gpu").cluster.labeling  # what the gpu profile compiles with

    def plan(rate: float, overhead_s: float | None = None) -> dict:
        return plan_labelling(TARGET_PAIRS, rate, overhead_s or capacity.shard_overhead_s, capacity.deadline_s,
                              capacity.max_shard_s, max_devices=10_000).to_dict()

    estimated_rate = pairs_per_s_from_flops(DECODER_PARAMETERS, TOKENS_PER_PAIR, PEAK_BF16_FLOPS["H100"], MFU)
    sensitivity = [{"tokens_per_pair": tokens, "mfu": mfu,
                    "pairs_per_s_per_gpu": pairs_per_s_from_flops(DECODER_PARAMETERS, tokens, PEAK_BF16_FLOPS["H100"],
                                                                  mfu),
                    "gpus": plan(pairs_per_s_from_flops(DECODER_PARAMETERS, tokens, PEAK_BF16_FLOPS["H100"],
                                                        mfu))["devices"]}
                   for tokens in (64, 128) for mfu in (0.25, 0.35, 0.45)]
    measured_gpu = None
    if decoder and decoder["shape"] == "8b" and decoder["device"] != "cpu":
        measured_gpu = {"device": decoder["device"], "pairs_per_s_per_gpu": decoder["pairs_per_s"],
                        "tokens_per_pair": decoder["tokens_per_pair"], "plan": plan(decoder["pairs_per_s"])}
    best_way = max(cross_encoder["ways"], key=lambda w: cross_encoder["ways"][w]["pairs_per_s_median"])
    cpu_rate = cross_encoder["ways"][best_way]["pairs_per_s_median"]
    return {
        "target": {"pairs": TARGET_PAIRS, "deadline_s": capacity.deadline_s},
        "settings": {"shard_overhead_s": capacity.shard_overhead_s, "max_shard_s": capacity.max_shard_s,
                     "source": "relevance.config PROFILES['gpu'] cluster.labeling (overhead: estimated)"},
        "estimate": {"kind": "estimated", "parameters": DECODER_PARAMETERS, "tokens_per_pair": TOKENS_PER_PAIR,
                     "flops_per_pair": 2 * DECODER_PARAMETERS * TOKENS_PER_PAIR,
                     "gpu": "H100 SXM (H200: the same compute)", "peak_bf16_flops": PEAK_BF16_FLOPS["H100"],
                     "mfu": MFU, "mfu_why": MFU_WHY, "pairs_per_s_per_gpu": estimated_rate,
                     "ideal_gpus": TARGET_PAIRS / estimated_rate / capacity.deadline_s,
                     "plan": plan(estimated_rate)},
        "gpu_profile_plan": plan_for(capacity).to_dict(),
        "sensitivity": sensitivity,
        "measured_gpu": measured_gpu,
        "cpu": {"kind": "measured rate", "way": best_way, "device": cross_encoder["device"],
                "threads": cross_encoder["threads"], "pairs_per_s_per_device": cpu_rate,
                "teacher": "MiniLM-L6 (the default profile's), not the 8B decoder",
                "plan": plan(cpu_rate, overhead_s=build_config("default").cluster.labeling.shard_overhead_s)},
    }


def markdown(report: dict) -> str:
    measured, plan = report["measured"], report["plan_30m"]
    estimate = plan["estimate"]
    lines = ["# Labelling throughput and the 30M-pair plan", ""]
    if report["status"] != "final":
        lines += [f"> **{report['status'].upper()} RUN: not final numbers.** {report['note'] or ''} Rerun "
                  "`python -m benchmarks.labelling_cost` on a quiet machine before planning with these rates.", ""]
    lines += [f"- Command: `{report['command']}`", f"- Machine: {report['machine']}; CPU flags: "
              f"{', '.join(report['cpu_flags']) or 'none of ' + ', '.join(CPU_FLAGS)}",
              f"- Date: {report['date']}", ""]
    lines += ["## Measured: the MiniLM-L6 cross-encoder teacher", "",
              f"{measured['pairs']:,} unlabelled pairs of the synthetic shop, {measured['mean_tokens_per_pair']:.0f} "
              f"tokens per pair on average (max {measured['max_tokens_per_pair']}), batch {measured['batch_size']}, "
              f"{measured['threads']} thread(s) on {measured['device']}, median and best of {measured['repeats']} "
              "pass(es).", "", "| way | pairs/s (median) | pairs/s (best) | tokens/s (median) |", "|---|---|---|---|"]
    for name, way in measured["ways"].items():
        lines.append(f"| {name} | {way['pairs_per_s_median']:,.0f} | {way['pairs_per_s_best']:,.0f} | "
                     f"{way['tokens_per_s_median']:,.0f} |")
    for name, why in measured["skipped"].items():
        lines.append(f"| {name} | not measured: {why} | | |")
    if measured["onnx_parity_max_abs_diff"] is not None:
        lines += ["", f"ONNX export parity (max |Δp| against torch): {measured['onnx_parity_max_abs_diff']:.1e}. "
                  "int8 changes the labels a little: the labelling study measures by how much on Home Depot "
                  "(benchmarks/results/report.html#labelling)."]
    decoder = report["decoder"]
    if decoder:
        lines += ["", f"## Measured: a Llama-shaped decoder cross-encoder ({decoder['shape']}) in bf16", "",
                  f"{decoder['parameters']:,} parameters on {decoder['device']}, batch "
                  f"{decoder['batch_size']} × {decoder['tokens_per_pair']} tokens: **{decoder['pairs_per_s']:,.1f} "
                  f"pairs/s** ({decoder['tokens_per_s']:,.0f} tokens/s)"
                  + (f", MFU {decoder['mfu_of_datasheet_peak']:.0%} of the datasheet peak"
                     if decoder["mfu_of_datasheet_peak"] else "") + "."]
    lines += ["", "## The plan: 30M pairs within an hour, 8B decoder teacher", "",
              f"**Estimated rate** (no GPU measured it here): FLOPs per pair = 2 × {estimate['parameters']:.0e} "
              f"parameters × {estimate['tokens_per_pair']} tokens = {estimate['flops_per_pair']:.2e}. "
              f"{estimate['gpu']}: {estimate['peak_bf16_flops'] / 1e12:,.0f} TFLOP/s dense bf16 (datasheet) at "
              f"an MFU of {estimate['mfu']:.0%} → **{estimate['pairs_per_s_per_gpu']:,.0f} pairs/s per GPU**.",
              "", f"Why {estimate['mfu']:.0%}: {estimate['mfu_why']}", "",
              f"Without any overhead, 30M pairs in {plan['target']['deadline_s']:,.0f} s need "
              f"{estimate['ideal_gpus']:.1f} GPUs. With {plan['settings']['shard_overhead_s']:,.0f} s per shard "
              f"(pod start, the 16 GB teacher from the artifact store, loading it; estimated), shards of at most "
              f"{plan['settings']['max_shard_s']:,.0f} s (what a preemption may throw away) and one shard's time "
              "kept for a retry, relevance.labels.capacity gives:", ""]
    rows = [("estimated 8B, H100 bf16", estimate["plan"])]
    if plan["measured_gpu"]:
        rows.append((f"measured 8B, {plan['measured_gpu']['device']}", plan["measured_gpu"]["plan"]))
    rows.append((f"measured MiniLM-L6 on this {plan['cpu']['device']} ({plan['cpu']['way']}, "
                 f"{plan['cpu']['threads']} threads)", plan["cpu"]["plan"]))
    lines += ["| teacher, rate | pairs/s per device | devices | waves | shard rows | shards | shard | wall | "
              "device-hours | labelling share |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows:
        lines.append(f"| {name} | {row['pairs_per_s']:,.0f} | **{row['devices']:,}** | {row['waves']} | "
                     f"{row['shard_rows']:,} | {row['shards']:,} | {row['shard_s']:,.0f} s | "
                     f"{row['wall_s'] / 60:,.1f} min | {row['device_s'] / 3600:,.1f} | "
                     f"{row['labelling_fraction']:.0%} |")
    profile = plan["gpu_profile_plan"]
    lines += ["", f"The `gpu` profile plans with {profile['pairs_per_s']:,.0f} pairs/s per device for "
              f"{profile['pool_rows']:,} rows and compiles to parallelism **{profile['devices']}** (one H100 per "
              "label pod); at run time build_pool cuts the pool it actually built into shards for that "
              "parallelism.", "",
              "Sensitivity of the estimate (GPUs the plan needs):", "",
              "| tokens per pair | MFU | pairs/s per GPU | GPUs |", "|---|---|---|---|"]
    for row in plan["sensitivity"]:
        lines.append(f"| {row['tokens_per_pair']} | {row['mfu']:.0%} | {row['pairs_per_s_per_gpu']:,.0f} | "
                     f"{row['gpus']} |")
    lines += ["", "Measured: the rates in the two Measured sections (and the CPU row of the plan). Estimated: the "
              "8B rate (FLOPs at a stated MFU), the per-shard overhead, and every plan row built on them."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument("--pairs", type=int, default=4096, help="unlabelled pairs each way scores per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--decoder", choices=["none", *DECODER_SHAPES], default="none",
                        help="also time a Llama-shaped decoder cross-encoder: 8b on a GPU, tiny anywhere")
    parser.add_argument("--decoder-tokens", type=int, default=TOKENS_PER_PAIR)
    parser.add_argument("--decoder-batch-size", type=int, default=64)
    parser.add_argument("--decoder-batches", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="a few seconds per way; the report says it is not "
                                                             "a measurement")
    parser.add_argument("--note", default="", help="a line for the report, e.g. what else the machine was doing")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.smoke:
        args.pairs, args.repeats, args.decoder_batches = min(args.pairs, 512), 1, min(args.decoder_batches, 3)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(ROOT))
    from benchmarks import machine

    with tempfile.TemporaryDirectory() as tmp:
        measured = measure_cross_encoder(args, Path(tmp))
    decoder = measure_decoder(args) if args.decoder != "none" else None
    report = {
        "status": "smoke" if args.smoke else "final", "note": args.note,
        "command": shlex.join(["python", "-m", "benchmarks.labelling_cost", *sys.argv[1:]]),
        "machine": machine(), "cpu_flags": cpu_flags(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "measured": measured, "decoder": decoder, "plan_30m": plan_30m(measured, decoder),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "labelling-cost.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "labelling-cost.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
