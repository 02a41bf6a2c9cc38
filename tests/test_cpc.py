"""Modified CPC: conv encoder and LSTM against s3prl's, frame counts, negatives, InfoNCE, local attention."""

import importlib.util
import math
from pathlib import Path

import pytest
import signals
import torch
import yaml

import speechssl
from speechssl.frames import receptive_field
from speechssl.masking import sample_negatives
from speechssl.registry import build_upstream, make_config
from upstream.cpc import CONV_LAYERS, CPCObjective, local_causal_attention


def tiny(**overrides):
    """The registered tiny size on the raw waveform (as CPC_audio and s3prl read it) unless told otherwise."""
    return signals.tiny("cpc", **{"normalize_waveform": False, **overrides})


def count(module):
    return sum(p.numel() for p in module.parameters())


def s3prl_cpc_model():
    """s3prl's ``upstream/cpc/model.py`` (CPC_audio's networks), imported on its own."""
    spec = importlib.util.find_spec("s3prl")
    if spec is None:
        pytest.skip("s3prl not installed")
    path = Path(spec.origin).parent / "upstream" / "cpc" / "model.py"
    module_spec = importlib.util.spec_from_file_location("s3prl_cpc_model", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def cpc_params(C=256, H=256):
    """Upstream parameters by hand: 5 convs with bias, a (scale, shift) ChannelNorm each, one LSTM layer."""
    convs = sum(c_in * C * kernel + C for c_in, (kernel, _, _) in zip([1] + [C] * 4, CONV_LAYERS))
    norms = 5 * 2 * C
    lstm = 4 * (C * H + H * H + 2 * H)  # W_ih, W_hh, b_ih, b_hh for i, f, g, o
    return convs + norms + lstm


def predictor_params(D=256, ffn=2048, heads=8, window=116, K=12):
    """One post-LN Transformer layer per step: bias-free q, k, v, out; relative keys; 2 LayerNorms; FFN."""
    attention = 4 * D * D + window * (D // heads)
    return K * (attention + 2 * 2 * D + (D * ffn + ffn) + (ffn * D + D))


def test_paper_size_parameter_count():
    upstream = build_upstream("cpc")
    assert count(upstream) == cpc_params() == 1_843_456  # SUPERB's table: modified CPC, 1.84M
    assert count(CPCObjective(upstream).predictors) == predictor_params()


def test_s3prl_checkpoint_loads_in_one_line_with_s3prls_hidden_states(tmp_path):
    """s3prl's CPC networks with random weights, saved in CPC_audio's layout (its arguments and the
    CPCModel's weights), read by s3prl's UpstreamExpert and by load_upstream; both hidden states
    compared on a padded batch (s3prl pads the batch itself, and its conv stack is causal to the left)."""
    ref, expert_module = s3prl_cpc_model(), pytest.importorskip("s3prl.upstream.cpc.expert")
    C = 32
    model = ref.CPCModel(ref.CPCEncoder(C, "layerNorm"), ref.CPCAR(C, C, False, 1, mode="LSTM"))
    signals.perturbed(model, seed=1)  # ChannelNorm not the identity, so the mapping is tested
    args = {"hiddenEncoder": C, "hiddenGar": C, "nLevelsGRU": 1, "arMode": "LSTM", "normMode": "layerNorm"}
    torch.save({"config": args, "weights": model.state_dict(), "best": 0.5}, tmp_path / "cpc.pt")
    expert = expert_module.UpstreamExpert(str(tmp_path / "cpc.pt")).eval()
    ours = speechssl.load_upstream("cpc", ckpt=tmp_path / "cpc.pt")
    assert count(ours) == count(model.gEncoder) + count(model.gAR) and not ours.config.normalize_waveform
    lengths = torch.tensor([8000, 6400, 3200])  # multiples of 160: s3prl's padded frames then line up with ours
    wavs, lengths = signals.padded_tones(lengths, seconds=0.5)
    with torch.no_grad():
        expected = expert([wav[:n] for wav, n in zip(wavs, lengths)])["hidden_states"]
        feats = ours(wavs, lengths)
    assert feats.lengths.tolist() == [50, 40, 20] and len(expected) == len(feats.hidden_states) == 2
    for a, b in zip(feats.hidden_states, expected):
        for i, n in enumerate(feats.lengths.tolist()):
            # the longest utterance agrees on every frame; in a shorter one s3prl's last frame reads
            # the conv outputs of its padding (non-zero after the bias), which ours zeroes per layer:
            # there s3prl's features depend on the batch, and the frames before it agree
            m = n if n == max(feats.lengths.tolist()) else n - 1
            torch.testing.assert_close(a[i, :m], b[i, :m], atol=1e-4, rtol=1e-4)


def test_frames_hidden_sizes_and_receptive_field():
    model = tiny().eval()
    assert model.downsample_rate == 160 and model.hidden_sizes == [32, 32] and model.num_layers == 2
    assert model.min_samples == receptive_field(CONV_LAYERS) == 159
    for S in (159, 160, 161, 479, 480, 1000, 16000):
        with torch.no_grad():
            feats = model(0.1 * torch.randn(1, S))
        T = feats.hidden_states[0].shape[1]  # what the Conv1d stack gives
        assert T == feats.lengths.item() == int(model.num_frames(torch.tensor([S]))) == model.num_frames(S)
    assert model.num_frames(20480) == 128  # a multiple of 160 gives S / 160 frames
    # Frame t of z sees the 465 samples from 160 t - 153 (153 = the paddings times the strides below them).
    wav = 0.1 * torch.randn(1, 3200, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model.front_end(wav)[0][0, 1]
        for sample, inside in ((6, False), (7, True), (471, True), (472, False)):
            poked = wav.clone()
            poked[0, sample] += 1.0
            assert bool((model.front_end(poked)[0][0, 1] != base).any()) == inside, sample


def test_bad_inputs_and_configs():
    model = tiny()
    with pytest.raises(ValueError, match=r"z must be \(batch, frame, 32\), got shape \(1, 5, 7\)"):
        model.encoder(torch.zeros(1, 5, 7), torch.tensor([5]))
    with pytest.raises(ValueError, match="context_size .64. must equal conv_dim .32."):
        tiny(context_size=64)
    with pytest.raises(ValueError, match=r"conv_layers entries must be \[kernel >= 1, stride >= 1, padding >= 0\], got \[4, 2\]"):
        tiny(conv_layers=[[10, 5, 3], [4, 2]])


def _batch(lengths=(4000, 2500), seed=0):
    g = torch.Generator().manual_seed(seed)
    wavs = [0.1 * torch.randn(n, generator=g) for n in lengths]
    wavs, wav_lens = speechssl.collate(wavs)
    return {"wavs": wavs, "wav_lens": wav_lens}


def test_negatives_are_never_the_positive():
    objective = CPCObjective(tiny(num_negatives=16)).eval()
    batch = _batch((1600, 900))  # 10 and 5 frames: many draws hit a positive
    with torch.no_grad():
        z, lengths = objective.upstream.front_end(batch["wavs"], batch["wav_lens"])
        c = objective.upstream.encoder(z, lengths).last
        logits, valid, indices = objective.scores(z, c, lengths, torch.Generator().manual_seed(0))
    B, T, K, _ = logits.shape
    assert (B, T, K) == (2, 10, 4) and indices.shape == (2, 10, 16)
    hits = 0
    for b in range(B):
        L = int(lengths[b])
        for t in range(L):
            assert all(0 <= i < L and i != t for i in indices[b, t].tolist())  # same utterance, never t
            for k in range(1, K + 1):
                assert bool(valid[b, t, k - 1]) == (t + k < L)
                is_positive = indices[b, t] == t + k
                hits += int(is_positive.sum()) if t + k < L else 0
                assert torch.isneginf(logits[b, t, k - 1, 1:][is_positive]).all()
                assert torch.isfinite(logits[b, t, k - 1, 1:][~is_positive]).all()
                assert torch.isfinite(logits[b, t, k - 1, 0])
    assert hits > 0


def test_infonce_matches_a_direct_computation():
    objective = CPCObjective(tiny()).eval()
    batch = _batch()
    N, K = objective.upstream.config.num_negatives, objective.upstream.config.num_predictions
    with torch.no_grad():
        loss, logs = objective(batch, generator=torch.Generator().manual_seed(3))
        z, lengths = objective.upstream.front_end(batch["wavs"], batch["wav_lens"])
        c = objective.upstream.encoder(z, lengths).last
        predictions = [predictor(c) for predictor in objective.predictors]  # K x (B, T, D)
        _, indices = sample_negatives(z, lengths, N, generator=torch.Generator().manual_seed(3))
    D = z.shape[-1]
    losses, correct, correct_k = [], 0, [0] * K
    count_k = [0] * K
    for b in range(z.shape[0]):
        L = int(lengths[b])
        for t in range(L):
            for k in range(1, K + 1):
                if t + k >= L:
                    continue
                p = predictions[k - 1][b, t]
                positive = float(p @ z[b, t + k]) / D
                negatives = [float(p @ z[b, i]) / D for i in indices[b, t].tolist() if i != t + k]
                total = math.exp(positive) + sum(math.exp(s) for s in negatives)
                losses.append(math.log(total) - positive)
                right = positive > max(negatives)
                correct += right
                correct_k[k - 1] += right
                count_k[k - 1] += 1
    assert len(losses) == sum(int(L) * K - K * (K + 1) // 2 for L in lengths)  # every t + k < L
    assert loss.item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert logs["infonce"].item() == pytest.approx(loss.item())
    assert logs["accuracy"].item() == pytest.approx(correct / len(losses))
    assert logs["accuracy_k1"].item() == pytest.approx(correct_k[0] / count_k[0])
    assert logs[f"accuracy_k{K}"].item() == pytest.approx(correct_k[-1] / count_k[-1])
    assert not logs["infonce"].requires_grad


def test_loss_ignores_padding_content():
    objective = CPCObjective(tiny()).eval()
    batch = _batch()
    other = {**batch, "wavs": batch["wavs"].clone()}
    other["wavs"][1, 2500:] = 0.7
    with torch.no_grad():
        a, logs_a = objective(batch, generator=torch.Generator().manual_seed(0))
        b, logs_b = objective(other, generator=torch.Generator().manual_seed(0))
    assert a.item() == b.item() and logs_a["accuracy"].item() == logs_b["accuracy"].item()


def test_loss_falls_with_adam():
    torch.manual_seed(0)
    objective = CPCObjective(tiny(normalize_waveform=True))
    batch = {"wavs": signals.tones(4, seconds=1.0), "wav_lens": torch.full((4,), 16000)}
    optimizer = torch.optim.Adam(objective.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    history = []
    for step in range(30):
        loss, logs = objective(batch, step=step, generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append((loss.item(), logs["accuracy"].item()))
    assert history[0][0] == pytest.approx(math.log(17), abs=0.1)  # chance: 1 positive among 17
    assert history[-1][0] < history[0][0] - 0.3
    assert history[-1][1] > 3 / 17


def test_waveform_normalisation_uses_the_valid_samples_only():
    model = tiny(normalize_waveform=True).eval()
    wav = signals.tones(2, seconds=0.5)
    short = 0.3 * wav[1, :5000] + 0.05  # gain and offset are normalised away, up to eps
    wavs, lens = speechssl.collate([wav[0], short])
    wavs[1, 5000:] = 0.7  # padding content must not enter the statistics
    with torch.no_grad():
        batched = model(wavs, lens)
        alone = model(short[None])
        scaled = model(wav[1, :5000][None])
    T = int(batched.lengths[1])
    torch.testing.assert_close(batched.hidden_states[1][1, :T], alone.hidden_states[1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled.hidden_states[1], alone.hidden_states[1], atol=1e-2, rtol=0)


@pytest.mark.parametrize("T, W", [(5, 8), (8, 8), (23, 8), (9, 1)])
def test_local_attention_matches_a_direct_computation(T, W):
    g = torch.Generator().manual_seed(0)
    B, H, d = 2, 3, 4
    q, k, v = (torch.randn(B, H, T, d, generator=g) for _ in range(3))
    relative = torch.randn(W, d, generator=g)
    y = local_causal_attention(q, k, v, relative, torch.nn.Identity())
    expected = torch.zeros_like(y)
    for t in range(T):
        seen = range(max(0, t - W + 1), t + 1)  # itself and the W - 1 frames before
        scores = torch.stack([(q[:, :, t] * (k[:, :, s] + relative[t - s])).sum(-1) for s in seen], -1) / math.sqrt(d)
        weights = scores.softmax(-1)  # (B, H, |seen|)
        expected[:, :, t] = sum(weights[..., i, None] * v[:, :, s] for i, s in enumerate(seen))
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_predictions_are_causal():
    objective = CPCObjective(tiny()).eval()
    c = torch.randn(1, 40, 32, generator=torch.Generator().manual_seed(0))
    poked = c.clone()
    poked[0, 25] += 1.0
    with torch.no_grad():
        a, b = objective.predictors[0](c), objective.predictors[0](poked)
    assert torch.equal(a[0, :25], b[0, :25]) and not torch.equal(a[0, 25:], b[0, 25:])


def test_config_files_hold_known_keys():
    folder = Path(__file__).resolve().parent.parent / "configs" / "upstream"
    for name in ("cpc", "cpc_tiny"):
        keys = yaml.safe_load((folder / f"{name}.yaml").read_text())
        assert keys.pop("defaults") == ["/upstream_schema/cpc@_here_", "_self_"] and keys.pop("ckpt") is None
        config = make_config("cpc", **keys)
        assert config.context_size == config.conv_dim
    assert CPCObjective.crop == "random"
