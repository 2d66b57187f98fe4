"""Building train / val / test datasets from a small description (CLI, notebooks, CV runner)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import audio_utils as au

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "ESC50_DIR"


def default_esc50_dir() -> Path:
    """``$ESC50_DIR`` if set, else ``data/ESC-50`` (where data/download_esc50.py unpacks it),
    else ``../shared/data/ESC-50`` beside the checkout."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    for cand in (REPO_ROOT / "data" / "ESC-50", REPO_ROOT.parent / "shared" / "data" / "ESC-50"):
        if (cand / "meta" / "esc50.csv").exists():
            return cand
    return REPO_ROOT / "data" / "ESC-50"


@dataclass
class DataSpec:
    """What to train on. ``kind`` is ``"esc50"`` (official folds) or ``"folder"`` (class folders)."""
    kind: str = "esc50"
    root: str | None = None
    train_folds: tuple[int, ...] = (1, 2, 3)
    val_folds: tuple[int, ...] = (4,)
    test_folds: tuple[int, ...] = (5,)
    # folder datasets
    classes: tuple[str, ...] | None = None
    merge: dict | None = None
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    group_pattern: str | None = None   # regex removed from file stems: takes of one source share a split
    group_scope: str = "class"         # "class": groups within a class folder; "dataset": across classes
    split_file: str | None = None      # CSV with columns path,split (train/val/test): overrides the split
    # shared
    feature_config: dict = field(default_factory=dict)
    augment: bool = True
    augment_config: dict = field(default_factory=dict)
    expansion: int | None = None
    cache_dir: str | None = None
    one_vs_rest: str | None = None

    def describe(self) -> dict:
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}
        d["root"] = str(self.resolved_root())
        return d

    def resolved_root(self) -> Path:
        if self.root:
            return Path(self.root)
        if self.kind == "esc50":
            return default_esc50_dir()
        raise ValueError("a folder dataset needs --data-dir")

    def feature_cfg(self) -> au.FeatureConfig:
        return au.FeatureConfig.from_dict(self.feature_config) if self.feature_config else au.FeatureConfig()


def one_vs_rest(ds: au.FeatureDataset, positive: str) -> au.FeatureDataset:
    """Relabel a dataset as ``not-<positive>`` (0) vs ``<positive>`` (1)."""
    if positive not in ds.class_names:
        raise ValueError(f"--one-vs-rest: unknown class '{positive}'; classes: {', '.join(ds.class_names)}")
    pos = ds.class_names.index(positive)
    return ds.relabel((ds.labels == pos).long(), [f"not_{positive}", positive])


def build_datasets(spec: DataSpec, progress: bool = False) -> tuple[au.FeatureDataset, au.FeatureDataset, au.FeatureDataset]:
    """(train, val, test) datasets; normalisation is left to the engine (training split only)."""
    cfg = spec.feature_cfg()
    root = spec.resolved_root()
    aug = au.AugmentConfig.from_dict(spec.augment_config) if spec.augment_config else True
    aug = aug if spec.augment else False
    if spec.kind == "esc50":
        overlap = set(spec.train_folds) & (set(spec.val_folds) | set(spec.test_folds)) or \
            set(spec.val_folds) & set(spec.test_folds)
        if overlap:
            raise ValueError(f"folds {sorted(overlap)} appear in more than one split")
        common = dict(feature_cfg=cfg, cache_dir=spec.cache_dir, progress=progress)
        train = au.esc50_dataset(root, spec.train_folds, augment=aug, expansion=spec.expansion, **common)
        # no validation folds: a refit on every training fold (no epoch or threshold chosen on anything)
        val = au.esc50_dataset(root, spec.val_folds, **common) if spec.val_folds else None
        test = au.esc50_dataset(root, spec.test_folds, **common) if spec.test_folds else None
    elif spec.kind == "folder":
        common = dict(feature_cfg=cfg, classes=spec.classes, merge=spec.merge, fractions=spec.fractions,
                      seed=spec.split_seed, cache_dir=spec.cache_dir, progress=progress,
                      group_pattern=spec.group_pattern, group_scope=spec.group_scope,
                      split_file=spec.split_file)
        train = au.folder_dataset(root, split="train", augment=aug, expansion=spec.expansion, **common)
        val = au.folder_dataset(root, split="val", **common)
        test = au.folder_dataset(root, split="test", **common)
    else:
        raise ValueError(f"unknown dataset kind '{spec.kind}' (esc50 or folder)")
    if spec.one_vs_rest:
        train, val, test = (one_vs_rest(ds, spec.one_vs_rest) if ds is not None else None
                            for ds in (train, val, test))
    return train, val, test
