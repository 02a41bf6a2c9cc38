"""One pretraining step, ours against the peers' own code: Mockingjay (3 x 768) and APC (3 x 512)
against s3prl, wav2vec 2.0 base against HF's ``Wav2Vec2ForPreTraining``.

    PYTHONPATH=$PWD python benchmarks/pretrain_step.py [--models mockingjay apc wav2vec2] [--steps 5] [--no-write]
    PYTHONPATH=$PWD python benchmarks/pretrain_step.py --models wav2vec2 --device cuda --batch 8 --seconds 15

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

wav2vec 2.0 base (:func:`wav2vec2_steps`): B clips (``--batch``, default 2) of
``--seconds`` (4) of noise-like audio, identical for both; a step is HF's
example script's (``examples/pytorch/speech-pretraining``): ``_compute_mask_indices``
and ``_sample_negative_indices`` (NumPy, on the host), ``Wav2Vec2ForPreTraining``
forward with the Gumbel temperature set, backward, AdamW; ours is
``Wav2Vec2Objective(batch, step=...)``, backward, AdamW. Same sizes and config
(mask 0.65 x 10, 100 distractors, LayerDrop 0.05, dropouts 0.1, 2 x 320 codes);
ours also has fairseq's feature penalty and conv gradient scaling, which HF
lacks. In fp32 and under bf16 autocast (CPU or CUDA), interleaved; on CUDA with
peak memory. A missing peer (transformers, s3prl) is reported, not raised.
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
        print("s3prl: not installed (pip install s3prl==0.4.18 --no-deps, then pandas; or make bench)", file=sys.stderr)
        return None
    clashing = ("upstream", "pretrain", "utility")
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in clashing}
    sys.path.insert(0, str(Path(spec.origin).parent))
    try:
        return {  # fmt: skip
            "TransformerForMaskedAcousticModel": importlib.import_module(
                "pretrain.mockingjay.pretrain_expert"
            ).TransformerForMaskedAcousticModel,
            "generate_masked_acoustic_model_data": importlib.import_module(
                "pretrain.mockingjay.task"
            ).generate_masked_acoustic_model_data,
            "TransformerConfig": importlib.import_module("upstream.mockingjay.model").TransformerConfig,
            "APC": importlib.import_module("upstream.apc.apc").APC,
        }
    except ImportError as error:  # s3prl installed --no-deps without what its pretraining code imports
        print(f"s3prl: not usable ({error}; pip install pandas, or make bench)", file=sys.stderr)
        return None
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


W2V_CONFIG = dict(  # the HF names of our Wav2Vec2Config defaults (fairseq's base recipe)
    mask_time_prob=0.65, mask_time_length=10, mask_time_min_masks=2, num_negatives=100, layerdrop=0.05,
    hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1,
    feat_quantizer_dropout=0.1, contrastive_logits_temperature=0.1, diversity_loss_weight=0.1,
    num_codevectors_per_group=320, num_codevector_groups=2, codevector_dim=256, proj_codevector_dim=256,
    apply_spec_augment=True, mask_feature_prob=0.0,
)  # fmt: skip


def wav2vec2_batch(i: int, batch: int, seconds: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    wavs = 0.1 * torch.randn(batch, int(seconds * 16000), generator=g)
    return wavs.to(device), torch.full((batch,), wavs.shape[1], device=device)


def wav2vec2_steps(batch: int, seconds: float, device: str, precisions=("fp32", "bf16")) -> dict:
    """``{"ours"|"hf": {precision: step(i)}}`` for wav2vec 2.0 base; "hf" missing without transformers."""
    from upstream.wav2vec2 import Wav2Vec2, Wav2Vec2Config, Wav2Vec2Objective

    autocasts = {"fp32": nullcontext, "bf16": lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)}
    autocasts = {p: autocasts[p] for p in precisions}
    torch.manual_seed(0)
    ours = Wav2Vec2Objective(Wav2Vec2(Wav2Vec2Config())).to(device).train()
    our_optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    generator = torch.Generator(device).manual_seed(0)

    def our_step(i, precision):
        wavs, lens = wav2vec2_batch(i, batch, seconds, device)
        with autocasts[precision]():
            loss, _ = ours({"wavs": wavs, "wav_lens": lens}, step=i, generator=generator)
        loss.backward()
        our_optimizer.step()
        our_optimizer.zero_grad(set_to_none=True)

    steps = {"ours": {p: (lambda i, p=p: our_step(i, p)) for p in autocasts}}
    try:
        import transformers
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices
    except ImportError as error:
        print(f"transformers: not installed ({error}; pip install transformers, or make bench)", file=sys.stderr)
        return steps
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    hf = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**W2V_CONFIG)).to(device).train()
    hf_optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-5)

    def hf_step(i, precision):
        wavs, _ = wav2vec2_batch(i, batch, seconds, device)
        frames = int(hf._get_feat_extract_output_lengths(wavs.shape[1]))
        shape = (wavs.shape[0], frames)
        mask = _compute_mask_indices(shape, hf.config.mask_time_prob, hf.config.mask_time_length, min_masks=2)
        negatives = _sample_negative_indices(shape, hf.config.num_negatives, mask)
        hf.set_gumbel_temperature(max(2.0 * 0.999995**i, 0.5))
        with autocasts[precision]():
            out = hf(
                wavs,
                mask_time_indices=torch.tensor(mask, device=device, dtype=torch.long),
                sampled_negative_indices=torch.tensor(negatives, device=device, dtype=torch.long),
            )
        out.loss.backward()
        hf_optimizer.step()
        hf_optimizer.zero_grad(set_to_none=True)

    steps["hf"] = {p: (lambda i, p=p: hf_step(i, p)) for p in autocasts}
    return steps


def time_wav2vec2(steps: dict, n: int, device: str) -> dict:
    """``{(who, precision): (median s/step, peak GiB or None)}``, interleaved step by step."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = {(who, p): [] for who, by_p in steps.items() for p in by_p}
    peaks = {key: 0.0 for key in times}
    for i in range(n + 1):
        for (who, p) in times:
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            steps[who][p](i)
            sync()
            times[(who, p)].append(time.perf_counter() - start)
            if device.startswith("cuda"):
                peaks[(who, p)] = max(peaks[(who, p)], torch.cuda.max_memory_allocated() / 2**30)
    return {key: (statistics.median(t[1:]), peaks[key] if device.startswith("cuda") else None) for key, t in times.items()}


def wav2vec2_table(results: dict, target: float = 1.2) -> str:
    lines = ["| precision | HF s/step | ours s/step | speed-up | target | HF peak GiB | ours peak GiB |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for precision in ("fp32", "bf16"):
        if ("ours", precision) not in results:
            continue
        ours, our_peak = results[("ours", precision)]
        if ("hf", precision) in results:
            hf, hf_peak = results[("hf", precision)]
            ratio = hf / ours
            verdict = "met" if ratio >= target else "NOT met"
            peaks = (f"{hf_peak:.2f}", f"{our_peak:.2f}") if our_peak is not None else ("-", "-")
            lines.append(f"| {precision} | {hf:.2f} | {ours:.2f} | {ratio:.2f}x | >= {target}x: {verdict} | {peaks[0]} | {peaks[1]} |")
        else:
            lines.append(f"| {precision} | not installed | {ours:.2f} | - | >= {target}x | - | - |")
    return "\n".join(lines)


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


def write_results(path: Path, text: str, header: str = "## Pretraining step (issue 6)") -> None:
    """Replace (or append) the section of ``path`` that starts with ``header``."""
    old = path.read_text() if path.exists() else ""
    if header in old:
        before, _, rest = old.partition(header)
        following = rest.find("\n## ")
        after = rest[following + 1 :] if following >= 0 else ""
        old = before.rstrip() + "\n"
        text = text + ("\n\n" + after if after else "")
    path.write_text((old.rstrip() + "\n\n" if old.strip() else "") + text.rstrip() + "\n")


def machine_line() -> str:
    return (
        f"{cpu_model()}, {torch.get_num_threads()} threads ({os.cpu_count()} cores visible), "
        f"torch {torch.__version__}, Python {platform.python_version()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end"
    )


def run_s3prl_models(args) -> None:
    results, peer = {}, {}
    s3prl = import_s3prl()
    ours = our_steps()
    theirs = s3prl_steps(s3prl) if s3prl else {}
    for group in ("mockingjay", "apc"):
        if group not in args.models:
            continue
        steps = {f"s3prl {k}": f for k, f in theirs.items() if k.startswith(group)}
        steps |= {f"ours {k}": f for k, f in ours.items() if k.startswith(group)}
        for name, seconds in time_interleaved(steps, args.steps).items():
            print(f"{name}: {seconds:.3f} s/step", file=sys.stderr)
            who, key = name.split(" ")
            (peer if who == "s3prl" else results)[key] = seconds
    if not {"mockingjay", "apc"} <= set(args.models):
        return  # the section's table needs both
    results["tiny_final_loss"] = {p: tiny_run(p) for p in ("fp32", "bf16")}
    peer = peer or None
    text = (
        "## Pretraining step (issue 6)\n\n"
        "`python benchmarks/pretrain_step.py`: one training step (masking or target shift, forward, "
        f"loss, backward, AdamW) on identical batches of B={B}, {MIN_FRAMES} to {MAX_FRAMES} frames of "
        f"{DIM}-d features; median of {args.steps} steps after a warm-up. s3prl 0.4.18's own code "
        "(`generate_masked_acoustic_model_data` + `TransformerForMaskedAcousticModel`; `upstream/apc/apc.py` "
        "`APC` with packing) against ours (`MockingjayObjective.loss_on_features`, "
        "`APCObjective.loss_on_features`), same sizes, torch.optim.AdamW on both sides.\n\n"
        f"Machine: {machine_line()}. The machine is shared: steps of s3prl and ours are interleaved so "
        "that other processes' load falls on both alike, but single figures vary by 10-30% from run to run.\n\n"
        + table(results, peer, args.steps)
        + "\n"
    )
    print(text)
    if not args.no_write:
        write_results(ROOT / "benchmarks" / "RESULTS.md", text)


def run_wav2vec2(args) -> None:
    steps = wav2vec2_steps(args.batch, args.seconds, args.device, args.precisions)
    results = time_wav2vec2(steps, args.steps, args.device)
    for (who, precision), (seconds, _) in results.items():
        print(f"wav2vec2 {who} {precision}: {seconds:.3f} s/step", file=sys.stderr)
    gpu = args.device.startswith("cuda")
    device = f"{torch.cuda.get_device_name(args.device)}; " if gpu else ""
    header = f"## wav2vec 2.0 pretraining step, {'GPU' if gpu else 'CPU'} {' and '.join(args.precisions)} (issue 19)"
    text = (
        f"{header}\n\n"
        f"`python benchmarks/pretrain_step.py --models wav2vec2 --batch {args.batch} --seconds {args.seconds:g} "
        f"--precisions {' '.join(args.precisions)} --steps {args.steps}"
        f"{' --device ' + args.device if args.device != 'cpu' else ''}`: one wav2vec 2.0 base step "
        f"(masking, distractors, forward, loss, backward, AdamW) on B={args.batch} clips of {args.seconds:g} s, "
        f"identical for both; HF transformers' `Wav2Vec2ForPreTraining` as its pretraining example runs it "
        f"(NumPy `_compute_mask_indices` and `_sample_negative_indices`) against our `Wav2Vec2Objective`; "
        f"median of {args.steps} interleaved steps after a warm-up.\n\n"
        f"Machine: {device}{machine_line()}.\n\n" + wav2vec2_table(results) + "\n"
    )
    print(text)
    if not args.no_write:
        write_results(ROOT / "benchmarks" / "RESULTS.md", text, header)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mockingjay", "apc", "wav2vec2"],
                        choices=["mockingjay", "apc", "wav2vec2"], help="which comparisons to run")  # fmt: skip
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--batch", type=int, default=2, help="wav2vec 2.0: clips per batch")
    parser.add_argument("--seconds", type=float, default=4.0, help="wav2vec 2.0: seconds per clip")
    parser.add_argument("--device", default="cpu", help="wav2vec 2.0: cpu or cuda")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="wav2vec 2.0: precisions to time (bf16 autocast is emulated, 20x slower, on CPUs "
                             "without bf16 units)")  # fmt: skip
    parser.add_argument("--no-write", action="store_true", help="print only; do not update benchmarks/RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if {"mockingjay", "apc"} & set(args.models):
        run_s3prl_models(args)
    if "wav2vec2" in args.models:
        run_wav2vec2(args)


if __name__ == "__main__":
    main()
