"""Ensemble members chosen on the validation fold from a pool of refits, each scored there by a proxy.

A refit trained on every development fold, so it cannot be scored on the validation fold. A pool file
(``recipes/ensembles/*.yaml``) gives each member its ``refits`` (what the member is on the test fold; several
are averaged) and a ``proxy``: the run of the same recipe that held the validation fold out. Named ensembles
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
    proxy: str
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

    def checkpoints(self, ensemble: str, split: str) -> dict[str, dict[str, list[str]]]:
        """``{group: {member: [checkpoint names]}}`` of ``ensemble`` on ``split``: one group per member when
        members weigh the same, one per family when families do; proxies on the validation fold, refits on
        the test fold."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        ens = self.ensembles[ensemble]
        groups: dict[str, dict[str, list[str]]] = {}
        for name in ens.members:
            m = self.members[name]
            key = m.name if ens.weigh == "member" else m.family
            groups.setdefault(key, {})[name] = [m.proxy] if split == "validation" else list(m.refits)
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
        for k in ("family", "proxy") + (("recipe",) if "recipe" in m else ()):
            if not isinstance(m[k], str) or not m[k]:
                raise PoolError(f"{at}.{k}: expected a name")
        members[name] = PoolMember(name, m["family"], _names(m["refits"], f"{at}.refits"), m["proxy"], m.get("recipe"))
    if not members:
        raise PoolError(f"{where}: members: the pool is empty")
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
    """Read and check a pool file (YAML)."""
    import yaml

    try:
        d = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PoolError(f"{path}: {str(exc).splitlines()[0]}") from None
    return parse_pool(d, str(path))


def nested_mean(groups: dict[str, dict[str, list[np.ndarray]]]) -> np.ndarray:
    """The mean over groups of the mean over a group's members of the mean over a member's runs."""
    return np.mean([np.mean([np.mean(runs, axis=0) for runs in g.values()], axis=0) for g in groups.values()], axis=0)


def evaluate(pool: EnsemblePool, ensemble: str, split: str, data_root: str | os.PathLike,
             checkpoint_dir: str | os.PathLike, cache: dict | None = None) -> dict:
    """Accuracy, macro-F1 and mean negative log-likelihood of ``ensemble`` on ``split``'s fold, and each
    member's accuracy (the mean of its runs). ``cache`` keeps each checkpoint's probabilities across calls."""
    from training.ensemble import fold_probabilities
    from training.metrics import multiclass_metrics

    fold = pool.validation_fold if split == "validation" else pool.test_fold
    cache = {} if cache is None else cache
    labels, class_names, probs = None, None, {}
    for gname, group in pool.checkpoints(ensemble, split).items():
        probs[gname] = {}
        for mname, names in group.items():
            runs = []
            for n in names:
                path = Path(checkpoint_dir) / f"{n}.safetensors"
                key = (str(path), fold)
                if key not in cache:
                    cache[key] = fold_probabilities(path, data_root, [fold])
                p, y, meta = cache[key]
                if labels is not None and not np.array_equal(labels, y):
                    raise ValueError(f"{n}: labels differ from the other members'")
                labels, class_names = y, meta["class_names"]
                runs.append(p)
            probs[gname][mname] = runs
    mean = nested_mean(probs)
    metrics = multiclass_metrics(mean, labels, class_names)
    nll = float(-np.mean(np.log(np.clip(mean[np.arange(len(labels)), labels], 1e-12, None))))
    member_acc = {m: float((np.mean(runs, axis=0).argmax(1) == labels).mean())
                  for g in probs.values() for m, runs in g.items()}
    return {"ensemble": ensemble, "split": split, "fold": fold, "n": int(len(labels)), "weigh":
            pool.ensembles[ensemble].weigh, "members": list(pool.ensembles[ensemble].members),
            "acc": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "nll": nll if math.isfinite(nll) else None,
            "member_acc": member_acc}
