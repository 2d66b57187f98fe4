#!/usr/bin/env python
"""5-fold cross-validation on ESC-50 through the shared engine (``training.runner.train_model``).

For every requested fold ``k`` the runner trains with fold ``k`` as the test split, the next fold
(``k % 5 + 1``) as the validation split (model selection / early stopping) and the other three
folds as the training split (with ``--no-val``, the published ESC-50 protocol: the four other folds,
no validation split, the last weights, ``--select last``), into ``<out>/fold<k>/``
(``best.safetensors``, ``last.pt``, ``history.*``, ``metrics.json``, ``curves.png``,
``val_predictions.csv``, exactly as ``train.py`` writes them). It then
collects every finished fold into ``<out>/cv_results.json`` and ``<out>/cv_results.csv``
(per-fold table plus mean and standard deviation of the test accuracy) and prints the table.

With ``--inner``, inner cross-validation over the four development folds, which never reads fold 5 (the
test fold of every recipe): for every requested fold ``k`` of 1-4 the runner trains on the other three of
folds 1-4 with fold ``k`` as the validation split and no test split (``--select last``: the fold that scores
a run chooses nothing in it). Its score, the mean validation accuracy over the folds, compares recipes on
1600 clips instead of fold 4's 400, and a recipe chosen by it can still be read once on fold 5.

Resumable: a fold that has ``metrics.json`` is finished and is not retrained; an interrupted fold
resumes from its ``last.pt`` (the engine's resume). Folds can run as separate processes or on
separate machines sharing the output directory, then be collected::

    python -m training.cv --model mlp --epochs 30 --out runs/cv_mlp            # all five folds
    python -m training.cv --model mlp --epochs 30 --out runs/cv_mlp --folds 3  # only fold 3
    python -m training.cv --out runs/cv_mlp --summarise                        # collect, no training
    python -m training.cv --recipe recipes/liquid_s4_esc50.yaml --no-val       # four training folds each
    python -m training.cv --recipe recipes/cnn_esc50.yaml --inner --folds 1    # validate on 1, train on 2-4
    torchrun --nproc_per_node=4 -m training.distributed cv --model vjepa2 --preset gpu --device cuda ...

Every model, data and training flag of ``train.py`` is accepted (same parser, ``--recipe``
included), except the fold flags, which the runner sets itself. Each fold directory is a run
directory (training/run_dir.py): a fold finished or started with other settings is refused (one
line naming the differences) rather than reused; ``--restart`` retrains it. The default output
directory carries a hash of the settings, so two experiments never share one.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ALL_FOLDS = (1, 2, 3, 4, 5)
DEV_FOLDS = (1, 2, 3, 4)        # inner cross-validation: fold 5, the test fold, is never read
SCHEMES = ("val", "no_val", "inner")
FOLD_FLAGS = ("train_folds", "val_folds", "test_folds")
TABLE_COLUMNS = ("fold", "val_fold", "test_acc", "test_macro_f1", "val_acc", "best_epoch", "epochs_run",
                 "n_test", "mean_epoch_time_s")


def fold_split(fold: int, scheme: str = "val") -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(train, val, test) folds of the run that holds out ``fold``. ``val``: ``fold`` is the test fold
    and the next one validates; ``no_val``: ``fold`` is the test fold and every other fold trains;
    ``inner``: ``fold`` (one of 1-4) validates, the other three of folds 1-4 train, nothing is tested."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    folds = DEV_FOLDS if scheme == "inner" else ALL_FOLDS
    if fold not in folds:
        raise ValueError(f"fold {fold} is not one of {folds}" + (" (fold 5 is the test fold, never read by "
                                                                   "inner cross-validation)" if fold == 5 else ""))
    others = tuple(f for f in folds if f != fold)
    if scheme == "inner":
        return others, (fold,), ()
    if scheme == "no_val":
        return others, (), (fold,)
    val_fold = folds[(folds.index(fold) + 1) % len(folds)]
    return tuple(f for f in others if f != val_fold), (val_fold,), (fold,)


def scheme_folds(scheme: str) -> tuple[int, ...]:
    """The folds a scheme holds out one at a time."""
    return DEV_FOLDS if scheme == "inner" else ALL_FOLDS


def fold_dir(out: str | Path, fold: int) -> Path:
    return Path(out) / f"fold{fold}"


def _finished_metrics(out: str | Path, fold: int) -> dict | None:
    """The fold's ``metrics.json`` if its run finished (the engine writes it with ``status: running``
    after every epoch, ``finished`` at the end; files from before the status field count as finished)."""
    p = fold_dir(out, fold) / "metrics.json"
    if not p.exists():
        return None
    m = json.loads(p.read_text())
    return m if m.get("status", "finished") == "finished" else None


def is_finished(out: str | Path, fold: int) -> bool:
    return _finished_metrics(out, fold) is not None


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The train CLI's parser (model, data and training flags) plus the CV flags."""
    from training import cli

    p = cli.build_parser()
    p.description = __doc__
    p.prog = "python -m training.cv"
    for action in p._actions:
        if action.dest in FOLD_FLAGS:           # chosen per fold by the runner
            action.help, action.default = argparse.SUPPRESS, None
        elif action.dest == "model":
            action.help = "model to train (required, except with --summarise)"
        elif action.dest == "out":
            action.help = ("output directory, one fold<k>/ per fold (default: runs/cv_<model>-<8-digit hash of the "
                           "settings>)")
        elif action.dest == "restart":
            action.help = "retrain the requested folds from scratch even if finished or interrupted (default: off)"
        elif action.dest == "no_resume":
            action.help = "the same as --restart (default: off)"
    c = p.add_argument_group("cross-validation")
    c.add_argument("--folds", type=cli.int_list, default=None,
                   help="held-out folds to train: test folds (default: 1,2,3,4,5), or with --inner validation "
                        "folds (default: 1,2,3,4); run folds as separate processes with --folds 1, --folds 2, ... "
                        "and collect with --summarise")
    c.add_argument("--no-val", action="store_true", default=False,
                   help="train on the four other folds with no validation split (the published protocol; "
                        "needs --select last: nothing is chosen on any fold) (default: off)")
    c.add_argument("--inner", action="store_true", default=False,
                   help="inner cross-validation over folds 1-4: validate on each requested fold, train on the "
                        "other three, never read fold 5 (needs --select last) (default: off)")
    c.add_argument("--summarise", "--summarize", action="store_true", default=False,
                   help="only collect the finished folds of --out into cv_results.json/.csv; no training "
                        "(default: off)")
    return p


def _validate(args, parser: argparse.ArgumentParser, explicit: set[str]) -> None:
    """Check the CV flags. Fold flags given on the command line are refused; a recipe's fold split
    (which describes one run) is replaced fold by fold."""
    given = [f"--{f.replace('_', '-')}" for f in FOLD_FLAGS if f in explicit]
    if given:
        parser.error(f"{', '.join(given)}: the CV runner sets the folds itself; use --folds to choose test folds")
    if args.inner and args.no_val:
        parser.error("--inner and --no-val exclude each other: inner cross-validation validates on each fold")
    allowed = scheme_folds("inner" if args.inner else "val")
    if args.folds is None:
        args.folds = allowed
    bad = [f for f in args.folds if f not in allowed]
    if bad or not args.folds:
        why = " (fold 5 is the test fold: inner cross-validation never reads it)" if args.inner and 5 in bad else ""
        parser.error(f"--folds must be among {allowed}, got {args.folds}{why}")
    if not args.summarise:
        if not args.model:
            parser.error("--model is required (except with --summarise)")
        if args.dataset != "esc50":
            parser.error("cross-validation uses the five official ESC-50 folds (--dataset esc50)")
    if args.summarise and args.out is None:
        parser.error("--summarise needs --out (the CV directory, runs/cv_<model>-<hash>)")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def _fold_spec(base_spec, fold: int, scheme: str = "val"):
    train_f, val_f, test_f = fold_split(fold, scheme)
    return replace(base_spec, train_folds=train_f, val_folds=val_f, test_folds=test_f)


def cv_settings(model_name: str, base_spec, cfg, preset=None, model_config=None, scheme: str = "val") -> dict:
    """The settings of a whole CV experiment (fold 1's run settings without the fold split):
    its default output directory is named after their hash."""
    from training import run_dir
    from training.runner import checked_model_config

    spec = _fold_spec(base_spec, scheme_folds(scheme)[0], scheme)
    _, resolved = checked_model_config(model_name, preset, model_config, spec)
    settings = run_dir.run_settings(model_name, resolved, cfg, spec)
    for k in FOLD_FLAGS:
        settings["data"].pop(k, None)
    if scheme == "no_val":
        settings["cv_validation"] = False      # four training folds: another experiment, another directory
    elif scheme == "inner":
        settings["cv_inner"] = True            # folds 1-4 only: another experiment, another directory
    return settings


def run_folds(model_name: str, base_spec, cfg, out: str | Path, folds=None, preset: str | None = None,
              model_config: dict | None = None, resume: bool = True, extra_meta: dict | None = None,
              log=print, scheme: str = "val") -> dict[int, dict]:
    """Train the requested folds (default: every fold of the scheme), skipping finished ones when
    ``resume``; return ``{fold: metrics}``.

    ``base_spec`` is a :class:`training.data.DataSpec`; its fold fields are replaced per fold
    (:func:`fold_split` under ``scheme``).
    Under ``torch.distributed`` every rank runs every fold (the engine splits the batches); only
    rank 0 writes files and logs.
    """
    from training.engine import DistInfo
    from training.runner import train_model

    dist = DistInfo.current()
    out = Path(out)
    results: dict[int, dict] = {}
    for fold in scheme_folds(scheme) if folds is None else folds:
        d = fold_dir(out, fold)
        spec = _fold_spec(base_spec, fold, scheme)
        train_f, val_f, test_f = spec.train_folds, spec.val_folds, spec.test_folds
        if resume and is_finished(out, fold):
            from training import run_dir
            from training.runner import checked_model_config
            _, resolved = checked_model_config(model_name, preset, model_config, spec)
            # a finished fold of another experiment is an error, never silently reused (checked on
            # every rank: read-only, and all ranks must fail alike)
            run_dir.check_resumable(d, run_dir.run_settings(model_name, resolved, cfg, spec))
            if dist.main:
                log(f"fold {fold}: finished earlier ({d / 'metrics.json'}), skipped")
            results[fold] = _finished_metrics(out, fold)
            continue
        if dist.main:
            state = "resuming" if resume and (d / "last.pt").exists() else "training"
            log(f"fold {fold}: {state}, train folds {list(train_f)}, val fold {val_f[0] if val_f else '-'}, "
                f"test fold {test_f[0] if test_f else '-'} -> {d}")
        meta = dict(extra_meta or {})
        meta["cv"] = {"fold": fold, "folds": list(scheme_folds(scheme)), "scheme": scheme,
                      "train_folds": list(train_f), "val_fold": val_f[0] if val_f else None}
        results[fold] = train_model(model_name, spec, d, cfg, preset=preset, model_config=model_config,
                                    resume=resume, extra_meta=meta)
        if dist.world > 1:
            import torch.distributed as tdist
            tdist.barrier()      # rank 0 has written fold<k>/metrics.json before anyone moves on
    return results


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def _split_of(out: str | Path, fold: int, m: dict) -> tuple[list[int], list[int]]:
    """(validation folds, test folds) the fold's run used, as its checkpoint's metadata records them
    (whoever launched it: this runner or ``train.py`` with the same folds)."""
    from training.checkpoint import read_meta

    p = fold_dir(out, fold) / "best.safetensors"
    if p.exists():
        ds = read_meta(p).get("dataset") or {}
        if "val_folds" in ds and "test_folds" in ds:
            return list(ds["val_folds"]), list(ds["test_folds"])
    _, val_f, test_f = fold_split(fold, "val" if m.get("n_val") else "no_val")   # runs that predate the metadata
    return list(val_f), list(test_f)


def _row(fold: int, m: dict, val_folds: list[int]) -> dict:
    return {"fold": fold, "val_fold": val_folds[0] if val_folds and m.get("n_val") else None,
            "test_acc": m.get("test_acc"), "test_macro_f1": m.get("test_macro_f1"), "val_acc": m.get("val_acc"),
            "best_epoch": m.get("best_epoch"), "epochs_run": m.get("epochs_run"), "n_test": m.get("n_test"),
            "mean_epoch_time_s": m.get("mean_epoch_time_s")}


def _stats(values: list[float]) -> dict:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def summarise(out: str | Path, write: bool = True, log=print) -> dict:
    """Collect ``fold<k>/metrics.json`` of every finished fold into a summary (and cv_results.*); a fold
    whose run is still going (or was interrupted) is listed as missing. Runs without a test fold are
    inner cross-validation (folds 1-4; its score is ``val_acc``); a directory that mixes them with
    test-fold runs is refused.

    ``std`` is the sample standard deviation over folds (ddof=1).
    """
    out = Path(out)
    rows, model, params, inner = [], None, None, set()
    for fold in ALL_FOLDS:
        m = _finished_metrics(out, fold)            # a fold still training is not done
        if m is not None:
            val_f, test_f = _split_of(out, fold, m)
            inner.add(not test_f)
            rows.append(_row(fold, m, val_f))
            model, params = model or m.get("model"), params or m.get("params")
    if len(inner) > 1:
        raise ValueError(f"{out} mixes inner cross-validation runs (no test fold) with test-fold runs: "
                         "summarise each experiment's directory alone")
    inner = inner == {True}
    missing = [f for f in scheme_folds("inner" if inner else "val") if f not in {r["fold"] for r in rows}]
    summary = {
        "model": model, "params": params, "out": str(out), "complete": not missing, "inner": inner,
        "folds_done": [r["fold"] for r in rows], "folds_missing": missing,
        "test_acc": _stats([r["test_acc"] for r in rows]),
        "test_macro_f1": _stats([r["test_macro_f1"] for r in rows]),
        "val_acc": _stats([r["val_acc"] for r in rows]),
        "std_ddof": 1,
        "per_fold": rows,
    }
    if write and rows:
        from training.checkpoint import atomic_write
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "cv_results.json", lambda t: Path(t).write_text(json.dumps(summary, indent=1)))

        def write_csv(t):
            with open(t, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(TABLE_COLUMNS))
                w.writeheader()
                w.writerows(rows)
                for stat in ("mean", "std"):
                    w.writerow({"fold": stat, **{k: summary[k][stat] for k in ("test_acc", "test_macro_f1", "val_acc")}})
        atomic_write(out / "cv_results.csv", write_csv)
    if log is not None:
        log(format_table(summary))
    return summary


def format_table(summary: dict) -> str:
    """The per-fold table (a pandas DataFrame rendered as text) and the mean +- std line."""
    import pandas as pd

    cols = {"fold": "fold", "val_fold": "val", "test_acc": "test acc", "test_macro_f1": "test F1",
            "val_acc": "val acc", "best_epoch": "best ep", "epochs_run": "epochs", "mean_epoch_time_s": "s/epoch"}
    df = pd.DataFrame(summary["per_fold"], columns=list(cols)).rename(columns=cols)
    df = df.map(lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v))   # no validation split
                else f"{v:.4f}" if isinstance(v, float) else v)
    lines = [f"cross-validation: {summary.get('model')} ({summary.get('out')})",
             df.to_string(index=False) if len(df) else ""]
    t, v = summary["test_acc"], summary["val_acc"]
    if summary.get("inner") and v["n"]:
        lines.append(f"validation accuracy (inner cross-validation over folds 1-4, fold 5 not read): {v['mean']:.4f} "
                     f"+- {v['std']:.4f} (mean +- sample std over {v['n']} fold{'s' if v['n'] != 1 else ''})")
    elif t["n"]:
        lines.append(f"test accuracy: {t['mean']:.4f} +- {t['std']:.4f} (mean +- sample std over {t['n']} "
                     f"fold{'s' if t['n'] != 1 else ''})")
    else:
        lines.append("no finished folds")
    if summary["folds_missing"]:
        lines.append(f"not finished: folds {summary['folds_missing']} (partial summary)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    from training import cli
    from training.engine import DistInfo

    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        parser = build_parser()
        args = cli.parse_args(argv, build_parser, require_model=False)
        _validate(args, parser, cli.explicit_dests(build_parser, argv))
        out = Path(args.out) if args.out else None
        if not args.summarise:
            scheme = "inner" if args.inner else "no_val" if args.no_val else "val"
            args.train_folds, args.val_folds, args.test_folds = fold_split(args.folds[0], scheme)  # replaced per fold
            cfg = cli.train_config_from_args(args)
            if scheme == "inner" and cfg.select != "last":
                raise cli.OptionError("--inner needs --select last: the fold that scores a run must choose nothing "
                                      "in it (a recipe sets it with train: select: last)")
            spec = cli.data_spec_from_args(args)
            model_config = cli.model_config_from_args(args)
            if out is None:
                out = cli.default_out("cv_", args.model,
                                      cv_settings(args.model, spec, cfg, args.preset, model_config, scheme))
            run_folds(args.model, spec, cfg, out, args.folds, preset=args.preset, model_config=model_config,
                      resume=not (args.restart or args.no_resume), extra_meta={"cli": argv}, scheme=scheme)
        elif out is None:
            raise cli.OptionError("--summarise needs --out (the CV directory, runs/cv_<model>-<hash>)")
        if not DistInfo.current().main:
            return 0
        summary = summarise(out)
        if not summary["per_fold"]:
            print(f"error: no finished folds under {out}", file=sys.stderr)
            return 2
        print(f"results: {out / 'cv_results.json'} and {out / 'cv_results.csv'}")
        return 0

    return cli.run_cli(body, "interrupted: rerun the same command to resume (finished folds are kept)",
                       debug=cli._debug_flag(argv))


if __name__ == "__main__":
    sys.exit(main())
