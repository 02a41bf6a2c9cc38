"""APC / VQ-APC: hidden states, parameter counts, the n-step-ahead L1 loss, VQ codes."""

import importlib.util
import sys
from pathlib import Path

import pytest
import signals
import torch
import torch.nn.functional as F

import speechssl
from speechssl.errors import CheckpointError
from speechssl.registry import build_upstream
from upstream.apc import APCObjective


def tiny(name="apc", **overrides):
    return signals.tiny(name, **overrides)



def s3prl_apc_module():
    """s3prl's ``upstream/apc/apc.py``, imported as a stand-alone package (its hub needs old torchaudio)."""
    spec = importlib.util.find_spec("s3prl")
    if spec is None:
        pytest.skip("s3prl not installed")
    folder = Path(spec.origin).parent / "upstream" / "apc"
    package = importlib.util.spec_from_file_location("s3prl_apc", folder / "__init__.py", submodule_search_locations=[str(folder)])
    sys.modules["s3prl_apc"] = importlib.util.module_from_spec(package)
    package.loader.exec_module(sys.modules["s3prl_apc"])
    return importlib.import_module("s3prl_apc.apc")


def count(module):
    return sum(p.numel() for p in module.parameters())


def s3prl_apc_params(D_in, H, L, codebook=None):
    """s3prl's ``APC`` (GRU stack + postnet [+ VQ layer after the last layer]), by hand."""
    gru = lambda i: 3 * (i * H + H * H + 2 * H)  # noqa: E731  (W_ih, W_hh, b_ih, b_hh for r, z, n)
    total = gru(D_in) + (L - 1) * gru(H) + (H * D_in + D_in)
    if codebook:
        total += (H * codebook + codebook) + codebook * H  # vq_logits, codebook_CxE (no bias)
    return total


@pytest.mark.parametrize("name", ["apc", "vq_apc"])
def test_paper_size_has_s3prls_parameter_count(name):
    objective = APCObjective(build_upstream(name))  # the postnet lives in the objective
    assert count(objective) == s3prl_apc_params(80, 512, 3, 512 if name == "vq_apc" else None)


S3PRL_AUDIO = {"feat_type": "fbank", "feat_dim": 80, "frame_length": 25, "frame_shift": 10, "dither": 0, "cmvn": True}


@pytest.mark.parametrize("name", ["apc", "vq_apc"])
def test_s3prl_checkpoint_gives_s3prls_hidden_states_from_the_waveform(tmp_path, name):
    """s3prl's APC with random weights, saved in its runner's layout, read by its UpstreamExpert and by
    load_upstream(name, ckpt=); every hidden state of one padded batch of waveforms compared (s3prl
    computes each utterance's fbank alone and packs the batch: its output does not depend on the
    padding). Our state 0, the input features, is compared with s3prl's preprocessor output."""
    apc, expert_module = s3prl_apc_module(), pytest.importorskip("s3prl.upstream.apc.expert")
    vq = {"codebook_size": [32, 32], "code_dim": [32, 32], "gumbel_temperature": 0.5} if name == "vq_apc" else None
    theirs = signals.perturbed(apc.APC(80, 64, 3, 0.1, True, vq=vq), seed=0)
    assert count(theirs) == s3prl_apc_params(80, 64, 3) + (2 * (32 * 32 + 32 + 32 * 32) if vq else 0)
    paras = {"num_layers": 3, "hidden_size": 64, "dropout": 0.1, "residual": True, "vq": vq}
    torch.save({"config": {"data": {"audio": dict(S3PRL_AUDIO)}, "model": {"paras": paras}}, "model": theirs.state_dict()},
               tmp_path / "apc.ckpt")  # fmt: skip
    expert = expert_module.UpstreamExpert(str(tmp_path / "apc.ckpt")).eval()
    ours = speechssl.load_upstream(name, ckpt=tmp_path / "apc.ckpt")
    assert ours.config.vq_groups == (2 if vq else 1) and ours.config.vq_layers == ([3] if vq else [])
    wavs, lengths = signals.padded_tones(torch.tensor([4000, 2650, 1337]), noise=0.01)
    listed = [wav[:n] for wav, n in zip(wavs, lengths)]
    with torch.no_grad():
        expected = expert(listed)["hidden_states"]
        feats = ours(wavs, lengths)
        inputs = [expert.preprocessor(wav.unsqueeze(0)) for wav in listed]
    assert feats.lengths.tolist() == [len(x) for x in inputs]
    assert len(feats.hidden_states) == len(expected) + 1  # ours start with the input features
    for a, b in zip(feats.hidden_states, [inputs] + list(expected)):
        for i, n in enumerate(feats.lengths.tolist()):
            torch.testing.assert_close(a[i, :n], b[i][:n], atol=1e-4, rtol=1e-4)
    if vq:  # the codes the last layer's output quantizes to: the argmax of each group's logits, as s3prl's
        top = feats.hidden_states[-1]
        for g, layer in enumerate(theirs.vq_layers):
            assert torch.equal(feats.extra["codes_3"][..., g], layer.vq_logits(top[..., 32 * g : 32 * (g + 1)]).argmax(-1)
                               * (torch.arange(top.shape[1]) < feats.lengths[:, None]))  # fmt: skip


def test_s3prl_audio_options_we_do_not_reproduce_are_refused(tmp_path):
    apc = s3prl_apc_module()
    paras = {"num_layers": 1, "hidden_size": 8, "dropout": 0.1, "residual": True, "vq": None}
    audio = {**S3PRL_AUDIO, "dither": 1.0, "preemphasis_coefficient": 0.5}
    torch.save({"config": {"data": {"audio": audio}, "model": {"paras": paras}}, "model": apc.APC(80, 8, 1, 0.1, True).state_dict()},
               tmp_path / "apc.ckpt")  # fmt: skip
    with pytest.raises(CheckpointError, match=r"dither=1.0 \(we compute 0.0\), preemphasis_coefficient=0.5 \(not supported"):
        speechssl.load_upstream("apc", ckpt=tmp_path / "apc.ckpt")


def test_hidden_states_are_input_then_every_layer():
    model = tiny().eval()
    wavs, lens = signals.tones(2), torch.tensor([16000, 9000])
    feats = model(wavs, lens)
    x, lengths = model.front_end(wavs, lens)
    assert model.hidden_sizes == [80, 64, 64] and len(feats.hidden_states) == 3
    assert feats.lengths.tolist() == [98, 54]
    with torch.no_grad():
        h1, _ = model.rnns[0](x)
        h2 = model.rnns[1](h1)[0] + h1  # residual from layer 2 on
    torch.testing.assert_close(feats.hidden_states[0][0], x[0])
    torch.testing.assert_close(feats.hidden_states[1][0], h1[0])
    torch.testing.assert_close(feats.hidden_states[2][0], h2[0])
    assert (feats.hidden_states[2][1, 54:] == 0).all()


def test_lstm_by_config():
    model = tiny(rnn="lstm").eval()
    assert isinstance(model.rnns[0], torch.nn.LSTM)
    assert model(signals.tones(1)).last.shape == (1, 98, 64)


def test_loss_is_l1_n_frames_ahead_over_valid_frames_only():
    objective = APCObjective(tiny()).eval()
    assert objective.upstream.config.n_future == 5  # s3prl's pretrain/apc/config_model.yaml
    x, lengths = objective.upstream.front_end(signals.tones(3), torch.tensor([16000, 12000, 7000]))
    with torch.no_grad():
        loss, _ = objective.loss_on_features(x, lengths)
        errors = []
        for b, T in enumerate(lengths.tolist()):  # each utterance alone, by hand
            top = objective.upstream.top(objective.upstream.encoder(x[b : b + 1, :T], lengths[b : b + 1]))
            errors.append((objective.postnet(top)[0, : T - 5] - x[b, 5:T]).abs().flatten())
        padded = objective.loss_on_features(F.pad(x, (0, 0, 0, 30), value=0.7), lengths)[0]
    torch.testing.assert_close(loss, torch.cat(errors).mean(), atol=1e-6, rtol=0)
    torch.testing.assert_close(padded, loss, atol=1e-6, rtol=0)


def test_vq_codes_in_range_and_extra_outputs():
    model = tiny("vq_apc", vq_layers=[1, 2], vq_groups=2).eval()
    feats = model(signals.tones(2), torch.tensor([16000, 9000]))
    assert set(feats.extra) == {"codes_1", "quantized_1", "codes_2", "quantized_2"}
    codes = feats.extra["codes_2"]
    assert codes.shape == (2, 98, 2) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 32
    assert (codes[1, 54:] == 0).all()
    # The hidden states are the RNN outputs before quantization; layer 2 reads quantized_1.
    x, _ = model.front_end(signals.tones(2), torch.tensor([16000, 9000]))
    with torch.no_grad():
        h2 = model.rnns[1](feats.extra["quantized_1"][:1])[0] + feats.extra["quantized_1"][:1]
    torch.testing.assert_close(feats.hidden_states[2][0], h2[0])


def test_vq_apc_logs_the_code_perplexity_of_valid_frames():
    objective = APCObjective(tiny("vq_apc")).train()
    wavs, lens = signals.tones(4, 1.0), torch.tensor([16000, 14000, 12000, 10000])
    _, logs = objective({"wavs": wavs, "wav_lens": lens}, step=0, generator=torch.Generator().manual_seed(0))
    assert 1 <= float(logs["ppx_2"]) <= 32 and set(logs) == {"l1", "ppx_2"}
