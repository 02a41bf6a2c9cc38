"""One training loop for pretraining and downstream training.

The loop reads top to bottom: draw the next global batch (dynamic, by padded
duration), take this process's share, call the objective under autocast
(``model(batch, step=..., generator=...) -> (loss, logs)``, the one protocol of
:mod:`speechssl.objective`, for pretraining and downstream training alike), accumulate,
clip, step AdamW and the warm-up/decay schedule, log, checkpoint. A run folder
holds everything: TensorBoard scalars (``tb/``), ``metrics.jsonl``, step
checkpoints with ``last``/``best`` links, ``results.json``. A run started again
in the same folder resumes from ``last``: model, optimizer, schedule, RNG states
and the position in the data order, so it reaches the same weights as a run that
was never stopped.

Several processes: start with ``torchrun``; the loop joins the process group
(gloo on CPU, NCCL on GPU) and wraps the model in DDP. Every process computes the
same global batches and takes every ``world_size``-th utterance of each.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, List

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from speechssl.checkpoint import CheckpointManager, atomic_write
from speechssl.data.sampler import epoch_batches, shard
from speechssl.device import check_device
from speechssl.errors import CheckpointError, ConfigError, SpeechSSLError, TrainingError, first_line

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainerConfig:
    max_steps: int = 10000
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 1000
    decay: str = "linear"  # linear | cosine | constant, after warm-up
    grad_accum: int = 1
    clip_norm: float = 10.0  # 0 turns clipping off
    precision: str = "fp32"  # fp32 | bf16 (CUDA, or CPUs with bf16) | fp16 (CUDA)
    batch_seconds: float = 80.0  # padded audio per micro-batch, all processes together
    num_workers: int = 0
    log_every: int = 10
    save_every: int = 1000
    keep: int = 2
    seed: int = 0
    max_nonfinite_steps: int = 5  # updates skipped in a row (NaN/Inf loss, out of memory) before the run stops

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainerConfig":
        """A config from ``trainer.*`` values; an unknown key (``+trainer.max_stpes=5``) is a
        :class:`ConfigError` naming it and the closest known key."""
        known = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f"; did you mean trainer.{close[0]}?" if close else f"; known: {', '.join(known)}"
            raise ConfigError(f"unknown key trainer.{unknown[0]}{hint}")
        return cls(**values)


def lr_factor(step: int, cfg: TrainerConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step``: linear warm-up, then linear/cosine decay to 0, or constant."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, progress)
    if cfg.decay == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN needs for fast bf16 kernels."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def check_config(cfg: TrainerConfig, device: str) -> None:
    """Refuse values the loop cannot run with, naming the ``trainer.*`` key, before any work starts."""
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={cfg.precision!r}; expected one of {', '.join(PRECISIONS)}")
    if cfg.precision == "fp16" and not device.startswith("cuda"):
        raise ConfigError("trainer.precision=fp16 needs CUDA; on a CPU use bf16 or fp32")
    if cfg.precision == "bf16" and device.startswith("cpu") and not _cpu_has_bf16():
        log.warning(
            "trainer.precision=bf16 on a CPU without bf16 units (%s): PyTorch emulates it, and a wav2vec 2.0 "
            "base step measured 20x slower than in fp32 (benchmarks/RESULTS.md); trainer.precision=fp32 is faster here",
            torch.backends.cpu.get_cpu_capability(),
        )
    if cfg.decay not in ("linear", "cosine", "constant"):
        raise ConfigError(f"trainer.decay={cfg.decay!r}; expected linear, cosine or constant")
    check_device(device)
    at_least = {"max_steps": 1, "grad_accum": 1, "log_every": 1, "save_every": 1, "keep": 1, "max_nonfinite_steps": 1,
                "warmup_steps": 0, "num_workers": 0, "lr": 0.0, "weight_decay": 0.0, "clip_norm": 0.0}
    for key, low in at_least.items():
        if getattr(cfg, key) < low:
            raise ConfigError(f"trainer.{key}={getattr(cfg, key)}; expected at least {low}")
    if cfg.batch_seconds <= 0:
        raise ConfigError(f"trainer.batch_seconds={cfg.batch_seconds}; expected seconds > 0")
    if len(cfg.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise ConfigError(f"trainer.betas={list(cfg.betas)}; expected two values in [0, 1)")


class Trainer:
    """Trains ``model``, an objective: ``model(batch, *, step, generator) -> (loss, logs)``.

    ``step`` is the optimizer step being taken (every micro-batch of one update under
    gradient accumulation sees the same), ``generator`` the trainer's own, saved with
    each checkpoint.

    ``export(folder)`` writes extra files into each checkpoint folder (the upstream
    as ``model.safetensors``). ``evaluate(model) -> {name: value}`` runs at every
    checkpoint; ``select=(name, "min"|"max")`` picks ``best`` by it (by default the
    training loss since the previous checkpoint, lower is better).
    ``results_info`` adds entries to ``results.json`` (the utterances the data check left out).

    A step whose loss is NaN or Inf is skipped (its gradients dropped) and counted in
    ``results.json`` as ``nonfinite_steps``; ``cfg.max_nonfinite_steps`` in a row stop the
    run with a :class:`TrainingError`, after a checkpoint of the last good weights. A batch
    that runs out of device memory is skipped the same way (``oom_steps``; one process only:
    under DDP it stops the run, since the others wait for its gradients).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainerConfig,
        run_dir: str | os.PathLike,
        *,
        device: str = "cpu",
        export: Callable[[Path], None] | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        select: tuple[str, str] = ("train_loss", "min"),
        results_info: dict[str, Any] | None = None,
    ) -> None:
        self.rank, self.world_size, device = _init_distributed(device)
        check_config(cfg, device)
        self.cfg, self.device = cfg, torch.device(device)
        self.run_dir = Path(run_dir)
        self.model = model.to(self.device)
        self.export, self.evaluate, self.select = export, evaluate, select
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        self.generator = torch.Generator(self.device).manual_seed(self.rank_seed)
        self.checkpoints = CheckpointManager(self.run_dir, cfg.keep)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best: float | None = None
        self.last_loss: float | None = None
        self.nonfinite_steps = 0  # updates skipped for a NaN/Inf loss, over the whole run
        self.oom_steps = 0  # updates skipped for a batch that ran out of device memory
        self.results_info = dict(results_info or {})
        if self.is_main:
            self.checkpoints.clean()
        # an objective whose forward may leave parameters without a gradient (LayerDrop) makes DDP look for them
        skips = bool(getattr(self.model, "skips_parameters", False))
        self.wrapped = (
            nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=skips)
            if self.world_size > 1
            else self.model
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def rank_seed(self) -> int:
        """This process's seed: the run's seed, told apart per DDP rank."""
        return self.cfg.seed * 1000 + self.rank

    # -- the loop ----------------------------------------------------------------------

    def fit(self, dataset, collate: Callable) -> dict[str, Any]:
        """Train to ``cfg.max_steps`` (resuming from ``run_dir/last`` if present); returns the results.

        ``dataset`` has ``num_samples()`` (lengths, for duration batches) and may have
        ``sample_weights()`` (a weight per item, or None): then each epoch draws items
        with replacement in proportion to them. A dataset whose items depend on the
        epoch (random crops) has ``item(index, epoch)``; others are indexed as usual.
        """
        self.resume()
        if self.step >= self.cfg.max_steps:
            log.info("already at step %d of %d: nothing to train", self.step, self.cfg.max_steps)
            return self._read_results()
        writer = self._tensorboard()
        batches = self._micro_batches(dataset, collate)
        autocast = self._autocast()
        started = time.monotonic()
        progress = tqdm(
            total=self.cfg.max_steps, initial=self.step, desc="train", unit="step", disable=not self.is_main
        )
        self.wrapped.train()
        try:
            self._loop(batches, autocast, progress, writer)
        finally:
            progress.close()
            if writer is not None:
                writer.close()
        results = {"step": self.step, "train_loss": self.last_loss, "best": self.best, "world_size": self.world_size,
                   "elapsed_s": round(time.monotonic() - started, 2), "nonfinite_steps": self.nonfinite_steps,
                   "oom_steps": self.oom_steps, **self.results_info, "trainer": asdict(self.cfg)}
        if self.is_main:
            atomic_write(self.run_dir / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
        return results

    def _loop(self, batches, autocast, progress, writer) -> None:
        """Optimizer steps from ``self.step`` to ``cfg.max_steps``: log, checkpoint."""
        interval_losses: list[torch.Tensor] = []
        skipped_in_a_row = 0
        while self.step < self.cfg.max_steps:
            position, logs_sum = self._accumulate(batches, autocast)
            self.epoch, self.batch_in_epoch = position[0], position[1] + 1
            if logs_sum is None or not self._finite_on_every_rank(logs_sum["loss"]):
                skipped_in_a_row += 1
                self._skip_update("out of memory" if logs_sum is None else "nonfinite", skipped_in_a_row,
                                  interval_losses)
                continue
            skipped_in_a_row = 0
            lr = self.scheduler.get_last_lr()[0]  # the rate this step uses; _optimizer_step moves to the next
            grad_norm = self._optimizer_step()
            self.step += 1
            interval_losses.append(logs_sum["loss"])
            progress.update(1)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.max_steps:
                scalars = {k: float(v) for k, v in self._mean_over_ranks(logs_sum).items()}
                scalars.update(lr=lr, grad_norm=float(grad_norm))
                progress.set_postfix(loss=f"{scalars['loss']:.4f}")
                self._log(writer, scalars)
            if self.step % self.cfg.save_every == 0 or self.step == self.cfg.max_steps:
                self._save_interval(interval_losses)

    def _accumulate(self, batches, autocast) -> tuple[tuple[int, int], dict[str, torch.Tensor] | None]:
        """Forward and backward ``cfg.grad_accum`` micro-batches: ``(data position, summed logs)``;
        the logs are None when a batch ran out of device memory (the rest of the update is not drawn)."""
        logs_sum: dict[str, torch.Tensor] = {}  # detached, read on the host only when logged
        for micro in range(self.cfg.grad_accum):
            position, batch = next(batches)
            sync = micro == self.cfg.grad_accum - 1 or self.world_size == 1
            try:
                with autocast, (contextlib.nullcontext() if sync else self.wrapped.no_sync()):
                    loss, logs = self.wrapped(batch, step=self.step, generator=self.generator)
                    self.scaler.scale(loss / self.cfg.grad_accum).backward()
            except torch.OutOfMemoryError as e:
                if self.world_size > 1:  # the other processes wait in the gradient all-reduce: skipping would hang
                    raise TrainingError(f"step {self.step + 1}: out of memory on rank {self.rank} ({first_line(e)}); "
                                        "lower trainer.batch_seconds") from None
                log.warning("step %d: out of memory on a batch of %s (%s)", self.step + 1, _batch_size(batch),
                            first_line(e))
                return position, None
            for k, v in {"loss": loss.detach(), **logs}.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + v.float() / self.cfg.grad_accum
        return position, logs_sum

    def _save_interval(self, interval_losses: list[torch.Tensor]) -> None:
        """Checkpoint, with the mean training loss of the steps since the previous one (then forgotten)."""
        self.save(float(self._mean_over_ranks({"loss": torch.stack(interval_losses).mean()})["loss"]))
        interval_losses.clear()

    def _finite_on_every_rank(self, loss: torch.Tensor) -> bool:
        """Whether the step's loss is finite on every process (all must skip a step together).

        The one host read per optimizer step this adds is what deciding to skip costs."""
        finite = self._mean_over_ranks({"finite": torch.isfinite(loss).float()})["finite"]
        return bool(finite == 1)

    def _skip_update(self, reason: str, in_a_row: int, interval_losses: list[torch.Tensor]) -> None:
        """Drop the gradients of a step whose loss is NaN or Inf (``reason="nonfinite"``) or whose batch
        ran out of device memory (``"out of memory"``), count it; stop after ``cfg.max_nonfinite_steps``
        skipped in a row, saving the progress since the last checkpoint."""
        self.optimizer.zero_grad(set_to_none=True)
        if reason == "nonfinite":
            self.nonfinite_steps += 1
            what, fix = "the loss was NaN or Inf", "lower trainer.lr, use trainer.precision=fp32 or check the data"
        else:
            self.oom_steps += 1
            what, fix = "batches ran out of device memory", "lower trainer.batch_seconds"
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        log.warning(
            "step %d: %s, update skipped (%d in a row; the run stops at trainer.max_nonfinite_steps=%d)",
            self.step + 1, what.replace("batches ran", "the batch ran"), in_a_row, self.cfg.max_nonfinite_steps,
        )
        if in_a_row < self.cfg.max_nonfinite_steps:
            return
        if interval_losses:  # the weights are those of the last good update: worth a checkpoint
            self._save_interval(interval_losses)
        last = self.checkpoints.last
        kept = f"the last checkpoint, {self.run_dir / 'last'} ({last.name}), holds the weights before them" if last \
            else "no checkpoint was written (no step was taken)"
        raise TrainingError(
            f"{self.run_dir}: {what} for {in_a_row} steps in a row after step {self.step} "
            f"(trainer.max_nonfinite_steps={self.cfg.max_nonfinite_steps}); stopped, and {kept}; {fix}, "
            f"then run again to resume"
        )

    def _micro_batches(self, dataset, collate):
        """``((epoch, batch index), batch on device)`` forever, from the saved data position."""
        max_samples = int(self.cfg.batch_seconds * SAMPLE_RATE)
        # a dataset may weight its items (class-balanced keyword spotting): draws with replacement
        weights = dataset.sample_weights() if hasattr(dataset, "sample_weights") else None
        order = epoch_batches(
            dataset.num_samples(), max_samples, seed=self.cfg.seed, start_epoch=self.epoch, skip=self.batch_in_epoch,
            weights=weights,
        )
        positions = []

        def local_batches():
            for epoch, index, batch in order:
                positions.append((epoch, index))
                yield [(epoch, i) for i in shard(batch, self.rank, self.world_size) or batch[:1]]

        # Its own generator: the loader draws a worker base seed when its iterator starts,
        # which from the global RNG would shift every dropout mask after a resume.
        loader = torch.utils.data.DataLoader(
            _EpochItems(dataset), batch_sampler=local_batches(), collate_fn=collate, num_workers=self.cfg.num_workers,
            generator=torch.Generator().manual_seed(self.rank_seed),
        )
        try:
            for batch in loader:
                yield positions.pop(0), to_device(batch, self.device)
        except SpeechSSLError as e:  # raised in a worker, its text holds the worker's traceback: keep its message
            raise type(e)(_worker_message(e)) from None

    def _optimizer_step(self) -> torch.Tensor:
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.cfg.clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return norm.detach()

    def _autocast(self):
        dtype = PRECISIONS[self.cfg.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _mean_over_ranks(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each value averaged over the processes (every rank calls this at the same steps)."""
        if self.world_size == 1:
            return values
        stacked = torch.stack([v.float() for v in values.values()]).to(self.device)
        dist.all_reduce(stacked)
        return dict(zip(values, stacked / self.world_size))

    # -- logging -----------------------------------------------------------------------

    def _tensorboard(self):
        if not self.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        self._truncate_metrics()
        return SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step + 1)

    def _log(self, writer, scalars: dict[str, float]) -> None:
        self.last_loss = scalars["loss"]
        if not self.is_main:
            return
        for k, v in scalars.items():
            writer.add_scalar(f"train/{k}", v, self.step)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **{k: round(v, 6) for k, v in scalars.items()}}) + "\n")
        log.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))

    def _log_eval(self, metrics: dict[str, float]) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **{k: round(v, 6) for k, v in metrics.items()}}) + "\n")
        log.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def _truncate_metrics(self) -> None:
        """On resume, drop metric lines past the restored step (written after the last checkpoint)."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in keep)))

    def _read_results(self) -> dict[str, Any]:
        path = self.run_dir / "results.json"
        return json.loads(path.read_text()) if path.exists() else {"step": self.step}

    # -- checkpoints -------------------------------------------------------------------

    def save(self, train_loss: float) -> None:
        metrics = {"train_loss": train_loss}
        if self.evaluate is not None:
            self.model.eval()
            with torch.no_grad():
                metrics.update(self.evaluate(self.model))
            self.model.train()
        if self.evaluate is not None:
            self._log_eval(metrics)
        name, mode = self.select
        if name not in metrics:
            raise ConfigError(f"checkpoints are chosen by '{name}', which is not among the metrics: {', '.join(metrics)}")
        value = metrics[name]
        improved = self.best is None or (value < self.best if mode == "min" else value > self.best)
        if improved:
            self.best = value
        rng = [self._rng_state()]
        if self.world_size > 1:
            rng = [None] * self.world_size
            dist.all_gather_object(rng, self._rng_state())
        if self.is_main:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "best": self.best,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,  # one entry per rank
                "world_size": self.world_size,
                "nonfinite_steps": self.nonfinite_steps,  # these two not in TRAINER_STATE_KEYS: older states lack them
                "oom_steps": self.oom_steps,
            }
            self.checkpoints.save(self.step, self.model.state_dict(), state, self.export, best=improved)
        if self.world_size > 1:
            dist.barrier()

    def resume(self) -> None:
        folder = self.checkpoints.last
        if folder is None:
            return
        weights, state = self.checkpoints.load(folder)
        try:
            self.model.load_state_dict(weights, strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            rng = state["rng"]
            self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
            self.best = state["best"]
            self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
            self.oom_steps = int(state.get("oom_steps", 0))
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{folder}: checkpoint of another model or config ({first_line(e)})") from e
        if state["world_size"] == self.world_size:
            self._set_rng_state(rng[self.rank])
        else:  # rank 0's global state; a fresh generator per rank, not replaying the first steps' draws
            torch.set_rng_state(rng[0]["cpu"])
            self.generator.manual_seed(self.rank_seed + 7919 * self.step)
            log.warning(
                "%s was written by %d process(es), this run has %d: resumed, but random draws "
                "(masking, dropout) will not repeat those of an unbroken run", folder, state["world_size"],
                self.world_size,
            )
        log.info("resumed from %s at step %d", folder, self.step)

    def _rng_state(self) -> dict[str, torch.Tensor]:
        """This process's random states: the global CPU one (dropout), the trainer's generator, CUDA's."""
        state = {"cpu": torch.get_rng_state(), "generator": self.generator.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["cpu"])
        self.generator.set_state(state["generator"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)


class _EpochItems(torch.utils.data.Dataset):
    """``dataset`` indexed by ``(epoch, index)``: ``dataset.item(index, epoch)`` where it has one."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.by_epoch = hasattr(dataset, "item")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        return self.dataset.item(index, epoch) if self.by_epoch else self.dataset[index]


def _worker_message(error: BaseException) -> str:
    """The message of an error a DataLoader worker raised (the last line of the traceback text
    the loader puts in its place, less the type's name), or its own message."""
    text = str(error).strip()
    if "Original Traceback" not in text:
        return text
    return text.splitlines()[-1].split(": ", 1)[-1]


def _batch_size(batch) -> str:
    """A batch's size in words, for a message: its waveforms' shape, else its type."""
    wavs = batch.get("wavs") if isinstance(batch, dict) else batch
    return f"shape {tuple(wavs.shape)}" if isinstance(wavs, torch.Tensor) else type(batch).__name__


def to_device(batch, device):
    """A batch (tensors, or lists and dicts of them) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _init_distributed(device: str) -> tuple[int, int, str]:
    """Join the torchrun process group if there is one; returns (rank, world size, device)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device
