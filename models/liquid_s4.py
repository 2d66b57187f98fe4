"""Liquid-S4 classifier for log-mel clips, pure PyTorch (registered as ``liquid_s4``).

Architecture (default, CPU-friendly): the convolutional stem of ``models/stems.py`` (conv blocks,
time halved: 155 frames -> 77 tokens of width 128; ``stem="linear"``: ``Linear(n_mels -> 128)`` per
frame) -> 4 x [LayerNorm -> S4 layer -> dropout -> residual] -> LayerNorm -> mean over time ->
``Linear(128 -> num_classes)``. The S4
layer is ``y = K * u + D u (+ liquid terms)`` -> GELU -> dropout -> ``Linear(H -> 2H)`` -> GLU,
where ``K`` is the SSM convolution kernel (``models/s4_kernels.py``: S4D/Vandermonde or
NPLR-HiPPO-LegS/Cauchy+Woodbury, bilinear or ZOH) and ``*`` is an FFT convolution zero-padded to
``n >= 2L - 1`` (linear, never circular). ``liquid_kernel=None`` gives plain S4 (the ablation).
Activations stay in ``(B, L, H)`` layout throughout; the FFTs run along dim -2.

Liquid terms (linearised LTC ``x_k = (dA + dB u_k 1^T) x_{k-1} + dB u_k``), order p = 2..P
(``liquid_degree``):

* **Correlation signal** ``u^(p)`` (B, L, H). ``allcombs=True`` (reference default): with
  ``n_p = min{n : C(n, p) >= L}`` (n_2 = 19, n_3 = 11 at L = 155), the last L lexicographic
  p-tuples of the last n_p time steps, ``u~_t = prod_j u[idx[t, j]]``, zero-padded to L.
  ``allcombs=False``: ``u^(p)_t = u^(p-1)_t u^(p-1)_{t-1}`` (``u^(1) = u``; zero before t=0).
  Optional squashing ``lcontract`` in {None, "tanh", "lecun" (1.7159 tanh(0.666 x))}.
* **PolyB** (``"polyb"``, default; dA -> I makes the liquid kernel a constant):
  ``y_t += kappa^(p) u^(p)_t`` with ``kappa^(p) = (C dB) s^(2^(p-1) - 1)``, ``s = sum_n dB_n``
  over the conjugate-doubled state (``dB`` of the layer's discretisation; the reference always uses
  the bilinear formula, our default discretisation). ``C dB`` is taken as ``K_0``, the first tap of the live kernel,
  which for S4D is exactly the reference's ``sum_n C_n dB_n`` and for NPLR is the true ``C dB``
  with the un-tilded ``C`` and the low-rank part included. ``s`` uses the diagonal part
  (Lambda, B) only, as the reference does (for NPLR it ignores P). The exponent 2^(p-1) - 1
  reproduces the reference for p >= 3 (a rank-1 unrolling would give s^(p-1); they agree at p=2).
* **KB** (``"kb"``): ``k^(p) = K s^(p-1)`` convolved with ``u^(p)``. Default ``kb_exact=True``:
  an exact causal linear convolution; since every ``k^(p)`` is ``K`` times a per-channel scalar it
  is computed as a single convolution ``K * (u + sum_p s^(p-1) u^(p))``, so KB costs little more
  than plain S4. ``kb_exact=False`` reproduces the reference: ``rfft(u^(p), 2L)`` multiplied by
  ``fft(k^(p), n=L+1)``, two different frequency grids, so it is not a convolution at all (it
  mixes the sequence circularly); kept only for comparison.
* **Live coefficients.** ``s`` and ``kappa`` are computed every forward from the trained
  parameters (``log_dt``, Lambda, B, C), so they receive gradients and are restored from the
  state dict with them. The reference reads stale, untrained copies and gets no gradient;
  ``liquid_detach=True`` mimics the no-gradient part (PolyB: ``kappa`` detached; KB: ``s``
  detached while ``K`` stays live, as in the reference), though the values remain live.

Causal vs non-causal (decided deliberately). The reference flips the correlation signal in time
(``u_corr = flip_t(lcontract(u^(p)))``): with allcombs this puts the products of the *last* frames
at the *start* of the sequence, so every output depends on the end of the clip and the layer is
not causal (``S4.step`` in the reference simply ignores the liquid terms). For clip
classification with mean pooling over all frames causality buys nothing: nothing is streamed and
every frame's features reach the same pooled vector, so we keep the reference behaviour as the
default (``liquid_causal=False``), which makes the comparison with the published Liquid-S4
meaningful. ``liquid_causal=True`` drops the flip and is only allowed with ``allcombs=False``
(allcombs draws every product from the last n_p frames, which cannot be causal) and, for KB, with
the exact convolution (the reference grid wraps around). In that mode the layer is strictly
causal, and with PolyB at p = 2 the term ``kappa u_t u_{t-1}`` is exactly the second-order term of
the unrolled LTC recurrence with dA -> I.

Optimiser recipe: Lambda (``inv_w_real``, ``w_imag``), ``B``, ``P`` and ``log_dt`` carry
``_optim = {"lr": ssm_lr, "weight_decay": 0.0}``; C, D and the linear layers use the base lr/wd
(D and biases are 1-D, so the engine gives them no weight decay).
"""
from __future__ import annotations

import functools
import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register
from models.s4_kernels import SSMKernel, fft_conv
from models.stems import build_tokenizer

__all__ = ["LiquidS4Classifier", "S4Layer", "S4Block", "allcombs_window", "allcombs_indices",
           "correlation_signals"]


# ----------------------------------------------------------------------------------------------
# Correlation signal
# ----------------------------------------------------------------------------------------------
def allcombs_window(L: int, p: int) -> int:
    """n_p = min{n : C(n, p) >= L} (capped at L)."""
    for n in range(p, L + 1):
        if math.comb(n, p) >= L:
            return n
    return L


@functools.lru_cache(maxsize=64)
def allcombs_indices(L: int, p: int) -> torch.Tensor:
    """(m, p) time indices, m = min(L, C(n_p, p)): the last L lexicographic p-tuples drawn from
    the last n_p time steps."""
    n = allcombs_window(L, p)
    combs = list(itertools.combinations(range(L - n, L), p))[-L:]
    if not combs:
        return torch.zeros(0, p, dtype=torch.long)
    return torch.tensor(combs, dtype=torch.long)


def _lecun(x: torch.Tensor) -> torch.Tensor:
    return 1.7159 * torch.tanh(0.666 * x)


_LCONTRACT = {None: None, "none": None, "tanh": torch.tanh, "lecun": _lecun}


def correlation_signals(u: torch.Tensor, degree: int, allcombs: bool = True,
                        lcontract: str | None = None, flip: bool = True) -> list[torch.Tensor]:
    """Correlation signals u^(p) for p = 2..degree, each shaped like u (..., L, H) (time on -2)."""
    L = u.shape[-2]
    squash = _LCONTRACT[lcontract]
    out, us = [], u
    for p in range(2, degree + 1):
        if allcombs:
            idx = allcombs_indices(L, p).to(u.device)
            us = u.index_select(-2, idx[:, 0])
            for j in range(1, p):
                us = us * u.index_select(-2, idx[:, j])
            if us.shape[-2] < L:
                us = F.pad(us, (0, 0, 0, L - us.shape[-2]))
        else:
            us = us * F.pad(us[..., :-1, :], (0, 0, 1, 0))
        c = squash(us) if squash is not None else us
        out.append(c.flip(-2) if flip else c)
    return out


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
class S4Layer(nn.Module):
    """S4 / Liquid-S4 layer on (B, L, H): SSM convolution + D skip (+ liquid) -> GELU -> dropout
    -> Linear -> GLU."""

    def __init__(self, d_model: int, d_state: int = 64, l_max: int | None = None,
                 mode: str = "diag", init: str = "diag-lin", disc: str = "bilinear",
                 n_ssm: int | None = None, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 ssm_lr: float | None = 1e-3, dropout: float = 0.0, activation: str = "gelu",
                 postact: str | None = "glu", liquid_kernel: str | None = "polyb",
                 liquid_degree: int = 2, allcombs: bool = True, lcontract: str | None = None,
                 liquid_causal: bool = False, kb_exact: bool = True, liquid_detach: bool = False):
        super().__init__()
        if liquid_kernel in ("none", "None", ""):
            liquid_kernel = None
        if liquid_kernel not in (None, "polyb", "kb"):
            raise ValueError(f"liquid_kernel must be None, 'polyb' or 'kb', got {liquid_kernel!r}")
        if int(liquid_degree) < 2:
            raise ValueError(f"liquid_degree must be >= 2, got {liquid_degree}")
        if lcontract not in _LCONTRACT:
            raise ValueError(f"lcontract must be None, 'tanh' or 'lecun', got {lcontract!r}")
        if liquid_causal and allcombs and liquid_kernel is not None:
            raise ValueError("liquid_causal=True needs allcombs=False (allcombs is never causal)")
        if liquid_causal and liquid_kernel == "kb" and not kb_exact:
            raise ValueError("liquid_causal=True needs kb_exact=True (the reference grid wraps)")
        self.H = d_model
        self.liquid_kernel = liquid_kernel
        self.liquid_degree = int(liquid_degree)
        self.allcombs = bool(allcombs)
        self.lcontract = lcontract
        self.liquid_causal = bool(liquid_causal)
        self.kb_exact = bool(kb_exact)
        self.liquid_detach = bool(liquid_detach)

        self.kernel = SSMKernel(d_model, d_state, mode=mode, init=init, disc=disc, n_ssm=n_ssm,
                                dt_min=dt_min, dt_max=dt_max, l_max=l_max, ssm_lr=ssm_lr)
        self.D = nn.Parameter(torch.randn(d_model))
        if activation == "gelu":
            self.activation = nn.GELU()
        elif activation in ("silu", "swish"):
            self.activation = nn.SiLU()
        elif activation in (None, "id", "identity"):
            self.activation = nn.Identity()
        else:
            raise ValueError(f"unknown activation {activation!r}")
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.glu = postact == "glu"
        if postact not in (None, "glu"):
            raise ValueError(f"postact must be 'glu' or None, got {postact!r}")
        self.output_linear = nn.Linear(d_model, 2 * d_model if self.glu else d_model)

    # -- liquid coefficients (live) ---------------------------------------------------------------
    def liquid_s(self) -> torch.Tensor:
        """s = sum_n dB_n over the conjugate-doubled diagonal state, (H,) real."""
        _, dB, _ = self.kernel.discrete_diag()
        s = 2 * dB.sum(-1).real
        return s.detach() if self.liquid_detach else s

    def polyb_coefficients(self, K0: torch.Tensor | None = None) -> list[torch.Tensor]:
        """kappa^(p) = (C dB) s^(2^(p-1)-1) for p = 2..P, each (H,). K0 = C dB (kernel tap 0)."""
        if K0 is None:
            K0 = self.kernel(1)[:, 0]
        s = self.liquid_s()
        if self.liquid_detach:
            K0 = K0.detach()
        return [K0 * s ** (2 ** (p - 1) - 1) for p in range(2, self.liquid_degree + 1)]

    def correlation(self, u: torch.Tensor) -> list[torch.Tensor]:
        return correlation_signals(u, self.liquid_degree, self.allcombs, self.lcontract,
                                   flip=not self.liquid_causal)

    # -- forward ------------------------------------------------------------------------------------
    def ssm(self, u: torch.Tensor) -> torch.Tensor:
        """The linear(-plus-liquid) SSM part: (B, L, H) -> (B, L, H), before the activation.

        Never in half precision: under bf16 autocast a half-precision input is cast to fp32 at this
        boundary and the kernel, the FFT convolution and the liquid terms run with autocast disabled."""
        with torch.autocast(u.device.type, enabled=False):
            return self._ssm(u.float() if u.dtype in (torch.float16, torch.bfloat16) else u)

    def _ssm(self, u: torch.Tensor) -> torch.Tensor:
        L = u.shape[-2]
        K = self.kernel(L)  # (H, L)
        Kt = K.transpose(0, 1)
        lk = self.liquid_kernel
        corr = self.correlation(u) if lk is not None else []
        if lk == "kb":
            s = self.liquid_s()
            if self.kb_exact:
                u_eff = u
                for i, c in enumerate(corr):  # p = i + 2: k^(p) = K s^(p-1)
                    u_eff = u_eff + s ** (i + 1) * c
                y = fft_conv(u_eff, Kt)
            else:
                y = self._kb_reference(u, Kt, s, corr)
        else:
            y = fft_conv(u, Kt)
        y = y + self.D * u
        if lk == "polyb":
            for kap, c in zip(self.polyb_coefficients(K[:, 0]), corr):
                y = y + kap * c
        return y

    @staticmethod
    def _kb_reference(u, Kt, s, corr):
        """The reference's KB: u and u^(p) on a 2L-point rfft grid, k^(p) on an (L+1)-point fft."""
        L = u.shape[-2]
        n = 2 * L
        Yf = torch.fft.rfft(u, n=n, dim=-2) * torch.fft.rfft(Kt, n=n, dim=-2)
        for i, c in enumerate(corr):
            kbf = torch.fft.fft(Kt * s ** (i + 1), n=L + 1, dim=-2)
            Yf = Yf + torch.fft.rfft(c, n=n, dim=-2) * kbf
        return torch.fft.irfft(Yf, n=n, dim=-2)[..., :L, :]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        y = self.dropout(self.activation(self.ssm(u)))
        y = self.output_linear(y)
        return F.glu(y, dim=-1) if self.glu else y


class S4Block(nn.Module):
    """Pre-norm residual block: x + dropout(S4Layer(LayerNorm(x)))."""

    def __init__(self, d_model: int, dropout: float = 0.0, **layer_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.layer = S4Layer(d_model, dropout=dropout, **layer_kwargs)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.layer(self.norm(x)))


# ----------------------------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------------------------
@register(
    "liquid_s4",
    presets={
        "tiny": {"d_model": 32, "n_layers": 2, "d_state": 16, "dropout": 0.0, "stem_channels": [4, 8, 8]},
        "gpu": {"d_model": 256, "n_layers": 6, "d_state": 64, "mode": "nplr", "dropout": 0.2,
                "stem_channels": [32, 64, 128]},
    },
    train_defaults={"lr": 4e-3, "weight_decay": 0.05, "epochs": 60, "batch_size": 32,
                    "warmup_frac": 0.05, "label_smoothing": 0.1},
)
class LiquidS4Classifier(nn.Module):
    """[B, n_frames, n_mels] normalised log-mel -> [B, num_classes] logits.

    Default (CPU) config: d_model 128, 4 layers, S4D (diag-lin, bilinear) N=64, GELU+GLU,
    dropout 0.1, PolyB liquid term of degree 2 with allcombs.
    ``liquid_kernel=None`` gives plain S4 of exactly the same size. The default ``stem="conv"``
    puts the convolutional front end of ``models/stems.py`` before the S4 blocks (time halved:
    L = 77; about 0.33 M parameters in all); ``stem="linear"`` is the original per-frame Linear
    encoder (L = 155, 0.26 M; much weaker on ESC-50: README, ablations).
    """

    def __init__(self, num_classes: int = 50, n_mels: int = 128, n_frames: int = 155,
                 d_model: int = 128, n_layers: int = 4, d_state: int = 64, mode: str = "diag",
                 init: str = "diag-lin", disc: str = "bilinear", n_ssm: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, ssm_lr: float | None = 1e-3,
                 dropout: float = 0.1, activation: str = "gelu", postact: str | None = "glu",
                 liquid_kernel: str | None = "polyb", liquid_degree: int = 2,
                 allcombs: bool = True, lcontract: str | None = None, liquid_causal: bool = False,
                 kb_exact: bool = True, liquid_detach: bool = False, l_max: int | None = None,
                 stem: str = "conv", stem_channels=None, stem_pools=None):
        super().__init__()
        self.encoder = build_tokenizer(stem, n_mels, d_model, 1, stem_channels, stem_pools)
        layer_kwargs = dict(
            d_state=d_state, l_max=l_max or self.encoder.out_len(n_frames), mode=mode, init=init, disc=disc,
            n_ssm=n_ssm, dt_min=dt_min, dt_max=dt_max, ssm_lr=ssm_lr, activation=activation,
            postact=postact, liquid_kernel=liquid_kernel, liquid_degree=liquid_degree,
            allcombs=allcombs, lcontract=lcontract, liquid_causal=liquid_causal,
            kb_exact=kb_exact, liquid_detach=liquid_detach)
        self.blocks = nn.ModuleList(S4Block(d_model, dropout=dropout, **layer_kwargs)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.norm(h).mean(dim=1))
