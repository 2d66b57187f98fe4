#!/usr/bin/env python
"""Pick a distillation teacher on the validation fold only: the accuracy of every subset of the
given checkpoints (mean of their probabilities) on ``--folds`` (default 4). The test fold is never
read, so the choice cannot leak it.

    .venv/bin/python benchmarks/teacher_selection.py runs/cnn_esc50/best.safetensors \\
        runs/liquid_s4_conv/best.safetensors runs/mamba_conv/best.safetensors --folds 4
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    from training.ensemble import fold_probabilities
    from training.data import default_esc50_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--folds", default="4", help="comma-separated folds to score on (validation only)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--test-fold", type=int, default=5, help="refused in --folds")
    args = p.parse_args(argv)
    folds = [int(f) for f in args.folds.split(",")]
    if args.test_fold in folds:
        print(f"error: fold {args.test_fold} is the test fold; choose teachers on validation folds", file=sys.stderr)
        return 2
    root = args.data_dir or default_esc50_dir()
    probs, labels = {}, None
    for ck in args.checkpoints:
        pr, y, _ = fold_probabilities(ck, root, folds)
        if labels is not None and not np.array_equal(labels, y):
            print(f"error: {ck}: labels differ from the other checkpoints'", file=sys.stderr)
            return 2
        probs[ck], labels = pr, y
    rows = []
    for k in range(1, len(probs) + 1):
        for subset in itertools.combinations(probs, k):
            acc = float((np.mean([probs[c] for c in subset], 0).argmax(1) == labels).mean())
            rows.append((acc, subset))
    rows.sort(key=lambda r: (-r[0], len(r[1])))
    print(f"accuracy on fold(s) {folds} ({len(labels)} clips) of the probability mean of each subset:")
    for acc, subset in rows:
        print(f"{acc:.4f}  {' + '.join(subset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
