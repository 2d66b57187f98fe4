"""Where a model's data came from: split signatures and the leak check along the whole lineage.

Every checkpoint (``best.safetensors``) and every pretrained encoder (``training.jepa``'s
``encoder.safetensors``) records its dataset description ``meta["dataset"]``
(``training.data.DataSpec.describe()``), the clips of each split, ``meta["clips"] = {"train":
[[name, label], ...], "val": ..., "test": ...}`` (clip names relative to the dataset root, label
names), and the provenance of everything that shaped its weights: ``meta["provenance"] =
{"teachers": [record, ...], "init_from": record | None}``, where a *record* is
:func:`source_record` of that file (its SHA-256, dataset, clips and, recursively, its own
provenance). The records are embedded, so the chain can be checked even where the source files
are gone. A *split record* (:func:`split_record`) is the dataset description with its clips.

:func:`check_lineage` refuses a source (teacher or pretrained encoder), or any source of a
source, that trained on clips the student holds out (validation or test), or selected its epoch
on the student's test clips. :func:`split_signature` is a hash of the clip names and labels of
each split (not of directory paths), so two copies of a dataset in different places have the
same signature and two different splits never do (``matches_training`` uses it).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")
# folder-dataset settings that define the split: equal values give the same train/val/test clips
FOLDER_SPLIT_KEYS = ("classes", "merge", "fractions", "split_seed", "group_pattern", "one_vs_rest")
ENCODER_FORMAT = "vjepa2-encoder"


# --------------------------------------------------------------------------------------------
# Split descriptions and signatures
# --------------------------------------------------------------------------------------------
def clip_table(ds) -> list[list[str]]:
    """``[[clip name, label name], ...]`` of a :class:`audio_utils.FeatureDataset`."""
    labels = ds.labels.tolist()
    return [[str(n), str(ds.class_names[int(y)])] for n, y in zip(ds.names, labels)]


def dataset_clips(train_ds=None, val_ds=None, test_ds=None) -> dict[str, list[list[str]]]:
    """The ``meta["clips"]`` entry for the given splits (absent splits are left out)."""
    return {name: clip_table(ds) for name, ds in zip(SPLITS, (train_ds, val_ds, test_ds)) if ds is not None}


def split_record(meta: dict | None) -> dict | None:
    """``{**meta["dataset"], "clips": meta["clips"]}`` of a checkpoint's metadata, an encoder's
    metadata or a :func:`source_record`; a bare dataset description is returned as it is."""
    if not meta:
        return None
    if "dataset" not in meta and ("kind" in meta or "clips" in meta):
        return meta
    dataset = meta.get("dataset")
    if dataset is None:
        return None
    clips = meta.get("clips") or dataset.get("clips")
    return {**dataset, "clips": clips} if clips else dict(dataset)


def split_signature(meta: dict | None, splits=SPLITS) -> str | None:
    """SHA-256 (hex, 16 chars) of the clip names and labels of ``splits``, from a checkpoint's
    metadata or a dataset description with ``clips``; ``None`` when no clips are recorded
    (checkpoints made before this). Directory paths play no part."""
    clips = (split_record(meta) or {}).get("clips")
    if not clips:
        return None
    body = {s: sorted(map(tuple, clips.get(s) or [])) for s in splits}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _names(dataset: dict, split: str) -> set[str]:
    return {c[0] for c in (dataset.get("clips") or {}).get(split) or []}


# --------------------------------------------------------------------------------------------
# The leak check
# --------------------------------------------------------------------------------------------
def check_split(source: dict, student: dict, name: str, role: str = "teacher") -> None:
    """Raise ``ValueError`` unless ``source`` (a dataset description) trained only on data the
    student trains on, and selected its epoch on training or validation data, never on test.

    ESC-50 descriptions are checked by folds; with clip lists on both sides also by clip name
    (this catches a folder dataset's other split, or clips moved between folds); folder datasets
    without clip lists need identical split settings.
    """
    if not source:
        raise ValueError(f"{role} {name} records no dataset, so it cannot be checked for leaks "
                         "(re-create it with this version)")
    if source.get("kind") != student.get("kind"):
        raise ValueError(f"{role} {name} was trained on a {source.get('kind')} dataset, "
                         f"the student on {student.get('kind')}")
    if student.get("kind") == "esc50":
        # the source may select its epoch on the student's validation folds (the student selects
        # there too), but it must never have trained on them, nor touched the test folds at all
        test, val = set(student.get("test_folds") or ()), set(student.get("val_folds") or ())
        bad = (set(source.get("train_folds") or ()) & (test | val)) | (set(source.get("val_folds") or ()) & test)
        if bad:
            raise ValueError(f"{role} {name} trained or selected on folds {sorted(bad)}, which the student "
                             f"holds out (val {list(student.get('val_folds') or [])}, "
                             f"test {list(student.get('test_folds') or [])})")
    elif not (source.get("clips") and student.get("clips")):
        diff = [k for k in FOLDER_SPLIT_KEYS if source.get(k) != student.get(k)]
        if diff:
            raise ValueError(f"{role} {name} used another split of the folder dataset (differs in: "
                             f"{', '.join(diff)}); its held-out clips could be the student's training clips")
    if source.get("clips") and student.get("clips"):
        held_out = _names(student, "val") | _names(student, "test")
        bad = (_names(source, "train") & held_out) | (_names(source, "val") & _names(student, "test"))
        if bad:
            shown = ", ".join(sorted(bad)[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise ValueError(f"{role} {name} trained or selected on {len(bad)} clip(s) the student holds out "
                             f"for validation or test ({shown})")


def iter_lineage(record: dict, name: str, role: str = "teacher", depth: int = 0):
    """Yield ``(label, role, split record)`` for ``record`` and every source of it, recursively."""
    if depth > 32:
        raise ValueError(f"{role} {name}: provenance chain deeper than 32 levels")
    yield name, role, split_record(record)
    prov = record.get("provenance") or {}
    for t in prov.get("teachers") or []:
        yield from iter_lineage(t, f"{t.get('name', '?')} (teacher of {name})", "teacher", depth + 1)
    init = prov.get("init_from")
    if init:
        yield from iter_lineage(init, f"{init.get('name', '?')} (initialisation of {name})", "encoder", depth + 1)


def check_lineage(record: dict, student: dict, name: str, role: str = "teacher") -> None:
    """:func:`check_split` on ``record`` and, recursively, on every teacher and ``init_from``
    source it records. ``record`` is a :func:`source_record` or a checkpoint's metadata;
    ``student`` the student's split record."""
    for label, r, dataset in iter_lineage(record, name, role):
        check_split(dataset, student, label, r)


# --------------------------------------------------------------------------------------------
# Records of source files
# --------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_source_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a toolkit checkpoint or of a ``training.jepa`` encoder (``dataset``,
    ``provenance`` and whatever else it records). Raises ``ValueError`` with one line."""
    from safetensors import SafetensorError, safe_open

    from training.checkpoint import META_KEY, CheckpointError, read_meta

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only .safetensors sources record their provenance")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
    if META_KEY in md:
        return read_meta(path)
    if md.get("format") == ENCODER_FORMAT:
        out = {}
        for k, v in md.items():
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:
                out[k] = v
        return out
    raise ValueError(f"{path}: neither a toolkit checkpoint nor a training.jepa encoder")


def legacy_provenance(meta: dict, path: Path) -> dict:
    """Provenance of a checkpoint made before provenance was embedded: open the teachers its
    ``train_config.distill_from`` names (relative to the working directory)."""
    teachers = (meta.get("train_config") or {}).get("distill_from") or []
    return {"teachers": [source_record(t) for t in teachers], "init_from": None}


def source_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"name", "sha256", "dataset", "clips", "provenance"}`` of a teacher checkpoint or encoder file."""
    path = Path(path)
    try:
        meta = read_source_meta(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"source {path} not found, so its training data cannot be checked") from None
    prov = meta.get("provenance")
    if prov is None:
        prov = legacy_provenance(meta, path)
    return {"name": path.name, "sha256": file_sha256(path), "dataset": meta.get("dataset"),
            "clips": meta.get("clips"), "provenance": prov}


def run_provenance(distill_from=(), init_from: str | None = None) -> dict:
    """The ``provenance`` entry for a run that distils from ``distill_from`` and starts from
    ``init_from``."""
    return {"teachers": [source_record(p) for p in distill_from or ()],
            "init_from": source_record(init_from) if init_from else None}
