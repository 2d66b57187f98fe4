"""Run directories you can trust: a fingerprint of the run, a lock, restart and temp-file cleanup.

A run directory (``--out``) holds ``run.json``: the settings that define the run and their
fingerprint (a SHA-256 of the canonical JSON). :func:`open_run` is called before any data is
read or any model is built:

* a new (empty) directory gets ``run.json``;
* an existing one resumes only if its fingerprint equals the new one; otherwise a one-line
  :class:`RunMismatch` names the settings that differ and offers ``--restart`` or another
  ``--out``. A directory with training outputs but no ``run.json`` (made by an older version)
  is treated the same way. ``restart=True`` deletes the run's outputs and starts over;
* a lock (``run.lock``, an OS file lock that dies with its process, so a lock left by a killed
  process is never mistaken for a live one) refuses a second process on the same directory;
* temp files ``.NAME.tmp<PID>`` of processes that no longer run are removed.

What is in the fingerprint: the model name and its resolved config (preset applied, the
*content* hash of an ``init_from`` file instead of its path), every ``TrainConfig`` field except
:data:`RUNTIME_FIELDS`, the data spec (kind, resolved root, folds / split settings, classes, the
complete feature and augmentation configs, expansion, one-vs-rest) except where caches live, and
the content hashes of the distillation teachers. ``epochs`` is part of it: the learning-rate
schedule depends on the total number of steps, so a run with another epoch count is another run.

Not in the fingerprint (they do not change what is learned, up to floating-point noise):
``threads``, ``progress``, ``device``, ``compile``, ``eval_batch_size``, the feature
``cache_dir`` and the directory itself.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
# what fit() / finalize() write into a run directory (deleted by a restart)
RUN_OUTPUTS = ("last.pt", "best.safetensors", "history.csv", "history.json", "metrics.json", "curves.png",
               "val_predictions.csv", RUN_FILE)
# TrainConfig fields that do not change the run (see the module docstring)
RUNTIME_FIELDS = frozenset({"threads", "progress", "device", "compile", "eval_batch_size"})
DATA_RUNTIME_FIELDS = frozenset({"cache_dir"})


class RunMismatch(ValueError):
    """The directory holds another run (one line: what differs and what to do)."""


class RunLocked(OSError):
    """Another live process is training into the directory."""


# --------------------------------------------------------------------------------------------
# Settings and fingerprint
# --------------------------------------------------------------------------------------------
def _plain(o: Any) -> Any:
    if is_dataclass(o):
        o = asdict(o)
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in sorted(o.items(), key=lambda kv: str(kv[0]))}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    return o


def _content_hash(path: str) -> str:
    from training.provenance import file_sha256
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: not found")
    return file_sha256(p)


def run_settings(model_name: str, model_config: dict, train_config, data_spec) -> dict:
    """The settings that define a run (see the module docstring), as plain JSON data.

    ``model_config`` is the resolved model config (preset applied); ``train_config`` a
    ``TrainConfig``; ``data_spec`` a ``DataSpec``.
    """
    mc = dict(model_config or {})
    if mc.get("init_from"):
        mc["init_from"] = {"sha256": _content_hash(mc["init_from"])}
    tc = {k: v for k, v in _plain(train_config).items() if k not in RUNTIME_FIELDS}
    if tc.get("distill_from"):
        tc["distill_from"] = [{"sha256": _content_hash(p)} for p in tc["distill_from"]]
    data = {k: v for k, v in _plain(data_spec.describe()).items() if k not in DATA_RUNTIME_FIELDS}
    data["root"] = str(Path(data["root"]).resolve())
    data["feature_config"] = _plain(data_spec.feature_cfg().to_dict())
    from audio_utils import AugmentConfig
    data["augment_config"] = _plain(AugmentConfig.from_dict(data_spec.augment_config).to_dict()) \
        if data_spec.augment else None
    return _plain({"model": model_name, "model_config": mc, "train": tc, "data": data})


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(_plain(settings), sort_keys=True).encode()).hexdigest()


def short_hash(settings: dict, n: int = 8) -> str:
    """The first ``n`` hex digits of the fingerprint (default output directory names)."""
    return fingerprint(settings)[:n]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def differences(old: dict, new: dict) -> list[str]:
    """``["train.lr (0.001 -> 0.003)", ...]`` between two settings dicts."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            va, vb = (json.dumps(x)[:40] if x != "<unset>" else x for x in (a.get(k, "<unset>"), b.get(k, "<unset>")))
            out.append(f"{k} ({va} -> {vb})")
    return out


# --------------------------------------------------------------------------------------------
# Lock and temp files
# --------------------------------------------------------------------------------------------
class RunLock:
    """An exclusive OS lock on ``<dir>/run.lock`` (released when the process dies)."""

    def __init__(self, directory: str | os.PathLike):
        from filelock import FileLock, Timeout

        self.path = Path(directory) / LOCK_FILE
        self._lock = FileLock(str(self.path), timeout=0)
        self._timeout = Timeout

    def acquire(self) -> "RunLock":
        try:
            self._lock.acquire()
        except self._timeout:
            raise RunLocked(f"{self.path.parent} is in use by another training process (lock {self.path}); "
                            "wait for it to finish or choose another --out") from None
        return self

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete ``.*.tmp<PID>`` files in ``directory`` whose writer process no longer runs (and
    that are older than 10 minutes: see :func:`audio_utils.remove_stale_temps`)."""
    from audio_utils import remove_stale_temps as _remove
    return _remove(directory, ".*.tmp*")


# --------------------------------------------------------------------------------------------
# Opening a run directory
# --------------------------------------------------------------------------------------------
def read_run(directory: str | os.PathLike) -> dict | None:
    p = Path(directory) / RUN_FILE
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {"fingerprint": None, "settings": {}}


def epochs_done(directory: str | os.PathLike) -> int | None:
    """Epochs recorded in ``history.json`` (cheap; ``None`` without one)."""
    p = Path(directory) / "history.json"
    try:
        return len(json.loads(p.read_text()))
    except (OSError, json.JSONDecodeError, TypeError):
        return None


def _restart_hint(directory: Path) -> str:
    return f"rerun with --restart to start over in {directory}, or choose another --out"


def clear_run(directory: str | os.PathLike) -> None:
    """Delete a run's outputs (a restart); other files in the directory are left alone."""
    d = Path(directory)
    for name in RUN_OUTPUTS:
        (d / name).unlink(missing_ok=True)


def check_resumable(directory: str | os.PathLike, settings: dict) -> None:
    """Raise :class:`RunMismatch` unless ``directory`` is empty of runs or holds this very run."""
    d = Path(directory)
    rec = read_run(d)
    has_outputs = any((d / n).exists() for n in RUN_OUTPUTS if n != RUN_FILE)
    if not has_outputs:
        return          # nothing trained yet (e.g. an earlier start failed before its first epoch)
    if rec is None:
        raise RunMismatch(f"{d} holds training outputs without {RUN_FILE} (an older version's run, or another "
                          f"tool's files), so it cannot be resumed safely; {_restart_hint(d)}")
    if rec.get("fingerprint") == fingerprint(settings):
        import zipfile
        last = d / "last.pt"
        if last.exists() and not zipfile.is_zipfile(last):
            raise RunMismatch(f"{last} is truncated or corrupt, so the run cannot resume; {_restart_hint(d)}")
        return
    old = rec.get("settings") or {}
    diff = differences(old, settings)
    old_epochs = (old.get("train") or {}).get("epochs")
    new_epochs = (settings.get("train") or {}).get("epochs")
    done = epochs_done(d)
    if old_epochs != new_epochs and done is not None and new_epochs is not None and new_epochs < done:
        raise RunMismatch(f"{d} has already trained {done} epochs, more than --epochs {new_epochs}; "
                          f"{_restart_hint(d)}")
    shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    raise RunMismatch(f"{d} holds another run (differs in: {shown or 'unreadable run.json'}); {_restart_hint(d)}")


def write_run(directory: str | os.PathLike, settings: dict) -> None:
    from training.checkpoint import atomic_write

    body = {"fingerprint": fingerprint(settings), "settings": settings}
    atomic_write(Path(directory) / RUN_FILE, lambda t: Path(t).write_text(json.dumps(body, indent=1)))


def open_run(directory: str | os.PathLike, settings: dict, restart: bool = False) -> RunLock:
    """Lock ``directory``, clean stale temp files, and make it hold this run (see the module
    docstring). Returns the held lock: release it (or use it as a context manager) when done."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise NotADirectoryError(f"--out {d} is a file, not a directory")
    d.mkdir(parents=True, exist_ok=True)
    lock = RunLock(d).acquire()
    try:
        remove_stale_temps(d)
        if restart:
            clear_run(d)
        else:
            check_resumable(d, settings)
        write_run(d, settings)
    except BaseException:
        lock.release()
        raise
    return lock
