"""Distributed data parallel: torchrun + gloo on CPU with 2 processes must reproduce single-process training."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train as train_cli
from training import distributed
from training.engine import DistInfo, epoch_batches

REPO = Path(__file__).resolve().parent.parent


def test_epoch_batches_partition_every_global_batch():
    for world in (2, 3):
        for drop_last in (True, False):
            g = [torch.Generator().manual_seed(3) for _ in range(world + 1)]
            single = list(epoch_batches(17, 5, g[0], drop_last=drop_last))
            shares = [list(epoch_batches(17, 5, g[r + 1], drop_last=drop_last, dist=DistInfo(r, world),
                                         with_sizes=True)) for r in range(world)]
            # a final batch smaller than the world (17 % 5 = 2 < 3 ranks) is skipped on every rank
            expect = [b for b in single if len(b) >= world]
            assert all(len(s) == len(expect) for s in shares)
            for step, batch in enumerate(expect):
                parts = [shares[r][step][0] for r in range(world)]
                assert all(shares[r][step][1] == len(batch) for r in range(world))
                assert torch.equal(torch.cat(parts), batch)             # disjoint, complete, same order
                assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("DIST_BACKEND", raising=False)
    assert distributed.pick_backend(["--device", "cpu"]) == "gloo"
    assert distributed.pick_backend(["--device=cpu"]) == "gloo"
    if not torch.cuda.is_available():
        assert distributed.pick_backend([]) == "gloo"
    monkeypatch.setenv("DIST_BACKEND", "mpi")
    assert distributed.pick_backend(["--device", "cpu"]) == "mpi"


def test_entry_point_without_torchrun_runs_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    # "cv" dispatches to training.cv; without torchrun no process group is created
    assert distributed.main(["cv", "--out", str(tmp_path / "empty"), "--summarise"]) == 2
    assert "no finished folds" in capsys.readouterr().err
    assert not torch.distributed.is_initialized()
    with pytest.raises(SystemExit):
        distributed.main(["--help"])


def _history(d):
    return json.loads((Path(d) / "history.json").read_text())


@pytest.mark.slow
def test_torchrun_gloo_two_ranks_match_single_process(esc50_flac, tmp_path):
    # LSTM without dropout, no augmentation and no mixup, in fp32 (bf16 rounds each rank's smaller
    # batch differently): the two runs do the same maths.
    # batch 5 over 2 ranks gives uneven shares (3 + 2), which the engine must weight correctly.
    args = ["--model", "lstm", "--preset", "tiny", "--config", "dropout=0", "--data-dir", str(esc50_flac),
            "--epochs", "3", "--batch-size", "5", "--no-augment", "--expansion", "1", "--mixup", "0",
            "--warmup-frac", "0", "--threads", "1", "--no-progress", "--device", "cpu", "--no-amp"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("DIST_BACKEND", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.distributed", *args, "--out", str(tmp_path / "ddp")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the single-process reference trains while the two ranks start up
        assert train_cli.main(args + ["--out", str(tmp_path / "single")]) == 0
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]
    assert stdout.count('"test_acc"') == 1             # results printed by rank 0 only

    h_ddp, h_one = _history(tmp_path / "ddp"), _history(tmp_path / "single")
    assert len(h_ddp) == len(h_one) == 3
    for a, b in zip(h_ddp, h_one):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_acc"] == pytest.approx(b["train_acc"])        # counted over both ranks
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["val_acc"] == b["val_acc"]
        assert a["lr"] == pytest.approx(b["lr"])
    w_ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model"]
    w_one = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["model"]
    assert w_ddp.keys() == w_one.keys()
    for k in w_one:
        torch.testing.assert_close(w_ddp[k], w_one[k], rtol=1e-4, atol=1e-5)
    m_ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    m_one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert m_ddp["test_acc"] == m_one["test_acc"] and m_ddp["best_epoch"] == m_one["best_epoch"]
