"""benchmarks/collect_results.py: the README's tables, summary.json and the figure come from one
set of committed files, and the comparison plots do not zoom accuracy axes onto noise."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import load_script

REPO = Path(__file__).resolve().parent.parent


def _script():
    return load_script("benchmarks/collect_results.py")


def _metrics(val, test, params):
    return {"params": params, "epochs_run": 3, "best_epoch": 2, "val_acc": val, "test_acc": test, "n_test": 400,
            "test_macro_f1": test - 0.01, "mean_epoch_time_s": 1.0, "device": "cpu", "train_items_per_epoch": 1200,
            "test_per_class_accuracy": {"a": test, "b": test / 2}}


BENCH = """torch 2.11.0, 1 threads, 2 CPUs visible, OMP_WAIT_POLICY=PASSIVE, load average 0.5 / 0.5 / 0.5 (1 / 5 / 15 min)
one 5-s clip, features included, 1 threads; goal <= 10 ms per clip (ratio < 1 meets it)
model         params  feat ms  model ms  b1 p50 ms  b1 min ms  b1 CPU ms  p50/goal |   b32 clips/s  ms/clip  / goal  weights
----------------------------------------------------------------------------------------------------------------------------
cnn          237,914     1.21     11.02      12.34      11.12      13.23     1.23x |          71.6    13.96   1.40x  shipped checkpoint
mlp          486,194     0.82      0.22       1.26       1.01       1.27     0.13x |         402.7     2.48   0.25x  default config, random weights
load average after: 0.70 / 0.50 / 0.50 on 2 CPUs (other processes shared the CPU if this exceeds the thread count)
"""


@pytest.fixture
def repo(tmp_path):
    ck, res = tmp_path / "checkpoints", tmp_path / "results"
    ck.mkdir()
    res.mkdir()
    for name, (val, test, params) in {"cnn": (0.6775, 0.69, 237914), "mlp": (0.41, 0.3925, 486194)}.items():
        (ck / f"{name}_esc50.safetensors").write_bytes(b"not read")
        (ck / f"{name}_esc50.metrics.json").write_text(json.dumps(_metrics(val, test, params)))
        (ck / f"{name}_esc50.history.json").write_text(json.dumps([{"epoch": 1, "val_acc": val}]))
    (res / "models.csv").write_text("model,label,cpu_epoch_time,command\ncnn,CNN baseline,61 s,`train.py --model cnn`\n"
                                    "mlp,MLP,2 s,`train.py --model mlp`\n")
    (res / "bench.txt").write_text(BENCH)
    (res / "ensembles.json").write_text(json.dumps({"ensembles": [
        {"members": ["cnn", "mlp"], "val_acc": 0.7, "test_acc": 0.7125, "n_val": 400, "n_test": 400}]}))
    (res / "attempts.csv").write_text("attempt,model,val_acc,test_acc,budget,source\nfirst,cnn,0.5,0.45,,x\n"
                                      "first,mlp,0.3,0.25,3 epochs,x\n")
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\ntext\n<!-- results:begin -->\nold table\n<!-- results:end -->\nmiddle\n"
                      "<!-- attempts:begin -->\n<!-- attempts:end -->\n<!-- latency:begin -->\n| 13.4 ms |\n"
                      "<!-- latency:end -->\nend\n")
    return tmp_path


def _args(root: Path, *extra):
    return ["--checkpoint-dir", str(root / "checkpoints"), "--results-dir", str(root / "results"),
            "--readme", str(root / "README.md"), "--models", "cnn,mlp,lstm", *extra]


def test_readme_summary_and_figure_come_from_the_same_files(repo):
    cr = _script()
    assert cr.main(_args(repo, "--latency-from", str(repo / "results" / "bench.txt"), "--update-readme")) == 0
    res = repo / "results"
    latency = json.loads((res / "latency.json").read_text())
    assert latency["models"]["cnn"]["batch1_ms"] == 12.34 and latency["threads"] == 1
    summary = json.loads((res / "summary.json").read_text())
    assert summary["models"]["cnn"]["cpu_latency_ms_batch1"] == 12.34          # the same number everywhere
    assert summary["models"]["cnn"]["test_acc"] == 0.69 and summary["ensembles"][0]["test_acc"] == 0.7125
    readme = (repo / "README.md").read_text()
    assert "old table" not in readme and "13.4 ms" not in readme and readme.startswith("# title\n\ntext\n")
    assert readme.endswith("<!-- latency:end -->\nend\n") and "\nmiddle\n" in readme
    assert "| CNN baseline | `" in readme and "**0.6900** ± 0.045" in readme and "| 12.3 ms |" in readme
    assert "ensemble: cnn + mlp" in readme and "**0.7125**" in readme
    assert "| first | 0.5 / 0.45 | 0.3 / 0.25 (3 epochs) |" in readme
    assert "| cnn | 237,914 | 12.3 ms | 1.23x | 72 clips/s | shipped checkpoint |" in readme
    md = (res / "results.md").read_text()
    assert "| CNN baseline |" in md and "| 12.3 ms |" in md
    assert (res / "comparison.png").stat().st_size > 0 and (res / "per_class.png").stat().st_size > 0
    # idempotent: a second run changes nothing
    assert cr.main(_args(repo, "--update-readme", "--no-plots")) == 0
    assert (repo / "README.md").read_text() == readme


def test_each_table_goes_to_the_document_that_holds_its_markers(repo, capsys):
    cr = _script()
    readme, log = repo / "README.md", repo / "docs" / "experiments.md"
    readme.write_text("<!-- results:begin -->\n<!-- results:end -->\n<!-- latency:begin -->\n<!-- latency:end -->\n")
    log.parent.mkdir()
    log.write_text("# log\n<!-- attempts:begin -->\nold\n<!-- attempts:end -->\nend\n")
    assert cr.main(_args(repo, "--update-readme", "--no-plots")) == 0
    assert "| first | 0.5 / 0.45 | 0.3 / 0.25 (3 epochs) |" in log.read_text() and "old" not in log.read_text()
    assert log.read_text().startswith("# log\n") and log.read_text().endswith("end\n")
    assert "**0.6900**" in readme.read_text() and "| first |" not in readme.read_text()
    # the same table in both documents: refused, nothing written
    before = readme.read_text() + "<!-- attempts:begin -->\n<!-- attempts:end -->\n"
    readme.write_text(before)
    logged = log.read_text()
    assert cr.main(_args(repo, "--update-readme", "--no-plots")) == 2
    err = capsys.readouterr().err.strip()
    assert "'<!-- attempts:begin -->' belongs in one only" in err and "\n" not in err
    assert readme.read_text() == before and log.read_text() == logged


def test_a_refit_shows_its_recipes_validation_figure(repo):
    cr = _script()
    m = {**_metrics(None, 0.45, 486194), "recipe_val_acc": 0.41}
    (repo / "checkpoints" / "mlp_esc50.metrics.json").write_text(json.dumps(m))
    assert cr.main(_args(repo, "--update-readme")) == 0
    readme = (repo / "README.md").read_text()
    assert "| trained on (its recipe's run on folds 1-3: 0.4100) | **0.4500** ±" in readme


def test_bad_inputs_exit_2_with_one_line(repo, capsys):
    cr = _script()
    (repo / "README.md").write_text("no markers\n")
    assert cr.main(_args(repo, "--update-readme", "--no-plots")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "README.md: needs exactly one '<!-- results:begin -->'" in err and "\n" not in err
    assert cr.main(_args(repo, "--latency-from", str(repo / "nope.txt"), "--no-plots")) == 2
    assert cr.main(["--checkpoint-dir", str(repo / "empty"), "--results-dir", str(repo / "results"), "--no-plots"]) == 2
    assert cr.main(_args(repo, "--ship", "cnn", "--no-plots")) == 2
    assert (repo / "README.md").read_text() == "no markers\n"


def test_committed_results_are_consistent():
    """The committed README, summary.json and latency.json agree (run `make results` after changing one)."""
    from training.latency import read_latency

    latency, info = read_latency(REPO / "results" / "latency.json")
    summary = json.loads((REPO / "results" / "summary.json").read_text())
    readme = (REPO / "README.md").read_text()
    for name, m in summary["models"].items():
        assert m["cpu_latency_ms_batch1"] == latency[name]
        metrics = json.loads((REPO / "checkpoints" / f"{name}_esc50.metrics.json").read_text())
        assert m["test_acc"] == metrics["test_acc"]
        assert f"**{metrics['test_acc']:.4f}**" in readme and f"| {latency[name]:.1f} ms |" in readme
    for e in json.loads((REPO / "results" / "ensembles.json").read_text())["ensembles"]:
        assert f"**{e['test_acc']:.4f}**" in readme
    cr = _script()      # every file results/seeds.csv names exists, and the experiment log shows its table as generated
    log = (REPO / "docs" / "experiments.md").read_text()
    assert cr.markdown(cr.seeds_table(REPO / "results" / "seeds.csv", REPO)) in log
    assert cr.markdown(cr.attempts_table(REPO / "results" / "attempts.csv"), index=True) in log
    cv = cr.cv_rows(REPO / "results" / "cv.csv", REPO)      # every file results/cv.csv names exists
    assert cr.markdown(cr.cv_table(cv)) in readme
    assert summary["cross_validation"] == json.loads(json.dumps(cr.cv_summary(cv)))


def test_cv_table_summarises_each_recipe_over_its_folds(tmp_path):
    cr = _script()
    for k, acc in enumerate((0.80, 0.82, 0.84, 0.86), 1):      # training runs tested on fold k: test_acc
        (tmp_path / f"f{k}.json").write_text(json.dumps({"model": "mamba", "test_acc": acc}))
    (tmp_path / "refit.json").write_text(json.dumps({"model": "mamba", "accuracy": 0.78}))   # inference.py --evaluate
    (tmp_path / "vit.json").write_text(json.dumps({"model": "vjepa2", "accuracy": 0.8}))
    cv = tmp_path / "cv.csv"
    cv.write_text("recipe,fold,metrics\n" + "".join(f"m.yaml,{k},f{k}.json\n" for k in range(1, 5))
                  + "m.yaml,5,refit.json\nv.yaml,5,vit.json\nv.yaml,2,f2.json\n")
    with pytest.raises(cr.UsageError, match="v.yaml: its folds' files name different models"):
        cr.cv_rows(cv, tmp_path)
    cv.write_text("recipe,fold,metrics\n" + "".join(f"m.yaml,{k},f{k}.json\n" for k in range(1, 5))
                  + "m.yaml,5,refit.json\nv.yaml,5,vit.json\n")
    m, v = cr.cv_rows(cv, tmp_path)
    assert m["folds"] == {1: 0.80, 2: 0.82, 3: 0.84, 4: 0.86, 5: 0.78} and m["n"] == 5
    assert m["mean"] == pytest.approx(0.82) and m["std"] == pytest.approx(0.0316228, abs=1e-6)   # sample std
    a, b = cr.cv_table([m, v]).to_dict("records")
    assert a["model"] == "mamba" and a["fold 5"] == "0.7800" and a["mean ± sample std"] == "**0.8200** ± 0.0316"
    assert b["fold 1"] == "not run" and b["mean ± sample std"] == " (1 of 5 folds)"
    assert cr.cv_summary([m])[0]["folds"] == {"1": 0.80, "2": 0.82, "3": 0.84, "4": 0.86, "5": 0.78}
    for rows, error in (("m.yaml,6,f1.json\n", "fold must be one of 1-5"), ("m.yaml,1,f1.json\nm.yaml,1,f2.json\n",
                         "fold 1 listed twice"), ("m.yaml,1,gone.json\n", "gone.json: no such file")):
        cv.write_text("recipe,fold,metrics\n" + rows)
        with pytest.raises(cr.UsageError, match=error):
            cr.cv_rows(cv, tmp_path)
    assert cr.cv_rows(tmp_path / "none.csv", tmp_path) == [] and cr.cv_table([]) is None


def test_seeds_table_summarises_each_recipe_from_its_metrics_files(tmp_path):
    cr = _script()
    for name, key, acc in (("r0", "val_acc", 0.8), ("r1", "val_acc", 0.82), ("r2", "val_acc", 0.84),
                           ("t0", "accuracy", 0.7), ("t1", "accuracy", 0.74), ("refit", "accuracy", 0.78)):
        (tmp_path / f"{name}.json").write_text(json.dumps({key: acc}))
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("recipe,seed,train_folds,run_metrics,test_metrics\n"
                     "a.yaml,0,1-3,r0.json,t0.json\na.yaml,1,1-3,r1.json,t1.json\na.yaml,2,1-3,r2.json,\n"
                     "a.yaml,1,1-4,,refit.json\nb.yaml,0,1-3,r0.json,\n")
    table = cr.seeds_table(seeds, tmp_path)
    a, b = table.to_dict("records")
    assert a["recipe"] == "`recipes/a.yaml`" and a["seeds (folds 1-3)"] == "0, 1, 2"
    assert a["fold-4 val"] == "**0.820** ± 0.020 (0.8, 0.82, 0.84)"          # mean ± sample std
    assert a["fold-5 test"] == "**0.720** ± 0.028 (0.7, 0.74) (2 of 3 read)"
    assert a["refits on folds 1-4: fold-5 test"] == "0.78 (seed 1)"
    assert b["fold-4 val"] == "0.8" and b["fold-5 test"] == "" and b["refits on folds 1-4: fold-5 test"] == ""
    seeds.write_text("recipe,seed,train_folds,run_metrics,test_metrics\na.yaml,0,1-3,r0.json,gone.json\n")
    with pytest.raises(cr.UsageError, match="gone.json: no such file"):
        cr.seeds_table(seeds, tmp_path)
    seeds.write_text("recipe,seed,train_folds,run_metrics,test_metrics\na.yaml,0,2-5,r0.json,\n")
    with pytest.raises(cr.UsageError, match="1-3 or 1-4"):
        cr.seeds_table(seeds, tmp_path)


def test_accuracy_axes_are_not_zoomed_onto_noise():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training import plots
    from training.results import ModelResult

    res = {n: ModelResult(n, "checkpoint", None, [], {"test_acc": acc, "n_test": 400, "params": p})
           for n, acc, p in (("a", 0.69, 1e5), ("b", 0.7075, 3e5), ("c", 0.695, 6e5))}
    ax = plots.plot_accuracy_vs(res, {n: r.params for n, r in res.items()}, "parameters")
    lo, hi = ax.get_ylim()
    assert hi - lo >= plots.MIN_ACC_SPAN and lo <= 0.69 - 0.04 and hi >= 0.7075 + 0.04
    assert plots.binomial_ci(0.7, 400) == pytest.approx(1.96 * (0.21 / 400) ** 0.5)
    ax = plots.plot_test_bars(res)
    assert ax.get_ylim()[0] == 0
    plt.close("all")


def test_bench_inference_output_parses():
    from training.latency import parse_bench_inference

    rows = parse_bench_inference(BENCH)
    assert rows["cnn"]["batch1_ms"] == 12.34 and rows["mlp"]["batch32_clips_per_s"] == 402.7
    assert rows["mlp"]["weights"] == "default config, random weights"
    with pytest.raises(ValueError):
        parse_bench_inference("nothing here")


def test_every_results_file_the_readme_and_attempts_cite_is_tracked():
    """A figure's artefact must be in the repository, not in an ignored directory of one machine."""
    import re
    import subprocess

    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split())
    if not tracked:
        pytest.skip("not a git checkout")
    text = "".join((REPO / f).read_text() for f in ("README.md", "docs/experiments.md", "results/attempts.csv"))
    cited = set(re.findall(r"results/(?:runs|fold5)/[\w./-]+\.(?:json|csv)", text))
    assert cited, "the README and the experiment log cite no result files"
    missing = sorted(p for p in cited if p not in tracked)
    assert not missing, f"cited but not tracked: {missing}"


def test_a_seed_member_is_the_mean_of_its_runs_and_weighs_like_one_member(esc50_flac, tmp_path, monkeypatch):
    import numpy as np

    from training import cli
    from training.ensemble import ensemble_accuracy, fold_probabilities
    from training.metrics import multiclass_metrics

    cks = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        assert cli.main(["--model", "mlp", "--preset", "tiny", "--data-dir", str(esc50_flac), "--epochs", "1",
                         "--batch-size", "6", "--no-progress", "--threads", "1", "--no-augment", "--seed", str(seed),
                         "--test-folds", "", "--out", str(out)]) == 0
        cks.append(out / "best.safetensors")
    p0, y, meta = fold_probabilities(cks[0], esc50_flac, [5])
    p1, _, _ = fold_probabilities(cks[1], esc50_flac, [5])
    assert not np.allclose(p0, p1)
    res = ensemble_accuracy({"seeds": cks, "one": cks[0]}, esc50_flac, folds=[5])
    expected = multiclass_metrics(((p0 + p1) / 2 + p0) / 2, y, meta["class_names"])
    assert res["acc"] == expected["accuracy"]
    assert res["member_acc"]["seeds"] == float((((p0 + p1) / 2).argmax(1) == y).mean())
    # a shared cache evaluates each checkpoint once, whatever ensembles share it
    import training.ensemble as ens_mod
    calls = []
    real = ens_mod.fold_probabilities
    cache: dict = {}
    monkeypatch.setattr(ens_mod, "fold_probabilities", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    again = [ensemble_accuracy({"seeds": cks, "one": cks[0]}, esc50_flac, folds=[5], cache=cache) for _ in range(2)]
    assert len(calls) == 2 and all(a["acc"] == res["acc"] for a in again)

    # NAME+seeds: the shipped checkpoint and checkpoints/seeds/NAME_esc50_seed*
    cr = _script()
    from training.results import ModelResult
    (tmp_path / "ck" / "seeds").mkdir(parents=True)
    for f in ("cnn_esc50.safetensors", "seeds/cnn_esc50_seed2.safetensors", "seeds/cnn_esc50_seed1.safetensors",
              "seeds/mamba_esc50_seed1.safetensors"):
        (tmp_path / "ck" / f).write_bytes(b"")
    found = {"cnn": ModelResult("cnn", "checkpoint", tmp_path / "ck" / "cnn_esc50.safetensors")}
    assert [p.name for p in cr.member_checkpoints(found, "cnn+seeds")] == [
        "cnn_esc50.safetensors", "cnn_esc50_seed1.safetensors", "cnn_esc50_seed2.safetensors"]
    assert [p.name for p in cr.member_checkpoints(found, "cnn")] == ["cnn_esc50.safetensors"]
    # a path under the checkpoint directory: that checkpoint alone, shown by its file name
    assert cr.member_checkpoints(found, "refit/cnn_refit", tmp_path / "ck") == [tmp_path / "ck" / "refit" / "cnn_refit.safetensors"]
    assert cr.member_label("refit/cnn_refit") == "cnn_refit" and cr.member_label("cnn") == "cnn"
    with pytest.raises(cr.UsageError, match="no such checkpoint: .*refit/cnn_refit.safetensors"):
        cr.measure_ensembles(found, str(tmp_path), [["cnn", "refit/cnn_refit"]], tmp_path / "e.json", tmp_path / "ck")


def test_an_ensemble_with_a_refit_member_has_no_fold4_figure(esc50_flac, tmp_path):
    from types import SimpleNamespace

    from training import cli

    cr = _script()
    found = {}
    for name, folds in (("a", ["--train-folds", "1,2,3"]), ("b", ["--train-folds", "1,2,3,4", "--val-folds="])):
        out = tmp_path / name
        assert cli.main(["--model", "mlp", "--preset", "tiny", "--data-dir", str(esc50_flac), "--epochs", "1",
                         "--batch-size", "6", "--no-progress", "--threads", "1", "--no-augment", "--select", "last",
                         "--test-folds", "", *folds, "--out", str(out)]) == 0
        found[name] = SimpleNamespace(checkpoint=out / "best.safetensors")
    dest = cr.measure_ensembles(found, str(esc50_flac), [["a"], ["a", "b"], ["a", "b/best"]], tmp_path / "ensembles.json",
                                checkpoint_dir=tmp_path)
    plain, refit, by_path = json.loads(dest.read_text())["ensembles"]
    assert plain["n_val"] == 6 and plain["val_acc"] is not None
    assert refit["val_acc"] is None and refit["n_val"] == 0 and refit["n_test"] == 6
    # the same checkpoint named by its path under the checkpoint directory: the same ensemble
    assert by_path["test_acc"] == refit["test_acc"] and by_path["val_acc"] is None
    assert by_path["checkpoints"]["b/best"] == [str(tmp_path / "b" / "best.safetensors")]
    table = cr.results_table({}, cr.pd.DataFrame(), {}, [plain, refit, by_path])
    assert list(table["fold-4 val"]) == [f"{plain['val_acc']:.4f}", "a member trained on it", "a member trained on it"]
    assert table["model"].iloc[-1] == "ensemble: a + best (mean probability)"
