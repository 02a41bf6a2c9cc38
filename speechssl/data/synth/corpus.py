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
import os
from pathlib import Path

from tqdm import tqdm

from speechssl.data.synth.plan import Job, Plan, make_plan
from speechssl.errors import ConfigError

log = logging.getLogger(__name__)

CHUNK = 32
FORMAT_VERSION = 1
_WORKER: dict = {}  # the plan and root of this worker process


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
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with context.Pool(min(workers, len(todo)), maxtasksperchild=1, initializer=_init_worker, initargs=(plan, root)) as pool:
            for k, found in pool.imap_unordered(_render_chunk, [(phase, k, chunks[k]) for k in todo]):
                done.update({r["index"]: r for r in found})
                bar.update(len(chunks[k]))
    return done


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


def _init_worker(plan: Plan, root: Path) -> None:
    _WORKER.update(plan=plan, root=root)


def _render_chunk(task: tuple[str, int, list[Job]]) -> tuple[int, list[dict]]:
    from speechssl.data.synth.render import Renderer

    phase, k, chunk = task
    render = Renderer(_WORKER["plan"], _WORKER["root"])
    results = [render(job) for job in chunk]
    path = _state_path(_WORKER["root"], phase, k)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"ids": [j.id for j in chunk], "results": results}))
    tmp.replace(path)
    return k, results
