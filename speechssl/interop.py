"""Checkpoints of other toolkits: find which layout a path holds, read it without running code.

:func:`read_checkpoint` tells the layouts apart; the conversion of each into a
model's config and weights is the model's own (its file registers one converter
per layout, see :func:`speechssl.registry.register`):

- ``speechssl``: ours, a ``.safetensors`` file (or a folder holding ``model.safetensors``,
  or a run folder with its ``last`` link);
- ``hf``: a folder written by ``save_pretrained`` (``config.json`` and ``model.safetensors``,
  ``pytorch_model.bin`` or their shards); content ``{"config": dict, "state": tensors}``;
- ``fairseq``: a pickle of a dict with ``model`` and ``cfg`` (or, older, ``args``);
- ``torchaudio``: a bare state dict (tensors under module names), pickled or safetensors;
- ``s3prl``: any other pickled dict (s3prl's pretraining runners save their config and
  state dicts under their own keys: ``Config`` and ``Transformer``, ``config`` and ``model``,
  ``config`` and ``weights``).

Pickles are read by :func:`speechssl.safe_pickle.load`: ``weights_only=True``, or the
allow-list unpickler for configuration objects; nothing is unpickled as code.
"""

from __future__ import annotations

import ast
import json
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors.torch import load_file

from speechssl import safe_pickle
from speechssl.checkpoint import FORMAT, MODEL_FILE, read_upstream_checkpoint
from speechssl.errors import CheckpointError

FORMATS = ("s3prl", "fairseq", "hf", "torchaudio")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Ours:
    """A speechssl checkpoint: the upstream's registered name, its config and its weights."""

    name: str
    config: dict[str, Any]
    state: dict[str, torch.Tensor]


@dataclass
class Foreign:
    """A checkpoint of another toolkit: its layout (one of :data:`FORMATS`), where it is, what it holds."""

    format: str
    path: Path
    content: dict

    def describe(self) -> str:
        """What was found, in a few words, for error messages."""
        if self.format == "fairseq":
            return f"a fairseq checkpoint of a '{fairseq_model_name(self.content)}' model"
        if self.format == "hf":
            config = self.content["config"]
            return f"an HF '{config.get('model_type', '?')}' folder ({', '.join(config.get('architectures') or ['?'])})"
        if self.format == "torchaudio":
            keys = list(self.content)
            return f"a bare state dict of {len(keys)} tensors ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        return f"a checkpoint dict with keys {', '.join(map(str, sorted(self.content, key=str)))} (s3prl's layout?)"


def read_checkpoint(path: str | os.PathLike) -> Ours | Foreign:
    """The checkpoint at ``path`` (file, checkpoint folder, run folder, HF folder), its layout told apart."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file() and not _is_ours(path / MODEL_FILE):
            return Foreign("hf", path, _read_hf_folder(path))
        if not (path / MODEL_FILE).exists() and (path / "last").exists():
            return read_checkpoint(path / "last")  # a run folder: its last checkpoint
        return Ours(*read_upstream_checkpoint(path))
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.suffix == ".safetensors":
        if _is_ours(path):
            return Ours(*read_upstream_checkpoint(path))
        return Foreign("torchaudio", path, _read_safetensors(path))
    content = safe_pickle.load(path)
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: holds a {type(content).__name__}, not a checkpoint dict")
    if "model" in content and ("cfg" in content or "args" in content):
        return Foreign("fairseq", path, content)
    if content and all(isinstance(v, torch.Tensor) for v in content.values()):
        return Foreign("torchaudio", path, content)
    return Foreign("s3prl", path, content)


def _is_ours(file: Path) -> bool:
    """Whether ``file`` is a readable safetensors file with our header (an unreadable one counts as ours,
    so that :func:`read_upstream_checkpoint` says what is wrong with it)."""
    if not file.is_file():
        return False
    try:
        with safetensors.safe_open(str(file), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except (safetensors.SafetensorError, OSError, ValueError):
        return True


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors checkpoint ({e})") from e


def _read_hf_folder(folder: Path) -> dict:
    """``{"config": config.json, "state": the weights}`` of a ``save_pretrained`` folder."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: not a readable HF config ({e})") from e
    for name in HF_WEIGHTS:
        index = folder / f"{name}.index.json"  # sharded weights
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(_read_hf_weights(folder / shard))
            return {"config": config, "state": state}
        if (folder / name).is_file():
            return {"config": config, "state": _read_hf_weights(folder / name)}
    raise CheckpointError(f"{folder}: an HF config.json without weights (expected one of {', '.join(HF_WEIGHTS)})")


def _read_hf_weights(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        return _read_safetensors(file)
    state = safe_pickle.load(file)
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: holds a {type(state).__name__}, not a state dict")
    return state


# --------------------------------------------------------------------------- fairseq's layout, shared by its models


def fairseq_model_config(content: dict) -> dict[str, Any]:
    """The model's hyperparameters of a fairseq checkpoint: ``cfg["model"]`` or the older ``args``."""
    cfg = content.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"]
    args = content.get("args")
    if isinstance(args, dict):
        return args
    raise CheckpointError("a fairseq checkpoint without a model config (neither cfg['model'] nor args)")


def fairseq_model_name(content: dict) -> str:
    """fairseq's name of the model: ``cfg.model._name`` or ``args.arch``."""
    try:
        config = fairseq_model_config(content)
    except CheckpointError:
        return "?"
    return str(config.get("_name") or config.get("arch") or "?")


_OPERATORS = {ast.Add: operator.add, ast.Mult: operator.mul, ast.Sub: operator.sub}


def fairseq_literal(value: Any) -> Any:
    """A fairseq config value that fairseq writes as a Python expression string
    (``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``): evaluated here from its syntax tree, which may
    hold only constants, lists, tuples, unary minus and ``+ - *``; anything else is refused."""
    if not isinstance(value, str):
        return value

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [evaluate(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -evaluate(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](evaluate(node.left), evaluate(node.right))
        raise CheckpointError(f"fairseq config value {value!r} is not a literal expression")

    try:
        return evaluate(ast.parse(value, mode="eval").body)
    except SyntaxError as e:
        raise CheckpointError(f"fairseq config value {value!r} is not a literal expression") from e


# --------------------------------------------------------------------------- options a converter reproduces


def refuse_unreproduced(found: dict, expected: dict, extra: dict | None = None, what: str = "options") -> None:
    """A :class:`CheckpointError` naming each entry of ``found`` unlike ``expected`` (the only value
    the converter reproduces) and each key of ``extra`` (options it does not know); else nothing."""
    unlike = [f"{k}={found[k]!r} (we compute {v!r})" for k, v in expected.items() if found[k] != v]
    unlike += [f"{k}={v!r} (not supported)" for k, v in (extra or {}).items()]
    if unlike:
        raise CheckpointError(f"{what} not reproduced: {', '.join(unlike)}")


# --------------------------------------------------------------------------- export


def export_upstream(ckpt: str | os.PathLike, format: str, out: str | os.PathLike) -> Path:
    """Write the speechssl checkpoint ``ckpt`` in another toolkit's layout under folder ``out``.

    ``format="hf"``: ``config.json`` and ``model.safetensors`` that ``transformers`` loads
    with ``AutoModel.from_pretrained(out)`` (the upstream's registered exporter makes both).
    Returns ``out``.
    """
    from speechssl.checkpoint import atomic_write, save_tensors
    from speechssl.errors import ConfigError
    from speechssl.registry import get_entry, load_upstream

    found = read_checkpoint(ckpt)
    if not isinstance(found, Ours):
        raise CheckpointError(f"{ckpt}: export reads speechssl checkpoints; found {found.describe()}")
    exporters = get_entry(found.name).exporters
    if format not in exporters:
        raise ConfigError(
            f"format={format!r}: upstream '{found.name}' exports to {', '.join(sorted(exporters)) or 'no other layout'}"
        )
    config, state = exporters[format](load_upstream(found.name, ckpt))
    out = Path(out)
    atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    save_tensors(out / "model.safetensors", state, {"format": "pt"})  # HF's header
    return out
