"""BEiT's relative position bias: table layout, the encoder that drops hidden tokens, other grids, timm export,
pretraining with it."""

import pytest
import torch
from timm.layers.pos_embed_rel import resize_rel_pos_bias_table_simple
from timm.models.beit import gen_relative_position_index

from mimx.config import UserError
from mimx.modalities.image import mae_vit
from mimx.modalities.image.interop import timm_kwargs, timm_state_dict, to_timm
from mimx.rel_pos import RelativePositionBias, relative_position_index
from mimx.timm_vit import build_timm_vit
from mimx.transformer import run_blocks


def tiny(**overrides):
    values = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_dim=32, decoder_depth=1,
                  decoder_heads=2)
    model = mae_vit("tiny", **{**values, **overrides})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or "relative_position_bias_table" in name:  # nothing left at its zero or unit init
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (1, 6)])
def test_index_is_beits_layout(grid):
    assert torch.equal(relative_position_index(grid), gen_relative_position_index(grid))
    assert torch.equal(relative_position_index(grid, prefix=0), gen_relative_position_index(grid)[1:, 1:])


@pytest.mark.parametrize("mode", ["shared", "layer"])
def test_dropping_hidden_tokens_equals_masking_them_out_of_attention(mode):
    """An MAE encoder with a relative position bias sees only the visible tokens; their features equal those of
    an encoder over every token whose attention may not read the hidden ones (each keeps its 2-D offsets)."""
    model = tiny(rel_pos_bias=mode)
    x = torch.randn(3, 3, 32, 32)
    mask = model.make_mask(x, generator=torch.Generator().manual_seed(1))
    tokens, grid = model.tokenizer(x)
    enc = model.encoder
    with torch.no_grad():
        dropped = enc(tokens, model.position(grid, x.device), mask, layout=grid)
        full = torch.cat([enc.cls_token.expand(3, -1, -1), tokens + model.position(grid, x.device)], dim=1)
        blocked = torch.cat([torch.zeros(3, 1, dtype=torch.bool), mask.mask], dim=1)
        key_mask = torch.zeros(3, 1, 1, 17).masked_fill(blocked[:, None, None, :], float("-inf"))
        biases = [table(grid) + key_mask for table in enc.rel_pos_bias]
        reference = enc.norm(run_blocks(enc.blocks, full, biases=biases))
    rows = torch.cat([torch.zeros(3, 1, dtype=torch.long), mask.ids_keep + 1], dim=1)
    expected = torch.gather(reference, 1, rows.unsqueeze(-1).expand(-1, -1, 64))
    torch.testing.assert_close(dropped, expected, rtol=1e-5, atol=1e-5)
    assert len(enc.rel_pos_bias) == (1 if mode == "shared" else 2)


def test_another_grid_reads_the_bicubically_resized_table():
    bias = RelativePositionBias((4, 4), num_heads=3)
    torch.nn.init.normal_(bias.table)
    assert bias.table_for((4, 4)) is bias.table
    resized = bias.table_for((6, 6))
    torch.testing.assert_close(resized, resize_rel_pos_bias_table_simple(bias.table, (6, 6), (11 * 11 + 3, 3)))
    assert bias((6, 6)).shape == (3, 37, 37)
    model = tiny(rel_pos_bias="shared", abs_pos=False)
    assert model.encode(torch.randn(2, 3, 48, 40)).shape == (2, 1 + 30, 64)


@pytest.mark.parametrize("mode,abs_pos,mask_token", [("shared", False, True), ("layer", True, False),
                                                     ("layer", False, True)])
def test_export_to_timm_beit_gives_the_same_features(mode, abs_pos, mask_token):
    overrides = dict(encoder_mode="mask_token", decoder_depth=0, norm_pix=False, loss="l1") if mask_token else {}
    model = tiny(rel_pos_bias=mode, abs_pos=abs_pos, layer_scale=0.1, **overrides)
    kwargs = timm_kwargs(model)
    assert kwargs["timm_class"] == "Beit"
    fresh = build_timm_vit(kwargs)
    fresh.load_state_dict(timm_state_dict(model), strict=True)  # no missing or unexpected keys
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval().forward_features(x), model.encode(x), rtol=1e-5, atol=1e-5)
        tuned = to_timm(model, num_classes=5, global_pool="avg")
        assert tuned(x).shape == (2, 5)
    names = {n for n, _ in fresh.named_parameters()}
    assert ("rel_pos_bias.relative_position_bias_table" in names) == (mode == "shared")
    assert ("blocks.1.attn.relative_position_bias_table" in names) == (mode == "layer")


def test_positions_must_exist_and_modes_are_checked():
    with pytest.raises(UserError, match="abs_pos=false leaves the encoder without positions"):
        tiny(abs_pos=False)
    with pytest.raises(UserError, match="rel_pos_bias must be one of"):
        tiny(rel_pos_bias="both")


def test_tables_learn_and_skip_weight_decay():
    model = tiny(rel_pos_bias="layer", abs_pos=False).train()
    x = torch.randn(2, 3, 32, 32)
    model(x, generator=torch.Generator().manual_seed(0)).loss.backward()
    tables = [t.table for t in model.encoder.rel_pos_bias]
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tables)
    assert {"encoder.rel_pos_bias.0.relative_position_bias_table",
            "encoder.rel_pos_bias.1.relative_position_bias_table"} <= model.no_weight_decay()


def test_a_shared_table_fine_tunes_as_one_copy_per_block():
    """BEiT fine-tunes a shared relative position bias as per-block tables that start equal to it."""
    model = tiny(rel_pos_bias="shared", abs_pos=False)
    vit = to_timm(model, rel_pos="layer").eval()
    assert type(vit).__name__ == "Beit" and vit.rel_pos_bias is None
    shared = model.encoder.rel_pos_bias[0].table
    assert all(torch.equal(block.attn.relative_position_bias_table, shared) for block in vit.blocks)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), model.encode(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="only a shared table can become one per block"):
        to_timm(tiny(rel_pos_bias="layer"), rel_pos="shared")
    with pytest.raises(UserError, match="only a shared table"):
        to_timm(tiny(), rel_pos="layer")


def test_pretrain_then_finetune_with_per_block_tables(samples, tmp_path):
    """The CLI path: pretraining with a shared bias and no absolute positions, fine-tuning with a table per
    block; layer-wise lr decay gives each block's table its block's rate, no weight decay."""
    from conftest import tiny_overrides

    from mimx.config import compose
    from mimx.modalities.image.evaluate import evaluate
    from mimx.modalities.image.export import load_image_mae
    from mimx.modalities.image.pretrain import pretrain
    from mimx.train.finetune import layer_decay_groups

    run_dir = tmp_path / "run"
    pretrain(compose("mimx.configs.image", "pretrain", tiny_overrides(
        run_dir, samples, "train.steps=4", "model.rel_pos_bias=shared", "model.abs_pos=false")))
    model = load_image_mae(run_dir)
    assert model.config.rel_pos_bias == "shared" and model.encoder_pos is None
    groups = layer_decay_groups(to_timm(model, rel_pos="layer", num_classes=10), 0.05, 0.5, depth=2)
    for group in groups:
        for name in group["names"]:
            if "relative_position_bias_table" in name:
                block = int(name.split(".")[1])
                assert group["weight_decay"] == 0 and group["lr_scale"] == 0.5 ** (2 - block)
    result = evaluate(compose("mimx.configs.image", "eval", [
        "protocol=finetune", f"checkpoint={run_dir}", f"data.train={samples}/mnist", f"data.test={samples}/mnist_test",
        f"run.dir={tmp_path / 'ft'}", "rel_pos_bias=layer", "finetune.epochs=1", "finetune.warmup_epochs=0",
        "finetune.batch_size=64", "data.label_fraction=0.1", "data.num_workers=1"]))
    assert result["rel_pos_bias"] == "layer" and result["test_samples"] == 1000
    with pytest.raises(UserError, match="rel_pos_bias='both'"):
        evaluate(compose("mimx.configs.image", "eval", [
            "protocol=finetune", f"checkpoint={run_dir}", f"data.train={samples}/mnist",
            f"data.test={samples}/mnist_test", "rel_pos_bias=both"]))
