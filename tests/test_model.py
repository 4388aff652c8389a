import pytest
import torch

from mimx.config import UserError
from mimx.modalities.image import PRESETS, ImageMAE, image_mae_config, mae_vit


def small(**kw):
    base = dict(img_size=32, patch_size=8, depth=2, decoder_depth=1, decoder_dim=32, decoder_heads=2)
    return mae_vit("tiny", **{**base, **kw})


def test_forward_deterministic_given_noise_and_shapes():
    torch.manual_seed(0)
    m = small().eval()
    x = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    a, b = m(x, noise=noise), m(x, noise=noise)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.pred, b.pred)
    assert a.pred.shape == a.target.shape == (2, 16, 8 * 8 * 3)
    assert int(a.mask.mask.sum()) == 2 * 12
    # a given mask gives the same output as the noise that produced it
    c = m(x, mask=a.mask.mask)
    assert torch.allclose(c.loss, a.loss, atol=1e-6)
    # only hidden tokens count: changing predictions at visible tokens must not change the loss
    from mimx.losses import masked_loss
    pred = a.pred.clone()
    pred[~a.mask.mask] += 100
    assert torch.allclose(masked_loss(pred, a.target, a.mask.mask), a.loss)


def test_encode_has_no_masking_and_supports_non_square():
    m = small(img_size=[24, 40]).eval()
    feats = m.encode(torch.randn(2, 3, 24, 40))
    assert feats.shape == (2, 1 + 3 * 5, 192)
    # the model also runs at another size divisible by the patch
    assert m.encode(torch.randn(1, 3, 16, 16)).shape == (1, 5, 192)


def test_mask_token_mode_sees_every_token():
    m = small(encoder_mode="mask_token", decoder_depth=0).eval()
    x = torch.randn(2, 3, 32, 32)
    out = m(x, generator=torch.Generator().manual_seed(0))
    hidden = int(out.mask.mask[0].sum())
    assert out.pred.shape == (2, hidden, 192) and hidden == 12  # the linear head predicts the hidden patches
    assert torch.isfinite(out.loss)
    full = m(x, mask=out.mask, decode_all=True)
    assert full.pred.shape == (2, 16, 192)
    torch.testing.assert_close(full.loss, out.loss)


@pytest.mark.parametrize("kind,extra", [("block", {"min_block": 2}), ("coarse", {"cell": 2})])
def test_other_maskings_train(kind, extra):
    m = small(masking={"kind": kind, "ratio": 0.5, **extra})
    out = m(torch.randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert int(out.mask.mask[0].sum()) == 8


def test_presets_match_published_sizes():
    # ViT-B/16 encoder: 85.8M parameters (timm vit_base_patch16_224 without head)
    cfg = image_mae_config(preset="base")
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (768, 12, 12)
    m = ImageMAE(cfg)
    enc = sum(p.numel() for n, p in m.named_parameters() if n.startswith(("encoder.", "tokenizer.")))
    assert abs(enc - 85.6e6) < 0.3e6  # (timm counts the learned pos_embed table on top: 85.8M)
    assert set(PRESETS) == {"tiny", "small", "base", "large", "huge"}


def test_bad_sizes_and_ratios_get_clear_errors():
    with pytest.raises(ValueError, match="not divisible by model.patch_size=16"):
        mae_vit("tiny", img_size=100)
    m = small()
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        m(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        small(masking={"kind": "random", "ratio": 1.0})
    with pytest.raises(UserError, match="unknown model.preset"):
        image_mae_config(preset="gigantic")
    with pytest.raises(UserError, match="did you mean model.embed_dim"):
        image_mae_config({"embed_dimm": 3})


def test_fused_unless_grad_runs_sdpa_for_inference_only(monkeypatch):
    """The CPU bf16 attention choice: fused SDPA without autograd, matmul + softmax with it; same values."""
    from torch.nn import functional

    from mimx.transformer import FUSED_UNLESS_GRAD, set_fused_attention

    calls = []
    sdpa = functional.scaled_dot_product_attention
    monkeypatch.setattr(functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    model = mae_vit("tiny", img_size=32, patch_size=8, depth=2, decoder_depth=1).eval()
    assert set_fused_attention(model, FUSED_UNLESS_GRAD) == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = model.encode(x)
    assert len(calls) == 2
    explicit = model.encode(x)
    assert len(calls) == 2 and explicit.requires_grad
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-4)


def test_compiled_model_matches_eager_without_dynamo_warnings():
    """``train.compile=true`` runs the same computation; tracing meets nothing dynamo warns about (the
    position tables' caches are bypassed while compiling), and the next step reuses the graph."""
    import warnings

    torch.manual_seed(0)
    model = mae_vit("tiny", img_size=32, patch_size=8, depth=2, decoder_depth=1)
    twin = mae_vit("tiny", img_size=32, patch_size=8, depth=2, decoder_depth=1)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    fwd = torch.compile(model, backend="aot_eager")  # dynamo and autograd tracing; the training test builds kernels
    with warnings.catch_warnings(record=True) as caught:  # first call: the position tables are built while tracing
        warnings.simplefilter("always")
        compiled = fwd(x, generator=torch.Generator().manual_seed(0)).loss
    assert not [str(w.message) for w in caught if "Dynamo" in str(w.message)]
    compiled.backward()
    with torch._dynamo.config.patch(error_on_recompile=True):  # a cached table must not change the guards
        fwd(x, generator=torch.Generator().manual_seed(1)).loss.backward()
    model.zero_grad(set_to_none=True)
    compiled = fwd(x, generator=torch.Generator().manual_seed(0)).loss
    compiled.backward()
    eager = twin(x, generator=torch.Generator().manual_seed(0)).loss
    eager.backward()
    torch.testing.assert_close(compiled.detach(), eager.detach(), rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
