#!/usr/bin/env python
"""Drum-hit classification on a class-per-folder dataset (default ../shared/data/drums), 3 seeds.

Tasks: multi-class accuracy on kick / snare / hihat / cymbal / tom, and one-vs-rest F1 for kick vs
rest and snare vs rest (rest = every other folder, clap / rim / perc included). Every (task, seed,
model) is one run: a stratified 70/15/15 split drawn with the seed, the model initialised with the
same seed, the ``drums`` feature and augmentation presets, inverse-frequency class weights, selection
on validation accuracy, the binary threshold chosen on validation (the engine does it), and one
measurement on the held-out test split. Prints one line per run, then mean ± std over seeds.

    python benchmarks/drums_experiment.py                          # mlp, lstm, cnn; seeds 0,1,2
    python benchmarks/drums_experiment.py --models mlp,cnn,liquid_s4 --epochs 20
    python benchmarks/drums_experiment.py --group-pattern='-(\\d+|hard|hardest|med|soft|softest)$'

``--group-pattern`` (regex removed from each file stem) keeps takes of one instrument together in one
split (the AVL kits hold five velocity takes of each drum); without it the split is per file, as
``train.py`` does. See training/drums.py for the model sizes and the engine settings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from training import drums  # noqa: E402


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="class-per-folder dataset (default: $TOOLKIT_DATA_DIR or "
                                                    "../shared/data/drums)")
    p.add_argument("--models", type=csv_list, default=list(drums.BASELINES))
    p.add_argument("--classes", type=csv_list, default=list(drums.DRUM5), help="multi-class task classes")
    p.add_argument("--positives", type=csv_list, default=["kick", "snare"], help="one-vs-rest positive classes")
    p.add_argument("--seeds", type=lambda s: [int(t) for t in csv_list(s)], default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help=f"default {drums.DRUM_TRAIN['epochs']}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--group-pattern", default=None,
                   help="regex removed from file stems to form groups kept within one split "
                        "(write --group-pattern=REGEX when it starts with '-')")
    p.add_argument("--no-class-weights", action="store_true")
    p.add_argument("--tiny", action="store_true", help="tiny models, 2 epochs (smoke test)")
    p.add_argument("--json", help="also write every run as JSON to this file")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    root = Path(args.data_dir) if args.data_dir else drums.drums_dir()
    available = drums.list_classes(root)
    tasks = drums.default_tasks(available, args.classes, args.positives)
    train = dict(drums.TINY_TRAIN) if args.tiny else {}
    if args.epochs:
        train["epochs"] = args.epochs
    if args.no_class_weights:
        train["class_weights"] = False
    kw = dict(preset="tiny") if args.tiny else {}
    if args.group_pattern:
        kw["group_pattern"] = args.group_pattern
    print(f"data {root} ({len(available)} classes: {', '.join(available)})")
    print(f"tasks {[t.name for t in tasks]}, models {args.models}, seeds {args.seeds}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load avg {os.getloadavg()[0]:.1f} (other processes share the CPU; times are indicative)")
    print(f"engine {dict(drums.DRUM_TRAIN, **train)}")
    print(f"split {'grouped by ' + repr(args.group_pattern) if args.group_pattern else 'per file'} "
          "(stratified 70/15/15; split seed = init seed)\n", flush=True)
    t0 = time.perf_counter()
    rows = drums.run_grid(args.models, tasks, args.seeds, root, log=lambda m: print(m, flush=True),
                          train=train, threads=args.threads, **kw)
    print()
    print(drums.format_table(rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s for {len(rows)} runs; load avg {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
