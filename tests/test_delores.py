"""DeLoRes: the two losses against their formulas, the augmentations, frames, pooling, a falling loss."""

from pathlib import Path

import pytest
import signals
import torch
import yaml

import speechssl
from speechssl.registry import make_config
from upstream.delores import (
    DeLoResConfig,
    DeLoResObjective,
    barlow_twins_loss,
    log_mixup,
    pool_embedding,
    random_resize_crop,
    random_windows,
    resize_crop_boxes,
    vicreg_loss,
)


def tiny(**overrides):
    return signals.tiny("delores", **overrides)


def _pairs(N=6, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(N, D, generator=g, dtype=torch.float64)
    return z1, 0.5 * z1 + torch.randn(N, D, generator=g, dtype=torch.float64)


def test_barlow_twins_matches_its_formula_by_hand():
    z1, z2 = _pairs()
    N, D = z1.shape
    lambd = 0.0051

    def standardised(z, j):
        column = [float(z[n, j]) for n in range(N)]
        mean = sum(column) / N
        var = sum((v - mean) ** 2 for v in column) / N  # biased, as BatchNorm1d in training
        return [(v - mean) / (var + 1e-5) ** 0.5 for v in column]

    a = [standardised(z1, j) for j in range(D)]
    b = [standardised(z2, j) for j in range(D)]
    expected = 0.0
    for i in range(D):
        for j in range(D):
            c = sum(a[i][n] * b[j][n] for n in range(N)) / N
            expected += (1 - c) ** 2 if i == j else lambd * c**2
    loss, logs = barlow_twins_loss(z1, z2, lambd)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert (logs["on_diagonal"] + lambd * logs["off_diagonal"]).item() == pytest.approx(expected, rel=1e-5)
    # identical, decorrelated views: C = I up to eps, so the loss is ~0
    q, _ = torch.linalg.qr(torch.randn(64, 4, dtype=torch.float64))
    white = (q - q.mean(0)) * 8
    assert barlow_twins_loss(white, white, lambd)[0].item() < 1e-3


def test_vicreg_matches_its_formula_by_hand():
    z1, z2 = _pairs(N=5, D=3, seed=1)
    N, D = z1.shape
    invariance = sum(float(z1[n, d] - z2[n, d]) ** 2 for n in range(N) for d in range(D)) / (N * D)
    variance, covariance = 0.0, 0.0
    for z in (z1, z2):
        means = [sum(float(z[n, d]) for n in range(N)) / N for d in range(D)]
        cov = [[sum((float(z[n, i]) - means[i]) * (float(z[n, j]) - means[j]) for n in range(N)) / (N - 1)
                for j in range(D)] for i in range(D)]
        variance += sum(max(0.0, 1 - (cov[d][d] + 1e-4) ** 0.5) for d in range(D)) / D / 2
        covariance += sum(cov[i][j] ** 2 for i in range(D) for j in range(D) if i != j) / D
    loss, logs = vicreg_loss(z1, z2, [25.0, 25.0, 1.0])
    assert logs["invariance"].item() == pytest.approx(invariance, rel=1e-5)
    assert logs["variance"].item() == pytest.approx(variance, rel=1e-5)
    assert logs["covariance"].item() == pytest.approx(covariance, rel=1e-5)
    assert loss.item() == pytest.approx(25 * invariance + 25 * variance + covariance, rel=1e-5)
    assert variance > 0  # small inputs: the hinge is active
    one = vicreg_loss(z1[:1], z2[:1], [25.0, 25.0, 1.0])[0]
    assert torch.isfinite(one)  # a batch of one is finite (and teaches nothing)


def test_random_windows_lie_inside_each_utterance_and_pad_short_ones_in_the_middle():
    wavs = torch.arange(1, 2 * 3000 + 1, dtype=torch.float32).view(2, 3000)
    lens = torch.tensor([3000, 800])
    for seed in range(20):
        out = random_windows(wavs, lens, 1000, torch.Generator().manual_seed(seed))
        assert out.shape == (2, 1000)
        start = int(out[0, 0]) - 1
        assert 0 <= start <= 2000 and torch.equal(out[0], wavs[0, start : start + 1000])
        assert torch.equal(out[1, :100], torch.zeros(100)) and torch.equal(out[1, 900:], torch.zeros(100))
        assert torch.equal(out[1, 100:900], wavs[1, :800])  # all of it, centred, nothing of the padding
    a = random_windows(wavs, lens, 1000, torch.Generator().manual_seed(3))
    assert torch.equal(a, random_windows(wavs, lens, 1000, torch.Generator().manual_seed(3)))


def test_mixup_mixes_another_utterance_within_the_ratio():
    g = torch.Generator().manual_seed(0)
    U, copies = 4, 2
    x = torch.randn(U, 10, 6, generator=g).repeat(copies, 1, 1)
    mixed, a, partner = log_mixup(x, 0.4, torch.Generator().manual_seed(1), copies=copies)
    assert mixed.shape == x.shape and bool(((a >= 0) & (a < 0.4)).all())
    own = torch.arange(U * copies) % U
    assert bool((partner != own).all()) and bool((partner < U).all())
    for n in range(U * copies):
        expected = torch.log((1 - a[n]) * x[n].exp() + a[n] * x[int(partner[n])].exp() + torch.finfo(x.dtype).eps)
        torch.testing.assert_close(mixed[n], expected)
    again = log_mixup(x, 0.4, torch.Generator().manual_seed(1), copies=copies)[0]
    assert torch.equal(mixed, again)
    alone, _, p = log_mixup(x[:1], 0.4, torch.Generator().manual_seed(1))
    assert p.tolist() == [0]
    torch.testing.assert_close(alone, x[:1], atol=1e-5, rtol=1e-5)  # nothing to mix with


def test_resize_crop_boxes_lie_in_the_canvas_and_respect_the_scales():
    config = DeLoResConfig()
    boxes = resize_crop_boxes(2000, (64, 96), config, torch.Generator().manual_seed(0), "cpu")
    top, left, height, width = boxes.unbind(1)
    assert bool((top >= 0).all()) and bool((top + height <= 64).all())  # canvas: 1.0 x 64 bins
    assert bool((left >= 0).all()) and bool((left + width <= 144).all())  # 1.5 x 96 frames
    assert height.min() >= int(0.6 * 64) - 1 and height.max() == 64  # clipped to the canvas
    assert width.min() >= int(0.6 * 96) - 1 and width.max() <= 144 and width.max() > 96
    assert left.max() > 0 and top.max() > 0


def test_resize_crop_of_the_whole_input_is_the_input_and_a_box_is_resized_bicubically():
    config = DeLoResConfig(freq_scale=[1.0, 1.0], time_scale=[1.0, 1.0], virtual_crop_scale=[1.0, 1.0])
    x = torch.randn(3, 20, 8, generator=torch.Generator().manual_seed(0))
    out, boxes = random_resize_crop(x, config, torch.Generator().manual_seed(0))
    assert boxes.tolist() == [[0, 0, 8, 20]] * 3
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    # any box: bicubic (Keys, a = -0.75, PyTorch's) at BYOL-A's resize pixels, on the canvas with
    # the input centred in zeros; output k of a side reads box pixel k (extent - 1) / (out - 1)
    config = DeLoResConfig()
    x = torch.randn(2, 12, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out, boxes = random_resize_crop(x, config, torch.Generator().manual_seed(4))
    canvas = torch.zeros(2, 18, 6, dtype=torch.float64)  # time 1.5 x 12, input at frames 3..14
    canvas[:, 3:15] = x

    def kernel(d, a=-0.75):
        d = abs(d)
        return (a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1 else (a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0)

    for n in range(2):
        top, left, height, width = boxes[n].tolist()
        for k in range(12):
            for m in range(6):
                ct, cf = left + k * (width - 1) / 11, top + m * (height - 1) / 5
                value = 0.0
                for i in range(int(ct) - 1, int(ct) + 3):
                    for j in range(int(cf) - 1, int(cf) + 3):
                        value += kernel(ct - i) * kernel(cf - j) * float(canvas[n, min(max(i, 0), 17), min(max(j, 0), 5)])
                assert float(out[n, k, m]) == pytest.approx(value, abs=1e-6)


def test_views_are_seeded_and_differ():
    objective = DeLoResObjective(tiny()).eval()
    wavs = signals.tones(3, seconds=1.2)
    lens = torch.tensor([19200, 12000, 6000])
    a = objective.views(wavs, lens, torch.Generator().manual_seed(0))
    b = objective.views(wavs, lens, torch.Generator().manual_seed(0))
    c = objective.views(wavs, lens, torch.Generator().manual_seed(1))
    assert a.shape == (6, 96, 64)  # 0.95 s = 15,200 samples -> 96 frames, two views of 3
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[:3], a[3:])  # the two views of an utterance are augmented apart


def test_frames_match_num_frames_for_many_lengths():
    model = tiny().eval()
    assert model.downsample_rate == 1280 and model.min_samples == 1120
    assert model.hidden_sizes == [8 * 8, 64, 64]
    for S in (1120, 1121, 1279, 1280, 1281, 2399, 2400, 2559, 2560, 5000, 15200, 16000, 16001, 33333):
        with torch.no_grad():
            feats = model(0.1 * torch.randn(1, S))
        T = (S // 160 + 1) // 8
        assert feats.lengths.item() == T == int(model.num_frames(torch.tensor([S]))) == model.num_frames(S), S
        assert all(h.shape[1] == T for h in feats.hidden_states)
        assert feats.extra["embedding"].shape == (1, 64)
    with pytest.raises(speechssl.AudioError, match="1119 samples, shorter than delores's receptive field of 1120"):
        model(torch.zeros(1, 1119))


def test_embedding_pools_valid_frames_only():
    h = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [9.0, 9.0]], [[-1.0, 4.0], [0.0, 0.0], [0.0, 0.0]]])
    pooled = pool_embedding(h, torch.tensor([2, 1]))
    torch.testing.assert_close(pooled, torch.tensor([[3.0 + 2.0, 0.0 - 1.0], [-1.0 - 1.0, 4.0 + 4.0]]))
    model = tiny().eval()
    wav = signals.tones(2, seconds=1.0)
    wavs, lens = speechssl.collate([wav[0], wav[1, :7000]])
    wavs[1, 7000:] = 0.5
    with torch.no_grad():
        batched = model(wavs, lens)
        alone = model(wav[1, :7000][None])
    torch.testing.assert_close(batched.extra["embedding"][1], alone.extra["embedding"][0], atol=1e-5, rtol=0)
    T = int(batched.lengths[1])
    top = batched.hidden_states[-1][1, :T]
    torch.testing.assert_close(batched.extra["embedding"][1], top.max(0).values + top.mean(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss_name", ["barlow", "vicreg"])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(loss_name):
    torch.manual_seed(0)
    objective = DeLoResObjective(tiny(loss=loss_name)).train()
    batch = {"wavs": signals.tones(6, seconds=1.0), "wav_lens": torch.tensor([16000, 15000, 14000, 12000, 11000, 9000])}
    optimizer = torch.optim.Adam(objective.parameters(), lr=3e-3)
    history = []
    for step in range(15):
        loss, logs = objective(batch, step=step, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        assert logs[loss_name].item() == pytest.approx(loss.item()) and logs["std"] > 0
        assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())
    assert history[-1] < 0.7 * history[0], history


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="delores: loss must be one of barlow, vicreg, got 'simclr'"):
        tiny(loss="simclr")
    with pytest.raises(ValueError, match="vicreg_weights must be"):
        tiny(vicreg_weights=[25.0, 25.0])
    with pytest.raises(ValueError, match="num_blocks must be >= 1 with n_mels >= 2\\*\\*num_blocks"):
        tiny(n_mels=4)
    model = tiny()
    with pytest.raises(ValueError, match=r"log-mel must be \(batch, frame, 64\), got shape \(1, 5, 7\)"):
        model.encoder(torch.zeros(1, 5, 7), torch.tensor([5]))


def test_config_files_hold_known_keys():
    folder = Path(__file__).resolve().parent.parent / "configs" / "upstream"
    for name in ("delores", "delores_tiny"):
        keys = yaml.safe_load((folder / f"{name}.yaml").read_text())
        assert keys.pop("defaults") == ["/upstream_schema/delores@_here_", "_self_"] and keys.pop("ckpt") is None
        assert make_config("delores", **keys).loss == "barlow"
    paper = speechssl.build_upstream("delores")
    assert paper.hidden_sizes == [512, 2048, 2048]
    assert sum(p.numel() for p in paper.parameters()) == 5_321_856  # BYOL-A's 5.3M encoder with d = 2048
