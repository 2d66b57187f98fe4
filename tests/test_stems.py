"""Input stems (models/stems.py) and their use in Mamba, Liquid-S4 and the V-JEPA2 ViT."""
import pytest
import torch

from models import build_model
from models.stems import ConvTokenizer, LinearTokenizer, build_tokenizer


def test_conv_tokenizer_shapes_and_length():
    tok = ConvTokenizer(128, 40)
    assert tok.bands == 8 and tok.time_stride == 2
    x = torch.randn(3, 155, 128)
    y = tok(x)
    assert y.shape == (3, 77, 40) and tok.out_len(155) == 77
    # each output step depends on the input frames near it only (local receptive field)
    x2 = x.clone()
    x2[:, 100:] += 5.0
    y2 = tok.eval()(x2)
    assert torch.allclose(tok(x)[:, :45], y2[:, :45])
    assert not torch.allclose(tok(x)[:, 60:], y2[:, 60:])


def test_linear_tokenizer_stacks_frames_and_loads_legacy_keys():
    tok = LinearTokenizer(6, 4, frame_stack=2)
    x = torch.randn(2, 5, 6)
    y = tok(x)
    assert y.shape == (2, 3, 4) and tok.out_len(5) == 3
    manual = torch.nn.functional.pad(x, (0, 0, 0, 1)).reshape(2, 3, 12) @ tok.proj.weight.T + tok.proj.bias
    assert torch.allclose(y, manual, atol=1e-6)
    legacy = {"weight": tok.proj.weight.detach().clone() * 2, "bias": tok.proj.bias.detach().clone()}
    fresh = LinearTokenizer(6, 4, frame_stack=2)
    fresh.load_state_dict(legacy)
    assert torch.equal(fresh.proj.weight, legacy["weight"])


def test_bad_stem_names_and_pools():
    with pytest.raises(ValueError, match="unknown stem"):
        build_tokenizer("fancy", 128, 16)
    small = ConvTokenizer(8, 16, pools=((1, 4), (1, 4), (1, 4)))            # pools clipped to the bands left
    assert small.bands == 1 and small(torch.randn(2, 5, 8)).shape == (2, 5, 16)
    with pytest.raises(ValueError, match="unknown stem"):
        build_model("vjepa2", 5, 32, 40, preset="tiny", stem="fancy")


@pytest.mark.parametrize("name", ["mamba", "liquid_s4"])
def test_sequence_models_with_conv_stem(name):
    torch.manual_seed(0)
    m = build_model(name, 7, 64, 50, preset="tiny", stem="conv", stem_channels=[4, 8, 8],
                    stem_pools=[[2, 2], [1, 2], [1, 4]])
    x = torch.randn(4, 50, 64)
    out = m(x)
    assert out.shape == (4, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_liquid_s4_kernel_length_follows_the_stem():
    m = build_model("liquid_s4", 5, 64, 50, preset="tiny", stem="conv")
    assert m.encoder.out_len(50) == 25
    assert all(blk.layer.kernel.l_max == 25 for blk in m.blocks)


def test_vit_conv_stem_keeps_grid_and_accepts_tubelets():
    torch.manual_seed(0)
    m = build_model("vjepa2", 5, 128, 155, preset="tiny", stem="conv").eval()
    enc = m.encoder
    x = torch.randn(2, 155, 128)
    feats = enc(x)
    assert feats.shape == (2, 152, 32)
    assert torch.allclose(feats, enc(enc.to_tubelets(x), tubelets=True), atol=1e-6)
    assert m(x).shape == (2, 5)


def test_vit_conv_stem_context_ignores_hidden_tubelets():
    """JEPA context tokens must carry nothing from the masked (target) tubelets."""
    torch.manual_seed(0)
    enc = build_model("vjepa2", 5, 128, 155, preset="tiny", stem="conv").eval().encoder
    tub = enc.to_tubelets(torch.randn(1, 155, 128))
    keep = torch.arange(0, 152, 2).unsqueeze(0)                   # every other token
    hidden = torch.ones(152, dtype=torch.bool)
    hidden[keep[0]] = False
    tub2 = tub.clone()
    tub2[:, hidden] += torch.randn_like(tub2[:, hidden]) * 3
    assert torch.allclose(enc(tub, keep_idx=keep, tubelets=True), enc(tub2, keep_idx=keep, tubelets=True), atol=1e-5)
    # without blanking the stem would leak: the full-input features do change
    assert not torch.allclose(enc(tub, tubelets=True)[:, keep[0]], enc(tub2, tubelets=True)[:, keep[0]], atol=1e-3)


def test_jepa_with_conv_stem_trains_and_the_target_keeps_its_batchnorm_statistics():
    from training.jepa import build_jepa

    torch.manual_seed(0)
    j, _ = build_jepa(155, 128, "tiny", {"stem": "conv"})
    j.train()
    bn = [m for m in j.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    bn_t = [m for m in j.target_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    init = bn_t.running_mean.clone()
    loss = j(torch.randn(3, 155, 128))
    loss.backward()
    assert torch.isfinite(loss)
    assert not torch.allclose(bn_t.running_mean, init)                    # statistics of the whole inputs
    assert not torch.allclose(bn.running_mean, bn_t.running_mean)         # not the masked inputs'
    kept = bn_t.running_mean.clone()
    j.ema_update(0.0)                                                     # parameters copied, statistics kept
    assert torch.equal(bn_t.running_mean, kept)
    assert all(torch.equal(a, b) for a, b in zip(j.target_encoder.parameters(), j.encoder.parameters()))
