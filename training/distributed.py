#!/usr/bin/env python
"""Distributed data-parallel training with torchrun, through the same CLI and engine.

Single node, N GPUs::

    torchrun --standalone --nproc_per_node=N -m training.distributed --model vjepa2 --preset gpu --device cuda ...

Several nodes (run on every node; ``--node_rank`` 0..nnodes-1; the output directory must be on a
filesystem all nodes share, since every rank reads ``last.pt`` to resume and ``best.safetensors``
to test)::

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 -m training.distributed --model mamba --preset gpu --device cuda ...

Cross-validation instead of a single run: put ``cv`` first, then ``training.cv``'s flags::

    torchrun --standalone --nproc_per_node=N -m training.distributed cv --model cnn --device cuda --out runs/cv_cnn

The arguments are exactly ``train.py``'s (or ``training.cv``'s). This module initialises the
process group (NCCL when training on CUDA, gloo on CPU; ``DIST_BACKEND`` overrides), binds each
process to GPU ``LOCAL_RANK``, runs ``training.cli.main`` (train.py) / ``training.cv.main``, and destroys the group.
Only rank 0 locks and checks the run directory (training/run_dir.py). ``--batch-size`` stays the *global* batch: each rank takes ``batch_size / world`` items of it, so
a run on N GPUs follows the same optimisation as a single-process run. Only rank 0 prints
results and writes files (other ranks' stdout is silenced unless ``DIST_ALL_STDOUT=1``). Run
without torchrun (no ``WORLD_SIZE`` in the environment) it simply trains in one process.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys

import torch
import torch.distributed as dist


def _requested_device(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--device" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--device="):
            return a.split("=", 1)[1]
    return "auto"


def pick_backend(argv: list[str]) -> str:
    """``nccl`` when the run trains on CUDA, else ``gloo`` (``$DIST_BACKEND`` overrides)."""
    if os.environ.get("DIST_BACKEND"):
        return os.environ["DIST_BACKEND"]
    dev = _requested_device(argv)
    on_cuda = dev.startswith("cuda") or (dev == "auto" and torch.cuda.is_available())
    return "nccl" if on_cuda and dist.is_nccl_available() else "gloo"


@contextlib.contextmanager
def process_group(backend: str, timeout_min: float | None = None):
    """Initialise the default process group from torchrun's environment; yield (rank, world, local_rank)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    kw = {}
    if timeout_min or os.environ.get("DIST_TIMEOUT_MIN"):
        kw["timeout"] = datetime.timedelta(minutes=float(timeout_min or os.environ["DIST_TIMEOUT_MIN"]))
    if backend == "nccl":
        kw["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world, **kw)
    try:
        yield rank, world, local_rank
    finally:
        dist.destroy_process_group()


def _entry(argv: list[str]):
    if argv and argv[0] == "cv":
        from training import cv
        return cv.main, argv[1:]
    from training import cli
    return cli.main, argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run, args = _entry(argv)
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return run(args)                       # plain single process
    if any(a in ("-h", "--help") for a in args):
        return run(args) if int(os.environ.get("RANK", 0)) == 0 else 0
    with process_group(pick_backend(args)) as (rank, world, local_rank):
        quiet = rank != 0 and os.environ.get("DIST_ALL_STDOUT") != "1"
        with open(os.devnull, "w") as devnull, \
                (contextlib.redirect_stdout(devnull) if quiet else contextlib.nullcontext()):
            rc = run(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
