"""Utterance classification tasks (SUPERB KS, SID, ER, IC): mean-pooled linear heads, accuracy.

KS, SID and ER differ only in the label column, so they share one class; IC
predicts three slots and counts an utterance right only when all three are.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from downstream.heads import UtteranceClassifier
from downstream.task import Metric, Task, register_task
from speechssl.bootstrap import Ratio


class UtteranceClassification(Task):
    """One or more categorical label columns, one softmax output each; accuracy needs every slot right."""

    metric = "accuracy"
    metrics = {"accuracy": Metric("accuracy", higher_is_better=True)}
    ratios = {"accuracy": Ratio("correct")}  # the mean of 0/1 flags

    def fit(self, rows: list[dict]) -> None:
        self.check_rows(rows, "the training set")
        self.classes = {c: sorted({r[c] for r in rows}) for c in self.columns}
        self.index = {c: {label: i for i, label in enumerate(v)} for c, v in self.classes.items()}

    def state(self) -> dict:
        return {"classes": self.classes}

    def encode(self, row: dict) -> torch.Tensor:
        """Class index per slot; -1 for a label never seen in training (ignored by the loss, always wrong)."""
        return torch.tensor([self.index[c].get(row[c], -1) for c in self.columns])

    def collate(self, labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"labels": torch.stack(labels)}  # (B, slots)

    def head(self, input_dim: int):
        return UtteranceClassifier(input_dim, [len(self.classes[c]) for c in self.columns])

    def loss(self, head, x, lengths, labels):
        logits = head(x, lengths)
        loss = sum(F.cross_entropy(out, labels["labels"][:, k], ignore_index=-1) for k, out in enumerate(logits))
        return loss, {}

    def predict(self, head, x, lengths) -> list:
        predicted = torch.stack([out.argmax(dim=-1) for out in head(x, lengths)], dim=1)  # (B, slots)
        return [tuple(p) for p in predicted.tolist()]

    def references(self, rows: list[dict]) -> list:
        return [tuple(self.encode(r).tolist()) for r in rows]

    def score(self, predictions: list, references: list) -> dict[str, float]:
        right = [p == r for p, r in zip(predictions, references)]
        return {"accuracy": sum(right) / max(1, len(right))}

    def outcomes(self, predictions: list, references: list) -> list[dict[str, int]]:
        return [{"correct": int(p == r)} for p, r in zip(predictions, references)]

    def chance(self, train_rows: list[dict], test_rows: list[dict]) -> float:
        """Accuracy of always answering the most frequent training label (combination)."""
        majority = Counter(tuple(r[c] for c in self.columns) for r in train_rows).most_common(1)[0][0]
        return sum(tuple(r[c] for c in self.columns) == majority for r in test_rows) / max(1, len(test_rows))


@register_task
class KeywordSpotting(UtteranceClassification):
    """SUPERB KS: Speech Commands v0.01's 10 keywords, _unknown_ and _silence_.

    Training draws utterances class-balanced, with replacement, as s3prl's KS does
    (``WeightedRandomSampler`` with weight ``1 / class count``): ``_unknown_`` is most
    of Speech Commands' training set. Dev and test are scored on every utterance once.
    """

    name = "ks"
    order = 1
    columns = ("label",)

    def sample_weights(self, rows: list[dict]) -> list[float]:
        counts = Counter(r["label"] for r in rows)
        return [1.0 / counts[r["label"]] for r in rows]


@register_task
class SpeakerIdentification(UtteranceClassification):
    """SUPERB SID: which training speaker said it (closed set, VoxCeleb1 style)."""

    name = "sid"
    order = 3
    columns = ("speaker",)


@register_task
class EmotionRecognition(UtteranceClassification):
    """SUPERB ER: neutral, happy, sad, angry (IEMOCAP's four classes)."""

    name = "er"
    order = 4
    columns = ("emotion",)


@register_task
class IntentClassification(UtteranceClassification):
    """SUPERB IC: Fluent Speech Commands' action, object and location, all three right to count."""

    name = "ic"
    order = 2
    columns = ("action", "object", "location")
