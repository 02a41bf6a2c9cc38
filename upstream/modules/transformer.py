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
        activation_dropout: float = 0.0,
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
        self.activation_dropout = nn.Dropout(activation_dropout)
        self.pre_layer_norm = pre_layer_norm

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_out(self.activation_dropout(self.activation(self.ffn_in(x))))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, T, D), ``lengths`` (B,) valid frames -> (B, T, D), the same lengths.

        Padding frames are masked as keys; their own outputs are left as they come.
        """
        key_mask = lengths_to_mask(lengths, x.shape[1])[:, None, None, :]  # (B, 1, 1, T)
        if self.pre_layer_norm:
            x = x + self.dropout(self.attention(self.attention_norm(x), key_mask))
            return x + self.dropout(self.feed_forward(self.ffn_norm(x))), lengths
        x = self.attention_norm(x + self.dropout(self.attention(x, key_mask)))
        return self.ffn_norm(x + self.dropout(self.feed_forward(x))), lengths


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
        states = [x]
        for layer in self.layers:
            x, lengths = layer(x, lengths)
            states.append(x)
        if self.output_norms is not None:
            states = [norm(h) for norm, h in zip(self.output_norms, states)]
        return states


class ConvPositionalEmbedding(nn.Module):
    """wav2vec 2.0's relative positional embedding (Baevski et al. 2020, sec. 2; Mohamed et al. 2019).

    A weight-normalised grouped ``Conv1d(D, D, kernel, groups)`` over time, padded by
    ``kernel // 2`` on each side (an even kernel's extra last frame dropped), then
    GELU, added to its input: fairseq's ``pos_conv`` + ``SamePad``, torchaudio's
    ``ConvolutionalPositionalEmbedding``. The weight norm is over dim 2 (the kernel
    axis), as fairseq, torchaudio and HF. Padding frames of the input must be zero:
    the conv reads them as a lone utterance reads its zero padding.
    """

    def __init__(self, dim: int, kernel: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f"positional conv: {dim} channels do not split into {groups} groups")
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        # fairseq's initialisation: N(0, sqrt(4 (1 - dropout) / (kernel * D))), zero bias
        nn.init.normal_(conv.weight, mean=0.0, std=(4 * (1.0 - dropout) / (kernel * dim)) ** 0.5)
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.drop_last = kernel % 2 == 0

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, T, D) with zero padding -> ``x + GELU(conv(x))`` (B, T, D), the same lengths."""
        y = self.conv(x.transpose(1, 2))  # (B, D, T (+1))
        if self.drop_last:
            y = y[..., :-1]
        return x + F.gelu(y).transpose(1, 2), lengths


class ConvPositionTransformer(nn.Module):
    """The Transformer of wav2vec 2.0 and HuBERT: positional conv, then :class:`EncoderLayer` s.

    ``layer_norm_first=False`` (base, post-LN layers): ``x = dropout(LN(x + pos(x)))``
    enters the first layer. ``layer_norm_first=True`` (large, pre-LN layers):
    ``x = dropout(x + pos(x))`` enters, and the final LayerNorm is applied to the top
    layer's output. LayerDrop (Fan et al. 2019): in training, each layer is skipped
    with probability ``layerdrop`` (one draw per layer from ``generator``), its
    hidden state then being its input.

    Returns ``num_layers + 1`` hidden states ``(B, T, D)``, HF's ``output_hidden_states``
    order: the input of the first layer, then every layer's output (the last after
    the final LayerNorm in the pre-LN variant). Padding frames are zeroed on entry
    and masked as attention keys; the caller zeroes them in the outputs.
    """

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int,
        ffn_dim: int,
        *,
        pos_conv_kernel: int = 128,
        pos_conv_groups: int = 16,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        layerdrop: float = 0.0,
        layer_norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if not 0.0 <= layerdrop < 1.0:
            raise ValueError(f"layerdrop must be in [0, 1), got {layerdrop}")
        self.position = ConvPositionalEmbedding(dim, pos_conv_kernel, pos_conv_groups, dropout)
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm_first = layer_norm_first
        self.layerdrop = layerdrop
        self.layers = nn.ModuleList(
            EncoderLayer(
                dim,
                num_heads,
                ffn_dim,
                dropout=dropout,
                attention_dropout=attention_dropout,
                activation_dropout=activation_dropout,
                activation=activation,
                layer_norm_eps=layer_norm_eps,
                pre_layer_norm=layer_norm_first,
            )
            for _ in range(num_layers)
        )

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """``x`` (B, T, D), ``lengths`` (B,) -> ``num_layers + 1`` tensors (B, T, D)."""
        valid = lengths_to_mask(lengths, x.shape[1])[..., None]
        x, lengths = self.position(x.masked_fill(~valid, 0.0), lengths)
        if not self.layer_norm_first:
            x = self.norm(x)
        x = self.dropout(x)
        dropped = [False] * len(self.layers)
        if self.training and self.layerdrop > 0:
            draws = torch.rand(len(self.layers), generator=generator, device=generator.device if generator else None)
            dropped = (draws < self.layerdrop).tolist()  # one host read per forward
        states = [x]
        for layer, skip in zip(self.layers, dropped):
            if not skip:
                x, lengths = layer(x, lengths)
            states.append(x)
        if self.layer_norm_first:
            states[-1] = self.norm(states[-1])
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

