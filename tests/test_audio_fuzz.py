"""Property-based tests (hypothesis) of audio reading, collation, masking and extraction (issue 23):
encodings, rates, channels, lengths, truncated and corrupt files, names with spaces and non-ASCII."""

import numpy as np
import pytest
import soundfile as sf
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from speechssl.data.audio import collate, load_audio, resampled_length  # noqa: E402
from speechssl.errors import AudioError  # noqa: E402
from speechssl.interface import lengths_to_mask  # noqa: E402
from speechssl.masking import span_mask  # noqa: E402

# few examples each: the whole file stays within a few seconds on a 2-core CPU
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# (container, subtype): the encodings soundfile writes that the corpora use
ENCODINGS = [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"),
             ("FLAC", "PCM_16"), ("FLAC", "PCM_24")]
RATES = [8000, 11025, 16000, 22050, 44100, 48000]
NAMES = st.text(alphabet=st.sampled_from("ab cdé=ñ中-_"), min_size=1, max_size=8).map(str.strip).filter(bool)


def write(path, rng, frames, channels, rate, container, subtype):
    data = rng.uniform(-0.9, 0.9, size=(frames, channels)).astype(np.float32)
    sf.write(path, data, rate, format=container, subtype=subtype)
    return data


@FEW
@given(encoding=st.sampled_from(ENCODINGS), rate=st.sampled_from(RATES), channels=st.integers(1, 8),
       frames=st.integers(1, 4000), name=NAMES, seed=st.integers(0, 2**16))
def test_load_audio_reads_every_encoding_rate_and_layout(tmp_path, encoding, rate, channels, frames, name, seed):
    container, subtype = encoding
    path = tmp_path / f"{name}.{container.lower()}"
    data = write(path, np.random.default_rng(seed), frames, channels, rate, container, subtype)
    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.dim() == 1 and torch.isfinite(wav).all()
    assert len(wav) == resampled_length(path)  # the header's promise is what is read
    if rate == 16000:  # no resampling: the channel mean, up to the encoding's quantization
        step = 2.0 ** -(7 if subtype == "PCM_U8" else 15)
        np.testing.assert_allclose(wav.numpy(), data.mean(axis=1), atol=step)


@FEW
@given(encoding=st.sampled_from(ENCODINGS), cut=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_a_truncated_or_corrupt_file_is_an_audio_error_or_read_whole(tmp_path, encoding, cut, seed):
    container, subtype = encoding
    rng = np.random.default_rng(seed)
    path = tmp_path / f"a.{container.lower()}"
    write(path, rng, 3000, 2, 16000, container, subtype)
    whole = path.read_bytes()
    path.write_bytes(whole[: int(cut * len(whole))])
    try:
        wav = load_audio(path)
    except AudioError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    assert len(wav) == 3000  # never silently shorter than the header says


@FEW
@given(lengths=st.lists(st.integers(1, 500), min_size=1, max_size=6))
def test_collate_pads_with_zeros_and_keeps_lengths(lengths):
    wavs = [torch.rand(n) + 0.5 for n in lengths]  # no zeros inside an utterance
    batch, wav_lens = collate(wavs)
    assert batch.shape == (len(lengths), max(lengths)) and wav_lens.tolist() == lengths
    valid = lengths_to_mask(wav_lens, batch.shape[1])
    assert (batch[~valid] == 0).all() and (batch[valid] > 0).all()


@FEW
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=5), prob=st.floats(0.05, 0.8),
       span=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_span_masks_never_reach_padding(lengths, prob, span, seed):
    lengths = torch.tensor(lengths)
    mask = span_mask(lengths, prob, span, generator=torch.Generator().manual_seed(seed))
    assert mask.shape == (len(lengths), int(lengths.max()))
    assert not (mask & ~lengths_to_mask(lengths, mask.shape[1])).any()
    assert not mask[lengths < span].any()  # an utterance shorter than a span gets none


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(NAMES, min_size=1, max_size=3, unique_by=str.casefold), seed=st.integers(0, 2**16))
def test_extract_keeps_every_name(tmp_path_factory, names, seed):
    from speechssl.extract import extract
    from speechssl.registry import build_upstream

    folder = tmp_path_factory.mktemp("names")
    rng = np.random.default_rng(seed)
    for name in names:
        write(folder / f"{name}.wav", rng, 2000, 1, 16000, "WAV", "PCM_16")
    report = extract(build_upstream("mfcc"), folder, folder / "out")
    assert sorted(report.written) == sorted(names) and not report.skipped
    assert all((folder / "out" / f"{name}.safetensors").is_file() for name in names)
