import math

import pytest
import torch

from mimx.pos_embed import SinCosGridPosition, sincos_1d, sincos_grid


def test_sincos_1d_formula():
    e = sincos_1d(torch.tensor([0.0, 3.0]), 8)
    omega = [1 / 10000 ** (i / 4) for i in range(4)]
    assert torch.allclose(e[1, :4], torch.tensor([math.sin(3 * w) for w in omega], dtype=torch.float64))
    assert torch.allclose(e[1, 4:], torch.tensor([math.cos(3 * w) for w in omega], dtype=torch.float64))
    assert torch.equal(e[0], torch.cat([torch.zeros(4), torch.ones(4)]).double())


@pytest.mark.transformers
def test_2d_layout_matches_transformers_vitmae():
    pytest.importorskip("transformers")
    from transformers.models.vit_mae import modeling_vit_mae

    for h, w, d in [(4, 4, 64), (14, 14, 768), (3, 5, 32)]:
        if hasattr(modeling_vit_mae, "build_2d_sinusoidal_position_embedding"):  # transformers 5
            theirs = modeling_vit_mae.build_2d_sinusoidal_position_embedding(h, w, d)
            half = d // 2  # transformers rotates its table to the MAE reference layout [x | y]
            theirs = torch.cat([theirs[:, half:], theirs[:, :half]], dim=1)
        elif h == w:  # transformers 4.x: MAE's numpy helper, square grids only
            theirs = torch.from_numpy(modeling_vit_mae.get_2d_sincos_pos_embed(d, h)).float()
        else:
            continue
        assert torch.allclose(sincos_grid((h, w), d), theirs, atol=1e-6)


def test_grid_axes_and_shapes():
    e = sincos_grid((2, 3, 4), 96)
    assert e.shape == (24, 96) and e.dtype == torch.float32
    # fastest axis (width) first: tokens in the same column share the first part
    e2 = sincos_grid((3, 4), 16).view(3, 4, 16)
    assert torch.allclose(e2[0, :, :8], e2[2, :, :8])
    assert torch.allclose(e2[:, 0, 8:], e2[:, 3, 8:])
    # a width not divisible by 6 still works in 3-D (remainder on the fastest axis)
    assert sincos_grid((2, 2, 2), 1024).shape == (8, 1024)
    with pytest.raises(ValueError):
        sincos_grid((2, 2), 7)


def test_position_module_caches_per_grid():
    pos = SinCosGridPosition(32)
    a = pos((4, 4), torch.device("cpu"))
    assert a.shape == (1, 16, 32) and pos((4, 4), torch.device("cpu")) is a
    assert pos((2, 8), torch.device("cpu")).shape == (1, 16, 32)
