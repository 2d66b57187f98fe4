"""Tests for the V-JEPA2-style spectrogram ViT (models/vjepa2.py) and JEPA pretraining (training/jepa.py)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import models
from models.vjepa2 import (AttentiveClassifier, SpecViTEncoder, load_encoder_state, save_encoder,
                           sincos_pos_embed_2d, tokens_grid, tubeletise)
from training.jepa import (JEPA, MaskConfig, build_jepa, context_range, main, pretrain, sample_batch_masks,
                           sample_mask)

TINY = dict(embed_dim=32, depth=2, num_heads=2, probe_depth=1, drop_path=0.0)


def tiny_encoder(**kw):
    cfg = dict(embed_dim=32, depth=2, num_heads=2)
    cfg.update(kw)
    return SpecViTEncoder(**cfg)


# ---------------------------------------------------------------- token grid
def test_tokens_grid():
    g = tokens_grid(155, 128, 8, 16)
    assert (g.grid_t, g.grid_f, g.n_tokens, g.patch_t * g.patch_f) == (19, 8, 152, 128)
    assert (g.frames_used, g.mels_used, g.mel_offset) == (152, 128, 0)
    full = tokens_grid(155, 128, 8, None)
    assert (full.grid_t, full.grid_f, full.n_tokens, full.patch_f) == (19, 1, 19, 128)
    drums = tokens_grid(64, 96, 8, 16)
    assert (drums.grid_t, drums.grid_f) == (8, 6)
    odd = tokens_grid(155, 100, 8, 16)
    assert (odd.grid_f, odd.mels_used, odd.mel_offset) == (6, 96, 2)


def test_tubelet_layout_t_major_and_equals_conv():
    g = tokens_grid(155, 128, 8, 16)
    B = 2
    x = torch.randn(B, 155, 128)
    tub = tubeletise(x, g)  # centre crop: offset (155 - 152) // 2 = 1
    assert tub.shape == (B, 152, 128)
    for t, f, i, j in [(0, 0, 0, 0), (0, 1, 3, 5), (1, 0, 0, 0), (18, 7, 7, 15), (5, 3, 2, 9)]:
        n, v = t * g.grid_f + f, i * g.patch_f + j
        assert tub[1, n, v] == x[1, 1 + t * 8 + i, f * 16 + j]
    # the Linear tubelet embedding equals Conv2d(1->D, kernel=stride=(8,16)) with tokens in t-major order
    enc = tiny_encoder()
    w, b = enc.patch_embed.weight, enc.patch_embed.bias
    conv = F.conv2d(x[:, None, 1:153], w.view(32, 1, 8, 16), b, stride=(8, 16))  # [B, D, 19, 8]
    torch.testing.assert_close(enc.patch_embed(tub), rearrange(conv, "b d gt gf -> b (gt gf) d"),
                               rtol=1e-5, atol=1e-5)
    # per-sample jitter offsets
    off = torch.tensor([0, 3])
    tj = tubeletise(x, g, off)
    torch.testing.assert_close(tj[0], tubeletise(x[:1], g, 0)[0])
    torch.testing.assert_close(tj[1], tubeletise(x[1:], g, 3)[0])


def test_layout_matches_audio_utils_convert_to_tubelets():
    au = pytest.importorskip("audio_utils")
    x = torch.randn(2, 155, 128)
    g = tokens_grid(155, 128, 8, 16)
    torch.testing.assert_close(tubeletise(x, g), au.convert_to_tubelets(x, 8, 16), rtol=0, atol=0)
    torch.testing.assert_close(tubeletise(x, g, 3), au.convert_to_tubelets(x, 8, 16, offset=3), rtol=0, atol=0)
    full = tokens_grid(155, 128, 8, None)
    torch.testing.assert_close(tubeletise(x, full), au.convert_to_tubelets(x, 8, 128), rtol=0, atol=0)


def test_sincos_positions():
    pe = sincos_pos_embed_2d(32, 19, 8)
    assert pe.shape == (152, 32)
    grid = pe.view(19, 8, 32)
    # first half depends only on time, second half only on frequency
    assert torch.allclose(grid[:, :1, :16].expand(-1, 8, -1), grid[..., :16])
    assert torch.allclose(grid[:1, :, 16:].expand(19, -1, -1), grid[..., 16:])
    assert not torch.allclose(grid[0, 0, :16], grid[1, 0, :16])


@pytest.mark.parametrize("pos", ["sincos", "rope"])
def test_encoder_shapes_masking_and_pretubeletised(pos):
    torch.manual_seed(0)
    enc = tiny_encoder(pos=pos).eval()
    x = torch.randn(3, 155, 128)
    out = enc(x)
    assert out.shape == (3, 152, 32)
    # pre-tubeletised input (module-doc layout) gives the same result in eval
    tub = tubeletise(x, enc.grid)
    torch.testing.assert_close(enc(tub), out)
    torch.testing.assert_close(enc(tub, tubelets=True), out)
    keep = torch.stack([torch.randperm(152)[:40].sort().values for _ in range(3)])
    assert enc(x, keep_idx=keep).shape == (3, 40, 32)
    # with one block and no attention mixing check: keeping all tokens == no masking
    torch.testing.assert_close(enc(x, keep_idx=torch.arange(152).expand(3, -1)), out)


def test_rope_is_relative_and_2_axis():
    from models.vjepa2 import apply_rope, rope_2d_angles

    g = tokens_grid(155, 128, 8, 16)
    ang = rope_2d_angles(16, g)  # [152, 8]: 4 time pairs, 4 frequency pairs
    assert ang.shape == (152, 8)
    q, k = torch.randn(1, 1, 1, 16).double(), torch.randn(1, 1, 1, 16).double()

    def score(nq, nk):
        return (apply_rope(q, ang[nq].view(1, 1, 8).double()) * apply_rope(k, ang[nk].view(1, 1, 8).double())).sum()

    # same (dt, df) offset -> same score; t-major index n = t*8 + f
    torch.testing.assert_close(score(0 * 8 + 1, 2 * 8 + 3), score(5 * 8 + 4, 7 * 8 + 6))
    assert not torch.allclose(score(0, 8), score(0, 16))
    # rotation keeps norms
    torch.testing.assert_close(apply_rope(q, ang[17].view(1, 1, 8).double()).norm(), q.norm())


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("grid", [(19, 8), (19, 1), (8, 6)])
def test_masks_disjoint_with_ratios(grid):
    gt, gf = grid
    n = gt * gf
    gen = torch.Generator().manual_seed(0)
    lo, hi = context_range(n)
    assert lo >= 0.25 * n - 1e-9 and hi <= 0.5 * n + 1e-9
    for _ in range(30):
        c, t = sample_mask(gt, gf, MaskConfig(), gen)
        assert lo <= len(c) <= hi and len(t) > 0
        assert not set(c.tolist()) & set(t.tolist())
        assert len(set(c.tolist())) == len(c) and c.max() < n and t.max() < n
    for _ in range(5):
        ctx, tgt = sample_batch_masks(6, gt, gf, MaskConfig(), gen)
        assert ctx.shape[0] == tgt.shape[0] == 6 and lo <= ctx.shape[1] <= hi
        for c, t in zip(ctx, tgt):
            assert not set(c.tolist()) & set(t.tolist())
    # the requested ratio is respected exactly when asked for
    c, t = sample_mask(19, 8, MaskConfig(), gen, n_context=50)
    assert len(c) == 50
    c, _ = sample_mask(19, 8, MaskConfig(context_ratio=(0.3, 0.3)), gen)
    assert len(c) == math.ceil(0.3 * 152)


# ---------------------------------------------------------------- JEPA pieces
def _tiny_jepa():
    torch.manual_seed(0)
    return JEPA(tiny_encoder(), pred_dim=16, pred_depth=1, pred_heads=2)


def test_predictor_shape_and_mask_token_zero_init():
    j = _tiny_jepa()
    assert torch.count_nonzero(j.predictor.mask_token) == 0
    ctx, tgt = sample_batch_masks(2, 19, 8)
    z = j.encoder(torch.randn(2, 155, 128), keep_idx=ctx)
    assert z.shape == (2, ctx.shape[1], 32)
    assert j.predictor(z, ctx, tgt).shape == (2, tgt.shape[1], 32)


def test_ema_update_and_target_gets_no_grad():
    j = _tiny_jepa().train()
    with torch.no_grad():  # make the two encoders differ
        for p in j.encoder.parameters():
            p.add_(torch.randn_like(p))
    t0 = [p.detach().clone() for p in j.target_encoder.parameters()]
    c0 = [p.detach().clone() for p in j.encoder.parameters()]
    loss = j(torch.randn(2, 155, 128))
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in j.target_encoder.parameters())
    assert all(p.grad is not None for p in j.encoder.parameters())
    assert j.predictor.mask_token.grad is not None
    m = 0.9
    j.ema_update(m)
    for p, a, b in zip(j.target_encoder.parameters(), t0, c0):
        torch.testing.assert_close(p, m * a + (1 - m) * b, rtol=1e-6, atol=1e-6)
    assert not j.target_encoder.training


def test_jepa_loss_decreases_on_8_samples():
    torch.manual_seed(0)
    j = _tiny_jepa().train()
    x = torch.randn(8, 155, 128)
    opt = torch.optim.AdamW(j.trainable().parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(25):
        loss = j(x, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        j.ema_update(0.99)
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


# ---------------------------------------------------------------- head / classifier
@pytest.mark.parametrize("depth", [1, 2])
def test_attentive_head_permutation_invariant(depth):
    torch.manual_seed(0)
    head = AttentiveClassifier(32, 50, num_heads=2, depth=depth).eval()
    x = torch.randn(3, 152, 32)
    perm = torch.randperm(152)
    torch.testing.assert_close(head(x[:, perm]), head(x), rtol=1e-5, atol=1e-5)
    assert head(x).shape == (3, 50)
    assert not hasattr(head.pooler.cross_attention_block.xattn, "proj")


@pytest.mark.parametrize("cfg", [dict(preset="tiny"), dict(preset="tiny", pos="rope"),
                                 dict(preset="tiny", patch_f=None), dict()])
def test_classifier_shapes(cfg):
    torch.manual_seed(0)
    m = models.build_model("vjepa2", **cfg)
    x = torch.randn(2, 155, 128)
    assert m(x).shape == (2, 50)
    m.eval()
    assert m(x).shape == (2, 50)
    assert m(tubeletise(x, m.encoder.grid)).shape == (2, 50)
    d = models.build_model("vjepa2", preset="tiny", num_classes=10, n_frames=64, n_mels=96)
    assert d(torch.randn(2, 64, 96)).shape == (2, 10)


def test_seeded_build_is_deterministic():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        m = models.build_model("vjepa2", preset="tiny").eval()
        outs.append(m(torch.ones(1, 155, 128)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_classification_loss_decreases_on_8_samples():
    # 8 clips, 8 classes, each clip with its own mel profile (with 50 outputs the first ~30 steps only
    # learn to suppress the 42 unused classes, a plateau at ln 8 that says nothing about the model)
    torch.manual_seed(0)
    m = models.build_model("vjepa2", preset="tiny", num_classes=8)
    x, y = torch.randn(8, 155, 128) + torch.randn(8, 1, 128), torch.arange(8)
    from synth import train_steps
    losses = train_steps(m, x, y, steps=20, lr=5e-3)
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------- pretrain -> fine-tune
@pytest.mark.parametrize("amp,native,expect", [(True, "1", torch.bfloat16), (False, "1", torch.float32),
                                               (True, "0", torch.float32)])
def test_pretrain_uses_the_engines_bf16_rule(monkeypatch, amp, native, expect):
    """JEPA pretraining runs its matmuls in bf16 exactly where train.py does (CPUs with native bf16,
    CUDA), unless --no-amp; weights, EMA target and loss stay fp32."""
    monkeypatch.setenv("AUDIO_FORCE_CPU_BF16", native)
    torch.manual_seed(0)
    jepa, _ = build_jepa(155, 128, "tiny", {"stem": "conv"})
    seen = set()
    for enc in (jepa.encoder, jepa.target_encoder):
        lin = next(m for m in enc.modules() if isinstance(m, torch.nn.Linear))
        lin.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    data = [(torch.randn(4, 155, 128), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    hist = pretrain(jepa, data, epochs=1, lr=1e-3, log=lambda s: None, amp=amp)
    assert seen == {expect}
    assert hist[0]["amp"] == (str(expect) if expect == torch.bfloat16 else "None")
    assert math.isfinite(hist[0]["loss"])
    assert {p.dtype for p in jepa.parameters()} == {torch.float32}


def test_pretrain_writes_encoder_and_init_from_loads_it(tmp_path):
    torch.manual_seed(0)
    jepa, cfg = build_jepa(155, 128, "tiny")
    assert cfg["embed_dim"] == 32 and cfg["pred_dim"] == 16
    data = [(torch.randn(4, 155, 128), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    hist = pretrain(jepa, data, epochs=1, lr=1e-3, out_dir=str(tmp_path), log=lambda s: None)
    assert len(hist) == 1 and hist[0]["step"] == 2 and math.isfinite(hist[0]["loss"])
    path = tmp_path / "encoder.safetensors"
    assert path.exists()
    m = models.build_model("vjepa2", preset="tiny", init_from=str(path))
    for (k, a), b in zip(m.encoder.state_dict().items(), jepa.target_encoder.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert m(torch.randn(2, 155, 128)).shape == (2, 50)
    # frozen encoder (attentive probe) only trains the head
    p = models.build_model("vjepa2", preset="tiny", init_from=str(path), freeze_encoder=True).train()
    assert not p.encoder.training and all(not q.requires_grad for q in p.encoder.parameters())
    # a torch checkpoint (weights_only load) of a classifier state dict also works
    pt = tmp_path / "clf.pt"
    torch.save({"model": m.state_dict()}, pt)
    sd, _ = load_encoder_state(str(pt))
    m2 = models.build_model("vjepa2", preset="tiny", init_from=str(pt))
    torch.testing.assert_close(m2.encoder.patch_embed.weight, m.encoder.patch_embed.weight)
    # an encoder of another size is refused with a clear error
    with pytest.raises(ValueError, match="does not match"):
        models.build_model("vjepa2", preset="tiny", embed_dim=64, init_from=str(path))


def test_init_from_is_not_part_of_the_rebuild_config(tmp_path):
    enc = tiny_encoder()
    path = str(tmp_path / "e.safetensors")
    save_encoder(enc, path)
    m = models.build_model("vjepa2", preset="tiny", init_from=path)
    assert "init_from" not in m.model_config and m.model_config["embed_dim"] == 32
    assert m.pretrained_from == path
    # rebuilding from the recorded config needs no pretraining file
    models.build_model("vjepa2", **m.model_config).load_state_dict(m.state_dict())
    with pytest.raises(FileNotFoundError):
        models.build_model("vjepa2", preset="tiny", init_from=str(tmp_path / "missing.safetensors"))


def test_save_load_roundtrip_keeps_config(tmp_path):
    enc = tiny_encoder(patch_f=None)
    save_encoder(enc, str(tmp_path / "e.safetensors"))
    sd, cfg = load_encoder_state(str(tmp_path / "e.safetensors"))
    assert cfg["patch_f"] is None and cfg["embed_dim"] == 32 and cfg["depth"] == 2
    assert set(sd) == set(enc.state_dict())


def test_cli_help_and_test_fold_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--data-dir" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--data-dir", "nowhere", "--folds", "1", "5"])
    assert e.value.code == 2


def test_target_blocks_stay_whole_when_the_context_needs_room():
    """Too little context: whole blocks are dropped, never single target tokens moved into the context,
    so every target token lies in a fully masked block of the configured shape."""
    cfg = MaskConfig(n_short=6, short_t=(3, 3), short_f=(2, 2), n_long=0, context_ratio=(0.85, 0.9))
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        c, t = sample_mask(19, 8, cfg, gen)
        assert len(c) >= math.ceil(0.85 * 152) and len(t) > 0
        tgt = torch.zeros(152, dtype=torch.bool)
        tgt[t] = True
        tgt = tgt.view(19, 8)
        for i in t.tolist():
            ti, fi = divmod(i, 8)
            assert any(bool(tgt[a:a + 3, b:b + 2].all()) for a in range(max(0, ti - 2), min(ti, 16) + 1)
                       for b in range(max(0, fi - 1), min(fi, 6) + 1)), "a target token outside any whole block"


def test_target_encoder_keeps_its_own_batchnorm_statistics():
    """With a conv stem, the target encoder normalises with statistics of whole inputs (its BatchNorm
    runs on them), not the EMA of the context encoder's, which see blanked tubelets."""
    torch.manual_seed(0)
    enc = SpecViTEncoder(n_frames=155, n_mels=128, embed_dim=32, depth=1, num_heads=2, stem="conv")
    j = JEPA(enc, pred_dim=16, pred_depth=1, pred_heads=2).train()
    bn = [m for m in j.target_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.training for m in bn) and not j.target_encoder.training
    j(torch.randn(4, 155, 128) * 2 + 1, generator=torch.Generator().manual_seed(0))
    ctx_bn = [m for m in j.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not torch.allclose(bn[0].running_var, ctx_bn[0].running_var)
    before = [m.running_mean.clone() for m in bn]
    j.ema_update(0.5)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bn))
    j.eval()
    assert not any(m.training for m in bn)


# ---------------------------------------------------------------- conv stem pooling
def test_conv_stem_pools_set_the_tubelet_length_in_time():
    """The default stem reduces 8x in both axes (8-frame tubelets at least); pooling time 4x only, as the
    recurrent models' stem does, allows 4-frame tubelets: twice the time tokens, the same token width."""
    x = torch.randn(2, 155, 64)
    default = models.build_model("vjepa2", preset="tiny", n_mels=64, stem="conv", patch_f=64)
    fine = models.build_model("vjepa2", preset="tiny", n_mels=64, stem="conv", patch_f=64, patch_t=4,
                              stem_pools=[[2, 2], [2, 2], [1, 4]])
    assert default.encoder(x).shape == (2, 19, 32) and fine.encoder(x).shape == (2, 38, 32)
    assert fine.encoder(x[:, :94]).shape == (2, 23, 32)          # a 3-s crop
    assert fine.model_config["stem_pools"] == [[2, 2], [2, 2], [1, 4]] and "stem_pools" not in default.model_config
    # the maxpools of each block are the pools given
    pools = [m.kernel_size for m in fine.encoder.patch_embed.convs.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert [tuple(p) if isinstance(p, tuple) else (p, p) for p in pools] == [(2, 2), (2, 2), (1, 4)]
    with pytest.raises(ValueError, match="divisible by its reduction"):
        models.build_model("vjepa2", preset="tiny", n_mels=64, stem="conv", patch_f=64, patch_t=4)
    # rebuilt from its recorded config, the model is the same
    models.build_model("vjepa2", n_mels=64, **fine.model_config).load_state_dict(fine.state_dict())


def test_encoder_files_record_the_stem_pools_and_older_ones_mean_the_default(tmp_path):
    enc = tiny_encoder(n_mels=64, stem="conv", patch_f=64)
    path = str(tmp_path / "e.safetensors")
    save_encoder(enc, path)
    assert load_encoder_state(path)[1]["stem_pools"] == [[2, 2], [2, 2], [2, 2]]
    with pytest.raises(ValueError, match="stem_pools"):            # another stem is refused by name
        models.build_model("vjepa2", preset="tiny", n_mels=64, stem="conv", patch_f=64,
                           stem_pools=[[2, 2], [2, 2], [2, 4]], init_from=path)
    from safetensors.torch import load_file, save_file
    sd, cfg = load_encoder_state(path)
    del cfg["stem_pools"]                                           # a file written before the key existed
    save_file(load_file(path), path, metadata={"config": json.dumps(cfg)})
    m = models.build_model("vjepa2", preset="tiny", n_mels=64, stem="conv", patch_f=64, init_from=path)
    assert m.pretrained_from == path
