"""Upstream registry: a name -> (model class, config dataclass, converters of other toolkits' checkpoints).

Each file of the ``upstream`` package calls :func:`register` at import; the core
never imports a model by name, it imports the package's modules on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from speechssl.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class UpstreamEntry:
    name: str
    cls: type
    config_cls: type
    tiny: dict[str, Any] = field(default_factory=dict)  # overrides for a model small enough for tests
    objective: type | None = None  # a speechssl.objective.Objective subclass, built as objective(upstream)
    converters: dict[str, Callable] = field(default_factory=dict)  # layout -> (content, overrides) -> (config, state)
    exporters: dict[str, Callable] = field(default_factory=dict)  # layout -> model -> (config dict, state dict)


_REGISTRY: dict[str, UpstreamEntry] = {}
_discovered = False


def register(
    name: str,
    cls: type,
    config_cls: type,
    *,
    objective: type | None = None,
    tiny: dict[str, Any] | None = None,
    converters: dict[str, Callable] | None = None,
    exporters: dict[str, Callable] | None = None,
) -> None:
    """Make ``cls`` loadable (and, with an ``objective``, pretrainable) as ``name``.

    ``objective(upstream)`` is a :class:`speechssl.objective.Objective`: its
    ``forward(batch, *, step, generator)`` returns ``(loss, logs)``, a scalar loss
    and a dict of detached scalar tensors to log, and it says how its batch is
    made. ``tiny`` overrides give a test-sized model.

    ``converters`` import other toolkits' checkpoints, one per layout of
    :data:`speechssl.interop.FORMATS` (``"s3prl"``, ``"fairseq"``, ``"hf"``,
    ``"torchaudio"``): ``convert(content, overrides) -> (config, state dict)``, where
    ``content`` is what :func:`speechssl.interop.read_checkpoint` read (plain data and
    tensors) and ``overrides`` the caller's config keys (for what a layout does not hold,
    such as a torchaudio state dict's attention heads); a checkpoint of another model
    raises :class:`CheckpointError` saying what it holds. ``exporters`` write the model in
    another toolkit's layout: ``export(model) -> (config dict, state dict)``
    (:func:`speechssl.interop.export_upstream`).
    """
    if name in _REGISTRY and _REGISTRY[name].cls is not cls:
        raise ConfigError(f"upstream '{name}' registered twice ({_REGISTRY[name].cls} and {cls})")
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{name}: config class {config_cls} is not a dataclass")
    from speechssl.interop import FORMATS

    unknown = sorted((set(converters or {}) | set(exporters or {})) - set(FORMATS))
    if unknown:
        raise ConfigError(f"upstream '{name}': unknown checkpoint layout(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    _REGISTRY[name] = UpstreamEntry(name, cls, config_cls, dict(tiny or {}), objective, dict(converters or {}), dict(exporters or {}))


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import upstream

    for module in pkgutil.iter_modules(upstream.__path__):
        if module.name != "modules" and not module.name.startswith("_"):
            importlib.import_module(f"upstream.{module.name}")
    _discovered = True


def list_upstreams() -> list[str]:
    """Names of every registered upstream, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_entry(name: str) -> UpstreamEntry:
    _discover()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown upstream '{name}'; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make_config(name: str, **overrides: Any):
    """The upstream's config dataclass with ``overrides`` applied; a misspelt key raises."""
    entry = get_entry(name)
    known = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"upstream '{name}': unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return entry.config_cls(**overrides)


def build_upstream(name: str, **overrides: Any):
    """A freshly initialised upstream ``name`` with config ``overrides``."""
    entry = get_entry(name)
    model = entry.cls(make_config(name, **overrides))
    model.name = name
    return model


def random_upstream(name: str, *, seed: int, ckpt: str | os.PathLike | None = None, **overrides: Any):
    """Upstream ``name`` untrained, its weights drawn from ``seed`` alone, in eval mode: the random-init control.

    With ``ckpt`` the config saved in it is used (``overrides`` on top), never its
    weights: the control of a pretrained checkpoint is the same architecture. The
    global torch RNG is left as it was. An upstream without weights (a fixed
    front-end such as ``fbank``) has no random-init control: :class:`ConfigError`.
    """
    import torch

    config = _checkpoint_of(name, ckpt, overrides)[0] if ckpt is not None else {}
    with torch.random.fork_rng(devices=[]):  # the CPU generator only: the model is built on the CPU
        torch.manual_seed(seed)
        model = build_upstream(name, **{**config, **overrides})
    if next(model.parameters(), None) is None:
        raise ConfigError(
            f"init=random: upstream '{name}' has no weights (a fixed front-end), so it has no random-init control; "
            "benchmark it with init=pretrained"
        )
    return model.eval()


def load_upstream(name: str, ckpt: str | os.PathLike | None = None, **overrides: Any):
    """Upstream ``name``, with the weights and config of ``ckpt`` if given, in eval mode.

    ``ckpt`` is a speechssl checkpoint (a ``.safetensors`` file, a checkpoint folder
    holding one, or a run folder: its ``last``), or one of another toolkit that the
    upstream's converters import: s3prl, fairseq, an HF ``save_pretrained`` folder or a
    torchaudio state dict (see :mod:`speechssl.interop`). The config saved with it is
    used, ``overrides`` on top. A checkpoint of another model raises :class:`CheckpointError`.

    ``name="s3prl:NAME"`` wraps s3prl's own upstream ``NAME`` with ``ckpt``
    (:class:`speechssl.s3prl_bridge.S3PRLUpstream`).
    """
    if name.startswith("s3prl:"):
        from speechssl.s3prl_bridge import S3PRLUpstream

        return S3PRLUpstream.load(name[len("s3prl:"):], ckpt, **overrides).eval()
    if ckpt is None:
        model = build_upstream(name, **overrides)
        return model.eval()
    config, state = _checkpoint_of(name, ckpt, overrides)
    model = build_upstream(name, **{**config, **overrides})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        problems = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        shown = "; ".join(problems[:2]) + (f"; and {len(problems) - 2} more" if len(problems) > 2 else "")
        raise CheckpointError(f"{ckpt}: weights do not fit upstream '{name}' with this config: {shown}") from e
    return model.eval()


def _checkpoint_of(name: str, ckpt: str | os.PathLike, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """``(config, weights)`` saved in ``ckpt``; a checkpoint of another upstream raises :class:`CheckpointError`."""
    from speechssl.interop import Ours, read_checkpoint

    found = read_checkpoint(ckpt)
    if isinstance(found, Ours):
        if found.name != name:
            raise CheckpointError(f"{ckpt}: holds a '{found.name}' upstream, not '{name}'")
        return found.config, found.state
    converters = get_entry(name).converters
    if found.format not in converters:
        imports = ", ".join(sorted(converters)) or "none"
        raise CheckpointError(
            f"{ckpt}: not a speechssl upstream checkpoint but {found.describe()}; upstream '{name}' imports "
            f"speechssl checkpoints and these layouts: {imports}"
        )
    try:
        return converters[found.format](found.content, dict(overrides))
    except CheckpointError as e:
        raise CheckpointError(f"{ckpt}: {e}") from e
