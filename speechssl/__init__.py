"""speechssl: pretrain speech upstreams, benchmark them the SUPERB way, extract their features.

>>> import speechssl, torch
>>> model = speechssl.load_upstream("mfcc")
>>> wav = speechssl.load_audio("a.wav")                 # 1-D float32 at 16 kHz
>>> feats = model(wav[None], torch.tensor([len(wav)]))  # feats.hidden_states, feats.lengths
"""

from speechssl.data.audio import collate, load_audio
from speechssl.errors import AudioError, CheckpointError, ConfigError, SpeechSSLError
from speechssl.interface import Features, Featurizer, Upstream, lengths_to_mask
from speechssl.masking import frame_mask, sample_negatives, shift_targets, span_mask
from speechssl.registry import build_upstream, list_upstreams, load_upstream, register

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "CheckpointError",
    "ConfigError",
    "Features",
    "Featurizer",
    "SpeechSSLError",
    "Upstream",
    "build_upstream",
    "collate",
    "frame_mask",
    "lengths_to_mask",
    "list_upstreams",
    "load_audio",
    "load_upstream",
    "register",
    "sample_negatives",
    "shift_targets",
    "span_mask",
]
