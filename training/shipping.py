"""Shipping a finished run: copy it to ``checkpoints/`` where the comparison and README read it.

``checkpoints/<model>_<tag>.safetensors`` (the run's ``best.safetensors``) with
``.history.json`` and ``.metrics.json`` (copies of the run's ``history.json`` / ``metrics.json``).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from training.results import DATASET_TAG


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


def ship_recipe_run(run_dir: str | os.PathLike, recipe: str | os.PathLike, checkpoint_dir: str | os.PathLike,
                    name: str, eval_crops: int | None = None, data_dir: str | None = None,
                    recipe_val_acc: float | None = None, view_note: str | None = None) -> Path:
    """Ship the finished run ``run_dir`` of ``recipe`` as ``checkpoint_dir/<name>.*``.

    The checkpoint must be exactly the recipe's run: its model, training, feature and augmentation
    settings are compared with the recipe's (runtime settings such as threads aside) and any
    difference is an error. Its metadata then gains what the run directory records for runs made
    with ``train.py --recipe``: the recipe file's name, the run's fingerprint, its clips (the split
    by clip names and labels) and its (empty) provenance. ``eval_crops`` (chosen on the validation
    fold) is written into the recorded training config; with ``select: last`` it changes nothing
    in training, only how the checkpoint is evaluated, so the recipe must say the same. The shipped
    validation figures are those of that evaluation.

    A run without a validation split (a refit on every training fold) has no validation figure;
    ``recipe_val_acc`` (required then) is the validation accuracy of the recipe's run that fixed
    its epoch count, recorded as ``recipe_val_acc`` so that the shipped checkpoints can still be
    ranked without reading the test fold (``classify.predictor.default_checkpoint``). ``view_note`` says
    why the evaluation view differs from the one the run was trained with (recorded in the provenance).
    """
    from dataclasses import asdict

    from audio_utils import AugmentConfig, FeatureConfig
    from training import provenance, run_dir as rd
    from training.checkpoint import atomic_write, build_from_checkpoint, save_checkpoint
    from training.cli import data_spec_from_args, model_config_from_args, parse_args, train_config_from_args
    from training.data import build_datasets
    from training.engine import eval_views, metrics_with_loss, predict_proba
    from training.runner import checked_data_spec, checked_model_config

    run_dir, checkpoint_dir = Path(run_dir), Path(checkpoint_dir)
    argv = ["--recipe", str(recipe)] + (["--data-dir", data_dir] if data_dir else [])
    args = parse_args(argv)
    cfg = train_config_from_args(args)
    if eval_crops is not None and cfg.eval_crops != eval_crops:
        raise ValueError(f"{recipe} says eval_crops {cfg.eval_crops}, not {eval_crops}: edit the recipe first")
    data = checked_data_spec(data_spec_from_args(args))
    config, resolved = checked_model_config(args.model, args.preset, model_config_from_args(args), data)
    model, meta = build_from_checkpoint(run_dir / "best.safetensors")

    def differ(a: dict, b: dict, skip=(), added=None) -> list[str]:
        """Keys whose values differ. A key the run's record lacks (``b``) is a setting the toolkit gained
        after the run: the run had its default behaviour, so it matches when ``a`` holds the default of
        the dataclass ``added``."""
        a, b = rd._plain(a), rd._plain(b)
        later = _defaults(added) if added else {}
        return [k for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)
                and not (k not in b and k in later and a.get(k) == later[k])]

    trained = meta.get("train_config") or {}
    bad = [f"train.{k}" for k in differ(asdict(cfg), trained, rd.RUNTIME_FIELDS | {"eval_crops"}, type(cfg))]
    bad += [f"config.{k}" for k in differ(resolved, {**resolved, **meta.get("model_config", {})})]
    recorded = meta.get("dataset") or {}
    bad += [f"data.{k}" for k in ("train_folds", "val_folds", "test_folds", "expansion", "augment")
            if rd._plain(recorded.get(k)) != rd._plain(data.describe().get(k))]
    bad += [f"augment.{k}" for k in differ(data.augment_config, recorded.get("augment_config") or {},
                                           added=AugmentConfig)]
    bad += [f"feature.{k}" for k in differ(data.feature_config, meta.get("feature_config") or {},
                                           added=FeatureConfig)]
    if args.model != meta.get("model_name"):
        bad.insert(0, "model")
    if bad:
        raise ValueError(f"{run_dir} is not a run of {recipe}: {', '.join(bad)} differ")
    if not data.val_folds and recipe_val_acc is None:
        raise ValueError(f"{recipe} has no validation split: give recipe_val_acc, the validation accuracy of "
                         "the recipe's run that fixed its epoch count")
    train_ds, val_ds, test_ds = build_datasets(data)
    settings = rd.run_settings(args.model, resolved, cfg, data)
    meta.update(recipe=Path(recipe).name, run_fingerprint=rd.fingerprint(settings),
                clips=provenance.dataset_clips(train_ds, val_ds, test_ds),
                provenance=provenance.run_provenance(cfg.distill_from, resolved.get("init_from")))
    if int(trained.get("eval_crops") or 1) != int(cfg.eval_crops):
        if not view_note:
            raise ValueError(f"{run_dir} was trained with eval_crops {trained.get('eval_crops') or 1}, the recipe "
                             f"says {cfg.eval_crops}: give view_note, where the new view was chosen")
        meta["provenance"]["eval_view"] = {"trained_with": int(trained.get("eval_crops") or 1),
                                           "eval_crops": int(cfg.eval_crops), "note": view_note}
    meta["train_config"] = {**trained, "eval_crops": int(cfg.eval_crops)}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.update(eval_crops=int(cfg.eval_crops), recipe=Path(recipe).name)
    if val_ds is not None:      # the validation figures as the checkpoint will be evaluated (its recorded view)
        norm = meta["normalization"]
        val_ds.set_normalization(norm["mean"], norm["std"])
        probs, labels = predict_proba(model, val_ds, 32, "cpu", cfg.amp, **eval_views(cfg, val_ds.feature_cfg))
        val = metrics_with_loss(probs, labels, val_ds.class_names, meta.get("task"))
        metrics.update(val_acc=val["accuracy"], val_macro_f1=val["macro_f1"])
        meta["metrics"] = {**(meta.get("metrics") or {}), "val_acc": val["accuracy"], "val_macro_f1": val["macro_f1"]}
    else:
        metrics.update(recipe_val_acc=float(recipe_val_acc))
        meta["metrics"] = {**(meta.get("metrics") or {}), "recipe_val_acc": float(recipe_val_acc)}
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    dest = checkpoint_dir / f"{name}.safetensors"
    save_checkpoint(dest, model, meta)
    atomic_write(checkpoint_dir / f"{name}.history.json",
                 lambda tmp: shutil.copyfile(run_dir / "history.json", tmp))
    atomic_write(checkpoint_dir / f"{name}.metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=1)))
    return dest


def _defaults(cls) -> dict:
    """The default value of each field of dataclass ``cls`` (plain JSON data)."""
    from dataclasses import MISSING, fields

    from training import run_dir as rd

    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = rd._plain(f.default)
        elif f.default_factory is not MISSING:
            out[f.name] = rd._plain(f.default_factory())
    return out


def reship_with_view(checkpoint_dir: str | os.PathLike, name: str, recipe: str | os.PathLike, eval_crops: int,
                     view_note: str, recipe_val_acc: float | None = None, data_dir: str | None = None) -> Path:
    """Ship ``checkpoint_dir/<name>.*`` again under ``recipe``, whose evaluation view (``eval_crops``) was
    chosen on the validation fold after the run: the weights and history stay, the checkpoint is verified
    against the recipe as :func:`ship_recipe_run` does, its test figures (those of the old view) are dropped
    and ``view_note`` is recorded. ``recipe_val_acc``: the recipe run's validation figure in the new view."""
    import tempfile

    checkpoint_dir = Path(checkpoint_dir)
    with tempfile.TemporaryDirectory(dir=checkpoint_dir) as tmp:
        run = Path(tmp)
        shutil.copyfile(checkpoint_dir / f"{name}.safetensors", run / "best.safetensors")
        shutil.copyfile(checkpoint_dir / f"{name}.history.json", run / "history.json")
        metrics = json.loads((checkpoint_dir / f"{name}.metrics.json").read_text())
        metrics = {k: v for k, v in metrics.items() if not k.startswith("test_")}
        (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
        return ship_recipe_run(run, recipe, checkpoint_dir, name, eval_crops=eval_crops, data_dir=data_dir,
                               recipe_val_acc=recipe_val_acc, view_note=view_note)


def record_test_evaluation(checkpoint_dir: str | os.PathLike, name: str, evaluation_dir: str | os.PathLike,
                           command: str) -> dict:
    """Add the one test-fold evaluation of a shipped checkpoint (``inference.py --evaluate``'s
    ``metrics.json`` in ``evaluation_dir``) to its ``<name>.metrics.json``, naming the command, so
    that the README's test figure has its artefact. Refuses an evaluation of another checkpoint."""
    from training.checkpoint import atomic_write

    checkpoint_dir, evaluation_dir = Path(checkpoint_dir), Path(evaluation_dir)
    ev = json.loads((evaluation_dir / "metrics.json").read_text())
    if Path(ev["checkpoint"]).resolve() != (checkpoint_dir / f"{name}.safetensors").resolve():
        raise ValueError(f"{evaluation_dir} evaluated {ev['checkpoint']}, not {name}")
    dest = checkpoint_dir / f"{name}.metrics.json"
    metrics = json.loads(dest.read_text())
    metrics.update(test_acc=ev["accuracy"], test_macro_f1=ev["macro_f1"], n_test=ev["n"],
                   test_per_class_accuracy=ev["per_class_accuracy"], test_confusion_matrix=ev["confusion_matrix"],
                   test_data=ev["data"], test_source={"command": command, "files": str(evaluation_dir)})
    atomic_write(dest, lambda t: Path(t).write_text(json.dumps(metrics, indent=1)))
    return metrics
