#!/usr/bin/env python
"""Convolution weight layout on the CPU: one training step (forward + backward) of each conv-stem model at
batch 32 on whole 5-s clips, with its weights in the default (NCHW) layout and in the channels-last layout
that ``models.place`` gives every model, in fp32 and bf16 autocast, in alternating rounds (median of
``--rounds``); absolute milliseconds and the ratios.

    python benchmarks/bench_layout.py [--threads 2] [--rounds 7] [--models cnn,liquid_s4,mamba,vjepa2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import models  # noqa: E402
from bench_train import CONFIGS  # noqa: E402  (the recipes' model configurations, as bench_train times them)
from training.engine import amp_dtype  # noqa: E402


def step(model, x, y, dtype) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--models", default=",".join(CONFIGS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bf16 = amp_dtype("cpu")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load avg {os.getloadavg()[0]:.2f}, native bf16: {bf16 is not None}; batch 32 x 155 frames x 128 mels")
    print(f"{'model':10s} | {'fp32 NCHW':>10s} {'fp32 CL':>8s} {'ratio':>6s} | {'bf16 NCHW':>10s} {'bf16 CL':>8s} {'ratio':>6s}")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 155, 128, generator=g), torch.randint(0, 50, (32,), generator=g)
    for name in args.models.split(","):
        torch.manual_seed(0)
        nchw = models.build_model(name, **CONFIGS[name]).train()
        cl = models.place(models.build_model(name, **CONFIGS[name]).train())
        times = {}
        for prec, dt in (("fp32", None), ("bf16", bf16)):
            if prec == "bf16" and dt is None:
                continue
            for m in (nchw, cl):
                step(m, x, y, dt)                                               # warm-up
            runs = {"nchw": [], "cl": []}
            for _ in range(args.rounds):
                runs["nchw"].append(step(nchw, x, y, dt))
                runs["cl"].append(step(cl, x, y, dt))
            times[prec] = {k: 1000 * statistics.median(v) for k, v in runs.items()}
        cells = " | ".join(f"{t['nchw']:8.1f}ms {t['cl']:6.1f}ms {t['nchw'] / t['cl']:5.2f}x" for t in times.values())
        print(f"{name:10s} | {cells}", flush=True)
    print("columns: milliseconds per training step (forward + backward, no optimizer), median of alternating rounds; "
          "ratio = NCHW / channels-last (> 1: channels-last faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
