import json
import pickle

import numpy as np
import pytest
import torch

import audio_utils as au
import models
import train as train_cli
from training.checkpoint import CheckpointError, build_from_checkpoint, load_checkpoint, read_meta, save_checkpoint
from training.data import DataSpec, build_datasets, one_vs_rest
from training.engine import TrainConfig, build_optimizer, fit, warmup_cosine
from training.metrics import binary_metrics, multiclass_metrics, roc_auc

FAST = dict(batch_size=6, lr=3e-3, progress=False, threads=1, mixup=0.0, warmup_frac=0.0, eval_batch_size=16)


def _data(esc50_flac, **kw):
    spec = DataSpec(root=str(esc50_flac), augment=kw.pop("augment", False), expansion=kw.pop("expansion", 1), **kw)
    return build_datasets(spec)


# ------------------------------------------------------------------ registry / baselines
def test_registry_lists_all_models():
    assert {"mlp", "lstm", "cnn", "mamba", "liquid_s4", "vjepa2"} <= set(models.available())
    with pytest.raises(KeyError, match="unknown model"):
        models.build_model("nope")


@pytest.mark.parametrize("name", ["mlp", "lstm", "cnn"])
def test_baseline_shapes(name):
    m = models.build_model(name, num_classes=50)
    assert m(torch.randn(2, 155, 128)).shape == (2, 50)
    small = models.build_model(name, num_classes=5, n_mels=64, n_frames=40, preset="tiny")
    assert small(torch.randn(3, 40, 64)).shape == (3, 5)
    assert small.model_name == name and small.model_config == models.resolve_config(name, "tiny")


# ------------------------------------------------------------------ optimiser and schedule
def test_param_groups_weight_decay_and_custom_lr():
    m = models.build_model("cnn", num_classes=3, preset="tiny")
    special = m.head[1].weight
    special._optim = {"lr": 1e-4, "weight_decay": 0.0}
    opt = build_optimizer(m, 1e-3, 0.05)
    by_name = {n: (g["lr"], g["weight_decay"]) for g in opt.param_groups for n in g["names"]}
    assert by_name["head.1.weight"] == (1e-4, 0.0)
    assert by_name["features.0.0.weight"] == (1e-3, 0.05)          # conv kernel: decayed
    assert by_name["features.0.1.weight"] == (1e-3, 0.0)           # BatchNorm weight: no decay
    assert by_name["head.1.bias"] == (1e-3, 0.0)


def test_warmup_cosine_shape():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_steps=10, min_lr_ratio=0.0)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[10] and abs(max(lrs) - 1.0) < 0.02
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


# ------------------------------------------------------------------ metrics
def test_metrics():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    m = multiclass_metrics(probs, labels, ["a", "b"])
    assert m["accuracy"] == 0.75 and m["confusion_matrix"] == [[1, 0], [1, 2]]
    assert m["per_class_accuracy"] == {"a": 1.0, "b": pytest.approx(2 / 3)}
    assert roc_auc([0.1, 0.8, 0.4, 0.7], [0, 1, 1, 1]) == 1.0
    b = binary_metrics([0.1, 0.8, 0.4, 0.7], [0, 1, 1, 1], 0.5)
    assert b["precision"] == 1.0 and b["recall"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------ training
def test_training_reduces_loss_and_writes_outputs(esc50_flac, tmp_path):
    tr, va, te = _data(esc50_flac)
    model = models.build_model("mlp", num_classes=3, preset="tiny")
    metrics = fit(model, tr, va, te, TrainConfig(epochs=8, **FAST), tmp_path)
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert metrics["test_acc"] is not None and metrics["n_test"] == 6
    for f in ("best.safetensors", "last.pt", "history.csv", "metrics.json", "curves.png", "val_predictions.csv"):
        assert (tmp_path / f).exists()
    meta = read_meta(tmp_path / "best.safetensors")
    assert meta["class_names"] == tr.class_names and len(meta["normalization"]["mean"]) == 128
    assert meta["metrics"]["test_acc"] == metrics["test_acc"]


def test_seeded_runs_are_deterministic(esc50_flac, tmp_path):
    runs = []
    for k in range(2):
        tr, va, te = _data(esc50_flac, augment=True, expansion=2)
        torch.manual_seed(0)
        model = models.build_model("cnn", num_classes=3, preset="tiny")
        fit(model, tr, va, None, TrainConfig(epochs=2, **{**FAST, "mixup": 0.4}), tmp_path / f"r{k}")
        runs.append(json.loads((tmp_path / f"r{k}" / "history.json").read_text()))
    assert [h["train_loss"] for h in runs[0]] == [h["train_loss"] for h in runs[1]]


def test_resume_equals_uninterrupted(esc50_flac, tmp_path):
    cfg = dict(FAST, mixup=0.4)

    def run(out, epochs):
        tr, va, te = _data(esc50_flac, augment=True, expansion=2)
        torch.manual_seed(0)
        model = models.build_model("cnn", num_classes=3, preset="tiny")
        return fit(model, tr, va, te, TrainConfig(epochs=epochs, **cfg), out)

    full = run(tmp_path / "full", 4)
    # "interrupt" after 2 of 4 epochs: a run with the same schedule, stopped early by hand
    tr, va, te = _data(esc50_flac, augment=True, expansion=2)
    torch.manual_seed(0)
    model = models.build_model("cnn", num_classes=3, preset="tiny")
    calls = []

    def stop_after_two(row, history):
        calls.append(row["epoch"])
        if row["epoch"] == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fit(model, tr, va, te, TrainConfig(epochs=4, **cfg), tmp_path / "part", on_epoch_end=stop_after_two)
    resumed = run(tmp_path / "part", 4)
    h_full = json.loads((tmp_path / "full" / "history.json").read_text())
    h_res = json.loads((tmp_path / "part" / "history.json").read_text())
    assert len(h_res) == 4
    assert [round(h["train_loss"], 5) for h in h_full] == [round(h["train_loss"], 5) for h in h_res]
    assert resumed["test_acc"] == full["test_acc"]


def test_early_stopping(esc50_flac, tmp_path):
    tr, va, te = _data(esc50_flac)
    model = models.build_model("mlp", num_classes=3, preset="tiny")
    m = fit(model, tr, va, te, TrainConfig(epochs=30, patience=2, **{**FAST, "lr": 0.0}), tmp_path)
    assert m["epochs_run"] == 3


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_and_rejections(tmp_path):
    model = models.build_model("cnn", num_classes=3, preset="tiny")
    model.eval()
    meta = {"class_names": ["a", "b", "c"], "feature_config": au.FeatureConfig().to_dict(),
            "normalization": {"mean": [0.0] * 128, "std": [1.0] * 128}}
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    rebuilt, meta2 = build_from_checkpoint(path)
    x = torch.randn(2, 155, 128)
    with torch.no_grad():     # rebuilt models are placed channels-last (models.place): equal up to rounding
        assert torch.allclose(model(x), rebuilt(x), atol=1e-5) and meta2["model_name"] == "cnn"
        assert torch.equal(models.place(model)(x), rebuilt(x))
    # truncated
    raw = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "trunc.safetensors")
    # tampered header
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.safetensors")
    # a pickle that would run code is refused before anything is unpickled
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"x": Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil2.pt")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")


# ------------------------------------------------------------------ one-vs-rest and folder data
def test_one_vs_rest_relabels(esc50_flac):
    tr, _, _ = _data(esc50_flac)
    b = one_vs_rest(tr, "high_tone")
    assert b.class_names == ["not_high_tone", "high_tone"]
    assert int(b.labels.sum()) == int((tr.labels == 1).sum())
    with pytest.raises(ValueError, match="unknown class"):
        one_vs_rest(tr, "cowbell")


# ------------------------------------------------------------------ CLI
def test_cli_end_to_end(esc50_flac, tmp_path, capsys):
    out = tmp_path / "run"
    rc = train_cli.main(["--model", "cnn", "--preset", "tiny", "--data-dir", str(esc50_flac), "--epochs", "2",
                         "--batch-size", "8", "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert '"test_acc"' in printed and (out / "best.safetensors").exists()
    meta = read_meta(out / "best.safetensors")
    assert meta["dataset"]["train_folds"] == [1, 2, 3] and meta["preset"] == "tiny"


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert train_cli.main(["--model", "cnn", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "esc50.csv" in err and "\n" not in err
    assert train_cli.main(["--model", "nope"]) == 2
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
