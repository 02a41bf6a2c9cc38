"""Mockingjay / TERA: encoder blocks, hidden states, parameter counts, the masked reconstruction loss."""

import importlib.util
from pathlib import Path

import pytest
import signals
import torch
import torch.nn.functional as F

import speechssl
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


def test_s3prl_checkpoint_loads_in_one_line_with_s3prls_hidden_states(tmp_path):
    """s3prl's model with random weights, saved in its runner's layout, read by its UpstreamExpert and by
    load_upstream; every hidden state compared on a padded batch, our encoder reading s3prl's own
    input features (our front-end differs on purpose: see upstream/mockingjay.py)."""
    expert_module = pytest.importorskip("s3prl.upstream.mockingjay.expert")
    ref, config = s3prl_config(2)
    config.hidden_size, config.num_attention_heads, config.intermediate_size = 64, 4, 128  # s3prl tabulates positions in Python
    theirs = signals.perturbed(ref.TransformerModel(config, 80), seed=0)
    options = {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
               "intermediate_size", "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
               "layer_norm_eps", "share_layer", "pre_layer_norm")}  # fmt: skip
    ckpt = {"Config": {"transformer": options, "audio": S3PRL_AUDIO, "task": {"sequence_length": 0}},
            "Transformer": theirs.state_dict()}  # fmt: skip
    torch.save(ckpt, tmp_path / "states-1000.ckpt")
    expert = expert_module.UpstreamExpert(str(tmp_path / "states-1000.ckpt")).eval()
    ours = speechssl.load_upstream("mockingjay", ckpt=tmp_path / "states-1000.ckpt")
    assert (ours.config.num_layers, ours.config.hidden_size, ours.config.front_end) == (2, 64, "log_mel")
    tera = speechssl.load_upstream("tera", ckpt=tmp_path / "states-1000.ckpt")  # s3prl's TERA: the same layout
    torch.testing.assert_close(tera.state_dict(), ours.state_dict())
    wavs, lengths = signals.padded_tones(torch.tensor([4000, 2650, 1337]))
    listed = [wav[:n] for wav, n in zip(wavs, lengths)]
    with torch.no_grad():
        expected = expert(listed)["hidden_states"]
        t = expert.transformer  # s3prl's features of the same padded batch, as its forward makes them
        x = torch.nn.utils.rnn.pad_sequence([t._normalize_wav_decibel(w) for w in listed], batch_first=True)
        x = t.extracter(x.unsqueeze(1), wavs_len=lengths.tolist())[0]
        frames = (x.sum(dim=-1) != 0).long().sum(dim=-1)
        got = ours.encoder(x, frames).hidden_states
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        for i, n in enumerate(frames.tolist()):
            torch.testing.assert_close(a[i, :n], b[i, :n], atol=1e-4, rtol=1e-4)


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
