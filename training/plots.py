"""Figures: the data, training curves, confusion matrices and the model comparison.

Every function returns a matplotlib figure (or draws on the ``ax`` it is given) and never shows
or saves it; :func:`save_figure` writes one atomically. Accuracy axes are never zoomed onto
differences smaller than the sampling noise: test accuracies carry 95 % binomial confidence
intervals (:func:`binomial_ci`) and their axes span at least :data:`MIN_ACC_SPAN`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

# an accuracy axis spans at least this much (about four 95 % half-widths at n=400, p=0.7)
MIN_ACC_SPAN = 0.2


def binomial_ci(acc: float, n: int | None, z: float = 1.96) -> float:
    """Half-width of the normal-approximation confidence interval of an accuracy on ``n`` clips
    (0 when ``n`` is unknown): about 0.045 for 0.7 on 400 clips."""
    if not n or acc is None:
        return 0.0
    return z * math.sqrt(max(acc * (1 - acc), 0.0) / n)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt
    from training.checkpoint import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)
    return path


def _color(i: int):
    import matplotlib.pyplot as plt
    return plt.get_cmap("tab10")(i % 10)


def _accuracy_limits(lows: Sequence[float], highs: Sequence[float]) -> tuple[float, float]:
    """y-limits holding every interval, at least MIN_ACC_SPAN wide, within [0, 1]."""
    lo, hi = min(lows), max(highs)
    pad = max(0.0, MIN_ACC_SPAN - (hi - lo)) / 2
    lo, hi = lo - pad - 0.01, hi + pad + 0.01
    if lo < 0:
        lo, hi = 0.0, hi - lo
    if hi > 1:
        lo, hi = max(0.0, lo - (hi - 1)), 1.0
    return lo, hi


# --------------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------------
def clip_path(data_root: str | os.PathLike, name: str) -> Path:
    """The audio file of an ESC-50 clip name (``.wav`` or the ``.flac`` copy)."""
    root = Path(data_root) / "audio"
    for cand in (root / name, root / f"{Path(name).stem}.flac", root / f"{Path(name).stem}.wav"):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"{root}: no audio for clip {name}")


def plot_clip(ds, data_root, index: int = 0, n_views: int = 2, seed: int = 0):
    """One training clip: waveform, log-mel, normalised log-mel and ``n_views`` augmented views
    exactly as the engine sees them (crop / shift, gain, noise, SpecAugment)."""
    import matplotlib.pyplot as plt
    import audio_utils as au

    cfg = ds.feature_cfg
    name, label = ds.names[index], ds.class_names[int(ds.labels[index])]
    wave = au.load_audio(clip_path(data_root, name), cfg.sample_rate)
    logmel = au.extract_features(wave, cfg)
    norm = ds.normalization or ds.compute_normalization()
    clean = ds.subset([index], augment=False, expansion=1, normalization=norm)
    noisy = ds.subset([index], expansion=1, normalization=norm)
    g = torch.Generator().manual_seed(seed)
    views = [noisy.get_batch([0], g)[0][0] for _ in range(n_views)] if noisy.augment_cfg else []
    panels = [("log-mel (not normalised)", logmel), ("normalised (model input)", clean.get_batch([0])[0][0])]
    panels += [(f"augmented view {i + 1}", v) for i, v in enumerate(views)]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(3.6 * (1 + len(panels)), 3.2))
    t = np.arange(len(wave)) / cfg.sample_rate
    axes[0].plot(t, wave.numpy(), lw=0.4)
    axes[0].set_xlabel("seconds")
    axes[0].set_title(f"{name}\n{label}", fontsize=9)
    for ax, (title, img) in zip(axes[1:], panels):
        im = ax.imshow(np.asarray(img).T, origin="lower", aspect="auto", cmap="magma")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("frame")
        ax.set_ylabel("mel bin")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_class_counts(splits: dict[str, Any]):
    """Stacked bars of clips per class in each split (datasets with ``class_counts()``)."""
    import matplotlib.pyplot as plt

    classes = next(iter(splits.values())).class_names
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(min(16, 2 + 0.3 * len(classes)), 3))
    bottom = np.zeros(len(classes))
    for name, ds in splits.items():
        c = ds.class_counts()
        v = np.array([c.get(k, 0) for k in classes], dtype=float)
        ax.bar(x, v, bottom=bottom, label=name)
        bottom += v
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=90, fontsize=7)
    ax.set_ylabel("clips")
    ax.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Training and evaluation of one model
# --------------------------------------------------------------------------------------------
def training_curves(history: list[dict], title: str = "", total_epochs: int | None = None):
    """Loss and accuracy per epoch, train and validation (accuracy axis 0-1)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
    for a, key, name in ((ax[0], "loss", "loss"), (ax[1], "acc", "accuracy")):
        a.plot(ep, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        a.plot(ep, [h[f"val_{key}"] for h in history], "o-", ms=3, label="validation")
        a.set_xlabel("epoch")
        a.set_ylabel(name)
        if total_epochs:
            a.set_xlim(0.5, total_epochs + 0.5)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
        a.legend()
    ax[1].set_ylim(0, 1)
    best = max(history, key=lambda h: (h["val_acc"], -h["val_loss"]))   # the engine's rule
    fig.suptitle(f"{title}  epoch {ep[-1]}" + (f"/{total_epochs}" if total_epochs else "")
                 + f"  |  best val acc {best['val_acc']:.3f} (epoch {best['epoch']})")
    fig.tight_layout()
    return fig


def plot_confusion(cm, class_names: Sequence[str], title: str = "", normalize: bool = True, ax=None,
                   counts: bool | None = None):
    """Confusion matrix (rows: true class, columns: prediction), row-normalised by default.
    ``counts`` writes the cell values (default: for up to 10 classes). Returns the figure."""
    import matplotlib.pyplot as plt

    raw = np.asarray(cm, dtype=float)
    shown = raw / np.maximum(raw.sum(1, keepdims=True), 1) if normalize else raw
    k = len(class_names)
    if ax is None:
        size = min(14, 3 + 0.22 * k)
        fig, ax = plt.subplots(figsize=(size + 1, size))
    else:
        fig = ax.figure
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fs = 8 if k <= 15 else 6
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(class_names, rotation=90 if k > 10 else 45, ha="center" if k > 10 else "right", fontsize=fs)
    ax.set_yticklabels(class_names, fontsize=fs)
    if counts if counts is not None else k <= 10:
        top = np.nanmax(shown) if shown.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{shown[i, j]:.2f}" if normalize else f"{int(raw[i, j])}", ha="center",
                        va="center", fontsize=8, color="white" if shown[i, j] > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    if k > 10:
        fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


# --------------------------------------------------------------------------------------------
# Comparison of models (``results``: ``{name: training.results.ModelResult}``)
# --------------------------------------------------------------------------------------------
def plot_val_curves(results: dict, ax=None, key: str = "val_acc"):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(results.values()):
        if r.history:
            ax.plot([h["epoch"] for h in r.history], [h[key] for h in r.history], "o-", ms=2,
                    color=_color(i), label=r.name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (fold 4)" if key == "val_acc" else key)
    if key.endswith("acc"):
        ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def _bars(results: dict, ensembles: Sequence[dict] = ()):
    """(labels, accuracies, n, colours) of the models' and ensembles' test accuracies."""
    labels, vals, ns, colors = [], [], [], []
    for i, (n, r) in enumerate(results.items()):
        if r.test_acc is not None:
            labels.append(n)
            vals.append(r.test_acc)
            ns.append(r.metrics.get("n_test"))
            colors.append(_color(i))
    for k, e in enumerate(ensembles, 1):      # numbered (members listed in the results table, same order)
        if e.get("test_acc") is not None:
            labels.append(f"ensemble {k}\n({len(e['members'])} members)")
            vals.append(e["test_acc"])
            ns.append(e.get("n_test"))
            colors.append("0.35")
    return labels, vals, ns, colors


def plot_test_bars(results: dict, ax=None, ensembles: Sequence[dict] = ()):
    """Test accuracies (0-1 axis) with 95 % binomial intervals, ensembles in grey."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    labels, vals, ns, colors = _bars(results, ensembles)
    err = [binomial_ci(v, n) for v, n in zip(vals, ns)]
    bars = ax.bar(range(len(vals)), vals, color=colors, yerr=err, capsize=4, ecolor="0.2")
    for b, v, e in zip(bars, vals, err):
        ax.text(b.get_x() + b.get_width() / 2, v + e + 0.015, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(labels, fontsize=7)
    if ensembles:
        ax.set_xlabel("ensembles (grey): numbered in the order of the results table", fontsize=8)
    ax.set_ylim(0, 1.05)
    n = next((x for x in ns if x), None)
    ax.set_ylabel("test accuracy (fold 5)" + (f"; bars: 95 % CI, n={n}" if n else ""))
    return ax


def plot_accuracy_vs(results: dict, xs: dict[str, float], xlabel: str, ax=None, logx: bool = True):
    """Test accuracy (95 % interval as error bars) against ``xs[name]``; the accuracy axis spans
    at least MIN_ACC_SPAN, so differences inside the noise look like it."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    lows, highs = [], []
    for i, (n, r) in enumerate(results.items()):
        if xs.get(n) and r.test_acc is not None:
            e = binomial_ci(r.test_acc, r.metrics.get("n_test"))
            ax.errorbar(xs[n], r.test_acc, yerr=e, fmt="o", color=_color(i), capsize=3, ms=6)
            ax.annotate(n, (xs[n], r.test_acc), textcoords="offset points", xytext=(5, 4), fontsize=8)
            lows.append(r.test_acc - e)
            highs.append(r.test_acc + e)
    if lows:
        ax.set_ylim(*_accuracy_limits(lows, highs))
    if logx:
        from matplotlib.ticker import LogFormatter
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (fold 5), 95 % CI")
    ax.grid(alpha=0.3)
    return ax


def comparison_figure(results: dict, latency: dict[str, float] | None = None, ensembles: Sequence[dict] = (),
                      title: str = "ESC-50", latency_label: str = "CPU latency, batch 1 (ms)"):
    """2 x 2: validation curves, test-accuracy bars (+ ensembles), accuracy vs parameters and vs
    batch-1 CPU latency (``latency[name]`` in ms, from ``results/latency.json``)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))
    plot_val_curves(results, ax[0, 0])
    ax[0, 0].set_title("validation accuracy per epoch")
    plot_test_bars(results, ax[0, 1], ensembles)
    ax[0, 1].set_title("test accuracy (shipped checkpoints)")
    plot_accuracy_vs(results, {n: r.params for n, r in results.items() if r.params}, "parameters", ax[1, 0])
    ax[1, 0].set_title("accuracy vs size")
    if latency:
        plot_accuracy_vs(results, latency, latency_label, ax[1, 1])
    else:
        ax[1, 1].text(0.5, 0.5, "no latency measured", ha="center", transform=ax[1, 1].transAxes)
    ax[1, 1].set_title("accuracy vs CPU inference latency")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_per_class(results: dict, title: str = "per-class test accuracy minus the mean of the models"):
    """Heat map of each model's per-class accuracy minus the across-model mean, classes sorted by
    the mean (hardest first), with the mean itself as the top row."""
    import matplotlib.pyplot as plt
    from training.results import per_class_matrix

    names, classes, acc = per_class_matrix(results)
    if not names:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no per-class accuracies", ha="center")
        return fig
    mean = np.nanmean(acc, 0)
    order = np.argsort(mean)
    diff = acc[:, order] - mean[order]
    fig, axes = plt.subplots(2, 1, figsize=(min(18, 3 + 0.28 * len(classes)), 1.6 + 0.45 * len(names)),
                             gridspec_kw={"height_ratios": [1, max(1, len(names))]}, sharex=True)
    axes[0].imshow(mean[order][None], cmap="viridis", vmin=0, vmax=1, aspect="auto")
    axes[0].set_yticks([0])
    axes[0].set_yticklabels(["mean acc"])
    lim = max(0.05, float(np.nanmax(np.abs(diff))))
    im = axes[1].imshow(diff, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    axes[1].set_yticks(range(len(names)))
    axes[1].set_yticklabels(names)
    axes[1].set_xticks(range(len(classes)))
    axes[1].set_xticklabels([classes[i] for i in order], rotation=90, fontsize=7)
    fig.colorbar(im, ax=axes, fraction=0.02, label="accuracy - mean")
    axes[0].set_title(title)
    return fig
