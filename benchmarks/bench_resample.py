#!/usr/bin/env python
"""Time, peak memory and accuracy of ``audio_utils.resample`` (libsoxr) for awkward sample rates.

    nice -n 19 python benchmarks/bench_resample.py [--seconds 1] [--target 44100] [--torchaudio 48000,96000,8000]

Each case runs in a fresh process (time: best of 3 calls; peak resident memory = ``VmHWM`` of
that process, which includes importing torch and torchaudio: the "import only" row). Accuracy:
a 997-Hz sine at the source rate, resampled, against the exact sine at the target rate (10-ms
edges excluded). ``--torchaudio RATES`` adds torchaudio's sinc resampler (the previous
implementation) for those rates, one process each with a 120-s limit (issue 14 reports GBs and
tens of seconds for the odd rates, so they are opt-in: ``--torchaudio all``).
Output: printed and written to results/bench_resample.txt (unless --no-save).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RATES = (39063, 11127, 22051, 8000, 96000, 48000)

CASE = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
impl, sr, target, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
import audio_utils, torchaudio  # the baseline includes the imports
out = {}
if impl != "none":
    x = np.sin(2 * np.pi * 997.0 * np.arange(int(seconds * sr)) / sr).astype(np.float32)
    import audio_utils as au, torchaudio
    times = []
    for _ in range(3):  # the best of 3 (the machine may be shared)
        t = time.perf_counter()
        if impl == "soxr":
            y = au.resample(torch.from_numpy(x), sr, target)
        else:
            y = torchaudio.functional.resample(torch.from_numpy(x), sr, target)
        times.append(time.perf_counter() - t)
    out["seconds"] = min(times)
    y = y.numpy()
    ref = np.sin(2 * np.pi * 997.0 * np.arange(len(y)) / target)
    e = int(0.01 * target)
    out["max_err"] = float(np.abs(y[e:-e] - ref[e:-e]).max())
try:  # VmHWM: the peak of this process (ru_maxrss would include the parent's, it survives execve)
    import re
    out["peak"] = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
except OSError:
    out["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(out))
"""


def run_case(impl: str, sr: int, target: int, seconds: float, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run([sys.executable, "-c", CASE, impl, str(sr), str(target), str(seconds)],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": last[:80]}
    return json.loads(proc.stdout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=1.0, help="length of the test signal")
    p.add_argument("--target", type=int, default=44100)
    p.add_argument("--torchaudio", default="", metavar="RATES",
                   help="also time torchaudio's resampler for these source rates, e.g. 48000,96000 "
                        "('all': every rate, including the odd ones that issue 14 reports as needing GBs)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    gb = 1 << 30
    base = run_case("none", 0, 0, 0, 120)
    lines = [f"resample {args.seconds:g} s of audio to {args.target} Hz, one thread, one fresh process per case",
             f"import only: peak {base['peak'] / gb:.2f} GB",
             f"{'impl':10s} {'rate':>7s} {'seconds':>9s} {'peak GB':>8s} {'max |err|':>10s}"]
    print("\n".join(lines), flush=True)
    ta_rates = RATES if args.torchaudio == "all" else tuple(int(r) for r in args.torchaudio.split(",") if r)
    results = {}
    for impl, rates in (("soxr", RATES), ("torchaudio", ta_rates)):
        for sr in rates:
            r = run_case(impl, sr, args.target, args.seconds, 120)
            results[(impl, sr)] = r
            if "error" in r:
                line = f"{impl:10s} {sr:7d}  {r['error']}"
            else:
                line = f"{impl:10s} {sr:7d} {r['seconds']:9.4f} {r['peak'] / gb:8.2f} {r['max_err']:10.2e}"
            lines.append(line)
            print(line, flush=True)
    if args.torchaudio:
        lines.append("ratios torchaudio / soxr (time, peak memory):")
        for sr in ta_rates:
            a, b = results[("torchaudio", sr)], results[("soxr", sr)]
            if "error" not in a and "error" not in b:
                lines.append(f"  {sr:7d}: time x{a['seconds'] / max(b['seconds'], 1e-9):.2f}, "
                             f"peak x{a['peak'] / b['peak']:.1f}")
                print(lines[-1], flush=True)
    if not args.no_save:
        (REPO / "results").mkdir(exist_ok=True)
        (REPO / "results" / "bench_resample.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
