"""Benchmark: one ESC-50 training epoch (1200 clips = 38 steps of batch 32, random input) of the
``vjepa2`` ViT on CPU, supervised (attentive classifier, cross-entropy) and JEPA pretraining
(context encoder + EMA target + predictor), plus eval forward passes over 800 clips (folds 4 + 5).

    .venv/bin/python benchmarks/bench_vjepa2.py                 # default config, 2 threads
    .venv/bin/python benchmarks/bench_vjepa2.py --variants default small fullband tiny

Goal: <= 20 s per epoch on 2 CPU cores for the default config. Prints absolute times and the ratio
to the goal. Other processes sharing the CPU inflate the figures (the load average is printed).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import models  # noqa: E402
from training.jepa import _optim_and_sched, build_jepa  # noqa: E402

VARIANTS = {
    "default": (None, {}),
    "small": ("small", {}),              # MODEL_NOTES section 4 reference: D=192, depth 6, 3 heads
    "fullband": (None, {"patch_f": None}),
    "rope": (None, {"pos": "rope"}),
    "mini": ("mini", {}),                # D=96, depth 4, 3 heads (crowded-CPU runs)
    "mini_conv": ("mini", {"stem": "conv"}),   # the same with the convolutional tubelet embedding
    "tiny": ("tiny", {}),
    "gpu": ("gpu", {}),
}


def _time_steps(step, n_steps, warmup):
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step()
    return time.perf_counter() - t0


def bench(variant, steps, batch, warmup, n_frames=155, n_mels=128, device="cpu"):
    preset, cfg = VARIANTS[variant]
    torch.manual_seed(0)
    x = torch.randn(batch, n_frames, n_mels, device=device)
    y = torch.randint(0, 50, (batch,), device=device)

    model = models.build_model("vjepa2", preset=preset, **cfg).to(device).train()
    n_params = models.count_parameters(model)
    opt, sched = _optim_and_sched(model, 5e-4, 0.05, steps + warmup, 1)

    def sup_step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()

    t_sup = _time_steps(sup_step, steps, warmup)

    model.eval()
    xe = torch.randn(200, n_frames, n_mels, device=device)

    def eval_step():
        with torch.inference_mode():
            model(xe)

    t_eval = _time_steps(eval_step, 4, 1)  # 800 clips

    jepa, _ = build_jepa(n_frames, n_mels, preset, dict(cfg, drop_path=0.0))
    jepa.to(device).train()
    n_jepa = sum(p.numel() for p in jepa.trainable().parameters())
    jopt, jsched = _optim_and_sched(jepa.trainable(), 5e-4, 0.05, steps + warmup, 1)
    gen = torch.Generator().manual_seed(0)

    def jepa_step():
        loss = jepa(x, generator=gen)
        jopt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(jepa.trainable().parameters(), 1.0)
        jopt.step()
        jsched.step()
        jepa.ema_update(0.998)

    t_jepa = _time_steps(jepa_step, steps, warmup)
    g = model.encoder.grid
    return dict(variant=variant, tokens=f"{g.grid_t}x{g.grid_f}={g.n_tokens}", params=n_params,
                jepa_params=n_jepa, sup=t_sup, jepa=t_jepa, eval800=t_eval)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=["default"], choices=sorted(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=38, help="steps per epoch (1200 clips / 32)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--goal", type=float, default=20.0, help="seconds per epoch")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}, "
          f"{args.steps} steps x batch {args.batch_size}; load average before: {load}", flush=True)
    hdr = (f"{'variant':9s} {'tokens':9s} {'params':>9s} | {'sup epoch s':>11s} {'s/step':>6s} {'/goal':>5s} | "
           f"{'JEPA epoch s':>12s} {'s/step':>6s} {'/goal':>5s} {'JEPA/sup':>8s} | {'eval 800 s':>10s}")
    print(hdr)
    print("-" * len(hdr), flush=True)
    for v in args.variants:
        r = bench(v, args.steps, args.batch_size, args.warmup, device=args.device)
        print(f"{r['variant']:9s} {r['tokens']:9s} {r['params'] / 1e6:8.2f}M | {r['sup']:11.1f} "
              f"{r['sup'] / args.steps:6.3f} {r['sup'] / args.goal:5.2f} | {r['jepa']:12.1f} "
              f"{r['jepa'] / args.steps:6.3f} {r['jepa'] / args.goal:5.2f} {r['jepa'] / r['sup']:8.2f} | "
              f"{r['eval800']:10.1f}", flush=True)
    print(f"load average after: {os.getloadavg() if hasattr(os, 'getloadavg') else None}")


if __name__ == "__main__":
    main()
