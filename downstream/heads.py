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


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``(B, T, D)`` with each utterance's valid frames in reverse order; padding stays at the end."""
    T = x.shape[1]
    t = torch.arange(T, device=x.device)[None]  # (1, T)
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
    return x.gather(1, index[..., None].expand_as(x))


class BiLSTM(nn.Module):
    """A bidirectional LSTM stack on a padded batch, as ``nn.LSTM(bidirectional=True)`` on packed sequences.

    Each direction is a unidirectional ``nn.LSTM`` layer; the backward one reads every
    utterance reversed within its own length, so it starts at the utterance's last valid
    frame and padding only ever comes after valid frames. The outputs on valid frames
    equal those of a packed ``nn.LSTM`` with the same weights; padding frames hold
    garbage the caller masks. Packing costs nothing in the forward pass but makes the
    backward pass of ``nn.LSTM`` on a CPU about 14x slower (benchmarks/RESULTS.md).
    """

    def __init__(self, input_dim: int, hidden: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [2 * hidden] * (num_layers - 1)
        self.forward_layers = nn.ModuleList(nn.LSTM(d, hidden, batch_first=True) for d in dims)
        self.backward_layers = nn.ModuleList(nn.LSTM(d, hidden, batch_first=True) for d in dims)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, D), ``lengths`` (B,) -> (B, T, 2 * hidden)."""
        for ahead, behind in zip(self.forward_layers, self.backward_layers):
            y_ahead, _ = ahead(x)  # (B, T, H)
            y_behind, _ = behind(reverse_padded(x, lengths))
            x = torch.cat([y_ahead, reverse_padded(y_behind, lengths)], dim=-1)  # (B, T, 2H)
        return x


class CTCHead(nn.Module):
    """Frame-wise token logits for CTC: a linear layer (SUPERB PR), or a BiLSTM stack first (SUPERB ASR).

    Returns ``(B, T, vocab)`` log-probabilities; padded frames are never read by the
    loss (CTC takes the lengths), and the BiLSTM (:class:`BiLSTM`) reads every
    utterance as it would alone.
    """

    def __init__(self, input_dim: int, vocab_size: int, lstm_layers: int = 0, hidden: int = 256) -> None:
        super().__init__()
        self.lstm = None
        if lstm_layers:
            self.lstm = BiLSTM(input_dim, hidden, lstm_layers)
            input_dim = 2 * hidden
        self.output = nn.Linear(input_dim, vocab_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.lstm is not None:
            x = self.lstm(x, lengths)  # (B, T, 2H)
        return self.output(x).log_softmax(dim=-1)


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path: argmax per frame, repeats merged, blanks dropped. ``(B, T, V)`` -> token ids per utterance."""
    best = log_probs.argmax(dim=-1)  # (B, T)
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= (best != blank) & lengths_to_mask(lengths, best.shape[1])
    return [row[k].tolist() for row, k in zip(best.cpu(), keep.cpu())]
