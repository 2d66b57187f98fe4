"""Helpers of inference.py: windowed streaming (stdin PCM, microphone) and evaluation on a labelled split.

Kept apart so that inference.py stays a readable CLI; everything here is reusable from notebooks.
"""
from __future__ import annotations

import csv
import json
import math
import queue
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

import audio_utils as au


class UsageError(Exception):
    """Bad arguments or missing resources: one line on stderr, exit code 2."""


def err(msg: str) -> None:
    """One line on stderr."""
    print(msg.replace("\n", " "), file=sys.stderr, flush=True)

# --------------------------------------------------------------------------------------------
# Streaming (stdin PCM or a microphone)
# --------------------------------------------------------------------------------------------
def stream_windows(chunks: Iterable[np.ndarray], rate: int, window: float, hop: float) -> Iterator[tuple[float, np.ndarray]]:
    """Windows of ``window`` s every ``hop`` s from mono chunks, each yielded as soon as it is complete.

    At the end, samples not covered by a full window give one last, shorter window (padded later,
    as ``iter_audio_blocks`` does for the end of a file). Only about one window is buffered.
    """
    w, h = int(round(window * rate)), int(round(hop * rate))
    buf = np.zeros(0, dtype=np.float32)
    buf_start = next_start = total = covered = 0
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        buf = np.concatenate([buf, chunk]) if len(buf) else chunk
        total += len(chunk)
        while next_start + w <= total:
            off = next_start - buf_start
            yield next_start / rate, buf[off:off + w]
            covered = next_start + w
            next_start += h
            drop = min(next_start - buf_start, len(buf))
            buf, buf_start = buf[drop:], buf_start + drop
    if total > covered and next_start < total:
        off = max(0, next_start - buf_start)
        yield next_start / rate, buf[off:total - buf_start]


def read_pcm(stream, fmt: str, channels: int, frames_per_read: int) -> Iterator[np.ndarray]:
    """Raw little-endian PCM (s16le or f32le, interleaved) from a binary stream -> mono float32 chunks."""
    dtype, scale = {"s16le": ("<i2", 1 / 32768.0), "f32le": ("<f4", 1.0)}[fmt]
    frame_bytes = np.dtype(dtype).itemsize * channels
    rest = b""
    while True:
        data = stream.read(frames_per_read * frame_bytes)
        if not data:
            break
        data = rest + data
        n = len(data) // frame_bytes * frame_bytes
        rest = data[n:]
        if n:
            x = np.frombuffer(data[:n], dtype=dtype).astype(np.float32) * scale
            yield x.reshape(-1, channels).mean(axis=1) if channels > 1 else x
    if rest:
        err(f"warning: stdin: ignored {len(rest)} trailing byte(s) (not a whole {fmt} x {channels} frame)")


def read_microphone(rate: int, channels: int, frames_per_read: int, max_seconds: float | None) -> Iterator[np.ndarray]:
    try:
        import sounddevice as sd
    except Exception:  # noqa: BLE001 - ImportError or a missing PortAudio library
        raise UsageError("--mic needs the optional 'sounddevice' package (and PortAudio): "
                         "pip install sounddevice; or pipe raw PCM into --stream") from None
    q: queue.Queue = queue.Queue()

    def callback(indata, frames, time_info, status):  # runs on the audio thread
        q.put(np.array(indata, dtype=np.float32, copy=True))

    try:
        stream = sd.InputStream(samplerate=rate, channels=channels, dtype="float32",
                                blocksize=frames_per_read, callback=callback)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"--mic: cannot open the input device ({exc})") from None
    got = 0
    with stream:
        while max_seconds is None or got < max_seconds * rate:
            block = q.get()
            got += len(block)
            yield block.mean(axis=1) if block.ndim == 2 else block


# --------------------------------------------------------------------------------------------
# Evaluation on a labelled split (the training engine's own code path)
# --------------------------------------------------------------------------------------------
def _stored_root(desc: dict) -> str | None:
    root = desc.get("root")
    return root if root and Path(root).exists() else None


def evaluation_dataset(pred, dataset: str | None = None, data_dir: str | None = None,
                       folds=None, split: str = "test", split_seed: int | None = None, cache_dir: str | None = None):
    """The labelled dataset to evaluate on, featurised and normalised as the checkpoint was trained.

    Returns ``(dataset, description)``; the description says which split it is and whether it is
    the split training reported its test metrics on.
    """
    from dataclasses import fields

    from training.data import DataSpec, build_datasets, default_esc50_dir, one_vs_rest

    desc = pred.meta.get("dataset") or {}
    kind = dataset or desc.get("kind") or "esc50"
    if kind not in ("esc50", "folder"):
        raise UsageError(f"--dataset must be esc50 or folder, not {kind!r}")
    same_kind = desc.get("kind", "esc50") == kind
    cache_dir = cache_dir or (desc.get("cache_dir") if same_kind else None)
    norm = tuple(t.cpu() for t in pred.normalization) if pred.normalization is not None else None
    if kind == "esc50":
        root = data_dir or (_stored_root(desc) if same_kind else None) or str(default_esc50_dir())
        folds = tuple(folds) if folds else tuple(desc.get("test_folds") or ()) or (5,)
        ds = au.ESC50Dataset(root, folds, feature_cfg=pred.cfg, cache_dir=cache_dir, normalization=norm,
                             progress=sys.stderr.isatty())
        info = {"dataset": "esc50", "root": str(root), "folds": list(folds)}
        same_split = same_kind and sorted(folds) == sorted(desc.get("test_folds") or [])
    else:
        root = data_dir or (_stored_root(desc) if same_kind else None)
        if not root:
            raise UsageError("--dataset folder needs --data-dir (the checkpoint does not name an existing one)")
        seed = split_seed if split_seed is not None else int(desc.get("split_seed", 0) if same_kind else 0)
        # the split is rebuilt by training.data.build_datasets from the stored description, so that
        # every split option (classes, merge, fractions, group_pattern, ...) is honoured as in training
        known = {f.name for f in fields(DataSpec)}
        base = {k: (tuple(v) if isinstance(v, list) else v) for k, v in desc.items() if k in known} if same_kind else {}
        base.update(kind="folder", root=str(root), split_seed=seed, feature_config=pred.cfg.to_dict(), augment=False,
                    expansion=1, one_vs_rest=None, cache_dir=cache_dir)
        ds = build_datasets(DataSpec(**base), progress=sys.stderr.isatty())[("train", "val", "test").index(split)]
        if norm is not None:
            ds.set_normalization(*norm)
        info = {"dataset": "folder", "root": str(root), "split": split, "split_seed": seed}
        same_split = same_kind and split == "test" and seed == int(desc.get("split_seed", 0))
    if ds.num_clips == 0:
        raise UsageError(f"{root}: the requested split has no clips")
    if pred.binary:
        ds = one_vs_rest(ds, pred.task["positive_class"])
    if ds.class_names != pred.class_names:
        raise UsageError(f"{root}: the dataset's classes ({', '.join(ds.class_names[:6])}...) differ from the "
                         f"checkpoint's ({', '.join(pred.class_names[:6])}...)")
    if same_split and data_dir and desc.get("root"):
        same_split = Path(data_dir).resolve() == Path(desc["root"]).resolve() or not Path(desc["root"]).exists()
    info["same_split_as_training_test"] = bool(same_split)
    return ds, info


def evaluate_checkpoint(pred, ds, batch_size: int | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of ``pred`` on ``ds`` via ``training.engine.predict_proba`` / ``task_metrics``."""
    from training.engine import predict_proba, task_metrics

    probs, labels = predict_proba(pred.model, ds, batch_size or pred.eval_batch_size, pred.device, pred.amp)
    return task_metrics(probs, labels, pred.class_names, pred.task), probs, labels


def finite(obj):
    """NaN / Inf (e.g. ROC-AUC with one class only) -> null, so that the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def save_evaluation(out_dir: Path, metrics: dict, class_names: list[str], names: list[str],
                    probs: np.ndarray, labels: np.ndarray) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    cm = np.asarray(metrics["confusion_matrix"])
    paths = [out_dir / f for f in ("metrics.json", "confusion_matrix.csv", "per_class_accuracy.csv",
                                    "predictions.csv", "confusion_matrix.png")]
    paths[0].write_text(json.dumps(finite(metrics), indent=1))
    with open(paths[1], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["true \\ predicted"] + class_names)
        w.writerows([name] + row.tolist() for name, row in zip(class_names, cm))
    with open(paths[2], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["class", "support", "correct", "accuracy"])
        for i, name in enumerate(class_names):
            n = int(cm[i].sum())
            w.writerow([name, n, int(cm[i, i]), f"{cm[i, i] / n:.6f}" if n else ""])
    with open(paths[3], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["clip", "true", "predicted", "prob_predicted"] + [f"p_{c}" for c in class_names])
        for name, p, y in zip(names, probs, labels):
            j = int(np.argmax(p))
            w.writerow([name, class_names[int(y)], class_names[j], f"{p[j]:.6f}"] + [f"{v:.6f}" for v in p])
    plot_confusion(cm, class_names, paths[4], f"accuracy {metrics['accuracy']:.4f} (n={metrics['n']})")
    return paths


def plot_confusion(cm: np.ndarray, class_names: list[str], path: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = len(class_names)
    size = min(22.0, 3.0 + 0.32 * k)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_evaluation(res: dict, class_names: list[str]) -> str:
    lines = [f"checkpoint: {res['checkpoint']}",
             f"data: {res['data']['dataset']} {res['data']['root']} "
             + (f"fold(s) {','.join(map(str, res['data']['folds']))}" if "folds" in res["data"]
                else f"split {res['data']['split']} (seed {res['data']['split_seed']})"),
             f"accuracy {res['accuracy']:.4f}   macro-F1 {res['macro_f1']:.4f}   n={res['n']}"]
    if res.get("training_test_acc") is not None:
        same = "matches" if res["matches_training"] else "DIFFERS from"
        lines.append(f"{same} the test accuracy training reported: {res['training_test_acc']:.4f}")
    if "binary" in res:
        b = res["binary"]
        lines.append(f"binary ({res['positive_class']} vs rest, threshold {b['threshold']:.3f}): precision "
                     f"{b['precision']:.4f}  recall {b['recall']:.4f}  F1 {b['f1']:.4f}  ROC-AUC {b['roc_auc']:.4f}")
    cm = np.asarray(res["confusion_matrix"])
    width = max(len(c) for c in class_names)
    lines.append("per-class accuracy (support):")
    for i, c in enumerate(class_names):
        n = int(cm[i].sum())
        if n:
            lines.append(f"  {i:3d} {c:<{width}}  {cm[i, i] / n:6.3f}  ({n})")
    cw = max(2, len(str(int(cm.max()) if cm.size else 0)))
    lines.append("confusion matrix (rows: true class, columns: predicted class, by index):")
    lines.append(" " * 6 + " ".join(f"{j:>{cw}}" for j in range(len(class_names))))
    lines.extend(f"  {i:3d} " + " ".join(f"{v:>{cw}}" for v in row) for i, row in enumerate(cm.tolist()))
    return "\n".join(lines)


def limit_samples(chunks: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    for c in chunks:
        if n <= 0:
            return
        yield c[:n]
        n -= len(c)
