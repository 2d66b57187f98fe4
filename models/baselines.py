"""Baselines: an MLP on pooled features, a bidirectional LSTM over frames, a compact CNN.

All take normalised log-mels ``[batch, n_frames, n_mels]`` and return logits ``[batch, classes]``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from models import register
from models.stems import conv_blocks


@register("mlp", presets={"tiny": {"hidden": 64}, "gpu": {"hidden": 1024}},
          train_defaults={"lr": 1e-3, "weight_decay": 0.05, "epochs": 60},
          cpu_bf16_inference=False)   # too small for bf16 to pay for its casts at batch 1
class MLPClassifier(nn.Module):
    """Statistics pooling over time (mean, std, max per mel bin) -> MLP."""

    def __init__(self, num_classes: int = 50, n_mels: int = 128, n_frames: int = 155,
                 hidden: int = 512, depth: int = 2, dropout: float = 0.3):
        super().__init__()
        layers, width = [nn.LayerNorm(3 * n_mels)], 3 * n_mels
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1), x.std(1), x.amax(1)], dim=-1)
        return self.net(pooled)


@register("lstm", presets={"tiny": {"hidden": 16, "layers": 1}, "gpu": {"hidden": 256, "frame_stack": 1}},
          train_defaults={"lr": 2e-3, "weight_decay": 0.05, "epochs": 40})
class LSTMClassifier(nn.Module):
    """Frame projection (optionally stacking k frames per step) -> bidirectional LSTM -> mean pool."""

    def __init__(self, num_classes: int = 50, n_mels: int = 128, n_frames: int = 155,
                 hidden: int = 128, layers: int = 2, frame_stack: int = 2, dropout: float = 0.2):
        super().__init__()
        self.k = frame_stack
        self.proj = nn.Sequential(nn.Linear(n_mels * frame_stack, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = (x.shape[1] // self.k) * self.k
        x = rearrange(x[:, :t], "b (t k) f -> b t (k f)", k=self.k)
        h, _ = self.lstm(self.proj(x))
        return self.head(h.mean(1))


@register("cnn", presets={"tiny": {"channels": (4, 8, 8, 16)}, "gpu": {"channels": (64, 128, 256, 512)}},
          train_defaults={"lr": 2e-3, "weight_decay": 0.05, "epochs": 40})
class CNNClassifier(nn.Module):
    """Four conv3x3-BN-ReLU-maxpool blocks on the spectrogram image, then mean+max pooling -> linear."""

    def __init__(self, num_classes: int = 50, n_mels: int = 128, n_frames: int = 155,
                 channels=(24, 48, 96, 192), dropout: float = 0.3):
        super().__init__()
        self.features = conv_blocks(channels, [2] * len(channels))
        cin = channels[-1]
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.unsqueeze(1))                     # [B, C, T', F']
        h = h.mean(-1)                                        # pool frequency
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], dim=-1))
