#!/usr/bin/env python
"""Choices made on the validation fold only: the evaluation view (whole clip, or the mean of N crops)
of each checkpoint and the ensemble of all of them, scored on ``--folds`` (default 4).

The test fold is refused, so nothing here can leak it. Prints one line per checkpoint and view, and
the accuracy of the mean probability of all checkpoints, each with its own chosen view.

    python benchmarks/fold4_choices.py runs/exp/ls4_r1/best.safetensors runs/exp/vit_r1/best.safetensors \\
        [--crops 1,3,5,10] [--folds 4] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    import torch

    import audio_utils as au
    from training.checkpoint import build_from_checkpoint
    from training.data import default_esc50_dir
    from training.engine import crop_frames_for, predict_proba

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--folds", default="4", help="comma-separated validation folds")
    p.add_argument("--test-fold", type=int, default=5, help="refused in --folds")
    p.add_argument("--crops", default="1,3,5,10", help="numbers of crops to try (1 = the whole clip)")
    p.add_argument("--crop", type=float, default=None, help="crop seconds (default: the checkpoint's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    folds = [int(f) for f in args.folds.split(",")]
    if args.test_fold in folds:
        print(f"error: fold {args.test_fold} is the test fold; choose on validation folds", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    root = args.data_dir or default_esc50_dir()
    chosen, labels = {}, None
    for ck in args.checkpoints:
        model, meta = build_from_checkpoint(ck)
        feat = au.FeatureConfig.from_dict(meta["feature_config"])
        ds = au.ESC50Dataset(root, folds=folds, feature_cfg=feat)
        norm = meta["normalization"]
        ds.set_normalization(norm["mean"], norm["std"])
        crop_s = args.crop or (meta.get("train_config") or {}).get("crop") or 0.0
        best = None
        for n in (int(c) for c in args.crops.split(",")):
            if n > 1 and not crop_s:
                continue
            views = {"crop_frames": crop_frames_for(crop_s, feat), "n_crops": n} if n > 1 else {}
            probs, y = predict_proba(model, ds, 32, "cpu", True, **views)
            acc = float((probs.argmax(1) == y).mean())
            print(f"{acc:.4f}  {ck}  " + (f"mean of {n} crops of {crop_s} s" if n > 1 else "whole clip"), flush=True)
            if best is None or acc > best[0]:
                best = (acc, n, probs)
            if labels is not None and not np.array_equal(labels, y):
                print(f"error: {ck}: labels differ from the other checkpoints'", file=sys.stderr)
                return 2
            labels = y
        chosen[ck] = best
    if len(chosen) > 1:
        mean = np.mean([b[2] for b in chosen.values()], 0)
        views = ", ".join(f"{Path(ck).parent.name or ck}: {b[1]}" for ck, b in chosen.items())
        print(f"{float((mean.argmax(1) == labels).mean()):.4f}  ensemble (mean probability; crops chosen: {views})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
