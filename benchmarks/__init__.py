"""Benchmarks and studies; every report records the machine it ran on with :func:`machine`."""

import os
import platform


def machine() -> str:
    """Cores this process may use, the CPU model and whether it has avx512_bf16 (bf16 autocast is 2-3× faster with
    it), the OS, and the GPU if torch sees one."""
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name()
    except ImportError:
        pass
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        flags = set()
    simd = "avx512_bf16" if "avx512_bf16" in flags else "AVX2, no avx512_bf16" if "avx2" in flags else "no AVX2"
    return (f"{len(os.sched_getaffinity(0))} cores ({cpu}, {simd}), {platform.system()} {platform.machine()}, "
            f"{gpu}")
