"""Shipping a finished run: copy it to ``checkpoints/`` where the comparison and README read it.

``checkpoints/<model>_<tag>.safetensors`` (the run's ``best.safetensors``) with
``.history.json`` and ``.metrics.json`` (copies of the run's ``history.json`` / ``metrics.json``).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from training.results import DATASET_TAG


def ship_checkpoint(run_dir: str | os.PathLike, model_name: str, checkpoint_dir: str | os.PathLike,
                    tag: str = DATASET_TAG, force: bool = False) -> Path | None:
    """Copy a finished run's ``best.safetensors`` / ``history.json`` / ``metrics.json`` to
    ``checkpoint_dir/<model>_<tag>.safetensors`` / ``.history.json`` / ``.metrics.json``.

    An existing shipped checkpoint is replaced only if the new run's *validation* accuracy is at
    least as high (the test fold never selects), or with ``force``. Returns the checkpoint path,
    or None when nothing was copied.
    """
    from training.checkpoint import atomic_write

    run_dir, checkpoint_dir = Path(run_dir), Path(checkpoint_dir)
    src = {"safetensors": run_dir / "best.safetensors", "history.json": run_dir / "history.json",
           "metrics.json": run_dir / "metrics.json"}
    missing = [str(p) for p in src.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"run is not finished, missing: {', '.join(missing)}")
    dest = {k: checkpoint_dir / f"{model_name}_{tag}.{k}" for k in src}
    new = json.loads(src["metrics.json"].read_text())
    if dest["metrics.json"].exists() and not force:
        old = json.loads(dest["metrics.json"].read_text())
        if (old.get("val_acc") or 0) > (new.get("val_acc") or 0):
            print(f"kept {dest['safetensors']}: its val acc {old['val_acc']:.4f} beats this run's "
                  f"{new['val_acc']:.4f} (force=True to replace)")
            return None
    for k, s in src.items():
        atomic_write(dest[k], lambda tmp, s=s: shutil.copyfile(s, tmp))
    print(f"shipped {dest['safetensors']} (val acc {new.get('val_acc'):.4f}, test acc {new.get('test_acc')})")
    return dest["safetensors"]
