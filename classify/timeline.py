"""Timeline picture of a recording (``--plot FILE.png``): waveform and spectrogram with the labels.

Two kinds of labels: the hits of an onset-aligned checkpoint (a line at each hit's time, labelled
with class and probability; :class:`classify.onsets.Hit` or any object with ``time_s``, ``label``
and ``prob``) or the sliding windows of a clip checkpoint (``(start_s, end_s, label, prob)``: a
shaded span per window, labelled). Drawn on a matplotlib Agg canvas (no display, no global
pyplot state) and written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


def _envelope(wave: np.ndarray, sample_rate: int, width: int = 4000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min / max per pixel column, so that an hour-long file draws as fast as a second."""
    n = len(wave)
    cols = max(1, min(width, n))
    edges = np.linspace(0, n, cols + 1).astype(np.int64)
    lo = np.minimum.reduceat(wave, edges[:-1]) if n else np.zeros(1)
    hi = np.maximum.reduceat(wave, edges[:-1]) if n else np.zeros(1)
    t = edges[:-1] / float(sample_rate)
    return t, lo, hi


def _spectrogram(wave: np.ndarray, sample_rate: int, max_frames: int = 2000) -> tuple[np.ndarray, float]:
    """Log power spectrogram ``[freqs, frames]`` (dB) with a hop chosen to keep at most ``max_frames``."""
    import torch

    n_fft = 1024 if sample_rate > 24000 else 512
    hop = max(n_fft // 4, int(np.ceil(len(wave) / max_frames)))
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if x.numel() < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), center=True, return_complex=True)
    db = 10 * torch.log10(spec.abs().square() + 1e-10)
    return db.numpy(), hop / float(sample_rate)


def plot_timeline(path: str | os.PathLike, wave, sample_rate: int, hits: Iterable | None = None,
                  windows: Sequence[tuple[float, float, str, float]] | None = None, title: str = "") -> Path:
    """Write the timeline picture of mono ``wave`` to ``path`` (PNG); returns the path.

    Give ``hits`` (onset checkpoints) or ``windows`` (clip checkpoints), or neither (audio only).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from training.checkpoint import atomic_write

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the timeline picture is a PNG file; give a name ending in .png")
    if path.parent and not path.parent.is_dir():
        raise ValueError(f"{path.parent}: directory not found (for --plot {path})")
    wave = np.asarray(wave.detach().cpu().numpy() if hasattr(wave, "detach") else wave, dtype=np.float32).reshape(-1)
    duration = len(wave) / float(sample_rate)
    hits = list(hits or [])
    windows = list(windows or [])

    fig = Figure(figsize=(max(8.0, min(24.0, 2.0 + 1.5 * duration)), 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_w, ax_s = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.4]})
    t, lo, hi = _envelope(wave, sample_rate)
    ax_w.fill_between(t, lo, hi, color="0.35", linewidth=0.5, step="post")
    ax_w.set_ylabel("amplitude")
    ax_w.set_xlim(0, max(duration, 1e-3))
    db, dt = _spectrogram(wave, sample_rate)
    top = float(db.max()) if db.size else 0.0
    ax_s.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                extent=(0, db.shape[1] * dt, 0, sample_rate / 2000.0), interpolation="nearest")
    ax_s.set_ylabel("kHz")
    ax_s.set_xlabel("time (s)")

    box = dict(facecolor="white", alpha=0.8, linewidth=0, pad=1.0)
    xt = ax_w.get_xaxis_transform()                        # x in seconds, y as a fraction of the axes
    for i, h in enumerate(hits):
        for ax in (ax_w, ax_s):
            ax.axvline(h.time_s, color="tab:cyan", linewidth=1.0, alpha=0.9)
        ax_w.text(h.time_s, 0.97 - 0.16 * (i % 3), f"{h.label} {h.prob:.2f}", transform=xt, fontsize=8,
                  va="top", ha="left", color="tab:blue", bbox=box, clip_on=True)
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    colors: dict[str, str] = {}
    for i, (start, end, label, prob) in enumerate(windows):
        c = colors.setdefault(label, palette[len(colors) % len(palette)])
        lane = i % 2                                        # overlapping windows alternate between two lanes
        ax_w.axvspan(start, end, ymin=0.02 + 0.1 * lane, ymax=0.1 + 0.1 * lane, color=c, alpha=0.7)
        ax_w.text((start + end) / 2, 0.97 - 0.16 * lane, f"{label} {prob:.2f}", transform=xt, fontsize=7,
                  ha="center", va="top", color=c, bbox=box, clip_on=True)
    what = f"{len(hits)} hits" if hits else (f"{len(windows)} windows" if windows else "")
    fig.suptitle(" - ".join(s for s in (title, what) if s), fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
