"""Drum-hit classification: the experiment behind ``benchmarks/drums_experiment.py`` and
``notebooks/drum_classification.ipynb``.

Tasks (all on a class-per-folder dataset, default ``../shared/data/drums``):

* ``multiclass``: the five classes kick / snare / hihat / cymbal / tom (``DRUM5``);
* ``<class>_vs_rest``: one-vs-rest, the class against every other clip of the dataset (all folders,
  so "rest" includes clap / rim / perc, which are the hard negatives for snare).

Every run: a stratified train / val / test split (70 / 15 / 15 %) drawn with ``split_seed``, model
initialisation and training order seeded with the same seed, features from the ``drums`` feature
preset (training/presets.py), inverse-frequency class weights, selection on validation accuracy and,
for binary tasks, a decision threshold chosen on validation (the engine does it); metrics are
measured once on the held-out test split.

Environment (notebook): ``TOOLKIT_TINY=1`` selects tiny models, one epoch and one seed;
``TOOLKIT_DATA_DIR`` points to the folder dataset.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

import models
from training.data import DataSpec, build_datasets
from training.presets import augment_preset, feature_preset

REPO_ROOT = Path(__file__).resolve().parent.parent
DRUM5 = ("kick", "snare", "hihat", "cymbal", "tom")
BASELINES = ("mlp", "lstm", "cnn")
SEQUENCE_MODELS = ("liquid_s4", "mamba")

# Compact model sizes for ~220 training clips (the registered defaults are sized for ESC-50);
# chosen here, per experiment, never in the models. Override with ``run_one(model_config=...)``.
DRUM_MODEL_CONFIGS: dict[str, dict] = {
    "mlp": {"hidden": 256},
    "lstm": {"hidden": 64, "layers": 1, "frame_stack": 2},
    "cnn": {"channels": [8, 16, 32, 64]},
    "liquid_s4": {"d_model": 64, "n_layers": 2},
    "mamba": {"d_model": 64, "n_layers": 2},
}
# Engine settings shared by every model in the drums experiment (same budget for all).
DRUM_TRAIN = {"epochs": 30, "batch_size": 32, "lr": 2e-3, "weight_decay": 0.05, "warmup_frac": 0.1,
              "mixup": 0.0, "label_smoothing": 0.0, "class_weights": True, "patience": 0}
TINY_TRAIN = {"epochs": 1, "batch_size": 8, "warmup_frac": 0.0}


def tiny_mode() -> bool:
    """``TOOLKIT_TINY`` is set to a true value (1, true, yes)."""
    return os.environ.get("TOOLKIT_TINY", "").strip().lower() in ("1", "true", "yes", "on")


def drums_dir() -> Path:
    """``$TOOLKIT_DATA_DIR`` if set, else ``../shared/data/drums`` beside the checkout, else ``data/drums``."""
    env = os.environ.get("TOOLKIT_DATA_DIR")
    if env:
        return Path(env)
    for cand in (REPO_ROOT.parent / "shared" / "data" / "drums", REPO_ROOT / "data" / "drums"):
        if cand.is_dir():
            return cand
    return REPO_ROOT / "data" / "drums"


@dataclass(frozen=True)
class Task:
    """``classes``: folders kept (None: all); ``positive``: one-vs-rest class (None: multi-class)."""
    name: str
    classes: tuple[str, ...] | None = None
    positive: str | None = None

    @property
    def binary(self) -> bool:
        return self.positive is not None


def default_tasks(available: Sequence[str], multiclass: Sequence[str] = DRUM5,
                  positives: Sequence[str] = ("kick", "snare")) -> list[Task]:
    """Multi-class on ``multiclass`` (those present; all folders if fewer than two), then
    ``<p>_vs_rest`` for each present positive class (rest = every other folder)."""
    present = [c for c in multiclass if c in available]
    tasks = [Task("multiclass", tuple(present) if len(present) >= 2 else None)]
    pos = [p for p in positives if p in available] or list(available[:1])
    tasks += [Task(f"{p}_vs_rest", None, p) for p in pos]
    return tasks


def list_classes(root: str | os.PathLike) -> list[str]:
    from audio_utils import list_folder_dataset
    return list_folder_dataset(root)[2]


def task_spec(task: Task, root: str | os.PathLike, split_seed: int = 0, features: str = "drums",
              feature_overrides: dict | None = None, augment: bool = True, augment_config: dict | None = None,
              expansion: int | None = 1, cache_dir: str | None = None, group_pattern: str | None = None) -> DataSpec:
    """The :class:`DataSpec` of one task and split seed (``drums`` feature and augment presets)."""
    fc = feature_preset(features).to_dict()
    fc.update(feature_overrides or {})
    aug = augment_preset(features) if augment_config is None else dict(augment_config)
    return DataSpec(kind="folder", root=str(root), classes=task.classes, split_seed=split_seed,
                    feature_config=fc, augment=augment, augment_config=aug, expansion=expansion,
                    cache_dir=cache_dir, one_vs_rest=task.positive, group_pattern=group_pattern)


def model_available(name: str) -> tuple[bool, str]:
    """Whether ``name`` is registered and builds (sequence models may be missing or broken)."""
    try:
        models.build_model(name, num_classes=2, n_mels=16, n_frames=16, preset="tiny" if
                           "tiny" in models.get_spec(name).presets else None)
        return True, ""
    except (ImportError, KeyError) as exc:  # an optional dependency missing, or an unknown name
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


@contextlib.contextmanager
def keep_matplotlib_backend():
    """Restore pyplot's backend afterwards: the engine's ``plot_history`` switches to Agg, which
    would silence the inline figures of a notebook that trains and then plots."""
    prev = None
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib
        prev = matplotlib.get_backend()
    try:
        yield
    finally:
        if prev is not None:
            import matplotlib
            if matplotlib.get_backend() != prev:
                matplotlib.use(prev, force=True)


def run_one(model: str, task: Task, seed: int, root: str | os.PathLike | None = None,
            out_dir: str | os.PathLike | None = None, train: dict | None = None,
            model_config: dict | None = None, preset: str | None = None, threads: int | None = 1,
            device: str = "cpu", datasets=None, quiet: bool = True, **spec_kw) -> dict:
    """Train one model on one task with ``seed`` (split seed = init seed); return a flat row.

    ``quiet`` swallows the engine's per-epoch lines (the row carries the results)."""

    from training.runner import make_train_config, train_model

    root = Path(root or drums_dir())
    spec = task_spec(task, root, split_seed=seed, **spec_kw)
    overrides = dict(DRUM_TRAIN)
    overrides.update(train or {})
    overrides.update(seed=seed, threads=threads, device=device, progress=False)
    cfg = make_train_config(model, **overrides)
    mc = dict(DRUM_MODEL_CONFIGS.get(model, {})) if preset is None else {}
    mc.update(model_config or {})
    if datasets is None:
        datasets = build_datasets(spec)
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="drums-")
        out_dir = tmp.name
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext(), \
                keep_matplotlib_backend():
            m = train_model(model, spec, out_dir, cfg, preset=preset, model_config=mc, resume=False,
                            datasets=datasets)
        extra = _threshold_study(Path(out_dir) / "best.safetensors", datasets) if task.binary else {}
    finally:
        if tmp is not None:
            tmp.cleanup()
    row = {"model": model, "task": task.name, "seed": seed, "params": m["params"],
           "best_epoch": m["best_epoch"], "val_acc": m["val_acc"], "test_acc": m["test_acc"],
           "test_macro_f1": m["test_macro_f1"], "n_test": m["n_test"],
           "time_s": time.perf_counter() - t0, "confusion": m.get("test_confusion_matrix"),
           "class_names": list(datasets[2].class_names)}
    if task.binary:
        b = m["test_binary"]
        row.update(test_f1=b["f1"], test_precision=b["precision"], test_recall=b["recall"],
                   test_auc=b["roc_auc"], threshold=b["threshold"])
        cm = m.get("test_confusion_matrix")
        row["n_pos"] = int(sum(cm[1])) if cm else None
        row.update(extra)
    return row


def midpoint_threshold(scores, positives) -> float:
    """Like :func:`training.metrics.best_threshold` (F1-optimal on validation), but halfway between
    the chosen score and the next lower validation score, instead of exactly at a positive's score
    (which, with 3-4 validation positives, sits at the edge and costs recall on unseen clips)."""
    from training.metrics import best_threshold

    scores = np.asarray(scores, dtype=np.float64)
    t = best_threshold(scores, positives)
    lower = scores[scores < t]
    return float((t + lower.max()) / 2) if len(lower) else t


def _threshold_study(ckpt: Path, datasets) -> dict:
    """Test F1 of the saved model at 0.5 and at :func:`midpoint_threshold` (for the report)."""
    from training.checkpoint import build_from_checkpoint
    from training.engine import predict_proba
    from training.metrics import binary_metrics

    model, _ = build_from_checkpoint(ckpt)
    _, val, test = datasets
    vp, vl = predict_proba(model, val)
    tp, tl = predict_proba(model, test)
    mid = midpoint_threshold(vp[:, 1], vl == 1)
    return {"test_f1_at_0.5": binary_metrics(tp[:, 1], tl == 1, 0.5)["f1"],
            "test_f1_midpoint": binary_metrics(tp[:, 1], tl == 1, mid)["f1"], "threshold_midpoint": mid}


def run_grid(model_names: Iterable[str], tasks: Iterable[Task], seeds: Iterable[int],
             root: str | os.PathLike | None = None, log=print, **kw) -> list[dict]:
    """Every (task, seed, model) once; the datasets of a (task, seed) are built once and shared.

    Models that are not registered or fail to build are skipped with a message (sequence models
    written elsewhere may be missing)."""
    root = Path(root or drums_dir())
    names = []
    for name in model_names:
        ok, why = model_available(name)
        if ok:
            names.append(name)
        else:
            log(f"skipping {name}: {why}")
    rows = []
    spec_keys = ("features", "feature_overrides", "augment", "augment_config", "expansion", "cache_dir",
                 "group_pattern")
    spec_kw = {k: kw[k] for k in spec_keys if k in kw}
    for task in tasks:
        for seed in seeds:
            datasets = build_datasets(task_spec(task, root, split_seed=seed, **spec_kw))
            for name in names:
                row = run_one(name, task, seed, root, datasets=datasets, **kw)
                rows.append(row)
                metric = f"F1 {row['test_f1']:.3f}" if task.binary else f"acc {row['test_acc']:.3f}"
                log(f"{task.name:>16s} seed {seed} {name:>10s}: test {metric} "
                    f"(n={row['n_test']}, {row['time_s']:.0f}s)")
    return rows


# --------------------------------------------------------------------------------------------
# Summaries and plots
# --------------------------------------------------------------------------------------------
def headline(task_name: str) -> str:
    return "test_acc" if task_name == "multiclass" else "test_f1"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def summarize(rows: Sequence[dict], metrics: dict[str, str] | None = None) -> dict[tuple[str, str], dict]:
    """``{(model, task): {metric: (mean, std), "n": seeds}}`` over seeds."""
    out: dict[tuple[str, str], dict] = {}
    keys = sorted({(r["model"], r["task"]) for r in rows}, key=lambda k: (k[1], k[0]))
    for model, task in keys:
        sel = [r for r in rows if r["model"] == model and r["task"] == task]
        wanted = ["test_acc", "test_macro_f1", "time_s"] + (
            ["test_f1", "test_precision", "test_recall", "test_auc", "test_f1_at_0.5", "test_f1_midpoint"]
            if "test_f1" in sel[0] else [])
        out[(model, task)] = {m: mean_std([r.get(m) for r in sel]) for m in wanted}
        out[(model, task)]["n"] = len(sel)
        out[(model, task)]["params"] = sel[0]["params"]
    return out


def _pm(ms: tuple[float, float]) -> str:
    if math.isnan(ms[0]):
        return "n/a"
    return f"{ms[0]:.3f}" if math.isnan(ms[1]) else f"{ms[0]:.3f} ± {ms[1]:.3f}"


def format_table(rows: Sequence[dict]) -> str:
    """Markdown tables (pandas): the headline metric per model and task, then the details per task."""
    import pandas as pd

    s = summarize(rows)
    model_order = [m for m in (*BASELINES, *SEQUENCE_MODELS) if any(k[0] == m for k in s)]
    model_order += sorted({k[0] for k in s} - set(model_order))
    task_order = list(dict.fromkeys(r["task"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    head = pd.DataFrame([{"model": m,
                          "params": f"{next(s[(m, t)]['params'] for t in task_order if (m, t) in s) / 1e3:.0f}k",
                          **{t: _pm(s[(m, t)][headline(t)]) if (m, t) in s else "-" for t in task_order}}
                         for m in model_order])
    parts = [f"Headline (mean ± sample std over {len(seeds)} seed(s) {seeds}: multiclass = test accuracy, "
             "one-vs-rest = test F1 at the validation-chosen threshold)", "", _markdown(head)]
    for t in task_order:
        binary = any("test_f1" in r for r in rows if r["task"] == t)
        cols = ["test_acc", "test_precision", "test_recall", "test_f1", "test_auc", "test_f1_at_0.5",
                "test_f1_midpoint"] if binary else ["test_acc", "test_macro_f1"]
        n_test = sorted({r["n_test"] for r in rows if r["task"] == t})
        n_pos = sorted({r["n_pos"] for r in rows if r["task"] == t and r.get("n_pos") is not None})
        pos = f"; positives: {', '.join(map(str, n_pos))}" if n_pos else ""
        detail = pd.DataFrame([{"model": m, **{c.replace("test_", ""): _pm(s[(m, t)][c]) for c in cols},
                                "s/run": f"{s[(m, t)]['time_s'][0]:.0f}"} for m in model_order if (m, t) in s])
        parts += ["", f"{t} (test clips per seed: {', '.join(map(str, n_test))}{pos})", "", _markdown(detail)]
    return "\n".join(parts)


def _markdown(df) -> str:
    """``df`` as a GitHub table: first column left-aligned, the others right-aligned."""
    return df.to_markdown(index=False, disable_numparse=True,
                          colalign=("left",) + ("right",) * (len(df.columns) - 1))


def plot_summary(rows: Sequence[dict], ax=None):
    """Grouped bars (one group per task, one bar per model) of the headline metric, std as error bars."""
    import matplotlib.pyplot as plt

    s = summarize(rows)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    names = list(dict.fromkeys(r["model"] for r in rows))
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 1.2 * len(tasks) * max(1, len(names)) / 3, 3.4))
    width = 0.8 / max(1, len(names))
    for i, m in enumerate(names):
        means = [s[(m, t)][headline(t)][0] if (m, t) in s else np.nan for t in tasks]
        stds = [np.nan_to_num(s[(m, t)][headline(t)][1]) if (m, t) in s else 0 for t in tasks]
        ax.bar(np.arange(len(tasks)) + (i - (len(names) - 1) / 2) * width, means, width, yerr=stds,
               capsize=3, label=m)
    ax.set_xticks(np.arange(len(tasks)), [f"{t}\n({'acc' if t == 'multiclass' else 'F1'})" for t in tasks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test score")
    ax.legend(fontsize=8, ncol=min(5, len(names)), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return ax


def summed_confusion(rows: Sequence[dict], model: str, task: str = "multiclass"):
    """``(confusion matrix summed over seeds, class names, seeds)`` of ``model`` on ``task``; plot
    it with ``training.plots.plot_confusion(cm, names, normalize=False, ax=...)``."""
    sel = [r for r in rows if r["model"] == model and r["task"] == task and r.get("confusion")]
    if not sel:
        raise ValueError(f"no runs of {model} on {task}")
    cm = np.sum([np.asarray(r["confusion"]) for r in sel], axis=0)
    return cm, sel[0]["class_names"] or [str(i) for i in range(len(cm))], len(sel)


def plot_logmels(root: str | os.PathLike | None = None, classes: Sequence[str] = DRUM5, features: str = "drums",
                 axes=None):
    """One onset-aligned log-mel per class (the first file of each folder), as the models see it."""
    import matplotlib.pyplot as plt

    import audio_utils as au

    root = Path(root or drums_dir())
    cfg = feature_preset(features)
    files, labels, names = au.list_folder_dataset(root)
    shown = [c for c in classes if c in names] or names[:5]
    if axes is None:
        _, axes = plt.subplots(1, len(shown), figsize=(2.4 * len(shown), 2.6), squeeze=False)
        axes = axes[0]
    for ax, c in zip(axes, shown):
        f = files[labels.index(names.index(c))]
        x = au.features_from_file(f, cfg).numpy()
        ax.imshow(x.T, origin="lower", aspect="auto", cmap="magma",
                  extent=(0, cfg.n_frames * cfg.hop_length / cfg.sample_rate * 1000, 0, cfg.n_mels))
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("ms")
    axes[0].set_ylabel("mel bin")
    return axes
