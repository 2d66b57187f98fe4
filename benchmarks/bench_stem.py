#!/usr/bin/env python
"""Where a training step goes: the convolutional stem against the rest, per recipe.

For each recipe file it builds the recipe's model (model, preset, config and features as the recipe says)
and times, on random features of the recipe's training crop (whole clips when it has none), batch 32:

* a training step: forward, soft cross-entropy, backward and AdamW, under the engine's autocast rule
  (bf16 on CPUs with native bf16);
* the conv stem alone (``models.stems.ConvTokenizer`` or the ViT's ``ConvPatchEmbed``): forward and
  backward on the input it receives in that step.

It prints the median milliseconds of each, the stem's share of the step, and each step relative to the
first recipe of the same model (the ``x`` column: how many times faster). The data pipeline is not timed
(``benchmarks/bench_train.py --recipes`` times whole epochs). Run it on an idle machine.

    python benchmarks/bench_stem.py recipes/liquid_s4_esc50_long.yaml recipes/liquid_s4_esc50_mel64.yaml \\
        recipes/vjepa2_bf16_long.yaml recipes/vjepa2_bf16_mel64.yaml [--threads 2] [--steps 8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import models  # noqa: E402
from models.stems import ConvTokenizer  # noqa: E402
from models.vjepa2 import ConvPatchEmbed  # noqa: E402
from training.engine import _soft_cross_entropy, amp_dtype, autocast, build_optimizer, crop_frames_for  # noqa: E402
from training.options import OptionError, check_model, feature_config, load_recipe  # noqa: E402

STEMS = (ConvTokenizer, ConvPatchEmbed)
BATCH = 32


def recipe_model(path: str):
    """``(model name, model, [B, T, n_mels] input)`` of a recipe's training step."""
    r = load_recipe(path)
    name = r.get("model")
    if not name:
        raise OptionError(f"{path}: the recipe names no model")
    feat = feature_config(None, r.get("feature"))
    config = check_model(name, dict(r.get("config") or {}), r.get("preset"), n_mels=feat.n_mels, n_frames=feat.n_frames)
    model = models.place(models.build_model(name, num_classes=50, n_mels=feat.n_mels, n_frames=feat.n_frames,
                                            preset=r.get("preset"), **config), "cpu")
    crop = (r.get("train") or {}).get("crop")
    frames = min(feat.n_frames, crop_frames_for(crop, feat)) if crop else feat.n_frames
    return name, model, torch.randn(BATCH, frames, feat.n_mels)


def build_recipes(paths, threads: int) -> list | None:
    """``[(path, model name, model, input)]`` per recipe, with the thread count set and the seed fixed;
    ``None`` after a one-line error on stderr."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    try:
        return [(path, *recipe_model(path)) for path in paths]
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def median_ms(fn, steps: int, warmup: int = 2) -> float:
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def training_step(model, x, device=torch.device("cpu")):
    """A closure running one training step of ``model`` on ``x`` (both already on ``device``): forward under
    the engine's autocast rule, soft cross-entropy against random targets, backward, AdamW; it waits for
    the device, so that wall-clock timing of it is honest."""
    dtype = amp_dtype(device)
    opt = build_optimizer(model, 1e-3, 0.05)
    target = torch.softmax(torch.randn(x.shape[0], 50), -1).to(device)
    model.train()

    def step():
        with autocast(device, dtype):
            out = model(x)
        loss = _soft_cross_entropy(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def time_recipe(model, x, steps: int) -> tuple[float, float | None]:
    """(ms per training step, ms per stem forward + backward or None without a conv stem)."""
    dtype = amp_dtype(torch.device("cpu"))
    stem = next((m for m in model.modules() if isinstance(m, STEMS)), None)
    stem_in = []
    hook = stem.register_forward_pre_hook(lambda _m, args: stem_in.append(args[0].detach())) if stem else None
    step_ms = median_ms(training_step(model, x), steps)
    if stem is None:
        return step_ms, None
    hook.remove()
    inp = stem_in[-1]

    def stem_step():
        with autocast(torch.device("cpu"), dtype):
            out = stem(inp)
        out.float().sum().backward()

    return step_ms, median_ms(stem_step, steps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="+", metavar="RECIPE")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="timed steps per recipe (median)")
    args = p.parse_args(argv)
    if args.threads < 1 or args.steps < 1:
        print("error: --threads and --steps must be >= 1", file=sys.stderr)
        return 2
    built = build_recipes(args.recipes, args.threads)
    if built is None:
        return 2
    print(f"torch {torch.__version__}, threads {args.threads}, batch {BATCH}, autocast {amp_dtype(torch.device('cpu'))}")
    print(f"{'recipe':42s} {'input':>12s} {'step ms':>8s} {'stem ms':>8s} {'stem share':>10s} {'x':>6s}")
    first: dict[str, float] = {}
    for path, name, model, x in built:
        step_ms, stem_ms = time_recipe(model, x, args.steps)
        base = first.setdefault(name, step_ms)
        share = f"{stem_ms / step_ms:10.0%}" if stem_ms is not None else f"{'-':>10s}"
        stem = f"{stem_ms:8.1f}" if stem_ms is not None else f"{'-':>8s}"
        print(f"{path:42s} {f'{x.shape[1]}x{x.shape[2]}':>12s} {step_ms:8.1f} {stem} {share} {base / step_ms:6.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
