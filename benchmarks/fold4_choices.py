#!/usr/bin/env python
"""Choices made on the validation fold only: the evaluation view (whole clip, or the mean of N crops of
the training crop length) of each checkpoint, and the ensemble of all of them, scored on ``--folds``
(default 4). The test fold is refused, so nothing here can leak it.

The rule, fixed before any run finished: a checkpoint is evaluated on the whole clip unless a number of
crops beats it on the validation fold by at least ``--margin`` (default 0.01, 4 of 400 clips: less is
one seed's noise); then the best such number. With ``--pooled``, the checkpoints are seeds of one recipe
and one view is chosen for all of them, on the mean of their accuracies (less noisy than one seed's).

    python benchmarks/fold4_choices.py runs/exp/ls4_r1/best.safetensors runs/exp/vit_r1/best.safetensors \\
        [--crops 1,3,5,10] [--folds 4] [--threads 2]
    python benchmarks/fold4_choices.py --pooled checkpoints/seeds/mamba_mel64_seed{0,1,2}.safetensors
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
    p.add_argument("--pooled", action="store_true",
                   help="the checkpoints are seeds of one recipe: choose one view on the mean of their accuracies")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    folds = [int(f) for f in args.folds.split(",")]
    if args.test_fold in folds:
        print(f"error: fold {args.test_fold} is the test fold; choose on validation folds", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    root = args.data_dir or default_esc50_dir()
    chosen, labels, table = {}, None, {}
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
            print(f"{scores[n][0]:.4f}  {ck}  {_view(n)}", flush=True)
        table[ck] = scores
        if not args.pooled:
            pick = _choose({n: s[0] for n, s in scores.items()}, args.margin)
            chosen[ck] = (pick, scores[pick][1])
            print(f"chosen: {ck}: {_view(pick)} ({scores[pick][0]:.4f})")
    if args.pooled:
        views = [n for n in table[args.checkpoints[0]] if all(n in s for s in table.values())]
        means = {n: float(np.mean([s[n][0] for s in table.values()])) for n in views}
        for n in views:
            print(f"{means[n]:.4f}  mean of {len(table)} checkpoints  {_view(n)}")
        pick = _choose(means, args.margin)
        chosen = {ck: (pick, s[pick][1]) for ck, s in table.items()}
        print(f"chosen for all {len(table)}: {_view(pick)} ({means[pick]:.4f})")
    if len(chosen) > 1:
        mean = np.mean([b[1] for b in chosen.values()], 0)
        print(f"{float((mean.argmax(1) == labels).mean()):.4f}  ensemble of all (mean probability, chosen views)")
    return 0


def _view(n: int) -> str:
    return f"mean of {n} crops" if n > 1 else "whole clip"


def _choose(acc: dict[int, float], margin: float) -> int:
    """The whole clip (1) unless a number of crops beats it by at least ``margin``; then the best such number
    (ties to fewer crops)."""
    best = max(acc, key=lambda n: (acc[n], -n))
    if 1 not in acc:
        return best
    return best if acc[best] >= acc[1] + margin else 1


if __name__ == "__main__":
    sys.exit(main())
