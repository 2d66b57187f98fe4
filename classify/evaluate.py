"""Evaluate any checkpoint on any labelled audio: ESC-50 folds, a class-folder tree, a split file.

The clips are featurised by the training feature cache (``audio_utils.cached_features``: decode,
resample, pad / onset-crop, full-length log-mels) and scored by the predictor's one path
(:meth:`classify.predictor.Predictor.predict_logmel`: crop(s), normalisation, model), so a file's
probabilities here equal those of per-file inference and of the training engine.

Another dataset: ``classes`` (``"kick,snare,hihat"`` or ``"bd=kick,sd=snare"``) chooses the data's
classes and maps each to a checkpoint class (same name unless ``name=checkpoint_class``); when the
data covers only some of the checkpoint's classes, metrics are computed on those shared classes
(probabilities renormalised over them; the accuracy with all classes competing is reported too).
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

import audio_utils as au
from classify.sources import UsageError, display
from training.checkpoint import atomic_write

WIDTH = 100          # terminal output fits this many columns


# --------------------------------------------------------------------------------------------
# What to evaluate on
# --------------------------------------------------------------------------------------------
def parse_class_map(text: str | None) -> dict[str, str] | None:
    """``"a,b=c"`` -> ``{"a": "a", "b": "c"}`` (data class -> checkpoint class), in order."""
    if text is None:
        return None
    out: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        data, _, ckpt = item.partition("=")
        data, ckpt = data.strip(), (ckpt.strip() or data.strip())
        if not data or data in out:
            raise UsageError(f"--classes: empty or repeated class in {text!r}")
        out[data] = ckpt
    if not out:
        raise UsageError("--classes: no class given")
    return out


def _stored_root(desc: dict) -> str | None:
    root = desc.get("root")
    return root if root and Path(root).exists() else None


def _same_path(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


class EvalData:
    """Clips to evaluate: cached full-length log-mels, labels in checkpoint class indices."""

    def __init__(self, features, labels: np.ndarray, names: list[str], info: dict):
        self.features, self.labels, self.names, self.info = features, labels, names, info


def evaluation_data(pred, dataset: str | None = None, data_dir: str | None = None, folds=None,
                    split: str = "test", split_seed: int | None = None, cache_dir: str | None = None,
                    classes: str | None = None, split_file: str | None = None,
                    group_pattern: str | None = None, group_scope: str | None = None,
                    progress: bool | None = None) -> EvalData:
    """The labelled clips to evaluate ``pred`` on (see the module docstring)."""
    desc = pred.meta.get("dataset") or {}
    kind = dataset or desc.get("kind") or "esc50"
    if kind not in ("esc50", "folder"):
        raise UsageError(f"--dataset must be esc50 or folder, not {kind!r}")
    progress = sys.stderr.isatty() if progress is None else progress
    same_kind = desc.get("kind", "esc50") == kind
    root = data_dir or (_stored_root(desc) if same_kind else None)
    if kind == "esc50" and not root:
        from training.data import default_esc50_dir
        root = str(default_esc50_dir())
    if not root:
        raise UsageError("--dataset folder needs --data-dir (the checkpoint does not name an existing one)")
    same_data = same_kind and (not desc.get("root") or not Path(desc["root"]).exists()
                               or _same_path(root, desc["root"]))
    # the feature cache: where the user says, else the default; never a path from the checkpoint's
    # metadata (a crafted checkpoint must not choose where files are written)
    mapping = parse_class_map(classes)
    cfg = pred.cfg
    if kind == "esc50":
        meta = au.read_esc50_meta(root)
        folds = tuple(folds) if folds else tuple(desc.get("test_folds") or ()) or (5,)
        bad = sorted(set(folds) - set(meta.folds.tolist()))
        if bad:
            raise UsageError(f"{root}: no clips in fold(s) {bad}; folds present: {sorted(set(meta.folds.tolist()))}")
        idx = np.flatnonzero(np.isin(meta.folds, folds))
        data_names = meta.class_names
        if mapping is not None:
            unknown = [c for c in mapping if c not in data_names]
            if unknown:
                raise UsageError(f"--classes: {', '.join(unknown)} not among the dataset's categories")
            keep = [data_names.index(c) for c in mapping]
            idx = idx[np.isin(meta.targets[idx], keep)]
        feats = _esc50_features(meta, idx, cfg, cache_dir, progress)
        data_labels = [data_names[t] for t in meta.targets[idx]]
        names = [meta.names[i] for i in idx]
        info = {"dataset": "esc50", "root": str(root), "folds": list(folds)}
        # ESC-50's folds are the same clips wherever the data lies: the path plays no part
        same_split = same_kind and mapping is None and sorted(folds) == sorted(desc.get("test_folds") or [])
    else:
        if split not in ("train", "val", "test", "all"):
            raise UsageError(f"--split must be train, val, test or all, not {split!r}")
        stored = desc if same_data else {}
        # the training data: list it as training did, so that a split is training's split, and
        # choose --classes afterwards; other data: list only the chosen class folders
        own = same_data and desc.get("kind") == "folder"
        folder_classes = stored.get("classes") if own or mapping is None else list(mapping)
        merge = stored.get("merge") if own or mapping is None else None
        files, labels, data_names = au.list_folder_dataset(root, folder_classes, merge)
        split_file = split_file or (stored.get("split_file") if split != "all" else None)
        seed = split_seed if split_seed is not None else int(stored.get("split_seed", 0))
        if split == "all":
            idx = np.arange(len(files))
        else:
            try:
                parts = au.folder_split(files, labels, root, tuple(stored.get("fractions") or (0.7, 0.15, 0.15)),
                                        seed, group_pattern or stored.get("group_pattern"),
                                        group_scope or stored.get("group_scope") or "class", split_file)
            except (OSError, ValueError) as exc:
                raise UsageError(str(exc)) from None
            idx = parts[au.SPLITS.index(split)]
        if mapping is not None:
            unknown = [c for c in mapping if c not in data_names]
            if unknown:
                raise UsageError(f"--classes: {', '.join(unknown)} not among the dataset's classes "
                                 f"({', '.join(data_names[:10])}{' ...' if len(data_names) > 10 else ''})")
            idx = idx[np.isin(np.asarray(labels)[idx], [data_names.index(c) for c in mapping])]
        # the same file list as training's folder_dataset, so that its feature cache is reused
        feats = au.cached_features(files, cfg, cache_dir, progress=progress)
        feats = feats[idx] if len(idx) else feats[:0]
        data_labels = [data_names[labels[i]] for i in idx]
        names = [display(os.path.relpath(files[i], root)) for i in idx]
        info = {"dataset": "folder", "root": str(root), "split": split}
        if split != "all":
            info.update(split_seed=seed) if not split_file else info.update(split_file=str(split_file))
        same_split = (same_data and mapping is None and split == "test" and not group_pattern and not group_scope
                      and (split_file or None) == (desc.get("split_file") or None)
                      and seed == int(desc.get("split_seed", 0)))
    if len(names) == 0:
        raise UsageError(f"{root}: the requested split has no clips")
    if mapping is not None:
        info["classes"] = dict(mapping)
    labels = _checkpoint_labels(pred, data_labels, mapping)
    info["same_split_as_training_test"] = bool(same_split)
    return EvalData(feats, labels, names, info)


def _esc50_features(meta, idx: np.ndarray, cfg, cache_dir, progress: bool):
    """Log-mels of the clips ``idx``: from training's cache of all clips when it exists (memory-
    mapped), else decoding only those clips (and caching them under their own key)."""
    min_seconds = 0.98 * cfg.duration
    cache = Path(cache_dir or os.environ.get("AUDIO_CACHE_DIR") or au.DEFAULT_CACHE_DIR)
    whole = cache / f"{au._cache_key(meta.files, cfg, extra=f'min{min_seconds}')}.npy"
    if whole.exists():
        return au.cached_features(meta.files, cfg, cache_dir, min_seconds=min_seconds)[idx]
    return au.cached_features([meta.files[i] for i in idx], cfg, cache_dir, min_seconds=min_seconds,
                              progress=progress)


def _checkpoint_labels(pred, data_labels: list[str], mapping: dict[str, str] | None) -> np.ndarray:
    """Data class names -> checkpoint class indices (binary checkpoints: 1 = the positive class)."""
    to_ckpt = mapping or {c: c for c in dict.fromkeys(data_labels)}
    mapped = [to_ckpt[c] for c in data_labels]
    if pred.binary:
        pos = pred.task["positive_class"]
        return np.asarray([1 if c in (pos, pred.class_names[1]) else 0 for c in mapped], dtype=np.int64)
    unknown = sorted({c for c in mapped if c not in pred.class_names})
    if unknown:
        shown = ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise UsageError(f"data class(es) {shown} are not classes of the checkpoint; choose and map classes "
                         f"with --classes (e.g. --classes a,b=checkpoint_class)")
    return np.asarray([pred.class_names.index(c) for c in mapped], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------
def predict_all(pred, features, batch_size: int | None = None) -> np.ndarray:
    """Probabilities ``[clips, classes]`` of cached full-length log-mels, batch by batch."""
    bs = batch_size or pred.eval_batch_size
    out = [pred.predict_logmel(torch.from_numpy(np.asarray(features[s:s + bs], dtype=np.float32)))
           for s in range(0, len(features), bs)]
    return np.concatenate(out) if out else np.zeros((0, pred.num_classes), dtype=np.float32)


def evaluate(pred, data: EvalData, batch_size: int | None = None) -> tuple[dict, np.ndarray]:
    """Metrics on the shared classes (all of them when the data has every class) and the
    probabilities used for them."""
    from training.engine import task_metrics

    probs = predict_all(pred, data.features, batch_size)
    labels = data.labels
    names = list(pred.class_names)
    extra = {}
    present = sorted(set(labels.tolist()))
    if not pred.binary and len(present) < pred.num_classes:
        extra["accuracy_all_classes"] = float((probs.argmax(1) == labels).mean())
        sub = probs[:, present]
        probs = sub / np.clip(sub.sum(1, keepdims=True), 1e-30, None)
        labels = np.searchsorted(np.asarray(present), labels)
        names = [pred.class_names[i] for i in present]
        extra["scored_on_classes"] = names
    metrics = task_metrics(probs, labels, names, pred.task)
    metrics.update(extra)
    metrics["class_names"] = names
    metrics["labels"] = labels
    return metrics, probs


def same_split_as_training_test(pred, data: EvalData) -> bool:
    """Whether ``data`` holds exactly the clips (names and labels) the checkpoint was tested on in
    training: compared by clips when the checkpoint records them, never by directory paths."""
    recorded = (pred.meta.get("clips") or {}).get("test")
    if recorded:
        if "classes" in data.info:
            return False
        evaluated = sorted((n, pred.class_names[int(y)]) for n, y in zip(data.names, data.labels))
        return evaluated == sorted(map(tuple, recorded))
    return bool(data.info["same_split_as_training_test"])     # checkpoints made before clips were recorded


def run_evaluation(pred, args) -> tuple[dict, Path]:
    """Evaluate per parsed CLI ``args``; writes the result files; returns (result, out_dir)."""
    data = evaluation_data(pred, args.dataset, args.data_dir, args.fold, args.split, args.split_seed,
                           args.cache_dir, args.classes, args.split_file, args.group_pattern, args.group_scope)
    metrics, probs = evaluate(pred, data, args.batch_size)
    labels, names = metrics.pop("labels"), metrics.pop("class_names")
    train_test = (pred.meta.get("metrics") or {}).get("test_acc")
    res = {"checkpoint": str(pred.path), "model": pred.meta.get("model_name"), "data": data.info,
           "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"],
           "per_class_accuracy": metrics["per_class_accuracy"], "confusion_matrix": metrics["confusion_matrix"],
           "class_names": names, "precision": "bf16" if pred.amp_dtype is not None else "fp32",
           "eval_crops": int(pred.eval_crops)}
    for key in ("accuracy_all_classes", "scored_on_classes"):
        if key in metrics:
            res[key] = metrics[key]
    if pred.binary:
        res["positive_class"] = pred.task["positive_class"]
        res["threshold"] = pred.task["threshold"]
        res["binary"] = metrics["binary"]
    if same_split_as_training_test(pred, data) and isinstance(train_test, (int, float)):
        res["training_test_acc"] = float(train_test)
        res["matches_training"] = bool(metrics["accuracy"] == train_test)
    else:
        res["training_test_acc"] = None
        res["matches_training"] = None
    if args.out_dir:
        out_dir = Path(args.out_dir)
    else:
        stem = pred.path.parent.name if pred.path.stem in ("best", "last") else pred.path.stem
        info = data.info
        where = f"fold{'-'.join(map(str, info['folds']))}" if "folds" in info else info["split"]
        out_dir = Path(f"eval_{stem}_{where}")
    res["out_dir"] = str(out_dir)
    res["saved"] = [str(p) for p in save_evaluation(out_dir, res, names, data.names, probs, labels)]
    return res, out_dir


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
def finite(obj):
    """NaN / Inf (e.g. ROC-AUC with one class only) -> null, so that the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def _csv_writer(rows_fn):
    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            rows_fn(csv.writer(fh))
    return write


def save_evaluation(out_dir: Path, res: dict, class_names: list[str], names: list[str],
                    probs: np.ndarray, labels: np.ndarray) -> list[Path]:
    """metrics.json, confusion_matrix.csv/.png, per_class_accuracy.csv, predictions.csv (atomic)."""
    from training.metrics import predictions
    from training.results import write_predictions

    out_dir.mkdir(parents=True, exist_ok=True)
    cm = np.asarray(res["confusion_matrix"])
    paths = [out_dir / f for f in ("metrics.json", "confusion_matrix.csv", "per_class_accuracy.csv",
                                    "predictions.csv", "confusion_matrix.png")]
    atomic_write(paths[0], lambda t: Path(t).write_text(json.dumps(finite(res), indent=1)))
    atomic_write(paths[1], _csv_writer(lambda w: (w.writerow(["true \\ predicted"] + class_names),
                                                  w.writerows([n] + row.tolist() for n, row in zip(class_names, cm)))))

    def per_class(w):
        w.writerow(["class", "support", "correct", "accuracy"])
        for i, name in enumerate(class_names):
            n = int(cm[i].sum())
            w.writerow([name, n, int(cm[i, i]), f"{cm[i, i] / n:.6f}" if n else ""])
    atomic_write(paths[2], _csv_writer(per_class))
    task = {"type": "binary", "threshold": res["threshold"]} if "threshold" in res else None
    preds = predictions(probs, task)

    write_predictions(paths[3], names, probs, labels, class_names, preds)
    atomic_write(paths[4], lambda t: plot_confusion(cm, class_names, t, f"accuracy {res['accuracy']:.4f} (n={res['n']})"))
    return paths


def plot_confusion(cm: np.ndarray, class_names: list[str], path, title: str = "") -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(class_names)
    size = min(22.0, 3.0 + 0.32 * k)
    fig = Figure(figsize=(size, size * 0.9))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fs = max(6, min(10, int(400 / max(k, 1))))
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=fs)
    ax.set_yticks(range(k), class_names, fontsize=fs)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fs,
                            color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.04, label="fraction of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")


def fit(text: str, width: int = WIDTH) -> str:
    """Shorten a line to ``width`` columns, eliding the middle (paths keep both ends)."""
    if len(text) <= width:
        return text
    keep = width - 3
    return text[:keep // 2] + "..." + text[len(text) - (keep - keep // 2):]


def format_evaluation(res: dict) -> str:
    """Terminal summary (at most WIDTH columns; the confusion matrix is in the output files)."""
    d = res["data"]
    where = (f"fold(s) {','.join(map(str, d['folds']))}" if "folds" in d
             else f"split {d['split']}" + (f" (seed {d['split_seed']})" if "split_seed" in d else "")
             + (f" (split file {d['split_file']})" if "split_file" in d else ""))
    lines = [f"data: {d['dataset']} {where}: {d['root']}"]
    if "classes" in d:
        lines.append("classes: " + ", ".join(k if k == v else f"{k}={v}" for k, v in d["classes"].items()))
    lines.append(f"accuracy {res['accuracy']:.4f}   macro-F1 {res['macro_f1']:.4f}   n={res['n']}")
    if "scored_on_classes" in res:
        lines.append(f"scored on the {len(res['scored_on_classes'])} shared classes; with all checkpoint classes "
                     f"competing: accuracy {res['accuracy_all_classes']:.4f}")
    if res.get("training_test_acc") is not None:
        same = "matches" if res["matches_training"] else "DIFFERS from"
        lines.append(f"{same} the test accuracy training reported: {res['training_test_acc']:.4f}")
    if "binary" in res:
        b = res["binary"]
        lines.append(f"binary ({res['positive_class']} vs rest, threshold {b['threshold']:.3f} for every metric):")
        lines.append(f"  precision {b['precision']:.4f}  recall {b['recall']:.4f}  F1 {b['f1']:.4f}  "
                     f"ROC-AUC {b['roc_auc']:.4f}")
    cm = np.asarray(res["confusion_matrix"])
    names = res["class_names"]
    width = min(40, max(len(c) for c in names))
    lines.append("per-class accuracy (support):")
    for i, c in enumerate(names):
        n = int(cm[i].sum())
        if n:
            lines.append(f"  {c[:width]:<{width}}  {cm[i, i] / n:6.3f}  ({n})")
    lines.append(f"confusion matrix and per-clip predictions: {res['out_dir']}")
    lines.append("  " + ", ".join(Path(p).name for p in res["saved"]))
    return "\n".join(fit(line) for line in lines)
