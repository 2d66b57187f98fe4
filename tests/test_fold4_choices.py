"""benchmarks/fold4_choices.py: the evaluation view chosen on the validation fold, per checkpoint or pooled
over the seeds of one recipe; the test fold refused."""
from __future__ import annotations

import numpy as np
import pytest

from scripts import load_script


def _script():
    return load_script("benchmarks/fold4_choices.py")


def test_choose_needs_the_margin():
    fc = _script()
    assert fc._choose({1: 0.80, 3: 0.805, 5: 0.809}, 0.01) == 1        # under the margin: the whole clip
    assert fc._choose({1: 0.80, 3: 0.81, 5: 0.81, 10: 0.805}, 0.01) == 3  # ties go to fewer crops
    assert fc._choose({1: 0.80, 3: 0.79, 10: 0.83}, 0.01) == 10
    assert fc._choose({3: 0.7, 5: 0.72}, 0.01) == 5                    # no whole-clip score: the best


def _fake_probabilities(acc_by_ck_and_n, n_clips=100, n_classes=4):
    """fold_probabilities stand-in: each (checkpoint, crops) gets exactly the accuracy asked for."""
    labels = np.arange(n_clips) % n_classes

    def fake(ck, root, folds, n_crops=None):
        acc = acc_by_ck_and_n[(ck, n_crops)]
        probs = np.full((n_clips, n_classes), 0.1)
        right = int(round(acc * n_clips))
        pred = labels.copy()
        pred[right:] = (labels[right:] + 1) % n_classes
        probs[np.arange(n_clips), pred] = 0.7
        return probs, labels, {}
    return fake


def test_pooled_choice_uses_the_mean_of_the_seeds(monkeypatch, capsys):
    fc = _script()
    import training.ensemble as ens
    # seed a alone would pick 3 crops (+0.02), seed b alone the whole clip; their mean gains only 0.005
    acc = {("a", 1): 0.80, ("a", 3): 0.82, ("b", 1): 0.80, ("b", 3): 0.79}
    monkeypatch.setattr(ens, "fold_probabilities", _fake_probabilities(acc))
    assert fc.main(["a", "b", "--crops", "1,3", "--data-dir", "x"]) == 0
    out = capsys.readouterr().out
    assert "chosen: a: mean of 3 crops (0.8200)" in out and "chosen: b: whole clip (0.8000)" in out
    assert fc.main(["a", "b", "--crops", "1,3", "--data-dir", "x", "--pooled"]) == 0
    out = capsys.readouterr().out
    assert "0.8050  mean of 2 checkpoints  mean of 3 crops" in out
    assert "chosen for all 2: whole clip (0.8000)" in out
    acc[("b", 3)] = 0.81                                                   # mean gain 0.015: crops win
    assert fc.main(["a", "b", "--crops", "1,3", "--data-dir", "x", "--pooled"]) == 0
    assert "chosen for all 2: mean of 3 crops (0.8150)" in capsys.readouterr().out


def test_the_test_fold_is_refused(capsys):
    fc = _script()
    assert fc.main(["a", "--folds", "4,5"]) == 2
    assert "fold 5 is the test fold" in capsys.readouterr().err
