"""training.ensemble_pool and benchmarks/ensemble_pool.py: members chosen on the validation fold through
proxies, weighed per member or per family, the test fold read only on request."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from scripts import load_script
from training.ensemble_pool import EnsemblePool, PoolError, load_pool, nested_mean, parse_pool

REPO = Path(__file__).resolve().parent.parent

POOL = {
    "validation_fold": 4, "test_fold": 5, "margin": 0.01, "baseline": "two", "candidates": ["all", "by_family"],
    "members": {"a": {"family": "x", "refits": ["ra"], "proxy": "pa"},
                "b": {"family": "x", "refits": ["rb1", "rb2"], "proxy": "pb"},
                "c": {"family": "y", "refits": ["rc"], "proxy": "pc", "recipe": "c.yaml"}},
    "ensembles": {"two": {"members": ["a", "c"], "weigh": "member"},
                  "all": {"members": "all", "weigh": "member"},
                  "by_family": {"members": "all", "weigh": "family"}},
}


def test_groups_follow_the_weighing_and_the_split():
    pool = parse_pool(POOL)
    assert pool.checkpoints("all", "validation") == {"a": {"a": ["pa"]}, "b": {"b": ["pb"]}, "c": {"c": ["pc"]}}
    assert pool.checkpoints("by_family", "test") == {"x": {"a": ["ra"], "b": ["rb1", "rb2"]}, "y": {"c": ["rc"]}}
    assert pool.ensembles["all"].members == ("a", "b", "c")
    with pytest.raises(ValueError, match="split"):
        pool.checkpoints("all", "train")


def test_nested_mean_weighs_groups_then_members_then_runs():
    one = lambda v: np.array([[v, 1 - v]])  # noqa: E731
    # family x: member a (0.9), member b = mean of runs 0.1 and 0.3 (0.2): family 0.55; family y 0.0: 0.275
    got = nested_mean({"x": {"a": [one(0.9)], "b": [one(0.1), one(0.3)]}, "y": {"c": [one(0.0)]}})
    np.testing.assert_allclose(got, one(0.275))
    # every member its own group: (0.9 + 0.2 + 0.0) / 3
    got = nested_mean({"a": {"a": [one(0.9)]}, "b": {"b": [one(0.1), one(0.3)]}, "c": {"c": [one(0.0)]}})
    np.testing.assert_allclose(got, one(1.1 / 3))


@pytest.mark.parametrize("acc, chosen, replaces", [
    ({"two": 0.80, "all": 0.81, "by_family": 0.805}, "all", True),      # exactly the margin passes
    ({"two": 0.80, "all": 0.8075, "by_family": 0.8075}, "two", False),  # below the margin: the baseline stays
    ({"two": 0.80, "all": 0.82, "by_family": 0.82}, "all", True),       # a tie goes to the earlier candidate
    ({"two": 0.80, "all": 0.81, "by_family": 0.83}, "by_family", True),
])
def test_the_rule(acc, chosen, replaces):
    d = parse_pool(POOL).decide(acc)
    assert d["chosen"] == chosen and d["replaces_baseline"] is replaces


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(extra=1), "unknown key"),
    (lambda d: d["members"]["a"].update(weight=2), r"members\.a: unknown key\(s\) weight"),
    (lambda d: d["members"]["a"].pop("proxy"), r"members\.a: missing key\(s\) proxy"),
    (lambda d: d["members"]["a"].update(refits=[]), r"members\.a\.refits: expected a non-empty list"),
    (lambda d: d["ensembles"]["two"].update(members=["a", "z"]), "not in the pool: z"),
    (lambda d: d["ensembles"]["two"].update(weigh="clip"), "weigh: expected one of member, family"),
    (lambda d: d.update(baseline="nope"), "baseline: no such ensemble: nope"),
    (lambda d: d.update(candidates=["two", "all"]), "the baseline two is also a candidate"),
    (lambda d: d.update(test_fold=4), "the validation fold is the test fold"),
    (lambda d: d.update(validation_fold=True), "validation_fold: expected a fold number"),
    (lambda d: d.update(margin="0.01"), "margin: expected a number"),
    (lambda d: d.update(members={}), "the pool is empty"),
])
def test_a_bad_pool_is_refused_with_the_key_named(edit, message):
    d = copy.deepcopy(POOL)
    edit(d)
    with pytest.raises(PoolError, match=message):
        parse_pool(d)


@pytest.mark.parametrize("name", ["esc50_pool", "esc50_pool_w2048"])
def test_the_committed_pools_parse_and_name_committed_checkpoints(name):
    pool = load_pool(REPO / "recipes" / "ensembles" / f"{name}.yaml")
    assert isinstance(pool, EnsemblePool) and pool.validation_fold == 4 and pool.test_fold == 5
    names = {n for m in pool.members.values() for n in (*m.proxy, *m.refits)}
    assert not pool.proxies_are_predictions
    assert all((REPO / "checkpoints" / f"{n}.safetensors").is_file() for n in names)
    for m in pool.members.values():
        assert m.recipe is None or (REPO / "recipes" / f"{m.recipe}.yaml").is_file()


def test_a_pool_extends_another_with_members_added_and_its_own_decision(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(POOL))
    child = {"extends": "base.yaml", "baseline": "two", "candidates": ["all"],
             "members": {"d": {"family": "y", "refits": ["rd"], "proxy": "pd"}},
             "ensembles": {"two": {"members": ["a", "c"], "weigh": "member"}, "all": {"members": "all", "weigh": "member"}}}
    (tmp_path / "child.yaml").write_text(yaml.safe_dump(child))
    base, pool = load_pool(tmp_path / "base.yaml"), load_pool(tmp_path / "child.yaml")
    assert list(pool.members) == [*base.members, "d"] and all(pool.members[k] == v for k, v in base.members.items())
    assert set(pool.ensembles) == {"two", "all"} and pool.ensembles["all"].members == (*base.members, "d")
    assert (pool.validation_fold, pool.test_fold, pool.margin) == (base.validation_fold, base.test_fold, base.margin)
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump({**child, "extends": "loop.yaml"}))
    with pytest.raises(PoolError, match="makes a cycle"):
        load_pool(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text(yaml.safe_dump({**child, "extends": "absent.yaml"}))
    with pytest.raises(PoolError, match="absent.yaml"):
        load_pool(tmp_path / "orphan.yaml")


def test_the_rule_n_pool_is_rule_m_s_pool_plus_one_member():
    m = load_pool(REPO / "recipes" / "ensembles" / "esc50_pool.yaml")
    n = load_pool(REPO / "recipes" / "ensembles" / "esc50_pool_w2048.yaml")
    assert list(n.members) == [*m.members, "vjepa2_w2048"] and all(n.members[k] == v for k, v in m.members.items())
    assert n.ensembles["pool_by_family"].members == m.ensembles["pool_by_family"].members
    assert n.ensembles["pool_by_family_w2048"].members == (*m.members, "vjepa2_w2048")


def _train(esc50_flac, out: Path, seed: int, folds: str) -> Path:
    from training import cli

    val = ["--val-folds="] if folds == "1,2,3,4" else []
    assert cli.main(["--model", "mlp", "--preset", "tiny", "--data-dir", str(esc50_flac), "--epochs", "1",
                     "--batch-size", "6", "--no-progress", "--threads", "1", "--no-augment", "--select", "last",
                     "--seed", str(seed), "--test-folds", "", "--train-folds", folds, *val, "--out", str(out)]) == 0
    return out / "best.safetensors"


def test_the_script_scores_proxies_then_reads_the_test_fold_only_when_asked(esc50_flac, tmp_path, capsys):
    from training.ensemble import fold_probabilities
    from training.metrics import multiclass_metrics

    ck = tmp_path / "ck"
    for name, seed, folds in (("pa", 0, "1,2,3"), ("pb", 1, "1,2,3"), ("pc", 2, "1,2,3"),
                              ("ra", 0, "1,2,3,4"), ("rb1", 1, "1,2,3,4"), ("rb2", 3, "1,2,3,4"), ("rc", 2, "1,2,3,4")):
        _train(esc50_flac, ck / name, seed, folds)
    pool_file = tmp_path / "pool.yaml"
    d = copy.deepcopy(POOL)
    for m in d["members"].values():
        m["proxy"] = f"{m['proxy']}/best"
        m["refits"] = [f"{r}/best" for r in m["refits"]]
    d["margin"] = 0.0
    pool_file.write_text(yaml.safe_dump(d))
    script = load_script("benchmarks/ensemble_pool.py")
    out = tmp_path / "pool.json"
    args = ["--pool", str(pool_file), "--checkpoint-dir", str(ck), "--data-dir", str(esc50_flac), "--threads", "1",
            "--out", str(out)]
    assert script.main(args) == 0
    res = json.loads(out.read_text())
    assert "test" not in res and set(res["validation"]) == {"two", "all", "by_family"}
    # the family-weighted figure is the nested mean of the proxies' probabilities on fold 4
    p = {n: fold_probabilities(ck / n / "best.safetensors", esc50_flac, [4]) for n in ("pa", "pb", "pc")}
    y, names = p["pa"][1], p["pa"][2]["class_names"]
    fam = ((p["pa"][0] + p["pb"][0]) / 2 + p["pc"][0]) / 2
    assert res["validation"]["by_family"]["acc"] == multiclass_metrics(fam, y, names)["accuracy"]
    assert res["validation"]["by_family"]["fold"] == 4 and res["validation"]["by_family"]["n"] == len(y)
    assert res["decision"] == parse_pool(d).decide({e: v["acc"] for e, v in res["validation"].items()})
    assert "rule: best candidate" in capsys.readouterr().out

    assert script.main([*args, "--test"]) == 0
    res = json.loads(out.read_text())
    # a later run without --test does not drop the committed test-fold part
    assert script.main(args) == 2
    assert "holds a test-fold part" in capsys.readouterr().err and json.loads(out.read_text()) == res
    assert set(res["test"]) == {"all", "by_family"} and res["test"]["all"]["fold"] == 5
    q = {n: fold_probabilities(ck / n / "best.safetensors", esc50_flac, [5])[0] for n in ("ra", "rb1", "rb2", "rc")}
    y5 = fold_probabilities(ck / "ra" / "best.safetensors", esc50_flac, [5])[1]
    every = (q["ra"] + (q["rb1"] + q["rb2"]) / 2 + q["rc"]) / 3
    assert res["test"]["all"]["acc"] == multiclass_metrics(every, y5, names)["accuracy"]

    # the pool's rows in the README's results table: the proxies' figure in the fold-4 cell
    cr = load_script("benchmarks/collect_results.py")
    rows = cr.pool_ensembles({**res, "pool": "pool.yaml"})
    assert [r["test_acc"] for r in rows] == [res["test"]["all"]["acc"], res["test"]["by_family"]["acc"]]
    table = cr.results_table({}, cr.pd.DataFrame(), {}, rows)
    assert table["fold-4 val"].iloc[0] == f"proxies: {res['validation']['all']['acc']:.4f}"
    assert table["command"].iloc[1] == "`benchmarks/ensemble_pool.py --pool pool.yaml --test`"
    assert "every family weighing the same" in table["model"].iloc[1]
    # a small pool is named by its members; a large one by its size
    assert " + ".join(res["test"]["all"]["members"]) in table["model"].iloc[0]
    cr.POOL_NAMED_UP_TO = 2
    assert cr.pool_ensembles({**res, "pool": "pool.yaml"})[0]["label"].startswith("ensemble: pool of 3 refits")


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    script = load_script("benchmarks/ensemble_pool.py")
    bad = tmp_path / "bad.yaml"
    bad.write_text("members: [\n")
    assert script.main(["--pool", str(bad)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    good = tmp_path / "pool.yaml"
    good.write_text(yaml.safe_dump(POOL))
    assert script.main(["--pool", str(good), "--checkpoint-dir", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no such file") and "pa.safetensors" in err and err.count("\n") == 1


def _oof(tmp_path: Path, name: str, fold: int, probs, labels, classes=("a", "b")) -> str:
    """A val_predictions.csv of clips ``<fold>-<i>.wav``, as training writes it."""
    from training.results import write_predictions

    path = tmp_path / name / f"fold{fold}.csv"
    path.parent.mkdir(exist_ok=True)
    write_predictions(path, [f"{fold}-{i}.wav" for i in range(len(labels))], np.asarray(probs, float),
                      np.asarray(labels), list(classes))
    return str(path.relative_to(tmp_path))


def test_out_of_fold_predictions_as_proxies(tmp_path, capsys):
    from training.ensemble_pool import evaluate

    # two folds of two clips each; true classes a, b | a, b
    y = [0, 1]
    pa = [_oof(tmp_path, "pa", k, [[0.9, 0.1], [0.6, 0.4]], y) for k in (1, 2)]     # right on a only: 0.5
    pb = [_oof(tmp_path, "pb", k, [[0.3, 0.7], [0.2, 0.8]], y) for k in (1, 2)]     # right on b only: 0.5
    pc = [_oof(tmp_path, "pc", k, [[0.55, 0.45], [0.45, 0.55]], y) for k in (1, 2)]  # right on both: 1.0
    d = copy.deepcopy(POOL)
    for m, proxy in zip(("a", "b", "c"), (pa, pb, pc)):
        d["members"][m]["proxy"] = proxy
    pool = parse_pool(d)
    assert pool.proxies_are_predictions
    res = {e: evaluate(pool, e, "validation", None, None, predictions_root=tmp_path) for e in pool.ensembles}
    assert res["all"]["n"] == 4 and res["all"]["fold"] is None
    assert res["all"]["member_acc"] == {"a": 0.5, "b": 0.5, "c": 1.0}
    # every member the same: clip a: (0.9 + 0.3 + 0.55) / 3 > 0.5 (right); clip b: (0.6 + 0.2 + 0.45) / 3 < 0.5
    assert res["all"]["acc"] == 1.0
    # by family, x = mean(a, b), y = c: clip b: ((0.6 + 0.2) / 2 + 0.45) / 2 = 0.425 for a: right
    assert res["by_family"]["acc"] == 1.0
    # "two" (a, c): clip b: (0.6 + 0.45) / 2 = 0.525 for a: wrong on both folds' b clips
    assert res["two"]["acc"] == 0.5

    # the script: proxies read relative to --predictions-root, checkpoints still needed for --test only
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(yaml.safe_dump(d))
    script = load_script("benchmarks/ensemble_pool.py")
    out = tmp_path / "out.json"
    assert script.main(["--pool", str(pool_file), "--predictions-root", str(tmp_path), "--out", str(out),
                        "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "the proxies' predictions files, 4 clips" in printed
    assert json.loads(out.read_text())["decision"]["chosen"] == "all"     # 1.0 against 0.5
    assert script.main(["--pool", str(pool_file), "--predictions-root", str(tmp_path), "--out", str(out),
                        "--test", "--checkpoint-dir", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err

    # refused: a test-fold clip, a clip twice, members over other clips, mixed kinds of proxy
    bad = copy.deepcopy(d)
    bad["members"]["a"]["proxy"] = pa + [_oof(tmp_path, "leak", 5, [[0.5, 0.5]], [0])]
    with pytest.raises(PoolError, match="from the test fold 5"):
        evaluate(parse_pool(bad), "all", "validation", None, None, predictions_root=tmp_path)
    bad["members"]["a"]["proxy"] = pa + [_oof(tmp_path, "dup", 1, [[0.5, 0.5]], [0])]     # clip 1-0.wav again
    with pytest.raises(PoolError, match="appears in two files"):
        evaluate(parse_pool(bad), "all", "validation", None, None, predictions_root=tmp_path)
    bad["members"]["a"]["proxy"] = pa[:1]
    with pytest.raises(PoolError, match="other clips"):
        evaluate(parse_pool(bad), "all", "validation", None, None, predictions_root=tmp_path)
    bad["members"]["a"]["proxy"] = "pa_checkpoint"
    with pytest.raises(PoolError, match="use one kind"):
        parse_pool(bad)
    bad["members"]["a"]["proxy"] = ["x", "y"]
    with pytest.raises(PoolError, match="must all be predictions files"):
        parse_pool(bad)
