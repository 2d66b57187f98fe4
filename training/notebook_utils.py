"""Helpers for the notebooks in ``notebooks/``: settings, plots, results loading, latency, ensembles.

The notebook cells stay thin (configuration + calls); everything with logic lives here, where it
is imported, tested and reused by ``benchmarks/collect_results.py``.

Environment (all optional; the tests set them to run every notebook on synthetic data)
--------------------------------------------------------------------------------------
``TOOLKIT_TINY=1``          tiny mode: the models' ``tiny`` presets, 2 epochs, small batches, no
                            copy into ``checkpoints/``, figures and summaries under the runs dir.
``TOOLKIT_DATA_DIR``        ESC-50 root (default: ``training.data.default_esc50_dir()``; in tiny
                            mode a synthetic ESC-50 made once under the temp dir).
``TOOLKIT_RUNS_DIR``        where runs are written / read (default ``runs/``; tiny mode:
                            ``<tmp>/toolkit_tiny_runs``, shared by all notebooks of a session).
``TOOLKIT_CHECKPOINT_DIR``  shipped checkpoints (default ``checkpoints/``; ignored in tiny mode).
``TOOLKIT_RESULTS_DIR``     comparison outputs (default ``results/``; tiny mode: ``<runs>/results``).
``TOOLKIT_EPOCHS``          override the number of epochs (any mode).

Shipped results (what ``compare_models.ipynb`` reads for model ``NAME``)
----------------------------------------------------------------------
``checkpoints/NAME_esc50.safetensors`` (the run's ``best.safetensors``),
``checkpoints/NAME_esc50.history.json`` and ``checkpoints/NAME_esc50.metrics.json`` (copies of the
run's ``history.json`` / ``metrics.json``); :func:`ship_checkpoint` writes all three. A model with no
shipped checkpoint falls back to ``runs/NAME_esc50/`` (``train.py``), then ``runs/NAME_notebook/``
(the training notebooks), each with ``best.safetensors``, ``history.json`` and ``metrics.json``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
MAIN_MODELS = ("liquid_s4", "mamba", "vjepa2")
BASELINES = ("cnn", "lstm", "mlp")
DATASET_TAG = "esc50"
# engine overrides in tiny mode: a couple of short epochs on a few clips
# (one thread: tiny models gain nothing from more, and on a shared CPU extra threads spin and stall)
TINY_TRAIN = {"epochs": 2, "batch_size": 8, "eval_batch_size": 32, "threads": 1, "warmup_frac": 0.0}
TINY_SYNTH = {"clips_per_class_fold": 2, "seconds": 5.0}


# --------------------------------------------------------------------------------------------
# Settings from the environment
# --------------------------------------------------------------------------------------------
def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


@dataclass
class NotebookEnv:
    tiny: bool
    data_dir: Path
    runs_dir: Path
    checkpoint_dir: Path | None      # None in tiny mode: never read or write shipped checkpoints
    results_dir: Path
    epochs: int | None = None

    def describe(self) -> str:
        return "\n".join(f"{k:15s} {v}" for k, v in self.__dict__.items())


def make_synthetic_esc50(root: Path | None = None) -> Path:
    """A small synthetic ESC-50 tree (3 classes, 5 folds; ``tests/synth.py``) for tiny mode."""
    root = Path(root or Path(tempfile.gettempdir()) / "toolkit_tiny_esc50" / "ESC-50")
    if not (root / "meta" / "esc50.csv").exists():
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        try:
            from synth import make_esc50
        finally:
            sys.path.remove(str(REPO_ROOT / "tests"))
        make_esc50(root, **TINY_SYNTH)
    return root


def notebook_env() -> NotebookEnv:
    """Resolve the ``TOOLKIT_*`` variables (see the module docstring)."""
    from training.data import default_esc50_dir

    tiny = env_flag("TOOLKIT_TINY")
    data = os.environ.get("TOOLKIT_DATA_DIR")
    data_dir = Path(data) if data else (make_synthetic_esc50() if tiny else default_esc50_dir())
    runs = os.environ.get("TOOLKIT_RUNS_DIR")
    runs_dir = Path(runs) if runs else (Path(tempfile.gettempdir()) / "toolkit_tiny_runs" if tiny
                                        else REPO_ROOT / "runs")
    ckpt = None if tiny else Path(os.environ.get("TOOLKIT_CHECKPOINT_DIR") or REPO_ROOT / "checkpoints")
    res = os.environ.get("TOOLKIT_RESULTS_DIR")
    results_dir = Path(res) if res else (runs_dir / "results" if tiny else REPO_ROOT / "results")
    epochs = int(os.environ["TOOLKIT_EPOCHS"]) if os.environ.get("TOOLKIT_EPOCHS") else None
    return NotebookEnv(tiny, data_dir, runs_dir, ckpt, results_dir, epochs)


def train_overrides(env: NotebookEnv, overrides: dict | None = None) -> dict:
    """Engine overrides for this mode: tiny settings first, then the notebook's, then TOOLKIT_EPOCHS."""
    out = dict(TINY_TRAIN) if env.tiny else {}
    out.update(overrides or {})
    if env.epochs:
        out["epochs"] = env.epochs
    return out


def is_full_run(model_name: str, cfg, env: NotebookEnv) -> bool:
    """A run worth shipping: not tiny, and at least the model's default number of epochs."""
    import models

    default_epochs = models.train_defaults(model_name).get("epochs", 30)
    return (not env.tiny) and env.checkpoint_dir is not None and cfg.epochs >= default_epochs


def quiet_progress_warnings() -> None:
    """tqdm.auto falls back to a text bar when ipywidgets is missing; hide its warning about it."""
    import warnings
    warnings.filterwarnings("ignore", message="IProgress not found")


# --------------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------------
def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
        ip = get_ipython()
        return ip is not None and "IPKernelApp" in ip.config
    except Exception:
        return False


def show(fig, path: str | os.PathLike | None = None, handle=None):
    """Display a pyplot figure once (and close it so the inline backend does not show it twice);
    optionally save it. Returns the display handle (``update`` it to redraw in place)."""
    import matplotlib.pyplot as plt

    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    if _in_notebook():
        import io
        from IPython.display import Image, display

        buf = io.BytesIO()   # PNG bytes: independent of the matplotlib backend (inline, Agg, ...)
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        img = Image(data=buf.getvalue(), format="png")
        if handle is None:
            handle = display(img, display_id=True)
        else:
            handle.update(img)
    plt.close(fig)
    return handle


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".4g") -> str:
    """A plain-text table (no pandas needed)."""
    if not rows:
        return "(empty)"
    columns = list(columns or rows[0].keys())

    def fmt(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else format(v, floatfmt)
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line, sep] + ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells])


class LiveCurves:
    """``fit``'s ``on_epoch_end(row, history)`` callback: redraws loss / accuracy curves in place
    (IPython display handle); outside a notebook it only keeps the history (the engine prints)."""

    def __init__(self, title: str = "", total_epochs: int | None = None):
        self.title = title
        self.total_epochs = total_epochs
        self.handle = None
        self.history: list[dict] = []

    def figure(self, history: list[dict]):
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        ep = [h["epoch"] for h in history]
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
        for a, key, name in ((ax[0], "loss", "loss"), (ax[1], "acc", "accuracy")):
            a.plot(ep, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
            a.plot(ep, [h[f"val_{key}"] for h in history], "o-", ms=3, label="validation")
            a.set_xlabel("epoch")
            a.set_ylabel(name)
            if self.total_epochs:
                a.set_xlim(0.5, self.total_epochs + 0.5)
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
            a.grid(alpha=0.3)
            a.legend()
        ax[1].set_ylim(0, 1)
        best = max(history, key=lambda h: (h["val_acc"], -h["val_loss"]))   # the engine's rule
        fig.suptitle(f"{self.title}  epoch {ep[-1]}"
                     + (f"/{self.total_epochs}" if self.total_epochs else "")
                     + f"  |  best val acc {best['val_acc']:.3f} (epoch {best['epoch']})")
        fig.tight_layout()
        return fig

    def __call__(self, row: dict, history: list[dict]) -> None:
        self.history = list(history)
        if _in_notebook():
            self.handle = show(self.figure(self.history), handle=self.handle)


# --------------------------------------------------------------------------------------------
# A look at the data
# --------------------------------------------------------------------------------------------
def class_count_table(splits: dict[str, Any], max_classes: int = 12) -> str:
    """Clips per class in each split (datasets with ``class_counts()``); a per-split summary when
    there are more than ``max_classes`` classes."""
    counts = {name: ds.class_counts() for name, ds in splits.items()}
    classes = next(iter(splits.values())).class_names
    if len(classes) > max_classes:   # one line per split
        rows = [{"split": n, "clips": sum(c.values()), "classes": sum(v > 0 for v in c.values()),
                 "min/class": min(c.values()), "max/class": max(c.values())} for n, c in counts.items()]
        return format_table(rows)
    rows = [{"class": c, **{n: counts[n].get(c, 0) for n in splits}} for c in classes]
    rows.append({"class": "TOTAL", **{n: sum(counts[n].values()) for n in splits}})
    return format_table(rows)


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
# Models and evaluation
# --------------------------------------------------------------------------------------------
def parameter_table(model: torch.nn.Module) -> str:
    """Parameters per top-level child module and in total."""
    rows = [{"module": n, "params": sum(p.numel() for p in m.parameters())} for n, m in model.named_children()]
    own = sum(p.numel() for p in model.parameters(recurse=False))
    if own:
        rows.append({"module": "(own)", "params": own})
    rows.append({"module": "TOTAL", "params": sum(p.numel() for p in model.parameters())})
    return format_table(rows)


def plot_confusion(cm, class_names: Sequence[str], title: str = "", normalize: bool = True):
    """Confusion matrix (rows: true class, columns: prediction), row-normalised by default."""
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=float)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(class_names)
    size = min(14, 3 + 0.22 * k)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    fs = 8 if k <= 15 else 6
    ax.set_xticklabels(class_names, rotation=90, fontsize=fs)
    ax.set_yticklabels(class_names, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def worst_classes(per_class: dict[str, float], n: int = 5) -> list[tuple[str, float]]:
    return sorted(per_class.items(), key=lambda kv: kv[1])[:n]


def top_confusions(cm, class_names: Sequence[str], n: int = 5) -> list[tuple[str, str, int]]:
    """The ``n`` most frequent (true, predicted) pairs off the diagonal."""
    cm = np.array(cm)
    np.fill_diagonal(cm, 0)
    flat = np.argsort(cm, axis=None)[::-1][:n]
    out = []
    for f in flat:
        i, j = divmod(int(f), cm.shape[1])
        if cm[i, j] > 0:
            out.append((class_names[i], class_names[j], int(cm[i, j])))
    return out


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild a checkpoint's model (weights loaded, eval mode) and return ``(model, meta)``.

    ``init_from`` (a pretraining file that only seeded the weights) is dropped from the stored
    model config: the checkpoint's own weights replace it, and the file may no longer exist.
    """
    import models
    from training.checkpoint import CheckpointError, load_checkpoint

    state, meta = load_checkpoint(path, device)
    feat = meta["feature_config"]
    config = {k: v for k, v in (meta.get("model_config") or {}).items() if k != "init_from"}
    try:
        model = models.build_model(meta["model_name"], num_classes=len(meta["class_names"]),
                                   n_mels=feat["n_mels"], n_frames=feat["n_frames"], **config)
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild model '{meta.get('model_name')}' ({exc})") from None
    return model.to(device).eval(), meta


def ship_checkpoint(run_dir: str | os.PathLike, model_name: str, checkpoint_dir: str | os.PathLike,
                    tag: str = DATASET_TAG, force: bool = False) -> Path | None:
    """Copy a finished run's ``best.safetensors`` / ``history.json`` / ``metrics.json`` to
    ``checkpoint_dir/<model>_<tag>.safetensors`` / ``.history.json`` / ``.metrics.json``.

    An existing shipped checkpoint is replaced only if the new run's *validation* accuracy is at
    least as high (the test fold never selects), or with ``force``. Returns the checkpoint path,
    or None when nothing was copied.
    """
    from training.checkpoint import atomic_write

    run_dir, checkpoint_dir = Path(run_dir), Path(checkpoint_dir)
    src = {"safetensors": run_dir / "best.safetensors", "history.json": run_dir / "history.json",
           "metrics.json": run_dir / "metrics.json"}
    missing = [str(p) for p in src.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"run is not finished, missing: {', '.join(missing)}")
    dest = {k: checkpoint_dir / f"{model_name}_{tag}.{k}" for k in src}
    new = json.loads(src["metrics.json"].read_text())
    if dest["metrics.json"].exists() and not force:
        old = json.loads(dest["metrics.json"].read_text())
        if (old.get("val_acc") or 0) > (new.get("val_acc") or 0):
            print(f"kept {dest['safetensors']}: its val acc {old['val_acc']:.4f} beats this run's "
                  f"{new['val_acc']:.4f} (force=True to replace)")
            return None
    for k, s in src.items():
        atomic_write(dest[k], lambda tmp, s=s: shutil.copyfile(s, tmp))
    print(f"shipped {dest['safetensors']} (val acc {new.get('val_acc'):.4f}, test acc {new.get('test_acc')})")
    return dest["safetensors"]


# --------------------------------------------------------------------------------------------
# Comparison: results, latency, ensemble
# --------------------------------------------------------------------------------------------
@dataclass
class ModelResult:
    name: str
    source: str                    # "checkpoint" or "run"
    checkpoint: Path | None
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    @property
    def params(self) -> int | None:
        return self.metrics.get("params")

    @property
    def test_acc(self) -> float | None:
        return self.metrics.get("test_acc")


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def find_results(checkpoint_dir: str | os.PathLike | None, runs_dir: str | os.PathLike | None,
                 names: Sequence[str] | None = None, tag: str = DATASET_TAG) -> dict[str, ModelResult]:
    """History, metrics and checkpoint of every model that has them, shipped checkpoints first:

    1. ``checkpoint_dir/<name>_<tag>.safetensors`` + ``.history.json`` + ``.metrics.json``
    2. the first of ``runs_dir/<name>_<tag>/`` (``train.py`` runs), ``runs_dir/<name>_notebook/``
       (training notebooks), ``runs_dir/<name>/`` with a ``metrics.json`` (and ``history.json``,
       ``best.safetensors``).
    """
    import models

    names = list(names or [*MAIN_MODELS, *[b for b in BASELINES if b in models.available()]])
    out: dict[str, ModelResult] = {}
    for name in names:
        if checkpoint_dir is not None:
            ck = Path(checkpoint_dir) / f"{name}_{tag}.safetensors"
            mpath = ck.with_name(f"{name}_{tag}.metrics.json")
            if ck.exists() and mpath.exists():
                out[name] = ModelResult(name, "checkpoint", ck,
                                        _read_json(ck.with_name(f"{name}_{tag}.history.json"), []),
                                        _read_json(mpath, {}))
                continue
        if runs_dir is not None:
            for d in (Path(runs_dir) / f"{name}_{tag}", Path(runs_dir) / f"{name}_notebook", Path(runs_dir) / name):
                if (d / "metrics.json").exists():
                    ck = d / "best.safetensors"
                    out[name] = ModelResult(name, "run", ck if ck.exists() else None,
                                            _read_json(d / "history.json", []), _read_json(d / "metrics.json", {}))
                    break
    return out


def results_table(results: dict[str, ModelResult], latency: dict[str, float] | None = None) -> str:
    rows = []
    for r in results.values():
        m = r.metrics
        rows.append({"model": r.name, "source": r.source, "params": m.get("params"),
                     "epochs": m.get("epochs_run"), "best_epoch": m.get("best_epoch"),
                     "val_acc": m.get("val_acc"), "test_acc": m.get("test_acc"),
                     "test_macro_f1": m.get("test_macro_f1"),
                     "s/epoch": m.get("mean_epoch_time_s"), "device": m.get("device"),
                     **({"cpu_ms_b1": latency.get(r.name)} if latency is not None else {})})
    return format_table(rows)


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, n_frames: int, n_mels: int, repeats: int = 20,
                    warmup: int = 3, threads: int | None = None) -> float:
    """Median wall time (ms) of a batch-1 CPU forward pass of ``[1, n_frames, n_mels]``."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model = model.to("cpu").eval()
        x = torch.randn(1, n_frames, n_mels)
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return float(np.median(times) * 1e3)


def checkpoint_latencies(results: dict[str, ModelResult], repeats: int = 20, warmup: int = 3,
                         threads: int | None = None) -> dict[str, float]:
    out = {}
    for name, r in results.items():
        if r.checkpoint is None:
            continue
        model, meta = load_model(r.checkpoint)
        feat = meta["feature_config"]
        out[name] = measure_latency(model, feat["n_frames"], feat["n_mels"], repeats, warmup, threads)
    return out


def fold_probabilities(checkpoint: str | os.PathLike, data_root: str | os.PathLike,
                       folds: Sequence[int] | None = None, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, dict]:
    """Class probabilities of a checkpoint on the ESC-50 test fold(s), with the checkpoint's own
    feature config and training-split normalisation. Returns ``(probs, labels, meta)``."""
    import audio_utils as au
    from training.engine import predict_proba

    model, meta = load_model(checkpoint)
    feat = au.FeatureConfig.from_dict(meta["feature_config"])
    folds = tuple(folds or (meta.get("dataset") or {}).get("test_folds") or (5,))
    norm = meta["normalization"]
    ds = au.ESC50Dataset(data_root, folds, feature_cfg=feat, normalization=(torch.tensor(norm["mean"]),
                                                                            torch.tensor(norm["std"])))
    if ds.class_names != list(meta["class_names"]):
        raise ValueError(f"{checkpoint}: class names differ from the dataset at {data_root}")
    probs, labels = predict_proba(model, ds, batch_size, "cpu")
    return probs, labels, meta


def ensemble_accuracy(results: dict[str, ModelResult], data_root: str | os.PathLike,
                      members: Sequence[str] | None = None, folds: Sequence[int] | None = None) -> dict:
    """Accuracy of the mean of the members' test probabilities (and of each member alone)."""
    from training.metrics import multiclass_metrics

    members = [m for m in (members or results) if m in results and results[m].checkpoint is not None]
    if not members:
        return {"members": [], "ensemble_acc": None}
    probs, labels, class_names = {}, None, None
    for m in members:
        p, y, meta = fold_probabilities(results[m].checkpoint, data_root, folds)
        if labels is not None and not np.array_equal(labels, y):
            raise ValueError(f"{m}: test labels differ from the other members'")
        probs[m], labels, class_names = p, y, meta["class_names"]
    mean = np.mean([probs[m] for m in members], axis=0)
    ens = multiclass_metrics(mean, labels, class_names)
    return {"members": members, "n": int(len(labels)),
            "member_acc": {m: float((probs[m].argmax(1) == labels).mean()) for m in members},
            "ensemble_acc": ens["accuracy"], "ensemble_macro_f1": ens["macro_f1"],
            "ensemble_per_class_accuracy": ens["per_class_accuracy"]}


# --------------------------------------------------------------------------------------------
# Comparison plots
# --------------------------------------------------------------------------------------------
def _color(i: int):
    import matplotlib.pyplot as plt
    return plt.get_cmap("tab10")(i % 10)


def plot_val_curves(results: dict[str, ModelResult], ax=None, key: str = "val_acc"):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(results.values()):
        if r.history:
            ax.plot([h["epoch"] for h in r.history], [h[key] for h in r.history], "o-", ms=2,
                    color=_color(i), label=r.name)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (fold 4)" if key == "val_acc" else key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_test_bars(results: dict[str, ModelResult], ax=None, ensemble: dict | None = None):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    names = [n for n, r in results.items() if r.test_acc is not None]
    vals = [results[n].test_acc for n in names]
    colors = [_color(list(results).index(n)) for n in names]
    if ensemble and ensemble.get("ensemble_acc") is not None:
        names.append("ensemble\n(" + "+".join(ensemble["members"]) + ")" if len(ensemble["members"]) <= 3
                     else "ensemble")
        vals.append(ensemble["ensemble_acc"])
        colors.append("0.3")
    bars = ax.bar(range(len(vals)), vals, color=colors)
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy (fold 5)")
    return ax


def plot_accuracy_vs(results: dict[str, ModelResult], xs: dict[str, float], xlabel: str, ax=None, logx: bool = True):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for i, (n, r) in enumerate(results.items()):
        if n in xs and xs[n] and r.test_acc is not None:
            ax.scatter(xs[n], r.test_acc, color=_color(i), s=40)
            ax.annotate(n, (xs[n], r.test_acc), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (fold 5)")
    ax.grid(alpha=0.3)
    return ax


def comparison_figure(results: dict[str, ModelResult], latency: dict[str, float] | None = None,
                      ensemble: dict | None = None, title: str = "ESC-50", latency_threads: int | None = None):
    """2 x 2: validation curves, test-accuracy bars (+ ensemble), accuracy vs parameters and vs
    batch-1 CPU latency."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))
    plot_val_curves(results, ax[0, 0])
    ax[0, 0].set_title("validation accuracy per epoch")
    plot_test_bars(results, ax[0, 1], ensemble)
    ax[0, 1].set_title("test accuracy (best-validation checkpoint)")
    plot_accuracy_vs(results, {n: r.params for n, r in results.items() if r.params}, "parameters", ax[1, 0])
    ax[1, 0].set_title("accuracy vs size")
    if latency:
        n = latency_threads or torch.get_num_threads()
        plot_accuracy_vs(results, latency, f"CPU latency, batch 1 (ms, {n} thread{'s' if n > 1 else ''})", ax[1, 1])
    ax[1, 1].set_title("accuracy vs CPU inference latency")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def largest_differences(results: dict[str, ModelResult], n: int = 8) -> list[dict]:
    """Classes on which the models disagree most (spread of per-class test accuracy)."""
    names, classes, acc = per_class_matrix(results)
    if len(names) < 2:
        return []
    spread = np.nanmax(acc, 0) - np.nanmin(acc, 0)
    rows = []
    for j in np.argsort(-spread)[:n]:
        rows.append({"class": classes[j], "best": names[int(np.nanargmax(acc[:, j]))],
                     "worst": names[int(np.nanargmin(acc[:, j]))], "spread": float(spread[j]),
                     **{m: float(acc[i, j]) for i, m in enumerate(names)}})
    return rows


def per_class_matrix(results: dict[str, ModelResult]) -> tuple[list[str], list[str], np.ndarray]:
    """``(models, classes, acc[models, classes])`` of the per-class test accuracies."""
    names = [n for n, r in results.items() if r.metrics.get("test_per_class_accuracy")]
    if not names:
        return [], [], np.zeros((0, 0))
    classes = list(results[names[0]].metrics["test_per_class_accuracy"])
    acc = np.array([[results[n].metrics["test_per_class_accuracy"].get(c, np.nan) for c in classes] for n in names])
    return names, classes, acc


def plot_per_class(results: dict[str, ModelResult], title: str = "per-class test accuracy minus the mean of the models"):
    """Heat map of each model's per-class accuracy minus the across-model mean, classes sorted by
    the mean (hardest first), with the mean itself as the top row."""
    import matplotlib.pyplot as plt

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


def summary(results: dict[str, ModelResult], latency: dict[str, float] | None = None,
            ensemble: dict | None = None, latency_threads: int | None = None) -> dict:
    """What ``results/summary.json`` holds (numbers quoted by the README)."""
    models_out = {}
    for n, r in results.items():
        m = r.metrics
        models_out[n] = {k: m.get(k) for k in ("params", "epochs_run", "best_epoch", "val_acc", "test_acc",
                                                "test_macro_f1", "mean_epoch_time_s", "device", "n_test")}
        models_out[n]["source"] = _display_path(r.checkpoint) if r.checkpoint else r.source
        if latency and n in latency:
            models_out[n]["cpu_latency_ms_batch1"] = latency[n]
    ens = {k: v for k, v in (ensemble or {}).items() if k != "ensemble_per_class_accuracy"}
    return {"models": models_out, "ensemble": ens, "latency_threads": latency_threads or torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def _display_path(p: Path) -> str:
    """Repository-relative when inside the repository (summary files stay machine-independent)."""
    try:
        return str(Path(p).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def write_json(path: str | os.PathLike, obj) -> Path:
    from training.checkpoint import atomic_write

    path = Path(path)
    atomic_write(path, lambda t: Path(t).write_text(json.dumps(obj, indent=1)))
    return path
