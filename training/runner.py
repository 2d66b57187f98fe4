"""``train_model``: datasets + model + engine in one call (used by the train CLI, notebooks, CV, DDP).

Before any data is read, the run directory is opened (:func:`training.run_dir.open_run`): it is
locked, and it resumes only the very same run (same fingerprint) unless ``resume=False``, which
restarts it. Every setting is validated (:mod:`training.options`) first, and the provenance of
teachers and pretrained encoders is checked on the whole chain (:mod:`training.provenance`).
"""
from __future__ import annotations

from pathlib import Path

import models
from training.data import DataSpec, build_datasets
from training.engine import DistInfo, TrainConfig, fit


def make_train_config(model_name: str, **overrides) -> TrainConfig:
    """TrainConfig defaults, then the model's ``train_defaults``, then explicit ``overrides``
    (``None`` values are skipped). Unknown keys, wrong types and out-of-range values raise
    :class:`training.options.OptionError`."""
    from training.options import check_train

    merged = check_train(models.train_defaults(model_name), f"model '{model_name}' train_defaults:")
    merged.update(check_train({k: v for k, v in overrides.items() if v is not None}))
    return TrainConfig.from_dict(merged)


def checked_model_config(model_name: str, preset: str | None, model_config: dict | None,
                         data: DataSpec) -> tuple[dict, dict]:
    """``(checked config, resolved config)``: the options as given, validated, and with the
    preset applied (what the fingerprint records)."""
    from training.options import check_model

    feat = data.feature_cfg()
    config = check_model(model_name, dict(model_config or {}), preset, n_mels=feat.n_mels, n_frames=feat.n_frames)
    return config, {**factory_defaults(model_name), **models.resolve_config(model_name, preset, **config)}


def factory_defaults(model_name: str) -> dict:
    """Default values of a model factory's options (so that giving a default explicitly does
    not make another run)."""
    import inspect

    factory = models.get_spec(model_name).factory
    out = {}
    for p in inspect.signature(factory).parameters.values():
        if p.default is not inspect.Parameter.empty and p.name not in ("num_classes", "n_mels", "n_frames"):
            out[p.name] = list(p.default) if isinstance(p.default, tuple) else p.default
    return out


def checked_data_spec(data: DataSpec, datasets=None) -> DataSpec:
    """``data`` with its options checked and its feature config complete: derived settings
    follow their inputs (``duration`` sets ``n_frames``), or, when the datasets are already
    built, exactly the config they were built with."""
    from dataclasses import replace

    from training.options import OptionError, check_augment, check_range, feature_config

    check_augment(dict(data.augment_config or {}), "DataSpec.augment_config:")
    check_range("expansion", data.expansion, "DataSpec.")
    feat = datasets[0].feature_cfg if datasets else feature_config(None, data.feature_config, "DataSpec.feature_config:")
    if data.augment:            # before any audio is read: augmentations the features cannot take
        from audio_utils import AugmentConfig, check_augment_for
        try:
            check_augment_for(feat, AugmentConfig.from_dict(dict(data.augment_config or {})))
        except ValueError as exc:
            raise OptionError(f"--augment: {exc}") from None
    return replace(data, feature_config=feat.to_dict())


def train_model(model_name: str, data: DataSpec, out_dir: str | Path, cfg: TrainConfig | None = None,
                preset: str | None = None, model_config: dict | None = None, resume: bool = True,
                on_epoch_end=None, extra_meta: dict | None = None, datasets=None) -> dict:
    """Build the datasets and the model, train through the shared engine, return metrics.

    ``resume=True`` continues the run in ``out_dir`` if it is the same run (else a one-line
    :class:`training.run_dir.RunMismatch`); ``resume=False`` deletes its outputs and starts over.
    """
    from training import provenance, run_dir
    from training.options import check_train

    cfg = cfg or make_train_config(model_name)
    check_train({k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "TrainConfig:")
    data = checked_data_spec(data, datasets)
    config, resolved = checked_model_config(model_name, preset, model_config, data)
    settings = run_dir.run_settings(model_name, resolved, cfg, data)
    lock = run_dir.open_run(out_dir, settings, restart=not resume) if DistInfo.current().main else None
    try:
        source_prov = provenance.run_provenance(cfg.distill_from, resolved.get("init_from"))
        train_ds, val_ds, test_ds = datasets or build_datasets(data, progress=cfg.progress)
        feat = train_ds.feature_cfg
        meta = {"dataset": data.describe(), "clips": provenance.dataset_clips(train_ds, val_ds, test_ds),
                "preset": preset, "provenance": source_prov, "run_fingerprint": run_dir.fingerprint(settings)}
        meta["dataset"].pop("cache_dir", None)   # where caches live is no part of a model's record
        if data.one_vs_rest:
            meta["task"] = {"type": "binary", "positive_class": data.one_vs_rest}
        meta.update(extra_meta or {})
        student = provenance.split_record(meta)
        for rec in source_prov["teachers"]:
            provenance.check_lineage(rec, student, rec["name"], "teacher")
        if source_prov["init_from"]:
            rec = source_prov["init_from"]
            provenance.check_lineage(rec, student, rec["name"], "encoder")
        import torch
        torch.manual_seed(cfg.seed)      # model init is part of the seeded run
        model = models.build_model(model_name, num_classes=train_ds.num_classes, n_mels=feat.n_mels,
                                   n_frames=feat.n_frames, preset=preset, **config)
        teacher = None
        if cfg.distill_from:
            from training.distill import Teacher
            if train_ds.normalization is None:
                train_ds.set_normalization(*train_ds.compute_normalization())
            teacher = Teacher.from_checkpoints(cfg.distill_from, train_ds, student, cfg.distill_temp)
        return fit(model, train_ds, val_ds, test_ds, cfg, out_dir, resume=resume, meta=meta,
                   on_epoch_end=on_epoch_end, teacher=teacher)
    finally:
        if lock is not None:
            lock.release()
