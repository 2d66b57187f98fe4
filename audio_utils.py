"""Shared audio preprocessing: loading, log-mel features, augmentation, tubelets, datasets, cache.

Every model in this repository is fed by this module, so that preprocessing is identical for all.

Pipeline
--------
1. ``load_audio``: any file soundfile reads (wav, flac, ogg, mp3, aiff, ...; any rate, mono or
   multi-channel) -> mono float32 at ``FeatureConfig.sample_rate`` (libsoxr resampling).
2. ``LogMel``: power mel spectrogram (torchaudio) -> ``log(mel + 1e-6)``, layout ``[time, mel]``.
   (``FeatureConfig.filterbank="linear"``: bands evenly spaced in Hz instead of mel; ``"waveform"``: no
   transform, the samples framed by ``hop_length`` for end-to-end waveform models, ``WaveFrames``).
   ESC-50 defaults: 16 kHz, n_fft 1024, hop 512, 128 mel bins; a 5-s clip gives 157 frames
   (``center=True``), which are cropped to exactly 155 (centre crop in evaluation, a random
   offset in training). Shorter clips are zero-padded to ``duration`` before the transform.
3. Feature cache: every clip is decoded, resampled and transformed once; the full-length log-mels
   (157 frames) are stored as one ``.npy`` under ``data/cache/`` (memory-mapped on load), keyed by the
   file list (names, sizes, mtimes) and the feature config. An epoch never decodes audio.
4. Augmentation (training only, identical for every model, applied per batch on the cached log-mels):
   random time shift (circular roll), volume scaling (exact in the log-power domain: + 2 ln g),
   additive noise (white noise of random SNR added in the power domain), then, after
   normalisation, SpecAugment time and frequency masks (masked to 0 = the training mean).
   Onset-aligned one-shots can also get an earlier hit's tail mixed in (``add_loop_tails``, opt-in).
   Mixup is applied by the training engine.
5. Normalisation: per-mel-bin mean and std computed on the training split only
   (``FeatureDataset.compute_normalization``) and stored in every checkpoint.

Tubelets (``convert_to_tubelets``): ``[155, 128]`` is centre-cropped (or cropped at an offset) to
``19 * 8 = 152`` frames and cut into non-overlapping ``8 frames x 16 mel`` patches, giving a
``19 (time) x 8 (mel band)`` grid of 152 tokens in time-major order (token ``t * 8 + f``), each token
the patch flattened time-major (``8 * 16 = 128`` values). ``patch_f = 128`` gives full-band tubelets
(19 tokens of ``8 * 128`` values).
"""
from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf
import soxr
import torch
import torchaudio
from einops import rearrange

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_CACHE_DIR = REPO_ROOT / "data" / "cache"
CACHE_VERSION = 2   # 2: soxr resampling
# every container soundfile (libsndfile) reads, by its format name, plus the usual aliases of those
# containers (``.opus`` and ``.oga`` are Ogg, ``.aif``/``.aifc`` AIFF, ...). RAW needs its layout
# spelled out, so headerless files are not listed.
_FORMAT_ALIASES = {"OGG": (".oga", ".opus"), "AIFF": (".aif", ".aifc"), "AU": (".snd",), "IRCAM": (".sf",),
                   "WAVEX": (".wav",), "SVX": (".8svx",), "NIST": (".sph",)}
AUDIO_EXTENSIONS = tuple(sorted({f".{name.lower()}" for name in sf.available_formats() if name != "RAW"}
                                | {a for name in sf.available_formats() for a in _FORMAT_ALIASES.get(name, ())}))


class AudioError(ValueError):
    """A clip that cannot be used; the message names the file and the reason."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int | None = None
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None
    duration: float = 5.0          # seconds per clip (pad / crop before the transform)
    n_frames: int = 155            # frames after centre crop / pad
    log_offset: float = 1e-6
    onset_align: bool = False      # crop starting just before the first onset (percussive clips)
    onset_pre_ms: float = 5.0
    filterbank: str = "mel"        # "mel" (HTK mel scale) or "linear" (bands evenly spaced in Hz);
                                   # ``n_mels`` is the number of bands either way; "waveform": no
                                   # transform, the samples cut into frames of ``hop_length`` (see
                                   # :class:`WaveFrames`; n_fft = hop_length = n_mels)

    @property
    def num_samples(self) -> int:
        return int(round(self.duration * self.sample_rate))

    @property
    def full_frames(self) -> int:
        """Frames produced by the (centred) STFT of ``num_samples`` samples."""
        return self.num_samples // self.hop_length + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown feature option(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(cls.__dataclass_fields__)}")
        return cls(**d)

    # settings that determine how many frames a clip has; n_frames follows them unless given
    FRAME_INPUTS = ("duration", "sample_rate", "hop_length", "n_fft")

    @staticmethod
    def frames_for(duration: float, sample_rate: int, hop_length: int, n_fft: int) -> int:
        """Frames whose whole window lies inside a clip of ``duration`` seconds (155 for ESC-50)."""
        n = int(round(duration * sample_rate))
        return 1 + max(0, n - n_fft) // hop_length

    @classmethod
    def derive(cls, base: "dict | FeatureConfig | None", overrides: dict | None = None) -> "FeatureConfig":
        """``base`` (a preset, a dict or nothing) updated by ``overrides``, with derived settings
        following their inputs: changing ``duration``, ``sample_rate``, ``hop_length`` or ``n_fft``
        without giving ``n_frames`` recomputes ``n_frames`` (:meth:`frames_for`). ``n_frames``
        larger than the clip's STFT frames (the clip would be padded with silence) is an error.
        """
        merged = base.to_dict() if isinstance(base, FeatureConfig) else dict(base or {})
        overrides = dict(overrides or {})
        merged.update(overrides)
        cfg = cls.from_dict(merged)
        if "n_frames" not in overrides and any(k in overrides for k in cls.FRAME_INPUTS):
            cfg = replace(cfg, n_frames=cls.frames_for(cfg.duration, cfg.sample_rate, cfg.hop_length, cfg.n_fft))
        if cfg.n_frames > cfg.full_frames:
            raise ValueError(f"n_frames={cfg.n_frames} exceeds the {cfg.full_frames} frames of a "
                             f"{cfg.duration:g}-s clip at {cfg.sample_rate} Hz with hop {cfg.hop_length}; "
                             f"drop n_frames to derive it ({cls.frames_for(cfg.duration, cfg.sample_rate, cfg.hop_length, cfg.n_fft)}) "
                             "or give a consistent pair")
        if cfg.win_length is not None and cfg.win_length > cfg.n_fft:
            raise ValueError(f"win_length={cfg.win_length} exceeds n_fft={cfg.n_fft}")
        nyquist = cfg.sample_rate / 2
        if cfg.f_max is not None and not cfg.f_min < cfg.f_max <= nyquist:
            raise ValueError(f"f_max={cfg.f_max} must lie in (f_min={cfg.f_min}, {nyquist:g}] Hz")
        if cfg.f_min >= nyquist:
            raise ValueError(f"f_min={cfg.f_min} must be below the Nyquist frequency {nyquist:g} Hz")
        return cfg

    FILTERBANKS = ("mel", "linear", "waveform")

    @property
    def is_waveform(self) -> bool:
        """Whether the "features" are the waveform itself, framed (:class:`WaveFrames`)."""
        return self.filterbank == "waveform"

    def __post_init__(self):
        if self.filterbank not in self.FILTERBANKS:
            raise ValueError(f"filterbank='{self.filterbank}': use one of {', '.join(self.FILTERBANKS)}")
        if self.is_waveform and not self.n_fft == self.hop_length == self.n_mels:
            raise ValueError(f"filterbank='waveform' frames the samples by hop_length: n_fft, hop_length and n_mels "
                             f"must be equal (got {self.n_fft}, {self.hop_length}, {self.n_mels})")


ESC50_FEATURES = FeatureConfig()


@dataclass
class AugmentConfig:
    """Probabilities and strengths of the shared augmentations (see the module docstring)."""
    time_shift_prob: float = 0.5
    time_shift_max: float = 0.25           # fraction of the clip
    gain_prob: float = 0.5
    gain_db: tuple[float, float] = (-6.0, 6.0)
    noise_prob: float = 0.3
    noise_snr_db: tuple[float, float] = (10.0, 40.0)
    freq_mask_prob: float = 0.8
    freq_mask_param: int = 24              # max width in mel bins
    n_freq_masks: int = 2
    time_mask_prob: float = 0.8
    time_mask_param: int = 30              # max width in frames
    n_time_masks: int = 2
    # stronger feature-domain augmentation (off by default; the ESC-50 recipes turn it on)
    eq_prob: float = 0.0                   # random smooth EQ curve across mel bins (a random filter)
    eq_db: float = 6.0                     # curve values in [-eq_db, +eq_db] dB at the knots
    eq_knots: int = 6                      # knots evenly spaced over the mel axis, linear in between
    stretch_prob: float = 0.0              # time stretch: resample the time axis
    stretch: tuple[float, float] = (0.8, 1.25)   # source frames per output frame (log-uniform)
    freq_shift_prob: float = 0.0           # shift along the mel axis (edge bins repeated)
    freq_shift_max: int = 4                # in mel bins
    # loop context (onset-aligned one-shots only, off by default; the drum recipe turns it on): with this
    # probability a view also holds the decaying tail of another training one-shot that started
    # ``loop_gap`` seconds earlier, at a gain of ``loop_tail_gain_db`` relative to its own level, as a
    # hit sounds inside a drum loop whose previous hit rings on (see :func:`add_loop_tails`)
    loop_tail_prob: float = 0.0
    loop_gap: tuple[float, float] = (0.25, 0.5)
    loop_tail_gain_db: tuple[float, float] = (-6.0, 6.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()
                      if k in cls.__dataclass_fields__})


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def resample(wave: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Resample ``[..., samples]`` float32 with libsoxr (``soxr`` package, "HQ" quality).

    Time and memory are bounded for any pair of rates (soxr's filters do not grow with the reduced
    rate ratio, unlike a polyphase sinc kernel: 39063 -> 44100 Hz costs what 48000 -> 44100 does).
    The output has ``round(samples * target_sr / orig_sr)`` samples.
    """
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr == target_sr:
        return wave
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    x = wave.detach().to("cpu", torch.float32).numpy()
    shape = x.shape
    flat = np.ascontiguousarray(x.reshape(-1, shape[-1]).T)           # [samples, channels]
    if flat.shape[0] == 0:
        return torch.zeros(*shape[:-1], 0)
    y = soxr.resample(flat, orig_sr, target_sr, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(y.T)).reshape(*shape[:-1], y.shape[0])


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check_path(path: Path) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        dangling = os.path.islink(path)
        raise AudioError(f"{path}: {'dangling symbolic link' if dangling else 'file not found'}") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot access ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"{path}: is {_kind(st.st_mode)}, not an audio file")
    if st.st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")


def _sf_name(path: Path) -> bytes:
    """The path as bytes for soundfile, which cannot encode names that are not valid UTF-8."""
    return os.fsencode(path)


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """soundfile's header info, with the library's errors turned into an AudioError."""
    path = Path(path)
    _check_path(path)
    try:
        return sf.info(_sf_name(path))
    except Exception as exc:  # libsndfile's messages are clear but verbose
        raise AudioError(f"{path}: not a readable audio file ({_short(exc)})") from None


def _short(exc: Exception) -> str:
    msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return msg[:160]


def _to_mono_checked(data: np.ndarray, path: Path) -> np.ndarray:
    if data.size == 0 or data.shape[0] == 0:
        raise AudioError(f"{path}: zero-length audio (no samples)")
    finite = np.isfinite(data)
    if not finite.all():
        if not finite.any():
            raise AudioError(f"{path}: audio is all NaN/Inf")
        raise AudioError(f"{path}: audio contains NaN/Inf samples ({int((~finite).sum())} of {data.size})")
    return data.mean(axis=1, dtype=np.float32) if data.ndim == 2 else data.astype(np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> torch.Tensor:
    """Load any soundfile-readable file as mono float32 ``[samples]`` at ``sample_rate``.

    Raises :class:`AudioError` (message: path and reason) for a missing, empty, unreadable,
    zero-length or NaN/Inf-containing file.
    """
    path = Path(path)
    _check_path(path)
    try:
        data, sr = sf.read(_sf_name(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"{path}: not a readable audio file ({_short(exc)})") from None
    mono = torch.from_numpy(_to_mono_checked(data, path))
    return resample(mono, sr, sample_rate)


def iter_audio_blocks(path: str | os.PathLike, sample_rate: int, block_seconds: float,
                      overlap_seconds: float = 0.0):
    """Stream a (possibly hours-long) file as mono blocks at ``sample_rate`` without loading it whole.

    Yields ``(start_seconds, block)`` with blocks of ``block_seconds`` (the last may be shorter)
    starting every ``block_seconds - overlap_seconds``.
    """
    path = Path(path)
    info = audio_info(path)
    sr = info.samplerate
    block = int(round(block_seconds * sr))
    step = block - int(round(overlap_seconds * sr))
    if step <= 0:
        raise ValueError("overlap must be shorter than the block")
    try:
        with sf.SoundFile(_sf_name(path)) as f:
            start = 0
            while start < info.frames:
                f.seek(start)
                data = f.read(block, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                mono = torch.from_numpy(_to_mono_checked(data, path))
                yield start / sr, resample(mono, sr, sample_rate)
                if start + block >= info.frames:
                    break
                start += step
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: not a readable audio file ({_short(exc)})") from None


def find_onset(wave: torch.Tensor, sample_rate: int, threshold: float = 0.1, pre_ms: float = 5.0) -> int:
    """Index a few ms before the first sample whose amplitude reaches ``threshold`` x peak."""
    peak = wave.abs().max()
    if peak <= 0:
        return 0
    idx = int(torch.nonzero(wave.abs() >= threshold * peak)[0])
    return max(0, idx - int(pre_ms * 1e-3 * sample_rate))


def fit_length(wave: torch.Tensor, num_samples: int, offset: int = 0) -> torch.Tensor:
    """Crop ``wave[offset:offset+num_samples]`` and zero-pad at the end to ``num_samples``."""
    wave = wave[offset:offset + num_samples]
    if wave.shape[-1] < num_samples:
        wave = torch.nn.functional.pad(wave, (0, num_samples - wave.shape[-1]))
    return wave


def prepare_waveform(wave: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Pad/crop a mono waveform to ``cfg.duration`` (onset-aligned when ``cfg.onset_align``)."""
    offset = find_onset(wave, cfg.sample_rate, pre_ms=cfg.onset_pre_ms) if cfg.onset_align else 0
    return fit_length(wave, cfg.num_samples, offset)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------
class LogMel(torch.nn.Module):
    """Waveform ``[..., samples]`` -> log-mel ``[..., frames, n_mels]`` (frames uncropped).

    Same values as ``torchaudio.transforms.MelSpectrogram(power=2)`` followed by ``log(x + eps)``
    (checked in the tests), computed as ``|STFT|^2 @ melscale_fbanks`` with the mel filterbank
    from torchaudio: about twice as fast on CPU because it skips the complex ``abs().pow()``
    and the transposes of the generic transform. With ``cfg.filterbank == "linear"`` the bands are
    torchaudio's triangular ``linear_fbanks`` (centres evenly spaced in Hz) instead: log energies of
    a linear-frequency filterbank, on which every augmentation of this module means the same (log
    power of a linear filterbank over ``|STFT|^2``), though a band shift is then a shift in Hz.
    """

    def __init__(self, cfg: FeatureConfig = ESC50_FEATURES):
        super().__init__()
        self.cfg = cfg
        win = cfg.win_length or cfg.n_fft
        self.register_buffer("window", torch.hann_window(win), persistent=False)
        fb = filterbank_matrix(cfg)
        self.register_buffer("fb", fb, persistent=False)                     # [freqs, mels]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        shape = wave.shape[:-1]
        spec = torch.stft(wave.reshape(-1, wave.shape[-1]), self.cfg.n_fft, self.cfg.hop_length,
                          win_length=self.window.shape[0], window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)            # [B, freqs, frames]
        power = torch.view_as_real(spec).square().sum(-1)
        mel = torch.matmul(power.transpose(1, 2), self.fb)                   # [B, frames, mels]
        return torch.log(mel + self.cfg.log_offset).reshape(*shape, *mel.shape[-2:])


class WaveFrames(torch.nn.Module):
    """Waveform ``[..., samples]`` -> ``[..., samples // hop + 1, hop]``: the samples themselves, zero-padded
    at the end and cut into frames of ``hop_length`` (``FeatureConfig.filterbank == "waveform"``).

    The frame count is a centred STFT's, so that every frame-based step of this module (the cache,
    crops, multi-crop offsets, time shifts and masks) applies unchanged, at a resolution of
    ``hop_length`` samples; a frame flattened back in order is the waveform (end-to-end waveform
    models read ``x.flatten(-2)``). The augmentations that have a waveform meaning get their waveform
    form (gain, noise, between-class mixing by adding waveforms, a time stretch by resampling, time
    masks); the spectral ones (EQ, band shifts, frequency masks, loop tails) are refused.
    """

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        if not cfg.is_waveform:
            raise ValueError(f"WaveFrames needs filterbank='waveform', not {cfg.filterbank!r}")
        self.cfg = cfg

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        hop = self.cfg.hop_length
        n = wave.shape[-1] // hop + 1
        wave = torch.nn.functional.pad(wave, (0, n * hop - wave.shape[-1]))
        return wave.reshape(*wave.shape[:-1], n, hop)


def make_extractor(cfg: FeatureConfig) -> torch.nn.Module:
    """A new feature extractor for ``cfg``: :class:`LogMel`, or :class:`WaveFrames` for waveform configs."""
    return WaveFrames(cfg) if cfg.is_waveform else LogMel(cfg)


def filterbank_matrix(cfg: FeatureConfig) -> torch.Tensor:
    """``[n_fft // 2 + 1, n_mels]`` triangular filters of ``cfg.filterbank`` (torchaudio's)."""
    n_freqs, f_max = cfg.n_fft // 2 + 1, cfg.f_max or cfg.sample_rate / 2
    if cfg.filterbank == "linear":
        return torchaudio.functional.linear_fbanks(n_freqs, cfg.f_min, f_max, cfg.n_mels, cfg.sample_rate)
    return torchaudio.functional.melscale_fbanks(n_freqs=n_freqs, f_min=cfg.f_min, f_max=f_max, n_mels=cfg.n_mels,
                                                 sample_rate=cfg.sample_rate, norm=None, mel_scale="htk")


def crop_frames(x: torch.Tensor, n_frames: int, offset: int | None = None) -> torch.Tensor:
    """Crop (centre by default) or pad (with the minimum value) ``[..., T, F]`` to ``n_frames`` frames."""
    t = x.shape[-2]
    if t >= n_frames:
        start = (t - n_frames) // 2 if offset is None else int(offset)
        return x[..., start:start + n_frames, :]
    pad = n_frames - t
    left = pad // 2
    fill = float(x.min()) if x.numel() else 0.0
    return torch.nn.functional.pad(x, (0, 0, left, pad - left), value=fill)


_extractor_cache: dict[FeatureConfig, torch.nn.Module] = {}


def feature_extractor(cfg: FeatureConfig) -> torch.nn.Module:
    """The shared (CPU) extractor of ``cfg`` (:func:`make_extractor`, built once per config)."""
    if cfg not in _extractor_cache:
        _extractor_cache[cfg] = make_extractor(cfg)
    return _extractor_cache[cfg]


def extract_features(wave: torch.Tensor, cfg: FeatureConfig = ESC50_FEATURES, crop: bool = True) -> torch.Tensor:
    """Mono waveform(s) ``[..., samples]`` -> log-mel ``[..., n_frames, n_mels]`` (not normalised; the
    framed waveform for waveform configs)."""
    wave = prepare_waveform(wave, cfg) if wave.dim() == 1 else wave
    feats = feature_extractor(cfg)(wave)
    return crop_frames(feats, cfg.n_frames) if crop else feats


def features_from_file(path, cfg: FeatureConfig = ESC50_FEATURES) -> torch.Tensor:
    return extract_features(load_audio(path, cfg.sample_rate), cfg)


def convert_to_tubelets(x: torch.Tensor, patch_t: int = 8, patch_f: int = 16, offset: int | None = None) -> torch.Tensor:
    """``[..., T, F]`` -> ``[..., (T//patch_t) * (F//patch_f), patch_t * patch_f]`` tokens.

    Frames are cropped to ``(T // patch_t) * patch_t`` (centred unless ``offset`` is given):
    ``[155, 128]`` -> 152 frames -> 19 x 8 grid -> ``[152, 128]``. Tokens are ordered time-major
    (index ``t * n_f + f``); each token is its patch flattened time-major.
    The layout has one implementation, the ViT's own (:func:`models.vjepa2.tubeletise`).
    """
    from models.vjepa2 import tokens_grid, tubeletise

    t, f = x.shape[-2], x.shape[-1]
    if f % patch_f:
        raise ValueError(f"mel bins {f} not divisible by patch_f {patch_f}")
    if t < patch_t:
        raise ValueError(f"{t} frames is fewer than one tubelet of {patch_t}")
    grid = tokens_grid(t, f, patch_t, patch_f)
    out = tubeletise(x.reshape(-1, t, f), grid, offset)
    return out.reshape(*x.shape[:-2], *out.shape[1:])


# --------------------------------------------------------------------------------------------
# Augmentation (batched, on un-normalised log-mels [B, T, F])
# --------------------------------------------------------------------------------------------
def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def shifted_frames(b: int, n_frames: int, cfg: AugmentConfig, g: torch.Generator | None) -> torch.Tensor:
    """Frame order ``[b, n_frames]`` of each view: ``0..n_frames-1`` rolled by a random circular shift of up
    to ``time_shift_max`` of the view, with probability ``time_shift_prob``."""
    k = torch.arange(n_frames).view(1, -1).expand(b, -1)
    if cfg.time_shift_prob <= 0 or cfg.time_shift_max <= 0:
        return k
    max_shift = max(1, int(cfg.time_shift_max * n_frames))
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 1), generator=g)
    shifts = shifts * (torch.rand(b, 1, generator=g) < cfg.time_shift_prob)
    return (k - shifts) % n_frames


def crop_and_shift(raw: torch.Tensor, n_frames: int, cfg: AugmentConfig | None,
                   g: torch.Generator | None = None) -> torch.Tensor:
    """Random ``n_frames`` crop of ``[B, T_full, F]`` and, with ``cfg``, a random circular time
    shift of up to ``time_shift_max`` of the clip, in a single gather."""
    b, t_full, f = raw.shape
    if cfg is None:
        return crop_frames(raw, n_frames)
    if t_full < n_frames:
        raw, t_full = crop_frames(raw, n_frames), n_frames
    offsets = torch.randint(0, t_full - n_frames + 1, (b, 1), generator=g)
    idx = offsets + shifted_frames(b, n_frames, cfg, g)
    return torch.gather(raw, 1, idx.unsqueeze(-1).expand(-1, -1, f))


def stretch_crop(raw: torch.Tensor, n_frames: int, cfg: AugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """Random ``n_frames`` views of ``[B, T_full, F]`` with a random time stretch and circular shift.

    With probability ``stretch_prob`` a view reads ``rate`` source frames per output frame (``rate``
    log-uniform in ``cfg.stretch``; at most the whole clip), linearly interpolated: a time stretch of
    the sound by ``1 / rate`` without changing its pitch. Other views are plain crops, as in
    :func:`crop_and_shift`.
    """
    b, t_full, f = raw.shape
    if t_full < n_frames:
        raw, t_full = crop_frames(raw, n_frames), n_frames
    lo, hi = (math.log(v) for v in cfg.stretch)
    rate = torch.exp(_uniform(b, lo, hi, g))
    rate = torch.where(torch.rand(b, generator=g) < cfg.stretch_prob, rate, torch.ones(b))
    span = torch.minimum(rate * (n_frames - 1), torch.full((b,), float(t_full - 1)))
    rate = span / max(n_frames - 1, 1)
    offsets = torch.floor(torch.rand(b, generator=g) * (t_full - span)).clamp(0, t_full - 1)
    k = shifted_frames(b, n_frames, cfg, g)
    pos = (offsets.view(-1, 1) + k * rate.view(-1, 1)).clamp(0, t_full - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp(max=t_full - 1)
    w = (pos - i0).unsqueeze(-1)
    take = lambda i: torch.gather(raw, 1, i.unsqueeze(-1).expand(-1, -1, f))
    return take(i0) * (1 - w) + take(i1) * w


def spectral_augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """Random EQ and mel-axis shift on log-power mels ``[B, T, F]`` (returns a new tensor or ``x``).

    EQ: a filter is a multiplication of power per frequency, i.e. an additive curve in log-mel; the
    curve is smooth (``eq_knots`` random values in +-``eq_db`` dB, linearly interpolated across the
    mel bins). It also counters ESC-50's class-dependent band-limiting shortcut. Mel shift: the
    spectrum moves by up to ``freq_shift_max`` bins (a small pitch shift), edge bins repeated.
    """
    b, t, f = x.shape
    out = x
    if cfg.eq_prob > 0 and cfg.eq_db > 0:
        knots = _uniform(b * max(2, cfg.eq_knots), -cfg.eq_db, cfg.eq_db, g).view(b, 1, -1)
        curve = torch.nn.functional.interpolate(knots, size=f, mode="linear", align_corners=True)
        on = (torch.rand(b, 1, 1, generator=g) < cfg.eq_prob).float()
        out = out + on * curve * (math.log(10.0) / 10.0)
    if cfg.freq_shift_prob > 0 and cfg.freq_shift_max > 0:
        m = int(cfg.freq_shift_max)
        shift = torch.randint(-m, m + 1, (b, 1), generator=g) * (torch.rand(b, 1, generator=g) < cfg.freq_shift_prob)
        idx = (torch.arange(f).view(1, -1) - shift).clamp(0, f - 1)
        out = torch.gather(out, 2, idx.unsqueeze(1).expand(-1, t, -1))
    return out


def _bc_partners(b: int, g: torch.Generator | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A random partner of the batch and a ratio ``r ~ U(eps, 1 - eps)`` for each of ``b`` views."""
    return torch.randperm(b, generator=g), _uniform(b, eps, 1 - eps, g)


def _bc_weight(loud_db: torch.Tensor, perm: torch.Tensor, r: torch.Tensor, eps: float) -> torch.Tensor:
    """The first clip's amplitude weight ``p`` that makes the perceived ratio ``r`` (loudness in dB)."""
    p = 1.0 / (1.0 + torch.pow(10.0, (loud_db - loud_db[perm]) / 20.0) * (1 - r) / r)
    return p.clamp(eps, 1 - eps).view(-1, 1, 1)


def _bc_targets(y: torch.Tensor, num_classes: int, perm: torch.Tensor, r: torch.Tensor, return_mixing: bool):
    """Soft targets ``r y1 + (1 - r) y2`` and, with ``return_mixing``, the mixing matrix."""
    b = y.shape[0]
    onehot = torch.nn.functional.one_hot(y, num_classes).float()
    target = r.view(b, 1) * onehot + (1 - r.view(b, 1)) * onehot[perm]
    if not return_mixing:
        return (target,)
    eye = torch.eye(b)
    return target, r.view(b, 1) * eye + (1 - r.view(b, 1)) * eye[perm]


def between_class_mix(x: torch.Tensor, y: torch.Tensor, num_classes: int, g: torch.Generator | None = None,
                      eps: float = 1e-3, return_mixing: bool = False):
    """Between-class (BC) mixing of un-normalised log-power mels ``[B, T, F]`` (Tokozume et al. 2018).

    Each clip is mixed with a random partner of the batch at a ratio ``r ~ U(0, 1)``, as if their
    waveforms were added: with ``G1, G2`` the clips' loudness (dB of the loudest frame's mean power),
    the first clip's amplitude weight is ``p = 1 / (1 + 10^((G1 - G2)/20) (1 - r)/r)`` so that the
    perceived ratio is ``r``; for uncorrelated sounds the mixture's power is ``p^2 P1 + (1-p)^2 P2``,
    normalised by ``p^2 + (1-p)^2``, i.e. ``logaddexp`` of the log-mels. Returns the mixed
    features and the soft targets ``r y1 + (1 - r) y2`` ``[B, num_classes]``; with ``return_mixing``
    also the mixing matrix ``M`` ``[B, B]`` (``M[i, i] = r_i``, ``M[i, partner_i] += 1 - r_i``), so that
    any per-clip targets ``Q`` ``[B, C]`` mix as ``M @ Q`` (the targets are ``M @ one_hot(y)``).
    """
    b, t, f = x.shape
    perm, r = _bc_partners(b, g, eps)
    loud = (torch.logsumexp(x, dim=2) - math.log(f)).amax(dim=1) * (10.0 / math.log(10.0))   # dB
    p = _bc_weight(loud, perm, r, eps)
    mixed = torch.logaddexp(x + 2 * torch.log(p), x[perm] + 2 * torch.log1p(-p)) - torch.log(p ** 2 + (1 - p) ** 2)
    return (mixed, *_bc_targets(y, num_classes, perm, r, return_mixing))


def between_class_mix_wave(x: torch.Tensor, y: torch.Tensor, num_classes: int, g: torch.Generator | None = None,
                           eps: float = 1e-3, return_mixing: bool = False):
    """:func:`between_class_mix` on framed waveforms ``[B, T, hop]`` (:class:`WaveFrames`): the waveforms
    themselves are added, ``(p x1 + (1 - p) x2) / sqrt(p^2 + (1 - p)^2)``, with the same partners,
    ratios, loudness (dB of the loudest frame's mean power) and targets."""
    perm, r = _bc_partners(x.shape[0], g, eps)
    loud = 10.0 * torch.log10(x.square().mean(dim=2).amax(dim=1).clamp_min(1e-12))
    p = _bc_weight(loud, perm, r, eps)
    mixed = (p * x + (1 - p) * x[perm]) / torch.sqrt(p ** 2 + (1 - p) ** 2)
    return (mixed, *_bc_targets(y, num_classes, perm, r, return_mixing))


def multi_crop_offsets(total_frames: int, crop_frames: int, n_crops: int) -> list[int]:
    """Start frames of ``n_crops`` evenly spaced ``crop_frames`` crops covering ``total_frames``
    (``round(linspace(0, total - crop, n))``; one crop is centred). Used by the engine's and
    inference's multi-crop evaluation alike."""
    if n_crops < 1 or crop_frames < 1:
        raise ValueError(f"need n_crops >= 1 and crop_frames >= 1, got {n_crops}, {crop_frames}")
    slack = max(0, total_frames - crop_frames)
    if n_crops == 1:
        return [slack // 2]
    return [int(round(v)) for v in np.linspace(0, slack, n_crops)]


def loop_context_config(cfg: FeatureConfig, aug: AugmentConfig) -> FeatureConfig:
    """Feature settings of the *context* log-mels that :func:`add_loop_tails` reads the earlier hits'
    tails from: the same onset-aligned crop, long enough to reach ``loop_gap``'s upper end past the clip."""
    if not cfg.onset_align:
        raise ValueError("loop_tail_prob > 0 needs onset-aligned one-shots (feature onset_align=True, "
                         "e.g. --feature-preset drums)")
    lo, hi = aug.loop_gap
    if not 0 < lo <= hi:
        raise ValueError(f"loop_gap must be two increasing times > 0 s, got {aug.loop_gap}")
    return replace(cfg, duration=cfg.duration + hi + 2 * cfg.hop_length / cfg.sample_rate)


def add_loop_tails(x: torch.Tensor, context: torch.Tensor, cfg: AugmentConfig, hop_seconds: float,
                   g: torch.Generator | None = None) -> torch.Tensor:
    """Loop context on un-normalised log-power mels ``[B, T, F]`` of onset-aligned hits.

    With probability ``loop_tail_prob`` a view is mixed with the tail of a random clip of ``context``
    (``[N, T_ctx, F]``: the log-mels of one-shots from their onset-aligned crop start, longer than a
    view; see :func:`loop_context_config`) as if that hit had started ``gap ~ U(loop_gap)`` seconds
    earlier: its frames ``[gap / hop_seconds, + T)``, at a random gain in ``loop_tail_gain_db``, are
    added to the view in the power domain (``logaddexp``, the mixture of uncorrelated sounds). This is
    what a hit looks like in a drum loop whose previous hit rings on under it.
    """
    if cfg.loop_tail_prob <= 0:
        return x
    b, t, f = x.shape
    on = torch.nonzero(torch.rand(b, generator=g) < cfg.loop_tail_prob).flatten()
    if not len(on):
        return x
    n = len(on)
    partner = torch.randint(0, context.shape[0], (n,), generator=g)
    gap = torch.round(_uniform(n, *cfg.loop_gap, g) / hop_seconds).long()
    idx = (gap.view(-1, 1) + torch.arange(t).view(1, -1)).clamp(max=context.shape[1] - 1)
    tail = torch.gather(context[partner], 1, idx.unsqueeze(-1).expand(-1, -1, f))
    gain = _uniform(n, *cfg.loop_tail_gain_db, g) * (math.log(10.0) / 10.0)
    out = x.clone()
    out[on] = torch.logaddexp(x[on], tail + gain.view(-1, 1, 1))
    return out


def _random_gain_db(b: int, cfg: AugmentConfig, g: torch.Generator | None) -> torch.Tensor:
    """Each view's gain in dB: uniform in ``gain_db`` with probability ``gain_prob``, else 0."""
    return _uniform(b, *cfg.gain_db, g) * (torch.rand(b, generator=g) < cfg.gain_prob)


def _noise_picks(b: int, cfg: AugmentConfig, g: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The views that get noise (probability ``noise_prob``) and their SNRs in dB."""
    on = torch.nonzero(torch.rand(b, generator=g) < cfg.noise_prob).flatten()
    return on, _uniform(len(on), *cfg.noise_snr_db, g)


def augment_logmel(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """Volume scaling and additive noise on log-power mels ``[B, T, F]`` (returns a new tensor).

    Volume: a gain of ``g`` dB multiplies power by ``10^(g/10)``, i.e. adds ``g ln(10)/10`` in log.
    Noise: white noise at a random SNR is added in the power domain; its mel spectrum is the
    per-clip noise level times a random per-frame fluctuation (exponential, as a periodogram).
    """
    b, t, f = x.shape
    out = x
    if cfg.gain_prob > 0:
        out = out + (_random_gain_db(b, cfg, g) * (math.log(10.0) / 10.0)).view(b, 1, 1)
    if cfg.noise_prob > 0:
        on, snr_db = _noise_picks(b, cfg, g)
        if len(on):
            power = out[on].exp()
            level = power.mean(dim=(1, 2)) * torch.pow(10.0, -snr_db / 10.0)
            fluct = torch.empty(len(on), t, 1).exponential_(generator=g)
            out = out.clone() if out is x else out
            out[on] = torch.log(power + level.view(-1, 1, 1) * fluct)
    return out


def augment_waveform(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator | None = None) -> torch.Tensor:
    """:func:`augment_logmel` on framed waveforms ``[B, T, hop]``: a gain of ``g`` dB scales the
    amplitude by ``10^(g/20)``; white Gaussian noise is added at a random SNR to the clip's mean power."""
    b = x.shape[0]
    out = x
    if cfg.gain_prob > 0:
        out = out * torch.pow(10.0, _random_gain_db(b, cfg, g) / 20.0).view(b, 1, 1)
    if cfg.noise_prob > 0:
        on, snr_db = _noise_picks(b, cfg, g)
        if len(on):
            sel = out[on]
            level = sel.square().mean(dim=(1, 2)) * torch.pow(10.0, -snr_db / 10.0)
            out = out.clone() if out is x else out
            out[on] = sel + torch.randn(sel.shape, generator=g) * level.sqrt().view(-1, 1, 1)
    return out


# spectral augmentations, undefined on waveforms (filterbank='waveform')
SPECTRAL_AUGMENTS = ("eq_prob", "freq_shift_prob", "freq_mask_prob", "loop_tail_prob")


def check_augment_for(feature_cfg: FeatureConfig, augment_cfg: AugmentConfig) -> None:
    """ValueError (one line) when ``augment_cfg`` turns on an augmentation ``feature_cfg``'s features lack:
    the spectral ones on waveforms."""
    if feature_cfg.is_waveform:
        bad = [k for k in SPECTRAL_AUGMENTS if getattr(augment_cfg, k) > 0]
        if bad:
            raise ValueError(f"augmentation {', '.join(bad)} has no meaning on waveforms (filterbank='waveform'): "
                             f"set {' and '.join(f'{k}=0' for k in bad)}")


def spec_masks(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator | None = None, value: float = 0.0) -> torch.Tensor:
    """SpecAugment: up to ``n_freq_masks`` frequency and ``n_time_masks`` time masks per example,
    each of random width below its ``*_mask_param``, applied with its probability."""
    b, t, f = x.shape

    def bands(size: int, prob: float, param: int, n: int) -> torch.Tensor:
        hit = torch.zeros(b, size, dtype=torch.bool)
        param = min(param, size)
        if prob <= 0 or param <= 0:
            return hit
        pos = torch.arange(size).view(1, -1)
        for _ in range(n):
            width = (torch.rand(b, 1, generator=g) * param).long() * (torch.rand(b, 1, generator=g) < prob)
            start = (torch.rand(b, 1, generator=g) * (size - width + 1)).long()
            hit |= (pos >= start) & (pos < start + width)
        return hit

    fmask = bands(f, cfg.freq_mask_prob, cfg.freq_mask_param, cfg.n_freq_masks)
    tmask = bands(t, cfg.time_mask_prob, cfg.time_mask_param, cfg.n_time_masks)
    return x.masked_fill(fmask.unsqueeze(1) | tmask.unsqueeze(2), value)


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
class FeatureDataset(torch.utils.data.Dataset):
    """Cached full-length log-mels + labels, with cropping, augmentation and normalisation.

    Items are ``(features, label)``: ``features`` is ``[n_frames, n_mels]`` (mode ``"sequence"``)
    or tubelet tokens (mode ``"tubelet"``, see :func:`convert_to_tubelets`). ``expansion`` repeats
    every clip that many times per epoch (random views when ``augment`` is on). The training engine
    reads whole batches with :meth:`get_batch`, which is vectorised.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                 feature_cfg: FeatureConfig, names: Sequence[str] | None = None, mode: str = "sequence",
                 augment: bool | AugmentConfig = False, expansion: int | None = None,
                 normalization: tuple[torch.Tensor, torch.Tensor] | None = None,
                 tubelet: tuple[int, int] = (8, 16), context: torch.Tensor | None = None):
        if mode not in ("sequence", "tubelet"):
            raise ValueError(f"mode must be 'sequence' or 'tubelet', not {mode!r}")
        self.features = features            # [N, T_full, F] float32 (possibly a memmap view)
        self.labels = labels.long()
        self.class_names = list(class_names)
        self.feature_cfg = feature_cfg
        self.names = list(names) if names is not None else [str(i) for i in range(len(labels))]
        self.mode = mode
        self.augment_cfg = (augment if isinstance(augment, AugmentConfig)
                            else AugmentConfig() if augment else None)
        self.expansion = int(expansion if expansion is not None else (3 if self.augment_cfg else 1))
        self.normalization = normalization
        self.tubelet = tubelet
        self.context = context                 # [N, T_ctx, F] log-mels for loop tails (add_loop_tails) or None
        if self.augment_cfg is not None and self.augment_cfg.loop_tail_prob > 0 and context is None:
            raise ValueError("loop_tail_prob > 0 needs the clips' context log-mels (folder_dataset builds them "
                             "for onset-aligned one-shots)")
        if self.augment_cfg is not None:
            check_augment_for(feature_cfg, self.augment_cfg)
        self.crop_frames: int | None = None    # training views of this many frames (crop training)
        self.generator = torch.Generator().manual_seed(0)

    # -- sizes -------------------------------------------------------------------------------
    @property
    def num_clips(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.num_clips * self.expansion

    # -- normalisation -----------------------------------------------------------------------
    def compute_normalization(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-mel-bin mean/std over this dataset's clips (centre-cropped frames); for waveforms one
        mean and std over every sample (repeated per frame position)."""
        x = crop_frames(torch.as_tensor(np.asarray(self.features)), self.feature_cfg.n_frames)
        dims = (0, 1, 2) if self.feature_cfg.is_waveform else (0, 1)
        mean = x.mean(dim=dims).expand(x.shape[-1])
        std = x.std(dim=dims).clamp_min(1e-5).expand(x.shape[-1])
        return mean.float().contiguous(), std.float().contiguous()

    def set_normalization(self, mean, std) -> "FeatureDataset":
        self.normalization = (torch.as_tensor(mean, dtype=torch.float32),
                              torch.as_tensor(std, dtype=torch.float32))
        return self

    # -- items -------------------------------------------------------------------------------
    def get_batch(self, indices, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of clip views ``indices`` (vectorised). Runs on the process's thread
        count: the caller (``TrainConfig.threads`` in the engine) sets it, nothing here changes it."""
        g = generator if generator is not None else self.generator
        x, y = self._views(indices, g)
        return self._finish(x, g), y

    def get_mixed_batch(self, indices, generator: torch.Generator | None = None, return_mixing: bool = False):
        """Like :meth:`get_batch`, with every view mixed with another of the batch by
        :func:`between_class_mix` (before normalisation); the targets are soft ``[B, classes]``.
        ``return_mixing`` adds the ``[B, B]`` mixing matrix (per-clip soft targets mix as ``M @ Q``)."""
        g = generator if generator is not None else self.generator
        x, y = self._views(indices, g)
        mix = between_class_mix_wave if self.feature_cfg.is_waveform else between_class_mix
        x, target, *mixing = mix(x, y, self.num_classes, g, return_mixing=return_mixing)
        return (self._finish(x, g), target, *mixing)

    def get_crops(self, indices, n_frames: int, n_crops: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_crops`` evenly spaced ``n_frames`` views of each clip's full features (no augmentation):
        ``[len(indices) * n_crops, n_frames, F]`` (clip-major) and the clips' labels."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1) % self.num_clips
        raw = self._raw(idx)
        offs = multi_crop_offsets(raw.shape[1], n_frames, n_crops)
        x = torch.stack([crop_frames(raw, n_frames, o) for o in offs], dim=1).flatten(0, 1)
        return self._finish(x, None, augment=False), self.labels[idx]

    @property
    def view_frames(self) -> int:
        """Frames per training view: ``crop_frames`` when crop training is on, else ``n_frames``."""
        return self.crop_frames or self.feature_cfg.n_frames

    def _raw(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.features[idx.numpy()], dtype=np.float32)) \
            if not torch.is_tensor(self.features) else self.features[idx]

    def _views(self, indices, g: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cropped (and, in training, augmented) un-normalised views and their labels."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1) % self.num_clips
        raw = self._raw(idx)
        cfg = self.augment_cfg
        if cfg is not None and self.feature_cfg.is_waveform:
            return self._waveform_views(raw, cfg, g), self.labels[idx]
        if cfg is not None and cfg.stretch_prob > 0:
            x = stretch_crop(raw, self.view_frames, cfg, g)
        else:
            x = crop_and_shift(raw, self.view_frames, cfg, g)
        if cfg is not None:
            if cfg.loop_tail_prob > 0:
                x = add_loop_tails(x, self.context, cfg, self.feature_cfg.hop_length / self.feature_cfg.sample_rate, g)
            x = augment_logmel(spectral_augment(x, cfg, g), cfg, g)
        return x, self.labels[idx]

    def _waveform_views(self, raw: torch.Tensor, cfg: AugmentConfig, g: torch.Generator | None) -> torch.Tensor:
        """Training views of framed waveforms: crops and circular shifts at sample resolution, the time
        stretch as a resampling (speed and pitch together: the stretch's linear interpolation of
        samples), then :func:`augment_waveform`."""
        b, _, hop = raw.shape
        flat, n = raw.reshape(b, -1, 1), self.view_frames * hop
        x = stretch_crop(flat, n, cfg, g) if cfg.stretch_prob > 0 else crop_and_shift(flat, n, cfg, g)
        return augment_waveform(x.reshape(b, self.view_frames, hop), cfg, g)

    def _finish(self, x: torch.Tensor, g: torch.Generator | None, augment: bool = True) -> torch.Tensor:
        """Normalisation, SpecAugment masks (training) and the tubelet layout."""
        if self.normalization is not None:
            mean, std = self.normalization
            x = (x - mean) / std
        if augment and self.augment_cfg is not None:
            x = spec_masks(x, self.augment_cfg, g)
        if self.mode == "tubelet":
            x = convert_to_tubelets(x, *self.tubelet)
        return x.float().contiguous()

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        x, y = self.get_batch([i % len(self)])
        return x[0], y[0]

    # -- views -------------------------------------------------------------------------------
    def subset(self, clip_indices, **overrides) -> "FeatureDataset":
        idx = np.asarray(clip_indices, dtype=np.int64)
        kw = dict(features=self.features[torch.as_tensor(idx)] if torch.is_tensor(self.features) else self.features[idx],
                  labels=self.labels[torch.as_tensor(idx)], class_names=self.class_names,
                  feature_cfg=self.feature_cfg, names=[self.names[i] for i in idx], mode=self.mode,
                  augment=self.augment_cfg or False, expansion=self.expansion,
                  normalization=self.normalization, tubelet=self.tubelet,
                  context=None if self.context is None else self.context[torch.as_tensor(idx)])
        kw.update(overrides)
        ds = FeatureDataset(**kw)
        ds.crop_frames = self.crop_frames
        return ds

    def relabel(self, labels, class_names) -> "FeatureDataset":
        """The same clips with new labels (e.g. one-vs-rest)."""
        ds = self.subset(np.arange(self.num_clips))
        ds.labels = torch.as_tensor(labels).long()
        ds.class_names = list(class_names)
        return ds

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        return {c: int(n) for c, n in zip(self.class_names, counts)}


# --------------------------------------------------------------------------------------------
# Feature cache
# --------------------------------------------------------------------------------------------
def _cache_key(files: Sequence[Path], cfg: FeatureConfig, extra: str = "") -> str:
    h = hashlib.sha1()
    h.update(json.dumps({"v": CACHE_VERSION, "cfg": cfg.to_dict(), "extra": extra}, sort_keys=True).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))  # any file name
    return h.hexdigest()[:20]


def _decode_for_cache(path: Path, cfg: FeatureConfig, min_seconds: float | None) -> torch.Tensor:
    wave = load_audio(path, cfg.sample_rate)
    if min_seconds is not None and wave.shape[-1] < min_seconds * cfg.sample_rate:
        raise AudioError(f"{path}: truncated clip ({wave.shape[-1] / cfg.sample_rate:.2f} s, "
                         f"expected {min_seconds:.2f} s)")
    return prepare_waveform(wave, cfg)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike, pattern: str = "*.tmp*", min_age_s: float = 600.0) -> list[Path]:
    """Delete temp files ``*.tmp<PID>*`` left in ``directory`` by processes that no longer run.

    Only files older than ``min_age_s`` are touched: on a filesystem shared by several machines a
    PID unknown here may belong to a live writer elsewhere, and a write takes seconds."""
    import re
    import time

    removed, now = [], time.time()
    for p in Path(directory).glob(pattern):
        m = re.search(r"\.tmp(\d+)", p.name)
        try:
            old = now - p.stat().st_mtime > min_age_s
        except OSError:
            continue
        if m and old and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def _checksum(arr: np.ndarray) -> str:
    import zlib

    crc = 0
    flat = arr.reshape(-1)
    step = 1 << 22
    for s in range(0, flat.shape[0], step):
        crc = zlib.crc32(np.ascontiguousarray(flat[s:s + step]).view(np.uint8), crc)
    return f"{crc:08x}"


def _cache_header(key: str, arr: np.ndarray) -> dict:
    return {"key": key, "shape": list(arr.shape), "dtype": str(arr.dtype), "crc32": _checksum(arr)}


def _load_verified_cache(target: Path, key: str, shape: tuple) -> np.ndarray | None:
    """The cached array if its header (``<key>.json``: key, shape, dtype, checksum) matches the
    file and the request and every value is finite; else ``None`` after a warning."""
    import warnings

    header_path = target.with_suffix(".json")
    problem = None
    try:
        header = json.loads(header_path.read_text())
        arr = np.load(target, mmap_mode="r")
        if header.get("key") != key:
            problem = "its header names another key"
        elif tuple(header.get("shape", ())) != tuple(shape) or tuple(arr.shape) != tuple(shape):
            problem = f"shape {tuple(arr.shape)} (header {tuple(header.get('shape', ()))}), expected {tuple(shape)}"
        elif header.get("dtype") != "float32" or arr.dtype != np.float32:
            problem = f"dtype {arr.dtype}, expected float32"
        elif header.get("crc32") != _checksum(arr):
            problem = "its data does not match the checksum in its header"
        elif not np.isfinite(arr).all():
            problem = "it holds non-finite values"
        else:
            return arr
    except FileNotFoundError as exc:
        problem = f"{Path(exc.filename).name if exc.filename else 'a file'} is missing"
    except Exception as exc:  # noqa: BLE001 - 0-byte / truncated / garbled files
        problem = f"unreadable ({type(exc).__name__}: {_short(exc)})"
    warnings.warn(f"feature cache {target} rejected ({problem}); rebuilding it", stacklevel=3)
    return None


def _atomic_save(path: Path, write) -> None:
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise OSError(f"cannot write feature cache {path}: {exc.strerror or _short(exc)}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def cached_features(files: Sequence[str | os.PathLike], cfg: FeatureConfig, cache_dir: str | os.PathLike | None = None,
                    min_seconds: float | None = None, workers: int = 2, progress: bool = False,
                    batch: int = 64) -> np.ndarray:
    """Full-length log-mels ``[N, full_frames, n_mels]`` for ``files``, computed once and cached.

    The cache file is ``<cache_dir>/<key>.npy`` (``cache_dir`` defaults to ``$AUDIO_CACHE_DIR`` or
    ``data/cache``), with ``key`` derived from the file list (names, sizes, mtimes) and ``cfg``,
    plus a header ``<key>.json`` recording the key, shape, dtype and a CRC-32 of the data. Both are
    written atomically; on later calls the file is memory-mapped if the header matches the file
    and the request and every value is finite, and rebuilt with a warning otherwise. Temp files
    of crashed writers are removed.
    """
    files = [Path(f) for f in files]
    for f in files:
        _check_path(f)
    cache_dir = Path(cache_dir or os.environ.get("AUDIO_CACHE_DIR") or DEFAULT_CACHE_DIR)
    key = _cache_key(files, cfg, extra=f"min{min_seconds}")
    target = cache_dir / f"{key}.npy"
    shape = (len(files), cfg.full_frames, cfg.n_mels)
    if cache_dir.is_dir():
        remove_stale_temps(cache_dir)
    if target.exists():
        arr = _load_verified_cache(target, key, shape)
        if arr is not None:
            return arr
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = np.empty(shape, dtype=np.float32)
    extractor = feature_extractor(cfg)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(files), desc="feature cache", unit="clip")
    def work(start: int) -> int:
        chunk = files[start:start + batch]
        waves = torch.stack([_decode_for_cache(p, cfg, min_seconds) for p in chunk])
        with torch.inference_mode():
            out[start:start + len(chunk)] = extractor(waves).numpy()
        return len(chunk)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for n in pool.map(work, range(0, len(files), batch)):
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    if not np.isfinite(out).all():
        raise AudioError(f"non-finite features computed for {cache_dir}/{key}.npy (check the audio files)")
    header = _cache_header(key, out)
    target.with_suffix(".json").unlink(missing_ok=True)    # no header may describe a half-replaced file
    _atomic_save(target, lambda t: np.save(t, out))
    _atomic_save(target.with_suffix(".json"), lambda t: t.write_text(json.dumps(header)))
    return np.load(target, mmap_mode="r")


# --------------------------------------------------------------------------------------------
# ESC-50
# --------------------------------------------------------------------------------------------
@dataclass
class ESC50Meta:
    names: list[str]
    folds: np.ndarray
    targets: np.ndarray
    class_names: list[str]
    files: list[Path] = field(default_factory=list)


def read_esc50_meta(root: str | os.PathLike) -> ESC50Meta:
    """Parse ``meta/esc50.csv`` and resolve each clip to ``audio/<name>.wav`` or ``audio/<stem>.flac``."""
    root = Path(root)
    meta_path = root / "meta" / "esc50.csv"
    if not meta_path.exists():
        raise FileNotFoundError(f"{root}: not an ESC-50 directory (missing meta/esc50.csv); "
                                "see data/README.md to download it or pass --data-dir")
    import pandas as pd

    columns = ["filename", "fold", "target", "category"]
    try:
        df = pd.read_csv(meta_path, usecols=columns, dtype={"filename": str, "category": str})
        df = df.astype({"fold": int, "target": int})
    except (ValueError, pd.errors.ParserError) as exc:
        raise AudioError(f"{meta_path}: not the ESC-50 metadata table (needs columns {', '.join(columns)}): "
                         f"{_short(exc)}") from None
    if df.empty:
        raise AudioError(f"{meta_path}: lists no clips")
    names, folds, targets = df["filename"].tolist(), df["fold"].to_numpy(), df["target"].to_numpy()
    cats = dict(zip(df["target"], df["category"]))
    class_names = [cats.get(i, f"class_{i}") for i in range(max(cats) + 1)]
    files, missing = [], []
    for name in names:
        stem = Path(name).stem
        cands = [root / "audio" / name, root / "audio" / f"{stem}.flac", root / "audio" / f"{stem}.wav"]
        hit = next((c for c in cands if c.exists()), None)
        if hit is None:
            missing.append(name)
        files.append(hit)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise AudioError(f"{root / 'audio'}: {len(missing)} clip(s) listed in meta/esc50.csv are missing: {shown}")
    return ESC50Meta(names, np.asarray(folds, dtype=np.int64), np.asarray(targets, dtype=np.int64), class_names, files)


_esc50_cache: dict[tuple, tuple[ESC50Meta, np.ndarray]] = {}


def load_esc50_features(root, feature_cfg: FeatureConfig = ESC50_FEATURES, cache_dir=None,
                        progress: bool = False) -> tuple[ESC50Meta, np.ndarray]:
    """Meta + full-length log-mels of all clips (cached on disk and per process)."""
    key = (str(Path(root).resolve()), feature_cfg, str(cache_dir))
    if key not in _esc50_cache:
        meta = read_esc50_meta(root)
        feats = cached_features(meta.files, feature_cfg, cache_dir, min_seconds=0.98 * feature_cfg.duration,
                                progress=progress)
        _esc50_cache[key] = (meta, feats)
    return _esc50_cache[key]


def esc50_dataset(root: str | os.PathLike, folds: Iterable[int] = (1, 2, 3), mode: str = "sequence",
                  augment: bool | AugmentConfig = False, expansion: int | None = None,
                  feature_cfg: FeatureConfig = ESC50_FEATURES, cache_dir=None,
                  normalization=None, progress: bool = False, **kw) -> FeatureDataset:
    """ESC-50 clips of the given folds as a :class:`FeatureDataset`.

    Reads ``meta/esc50.csv``; audio may be the official 44.1-kHz ``audio/<name>.wav`` or a
    ``audio/<stem>.flac`` copy. A missing or truncated clip raises :class:`AudioError` naming it.
    ``expansion`` defaults to 3 random views per clip per epoch when ``augment`` is on, else 1.
    """
    folds = sorted({int(f) for f in folds})
    meta, feats = load_esc50_features(root, feature_cfg, cache_dir, progress)
    bad = [f for f in folds if f not in set(meta.folds.tolist())]
    if bad:
        raise ValueError(f"{root}: no clips in fold(s) {bad}; folds present: {sorted(set(meta.folds.tolist()))}")
    idx = np.flatnonzero(np.isin(meta.folds, folds))
    return FeatureDataset(torch.from_numpy(np.ascontiguousarray(feats[idx])), torch.from_numpy(meta.targets[idx]),
                          meta.class_names, feature_cfg, names=[meta.names[i] for i in idx], mode=mode,
                          augment=augment, expansion=expansion, normalization=normalization, **kw)


# --------------------------------------------------------------------------------------------
# Class-per-folder datasets (e.g. drum one-shots)
# --------------------------------------------------------------------------------------------
def list_audio_files(root: str | os.PathLike, skipped: list | None = None) -> list[Path]:
    """Audio files under ``root`` (recursively, sorted; hidden names starting with ``.`` ignored).

    A file counts as audio by its extension (``AUDIO_EXTENSIONS``, any case). What cannot be listed
    is appended to ``skipped`` as ``(path, reason)``: unreadable directories, dangling symbolic
    links, symbolic-link loops, and FIFOs / devices / sockets with an audio extension. Names need
    not be valid UTF-8.
    """
    root = Path(root)
    skipped = skipped if skipped is not None else []
    found: list[Path] = []
    try:
        st = os.stat(root)
    except OSError as exc:
        raise FileNotFoundError(f"{root}: cannot open directory ({exc.strerror or exc})") from None
    seen = {(st.st_dev, st.st_ino)}

    def walk(d: Path) -> None:
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            skipped.append((d, f"cannot read directory ({exc.strerror or exc})"))
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            p = Path(e.path)
            try:
                st = os.stat(p)
            except FileNotFoundError:
                skipped.append((p, "dangling symbolic link" if e.is_symlink() else "vanished while listing"))
                continue
            except OSError as exc:
                reason = "symbolic link loop" if exc.errno == errno.ELOOP else f"cannot access ({exc.strerror or exc})"
                skipped.append((p, reason))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    skipped.append((p, "symbolic link loop (a directory already being listed)"))
                    continue
                seen.add(key)
                walk(p)
                seen.discard(key)
            elif p.suffix.lower() in AUDIO_EXTENSIONS:
                if stat.S_ISREG(st.st_mode):
                    found.append(p)
                else:
                    skipped.append((p, f"is {_kind(st.st_mode)}, not an audio file"))

    walk(root)
    return found


def _warn_skipped(skipped: list) -> None:
    import warnings

    for p, reason in skipped:
        warnings.warn(f"skipped {p}: {reason}", stacklevel=3)


def list_folder_dataset(root: str | os.PathLike, classes: Sequence[str] | None = None,
                        merge: dict[str, Sequence[str]] | None = None,
                        skipped: list | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of a class-per-folder tree.

    ``classes`` keeps only those folders (in that order); ``merge`` maps a new class to a list of
    folders (e.g. ``{"perc": ["clap", "rim"]}``). Files are listed by :func:`list_audio_files`
    (audio extensions soundfile reads; hidden files and folders, e.g. macOS ``._kick.wav``
    resource forks, are ignored). What could not be listed is appended to ``skipped`` as
    ``(path, reason)``, or, when ``skipped`` is None, reported as one warning each.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset directory not found")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    groups: dict[str, list[str]] = {}
    if merge:
        used = {f for fs in merge.values() for f in fs}
        groups.update({k: list(v) for k, v in merge.items()})
        groups.update({f: [f] for f in folders if f not in used})
    else:
        groups = {f: [f] for f in folders}
    if classes is not None:
        unknown = [c for c in classes if c not in groups]
        if unknown:
            raise ValueError(f"{root}: unknown class(es) {unknown}; have {sorted(groups)}")
        groups = {c: groups[c] for c in classes}
    class_names = list(groups) if classes is not None else sorted(groups)
    files, labels, lost = [], [], []
    for ci, cname in enumerate(class_names):
        for folder in groups[cname]:
            d = root / folder
            if not d.is_dir():
                raise ValueError(f"{root}: class folder '{folder}' not found")
            found = list_audio_files(d, lost)
            files.extend(found)
            labels.extend([ci] * len(found))
    if skipped is None:
        _warn_skipped(lost)
    else:
        skipped.extend(lost)
    if not files:
        raise ValueError(f"{root}: no audio files found in class folders")
    return files, labels, class_names


SPLITS = ("train", "val", "test")


def stratified_split(labels: Sequence[int], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                     groups: Sequence | None = None, group_scope: str = "class") -> list[np.ndarray]:
    """Split indices into parts with the given fractions, reproducibly from ``seed``.

    Without ``groups`` the split is stratified: every class with at least ``len(fractions)``
    examples gets at least one in every part. ``groups`` (one key per example) keeps every group
    within one part. ``group_scope="class"`` (the original rule, kept so that stored splits
    reproduce) deals the groups of each class separately: whole groups, in a random order, to the
    part furthest below its share of the class. ``group_scope="dataset"`` treats a group as a unit
    across classes (a speaker, a drum machine: it never appears in two parts) and deals the groups,
    largest first, to the part whose per-class counts it brings closest to their shares, so that
    part sizes, and each class within them, come as close to ``fractions`` as the group sizes allow
    (every part gets a group when there are enough groups).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    fr = np.asarray(fractions, dtype=float) / np.sum(fractions)
    if group_scope not in ("class", "dataset"):
        raise ValueError(f"group_scope must be 'class' or 'dataset', not {group_scope!r}")
    if groups is not None:
        keys = np.asarray([str(g) for g in groups])
        if group_scope == "dataset":
            return _balanced_group_split(labels, keys, fr, rng)
        return _grouped_split(labels, keys, fr, rng)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        counts = np.floor(fr * n).astype(int)
        if n >= len(fr):
            counts = np.maximum(counts, 1)
        while counts.sum() > n:
            counts[np.argmax(counts)] -= 1
        counts[0] += n - counts.sum()
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for k in range(len(fr)):
            parts[k].extend(idx[bounds[k]:bounds[k + 1]].tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _grouped_split(labels: np.ndarray, groups: np.ndarray, fr: np.ndarray, rng) -> list[np.ndarray]:
    parts: list[list[int]] = [[] for _ in fr]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keys = list(dict.fromkeys(groups[idx].tolist()))          # first-seen order, then shuffled
        keys = [keys[i] for i in rng.permutation(len(keys))]
        members = {k: idx[groups[idx] == k] for k in keys}
        target, have = fr * len(idx), np.zeros(len(fr))
        for j, k in enumerate(keys):
            part = j if len(keys) >= len(fr) and j < len(fr) else int(np.argmax(target - have))
            parts[part].extend(members[k].tolist())
            have[part] += len(members[k])
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _balanced_group_split(labels: np.ndarray, groups: np.ndarray, fr: np.ndarray, rng) -> list[np.ndarray]:
    """Whole groups, largest first, each to the part where it most reduces the squared distance of
    the part sizes and of the per-class counts from their targets (``fr`` x size): the split sizes
    approach the fractions, and every class is spread over the parts as evenly as groups allow."""
    keys, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    classes, y = np.unique(labels, return_inverse=True)
    comp = np.zeros((len(keys), len(classes)))                  # group x class counts
    np.add.at(comp, (inverse, y), 1)
    target = fr[:, None] * comp.sum(0)[None, :]                 # part x class
    have = np.zeros_like(target)
    order = rng.permutation(len(keys))                          # random among equal sizes
    order = order[np.argsort(-sizes[order], kind="stable")]      # then largest first
    assign = np.zeros(len(keys), dtype=np.int64)
    for g in order:
        s = sizes[g]                                                # change of the squared errors
        cost = (comp[g] * (2 * (have - target) + comp[g])).sum(1) + s * (2 * (have - target).sum(1) + s)
        part = int(np.argmin(np.where(fr > 0, cost, np.inf)))
        assign[g] = part
        have[part] += comp[g]
    # a part left empty takes the smallest group of the part with the most groups
    for part in np.flatnonzero(fr > 0):
        if (assign == part).any():
            continue
        donors = np.bincount(assign, minlength=len(fr))
        donor = int(np.argmax(donors))
        if donors[donor] < 2:
            break
        cand = np.flatnonzero(assign == donor)
        assign[cand[np.argmin(sizes[cand])]] = part
    return [np.sort(np.flatnonzero(assign[inverse] == k)).astype(np.int64) for k in range(len(fr))]


def file_groups(files: Sequence[Path], pattern: str, scope: str = "class") -> list[str]:
    r"""Group key per file: its stem with ``pattern`` (a regex, case-insensitive) removed.

    ``scope="class"``: the key also holds the parent folder, e.g. ``r"-\d+$"`` puts
    ``Snare-1.wav`` ... ``Snare-5.wav`` of one folder in one group. ``scope="dataset"``: the stem
    alone, so one source is one group across classes, e.g. ``r"^\d+_|_\d+$"`` turns
    ``3_jackson_12.wav`` into the speaker ``jackson``.
    """
    import re

    rx = re.compile(pattern, re.IGNORECASE)
    if scope == "dataset":
        return [rx.sub("", Path(f).stem) for f in files]
    return [f"{Path(f).parent.name}/{rx.sub('', Path(f).stem)}" for f in files]


def read_split_file(path: str | os.PathLike, root: str | os.PathLike, files: Sequence[Path]) -> list[np.ndarray]:
    """Indices of ``files`` in the train / val / test parts listed by a CSV split file.

    The file has a header with columns ``path`` and ``split`` (``train``, ``val`` or ``test``);
    a path is relative to ``root`` (or absolute). Files of the dataset the split file does not
    name belong to no part; a listed path that is not one of ``files`` is an error.
    """
    path, root = Path(path), Path(root)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise FileNotFoundError(f"{path}: cannot read split file ({exc.strerror or exc})") from None
    if not rows or not {"path", "split"} <= set(rows[0]):
        raise ValueError(f"{path}: a split file needs a header with columns 'path' and 'split'")
    index = {os.path.normpath(os.path.relpath(f, root)): i for i, f in enumerate(files)}
    parts: list[list[int]] = [[] for _ in SPLITS]
    where: dict[int, str] = {}
    for n, row in enumerate(rows, start=2):
        rel, part = (row.get("path") or "").strip(), (row.get("split") or "").strip().lower()
        if part not in SPLITS:
            raise ValueError(f"{path}:{n}: split must be one of {', '.join(SPLITS)}, not {part!r}")
        p = Path(rel)
        key = os.path.normpath(os.path.relpath(p, root) if p.is_absolute() else p)
        if key not in index:
            raise ValueError(f"{path}:{n}: {rel!r} is not an audio file of {root}")
        i = index[key]
        if i in where and where[i] != part:
            raise ValueError(f"{path}:{n}: {rel!r} is listed in both {where[i]} and {part}")
        if i not in where:
            where[i] = part
            parts[SPLITS.index(part)].append(i)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def folder_split(files: Sequence[Path], labels: Sequence[int], root: str | os.PathLike,
                 fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0, group_pattern: str | None = None,
                 group_scope: str = "class", split_file: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Train / val / test indices of a folder dataset: from ``split_file`` when given, else a
    (group-aware) stratified split, see :func:`stratified_split`."""
    if split_file:
        return read_split_file(split_file, root, files)
    groups = file_groups(files, group_pattern, group_scope) if group_pattern else None
    return stratified_split(labels, fractions, seed, groups, group_scope)


def folder_dataset(root: str | os.PathLike, feature_cfg: FeatureConfig | None = None, classes=None, merge=None,
                   split: str | None = None, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                   mode: str = "sequence", augment: bool | AugmentConfig = False, expansion: int | None = None,
                   cache_dir=None, normalization=None, progress: bool = False, group_pattern: str | None = None,
                   group_scope: str = "class", split_file: str | os.PathLike | None = None, **kw) -> FeatureDataset:
    """A class-per-folder dataset of any audio as a :class:`FeatureDataset`.

    Clips of any length are padded / cropped to ``feature_cfg.duration`` (onset-aligned when
    ``feature_cfg.onset_align``). ``split`` in ``{"train", "val", "test"}`` selects one part of a
    stratified split with ``fractions`` and ``seed``; ``None`` keeps every clip. With
    ``group_pattern`` (see :func:`file_groups`; ``group_scope`` "class" or "dataset") takes of one
    source stay within one split; ``split_file`` (see :func:`read_split_file`) gives the split.
    """
    cfg = feature_cfg or FeatureConfig()
    files, labels, class_names = list_folder_dataset(root, classes, merge)
    feats = cached_features(files, cfg, cache_dir, progress=progress)
    idx = np.arange(len(files))
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        idx = folder_split(files, labels, root, fractions, seed, group_pattern, group_scope,
                           split_file)[SPLITS.index(split)]
    root = Path(root)
    context = None
    if isinstance(augment, AugmentConfig) and augment.loop_tail_prob > 0:       # loop tails: longer log-mels
        ctx = cached_features(files, loop_context_config(cfg, augment), cache_dir, progress=progress)
        context = torch.from_numpy(np.ascontiguousarray(ctx[idx]))
    return FeatureDataset(torch.from_numpy(np.ascontiguousarray(feats[idx])), torch.as_tensor(labels)[idx],
                          class_names, cfg, names=[str(files[i].relative_to(root)) for i in idx], mode=mode,
                          augment=augment, expansion=expansion, normalization=normalization, context=context, **kw)
