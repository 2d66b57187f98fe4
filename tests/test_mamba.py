"""Tests for the Mamba classifier and the pure-PyTorch selective scan (models/mamba.py,
models/selective_scan.py). Small shapes only; the whole file runs in a few seconds on a CPU."""
from __future__ import annotations

import copy
import importlib
import io
import sys

import pytest
import torch
import torch.nn.functional as F

import models
from models import mamba as mamba_mod
from models.mamba import Mamba, MambaClassifier
from models.selective_scan import selective_scan


# ------------------------------------------------------------------------------------------
# References written out plainly
# ------------------------------------------------------------------------------------------
def scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """selective_scan_ref-style sequential recurrence. u, delta: (b, d, L); A: (d, n); B, C: (b, n, L)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, L = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(L):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y, h


def block_ref_branch(x, z, conv, x_proj, dt_proj, A_log, D, dt_rank, d_state):
    """One Mamba branch written from the equations; x, z: (b, E, L)."""
    L = x.shape[-1]
    w = conv.weight[:, 0]                                           # (E, k)
    k = w.shape[-1]
    xp = F.pad(x, (k - 1, 0))
    xc = torch.stack([(xp[:, :, t:t + k] * w).sum(-1) for t in range(L)], dim=-1) + conv.bias[:, None]
    xc = xc * torch.sigmoid(xc)                                     # SiLU
    dbc = torch.einsum("bel,re->blr", xc, x_proj.weight)            # (b, L, R + 2N)
    dt, Bm, Cm = dbc[..., :dt_rank], dbc[..., dt_rank:dt_rank + d_state], dbc[..., dt_rank + d_state:]
    delta = torch.einsum("blr,er->bel", dt, dt_proj.weight)
    y, _ = scan_loop(xc, delta, -torch.exp(A_log), Bm.transpose(1, 2), Cm.transpose(1, 2), D=D, z=z,
                     delta_bias=dt_proj.bias, delta_softplus=True)
    return y


def block_ref(m: Mamba, hidden):
    xz = hidden @ m.in_proj.weight.t()
    x, z = xz[..., :m.d_inner].transpose(1, 2), xz[..., m.d_inner:].transpose(1, 2)
    y = block_ref_branch(x, z, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D, m.dt_rank, m.d_state)
    if m.bidirectional:
        yb = block_ref_branch(x.flip(-1), z.flip(-1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_log_b, m.D_b,
                              m.dt_rank, m.d_state)
        y = (y + yb.flip(-1)) / 2
    return y.transpose(1, 2) @ m.out_proj.weight.t()


def rand_scan_inputs(b, d, n, L, dtype=torch.float64, big=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, L, generator=g, dtype=dtype)
    # dt in (0, 3) and |A| up to ~e^2.5 (or dt up to 60 with big): dt*|A| reaches the hundreds
    delta = torch.rand(b, d, L, generator=g, dtype=dtype) * (60.0 if big else 3.0)
    A = -torch.exp(torch.randn(d, n, generator=g, dtype=dtype))
    B = torch.randn(b, n, L, generator=g, dtype=dtype)
    C = torch.randn(b, n, L, generator=g, dtype=dtype)
    return u, delta, A, B, C


# ------------------------------------------------------------------------------------------
# The scan
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [1, 2, 3, 155, 256])
@pytest.mark.parametrize("big", [False, True])
def test_scan_matches_recurrence_forward_and_grad(L, big):
    inputs = [t.requires_grad_() for t in rand_scan_inputs(2, 3, 4, L, big=big, seed=L)]
    y_ref, h_ref = scan_loop(*inputs)
    gy = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, inputs, gy)
    for chunk_len in (None, 1, 7):
        y, last = selective_scan(*inputs, return_last_state=True, chunk_len=chunk_len)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(last, h_ref, rtol=1e-10, atol=1e-10)
        grads = torch.autograd.grad(y, inputs, gy)
        for g, gr in zip(grads, grads_ref):
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g, gr, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("L,chunk_len", [(1, None), (3, None), (3, 2), (9, 4)])
def test_scan_gradcheck_float64(L, chunk_len):
    inputs = [t.requires_grad_() for t in rand_scan_inputs(2, 2, 3, L, seed=1)]
    D = torch.randn(2, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 2, L, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def f(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, chunk_len=chunk_len)

    assert torch.autograd.gradcheck(f, (*inputs, D, z, bias))


def test_scan_full_signature_matches_reference():
    u, delta, A, B, C = rand_scan_inputs(2, 5, 4, 33, seed=3)
    D, z, bias = torch.randn(5, dtype=torch.float64), torch.randn(2, 5, 33, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    y = selective_scan(u, delta - 1, A, B, C, D, z, bias, delta_softplus=True)
    y_ref, _ = scan_loop(u, delta - 1, A, B, C, D, z, bias, delta_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)


def test_scan_float32_and_half_inputs():
    u, delta, A, B, C = rand_scan_inputs(2, 8, 4, 50, seed=4)
    y64, _ = scan_loop(u, delta, A, B, C)
    y32 = selective_scan(*(t.float() for t in (u, delta, A, B, C)))
    assert y32.dtype == torch.float32
    assert (y32.double() - y64).abs().max() < 1e-4
    ybf = selective_scan(u.bfloat16(), delta.bfloat16(), A.float(), B.bfloat16(), C.bfloat16())
    assert ybf.dtype == torch.bfloat16 and torch.isfinite(ybf.float()).all()


# ------------------------------------------------------------------------------------------
# The block
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bidirectional", [False, True])
def test_block_matches_reference(bidirectional):
    torch.manual_seed(0)
    m = Mamba(16, d_state=4, bidirectional=bidirectional, backend="torch").double()
    with torch.no_grad():  # make the A's and D's non-trivial
        for name, p in m.named_parameters():
            if name.startswith(("A_log", "D")):
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), block_ref(m, x), rtol=1e-10, atol=1e-10)


def test_parameter_names_shapes_and_count_match_mamba_ssm():
    m = Mamba(64)
    E, N, R = 128, 16, 4
    expected = {
        "A_log": (E, N), "D": (E,), "in_proj.weight": (2 * E, 64), "conv1d.weight": (E, 1, 4),
        "conv1d.bias": (E,), "x_proj.weight": (R + 2 * N, E), "dt_proj.weight": (E, R),
        "dt_proj.bias": (E,), "out_proj.weight": (64, E),
    }
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    d, k = 64, 4
    formula = 6 * d * d + E * (k + 1) + E * (R + 2 * N) + (R + 1) * E + E * N + E
    assert formula == 32_640 == sum(p.numel() for p in m.parameters())
    # mamba_ssm's initialisation
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1, N + 1.0)).repeat(E, 1))
    torch.testing.assert_close(m.D, torch.ones(E))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert m.dt_proj.weight.abs().max() <= R ** -0.5
    assert m.A_log._optim == {"weight_decay": 0.0} and m.D._optim == {"weight_decay": 0.0}
    mb = Mamba(64, bidirectional=True)
    for name in ("A_log_b", "D_b"):
        assert getattr(mb, name)._optim == {"weight_decay": 0.0}
    extra = {k for k in mb.state_dict()} - set(expected)
    assert extra == {"A_log_b", "D_b", "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight",
                     "dt_proj_b.weight", "dt_proj_b.bias"}


def test_parameter_names_match_installed_mamba_ssm():
    try:
        from mamba_ssm import Mamba as RefMamba
    except Exception:
        pytest.skip("mamba_ssm not importable here")
    ref = RefMamba(d_model=64, d_state=16, d_conv=4, expand=2)
    ours = Mamba(64)
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(ref.state_dict())


# ------------------------------------------------------------------------------------------
# The classifier
# ------------------------------------------------------------------------------------------
def tiny(**kw):
    torch.manual_seed(0)
    return models.build_model("mamba", preset="tiny", **kw)


@pytest.mark.parametrize("frame_stack", [1, 2, 3])
def test_unidirectional_causality(frame_stack):
    m = tiny(bidirectional=False, frame_stack=frame_stack, stem="linear").eval()
    x = torch.randn(2, 20, 128)
    k_tok = 3                                    # keep tokens 0..k_tok
    x2 = x.clone()
    x2[:, (k_tok + 1) * frame_stack:] += torch.randn_like(x2[:, (k_tok + 1) * frame_stack:])
    with torch.no_grad():
        f1, f2 = m.forward_features(x, pool=False), m.forward_features(x2, pool=False)
    torch.testing.assert_close(f1[:, :k_tok + 1], f2[:, :k_tok + 1], rtol=0, atol=0)
    assert (f1[:, k_tok + 1:] - f2[:, k_tok + 1:]).abs().max() > 1e-3


def test_bidirectional_flip_with_swapped_branches():
    m = tiny(bidirectional=True, frame_stack=1, stem="linear").double().eval()
    with torch.no_grad():  # break the symmetry between the two branches' initialisations
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    swapped = copy.deepcopy(m)
    sd = m.state_dict()
    new_sd = {}
    for k, v in sd.items():
        parts = k.split(".")
        for i, part in enumerate(parts):
            if part in ("conv1d", "x_proj", "dt_proj", "A_log", "D"):
                parts[i] = part + "_b"
            elif part in ("conv1d_b", "x_proj_b", "dt_proj_b", "A_log_b", "D_b"):
                parts[i] = part[:-2]
        new_sd[".".join(parts)] = v
    swapped.load_state_dict(new_sd)
    x = torch.randn(2, 17, 128, dtype=torch.float64)
    with torch.no_grad():
        f = m.forward_features(x, pool=False)
        f_sw = swapped.forward_features(x.flip(1), pool=False).flip(1)
        torch.testing.assert_close(f_sw, f, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(swapped(x.flip(1)), m(x), rtol=1e-10, atol=1e-10)
        # and the backward branch does matter: without swapping, the outputs differ
        assert (m.forward_features(x.flip(1), pool=False).flip(1) - f).abs().max() > 1e-4


def test_state_dict_round_trip(tmp_path):
    m = tiny(bidirectional=True).eval()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    fresh = models.build_model("mamba", preset="tiny", bidirectional=True).eval()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(3, 155, 128)
    with torch.no_grad():
        assert torch.equal(m(x), fresh(x))
    try:
        from safetensors.torch import load_file, save_file
    except ImportError:
        return
    save_file(m.state_dict(), str(tmp_path / "m.safetensors"))
    fresh2 = models.build_model("mamba", preset="tiny", bidirectional=True).eval()
    fresh2.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    with torch.no_grad():
        assert torch.equal(m(x), fresh2(x))


@pytest.mark.parametrize("preset,n_frames,n_mels,classes", [
    ("tiny", 155, 128, 50), ("tiny", 64, 96, 10), (None, 155, 128, 50), (None, 7, 40, 3)])
def test_shapes(preset, n_frames, n_mels, classes):
    torch.manual_seed(0)
    m = models.build_model("mamba", num_classes=classes, n_mels=n_mels, n_frames=n_frames, preset=preset)
    out = m(torch.randn(2, n_frames, n_mels))
    assert out.shape == (2, classes) and torch.isfinite(out).all()


def test_registry_presets_and_defaults():
    spec = models.get_spec("mamba")
    assert {"tiny", "gpu"} <= set(spec.presets)
    td = models.train_defaults("mamba")
    assert td["lr"] == pytest.approx(1.5e-3) and td["weight_decay"] == pytest.approx(0.05)
    gpu_cfg = models.resolve_config("mamba", preset="gpu")
    assert gpu_cfg["d_model"] > MambaClassifier.__init__.__defaults__[3]  # bigger than the CPU default
    m = models.build_model("mamba", preset="tiny")
    tagged = {n for n, p in m.named_parameters() if getattr(p, "_optim", None) == {"weight_decay": 0.0}}
    assert tagged == {n for n, _ in m.named_parameters() if n.split(".")[-1] in ("A_log", "D", "A_log_b", "D_b")}


def test_overfit_a_few_steps_and_determinism():
    m = tiny()
    m2 = tiny()
    x, y = torch.randn(8, 155, 128), torch.arange(8) % 50
    with torch.no_grad():
        assert torch.equal(m.eval()(x), m2.eval()(x))
    m.train()
    from synth import train_steps
    losses = train_steps(m, x, y, steps=10, lr=1e-2, weight_decay=0.0)
    assert losses[-1] < 0.7 * losses[0], losses


def test_optional_import_failure_does_not_break_cpu(tmp_path, monkeypatch):
    pkg = tmp_path / "mamba_ssm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('selective_scan_cuda is not installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [k for k in sys.modules if k == "mamba_ssm" or k.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(mamba_mod, "_CUDA_KERNELS", None)
    with pytest.warns(RuntimeWarning):
        kern = mamba_mod.cuda_kernels()
    assert kern["selective_scan_fn"] is None
    m = tiny()
    assert m(torch.randn(2, 20, 128)).shape == (2, 50)
    monkeypatch.setattr(mamba_mod, "_CUDA_KERNELS", None)


def _cuda_and_mamba_ssm():
    if not torch.cuda.is_available():
        return False
    try:
        importlib.import_module("mamba_ssm.ops.selective_scan_interface")
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _cuda_and_mamba_ssm(), reason="needs CUDA and mamba-ssm")
@pytest.mark.parametrize("bidirectional", [False, True])
def test_cuda_kernels_match_pure_pytorch(bidirectional):
    torch.manual_seed(0)
    m = models.build_model("mamba", bidirectional=bidirectional, frame_stack=1).cuda().eval()
    x = torch.randn(4, 155, 128, device="cuda")
    outs, grads = {}, {}
    for backend in ("cuda", "torch"):
        m.set_backend(backend)
        m.zero_grad()
        out = m(x)
        out.square().sum().backward()
        outs[backend] = out.detach()
        grads[backend] = {n: p.grad.detach().clone() for n, p in m.named_parameters()}
    assert (outs["cuda"] - outs["torch"]).abs().max() < 1e-3
    for n, g in grads["torch"].items():
        assert torch.allclose(grads["cuda"][n], g, rtol=1e-2, atol=1e-3), n
    # a model trained with the kernels moves to the CPU path unchanged
    cpu = models.build_model("mamba", bidirectional=bidirectional, frame_stack=1).eval()
    cpu.load_state_dict({k: v.cpu() for k, v in m.state_dict().items()})
    with torch.no_grad():
        assert (cpu(x.cpu()) - outs["cuda"].cpu()).abs().max() < 1e-3


def test_cpu_autocast_bf16_runs():
    m = tiny()
    x = torch.randn(2, 30, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.shape == (2, 50) and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
