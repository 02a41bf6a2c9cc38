"""Pretraining: an upstream, its registered objective, its data, the trainer.

The objective says how its batch is made (:mod:`speechssl.objective`); the data
config says how utterances are cut (:class:`speechssl.data.dataset.CropConfig`).
Each checkpoint folder gets ``model.safetensors``, the upstream alone, so
``speechssl.load_upstream(name, ckpt=RUN_DIR/"last")`` loads the result.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from speechssl.checkpoint import save_upstream
from speechssl.data.dataset import AudioDataset, CropConfig
from speechssl.errors import ConfigError
from speechssl.registry import build_upstream, get_entry, list_upstreams
from speechssl.trainer import Trainer, TrainerConfig


def pretrainable_upstreams() -> list[str]:
    """Names of the registered upstreams that have a pretraining objective, sorted."""
    return [name for name in list_upstreams() if get_entry(name).objective is not None]


def pretrain(
    name: str,
    dataset: AudioDataset,
    cfg: TrainerConfig,
    run_dir: str | os.PathLike,
    *,
    crop: CropConfig | None = None,
    device: str = "cpu",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pretrain upstream ``name`` (config ``overrides``) on ``dataset`` cut by ``crop`` into ``run_dir``."""
    entry = get_entry(name)
    if entry.objective is None:
        raise ConfigError(
            f"upstream '{name}' has no pretraining objective; pretrainable: {', '.join(pretrainable_upstreams())}"
        )
    torch.manual_seed(cfg.seed)
    upstream = build_upstream(name, **(overrides or {}))
    objective = entry.objective(upstream)
    dataset = dataset.for_model(upstream, objective, crop or CropConfig(), seed=cfg.seed)
    # data.on_error=skip: what was left out goes into results.json
    skipped = {"skipped_utterances": len(dataset.skipped),
               "skipped_files": [{"path": path, "reason": reason} for path, reason in dataset.skipped]}
    trainer = Trainer(objective, cfg, run_dir, device=device, export=lambda folder: save_upstream(upstream, folder),
                      results_info=skipped)
    results = trainer.fit(dataset, objective.collate)
    return {"upstream": name, **results}
