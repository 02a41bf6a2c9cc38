"""Downstream head training steps at several torch thread counts: what ``threads=`` in benchmark.yaml should be.

    python benchmarks/downstream_threads.py [--threads 1 2] [--runs 20] [--no-write]

Also ASR's BiLSTM on utterances of different lengths: ``nn.LSTM`` on packed
sequences (the peer's way, s3prl's ``RNNs`` head) against
:class:`downstream.heads.BiLSTM` on the padded batch, forward and backward.

One step is what the benchmark's trainer does per batch on cached features: the
normalising weighted-sum Featurizer, the task's head (SUPERB's), its loss,
backward and AdamW. Features are random, shaped as on SUPERB-lite small: 4
hidden states of 128 dims (a tiny APC), batches of 60 s of audio (20 s for ASR's
BiLSTM). Thread counts are interleaved, so the machine's load falls on all of
them alike; the load average is recorded beside the table.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from pathlib import Path

import torch

import speechssl
from hostinfo import machine
from downstream.task import get_task

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Downstream head step by torch thread count (issue 18)"
# task: (utterances per batch, frames each, fitted label rows)
SHAPES = {
    "pr": (20, 300, [{"phones": " ".join(f"p{i % 40}" for i in range(k, k + 30))} for k in range(40)]),
    "ks": (60, 100, [{"label": f"w{i % 12}"} for i in range(40)]),
    "asr": (7, 300, [{"text": "the quick brown fox jumps over a lazy dog"}]),
}


def make_step(task_name: str):
    B, T, rows = SHAPES[task_name]
    task = get_task(task_name)
    task.fit(rows)
    featurizer = speechssl.Featurizer([128] * 4, normalize=True)
    head = task.head(featurizer.output_size)
    params = [*featurizer.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    hidden = [torch.randn(B, T, 128, generator=g) for _ in range(4)]
    lengths = torch.full((B,), T)
    labels = task.collate([task.encode(rows[i % len(rows)]) for i in range(B)])

    def step() -> None:
        x, lens = featurizer(hidden, lengths)
        loss, _ = task.loss(head, x, lens, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def measure(threads: list[int], runs: int) -> dict[tuple[str, int], float]:
    steps = {task: make_step(task) for task in SHAPES}
    times: dict[tuple[str, int], list[float]] = {(t, n): [] for t in SHAPES for n in threads}
    for n in threads:  # warm-up
        torch.set_num_threads(n)
        for step in steps.values():
            step()
    for _ in range(runs):
        for n in threads:
            torch.set_num_threads(n)
            for task, step in steps.items():
                start = time.perf_counter()
                step()
                times[task, n].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def packed_vs_padded(runs: int) -> tuple[float, float]:
    """Median ms of forward + backward of a 2 x 256 BiLSTM over 240-d frames, 4 utterances of 490 to 250 frames."""
    from downstream.heads import BiLSTM

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 490, 240, generator=g)
    lengths = torch.tensor([490, 420, 330, 250])
    packed_lstm = torch.nn.LSTM(240, 256, num_layers=2, bidirectional=True, batch_first=True)
    ours = BiLSTM(240, 256, 2)

    def packed() -> None:
        seq = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        torch.nn.utils.rnn.pad_packed_sequence(packed_lstm(seq)[0], batch_first=True)[0].sum().backward()

    def padded() -> None:
        ours(x, lengths).sum().backward()

    times = {packed: [], padded: []}
    for _ in range(runs):
        for step in times:
            start = time.perf_counter()
            step()
            times[step].append(time.perf_counter() - start)
    return statistics.median(times[packed]) * 1000, statistics.median(times[padded]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    medians = measure(args.threads, args.runs)
    packed_ms, padded_ms = packed_vs_padded(max(3, args.runs // 4))
    load_after = os.getloadavg()[0]
    lines = ["| task head | " + " | ".join(f"{n} thread(s), ms" for n in args.threads) + " | fastest |",
             "|---|" + "---|" * (len(args.threads) + 1)]
    for task in SHAPES:
        row = [medians[task, n] for n in args.threads]
        best = args.threads[row.index(min(row))]
        lines.append(f"| {task} | " + " | ".join(f"{v:.1f}" for v in row) + f" | {best} |")
    text = "\n".join([
        SECTION, "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} with `python benchmarks/downstream_threads.py "
        f"--threads {' '.join(map(str, args.threads))} --runs {args.runs}`: median of {args.runs} interleaved steps "
        f"(Featurizer with normalisation + head + loss + backward + AdamW) on random cached features.", "",
        f"Machine: {machine()}; load average {load_before:.2f} before, {load_after:.2f} after.", "",
        *lines, "",
        "ASR's BiLSTM (2 x 256 over 240-d frames, 4 utterances of 490-250 frames, forward and backward, one thread): "
        f"`nn.LSTM` on packed sequences {packed_ms:.0f} ms, `downstream.heads.BiLSTM` on the padded batch "
        f"{padded_ms:.0f} ms ({packed_ms / padded_ms:.1f}x faster; the same outputs on valid frames, "
        "tests/test_downstream.py). Packing makes the LSTM's backward pass slow on a CPU.", "",
    ])
    print(text)
    if not args.no_write:
        current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
        current = pattern.sub(lambda _: text + "\n", current) if pattern.search(current) else current.rstrip() + "\n\n" + text
        RESULTS.write_text(current)


if __name__ == "__main__":
    main()
