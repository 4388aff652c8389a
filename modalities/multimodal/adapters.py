"""MultiMAE's per-modality adapters: input adapters (pixels or class maps -> tokens) and output adapters
(cross-attention queries -> per-patch predictions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mimx.masking import Mask, gather_tokens
from mimx.patches import embed_patches, grid_size
from mimx.pos_embed import SinCosGridPosition
from mimx.transformer import make_blocks, run_blocks


class InputAdapter(nn.Module):
    """Tokens of one modality: patch embedding + fixed 2-D sin-cos positions + a learned modality embedding.

    ``kind="pixels"``: ``[B, C, H, W]`` float maps (RGB, depth, normals, grey ...) through a strided conv.
    ``kind="classes"``: ``[B, H, W]`` integer class ids (``ignore_index`` and out-of-range ids share one
    extra "unknown" embedding), embedded to ``class_dim`` channels, then the strided conv.
    """

    def __init__(self, kind: str, channels: int, patch: int, dim: int, *, num_classes: int = 0, class_dim: int = 64,
                 ignore_index: int = 255) -> None:
        super().__init__()
        self.kind = kind
        self.patch = patch
        self.channels = channels
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        if kind == "classes":
            self.class_embed = nn.Embedding(num_classes + 1, class_dim)
            channels = class_dim
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.pos = SinCosGridPosition(dim)  # one table per grid and device, not a host copy every step
        self.modality_embed = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.modality_embed, std=0.02)

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        spatial = x.shape[-2:]
        return grid_size(spatial, (self.patch, self.patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "classes":
            ids = x.long()
            tokens, grid = self._class_tokens(torch.where((ids < 0) | (ids >= self.num_classes), self.num_classes, ids))
        else:
            tokens, grid = embed_patches(x.to(self.proj.weight.dtype), self.proj)
        return tokens + self.pos(grid, tokens.device).to(tokens.dtype) + self.modality_embed.to(tokens.dtype)

    def _class_tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``proj(class_embed(ids))`` without the ``[B, class_dim, H, W]`` map in between.

        Both are linear, so a patch's token is the bias plus, for each pixel, the contribution of its class at
        its place in the patch: one ``[p * p * classes, D]`` table, summed per patch by ``embedding_bag``
        (3x faster than the convolution of the embedded map, forward and backward, on the CPU for 41 classes
        and a batch of 32). When that table would outgrow the map (many classes, small batches) the embedded
        patches go through one matmul instead.
        """
        b, p = ids.shape[0], self.patch
        gh, gw = self.grid(ids)
        weight, table = self.proj.weight, self.class_embed.weight  # [D, c, p, p], [K, c]
        dim, (classes, width) = weight.shape[0], table.shape
        if classes * dim > b * gh * gw * width:
            embedded = self.class_embed(ids).view(b, gh, p, gw, p, width).permute(0, 1, 3, 2, 4, 5)
            tokens = F.linear(embedded.reshape(b, gh * gw, -1), weight.permute(0, 2, 3, 1).flatten(1), self.proj.bias)
            return tokens, (gh, gw)
        contribution = torch.einsum("dcij,kc->ijkd", weight, table).reshape(p * p * classes, dim)
        pixels = ids.view(b, gh, p, gw, p).permute(0, 1, 3, 2, 4).reshape(b * gh * gw, p * p)
        rows = pixels + torch.arange(p * p, device=ids.device) * classes  # (place in the patch, class)
        tokens = F.embedding_bag(rows, contribution.float(), mode="sum") + self.proj.bias.float()
        return tokens.to(weight.dtype).view(b, gh * gw, dim), (gh, gw)


class CrossAttention(nn.Module):
    """Multi-head attention of queries to a context; ``fused_attn`` switches SDPA / matmul + softmax like timm's."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fused_attn = True

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = queries.shape
        q = self.q(queries).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention of queries to context tokens, then an MLP (MultiMAE's output adapter block)."""

    shard_unit = True  # FSDP shards it as one unit, like a transformer block

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_q, self.norm_ctx = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = CrossAttention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = queries + self.attn(self.norm_q(queries), self.norm_ctx(context))
        return x + self.mlp(self.norm_mlp(x))


class OutputAdapter(nn.Module):
    """Predictions for every patch of one task from the encoder tokens.

    Queries are the task's own visible tokens (projected) at their positions and a learned mask token
    at its hidden ones, plus 2-D sin-cos positions and a task embedding; they cross-attend to all
    encoder tokens, pass ``depth`` transformer blocks, and a linear head gives ``out_per_patch`` values.
    """

    def __init__(self, enc_dim: int, dim: int, depth: int, heads: int, out_per_patch: int) -> None:
        super().__init__()
        self.proj_context = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.task_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = SinCosGridPosition(dim)
        self.cross = CrossBlock(dim, heads)
        self.blocks = make_blocks(dim, depth, heads) if depth else nn.ModuleList()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_per_patch)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.task_embed, std=0.02)

    def forward(self, latent: torch.Tensor, grid: tuple[int, int], *, mask: Mask | None = None, num_prefix: int = 1,
                span: slice | None = None) -> torch.Tensor:
        """``latent [B, P + V, enc_dim]`` encoder output -> ``[B, L_task, out_per_patch]``.

        ``span``: where this task's tokens lie in the token order ``mask`` covers; without it (a task
        that is never an input) every query starts as the mask token.
        """
        context = self.proj_context(latent)
        length = grid[0] * grid[1]
        if span is None or mask is None:
            placed = self.mask_token.to(context.dtype).expand(context.shape[0], length, -1)
        else:
            visible = context[:, num_prefix:]
            batch, total = mask.mask.shape
            fill = self.mask_token.to(visible.dtype).expand(batch, total - visible.shape[1], -1)
            placed = gather_tokens(torch.cat([visible, fill], dim=1), mask.ids_restore)[:, span]
        queries = placed + self.pos(grid, placed.device).to(placed.dtype) + self.task_embed.to(placed.dtype)
        x = self.cross(queries, context)
        x = run_blocks(self.blocks, x)
        return self.head(self.norm(x))
