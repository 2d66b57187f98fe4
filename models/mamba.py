"""Mamba (S6) classifier for log-mel input: mamba-ssm CUDA kernels when present, pure PyTorch elsewhere.

* :class:`Mamba` is one Mamba block with the parameter names, shapes and initialisation of
  ``mamba_ssm.Mamba`` (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``,
  ``out_proj``), so state dicts move between a CUDA run and a CPU run. With ``bidirectional=True``
  it adds the Vim/AuM "v2" backward branch (``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_log_b``,
  ``D_b``) that scans the time-reversed sequence and shares ``in_proj`` / ``out_proj``.
* :class:`MambaClassifier` is a MixerModel-style backbone: an input projection from (optionally
  ``frame_stack`` concatenated) mel frames, pre-norm residual blocks with RMSNorm and the residual
  stream kept in float32, a final RMSNorm, mean pooling over time and a linear head.

Backend, chosen per call: CUDA tensors and an importable
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` use the CUDA kernel (plus
``causal_conv1d_fn`` when the ``causal_conv1d`` package imports); everything else uses
:func:`models.selective_scan.selective_scan`. The optional packages are imported lazily, the first
time a CUDA tensor arrives, and any exception while importing them (ImportError, RuntimeError, a
broken Triton...) just disables the fast path.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register
from models.selective_scan import selective_scan
from models.stems import build_tokenizer

__all__ = ["Mamba", "MambaBlock", "MambaClassifier", "cuda_kernels"]

_CUDA_KERNELS: Optional[dict] = None


def cuda_kernels() -> dict:
    """``{"selective_scan_fn": fn or None, "causal_conv1d_fn": fn or None}``, imported once."""
    global _CUDA_KERNELS
    if _CUDA_KERNELS is None:
        found = {"selective_scan_fn": None, "causal_conv1d_fn": None}
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
            found["selective_scan_fn"] = selective_scan_fn
        except Exception as e:  # ImportError, RuntimeError (no selective_scan_cuda), Triton errors...
            warnings.warn(f"mamba_ssm selective_scan_fn unavailable ({type(e).__name__}: {e}); "
                          "using the pure-PyTorch scan", RuntimeWarning, stacklevel=2)
        try:
            from causal_conv1d import causal_conv1d_fn
            found["causal_conv1d_fn"] = causal_conv1d_fn
        except Exception:
            pass
        _CUDA_KERNELS = found
    return _CUDA_KERNELS


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors; float32/float64 tensors unchanged (float64 for tests)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _no_weight_decay(p: nn.Parameter) -> nn.Parameter:
    p._optim = {"weight_decay": 0.0}
    p._no_weight_decay = True  # the attribute mamba_ssm itself sets
    return p


class Mamba(nn.Module):
    """One Mamba (S6) mixer, ``(B, L, d_model) -> (B, L, d_model)``; see the module docstring.

    ``backend``: ``"auto"`` (CUDA kernels for CUDA tensors when importable), ``"torch"`` (always the
    pure-PyTorch scan) or ``"cuda"`` (require the kernels).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank="auto", dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random",
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, conv_bias: bool = True,
                 bias: bool = False, bidirectional: bool = False, backend: str = "auto",
                 layer_idx: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.bidirectional = bidirectional
        self.backend = backend
        self.layer_idx = layer_idx
        self._init = dict(dt_min=dt_min, dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale,
                          dt_init_floor=dt_init_floor)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **fk)
        self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D = self._make_branch(conv_bias, fk)
        if bidirectional:
            self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_log_b, self.D_b = self._make_branch(conv_bias, fk)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)

    def _make_branch(self, conv_bias, fk):
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        conv1d = nn.Conv1d(E, E, kernel_size=self.d_conv, groups=E, padding=self.d_conv - 1,
                           bias=conv_bias, **fk)
        x_proj = nn.Linear(E, R + 2 * N, bias=False, **fk)
        dt_proj = nn.Linear(R, E, bias=True, **fk)
        # dt_proj: weight keeps the scale of the rank-R input, bias = softplus^{-1}(dt) with
        # dt log-uniform in [dt_min, dt_max] (floored), as in mamba_ssm
        init = self._init
        std = R ** -0.5 * init["dt_scale"]
        with torch.no_grad():
            if init["dt_init"] == "constant":
                dt_proj.weight.fill_(std)
            elif init["dt_init"] == "random":
                dt_proj.weight.uniform_(-std, std)
            else:
                raise ValueError(f"dt_init must be 'constant' or 'random', got {init['dt_init']!r}")
            dt = torch.exp(torch.rand(E, **fk) * (math.log(init["dt_max"]) - math.log(init["dt_min"]))
                           + math.log(init["dt_min"])).clamp(min=init["dt_init_floor"])
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        dt_proj.bias._no_reinit = True
        # S4D-real init: A = -[1, ..., N] for every channel
        A = torch.arange(1, N + 1, dtype=torch.float32, device=fk["device"]).repeat(E, 1)
        A_log = _no_weight_decay(nn.Parameter(torch.log(A)))
        D = _no_weight_decay(nn.Parameter(torch.ones(E, device=fk["device"])))
        return conv1d, x_proj, dt_proj, A_log, D

    # ---------------------------------------------------------------------------------------
    def _use_cuda(self, x: torch.Tensor) -> bool:
        if self.backend == "torch":
            return False
        if self.backend == "cuda":
            if not x.is_cuda or cuda_kernels()["selective_scan_fn"] is None:
                raise RuntimeError("backend='cuda' needs CUDA tensors and an importable mamba_ssm")
            return True
        return x.is_cuda and cuda_kernels()["selective_scan_fn"] is not None

    def _scan_branch(self, x, z, conv1d, x_proj, dt_proj, A_log, D, use_cuda: bool):
        """x, z: (B, E, L) -> y: (B, E, L) = S6(silu(conv(x))) gated by silu(z)."""
        L = x.shape[-1]
        conv_fn = cuda_kernels()["causal_conv1d_fn"] if use_cuda else None
        if conv_fn is not None:
            x = conv_fn(x.contiguous(), conv1d.weight.squeeze(1), conv1d.bias, activation="silu")
        else:
            x = F.silu(conv1d(x)[..., :L])
        x_dbl = x_proj(x.transpose(1, 2))                      # (B, L, R + 2N)
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ dt_proj.weight.t()).transpose(1, 2)         # (B, E, L), bias added in the scan
        Bm = Bm.transpose(1, 2).contiguous()                   # (B, N, L)
        Cm = Cm.transpose(1, 2).contiguous()
        A = -torch.exp(_fp32(A_log))                          # (E, N)
        scan = cuda_kernels()["selective_scan_fn"] if use_cuda else selective_scan
        return scan(x.contiguous(), dt.contiguous(), A, Bm, Cm, _fp32(D), z=z.contiguous(),
                    delta_bias=_fp32(dt_proj.bias), delta_softplus=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        use_cuda = self._use_cuda(hidden_states)
        xz = self.in_proj(hidden_states)                       # (B, L, 2E)
        x, z = xz.transpose(1, 2).chunk(2, dim=1)              # (B, E, L) each
        y = self._scan_branch(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, use_cuda)
        if self.bidirectional:
            y_b = self._scan_branch(x.flip(-1), z.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b,
                                    self.A_log_b, self.D_b, use_cuda)
            y = (y + y_b.flip(-1)) * 0.5                       # Vim "v2" with if_devide_out
        return self.out_proj(y.transpose(1, 2).to(hidden_states.dtype))


class MambaBlock(nn.Module):
    """Pre-norm residual block as in mamba_ssm's ``Block``: returns ``(mixer(norm(residual)), residual)``
    with ``residual = hidden + residual`` (kept in float32 when ``residual_in_fp32``)."""

    def __init__(self, d_model: int, mixer: nn.Module, norm_eps: float = 1e-5, residual_in_fp32: bool = True):
        super().__init__()
        self.mixer = mixer
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor] = None):
        residual = hidden if residual is None else hidden + residual
        if self.residual_in_fp32:
            residual = _fp32(residual)
        hidden = self.mixer(self.norm(residual.to(self.norm.weight.dtype)))
        return hidden, residual


def _init_mixer_weights(model: nn.Module, n_layer: int, n_residuals_per_layer: int = 1) -> None:
    """mamba_ssm's MixerModel init: zero Linear biases (except dt_proj's), and out_proj weights
    kaiming-uniform scaled by 1/sqrt(n_residuals_per_layer * n_layer)."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is not None \
                and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
        if isinstance(module, Mamba):
            w = module.out_proj.weight
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            with torch.no_grad():
                w /= math.sqrt(n_residuals_per_layer * n_layer)


_PRESETS = {
    "tiny": {"d_model": 16, "n_layers": 2, "d_state": 4, "stem_channels": [4, 8, 8]},
    "gpu": {"d_model": 192, "n_layers": 8, "d_state": 16, "stem_channels": [32, 64, 128],
            "bidirectional": True, "dropout": 0.2},
}


@register("mamba", presets=_PRESETS,
          train_defaults={"lr": 1.5e-3, "weight_decay": 0.05, "epochs": 60, "warmup_frac": 0.05,
                          "grad_clip": 1.0},
          cpu_bf16_inference=False)   # the fp32 scan dominates batch 1: bf16 measured slower there
class MambaClassifier(nn.Module):
    """Log-mels ``[B, n_frames, n_mels]`` -> logits ``[B, num_classes]``.

    ``frame_stack`` k merges k consecutive frames into one token (the sequence is zero-padded to a
    multiple of k), which cuts the scan length, and the cost, by k. ``bidirectional`` adds the
    Vim/AuM backward branch in every block. ``backend`` is passed to every :class:`Mamba`.
    ``stem="conv"`` (default) tokenises with the convolutional front end of ``models/stems.py``
    (it halves time itself, and refuses a ``frame_stack`` other than 1); ``stem="linear"`` projects
    each stacked frame (``frame_stack`` default 2), the original Mamba/Vim tokeniser (much weaker on
    ESC-50: README, ablations).
    """

    def __init__(self, num_classes: int = 50, n_mels: int = 128, n_frames: int = 155,
                 d_model: int = 64, n_layers: int = 4, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, dt_rank="auto", frame_stack: int | None = None, bidirectional: bool = True,
                 dropout: float = 0.1, norm_eps: float = 1e-5, residual_in_fp32: bool = True,
                 backend: str = "auto", stem: str = "conv", stem_channels=None, stem_pools=None):
        super().__init__()
        if stem != "linear" and frame_stack not in (None, 1):
            raise ValueError(f"frame_stack={frame_stack} applies to stem='linear' only (the {stem} stem "
                             "sets its own time stride)")
        self.frame_stack = int(frame_stack or (2 if stem == "linear" else 1))
        self.n_mels, self.n_frames = n_mels, n_frames
        self.embed = build_tokenizer(stem, n_mels, d_model, self.frame_stack, stem_channels, stem_pools)
        self.layers = nn.ModuleList([
            MambaBlock(d_model, Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                                      bidirectional=bidirectional, backend=backend, layer_idx=i),
                       norm_eps=norm_eps, residual_in_fp32=residual_in_fp32)
            for i in range(n_layers)
        ])
        self.norm_f = nn.RMSNorm(d_model, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, num_classes)
        _init_mixer_weights(self, n_layers)

    def set_backend(self, backend: str) -> None:
        for m in self.modules():
            if isinstance(m, Mamba):
                m.backend = backend

    def forward_features(self, x: torch.Tensor, pool: bool = True) -> torch.Tensor:
        """Normalised per-token features ``[B, L', d_model]``, or their mean ``[B, d_model]``."""
        hidden = self.embed(x)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        residual = hidden + residual if residual is not None else hidden
        h = self.norm_f(residual.to(self.norm_f.weight.dtype))
        return h.mean(1) if pool else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))
