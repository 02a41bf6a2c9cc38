"""speechssl cluster: cluster-quality measures, the frame-label resampling rule, and the command end to end."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from speechssl.cli import main
from speechssl.cluster import SILENCE, KMeansConfig, assign_clusters, cluster_quality, contingency, frame_phones
from speechssl.data.dataset import AudioDataset
from speechssl.data.manifest import read_manifest
from speechssl.errors import ConfigError
from speechssl.frames import resample_frame_labels
from speechssl.registry import build_upstream, list_upstreams

# the model whose frames the labels follow: HuBERT, or wav2vec 2.0 (the same 320-sample conv rule) before it exists
TARGET = "hubert" if "hubert" in list_upstreams() else "wav2vec2"


def test_quality_of_a_hand_computed_table():
    # 2 phones x 3 clusters over 8 frames: p(y,c) = [[3, 1, 0], [0, 1, 3]] / 8
    phones = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    clusters = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    counts = contingency(phones, clusters)
    assert counts.tolist() == [[3, 1, 0], [0, 1, 3]]
    q = cluster_quality(counts)
    assert q.phone_purity == pytest.approx((3 + 1 + 3) / 8)  # each cluster's top phone (a tie in cluster 1)
    assert q.cluster_purity == pytest.approx((3 + 3) / 8)  # each phone's top cluster
    mi = 2 * (3 / 8) * math.log((3 / 8) / (1 / 2 * 3 / 8)) + 2 * (1 / 8) * math.log((1 / 8) / (1 / 2 * 1 / 4))
    assert q.mutual_information == pytest.approx(mi)
    assert q.phone_entropy == pytest.approx(math.log(2))
    assert q.pnmi == pytest.approx(mi / math.log(2))
    assert (q.frames, q.phones, q.clusters) == (8, 2, 3)


def test_mutual_information_matches_sklearn_and_the_extremes():
    rng = np.random.default_rng(0)
    phones = rng.integers(0, 7, 500)
    clusters = (phones * 3 + rng.integers(0, 4, 500)) % 11  # partly informative
    q = cluster_quality(contingency(phones, clusters))
    assert q.mutual_information == pytest.approx(mutual_info_score(phones, clusters))
    assert 0 < q.pnmi < 1
    perfect = cluster_quality(contingency(phones, phones + 5))  # a relabelling: every measure is 1
    assert perfect.pnmi == pytest.approx(1) and perfect.phone_purity == 1 and perfect.cluster_purity == 1
    single = cluster_quality(contingency(phones, np.zeros_like(phones)))  # one cluster says nothing
    assert single.pnmi == pytest.approx(0, abs=1e-12)
    assert single.phone_purity == pytest.approx(np.bincount(phones).max() / len(phones))


def test_resample_frame_labels_takes_the_feature_frame_at_the_same_time():
    labels = torch.arange(10)
    # 10 ms labels onto 20 ms frames: every other label, the last clipped to the end
    assert resample_frame_labels(labels, 6, hop=320, label_hop=160).tolist() == [0, 2, 4, 6, 8, 9]
    assert resample_frame_labels(labels, 4, hop=160, label_hop=160).tolist() == [0, 1, 2, 3]  # same rate
    # 20 ms onto 10 ms: each label twice (round half up: t / 2 -> 0, 1, 1, 2, 2, ...)
    assert resample_frame_labels(labels[:3], 6, hop=160, label_hop=320).tolist() == [0, 1, 1, 2, 2, 2]
    # a non-integer ratio (15 ms onto 10 ms): round(1.5 t)
    assert resample_frame_labels(labels, 4, hop=240, label_hop=160).tolist() == [0, 2, 3, 5]
    assert resample_frame_labels(labels, 0, hop=320, label_hop=160).tolist() == []
    with pytest.raises(ValueError, match="no frame labels"):
        resample_frame_labels(labels[:0], 3, hop=320, label_hop=160)


def test_mfcc_frames_land_on_the_target_frames_of_the_same_samples():
    # MFCC frame i covers samples [160 i, 160 i + 400), the conv stack's frame t [320 t, 320 t + 400)
    mfcc, target = build_upstream("mfcc"), build_upstream(TARGET)
    for n in (400, 719, 720, 16000, 16399, 33333):
        t_mfcc, t_target = int(mfcc.num_frames(torch.tensor(n))), int(target.num_frames(torch.tensor(n)))
        index = resample_frame_labels(torch.arange(t_mfcc), t_target, target.downsample_rate, mfcc.downsample_rate)
        assert len(index) == t_target
        assert (index * 160 == torch.arange(t_target) * 320).all()  # the same first sample, no clipping needed


def test_frame_phones_reads_the_alignment_at_frame_centres():
    # frames of 320 samples, 400 long: centres 200, 520, 840, 1160, 1480
    names = frame_phones("a b", "300,600 600,1000", 5, hop=320, window=400)
    assert names == [SILENCE, "a", "b", SILENCE, SILENCE]
    assert frame_phones("", "", 2, hop=320, window=400) == [SILENCE, SILENCE]
    with pytest.raises(ValueError, match="2 phones but 1"):
        frame_phones("a b", "0,10", 1, hop=320, window=400)
    with pytest.raises(ValueError, match="overlap"):
        frame_phones("a b", "0,10 5,20", 1, hop=320, window=400)


def test_assign_clusters_is_the_nearest_centroid():
    centroids = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    frames = torch.tensor([[1.0, 1.0], [9.0, -1.0], [2.0, 7.0], [6.0, 0.0]])
    assert assign_clusters(frames, centroids).tolist() == [0, 1, 2, 1]


def test_kmeans_settings_are_checked():
    for bad, message in ((dict(k=1), "k=1; expected an integer of at least 2"),
                         (dict(batch_size=0), "batch_size=0"), (dict(k=10, max_frames=5), "max_frames=5")):
        with pytest.raises(ConfigError, match=message):
            KMeansConfig(**bad).check()


def cli(tmp_path, *args):
    """``speechssl cluster ...`` in this process; returns (status, the run's log)."""
    run = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    status = main(["cluster", f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={run}", "n_init=2", *args])
    log = run / "cluster.log"
    return status, log.read_text() if log.exists() else ""


@pytest.fixture(scope="module")
def clustered(superb_lite_tiny, tmp_path_factory):
    """SUPERB-lite tiny's pretraining manifest clustered on MFCC, scored on the PR training alignments."""
    tmp = tmp_path_factory.mktemp("cluster")
    args = [f"manifest={superb_lite_tiny / 'pretrain' / 'train.tsv'}", f"out={tmp / 'km'}", "k=20",
            f"frame_rate_of={TARGET}", f"quality={superb_lite_tiny / 'pr' / 'train.tsv'}"]
    first = cli(tmp, *args)
    return tmp, args, first


def test_cluster_writes_labels_at_the_target_frame_rate(clustered, superb_lite_tiny):
    tmp, _, (status, log) = clustered
    assert status == 0, log
    source = read_manifest(superb_lite_tiny / "pretrain" / "train.tsv")
    rows = read_manifest(tmp / "km" / "train.tsv")
    assert [r["id"] for r in rows] == [r["id"] for r in source]
    assert list(rows[0]) == [*source[0], "km"]  # every column kept, the labels added
    target = build_upstream(TARGET)
    used = set()
    for row, src in zip(rows, source):
        assert {k: row[k] for k in src} == src
        labels = [int(v) for v in row["km"].split()]
        assert len(labels) == int(target.num_frames(torch.tensor(row["num_samples"])))
        used.update(labels)
    assert used <= set(range(20)) and len(used) > 10
    # the pretraining data cuts the labels with the audio under the model's own frame rule
    model = build_upstream("hubert", **_tiny("hubert")) if TARGET == "hubert" else None
    if model is not None:
        from speechssl.data.dataset import CropConfig
        from speechssl.registry import get_entry

        objective = get_entry("hubert").objective(model)
        data = AudioDataset.from_manifest(tmp / "km" / "train.tsv").for_model(
            model, objective, CropConfig(max_seconds=1.0, crop="random"), seed=0)
        item = data.item(0, epoch=1)
        assert len(item["km"]) == int(model.num_frames(torch.tensor(len(item["wav"]))))


def _tiny(name):
    from speechssl.registry import get_entry

    return get_entry(name).tiny


def test_cluster_writes_centroids_and_quality(clustered):
    tmp, _, (status, log) = clustered
    assert status == 0, log
    from safetensors.torch import load_file

    centroids = load_file(tmp / "km" / "kmeans.safetensors")["centroids"]
    assert centroids.shape == (20, 39) and centroids.dtype == torch.float32
    summary = json.loads((tmp / "km" / "quality.json").read_text())
    q = summary["quality"]
    assert summary["scored_utterances"] == 24 and summary["scored_frames"] > 1000
    assert q["frames"] == summary["scored_frames"] and 0 < q["pnmi"] < 1
    assert 0 < q["phone_purity"] <= 1 and 0 < q["cluster_purity"] <= 1
    text = (tmp / "km" / "quality.md").read_text()
    assert f"Scored {summary['scored_frames']} frames of 24 aligned utterances" in text and "PNMI" in text


def test_a_rerun_skips_every_stage(clustered):
    tmp, args, (status, log) = clustered
    assert status == 0, log
    assert "features: 24 of 24 utterance(s)" in log and "kmeans: wrote" in log
    before = {p.name: p.read_bytes() for p in (tmp / "km").iterdir()}
    status, log = cli(tmp, *args)
    assert status == 0, log
    for line in ("features: all 24 utterance(s)", "kmeans: ", "labels: ", "quality: "):
        assert any(line in x and "skipping" in x for x in log.splitlines()), (line, log)
    assert {p.name: p.read_bytes() for p in (tmp / "km").iterdir()} == before
    # another K refits the k-means and relabels, from the cached features
    status, log = cli(tmp, *[a for a in args if not a.startswith("k=")], "k=5")
    assert status == 0, log
    assert "features: all 24" in log and "kmeans: wrote" in log and "labels: wrote" in log
    assert max(int(v) for r in read_manifest(tmp / "km" / "train.tsv") for v in r["km"].split()) < 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["manifest=MISSING/train.tsv"], "manifest=MISSING/train.tsv: no such manifest"),
        (["k=1"], "k=1; expected an integer of at least 2 clusters"),
        (["layer=3"], "layer=3 out of range: upstream 'mfcc' has 1 hidden state(s), layer 0..0"),
        (["frame_rate_of=hubret"], "unknown upstream 'hubret'; known: "),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, superb_lite_tiny, args, message):
    manifest = f"manifest={superb_lite_tiny / 'pretrain' / 'train.tsv'}"
    status, log = cli(tmp_path, manifest, f"out={tmp_path / 'km'}", *args)
    assert status == 1
    errors = [line for line in log.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and message in errors[0], log
    assert not (tmp_path / "km" / "train.tsv").exists()


def test_an_unknown_upstream_is_one_line(tmp_path, capsys):
    assert main(["cluster", "upstream=hubret", "manifest=x.tsv", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown upstream 'hubret' (no configs/upstream/hubret.yaml); known: " in err[0]
    assert "mfcc" in err[0]


def test_quality_defaults_to_the_manifest_own_alignments(tmp_path, superb_lite_tiny):
    status, log = cli(tmp_path, f"manifest={superb_lite_tiny / 'pr' / 'dev.tsv'}", f"out={tmp_path / 'pr'}", "k=4",
                      f"frame_rate_of={TARGET}")
    assert status == 0, log
    summary = json.loads((tmp_path / "pr" / "quality.json").read_text())
    assert summary["quality_manifest"].endswith("pr/dev.tsv") and summary["scored_utterances"] == 6
    assert summary["quality"]["pnmi"] > summary["shuffled"]["pnmi"]
    # a manifest without alignments and no quality=: labels, and a quality.md that says why it is not scored
    status, log = cli(tmp_path, f"manifest={superb_lite_tiny / 'asr' / 'dev.tsv'}", f"out={tmp_path / 'asr'}", "k=4",
                      f"frame_rate_of={TARGET}")
    assert status == 0, log
    assert json.loads((tmp_path / "asr" / "quality.json").read_text())["quality"] is None
    text = (tmp_path / "asr" / "quality.md").read_text()
    assert "Cluster quality not scored: no manifest with phone alignments" in text


def test_help_names_the_keys(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["cluster", "--help"])
    assert exit_.value.code in (0, None)
    text = capsys.readouterr().out
    assert "usage: speechssl cluster manifest=PATH out=DIR" in text and "frame_rate_of: hubert" in text
