#!/usr/bin/env python
"""Choose an ensemble's members on the validation fold from a pool of refits (``training.ensemble_pool``).

Scores every ensemble of the pool file on its validation fold, each refit stood in for by its proxy (the
run of the same recipe that held that fold out, or that run's saved validation predictions, such as the
out-of-fold ``val_predictions.csv`` of ``python -m training.cv --inner``), prints each member's and each ensemble's accuracy and
negative log-likelihood, and applies the pool's rule: the best candidate replaces the baseline when it is
at least ``margin`` more accurate. With ``--test`` it then reads the candidates once on the test fold, with
the refits. Writes both parts to ``--out``.

    python benchmarks/ensemble_pool.py --pool recipes/ensembles/esc50_pool.yaml [--threads 2]
    python benchmarks/ensemble_pool.py --pool recipes/ensembles/esc50_pool.yaml --test   # after the decision

A run without ``--test`` refuses an ``--out`` that holds a test-fold part (it would drop it).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", required=True, help="pool file (recipes/ensembles/*.yaml)")
    p.add_argument("--checkpoint-dir", default=str(REPO / "checkpoints"))
    p.add_argument("--data-dir", default=None, help="ESC-50 root (default: as train.py)")
    p.add_argument("--predictions-root", default=str(REPO),
                   help="where a pool's predictions-file proxies are (default: the repository)")
    p.add_argument("--test", action="store_true", help="after the decision: read the candidates on the test fold")
    p.add_argument("--out", default=str(REPO / "results" / "ensemble_pool.json"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from training.data import default_esc50_dir
    from training.ensemble_pool import PoolError, evaluate, load_pool
    from training.results import read_json, write_json

    try:
        pool = load_pool(args.pool)
    except PoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_file = Path(args.out)
    if not args.test and "test" in read_json(out_file, {}):
        print(f"error: {out_file} holds a test-fold part (from --test) that this run without --test would drop; "
              f"write the validation part elsewhere with --out", file=sys.stderr)
        return 2
    ck_dir = Path(args.checkpoint_dir)
    splits = ("validation", "test") if args.test else ("validation",)
    files = Path(args.predictions_root)

    def where(n: str, split: str) -> Path:
        return files / n if split == "validation" and pool.proxies_are_predictions else ck_dir / f"{n}.safetensors"
    absent = sorted({str(where(n, s)) for e in pool.ensembles for s in splits for g in pool.checkpoints(e, s).values()
                     for names in g.values() for n in names if not where(n, s).is_file()})
    if absent:
        print(f"error: no such file: {', '.join(absent)}", file=sys.stderr)
        return 2
    root = args.data_dir or str(default_esc50_dir())
    torch.set_num_threads(args.threads)
    cache: dict = {}
    t0 = time.perf_counter()

    try:
        val = {e: evaluate(pool, e, "validation", root, ck_dir, cache, files) for e in pool.ensembles}
    except PoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = ("the proxies' predictions files" if pool.proxies_are_predictions
             else f"validation fold {pool.validation_fold} (proxies)")
    print(f"{split}, {val[pool.baseline]['n']} clips:")
    for m in pool.members.values():
        acc = next(v["member_acc"][m.name] for v in val.values() if m.name in v["member_acc"])
        print(f"  {acc:.4f}  {m.name:<28} {m.family:<10} proxy {', '.join(m.proxy)}")
    for e, v in val.items():
        role = "baseline" if e == pool.baseline else "candidate" if e in pool.candidates else "reference"
        print(f"  ensemble {e:<16} {role:<9} weigh {v['weigh']:<6} {len(v['members']):>2} members: "
              f"acc {v['acc']:.4f}  macro-F1 {v['macro_f1']:.4f}  NLL {v['nll']:.4f}")
    decision = pool.decide({e: v["acc"] for e, v in val.items()})
    print(f"rule: best candidate {decision['best_candidate']} ({decision['gain']:+.4f} against "
          f"{pool.baseline}, margin {pool.margin}): "
          + (f"replaces {pool.baseline}" if decision["replaces_baseline"] else f"{pool.baseline} stays"))
    out = {"command": "benchmarks/ensemble_pool.py --pool " + args.pool + (" --test" if args.test else ""),
           "pool": args.pool, "validation": val, "decision": decision}

    if args.test:
        test = {e: evaluate(pool, e, "test", root, ck_dir, cache) for e in pool.candidates}
        print(f"test fold {pool.test_fold} (refits), read once each:")
        for e, v in test.items():
            print(f"  ensemble {e:<16} acc {v['acc']:.4f}  macro-F1 {v['macro_f1']:.4f}  NLL {v['nll']:.4f}")
        out["test"] = test
    write_json(args.out, out)
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
