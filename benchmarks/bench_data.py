#!/usr/bin/env python
"""Data-pipeline benchmark on real ESC-50.

Prints (1) the time to build the feature cache for all 2000 clips from scratch (decode, resample,
log-mel) and to reopen it, and (2) the data time of one training epoch (folds 1-3, augmentation on,
x3 virtual expansion = 3600 views in batches of 32) beside the compute time of the same epoch for
a model (default: cnn), as absolute seconds and as a fraction.

    python benchmarks/bench_data.py [--data-dir ../shared/data/ESC-50] [--model cnn] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import audio_utils as au  # noqa: E402
import models  # noqa: E402
from training.data import default_esc50_dir  # noqa: E402
from training.engine import build_optimizer, epoch_batches  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=str(default_esc50_dir()))
    p.add_argument("--model", default="cnn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model-steps", type=int, default=10, help="steps timed for the model (extrapolated)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load avg {os.getloadavg()[0]:.2f}")
    meta = au.read_esc50_meta(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        feats = au.cached_features(meta.files, au.ESC50_FEATURES, tmp, min_seconds=4.9)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        au.cached_features(meta.files, au.ESC50_FEATURES, tmp, min_seconds=4.9)
        reopen = time.perf_counter() - t0
    print(f"feature cache, {len(meta.files)} clips -> {tuple(feats.shape)}: build {build:.2f} s "
          f"(goal <= 15 s), reopen {reopen * 1000:.1f} ms")

    ds = au.esc50_dataset(args.data_dir, folds=[1, 2, 3], augment=True)
    ds.set_normalization(*ds.compute_normalization())
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    n_batches = 0
    for idx in epoch_batches(len(ds), 32, g):
        ds.get_batch(idx, g)
        n_batches += 1
    data_s = time.perf_counter() - t0

    model = models.build_model(args.model)
    opt = build_optimizer(model, 1e-3, 0.05)
    x, y = ds.get_batch(torch.arange(32), g)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    t0 = time.perf_counter()
    for _ in range(args.model_steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    step = (time.perf_counter() - t0) / args.model_steps
    compute_s = step * n_batches
    print(f"epoch = {len(ds)} views in {n_batches} batches of 32")
    print(f"{'data time / epoch':28s} {data_s:8.2f} s   ({1000 * data_s / n_batches:.1f} ms per batch)")
    print(f"{args.model + ' compute / epoch':28s} {compute_s:8.2f} s   ({1000 * step:.0f} ms per step)")
    print(f"{'data share of the epoch':28s} {100 * data_s / (data_s + compute_s):8.1f} %")


if __name__ == "__main__":
    main()
