"""A checkpoint's model plus the one featurisation path training used: waveform -> class probabilities.

Training featurises a clip as ``load_audio`` (mono, resampled) -> ``prepare_waveform`` (pad / crop
to the clip duration, from the first onset for onset-aligned configs) -> ``LogMel`` (full length)
-> centre crop of ``n_frames`` -> per-bin normalisation (see ``audio_utils``: ``cached_features``
and ``FeatureDataset.get_batch``). :class:`Predictor` applies exactly these functions, so a file
gives the same probabilities whether it is scored by ``--evaluate`` or one by one. A checkpoint
whose training config asks for ``eval_crops`` > 1 is scored as the mean of that many evenly spaced
crops of the training crop length (``train_config.crop`` seconds; ``audio_utils.multi_crop_offsets``
over the full clip's frames), as the engine evaluates it.

Checkpoint metadata is checked before anything is allocated (feature sizes, class list,
normalisation statistics, and the model config by building the model on the ``meta`` device and
comparing its tensor shapes with the file's); a bad value is refused naming the checkpoint.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

import audio_utils as au
from classify.sources import UsageError, err
from training.checkpoint import CheckpointError, build_from_checkpoint, read_meta
from training.engine import autocast

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"
# shipped ESC-50 checkpoints; on equal validation accuracy the earlier one wins
DEFAULT_CHECKPOINTS = ("liquid_s4_esc50.safetensors", "mamba_esc50.safetensors",
                       "vjepa2_esc50.safetensors", "cnn_esc50.safetensors")

# Bounds on checkpoint metadata, checked before anything is allocated.
LIMITS = {"sample_rate": (1000, 768_000), "n_fft": (8, 65_536), "hop_length": (1, 65_536), "n_mels": (1, 2048),
          "n_frames": (1, 200_000), "num_samples": (1, 48_000 * 600), "classes": (1, 100_000),
          "eval_crops": (1, 256), "weights": (1, 2_000_000_000), "config_value": (-1_000_000, 1_000_000)}


# --------------------------------------------------------------------------------------------
# Checkpoint names
# --------------------------------------------------------------------------------------------
def no_checkpoint_message(directory: Path) -> str:
    return (f"no checkpoint given and none found in {directory} (looked for {', '.join(DEFAULT_CHECKPOINTS)}). "
            "Train one and copy it there, e.g.: python train.py --model cnn --data-dir ../shared/data/ESC-50 "
            f"--epochs 40 --out runs/cnn_esc50 && cp runs/cnn_esc50/best.safetensors {directory}/cnn_esc50.safetensors"
            " ; or pass --checkpoint runs/<run>/best.safetensors")


def default_checkpoint(directory: str | os.PathLike = CHECKPOINT_DIR) -> Path:
    """The shipped ESC-50 checkpoint with the highest validation accuracy (never test accuracy); a
    checkpoint trained on its validation fold too (a refit) counts with its recipe's validation
    accuracy (``metrics.recipe_val_acc``, recorded when it was shipped)."""
    directory = Path(directory)
    present = [directory / n for n in DEFAULT_CHECKPOINTS if (directory / n).is_file()]
    if not present:
        raise UsageError(no_checkpoint_message(directory))
    scored = []
    for order, path in enumerate(present):
        try:
            meta = read_meta(path)
        except CheckpointError as exc:
            err(f"warning: skipping {exc}")
            continue
        metrics = meta.get("metrics") or {}
        val = -1.0
        for key in ("val_acc", "recipe_val_acc"):
            v = metrics.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                val = float(v)
                break
        scored.append((val, -order, path))
    if not scored:
        raise CheckpointError(f"{directory}: none of the shipped checkpoints is readable "
                              f"({', '.join(p.name for p in present)})")
    return max(scored)[2]


def resolve_checkpoint(arg: str | None, directory: str | os.PathLike = CHECKPOINT_DIR) -> Path:
    """A checkpoint file from what the user typed.

    ``None``: :func:`default_checkpoint`. A file path as is. A run directory: its
    ``best.safetensors`` (else ``last.safetensors``). A short name of a checkpoint in ``directory``:
    ``mamba`` or ``mamba_esc50`` -> ``<directory>/mamba_esc50.safetensors``. Nothing matching: a
    UsageError listing the checkpoints that exist.
    """
    if arg is None:
        return default_checkpoint(directory)
    path, directory = Path(arg), Path(directory)
    if path.is_file():
        return path
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise UsageError(f"--checkpoint {arg}: directory without best.safetensors or last.safetensors")
    if len(path.parts) == 1:                       # a bare name: one of the shipped checkpoints
        stem = path.name[:-len(".safetensors")] if path.name.endswith(".safetensors") else path.name
        for cand in (directory / f"{stem}.safetensors", directory / f"{stem}_esc50.safetensors"):
            if cand.is_file():
                return cand
        raise UsageError(f"--checkpoint {arg}: no such file, run directory or checkpoint name "
                         f"({_available(directory)})")
    raise CheckpointError(f"{path}: checkpoint not found ({_available(directory)})")


def _available(directory: Path) -> str:
    try:
        names = sorted(p.name[:-len(".safetensors")] for p in directory.glob("*.safetensors"))
    except OSError:
        names = []
    if not names:
        return f"no checkpoints in {directory}"
    short = [n[:-len("_esc50")] for n in names if n.endswith("_esc50")]
    return f"available in {directory}: {', '.join(names)}" + (f" (or short: {', '.join(short)})" if short else "")


# --------------------------------------------------------------------------------------------
# Metadata checks
# --------------------------------------------------------------------------------------------
def _int_in(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} is outside [{lo}, {hi}]")
    return int(value)


def _float_in(name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} is outside [{lo}, {hi}]")
    return float(value)


def _check_numbers(name: str, value) -> None:
    """Every number in a (nested) config finite and at most LIMITS["config_value"] in size: a
    model is built from it (on the meta device, but a depth of 10**9 would still take forever)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(f"{name}.{k}", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_numbers(f"{name}[{i}]", v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = LIMITS["config_value"]
        if not (math.isfinite(value) and lo <= value <= hi):
            raise ValueError(f"{name} = {value} is outside [{lo}, {hi}]")


def check_feature_config(d) -> au.FeatureConfig:
    """The FeatureConfig of a checkpoint, every size bounded (ValueError otherwise)."""
    if not isinstance(d, dict):
        raise ValueError("feature_config is not a mapping")
    cfg = au.FeatureConfig.from_dict(d)
    _int_in("sample_rate", cfg.sample_rate, *LIMITS["sample_rate"])
    _int_in("n_fft", cfg.n_fft, *LIMITS["n_fft"])
    if cfg.win_length is not None:
        _int_in("win_length", cfg.win_length, 1, cfg.n_fft)
    _int_in("hop_length", cfg.hop_length, 1, cfg.n_fft)
    # bands of a filterbank over the STFT's bins; a waveform config's frame width (= n_fft, checked by FeatureConfig)
    _int_in("n_mels", cfg.n_mels, 1, min(LIMITS["n_mels"][1], cfg.n_fft if cfg.is_waveform else cfg.n_fft // 2 + 1))
    _int_in("n_frames", cfg.n_frames, *LIMITS["n_frames"])
    _float_in("duration", cfg.duration, 1e-3, LIMITS["num_samples"][1] / cfg.sample_rate)
    _int_in("duration x sample_rate", cfg.num_samples, *LIMITS["num_samples"])
    _float_in("f_min", cfg.f_min, 0.0, cfg.sample_rate / 2)
    if cfg.f_max is not None:
        _float_in("f_max", cfg.f_max, cfg.f_min, cfg.sample_rate / 2)
    _float_in("log_offset", cfg.log_offset, 1e-30, 1.0)
    _float_in("onset_pre_ms", cfg.onset_pre_ms, 0.0, 1000 * cfg.duration)
    if cfg.n_frames > 4 * cfg.full_frames + 16:
        raise ValueError(f"n_frames = {cfg.n_frames} is far more than a {cfg.duration:g}-s clip gives "
                         f"({cfg.full_frames} frames)")
    return cfg


def check_meta(meta: dict, path: Path) -> tuple[au.FeatureConfig, list[str], dict, tuple, int]:
    """Validate metadata: ``(feature config, class names, task, (mean, std), eval crops)``.

    Raises CheckpointError naming ``path`` for anything out of bounds, missing or inconsistent.
    """
    try:
        cfg = check_feature_config(meta["feature_config"])
        names = meta["class_names"]
        if not isinstance(names, list) or not all(isinstance(c, (str, int)) for c in names):
            raise ValueError("class_names must be a list of names")
        _int_in("number of classes", len(names), *LIMITS["classes"])
        # printable names only: metadata must not be able to send terminal escape sequences
        names = ["".join(ch if ch.isprintable() else "?" for ch in str(c)) for c in names]
        task = dict(meta.get("task") or {"type": "multiclass"})
        if task.get("type") not in ("multiclass", "binary"):
            raise ValueError(f"unknown task type {task.get('type')!r}")
        if task["type"] == "binary":
            if len(names) != 2:
                raise ValueError("a binary task needs exactly 2 classes")
            task.setdefault("positive_class", names[1])
            task["threshold"] = _float_in("threshold", task.get("threshold", 0.5), 0.0, 1.0)
        norm = meta.get("normalization")
        if not norm:
            raise ValueError("no normalisation statistics (the model would get unnormalised features)")
        mean = np.asarray(norm["mean"], dtype=np.float64)
        std = np.asarray(norm["std"], dtype=np.float64)
        if mean.shape != (cfg.n_mels,) or std.shape != (cfg.n_mels,):
            raise ValueError(f"normalisation statistics have shape {mean.shape} / {std.shape}, "
                             f"the feature config {cfg.n_mels} mel bins")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("normalisation statistics must be finite with std > 0")
        tc = meta.get("train_config") or {}
        crops = _int_in("train_config.eval_crops", tc.get("eval_crops") or 1, *LIMITS["eval_crops"])
        if tc.get("crop"):           # 0 / absent: whole clips
            _float_in("train_config.crop", tc["crop"], 1e-3, cfg.duration + 1e-9)
        if not isinstance(meta.get("model_config") or {}, dict):
            raise ValueError("model_config is not a mapping")
        _check_numbers("model_config", meta.get("model_config") or {})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: invalid metadata ({type(exc).__name__}: {exc})") from None
    stats = (torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32))
    return cfg, names, task, stats, crops


def check_model_shapes(meta: dict, path: Path) -> None:
    """Build the model on the ``meta`` device (no memory) and compare its tensors with the file's."""
    from safetensors import safe_open

    from models import build_model, rebuild_config

    feat = meta["feature_config"]
    config = rebuild_config(meta.get("model_config"))
    try:
        with torch.device("meta"):
            model = build_model(meta["model_name"], num_classes=len(meta["class_names"]), n_mels=feat["n_mels"],
                                n_frames=feat["n_frames"], **config)
    except Exception as exc:  # noqa: BLE001 - any failure of an unknown config is the checkpoint's
        raise CheckpointError(f"{path}: cannot rebuild model {meta.get('model_name')!r} from its config "
                              f"({type(exc).__name__}: {str(exc)[:160]})") from None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    n = sum(math.prod(s) for s in want.values())
    if n > LIMITS["weights"][1]:
        raise CheckpointError(f"{path}: invalid metadata (the model config asks for {n:,} weights)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            have = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a valid checkpoint ({str(exc)[:160]})") from None
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:1]
        raise CheckpointError(f"{path}: the weights do not match the model config in the metadata "
                              f"(e.g. {diff[0][0]}: {diff[0][1]})")


# --------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------
class Predictor:
    """A checkpoint's model plus the exact feature pipeline it was trained with.

    Attributes: ``sample_rate``, ``feature_config`` (= ``cfg``), ``class_names``, ``task``,
    ``normalization``, ``eval_crops``, ``model``, ``meta``, ``path``.

    * :meth:`predict_waveform` ``(wave [samples] at sample_rate) -> probs [classes]``: one clip,
      featurised exactly as training featurises a clip.
    * :meth:`predict_file` ``(path) -> probs``: the same for a file (decoded, mono, resampled).
    * :meth:`predict` ``(prepared waves [B, num_samples]) -> probs [B, classes]``: the batched core.
    """

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto", amp: bool | None = None):
        from training.engine import amp_dtype, crop_frames_for, resolve_device, serving_amp

        self.path = Path(checkpoint)
        try:
            self.device = resolve_device(device)
        except (RuntimeError, ValueError) as exc:
            raise UsageError(f"--device {device}: {exc}") from None
        meta = read_meta(self.path)
        self.cfg, self.class_names, self.task, stats, self.eval_crops = check_meta(meta, self.path)
        check_model_shapes(meta, self.path)
        model, meta = build_from_checkpoint(self.path, self.device)
        self.logmel = au.make_extractor(self.cfg).to(self.device)   # log-mels or framed waveforms
        self.normalization = tuple(t.to(self.device) for t in stats)
        self.model, self.meta = model, meta
        tc = meta.get("train_config") or {}
        # precision: the engine's rule (bf16 autocast on CUDA and on CPUs with native bf16) where the
        # run trained with it, except on a CPU for model families where bf16 measured slower than fp32
        # at batch 1 (models.ModelSpec.cpu_bf16_inference); amp=True / False force bf16 / fp32
        self.amp_dtype = amp_dtype(self.device, serving_amp(meta, self.device) if amp is None else bool(amp))
        self.eval_batch_size = int(tc.get("eval_batch_size", 128) or 128)
        # multi-crop evaluation: crops of the training crop length (train_config.crop seconds)
        self.crop_frames = None
        if self.eval_crops > 1:
            if not tc.get("crop"):
                raise CheckpointError(f"{self.path}: invalid metadata (eval_crops > 1 needs train_config.crop)")
            self.crop_frames = crop_frames_for(float(tc["crop"]), self.cfg)

    @property
    def feature_config(self) -> au.FeatureConfig:
        return self.cfg

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def binary(self) -> bool:
        return self.task.get("type") == "binary"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self, width: int | None = None) -> str:
        val = (self.meta.get("metrics") or {}).get("val_acc")
        extra = f", val acc {val:.4f}" if isinstance(val, (int, float)) else ""
        kind = (f"binary: {self.task['positive_class']} vs rest" if self.binary
                else f"{self.num_classes} classes")
        text = f"{self.path} ({self.meta.get('model_name')}, {kind}{extra})"
        if width is not None and len(text) > width:        # keep the end of the path: the file name
            tail = f" ({self.meta.get('model_name')}, {kind}{extra})"
            keep = max(8, width - len(tail) - 3)
            text = "..." + str(self.path)[-keep:] + tail
        return text

    # -- the featurisation path ------------------------------------------------------------
    def prepare(self, wave: torch.Tensor) -> torch.Tensor:
        """Pad / crop one mono waveform at the model's rate exactly as training does."""
        return au.prepare_waveform(wave, self.cfg)

    def crop_offsets(self) -> list[int] | None:
        """Start frames of the evaluation crops (None: one centre crop, as training evaluates)."""
        if self.eval_crops <= 1:
            return None
        return au.multi_crop_offsets(self.cfg.full_frames, self.crop_frames, self.eval_crops)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.normalization
        return (x - mean) / std

    def features(self, waves: torch.Tensor) -> torch.Tensor:
        """Prepared waveforms ``[B, num_samples]`` -> normalised log-mels ``[B, n_frames, n_mels]``
        (``[B, crops, n_frames, n_mels]`` with ``eval_crops`` > 1)."""
        return self.crops(self.logmel(waves.to(self.device, torch.float32)))

    def crops(self, full: torch.Tensor) -> torch.Tensor:
        """Full-length log-mels ``[B, full_frames, n_mels]`` (as the feature cache stores them) ->
        the normalised crop(s) the model sees."""
        full = full.to(self.device, torch.float32)
        offsets = self.crop_offsets()
        if offsets is None:
            return self.normalise(au.crop_frames(full, self.cfg.n_frames))
        return self.normalise(torch.stack([au.crop_frames(full, self.crop_frames, o) for o in offsets], 1))

    @torch.inference_mode()
    def logits_to_probs(self, x: torch.Tensor) -> np.ndarray:
        """Normalised features (as :meth:`features` gives them) -> probabilities ``[B, classes]``."""
        crops = x.dim() == 4
        flat = x.flatten(0, 1) if crops else x
        with autocast(self.device, self.amp_dtype):
            logits = self.model(flat)
        probs = torch.softmax(logits.float(), -1)
        if crops:
            probs = probs.view(x.shape[0], x.shape[1], -1).mean(1)
        return probs.cpu().numpy()

    @torch.inference_mode()
    def predict(self, waves: torch.Tensor) -> np.ndarray:
        """Prepared waveforms ``[B, num_samples]`` -> probabilities ``[B, classes]``."""
        return self.logits_to_probs(self.features(waves))

    @torch.inference_mode()
    def predict_logmel(self, full: torch.Tensor) -> np.ndarray:
        """Cached full-length log-mels ``[B, full_frames, n_mels]`` -> probabilities ``[B, classes]``."""
        return self.logits_to_probs(self.crops(full))

    def predict_waveform(self, wave: torch.Tensor) -> np.ndarray:
        """Probabilities ``[classes]`` for one mono waveform at :attr:`sample_rate`, featurised
        exactly as training featurises a clip (pad / crop, onset alignment, log-mel, crop, norm)."""
        wave = torch.as_tensor(wave, dtype=torch.float32)
        if wave.dim() != 1:
            raise ValueError(f"expected one mono waveform [samples], got shape {tuple(wave.shape)}")
        return self.predict(self.prepare(wave)[None])[0]

    def predict_file(self, path: str | os.PathLike) -> np.ndarray:
        """Probabilities for one audio file scored as one clip, exactly as in training."""
        return self.predict_waveform(au.load_audio(path, self.sample_rate))

    def predict_files(self, paths, batch_size: int = 32) -> np.ndarray:
        """Probabilities ``[files, classes]``, each file scored as one clip (batched)."""
        out = []
        paths = list(paths)
        for s in range(0, len(paths), batch_size):
            waves = torch.stack([self.prepare(au.load_audio(p, self.sample_rate)) for p in paths[s:s + batch_size]])
            out.append(self.predict(waves))
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), dtype=np.float32)
