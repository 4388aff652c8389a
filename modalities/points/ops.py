"""Batched point-cloud ops for Point-MAE: farthest point sampling, kNN grouping, Chamfer distance.

Clouds are ``[B, N, D]`` tensors (D = 3 for xyz) with the same N in every cloud. Two backends compute
the same things: pytorch3d's kernels when pytorch3d imports, pure torch otherwise (what CI runs).
``backend="auto"`` picks pytorch3d when present; ``"torch"`` or ``"pytorch3d"`` forces one. Distances
are computed in float32 (float64 stays float64), so float16 / bfloat16 clouds work, and outside
autocast. No function loops over the batch in Python.
"""

from __future__ import annotations

import functools
import importlib
from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mimx.config import UserError

Backend = Literal["auto", "torch", "pytorch3d"]
BACKENDS = ("auto", "torch", "pytorch3d")
NORMS = ("l2", "l1")
REDUCTIONS = ("mean", "sum", "none")

# At most this many elements in one [B, rows, N] block of squared distances in the pure-torch searches
# (64 MiB of float32); larger searches go over the query rows in chunks.
CHUNK_ELEMENTS = 1 << 24

PYTORCH3D_HINT = (
    "pytorch3d is not installed (or does not import). Install it against your torch, e.g. "
    "`pip install --no-build-isolation 'git+https://github.com/facebookresearch/pytorch3d.git@stable'` "
    "(needs a CUDA toolkit matching torch for the GPU kernels) or `conda install pytorch3d -c pytorch3d`; "
    "or use backend='torch' (pure torch, same results)."
)


# ----------------------------------------------------------------------------- backend choice


@functools.cache
def has_pytorch3d() -> bool:
    """Whether pytorch3d's point ops and losses import (checked once per process)."""
    try:
        importlib.import_module("pytorch3d.ops")
        importlib.import_module("pytorch3d.loss")
    except (ImportError, OSError):  # OSError: a build whose compiled extension does not load
        return False
    return True


def resolve_backend(name: str = "auto") -> Literal["torch", "pytorch3d"]:
    """``"auto"`` -> pytorch3d when it imports, else torch; ``"pytorch3d"`` without it raises ``UserError``."""
    if name not in BACKENDS:
        raise UserError(f"point-ops backend must be one of {BACKENDS}, got {name!r}")
    if name == "torch":
        return "torch"
    if has_pytorch3d():
        return "pytorch3d"
    if name == "pytorch3d":
        raise UserError(f"backend='pytorch3d' was asked for: {PYTORCH3D_HINT}")
    return "torch"


# ----------------------------------------------------------------------------- checks and helpers


def _check_cloud(name: str, x: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name} must be a [B, N, D] batch of point clouds, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must hold floating-point coordinates, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): need at least one cloud of one point")


def _check_pair(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    _check_cloud(name_a, a)
    _check_cloud(name_b, b)
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must share batch size B and "
                         "coordinate count D")


def _check_k(k: int, n: int, name: str) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got k={k}")
    if k > n:
        raise ValueError(f"k={k} is larger than N={n}, the number of points per cloud in {name}")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64: the precision distances are computed in."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _gather(points: Tensor, idx: Tensor) -> Tensor:
    """``points[b, idx[b, ...]]`` for every cloud b: ``[B, N, D]``, ``[B, *S]`` -> ``[B, *S, D]``."""
    b, _, d = points.shape
    flat = idx.reshape(b, -1, 1).expand(-1, -1, d)
    return points.gather(1, flat).reshape(*idx.shape, d)


def _sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """Squared distances ``[B, M, N]`` between ``x [B, M, D]`` and ``y [B, N, D]``, to rank neighbours.

    |x|^2 - 2xy + |y|^2: cancellation can leave tiny errors (even below 0), so the callers recompute the
    distances they return from the coordinate differences of the pairs found.
    """
    with torch.autocast(x.device.type, enabled=False):
        xx = x.square().sum(-1, keepdim=True)
        yy = y.square().sum(-1).unsqueeze(1)
        return torch.baddbmm(xx, x, y.transpose(1, 2), alpha=-2).add_(yy)


def _cat_rows(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _chunk_rows(batch: int, n: int) -> int:
    """Query rows per block so that a ``[batch, rows, n]`` block stays under ``CHUNK_ELEMENTS``."""
    return max(1, CHUNK_ELEMENTS // (batch * n))


# ----------------------------------------------------------------------------- farthest point sampling


def farthest_point_sample(points: Tensor, k: int, *, start: Literal["first", "random"] = "first",
                          generator: torch.Generator | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """``k`` farthest-point-sampled centres of each cloud: ``(centres [B, k, D], indices [B, k] int64)``.

    Each pick is the point farthest (squared Euclidean distance, first index on ties) from those already
    picked. ``start="first"`` begins at index 0 (pytorch3d's ``random_start_point=False``): deterministic,
    identical in both backends. ``start="random"`` begins at a uniform index per cloud drawn from
    ``generator`` (same seed, same picks); pytorch3d then runs on each cloud rotated to put that point
    first, so only exact distance ties may resolve differently from the torch path. ``centres`` are
    ``points`` gathered at ``indices`` (same dtype, differentiable).
    """
    _check_cloud("points", points)
    _check_k(k, points.shape[1], "points")
    if start not in ("first", "random"):
        raise ValueError(f"start must be 'first' or 'random', got {start!r}")
    b, n, _ = points.shape
    if start == "first":
        first = torch.zeros(b, dtype=torch.long, device=points.device)
    else:
        draw_on = generator.device if generator is not None else points.device
        first = torch.randint(n, (b,), generator=generator, device=draw_on).to(points.device)
    if resolve_backend(backend) == "pytorch3d":
        idx = _fps_pytorch3d(points, k, first if start == "random" else None)
    else:
        idx = _fps_torch(points, k, first)
    return _gather(points, idx), idx


@torch.no_grad()
def _fps_torch(points: Tensor, k: int, first: Tensor) -> Tensor:
    """Pure torch FPS: k - 1 steps, each a few batched kernels; no host sync, no graph.

    Coordinates are laid out ``[B, D, N]`` so every step reads contiguous rows (5x faster on the
    CPU than indexing ``[B, N, D]``).
    """
    x = points.to(_compute_dtype(points)).transpose(1, 2).contiguous()
    b, _, n = x.shape
    rows = torch.arange(b, device=x.device)
    idx = torch.empty(b, k, dtype=torch.long, device=x.device)
    idx[:, 0] = first
    nearest = torch.full((b, n), float("inf"), dtype=x.dtype, device=x.device)  # distance to the picked set
    last = first
    for i in range(1, k):
        centre = x[rows, :, last].unsqueeze(-1)  # [B, D, 1]
        torch.minimum(nearest, (x - centre).square_().sum(1), out=nearest)
        last = nearest.argmax(1)
        idx[:, i] = last
    return idx


@torch.no_grad()
def _fps_pytorch3d(points: Tensor, k: int, first: Tensor | None) -> Tensor:
    from pytorch3d.ops import sample_farthest_points

    x = points.to(_compute_dtype(points))
    if first is None:
        return sample_farthest_points(x, K=k, random_start_point=False)[1]
    n = x.shape[1]
    order = (torch.arange(n, device=x.device) + first[:, None]) % n  # rotated cloud: its start point at 0
    idx = sample_farthest_points(_gather(x, order), K=k, random_start_point=False)[1]
    return order.gather(1, idx)


# ----------------------------------------------------------------------------- kNN and grouping


def knn(query: Tensor, points: Tensor, k: int, *, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The ``k`` nearest ``points`` of each query point: ``(dist2 [B, M, k], idx [B, M, k] int64)``.

    Sorted by ascending squared Euclidean distance. ``dist2`` is in float32 (float64 for float64
    input) and differentiable in both inputs. The torch path finds the neighbours in a batched
    squared-distance matrix (in query chunks of at most ``CHUNK_ELEMENTS`` distances), then recomputes
    their distances from the coordinate differences, as pytorch3d's ``knn_points`` computes them.
    """
    _check_pair("query", query, "points", points)
    _check_k(k, points.shape[1], "points")
    dtype = _compute_dtype(query, points)
    q, p = query.to(dtype), points.to(dtype)
    if resolve_backend(backend) == "pytorch3d":
        from pytorch3d.ops import knn_points

        found = knn_points(q, p, K=k, return_sorted=True)
        return found.dists, found.idx
    b, m, _ = q.shape
    rows = _chunk_rows(b, p.shape[1])
    with torch.no_grad():
        idx = _cat_rows([_sq_dists(q[:, s:s + rows], p).topk(k, dim=-1, largest=False).indices
                         for s in range(0, m, rows)])
    dist2 = (q.unsqueeze(2) - _gather(p, idx)).square().sum(-1)
    dist2, order = dist2.sort(dim=-1, stable=True)
    return dist2, idx.gather(-1, order)


def group_points(points: Tensor, centres: Tensor, k: int, *, backend: str = "auto") -> Tensor:
    """Point-MAE grouping: the ``k`` nearest points of each centre, minus the centre: ``[B, G, k, D]``.

    ``points [B, N, D]``, ``centres [B, G, D]`` (usually from ``farthest_point_sample``); neighbours in
    ascending distance, so a centre taken from the cloud has itself, at zero, first.
    """
    _, idx = knn(centres, points, k, backend=backend)
    return _gather(points, idx) - centres.unsqueeze(2)


# ----------------------------------------------------------------------------- Chamfer distance


def chamfer_distance(a: Tensor, b: Tensor, *, norm: Literal["l2", "l1"] = "l2",
                     reduction: Literal["mean", "sum", "none"] = "mean", backend: str = "auto") -> Tensor:
    """Point-MAE's Chamfer distance between clouds ``a [B, N, D]`` and ``b [B, M, D]``.

    With ``d_a[i]`` the squared distance from ``a_i`` to its nearest point of b, and ``d_b[j]`` the
    same from ``b_j`` to a, per cloud:

    - ``"l2"``: ``mean_i d_a + mean_j d_b`` (Point-MAE's ChamferDistanceL2; pytorch3d's
      ``chamfer_distance`` with its defaults ``norm=2, point_reduction="mean"``);
    - ``"l1"``: ``(mean_i sqrt(d_a) + mean_j sqrt(d_b)) / 2``, Euclidean (not squared) distances
      (Point-MAE's ChamferDistanceL1; not pytorch3d's ``norm=1``, which measures |x|_1 distances).

    ``reduction``: ``"mean"`` over the batch (Point-MAE's mean over all points, as every cloud has the
    same size; pytorch3d's ``batch_reduction="mean"``), ``"sum"``, or ``"none"`` (``[B]``). The result
    is float32 (float64 for float64 input). pytorch3d's ``chamfer_distance`` computes ``"l2"`` on that
    backend; otherwise the nearest pairs are found without a graph (pytorch3d's ``knn_points`` or
    chunked torch), and the gradient flows through the nearest pairs only; at a zero distance the
    ``"l1"`` gradient is taken as 0.
    """
    _check_pair("a", a, "b", b)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    name = resolve_backend(backend)
    if name == "pytorch3d" and norm == "l2":
        from pytorch3d.loss import chamfer_distance as p3d_chamfer

        dtype = _compute_dtype(a, b)
        batch_reduction = None if reduction == "none" else reduction
        return p3d_chamfer(a.to(dtype), b.to(dtype), batch_reduction=batch_reduction, point_reduction="mean")[0]
    return _NearestPairChamfer.apply(a, b, norm, reduction, name)


def _nearest(x: Tensor, y: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """Index of the nearest y of each x ``[B, N]`` and of the nearest x of each y ``[B, M]`` (no graph)."""
    if backend == "pytorch3d":
        from pytorch3d.ops import knn_points

        return knn_points(x, y, K=1).idx[..., 0], knn_points(y, x, K=1).idx[..., 0]
    b, n, _ = x.shape
    m = y.shape[1]
    rows = _chunk_rows(b, m)
    x_to_y = []
    best = torch.full((b, m), float("inf"), dtype=x.dtype, device=x.device)  # running column minimum
    y_to_x = torch.zeros(b, m, dtype=torch.long, device=x.device)
    for s in range(0, n, rows):
        d = _sq_dists(x[:, s:s + rows], y)
        x_to_y.append(d.argmin(2))
        arg = d.argmin(1)  # argmin + gather: Tensor.min(dim) is far slower on CPU with several threads
        value = d.gather(1, arg.unsqueeze(1)).squeeze(1)
        closer = value < best  # strict: the first x wins ties, as argmin over the whole column
        best = torch.where(closer, value, best)
        y_to_x = torch.where(closer, arg + s, y_to_x)
    return _cat_rows(x_to_y), y_to_x


def _pair_terms(x: Tensor, y: Tensor, x_to_y: Tensor, y_to_x: Tensor) -> tuple[Tensor, Tensor]:
    """Differences to the nearest neighbour: ``x - y[x_to_y]`` ``[B, N, D]`` and ``y - x[y_to_x]`` ``[B, M, D]``."""
    return x - _gather(y, x_to_y), y - _gather(x, y_to_x)


def _inverse_length(diff: Tensor) -> Tensor:
    """``1 / |diff|`` over the last axis (kept), 0 where the length is 0."""
    length = diff.norm(dim=-1, keepdim=True)
    return torch.where(length > 0, length.reciprocal(), torch.zeros_like(length))


class _NearestPairChamfer(torch.autograd.Function):
    """Chamfer distance whose graph holds only the nearest-neighbour indices, not the distance matrix."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, norm: str, reduction: str, backend: str) -> Tensor:
        dtype = _compute_dtype(a, b)
        x, y = a.to(dtype), b.to(dtype)
        x_to_y, y_to_x = _nearest(x, y, backend)
        dx, dy = _pair_terms(x, y, x_to_y, y_to_x)
        sq_x, sq_y = dx.square().sum(-1), dy.square().sum(-1)
        if norm == "l2":
            per_cloud = sq_x.mean(1) + sq_y.mean(1)
        else:
            per_cloud = (sq_x.sqrt().mean(1) + sq_y.sqrt().mean(1)) / 2
        ctx.save_for_backward(a, b, x_to_y, y_to_x)
        ctx.norm, ctx.reduction = norm, reduction
        if reduction == "mean":
            return per_cloud.mean()
        return per_cloud.sum() if reduction == "sum" else per_cloud

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, b, x_to_y, y_to_x = ctx.saved_tensors
        dtype = _compute_dtype(a, b)
        x, y = a.to(dtype), b.to(dtype)
        batch, n, d = x.shape
        m = y.shape[1]
        dx, dy = _pair_terms(x, y, x_to_y, y_to_x)
        if ctx.norm == "l2":  # d/dx_i of |x_i - y_nn|^2 / N
            gx, gy = dx * (2 / n), dy * (2 / m)
        else:  # d/dx_i of |x_i - y_nn| / (2N)
            gx, gy = dx * (_inverse_length(dx) / (2 * n)), dy * (_inverse_length(dy) / (2 * m))
        weight = grad.to(dtype).expand(batch)
        if ctx.reduction == "mean":
            weight = weight / batch
        weight = weight.view(batch, 1, 1)
        gx, gy = gx * weight, gy * weight
        # each pair's other end moves the opposite way: scatter onto the nearest neighbours
        grad_a = gx.scatter_add(1, y_to_x.unsqueeze(-1).expand(-1, -1, d), -gy) if ctx.needs_input_grad[0] else None
        grad_b = gy.scatter_add(1, x_to_y.unsqueeze(-1).expand(-1, -1, d), -gx) if ctx.needs_input_grad[1] else None
        return (None if grad_a is None else grad_a.to(a.dtype), None if grad_b is None else grad_b.to(b.dtype),
                None, None, None)
