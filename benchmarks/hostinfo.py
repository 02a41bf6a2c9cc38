"""The machine line the benchmarks print beside their figures (imported by the scripts beside it)."""

from __future__ import annotations

import torch

from speechssl.pipeline import machine as machine_info


def machine() -> str:
    """``CPU <model>, <n> cores, torch <version> with <t> threads, Python <version>; GPU: <name or none>``.

    The facts are :func:`speechssl.pipeline.machine`'s (the demo's report lists the same); the thread
    count is torch's at the time of the call, which a benchmark may have set.
    """
    info = machine_info()
    return (f"CPU {info['cpu']}, {info['cores']} cores, torch {info['torch']} with {torch.get_num_threads()} threads, "
            f"Python {info['python']}; GPU: {info['gpu'] or 'none'}")
