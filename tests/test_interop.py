"""Checkpoints of other toolkits through one ``load_upstream(name, ckpt=PATH)``: HF, torchaudio and
fairseq layouts with numeric parity, the HF export read back by ``transformers``, the s3prl bridge,
and pickles that try to run code (refused, without effect) or are cut short (a clear error).

The s3prl parity of each s3prl model lives beside its other s3prl tests (test_mockingjay.py,
test_apc.py, test_cpc.py), the fairseq one of vq-wav2vec in test_vq_wav2vec.py."""

import argparse
import os
import re
import subprocess
import sys

import pytest
import signals
import torch

import speechssl
from speechssl.checkpoint import CheckpointManager, save_upstream
from speechssl.errors import CheckpointError, ConfigError
from speechssl.interop import export_upstream, fairseq_literal

transformers = pytest.importorskip("transformers")
import test_wav2vec2 as w2v  # noqa: E402  (its small variants, reference models and comparisons)

LENGTHS = w2v.LENGTHS


def alone_states(theirs_states, wavs, lengths, b):
    """The reference's hidden states of utterance ``b`` run alone (its group norm averages over padding)."""
    return [h[0] for h in theirs_states(wavs[b : b + 1, : int(lengths[b])])]


def assert_parity(ours, theirs_states, *, per_utterance=True):
    """Every hidden state of ``ours`` on a padded batch against the reference's, to 1e-4."""
    wavs, lengths = signals.padded_tones(LENGTHS)
    with torch.no_grad():
        feats = ours(wavs, lengths)
        for b in range(len(lengths)):
            expected = alone_states(theirs_states, wavs, lengths, b)
            w2v.assert_states_close([h[b] for h in feats.hidden_states], expected, int(feats.lengths[b]))


# -- HF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant, kind", [("base", "model"), ("large", "pretraining")])
def test_hf_wav2vec2_folder_loads_in_one_line(tmp_path, variant, kind):
    config = w2v.hf_config(variant)
    cls = transformers.Wav2Vec2Model if kind == "model" else transformers.Wav2Vec2ForPreTraining
    theirs = signals.perturbed(cls(config), seed=2)
    theirs.save_pretrained(tmp_path / "hf")
    ours = speechssl.load_upstream("wav2vec2", ckpt=tmp_path / "hf")
    assert ours.config.layer_norm_first == (variant == "large") and not ours.training
    encoder = theirs if kind == "model" else theirs.wav2vec2
    assert_parity(ours, lambda wav: w2v.hf_states(encoder(wav, output_hidden_states=True)))


def hubert_hf():
    config = transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        conv_dim=[l[0] for l in w2v.CONV], conv_kernel=[l[1] for l in w2v.CONV], conv_stride=[l[2] for l in w2v.CONV],
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, hidden_dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, apply_spec_augment=False,
    )  # fmt: skip
    return signals.perturbed(transformers.HubertModel(config), seed=6)


def test_hf_hubert_folder_with_bin_weights(tmp_path):
    theirs = hubert_hf()
    theirs.save_pretrained(tmp_path / "hf")
    # the weights as older transformers wrote them (transformers 5 writes safetensors only)
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(theirs.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    ours = speechssl.load_upstream("hubert", ckpt=tmp_path / "hf")
    assert_parity(ours, lambda wav: w2v.hf_states(theirs(wav, output_hidden_states=True)))
    with pytest.raises(CheckpointError, match="an HF 'hubert' folder .HubertModel., not wav2vec2"):
        speechssl.load_upstream("wav2vec2", ckpt=tmp_path / "hf")
    with pytest.raises(CheckpointError, match="upstream 'apc' imports speechssl checkpoints and these layouts: s3prl"):
        speechssl.load_upstream("apc", ckpt=tmp_path / "hf")


def test_hf_export_round_trip(tmp_path):
    """Our wav2vec 2.0 and HuBERT exported to HF folders that transformers loads and runs alike."""
    for name, cls, variant in (("wav2vec2", transformers.Wav2Vec2Model, "large"), ("hubert", transformers.HubertModel, "base")):
        ours = signals.perturbed(speechssl.build_upstream(name, **{k: v for k, v in w2v.VARIANTS[variant].items()}), seed=7)
        save_upstream(ours, tmp_path / name / "ckpt")
        out = export_upstream(tmp_path / name / "ckpt", "hf", tmp_path / name / "hf")
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
        theirs = transformers.AutoModel.from_pretrained(out).eval()
        assert type(theirs) is cls
        assert_parity(ours, lambda wav: w2v.hf_states(theirs(wav, output_hidden_states=True)))
        back = speechssl.load_upstream(name, ckpt=out)  # and read back by us
        torch.testing.assert_close(back.state_dict(), ours.state_dict())


def test_cli_export(tmp_path):
    ours = speechssl.build_upstream("hubert", **w2v.VARIANTS["base"])
    save_upstream(ours, tmp_path / "run" / "checkpoints" / "step_0000001" / "model.safetensors")
    (tmp_path / "run" / "last").symlink_to("checkpoints/step_0000001")
    cli = [sys.executable, "-m", "speechssl.cli", "export", f"ckpt={tmp_path / 'run'}", f"out={tmp_path / 'hf'}"]
    done = subprocess.run([*cli, "hydra.run.dir=h"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert transformers.HubertConfig.from_pretrained(tmp_path / "hf").num_hidden_layers == 3
    with pytest.raises(ConfigError, match="format='s3prl': upstream 'hubert' exports to hf"):
        export_upstream(tmp_path / "run", "s3prl", tmp_path / "other")


# -- torchaudio ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["base", "large"])
def test_torchaudio_state_dict(tmp_path, variant):
    theirs = w2v.torchaudio_model(variant)
    torch.save(theirs.state_dict(), tmp_path / "wav2vec2.pt")
    # the heads are not in the weights: torchaudio's builders have 12 or 16; this small model has 4
    ours = speechssl.load_upstream("wav2vec2", ckpt=tmp_path / "wav2vec2.pt", encoder_heads=4)
    assert ours.config.layer_norm_first == (variant == "large") and ours.config.conv_layers == w2v.CONV
    assert_parity(ours, lambda wav: w2v.torchaudio_states(theirs, wav))
    with pytest.raises(CheckpointError, match="width 32, which no torchaudio builder has: give encoder_heads=N"):
        speechssl.load_upstream("wav2vec2", ckpt=tmp_path / "wav2vec2.pt")


def test_torchaudio_hubert_pretraining_state_dict(tmp_path):
    import test_hubert

    theirs = test_hubert.torchaudio_pretrain_model()
    torch.save(theirs.state_dict(), tmp_path / "hubert.pt")
    ours = speechssl.load_upstream("hubert", ckpt=tmp_path / "hubert.pt", encoder_heads=4)
    assert (ours.config.num_clusters, ours.config.final_dim) == (12, 20)
    assert_parity(ours, lambda wav: w2v.torchaudio_states(theirs.wav2vec2, wav))


# -- fairseq ---------------------------------------------------------------------------------------

# torchaudio's names -> fairseq's (fairseq's Wav2Vec2Model / HubertModel modules), written out here
TO_FAIRSEQ = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"^feature_extractor\.conv_layers\.0\.layer_norm\.(?=.*GROUP)", r"feature_extractor.conv_layers.0.2."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.2.1."),
    (r"^encoder\.feature_projection\.projection\.", "post_extract_proj."),
    (r"^encoder\.feature_projection\.layer_norm\.", "layer_norm."),
    (r"^encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
    (r"^encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
    (r"^encoder\.transformer\.pos_conv_embed\.conv\.bias", "encoder.pos_conv.0.bias"),
    (r"^encoder\.transformer\.layer_norm\.", "encoder.layer_norm."),
    (r"^encoder\.transformer\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"^encoder\.transformer\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"^encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"^encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
]


def fairseq_state(torchaudio_state, group_norm):
    out = {}
    for key, value in torchaudio_state.items():
        probe = key + ("GROUP" if group_norm else "")
        for pattern, replacement in TO_FAIRSEQ:
            if re.search(pattern, probe):
                key = re.sub(pattern.replace("(?=.*GROUP)", ""), replacement, key)
                break
        else:
            raise AssertionError(f"no fairseq name for {key}")
        out[key] = value
    return out


FAIRSEQ_ENCODER = dict(conv_feature_layers="[(16, 10, 5)] + [(16, 3, 2)] * 2 + [(16, 2, 2)]", encoder_embed_dim=32,
                       encoder_layers=3, encoder_attention_heads=4, encoder_ffn_embed_dim=48, conv_pos=8,
                       conv_pos_groups=4, encoder_layerdrop=0.0)  # fmt: skip


@pytest.mark.parametrize("variant", ["base", "large"])
def test_fairseq_wav2vec2_with_a_namespace_config(tmp_path, variant):
    theirs = w2v.torchaudio_model(variant)
    large = variant == "large"
    state = fairseq_state(theirs.state_dict(), group_norm=not large)
    state.update({"mask_emb": torch.zeros(32), "quantizer.vars": torch.zeros(1, 16, 8), "project_q.weight": torch.zeros(4, 4),
                  "final_proj.weight": torch.zeros(4, 32)})  # fmt: skip
    args = argparse.Namespace(arch="wav2vec2", extractor_mode="layer_norm" if large else "default", conv_bias=large,
                              layer_norm_first=large, latent_temp="(2, 0.5, 0.999995)", **FAIRSEQ_ENCODER)  # fmt: skip
    torch.save({"args": args, "model": state, "optimizer_history": [{"lr": 1e-4}], "extra_state": {"epoch": 3}},
               tmp_path / "wav2vec_small.pt")  # fmt: skip
    with pytest.raises(Exception):  # torch itself refuses the Namespace without weights_only=False
        torch.load(tmp_path / "wav2vec_small.pt", weights_only=True)
    ours = speechssl.load_upstream("wav2vec2", ckpt=tmp_path / "wav2vec_small.pt")
    assert ours.config.latent_temp == [2.0, 0.5, 0.999995] and ours.config.encoder_heads == 4
    assert_parity(ours, lambda wav: w2v.torchaudio_states(theirs, wav))
    with pytest.raises(CheckpointError, match="a fairseq checkpoint of a 'wav2vec2' model, not hubert"):
        speechssl.load_upstream("hubert", ckpt=tmp_path / "wav2vec_small.pt")


def test_fairseq_hubert_with_a_dict_config(tmp_path):
    import test_hubert

    theirs = test_hubert.torchaudio_pretrain_model()
    state = fairseq_state(theirs.wav2vec2.state_dict(), group_norm=True)
    state.update({"mask_emb": torch.zeros(32), "label_embs_concat": torch.zeros(12, 20), "final_proj.weight": torch.zeros(20, 32),
                  "final_proj.bias": torch.zeros(20)})  # fmt: skip
    cfg = {"model": {"_name": "hubert", **FAIRSEQ_ENCODER, "encoder_layers": 2, "final_dim": 20}, "task": {"labels": ["km"]}}
    torch.save({"cfg": cfg, "model": state}, tmp_path / "hubert_base_ls960.pt")
    ours = speechssl.load_upstream("hubert", ckpt=tmp_path / "hubert_base_ls960.pt")
    assert (ours.config.num_clusters, ours.config.final_dim) == (12, 20)
    assert_parity(ours, lambda wav: w2v.torchaudio_states(theirs.wav2vec2, wav))


def test_fairseq_config_strings_are_read_as_literals_only():
    assert fairseq_literal("[(512, 10, 5)] + [(512, 3, 2)] * 2") == [(512, 10, 5), (512, 3, 2), (512, 3, 2)]
    assert fairseq_literal("(2, -0.5, 0.999995)") == (2, -0.5, 0.999995)
    with pytest.raises(CheckpointError, match="is not a literal expression"):
        fairseq_literal("__import__('os').system('true')")


# -- pickles that try to run code, and truncated files --------------------------------------------


class Payload:
    """Unpickling it would create ``target`` (through os.system, or through open)."""

    def __init__(self, target, how):
        self.target, self.how = target, how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.target}",))
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("how", ["system", "open"])
def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path, how):
    target = tmp_path / "pwned"
    torch.save({"args": argparse.Namespace(arch="wav2vec2"), "model": {"w": Payload(target, how)}}, tmp_path / "evil.pt")
    expected = "'posix.system'" if how == "system" else "'(builtins|io).open'"
    with pytest.raises(CheckpointError, match=f"evil.pt: the checkpoint asks to import {expected}, which is not allowed"):
        speechssl.load_upstream("wav2vec2", ckpt=tmp_path / "evil.pt")
    assert not target.exists()
    # planted as the trainer state a run resumes from: refused the same way
    folder = tmp_path / "run" / "checkpoints" / "step_0000001"
    folder.mkdir(parents=True)
    torch.save(Payload(target, how), folder / "trainer_state.pt")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(folder / "train.safetensors"))
    with pytest.raises(CheckpointError, match="unreadable training checkpoint"):
        CheckpointManager(tmp_path / "run").load(folder)
    assert not target.exists()


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    torch.save({"model": {"w": torch.zeros(1000)}, "cfg": {"model": {"_name": "wav2vec2"}}}, tmp_path / "full.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:1500])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable checkpoint, truncated or corrupt"):
        speechssl.load_upstream("wav2vec2", ckpt=tmp_path / "cut.pt")
    save_upstream(speechssl.build_upstream("apc", **signals.get_entry("apc").tiny), tmp_path / "ours")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "ours" / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cut.safetensors: not a readable safetensors checkpoint"):
        speechssl.load_upstream("apc", ckpt=tmp_path / "cut.safetensors")


def test_a_run_folder_loads_its_last_checkpoint(tmp_path):
    model = signals.tiny("apc")
    save_upstream(model, tmp_path / "run" / "checkpoints" / "step_0000002")
    (tmp_path / "run" / "last").symlink_to("checkpoints/step_0000002")
    loaded = speechssl.load_upstream("apc", ckpt=tmp_path / "run")
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


# -- the s3prl bridge --------------------------------------------------------------------------------


def s3prl_apc_checkpoint(path):
    import test_apc

    apc = test_apc.s3prl_apc_module()
    audio = {"feat_type": "fbank", "feat_dim": 80, "frame_length": 25, "frame_shift": 10, "dither": 0, "cmvn": True}
    paras = {"num_layers": 3, "hidden_size": 32, "dropout": 0.1, "residual": True, "vq": None}
    torch.save({"config": {"data": {"audio": audio}, "model": {"paras": paras}},
                "model": signals.perturbed(apc.APC(80, 32, 3, 0.1, True), seed=0).state_dict()}, path)  # fmt: skip
    return path


def s3prl_mockingjay_checkpoint(path):
    import test_mockingjay

    return test_mockingjay.s3prl_checkpoint(path, layers=1)


@pytest.mark.parametrize("expert, make", [("apc", s3prl_apc_checkpoint), ("mockingjay", s3prl_mockingjay_checkpoint)])
def test_s3prl_bridge_wraps_an_expert_with_exact_lengths(tmp_path, expert, make):
    expert_module = pytest.importorskip(f"s3prl.upstream.{expert}.expert")
    ckpt = make(tmp_path / "s3prl.ckpt")
    ours = speechssl.load_upstream(f"s3prl:{expert}", ckpt=ckpt)
    theirs = expert_module.UpstreamExpert(str(ckpt)).eval()
    assert ours.name == f"s3prl:{expert}" and ours.downsample_rate == 160 and not ours.training
    wavs, lengths = signals.padded_tones(torch.tensor([4000, 2650, 1337]))
    with torch.no_grad():
        feats = ours(wavs, lengths)
        assert feats.lengths.tolist() == ours.num_frames(lengths).tolist()
        for b, n in enumerate(lengths.tolist()):  # each utterance: what s3prl gives it alone
            expected = theirs([wavs[b, :n]])["hidden_states"]
            assert len(expected) == len(feats.hidden_states) == ours.num_layers
            assert feats.lengths[b] == expected[0].shape[1]
            for a, e in zip(feats.hidden_states, expected):
                torch.testing.assert_close(a[b, : feats.lengths[b]], e[0], atol=1e-5, rtol=1e-5)
                assert (a[b, feats.lengths[b] :] == 0).all()


def test_s3prl_bridge_refuses_code_before_s3prl_reads_the_file(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"config": {}, "model": Payload(target, "system")}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="'posix.system', which is not allowed"):
        speechssl.load_upstream("s3prl:apc", ckpt=tmp_path / "evil.ckpt")
    assert not target.exists()


def test_speechssl_extract_runs_an_s3prl_expert(tmp_path):
    """``speechssl extract upstream=s3prl upstream.expert=mockingjay upstream.ckpt=PATH`` (the
    command, in a subprocess) writes the bridge's hidden states; an unknown expert names the known."""
    pytest.importorskip("s3prl.upstream.mockingjay.expert")
    import soundfile as sf
    from safetensors import safe_open

    ckpt = s3prl_mockingjay_checkpoint(tmp_path / "mj.ckpt")
    sf.write(tmp_path / "a.wav", signals.tones(1, 0.5)[0].numpy(), 16000)
    run = subprocess.run(
        [sys.executable, "-m", "speechssl.cli", "extract", "upstream=s3prl", "upstream.expert=mockingjay",
         f"upstream.ckpt={ckpt}", "input=a.wav", "output=out", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    bridge = speechssl.load_upstream("s3prl:mockingjay", ckpt=ckpt)
    with torch.no_grad():
        expected = bridge(speechssl.load_audio(tmp_path / "a.wav")[None]).hidden_states
    with safe_open(tmp_path / "out" / "a.safetensors", "pt") as f:
        assert f.metadata()["upstream"] == "s3prl:mockingjay"
        assert len(list(f.keys())) == len(expected) == 2
        for i, e in enumerate(expected):
            torch.testing.assert_close(f.get_tensor(f"hidden_state_{i:02d}"), e[0], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match=r"unknown s3prl expert 'mockingjy' .*; known: .*\bmockingjay\b"):
        speechssl.load_upstream("s3prl:mockingjy", ckpt=ckpt)
