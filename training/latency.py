"""CPU latency: measure a model's batch-1 forward pass, and read / write ``results/latency.json``.

``results/latency.json`` is the one stored latency measurement that every table and figure reads
(``benchmarks/collect_results.py`` writes it from ``benchmarks/bench_inference.py``'s output: one
5-s clip, features included, batch-1 median, and batch-32 throughput). :func:`measure_latency`
times the model alone; the comparison notebook uses it for runs that have no stored measurement.
The thread count is the process's (set once by the caller), never changed here.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, n_frames: int, n_mels: int, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time (ms) of a batch-1 CPU forward pass of ``[1, n_frames, n_mels]``."""
    model = model.to("cpu").eval()
    x = torch.randn(1, n_frames, n_mels)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def checkpoint_latencies(results: dict, repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """``{name: ms}`` of :func:`measure_latency` for every result with a checkpoint."""
    from training.checkpoint import build_from_checkpoint

    out = {}
    for name, r in results.items():
        if r.checkpoint is None:
            continue
        model, meta = build_from_checkpoint(r.checkpoint)
        feat = meta["feature_config"]
        out[name] = measure_latency(model, feat["n_frames"], feat["n_mels"], repeats, warmup)
    return out


def read_latency(path: str | os.PathLike) -> tuple[dict[str, float], dict]:
    """``({name: batch-1 ms}, the whole file)`` of a latency JSON; empty when the file is missing."""
    from training.results import read_json

    data = read_json(path, None)
    if data is None:
        return {}, {}
    return {n: m["batch1_ms"] for n, m in data.get("models", {}).items() if m.get("batch1_ms")}, data


def parse_bench_inference(text: str) -> dict[str, dict]:
    """Per-model rows of ``benchmarks/bench_inference.py``'s table (``b1 p50 ms``, ``b32 clips/s``)."""
    lines = text.splitlines()
    head = next((i for i, l in enumerate(lines) if l.startswith("model") and "b1 p50 ms" in l), None)
    if head is None:
        raise ValueError("no bench_inference table found (a line starting with 'model' and holding 'b1 p50 ms')")
    out = {}
    for line in lines[head + 2:]:
        parts = line.split()
        if len(parts) < 12 or "|" not in parts:
            break
        bar = parts.index("|")
        out[parts[0]] = {"params": int(parts[1].replace(",", "")), "feature_ms": float(parts[2]),
                         "model_ms": float(parts[3]), "batch1_ms": float(parts[4]), "batch1_min_ms": float(parts[5]),
                         "batch32_clips_per_s": float(parts[bar + 1]), "weights": " ".join(parts[bar + 4:])}
    if not out:
        raise ValueError("the bench_inference table has no rows")
    return out
