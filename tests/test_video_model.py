"""VideoMAE: parity with transformers, tube and dual masking, positions, targets, classifier."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mimx.config import UserError
from mimx.masking import Mask, RunningCellDecoding, decode_subset, running_cell_pattern, tube_mask
from mimx.modalities.video.classifier import VideoClassifier
from mimx.modalities.video.interop import encoder_state_dict, from_transformers
from mimx.modalities.video.model import VideoMAE, video_mae_config, videomae_vit
from mimx.pos_embed import sincos_index_table

transformers = pytest.importorskip("transformers")

TINY = dict(img_size=32, num_frames=4, tubelet_size=2, patch_size=8, embed_dim=48, depth=2, num_heads=3,
            decoder_dim=32, decoder_depth=1, decoder_heads=2)


def _hf_videomae(use_mean_pooling: bool, norm_pix: bool = True):
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    config = VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=64,
                            num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                            decoder_intermediate_size=64, use_mean_pooling=use_mean_pooling,
                            norm_pix_loss=norm_pix)
    return VideoMAEForPreTraining(config).eval()


@pytest.mark.transformers
@pytest.mark.parametrize("use_mean_pooling,norm_pix", [(True, True), (False, True), (True, False)])
def test_from_transformers_gives_the_same_loss_and_predictions(use_mean_pooling, norm_pix):
    torch.manual_seed(0)
    hf = _hf_videomae(use_mean_pooling, norm_pix)
    mae = from_transformers(hf).eval()
    clips = torch.randn(2, 4, 3, 32, 32)  # transformers: [B, T, C, H, W]
    mask = tube_mask(2, 2, 16, 0.75, generator=torch.Generator().manual_seed(1)).mask
    with torch.no_grad():
        ref = hf(clips, bool_masked_pos=mask)
        out = mae(clips.permute(0, 2, 1, 3, 4), mask=mask)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    hidden_pred = out.pred[mask].view(2, -1, out.pred.shape[-1])
    torch.testing.assert_close(hidden_pred, ref.logits, rtol=1e-4, atol=1e-5)


@pytest.mark.transformers
def test_index_table_is_videomae_table():
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    torch.testing.assert_close(sincos_index_table(50, 24), get_sinusoid_encoding_table(50, 24)[0])


def test_tube_mask_repeats_one_spatial_mask_with_exact_count():
    mask = tube_mask(3, 4, 16, 0.9, generator=torch.Generator().manual_seed(0))
    frames = mask.mask.view(3, 4, 16)
    assert torch.equal(frames, frames[:, :1].expand_as(frames))
    assert mask.mask.sum(1).tolist() == [4 * (16 - 1)] * 3  # floor(16 * 0.1) = 1 visible per frame


def test_running_cell_pattern_runs_through_every_cell_position():
    pattern = running_cell_pattern((4, 2, 2), 0.5).view(4, 4)
    assert pattern.sum(1).tolist() == [2, 2, 2, 2]  # half of each 2x2 cell per frame
    assert pattern[0].tolist() == [True, True, False, False]
    assert pattern[1].tolist() == [False, True, True, False]  # shifted by one in the next frame
    assert pattern.any(0).all()  # every position is rebuilt in some frame


def test_decode_subset_takes_an_exact_share_of_hidden_tokens_running_cells_first():
    grid = (4, 4, 4)
    mask = tube_mask(5, 4, 16, 0.75, generator=torch.Generator().manual_seed(0))
    ids = decode_subset(mask, grid, 0.5, generator=torch.Generator().manual_seed(1))
    hidden = 64 - mask.num_visible
    assert ids.shape == (5, round(hidden * 0.5))
    assert bool(mask.mask.gather(1, ids).all())  # only hidden tokens are decoded
    assert all(len(set(row.tolist())) == ids.shape[1] for row in ids)
    pattern = running_cell_pattern(grid, 0.5)
    in_pattern = pattern[ids].float().mean()
    assert in_pattern > 0.95  # the running-cell tokens fill the budget before any other
    again = decode_subset(mask, grid, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ids, again)


def test_dual_masking_model_decodes_only_the_subset():
    torch.manual_seed(0)
    model = VideoMAE(video_mae_config(**TINY, decoder_mask_ratio=0.5))
    x = torch.randn(2, 3, 4, 32, 32)
    noise = torch.rand(2, 16)
    out = model(x, noise=noise, decode_noise=torch.rand(2, 32))
    hidden = 32 - out.mask.num_visible
    assert out.decoded is not None and out.pred.shape == (2, round(hidden * 0.5), 2 * 8 * 8 * 3)
    assert torch.equal(out.target, model.target(x, out.layout).gather(
        1, out.decoded.unsqueeze(-1).expand(-1, -1, out.target.shape[-1])))
    full = model(x, noise=noise, decode_all=True)  # the viewer's path: every hidden token rebuilt
    assert full.decoded is None and full.pred.shape == (2, 32, 384)
    out.loss.backward()
    assert model.decoder.mask_token.grad is not None
    assert repr(RunningCellDecoding(0.5)) == "RunningCellDecoding(ratio=0.5, cell=2)"


def test_grid_positions_serve_other_clip_sizes_and_features():
    model = VideoMAE(video_mae_config(**TINY, pos_embed="grid"))
    for shape in ((1, 3, 4, 32, 32), (2, 3, 8, 16, 24)):
        x = torch.randn(*shape)
        out = model(x, generator=torch.Generator().manual_seed(0))
        assert out.pred.shape[1] == (shape[2] // 2) * (shape[3] // 8) * (shape[4] // 8)
        assert model.features(x).shape == (shape[0], 48)
    assert model.encode(torch.randn(1, 3, 4, 32, 32)).shape == (1, 32, 48)  # no class token


def test_presets_and_bad_sizes():
    assert videomae_vit("small").config.decoder_dim == 192
    assert videomae_vit("base").config.embed_dim == 768
    with pytest.raises(UserError, match="not divisible"):
        VideoMAE(video_mae_config(**{**TINY, "num_frames": 5}))
    with pytest.raises(UserError, match="unknown model.preset"):
        video_mae_config(preset="gigantic")


def test_norm_pix_target_per_tubelet_and_channel():
    model = VideoMAE(video_mae_config(**TINY))
    x = torch.randn(1, 3, 4, 32, 32)
    target = model.target(x, (2, 4, 4)).view(1, 32, 2 * 8 * 8, 3)
    torch.testing.assert_close(target.mean(2), torch.zeros(1, 32, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.std(2), torch.ones(1, 32, 3), atol=1e-3, rtol=0)


def test_classifier_averages_view_probabilities():
    torch.manual_seed(0)
    mae = VideoMAE(video_mae_config(**TINY))
    clf = VideoClassifier(mae, num_classes=5).eval()
    clips = torch.randn(2, 3, 3, 4, 32, 32)  # 2 videos x 3 views
    with torch.no_grad():
        multi = clf(clips)
        single = torch.stack([clf(clips[:, v]).softmax(-1) for v in range(3)]).mean(0)
    torch.testing.assert_close(multi.exp(), single, rtol=1e-4, atol=1e-6)
    # the encoder weights are the pretrained ones; names carry layer depths for lr decay
    torch.testing.assert_close(clf.blocks[1].mlp.fc1.weight, mae.encoder.blocks[1].mlp.fc1.weight)
    names = {n.split(".")[0] for n, _ in clf.named_parameters()}
    assert names == {"patch_embed", "blocks", "fc_norm", "head"}


def test_encoder_export_names():
    state = encoder_state_dict(VideoMAE(video_mae_config(**TINY)))
    assert state["pos_embed"].shape == (1, 32, 48)
    assert state["patch_embed.proj.weight"].shape == (48, 3, 2, 8, 8)
    assert {k.split(".")[0] for k in state} == {"pos_embed", "patch_embed", "blocks", "norm"}


def test_mask_from_bool_matches_tube_mask_ids():
    mask = tube_mask(2, 2, 16, 0.5, generator=torch.Generator().manual_seed(3))
    again = Mask.from_bool(mask.mask)
    assert torch.equal(again.mask, mask.mask) and again.num_visible == mask.num_visible


@pytest.mark.transformers
def test_a_saved_transformers_videomae_converts_for_train_init(tmp_path):
    from mimx.modalities.video.data import VideoDataConfig
    from mimx.modalities.video.model import VideoMAE, video_mae_config
    from mimx.modalities.video.pretrain import VideoPretrainTask
    from mimx.train.checkpoint import initial_weights

    torch.manual_seed(0)
    hf = _hf_videomae(use_mean_pooling=False)
    hf.save_pretrained(tmp_path / "hf")
    reference = from_transformers(hf)
    config = video_mae_config(dataclasses.asdict(reference.config))
    task = VideoPretrainTask(config, VideoDataConfig(shards="unused"))
    state = initial_weights(tmp_path / "hf", {"modality": "video", **task.meta()}, task.convert_weights)
    model = VideoMAE(config)
    model.load_state_dict(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.state_dict().items())


def test_tubelet_hog_is_each_frames_image_hog_in_token_order():
    from mimx.targets import HOGTarget

    x = torch.rand(2, 3, 4, 16, 24)  # [B, C, T, H, W]: tubelets 2 x 8 x 8 -> grid (2, 2, 3)
    video = HOGTarget((2, 8, 8), cell=4)(x, (2, 2, 3))
    image = HOGTarget((8, 8), cell=4)
    per_frame = [image(x[:, :, f], (2, 3)) for f in range(4)]  # [B, 6, 108] each
    assert video.shape == (2, 12, 2 * 108) and HOGTarget((2, 8, 8), cell=4).width(3) == 216
    for step in range(2):  # token (step, row, col) holds frame 2*step then frame 2*step + 1
        tokens = video[:, step * 6:(step + 1) * 6]
        torch.testing.assert_close(tokens, torch.cat([per_frame[2 * step], per_frame[2 * step + 1]], dim=-1))
    glyphs = HOGTarget((2, 8, 8), cell=4).render(video, (2, 2, 3), 3)
    assert glyphs.shape == (2, 1, 4, 16, 24) and glyphs.min() >= 0 and glyphs.max() <= 1


def test_cube_masks_are_exact_and_span_time():
    from mimx.masking import block_mask

    grid = (4, 8, 8)
    masks = block_mask(64, grid, 0.4, seed=0).mask.view(64, *grid)
    assert bool((masks.flatten(1).sum(1) == round(256 * 0.4)).all())
    # blocks run over several time steps (not one frame), yet the mask changes over time (not a tube)
    same_as_next = (masks[:, 1:] == masks[:, :-1]).float().mean().item()
    assert 0.6 < same_as_next < 0.98
    assert not all(torch.equal(m[0], m[t]) for m in masks for t in range(1, 4))


def test_maskfeat_video_config_errors():
    with pytest.raises(UserError, match="linear head needs model.encoder_mode=mask_token"):
        VideoMAE(video_mae_config({**TINY, "decoder_depth": 0}))
    with pytest.raises(UserError, match="model.norm_pix=false"):
        VideoMAE(video_mae_config({**TINY, "target": "hog", "encoder_mode": "mask_token"}))
    with pytest.raises(UserError, match="dual masking"):
        VideoMAE(video_mae_config({**TINY, "encoder_mode": "mask_token", "decoder_mask_ratio": 0.5}))
