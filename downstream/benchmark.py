"""The SUPERB protocol for one (upstream, task): frozen upstream, weighted layer sum, small head.

1. The task fits its labels on the training rows.
2. Frozen upstream: every utterance's hidden states go to the :class:`FeatureCache`
   once; training and evaluation read the cache. ``trainable=True`` fine-tunes the
   upstream instead and runs it on every batch (no cache).
3. The :class:`Trainer` trains Featurizer + head, evaluates on dev at every
   checkpoint and keeps the best one (``best``) by the task's metric.
4. The best checkpoint is scored on test; ``test_outcomes.tsv`` gets each test
   utterance's outcome, ``results.json`` everything the report needs, 95% bootstrap
   intervals of the test metrics among it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from downstream.classification import UtteranceClassification
from downstream.task import Task, get_task
from speechssl.bootstrap import write_outcomes
from speechssl.checkpoint import TRAIN_WEIGHTS, atomic_write
from speechssl.data.audio import collate
from speechssl.data.manifest import load_utterance
from speechssl.data.sampler import plan_batches
from speechssl.errors import ConfigError
from speechssl.feature_cache import FeatureCache, upstream_fingerprint
from speechssl.interface import Featurizer, Upstream
from speechssl.trainer import Trainer, TrainerConfig, to_device

OUTCOMES_FILE = "test_outcomes.tsv"  # one line per test utterance: id, then the task's outcome counts


class CachedFeatures(torch.utils.data.Dataset):
    """Items ``(hidden states, label)`` of manifest rows, hidden states from the cache."""

    def __init__(self, rows: list[dict], cache: FeatureCache, task: Task, source: str = "hidden_states") -> None:
        self.rows, self.cache, self.task, self.source = rows, cache, task, source

    def __len__(self) -> int:
        return len(self.rows)

    def num_samples(self) -> list[int]:
        return [r["num_samples"] for r in self.rows]

    def sample_weights(self) -> list[float] | None:
        """The task's training weights of the rows (None: every row once an epoch)."""
        return self.task.sample_weights(self.rows)

    def __getitem__(self, i: int):
        return self.hidden(i), self.task.encode(self.rows[i])

    def hidden(self, i: int) -> list[torch.Tensor]:
        """Utterance ``i``'s states ``(T, D)``; a per-utterance output is the one state of one frame."""
        if self.source != "hidden_states":
            return [self.cache.load_extra(self.rows[i]["id"], self.source)[None]]
        return self.cache.load(self.rows[i]["id"])

    def collate(self, items) -> dict[str, torch.Tensor]:
        hidden = [h for h, _ in items]
        lengths = torch.tensor([h[0].shape[0] for h in hidden])
        layers = [  # one (B, T, D_l) tensor per hidden state: sizes may differ (APC's input)
            nn.utils.rnn.pad_sequence([h[layer] for h in hidden], batch_first=True) for layer in range(len(hidden[0]))
        ]
        return {"hidden": layers, "lengths": lengths, **self.task.collate([y for _, y in items])}


class Waveforms(CachedFeatures):
    """Items ``(waveform, label)``: for fine-tuning, where the upstream runs on every batch."""

    def __init__(self, rows: list[dict], task: Task) -> None:
        self.rows, self.task = rows, task

    def __getitem__(self, i: int):
        return load_utterance(self.rows[i]), self.task.encode(self.rows[i])

    def collate(self, items) -> dict[str, torch.Tensor]:
        wavs, wav_lens = collate([w for w, _ in items])
        return {"wavs": wavs, "wav_lens": wav_lens, **self.task.collate([y for _, y in items])}


class DownstreamModel(nn.Module):
    """Featurizer + head (+ the upstream when it is fine-tuned); ``forward(batch) -> (loss, logs)``."""

    def __init__(self, featurizer: Featurizer, head: nn.Module, task: Task, upstream: Upstream | None = None):
        super().__init__()
        self.featurizer, self.head, self.task, self.upstream = featurizer, head, task, upstream

    def features(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.upstream is not None:
            return self.featurizer(self.upstream(batch["wavs"], batch["wav_lens"]))
        return self.featurizer(batch["hidden"], batch["lengths"])

    def forward(self, batch: dict[str, torch.Tensor], *, step: int = 0, generator=None):
        """The training protocol of :mod:`speechssl.objective`: ``(loss, logs)`` of a batch."""
        x, lengths = self.features(batch)
        return self.task.loss(self.head, x, lengths, batch)


def predict(model: DownstreamModel, dataset, batch_seconds: float, device) -> list:
    """The task's prediction for every item of ``dataset``, in its order."""
    predictions: list = [None] * len(dataset)
    model.eval()
    with torch.no_grad():
        for batch_ids in plan_batches(dataset.num_samples(), int(batch_seconds * 16000)):
            batch = dataset.collate([dataset[i] for i in batch_ids])
            batch = to_device(batch, device)
            x, lengths = model.features(batch)
            for i, p in zip(batch_ids, model.task.predict(model.head, x, lengths)):
                predictions[i] = p
    return predictions


def evaluate(model: DownstreamModel, dataset, batch_seconds: float, device) -> dict[str, float]:
    """The task's metrics of ``model`` on ``dataset``."""
    return model.task.score(predict(model, dataset, batch_seconds, device), model.task.references(dataset.rows))


def benchmark(
    upstream: Upstream,
    task: Task | str,
    rows: dict[str, list[dict]],
    cfg: TrainerConfig,
    run_dir: str | os.PathLike,
    *,
    corpus: str,
    cache_dir: str | os.PathLike,
    resources: dict[str, Any] | None = None,
    cache_dtype: torch.dtype = torch.float16,
    layer: str | int = "weighted",
    trainable: bool = False,
    normalize: bool = False,
    threads: int | None = None,
    device: str = "cpu",
    info: dict[str, Any] | None = None,
    init: str = "pretrained",
    init_seed: int | None = None,
    source: str = "hidden_states",
) -> dict[str, Any]:
    """Train and score ``task`` on ``upstream`` with ``rows[split]`` for each of the task's splits
    (and the corpus ``resources`` it declares); returns (and writes) the results.

    ``task``: a :class:`Task` (its options set: :func:`get_task`), or a task name with its defaults.
    ``init="random"`` marks a random-init control (``upstream`` untrained, its weights
    drawn from ``init_seed``): it goes into ``results.json`` and the run folder's identity.

    ``normalize``: the Featurizer standardises each hidden state per dimension with
    statistics of the training set (frozen upstreams only; off by default, as it
    gained nothing measurable with the learning-rate grid: benchmarks/RESULTS.md). ``threads``: torch's
    intra-op threads while the head trains (the upstream fills the cache with the
    process's setting); small heads run faster on one thread (benchmarks/RESULTS.md).
    ``source``: ``"hidden_states"`` (SUPERB's weighted sum of layers), or the name of a
    per-utterance output of the upstream (``Upstream.extra_sizes``: DeLoRes's ``embedding``)
    for an utterance-level task: the head reads it as a sequence of one frame.

    A task without a dev split (ASV) is scored with its last checkpoint; a task that
    trains no head (QbE) scores the cached hidden states directly (``Task.score_untrained``).
    """
    run_dir = Path(run_dir)
    task = task if isinstance(task, Task) else get_task(task)
    task.prepare(frame_rate=upstream.frame_rate, resources=resources)
    if source != "hidden_states":
        if source not in upstream.extra_sizes:
            known = ", ".join(["hidden_states", *upstream.extra_sizes])
            raise ConfigError(
                f"featurizer.source={source}: upstream '{upstream.name}' has no such output; it has {known}")
        if trainable or not isinstance(task, UtteranceClassification):
            raise ConfigError(
                f"featurizer.source={source}: a per-utterance output serves frozen utterance-level tasks "
                f"(ks, sid, er, ic), not task '{task.name}'{' fine-tuned' if trainable else ''}"
            )
    if trainable and not task.trains_head:
        raise ConfigError(f"task '{task.name}' trains nothing: there is no upstream to fine-tune with it")
    missing = [s for s in task.splits if s not in rows]
    if missing:
        raise ConfigError(f"task '{task.name}' needs the split(s) {', '.join(missing)} of corpus '{corpus}'")
    for split in task.splits:
        task.check_rows(rows[split], f"the {split} split of corpus '{corpus}'")
    task.fit(rows[task.splits[0]])
    run_dir.mkdir(parents=True, exist_ok=True)
    _claim_run_dir(run_dir, {"upstream": upstream.name, "weights": upstream_fingerprint(upstream, torch.float32),
                             "task": task.name, "corpus": corpus, "trainable": trainable,
                             **({"init": init, "init_seed": init_seed} if init != "pretrained" else {})})
    atomic_write(run_dir / "labels.json", lambda tmp: Path(tmp).write_text(json.dumps(task.state())))

    torch.manual_seed(cfg.seed)
    if trainable:
        data = {s: Waveforms(rows[s], task) for s in task.splits}
        upstream.train()
    else:
        upstream.requires_grad_(False)
        cache = FeatureCache(cache_dir, upstream, f"{corpus}/{task.name}", dtype=cache_dtype, device=device)
        for split in task.splits:
            cache.fill(rows[split])
        data = {s: CachedFeatures(rows[s], cache, task, source) for s in task.splits}
    if threads:
        torch.set_num_threads(threads)
    if not task.trains_head:
        scored = task.score_untrained({s: data[s] for s in task.splits}, layer=layer)
        return _write_results(run_dir, task, upstream, corpus, rows, scored, info, lr=None, step=0, layer=layer,
                              source=source, layer_weights=None, trainable=False, init=init, init_seed=init_seed)

    normalize = normalize and not trainable
    sizes = upstream if source == "hidden_states" else [upstream.extra_sizes[source]]
    featurizer = Featurizer(sizes, layer, normalize=normalize)
    if normalize:
        featurizer.set_statistics(*feature_statistics(data["train"], featurizer.states()))
    model = DownstreamModel(featurizer, task.head(featurizer.output_size), task, upstream if trainable else None)

    selects = "dev" in task.splits
    metric = f"dev_{task.metric}"
    trainer = Trainer(
        model,
        cfg,
        run_dir,
        device=device,
        evaluate=(lambda m: {f"dev_{k}": v for k, v in evaluate(m, data["dev"], cfg.batch_seconds, device).items()})
        if selects else None,
        select=(metric, "max" if task.higher_is_better else "min") if selects else ("train_loss", "min"),
    )
    trained = trainer.fit(data["train"], data["train"].collate)

    # the best checkpoint on dev; without a dev split, the last one (never one chosen on test)
    model.load_state_dict(load_file(str(run_dir / ("best" if selects else "last") / TRAIN_WEIGHTS)))
    test_predictions = predict(model, data["test"], cfg.batch_seconds, device)
    references = task.references(rows["test"])
    scored = {
        "dev": evaluate(model, data["dev"], cfg.batch_seconds, device) if selects else {},
        "test": task.score(test_predictions, references),
        "outcomes": task.outcomes(test_predictions, references),
    }
    return _write_results(run_dir, task, upstream, corpus, rows, scored, info, lr=cfg.lr, step=trained["step"],
                          layer=layer, source=source, layer_weights=featurizer.layer_weights().tolist(),
                          trainable=trainable, init=init, init_seed=init_seed)


def _write_results(run_dir: Path, task: Task, upstream: Upstream, corpus: str, rows: dict[str, list[dict]],
                   scored: dict[str, Any], info: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
    """``results.json`` and ``test_outcomes.tsv`` of a scored run: ``scored`` holds its ``dev`` and
    ``test`` metrics and the test ``outcomes`` (one record per scored item)."""
    outcomes = scored["outcomes"]
    ids = scored.get("outcome_ids") or task.outcome_ids(rows["test"])
    write_outcomes(run_dir / OUTCOMES_FILE, ids, outcomes)
    results = {
        "kind": "benchmark",
        **(info or {}),
        "upstream": upstream.name,
        "task": task.name,
        "corpus": corpus,
        **task.describe(),
        "chance": task.chance(rows[task.splits[0]], rows.get("test", [])),
        "lr": fields.pop("lr"),
        "dev": scored["dev"],
        "test": scored["test"],
        # 95% percentile-bootstrap intervals over the scored test items, from the outcomes in OUTCOMES_FILE
        "test_interval": {m: list(interval) for m, interval in task.intervals(outcomes).items()},
        "test_outcomes": OUTCOMES_FILE,
        "outcome_ratios": {m: ratio.as_json() for m, ratio in task.ratios.items()},
        **{k: v for k, v in scored.items() if k not in ("dev", "test", "outcomes", "outcome_ids")},
        **fields,
    }
    atomic_write(run_dir / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    return results


def feature_statistics(dataset: CachedFeatures, states: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension ``(len(states), D)`` means and standard deviations of hidden ``states`` over
    every valid frame of ``dataset`` (read from the cache, accumulated in float64)."""
    total, squares, frames = 0.0, 0.0, 0
    for i in range(len(dataset.rows)):
        hidden = dataset.hidden(i)
        x = torch.stack([hidden[i].double() for i in states])  # (L, T, D)
        total, squares, frames = total + x.sum(dim=1), squares + x.pow(2).sum(dim=1), frames + x.shape[1]
    means = total / frames
    stds = (squares / frames - means.pow(2)).clamp(min=0).sqrt()
    return means.float(), stds.float()


def _claim_run_dir(run_dir: Path, identity: dict[str, Any]) -> None:
    """Mark ``run_dir`` as this (upstream weights, task, corpus)'s; refuse one that holds another's.

    A run folder resumes whatever it holds, so a second checkpoint of the same
    upstream benchmarked into the same folder would silently reuse the first one's head.
    """
    path = run_dir / "benchmark.json"
    if path.exists():
        held = json.loads(path.read_text())
        if held != identity:
            differ = ", ".join(k for k in identity if held.get(k) != identity[k])
            raise ConfigError(
                f"{run_dir} holds a benchmark of another setup ({differ} differ); "
                "choose another folder with hydra.run.dir=DIR"
            )
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(identity)))


def benchmark_grid(
    upstream: Upstream,
    task: Task | str,
    rows: dict[str, list[dict]],
    cfg: TrainerConfig,
    lrs: list[float],
    run_dir: str | os.PathLike,
    **options: Any,
) -> dict[str, Any]:
    """:func:`benchmark` once per learning rate in ``lrs`` (into ``run_dir/lr<lr>``), as SUPERB
    chooses the rate on dev; returns the chosen run's results and writes ``run_dir/grid.json``
    (each rate's dev and test scores, the chosen rate). The cache is filled by the first run only.

    A task that trains nothing runs once (into ``run_dir``); one without a dev split takes
    exactly one rate, since a rate chosen on test would flatter it.
    """
    task = task if isinstance(task, Task) else get_task(task)
    run_dir = Path(run_dir)
    if not task.trains_head:
        return benchmark(upstream, task, rows, cfg, run_dir, **options)
    if not lrs:
        raise ConfigError("an empty learning-rate grid; set optim.grid=[...] or optim.lr=...")
    lrs = sorted(set(lrs))  # ties go to the lowest rate, as the report breaks them
    if "dev" not in task.splits and len(lrs) > 1:
        raise ConfigError(
            f"task '{task.name}' has no dev split to choose among learning rates {', '.join(f'{lr:g}' for lr in lrs)}; "
            "give one with optim.lr=..."
        )
    runs = [benchmark(upstream, task, rows, replace(cfg, lr=lr), run_dir / f"lr{lr:g}", **options) for lr in lrs]
    metric, sign = runs[0]["metric"], 1 if runs[0]["higher_is_better"] else -1
    chosen = max(runs, key=lambda r: sign * r["dev"].get(metric, 0.0))  # max keeps the first of ties
    grid = {
        "metric": metric,
        "chosen_lr": chosen["lr"],
        "runs": [{"lr": r["lr"], "dev": r["dev"].get(metric), "test": r["test"][metric]} for r in runs],
    }
    atomic_write(run_dir / "grid.json", lambda tmp: Path(tmp).write_text(json.dumps(grid, indent=2)))
    return {**chosen, "grid": grid}
