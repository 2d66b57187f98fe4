"""Tests for models/liquid_s4.py and models/s4_kernels.py (small shapes, float64 for the maths)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from models import build_model, count_parameters
from models.liquid_s4 import (LiquidS4Classifier, S4Layer, allcombs_indices, allcombs_window,
                              correlation_signals)
from models.s4_kernels import (SSMKernel, discretize_diag, fft_conv, fft_conv_autograd, fft_len,
                               hippo_legs, nplr_legs, vandermonde_kernel,
                               vandermonde_kernel_naive)

DT = torch.float64


def _layer(**kw):
    kw.setdefault("d_state", 8)
    kw.setdefault("dt_min", 1e-2)
    kw.setdefault("dt_max", 0.5)
    layer = S4Layer(3, **kw).to(DT)
    return layer


def _recurrence_diag(layer, u):
    """x_t = dA x_{t-1} + dB u_t ; y_t = 2 Re(C x_t) + D u_t, on (B, L, H) inputs."""
    dA, dB, _ = layer.kernel.discrete_diag()
    C = layer.kernel.C_c()
    Bsz, L, H = u.shape
    x = torch.zeros(Bsz, H, dA.shape[-1], dtype=dA.dtype)
    ys = []
    for t in range(L):
        x = dA * x + dB * u[:, t, :, None]
        ys.append(2 * (C * x).sum(-1).real + layer.D * u[:, t])
    return torch.stack(ys, dim=1)


# ----------------------------------------------------------------------------------------------
# S4 core
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", ["diag-lin", "diag-inv", "diag-legs"])
def test_s4d_convolution_equals_recurrence(disc, init):
    torch.manual_seed(0)
    layer = _layer(mode="diag", init=init, disc=disc, liquid_kernel=None)
    for L in (17, 24):
        u = torch.randn(2, L, 3, dtype=DT)
        err = (layer.ssm(u) - _recurrence_diag(layer, u)).abs().max().item()
        assert err < 1e-12, err


def test_fft_conv_is_linear_not_circular():
    torch.manual_seed(0)
    for L in (1, 2, 7, 16, 155):
        u = torch.randn(2, L, 3, dtype=DT)
        K = torch.randn(L, 3, dtype=DT)
        direct = torch.stack([sum(K[j] * u[:, t - j] for j in range(t + 1)) for t in range(L)], 1)
        assert (fft_conv(u, K) - direct).abs().max() < 1e-11
    assert fft_len(309) == 320 and fft_len(127) == 128 and fft_len(1) == 1


def test_fft_conv_custom_backward():
    torch.manual_seed(0)
    for L, Lk in ((9, 9), (16, 5)):
        u = torch.randn(2, L, 3, dtype=DT, requires_grad=True)
        K = torch.randn(Lk, 3, dtype=DT, requires_grad=True)
        assert torch.autograd.gradcheck(fft_conv, (u, K))
        g = torch.randn(2, L, 3, dtype=DT)
        a = torch.autograd.grad((fft_conv(u, K) * g).sum(), (u, K))
        b = torch.autograd.grad((fft_conv_autograd(u, F.pad(K, (0, 0, 0, L - Lk))) * g).sum(), (u, K))
        assert all((x - y).abs().max() < 1e-12 for x, y in zip(a, b))


@pytest.mark.parametrize("L", [1, 2, 12, 155])
def test_vandermonde_blocked_equals_naive(L):
    torch.manual_seed(0)
    lam = torch.complex(-torch.rand(3, 4, dtype=DT), 10 * torch.randn(3, 4, dtype=DT))
    dt = torch.rand(3, dtype=DT) * 0.1
    _, dB, logA = discretize_diag(dt, lam, torch.ones_like(lam), "bilinear")
    CdB = torch.randn(3, 4, dtype=torch.complex128) * dB
    assert (vandermonde_kernel(CdB, logA, L) - vandermonde_kernel_naive(CdB, logA, L)).abs().max() < 1e-13


def test_nplr_reconstructs_hippo():
    N = 16
    A, B, P = hippo_legs(N)
    lam, Pt, Bt, V = nplr_legs(N)
    Vf = torch.cat([V, V.conj()], 1)
    Lf = torch.cat([lam, lam.conj()])
    Pf = torch.cat([Pt, Pt.conj()])
    assert (Vf.conj().T @ Vf - torch.eye(N, dtype=Vf.dtype)).abs().max() < 1e-12
    Arec = Vf @ (torch.diag(Lf) - Pf[:, None] * Pf.conj()[None, :]) @ Vf.conj().T
    assert (Arec - A).abs().max() < 1e-12
    assert (Vf @ torch.cat([Bt, Bt.conj()]) - B).abs().max() < 1e-12
    assert (lam.real + 0.5).abs().max() < 1e-12 and (lam.imag < 0).all()


@pytest.mark.parametrize("L", [13, 16])
def test_nplr_kernel_equals_dense_hippo(L):
    """Cauchy + Woodbury kernel, after un-tilding C, equals C dA^l dB from the dense HiPPO A."""
    torch.manual_seed(0)
    N, H = 8, 2
    kern = SSMKernel(H, N, mode="nplr", l_max=L, dt_min=1e-2, dt_max=0.3, dtype=DT)
    K = kern(L)
    A_h, B_h, _ = hippo_legs(N)
    _, _, _, V = nplr_legs(N)
    Vf = torch.cat([V, V.conj()], 1)
    I = torch.eye(N, dtype=torch.complex128)
    lam, P, B, Ct, dt = kern.Lambda(), kern.P_c(), kern.B_c(), kern.C_c(), kern.dt()
    for h in range(H):
        # un-tilde C in the eigenbasis: C = C~ (I - dA^L)^-1, then map to the HiPPO basis
        Af = torch.diag(torch.cat([lam[h], lam[h].conj()]))
        Pf = torch.cat([P[h], P[h].conj()])
        Af = Af - Pf[:, None] * Pf.conj()[None, :]
        dAf = torch.linalg.solve(I - dt[h] / 2 * Af, I + dt[h] / 2 * Af)
        Cf = torch.cat([Ct[h], Ct[h].conj()]) @ torch.linalg.inv(I - torch.linalg.matrix_power(dAf, L))
        C_orig = Cf @ Vf.conj().T
        assert C_orig.imag.abs().max() < 1e-10
        # dense recurrence with the real HiPPO-LegS matrices
        Ir = torch.eye(N, dtype=DT)
        dA = torch.linalg.solve(Ir - dt[h] / 2 * A_h, Ir + dt[h] / 2 * A_h)
        x = torch.linalg.solve(Ir - dt[h] / 2 * A_h, dt[h] * B_h)
        dense = []
        for _ in range(L):
            dense.append(C_orig.real @ x)
            x = dA @ x
        assert (K[h] - torch.stack(dense)).abs().max() < 1e-10


def test_nplr_layer_runs_and_truncates():
    torch.manual_seed(0)
    layer = _layer(mode="nplr", liquid_kernel="polyb", l_max=20)
    assert layer.kernel(12).shape == (3, 12) and layer.kernel(25).shape == (3, 25)
    assert torch.allclose(layer.kernel(12), layer.kernel(20)[:, :12])
    assert layer.ssm(torch.randn(2, 20, 3, dtype=DT)).shape == (2, 20, 3)


# ----------------------------------------------------------------------------------------------
# Liquid terms
# ----------------------------------------------------------------------------------------------
def test_allcombs_windows():
    assert allcombs_window(155, 2) == 19 and allcombs_window(155, 3) == 11
    idx2, idx3 = allcombs_indices(155, 2), allcombs_indices(155, 3)
    assert idx2.shape == (155, 2) and idx3.shape == (155, 3)
    assert idx2.min() >= 155 - 19 and idx3.min() >= 155 - 11
    assert idx2[-1].tolist() == [153, 154] and idx3[-1].tolist() == [152, 153, 154]
    assert idx2.tolist() == [list(c) for c in itertools.combinations(range(136, 155), 2)][-155:]


def _naive_corr(u, degree, allcombs, squash, flip):
    """Loop implementation of the correlation signals on (B, L, H)."""
    Bsz, L, H = u.shape
    outs, prev = [], u.clone()
    for p in range(2, degree + 1):
        c = torch.zeros_like(u)
        if allcombs:
            n = next(n for n in range(p, L + 1) if len(list(itertools.combinations(range(n), p))) >= L)
            combs = list(itertools.combinations(range(L - n, L), p))[-L:]
            for t, tup in enumerate(combs):
                v = torch.ones(Bsz, H, dtype=u.dtype)
                for i in tup:
                    v = v * u[:, i]
                c[:, t] = v
        else:
            for t in range(1, L):
                c[:, t] = prev[:, t] * prev[:, t - 1]
            prev = c.clone()
        if squash:
            c = torch.tanh(c)
        outs.append(c.flip(1) if flip else c)
    return outs


def _naive_kappa(layer, p):
    """kappa^(p) = sum_n C_n dB^(p)_n over the conjugate-doubled state, dB^(p) = dB^(p-1) sum dB^(p-1)."""
    dt = layer.kernel.dt()
    lam, B, C = layer.kernel.Lambda(), layer.kernel.B_c(), layer.kernel.C_c()
    H, M = lam.shape
    kap = torch.zeros(H, dtype=DT)
    for h in range(H):
        dB = [None] * (2 * M)
        Cf = [None] * (2 * M)
        for n in range(M):
            v = dt[h] * B[h, n] / (1 - 0.5 * dt[h] * lam[h, n])
            dB[n], dB[M + n] = v, v.conj()
            Cf[n], Cf[M + n] = C[h, n], C[h, n].conj()
        for _ in range(2, p + 1):
            tot = sum(dB)
            dB = [b * tot for b in dB]
        kap[h] = sum(c * b for c, b in zip(Cf, dB)).real
    return kap


@pytest.mark.parametrize("degree,allcombs,lcontract", [(2, True, None), (3, True, "tanh"),
                                                       (3, False, None)])
def test_polyb_equals_naive_loop(degree, allcombs, lcontract):
    torch.manual_seed(0)
    layer = _layer(liquid_kernel="polyb", liquid_degree=degree, allcombs=allcombs,
                   lcontract=lcontract, disc="bilinear")
    u = torch.randn(2, 14, 3, dtype=DT)
    y = layer.ssm(u)
    layer.liquid_kernel = None
    y_plain = layer.ssm(u)
    corr = _naive_corr(u, degree, allcombs, lcontract == "tanh", flip=True)
    expect = y_plain.clone()
    for p, c in zip(range(2, degree + 1), corr):
        kap = _naive_kappa(layer, p)
        for t in range(u.shape[1]):
            for h in range(3):
                expect[:, t, h] = expect[:, t, h] + kap[h] * c[:, t, h]
    assert (y - expect).abs().max() < 1e-12
    for a, b in zip(correlation_signals(u, degree, allcombs, lcontract), corr):
        assert (a - b).abs().max() < 1e-14


def test_polyb_kappa2_is_rank1_unrolling():
    torch.manual_seed(0)
    layer = _layer(liquid_kernel="polyb", liquid_degree=3)
    _, dB, _ = layer.kernel.discrete_diag()
    CdB = 2 * (layer.kernel.C_c() * dB).sum(-1).real
    s = 2 * dB.sum(-1).real
    k2, k3 = layer.polyb_coefficients()
    assert (k2 - CdB * s).abs().max() < 1e-12 and (k3 - CdB * s ** 3).abs().max() < 1e-12
    assert not torch.is_complex(k2)


@pytest.mark.parametrize("degree,allcombs", [(2, True), (3, False)])
def test_kb_exact_equals_direct_causal_convolution(degree, allcombs):
    torch.manual_seed(0)
    layer = _layer(liquid_kernel="kb", liquid_degree=degree, allcombs=allcombs)
    u = torch.randn(2, 12, 3, dtype=DT)
    L = u.shape[1]
    y = layer.ssm(u)
    layer.liquid_kernel = None
    expect = layer.ssm(u)
    K = layer.kernel(L)
    s = layer.liquid_s()
    for p, c in zip(range(2, degree + 1), _naive_corr(u, degree, allcombs, False, True)):
        kp = K * s[:, None] ** (p - 1)  # (H, L)
        for t in range(L):
            for j in range(t + 1):
                expect[:, t] = expect[:, t] + kp[:, j] * c[:, t - j]
    assert (y - expect).abs().max() < 1e-12
    # the reference grid is not an exact convolution
    layer.liquid_kernel, layer.kb_exact = "kb", False
    assert (layer.ssm(u) - expect).abs().max() > 1e-6


def test_causal_flag():
    torch.manual_seed(0)
    u = torch.randn(1, 20, 3, dtype=DT)
    u2 = u.clone()
    u2[:, 12:] += torch.randn(1, 8, 3, dtype=DT)
    for lk in ("polyb", "kb"):
        causal = _layer(liquid_kernel=lk, liquid_degree=3, allcombs=False, liquid_causal=True)
        assert (causal.ssm(u)[:, :12] - causal.ssm(u2)[:, :12]).abs().max() < 1e-12
        ref = _layer(liquid_kernel=lk, allcombs=True)
        assert (ref.ssm(u)[:, :12] - ref.ssm(u2)[:, :12]).abs().max() > 1e-6
    with pytest.raises(ValueError):
        S4Layer(4, liquid_kernel="polyb", allcombs=True, liquid_causal=True)


def test_liquid_coefficients_train_and_roundtrip():
    torch.manual_seed(0)
    layer = _layer(liquid_kernel="polyb")
    u = torch.randn(2, 10, 3, dtype=DT)
    (kap,) = layer.polyb_coefficients()
    kap.sum().backward()
    for name in ("C", "B", "inv_w_real", "w_imag", "log_dt"):
        g = getattr(layer.kernel, name).grad
        assert g is not None and g.abs().sum() > 0, name
    layer.liquid_detach = True
    assert not layer.polyb_coefficients()[0].requires_grad
    # KB: s has a gradient unless detached (then only through K)
    kb = _layer(liquid_kernel="kb")
    assert kb.liquid_s().requires_grad
    kb.liquid_detach = True
    assert not kb.liquid_s().requires_grad and kb.ssm(u).requires_grad

    # state-dict round trip of a trained model (the coefficients follow the saved parameters)
    torch.manual_seed(1)
    m = build_model("liquid_s4", preset="tiny", n_frames=20, n_mels=8, num_classes=3)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x, y = torch.randn(4, 20, 8), torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    m.eval()
    torch.manual_seed(2)
    m2 = build_model("liquid_s4", preset="tiny", n_frames=20, n_mels=8, num_classes=3).eval()
    k_before = [b.layer.polyb_coefficients()[0] for b in m2.blocks]
    m2.load_state_dict(m.state_dict())
    for b, b2, kb_ in zip(m.blocks, m2.blocks, k_before):
        k1, k2 = b.layer.polyb_coefficients()[0], b2.layer.polyb_coefficients()[0]
        assert torch.equal(k1, k2) and not torch.equal(k2, kb_)
    assert torch.equal(m(x), m2(x))


def test_plain_s4_when_liquid_kernel_none():
    torch.manual_seed(0)
    a = LiquidS4Classifier(num_classes=5, n_mels=8, n_frames=16, d_model=8, n_layers=2,
                           d_state=8, liquid_kernel=None, liquid_degree=3, allcombs=False).eval()
    torch.manual_seed(0)
    b = LiquidS4Classifier(num_classes=5, n_mels=8, n_frames=16, d_model=8, n_layers=2,
                           d_state=8, liquid_kernel="polyb").eval()
    x = torch.randn(2, 16, 8)
    assert count_parameters(a) == count_parameters(b)
    assert not torch.allclose(a(x), b(x))
    for blk in b.blocks:
        blk.layer.liquid_kernel = None
    assert torch.allclose(a(x), b(x), atol=1e-6)


def test_optimizer_tags():
    m = build_model("liquid_s4", preset="tiny", mode="nplr", ssm_lr=2e-3)
    k = m.blocks[0].layer.kernel
    for p in (k.log_dt, k.inv_w_real, k.w_imag, k.B, k.P):
        assert p._optim == {"lr": 2e-3, "weight_decay": 0.0}
    assert not hasattr(k.C, "_optim")
    tagged = sum(1 for p in m.parameters() if hasattr(p, "_optim"))
    assert tagged == 5 * len(m.blocks)


# ----------------------------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------------------------
def test_default_config_shape_and_size():
    m = build_model("liquid_s4")
    n = count_parameters(m)
    assert 0.30e6 < n < 0.36e6, n
    assert 0.24e6 < count_parameters(build_model("liquid_s4", stem="linear")) < 0.28e6
    with torch.no_grad():
        assert m(torch.randn(2, 155, 128)).shape == (2, 50)


@pytest.mark.parametrize("cfg", [dict(liquid_kernel="polyb"), dict(liquid_kernel="kb"),
                                 dict(liquid_kernel=None), dict(mode="nplr"),
                                 dict(liquid_kernel="kb", kb_exact=False, liquid_degree=3)])
def test_shapes_tiny(cfg):
    m = build_model("liquid_s4", preset="tiny", **cfg)
    assert m(torch.randn(3, 155, 128)).shape == (3, 50)
    m = build_model("liquid_s4", preset="tiny", n_mels=96, n_frames=64, num_classes=10, **cfg)
    assert m(torch.randn(2, 64, 96)).shape == (2, 10)


def test_overfits_8_samples():
    torch.manual_seed(0)
    m = build_model("liquid_s4", preset="tiny", n_frames=40, n_mels=16, num_classes=4)
    x, y = torch.randn(8, 40, 16), torch.arange(8) % 4
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_deterministic_with_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        m = build_model("liquid_s4", preset="tiny", n_frames=30, n_mels=16, num_classes=4,
                        dropout=0.1)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        x, y = torch.randn(4, 30, 16), torch.arange(4)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
        outs.append(m.eval()(x))
    assert torch.equal(outs[0], outs[1])


def test_inference_kernel_cache_matches_and_invalidates():
    import models as _models
    torch.manual_seed(0)
    m = _models.build_model("liquid_s4", num_classes=5, preset="tiny").eval()
    x = torch.randn(2, 155, 128)
    with torch.no_grad():
        first = m(x)
        again = m(x)                                        # served from the cache
        k = m.blocks[0].layer.kernel
        assert torch.equal(k(155), k._compute(155))
        with torch.no_grad():
            k.log_dt.add_(0.3)                              # a parameter change invalidates it
        assert torch.equal(k(155), k._compute(155))
        changed = m(x)
    assert torch.equal(first, again) and not torch.allclose(first, changed)
    m.train()
    with torch.enable_grad():
        assert m(x).requires_grad                           # training never uses the cache
