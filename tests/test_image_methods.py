"""SimMIM and MaskFeat next to MAE: the HOG target against a per-pixel reference, the recipes end to end."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import logged_losses, tiny_overrides

from mimx.config import UserError, compose
from mimx.losses import masked_loss
from mimx.masking import gather_tokens
from mimx.modalities.image import mae_vit
from mimx.modalities.image.data import Normalizer
from mimx.modalities.image.figures import reconstruction_panels
from mimx.modalities.image.model import image_mae_config
from mimx.targets import HOGTarget, hog_cells

MIMX = [sys.executable, "-m", "mimx"]


def reference_hog(image: np.ndarray, cell: int, bins: int, window: int | None) -> np.ndarray:
    """HOG written pixel by pixel from MaskFeat's description: ``[C, H, W] -> [C, bins, H/cell, W/cell]``."""
    c, h, w = image.shape
    padded = np.pad(image.astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode="reflect")
    sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)
    if window:
        n = np.arange(window) - (window - 1) / 2
        g = np.exp(-0.5 * (n / (window / 2)) ** 2)
        weights = np.outer(g, g) / np.outer(g, g).sum()
    hist = np.zeros((c, bins, h // cell, w // cell))
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                patch = padded[ch, y:y + 3, x:x + 3]
                gx, gy = (patch * sobel).sum(), (patch * sobel.T).sum()
                vote = math.hypot(gx, gy) * (weights[y % window, x % window] if window else 1.0)
                b = math.floor(math.atan2(gx, gy) / math.pi * bins) % bins
                hist[ch, b, y // cell, x // cell] += vote
    norm = np.sqrt((hist ** 2).sum(axis=1, keepdims=True))
    return hist / np.maximum(norm, 1e-12)


@pytest.mark.parametrize("size,cell,patch", [((32, 32), 8, 16), ((16, 24), 4, 8)])
def test_hog_matches_a_per_pixel_reference(size, cell, patch):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, *size, generator=gen)
    images[1, :, :, : size[1] // 2] = 0.3  # flat areas: empty histograms stay zero, not NaN
    target = HOGTarget((patch, patch), cell=cell, bins=9)
    tokens = target(images, None)
    kh = patch // cell
    grid = (size[0] // patch, size[1] // patch)
    assert tokens.shape == (2, grid[0] * grid[1], 3 * 9 * kh * kh) and target.width(3) == tokens.shape[-1]
    for i in range(2):
        ref = reference_hog(images[i].double().numpy(), cell, 9, patch)  # [C, bins, Hc, Wc]
        ref = ref.reshape(3, 9, grid[0], kh, grid[1], kh).transpose(2, 4, 0, 1, 3, 5).reshape(grid[0] * grid[1], -1)
        np.testing.assert_allclose(tokens[i].numpy(), ref, atol=2e-5)
    assert torch.isfinite(tokens).all()


def test_hog_votes_of_straight_edges_and_invariance_to_input_normalisation():
    vertical = torch.zeros(1, 1, 16, 16)
    vertical[..., 6:] = 1.0
    hist = hog_cells(vertical, cell=8, bins=9)[0, 0]  # [bins, 2, 2]
    assert torch.equal(hist[:, :, 0], torch.eye(9)[4].view(9, 1).expand(9, 2))  # the edge's cells: one bin
    assert torch.equal(hist[:, :, 1], torch.zeros(9, 2))  # flat cells: no votes
    horizontal = vertical.transpose(-1, -2)
    assert torch.equal(hog_cells(horizontal, cell=8, bins=9)[0, 0, :, 0, 0], torch.eye(9)[0])
    # per-channel affine normalisation (what the data pipeline does) leaves the target unchanged
    # (continuous values: integer images put exactly vertical gradients on the 0/180 degree bin border)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    normalized = (x - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
    target = HOGTarget((16, 16))
    torch.testing.assert_close(target(x, None), target(normalized, None), atol=1e-5, rtol=0)


def test_maskfeat_model_scores_hog_of_hidden_patches_only():
    model = mae_vit("tiny", img_size=32, patch_size=16, depth=1, encoder_mode="mask_token", decoder_depth=0,
                    target="hog", norm_pix=False, masking={"kind": "block", "ratio": 0.5, "min_block": 1})
    x = torch.randn(3, 3, 32, 32)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.mask.mask.sum(1).tolist() == [2, 2, 2]
    # the head predicts the hidden patches only, and scores all it predicts
    assert out.pred.shape == out.target.shape == (3, 2, 108)
    assert out.mask.mask.gather(1, out.decoded).all()
    torch.testing.assert_close(out.target, gather_tokens(HOGTarget((16, 16))(x, None), out.decoded))
    full = model(x, mask=out.mask, decode_all=True)  # every patch predicted: same loss over the hidden ones
    assert full.pred.shape == (3, 4, 108)
    torch.testing.assert_close(out.loss, masked_loss(full.pred, full.target, out.mask.mask, "mse"))
    torch.testing.assert_close(out.full_prediction()[out.mask.mask], full.pred[out.mask.mask])
    assert model.decoder.mask_token is None and len(model.decoder.blocks) == 0  # a linear head, no decoder
    # the encoder's features need no mask and no target
    assert model.encode(x).shape == (3, 5, model.config.embed_dim)


def test_hog_settings_that_cannot_work_are_refused_with_the_fix():
    with pytest.raises(UserError, match="model.norm_pix=false"):
        mae_vit("tiny", img_size=32, patch_size=16, target="hog")
    with pytest.raises(UserError, match=r"model.hog_cell=8 must divide model.patch_size=4 \(e.g. model.hog_cell=2"):
        mae_vit("tiny", img_size=32, patch_size=4, target="hog", norm_pix=False)
    with pytest.raises(UserError, match="model.target must be 'pixels', 'hog' or 'tokens'"):
        mae_vit("tiny", img_size=32, patch_size=16, target="words")
    # runs from before targets were configurable keep resuming: pixel models record no target
    assert "target" not in image_mae_config(preset="tiny").architecture()
    assert image_mae_config(preset="tiny", target="hog", norm_pix=False).architecture()["target"] == "hog"


def test_hog_viewer_draws_the_true_and_predicted_histograms():
    model = mae_vit("tiny", img_size=32, patch_size=16, depth=1, encoder_mode="mask_token", decoder_depth=0,
                    target="hog", norm_pix=False, masking={"kind": "random", "ratio": 0.5})
    normalizer = Normalizer([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    images[..., 20:] = 255  # a vertical edge through the right-hand patches
    x = normalizer(images)
    mask = model.make_mask(x, generator=torch.Generator().manual_seed(0))
    out = model(x, mask=mask, decode_all=True)
    perfect = type(out)(loss=out.loss, pred=out.target, target=out.target, mask=mask, layout=out.layout)
    original, masked, true_hog, pred_hog = reconstruction_panels(model, x, mask, normalizer, perfect)
    torch.testing.assert_close(original, images.float() / 255)
    torch.testing.assert_close(pred_hog, true_hog)  # a perfect prediction draws the true HOG
    # the edge's cells draw a vertical line; the flat cells stay black
    cell = true_hog[0, 0, 16:24, 16:24]
    bright = cell > 0.5
    assert cell.max() == 1 and bright[0].sum() == 2 and torch.equal(bright, bright[:1].expand(8, -1))
    assert true_hog[0, 0, :, :8].abs().max() == 0
    # a poor prediction shows on hidden patches only
    panels = reconstruction_panels(model, x, mask, normalizer, out)
    hidden = mask.mask.view(2, 1, 2, 2).repeat_interleave(16, 2).repeat_interleave(16, 3).expand(-1, 3, -1, -1)
    assert torch.equal(panels[3][~hidden], panels[2][~hidden])


@pytest.mark.parametrize("method,extra", [
    ("simmim", ["masking.cell=1"]),
    ("maskfeat", ["model.hog_cell=2", "masking.min_block=2"]),
])
def test_method_recipes_train_evaluate_and_export(samples, tmp_path, method, extra):
    run_dir = tmp_path / method
    args = tiny_overrides(run_dir, samples, f"method={method}", "train.steps=80", "train.log_every=8",
                          "train.figure_every=80", *extra)
    args = [a for a in args if not a.startswith("model.decoder_")]  # the method's linear head, not a decoder
    cfg = compose("mimx.configs.image", "pretrain", args)
    assert cfg.model.encoder_mode == "mask_token" and cfg.model.decoder_depth == 0
    proc = subprocess.run([*MIMX, "image", "pretrain", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = logged_losses(run_dir)
    assert len(losses) == 10 and sum(losses[-2:]) / 2 < 0.85 * sum(losses[:2]) / 2, losses
    assert (run_dir / "figures" / "step-0000080.png").exists()
    proc = subprocess.run([*MIMX, "image", "eval", "knn", f"checkpoint={run_dir}",
                           f"data.train={samples}/mnist", f"data.test={samples}/mnist_test", "data.num_workers=0"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(run_dir.glob("eval-knn*.json"))
    proc = subprocess.run([*MIMX, "image", "export", str(run_dir), str(tmp_path / "export")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
