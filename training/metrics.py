"""Classification metrics shared by the engine, inference.py and the notebooks (numpy only)."""
from __future__ import annotations

import numpy as np


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of clips of true class ``i`` predicted as ``j``."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def predictions(probs, task: dict | None = None) -> np.ndarray:
    """Predicted class per clip: the argmax, or for a binary task (``task["type"] == "binary"``)
    class 1 when its probability reaches ``task["threshold"]`` (default 0.5). Every metric of a
    binary checkpoint uses this one rule."""
    probs = np.asarray(probs, dtype=np.float64)
    if task and task.get("type") == "binary":
        return (probs[:, 1] >= float(task.get("threshold", 0.5))).astype(np.int64)
    return probs.argmax(1)


def multiclass_metrics(probs, labels, class_names=None, preds=None) -> dict:
    """Accuracy, macro-F1, per-class accuracy (recall) and the confusion matrix of ``preds``
    (default: the argmax of ``probs``)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = probs.shape[1]
    preds = probs.argmax(1) if preds is None else np.asarray(preds, dtype=np.int64)
    cm = confusion_matrix(labels, preds, k)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    return {
        "n": int(len(labels)),
        "accuracy": float((preds == labels).mean()) if len(labels) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_accuracy": {names[i]: float(recall[i]) for i in range(k) if present[i]},
        "confusion_matrix": cm.tolist(),
    }


def roc_auc(scores, positives) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); NaN with one class only."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks of ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(scores, positives, threshold: float = 0.5) -> dict:
    """Precision, recall, F1, accuracy at ``threshold`` and ROC-AUC for scores of the positive class."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    pred = scores >= threshold
    tp = int((pred & pos).sum())
    fp = int((pred & ~pos).sum())
    fn = int((~pred & pos).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": int(len(pos)), "threshold": float(threshold), "precision": precision, "recall": recall,
            "f1": f1, "accuracy": float((pred == pos).mean()) if len(pos) else 0.0, "roc_auc": roc_auc(scores, pos)}


def best_threshold(scores, positives) -> float:
    """The threshold maximising F1 on (validation) scores.

    It is placed halfway between the lowest score it accepts and the next lower score, not on a
    validation example's score, so that it does not overfit a small validation set; 0.5 when there
    are no positives.
    """
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    if not pos.any():
        return 0.5
    uniq = np.unique(scores)
    best_i, best_f1 = 0, -1.0
    for i, t in enumerate(uniq):
        f1 = binary_metrics(scores, pos, t)["f1"]
        if f1 > best_f1:
            best_i, best_f1 = i, f1
    if best_i == 0:
        return float(uniq[0])
    return float((uniq[best_i] + uniq[best_i - 1]) / 2)
