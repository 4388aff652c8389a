"""Fixed sin-cos position embeddings in 1, 2 and 3 dimensions.

For a grid the embedding is the concatenation of one 1-D sin-cos embedding per
axis, fastest-varying axis first. In 2-D that is ``[x (width) | y (height)]``,
the layout of the MAE reference code (and of transformers' ViTMAE), so weights
trained there line up with tables computed here. Tables are computed in float64
and returned as float32.
"""

from __future__ import annotations

import abc
import functools
import math

import torch

from mimx.config import UserError


def sincos_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """``[N] -> [N, dim]`` as ``[sin(p * w_i) | cos(p * w_i)]`` with ``w_i = T^(-i / (dim/2))``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    half = dim // 2
    omega = 1.0 / temperature ** (torch.arange(half, dtype=torch.float64) / half)
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _split_dim(dim: int, parts: int) -> list[int]:
    base = (dim // (2 * parts)) * 2
    if base == 0:
        raise ValueError(f"embedding dimension {dim} is too small for {parts} axes")
    sizes = [base] * parts
    sizes[0] += dim - base * parts  # remainder (even when dim is even) goes to the fastest axis
    if sizes[0] % 2:
        raise ValueError(f"sin-cos embedding over {parts} axes needs an even dimension, got {dim}")
    return sizes


def _cached_unless_compiling(maxsize: int):
    """``lru_cache`` for a table builder, bypassed while dynamo traces (which ignores such caches); every
    call returns a copy the caller may modify."""

    def wrap(build):
        cached = functools.lru_cache(maxsize=maxsize)(build)

        @functools.wraps(build)
        def table(*args) -> torch.Tensor:
            return (build(*args) if torch.compiler.is_compiling() else cached(*args)).clone()

        return table

    return wrap


@_cached_unless_compiling(maxsize=64)
def _sincos_grid(grid: tuple[int, ...], dim: int, temperature: float) -> torch.Tensor:
    coords = torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij")
    sizes = _split_dim(dim, len(grid))
    # fastest-varying axis (last) first
    parts = [
        sincos_1d(coords[axis].reshape(-1), size, temperature)
        for axis, size in zip(reversed(range(len(grid))), sizes, strict=True)
    ]
    return torch.cat(parts, dim=1).to(torch.float32)


def sincos_grid(grid: tuple[int, ...] | list[int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Embedding ``[prod(grid), dim]`` for a row-major token grid of 1, 2 or 3 axes."""
    grid = tuple(int(n) for n in grid)
    if not 1 <= len(grid) <= 3:
        raise ValueError(f"sin-cos grids have 1 to 3 axes, got {grid}")
    return _sincos_grid(grid, dim, float(temperature))


class _FixedTable(torch.nn.Module, abc.ABC):
    """Maps a token grid to a fixed table ``[1, L, dim]``, cached per grid and device."""

    def __init__(self, dim: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.temperature = temperature
        self._cache: dict[tuple, torch.Tensor] = {}

    @abc.abstractmethod
    def table(self, grid: tuple[int, ...]) -> torch.Tensor:
        """The ``[prod(grid), dim]`` table for a token grid."""

    def forward(self, grid: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
        if torch.compiler.is_compiling():  # built inside the graph: a cache lookup would be guarded and recompile
            return self.table(tuple(grid)).unsqueeze(0).to(device)
        key = (tuple(grid), device)
        table = self._cache.get(key)
        if table is None:
            table = self.table(tuple(grid)).unsqueeze(0).to(device)
            self._cache[key] = table
        return table

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class SinCosGridPosition(_FixedTable):
    """Separable sin-cos over the grid's axes (:func:`sincos_grid`): any grid size."""

    def table(self, grid: tuple[int, ...]) -> torch.Tensor:
        return sincos_grid(grid, self.dim, self.temperature)


@_cached_unless_compiling(maxsize=16)
def _index_table(length: int, dim: int, temperature: float) -> torch.Tensor:
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angles = torch.arange(length, dtype=torch.float64).reshape(-1, 1) / temperature ** exponent.reshape(1, -1)
    table = torch.empty_like(angles)
    table[:, 0::2] = angles[:, 0::2].sin()
    table[:, 1::2] = angles[:, 1::2].cos()
    return table.to(torch.float32)


def sincos_index_table(length: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """``[length, dim]`` sinusoid table over the flattened token index, sin and cos interleaved.

    This is the transformer-paper table that VideoMAE (and transformers' port of
    it) adds to tubelet tokens; it ignores the grid's shape, so a model trained
    with it only makes sense at the token count it was trained on.
    """
    return _index_table(int(length), int(dim), float(temperature))


class SinCosIndexPosition(_FixedTable):
    """VideoMAE's table over the flattened token index (:func:`sincos_index_table`)."""

    def table(self, grid: tuple[int, ...]) -> torch.Tensor:
        return sincos_index_table(math.prod(grid), self.dim, self.temperature)


POSITIONS = {"grid": SinCosGridPosition, "index": SinCosIndexPosition}


def build_position(kind: str, dim: int) -> torch.nn.Module:
    """``grid``: separable sin-cos per axis (any grid size); ``index``: VideoMAE's flattened-index table."""
    if kind not in POSITIONS:
        raise UserError(f"unknown position embedding {kind!r}; choose one of {', '.join(POSITIONS)}")
    return POSITIONS[kind](dim)
