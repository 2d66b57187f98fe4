"""Where audio comes from: file / directory listing, decoding, sliding windows, stdin PCM, microphone.

Everything here turns inputs into mono waveforms at the checkpoint's rate, prepared by the
predictor's one featurisation path (:meth:`classify.predictor.Predictor.prepare`); the batching of
many files' windows into shared forward passes is :func:`classify_files`.
"""
from __future__ import annotations

import math
import os
import queue
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

import audio_utils as au

MIN_WINDOW_S = 0.01     # shorter windows hold less than one STFT frame of any usual feature config


class UsageError(Exception):
    """Bad arguments or missing resources: one line on stderr, exit code 2."""


class ModelError(RuntimeError):
    """The model itself failed (e.g. out of memory): reported once, exit code 2."""


def display(path) -> str:
    """A path as printable text, also when its name is not valid UTF-8 (bytes shown as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def err(msg: str) -> None:
    """One line on stderr."""
    print(msg.replace("\n", " "), file=sys.stderr, flush=True)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, shortened."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:limit]


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------
def check_window(window: float, hop: float, rate: int, max_window: float) -> None:
    """Refuse (UsageError) a window or hop that cannot work at ``rate`` Hz."""
    for name, v in (("--window", window), ("--hop", hop)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise UsageError(f"{name} must be a positive number of seconds, got {v}")
    if window < MIN_WINDOW_S:
        raise UsageError(f"--window {window:g} s is too short: use at least {MIN_WINDOW_S:g} s")
    if window > max_window + 1e-9:
        raise UsageError(f"--window {window:g} s is longer than the clips this checkpoint was trained on "
                         f"({max_window:g} s); use at most {max_window:g}")
    if hop * rate < 1:
        raise UsageError(f"--hop {hop:g} s is shorter than one sample at {rate} Hz "
                         f"(use at least {1 / rate:.3g} s)")
    if hop > window + 1e-9:
        raise UsageError(f"--hop {hop:g} s is longer than --window {window:g} s (audio would be skipped)")


# --------------------------------------------------------------------------------------------
# Files and directories
# --------------------------------------------------------------------------------------------
def expand_inputs(items: Iterable[str | os.PathLike], skipped: list | None = None) -> list[tuple[Path, str | None]]:
    """Files as given, directories expanded recursively to their audio files (hidden ones skipped).

    Returns ``(path, error)`` pairs; ``error`` is set for a directory without audio. What a
    directory listing skipped (unreadable folders, dangling links, link loops, FIFOs / devices
    named like audio) is appended to ``skipped`` as ``(path, reason)``.
    """
    out: list[tuple[Path, str | None]] = []
    skipped = skipped if skipped is not None else []
    for item in items:
        p = Path(item)
        if not p.is_dir():
            out.append((p, None))      # missing / unreadable / special files are reported by the loader
            continue
        try:
            found = au.list_audio_files(p, skipped)
        except (OSError, FileNotFoundError) as exc:
            out.append((p, f"{display(p)}: cannot list directory ({exc})"))
            continue
        if not found:
            out.append((p, f"{display(p)}: directory contains no audio files (looked for "
                           f"{' '.join(au.AUDIO_EXTENSIONS)})"))
        out.extend((f, None) for f in found)
    return out


def reason(path: Path, exc: BaseException) -> str:
    if isinstance(exc, au.AudioError):
        return display(str(exc).replace("\n", " "))
    msg = one_line(exc)
    return f"{display(path)}: {type(exc).__name__}: {msg}" if msg else f"{display(path)}: {type(exc).__name__}"


def non_finite_message(source, start: float, wave: torch.Tensor) -> str:
    return (f"{source}: non-finite features in the window at {start:.2f} s (samples of extreme amplitude: "
            f"peak |x| = {float(wave.abs().max()):.3g}; audio is expected in [-1, 1])")


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


def open_clip(path: Path, pred, window: float | None):
    """Decode one input: ``(prepared waveform, duration)`` when it is scored as one clip, exactly as
    training featurises it (``window`` None: always; else clips no longer than ``window``);
    ``("long", duration)`` for a longer file, which is then read block by block."""
    info = au.audio_info(path)
    if window is not None and info.frames > round(window * info.samplerate):
        return "long", info.frames / info.samplerate
    wave = au.load_audio(path, pred.sample_rate)
    return pred.prepare(wave), wave.shape[-1] / pred.sample_rate


def classify_files(pred, items: Iterable[str | os.PathLike], window: float | None = None,
                   hop: float | None = None, batch_size: int = 32, workers: int = 2,
                   emit: Callable[[FileResult], None] | None = None,
                   skipped: list | None = None) -> list[FileResult]:
    """Classify every input; ``emit`` is called once per input, in input order, as soon as it is done.

    ``window`` None scores every file as one clip, featurised exactly as in training (padded /
    cropped to the clip duration, from the first onset for onset-aligned checkpoints). Otherwise
    files no longer than ``window`` are scored that way and longer ones are read block by block
    with :func:`audio_utils.iter_audio_blocks` (windows of ``window`` s every ``hop`` s). Clips are
    decoded by ``workers`` threads (at most ``4 * batch_size`` ahead); windows of all files share
    batches of ``batch_size``.
    """
    hop = float(hop or (window / 2 if window else 0.0))
    entries = expand_inputs(items, skipped)
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
                                 f"({type(exc).__name__}: {one_line(exc)})") from exc
            for (res, slot, wave), p in zip(pending, probs):
                res.probs[slot] = p
                if res.error is None and not np.isfinite(p).all():
                    res.error = non_finite_message(display(res.path), res.starts[slot], wave)
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
            return open_clip(path, pred, window)
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
                    for start, block in au.iter_audio_blocks(path, pred.sample_rate, window, window - hop):
                        add(res, start, pred.prepare(block))
                        if res.error is not None:
                            break
            except ModelError:
                raise                     # not this file's fault: stop, do not blame it
            except Exception as exc:  # noqa: BLE001
                res.error = reason(path, exc)
            if res.error is not None:
                pending[:] = [q for q in pending if q[0] is not res]
            res.enqueued = True
            drain()
        run_batch()
    finally:  # on Ctrl-C, do not wait for clips queued for decoding
        pool.shutdown(wait=True, cancel_futures=True)
    return results


# --------------------------------------------------------------------------------------------
# Streaming (stdin PCM or a microphone)
# --------------------------------------------------------------------------------------------
def stream_windows(chunks: Iterable[np.ndarray], rate: int, window: float, hop: float) -> Iterator[tuple[float, np.ndarray]]:
    """Windows of ``window`` s every ``hop`` s from mono chunks, each yielded as soon as it is complete.

    At the end, samples not covered by a full window give one last, shorter window (padded later,
    as ``iter_audio_blocks`` does for the end of a file). Only about one window is buffered.
    """
    w, h = int(round(window * rate)), int(round(hop * rate))
    if w < 1 or h < 1:
        raise UsageError(f"window ({window:g} s) and hop ({hop:g} s) must each be at least one sample at {rate} Hz")
    buf = np.zeros(0, dtype=np.float32)
    buf_start = next_start = total = covered = 0
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        buf = np.concatenate([buf, chunk]) if len(buf) else chunk
        total += len(chunk)
        while next_start + w <= total:
            off = next_start - buf_start
            yield next_start / rate, buf[off:off + w]
            covered = next_start + w
            next_start += h
            drop = min(next_start - buf_start, len(buf))
            buf, buf_start = buf[drop:], buf_start + drop
    if total > covered and next_start < total:
        off = max(0, next_start - buf_start)
        yield next_start / rate, buf[off:total - buf_start]


def read_pcm(stream, fmt: str, channels: int, frames_per_read: int) -> Iterator[np.ndarray]:
    """Raw little-endian PCM (s16le or f32le, interleaved) from a binary stream -> mono float32 chunks."""
    dtype, scale = {"s16le": ("<i2", 1 / 32768.0), "f32le": ("<f4", 1.0)}[fmt]
    frame_bytes = np.dtype(dtype).itemsize * channels
    rest = b""
    while True:
        data = stream.read(frames_per_read * frame_bytes)
        if not data:
            break
        data = rest + data
        n = len(data) // frame_bytes * frame_bytes
        rest = data[n:]
        if n:
            x = np.frombuffer(data[:n], dtype=dtype).astype(np.float32) * scale
            yield x.reshape(-1, channels).mean(axis=1) if channels > 1 else x
    if rest:
        err(f"warning: stdin: ignored {len(rest)} trailing byte(s) (not a whole {fmt} x {channels} frame)")


def read_microphone(rate: int, channels: int, frames_per_read: int, max_seconds: float | None) -> Iterator[np.ndarray]:
    try:
        import sounddevice as sd
    except Exception:  # noqa: BLE001 - ImportError or a missing PortAudio library
        raise UsageError("--mic needs the optional 'sounddevice' package (and PortAudio): "
                         "pip install sounddevice; or pipe raw PCM into --stream") from None
    q: queue.Queue = queue.Queue()

    def callback(indata, frames, time_info, status):  # runs on the audio thread
        q.put(np.array(indata, dtype=np.float32, copy=True))

    try:
        stream = sd.InputStream(samplerate=rate, channels=channels, dtype="float32",
                                blocksize=frames_per_read, callback=callback)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"--mic: cannot open the input device ({exc})") from None
    got = 0
    with stream:
        while max_seconds is None or got < max_seconds * rate:
            block = q.get()
            got += len(block)
            yield block.mean(axis=1) if block.ndim == 2 else block


def limit_samples(chunks: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    for c in chunks:
        if n <= 0:
            return
        yield c[:n]
        n -= len(c)
