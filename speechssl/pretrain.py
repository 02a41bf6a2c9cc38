"""Pretraining: an upstream, its registered objective, a dataset, the trainer.

Each checkpoint folder gets ``model.safetensors``, the upstream alone, so
``speechssl.load_upstream(name, ckpt=RUN_DIR/"last")`` loads the result.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from speechssl.checkpoint import save_upstream
from speechssl.data.dataset import AudioDataset, collate_batch
from speechssl.errors import ConfigError
from speechssl.registry import build_upstream, get_entry, list_upstreams
from speechssl.trainer import Trainer, TrainerConfig


def pretrainable_upstreams() -> list[str]:
    return [name for name in list_upstreams() if get_entry(name).objective is not None]


def pretrain(
    name: str,
    dataset: AudioDataset,
    cfg: TrainerConfig,
    run_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pretrain upstream ``name`` (config ``overrides``) on ``dataset`` into ``run_dir``; returns the results."""
    entry = get_entry(name)
    if entry.objective is None:
        raise ConfigError(
            f"upstream '{name}' has no pretraining objective; pretrainable: {', '.join(pretrainable_upstreams())}"
        )
    torch.manual_seed(cfg.seed)
    upstream = build_upstream(name, **(overrides or {}))
    dataset = dataset.without_shorter_than(upstream.min_samples)
    objective = entry.objective(upstream)
    trainer = Trainer(objective, cfg, run_dir, device=device, export=lambda folder: save_upstream(upstream, folder))
    results = trainer.fit(dataset, collate_batch)
    return {"upstream": name, **results}
