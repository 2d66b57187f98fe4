#!/usr/bin/env python
"""Where an ensemble's errors are, from evaluations already made: no data, no model, no new read of a fold.

Reads the ``predictions.csv`` that ``inference.py --evaluate --out-dir DIR`` wrote for each member (one row per
clip: ``clip,true,predicted,prob_predicted,p_<class>...``) and prints, for the mean of the members'
probabilities: its accuracy (the same figure as ``collect_results.py --measure-ensembles`` for the same
members), the **oracle** bound (a clip counts as right when any member is right: no way of combining these
members can beat it), how many clips every member gets wrong, the worst classes and the most frequent
confusions, and for every pair of members the clips both get wrong and the pair's oracle bound (how much two
members' errors overlap: two seeds of one recipe are the yardstick for "no new errors").

    python benchmarks/ensemble_errors.py results/fold5/liquid_s4_esc50 results/fold5/mamba_esc50 \\
        results/fold5/vjepa2_esc50 [--worst 10] [--out results/ensemble_errors.txt]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.results import PredictionsError  # noqa: E402
from training.results import read_predictions as _read_predictions  # noqa: E402


class UsageError(Exception):
    """Bad arguments or unreadable inputs: one line on stderr, exit 2."""


def read_predictions(path: Path) -> pd.DataFrame:
    """One member's ``predictions.csv`` (or the folder holding it), indexed by clip."""
    try:
        return _read_predictions(path)
    except PredictionsError as exc:
        raise UsageError(str(exc)) from None


def analyse(members: dict[str, pd.DataFrame], worst: int = 10) -> dict:
    """Accuracy of each member and of their probability mean, the oracle bound, worst classes, confusions."""
    frames = list(members.values())
    first = frames[0]
    for name, df in members.items():
        if not (df.index.equals(first.index) and df["true"].equals(first["true"])):
            raise UsageError(f"{name}: its clips or labels differ from the first member's")
    prob_cols = [c for c in first.columns if c.startswith("p_")]
    if any(list(df.columns.intersection(prob_cols)) != prob_cols for df in frames):
        raise UsageError("the members' class columns differ")
    true = first["true"]
    mean = sum(df[prob_cols] for df in frames) / len(frames)
    pred = mean.idxmax(axis=1).str.removeprefix("p_")
    right = {n: df["predicted"] == true for n, df in members.items()}
    any_right = pd.concat(right, axis=1).any(axis=1)
    correct = pred == true
    names = list(members)
    pairs = [(a, b, int((~right[a] & ~right[b]).sum()), float((right[a] | right[b]).mean()))
             for i, a in enumerate(names) for b in names[i + 1:]]
    per_class = correct.groupby(true).mean().sort_values(kind="stable")
    confusions = (pd.DataFrame({"true": true, "predicted": pred})[~correct]
                  .value_counts().rename("clips").reset_index())
    return {"n": int(len(true)), "member_acc": {n: float(r.mean()) for n, r in right.items()},
            "acc": float(correct.mean()), "oracle_acc": float(any_right.mean()),
            "all_wrong": int((~any_right).sum()), "pairs": pairs,
            "worst_classes": [(c, float(a)) for c, a in per_class.head(worst).items()],
            "confusions": [(t, p, int(k)) for t, p, k in confusions.head(worst).itertuples(index=False)]}


def report(res: dict, sources: list[str]) -> str:
    lines = [f"# benchmarks/ensemble_errors.py {' '.join(sources)}",
             f"{res['n']} clips; mean of the members' probabilities"]
    lines += [f"  member {n}: {a:.4f}" for n, a in res["member_acc"].items()]
    lines += [f"  ensemble: {res['acc']:.4f}",
              f"  oracle (any member right): {res['oracle_acc']:.4f}; every member wrong: {res['all_wrong']} clips",
              "worst classes (ensemble accuracy):"]
    lines += [f"  {c:<20s} {a:.3f}" for c, a in res["worst_classes"]]
    lines += ["most frequent confusions (true -> predicted: clips):"]
    lines += [f"  {t} -> {p}: {k}" for t, p, k in res["confusions"]]
    lines += ["pairs of members (clips both wrong; oracle bound of the pair):"]
    lines += [f"  {a} + {b}: {k} both wrong; oracle {o:.4f}" for a, b, k, o in res["pairs"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("members", nargs="+", help="evaluation folders (or their predictions.csv), one per member")
    p.add_argument("--worst", type=int, default=10, help="how many classes and confusions to list")
    p.add_argument("--out", help="also write the report to this file (atomically)")
    args = p.parse_args(argv)
    try:
        if len(args.members) < 2:
            raise UsageError("an ensemble needs at least two members")
        res = analyse({m: read_predictions(Path(m)) for m in args.members}, args.worst)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = report(res, args.members)
    print(text, end="")
    if args.out:
        from training.checkpoint import atomic_write

        atomic_write(Path(args.out), lambda t: Path(t).write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
