"""Sequence tasks trained with CTC (SUPERB PR and ASR), greedy decoding, scored with jiwer.

PR: phones (the manifest's space-separated ``phones``) from a linear head, phone
error rate. ASR: characters of ``text`` from a 2-layer BiLSTM head, word error
rate. Token 0 is the CTC blank. An utterance's outcome is its edit errors and its
reference length, from jiwer's alignment of that pair; their sums are jiwer's
corpus counts, so ``sum(errors) / sum(length)`` is the corpus error rate exactly.
"""

from __future__ import annotations

import jiwer
import torch
import torch.nn.functional as F

from downstream.heads import CTCHead, ctc_greedy_decode
from downstream.task import Task, register_task
from speechssl.bootstrap import Ratio

BLANK = "<blank>"


class CTCTask(Task):
    metric = ""
    higher_is_better = False
    lstm_layers = 0

    def tokens(self, row: dict) -> list[str]:
        raise NotImplementedError

    def join(self, tokens: list[str]) -> str:
        """Tokens -> the string jiwer scores (words separated by spaces)."""
        raise NotImplementedError

    def fit(self, rows: list[dict]) -> None:
        self.check_rows(rows, "the training set")
        self.vocab = [BLANK, *sorted({t for r in rows for t in self.tokens(r)})]
        self.index = {t: i for i, t in enumerate(self.vocab)}

    def state(self) -> dict:
        return {"vocab": self.vocab}

    def encode(self, row: dict) -> torch.Tensor:
        # a token never seen in training cannot be predicted: it is left out of the target
        return torch.tensor([self.index[t] for t in self.tokens(row) if t in self.index], dtype=torch.long)

    def collate(self, labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "targets": torch.nn.utils.rnn.pad_sequence(labels, batch_first=True),
            "target_lens": torch.tensor([len(t) for t in labels]),
        }

    def head(self, input_dim: int):
        return CTCHead(input_dim, len(self.vocab), lstm_layers=self.lstm_layers)

    def loss(self, head, x, lengths, labels):
        log_probs = head(x, lengths).float()  # (B, T, V)
        loss = F.ctc_loss(
            log_probs.transpose(0, 1), labels["targets"], lengths, labels["target_lens"], blank=0, zero_infinity=True
        )
        return loss, {}

    def predict(self, head, x, lengths) -> list:
        return [self.join([self.vocab[i] for i in ids]) for ids in ctc_greedy_decode(head(x, lengths), lengths)]

    def references(self, rows: list[dict]) -> list:
        return [self.join(self.tokens(r)) for r in rows]

    def chance(self, train_rows: list[dict], test_rows: list[dict]) -> float:
        """An empty hypothesis deletes every reference token: error rate 1."""
        return 1.0


@register_task
class PhonemeRecognition(CTCTask):
    """SUPERB PR: phone sequence from a linear CTC head; PER."""

    name = "pr"
    columns = ("phones",)
    metric = "per"
    ratios = {"per": Ratio("phone_errors", "phones")}

    def tokens(self, row: dict) -> list[str]:
        return row["phones"].split()

    def join(self, tokens: list[str]) -> str:
        return " ".join(tokens)

    def score(self, predictions: list, references: list) -> dict[str, float]:
        return {"per": jiwer.wer(references, predictions)}

    def outcomes(self, predictions: list, references: list) -> list[dict[str, int]]:
        return [{"phone_errors": e, "phones": n} for e, n in edit_counts(jiwer.process_words(references, predictions))]


@register_task
class SpeechRecognition(CTCTask):
    """SUPERB ASR: characters from a 2-layer BiLSTM CTC head, greedy decoding; WER (and CER)."""

    name = "asr"
    columns = ("text",)
    metric = "wer"
    ratios = {"wer": Ratio("word_errors", "words"), "cer": Ratio("char_errors", "chars")}
    lstm_layers = 2
    SPACE = "|"

    def tokens(self, row: dict) -> list[str]:
        return list(" ".join(row["text"].lower().split()).replace(" ", self.SPACE))

    def join(self, tokens: list[str]) -> str:
        return " ".join("".join(tokens).replace(self.SPACE, " ").split())

    def score(self, predictions: list, references: list) -> dict[str, float]:
        # jiwer rejects empty references; a hypothesis may be empty
        return {"wer": jiwer.wer(references, predictions), "cer": jiwer.cer(references, predictions)}

    def outcomes(self, predictions: list, references: list) -> list[dict[str, int]]:
        words = edit_counts(jiwer.process_words(references, predictions))
        chars = edit_counts(jiwer.process_characters(references, predictions))
        return [{"word_errors": we, "words": wn, "char_errors": ce, "chars": cn}
                for (we, wn), (ce, cn) in zip(words, chars)]


def edit_counts(alignment) -> list[tuple[int, int]]:
    """``(substitutions + deletions + insertions, reference length)`` per sentence of a jiwer alignment output."""
    counts = []
    for reference, chunks in zip(alignment.references, alignment.alignments):
        errors = sum(c.hyp_end_idx - c.hyp_start_idx if c.type == "insert" else c.ref_end_idx - c.ref_start_idx
                     for c in chunks if c.type != "equal")
        counts.append((errors, len(reference)))
    return counts
