"""SUPERB ASV: automatic speaker verification, an x-vector head trained on the training speakers.

The head (Snyder et al., 2018, as s3prl's ``sv_voxceleb1``): TDNN layers over the
frames (context 5, 3, 3, 1, 1 at dilations 1, 2, 3, 1, 1), statistics pooling (mean
and standard deviation over each utterance's valid frames), one linear layer to the
speaker embedding, trained with AM-Softmax (Wang et al., 2018: cosine logits, an additive
margin on the true speaker's) over the training speakers. Each trial of the corpus's
trial list (``asv_trials``: label, enrollment id, test id) is scored with the cosine of
the two test utterances' embeddings; the metrics are the equal error rate and the
minimum detection cost (NIST's, as SUPERB and Kaldi's ``compute_min_dcf.py``: p_target
0.01, C_miss = C_fa = 1, normalised by the cost of the best trivial system), both over
the operating points of scikit-learn's ``roc_curve``, computed for many resamples at once.

There is no dev split: the last checkpoint is scored (never one chosen on test).
Neither metric is a ratio of summed counts, so the intervals bootstrap the trials with
the metric recomputed on each resample; a test outcome is one trial's label and score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from downstream.task import Metric, Task, TaskConfig, register_task
from speechssl.bootstrap import percentile_interval, resample_indices
from speechssl.errors import ConfigError
from speechssl.interface import lengths_to_mask

P_TARGET, C_MISS, C_FA = 0.01, 1.0, 1.0


@dataclass
class ASVConfig(TaskConfig):
    channels: int = 512  # TDNN width (s3prl's x-vector: 512; the statistics layer 3x it)
    embedding: int = 512  # speaker embedding size
    margin: float = 0.4  # AM-Softmax additive margin (s3prl's sv_voxceleb1)
    scale: float = 30.0  # AM-Softmax scale


class XVector(nn.Module):
    """TDNN frames -> statistics pooling -> embedding, padding never read.

    Each layer zeroes the padded frames before its convolution, so the valid frames see
    exactly the zeros they would see as a batch of one; the pooling covers valid frames only.
    """

    CONTEXT = ((5, 1), (3, 2), (3, 3), (1, 1), (1, 1))  # (kernel, dilation) per TDNN layer

    def __init__(self, input_dim: int, channels: int, embedding: int) -> None:
        super().__init__()
        sizes = [input_dim] + [channels] * (len(self.CONTEXT) - 1) + [3 * channels]
        self.tdnn = nn.ModuleList(
            nn.Conv1d(sizes[i], sizes[i + 1], kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
            for i, (kernel, dilation) in enumerate(self.CONTEXT)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(size, affine=False) for size in sizes[1:])
        self.embedding = nn.Linear(2 * sizes[-1], embedding)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, D), ``lengths`` (B,) -> embeddings (B, E)."""
        valid = lengths_to_mask(lengths, x.shape[1])[:, None, :].to(x.dtype)  # (B, 1, T)
        h = x.transpose(1, 2)  # (B, D, T)
        for conv, norm in zip(self.tdnn, self.norms):
            h = torch.relu(conv(h * valid))
            h = masked_batch_norm(norm, h, valid)
        count = valid.sum(dim=2).clamp(min=1)  # (B, 1)
        mean = (h * valid).sum(dim=2) / count  # (B, C)
        var = ((h - mean[..., None]).pow(2) * valid).sum(dim=2) / count
        return self.embedding(torch.cat([mean, var.clamp(min=1e-6).sqrt()], dim=1))


def masked_batch_norm(norm: nn.BatchNorm1d, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Batch norm of ``h`` (B, C, T) with the statistics of valid frames only (padding would shift them)."""
    if not norm.training:
        return norm(h)
    count = valid.sum()
    mean = (h * valid).sum(dim=(0, 2)) / count  # (C,)
    var = ((h - mean[:, None]).pow(2) * valid).sum(dim=(0, 2)) / count
    with torch.no_grad():
        momentum = norm.momentum
        norm.running_mean.mul_(1 - momentum).add_(momentum * mean)
        norm.running_var.mul_(1 - momentum).add_(momentum * var * count / (count - 1).clamp(min=1))
        norm.num_batches_tracked += 1
    return (h - mean[:, None]) / (var[:, None] + norm.eps).sqrt()


class XVectorHead(nn.Module):
    """The x-vector and the AM-Softmax speaker weights; ``forward`` gives embeddings."""

    def __init__(self, input_dim: int, num_speakers: int, config: ASVConfig) -> None:
        super().__init__()
        self.xvector = XVector(input_dim, config.channels, config.embedding)
        self.speakers = nn.Parameter(torch.randn(num_speakers, config.embedding) * 0.01)
        self.margin, self.scale = config.margin, config.scale

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.xvector(x, lengths)

    def am_softmax_loss(self, embeddings: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(embeddings, dim=1) @ F.normalize(self.speakers, dim=1).T  # (B, S)
        margin = F.one_hot(speakers, cosine.shape[1]).to(cosine.dtype) * self.margin
        return F.cross_entropy(self.scale * (cosine - margin), speakers)


def verification_metrics(labels: np.ndarray, scores: np.ndarray, p_target: float = P_TARGET, c_miss: float = C_MISS,
                         c_fa: float = C_FA) -> dict[str, np.ndarray]:
    """EER and minDCF of each row of ``(R, N)`` trial labels (1 target, 0 not) and scores, at once.

    Every distinct score is a threshold (trials scoring at or above it accepted), plus
    accepting none: the operating points of scikit-learn's ``roc_curve`` (without
    ``drop_intermediate``). EER is the mean of the miss and false-alarm rates at the point
    where they are closest (the first such point); minDCF is NIST's normalised minimum
    detection cost over the points (Kaldi's ``compute_min_dcf.py``). A row without both
    kinds of trial gives NaN.
    """
    labels, scores = np.atleast_2d(labels).astype(np.float64), np.atleast_2d(scores).astype(np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")
    scores, labels = np.take_along_axis(scores, order, 1), np.take_along_axis(labels, order, 1)
    hits, false_alarms = np.cumsum(labels, axis=1), np.cumsum(1 - labels, axis=1)  # accepting the top k+1
    zero = np.zeros((labels.shape[0], 1))
    hits, false_alarms = np.hstack([zero, hits]), np.hstack([zero, false_alarms])  # point 0: accept none
    last_of_tie = np.ones_like(hits, dtype=bool)
    last_of_tie[:, 1:-1] = scores[:, :-1] != scores[:, 1:]  # a threshold accepts tied scores together
    with np.errstate(divide="ignore", invalid="ignore"):
        miss = 1 - hits / hits[:, -1:]
        false_alarm = false_alarms / false_alarms[:, -1:]
    gap = np.where(last_of_tie, np.abs(miss - false_alarm), np.inf)
    closest = np.argmin(gap, axis=1)[:, None]
    eer = ((np.take_along_axis(miss, closest, 1) + np.take_along_axis(false_alarm, closest, 1)) / 2)[:, 0]
    cost = np.where(last_of_tie, c_miss * miss * p_target + c_fa * false_alarm * (1 - p_target), np.inf)
    dcf = cost.min(axis=1) / min(c_miss * p_target, c_fa * (1 - p_target))
    both = (hits[:, -1] > 0) & (false_alarms[:, -1] > 0)
    return {"eer": np.where(both, eer, np.nan), "min_dcf": np.where(both, dcf, np.nan)}


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(verification_metrics(labels, scores)["eer"][0])


def min_dcf(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(verification_metrics(labels, scores)["min_dcf"][0])


def _trial_arrays(outcomes: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([o["label"] for o in outcomes], dtype=np.int64),
            np.array([o["score"] for o in outcomes], dtype=np.float64))


CHANCE = {"eer": 0.5, "min_dcf": 1.0}


@register_task
class SpeakerVerification(Task):
    """SUPERB ASV: x-vector + AM-Softmax on the training speakers; cosine-scored trials; EER and minDCF."""

    name = "asv"
    order = 8
    Config = ASVConfig
    splits = ("train", "test")
    resources = ("asv_trials",)
    columns = ("speaker",)
    metric = "eer"
    metrics = {"eer": Metric("EER", higher_is_better=False),
               "min_dcf": Metric("minDCF", higher_is_better=False, unit="")}

    def fit(self, rows: list[dict]) -> None:
        self.check_rows(rows, "the training set")
        self.speakers = sorted({r["speaker"] for r in rows})
        if len(self.speakers) < 2:
            raise ConfigError(f"task 'asv': the training set has {len(self.speakers)} speaker(s); AM-Softmax needs two")
        self.index = {s: i for i, s in enumerate(self.speakers)}

    def state(self) -> dict:
        return {"speakers": self.speakers}

    def encode(self, row: dict) -> torch.Tensor:
        return torch.tensor(self.index.get(row["speaker"], -1))  # test speakers are unseen: -1, never trained on

    def collate(self, labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"speakers": torch.stack(labels)}

    def head(self, input_dim: int) -> nn.Module:
        return XVectorHead(input_dim, len(self.speakers), self.config)

    def loss(self, head, x, lengths, labels):
        return head.am_softmax_loss(head(x, lengths), labels["speakers"]), {}

    def predict(self, head, x, lengths) -> list:
        return list(F.normalize(head(x, lengths).float(), dim=1).cpu())

    def references(self, rows: list[dict]) -> list:
        return [r["id"] for r in rows]

    def trials(self, ids: list[str]) -> list[tuple[int, str, str]]:
        trials = self.corpus_resources["asv_trials"]
        known = set(ids)
        missing = sorted({u for _, e, t in trials for u in (e, t) if u not in known})
        if missing:
            raise ConfigError(f"task 'asv': the trial list names {len(missing)} utterance(s) not in the test split, "
                              f"such as {missing[0]}")
        return trials

    def outcomes(self, predictions: list, references: list) -> list[dict]:
        embedding = dict(zip(references, predictions))
        return [{"label": int(label), "score": float(embedding[e] @ embedding[t])}
                for label, e, t in self.trials(references)]

    def outcome_ids(self, rows: list[dict]) -> list[str]:
        return [f"{e}|{t}" for _, e, t in self.corpus_resources["asv_trials"]]

    def score(self, predictions: list, references: list) -> dict[str, float]:
        metrics = verification_metrics(*_trial_arrays(self.outcomes(predictions, references)))
        return {m: float(values[0]) for m, values in metrics.items()}

    def metric_from_outcomes(self, outcomes: list[dict], metric: str | None = None) -> float:
        return float(verification_metrics(*_trial_arrays(outcomes))[metric or self.metric][0])

    def intervals(self, outcomes: list[dict]) -> dict[str, tuple[float, float]]:
        """Percentile-bootstrap intervals over the trials, every resample's metrics at once (a resample
        with one kind of trial only scores as chance: EER 0.5, minDCF 1)."""
        labels, scores = _trial_arrays(outcomes)
        index = resample_indices(len(outcomes))
        resampled = verification_metrics(labels[index], scores[index])
        return {m: percentile_interval(np.nan_to_num(resampled[m], nan=CHANCE[m])) for m in self.metrics}

    def chance(self, train_rows: list[dict], test_rows: list[dict]) -> float:
        """A score that ignores the audio cannot rank target trials above non-target ones: EER 50%."""
        return CHANCE[self.metric]
