"""Relative position bias for attention over a 2-D token grid (BEiT).

Every head learns one logit per 2-D offset between a query and a key token, added to the attention scores.
A class token in front of the grid gets three more entries: class -> patch, patch -> class and
class -> class. The table layout (offsets row-major, the three class entries last) is BEiT's and timm's,
so a table trained here loads into ``timm.models.beit.Beit`` unchanged. A grid other than the one the
table was built for (another image size) reads a bicubically resized copy of the offset part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mimx.devices import DeviceConstant


def relative_position_index(grid: tuple[int, int], prefix: int = 1) -> torch.Tensor:
    """``[P + N, P + N]`` long: the table row each (query, key) pair reads; ``P`` is 0 or 1 class tokens.

    Token ``i`` of the row-major ``grid`` (``h x w``) at ``(y_i, x_i)`` reads row
    ``(y_i - y_j + h - 1) * (2w - 1) + (x_i - x_j + w - 1)`` for key ``j``.
    """
    if prefix not in (0, 1):
        raise ValueError(f"relative position bias supports 0 or 1 class tokens, got {prefix}")
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    index = (ys[:, None] - ys[None, :] + h - 1) * (2 * w - 1) + (xs[:, None] - xs[None, :] + w - 1)
    if prefix:
        offsets = (2 * h - 1) * (2 * w - 1)
        full = torch.empty(h * w + 1, h * w + 1, dtype=torch.long)
        full[1:, 1:] = index
        full[0, 1:] = offsets  # class token as query
        full[1:, 0] = offsets + 1  # class token as key
        full[0, 0] = offsets + 2
        index = full
    return index


_INDEXES: dict[tuple[tuple[int, int], int], DeviceConstant] = {}


def _index_on(grid: tuple[int, int], prefix: int, device: torch.device) -> torch.Tensor:
    """:func:`relative_position_index` on ``device``, built once per grid (inside a compiled graph: built there)."""
    if torch.compiler.is_compiling():
        return relative_position_index(grid, prefix).to(device)
    constant = _INDEXES.get((grid, prefix))
    if constant is None:
        constant = _INDEXES[(grid, prefix)] = DeviceConstant(relative_position_index(grid, prefix))
    return constant.on(device)


class RelativePositionBias(nn.Module):
    """Learned bias ``[heads, L, L]`` from a table ``[(2h - 1)(2w - 1) + 3, heads]`` (zero at init)."""

    def __init__(self, grid: tuple[int, int], num_heads: int, prefix: int = 1) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.prefix = prefix
        h, w = self.grid
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1) + 3, num_heads))

    @property
    def table(self) -> torch.Tensor:
        return self.relative_position_bias_table

    def table_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The table for ``grid``: the learned one, or its offset part resized bicubically to the new grid."""
        grid = (int(grid[0]), int(grid[1]))
        if grid == self.grid:
            return self.table
        (h, w), (nh, nw) = self.grid, grid
        offsets, extra = self.table[:-3], self.table[-3:]
        maps = offsets.T.reshape(1, -1, 2 * h - 1, 2 * w - 1).float()
        maps = F.interpolate(maps, size=(2 * nh - 1, 2 * nw - 1), mode="bicubic", align_corners=False)
        return torch.cat([maps.reshape(offsets.shape[1], -1).T.to(offsets.dtype), extra])

    def forward(self, grid: tuple[int, int], keep: torch.Tensor | None = None) -> torch.Tensor:
        """Bias for every token of ``grid`` (``[heads, L, L]``), or for the tokens ``keep [B, K]`` of each
        sample, class token first (``[B, heads, P + K, P + K]``: an encoder that drops hidden tokens)."""
        grid = (int(grid[0]), int(grid[1]))
        table = self.table_for(grid)
        index = _index_on(grid, self.prefix, table.device)
        if keep is None:
            return table[index].permute(2, 0, 1)
        if self.prefix:
            keep = torch.cat([keep.new_zeros(keep.shape[0], 1), keep + 1], dim=1)
        rows = index[keep.unsqueeze(-1), keep.unsqueeze(1)]  # [B, K, K]
        return table[rows].permute(0, 3, 1, 2)
