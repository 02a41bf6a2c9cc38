"""s3prl's own upstreams behind our interface: ``load_upstream("s3prl:NAME", ckpt=PATH)``.

For models speechssl does not implement (WavLM, data2vec, DistilHuBERT, ...), so that
they run through our benchmark, feature cache and extraction. s3prl is installed
without its dependencies (``pip install --no-deps s3prl``, as the Makefile does): its
hub and ``s3prl.nn`` need an old torchaudio, but each ``s3prl/upstream/NAME/expert.py``
imports on its own, and that is all the bridge imports.

The checkpoint is read by :func:`speechssl.safe_pickle.load` before s3prl sees it, and
s3prl's own ``torch.load`` calls are routed through it while the expert is built: a
pickle that would run code is refused, whatever s3prl asks for.

From the command line: ``upstream=s3prl upstream.expert=NAME upstream.ckpt=PATH``
(``configs/upstream/s3prl.yaml``, whose ``name`` is ``s3prl:NAME``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from unittest import mock

import torch
from torch.nn.utils.rnn import pad_sequence

from speechssl import safe_pickle
from speechssl.errors import ConfigError
from speechssl.interface import Features, Upstream, zero_padding


@dataclass
class S3PRLConfig:
    """Which s3prl upstream (``s3prl/upstream/EXPERT``) and its checkpoint."""

    expert: str = ""
    ckpt: Optional[str] = None


def s3prl_experts() -> list[str]:
    """The upstreams of the installed s3prl: each ``s3prl/upstream/NAME`` with an ``expert.py``."""
    spec = importlib.util.find_spec("s3prl")
    if spec is None or spec.origin is None:
        raise ConfigError("the s3prl bridge needs s3prl: `pip install --no-deps s3prl` (or the s3prl extra)")
    return sorted(p.parent.name for p in (Path(spec.origin).parent / "upstream").glob("*/expert.py"))


class S3PRLUpstream(Upstream):
    """An s3prl ``UpstreamExpert`` as an :class:`Upstream`.

    Hidden states: s3prl's ``hidden_states``, in s3prl's order for that model (which may
    differ from ours: s3prl's APC has no input-feature state, for instance). Every
    utterance runs through the expert alone, so its features never depend on the batch
    (s3prl's padded batches do for some models) and its frame count is exactly what s3prl
    gives it: ``lengths``, and :meth:`num_frames` (measured once per length, on zeros).
    ``downsample_rate`` is the expert's; ``min_samples`` is a 25 ms window, which every
    s3prl front-end needs at most.
    """

    min_samples = 400

    def __init__(self, config: S3PRLConfig, expert: torch.nn.Module) -> None:
        super().__init__(config)
        self.name = f"s3prl:{config.expert}"
        self.expert = expert
        self.downsample_rate = int(expert.get_downsample_rates("hidden_states"))
        self._frames: dict[int, int] = {}
        with torch.no_grad():
            self._sizes = [h.shape[-1] for h in self._states(torch.zeros(16000))]

    @classmethod
    def load(cls, expert: str, ckpt: str | os.PathLike | None, **overrides) -> "S3PRLUpstream":
        """s3prl's upstream ``expert`` with the weights of ``ckpt`` (s3prl's checkpoint of that model)."""
        if overrides:
            raise ConfigError(f"s3prl:{expert}: config keys {', '.join(sorted(overrides))} do not apply to an s3prl upstream")
        known = s3prl_experts()
        if not expert:
            raise ConfigError(f"the s3prl bridge needs an expert: s3prl:NAME (upstream.expert=NAME); known: {', '.join(known)}")
        if expert not in known:
            raise ConfigError(f"unknown s3prl expert '{expert}' (no s3prl/upstream/{expert}/expert.py); known: {', '.join(known)}")
        if ckpt is None:
            raise ConfigError(f"s3prl:{expert} needs its s3prl checkpoint: ckpt=PATH (upstream.ckpt=PATH on the command line)")
        safe_pickle.load(ckpt)  # refused here if it asks for code, before s3prl reads it
        try:
            module = importlib.import_module(f"s3prl.upstream.{expert}.expert")
        except ImportError as e:
            raise ConfigError(
                f"s3prl:{expert}: cannot import s3prl.upstream.{expert}.expert ({e}): s3prl is installed without "
                "its dependencies, and this upstream needs one that is missing"
            ) from e
        with _safe_torch_load():
            model = module.UpstreamExpert(str(ckpt))
        return cls(S3PRLConfig(expert, str(ckpt)), model)

    @property
    def hidden_sizes(self) -> list[int]:
        return list(self._sizes)

    def _states(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """One utterance ``(S,)`` -> s3prl's hidden states, each ``(T, D)``."""
        return [h[0] for h in self.expert([wav])["hidden_states"]]

    def num_frames(self, wav_lens):
        """Frames s3prl gives an utterance of each length (measured once per length)."""
        lengths = torch.as_tensor(wav_lens)
        for n in {int(n) for n in lengths.reshape(-1).tolist()} - set(self._frames):
            with torch.no_grad():
                self._frames[n] = self._states(torch.zeros(n))[0].shape[0]
        frames = torch.tensor([self._frames[int(n)] for n in lengths.reshape(-1).tolist()]).view(lengths.shape)
        return frames if isinstance(wav_lens, torch.Tensor) else int(frames)

    def input_frames(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The waveforms themselves, ``(B, S, 1)``: s3prl's expert computes its own features."""
        return wavs[..., None], wav_lens

    def encoder(self, x: torch.Tensor, lengths: torch.Tensor) -> Features:
        """``(B, S, 1)`` waveforms and ``(B,)`` samples -> s3prl's hidden states, each utterance run alone."""
        # one expert call per utterance: the host reads the lengths once per batch, at this boundary
        per_utterance = [self._states(x[b, :n, 0]) for b, n in enumerate(lengths.tolist())]
        frames = torch.tensor([states[0].shape[0] for states in per_utterance], device=x.device)
        hidden = [pad_sequence([states[i] for states in per_utterance], batch_first=True) for i in range(len(self._sizes))]
        return Features(zero_padding(hidden, frames), frames)


@contextlib.contextmanager
def _safe_torch_load():
    """While s3prl builds its expert, its ``torch.load`` calls read through :func:`safe_pickle.load`."""

    def load(f, *args, **kwargs):
        return safe_pickle.load(f)

    with mock.patch.object(torch, "load", load):
        yield
