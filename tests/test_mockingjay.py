"""Mockingjay / TERA: encoder blocks, hidden states, parameter counts, the masked reconstruction loss."""

import importlib.util
from pathlib import Path

import pytest
import signals
import torch
import torch.nn.functional as F

import speechssl
from speechssl.errors import CheckpointError
from speechssl.masking import frame_mask
from speechssl.registry import build_upstream
from upstream.mockingjay import MockingjayObjective
from upstream.modules.transformer import EncoderLayer, sinusoid_positions


def s3prl_file(relative):
    """A module of the installed s3prl loaded by file (its hub does not import on new torchaudio)."""
    spec = importlib.util.find_spec("s3prl")
    if spec is None:
        pytest.skip("s3prl not installed")
    path = Path(spec.origin).parent / relative
    module_spec = importlib.util.spec_from_file_location(f"s3prl_file_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def tiny(name="mockingjay", **overrides):
    return signals.tiny(name, **overrides)



# -- parameter counts --------------------------------------------------------------------


def s3prl_transformer_params(D_in, H, L, ffn, pre_layer_norm=False):
    """Parameters of s3prl's ``TransformerModel`` (upstream/mockingjay/model.py), by hand."""
    ln = 2 * H
    inputs = D_in * H + H + ln  # spec_transform, LayerNorm
    attention = 3 * (H * H + H) + (H * H + H) + ln  # query, key, value, output.dense, LayerNorm
    feed_forward = (H * ffn + ffn) + (ffn * H + H) + ln  # intermediate.dense, output.dense, LayerNorm
    encoder_norms = (L + 1) * ln if pre_layer_norm else 0  # one per returned state
    return inputs + L * (attention + feed_forward) + encoder_norms


def s3prl_head_params(H, D_out):
    """s3prl's ``TransformerSpecPredictionHead``: dense, LayerNorm, output."""
    return (H * H + H) + 2 * H + (H * D_out + D_out)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("layers, pre_ln", [(3, False), (12, False), (3, True)])
def test_paper_sizes_have_s3prls_parameter_count(layers, pre_ln):
    model = build_upstream("mockingjay", num_layers=layers, pre_layer_norm=pre_ln)
    assert count(model) == s3prl_transformer_params(80, 768, layers, 3072, pre_ln)
    if layers == 3 and not pre_ln:
        assert count(model) == 21_327_360
        assert count(MockingjayObjective(model).head) == s3prl_head_params(768, 80)


def s3prl_config(layers, pre_ln=False):
    ref = s3prl_file("upstream/mockingjay/model.py")
    options = dict(
        hidden_size=768, num_hidden_layers=layers, num_attention_heads=12, hidden_act="gelu",
        intermediate_size=3072, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        initializer_range=0.02, layer_norm_eps=1e-12, share_layer=False, pre_layer_norm=pre_ln,
    )  # fmt: skip
    return ref, ref.TransformerConfig(options)


@pytest.mark.parametrize("layers, pre_ln", [(3, False), (12, False), (3, True)])
def test_parameter_count_against_s3prl_itself(layers, pre_ln):
    ref, config = s3prl_config(layers, pre_ln)
    theirs = ref.TransformerModel(config, 80)
    assert count(build_upstream("mockingjay", num_layers=layers, pre_layer_norm=pre_ln)) == count(theirs)
    assert count(ref.TransformerSpecPredictionHead(config, 80)) == s3prl_head_params(768, 80)


# s3prl's OnlinePreprocessor settings of its mockingjay/tera pretraining: 80 log-mel bins, CMVN, -25 dB
S3PRL_AUDIO = {"target_level": -25, "win_ms": 25, "hop_ms": 10, "n_freq": 201, "n_mels": 80, "n_mfcc": 13,
               "input": {"feat_type": "mel", "channel": 0, "log": True, "delta": 0, "cmvn": True}}  # fmt: skip
# s3prl's Kaldi extracter (upstream/baseline/fbank.yaml, its TERA fbankBase): fbank, deltas of order 2, CMVN
S3PRL_KALDI = {"kaldi": {"feat_type": "fbank", "fbank": {"num_mel_bins": 80, "frame_length": 25.0, "frame_shift": 10.0,
               "use_log_fbank": True}}, "delta": {"order": 2, "win_length": 5}, "cmvn": {"use_cmvn": True}}  # fmt: skip


def s3prl_checkpoint(path, layers=2, audio=S3PRL_AUDIO, input_size=80):
    """s3prl's ``TransformerModel`` (8 wide: s3prl tabulates its positions in Python, 0.12 s a
    dimension) with perturbed random weights, saved in its pretraining runner's layout."""
    ref, config = s3prl_config(layers)
    config.hidden_size, config.num_attention_heads, config.intermediate_size = 8, 2, 16
    options = {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
               "intermediate_size", "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
               "layer_norm_eps", "share_layer", "pre_layer_norm")}  # fmt: skip
    theirs = signals.perturbed(ref.TransformerModel(config, input_size), seed=0)
    torch.save({"Config": {"transformer": options, "audio": audio, "task": {"sequence_length": 0}},
                "Transformer": theirs.state_dict()}, path)  # fmt: skip
    return path


@pytest.mark.parametrize("audio, input_size", [(S3PRL_AUDIO, 80), (S3PRL_KALDI, 240)], ids=["mel", "kaldi_fbank"])
def test_s3prl_checkpoint_gives_s3prls_hidden_states_from_the_waveform(tmp_path, audio, input_size):
    """s3prl's model with random weights in its runner's layout, read by its UpstreamExpert and by
    load_upstream("mockingjay" or "tera", ckpt=); every hidden state of the same waveforms compared.

    Ours run on a padded batch, s3prl's expert on each utterance alone: its mel output depends on
    the batch (its STFT reflects the batch's zero padding at a short utterance's end, and its frame
    count is rounded from the padded length), an utterance alone is what s3prl means it to get."""
    expert_module = pytest.importorskip("s3prl.upstream.mockingjay.expert")
    ckpt = s3prl_checkpoint(tmp_path / "states-1000.ckpt", audio=audio, input_size=input_size)
    expert = expert_module.UpstreamExpert(str(ckpt)).eval()
    ours = speechssl.load_upstream("mockingjay", ckpt=ckpt)
    assert ours.config.front_end == ("fbank" if "kaldi" in audio else "log_mel")
    tera = speechssl.load_upstream("tera", ckpt=ckpt)  # s3prl's TERA: the same layout
    torch.testing.assert_close(tera.state_dict(), ours.state_dict())
    wavs, lengths = signals.padded_tones(torch.tensor([4000, 2650, 1337]), noise=0.01)
    with torch.no_grad():
        got = ours(wavs, lengths)
        for b, n in enumerate(lengths.tolist()):
            expected = expert([wavs[b, :n]])["hidden_states"]
            assert len(got.hidden_states) == len(expected) == 3 and got.lengths[b] == expected[0].shape[1]
            for a, e in zip(got.hidden_states, expected):
                torch.testing.assert_close(a[b, : got.lengths[b]], e[0], atol=1e-4, rtol=1e-4)


def test_s3prl_audio_options_we_do_not_reproduce_are_refused(tmp_path):
    audio = {**S3PRL_AUDIO, "hop_ms": 20, "input": {**S3PRL_AUDIO["input"], "feat_type": "linear"}}
    s3prl_checkpoint(tmp_path / "states.ckpt", audio=audio)
    with pytest.raises(CheckpointError, match=r"hop_ms=20 \(we compute 10\), input.feat_type='linear'"):
        speechssl.load_upstream("mockingjay", ckpt=tmp_path / "states.ckpt")


def test_position_table_is_s3prls_formula():
    table = sinusoid_positions(30, 8)
    t, i = 17, torch.arange(8)
    angle = t / 10000 ** (2 * (i // 2) / 8)
    expected = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
    torch.testing.assert_close(table[t], expected.float())


# -- encoder blocks and hidden states -------------------------------------------------------


@pytest.mark.parametrize("pre_ln", [False, True])
def test_encoder_layer_equals_torch_transformer_layer(pre_ln):
    torch.manual_seed(0)
    ours = EncoderLayer(
        16, 4, 32, dropout=0.0, attention_dropout=0.0, activation="gelu", layer_norm_eps=1e-5, pre_layer_norm=pre_ln
    ).eval()
    ref = torch.nn.TransformerEncoderLayer(16, 4, 32, 0.0, "gelu", batch_first=True, norm_first=pre_ln).eval()
    ref.self_attn.in_proj_weight.data.copy_(ours.attention.qkv.weight)
    ref.self_attn.in_proj_bias.data.copy_(ours.attention.qkv.bias)
    ref.self_attn.out_proj.load_state_dict(ours.attention.out.state_dict())
    ref.linear1.load_state_dict(ours.ffn_in.state_dict())
    ref.linear2.load_state_dict(ours.ffn_out.state_dict())
    ref.norm1.load_state_dict(ours.attention_norm.state_dict())
    ref.norm2.load_state_dict(ours.ffn_norm.state_dict())
    x = torch.randn(2, 9, 16)
    lengths = torch.tensor([9, 5])
    valid = speechssl.interface.lengths_to_mask(lengths, 9)
    with torch.no_grad():
        got, got_lengths = ours(x, lengths)
        expected = ref(x, src_key_padding_mask=~valid)
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=1e-5)
    assert got_lengths is lengths


def test_hidden_states_are_input_then_every_layer():
    model = tiny().eval()
    wavs = signals.tones(2)
    feats = model(wavs, torch.tensor([16000, 9000]))
    assert model.num_layers == 3 and len(feats.hidden_states) == 3
    assert feats.lengths.tolist() == [101, 57]
    x, lengths = model.front_end(wavs, torch.tensor([16000, 9000]))
    with torch.no_grad():
        h0 = model.input_norm(model.input_projection(x) + sinusoid_positions(101, 64))
        h1, _ = model.transformer.layers[0](h0, lengths)
    torch.testing.assert_close(feats.hidden_states[0][0], h0[0])
    torch.testing.assert_close(feats.hidden_states[1][0], h1[0])
    assert (feats.hidden_states[2][1, 57:] == 0).all()


def test_dropout_only_when_training():
    model = tiny(dropout=0.5)
    wavs = signals.tones(1)
    with torch.no_grad():
        a, b = model.eval()(wavs).last, model(wavs).last
        torch.testing.assert_close(a, b)
        assert not torch.allclose(model.train()(wavs).last, a)


# -- the objective --------------------------------------------------------------------------


def test_loss_is_l1_over_exactly_the_marked_elements():
    for name in ("mockingjay", "tera"):
        objective = MockingjayObjective(tiny(name)).eval()
        x, lengths = objective.upstream.front_end(signals.tones(3), torch.tensor([16000, 12000, 7000]))
        g = torch.Generator().manual_seed(1)
        loss, logs = objective.loss_on_features(x, lengths, generator=g)
        g = torch.Generator().manual_seed(1)
        config = objective.upstream.config
        x_masked, loss_mask = frame_mask(
            x, lengths, mask_prob=0.15, span=7, policy=(0.8, 0.1, 0.1), channel_width=config.channel_width, generator=g
        )
        with torch.no_grad():
            if config.noise_prob > 0:
                x_masked = x_masked + objective._noise(x, lengths, g)
            prediction = objective.head(objective.upstream.encoder(x_masked, lengths).last)
        loss_mask = loss_mask.expand_as(x)
        expected = F.l1_loss(prediction.masked_select(loss_mask), x.masked_select(loss_mask))  # as s3prl
        torch.testing.assert_close(loss, expected)
        assert 0.1 < float(logs["masked_share"]) < 0.6


def test_loss_ignores_padding():
    objective = MockingjayObjective(tiny()).eval()
    x, lengths = objective.upstream.front_end(signals.tones(2), torch.tensor([16000, 9000]))
    x_masked, loss_mask = frame_mask(x, lengths, generator=torch.Generator().manual_seed(0))
    loss_mask = loss_mask.expand_as(x)
    with torch.no_grad():
        loss = objective.loss_on_masked(x_masked, loss_mask, x, lengths)[0]
        pad = lambda t, value: F.pad(t, (0, 0, 0, 40), value=value)  # noqa: E731
        padded = objective.loss_on_masked(pad(x_masked, 0.7), pad(loss_mask, False), pad(x, -3.0), lengths)[0]
        # The short utterance alone: its own padding only.
        alone = objective.loss_on_masked(x_masked[1:, :57], loss_mask[1:, :57], x[1:, :57], lengths[1:])[0]
        both_alone = objective.loss_on_masked(x_masked[:1], loss_mask[:1], x[:1], lengths[:1])[0]
    torch.testing.assert_close(padded, loss, atol=1e-6, rtol=0)
    n0, n1 = loss_mask[0].sum(), loss_mask[1].sum()
    torch.testing.assert_close(loss, (both_alone * n0 + alone * n1) / (n0 + n1), atol=1e-6, rtol=0)


def test_tera_alters_channels_and_adds_noise():
    objective = MockingjayObjective(tiny("tera", noise_prob=1.0, mask_prob=0.0))
    x, lengths = objective.upstream.front_end(signals.tones(2), torch.tensor([16000, 9000]))
    g = torch.Generator().manual_seed(0)
    noise = objective._noise(x, lengths, g)
    assert (noise[1, 57:] == 0).all() and 0.15 < float(noise[0].std()) < 0.25
    loss, logs = objective.loss_on_features(x, lengths, torch.Generator().manual_seed(3))
    assert 0 < float(logs["masked_share"]) <= 16 / 80  # channel blocks only
