"""vq-wav2vec: against fairseq's model (s3prl's copy) with its weights, frames, padding, the BCE, codes on disk."""

import argparse
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import signals
import soundfile as sf
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import speechssl
from speechssl.errors import AudioError, ConfigError
from speechssl.extract import extract
from speechssl.masking import sample_negatives
from speechssl.registry import build_upstream, get_entry
from upstream.vq_wav2vec import FEATURE_LAYERS, MaskedGroupNorm, VQWav2VecObjective, from_fairseq

QUANTIZERS = ["gumbel", "kmeans"]


def tiny(**overrides):
    return signals.tiny("vq_wav2vec", **overrides)


def count(module):
    return sum(p.numel() for p in module.parameters())


def fairseq_wav2vec(**config):
    """fairseq's ``Wav2VecModel`` as s3prl copies it (``s3prl/upstream/wav2vec/wav2vec_model.py``)."""
    return fairseq_wav2vec_and_config(**config)[0]


def fairseq_wav2vec_and_config(**config):
    """The model and its fairseq config (the ``Wav2VecConfig`` a checkpoint's ``args`` hold)."""
    module = pytest.importorskip("s3prl.upstream.wav2vec.wav2vec_model")
    defaults = dict(activation="gelu", vq_type="gumbel", vq_depth=2, combine_groups=True, log_compression=False,
                    skip_connections_agg=True, infonce=False)
    fairseq_config = module.Wav2VecConfig(**{**defaults, **config})
    return module.Wav2VecModel(fairseq_config), fairseq_config


def spec(layers):
    """Our [channels, kernel, stride] lists as fairseq's layer string."""
    return "[" + ", ".join(f"({d}, {k}, {s})" for d, k, s in layers) + "]"


def test_paper_size_parameter_count_and_offset_match_fairseq():
    reference = fairseq_wav2vec(conv_feature_layers=spec(FEATURE_LAYERS))
    model = build_upstream("vq_wav2vec")
    objective = VQWav2VecObjective(model)
    predictions = count(reference.wav2vec_predictions)
    assert count(model) == count(reference) - predictions == 30_917_248
    assert count(objective.project_to_steps) == predictions == 3_146_240
    assert model.prediction_offset == reference.wav2vec_predictions.offset == 3
    assert model.min_samples == 465 and model.downsample_rate == 160 and model.num_layers == 13
    kmeans = build_upstream("vq_wav2vec", vector_quantizer="kmeans")
    assert count(kmeans) == count(fairseq_wav2vec(conv_feature_layers=spec(FEATURE_LAYERS), vq_type="kmeans")) - predictions


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_matches_fairseq_with_its_weights(quantizer, tmp_path):
    """z, codes, quantized frames, every aggregator layer (s3prl's hidden states), perplexities, predictions,
    the upstream read in one line from a checkpoint in fairseq's layout (its config as an argparse.Namespace)."""
    conv = [[16, 10, 5], [16, 8, 4], [16, 4, 2], [16, 4, 2], [16, 4, 2], [16, 1, 1]]
    aggregator = [[16, 2, 1], [24, 3, 1], [24, 4, 1]]  # 16 -> 24 needs a residual projection
    G, V = 2, 8
    torch.manual_seed(0)
    reference, fairseq_config = fairseq_wav2vec_and_config(conv_feature_layers=spec(conv), conv_aggregator_layers=spec(aggregator),
                                                           vq_type=quantizer, vq_vars=V, vq_groups=G, prediction_steps=3)  # fmt: skip
    reference.eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if re.search(r"conv_layers\.\d+\.[23]\.|projection\.1\.", name):
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
    args = argparse.Namespace(arch="wav2vec", **{k: getattr(v, "value", v) for k, v in vars(fairseq_config).items()})
    torch.save({"args": args, "model": reference.state_dict(), "optimizer_history": []}, tmp_path / "vq-wav2vec.pt")
    model = speechssl.load_upstream("vq_wav2vec", ckpt=tmp_path / "vq-wav2vec.pt")
    assert (model.config.conv_layers, model.config.aggregator_layers) == (conv, aggregator)
    objective = VQWav2VecObjective(model).eval()
    predictor = {k: v for k, v in from_fairseq(reference.state_dict(), G, V).items() if k.startswith("project_to_steps.")}
    objective.project_to_steps.load_state_dict({k.split(".", 1)[1]: v for k, v in predictor.items()})

    hooked = []  # s3prl's hooks: the inputs of aggregator layers 2 .. L, then the aggregator's output
    handles = [layer.register_forward_pre_hook(lambda m, inputs: hooked.append(inputs[0].transpose(1, 2)))
               for layer in list(reference.feature_aggregator.conv_layers)[1:]]
    wavs = signals.tones(2, seconds=0.3)
    with torch.no_grad():
        z_ref = reference.feature_extractor(wavs)  # (B, C, T)
        q_res = reference.vector_quantizer(z_ref, produce_targets=True)
        c_ref = reference.feature_aggregator(q_res["x"])
        steps_ref = reference.wav2vec_predictions.project_to_steps(c_ref.unsqueeze(-1))  # (B, C, T, K)
        feats = model(wavs)
        z, lengths = model.front_end(wavs)
        quantized = model.quantize(z, lengths)
        steps = objective.predictions(feats.last)  # (B, T, K, C)
    for handle in handles:
        handle.remove()
    expected_states = [z_ref.transpose(1, 2), *hooked, c_ref.transpose(1, 2)]
    assert len(feats.hidden_states) == len(expected_states) == 4
    for ours, theirs in zip(feats.hidden_states, expected_states):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert torch.equal(feats.extra["codes"], q_res["targets"])
    assert feats.extra["codes"].shape == (2, int(model.num_frames(4800)), G)
    torch.testing.assert_close(feats.extra["quantized"], q_res["x"].transpose(1, 2), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(steps, steps_ref.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(quantized.code_perplexity, q_res["code_perplexity"])
    if quantizer == "gumbel":
        torch.testing.assert_close(quantized.prob_perplexity, q_res["prob_perplexity"])
    else:
        torch.testing.assert_close(quantized.loss, q_res["kmeans_loss"], atol=1e-6, rtol=1e-4)


def test_frames_hidden_sizes_and_receptive_field():
    model = tiny().eval()
    assert model.downsample_rate == 160 and model.min_samples == 465 and model.hidden_sizes == [32] * 4
    for S in (465, 466, 624, 625, 626, 1000, 3333, 16000):
        with torch.no_grad():
            feats = model(0.1 * torch.randn(1, S))
        T = feats.hidden_states[0].shape[1]  # what the Conv1d stack gives
        assert T == feats.lengths.item() == int(model.num_frames(torch.tensor([S]))) == model.num_frames(S), S
        assert all(h.shape[1] == T for h in feats.hidden_states) and feats.extra["codes"].shape == (1, T, 2)
    assert model.num_frames(16000) == 98  # (S - 465) // 160 + 1: no padding, as fairseq
    with pytest.raises(AudioError, match="464 samples, shorter than vq_wav2vec's receptive field of 465"):
        model(torch.zeros(1, 464))


def test_masked_group_norm_is_group_norm_of_each_utterance_alone():
    g = torch.Generator().manual_seed(0)
    for groups in (1, 2):
        norm = MaskedGroupNorm(groups, 6)
        with torch.no_grad():
            norm.weight.normal_(generator=g)
            norm.bias.normal_(generator=g)
        x = 3 + 2 * torch.randn(2, 6, 9, generator=g)
        lengths = torch.tensor([9, 4])
        x[1, :, 4:] = 100.0  # padding content must not enter the statistics
        y = norm(x, torch.arange(9)[None] < lengths[:, None])
        for b, L in enumerate(lengths.tolist()):
            expected = F.group_norm(x[b : b + 1, :, :L], groups, norm.weight, norm.bias, eps=1e-5)
            torch.testing.assert_close(y[b : b + 1, :, :L], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_padding_and_batch_do_not_change_an_utterance(quantizer):
    model = tiny(vector_quantizer=quantizer).eval()
    g = torch.Generator().manual_seed(0)
    long, short = 0.1 * torch.randn(9000, generator=g), 0.1 * torch.randn(5000, generator=g)
    wavs, lens = speechssl.collate([long, short])
    wavs[1, 5000:] = 0.7
    with torch.no_grad():
        alone, batched = model(short[None]), model(wavs, lens)
        T, T_long = int(alone.lengths[0]), int(batched.lengths[0])
        assert batched.lengths.tolist() == [T_long, T] and T < T_long
        for a, b in zip(alone.hidden_states + [alone.extra["codes"], alone.extra["quantized"]],
                        batched.hidden_states + [batched.extra["codes"], batched.extra["quantized"]]):
            torch.testing.assert_close(b[1, :T], a[0], atol=1e-5, rtol=0)
            assert not b[1, T:].any()  # padding frames are zero
        # the training loss ignores what the padding holds (same draws: they depend on the lengths only)
        objective = VQWav2VecObjective(model).train()
        other = wavs.clone()
        other[1, 5000:] = -0.3
        losses = [objective({"wavs": w, "wav_lens": lens}, generator=torch.Generator().manual_seed(1))
                  for w in (wavs, other)]
    assert losses[0][0].item() == losses[1][0].item()
    assert losses[0][1]["code_perplexity"].item() == losses[1][1]["code_perplexity"].item()


def _batch():
    g = torch.Generator().manual_seed(0)
    wavs, wav_lens = speechssl.collate([0.1 * torch.randn(n, generator=g) for n in (3000, 2000)])
    return {"wavs": wavs, "wav_lens": wav_lens}


def test_negatives_are_never_the_positive_nor_padding():
    objective = VQWav2VecObjective(tiny()).eval()
    batch = _batch()
    with torch.no_grad():
        z, lengths = objective.upstream.front_end(batch["wavs"], batch["wav_lens"])
        q = objective.upstream.quantize(z, lengths).values
        c = objective.upstream.aggregate(q, lengths)[-1]
        logits, valid, indices = objective.scores(q, c, lengths, torch.Generator().manual_seed(0))
    B, T, K, _ = logits.shape
    assert (B, T, K) == (2, 16, 4) and indices.shape == (2, 16, 4, 10) and lengths.tolist() == [16, 10]
    offset = objective.upstream.prediction_offset
    for b in range(B):
        L = int(lengths[b])
        for t in range(T):
            for k in range(K):
                target = t + offset + k
                assert bool(valid[b, t, k]) == (target < L)
                if target < L:
                    assert all(0 <= i < L and i != target for i in indices[b, t, k].tolist())
                    assert torch.isfinite(logits[b, t, k]).all()
    assert int(valid.sum()) == sum(max(0, L - offset - k) for L in lengths.tolist() for k in range(K))


def test_bce_matches_a_direct_computation():
    objective = VQWav2VecObjective(tiny()).eval()  # eval: argmax codes, so the negatives are the only draw
    batch = _batch()
    N, K = 10, 4
    with torch.no_grad():
        loss, logs = objective(batch, generator=torch.Generator().manual_seed(3))
        z, lengths = objective.upstream.front_end(batch["wavs"], batch["wav_lens"])
        q = objective.upstream.quantize(z, lengths).values
        c = objective.upstream.aggregate(q, lengths)[-1]
        _, indices = sample_negatives(q, lengths, N, generator=torch.Generator().manual_seed(3))
    weight, bias = objective.project_to_steps.weight.detach(), objective.project_to_steps.bias.detach()  # (Cc, C, 1, K)
    offset = objective.upstream.prediction_offset

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))

    losses, correct = [], 0
    for b in range(2):
        L = int(lengths[b])
        for t in range(L):
            for k in range(K):
                j = t + offset + k  # the target frame
                if j >= L:
                    continue
                p = c[b, t] @ weight[:, :, 0, k] + bias
                positive = float(p @ q[b, j])
                negatives = [float(p @ q[b, i]) for i in indices[b, j].tolist()]
                losses.append(-log_sigmoid(positive) - sum(log_sigmoid(-s) for s in negatives))
                correct += positive > max(negatives)
    assert len(losses) == sum(L - offset - k for L in lengths.tolist() for k in range(K))
    assert loss.item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert logs["bce"].item() == pytest.approx(loss.item())  # Gumbel: no quantizer loss in the recipe
    assert logs["accuracy"].item() == pytest.approx(correct / len(losses))
    assert not any(v.requires_grad for v in logs.values())


def test_kmeans_adds_its_codebook_and_commitment_loss_with_weight_one():
    objective = VQWav2VecObjective(tiny(vector_quantizer="kmeans")).train()
    with torch.no_grad():
        loss, logs = objective(_batch(), generator=torch.Generator().manual_seed(0))
    assert logs["kmeans_loss"].item() > 0 and logs["temperature"].item() == 0
    assert loss.item() == pytest.approx(logs["bce"].item() + logs["kmeans_loss"].item(), rel=1e-6)


def test_gumbel_temperature_follows_the_step():
    objective = VQWav2VecObjective(tiny(gumbel_temperature=[2.0, 0.5, 0.9])).train()
    paper = VQWav2VecObjective(tiny()).train()
    batch = _batch()
    with torch.no_grad():
        for step, expected in [(0, 2.0), (3, 2.0 * 0.9**3), (100, 0.5)]:
            logs = objective(batch, step=step, generator=torch.Generator().manual_seed(0))[1]
            assert logs["temperature"].item() == pytest.approx(expected, rel=1e-6)
        logs = paper(batch, step=100_000, generator=torch.Generator().manual_seed(0))[1]
        assert logs["temperature"].item() == pytest.approx(2.0 * 0.999995**100_000, rel=1e-6)  # 1.213
        z, lengths = objective.upstream.front_end(batch["wavs"], batch["wav_lens"])
    # Gumbel-max codes do not depend on the temperature; the straight-through gradient does
    sampled, grads = [], []
    for step in (0, 100):
        x = z.clone().requires_grad_(True)
        quantized = objective.upstream.quantize(x, lengths, step=step, generator=torch.Generator().manual_seed(0))
        (quantized.values * torch.linspace(-1, 1, quantized.values.shape[-1])).sum().backward()
        sampled.append(quantized.codes)
        grads.append(x.grad)
    assert torch.equal(sampled[0], sampled[1]) and not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_a_few_steps_lower_the_loss_and_reach_every_weight(quantizer):
    torch.manual_seed(0)
    objective = VQWav2VecObjective(tiny(vector_quantizer=quantizer)).train()
    batch = {"wavs": signals.tones(4, seconds=0.5), "wav_lens": torch.tensor([8000, 7000, 6000, 5000])}
    optimizer = torch.optim.Adam(objective.parameters(), lr=3e-3)
    history = []
    for step in range(20):
        loss, logs = objective(batch, step=step, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        if step == 0:  # straight-through: the feature encoder learns through the quantizer
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters())
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.7 * history[0], history


def test_bad_configs_are_clear_errors():
    with pytest.raises(ConfigError, match=r"conv_layers entries must be \[channels >= 1, kernel >= 1, stride >= 1\], got \[32, 10\]"):
        tiny(conv_layers=[[32, 10], [32, 8, 4]])
    with pytest.raises(ConfigError, match=r"aggregator_layers must have stride 1 .*got \[32, 3, 2\]"):
        tiny(aggregator_layers=[[32, 2, 1], [32, 3, 2]])
    with pytest.raises(ConfigError, match="vector_quantizer='vq'; expected one of gumbel, kmeans"):
        tiny(vector_quantizer="vq")
    with pytest.raises(ConfigError, match="32 conv channels must split into vq_groups=3"):
        tiny(vq_groups=3)
    with pytest.raises(ConfigError, match="activation='tanh'"):
        tiny(activation="tanh")
    with pytest.raises(ConfigError, match="prediction_offset must be >= 1"):
        tiny(prediction_offset=0)
    with pytest.raises(ValueError, match=r"z must be \(batch, frame, 32\), got shape \(1, 5, 7\)"):
        tiny().encoder(torch.zeros(1, 5, 7), torch.tensor([5]))


def test_extract_writes_codes_matching_the_features(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for name, n in (("a", 16000), ("b", 7000)):
        sf.write(tmp_path / "in" / f"{name}.wav", 0.1 * rng.standard_normal(n), 16000)
    model = tiny().eval()
    model.name = "vq_wav2vec"
    report = extract(model, tmp_path / "in", tmp_path / "out", layer="last", codes=True)
    assert sorted(report.written) == ["a", "b"] and not report.skipped
    for name in ("a", "b"):
        tensors = load_file(tmp_path / "out" / f"{name}.safetensors")
        with torch.no_grad():
            feats = model(speechssl.load_audio(tmp_path / "in" / f"{name}.wav")[None])
        assert set(tensors) == {"features", "codes"} and tensors["codes"].dtype == torch.int64
        assert torch.equal(tensors["codes"], feats.extra["codes"][0])  # (T, G), the utterance's frames only
        assert tensors["codes"].shape == (tensors["features"].shape[0], 2)
    with pytest.raises(ConfigError, match=r"codes=true: upstream 'mfcc' has no discrete codes .*its extra outputs: none"):
        extract(speechssl.load_upstream("mfcc"), tmp_path / "in", tmp_path / "out2", codes=True)
    assert not (tmp_path / "out2").exists()  # refused before any work


def test_cli_extract_codes(tmp_path):
    sf.write(tmp_path / "x.wav", 0.1 * np.random.default_rng(1).standard_normal(8000), 16000)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "speechssl.cli", "extract", "input=x.wav", *args,
                               f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    run = cli("upstream=vq_wav2vec_tiny", "output=o", "codes=true")
    assert run.returncode == 0, run.stderr[-2000:]
    tensors = load_file(tmp_path / "o" / "x.safetensors")
    assert tensors["codes"].shape == ((8000 - 465) // 160 + 1, 2) and len([k for k in tensors if k.startswith("hidden_state_")]) == 5
    run = cli("upstream=mfcc", "output=o2", "codes=true")
    assert run.returncode == 1 and "codes=true: upstream 'mfcc' has no discrete codes" in run.stderr
    assert "Traceback" not in run.stderr
