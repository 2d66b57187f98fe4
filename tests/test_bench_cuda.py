"""benchmarks/bench_cuda.py: CPU-vs-device agreement and step times (run here with the CPU as the device)."""
from __future__ import annotations

from scripts import load_script


def test_bench_cuda_compares_each_recipes_model_with_the_cpu(tmp_path, capsys):
    bc = load_script("benchmarks/bench_cuda.py")
    a = tmp_path / "a.yaml"
    a.write_text("model: liquid_s4\npreset: tiny\ntrain:\n  crop: 1.0\n")
    b = tmp_path / "b.yaml"
    b.write_text("model: mamba\npreset: tiny\n")
    assert bc.main([str(a), str(b), "--device", "cpu", "--steps", "1", "--threads", "1", "--batches", "32,8"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0] for r in rows] == [str(a), str(b)]
    for r in rows:
        assert float(r[2]) == 0.0 and r[3] == "100%"       # the same device: identical fp32 logits
        assert float(r[4]) > 0 and float(r[5]) > 0 and float(r[6]) > 0 and float(r[7]) > 0


def test_bench_cuda_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    bc = load_script("benchmarks/bench_cuda.py")
    a = tmp_path / "a.yaml"
    a.write_text("model: mlp\npreset: tiny\n")
    assert bc.main([str(a), "--batches", "x"]) == 2
    assert bc.main([str(a), "--device", "cpu", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
