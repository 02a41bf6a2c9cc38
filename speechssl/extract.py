"""Feature extraction to disk: audio files -> one safetensors file per utterance + an index.

Used by ``speechssl extract``; callable from Python with a loaded upstream.
Batches are filled by total padded duration, longest utterances first, so memory
stays bounded whatever the mix of lengths. A file that cannot be read is reported
by name and skipped; the others are still extracted.

On disk: ``output/ID.safetensors`` per utterance, holding ``hidden_state_00``,
``hidden_state_01``, .. (``layer=all``) or ``features`` (one layer or the
weighted sum), each float32 ``(frames, dim)``; with ``codes=True`` also
``codes``, int64 ``(frames, groups)``: the discrete code ids of each frame
(``Features.extra["codes"]``, vq-wav2vec's units, the input of its "discrete
units + BERT" recipe), on the same frames as the features. The metadata names
the upstream, the layer, the source file, ``downsample_rate`` and
``num_samples``. ``output/index.tsv`` lists id, source, feature file,
``num_frames`` and ``num_samples``, one utterance a row.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from speechssl.checkpoint import atomic_write, check_writable, save_tensors
from speechssl.data.audio import (
    SAMPLE_RATE,
    collate,
    find_audio,
    load_audio,
    resampled_length,
)
from speechssl.data.sampler import plan_batches
from speechssl.device import check_device
from speechssl.errors import AudioError, ConfigError
from speechssl.interface import Featurizer, Upstream

log = logging.getLogger(__name__)

INDEX_FILE = "index.tsv"
CHUNK_SECONDS = 30  # chunk length for upstreams with chunk_context (see extract)


@dataclass
class ExtractReport:
    written: list[str] = field(default_factory=list)  # utterance ids
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def extract(
    upstream: Upstream,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    layer: str | int = "all",
    device: str = "cpu",
    batch_seconds: float = 160.0,
    codes: bool = False,
    max_seconds: float | None = 300.0,
    overwrite: bool = False,
) -> ExtractReport:
    """Extract features of every utterance under ``source`` into ``output``.

    ``layer="all"`` writes every hidden state as ``hidden_state_NN`` (T, D) tensors;
    ``"weighted"``, ``"last"`` or an int writes one ``features`` (T, D) tensor through a
    :class:`Featurizer` (``"weighted"`` with equal weights: the mean of the layers).
    ``output/index.tsv`` lists id, source path, feature file, frames and samples.
    ``codes=True`` also writes the upstream's discrete code ids as ``codes`` (T, G)
    int64; an upstream without ``Features.extra["codes"]`` raises :class:`ConfigError`
    before any audio is read.

    Long inputs: an upstream with ``chunk_context`` (outputs local to their frames: the
    baselines without CMVN) gets a file longer than ``CHUNK_SECONDS`` in chunks that
    overlap by that context, read from disk chunk by chunk, so memory stays bounded
    whatever the length and the frames equal those of the whole input. Every other
    upstream takes an utterance whole (attention over all of it, recurrence, utterance
    statistics: memory and time grow with its length, quadratically for attention), so
    a file longer than ``max_seconds`` (None: no limit) is skipped, from its header alone.

    Into a folder that holds an earlier extraction, rows are added to ``index.tsv`` (an
    utterance extracted again replaces its row); features of another upstream or layer
    are refused unless ``overwrite=True``, which deletes the earlier features first.
    The folder is checked writable before any audio is read.
    """
    check_device(device)
    featurizer = None if layer == "all" else Featurizer(upstream, layer).to(device)
    upstream = upstream.to(device).eval()
    if codes:
        _check_codes(upstream, device)
    output = Path(output)
    check_writable(output, "output")
    earlier = _earlier_rows(output, upstream.name, str(layer), overwrite)
    report = ExtractReport()

    items, long_items = [], []  # (id, path, num_samples)
    for utt_id, path in find_audio(source):
        try:
            num_samples = resampled_length(path)
            if upstream.chunk_context is not None and num_samples > CHUNK_SECONDS * SAMPLE_RATE:
                long_items.append((utt_id, path, num_samples))
                continue
            if max_seconds is not None and num_samples > max_seconds * SAMPLE_RATE:
                raise AudioError(
                    f"{path}: {num_samples / SAMPLE_RATE:.1f} s, longer than max_seconds={max_seconds:g}: "
                    f"'{upstream.name}' takes an utterance whole, so memory and time grow with its length; "
                    f"cut the file into parts, or raise max_seconds=S if the device holds it"
                )
            items.append((utt_id, path, num_samples))
        except AudioError as e:
            _skip(report, path, str(e))

    rows = []
    total = sum(n for _, _, n in items + long_items) / SAMPLE_RATE
    with tqdm(total=round(total, 1), unit="s", desc="extract") as progress, torch.inference_mode():
        for batch in plan_batches([n for _, _, n in items], int(batch_seconds * SAMPLE_RATE)):
            loaded = []
            for i in batch:
                utt_id, path, num_samples = items[i]
                try:
                    wav = load_audio(path)
                    problem = upstream.too_short(len(wav))
                    if problem:
                        raise AudioError(f"{path}: {len(wav)} samples, {problem}")
                    loaded.append((utt_id, path, wav))
                except AudioError as e:
                    _skip(report, path, str(e))
            if loaded:
                rows += _extract_batch(upstream, featurizer, loaded, output, layer, device, report, codes)
            # after the batch is through the upstream: the bar counts audio processed, not read
            progress.update(round(sum(items[i][2] for i in batch) / SAMPLE_RATE, 1))
        for utt_id, path, num_samples in long_items:
            try:
                rows.append(_extract_chunked(upstream, featurizer, utt_id, path, num_samples, output, layer, device,
                                             codes, progress))
                report.written.append(utt_id)
            except AudioError as e:
                _skip(report, path, str(e))
    new = {row[0] for row in rows}
    _write_index(output / INDEX_FILE, [row for row in earlier if row[0] not in new] + rows)
    return report


def _extract_chunked(upstream, featurizer, utt_id, path, num_samples, output, layer, device, codes, progress) -> list:
    """One long file through an upstream with ``chunk_context``, in overlapping chunks read one at a time.

    A chunk starting at sample ``a`` (a multiple of the hop) gives the frames of the whole
    input from ``a / hop`` on; of each chunk only the frames whose context lies inside it
    are kept, so the result equals the whole input's frames.
    """
    hop = upstream.downsample_rate
    context = -(-upstream.chunk_context // hop) * hop  # whole frames
    step = CHUNK_SECONDS * SAMPLE_RATE // hop * hop
    total = int(upstream.num_frames(torch.tensor([num_samples]))[0])
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, num_samples, step):
        a, b = max(0, start - context), min(num_samples, start + step + context)
        wav = load_audio(path, start=a, stop=b)
        feats = upstream(wav[None].to(device), torch.tensor([len(wav)], device=device))
        named = _named_outputs(feats, featurizer, codes)
        first, last = start // hop, total if b == num_samples else (start + step) // hop
        for name, value in named.items():
            parts.setdefault(name, []).append(value[0, first - a // hop : last - a // hop].cpu())
        progress.update(round((min(start + step, num_samples) - start) / SAMPLE_RATE, 1))
        if b == num_samples:
            break
    tensors = {name: torch.cat(chunks) for name, chunks in parts.items()}
    target = output / f"{utt_id}.safetensors"
    metadata = {"upstream": upstream.name, "layer": str(layer), "source": str(path),
                "downsample_rate": str(hop), "num_samples": str(num_samples), "chunked": str(step)}
    save_tensors(target, tensors, metadata)
    return [utt_id, str(path), str(target.relative_to(output)), total, num_samples]


def _named_outputs(feats, featurizer, codes: bool) -> dict[str, torch.Tensor]:
    """The tensors written per utterance, each ``(B, T, ...)``: every hidden state, or one ``features``; ``codes``."""
    if featurizer is None:
        named = {f"hidden_state_{i:02d}": h for i, h in enumerate(feats.hidden_states)}
    else:
        named = {"features": featurizer(feats)[0]}
    if codes:
        named["codes"] = feats.extra["codes"]  # (B, T, G) int64
    return named


def _earlier_rows(output: Path, name: str, layer: str, overwrite: bool) -> list[list]:
    """The rows of an earlier extraction into ``output`` to keep; refuses one of another upstream or layer."""
    index = output / INDEX_FILE
    if not index.exists():
        return []
    with open(index, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    if overwrite:
        for row in rows:
            (output / row[2]).unlink(missing_ok=True)
        log.info("overwrite=true: deleted the %d earlier feature file(s) listed in %s", len(rows), index)
        return []
    for row in rows:
        file = output / row[2]
        if file.exists():
            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
            if (meta.get("upstream"), meta.get("layer")) != (name, layer):
                raise ConfigError(
                    f"output={output} holds features of upstream '{meta.get('upstream')}' layer "
                    f"{meta.get('layer')} ({index}); these would be '{name}' layer {layer}: choose another "
                    f"output=DIR, or overwrite=true to delete the earlier ones"
                )
            break
    return rows


def _check_codes(upstream: Upstream, device: str) -> None:
    """Refuse ``codes=True`` for an upstream whose features carry no ``extra["codes"]`` (one short forward pass)."""
    with torch.inference_mode():
        extra = upstream(torch.zeros(1, max(upstream.min_samples, SAMPLE_RATE // 10), device=device)).extra
    if "codes" not in extra:
        has = ", ".join(sorted(extra)) or "none"
        raise ConfigError(
            f"codes=true: upstream '{upstream.name}' has no discrete codes (Features.extra['codes']; "
            f"its extra outputs: {has})"
        )


def _extract_batch(upstream, featurizer, loaded, output, layer, device, report, codes=False) -> list[list]:
    wavs, wav_lens = collate([wav for _, _, wav in loaded])
    feats = upstream(wavs.to(device), wav_lens.to(device))
    named = _named_outputs(feats, featurizer, codes)
    lengths = feats.lengths.cpu()
    rows = []
    for b, (utt_id, path, wav) in enumerate(loaded):
        num_frames = int(lengths[b])
        target = output / f"{utt_id}.safetensors"
        metadata = {
            "upstream": upstream.name,
            "layer": str(layer),
            "source": str(path),
            "downsample_rate": str(upstream.downsample_rate),
            "num_samples": str(len(wav)),
        }
        save_tensors(target, {k: v[b, :num_frames] for k, v in named.items()}, metadata)
        rows.append([utt_id, str(path), str(target.relative_to(output)), num_frames, len(wav)])
        report.written.append(utt_id)
    return rows


def _skip(report: ExtractReport, path: Path, reason: str) -> None:
    log.error("skipped %s", reason)
    report.skipped.append((str(path), reason))


def _write_index(path: Path, rows: list[list]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["id", "source", "features", "num_frames", "num_samples"])
            writer.writerows(sorted(rows, key=lambda row: row[0]))

    atomic_write(path, write)
