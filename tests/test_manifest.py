import pytest

from speechssl.data.manifest import read_manifest, write_manifest
from speechssl.errors import ConfigError


def test_round_trip_resolves_paths_against_the_manifest_directory(tmp_path):
    rows = [
        {"id": "a", "path": "../audio/a.wav", "num_samples": 16000, "text": "hello world"},
        {"id": "b", "path": "/abs/b.wav", "num_samples": 8000, "text": ""},
    ]
    write_manifest(tmp_path / "asr" / "train.tsv", rows, ["id", "path", "num_samples", "text"])
    back = read_manifest(tmp_path / "asr" / "train.tsv")
    assert back[0] == {"id": "a", "path": str(tmp_path / "audio" / "a.wav"), "num_samples": 16000, "text": "hello world"}
    assert back[1]["path"] == "/abs/b.wav" and back[1]["text"] == ""
    assert read_manifest(tmp_path / "asr" / "train.tsv", root="/data")[0]["path"] == "/audio/a.wav"


def test_header_is_plain_tsv(tmp_path):
    write_manifest(tmp_path / "m.tsv", [{"id": "x", "path": "x.wav", "num_samples": 3}], ["id", "path", "num_samples"])
    assert (tmp_path / "m.tsv").read_text() == "id\tpath\tnum_samples\nx\tx.wav\t3\n"


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty manifest"),
        ("id\tpath\n", "missing column(s) num_samples"),
        ("id\tpath\tnum_samples\na\ta.wav\n", "m.tsv:2: 2 fields, expected 3"),
        ("id\tpath\tnum_samples\na\ta.wav\tmany\n", "num_samples 'many' is not an integer"),
    ],
)
def test_bad_manifests_name_file_and_problem(tmp_path, content, message):
    (tmp_path / "m.tsv").write_text(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(tmp_path / "m.tsv")


def test_missing_manifest(tmp_path):
    with pytest.raises(ConfigError, match="no such manifest"):
        read_manifest(tmp_path / "nope.tsv")


def test_write_rejects_tabs_and_missing_required_columns(tmp_path):
    with pytest.raises(ValueError, match="tab or newline"):
        write_manifest(tmp_path / "m.tsv", [{"id": "a\tb", "path": "p", "num_samples": 1}], ["id", "path", "num_samples"])
    with pytest.raises(ValueError, match="num_samples"):
        write_manifest(tmp_path / "m.tsv", [], ["id", "path"])
