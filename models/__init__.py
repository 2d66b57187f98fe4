"""Model registry.

Every model joins the registry with the :func:`register` decorator in its own module; the
modules are imported lazily so that optional dependencies of one model never break another.

Contract for every registered model
-----------------------------------
``build_model(name, num_classes=50, n_mels=128, n_frames=155, preset=None, **config)`` returns an
``nn.Module`` whose ``forward(x)`` takes normalised log-mel features ``[batch, n_frames, n_mels]``
(``[B, 155, 128]`` for ESC-50) and returns logits ``[batch, num_classes]``; a waveform model reads the
framed samples ``[batch, frames, hop]`` of a ``filterbank="waveform"`` feature config in the same slot.

* The constructor's keyword defaults are the CPU-friendly configuration.
* ``presets`` holds named overrides (``"tiny"`` for tests/notebooks, ``"gpu"`` for a GPU run).
* ``train_defaults`` holds the engine hyper-parameters the model is meant to train with
  (``lr``, ``weight_decay``, ``epochs``, ...); the CLI uses them unless told otherwise.
* ``cpu_bf16_inference``: whether ``inference.Predictor`` uses bf16 autocast at inference on a CPU with
  native bf16 (training does wherever the engine's rule says so). False where bf16 measured slower than
  fp32 at batch 1 (``benchmarks/bench_inference.py --compare-precision``); on CUDA the rule is unchanged.
* Optimiser groups: a parameter may carry an ``_optim`` attribute, a dict with ``lr`` and/or
  ``weight_decay`` (as S4 does for A, B and dt); the engine puts it in its own AdamW group.
  Norm weights, biases and all other 1-D parameters get no weight decay, and so do the names
  a model lists in ``no_weight_decay()``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

# name -> module that registers it (imported on first use)
_MODULES: dict[str, str] = {
    "mlp": "models.baselines",
    "lstm": "models.baselines",
    "cnn": "models.baselines",
    "wavecnn": "models.waveform",
    "mamba": "models.mamba",
    "liquid_s4": "models.liquid_s4",
    "vjepa2": "models.vjepa2",
}


@dataclass
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_defaults: dict[str, Any] = field(default_factory=dict)
    cpu_bf16_inference: bool = True


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, presets: dict[str, dict] | None = None, train_defaults: dict | None = None,
             cpu_bf16_inference: bool = True):
    """Class/function decorator adding a model factory to the registry under ``name``."""

    def deco(factory):
        _REGISTRY[name] = ModelSpec(name, factory, dict(presets or {}), dict(train_defaults or {}),
                                    cpu_bf16_inference)
        return factory

    return deco


def available() -> list[str]:
    """Names of all models known to the registry (whether or not their module imports here)."""
    return sorted(_MODULES)


def get_spec(name: str) -> ModelSpec:
    if name not in _MODULES and name not in _REGISTRY:
        raise KeyError(f"unknown model '{name}'; available: {', '.join(available())}")
    if name not in _REGISTRY:
        importlib.import_module(_MODULES[name])
    if name not in _REGISTRY:
        raise KeyError(f"module {_MODULES[name]} did not register model '{name}'")
    return _REGISTRY[name]


def resolve_config(name: str, preset: str | None = None, **config) -> dict[str, Any]:
    """The model kwargs that ``build_model`` would use: preset overrides, then explicit config."""
    spec = get_spec(name)
    merged: dict[str, Any] = {}
    if preset:
        if preset not in spec.presets:
            raise KeyError(f"model '{name}' has no preset '{preset}'; presets: {sorted(spec.presets)}")
        merged.update(spec.presets[preset])
    merged.update(config)
    return merged


def build_model(name: str, num_classes: int = 50, n_mels: int = 128, n_frames: int = 155,
                preset: str | None = None, **config) -> nn.Module:
    """Build a registered model. See the module docstring for the contract."""
    spec = get_spec(name)
    kwargs = resolve_config(name, preset, **config)
    model = spec.factory(num_classes=num_classes, n_mels=n_mels, n_frames=n_frames, **kwargs)
    # what a checkpoint needs to rebuild exactly this model
    model.model_name = name
    model.model_config = dict(kwargs)
    return model


# constructor options that only say where initial weights come from: a trained model's own
# weights replace them, so they are not part of the config that rebuilds it
INIT_ONLY_OPTIONS = ("init_from",)


def rebuild_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """``config`` without :data:`INIT_ONLY_OPTIONS` (what a checkpoint stores and rebuilds from)."""
    return {k: v for k, v in (config or {}).items() if k not in INIT_ONLY_OPTIONS}


def train_defaults(name: str) -> dict[str, Any]:
    return dict(get_spec(name).train_defaults)


def place(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """``model`` on ``device`` with its convolution weights in the channels-last layout, where the
    CPU's (oneDNN) convolutions run about twice as fast, forward and backward, fp32 and bf16
    (``benchmarks/bench_layout.py``); the conv stems' one-channel input is already channels-last.
    Only the layout changes (the same results up to float rounding); ``state_dict()`` keeps aliasing
    the weights (EMA updates in place), and ``training.checkpoint.save_checkpoint`` stores contiguous
    tensors. Training, inference and every evaluation place their models with this."""
    return model.to(device, memory_format=torch.channels_last)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
