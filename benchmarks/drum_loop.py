#!/usr/bin/env python
"""Every hit of a drum loop: onset recall / precision, per-hit accuracy and the onset-to-label delay.

Loops are assembled from one-shot files of class-per-folder drum sets: ``--hits`` files drawn at random
(seeded), the first at 0.3 s, then one every 0.25-0.5 s (uniform), each at its file's own level, in two
variants: choked (each hit stops, with a 5-ms fade, where the next starts) and ringing (tails overlap the
next hits). For every loop the onset-aligned checkpoint classifies each detected hit
(:func:`classify.onsets.classify_hits`) and the results are compared with

* the placed times: a detection within ``--tolerance-ms`` (10 ms) of a hit's onset is a match
  (one-to-one); the onset is where the file was placed plus the file's own onset (the time the hit
  path reports for the file alone), and the error to the bare placement time is reported too; the issue's done-when (one line per hit, within 10 ms of the placement, the label
  of the file alone) is counted per loop against both times;
* the label of classifying each hit's file alone (the one-shot evaluation path): per-hit agreement;
* the hit's class folder: per-hit accuracy in the loop and alone.

Streaming: one loop per set is also fed in ``--chunk``-sample chunks through
:func:`classify.onsets.stream_hits`; its hits must equal the offline ones, and the delay from a hit's
onset to its label is measured as (stream position when the hit's crop was complete - onset) + the
measured compute time of its classification.

    python benchmarks/drum_loop.py --checkpoint runs/drums_cnn/best.safetensors \\
        --data-dir ../shared/data/drums --data-dir /path/to/another/drum/set --out results/drum_loop.txt
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import audio_utils as au  # noqa: E402
from classify.onsets import OnsetDetector, classify_hits, format_hit, onset_params, stream_hits  # noqa: E402
from training.checkpoint import atomic_write  # noqa: E402


def load_predictor(path: str):
    """The checkpoint's predictor and its one-waveform classifier."""
    from classify.predictor import Predictor
    pred = Predictor(path, "cpu")
    return pred, pred.predict_waveform


def build_loop(files, waves, leads, rng, n_hits: int, sr: int, choke: bool):
    """``choke``: each hit stops (5-ms fade) where the next one starts, as on a one-voice drum machine;
    otherwise tails ring on under the next hits."""
    pick = rng.choice(len(files), n_hits, replace=len(files) < n_hits)
    t, placed = 0.3, []
    for _ in pick:
        placed.append(int(round(t * sr)))
        t += rng.uniform(0.25, 0.5)
    wave = np.zeros(placed[-1] + int(1.0 * sr), np.float32)
    fade = int(0.005 * sr)
    for k, (i, n) in enumerate(zip(pick, placed)):
        stop = placed[k + 1] if choke and k + 1 < len(placed) else len(wave)
        x = waves[i][: stop - n].copy()
        if choke and len(x) == stop - n and len(x) > fade:
            x[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
        wave[n:n + len(x)] += x
    onsets = [n + leads[i] for i, n in zip(pick, placed)]
    return wave, pick, placed, onsets


def describe_loop(hits, m, placed, files, alone, sr: int) -> list[str]:
    """One line per placed hit (its detection as the CLI prints it, or "(missed)") and per extra detection."""
    out = []
    for i, (n, f) in enumerate(zip(placed, files)):
        got = format_hit(hits[m[i]], 6) if m[i] is not None else "(missed)"
        out.append(f"    {got:<24}  placed {n / sr:.3f} s  {Path(f).parent.name}/{Path(f).name}  alone: {alone[i]}")
    out.extend(f"    {format_hit(h, 6):<24}  (no hit placed there)" for j, h in enumerate(hits) if j not in set(m))
    return out


def match(detected: np.ndarray, truth: list[int], tol: int) -> list[int | None]:
    """One-to-one matching, nearest first: for each true hit the index of its detection or None."""
    pairs = sorted((abs(int(d) - t), j, i) for i, t in enumerate(truth) for j, d in enumerate(detected)
                   if abs(int(d) - t) <= tol)
    out: list[int | None] = [None] * len(truth)
    used = set()
    for _, j, i in pairs:
        if out[i] is None and j not in used:
            out[i] = j
            used.add(j)
    return out


def run_set(root: Path, pred, predict_waveform, args, lines: list[str], choke: bool, cache: dict) -> dict:
    sr = pred.cfg.sample_rate
    if root not in cache:
        files, labels, names = au.list_folder_dataset(root)
        known = [c in pred.class_names for c in names]
        keep = [k for k, y in enumerate(labels) if known[y]]
        files, labels = [files[k] for k in keep], [names[labels[k]] for k in keep]
        waves = [au.load_audio(f, sr).numpy() for f in files]
        alone = [pred.class_names[int(np.argmax(predict_waveform(torch.from_numpy(w))))] for w in waves]
        # each file alone through the hit path: its first hit's time is the file's own onset (by the same
        # rule as in a loop); a file without a hit falls back to find_onset
        alone_hits = [classify_hits(w, sr, predict_waveform, pred.cfg.duration, pred.cfg.onset_pre_ms,
                                    pred.class_names, params=args.params) for w in waves]
        leads = [int(round(hs[0].time_s * sr)) if hs else au.find_onset(torch.from_numpy(w), sr, pre_ms=0.0)
                 for hs, w in zip(alone_hits, waves)]
        cache[root] = files, labels, waves, leads, alone, alone_hits
    files, labels, waves, leads, alone, alone_hits = cache[root]
    if ("one-shot", root) not in cache:              # each file alone through the hit path: one hit, same answer
        one, diffs, same_label = 0, [], 0
        for w, a, hs in zip(waves, alone, alone_hits):
            one += len(hs) == 1
            if len(hs) == 1:
                diffs.append(float(np.abs(hs[0].probs - predict_waveform(torch.from_numpy(w))).max()))
                same_label += hs[0].label == a
        cache[("one-shot", root)] = (
            f"  one-shot files through the hit path: {one}/{len(waves)} give exactly one hit; of those, "
            f"{same_label} have the label of the file alone, max |probability difference| "
            f"{max(diffs) if diffs else float('nan'):.2e}")
    one_shot_line = cache[("one-shot", root)]
    crop, pre = pred.cfg.duration, pred.cfg.onset_pre_ms
    tol = int(round(args.tolerance_ms * 1e-3 * sr))
    rng = np.random.default_rng(args.seed)
    n_true = n_det = n_match = 0
    agree = correct_loop = correct_alone = loops_ok = loops_ok_onset = 0
    err_onset, err_placed, compute = [], [], []
    audio_s = 0.0
    for loop in range(args.loops):
        wave, pick, placed, onsets = build_loop(files, waves, leads, rng, args.hits, sr, choke)
        t0 = time.perf_counter()
        hits = classify_hits(wave, sr, predict_waveform, crop, pre, pred.class_names, params=args.params)
        compute.append(time.perf_counter() - t0)
        audio_s += len(wave) / sr
        det = np.array([int(round(h.time_s * sr)) for h in hits], dtype=np.int64)
        m = match(det, onsets, tol)
        mp = match(det, placed, tol)
        ok = len(hits) == len(placed) and all(j is not None and hits[j].label == alone[pick[i]] for i, j in enumerate(mp))
        loops_ok_onset += len(hits) == len(placed) and all(j is not None and hits[j].label == alone[pick[i]]
                                                            for i, j in enumerate(m))
        loops_ok += ok
        n_true += len(onsets)
        n_det += len(hits)
        for i, j in enumerate(m):
            if j is None:
                continue
            n_match += 1
            err_onset.append((det[j] - onsets[i]) / sr * 1000)
            err_placed.append((det[j] - placed[i]) / sr * 1000)
            agree += hits[j].label == alone[pick[i]]
            correct_loop += hits[j].label == labels[pick[i]]
            correct_alone += alone[pick[i]] == labels[pick[i]]
        if loop == 0 and args.plot and not cache.get("plotted"):
            from classify.timeline import plot_timeline
            plot_timeline(args.plot, wave, sr, hits=hits,
                          title=f"{root.name}: loop 0 ({'choked' if choke else 'tails ring on'})")
            cache["plotted"] = True
        if loop == 0 or (args.verbose and not ok):
            lines.append(f"  loop {loop} ({len(wave) / sr:.2f} s): detected hits, as the CLI prints them, with the truth"
                         f"{'' if ok else ' (fails the done-when)'}")
            lines.extend(describe_loop(hits, m, placed, [files[k] for k in pick], [alone[k] for k in pick], sr))
    # streaming: the first loop again, fed in small chunks
    rng = np.random.default_rng(args.seed)
    wave, _, _, _ = build_loop(files, waves, leads, rng, args.hits, sr, choke)
    offline = classify_hits(wave, sr, predict_waveform, crop, pre, pred.class_names, params=args.params)
    chunks = (wave[i:i + args.chunk] for i in range(0, len(wave), args.chunk))
    streamed = list(stream_hits(chunks, sr, predict_waveform, crop, pre, pred.class_names, params=args.params))
    same = [(h.time_s, h.label) for h in streamed] == [(h.time_s, h.label) for h in offline] and all(
        np.allclose(a.probs, b.probs, rtol=0, atol=1e-6) for a, b in zip(streamed, offline))
    # the last hit is completed by the end of the stream, not by its crop: leave it out of the delay
    delays = [(h.ready_s - h.time_s) + h.compute_s for h in streamed[:-1]]
    comp = [h.compute_s for h in streamed]
    det = OnsetDetector(sr, crop, pre)
    err_onset, err_placed = np.abs(err_onset), np.abs(err_placed)
    res = {
        "set": str(root), "files": len(files), "loops": args.loops, "hits": n_true, "detections": n_det,
        "recall": n_match / max(n_true, 1), "precision": n_match / max(n_det, 1),
        "agree_alone": agree / max(n_match, 1), "acc_loop": correct_loop / max(n_match, 1),
        "acc_alone": correct_alone / max(n_match, 1),
        "err_onset_ms_median": float(np.median(err_onset)) if len(err_onset) else float("nan"),
        "err_onset_ms_max": float(err_onset.max()) if len(err_onset) else float("nan"),
        "placed_within_tol": float(np.mean(err_placed <= args.tolerance_ms)) if len(err_placed) else float("nan"),
        "err_placed_ms_max": float(err_placed.max()) if len(err_placed) else float("nan"),
        "rtf": sum(compute) / audio_s, "loops_ok": loops_ok, "loops_ok_onset": loops_ok_onset, "stream_equal": same,
        "delay_ms_median": 1000 * statistics.median(delays) if delays else float("nan"),
        "delay_ms_max": 1000 * max(delays) if delays else float("nan"),
        "compute_ms_median": 1000 * statistics.median(comp) if comp else float("nan"),
        "latency_bound_ms": 1000 * det.latency_samples / sr,
    }
    lines[:0] = [
        f"{root}: {len(files)} one-shots of the checkpoint's classes, {args.loops} loops x {args.hits} hits, "
        + ("choked (each hit stops where the next starts)" if choke else "tails ringing on under the next hits"),
        f"  onsets within {args.tolerance_ms:g} ms: recall {res['recall']:.3f} ({n_match}/{n_true})  precision "
        f"{res['precision']:.3f} ({n_match}/{n_det})",
        f"  onset error |detected - file onset|: median {res['err_onset_ms_median']:.2f} ms, max "
        f"{res['err_onset_ms_max']:.2f} ms; within {args.tolerance_ms:g} ms of the placement time: "
        f"{res['placed_within_tol']:.3f} (max {res['err_placed_ms_max']:.2f} ms)",
        f"  per-hit labels (matched hits): same as the file alone {res['agree_alone']:.3f}; accuracy in the loop "
        f"{res['acc_loop']:.3f}, alone {res['acc_alone']:.3f}",
        f"  loops giving exactly one line per hit, each within {args.tolerance_ms:g} ms of where the hit was placed "
        f"and with the label of its file alone: {loops_ok}/{args.loops}",
        f"  the same with times within {args.tolerance_ms:g} ms of the hit's onset (placement + the time the hit path "
        f"reports for its file alone): {loops_ok_onset}/{args.loops}",
        one_shot_line,
        f"  offline compute: {res['rtf']:.4f} s per s of audio (detection + classification, "
        f"{torch.get_num_threads()} thread(s))",
        f"  stream ({args.chunk}-sample chunks = {1000 * args.chunk / sr:.1f} ms): hits identical to offline: {same}; "
        f"onset-to-label delay median {res['delay_ms_median']:.1f} ms, max {res['delay_ms_max']:.1f} ms "
        f"(crop {1000 * crop:.0f} ms - pre-roll {pre:g} ms + detector look-ahead + chunking + compute "
        f"{res['compute_ms_median']:.1f} ms median; bound without compute and chunking "
        f"{res['latency_bound_ms']:.1f} ms)",
    ]
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="an onset-aligned checkpoint (e.g. --feature-preset drums)")
    p.add_argument("--data-dir", action="append", required=True, help="class-per-folder drum set (repeatable)")
    p.add_argument("--loops", type=int, default=30)
    p.add_argument("--hits", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance-ms", type=float, default=10.0)
    p.add_argument("--chunk", type=int, default=256, help="stream chunk size in samples")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--onset", metavar="KEY=VALUE", action="append",
                   help="an onset detector setting (classify.onsets.OnsetParams), repeatable, as inference.py --onset")
    p.add_argument("--verbose", action="store_true", help="also list every loop that fails the done-when")
    p.add_argument("--out", help="also write the report here")
    p.add_argument("--plot", help="timeline picture (PNG) of the first loop of the first set")
    args = p.parse_args(argv)
    try:
        args.params = onset_params(args.onset)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    pred, predict_waveform = load_predictor(args.checkpoint)
    if not pred.cfg.onset_align:
        print(f"error: {args.checkpoint}: not an onset-aligned checkpoint (train with --feature-preset drums)",
              file=sys.stderr)
        return 2
    header = [f"# benchmarks/drum_loop.py {' '.join(argv if argv is not None else sys.argv[1:])}",
              f"checkpoint: {args.checkpoint} ({pred.meta.get('model_name')}, classes {', '.join(pred.class_names)}; "
              f"crop {pred.cfg.duration:g} s from {pred.cfg.onset_pre_ms:g} ms before the onset, "
              f"{pred.cfg.sample_rate} Hz)", f"torch threads: {torch.get_num_threads()}", ""]
    body, cache = [], {}
    for root in args.data_dir:
        for choke in (True, False):
            lines: list[str] = []
            run_set(Path(root), pred, predict_waveform, args, lines, choke, cache)
            body += lines + [""]
    text = "\n".join(header + body)
    print(text)
    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text + "\n"))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
