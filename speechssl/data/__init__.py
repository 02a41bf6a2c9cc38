"""Audio I/O, manifests, samplers, the synthetic corpus and real-corpus preparers."""

from speechssl.data.audio import (
    SAMPLE_RATE,
    audio_info,
    collate,
    find_audio,
    load_audio,
    save_audio,
)

__all__ = ["SAMPLE_RATE", "audio_info", "collate", "find_audio", "load_audio", "save_audio"]
