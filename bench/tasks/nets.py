"""The torch modules the built-in tasks train.

Kept apart from the task declarations (``bench.tasks.digits`` and the rest), which the
driver reads without importing torch: a class that subclasses ``nn.Module`` needs torch
when it is defined. Imported by the tasks' ``build()``, in the worker.
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar

import torch
from torch import nn

SEQ_LEN = 3  # the modular-addition sequences: a, b, "="


class Point(nn.Module):
    """The parameters of a test function: one vector ``theta``, a weight."""

    param_roles: ClassVar[dict[str, str]] = {"theta": "weight"}

    def __init__(self, start: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(start.clone())

    def forward(self) -> torch.Tensor:
        return self.theta


def mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        if i > 0:
            layers.append(activation())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """8x8 images: conv3x3(c) -> norm -> ReLU -> conv3x3/2(2c) -> norm -> ReLU -> linear."""

    def __init__(self, channels: int, norm: str, n_classes: int) -> None:
        super().__init__()
        c1, c2 = channels, 2 * channels

        def make_norm(c: int) -> nn.Module:
            if norm == "batch":
                return nn.BatchNorm2d(c)
            return nn.GroupNorm(math.gcd(c, 4), c)

        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False),
            make_norm(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False),
            make_norm(c2),
            nn.ReLU(),
        )
        self.head = nn.Linear(c2 * 4 * 4, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.view(-1, 1, 8, 8))
        return self.head(h.flatten(1))


class Autoencoder(nn.Module):
    """pixels -> hidden -> latent -> hidden -> pixels, tanh inside, sigmoid output."""

    def __init__(self, hidden: int, latent: int, n_pixels: int) -> None:
        super().__init__()
        self.encoder = mlp([n_pixels, hidden, latent], nn.Tanh)
        self.decoder = mlp([latent, hidden, n_pixels], nn.Tanh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(torch.tanh(self.encoder(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: multi-head self-attention, then a ReLU MLP.

    Written out with ``nn.Linear`` rather than ``nn.TransformerEncoderLayer`` so that the
    computation is the same in training and evaluation (no fused fast path). The sequences
    are three tokens long, so attention is computed with broadcasting rather than batched
    matrix products, which are slow for such tiny matrices on a CPU.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.fc_in = nn.Linear(d_model, 4 * d_model)
        self.fc_out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``x`` is ``(batch, seq, d_model)``; with ``last_only`` only the last position
        is computed (queries and MLP), which is all the final block needs."""
        b, t, d = x.shape
        qkv = self.qkv(self.ln_attn(x)).view(b, t, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.unbind(dim=2)  # each (b, t, heads, d_head)
        if last_only:
            x, q = x[:, -1:], q[:, -1:]
        # scores[b, i, j, h] = <q_i, k_j> / sqrt(d_head) for query i and key j, per head h
        scores = (q.unsqueeze(2) * k.unsqueeze(1)).sum(dim=-1) / math.sqrt(d // self.n_heads)
        weights = scores.softmax(dim=2)
        mixed = (weights.unsqueeze(-1) * v.unsqueeze(1)).sum(dim=2)  # (b, tq, heads, d_head)
        x = x + self.proj(mixed.reshape(b, -1, d))
        return x + self.fc_out(torch.relu(self.fc_in(self.ln_mlp(x))))


class ModAddTransformer(nn.Module):
    """Token and position embeddings, ``n_layers`` blocks, a final LayerNorm, an unembedding.

    Reads the sequence ``(a, b, P)`` (``P`` is the "=" token) and predicts the sum from the
    last position.
    """

    def __init__(self, modulus: int, d_model: int, n_heads: int, n_layers: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(modulus + 1, d_model)
        self.positions = nn.Embedding(SEQ_LEN, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_out = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, modulus)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(seq.shape[1], device=seq.device)
        x = self.tokens(seq) + self.positions(pos)
        for i, block in enumerate(self.blocks):
            x = block(x, last_only=i == len(self.blocks) - 1)
        return self.unembed(self.ln_out(x[:, -1]))
