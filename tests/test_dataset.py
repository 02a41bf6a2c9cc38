"""Pretraining data: crops owned by the data config, manifest columns kept, frame labels cut with the audio."""

import numpy as np
import pytest
import soundfile as sf
import torch

from speechssl.data.dataset import AudioDataset, CropConfig
from speechssl.data.manifest import write_manifest
from speechssl.errors import ConfigError
from speechssl.frames import crop_frame_labels, frames_centered, frames_conv_stack, frames_snip_edges
from speechssl.interface import Features, Upstream
from speechssl.objective import LABEL_PAD, Objective
from speechssl.trainer import Trainer, TrainerConfig

SCALE = 2.0**-16  # sample s of every file holds s * SCALE: a sample's value says where it came from
LENGTHS = [16000, 23456, 9000, 31111, 12345]
RULES = {  # name: (hop, samples -> frames)
    "snip 400/160": (160, lambda n: frames_snip_edges(n, 400, 160)),
    "centred 160": (160, lambda n: frames_centered(n, 160)),
    "conv stack 320": (320, lambda n: frames_conv_stack(n, [(10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2)])),
    "padded conv stack 160": (160, lambda n: frames_conv_stack(n, [(10, 5, 3), (8, 4, 2), (4, 2, 1), (4, 2, 1), (4, 2, 1)])),
}


class RuleUpstream(Upstream):
    """An upstream that is only its frame rule."""

    min_samples = 400

    def __init__(self, hop, rule):
        super().__init__(None)
        self.name, self.downsample_rate, self.rule = "rule", hop, rule

    def num_frames(self, wav_lens):
        return self.rule(wav_lens)

    def input_frames(self, wavs, wav_lens):
        return wavs[..., None], wav_lens

    def encoder(self, x, lengths):
        return Features([x], lengths)


class FrameLabelObjective(Objective):
    """Asks for a speaker column and per-frame labels; checks every batch it gets against the audio."""

    columns = ("speaker",)
    frame_labels = ("frame",)
    crop = "random"

    def __init__(self, upstream):
        super().__init__(upstream)
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, batch, *, step, generator=None):
        hop = self.upstream.downsample_rate
        for b, offset in enumerate(batch["crop_offset"]):
            n, T = int(batch["wav_lens"][b]), int(batch["label_lens"][b])
            assert offset % hop == 0 and T == self.upstream.num_frames(n)
            assert batch["wavs"][b, 0] == offset * SCALE  # the audio starts at the offset ...
            expected = torch.arange(offset // hop, offset // hop + T)  # ... and the labels at its frame
            assert torch.equal(batch["frame"][b, :T], expected) and (batch["frame"][b, T:] == LABEL_PAD).all()
            assert batch["speaker"][b] == f"spk{batch['ids'][b][-1]}"
        self.seen.append((step, list(batch["ids"]), list(batch["crop_offset"])))
        return self.weight * 0 + batch["wavs"].sum() * 0, {}


def corpus(tmp_path, hop, rule):
    rows = []
    for i, n in enumerate(LENGTHS):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, (np.arange(n) * SCALE).astype(np.float32), 16000, subtype="FLOAT")
        frames = " ".join(str(t) for t in range(rule(n)))
        rows.append({"id": f"u{i}", "path": path.name, "num_samples": n, "speaker": f"spk{i}", "frame": frames})
    write_manifest(tmp_path / "train.tsv", rows, ["id", "path", "num_samples", "speaker", "frame"])
    return AudioDataset.from_manifest(tmp_path / "train.tsv")


@pytest.mark.parametrize("rule", RULES)
def test_frame_labels_follow_a_random_crop(rule, tmp_path):
    hop, frames = RULES[rule]
    upstream = RuleUpstream(hop, frames)
    objective = FrameLabelObjective(upstream)
    dataset = corpus(tmp_path, hop, frames).for_model(upstream, objective, CropConfig(max_seconds=0.5), seed=3)
    assert dataset.crop == "random"  # the objective's choice, as data.crop is not set
    offsets = set()
    for epoch in range(4):
        batch = objective.collate([dataset.item(i, epoch) for i in range(len(dataset))])
        objective(batch, step=epoch)
        assert batch["wav_lens"].tolist() == [min(n, 8000) for n in LENGTHS]
        offsets |= {(i, o) for i, o in enumerate(batch["crop_offset"])}
    assert len(offsets) > len(LENGTHS) + 4  # the long ones were cut in several places
    assert all(o == 0 for i, o in offsets if LENGTHS[i] <= 8000)


def test_crops_are_a_pure_function_of_seed_epoch_and_index(tmp_path):
    hop, frames = RULES["snip 400/160"]
    upstream = RuleUpstream(hop, frames)
    base = corpus(tmp_path, hop, frames)
    a = base.for_model(upstream, FrameLabelObjective(upstream), CropConfig(max_seconds=0.5), seed=0)
    b = base.for_model(upstream, FrameLabelObjective(upstream), CropConfig(max_seconds=0.5), seed=0)
    c = base.for_model(upstream, FrameLabelObjective(upstream), CropConfig(max_seconds=0.5), seed=1)
    windows = lambda d, e: [d.window(i, e) for i in range(len(d))]  # noqa: E731
    assert windows(a, 2) == windows(b, 2) and windows(a, 2) != windows(a, 3) and windows(a, 2) != windows(c, 2)
    first = base.for_model(upstream, FrameLabelObjective(upstream), CropConfig(max_seconds=0.5, crop="first"), seed=0)
    assert windows(first, 5) == [(0, min(n, 8000)) for n in LENGTHS]
    uncut = base.for_model(upstream, FrameLabelObjective(upstream), CropConfig(max_seconds=None), seed=0)
    assert windows(uncut, 1) == [(0, n) for n in LENGTHS]


def test_the_trainer_serves_the_objective_its_batches(tmp_path):
    """Through the loop, with two workers: every batch checked by the objective, crops varying by epoch."""
    hop, frames = RULES["conv stack 320"]
    upstream = RuleUpstream(hop, frames)
    objective = FrameLabelObjective(upstream)
    dataset = corpus(tmp_path, hop, frames).for_model(upstream, objective, CropConfig(max_seconds=0.6), seed=0)
    cfg = TrainerConfig(max_steps=8, warmup_steps=1, batch_seconds=1.2, num_workers=2, save_every=8, log_every=8)
    Trainer(objective, cfg, tmp_path / "run").fit(dataset, objective.collate)
    assert [step for step, _, _ in objective.seen] == list(range(8))
    offsets = {(u, o) for _, ids, crops in objective.seen for u, o in zip(ids, crops)}
    assert len({u for u, o in offsets if o > 0}) >= 2


def test_frame_label_rule_errors():
    labels = torch.arange(10)
    assert torch.equal(crop_frame_labels(labels, 320, 960, 160, lambda n: n // 160), torch.arange(2, 8))
    with pytest.raises(ValueError, match="crop offset 100 is not a multiple of the frame hop 160"):
        crop_frame_labels(labels, 100, 960, 160, lambda n: n // 160)
    with pytest.raises(ValueError, match=r"10 frame labels, but samples \[960, 1920\) need frames \[6, 12\)"):
        crop_frame_labels(labels, 960, 960, 160, lambda n: n // 160)


def test_missing_columns_and_bad_crop_are_named(tmp_path):
    hop, frames = RULES["snip 400/160"]
    upstream = RuleUpstream(hop, frames)
    dataset = corpus(tmp_path, hop, frames)
    objective = FrameLabelObjective(upstream)
    objective.frame_labels = ("km",)
    with pytest.raises(ConfigError, match="FrameLabelObjective needs manifest column.s. km; the training set has speaker, frame"):
        dataset.for_model(upstream, objective, CropConfig(), seed=0)
    with pytest.raises(ConfigError, match="data.crop='middle'; expected one of first, random"):
        dataset.for_model(upstream, FrameLabelObjective(upstream), CropConfig(crop="middle"), seed=0)
    with pytest.raises(ConfigError, match="data.max_seconds=0; expected seconds > 0 or null"):
        dataset.for_model(upstream, FrameLabelObjective(upstream), CropConfig(max_seconds=0), seed=0)
    short = corpus(tmp_path, hop, lambda n: frames(n) - 3)  # labels three frames short of the rule
    objective = FrameLabelObjective(upstream)
    served = short.for_model(upstream, objective, CropConfig(max_seconds=None), seed=0)
    with pytest.raises(ConfigError, match=r"u0.wav \(u0\): column 'frame': 95 frame labels, but samples \[0, 16000\) need frames \[0, 98\)"):
        served.item(0, 0)
