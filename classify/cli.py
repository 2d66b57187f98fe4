"""Classify audio with any checkpoint of this toolkit, evaluate a checkpoint on any labelled data, stream audio.

Examples
--------
    python inference.py dog.wav recordings/                # files and folders (recursive)
    python inference.py --top-k 3 --json clip.flac         # JSON Lines, one object per file
    python inference.py --checkpoint mamba clip.wav        # shipped checkpoint by short name
    python inference.py --checkpoint runs/cnn long_recording.wav --window 5 --hop 2.5
    python inference.py --evaluate --data-dir ../shared/data/ESC-50 --fold 5
    python inference.py --evaluate --dataset folder --data-dir ../shared/data/drums --split test
    python inference.py --evaluate --checkpoint runs/drums --dataset folder --data-dir other_kit \\
        --split all --classes kick,snare,hihat               # another dataset, shared classes
    arecord -f S16_LE -r 16000 -c 1 | python inference.py --stream --stream-rate 16000
    python inference.py --mic                              # needs: pip install sounddevice
    python inference.py --checkpoint runs/drums loop.wav   # drum checkpoint: one line per hit, "0.512 s  snare  0.93"
    python inference.py --checkpoint runs/drums loop.wav --plot loop.png   # timeline picture of the hits

Audio: any file soundfile reads (wav, flac, ogg, opus, mp3, aiff, ...), any sample rate (libsoxr
resampling), any number of channels. Each file is featurised exactly as in training (the
checkpoint's feature settings and normalisation statistics): resampled, mixed to mono, padded /
cropped to the training clip duration (from the first onset for onset-aligned checkpoints such as
the drum presets) -- the same probabilities as --evaluate gives for the same file. For a
clip-trained checkpoint, a file longer than the window (default: the clip duration) is read block
by block and classified with sliding windows (``--window``, ``--hop``): one prediction per window
plus their mean; at most ``--batch-size`` windows are held at once. With an onset-aligned (drum)
checkpoint every hit of a file or stream is detected (classify/onsets.py) and classified from
exactly the crop training takes from a one-shot: one line per hit with its time, printed as soon as
the hit's crop is complete (``--per-file``: one crop per file at its first onset instead).

Checkpoint: ``--checkpoint`` takes a ``.safetensors`` file, a run directory (its
``best.safetensors``) or a shipped name (``mamba`` or ``mamba_esc50`` ->
``checkpoints/mamba_esc50.safetensors``). By default the shipped ESC-50 checkpoint with the best
*validation* accuracy is used. Checkpoints never execute code when loaded (no pickle), and their
metadata is bounds-checked before anything is allocated.

Exit codes
----------
    0  every input was classified (or the evaluation / stream finished)
    1  at least one input failed (one line on stderr for each: file and reason); the other inputs
       were still classified. Also when no input at all could be classified.
    2  nothing was attempted: bad arguments, no / unreadable / tampered checkpoint, dataset not found
  130  interrupted (Ctrl-C)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

import audio_utils as au
from classify.evaluate import finite, format_evaluation, run_evaluation
from classify.onsets import OnsetParams, classify_hits, onset_params, print_hits, stream_hits
from classify.predictor import CHECKPOINT_DIR, Predictor, resolve_checkpoint
from classify.sources import (FileResult, ModelError, UsageError, check_window, classify_files, display, err,
                              expand_inputs, limit_samples, non_finite_message, one_line, read_microphone, read_pcm,
                              stream_windows)
from classify.timeline import plot_timeline
from training.checkpoint import CheckpointError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
def top_k(probs: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in order]


def _r(x: float) -> float:
    return round(float(x), 6)


def decision(pred: Predictor, probs: np.ndarray) -> dict:
    score, thr = float(probs[1]), pred.task["threshold"]
    return {"positive_class": pred.task["positive_class"], "score": _r(score), "threshold": _r(thr),
            "decision": "positive" if score >= thr else "negative"}


def window_record(pred: Predictor, start: float, end: float, probs: np.ndarray, k: int) -> dict:
    rec = {"start_s": _r(start), "end_s": _r(end)}
    rec.update(decision(pred, probs) if pred.binary else
               {"top": [{"label": n, "prob": _r(p)} for n, p in top_k(probs, pred.class_names, k)]})
    return rec


def _decision_text(d: dict) -> str:
    op = ">=" if d["decision"] == "positive" else "<"
    label = d["positive_class"] if d["decision"] == "positive" else f"not {d['positive_class']}"
    return f"{d['decision']}: {label}  (score {d['score']:.3f} {op} threshold {d['threshold']:.3f})"


class Printer:
    """Text or JSON Lines output of per-file results, and the one-line error messages."""

    def __init__(self, pred: Predictor, k: int, as_json: bool, window: float | None, hop: float | None, out=None):
        self.pred, self.k, self.json, self.window, self.hop = pred, max(1, min(k, pred.num_classes)), as_json, window, hop
        self.out = out or sys.stdout
        self.ok = self.failed = 0

    def __call__(self, res: FileResult) -> None:
        if res.error is not None:
            self.failed += 1
            err(f"error: {res.error}")
            if self.json:
                print(json.dumps({"file": str(res.path), "error": res.error}), file=self.out, flush=True)
            return
        self.ok += 1
        pred, probs = self.pred, res.mean_probs
        window = self.window or pred.cfg.duration
        ends = [min(s + window, res.duration) for s in res.starts]
        if self.json:
            rec = {"file": str(res.path), "checkpoint": str(pred.path), "duration_s": _r(res.duration),
                   "n_windows": len(res.starts)}
            if pred.binary:
                rec.update(decision(pred, probs))
            else:
                rec["top"] = [{"label": n, "prob": _r(p)} for n, p in top_k(probs, pred.class_names, self.k)]
            if len(res.starts) > 1:
                rec["aggregate"] = "mean of window probabilities"
                rec["windows"] = [window_record(pred, s, e, p, self.k) for s, e, p in zip(res.starts, ends, res.probs)]
            print(json.dumps(rec), file=self.out, flush=True)
            return
        lines = []
        name = display(res.path)
        if len(res.starts) == 1:
            head = f"{name}  [{res.duration:.2f} s]"
        else:
            head = (f"{name}  [{res.duration:.2f} s, {len(res.starts)} windows of {window:g} s "
                    f"every {self.hop:g} s]")
            for s, e, p in zip(res.starts, ends, res.probs):
                if pred.binary:
                    d = decision(pred, p)
                    lines.append(f"  {s:9.2f} - {e:9.2f} s   {d['decision']} ({d['score']:.3f})")
                else:
                    (n, q), = top_k(p, pred.class_names, 1)
                    lines.append(f"  {s:9.2f} - {e:9.2f} s   {n} {q:.3f}")
            lines.append("  mean over windows:")
        if pred.binary:
            text = _decision_text(decision(pred, probs))
            if len(res.starts) > 1:
                lines.append(f"    {text}")
            else:
                head = f"{head}  {text}"
        else:
            lines.extend(f"    {q:.3f}  {n}" for n, q in top_k(probs, pred.class_names, self.k))
        print("\n".join([head] + lines), file=self.out, flush=True)


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------
def run_stream(pred: Predictor, chunks: Iterable[np.ndarray], rate: int, window: float, hop: float,
               k: int, as_json: bool, source: str = "stdin", out=None) -> int:
    out = out or sys.stdout
    n_ok = n_bad = 0
    k = max(1, min(k, pred.num_classes))
    for start, block in stream_windows(chunks, rate, window, hop):
        end = start + len(block) / rate
        if not np.isfinite(block).all():
            n_bad += 1
            err(f"error: {source}: window {start:.2f}-{end:.2f} s: audio contains NaN/Inf samples")
            continue
        wave = pred.prepare(au.resample(torch.tensor(block, dtype=torch.float32), rate, pred.sample_rate))
        probs = pred.predict(wave[None])[0]
        if not np.isfinite(probs).all():
            n_bad += 1
            err(f"error: {non_finite_message(source, start, wave)}")
            continue
        n_ok += 1
        if as_json:
            print(json.dumps(window_record(pred, start, end, probs, k)), file=out, flush=True)
        elif pred.binary:
            print(f"{start:9.2f} - {end:9.2f} s   {_decision_text(decision(pred, probs))}", file=out, flush=True)
        else:
            (n, q), = top_k(probs, pred.class_names, 1)
            print(f"{start:9.2f} - {end:9.2f} s   {n} {q:.3f}", file=out, flush=True)
    if n_ok == 0 and n_bad == 0:
        err(f"error: {source}: no audio received")
        return EXIT_FAILED
    return EXIT_OK if n_bad == 0 else EXIT_FAILED


# --------------------------------------------------------------------------------------------
# Drum hits (onset-aligned checkpoints): one line per detected hit
# --------------------------------------------------------------------------------------------
def hit_kwargs(pred: Predictor, params: OnsetParams | None = None) -> dict:
    """How an onset checkpoint's hits are found (``params``: the detector's settings) and cropped:
    exactly as training crops a one-shot."""
    return dict(predict_segment=pred.predict_waveform, crop_seconds=pred.cfg.duration,
                pre_ms=pred.cfg.onset_pre_ms, class_names=pred.class_names, params=params)


def run_hits(pred: Predictor, paths, k: int, as_json: bool, plot: str | None, out=None,
             params: OnsetParams | None = None) -> int:
    """Every hit of every file: ``0.512 s  snare  0.93`` (or one JSON object per hit). A one-shot file
    is one hit, scored exactly as ``--evaluate`` scores it."""
    out = out or sys.stdout
    skipped: list = []
    n_ok = n_bad = 0
    for path, problem in expand_inputs(paths, skipped):
        try:
            if problem:
                raise au.AudioError(problem)
            wave = au.load_audio(path, pred.sample_rate)
        except (au.AudioError, OSError) as exc:
            n_bad += 1
            err(f"error: {display(str(exc))}")
            continue
        if not as_json:
            print(f"{display(path)}  [{len(wave) / pred.sample_rate:.2f} s]", file=out, flush=True)
        hits = print_hits(classify_hits(wave, pred.sample_rate, **hit_kwargs(pred, params)), out=out, as_json=as_json,
                          class_names=pred.class_names, top_k=k, source=str(path))
        if not hits:
            err(f"warning: {display(path)}: no hit detected")
        if plot:
            plot_timeline(plot, wave.numpy(), pred.sample_rate, hits=hits, title=display(path))
        n_ok += 1
    for path, why in skipped:
        err(f"warning: skipped {display(path)}: {why}")
    return EXIT_OK if n_bad == 0 and n_ok > 0 else EXIT_FAILED


def plot_windows(pred: Predictor, res: FileResult, window: float, path: str) -> None:
    """The timeline picture of a clip checkpoint's file: its windows and their top labels."""
    wave = au.load_audio(res.path, pred.sample_rate).numpy()
    wins = []
    for start, probs in zip(res.starts, res.probs):
        (name, prob), = top_k(probs, pred.class_names, 1)
        wins.append((start, min(start + window, res.duration), name, prob))
    plot_timeline(path, wave, pred.sample_rate, windows=wins, title=display(res.path))


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):          # one line, exit 2 (argparse prints the usage block too)
        err(f"error: {message} (see --help)")
        raise SystemExit(EXIT_USAGE)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fold numbers like 5 or 4,5, got '{text}'") from None


def _positive(typ):
    def parse(text: str):
        try:
            v = typ(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="audio files and/or directories (searched recursively)")
    c = p.add_argument_group("checkpoint and device")
    c.add_argument("--checkpoint", help="a .safetensors file, a run directory, or a shipped name such as mamba "
                   f"(default: the shipped ESC-50 checkpoint with the best validation accuracy in {CHECKPOINT_DIR})")
    c.add_argument("--checkpoint-dir", default=str(CHECKPOINT_DIR), help="where the shipped checkpoints are")
    c.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    c.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA (default: as in training)")
    c.add_argument("--threads", type=_positive(int), help="torch CPU threads")
    c.add_argument("--batch-size", type=_positive(int), help="windows per forward pass "
                   "(default 32; --evaluate: the training run's eval batch size)")
    o = p.add_argument_group("output")
    o.add_argument("--top-k", type=_positive(int), default=5, help="classes shown per file (default 5)")
    o.add_argument("--json", action="store_true", help="machine-readable output: one JSON object per file "
                   "(JSON Lines; failed files as {\"file\", \"error\"}), per stream window, or per evaluation")
    o.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    o.add_argument("--plot", metavar="FILE.png", help="timeline picture of the one input file: waveform and "
                   "spectrogram with its hits (onset checkpoints) or window labels (clip checkpoints)")
    o.add_argument("--per-file", action="store_true", help="onset (drum) checkpoints: one crop per file at its "
                   "first onset, as --evaluate scores it, instead of one line per detected hit")
    o.add_argument("--onset", metavar="KEY=VALUE", action="append", help="onset (drum) checkpoints: an onset "
                   "detector setting (classify.onsets.OnsetParams, e.g. threshold=2.5), repeatable")
    w = p.add_argument_group("long audio (clip-trained checkpoints)")
    w.add_argument("--window", type=_positive(float), help="window length in seconds for files longer than it "
                   "(default and maximum: the checkpoint's clip duration; at least 0.01)")
    w.add_argument("--hop", type=_positive(float), help="seconds between window starts (default: window / 2; "
                   "at least one sample)")
    s = p.add_argument_group("streaming")
    s.add_argument("--stream", action="store_true", help="classify raw PCM read from stdin, one line per window")
    s.add_argument("--stream-format", choices=["s16le", "f32le"], default="s16le")
    s.add_argument("--stream-rate", type=_positive(int), help="stdin / microphone sample rate "
                   "(default: the checkpoint's)")
    s.add_argument("--stream-channels", type=_positive(int), default=1, help="interleaved channels (default 1)")
    s.add_argument("--mic", action="store_true", help="classify the default microphone (optional package sounddevice)")
    s.add_argument("--max-seconds", type=_positive(float), help="stop streaming after this much audio")
    e = p.add_argument_group("evaluation (docs/inference.md)")
    e.add_argument("--evaluate", action="store_true", help="accuracy, macro-F1, per-class accuracy; confusion "
                   "matrix and per-clip predictions to files (binary checkpoints: precision, recall, F1, ROC-AUC)")
    e.add_argument("--dataset", choices=["esc50", "folder"], help="default: the checkpoint's training dataset")
    e.add_argument("--data-dir", help="dataset root (default: the checkpoint's, then $ESC50_DIR / data/ESC-50)")
    e.add_argument("--fold", type=_int_list, help="ESC-50 fold(s) (default: the checkpoint's test folds, 5); "
                   "only these are decoded")
    e.add_argument("--split", choices=["train", "val", "test", "all"], default="test",
                   help="folder dataset: a split of the checkpoint's (or --split-file's) split, or all files")
    e.add_argument("--split-seed", type=int, help="folder dataset split seed (default: the checkpoint's)")
    e.add_argument("--split-file", help="CSV with columns path,split (train/val/test) giving the split")
    e.add_argument("--group-pattern", metavar="REGEX", help="regex removed from file stems to name each file's "
                   "group (speaker, machine); a group stays within one split")
    e.add_argument("--group-scope", choices=["class", "dataset"], help="groups within each class folder "
                   "(default) or across the whole dataset")
    e.add_argument("--classes", metavar="LIST", help="the data's classes to score, each mapped to the checkpoint "
                   "class of the same name or NAME=CHECKPOINT_CLASS (e.g. kick,snare,hh=hihat)")
    e.add_argument("--cache-dir", help="feature cache directory (default: $AUDIO_CACHE_DIR or data/cache)")
    e.add_argument("--out-dir", help="where metrics.json, confusion_matrix.csv/.png, per_class_accuracy.csv, "
                   "predictions.csv go (default: eval_<checkpoint>_<fold or split>)")
    return p


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def _run(args) -> int:
    modes = sum(map(bool, (args.paths, args.stream, args.mic, args.evaluate)))
    if modes == 0:
        raise UsageError("nothing to do: give audio files or directories, --stream, --mic or --evaluate (see --help)")
    if modes > 1:
        raise UsageError("give either audio paths, --stream, --mic or --evaluate, not several")
    if args.threads:
        torch.set_num_threads(args.threads)
    pred = Predictor(resolve_checkpoint(args.checkpoint, args.checkpoint_dir), args.device,
                     amp=False if args.no_amp else None)
    if not args.json:
        err(f"checkpoint: {pred.describe(width=100 - len('checkpoint: '))}")
    if args.evaluate:
        res, _ = run_evaluation(pred, args)
        print(json.dumps(finite(res)) if args.json else format_evaluation(res))
        return EXIT_OK
    rate = (args.stream_rate or pred.sample_rate) if (args.stream or args.mic) else pred.sample_rate
    if pred.cfg.onset_align and args.window and not (args.stream or args.mic):
        raise UsageError("--window: this checkpoint crops every file once at its first onset, as in training; "
                         "sliding windows are for clip-trained checkpoints")
    hits = pred.cfg.onset_align and not args.per_file
    if args.onset and not hits:
        raise UsageError("--onset: only for hit detection (an onset-aligned checkpoint, without --per-file)")
    params = onset_params(args.onset)
    if args.plot and (args.stream or args.mic or len(args.paths) != 1 or Path(args.paths[0]).is_dir()):
        raise UsageError("--plot draws one file: give exactly one audio file")
    if hits and not (args.stream or args.mic):
        return run_hits(pred, args.paths, args.top_k, args.json, args.plot, params=params)
    window = args.window or pred.cfg.duration
    hop = args.hop or window / 2
    check_window(window, hop, rate, pred.cfg.duration)
    if args.stream or args.mic:
        if hits:   # each hit is printed as soon as its crop is complete; 10-ms chunks
            hop = 0.01
        frames = max(1, int(round(hop * rate)))
        if args.mic:
            chunks = read_microphone(rate, args.stream_channels, frames, args.max_seconds)
            source = "microphone"
        else:
            chunks = read_pcm(sys.stdin.buffer, args.stream_format, args.stream_channels, frames)
            if args.max_seconds:
                chunks = limit_samples(chunks, int(args.max_seconds * rate))
            source = "stdin"
        if hits:
            done = print_hits(stream_hits(chunks, rate, model_rate=pred.sample_rate, **hit_kwargs(pred, params)),
                              as_json=args.json, class_names=pred.class_names, top_k=args.top_k, source=source)
            if not done:
                err(f"warning: {source}: no hit detected")
            return EXIT_OK
        return run_stream(pred, chunks, rate, window, hop, args.top_k, args.json, source)
    file_window = None if pred.cfg.onset_align else window
    printer = Printer(pred, args.top_k, args.json, window, hop)
    skipped: list = []
    results = classify_files(pred, args.paths, file_window, hop, args.batch_size or 32, emit=printer, skipped=skipped)
    if args.plot and results and results[0].error is None:
        plot_windows(pred, results[0], window, args.plot)
    for path, why in skipped:
        err(f"warning: skipped {display(path)}: {why}")
    if printer.failed:
        err(f"{printer.ok} classified, {printer.failed} failed")
    return EXIT_OK if printer.failed == 0 and printer.ok > 0 else EXIT_FAILED


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except (UsageError, CheckpointError, ModelError, au.AudioError, FileNotFoundError, ValueError) as exc:
        err(f"error: {display(str(exc))}")
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user
        if args.debug:
            raise
        err(f"error: {type(exc).__name__}: {one_line(exc, 300)} (--debug shows details)")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
