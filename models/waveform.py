"""End-to-end waveform classifier: a learned 1-D filterbank on the samples, then a 2-D CNN.

The EnvNet / ACDNet family (Tokozume & Harada 2017; Mohaimenuzzaman et al. 2023): two strided 1-D
convolutions over the raw samples act as a learned filterbank, a max-pool over time turns their
outputs into a ``(time x filter)`` map (50 frames a second and 32 filters at 16 kHz by default, a size the
2-core CPU trains in about 5 s an epoch; ACDNet's 100 frames and 64 filters cost 3-4 times more), and the CNN baseline's 2-D body
(:class:`models.baselines.CNNClassifier`, one implementation) classifies that map. Nothing is fixed in
advance (no STFT, no mel scale, no log): the front end is trained with the rest.

Input: normalised framed waveforms ``[batch, frames, hop]`` (``FeatureConfig(filterbank="waveform")``,
:class:`audio_utils.WaveFrames`), read in order as ``[batch, frames * hop]`` samples; any number of
frames (crops or whole clips), as the body ends in global pooling.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from models import register
from models.baselines import CNNClassifier
from models.stems import WaveFilterbank


@register("wavecnn",
          presets={"tiny": {"filters": (4, 8), "pool": 8, "channels": (4, 8)},
                   "gpu": {"filters": (32, 128), "strides": (2, 2), "channels": (64, 128, 256, 512)}},
          train_defaults={"lr": 2e-3, "weight_decay": 0.05, "epochs": 40})
class WaveCNN(nn.Module):
    """:class:`WaveFilterbank` on the samples -> :class:`~models.baselines.CNNClassifier` on its map."""

    def __init__(self, num_classes: int = 50, n_mels: int = 160, n_frames: int = 500,
                 filters: Sequence[int] = (16, 32), kernels: Sequence[int] = (9, 5), strides: Sequence[int] = (4, 2),
                 pool: int = 40, channels: Sequence[int] = (32, 64, 128, 256), dropout: float = 0.3):
        super().__init__()
        self.filterbank = WaveFilterbank(filters, kernels, strides, pool)
        self.body = CNNClassifier(num_classes, n_mels=int(filters[-1]), channels=tuple(channels), dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.filterbank(x.flatten(1)))               # [B, frames, hop] -> samples
