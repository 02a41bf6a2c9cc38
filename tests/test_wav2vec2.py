"""wav2vec 2.0 (upstream/wav2vec2.py): parity with torchaudio and HF, the objective's parts, the step schedule."""

import pytest
import torch

import signals
from speechssl.data.dataset import AudioDataset, CropConfig
from speechssl.pretrain import pretrain
from speechssl.registry import build_upstream, get_entry
from speechssl.trainer import TrainerConfig
from upstream import wav2vec2
from upstream.modules.contrastive import cosine_logits, info_nce

torchaudio_models = pytest.importorskip("torchaudio.models")
transformers = pytest.importorskip("transformers")

CONV = [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 2, 2]]  # 80 samples per frame, 120 samples seen
SMALL = dict(conv_layers=CONV, encoder_dim=32, encoder_layers=3, encoder_heads=4, encoder_ffn_dim=48,
             pos_conv_kernel=8, pos_conv_groups=4, layerdrop=0.0)  # fmt: skip
VARIANTS = {  # our overrides of the two encoder variants
    "base": dict(SMALL, extractor_mode="group_norm", conv_bias=False, layer_norm_first=False),
    "large": dict(SMALL, extractor_mode="layer_norm", conv_bias=True, layer_norm_first=True),
}
LENGTHS = torch.tensor([4000, 2650, 1337])


def ours_from(variant: str, state: dict, converter) -> wav2vec2.Wav2Vec2:
    model = build_upstream("wav2vec2", **VARIANTS[variant]).eval()
    model.load_state_dict(converter(state, model.config), strict=True)
    return model


def assert_states_close(ours: list, theirs: list, frames: int) -> None:
    assert len(ours) == len(theirs)
    for layer, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a[:frames], b[:frames], atol=1e-4, rtol=1e-4, msg=f"hidden state {layer}")


def torchaudio_model(variant: str):
    c = VARIANTS[variant]
    return signals.perturbed(torchaudio_models.wav2vec2_model(
        extractor_mode=c["extractor_mode"], extractor_conv_layer_config=[tuple(l) for l in CONV],
        extractor_conv_bias=c["conv_bias"], encoder_embed_dim=32, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=8, encoder_pos_conv_groups=4, encoder_num_layers=3, encoder_num_heads=4,
        encoder_attention_dropout=0.0, encoder_ff_interm_features=48, encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0, encoder_layer_norm_first=c["layer_norm_first"], encoder_layer_drop=0.0, aux_num_out=None,
    ), seed=1)  # fmt: skip


def torchaudio_states(model, wav: torch.Tensor, lengths=None) -> list[torch.Tensor]:
    """torchaudio's hidden states in HF's order: the first layer's input, every layer, the final LayerNorm."""
    with torch.no_grad():
        x, frames = model.feature_extractor(wav, lengths)
        x, mask = model.encoder._preprocess(x, frames)
        first = model.encoder.transformer._preprocess(x)
        layers = model.extract_features(wav, lengths)[0]
        top = model(wav, lengths)[0]
    return [first] + layers[:-1] + [top]


@pytest.mark.parametrize("variant", ["base", "large"])
def test_torchaudio_weights_give_the_same_hidden_states_on_a_padded_batch(variant):
    theirs = torchaudio_model(variant)
    ours = ours_from(variant, theirs.state_dict(), wav2vec2.from_torchaudio)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    wavs, lengths = signals.padded_tones(LENGTHS)
    with torch.no_grad():
        feats = ours(wavs, lengths)
    assert feats.lengths.tolist() == ours.num_frames(lengths).tolist()
    for b in range(3):  # each utterance alone: what torchaudio computes without padding
        n = int(lengths[b])
        alone = torchaudio_states(theirs, wavs[b : b + 1, :n])
        assert alone[0].shape[1] == feats.lengths[b]
        assert_states_close([h[b] for h in feats.hidden_states], [h[0] for h in alone], int(feats.lengths[b]))
    if variant == "large":  # layer norm everywhere: torchaudio is padding invariant too, on the padded batch
        batch = torchaudio_states(theirs, wavs, lengths)
        for b in range(3):
            assert_states_close([h[b] for h in feats.hidden_states], [h[b] for h in batch], int(feats.lengths[b]))


def hf_config(variant: str):
    c = VARIANTS[variant]
    return transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
        conv_dim=[l[0] for l in CONV], conv_kernel=[l[1] for l in CONV], conv_stride=[l[2] for l in CONV],
        conv_bias=c["conv_bias"], feat_extract_norm="layer" if variant == "large" else "group",
        do_stable_layer_norm=c["layer_norm_first"], num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
        codevector_dim=24, proj_codevector_dim=20, num_codevectors_per_group=8, num_codevector_groups=2,
        num_negatives=5, apply_spec_augment=False,
    )  # fmt: skip


def hf_states(out) -> list[torch.Tensor]:
    """HF's hidden states, the top one as ``last_hidden_state`` (after the pre-LN variant's final LayerNorm:
    transformers 4 returned it so in ``hidden_states``, 5 returns the top layer's output before that norm)."""
    return list(out.hidden_states[:-1]) + [out.last_hidden_state]


@pytest.mark.parametrize("variant", ["base", "large"])
def test_hf_weights_give_the_same_hidden_states_on_a_padded_batch(variant):
    config = hf_config(variant)
    theirs = signals.perturbed(transformers.Wav2Vec2Model(config), seed=2)
    assert wav2vec2.config_from_hf(config).items() >= {k: v for k, v in VARIANTS[variant].items() if k != "layerdrop"}.items()
    ours = ours_from(variant, theirs.state_dict(), wav2vec2.from_hf)
    wavs, lengths = signals.padded_tones(LENGTHS)
    with torch.no_grad():
        feats = ours(wavs, lengths)
        for b in range(3):
            n = int(lengths[b])
            alone = hf_states(theirs(wavs[b : b + 1, :n], output_hidden_states=True))
            assert_states_close([h[b] for h in feats.hidden_states], [h[0] for h in alone], int(feats.lengths[b]))
        if variant == "large":
            mask = (torch.arange(wavs.shape[1]) < lengths[:, None]).long()
            batch = hf_states(theirs(wavs, attention_mask=mask, output_hidden_states=True))
            for b in range(3):
                assert_states_close([h[b] for h in feats.hidden_states], [h[b] for h in batch], int(feats.lengths[b]))


def test_hf_pretraining_weights_load_into_the_objective_and_quantize_alike():
    config = hf_config("base")
    theirs = signals.perturbed(transformers.Wav2Vec2ForPreTraining(config), seed=3)
    objective = get_entry("wav2vec2").objective(build_upstream("wav2vec2", **wav2vec2.config_from_hf(config)))
    objective.load_state_dict(wav2vec2.from_hf(theirs.state_dict(), objective.upstream.config), strict=True)
    objective.eval()
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        expected, _ = theirs.quantizer(x)  # eval: the argmax codevector of each group, concatenated
        got = objective.quantizer(x).values
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(objective.project_q(got), theirs.project_q(expected))


def test_base_has_torchaudios_parameter_count_and_the_objective_holds_the_rest():
    ours = build_upstream("wav2vec2")
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in torchaudio_models.wav2vec2_base().parameters()) == 94_370_944
    objective = get_entry("wav2vec2").objective(ours)
    assert sum(p.numel() for p in objective.parameters()) - count == 673_664
    assert ours.downsample_rate == 320 and ours.min_samples == 400 and ours.num_layers == 13


def test_large_config_composes_to_a_layer_norm_pre_ln_model():
    from hydra import compose, initialize_config_dir

    from speechssl import cli
    from speechssl.registry import make_config

    cli._register_schemas()
    with initialize_config_dir(str(cli.CONFIG_DIR), version_base=None):
        cfg = compose("pretrain", overrides=["upstream=wav2vec2_large"])
    name, _, node = cli.upstream_node(cfg)
    config = make_config(name, **node)
    assert name == "wav2vec2" and config.extractor_mode == "layer_norm" and config.conv_bias
    assert config.layer_norm_first and (config.encoder_layers, config.encoder_dim, config.final_dim) == (24, 1024, 768)


def test_contrastive_scores_are_cosines_over_temperature_and_skip_copies_of_the_positive():
    g = torch.Generator().manual_seed(0)
    predictions, targets = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    negatives = torch.tensor([[[1, 2], [0, 4], [3, 3], [1, 0], [2, 1]]] * 2)
    codes = torch.tensor([[[0], [1], [2], [3], [4]], [[7], [7], [5], [6], [8]]])  # row 1: frames 0, 1 share a code
    logits = cosine_logits(predictions, targets, negatives, 0.1, target_codes=codes)
    for b in range(2):
        for p in range(5):
            cos = torch.nn.functional.cosine_similarity
            torch.testing.assert_close(logits[b, p, 0], cos(predictions[b, p], targets[b, p], dim=0) / 0.1)
            for n in range(2):
                j = negatives[b, p, n]
                expected = -torch.inf if codes[b, j, 0] == codes[b, p, 0] else cos(predictions[b, p], targets[b, j], dim=0) / 0.1
                torch.testing.assert_close(logits[b, p, 1 + n], torch.as_tensor(expected))
    valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    loss, correct = info_nce(logits, valid)
    expected = torch.nn.functional.cross_entropy(logits[valid], torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(loss, expected)
    assert torch.equal(correct, valid & (logits[..., 0] > logits[..., 1:].amax(-1)))


def tiny_objective(**overrides):
    return get_entry("wav2vec2").objective(build_upstream("wav2vec2", **{**get_entry("wav2vec2").tiny, **overrides}))


def test_negatives_are_other_masked_frames_of_the_same_utterance(monkeypatch):
    """Spy on the draw: every distractor is a masked frame of its own utterance, never the positive, never padding."""
    objective = tiny_objective(num_negatives=30).train()
    seen = {}
    real = wav2vec2.negative_indices

    def spy(counts, num_negatives, *, positions, generator=None):
        indices = real(counts, num_negatives, positions=positions, generator=generator)
        seen.update(counts=counts, positions=positions, indices=indices)
        return indices

    monkeypatch.setattr(wav2vec2, "negative_indices", spy)
    wavs, lengths = signals.tones(3, 1.0), torch.tensor([16000, 9000, 5000])
    objective({"wavs": wavs, "wav_lens": lengths}, generator=torch.Generator().manual_seed(0))
    counts, indices = seen["counts"], seen["indices"]
    assert (counts > 0).all() and counts[0] > counts[2]
    for b in range(3):
        rows = indices[b, : counts[b]]  # (count, N) among the packed masked frames of utterance b
        assert (rows < counts[b]).all() and (rows >= 0).all()
        assert not (rows == torch.arange(int(counts[b]))[:, None]).any()
        assert len(rows.unique()) > 1


def test_temperature_follows_the_optimizer_step_under_gradient_accumulation(superb_lite_tiny, tmp_path):
    cfg = TrainerConfig(max_steps=4, warmup_steps=1, lr=1e-3, batch_seconds=2, grad_accum=2, log_every=1, save_every=4)
    overrides = {**get_entry("wav2vec2").tiny, "latent_temp": [2.0, 0.5, 0.5]}
    dataset = AudioDataset.from_manifest(superb_lite_tiny / "pretrain" / "train.tsv")
    pretrain("wav2vec2", dataset, cfg, tmp_path / "run", crop=CropConfig(max_seconds=1), overrides=overrides)
    import json

    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    temperatures = {row["step"]: row["temperature"] for row in logs if "temperature" in row}
    # logged after step s (1-based) was taken: its micro-batches ran at optimizer step s - 1
    assert temperatures == {s: max(2.0 * 0.5 ** (s - 1), 0.5) for s in range(1, 5)}


def test_a_malformed_config_is_a_clear_error():
    with pytest.raises(ValueError, match=r"conv_layers entries must be \[channels, kernel, stride\]"):
        build_upstream("wav2vec2", conv_layers=[[512, 10]])
    with pytest.raises(ValueError, match="not a multiple of 5 heads"):
        build_upstream("wav2vec2", encoder_heads=5)


def test_masked_group_norm_is_group_norm_of_each_utterance_alone():
    from upstream.modules.conv import MaskedGroupNorm

    norm = signals.perturbed(MaskedGroupNorm(6, 6), seed=4)
    x, lengths = torch.randn(3, 6, 20), torch.tensor([20, 13, 7])
    got = norm(x, torch.arange(20) < lengths[:, None])
    for b in range(3):
        n = int(lengths[b])
        expected = torch.nn.functional.group_norm(x[b : b + 1, :, :n], 6, norm.weight, norm.bias, 1e-5)[0]
        torch.testing.assert_close(got[b, :, :n], expected)
    everything = torch.ones(3, 20, dtype=torch.bool)
    torch.testing.assert_close(norm(x, everything), torch.nn.functional.group_norm(x, 6, norm.weight, norm.bias))
