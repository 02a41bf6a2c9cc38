"""Each real-corpus loader reads a tiny corpus the test writes in that corpus's own layout."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from speechssl.data.corpora import CORPORA, corpus_manifest, corpus_tasks
from speechssl.data.manifest import write_manifest
from speechssl.errors import ConfigError


def write_wav(path: Path, seconds: float, rate: int = 16000) -> int:
    """A short noise file; returns its length in samples at 16 kHz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(seconds * rate)
    noise = np.random.default_rng(frames).uniform(-0.1, 0.1, frames).astype(np.float32)
    soundfile.write(str(path), noise, rate, subtype="PCM_16")
    return round(frames * 16000 / rate)


def by_id(rows):
    return {row["id"]: row for row in rows}


def check_rows(rows):
    for row in rows:
        assert Path(row["path"]).is_absolute() and Path(row["path"]).is_file()
        assert isinstance(row["num_samples"], int) and row["num_samples"] > 0
        assert isinstance(row["speaker"], str)


# ---------------------------------------------------------------- registry


def test_registry_lists_every_corpus_and_its_tasks():
    assert set(CORPORA) == {
        "superb_lite",
        "librispeech",
        "speech_commands",
        "voxceleb1",
        "fluent_speech_commands",
        "iemocap",
        "libri2mix",
        "quesst14",
    }
    assert corpus_tasks("librispeech") == ["asr", "pr"]
    assert corpus_tasks("speech_commands") == ["ks"]
    assert corpus_tasks("voxceleb1") == ["sid", "asv"]
    assert corpus_tasks("libri2mix") == ["sd"] and corpus_tasks("quesst14") == ["qbe"]
    assert corpus_tasks("fluent_speech_commands") == ["ic"]
    assert corpus_tasks("iemocap") == ["er"]


@pytest.mark.parametrize("config", ["librispeech", "speech_commands", "voxceleb1", "fluent_speech_commands", "iemocap",
                                    "libri2mix", "quesst14"])
def test_data_config_names_the_corpus_and_its_options(config):
    data = yaml.safe_load((Path(__file__).parents[1] / "configs" / "data" / f"{config}.yaml").read_text())
    assert data["name"] == config and data["root"] == "???"
    assert list(data["options"]) == CORPORA[config].options()


def test_unknown_corpus_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown corpus 'timit'; known: superb_lite, librispeech"):
        corpus_manifest("timit", tmp_path, "asr", "train")
    with pytest.raises(ConfigError, match="unknown corpus 'timit'"):
        corpus_tasks("timit")


@pytest.mark.parametrize(
    "name, task, provided",
    [("voxceleb1", "asr", "sid, asv"), ("speech_commands", "er", "ks"), ("librispeech", "ks", "asr, pr"),
     ("fluent_speech_commands", "sid", "ic"), ("iemocap", "ic", "er")],
)  # fmt: skip
def test_task_the_corpus_has_no_labels_for(tmp_path, name, task, provided):
    message = f"corpus '{name}' has no labels for task '{task}'; it provides: {provided}$"
    with pytest.raises(ConfigError, match=message):
        corpus_manifest(name, tmp_path, task, "train")


@pytest.mark.parametrize(
    "name, task",
    [("voxceleb1", "sid"), ("speech_commands", "ks"), ("librispeech", "asr"),
     ("fluent_speech_commands", "ic"), ("iemocap", "er"), ("superb_lite", "ks")],
)  # fmt: skip
def test_missing_root_is_named(tmp_path, name, task):
    with pytest.raises(ConfigError, match=str(tmp_path / "nowhere")):
        corpus_manifest(name, tmp_path / "nowhere", task, "train")


def test_unknown_option_and_split(tmp_path):
    with pytest.raises(ConfigError, match="unknown option.s. folds; known: fold, dev_percent"):
        corpus_manifest("iemocap", tmp_path, "er", "train", folds=2)
    with pytest.raises(ConfigError, match="unknown split 'valid'; known: train, dev, test"):
        corpus_manifest("fluent_speech_commands", tmp_path, "ic", "valid")


# ---------------------------------------------------------------- SUPERB-lite


def test_superb_lite_reads_task_manifests(tmp_path):
    write_wav(tmp_path / "audio" / "a.wav", 0.1)
    for split in ("train", "dev", "test"):
        rows = [{"id": f"{split}-a", "path": "../audio/a.wav", "num_samples": 1600, "speaker": "s1", "label": "yes"}]
        write_manifest(tmp_path / "ks" / f"{split}.tsv", rows, ["id", "path", "num_samples", "speaker", "label"])
    write_manifest(tmp_path / "pretrain" / "train.tsv", [], ["id", "path", "num_samples"])
    assert corpus_tasks("superb_lite", tmp_path) == ["ks"]
    rows = corpus_manifest("superb_lite", tmp_path, "ks", "dev")
    assert rows == [
        {"id": "dev-a", "path": str(tmp_path / "audio" / "a.wav"), "num_samples": 1600, "speaker": "s1", "label": "yes"}
    ]
    with pytest.raises(ConfigError, match="corpus 'superb_lite' has no labels for task 'er'; it provides: ks$"):
        corpus_manifest("superb_lite", tmp_path, "er", "train")


# ---------------------------------------------------------------- LibriSpeech


@pytest.fixture
def librispeech(tmp_path):
    root = tmp_path / "LibriSpeech"
    lengths = {}
    corpus = {
        "train-clean-100": {"19-198": ["HELLO WORLD", "IT'S A WORLD"]},
        "dev-clean": {"84-121123": ["HELLO"]},
        "test-clean": {"61-70968": ["WORLD HELLO", "UNSEEN WORD"]},
    }
    for subset, chapters in corpus.items():
        for chapter, texts in chapters.items():
            folder = root / subset / chapter.replace("-", "/")
            lines = []
            for n, text in enumerate(texts):
                utt = f"{chapter}-{n:04d}"
                lengths[utt] = write_wav(folder / f"{utt}.flac", 0.1 + 0.05 * n)
                lines.append(f"{utt} {text}")
            (folder / f"{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text(
        ";;; CMUdict-style\nHELLO  HH AH0 L OW1\nHELLO(1)  HH EH0 L OW1\nWORLD  W ER1 L D\nIT'S  IH1 T S\nA  AH0\n"
    )
    return root, lexicon, lengths


def test_librispeech_asr_splits_and_lower_case_text(librispeech):
    root, _, lengths = librispeech
    train = corpus_manifest("librispeech", root, "asr", "train")
    check_rows(train)
    assert [r["id"] for r in train] == ["19-198-0000", "19-198-0001"]
    assert train[1]["text"] == "it's a world" and train[1]["speaker"] == "19"
    assert train[1]["path"] == str(root / "train-clean-100" / "19" / "198" / "19-198-0001.flac")
    assert all(r["num_samples"] == lengths[r["id"]] for r in train)
    assert [r["id"] for r in corpus_manifest("librispeech", root, "asr", "dev")] == ["84-121123-0000"]
    assert len(corpus_manifest("librispeech", root, "asr", "test")) == 2
    both = corpus_manifest("librispeech", root, "asr", "train", subsets={"train": ["train-clean-100", "dev-clean"]})
    assert len(both) == 3


def test_librispeech_pr_phones_from_the_lexicon(librispeech):
    root, lexicon, _ = librispeech
    train = by_id(corpus_manifest("librispeech", root, "pr", "train", lexicon=str(lexicon)))
    assert train["19-198-0000"]["phones"] == "HH AH L OW W ER L D"  # first pronunciation, stress stripped
    assert train["19-198-0001"]["phones"] == "IH T S AH W ER L D"
    kept = corpus_manifest("librispeech", root, "pr", "train", lexicon=str(lexicon), strip_stress=False)
    assert kept[0]["phones"] == "HH AH0 L OW1 W ER1 L D"
    assert kept[0]["text"] == "hello world"
    g2p = lexicon.with_name("g2p.txt")  # SUPERB's second lexicon: words the first one lacks
    g2p.write_text("unseen AH0 N S IY1 N # from g2p\nword W ER1 D\nhello X\n")
    test = corpus_manifest("librispeech", root, "pr", "test", lexicon=[str(lexicon), str(g2p)])
    assert [r["phones"] for r in test] == ["W ER L D HH AH L OW", "AH N S IY N W ER D"]


def test_librispeech_pr_word_missing_from_the_lexicon(librispeech):
    root, lexicon, _ = librispeech
    with pytest.raises(ConfigError, match=r"61-70968-0001: word\(s\) 'unseen', 'word' not in the lexicon"):
        corpus_manifest("librispeech", root, "pr", "test", lexicon=str(lexicon))
    rows = corpus_manifest("librispeech", root, "pr", "test", lexicon=str(lexicon), missing_words="skip")
    assert [r["id"] for r in rows] == ["61-70968-0000"]
    with pytest.raises(ConfigError, match="needs a pronunciation lexicon"):
        corpus_manifest("librispeech", root, "pr", "test")
    with pytest.raises(ConfigError, match="nolex.txt: no such lexicon file"):
        corpus_manifest("librispeech", root, "pr", "test", lexicon=str(root / "nolex.txt"))


def test_librispeech_missing_subset_and_audio(librispeech):
    root, _, _ = librispeech
    with pytest.raises(ConfigError, match=str(root / "train-clean-360")):
        corpus_manifest("librispeech", root, "asr", "train", subsets={"train": "train-clean-360"})
    (root / "dev-clean" / "84" / "121123" / "84-121123-0000.flac").unlink()
    with pytest.raises(
        ConfigError, match=r"84-121123-0000.flac: no such audio file \(listed in .*84-121123.trans.txt\)"
    ):
        corpus_manifest("librispeech", root, "asr", "dev")


# ---------------------------------------------------------------- Speech Commands


@pytest.fixture
def speech_commands(tmp_path):
    root = tmp_path / "speech_commands_v0.01"
    clips = ["yes/aaaa1111_nohash_0", "yes/bbbb2222_nohash_0", "yes/cccc3333_nohash_1", "bed/aaaa1111_nohash_0",
             "go/dddd4444_nohash_0", "stop/eeee5555_nohash_2"]  # fmt: skip
    for clip in clips:
        write_wav(root / f"{clip}.wav", 0.05)
    (root / "validation_list.txt").write_text("yes/bbbb2222_nohash_0.wav\ngo/dddd4444_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/cccc3333_nohash_1.wav\n")
    write_wav(root / "_background_noise_" / "white_noise.wav", 3.5, rate=8000)  # 3 whole seconds at 16 kHz
    write_wav(root / "_background_noise_" / "pink_noise.wav", 1.2)  # 1 second
    (root / "_background_noise_" / "README.md").write_text("noise\n")
    (root / "LICENSE").write_text("CC-BY-4.0\n")
    test_root = tmp_path / "speech_commands_test_set_v0.01"
    for clip in ["yes/ffff6666_nohash_0", "_unknown_/gggg7777_nohash_0", "_silence_/silence_0"]:
        write_wav(test_root / f"{clip}.wav", 0.05)
    return root, test_root


def test_speech_commands_superb_split_and_labels(speech_commands):
    root, _ = speech_commands
    train = by_id(corpus_manifest("speech_commands", root, "ks", "train"))
    check_rows(train.values())
    assert {k: r["label"] for k, r in train.items()} == {
        "yes/aaaa1111_nohash_0": "yes", "bed/aaaa1111_nohash_0": "_unknown_", "stop/eeee5555_nohash_2": "stop",
        "_background_noise_/white_noise-0002": "_silence_",
    }  # fmt: skip
    assert train["yes/aaaa1111_nohash_0"]["speaker"] == "aaaa1111"
    assert train["yes/aaaa1111_nohash_0"]["num_samples"] == 800 and train["yes/aaaa1111_nohash_0"]["offset"] == 0
    silence = train["_background_noise_/white_noise-0002"]
    assert (silence["offset"], silence["num_samples"], silence["speaker"]) == (32000, 16000, "")
    dev = by_id(corpus_manifest("speech_commands", root, "ks", "dev"))
    assert {k: r["label"] for k, r in dev.items()} == {
        "yes/bbbb2222_nohash_0": "yes", "go/dddd4444_nohash_0": "go",
        "_background_noise_/pink_noise-0000": "_silence_", "_background_noise_/white_noise-0000": "_silence_",
    }  # fmt: skip
    test = by_id(corpus_manifest("speech_commands", root, "ks", "test"))
    assert {k: (r["label"], r["offset"]) for k, r in test.items()} == {
        "yes/cccc3333_nohash_1": ("yes", 0),
        "_background_noise_/white_noise-0001": ("_silence_", 16000),
    }


def test_speech_commands_separate_test_set(speech_commands, caplog):
    root, test_root = speech_commands
    with caplog.at_level("WARNING"):
        corpus_manifest("speech_commands", root, "ks", "test")
    assert "not comparable with SUPERB's" in caplog.text  # testing_list.txt is not SUPERB's KS test set
    caplog.clear()
    with caplog.at_level("WARNING"):
        test = by_id(corpus_manifest("speech_commands", root, "ks", "test", test_root=str(test_root)))
    assert not caplog.text
    check_rows(test.values())
    assert {k: r["label"] for k, r in test.items()} == {
        "test_set/yes/ffff6666_nohash_0": "yes", "test_set/_unknown_/gggg7777_nohash_0": "_unknown_",
        "test_set/_silence_/silence_0": "_silence_"}  # fmt: skip
    assert len(corpus_manifest("speech_commands", root, "ks", "train", test_root=str(test_root))) == 4


def test_speech_commands_missing_split_list(speech_commands):
    root, _ = speech_commands
    (root / "go" / "dddd4444_nohash_0.wav").unlink()
    with pytest.raises(ConfigError, match=r"dddd4444_nohash_0.wav: no such audio file .listed in .*validation_list"):
        corpus_manifest("speech_commands", root, "ks", "dev")
    (root / "validation_list.txt").unlink()
    with pytest.raises(ConfigError, match=str(root / "validation_list.txt")):
        corpus_manifest("speech_commands", root, "ks", "train")


# ---------------------------------------------------------------- VoxCeleb1


@pytest.fixture
def voxceleb1(tmp_path):
    root = tmp_path / "VoxCeleb1"
    split = {"id10001/1zcIwhmdeo4/00001.wav": 1, "id10001/1zcIwhmdeo4/00002.wav": 2, "id10001/7gWzIy6yIIk/00001.wav": 3,
             "id10002/6WO410QOeuo/00001.wav": 1, "id10002/6WO410QOeuo/00002.wav": 3}  # fmt: skip
    lengths = {rel.removesuffix(".wav"): write_wav(root / "wav" / rel, 0.1 + 0.01 * i) for i, rel in enumerate(split)}
    (root / "iden_split.txt").write_text("".join(f"{code} {rel}\n" for rel, code in split.items()))
    return root, lengths


def test_voxceleb1_iden_split(voxceleb1):
    root, lengths = voxceleb1
    train = corpus_manifest("voxceleb1", root, "sid", "train")
    check_rows(train)
    assert [(r["id"], r["speaker"]) for r in train] == [
        ("id10001/1zcIwhmdeo4/00001", "id10001"),
        ("id10002/6WO410QOeuo/00001", "id10002"),
    ]
    assert train[0]["path"] == str(root / "wav" / "id10001" / "1zcIwhmdeo4" / "00001.wav")
    assert [r["id"] for r in corpus_manifest("voxceleb1", root, "sid", "dev")] == ["id10001/1zcIwhmdeo4/00002"]
    test = corpus_manifest("voxceleb1", root, "sid", "test")
    assert [r["speaker"] for r in test] == ["id10001", "id10002"]
    assert all(r["num_samples"] == lengths[r["id"]] for r in train + test)


def test_voxceleb1_split_file_option_and_missing_audio(voxceleb1, tmp_path):
    root, _ = voxceleb1
    (root / "iden_split.txt").rename(tmp_path / "iden_split.txt")
    with pytest.raises(ConfigError, match=str(root / "iden_split.txt")):
        corpus_manifest("voxceleb1", root, "sid", "train")
    assert len(corpus_manifest("voxceleb1", root, "sid", "train", split_file=str(tmp_path / "iden_split.txt"))) == 2
    (root / "wav" / "id10002" / "6WO410QOeuo" / "00002.wav").unlink()
    with pytest.raises(ConfigError, match="00002.wav: no such audio file .listed in .*iden_split.txt"):
        corpus_manifest("voxceleb1", root, "sid", "test", split_file=str(tmp_path / "iden_split.txt"))


# ---------------------------------------------------------------- Fluent Speech Commands


def test_fluent_speech_commands(tmp_path):
    root = tmp_path / "fluent_speech_commands_dataset"
    tables = {  # speakerId, file uuid, transcription, action, object, location
        "train": ["2BqVo8kVB2Skwgyb,0a3129c0-4474-11e9-a9a5-5dbec3b8816a,Change language,change language,none,none",
                  ("2BqVo8kVB2Skwgyb,0ee42a80-4474-11e9-a9a5-5dbec3b8816a,Turn on the lights in the kitchen,"
                   "activate,lights,kitchen")],
        "valid": ["4BrX8aDqK2cLZRYl,1b9c5b30-45d2-11e9-8ec0-7bf21d1cfe30,Decrease the heat,decrease,heat,none"],
        "test": ["4aGjX3AG5xcxeL7a,1f4a8d90-4a39-11e9-a0c4-4d1e9b6b2bb0,Bring me my shoes,bring,shoes,none"],
    }  # fmt: skip
    lengths = {}
    for split, records in tables.items():
        lines = [",path,speakerId,transcription,action,object,location"]
        for i, record in enumerate(records):
            spk, uuid, rest = record.split(",", 2)
            rel = f"wavs/speakers/{spk}/{uuid}.wav"
            lengths[f"{spk}/{uuid}"] = write_wav(root / rel, 0.1 + 0.02 * i)
            lines.append(f"{i},{rel},{spk},{rest}")
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "data" / f"{split}_data.csv").write_text("\n".join(lines) + "\n")
    train = corpus_manifest("fluent_speech_commands", root, "ic", "train")
    check_rows(train)
    assert train[1] == {
        "id": "2BqVo8kVB2Skwgyb/0ee42a80-4474-11e9-a9a5-5dbec3b8816a",
        "path": str(root / "wavs/speakers/2BqVo8kVB2Skwgyb/0ee42a80-4474-11e9-a9a5-5dbec3b8816a.wav"),
        "num_samples": lengths["2BqVo8kVB2Skwgyb/0ee42a80-4474-11e9-a9a5-5dbec3b8816a"],
        "speaker": "2BqVo8kVB2Skwgyb", "action": "activate", "object": "lights", "location": "kitchen",
        "text": "Turn on the lights in the kitchen",
    }  # fmt: skip
    dev = corpus_manifest("fluent_speech_commands", root, "ic", "dev")
    assert [(r["action"], r["object"], r["location"]) for r in dev] == [("decrease", "heat", "none")]
    assert corpus_manifest("fluent_speech_commands", root, "ic", "test")[0]["speaker"] == "4aGjX3AG5xcxeL7a"
    (root / "data" / "valid_data.csv").unlink()
    with pytest.raises(ConfigError, match=str(root / "data" / "valid_data.csv")):
        corpus_manifest("fluent_speech_commands", root, "ic", "dev")


# ---------------------------------------------------------------- IEMOCAP


@pytest.fixture
def iemocap(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    emotions = ["neu", "hap", "exc", "sad", "ang", "fru", "xxx", "sur", "neu", "ang", "sad", "hap"]
    expected = {}
    for session in range(1, 6):
        dialog = f"Ses0{session}F_impro01"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for n, emo in enumerate(emotions):
            utt = f"{dialog}_{'FM'[n % 2]}{n:03d}"
            write_wav(root / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt}.wav", 0.05)
            lines += [f"[{n * 2.5:.4f} - {n * 2.5 + 2:.4f}]\t{utt}\t{emo}\t[2.5000, 3.0000, 2.0000]",
                      "C-E1:\tNeutral;\t()", "A-E1:\tval 3; act 2; dom  2;\t()", ""]  # fmt: skip
            expected[utt] = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}.get(emo)
        labels = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        labels.mkdir(parents=True)
        (labels / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        (labels / "Categorical").mkdir()
    return root, expected


def test_iemocap_four_classes_and_session_folds(iemocap):
    root, expected = iemocap
    for fold in (1, 3):
        splits = {s: corpus_manifest("iemocap", root, "er", s, fold=fold) for s in ("train", "dev", "test")}
        for rows in splits.values():
            check_rows(rows)
            assert all(r["emotion"] == expected[r["id"]] for r in rows)
        assert {r["id"][:5] for r in splits["test"]} == {f"Ses0{fold}"}
        assert len(splits["test"]) == 9  # 12 turns, fru/xxx/sur dropped
        ids = [r["id"] for r in splits["train"] + splits["dev"]]
        assert len(ids) == len(set(ids)) == 4 * 9 and f"Ses0{fold}" not in {i[:5] for i in ids}
        assert 0 < len(splits["dev"]) < len(splits["train"])
    rows = by_id(corpus_manifest("iemocap", root, "er", "test", fold=2))
    assert rows["Ses02F_impro01_M001"]["speaker"] == "Ses02M" and rows["Ses02F_impro01_F002"]["speaker"] == "Ses02F"
    assert rows["Ses02F_impro01_M001"]["path"] == str(
        root / "Session2/sentences/wav/Ses02F_impro01/Ses02F_impro01_M001.wav"
    )
    assert rows["Ses02F_impro01_M001"]["num_samples"] == 800
    # the dev share is fixed by the utterance ids, not by the order files are found in
    assert corpus_manifest("iemocap", root, "er", "dev", fold=1) == corpus_manifest(
        "iemocap", root, "er", "dev", fold=1
    )
    assert corpus_manifest("iemocap", root, "er", "dev", fold=1, dev_percent=0) == []


def test_iemocap_bad_fold_and_missing_session(iemocap):
    root, _ = iemocap
    with pytest.raises(ConfigError, match="fold must be one of 1..5"):
        corpus_manifest("iemocap", root, "er", "test", fold=6)
    (root / "Session4" / "dialog" / "EmoEvaluation" / "Ses04F_impro01.txt").unlink()
    with pytest.raises(ConfigError, match="EmoEvaluation: no labelled utterances"):
        corpus_manifest("iemocap", root, "er", "train", fold=1)
    shutil.rmtree(root / "Session4")
    with pytest.raises(ConfigError, match=str(root / "Session4")):
        corpus_manifest("iemocap", root, "er", "train", fold=1)
