"""Runs you can trust (issue 13): one test per problem row, plus strict options and recipes.

Every test here failed on the code before training/cli.py, options.py, run_dir.py and
provenance.py existed (silent resume, truthy 'False', tracebacks, silent cache corruption...).
"""
import ast
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import audio_utils as au
import models
from training import cli, cv, provenance, run_dir
from training.checkpoint import read_meta, save_checkpoint
from training.options import OptionError, check_model, parse_pairs, parse_value, validate_options

REPO = Path(__file__).resolve().parent.parent


def _base(esc50_flac, *extra):
    return ["--model", "mlp", "--preset", "tiny", "--data-dir", str(esc50_flac), "--epochs", "1",
            "--batch-size", "8", "--no-progress", "--threads", "1", "--no-augment", "--expansion", "1", *extra]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ row 1: silent resume of another run
def test_rerun_with_other_settings_is_refused_then_restart(esc50_flac, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_base(esc50_flac, "--out", str(out))) == 0
    before = (out / "best.safetensors").read_bytes()
    capsys.readouterr()
    # same weight shapes, so the old code silently resumed and relabelled the old weights
    assert cli.main(_base(esc50_flac, "--out", str(out), "--config", "dropout=0.5")) == 2
    err = _err_line(capsys)
    assert "holds another run" in err and "model_config.dropout" in err and "--restart" in err
    assert (out / "best.safetensors").read_bytes() == before            # nothing relabelled
    # the same run resumes (finished: re-evaluated, same settings); a default given explicitly,
    # a runtime setting and another spelling of the data path are still the same run
    rel = os.path.relpath(esc50_flac)
    same = _base(esc50_flac, "--out", str(out), "--config", "dropout=0.3", "--eval-batch-size", "4", "--device", "cpu")
    same[same.index("--data-dir") + 1] = rel
    assert "dropout" not in models.get_spec("mlp").presets["tiny"]       # 0.3 is the factory default
    assert cli.main(same) == 0
    capsys.readouterr()
    assert cli.main(_base(esc50_flac, "--out", str(out), "--config", "dropout=0.5", "--restart")) == 0
    assert read_meta(out / "best.safetensors")["model_config"]["dropout"] == 0.5
    assert json.loads((out / "run.json").read_text())["settings"]["model_config"]["dropout"] == 0.5


def test_a_failed_start_does_not_claim_the_directory(esc50_flac, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _base(esc50_flac, "--out", str(out))
    bad = list(argv)
    bad[bad.index("--data-dir") + 1] = str(tmp_path / "typo")
    assert cli.main(bad) == 2 and "esc50.csv" in _err_line(capsys)
    assert cli.main(argv) == 0                  # nothing was trained there, so the directory is free


def test_corrupt_last_pt_is_one_line(esc50_flac, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_base(esc50_flac, "--out", str(out))) == 0
    (out / "last.pt").write_bytes(b"")
    capsys.readouterr()
    assert cli.main(_base(esc50_flac, "--out", str(out))) == 2
    assert "last.pt is truncated or corrupt" in _err_line(capsys)


def test_fewer_epochs_than_done_says_so(esc50_flac, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_base(esc50_flac, "--out", str(out), "--epochs", "2")) == 0
    capsys.readouterr()
    assert cli.main(_base(esc50_flac, "--out", str(out), "--epochs", "1")) == 2
    assert "already trained 2 epochs" in _err_line(capsys)


def test_default_out_dirs_differ_between_experiments(esc50_flac, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(_base(esc50_flac)) == 0
    assert cli.main(_base(esc50_flac, "--lr", "0.01")) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.startswith("mlp-") for r in runs)
    # training.cv too
    assert cv.main(_base(esc50_flac, "--folds", "1")) == 0
    assert cv.main(_base(esc50_flac, "--folds", "1", "--lr", "0.01")) == 0
    cvs = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("cv_mlp-")]
    assert len(cvs) == 2 and all((p / "fold1" / "metrics.json").exists() for p in cvs)


# ------------------------------------------------------------------ row 2: two processes on one --out
def test_second_process_on_the_same_run_is_refused(esc50_flac, tmp_path, capsys):
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from training.run_dir import RunLock; "
                               f"lock = RunLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(120)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli.main(_base(esc50_flac, "--out", str(out))) != 0
        assert "in use by another training process" in _err_line(capsys)
        assert not (out / "last.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)          # dies without releasing: its lock file stays behind
        holder.wait()
    assert (out / run_dir.LOCK_FILE).exists()
    assert cli.main(_base(esc50_flac, "--out", str(out))) == 0      # a dead holder's lock is no lock


# ------------------------------------------------------------------ row 3: 'False' is truthy
def test_python_literals_parse_to_their_values(esc50_flac, tmp_path, capsys):
    assert parse_value("False") is False and parse_value("None") is None and parse_value("(1, 2)") == (1, 2)
    assert parse_value("true") is True and parse_value("kb") == "kb" and parse_value("3e-4") == 3e-4
    cfg = check_model("mamba", parse_pairs(["bidirectional=False"], "--config"), preset="tiny")
    assert cfg["bidirectional"] is False
    out = tmp_path / "m"
    rc = cli.main(["--model", "mamba", "--preset", "tiny", "--config", "bidirectional=False", "--data-dir",
                   str(esc50_flac), "--epochs", "1", "--batch-size", "8", "--no-progress", "--threads", "1",
                   "--no-augment", "--expansion", "1", "--out", str(out)])
    assert rc == 0
    assert read_meta(out / "best.safetensors")["model_config"]["bidirectional"] is False


# ------------------------------------------------------------------ row 4: typos and bad types
@pytest.mark.parametrize("item, words", [("some_typo=1", ["unknown", "some_typo", "valid:", "d_model"]),
                                         ("d_model=abc", ["d_model", "expected int"])])
def test_bad_model_option_is_one_line_before_any_data(item, words, tmp_path, capsys):
    rc = cli.main(["--model", "mamba", "--config", item, "--data-dir", str(tmp_path / "no-data"),
                   "--out", str(tmp_path / "o")])
    assert rc == 2
    err = _err_line(capsys)
    assert all(w in err for w in words) and "esc50.csv" not in err


# ------------------------------------------------------------------ row 5: ignored keys, stale n_frames
def test_unknown_feature_and_train_keys_fail(esc50_flac, tmp_path, capsys):
    for item in ("sample_rat=8000", "hop=80"):
        assert cli.main(_base(esc50_flac, "--feature", item, "--out", str(tmp_path / "o"))) == 2
        assert "unknown feature option" in _err_line(capsys)
    from training.runner import make_train_config
    with pytest.raises(OptionError, match="label_smothing"):
        make_train_config("mlp", label_smothing=0.1)


def test_duration_sets_n_frames(esc50_flac, tmp_path, capsys):
    out = tmp_path / "short"
    assert cli.main(_base(esc50_flac, "--feature", "duration=1.0", "--out", str(out))) == 0
    feat = read_meta(out / "best.safetensors")["feature_config"]
    assert feat["duration"] == 1.0 and feat["n_frames"] == 1 + (16000 - 1024) // 512      # 30, not 155
    assert cli.main(_base(esc50_flac, "--feature", "duration=1.0", "--feature", "n_frames=155",
                          "--out", str(tmp_path / "bad"))) == 2
    assert "exceeds" in _err_line(capsys)
    assert au.FeatureConfig.derive({}, {}).n_frames == 155        # the ESC-50 default is consistent
    # the same for Python callers (notebooks) of train_model with a partial feature config
    from training.data import DataSpec
    from training.runner import make_train_config, train_model
    spec = DataSpec(root=str(esc50_flac), feature_config={"duration": 1.0}, augment=False, expansion=1)
    cfg = make_train_config("mlp", epochs=1, batch_size=8, progress=False, threads=1)
    train_model("mlp", spec, tmp_path / "py", cfg, preset="tiny")
    assert read_meta(tmp_path / "py" / "best.safetensors")["feature_config"]["n_frames"] == 30


# ------------------------------------------------------------------ row 6: non-positive sizes
@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--batch-size", "-4"), ("--expansion", "0"),
                                         ("--epochs", "0"), ("--mixup-prob", "1.5"), ("--lr", "-1")])
def test_non_positive_hyper_parameters_fail(flag, value, esc50_flac, tmp_path, capsys):
    argv = _base(esc50_flac, "--out", str(tmp_path / "o"))
    i = argv.index(flag) if flag in argv else None
    if i is not None:
        argv[i + 1] = value
    else:
        argv += [flag, value]
    assert cli.main(argv) == 2
    assert flag in _err_line(capsys)
    assert not (tmp_path / "o" / "best.safetensors").exists()


def test_rules_cover_the_new_train_fields():
    from training.options import check_range
    for name, bad, good in (("crop", -1.0, 0.0), ("eval_crops", 0, 1), ("ema", 1.0, 0.999), ("bc_mix", 1.5, 0.5)):
        check_range(name, good)
        with pytest.raises(OptionError):
            check_range(name, bad)


# ------------------------------------------------------------------ row 7: exceptions outside the list
def test_any_exception_is_one_line_and_debug_shows_it(esc50_flac, tmp_path, monkeypatch, capsys):
    import training.runner as runner

    def boom(*a, **k):
        return 1 / 0
    monkeypatch.setattr(runner, "fit", boom)
    assert cli.main(_base(esc50_flac, "--out", str(tmp_path / "o"))) == 1
    assert "ZeroDivisionError" in _err_line(capsys)
    with pytest.raises(ZeroDivisionError):
        cli.main(_base(esc50_flac, "--out", str(tmp_path / "o2"), "--debug"))


# ------------------------------------------------------------------ row 8: disk full, temp files
def test_full_disk_is_one_line_naming_the_file_and_temps_are_cleaned(esc50_flac, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.pt.tmp999999999"
    stale.write_bytes(b"x" * 100)
    os.utime(stale, (1e9, 1e9))                     # old, and its writer (no such PID) is gone
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if str(f).endswith(".tmp" + str(os.getpid())) and "last.pt" in str(f):
            Path(f).write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", full_disk)
    assert cli.main(_base(esc50_flac, "--out", str(out))) == 1
    err = _err_line(capsys)
    assert "cannot write" in err and "last.pt" in err
    assert not stale.exists()                                    # a dead process's temp file: removed
    assert not [p for p in out.iterdir() if ".tmp" in p.name]    # ours: cleaned up on failure


# ------------------------------------------------------------------ row 9: feature cache integrity
@pytest.mark.parametrize("damage", ["random", "nan", "empty", "no-header"])
def test_damaged_cache_is_rebuilt_with_a_warning(damage, esc50_flac, tmp_path):
    files = sorted((esc50_flac / "audio").glob("*.flac"))[:3]
    cfg = au.FeatureConfig()
    good = np.array(au.cached_features(files, cfg, tmp_path))
    (target,) = tmp_path.glob("*.npy")
    if damage == "random":
        arr = np.load(target, mmap_mode="r+")
        arr[:] = np.random.default_rng(0).standard_normal(arr.shape).astype(np.float32)
        arr.flush()
        del arr
    elif damage == "nan":
        arr = np.load(target, mmap_mode="r+")
        arr[0, 0, 0] = np.nan
        arr.flush()
        del arr
    elif damage == "empty":
        target.write_bytes(b"")
    else:
        target.with_suffix(".json").unlink()
    with pytest.warns(UserWarning, match="feature cache"):
        again = np.array(au.cached_features(files, cfg, tmp_path))
    np.testing.assert_allclose(again, good)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        au.cached_features(files, cfg, tmp_path)                 # the rebuilt file is accepted silently


def test_stale_cache_temp_files_are_removed(esc50_flac, tmp_path):
    files = sorted((esc50_flac / "audio").glob("*.flac"))[:2]
    stale = tmp_path / "abc.tmp999999999.npy"
    stale.write_bytes(b"x" * 1000)
    recent = tmp_path / "def.tmp999999998.npy"      # maybe a live writer on another machine: kept
    recent.write_bytes(b"x" * 1000)
    os.utime(stale, (1e9, 1e9))
    au.cached_features(files, au.FeatureConfig(), tmp_path)
    assert not stale.exists() and recent.exists()


# ------------------------------------------------------------------ row 10: paths from checkpoint metadata
def test_checkpoint_records_no_cache_dir(esc50_flac, tmp_path):
    out = tmp_path / "run"
    assert cli.main(_base(esc50_flac, "--out", str(out), "--cache-dir", str(tmp_path / "cache"))) == 0
    meta = read_meta(out / "best.safetensors")
    assert "cache_dir" not in meta["dataset"] and str(tmp_path / "cache") not in json.dumps(meta["dataset"])


# ------------------------------------------------------------------ row 11: provenance of encoders and teachers
def test_jepa_encoder_records_its_folds_and_fine_tuning_checks_them(esc50_flac, tmp_path, capsys):
    from training import jepa

    enc_dir = tmp_path / "enc"
    rc = jepa.main(["--data-dir", str(esc50_flac), "--out", str(enc_dir), "--epochs", "1", "--max-steps", "1",
                    "--batch-size", "4", "--preset", "tiny", "--threads", "1", "--device", "cpu"])
    assert rc == 0
    enc = enc_dir / "encoder.safetensors"
    meta = provenance.read_source_meta(enc)
    assert meta["dataset"]["train_folds"] == [1, 2, 3] and len(meta["clips"]["train"]) == 18
    vj = ["--model", "vjepa2", "--preset", "tiny", "--config", f"init_from={enc}", "--data-dir", str(esc50_flac),
          "--epochs", "1", "--batch-size", "8", "--no-progress", "--threads", "1", "--no-augment", "--expansion", "1"]
    capsys.readouterr()
    # CV fold 1: folds 3,4,5 train, 2 val, 1 test -> the encoder pretrained on 1-3 saw held-out clips
    assert cli.main(vj + ["--train-folds", "3,4,5", "--val-folds", "2", "--test-folds", "1",
                          "--out", str(tmp_path / "leak")]) == 2
    err = _err_line(capsys)
    assert "encoder" in err and "holds out" in err
    assert cli.main(vj + ["--out", str(tmp_path / "ok")]) == 0
    rec = read_meta(tmp_path / "ok" / "best.safetensors")["provenance"]["init_from"]
    assert rec["dataset"]["train_folds"] == [1, 2, 3] and rec["sha256"] == provenance.file_sha256(enc)



def test_jepa_pretrains_on_the_features_it_is_given(esc50_flac, tmp_path, capsys):
    # an encoder for a 32-band model: pretrained on 32 bands, refused by a 128-band fine-tune, accepted by a 32-band one
    from training import jepa

    enc_dir = tmp_path / "enc32"
    assert jepa.main(["--data-dir", str(esc50_flac), "--out", str(enc_dir), "--epochs", "1", "--max-steps", "1",
                      "--batch-size", "4", "--preset", "tiny", "--threads", "1", "--device", "cpu",
                      "--feature", "n_mels=32"]) == 0
    enc = enc_dir / "encoder.safetensors"
    assert provenance.read_source_meta(enc)["dataset"]["feature_config"]["n_mels"] == 32
    vj = ["--model", "vjepa2", "--preset", "tiny", "--config", f"init_from={enc}", "--data-dir", str(esc50_flac),
          "--epochs", "1", "--batch-size", "8", "--no-progress", "--threads", "1", "--no-augment", "--expansion", "1"]
    capsys.readouterr()
    assert cli.main(vj + ["--out", str(tmp_path / "mels128")]) == 2
    assert "n_mels" in _err_line(capsys)
    assert cli.main(vj + ["--feature", "n_mels=32", "--out", str(tmp_path / "mels32")]) == 0
    assert read_meta(tmp_path / "mels32" / "best.safetensors")["feature_config"]["n_mels"] == 32
    assert jepa.main(["--data-dir", str(esc50_flac), "--feature", "n_mels=0", "--out", str(tmp_path / "bad")]) == 2
    assert "n_mels" in _err_line(capsys)

def _fake_checkpoint(path, dataset, train_config=None, provenance_rec=None):
    feat = au.FeatureConfig()
    model = models.build_model("mlp", num_classes=3, n_mels=feat.n_mels, n_frames=feat.n_frames, preset="tiny")
    meta = {"class_names": ["low_tone", "high_tone", "noise_bursts"], "feature_config": feat.to_dict(),
            "dataset": dataset, "train_config": train_config or {}}
    if provenance_rec is not None:
        meta["provenance"] = provenance_rec
    save_checkpoint(path, model, meta)
    return path


def test_leak_check_follows_teachers_recursively(esc50_flac, tmp_path, capsys):
    esc = {"kind": "esc50"}
    leaky = _fake_checkpoint(tmp_path / "t0.safetensors", {**esc, "train_folds": [1, 2, 3, 4, 5], "val_folds": [],
                                                            "test_folds": []})
    # a clean-looking teacher that was itself distilled from the fold-5-trained model (old-style record)
    t1 = _fake_checkpoint(tmp_path / "t1.safetensors", {**esc, "train_folds": [1, 2, 3], "val_folds": [4],
                                                         "test_folds": [5]},
                          train_config={"distill_from": [str(leaky)]})
    assert cli.main(_base(esc50_flac, "--distill", str(t1), "--out", str(tmp_path / "s"))) == 2
    err = _err_line(capsys)
    assert "t0.safetensors" in err and "teacher of t1.safetensors" in err
    # the same with an embedded record (the source file may be gone)
    t2 = _fake_checkpoint(tmp_path / "t2.safetensors", {**esc, "train_folds": [1, 2, 3], "val_folds": [4],
                                                         "test_folds": [5]},
                          provenance_rec={"teachers": [provenance.source_record(leaky)], "init_from": None})
    leaky.unlink()
    assert cli.main(_base(esc50_flac, "--distill", str(t2), "--out", str(tmp_path / "s2"))) == 2
    assert "t0.safetensors" in _err_line(capsys)


# ------------------------------------------------------------------ row 13: split signature by clips
def test_split_signature_uses_clip_names_and_labels_not_paths():
    clips = {"train": [["a.wav", "dog"], ["b.wav", "cat"]], "val": [["c.wav", "dog"]], "test": [["d.wav", "cat"]]}
    a = {"root": "/data/ESC-50", "clips": clips}
    b = {"root": "/elsewhere/copy", "clips": {k: list(reversed(v)) for k, v in clips.items()}}
    assert provenance.split_signature(a) == provenance.split_signature(b)
    moved = {"root": "/data/ESC-50", "clips": {**clips, "val": [["d.wav", "cat"]], "test": [["c.wav", "dog"]]}}
    assert provenance.split_signature(moved) != provenance.split_signature(a)
    relabelled = {"clips": {**clips, "test": [["d.wav", "dog"]]}}
    assert provenance.split_signature(relabelled) != provenance.split_signature(a)
    assert provenance.split_signature({"root": "/x"}) is None


def test_checkpoints_record_their_clips(esc50_flac, tmp_path):
    out = tmp_path / "run"
    assert cli.main(_base(esc50_flac, "--out", str(out))) == 0
    meta = read_meta(out / "best.safetensors")
    clips = meta["clips"]
    assert {len(clips[s]) for s in ("val", "test")} == {6} and len(clips["train"]) == 18
    assert provenance.split_signature(meta) == provenance.split_signature({**meta["dataset"], "clips": clips})
    assert provenance.split_signature(meta) is not None


# ------------------------------------------------------------------ options, recipes, help
def test_recipe_file_and_explicit_flags_override_it(esc50_flac, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: mlp\npreset: tiny\ndata_dir: {esc50_flac}\nepochs: 2\nbatch_size: 8\n"
                      "progress: false\nthreads: 1\nno_augment: true\nexpansion: 1\n"
                      "config:\n  hidden: 40\nfeature:\n  duration: 4.0\n")
    out = tmp_path / "run"
    assert cli.main(["--recipe", str(recipe), "--epochs", "1", "--config", "dropout=0.0", "--out", str(out)]) == 0
    meta = read_meta(out / "best.safetensors")
    assert meta["train_config"]["epochs"] == 1 and meta["model_config"]["hidden"] == 40
    assert meta["model_config"]["dropout"] == 0.0 and meta["feature_config"]["duration"] == 4.0
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "mlp"\nlearning_rate = 0.1\n')
    assert cli.main(["--recipe", str(bad)]) == 2
    assert "unknown setting 'learning_rate'" in _err_line(capsys)


def test_a_recipe_extends_another(tmp_path):
    from training.options import OptionError, load_recipe

    (tmp_path / "base.yaml").write_text("model: mlp\nseed: 0\ntrain_folds: [1, 2, 3]\n"
                                        "train:\n  epochs: 5\n  lr: 0.01\nconfig:\n  hidden: 40\n")
    (tmp_path / "refit.yaml").write_text("extends: base.yaml\ntrain_folds: [1, 2, 3, 4]\nval_folds: []\n"
                                         "seed: 1\ntrain:\n  epochs: 7\n")
    r = load_recipe(tmp_path / "refit.yaml")
    assert r == {"model": "mlp", "seed": 1, "train_folds": [1, 2, 3, 4], "val_folds": [],
                 "train": {"epochs": 7, "lr": 0.01}, "config": {"hidden": 40}}
    a = cli.parse_args(["--recipe", str(tmp_path / "refit.yaml")])
    assert a.train_folds == (1, 2, 3, 4) and a.val_folds == () and a.seed == 1 and a.epochs == 7 and a.lr == 0.01
    (tmp_path / "kd.yaml").write_text("train:\n  distill_weight: 0.5\n  lr: 0.02\n")
    (tmp_path / "both.yaml").write_text("extends: [refit.yaml, kd.yaml]\nseed: 2\n")   # in order, then its own
    assert load_recipe(tmp_path / "both.yaml") == {
        "model": "mlp", "seed": 2, "train_folds": [1, 2, 3, 4], "val_folds": [],
        "train": {"epochs": 7, "lr": 0.02, "distill_weight": 0.5}, "config": {"hidden": 40}}
    (tmp_path / "loop.yaml").write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop.yaml\nmodel: mlp\n")
    (tmp_path / "orphan.yaml").write_text("extends: [base.yaml, nowhere.yaml]\n")
    (tmp_path / "odd.yaml").write_text("extends: [base.yaml, 3]\n")
    for name, msg in (("loop.yaml", "cycle"), ("orphan.yaml", "not found"), ("odd.yaml", "list of them")):
        with pytest.raises(OptionError, match=msg):
            load_recipe(tmp_path / name)


def test_augment_options_are_checked_and_recorded(esc50_flac, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [a for a in _base(esc50_flac, "--out", str(out)) if a != "--no-augment"]
    assert cli.main(argv + ["--augment", "gain_prob=0.0", "--augment", "gain_db=(-3, 3)"]) == 0
    aug = read_meta(out / "best.safetensors")["dataset"]["augment_config"]
    assert aug["gain_prob"] == 0.0 and list(aug["gain_db"]) == [-3.0, 3.0]
    assert cli.main(argv + ["--augment", "gain_prb=0.0"]) == 2
    assert "unknown augmentation option" in _err_line(capsys)


def test_validate_options_for_notebooks():
    ok = validate_options(model="mamba", preset="tiny", config={"bidirectional": False},
                          feature={"duration": 2.0}, train={"epochs": 3})
    assert ok["config"] == {"bidirectional": False} and ok["feature_config"]["n_frames"] == 1 + (32000 - 1024) // 512
    with pytest.raises(OptionError, match="bidirectional"):
        validate_options(model="mamba", config={"bidirectional": "False"})


def test_every_train_option_has_help_and_a_default():
    from training import jepa
    for parser in (cli.build_parser(), cv.build_parser(), jepa.build_parser()):
        for action in parser._actions:
            if action.dest == "help" or action.help == "==SUPPRESS==":
                continue
            assert action.help and ("default" in action.help or "required" in action.help), action.option_strings


def test_library_never_imports_a_script():
    scripts = {"train", "inference"}
    for path in [REPO / "audio_utils.py", *(REPO / "training").glob("*.py"), *(REPO / "models").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert not scripts & {n.split(".")[0] for n in names}, f"{path.name} imports a script"


def test_new_train_config_fields_get_flags_and_rules(monkeypatch, capsys):
    """Fields added to TrainConfig (crop, eval_crops, ema, bc_mix) get a flag and their range rule."""
    import dataclasses

    import training.engine as engine
    from training.options import check_train

    existing = {f.name for f in dataclasses.fields(engine.TrainConfig)}
    extra = [(n, t, dataclasses.field(default=d)) for n, t, d in
             (("crop", float, 0.0), ("eval_crops", int, 1), ("ema", float, 0.0), ("bc_mix", float, 0.0))
             if n not in existing]
    monkeypatch.setattr(engine, "TrainConfig", dataclasses.make_dataclass("TrainConfig", extra, bases=(engine.TrainConfig,)))
    opts = {s for a in cli.build_parser()._actions for s in a.option_strings}
    assert {"--crop", "--eval-crops", "--ema", "--bc-mix", "--amp", "--no-amp"} <= opts
    assert check_train({"crop": 1, "eval_crops": 3, "ema": 0.999, "bc_mix": 0.5}) == \
        {"crop": 1.0, "eval_crops": 3, "ema": 0.999, "bc_mix": 0.5}
    for bad in ({"eval_crops": 0}, {"ema": 1.0}, {"bc_mix": -0.1}, {"crop": -2.0}, {"amp": "False"}):
        with pytest.raises(OptionError):
            check_train(bad)
