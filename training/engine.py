"""The one training engine: used by train.py, the notebooks, cross-validation and DDP runs.

``fit(model, train_ds, val_ds, test_ds, cfg, out_dir)`` trains with AdamW (parameter groups:
no weight decay on norms / biases / 1-D parameters / names in ``model.no_weight_decay()``, and a
group per distinct ``_optim`` dict a model attaches to parameters such as S4's A, B and dt),
linear warm-up + cosine schedule, gradient clipping, mixup and label smoothing; it selects the
best epoch on validation accuracy (early stopping optional), evaluates that checkpoint on the
test split, and writes into ``out_dir``:

* ``best.safetensors``: the selected model, loadable without pickle (see training/checkpoint.py)
* ``last.pt``: the full training state after the latest epoch (weights-only loadable) for resume
* ``history.csv`` / ``history.json``: one row per epoch (loss, accuracy, lr, time, data time)
* ``metrics.json``: best validation and final test metrics; ``curves.png``: the learning curves
* ``val_predictions.csv``: the model's per-clip validation probabilities (the format of ``inference.py
  --evaluate``'s ``predictions.csv``): in cross-validation, out-of-fold predictions for choosing ensembles

Datasets are :class:`audio_utils.FeatureDataset` (anything with ``get_batch(indices, generator)``,
``__len__``, ``num_clips``, ``num_classes``, ``class_names``, ``feature_cfg`` and normalisation
methods). Under ``torch.distributed`` (torchrun) every rank takes its share of each global batch,
gradients are averaged by DDP, and only rank 0 writes files.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

import models
from training.checkpoint import atomic_write, save_checkpoint
from training.metrics import best_threshold, binary_metrics, multiclass_metrics, predictions


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    mixup: float = 0.2              # Beta(alpha, alpha) mixup; 0 disables
    mixup_prob: float = 0.8         # fraction of batches that are mixed
    label_smoothing: float = 0.0
    patience: int = 0               # early stopping after this many epochs without improvement (0: off)
    seed: int = 0
    device: str = "auto"            # "auto" | "cpu" | "cuda" | "cuda:1" ...
    amp: bool = True                # bf16 autocast on CUDA and on CPUs with native bf16 (see amp_dtype)
    threads: int | None = None      # torch CPU threads
    eval_batch_size: int = 32       # small batches stay in the CPU caches (faster than 128 there)
    drop_last: bool = True
    class_weights: bool = False     # inverse-frequency loss weights (imbalanced data)
    progress: bool = True
    compile: bool = False           # torch.compile the model (GPU runs)
    distill_from: tuple[str, ...] = ()  # teacher checkpoints (training/distill.py); empty: no distillation
    distill_weight: float = 0.5     # w in (1 - w) * CE + w * T^2 * KL(teacher || student)
    distill_temp: float = 2.0       # T
    distill_mode: str = "online"    # "online": teacher runs on every batch; "offline": once per clip
    crop: float = 0.0               # train on random crops of this many seconds (0: whole clips)
    eval_crops: int = 1             # evaluate on the whole clip (1) or the mean of N crops of `crop` s
    ema: float = 0.0                # EMA of the weights with this decay (0: off); evaluated beside them
    bc_mix: float = 0.0             # fraction of batches with between-class mixing (replaces mixup there)
    swa_start: int = 0              # SWA: from this epoch on (1-based), an equal-weight average of the weights
                                    # after each epoch is kept and evaluated beside them (0: off)
    select: str = "best"            # checkpoint: "best" epoch on validation, or "last" (SWA, else EMA, if on)
    val_every: int = 1              # validate every N epochs (and after the last); others are not candidates

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------------------------
# Optimiser and schedule
# --------------------------------------------------------------------------------------------
def param_groups(model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict]:
    model = getattr(model, "module", model)
    no_wd = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        opt = dict(getattr(p, "_optim", None) or {})
        g_lr = float(opt.get("lr", lr))
        g_wd = float(opt.get("weight_decay", weight_decay))
        if p.ndim <= 1 or name in no_wd or name.endswith(".bias"):
            g_wd = 0.0
        key = (g_lr, g_wd)
        if key not in groups:
            groups[key] = {"params": [], "lr": g_lr, "weight_decay": g_wd, "names": []}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, lr, weight_decay), lr=lr, betas=betas)


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.01):
    """Linear warm-up to each group's lr, then cosine decay to ``min_lr_ratio`` x lr."""
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------
# Devices, precision, distribution, batches
# --------------------------------------------------------------------------------------------
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo).

    Without it oneDNN emulates bf16 and autocast is slower than fp32, so the engine keeps fp32."""
    if os.environ.get("AUDIO_FORCE_CPU_BF16") is not None:        # tests / benchmarks
        return os.environ["AUDIO_FORCE_CPU_BF16"] == "1"
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read), read once."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def amp_dtype(device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype for ``device`` (bf16 on CUDA and on CPUs with native bf16), or ``None``.

    Under autocast only matmuls / convolutions run in bf16; the models keep their SSM scans and
    kernels in fp32 (autocast-disabled regions with fp32 casts at their boundary: the selective
    scan in ``models/selective_scan.py``, the S4 convolution in ``models/liquid_s4.S4Layer.ssm``),
    norms, softmax and the losses are fp32 by autocast's own rules and the explicit ``.float()``
    of the logits, and the weights and the optimizer state are never cast."""
    device = torch.device(device)
    if not enabled:
        return None
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def serving_amp(meta: dict, device) -> bool:
    """Whether a checkpoint is served (``inference.Predictor``, ensembles) with bf16 autocast: when its
    run trained with it, except on a CPU for model families where bf16 measured slower than fp32 at
    batch 1 (``models.ModelSpec.cpu_bf16_inference``)."""
    trained = bool((meta.get("train_config") or {}).get("amp", True))
    return trained and (torch.device(device).type != "cpu" or models.get_spec(meta["model_name"]).cpu_bf16_inference)


def autocast(device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``device`` with ``dtype``, disabled when ``dtype`` is None."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def crop_frames_for(seconds: float, feature_cfg) -> int:
    """Frames of a ``seconds``-long crop of the cached log-mels (at least one)."""
    return max(1, int(round(seconds * feature_cfg.sample_rate / feature_cfg.hop_length)))


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but CUDA is not available")
    return dev


@dataclass
class DistInfo:
    """This process's place in a ``torch.distributed`` job (rank 0 of 1 when not distributed)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0             # rank within the node (torchrun's LOCAL_RANK): picks the GPU

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> "DistInfo":
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        return cls()


def epoch_batches(n_items: int, batch_size: int, generator: torch.Generator, shuffle: bool = True,
                  drop_last: bool = True, dist: DistInfo = DistInfo(), with_sizes: bool = False):
    """Global batches of item indices; each rank yields its contiguous share of every batch.

    Every rank draws the same permutation (``generator`` is seeded alike on all ranks), so the
    shares are disjoint and together are exactly the single-process batch. A final batch with
    fewer items than ranks is skipped on every rank (no rank may get an empty share). With
    ``with_sizes`` the items are ``(share, global_batch_size)``.
    """
    order = torch.randperm(n_items, generator=generator) if shuffle else torch.arange(n_items)
    stop = (n_items // batch_size) * batch_size if drop_last and n_items >= batch_size else n_items
    for s in range(0, stop, batch_size):
        batch = order[s:s + batch_size]
        n_global = len(batch)
        if dist.world > 1:
            if n_global < dist.world:
                continue
            batch = batch.tensor_split(dist.world)[dist.rank]
        yield (batch, n_global) if with_sizes else batch


def mixup_batch(x, y, alpha: float, generator: torch.Generator):
    """``(lam * x + (1 - lam) * x[perm], y, y[perm], lam, perm)`` with ``lam >= 0.5``."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    perm = torch.randperm(x.shape[0], generator=generator)
    lam = max(lam, 1 - lam)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam, perm


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_proba(model, ds, batch_size: int = 128, device="cpu", amp: bool = True,
                  crop_frames: int | None = None, n_crops: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[clips, classes]`` and labels for every clip of ``ds``.

    One view per clip (the whole clip, centre-cropped to ``n_frames``), or with ``n_crops > 1`` the
    mean of the probabilities of ``n_crops`` evenly spaced ``crop_frames`` crops of the full clip
    (``audio_utils.multi_crop_offsets``; inference does the same)."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    dtype = amp_dtype(device, amp)
    probs, labels = [], []
    multi = n_crops > 1 and crop_frames
    step = max(1, batch_size // n_crops) if multi else batch_size
    for s in range(0, ds.num_clips, step):
        idx = torch.arange(s, min(s + step, ds.num_clips))
        x, y = ds.get_crops(idx, crop_frames, n_crops) if multi else ds.get_batch(idx)
        with autocast(device, dtype):
            logits = model(x.to(device, non_blocking=True))
        p = torch.softmax(logits.float(), -1).cpu()
        probs.append(p.view(len(idx), n_crops, -1).mean(1) if multi else p)
        labels.append(y)
    model.train(was_training)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def eval_views(cfg: "TrainConfig", feature_cfg) -> dict:
    """``predict_proba`` keyword arguments for the evaluation that ``cfg`` describes."""
    if cfg.eval_crops > 1:
        return {"crop_frames": crop_frames_for(cfg.crop, feature_cfg), "n_crops": int(cfg.eval_crops)}
    return {}


def task_metrics(probs: np.ndarray, labels: np.ndarray, class_names, task: dict | None = None) -> dict:
    """Multi-class metrics, plus binary metrics for a one-vs-rest task; a binary task's accuracy,
    per-class accuracy and confusion matrix use its threshold, as its ``binary`` block does."""
    out = multiclass_metrics(probs, labels, class_names, predictions(probs, task))
    if task and task.get("type") == "binary":
        out["binary"] = binary_metrics(probs[:, 1], labels == 1, task.get("threshold", 0.5))
    return out


def evaluate(model, ds, batch_size: int = 128, device="cpu", amp: bool = True, task: dict | None = None,
             **views) -> dict:
    probs, labels = predict_proba(model, ds, batch_size, device, amp, **views)
    return metrics_with_loss(probs, labels, ds.class_names, task)


def metrics_with_loss(probs: np.ndarray, labels: np.ndarray, class_names, task: dict | None = None) -> dict:
    out = task_metrics(probs, labels, class_names, task)
    out["loss"] = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), torch.from_numpy(labels)))
    return out


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _write_history(out: Path, history: list[dict]) -> None:
    atomic_write(out / "history.json", lambda t: Path(t).write_text(json.dumps(history, indent=1)))
    if history:
        def w(t):
            with open(t, "w", newline="") as fh:
                # every key of every row (the SWA columns begin at swa_start), empty where a row has none
                wr = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for h in history for k in h)))
                wr.writeheader()
                wr.writerows(history)
        atomic_write(out / "history.csv", w)


def plot_history(history: list[dict], path, title: str = "", fmt: str | None = None) -> None:
    """Loss and accuracy curves as a PNG (an Agg canvas: leaves the notebook's backend alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots(1, 2)
    for i, key in enumerate(("loss", "acc")):
        ax[i].plot(ep, [h[f"train_{key}"] for h in history], label="train")
        for suffix, label in (("", "val"), ("_ema", "val (EMA)"), ("_swa", "val (SWA)")):   # validated epochs only
            pts = [(h["epoch"], h[f"val_{key}{suffix}"]) for h in history
                   if math.isfinite(h.get(f"val_{key}{suffix}", float("nan")))]
            if pts:
                ax[i].plot(*zip(*pts), label=label, marker="." if len(pts) < len(ep) else None)
        ax[i].set_xlabel("epoch")
        ax[i].set_ylabel("loss" if key == "loss" else "accuracy")
        ax[i].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90, format=fmt)


def _task_from(ds, extra: dict) -> dict:
    task = dict(extra.get("task") or {})
    task.setdefault("type", "multiclass")
    return task


def _check_shared_dir(out: Path, dist: DistInfo, device) -> None:
    """Every rank reads ``last.pt`` (resume) and ``best.safetensors`` (final test) that rank 0 writes,
    so a multi-node run needs ``out`` on a shared filesystem; fail at the start rather than at the end."""
    import torch.distributed as tdist
    nonce = torch.tensor([int.from_bytes(os.urandom(6), "little") if dist.main else 0],
                         dtype=torch.int64, device=device)
    tdist.broadcast(nonce, 0)
    probe = out / ".ddp_shared_check"
    if dist.main:
        probe.write_text(str(int(nonce)))
    tdist.barrier()
    try:
        ok = probe.read_text().strip() == str(int(nonce))
    except OSError:
        ok = False
    flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=device)
    tdist.all_reduce(flag, op=tdist.ReduceOp.MIN)
    tdist.barrier()
    if dist.main:
        probe.unlink(missing_ok=True)
    if int(flag) != 1:
        raise RuntimeError(f"output directory {out} is not shared by all ranks: put --out on a filesystem "
                           "every node can read (rank 0 writes the checkpoints the others load)")


def _check_config(cfg: TrainConfig, teacher, val_ds=True) -> None:
    if val_ds is None and (cfg.select != "last" or cfg.patience > 0):
        raise ValueError("training without a validation split (a refit) needs select 'last' and patience 0: "
                         "nothing can be chosen on validation")
    if cfg.eval_crops > 1 and not cfg.crop > 0:
        raise ValueError("eval_crops > 1 needs crop > 0 (the crop length in seconds)")
    if cfg.val_every < 1:
        raise ValueError(f"val_every must be >= 1, got {cfg.val_every}")
    if cfg.select not in ("best", "last"):
        raise ValueError(f"select must be 'best' or 'last', got {cfg.select!r}")
    if not 0.0 <= cfg.ema < 1.0:
        raise ValueError(f"ema must be a decay in [0, 1), got {cfg.ema}")
    if not 0 <= cfg.swa_start <= cfg.epochs:
        raise ValueError(f"swa_start must be an epoch in [0, epochs={cfg.epochs}] (0: off), got {cfg.swa_start}")


def _soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights=None, smoothing: float = 0.0):
    """Cross-entropy with soft targets ``[B, C]`` (label smoothing and class weights as in F.cross_entropy)."""
    logp = F.log_softmax(logits.float(), -1)
    if smoothing > 0:
        target = target * (1 - smoothing) + smoothing / target.shape[-1]
    per = -(target * logp * (weights if weights is not None else 1.0)).sum(-1)
    if weights is not None:
        return per.sum() / (target * weights).sum()
    return per.mean()


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fit(model: torch.nn.Module, train_ds, val_ds, test_ds=None, cfg: TrainConfig = TrainConfig(),
        out_dir: str | os.PathLike = "runs/run", resume: bool = True, meta: dict | None = None,
        on_epoch_end: Callable[[dict, list[dict]], None] | None = None, teacher=None) -> dict:
    """Train ``model`` and return the metrics dict (also written to ``out_dir/metrics.json``).

    ``teacher`` (a :class:`training.distill.Teacher`) adds the distillation term to the loss.

    ``meta`` is merged into the checkpoint metadata (e.g. dataset description, CLI arguments,
    ``task`` for one-vs-rest). ``on_epoch_end(row, history)`` is called after every epoch on
    rank 0 (the notebooks draw live curves with it).
    """
    _check_config(cfg, teacher, val_ds)
    dist = DistInfo.current()
    out = Path(out_dir)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    if dist.world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())   # set per LOCAL_RANK by training.distributed
    _set_seed(cfg.seed)
    task = _task_from(train_ds, meta)

    # normalisation from the training split only, shared by every split and the checkpoint
    if train_ds.normalization is None:
        train_ds.set_normalization(*train_ds.compute_normalization())
    for ds in (val_ds, test_ds):
        if ds is not None:
            ds.set_normalization(*train_ds.normalization)
    if cfg.crop > 0:
        train_ds.crop_frames = crop_frames_for(cfg.crop, train_ds.feature_cfg)
    views = eval_views(cfg, train_ds.feature_cfg)

    if dist.world > 1 and device.type == "cuda" and os.environ.get("DDP_SYNC_BN", "1") != "0":
        # batch statistics over the global batch, as in single-process training (CUDA only in torch;
        # same parameters and state_dict keys, so checkpoints load into the plain model)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = models.place(model, device)
    base_model = model
    ema = None
    if cfg.ema > 0:
        from timm.utils import ModelEmaV3
        # parameters and buffers (BatchNorm statistics) averaged; decay warms up from 0 to cfg.ema
        ema = ModelEmaV3(base_model, decay=cfg.ema, use_warmup=True, warmup_power=0.75)
    swa = None
    if cfg.swa_start > 0:
        from torch.optim.swa_utils import AveragedModel
        # stochastic weight averaging (Izmailov et al. 2018) of the weights after epochs swa_start..epochs,
        # buffers (BatchNorm statistics) averaged with them as the EMA's are
        swa = AveragedModel(base_model, use_buffers=True)
    if teacher is not None:
        from training.distill import distill_loss
        teacher = teacher.to(device)
        if cfg.distill_mode not in ("online", "offline"):
            raise ValueError(f"distill_mode must be 'online' or 'offline', got {cfg.distill_mode!r}")
        if cfg.distill_mode == "offline" and teacher.clip_probs is None:
            teacher.precompute(train_ds, cfg.eval_batch_size, device)
    if dist.world > 1:
        ddp_kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
        model = torch.nn.parallel.DistributedDataParallel(model, **ddp_kw)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(base_model, cfg.lr, cfg.weight_decay)
    local_bs = cfg.batch_size
    steps_per_epoch = (len(train_ds) // local_bs) if cfg.drop_last and len(train_ds) >= local_bs \
        else math.ceil(len(train_ds) / local_bs)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = warmup_cosine(optimizer, total_steps, int(cfg.warmup_frac * total_steps), cfg.min_lr_ratio)
    gen = torch.Generator().manual_seed(cfg.seed)          # sampling / mixup (same on all ranks)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 17 + dist.rank)  # augmentation per rank
    weights = None
    if cfg.class_weights:
        counts = torch.bincount(train_ds.labels, minlength=train_ds.num_classes).float().clamp_min(1)
        weights = (counts.sum() / (len(counts) * counts)).to(device)
    dtype = amp_dtype(device, cfg.amp)

    history: list[dict] = []
    best = {"val_acc": -1.0, "val_loss": float("inf"), "epoch": 0, "weights": "raw"}
    start_epoch = 0
    last_path = out / "last.pt"
    if dist.world > 1:
        _check_shared_dir(out, dist, device)
    if resume and last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        base_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["gen"])
        aug_gen.set_state(state["aug_gen"])
        torch.set_rng_state(state["torch_rng"])
        if ema is not None:
            if state.get("ema") is None:
                raise RuntimeError(f"{last_path} holds no EMA weights: it was trained without --ema")
            ema.module.load_state_dict(state["ema"])
        if swa is not None:
            if state.get("swa") is None:
                raise RuntimeError(f"{last_path} holds no SWA state: it was trained without --swa-start")
            swa.load_state_dict(state["swa"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"]
        best.setdefault("weights", "raw")
        if dist.main:
            print(f"resumed from {last_path} after epoch {start_epoch}")
        if state.get("stopped"):
            start_epoch = cfg.epochs
    if dist.world > 1:
        import torch.distributed as tdist
        chk = torch.tensor([start_epoch, -start_epoch], dtype=torch.float64, device=device)
        tdist.all_reduce(chk, op=tdist.ReduceOp.MAX)
        if chk[0] != -chk[1]:
            raise RuntimeError(f"ranks disagree on the resume state of {last_path} (epochs {int(-chk[1])}.."
                               f"{int(chk[0])}): the output directory must be shared by all nodes")
        if dist.rank > 0:   # own dropout / mixup-lambda stream per rank (rank 0 keeps the saved one)
            torch.manual_seed(cfg.seed + 1_000_003 * dist.rank + start_epoch)

    def ckpt_meta(metrics: dict) -> dict:
        m = dict(meta)
        m.update(model_name=model_name_of(base_model),
                 model_config=getattr(base_model, "model_config", {}),
                 num_classes=train_ds.num_classes, class_names=train_ds.class_names,
                 feature_config=train_ds.feature_cfg.to_dict(),
                 normalization={"mean": train_ds.normalization[0].tolist(), "std": train_ds.normalization[1].tolist()},
                 task=task, metrics=metrics, train_config=asdict(cfg))
        return m

    def evaluate_val(net) -> dict:
        val = evaluate(net, val_ds, cfg.eval_batch_size, device, cfg.amp, task, **views)
        if dist.world > 1:
            # every rank evaluates the whole validation set; rank 0's numbers decide for all, so that
            # best-epoch selection and early stopping can never diverge between ranks
            import torch.distributed as tdist
            v = torch.tensor([val["accuracy"], val["loss"]], dtype=torch.float64, device=device)
            tdist.broadcast(v, 0)
            val["accuracy"], val["loss"] = v.tolist()
        return val

    offline = teacher is not None and teacher.clip_probs is not None   # distillation from cached targets
    stopped = False
    loop_t0 = time.perf_counter()
    earlier = sum(h["epoch_time"] + h.get("eval_time", 0.0) for h in history)   # before a resume
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        data_time, n_seen, loss_sum, correct = 0.0, 0, 0.0, 0.0
        batches = epoch_batches(len(train_ds), cfg.batch_size, gen, True, cfg.drop_last, dist, with_sizes=True)
        bar = None
        if cfg.progress and dist.main:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for idx, n_global in batches:
            bc = cfg.bc_mix > 0 and float(torch.rand(1, generator=gen)) < cfg.bc_mix
            mixed = not bc and cfg.mixup > 0 and float(torch.rand(1, generator=gen)) < cfg.mixup_prob
            td = time.perf_counter()
            if bc:
                x, target, *mixing = train_ds.get_mixed_batch(idx, aug_gen, return_mixing=offline)
                y = target.argmax(-1)
                target = target.to(device, non_blocking=True)
            else:
                x, y = train_ds.get_batch(idx, aug_gen)
            data_time += time.perf_counter() - td
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if offline:                                         # cached per training clip, mixed as the labels
                soft = teacher.clip_probs[torch.as_tensor(idx) % train_ds.num_clips]
                soft = (mixing[0] @ soft if bc else soft).to(device)     # float32, outside autocast
            with autocast(device, dtype):
                if bc:
                    logits = model(x)
                    loss = _soft_cross_entropy(logits, target, weights, cfg.label_smoothing)
                elif mixed:
                    # the pairing permutation is local to a rank's share; drawing it from the shared
                    # ``gen`` would desynchronise the ranks' batch order when shares differ in size
                    xm, ya, yb, lam, perm = mixup_batch(x, y, cfg.mixup, gen if dist.world == 1 else aug_gen)
                    logits = model(xm)
                    loss = lam * F.cross_entropy(logits.float(), ya, weights, label_smoothing=cfg.label_smoothing) + \
                        (1 - lam) * F.cross_entropy(logits.float(), yb, weights, label_smoothing=cfg.label_smoothing)
                else:
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y, weights, label_smoothing=cfg.label_smoothing)
                if teacher is not None:
                    if offline:
                        soft = lam * soft + (1 - lam) * soft[perm.to(device)] if mixed else soft
                    else:                                       # online: the teacher sees this batch
                        soft = teacher(xm if mixed else x)
                    loss = (1 - cfg.distill_weight) * loss + \
                        cfg.distill_weight * distill_loss(logits, soft, cfg.distill_temp)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks; weighting each rank's mean loss by its share of the
            # global batch makes that the gradient of the global-batch mean even for uneven shares
            share = dist.world * len(y) / n_global if dist.world > 1 else 1.0
            (loss * share if share != 1.0 else loss).backward()
            if cfg.grad_clip and cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(base_model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(base_model, step=scheduler.last_epoch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}")
            n_seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += float((logits.argmax(-1) == y).sum())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / n_seen:.3f}")
        if bar is not None:
            bar.close()
        if dist.world > 1:
            import torch.distributed as tdist
            agg = torch.tensor([loss_sum, correct, n_seen], dtype=torch.float64, device=device)
            tdist.all_reduce(agg)
            loss_sum, correct, n_seen = agg.tolist()
        train_time = time.perf_counter() - t0
        averaging = swa is not None and epoch + 1 >= cfg.swa_start
        if averaging:
            swa.update_parameters(base_model)
        validate = val_ds is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs)
        nan = {"loss": float("nan"), "accuracy": float("nan")}
        # the weights evaluated this epoch: raw, EMA if on, SWA once it has begun (later ones win ties)
        nets = {"raw": base_model}
        if ema is not None:
            nets["ema"] = ema.module
        if averaging:
            nets["swa"] = swa.module
        vals = {k: evaluate_val(net) if validate else nan for k, net in nets.items()}
        val = vals["raw"]
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, n_seen), "train_acc": correct / max(1, n_seen),
               "val_loss": val["loss"], "val_acc": val["accuracy"], "lr": optimizer.param_groups[0]["lr"],
               "epoch_time": train_time, "data_time": data_time, "eval_time": time.perf_counter() - t0 - train_time}
        for k in ("ema", "swa"):
            if k in vals:
                row.update({f"val_loss_{k}": vals[k]["loss"], f"val_acc_{k}": vals[k]["accuracy"]})
        history.append(row)
        # this epoch's candidate: the averaged weights when they are at least as good on validation
        # ("best"), or always the last averaged weights when on ("last": fixed in advance, no choice on val)
        if cfg.select == "last":
            kind = list(nets)[-1]
        else:
            order = list(nets)
            kind = max(order, key=lambda k: (vals[k]["accuracy"], -vals[k]["loss"], order.index(k)))
        cand, cand_net = vals[kind], nets[kind]
        if val_ds is None:      # a refit: the weights after the last epoch are the model
            improved = epoch + 1 == cfg.epochs
        elif not validate:
            improved = False
        elif cfg.select == "last":
            improved = True
        else:
            improved = (cand["accuracy"] > best["val_acc"]) or \
                (cand["accuracy"] == best["val_acc"] and cand["loss"] < best["val_loss"])
        if improved:
            best = {"val_acc": cand["accuracy"], "val_loss": cand["loss"], "epoch": epoch + 1,
                    "weights": kind}
        stopped = cfg.patience > 0 and (epoch + 1 - best["epoch"]) >= cfg.patience
        if dist.main:
            if improved:
                save_checkpoint(out / "best.safetensors", cand_net, ckpt_meta({"best_val": best}))
            state = {"model": base_model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "gen": gen.get_state(), "aug_gen": aug_gen.get_state(),
                     "torch_rng": torch.get_rng_state(), "history": history, "best": best, "epoch": epoch + 1,
                     "stopped": stopped, "ema": ema.module.state_dict() if ema is not None else None,
                     "swa": swa.state_dict() if swa is not None else None}
            atomic_write(last_path, lambda t: torch.save(state, t))
            _write_history(out, history)
            _write_progress(out, history, best, cfg, model_name_of(base_model))
            this_run = time.perf_counter() - loop_t0
            eta = this_run / (epoch + 1 - start_epoch) * (cfg.epochs - epoch - 1)
            elapsed = earlier + this_run
            val_txt = (f"val acc {row['val_acc']:.3f}" + "".join(f" {k} {row[f'val_acc_{k}']:.3f}" for k in nets if k != "raw")
                       if validate else "val -")
            print(f"epoch {epoch + 1:3d}/{cfg.epochs} loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} | "
                  f"{val_txt} | best " + (f"{best['val_acc']:.3f}@{best['epoch']}" if best["epoch"] else "-") + " | "
                  f"{train_time:.1f}s+{row['eval_time']:.1f}s | {_fmt_time(elapsed)} elapsed, ETA {_fmt_time(eta)}",
                  flush=True)
            if on_epoch_end is not None:
                on_epoch_end(row, history)
        if stopped:
            if dist.main:
                print(f"early stopping: no val improvement for {cfg.patience} epochs")
            break

    if dist.world > 1:
        import torch.distributed as tdist
        tdist.barrier()
    return finalize(base_model, out, train_ds, val_ds, test_ds, cfg, device, history, best, task, ckpt_meta, dist)


def model_name_of(model) -> str:
    """The registry name of a model built by ``models.build_model`` (else its class name)."""
    return getattr(model, "model_name", type(model).__name__)


def _write_progress(out: Path, history: list[dict], best: dict, cfg: TrainConfig, model_name: str) -> None:
    """``metrics.json`` (status "running") and ``curves.png`` refreshed after every epoch;
    :func:`finalize` replaces them with the final figures."""
    progress = {"status": "running", "model": model_name, "epochs_run": len(history), "epochs": cfg.epochs,
                "best_epoch": best["epoch"], "best_val_acc": best["val_acc"], "best_weights": best.get("weights"),
                "mean_epoch_time_s": float(np.mean([h["epoch_time"] for h in history]))}
    atomic_write(out / "metrics.json", lambda t: Path(t).write_text(json.dumps(progress, indent=1)))
    atomic_write(out / "curves.png", lambda t: plot_history(history, t, model_name, fmt="png"))


def finalize(model, out: Path, train_ds, val_ds, test_ds, cfg, device, history, best, task, ckpt_meta, dist) -> dict:
    """Reload the best checkpoint, pick a binary threshold on validation, test once, write results."""
    from training.checkpoint import load_checkpoint

    state, _ = load_checkpoint(out / "best.safetensors", "cpu")
    model.load_state_dict(state)
    models.place(model, device)
    views = eval_views(cfg, train_ds.feature_cfg)
    val = {"accuracy": None, "macro_f1": None, "n": 0}      # a refit has no validation split
    if val_ds is not None:
        probs, labels = predict_proba(model, val_ds, cfg.eval_batch_size, device, cfg.amp, **views)
        if task.get("type") == "binary":
            task["threshold"] = best_threshold(probs[:, 1], labels == 1)   # chosen on validation only
        val = metrics_with_loss(probs, labels, val_ds.class_names, task)
        val_rows = (probs, labels, val_ds.class_names, predictions(probs, task))
    test = evaluate(model, test_ds, cfg.eval_batch_size, device, cfg.amp, task, **views) if test_ds is not None else None
    epoch_times = [h["epoch_time"] for h in history]
    metrics = {
        "model": model_name_of(model),
        "params": sum(p.numel() for p in model.parameters()),
        "status": "finished", "best_epoch": best["epoch"], "best_weights": best.get("weights", "raw"),
        "selection": cfg.select, "epochs_run": len(history),
        "val_acc": val["accuracy"], "val_macro_f1": val["macro_f1"], "n_val": val["n"],
        "test_acc": test["accuracy"] if test else None, "test_macro_f1": test["macro_f1"] if test else None,
        "n_test": test["n"] if test else 0,
        "mean_epoch_time_s": float(np.mean(epoch_times)) if epoch_times else None,
        "mean_data_time_s": float(np.mean([h["data_time"] for h in history])) if history else None,
        "mean_epoch_time_with_eval_s": float(np.mean([h["epoch_time"] + h.get("eval_time", 0.0) for h in history]))
        if history else None,
        "train_items_per_epoch": len(train_ds), "device": str(device),
        "task": task,
    }
    if task.get("type") == "binary":
        metrics["val_binary"] = val.get("binary")
        metrics["test_binary"] = test["binary"] if test else None
    if test is not None:
        metrics["test_per_class_accuracy"] = test["per_class_accuracy"]
        metrics["test_confusion_matrix"] = test["confusion_matrix"]
    if dist.world > 1:
        import torch.distributed as tdist
        tdist.barrier()      # every rank has read best.safetensors before rank 0 rewrites it
    if dist.main:
        save_checkpoint(out / "best.safetensors", model, ckpt_meta({k: v for k, v in metrics.items()
                                                                      if not k.startswith("test_confusion")}))
        atomic_write(out / "metrics.json", lambda t: Path(t).write_text(json.dumps(metrics, indent=1)))
        if val_ds is not None:     # the validation fold's predictions: out-of-fold ones in cross-validation
            from training.results import write_predictions
            write_predictions(out / "val_predictions.csv", val_ds.names, *val_rows)
        if history:
            plot_history(history, out / "curves.png", metrics["model"])
        val_txt = f"val acc {val['accuracy']:.4f}" if val_ds is not None else "no validation split"
        print(f"{'best' if val_ds is not None else 'last'} epoch {best['epoch']}: {val_txt}"
              + (f" | test acc {test['accuracy']:.4f} (n={test['n']})" if test else ""), flush=True)
    return metrics
