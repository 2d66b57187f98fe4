"""V-JEPA2-style Vision Transformer over spectrogram tubelets, with an attentive-probe classifier.

Registered as ``vjepa2`` (see :mod:`models`). Self-supervised JEPA pretraining of the encoder lives
in :mod:`training.jepa`; a pretrained encoder is loaded with ``init_from=PATH``.

Token grid and tubelet layout
-----------------------------
Input features are normalised log-mels ``x[B, n_frames, n_mels]`` (``[B, 155, 128]`` for ESC-50).
A tubelet is a ``patch_t x patch_f`` (frames x mel bins) tile; the default ``8 x 16`` gives, for
ESC-50, ``grid_t x grid_f = 19 x 8 = 152`` tokens with 128 values each
(:func:`tokens_grid` computes the grid for any input size; the lead can reuse it):

* **Crop:** only ``grid_t * patch_t`` frames (152 of 155) and ``grid_f * patch_f`` mel bins are used.
  In eval the crop is centred (frames ``1 .. 152`` for ESC-50); in training the frame offset is drawn
  uniformly per sample from ``0 .. n_frames - grid_t*patch_t`` (a jitter of up to 3 frames).
  Mel bins, if not divisible, are always centre-cropped.
* **Token order:** t-major. Token ``n = t * grid_f + f`` covers frames
  ``[off + t*patch_t, off + (t+1)*patch_t)`` and mel bins ``[f*patch_f, (f+1)*patch_f)``.
* **Values inside a token:** frame-major, ``v = i * patch_f + j`` for frame ``i`` and mel bin ``j``
  of the tile, i.e. ``einops.rearrange(x, "b (gt pt) (gf pf) -> b (gt gf) (pt pf)")``.
* **Pre-tubeletised input:** the model also accepts ``x[B, grid_t*grid_f, patch_t*patch_f]`` in exactly
  this layout (already cropped; no jitter is applied). Such input is recognised by its shape, or
  forced with ``model(x, tubelets=True)``. :func:`tubeletise` produces it.
* **Full-band option:** ``patch_f=None`` (or ``patch_f=n_mels``) gives full-band ``8 x 128`` tubelets,
  i.e. a ``19 x 1`` grid of 19 tokens (cheap; an ablation, JEPA masking becomes 1-D).

The tubelet embedding is ``Linear(patch_t*patch_f -> D)`` on that layout, which is the same map as
``Conv2d(1, D, kernel_size=stride=(patch_t, patch_f))`` with ``weight.view(D, patch_t*patch_f)``
(checked in tests).

Positions
---------
``pos="sincos"`` (default): fixed 2-D sin-cos, the first ``D/2`` channels encode the time index, the
last ``D/2`` the mel-band index (each half ``[sin, cos]`` at ``D/4`` frequencies), added after the
embedding. ``pos="rope"``: 2-axis rotary embedding inside attention (the head dim is split in two
halves, time and frequency, each rotated by its token index; ``repeat_interleave`` pairing). Both
take positions from token *indices*, so they survive masking.

Blocks and head
---------------
Encoder blocks are timm ``Block``s (pre-LN eps 1e-6, MHSA with qkv bias through SDPA, MLP 4x GELU,
stochastic depth rising linearly to ``drop_path``); with RoPE a small block with the same structure
is used. Init: trunc-normal(0.02), zero biases, ``attn.proj`` / ``mlp.fc2`` rescaled by
``1/sqrt(2*layer_id)`` as in V-JEPA2.

:class:`AttentiveClassifier`: ``probe_depth - 1`` self-attention blocks on the tokens, then a
cross-attention block with one learned query (``q = q + XAttn(q, LN(x)); q = q + MLP(LN(q))``; the
cross-attention has q and kv projections and no output projection), then ``Linear(D, C)``. It is
invariant to the order of the tokens.
"""
from __future__ import annotations

import json
import math
import os
from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models.vision_transformer import Block

from models import register
from models.stems import CONV_STEM_CHANNELS, conv_blocks, pool_pair

__all__ = [
    "TokenGrid", "tokens_grid", "tubeletise", "sincos_pos_embed_2d", "SpecViTEncoder",
    "AttentivePooler", "AttentiveClassifier", "VJEPA2Classifier", "ENCODER_KEYS",
    "load_encoder_state", "save_encoder",
]

# constructor arguments that define the encoder (must match between JEPA checkpoint and classifier)
ENCODER_KEYS = ("n_frames", "n_mels", "patch_t", "patch_f", "embed_dim", "depth", "num_heads",
                "mlp_ratio", "pos", "stem", "stem_channels", "stem_pools")
# the conv stem's pooling (time, frequency) per block: 8x in both axes (encoder files without the key have it)
VIT_STEM_POOLS = ((2, 2), (2, 2), (2, 2))


# ----------------------------------------------------------------------------------------------
# token grid / tubelets
# ----------------------------------------------------------------------------------------------
class TokenGrid(NamedTuple):
    grid_t: int        # tokens along time
    grid_f: int        # tokens along mel frequency
    n_tokens: int      # grid_t * grid_f
    patch_t: int       # frames per tubelet
    patch_f: int       # mel bins per tubelet
    frames_used: int   # grid_t * patch_t (frames kept by the crop)
    mels_used: int     # grid_f * patch_f
    mel_offset: int    # first mel bin kept (centre crop)


def tokens_grid(n_frames: int, n_mels: int, patch_t: int = 8, patch_f: int | None = 16) -> TokenGrid:
    """Token grid for ``[n_frames, n_mels]`` features and ``patch_t x patch_f`` tubelets.

    ``patch_f=None`` (or ``>= n_mels``) means full-band tubelets. Frames/mels that do not fill a
    whole tubelet are cropped. ``tokens_grid(155, 128, 8, 16)`` -> 19 x 8 = 152 tokens of 128 values.
    """
    if patch_f is None or patch_f <= 0 or patch_f >= n_mels:
        patch_f = n_mels
    if patch_t > n_frames:
        raise ValueError(f"patch_t={patch_t} exceeds n_frames={n_frames}")
    gt, gf = n_frames // patch_t, n_mels // patch_f
    mels_used = gf * patch_f
    return TokenGrid(gt, gf, gt * gf, patch_t, patch_f, gt * patch_t, mels_used, (n_mels - mels_used) // 2)


def tubeletise(x: torch.Tensor, grid: TokenGrid, frame_offset: int | torch.Tensor | None = None) -> torch.Tensor:
    """``x[B, n_frames, n_mels]`` -> tubelets ``[B, n_tokens, patch_t*patch_f]`` (layout: module doc).

    ``frame_offset``: ``None`` = centre crop; an int, or a LongTensor ``[B]`` of per-sample offsets.
    """
    B, T, M = x.shape
    slack = T - grid.frames_used
    if frame_offset is None:
        frame_offset = slack // 2
    if isinstance(frame_offset, torch.Tensor):
        idx = frame_offset.to(x.device).view(B, 1) + torch.arange(grid.frames_used, device=x.device)
        x = x.gather(1, idx.unsqueeze(-1).expand(B, grid.frames_used, M))
    else:
        x = x[:, frame_offset:frame_offset + grid.frames_used]
    x = x[:, :, grid.mel_offset:grid.mel_offset + grid.mels_used]
    return rearrange(x, "b (gt pt) (gf pf) -> b (gt gf) (pt pf)", pt=grid.patch_t, pf=grid.patch_f)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    out = pos.double()[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid_t: int, grid_f: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions ``[grid_t*grid_f, dim]`` in t-major order: ``dim/2`` channels
    for time, ``dim/2`` for frequency."""
    if dim % 4:
        raise ValueError("sincos positions need embed_dim divisible by 4")
    t, f = torch.meshgrid(torch.arange(grid_t), torch.arange(grid_f), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, t.reshape(-1)), _sincos_1d(dim // 2, f.reshape(-1))], dim=1)
    return emb.float()


# ----------------------------------------------------------------------------------------------
# 2-axis RoPE (option)
# ----------------------------------------------------------------------------------------------
def rope_2d_angles(head_dim: int, grid: TokenGrid, theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles ``[n_tokens, head_dim/2]``: the first half of the rotated pairs follow the time
    index, the second half the frequency index (pairs are adjacent channels: (0,1), (2,3), ...)."""
    if head_dim % 4:
        raise ValueError("2-axis RoPE needs head_dim divisible by 4")
    q = head_dim // 4  # rotated pairs per axis
    freqs = 1.0 / theta ** (torch.arange(q, dtype=torch.float64) / q)
    t, f = torch.meshgrid(torch.arange(grid.grid_t), torch.arange(grid.grid_f), indexing="ij")
    ang = torch.cat([t.reshape(-1, 1) * freqs, f.reshape(-1, 1) * freqs], dim=1)
    return ang.float()


def apply_rope(x: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x[B, H, N, d]`` by ``ang[B or 1, N, d/2]``."""
    cos = ang.cos().repeat_interleave(2, dim=-1).unsqueeze(1)
    sin = ang.sin().repeat_interleave(2, dim=-1).unsqueeze(1)
    x2 = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    return x * cos + x2 * sin


class RopeAttention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, ang):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, ang), apply_rope(k, ang)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class RopeBlock(nn.Module):
    """Pre-LN ViT block whose attention applies 2-axis RoPE (same parameter names as timm Block)."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path=0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = RopeAttention(dim, num_heads, qkv_bias)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, ang):
        x = x + self.drop_path1(self.attn(self.norm1(x), ang))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


# ----------------------------------------------------------------------------------------------
# encoder
# ----------------------------------------------------------------------------------------------
def _init_weights(m: nn.Module):
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        if m.weight is not None:
            nn.init.ones_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _rescale_blocks(blocks):
    for layer_id, blk in enumerate(blocks, start=1):
        blk.attn.proj.weight.data.div_(math.sqrt(2.0 * layer_id))
        blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer_id))


class ConvPatchEmbed(nn.Module):
    """Convolutional tubelet embedding ("early convolutions", Xiao et al. 2021): the tubelets are put
    back into the cropped spectrogram image, three conv3x3-BN-ReLU-maxpool blocks (``models/stems.py``)
    reduce it by ``pools`` (time, frequency) per block, 8x in both axes by default, and a ``Conv2d`` with
    kernel = stride = the tubelet over that reduction gives one ``D``-vector per tubelet. The token grid,
    order and positions are exactly those of the linear embedding, so masking and the probe are unchanged.
    ``pools=((2, 2), (2, 2), (1, 4))`` reduces time 4x only, as the recurrent models' stem does, so that
    4-frame tubelets are possible.
    """

    def __init__(self, grid: TokenGrid, embed_dim: int, channels=CONV_STEM_CHANNELS, pools=VIT_STEM_POOLS):
        super().__init__()
        pools = [pool_pair(p) for p in pools]
        rt, rf = math.prod(p[0] for p in pools), math.prod(p[1] for p in pools)
        if len(channels) != 3 or len(pools) != 3 or grid.patch_t % rt or grid.patch_f % rf:
            raise ValueError(f"conv stem needs 3 channel widths, 3 pools and tubelets divisible by its reduction "
                             f"({rt}x{rf}), got channels {tuple(channels)}, {len(pools)} pools and "
                             f"{grid.patch_t}x{grid.patch_f} tubelets")
        self.grid = grid
        self.convs = conv_blocks(channels, pools)
        kernel = (grid.patch_t // rt, grid.patch_f // rf)
        self.proj = nn.Conv2d(int(channels[-1]), embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, tubelets: torch.Tensor) -> torch.Tensor:
        g = self.grid     # the time extent follows the input (a shorter crop has fewer time rows)
        img = rearrange(tubelets, "b (gt gf) (pt pf) -> b 1 (gt pt) (gf pf)", gf=g.grid_f, pt=g.patch_t)
        return rearrange(self.proj(self.convs(img)), "b d gt gf -> b (gt gf) d")


class SpecViTEncoder(nn.Module):
    """ViT over spectrogram tubelets. ``forward(x, keep_idx=None)`` -> ``[B, K, D]`` token features
    (``K = n_tokens``, or ``keep_idx.shape[1]`` when only the tokens at ``keep_idx[B, K]`` are kept,
    as the JEPA context encoder does; masking happens after the positions are added)."""

    def __init__(self, n_frames=155, n_mels=128, patch_t=8, patch_f=16, embed_dim=192, depth=6,
                 num_heads=3, mlp_ratio=4.0, drop_path=0.0, pos="sincos", jitter=True, stem="linear",
                 stem_channels=CONV_STEM_CHANNELS, stem_pools=VIT_STEM_POOLS):
        super().__init__()
        if pos not in ("sincos", "rope"):
            raise ValueError(f"pos must be 'sincos' or 'rope', got {pos!r}")
        self.grid = tokens_grid(n_frames, n_mels, patch_t, patch_f)
        self.n_frames, self.n_mels = n_frames, n_mels
        self.embed_dim, self.pos, self.jitter = embed_dim, pos, jitter
        self.stem, self.stem_channels = stem, tuple(int(c) for c in stem_channels)
        self.stem_pools = tuple(pool_pair(p) for p in stem_pools)
        if stem == "linear":
            self.patch_embed = nn.Linear(self.grid.patch_t * self.grid.patch_f, embed_dim)
        elif stem == "conv":
            self.patch_embed = ConvPatchEmbed(self.grid, embed_dim, self.stem_channels, self.stem_pools)
        else:
            raise ValueError(f"unknown stem '{stem}'; stems: linear, conv")
        if pos == "sincos":
            self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, self.grid.grid_t, self.grid.grid_f),
                                 persistent=False)
        else:
            self.register_buffer("rope_ang", rope_2d_angles(embed_dim // num_heads, self.grid), persistent=False)
        dpr = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        norm = partial(nn.LayerNorm, eps=1e-6)
        if pos == "sincos":
            self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=d,
                                              norm_layer=norm) for d in dpr)
        else:
            self.blocks = nn.ModuleList(RopeBlock(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=d,
                                                  norm_layer=norm) for d in dpr)
        self.norm = norm(embed_dim)
        self.apply(_init_weights)
        _rescale_blocks(self.blocks)

    # -- input handling ---------------------------------------------------------------------
    def is_tubelets(self, x: torch.Tensor) -> bool:
        g = self.grid
        return (x.dim() == 3 and tuple(x.shape[1:]) == (g.n_tokens, g.patch_t * g.patch_f)
                and tuple(x.shape[1:]) != (self.n_frames, self.n_mels))

    def to_tubelets(self, x: torch.Tensor, tubelets: bool | None = None) -> torch.Tensor:
        """Raw features -> tubelets (random frame jitter in training, centre crop in eval);
        pre-tubeletised input passes through."""
        if tubelets or (tubelets is None and self.is_tubelets(x)):
            return x
        g = self.grid
        if x.dim() != 3 or x.shape[2] != self.n_mels or not g.patch_t <= x.shape[1] <= self.n_frames:
            raise ValueError(f"expected [B, T, {self.n_mels}] features with {g.patch_t} <= T <= {self.n_frames} "
                             f"or [B, {g.n_tokens}, {g.patch_t * g.patch_f}] tubelets, got {tuple(x.shape)}")
        if x.shape[1] != self.n_frames:     # a shorter crop: its own (shorter) grid of time positions
            g = tokens_grid(x.shape[1], self.n_mels, g.patch_t, g.patch_f)
        slack = x.shape[1] - g.frames_used
        off = None
        if self.training and self.jitter and slack > 0:
            off = torch.randint(0, slack + 1, (x.shape[0],), device=x.device)
        return tubeletise(x, g, off)

    def forward(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None,
                tubelets: bool | None = None) -> torch.Tensor:
        x = self.to_tubelets(x, tubelets)
        if keep_idx is not None and self.stem == "conv":
            # the conv stem sees across tubelet borders: blank the hidden tubelets first, so that
            # context tokens carry no information from the JEPA targets
            keep = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device).scatter_(1, keep_idx, 1.0)
            x = x * keep.unsqueeze(-1)
        n = x.shape[1]     # tokens: the full grid, or the first n (time-major) for a shorter crop
        x = self.patch_embed(x)
        if self.pos == "sincos":
            x = x + self.pos_embed[:n].to(x.dtype)
            if keep_idx is not None:
                x = x.gather(1, keep_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            for blk in self.blocks:
                x = blk(x)
        else:
            ang = self.rope_ang[:n].unsqueeze(0)
            if keep_idx is not None:
                x = x.gather(1, keep_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
                ang = self.rope_ang[keep_idx]
            for blk in self.blocks:
                x = blk(x, ang)
        return self.norm(x)


# ----------------------------------------------------------------------------------------------
# attentive probe
# ----------------------------------------------------------------------------------------------
class CrossAttention(nn.Module):
    """Multi-head cross-attention with q and kv projections and no output projection."""

    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)

    def forward(self, q, x):
        B, n, C = q.shape
        h = self.num_heads
        q = self.q(q).view(B, n, h, C // h).transpose(1, 2)
        k, v = self.kv(x).view(B, x.shape[1], 2, h, C // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(B, n, C)


class CrossAttentionBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.xattn = CrossAttention(dim, num_heads, qkv_bias)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, q, x):
        q = q + self.xattn(q, self.norm1(x))
        return q + self.mlp(self.norm2(q))


class AttentivePooler(nn.Module):
    """``depth - 1`` self-attention blocks on the tokens, then one cross-attention block with
    ``num_queries`` learned queries -> ``[B, num_queries, D]``."""

    def __init__(self, dim, num_heads, depth=1, mlp_ratio=4.0, num_queries=1):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                                    for _ in range(max(depth - 1, 0)))
        self.cross_attention_block = CrossAttentionBlock(dim, num_heads, mlp_ratio, norm_layer=norm)
        trunc_normal_(self.query_tokens, std=0.02)
        self.apply(_init_weights)
        _rescale_blocks(self.blocks)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        q = self.query_tokens.expand(x.shape[0], -1, -1)
        return self.cross_attention_block(q, x)


class AttentiveClassifier(nn.Module):
    """Attentive pooler (one query) -> ``Linear(D, num_classes)``."""

    def __init__(self, dim, num_classes, num_heads, depth=1, mlp_ratio=4.0):
        super().__init__()
        self.pooler = AttentivePooler(dim, num_heads, depth, mlp_ratio, num_queries=1)
        self.linear = nn.Linear(dim, num_classes)
        trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return self.linear(self.pooler(x).squeeze(1))


# ----------------------------------------------------------------------------------------------
# encoder checkpoints (no pickle execution)
# ----------------------------------------------------------------------------------------------
def encoder_config(enc: SpecViTEncoder, **extra) -> dict:
    g = enc.grid
    cfg = dict(n_frames=enc.n_frames, n_mels=enc.n_mels, patch_t=g.patch_t,
               patch_f=None if g.grid_f == 1 and g.patch_f == enc.n_mels else g.patch_f,
               embed_dim=enc.embed_dim, depth=len(enc.blocks),
               num_heads=enc.blocks[0].attn.num_heads if len(enc.blocks) else None,
               mlp_ratio=(enc.blocks[0].mlp.fc1.out_features / enc.embed_dim) if len(enc.blocks) else None,
               pos=enc.pos, stem=enc.stem, stem_channels=list(enc.stem_channels),
               stem_pools=[list(p) for p in enc.stem_pools])
    cfg.update(extra)
    return cfg


def save_encoder(enc: SpecViTEncoder, path: str, **meta) -> None:
    """Write the encoder weights to ``path`` (safetensors, with the encoder config as metadata)."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()}
    md = {"format": "vjepa2-encoder", "config": json.dumps(encoder_config(enc))}
    md.update({k: json.dumps(v) for k, v in meta.items()})
    save_file(sd, path, metadata=md)


def load_encoder_state(path: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read encoder weights (and config, if stored) from a safetensors file or a torch checkpoint
    loaded with ``weights_only=True``. Accepts a bare encoder state dict, a dict holding one under
    ``encoder`` / ``model`` / ``state_dict``, and classifier state dicts (``encoder.`` prefix)."""
    cfg = None
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"init_from: encoder checkpoint {path} not found")
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        sd = load_file(path, device="cpu")
        with safe_open(path, framework="pt") as f:
            md = f.metadata() or {}
        if "config" in md:
            cfg = json.loads(md["config"])
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        sd = obj
        if isinstance(obj, dict):
            for key in ("encoder", "model", "state_dict", "model_state"):
                if key in obj and isinstance(obj[key], dict):
                    sd = obj[key]
                    break
            cfg = obj.get("encoder_config") if isinstance(obj.get("encoder_config"), dict) else None
    if any(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith("encoder.") for k in sd):
        sd = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    return sd, cfg


# ----------------------------------------------------------------------------------------------
# registered classifier
# ----------------------------------------------------------------------------------------------
@register(
    "vjepa2",
    presets={
        # tests / notebooks
        "tiny": dict(embed_dim=32, depth=2, num_heads=2, probe_depth=1, drop_path=0.0),
        # a crowded CPU (many jobs on 2 cores): D=96, 4 layers, 3 heads (~4x cheaper than the default)
        "mini": dict(embed_dim=96, depth=4, num_heads=3, probe_depth=1, drop_path=0.1),
        # the notes' reference CPU configuration (0.7 s/step at batch 32 on 2 cores)
        "small": dict(embed_dim=192, depth=6, num_heads=3, probe_depth=1, drop_path=0.1),
        # GPU: ViT-small width, 12 layers, 2 probe blocks, convolutional tubelet embedding
        "gpu": dict(embed_dim=384, depth=12, num_heads=6, probe_depth=2, drop_path=0.1, stem="conv",
                    stem_channels=(32, 64, 128)),
    },
    train_defaults=dict(lr=5e-4, weight_decay=0.05, warmup_frac=0.05, batch_size=32, epochs=100,
                        grad_clip=1.0, mixup=0.2, label_smoothing=0.1),
)
class VJEPA2Classifier(nn.Module):
    """ViT encoder over spectrogram tubelets + attentive classifier.

    Defaults (the CPU configuration): 8x16 tubelets (19x8 = 152 tokens), D=192, depth 4, 3 heads,
    MLP 4x, drop path 0.1, sin-cos positions, one cross-attention probe block: 2.2 M parameters,
    about 0.4 s per training step at batch 32 on 2 idle cores, i.e. about 16 s per ESC-50 epoch of
    1200 clips (``benchmarks/bench_vjepa2.py``). The notes' depth-6 model is preset ``small``
    (0.6-0.7 s/step, over the 20-s epoch goal).

    ``init_from``: path to a pretrained encoder (``training.jepa`` writes ``encoder.safetensors``);
    its stored config must match this model's encoder arguments. ``freeze_encoder=True`` trains only
    the attentive probe (the encoder runs in eval mode without gradients).
    """

    def __init__(self, num_classes=50, n_mels=128, n_frames=155, patch_t=8, patch_f=16, embed_dim=192,
                 depth=4, num_heads=3, mlp_ratio=4.0, drop_path=0.1, pos="sincos", jitter=True,
                 probe_depth=1, probe_heads=None, init_from=None, freeze_encoder=False, stem="linear",
                 stem_channels=CONV_STEM_CHANNELS, stem_pools=VIT_STEM_POOLS):
        super().__init__()
        self.encoder = SpecViTEncoder(n_frames, n_mels, patch_t, patch_f, embed_dim, depth, num_heads,
                                      mlp_ratio, drop_path, pos, jitter, stem, stem_channels, stem_pools)
        self.head = AttentiveClassifier(embed_dim, num_classes, probe_heads or num_heads, probe_depth, mlp_ratio)
        self.freeze_encoder = freeze_encoder
        self.pretrained_from = None
        if init_from:
            self.load_encoder(init_from)
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    # ``models.build_model`` records the constructor kwargs as ``model_config`` (stored in every
    # checkpoint and used to rebuild the model). ``init_from`` only matters for initialisation, and
    # the fine-tuned checkpoint holds all weights, so it is dropped there: rebuilding must not need
    # (or re-read) the pretraining file. The path is kept as ``pretrained_from`` for provenance.
    @property
    def model_config(self) -> dict:
        return self.__dict__.get("_model_config", {})

    @model_config.setter
    def model_config(self, cfg: dict) -> None:
        from models import rebuild_config
        self.__dict__["_model_config"] = rebuild_config(cfg)

    def load_encoder(self, path: str) -> None:
        sd, cfg = load_encoder_state(path)
        if cfg is not None:
            mine = encoder_config(self.encoder)
            cfg = {"stem_pools": [list(p) for p in VIT_STEM_POOLS], **cfg}   # files older than the key
            bad = {k: (cfg.get(k), mine[k]) for k in ENCODER_KEYS if k in cfg and cfg[k] != mine[k]}
            if bad:
                raise ValueError(f"encoder checkpoint {path} does not match this model "
                                 f"(key: (checkpoint, model)): {bad}")
        self.encoder.load_state_dict(sd, strict=True)
        self.pretrained_from = str(path)

    def no_weight_decay(self):
        return {"head.pooler.query_tokens"}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor, tubelets: bool | None = None) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                feats = self.encoder(x, tubelets=tubelets)
        else:
            feats = self.encoder(x, tubelets=tubelets)
        return self.head(feats)
