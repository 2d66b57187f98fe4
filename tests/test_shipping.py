"""Shipping a recipe's run: the checkpoint must be exactly the recipe's run, and it gains the record
(recipe, fingerprint, clips, provenance) that ``train.py --recipe`` runs carry."""
import json

import pytest

from training import cli
from training.checkpoint import read_meta
from training.shipping import reship_with_view, ship_recipe_run

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
    with pytest.raises(ValueError, match="give view_note"):    # a view the run was not trained with says why
        ship_recipe_run(out, d / "crops.yaml", tmp_path / "ck", "c", eval_crops=3, data_dir=str(esc50_flac))
    dest = ship_recipe_run(out, d / "crops.yaml", tmp_path / "ck", "c", eval_crops=3, data_dir=str(esc50_flac),
                           view_note="chosen on fold 4")
    meta = read_meta(dest)
    assert meta["provenance"]["eval_view"] == {"trained_with": 1, "eval_crops": 3, "note": "chosen on fold 4"}
    metrics = json.loads((tmp_path / "ck" / "c.metrics.json").read_text())
    assert meta["train_config"]["eval_crops"] == 3 and metrics["eval_crops"] == 3
    from classify.predictor import Predictor
    assert Predictor(dest, "cpu").eval_crops == 3
    assert meta["metrics"]["val_acc"] == metrics["val_acc"]


def _refit_run(tmp_path, data_dir, extra: str = ""):
    """r.yaml (RECIPE) and its refit on folds 1-4, trained into tmp_path/run."""
    (tmp_path / "r.yaml").write_text(RECIPE)
    (tmp_path / "refit.yaml").write_text("extends: r.yaml\ntrain_folds: [1, 2, 3, 4]\nval_folds: []\n" + extra)
    out = tmp_path / "run"
    assert cli.main(["--recipe", str(tmp_path / "refit.yaml"), "--data-dir", str(data_dir), "--out", str(out),
                     "--threads", "1", "--no-progress"]) == 0
    return out


def test_a_refit_without_validation_ships_with_its_recipes_validation_figure(esc50_flac, tmp_path):
    out = _refit_run(tmp_path, esc50_flac, "seed: 1\n")
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


def test_a_shipped_refit_reships_with_a_new_view_and_loses_its_old_test_figures(esc50_flac, tmp_path):
    from safetensors.torch import load_file

    out = _refit_run(tmp_path, esc50_flac)
    ck = tmp_path / "ck"
    dest = ship_recipe_run(out, tmp_path / "refit.yaml", ck, "m", data_dir=str(esc50_flac), recipe_val_acc=0.5)
    metrics = json.loads((ck / "m.metrics.json").read_text())
    (ck / "m.metrics.json").write_text(json.dumps({**metrics, "test_acc": 0.4, "test_source": {"command": "x"}}))
    before = load_file(str(dest))
    (tmp_path / "refit.yaml").write_text((tmp_path / "refit.yaml").read_text() + "train: {eval_crops: 3}\n")
    with pytest.raises(ValueError, match="give view_note"):
        reship_with_view(ck, "m", tmp_path / "refit.yaml", 3, "", recipe_val_acc=0.6, data_dir=str(esc50_flac))
    reship_with_view(ck, "m", tmp_path / "refit.yaml", 3, "rule (p)", recipe_val_acc=0.6, data_dir=str(esc50_flac))
    meta, after = read_meta(dest), load_file(str(dest))
    assert meta["train_config"]["eval_crops"] == 3 and meta["provenance"]["eval_view"]["note"] == "rule (p)"
    assert meta["metrics"]["recipe_val_acc"] == 0.6 and meta["recipe"] == "refit.yaml"
    assert set(before) == set(after) and all(before[k].equal(after[k]) for k in before)
    metrics = json.loads((ck / "m.metrics.json").read_text())
    assert metrics["eval_crops"] == 3 and metrics["recipe_val_acc"] == 0.6
    assert not [k for k in metrics if k.startswith("test_")]
    assert sorted(p.name for p in ck.iterdir()) == ["m.history.json", "m.metrics.json", "m.safetensors"]
    (tmp_path / "refit.yaml").write_text((tmp_path / "refit.yaml").read_text().replace("val_folds: []", "val_folds: []\nseed: 3"))
    with pytest.raises(ValueError, match="train.seed differ"):          # still only that run's recipe
        reship_with_view(ck, "m", tmp_path / "refit.yaml", 3, "rule (p)", recipe_val_acc=0.6, data_dir=str(esc50_flac))


def test_a_run_older_than_a_setting_matches_only_that_settings_default(recipe_run, esc50_flac, tmp_path):
    """A run recorded before the toolkit had ``swa_start`` / ``filterbank`` trained with their defaults."""
    import shutil

    from safetensors.torch import load_file, save_file
    from training.checkpoint import META_KEY

    d, out = recipe_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    meta = read_meta(old / "best.safetensors")
    del meta["train_config"]["swa_start"], meta["feature_config"]["filterbank"]
    save_file(load_file(str(old / "best.safetensors")), str(old / "best.safetensors"),
              metadata={META_KEY: json.dumps(meta)})
    dest = ship_recipe_run(old, d / "r.yaml", tmp_path / "ck", "old", data_dir=str(esc50_flac))
    assert read_meta(dest)["recipe"] == "r.yaml"
    (d / "swa.yaml").write_text(RECIPE.replace("select: last,", "select: last, swa_start: 2,"))
    with pytest.raises(ValueError, match="train.swa_start differ"):
        ship_recipe_run(old, d / "swa.yaml", tmp_path / "ck", "x", data_dir=str(esc50_flac))
    (d / "lin.yaml").write_text(RECIPE + "feature: {filterbank: linear}\n")
    with pytest.raises(ValueError, match="feature.filterbank differ"):
        ship_recipe_run(old, d / "lin.yaml", tmp_path / "ck", "x", data_dir=str(esc50_flac))
