"""Device, precision and progress helpers shared by every training and inference loop."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(dev: torch.device) -> bool:
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # On CPU bf16 autocast only pays off with native bf16 instructions (AVX512-BF16 / AMX); elsewhere it is
    # emulated and slower than fp32 (benchmarks/results/teacher-precision.json measures it).
    # RELEVANCE_CPU_BF16=0 takes the fp32 path anyway: to run (and time) as a CPU without bf16 would.
    if os.environ.get("RELEVANCE_CPU_BF16") == "0":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, dev: torch.device) -> str:
    if precision == "auto":
        return "bf16" if bf16_supported(dev) else "fp32"
    if precision == "bf16" and dev.type == "cpu" and not torch.backends.mkldnn.is_available():
        raise RuntimeError("bf16 was requested but this CPU build of torch has no oneDNN support")
    return precision


def autocast(precision: str, dev: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def quiet_libraries() -> None:
    """Our own progress bars are the ones to watch: silence transformers' per-load bars and chatter."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads() -> None:
    """Use every core we were given (containers often report more CPUs than the cgroup allows)."""
    quiet_libraries()
    wanted = os.environ.get("RELEVANCE_THREADS")
    count = int(wanted) if wanted else len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, count))


def progress_bar(transient: bool = False, disable: bool = False) -> Progress:
    """A rich progress bar. Transient bars vanish on a terminal; in a log file (KFP, CI) every bar keeps its
    final line, since a vanished bar would leave only blank lines behind. ``disable``: draws nothing (e.g. on
    every rank but the first of a distributed job)."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), disable=disable)
    progress.live.transient = transient and progress.console.is_terminal
    return progress
