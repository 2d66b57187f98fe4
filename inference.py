#!/usr/bin/env python
"""Classify audio with any checkpoint of this toolkit, evaluate a checkpoint on a fold, stream audio.

Examples
--------
    python inference.py dog.wav recordings/                # files and folders (recursive)
    python inference.py --top-k 3 --json clip.flac         # JSON Lines, one object per file
    python inference.py --checkpoint runs/cnn/best.safetensors long_recording.wav --window 5 --hop 2.5
    python inference.py --evaluate --data-dir ../shared/data/ESC-50 --fold 5
    python inference.py --evaluate --dataset folder --data-dir ../shared/data/drums --split test
    arecord -f S16_LE -r 16000 -c 1 | python inference.py --stream --stream-rate 16000
    python inference.py --mic                              # needs: pip install sounddevice

Audio: any file soundfile reads (wav, flac, ogg, mp3, aiff, ...), any sample rate, any number of
channels. Each clip is resampled, mixed to mono, padded and turned into normalised log-mels exactly
as in training (feature settings and normalisation statistics come from the checkpoint). A clip no
longer than the window (default: the checkpoint's clip duration, 5 s for ESC-50) gets one
prediction; a longer one is read block by block and classified with sliding windows (``--window``,
``--hop``): one prediction per window plus their mean. Memory stays bounded: at most
``--batch-size`` windows are held at once, whatever the length of the file.

Checkpoint: ``--checkpoint FILE`` (a ``.safetensors`` file, or a run directory holding
``best.safetensors``). By default the shipped ESC-50 checkpoint in ``checkpoints/`` with the best
*validation* accuracy is used. Checkpoints never execute code when loaded (no pickle).

Threads: torch uses all cores (``--threads`` to change). OpenMP threads wait passively unless
``OMP_WAIT_POLICY`` is set (``ACTIVE`` can be slightly faster on an otherwise idle machine).

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
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

if __name__ == "__main__":
    # OpenMP threads that spin while waiting burn the CPU another process needs, and on a busy
    # machine make every op wait for a descheduled thread (10-25x slower on a shared 2-core box).
    # Passive waiting may cost a little on an idle machine; OMP_WAIT_POLICY=ACTIVE restores spinning.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

import audio_utils as au
from inference_utils import (UsageError, evaluate_checkpoint, evaluation_dataset, finite, format_evaluation,
                             limit_samples, read_microphone, read_pcm, save_evaluation, stream_windows)
from inference_utils import err as _err
from training.checkpoint import CheckpointError, build_from_checkpoint, read_meta

REPO_ROOT = Path(__file__).resolve().parent
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"
# shipped ESC-50 checkpoints; on equal validation accuracy the earlier one wins
DEFAULT_CHECKPOINTS = ("liquid_s4_esc50.safetensors", "mamba_esc50.safetensors",
                       "vjepa2_esc50.safetensors", "cnn_esc50.safetensors")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def no_checkpoint_message(directory: Path) -> str:
    return (f"no checkpoint given and none found in {directory} (looked for {', '.join(DEFAULT_CHECKPOINTS)}). "
            "Train one and copy it there, e.g.: python train.py --model cnn --data-dir ../shared/data/ESC-50 "
            f"--epochs 40 --out runs/cnn_esc50 && cp runs/cnn_esc50/best.safetensors {directory}/cnn_esc50.safetensors"
            " ; or pass --checkpoint runs/<run>/best.safetensors")


def default_checkpoint(directory: str | os.PathLike = CHECKPOINT_DIR) -> Path:
    """The shipped ESC-50 checkpoint with the highest validation accuracy (never test accuracy)."""
    directory = Path(directory)
    present = [directory / n for n in DEFAULT_CHECKPOINTS if (directory / n).is_file()]
    if not present:
        raise UsageError(no_checkpoint_message(directory))
    scored = []
    for order, path in enumerate(present):
        try:
            meta = read_meta(path)
        except CheckpointError as exc:
            _err(f"warning: skipping {exc}")
            continue
        val = (meta.get("metrics") or {}).get("val_acc")
        val = float(val) if isinstance(val, (int, float)) and math.isfinite(val) else -1.0
        scored.append((val, -order, path))
    if not scored:
        raise CheckpointError(f"{directory}: none of the shipped checkpoints is readable "
                              f"({', '.join(p.name for p in present)})")
    return max(scored)[2]


def resolve_checkpoint(arg: str | None, directory: str | os.PathLike = CHECKPOINT_DIR) -> Path:
    if arg is None:
        return default_checkpoint(directory)
    path = Path(arg)
    if path.is_dir() and (path / "best.safetensors").is_file():
        return path / "best.safetensors"
    return path


class Predictor:
    """A checkpoint's model plus the exact feature pipeline it was trained with.

    ``predict(waves)`` takes prepared mono waveforms ``[B, num_samples]`` (see :meth:`prepare`) and
    returns class probabilities ``[B, classes]``; features are computed batch by batch.
    """

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto", amp: bool | None = None):
        from training.engine import resolve_device

        self.path = Path(checkpoint)
        try:
            self.device = resolve_device(device)
        except (RuntimeError, ValueError) as exc:
            raise UsageError(f"--device {device}: {exc}") from None
        model, meta = build_from_checkpoint(self.path, self.device)
        try:
            self.cfg = au.FeatureConfig.from_dict(meta["feature_config"])
            # printable names only: metadata must not be able to send terminal escape sequences
            self.class_names = ["".join(ch if ch.isprintable() else "?" for ch in str(c)) for c in meta["class_names"]]
            self.task = dict(meta.get("task") or {"type": "multiclass"})
            norm = meta.get("normalization")
            self.normalization = None
            if norm:
                mean = torch.as_tensor(norm["mean"], dtype=torch.float32)
                std = torch.as_tensor(norm["std"], dtype=torch.float32)
                if mean.shape != (self.cfg.n_mels,) or std.shape != (self.cfg.n_mels,) or not bool((std > 0).all()):
                    raise ValueError("normalisation statistics do not match the feature config")
                self.normalization = (mean, std)
            if self.cfg.sample_rate <= 0 or self.cfg.n_frames <= 0 or self.cfg.num_samples <= 0:
                raise ValueError("bad feature config")
            if self.task.get("type") == "binary":
                if len(self.class_names) != 2:
                    raise ValueError("a binary task needs exactly 2 classes")
                self.task.setdefault("positive_class", self.class_names[1])
                self.task["threshold"] = float(self.task.get("threshold", 0.5))
            self.logmel = au.LogMel(self.cfg).to(self.device)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{self.path}: invalid metadata ({type(exc).__name__}: {exc})") from None
        if self.normalization is None:
            _err(f"warning: {self.path}: no normalisation statistics in the checkpoint; features are not normalised")
        else:
            self.normalization = tuple(t.to(self.device) for t in self.normalization)
        self.model, self.meta = model, meta
        tc = meta.get("train_config") or {}
        self.amp = bool(tc.get("amp", True) if amp is None else amp) and self.device.type == "cuda"
        self.eval_batch_size = int(tc.get("eval_batch_size", 128) or 128)

    @property
    def binary(self) -> bool:
        return self.task.get("type") == "binary"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        val = (self.meta.get("metrics") or {}).get("val_acc")
        extra = f", val acc {val:.4f}" if isinstance(val, (int, float)) else ""
        kind = (f"binary: {self.task['positive_class']} vs rest" if self.binary
                else f"{self.num_classes} classes")
        return f"{self.path} ({self.meta.get('model_name')}, {kind}{extra})"

    def prepare(self, wave: torch.Tensor) -> torch.Tensor:
        """Pad / crop one mono waveform at the model's rate exactly as training does."""
        return au.prepare_waveform(wave, self.cfg)

    def features(self, waves: torch.Tensor) -> torch.Tensor:
        """Prepared waveforms ``[B, num_samples]`` -> normalised log-mels ``[B, n_frames, n_mels]``."""
        x = au.crop_frames(self.logmel(waves.to(self.device, torch.float32)), self.cfg.n_frames)
        if self.normalization is not None:
            mean, std = self.normalization
            x = (x - mean) / std
        return x

    @torch.inference_mode()
    def predict(self, waves: torch.Tensor) -> np.ndarray:
        x = self.features(waves)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(x)
        return torch.softmax(logits.float(), -1).cpu().numpy()


# --------------------------------------------------------------------------------------------
# Files -> windows -> batched predictions
# --------------------------------------------------------------------------------------------
def expand_inputs(items: Iterable[str | os.PathLike]) -> list[tuple[Path, str | None]]:
    """Files as given, directories expanded recursively to their audio files (hidden ones skipped).

    Returns ``(path, error)`` pairs; ``error`` is set for a directory without audio.
    """
    out: list[tuple[Path, str | None]] = []
    for item in items:
        p = Path(item)
        if not p.is_dir():
            out.append((p, None))      # missing / unreadable files are reported by the loader
            continue
        try:
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in au.AUDIO_EXTENSIONS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
        except OSError as exc:
            out.append((p, f"{p}: cannot list directory ({exc.strerror or exc})"))
            continue
        if not found:
            out.append((p, f"{p}: directory contains no audio files (looked for {' '.join(au.AUDIO_EXTENSIONS)})"))
        out.extend((f, None) for f in found)
    return out


def _reason(path: Path, exc: BaseException) -> str:
    if isinstance(exc, au.AudioError):
        return str(exc).replace("\n", " ")
    msg = _one_line(exc)
    return f"{path}: {type(exc).__name__}: {msg}" if msg else f"{path}: {type(exc).__name__}"


def non_finite_message(source, start: float, wave: torch.Tensor) -> str:
    return (f"{source}: non-finite features in the window at {start:.2f} s (samples of extreme amplitude: "
            f"peak |x| = {float(wave.abs().max()):.3g}; audio is expected in [-1, 1])")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, shortened."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:limit]


class ModelError(RuntimeError):
    """The model itself failed (e.g. out of memory): reported once, exit code 2."""


@dataclass
class FileResult:
    path: Path
    duration: float = 0.0
    starts: list[float] = field(default_factory=list)
    probs: list[np.ndarray | None] = field(default_factory=list)
    error: str | None = None
    enqueued: bool = False           # all windows handed to the batcher

    @property
    def done(self) -> bool:
        return self.error is not None or (self.enqueued and all(p is not None for p in self.probs))

    @property
    def mean_probs(self) -> np.ndarray:
        return np.mean(np.stack(self.probs), axis=0)


def _open_clip(path: Path, pred: Predictor, window: float):
    """Decode a clip no longer than ``window`` (-> prepared waveform); longer ones are streamed later."""
    info = au.audio_info(path)
    if info.frames > round(window * info.samplerate):
        return "long", info.frames / info.samplerate
    wave = au.load_audio(path, pred.cfg.sample_rate)
    return pred.prepare(wave), wave.shape[-1] / pred.cfg.sample_rate


def classify_files(pred: Predictor, items: Iterable[str | os.PathLike], window: float | None = None,
                   hop: float | None = None, batch_size: int = 32, workers: int = 2,
                   emit: Callable[[FileResult], None] | None = None) -> list[FileResult]:
    """Classify every input; ``emit`` is called once per input, in input order, as soon as it is done.

    Clips no longer than ``window`` are decoded by ``workers`` threads (at most ``4 * batch_size``
    ahead) and padded as in training; longer files are read block by block with
    :func:`audio_utils.iter_audio_blocks` (windows of ``window`` s every ``hop`` s). Windows of all
    files share batches of ``batch_size``; features are computed batch by batch.
    """
    window = float(window or pred.cfg.duration)
    hop = float(hop or window / 2)
    entries = expand_inputs(items)
    results: list[FileResult] = []
    pending: list[tuple[FileResult, int, torch.Tensor]] = []
    emitted = 0

    def drain():
        nonlocal emitted
        while emitted < len(results) and results[emitted].done:
            if emit is not None:
                emit(results[emitted])
            emitted += 1

    def run_batch():
        if pending:
            try:
                probs = pred.predict(torch.stack([w for _, _, w in pending]))
            except Exception as exc:  # noqa: BLE001
                raise ModelError(f"{pred.path}: the model failed on a batch of {len(pending)} windows "
                                 f"({type(exc).__name__}: {_one_line(exc)})") from exc
            for (res, slot, wave), p in zip(pending, probs):
                res.probs[slot] = p
                if res.error is None and not np.isfinite(p).all():
                    res.error = non_finite_message(res.path, res.starts[slot], wave)
            pending.clear()
        drain()

    def add(res: FileResult, start: float, wave: torch.Tensor):
        res.starts.append(start)
        res.probs.append(None)
        pending.append((res, len(res.probs) - 1, wave))
        if len(pending) >= batch_size:
            run_batch()

    def load(entry):
        path, error = entry
        if error is not None:
            return None
        try:
            return _open_clip(path, pred, window)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a one-line message
            return exc

    pool = ThreadPoolExecutor(max(1, workers))
    try:
        futures: deque = deque()
        it = iter(entries)
        depth = max(2, 4 * batch_size)

        def refill():
            while len(futures) < depth:
                entry = next(it, None)
                if entry is None:
                    return
                futures.append((entry, pool.submit(load, entry)))

        refill()
        while futures:
            (path, error), fut = futures.popleft()
            refill()
            res = FileResult(path)
            results.append(res)
            loaded = fut.result()
            try:
                if error is not None:
                    raise au.AudioError(error)
                if isinstance(loaded, BaseException):
                    raise loaded
                wave, res.duration = loaded
                if isinstance(wave, torch.Tensor):
                    add(res, 0.0, wave)
                else:   # long file: sliding windows, read block by block
                    for start, block in au.iter_audio_blocks(path, pred.cfg.sample_rate, window, window - hop):
                        add(res, start, pred.prepare(block))
                        if res.error is not None:
                            break
            except ModelError:
                raise                     # not this file's fault: stop, do not blame it
            except Exception as exc:  # noqa: BLE001
                res.error = _reason(path, exc)
            if res.error is not None:
                pending[:] = [q for q in pending if q[0] is not res]
            res.enqueued = True
            drain()
        run_batch()
    finally:  # on Ctrl-C, do not wait for clips queued for decoding
        pool.shutdown(wait=True, cancel_futures=True)
    return results


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
def top_k(probs: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in order]


def _r(x: float) -> float:
    return round(float(x), 6)


def window_record(pred: Predictor, start: float, end: float, probs: np.ndarray, k: int) -> dict:
    rec = {"start_s": _r(start), "end_s": _r(end)}
    rec.update(decision(pred, probs) if pred.binary else
               {"top": [{"label": n, "prob": _r(p)} for n, p in top_k(probs, pred.class_names, k)]})
    return rec


def decision(pred: Predictor, probs: np.ndarray) -> dict:
    score, thr = float(probs[1]), pred.task["threshold"]
    return {"positive_class": pred.task["positive_class"], "score": _r(score), "threshold": _r(thr),
            "decision": "positive" if score >= thr else "negative"}


def _decision_text(d: dict) -> str:
    op = ">=" if d["decision"] == "positive" else "<"
    label = d["positive_class"] if d["decision"] == "positive" else f"not {d['positive_class']}"
    return f"{d['decision']}: {label}  (score {d['score']:.3f} {op} threshold {d['threshold']:.3f})"


class Printer:
    """Text or JSON Lines output of per-file results, and the one-line error messages."""

    def __init__(self, pred: Predictor, k: int, as_json: bool, window: float, hop: float, out=None):
        self.pred, self.k, self.json, self.window, self.hop = pred, max(1, min(k, pred.num_classes)), as_json, window, hop
        self.out = out or sys.stdout
        self.ok = self.failed = 0

    def __call__(self, res: FileResult) -> None:
        if res.error is not None:
            self.failed += 1
            _err(f"error: {res.error}")
            if self.json:
                print(json.dumps({"file": str(res.path), "error": res.error}), file=self.out, flush=True)
            return
        self.ok += 1
        pred, probs = self.pred, res.mean_probs
        ends = [min(s + self.window, res.duration) for s in res.starts]
        if self.json:
            rec = {"file": str(res.path), "duration_s": _r(res.duration), "n_windows": len(res.starts)}
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
        if len(res.starts) == 1:
            head = f"{res.path}  [{res.duration:.2f} s]"
        else:
            head = (f"{res.path}  [{res.duration:.2f} s, {len(res.starts)} windows of {self.window:g} s "
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
# Streaming and evaluation (helpers in inference_utils.py)
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
            _err(f"error: {source}: window {start:.2f}-{end:.2f} s: audio contains NaN/Inf samples")
            continue
        wave = pred.prepare(au.resample(torch.tensor(block, dtype=torch.float32), rate, pred.cfg.sample_rate))
        probs = pred.predict(wave[None])[0]
        if not np.isfinite(probs).all():
            n_bad += 1
            _err(f"error: {non_finite_message(source, start, wave)}")
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
        _err(f"error: {source}: no audio received")
        return EXIT_FAILED
    return EXIT_OK if n_bad == 0 else EXIT_FAILED


def run_evaluation(pred: Predictor, args) -> int:
    ds, info = evaluation_dataset(pred, args.dataset, args.data_dir, args.fold, args.split, args.split_seed,
                                  args.cache_dir)
    metrics, probs, labels = evaluate_checkpoint(pred, ds, args.batch_size)
    train_test = (pred.meta.get("metrics") or {}).get("test_acc")
    res = {"checkpoint": str(pred.path), "model": pred.meta.get("model_name"), "data": info,
           "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"],
           "per_class_accuracy": metrics["per_class_accuracy"], "confusion_matrix": metrics["confusion_matrix"],
           "class_names": pred.class_names}
    if pred.binary:
        res["positive_class"] = pred.task["positive_class"]
        res["binary"] = metrics["binary"]
    if info["same_split_as_training_test"] and isinstance(train_test, (int, float)):
        res["training_test_acc"] = float(train_test)
        res["matches_training"] = bool(metrics["accuracy"] == train_test)
    else:
        res["training_test_acc"] = None
        res["matches_training"] = None
    if args.out_dir:
        out_dir = Path(args.out_dir)
    else:
        stem = pred.path.parent.name if pred.path.stem in ("best", "last") else pred.path.stem
        where = f"fold{'-'.join(map(str, info['folds']))}" if "folds" in info else info["split"]
        out_dir = Path(f"eval_{stem}_{where}")
    res["saved"] = [str(p) for p in save_evaluation(out_dir, res, pred.class_names, ds.names, probs, labels)]
    if args.json:
        print(json.dumps(finite(res)))
    else:
        print(format_evaluation(res, pred.class_names))
        print(f"saved: {', '.join(res['saved'])}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="audio files and/or directories (searched recursively)")
    c = p.add_argument_group("checkpoint and device")
    c.add_argument("--checkpoint", help="a .safetensors checkpoint or a run directory with best.safetensors "
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
    w = p.add_argument_group("long audio")
    w.add_argument("--window", type=_positive(float), help="window length in seconds for clips longer than it "
                   "(default and maximum: the checkpoint's clip duration)")
    w.add_argument("--hop", type=_positive(float), help="seconds between window starts (default: window / 2)")
    s = p.add_argument_group("streaming")
    s.add_argument("--stream", action="store_true", help="classify raw PCM read from stdin, one line per window")
    s.add_argument("--stream-format", choices=["s16le", "f32le"], default="s16le")
    s.add_argument("--stream-rate", type=_positive(int), help="stdin / microphone sample rate "
                   "(default: the checkpoint's)")
    s.add_argument("--stream-channels", type=_positive(int), default=1, help="interleaved channels (default 1)")
    s.add_argument("--mic", action="store_true", help="classify the default microphone (optional package sounddevice)")
    s.add_argument("--max-seconds", type=_positive(float), help="stop streaming after this much audio")
    e = p.add_argument_group("evaluation")
    e.add_argument("--evaluate", action="store_true", help="accuracy, macro-F1, per-class accuracy and confusion "
                   "matrix (binary checkpoints: precision, recall, F1, ROC-AUC) on a labelled split")
    e.add_argument("--dataset", choices=["esc50", "folder"], help="default: the checkpoint's training dataset")
    e.add_argument("--data-dir", help="dataset root (default: the checkpoint's, then $ESC50_DIR / data/ESC-50)")
    e.add_argument("--fold", type=_int_list, help="ESC-50 fold(s) (default: the checkpoint's test folds, 5)")
    e.add_argument("--split", choices=["train", "val", "test"], default="test", help="folder dataset split")
    e.add_argument("--split-seed", type=int, help="folder dataset split seed (default: the checkpoint's)")
    e.add_argument("--cache-dir", help="feature cache directory (default: $AUDIO_CACHE_DIR or data/cache)")
    e.add_argument("--out-dir", help="where metrics.json, confusion_matrix.csv/.png, per_class_accuracy.csv, "
                   "predictions.csv go (default: eval_<checkpoint>_fold<N>)")
    return p


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
        _err(f"checkpoint: {pred.describe()}")
    if args.evaluate:
        return run_evaluation(pred, args)
    window = args.window or pred.cfg.duration
    if window > pred.cfg.duration + 1e-9:
        raise UsageError(f"--window {window:g} s is longer than the clips this checkpoint was trained on "
                         f"({pred.cfg.duration:g} s); use at most {pred.cfg.duration:g}")
    hop = args.hop or window / 2
    if args.stream or args.mic:
        rate = args.stream_rate or pred.cfg.sample_rate
        frames = max(1, int(round(hop * rate)))
        if args.mic:
            chunks = read_microphone(rate, args.stream_channels, frames, args.max_seconds)
            source = "microphone"
        else:
            chunks = read_pcm(sys.stdin.buffer, args.stream_format, args.stream_channels, frames)
            if args.max_seconds:
                chunks = limit_samples(chunks, int(args.max_seconds * rate))
            source = "stdin"
        return run_stream(pred, chunks, rate, window, hop, args.top_k, args.json, source)
    printer = Printer(pred, args.top_k, args.json, window, hop)
    classify_files(pred, args.paths, window, hop, args.batch_size or 32, emit=printer)
    if printer.failed:
        _err(f"{printer.ok} classified, {printer.failed} failed")
    return EXIT_OK if printer.failed == 0 and printer.ok > 0 else EXIT_FAILED



def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except (UsageError, CheckpointError, ModelError, au.AudioError, FileNotFoundError, ValueError) as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user
        if args.debug:
            raise
        _err(f"error: {type(exc).__name__}: {_one_line(exc, 300)} (--debug shows details)")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
