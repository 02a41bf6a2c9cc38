"""The exceptions users can catch. The CLI turns each into one line and a non-zero exit."""


class SpeechSSLError(Exception):
    """Base of every error speechssl raises on purpose."""


class AudioError(SpeechSSLError, ValueError):
    """An audio file or waveform speechssl cannot use: missing, empty, corrupt, NaN, too short."""


class CheckpointError(SpeechSSLError, ValueError):
    """A checkpoint that is missing, corrupt, or written by another model."""


class TrainingError(SpeechSSLError, RuntimeError):
    """A run that cannot go on: its loss was NaN or Inf, or its batches ran out of memory, too many steps in a row."""


class ConfigError(SpeechSSLError, ValueError):
    """An unknown name or key, or a value out of range, in a config or an argument."""


def first_line(error: BaseException) -> str:
    """An exception's first line of text, or its type's name when it has none (``EOFError()``)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
