"""benchmarks/ensemble_errors.py: the ensemble, its oracle bound and its errors, from saved predictions only."""
from __future__ import annotations

from pathlib import Path

import pytest

from scripts import load_script


def _script():
    return load_script("benchmarks/ensemble_errors.py")


def _write(folder: Path, rows):
    """rows: (clip, true, p_a, p_b); 'predicted' is the argmax, as inference.py writes it."""
    folder.mkdir()
    lines = ["clip,true,predicted,prob_predicted,p_a,p_b"]
    lines += [f"{c},{t},{'a' if pa >= pb else 'b'},{max(pa, pb)},{pa},{pb}" for c, t, pa, pb in rows]
    (folder / "predictions.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_ensemble_oracle_and_confusions(tmp_path, capsys):
    es = _script()
    # clip 1: both right; clip 2: only m1 right (and confident enough to carry the mean); clip 3: only m2
    # right, but m1's confidence wins the mean; clip 4: both wrong
    m1 = _write(tmp_path / "m1", [("1", "a", 0.9, 0.1), ("2", "b", 0.1, 0.9), ("3", "a", 0.1, 0.9), ("4", "b", 0.8, 0.2)])
    m2 = _write(tmp_path / "m2", [("1", "a", 0.6, 0.4), ("2", "b", 0.6, 0.4), ("3", "a", 0.6, 0.4), ("4", "b", 0.7, 0.3)])
    out = tmp_path / "report.txt"
    assert es.main([str(m1), str(m2 / "predictions.csv"), "--out", str(out)]) == 0
    res = es.analyse({"m1": es.read_predictions(m1), "m2": es.read_predictions(m2)})
    assert res["member_acc"] == {"m1": 0.5, "m2": 0.5}
    assert res["acc"] == 0.5 and res["oracle_acc"] == 0.75 and res["all_wrong"] == 1
    assert res["worst_classes"] == [("a", 0.5), ("b", 0.5)]
    assert res["confusions"] == [("a", "b", 1), ("b", "a", 1)]
    assert res["pairs"] == [("m1", "m2", 1, 0.75)]
    assert "m1 + m2: 1 both wrong; oracle 0.7500" in out.read_text().replace(str(m1), "m1").replace(str(m2 / "predictions.csv"), "m2")
    assert "oracle (any member right): 0.7500; every member wrong: 1 clips" in out.read_text()
    assert out.read_text() == capsys.readouterr().out


def test_pairs_count_the_errors_two_members_share(tmp_path):
    es = _script()
    # m1 wrong on clips 3 and 4, m2 on 4 only, m3 on 1, 3 and 4: m1 and m3 share two errors, the others one
    rows = {"m1": [0.9, 0.1, 0.1, 0.8], "m2": [0.9, 0.1, 0.9, 0.8], "m3": [0.1, 0.1, 0.1, 0.8]}
    truth = ["a", "b", "a", "b"]
    members = {n: es.read_predictions(_write(tmp_path / n, [(str(i + 1), t, pa, 1 - pa) for i, (t, pa)
                                                              in enumerate(zip(truth, ps))])) for n, ps in rows.items()}
    res = es.analyse(members)
    assert res["pairs"] == [("m1", "m2", 1, 0.75), ("m1", "m3", 2, 0.5), ("m2", "m3", 1, 0.75)]
    assert res["all_wrong"] == 1 and res["oracle_acc"] == 0.75


def test_members_must_describe_the_same_clips(tmp_path, capsys):
    es = _script()
    m1 = _write(tmp_path / "m1", [("1", "a", 0.9, 0.1), ("2", "b", 0.1, 0.9)])
    m2 = _write(tmp_path / "m2", [("1", "a", 0.9, 0.1), ("3", "b", 0.1, 0.9)])
    assert es.main([str(m1), str(m2)]) == 2
    assert "clips or labels differ" in capsys.readouterr().err
    assert es.main([str(m1), str(tmp_path / "missing")]) == 2
    assert es.main([str(m1)]) == 2
    with pytest.raises(SystemExit):
        es.main([])
