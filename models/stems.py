"""Input stems shared by the models: how a log-mel ``[B, T, M]`` becomes a token sequence.

* ``"linear"``: one token per frame (or per ``frame_stack`` stacked frames), a Linear projection.
  This is the classic S4 / Mamba tokeniser; it sees one frame at a time, so the sequence model
  must learn every local time-frequency pattern itself.
* ``"wave"``: for framed waveforms (``FeatureConfig(filterbank="waveform")``): a learned 1-D
  filterbank on the samples (:class:`WaveFilterbank`) makes a ``(time x filter)`` map, which the
  ``conv`` stem then tokenises as if it were a spectrogram; the sequence model reads the waveform
  end to end.
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

import math
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


class WaveFilterbank(nn.Module):
    """``[B, samples]`` -> ``[B, frames, filters[-1]]``: strided conv1d-BN-ReLU layers, then a max-pool
    over ``pool`` steps (frames of ``prod(strides) * pool`` samples)."""

    def __init__(self, filters: Sequence[int] = (16, 32), kernels: Sequence[int] = (9, 5),
                 strides: Sequence[int] = (4, 2), pool: int = 40):
        super().__init__()
        if not len(filters) == len(kernels) == len(strides) >= 1:
            raise ValueError(f"wave filterbank: filters {list(filters)}, kernels {list(kernels)} and strides "
                             f"{list(strides)} need the same (non-zero) length")
        layers, cin = [], 1
        for c, k, s in zip(filters, kernels, strides):
            layers += [nn.Conv1d(cin, int(c), int(k), stride=int(s), padding=int(k) // 2, bias=False),
                       nn.BatchNorm1d(int(c)), nn.ReLU(inplace=True)]
            cin = int(c)
        self.convs = nn.Sequential(*layers, nn.MaxPool1d(int(pool)))
        self.samples_per_frame = int(pool) * math.prod(int(s) for s in strides)
        self.n_filters = int(filters[-1])

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.shape[-1] < self.samples_per_frame:
            raise ValueError(f"wave filterbank needs at least {self.samples_per_frame} samples, got {wave.shape[-1]}")
        return self.convs(wave.unsqueeze(1)).transpose(1, 2)          # [B, frames, filters]


class WaveTokenizer(nn.Module):
    """Framed waveforms ``[B, T, hop]`` -> ``[B, T', d_model]``: :class:`WaveFilterbank` on the samples,
    then a :class:`ConvTokenizer` over its ``(time x filter)`` map."""

    def __init__(self, hop: int, d_model: int, channels: Sequence[int] = CONV_STEM_CHANNELS,
                 pools: Sequence = CONV_STEM_POOLS):
        super().__init__()
        self.hop = int(hop)
        self.filterbank = WaveFilterbank()
        self.conv = ConvTokenizer(self.filterbank.n_filters, d_model, channels, pools)

    def out_len(self, n_frames: int) -> int:
        return self.conv.out_len(n_frames * self.hop // self.filterbank.samples_per_frame)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.filterbank(x.flatten(1)))


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


STEMS = ("linear", "conv", "wave")


def build_tokenizer(stem: str, n_mels: int, d_model: int, frame_stack: int = 1,
                    stem_channels: Sequence[int] | None = None, stem_pools: Sequence | None = None) -> nn.Module:
    """The stem named ``stem`` (``"linear"``, ``"conv"`` or ``"wave"``, whose ``n_mels`` is the frame width in
    samples); ``frame_stack`` applies to ``linear``, ``stem_channels`` / ``stem_pools`` to ``conv`` and ``wave``."""
    if stem == "linear":
        return LinearTokenizer(n_mels, d_model, frame_stack)
    if stem == "conv":
        return ConvTokenizer(n_mels, d_model, stem_channels or CONV_STEM_CHANNELS, stem_pools or CONV_STEM_POOLS)
    if stem == "wave":
        return WaveTokenizer(n_mels, d_model, stem_channels or CONV_STEM_CHANNELS, stem_pools or CONV_STEM_POOLS)
    raise ValueError(f"unknown stem '{stem}'; stems: {', '.join(STEMS)}")
