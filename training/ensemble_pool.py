"""Ensemble members chosen on the validation fold from a pool of refits, each scored there by a proxy.

A refit trained on every development fold, so it cannot be scored on the validation fold. A pool file
(``recipes/ensembles/*.yaml``) gives each member its ``refits`` (what the member is on the test fold; several
are averaged) and a ``proxy``: either the checkpoint of the same recipe's run that held the validation fold
out (scored there), or the per-clip validation predictions of such runs (``val_predictions.csv`` files, one
per validation fold: the out-of-fold predictions of ``python -m training.cv --inner``, so that members are
chosen on every development fold's clips instead of one fold's). A pool uses one kind of proxy throughout. Named ensembles
list members and how they are weighed: ``member`` (each member the same) or ``family`` (each family the same,
its members averaged first). The decision rule: the best of ``candidates`` on the validation fold (earlier
wins a tie) replaces ``baseline`` when it is at least ``margin`` more accurate. The test fold is read only
by :func:`evaluate` with ``split="test"``, which a caller runs after the decision.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("validation", "test")
WEIGHTS = ("member", "family")


class PoolError(ValueError):
    """A pool file that does not say what it must: one line naming the file and the key."""


@dataclass(frozen=True)
class PoolMember:
    name: str
    family: str
    refits: tuple[str, ...]
    proxy: tuple[str, ...]          # one checkpoint name, or one or more predictions files (.csv)
    recipe: str | None = None


@dataclass(frozen=True)
class PoolEnsemble:
    name: str
    members: tuple[str, ...]
    weigh: str


@dataclass(frozen=True)
class EnsemblePool:
    members: dict[str, PoolMember]
    ensembles: dict[str, PoolEnsemble]
    baseline: str
    candidates: tuple[str, ...]
    margin: float
    validation_fold: int
    test_fold: int

    @property
    def proxies_are_predictions(self) -> bool:
        """Whether the proxies are predictions files (else checkpoints scored on the validation fold)."""
        return next(iter(self.members.values())).proxy[0].endswith(".csv")

    def checkpoints(self, ensemble: str, split: str) -> dict[str, dict[str, list[str]]]:
        """``{group: {member: [names]}}`` of ``ensemble`` on ``split``: one group per member when members
        weigh the same, one per family when families do; proxies on the validation split (checkpoint names
        or predictions files), refits (checkpoint names) on the test fold."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        ens = self.ensembles[ensemble]
        groups: dict[str, dict[str, list[str]]] = {}
        for name in ens.members:
            m = self.members[name]
            key = m.name if ens.weigh == "member" else m.family
            groups.setdefault(key, {})[name] = list(m.proxy if split == "validation" else m.refits)
        return groups

    def decide(self, accuracy: dict[str, float]) -> dict[str, Any]:
        """The rule on validation accuracies ``{ensemble: acc}``: the best candidate (the earlier on a tie)
        and whether it replaces the baseline (at least ``margin`` better, up to rounding)."""
        best = max(self.candidates, key=lambda c: (accuracy[c], -self.candidates.index(c)))
        gain = accuracy[best] - accuracy[self.baseline]
        replaces = gain >= self.margin - 1e-9
        return {"best_candidate": best, "gain": gain, "margin": self.margin, "replaces_baseline": replaces,
                "chosen": best if replaces else self.baseline}


def _keys(d: Any, allowed: set[str], required: set[str], where: str) -> dict:
    if not isinstance(d, dict):
        raise PoolError(f"{where}: expected a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise PoolError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(d))
    if missing:
        raise PoolError(f"{where}: missing key(s) {', '.join(missing)}")
    return d


def _names(v: Any, where: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise PoolError(f"{where}: expected a non-empty list of names")
    if len(set(v)) != len(v):
        raise PoolError(f"{where}: a name appears twice")
    return tuple(v)


def _fold(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise PoolError(f"{where}: expected a fold number >= 1, got {v!r}")
    return v


def parse_pool(d: Any, where: str = "pool") -> EnsemblePool:
    """An :class:`EnsemblePool` from a parsed pool file, every key checked (unknown ones refused)."""
    d = _keys(d, {"validation_fold", "test_fold", "margin", "baseline", "candidates", "members", "ensembles"},
              {"validation_fold", "test_fold", "baseline", "candidates", "members", "ensembles"}, where)
    val, test = _fold(d["validation_fold"], f"{where}: validation_fold"), _fold(d["test_fold"], f"{where}: test_fold")
    if val == test:
        raise PoolError(f"{where}: the validation fold is the test fold ({val})")
    margin = d.get("margin", 0.01)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise PoolError(f"{where}: margin: expected a number in [0, 1), got {margin!r}")
    members = {}
    for name, m in _keys(d["members"], set(d["members"] or {}), set(), f"{where}: members").items():
        at = f"{where}: members.{name}"
        m = _keys(m, {"family", "refits", "proxy", "recipe"}, {"family", "refits", "proxy"}, at)
        for k in ("family",) + (("recipe",) if "recipe" in m else ()):
            if not isinstance(m[k], str) or not m[k]:
                raise PoolError(f"{at}.{k}: expected a name")
        proxy = (m["proxy"],) if isinstance(m["proxy"], str) and m["proxy"] else _names(m["proxy"], f"{at}.proxy")
        if len(proxy) > 1 and not all(p.endswith(".csv") for p in proxy):
            raise PoolError(f"{at}.proxy: several proxies must all be predictions files (.csv)")
        members[name] = PoolMember(name, m["family"], _names(m["refits"], f"{at}.refits"), proxy, m.get("recipe"))
    if not members:
        raise PoolError(f"{where}: members: the pool is empty")
    if len({m.proxy[0].endswith(".csv") for m in members.values()}) > 1:
        raise PoolError(f"{where}: members: some proxies are predictions files and some checkpoints; use one kind")
    ensembles = {}
    for name, e in _keys(d["ensembles"], set(d["ensembles"] or {}), set(), f"{where}: ensembles").items():
        at = f"{where}: ensembles.{name}"
        e = _keys(e, {"members", "weigh"}, {"members", "weigh"}, at)
        chosen = tuple(members) if e["members"] == "all" else _names(e["members"], f"{at}.members")
        unknown = [m for m in chosen if m not in members]
        if unknown:
            raise PoolError(f"{at}.members: not in the pool: {', '.join(unknown)}")
        if e["weigh"] not in WEIGHTS:
            raise PoolError(f"{at}.weigh: expected one of {', '.join(WEIGHTS)}, got {e['weigh']!r}")
        ensembles[name] = PoolEnsemble(name, chosen, e["weigh"])
    candidates = _names(d["candidates"], f"{where}: candidates")
    for k, names in (("baseline", (d["baseline"],)), ("candidates", candidates)):
        unknown = [n for n in names if n not in ensembles]
        if unknown:
            raise PoolError(f"{where}: {k}: no such ensemble: {', '.join(map(str, unknown))}")
    if d["baseline"] in candidates:
        raise PoolError(f"{where}: the baseline {d['baseline']} is also a candidate")
    return EnsemblePool(members, ensembles, d["baseline"], candidates, float(margin), val, test)


def load_pool(path: str | os.PathLike) -> EnsemblePool:
    """Read and check a pool file (YAML). ``extends: OTHER.yaml`` (relative to the file) starts from that pool:
    its ``members`` are kept and the file's added (a name in both: the file's), and every other key the file
    gives replaces the base's (a pool that adds members states its own ``ensembles``, ``baseline`` and
    ``candidates``)."""
    return parse_pool(_read_pool(Path(path)), str(path))


def _read_pool(path: Path, _seen: tuple = ()) -> Any:
    import yaml

    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PoolError(f"{path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(d, dict) or "extends" not in d:
        return d
    d = dict(d)
    base = d.pop("extends")
    if not isinstance(base, str) or not base:
        raise PoolError(f"{path}: extends: expected a pool file name")
    base_path = (path.parent / base).resolve()
    if base_path in _seen + (path.resolve(),):
        raise PoolError(f"{path}: extends {base}, which makes a cycle")
    parent = _read_pool(base_path, _seen + (path.resolve(),))
    if not isinstance(parent, dict) or not isinstance(parent.get("members"), dict):
        raise PoolError(f"{path}: extends {base}, which has no members")
    return {**parent, **d, "members": {**parent["members"], **(d.get("members") or {})}}


def nested_mean(groups: dict[str, dict[str, list[np.ndarray]]]) -> np.ndarray:
    """The mean over groups of the mean over a group's members of the mean over a member's runs."""
    return np.mean([np.mean([np.mean(runs, axis=0) for runs in g.values()], axis=0) for g in groups.values()], axis=0)


def proxy_predictions(files: list[str], root: str | os.PathLike,
                      test_fold: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """``(probs, labels, class_names, clips)`` of one member's predictions files, their rows sorted by clip. Refuses a
    clip in two files, and an ESC-50-named clip (``<fold>-...``) of the test fold."""
    import pandas as pd

    from training.results import read_predictions

    frames = [read_predictions(Path(root) / f) for f in files]
    df = pd.concat(frames)
    if df.index.duplicated().any():
        raise PoolError(f"{', '.join(files)}: clip {df.index[df.index.duplicated()][0]} appears in two files")
    leaked = [c for c in df.index if str(c).split("-", 1)[0] == str(test_fold)]
    if leaked:
        raise PoolError(f"{', '.join(files)}: clip {leaked[0]} is from the test fold {test_fold}")
    df = df.sort_index()
    cols = [c for c in df.columns if c.startswith("p_")]
    if any([c for c in f.columns if c.startswith("p_")] != cols for f in frames):
        raise PoolError(f"{', '.join(files)}: the files' class columns differ")
    class_names = [c.removeprefix("p_") for c in cols]
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted(set(df["true"]) - set(index))
    if unknown:
        raise PoolError(f"{', '.join(files)}: true class {unknown[0]} has no p_ column")
    return (df[cols].to_numpy(np.float64), df["true"].map(index).to_numpy(np.int64), class_names,
            [str(c) for c in df.index])


def evaluate(pool: EnsemblePool, ensemble: str, split: str, data_root: str | os.PathLike,
             checkpoint_dir: str | os.PathLike, cache: dict | None = None,
             predictions_root: str | os.PathLike = ".") -> dict:
    """Accuracy, macro-F1 and mean negative log-likelihood of ``ensemble`` on ``split`` (the validation fold,
    or the clips of the proxies' predictions files; the test fold), and each member's accuracy (the mean of
    its runs). ``cache`` keeps each checkpoint's probabilities across calls; predictions files are read
    relative to ``predictions_root``."""
    from training.engine import metrics_with_loss
    from training.ensemble import cached_fold_probabilities

    files = split == "validation" and pool.proxies_are_predictions
    fold = pool.validation_fold if split == "validation" else pool.test_fold
    cache = {} if cache is None else cache
    labels, class_names, clips, probs, first = None, None, None, {}, None
    for gname, group in pool.checkpoints(ensemble, split).items():
        probs[gname] = {}
        for mname, names in group.items():
            if files:
                p, y, cn, member_clips = proxy_predictions(names, predictions_root, pool.test_fold)
                if clips is not None and member_clips != clips:
                    raise PoolError(f"{mname}: its predictions cover other clips than {first}'s")
                clips = member_clips
                found = [(p, y, cn, mname)]
            else:
                found = []
                for n in names:
                    p, y, meta = cached_fold_probabilities(cache, Path(checkpoint_dir) / f"{n}.safetensors",
                                                           data_root, [fold])
                    found.append((p, y, list(meta["class_names"]), n))
            for p, y, cn, n in found:
                if labels is not None and (not np.array_equal(labels, y) or cn != class_names):
                    raise PoolError(f"{n}: its clips, labels or classes differ from {first}'s")
                labels, class_names, first = y, cn, first or n
            probs[gname][mname] = [f[0] for f in found]
    mean = nested_mean(probs)
    metrics = metrics_with_loss(mean, labels, class_names)
    nll = metrics["loss"]
    member_acc = {m: float((np.mean(runs, axis=0).argmax(1) == labels).mean())
                  for g in probs.values() for m, runs in g.items()}
    return {"ensemble": ensemble, "split": split, "fold": None if files else fold, "n": int(len(labels)), "weigh":
            pool.ensembles[ensemble].weigh, "members": list(pool.ensembles[ensemble].members),
            "acc": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "nll": nll if math.isfinite(nll) else None,
            "member_acc": member_acc}
