"""Ensembles: the mean of several checkpoints' class probabilities on ESC-50 folds.

Each member is evaluated with its own feature config and training-split normalisation (the ones in
its checkpoint), so models trained with different features can still be averaged.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch


def fold_probabilities(checkpoint: str | os.PathLike, data_root: str | os.PathLike,
                       folds: Sequence[int] | None = None, batch_size: int = 32,
                       n_crops: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Class probabilities of a checkpoint on ESC-50 fold(s) (default: its test folds), evaluated as
    its training run evaluated (the whole clip, or the mean of ``train_config.eval_crops`` crops of
    ``train_config.crop`` seconds; ``n_crops`` overrides the number), in the precision inference serves
    it with (``training.engine.serving_amp``). Returns ``(probs, labels, meta)``."""
    import audio_utils as au
    from training.checkpoint import build_from_checkpoint
    from training.engine import crop_frames_for, predict_proba, serving_amp

    model, meta = build_from_checkpoint(checkpoint)
    feat = au.FeatureConfig.from_dict(meta["feature_config"])
    folds = tuple(folds or (meta.get("dataset") or {}).get("test_folds") or (5,))
    norm = meta["normalization"]
    ds = au.esc50_dataset(data_root, folds, feature_cfg=feat,
                         normalization=(torch.tensor(norm["mean"]), torch.tensor(norm["std"])))
    if ds.class_names != list(meta["class_names"]):
        raise ValueError(f"{checkpoint}: class names differ from the dataset at {data_root}")
    tc = meta.get("train_config") or {}
    n = int(n_crops if n_crops is not None else tc.get("eval_crops") or 1)
    if n > 1 and not tc.get("crop"):
        raise ValueError(f"{checkpoint}: {n} evaluation crops need a training crop length (train_config.crop)")
    views = {"crop_frames": crop_frames_for(float(tc["crop"]), feat), "n_crops": n} if n > 1 else {}
    probs, labels = predict_proba(model, ds, batch_size, "cpu", serving_amp(meta, "cpu"), **views)
    return probs, labels, meta


def cached_fold_probabilities(cache: dict, checkpoint: str | os.PathLike, data_root: str | os.PathLike,
                              folds: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`fold_probabilities` through ``cache`` (a dict the caller keeps): each checkpoint is evaluated
    once per folds, whatever ensembles share it."""
    key = (str(checkpoint), tuple(folds) if folds else None)
    if key not in cache:
        cache[key] = fold_probabilities(checkpoint, data_root, folds)
    return cache[key]


def ensemble_accuracy(checkpoints: dict[str, str | os.PathLike | Sequence[str | os.PathLike]],
                      data_root: str | os.PathLike, folds: Sequence[int] | None = None,
                      cache: dict | None = None) -> dict:
    """Accuracy of the mean of the members' probabilities on ``folds`` (and of each member alone).

    ``checkpoints``: ``{member name: checkpoint path}``, or ``{member name: [paths]}`` for a member
    that is itself the mean of several runs (seeds of one recipe): each member weighs the same, however
    many runs it averages. ``cache`` (a dict kept by the caller) keeps each checkpoint's probabilities
    per folds, so that ensembles sharing members evaluate each checkpoint once. Returns ``{"members",
    "folds", "n", "member_acc", "acc", "macro_f1", "per_class_accuracy"}``.
    """
    from training.metrics import multiclass_metrics

    if not checkpoints:
        raise ValueError("an ensemble needs at least one member")
    cache = {} if cache is None else cache
    probs, labels, class_names = {}, None, None
    for m, cks in checkpoints.items():
        runs = []
        for ck in ([cks] if isinstance(cks, (str, os.PathLike)) else list(cks)):
            p, y, meta = cached_fold_probabilities(cache, ck, data_root, folds)
            if labels is not None and not np.array_equal(labels, y):
                raise ValueError(f"{m}: labels differ from the other members'")
            runs.append(p)
            labels, class_names = y, meta["class_names"]
        if not runs:
            raise ValueError(f"{m}: no checkpoints")
        probs[m] = np.mean(runs, axis=0)
    ens = multiclass_metrics(np.mean(list(probs.values()), axis=0), labels, class_names)
    return {"members": list(checkpoints), "folds": list(folds) if folds else None, "n": int(len(labels)),
            "member_acc": {m: float((p.argmax(1) == labels).mean()) for m, p in probs.items()},
            "acc": ens["accuracy"], "macro_f1": ens["macro_f1"], "per_class_accuracy": ens["per_class_accuracy"]}
