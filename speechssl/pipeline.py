"""Pipelines: a graph of ``speechssl`` commands, each stage skipped once it has finished.

A pipeline config (``configs/pipeline/NAME.yaml``) lists stages, each a name and
the command line a user would type after ``speechssl``. ``speechssl run
pipeline=NAME`` runs one (``speechssl pretrain pipeline=two_iterations`` runs
HuBERT's). Each stage is a child process running exactly the CLI call it reads
as (no hidden Python). A stage's keys:

- ``name`` and ``command`` (the arguments after ``speechssl``);
- ``needs``: the stages it waits for, by name or glob pattern (``benchmark_*``);
  without the key, the stage before it in the list (so a plain list runs in
  order); ``needs: []`` waits for nothing;
- ``foreach``: ``{var: [values]}``; the stage is repeated for every combination
  (the last variable varies fastest), with ``{var}`` in its name, command and
  needs replaced by the value, ``{var.key}`` by a key of a value that is a
  mapping (``${...}``, an interpolation for the stage's own Hydra, is left
  alone). A value that is itself a list is spread into the list, so that one
  list can be made of others in a config.

With ``jobs=N`` up to N stages whose needs have finished run side by side, in
the order of the list; each gets ``OMP_NUM_THREADS`` = cores / N unless the
environment sets it, and its output goes to ``RUN_DIR/stages/NAME.log`` instead
of the terminal (the last lines are shown when it fails).

A stage that exits 0 leaves ``RUN_DIR/stages/NAME.json`` (its command, wall
time and when it finished); a rerun skips it and says so, unless a stage it
needs ran again after it (as make does: a report reruns when benchmarks were
added), and a stage that was stopped resumes by its own rules (pretraining from its ``last`` checkpoint, clustering from the steps
it finished). ``RUN_DIR/pipeline.json`` (rewritten as each stage finishes) lists
every stage with its time, the pipeline's wall time and the machine.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from speechssl.checkpoint import atomic_write
from speechssl.errors import ConfigError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_PLACEHOLDER = re.compile(r"(?<!\$)\{(\w+)(?:\.(\w+))?\}")  # {var} or {var.key}; ${...} is Hydra's, left alone
_POLL_SECONDS = 0.2
# what a stage's command follows: the speechssl CLI of this interpreter
COMMAND = (sys.executable, "-m", "speechssl.cli")


def machine() -> dict:
    """The machine a pipeline ran on: CPU model, cores, Python, torch and its thread count, GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info |= {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def describe_machine(info: dict) -> str:
    """``AMD EPYC 7B13, 2 cores, torch 2.14.1, no GPU``."""
    parts = [info.get("cpu", "?"), f"{info.get('cores', '?')} cores"]
    if info.get("torch"):
        parts.append(f"torch {info['torch']}")
    parts.append(f"GPU {info['gpu']}" if info.get("gpu") else "no GPU")
    return ", ".join(parts)


def expand_stages(name: str, stages: Sequence[dict]) -> list[dict]:
    """``stages`` with every ``foreach`` stage repeated per combination and ``needs`` filled in and resolved.

    Returns dicts of ``name``, ``command`` (strings) and ``needs`` (stage names, each
    listed before the stage); a malformed stage is a :class:`ConfigError` naming it.
    """
    expanded: list[dict] = []
    for i, stage in enumerate(stages, 1):
        if not stage.get("name") or not stage.get("command"):
            raise ConfigError(f"pipeline {name}: stage {i} needs a name and a command, got {dict(stage)}")
        unknown = set(stage) - {"name", "command", "needs", "foreach"}
        if unknown:
            raise ConfigError(f"pipeline {name}: stage {stage['name']!r} has unknown key(s) {', '.join(sorted(unknown))}; "
                              "known: name, command, needs, foreach")
        previous = [expanded[-1]["name"]] if expanded else []
        for binding in _bindings(name, stage):
            expanded.append({
                "name": _fill(stage["name"], binding),
                "command": [_fill(str(part), binding) for part in stage["command"]],
                "needs": previous if "needs" not in stage else [_fill(str(n), binding) for n in stage["needs"] or []],
            })
    names = [s["name"] for s in expanded]
    seen: set[str] = set()
    for stage in expanded:
        if not _NAME.match(stage["name"]):
            raise ConfigError(f"pipeline {name}: stage name {stage['name']!r} may hold only letters, digits and _ . + -")
        if stage["name"] in seen:
            raise ConfigError(f"pipeline {name}: stage name {stage['name']!r} used twice")
        resolved = []
        for pattern in stage["needs"]:
            # a stage waits only for stages listed before it, so the graph has no cycle and the list order runs it
            matches = [n for n in names[: names.index(stage["name"])] if fnmatch.fnmatchcase(n, pattern)]
            if not matches:
                raise ConfigError(f"pipeline {name}: stage {stage['name']!r} needs {pattern!r}, which names no "
                                  "stage listed before it")
            resolved += [m for m in matches if m not in resolved]
        stage["needs"] = resolved
        seen.add(stage["name"])
    return expanded


def _bindings(name: str, stage: dict) -> list[dict]:
    foreach = stage.get("foreach")
    if not foreach:
        return [{}]
    if not isinstance(foreach, dict):
        raise ConfigError(f"pipeline {name}: stage {stage['name']!r}: foreach must map names to lists, got {foreach!r}")
    values = {}
    for var, items in foreach.items():
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"pipeline {name}: stage {stage['name']!r}: foreach.{var} must be a list, got {items!r}")
        flat = [x for item in items for x in (item if isinstance(item, (list, tuple)) else [item])]
        if not flat:
            return []
        values[var] = flat
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


def _fill(text: str, binding: dict) -> str:
    """``text`` with ``{var}`` and ``{var.key}`` of ``binding`` replaced; other braces are left as they are."""

    def value(match: re.Match) -> str:
        var, key = match.group(1), match.group(2)
        if var not in binding:
            return match.group(0)
        item = binding[var]
        if key is None:
            if isinstance(item, dict):
                raise ConfigError(f"{{{var}}} is a mapping ({item}); name one of its keys: {{{var}.KEY}}")
            return "null" if item is None else str(item)
        if not isinstance(item, dict) or key not in item:
            raise ConfigError(f"{{{var}.{key}}}: {item!r} has no key {key!r}")
        return "null" if item[key] is None else str(item[key])

    return _PLACEHOLDER.sub(value, text)


def run_pipeline(name: str, stages: Sequence[dict], run_dir: str | os.PathLike, jobs: int = 1) -> dict[str, float]:
    """Run ``stages`` (see the module doc), up to ``jobs`` at once; returns ``{stage: seconds}`` in list order."""
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"jobs={jobs!r}; expected a whole number of stages to run at once, at least 1")
    plan = expand_stages(name, stages)
    run_dir = Path(run_dir)
    done_dir = run_dir / "stages"
    done_dir.mkdir(parents=True, exist_ok=True)
    total, start = len(plan), time.perf_counter()
    number = {stage["name"]: i for i, stage in enumerate(plan, 1)}
    times: dict[str, float] = {}
    finished: dict[str, float] = {}  # stage -> when it finished (time.time())
    for stage in plan:
        # as make does: finished, and after every stage it needs (a need that ran again makes it stale)
        marker = done_dir / f"{stage['name']}.json"
        if not marker.exists() or not all(n in times for n in stage["needs"]):
            continue
        record = json.loads(marker.read_text())
        if any(finished[n] > record.get("finished", 0.0) for n in stage["needs"]):
            log.info("pipeline %s: stage %d/%d %s finished before a stage it needs ran again: it runs again", name,
                     number[stage["name"]], total, stage["name"])  # fmt: skip
            continue
        times[stage["name"]], finished[stage["name"]] = record["seconds"], record.get("finished", 0.0)
        log.info("pipeline %s: stage %d/%d %s finished before (%.0f s), skipped", name, number[stage["name"]],
                 total, stage["name"], times[stage["name"]])  # fmt: skip
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    info = {"pipeline": name, "jobs": jobs, "threads_per_stage": env.get("OMP_NUM_THREADS"), "machine": machine()}
    waiting = [s for s in plan if s["name"] not in times]
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    failed: list[str] = []
    try:
        while waiting or running:
            for stage in list(waiting):
                if failed or len(running) >= jobs:
                    break
                if all(n in times for n in stage["needs"]):
                    waiting.remove(stage)
                    running[stage["name"]] = _start(name, stage, number, total, done_dir, env, jobs)
            if not running:
                if failed or not waiting:
                    break
                blocked = ", ".join(s["name"] for s in waiting[:3])  # pragma: no cover - expand_stages prevents it
                raise ConfigError(f"pipeline {name}: stages {blocked} wait for stages that cannot finish")
            time.sleep(_POLL_SECONDS)
            for stage_name, (process, began, logfile) in list(running.items()):
                status = process.poll()
                if status is None:
                    continue
                del running[stage_name]
                seconds = round(time.perf_counter() - began, 1)
                if logfile is not None:
                    logfile.close()
                if status != 0:
                    failed.append(f"{stage_name} failed (exit {status}) after {seconds:.0f} s")
                    _report_failure(name, stage_name, status, seconds, done_dir if logfile is not None else None)
                    continue
                command = next(s["command"] for s in plan if s["name"] == stage_name)
                times[stage_name], finished[stage_name] = seconds, time.time()
                record = json.dumps({"command": command, "seconds": seconds, "finished": finished[stage_name]},
                                    indent=1) + "\n"
                atomic_write(done_dir / f"{stage_name}.json", lambda tmp, r=record: Path(tmp).write_text(r))
                log.info("pipeline %s: stage %d/%d %s done in %.0f s (%d of %d finished)", name, number[stage_name],
                         total, stage_name, seconds, len(times), total)  # fmt: skip
                _write_summary(run_dir, plan, times, info, time.perf_counter() - start)
    except BaseException:
        for process, _, _ in running.values():  # Ctrl-C or an error here: no stage is left running unseen
            process.terminate()
        for process, _, _ in running.values():
            process.wait()
        raise
    _write_summary(run_dir, plan, times, info, time.perf_counter() - start)
    if failed:
        raise ConfigError(
            f"pipeline {name}: stage {'; stage '.join(failed)}; {len(times)} of {total} stages finished. "
            "Run the same command again to resume: finished stages are skipped"
        )
    return {s["name"]: times[s["name"]] for s in plan}


def _start(name: str, stage: dict, number: dict, total: int, done_dir: Path, env: dict, jobs: int):
    command = stage["command"]
    log.info("pipeline %s: stage %d/%d %s: speechssl %s", name, number[stage["name"]], total, stage["name"],
             " ".join(command))  # fmt: skip
    logfile = None
    if jobs > 1:  # side by side, the stages' progress bars would interleave: each writes its own log
        logfile = open(done_dir / f"{stage['name']}.log", "w")
    process = subprocess.Popen([*COMMAND, *command], env=env,
                               stdout=logfile, stderr=subprocess.STDOUT if logfile else None)  # fmt: skip
    return process, time.perf_counter(), logfile


def _report_failure(name: str, stage: str, status: int, seconds: float, log_dir: Path | None) -> None:
    tail = ""
    if log_dir is not None:
        lines = (log_dir / f"{stage}.log").read_text(errors="replace").splitlines()
        tail = "; the end of its log " + str(log_dir / f"{stage}.log") + ":\n  " + "\n  ".join(lines[-15:])
    log.error("pipeline %s: stage %s failed (exit %d) after %.0f s%s", name, stage, status, seconds, tail)


def _write_summary(run_dir: Path, plan: list[dict], times: dict, info: dict, wall: float) -> None:
    summary = {**info, "stages": [{"name": s["name"], "seconds": times[s["name"]]} for s in plan if s["name"] in times],
               "seconds": round(sum(times.values()), 1), "wall_seconds": round(wall, 1),
               "finished": len(times), "total": len(plan)}  # fmt: skip
    atomic_write(run_dir / "pipeline.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1) + "\n"))
