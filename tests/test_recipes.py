"""Every committed recipe is a run that can start: it parses strictly, its model builds from it, and each
``*_refit.yaml`` is exactly its recipe on folds 1-4 (the same run fingerprint as the command line that says
so), so a refit row in the README can never silently train something other than its folds 1-3 recipe."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import models
from training import cli
from training import run_dir as rd
from training.options import load_recipe
from training.runner import checked_data_spec, checked_model_config

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
# recipes that define a run (the others are mix-ins that `extends:` combines with one, e.g. teachers)
RUNS = [p for p in RECIPES if "model" in load_recipe(p)]
REFITS = [p for p in RUNS if p.stem.endswith("_refit") and isinstance(yaml.safe_load(p.read_text()).get("extends"), str)]


def _resolve(argv):
    a = cli.parse_args(argv)
    data = checked_data_spec(cli.data_spec_from_args(a))
    config, resolved = checked_model_config(a.model, a.preset, cli.model_config_from_args(a), data)
    return a, data, config, resolved


def _fingerprint(argv):
    a, data, _, resolved = _resolve(argv)
    return rd.fingerprint(rd.run_settings(a.model, resolved, cli.train_config_from_args(a), data)), data


def test_the_recipes_are_found():
    assert len(RUNS) >= 20 and len(REFITS) >= 10
    assert {p.name for p in RECIPES} - {p.name for p in RUNS} >= {"distill_seed_trio.yaml"}


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.stem)
def test_recipe_builds_its_model(path):
    a, data, config, resolved = _resolve(["--recipe", str(path)])
    if resolved.get("init_from"):       # a fine-tuning recipe: its encoder file is made by its pretraining run
        pytest.skip(f"needs the pretrained encoder {resolved['init_from']}")
    model = models.build_model(a.model, num_classes=50, **config)
    n_params = sum(p.numel() for p in model.parameters())
    assert 10_000 < n_params < 5_000_000, n_params
    assert torch.isfinite(next(model.parameters())).all()


@pytest.mark.parametrize("path", REFITS, ids=lambda p: p.stem)
def test_refit_recipe_is_its_recipe_on_four_folds(path):
    raw = yaml.safe_load(path.read_text())     # the file itself, before `extends`
    base = path.parent / raw["extends"]
    seed = load_recipe(path).get("seed", 0)
    view = raw.get("train") or {}            # an evaluation view chosen on the validation fold after the run
    assert set(view) <= {"eval_crops"}, f"{path.name} changes training settings"
    refit, data = _fingerprint(["--recipe", str(path)])
    flags, _ = _fingerprint(["--recipe", str(base), "--train-folds", "1,2,3,4", "--val-folds=", "--seed", str(seed)]
                            + (["--eval-crops", str(view["eval_crops"])] if view else []))
    assert refit == flags and data.train_folds == (1, 2, 3, 4) and data.val_folds == ()
    assert set(raw) <= {"extends", "train_folds", "val_folds", "seed", "train"}, f"{path.name} changes more than the folds"
