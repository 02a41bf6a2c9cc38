"""DeLoRes: redundancy reduction between two augmented views of a log-mel crop.

DeLoRes (Ghosh et al., 2022, arXiv 2203.13628, "DeLoRes: Decorrelating latent
spaces for low-resource audio representation learning") trains the BYOL-A
audio encoder (Niizumi et al., 2021, "BYOL for Audio") without a target
network: two augmented views of a 0.95 s log-mel crop go through the same
encoder and projector, and the loss decorrelates the two batches of
projections. DeLoRes-S uses the Barlow Twins loss (Zbontar et al., 2021: the
cross-correlation of the batch-standardised projections pushed to the
identity); DeLoRes-M the VICReg loss (Bardes et al., 2022: invariance,
variance and covariance terms). ``loss="barlow"`` or ``loss="vicreg"``.

Front-end (the authors' ``MelSpectrogramLibrosa``; BYOL-A's ``config.yaml``):
64 log-mel bins of 60-7800 Hz, ``n_fft = win_length = 1024``, hop 160 (10 ms),
centred frames, Slaney mel scale and norm as librosa's ``filters.mel``
(:func:`speechssl.features.log_mel`, whose frames obey ``frames_centered``).

Encoder (BYOL-A's ``AudioNTT2020``): ``num_blocks`` (3) blocks of 3x3 conv (64
channels, padding 1), batch norm, ReLU, 2x2 max-pool over (frequency, time);
each remaining frame's channels x frequency (64 x 8 = 512) are flattened into
``Linear(512, 2048)``, ReLU, dropout 0.3, ``Linear(2048, 2048)``, ReLU. The
utterance embedding is the temporal max plus the temporal mean of that output
(BYOL-A and the authors add the two), 2048-d.

Objective (:class:`DeLoResObjective`): one random 0.95 s window of each
utterance (15,200 samples, 96 frames), two views of it by BYOL-A's mixup
(with other utterances of the batch) and random resize crop, the encoder's
embedding of each view, a projector ``2048 -> 2048 (BN, ReLU) -> 2048`` and the
loss between the two batches of projections.

Choices the paper leaves open, and where we follow which code:

- log-mel: the authors' code (librosa's Slaney filters, ``log(mel + eps)``);
  our floor is ``1e-6`` (:func:`speechssl.features.log_mel`), theirs float eps.
  BYOL-A computes an HTK-scale mel without filter norm;
- normalisation: BYOL-A standardises the log-mel with one mean and standard
  deviation of the training set (its ``RunningNorm``/``PrecomputedNorm``) and again
  each augmented batch; we standardise each utterance by its own mean and standard
  deviation over its valid frames and bins (``normalize=True``), which needs no
  statistics pass and keeps an utterance's features independent of its batch;
- the crop: one window per utterance and two augmentations of it, as BYOL-A
  (the DeLoRes code draws two windows of the waveform). A shorter utterance is
  zero-padded in the middle to 0.95 s, as both codes do, and the padding is
  audio to the front-end (a silent stretch);
- mixup: BYOL-A mixes a view with a random earlier log-mel from a FIFO memory of
  2,048; we mix it with the crop of another utterance of the same batch (never
  itself when the batch holds two or more), with BYOL-A's ``log-mixup-exp``:
  ``log((1 - a) exp(x) + a exp(z) + eps)``, ``a ~ U(0, mixup_ratio)``, ratio 0.4;
- random resize crop: BYOL-A's (virtual canvas 1.0 x 1.5 of the input, the input
  centred in it, crop size U(0.6, 1.5) times the input's in frequency and time,
  clipped to the canvas, bicubic resize back with ``align_corners``), drawn per
  view and sampled in one ``grid_sample`` on the canvas: bicubic taps at a crop's
  edge read the neighbouring canvas pixels where BYOL-A's ``F.interpolate`` of the
  cut-out crop replicates the edge;
- projector: the authors' DeLoRes-S code with ``final_units=2048``: dropout 0.5 on
  the embedding, ``Linear(bias=False)``, batch norm, ReLU, ``Linear(bias=False)``
  (``projector_sizes=[2048, 2048]``; Barlow Twins itself uses three 8192 layers);
- Barlow Twins: ``lambda = 0.0051`` (the authors' ``--lambd`` default, as Barlow
  Twins), the cross-correlation divided by the batch size, each projection
  standardised over the batch as ``BatchNorm1d(affine=False)`` in training does
  (biased variance, eps 1e-5);
- VICReg: the official code's terms (invariance MSE; ``relu(1 - sqrt(var + 1e-4))``
  averaged over dimensions and the two branches; squared off-diagonal covariances
  divided by ``d``, summed over branches), weights 25, 25, 1. A batch of one
  utterance gives a finite loss (its variance is taken as 0) that teaches nothing;
- hidden states: the encoder keeps time, so frame-level states exist, but the
  blocks halve the frame rate in turn. Every hidden state is given at the
  deepest block's rate (``downsample_rate = 160 * 2**num_blocks``, 80 ms) so that
  all share ``num_frames`` and the Featurizer can sum them: index 0 the last conv
  block's output flattened over channels x frequency (512-d, the FC layers'
  input), then the output of each FC layer after its ReLU (2048-d); the last is
  what the embedding pools. Padding never reaches a valid frame: padded frames
  are zeroed before every conv (the zeros an utterance alone is padded with), a
  2x2 pool of valid frames reads valid frames only (pooling floors, as alone),
  and batch norm uses its running statistics at extraction (eval mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from speechssl import features
from speechssl.frames import frames_centered
from speechssl.interface import Features, Upstream, lengths_to_mask, zero_padding
from speechssl.objective import Objective
from speechssl.registry import register

HOP = 160  # 10 ms log-mel frames
LOSSES = ("barlow", "vicreg")


@dataclass
class DeLoResConfig:
    """DeLoRes-S as the paper trains it (BYOL-A's encoder and front-end; the authors' code)."""

    # front-end: log-mel of the waveform (the authors' MelSpectrogramLibrosa)
    n_mels: int = 64
    n_fft: int = 1024  # also the window length
    f_min: float = 60.0
    f_max: float = 7800.0
    normalize: bool = True  # standardise each utterance's log-mel over its valid frames and bins
    # encoder: BYOL-A's AudioNTT2020
    num_blocks: int = 3  # 3x3 conv, batch norm, ReLU, 2x2 max-pool
    conv_channels: int = 64
    embedding_dim: int = 2048  # the FC layers and the pooled embedding (BYOL-A's feature_d)
    fc_dropout: float = 0.3
    # objective (DeLoResObjective)
    loss: str = "barlow"  # "barlow" (DeLoRes-S) or "vicreg" (DeLoRes-M)
    projector_sizes: List[int] = field(default_factory=lambda: [2048, 2048])  # hidden layers..., output
    projector_dropout: float = 0.5  # on the embedding, before the projector (the authors' code)
    barlow_lambda: float = 0.0051  # weight of the off-diagonal terms
    vicreg_weights: List[float] = field(default_factory=lambda: [25.0, 25.0, 1.0])  # invariance, variance, covariance
    crop_seconds: float = 0.95  # BYOL-A's unit_sec
    mixup_ratio: float = 0.4  # largest share of the other utterance
    virtual_crop_scale: List[float] = field(default_factory=lambda: [1.0, 1.5])  # canvas (frequency, time)
    freq_scale: List[float] = field(default_factory=lambda: [0.6, 1.5])
    time_scale: List[float] = field(default_factory=lambda: [0.6, 1.5])


class ConvBlock(nn.Module):
    """3x3 ``Conv2d`` -> ``BatchNorm2d`` -> ReLU -> 2x2 max-pool on (B, C, F, T), padding kept at zero."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C, F, T) with zero padding past ``lengths`` -> (B, C', F // 2, T // 2), ``lengths // 2``."""
        x = F.max_pool2d(F.relu(self.norm(self.conv(x))), 2)
        lengths = torch.div(lengths, 2, rounding_mode="floor")
        # The pooled frame that mixes the last valid frame with padding is padding too.
        return x * lengths_to_mask(lengths, x.shape[-1])[:, None, None, :].to(x.dtype), lengths


class DeLoRes(Upstream):
    """BYOL-A's convolutional encoder on log-mel frames (DeLoRes-S / DeLoRes-M).

    Hidden states (``3``), each ``(B, T, D)`` at 80 ms frames (``num_frames``):
    index 0 the last conv block's output flattened over channels x frequency
    (``conv_channels * (n_mels // 8)``, 512), then the output of each of the two
    FC layers after its ReLU (``embedding_dim``, 2048). Padding frames are zero.
    ``extra["embedding"]`` ``(B, embedding_dim)``: the utterance embedding, the
    max plus the mean over each utterance's valid frames of the top state (what
    the pretraining loss reads and what the paper evaluates).

    Frames: ``T0 = S // 160 + 1`` centred log-mel frames, halved (floor) by each
    block: ``T = T0 // 2**num_blocks``; the shortest input with a frame has
    ``(2**num_blocks - 1) * 160`` samples (1,120).
    """

    downsample_rate = HOP * 2**3  # 1280
    min_samples = (2**3 - 1) * HOP  # 1120

    def __init__(self, config: DeLoResConfig) -> None:
        super().__init__(config)
        _check_config(config)
        scale = 2**config.num_blocks
        self.downsample_rate = HOP * scale
        self.min_samples = (scale - 1) * HOP
        C = config.conv_channels
        self.blocks = nn.ModuleList(ConvBlock(1 if i == 0 else C, C) for i in range(config.num_blocks))
        freq = config.n_mels
        for _ in range(config.num_blocks):
            freq //= 2
        self.conv_dim = C * freq
        D = config.embedding_dim
        self.fc1 = nn.Linear(self.conv_dim, D)
        self.dropout = nn.Dropout(config.fc_dropout)
        self.fc2 = nn.Linear(D, D)

    @property
    def extra_sizes(self) -> dict[str, int]:
        return {"embedding": self.config.embedding_dim}  # stored by the feature cache; featurizer.source=embedding

    @property
    def hidden_sizes(self) -> list[int]:
        return [self.conv_dim, self.config.embedding_dim, self.config.embedding_dim]

    def num_frames(self, wav_lens):
        scale = 2**self.config.num_blocks
        frames = frames_centered(wav_lens, HOP)
        if isinstance(frames, torch.Tensor):
            return torch.div(frames, scale, rounding_mode="floor")
        return frames // scale

    def input_frames(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked ``(B, S)`` waveforms -> ``(B, T0, n_mels)`` (normalised) log-mel at 10 ms, ``(B,)`` frames."""
        c = self.config
        with torch.no_grad():
            x, lengths = features.log_mel(
                wavs, wav_lens, c.n_mels, n_fft=c.n_fft, hop_length=HOP, f_min=c.f_min, f_max=c.f_max
            )
            if c.normalize:
                x = standardise_utterances(x, lengths)
        return x, lengths

    def encoder(self, x: torch.Tensor, lengths: torch.Tensor) -> Features:
        """Log-mel ``(B, T0, n_mels)`` with zero padding, ``(B,)`` frames -> :class:`Features` at ``T0 // 2**num_blocks``."""
        if x.dim() != 3 or x.shape[-1] != self.config.n_mels:
            raise ValueError(f"delores: log-mel must be (batch, frame, {self.config.n_mels}), got shape {tuple(x.shape)}")
        h = x.transpose(1, 2)[:, None]  # (B, 1, F, T0)
        for block in self.blocks:
            h, lengths = block(h, lengths)  # (B, C, F_l, T_l)
        B, C, Fq, T = h.shape
        h = h.permute(0, 3, 2, 1).reshape(B, T, Fq * C)  # (B, T, F_l * C): BYOL-A's (time, mel, ch) order
        h1 = self.dropout(F.relu(self.fc1(h)))  # (B, T, D)
        h2 = F.relu(self.fc2(h1))
        states = zero_padding([h, h1, h2], lengths)
        return Features(states, lengths, {"embedding": pool_embedding(states[-1], lengths)})


def standardise_utterances(x: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(B, T, D)`` minus each utterance's mean, over its standard deviation (valid frames and bins); padding zero."""
    mask = lengths_to_mask(lengths, x.shape[1])[..., None].to(x.dtype)  # (B, T, 1)
    count = (lengths.clamp(min=1) * x.shape[-1]).to(x.dtype)[:, None, None]
    mean = (x * mask).sum(dim=(1, 2), keepdim=True) / count
    var = ((x - mean).pow(2) * mask).sum(dim=(1, 2), keepdim=True) / count
    return (x - mean) / torch.sqrt(var + eps) * mask


def pool_embedding(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Max plus mean over each utterance's valid frames: ``(B, T, D)`` -> ``(B, D)`` (BYOL-A's pooling)."""
    valid = lengths_to_mask(lengths, h.shape[1])[..., None]  # (B, T, 1)
    peak = h.masked_fill(~valid, float("-inf")).amax(dim=1)
    mean = (h * valid.to(h.dtype)).sum(dim=1) / lengths.clamp(min=1)[:, None].to(h.dtype)
    return peak + mean


# ---------------------------------------------------------------- augmentations


def random_windows(
    wavs: torch.Tensor, wav_lens: torch.Tensor, samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One random window of ``samples`` of each utterance: ``(B, S)`` -> ``(B, samples)``.

    The window's start is uniform over the positions that keep it inside the
    utterance; an utterance shorter than ``samples`` is centred in zeros (as
    BYOL-A and the DeLoRes code pad it).
    """
    B = wavs.shape[0]
    room = (wav_lens - samples).clamp(min=0)  # (B,)
    start = (torch.rand(B, generator=generator, device=wavs.device) * (room + 1)).long().clamp(max=room)
    start = start - (samples - wav_lens).clamp(min=0) // 2  # negative: left zero padding of a short one
    index = start[:, None] + torch.arange(samples, device=wavs.device)  # (B, samples)
    inside = (index >= 0) & (index < wav_lens[:, None])
    picked = wavs.gather(1, index.clamp(0, wavs.shape[1] - 1))
    return picked * inside.to(wavs.dtype)


def log_mixup(
    x: torch.Tensor, ratio: float, generator: torch.Generator | None = None, copies: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BYOL-A's log-mixup-exp with another utterance of the batch: ``log((1 - a) e^x + a e^z + eps)``.

    ``x`` (N, T, F) log-mel holds ``copies`` stacked copies of a batch of ``U = N // copies``
    utterances (row ``n`` is utterance ``n % U``). Row ``n`` is mixed with utterance
    ``partner[n]``, uniform over the other ``U - 1`` (itself when ``U = 1``, which leaves
    it unchanged), with ``a[n] ~ U(0, ratio)``. Returns the mixed ``(N, T, F)``, ``a`` (N,)
    and ``partner`` (N,).
    """
    N = x.shape[0]
    U = N // copies
    a = ratio * torch.rand(N, generator=generator, device=x.device, dtype=x.dtype)
    shift = 1 + (torch.rand(N, generator=generator, device=x.device) * (U - 1)).long().clamp(max=max(U - 2, 0))
    partner = (torch.arange(N, device=x.device) + shift) % U
    w = a[:, None, None]
    mixed = torch.log((1 - w) * x.exp() + w * x[partner].exp() + torch.finfo(x.dtype).eps)
    return mixed, a, partner


def resize_crop_boxes(
    N: int, size: tuple[int, int], config: DeLoResConfig, generator: torch.Generator | None, device
) -> torch.Tensor:
    """BYOL-A's random resize-crop boxes ``(N, 4)``: ``(top, left, height, width)`` in canvas pixels.

    The canvas is ``virtual_crop_scale`` times the input ``size = (F, T)``; the crop's
    height and width are ``int(U(*freq_scale) * F)`` and ``int(U(*time_scale) * T)``
    clipped to ``[1, canvas]``, its corner uniform over the positions inside the canvas.
    """
    canvas = [int(s * c) for s, c in zip(size, config.virtual_crop_scale)]
    u = torch.rand(N, 4, generator=generator, device=device)
    boxes = []
    for k, (src, side, (low, high)) in enumerate(zip(size, canvas, (config.freq_scale, config.time_scale))):
        extent = ((low + (high - low) * u[:, k]) * src).long().clamp(1, side)
        corner = (u[:, 2 + k] * (side - extent + 1)).long().clamp(max=side - extent)
        boxes.append((corner, extent))
    (top, height), (left, width) = boxes
    return torch.stack([top, left, height, width], dim=1)


def random_resize_crop(
    x: torch.Tensor, config: DeLoResConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each ``(T, F)`` row of ``x`` (N, T, F): a random box of its canvas, resized back to ``(T, F)``.

    Returns the cropped views ``(N, T, F)`` and the boxes ``(N, 4)`` (:func:`resize_crop_boxes`).
    """
    N, T, Fq = x.shape
    canvas_f, canvas_t = int(Fq * config.virtual_crop_scale[0]), int(T * config.virtual_crop_scale[1])
    pad_f, pad_t = (canvas_f - Fq) // 2, (canvas_t - T) // 2
    image = F.pad(x.transpose(1, 2), (pad_t, canvas_t - T - pad_t, pad_f, canvas_f - Fq - pad_f))[:, None]  # (N, 1, cF, cT)
    boxes = resize_crop_boxes(N, (Fq, T), config, generator, x.device)
    top, left, height, width = boxes.to(x.dtype).unbind(1)
    # output pixel k reads crop pixel k * (extent - 1) / (out - 1) (align_corners), in canvas pixels
    rows = top[:, None] + torch.linspace(0, 1, Fq, device=x.device, dtype=x.dtype) * (height[:, None] - 1)  # (N, F)
    cols = left[:, None] + torch.linspace(0, 1, T, device=x.device, dtype=x.dtype) * (width[:, None] - 1)  # (N, T)
    gy = 2 * rows / max(canvas_f - 1, 1) - 1
    gx = 2 * cols / max(canvas_t - 1, 1) - 1
    grid = torch.stack([gx[:, None, :].expand(N, Fq, T), gy[:, :, None].expand(N, Fq, T)], dim=-1)  # (N, F, T, 2)
    out = F.grid_sample(image, grid, mode="bicubic", padding_mode="border", align_corners=True)  # (N, 1, F, T)
    return out[:, 0].transpose(1, 2), boxes


# ---------------------------------------------------------------- losses


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    return m.masked_select(~torch.eye(m.shape[0], dtype=torch.bool, device=m.device))


def batch_standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(N, D)`` standardised per dimension over the batch, as ``BatchNorm1d(affine=False)`` in training."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Barlow Twins (Zbontar et al. 2021, eq. 1): ``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2``.

    ``C = std(z1).T @ std(z2) / N`` over the batch of ``N`` pairs of projections (N, D).
    """
    N = z1.shape[0]
    c = batch_standardise(z1.float()).T @ batch_standardise(z2.float()) / N  # (D, D)
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = _off_diagonal(c).pow(2).sum()
    return on + lambd * off, {"on_diagonal": on.detach(), "off_diagonal": off.detach()}


def vicreg_loss(
    z1: torch.Tensor, z2: torch.Tensor, weights: List[float], eps: float = 1e-4
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg (Bardes et al. 2022, eq. 1-6, their official code) on two batches of projections (N, D).

    invariance ``mean((z1 - z2)^2)``; variance ``mean_j relu(1 - sqrt(Var(z_j) + eps))`` averaged
    over the two branches; covariance ``sum_{i != j} Cov(z)_ij^2 / D`` summed over the branches.
    Variances and covariances divide by ``N - 1`` (by 1 when ``N = 1``).
    """
    z1, z2 = z1.float(), z2.float()
    N, D = z1.shape
    invariance = F.mse_loss(z1, z2)
    variance, covariance = z1.new_zeros(()), z1.new_zeros(())
    for z in (z1, z2):
        z = z - z.mean(0)
        cov = z.T @ z / max(N - 1, 1)  # (D, D)
        variance = variance + F.relu(1 - torch.sqrt(torch.diagonal(cov) + eps)).mean() / 2
        covariance = covariance + _off_diagonal(cov).pow(2).sum() / D
    loss = weights[0] * invariance + weights[1] * variance + weights[2] * covariance
    logs = {"invariance": invariance.detach(), "variance": variance.detach(), "covariance": covariance.detach()}
    return loss, logs


def embedding_std(e: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch standard deviation of the L2-normalised embeddings ``(N, D)``.

    About ``1 / sqrt(D)`` for well-spread embeddings, 0 when they collapse to one point.
    """
    return F.normalize(e.float(), dim=1).std(dim=0, unbiased=False).mean().detach()


class DeLoResObjective(Objective):
    """Barlow Twins or VICReg between the projections of two augmented views (DeLoRes-S / -M).

    For each utterance: a random ``crop_seconds`` window of the waveform, its
    (normalised) log-mel, two views of it by mixup with another utterance of the
    batch and a random resize crop, each view's embedding
    (``extra["embedding"]``), the projector, the loss between the two batches.
    Logs the loss's terms and ``std``, the mean per-dimension standard deviation of
    the L2-normalised embeddings over the batch (:func:`embedding_std`; near 0
    means collapse), and ``proj_std``, the same of the projections.
    """

    crop = "random"

    def __init__(self, upstream: DeLoRes) -> None:
        super().__init__(upstream)
        config = upstream.config
        sizes = [config.embedding_dim, *config.projector_sizes]
        layers: list[nn.Module] = [nn.Dropout(config.projector_dropout)]
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=False))
            if i < len(sizes) - 2:
                layers += [nn.BatchNorm1d(sizes[i + 1]), nn.ReLU()]
        self.projector = nn.Sequential(*layers)

    def views(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(B, S)`` waveforms -> the two views ``(2B, T0, n_mels)``: rows ``0..B-1`` the first, ``B..2B-1`` the second."""
        config = self.upstream.config
        samples = round(config.crop_seconds * features.SAMPLE_RATE)
        wavs, wav_lens = self.upstream.check_inputs(wavs, wav_lens)
        window = random_windows(wavs, wav_lens, samples, generator)  # (B, samples)
        x, _ = self.upstream.front_end(window)  # (B, T0, n_mels), every frame valid
        x = x.repeat(2, 1, 1)  # (2B, T0, F): each view draws its own augmentation
        mixed = log_mixup(x, config.mixup_ratio, generator, copies=2)[0]
        return random_resize_crop(mixed, config, generator)[0]

    def forward(self, batch: dict, *, step: int = 0, generator: torch.Generator | None = None):
        """``batch["wavs"]`` (B, S), ``batch["wav_lens"]`` (B,) -> ``(loss, logs)``."""
        config = self.upstream.config
        views = self.views(batch["wavs"], batch["wav_lens"], generator)  # (2B, T0, F)
        lengths = torch.full((views.shape[0],), views.shape[1], device=views.device)
        embedding = self.upstream.encoder(views, lengths).extra["embedding"]  # (2B, D)
        z1, z2 = self.projector(embedding).chunk(2)  # each (B, P)
        if config.loss == "barlow":
            loss, logs = barlow_twins_loss(z1, z2, config.barlow_lambda)
        else:
            loss, logs = vicreg_loss(z1, z2, config.vicreg_weights)
        logs = {config.loss: loss.detach(), **logs}
        logs["std"] = embedding_std(embedding)
        logs["proj_std"] = embedding_std(torch.cat([z1, z2]))
        return loss, logs


def _check_config(config: DeLoResConfig) -> None:
    if config.loss not in LOSSES:
        raise ValueError(f"delores: loss must be one of {', '.join(LOSSES)}, got {config.loss!r}")
    if config.num_blocks < 1 or config.n_mels < 2**config.num_blocks:
        raise ValueError(
            f"delores: num_blocks must be >= 1 with n_mels >= 2**num_blocks, got {config.num_blocks}, {config.n_mels}"
        )
    if not config.projector_sizes or min(config.projector_sizes) < 1:
        raise ValueError(f"delores: projector_sizes must be a non-empty list of sizes >= 1, got {config.projector_sizes}")
    if len(config.vicreg_weights) != 3:
        raise ValueError(f"delores: vicreg_weights must be [invariance, variance, covariance], got {config.vicreg_weights}")
    if not 0 <= config.mixup_ratio < 1:
        raise ValueError(f"delores: mixup_ratio must be in [0, 1), got {config.mixup_ratio}")
    if config.crop_seconds * features.SAMPLE_RATE < (2**config.num_blocks - 1) * HOP:
        raise ValueError(f"delores: crop_seconds={config.crop_seconds} is shorter than the encoder's receptive field")
    for name in ("virtual_crop_scale", "freq_scale", "time_scale"):
        low, high = getattr(config, name)
        if not 0 < low <= high:
            raise ValueError(f"delores: {name} must be [low, high] with 0 < low <= high, got {getattr(config, name)}")


TINY = dict(conv_channels=8, embedding_dim=64, fc_dropout=0.0, projector_sizes=[64, 64], projector_dropout=0.0)

register("delores", DeLoRes, DeLoResConfig, objective=DeLoResObjective, tiny=TINY)
