"""classify/onsets.py and classify/timeline.py: every hit of a loop or a stream, with its time and label."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

import audio_utils as au
import models
from classify.onsets import (Hit, OnsetDetector, OnsetParams, classify_hits, detect_onsets, format_hit, hit_record,
                             print_hits, segments, stream_hits, suppress_tail)
from classify.timeline import plot_timeline
from training.checkpoint import save_checkpoint
from training.engine import amp_dtype, autocast

SR = 16000
# an onset-aligned feature config, cheap: 0.25-s crops at 16 kHz -> [32, 32]
CFG = au.FeatureConfig(sample_rate=SR, n_fft=512, hop_length=128, n_mels=32, duration=0.25, n_frames=32,
                       onset_align=True, onset_pre_ms=5.0)
KINDS = ["low", "high", "noise"]


def synth_hit(kind: str, amp: float, rng: np.random.Generator, seconds: float = 0.3) -> np.ndarray:
    """A percussive hit starting at sample 0: a kick-like low tone (falling pitch, beater click), a decaying
    high tone or a noise burst; faded out over its last 20 ms, as a one-shot sample ends."""
    t = np.arange(int(seconds * SR)) / SR
    if kind == "low":
        f0 = rng.uniform(150, 250)
        phase = 2 * np.pi * np.cumsum(60 + (f0 - 60) * np.exp(-t / 0.03)) / SR
        x = np.sin(phase) * np.exp(-t / 0.08) + 0.5 * rng.standard_normal(len(t)) * np.exp(-t / 0.003)
    elif kind == "high":
        x = np.sin(2 * np.pi * rng.uniform(2500, 3500) * t) * np.exp(-t / 0.05)
    else:
        x = rng.standard_normal(len(t)) * np.exp(-t / 0.04)
    x[: int(0.002 * SR)] *= np.linspace(0, 1, int(0.002 * SR))       # 2-ms attack
    x[-int(0.02 * SR):] *= np.linspace(1, 0, int(0.02 * SR))
    return (amp * x / np.abs(x).max()).astype(np.float32)


# (time s, kind, amplitude): two hits 60 ms apart, quiet hits after loud ones, a hit at sample 0 of the loop
PLAN = [(0.0, "high", 0.5), (0.30, "high", 0.7), (0.36, "low", 0.8), (0.70, "noise", 0.6), (1.00, "noise", 0.9),
        (1.12, "low", 0.1), (1.45, "low", 0.9), (1.70, "high", 0.15), (2.00, "noise", 0.5), (2.06, "low", 0.5)]


def make_loop(plan=PLAN, seconds: float = 2.6, seed: int = 0, background=None):
    rng = np.random.default_rng(seed)
    wave = np.zeros(int(seconds * SR), np.float32) if background is None else background.copy()
    hits = []
    for t, kind, amp in plan:
        x = synth_hit(kind, amp, rng)
        n = int(round(t * SR))
        m = min(len(x), len(wave) - n)
        wave[n:n + m] += x[:m]
        hits.append(x)
    wave += 1e-4 * rng.standard_normal(len(wave)).astype(np.float32)      # a little noise floor
    return wave, [int(round(t * SR)) for t, _, _ in plan], hits


def fake_predict(segment: torch.Tensor) -> np.ndarray:
    """Classifies the training crop (find_onset + duration) of a segment by the spectrum of its first 50 ms:
    a segment that did not start just before its hit would be classified from another hit's crop."""
    crop = au.prepare_waveform(segment, CFG).numpy().astype(np.float64)[: int(0.05 * SR)]
    power = np.abs(np.fft.rfft(crop)) ** 2 + 1e-12
    freqs = np.fft.rfftfreq(len(crop), 1 / SR)
    low = power[freqs < 600].sum() / power.sum()
    high = power[(freqs > 2000) & (freqs < 4000)].sum() / power.sum()
    scores = np.array([10 * low - 3, 10 * high - 3, 0.0])
    e = np.exp(scores - scores.max())
    return e / e.sum()


def _label(p):
    return KINDS[int(np.argmax(p))]


# ------------------------------------------------------------------ detection
def test_every_hit_found_within_10ms_and_nothing_else():
    wave, placed, _ = make_loop()
    onsets = detect_onsets(wave, SR)
    assert len(onsets) == len(placed), (onsets / SR, np.array(placed) / SR)
    err_ms = np.abs(onsets - np.array(placed)) / SR * 1000
    assert err_ms.max() <= 10.0, err_ms


@pytest.mark.parametrize("case", ["silence", "noise_floor", "sustained_tone", "tone_chord"])
def test_no_hit_in_silence_or_a_sustained_tone(case):
    rng = np.random.default_rng(1)
    t = np.arange(3 * SR) / SR
    fade = np.clip(t / 0.3, 0, 1) ** 2                                    # a tone fading in over 0.3 s
    wave = {"silence": np.zeros_like(t),
            "noise_floor": 3e-4 * rng.standard_normal(len(t)),            # -70 dBFS hiss
            "sustained_tone": 0.5 * fade * np.sin(2 * np.pi * 440 * t),
            "tone_chord": 0.3 * fade * (np.sin(2 * np.pi * 220 * t) + np.sin(2 * np.pi * 1320 * t))}[case]
    assert len(detect_onsets(wave.astype(np.float32), SR)) == 0


def test_hits_over_a_sustained_tone_are_found():
    t = np.arange(int(2.6 * SR)) / SR
    tone = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    tone[: int(0.3 * SR)] *= np.linspace(0, 1, int(0.3 * SR)) ** 2
    plan = [(0.5, "noise", 0.7), (0.9, "high", 0.6), (1.5, "noise", 0.4)]
    wave, placed, _ = make_loop(plan, background=tone)
    onsets = detect_onsets(wave, SR)
    assert len(onsets) == len(placed)
    assert np.abs(onsets - np.array(placed)).max() <= 0.010 * SR


def test_min_gap_merges_hits_closer_than_it():
    wave, placed, _ = make_loop([(0.2, "noise", 0.7), (0.245, "noise", 0.7)])
    assert len(detect_onsets(wave, SR)) == 2
    assert len(detect_onsets(wave, SR, OnsetParams(min_gap_ms=60.0))) == 1


# ------------------------------------------------------------------ streaming
@pytest.mark.parametrize("chunking", ["one_sample_then_small", "random", "frames"])
def test_stream_in_small_chunks_gives_the_offline_segments(chunking):
    wave, _, _ = make_loop()
    ref = segments(wave, SR, CFG.duration, CFG.onset_pre_ms)
    rng = np.random.default_rng(2)
    det = OnsetDetector(SR, CFG.duration, CFG.onset_pre_ms)
    got, pos = [], 0
    while pos < len(wave):
        n = {"one_sample_then_small": 1 if pos < 2000 else 37, "random": int(rng.integers(1, 700)),
             "frames": 256}[chunking]
        for s in det.feed(wave[pos:pos + n]):
            got.append(s)
            assert s.end <= pos + n                        # emitted only once its audio has arrived ...
            assert s.ready_at == pos + n
        pos += n
    for s in det.flush():
        got.append(s)
    assert [(s.onset, s.start, s.end) for s in got] == [(s.onset, s.start, s.end) for s in ref]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(got, ref))
    # ... and, except at the end of the stream, at most the detector's latency after the onset
    lat = det.latency_samples + 700
    assert all(s.ready_at - s.onset <= lat for s in got[:-1])


def test_stream_memory_stays_bounded():
    """A long stream keeps only the pending segments and about one frame of audio."""
    wave, _, _ = make_loop()
    long = np.tile(wave, 8)                                     # 21 s, 80 hits
    det = OnsetDetector(SR, CFG.duration, CFG.onset_pre_ms)
    n_segments, biggest, most_flux = 0, 0, 0
    for i in range(0, len(long), 4000):
        n_segments += len(det.feed(long[i:i + 4000]))
        biggest, most_flux = max(biggest, len(det.buf)), max(most_flux, len(det.recent_flux))
    n_segments += len(det.flush())
    assert n_segments == 8 * len(PLAN)
    assert biggest <= int((CFG.duration + 0.1) * SR) + 4000 + det.lookback
    assert most_flux <= 100


def test_stream_hits_equal_classify_hits():
    wave, _, _ = make_loop()
    offline = classify_hits(wave, SR, fake_predict, CFG.duration, CFG.onset_pre_ms, KINDS)
    chunks = (wave[i:i + 160] for i in range(0, len(wave), 160))       # 10-ms chunks
    streamed = list(stream_hits(chunks, SR, fake_predict, CFG.duration, CFG.onset_pre_ms, KINDS))
    assert [(h.time_s, h.label) for h in streamed] == [(h.time_s, h.label) for h in offline]
    assert all(np.array_equal(a.probs, b.probs) for a, b in zip(streamed, offline))
    assert all(h.ready_s >= h.end_s - 1e-9 for h in streamed)


def test_nan_in_a_stream_is_a_clear_error():
    det = OnsetDetector(SR, CFG.duration)
    det.feed(np.zeros(1000, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        det.feed(np.array([0.0, np.nan], np.float32))


# ------------------------------------------------------------------ classification
def test_labels_equal_classifying_each_hit_alone():
    wave, placed, alone = make_loop()
    hits = classify_hits(wave, SR, fake_predict, CFG.duration, CFG.onset_pre_ms, KINDS)
    assert len(hits) == len(placed)
    expected = [_label(fake_predict(torch.from_numpy(x))) for x in alone]
    assert [h.label for h in hits] == expected
    assert expected == [k for _, k, _ in PLAN]                  # the fake classifier itself is right
    for h, n in zip(hits, placed):
        assert abs(h.time_s - n / SR) <= 0.010
        assert h.start_s <= max(0.0, h.time_s - CFG.onset_pre_ms / 1000) and h.end_s <= h.start_s + CFG.duration + 0.011


def test_segments_stop_at_the_next_hit():
    """The first of two hits 60 ms apart is classified without the second one's attack."""
    wave, placed, _ = make_loop()
    segs = segments(wave, SR, CFG.duration, CFG.onset_pre_ms)
    i = placed.index(int(0.30 * SR))
    assert segs[i].end == segs[i + 1].start and segs[i].end < placed[i + 1]
    assert segs[-1].end - segs[-1].start == int(0.010 * SR) + int(CFG.duration * SR) - int(0.005 * SR) or \
        segs[-1].end == len(wave)


def _checkpoint(path, cfg=CFG, seed=0):
    torch.manual_seed(seed)
    model = models.build_model("cnn", num_classes=len(KINDS), n_mels=cfg.n_mels, n_frames=cfg.n_frames, preset="tiny")
    meta = {"class_names": KINDS, "feature_config": cfg.to_dict(),
            "normalization": {"mean": [-8.0] * cfg.n_mels, "std": [3.0] * cfg.n_mels},
            "task": {"type": "multiclass"}, "metrics": {}, "model_name": "cnn"}
    return save_checkpoint(path, model, meta)


def _predictor(path):
    """The checkpoint's predictor and its one-waveform classifier."""
    from classify.predictor import Predictor
    pred = Predictor(path, "cpu")
    return pred, pred.predict_waveform


def test_cli_prints_one_line_per_hit_with_its_time_and_streams_the_same(tmp_path, capsys, monkeypatch):
    """``inference.py --checkpoint <onset checkpoint> loop.wav``: one line per hit within 10 ms of where it was
    placed, labels equal to classifying each hit alone; ``--stream`` in 10-ms chunks prints the same hits."""
    import io
    import sys

    from classify.cli import main

    ckpt = _checkpoint(tmp_path / "hits.safetensors")
    pred, predict_waveform = _predictor(ckpt)
    wave, placed, _ = make_loop()
    f = tmp_path / "loop.wav"
    sf.write(f, wave, SR, subtype="FLOAT")
    assert main(["--checkpoint", str(ckpt), "--json", str(f), "--plot", str(tmp_path / "loop.png")]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(recs) == len(placed)
    assert max(abs(r["time_s"] - n / SR) for r, n in zip(recs, placed)) <= 0.010
    assert (tmp_path / "loop.png").stat().st_size > 10_000
    lib = classify_hits(wave, SR, predict_waveform, CFG.duration, CFG.onset_pre_ms, KINDS)
    for r, h in zip(recs, lib):   # each hit alone: its segment of the loop, classified as a one-shot
        a, b = (int(round(t * SR)) for t in r["segment_s"])
        probs = predict_waveform(torch.from_numpy(wave[a:b]))
        assert r["label"] == KINDS[int(probs.argmax())] == h.label
        # (an earlier hit's tail is subtracted first: the probabilities are the library's)
        assert r["prob"] == pytest.approx(h.prob, abs=1e-5) and r["time_s"] == pytest.approx(h.time_s, abs=1e-6)
    assert main(["--checkpoint", str(ckpt), str(f)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{f}  [2.60 s]" and len(lines) == len(placed) + 1
    assert lines[1] == f"{recs[0]['time_s']:.3f} s  {recs[0]['label']:<5}  {recs[0]['prob']:.2f}"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(wave.astype("<f4").tobytes())))
    assert main(["--checkpoint", str(ckpt), "--json", "--stream", "--stream-format", "f32le",
                 "--stream-rate", str(SR)]) == 0
    stream = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["time_s"], r["label"]) for r in stream] == [(r["time_s"], r["label"]) for r in recs]
    assert main(["--checkpoint", str(ckpt), "--plot", str(tmp_path / "x.png"), str(f), str(f)]) == 2


def test_one_shot_file_gives_the_evaluation_path_probabilities(tmp_path):
    """A one-shot file is one hit, classified from exactly the crop training takes from the file."""
    pred, predict_waveform = _predictor(_checkpoint(tmp_path / "hits.safetensors"))
    rng = np.random.default_rng(5)
    for k, (kind, lead) in enumerate(zip(KINDS * 2, [0.03, 0.0, 0.002, 0.03, 0.001, 0.0])):
        # a hit after some silence, and hits that start within the pre-roll (the crop then starts at sample 0)
        x = np.concatenate([np.zeros(int(lead * SR) + 17 * k, np.float32), synth_hit(kind, 0.7, rng, 0.6)])
        f = tmp_path / f"{kind}{k}.wav"
        sf.write(f, x, SR, subtype="FLOAT")
        wave = au.load_audio(f, pred.cfg.sample_rate)
        hits = classify_hits(wave, pred.cfg.sample_rate, predict_waveform, pred.cfg.duration, pred.cfg.onset_pre_ms,
                             pred.class_names)
        assert len(hits) == 1
        # training's featurisation of the file (features_from_file), normalised, through the model
        feats = (au.features_from_file(f, pred.cfg) - pred.normalization[0]) / pred.normalization[1]
        with torch.inference_mode(), autocast("cpu", amp_dtype("cpu")):     # the engine's precision rule
            expected = torch.softmax(pred.model(feats[None]).float(), -1)[0].numpy()
        np.testing.assert_allclose(hits[0].probs, expected, rtol=0, atol=1e-6)
        assert abs(hits[0].time_s - (int(lead * SR) + 17 * k) / SR) <= 0.003


def test_segments_are_resampled_to_the_model_rate():
    wave, placed, _ = make_loop()
    wave48 = au.resample(torch.from_numpy(wave), SR, 48000).numpy()
    seen = []

    def predict(seg):
        seen.append(len(seg))
        return fake_predict(seg)

    hits = classify_hits(wave48, 48000, predict, CFG.duration, CFG.onset_pre_ms, KINDS, model_rate=SR)
    assert [h.label for h in hits] == [k for _, k, _ in PLAN]
    assert max(seen) <= int((CFG.duration + 0.005) * SR) + 2
    assert np.abs(np.array([h.time_s for h in hits]) - np.array(placed) / SR).max() <= 0.010


# ------------------------------------------------------------------ output
def test_print_hits_one_line_per_hit_as_it_arrives():
    wave, placed, _ = make_loop()
    lines = []

    class Out:                                          # records what had been printed when each hit was made
        def write(self, text):
            lines.extend(t for t in text.splitlines() if t)

        def flush(self):
            pass

    produced = []

    def hits():
        chunks = (wave[i:i + 160] for i in range(0, len(wave), 160))
        for h in stream_hits(chunks, SR, fake_predict, CFG.duration, CFG.onset_pre_ms, KINDS):
            produced.append(len(lines))
            yield h

    got = print_hits(hits(), Out(), class_names=KINDS)
    assert produced == list(range(len(placed)))          # each line printed before the next hit was computed
    assert len(lines) == len(placed) == len(got)
    assert [ln.split()[2] for ln in lines] == [k for _, k, _ in PLAN]
    assert all(abs(float(ln.split()[0]) - n / SR) <= 0.010 for ln, n in zip(lines, placed))
    lines.clear()
    print_hits(got[:2], Out(), as_json=True, class_names=KINDS, top_k=3, source="loop.wav")
    recs = [json.loads(ln) for ln in lines]
    assert [r["file"] for r in recs] == ["loop.wav"] * 2 and len(recs[0]["top"]) == 3


def test_text_line_and_json_record():
    h = Hit(time_s=0.5123, label="snare", prob=0.934, probs=np.array([0.934, 0.05, 0.016]), start_s=0.5023,
            end_s=0.8723)
    assert format_hit(h) == "0.512 s  snare  0.93"
    rec = hit_record(h, ["snare", "kick", "hihat"], top_k=2)
    assert json.loads(json.dumps(rec)) == {"time_s": 0.5123, "label": "snare", "prob": 0.934,
                                           "segment_s": [0.5023, 0.8723],
                                           "top": [{"label": "snare", "prob": 0.934}, {"label": "kick", "prob": 0.05}]}


def test_timeline_png_for_hits_and_windows(tmp_path):
    wave, _, _ = make_loop()
    hits = classify_hits(wave, SR, fake_predict, CFG.duration, CFG.onset_pre_ms, KINDS)
    for name, kw in (("hits.png", {"hits": hits}),
                     ("windows.png", {"windows": [(0.0, 1.0, "dog", 0.9), (0.5, 1.5, "rain", 0.6)]})):
        out = plot_timeline(tmp_path / name, wave, SR, title="loop.wav", **kw)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hits.png", "windows.png"]      # no temp files left
    with pytest.raises(ValueError, match="png"):
        plot_timeline(tmp_path / "x.jpg", wave, SR)
    with pytest.raises(ValueError, match="directory not found"):
        plot_timeline(tmp_path / "missing" / "x.png", wave, SR)


# ------------------------------------------------------------------ reference
def test_onset_strength_and_onsets_agree_with_librosa():
    librosa = pytest.importorskip("librosa")
    wave, placed, _ = make_loop()
    wave = wave + 1e-3 * np.random.default_rng(3).standard_normal(len(wave)).astype(np.float32)
    p = OnsetParams(frame_ms=20.0, hop_ms=5.0)                 # 320-sample frames = 4 hops of 80
    det = OnsetDetector(SR, CFG.duration, params=p, keep_flux=True)
    mine = [s.onset for s in det.feed(wave) + det.flush()]
    ours = np.asarray(det.flux)
    ref = librosa.onset.onset_strength(y=wave, sr=SR, n_fft=320, hop_length=80, center=False, n_mels=40, fmin=30.0,
                                       lag=1, max_size=1, aggregate=np.mean)
    # our frame k covers samples [80 (k - 3), 80 (k + 1)), librosa's frame j [80 j, 80 j + 320); librosa pads
    # its envelope by lag + n_fft // (2 hop) = 3 values, so its value i is the rise into its frame i - 2 = our i + 1
    n = min(len(ref), len(ours) - 1)
    corr = np.corrcoef(ours[2:1 + n], ref[1:n])[0, 1]
    assert corr > 0.99, corr
    lib = librosa.onset.onset_detect(y=wave, sr=SR, hop_length=80, units="time", backtrack=False)
    assert len(lib) >= 4
    for t in lib:                                  # every hit librosa's offline peak picking finds, we find too
        assert np.abs(np.asarray(mine) / SR - t).min() <= 0.02, (t, np.asarray(mine) / SR)


# ------------------------------------------------------------------ reported time: where the sound starts
def _lead_in_hit(lead_ms: float, lead_level: float, silence_ms: float = 0.0) -> np.ndarray:
    """``silence_ms`` of silence, then a soft noise lead-in of ``lead_ms`` at ``lead_level`` (of the peak), then a
    sharp noise attack (peak 0.8) decaying over 40 ms: a pedal hi-hat's closing cymbals before the chick."""
    rng = np.random.default_rng(3)
    lead = lead_level * 0.8 * np.clip(rng.standard_normal(int(lead_ms * 1e-3 * SR)), -1, 1)
    t = np.arange(int(0.2 * SR)) / SR
    body = 0.8 * np.clip(rng.standard_normal(len(t)), -1, 1) * np.exp(-t / 0.04)
    return np.concatenate([np.zeros(int(silence_ms * 1e-3 * SR)), lead, body]).astype(np.float32)


def test_backtrack_reports_where_a_soft_lead_in_starts_and_keeps_the_crop_anchor():
    n0 = int(0.3 * SR)
    wave = np.zeros(int(1.0 * SR), np.float32)
    hit = _lead_in_hit(lead_ms=15.0, lead_level=0.05)
    wave[n0:n0 + len(hit)] += hit
    attack = n0 + int(0.015 * SR)
    plain = segments(wave, SR, 0.1, 5.0, params=OnsetParams(backtrack_ms=0.0))
    back = segments(wave, SR, 0.1, 5.0, params=OnsetParams(backtrack_ms=20.0))
    assert len(plain) == len(back) == 1
    assert abs(plain[0].onset - attack) <= 0.002 * SR and plain[0].time == plain[0].onset      # off: the attack
    assert back[0].onset == plain[0].onset and back[0].start == plain[0].start                 # same crop
    assert abs(back[0].time - n0) <= 0.002 * SR                                                # the lead-in's start
    assert detect_onsets(wave, SR, OnsetParams(backtrack_ms=20.0))[0] == back[0].time
    # the stream reports the same times
    det = OnsetDetector(SR, 0.1, 5.0, params=OnsetParams(backtrack_ms=20.0))
    streamed = [s for i in range(0, len(wave), 37) for s in det.feed(wave[i:i + 37])] + det.flush()
    assert [(s.onset, s.time) for s in streamed] == [(s.onset, s.time) for s in back]


def test_backtrack_never_includes_silence_or_an_earlier_hits_tail():
    p = OnsetParams(backtrack_ms=20.0)
    n0 = int(0.3 * SR)
    wave = np.zeros(int(1.0 * SR), np.float32)
    hit = _lead_in_hit(lead_ms=0.0, lead_level=0.0, silence_ms=12.0)       # 12 ms of silence, then the attack
    wave[n0:n0 + len(hit)] += hit
    seg = segments(wave, SR, 0.1, 5.0, params=p)
    assert len(seg) == 1 and seg[0].time == seg[0].onset and abs(seg[0].onset - (n0 + int(0.012 * SR))) <= 0.002 * SR
    # a soft hit while a loud earlier one rings on: no near-silence before it, so its time is its onset
    rng = np.random.default_rng(0)
    loud = synth_hit("noise", 0.9, rng, seconds=0.6)
    wave = np.zeros(int(1.2 * SR), np.float32)
    wave[n0:n0 + len(loud)] += loud
    wave[n0 + int(0.25 * SR):][:int(0.2 * SR)] += _lead_in_hit(lead_ms=0.0, lead_level=0.0)[:int(0.2 * SR)]
    segs = segments(wave, SR, 0.1, 5.0, params=p)
    assert len(segs) == 2 and all(s.time == s.onset for s in segs)


def test_backtrack_settings_are_checked():
    with pytest.raises(ValueError, match="start_rise"):
        OnsetParams(start_rise=0.5)
    with pytest.raises(ValueError, match="backtrack_ms"):
        OnsetParams(backtrack_ms=-1.0)


def test_much_quieter_bursts_in_a_hits_decay_are_part_of_it():
    """An electronic kick whose decay pulses (bursts 50 ms apart, 16 and 30 dB down) is one hit; an equally
    loud hit 60 ms later, or a quiet one after mask_ms, is still a hit of its own."""
    rng = np.random.default_rng(1)
    t = np.arange(int(0.3 * SR)) / SR
    kick = (0.9 * np.sin(2 * np.pi * 80 * t) * np.exp(-t / 0.008)).astype(np.float32)    # gone within 50 ms
    wave = np.zeros(int(1.5 * SR), np.float32)
    n0 = int(0.2 * SR)
    wave[n0:n0 + len(kick)] += kick
    for dt, db in ((0.05, -16.0), (0.095, -30.0)):
        burst = synth_hit("noise", 0.9 * 10 ** (db / 20), rng, seconds=0.03)
        n = n0 + int(dt * SR)
        wave[n:n + len(burst)] += burst
    assert len(detect_onsets(wave, SR)) == 1
    assert len(detect_onsets(wave, SR, OnsetParams(mask_db=0.0))) >= 2           # without the rule: 2-3 hits
    assert len(detect_onsets(wave, SR, OnsetParams(mask_ms=40.0))) >= 2
    quiet_late = wave.copy()
    n = n0 + int(0.5 * SR)
    quiet_late[n:n + len(kick)] += 0.05 * kick                                    # 25 dB down, 0.5 s later
    assert len(detect_onsets(quiet_late, SR)) == 2


def test_onset_is_the_attack_not_an_earlier_swell_of_a_ringing_tail():
    """A steady tone rings (0.3) with a 1.5-ms swell to 0.42 14 ms before a loud noise hit: the swell crosses
    10 % of the rise, but no attack follows it within attack_ms, so the onset is the hit's own attack."""
    rng = np.random.default_rng(0)
    n = int(0.8 * SR)
    t = np.arange(n) / SR
    amp = np.full(n, 0.3)
    n0 = int(0.5 * SR)
    s0, s1 = n0 - int(0.014 * SR), n0 - int(0.0125 * SR)
    amp[s0:s1] = 0.42
    wave = amp * np.sin(2 * np.pi * 3000 * t)
    m = int(0.1 * SR)
    wave[n0:n0 + m] += 0.9 * np.clip(rng.standard_normal(m), -1, 1) * np.exp(-np.arange(m) / SR / 0.03)
    wave = wave.astype(np.float32)
    wide = OnsetParams(search_ms=28.0)
    for p in (OnsetParams(), wide):
        onsets = [o for o in detect_onsets(wave, SR, p) if abs(o - n0) < 0.03 * SR]
        assert len(onsets) == 1 and abs(onsets[0] - n0) <= 0.001 * SR
    early = [o for o in detect_onsets(wave, SR, replace(wide, attack_ms=0.0)) if abs(o - n0) < 0.03 * SR]
    assert len(early) == 1 and early[0] <= s1                       # without the attack rule: the swell


def test_a_change_of_colour_without_an_attack_is_not_a_hit():
    """Ringing noise that turns brighter at the same level (an open cymbal's second swell) is no new hit;
    the same change with a 6-dB attack is."""
    rng = np.random.default_rng(0)
    n, n0 = int(1.0 * SR), int(0.5 * SR)
    low = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")        # dull noise
    bright = rng.standard_normal(n)
    wave = np.where(np.arange(n) < n0, low / np.abs(low).max(), bright / np.abs(bright).max()) * 0.5
    wave = wave.astype(np.float32)
    near = lambda p, w: [o for o in detect_onsets(w, SR, p) if abs(o - n0) < 0.03 * SR]    # noqa: E731
    assert near(OnsetParams(), wave) == []
    assert len(near(OnsetParams(min_rise_db=0.0), wave)) == 1                     # the flux alone fires
    louder = wave.copy()
    louder[n0:] *= 2.0
    assert len(near(OnsetParams(), louder)) == 1


# ------------------------------------------------------------------ an earlier hit's ringing tail
def _ringing_loop(tail_amp: float = 0.6, hit_at: float = 0.5):
    """A cymbal-like hit at 0.1 s that rings on (3-kHz partials and noise, 1.5-s decay) and a kick-like hit
    under its tail; the same kick alone at the same place."""
    rng = np.random.default_rng(3)
    t = np.arange(int(1.2 * SR)) / SR
    ring = (np.sin(2 * np.pi * 3000 * t) + 0.7 * np.sin(2 * np.pi * 4300 * t) + 0.5 * rng.standard_normal(len(t)))
    ring = (tail_amp * ring / np.abs(ring).max() * np.exp(-t / 1.5)).astype(np.float32)
    ring[: int(0.002 * SR)] *= np.linspace(0, 1, int(0.002 * SR), dtype=np.float32)
    kick = synth_hit("low", 0.5, rng)
    n0, n1 = int(0.1 * SR), int(hit_at * SR)
    alone = np.zeros(int(1.4 * SR), np.float32)
    alone[n1:n1 + len(kick)] += kick
    wave = alone.copy()
    wave[n0:n0 + len(ring)] += ring[: len(wave) - n0]
    return wave, alone, n1


def test_tail_subtraction_brings_a_hit_under_a_ringing_tail_back_to_the_hit_alone():
    wave, alone, n1 = _ringing_loop()
    on, off = OnsetParams(tail_subtract=2.0), OnsetParams(tail_subtract=0.0)
    segs = segments(wave, SR, CFG.duration, CFG.onset_pre_ms, params=on)
    assert len(segs) == 2 and abs(segs[1].onset - n1) <= 0.002 * SR and segs[1].context is not None
    seg = segs[1]
    ref = alone[seg.start:seg.end]
    residual = lambda x: float(np.sum((x - ref) ** 2))                                # noqa: E731
    assert residual(suppress_tail(seg, SR, on)) < 0.2 * residual(seg.audio)      # the tail's energy mostly gone
    assert suppress_tail(seg, SR, off) is seg.audio
    # the hit is classified from the cleaned segment
    hits = classify_hits(wave, SR, fake_predict, CFG.duration, CFG.onset_pre_ms, KINDS, params=on)
    assert np.allclose(hits[1].probs, fake_predict(torch.from_numpy(suppress_tail(seg, SR, on))))
    assert not np.allclose(hits[1].probs, fake_predict(torch.from_numpy(seg.audio)))
    # streamed in small chunks: the same segments and contexts
    det = OnsetDetector(SR, CFG.duration, CFG.onset_pre_ms, params=on)
    streamed = [s for i in range(0, len(wave), 53) for s in det.feed(wave[i:i + 53])] + det.flush()
    assert [(s.onset, s.start, s.end) for s in streamed] == [(s.onset, s.start, s.end) for s in segs]
    assert streamed[0].context is None and np.array_equal(streamed[1].context, seg.context)


def test_tail_subtraction_leaves_a_first_hit_and_a_hit_after_silence_unchanged():
    p = OnsetParams(tail_subtract=2.0)
    wave, placed, _ = make_loop()
    segs = segments(wave, SR, CFG.duration, CFG.onset_pre_ms, params=p)
    assert segs[0].context is None and suppress_tail(segs[0], SR, p) is segs[0].audio
    wave, placed, _ = make_loop(plan=[(0.1, "noise", 0.8), (0.8, "low", 0.5)], seconds=1.2)   # 0.4 s of silence
    segs = segments(wave, SR, CFG.duration, CFG.onset_pre_ms, params=p)
    assert len(segs) == 2 and segs[1].context is not None and suppress_tail(segs[1], SR, p) is segs[1].audio


def test_onset_settings_on_the_command_line(tmp_path, capsys):
    from classify.cli import main

    ckpt = _checkpoint(tmp_path / "hits.safetensors")
    wave, placed, _ = make_loop()
    f = tmp_path / "loop.wav"
    sf.write(f, wave, SR, subtype="FLOAT")
    assert main(["--checkpoint", str(ckpt), "--json", str(f), "--onset", "min_gap_ms=400"]) == 0
    assert len(capsys.readouterr().out.splitlines()) < len(placed)           # hits closer than 400 ms merged
    for bad, msg in (("bogus=1", "unknown onset detector option 'bogus'"), ("tail_floor_db=3", "tail_floor_db"),
                     ("threshold", "KEY=VALUE")):
        assert main(["--checkpoint", str(ckpt), str(f), "--onset", bad]) == 2
        e = capsys.readouterr().err.strip().splitlines()
        assert msg in e[-1] and e[-1].startswith("error:")
