"""JEPA self-supervised pretraining of the ``vjepa2`` spectrogram ViT encoder (V-JEPA2-style).

Objective
---------
* **Target encoder:** an EMA copy of the encoder (no gradients, eval mode). Targets are
  ``h = LayerNorm_noaffine(target(x))`` over all tokens, gathered at the target indices.
* **Context encoder:** the encoder being trained; it sees only the context tokens (positions are
  added before the gather, so they survive masking).
* **Predictor:** narrow ViT: ``Linear(D -> D_p)`` + 2-D sin-cos positions for the context tokens,
  a zero-initialised mask token + positions at the target indices, ``pred_depth`` blocks, LN,
  ``Linear(D_p -> D)``; returns the target tokens.
* **Loss:** ``mean |z - h|`` (L1) over the target tokens.
* **EMA:** after every optimiser step ``theta_t <- m theta_t + (1 - m) theta_c`` with ``m`` ramped
  linearly from ``ema[0]`` to ``ema[1]`` (default 0.996 -> 1.0, I-JEPA style for short runs).
* **Masks** (:class:`MaskConfig`, per sample, on the ``grid_t x grid_f`` token grid): the target is
  the union of ``n_short`` short blocks (2-5 time x 2-4 mel tokens) and ``n_long`` long blocks (each a
  random ``long_scale`` fraction of the grid, so the two cover about half of it); the context is the
  complement, set to exactly ``Kc`` tokens (``Kc/N`` drawn per batch uniformly in ``context_ratio``,
  default 25-50 %): whole random blocks are dropped from the target until the complement is large
  enough (every target stays a block), then random surplus context tokens are dropped. Context and
  target are disjoint. Targets are cut to the batch-minimum size (random subset), so
  index tensors are rectangular.

Data: unlabelled ESC-50 clips of the training folds only (default folds 1-3; fold 5 - the test
fold - is refused, fold 4 - validation - gives a warning).

CLI::

    python -m training.jepa --data-dir /work/shared/data/ESC-50 --out runs/vjepa2_jepa --epochs 20

writes ``OUT/encoder.safetensors`` (the EMA target encoder, with its config as metadata) and
``OUT/metrics.json``. Fine-tune it with the shared trainer::

    python train.py --model vjepa2 --data-dir ... --config init_from=runs/vjepa2_jepa/encoder.safetensors

(use the same ``--preset`` / encoder ``--config`` keys for both; a mismatch is an error).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from functools import partial

import models
from models.vjepa2 import (SpecViTEncoder, TokenGrid, _init_weights, _rescale_blocks, save_encoder,
                           sincos_pos_embed_2d)

__all__ = ["ClipBatches", "MaskConfig", "sample_mask", "context_range", "sample_batch_masks", "JEPAPredictor", "JEPA", "PRED_PRESETS",
           "pretrain", "main"]

# predictor size per encoder preset (None = the constructor-default CPU config)
PRED_PRESETS = {
    None: dict(pred_dim=96, pred_depth=4, pred_heads=3),
    "tiny": dict(pred_dim=16, pred_depth=1, pred_heads=2),
    "mini": dict(pred_dim=64, pred_depth=3, pred_heads=2),
    "small": dict(pred_dim=96, pred_depth=4, pred_heads=3),
    "gpu": dict(pred_dim=192, pred_depth=6, pred_heads=6),
}


# ----------------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------------
@dataclass
class MaskConfig:
    n_short: int = 6
    short_t: tuple[int, int] = (2, 5)        # inclusive range of block length in time tokens
    short_f: tuple[int, int] = (2, 4)        # inclusive range of block height in mel tokens
    n_long: int = 2
    long_scale: tuple[float, float] = (0.2, 0.3)  # area of each long block, fraction of the grid
    context_ratio: tuple[float, float] = (0.25, 0.5)


def _randint(lo: int, hi: int, g: torch.Generator | None) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def _block(grid_t: int, grid_f: int, bt: int, bf: int, g) -> torch.Tensor:
    """A ``bt x bf`` block at a random place of the ``grid_t x grid_f`` grid, as a boolean mask."""
    bt, bf = max(1, min(bt, grid_t)), max(1, min(bf, grid_f))
    t0, f0 = _randint(0, grid_t - bt, g), _randint(0, grid_f - bf, g)
    mask = torch.zeros(grid_t, grid_f, dtype=torch.bool)
    mask[t0:t0 + bt, f0:f0 + bf] = True
    return mask


def sample_mask(grid_t: int, grid_f: int, cfg: MaskConfig = MaskConfig(),
                generator: torch.Generator | None = None,
                n_context: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample's (context_idx, target_idx): sorted LongTensors of t-major token indices, disjoint.

    The target is the union of the blocks and the context its complement, set to exactly
    ``n_context`` tokens (default: drawn uniformly from ``[ceil(lo*N), floor(hi*N)]``,
    ``N = grid_t*grid_f``): when the blocks leave too little context, whole blocks are dropped (a random
    one at a time, so every target stays a block, as in V-JEPA's multi-block masking) until they leave
    enough; then random surplus context tokens are dropped (they become neither context nor target).
    """
    g = generator
    n = grid_t * grid_f
    blocks = [_block(grid_t, grid_f, _randint(*cfg.short_t, g), _randint(*cfg.short_f, g), g)
              for _ in range(cfg.n_short)]
    for _ in range(cfg.n_long):
        scale = cfg.long_scale[0] + (cfg.long_scale[1] - cfg.long_scale[0]) * float(torch.rand(1, generator=g))
        area = max(1.0, scale * n)
        bf = _randint(max(1, round(grid_f / 4)), grid_f, g)
        blocks.append(_block(grid_t, grid_f, round(area / bf), bf, g))
    if n_context is None:
        n_context = _randint(*context_range(n, cfg), g)
    n_context = max(1, min(n_context, n - 1))

    def union(bs):
        return torch.stack(bs).any(0).flatten() if bs else torch.zeros(n, dtype=torch.bool)

    tgt = union(blocks)
    while n - int(tgt.sum()) < n_context and len(blocks) > 1:
        blocks.pop(_randint(0, len(blocks) - 1, g))
        tgt = union(blocks)
    if n - int(tgt.sum()) < n_context:        # a single block larger than the grid allows: crop it in time
        keep = tgt.nonzero().squeeze(1)[: n - n_context]
        tgt = torch.zeros(n, dtype=torch.bool)
        tgt[keep] = True
    ctx = ~tgt
    surplus = int(ctx.sum()) - n_context
    if surplus > 0:                           # drop surplus context tokens
        idx = ctx.nonzero().squeeze(1)
        ctx[idx[torch.randperm(len(idx), generator=g)[:surplus]]] = False
    return ctx.nonzero().squeeze(1), tgt.nonzero().squeeze(1)


def context_range(n_tokens: int, cfg: MaskConfig = MaskConfig()) -> tuple[int, int]:
    """Inclusive range of context sizes allowed by ``cfg.context_ratio`` on ``n_tokens`` tokens."""
    lo = max(1, math.ceil(cfg.context_ratio[0] * n_tokens - 1e-9))
    hi = max(lo, math.floor(cfg.context_ratio[1] * n_tokens + 1e-9))
    return lo, hi


def sample_batch_masks(batch: int, grid_t: int, grid_f: int, cfg: MaskConfig = MaskConfig(),
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for a batch: one context size ``Kc`` is drawn for the whole batch (so every sample has
    exactly ``Kc`` context tokens); targets are cut (random subset, kept sorted) to the batch-minimum
    size ``Kt``. Returns ``ctx_idx[B, Kc]``, ``tgt_idx[B, Kt]``."""
    kc = _randint(*context_range(grid_t * grid_f, cfg), generator)
    pairs = [sample_mask(grid_t, grid_f, cfg, generator, n_context=kc) for _ in range(batch)]
    kt = min(len(t) for _, t in pairs)

    def cut(ix, k):
        return ix[torch.randperm(len(ix), generator=generator)[:k]].sort().values

    return torch.stack([c for c, _ in pairs]), torch.stack([cut(t, kt) for _, t in pairs])


# ----------------------------------------------------------------------------------------------
# predictor and JEPA wrapper
# ----------------------------------------------------------------------------------------------
class JEPAPredictor(nn.Module):
    def __init__(self, embed_dim: int, grid: TokenGrid, pred_dim: int = 96, depth: int = 4,
                 num_heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.embed = nn.Linear(embed_dim, pred_dim)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(pred_dim, grid.grid_t, grid.grid_f), persistent=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_dim))  # zero init
        self.blocks = nn.ModuleList(Block(pred_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                                    for _ in range(depth))
        self.norm = norm(pred_dim)
        self.proj = nn.Linear(pred_dim, embed_dim)
        self.apply(_init_weights)
        _rescale_blocks(self.blocks)

    def forward(self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor) -> torch.Tensor:
        """``ctx[B, Kc, D]`` context features -> predictions ``[B, Kt, D]`` at ``tgt_idx``."""
        kc = ctx.shape[1]
        c = self.embed(ctx) + self.pos_embed[ctx_idx]
        m = self.mask_token + self.pos_embed[tgt_idx]
        z = torch.cat([c, m.to(c.dtype)], dim=1)
        for blk in self.blocks:
            z = blk(z)
        return self.proj(self.norm(z[:, kc:]))


class JEPA(nn.Module):
    """Context encoder + EMA target encoder + predictor. ``forward(x)`` returns the L1 JEPA loss."""

    def __init__(self, encoder: SpecViTEncoder, pred_dim=96, pred_depth=4, pred_heads=3,
                 mask_cfg: MaskConfig | None = None):
        super().__init__()
        self.encoder = encoder
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False).eval()
        self.predictor = JEPAPredictor(encoder.embed_dim, encoder.grid, pred_dim, pred_depth, pred_heads)
        self.mask_cfg = mask_cfg or MaskConfig()

    def train(self, mode: bool = True):
        super().train(mode)
        self.target_encoder.eval()
        if mode:
            # the target encoder sees whole, unmasked inputs: its BatchNorm layers (a conv stem's) use
            # and keep statistics of those, not the EMA of the context encoder's, which come from
            # inputs whose hidden tubelets are blanked
            for m in self.target_encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        return self

    def trainable(self) -> nn.Module:
        """The modules the optimiser updates (context encoder and predictor)."""
        return nn.ModuleDict({"encoder": self.encoder, "predictor": self.predictor})

    def forward(self, x, ctx_idx=None, tgt_idx=None, generator=None, return_stats=False):
        tub = self.encoder.to_tubelets(x)  # one crop shared by both encoders
        if ctx_idx is None:
            g = self.encoder.grid
            ctx_idx, tgt_idx = sample_batch_masks(x.shape[0], g.grid_t, g.grid_f, self.mask_cfg, generator)
            ctx_idx, tgt_idx = ctx_idx.to(x.device), tgt_idx.to(x.device)
        with torch.no_grad():
            h = self.target_encoder(tub, tubelets=True)
            h = F.layer_norm(h.float(), (h.shape[-1],))
            # collapse monitor: per-channel std of the targets over clips and tokens (-> 0 on collapse)
            tgt_std = float(h.std(dim=(0, 1)).mean()) if return_stats else 0.0
            h = h.gather(1, tgt_idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        z = self.encoder(tub, keep_idx=ctx_idx, tubelets=True)
        p = self.predictor(z, ctx_idx, tgt_idx)
        loss = (p.float() - h).abs().mean()
        if return_stats:
            return loss, {"pred_std": float(p.detach().float().std(dim=(0, 1)).mean()), "tgt_std": tgt_std,
                          "ctx_frac": ctx_idx.shape[1] / self.encoder.grid.n_tokens,
                          "tgt_frac": tgt_idx.shape[1] / self.encoder.grid.n_tokens}
        return loss

    @torch.no_grad()
    def ema_update(self, m: float) -> None:
        """``theta_t <- m * theta_t + (1 - m) * theta_c`` for every encoder parameter. BatchNorm
        statistics are not averaged: the target encoder keeps its own, from unmasked inputs (see
        :meth:`train`); other buffers (fixed positions) are equal in both."""
        tgt = list(self.target_encoder.parameters())
        src = [p.detach() for p in self.encoder.parameters()]
        torch._foreach_lerp_(tgt, src, 1.0 - m)


# ----------------------------------------------------------------------------------------------
# pretraining loop
# ----------------------------------------------------------------------------------------------
def _optim_and_sched(module: nn.Module, lr: float, wd: float, total: int, warmup: int):
    """The shared engine's optimiser (parameter groups) and linear-warmup cosine schedule."""
    from training.engine import build_optimizer, warmup_cosine

    opt = build_optimizer(module, lr, wd)
    return opt, warmup_cosine(opt, total, warmup)


def pretrain(jepa: JEPA, loader, epochs: int, lr: float = 5e-4, weight_decay: float = 0.05,
             warmup_frac: float = 0.05, ema: tuple[float, float] = (0.996, 1.0), grad_clip: float = 1.0,
             max_steps: int | None = None, device: str = "cpu", out_dir: str | None = None,
             export: str = "target", log=print, seed: int = 0, amp: bool = True,
             meta: dict | None = None) -> list[dict]:
    """Run JEPA pretraining; returns per-epoch metrics. Writes ``out_dir/encoder.safetensors`` after
    each epoch when ``out_dir`` is given (atomically; ``meta``, e.g. the dataset description and
    provenance, is stored in its metadata). ``amp``: bf16 autocast where the training engine uses it
    (CUDA, CPUs with native bf16; :func:`training.engine.amp_dtype`); the weights, the EMA and the
    loss stay fp32."""
    from training.engine import amp_dtype, autocast

    steps_per_epoch = len(loader) if max_steps is None else min(len(loader), max_steps)
    total = max(1, steps_per_epoch * epochs)
    opt, sched = _optim_and_sched(jepa.trainable(), lr, weight_decay, total, int(warmup_frac * total))
    gen = torch.Generator().manual_seed(seed)
    models.place(jepa, device).train()
    step, history = 0, []
    dtype = amp_dtype(device, amp)
    for epoch in range(epochs):
        t0, losses, stats = time.perf_counter(), [], {}
        for i, batch in enumerate(loader):
            if i >= steps_per_epoch:
                break
            x = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device, non_blocking=True)
            with autocast(device, dtype):
                loss, stats = jepa(x, generator=gen, return_stats=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(jepa.trainable().parameters(), grad_clip)
            opt.step()
            sched.step()
            step += 1
            jepa.ema_update(ema[0] + (ema[1] - ema[0]) * min(1.0, step / total))
            losses.append(loss.item())
        rec = {"epoch": epoch + 1, "step": step, "loss": sum(losses) / max(1, len(losses)), "amp": str(dtype),
               "lr": opt.param_groups[0]["lr"], "ema": ema[0] + (ema[1] - ema[0]) * min(1.0, step / total),
               "time_s": time.perf_counter() - t0, **stats}
        history.append(rec)
        log(json.dumps(rec))
        if out_dir:
            enc = jepa.target_encoder if export == "target" else jepa.encoder
            from training.checkpoint import atomic_write
            atomic_write(os.path.join(out_dir, "encoder.safetensors"),
                         lambda t: save_encoder(enc, t, epoch=epoch + 1, export=export, **(meta or {})))
    return history


class ClipBatches:
    """Shuffled batches of a :class:`audio_utils.FeatureDataset` through its vectorised
    ``get_batch`` (one pass over the clips per epoch, last partial batch dropped)."""

    def __init__(self, ds, batch_size: int, seed: int = 0):
        self.ds, self.batch_size = ds, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.aug_gen = torch.Generator().manual_seed(seed * 1000 + 17)

    def __len__(self):
        return max(1, len(self.ds) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.ds), generator=self.gen)
        for s in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.ds.get_batch(order[s:s + self.batch_size], self.aug_gen)


def build_jepa(n_frames: int, n_mels: int, preset: str | None = None, config: dict | None = None,
               pred: dict | None = None, mask_cfg: MaskConfig | None = None) -> tuple[JEPA, dict]:
    """Build the encoder exactly as ``models.build_model('vjepa2', preset, **config)`` would, and
    wrap it. Returns (jepa, resolved model config)."""
    from models import build_model

    config = dict(config or {})
    config.pop("init_from", None)
    model = build_model("vjepa2", n_mels=n_mels, n_frames=n_frames, preset=preset, **config)
    p = dict(PRED_PRESETS.get(preset, PRED_PRESETS[None]))
    p.update(pred or {})
    return JEPA(model.encoder, mask_cfg=mask_cfg, **p), {**model.model_config, **p}


def build_parser() -> argparse.ArgumentParser:
    from training.cli import OneLineParser

    ap = OneLineParser(prog="python -m training.jepa", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="ESC-50 root, with audio/ and meta/ (required)")
    ap.add_argument("--out", default=None,
                    help="output directory for encoder.safetensors and metrics.json "
                         "(default: runs/vjepa2_jepa-folds<folds>-<8-digit hash of the settings>)")
    ap.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3],
                    help="unlabelled training folds; recorded in the encoder, and fine-tuning refuses an "
                         "encoder that saw its validation or test clips (default: 1 2 3)")
    ap.add_argument("--epochs", type=int, default=20, help="pretraining epochs (default: 20)")
    ap.add_argument("--batch-size", type=int, default=32, help="clips per step (default: 32)")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate, AdamW (default: 5e-4)")
    ap.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: 0.05)")
    ap.add_argument("--warmup-frac", type=float, default=0.05, help="fraction of steps in warm-up (default: 0.05)")
    ap.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clipping, 0: off (default: 1.0)")
    ap.add_argument("--ema", type=float, nargs=2, default=(0.996, 1.0), metavar=("START", "END"),
                    help="EMA momentum of the target encoder, ramped from START to END (default: 0.996 1.0)")
    ap.add_argument("--preset", default=None, help="vjepa2 model preset: tiny, small, gpu (default: the CPU config)")
    ap.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                    help="vjepa2 model option, as train.py --config (strictly checked; encoder keys must match at "
                         "fine-tune) (default: none)")
    ap.add_argument("--feature", action="append", default=[], metavar="KEY=VALUE",
                    help="feature option (FeatureConfig field), as train.py --feature; the fine-tuning run must use "
                         "the same features (default: none)")
    ap.add_argument("--drop-path", type=float, default=0.0,
                    help="drop path of the context encoder while pretraining (default: 0.0)")
    ap.add_argument("--pred-dim", type=int, default=None, help="predictor width (default: per preset, PRED_PRESETS)")
    ap.add_argument("--pred-depth", type=int, default=None, help="predictor blocks (default: per preset)")
    ap.add_argument("--pred-heads", type=int, default=None, help="predictor heads (default: per preset)")
    ap.add_argument("--context-ratio", type=float, nargs=2, default=(0.25, 0.5), metavar=("MIN", "MAX"),
                    help="fraction of tokens in the context, drawn per batch in [MIN, MAX] (default: 0.25 0.5)")
    ap.add_argument("--augment", action="store_true", default=False,
                    help="use the dataset's training augmentation (default: off)")
    ap.add_argument("--export", choices=["target", "context"], default="target",
                    help="which encoder to write; V-JEPA uses the EMA target (default: target)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch, for smoke tests (default: none)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--cache-dir", default=None, help="feature cache directory (default: $AUDIO_CACHE_DIR or data/cache)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                    help="bf16 autocast on CUDA and on CPUs with native bf16, as train.py (default: on)")
    ap.add_argument("--seed", type=int, default=0, help="seed of initialisation, masks and order (default: 0)")
    ap.add_argument("--debug", action="store_true", default=False,
                    help="show the full traceback of an error instead of one line (default: off)")
    return ap


def _check_args(args, ap) -> None:
    from training.options import check_range
    for name in ("epochs", "batch_size", "lr", "weight_decay", "grad_clip", "threads", "seed"):
        try:
            check_range(name, getattr(args, name), "--")
        except ValueError as exc:
            ap.error(str(exc).replace("_", "-"))
    for name in ("pred_dim", "pred_depth", "pred_heads", "max_steps"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')} must be an integer >= 1, got {v}")
    if not 0 <= args.warmup_frac < 1:
        ap.error(f"--warmup-frac must be in [0, 1), got {args.warmup_frac}")
    if not all(0 <= m <= 1 for m in args.ema) or args.ema[0] > args.ema[1]:
        ap.error(f"--ema must be START <= END in [0, 1], got {list(args.ema)}")
    lo, hi = args.context_ratio
    if not 0 < lo <= hi < 1:
        ap.error(f"--context-ratio must satisfy 0 < MIN <= MAX < 1, got {lo} {hi}")
    if not 0 <= args.drop_path < 1:
        ap.error(f"--drop-path must be in [0, 1), got {args.drop_path}")
    if 5 in args.folds:
        ap.error("fold 5 is the test fold; it must never be used for pretraining")
    if not args.folds or any(f not in (1, 2, 3, 4, 5) for f in args.folds):
        ap.error(f"--folds must be among 1..5, got {args.folds}")


def encoder_dataset(data_dir, folds, ds) -> dict:
    """The dataset description an encoder records (like a checkpoint's; its clips are recorded
    beside it): the pretraining clips are its training split; it has no validation or test split."""
    from pathlib import Path

    return {"kind": "esc50", "root": str(Path(data_dir).resolve()), "train_folds": sorted(set(folds)),
            "val_folds": [], "test_folds": [], "feature_config": ds.feature_cfg.to_dict()}


def main(argv=None):
    """``python -m training.jepa``: returns the exit status (0, or 2 with a one-line error)."""
    from training.cli import _debug_flag, run_cli

    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        ap = build_parser()
        args = ap.parse_args(argv)
        _check_args(args, ap)
        from training.options import check_model, feature_config, parse_pairs

        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        if 4 in args.folds:
            warnings.warn("fold 4 is the validation fold; pretraining on it leaks into model selection "
                          "(fine-tuning with fold 4 as validation or test will refuse this encoder)")
        config = check_model("vjepa2", parse_pairs(args.config, "--config"), args.preset)
        if config.get("init_from"):
            raise ValueError("--config init_from: JEPA pretraining starts from random weights")
        config["drop_path"] = args.drop_path
        pred = {k: v for k, v in dict(pred_dim=args.pred_dim, pred_depth=args.pred_depth,
                                      pred_heads=args.pred_heads).items() if v is not None}
        if args.out is None:
            from training.run_dir import short_hash
            settings = {k: v for k, v in vars(args).items() if k not in ("out", "threads", "device", "debug",
                                                                          "cache_dir", "data_dir")}
            settings["config"] = config
            folds = "".join(map(str, sorted(set(args.folds))))
            args.out = os.path.join("runs", f"vjepa2_jepa-folds{folds}-{short_hash(settings)}")

        from audio_utils import esc50_dataset

        feat = feature_config(None, parse_pairs(args.feature, "--feature"))
        ds = esc50_dataset(args.data_dir, folds=args.folds, mode="sequence", augment=args.augment, expansion=1,
                          feature_cfg=feat, cache_dir=args.cache_dir)
        # normalisation from the pretraining clips = the fine-tuning training split (folds 1-3), which is
        # what the engine computes for train.py, so the encoder sees identically normalised inputs
        ds.set_normalization(*ds.compute_normalization())
        n_frames, n_mels = ds.feature_cfg.n_frames, ds.feature_cfg.n_mels
        mask_cfg = MaskConfig(context_ratio=tuple(args.context_ratio))
        jepa, resolved = build_jepa(n_frames, n_mels, args.preset, config, pred, mask_cfg)
        loader = ClipBatches(ds, args.batch_size, seed=args.seed)
        os.makedirs(args.out, exist_ok=True)
        from training.run_dir import RunLock
        lock = RunLock(args.out).acquire()          # one pretraining process per output directory
        try:
            n_params = sum(p.numel() for p in jepa.trainable().parameters())
            print(f"JEPA pretraining: {len(ds)} clips (folds {args.folds}), grid {jepa.encoder.grid}, "
                  f"{n_params / 1e6:.2f} M trainable params, {len(loader)} steps/epoch", flush=True)
            from training.provenance import dataset_clips
            dataset = encoder_dataset(args.data_dir, args.folds, ds)
            provenance = {"teachers": [], "init_from": None}
            t0 = time.perf_counter()
            hist = pretrain(jepa, loader, args.epochs, args.lr, args.weight_decay, args.warmup_frac, tuple(args.ema),
                            args.grad_clip, args.max_steps, args.device, args.out, args.export,
                            log=lambda s: print(s, flush=True), seed=args.seed, amp=args.amp,
                            meta={"dataset": dataset, "clips": dataset_clips(ds), "provenance": provenance})
            summary = {"args": vars(args), "normalization": {"mean": ds.normalization[0].tolist(),
                                                               "std": ds.normalization[1].tolist()},
                       "model_config": resolved, "mask": asdict(mask_cfg),
                       "dataset": dataset,
                       "n_clips": len(ds), "trainable_params": n_params, "total_time_s": time.perf_counter() - t0,
                       "history": hist, "encoder": os.path.join(args.out, "encoder.safetensors")}
            from pathlib import Path

            from training.checkpoint import atomic_write
            atomic_write(os.path.join(args.out, "metrics.json"),
                         lambda t: Path(t).write_text(json.dumps(summary, indent=1, default=str)))
        finally:
            lock.release()
        print(f"wrote {summary['encoder']} ({summary['total_time_s']:.1f} s)")
        return 0

    return run_cli(body, "interrupted", debug=_debug_flag(argv))


if __name__ == "__main__":
    sys.exit(main())
