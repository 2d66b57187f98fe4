"""Named feature presets: preprocessing chosen per dataset, never hard-coded in models.

``esc50``: 16 kHz, n_fft 1024, hop 512, 128 mels, 5-s clips -> [155, 128].
``drums``: short percussive one-shots -> [64, 96]. 44.1 kHz keeps the > 8 kHz content that
separates hi-hats and cymbals from snares (mel bins up to 22 kHz); a 256-sample hop (5.8 ms,
vs 32 ms for ESC-50) resolves the attack; every clip is cropped from 5 ms before its first onset
(``onset_align``) so the attack is never cut, and 64 frames keep the first 0.37 s (attack and
early decay, where drum classes differ; tails are long and mostly uninformative).

``AUGMENT_PRESETS`` holds matching augmentation settings (``AugmentConfig`` fields): drums keep
the onset near the start (circular time shift of at most 3 % of the clip) and use narrower
SpecAugment time masks, so that a mask cannot wipe out the whole attack.
"""
from __future__ import annotations

from audio_utils import FeatureConfig

FEATURE_PRESETS: dict[str, FeatureConfig] = {
    "esc50": FeatureConfig(),
    "drums": FeatureConfig(sample_rate=44100, n_fft=1024, hop_length=256, n_mels=96, f_min=20.0,
                           duration=0.375, n_frames=64, onset_align=True, onset_pre_ms=5.0),
}

AUGMENT_PRESETS: dict[str, dict] = {
    "esc50": {},
    "drums": {"time_shift_prob": 0.5, "time_shift_max": 0.03, "time_mask_param": 8, "freq_mask_param": 16},
}


def feature_preset(name: str) -> FeatureConfig:
    if name not in FEATURE_PRESETS:
        raise ValueError(f"unknown feature preset '{name}'; presets: {', '.join(FEATURE_PRESETS)}")
    return FEATURE_PRESETS[name]


def augment_preset(name: str) -> dict:
    """Augmentation overrides matching feature preset ``name`` (empty: the shared defaults)."""
    if name not in FEATURE_PRESETS:
        raise ValueError(f"unknown feature preset '{name}'; presets: {', '.join(FEATURE_PRESETS)}")
    return dict(AUGMENT_PRESETS.get(name, {}))
