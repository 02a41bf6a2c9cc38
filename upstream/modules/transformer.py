"""A BERT-style Transformer encoder over frames, with lengths travelling with the tensors.

The blocks of Mockingjay / TERA (Liu et al. 2020, 2021), which follow BERT
(Devlin et al. 2019): post-LayerNorm by default, GELU feed-forward, dropout on
attention probabilities and on each residual branch. Parameter for parameter
the same shapes as s3prl's ``upstream/mockingjay/model.py`` (``TransformerModel``)
for the same configuration; the fused query/key/value projection holds the
same ``3 * (D * D + D)`` numbers as its three ``Linear`` layers.

Where we differ from s3prl: attention runs through
``torch.nn.functional.scaled_dot_product_attention`` with a boolean key padding
mask (padding gets exactly zero weight, s3prl adds -10000 to its scores), and
LayerNorm and GELU are PyTorch's fused kernels (s3prl writes them out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speechssl.interface import lengths_to_mask

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "swish": F.silu}


def sinusoid_positions(num_frames: int, dim: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(T, D)`` sinusoidal position table (Vaswani et al. 2017, sec. 3.5).

    ``P[t, 2i] = sin(t / 10000^(2i/D))``, ``P[t, 2i+1] = cos(t / 10000^(2i/D))``:
    s3prl's ``get_sinusoid_table`` without its 3000-frame limit.
    """
    t = torch.arange(num_frames, device=device, dtype=torch.float64)[:, None]
    i = torch.arange(dim, device=device)
    angle = t / torch.pow(10000.0, (2 * torch.div(i, 2, rounding_mode="floor")).double() / dim)
    table = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))  # (T, D)
    return table.to(dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key padding mask."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not a multiple of {num_heads} attention heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, D), ``key_mask`` (B, 1, 1, T) bool (True: attend) -> (B, T, D)."""
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D/H)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class EncoderLayer(nn.Module):
    """Self-attention then a feed-forward block, each in a residual branch.

    Post-LN (BERT, s3prl's default): ``x = LN(x + drop(f(x)))``. Pre-LN
    (Xiong et al. 2020): ``x = x + drop(f(LN(x)))``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        *,
        dropout: float,
        attention_dropout: float,
        activation: str,
        layer_norm_eps: float,
        pre_layer_norm: bool,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.attention = SelfAttention(dim, num_heads, attention_dropout)
        self.attention_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.activation = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)
        self.pre_layer_norm = pre_layer_norm

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_out(self.activation(self.ffn_in(x)))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, D), ``key_mask`` (B, 1, 1, T) -> (B, T, D)."""
        if self.pre_layer_norm:
            x = x + self.dropout(self.attention(self.attention_norm(x), key_mask))
            return x + self.dropout(self.feed_forward(self.ffn_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attention(x, key_mask)))
        return self.ffn_norm(x + self.dropout(self.feed_forward(x)))


class TransformerEncoder(nn.Module):
    """A stack of :class:`EncoderLayer`; returns the input and every layer's output.

    With ``pre_layer_norm`` each returned state passes through its own LayerNorm
    (``num_layers + 1`` of them), as s3prl's pre-LN encoder returns them.
    """

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int,
        ffn_dim: int,
        *,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        pre_layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(
                dim,
                num_heads,
                ffn_dim,
                dropout=dropout,
                attention_dropout=attention_dropout,
                activation=activation,
                layer_norm_eps=layer_norm_eps,
                pre_layer_norm=pre_layer_norm,
            )
            for _ in range(num_layers)
        )
        self.output_norms = (
            nn.ModuleList(nn.LayerNorm(dim, eps=layer_norm_eps) for _ in range(num_layers + 1))
            if pre_layer_norm
            else None
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """``x`` (B, T, D), ``lengths`` (B,) -> ``num_layers + 1`` tensors (B, T, D)."""
        if x.dim() != 3:
            raise ValueError(f"TransformerEncoder: x must be (batch, frame, feature), got shape {tuple(x.shape)}")
        key_mask = lengths_to_mask(lengths, x.shape[1])[:, None, None, :]  # (B, 1, 1, T)
        states = [x]
        for layer in self.layers:
            x = layer(x, key_mask)
            states.append(x)
        if self.output_norms is not None:
            states = [norm(h) for norm, h in zip(self.output_norms, states)]
        return states


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation (s3prl's ``init_Transformer_weights``): N(0, std) weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

