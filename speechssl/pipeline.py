"""Pipelines: a list of ``speechssl`` commands run in order, each stage skipped once it has finished.

A pipeline config (``configs/pipeline/NAME.yaml``, chosen with ``pipeline=NAME`` on
``speechssl pretrain``) lists stages, each a name and the command line a user
would type after ``speechssl``. The stages run one after another as child
processes, so each is exactly the CLI call it reads as (no hidden Python). A
stage that exits 0 leaves ``RUN_DIR/stages/NAME.json`` (its command and wall
time); a rerun skips it and says so, and a stage that was stopped resumes by its
own rules (pretraining from its ``last`` checkpoint, clustering from the stages
it finished). ``RUN_DIR/pipeline.json`` lists every stage with its time.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from speechssl.checkpoint import atomic_write
from speechssl.errors import ConfigError

log = logging.getLogger(__name__)


def run_pipeline(name: str, stages: Sequence[dict], run_dir: str | Path) -> dict:
    """Run ``stages`` (``{"name": str, "command": [str, ...]}``) in order; returns ``{stage: seconds}``."""
    run_dir = Path(run_dir)
    done_dir = run_dir / "stages"
    done_dir.mkdir(parents=True, exist_ok=True)
    seen, times = set(), {}
    for i, stage in enumerate(stages, 1):
        stage_name, command = stage.get("name"), [str(part) for part in stage.get("command", [])]
        if not stage_name or not command:
            raise ConfigError(f"pipeline {name}: stage {i} needs a name and a command, got {dict(stage)}")
        if stage_name in seen:
            raise ConfigError(f"pipeline {name}: stage name {stage_name!r} used twice")
        seen.add(stage_name)
        marker = done_dir / f"{stage_name}.json"
        if marker.exists():
            record = json.loads(marker.read_text())
            log.info("pipeline %s: stage %d/%d %s finished before (%.0f s), skipped", name, i, len(stages),
                     stage_name, record["seconds"])  # fmt: skip
            times[stage_name] = record["seconds"]
            continue
        log.info("pipeline %s: stage %d/%d %s: speechssl %s", name, i, len(stages), stage_name, " ".join(command))
        start = time.perf_counter()
        status = subprocess.call([sys.executable, "-m", "speechssl.cli", *command])
        seconds = time.perf_counter() - start
        if status != 0:
            raise ConfigError(
                f"pipeline {name}: stage {stage_name} failed (exit {status}) after {seconds:.0f} s; "
                "rerun the same command to resume from it"
            )
        times[stage_name] = round(seconds, 1)
        record = json.dumps({"command": command, "seconds": times[stage_name]}, indent=1) + "\n"
        atomic_write(marker, lambda tmp: Path(tmp).write_text(record))
        log.info("pipeline %s: stage %s done in %.0f s", name, stage_name, seconds)
    summary = {"pipeline": name, "stages": [{"name": s, "seconds": t} for s, t in times.items()],
               "seconds": round(sum(times.values()), 1)}  # fmt: skip
    atomic_write(run_dir / "pipeline.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1) + "\n"))
    return times
