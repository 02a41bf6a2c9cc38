"""The corpus datasheet, ``README.md`` at the corpus root: what is there and how hard it is."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from speechssl.data.synth.manifests import SR, task_rows
from speechssl.data.synth.plan import Plan

ABOUT = """\
Synthetic speech made offline with eSpeak NG ({voices} pseudo-speakers: English accents x
voice variants x pitch, pitch range, rate x a fixed timbre filter), with synthetic rooms,
coloured noise and babble at random SNR, gain and speed perturbation. Sentences come from
a grammar over a hand-written lexicon and pronounceable pseudo-words.

Made with: `speechssl synth out=DIR size={size} seed={seed}` (byte-identical on rerun).

Manifests are TSV (`<task>/<split>.tsv`; read them with `speechssl.data.manifest.read_manifest`);
audio paths are relative to the manifest's directory; times are in samples at 16 kHz. `.state/` holds
the hash of every file, so that a rerun skips and verifies finished work.
"""


def _sd_single_speaker_der(plan: Plan, results: dict[int, dict]) -> float:
    """DER of answering 'one speaker talks whenever anyone does' on the SD test set (10 ms frames)."""
    errors = total = 0
    for job in plan.jobs:
        if ("sd", "test") not in job.rows:
            continue
        segments = results[job.index]["segments"]
        frames = results[job.index]["num_samples"] // 160 + 1
        who = sorted({w for w, _, _ in segments})
        active = np.zeros((len(who), frames), bool)
        for w, s, e in segments:
            active[who.index(w), s // 160 : e // 160] = True
        n_ref = active.sum(0)
        n_hyp = (n_ref > 0).astype(int)
        correct = active[int(np.argmax(active.sum(1)))]  # hypothesis mapped to the most talkative speaker
        errors += int(np.sum(np.maximum(n_ref - n_hyp, 0) + np.minimum(n_ref, n_hyp) - correct))
        total += int(n_ref.sum())
    return errors / max(total, 1)


def write_datasheet(plan: Plan, root: Path, results: dict[int, dict]) -> None:
    rows = task_rows(plan, results)
    lines = [f"# SUPERB-lite synthetic corpus ({plan.size}, seed {plan.seed})", ""]
    lines.append(ABOUT.format(voices=len(plan.speakers), size=plan.size, seed=plan.seed))
    hours = sum(r["num_samples"] for r in results.values()) / SR / 3600
    lines += [f"Total audio: {hours:.2f} h in {len(results)} files.", "", "## Files and durations", ""]
    lines += ["| task | split | files | hours | speakers |", "|---|---|---|---|---|"]
    for (task, split), table in rows.items():
        seconds = sum(r["num_samples"] for r in table) / SR
        speakers = len({s for r in table for s in r["speaker"].split(",")})
        lines.append(f"| {task} | {split} | {len(table)} | {seconds / 3600:.3f} | {speakers} |")
    lines += ["", "## Classes", ""]
    for task, column in (("ks", "label"), ("er", "emotion"), ("ic", "action"), ("sf", "intent"), ("sd", "num_speakers")):
        for split in ("train", "dev", "test"):
            counts = Counter(str(r[column]) for r in rows.get((task, split), []))
            lines.append(f"- {task} {split} ({column}): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines += ["", "## Speakers", ""]
    for group, ids in plan.speaker_split.items():
        voices = ", ".join(f"{i} ({plan.speakers[i].voice})" for i in ids)
        lines.append(f"- **{group}** ({len(ids)}): {voices}")
    lines.append("")
    lines.append("`pretrain` speakers make the pretraining audio and the babble noise; `train` speakers the "
                 "downstream train and dev sets, SID, and QbE queries; `unseen` speakers every test set, the ASV "
                 "trials and the QbE documents.")  # fmt: skip
    ic_train = Counter((r["action"], r["object"], r["location"]) for r in rows[("ic", "train")])
    majority = ic_train.most_common(1)[0][0]
    ic_test = rows[("ic", "test")]
    ic_chance = sum((r["action"], r["object"], r["location"]) == majority for r in ic_test) / len(ic_test)
    sf_train = Counter(r["intent"] for r in rows[("sf", "train")]).most_common(1)[0][0]
    sf_chance = np.mean([r["intent"] == sf_train for r in rows[("sf", "test")]])
    lines += [
        "", "## Chance levels (test sets)", "",
        "| task | metric | chance |", "|---|---|---|",
        "| PR | PER | 100 % (empty output) |",
        "| ASR | WER | 100 % (empty output) |",
        f"| KS | accuracy | {100 / 12:.1f} % (12 balanced classes) |",
        f"| SID | accuracy | {100 / len(plan.speaker_split['train']):.1f} % ({len(plan.speaker_split['train'])} speakers) |",
        "| ASV | EER | 50 % |",
        f"| IC | accuracy | {100 * ic_chance:.1f} % (majority intent of train) |",
        "| ER | accuracy | 25.0 % (4 balanced classes) |",
        f"| SD | DER | {100 * _sd_single_speaker_der(plan, results):.1f} % (one speaker whenever anyone speaks) |",
        "| QbE | MTWV | 0 (never detect) |",
        f"| SF | intent accuracy | {100 * sf_chance:.1f} % (majority intent of train); slot F1 0 |",
    ]  # fmt: skip
    (root / "README.md").write_text("\n".join(lines) + "\n")
