"""The command line: config schemas, and an upstream whose config Hydra cannot hold."""

import subprocess
import sys
import textwrap

import numpy as np
import soundfile as sf

# A process that registers one more upstream, whose conv spec is a list of tuples
# (torchaudio's style, which OmegaConf rejects), then runs the CLI.
BROKEN = textwrap.dedent(
    """
    import sys
    from dataclasses import dataclass, field
    from typing import List, Tuple

    from speechssl.registry import register
    from upstream.baselines import Fbank

    @dataclass
    class BrokenConfig:
        num_mel_bins: int = 80
        cmvn: bool = True
        conv: List[Tuple[int, int, int]] = field(default_factory=lambda: [(512, 10, 5)])

    register("broken", Fbank, BrokenConfig)

    from speechssl.cli import main
    sys.exit(main())
    """
)


def run(tmp_path, *args):
    script = tmp_path / "cli_with_broken.py"
    script.write_text(BROKEN)
    (tmp_path / "conf" / "upstream").mkdir(parents=True, exist_ok=True)
    (tmp_path / "conf" / "upstream" / "broken.yaml").write_text("defaults:\n  - /upstream_schema/broken@_here_\n  - _self_\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    return subprocess.run([sys.executable, str(script), *args, searchpath], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def test_an_unsupported_field_type_is_one_line_and_other_commands_still_work(tmp_path):
    sf.write(tmp_path / "a.wav", (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32), 16000)
    broken = run(tmp_path, "extract", "upstream=broken", "input=a.wav", "output=feats", "hydra.run.dir=runs/b")
    assert broken.returncode == 1, broken.stderr[-2000:]
    assert "upstream 'broken': field 'conv' of BrokenConfig has type typing.List[typing.Tuple[int, int, int]]" in broken.stderr
    assert "List[List[int]], not tuples" in broken.stderr and "Traceback" not in broken.stderr
    fine = run(tmp_path, "extract", "upstream=mfcc", "input=a.wav", "output=feats", "hydra.run.dir=runs/m")
    assert fine.returncode == 0, fine.stderr[-2000:]
    assert (tmp_path / "feats" / "a.safetensors").exists()


def test_pretraining_takes_the_crop_from_the_data_config(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "speechssl.cli", "pretrain", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    done = cli("--cfg", "job", "data.crop=random", "data.max_seconds=2.5")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max_seconds: 2.5" in done.stdout and "crop: random" in done.stdout
    refused = cli("data.crop=middle", "hydra.run.dir=run")
    assert refused.returncode == 1 and "data.crop='middle'; expected one of first, random" in refused.stderr
    assert "Traceback" not in refused.stderr
