import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

import audio_utils as au
from synth import CLASSES, make_esc50, synth_clip


# ------------------------------------------------------------------ loading / resampling / errors
@pytest.mark.parametrize("sr,channels,fmt", [(8000, 1, "wav"), (16000, 2, "flac"), (22050, 1, "ogg"),
                                             (44100, 2, "wav"), (48000, 1, "flac")])
def test_load_any_rate_and_channels(tmp_path, sr, channels, fmt):
    x = synth_clip(1, sr, 1.0, np.random.default_rng(0))
    data = np.stack([x] * channels, 1) if channels > 1 else x
    path = tmp_path / f"clip.{fmt}"
    sf.write(path, data, sr)
    wave = au.load_audio(path, 16000)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert abs(wave.shape[0] - 16000) <= 2


def test_resampling_keeps_frequency(tmp_path):
    sr = 44100
    t = np.arange(sr) / sr
    sf.write(tmp_path / "tone.wav", np.sin(2 * np.pi * 1000 * t).astype(np.float32), sr, subtype="FLOAT")
    wave = au.load_audio(tmp_path / "tone.wav", 16000).numpy()
    spectrum = np.abs(np.fft.rfft(wave))
    peak_hz = np.argmax(spectrum) * 16000 / len(wave)
    assert abs(peak_hz - 1000) < 2


def test_stereo_is_averaged(tmp_path):
    x = np.stack([np.ones(1600, np.float32) * 0.5, np.zeros(1600, np.float32)], 1)
    sf.write(tmp_path / "s.wav", x, 16000, subtype="FLOAT")
    assert torch.allclose(au.load_audio(tmp_path / "s.wav"), torch.full((1600,), 0.25))


def test_load_errors(tmp_path):
    with pytest.raises(au.AudioError, match="file not found"):
        au.load_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(au.AudioError, match="empty file"):
        au.load_audio(tmp_path / "empty.wav")
    (tmp_path / "text.wav").write_text("this is not audio at all, just text renamed to .wav\n" * 10)
    with pytest.raises(au.AudioError, match="not a readable audio file"):
        au.load_audio(tmp_path / "text.wav")
    sf.write(tmp_path / "zero.wav", np.zeros((0,), np.float32), 16000)
    with pytest.raises(au.AudioError, match="zero-length"):
        au.load_audio(tmp_path / "zero.wav")
    sf.write(tmp_path / "nan.wav", np.full(100, np.nan, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(au.AudioError, match="all NaN"):
        au.load_audio(tmp_path / "nan.wav")
    bad = np.zeros(100, np.float32)
    bad[5] = np.inf
    sf.write(tmp_path / "inf.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(au.AudioError, match="NaN/Inf"):
        au.load_audio(tmp_path / "inf.wav")
    with pytest.raises(au.AudioError, match="directory"):
        au.load_audio(tmp_path)
    # every message names the file
    try:
        au.load_audio(tmp_path / "text.wav")
    except au.AudioError as exc:
        assert str(tmp_path / "text.wav") in str(exc) and "\n" not in str(exc)


def test_iter_audio_blocks_streams(tmp_path):
    sr = 8000
    sf.write(tmp_path / "long.wav", np.random.default_rng(0).standard_normal(sr * 12).astype(np.float32) * 0.1, sr)
    blocks = list(au.iter_audio_blocks(tmp_path / "long.wav", 16000, block_seconds=5, overlap_seconds=1))
    assert [round(s, 3) for s, _ in blocks] == [0.0, 4.0, 8.0]
    assert all(abs(b.shape[0] - 80000) <= 2 for _, b in blocks[:2])


# ------------------------------------------------------------------ features
def test_logmel_matches_torchaudio_and_shape():
    wave = torch.randn(80000) * 0.1
    ref = torchaudio.transforms.MelSpectrogram(16000, n_fft=1024, hop_length=512, n_mels=128, power=2.0)(wave)
    ref = torch.log(ref + 1e-6).T
    ours = au.LogMel()(wave)
    assert ours.shape == (157, 128)
    assert torch.allclose(ours, ref, atol=1e-4)
    feats = au.extract_features(wave)
    assert feats.shape == (155, 128)
    assert torch.equal(feats, ours[1:156])                 # centre crop of 157 -> 155


def test_linear_filterbank_matches_torchaudio_and_places_a_tone():
    cfg = au.FeatureConfig(n_mels=64, filterbank="linear")
    wave = torch.randn(80000) * 0.1
    power = torchaudio.transforms.Spectrogram(n_fft=1024, hop_length=512, power=2.0)(wave)      # [513, frames]
    fb = torchaudio.functional.linear_fbanks(513, 0.0, 8000.0, 64, 16000)
    ref = torch.log(power.T @ fb + 1e-6)
    ours = au.LogMel(cfg)(wave)
    assert ours.shape == (157, 64)
    assert torch.allclose(ours, ref, atol=1e-4)
    # a 6-kHz tone peaks in the band centred nearest 6 kHz: 65 centres 8000/65 Hz apart on the linear scale,
    # where the mel scale puts it near the top of the index (few mel bands lie above 4 kHz)
    tone = torch.sin(2 * torch.pi * 6000 * torch.arange(16000) / 16000)
    lin_peak = int(au.LogMel(cfg)(tone).mean(0).argmax())
    mel_peak = int(au.LogMel(au.FeatureConfig(n_mels=64))(tone).mean(0).argmax())
    assert lin_peak == round(6000 / (8000 / 65)) - 1
    assert mel_peak > lin_peak + 5


def test_unknown_filterbank_is_a_one_line_error():
    with pytest.raises(ValueError, match="filterbank='bark'"):
        au.FeatureConfig(filterbank="bark")
    from training.options import OptionError, feature_config
    with pytest.raises(OptionError, match="--feature: filterbank='bark'"):
        feature_config({}, {"filterbank": "bark"})


def test_short_and_long_clips_are_fixed_to_155_frames():
    cfg = au.ESC50_FEATURES
    assert au.extract_features(torch.randn(8000), cfg).shape == (155, 128)
    assert au.extract_features(torch.randn(200000), cfg).shape == (155, 128)


def test_onset_alignment_keeps_attack():
    sr = 16000
    wave = torch.zeros(sr * 2)
    wave[12000:12400] = torch.hann_window(400)
    cfg = au.FeatureConfig(duration=0.5, n_frames=16, onset_align=True)
    fixed = au.prepare_waveform(wave, cfg)
    assert fixed.abs().max() > 0.9 and fixed[:int(0.004 * sr)].abs().max() < 0.5


def test_tubelets_grid_and_order():
    x = torch.arange(155 * 128, dtype=torch.float32).reshape(155, 128)
    tok = au.convert_to_tubelets(x)
    assert tok.shape == (152, 128)
    cropped = x[1:153]                                     # centre crop 155 -> 152
    for t, f in [(0, 0), (0, 7), (3, 2), (18, 7)]:
        patch = cropped[t * 8:(t + 1) * 8, f * 16:(f + 1) * 16].reshape(-1)
        assert torch.equal(tok[t * 8 + f], patch)
    full = au.convert_to_tubelets(x.unsqueeze(0), patch_f=128)
    assert full.shape == (1, 19, 1024)


# ------------------------------------------------------------------ augmentation
def _x(b=8, t=155, f=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, f, generator=g) - 5


def _only(**kw):
    base = dict(time_shift_prob=0, gain_prob=0, noise_prob=0, freq_mask_prob=0, time_mask_prob=0)
    base.update(kw)
    return au.AugmentConfig(**base)


def test_gain_range():
    x = _x()
    out = au.augment_logmel(x, _only(gain_prob=1.0, gain_db=(-6, 6)))
    delta_db = (out - x).mean(dim=(1, 2)) * 10 / np.log(10)
    assert torch.all(delta_db.abs() <= 6 + 1e-4) and delta_db.std() > 0.5
    assert torch.allclose(out - x, (out - x)[:, :1, :1].expand_as(x), atol=1e-5)   # a constant per clip


def test_noise_adds_power_at_requested_snr():
    x = _x()
    out = au.augment_logmel(x, _only(noise_prob=1.0, noise_snr_db=(20, 20)), torch.Generator().manual_seed(0))
    added = (out.exp() - x.exp()).mean(dim=(1, 2))
    assert torch.all(out >= x - 1e-5)
    snr = 10 * torch.log10(x.exp().mean(dim=(1, 2)) / added)
    assert torch.allclose(snr, torch.full_like(snr, 20.0), atol=1.5)


def test_time_shift_is_a_roll_of_the_crop():
    raw = _x(4, 157)
    cfg = _only(time_shift_prob=1.0, time_shift_max=0.2)
    out = au.crop_and_shift(raw, 155, cfg, torch.Generator().manual_seed(1))
    for b in range(4):
        found = any(torch.equal(out[b], torch.roll(raw[b, o:o + 155], s, 0)) for o in range(3) for s in range(-31, 32))
        assert found


def test_spec_masks_widths_and_value():
    x = _x(16)
    cfg = _only(freq_mask_prob=1.0, freq_mask_param=10, n_freq_masks=1, time_mask_prob=1.0,
                time_mask_param=20, n_time_masks=1)
    out = au.spec_masks(x, cfg, torch.Generator().manual_seed(0), value=0.0)
    for b in range(16):
        zero = out[b] == 0
        full_cols = zero.all(0).sum()
        full_rows = zero.all(1).sum()
        assert full_cols <= 9 and full_rows <= 19
    assert (out == 0).any()


# ------------------------------------------------------------------ datasets, folds, cache
def test_esc50_folds_and_layouts(esc50_flac, esc50_wav):
    tr = au.esc50_dataset(esc50_flac, folds=[1, 2, 3])
    va = au.esc50_dataset(esc50_flac, folds=[4])
    assert tr.num_clips == 3 * 3 * 2 and va.num_clips == 3 * 2
    assert all(n.startswith(("1-", "2-", "3-")) for n in tr.names) and all(n.startswith("4-") for n in va.names)
    assert tr.class_names == CLASSES
    x, y = tr[0]
    assert x.shape == (155, 128) and y.dtype == torch.long
    w = au.esc50_dataset(esc50_wav, folds=[5])      # official layout: 44.1-kHz stereo wav
    assert w.num_clips == 3 and w[0][0].shape == (155, 128)
    aug = au.esc50_dataset(esc50_flac, folds=[1], augment=True)
    assert len(aug) == 3 * aug.num_clips          # x3 virtual expansion by default
    tub = au.esc50_dataset(esc50_flac, folds=[1], mode="tubelet")
    assert tub[0][0].shape == (152, 128)


def test_missing_and_truncated_clips_are_named(tmp_path):
    root = make_esc50(tmp_path / "E", clips_per_class_fold=1, folds=(1,), seconds=5.0)
    victim = sorted((root / "audio").iterdir())[0]
    victim.unlink()
    with pytest.raises(au.AudioError, match=victim.stem):
        au.esc50_dataset(root, folds=[1])
    sf.write(victim, np.zeros(16000, np.float32), 16000)          # 1 s instead of 5 s
    with pytest.raises(au.AudioError, match="truncated"):
        au.esc50_dataset(root, folds=[1], cache_dir=tmp_path / "c")


def test_cache_is_reused_and_keyed_by_config(esc50_flac, tmp_path, monkeypatch):
    files = au.read_esc50_meta(esc50_flac).files[:4]
    first = np.array(au.cached_features(files, au.ESC50_FEATURES, tmp_path))
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def boom(*a, **k):
        raise AssertionError("decoded audio although the cache exists")
    monkeypatch.setattr(au, "load_audio", boom)
    again = au.cached_features(files, au.ESC50_FEATURES, tmp_path)
    assert isinstance(again, np.memmap) and np.array_equal(first, again)
    monkeypatch.undo()
    au.cached_features(files, au.FeatureConfig(n_mels=64), tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_normalisation_from_training_split_only(esc50_flac):
    tr = au.esc50_dataset(esc50_flac, folds=[1, 2, 3])
    mean, std = tr.compute_normalization()
    feats = au.crop_frames(tr.features, 155)
    assert torch.allclose(mean, feats.mean((0, 1)), atol=1e-4)
    tr.set_normalization(mean, std)
    x, _ = tr.get_batch(torch.arange(tr.num_clips))
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 0.05


def test_get_batch_deterministic_with_generator(esc50_flac):
    ds = au.esc50_dataset(esc50_flac, folds=[1, 2], augment=True)
    a = ds.get_batch([0, 1, 2], torch.Generator().manual_seed(3))[0]
    b = ds.get_batch([0, 1, 2], torch.Generator().manual_seed(3))[0]
    c = ds.get_batch([0, 1, 2], torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stratified_split():
    labels = np.repeat(np.arange(4), [10, 20, 7, 3])
    parts = au.stratified_split(labels, (0.6, 0.2, 0.2), seed=1)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(labels) and len(np.unique(allidx)) == len(labels)
    for p in parts:
        assert set(labels[p]) == {0, 1, 2, 3}            # every class in every part
    assert all(np.array_equal(a, b) for a, b in zip(parts, au.stratified_split(labels, (0.6, 0.2, 0.2), seed=1)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, au.stratified_split(labels, (0.6, 0.2, 0.2), seed=2)))


def test_folder_dataset(folder_ds):
    cfg = au.FeatureConfig(duration=1.0, n_frames=31)
    full = au.folder_dataset(folder_ds, cfg)
    assert full.class_names == sorted(CLASSES) and full.num_clips == 18      # .txt/.xyz ignored
    assert full[0][0].shape == (31, 128)
    parts = [au.folder_dataset(folder_ds, cfg, split=s, seed=0) for s in ("train", "val", "test")]
    names = [set(p.names) for p in parts]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and sum(map(len, names)) == 18
    merged = au.folder_dataset(folder_ds, cfg, merge={"tonal": ["low_tone", "high_tone"]})
    assert sorted(merged.class_names) == ["noise_bursts", "tonal"]
    only = au.folder_dataset(folder_ds, cfg, classes=["high_tone", "low_tone"])
    assert only.class_names == ["high_tone", "low_tone"] and only.num_clips == 12
    with pytest.raises(ValueError, match="unknown class"):
        au.folder_dataset(folder_ds, cfg, classes=["cowbell"])


# ------------------------------------------------------------------ resampling with bounded cost (issue 14.2)
RESAMPLE_TOL = 1e-4     # max |error| of a 997-Hz sine against the exact sine at the new rate (-80 dB)


@pytest.mark.parametrize("sr", [39063, 11127, 22051, 8000, 96000])
@pytest.mark.parametrize("target", [44100, 16000])
def test_resample_any_rate_matches_the_exact_sine(sr, target):
    """soxr against the analytic reference: a 997-Hz sine sampled at ``sr`` resampled to ``target``
    equals the same sine sampled at ``target`` within RESAMPLE_TOL (edges of 10 ms excluded)."""
    seconds, f = 0.5, 997.0
    x = np.sin(2 * np.pi * f * np.arange(int(seconds * sr)) / sr).astype(np.float32)
    y = au.resample(torch.from_numpy(x), sr, target).numpy()
    assert len(y) == round(len(x) * target / sr)
    ref = np.sin(2 * np.pi * f * np.arange(len(y)) / target)
    edge = int(0.01 * target)
    assert np.abs(y[edge:-edge] - ref[edge:-edge]).max() < RESAMPLE_TOL


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory from /proc (Linux)")
def test_odd_rate_file_loads_fast_with_little_memory(tmp_path):
    """A 39063-Hz drum sample: under 2 CPU s and under 1 GB peak resident memory for the whole process
    (torchaudio's sinc kernel for this rate pair alone was 766 MB; 33 s, 6.7 GB peak)."""
    path = tmp_path / "odd.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 39063).astype(np.float32), 39063)
    # CPU time, not wall time: the machine running the tests may be busy. Peak memory: VmHWM of the
    # new process (ru_maxrss would include the forked pytest process, it survives execve)
    code = ("import re, time, audio_utils as au; t = time.process_time(); "
            f"w = au.load_audio({str(path)!r}, 44100); dt = time.process_time() - t; "
            "hwm = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024; "
            "print(dt, hwm, w.shape[-1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()
    seconds, peak, n = float(out[0]), int(out[1]), int(out[2])
    assert n == 44100 and seconds < 2.0 and peak < 1 << 30, (seconds, peak)


# ------------------------------------------------------------------ listing (issue 14.8)
def test_list_audio_files_reports_skips(tmp_path):
    (tmp_path / "d").mkdir()
    sf.write(tmp_path / "d" / "a.flac", np.zeros(100, np.float32), 8000)
    (tmp_path / "d" / "notes.txt").write_text("x")
    (tmp_path / "d" / ".hidden.wav").write_bytes(b"")
    os.symlink(tmp_path / "nowhere.wav", tmp_path / "d" / "dead.wav")
    os.symlink(tmp_path / "d", tmp_path / "d" / "again")
    os.mkfifo(tmp_path / "d" / "fifo.ogg")
    skipped = []
    files = au.list_audio_files(tmp_path / "d", skipped)
    assert [f.name for f in files] == ["a.flac"]
    reasons = {p.name: r for p, r in skipped}
    assert reasons["dead.wav"] == "dangling symbolic link" and "loop" in reasons["again"]
    assert "FIFO" in reasons["fifo.ogg"] and len(reasons) == 3
    with pytest.raises(au.AudioError, match="FIFO"):
        au.load_audio(tmp_path / "d" / "fifo.ogg")
    with pytest.raises(au.AudioError, match="dangling symbolic link"):
        au.load_audio(tmp_path / "d" / "dead.wav")


def test_esc50_metadata_without_its_columns_is_one_line(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text("filename,fold\n1-1.wav,1\n")
    with pytest.raises(au.AudioError, match="needs columns filename, fold, target, category"):
        au.read_esc50_meta(tmp_path)
    (tmp_path / "meta" / "esc50.csv").write_text("filename,fold,target,category\n")
    with pytest.raises(au.AudioError, match="lists no clips"):
        au.read_esc50_meta(tmp_path)
