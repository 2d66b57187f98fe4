#!/usr/bin/env python
"""The models on an accelerator: do they agree with the CPU, and how fast is a training step there.

For each recipe file it builds the recipe's model with random weights (``bench_stem.recipe_model``: model,
preset, config and features as the recipe says, input of the recipe's training crop) and reports:

* ``fp32 diff``: the largest difference between the logits computed on the CPU and on ``--device``, both in
  fp32 and eval mode, relative to the largest CPU logit (the same weights and input);
* ``bf16 agree``: the share of the batch whose arg-max class under the engine's autocast on ``--device``
  (bf16 on CUDA) is the CPU fp32 one;
* the median milliseconds of a training step (forward, soft cross-entropy, backward, AdamW, under the
  engine's autocast rule) on the CPU at batch 32 and on ``--device`` at each ``--batches`` size, and the
  ratio CPU / device at batch 32 (how many times faster the device is).

The data pipeline is not timed. Without the device the script stops with one line and exit status 2.

    python benchmarks/bench_cuda.py recipes/liquid_s4_esc50_mel64_t4.yaml recipes/mamba_esc50_mel64.yaml \\
        recipes/vjepa2_bf16_mel64.yaml [--device cuda] [--threads 2] [--steps 8] [--batches 32,256]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench_stem import build_recipes, median_ms, training_step  # noqa: E402
from training.engine import amp_dtype, autocast  # noqa: E402


@torch.no_grad()
def agreement(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """(largest |logit difference| CPU fp32 vs ``device`` fp32, relative to the largest CPU logit;
    share of arg-max classes that ``device`` under autocast shares with the CPU in fp32)."""
    cpu = copy.deepcopy(model).to("cpu").eval()
    dev = copy.deepcopy(model).to(device).eval()
    ref = cpu(x).float()
    out = dev(x.to(device)).float().cpu()
    with autocast(device, amp_dtype(device)):
        low = dev(x.to(device)).float().cpu()
    rel = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    return rel, float((low.argmax(-1) == ref.argmax(-1)).float().mean())


def step_ms(model: torch.nn.Module, x: torch.Tensor, device: torch.device, steps: int) -> float:
    """Median milliseconds of one training step of a copy of ``model`` on ``device``."""
    return median_ms(training_step(copy.deepcopy(model).to(device), x.to(device), device), steps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="+", metavar="RECIPE")
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement (median)")
    p.add_argument("--batches", default="32,256", help="batch sizes timed on --device (comma-separated)")
    args = p.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
        device = torch.device(args.device)
    except (ValueError, RuntimeError) as exc:
        print(f"error: bad --batches or --device: {exc}", file=sys.stderr)
        return 2
    if args.threads < 1 or args.steps < 1 or min(batches) < 1:
        print("error: --threads, --steps and --batches must be >= 1", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here (bench_cuda.py measures the models on an accelerator)", file=sys.stderr)
        return 2
    built = build_recipes(args.recipes, args.threads)
    if built is None:
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"torch {torch.__version__}, {name}, CPU threads {args.threads}, autocast {amp_dtype(device)} on {device}")
    dev_cols = " ".join(f"{f'dev ms b{b}':>11s}" for b in batches)
    print(f"{'recipe':42s} {'input':>8s} {'fp32 diff':>9s} {'bf16 agree':>10s} {'cpu ms b32':>10s} {dev_cols} {'x b32':>6s}")
    for path, _name, model, x in built:
        rel, agree = agreement(model, x, device)
        cpu_ms = step_ms(model, x, torch.device("cpu"), args.steps)
        dev = []
        for b in batches:
            xb = x.repeat((b + x.shape[0] - 1) // x.shape[0], 1, 1)[:b]
            dev.append(step_ms(model, xb, device, args.steps))
        ratio = cpu_ms / dev[batches.index(32)] if 32 in batches else float("nan")
        cols = " ".join(f"{d:11.1f}" for d in dev)
        print(f"{path:42s} {f'{x.shape[1]}x{x.shape[2]}':>8s} {rel:9.1e} {agree:10.0%} {cpu_ms:10.1f} {cols} {ratio:6.1f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
