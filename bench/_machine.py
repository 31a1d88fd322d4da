"""What machine a benchmark ran on, printed with its figures."""

from __future__ import annotations

import os
import platform


def describe(device: str = "cpu") -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1":  # set by tune_process, as the kd command does
        system = os.environ.get("KD_MALLOC") == "system"
        text += ", kd's allocator tuning" + (" (KD_MALLOC=system: huge pages only)" if system else "")
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text
