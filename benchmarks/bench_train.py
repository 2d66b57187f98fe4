#!/usr/bin/env python
"""Training-throughput benchmark: fp32 vs bf16 autocast and whole clips vs crops, per model.

For each model's configuration it times real training steps on ESC-50 folds 1-3 (the data
pipeline with augmentation and between-class mixing, forward, backward, AdamW) and the
validation pass over fold 4, and prints absolute seconds and the ratios against fp32 on whole
clips, all in one run on an otherwise idle machine. A 1200-clip epoch is 37 steps of 32.

With ``--histories NAME=DIR ...`` it also prints the wall-clock (training + validation, as
logged in ``DIR/history.json``) each run took to first reach fold-4 accuracy 0.70 and 0.80.

With ``--recipes FILE ...`` it runs ``train.py --recipe FILE --epochs 3 --val-every 1`` for each
(in a temporary directory) and prints ``metrics.json``'s mean epoch time, validation included: the
issue's measure of a shipped configuration's epoch. ``--recipe-epochs N --recipe-val-every 0`` runs N
epochs validating as the recipe itself does (e.g. every 10th epoch).

    python benchmarks/bench_train.py [--threads 2] [--steps 8] [--models liquid_s4,mamba,vjepa2,cnn]
        [--histories shipped=checkpoints/liquid_s4_esc50.history.json new=runs/x] [--recipes recipes/*.yaml]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import audio_utils as au  # noqa: E402
import models  # noqa: E402
from training.data import default_esc50_dir  # noqa: E402
from training.engine import (_soft_cross_entropy, amp_dtype, autocast, build_optimizer,  # noqa: E402
                             crop_frames_for, predict_proba)

# the recipes' model configurations (recipes/*.yaml)
CONFIGS = {
    "liquid_s4": dict(stem_channels=[32, 64, 128]),
    "mamba": dict(),
    "vjepa2": dict(preset="mini", stem="conv"),
    "cnn": dict(),
}
RECIPE_AUGMENT = au.AugmentConfig(eq_prob=0.8, stretch_prob=0.5, freq_shift_prob=0.3, time_mask_param=15)
STEPS_PER_EPOCH = 1200 // 32


def time_steps(model, ds, crop: int | None, dtype, steps: int, warmup: int = 2) -> float:
    """Seconds per training step (data + forward + backward + optimizer)."""
    ds.crop_frames = crop
    opt = build_optimizer(model, 1e-3, 0.05)
    g = torch.Generator().manual_seed(0)
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        idx = torch.randint(0, ds.num_clips, (32,), generator=g)
        x, target = ds.get_mixed_batch(idx, g)
        with autocast("cpu", dtype):
            loss = _soft_cross_entropy(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def time_to(history: list[dict], target: float) -> float | None:
    total = 0.0
    for h in history:
        total += h["epoch_time"] + h.get("eval_time", 0.0)
        accs = [h.get(k) for k in ("val_acc", "val_acc_ema")]
        if any(a is not None and math.isfinite(a) and a >= target for a in accs):
            return total
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(default_esc50_dir()))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="timed steps per configuration (median)")
    p.add_argument("--crop", type=float, default=3.0, help="crop length in seconds")
    p.add_argument("--models", default=",".join(CONFIGS))
    p.add_argument("--histories", nargs="*", default=[], metavar="NAME=PATH")
    p.add_argument("--recipes", nargs="*", default=[], metavar="FILE")
    p.add_argument("--recipe-epochs", type=int, default=3, help="epochs of each --recipes run")
    p.add_argument("--recipe-val-every", type=int, default=1,
                   help="validate every K epochs in the --recipes runs (0: as the recipe says)")
    p.add_argument("--skip-steps", action="store_true", help="only the histories and recipes parts")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = amp_dtype("cpu")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load avg {os.getloadavg()[0]:.2f}, native bf16: {bf16 is not None}")
    train = au.esc50_dataset(args.data_dir, folds=[1, 2, 3], augment=RECIPE_AUGMENT, expansion=1)
    train.set_normalization(*train.compute_normalization())
    val = au.esc50_dataset(args.data_dir, folds=[4]).set_normalization(*train.normalization)
    crop = crop_frames_for(args.crop, train.feature_cfg)
    print(f"per 1200-clip epoch = {STEPS_PER_EPOCH} steps of 32; crop {args.crop} s = {crop} frames; "
          f"validation = 400 whole clips, batch 32")
    print(f"{'model':10s} {'params':>8s} | {'fp32 full':>9s} {'bf16 full':>9s} {'fp32 crop':>9s} {'bf16 crop':>9s}"
          f" | {'val fp32':>8s} {'val bf16':>8s} | {'speed-up':>8s} {'epoch+val':>9s}")
    for name in ([] if args.skip_steps else args.models.split(",")):
        cfg = dict(CONFIGS[name])
        torch.manual_seed(0)
        model = models.place(models.build_model(name, **cfg))          # the layout the engine trains in
        params = sum(q.numel() for q in model.parameters())
        cells = {}
        for prec, dt in (("fp32", None), ("bf16", bf16)):
            for view, c in (("full", None), ("crop", crop)):
                cells[prec, view] = time_steps(model, train, c, dt, args.steps) * STEPS_PER_EPOCH
        evals = {}
        for prec, dt in (("fp32", False), ("bf16", True)):
            predict_proba(model, val.subset(range(32)), 32, "cpu", dt)          # warm-up
            t0 = time.perf_counter()
            predict_proba(model, val, 32, "cpu", dt)
            evals[prec] = time.perf_counter() - t0
        base = cells["fp32", "full"] + evals["fp32"]
        new = cells["bf16", "crop"] + evals["bf16"]
        print(f"{name:10s} {params:8d} | " + " ".join(f"{cells[k]:8.1f}s" for k in
              (("fp32", "full"), ("bf16", "full"), ("fp32", "crop"), ("bf16", "crop")))
              + f" | {evals['fp32']:7.1f}s {evals['bf16']:7.1f}s | {base / new:7.2f}x {new:8.1f}s", flush=True)
    print("columns: seconds per 1200-clip training epoch (median step x 37) for fp32/bf16 on whole 5-s clips "
          "and on crops; seconds per validation pass; speed-up = (fp32 full epoch + fp32 val) / "
          "(bf16 crop epoch + bf16 val)")

    if args.recipes:
        import tempfile

        from training.cli import main as train_main
        val_every = ["--val-every", str(args.recipe_val_every)] if args.recipe_val_every > 0 else []
        print(f"\ntrain.py --recipe FILE --epochs {args.recipe_epochs} {' '.join(val_every) or '(validation as the recipe says)'}"
              f" --threads {args.threads} (metrics.json: mean epoch time; with validation = what an epoch costs):")
        for recipe in args.recipes:
            with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
                rc = train_main(["--recipe", recipe, "--epochs", str(args.recipe_epochs), *val_every, "--test-folds", "",
                                 "--threads", str(args.threads), "--no-progress", "--data-dir", args.data_dir,
                                 "--out", tmp])
                m = json.loads((Path(tmp) / "metrics.json").read_text()) if rc == 0 else None
            if m is None:
                print(f"  {recipe}: train.py failed ({rc})")
                continue
            print(f"  {recipe:34s} training {m['mean_epoch_time_s']:5.1f} s, with validation "
                  f"{m['mean_epoch_time_with_eval_s']:5.1f} s per epoch ({m['train_items_per_epoch']} clips)", flush=True)

    if args.histories:
        print("\nwall-clock to first reach fold-4 accuracy (training + validation as logged):")
        for item in args.histories:
            label, _, path = item.partition("=")
            path = Path(path)
            hist = json.loads((path / "history.json" if path.is_dir() else path).read_text())
            cells = []
            for target in (0.70, 0.80):
                t = time_to(hist, target)
                cells.append(f"{target:.2f}: " + (f"{t / 60:6.1f} min" if t is not None else "not reached"))
            print(f"  {label:24s} {len(hist):4d} epochs | " + " | ".join(cells))


if __name__ == "__main__":
    main()
