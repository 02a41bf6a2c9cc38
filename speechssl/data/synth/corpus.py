"""Build the synthetic SUPERB-lite corpus: render the plan in parallel, then write manifests.

Jobs are cut into fixed chunks of :data:`CHUNK` files; each chunk renders in a freshly
forked process (eSpeak carries state between utterances, so a fresh engine per chunk
is what makes the bytes independent of the number of workers). A finished chunk
leaves ``.state/<phase>-<k>.json`` with its labels and the sha256 of each file; a
rerun verifies those hashes and renders only chunks that are missing or changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
from pathlib import Path

from tqdm import tqdm

from speechssl.data.synth.espeak import SynthError
from speechssl.data.synth.plan import Job, Plan, make_plan
from speechssl.data.synth.render import Renderer
from speechssl.errors import ConfigError

log = logging.getLogger(__name__)

CHUNK = 32
FORMAT_VERSION = 1


def synthesize(out_dir, size: str = "tiny", seed: int = 0, num_workers: int | None = None) -> Path:
    """Write the synthetic corpus of ``size`` (tiny | small | base) under ``out_dir``.

    Returns the corpus root. Same ``size`` and ``seed`` give byte-identical files,
    whatever ``num_workers`` (default: the CPUs this process may use). A rerun on a
    finished or interrupted corpus verifies finished files and renders the rest.
    """
    from speechssl.data.synth.datasheet import write_datasheet
    from speechssl.data.synth.manifests import write_manifests

    root = Path(out_dir)
    plan = make_plan(size, int(seed))
    state = root / ".state"
    _check_identity(state, size, int(seed))
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, int(num_workers))
    results: dict[int, dict] = {}
    with tqdm(total=len(plan.noise_jobs) + len(plan.jobs), unit="file", desc=f"synth {size}") as bar:
        for phase, jobs in (("noise", plan.noise_jobs), ("speech", plan.jobs)):
            results.update(_run_phase(plan, root, phase, jobs, workers, bar))
    write_manifests(plan, root, results)
    write_datasheet(plan, root, results)
    log.info("synthetic corpus %s (seed %d) written to %s", size, seed, root)
    return root


def _check_identity(state: Path, size: str, seed: int) -> None:
    identity = {"size": size, "seed": seed, "format": FORMAT_VERSION}
    path = state / "corpus.json"
    if path.exists():
        found = json.loads(path.read_text())
        if found != identity:
            raise ConfigError(f"{path.parent.parent}: holds a corpus made with {found}, not {identity}; use another out=")
    state.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity))


def _run_phase(plan: Plan, root: Path, phase: str, jobs: list[Job], workers: int, bar) -> dict[int, dict]:
    chunks = [jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    done, todo = {}, []
    for k, chunk in enumerate(chunks):
        found = _finished(root, phase, k, chunk)
        if found is None:
            todo.append(k)
        else:
            done.update({r["index"]: r for r in found})
            bar.update(len(chunk))
    if todo:
        log.info("%s: %d of %d chunks to render", phase, len(todo), len(chunks))
        for k in _render_in_processes(plan, root, phase, [(k, chunks[k]) for k in todo], workers):
            done.update({r["index"]: r for r in json.loads(_state_path(root, phase, k).read_text())["results"]})
            bar.update(len(chunks[k]))
    return done


def _render_in_processes(plan: Plan, root: Path, phase: str, chunks: list[tuple[int, list[Job]]], workers: int):
    """Render each chunk in a new process, ``workers`` at a time; yield chunk numbers as they finish.

    A process per chunk (not a pool) gives every chunk a fresh eSpeak engine; a forked
    child inherits the plan and the imported modules, so starting one costs milliseconds.
    """
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    pending, running = list(chunks), {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                k, chunk = pending.pop(0)
                process = context.Process(target=_render_chunk, args=(plan, root, phase, k, chunk), daemon=True)
                process.start()
                running[process.sentinel] = (process, k)
            for sentinel in multiprocessing.connection.wait(list(running)):
                process, k = running.pop(sentinel)
                process.join()
                if process.exitcode != 0:
                    raise SynthError(f"{root}: rendering chunk {phase}-{k} failed (exit code {process.exitcode})")
                yield k
    finally:
        for process, _ in running.values():
            process.terminate()


def _state_path(root: Path, phase: str, k: int) -> Path:
    return root / ".state" / f"{phase}-{k:05d}.json"


def _finished(root: Path, phase: str, k: int, chunk: list[Job]) -> list[dict] | None:
    """The chunk's saved results if every file is there with its recorded hash, else None."""
    path = _state_path(root, phase, k)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("ids") != [j.id for j in chunk]:
        return None
    for job, result in zip(chunk, saved["results"]):
        audio = root / job.path
        if not audio.exists() or hashlib.sha256(audio.read_bytes()).hexdigest() != result["sha256"]:
            log.warning("%s: missing or changed, rendering its chunk again", audio)
            return None
    return saved["results"]


def _render_chunk(plan: Plan, root: Path, phase: str, k: int, chunk: list[Job]) -> None:
    """In a child process: render the chunk's files, then record their labels and hashes."""
    render = Renderer(plan, root)
    results = [render(job) for job in chunk]
    path = _state_path(root, phase, k)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"ids": [j.id for j in chunk], "results": results}))
    tmp.replace(path)
