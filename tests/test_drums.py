"""Drum-hit classification: folder-loader edge cases, the drums feature preset, one-vs-rest end to
end (threshold chosen on validation and stored in the checkpoint), and the notebook on tiny data."""
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import audio_utils as au
import train as train_cli
from synth import make_folder_dataset
from training import drums
from training.checkpoint import build_from_checkpoint, read_meta
from training.data import DataSpec, build_datasets
from training.engine import predict_proba
from training.metrics import best_threshold
from training.presets import AUGMENT_PRESETS, feature_preset

REPO = Path(__file__).resolve().parent.parent
DRUMS = feature_preset("drums")


def _hit(sr: int, seconds: float, freq: float, delay: float = 0.0, seed: int = 0) -> np.ndarray:
    """A decaying tone + noise burst starting after ``delay`` seconds of silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    env = np.exp(-t / 0.05)
    x = env * (0.6 * np.sin(2 * np.pi * freq * t) + 0.2 * rng.standard_normal(len(t)))
    return np.concatenate([np.zeros(int(sr * delay)), x]).astype(np.float32)


@pytest.fixture(scope="module")
def edge_ds(tmp_path_factory):
    """Two classes with every awkward file a drum folder can hold."""
    root = tmp_path_factory.mktemp("edge") / "kit"
    kick, snare = root / "kick", root / "snare"
    kick.mkdir(parents=True)
    snare.mkdir()
    sf.write(kick / "short_5ms.wav", _hit(48000, 0.005, 60), 48000)                      # 240 samples
    sf.write(kick / "stereo.flac", np.stack([_hit(44100, 0.3, 60), _hit(44100, 0.3, 60, seed=1)], 1), 44100)
    sf.write(kick / "rate48k.wav", _hit(48000, 0.4, 70), 48000)
    sf.write(kick / "late_onset.ogg", _hit(22050, 0.3, 80, delay=1.5), 22050)            # 1.5 s of silence first
    sf.write(kick / "silence.wav", np.zeros(4410, np.float32), 44100)
    sf.write(kick / "UPPER.WAV", _hit(16000, 0.2, 60), 16000)
    (kick / "notes.xyz").write_text("unknown extension")
    (kick / "readme.txt").write_text("not audio")
    (kick / "._short_5ms.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble")              # macOS resource fork
    (kick / ".hidden").mkdir()
    (kick / ".hidden" / "x.wav").write_bytes(b"junk")
    for k in range(4):
        sf.write(snare / f"snare_{k}.flac", _hit(44100, 0.25, 3000 + 500 * k, seed=k), 44100)
    return root


def _by_name(ds, name):
    return ds.names.index(name)


# ------------------------------------------------------------------ folder loader edge cases
def test_folder_loader_edge_cases(edge_ds):
    files, labels, names = au.list_folder_dataset(edge_ds)
    got = sorted(p.name for p in files)
    assert names == ["kick", "snare"]
    assert got == sorted(["short_5ms.wav", "stereo.flac", "rate48k.wav", "late_onset.ogg", "silence.wav",
                          "UPPER.WAV"] + [f"snare_{k}.flac" for k in range(4)])      # .xyz/.txt/hidden ignored
    ds = au.folder_dataset(edge_ds, DRUMS)
    feats = torch.as_tensor(np.asarray(ds.features))
    assert feats.shape == (10, DRUMS.full_frames, DRUMS.n_mels) and torch.isfinite(feats).all()
    floor = math.log(DRUMS.log_offset)
    # silence: no onset to find, no crash, and it loads as silence (the log floor everywhere)
    assert torch.allclose(feats[_by_name(ds, "kick/silence.wav")], torch.tensor(floor))
    # a 5-ms file keeps its energy in the first frames and is silence afterwards
    short = feats[_by_name(ds, "kick/short_5ms.wav")]
    assert short[:2].max() > floor + 5 and torch.allclose(short[5:], torch.tensor(floor), atol=1e-3)
    # onset alignment: a hit after 1.5 s of silence starts at the beginning of the crop
    late = feats[_by_name(ds, "kick/late_onset.ogg")]
    energy = late.exp().sum(-1)
    assert int(energy.argmax()) <= 3
    x, y = ds[0]
    assert x.shape == (DRUMS.n_frames, DRUMS.n_mels)


def test_load_audio_stereo_and_rates(edge_ds):
    st = au.load_audio(edge_ds / "kick" / "stereo.flac", 44100)
    assert st.dim() == 1 and st.shape[0] == int(0.3 * 44100)
    r48 = au.load_audio(edge_ds / "kick" / "rate48k.wav", 44100)
    assert abs(r48.shape[0] - int(0.4 * 44100)) <= 1
    assert au.find_onset(torch.zeros(100), 44100) == 0
    assert au.prepare_waveform(torch.zeros(10), DRUMS).shape == (DRUMS.num_samples,)


def test_class_filter_merge_and_split(tmp_path):
    root = tmp_path / "drums"
    counts = {"kick": 7, "snare": 9, "hihat": 6, "cymbal": 12, "tom": 8, "clap": 3, "rim": 4}
    for c, n in counts.items():
        (root / c).mkdir(parents=True)
        for k in range(n):
            sf.write(root / c / f"{c}{k // 2}-{k % 2}.wav", _hit(16000, 0.05, 100 + 10 * k), 16000)
    files, labels, names = au.list_folder_dataset(root, classes=list(drums.DRUM5))
    assert names == list(drums.DRUM5) and len(files) == sum(counts[c] for c in drums.DRUM5)
    _, lab, names = au.list_folder_dataset(root, merge={"hand": ["clap", "rim"]})
    assert "hand" in names and "clap" not in names and np.bincount(lab)[names.index("hand")] == 7
    _, lab, names = au.list_folder_dataset(root, classes=["kick", "hand"], merge={"hand": ["clap", "rim"]})
    assert names == ["kick", "hand"] and np.bincount(lab).tolist() == [7, 7]
    with pytest.raises(ValueError, match="unknown class"):
        au.list_folder_dataset(root, classes=["kick", "cowbell"])
    labels = np.asarray(au.list_folder_dataset(root, classes=list(drums.DRUM5))[1])
    parts = au.stratified_split(labels, seed=3)
    assert sum(len(p) for p in parts) == len(labels) and not set(parts[0]) & set(parts[2])
    for p in parts:                                  # every class in every part
        assert set(labels[p]) == set(range(5))
    # grouped: takes of one source ("kick0-0", "kick0-1" -> group "kick/kick0") never straddle two splits
    files = au.list_folder_dataset(root, classes=list(drums.DRUM5))[0]
    groups = au.file_groups(files, r"-\d+$")
    assert groups[0] == "kick/kick0" and len(set(groups)) == sum((counts[c] + 1) // 2 for c in drums.DRUM5)
    for seed in range(4):
        gparts = au.stratified_split(labels, seed=seed, groups=groups)
        assert sorted(np.concatenate(gparts).tolist()) == list(range(len(labels)))
        owners = [{groups[i] for i in p} for p in gparts]
        assert all(set(labels[p]) == set(range(5)) for p in gparts)        # >= 3 groups per class here
        assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])
    again = au.stratified_split(labels, seed=3)
    other = au.stratified_split(labels, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


# ------------------------------------------------------------------ the drums preset
def test_drums_preset_keeps_high_frequencies_and_attack():
    assert DRUMS.sample_rate == 44100 and DRUMS.onset_align and (DRUMS.f_max or DRUMS.sample_rate / 2) > 16000
    assert DRUMS.hop_length < feature_preset("esc50").hop_length * DRUMS.sample_rate / 16000 / 4
    assert DRUMS.n_frames <= DRUMS.full_frames and DRUMS.n_frames * DRUMS.hop_length / DRUMS.sample_rate >= 0.3
    sr = DRUMS.sample_rate
    t = torch.arange(int(0.2 * sr)) / sr
    hat = torch.sin(2 * math.pi * 12000 * t) * torch.exp(-t / 0.03)          # hi-hat-like 12 kHz burst
    x = au.extract_features(torch.cat([torch.zeros(sr // 2), hat]), DRUMS)
    assert x.shape == (64, 96)
    band = x[:8].mean(0)
    assert int(band.argmax()) > DRUMS.n_mels * 3 // 4                        # energy lands in the top bins
    aug = au.AugmentConfig.from_dict(AUGMENT_PRESETS["drums"])
    assert aug.time_shift_max * DRUMS.n_frames <= 4 and aug.time_mask_param < DRUMS.n_frames // 4


# ------------------------------------------------------------------ one-vs-rest end to end
@pytest.fixture(scope="module")
def drum_folder(tmp_path_factory):
    """tests/synth.make_folder_dataset with the classes renamed to drums (kick, snare, hihat)."""
    root = make_folder_dataset(tmp_path_factory.mktemp("drumfolder") / "drums", per_class=8)
    for old, new in (("low_tone", "kick"), ("noise_bursts", "snare"), ("high_tone", "hihat")):
        (root / old).rename(root / new)
    return root


def test_one_vs_rest_folder_end_to_end(drum_folder, tmp_path, capsys):
    out = tmp_path / "kick"
    rc = train_cli.main(["--model", "mlp", "--preset", "tiny", "--dataset", "folder", "--data-dir", str(drum_folder),
                         "--feature-preset", "drums", "--one-vs-rest", "kick", "--class-weights", "--split-seed", "1",
                         "--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--out", str(out), "--no-progress",
                         "--threads", "1", "--seed", "1"])
    assert rc == 0, capsys.readouterr().err
    meta = read_meta(out / "best.safetensors")
    assert meta["class_names"] == ["not_kick", "kick"]
    task = meta["task"]
    assert task["type"] == "binary" and task["positive_class"] == "kick" and 0.0 <= task["threshold"] <= 1.0
    assert meta["train_config"]["class_weights"] is True and meta["dataset"]["split_seed"] == 1
    assert meta["feature_config"]["sample_rate"] == 44100 and meta["feature_config"]["onset_align"]
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val_binary", "test_binary"):
        assert {"precision", "recall", "f1", "roc_auc", "threshold"} <= set(metrics[split])
        assert metrics[split]["threshold"] == task["threshold"]
    # the stored threshold is the F1-optimal one on the validation split (not on test)
    model, meta = build_from_checkpoint(out / "best.safetensors")
    spec = DataSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in meta["dataset"].items()})
    _, val, _ = build_datasets(spec)
    val.set_normalization(meta["normalization"]["mean"], meta["normalization"]["std"])
    probs, labels = predict_proba(model, val)
    assert best_threshold(probs[:, 1], labels == 1) == pytest.approx(task["threshold"])


def test_one_vs_rest_esc50(esc50_flac, tmp_path):
    out = tmp_path / "esc"
    rc = train_cli.main(["--model", "mlp", "--preset", "tiny", "--data-dir", str(esc50_flac), "--one-vs-rest",
                         "high_tone", "--epochs", "1", "--batch-size", "8", "--out", str(out), "--no-progress",
                         "--threads", "1"])
    assert rc == 0
    meta = read_meta(out / "best.safetensors")
    assert meta["task"]["type"] == "binary" and "threshold" in meta["task"]
    assert train_cli.main(["--model", "mlp", "--data-dir", str(esc50_flac), "--one-vs-rest", "cowbell",
                           "--epochs", "1", "--out", str(tmp_path / "bad"), "--no-progress"]) == 2


# ------------------------------------------------------------------ experiment helpers
def test_experiment_helpers(drum_folder):
    tasks = drums.default_tasks(drums.list_classes(drum_folder))
    assert [t.name for t in tasks] == ["multiclass", "kick_vs_rest", "snare_vs_rest"]
    assert tasks[0].classes == ("kick", "snare", "hihat")
    rows = drums.run_grid(["mlp", "no_such_model"], tasks[:2], [0, 1], drum_folder, log=lambda *a: None,
                          preset="tiny", train=drums.TINY_TRAIN)
    assert len(rows) == 4 and {r["task"] for r in rows} == {"multiclass", "kick_vs_rest"}
    binary = [r for r in rows if r["task"] == "kick_vs_rest"]
    assert all(0 <= r["test_f1"] <= 1 and 0 <= r["threshold"] <= 1 for r in binary)
    table = drums.format_table(rows)
    assert re.search(r"\| mlp +\|", table) and "±" in table and "kick_vs_rest" in table
    assert drums.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    # group_pattern reaches the split through DataSpec: kick/low_tone_0..3 form one group
    spec = drums.task_spec(tasks[0], drum_folder, split_seed=2, group_pattern=r"[0-3]$", augment=False)
    parts = build_datasets(spec)
    holders = [{n for n in p.names if n.startswith("kick/") and Path(n).stem[-1] in "0123"} for p in parts]
    assert sum(bool(h) for h in holders) == 1 and len(set().union(*holders)) == 4


def test_experiment_script_tiny(drum_folder, capsys):
    from scripts import load_script

    mod = load_script("benchmarks/drums_experiment.py")
    assert mod.main(["--data-dir", str(drum_folder), "--tiny", "--models", "mlp", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| mlp +\|", out) and "snare_vs_rest" in out and "positives" in out


# ------------------------------------------------------------------ notebook
@pytest.mark.slow
def test_notebook_runs_on_tiny_data(drum_folder, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = REPO / "notebooks" / "drum_classification.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code"), "store the notebook without outputs"
    monkeypatch.setenv("TOOLKIT_TINY", "1")
    monkeypatch.setenv("TOOLKIT_DATA_DIR", str(drum_folder))
    monkeypatch.delenv("MPLBACKEND", raising=False)          # the kernel's inline backend makes the PNGs
    client = nbclient.NotebookClient(nb, timeout=60, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = "\n".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    markdown = "\n".join(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert "kick_vs_rest" in text and "snare_vs_rest" in text and "liquid_s4" in text    # ran, or "skipping liquid_s4: ..."
    assert re.search(r"\| mlp +\|", markdown) and re.search(r"\| cnn +\|", markdown) and len(images) >= 3


# ------------------------------------------------------------------ loop context: earlier hits' tails
def test_loop_tails_add_an_earlier_hits_tail_at_the_gap():
    hop_s, t, f = 0.01, 6, 4
    silent = math.log(1e-6)
    x = torch.full((3, t, f), silent)
    x[:, 0] = 0.0                                               # each view: its own attack in frame 0
    context = torch.full((2, 40, f), silent)
    for p in range(2):
        context[p, 10 + 2] = 1.0 + p                            # partner p: a marker 0.1 s + 2 frames after its start
    cfg = au.AugmentConfig(loop_tail_prob=1.0, loop_gap=(0.1, 0.1), loop_tail_gain_db=(0.0, 0.0))
    out = au.add_loop_tails(x, context, cfg, hop_s, torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, 0], x[:, 0], atol=1e-5)
    marker = out[:, 2, 0]                                       # the tail lands 0.1 s later than it started
    expected = [torch.logaddexp(torch.tensor(silent), torch.tensor(1.0 + p)) for p in range(2)]
    assert all(any(torch.isclose(m, e) for e in expected) for m in marker)
    # elsewhere silence met silence (power doubles) and the view's own attack is untouched
    assert torch.allclose(out[:, 3:], x[:, 3:] + math.log(2.0), atol=1e-5)
    assert torch.allclose(out[:, 1], x[:, 1] + math.log(2.0), atol=1e-5)
    off = au.AugmentConfig(loop_tail_prob=0.0)
    assert au.add_loop_tails(x, context, off, hop_s) is x
    gain = au.AugmentConfig(loop_tail_prob=1.0, loop_gap=(0.1, 0.1), loop_tail_gain_db=(-10.0, -10.0))
    quiet = au.add_loop_tails(x, context, gain, hop_s, torch.Generator().manual_seed(0))
    assert torch.allclose(quiet[:, 2, 0], marker - math.log(10.0), atol=1e-3)    # -10 dB = power / 10


def test_folder_dataset_builds_the_loop_context_of_onset_aligned_clips(drum_folder, tmp_path):
    cfg = au.FeatureConfig(sample_rate=16000, n_fft=256, hop_length=64, n_mels=16, duration=0.1, n_frames=22,
                           onset_align=True, onset_pre_ms=5.0)
    aug = au.AugmentConfig(loop_tail_prob=1.0, loop_gap=(0.25, 0.5))
    ds = au.folder_dataset(drum_folder, cfg, split="train", augment=aug, cache_dir=tmp_path)
    plain = au.folder_dataset(drum_folder, cfg, split="train", augment=au.AugmentConfig(), cache_dir=tmp_path)
    ctx_cfg = au.loop_context_config(cfg, aug)
    assert ctx_cfg.duration == pytest.approx(0.1 + 0.5 + 2 * 64 / 16000)
    assert ds.context.shape == (ds.num_clips, ctx_cfg.full_frames, 16) and plain.context is None
    # the context starts where the clip's own crop starts (same onset), and continues past it
    assert torch.allclose(ds.context[:, 1:cfg.full_frames - 2], ds.features[:, 1:cfg.full_frames - 2], atol=1e-4)
    assert ds.subset([0, 2]).context.shape[0] == 2
    x, y = ds.get_batch(list(range(ds.num_clips)), torch.Generator().manual_seed(1))
    x0, _ = plain.get_batch(list(range(ds.num_clips)), torch.Generator().manual_seed(1))
    assert x.shape == x0.shape and not torch.allclose(x, x0)
    with pytest.raises(ValueError, match="onset-aligned"):
        au.folder_dataset(drum_folder, replace(cfg, onset_align=False), split="train", augment=aug, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="context"):
        au.FeatureDataset(ds.features, ds.labels, ds.class_names, cfg, augment=aug)


def test_drum_recipe_crop_fits_between_hits_and_turns_loop_tails_on():
    from training.cli import data_spec_from_args, parse_args
    spec = data_spec_from_args(parse_args(["--recipe", str(REPO / "recipes" / "drums_cnn.yaml")]))
    cfg = spec.feature_cfg()
    aug = au.AugmentConfig.from_dict(spec.augment_config)
    assert spec.kind == "folder" and cfg.onset_align and cfg.sample_rate == 44100
    # a hit's crop ends (pre-roll before its onset + crop) before the segment of a hit 0.25 s later starts
    # (pre-roll + the segmenter's 5-ms margin before it): a hit in a loop is cropped as its file alone
    assert -cfg.onset_pre_ms / 1000 + cfg.duration <= 0.25 - (cfg.onset_pre_ms + 5.0) / 1000
    assert aug.loop_tail_prob > 0 and aug.loop_gap[0] >= 0.25 and aug.time_shift_max == AUGMENT_PRESETS["drums"]["time_shift_max"]
    assert cfg.n_frames <= cfg.full_frames
