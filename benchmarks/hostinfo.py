"""The machine line the benchmarks print beside their figures (imported by the scripts beside it)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine() -> str:
    """``CPU <model>, <n> cores, torch <version>, Python <version>``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"
