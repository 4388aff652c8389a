"""Training steps keep the host free: no read-back and no waiting copy inside a step, on a GPU.

A step that synchronises (``.item()``, a boolean index, a pageable host-to-GPU copy) stalls the host
until the GPU drains its queue. Each case runs one step to warm up (constants are copied to the device
once), then a second with CUDA's sync check set to raise. The ``cpu`` cases run the same code here, so the
steps themselves are checked in CI; the ``cuda`` cases need a GPU (``tools/gpu_check.sh`` runs them).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mimx.data.transforms import Normalizer
from mimx.modalities.image import mae_vit
from mimx.modalities.multimodal.model import MultiMAE, multimae_config
from mimx.modalities.video.model import videomae_vit

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def step_without_syncs(step: Callable[[], torch.Tensor], device: str) -> None:
    """Runs ``step`` (forward + backward) twice; on CUDA the second one must not synchronise."""
    assert torch.isfinite(step())
    if device != "cuda":
        assert torch.isfinite(step())
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)


def backward(loss: torch.Tensor) -> torch.Tensor:
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rel_pos", ["none", "shared"])  # shared: BEiT's bias, gathered for the visible tokens
def test_image_mae_step_with_uint8_input_and_norm_pix(device, rel_pos):
    torch.manual_seed(0)
    model = mae_vit("tiny", img_size=32, patch_size=8, depth=2, decoder_depth=1, rel_pos_bias=rel_pos,
                    abs_pos=rel_pos == "none").to(device)
    normalizer = Normalizer([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8).to(device)

    def step() -> torch.Tensor:
        noise = torch.rand(4, 16, device=device)  # as the engine draws it: on the device
        with torch.autocast(device, torch.bfloat16, enabled=rel_pos != "none"):
            loss = model(normalizer(images), noise=noise).loss
        return backward(loss)

    step_without_syncs(step, device)


@pytest.mark.parametrize("device", DEVICES)
def test_maskfeat_step_with_host_block_masks_and_hog_window(device):
    torch.manual_seed(0)
    model = mae_vit("tiny", img_size=32, patch_size=16, depth=1, encoder_mode="mask_token", decoder_depth=0,
                    target="hog", norm_pix=False, masking={"kind": "block", "ratio": 0.5, "min_block": 1})
    model.to(device)
    x = torch.randn(3, 3, 32, 32, device=device)
    host = torch.Generator().manual_seed(0)  # block masks are drawn on the host, as in training

    step_without_syncs(lambda: backward(model(x, generator=host).loss), device)


@pytest.mark.parametrize("device", DEVICES)
def test_videomae_step_with_tube_masks_and_dual_decoding(device):
    torch.manual_seed(0)
    model = videomae_vit("tiny", img_size=32, patch_size=8, num_frames=4, depth=1, decoder_depth=1,
                         decoder_mask_ratio=0.5).to(device)
    clips = torch.randn(2, 3, 4, 32, 32, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> torch.Tensor:
        decode_noise = torch.rand(2, 2 * 16, device=device)
        return backward(model(clips, generator=gen, decode_noise=decode_noise).loss)

    step_without_syncs(step, device)


@pytest.mark.parametrize("device", DEVICES)
def test_multimae_step_with_host_budgets(device):
    torch.manual_seed(0)
    model = MultiMAE(multimae_config(dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                          decoder_dim=32, decoder_depth=1, decoder_heads=2, num_visible=12,
                                          drop_inputs=0.2))).to(device)
    g = torch.Generator().manual_seed(0)
    maps = {"rgb": torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8),
            "depth": torch.rand(3, 1, 32, 32, generator=g) * 4 + 0.5,
            "semseg": torch.randint(0, 8, (3, 32, 32), generator=g)}
    maps["depth"][0, 0, :8] = float("nan")
    maps = {n: m.to(device) for n, m in maps.items()}
    present = torch.tensor([[True, True, True], [True, False, True], [True, True, True]])  # on the host
    host = torch.Generator().manual_seed(1)

    def step() -> torch.Tensor:
        weights = torch.full((3, 3), 1 / 3)  # drawn on the host by the training task
        noise = torch.rand(3, 3 * 16, device=device)
        return backward(model(maps, present=present, noise=noise, weights=weights, generator=host).loss)

    step_without_syncs(step, device)
