"""Parity with transformers' ViTMAE and ViTForMaskedImageModeling (randomly initialised, nothing downloaded) and
timm export."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.transformers
from transformers import ViTConfig, ViTForMaskedImageModeling, ViTMAEConfig, ViTMAEForPreTraining  # noqa: E402

try:  # transformers 5; 4.x has MAE's numpy helper instead
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding
except ImportError:
    from transformers.models.vit_mae.modeling_vit_mae import get_2d_sincos_pos_embed

    build_2d_sinusoidal_position_embedding = None

from mimx.config import UserError  # noqa: E402
from mimx.modalities.image import mae_vit  # noqa: E402
from mimx.modalities.image.interop import (  # noqa: E402
    build_timm_vit,
    from_transformers,
    normalise_hf_keys,
    timm_kwargs,
    timm_state_dict,
    to_timm,
)
from mimx.pos_embed import sincos_grid  # noqa: E402


def _hf_model(norm_pix: bool, image: int = 32, patch: int = 8, mask_ratio: float = 0.75) -> ViTMAEForPreTraining:
    torch.manual_seed(0)
    cfg = ViTMAEConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                       decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                       decoder_intermediate_size=128, image_size=image, patch_size=patch, norm_pix_loss=norm_pix,
                       mask_ratio=mask_ratio)
    model = ViTMAEForPreTraining(cfg).eval()
    grid = image // patch
    with torch.no_grad():  # what a pretrained checkpoint holds (transformers 5 leaves it zero at random init)
        for table in (model.vit.embeddings.position_embeddings, model.decoder.decoder_pos_embed):
            d = table.shape[-1]
            if build_2d_sinusoidal_position_embedding is None:  # already in the checkpoints' layout
                table.copy_(torch.from_numpy(get_2d_sincos_pos_embed(d, grid, add_cls_token=True)).float()[None])
                continue
            t = build_2d_sinusoidal_position_embedding(grid, grid, d, cls_token=True)
            table.copy_(torch.cat([t[:, d // 2:], t[:, : d // 2]], dim=1)[None])
        for p in model.parameters():  # make biases and norms non-trivial
            if p.ndim == 1 and p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("norm_pix,mask_ratio", [(True, 0.75), (False, 0.75), (True, 0.6)])
def test_same_loss_and_predictions_as_transformers(norm_pix, mask_ratio):
    hf = _hf_model(norm_pix, mask_ratio=mask_ratio)
    mae = from_transformers(hf).eval()
    x = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 16)
    with torch.no_grad():
        theirs = hf(pixel_values=x, noise=noise)
        ours = mae(x, noise=noise)
    assert torch.equal(theirs.mask.bool(), ours.mask.mask)
    torch.testing.assert_close(ours.pred, theirs.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-6, atol=1e-6)
    # the encoder features agree with transformers' encoder on the same visible tokens
    with torch.no_grad():
        enc = hf.vit(pixel_values=x, noise=noise).last_hidden_state
        mine = mae.encoder(*_tokens_pos(mae, x), ours.mask)
    torch.testing.assert_close(mine, enc, rtol=1e-5, atol=1e-5)


def test_simmim_same_loss_and_reconstruction_as_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=32,
                    patch_size=8, encoder_stride=8, layer_norm_eps=1e-6, architectures=["ViTForMaskedImageModeling"])
    hf = ViTForMaskedImageModeling(cfg).eval()
    with torch.no_grad():  # fixed sin-cos positions (mimx computes them), non-trivial biases and mask token
        hf.vit.embeddings.position_embeddings.copy_(torch.cat([torch.zeros(1, 64), sincos_grid((4, 4), 64)])[None])
        hf.vit.embeddings.mask_token.normal_()
        for p in hf.parameters():
            if p.ndim == 1 and p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    mae = from_transformers(str(tmp_path)).eval()  # a saved folder: the architecture picks the converter
    c = mae.config
    assert (c.encoder_mode, c.decoder_depth, c.loss, c.norm_pix) == ("mask_token", 0, "l1", False)
    x = torch.randn(3, 3, 32, 32)
    hidden = torch.rand(3, 16).argsort(1) < 10  # 10 of 16 patches hidden per image
    with torch.no_grad():
        theirs = hf(pixel_values=x, bool_masked_pos=hidden)
        ours = mae(x, mask=hidden, decode_all=True)
        scored = mae(x, mask=hidden)  # what training runs: the head on the hidden patches only
    torch.testing.assert_close(mae.unpatchify(ours.pred, (4, 4)), theirs.reconstruction, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-5, atol=1e-6)  # theirs: + 1e-5 in the denominator
    torch.testing.assert_close(scored.loss, theirs.loss, rtol=1e-5, atol=1e-6)
    learned = ViTForMaskedImageModeling(cfg)  # learned positions cannot be held
    with pytest.raises(UserError, match="not the fixed MAE sin-cos table"):
        from_transformers(learned)


def _tokens_pos(mae, x):
    tokens, grid = mae.tokenizer(x)
    return tokens, mae.encoder_pos(grid, x.device)


def test_transformers_4x_key_names_are_understood():
    # the same layer as transformers 4.x and 5.x name it; the installed version's own names are what the parity
    # tests above convert
    v4 = ["vit.encoder.layer.0.attention.attention.query.weight", "vit.encoder.layer.0.attention.attention.key.bias",
          "vit.encoder.layer.0.attention.attention.value.weight", "vit.encoder.layer.0.attention.output.dense.bias",
          "vit.encoder.layer.0.intermediate.dense.weight", "vit.encoder.layer.0.output.dense.weight",
          "vit.encoder.layer.0.layernorm_before.weight", "vit.layernorm.bias",
          "decoder.decoder_layers.1.attention.attention.query.bias", "decoder.decoder_layers.1.output.dense.bias",
          "videomae.encoder.layer.3.attention.attention.q_bias", "videomae.encoder.layer.3.intermediate.dense.bias"]
    v5 = ["vit.layers.0.attention.q_proj.weight", "vit.layers.0.attention.k_proj.bias",
          "vit.layers.0.attention.v_proj.weight", "vit.layers.0.attention.o_proj.bias",
          "vit.layers.0.mlp.fc1.weight", "vit.layers.0.mlp.fc2.weight",
          "vit.layers.0.layernorm_before.weight", "vit.layernorm.bias",
          "decoder.decoder_layers.1.attention.q_proj.bias", "decoder.decoder_layers.1.mlp.fc2.bias",
          "videomae.layers.3.attention.q_proj.bias", "videomae.layers.3.mlp.fc1.bias"]
    t = torch.zeros(1)
    assert list(normalise_hf_keys(dict.fromkeys(v4, t))) == v5
    assert list(normalise_hf_keys(dict.fromkeys(v5, t))) == v5


def test_zero_position_table_is_refused_with_the_reason():
    hf = _hf_model(True)
    with torch.no_grad():
        hf.vit.embeddings.position_embeddings.zero_()
    with pytest.raises(UserError, match="all zeros"):
        from_transformers(hf)


@pytest.mark.parametrize("kwargs", [dict(img_size=32, patch_size=8),
                                    dict(img_size=[24, 40], patch_size=8),
                                    dict(img_size=32, patch_size=4, encoder_mode="mask_token"),
                                    dict(img_size=32, patch_size=8, layer_scale=0.1)])
def test_timm_export_round_trip(kwargs):
    torch.manual_seed(0)
    mae = mae_vit("tiny", depth=2, decoder_depth=1, decoder_dim=32, decoder_heads=2, **kwargs).eval()
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    vit = to_timm(mae).eval()
    fresh = build_timm_vit(timm_kwargs(mae))  # a plain timm ViT takes the export with strict=True
    result = fresh.load_state_dict(timm_state_dict(mae), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, *mae.config.image_hw)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), mae.encode(x), rtol=1e-5, atol=1e-5)
    assert not any("mask" in k for k in vit.state_dict())
    assert any(k.endswith("ls1.gamma") for k in vit.state_dict()) == bool(kwargs.get("layer_scale"))


def test_pretraining_continues_from_a_transformers_folder(samples, tmp_path):
    from conftest import tiny_overrides

    from mimx.config import compose
    from mimx.modalities.image.pretrain import pretrain

    hf = _hf_model(norm_pix=True, image=16, patch=4)
    hf.save_pretrained(tmp_path / "hf")
    sizes = ["model.embed_dim=64", "model.num_heads=4", "model.decoder_dim=32", "model.decoder_depth=2",
             "model.decoder_heads=4"]
    def overrides(run_dir):
        return [o for o in tiny_overrides(run_dir, samples, "train.steps=1", "train.lr=0",
                                          f"train.init={tmp_path / 'hf'}") if not o.startswith("model.decoder_")]

    pretrain(compose("mimx.configs.image", "pretrain", [*overrides(tmp_path / "run"), *sizes]))
    from safetensors.torch import load_file

    ours = load_file(str(tmp_path / "run" / "model.safetensors"))
    theirs = from_transformers(hf).state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(UserError, match="embed_dim"):  # a transformers model of another width
        pretrain(compose("mimx.configs.image", "pretrain", [*overrides(tmp_path / "other"), *sizes[1:]]))
