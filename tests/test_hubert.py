"""HuBERT (upstream/hubert.py): parity with torchaudio and HF, and the masked-prediction loss."""

import pytest
import torch
import torch.nn.functional as F

import signals
from speechssl.objective import LABEL_PAD
from speechssl.registry import build_upstream, get_entry
from upstream import hubert, wav2vec2

torchaudio_models = pytest.importorskip("torchaudio.models")
transformers = pytest.importorskip("transformers")

CONV = [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 2, 2]]
SMALL = dict(conv_layers=CONV, encoder_dim=32, encoder_layers=2, encoder_heads=4, encoder_ffn_dim=48,
             pos_conv_kernel=8, pos_conv_groups=4, layerdrop=0.0, num_clusters=12, final_dim=20)  # fmt: skip
LENGTHS = torch.tensor([4000, 2650, 1337])


def torchaudio_pretrain_model():
    return signals.perturbed(torchaudio_models.hubert_pretrain_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[tuple(l) for l in CONV], extractor_conv_bias=False,
        encoder_embed_dim=32, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=8, encoder_pos_conv_groups=4,
        encoder_num_layers=2, encoder_num_heads=4, encoder_attention_dropout=0.0, encoder_ff_interm_features=48,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False, encoder_layer_drop=0.0,
        mask_prob=0.8, mask_selection="static", mask_other=0.0, mask_length=10, no_mask_overlap=False,
        mask_min_space=1, mask_channel_prob=0.0, mask_channel_selection="static", mask_channel_other=0.0,
        mask_channel_length=10, no_mask_channel_overlap=False, mask_channel_min_space=1, skip_masked=False,
        skip_nomask=False, num_classes=12, final_dim=20, feature_grad_mult=None,
    ), seed=5)  # fmt: skip


def test_torchaudio_pretraining_weights_load_into_the_objective_and_give_the_same_hidden_states():
    theirs = torchaudio_pretrain_model()
    objective = get_entry("hubert").objective(build_upstream("hubert", **SMALL)).eval()
    objective.load_state_dict(hubert.from_torchaudio_pretrain(theirs.state_dict(), objective.upstream.config), strict=True)
    wavs, lengths = signals.padded_tones(LENGTHS)
    with torch.no_grad():
        feats = objective.upstream(wavs, lengths)
        for b in range(3):  # torchaudio's group norm averages over padding: compare with each utterance alone
            wav = wavs[b : b + 1, : int(lengths[b])]
            layers = theirs.wav2vec2.extract_features(wav)[0]
            n = int(feats.lengths[b])
            assert layers[0].shape[1] == n
            for ours, expected in zip(feats.hidden_states[1:], layers):
                torch.testing.assert_close(ours[b, :n], expected[0], atol=1e-4, rtol=1e-4)
        # the cluster scores: cosine of the projection to each label embedding / 0.1, as torchaudio's LogitGenerator
        top = feats.hidden_states[-1][0, :5]
        projected = theirs.logit_generator.final_proj(top)
        expected = F.cosine_similarity(projected[:, None], theirs.logit_generator.label_embeddings[None], dim=-1) / 0.1
        torch.testing.assert_close(objective.logits(top), expected, atol=1e-4, rtol=1e-4)


def test_hf_hubert_weights_give_the_same_hidden_states_on_a_padded_batch():
    config = transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        conv_dim=[l[0] for l in CONV], conv_kernel=[l[1] for l in CONV], conv_stride=[l[2] for l in CONV],
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, hidden_dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, apply_spec_augment=False,
    )  # fmt: skip
    theirs = signals.perturbed(transformers.HubertModel(config), seed=6)
    ours = build_upstream("hubert", **SMALL).eval()
    ours.load_state_dict(hubert.from_hf_hubert(theirs.state_dict(), ours.config), strict=True)
    wavs, lengths = signals.padded_tones(LENGTHS)
    with torch.no_grad():
        feats = ours(wavs, lengths)
        for b in range(3):
            out = theirs(wavs[b : b + 1, : int(lengths[b])], output_hidden_states=True)
            expected = list(out.hidden_states[:-1]) + [out.last_hidden_state]
            n = int(feats.lengths[b])
            assert len(expected) == len(feats.hidden_states)
            for layer, (a, e) in enumerate(zip(feats.hidden_states, expected)):
                torch.testing.assert_close(a[b, :n], e[0], atol=1e-4, rtol=1e-4, msg=f"hidden state {layer}")


def labelled_batch(objective, seed=0):
    up = objective.upstream
    wavs, lengths = signals.tones(3, 0.5), torch.tensor([8000, 6000, 3000])
    wavs = wavs.masked_fill(torch.arange(wavs.shape[1]) >= lengths[:, None], 0.0)
    T = int(up.num_frames(lengths).max())
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, up.config.clusters, (3, T), generator=g)
    labels = labels.masked_fill(torch.arange(T) >= up.num_frames(lengths)[:, None], LABEL_PAD)
    return {"wavs": wavs, "wav_lens": lengths, "km": labels}


def test_loss_is_the_cross_entropy_of_cosine_scores_over_masked_frames(monkeypatch):
    objective = get_entry("hubert").objective(signals.tiny("hubert", unmasked_weight=0.5)).train()
    batch = labelled_batch(objective)
    masks = {}
    real = wav2vec2.span_mask  # HuBERT masks through wav2vec 2.0's masked_pass

    def spy(*args, **kwargs):
        masks["mask"] = real(*args, **kwargs)
        return masks["mask"]

    monkeypatch.setattr(wav2vec2, "span_mask", spy)
    torch.manual_seed(0)
    loss, logs = objective(batch, generator=torch.Generator().manual_seed(1))
    mask = masks["mask"]
    up = objective.upstream
    lengths = up.num_frames(batch["wav_lens"])
    valid = torch.arange(mask.shape[1]) < lengths[:, None]
    with torch.no_grad():  # the same forward, recomputed by hand (dropout off for the comparison)
        objective.eval()
        z, frames = up.front_end(batch["wavs"], batch["wav_lens"])
        _, projected = up.feature_projection(z)
        x = torch.where(mask[..., None], objective.mask_embedding, projected)
        top = up.context(x, frames).last
        logits = F.cosine_similarity(objective.final_proj(top)[:, :, None], objective.label_embeddings[None, None], dim=-1) / 0.1
        masked = F.cross_entropy(logits[valid & mask], batch["km"][valid & mask])
        unmasked = F.cross_entropy(logits[valid & ~mask], batch["km"][valid & ~mask])
        objective.train()
    assert mask.any() and (~mask & valid).any() and not (mask & ~valid).any()
    torch.manual_seed(0)
    objective.eval()
    loss, logs = objective(batch, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logs["masked_loss"], masked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logs["unmasked_loss"], unmasked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, masked + 0.5 * unmasked + 10 * logs["feature_penalty"], atol=1e-5, rtol=1e-5)


def test_labels_in_the_padding_are_never_scored():
    objective = get_entry("hubert").objective(signals.tiny("hubert", unmasked_weight=1.0)).eval()
    batch = labelled_batch(objective)
    other = dict(batch, km=batch["km"].clone())
    T = other["km"].shape[1]
    padding = torch.arange(T) >= objective.upstream.num_frames(batch["wav_lens"])[:, None]
    other["km"][padding] = 3  # a real class where the padding marker was
    a, _ = objective(batch, generator=torch.Generator().manual_seed(0))
    b, _ = objective(other, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)


def test_clear_errors_for_labels_out_of_range_and_a_bad_config():
    objective = get_entry("hubert").objective(signals.tiny("hubert")).eval()
    batch = labelled_batch(objective)
    batch["km"][0, 0] = objective.upstream.config.clusters
    with pytest.raises(ValueError, match="frame labels reach 8, but num_clusters is 8"):
        objective(batch, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="iteration must be 1 or 2"):
        build_upstream("hubert", iteration=3)
    assert build_upstream("hubert", iteration=2).config.clusters == 500
    assert build_upstream("hubert").config.clusters == 100


def test_base_has_torchaudios_hubert_base_parameter_count():
    ours = build_upstream("hubert")
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in torchaudio_models.hubert_base().parameters())
    objective = get_entry("hubert").objective(ours)
    assert sum(p.numel() for p in objective.parameters()) - count == 768 + 768 * 256 + 256 + 100 * 256
