"""Classify audio with any trained checkpoint: predictor, sources, evaluation and the CLI."""
