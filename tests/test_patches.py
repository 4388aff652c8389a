import pytest
import torch

from mimx.patches import (
    PatchTokenizer,
    denormalize_patches,
    grid_size,
    normalize_patches,
    normalized_patchify,
    patchify,
    unpatchify,
)


@pytest.mark.parametrize("shape,patch", [((2, 3, 32, 48), (8, 8)), ((1, 1, 12, 20), (4, 4)),
                                         ((2, 3, 4, 16, 24), (2, 8, 8)), ((2, 5, 30), (3,))])
def test_patchify_inverse(shape, patch):
    x = torch.randn(shape)
    tokens = patchify(x, patch)
    grid = grid_size(shape[2:], patch)
    assert tokens.shape == (shape[0], torch.tensor(grid).prod().item(), torch.tensor(patch).prod().item() * shape[1])
    assert torch.equal(unpatchify(tokens, patch, grid, shape[1]), x)


def test_patch_order_is_mae_pqc():
    x = torch.arange(2 * 4 * 4).float().view(1, 2, 4, 4)
    t = patchify(x, (2, 2))
    # first token: rows 0-1, cols 0-1, values ordered (p, q, c)
    expected = torch.tensor([x[0, c, p, q] for p in range(2) for q in range(2) for c in range(2)])
    assert torch.equal(t[0, 0], expected)
    # second token is the next patch along the width
    assert t[0, 1, 0] == x[0, 0, 0, 2]


def test_not_divisible_is_one_clear_error():
    with pytest.raises(ValueError, match=r"30x32 is not divisible by the patch size 16x16.*16x32"):
        patchify(torch.zeros(1, 3, 30, 32), (16, 16))


def test_norm_pix_roundtrip():
    p = torch.randn(2, 5, 48) * 3 + 1
    n = normalize_patches(p)
    assert torch.allclose(n.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(denormalize_patches(n, p), p, atol=1e-4)
    c = normalize_patches(p, channels=3)
    assert torch.allclose(denormalize_patches(c, p, channels=3), p, atol=1e-4)



@pytest.mark.parametrize("shape,patch", [((2, 3, 8, 12), (4, 4)), ((2, 3, 4, 16, 8), (2, 8, 4)),
                                         ((1, 1, 4, 4), (2, 2))])
def test_channel_first_order_and_fused_normalisation(shape, patch):
    x = torch.rand(shape) * 4 - 1
    c = shape[1]
    plain = patchify(x, patch)
    first = patchify(x, patch, channels_first=True)
    assert torch.equal(first.unflatten(-1, (c, -1)).transpose(-1, -2).flatten(-2), plain)
    for per_channel in (False, True):
        for eps_outside in (False, True):
            fused = normalized_patchify(x, patch, per_channel, 1e-6, eps_outside)
            reference = normalize_patches(plain, c if per_channel else None, 1e-6, eps_outside)
            torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
            grouped = plain.unflatten(-1, (-1, c)) if per_channel else plain.unsqueeze(-1)
            var, mean = torch.var_mean(grouped, dim=-2, keepdim=True)  # the definition, unbiased
            scale = var.sqrt() + 1e-6 if eps_outside else (var + 1e-6).sqrt()
            torch.testing.assert_close(fused, ((grouped - mean) / scale).flatten(-2), rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize("shape, patch", [((2, 3, 12), (4,)), ((2, 3, 8, 12), (4, 4)), ((2, 3, 4, 8, 8), (2, 4, 4))])
def test_tokenizer_matches_its_convolution(shape, patch):
    """The matmul over gathered patches is the stride = kernel convolution, values and gradients."""
    torch.manual_seed(0)
    tok = PatchTokenizer(3, 5, patch)
    x = torch.randn(shape)
    tokens, grid = tok(x)
    reference = tok.proj(x).flatten(2).transpose(1, 2)
    assert grid == tuple(s // p for s, p in zip(shape[2:], patch, strict=True))
    torch.testing.assert_close(tokens, reference, rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(tokens.square().sum(), tok.proj.weight)
    (ref_grad,) = torch.autograd.grad(reference.square().sum(), tok.proj.weight)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4)
