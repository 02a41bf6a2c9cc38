"""A later downstream epoch: reading the feature cache vs recomputing the frozen upstream (s3prl's way).

    python benchmarks/benchmark_epoch.py [--upstream mockingjay] [--size tiny] [--task ks]

Both sides train the same Featurizer + head on the same batches of the task's
training split for one epoch; "recompute" runs the frozen upstream under
no_grad on every batch, as s3prl's downstream runner does, "cache" reads the
hidden states speechssl's FeatureCache stored on the first pass. Writes its
table into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import speechssl
from downstream.benchmark import CachedFeatures, DownstreamModel, Waveforms
from downstream.task import get_task
from speechssl.data.corpora import corpus_manifest
from speechssl.data.sampler import bucket_batches
from speechssl.data.synth import synthesize
from speechssl.feature_cache import FeatureCache
from hostinfo import machine

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Downstream epoch: feature cache vs recomputing the upstream (issue 7)"


def one_epoch(model, dataset, batches, recompute_upstream=None) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    start = time.perf_counter()
    for ids in batches:
        batch = dataset.collate([dataset[i] for i in ids])
        if recompute_upstream is not None:
            with torch.no_grad():
                feats = recompute_upstream(batch["wavs"], batch["wav_lens"])
            batch = {"hidden": feats.hidden_states, "lengths": feats.lengths, **batch}
        loss, _ = model(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", default="mockingjay", help="a Transformer upstream (default: mockingjay, 3 x 768)")
    parser.add_argument("--size", default="tiny", help="SUPERB-lite size to make in a temporary folder")
    parser.add_argument("--task", default="ks")
    parser.add_argument("--batch-seconds", type=float, default=20.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = synthesize(Path(tmp) / "corpus", size=args.size)
        rows = corpus_manifest("superb_lite", root, args.task, "train")
        task = get_task(args.task)
        task.fit(rows)
        upstream = speechssl.load_upstream(args.upstream).requires_grad_(False)
        featurizer = speechssl.Featurizer(upstream)
        model = DownstreamModel(featurizer, task.head(featurizer.output_size), task)
        batches = bucket_batches([r["num_samples"] for r in rows], int(args.batch_seconds * 16000), seed=0)

        cache = FeatureCache(Path(tmp) / "cache", upstream, "bench", dtype=torch.float16)
        start = time.perf_counter()
        cache.fill(rows)
        first_pass = time.perf_counter() - start
        cached = one_epoch(model, CachedFeatures(rows, cache, task), batches)
        recomputed = one_epoch(model, Waveforms(rows, task), batches, recompute_upstream=upstream)

    hours = sum(r["num_samples"] for r in rows) / 16000 / 3600
    table = "\n".join(
        [
            f"Machine: {machine()}. Upstream `{args.upstream}` ({sum(p.numel() for p in upstream.parameters()) / 1e6:.1f} M "
            f"parameters), task {args.task} on SUPERB-lite {args.size} train ({len(rows)} utterances, {hours:.3f} h), "
            f"{len(batches)} batches of at most {args.batch_seconds:g} s. Command: "
            f"`python benchmarks/benchmark_epoch.py --upstream {args.upstream} --size {args.size} --task {args.task}`.",
            "",
            "| epoch | seconds | speed-up |",
            "|---|---:|---:|",
            f"| recompute the upstream every batch (s3prl) | {recomputed:.2f} | 1.0x |",
            f"| read the feature cache (speechssl) | {cached:.2f} | {recomputed / cached:.1f}x |",
            f"| (the one-time first pass that fills the cache) | {first_pass:.2f} | |",
        ]
    )
    print(table)
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if SECTION in text:
        before, _, after = text.partition(SECTION)
        rest = after.split("\n## ", 1)
        text = before + SECTION + "\n\n" + table + "\n" + ("\n## " + rest[1] if len(rest) > 1 else "")
    else:
        text = text.rstrip() + "\n\n" + SECTION + "\n\n" + table + "\n"
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
