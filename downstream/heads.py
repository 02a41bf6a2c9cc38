"""SUPERB's small downstream heads. Each takes ``(x (B, T, D), lengths (B,))`` from a Featurizer."""

from __future__ import annotations

import torch
from torch import nn

from speechssl.interface import lengths_to_mask


def mean_pool(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``(B, T, D)`` -> ``(B, D)``: the mean over each utterance's valid frames."""
    mask = lengths_to_mask(lengths, x.shape[1])[..., None].to(x.dtype)  # (B, T, 1)
    return (x * mask).sum(dim=1) / lengths.clamp(min=1)[:, None].to(x.dtype)


class UtteranceClassifier(nn.Module):
    """Projection, ReLU, mean over valid frames, one linear layer per output (SUPERB's KS/IC/ER/SID head).

    The ReLU is ours: without it the head is linear in the utterance mean of the
    features, which utterance CMVN (our fbank/mfcc baselines) sets to zero.

    ``num_classes`` is a list: several outputs share the pooled vector (IC's action,
    object and location slots). Returns a list of ``(B, C_k)`` logits.
    """

    def __init__(self, input_dim: int, num_classes: list[int], hidden: int = 256) -> None:
        super().__init__()
        self.projection = nn.Linear(input_dim, hidden)
        self.outputs = nn.ModuleList(nn.Linear(hidden, c) for c in num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        pooled = mean_pool(torch.relu(self.projection(x)), lengths)  # (B, hidden)
        return [out(pooled) for out in self.outputs]


class CTCHead(nn.Module):
    """Frame-wise token logits for CTC: a linear layer (SUPERB PR), or a BiLSTM stack first (SUPERB ASR).

    Returns ``(B, T, vocab)`` log-probabilities; padded frames are never read by the
    loss (CTC takes the lengths) and the LSTM runs on packed sequences.
    """

    def __init__(self, input_dim: int, vocab_size: int, lstm_layers: int = 0, hidden: int = 256) -> None:
        super().__init__()
        self.lstm = None
        if lstm_layers:
            self.lstm = nn.LSTM(input_dim, hidden, num_layers=lstm_layers, batch_first=True, bidirectional=True)
            input_dim = 2 * hidden
        self.output = nn.Linear(input_dim, vocab_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.lstm is not None:
            T = x.shape[1]
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            x, _ = self.lstm(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True, total_length=T)  # (B, T, 2H)
        return self.output(x).log_softmax(dim=-1)


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path: argmax per frame, repeats merged, blanks dropped. ``(B, T, V)`` -> token ids per utterance."""
    best = log_probs.argmax(dim=-1)  # (B, T)
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= (best != blank) & lengths_to_mask(lengths, best.shape[1])
    return [row[k].tolist() for row, k in zip(best.cpu(), keep.cpu())]
