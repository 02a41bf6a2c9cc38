"""Write the corpus's task manifests, RTTMs, ASV trials and QbE occurrences.

Layout under the corpus root: ``<task>/<split>.tsv`` with audio paths relative to the
manifest's directory (``../audio/...``), see :mod:`speechssl.data.manifest`. Times
(alignments, occurrences) are in samples at 16 kHz.
"""

from __future__ import annotations

from pathlib import Path

from speechssl.data.manifest import write_manifest
from speechssl.data.synth.plan import Job, Plan

SR = 16000
BASE = ["id", "path", "num_samples", "speaker"]
COLUMNS = {
    "pretrain": BASE + ["text"],
    "asr": BASE + ["text"],
    "pr": BASE + ["phones", "alignment"],
    "ks": BASE + ["label"],
    "sid": BASE,
    "asv": BASE,
    "ic": BASE + ["action", "object", "location", "text"],
    "er": BASE + ["emotion", "text"],
    "sf": BASE + ["intent", "text", "tags"],
    "sd": BASE + ["num_speakers", "rttm"],
    "qbe": BASE + ["text", "term"],
}


def task_rows(plan: Plan, results: dict[int, dict]) -> dict[tuple[str, str], list[dict]]:
    """Manifest rows keyed by (task, split), in plan order."""
    out: dict[tuple[str, str], list[dict]] = {}
    for job in plan.jobs:
        result = results[job.index]
        for task, split in job.rows:
            row = {"id": job.id, "path": f"../{job.path}", "num_samples": result["num_samples"], "speaker": job.speaker}
            row.update(job.labels)
            row["text"] = job.utterance.transcript if job.utterance else ""
            if task == "pr":
                row["phones"] = " ".join(p for p, _, _ in result["phones"])
                row["alignment"] = " ".join(f"{s},{e}" for _, s, e in result["phones"])
            if task == "sd":
                row["rttm"] = f"rttm/{job.id}.rttm"
            row.setdefault("term", "")
            out.setdefault((task, split), []).append(row)
    return out


def rttm_lines(job: Job, result: dict) -> list[str]:
    """NIST RTTM ``SPEAKER`` lines, one per turn, times in seconds."""
    return [
        f"SPEAKER {job.id} 1 {start / SR:.3f} {(end - start) / SR:.3f} <NA> <NA> {who} <NA> <NA>"
        for who, start, end in sorted(result["segments"], key=lambda seg: seg[1])
    ]


def qbe_occurrences(plan: Plan, results: dict[int, dict], split: str) -> list[dict]:
    """Every (query, document) pair where the query's term is spoken in the document."""
    queries = [j for j in plan.jobs if (("qbe", f"{split}_queries") in j.rows)]
    docs = [j for j in plan.jobs if (("qbe", f"{split}_docs") in j.rows)]
    rows = []
    for query in queries:
        for doc in docs:
            for token, start, end in results[doc.index]["words"]:
                if doc.utterance.tokens[token] == query.labels["term"]:
                    rows.append({"query": query.id, "doc": doc.id, "term": query.labels["term"], "start": start, "end": end})
    return rows


def write_manifests(plan: Plan, root: Path, results: dict[int, dict]) -> None:
    for (task, split), rows in task_rows(plan, results).items():
        columns = COLUMNS[task]
        if task == "qbe":
            columns = BASE + (["term"] if split.endswith("queries") else ["text"])
        write_manifest(root / task / f"{split}.tsv", rows, columns)
    for job in plan.jobs:
        if job.kind == "conversation":
            path = root / "sd" / "rttm" / f"{job.id}.rttm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(rttm_lines(job, results[job.index])) + "\n")
    trials = "".join(f"{label}\t{enroll}\t{test}\n" for label, enroll, test in plan.asv_trials)
    (root / "asv" / "trials.tsv").write_text("label\tenroll\ttest\n" + trials)
    for split in ("dev", "test"):
        lines = ["query\tdoc\tterm\tstart\tend"]
        lines += [f"{r['query']}\t{r['doc']}\t{r['term']}\t{r['start']}\t{r['end']}" for r in qbe_occurrences(plan, results, split)]
        (root / "qbe" / f"{split}_occurrences.tsv").write_text("\n".join(lines) + "\n")
    bank = root / "ks" / "_background_noise_.tsv"
    rows = [{"id": j.id, "path": f"../{j.path}", "num_samples": results[j.index]["num_samples"], "noise": j.labels["noise"]}
            for j in plan.noise_jobs]  # fmt: skip
    write_manifest(bank, rows, ["id", "path", "num_samples", "noise"])
