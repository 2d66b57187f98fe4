"""The training command line (``python train.py ...`` or ``audio-train ...``).

Train any registered model on ESC-50 (or a class-per-folder dataset) through the shared engine.

Examples
--------
    python train.py --model cnn --data-dir ../shared/data/ESC-50 --epochs 40
    python train.py --model liquid_s4 --config liquid_kernel=kb --epochs 60 --out runs/s4_kb
    python train.py --model mamba --config bidirectional=False --feature duration=4.0
    python train.py --model cnn --dataset folder --data-dir ../shared/data/drums --one-vs-rest kick
    python train.py --recipe recipes/mamba.yaml --lr 3e-4      # a recipe file; flags override it

Every ``--config`` / ``--feature`` / ``--augment`` value is parsed as JSON, then as a Python
literal, then kept as a string, and checked against the model factory / FeatureConfig /
AugmentConfig before any data is read. The output directory records the run's fingerprint
(run.json): rerunning into it resumes only the very same run; see docs/runs.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, get_args, get_origin

from training.options import (OptionError, check_augment, coerce, feature_config, load_recipe, parse_pairs,
                              parse_value)

EXIT_USAGE = 2
EXIT_FAILURE = 1

# help texts of the TrainConfig fields (a field without one still gets a flag, with a generic help)
TRAIN_HELP = {
    "epochs": "training epochs (part of the run: changing it makes another run)",
    "batch_size": "global batch size (clip views per optimiser step)",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay (not on norms, biases, 1-D parameters)",
    "warmup_frac": "fraction of the steps spent in linear warm-up, in [0, 1)",
    "min_lr_ratio": "final learning rate of the cosine schedule as a fraction of lr",
    "grad_clip": "gradient-norm clipping (0: off)",
    "mixup": "mixup Beta(alpha, alpha) parameter (0: off)",
    "mixup_prob": "fraction of batches that are mixed, in [0, 1]",
    "label_smoothing": "label smoothing, in [0, 1)",
    "patience": "early stopping after this many epochs without validation improvement (0: off)",
    "seed": "seed of initialisation, sampling and augmentation",
    "device": "auto, cpu, cuda or cuda:N (not part of the run's fingerprint)",
    "amp": "bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX); fp32 elsewhere",
    "threads": "torch CPU threads (not part of the run's fingerprint)",
    "eval_batch_size": "batch size for evaluation",
    "drop_last": "drop the last incomplete training batch of every epoch",
    "class_weights": "inverse-frequency class weights in the loss",
    "progress": "tqdm progress bars",
    "compile": "torch.compile the model",
    "distill_weight": "weight w of the distillation term, in [0, 1]",
    "distill_temp": "distillation temperature T (> 0)",
    "distill_mode": "online: teacher on every batch; offline: once per training clip",
    "crop": "random training crops of this many seconds (0: off)",
    "eval_crops": "crops averaged per clip at evaluation (>= 1)",
    "ema": "EMA decay of the evaluated weights, in [0, 1) (0: off)",
    "bc_mix": "fraction of batches with between-class mixing in the power domain (soft targets), in [0, 1]",
    "swa_start": "average the weights after each epoch from this one on (SWA) and evaluate them (0: off)",
    "select": "checkpoint: the best validated epoch ('best') or the last weights, SWA else EMA if on ('last')",
    "val_every": "validate every N epochs and after the last (others are not checkpoint candidates)",
}
# TrainConfig fields with a hand-made flag (or none)
_SPECIAL_TRAIN = {"distill_from"}
_MAPPINGS = ("config", "feature", "augment")      # KEY=VALUE flags; mappings in a recipe


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: ...``) and exit status 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def int_list(text: str) -> tuple[int, ...]:
    """``"1,2 3"`` -> ``(1, 2, 3)``."""
    try:
        return tuple(int(t) for t in str(text).replace(",", " ").split()) if str(text).strip() else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def _train_fields():
    from typing import get_type_hints

    from training.engine import TrainConfig
    hints = get_type_hints(TrainConfig)
    return [(f, hints.get(f.name, Any)) for f in fields(TrainConfig)]


def _scalar_type(hint):
    if get_origin(hint) is not None and type(None) in get_args(hint):
        rest = [a for a in get_args(hint) if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else str
    return hint if hint in (int, float, str) else parse_value     # tuples etc.: JSON / Python literal


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per ``TrainConfig`` field (bools as ``--x/--no-x``); default: unset, meaning the
    recipe, then the model's ``train_defaults``, then the engine's default (shown)."""
    t = p.add_argument_group("training (unset: the recipe, then the model's train_defaults, then the default shown)")
    for f, hint in _train_fields():
        if f.name in _SPECIAL_TRAIN:
            continue
        flag = "--" + f.name.replace("_", "-")
        text = TRAIN_HELP.get(f.name, f"TrainConfig.{f.name}")
        default = f.default if f.default is not MISSING else f.default_factory()
        if hint is bool:
            t.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{text} (default: {default})")
        else:
            t.add_argument(flag, type=_scalar_type(hint), default=None, metavar=f.name.upper(),
                           help=f"{text} (default: {default})")
    t.add_argument("--distill", action="append", metavar="CKPT", default=None,
                   help="teacher checkpoint for knowledge distillation (repeatable: mean of the teachers); it and "
                        "its own sources must not have trained or selected on the validation or test clips "
                        "(default: none)")


def build_parser() -> argparse.ArgumentParser:
    import models

    p = OneLineParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", metavar="FILE", default=None,
                   help="YAML/TOML/JSON file with any of these settings (flag names as keys; config, feature and "
                        "augment as mappings); flags given explicitly override it (default: none)")
    p.add_argument("--model", default=None, help=f"model to train, one of: {', '.join(models.available())} (required)")
    p.add_argument("--preset", default=None, help="named model preset, e.g. tiny or gpu (default: none)")
    p.add_argument("--config", action="append", metavar="KEY=VALUE", default=None,
                   help="model option, repeatable; checked against the model's arguments (default: none)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=["esc50", "folder"], default="esc50",
                   help="esc50 (official folds) or folder (one folder per class) (default: esc50)")
    d.add_argument("--data-dir", default=None,
                   help="dataset root (default: $ESC50_DIR, data/ESC-50, or ../shared/data/ESC-50)")
    d.add_argument("--train-folds", type=int_list, default=(1, 2, 3), help="ESC-50 training folds (default: 1,2,3)")
    d.add_argument("--val-folds", type=int_list, default=(4,), help="ESC-50 validation folds (default: 4)")
    d.add_argument("--test-folds", type=int_list, default=(5,), help="ESC-50 test folds (default: 5)")
    d.add_argument("--classes", default=None, help="folder dataset: comma-separated classes to keep (default: all)")
    d.add_argument("--merge", action="append", metavar="NEW=A+B", default=None,
                   help="folder dataset: merge class folders A and B into class NEW, repeatable (default: none)")
    d.add_argument("--group-pattern", metavar="REGEX", default=None,
                   help="folder dataset: regex removed from file stems; files with the same remaining stem "
                        "stay in one split (default: none)")
    d.add_argument("--group-scope", choices=["class", "dataset"], default="class",
                   help="folder dataset: --group-pattern groups within each class folder, or across the whole "
                        "dataset (a speaker or a drum machine never straddles splits) (default: class)")
    d.add_argument("--split-file", metavar="CSV", default=None,
                   help="folder dataset: CSV with columns path,split (train/val/test) giving the split (default: none)")
    d.add_argument("--split-seed", type=int, default=0, help="folder dataset: seed of the stratified split (default: 0)")
    d.add_argument("--one-vs-rest", metavar="CLASS", default=None,
                   help="binary task: CLASS vs all others (default: multi-class)")
    d.add_argument("--feature-preset", default=None,
                   help="named feature and augmentation settings, training/presets.py: esc50, drums (default: esc50)")
    d.add_argument("--feature", action="append", metavar="KEY=VALUE", default=None,
                   help="feature option (FeatureConfig field), repeatable; duration / sample_rate / hop_length / "
                        "n_fft without n_frames recompute n_frames (default: none)")
    d.add_argument("--augment", action="append", metavar="KEY=VALUE", default=None,
                   help="augmentation option (AugmentConfig field), repeatable (default: none)")
    d.add_argument("--no-augment", action="store_true", default=False, help="disable augmentation (default: off)")
    d.add_argument("--expansion", type=int, default=None,
                   help="random views per clip per epoch (default: 3 with augmentation, else 1)")
    d.add_argument("--cache-dir", default=None,
                   help="feature cache directory (default: $AUDIO_CACHE_DIR or data/cache)")
    add_train_arguments(p)
    r = p.add_argument_group("run directory")
    r.add_argument("--out", default=None,
                   help="output directory (default: runs/<model>-<8-digit hash of the run's settings>)")
    r.add_argument("--restart", action="store_true", default=False,
                   help="delete the run in --out and start over (default: resume the same run, refuse another)")
    r.add_argument("--no-resume", action="store_true", default=False, help="the same as --restart (default: off)")
    r.add_argument("--debug", action="store_true", default=False,
                   help="show the full traceback of an error instead of one line (default: off)")
    return p


# --------------------------------------------------------------------------------------------
# Recipes and explicit flags
# --------------------------------------------------------------------------------------------
def explicit_dests(parser_factory, argv) -> set[str]:
    """Destinations of the flags given explicitly in ``argv`` (for recipe precedence)."""
    p = parser_factory()
    for a in p._actions:
        a.default = argparse.SUPPRESS
        a.required = False
    return set(vars(p.parse_args(argv)))


def apply_recipe(args: argparse.Namespace, recipe: dict, explicit: set[str], parser: argparse.ArgumentParser) -> None:
    """Fill ``args`` from ``recipe`` where the flag was not given explicitly (strictly checked)."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "recipe")}
    for key, value in recipe.items():
        dest = str(key).replace("-", "_")
        dest = {"distill_from": "distill"}.get(dest, dest)          # the TrainConfig name of --distill
        if dest == "train" and isinstance(value, dict):           # a mapping of TrainConfig fields
            apply_recipe(args, {k: v for k, v in value.items()}, explicit, parser)
            continue
        if dest not in actions:
            raise OptionError(f"--recipe: unknown setting '{key}'; valid: {', '.join(sorted(actions))}")
        if dest in _MAPPINGS:
            if not isinstance(value, dict):
                raise OptionError(f"--recipe: '{key}' must be a mapping of KEY: VALUE")
            setattr(args, f"{dest}_recipe", dict(value))
            continue
        if dest in explicit:
            continue
        a = actions[dest]
        name = f"--recipe {key}"
        if isinstance(a, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            value = coerce(value, bool, name)
        elif isinstance(a, argparse._AppendAction):
            value = [coerce(v, str, name) for v in (value if isinstance(value, list) else [value])]
        elif a.type is int_list:
            value = tuple(coerce(list(value) if isinstance(value, (list, tuple)) else [value], tuple[int, ...], name))
        elif a.type in (int, float, str):
            value = coerce(value, a.type, name)
        # other values (e.g. a tuple-valued TrainConfig field) are checked by check_train
        if a.choices is not None and value not in a.choices:
            raise OptionError(f"{name}: expected one of {', '.join(map(str, a.choices))}, got {value!r}")
        setattr(args, dest, value)


def parse_args(argv=None, parser_factory=None, require_model: bool = True) -> argparse.Namespace:
    """Parse ``argv`` and merge a ``--recipe``; mappings end up in ``args.config_map`` etc."""
    parser_factory = parser_factory or build_parser
    parser = parser_factory()
    args = parser.parse_args(argv)
    if args.recipe:
        apply_recipe(args, load_recipe(args.recipe), explicit_dests(parser_factory, argv), parser)
    for name in _MAPPINGS:
        merged = dict(getattr(args, f"{name}_recipe", None) or {})
        merged.update(parse_pairs(getattr(args, name), f"--{name}"))
        setattr(args, f"{name}_map", merged)
    if require_model and not args.model:
        parser.error("--model is required (on the command line or in the --recipe)")
    return args


# --------------------------------------------------------------------------------------------
# Settings from arguments (shared with training.cv)
# --------------------------------------------------------------------------------------------
def _maps(args) -> tuple[dict, dict, dict]:
    return tuple(getattr(args, f"{n}_map", None) if hasattr(args, f"{n}_map")
                 else parse_pairs(getattr(args, n, None), f"--{n}") for n in _MAPPINGS)


def data_spec_from_args(args):
    """The :class:`training.data.DataSpec` described by parsed CLI arguments (checked)."""
    from training.data import DataSpec
    from training.presets import augment_preset, feature_preset

    _, feature, augment = _maps(args)
    merge = {}
    for item in args.merge or []:
        new, _, olds = item.partition("=")
        if not new or not olds:
            raise OptionError(f"--merge expects NEW=old1+old2, got '{item}'")
        merge[new] = [o for o in olds.split("+") if o]
    base = feature_preset(args.feature_preset) if args.feature_preset else None
    feat = feature_config(base, feature)
    if augment and args.no_augment:
        raise OptionError("--augment and --no-augment contradict each other")
    aug = augment_preset(args.feature_preset) if args.feature_preset else {}
    aug.update(augment)
    aug = check_augment(aug)
    if args.expansion is not None and args.expansion < 1:
        raise OptionError(f"--expansion must be an integer >= 1, got {args.expansion}")
    return DataSpec(kind=args.dataset, root=args.data_dir, train_folds=tuple(args.train_folds),
                    val_folds=tuple(args.val_folds), test_folds=tuple(args.test_folds),
                    classes=tuple(c.strip() for c in args.classes.split(",")) if args.classes else None,
                    split_seed=args.split_seed, feature_config=feat.to_dict(),
                    augment=not args.no_augment, expansion=args.expansion, cache_dir=args.cache_dir,
                    one_vs_rest=args.one_vs_rest, merge=merge or None, group_pattern=args.group_pattern,
                    group_scope=args.group_scope, split_file=args.split_file, augment_config=aug)


def train_config_from_args(args):
    """The :class:`training.engine.TrainConfig` described by parsed CLI arguments (checked)."""
    import models
    from training.runner import make_train_config

    if args.model not in models.available():
        raise OptionError(f"unknown model '{args.model}'; available: {', '.join(models.available())}")
    overrides = {f.name: getattr(args, f.name, None) for f, _ in _train_fields() if f.name not in _SPECIAL_TRAIN}
    overrides["distill_from"] = tuple(args.distill) if args.distill else None
    return make_train_config(args.model, **overrides)


def model_config_from_args(args) -> dict:
    return _maps(args)[0]


def default_out(prefix: str, model: str, settings: dict) -> Path:
    """``runs/<prefix><model>-<hash>``: two runs with other settings never share a directory."""
    from training.run_dir import short_hash
    return Path("runs") / f"{prefix}{model}-{short_hash(settings)}"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
_USAGE_ERRORS = (OptionError, ValueError, KeyError, LookupError, FileNotFoundError, NotADirectoryError)


def one_line(exc: BaseException) -> str:
    """An exception as one line; the type is named unless it is a plain settings/IO error."""
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    text = " ".join(str(msg).split()) or type(exc).__name__
    if not isinstance(exc, (ValueError, LookupError, OSError)):
        text = f"{type(exc).__name__}: {text}"
    return text[:600]


def run_cli(body, interrupted: str = "interrupted: rerun the same command to resume from the last epoch",
            debug: bool = False) -> int:
    """Run ``body()`` (returns an exit code). Any exception becomes one line on stderr: exit 2 for
    bad settings or input, 1 for other failures, 130 for Ctrl-C; ``debug`` re-raises instead."""
    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        # on its own line, not glued to a progress bar that was being drawn
        print(("\n" if sys.stderr.isatty() else "") + interrupted, file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the CLI's contract: one line, never a traceback
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, _USAGE_ERRORS) else EXIT_FAILURE


def _debug_flag(argv) -> bool:
    return "--debug" in (sys.argv[1:] if argv is None else list(argv))


# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    """``train.py`` / ``audio-train``: returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        from training import run_dir
        from training.runner import checked_model_config, train_model

        args = parse_args(argv)
        cfg = train_config_from_args(args)
        spec = data_spec_from_args(args)
        model_config = model_config_from_args(args)
        _, resolved = checked_model_config(args.model, args.preset, model_config, spec)
        out = Path(args.out) if args.out else default_out("", args.model,
                                                           run_dir.run_settings(args.model, resolved, cfg, spec))
        metrics = train_model(args.model, spec, out, cfg, preset=args.preset, model_config=model_config,
                              resume=not (args.restart or args.no_resume), extra_meta={"cli": argv})
        summary = {k: metrics[k] for k in ("model", "params", "best_epoch", "val_acc", "test_acc", "mean_epoch_time_s")}
        if metrics.get("test_binary"):
            summary.update(threshold=metrics["test_binary"]["threshold"], test_f1=metrics["test_binary"]["f1"],
                           test_roc_auc=metrics["test_binary"]["roc_auc"])
        print(json.dumps(summary))
        print(f"checkpoint: {out / 'best.safetensors'}")
        return 0

    return run_cli(body, debug=_debug_flag(argv))
