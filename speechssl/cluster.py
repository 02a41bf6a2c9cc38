"""k-means targets for HuBERT (Hsu et al. 2021, sec. III-A) and their quality against phone alignments (sec. IV-E).

``speechssl cluster`` runs four stages over a manifest, each written atomically into
the output folder, with a key of its inputs in ``DIR/stages.json``; a rerun skips a
stage whose outputs exist under the same key, and says so in the log:

1. features: layer ``L`` of an upstream (MFCC with deltas for the first iteration,
   a trained HuBERT layer later) for every utterance, through the feature cache
   (:class:`speechssl.feature_cache.FeatureCache`), which skips what it holds;
2. ``kmeans.safetensors``: centroids ``(K, D)`` float32 of a ``MiniBatchKMeans`` fitted
   on at most ``max_frames`` frames drawn with the seed (fairseq's ``learn_kmeans.py``
   settings: k-means++, ``n_init`` 20, no reassignment, no tolerance);
3. ``train.tsv``: the manifest's rows and columns plus the label column (``km``), one
   cluster id per frame of the whole utterance under the TARGET model's frame rule
   (:func:`speechssl.frames.resample_frame_labels` from the feature rate), which
   :class:`speechssl.data.dataset.AudioDataset` crops with the audio;
4. ``quality.json`` and ``quality.md``: phone purity, cluster purity and PNMI against
   the phone alignments of a manifest (:func:`cluster_quality`), scored on the
   target model's frames.

Paths in ``train.tsv`` are absolute: the folder lies outside the corpus it labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from tqdm import tqdm

from speechssl.checkpoint import atomic_write, save_tensors
from speechssl.data.manifest import read_manifest, write_manifest
from speechssl.errors import ConfigError
from speechssl.feature_cache import FeatureCache, audio_source, upstream_fingerprint
from speechssl.frames import resample_frame_labels
from speechssl.interface import Upstream

log = logging.getLogger(__name__)

SILENCE = "<sil>"  # the phone of frames between (or around) the aligned phones
STATE_FILE = "stages.json"
KMEANS_FILE, LABELS_FILE = "kmeans.safetensors", "train.tsv"
QUALITY_FILES = ("quality.json", "quality.md")


# ----------------------------------------------------------------------------- quality metrics


@dataclass
class ClusterQuality:
    """HuBERT's measures of how cluster ids ``c`` match phones ``y`` over frames (sec. IV-E)."""

    frames: int
    phones: int  # distinct phones among the frames scored
    clusters: int  # distinct clusters among the frames scored
    phone_purity: float  # E_c[max_y p(y|c)]
    cluster_purity: float  # E_y[max_c p(c|y)]
    pnmi: float  # I(y; c) / H(y)
    mutual_information: float  # I(y; c), nats
    phone_entropy: float  # H(y), nats


def contingency(phones: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Counts ``(Y, C)`` of (phone, cluster) pairs over frames; ``phones`` and ``clusters`` (N,) ints >= 0."""
    phones, clusters = np.asarray(phones, dtype=np.int64), np.asarray(clusters, dtype=np.int64)
    if phones.shape != clusters.shape or phones.ndim != 1:
        raise ValueError(f"phones {phones.shape} and clusters {clusters.shape}: expected two (N,) arrays")
    if len(phones) and min(phones.min(), clusters.min()) < 0:
        raise ValueError("phone and cluster ids must be >= 0")
    num_y = int(phones.max()) + 1 if len(phones) else 0
    num_c = int(clusters.max()) + 1 if len(clusters) else 0
    return np.bincount(phones * num_c + clusters, minlength=num_y * num_c).reshape(num_y, num_c)


def cluster_quality(counts: np.ndarray) -> ClusterQuality:
    """Phone purity, cluster purity and PNMI of a ``(Y, C)`` count table (:func:`contingency`).

    With ``p(y, c)`` the counts over their sum: phone purity ``sum_c max_y p(y, c)``
    (each cluster's most frequent phone, weighted by ``p(c)``), cluster purity
    ``sum_y max_c p(y, c)`` and PNMI ``I(y; c) / H(y)``, natural logarithms.
    Raises ``ValueError`` for a table without frames.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if counts.ndim != 2 or total <= 0:
        raise ValueError(f"a (phones, clusters) count table with frames expected, got shape {counts.shape}")
    p = counts / total
    p_y, p_c = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(p_y, p_c)[nz])).sum())
    h_y = float(-(p_y[p_y > 0] * np.log(p_y[p_y > 0])).sum())
    return ClusterQuality(
        frames=int(total),
        phones=int((p_y > 0).sum()),
        clusters=int((p_c > 0).sum()),
        phone_purity=float(p.max(axis=0).sum()),
        cluster_purity=float(p.max(axis=1).sum()),
        pnmi=mi / h_y if h_y > 0 else 0.0,
        mutual_information=mi,
        phone_entropy=h_y,
    )


def frame_phones(phones: str, alignment: str, num_frames: int, hop: int, window: int) -> list[str]:
    """The phone at the centre of each of ``num_frames`` frames (``hop`` samples apart, ``window`` long).

    ``phones`` is space-separated, ``alignment`` its ``start,end`` sample spans (end
    excluded), as SUPERB-lite's ``pr`` manifests hold them; a frame whose centre
    ``t * hop + window // 2`` falls in no span is :data:`SILENCE`.
    Raises ``ValueError`` when the two columns disagree or the spans overlap.
    """
    names = phones.split()
    spans = [tuple(int(v) for v in span.split(",")) for span in alignment.split()]
    if len(names) != len(spans) or any(len(s) != 2 for s in spans):
        raise ValueError(f"{len(names)} phones but {len(spans)} alignment spans (expected start,end pairs)")
    starts = np.array([s for s, _ in spans], dtype=np.int64)
    ends = np.array([e for _, e in spans], dtype=np.int64)
    if len(spans) and (np.any(ends < starts) or np.any(starts[1:] < ends[:-1])):
        raise ValueError("alignment spans must be ordered and must not overlap")
    centres = np.arange(num_frames, dtype=np.int64) * hop + window // 2
    if not spans:
        return [SILENCE] * num_frames
    index = np.searchsorted(starts, centres, side="right") - 1  # the last span starting at or before
    inside = (index >= 0) & (centres < ends[index.clip(min=0)])
    return [names[i] if ok else SILENCE for i, ok in zip(index, inside)]


# ----------------------------------------------------------------------------- k-means


@dataclass
class KMeansConfig:
    """``MiniBatchKMeans`` settings; defaults as fairseq's ``examples/hubert/simple_kmeans/learn_kmeans.py``."""

    k: int = 100  # HuBERT: 100 clusters on MFCC (iteration 1), 500 on layer 6 (iteration 2)
    seed: int = 0  # draws the frames and seeds the k-means
    max_frames: int = 500_000  # frames the k-means is fitted on, drawn from the whole manifest
    batch_size: int = 10_000
    max_iter: int = 100
    n_init: int = 20
    max_no_improvement: int = 100

    def check(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise ConfigError(f"k={self.k!r}; expected an integer of at least 2 clusters")
        for name in ("max_frames", "batch_size", "max_iter", "n_init", "max_no_improvement"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}; expected a positive integer")
        if self.max_frames < self.k:
            raise ConfigError(f"max_frames={self.max_frames} is fewer than k={self.k} clusters")


def fit_kmeans(frames: np.ndarray, config: KMeansConfig) -> np.ndarray:
    """Centroids ``(K, D)`` float32 of ``frames`` ``(N, D)``, seeded by ``config.seed``."""
    from sklearn.cluster import MiniBatchKMeans

    if len(frames) < config.k:
        raise ConfigError(f"k={config.k} clusters, but the manifest has only {len(frames)} frames")
    kmeans = MiniBatchKMeans(
        n_clusters=config.k,
        init="k-means++",
        max_iter=config.max_iter,
        batch_size=config.batch_size,
        n_init=config.n_init,
        max_no_improvement=config.max_no_improvement,
        reassignment_ratio=0.0,
        tol=0.0,
        compute_labels=False,
        random_state=config.seed,
    )
    kmeans.fit(frames)
    return kmeans.cluster_centers_.astype(np.float32)


def assign_clusters(frames: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The nearest centroid (squared Euclidean) of each frame: ``(T, D)``, ``(K, D)`` -> ``(T,)`` int64."""
    distances = (
        frames.pow(2).sum(1, keepdim=True) - 2 * frames @ centroids.T + centroids.pow(2).sum(1)
    )  # (T, K)
    return distances.argmin(dim=1)


def sample_frames(cache: FeatureCache, rows: list[dict], layer: int, max_frames: int, seed: int) -> np.ndarray:
    """``(N, D)`` float32: every frame of layer ``layer`` if there are at most ``max_frames``,
    else ``max_frames`` drawn uniformly without replacement with ``seed``."""
    counts = np.array([cache.num_frames(r["id"], layer) for r in rows], dtype=np.int64)
    total = int(counts.sum())
    if total > max_frames:
        chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_frames, replace=False))
    else:
        chosen = np.arange(total)
    starts = np.concatenate([[0], np.cumsum(counts)])
    parts = []
    for i, row in enumerate(tqdm(rows, desc="k-means frames", unit="utt")):
        lo, hi = np.searchsorted(chosen, [starts[i], starts[i + 1]])
        if hi > lo:
            parts.append(cache.load_layer(row["id"], layer)[torch.from_numpy(chosen[lo:hi] - starts[i])].numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


# ----------------------------------------------------------------------------- the command


def cluster_manifest(
    manifest: str | os.PathLike,
    upstream: Upstream,
    out: str | os.PathLike,
    *,
    layer: int | None = None,
    kmeans: KMeansConfig | None = None,
    frame_rate_of: str = "hubert",
    column: str = "km",
    quality: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike = "runs/feature_cache",
    cache_dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    batch_seconds: float = 160.0,
) -> dict:
    """Cluster layer ``layer`` of ``upstream`` over ``manifest`` into ``out`` (see the module doc).

    ``layer`` None takes the only hidden state of a one-state upstream (MFCC).
    ``frame_rate_of`` names the registered upstream whose frames the labels follow.
    ``quality`` is a manifest with ``phones`` and ``alignment`` columns (default: the
    clustered manifest, when it has them); its utterances not in ``manifest`` are
    labelled with the fitted centroids, as the paper scores dev sets. Returns the
    summary written to ``quality.json``.
    """
    from speechssl.registry import build_upstream, get_entry

    kmeans = kmeans or KMeansConfig()
    kmeans.check()
    rows = read_manifest(manifest)
    if not rows:
        raise ConfigError(f"{manifest}: no utterances")
    layer = _check_layer(layer, upstream)
    get_entry(frame_rate_of)  # an unknown name fails before any work
    target = build_upstream(frame_rate_of)  # the default config: only its frame rule is used
    quality_path = Path(quality) if quality is not None else (Path(manifest) if "alignment" in rows[0] else None)
    quality_rows = _aligned_rows(quality_path) if quality_path is not None else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(out / STATE_FILE)

    fingerprint = upstream_fingerprint(upstream, cache_dtype)
    cache = _cache(cache_dir, upstream, manifest, cache_dtype, device, batch_seconds)
    _fill(cache, rows, manifest)
    kmeans_key = _key(fingerprint, layer, dataclasses.asdict(kmeans), [(r["id"], audio_source(r)) for r in rows])
    centroids, fit = _kmeans_stage(stages, out, kmeans_key, cache, rows, layer, kmeans, upstream)

    rule = (frame_rate_of, target.downsample_rate, json.dumps(dataclasses.asdict(target.config), sort_keys=True))
    labels_key = _key(kmeans_key, rule, column, rows)
    if stages.done("labels", labels_key, [LABELS_FILE]):
        log.info("labels: %s is up to date (%d utterances), skipping", out / LABELS_FILE, len(rows))
    else:
        labels = _label(cache, rows, layer, centroids, upstream, target)
        _write_labels(out / LABELS_FILE, rows, labels, column)
        stages.finish("labels", labels_key)
        log.info("labels: wrote %s (%d utterances, column '%s' at %d samples a frame, the frames of '%s')",
                 out / LABELS_FILE, len(rows), column, target.downsample_rate, frame_rate_of)

    context = {
        "manifest": str(Path(manifest).resolve()),
        "utterances": len(rows),
        "upstream": upstream.name,
        "layer": layer,
        "frame_rate_of": frame_rate_of,
        "samples_per_frame": target.downsample_rate,
        "kmeans": {**dataclasses.asdict(kmeans), **fit},
        "quality_manifest": str(quality_path.resolve()) if quality_path is not None else None,
    }
    if quality_rows and quality_path.resolve() != Path(manifest).resolve():
        cache = _cache(cache_dir, upstream, quality_path, cache_dtype, device, batch_seconds)
        _fill(cache, quality_rows, quality_path)
    key = _key(labels_key, context["quality_manifest"], quality_rows, [audio_source(r) for r in quality_rows])
    return _quality_stage(stages, out, key, context, cache, quality_rows, layer, centroids, upstream, target)


def _check_layer(layer: int | None, upstream: Upstream) -> int:
    num = upstream.num_layers
    if layer is None:
        if num == 1:
            return 0
        raise ConfigError(
            f"layer=null: upstream '{upstream.name}' has {num} hidden states; choose one with layer=N "
            "(HuBERT's second iteration clusters layer 6 of the base model)"
        )
    if isinstance(layer, bool) or not isinstance(layer, int) or not -num <= layer < num:
        raise ConfigError(
            f"layer={layer!r} out of range: upstream '{upstream.name}' has {num} hidden state(s), "
            f"layer 0..{num - 1} (or -{num}..-1 from the top)"
        )
    return layer % num


def _aligned_rows(path: Path) -> list[dict]:
    rows = read_manifest(path)
    missing = [c for c in ("phones", "alignment") if rows and c not in rows[0]]
    if missing:
        raise ConfigError(f"quality={path}: no column(s) {', '.join(missing)} (phone alignments) in the manifest")
    return [r for r in rows if r["alignment"].strip()]


def _cache(root, upstream, manifest, dtype, device, batch_seconds) -> FeatureCache:
    """The cache of one manifest: its folder and name, and a hash of its resolved path (ids are per manifest)."""
    path = Path(manifest).resolve()
    corpus = f"cluster/{path.parent.name}_{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    return FeatureCache(root, upstream, corpus, dtype=dtype, device=device, batch_seconds=batch_seconds)


def _fill(cache: FeatureCache, rows: list[dict], manifest) -> None:
    computed = cache.fill(rows)
    if computed:
        log.info("features: %d of %d utterance(s) of %s computed into %s", computed, len(rows), manifest, cache.folder)
    else:
        log.info("features: all %d utterance(s) of %s cached in %s, skipping", len(rows), manifest, cache.folder)


def _kmeans_stage(stages, out, key, cache, rows, layer, config, upstream) -> tuple[torch.Tensor, dict]:
    """Centroids ``(K, D)`` and the fit's figures: read back when up to date, else fitted and written."""
    path = out / KMEANS_FILE
    if stages.done("kmeans", key, [KMEANS_FILE]):
        with safe_open(str(path), framework="pt") as f:
            centroids, meta = f.get_tensor("centroids"), f.metadata()
        log.info("kmeans: %s is up to date (k=%d), skipping", path, len(centroids))
        return centroids, json.loads(meta["fit"])
    frames = sample_frames(cache, rows, layer, config.max_frames, config.seed)
    log.info("kmeans: fitting k=%d on %d frames (%d-d) of layer %d of '%s'",
             config.k, len(frames), frames.shape[1], layer, upstream.name)
    centroids = torch.from_numpy(fit_kmeans(frames, config))
    sample = torch.from_numpy(frames)
    nearest = centroids[assign_clusters(sample, centroids)]
    fit = {"sample_frames": len(frames), "sample_mse": float((sample - nearest).pow(2).sum(1).mean())}
    meta = {"upstream": upstream.name, "layer": str(layer), "downsample_rate": str(upstream.downsample_rate),
            "fit": json.dumps(fit), "config": json.dumps(dataclasses.asdict(config))}  # fmt: skip
    save_tensors(path, {"centroids": centroids}, meta)
    stages.finish("kmeans", key)
    log.info("kmeans: wrote %s (mean squared distance to the nearest centroid %.4g)", path, fit["sample_mse"])
    return centroids, fit


def _quality_stage(stages, out, key, context, cache, rows, layer, centroids, upstream, target) -> dict:
    """``quality.json`` and ``quality.md`` of the aligned ``rows``: read back when up to date, else scored."""
    if stages.done("quality", key, QUALITY_FILES):
        log.info("quality: %s is up to date, skipping", out / QUALITY_FILES[0])
        return json.loads((out / QUALITY_FILES[0]).read_text())
    summary = {**context, **_score(cache, rows, layer, centroids, upstream, target)}
    _write_quality(out, summary)
    stages.finish("quality", key)
    if summary["quality"] is not None:
        log.info("quality: wrote %s (PNMI %.4f on %d frames)", out / QUALITY_FILES[1], summary["quality"]["pnmi"],
                 summary["scored_frames"])
    return summary


def _utterance_clusters(cache, row, layer, centroids, upstream, target) -> torch.Tensor:
    """Cluster ids ``(T,)`` of one utterance on the target model's frames of the whole utterance."""
    clusters = assign_clusters(cache.load_layer(row["id"], layer), centroids)
    num_frames = int(target.num_frames(torch.tensor(row["num_samples"])))
    return resample_frame_labels(clusters, num_frames, target.downsample_rate, upstream.downsample_rate)


def _label(cache, rows, layer, centroids, upstream, target) -> list[torch.Tensor]:
    return [
        _utterance_clusters(cache, row, layer, centroids, upstream, target)
        for row in tqdm(rows, desc="labels", unit="utt")
    ]


def _write_labels(path: Path, rows: list[dict], labels: list[torch.Tensor], column: str) -> None:
    columns = [c for c in rows[0] if c != column] + [column]
    labelled = [{**row, column: " ".join(map(str, lab.tolist()))} for row, lab in zip(rows, labels)]
    atomic_write(path, lambda tmp: write_manifest(tmp, labelled, columns))


def _score(cache, rows, layer, centroids, upstream, target) -> dict:
    """Quality of the clusters of the aligned ``rows`` against their phones, on the target frames."""
    phone_ids: dict[str, int] = {}
    ys, cs = [], []
    for row in tqdm(rows, desc="quality", unit="utt"):
        clusters = _utterance_clusters(cache, row, layer, centroids, upstream, target)
        try:
            names = frame_phones(row["phones"], row["alignment"], len(clusters), target.downsample_rate,
                                 target.min_samples)  # fmt: skip
        except ValueError as e:
            raise ConfigError(f"{row['path']} ({row['id']}): phones/alignment: {e}") from None
        ys.append(np.array([phone_ids.setdefault(p, len(phone_ids)) for p in names], dtype=np.int64))
        cs.append(clusters.numpy())
    frames = int(sum(len(y) for y in ys))
    result = {"scored_utterances": len(rows), "scored_frames": frames}
    if not frames:
        return {**result, "quality": None}
    y, c = np.concatenate(ys), np.concatenate(cs)
    table = contingency(y, c)
    # the same ids shuffled over the frames: what the measures give by chance at this many frames
    # (the plug-in mutual information is biased up by about (Y - 1)(C - 1) / 2N nats)
    shuffled = cluster_quality(contingency(y, np.random.default_rng(0).permutation(c)))
    silence = table[phone_ids[SILENCE]].sum() if SILENCE in phone_ids else 0
    return {**result, "silence_frames": int(silence), "quality": dataclasses.asdict(cluster_quality(table)),
            "shuffled": dataclasses.asdict(shuffled)}


def _write_quality(out: Path, summary: dict) -> None:
    text = json.dumps(summary, indent=2) + "\n"
    markdown = quality_markdown(summary)
    atomic_write(out / QUALITY_FILES[1], lambda tmp: Path(tmp).write_text(markdown))
    atomic_write(out / QUALITY_FILES[0], lambda tmp: Path(tmp).write_text(text))


def quality_markdown(summary: dict) -> str:
    """``quality.md``: what was clustered, and the cluster quality in the paper's three measures."""
    km = summary["kmeans"]
    lines = [
        f"# k-means targets: {summary['upstream']} layer {summary['layer']}, K = {km['k']}",
        "",
        f"- manifest: `{summary['manifest']}` ({summary['utterances']} utterances)",
        f"- k-means: MiniBatchKMeans on {km['sample_frames']} frames (at most {km['max_frames']}, seed {km['seed']}); "
        f"mean squared distance to the nearest centroid {km['sample_mse']:.4g}",
        f"- labels: `train.tsv`, one per {summary['samples_per_frame']}-sample frame of `{summary['frame_rate_of']}`",
        "",
    ]
    if summary["quality"] is None:
        why = ("no manifest with phone alignments: set quality=PATH (a manifest with `phones` and `alignment`)"
               if summary["quality_manifest"] is None else f"no aligned frames in `{summary['quality_manifest']}`")
        return "\n".join(lines + [f"Cluster quality not scored: {why}.", ""])
    q, chance = summary["quality"], summary["shuffled"]
    lines += [
        f"## Cluster quality against `{summary['quality_manifest']}`",
        "",
        f"Scored {summary['scored_frames']} frames of {summary['scored_utterances']} aligned utterances "
        f"(frames of utterances without an alignment are left out), on the labels' frames; "
        f"{summary['silence_frames']} frames lie between aligned phones and count as the phone `{SILENCE}`. "
        f"{q['phones']} phones, {q['clusters']} of {km['k']} clusters used.",
        "",
        "| measure | value | ids shuffled over the frames |",
        "|---|---|---|",
        *(f"| {label} | {q[key]:.4f} | {chance[key]:.4f} |" for key, label in (
            ("phone_purity", "phone purity (E_c max_y p(y\\|c))"),
            ("cluster_purity", "cluster purity (E_y max_c p(c\\|y))"),
            ("pnmi", "PNMI (I(y;c) / H(y))"),
            ("mutual_information", "I(y;c) (nats)"),
        )),
        f"| H(y) (nats) | {q['phone_entropy']:.4f} | |",
        "",
        "Measures of HuBERT (Hsu et al. 2021, sec. IV-E): higher is better for all three. The last column",
        "scores the same cluster ids shuffled over the frames (seed 0): the level chance reaches on this many",
        "frames, since the plug-in mutual information is biased up by about (phones - 1)(clusters - 1) / 2N nats.",
        "",
    ]
    return "\n".join(lines)


class _Stages:
    """``stages.json``: per stage, the key of the inputs its outputs were made from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys = json.loads(path.read_text()) if path.exists() else {}

    def done(self, stage: str, key: str, outputs) -> bool:
        return self.keys.get(stage) == key and all((self.path.parent / o).exists() for o in outputs)

    def finish(self, stage: str, key: str) -> None:
        self.keys[stage] = key
        text = json.dumps(self.keys, indent=2) + "\n"
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
