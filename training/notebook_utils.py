"""The notebooks' environment: where they read and write, tiny mode, and in-place display.

Everything else the notebooks call lives in modules named for what it does:
``training.results`` (tables), ``training.plots`` (figures), ``training.ensemble``,
``training.latency``, ``training.shipping``, ``training.checkpoint`` (loading a model).

Environment (all optional; the tests set them to run every notebook on synthetic data)
--------------------------------------------------------------------------------------
``TOOLKIT_TINY=1``          tiny mode: the models' ``tiny`` presets, 2 epochs, small batches, a
                            synthetic ESC-50; ``checkpoints/`` is never read or written.
``TOOLKIT_DATA_DIR``        ESC-50 root (default: ``training.data.default_esc50_dir()``; in tiny
                            mode a synthetic ESC-50 made once under the temp dir).
``TOOLKIT_RUNS_DIR``        where runs are written / read (default ``runs/``; tiny mode:
                            ``<tmp>/toolkit_tiny_runs``, shared by all notebooks of a session).
``TOOLKIT_CHECKPOINT_DIR``  shipped checkpoints (default ``checkpoints/``; ignored in tiny mode).
``TOOLKIT_RESULTS_DIR``     the comparison notebook's outputs (default ``<runs>/results``).
``TOOLKIT_EPOCHS``          override the number of epochs (any mode).

The notebooks write only under the runs dir. They copy a run to ``checkpoints/`` only when the
user sets ``SHIP = True`` (training notebooks), and write to ``results/`` only with
``WRITE_RESULTS = True`` (comparison notebook).
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# engine overrides in tiny mode: a couple of short epochs on a few clips (one thread: the process's
# thread count is set once, by the notebook's setup cell, from TrainConfig.threads)
TINY_TRAIN = {"epochs": 2, "batch_size": 8, "eval_batch_size": 32, "threads": 1, "warmup_frac": 0.0}
TINY_SYNTH = {"clips_per_class_fold": 2, "seconds": 5.0}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


@dataclass
class NotebookEnv:
    tiny: bool
    data_dir: Path
    runs_dir: Path
    checkpoint_dir: Path | None      # None in tiny mode: never read or write shipped checkpoints
    results_dir: Path
    epochs: int | None = None

    def describe(self) -> str:
        return "\n".join(f"{k:15s} {v}" for k, v in self.__dict__.items())


def make_synthetic_esc50(root: Path | None = None) -> Path:
    """A small synthetic ESC-50 tree (3 classes, 5 folds; ``tests/synth.py``) for tiny mode."""
    root = Path(root or Path(tempfile.gettempdir()) / "toolkit_tiny_esc50" / "ESC-50")
    if not (root / "meta" / "esc50.csv").exists():
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        try:
            from synth import make_esc50
        finally:
            sys.path.remove(str(REPO_ROOT / "tests"))
        make_esc50(root, **TINY_SYNTH)
    return root


def notebook_env() -> NotebookEnv:
    """Resolve the ``TOOLKIT_*`` variables (see the module docstring)."""
    from training.data import default_esc50_dir

    tiny = env_flag("TOOLKIT_TINY")
    data = os.environ.get("TOOLKIT_DATA_DIR")
    data_dir = Path(data) if data else (make_synthetic_esc50() if tiny else default_esc50_dir())
    runs = os.environ.get("TOOLKIT_RUNS_DIR")
    runs_dir = Path(runs) if runs else (Path(tempfile.gettempdir()) / "toolkit_tiny_runs" if tiny
                                        else REPO_ROOT / "runs")
    ckpt = None if tiny else Path(os.environ.get("TOOLKIT_CHECKPOINT_DIR") or REPO_ROOT / "checkpoints")
    res = os.environ.get("TOOLKIT_RESULTS_DIR")
    results_dir = Path(res) if res else runs_dir / "results"
    epochs = int(os.environ["TOOLKIT_EPOCHS"]) if os.environ.get("TOOLKIT_EPOCHS") else None
    return NotebookEnv(tiny, data_dir, runs_dir, ckpt, results_dir, epochs)


def train_overrides(env: NotebookEnv, overrides: dict | None = None) -> dict:
    """Engine overrides: the notebook's, then (tiny mode) the tiny settings, then TOOLKIT_EPOCHS."""
    out = dict(overrides or {})
    if env.tiny:
        out.update(TINY_TRAIN)
    if env.epochs:
        out["epochs"] = env.epochs
    return out


def is_full_run(model_name: str, cfg, env: NotebookEnv) -> bool:
    """A run that may be shipped: not tiny, and at least the model's default number of epochs."""
    import models

    default_epochs = models.train_defaults(model_name).get("epochs", 30)
    return (not env.tiny) and env.checkpoint_dir is not None and cfg.epochs >= default_epochs


def quiet_progress_warnings() -> None:
    """tqdm.auto falls back to a text bar when ipywidgets is missing; hide its warning about it."""
    import warnings
    warnings.filterwarnings("ignore", message="IProgress not found")


def in_notebook() -> bool:
    try:
        from IPython import get_ipython
        ip = get_ipython()
        return ip is not None and "IPKernelApp" in ip.config
    except Exception:   # noqa: BLE001 - IPython missing or not configured: not a notebook
        return False


def show(fig, path: str | os.PathLike | None = None, handle=None):
    """Display a pyplot figure once (closing it so the inline backend does not show it twice);
    optionally save it. Returns the display handle (``update`` it to redraw in place)."""
    import io

    import matplotlib.pyplot as plt

    if path is not None:
        from training.plots import save_figure
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        save_figure(fig, path)
    elif in_notebook():
        buf = io.BytesIO()   # PNG bytes: independent of the matplotlib backend (inline, Agg, ...)
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    if in_notebook():
        from IPython.display import Image, display

        img = Image(data=buf.getvalue(), format="png")
        if handle is None:
            handle = display(img, display_id=True)
        else:
            handle.update(img)
    plt.close(fig)
    return handle


class LiveCurves:
    """``fit``'s ``on_epoch_end(row, history)`` callback: redraws loss / accuracy curves in place
    (IPython display handle); outside a notebook it only keeps the history (the engine prints)."""

    def __init__(self, title: str = "", total_epochs: int | None = None):
        self.title = title
        self.total_epochs = total_epochs
        self.handle = None
        self.history: list[dict] = []

    def __call__(self, row: dict, history: list[dict]) -> None:
        from training.plots import training_curves

        self.history = list(history)
        if in_notebook():
            self.handle = show(training_curves(self.history, self.title, self.total_epochs), handle=self.handle)
