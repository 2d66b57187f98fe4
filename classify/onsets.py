"""Every hit of a drum loop or a live stream: onset detection, one-shot crops, one label per hit.

For checkpoints trained on onset-aligned one-shots (``FeatureConfig.onset_align``, e.g. the
``drums`` feature preset). A recording with many hits is cut into one *segment* per hit, and each
segment is classified exactly as a one-shot file is in training, so a one-shot file is the special
case of one hit and gets the same probabilities as classifying the file itself.

Detection (:class:`OnsetDetector`)
    Spectral flux on a mel band-energy spectrogram (the onset strength of librosa's
    ``onset.onset_strength``: band power in dB, positive differences between consecutive frames,
    mean over bands), with frames that end at the newest sample (no centring, so a frame needs no
    future audio). A frame fires when its flux is the local maximum of the frames around it, exceeds
    the median flux of the preceding frames by ``threshold`` dB, and its audio is louder than
    ``floor_db`` dBFS. The hit's time is then refined to the sample: the first sample, up to
    ``search_ms`` before the end of the frame that fired, whose amplitude reaches ``rise`` (10 %) of the
    way from the level before the hit to the hit's peak and is followed within ``attack_ms`` by
    ``attack_rise`` of that rise (``audio_utils.find_onset``'s rule, made robust to the tail of an
    earlier hit and its swells). A hit must rise ``min_rise_db`` above the level before it. A hit less
    than ``min_gap_ms`` after the previous one is dropped (a hand clap's bursts are one hit), and so is
    one less than ``mask_ms`` after it whose rise (peak - level before) is more than ``mask_db`` below
    the previous hit's peak (the pulses in an electronic kick's decay). The reported time is the
    onset, or with ``backtrack_ms`` > 0 the start of a soft lead-in after silence
    (:meth:`OnsetDetector._sound_start`). The detector is fed chunks of any size; the offline
    :func:`detect_onsets` is the same detector fed the whole wave, so both give identical hits.

Segments
    A hit at sample ``n`` gets the segment ``[n - pre - margin, max(n - pre, 0) + crop)`` (``pre`` = the
    checkpoint's ``onset_pre_ms``, ``crop`` = its clip ``duration``, ``margin`` = ``margin_ms``),
    cut short where the next hit's segment starts and at the end of the audio. Training's
    featurisation then finds the onset in it (``audio_utils.find_onset``) and crops ``crop`` seconds
    from ``pre`` before it: for an isolated hit that is the very crop training takes from the
    one-shot file. In a stream, a hit is complete (and printed) once its segment end is known and
    received: ``crop - pre`` after the onset plus the detector's look-ahead (see
    :meth:`OnsetDetector.latency_samples`), or earlier when the next hit comes first.

Ringing tails
    A segment after an earlier hit carries ``context`` (the audio just before it). When that audio is not
    silent, the earlier hit's tail is subtracted from the segment first (:func:`suppress_tail`: spectral
    subtraction of the tail's power spectrum at the onset); the first hit and a hit after silence are
    classified from their segment unchanged, so a one-shot file keeps exactly its one-shot probabilities.

Classification
    ``predict_segment(segment: torch.Tensor) -> np.ndarray`` classifies one mono float32 segment at
    the model's sample rate the way training featurises a one-shot (e.g. the predictor's
    ``predict_waveform``). :func:`classify_hits` (a whole wave) and :func:`stream_hits` (chunks)
    return :class:`Hit` records; :func:`format_hit` and :func:`hit_record` give the text line
    ``0.512 s  snare  0.93`` and the JSON object.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from audio_utils import resample

__all__ = ["OnsetParams", "onset_params", "suppress_tail", "OnsetDetector", "Segment", "Hit", "segments",
           "detect_onsets", "classify_hits", "stream_hits", "format_hit", "hit_record", "print_hits"]

PredictSegment = Callable[[torch.Tensor], np.ndarray]


@dataclass(frozen=True)
class OnsetParams:
    """Settings of the onset detector (times in ms, levels in dB)."""
    frame_ms: float = 23.0        # STFT frame (1014 samples at 44.1 kHz)
    hop_ms: float = 5.0           # time between frames: the detector's time step
    n_bands: int = 40             # mel bands of the band-energy spectrogram
    max_bands: int = 1            # > 1: compare each band with the maximum of this many neighbours (SuperFlux)
    f_min: float = 30.0
    f_max: float = 11025.0        # (or the Nyquist frequency if lower): the same bands at any sample rate
    threshold: float = 1.5        # flux (mean dB rise per band) above the median of the preceding frames
    mean_ms: float = 50.0         # how far back that median looks
    peak_ms: float = 15.0         # a hit's flux must be the maximum within this many ms before it ...
    lookahead_ms: float = 10.0    # ... and after it (the detector's look-ahead)
    min_gap_ms: float = 40.0      # minimum time between two hits (a hand clap's bursts are one hit)
    mask_ms: float = 100.0        # a hit less than this after the previous one, whose rise (peak - level before)
    mask_db: float = 12.0         # is more than this below the previous peak, is part of it (0: off)
    floor_db: float = -50.0       # a hit's frame must be louder than this (dBFS, RMS)
    min_rise_db: float = 2.0      # ... and its peak this much above the level before it (the tail of earlier hits)
    band_floor_db: float = -100.0 # band powers below this count as this (silence)
    peak_search_ms: float = 20.0  # the hit's peak is looked for up to this long after its frame
    search_ms: float = 20.0       # ... and its onset up to this long before the frame's end (at most frame + hop)
    rise: float = 0.1             # onset = first sample at this fraction from the level before to the peak
    env_ms: float = 10.0          # trailing-maximum window of the amplitude envelope used for that level
    attack_ms: float = 10.0       # ... counting only a crossing followed within this time (0: any crossing)
    attack_rise: float = 0.3      # ... by this fraction of the rise (skips fluctuations of an earlier hit's tail)
    backtrack_ms: float = 25.0    # > 0: the reported time goes back up to this far, to where the sound starts:
    start_rise: float = 0.03      # the first sample of the run up to the onset above this fraction of the peak ...
    start_gap_ms: float = 2.5     # ... from the quietest point before it (zero crossings shorter than this bridged),
    start_silence: float = 0.01   # when that point is below this fraction of the peak (silence, not a ringing tail)
    tail_subtract: float = 2.0    # > 0: an earlier hit's ringing tail is subtracted from the segment (spectral
    tail_floor_db: float = -20.0  # subtraction, this factor times the tail's power, gain floor in dB) ...
    context_ms: float = 25.0      # ... its spectrum estimated from this much audio before the segment

    def __post_init__(self):
        for name in ("frame_ms", "hop_ms", "min_gap_ms", "mean_ms", "peak_ms", "lookahead_ms"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"onset detector: {name} must be > 0, got {v}")
        if self.hop_ms > self.frame_ms:
            raise ValueError("onset detector: hop_ms must not exceed frame_ms")
        if not 0 < self.search_ms <= self.frame_ms + self.hop_ms:
            raise ValueError("onset detector: search_ms must be in (0, frame_ms + hop_ms]")
        if not 0 < self.rise < 1:
            raise ValueError(f"onset detector: rise must be in (0, 1), got {self.rise}")
        if not self.rise <= self.attack_rise <= 1 or self.attack_ms < 0:
            raise ValueError("onset detector: attack_rise must be in [rise, 1] and attack_ms >= 0")
        if not 0 < self.start_rise <= self.rise:
            raise ValueError(f"onset detector: start_rise must be in (0, rise], got {self.start_rise}")
        if not 0 < self.start_silence <= self.start_rise:
            raise ValueError(f"onset detector: start_silence must be in (0, start_rise], got {self.start_silence}")
        if not all(getattr(self, n) >= 0 for n in ("backtrack_ms", "start_gap_ms", "mask_ms", "mask_db", "min_rise_db",
                                                    "tail_subtract", "context_ms")):
            raise ValueError("onset detector: backtrack_ms, start_gap_ms, mask_ms, mask_db, min_rise_db, tail_subtract "
                             "and context_ms must be >= 0")
        if not self.tail_floor_db <= 0:
            raise ValueError(f"onset detector: tail_floor_db must be <= 0, got {self.tail_floor_db}")


def onset_params(items: list[str] | None, flag: str = "--onset") -> OnsetParams:
    """``OnsetParams`` from ``KEY=VALUE`` strings (a repeatable CLI flag), checked: a bad key, type or
    value is a one-line :class:`training.options.OptionError`."""
    from training.options import OptionError, check_dataclass, parse_pairs

    values = check_dataclass(OnsetParams, parse_pairs(items, flag), "onset detector", flag)
    try:
        return OnsetParams(**values)
    except ValueError as exc:
        raise OptionError(f"{flag}: {exc}") from None


@dataclass
class Segment:
    """One detected hit: its onset sample, the audio ``[start, end)`` to classify it from, and the
    sample where its sound starts (``time``, the reported time; at most ``backtrack_ms`` before ``onset``)."""
    onset: int                    # the 10 %-rise sample the crop is anchored to (as training's find_onset)
    start: int
    end: int
    audio: np.ndarray             # float32, ``end - start`` samples
    ready_at: int                 # stream position (samples received) when the segment was complete
    time: int = -1                # where the hit's sound starts (the reported time); -1: ``onset``
    context: np.ndarray | None = None   # up to ``context_ms`` of audio before ``start``, after the previous hit's
                                        # onset + ``min_gap_ms``; None for the first hit

    def __post_init__(self):
        if self.time < 0:
            self.time = self.onset


@dataclass
class Hit:
    """One classified hit."""
    time_s: float
    label: str
    prob: float
    probs: np.ndarray
    start_s: float = 0.0          # the segment that was classified
    end_s: float = 0.0
    ready_s: float = 0.0          # stream time at which the segment was complete (before compute)
    compute_s: float = 0.0        # time predict_segment took


def _mel_bank(sample_rate: int, n_fft: int, n_bands: int, f_min: float, f_max: float) -> np.ndarray:
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(n_freqs=n_fft // 2 + 1, f_min=f_min, f_max=min(f_max, sample_rate / 2),
                                               n_mels=n_bands, sample_rate=sample_rate, norm="slaney",
                                               mel_scale="slaney")
    return fb.double().numpy()                                                 # [freqs, bands]


class OnsetDetector:
    """Streaming onset detector and hit segmenter (see the module docstring).

    ``feed(chunk)`` takes mono samples (any number, at ``sample_rate``) and returns the
    :class:`Segment` of every hit that became complete; ``flush()`` ends the stream and returns the
    rest. Audio before the first sample counts as silence, so a hit at sample 0 is found. Memory is
    bounded: only the audio of pending segments and about one frame is kept. ``flux`` (the onset
    strength of every frame so far) is kept only with ``keep_flux=True``.
    """

    def __init__(self, sample_rate: int, crop_seconds: float, pre_ms: float = 5.0, margin_ms: float = 5.0,
                 params: OnsetParams | None = None, keep_flux: bool = False):
        if sample_rate <= 0 or not (crop_seconds > 0) or pre_ms < 0 or margin_ms < 0:
            raise ValueError("onset detector: sample_rate and crop_seconds must be > 0, pre_ms and margin_ms >= 0")
        p = self.params = params or OnsetParams()
        sr = self.sample_rate = int(sample_rate)
        ms = lambda v: max(1, int(round(v * 1e-3 * sr)))                                   # noqa: E731
        self.win, self.hop = ms(p.frame_ms), ms(p.hop_ms)
        self.pre, self.margin = int(round(pre_ms * 1e-3 * sr)), int(round(margin_ms * 1e-3 * sr))
        self.crop = int(round(crop_seconds * sr))
        self.n_mean = max(1, int(round(p.mean_ms / p.hop_ms)))
        self.n_before = max(1, int(round(p.peak_ms / p.hop_ms)))
        self.n_after = max(1, int(round(p.lookahead_ms / p.hop_ms)))
        self.min_gap = ms(p.min_gap_ms)
        self.mask = int(round(p.mask_ms * 1e-3 * sr))
        self.peak_search = ms(p.peak_search_ms)
        self.env_len = ms(p.env_ms)
        self.attack = int(round(p.attack_ms * 1e-3 * sr))
        self.search = min(ms(p.search_ms), self.win + self.hop)
        self.backtrack = int(round(p.backtrack_ms * 1e-3 * sr))
        self.start_gap = max(1, int(round(p.start_gap_ms * 1e-3 * sr)))
        self.context = int(round(p.context_ms * 1e-3 * sr))
        self.lookback = (self.win + self.hop + self.env_len + self.backtrack + self.start_gap  # a decision looks back
                         + self.context)                                                     # and a segment's context
        self.window = np.hanning(self.win + 2)[1:-1]                                        # no zero ends
        self.fb = _mel_bank(sr, self.win, p.n_bands, p.f_min, p.f_max)
        self.scale = 1.0 / np.square(self.window.sum() / 2)                # a full-scale sine -> about 0 dB
        self.band_floor = 10 ** (p.band_floor_db / 10)
        self.keep_flux = keep_flux
        self.flux: list[float] = []
        # state
        self.buf = np.zeros(self.lookback, dtype=np.float64)     # virtual silence before sample 0
        self.buf_start = -self.lookback                              # absolute index of buf[0]
        self.total = 0                                           # samples received
        self.n_frames = 0                                        # frames computed (frame k ends at (k+1)*hop)
        self.prev_db = np.full(p.n_bands, 10 * math.log10(self.band_floor))
        # flux of frames [n_frames - len, n_frames), starting with the silence before sample 0
        self.recent_flux: list[float] = [0.0] * self.n_mean
        self.recent_energy: list[float] = [-200.0] * self.n_mean
        self.decided = 0                                         # frames whose hit/no-hit decision is made
        self.last_onset = -10 ** 9
        self.last_emitted = -10 ** 9                             # onset of the last segment emitted
        self.last_peak = 0.0                                     # peak amplitude of the last hit
        self.pending: list[int] = []                             # onsets whose segment is not complete yet
        self.times: dict[int, int] = {}                          # onset -> where its sound starts
        self.done = False

    # ---------------------------------------------------------------- public
    @property
    def latency_samples(self) -> int:
        """Worst-case samples from a hit's onset to its segment being complete (no next hit)."""
        onset = self.pre + self.margin                  # any onset at least this far into the stream
        return self._settle_point(onset) - onset + self.hop

    def feed(self, chunk) -> list[Segment]:
        """Add mono samples; returns the segments of the hits that became complete."""
        if self.done:
            raise RuntimeError("onset detector: feed() after flush()")
        x = np.asarray(chunk, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return []
        if not np.isfinite(x).all():
            raise ValueError(f"audio contains NaN/Inf samples (stream position {self.total / self.sample_rate:.3f} s)")
        self.buf = np.concatenate([self.buf, x])
        self.total += x.size
        self._advance()
        return self._emit(final=False)

    def flush(self) -> list[Segment]:
        """End of the stream: decide the last frames (with the look-ahead that exists) and return every
        pending hit; segments are cut at the last sample."""
        if self.done:
            return []
        self.done = True
        self._advance()
        return self._emit(final=True)

    # ---------------------------------------------------------------- frames and decisions
    def _frame_end(self, k: int) -> int:
        return (k + 1) * self.hop

    def _advance(self) -> None:
        while self.total // self.hop > self.n_frames:       # new frames, at most 1024 at a time (bounded memory)
            n_new = min(1024, self.total // self.hop - self.n_frames)
            ends = self._frame_end(np.arange(self.n_frames, self.n_frames + n_new))
            idx = (ends - self.win - self.buf_start)[:, None] + np.arange(self.win)[None, :]
            frames = self.buf[idx]                                                  # [n, win]
            spec = np.fft.rfft(frames * self.window, axis=1)
            power = (spec.real ** 2 + spec.imag ** 2) * self.scale
            db = 10 * np.log10(np.maximum(power @ self.fb, self.band_floor))       # [n, bands]
            energy = 10 * np.log10(np.maximum(np.mean(frames ** 2, axis=1), 1e-20))
            prev = np.vstack([self.prev_db[None], db[:-1]])
            if self.params.max_bands > 1:                 # SuperFlux: a band must rise above its neighbours' level
                r = self.params.max_bands // 2
                padded = np.pad(prev, ((0, 0), (r, r)), mode="edge")
                prev = np.max(np.stack([padded[:, j:j + prev.shape[1]] for j in range(2 * r + 1)]), axis=0)
            flux = np.maximum(db - prev, 0.0).mean(axis=1)
            self.prev_db = db[-1]
            self.recent_flux.extend(flux.tolist())
            self.recent_energy.extend(energy.tolist())
            if self.keep_flux:
                self.flux.extend(flux.tolist())
            self.n_frames += n_new
        # decide every frame whose look-ahead is computed and whose peak can be searched
        while self.decided < self.n_frames and (self.done or (
                self.decided + self.n_after < self.n_frames
                and self._frame_end(self.decided) + self.peak_search <= self.total)):
            self._decide(self.decided)
            self.decided += 1
        self._trim()

    def _decide(self, k: int) -> None:
        flux, energy = self.recent_flux, self.recent_energy
        i = k - (self.n_frames - len(flux))                   # recent_flux[0] is frame n_frames - len
        f = flux[i]
        before = flux[max(0, i - self.n_before):i]
        after = flux[i + 1:i + 1 + self.n_after]
        if before and f < max(before) or after and f <= max(after):
            return
        hist = flux[max(0, i - self.n_mean):i]
        level = float(np.median(hist)) if hist else 0.0
        if f < level + self.params.threshold or max(energy[i:i + 1 + self.n_after]) < self.params.floor_db:
            return
        refined = self._refine(k)
        if refined is None or refined[0] - self.last_onset < self.min_gap:
            return
        onset, base, peak = refined
        if (self.params.mask_db > 0 and onset - self.last_onset < self.mask
                and peak - base < self.last_peak * 10 ** (-self.params.mask_db / 20)):
            return                                   # a much smaller rise in the decay of the last hit
        self.times[onset] = self._sound_start(onset, peak)
        self.last_onset, self.last_peak = onset, peak
        self.pending.append(onset)

    def _sample(self, lo: int, hi: int) -> np.ndarray:
        """Absolute samples ``[lo, hi)`` (zeros before 0)."""
        return self.buf[lo - self.buf_start:hi - self.buf_start]

    def _refine(self, k: int) -> tuple[int, float, float] | None:
        """The hit's onset: the first sample where the amplitude climbs ``rise`` of the way from the quietest
        level in the frame that fired (a trailing ``env_ms`` maximum, so that the tail of an earlier hit
        counts as the level before) to the hit's peak; with that level and the peak."""
        end = self._frame_end(k)
        lo = max(end - self.search, self.last_onset + 1)
        hi = min(end + self.peak_search, self.total)
        if end <= lo:
            return None
        x = np.abs(self._sample(lo - self.env_len + 1, hi))
        env = torch.nn.functional.max_pool1d(torch.from_numpy(x)[None, None], self.env_len, stride=1)[0, 0].numpy()
        x = x[self.env_len - 1:]                                   # x[i] and env[i] are sample lo + i
        n_min = int(np.argmin(env[:end - lo]))
        base = float(env[n_min])
        peak = float(env[n_min:].max())
        if peak <= base * 10 ** (self.params.min_rise_db / 20) or peak <= 0:
            return None                              # no attack: a change of colour, not a new hit
        p = self.params
        y = x[n_min:]
        cand = np.flatnonzero(y >= base + p.rise * (peak - base))
        if self.attack > 0:   # only a crossing followed by the attack: not a fluctuation of an earlier hit's tail
            strong = np.flatnonzero(y >= base + p.attack_rise * (peak - base))
            nxt = strong[np.minimum(np.searchsorted(strong, cand), len(strong) - 1)]
            cand = cand[(nxt >= cand) & (nxt - cand <= self.attack)]
        return lo + n_min + int(cand[0]), base, peak

    def _sound_start(self, onset: int, peak: float) -> int:
        """Where the hit's sound starts (its reported time; ``onset`` unless ``backtrack_ms`` > 0): at most
        ``backtrack_ms`` before ``onset`` and after the previous onset, from the quietest point before the
        onset (the last minimum of the ``start_gap_ms`` leading maximum of the amplitude, so that zero
        crossings are not quiet), if that point is silent (below ``start_silence`` x peak), the first
        sample of the run up to the onset above ``start_rise`` x peak. A soft lead-in after silence (a
        pedal hi-hat's closing cymbals) counts as the start; silence and earlier hits' tails never do."""
        lo = max(onset - self.backtrack, self.last_onset + 1, self.buf_start)
        if self.backtrack <= 0 or lo >= onset:
            return onset
        x = np.abs(self._sample(lo, onset + self.start_gap))
        env = torch.nn.functional.max_pool1d(torch.from_numpy(x)[None, None], self.start_gap + 1,
                                             stride=1)[0, 0].numpy()[:onset - lo]    # env[i]: max x[i : i+gap]
        quiet = len(env) - 1 - int(np.argmin(env[::-1]))                            # the last minimum
        if env[quiet] >= self.params.start_silence * peak:    # no silence before the hit (an earlier one rings on)
            return onset
        thr = self.params.start_rise * peak
        below = np.flatnonzero(env[quiet:] < thr)
        i = quiet + (int(below[-1]) + 1 if below.size else 0)
        return lo + i + int(np.argmax(x[i:] >= thr))

    # ---------------------------------------------------------------- segments
    def _crop_end(self, onset: int) -> int:
        """End of the crop training takes: ``crop`` samples from ``pre`` before the onset, or from the
        first sample when the onset comes earlier than ``pre``."""
        return max(0, onset - self.pre) + self.crop

    def _settle_point(self, onset: int) -> int:
        """Stream position after which no new hit can start a segment before ``onset``'s crop end."""
        crop_end = self._crop_end(onset)
        # a hit decided later has its onset >= frame_end - win - hop and its segment starts pre + margin earlier;
        # the first frame whose hit could still cut this crop, plus its look-ahead and peak search
        k = (crop_end + self.pre + self.margin + self.win + self.hop) // self.hop
        return max(self._frame_end(k + self.n_after), self._frame_end(k) + self.peak_search, crop_end)

    def _emit(self, final: bool) -> list[Segment]:
        out = []
        while self.pending:
            onset = self.pending[0]
            start = max(0, onset - self.pre - self.margin)
            end = self._crop_end(onset)
            if len(self.pending) > 1:
                end = min(end, max(start + 1, self.pending[1] - self.pre - self.margin))
            elif not final and self.total < self._settle_point(onset):
                break
            if end > self.total and not final:
                break
            end = min(end, self.total)
            audio = self._sample(start, end).astype(np.float32)
            context = None                            # the first hit: nothing rings on before it
            if self.last_emitted > -10 ** 9:
                ctx_lo = min(start, max(start - self.context, self.last_emitted + self.min_gap, self.buf_start))
                context = self._sample(ctx_lo, start).astype(np.float32)
            out.append(Segment(onset, start, end, audio, ready_at=self.total, time=self.times.pop(onset, onset),
                               context=context))
            self.last_emitted = onset
            self.pending.pop(0)
        self._trim()
        return out

    def _trim(self) -> None:
        keep = self._frame_end(self.decided) - self.lookback - self.hop - self.pre - self.margin
        if self.pending:
            keep = min(keep, max(0, self.pending[0] - self.pre - self.margin) - self.context)
        keep = min(keep, self._frame_end(self.n_frames) - self.win)     # the next frame's samples
        drop = keep - self.buf_start
        if drop > 0:
            self.buf = self.buf[drop:]
            self.buf_start = keep
        n_keep = self.n_before + self.n_mean + self.n_after + 2
        undecided = self.n_frames - self.decided
        n_keep = max(n_keep, undecided + self.n_before + self.n_mean + 1)
        if len(self.recent_flux) > 2 * n_keep:
            del self.recent_flux[:len(self.recent_flux) - n_keep]
            del self.recent_energy[:len(self.recent_energy) - n_keep]


# --------------------------------------------------------------------------------------------
# Offline and streaming front ends
# --------------------------------------------------------------------------------------------
def _as_numpy(wave) -> np.ndarray:
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono waveform [samples], got shape {tuple(wave.shape)}")
    return wave


def segments(wave, sample_rate: int, crop_seconds: float, pre_ms: float = 5.0, margin_ms: float = 5.0,
             params: OnsetParams | None = None) -> list[Segment]:
    """Every hit's segment in a whole mono ``wave`` (the streaming detector fed it in one piece)."""
    det = OnsetDetector(sample_rate, crop_seconds, pre_ms, margin_ms, params)
    wave = _as_numpy(wave)
    out = []
    for i in range(0, len(wave), 1 << 16):                 # blocks: memory stays bounded for long files
        out += det.feed(wave[i:i + (1 << 16)])
    return out + det.flush()


def detect_onsets(wave, sample_rate: int, params: OnsetParams | None = None) -> np.ndarray:
    """Onset sample indices of every hit in a mono ``wave`` (divide by ``sample_rate`` for seconds)."""
    return np.asarray([s.time for s in segments(wave, sample_rate, 0.1, 0.0, 0.0, params)], dtype=np.int64)


def suppress_tail(seg: Segment, sample_rate: int, params: OnsetParams) -> np.ndarray:
    """``seg.audio`` without the ringing tail of an earlier hit: spectral subtraction of the tail's power
    spectrum, estimated from the last frames before the onset (``seg.context`` and the segment's pre-roll;
    about 10-ms frames, a quarter hop), times
    ``tail_subtract``, with a gain floor of ``tail_floor_db``; the phase is kept. Unchanged (the very same
    array) for the first hit (a one-shot file is one), when the audio before the onset is silent (below
    ``start_silence`` x the segment's peak: a hit after silence) or shorter than one frame, or with the
    subtraction off."""
    x = seg.audio
    n_fft = 1 << int(round(math.log2(0.01 * sample_rate)))
    if seg.context is None:                   # the first hit (a one-shot file): nothing rings on before it
        return x
    ctx = seg.context
    if params.tail_subtract <= 0 or len(ctx) == 0 or len(x) <= n_fft:
        return x
    peak = float(np.abs(x).max())
    if peak <= 0 or float(np.abs(ctx).max()) < params.start_silence * peak:
        return x
    before = np.concatenate([ctx, x[:max(0, seg.onset - seg.start)]])    # everything before the onset
    if len(before) < n_fft:
        return x
    hop = n_fft // 4
    win = torch.hann_window(n_fft, dtype=torch.float64)
    c = torch.stft(torch.from_numpy(before).double(), n_fft, hop, window=win, center=False, return_complex=True)
    spec = torch.stft(torch.from_numpy(x).double(), n_fft, hop, window=win, center=True, return_complex=True)
    power = (spec.abs() ** 2).clamp_min(1e-30)
    # the tail's level at the onset: per frequency the minimum of the last four frames before it (less is
    # subtracted where a tail stops just before the hit, as in a choked loop)
    tail = (c.abs() ** 2)[:, -4:].amin(dim=1, keepdim=True)
    gain = torch.sqrt((1 - params.tail_subtract * tail / power).clamp_min(10 ** (params.tail_floor_db / 10)))
    y = torch.istft(spec * gain, n_fft, hop, window=win, center=True, length=len(x))
    return y.float().numpy()


def _predict(seg: Segment, sample_rate: int, model_rate: int | None, predict_segment: PredictSegment,
             class_names: Sequence[str], params: OnsetParams | None = None) -> Hit:
    x = torch.from_numpy(suppress_tail(seg, sample_rate, params or OnsetParams()))
    if model_rate and model_rate != sample_rate:
        x = resample(x, sample_rate, model_rate)
    t0 = time.perf_counter()
    probs = np.asarray(predict_segment(x), dtype=np.float64).reshape(-1)
    compute = time.perf_counter() - t0
    if probs.shape[0] != len(class_names):
        raise ValueError(f"predict_segment returned {probs.shape[0]} probabilities for {len(class_names)} classes")
    j = int(np.argmax(probs))
    sr = float(sample_rate)
    return Hit(time_s=seg.time / sr, label=str(class_names[j]), prob=float(probs[j]), probs=probs,
               start_s=seg.start / sr, end_s=seg.end / sr, ready_s=seg.ready_at / sr, compute_s=compute)


def classify_hits(wave, sample_rate: int, predict_segment: PredictSegment, crop_seconds: float, pre_ms: float,
                  class_names: Sequence[str], margin_ms: float = 5.0, params: OnsetParams | None = None,
                  model_rate: int | None = None) -> list[Hit]:
    """Detect every hit of a mono ``wave`` and classify each from its segment.

    ``crop_seconds`` / ``pre_ms``: the checkpoint's ``duration`` / ``onset_pre_ms``. ``model_rate``:
    the checkpoint's sample rate when ``wave`` is at another ``sample_rate`` (segments are resampled).
    """
    params = params or OnsetParams()
    segs = segments(wave, sample_rate, crop_seconds, pre_ms, margin_ms, params)
    return [_predict(s, sample_rate, model_rate, predict_segment, class_names, params) for s in segs]


def stream_hits(chunks: Iterable, sample_rate: int, predict_segment: PredictSegment, crop_seconds: float,
                pre_ms: float, class_names: Sequence[str], margin_ms: float = 5.0,
                params: OnsetParams | None = None, model_rate: int | None = None) -> Iterator[Hit]:
    """Like :func:`classify_hits` for mono chunks of any size: each hit is yielded as soon as its segment
    is complete (``Hit.ready_s`` says when, in stream time). Gives the same hits as the whole wave."""
    det = OnsetDetector(sample_rate, crop_seconds, pre_ms, margin_ms, params)
    for chunk in chunks:
        for seg in det.feed(_as_numpy(np.asarray(chunk).reshape(-1))):
            yield _predict(seg, sample_rate, model_rate, predict_segment, class_names, det.params)
    for seg in det.flush():
        yield _predict(seg, sample_rate, model_rate, predict_segment, class_names, det.params)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
def format_hit(hit: Hit, label_width: int = 0) -> str:
    """``0.512 s  snare  0.93``"""
    return f"{hit.time_s:.3f} s  {hit.label:<{label_width}}  {hit.prob:.2f}"


def hit_record(hit: Hit, class_names: Sequence[str] | None = None, top_k: int = 1) -> dict:
    """One JSON object per hit: time, label, probability, and the ``top_k`` classes when more than one."""
    rec = {"time_s": round(hit.time_s, 6), "label": hit.label, "prob": round(hit.prob, 6),
           "segment_s": [round(hit.start_s, 6), round(hit.end_s, 6)]}
    if class_names is not None and top_k > 1:
        order = np.argsort(-hit.probs, kind="stable")[:top_k]
        rec["top"] = [{"label": str(class_names[i]), "prob": round(float(hit.probs[i]), 6)} for i in order]
    return rec


def print_hits(hits: Iterable[Hit], out=None, as_json: bool = False, class_names: Sequence[str] | None = None,
               top_k: int = 1, source: str | None = None) -> list[Hit]:
    """Print every hit the moment it arrives (one text line, or one JSON object with ``"file": source``),
    flushing each line, so that a stream shows each hit as soon as it is heard; returns the hits."""
    out = out or sys.stdout
    width = max((len(c) for c in class_names), default=0) if class_names else 0
    done = []
    for h in hits:
        if as_json:
            rec = ({"file": source} if source is not None else {}) | hit_record(h, class_names, top_k)
            print(json.dumps(rec), file=out, flush=True)
        else:
            print(format_hit(h, width), file=out, flush=True)
        done.append(h)
    return done
