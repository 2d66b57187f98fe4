#!/usr/bin/env python
"""Train any registered model on ESC-50 (or a class-per-folder dataset) through the shared engine.

Examples
--------
    python train.py --model cnn --data-dir ../shared/data/ESC-50 --epochs 40 --out runs/cnn
    python train.py --model liquid_s4 --config liquid_kernel=kb --epochs 60
    python train.py --model cnn --dataset folder --data-dir ../shared/data/drums --one-vs-rest kick
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import models


def parse_kv(items: list[str] | None, flag: str) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} expects KEY=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = None if v.lower() == "none" else v
    return out


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.replace(",", " ").split()) if text.strip() else ()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=f"one of: {', '.join(models.available())}")
    p.add_argument("--preset", help="named model preset (e.g. tiny, gpu)")
    p.add_argument("--config", action="append", metavar="KEY=VALUE", help="model option (JSON value), repeatable")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=["esc50", "folder"], default="esc50")
    d.add_argument("--data-dir", help="dataset root (default: $ESC50_DIR, data/ESC-50, or ../shared/data/ESC-50)")
    d.add_argument("--train-folds", type=int_list, default=(1, 2, 3), help="ESC-50 training folds (default 1,2,3)")
    d.add_argument("--val-folds", type=int_list, default=(4,), help="ESC-50 validation folds (default 4)")
    d.add_argument("--test-folds", type=int_list, default=(5,), help="ESC-50 test folds (default 5)")
    d.add_argument("--classes", help="folder dataset: comma-separated classes to keep")
    d.add_argument("--merge", action="append", metavar="NEW=A+B",
                   help="folder dataset: merge class folders A and B into class NEW (repeatable)")
    d.add_argument("--group-pattern", metavar="REGEX",
                   help="folder dataset: regex removed from file stems; files with the same remaining stem stay in one split")
    d.add_argument("--split-seed", type=int, default=0, help="folder dataset: seed of the stratified split")
    d.add_argument("--one-vs-rest", metavar="CLASS", help="binary task: CLASS vs all others")
    d.add_argument("--feature-preset", help="named feature settings (training/presets.py: esc50, drums)")
    d.add_argument("--feature", action="append", metavar="KEY=VALUE",
                   help="feature option (sample_rate, n_fft, hop_length, n_mels, duration, n_frames, onset_align)")
    d.add_argument("--no-augment", action="store_true", help="disable augmentation")
    d.add_argument("--augment", action="append", metavar="KEY=VALUE", help="augmentation option (AugmentConfig field)")
    d.add_argument("--expansion", type=int, help="random views per clip per epoch (default 3 with augmentation)")
    d.add_argument("--cache-dir", help="feature cache directory (default data/cache)")
    t = p.add_argument_group("training (defaults: the model's train_defaults, then the engine's)")
    for name, typ in (("epochs", int), ("batch-size", int), ("lr", float), ("weight-decay", float),
                      ("warmup-frac", float), ("mixup", float), ("label-smoothing", float), ("grad-clip", float),
                      ("patience", int), ("seed", int), ("threads", int), ("crop", float), ("eval-crops", int),
                      ("ema", float), ("bc-mix", float), ("val-every", int)):
        t.add_argument(f"--{name}", type=typ)
    t.add_argument("--distill", action="append", metavar="CKPT",
                   help="teacher checkpoint for knowledge distillation (repeatable: mean of the teachers); "
                        "it must not have trained or selected on the validation or test folds")
    t.add_argument("--distill-weight", type=float, help="weight of the distillation term (default 0.5)")
    t.add_argument("--distill-temp", type=float, help="distillation temperature (default 2)")
    t.add_argument("--distill-mode", choices=("online", "offline"),
                   help="online: teacher on every batch (default); offline: once per training clip")
    t.add_argument("--select", choices=("best", "last"), help="checkpoint: best epoch on validation, or the last")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    t.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    t.add_argument("--class-weights", action="store_true", help="inverse-frequency loss weights")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--out", help="output directory (default runs/<model>)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/last.pt exists")
    return p


def data_spec_from_args(args):
    """The :class:`training.data.DataSpec` described by parsed CLI arguments (shared with training.cv)."""
    from training.data import DataSpec
    from training.presets import augment_preset, feature_preset

    merge = {}
    for item in args.merge or []:
        new, _, olds = item.partition("=")
        if not new or not olds:
            raise ValueError(f"--merge expects NEW=old1+old2, got '{item}'")
        merge[new] = [o for o in olds.split("+") if o]
    feature_config = feature_preset(args.feature_preset).to_dict() if args.feature_preset else {}
    feature_config.update(parse_kv(args.feature, "--feature"))
    return DataSpec(kind=args.dataset, root=args.data_dir, train_folds=args.train_folds,
                    val_folds=args.val_folds, test_folds=args.test_folds,
                    classes=tuple(c.strip() for c in args.classes.split(",")) if args.classes else None,
                    split_seed=args.split_seed, feature_config=feature_config,
                    augment=not args.no_augment, expansion=args.expansion, cache_dir=args.cache_dir,
                    one_vs_rest=args.one_vs_rest, merge=merge or None, group_pattern=args.group_pattern,
                    augment_config={**(augment_preset(args.feature_preset) if args.feature_preset else {}),
                                    **parse_kv(args.augment, "--augment")})


def train_config_from_args(args):
    """The :class:`training.engine.TrainConfig` described by parsed CLI arguments (shared with training.cv)."""
    from training.runner import make_train_config

    if args.model not in models.available():
        raise ValueError(f"unknown model '{args.model}'; available: {', '.join(models.available())}")
    return make_train_config(
        args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_frac=args.warmup_frac, mixup=args.mixup, label_smoothing=args.label_smoothing,
        grad_clip=args.grad_clip, patience=args.patience, seed=args.seed, threads=args.threads,
        device=args.device, amp=not args.no_amp, class_weights=args.class_weights or None,
        compile=args.compile or None, progress=not args.no_progress,
        distill_from=tuple(args.distill) if args.distill else None, distill_weight=args.distill_weight,
        distill_temp=args.distill_temp, distill_mode=args.distill_mode, crop=args.crop, eval_crops=args.eval_crops,
        ema=args.ema, bc_mix=args.bc_mix, select=args.select, val_every=args.val_every)


def run_cli(body, interrupted: str = "interrupted: rerun the same command to resume from the last epoch") -> int:
    """Run ``body()`` (returns an exit code); expected failures become one line on stderr, exit 2."""
    try:
        return body()
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, OSError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from training.runner import train_model

        cfg = train_config_from_args(args)
        spec = data_spec_from_args(args)
        out = Path(args.out or f"runs/{args.model}")
        metrics = train_model(args.model, spec, out, cfg, preset=args.preset,
                              model_config=parse_kv(args.config, "--config"), resume=not args.no_resume,
                              extra_meta={"cli": sys.argv[1:] if argv is None else list(argv)})
        summary = {k: metrics[k] for k in ("model", "params", "best_epoch", "val_acc", "test_acc", "mean_epoch_time_s")}
        if metrics.get("test_binary"):
            summary.update(threshold=metrics["test_binary"]["threshold"], test_f1=metrics["test_binary"]["f1"],
                           test_roc_auc=metrics["test_binary"]["roc_auc"])
        print(json.dumps(summary))
        print(f"checkpoint: {out / 'best.safetensors'}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
