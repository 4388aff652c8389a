"""The reconstruction viewer: norm-pix undone with the original's patch statistics, seeded masks, all sources."""

import subprocess
import sys

import torch
from conftest import tiny_overrides
from PIL import Image

from mimx.autoencoder import MAEOutput
from mimx.config import compose
from mimx.modalities.image import mae_vit
from mimx.modalities.image.data import Normalizer
from mimx.modalities.image.figures import reconstruction_panels
from mimx.modalities.image.pretrain import pretrain
from mimx.patches import normalize_patches, patchify


def test_perfect_norm_pix_prediction_gives_back_the_original():
    torch.manual_seed(0)
    model = mae_vit("tiny", img_size=32, patch_size=8, depth=1, decoder_depth=1, decoder_dim=32, decoder_heads=2)
    normalizer = Normalizer([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    x = normalizer(images)
    mask = model.make_mask(x, generator=torch.Generator().manual_seed(0))
    target = normalize_patches(patchify(x, (8, 8)))  # what a perfect norm-pix model predicts
    out = MAEOutput(loss=torch.zeros(()), pred=target, target=target, mask=mask, layout=(4, 4))
    original, masked, recon, pasted = reconstruction_panels(model, x, mask, normalizer, out)
    torch.testing.assert_close(recon, images.float() / 255, atol=2e-3, rtol=0)
    torch.testing.assert_close(pasted, original, atol=2e-3, rtol=0)
    # without the un-normalisation the picture would be wrong: the raw prediction is not the image
    assert (normalizer.invert(model.unpatchify(target, (4, 4))) - original).abs().max() > 0.1
    # the masked panel is grey exactly on hidden patches
    hidden = mask.mask.view(2, 1, 4, 4).repeat_interleave(8, 2).repeat_interleave(8, 3).expand(-1, 3, -1, -1)
    assert torch.all(masked[hidden] == 0.5) and torch.equal(masked[~hidden], original[~hidden])


def test_visualize_command_is_seeded_and_reads_files_folders_and_shards(samples, tmp_path):
    run_dir = tmp_path / "run"
    pretrain(compose("mimx.configs.image", "pretrain", tiny_overrides(run_dir, samples, "train.steps=2")))
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (80 * i, 40, 200 - 60 * i)).save(folder / f"img{i}.png")
    outs = {}
    for name, seed, sources in [("a", 0, [str(folder), f"{samples}/mnist_test"]), ("b", 0, None), ("c", 1, None)]:
        cmd = [sys.executable, "-m", "mimx", "image", "visualize", str(run_dir), *(sources or outs["a"][1]),
               "--num", "5", "--seed", str(seed), "--out", str(tmp_path / f"{name}.png")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[name] = ((tmp_path / f"{name}.png").read_bytes(), sources or outs["a"][1])
    assert outs["a"][0] == outs["b"][0]  # same seed, same figure
    assert outs["a"][0] != outs["c"][0]  # another mask
    figure = Image.open(tmp_path / "a.png")
    assert figure.width > figure.height / 5 * 4 * 0.9  # 4 columns, 5 rows of square images
