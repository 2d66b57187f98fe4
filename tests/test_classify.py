"""classify/: one featurisation path, evaluation on any data, group splits, checkpoint checks, names, listing.

Each test is tied to a numbered item of issue 14 (or to issue 15) and fails on the code before them.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import audio_utils as au
import models
from classify import cli
from classify.predictor import Predictor
from synth import CLASSES, synth_clip
from training.checkpoint import CheckpointError, save_checkpoint
from training.data import DataSpec, build_datasets
from training.engine import task_metrics
from training.presets import feature_preset

REPO = Path(__file__).resolve().parent.parent
SMALL = au.FeatureConfig(sample_rate=8000, n_fft=256, hop_length=256, n_mels=32, duration=2.0, n_frames=60)
DRUMS = feature_preset("drums")
DRUM_CLASSES = ["clap", "hihat", "kick", "snare", "tom"]


def make_ckpt(path, cfg, classes, task=None, dataset=None, train_config=None, model_config=None, norm=True,
              seed=0):
    torch.manual_seed(seed)
    model = models.build_model("cnn", num_classes=len(classes), n_mels=cfg.n_mels, n_frames=cfg.n_frames,
                               preset="tiny")
    meta = {"class_names": list(classes), "feature_config": cfg.to_dict(), "model_name": "cnn",
            "task": task or {"type": "multiclass"}, "metrics": {}}
    if norm:
        meta["normalization"] = {"mean": [-8.0] * cfg.n_mels, "std": [3.0] * cfg.n_mels}
    for key, value in (("dataset", dataset), ("train_config", train_config)):
        if value is not None:
            meta[key] = value
    path = save_checkpoint(path, model, meta)
    if model_config is not None:          # metadata that lies about the weights (written by hand)
        from safetensors.torch import load_file, save_file
        state = load_file(str(path))
        meta["model_config"] = model_config
        save_file(state, str(path), metadata={"toolkit": json.dumps(meta)})
    return path


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def drum_hit(sr: int, kind: int, rng, seconds: float = 0.25) -> np.ndarray:
    """A percussive hit after 30 ms of silence: decaying noise (kind 0) or a decaying low tone (1)."""
    t = np.arange(int(seconds * sr)) / sr
    env = np.exp(-t * rng.uniform(15, 40))
    body = rng.standard_normal(len(t)) if kind == 0 else np.sin(2 * np.pi * rng.uniform(60, 120) * t)
    return np.concatenate([np.zeros(int(0.03 * sr)), 0.8 * env * body]).astype(np.float32)


@pytest.fixture(scope="module")
def drum_dir(tmp_path_factory):
    """Class folders of drum-like hits of 0.3 to 1.5 s (some followed by digital silence)."""
    root = tmp_path_factory.mktemp("kit") / "kit"
    rng = np.random.default_rng(0)
    for ci, cls in enumerate(DRUM_CLASSES):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            x = drum_hit(44100, ci % 2, rng)
            x = np.concatenate([x, np.zeros(int(rng.uniform(0, 1.2) * 44100), np.float32)])
            sf.write(root / cls / f"{cls}-{k}.wav", x, 44100, subtype="FLOAT")
    return root


@pytest.fixture(scope="module")
def drum_ckpt(tmp_path_factory, drum_dir):
    return make_ckpt(tmp_path_factory.mktemp("dck") / "drums.safetensors", DRUMS, DRUM_CLASSES,
                     dataset={"kind": "folder", "root": str(drum_dir), "split_seed": 0})


def _probs(rec, names):
    got = {t["label"]: t["prob"] for t in rec["top"]}
    return np.array([got[c] for c in names])


# ------------------------------------------------------------------ 1. one featurisation path
def test_drum_hit_followed_by_silence_scores_as_the_hit_alone(drum_ckpt, tmp_path, capsys):
    rng = np.random.default_rng(5)
    for sr in (44100, 48000):
        hit = drum_hit(sr, 1, rng)
        sf.write(tmp_path / f"hit{sr}.wav", hit, sr, subtype="FLOAT")
        sf.write(tmp_path / f"hit_silence{sr}.wav", np.concatenate([hit, np.zeros(sr, np.float32)]), sr,
                 subtype="FLOAT")
        files = [tmp_path / f"hit{sr}.wav", tmp_path / f"hit_silence{sr}.wav"]
        # one crop per file (the evaluation path), and the default per-hit path: one hit each, the same scores
        rc, out, err = run(["--checkpoint", drum_ckpt, "--json", "--top-k", "5", "--per-file", *files], capsys)
        assert rc == 0, err
        alone, padded = jsonl(out)
        assert alone["n_windows"] == padded["n_windows"] == 1
        assert alone["top"][0]["label"] == padded["top"][0]["label"]
        np.testing.assert_allclose(_probs(alone, DRUM_CLASSES), _probs(padded, DRUM_CLASSES), atol=1e-4)
        rc, out, err = run(["--checkpoint", drum_ckpt, "--json", "--top-k", "5", *files], capsys)
        assert rc == 0, err
        hit_alone, hit_padded = jsonl(out)
        assert hit_alone["file"] == str(files[0]) and hit_padded["file"] == str(files[1])
        assert hit_alone["label"] == hit_padded["label"] == alone["top"][0]["label"]
        np.testing.assert_allclose(_probs(hit_alone, DRUM_CLASSES), _probs(alone, DRUM_CLASSES), atol=1e-4)
        np.testing.assert_allclose(_probs(hit_padded, DRUM_CLASSES), _probs(alone, DRUM_CLASSES), atol=1e-4)


@pytest.mark.parametrize("preset", ["esc50", "drums"])
def test_evaluate_and_per_file_inference_give_equal_probabilities(preset, esc50_flac, drum_dir, drum_ckpt,
                                                                   tmp_path, capsys):
    if preset == "drums":
        ckpt, names = drum_ckpt, DRUM_CLASSES
        ev = ["--dataset", "folder", "--data-dir", drum_dir, "--split", "all"]
        files = sorted(drum_dir.rglob("*.wav"))
        key = lambda p: str(p.relative_to(drum_dir))                        # noqa: E731
    else:
        ckpt, names = make_ckpt(tmp_path / "esc.safetensors", au.ESC50_FEATURES, CLASSES), CLASSES
        ev = ["--data-dir", esc50_flac, "--fold", "5"]
        files = sorted((esc50_flac / "audio").glob("5-*.flac"))
        key = lambda p: p.name.replace(".flac", ".wav")                     # noqa: E731
    rc, _, err = run(["--checkpoint", ckpt, "--evaluate", "--out-dir", tmp_path / "ev", *ev], capsys)
    assert rc == 0, err
    with open(tmp_path / "ev" / "predictions.csv") as fh:
        rows = {r["clip"]: np.array([float(r[f"p_{c}"]) for c in names]) for r in csv.DictReader(fh)}
    rc, out, err = run(["--checkpoint", ckpt, "--json", "--top-k", len(names), *files], capsys)
    assert rc == 0, err
    recs = jsonl(out)
    assert len(recs) == len(files) == len(rows)
    for f, rec in zip(files, recs):
        np.testing.assert_allclose(_probs(rec, names), rows[key(f)], atol=2e-6)
    # the library call the hits helper uses gives the same numbers
    pred = Predictor(ckpt, "cpu")
    np.testing.assert_allclose(pred.predict_waveform(au.load_audio(files[0], pred.sample_rate)),
                               rows[key(files[0])], atol=2e-6)


def test_onset_checkpoint_refuses_sliding_windows(drum_ckpt, drum_dir, capsys):
    rc, out, err = run(["--checkpoint", drum_ckpt, "--window", "0.2", drum_dir], capsys)
    assert rc == 2 and out == "" and "first onset" in err


def test_eval_crops_average_evenly_spaced_crops(tmp_path):
    """Crops of the training crop length (1 s = 31 frames here), spread over the full clip as the engine does."""
    path = make_ckpt(tmp_path / "mc.safetensors", SMALL, CLASSES, train_config={"eval_crops": 3, "crop": 1.0})
    pred = Predictor(path, "cpu")
    wave = torch.from_numpy(synth_clip(2, 8000, 2.0, np.random.default_rng(0)))
    full = pred.logmel(pred.prepare(wave)[None])
    offsets = au.multi_crop_offsets(full.shape[1], 31, 3)
    assert offsets == [0, 16, 32] and SMALL.full_frames == 63 and pred.crop_frames == 31
    want = np.mean([pred.logits_to_probs(pred.normalise(au.crop_frames(full, 31, o))) for o in offsets], 0)[0]
    np.testing.assert_allclose(pred.predict_waveform(wave), want, atol=1e-6)


# ------------------------------------------------------------------ 3. any checkpoint on any data
def test_evaluate_on_another_kit_with_a_class_subset_and_a_mapping(drum_ckpt, tmp_path, capsys):
    other = tmp_path / "other_kit"
    rng = np.random.default_rng(1)
    for cls in ("bd", "snare", "hihat", "cowbell"):
        (other / cls).mkdir(parents=True)
        for k in range(2):
            sf.write(other / cls / f"{k}.wav", drum_hit(22050, k, rng), 22050)
    rc, out, err = run(["--checkpoint", drum_ckpt, "--evaluate", "--dataset", "folder", "--data-dir", other,
                        "--split", "all", "--classes", "bd=kick,snare,hihat", "--json",
                        "--out-dir", tmp_path / "ev"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert res["n"] == 6 and res["class_names"] == ["hihat", "kick", "snare"]
    assert res["scored_on_classes"] == ["hihat", "kick", "snare"] and 0 <= res["accuracy_all_classes"] <= 1
    assert res["data"]["classes"] == {"bd": "kick", "snare": "snare", "hihat": "hihat"}
    assert np.asarray(res["confusion_matrix"]).shape == (3, 3) and np.asarray(res["confusion_matrix"]).sum() == 6
    with open(tmp_path / "ev" / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["true"] for r in rows} == {"kick", "snare", "hihat"}
    assert all(abs(sum(float(r[f"p_{c}"]) for c in res["class_names"]) - 1) < 1e-4 for r in rows)
    # a folder whose classes the checkpoint does not know, without --classes: one line, exit 2
    rc, out, err = run(["--checkpoint", drum_ckpt, "--evaluate", "--dataset", "folder", "--data-dir", other,
                        "--split", "all", "--out-dir", tmp_path / "ev2"], capsys)
    assert rc == 2 and "cowbell" in err and "--classes" in err and len(err.strip().splitlines()) == 2


def test_esc50_official_layout_decodes_only_the_requested_fold(esc50_wav, tmp_path, monkeypatch, capsys):
    ckpt = make_ckpt(tmp_path / "e.safetensors", au.ESC50_FEATURES, CLASSES)
    decoded = []
    real = au.load_audio
    monkeypatch.setattr(au, "load_audio", lambda p, *a, **k: (decoded.append(Path(p).name), real(p, *a, **k))[1])
    rc, out, err = run(["--checkpoint", ckpt, "--evaluate", "--data-dir", esc50_wav, "--fold", "2", "--json",
                        "--cache-dir", tmp_path / "cache", "--out-dir", tmp_path / "ev"], capsys)
    assert rc == 0, err
    assert json.loads(out)["n"] == 3 and sorted(decoded) == sorted(n for n in os.listdir(esc50_wav / "audio")
                                                                   if n.startswith("2-"))


# ------------------------------------------------------------------ 4. group splits, split files
def _speaker_files(root: Path, speakers, takes) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for digit in range(10):
        for s, n in zip(speakers, takes):
            for k in range(n):
                files.append(root / str(digit) / f"{digit}_{s}_{k}.wav")
                labels.append(digit)
    return files, labels


@pytest.mark.parametrize("takes", [(5, 5, 5, 5, 5, 5), (9, 7, 6, 4, 3, 2, 2, 1)])
def test_dataset_wide_groups_never_straddle_splits_and_sizes_follow_fractions(takes):
    speakers = [f"spk{chr(97 + i)}" for i in range(len(takes))]
    files, labels = _speaker_files(Path("/data"), speakers, takes)
    groups = au.file_groups(files, r"^\d+_|_\d+$", scope="dataset")
    assert set(groups) == set(speakers)
    parts = au.stratified_split(labels, (0.7, 0.15, 0.15), seed=3, groups=groups, group_scope="dataset")
    owner = {}
    for k, idx in enumerate(parts):
        for i in idx:
            assert owner.setdefault(groups[i], k) == k, f"{groups[i]} in two splits"
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(files)))
    assert all(len(p) for p in parts)
    biggest = 10 * max(takes)
    for frac, p in zip((0.7, 0.15, 0.15), parts):
        assert abs(len(p) - frac * len(files)) <= biggest
    if len(set(takes)) == 1:                                   # 6 equal speakers: 4 / 1 / 1 exactly
        assert [len(p) for p in parts] == [200, 50, 50]


def test_dataspec_group_scope_and_split_file(tmp_path):
    root = tmp_path / "digits"
    rng = np.random.default_rng(0)
    for digit in range(3):
        (root / str(digit)).mkdir(parents=True)
        for s in ("ann", "bob", "cid", "dan"):
            for k in range(2):
                sf.write(root / str(digit) / f"{digit}_{s}_{k}.wav", synth_clip(digit, 8000, 0.3, rng), 8000)
    spec = DataSpec(kind="folder", root=str(root), feature_config=SMALL.to_dict(), augment=False,
                    group_pattern=r"^\d+_|_\d+$", group_scope="dataset", fractions=(0.5, 0.25, 0.25))
    splits = build_datasets(spec)
    speakers = [{n.split("_")[1] for n in ds.names} for ds in splits]
    assert all(speakers) and not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])
    assert [ds.num_clips for ds in splits] == [12, 6, 6]
    assert spec.describe()["group_scope"] == "dataset"
    # explicit split file
    split_csv = tmp_path / "splits.csv"
    with open(split_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "split"])
        for digit in range(3):
            w.writerow([f"{digit}/{digit}_ann_0.wav", "val"])
            w.writerow([f"{digit}/{digit}_bob_0.wav", "test"])
            w.writerow([str(root / str(digit) / f"{digit}_cid_0.wav"), "train"])    # absolute path
            w.writerow([f"{digit}/{digit}_dan_1.wav", "train"])
    train, val, test = build_datasets(DataSpec(kind="folder", root=str(root), feature_config=SMALL.to_dict(),
                                               augment=False, split_file=str(split_csv)))
    assert sorted(val.names) == [f"{d}/{d}_ann_0.wav" for d in range(3)]
    assert sorted(test.names) == [f"{d}/{d}_bob_0.wav" for d in range(3)] and train.num_clips == 6
    bad = tmp_path / "bad.csv"
    bad.write_text("path,split\n0/nope.wav,train\n")
    with pytest.raises(ValueError, match="nope.wav"):
        build_datasets(DataSpec(kind="folder", root=str(root), feature_config=SMALL.to_dict(), split_file=str(bad)))


def test_evaluate_with_a_split_file(tmp_path, folder_ds, capsys):
    ckpt = make_ckpt(tmp_path / "f.safetensors", SMALL, CLASSES)
    split_csv = tmp_path / "s.csv"
    files = sorted(p for p in folder_ds.rglob("*") if p.suffix in (".wav", ".flac", ".ogg"))
    split_csv.write_text("path,split\n" + "".join(f"{f.relative_to(folder_ds)},test\n" for f in files[:5]))
    rc, out, err = run(["--checkpoint", ckpt, "--evaluate", "--dataset", "folder", "--data-dir", folder_ds,
                        "--split-file", split_csv, "--json", "--out-dir", tmp_path / "ev"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert res["n"] == 5 and res["data"]["split_file"] == str(split_csv)


# ------------------------------------------------------------------ 5. one threshold rule
def test_binary_metrics_all_use_the_stored_threshold(esc50_flac, tmp_path, capsys):
    probs = np.array([[0.4, 0.6], [0.3, 0.7], [0.9, 0.1], [0.15, 0.85]])
    labels = np.array([0, 1, 0, 1])
    m = task_metrics(probs, labels, ["not_x", "x"], {"type": "binary", "threshold": 0.8})
    assert m["accuracy"] == m["binary"]["accuracy"] == 0.75          # argmax would say 0.75 too, but:
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]                  # clip 1 (0.7 < 0.8) is negative
    assert m["per_class_accuracy"] == {"not_x": 1.0, "x": 0.5}
    # through the CLI: a threshold above every score -> everything negative, in every metric
    task = {"type": "binary", "positive_class": "high_tone", "threshold": 0.999}
    ckpt = make_ckpt(tmp_path / "b.safetensors", au.ESC50_FEATURES, ["not_high_tone", "high_tone"], task=task)
    rc, out, err = run(["--checkpoint", ckpt, "--evaluate", "--data-dir", esc50_flac, "--fold", "5", "--json",
                        "--out-dir", tmp_path / "ev"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert res["accuracy"] == res["binary"]["accuracy"] == pytest.approx(4 / 6)
    assert res["confusion_matrix"] == [[4, 0], [2, 0]]


# ------------------------------------------------------------------ 6. metadata checks
@pytest.mark.parametrize("case", ["n_fft", "duration", "filterbank", "channels", "huge_value", "no_norm", "n_mels_norm"])
def test_checkpoint_metadata_is_checked_before_allocation(case, tmp_path, capsys):
    feat, kw = SMALL.to_dict(), {}
    if case == "n_fft":
        feat["n_fft"] = 2 ** 40
    elif case == "duration":
        feat["duration"] = 1e12
    elif case == "filterbank":
        feat["filterbank"] = "bark"
    elif case == "channels":
        kw["model_config"] = {"channels": [4, 8, 8, 10 ** 6]}       # 72 M weights the file does not hold
    elif case == "huge_value":
        kw["model_config"] = {"channels": [4, 8, 8, 10 ** 9]}
    elif case == "no_norm":
        kw["norm"] = False
    path = tmp_path / f"bad_{case}.safetensors"
    if case in ("n_fft", "duration", "filterbank"):      # save with a sane config, then rewrite the metadata
        make_ckpt(path, SMALL, CLASSES, model_config={})
        from safetensors.torch import load_file, save_file
        from training.checkpoint import read_meta
        meta = read_meta(path)
        meta["feature_config"] = feat
        save_file(load_file(str(path)), str(path), metadata={"toolkit": json.dumps(meta)})
    elif case == "n_mels_norm":
        make_ckpt(path, SMALL, CLASSES, model_config={})
        from safetensors.torch import load_file, save_file
        from training.checkpoint import read_meta
        meta = read_meta(path)
        meta["normalization"] = {"mean": [0.0] * 5, "std": [1.0] * 5}
        save_file(load_file(str(path)), str(path), metadata={"toolkit": json.dumps(meta)})
    else:
        make_ckpt(path, SMALL, CLASSES, **kw)
    with pytest.raises(CheckpointError, match=path.name):
        Predictor(path, "cpu")
    clip = tmp_path / "c.wav"
    sf.write(clip, np.zeros(800, np.float32), 8000)
    rc, out, err = run(["--checkpoint", path, clip], capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and path.name in err


# ------------------------------------------------------------------ 7. windows
@pytest.mark.parametrize("args,needle", [(["--window", "0.0001"], "--window"), (["--window", "1e-9"], "--window"),
                                         (["--hop", "1e-9"], "--hop")])
def test_degenerate_windows_are_argument_errors(args, needle, tmp_path, capsys):
    ckpt = make_ckpt(tmp_path / "s.safetensors", SMALL, CLASSES)
    clip = tmp_path / "c.wav"
    sf.write(clip, synth_clip(0, 8000, 3.0, np.random.default_rng(0)), 8000)
    rc, out, err = run(["--checkpoint", ckpt, *args, clip], capsys)
    assert rc == 2 and out == "" and needle in err and "c.wav" not in err


def test_stream_with_a_hop_below_one_sample_exits_2(tmp_path):
    ckpt = make_ckpt(tmp_path / "s.safetensors", SMALL, CLASSES)
    proc = subprocess.run([sys.executable, str(REPO / "inference.py"), "--checkpoint", str(ckpt), "--stream",
                           "--hop", "1e-9"], input=b"\x00" * 64000, capture_output=True, timeout=240)
    assert proc.returncode == 2 and proc.stdout == b"" and b"--hop" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 2 and b"Traceback" not in proc.stderr   # checkpoint + error


# ------------------------------------------------------------------ 8. listing
def test_listing_reports_what_it_skips_and_reads_every_format(tmp_path, monkeypatch, capsys):
    ckpt = make_ckpt(tmp_path / "s.safetensors", SMALL, CLASSES)
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    (d / "locked").mkdir()
    rng = np.random.default_rng(0)
    sf.write(d / "a.wav", synth_clip(0, 8000, 1.0, rng), 8000)
    sf.write(d / "sub" / "b.opus", synth_clip(1, 48000, 1.0, rng), 48000, format="OGG", subtype="OPUS")
    sf.write(d / "locked" / "hidden_by_permissions.wav", synth_clip(0, 8000, 1.0, rng), 8000)
    weird = os.fsdecode(bytes(d) + b"/caf\xe9.wav")                    # Latin-1 name: not UTF-8
    sf.write(os.fsencode(weird), synth_clip(2, 8000, 1.0, rng), 8000, format="WAV")
    os.symlink(d / "gone.wav", d / "dangling.wav")
    os.symlink(d, d / "sub" / "loop")                                   # a directory loop
    os.symlink(d / "self1.wav", d / "self2.wav")
    os.symlink(d / "self2.wav", d / "self1.wav")                        # a symlink loop
    os.mkfifo(d / "pipe.wav")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    rc, out, err = run(["--checkpoint", ckpt, "--json", d], capsys)
    assert rc == 0, err
    names = {Path(r["file"]).name for r in jsonl(out)}
    assert names == {"a.wav", "b.opus", os.path.basename(weird)}
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipped")]
    for needle in ("locked: cannot read directory", "dangling.wav: dangling symbolic link",
                   "loop: symbolic link loop", "self1.wav: symbolic link loop", "pipe.wav: is a FIFO"):
        assert any(needle in w for w in warnings), (needle, warnings)
    assert ".opus" in au.AUDIO_EXTENSIONS and all(f".{f.lower()}" in au.AUDIO_EXTENSIONS
                                                  for f in sf.available_formats() if f != "RAW")
    # named explicitly: a FIFO is called a FIFO (not "empty file"); the non-UTF-8 name prints escaped
    rc, out, err = run(["--checkpoint", ckpt, d / "pipe.wav", weird], capsys)
    assert rc == 1 and "is a FIFO" in err and "caf\\xe9.wav" in out


# ------------------------------------------------------------------ 9. names
def test_checkpoint_short_names_and_run_directories(tmp_path, capsys):
    d = tmp_path / "checkpoints"
    d.mkdir()
    make_ckpt(d / "mamba_esc50.safetensors", SMALL, CLASSES)
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    make_ckpt(run_dir / "best.safetensors", SMALL, CLASSES)
    clip = tmp_path / "c.wav"
    sf.write(clip, synth_clip(0, 8000, 1.0, np.random.default_rng(0)), 8000)
    for name, want in (("mamba", d / "mamba_esc50.safetensors"), ("mamba_esc50", d / "mamba_esc50.safetensors"),
                       (run_dir, run_dir / "best.safetensors")):
        rc, out, err = run(["--checkpoint", name, "--checkpoint-dir", d, "--json", clip], capsys)
        assert rc == 0, err
        assert jsonl(out)[0]["checkpoint"] == str(want)
    rc, out, err = run(["--checkpoint", "lstm", "--checkpoint-dir", d, clip], capsys)
    assert rc == 2 and "mamba_esc50" in err and "short: mamba" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ issue 15: terminal output
def test_evaluation_output_fits_100_columns_and_names_the_checkpoint_once(tmp_path, capsys):
    classes = [f"a_rather_long_class_name_number_{i:02d}" for i in range(50)]
    root = tmp_path / "fifty"
    rng = np.random.default_rng(0)
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        sf.write(root / c / "x.wav", synth_clip(i % 3, 8000, 0.2, rng), 8000)
    ckpt = make_ckpt(tmp_path / ("deep" * 20) / "fifty.safetensors", SMALL, classes)
    rc, out, err = run(["--checkpoint", ckpt, "--evaluate", "--dataset", "folder", "--data-dir", root,
                        "--split", "all", "--out-dir", tmp_path / "ev"], capsys)
    assert rc == 0, err
    lines = (out + err).splitlines()
    assert max(len(line) for line in lines) <= 100
    assert sum("checkpoint" in line.lower() and "fifty.safetensors" in line for line in lines) == 1
    assert (tmp_path / "ev" / "confusion_matrix.csv").read_text().count("\n") == 51
    assert (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 0
    rc, out, _ = run(["--checkpoint", ckpt, "--evaluate", "--dataset", "folder", "--data-dir", root,
                      "--split", "all", "--json", "--out-dir", tmp_path / "ev"], capsys)
    assert rc == 0 and json.loads(out)["checkpoint"] == str(ckpt)


def test_bad_arguments_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--top-k", "abc", "x.wav"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_class_subset_of_the_training_data_keeps_training_split(drum_ckpt, drum_dir, tmp_path, capsys):
    """--classes on the checkpoint's own data chooses classes from training's split, never re-splits."""
    def names(extra):
        rc, out, err = run(["--checkpoint", drum_ckpt, "--evaluate", "--split", "train", "--json",
                            "--out-dir", tmp_path / "ev", *extra], capsys)
        assert rc == 0, err
        with open(tmp_path / "ev" / "predictions.csv") as fh:
            return {r["clip"] for r in csv.DictReader(fh)}
    full, sub = names([]), names(["--classes", "kick,snare"])
    assert sub and sub == {n for n in full if n.split("/")[0] in ("kick", "snare")}


def test_evaluate_a_folder_with_a_name_that_is_not_utf8(tmp_path, capsys):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        sf.write(root / c / "ok.wav", synth_clip(i, 8000, 0.5, rng), 8000)
    sf.write(bytes(root / "low_tone") + b"/d\xe9j\xe0.wav", synth_clip(0, 8000, 0.5, rng), 8000, format="WAV")
    ckpt = make_ckpt(tmp_path / "s.safetensors", SMALL, CLASSES)
    rc, out, err = run(["--checkpoint", ckpt, "--evaluate", "--dataset", "folder", "--data-dir", root,
                        "--split", "all", "--json", "--out-dir", tmp_path / "ev"], capsys)
    assert rc == 0, err
    assert json.loads(out)["n"] == 4 and "d\\xe9j\\xe0.wav" in (tmp_path / "ev" / "predictions.csv").read_text()


# ------------------------------------------------------------------ provenance of an evaluation
@pytest.fixture(scope="module")
def esc50_run(esc50_flac, tmp_path_factory):
    from training.cli import main as train_main
    out = tmp_path_factory.mktemp("esc50run") / "run"
    assert train_main(["--model", "cnn", "--preset", "tiny", "--data-dir", str(esc50_flac), "--epochs", "1",
                       "--batch-size", "8", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    return out / "best.safetensors"


def test_matches_training_compares_the_clips_not_the_data_path(esc50_run, esc50_flac, tmp_path, capsys):
    import shutil
    moved = tmp_path / "elsewhere" / "ESC-50"
    shutil.copytree(esc50_flac, moved)
    rc, out, err = run(["--checkpoint", esc50_run, "--evaluate", "--data-dir", moved, "--fold", "5", "--json",
                        "--out-dir", tmp_path / "ev"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert res["matches_training"] is True and res["accuracy"] == res["training_test_acc"]
    # another fold is not training's test split
    rc, out, err = run(["--checkpoint", esc50_run, "--evaluate", "--data-dir", moved, "--fold", "4", "--json",
                        "--out-dir", tmp_path / "ev4"], capsys)
    assert rc == 0 and json.loads(out)["matches_training"] is None


def test_a_cache_dir_in_the_checkpoint_is_never_written(esc50_run, esc50_flac, tmp_path, capsys, monkeypatch):
    from training.checkpoint import build_from_checkpoint, read_meta
    model, meta = build_from_checkpoint(esc50_run)
    meta["dataset"]["cache_dir"] = str(tmp_path / "chosen_by_the_checkpoint")
    crafted = save_checkpoint(tmp_path / "crafted.safetensors", model, meta)
    assert read_meta(crafted)["dataset"]["cache_dir"]
    monkeypatch.setenv("AUDIO_CACHE_DIR", str(tmp_path / "user_cache"))
    rc, out, err = run(["--checkpoint", crafted, "--evaluate", "--data-dir", esc50_flac, "--fold", "5", "--json",
                        "--out-dir", tmp_path / "ev"], capsys)
    assert rc == 0, err
    assert not (tmp_path / "chosen_by_the_checkpoint").exists()


def test_train_cli_passes_group_scope_and_split_file():
    from training.cli import data_spec_from_args, parse_args
    args = parse_args(["--model", "cnn", "--dataset", "folder", "--data-dir", "digits", "--group-pattern", r"_\d+$",
                       "--group-scope", "dataset", "--split-file", "splits.csv"])
    spec = data_spec_from_args(args)
    assert spec.group_scope == "dataset" and spec.split_file == "splits.csv"
    assert data_spec_from_args(parse_args(["--model", "cnn"])).group_scope == "class"
