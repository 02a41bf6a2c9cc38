"""The task protocol and the ASV, SD and SF tasks: metrics against reference computations, heads, loaders."""

import itertools
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from downstream.asv import XVector, equal_error_rate, min_dcf, verification_metrics
from downstream.ctc import character_edits, parse_slots
from downstream.diarization import (
    activity,
    annotation_of_activity,
    annotation_of_turns,
    der_components,
    median_filter,
    permutation_invariant_bce,
    read_rttm,
)
from downstream.task import Task, get_task, list_tasks, task_class
from speechssl.data.corpora import corpus_manifest, corpus_resource
from speechssl.errors import ConfigError


def test_every_task_declares_the_protocol():
    assert set(list_tasks()) >= {"pr", "ks", "ic", "sid", "er", "asr", "asv", "sd", "sf", "qbe"}
    for name in list_tasks():
        cls = task_class(name)
        assert issubclass(cls, Task) and cls.metric in cls.metrics
        assert "test" in cls.splits or {"test_queries", "test_docs"} <= set(cls.splits)
        assert all(info.unit in ("%", "") for info in cls.metrics.values())
    assert get_task("asv").splits == ("train", "test") and get_task("asv").resources == ("asv_trials",)
    with pytest.raises(ConfigError, match="task 'asv' needs the corpus resource.s. asv_trials"):
        get_task("asv").prepare(frame_rate=100.0, resources={})
    with pytest.raises(ConfigError, match="task 'sd': unknown option.s. max_speaker; known: "):
        get_task("sd", max_speaker=2)
    assert get_task("sd", max_speakers=2).config.max_speakers == 2


# -- ASV ------------------------------------------------------------------------------------------


def brute_force_rates(labels, scores):
    """(miss, false alarm) rates at every threshold between sorted scores, by counting."""
    thresholds = np.concatenate([[-np.inf], np.sort(scores), [np.inf]])
    targets, others = scores[labels == 1], scores[labels == 0]
    return [((targets < t).mean(), (others >= t).mean()) for t in thresholds]


def test_eer_and_min_dcf_on_known_scores():
    labels = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.4, 0.2, 0.1])
    # at threshold 0.35: one target missed (1/3), one non-target accepted (1/3)
    assert equal_error_rate(labels, scores) == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = labels * 1.0 + rng.normal(0, 1.0, 400)
    rates = brute_force_rates(labels, scores)
    cost = min(0.01 * miss + 0.99 * fa for miss, fa in rates) / 0.01
    assert min_dcf(labels, scores) == pytest.approx(cost, abs=1e-12)
    gap = min(rates, key=lambda r: abs(r[0] - r[1]))
    assert equal_error_rate(labels, scores) == pytest.approx(sum(gap) / 2, abs=1e-12)
    assert equal_error_rate(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0  # separated: no error
    # scikit-learn's ROC, ties included (scores rounded to make many), and many resamples at once
    from sklearn.metrics import roc_curve

    scores = np.round(scores, 1)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    i = np.nanargmin(np.abs((1 - tpr) - fpr))
    assert equal_error_rate(labels, scores) == pytest.approx((fpr[i] + 1 - tpr[i]) / 2, abs=1e-12)
    assert min_dcf(labels, scores) == pytest.approx(((1 - tpr) * 0.01 + fpr * 0.99).min() / 0.01, abs=1e-12)
    index = rng.integers(0, 400, size=(5, 400))
    batched = verification_metrics(labels[index], scores[index])
    assert batched["eer"].tolist() == pytest.approx([equal_error_rate(labels[r], scores[r]) for r in index])
    assert np.isnan(verification_metrics(np.ones(3), np.arange(3.0))["eer"][0])  # one kind of trial only


def test_xvector_reads_no_padding():
    torch.manual_seed(0)
    head = XVector(8, 16, 6).eval()
    x, lengths = torch.randn(2, 30, 8), torch.tensor([30, 17])
    padded = x.clone()
    padded[1, 17:] = 1e3  # garbage after the valid frames
    alone = head(x[1:, :17], torch.tensor([17]))
    torch.testing.assert_close(head(padded, lengths)[1:], alone, atol=1e-5, rtol=1e-5)


def test_asv_trials_name_test_utterances_only(superb_lite_tiny):
    task = get_task("asv")
    trials = corpus_resource("superb_lite", superb_lite_tiny, "asv_trials")
    assert trials and all(label in (0, 1) for label, _, _ in trials)
    task.prepare(frame_rate=100.0, resources={"asv_trials": trials})
    with pytest.raises(ConfigError, match="the trial list names .* utterance.s. not in the test split"):
        task.outcomes([torch.ones(3)], ["someone-else"])


# -- SD -------------------------------------------------------------------------------------------


def test_der_against_pyannote_on_a_hand_made_pair(tmp_path):
    (tmp_path / "ref.rttm").write_text(
        "SPEAKER conv 1 0.00 2.00 <NA> <NA> alice <NA> <NA>\n"
        "SPEAKER conv 1 1.50 2.50 <NA> <NA> bob <NA> <NA>\n"
        "SPEAKER other 1 0.00 9.00 <NA> <NA> carol <NA> <NA>\n"  # another file's line: ignored
    )
    turns = read_rttm(tmp_path / "ref.rttm", "conv")
    assert turns == [("alice", 0.0, 2.0), ("bob", 1.5, 4.0)]
    # hypothesis at 10 frames/s: slot 0 on 0.0-1.5 s, slot 1 on 1.5-5.0 s
    active = np.zeros((50, 2), dtype=np.int8)
    active[:15, 0] = 1
    active[15:, 1] = 1
    parts = der_components(annotation_of_turns(turns), annotation_of_activity(active, 10.0), duration=5.0)
    # by hand: speech 2.0 + 2.5 = 4.5 s; 1.5-2.0 s alice missed (0.5); 4.0-5.0 s false alarm (1.0)
    assert parts["speech"] == pytest.approx(4.5) and parts["errors"] == pytest.approx(1.5)
    from pyannote.metrics.diarization import DiarizationErrorRate

    reference = annotation_of_turns(turns)
    direct = DiarizationErrorRate(collar=0.0, skip_overlap=False)(reference, annotation_of_activity(active, 10.0))
    assert parts["errors"] / parts["speech"] == pytest.approx(direct)


def test_frame_activity_and_permutation_invariant_loss():
    labels = activity([("a", 0.0, 0.25), ("b", 0.2, 0.4)], ["a", "b"], frames=5, frame_rate=10.0)
    # frame centres 0.05, 0.15, 0.25, 0.35, 0.45
    assert labels.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]]
    torch.manual_seed(0)
    logits, target = torch.randn(2, 6, 3), (torch.rand(2, 6, 3) > 0.5).float()
    lengths = torch.tensor([6, 4])
    loss = permutation_invariant_bce(logits, target, lengths)
    swapped = target[:, :, [2, 0, 1]]
    assert permutation_invariant_bce(logits, swapped, lengths) == pytest.approx(loss.item())
    by_hand = []
    for b, n in enumerate(lengths.tolist()):
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        by_hand.append(min(bce(logits[b, :n], target[b, :n][:, p]).item() for p in itertools.permutations(range(3))))
    assert loss.item() == pytest.approx(np.mean(by_hand), rel=1e-6)
    padded = logits.clone()
    padded[1, 4:] = 50.0  # padding never scored
    assert permutation_invariant_bce(padded, target, lengths) == pytest.approx(loss.item())
    assert median_filter(np.array([[0], [1], [0], [1], [1]], dtype=np.int8), 3)[:, 0].tolist() == [0, 0, 1, 1, 1]


# -- SF -------------------------------------------------------------------------------------------


def test_slot_filling_tokens_and_metrics_by_hand():
    sf_task = get_task("sf")
    row = {"id": "u", "text": "Play some reggae music in the kitchen", "tags": "O O B-genre O O O B-room"}
    tokens = sf_task.tokens(row)
    assert "".join(tokens) == "play|some|<genre>reggae</>|music|in|the|<room>kitchen</>"
    assert parse_slots(tokens, "</>", "|") == [("genre", "reggae"), ("room", "kitchen")]
    hypothesis = list("play|some|") + ["<genre>"] + list("regge") + ["</>", "|"] + ["<artist>"] + list("kitchen")
    outcome = sf_task.outcomes([hypothesis], [tokens])[0]
    # types: predicted {genre, artist}, reference {genre, room}: one matched -> F1 = 2*1 / (2 + 2)
    # values: genre "reggae" vs "regge" (1 deletion), room unmatched vs "" (7 deletions) over 6 + 7 chars
    assert outcome == {"matched_twice": 2, "slots": 4, "value_char_errors": 8, "value_chars": 13}
    assert sf_task.score([hypothesis], [tokens]) == {"f1": 0.5, "cer": 8 / 13}
    assert character_edits("kitten", "sitting") == 3
    with pytest.raises(ConfigError, match="task 'sf': u has 2 words but 1 tags"):
        sf_task.tokens({"id": "u", "text": "two words", "tags": "O"})


# -- loaders --------------------------------------------------------------------------------------


def write_wav(path, seconds=0.5, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(seconds * sr), dtype=np.float32), sr)


def test_voxceleb1_verification_reads_its_trial_list(tmp_path):
    for relative in ["id10001/vid/00001.wav", "id10001/vid/00002.wav", "id10270/a/00001.wav", "id10271/b/00001.wav"]:
        write_wav(tmp_path / "wav" / relative)
    (tmp_path / "veri_test2.txt").write_text("1 id10270/a/00001.wav id10270/a/00001.wav\n"
                                             "0 id10270/a/00001.wav id10271/b/00001.wav\n")
    test = corpus_manifest("voxceleb1", tmp_path, "asv", "test")
    train = corpus_manifest("voxceleb1", tmp_path, "asv", "train")
    assert [r["id"] for r in test] == ["id10270/a/00001", "id10271/b/00001"]
    assert [r["speaker"] for r in train] == ["id10001", "id10001"] and train[0]["num_samples"] == 8000
    assert corpus_resource("voxceleb1", tmp_path, "asv_trials") == [
        (1, "id10270/a/00001", "id10270/a/00001"), (0, "id10270/a/00001", "id10271/b/00001")]
    (tmp_path / "veri_test2.txt").unlink()
    with pytest.raises(ConfigError, match="no trial list .veri_test2.txt or veri_test.txt."):
        corpus_resource("voxceleb1", tmp_path, "asv_trials")
    with pytest.raises(ConfigError, match="corpus 'librispeech' has no resource 'asv_trials'"):
        corpus_resource("librispeech", tmp_path, "asv_trials")


def test_libri2mix_reads_its_kaldi_folders(tmp_path):
    write_wav(tmp_path / "wav" / "mix1.wav", seconds=1.0)
    split = tmp_path / "test"
    split.mkdir()
    (split / "wav.scp").write_text("mix1 wav/mix1.wav\n")
    (split / "rttm").write_text("SPEAKER mix1 1 0.10 0.50 <NA> <NA> 19 <NA> <NA>\n"
                                "SPEAKER mix1 1 0.40 0.50 <NA> <NA> 26 <NA> <NA>\n")
    rows = corpus_manifest("libri2mix", tmp_path, "sd", "test")
    assert [(r["id"], r["num_samples"], r["speaker"], r["num_speakers"]) for r in rows] == [
        ("mix1", 16000, "19,26", "2")]
    assert read_rttm(rows[0]["rttm"], "mix1") == [("19", 0.1, 0.6), ("26", 0.4, 0.9)]
    with pytest.raises(ConfigError, match="dev: no such file or folder .Libri2Mix Kaldi-style dev folder"):
        corpus_manifest("libri2mix", tmp_path, "sd", "dev")
    (split / "wav.scp").write_text("mix1 sox in.flac -t wav - |\n")
    with pytest.raises(ConfigError, match="wav.scp:1: expected '<recording id> <path to .wav>'"):
        corpus_manifest("libri2mix", tmp_path, "sd", "test")


def test_superb_lite_resources_and_errors(superb_lite_tiny, tmp_path):
    occurrences = corpus_resource("superb_lite", superb_lite_tiny, "qbe_occurrences")
    assert set(occurrences) == {"dev", "test"} and all(o["end"] > o["start"] for o in occurrences["dev"])
    sd_rows = corpus_manifest("superb_lite", superb_lite_tiny, "sd", "train")
    assert read_rttm(sd_rows[0]["rttm"], sd_rows[0]["id"])  # the rttm column is a path, made absolute
    with pytest.raises(ConfigError, match="corpus 'superb_lite' has no resource 'rttms'; it has asv_trials"):
        corpus_resource("superb_lite", superb_lite_tiny, "rttms")
    with pytest.raises(ConfigError, match="trials.tsv: no such file or folder"):
        corpus_resource("superb_lite", tmp_path, "asv_trials")
    json.dumps(occurrences)  # plain data


# -- QbE ------------------------------------------------------------------------------------------


def test_qbe_outcomes_are_per_query_twv_terms_whose_mean_is_the_mtwv():
    from downstream.qbe import maximum_term_weighted_value, query_twv

    torch.manual_seed(3)
    scores = torch.randn(6, 40)
    targets = torch.rand(6, 40) > 0.8
    targets[0] = False  # a query found nowhere is not scored
    targets[1, :3] = True
    scores[1, :3] += 3.0  # one easy query
    mtwv, threshold = maximum_term_weighted_value(scores, targets)
    terms = [query_twv(scores[q], targets[q], threshold) for q in range(6) if targets[q].any()]
    assert len(terms) == 5 and np.mean(terms) == pytest.approx(mtwv, abs=1e-12) and mtwv > 0
    assert query_twv(scores[1], targets[1], float("inf")) == 0.0  # detecting nothing
    task = get_task("qbe")
    assert not task.trains_head and task.splits == ("dev_queries", "dev_docs", "test_queries", "test_docs")
