"""The GPU path of the teacher: a ~1B-parameter Llama-architecture cross-encoder built from a config (random
init: nothing downloads), trained with bf16 autocast + LoRA + gradient checkpointing, then labelling in bf16.

    python -m benchmarks.gpu_teacher --out benchmarks/results/gpu-teacher.json          # on a CUDA machine
    python -m benchmarks.gpu_teacher --size tiny --device cpu --steps 3 --out /tmp/x.json # the same code, small

Reports training and labelling throughput (tokens/s, pairs/s) and MFU: achieved model FLOP/s over the bf16 matmul
rate measured on the same device (not the datasheet). Model FLOPs per token follow the usual 2·N forward
convention (Kaplan et al., 2020): 2N for labelling; for LoRA training 4N (forward + activation gradients; the
frozen base has no weight gradients), with gradient checkpointing's recomputed forward not counted as useful work.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

SIZES = {  # TinyLlama-1.1B's shape, and a tiny one for CPU smoke runs
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
}


def matmul_tflops(device, dtype, n: int = 8192, repeats: int = 20) -> float:
    import torch

    if device.type == "cpu":
        n, repeats = 1024, 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - started) / 1e12


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=96, help="tokens per query–item pair (Home Depot: ~30)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps (after 3 warm-up steps)")
    parser.add_argument("--label-batches", type=int, default=30)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaModel

    from relevance.teacher.model import CrossEncoder

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is visible: run on the GPU machine, or --device cpu")
    torch.manual_seed(0)
    config = LlamaConfig(**SIZES[args.size], max_position_embeddings=512)
    backbone = LlamaModel(config)
    base_parameters = sum(p.numel() for p in backbone.parameters())
    backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    backbone.enable_input_require_grads()
    backbone = get_peft_model(backbone, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model = CrossEncoder(backbone, num_grades=5, pooling="last", head_hidden=256, dropout=0.0,
                         positions_from_mask=True).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(3, config.vocab_size, (args.batch_size, args.seq_len), device=device)
    mask = torch.ones_like(ids)
    grades = torch.randint(0, 5, (args.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def train_step() -> None:
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(ids, mask), grades)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        train_step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    sync(device)
    train_seconds = time.perf_counter() - started
    train_memory = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None

    model.eval()
    with torch.no_grad(), autocast:
        model(ids, mask)
        sync(device)
        started = time.perf_counter()
        for _ in range(args.label_batches):
            model(ids, mask).float().softmax(-1)
        sync(device)
    label_seconds = time.perf_counter() - started

    peak = matmul_tflops(device, torch.bfloat16)
    train_tokens = args.steps * args.batch_size * args.seq_len / train_seconds
    label_tokens = args.label_batches * args.batch_size * args.seq_len / label_seconds
    n = base_parameters
    result = {
        "size": args.size, "parameters": n, "trainable_parameters": sum(p.numel() for p in trainable),
        "batch_size": args.batch_size, "seq_len": args.seq_len,
        "train": {"tokens_per_s": train_tokens, "pairs_per_s": train_tokens / args.seq_len,
                  "mfu": 4 * n * train_tokens / (peak * 1e12), "peak_memory_gib": train_memory},
        "label": {"tokens_per_s": label_tokens, "pairs_per_s": label_tokens / args.seq_len,
                  "mfu": 2 * n * label_tokens / (peak * 1e12)},
        "measured_bf16_matmul_tflops": peak,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "command": "python -m benchmarks.gpu_teacher " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
