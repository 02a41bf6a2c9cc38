"""Small test signals and models shared by the upstream tests (imported by the test files)."""

import math

import torch

from speechssl.registry import build_upstream, get_entry


def tiny(name, **overrides):
    """Upstream ``name`` at its registered test size, seeded."""
    torch.manual_seed(0)
    return build_upstream(name, **{**get_entry(name).tiny, **overrides})


def tones(B=4, seconds=1.0, seed=0):
    """Harmonic tones with random f0 and a slow amplitude envelope: (B, S)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    f0 = 100 + 200 * torch.rand(B, 1, generator=g)
    wav = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t + 6 * torch.rand(B, 1, generator=g))
    return 0.1 * wav * envelope


def energy_labels(wav, upstream, num_labels):
    """Frame labels a masked-prediction objective can learn: each frame's log energy in ``num_labels`` bins.

    One label per frame of ``upstream``'s rule: frame ``t`` looks at samples
    ``[t * hop, t * hop + min_samples)``; the bins are fixed (-12 .. 0 in natural log).
    """
    hop = upstream.downsample_rate
    T = int(upstream.num_frames(torch.tensor([len(wav)]))[0])
    starts = torch.arange(T) * hop
    window = torch.arange(upstream.min_samples)
    frames = wav[(starts[:, None] + window).clamp(max=len(wav) - 1)]
    energy = torch.log(frames.pow(2).mean(-1) + 1e-6)
    return torch.bucketize(energy, torch.linspace(-12, 0, num_labels - 1))


def labelled_manifest(manifest, upstream, column, num_labels, out):
    """A copy of ``manifest`` at ``out`` with ``column``: :func:`energy_labels` of each utterance."""
    from speechssl.data.manifest import read_manifest, write_manifest
    from speechssl.data.audio import load_audio

    rows = read_manifest(manifest)
    for row in rows:
        row[column] = " ".join(map(str, energy_labels(load_audio(row["path"]), upstream, num_labels).tolist()))
    write_manifest(out, rows, list(rows[0]))
    return out


def perturbed(module, seed):
    """``module`` in eval mode with every parameter moved off its initial value (LayerNorm scales
    are not all ones), so that weights loaded from another layout are really compared."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def padded_tones(lengths, seconds=0.25, noise=0.0):
    """``(B, S)`` louder tones zeroed past each of ``lengths`` (B,), and the lengths: a padded batch.

    ``noise``: the std of white noise added (seeded), so that no mel band is empty: CMVN of a
    band that is constant (its log floor) divides rounding noise by a standard deviation of 0."""
    wavs = tones(len(lengths), seconds) * 3
    wavs = wavs + noise * torch.randn(wavs.shape, generator=torch.Generator().manual_seed(0))
    return wavs.masked_fill(torch.arange(wavs.shape[1]) >= lengths[:, None], 0.0), lengths
