"""Safe checkpoints: atomic writes, weights in safetensors, nothing unpickled.

An upstream checkpoint is one ``.safetensors`` file whose header metadata holds
the upstream's registered name and its config as JSON, so the file alone
rebuilds the model. A checkpoint folder holds it as ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import safetensors
import safetensors.torch
import torch
from safetensors.torch import load_file

from speechssl.errors import CheckpointError, ConfigError, first_line

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
FORMAT = "speechssl-upstream-1"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then move the file into place: a crash leaves the old file or none.

    The temporary file is in the same folder (so the rename is atomic) and is
    fsynced before the rename; the folder is fsynced after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # after the write: mkstemp makes the file private, and a writer that replaces it
        # (safetensors' save_file renames its own temporary file) leaves it private too;
        # the result reads like any file written here, as the umask allows
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_writable(folder: str | os.PathLike, key: str) -> None:
    """Make ``folder`` and write a file there, or raise :class:`ConfigError` naming the config
    ``key`` (``output``, ``cache.dir``): called before any input is read."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ConfigError(
            f"{key}={folder}: cannot write there ({e.strerror or e}); choose a folder you can write, {key}=DIR"
        ) from e


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomically write ``tensors`` (made contiguous, on the CPU) as safetensors.

    The bytes are written by Python, so a full disk is an ``OSError`` with its errno
    (ENOSPC), which :func:`disk_full` recognises, not a library's own error type.
    """
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(safetensors.torch.save(tensors, metadata=metadata)))


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the disk (or the user's quota) is full."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error)  # what safetensors' and torch's writers say


def save_upstream(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights, name and config; ``path`` is a file or a folder. Returns the file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / MODEL_FILE
    config = dataclasses.asdict(model.config)
    metadata = {"format": FORMAT, "upstream": model.name, "config": json.dumps(config)}
    save_tensors(path, model.state_dict(), metadata)
    return path


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file from a file or folder path (folder: its ``model.safetensors``; a run
    folder: that of its ``last`` checkpoint)."""
    path = Path(path)
    if path.is_dir():
        if not (path / MODEL_FILE).exists() and (path / "last").exists():
            path = path / "last"
        path = path / MODEL_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    return path


def read_upstream_checkpoint(path: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """``(upstream name, config dict, state dict)`` of a checkpoint written by :func:`save_upstream`."""
    file = resolve_checkpoint(path)
    try:
        with safetensors.safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(file))
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors checkpoint ({e})") from e
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{file}: not a speechssl upstream checkpoint (format {metadata.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: config in the checkpoint header is missing or corrupt") from e
    return metadata["upstream"], config, state


# ---------------------------------------------------------------------------
# Training checkpoints: RUN_DIR/checkpoints/step_NNNNNNN/ with
#   model.safetensors    the upstream alone (load_upstream(name, ckpt=that folder))
#   train.safetensors    every trained weight (objective heads, downstream head, ...)
#   trainer_state.pt     optimizer, scheduler, step, data position, RNG states:
#                        tensors and plain containers only, read with weights_only=True
# RUN_DIR/last and RUN_DIR/best are symbolic links to step folders.

TRAIN_WEIGHTS = "train.safetensors"
TRASH_PREFIX = ".trash_"  # a folder being deleted (see _remove_tree)
TRAINER_STATE = "trainer_state.pt"
TRAINER_STATE_KEYS = {"step", "epoch", "batch_in_epoch", "best", "optimizer", "scheduler", "scaler", "rng", "world_size"}


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _point(link: Path, target: Path) -> None:
    """Atomically make ``link`` a relative symbolic link to ``target``."""
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)


class CheckpointManager:
    """Writes step folders atomically, keeps ``last``, ``best`` and the newest ``keep`` folders.

    A folder is written under a temporary name and renamed when complete, so a
    run killed at any moment leaves only complete checkpoints behind.
    """

    def __init__(self, run_dir: str | os.PathLike, keep: int = 2) -> None:
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / "checkpoints"
        self.keep = max(1, keep)

    @property
    def last(self) -> Path | None:
        link = self.run_dir / "last"
        return link.resolve() if link.exists() else None

    def save(
        self,
        step: int,
        weights: dict[str, torch.Tensor],
        state: dict[str, Any],
        export: Callable[[Path], None] | None = None,
        best: bool = False,
    ) -> Path:
        """Write step folder ``step``; a write that fails (a full disk) removes the partial folder
        and raises :class:`CheckpointError`, leaving ``last`` at the previous checkpoint."""
        final = self.folder / f"step_{step:07d}"
        tmp = self.folder / f".step_{step:07d}.tmp"
        if tmp.exists():
            _remove_tree(tmp)
        try:
            tmp.mkdir(parents=True)
            save_tensors(tmp / TRAIN_WEIGHTS, weights, {"format": "speechssl-train-1"})
            buffer = io.BytesIO()  # serialised first, so a full disk is an OSError of the plain write below
            torch.save(state, buffer)
            atomic_write(tmp / TRAINER_STATE, lambda t: Path(t).write_bytes(buffer.getvalue()))
            if export is not None:
                export(tmp)
        except (OSError, safetensors.SafetensorError) as e:
            if tmp.exists():
                _remove_tree(tmp)
            raise CheckpointError(self._failed(step, e)) from e
        if final.exists():
            _remove_tree(final)
        os.rename(tmp, final)
        _fsync_path(self.folder)
        # best first: a run killed between the two resumes from the older last, repeats
        # this step exactly and points best here again (the other order would lose it)
        if best:
            _point(self.run_dir / "best", final)
        _point(self.run_dir / "last", final)
        self._prune()
        return final

    def _failed(self, step: int, error: BaseException) -> str:
        """The one-line message of a checkpoint write that failed."""
        last = self.last
        kept = f"{self.run_dir / 'last'} ({last.name}) is intact" if last else "there is no earlier checkpoint"
        what = "the disk is full" if disk_full(error) else f"the write failed ({first_line(error)})"
        return (
            f"{self.folder / f'step_{step:07d}'}: checkpoint not saved, {what}; the partial folder was removed "
            f"and {kept}; free space under {self.folder} and run the same command again to resume"
        )

    def clean(self) -> None:
        """Remove what a killed run left behind: partial step folders and pruned ones not yet deleted."""
        for leftover in [*self.folder.glob(".step_*.tmp"), *self.folder.glob(TRASH_PREFIX + "*")]:
            log.info("removing %s, left by an interrupted run", leftover)
            _remove_tree(leftover)

    def load(self, folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(weights, trainer state)`` of a step folder; a corrupt one raises CheckpointError."""
        try:
            weights = load_file(str(folder / TRAIN_WEIGHTS))
            state = torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=True)
        except (safetensors.SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise CheckpointError(f"{folder}: unreadable training checkpoint ({first_line(e)})") from e
        if not isinstance(state, dict) or not TRAINER_STATE_KEYS <= set(state):
            missing = sorted(TRAINER_STATE_KEYS - set(state)) if isinstance(state, dict) else ["all"]
            raise CheckpointError(f"{folder}: {TRAINER_STATE} is not a speechssl trainer state (missing {', '.join(missing)})")
        return weights, state

    def _prune(self) -> None:
        pinned = {p.resolve() for p in (self.run_dir / "last", self.run_dir / "best") if p.exists()}
        steps = sorted(self.folder.glob("step_*"))
        for old in steps[: -self.keep]:
            if old.resolve() not in pinned:
                _remove_tree(old)


def _remove_tree(path: Path) -> None:
    """Delete a folder so that a kill never leaves it half-deleted under its own name:
    it is first renamed to a trash name (one atomic step), then deleted;
    :meth:`CheckpointManager.clean` removes any trash a kill left."""
    if path.name.startswith(TRASH_PREFIX) or path.name.endswith(".tmp"):
        shutil.rmtree(path)
        return
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}")
    if trash.exists():
        shutil.rmtree(trash)
    os.rename(path, trash)
    _fsync_path(path.parent)
    shutil.rmtree(trash)
