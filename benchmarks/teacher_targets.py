#!/usr/bin/env python
"""What an offline distillation teacher tells its student on the student's own training clips.

For the given teacher checkpoints (their probability mean, as ``training.distill.Teacher`` forms it),
on every clip of ``--train-folds`` (whole clips, no augmentation, as offline distillation caches them):
the teacher's accuracy against the labels, and at temperature 1 and at ``--temp`` the mean probability
of the true class and the mean entropy of the targets (nats; ln 50 = 3.91 is uniform). Targets that give
the true class nearly all the mass carry little beyond the labels. Reads only training folds.

    .venv/bin/python benchmarks/teacher_targets.py checkpoints/seeds/liquid_s4_long_seed0.safetensors \\
        checkpoints/seeds/mamba_wide_seed0.safetensors checkpoints/seeds/vjepa2_bf16_long_seed0.safetensors
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    import torch

    from training.data import DataSpec, build_datasets
    from training.distill import Teacher

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--train-folds", default="1,2,3", help="the student's training folds (default 1,2,3)")
    p.add_argument("--temp", type=float, default=2.0, help="distillation temperature (default 2)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folds = tuple(int(f) for f in args.train_folds.split(","))
    spec = DataSpec(kind="esc50", root=args.data_dir, train_folds=folds, val_folds=(), test_folds=(),
                    augment=False)
    train_ds, _, _ = build_datasets(spec, progress=False)
    train_ds.set_normalization(*train_ds.compute_normalization())
    labels = train_ds.labels
    print(f"teacher: mean of {len(args.checkpoints)} checkpoints; {train_ds.num_clips} clips of folds {list(folds)}")
    try:
        teacher = Teacher.from_checkpoints(args.checkpoints, train_ds, spec.describe())
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for temp in (1.0, args.temp):
        teacher.temperature = temp                    # the same loaded members at each temperature
        probs = teacher.precompute(train_ds)
        true = probs.gather(1, labels.view(-1, 1)).squeeze(1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
        if temp == 1.0:
            print(f"teacher accuracy on these clips: {float((probs.argmax(1) == labels).float().mean()):.4f}")
        print(f"T {temp:g}: mean probability of the true class {float(true.mean()):.3f}, "
              f"median {float(true.median()):.3f}; mean entropy {float(entropy.mean()):.3f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
