"""The GPU path: a ~1B Llama-architecture teacher (bf16 + LoRA + gradient checkpointing) on a lent GPU.

The numbers come from benchmarks/gpu_teacher.py run on the device machine (its JSON is committed as
benchmarks/results/gpu-teacher.json). Without that file the study says so, and shows the same script's CPU smoke
run on a tiny model instead, which proves the code path and nothing about GPU speed."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

TITLE = "GPU path: ~1B Llama teacher, bf16 + LoRA + gradient checkpointing"
QUESTION = "What training and labelling throughput (tokens/s, pairs/s, MFU) does a 1B teacher get on an H200?"
GPU_RESULT = Path(__file__).resolve().parents[1] / "results" / "gpu-teacher.json"
GPU_COMMAND = "python benchmarks/gpu_teacher.py --out benchmarks/results/gpu-teacher.json"


def _rows(result: dict) -> list[list]:
    return [[phase, result[phase]["tokens_per_s"], result[phase]["pairs_per_s"], result[phase]["mfu"]]
            for phase in ("train", "label")]


def run(steps, args, command: str) -> dict:
    from benchmarks.studies import record, table

    module = sys.modules[__name__]
    columns = ["phase", "tokens/s", "pairs/s", "MFU"]
    if GPU_RESULT.exists():
        result = json.loads(GPU_RESULT.read_text())
        answer = (f"On {result['device']}: LoRA training {result['train']['pairs_per_s']:,.0f} pairs/s "
                  f"(MFU {result['train']['mfu']:.0%}), labelling {result['label']['pairs_per_s']:,.0f} pairs/s "
                  f"(MFU {result['label']['mfu']:.0%}), against a measured {result['measured_bf16_matmul_tflops']:.0f} "
                  "TFLOP/s bf16 matmul.")
        return record("gpu", module, answer, [table(f"{result['parameters'] / 1e9:.2f}B parameters, batch "
                                                    f"{result['batch_size']} × {result['seq_len']} tokens",
                                                    columns, _rows(result))], {}, result["command"], None,
                      measured=result)

    def smoke() -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "tiny.json"
            subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "gpu_teacher.py"), "--size",
                            "tiny", "--device", "cpu", "--batch-size", "8", "--seq-len", "32", "--steps", "3",
                            "--label-batches", "3", "--out", str(out)], check=True, capture_output=True)
            return json.loads(out.read_text())

    result = steps("cpu-smoke", {"script": (Path(__file__).resolve().parents[1] / "gpu_teacher.py").read_text()},
                   smoke)
    return record("gpu", module, "Not run: no GPU was lent to this session. The script is ready (" + GPU_COMMAND +
                  "); its CPU smoke run on a tiny model (below) exercises the same LoRA + checkpointing + bf16 code.",
                  [table("CPU smoke run, tiny Llama (not a GPU number)", columns, _rows(result))], {}, GPU_COMMAND,
                  steps, status="not run: no GPU lent", smoke=result)
