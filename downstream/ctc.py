"""Sequence tasks trained with CTC (SUPERB PR and ASR), greedy decoding, scored with jiwer.

PR: phones (the manifest's space-separated ``phones``) from a linear head, phone
error rate. ASR: characters of ``text`` from a 2-layer BiLSTM head, word error
rate. Token 0 is the CTC blank. An utterance's outcome is its edit errors and its
reference length, from jiwer's alignment of that pair; their sums are jiwer's
corpus counts, so ``sum(errors) / sum(length)`` is the corpus error rate exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import jiwer
import torch
import torch.nn.functional as F

from downstream.heads import CTCHead, ctc_greedy_decode
from downstream.task import Metric, Task, TaskConfig, register_task
from speechssl.bootstrap import Ratio
from speechssl.errors import ConfigError

BLANK = "<blank>"


@dataclass
class RecurrentCTCConfig(TaskConfig):
    hidden: int = 256  # the BiLSTM's size per direction (ASR, SF)


class CTCTask(Task):
    metric = ""
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
        hidden = getattr(self.config, "hidden", 256)
        return CTCHead(input_dim, len(self.vocab), lstm_layers=self.lstm_layers, hidden=hidden)

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
    order = 0
    columns = ("phones",)
    metric = "per"
    metrics = {"per": Metric("PER", higher_is_better=False)}
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
    order = 5
    Config = RecurrentCTCConfig
    columns = ("text",)
    metric = "wer"
    metrics = {"wer": Metric("WER", higher_is_better=False), "cer": Metric("CER", higher_is_better=False)}
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


@register_task
class SlotFilling(CTCTask):
    """SUPERB SF: the transcription with its slots, as characters and slot tokens from a BiLSTM CTC head.

    The target (as SUPERB's SNIPS recipe) is the text with every slot value wrapped in a
    token of its type and a closing token: ``play some reggae music`` with tags ``O O B-genre
    O`` is ``p l a y | s o m e | <genre> r e g g a e </> | m u s i c``. A hypothesis is
    parsed back into ``(type, value)`` slots: a type token opens a slot, whose value runs to
    the closing token, the next type token or the end.

    - **slot-type F1**: per utterance, the multiset of predicted slot types against the
      reference's; ``2 * matched / (predicted + reference)`` over the corpus;
    - **slot-value CER**: each reference slot is matched with the first unmatched
      predicted slot of its type (an empty value if none); character edit errors of the
      values over their reference length.
    """

    name = "sf"
    order = 7
    Config = RecurrentCTCConfig
    columns = ("text", "tags")
    metric = "f1"
    metrics = {"f1": Metric("slot-type F1", higher_is_better=True),
               "cer": Metric("slot-value CER", higher_is_better=False)}
    ratios = {"f1": Ratio("matched_twice", "slots"), "cer": Ratio("value_char_errors", "value_chars")}
    lstm_layers = 2
    SPACE = "|"
    CLOSE = "</>"

    def fit(self, rows: list[dict]) -> None:
        super().fit(rows)
        self.types = sorted({t for r in rows for t, _ in self.slots_of(r)})

    def state(self) -> dict:
        return {"vocab": self.vocab, "slot_types": self.types}

    def slots_of(self, row: dict) -> list[tuple[str, str]]:
        """``(type, value)`` of each slot of a row, from its BIO tags."""
        return parse_slots(self.tokens(row), self.CLOSE, self.SPACE)

    def tokens(self, row: dict) -> list[str]:
        words, tags = row["text"].lower().split(), row["tags"].split()
        if len(words) != len(tags):
            raise ConfigError(f"task 'sf': {row['id']} has {len(words)} words but {len(tags)} tags")
        tokens, open_slot = [], None
        for i, (word, tag) in enumerate(zip(words, tags)):
            continues = tag.startswith("I-") and open_slot == tag[2:]
            if open_slot is not None and not continues:
                tokens.append(self.CLOSE)
                open_slot = None
            if i:
                tokens.append(self.SPACE)
            if tag != "O" and not continues:
                open_slot = tag[2:]
                tokens.append(f"<{open_slot}>")
            tokens.extend(word)
        if open_slot is not None:
            tokens.append(self.CLOSE)
        return tokens

    def join(self, tokens: list[str]) -> list[str]:
        return tokens  # scored as token lists (slots parsed from them), not as strings

    def predict(self, head, x, lengths) -> list:
        return [[self.vocab[i] for i in ids] for ids in ctc_greedy_decode(head(x, lengths), lengths)]

    def outcomes(self, predictions: list, references: list) -> list[dict[str, int]]:
        outcomes = []
        for hypothesis, reference in zip(predictions, references):
            predicted = parse_slots(hypothesis, self.CLOSE, self.SPACE)
            expected = parse_slots(reference, self.CLOSE, self.SPACE)
            matched = sum((Counter(t for t, _ in predicted) & Counter(t for t, _ in expected)).values())
            errors, chars = 0, 0
            unused = list(predicted)
            for kind, value in expected:
                match = next((p for p in unused if p[0] == kind), None)
                if match is not None:
                    unused.remove(match)
                hyp = match[1] if match is not None else ""
                errors += character_edits(value, hyp)
                chars += len(value)
            outcomes.append({"matched_twice": 2 * matched, "slots": len(predicted) + len(expected),
                             "value_char_errors": errors, "value_chars": chars})
        return outcomes

    def chance(self, train_rows: list[dict], test_rows: list[dict]) -> float:
        """No slot predicted: F1 0."""
        return 0.0


def parse_slots(tokens: list[str], close: str, space: str) -> list[tuple[str, str]]:
    """``(type, value)`` slots of a token sequence: ``<type>`` opens one, ``close``, another type or the end ends it."""
    slots, kind, value = [], None, []
    for token in [*tokens, close]:
        is_type = len(token) > 2 and token.startswith("<") and token.endswith(">") and token != close
        if (is_type or token == close) and kind is not None:
            slots.append((kind, "".join(value).replace(space, " ").strip()))
            kind, value = None, []
        if is_type:
            kind = token[1:-1]
        elif kind is not None and token != close:
            value.append(token)
    return slots


def character_edits(reference: str, hypothesis: str) -> int:
    """Levenshtein distance between two strings, by characters."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]
