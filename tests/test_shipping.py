"""Shipping a recipe's run: the checkpoint must be exactly the recipe's run, and it gains the record
(recipe, fingerprint, clips, provenance) that ``train.py --recipe`` runs carry."""
import json

import pytest

from training import cli
from training.checkpoint import read_meta
from training.shipping import ship_recipe_run

RECIPE = """
model: cnn
preset: tiny
test_folds: []
expansion: 1
augment: {eq_prob: 0.8, stretch_prob: 0.5}
train: {epochs: 2, crop: 1.0, bc_mix: 1.0, mixup: 0.0, ema: 0.9, select: last, batch_size: 6, eval_crops: 1}
"""


@pytest.fixture(scope="module")
def recipe_run(esc50_flac, tmp_path_factory):
    d = tmp_path_factory.mktemp("recipe")
    (d / "r.yaml").write_text(RECIPE)
    out = d / "run"
    assert cli.main(["--recipe", str(d / "r.yaml"), "--data-dir", str(esc50_flac), "--out", str(out),
                     "--threads", "1", "--no-progress"]) == 0
    return d, out


def test_shipped_recipe_run_carries_the_run_record(recipe_run, esc50_flac, tmp_path):
    d, out = recipe_run
    dest = ship_recipe_run(out, d / "r.yaml", tmp_path / "ck", "cnn_test", eval_crops=1, data_dir=str(esc50_flac))
    meta = read_meta(dest)
    run = json.loads((out / "run.json").read_text())
    assert meta["run_fingerprint"] == run["fingerprint"] == read_meta(out / "best.safetensors")["run_fingerprint"]
    assert meta["recipe"] == "r.yaml" and set(meta["clips"]) == {"train", "val"}
    assert (tmp_path / "ck" / "cnn_test.metrics.json").exists() and (tmp_path / "ck" / "cnn_test.history.json").exists()


def test_a_run_of_other_settings_is_refused(recipe_run, esc50_flac, tmp_path):
    d, out = recipe_run
    (d / "other.yaml").write_text(RECIPE.replace("epochs: 2", "epochs: 3").replace("eq_prob: 0.8", "eq_prob: 0.5"))
    with pytest.raises(ValueError, match="train.epochs, augment.eq_prob differ"):
        ship_recipe_run(out, d / "other.yaml", tmp_path / "ck", "x", data_dir=str(esc50_flac))
    with pytest.raises(ValueError, match="says eval_crops 1, not 3"):
        ship_recipe_run(out, d / "r.yaml", tmp_path / "ck", "x", eval_crops=3, data_dir=str(esc50_flac))


def test_a_chosen_evaluation_view_is_recorded_with_its_validation_figures(recipe_run, esc50_flac, tmp_path):
    d, out = recipe_run
    (d / "crops.yaml").write_text(RECIPE.replace("eval_crops: 1", "eval_crops: 3"))
    dest = ship_recipe_run(out, d / "crops.yaml", tmp_path / "ck", "c", eval_crops=3, data_dir=str(esc50_flac))
    meta = read_meta(dest)
    metrics = json.loads((tmp_path / "ck" / "c.metrics.json").read_text())
    assert meta["train_config"]["eval_crops"] == 3 and metrics["eval_crops"] == 3
    from classify.predictor import Predictor
    assert Predictor(dest, "cpu").eval_crops == 3
    assert meta["metrics"]["val_acc"] == metrics["val_acc"]


def test_a_refit_without_validation_ships_with_its_recipes_validation_figure(esc50_flac, tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    (tmp_path / "refit.yaml").write_text("extends: r.yaml\ntrain_folds: [1, 2, 3, 4]\nval_folds: []\nseed: 1\n")
    out = tmp_path / "run"
    assert cli.main(["--recipe", str(tmp_path / "refit.yaml"), "--data-dir", str(esc50_flac), "--out", str(out),
                     "--threads", "1", "--no-progress"]) == 0
    with pytest.raises(ValueError, match="recipe_val_acc"):
        ship_recipe_run(out, tmp_path / "refit.yaml", tmp_path / "ck", "cnn_refit", data_dir=str(esc50_flac))
    dest = ship_recipe_run(out, tmp_path / "refit.yaml", tmp_path / "ck", "cnn_refit", data_dir=str(esc50_flac),
                           recipe_val_acc=0.5)
    meta = read_meta(dest)
    assert meta["recipe"] == "refit.yaml" and meta["metrics"]["recipe_val_acc"] == 0.5
    assert meta["metrics"].get("val_acc") is None and meta["dataset"]["train_folds"] == [1, 2, 3, 4]
    metrics = json.loads((tmp_path / "ck" / "cnn_refit.metrics.json").read_text())
    assert metrics["recipe_val_acc"] == 0.5 and metrics["val_acc"] is None
    with pytest.raises(ValueError, match="data.train_folds"):      # the folds 1-3 recipe is another run
        ship_recipe_run(out, tmp_path / "r.yaml", tmp_path / "ck", "x", data_dir=str(esc50_flac))
