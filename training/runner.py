"""``train_model``: datasets + model + engine in one call (used by train.py, notebooks, CV, DDP)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import models
from training.data import DataSpec, build_datasets
from training.engine import TrainConfig, fit


def make_train_config(model_name: str, **overrides) -> TrainConfig:
    """TrainConfig defaults, then the model's ``train_defaults``, then explicit ``overrides``."""
    merged = models.train_defaults(model_name)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(merged)


def train_model(model_name: str, data: DataSpec, out_dir: str | Path, cfg: TrainConfig | None = None,
                preset: str | None = None, model_config: dict | None = None, resume: bool = True,
                on_epoch_end=None, extra_meta: dict | None = None, datasets=None) -> dict:
    """Build the datasets and the model, train through the shared engine, return metrics."""
    cfg = cfg or make_train_config(model_name)
    train_ds, val_ds, test_ds = datasets or build_datasets(data, progress=cfg.progress)
    feat = train_ds.feature_cfg
    import torch
    torch.manual_seed(cfg.seed)      # model init is part of the seeded run
    model = models.build_model(model_name, num_classes=train_ds.num_classes, n_mels=feat.n_mels,
                               n_frames=feat.n_frames, preset=preset, **(model_config or {}))
    meta = {"dataset": data.describe(), "preset": preset}
    if data.one_vs_rest:
        meta["task"] = {"type": "binary", "positive_class": data.one_vs_rest}
    meta.update(extra_meta or {})
    teacher = None
    if cfg.distill_from:
        from training.distill import Teacher
        if train_ds.normalization is None:
            train_ds.set_normalization(*train_ds.compute_normalization())
        teacher = Teacher.from_checkpoints(cfg.distill_from, train_ds, meta["dataset"], cfg.distill_temp)
    return fit(model, train_ds, val_ds, test_ds, cfg, out_dir, resume=resume, meta=meta, on_epoch_end=on_epoch_end,
               teacher=teacher)
