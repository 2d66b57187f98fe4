"""inference.py: classification of any audio, sliding windows, streaming, evaluation, error handling."""
import io
import json
import pickle
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import audio_utils as au
import inference
import models
import train as train_cli
from synth import CLASSES, synth_clip
from training.checkpoint import CheckpointError, save_checkpoint
from training.data import DataSpec
from training.engine import predict_proba

REPO = Path(__file__).resolve().parent.parent
# a cheap feature config for the long-file and streaming tests: 2-s clips at 8 kHz -> [60, 32]
SMALL = au.FeatureConfig(sample_rate=8000, n_fft=256, hop_length=256, n_mels=32, duration=2.0, n_frames=60)


def make_ckpt(path, cfg=au.ESC50_FEATURES, classes=CLASSES, task=None, metrics=None, dataset=None, seed=0,
              model_name="cnn"):
    torch.manual_seed(seed)
    model = models.build_model("cnn", num_classes=len(classes), n_mels=cfg.n_mels, n_frames=cfg.n_frames,
                               preset="tiny")
    meta = {"class_names": list(classes), "feature_config": cfg.to_dict(),
            "normalization": {"mean": [-8.0] * cfg.n_mels, "std": [3.0] * cfg.n_mels},
            "task": task or {"type": "multiclass"}, "metrics": metrics or {}, "model_name": model_name}
    if dataset is not None:
        meta["dataset"] = dataset
    return save_checkpoint(path, model, meta)


def run_cli(argv, capsys):
    rc = inference.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(esc50_flac, tmp_path_factory):
    """A 2-epoch train.py run (tiny CNN) on the synthetic ESC-50 fixture."""
    out = tmp_path_factory.mktemp("inference") / "cnn_run"
    rc = train_cli.main(["--model", "cnn", "--preset", "tiny", "--data-dir", str(esc50_flac), "--epochs", "2",
                         "--batch-size", "8", "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return make_ckpt(tmp_path_factory.mktemp("small") / "small.safetensors", SMALL)


# ------------------------------------------------------------------ classification
def test_classifies_any_format_rate_channels_and_matches_training_features(trained, esc50_flac, capsys):
    """Fold-5 files through inference.py give the probabilities the training code path gives."""
    files = sorted((esc50_flac / "audio").glob("5-*.flac"))
    rc, out, err = run_cli(["--checkpoint", trained, "--json", "--top-k", "3", *files], capsys)
    assert rc == 0, err
    recs = {Path(r["file"]).name: r for r in jsonl(out)}
    assert len(recs) == len(files)
    pred = inference.Predictor(trained / "best.safetensors", "cpu")
    ds = au.esc50_dataset(esc50_flac, [5], feature_cfg=pred.cfg, normalization=pred.normalization)
    probs, _ = predict_proba(pred.model, ds, batch_size=4)
    for name, p in zip(ds.names, probs):
        got = {t["label"]: t["prob"] for t in recs[name.replace(".wav", ".flac")]["top"]}
        want = {c: float(p[i]) for i, c in enumerate(pred.class_names)}
        assert got == pytest.approx(want, abs=1e-5)


def test_folder_of_mixed_files_text_output(trained, folder_ds, capsys):
    rc, out, err = run_cli(["--checkpoint", trained, "--top-k", "2", folder_ds, "--batch-size", "4"], capsys)
    assert rc == 0, err
    heads = [line for line in out.splitlines() if not line.startswith(" ")]
    assert len(heads) == 18                                  # README.txt and notes.xyz are skipped
    assert all(h.split()[0].endswith((".wav", ".flac", ".ogg")) for h in heads)
    assert len([line for line in out.splitlines() if line.startswith("    0.")]) == 36   # top-2 each


def test_long_file_sliding_windows_and_mean(trained, tmp_path, capsys):
    x = synth_clip(1, 22050, 12.0, np.random.default_rng(0))
    sf.write(tmp_path / "long.wav", np.stack([x, x], 1), 22050)
    rc, out, err = run_cli(["--checkpoint", trained, "--json", "--top-k", "3", tmp_path / "long.wav"], capsys)
    assert rc == 0, err
    (rec,) = jsonl(out)
    assert rec["n_windows"] == 4 and [w["start_s"] for w in rec["windows"]] == [0.0, 2.5, 5.0, 7.5]
    assert rec["windows"][-1]["end_s"] == pytest.approx(12.0)
    per = np.array([[{t["label"]: t["prob"] for t in w["top"]}[c] for c in CLASSES] for w in rec["windows"]])
    agg = {t["label"]: t["prob"] for t in rec["top"]}
    assert [agg[c] for c in CLASSES] == pytest.approx(per.mean(0).tolist(), abs=1e-5)
    rc, out, _ = run_cli(["--checkpoint", trained, "--window", "3", "--hop", "3", tmp_path / "long.wav"], capsys)
    assert rc == 0 and "4 windows of 3 s every 3 s" in out and "mean over windows" in out
    rc, _, err = run_cli(["--checkpoint", trained, "--window", "9", tmp_path / "long.wav"], capsys)
    assert rc == 2 and "longer than the clips" in err


def test_one_hour_file_streams_in_bounded_batches(small_ckpt, tmp_path, monkeypatch, capsys):
    """A 1-hour file (1 kHz, 7 MB) is read block by block; never decoded whole; <= batch windows at once."""
    path = tmp_path / "hour.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=1000, channels=1, subtype="PCM_16") as f:
        for _ in range(60):
            f.write((0.1 * rng.standard_normal(60_000)).astype(np.float32))
    loaded, batches = [], []
    real_load, real_predict = au.load_audio, inference.Predictor.predict
    monkeypatch.setattr(au, "load_audio", lambda p, *a, **k: (loaded.append(Path(p)), real_load(p, *a, **k))[1])
    monkeypatch.setattr(inference.Predictor, "predict",
                        lambda self, w: (batches.append(tuple(w.shape)), real_predict(self, w))[1])
    rc, out, err = run_cli(["--checkpoint", small_ckpt, "--json", "--hop", "2", "--batch-size", "64", path], capsys)
    assert rc == 0, err
    (rec,) = jsonl(out)
    assert rec["n_windows"] == 1800 and rec["duration_s"] == pytest.approx(3600.0)
    assert path not in loaded
    assert max(b[0] for b in batches) <= 64 and sum(b[0] for b in batches) == 1800
    assert all(b[1] == SMALL.num_samples for b in batches)


# ------------------------------------------------------------------ bad inputs
def _bad_inputs(d: Path) -> dict[str, Path]:
    sr = 16000
    good = d / "good.wav"
    sf.write(good, synth_clip(0, sr, 1.0, np.random.default_rng(1)), sr)
    (d / "empty.wav").write_bytes(b"")
    sf.write(d / "zero.wav", np.zeros(0, dtype=np.float32), sr)
    (d / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)))
    (d / "text.wav").write_text("this is not audio\n" * 20)
    x = synth_clip(2, sr, 1.0, np.random.default_rng(2))
    x[100] = np.nan
    x[200] = np.inf
    sf.write(d / "nan.wav", x, sr, subtype="FLOAT")
    sf.write(d / "huge.wav", np.full(sr, 1e30, dtype=np.float32), sr, subtype="FLOAT")   # finite, absurd
    (d / "no_audio").mkdir()
    (d / "no_audio" / "notes.txt").write_text("hi")
    return {"good": good, "missing": d / "missing.wav", "empty": d / "empty.wav", "zero": d / "zero.wav",
            "corrupt": d / "corrupt.wav", "text": d / "text.wav", "nan": d / "nan.wav", "dir": d / "no_audio",
            "huge": d / "huge.wav"}


def test_bad_inputs_one_line_each_others_still_classified(small_ckpt, tmp_path, capsys):
    f = _bad_inputs(tmp_path)
    order = ["missing", "empty", "good", "zero", "corrupt", "text", "nan", "huge", "dir"]
    rc, out, err = run_cli(["--checkpoint", small_ckpt, *[f[k] for k in order]], capsys)
    assert rc == 1
    assert out.splitlines()[0].startswith(str(f["good"])) and out.count("[") == 1
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 8 and "Traceback" not in err
    reasons = {"missing": "not found", "empty": "empty file", "zero": "zero-length", "corrupt": "not a readable",
               "text": "not a readable", "nan": "NaN/Inf", "dir": "no audio files", "huge": "extreme amplitude"}
    for key, reason in reasons.items():
        assert any(str(f[key]) in e and reason in e for e in errors), (key, errors)
    assert lines[-1] == "1 classified, 8 failed"
    # JSON Lines: failed files are records with an "error" too
    rc, out, _ = run_cli(["--checkpoint", small_ckpt, "--json", f["text"], f["good"]], capsys)
    recs = jsonl(out)
    assert rc == 1 and "error" in recs[0] and recs[1]["top"]
    # nothing classifiable -> 1
    rc, out, err = run_cli(["--checkpoint", small_ckpt, f["empty"], f["dir"]], capsys)
    assert rc == 1 and out == "" and err.strip().splitlines()[-1] == "0 classified, 2 failed"


def test_nan_inside_a_long_file(small_ckpt, tmp_path, capsys):
    x = synth_clip(0, 8000, 9.0, np.random.default_rng(3))
    x[7 * 8000] = np.nan                              # inside a later block
    sf.write(tmp_path / "long_nan.wav", x, 8000, subtype="FLOAT")
    sf.write(tmp_path / "ok.wav", x[:8000], 8000, subtype="FLOAT")
    rc, out, err = run_cli(["--checkpoint", small_ckpt, tmp_path / "long_nan.wav", tmp_path / "ok.wav"], capsys)
    assert rc == 1 and "long_nan.wav" in err and "NaN/Inf" in err and "ok.wav" in out and "long_nan" not in out


def test_cli_process_exit_codes_and_no_traceback(small_ckpt, tmp_path):
    f = _bad_inputs(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "inference.py"), "--checkpoint", str(small_ckpt),
                           str(f["good"]), str(f["text"])], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "good.wav" in proc.stdout
    assert any("text.wav" in line and line.startswith("error:") for line in proc.stderr.splitlines())


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        inference.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Exit codes" in out and "--evaluate" in out and "--stream" in out
    assert inference.main([]) == 2 and "nothing to do" in capsys.readouterr().err


# ------------------------------------------------------------------ checkpoints
def test_bad_checkpoints_exit_2_and_never_run_code(small_ckpt, tmp_path, capsys):
    clip = tmp_path / "c.wav"
    sf.write(clip, np.zeros(800, dtype=np.float32), 8000)
    raw = Path(small_ckpt).read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    tampered = bytearray(raw)
    tampered[8:40] = b"\x00" * 32
    (tmp_path / "tampered.safetensors").write_bytes(bytes(tampered))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(Evil()))
    torch.save({"x": Evil()}, tmp_path / "evil_zip.pth")
    for name in ("trunc.safetensors", "tampered.safetensors", "evil.pt", "evil.safetensors", "evil_zip.pth",
                 "none.safetensors"):
        rc, out, err = run_cli(["--checkpoint", tmp_path / name, clip], capsys)
        assert rc == 2 and out == "", name
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and name in err, err
    assert not marker.exists()


def test_default_checkpoint_is_best_validation(tmp_path, capsys):
    d = tmp_path / "checkpoints"
    d.mkdir()
    rc, _, err = run_cli(["--checkpoint-dir", d, tmp_path], capsys)
    assert rc == 2 and "python train.py --model" in err and "cnn_esc50.safetensors" in err
    # metadata decides (model weights are irrelevant to the choice): val acc wins, test acc is ignored
    make_ckpt(d / "cnn_esc50.safetensors", SMALL, metrics={"val_acc": 0.9, "test_acc": 0.1})
    make_ckpt(d / "mamba_esc50.safetensors", SMALL, metrics={"val_acc": 0.5, "test_acc": 0.99})
    assert inference.default_checkpoint(d) == d / "cnn_esc50.safetensors"
    make_ckpt(d / "liquid_s4_esc50.safetensors", SMALL, metrics={"val_acc": 0.9})
    assert inference.default_checkpoint(d) == d / "liquid_s4_esc50.safetensors"     # tie: explicit order
    (d / "vjepa2_esc50.safetensors").write_bytes(b"garbage!" * 10)                 # unreadable: skipped
    assert inference.default_checkpoint(d) == d / "liquid_s4_esc50.safetensors"
    # a refit (trained on the validation fold too) counts with its recipe's validation accuracy
    make_ckpt(d / "liquid_s4_esc50.safetensors", SMALL, metrics={"val_acc": None, "recipe_val_acc": 0.95})
    assert inference.default_checkpoint(d) == d / "liquid_s4_esc50.safetensors"
    make_ckpt(d / "liquid_s4_esc50.safetensors", SMALL, metrics={"val_acc": None, "test_acc": 0.99})
    assert inference.default_checkpoint(d) == d / "cnn_esc50.safetensors"        # no figure: ranked last
    make_ckpt(d / "liquid_s4_esc50.safetensors", SMALL, metrics={"val_acc": 0.9})
    sf.write(tmp_path / "a.wav", np.zeros(4000, dtype=np.float32), 8000)
    rc, out, err = run_cli(["--checkpoint-dir", d, tmp_path / "a.wav"], capsys)
    assert rc == 0 and "liquid_s4_esc50" in err and "a.wav" in out


# ------------------------------------------------------------------ evaluation
def test_evaluate_reproduces_training_test_accuracy(trained, esc50_flac, tmp_path, capsys):
    metrics = json.loads((trained / "metrics.json").read_text())
    rc, out, err = run_cli(["--checkpoint", trained / "best.safetensors", "--evaluate", "--data-dir", esc50_flac,
                            "--fold", "5", "--json", "--out-dir", tmp_path / "ev"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert res["accuracy"] == metrics["test_acc"] and res["n"] == metrics["n_test"] == 6
    assert res["macro_f1"] == metrics["test_macro_f1"] and res["matches_training"] is True
    assert res["confusion_matrix"] == metrics["test_confusion_matrix"]
    assert res["eval_crops"] == 1                  # the view the figure was taken in is recorded
    for name in ("metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "per_class_accuracy.csv",
                 "predictions.csv"):
        assert (tmp_path / "ev" / name).stat().st_size > 0
    rows = (tmp_path / "ev" / "confusion_matrix.csv").read_text().splitlines()
    assert rows[0].split(",")[1:] == CLASSES and len(rows) == 4
    # text mode; another fold is not the training test split
    rc, out, _ = run_cli(["--checkpoint", trained, "--evaluate", "--fold", "4", "--out-dir", tmp_path / "ev4"], capsys)
    assert rc == 0 and "accuracy" in out and "confusion matrix" in out and "training reported" not in out
    rc, _, err = run_cli(["--checkpoint", trained, "--evaluate", "--fold", "9", "--out-dir", tmp_path / "x"], capsys)
    assert rc == 2 and "fold" in err and len(err.strip().splitlines()) == 2      # checkpoint line + error


def test_binary_checkpoint_decisions_and_metrics(esc50_flac, tmp_path, capsys):
    out_dir = tmp_path / "ovr"
    assert train_cli.main(["--model", "cnn", "--preset", "tiny", "--data-dir", str(esc50_flac), "--epochs", "1",
                           "--batch-size", "8", "--out", str(out_dir), "--no-progress", "--threads", "1",
                           "--one-vs-rest", "high_tone"]) == 0
    capsys.readouterr()
    metrics = json.loads((out_dir / "metrics.json").read_text())
    rc, out, err = run_cli(["--checkpoint", out_dir, "--evaluate", "--json", "--out-dir", tmp_path / "ev"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert res["accuracy"] == metrics["test_acc"] and res["matches_training"]
    for key in ("precision", "recall", "f1", "roc_auc", "threshold"):
        want = metrics["test_binary"][key]
        assert res["binary"][key] == (None if want != want else pytest.approx(want))    # NaN -> null
    files = sorted((esc50_flac / "audio").glob("5-*.flac"))[:3]
    rc, out, err = run_cli(["--checkpoint", out_dir, "--json", *files], capsys)
    recs = jsonl(out)
    assert rc == 0 and len(recs) == 3
    for r in recs:
        assert r["positive_class"] == "high_tone" and r["threshold"] == pytest.approx(metrics["task"]["threshold"])
        assert r["decision"] == ("positive" if r["score"] >= r["threshold"] else "negative")
    rc, out, _ = run_cli(["--checkpoint", out_dir, files[0]], capsys)
    assert rc == 0 and "threshold" in out and ("positive: high_tone" in out or "negative: not high_tone" in out)


def test_evaluate_folder_dataset_split(folder_ds, tmp_path, monkeypatch, capsys):
    cfg = au.FeatureConfig(duration=1.5, n_frames=45)
    spec = DataSpec(kind="folder", root=str(folder_ds), feature_config=cfg.to_dict(), split_seed=3)
    ck = make_ckpt(tmp_path / "f.safetensors", cfg, classes=sorted(CLASSES), dataset=spec.describe(),
                   metrics={"test_acc": -1.0})
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(["--checkpoint", ck, "--evaluate", "--json"], capsys)
    assert rc == 0, err
    assert (tmp_path / "eval_f_test" / "confusion_matrix.png").exists()       # default --out-dir
    res = json.loads(out)
    pred = inference.Predictor(ck, "cpu")
    ds = au.folder_dataset(folder_ds, cfg, split="test", seed=3, normalization=pred.normalization)
    probs, labels = predict_proba(pred.model, ds)
    assert res["data"]["split_seed"] == 3 and res["n"] == ds.num_clips == 3
    assert res["accuracy"] == float((probs.argmax(1) == labels).mean()) and res["matches_training"] is False


# ------------------------------------------------------------------ streaming
class _Stdin:
    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)


def test_stream_stdin_matches_file_windows(small_ckpt, tmp_path, monkeypatch, capsys):
    x = synth_clip(1, 8000, 7.0, np.random.default_rng(4))
    pcm = np.clip(np.round(x * 32768), -32768, 32767).astype("<i2")
    sf.write(tmp_path / "s.wav", pcm, 8000, subtype="PCM_16")
    rc, out, _ = run_cli(["--checkpoint", small_ckpt, "--json", "--top-k", "3", tmp_path / "s.wav"], capsys)
    (file_rec,) = jsonl(out)
    monkeypatch.setattr(sys, "stdin", _Stdin(pcm.tobytes()))
    rc, out, err = run_cli(["--checkpoint", small_ckpt, "--stream", "--json", "--top-k", "3"], capsys)
    assert rc == 0, err
    recs = jsonl(out)
    assert [r["start_s"] for r in recs] == [w["start_s"] for w in file_rec["windows"]] == [0, 1, 2, 3, 4, 5]
    for r, w in zip(recs, file_rec["windows"]):
        assert {t["label"]: t["prob"] for t in r["top"]} == pytest.approx({t["label"]: t["prob"] for t in w["top"]},
                                                                          abs=1e-5)
    # stereo float32 at another rate, text output: one line per window
    stereo = np.stack([x, x], 1).astype("<f4")
    monkeypatch.setattr(sys, "stdin", _Stdin(stereo.tobytes() + b"\x01\x02"))
    rc, out, err = run_cli(["--checkpoint", small_ckpt, "--stream", "--stream-format", "f32le", "--stream-rate",
                            "16000", "--stream-channels", "2", "--hop", "1"], capsys)
    assert rc == 0 and len(out.splitlines()) == 3 and "trailing byte" in err     # 3.5 s at 16 kHz
    # NaN in a window: that window is reported, the others still classified
    bad = x.astype("<f4").copy()
    bad[100] = np.nan
    monkeypatch.setattr(sys, "stdin", _Stdin(bad.tobytes()))
    rc, out, err = run_cli(["--checkpoint", small_ckpt, "--stream", "--stream-format", "f32le"], capsys)
    assert rc == 1 and "NaN/Inf" in err and len(out.splitlines()) == 5
    monkeypatch.setattr(sys, "stdin", _Stdin(b""))
    rc, _, err = run_cli(["--checkpoint", small_ckpt, "--stream"], capsys)
    assert rc == 1 and "no audio received" in err


def test_microphone_with_fake_sounddevice(small_ckpt, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    rc, _, err = run_cli(["--checkpoint", small_ckpt, "--mic"], capsys)
    assert rc == 2 and "pip install sounddevice" in err

    class InputStream:
        def __init__(self, samplerate, channels, dtype, blocksize, callback):
            self.args = (samplerate, channels, blocksize)
            self.callback = callback

        def __enter__(self):
            sr, ch, bs = self.args
            def feed():
                rng = np.random.default_rng(0)
                for _ in range(int(5 * sr / bs) + 2):
                    self.callback(0.1 * rng.standard_normal((bs, ch)).astype(np.float32), bs, None, None)
            threading.Thread(target=feed, daemon=True).start()
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(InputStream=InputStream))
    rc, out, err = run_cli(["--checkpoint", small_ckpt, "--mic", "--max-seconds", "4", "--json"], capsys)
    assert rc == 0, err
    assert [r["start_s"] for r in jsonl(out)][:3] == [0.0, 1.0, 2.0]


def test_predictor_rejects_invalid_metadata(tmp_path):
    model = models.build_model("cnn", num_classes=3, n_mels=32, n_frames=60, preset="tiny")
    meta = {"class_names": CLASSES, "feature_config": SMALL.to_dict(), "normalization": {"mean": [0.0], "std": [1.0]}}
    save_checkpoint(tmp_path / "m.safetensors", model, meta)
    with pytest.raises(CheckpointError, match="invalid metadata"):
        inference.Predictor(tmp_path / "m.safetensors", "cpu")


def test_model_failure_is_one_line_not_blamed_on_a_file(small_ckpt, tmp_path, monkeypatch, capsys):
    sf.write(tmp_path / "a.wav", np.zeros(4000, dtype=np.float32), 8000)

    def boom(self, x):
        raise RuntimeError("CUDA out of memory\nmore lines")
    monkeypatch.setattr(inference.Predictor, "predict", boom)
    rc, out, err = run_cli(["--checkpoint", small_ckpt, tmp_path / "a.wav", tmp_path / "a.wav"], capsys)
    assert rc == 2 and out == "" and "model failed" in err and "out of memory" in err
    assert len(err.strip().splitlines()) == 2          # checkpoint line + the error
