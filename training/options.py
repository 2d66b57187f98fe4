"""Strict options: ``KEY=VALUE`` parsing, type and range checks, and recipe files.

Every tool that takes settings (``train.py`` / ``audio-train``, ``training.cv``, ``training.jepa``,
the notebooks' config cells) goes through this module, so a setting is either what its field
says it is or a one-line :class:`OptionError`, before any data is read:

* :func:`parse_value` reads a command-line value as JSON, then as a Python literal (``False``,
  ``None``, ``(1, 2)``), then as a plain string.
* :func:`parse_pairs` turns ``["a=1", "b=False"]`` into ``{"a": 1, "b": False}``.
* :func:`check_train`, :func:`check_feature`, :func:`check_augment` and :func:`check_model`
  validate a mapping against the fields (and type hints) of ``TrainConfig``, ``FeatureConfig``
  and ``AugmentConfig``, or against a model factory's signature (its presets included); an
  unknown key fails with the list of valid keys. They return the values converted to the field's
  type (``[1, 2]`` -> ``(1, 2)`` for a tuple field, ``3`` -> ``3.0`` for a float field).
* :data:`RULES` holds the range rules keyed by field name (positive batch size, probabilities in
  ``[0, 1]``, ...); they apply to whichever config has a field of that name.
* :func:`feature_config` builds a :class:`audio_utils.FeatureConfig` whose derived settings
  follow their inputs (``duration`` sets ``n_frames``).
* :func:`load_recipe` reads a YAML / TOML / JSON file holding every setting of a run.
* :func:`validate_options` is the one call for notebooks: all of a run's settings at once.

The checks are hand-written against ``typing`` hints (a few dozen lines) rather than a pydantic
dependency: the configs are plain dataclasses with simple field types.
"""
from __future__ import annotations

import ast
import inspect
import json
import math
import types
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints


class OptionError(ValueError):
    """A setting that cannot be used; the message is one line naming the option."""


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """JSON, else a Python literal, else the string itself (``'False'`` -> ``False``)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_pairs(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings (a repeatable flag) -> dict with parsed values."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, val = str(item).partition("=")
        if not sep or not key.strip():
            raise OptionError(f"{flag} expects KEY=VALUE, got '{item}'")
        out[key.strip()] = parse_value(val)
    return out


def _tname(hint) -> str:
    if hint is type(None):
        return "None"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` checked against type ``hint`` (and converted: list -> tuple, int -> float)."""
    if hint is Any or hint is object or hint is None or hint is inspect.Parameter.empty:
        return value
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, name)
            except OptionError:
                pass
        raise OptionError(f"{name}: expected {_tname(hint)}, got {value!r} ({type(value).__name__})")
    ok = True
    if hint is type(None):
        ok = value is None
    elif hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif hint is str:
        ok = isinstance(value, str)
    elif hint in (tuple, list) or origin in (tuple, list):
        ok = isinstance(value, (list, tuple))
        if ok:
            kind = origin or hint
            if args and args[-1] is Ellipsis:
                value = [coerce(v, args[0], name) for v in value]
            elif args:
                if len(args) != len(value):
                    raise OptionError(f"{name}: expected {len(args)} values, got {len(value)} ({value!r})")
                value = [coerce(v, a, name) for v, a in zip(value, args)]
            value = tuple(value) if kind is tuple else list(value)
    elif hint is dict or origin is dict:
        ok = isinstance(value, dict)
    if not ok:
        raise OptionError(f"{name}: expected {_tname(hint)}, got {value!r} ({type(value).__name__})")
    return value


# --------------------------------------------------------------------------------------------
# Range rules, keyed by field name (they apply to any config with such a field)
# --------------------------------------------------------------------------------------------
def _positive(v) -> bool:
    return v > 0


def _at_least_one(v) -> bool:
    return v >= 1


def _non_negative(v) -> bool:
    return v >= 0


def _prob(v) -> bool:
    return 0.0 <= v <= 1.0


def _prob_open(v) -> bool:
    return 0.0 <= v < 1.0


def _ordered_pair(v) -> bool:
    return len(v) == 2 and v[0] <= v[1]


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    # TrainConfig (training/engine.py)
    "epochs": (_at_least_one, "an integer >= 1"),
    "batch_size": (_at_least_one, "an integer >= 1"),
    "eval_batch_size": (_at_least_one, "an integer >= 1"),
    "lr": (_positive, "> 0"),
    "weight_decay": (_non_negative, ">= 0"),
    "warmup_frac": (_prob_open, "in [0, 1)"),
    "min_lr_ratio": (_prob, "in [0, 1]"),
    "grad_clip": (_non_negative, ">= 0 (0: off)"),
    "mixup": (_non_negative, ">= 0 (Beta alpha; 0: off)"),
    "mixup_prob": (_prob, "a probability in [0, 1]"),
    "label_smoothing": (_prob_open, "in [0, 1)"),
    "patience": (_non_negative, ">= 0 (0: off)"),
    "seed": (_non_negative, ">= 0"),
    "threads": (_at_least_one, "an integer >= 1"),
    "distill_weight": (_prob, "in [0, 1]"),
    "distill_temp": (_positive, "> 0"),
    "distill_mode": (lambda v: v in ("online", "offline"), "'online' or 'offline'"),
    "device": (lambda v: v in ("auto", "cpu", "mps") or v == "cuda" or
               (v.startswith("cuda:") and v[5:].isdigit()), "auto, cpu, cuda or cuda:N"),
    "crop": (_non_negative, ">= 0 seconds (0: off)"),
    "eval_crops": (_at_least_one, "an integer >= 1"),
    "ema": (_prob_open, "in [0, 1) (0: off)"),
    "swa_start": (_non_negative, "an epoch >= 0 (0: off)"),
    "bc_mix": (_prob, "a probability in [0, 1]"),
    "select": (lambda v: v in ("best", "last"), "'best' or 'last'"),
    "val_every": (_at_least_one, "an integer >= 1"),
    # FeatureConfig (audio_utils.py)
    "sample_rate": (_at_least_one, "an integer >= 1 (Hz)"),
    "n_fft": (_at_least_one, "an integer >= 1"),
    "win_length": (_at_least_one, "an integer >= 1 (or null: n_fft)"),
    "hop_length": (_at_least_one, "an integer >= 1"),
    "n_mels": (_at_least_one, "an integer >= 1"),
    "f_min": (_non_negative, ">= 0 Hz"),
    "f_max": (_positive, "> 0 Hz (or null: Nyquist)"),
    "duration": (_positive, "> 0 seconds"),
    "n_frames": (_at_least_one, "an integer >= 1"),
    "log_offset": (_positive, "> 0"),
    "onset_pre_ms": (_non_negative, ">= 0"),
    # AugmentConfig (audio_utils.py); every ``*_prob`` field is a probability (see _rule_for)
    "time_shift_max": (_prob, "a fraction of the clip in [0, 1]"),
    "gain_db": (_ordered_pair, "a (low, high) pair with low <= high"),
    "noise_snr_db": (_ordered_pair, "a (low, high) pair with low <= high"),
    "freq_mask_param": (_non_negative, ">= 0"),
    "time_mask_param": (_non_negative, ">= 0"),
    "n_freq_masks": (_non_negative, ">= 0"),
    "n_time_masks": (_non_negative, ">= 0"),
    "eq_db": (_non_negative, ">= 0 dB"),
    "eq_knots": (_at_least_one, "an integer >= 1"),
    "stretch": (lambda v: _ordered_pair(v) and v[0] > 0, "a (low, high) pair of rates with 0 < low <= high"),
    "freq_shift_max": (_non_negative, ">= 0 mel bins"),
    # data options of the CLI
    "expansion": (_at_least_one, "an integer >= 1"),
    "split_seed": (_non_negative, ">= 0"),
}


def _rule_for(name: str):
    if name in RULES:
        return RULES[name]
    if name.endswith("_prob"):
        return _prob, "a probability in [0, 1]"
    return None


def check_range(name: str, value: Any, where: str = "") -> None:
    """Raise :class:`OptionError` if ``value`` breaks the rule for field ``name`` (None passes)."""
    rule = _rule_for(name)
    if rule is None or value is None:
        return
    fn, text = rule
    try:
        ok = bool(fn(value))
        if isinstance(value, float) and not math.isfinite(value):
            ok = False
    except TypeError:
        ok = False
    if not ok:
        shown = f"--{name.replace('_', '-')}" if not where else f"{where}{name}"
        raise OptionError(f"{shown} must be {text}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Schemas: dataclass fields and model factories
# --------------------------------------------------------------------------------------------
def dataclass_schema(cls) -> dict[str, Any]:
    """``{field: type hint}`` of a dataclass (works for fields added later: nothing is listed here)."""
    hints = get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in fields(cls)}


def _hint_from_default(default: Any) -> Any:
    """A type for an unannotated factory argument, from its default: strict for booleans (the
    truthy-'False' trap), numbers may also be ``None``, strings accept anything (``dt_rank='auto'``
    also takes an int); the dry build catches what the factory itself rejects."""
    if default is inspect.Parameter.empty or default is None or isinstance(default, str):
        return Any
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int | None
    if isinstance(default, float):
        return float | None
    if isinstance(default, (tuple, list)):
        return tuple | list | None
    return Any


# the factory arguments every model gets from the data, never from --config
DATA_ARGS = ("num_classes", "n_mels", "n_frames")


def model_schema(model_name: str) -> tuple[dict[str, Any], bool]:
    """``({option: type hint}, accepts_any_other)`` of a registered model's factory."""
    import models

    try:
        spec = models.get_spec(model_name)
    except KeyError as exc:
        raise OptionError(exc.args[0]) from None
    factory = spec.factory
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the defaults
        hints = {}
    schema, open_kw = {}, False
    for p in inspect.signature(factory).parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            open_kw = True
            continue
        if p.kind is inspect.Parameter.VAR_POSITIONAL or p.name in DATA_ARGS or p.name == "self":
            continue
        schema[p.name] = hints.get(p.name) or _hint_from_default(p.default)
    return schema, open_kw


def _check_mapping(values: dict, schema: dict[str, Any], what: str, flag: str, open_kw: bool = False) -> dict:
    if not isinstance(values, dict):
        raise OptionError(f"{flag}: expected a mapping of {what} settings, got {type(values).__name__}")
    out = {}
    for key, val in values.items():
        if key not in schema:
            if open_kw:
                out[key] = val
                continue
            raise OptionError(f"{flag.rstrip(':') if flag != '--' else ''}{': ' if flag != '--' else ''}unknown "
                              f"{what} option '{key}'; valid: {', '.join(sorted(schema))}")
        shown = f"--{key.replace('_', '-')}" if flag == "--" else f"{flag} {key}"
        val = coerce(val, schema[key], shown)
        check_range(key, val, "" if flag == "--" else f"{flag} ")
        out[key] = val
    return out


def check_dataclass(cls, values: dict, what: str, flag: str) -> dict:
    """Validate settings of any dataclass ``cls`` (keys, types, ranges) for ``cls(**values)``."""
    return _check_mapping(values, dataclass_schema(cls), what, flag)


def check_train(values: dict, flag: str = "--") -> dict:
    """Validate ``TrainConfig`` settings (keys, types, ranges); by default errors name the
    command-line flag (``--batch-size``)."""
    from training.engine import TrainConfig
    return _check_mapping(values, dataclass_schema(TrainConfig), "training", flag)


def check_augment(values: dict, flag: str = "--augment") -> dict:
    """Validate ``AugmentConfig`` settings (generic over its fields)."""
    from audio_utils import AugmentConfig
    return _check_mapping(values, dataclass_schema(AugmentConfig), "augmentation", flag)


def check_feature(values: dict, flag: str = "--feature") -> dict:
    """Validate ``FeatureConfig`` settings (keys, types, ranges; not yet the cross-field rules)."""
    from audio_utils import FeatureConfig
    return _check_mapping(values, dataclass_schema(FeatureConfig), "feature", flag)


def check_model(model_name: str, values: dict, preset: str | None = None, flag: str = "--config",
                n_mels: int = 128, n_frames: int = 155, dry_build: bool = True) -> dict:
    """Validate model options against the factory's signature (and the preset's name).

    With ``dry_build`` the model is also constructed on the ``meta`` device (no memory, no data)
    so that values the factory itself rejects fail now, as one line, rather than after the
    datasets were built. ``init_from`` is not opened here (the provenance check reads it).
    """
    import models

    schema, open_kw = model_schema(model_name)
    spec = models.get_spec(model_name)
    if preset is not None and preset not in spec.presets:
        raise OptionError(f"--preset: model '{model_name}' has no preset '{preset}'; "
                          f"presets: {', '.join(sorted(spec.presets)) or '(none)'}")
    out = _check_mapping(values or {}, schema, f"{model_name} model", flag, open_kw)
    if dry_build:
        import torch
        trial = {k: v for k, v in out.items() if k != "init_from"}
        try:
            with torch.device("meta"):
                models.build_model(model_name, num_classes=2, n_mels=n_mels, n_frames=n_frames,
                                   preset=preset, **trial)
        except NotImplementedError:
            pass            # an operation the meta device lacks: the real build will check
        except Exception as exc:  # noqa: BLE001 - any rejection by the factory is a bad option
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
            if "meta" in msg.lower():
                return out  # a meta-device limitation, not a bad setting
            raise OptionError(f"{flag}: model '{model_name}' rejects these settings "
                              f"({type(exc).__name__}: {msg})") from None
    return out


def feature_config(base: dict | None = None, overrides: dict | None = None, flag: str = "--feature"):
    """A :class:`audio_utils.FeatureConfig` from ``base`` (e.g. a preset) and ``overrides``,
    whose derived settings follow their inputs (see ``FeatureConfig.derive``)."""
    from audio_utils import FeatureConfig

    overrides = check_feature(overrides or {}, flag)
    try:
        return FeatureConfig.derive(base or {}, overrides)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{flag}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------
RECIPE_MAPPINGS = ("train", "config", "feature", "augment")     # merged key by key when a recipe extends another


def load_recipe(path: str | Path, _seen: tuple = ()) -> dict:
    """Settings of a run from a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file (a mapping).

    ``extends: OTHER`` (a path relative to the file), or a list of them applied in order, starts from
    those recipes' settings: top-level settings replace the earlier ones, the ``train`` / ``config`` /
    ``feature`` / ``augment`` mappings are merged key by key (a refit is its recipe plus the folds and
    seed that differ; a distilled run is its recipe plus a file of distillation settings)."""
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"--recipe: {path} not found")
    data = _read_recipe(path)
    bases = data.pop("extends", None)
    if bases is None:
        return data
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b for b in bases):
        raise OptionError(f"--recipe: {path}: 'extends' must be a recipe file name or a list of them")
    merged: dict = {}
    for base in bases:
        base_path = (path.parent / base).resolve()
        if base_path in _seen or base_path == path.resolve():
            raise OptionError(f"--recipe: {path}: 'extends' makes a cycle through {base}")
        if not base_path.is_file():
            raise OptionError(f"--recipe: {path}: extends {base}, which is not found")
        merged = _merge_recipe(merged, load_recipe(base_path, _seen + (path.resolve(),)))
    return _merge_recipe(merged, data)


def _merge_recipe(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if key in RECIPE_MAPPINGS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _read_recipe(path: Path) -> dict:
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise OptionError(f"--recipe: {path}: use a .yaml, .yml, .toml or .json file")
    except OptionError:
        raise
    except Exception as exc:  # noqa: BLE001 - yaml/toml/json syntax errors
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise OptionError(f"--recipe: {path}: cannot parse ({msg})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OptionError(f"--recipe: {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------
# Notebooks: everything at once
# --------------------------------------------------------------------------------------------
def validate_options(model: str | None = None, preset: str | None = None, config: dict | None = None,
                     feature: dict | None = None, feature_base: dict | None = None, augment: dict | None = None,
                     train: dict | None = None) -> dict:
    """Check every setting of a run at once (the notebooks' config cells call this).

    Returns ``{"config", "feature_config", "augment", "train"}``: checked values, with the
    feature config complete and its derived settings applied. Raises :class:`OptionError`.
    """
    train_ok = check_train(dict(train or {}))
    aug_ok = check_augment(dict(augment or {}))
    feat = feature_config(feature_base, feature)
    cfg_ok = {}
    if model is not None:
        cfg_ok = check_model(model, dict(config or {}), preset, n_mels=feat.n_mels, n_frames=feat.n_frames)
    elif config:
        raise OptionError("model options given without a model name")
    return {"config": cfg_ok, "feature_config": feat.to_dict(), "augment": aug_ok, "train": train_ok}


def defaults_of(cls) -> dict[str, Any]:
    """Default values of a dataclass's fields (for help texts)."""
    assert is_dataclass(cls)
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()    # type: ignore[misc]
    return out
