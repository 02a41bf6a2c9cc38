"""The synthetic corpus: generated once (size tiny) for the session, checked task by task."""

import hashlib
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from speechssl.data.audio import load_audio
from speechssl.data.manifest import read_manifest
from speechssl.data.synth import synthesize
from speechssl.data.synth.plan import KS_CLASSES, make_plan
from speechssl.data.synth.text import INTENTS
from speechssl.errors import ConfigError

SR = 16000


def wav_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.wav"))}


def audio_manifests(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*.tsv")) if ".state" not in p.parts and "path" in p.read_text().split("\n")[0].split("\t")]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12)


@pytest.fixture(scope="session")
def corpus(superb_lite_tiny) -> Path:
    return superb_lite_tiny


@pytest.fixture(scope="session")
def manifests(corpus):
    return {str(p.relative_to(corpus).with_suffix("")): read_manifest(p) for p in audio_manifests(corpus)}


def test_every_task_and_split_is_there(corpus):
    for task in ("asr", "pr", "ks", "sid", "ic", "er", "sf", "sd"):
        for split in ("train", "dev", "test"):
            assert (corpus / task / f"{split}.tsv").is_file(), f"{task}/{split}.tsv"
    for name in ("pretrain/train.tsv", "asv/train.tsv", "asv/test.tsv", "asv/trials.tsv", "README.md",
                 "qbe/dev_queries.tsv", "qbe/test_docs.tsv", "qbe/test_occurrences.tsv"):  # fmt: skip
        assert (corpus / name).is_file(), name


def test_same_seed_same_bytes_whatever_the_workers_and_rerun_repairs(corpus, tmp_path):
    again = synthesize(tmp_path / "again", size="tiny", seed=0, num_workers=1)
    first = wav_hashes(corpus)
    assert len(first) > 250 and wav_hashes(again) == first
    for name in ("pr/train.tsv", "sd/test.tsv", "qbe/test_occurrences.tsv", "README.md"):
        assert (again / name).read_bytes() == (corpus / name).read_bytes(), name
    # resume: a deleted and a corrupted file are rendered again, to the same bytes
    victims = sorted(again.rglob("*.wav"))[::97][:2]
    victims[0].unlink()
    victims[1].write_bytes(b"RIFF garbage")
    synthesize(again, size="tiny", seed=0, num_workers=2)
    assert wav_hashes(again) == first


def test_other_seed_other_corpus_and_no_mixing(tmp_path, corpus):
    assert make_plan("tiny", 1).jobs[20].utterance.tokens != make_plan("tiny", 0).jobs[20].utterance.tokens
    with pytest.raises(ConfigError, match="seed"):
        synthesize(corpus, size="tiny", seed=1)
    with pytest.raises(ConfigError, match="unknown synthetic corpus size 'huge'"):
        synthesize(tmp_path, size="huge")


def test_every_manifest_loads_through_load_audio(manifests):
    assert len(manifests) >= 25
    for name, rows in manifests.items():
        assert rows, name
        for row in rows:
            wav = load_audio(row["path"], resample=False)
            assert wav.shape == (row["num_samples"],), row["id"]


def test_audio_is_neither_silent_nor_clipped(corpus, manifests):
    silence = {r["id"] for split in ("train", "dev", "test") for r in manifests[f"ks/{split}"] if r["label"] == "_silence_"}
    for path in corpus.rglob("*.wav"):
        x, rate = soundfile.read(path)
        assert rate == SR and x.ndim == 1
        assert np.max(np.abs(x)) < 0.99, f"{path} clips"
        floor = -75 if path.stem in silence else -45  # _silence_ is quiet background noise
        assert 20 * np.log10(rms(x)) > floor, f"{path} is silent"


def test_phone_alignments_lie_inside_their_audio_and_cover_speech(manifests):
    for split in ("train", "dev", "test"):
        rows = manifests[f"pr/{split}"]
        asr = {r["id"]: r for r in manifests[f"asr/{split}"]}
        for row in rows:
            phones = row["phones"].split()
            spans = [tuple(map(int, pair.split(","))) for pair in row["alignment"].split()]
            assert len(phones) == len(spans) >= len(asr[row["id"]]["text"].split())
            assert all(0 <= s < e <= row["num_samples"] for s, e in spans), row["id"]
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), f"{row['id']}: phones overlap"
            x, _ = soundfile.read(row["path"])
            lead = x[: spans[0][0]]
            if len(lead) > 800:  # speech is louder than the silence (+ noise) before it
                assert rms(x[spans[0][0] : spans[-1][1]]) > 1.5 * rms(lead), row["id"]


def test_rttm_segments_match_the_mixtures(corpus, manifests):
    for split in ("train", "dev", "test"):
        for row in manifests[f"sd/{split}"]:
            lines = (corpus / "sd" / row["rttm"]).read_text().split("\n")
            segments = [(f[7], float(f[3]), float(f[3]) + float(f[4])) for f in (l.split() for l in lines if l)]
            assert all(f.split()[1] == row["id"] for f in lines if f)
            speakers = {w for w, _, _ in segments}
            assert speakers == set(row["speaker"].split(",")) and len(speakers) == int(row["num_speakers"]) in (2, 3)
            assert all(0 <= s < e <= row["num_samples"] / SR for _, s, e in segments)
            x, _ = soundfile.read(row["path"])
            speech = np.zeros(len(x), bool)
            for _, s, e in segments:
                speech[int(s * SR) : int(e * SR)] = True
            assert rms(x[speech]) > 1.5 * rms(x[~speech]), row["id"]


def test_keyword_classes_are_balanced_one_second_clips(manifests):
    for split in ("train", "dev", "test"):
        rows = manifests[f"ks/{split}"]
        counts = Counter(r["label"] for r in rows)
        assert set(counts) == set(KS_CLASSES) and len(KS_CLASSES) == 12
        assert len(set(counts.values())) == 1, counts
        assert all(r["num_samples"] == SR for r in rows)


def test_no_speaker_in_both_a_training_split_and_an_unseen_speaker_split(manifests):
    def speakers(names):
        return {s for n in names for r in manifests[n] for s in r["speaker"].split(",") if s}  # _silence_ has none

    tasks = ("asr", "pr", "ks", "ic", "er", "sf", "sd")
    pretrain = speakers(["pretrain/train"])
    train = speakers([f"{t}/{s}" for t in tasks for s in ("train", "dev")] + ["sid/train", "asv/train"])
    unseen = speakers([f"{t}/test" for t in tasks] + ["asv/test", "qbe/dev_docs", "qbe/test_docs"])
    assert pretrain and train and unseen
    assert not pretrain & train and not pretrain & unseen and not train & unseen
    assert speakers(["sid/test"]) == speakers(["sid/train"])  # SID is closed-set, new utterances
    assert not {r["id"] for r in manifests["sid/train"]} & {r["id"] for r in manifests["sid/test"]}


def test_asv_trials_pair_unseen_speakers(corpus, manifests):
    speaker = {r["id"]: r["speaker"] for r in manifests["asv/test"]}
    lines = (corpus / "asv" / "trials.tsv").read_text().split("\n")
    assert lines[0] == "label\tenroll\ttest"
    trials = [l.split("\t") for l in lines[1:] if l]
    assert {t[0] for t in trials} == {"0", "1"}
    assert all((speaker[a] == speaker[b]) == (label == "1") for label, a, b in trials)


def test_task_labels(manifests, corpus):
    for row in manifests["ic/train"] + manifests["ic/test"]:
        assert (row["action"], row["object"], row["location"]) in INTENTS and row["text"]
    for row in manifests["sf/train"]:
        assert len(row["tags"].split()) == len(row["text"].split()) and row["intent"]
        assert all(t == "O" or t[:2] in ("B-", "I-") for t in row["tags"].split())
    assert Counter(r["emotion"] for r in manifests["er/test"]).keys() == {"neutral", "happy", "sad", "angry"}
    sheet = (corpus / "README.md").read_text()
    assert "## Chance levels" in sheet and "| KS | accuracy | 8.3 %" in sheet


def test_qbe_occurrences_are_in_documents_by_other_speakers(corpus, manifests):
    for split in ("dev", "test"):
        queries = {r["id"]: r for r in manifests[f"qbe/{split}_queries"]}
        docs = {r["id"]: r for r in manifests[f"qbe/{split}_docs"]}
        lines = (corpus / "qbe" / f"{split}_occurrences.tsv").read_text().split("\n")[1:]
        hits = [l.split("\t") for l in lines if l]
        assert hits
        for query, doc, term, start, end in hits:
            assert queries[query]["term"] == term and term in docs[doc]["text"].split()
            assert queries[query]["speaker"] != docs[doc]["speaker"]
            assert 0 <= int(start) < int(end) <= docs[doc]["num_samples"]
