"""speechssl: pretrain speech upstreams, benchmark them the SUPERB way, extract their features."""

from speechssl.data.audio import collate, load_audio
from speechssl.errors import AudioError, CheckpointError, ConfigError, SpeechSSLError

__version__ = "0.1.0"
