"""Checkpoints that load without executing code.

A checkpoint is one ``.safetensors`` file: the model weights as tensors, plus one JSON metadata
entry (key ``"toolkit"``) with everything ``inference.py`` needs: model name and config, class
names, the feature config, the normalisation statistics, the task (multi-class, or binary with a
decision threshold), metrics and the training arguments. safetensors never unpickles anything,
so a tampered file can at worst fail to parse. Files are written atomically (temp file + rename).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

FORMAT_VERSION = 1
META_KEY = "toolkit"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


class WriteError(OSError):
    """A file that could not be written (disk full, permissions...); the message names it."""


def atomic_write(path: str | os.PathLike, writer) -> None:
    """Call ``writer(tmp_path)`` and move the result over ``path`` in one rename.

    The temp file ``.<name>.tmp<PID>`` lies in the same directory and is removed on failure, so
    ``path`` holds either the old or the new content, never a partial one. Any failure to write
    (a full disk shows up as ``OSError``, torch's ``inline_container.cc`` ``RuntimeError`` or a
    ``SafetensorError``) becomes one :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(str(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise WriteError(f"cannot write {path}: {_write_reason(exc, path)}") from None
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass


def _write_reason(exc: Exception, path: Path) -> str:
    import errno
    import shutil

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on device"
    try:
        if shutil.disk_usage(path.parent).free < 64 * 2 ** 20:
            return f"the disk is full ({_short(exc)})"
    except OSError:
        pass
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else _short(exc))


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Save ``model``'s weights and ``meta`` (JSON-serialisable) to ``path`` atomically."""
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = dict(meta)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault("model_name", getattr(model, "model_name", None))
    meta.setdefault("model_config", getattr(model, "model_config", {}))
    text = json.dumps(meta, default=_json_default)
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={META_KEY: text}))
    return Path(path)


def _json_default(o):
    if torch.is_tensor(o):
        return o.tolist()
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Only the metadata of a checkpoint (cheap: reads the header)."""
    path = _check(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a valid checkpoint ({_short(exc)})") from None
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without toolkit metadata (not made by this toolkit)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt metadata ({exc.msg})") from None
    for key in ("model_name", "class_names", "feature_config"):
        if key not in meta:
            raise CheckpointError(f"{path}: metadata lacks '{key}'")
    return meta


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata of a checkpoint; never executes code from the file."""
    path = _check(path)
    meta = read_meta(path)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt weights ({_short(exc)})") from None
    return state, meta


def build_from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint describes, load its weights, put it in eval mode."""
    from models import build_model, place, rebuild_config

    state, meta = load_checkpoint(path, device)
    feat = meta["feature_config"]
    config = rebuild_config(meta.get("model_config"))   # the file holds the weights: no init_from
    try:
        model = build_model(meta["model_name"], num_classes=len(meta["class_names"]),
                            n_mels=feat["n_mels"], n_frames=feat["n_frames"], **config)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild model '{meta.get('model_name')}' ({_short(exc)})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match model '{meta['model_name']}' ({_short(exc)})") from None
    return place(model, device).eval(), meta


def _check(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if path.stat().st_size < 8:
        raise CheckpointError(f"{path}: truncated checkpoint ({path.stat().st_size} bytes)")
    if path.suffix != ".safetensors":
        # refuse pickles outright: they could execute code when loaded
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head[:1] == b"\x80" or head == b"PK":
            raise CheckpointError(f"{path}: pickle/zip checkpoints are refused (they can execute code); "
                                  "use a .safetensors checkpoint made by this toolkit")
    return path


def _short(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
