import itertools

import pytest
import torch

from mimx.config import UserError
from mimx.modalities.points import ops
from mimx.modalities.points.ops import (
    chamfer_distance,
    farthest_point_sample,
    group_points,
    has_pytorch3d,
    knn,
    resolve_backend,
)


def clouds(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def brute_sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x[:, :, None] - y[:, None]).square().sum(-1)


def naive_chamfer(a: torch.Tensor, b: torch.Tensor, norm: str = "l2", reduction: str = "mean") -> torch.Tensor:
    """Autograd through the full cdist matrix: the reference for values and gradients."""
    d = torch.cdist(a, b).square()
    da, db = d.min(2).values, d.min(1).values
    if norm == "l2":
        per = da.mean(1) + db.mean(1)
    else:
        per = (da.sqrt().mean(1) + db.sqrt().mean(1)) / 2
    return {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]


# ----------------------------------------------------------------------------- backend choice


def test_resolve_backend(monkeypatch):
    assert resolve_backend("torch") == "torch"
    assert resolve_backend("auto") == ("pytorch3d" if has_pytorch3d() else "torch")
    with pytest.raises(UserError, match="backend must be one of"):
        resolve_backend("cuda")
    monkeypatch.setattr(ops, "has_pytorch3d", lambda: False)
    assert resolve_backend("auto") == "torch"
    with pytest.raises(UserError, match="pip install"):
        resolve_backend("pytorch3d")
    with pytest.raises(UserError, match="backend='torch'"):
        chamfer_distance(clouds(1, 4, 3), clouds(1, 4, 3), backend="pytorch3d")


# ----------------------------------------------------------------------------- farthest point sampling


def test_fps_points_on_a_line():
    line = torch.arange(9.0)[:, None] * torch.tensor([1.0, 0.0, 0.0])
    points = torch.stack([line, line.flip(0) * 2 + 1])  # the second cloud reversed, scaled and shifted
    centres, idx = farthest_point_sample(points, 9)
    # the far end, the middle, then quarters, then the rest; ties go to the lower index
    assert idx.tolist() == [[0, 8, 4, 2, 6, 1, 3, 5, 7]] * 2
    assert torch.equal(centres[0, :3, 0], torch.tensor([0.0, 8.0, 4.0]))
    assert torch.equal(centres[1, :3, 0], torch.tensor([17.0, 1.0, 9.0]))


def test_fps_cube_corners_come_first():
    corners = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3)))
    batch = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        inside = (torch.rand(40, 3, generator=g) - 0.5) * 0.6  # within 0.52 of the origin; corners 1.73 away
        rest = torch.cat([corners, inside])[torch.randperm(48, generator=g)]
        batch.append(torch.cat([torch.zeros(1, 3), rest]))  # start (index 0) at the origin
    points = torch.stack(batch)
    centres, idx = farthest_point_sample(points, 12)
    assert (idx[:, 0] == 0).all()
    assert (centres[:, 1:9].abs() == 1).all()  # the 8 picks after the start are the 8 corners...
    for b in range(3):
        assert len(set(map(tuple, centres[b, 1:9].tolist()))) == 8  # ...each once
    assert (centres[:, 9:].abs() < 0.31).all()


def test_fps_distinct_gathered_and_deterministic():
    points = clouds(4, 200, 3)
    centres, idx = farthest_point_sample(points, 32)
    assert centres.shape == (4, 32, 3) and idx.shape == (4, 32) and idx.dtype == torch.long
    assert all(len(set(row)) == 32 for row in idx.tolist())
    assert torch.equal(centres, points[torch.arange(4)[:, None], idx])
    assert torch.equal(farthest_point_sample(points, 32)[1], idx)
    _, every = farthest_point_sample(points, 200)  # k = N: a permutation of each cloud
    assert torch.equal(every.sort(1).values, torch.arange(200).expand(4, -1))


def test_fps_random_start_is_reproducible():
    points = clouds(8, 100, 3)
    run = lambda seed: farthest_point_sample(points, 16, start="random",
                                             generator=torch.Generator().manual_seed(seed))[1]
    assert torch.equal(run(3), run(3))
    assert (run(3)[:, 0] != 0).any() and not torch.equal(run(3), run(4))
    # after the start, the same greedy rule: starting the deterministic sampler on a rotated cloud agrees
    first = run(3)[:, 0]
    rolled = torch.stack([torch.roll(points[b], -int(first[b]), 0) for b in range(8)])
    expected = (farthest_point_sample(rolled, 16)[1] + first[:, None]) % 100
    assert torch.equal(run(3), expected)


def test_fps_low_precision_and_gradient():
    points = clouds(2, 64, 3).half()
    centres, idx = farthest_point_sample(points, 8)
    assert centres.dtype == torch.float16
    assert torch.equal(idx, farthest_point_sample(points.float(), 8)[1])
    leaf = clouds(2, 64, 3).requires_grad_()
    centres, idx = farthest_point_sample(leaf, 8)
    centres.sum().backward()  # centres are gathered points: gradient 1 on each picked point, 0 elsewhere
    picked = torch.zeros(2, 64).scatter_(1, idx, 1.0)
    assert torch.equal(leaf.grad, picked[..., None].expand(-1, -1, 3))


def test_fps_rejects_bad_input():
    with pytest.raises(ValueError, match=r"k=9 is larger than N=8"):
        farthest_point_sample(clouds(2, 8, 3), 9)
    with pytest.raises(ValueError, match="empty"):
        farthest_point_sample(torch.zeros(2, 0, 3), 1)
    with pytest.raises(ValueError, match="empty"):
        farthest_point_sample(torch.zeros(0, 8, 3), 1)
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        farthest_point_sample(torch.zeros(8, 3), 1)
    with pytest.raises(ValueError, match="start"):
        farthest_point_sample(clouds(1, 8, 3), 2, start="last")


# ----------------------------------------------------------------------------- kNN and grouping


def test_knn_matches_brute_force():
    query, points = clouds(3, 20, 3, seed=1), clouds(3, 50, 3, seed=2)
    dist2, idx = knn(query, points, 7)
    assert dist2.shape == idx.shape == (3, 20, 7) and idx.dtype == torch.long
    full = brute_sq_dists(query, points)
    torch.testing.assert_close(dist2, full.sort(-1).values[..., :7])
    torch.testing.assert_close(full.gather(-1, idx), dist2)
    assert (dist2[..., 1:] >= dist2[..., :-1]).all()


def test_knn_chunked_equals_unchunked(monkeypatch):
    query, points = clouds(2, 33, 3, seed=1), clouds(2, 40, 3, seed=2)
    whole = knn(query, points, 5)
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 2 * 40 * 4)  # blocks of 4 query rows
    parts = knn(query, points, 5)
    assert torch.equal(whole[1], parts[1]) and torch.equal(whole[0], parts[0])


def test_knn_low_precision_and_errors():
    query, points = clouds(2, 10, 3, seed=1).bfloat16(), clouds(2, 30, 3, seed=2).bfloat16()
    dist2, idx = knn(query, points, 4)
    assert dist2.dtype == torch.float32
    ref = knn(query.float(), points.float(), 4)
    assert torch.equal(idx, ref[1]) and torch.equal(dist2, ref[0])
    with pytest.raises(ValueError, match=r"k=31 is larger than N=30"):
        knn(query, points, 31)
    with pytest.raises(ValueError, match="batch size"):
        knn(clouds(3, 10, 3), clouds(2, 30, 3), 4)


def test_group_points():
    points = clouds(2, 128, 3)
    centres, _ = farthest_point_sample(points, 16)
    groups = group_points(points, centres, 8)
    assert groups.shape == (2, 16, 8, 3)
    assert (groups[:, :, 0] == 0).all()  # each centre is a point of its cloud: its own nearest neighbour
    # the neighbourhood is the 8 nearest points, relative to the centre
    near = brute_sq_dists(centres, points).topk(8, largest=False).indices
    expected = points[torch.arange(2)[:, None, None], near] - centres[:, :, None]
    assert torch.equal(groups, expected)


# ----------------------------------------------------------------------------- Chamfer distance


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_chamfer_forward_matches_naive(norm, reduction):
    a, b = clouds(3, 50, 3, seed=1), clouds(3, 40, 3, seed=2)
    out = chamfer_distance(a, b, norm=norm, reduction=reduction)
    assert out.shape == (() if reduction != "none" else (3,))
    torch.testing.assert_close(out, naive_chamfer(a, b, norm, reduction))


def test_chamfer_known_value():
    a = torch.tensor([[[0.0, 0, 0], [2, 0, 0]]])
    b = torch.tensor([[[0.0, 1, 0]]])
    # a -> b: squared distances 1 and 5; b -> a: 1
    torch.testing.assert_close(chamfer_distance(a, b), torch.tensor(3.0 + 1.0))
    torch.testing.assert_close(chamfer_distance(a, b, norm="l1"), torch.tensor(((1 + 5**0.5) / 2 + 1) / 2))


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("chunked", [False, True])
def test_chamfer_gradient_matches_naive(norm, chunked, monkeypatch):
    if chunked:
        monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 4 * 250 * 16)  # blocks of 16 rows of a
    a, b = clouds(4, 300, 3, seed=1).requires_grad_(), clouds(4, 250, 3, seed=2).requires_grad_()
    ref_a, ref_b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    chamfer_distance(a, b, norm=norm).backward()
    naive_chamfer(ref_a, ref_b, norm).backward()
    torch.testing.assert_close(a.grad, ref_a.grad)
    torch.testing.assert_close(b.grad, ref_b.grad)


@pytest.mark.parametrize("norm,reduction", [("l2", "mean"), ("l1", "mean"), ("l2", "none"), ("l1", "sum")])
def test_chamfer_gradcheck(norm, reduction):
    a = clouds(2, 5, 3, seed=1, dtype=torch.float64).requires_grad_()
    b = clouds(2, 4, 3, seed=2, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: chamfer_distance(x, y, norm=norm, reduction=reduction), (a, b))


def test_chamfer_coincident_points_and_one_sided_gradient():
    a = clouds(2, 30, 3, seed=1).requires_grad_()
    b = a.detach()[:, :20].clone()  # the first 20 points of a lie exactly on b: zero distances
    chamfer_distance(a, b).backward()
    ref = a.detach().clone().requires_grad_()
    naive_chamfer(ref, b).backward()
    torch.testing.assert_close(a.grad, ref.grad)
    a.grad, ref.grad = None, None
    chamfer_distance(a, b, norm="l1").backward()
    naive_chamfer(ref, b, "l1").backward()
    assert (a.grad[:, :20] == 0).all()  # l1 takes the gradient of |x| at 0 as 0
    torch.testing.assert_close(a.grad[:, 20:], ref.grad[:, 20:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_chamfer_low_precision(dtype):
    a, b = clouds(2, 40, 3, seed=1).to(dtype).requires_grad_(), clouds(2, 30, 3, seed=2).to(dtype)
    loss = chamfer_distance(a, b)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, naive_chamfer(a.detach().float(), b.float()))
    loss.backward()
    assert a.grad.dtype == dtype and torch.isfinite(a.grad.float()).all()


def test_chamfer_ignores_autocast():
    a, b = clouds(2, 200, 3, seed=1), clouds(2, 200, 3, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = chamfer_distance(a, b)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, chamfer_distance(a, b), rtol=0, atol=0)


def test_chamfer_rejects_bad_input():
    with pytest.raises(ValueError, match="norm"):
        chamfer_distance(clouds(1, 4, 3), clouds(1, 4, 3), norm="l3")
    with pytest.raises(ValueError, match="reduction"):
        chamfer_distance(clouds(1, 4, 3), clouds(1, 4, 3), reduction="max")
    with pytest.raises(ValueError, match="empty"):
        chamfer_distance(clouds(1, 4, 3), torch.zeros(1, 0, 3))
    with pytest.raises(ValueError, match="coordinate count"):
        chamfer_distance(clouds(1, 4, 3), clouds(1, 4, 2))


# ----------------------------------------------------------------------------- GPU: no host syncs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_path_has_no_host_syncs_on_cuda():
    points = torch.randn(4, 512, 3, device="cuda")
    target = torch.randn(4, 512, 3, device="cuda")
    pred = points.clone().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        centres, _ = farthest_point_sample(points, 32, backend="torch")
        group_points(points, centres, 16, backend="torch")
        chamfer_distance(pred, target, backend="torch").backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------- pytorch3d agreement


@pytest.fixture
def p3d():
    return pytest.importorskip("pytorch3d")


def test_pytorch3d_fps_and_knn_agree(p3d):
    from pytorch3d.ops import knn_points, sample_farthest_points

    points, query = clouds(3, 300, 3, seed=1), clouds(3, 40, 3, seed=2)
    theirs = sample_farthest_points(points, K=24, random_start_point=False)[1]
    assert torch.equal(farthest_point_sample(points, 24, backend="torch")[1], theirs)
    assert torch.equal(farthest_point_sample(points, 24, backend="pytorch3d")[1], theirs)
    g = lambda: torch.Generator().manual_seed(5)
    assert torch.equal(farthest_point_sample(points, 24, start="random", generator=g(), backend="torch")[1],
                       farthest_point_sample(points, 24, start="random", generator=g(), backend="pytorch3d")[1])
    found = knn_points(query, points, K=6)
    for backend in ("torch", "pytorch3d"):
        dist2, idx = knn(query, points, 6, backend=backend)
        assert torch.equal(idx, found.idx)
        torch.testing.assert_close(dist2, found.dists)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_pytorch3d_chamfer_agrees(p3d, norm):
    from pytorch3d.loss import chamfer_distance as p3d_chamfer

    a, b = clouds(3, 120, 3, seed=1), clouds(3, 90, 3, seed=2)
    if norm == "l2":
        torch.testing.assert_close(chamfer_distance(a, b, backend="torch"), p3d_chamfer(a, b)[0])
    grads = []
    for backend in ("torch", "pytorch3d"):
        x = a.clone().requires_grad_()
        loss = chamfer_distance(x, b, norm=norm, backend=backend)
        loss.backward()
        grads.append((loss.detach(), x.grad))
    torch.testing.assert_close(grads[0], grads[1])
