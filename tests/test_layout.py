"""Packaging and layout: one home per concern, one implementation per helper.

* ``pyproject.toml`` declares the packages, the top-level modules, the console scripts and the
  Python version; ``make help`` lists the targets and ``make test`` skips the slow tests.
* The thread count is the caller's: neither the data pipeline nor the Mamba scan changes it.
* Mamba refuses ``frame_stack`` with the conv stem (it used to ignore it silently).
* ``init_from`` is dropped from a rebuild config by one function; the tubelet layout has one
  implementation; ``notebook_utils`` holds only the notebooks' environment.
"""
from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def test_pyproject_declares_the_package():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"] == {"audio-train": "training.cli:main", "audio-classify": "classify.cli:main"}
    st = meta["tool"]["setuptools"]
    assert {"audio_utils", "inference", "train"} <= set(st["py-modules"])
    assert all(f"{p}" in st["packages"]["find"]["include"] for p in ("models", "training", "classify"))
    for mod in st["py-modules"]:
        assert (REPO / f"{mod}.py").exists()
    deps = meta["tool"]["setuptools"]["dynamic"]["dependencies"]["file"]
    assert deps == ["requirements.txt"]
    req = (REPO / "requirements.txt").read_text()
    assert "pandas" in req and "tabulate" in req and "README \"Install\"" not in req
    assert "jupyterlab" in (REPO / "requirements-notebooks.txt").read_text()


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_help_lists_the_targets():
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for target in ("setup", "install", "train", "test", "test-all", "test-slow", "notebook", "notebooks", "results"):
        assert f"make {target} " in out
    makefile = (REPO / "Makefile").read_text()
    assert 'pytest -m "not slow"' in makefile
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test\n" in ci and "make test-slow" in ci


@pytest.fixture
def thread_calls(monkeypatch):
    """torch.set_num_threads calls made during the test, starting from 2 threads (as --threads 2)."""
    calls: list[int] = []
    real, old = torch.set_num_threads, torch.get_num_threads()
    real(2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    yield calls
    real(old)


def test_data_pipeline_leaves_the_thread_count_alone(esc50_flac, thread_calls):
    import audio_utils as au

    ds = au.esc50_dataset(esc50_flac, (1,), augment=True)
    x, y = ds.get_batch([0, 1])
    assert x.shape[0] == 2 and thread_calls == []


def test_mamba_scan_leaves_the_thread_count_alone(thread_calls):
    import models

    model = models.build_model("mamba", num_classes=3, n_mels=16, n_frames=20, preset="tiny")
    model(torch.randn(2, 20, 16)).sum().backward()
    assert thread_calls == [] and torch.get_num_threads() == 2


def test_mamba_frame_stack_is_refused_with_the_conv_stem():
    import models

    with pytest.raises(ValueError, match="frame_stack=2 applies to stem='linear' only"):
        models.build_model("mamba", num_classes=3, n_mels=16, n_frames=20, preset="tiny", frame_stack=2)
    lin = models.build_model("mamba", num_classes=3, n_mels=16, n_frames=20, preset="tiny", stem="linear")
    assert lin.frame_stack == 2                                   # the linear stem's default
    conv = models.build_model("mamba", num_classes=3, n_mels=16, n_frames=20, preset="tiny", frame_stack=1)
    assert conv(torch.randn(1, 20, 16)).shape == (1, 3)


def test_init_from_is_dropped_by_one_function(tmp_path):
    import models
    from training.checkpoint import build_from_checkpoint, save_checkpoint

    assert models.rebuild_config({"init_from": "x", "depth": 2}) == {"depth": 2}
    assert models.rebuild_config(None) == {}
    m = models.build_model("vjepa2", num_classes=3, n_mels=32, n_frames=24, preset="tiny")
    meta = {"class_names": ["a", "b", "c"], "feature_config": {"n_mels": 32, "n_frames": 24}}
    meta["model_config"] = {**m.model_config, "init_from": str(tmp_path / "gone.safetensors")}
    path = save_checkpoint(tmp_path / "m.safetensors", m, meta)
    rebuilt, _ = build_from_checkpoint(path)                       # the missing file is never read
    assert "init_from" not in rebuilt.model_config


def test_tubelet_layout_has_one_implementation():
    import audio_utils as au
    from models.vjepa2 import tokens_grid, tubeletise

    x = torch.randn(2, 3, 37, 32)                                  # extra leading dims
    tok = au.convert_to_tubelets(x, 8, 16, offset=2)
    ref = tubeletise(x.reshape(6, 37, 32), tokens_grid(37, 32, 8, 16), 2).reshape(2, 3, 8, 128)
    assert tok.shape == (2, 3, 8, 128) and torch.equal(tok, ref)
    assert "rearrange" not in inspect.getsource(au.convert_to_tubelets)   # delegates, no second copy
    with pytest.raises(ValueError, match="not divisible"):
        au.convert_to_tubelets(torch.randn(40, 30), 8, 16)


def test_notebook_utils_is_only_the_notebook_environment():
    from training import notebook_utils

    text = Path(notebook_utils.__file__).read_text()
    assert len(text.splitlines()) < 200
    for moved in ("def plot_confusion", "def ensemble_accuracy", "def measure_latency", "def ship_checkpoint",
                  "def format_table", "def load_model", "def find_results"):
        assert moved not in text
    for path in (REPO / "training").glob("*.py"):
        assert "def load_model(" not in path.read_text(), path
    benches = " ".join(p.read_text() for p in (REPO / "benchmarks").glob("*.py"))
    assert "notebook_utils" not in benches


def test_every_tracked_python_file_compiles_without_warnings():
    # e.g. an invalid escape sequence in a docstring: a SyntaxWarning on Python 3.12, seen only where no
    # cached bytecode hides it (a fresh machine), and an error in a later Python
    import warnings

    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    bad = []
    for name in files:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                compile((REPO / name).read_text(), name, "exec")
            except (SyntaxWarning, DeprecationWarning, SyntaxError) as exc:
                bad.append(f"{name}: {exc}")
    assert not bad, bad
