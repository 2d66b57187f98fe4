"""Input stems shared by the models: how a log-mel ``[B, T, M]`` becomes a token sequence.

* ``"linear"``: one token per frame (or per ``frame_stack`` stacked frames), a Linear projection.
  This is the classic S4 / Mamba tokeniser; it sees one frame at a time, so the sequence model
  must learn every local time-frequency pattern itself.
* ``"conv"``: a small convolutional front end (conv3x3-BN-ReLU-maxpool blocks, as in the CNN
  baseline) that halves the time axis and pools frequency down to a few bands; the channels of
  each remaining time step are flattened and projected to ``d_model``. Local spectro-temporal
  patterns (onsets, harmonics, chirps) come from the convolutions; long-range temporal structure
  is left to the sequence model. Convolutional subsampling front ends are standard in speech and
  audio sequence models (Conformer, AST-hybrids, Audio-Mamba variants) and matter most on tiny
  datasets like ESC-50.

:func:`conv_blocks` is also the body of the CNN baseline, so the two stay one implementation.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_block(cin: int, cout: int, pool) -> nn.Sequential:
    """conv3x3 (no bias) -> BatchNorm -> ReLU -> max-pool ``pool`` (int or (time, freq))."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(pool))


def conv_blocks(channels: Sequence[int], pools: Sequence) -> nn.Sequential:
    if len(channels) != len(pools):
        raise ValueError(f"conv stem: {len(channels)} channel widths but {len(pools)} pools")
    blocks, cin = [], 1
    for c, p in zip(channels, pools):
        blocks.append(conv_block(cin, int(c), tuple(p) if isinstance(p, (list, tuple)) else int(p)))
        cin = int(c)
    return nn.Sequential(*blocks)


def pool_pair(p) -> tuple[int, int]:
    """A pool as ``(time, frequency)``: an int pools both axes alike."""
    return (int(p[0]), int(p[1])) if isinstance(p, (list, tuple)) else (int(p), int(p))


# default conv stem: 155 x 128 -> 77 x 8 cells of 64 channels (about 25 k parameters)
CONV_STEM_CHANNELS = (16, 32, 64)
CONV_STEM_POOLS = ((2, 2), (1, 2), (1, 4))


class ConvTokenizer(nn.Module):
    """``[B, T, M]`` -> ``[B, T', d_model]``: conv blocks, flatten (channels x bands), Linear."""

    def __init__(self, n_mels: int, d_model: int, channels: Sequence[int] = CONV_STEM_CHANNELS,
                 pools: Sequence = CONV_STEM_POOLS):
        super().__init__()
        # a frequency pool larger than the bands left is clipped (small n_mels end with one band)
        self.pools, self.time_stride, bands = [], 1, n_mels
        for pt, pf in (pool_pair(p) for p in pools):
            pf = max(1, min(pf, bands))
            self.pools.append((pt, pf))
            self.time_stride *= pt
            bands //= pf
        self.bands = bands
        self.convs = conv_blocks(channels, self.pools)
        self.proj = nn.Linear(int(channels[-1]) * bands, d_model)

    def out_len(self, n_frames: int) -> int:
        t = n_frames
        for pt, _ in self.pools:
            t //= pt
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] < self.time_stride:
            raise ValueError(f"conv stem needs at least {self.time_stride} frames, got {x.shape[1]}")
        h = self.convs(x.unsqueeze(1))                         # [B, C, T', F']
        h = h.permute(0, 2, 1, 3).flatten(2)                   # [B, T', C * F']
        return self.proj(h)


class LinearTokenizer(nn.Module):
    """``[B, T, M]`` -> ``[B, ceil(T / k), d_model]``: stack ``k`` frames (zero-padded), Linear."""

    def __init__(self, n_mels: int, d_model: int, frame_stack: int = 1):
        super().__init__()
        self.time_stride = int(frame_stack)
        self.proj = nn.Linear(n_mels * self.time_stride, d_model)

    def out_len(self, n_frames: int) -> int:
        return -(-n_frames // self.time_stride)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before the stems existed stored the bare Linear as ``<prefix>weight``
        for name in ("weight", "bias"):
            if prefix + name in state_dict and prefix + "proj." + name not in state_dict:
                state_dict[prefix + "proj." + name] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.time_stride
        if k > 1:
            pad = (-x.shape[1]) % k
            if pad:
                x = F.pad(x, (0, 0, 0, pad))
            x = x.reshape(x.shape[0], x.shape[1] // k, k * x.shape[2])
        return self.proj(x)


STEMS = ("linear", "conv")


def build_tokenizer(stem: str, n_mels: int, d_model: int, frame_stack: int = 1,
                    stem_channels: Sequence[int] | None = None, stem_pools: Sequence | None = None) -> nn.Module:
    """The stem named ``stem`` (``"linear"`` or ``"conv"``); ``frame_stack`` applies to ``linear``."""
    if stem == "linear":
        return LinearTokenizer(n_mels, d_model, frame_stack)
    if stem == "conv":
        return ConvTokenizer(n_mels, d_model, stem_channels or CONV_STEM_CHANNELS, stem_pools or CONV_STEM_POOLS)
    raise ValueError(f"unknown stem '{stem}'; stems: {', '.join(STEMS)}")
