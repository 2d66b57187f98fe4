#!/usr/bin/env python
"""Train any registered model (thin script; the command line lives in :mod:`training.cli`).

    python train.py --help
    python train.py --model cnn --data-dir ../shared/data/ESC-50 --epochs 40

The same command is installed as ``audio-train`` (entry point ``training.cli:main``).
"""
import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main())
