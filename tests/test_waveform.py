"""Waveform features (``filterbank="waveform"``), their augmentations and the end-to-end waveform CNN."""
import json
import math

import numpy as np
import pytest
import torch

import audio_utils as au
import inference
import models
import train as train_cli
from training.engine import predict_proba

WAVE = au.FeatureConfig.derive(None, {"filterbank": "waveform", "n_fft": 160, "hop_length": 160, "n_mels": 160})
QUIET = dict(time_shift_prob=0.0, gain_prob=0.0, noise_prob=0.0, freq_mask_prob=0.0, time_mask_prob=0.0)


def test_waveform_frames_are_the_samples_and_count_as_a_centred_stft():
    assert WAVE.n_frames == 500 and WAVE.full_frames == 501 and WAVE.is_waveform
    wave = torch.randn(2, WAVE.num_samples)
    frames = au.extract_features(wave, WAVE, crop=False)
    assert frames.shape == (2, WAVE.full_frames, 160)
    flat = frames.flatten(1)
    assert torch.equal(flat[:, :WAVE.num_samples], wave) and not flat[:, WAVE.num_samples:].any()
    assert au.extract_features(wave[0], WAVE).shape == (500, 160)          # one clip, cropped to n_frames


def test_waveform_config_needs_equal_frame_sizes():
    with pytest.raises(ValueError, match="n_fft, hop_length and n_mels must be equal"):
        au.FeatureConfig(filterbank="waveform", n_fft=1024, hop_length=160, n_mels=160)
    with pytest.raises(ValueError, match="needs filterbank='waveform'"):
        au.WaveFrames(au.ESC50_FEATURES)


def test_spectral_augmentations_are_refused_on_waveforms():
    x, y = torch.zeros(4, 501, 160), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="freq_mask_prob has no meaning on waveforms"):
        au.FeatureDataset(x, y, ["a"], WAVE, augment=True)
    with pytest.raises(ValueError, match="eq_prob=0 and freq_mask_prob=0"):
        au.FeatureDataset(x, y, ["a"], WAVE, augment=au.AugmentConfig(eq_prob=0.5))
    au.FeatureDataset(x, y, ["a"], WAVE, augment=au.AugmentConfig(**QUIET))      # time masks, stretch etc. are fine


def test_waveform_normalisation_is_one_mean_and_std():
    x = torch.randn(3, 501, 160) * 0.1 + 0.02
    x[:, :, 0] += 5.0                                       # a per-position offset must not get its own statistics
    mean, std = au.FeatureDataset(x, torch.zeros(3, dtype=torch.long), ["a"], WAVE).compute_normalization()
    flat = au.crop_frames(x, 500)
    assert mean.shape == std.shape == (160,)
    assert torch.allclose(mean, flat.mean().expand(160)) and torch.allclose(std, flat.std().expand(160))


def test_between_class_mixing_adds_waveforms_at_the_loudness_corrected_ratio():
    t = torch.arange(2 * 50 * 16, dtype=torch.float32).view(2, 50, 16)
    x = torch.stack([torch.sin(t[0] * 0.3), 0.1 * torch.sin(t[1] * 0.7)])     # 20 dB apart
    y = torch.tensor([0, 1])
    g = torch.Generator().manual_seed(1)
    perm, r = au._bc_partners(2, torch.Generator().manual_seed(1), 1e-3)
    assert perm.tolist() == [1, 0]                           # the two clips are each other's partner
    mixed, target, m = au.between_class_mix_wave(x, y, 2, g, return_mixing=True)
    loud = 10 * torch.log10(x.square().mean(2).amax(1))
    assert loud[0] - loud[1] == pytest.approx(20.0, abs=1.0)
    p = 1 / (1 + 10 ** ((loud - loud[perm]) / 20) * (1 - r) / r)
    want = (p.view(2, 1, 1) * x + (1 - p.view(2, 1, 1)) * x[perm]) / torch.sqrt(p ** 2 + (1 - p) ** 2).view(2, 1, 1)
    assert torch.allclose(mixed, want, atol=1e-6)
    assert torch.allclose(target, m @ torch.eye(2)) and torch.allclose(target.sum(1), torch.ones(2))
    assert p[0] < r[0] and p[1] > r[1]                      # the louder clip is turned down, the quieter up


def test_gain_and_noise_on_waveforms():
    x = torch.sin(torch.arange(4 * 200 * 16, dtype=torch.float32) * 0.05).view(4, 200, 16)
    up = au.augment_waveform(x, au.AugmentConfig(gain_prob=1.0, gain_db=(6.0, 6.0), noise_prob=0.0))
    assert torch.allclose(up, x * 10 ** (6 / 20), atol=1e-6)
    noisy = au.augment_waveform(x, au.AugmentConfig(gain_prob=0.0, noise_prob=1.0, noise_snr_db=(20.0, 20.0)),
                                torch.Generator().manual_seed(0))
    snr = 10 * torch.log10(x.square().mean() / (noisy - x).square().mean())
    assert float(snr) == pytest.approx(20.0, abs=0.3)


def test_waveform_views_are_sample_exact_crops_and_stretches_resample():
    ramp = torch.arange(2 * 501 * 160, dtype=torch.float32).view(2, 501, 160)
    ds = au.FeatureDataset(ramp, torch.tensor([0, 1]), ["a", "b"], WAVE, augment=au.AugmentConfig(**QUIET))
    ds.crop_frames = 100
    x, _ = ds._views(torch.tensor([0, 1]), torch.Generator().manual_seed(1))
    assert x.shape == (2, 100, 160)
    flat = x.flatten(1)
    assert torch.equal(flat[:, 1:] - flat[:, :-1], torch.ones(2, 100 * 160 - 1))   # contiguous samples
    assert flat[0, 0] % 160 != 0 or flat[1, 0] % 160 != 0                            # not only at frame starts
    ds.augment_cfg = au.AugmentConfig(**QUIET, stretch_prob=1.0, stretch=(1.25, 1.25))
    x, _ = ds._views(torch.tensor([0, 1]), torch.Generator().manual_seed(1))
    step = x.flatten(1)[:, 1:] - x.flatten(1)[:, :-1]
    assert torch.allclose(step, torch.full_like(step, 1.25), atol=1e-2)              # read 1.25 samples a sample


def test_wavecnn_builds_from_the_registry_and_reads_any_length():
    assert "wavecnn" in models.available()
    m = models.build_model("wavecnn", num_classes=5, n_mels=160, n_frames=300, preset="tiny")
    assert m(torch.randn(2, 300, 160)).shape == (2, 5) and m(torch.randn(2, 501, 160)).shape == (2, 5)
    with pytest.raises(ValueError, match="needs at least 64 samples"):
        m(torch.randn(1, 1, 32))
    with pytest.raises(ValueError, match="same \\(non-zero\\) length"):
        models.build_model("wavecnn", filters=(8, 16), strides=(2,))
    full = models.build_model("wavecnn", num_classes=50, n_mels=160, n_frames=300)
    assert 4e5 < models.count_parameters(full) < 4.5e5 and full.filterbank.samples_per_frame == 320


@pytest.fixture(scope="module")
def wave_run(esc50_flac, tmp_path_factory):
    out = tmp_path_factory.mktemp("wave") / "wavecnn"
    argv = ["--model", "wavecnn", "--preset", "tiny", "--data-dir", str(esc50_flac), "--epochs", "2",
            "--batch-size", "8", "--crop", "2.0", "--bc-mix", "1.0", "--eval-crops", "3", "--out", str(out),
            "--no-progress", "--threads", "1"]
    for k, v in {"filterbank": "waveform", "n_fft": 160, "hop_length": 160, "n_mels": 160}.items():
        argv += ["--feature", f"{k}={v}"]
    for k, v in {"freq_mask_prob": 0, "stretch_prob": 0.5, "time_mask_param": 48}.items():
        argv += ["--augment", f"{k}={v}"]
    assert train_cli.main(argv) == 0
    return out


def test_waveform_run_trains_and_inference_agrees_with_training(wave_run, esc50_flac, tmp_path, capsys):
    metrics = json.loads((wave_run / "metrics.json").read_text())
    assert math.isfinite(metrics["val_acc"])
    capsys.readouterr()
    rc = inference.main(["--checkpoint", str(wave_run / "best.safetensors"), "--evaluate", "--data-dir",
                         str(esc50_flac), "--fold", "5", "--json", "--out-dir", str(tmp_path / "ev")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out)
    assert res["accuracy"] == metrics["test_acc"] and res["matches_training"] is True
    assert res["eval_crops"] == 3
    # one file through the predictor: the probabilities of the training code path (mean of 3 crops)
    pred = inference.Predictor(wave_run / "best.safetensors", "cpu")
    assert isinstance(pred.logmel, au.WaveFrames)
    ds = au.esc50_dataset(esc50_flac, [5], feature_cfg=pred.cfg, normalization=pred.normalization)
    want, _ = predict_proba(pred.model, ds, batch_size=4, crop_frames=pred.crop_frames, n_crops=3)
    files = [esc50_flac / "audio" / n.replace(".wav", ".flac") for n in ds.names]
    waves = torch.stack([pred.prepare(au.load_audio(f, pred.sample_rate)) for f in files])
    got = pred.logits_to_probs(pred.features(waves))
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("name", ["liquid_s4", "mamba"])
def test_sequence_models_read_waveforms_through_the_wave_stem(name):
    from models.stems import WaveTokenizer

    m = models.build_model(name, num_classes=5, n_mels=160, n_frames=300, preset="tiny", stem="wave",
                           stem_pools=[[2, 2], [2, 2], [1, 4]])
    tok = m.encoder if name == "liquid_s4" else m.embed
    assert isinstance(tok, WaveTokenizer)
    x = torch.randn(2, 300, 160)
    assert tok(x).shape[1] == tok.out_len(300) == 300 * 160 // 320 // 4
    assert m(x).shape == (2, 5) and m(torch.randn(2, 501, 160)).shape == (2, 5)


def test_spectral_augmentation_on_waveforms_fails_before_any_audio_is_read(tmp_path, capsys):
    argv = ["--model", "wavecnn", "--data-dir", str(tmp_path / "no_such_dir"), "--epochs", "1",
            "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1"]
    for k, v in {"filterbank": "waveform", "n_fft": 160, "hop_length": 160, "n_mels": 160}.items():
        argv += ["--feature", f"{k}={v}"]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "freq_mask_prob has no meaning on waveforms" in err
