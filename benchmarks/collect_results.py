#!/usr/bin/env python
"""Collect the trained models' results: ship runs, measure CPU latency, ensemble, write results/.

The command-line twin of ``notebooks/compare_models.ipynb`` (same code: training/notebook_utils.py).

    # copy finished runs into checkpoints/ (NAME_esc50.safetensors / .history.json / .metrics.json)
    python benchmarks/collect_results.py --ship liquid_s4=runs/liquid_s4_gpu --ship mamba=runs/mamba_gpu
    # then (or at once) compare everything shipped, falling back to runs/NAME_esc50/
    python benchmarks/collect_results.py --data-dir /work/shared/data/ESC-50

Writes ``results/summary.json`` (per model: params, epochs, val / test accuracy, macro-F1, epoch
time, CPU batch-1 latency; the ensemble's accuracy), ``results/comparison.png`` and
``results/per_class.png``, and prints the table. A shipped checkpoint is replaced only by a run
with higher validation accuracy unless ``--force``. Latency is a median over ``--repeats``
batch-1 forward passes on this machine's CPU: check ``uptime``, other processes may share it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from training import notebook_utils as nbu
    from training.data import default_esc50_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ship", action="append", metavar="NAME=RUN_DIR", default=[],
                   help="copy RUN_DIR's best checkpoint, history and metrics to CHECKPOINT_DIR/NAME_esc50.*")
    p.add_argument("--force", action="store_true", help="with --ship: replace even a better shipped checkpoint")
    p.add_argument("--checkpoint-dir", default=str(REPO / "checkpoints"))
    p.add_argument("--runs-dir", default=str(REPO / "runs"))
    p.add_argument("--results-dir", default=str(REPO / "results"))
    p.add_argument("--data-dir", default=None, help="ESC-50 root for the ensemble (default: as train.py)")
    p.add_argument("--models", default=",".join((*nbu.MAIN_MODELS, *nbu.BASELINES)))
    p.add_argument("--ensemble", default=",".join(nbu.MAIN_MODELS), help="members of the probability-mean ensemble")
    p.add_argument("--repeats", type=int, default=30, help="batch-1 forward passes per model for the latency")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the latency")
    p.add_argument("--no-ensemble", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)

    for item in args.ship:
        name, _, run = item.partition("=")
        if not run:
            p.error(f"--ship expects NAME=RUN_DIR, got '{item}'")
        nbu.ship_checkpoint(run, name, args.checkpoint_dir, force=args.force)

    results = nbu.find_results(args.checkpoint_dir, args.runs_dir, [m for m in args.models.split(",") if m])
    if not results:
        print(f"no results in {args.checkpoint_dir} or {args.runs_dir}", file=sys.stderr)
        return 1
    latency = nbu.checkpoint_latencies(results, repeats=args.repeats, threads=args.threads)
    ens = None
    if not args.no_ensemble:
        members = [m for m in args.ensemble.split(",") if m in results]
        ens = nbu.ensemble_accuracy(results, args.data_dir or default_esc50_dir(), members)
    print(nbu.results_table(results, latency))
    if ens and ens.get("members"):
        print(f"ensemble {'+'.join(ens['members'])}: test acc {ens['ensemble_acc']:.4f} (n={ens['n']}); "
              f"members re-evaluated: {ens['member_acc']}")
    out = Path(args.results_dir)
    nbu.write_json(out / "summary.json", nbu.summary(results, latency, ens, args.threads))
    if not args.no_plots:
        import matplotlib
        matplotlib.use("Agg")
        nbu.show(nbu.comparison_figure(results, latency, ens, latency_threads=args.threads), out / "comparison.png")
        nbu.show(nbu.plot_per_class(results), out / "per_class.png")
    print(f"wrote {out / 'summary.json'}" + ("" if args.no_plots else f", {out / 'comparison.png'}, {out / 'per_class.png'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
