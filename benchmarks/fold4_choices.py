#!/usr/bin/env python
"""Choices made on the validation fold only: the evaluation view (whole clip, or the mean of N crops of
the training crop length) of each checkpoint, and the ensemble of all of them, scored on ``--folds``
(default 4). The test fold is refused, so nothing here can leak it.

The rule, fixed before any run finished: a checkpoint is evaluated on the whole clip unless a number of
crops beats it on the validation fold by at least ``--margin`` (default 0.01, 4 of 400 clips: less is
one seed's noise); then the best such number.

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

    from training.data import default_esc50_dir
    from training.ensemble import fold_probabilities

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--folds", default="4", help="comma-separated validation folds")
    p.add_argument("--test-fold", type=int, default=5, help="refused in --folds")
    p.add_argument("--crops", default="1,3,5,10", help="numbers of crops to try (1 = the whole clip)")
    p.add_argument("--margin", type=float, default=0.01, help="how much crops must beat the whole clip by")
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
        scores = {}
        for n in (int(c) for c in args.crops.split(",")):
            try:
                probs, y, _ = fold_probabilities(ck, root, folds, n_crops=n)
            except ValueError as exc:          # crops of a checkpoint trained on whole clips
                print(f"skipped {n} crops: {exc}")
                continue
            if labels is not None and not np.array_equal(labels, y):
                print(f"error: {ck}: labels differ from the other checkpoints'", file=sys.stderr)
                return 2
            labels = y
            scores[n] = (float((probs.argmax(1) == y).mean()), probs)
            print(f"{scores[n][0]:.4f}  {ck}  " + (f"mean of {n} crops" if n > 1 else "whole clip"), flush=True)
        best = max(scores, key=lambda n: (scores[n][0], -n))
        pick = best if best != 1 and scores[best][0] >= scores[1][0] + args.margin else 1
        chosen[ck] = (pick, scores[pick][1])
        print(f"chosen: {ck}: " + (f"{pick} crops" if pick > 1 else "whole clip") + f" ({scores[pick][0]:.4f})")
    if len(chosen) > 1:
        mean = np.mean([b[1] for b in chosen.values()], 0)
        print(f"{float((mean.argmax(1) == labels).mean()):.4f}  ensemble of all (mean probability, chosen views)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
