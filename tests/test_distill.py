"""Knowledge distillation (training/distill.py) and its CLI."""
import json

import pytest
import torch

import train as train_cli
from training.checkpoint import read_meta, save_checkpoint
from training.distill import Teacher, check_teacher_split, distill_loss

ESC = {"kind": "esc50", "train_folds": [1, 2, 3], "val_folds": [4], "test_folds": [5]}


def test_split_check_refuses_held_out_folds():
    check_teacher_split(dict(ESC), dict(ESC), "t")                                   # same split: fine
    check_teacher_split({**ESC, "train_folds": [1, 2], "val_folds": [3]}, dict(ESC), "t")
    with pytest.raises(ValueError, match=r"folds \[5\]"):
        check_teacher_split({**ESC, "val_folds": [5], "test_folds": [4]}, dict(ESC), "t")
    with pytest.raises(ValueError, match=r"folds \[4\]"):                         # trained on student val
        check_teacher_split({**ESC, "train_folds": [1, 2, 4], "val_folds": [3]}, dict(ESC), "t")
    folder = {"kind": "folder", "classes": None, "merge": None, "fractions": [0.7, 0.15, 0.15], "split_seed": 0,
              "group_pattern": None, "one_vs_rest": None}
    check_teacher_split(dict(folder), dict(folder), "t")
    with pytest.raises(ValueError, match="split_seed"):
        check_teacher_split({**folder, "split_seed": 1}, dict(folder), "t")
    with pytest.raises(ValueError, match="esc50"):
        check_teacher_split(dict(ESC), dict(folder), "t")


def test_distill_loss_value_and_gradient():
    torch.manual_seed(0)
    t_logits, s_logits = torch.randn(4, 5), torch.randn(4, 5, requires_grad=True)
    T = 3.0
    p_t = torch.softmax(t_logits / T, -1)
    assert distill_loss(t_logits, p_t, T).abs() < 1e-6                     # student == teacher: zero
    loss = distill_loss(s_logits, p_t, T)
    p_s = torch.softmax(s_logits / T, -1)
    ref = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * T * T
    assert torch.allclose(loss, ref, atol=1e-6) and loss > 0
    loss.backward()
    assert torch.allclose(s_logits.grad, (p_s - p_t).detach() * T / 4, atol=1e-6)


class _Lin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x.mean(1))


def test_teacher_renormalises_and_averages():
    torch.manual_seed(0)
    a, b = _Lin(), _Lin()
    s_mean, s_std = torch.randn(6), torch.rand(6) + 0.5
    t_mean, t_std = torch.randn(6), torch.rand(6) + 0.5
    teacher = Teacher([a, b], [(s_std / t_std, (s_mean - t_mean) / t_std), None], temperature=2.0)
    raw = torch.randn(2, 4, 6)
    x_student = (raw - s_mean) / s_std
    expect = (torch.softmax(a((raw - t_mean) / t_std) / 2, -1) + torch.softmax(b(x_student) / 2, -1)) / 2
    assert torch.allclose(teacher(x_student), expect, atol=1e-5)
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def _run(args, capsys):
    rc = train_cli.main(args + ["--no-progress", "--threads", "1", "--batch-size", "8"])
    return rc, capsys.readouterr()


def test_cli_distillation_end_to_end_and_leak_refused(esc50_flac, tmp_path, capsys):
    base = ["--data-dir", str(esc50_flac), "--preset", "tiny"]
    rc, _ = _run(["--model", "cnn", *base, "--epochs", "2", "--out", str(tmp_path / "teacher")], capsys)
    assert rc == 0
    teacher = str(tmp_path / "teacher" / "best.safetensors")
    rc, out = _run(["--model", "mlp", *base, "--epochs", "2", "--out", str(tmp_path / "student"),
                    "--distill", teacher, "--distill", teacher, "--distill-weight", "0.7"], capsys)
    assert rc == 0, out.err
    cfg = read_meta(tmp_path / "student" / "best.safetensors")["train_config"]
    assert cfg["distill_from"] == [teacher, teacher] and cfg["distill_weight"] == 0.7
    # a teacher that selected its epoch on the student's test fold is refused with one line
    rc, _ = _run(["--model", "cnn", *base, "--epochs", "1", "--val-folds", "5", "--test-folds", "4",
                  "--out", str(tmp_path / "leaky")], capsys)
    assert rc == 0
    rc, out = _run(["--model", "mlp", *base, "--epochs", "1", "--out", str(tmp_path / "s2"),
                    "--distill", str(tmp_path / "leaky" / "best.safetensors")], capsys)
    assert rc == 2 and out.err.startswith("error:") and "folds [5]" in out.err and out.err.count("\n") == 1


def test_distillation_changes_training(esc50_flac, tmp_path, capsys):
    """The teacher term is really in the loss: same seed, different weights -> different models."""
    base = ["--model", "mlp", "--data-dir", str(esc50_flac), "--preset", "tiny", "--epochs", "1"]
    rc, _ = _run(["--model", "cnn", "--data-dir", str(esc50_flac), "--preset", "tiny", "--epochs", "1",
                  "--out", str(tmp_path / "t")], capsys)
    assert rc == 0
    t = str(tmp_path / "t" / "best.safetensors")
    losses = {}
    for w, mode in (("0.0", "online"), ("0.9", "online"), ("0.9", "offline")):
        out = tmp_path / f"s{w}{mode}"
        rc, _ = _run([*base, "--out", str(out), "--distill", t, "--distill-weight", w, "--distill-mode", mode], capsys)
        assert rc == 0
        losses[w, mode] = json.loads((out / "history.json").read_text())[0]["train_loss"]
    assert losses["0.0", "online"] != pytest.approx(losses["0.9", "online"], rel=1e-3)
    assert losses["0.9", "offline"] != pytest.approx(losses["0.9", "online"], rel=1e-3)


def test_offline_targets_are_the_teachers_clean_clip_probabilities(esc50_flac, tmp_path, capsys):
    from training.data import DataSpec, build_datasets
    from training.checkpoint import build_from_checkpoint

    rc, _ = _run(["--model", "cnn", "--data-dir", str(esc50_flac), "--preset", "tiny", "--epochs", "1",
                  "--out", str(tmp_path / "t")], capsys)
    assert rc == 0
    path = tmp_path / "t" / "best.safetensors"
    spec = DataSpec(kind="esc50", root=str(esc50_flac))
    train_ds, _, _ = build_datasets(spec, progress=False)
    train_ds.set_normalization(*train_ds.compute_normalization())
    teacher = Teacher.from_checkpoints([path], train_ds, spec.describe(), temperature=1.0)
    probs = teacher.precompute(train_ds, batch_size=5)
    model, _ = build_from_checkpoint(path)
    clean = train_ds.subset(range(train_ds.num_clips), augment=False, expansion=1)
    x, _ = clean.get_batch(torch.arange(clean.num_clips))
    assert probs.shape == (train_ds.num_clips, train_ds.num_classes)
    assert torch.allclose(probs, torch.softmax(model(x), -1), atol=1e-5)
    train_ds.crop_frames = 4                           # a student on crops: the teacher still sees whole clips
    assert torch.allclose(teacher.precompute(train_ds, batch_size=5), probs, atol=1e-6)
    assert train_ds.crop_frames == 4


def test_teacher_with_other_classes_is_refused(tmp_path):
    from audio_utils import FeatureConfig
    from models import build_model

    m = build_model("mlp", 3, 8, 10, preset="tiny")
    m.model_name, m.model_config = "mlp", {"hidden": 64}
    path = save_checkpoint(tmp_path / "t.safetensors", m, {
        "dataset": dict(ESC), "model_name": "mlp", "model_config": {"hidden": 64}, "num_classes": 3,
        "class_names": ["a", "b", "c"], "feature_config": FeatureConfig(n_mels=8, n_frames=10).to_dict(),
        "normalization": None, "preset": None})

    class DS:
        normalization = (torch.zeros(8), torch.ones(8))
        class_names = ["a", "b", "x"]
        feature_cfg = FeatureConfig(n_mels=8, n_frames=10)

    with pytest.raises(ValueError, match="other classes"):
        Teacher.from_checkpoints([path], DS(), dict(ESC))


def test_teacher_targets_script_reports_the_targets_on_training_clips(esc50_flac, tmp_path, capsys):
    import re

    from scripts import load_script
    tt = load_script("benchmarks/teacher_targets.py")
    rc, _ = _run(["--model", "cnn", "--data-dir", str(esc50_flac), "--preset", "tiny", "--epochs", "1",
                  "--out", str(tmp_path / "t")], capsys)
    assert rc == 0
    ck = str(tmp_path / "t" / "best.safetensors")
    assert tt.main([ck, ck, "--data-dir", str(esc50_flac), "--temp", "3"]) == 0
    out = capsys.readouterr().out
    acc = float(re.search(r"teacher accuracy on these clips: ([0-9.]+)", out).group(1))
    p1, p3 = (float(v) for v in re.findall(r"mean probability of the true class ([0-9.]+)", out))
    h1, h3 = (float(v) for v in re.findall(r"mean entropy ([0-9.]+)", out))
    assert 0 <= acc <= 1 and 0 < p1 < 1 and 0 < p3 < 1 and h1 < h3      # a higher temperature softens the targets
    assert tt.main([str(tmp_path / "missing.safetensors"), "--data-dir", str(esc50_flac)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
