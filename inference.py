#!/usr/bin/env python
"""Classify audio with any checkpoint, evaluate it on any labelled data, or stream audio.

A thin script over the ``classify`` package (``classify/cli.py``; ``python inference.py --help``
for the options, docs/inference.md for evaluation on other datasets and group splits).
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # OpenMP threads that spin while waiting burn the CPU another process needs, and on a busy
    # machine make every op wait for a descheduled thread (10-25x slower on a shared 2-core box).
    # Passive waiting may cost a little on an idle machine; OMP_WAIT_POLICY=ACTIVE restores spinning.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from classify.cli import main  # noqa: E402
from classify.predictor import CHECKPOINT_DIR, Predictor, default_checkpoint, resolve_checkpoint  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
