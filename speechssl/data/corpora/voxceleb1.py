"""VoxCeleb1 speaker identification and verification with the official lists (Nagrani et al., 2017).

Layout (``vox1_dev_wav.zip`` and ``vox1_test_wav.zip`` unpacked into one folder)::

    root/wav/<speaker id>/<video id>/<n>.wav
    root/iden_split.txt      # "<1|2|3> id10001/1zcIwhmdeo4/00001.wav" a line

1 = train, 2 = dev, 3 = test, as in SUPERB's SID. ``split_file`` points elsewhere when
the list is not in the root (s3prl ships it beside its recipe). The audio may also sit
in several ``root/*/wav`` folders (``root/dev/wav``, ``root/test/wav``), as s3prl reads it.
The speaker id (``id10001``) is the label.

Verification (SUPERB's ASV) reads the trial list, by default ``root/veri_test2.txt``
(VoxCeleb1-O, cleaned) or else ``root/veri_test.txt``: ``<1|0> <enroll>.wav <test>.wav`` a
line. Its utterances are the ``test`` split; ``train`` is every file of the other speakers
under the wav folders (the VoxCeleb1 dev set). ``corpus_resource("voxceleb1", root,
"asv_trials")`` gives the trials as ``(label, enroll id, test id)``.
"""

from __future__ import annotations

from pathlib import Path

from speechssl.data.corpora.base import check_split, num_samples_16k, require
from speechssl.errors import ConfigError

NAME = "voxceleb1"
TASKS = ("sid", "asv")
TRIAL_FILES = ("veri_test2.txt", "veri_test.txt")
SPLIT_CODES = {"train": "1", "dev": "2", "test": "3"}


def manifest(root: Path, task: str, split: str, *, split_file: str | None = None,
             trials_file: str | None = None) -> list[dict]:
    """Rows of ``split``; ``speaker`` is the label. Ids are ``<speaker>/<video>/<n>``."""
    check_split(NAME, split)
    require(root, "VoxCeleb1 folder")
    if task == "asv":
        return verification_manifest(root, split, trials_file)
    listing = require(Path(split_file) if split_file else root / "iden_split.txt", "VoxCeleb1 identification split")
    wav_dirs = [d for d in [root / "wav", *sorted(root.glob("*/wav"))] if d.is_dir()]
    if not wav_dirs:
        raise ConfigError(f"{root / 'wav'}: no such folder (VoxCeleb1 audio, wav/<speaker>/<video>/<n>.wav)")
    rows = []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in ("1", "2", "3"):
            raise ConfigError(f"{listing}:{number}: expected '<1|2|3> <speaker>/<video>/<n>.wav', found {line!r}")
        if fields[0] != SPLIT_CODES[split]:
            continue
        relative = fields[1]
        path = next((d / relative for d in wav_dirs if (d / relative).is_file()), wav_dirs[0] / relative)
        rows.append({
            "id": relative.removesuffix(".wav"),
            "path": str(path),
            "num_samples": num_samples_16k(path, listed_in=listing),
            "speaker": relative.split("/")[0],
        })  # fmt: skip
    return rows


def _wav_dirs(root: Path) -> list[Path]:
    wav_dirs = [d for d in [root / "wav", *sorted(root.glob("*/wav"))] if d.is_dir()]
    if not wav_dirs:
        raise ConfigError(f"{root / 'wav'}: no such folder (VoxCeleb1 audio, wav/<speaker>/<video>/<n>.wav)")
    return wav_dirs


def trial_list(root: Path, trials_file: str | None = None) -> tuple[Path, list[tuple[int, str, str]]]:
    """The verification trials ``(label, enroll id, test id)`` and the file they came from."""
    if trials_file:
        path = require(Path(trials_file), "VoxCeleb1 verification trial list")
    else:
        path = next((root / name for name in TRIAL_FILES if (root / name).is_file()), None)
        if path is None:
            raise ConfigError(f"{root}: no trial list ({' or '.join(TRIAL_FILES)}); set data.options.trials_file=PATH")
    trials = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise ConfigError(f"{path}:{number}: expected '<1|0> <enroll>.wav <test>.wav', found {line!r}")
        trials.append((int(fields[0]), fields[1].removesuffix(".wav"), fields[2].removesuffix(".wav")))
    return path, trials


def verification_manifest(root: Path, split: str, trials_file: str | None) -> list[dict]:
    """ASV rows: ``test``, the utterances of the trial list; ``train``, every file of the other speakers."""
    if split == "dev":
        raise ConfigError("corpus 'voxceleb1': verification has no dev split (SUPERB's ASV scores its last checkpoint)")
    listing, trials = trial_list(root, trials_file)
    wav_dirs = _wav_dirs(root)
    tested = sorted({u for _, e, t in trials for u in (e, t)})
    if split == "test":
        relatives = [f"{u}.wav" for u in tested]
    else:
        speakers = {u.split("/")[0] for u in tested}
        relatives = sorted({str(p.relative_to(d)) for d in wav_dirs for p in d.glob("*/*/*.wav")
                            if p.relative_to(d).parts[0] not in speakers})
    rows = []
    for relative in relatives:
        path = next((d / relative for d in wav_dirs if (d / relative).is_file()), wav_dirs[0] / relative)
        rows.append({"id": relative.removesuffix(".wav"), "path": str(path),
                     "num_samples": num_samples_16k(path, listed_in=listing), "speaker": relative.split("/")[0]})
    return rows


def resource(root: Path, name: str, *, split_file: str | None = None, trials_file: str | None = None):
    """``asv_trials``: the verification trial list."""
    if name != "asv_trials":
        raise ConfigError(f"corpus 'voxceleb1' has no resource '{name}'; it has asv_trials")
    return trial_list(root, trials_file)[1]
