#!/usr/bin/env python
"""Random split vs held-out speakers on the Free Spoken Digit Dataset (a dataset this repo never ships).

FSDD (github.com/Jakobovski/free-spoken-digit-dataset, CC BY-SA 4.0): 3000 recordings at 8 kHz,
``<digit>_<speaker>_<take>.wav``, 6 speakers x 10 digits x 50 takes. Arrange them as class folders
(``<root>/<digit>/<digit>_<speaker>_<take>.wav``; see docs/inference.md), then

    nice -n 19 python benchmarks/fsdd_speaker_split.py --data-dir /work/ext_data/fsdd --threads 1

trains the same small CNN twice through the library (``training.runner.train_model``): once on a
random stratified 70/15/15 split, once on a speaker split (``group_pattern`` ``^\\d+_|_\\d+$`` with
``group_scope="dataset"``: whole speakers in train / val / test). It prints each run's test
accuracy from training and from ``inference.py --evaluate`` on the same split, and which speakers
each split holds. Output: results/fsdd_speaker_split.txt (unless --no-save).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import audio_utils as au  # noqa: E402
from training.data import DataSpec, build_datasets  # noqa: E402
from training.runner import make_train_config, train_model  # noqa: E402

# 8-kHz speech: 1-s clips (most digits are shorter), 16-ms hop, 40 mel bins -> 60 frames
FSDD_FEATURES = au.FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=40, f_min=20.0,
                                 duration=1.0, n_frames=60)
SPEAKER = r"^\d+_|_\d+$"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="FSDD as class folders 0..9")
    p.add_argument("--out", default="runs/fsdd", help="run directories go under here")
    p.add_argument("--model", default="cnn")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--channels", help="CNN channels, e.g. 8,16,32,64 (default: the preset's)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--expansion", type=int, default=1, help="augmented views per clip per epoch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    lines = [f"FSDD {args.data_dir}: model {args.model} ({args.preset}, channels {args.channels}), "
             f"{args.epochs} epochs, expansion {args.expansion}, "
             f"{args.threads} thread(s), features {FSDD_FEATURES}"]
    for name, extra in (("random", {}), ("speaker", {"group_pattern": SPEAKER, "group_scope": "dataset"})):
        spec = DataSpec(kind="folder", root=args.data_dir, feature_config=FSDD_FEATURES.to_dict(),
                        expansion=args.expansion, **extra)
        datasets = build_datasets(spec)
        speakers = [sorted({n.split("_")[1] for n in ds.names}) for ds in datasets]
        cfg = make_train_config(args.model, epochs=args.epochs, threads=args.threads, progress=False,
                                device="cpu", batch_size=32)
        out = Path(args.out) / name
        t0 = time.process_time()
        model_config = {"channels": [int(c) for c in args.channels.split(",")]} if args.channels else None
        m = train_model(args.model, spec, out, cfg, preset=args.preset, resume=False, datasets=datasets,
                        model_config=model_config)
        cpu = time.process_time() - t0
        cmd = [sys.executable, str(REPO / "inference.py"), "--checkpoint", str(out), "--evaluate", "--dataset",
               "folder", "--data-dir", args.data_dir, "--split", "test", "--json", "--threads", str(args.threads),
               "--out-dir", str(out / "eval_test")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        import json
        ev = json.loads(proc.stdout) if proc.returncode == 0 else {"accuracy": float("nan")}
        lines.append(f"{name:8s} split sizes {[ds.num_clips for ds in datasets]}  speakers per split {speakers}")
        lines.append(f"{name:8s} test accuracy {m['test_acc']:.4f} (training)  {ev['accuracy']:.4f} "
                     f"(inference.py --evaluate --split test, n={ev.get('n')})  val {m['val_acc']:.4f}  "
                     f"train CPU {cpu:.0f} s")
        print(lines[-2], lines[-1], sep="\n", flush=True)
    if not args.no_save:
        (REPO / "results").mkdir(exist_ok=True)
        (REPO / "results" / "fsdd_speaker_split.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
