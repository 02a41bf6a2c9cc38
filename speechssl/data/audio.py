"""Audio I/O: read any file soundfile can decode as a mono float32 waveform at 16 kHz.

torchaudio 2.9+ has no ``load``/``save``: files are read with soundfile and
resampled with :func:`torchaudio.functional.resample`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

from speechssl.errors import AudioError, ConfigError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".sph")
LIST_EXTENSIONS = (".txt", ".lst", ".list", ".scp")


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(num_samples, sample_rate, channels)`` of a file, read from its header only.

    Raises :class:`AudioError` naming the file for a missing, empty or undecodable one.
    """
    path = Path(path)
    _check_file(path)
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: cannot decode audio ({e})") from e
    _check_wav_length(path, int(info.frames))
    return int(info.frames), int(info.samplerate), int(info.channels)


# a RIFF data size of 0 or 0xFFFFFFFF means "unknown": what writers to a pipe put there
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


def _check_wav_length(path: Path, frames: int) -> None:
    """Refuse a WAV whose header promises more samples than the file holds (a truncated copy):
    libsndfile reads such a file silently, its tail missing."""
    with open(path, "rb") as f:
        head = f.read(65536)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    block_align, pos = 0, 12
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if chunk == b"fmt " and pos + 22 <= len(head):
            block_align = int.from_bytes(head[pos + 20 : pos + 22], "little")
        if chunk == b"data":
            if block_align and size not in _UNKNOWN_SIZES and size // block_align > frames:
                raise AudioError(
                    f"{path}: truncated WAV: its header promises {size // block_align} samples, the file holds "
                    f"{frames}; copy or write it again"
                )
            return
        pos += 8 + size + (size & 1)  # chunks are padded to an even size


def resampled_length(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples ``path`` will have at ``sample_rate`` once loaded, read from its header alone."""
    frames, rate, _ = audio_info(path)
    return frames if rate == sample_rate else -(-frames * sample_rate // rate)  # ceil, as resample's length


def load_audio(
    path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, *, resample: bool = True,
    start: int = 0, stop: int | None = None,
) -> torch.Tensor:
    """Read ``path`` as a 1-D float32 tensor in [-1, 1] at ``sample_rate`` Hz.

    ``start``, ``stop``: the samples (at ``sample_rate``) to return; a file at that rate
    reads only them from disk (long files in bounded memory), others are read whole.

    Several channels are averaged to mono (with a logged warning). A file at another
    rate is resampled, or, with ``resample=False``, rejected. Raises
    :class:`AudioError` naming the file and the reason: missing, empty file,
    undecodable, zero samples, NaN/Inf samples, or a wrong rate.
    """
    path = Path(path)
    frames, rate, _ = audio_info(path)  # a truncated WAV is refused here
    whole = rate != sample_rate or (start == 0 and stop is None)
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True,  # (S, C)
                                    **({} if whole else {"start": start, "stop": stop}))
    except (soundfile.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: cannot decode audio ({e})") from e
    if whole and data.shape[0] != frames:
        raise AudioError(f"{path}: decoded {data.shape[0]} samples, its header says {frames} (a truncated file?)")
    if data.shape[0] == 0:
        raise AudioError(f"{path}: 0 samples (empty audio)")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or Inf samples")
    if data.shape[1] > 1:
        log.warning("%s: %d channels, averaged to mono", path, data.shape[1])
        data = data.mean(axis=1, keepdims=True)
    wav = torch.from_numpy(np.ascontiguousarray(data[:, 0]))  # (S,)
    if rate != sample_rate:
        if not resample:
            raise AudioError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz")
        wav = AF.resample(wav, orig_freq=rate, new_freq=sample_rate)
        wav = wav[start:stop]
    return wav


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")


def find_audio(source: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(utterance id, path)`` for an audio file, a folder (recursive) or a list file.

    A list file (``.txt .lst .list .scp``) holds one path a line (the first
    tab-separated column), relative to the list's folder unless absolute. Ids are
    paths relative to the folder (or the files' common folder), without extension,
    except where two files differ only by it (``a.wav``, ``a.flac``): those keep it.
    """
    source = Path(source)
    if not source.exists():
        raise ConfigError(f"input {source}: no such file or folder")
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        root = source
    elif source.suffix.lower() in LIST_EXTENSIONS:
        lines = [line.split("\t")[0].strip() for line in source.read_text().splitlines()]
        paths = [p if p.is_absolute() else source.parent / p for p in map(Path, filter(None, lines))]
        root = Path(os.path.commonpath([p.parent.resolve() for p in paths])) if paths else source.parent
        paths = [p.resolve() for p in paths]
    else:
        return [(source.stem, source)]
    if not paths:
        raise ConfigError(f"input {source}: no audio files found (looked for {', '.join(AUDIO_EXTENSIONS)})")
    ids = [str(p.relative_to(root).with_suffix("")) for p in paths]
    clashing = {i for i, n in Counter(ids).items() if n > 1}  # a.wav and a.flac: both keep their extension
    return [(str(p.relative_to(root)) if i in clashing else i, p) for i, p in zip(ids, paths)]


def save_audio(path: str | os.PathLike, wav: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a 1-D waveform as 16-bit PCM (WAV or FLAC, by the extension)."""
    if wav.dim() != 1:
        raise ValueError(f"save_audio expects a 1-D waveform, got shape {tuple(wav.shape)}")
    soundfile.write(str(path), wav.detach().cpu().float().numpy(), sample_rate, subtype="PCM_16")


def collate(wavs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D waveforms into a batch.

    Returns ``wavs`` (B, S_max) float32 and ``wav_lens`` (B,) int64 samples.
    """
    if len(wavs) == 0:
        raise ValueError("collate needs at least one waveform")
    for i, w in enumerate(wavs):
        if w.dim() != 1:
            raise ValueError(f"waveform {i}: expected shape (S,), got {tuple(w.shape)}")
    wav_lens = torch.tensor([len(w) for w in wavs], dtype=torch.long)
    batch = torch.nn.utils.rnn.pad_sequence(list(wavs), batch_first=True)  # (B, S)
    return batch.float(), wav_lens
