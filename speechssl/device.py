"""Which device a command runs on: checked once, before any work, with a readable error."""

from __future__ import annotations

import torch

from speechssl.errors import ConfigError


def check_device(device: str) -> str:
    """``device`` itself if this machine has it (``cpu``, ``cuda``, ``cuda:N``); else a :class:`ConfigError`."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device={device!r}: not a device; expected cpu, cuda or cuda:N") from e
    if parsed.type == "cpu":
        return device
    if parsed.type != "cuda":
        raise ConfigError(f"device={device!r}: speechssl runs on cpu or cuda (cuda:N)")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={device}, but CUDA is not available on this machine")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
