"""Results of trained models as pandas tables: find them, tabulate them, summarise them.

Where the results of model ``NAME`` are found (:func:`find_results`), shipped checkpoints first:

1. ``checkpoints/NAME_esc50.safetensors`` with ``.history.json`` and ``.metrics.json`` (what
   :func:`training.shipping.ship_checkpoint` writes);
2. otherwise the first of ``runs/NAME_esc50/`` (``train.py``), ``runs/NAME_notebook/`` (the
   training notebooks), ``runs/NAME/`` with ``metrics.json`` (and ``history.json``,
   ``best.safetensors``).

Every table is a :class:`pandas.DataFrame`; ``df.to_markdown()`` / ``df.to_csv()`` /
``df.to_string()`` render it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
MAIN_MODELS = ("liquid_s4", "mamba", "vjepa2")
BASELINES = ("cnn", "lstm", "mlp", "wavecnn")   # wavecnn: end to end on the waveform
DATASET_TAG = "esc50"
SUMMARY_KEYS = ("params", "epochs_run", "best_epoch", "val_acc", "test_acc", "test_macro_f1",
                "mean_epoch_time_s", "device", "n_test")


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


def read_json(path: str | os.PathLike, default=None):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    from training.checkpoint import atomic_write

    path = Path(path)
    atomic_write(path, lambda t: Path(t).write_text(json.dumps(obj, indent=1) + "\n"))
    return path


def write_predictions(path: str | os.PathLike, names: Sequence[str], probs: np.ndarray, labels: np.ndarray,
                      class_names: Sequence[str], preds: np.ndarray | None = None) -> Path:
    """One row per clip, atomically: ``clip,true,predicted,prob_predicted,p_<class>...`` (``preds`` default:
    the argmax). ``inference.py --evaluate`` writes it as ``predictions.csv``, training as
    ``val_predictions.csv``; ``benchmarks/ensemble_errors.py`` reads either."""
    import csv

    from training.checkpoint import atomic_write

    preds = np.asarray(probs).argmax(1) if preds is None else preds
    if not len(names) == len(probs) == len(labels) == len(preds):
        raise ValueError(f"{len(names)} names, {len(probs)} rows of probabilities, {len(labels)} labels, "
                         f"{len(preds)} predictions")

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["clip", "true", "predicted", "prob_predicted"] + [f"p_{c}" for c in class_names])
            for name, p, y, j in zip(names, probs, labels, preds):
                w.writerow([name, class_names[int(y)], class_names[int(j)], f"{p[j]:.6f}"] + [f"{v:.6f}" for v in p])
    path = Path(path)
    atomic_write(path, write)
    return path


class PredictionsError(ValueError):
    """A predictions file that cannot be read as one: one line naming it."""


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """A ``predictions.csv`` / ``val_predictions.csv`` (or the folder holding ``predictions.csv``), indexed
    by clip, with columns ``true``, ``predicted`` and ``p_<class>``."""
    path = Path(path)
    f = path / "predictions.csv" if path.is_dir() else path
    if not f.is_file():
        raise PredictionsError(f"{path}: no predictions.csv (write one with inference.py --evaluate --out-dir DIR)")
    df = pd.read_csv(f)
    missing = {"clip", "true", "predicted"} - set(df.columns)
    if missing or not any(c.startswith("p_") for c in df.columns):
        raise PredictionsError(f"{f}: needs columns clip, true, predicted and p_<class> "
                               f"(missing {sorted(missing) or 'p_*'})")
    if df["clip"].duplicated().any():
        raise PredictionsError(f"{f}: a clip appears twice: {df['clip'][df['clip'].duplicated()].iloc[0]}")
    return df.set_index("clip")


def display_path(p: str | os.PathLike) -> str:
    """Repository-relative when inside the repository (summary files stay machine-independent)."""
    try:
        return str(Path(p).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def find_results(checkpoint_dir: str | os.PathLike | None, runs_dir: str | os.PathLike | None,
                 names: Sequence[str] | None = None, tag: str = DATASET_TAG) -> dict[str, ModelResult]:
    """History, metrics and checkpoint of every model in ``names`` that has them (module doc)."""
    import models

    names = list(names or [*MAIN_MODELS, *[b for b in BASELINES if b in models.available()]])
    out: dict[str, ModelResult] = {}
    for name in names:
        if checkpoint_dir is not None:
            ck = Path(checkpoint_dir) / f"{name}_{tag}.safetensors"
            mpath = ck.with_name(f"{name}_{tag}.metrics.json")
            if ck.exists() and mpath.exists():
                out[name] = ModelResult(name, "checkpoint", ck, read_json(ck.with_name(f"{name}_{tag}.history.json"), []),
                                        read_json(mpath, {}))
                continue
        if runs_dir is not None:
            for d in (Path(runs_dir) / f"{name}_{tag}", Path(runs_dir) / f"{name}_notebook", Path(runs_dir) / name):
                if (d / "metrics.json").exists():
                    ck = d / "best.safetensors"
                    out[name] = ModelResult(name, "run", ck if ck.exists() else None,
                                            read_json(d / "history.json", []), read_json(d / "metrics.json", {}))
                    break
    return out


def results_frame(results: dict[str, ModelResult], latency: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per model: source, params, epochs, val / test accuracy, macro-F1, s/epoch, device
    (and ``cpu_ms_b1`` with ``latency``)."""
    rows = []
    for r in results.values():
        m = r.metrics
        rows.append({"model": r.name, "source": r.source, "params": m.get("params"),
                     "epochs": m.get("epochs_run"), "best_epoch": m.get("best_epoch"),
                     "val_acc": m.get("val_acc"), "test_acc": m.get("test_acc"),
                     "test_macro_f1": m.get("test_macro_f1"), "s/epoch": m.get("mean_epoch_time_s"),
                     "device": m.get("device"),
                     **({"cpu_ms_b1": latency.get(r.name)} if latency is not None else {})})
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


def summary(results: dict[str, ModelResult], latency: dict[str, float] | None = None,
            ensembles: Sequence[dict] = (), latency_info: dict | None = None) -> dict:
    """What ``results/summary.json`` holds: per model the metrics the README quotes (and the
    batch-1 CPU latency), the ensembles, and where the latency came from."""
    models_out = {}
    for n, r in results.items():
        models_out[n] = {k: r.metrics.get(k) for k in SUMMARY_KEYS}
        models_out[n]["source"] = display_path(r.checkpoint) if r.checkpoint else r.source
        if latency and n in latency:
            models_out[n]["cpu_latency_ms_batch1"] = latency[n]
    return {"models": models_out, "ensembles": list(ensembles), "latency": latency_info or {}}


# --------------------------------------------------------------------------------------------
# Tables for the notebooks
# --------------------------------------------------------------------------------------------
def class_count_frame(splits: dict[str, Any], max_classes: int = 12) -> pd.DataFrame:
    """Clips per class in each split (datasets with ``class_counts()``); one line per split when
    there are more than ``max_classes`` classes."""
    counts = {name: ds.class_counts() for name, ds in splits.items()}
    classes = next(iter(splits.values())).class_names
    if len(classes) > max_classes:
        return pd.DataFrame([{"split": n, "clips": sum(c.values()), "classes": sum(v > 0 for v in c.values()),
                              "min/class": min(c.values()), "max/class": max(c.values())}
                             for n, c in counts.items()]).set_index("split")
    df = pd.DataFrame({n: [counts[n].get(c, 0) for c in classes] for n in splits}, index=pd.Index(classes, name="class"))
    df.loc["TOTAL"] = df.sum()
    return df


def parameter_frame(model) -> pd.DataFrame:
    """Parameters per top-level child module and in total."""
    rows = [{"module": n, "params": sum(p.numel() for p in m.parameters())} for n, m in model.named_children()]
    own = sum(p.numel() for p in model.parameters(recurse=False))
    if own:
        rows.append({"module": "(own)", "params": own})
    rows.append({"module": "TOTAL", "params": sum(p.numel() for p in model.parameters())})
    return pd.DataFrame(rows).set_index("module")


def worst_classes(per_class: dict[str, float], n: int = 5) -> list[tuple[str, float]]:
    return sorted(per_class.items(), key=lambda kv: kv[1])[:n]


def top_confusions(cm, class_names: Sequence[str], n: int = 5) -> list[tuple[str, str, int]]:
    """The ``n`` most frequent (true, predicted) pairs off the diagonal."""
    cm = np.array(cm)
    np.fill_diagonal(cm, 0)
    out = []
    for f in np.argsort(cm, axis=None)[::-1][:n]:
        i, j = divmod(int(f), cm.shape[1])
        if cm[i, j] > 0:
            out.append((class_names[i], class_names[j], int(cm[i, j])))
    return out


def per_class_matrix(results: dict[str, ModelResult]) -> tuple[list[str], list[str], np.ndarray]:
    """``(models, classes, acc[models, classes])`` of the per-class test accuracies."""
    names = [n for n, r in results.items() if r.metrics.get("test_per_class_accuracy")]
    if not names:
        return [], [], np.zeros((0, 0))
    classes = list(results[names[0]].metrics["test_per_class_accuracy"])
    acc = np.array([[results[n].metrics["test_per_class_accuracy"].get(c, np.nan) for c in classes] for n in names])
    return names, classes, acc


def largest_differences(results: dict[str, ModelResult], n: int = 8) -> pd.DataFrame:
    """Classes on which the models disagree most (spread of per-class test accuracy)."""
    names, classes, acc = per_class_matrix(results)
    if len(names) < 2:
        return pd.DataFrame()
    spread = np.nanmax(acc, 0) - np.nanmin(acc, 0)
    rows = [{"class": classes[j], "best": names[int(np.nanargmax(acc[:, j]))],
             "worst": names[int(np.nanargmin(acc[:, j]))], "spread": float(spread[j]),
             **{m: float(acc[i, j]) for i, m in enumerate(names)}} for j in np.argsort(-spread)[:n]]
    return pd.DataFrame(rows).set_index("class")
