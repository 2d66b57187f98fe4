"""S4 convolution-kernel maths in plain PyTorch (no pykeops, no CUDA extension).

Conventions
-----------
* ``H`` channels (d_model), each its own SSM with state size ``N``; only the ``M = N/2`` modes of
  each conjugate pair are stored, and every state sum runs over the conjugate-doubled set, which
  is written ``2 Re(sum over the stored half)``.
* Two parameterisations of the continuous-time matrix ``A`` (see ``SSMKernel``):

  - ``"diag"`` (S4D): ``A = diag(Lambda)``. Kernel by Vandermonde:
    ``K_l = 2 Re sum_n C_n dB_n dA_n^l`` with ``dA^l = exp(l log dA)``.
  - ``"nplr"`` (S4 / DPLR with HiPPO-LegS, rank 1): in the eigenbasis ``V`` of the normal part,
    ``A = V (Lambda - P P^*) V^*``. The kernel comes from its truncated generating function at the
    ``L``-th roots of unity, ``Khat(w) = 2/(1+w) [k_CB - k_CP (1 + k_QP)^-1 k_QB]`` (rank-1 Woodbury)
    with Cauchy sums ``k_ab(w) = sum_n a_n b_n / (g(w) - lambda_n)``,
    ``g(w) = (2/dt)(1-w)/(1+w)``, then ``K = irfft(Khat, L)``. The stored ``C`` is
    ``C~ = C (I - dA^L)`` (the truncation is folded into ``C``; the NPLR test recovers
    ``C = C~ (I - dA^L)^-1`` with dense matrices). At ``w = -1`` (``L`` even) the formula is 0*inf; the exact value
    ``Khat(-1) = C~ (I + dA)^-1 dB = (dt/2) C~ B`` is used instead.

* Initialisation: log dt ~ U[log dt_min, log dt_max]; S4D-Lin / S4D-Inv / S4D-LegS Lambda with
  B = 1 (S4D-LegS: B = V^* B_HiPPO); NPLR: HiPPO-LegS Lambda, P, B; C ~ CN(0, 1). For NPLR the
  random C is used as C~ directly (the reference converts a random C on the first forward, which
  is equally random). ``N`` must be even; the reference silently drops the real mode of an odd N.
* Discretisation: bilinear ``dA = (1 - dt/2 A)^-1 (1 + dt/2 A)``, ``dB = (1 - dt/2 A)^-1 dt B``
  (both modes) or ZOH ``dA = exp(dt Lambda)``, ``dB = (dA - 1)/Lambda B`` (diagonal mode only).
* Kernel tensors are ``(H, L)`` real. ``fft_conv`` works on ``(..., L, H)`` inputs (time on dim -2),
  which is the layout the classifier keeps (no transposes around Linear/LayerNorm).

Cost: the Vandermonde kernel is a blocked complex matmul (about 2 sqrt(L) complex exponentials per
mode, see ``vandermonde_kernel``); the Cauchy sums materialise ``(H, N/2, L/2+1)`` complex values
(about 0.3M per layer at H=128, N=64, L=155). Both are negligible next to the batch work, so no
pykeops or CUDA extension is needed. ``fft_conv`` has a hand-written backward that uses only real
FFTs (autograd's rfft backward runs a full complex transform).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = [
    "hippo_legs", "nplr_legs", "s4d_lambda", "discretize_diag", "vandermonde_kernel",
    "vandermonde_kernel_naive", "cauchy_woodbury_kernel", "fft_len", "fft_conv",
    "fft_conv_autograd", "SSMKernel",
]


# ----------------------------------------------------------------------------------------------
# HiPPO and initialisations (float64, cast by the caller)
# ----------------------------------------------------------------------------------------------
def hippo_legs(N: int, dtype=torch.float64):
    """HiPPO-LegS ``(A, B, P)``: A_nk = -sqrt(2n+1)sqrt(2k+1) (n>k), -(n+1) (n=k), 0 (n<k);
    B_n = sqrt(2n+1); P_n = sqrt(n+1/2), so that ``A + P P^T = -I/2 + skew``."""
    n = torch.arange(N, dtype=dtype)
    q = torch.sqrt(2 * n + 1)
    A = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(n + 1)
    return A, q.clone(), torch.sqrt(n + 0.5)


def nplr_legs(N: int):
    """Normal-plus-low-rank form of HiPPO-LegS, half of each conjugate pair.

    Returns ``Lambda (N/2,)``, ``P (N/2,)``, ``B (N/2,)`` (complex128, in the eigenbasis) and
    ``V (N, N/2)`` such that with ``Vf = [V, conj V]``, ``Lf = [Lambda, conj Lambda]``,
    ``Pf = [P, conj P]``: ``Vf (diag(Lf) - Pf Pf^*) Vf^* = A``. The modes kept are those with
    negative imaginary part. ``N`` must be even (an odd ``N`` has a real mode that the
    conjugate-pair storage cannot represent).
    """
    if N % 2:
        raise ValueError(f"d_state must be even for the NPLR parameterisation, got {N}")
    A, B, P = hippo_legs(N)
    S = A + P[:, None] * P[None, :]
    S = 0.5 * (S - S.T)  # exact skew part (the symmetric part is -I/2)
    theta, V = torch.linalg.eigh(-1j * S.to(torch.complex128))  # -iS is Hermitian, ascending
    theta, V = theta[: N // 2], V[:, : N // 2]  # theta < 0
    Lam = torch.complex(torch.full_like(theta, -0.5), theta)
    Vh = V.conj().T
    return Lam, Vh @ P.to(torch.complex128), Vh @ B.to(torch.complex128), V


def s4d_lambda(N: int, init: str = "diag-lin"):
    """S4D initialisations of the diagonal ``Lambda`` (N/2 modes, complex128) and ``B``."""
    M = N // 2
    n = torch.arange(M, dtype=torch.float64)
    if init == "diag-lin":
        lam = torch.complex(torch.full_like(n, -0.5), math.pi * n)
    elif init == "diag-inv":
        lam = torch.complex(torch.full_like(n, -0.5), (N / math.pi) * (N / (2 * n + 1) - 1))
    elif init == "diag-legs":  # S4D-LegS: the normal part of HiPPO-LegS
        lam, _, B, _ = nplr_legs(N)
        return lam, B
    else:
        raise ValueError(f"unknown S4D init '{init}' (diag-lin, diag-inv, diag-legs)")
    return lam, torch.ones(M, dtype=torch.complex128)


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
def discretize_diag(dt: torch.Tensor, Lam: torch.Tensor, B: torch.Tensor, disc: str = "bilinear"):
    """Diagonal discretisation. dt (H,), Lam/B (H, M) complex. Returns dA, dB, log(dA)."""
    dtL = dt[:, None] * Lam
    if disc == "zoh":
        dA = torch.exp(dtL)
        return dA, (dA - 1) / Lam * B, dtL
    if disc == "bilinear":
        den = 1 - 0.5 * dtL
        dA = (1 + 0.5 * dtL) / den
        return dA, dt[:, None] * B / den, torch.log(1 + 0.5 * dtL) - torch.log(den)
    raise ValueError(f"unknown discretisation '{disc}' (bilinear, zoh)")


def vandermonde_kernel(CdB: torch.Tensor, log_dA: torch.Tensor, L: int) -> torch.Tensor:
    """``K_l = 2 Re sum_n CdB_n exp(l log_dA_n)`` for l < L. CdB/log_dA (H, M) -> (H, L) real.

    Writing l = q S + r with S ~ sqrt(L), ``K[q, r] = 2 Re sum_n (CdB_n dA_n^(qS)) dA_n^r`` is a
    batched complex matmul (H, Q, M) @ (H, M, S): only ~2 sqrt(L) complex exponentials per mode
    instead of L, and no (H, M, L) tensor (fwd+bwd 6.5 ms vs 37 ms for the naive sum at H=128,
    N=64, L=155 on one CPU thread).
    """
    H, M = log_dA.shape
    S = max(1, math.isqrt(L - 1) + 1) if L > 1 else 1
    Q = -(-L // S)
    rdt = log_dA.real.dtype
    r = torch.arange(S, device=log_dA.device, dtype=rdt)
    q = torch.arange(Q, device=log_dA.device, dtype=rdt) * S
    Vr = torch.exp(log_dA.unsqueeze(-1) * r)  # (H, M, S)
    Vq = CdB.unsqueeze(-1) * torch.exp(log_dA.unsqueeze(-1) * q)  # (H, M, Q)
    K = torch.bmm(Vq.transpose(1, 2), Vr)  # (H, Q, S)
    return 2 * K.reshape(H, Q * S)[:, :L].real


def vandermonde_kernel_naive(CdB: torch.Tensor, log_dA: torch.Tensor, L: int) -> torch.Tensor:
    """Reference for ``vandermonde_kernel``: materialises (H, M, L)."""
    ell = torch.arange(L, device=log_dA.device, dtype=log_dA.real.dtype)
    V = torch.exp(log_dA.unsqueeze(-1) * ell)
    return 2 * torch.bmm(CdB.unsqueeze(1), V).squeeze(1).real


def cauchy_woodbury_kernel(dt, Lam, P, B, Ct, L: int) -> torch.Tensor:
    """NPLR (rank-1) bilinear kernel of length L from the generating function.

    dt (H,); Lam, P, B, Ct (H, M) complex (Ct = C~, the tilded C). Returns (H, L) real.
    """
    nf = L // 2 + 1
    even = L % 2 == 0
    nk = nf - 1 if even else nf  # bins evaluated by the Cauchy formula (w != -1)
    rdt = dt.dtype
    k = torch.arange(nk, device=dt.device, dtype=rdt)
    omega = torch.polar(torch.ones_like(k), -2 * math.pi * k / L)  # (F,)
    g = (2.0 / dt)[:, None] * ((1 - omega) / (1 + omega))  # (H, F)
    r = 1.0 / (g.unsqueeze(1) - Lam.unsqueeze(-1))  # (H, M, F)
    rc = 1.0 / (g.unsqueeze(1) - Lam.conj().unsqueeze(-1))
    Q = P.conj()
    num = torch.stack([Ct * B, Ct * P, Q * B, Q * P], dim=1)  # (H, 4, M)
    kk = torch.bmm(num, r) + torch.bmm(num.conj(), rc)  # (H, 4, F): sums over conjugate-doubled N
    khat = (2.0 / (1 + omega)) * (kk[:, 0] - kk[:, 1] * kk[:, 2] / (1 + kk[:, 3]))
    if even:  # w = -1: Khat = C~ (I + dA)^-1 dB = (dt/2) C~ B, summed over the conjugate pairs
        last = dt * (Ct * B).sum(-1).real
        khat = torch.cat([khat, last.to(khat.dtype).unsqueeze(-1)], dim=-1)
    return torch.fft.irfft(khat, n=L)


def fft_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast FFT size)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


class _FFTConv(torch.autograd.Function):
    """y = irfft(rfft(u, n) rfft(K, n), n)[:L] with a hand-written backward that uses only
    real FFTs (autograd's rfft backward goes through a full complex c2c transform)."""

    @staticmethod
    def forward(ctx, u, K):
        L, Lk = u.shape[-2], K.shape[-2]
        n = fft_len(2 * L - 1)
        Uf = torch.fft.rfft(u, n=n, dim=-2)
        Kf = torch.fft.rfft(K, n=n, dim=-2)
        ctx.save_for_backward(Uf, Kf)
        ctx.shape = (L, Lk, n, u.dim())
        return torch.fft.irfft(Uf * Kf, n=n, dim=-2)[..., :L, :]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        Uf, Kf = ctx.saved_tensors
        L, Lk, n, nd = ctx.shape
        G = torch.fft.rfft(g, n=n, dim=-2)
        gu = gK = None
        if ctx.needs_input_grad[0]:  # correlation with K: sum_t g_t K_{t-s}
            gu = torch.fft.irfft(G * Kf.conj(), n=n, dim=-2)[..., :L, :]
        if ctx.needs_input_grad[1]:  # sum_b sum_t g_t u_{t-j}
            GU = G * Uf.conj()
            if nd > 2:
                GU = GU.sum(dim=tuple(range(nd - 2)))
            gK = torch.fft.irfft(GU, n=n, dim=-2)[:Lk, :]
        return gu, gK


def fft_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal linear convolution along time: y_t = sum_{j<=t} K_j u_{t-j}.

    u (..., L, H); K (L_k, H) real with L_k <= L (shorter kernels are zero beyond L_k).
    Zero padding to n >= 2L-1 (a fast FFT size), so no circular wrap-around.
    """
    if K.shape[-2] > u.shape[-2]:
        raise ValueError("kernel longer than the sequence")
    if u.dtype in (torch.float16, torch.bfloat16):  # FFTs of odd sizes need fp32 (autocast runs)
        u = u.float()
    return _FFTConv.apply(u, K.to(u.dtype))


def fft_conv_autograd(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``fft_conv`` through plain autograd (reference for the custom backward)."""
    L = u.shape[-2]
    n = fft_len(2 * L - 1)
    Uf = torch.fft.rfft(u, n=n, dim=-2)
    Kf = torch.fft.rfft(K, n=n, dim=-2)
    return torch.fft.irfft(Uf * Kf, n=n, dim=-2)[..., :L, :]


# ----------------------------------------------------------------------------------------------
# Module holding the SSM parameters
# ----------------------------------------------------------------------------------------------
def _as_real(z: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    cdt = torch.complex128 if dtype == torch.float64 else torch.complex64
    return torch.view_as_real(z.to(cdt)).clone().contiguous()


class SSMKernel(nn.Module):
    """Parameters of H SSMs and their convolution kernel.

    Parameters (complex ones stored as real ``(..., 2)`` views, so that every optimiser, grad
    clip and checkpoint sees plain float tensors):

    * ``log_dt`` (H); ``inv_w_real`` = log(-Re Lambda) and ``w_imag`` (n_ssm, M);
      ``B`` (n_ssm, M, 2); ``P`` (n_ssm, M, 2) for NPLR; ``C`` (H, M, 2) (C~ for NPLR).
    * ``log_dt``, ``inv_w_real``, ``w_imag``, ``B`` and ``P`` carry
      ``_optim = {"lr": ssm_lr, "weight_decay": 0.0}`` (the S4 optimiser recipe).

    ``n_ssm`` copies of (Lambda, B, P) are shared by ``H / n_ssm`` channels each (default: one
    per channel).
    """

    def __init__(self, H: int, N: int = 64, mode: str = "diag", init: str = "diag-lin",
                 disc: str = "bilinear", n_ssm: int | None = None, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, l_max: int | None = None, ssm_lr: float | None = 1e-3,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if N % 2:
            raise ValueError(f"d_state must be even (conjugate pairs), got {N}")
        if mode not in ("diag", "nplr"):
            raise ValueError(f"unknown mode '{mode}' (diag, nplr)")
        if mode == "nplr" and disc != "bilinear":
            raise ValueError("the NPLR (Cauchy/Woodbury) kernel is derived for bilinear discretisation")
        if disc not in ("bilinear", "zoh"):
            raise ValueError(f"unknown discretisation '{disc}' (bilinear, zoh)")
        n_ssm = H if n_ssm is None else n_ssm
        if H % n_ssm:
            raise ValueError(f"n_ssm={n_ssm} must divide d_model={H}")
        self.H, self.N, self.M, self.n_ssm = H, N, N // 2, n_ssm
        self.mode, self.disc, self.l_max = mode, disc, l_max

        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        if mode == "nplr":
            lam, P, B, _ = nplr_legs(N)
        else:
            lam, B = s4d_lambda(N, init)
            P = None
        rep = lambda z: z.unsqueeze(0).repeat(n_ssm, 1)  # noqa: E731
        C = torch.randn(H, self.M, dtype=torch.complex64)  # CN(0, 1)

        self.log_dt = nn.Parameter(log_dt.to(dtype))
        self.inv_w_real = nn.Parameter(rep(torch.log(-lam.real)).to(dtype))
        self.w_imag = nn.Parameter(rep(lam.imag).to(dtype))
        self.B = nn.Parameter(_as_real(rep(B), dtype))
        if P is not None:
            self.P = nn.Parameter(_as_real(rep(P), dtype))
        else:
            self.register_parameter("P", None)
        self.C = nn.Parameter(_as_real(C, dtype))
        optim = {"weight_decay": 0.0}
        if ssm_lr is not None:
            optim["lr"] = ssm_lr
        for p in (self.log_dt, self.inv_w_real, self.w_imag, self.B, self.P):
            if p is not None:
                p._optim = dict(optim)

    # -- live parameters as complex tensors, broadcast to H channels -----------------------------
    def _expand(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.n_ssm == self.H else z.repeat_interleave(self.H // self.n_ssm, dim=0)

    def dt(self) -> torch.Tensor:
        return torch.exp(self.log_dt)

    def Lambda(self) -> torch.Tensor:
        return self._expand(torch.complex(-torch.exp(self.inv_w_real), self.w_imag))

    def B_c(self) -> torch.Tensor:
        return self._expand(torch.view_as_complex(self.B))

    def P_c(self) -> torch.Tensor:
        return self._expand(torch.view_as_complex(self.P))

    def C_c(self) -> torch.Tensor:
        return torch.view_as_complex(self.C)

    def discrete_diag(self):
        """(dA, dB, log dA) of the diagonal part, (H, M) complex. For NPLR this ignores P
        (it is what the liquid terms use, as in the reference)."""
        return discretize_diag(self.dt(), self.Lambda(), self.B_c(), self.disc)

    def forward(self, L: int) -> torch.Tensor:
        """Convolution kernel (H, L) real.

        In inference (eval mode, no autograd) the kernel depends only on the parameters, so it is
        cached per length and recomputed when any parameter changes (tracked by tensor versions,
        storage and device): batch-1 latency drops about 4x. Training always recomputes it.
        """
        if self.training or torch.is_grad_enabled():
            return self._compute(L)
        params = tuple(self.parameters())
        key = (L,) + tuple((p._version, p.data_ptr(), p.device, p.dtype) for p in params)
        cached = getattr(self, "_kernel_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, self._compute(L))
            self._kernel_cache = cached
        return cached[1]

    def _compute(self, L: int) -> torch.Tensor:
        if self.mode == "diag":
            _, dB, log_dA = self.discrete_diag()
            return vandermonde_kernel(self.C_c() * dB, log_dA, L)
        Lk = self.l_max or L  # C~ is tied to the kernel length l_max
        K = cauchy_woodbury_kernel(self.dt(), self.Lambda(), self.P_c(), self.B_c(), self.C_c(), Lk)
        if Lk > L:
            K = K[:, :L]
        elif Lk < L:  # finite-support kernel: zero beyond l_max
            K = torch.nn.functional.pad(K, (0, L - Lk))
        return K
