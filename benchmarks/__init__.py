"""Benchmarks and studies; every report records the machine it ran on with :func:`machine`."""

import os
import platform


def machine() -> str:
    """Cores this process may use, the CPU model, the OS, and the GPU if torch sees one."""
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
    return f"{len(os.sched_getaffinity(0))} cores ({cpu}), {platform.system()} {platform.machine()}, {gpu}"
