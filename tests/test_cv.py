"""Cross-validation runner (training/cv.py) on the tiny synthetic ESC-50 tree."""
import csv
import json

import numpy as np
import pytest

from training import cv
from training.checkpoint import read_meta


def _args(esc50_flac, out, *extra):
    return ["--model", "mlp", "--preset", "tiny", "--data-dir", str(esc50_flac), "--epochs", "1",
            "--batch-size", "6", "--no-augment", "--expansion", "1", "--mixup", "0", "--threads", "1",
            "--no-progress", "--out", str(out), *extra]


def test_fold_split_rotates_validation():
    assert cv.fold_split(1) == ((3, 4, 5), (2,), (1,))
    assert cv.fold_split(4) == ((1, 2, 3), (5,), (4,))
    assert cv.fold_split(5) == ((2, 3, 4), (1,), (5,))
    for k in cv.ALL_FOLDS:
        tr, va, te = cv.fold_split(k)
        assert sorted(tr + va + te) == [1, 2, 3, 4, 5] and va == (k % 5 + 1,)
    with pytest.raises(ValueError):
        cv.fold_split(6)


def test_inner_split_never_touches_fold_5():
    for k in cv.DEV_FOLDS:
        tr, va, te = cv.fold_split(k, "inner")
        assert va == (k,) and te == () and sorted(tr + va) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="test fold"):
        cv.fold_split(5, "inner")
    with pytest.raises(ValueError):
        cv.fold_split(1, "nested")


def test_five_fold_cv_end_to_end_and_resume(esc50_flac, tmp_path, capsys):
    out = tmp_path / "cv"
    assert cv.main(_args(esc50_flac, out)) == 0
    printed = capsys.readouterr().out
    assert "test accuracy:" in printed and "+-" in printed

    summary = json.loads((out / "cv_results.json").read_text())
    assert summary["complete"] and summary["folds_done"] == [1, 2, 3, 4, 5] and summary["model"] == "mlp"
    accs = []
    for k in cv.ALL_FOLDS:
        d = out / f"fold{k}"
        m = json.loads((d / "metrics.json").read_text())
        accs.append(m["test_acc"])
        assert m["n_test"] == 6                                   # the held-out fold: 3 classes x 2 clips
        meta = read_meta(d / "best.safetensors")
        assert meta["dataset"]["test_folds"] == [k] and meta["dataset"]["val_folds"] == [k % 5 + 1]
        assert meta["cv"]["fold"] == k
    assert summary["test_acc"]["mean"] == pytest.approx(np.mean(accs))
    assert summary["test_acc"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert [r["test_acc"] for r in summary["per_fold"]] == pytest.approx(accs)
    with open(out / "cv_results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["fold"] for r in rows] == ["1", "2", "3", "4", "5", "mean", "std"]
    assert float(rows[5]["test_acc"]) == pytest.approx(np.mean(accs))

    # rerun: finished folds are skipped, nothing is retrained
    stamps = {k: (out / f"fold{k}" / "metrics.json").stat().st_mtime_ns for k in cv.ALL_FOLDS}
    assert cv.main(_args(esc50_flac, out)) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == 5 and "epoch " not in printed
    assert stamps == {k: (out / f"fold{k}" / "metrics.json").stat().st_mtime_ns for k in cv.ALL_FOLDS}

    # an interrupted fold (last.pt but no metrics.json) resumes from last.pt instead of restarting
    (out / "fold3" / "metrics.json").unlink()
    assert cv.main(_args(esc50_flac, out, "--folds", "3")) == 0
    printed = capsys.readouterr().out
    assert "fold 3: resuming" in printed and "resumed from" in printed
    assert len(json.loads((out / "fold3" / "history.json").read_text())) == 1     # no extra epochs
    assert json.loads((out / "cv_results.json").read_text())["complete"]

    # an interrupted fold as the engine leaves it (metrics.json with status "running", written every epoch)
    # is neither summarised as done nor skipped as finished: it resumes
    m4 = json.loads((out / "fold4" / "metrics.json").read_text())
    (out / "fold4" / "metrics.json").write_text(json.dumps({**m4, "status": "running", "test_acc": None}))
    part = cv.summarise(out, write=False, log=None)
    assert part["folds_missing"] == [4] and not part["complete"] and part["test_acc"]["n"] == 4
    assert cv.main(_args(esc50_flac, out, "--folds", "4")) == 0
    printed = capsys.readouterr().out
    assert "fold 4: resuming" in printed and "finished earlier" not in printed
    assert json.loads((out / "fold4" / "metrics.json").read_text())["status"] == "finished"
    assert json.loads((out / "cv_results.json").read_text())["complete"]

    # a finished fold trained with other settings is refused (one line), never reused or relabelled
    before = (out / "fold2" / "best.safetensors").read_bytes()
    assert cv.main(_args(esc50_flac, out, "--folds", "2", "--lr", "0.1")) == 2
    err = capsys.readouterr().err.strip()
    assert "holds another run" in err and "train.lr" in err and "--restart" in err and "\n" not in err
    assert (out / "fold2" / "best.safetensors").read_bytes() == before


def test_folds_as_separate_processes_then_summarise(esc50_flac, tmp_path, capsys):
    out = tmp_path / "cv"
    assert cv.main(_args(esc50_flac, out, "--folds", "2")) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["fold2"]
    part = json.loads((out / "cv_results.json").read_text())
    assert not part["complete"] and part["folds_done"] == [2] and part["folds_missing"] == [1, 3, 4, 5]
    assert cv.main(_args(esc50_flac, out, "--folds", "1,3")) == 0
    capsys.readouterr()
    # collecting needs no model flags and trains nothing
    assert cv.main(["--out", str(out), "--summarise"]) == 0
    printed = capsys.readouterr().out
    assert "epoch " not in printed and "partial summary" in printed
    s = json.loads((out / "cv_results.json").read_text())
    assert s["folds_done"] == [1, 2, 3] and s["test_acc"]["n"] == 3


def test_cli_errors(esc50_flac, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cv.main(_args(esc50_flac, tmp_path / "x", "--test-folds", "2"))     # folds are the runner's job
    with pytest.raises(SystemExit):
        cv.main(_args(esc50_flac, tmp_path / "x", "--folds", "6"))
    with pytest.raises(SystemExit):
        cv.main(["--epochs", "1"])                                           # no --model
    capsys.readouterr()
    assert cv.main(["--out", str(tmp_path / "empty"), "--summarise"]) == 2
    assert "no finished folds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cv.main(["--help"])


def test_a_recipe_with_its_own_fold_split_runs_under_cv(esc50_flac, tmp_path, capsys):
    """The shipped recipes name one run's folds (train 1-3, val 4); the CV runner replaces them."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: mlp\npreset: tiny\ntrain_folds: [1, 2, 3]\nval_folds: [4]\ntest_folds: []\n"
                      "train:\n  select: last\n  epochs: 1\n")
    out = tmp_path / "cv"
    args = ["--recipe", str(recipe), "--data-dir", str(esc50_flac), "--batch-size", "6", "--no-augment",
            "--expansion", "1", "--mixup", "0", "--threads", "1", "--no-progress", "--out", str(out)]
    assert cv.main([*args, "--no-val", "--folds", "2"]) == 0
    meta = read_meta(out / "fold2" / "best.safetensors")
    assert meta["dataset"]["train_folds"] == [1, 3, 4, 5] and meta["dataset"]["test_folds"] == [2]
    with pytest.raises(SystemExit):                  # on the command line they are still refused
        cv.main([*args, "--folds", "2", "--val-folds", "4"])
    assert "sets the folds itself" in capsys.readouterr().err


def test_four_training_folds_without_validation(esc50_flac, tmp_path, capsys, monkeypatch):
    assert cv.fold_split(2, "no_val") == ((1, 3, 4, 5), (), (2,))
    out = tmp_path / "cv4"
    assert cv.main(_args(esc50_flac, out, "--no-val", "--folds", "2")) == 2      # select best: nothing to choose on
    assert "select 'last'" in capsys.readouterr().err
    assert cv.main(_args(esc50_flac, out, "--no-val", "--select", "last", "--folds", "2")) == 0
    printed = capsys.readouterr().out
    assert "val fold -" in printed
    meta = read_meta(out / "fold2" / "best.safetensors")
    assert meta["dataset"]["train_folds"] == [1, 3, 4, 5] and meta["dataset"]["val_folds"] == []
    assert meta["cv"]["val_fold"] is None
    m = json.loads((out / "fold2" / "metrics.json").read_text())
    assert m["val_acc"] is None and m["n_test"] == 6
    assert not (out / "fold2" / "val_predictions.csv").exists()         # no validation fold, no predictions
    s = json.loads((out / "cv_results.json").read_text())
    assert s["per_fold"][0]["val_fold"] is None and s["test_acc"]["n"] == 1
    # the default output directory differs from the three-training-fold experiment's
    monkeypatch.chdir(tmp_path)
    base = [a for a in _args(esc50_flac, out, "--select", "last", "--folds", "2") if a not in ("--out", str(out))]
    assert cv.main(base) == 0 and cv.main([*base, "--no-val"]) == 0
    dirs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(dirs) == 2 and all(d.startswith("cv_mlp-") for d in dirs)


def _inner_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: mlp\npreset: tiny\ntrain_folds: [1, 2, 3]\nval_folds: [4]\ntest_folds: []\n"
                      "train:\n  select: last\n  epochs: 1\n")
    return recipe


def test_inner_cross_validation_over_the_development_folds(esc50_flac, tmp_path, capsys, monkeypatch):
    from training import cli

    out = tmp_path / "inner"
    assert cv.main(_args(esc50_flac, out, "--inner", "--folds", "1,2")) == 2      # select best: it would choose
    err = capsys.readouterr().err.strip()
    assert "--select last" in err and "\n" not in err and not out.exists()
    with pytest.raises(SystemExit):
        cv.main(_args(esc50_flac, out, "--inner", "--select", "last", "--folds", "5"))
    assert "fold 5 is the test fold" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cv.main(_args(esc50_flac, out, "--inner", "--no-val", "--select", "last"))
    capsys.readouterr()

    assert cv.main(_args(esc50_flac, out, "--inner", "--select", "last", "--folds", "1,2")) == 0
    printed = capsys.readouterr().out
    assert "val fold 1, test fold -" in printed and "inner cross-validation over folds 1-4" in printed
    vals = []
    for k, train in ((1, [2, 3, 4]), (2, [1, 3, 4])):
        meta = read_meta(out / f"fold{k}" / "best.safetensors")
        assert meta["dataset"]["train_folds"] == train and meta["dataset"]["val_folds"] == [k]
        assert meta["dataset"]["test_folds"] == [] and meta["cv"]["scheme"] == "inner"
        m = json.loads((out / f"fold{k}" / "metrics.json").read_text())
        assert m["n_test"] == 0 and m["test_acc"] is None and m["n_val"] == 6      # fold 5 was never read
        vals.append(m["val_acc"])
        # out-of-fold predictions: the validation fold's clips, one row each, scoring what metrics.json says
        with open(out / f"fold{k}" / "val_predictions.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 6 and all(r["clip"].startswith(f"{k}-") for r in rows)
        assert np.mean([r["true"] == r["predicted"] for r in rows]) == pytest.approx(m["val_acc"])
        probs = np.array([[float(r[f"p_{c}"]) for c in meta["class_names"]] for r in rows])
        assert np.allclose(probs.sum(1), 1, atol=1e-4)
        assert [meta["class_names"][j] for j in probs.argmax(1)] == [r["predicted"] for r in rows]
    s = json.loads((out / "cv_results.json").read_text())
    assert s["inner"] and s["folds_done"] == [1, 2] and s["folds_missing"] == [3, 4] and not s["complete"]
    assert s["val_acc"]["mean"] == pytest.approx(np.mean(vals)) and s["test_acc"]["n"] == 0
    assert [r["val_fold"] for r in s["per_fold"]] == [1, 2]

    # a fold made by train.py with the same recipe and folds is the same run: cv skips it and collects it
    recipe = _inner_recipe(tmp_path)
    common = ["--recipe", str(recipe), "--data-dir", str(esc50_flac), "--batch-size", "6", "--no-augment",
              "--expansion", "1", "--mixup", "0", "--threads", "1", "--no-progress"]
    rout = tmp_path / "inner_recipe"
    assert cli.main([*common, "--train-folds", "1,2,4", "--val-folds", "3", "--out", str(rout / "fold3")]) == 0
    capsys.readouterr()
    assert cv.main([*common, "--inner", "--folds", "3", "--out", str(rout)]) == 0
    printed = capsys.readouterr().out
    assert "fold 3: finished earlier" in printed and "epoch " not in printed
    assert json.loads((rout / "cv_results.json").read_text())["folds_done"] == [3]

    # a test-fold run in the same directory is another experiment: refused in one line, exit 2
    assert cv.main(_args(esc50_flac, tmp_path / "outer", "--select", "last", "--folds", "4")) == 0
    (out / "fold4").symlink_to(tmp_path / "outer" / "fold4", target_is_directory=True)
    capsys.readouterr()
    assert cv.main(["--out", str(out), "--summarise"]) == 2
    err = capsys.readouterr().err.strip()
    assert "mixes inner cross-validation runs" in err and "\n" not in err

    # the default output directory differs from the test-fold experiment's
    monkeypatch.chdir(tmp_path)
    base = [a for a in _args(esc50_flac, out, "--select", "last", "--folds", "1") if a not in ("--out", str(out))]
    assert cv.main(base) == 0 and cv.main([*base, "--inner"]) == 0
    assert len([p for p in (tmp_path / "runs").iterdir() if p.name.startswith("cv_mlp-")]) == 2
