"""One pretraining step, ours against s3prl's own code: Mockingjay (3 x 768) and APC (3 x 512).

    PYTHONPATH=$PWD python benchmarks/pretrain_step.py [--steps 5] [--no-write]

A step is what a training loop does per batch: masking (or shifting targets),
forward, loss, backward and an AdamW update. Both sides get identical batches
(B = 8, 300 to 500 frames of 80-d features, zero padding) and the same model
sizes; s3prl's step is its ``generate_masked_acoustic_model_data`` +
``TransformerForMaskedAcousticModel`` (``pretrain/mockingjay``) and its ``APC``
(``upstream/apc/apc.py``) fed ``x[:, :-n]`` and scored against ``x[:, n:]`` as
``pretrain/apc/pretrain_expert.py`` does. s3prl's modules import ``upstream.*``
and ``pretrain.*`` from its package folder, which clashes with our ``upstream``
package: :func:`import_s3prl` imports them with ours set aside, so both run in
one process and their steps are interleaved (load from other processes falls on
both alike). s3prl is optional: without it, only our figures are printed.

Ours is also timed under CPU bf16 autocast (Mockingjay), and a tiny Mockingjay
is trained for a few steps in fp32 and bf16 to compare the final losses.
Medians over ``--steps`` timed steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
B, MIN_FRAMES, MAX_FRAMES, DIM = 8, 300, 500, 80
N_FUTURE = 5


def make_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T, 80)`` fbank-like features (unit Gaussian, zero padding) and ``(B,)`` frames."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(MIN_FRAMES, MAX_FRAMES + 1, (B,), generator=g)
    x = torch.randn(B, int(lengths.max()), DIM, generator=g)
    x = x * (torch.arange(x.shape[1])[None, :, None] < lengths[:, None, None])
    return x, lengths


def s3prl_mockingjay_config() -> tuple[dict, dict]:
    transformer = dict(
        hidden_size=768, num_hidden_layers=3, num_attention_heads=12, hidden_act="gelu", intermediate_size=3072,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.02, layer_norm_eps=1e-12,
        share_layer=False, pre_layer_norm=False,
    )  # fmt: skip
    task = dict(
        position_encoding_size=768, mask_proportion=0.15, mask_consecutive_min=7, mask_consecutive_max=7,
        mask_allow_overlap=True, mask_bucket_ratio=1.5, mask_frequency=0, noise_proportion=0.0,
    )  # fmt: skip
    return transformer, task


# -- the step functions ------------------------------------------------------------------------


def import_s3prl() -> dict | None:
    """s3prl's pretraining classes, or None when it is not installed.

    Its modules import ``upstream.*`` and ``pretrain.*`` with its package folder on
    ``sys.path``; our own ``upstream`` package is set aside meanwhile and put back,
    so both live in one process and their steps can be interleaved.
    """
    spec = importlib.util.find_spec("s3prl")
    if spec is None:
        return None
    clashing = ("upstream", "pretrain", "utility")
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in clashing}
    sys.path.insert(0, str(Path(spec.origin).parent))
    try:
        return {
            "TransformerForMaskedAcousticModel": importlib.import_module(
                "pretrain.mockingjay.pretrain_expert"
            ).TransformerForMaskedAcousticModel,
            "generate_masked_acoustic_model_data": importlib.import_module(
                "pretrain.mockingjay.task"
            ).generate_masked_acoustic_model_data,
            "TransformerConfig": importlib.import_module("upstream.mockingjay.model").TransformerConfig,
            "APC": importlib.import_module("upstream.apc.apc").APC,
        }
    finally:
        sys.path.pop(0)
        for k in [k for k in sys.modules if k.split(".")[0] in clashing]:
            del sys.modules[k]
        sys.modules.update(ours)


def s3prl_steps(s3prl: dict) -> dict:
    """``{config: step(i)}`` of s3prl's own code."""
    transformer, task = s3prl_mockingjay_config()
    config = s3prl["TransformerConfig"](transformer)
    config.loss = "L1"
    torch.manual_seed(0)
    model = s3prl["TransformerForMaskedAcousticModel"](config, DIM, output_dim=None).train()
    mj_optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def mockingjay_step(i):
        x, _ = make_batch(i)
        data = s3prl["generate_masked_acoustic_model_data"]((x,), task)
        spec_masked, pos_enc, mask_label, attn_mask, spec_target = data
        pos_enc = pos_enc.expand(spec_masked.size(0), *pos_enc.size())
        loss, _ = model(spec_masked, pos_enc, mask_label, attn_mask, spec_target)
        loss.backward()
        mj_optimizer.step()
        mj_optimizer.zero_grad()

    apc = s3prl["APC"](DIM, hidden_size=512, num_layers=3, dropout=0.1, residual=True).train()
    apc_optimizer = torch.optim.AdamW(apc.parameters(), lr=1e-4)
    l1 = torch.nn.L1Loss()

    def apc_step(i):
        x, lengths = make_batch(i)
        predicted, _ = apc(x[:, :-N_FUTURE], lengths - N_FUTURE, testing=False)
        loss = l1(predicted, x[:, N_FUTURE:])
        loss.backward()
        apc_optimizer.step()
        apc_optimizer.zero_grad()

    return {"mockingjay_fp32": mockingjay_step, "apc_fp32": apc_step}


def our_steps() -> dict:
    """``{config: step(i)}`` of ours."""
    from upstream.apc import APC, APCConfig, APCObjective
    from upstream.mockingjay import Mockingjay, MockingjayConfig, MockingjayObjective

    torch.manual_seed(0)
    mockingjay = MockingjayObjective(Mockingjay(MockingjayConfig())).train()
    mj_optimizer = torch.optim.AdamW(mockingjay.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def mockingjay_step(i, autocast=nullcontext):
        x, lengths = make_batch(i)
        with autocast():
            loss, _ = mockingjay.loss_on_features(x, lengths, generator)
        loss.backward()
        mj_optimizer.step()
        mj_optimizer.zero_grad(set_to_none=True)

    apc = APCObjective(APC(APCConfig())).train()
    apc_optimizer = torch.optim.AdamW(apc.parameters(), lr=1e-4)

    def apc_step(i):
        x, lengths = make_batch(i)
        loss, _ = apc.loss_on_features(x, lengths)
        loss.backward()
        apc_optimizer.step()
        apc_optimizer.zero_grad(set_to_none=True)

    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    return {
        "mockingjay_fp32": mockingjay_step,
        "mockingjay_bf16": lambda i: mockingjay_step(i, bf16),
        "apc_fp32": apc_step,
    }


def time_interleaved(steps_by_name: dict, steps: int) -> dict:
    """Median seconds per step of each function, run in turn step by step (one warm-up each).

    Interleaving spreads any load from other processes over all of them alike.
    """
    times = {name: [] for name in steps_by_name}
    for i in range(steps + 1):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            step(i)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def tiny_run(precision: str, steps: int = 60) -> float:
    """Final loss (mean of the last 5 steps) of a tiny Mockingjay trained on one fixed batch."""
    from speechssl.registry import build_upstream, get_entry
    from upstream.mockingjay import MockingjayObjective

    torch.manual_seed(0)
    objective = MockingjayObjective(build_upstream("mockingjay", **get_entry("mockingjay").tiny)).train()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=2e-3)
    x, lengths = make_batch(1234)
    x = torch.cumsum(x, dim=1) / 10 * (x != 0)  # smooth along time, so masked frames are predictable
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    losses = []
    for _ in range(steps):
        with autocast:
            loss, _ = objective.loss_on_features(x, lengths, torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return float(torch.stack(losses[-5:]).mean())


# -- report -----------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name, and which bf16 matrix units it has (they decide the bf16 speed-up)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(bf16) if bf16 else 'no bf16 units'})"


def table(ours: dict, peer: dict | None, steps: int) -> str:
    rows = [
        ("Mockingjay 3x768", "fp32", "mockingjay_fp32", "mockingjay_fp32", 1.05),
        ("Mockingjay 3x768", "bf16 autocast (ours)", "mockingjay_bf16", "mockingjay_fp32", 1.8),
        ("APC 3x512 GRU", "fp32", "apc_fp32", "apc_fp32", 1.5),
    ]
    lines = [
        "| model | precision | s3prl s/step | ours s/step | speed-up | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, precision, key, peer_key, target in rows:
        if peer:
            ratio = peer[peer_key] / ours[key]
            verdict = "met" if ratio >= target else "NOT met"
            lines.append(
                f"| {name} | {precision} | {peer[peer_key]:.2f} | {ours[key]:.2f} | {ratio:.2f}x | >= {target}x: {verdict} |"
            )
        else:
            lines.append(f"| {name} | {precision} | not installed | {ours[key]:.2f} | - | >= {target}x |")
    tiny = ours["tiny_final_loss"]
    gap = abs(tiny["bf16"] - tiny["fp32"]) / tiny["fp32"]
    lines += [
        "",
        f"Tiny Mockingjay, 60 AdamW steps on one fixed batch: final loss fp32 {tiny['fp32']:.4f}, "
        f"bf16 {tiny['bf16']:.4f} ({100 * gap:.1f}% apart; target within 5%: {'met' if gap <= 0.05 else 'NOT met'}).",
    ]
    return "\n".join(lines)


def write_results(path: Path, text: str) -> None:
    """Replace (or append) the "## Pretraining step (issue 6)" section of ``path``."""
    header = "## Pretraining step (issue 6)"
    old = path.read_text() if path.exists() else ""
    if header in old:
        before, _, rest = old.partition(header)
        following = rest.find("\n## ")
        after = rest[following + 1 :] if following >= 0 else ""
        old = before.rstrip() + "\n"
        text = text + ("\n\n" + after if after else "")
    path.write_text((old.rstrip() + "\n\n" if old.strip() else "") + text.rstrip() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update benchmarks/RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    results, peer = {}, {}

    s3prl = import_s3prl()
    if s3prl is None:
        print("s3prl: not installed (pip install s3prl==0.4.18 --no-deps; pandas matplotlib)", file=sys.stderr)
    ours = our_steps()
    theirs = s3prl_steps(s3prl) if s3prl else {}
    for group in ("mockingjay", "apc"):
        steps = {f"s3prl {k}": f for k, f in theirs.items() if k.startswith(group)}
        steps |= {f"ours {k}": f for k, f in ours.items() if k.startswith(group)}
        for name, seconds in time_interleaved(steps, args.steps).items():
            print(f"{name}: {seconds:.3f} s/step", file=sys.stderr)
            who, key = name.split(" ")
            (peer if who == "s3prl" else results)[key] = seconds
    results["tiny_final_loss"] = {p: tiny_run(p) for p in ("fp32", "bf16")}
    peer = peer or None

    machine = (
        f"{cpu_model()}, {torch.get_num_threads()} threads ({os.cpu_count()} cores visible), "
        f"torch {torch.__version__}, Python {platform.python_version()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    text = (
        "## Pretraining step (issue 6)\n\n"
        "`python benchmarks/pretrain_step.py`: one training step (masking or target shift, forward, "
        f"loss, backward, AdamW) on identical batches of B={B}, {MIN_FRAMES} to {MAX_FRAMES} frames of "
        f"{DIM}-d features; median of {args.steps} steps after a warm-up. s3prl 0.4.18's own code "
        "(`generate_masked_acoustic_model_data` + `TransformerForMaskedAcousticModel`; `upstream/apc/apc.py` "
        "`APC` with packing) against ours (`MockingjayObjective.loss_on_features`, "
        "`APCObjective.loss_on_features`), same sizes, torch.optim.AdamW on both sides.\n\n"
        f"Machine: {machine}. The machine is shared: steps of s3prl and ours are interleaved so "
        "that other processes' load falls on both alike, but single figures vary by 10-30% from run to run.\n\n"
        + table(results, peer, args.steps)
        + "\n"
    )
    print(text)
    if not args.no_write:
        write_results(ROOT / "benchmarks" / "RESULTS.md", text)


if __name__ == "__main__":
    main()
