"""benchmarks/bench_stem.py: the recipe's model and input, the stem found and timed (one step, tiny models)."""
from __future__ import annotations

from scripts import load_script


def _recipe(path, text):
    path.write_text(text)
    return str(path)


def test_bench_stem_times_each_recipes_model_and_its_stem(tmp_path, capsys):
    bs = load_script("benchmarks/bench_stem.py")
    a = _recipe(tmp_path / "a.yaml", "model: liquid_s4\npreset: tiny\ntrain:\n  crop: 1.0\n")
    b = _recipe(tmp_path / "b.yaml", "extends: a.yaml\nfeature:\n  n_mels: 32\n")
    c = _recipe(tmp_path / "c.yaml", "model: mlp\npreset: tiny\n")
    name, model, x = bs.recipe_model(b)
    assert name == "liquid_s4" and tuple(x.shape) == (bs.BATCH, 31, 32)     # 1-s crop: 31 frames of 32 bands
    assert bs.main([a, b, c, "--steps", "1", "--threads", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0] for r in rows] == [a, b, c] and [r[1] for r in rows] == ["31x128", "31x32", "155x128"]
    assert all(float(r[2]) > 0 for r in rows) and float(rows[0][3]) > 0 and rows[0][-1] == "1.00"
    assert rows[2][3] == "-" and rows[2][4] == "-"                            # no conv stem in the MLP
    assert bs.main([_recipe(tmp_path / "d.yaml", "train:\n  epochs: 1\n")]) == 2
    assert "names no model" in capsys.readouterr().err
