"""The notebooks in notebooks/.

* They are stored without outputs and equal what ``notebooks/make_notebooks.py`` writes, and the
  three training notebooks come from one template.
* Each one executes top to bottom (nbclient, a real kernel) in tiny mode: ``TOOLKIT_TINY=1`` on a
  synthetic ESC-50, the models' ``tiny`` presets and 2 epochs; the comparison notebook then reads
  the runs the training notebooks wrote. A failing cell fails the test. These are marked ``slow``
  (deselect with ``-m "not slow"``).
* The helpers that decide where notebooks write and what is shipped (``training/notebook_utils.py``,
  ``training/shipping.py``, ``training/results.py``): by default nothing outside ``runs/``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import load_script

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parent.parent
NB_DIR = REPO / "notebooks"
TRAINING_MODELS = ("liquid_s4", "mamba", "vjepa2")
MODEL_SPECIFIC_CELLS = {"intro", "config", "jepa-md", "jepa"}


def _generator():
    return load_script("notebooks/make_notebooks.py")


# --------------------------------------------------------------------------------------------
# Stored form
# --------------------------------------------------------------------------------------------
def test_stored_notebooks_have_no_outputs_and_match_the_generator():
    gen = _generator()
    built = gen.build_all()
    assert set(built) <= {p.name for p in NB_DIR.glob("*.ipynb")}
    assert set(built) == {f"{m}_training.ipynb" for m in TRAINING_MODELS} | {"compare_models.ipynb"}
    for name, nb in built.items():
        text = (NB_DIR / name).read_text()
        stored = nbformat.reads(text, as_version=4)
        nbformat.validate(stored)
        for cell in stored.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: cell {cell.id} has outputs"
        assert text == gen.render(nb), f"{name} is stale: run python notebooks/make_notebooks.py"
    assert gen.main(["--check"]) == 0


def test_training_notebooks_differ_only_in_their_configuration():
    built = _generator().build_all()
    cells = {m: {c.id: c for c in built[f"{m}_training.ipynb"].cells} for m in TRAINING_MODELS}
    ref = cells["liquid_s4"]
    for m in TRAINING_MODELS:
        assert f'MODEL_NAME = "{m}"' in cells[m]["config"].source
        shared = [k for k in cells[m] if k not in MODEL_SPECIFIC_CELLS]
        assert shared == [k for k in ref if k not in MODEL_SPECIFIC_CELLS]
        for k in shared:
            assert cells[m][k].source == ref[k].source, f"{m}: cell {k} differs from the template"
    # the notebooks train through the repository's runner, never with their own loop
    train_src = ref["train"].source
    assert "train_model(" in train_src and "backward" not in train_src


# --------------------------------------------------------------------------------------------
# Helpers (fast)
# --------------------------------------------------------------------------------------------
def _fake_run(d: Path, val_acc: float, payload: bytes = b"weights") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "best.safetensors").write_bytes(payload)
    (d / "history.json").write_text(json.dumps([{"epoch": 1, "val_acc": val_acc}]))
    (d / "metrics.json").write_text(json.dumps({"val_acc": val_acc, "test_acc": 0.5, "params": 10}))
    return d


def test_ship_checkpoint_keeps_the_better_validation_run(tmp_path):
    from training import shipping as nbu

    ck = tmp_path / "checkpoints"
    first = nbu.ship_checkpoint(_fake_run(tmp_path / "a", 0.6, b"A"), "m", ck)
    assert first == ck / "m_esc50.safetensors" and first.read_bytes() == b"A"
    assert json.loads((ck / "m_esc50.metrics.json").read_text())["val_acc"] == 0.6
    assert (ck / "m_esc50.history.json").exists()
    assert nbu.ship_checkpoint(_fake_run(tmp_path / "b", 0.5, b"B"), "m", ck) is None    # worse: kept
    assert first.read_bytes() == b"A"
    assert nbu.ship_checkpoint(_fake_run(tmp_path / "b", 0.5, b"B"), "m", ck, force=True) == first
    assert first.read_bytes() == b"B"
    with pytest.raises(FileNotFoundError):
        nbu.ship_checkpoint(tmp_path / "missing", "m", ck)


def test_find_results_prefers_shipped_checkpoints(tmp_path):
    from training import results as nbu
    from training.shipping import ship_checkpoint

    runs = tmp_path / "runs"
    _fake_run(runs / "cnn_esc50", 0.4)
    _fake_run(runs / "mlp", 0.3)
    ck = tmp_path / "checkpoints"
    ship_checkpoint(_fake_run(tmp_path / "x", 0.7), "cnn", ck)
    res = nbu.find_results(ck, runs, ["cnn", "mlp", "lstm"])
    assert list(res) == ["cnn", "mlp"]
    assert res["cnn"].source == "checkpoint" and res["cnn"].metrics["val_acc"] == 0.7
    assert res["mlp"].source == "run" and res["mlp"].checkpoint == runs / "mlp" / "best.safetensors"
    assert nbu.find_results(None, runs, ["cnn"])["cnn"].source == "run"   # tiny mode: runs only
    df = nbu.results_frame(res, {"cnn": 1.5})
    assert list(df.index) == ["cnn", "mlp"] and df.loc["cnn", "cpu_ms_b1"] == 1.5
    assert "| cnn" in df.to_markdown()


def test_tiny_env_never_targets_checkpoints(monkeypatch, tmp_path):
    from training import notebook_utils as nbu
    from training.runner import make_train_config

    monkeypatch.setenv("TOOLKIT_TINY", "1")
    monkeypatch.setenv("TOOLKIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TOOLKIT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("TOOLKIT_RESULTS_DIR", raising=False)
    monkeypatch.delenv("TOOLKIT_EPOCHS", raising=False)
    env = nbu.notebook_env()
    assert env.tiny and env.checkpoint_dir is None and env.results_dir == tmp_path / "runs" / "results"
    cfg = make_train_config("cnn", **nbu.train_overrides(env, {"epochs": 100, "lr": 0.1}))
    assert cfg.epochs == nbu.TINY_TRAIN["epochs"] and not nbu.is_full_run("cnn", cfg, env)   # tiny wins
    assert cfg.lr == 0.1
    monkeypatch.setenv("TOOLKIT_TINY", "0")
    env = nbu.notebook_env()
    assert not env.tiny and env.checkpoint_dir is not None
    assert env.results_dir == tmp_path / "runs" / "results"     # never results/ unless asked
    assert nbu.is_full_run("cnn", make_train_config("cnn"), env)
    assert not nbu.is_full_run("cnn", make_train_config("cnn", epochs=2), env)


# --------------------------------------------------------------------------------------------
# Execution in tiny mode (slow: one kernel per notebook)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, esc50_flac):
    runs = tmp_path_factory.mktemp("notebook_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLKIT_TINY", "1")
        mp.setenv("TOOLKIT_DATA_DIR", str(esc50_flac))
        mp.setenv("TOOLKIT_RUNS_DIR", str(runs))
        for var in ("TOOLKIT_EPOCHS", "TOOLKIT_RESULTS_DIR", "TOOLKIT_CHECKPOINT_DIR"):
            mp.delenv(var, raising=False)
        yield runs


def _execute(name: str):
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NB_DIR / name, as_version=4)
    # the kernel inherits os.environ (TOOLKIT_*, AUDIO_CACHE_DIR); it runs from notebooks/ like Jupyter
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NB_DIR)}}).execute()
    return nb


def _images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def _committed_results() -> set[str]:
    return {f"{p.name}:{p.stat().st_mtime_ns}" for p in (REPO / "results").iterdir()}


def _shipped() -> set[str]:
    d = REPO / "checkpoints"
    return {f"{p.name}:{p.stat().st_mtime_ns}" for p in d.iterdir()} if d.exists() else set()


@pytest.mark.slow
@pytest.mark.parametrize("model", TRAINING_MODELS)
def test_training_notebook_runs_in_tiny_mode(model, tiny_runs):
    import models

    try:
        models.get_spec(model)
    except Exception as exc:  # a model module that is missing or broken
        pytest.skip(f"model '{model}' cannot be imported: {exc}")
    before = _shipped()
    nb = _execute(f"{model}_training.ipynb")
    cells = {c.id: c for c in nb.cells}
    out = tiny_runs / f"{model}_notebook"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == model and metrics["epochs_run"] == 2 and metrics["n_test"] > 0
    assert (out / "best.safetensors").exists() and len(json.loads((out / "history.json").read_text())) == 2
    assert _images(cells["train"]) >= 1          # live curves
    assert _images(cells["eval"]) == 1           # confusion matrix
    assert _images(cells["clip"]) == 1
    text = "".join(o.get("text", "") for o in cells["ckpt"].outputs)
    assert "not copied to checkpoints/" in text
    assert _shipped() == before                  # tiny mode never writes checkpoints/
    assert 'SHIP = False' in cells["config"].source and "SHIP = SHIP and" in cells["setup"].source


@pytest.mark.slow
def test_compare_notebook_runs_in_tiny_mode(tiny_runs, esc50_flac):
    from training import results as nbu

    have = [m for m in (*TRAINING_MODELS, *nbu.BASELINES) if (tiny_runs / f"{m}_notebook" / "metrics.json").exists()]
    if len(have) < 2:   # run alone, or training notebooks skipped: add baseline runs as fixtures
        from training.data import DataSpec
        from training.runner import make_train_config, train_model

        for m in ("cnn", "mlp")[: 2 - len(have)]:
            cfg = make_train_config(m, epochs=1, batch_size=8, progress=False, threads=1)
            train_model(m, DataSpec(root=str(esc50_flac), expansion=1), tiny_runs / f"{m}_esc50", cfg, preset="tiny")
            have.append(m)
    before, committed = _shipped(), _committed_results()
    nb = _execute("compare_models.ipynb")
    res = tiny_runs / "results"
    assert (res / "comparison.png").stat().st_size > 0 and (res / "per_class.png").stat().st_size > 0
    summary = json.loads((res / "summary.json").read_text())
    assert set(have) <= set(summary["models"])
    (ens,) = summary["ensembles"]
    assert ens["members"] and 0.0 <= ens["test_acc"] <= 1.0
    for m in have:
        assert summary["models"][m]["cpu_latency_ms_batch1"] > 0
    for m, acc in ens["member_test_acc"].items():    # re-evaluating a checkpoint reproduces its test accuracy
        assert acc == pytest.approx(summary["models"][m]["test_acc"], abs=1e-6)
    assert _images({c.id: c for c in nb.cells}["figure"]) == 1
    assert _shipped() == before and _committed_results() == committed   # results/ untouched
