"""A disk cache of a frozen upstream's hidden states: computed once per utterance, read ever after.

SUPERB trains a downstream head on a frozen upstream; s3prl runs the upstream on
every batch of every epoch. Here :meth:`FeatureCache.fill` runs it once per
utterance (batched by duration, with a progress bar) and stores every hidden
state in safetensors shards; training epochs and every run of a learning-rate
sweep read them back without touching the upstream.

Layout: ``ROOT/<upstream>-<fingerprint>/<corpus>/`` with ``index.json`` (utterance id
-> its shard and the audio it came from) and ``shard_NNNNN.safetensors`` (tensors
``<id>/<layer>``, (T, D), and ``<id>/extra/<name>``, (D,), for each per-utterance output
the upstream declares in ``extra_sizes``). The fingerprint hashes the upstream's name, config, weights
and the storage dtype, so a retrained checkpoint never reads stale features. Each
utterance also keeps the identity of its audio (resolved path, offset, samples, file
size and modification time): a corpus of the same name made elsewhere or made again
(SUPERB-lite ``tiny`` and ``small`` share their utterance ids) is recomputed, never
read from another corpus's features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from speechssl.checkpoint import atomic_write, check_writable, save_tensors
from speechssl.data.audio import SAMPLE_RATE, collate
from speechssl.data.manifest import load_utterance
from speechssl.data.sampler import plan_batches
from speechssl.errors import AudioError
from speechssl.interface import Upstream

log = logging.getLogger(__name__)


def upstream_fingerprint(upstream: Upstream, dtype: torch.dtype) -> str:
    """16 hex digits identifying the upstream's name, config and weights, and the cache dtype."""
    h = hashlib.sha256()
    h.update(upstream.name.encode())
    h.update(json.dumps(dataclasses.asdict(upstream.config), sort_keys=True).encode())
    h.update(str(dtype).encode())
    for key, value in sorted(upstream.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def audio_source(row: dict) -> str:
    """What a manifest row's audio is: resolved path, offset, samples, file size and mtime (ns)."""
    path = Path(row["path"]).resolve()
    try:
        stat = path.stat()
    except OSError as e:
        raise AudioError(f"{path}: cannot read ({e.strerror}), listed as utterance {row['id']}") from e
    return f"{path}|{row.get('offset') or 0}|{row['num_samples']}|{stat.st_size}|{stat.st_mtime_ns}"


class FeatureCache:
    """Hidden states of ``upstream`` for the utterances of ``corpus``, under ``root``."""

    def __init__(
        self,
        root: str | os.PathLike,
        upstream: Upstream,
        corpus: str,
        *,
        dtype: torch.dtype = torch.float16,
        device: str = "cpu",
        batch_seconds: float = 160.0,
    ) -> None:
        self.upstream = upstream
        self.dtype, self.device, self.batch_seconds = dtype, device, batch_seconds
        self.folder = Path(root) / f"{upstream.name}-{upstream_fingerprint(upstream, dtype)}" / corpus
        check_writable(self.folder, "cache.dir")  # before any audio is read
        index_file = self.folder / "index.json"
        self.index: dict[str, dict] = json.loads(index_file.read_text()) if index_file.exists() else {}
        self._open: dict[str, object] = {}

    def fill(self, utterances: list[dict]) -> int:
        """Compute and store the utterances (rows with id, path, num_samples) not cached yet; returns how many.

        An utterance cached from other audio (another file under the same id, or the
        same file rewritten) counts as not cached.
        """
        short = [u for u in utterances if self.upstream.too_short(u["num_samples"])]
        if short:
            raise AudioError(
                f"{len(short)} utterance(s) {self.upstream.too_short(short[0]['num_samples'])}, "
                f"e.g. {short[0]['path']} ({short[0]['num_samples']} samples)"
            )
        sources = {u["id"]: audio_source(u) for u in utterances}
        todo = [u for u in utterances if self.index.get(u["id"], {}).get("source") != sources[u["id"]]]
        if not todo:
            return 0
        stale = sum(u["id"] in self.index for u in todo)
        if stale:
            log.info("%s: %d cached utterance(s) came from other audio; computing them again", self.folder, stale)
        model = self.upstream.to(self.device).eval()
        max_samples = int(self.batch_seconds * SAMPLE_RATE)
        shard = max((int(p.stem.split("_")[1]) for p in self.folder.glob("shard_*.safetensors")), default=-1)
        with tqdm(total=len(todo), desc=f"features {self.upstream.name}", unit="utt") as progress:
            for batch in plan_batches([u["num_samples"] for u in todo], max_samples):
                rows = [todo[i] for i in batch]
                wavs, wav_lens = collate([load_utterance(r) for r in rows])
                with torch.inference_mode():
                    feats = model(wavs.to(self.device), wav_lens.to(self.device))
                lengths = feats.lengths.cpu()
                tensors = {
                    f"{r['id']}/{layer}": h[b, : lengths[b]].to(self.dtype)
                    for layer, h in enumerate(feats.hidden_states)
                    for b, r in enumerate(rows)
                }
                for name in self.upstream.extra_sizes:  # per-utterance outputs: DeLoRes's embedding
                    tensors.update({f"{r['id']}/extra/{name}": feats.extra[name][b].to(self.dtype) for b, r in enumerate(rows)})
                shard += 1
                name = f"shard_{shard:05d}.safetensors"
                save_tensors(self.folder / name, tensors, {"upstream": self.upstream.name})
                self.index.update({r["id"]: {"shard": name, "source": sources[r["id"]]} for r in rows})
                self._save_index()
                progress.update(len(rows))
        return len(todo)

    def load(self, utt_id: str) -> list[torch.Tensor]:
        """Every hidden state of one utterance, float32 ``(T, D)`` each, layer 0 first."""
        handle = self._handle(utt_id)
        return [handle.get_tensor(f"{utt_id}/{layer}").float() for layer in range(self.upstream.num_layers)]

    def load_layer(self, utt_id: str, layer: int) -> torch.Tensor:
        """One hidden state ``(T, D)`` float32 of one utterance, the others left unread."""
        return self._handle(utt_id).get_tensor(f"{utt_id}/{layer}").float()

    def num_frames(self, utt_id: str, layer: int = 0) -> int:
        """The frames ``T`` of one utterance's hidden state ``layer``, read from the shard's header."""
        return self._handle(utt_id).get_slice(f"{utt_id}/{layer}").get_shape()[0]

    def load_extra(self, utt_id: str, name: str) -> torch.Tensor:
        """The per-utterance output ``name`` of one utterance (see ``Upstream.extra_sizes``), float32 ``(D,)``."""
        return self._handle(utt_id).get_tensor(f"{utt_id}/extra/{name}").float()

    def _handle(self, utt_id: str):
        """The open safetensors shard that holds ``utt_id`` (opened once, kept)."""
        name = self.index[utt_id]["shard"]
        if name not in self._open:
            self._open[name] = safe_open(str(self.folder / name), framework="pt")
        return self._open[name]

    def _save_index(self) -> None:
        text = json.dumps(self.index)
        atomic_write(self.folder / "index.json", lambda tmp: Path(tmp).write_text(text))
