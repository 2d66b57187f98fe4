"""Training: the shared engine, checkpoints, dataset construction, and the CLI entry points."""
