#!/usr/bin/env python
"""Inference benchmark: latency of one 5-s clip (batch 1) and throughput at batch 32, per model.

Everything goes through ``inference.Predictor``, the code path of ``inference.py``: a prepared 5-s
16-kHz waveform -> log-mel (STFT + mel filterbank) -> crop -> normalise -> model -> softmax. The
shipped checkpoint ``checkpoints/<model>_esc50.safetensors`` is used when present; otherwise the
model's default (CPU) configuration with random weights, saved to a temporary checkpoint (timing
does not depend on the weights). Models whose module does not import are skipped with a message.
Decoding a file is model-independent and is timed once, separately.

    python benchmarks/bench_inference.py [--threads 2] [--models cnn,mamba] [--batch 32] [--seconds 3]
    python benchmarks/bench_inference.py --compare-precision --threads 1

``--compare-precision``: batch-1 ``predict()`` wall time in fp32 and in bf16 autocast per model, the two
measured in alternating rounds (so that other load hits both alike), their ratio, and the precision
``inference.Predictor`` uses by default (``models.ModelSpec.cpu_bf16_inference``, set from this table).

Goal: <= 10 ms per clip (batch 1, 2 CPU cores, features included). Note that other processes on the
machine share the CPU: the load average is printed before and after. Like inference.py, the script
sets OMP_WAIT_POLICY=PASSIVE unless it is set; run it with OMP_WAIT_POLICY=ACTIVE to compare.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")    # as inference.py does (before torch loads OpenMP)

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

import audio_utils as au  # noqa: E402
import inference  # noqa: E402
import models  # noqa: E402
from training.checkpoint import save_checkpoint  # noqa: E402

GOAL_MS = 10.0


def timeit(fn, seconds: float, min_runs: int = 3, max_runs: int = 200, warmup: int = 2,
           cpu: list | None = None) -> list[float]:
    """Wall times (s) of ``fn()``: ``warmup`` untimed calls, then runs until ``seconds`` have passed.

    With ``cpu``, the process CPU time of each run (all threads) is appended to it: unlike wall
    time it hardly grows when other processes share the cores.
    """
    for _ in range(warmup):
        fn()
    times, t_end = [], time.perf_counter() + seconds
    while len(times) < min_runs or (time.perf_counter() < t_end and len(times) < max_runs):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return times


def predictor_for(name: str, ckpt_dir: Path, tmp: Path, amp: bool | None = None) -> tuple[inference.Predictor, str]:
    shipped = ckpt_dir / f"{name}_esc50.safetensors"
    if shipped.is_file():
        return inference.Predictor(shipped, "cpu", amp=amp), "shipped checkpoint"
    cfg = au.ESC50_FEATURES
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=50, n_mels=cfg.n_mels, n_frames=cfg.n_frames)
    meta = {"class_names": [f"class_{i}" for i in range(50)], "feature_config": cfg.to_dict(),
            "normalization": {"mean": [-6.0] * cfg.n_mels, "std": [4.0] * cfg.n_mels}}
    path = save_checkpoint(tmp / f"{name}.safetensors", model, meta)
    return inference.Predictor(path, "cpu", amp=amp), "default config, random weights"


def compare_precision(names: list[str], args, rounds: int = 8) -> None:
    from training.engine import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        print("this CPU has no native bf16: inference runs fp32 (nothing to compare)")
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch-1 predict() of a 5-s clip, "
          f"features included; medians over {rounds} alternating rounds of {args.seconds / rounds:.2f} s each")
    wave = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal(80_000)).astype(np.float32))
    print(f"{'model':<10} {'fp32 ms':>8} {'bf16 ms':>8} {'bf16/fp32':>10}  default at inference")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            try:
                preds = {amp: predictor_for(name, Path(args.checkpoint_dir), Path(tmp), amp=amp)[0]
                         for amp in (False, True)}
            except Exception as exc:  # noqa: BLE001 - a model whose module does not import is skipped
                print(f"{name}: skipped ({type(exc).__name__}: {str(exc).strip()[:120]})")
                continue
            one = preds[False].prepare(wave)[None]
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(rounds):
                for amp, pred in preds.items():
                    times[amp] += timeit(lambda: pred.predict(one), args.seconds / rounds / 2)
            fp32, bf16 = (statistics.median(times[a]) * 1000 for a in (False, True))
            default = "bf16" if models.get_spec(name).cpu_bf16_inference else "fp32"
            print(f"{name:<10} {fp32:>8.2f} {bf16:>8.2f} {bf16 / fp32:>9.2f}x  {default}", flush=True)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} CPUs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", help="comma-separated (default: all registered)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=3.0, help="time spent per measurement")
    p.add_argument("--checkpoint-dir", default=str(inference.CHECKPOINT_DIR))
    p.add_argument("--no-amp", action="store_true", help="fp32 even where the CPU has native bf16 "
                   "(default: the engine's rule, as inference.py)")
    p.add_argument("--compare-precision", action="store_true",
                   help="batch-1 latency in fp32 vs bf16 per model (alternating rounds) and the default choice")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models.split(",") if args.models else models.available()
    if args.compare_precision:
        return compare_precision(names, args)
    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, precision: "
          f"{'fp32 (--no-amp)' if args.no_amp else 'the engine rule (bf16 where the CPU has it natively)'}, "
          f"load average {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} (1 / 5 / 15 min)")
    rng = np.random.default_rng(0)
    wave = torch.from_numpy((0.1 * rng.standard_normal(80_000)).astype(np.float32))
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # decoding is model-independent: time it once per format
        x = (0.1 * rng.standard_normal(220_500)).astype(np.float32)
        sf.write(tmp / "clip44k.wav", np.stack([x, x], 1), 44100, subtype="PCM_16")
        sf.write(tmp / "clip16k.flac", x[:80_000], 16000, subtype="PCM_16")
        for f in ("clip16k.flac", "clip44k.wav"):
            t = statistics.median(timeit(lambda: au.load_audio(tmp / f, 16000), 1.0))
            print(f"decode + resample to 16 kHz mono, 5-s {f.split('.')[1]} ({f[4:7]}): {t * 1000:.2f} ms "
                  "(not included below)")
        for name in names:
            try:
                pred, source = predictor_for(name, Path(args.checkpoint_dir), tmp, amp=False if args.no_amp else None)
            except Exception as exc:  # noqa: BLE001 - a model still being written must not stop the rest
                skipped.append(f"{name}: skipped ({type(exc).__name__}: {str(exc).strip()[:120]})")
                print(skipped[-1], flush=True)
                continue
            clip = pred.prepare(wave)
            one = clip[None]
            batch = clip.repeat(args.batch, 1)
            with torch.inference_mode():
                feats = pred.features(one)
                t_feat = statistics.median(timeit(lambda: pred.features(one), args.seconds / 3))
                # the model part as inference runs it: crops flattened into the batch, the precision rule
                t_model = statistics.median(timeit(lambda: pred.logits_to_probs(feats), args.seconds / 3))
            cpu: list[float] = []
            lat = timeit(lambda: pred.predict(one), args.seconds, cpu=cpu)
            thr = timeit(lambda: pred.predict(batch), args.seconds, min_runs=2, warmup=1)
            ms = statistics.median(lat) * 1000
            per_clip_b = statistics.median(thr) * 1000 / args.batch
            rows.append((name, sum(q.numel() for q in pred.model.parameters()), t_feat * 1000, t_model * 1000,
                         ms, min(lat) * 1000, statistics.median(cpu) * 1000, ms / GOAL_MS,
                         1000 / per_clip_b, per_clip_b, per_clip_b / GOAL_MS, source))
            print(f"  measured {name} ({source})", flush=True)
    load1 = os.getloadavg()
    head = (f"{'model':<10} {'params':>9} {'feat ms':>8} {'model ms':>9} {'b1 p50 ms':>10} {'b1 min ms':>10} "
            f"{'b1 CPU ms':>10} {'p50/goal':>9} | {'b' + str(args.batch) + ' clips/s':>13} {'ms/clip':>8} "
            f"{'/ goal':>7}  weights")
    print()
    print(f"one 5-s clip, features included, {torch.get_num_threads()} threads; goal <= {GOAL_MS:g} ms per clip "
          "(ratio < 1 meets it)")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r[0]:<10} {r[1]:>9,} {r[2]:>8.2f} {r[3]:>9.2f} {r[4]:>10.2f} {r[5]:>10.2f} {r[6]:>10.2f} "
              f"{r[7]:>8.2f}x | {r[8]:>13.1f} {r[9]:>8.2f} {r[10]:>6.2f}x  {r[11]}")
    print("feat / model ms: medians of the two stages alone; b1 p50 / min: whole predict() wall time; "
          "b1 CPU ms: process CPU time of one predict() summed over threads")
    for s in skipped:
        print(s)
    print(f"load average after: {load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f} on {os.cpu_count()} CPUs "
          "(other processes shared the CPU if this exceeds the thread count)")


if __name__ == "__main__":
    main()
