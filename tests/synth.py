"""Synthetic audio for the tests: tiny ESC-50-layout datasets and class folders, made on the fly."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

CLASSES = ["low_tone", "high_tone", "noise_bursts"]


def synth_clip(label: int, sr: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Class 0: a low tone; 1: a high tone; 2: noise bursts; random phase, level and noise."""
    t = np.arange(int(sr * seconds)) / sr
    if label == 0:
        x = np.sin(2 * np.pi * rng.uniform(200, 400) * t + rng.uniform(0, 6))
    elif label == 1:
        x = np.sin(2 * np.pi * rng.uniform(2500, 3500) * t + rng.uniform(0, 6))
    else:
        env = (np.sin(2 * np.pi * rng.uniform(1, 3) * t) > 0.3).astype(float)
        x = env * rng.standard_normal(len(t))
    x = 0.3 * rng.uniform(0.5, 1.0) * x + 0.01 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def make_esc50(root: Path, fmt: str = "flac", sr: int = 16000, clips_per_class_fold: int = 2,
               folds=(1, 2, 3, 4, 5), seconds: float = 5.0, seed: int = 0) -> Path:
    """An ESC-50-layout tree: meta/esc50.csv and audio/<name>.wav (or <stem>.flac)."""
    rng = np.random.default_rng(seed)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    n = 0
    for fold in folds:
        for label, cat in enumerate(CLASSES):
            for k in range(clips_per_class_fold):
                n += 1
                name = f"{fold}-{1000 + n}-A-{label}.wav"
                rows.append({"filename": name, "fold": fold, "target": label, "category": cat, "esc10": "False",
                             "src_file": 1000 + n, "take": "A"})
                x = synth_clip(label, sr, seconds, rng)
                if fmt == "wav":
                    sf.write(root / "audio" / name, np.stack([x, x], 1), sr, subtype="PCM_16")  # stereo wav
                else:
                    sf.write(root / "audio" / name.replace(".wav", ".flac"), x, sr, subtype="PCM_16")
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def make_folder_dataset(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """Class folders of short clips at mixed rates, channel counts and lengths."""
    rng = np.random.default_rng(seed)
    rates = [16000, 22050, 44100, 48000]
    for label, cat in enumerate(CLASSES):
        d = root / cat
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            sr = rates[k % len(rates)]
            x = synth_clip(label, sr, rng.uniform(0.2, 1.5), rng)
            data = np.stack([x, 0.5 * x], 1) if k % 2 else x
            ext = ["wav", "flac", "ogg"][k % 3]
            sf.write(d / f"{cat}_{k}.{ext}", data, sr)
    (root / "README.txt").write_text("not audio")
    (root / CLASSES[0] / "notes.xyz").write_text("unknown extension")
    return root


def train_steps(model, x, y, steps: int, lr: float, weight_decay: float = 0.01) -> list[float]:
    """Plain AdamW steps on one batch; the losses, for 'training reduces the loss' tests."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
