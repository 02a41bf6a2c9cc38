"""The ``speechssl`` command: ``speechssl COMMAND key=value ...`` through Hydra.

Each command has a config ``configs/COMMAND.yaml`` and a function here that
turns the resolved config into typed calls of the library; Hydra and DictConfig
stop at this file. Every registered upstream's config dataclass is a structured
config (``upstream_schema/NAME``), so ``upstream.KEY=VALUE`` is checked at start-up.

A config dataclass may use the field types OmegaConf can hold: ``int``, ``float``,
``bool``, ``str``, an ``Enum``, a nested dataclass, ``List[...]`` and
``Dict[str, ...]`` of those (nested lists included, e.g. a conv spec as
``List[List[int]]``), and ``Optional[...]`` of any of them; not ``Tuple``, not
``Union``. An upstream whose dataclass breaks the rule is refused with a one-line
error naming it and the field, when it is chosen; every other command still runs.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from speechssl.errors import ConfigError, SpeechSSLError

# upstream name -> why its config dataclass cannot be a Hydra schema (see the module doc)
SCHEMA_ERRORS: dict[str, str] = {}

log = logging.getLogger("speechssl")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CACHE_DTYPES = ("float16", "float32")
INITS = ("pretrained", "random")  # benchmark init=: the upstream's weights, or the random-init control


def upstream_from_config(cfg):
    """A loaded upstream from a ``cfg.upstream`` node: ``name``, ``ckpt`` and config overrides.

    Without a checkpoint every key of the node configures the model. With one, the
    config saved in the checkpoint is used, and only keys set on the command line
    (``upstream.KEY=VALUE``) override it: the YAML's defaults must not.
    ``init=random`` (see :func:`init_from_config`) builds that same config untrained,
    its weights drawn from ``init_seed``; the checkpoint's weights are not read.
    """
    from hydra.core.hydra_config import HydraConfig

    from speechssl.registry import load_upstream, random_upstream

    init, seed = init_from_config(cfg)
    name, ckpt, node = upstream_node(cfg)
    if init == "random" and name.startswith("s3prl:"):
        raise ConfigError(f"init=random: upstream '{name}' is s3prl's own model, which has no random-init control here")
    if ckpt is not None:
        explicit = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
        node = {k: v for k, v in node.items() if f"upstream.{k}" in explicit}
    if init == "random":
        return random_upstream(name, seed=seed, ckpt=ckpt, **node)
    model = load_upstream(name, ckpt=ckpt, **node)
    if ckpt is None and next(model.parameters(), None) is not None:
        log.warning("upstream '%s' has no upstream.ckpt: its weights are untrained and unseeded; init=random "
                    "makes a labelled control with weights from init_seed", name)
    return model


def init_from_config(cfg) -> tuple[str, Optional[int]]:
    """``(init, seed)``: ``init=pretrained`` (the default; seed None) or ``init=random`` with ``init_seed``."""
    init = cfg.get("init", "pretrained")
    if init not in INITS:
        raise ConfigError(f"init={init!r}; expected one of {', '.join(INITS)}")
    if init == "pretrained":
        return init, None
    seed = cfg.get("init_seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"init_seed={seed!r}; expected an integer")
    return init, seed


def upstream_node(cfg) -> tuple[str, Optional[str], dict]:
    """``(name, ckpt, config overrides)`` of ``cfg.upstream``; an upstream without a valid schema is refused."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg.upstream, resolve=True)
    name, ckpt = node.pop("name"), node.pop("ckpt", None)
    node.pop("trainable", None)
    if name.startswith("s3prl:"):  # configs/upstream/s3prl.yaml: the expert is in the name, s3prl:EXPERT
        node.pop("expert", None)
    if name in SCHEMA_ERRORS:
        raise ConfigError(SCHEMA_ERRORS[name])
    return name, ckpt, node


def parse_layer(value, names: tuple[str, ...]) -> str | int:
    """``layer=``: one of ``names`` or a hidden-state index (negative counts from the top)."""
    if isinstance(value, int) and not isinstance(value, bool) or value in names:
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"layer={value!r}; expected {' | '.join(names)} | an integer index") from None


def run_extract(cfg) -> int:
    from speechssl.extract import extract

    layer = parse_layer(cfg.layer, ("all", "weighted", "last"))
    if not isinstance(cfg.codes, bool):
        raise ConfigError(f"codes={cfg.codes!r}; expected true or false")
    report = extract(
        upstream_from_config(cfg),
        cfg.input,
        cfg.output,
        layer=layer,
        device=cfg.device,
        batch_seconds=float(cfg.batch_seconds),
        codes=cfg.codes,
        max_seconds=None if cfg.max_seconds is None else float(cfg.max_seconds),
        overwrite=bool(cfg.overwrite),
    )
    log.info("wrote features of %d utterance(s) to %s", len(report.written), cfg.output)
    if report.skipped:
        log.error("skipped %d file(s):", len(report.skipped))
        for _, reason in report.skipped:
            log.error("  %s", reason)
        return 1
    return 0


def dataset_from_config(cfg):
    """The pretraining audio of ``cfg.data``: its ``pretrain`` manifest, else every audio file under ``root``."""
    from speechssl.data.dataset import AudioDataset

    root = Path(cfg.data.root)
    manifest = cfg.data.get("manifests", {}).get("pretrain", {}).get("train")
    if manifest:
        if not (root / manifest).exists():
            raise ConfigError(
                f"{root / manifest}: no such manifest; make the corpus with "
                f"`speechssl synth out={root} size=small` or set data.root=DIR"
            )
        return AudioDataset.from_manifest(root / manifest)
    if not root.is_dir():
        raise ConfigError(f"data.root={root}: no such folder")
    return AudioDataset.from_folder(root)


def run_synth(cfg) -> int:
    from speechssl.data.synth import synthesize

    synthesize(cfg.out, size=cfg.size, seed=int(cfg.seed), num_workers=cfg.num_workers)
    return 0


def run_pretrain(cfg) -> int:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from speechssl.data.dataset import CropConfig
    from speechssl.pretrain import pretrain
    from speechssl.trainer import TrainerConfig

    if cfg.get("pipeline") is not None:
        return run_run(cfg)
    trainer_cfg = TrainerConfig.from_dict(OmegaConf.to_container(cfg.trainer, resolve=True))
    crop = CropConfig(max_seconds=cfg.data.max_seconds, crop=cfg.data.crop, on_error=cfg.data.get("on_error", "raise"))
    crop.check()
    name, _, node = upstream_node(cfg)
    run_dir = HydraConfig.get().runtime.output_dir
    results = pretrain(
        name, dataset_from_config(cfg), trainer_cfg, run_dir, crop=crop, device=cfg.device, overrides=node
    )
    log.info("done: step %s, loss %s; upstream checkpoint %s/last", results["step"], results["train_loss"], run_dir)
    return 0


def run_run(cfg) -> int:
    """``speechssl run pipeline=NAME``: the pipeline's stages (``speechssl.pipeline``), ``jobs`` at once."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    from speechssl.pipeline import run_pipeline

    try:
        pipeline = OmegaConf.to_container(cfg.pipeline, resolve=True)
    except InterpolationResolutionError as e:
        raise ConfigError(f"pipeline {cfg.pipeline.get('name', '?')}: {e.msg.splitlines()[0]} (a pipeline that reads "
                          "another command's keys runs under that command, e.g. speechssl pretrain pipeline=NAME)") from None
    times = run_pipeline(pipeline["name"], pipeline["stages"], HydraConfig.get().runtime.output_dir,
                         jobs=cfg.get("jobs", 1))
    log.info("pipeline %s done: %d stage(s), %.0f s of stage time", pipeline["name"], len(times), sum(times.values()))
    return 0


def task_from_config(cfg):
    """The :class:`downstream.task.Task` ``cfg.task`` names, its options set from the rest of the node."""
    from omegaconf import OmegaConf

    from downstream.task import get_task

    options = OmegaConf.to_container(cfg.task, resolve=True)
    return get_task(options.pop("name"), **options)


def corpus_options(cfg) -> dict:
    """The keyword options of ``cfg.data``'s corpus (``data.options``), for its manifests and its resources."""
    from omegaconf import OmegaConf

    return (OmegaConf.to_container(cfg.data.options, resolve=True) if "options" in cfg.data else None) or {}


def task_rows_from_config(cfg, task) -> dict[str, list[dict]]:
    """``{split: manifest rows}`` of ``task`` (its declared splits) in the corpus ``cfg.data`` names."""
    from speechssl.data.corpora import corpus_manifest

    options = corpus_options(cfg)
    return {split: corpus_manifest(cfg.data.name, cfg.data.root, task.name, split, **options) for split in task.splits}


def task_resources_from_config(cfg, task) -> dict:
    """The corpus resources ``task`` declares (a trial list, query occurrences), read from ``cfg.data``'s corpus."""
    from speechssl.data.corpora import corpus_resource

    options = corpus_options(cfg)
    return {name: corpus_resource(cfg.data.name, cfg.data.root, name, **options) for name in task.resources}


def run_benchmark(cfg) -> int:
    import torch
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from downstream.benchmark import benchmark_grid
    from speechssl.device import check_device
    from speechssl.trainer import TrainerConfig

    trainer_cfg = TrainerConfig.from_dict(OmegaConf.to_container(cfg.trainer, resolve=True))
    layer = parse_layer(cfg.layer, ("weighted", "last"))
    if cfg.cache.dtype not in CACHE_DTYPES:
        raise ConfigError(f"cache.dtype={cfg.cache.dtype!r}; expected one of {', '.join(CACHE_DTYPES)}")
    lrs = [float(cfg.optim.lr)] if cfg.optim.lr is not None else [float(lr) for lr in cfg.optim.grid]
    if cfg.threads is not None and int(cfg.threads) < 1:
        raise ConfigError(f"threads={cfg.threads}; expected at least 1, or null for torch's default")
    init, init_seed = init_from_config(cfg)
    check_device(cfg.device)  # before the upstream runs over the corpus to fill the cache
    task = task_from_config(cfg)
    rows, resources = task_rows_from_config(cfg, task), task_resources_from_config(cfg, task)
    results = benchmark_grid(
        upstream_from_config(cfg),
        task,
        rows,
        trainer_cfg,
        lrs,
        HydraConfig.get().runtime.output_dir,
        resources=resources,
        normalize=bool(cfg.normalize),
        threads=cfg.threads,
        corpus=cfg.data.name,
        cache_dir=cfg.cache.dir,
        cache_dtype=getattr(torch, cfg.cache.dtype),
        layer=layer,
        trainable=bool(cfg.upstream.trainable),
        device=cfg.device,
        init=init,
        init_seed=init_seed,
        source=cfg.featurizer.source,
        info={"ckpt": cfg.upstream.ckpt, "data_root": str(Path(cfg.data.root).resolve()),
              **({"label": str(cfg.label)} if cfg.get("label") is not None else {})},
    )
    metric = results["metric"]
    line = f"{results['upstream']} {results['task']}: test {metric} {results['test'][metric]:.4f} ("
    if metric in results["dev"]:
        line += f"dev {results['dev'][metric]:.4f}, "
    line += f"chance {results['chance']:.4f}"
    if "grid" in results and metric in results["dev"]:
        tried = ", ".join(f"{r['lr']:g}: {r['dev']:.4f}" for r in results["grid"]["runs"])
        line += f"; lr {results['lr']:g} chosen on dev from {tried}"
    elif results.get("lr") is not None:
        line += f"; lr {results['lr']:g}, the last checkpoint (no dev split)"
    print(line + ")")
    return 0


def run_cluster(cfg) -> int:
    import torch

    from speechssl.cluster import KMeansConfig, cluster_manifest
    from speechssl.device import check_device

    kmeans = KMeansConfig(k=cfg.k, seed=cfg.seed, max_frames=cfg.max_frames, batch_size=cfg.batch_size,
                          max_iter=cfg.max_iter, n_init=cfg.n_init, max_no_improvement=cfg.max_no_improvement)
    kmeans.check()
    layer = cfg.layer
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise ConfigError(f"layer={layer!r}; expected a hidden-state index (negative counts from the top) or null")
    if cfg.cache.dtype not in CACHE_DTYPES:
        raise ConfigError(f"cache.dtype={cfg.cache.dtype!r}; expected one of {', '.join(CACHE_DTYPES)}")
    if not Path(cfg.manifest).is_file():
        raise ConfigError(f"manifest={cfg.manifest}: no such manifest")
    check_device(cfg.device)
    summary = cluster_manifest(
        cfg.manifest,
        upstream_from_config(cfg),
        cfg.out,
        layer=layer,
        kmeans=kmeans,
        frame_rate_of=cfg.frame_rate_of,
        column=cfg.column,
        quality=cfg.quality,
        cache_dir=cfg.cache.dir,
        cache_dtype=getattr(torch, cfg.cache.dtype),
        device=cfg.device,
        batch_seconds=float(cfg.batch_seconds),
    )
    q = summary["quality"]
    scores = (f"phone purity {q['phone_purity']:.3f}, cluster purity {q['cluster_purity']:.3f}, PNMI {q['pnmi']:.3f} "
              f"on {summary['scored_frames']} frames" if q else "quality not scored (no phone alignments)")
    print(f"{summary['upstream']} layer {summary['layer']}, K={summary['kmeans']['k']}: {cfg.out}/train.tsv "
          f"column '{cfg.column}'; {scores}")
    return 0


def unknown_upstream_choice(args: list[str]) -> str | None:
    """The one-line error for ``upstream=NAME`` without ``configs/upstream/NAME.yaml``, else None."""
    for arg in args:
        if arg.startswith("upstream="):
            name = arg.split("=", 1)[1]
            known = sorted(p.stem for p in (CONFIG_DIR / "upstream").glob("*.yaml"))
            if name not in known:
                return f"unknown upstream '{name}' (no configs/upstream/{name}.yaml); known: {', '.join(known)}"
    return None


def quote_unlexable(args: list[str]) -> list[str]:
    """Each ``key=value`` whose value Hydra's override grammar cannot lex (a path with
    non-ASCII characters or ``=``) with the value quoted, so it reaches the config as typed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    quoted = []
    for arg in args:
        key, sep, value = arg.partition("=")
        unlexable = not value.isascii() or "=" in value
        if sep and unlexable and not arg.startswith("-") and value[:1] not in ("'", '"'):
            try:
                parser.parse_override(arg)
            except HydraException:
                arg = f"{key}='{_quote_escape(value)}'"
        quoted.append(arg)
    return quoted


def _quote_escape(value: str) -> str:
    """``value`` for a single-quoted Hydra string: a quote, and backslashes before one, escaped."""
    out, backslashes = [], 0
    for ch in value:
        if ch == "\\":
            backslashes += 1
            continue
        if ch == "'":
            out.append("\\" * (2 * backslashes) + "\\'")
        else:
            out.append("\\" * backslashes + ch)
        backslashes = 0
    out.append("\\" * (2 * backslashes))  # trailing backslashes precede the closing quote
    return "".join(out)


def run_report(cfg) -> int:
    from speechssl.report import load_benchmark, results_tables, write_report
    from speechssl.superb import REFERENCE

    bench = load_benchmark(cfg.runs)
    write_report(bench, cfg.out, name=cfg.name, stages=cfg.stages, reference=None if cfg.superb is False else REFERENCE)
    print(results_tables(bench))
    return 0


def run_export(cfg) -> int:
    from speechssl.interop import export_upstream

    out = export_upstream(cfg.ckpt, cfg.format, cfg.out)
    log.info("wrote %s (format %s) from %s", out, cfg.format, cfg.ckpt)
    return 0


# name -> (function, one-line summary); the function returns the exit status.
COMMANDS: dict[str, tuple[Callable, str]] = {
    "synth": (run_synth, "write the offline SUPERB-lite corpus (synthesized speech, labels for every task)"),
    "pretrain": (run_pretrain, "pretrain an upstream with its self-supervised objective (resumes a run folder)"),
    "benchmark": (run_benchmark, "train and score a downstream task on a frozen upstream (SUPERB protocol)"),
    "report": (run_report, "summarize benchmark runs: Markdown table of the best-dev runs, lr sweeps, plots, TSV"),
    "extract": (run_extract, "extract features of audio files with any upstream to safetensors"),
    "export": (run_export, "write a speechssl upstream checkpoint in another toolkit's layout (an HF folder)"),
    "run": (run_run, "run a pipeline of speechssl commands, finished stages skipped (pipeline=demo: make demo)"),
    "cluster": (run_cluster, "k-means frame targets for HuBERT from MFCC or an upstream layer, with phone purity and PNMI"),
}


def _register_schemas() -> None:
    """Structured configs: the trainer's and the crop's dataclasses, and per upstream its
    dataclass plus ``name``, ``ckpt`` and ``trainable``.

    An upstream whose dataclass OmegaConf rejects gets a loose node instead, and its
    reason goes to :data:`SCHEMA_ERRORS`, so that only choosing it fails.
    """
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from downstream.task import list_tasks, task_class
    from speechssl.data.dataset import CropConfig
    from speechssl.registry import get_entry, list_upstreams
    from speechssl.trainer import TrainerConfig

    store = ConfigStore.instance()
    store.store(group="trainer_schema", name="trainer", node=TrainerConfig)
    for name in list_tasks():
        store.store(group="task_schema", name=name, node=task_class(name).Config(name=name))
    store.store(group="data_schema", name="crop", node=CropConfig)
    for name in list_upstreams():
        entry = get_entry(name)
        schema = dataclasses.make_dataclass(
            f"{entry.config_cls.__name__}Node",
            [
                ("name", str, dataclasses.field(default=name)),
                ("ckpt", Optional[str], None),
                ("trainable", bool, False),  # benchmark: fine-tune instead of freezing
            ],
            bases=(entry.config_cls,),
        )
        try:
            OmegaConf.structured(schema)
        except OmegaConfBaseException as e:
            field = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
            kind = next((f.type for f in dataclasses.fields(entry.config_cls) if f.name == field), "its type")
            SCHEMA_ERRORS[name] = (
                f"upstream '{name}': field '{field}' of {entry.config_cls.__name__} has type {kind}, which a Hydra "
                "config cannot hold; use int, float, bool, str, List[...], Dict[str, ...] or Optional[...] "
                "(a conv spec as List[List[int]], not tuples)"
            )
            store.store(group="upstream_schema", name=name, node={"name": name, "ckpt": None, "trainable": False})
            continue
        store.store(group="upstream_schema", name=name, node=schema)
    from speechssl.s3prl_bridge import S3PRLConfig  # upstream=s3prl: s3prl's own experts, through the bridge

    bridge = [("name", str, dataclasses.field(default="s3prl")), ("trainable", bool, False)]
    store.store(group="upstream_schema", name="s3prl", node=dataclasses.make_dataclass("S3PRLNode", bridge, bases=(S3PRLConfig,)))


def init_tag(init: str, seed: Optional[int] = None) -> str:
    """The run-folder suffix of ``init`` (``${init_tag:${init},${init_seed}}`` in a config):
    none for pretrained weights, ``_random_init`` (``_random_init_seed0`` with a seed) for the
    control, so that a control and its pretrained upstream never share a run folder by default."""
    if init == "pretrained":
        return ""
    return f"_{init}_init" + ("" if seed is None else f"_seed{seed}")


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("init_tag", init_tag, replace=True)


def _usage() -> str:
    lines = ["usage: speechssl COMMAND [key=value ...] [--help]", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "speechssl COMMAND --help shows a command's keys, config groups and defaults."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"speechssl: unknown command '{command}'; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2

    if command == "cluster" and unknown_upstream_choice(rest):
        print(f"speechssl cluster: {unknown_upstream_choice(rest)}", file=sys.stderr)
        return 2

    import hydra
    from omegaconf.errors import MissingMandatoryValue

    function, _ = COMMANDS[command]
    status = 0

    def task(cfg) -> None:
        nonlocal status
        try:
            # a -m sweep calls this once per job: one failed job fails the command
            status = max(status, function(cfg))
        except SpeechSSLError as e:
            log.error("%s", e)
            status = max(status, 1)
        except MissingMandatoryValue as e:
            log.error("missing value for '%s': set it as %s=...", e.full_key, e.full_key)
            status = 2
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("%s: the disk is full (%s); free space and run the same command again", e.filename, e.strerror)
            elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and e.filename:
                log.error("%s: %s; choose a path you can write, or change its permissions", e.filename, e.strerror)
            else:
                raise
            status = max(status, 1)

    _register_schemas()
    _register_resolvers()
    if os.environ.get("RANK", "0") != "0":
        # under torchrun only rank 0 writes the run folder's config and log; the others warn on stderr
        rest = [*rest, "hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]",
                "hydra.job_logging.root.level=WARNING"]
    sys.argv = [f"speechssl-{command}", *quote_unlexable(rest)]
    hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name=command)(task)()
    return status


if __name__ == "__main__":
    sys.exit(main())
