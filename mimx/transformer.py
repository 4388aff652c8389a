"""Encoder and decoder stacks built from timm ViT blocks (fused scaled-dot-product attention)."""

from __future__ import annotations

import functools

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from mimx.config import UserError
from mimx.masking import Mask, gather_tokens
from mimx.rel_pos import RelativePositionBias

# width, depth, heads (ViT paper; MAE and VideoMAE use the same encoders)
VIT_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


def apply_preset(values: dict, presets: dict[str, dict], what: str = "model.preset") -> dict:
    """Fill ``values`` from ``values["preset"]`` (explicit keys win); the name becomes ``vit_<preset>``."""
    values = dict(values)
    preset = values.pop("preset", None)
    if preset is None:
        return values
    if preset not in presets:
        raise UserError(f"unknown {what} {preset!r}; choose one of {', '.join(presets)}")
    return {**presets[preset], "name": f"vit_{preset}", **values}


def make_blocks(
    dim: int,
    depth: int,
    num_heads: int,
    *,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    norm_eps: float = 1e-6,
    drop_path: float = 0.0,
    init_values: float | None = None,
) -> nn.ModuleList:
    """``depth`` pre-norm timm blocks with drop-path rising linearly to ``drop_path``."""
    if dim % num_heads:
        raise ValueError(f"width {dim} is not divisible by {num_heads} attention heads")
    norm = functools.partial(nn.LayerNorm, eps=norm_eps)
    rates = torch.linspace(0, drop_path, depth).tolist() if depth else []
    return nn.ModuleList(
        Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=rate,
              init_values=init_values, norm_layer=norm)
        for rate in rates
    )


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, grad_checkpointing: bool = False,
               pos: torch.Tensor | None = None, biases: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Apply ``blocks`` in turn; with ``pos``, add it to the input of every block (Point-MAE); with
    ``biases`` (one per block, or one for all), add it to that block's attention logits."""
    for i, block in enumerate(blocks):
        if pos is not None:
            x = x + pos
        bias = None if biases is None else biases[i if len(biases) > 1 else 0]
        if grad_checkpointing and x.requires_grad:
            x = checkpoint(block, x, bias, use_reentrant=False)
        else:
            x = block(x, bias)
    return x


REL_POS_MODES = ("none", "shared", "layer")


class MaskedEncoder(nn.Module):
    """ViT encoder that either drops hidden tokens (MAE) or replaces them with a learned mask token (SimMIM).

    ``forward(tokens, pos, mask)`` returns normalised features ``[B, P + N, D]``
    where ``P`` is 1 with a class token and ``N`` is the visible count (drop
    mode), or all tokens (mask-token mode, or ``mask=None``).

    ``rel_pos`` adds BEiT's relative position bias on the 2-D token ``grid``
    (forward then takes the grid as ``layout``): ``shared`` is one table for
    every block (BEiT pretraining), ``layer`` one per block.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        drop_path: float = 0.0,
        init_values: float | None = None,
        class_token: bool = True,
        mask_token: bool = False,
        final_norm: bool = True,
        pos_every_block: bool = False,
        rel_pos: str = "none",
        grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if rel_pos not in REL_POS_MODES:
            raise UserError(f"model.rel_pos_bias must be one of {', '.join(REL_POS_MODES)}, got {rel_pos!r}")
        if rel_pos != "none" and grid is None:
            raise ValueError("a relative position bias needs the token grid")
        self.dim = dim
        self.pos_every_block = pos_every_block
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.norm_eps = norm_eps
        self.init_values = init_values
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if mask_token else None
        self.blocks = make_blocks(dim, depth, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                  norm_eps=norm_eps, drop_path=drop_path, init_values=init_values)
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if final_norm else nn.Identity()
        self.rel_pos = rel_pos
        tables = {"none": 0, "shared": 1, "layer": depth}[rel_pos]
        prefix = 0 if self.cls_token is None else 1
        self.rel_pos_bias = nn.ModuleList(RelativePositionBias(grid, num_heads, prefix) for _ in range(tables))
        self.grad_checkpointing = False

    @property
    def num_prefix_tokens(self) -> int:
        return 0 if self.cls_token is None else 1

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def copy_blocks(self, drop_path: float = 0.0) -> nn.ModuleList:
        """A copy of the blocks with their weights and a new drop-path rate (for fine-tuning heads)."""
        blocks = make_blocks(self.dim, self.depth, self.num_heads, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                             norm_eps=self.norm_eps, drop_path=drop_path, init_values=self.init_values)
        blocks.load_state_dict(self.blocks.state_dict())
        return blocks

    def attention_biases(self, layout: tuple[int, int] | None, mask: Mask | None) -> list[torch.Tensor] | None:
        """The relative position biases of the blocks for the tokens they see (None without ``rel_pos``)."""
        if not len(self.rel_pos_bias):
            return None
        if layout is None:
            raise ValueError("this encoder has a relative position bias: pass the token grid as layout")
        keep = mask.ids_keep if mask is not None and self.mask_token is None else None
        biases = [table(tuple(layout), keep) for table in self.rel_pos_bias]
        device = biases[0].device.type
        if torch.is_autocast_enabled(device):  # scores are in the autocast dtype: an fp32 bias would promote them
            biases = [b.to(torch.get_autocast_dtype(device)) for b in biases]
        return biases

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor | None, mask: Mask | None = None,
                layout: tuple[int, int] | None = None) -> torch.Tensor:
        """``pos`` is added to the tokens (None: no absolute positions, e.g. BEiT with relative ones)."""
        biases = self.attention_biases(layout, mask)
        x = tokens
        if mask is not None and self.mask_token is not None:
            x = torch.where(mask.mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        if pos is not None:
            pos = pos.to(tokens.dtype)
        if pos is not None and self.pos_every_block:  # positions enter every block, not only the first
            pos = pos.expand(x.shape[0], -1, -1)
        elif pos is not None:
            x, pos = x + pos, None
        if mask is not None and self.mask_token is None:
            x = gather_tokens(x, mask.ids_keep)
            pos = None if pos is None else gather_tokens(pos, mask.ids_keep)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
            pos = None if pos is None else torch.cat([pos.new_zeros(x.shape[0], 1, x.shape[2]), pos], dim=1)
        x = run_blocks(self.blocks, x, self.grad_checkpointing, pos, biases)
        return self.norm(x)


class MaskedDecoder(nn.Module):
    """Light transformer decoder: puts mask tokens back at hidden positions and predicts every token.

    Input: encoder features ``[B, P + K, D_enc]`` (prefix tokens first). If
    ``K`` is smaller than the token count the hidden positions are filled with
    the learned mask token through ``mask.ids_restore``. Output: ``[B, L, out_dim]``.
    With ``decode_ids`` (``[B, K_d]``, VideoMAE v2 dual masking) only those
    hidden tokens get a mask token and a prediction: output ``[B, K_d, out_dim]``.
    With ``depth=0`` it is a linear head on the encoder features (SimMIM); fed
    every token's features, ``decode_ids`` then picks the tokens it predicts.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        out_dim: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        fill_hidden: bool = True,
        embed_bias: bool = True,
        head_norm_eps: float | None = None,
        pos_every_block: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.pos_every_block = pos_every_block
        self.embed = nn.Linear(in_dim, dim, bias=embed_bias) if depth else nn.Identity()
        width = dim if depth else in_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width)) if fill_hidden else None
        self.blocks = make_blocks(width, depth, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                  norm_eps=norm_eps) if depth else nn.ModuleList()
        head_eps = norm_eps if head_norm_eps is None else head_norm_eps
        self.norm = nn.LayerNorm(width, eps=head_eps) if depth else nn.Identity()
        self.head = nn.Linear(width, out_dim)
        self.grad_checkpointing = False

    @property
    def width(self) -> int:
        return self.head.in_features

    @property
    def per_token(self) -> bool:
        """True for the bare head (``depth=0``): each prediction reads only its own token's features."""
        return not len(self.blocks)

    def forward(
        self, latent: torch.Tensor, pos: torch.Tensor | None, mask: Mask, num_prefix: int = 1,
        decode_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embed(latent)
        prefix, x = x[:, :num_prefix], x[:, num_prefix:]
        if decode_ids is not None:
            return self._decode_subset(prefix, x, pos, mask, decode_ids)
        length = mask.mask.shape[1]
        if x.shape[1] != length:
            if self.mask_token is None:
                raise RuntimeError("decoder got only visible tokens but was built with fill_hidden=False")
            fill = self.mask_token.to(x.dtype).expand(x.shape[0], length - x.shape[1], -1)
            x = gather_tokens(torch.cat([x, fill], dim=1), mask.ids_restore)
        every = None
        if pos is not None:
            if self.pos_every_block and len(self.blocks):
                every = torch.cat([pos.new_zeros(x.shape[0], num_prefix, x.shape[2]),
                                   pos.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
            else:
                x = x + pos.to(x.dtype)
        if len(self.blocks):
            x = torch.cat([prefix, x], dim=1)
            x = run_blocks(self.blocks, x, self.grad_checkpointing, every)
            x = self.norm(x)[:, num_prefix:]
        return self.head(x)

    def _decode_subset(self, prefix: torch.Tensor, visible: torch.Tensor, pos: torch.Tensor | None, mask: Mask,
                       decode_ids: torch.Tensor) -> torch.Tensor:
        if self.per_token and visible.shape[1] == mask.mask.shape[1]:  # features of every token: head on the subset
            x = gather_tokens(visible, decode_ids)
            return self.head(x if pos is None else x + gather_tokens(pos.to(x.dtype).expand(x.shape[0], -1, -1),
                                                                      decode_ids))
        if self.mask_token is None or not len(self.blocks) or visible.shape[1] != mask.num_visible:
            raise RuntimeError("decoding a subset needs a transformer decoder fed only the visible tokens")
        batch = visible.shape[0]
        queries = self.mask_token.to(visible.dtype).expand(batch, decode_ids.shape[1], -1)
        if pos is not None:
            pos = pos.to(visible.dtype).expand(batch, -1, -1)
            visible = visible + gather_tokens(pos, mask.ids_keep)
            queries = queries + gather_tokens(pos, decode_ids)
        x = torch.cat([prefix, visible, queries], dim=1)
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.head(self.norm(x[:, -decode_ids.shape[1]:]))


class FusedUnlessGrad:
    """A ``fused_attn`` value that is true while autograd is off: fused SDPA for inference, matmul +
    softmax when a backward will follow (on the CPU, bf16 SDPA's forward is the faster one, its
    backward the slower one)."""

    def __bool__(self) -> bool:
        return not torch.is_grad_enabled()

    def __repr__(self) -> str:
        return "FusedUnlessGrad()"


FUSED_UNLESS_GRAD = FusedUnlessGrad()


def set_fused_attention(module: nn.Module, enabled: bool | FusedUnlessGrad) -> int:
    """Switch timm attention between fused SDPA and explicit matmul + softmax; returns the count switched.

    Both compute the same attention. On the CPU the explicit path trains faster
    (the fused CPU kernel's backward is slow for ViT sequence lengths), while
    the fused forward is faster: :data:`FUSED_UNLESS_GRAD` picks per call.
    """
    count = 0
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = enabled
            count += 1
    return count


def init_mae_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform linears with zero bias, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
