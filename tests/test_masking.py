import numpy as np
import pytest
import torch

from mimx.masking import (
    Mask,
    block_mask,
    block_mask_numpy,
    build_masking,
    check_ratio,
    coarse_mask,
    gather_tokens,
    random_mask,
    tube_mask,
)


@pytest.mark.parametrize("length,ratio", [(196, 0.75), (49, 0.75), (64, 0.9), (10, 0.5), (1568, 0.9), (7, 0.6)])
def test_random_mask_exact_counts(length, ratio):
    m = random_mask(5, length, ratio, generator=torch.Generator().manual_seed(0))
    keep = int(length * (1 - ratio))
    assert m.ids_keep.shape == (5, keep)
    assert (m.mask.sum(1) == length - keep).all()
    # visible ids are exactly the unmasked positions
    for b in range(5):
        assert set(m.ids_keep[b].tolist()) == set(torch.nonzero(~m.mask[b]).flatten().tolist())
    # ids_restore inverts the shuffle: position of each token in (visible, hidden) order
    assert (m.ids_restore.sort(1).values == torch.arange(length)).all()
    assert ((m.ids_restore < keep) == ~m.mask).all()


def test_random_mask_deterministic():
    noise = torch.rand(3, 20)
    a, b = random_mask(3, 20, 0.75, noise=noise), random_mask(3, 20, 0.75, noise=noise.clone())
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_keep, b.ids_keep)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(random_mask(3, 20, 0.75, generator=g1).mask, random_mask(3, 20, 0.75, generator=g2).mask)
    # the lowest-noise tokens stay visible
    assert set(a.ids_keep[0].tolist()) == set(noise[0].argsort()[:5].tolist())


def test_gather_and_from_bool_roundtrip():
    m = random_mask(4, 16, 0.5, generator=torch.Generator().manual_seed(1))
    again = Mask.from_bool(m.mask)
    assert torch.equal(again.mask, m.mask)
    x = torch.arange(4 * 16).view(4, 16, 1).float()
    vis = gather_tokens(x, again.ids_keep)
    assert vis.shape == (4, 8, 1)
    assert torch.equal(vis.squeeze(-1), x.squeeze(-1)[~m.mask].view(4, 8))  # in index order
    with pytest.raises(ValueError, match="same count"):
        Mask.from_bool(torch.tensor([[True, False], [True, True]]))


def test_tube_mask_repeats_over_time():
    m = tube_mask(2, 4, 9, 0.67, generator=torch.Generator().manual_seed(0))
    frames = m.mask.view(2, 4, 9)
    assert (frames == frames[:, :1]).all()
    assert (m.mask.sum(1) == 4 * (9 - int(9 * (1 - 0.67)))).all()
    checked = Mask.from_bool(m.mask)  # the count tube_mask passes in is the one a check reads back
    assert torch.equal(checked.ids_keep, m.ids_keep) and torch.equal(checked.ids_restore, m.ids_restore)


def test_coarse_mask_cells():
    m = coarse_mask(6, (12, 12), 3, 0.6, generator=torch.Generator().manual_seed(0))
    cells = 16
    hidden_cells = int(np.ceil(cells * 0.6))
    assert (m.mask.sum(1) == hidden_cells * 9).all()
    grid = m.mask.view(6, 4, 3, 4, 3)
    # each 3x3 cell is entirely hidden or entirely visible
    assert ((grid.all(dim=(2, 4))) | (~grid.any(dim=(2, 4)))).all()
    checked = Mask.from_bool(m.mask)
    assert torch.equal(checked.ids_keep, m.ids_keep) and torch.equal(checked.ids_restore, m.ids_restore)


def _components(mask: np.ndarray) -> int:
    """4-connected components of hidden patches."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    count = 0
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                count += 1
                stack = [(i, j)]
                while stack:
                    y, x = stack.pop()
                    if 0 <= y < h and 0 <= x < w and mask[y, x] and not seen[y, x]:
                        seen[y, x] = True
                        stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
    return count


def test_block_mask_exact_and_coverage_statistics():
    grid, ratio, n = (14, 14), 0.4, 300
    hidden = round(196 * ratio)
    m = block_mask(n, grid, ratio, seed=0)
    assert (m.mask.sum(1) == hidden).all()
    checked = Mask.from_bool(m.mask)
    assert torch.equal(checked.ids_keep, m.ids_keep) and torch.equal(checked.ids_restore, m.ids_restore)
    masks = m.mask.view(n, *grid).numpy()
    freq = masks.mean(0)
    assert abs(freq.mean() - hidden / 196) < 1e-9
    assert freq.min() > 0.01  # every patch gets hidden, corners included
    assert freq[5:9, 5:9].mean() > 2 * freq[[0, 0, -1, -1], [0, -1, 0, -1]].mean()  # BEiT: centre-heavy
    # blocks: far fewer connected pieces than the same count of random patches
    rank = torch.rand(n, 196, generator=torch.Generator().manual_seed(0)).argsort(1).argsort(1)
    rand_masks = (rank < hidden).view(n, *grid).numpy()
    blocky = np.mean([_components(x) for x in masks[:50]])
    scattered = np.mean([_components(x) for x in rand_masks[:50]])
    assert blocky * 3 < scattered
    # fraction of hidden patches that have a hidden right neighbour: clustered
    right = (masks[:, :, :-1] & masks[:, :, 1:]).sum() / masks[:, :, :-1].sum()
    assert right > 0.7


def test_block_mask_numpy_without_exact_can_fall_short_but_never_over():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = block_mask_numpy((8, 8), 40, rng, exact=False)
        assert m.sum() <= 40


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, "0.5"])
def test_bad_ratio_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        check_ratio(bad)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        build_masking("random", ratio=bad)


def test_unknown_masking_kind():
    with pytest.raises(ValueError, match="choose one of"):
        build_masking("spiral", ratio=0.5)
