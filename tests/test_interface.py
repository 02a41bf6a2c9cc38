"""The shared feature interface, for every registered upstream, and the Featurizer."""

import pytest
import torch

import speechssl
from speechssl.errors import AudioError, ConfigError
from speechssl.registry import build_upstream, get_entry

UPSTREAMS = speechssl.list_upstreams()


def tiny_model(name):
    torch.manual_seed(0)
    return build_upstream(name, **get_entry(name).tiny).eval()


def test_baselines_are_registered():
    assert {"fbank", "mfcc", "mel"} <= set(UPSTREAMS)


@pytest.mark.parametrize("name", UPSTREAMS)
def test_padding_and_batch_do_not_change_an_utterance(name):
    model = tiny_model(name)
    g = torch.Generator().manual_seed(0)
    short = 0.1 * torch.randn(12345, generator=g)
    long = 0.1 * torch.randn(20000, generator=g)
    with torch.no_grad():
        alone = model(short[None], torch.tensor([len(short)]))
        wavs, lens = speechssl.collate([long, short])
        wavs[1, len(short):] = 0.7  # padding content must not matter either
        batched = model(wavs, lens)
    assert len(alone.hidden_states) == len(batched.hidden_states) == model.num_layers
    expected = model.num_frames(torch.tensor([len(long), len(short)]))
    assert batched.lengths.tolist() == expected.tolist()
    assert alone.lengths.tolist() == expected[1:].tolist()
    for layer, (a, b) in enumerate(zip(alone.hidden_states, batched.hidden_states)):
        T = int(expected[1])
        assert a.shape == (1, T, model.hidden_sizes[layer])
        assert b.shape[:2] == (2, int(expected[0]))
        torch.testing.assert_close(b[1, :T], a[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", UPSTREAMS)
def test_too_short_clip_is_a_clear_error(name):
    model = tiny_model(name)
    if model.min_samples <= 1:
        pytest.skip(f"{name} accepts any length")
    with pytest.raises(AudioError, match=rf"an utterance has {model.min_samples - 1} samples, shorter than {name}.s receptive field"):
        model(torch.zeros(1, model.min_samples - 1))


def test_bad_shapes_and_dtypes():
    model = tiny_model("fbank")
    with pytest.raises(ValueError, match=r"\(batch, samples\), got shape \(1, 1, 800\)"):
        model(torch.zeros(1, 1, 800))
    with pytest.raises(ValueError, match="must be float"):
        model(torch.zeros(1, 800, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"wav_lens must be \(2,\)"):
        model(torch.zeros(2, 800), torch.tensor([800]))
    with pytest.raises(ValueError, match="wav_lens max 900 > 800"):
        model(torch.zeros(2, 800), torch.tensor([800, 900]))
    assert model(torch.zeros(800)).hidden_states[0].shape == (1, 3, 240)  # 1-D input, no lengths; 80 bins, Δ, ΔΔ


def test_unknown_upstream_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown upstream 'hubret'; known: .*fbank.*mfcc"):
        speechssl.load_upstream("hubret")


def test_misspelt_config_key():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) num_cep; known: cmvn, deltas, num_ceps"):
        speechssl.load_upstream("mfcc", num_cep=20)


def _features(L=3, B=2, T=7, D=4):
    g = torch.Generator().manual_seed(0)
    states = [torch.randn(B, T, D, generator=g) for _ in range(L)]
    return speechssl.Features(states, torch.tensor([T, 4]))


def test_featurizer_weighted_is_softmax_sum():
    feats = _features()
    featurizer = speechssl.Featurizer([4, 4, 4], "weighted")
    with torch.no_grad():
        featurizer.weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
    x, lengths = featurizer(feats)
    w = torch.exp(torch.tensor([0.0, 1.0, 2.0]))
    w = w / w.sum()
    ref = sum(wi * h for wi, h in zip(w, feats.hidden_states))
    torch.testing.assert_close(x[0], ref[0])
    torch.testing.assert_close(x[1, :4], ref[1, :4])
    assert (x[1, 4:] == 0).all() and lengths.tolist() == [7, 4]
    torch.testing.assert_close(featurizer.layer_weights(), w)
    x.sum().backward()
    assert featurizer.weights.grad is not None


def test_featurizer_starts_at_the_mean_and_layer_norms():
    feats = _features()
    x, _ = speechssl.Featurizer([4, 4, 4], layer_norm=True)(feats)
    normed = [torch.nn.functional.layer_norm(h, (4,)) for h in feats.hidden_states]
    torch.testing.assert_close(x[0], sum(normed)[0] / 3)


def test_featurizer_fixed_layers():
    feats = _features()
    torch.testing.assert_close(speechssl.Featurizer([4] * 3, 1)(feats)[0][0], feats.hidden_states[1][0])
    torch.testing.assert_close(speechssl.Featurizer([4] * 3, "last")(feats)[0][0], feats.hidden_states[2][0])
    torch.testing.assert_close(speechssl.Featurizer([4] * 3, -3)(feats)[0][0], feats.hidden_states[0][0])
    assert speechssl.Featurizer([4] * 3, 2).layer_weights().tolist() == [0, 0, 1]
    with pytest.raises(ConfigError, match="layer 3 out of range for 3 hidden states"):
        speechssl.Featurizer([4] * 3, 3)
    with pytest.raises(ConfigError, match="must be 'weighted', 'last' or an int"):
        speechssl.Featurizer([4], "top")


def test_featurizer_from_an_upstream():
    model = speechssl.load_upstream("mfcc")
    featurizer = speechssl.Featurizer(model)
    x, lengths = featurizer(model(torch.zeros(2, 1600) + 0.01, torch.tensor([1600, 800])))
    assert x.shape == (2, 8, 39) and lengths.tolist() == [8, 3]


def test_every_upstream_has_its_config_file():
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "configs" / "upstream"
    names = {p.stem for p in folder.glob("*.yaml")} - {"s3prl"}  # the bridge to s3prl's experts, not a model of ours
    assert set(UPSTREAMS) <= names
    sizes = ("_tiny", "_large")  # size variants of a registered upstream (wav2vec2_large)
    assert {next((n.removesuffix(s) for s in sizes if n.endswith(s)), n) for n in names} <= set(UPSTREAMS)


def test_weighted_featurizer_skips_states_of_another_size():
    g = torch.Generator().manual_seed(0)
    states = [torch.randn(1, 5, 3, generator=g)] + [torch.randn(1, 5, 4, generator=g) for _ in range(2)]
    featurizer = speechssl.Featurizer([3, 4, 4])
    x, _ = featurizer(states, torch.tensor([5]))
    torch.testing.assert_close(x, (states[1] + states[2]) / 2)
    assert featurizer.layer_weights().tolist() == [0.0, 0.5, 0.5] and featurizer.output_size == 4


def test_normalizing_featurizer_standardises_each_state_with_its_own_statistics():
    g = torch.Generator().manual_seed(0)
    states = [torch.randn(2, 6, 3, generator=g)] + [torch.randn(2, 6, 4, generator=g) * s + m for s, m in [(0.4, 2), (3, -1)]]
    lengths = torch.tensor([6, 4])
    featurizer = speechssl.Featurizer([3, 4, 4], normalize=True)
    means, stds = torch.tensor([[2.0] * 4, [-1.0] * 4]), torch.tensor([[0.4] * 4, [3.0] * 4])
    featurizer.set_statistics(means, stds)
    x, _ = featurizer(states, lengths)
    expected = ((states[1] - 2) / 0.4 + (states[2] + 1) / 3) / 2
    torch.testing.assert_close(x[0], expected[0])
    torch.testing.assert_close(x[1, :4], expected[1, :4])
    assert (x[1, 4:] == 0).all()
    one = speechssl.Featurizer([3, 4, 4], layer=0, normalize=True)
    one.set_statistics(torch.full((1, 3), 0.5), torch.full((1, 3), 2.0))
    torch.testing.assert_close(one(states, lengths)[0][0], (states[0][0] - 0.5) / 2)
    assert set(featurizer.state_dict()) == {"weights", "means", "stds"}  # saved with the head
    with pytest.raises(ConfigError, match="statistics set without normalize=True"):
        speechssl.Featurizer([4]).set_statistics(means[:1], stds[:1])
