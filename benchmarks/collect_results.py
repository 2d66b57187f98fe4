#!/usr/bin/env python
"""The one source of the README's results: tables, summary and figures from committed files.

Reads only committed files (no data, no training, no timing) unless a ``--measure-*`` flag asks:

* ``checkpoints/NAME_esc50.metrics.json`` / ``.history.json``: every shipped model's metrics;
* ``results/models.csv``: per model the README label, CPU epoch time (from the benchmarks) and
  the training command;
* ``results/latency.json``: the one stored latency measurement (``--measure-latency`` runs
  ``benchmarks/bench_inference.py`` and rewrites it; ``--latency-from FILE`` converts a saved
  output of that script);
* ``results/ensembles.json``: probability-mean ensembles on folds 4 and 5 (``--measure-ensembles``
  recomputes them from the shipped checkpoints; needs the ESC-50 data). A member is a model's name (its
  shipped checkpoint), ``NAME+seeds`` (with its seed runs) or a path under the checkpoint directory without
  the suffix (``refit/liquid_s4_mel64_refit``: a checkpoint that is not shipped);
* ``results/attempts.csv``: the accuracy of each attempt per model (fold-4 val / fold-5 test);
* ``results/seeds.csv``: every seed of each final recipe (``recipe,seed,train_folds,run_metrics,test_metrics``:
  the run's ``metrics.json`` for its fold-4 accuracy, the ``inference.py --evaluate --fold 5`` one for its
  fold-5 accuracy), summarised as mean ± sample std per recipe, refits on folds 1-4 listed beside them;
* ``results/cv.csv``: each recipe's 5-fold cross-validation in the literature's protocol (``recipe,fold,metrics``:
  per fold the ``metrics.json`` of the run tested on it after training on the four others; fold 5's is the
  recipe's refit), summarised as the accuracy of each fold and their mean ± sample std.

and writes ``results/summary.json``, ``results/results.md`` (the README's tables),
``results/comparison.png`` and ``results/per_class.png``; ``--update-readme`` also rewrites the
README's tables between their marker comments (``<!-- results:begin -->`` ... ``<!-- results:end -->``,
likewise ``cv`` and ``latency``) and those of the experiment log ``docs/experiments.md`` (``attempts``, ``seeds``): each
table goes to the one document that holds its markers.

    python benchmarks/collect_results.py --update-readme          # offline, seconds (make results)
    nice -n 19 python benchmarks/collect_results.py --measure-latency --threads 1   # re-time (minutes)
    python benchmarks/collect_results.py --measure-ensembles --data-dir ../shared/data/ESC-50
    python benchmarks/collect_results.py --ship liquid_s4=runs/liquid_s4_kd   # copy a run to checkpoints/
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from training import plots, results  # noqa: E402
from training.checkpoint import read_meta  # noqa: E402
from training.latency import parse_bench_inference, read_latency  # noqa: E402
from training.plots import binomial_ci  # noqa: E402

DEFAULT_ENSEMBLES = ("liquid_s4,mamba,vjepa2", "liquid_s4,mamba,vjepa2,cnn",
                     "liquid_s4+seeds,mamba+seeds,vjepa2+seeds", "liquid_s4+seeds,mamba+seeds,vjepa2+seeds,cnn+seeds",
                     # both feature resolutions (ninth session): the refits of the final recipes at 128 and at 64
                     # mel bands, the shipped ones and those they replaced or that did not ship (members fixed
                     # then: the 128-band Liquid-S4 stays one after the tenth session's Liquid-S4 replaced it)
                     "refit/liquid_s4_esc50_long_refit,mamba,vjepa2,refit/liquid_s4_mel64_refit,refit/mamba_esc50_wide_refit,"
                     "refit/vjepa2_bf16_long_refit")
SEEDS = "+seeds"     # a member "NAME+seeds": the shipped checkpoint and checkpoints/seeds/NAME_esc50_seed*, averaged


class UsageError(Exception):
    """Bad arguments or missing inputs: one line on stderr, exit 2."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def read_models_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise UsageError(f"{path}: missing (one row per model: model,label,cpu_epoch_time,command)")
    return pd.read_csv(path, dtype=str, keep_default_na=False).set_index("model")


def measure_latency(results_dir: Path, threads: int, models: list[str]) -> Path:
    """Run benchmarks/bench_inference.py (niced), keep its output, convert it to latency.json."""
    out = results_dir / f"bench_inference{'' if threads == 1 else f'_{threads}threads'}.txt"
    cmd = ["nice", "-n", "19", sys.executable, str(REPO / "benchmarks" / "bench_inference.py"),
           "--threads", str(threads), "--models", ",".join(models)]
    print("running:", " ".join(cmd[3:]), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode:
        raise UsageError(f"bench_inference.py failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    write_text(out, proc.stdout)
    return latency_from(out, results_dir / "latency.json", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def latency_from(bench_txt: Path, dest: Path, recorded: str | None = None) -> Path:
    """Convert a saved ``bench_inference.py`` output into ``results/latency.json``."""
    if not bench_txt.exists():
        raise UsageError(f"{bench_txt}: no such file")
    text = bench_txt.read_text()
    try:
        rows = parse_bench_inference(text)
    except ValueError as exc:
        raise UsageError(f"{bench_txt}: {exc}") from None
    head = text.splitlines()[0] if text else ""
    threads = re.search(r"(\d+) threads", head)
    load = re.search(r"load average after: ([\d.]+)", text)
    cpus = re.search(r"on (\d+) CPUs", text)
    n_threads = int(threads.group(1)) if threads else None
    load1 = float(load.group(1)) if load else None
    info = {"protocol": "one 5-s clip through inference.Predictor (log-mel features included), batch 1: "
                        "median wall time; batch 32: clips per second",
            "command": f"benchmarks/bench_inference.py --threads {n_threads}", "source": display(bench_txt),
            "threads": n_threads, "goal_ms": 10.0, "load_average_after": load1,
            "under_load": bool(load1 and cpus and n_threads and load1 > int(cpus.group(1))),
            "recorded": recorded, "models": rows}
    results.write_json(dest, info)
    return dest


def measure_ensembles(found: dict, data_dir: str, sets: list[list[str]], dest: Path,
                      checkpoint_dir: str | os.PathLike | None = None) -> Path:
    from training.ensemble import ensemble_accuracy

    out, cache = [], {}          # each checkpoint evaluated once per fold, whatever ensembles share it
    for members in sets:
        missing = [m for m in members if not is_checkpoint_member(m)
                   and getattr(found.get(m.removesuffix(SEEDS)), "checkpoint", None) is None]
        if missing:
            raise UsageError(f"ensemble {'+'.join(members)}: no shipped checkpoint for {', '.join(missing)}")
        cks = {m: member_checkpoints(found, m, checkpoint_dir) for m in members}
        absent = [display(c) for cs in cks.values() for c in cs if not c.exists()]
        if absent:
            raise UsageError(f"ensemble {'+'.join(members)}: no such checkpoint: {', '.join(absent)}")
        # a member trained on fold 4 (a refit) makes the ensemble's fold-4 figure meaningless: not measured
        trained_on_4 = any(4 in ((read_meta(c).get("dataset") or {}).get("train_folds") or [])
                           for cs in cks.values() for c in cs)
        val = None if trained_on_4 else ensemble_accuracy(cks, data_dir, folds=[4], cache=cache)
        test = ensemble_accuracy(cks, data_dir, folds=[5], cache=cache)
        out.append({"members": members, "val_acc": val and val["acc"], "test_acc": test["acc"],
                    "n_val": val["n"] if val else 0, "n_test": test["n"], "test_macro_f1": test["macro_f1"],
                    "member_val_acc": val and val["member_acc"], "member_test_acc": test["member_acc"],
                    "checkpoints": {m: [display(c) for c in cs] for m, cs in cks.items()}})
        fold4 = f"fold-4 {val['acc']:.4f}" if val else "fold-4 not measured (a member trained on it)"
        print(f"ensemble {'+'.join(members)}: {fold4}, fold-5 {test['acc']:.4f}")
    results.write_json(dest, {"command": "benchmarks/collect_results.py --measure-ensembles", "ensembles": out})
    return dest


def is_checkpoint_member(member: str) -> bool:
    """An ensemble member given as a path under the checkpoint directory (``refit/NAME``), not a model's name."""
    return "/" in member


def member_label(member: str) -> str:
    """How an ensemble member is shown: a model's name as it is, a checkpoint path by its file name."""
    return member.rsplit("/", 1)[-1]


def member_checkpoints(found: dict, member: str, checkpoint_dir: str | os.PathLike | None = None) -> list[Path]:
    """The checkpoints of an ensemble member: the shipped one, plus its seed runs for ``NAME+seeds``; for a
    path (``refit/NAME``), ``checkpoint_dir/refit/NAME.safetensors``."""
    if is_checkpoint_member(member):
        if checkpoint_dir is None:
            raise UsageError(f"ensemble member {member}: a path needs the checkpoint directory")
        return [Path(checkpoint_dir) / f"{member}.safetensors"]
    name = member.removesuffix(SEEDS)
    shipped = found[name].checkpoint
    if member == name:
        return [shipped]
    return [shipped, *sorted(shipped.parent.glob(f"seeds/{name}_esc50_seed*.safetensors"))]


def write_text(path: Path, text: str) -> Path:
    from training.checkpoint import atomic_write

    atomic_write(path, lambda t: Path(t).write_text(text))
    return path


def display(p) -> str:
    return results.display_path(p)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def _acc(v) -> str:
    return "" if v is None or pd.isna(v) else f"{float(v):.4f}"


def results_table(found: dict, recipes: pd.DataFrame, latency: dict[str, float], ensembles: list[dict]) -> pd.DataFrame:
    rows = []
    order = [m for m in recipes.index if m in found] + [m for m in found if m not in recipes.index]
    for m in order:
        r, met = found[m], found[m].metrics
        rec = recipes.loc[m] if m in recipes.index else pd.Series(dtype=str)
        ci = binomial_ci(met.get("test_acc"), met.get("n_test"))
        rows.append({
            "model": rec.get("label", m), "shipped checkpoint": f"`{display(r.checkpoint).removesuffix('.safetensors')}`",
            "params": f"{met['params']:,}" if met.get("params") else "",
            "fold-4 val": (_acc(met.get("val_acc")) if met.get("val_acc") is not None or met.get("recipe_val_acc") is None
                           else f"trained on (its recipe's run on folds 1-3: {_acc(met['recipe_val_acc'])})"),
            "fold-5 test (95 % CI)": f"**{_acc(met.get('test_acc'))}** ± {ci:.3f}" if met.get("test_acc") is not None else "",
            "test macro-F1": f"{met['test_macro_f1']:.3f}" if met.get("test_macro_f1") is not None else "",
            "epochs (views/epoch)": f"{met.get('epochs_run')} ({met.get('train_items_per_epoch')})",
            "CPU epoch time": rec.get("cpu_epoch_time", ""),
            "CPU latency, batch 1": f"{latency[m]:.1f} ms" if m in latency else "",
            "command": rec.get("command", "")})
    for e in ensembles:
        ci = binomial_ci(e.get("test_acc"), e.get("n_test"))
        label = e.get("label") or "ensemble: " + " + ".join(
            f"{m.removesuffix(SEEDS)} ({len(e['checkpoints'][m])} seeds)"
            if m.endswith(SEEDS) and len(e["checkpoints"][m]) > 1 else member_label(m) for m in e["members"]) + \
            " (mean probability)"
        rows.append({"model": label, "shipped checkpoint": "", "params": "",
                     "fold-4 val": e.get("val_cell") or (_acc(e.get("val_acc")) if e.get("n_val", 1)
                                                         else "a member trained on it"),
                     "fold-5 test (95 % CI)": f"**{_acc(e.get('test_acc'))}** ± {ci:.3f}",
                     "test macro-F1": f"{e['test_macro_f1']:.3f}" if e.get("test_macro_f1") is not None else "",
                     "epochs (views/epoch)": "", "CPU epoch time": "", "CPU latency, batch 1": "",
                     "command": e.get("command") or
                     "`benchmarks/collect_results.py --measure-ensembles` (members fixed in advance)"})
    return pd.DataFrame(rows)


# the pool decisions whose test-fold reads are rows of the results table (results/<file>); a pool of at most
# POOL_NAMED_UP_TO members is labelled by its members' names
POOL_RESULTS = ("ensemble_pool.json", "ensemble_pool_wave.json", "ensemble_pool_wave_s4.json")
POOL_NAMED_UP_TO = 6


def pool_ensembles(info: dict | None) -> list[dict]:
    """The test-fold reads of ``benchmarks/ensemble_pool.py`` (``results/ensemble_pool.json``) as rows of the
    results table: members chosen on the validation fold by proxies, so that cell shows the proxies' figure."""
    rows = []
    for name, t in ((info or {}).get("test") or {}).items():
        weigh = "every family weighing the same" if t["weigh"] == "family" else "every member weighing the same"
        chosen = " (chosen on fold 4)" if (info.get("decision") or {}).get("chosen") == name else ""
        label = (f"ensemble: pool of {len(t['members'])} refits, mean probability with {weigh}{chosen}"
                 if len(t["members"]) > POOL_NAMED_UP_TO else
                 f"ensemble: {' + '.join(t['members'])} (refits; mean probability with {weigh}){chosen}")
        rows.append({"members": t["members"], "test_acc": t["acc"], "n_test": t["n"], "test_macro_f1": t["macro_f1"],
                     "val_acc": info["validation"][name]["acc"], "n_val": info["validation"][name]["n"],
                     "label": label,
                     "val_cell": f"proxies: {info['validation'][name]['acc']:.4f}",
                     "command": f"`benchmarks/ensemble_pool.py --pool {info['pool']} --test`"})
    return rows


ATTEMPT_COLUMNS = {"liquid_s4": "Liquid-S4 (PolyB)", "mamba": "Mamba", "vjepa2": "V-JEPA2 ViT (`mini`)", "cnn": "CNN",
                   "wavecnn": "waveform CNN"}


def attempts_table(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    df = pd.read_csv(path, dtype={"budget": str}, keep_default_na=False)
    def acc(x) -> str:          # an empty cell: that fold was not read; "trained": a refit trained on it
        return {"": "not read", "trained": "trained on"}.get(x) or f"{float(x):g}"

    df["cell"] = [f"{acc(v)} / {acc(t)}" + (f" ({b})" if b else "") for v, t, b in zip(df.val_acc, df.test_acc, df.budget)]
    table = df.pivot(index="attempt", columns="model", values="cell").reindex(list(dict.fromkeys(df.attempt)))
    table = table.fillna("")
    order = [m for m in ATTEMPT_COLUMNS if m in table.columns] + [m for m in table.columns if m not in ATTEMPT_COLUMNS]
    return table[order].rename(columns=ATTEMPT_COLUMNS)


SEED_COLUMNS = ("recipe", "seed", "train_folds", "run_metrics", "test_metrics")


def _read_metrics(path: str, root: Path, where: str) -> dict:
    """A ``metrics.json`` a results table names (``where``: the table's file), or a one-line UsageError."""
    m = results.read_json(root / path)
    if m is None:
        raise UsageError(f"{where}: {path}: no such file")
    return m


def _metric(path: str, key: str, root: Path, where: str = "results/seeds.csv") -> float | None:
    if not path:
        return None
    m = _read_metrics(path, root, where)
    if m.get(key) is None:
        raise UsageError(f"{where}: {path}: no '{key}'")
    return float(m[key])


def _spread(xs: list[float]) -> str:
    """'mean ± sample std (each seed)'; one value alone is just that value."""
    if not xs:
        return ""
    each = ", ".join(f"{x:g}" for x in xs)
    if len(xs) == 1:
        return each
    return f"**{statistics.mean(xs):.3f}** ± {statistics.stdev(xs):.3f} ({each})"


def seeds_table(path: Path, root: Path = REPO) -> pd.DataFrame | None:
    """Per recipe: its folds 1-3 seeds on fold 4 and fold 5 (mean ± sample std), and its refits' fold 5."""
    if not path.exists():
        return None
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if tuple(df.columns) != SEED_COLUMNS:
        raise UsageError(f"{display(path)}: columns must be {','.join(SEED_COLUMNS)}")
    for f in [*df.run_metrics, *df.test_metrics]:
        if f and not (root / f).is_file():
            raise UsageError(f"{display(path)}: {f}: no such file")
    rows = []
    for recipe, g in df.groupby("recipe", sort=False):
        runs, refits = g[g.train_folds == "1-3"], g[g.train_folds == "1-4"]
        if len(runs) + len(refits) != len(g):
            raise UsageError(f"{display(path)}: {recipe}: train_folds must be 1-3 or 1-4")
        val = [_metric(r, "val_acc", root) for r in runs.run_metrics]
        test = [_metric(t, "accuracy", root) for t in runs.test_metrics if t]
        refit = [f"{_metric(t, 'accuracy', root):g} (seed {s})" for s, t in zip(refits.seed, refits.test_metrics)]
        rows.append({"recipe": f"`recipes/{recipe}`", "seeds (folds 1-3)": ", ".join(runs.seed),
                     "fold-4 val": _spread(val), "fold-5 test": _spread(test)
                     + (f" ({len(test)} of {len(runs)} read)" if 0 < len(test) < len(runs) else ""),
                     "refits on folds 1-4: fold-5 test": ", ".join(refit)})
    return pd.DataFrame(rows)


CV_COLUMNS = ("recipe", "fold", "metrics")
CV_FOLDS = (1, 2, 3, 4, 5)


def _fold_accuracy(path: str, root: Path, where: str) -> tuple[float, str | None]:
    """(test accuracy, model) of one fold: a training run's ``metrics.json`` (``test_acc``) or an
    ``inference.py --evaluate`` one (``accuracy``)."""
    m = _read_metrics(path, root, where)
    acc = m.get("test_acc", m.get("accuracy"))
    if acc is None:
        raise UsageError(f"{where}: {path}: no 'test_acc' or 'accuracy'")
    return float(acc), m.get("model")


def cv_rows(path: Path, root: Path = REPO) -> list[dict]:
    """Per recipe, its 5-fold cross-validation in the literature's protocol (each fold tested after training on
    the four others): the accuracy of each fold and their mean and sample std (``results/cv.csv``: a
    ``recipe,fold,metrics`` row per fold; fold 5's run is the recipe's refit on folds 1-4)."""
    if not path.exists():
        return []
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    where = display(path)
    if tuple(df.columns) != CV_COLUMNS:
        raise UsageError(f"{where}: columns must be {','.join(CV_COLUMNS)}")
    rows = []
    for recipe, g in df.groupby("recipe", sort=False):
        folds = {}
        models = set()
        for fold, metrics in zip(g.fold, g.metrics):
            if not fold.isdigit() or int(fold) not in CV_FOLDS:
                raise UsageError(f"{where}: {recipe}: fold must be one of 1-5, got '{fold}'")
            if int(fold) in folds:
                raise UsageError(f"{where}: {recipe}: fold {fold} listed twice")
            folds[int(fold)], model = _fold_accuracy(metrics, root, where)
            models.add(model)
        if len(models - {None}) > 1:
            raise UsageError(f"{where}: {recipe}: its folds' files name different models ({', '.join(sorted(models - {None}))})")
        accs = [folds[k] for k in sorted(folds)]
        rows.append({"recipe": recipe, "model": next(iter(models - {None}), None), "folds": folds,
                     "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "n": len(accs), "files": list(g.metrics)})
    return rows


def cv_summary(rows: list[dict]) -> list[dict]:
    """``cv_rows`` as ``results/summary.json`` holds them (JSON keys: the folds as strings)."""
    return [{k: r[k] for k in ("recipe", "model", "mean", "std", "n")}
            | {"folds": {str(k): v for k, v in sorted(r["folds"].items())}, "files": r["files"]} for r in rows]


def cv_table(rows: list[dict]) -> pd.DataFrame | None:
    if not rows:
        return None
    return pd.DataFrame([{"model": r["model"] or "", "recipe": f"`recipes/{r['recipe']}`",
                          **{f"fold {k}": f"{r['folds'][k]:.4f}" if k in r["folds"] else "not run" for k in CV_FOLDS},
                          "mean ± sample std": (f"**{r['mean']:.4f}** ± {r['std']:.4f}" if r["n"] > 1 else "")
                          + ("" if r["n"] == len(CV_FOLDS) else f" ({r['n']} of {len(CV_FOLDS)} folds)")}
                         for r in rows])


def latency_table(info: dict) -> pd.DataFrame | None:
    rows = info.get("models") or {}
    if not rows:
        return None
    goal = info.get("goal_ms") or 10.0
    return pd.DataFrame([{"model": n, "params": f"{m['params']:,}", "batch-1 p50": f"{m['batch1_ms']:.1f} ms",
                          f"/ {goal:g}-ms goal": f"{m['batch1_ms'] / goal:.2f}x",
                          "batch 32 throughput": f"{m['batch32_clips_per_s']:.0f} clips/s", "weights": m.get("weights", "")}
                         for n, m in rows.items()])


def markdown(df: pd.DataFrame, index: bool = False) -> str:
    right = {"params", "fold-4 val", "fold-5 test (95 % CI)", "test macro-F1", "epochs (views/epoch)",
             *(f"fold {k}" for k in CV_FOLDS), "mean ± sample std",
             "CPU latency, batch 1", "batch-1 p50", "batch 32 throughput"}
    cols = ([df.index.name or ""] if index else []) + list(df.columns)
    align = tuple("right" if (c in right or c.startswith("/") or c in ATTEMPT_COLUMNS.values())
                  else "left" for c in cols)
    text = df.to_markdown(index=index, colalign=align, disable_numparse=True)
    # unpadded cells: a changed number changes one line of the README, not the whole table
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()]
    rows[1] = [("---:" if c.endswith(":") and not c.startswith(":-") else "---") for c in rows[1]]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def latency_note(info: dict) -> str:
    if not info:
        return "No latency measured (`results/latency.json` missing)."
    load = f"; load average {info['load_average_after']:.2f} after the run" if info.get("load_average_after") else ""
    busy = " **Taken under load** (more runnable processes than cores): absolute figures are pessimistic." \
        if info.get("under_load") else ""
    when = f" on {info['recorded']}" if info.get("recorded") else ""
    return (f"Latency: `{info.get('command')}` ({info.get('protocol')}), {info.get('threads')} thread(s), "
            f"recorded{when} in `{info.get('source')}`{load}.{busy}")


def replace_between_markers(text: str, name: str, block: str, where: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise UsageError(f"{where}: needs exactly one '{begin}' before one '{end}'")
    i, j = text.index(begin) + len(begin), text.index(end)
    return text[:i] + "\n" + block.strip("\n") + "\n" + text[j:]


def update_documents(paths: list[Path], tables: dict[str, str]) -> list[Path]:
    """Rewrite each table between its markers in the one document of ``paths`` that holds them (the README,
    the experiment log); nothing is written unless every table has its place."""
    texts = {p: p.read_text() for p in paths if p.exists()}
    if not texts:
        raise UsageError(f"{display(paths[0])}: no such file")
    for name, block in tables.items():
        begin = f"<!-- {name}:begin -->"
        holders = [p for p, t in texts.items() if begin in t]
        if len(holders) != 1:
            raise UsageError(f"{' and '.join(map(display, holders))}: '{begin}' belongs in one only" if holders else
                             f"{' or '.join(map(display, texts))}: needs exactly one '{begin}' before one "
                             f"'<!-- {name}:end -->'")
        texts[holders[0]] = replace_between_markers(texts[holders[0]], name, block, display(holders[0]))
    return [write_text(p, t) for p, t in texts.items()]


# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/collect_results.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ship", action="append", metavar="NAME=RUN_DIR", default=[],
                   help="first copy RUN_DIR's best checkpoint, history and metrics to CHECKPOINT_DIR/NAME_esc50.*")
    p.add_argument("--force", action="store_true", help="with --ship: replace even a better shipped checkpoint")
    p.add_argument("--checkpoint-dir", default=str(REPO / "checkpoints"))
    p.add_argument("--results-dir", default=str(REPO / "results"))
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument("--log", default=None, help="the experiment log, whose tables --update-readme rewrites too "
                   "(default: docs/experiments.md beside the README)")
    p.add_argument("--update-readme", action="store_true",
                   help="rewrite the tables between their markers in the README and the experiment log")
    p.add_argument("--models", default=",".join((*results.MAIN_MODELS, *results.BASELINES)))
    p.add_argument("--measure-latency", action="store_true",
                   help="re-time every model with benchmarks/bench_inference.py (minutes; niced) into latency.json")
    p.add_argument("--threads", type=int, default=1, help="with --measure-latency / --measure-ensembles: torch threads")
    p.add_argument("--latency-from", metavar="BENCH_TXT", help="convert a saved bench_inference.py output into latency.json")
    p.add_argument("--measure-ensembles", action="store_true", help="recompute results/ensembles.json (needs the data)")
    p.add_argument("--ensemble", action="append", metavar="A,B,C", default=None,
                   help=f"members of one ensemble (repeatable; default: {' and '.join(DEFAULT_ENSEMBLES)})")
    p.add_argument("--data-dir", default=None, help="ESC-50 root for --measure-ensembles (default: as train.py)")
    p.add_argument("--no-plots", action="store_true")
    return p


def run(args) -> int:
    from training.shipping import ship_checkpoint

    res_dir = Path(args.results_dir)
    for item in args.ship:
        name, _, run_dir = item.partition("=")
        if not name or not run_dir:
            raise UsageError(f"--ship expects NAME=RUN_DIR, got '{item}'")
        try:
            ship_checkpoint(run_dir, name, args.checkpoint_dir, force=args.force)
        except FileNotFoundError as exc:
            raise UsageError(f"--ship {item}: {exc}") from None
    found = results.find_results(args.checkpoint_dir, None, [m for m in args.models.split(",") if m])
    if not found:
        raise UsageError(f"no shipped checkpoints with metrics in {args.checkpoint_dir}")
    if args.measure_latency:
        measure_latency(res_dir, args.threads, sorted(found))
    elif args.latency_from:
        latency_from(Path(args.latency_from), res_dir / "latency.json")
    if args.measure_ensembles:
        import torch

        from training.data import default_esc50_dir
        torch.set_num_threads(args.threads)
        sets = [[m for m in s.split(",") if m] for s in (args.ensemble or DEFAULT_ENSEMBLES)]
        measure_ensembles(found, args.data_dir or str(default_esc50_dir()), sets, res_dir / "ensembles.json",
                          args.checkpoint_dir)

    recipes = read_models_csv(res_dir / "models.csv")
    latency, lat_info = read_latency(res_dir / "latency.json")
    ensembles = (results.read_json(res_dir / "ensembles.json", {}) or {}).get("ensembles", [])
    for name in POOL_RESULTS:
        ensembles += pool_ensembles(results.read_json(res_dir / name))
    tables = {"results": markdown(results_table(found, recipes, latency, ensembles)) + "\n\n"
              "± is the half-width of the 95 % binomial confidence interval of the test accuracy. CPU latency: "
              "`results/latency.json` (the latency table below)."}
    attempts = attempts_table(res_dir / "attempts.csv")
    if attempts is not None:
        tables["attempts"] = markdown(attempts, index=True)
    seeds = seeds_table(res_dir / "seeds.csv", res_dir.parent)
    if seeds is not None:
        tables["seeds"] = markdown(seeds)
    cross_validation = cv_rows(res_dir / "cv.csv", res_dir.parent)
    cv = cv_table(cross_validation)
    if cv is not None:
        tables["cv"] = markdown(cv)
    lat = latency_table(lat_info)
    tables["latency"] = (markdown(lat) if lat is not None else "") + "\n\n" + latency_note(lat_info)

    md = ["<!-- generated by benchmarks/collect_results.py from checkpoints/*.metrics.json and results/; "
          "do not edit -->"]
    for name, title in (("results", "Results on ESC-50 (fold 5 held out)"), ("attempts", "What each attempt gave "
                        "(fold-4 val / fold-5 test)"), ("seeds", "Seeds of each recipe"), ("cv", "5-fold cross-validation (four training folds each)"),
                        ("latency", "CPU inference latency")):
        if name in tables:
            md += ["", f"## {title}", "", tables[name]]
    write_text(res_dir / "results.md", "\n".join(md) + "\n")
    lat_summary = {k: v for k, v in lat_info.items() if k != "models"}
    summary = results.summary(found, latency, ensembles, lat_summary)
    summary["cross_validation"] = cv_summary(cross_validation)
    results.write_json(res_dir / "summary.json", summary)
    written = [res_dir / "summary.json", res_dir / "results.md"]
    if not args.no_plots:
        import matplotlib
        matplotlib.use("Agg")
        label = f"CPU latency, batch 1, features included (ms, {lat_info.get('threads', '?')} thread(s))"
        written.append(plots.save_figure(plots.comparison_figure(found, latency, ensembles, latency_label=label),
                                         res_dir / "comparison.png"))
        written.append(plots.save_figure(plots.plot_per_class(found), res_dir / "per_class.png"))
    if args.update_readme:
        readme = Path(args.readme)
        written += update_documents([readme, Path(args.log) if args.log else readme.parent / "docs" / "experiments.md"],
                                    tables)
    print(tables["results"])
    print("wrote " + ", ".join(display(p) for p in written))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
