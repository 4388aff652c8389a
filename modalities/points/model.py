"""Point-MAE: masked autoencoding of point groups (FPS centres + kNN neighbourhoods, Chamfer loss).

A cloud ``[B, N, 3]`` becomes ``G`` tokens: farthest-point-sampled centres, the ``k`` nearest points
of each made relative to their centre, embedded by a mini-PointNet; centres are embedded by an MLP
and added at every transformer block (as Point-MAE). A ratio of the groups is hidden (random or
block masking); the encoder sees the visible groups only; the decoder predicts the ``k`` relative
points of each hidden group, scored with Chamfer-L2 (or L1) against the true group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mimx.autoencoder import MaskedAutoencoder
from mimx.config import UserError, from_mapping
from mimx.masking import Mask, RandomMasking, check_ratio, random_mask
from mimx.modalities.points.ops import chamfer_distance, farthest_point_sample, group_points, resolve_backend
from mimx.transformer import VIT_PRESETS, MaskedDecoder, MaskedEncoder, apply_preset

# Point-MAE's decoder keeps the encoder's width (4 blocks)
PRESETS = {name: {**p, "decoder_dim": p["embed_dim"], "decoder_heads": p["num_heads"]}
           for name, p in VIT_PRESETS.items()}
LOSSES = ("chamfer_l2", "chamfer_l1")


@dataclass
class PointMAEConfig:
    """Architecture and objective of a Point-MAE (defaults: the paper's ShapeNet recipe)."""

    num_points: int = 1024
    num_groups: int = 64
    group_size: int = 32
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = False  # Point-MAE's blocks have no qkv bias
    norm_eps: float = 1e-5
    drop_path: float = 0.1
    pointnet_dims: list[int] = field(default_factory=lambda: [128, 256, 512])
    pos_hidden: int = 128
    decoder_dim: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6
    loss: str = "chamfer_l2"
    masking: dict[str, Any] = field(default_factory=lambda: {"kind": "random", "ratio": 0.6})
    backend: str = "auto"  # point ops: auto (pytorch3d when installed) | torch | pytorch3d
    name: str = "custom"

    def architecture(self) -> dict[str, Any]:
        """The fields that fix parameter shapes and token meaning (compared when a checkpoint is loaded)."""
        keys = ("num_groups", "group_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                "pointnet_dims", "pos_hidden", "decoder_dim", "decoder_depth", "decoder_heads")
        return {k: getattr(self, k) for k in keys}


@dataclass
class PointGroups:
    """The layout of a tokenised cloud: group centres ``[B, G, 3]`` and relative neighbourhoods ``[B, G, k, 3]``."""

    centres: torch.Tensor
    neighbourhood: torch.Tensor


class MiniPointNet(nn.Module):
    """Point-MAE's group embedding: shared MLP, max-pool, concat the pooled feature, MLP, max-pool."""

    def __init__(self, dim: int, widths: tuple[int, int, int] = (128, 256, 512)) -> None:
        super().__init__()
        a, b, c = widths
        self.first = nn.Sequential(nn.Linear(3, a), _PointBatchNorm(a), nn.ReLU(inplace=True), nn.Linear(a, b))
        self.second = nn.Sequential(nn.Linear(2 * b, c), _PointBatchNorm(c), nn.ReLU(inplace=True), nn.Linear(c, dim))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        """``[B, G, k, 3] -> [B, G, dim]``."""
        b, g, k, _ = groups.shape
        x = self.first(groups.reshape(b * g, k, 3))
        pooled = x.amax(dim=1, keepdim=True)
        x = self.second(torch.cat([pooled.expand(-1, k, -1), x], dim=-1))
        return x.amax(dim=1).view(b, g, -1)


class _PointBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of ``[..., C]`` features (every point of every group is a sample)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)


class PointGroupTokenizer(nn.Module):
    """Cloud ``[B, N, 3]`` -> group tokens ``[B, G, D]`` and the :class:`PointGroups` layout."""

    def __init__(self, num_groups: int, group_size: int, dim: int, widths: tuple[int, int, int],
                 backend: str = "auto") -> None:
        super().__init__()
        self.num_groups = num_groups
        self.group_size = group_size
        self.backend = backend
        self.embed = MiniPointNet(dim, widths)

    def group(self, points: torch.Tensor) -> PointGroups:
        """FPS centres and their kNN neighbourhoods, relative to the centre (no gradient)."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"expected clouds [B, N, 3], got {tuple(points.shape)}")
        if points.shape[1] < max(self.num_groups, self.group_size):
            raise UserError(f"clouds have {points.shape[1]} points, fewer than model.num_groups="
                            f"{self.num_groups} or model.group_size={self.group_size}")
        with torch.no_grad(), torch.autocast(points.device.type, enabled=False):
            points = points.float()
            centres, _ = farthest_point_sample(points, self.num_groups, backend=self.backend)
            neighbourhood = group_points(points, centres, self.group_size, backend=self.backend)
        return PointGroups(centres, neighbourhood)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, PointGroups]:
        layout = self.group(points)
        return self.embed(layout.neighbourhood), layout


class CentrePosition(nn.Module):
    """Point-MAE's position embedding: an MLP of the group centres, ``(layout, device) -> [B, G, dim]``."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, layout: PointGroups, device: torch.device | None = None) -> torch.Tensor:
        return self.mlp(layout.centres)


class BlockGroupMasking:
    """Point-MAE's block masking: hide the groups nearest to one random centre of each cloud.

    With ``noise [B, G]`` the seed centre is ``noise.argmax(1)``; visible count as random masking.
    """

    def __init__(self, ratio: float = 0.6) -> None:
        self.ratio = check_ratio(ratio)

    def __call__(self, batch: int, num_tokens: int, layout: PointGroups, *, noise=None, generator=None,
                 device=None) -> Mask:
        centres = layout.centres
        if noise is None:
            noise = torch.rand(batch, num_tokens, generator=generator,
                               device=generator.device if generator is not None else centres.device)
        seed = noise.to(centres.device).argmax(1)
        origin = centres.gather(1, seed.view(-1, 1, 1).expand(-1, 1, 3))
        distance = (centres - origin).norm(dim=-1)
        # random_mask keeps the lowest scores: the groups farthest from the seed stay visible
        return random_mask(batch, num_tokens, self.ratio, noise=-distance, device=centres.device)

    def __repr__(self) -> str:
        return f"BlockGroupMasking(ratio={self.ratio})"


class GroupChamfer:
    """Chamfer distance between predicted and true points of the hidden groups (the loss callable)."""

    def __init__(self, group_size: int, norm: str = "l2", backend: str = "auto") -> None:
        self.group_size = group_size
        self.norm = norm
        self.backend = backend

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        # every group is scored and the hidden ones averaged: no boolean indexing, so no host sync in the step
        k = self.group_size
        per_group = chamfer_distance(pred.reshape(-1, k, 3), target.reshape(-1, k, 3), norm=self.norm,
                                     reduction="none", backend=self.backend)
        weight = hidden.reshape(-1).to(per_group.dtype)
        return (per_group * weight).sum() / weight.sum().clamp_min(1.0)


def build_group_masking(kind: str = "random", ratio: float = 0.6) -> RandomMasking | BlockGroupMasking:
    if kind == "random":
        return RandomMasking(ratio)
    if kind == "block":
        return BlockGroupMasking(ratio)
    raise UserError(f"unknown masking.kind {kind!r} for point clouds; choose random or block")


def group_target(x: torch.Tensor, layout: PointGroups) -> torch.Tensor:
    """The relative points of every group, flattened: ``[B, G, k * 3]``."""
    return layout.neighbourhood.flatten(2)


class PointMAE(MaskedAutoencoder):
    """Masked autoencoder on clouds ``[B, N, 3]`` (no class token; positions added at every block)."""

    def __init__(self, config: PointMAEConfig) -> None:
        c = config
        if c.loss not in LOSSES:
            raise UserError(f"model.loss={c.loss!r}; choose one of {', '.join(LOSSES)}")
        if c.num_groups > c.num_points or c.group_size > c.num_points:
            raise UserError(f"model.num_groups ({c.num_groups}) and group_size ({c.group_size}) must not exceed "
                            f"model.num_points ({c.num_points})")
        if len(c.pointnet_dims) != 3:
            raise UserError("model.pointnet_dims takes three widths, e.g. [128, 256, 512]")
        if c.decoder_depth < 1:
            raise UserError("model.decoder_depth must be at least 1 for Point-MAE")
        backend = resolve_backend(c.backend)
        encoder = MaskedEncoder(c.embed_dim, c.depth, c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
                                norm_eps=c.norm_eps, drop_path=c.drop_path, class_token=False, pos_every_block=True)
        decoder = MaskedDecoder(c.embed_dim, c.decoder_dim, c.decoder_depth, c.decoder_heads, 3 * c.group_size,
                                mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias, norm_eps=c.norm_eps,
                                pos_every_block=True)
        super().__init__(
            tokenizer=PointGroupTokenizer(c.num_groups, c.group_size, c.embed_dim, tuple(c.pointnet_dims), backend),
            encoder=encoder,
            decoder=decoder,
            encoder_pos=CentrePosition(c.embed_dim, c.pos_hidden),
            decoder_pos=CentrePosition(c.decoder_dim, c.pos_hidden),
            masking=build_group_masking(**c.masking),
            target=group_target,
            loss=GroupChamfer(c.group_size, c.loss.removeprefix("chamfer_"), backend),
        )
        self.config = c
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Point-MAE's initialisation: truncated-normal (0.02) linears, zero biases, unit norms."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.decoder.mask_token, std=0.02)

    def features(self, x: torch.Tensor, pool: str = "max+mean") -> torch.Tensor:
        """Cloud features with no masking: ``max+mean`` ``[B, 2D]`` (max and mean of the group features
        side by side), ``max`` or ``mean`` ``[B, D]``, or ``tokens`` ``[B, G, D]``."""
        tokens = self.encode(x)
        if pool == "max+mean":
            return torch.cat([tokens.amax(dim=1), tokens.mean(dim=1)], dim=-1)
        if pool == "max":
            return tokens.amax(dim=1)
        if pool == "mean":
            return tokens.mean(dim=1)
        if pool == "tokens":
            return tokens
        raise UserError(f"unknown pooling {pool!r}; choose max+mean, max, mean or tokens")

    def groups(self, x: torch.Tensor) -> PointGroups:
        """The centres and neighbourhoods the model would cut ``x`` into."""
        return self.tokenizer.group(x)


def point_mae_config(cfg: Mapping[str, Any] | None = None, **overrides: Any) -> PointMAEConfig:
    """Config from a mapping (a hydra ``model`` node) plus keyword overrides; ``preset`` fills sizes first."""
    values = apply_preset({**(cfg or {}), **overrides}, PRESETS)
    return from_mapping(PointMAEConfig, values, "model")


def config_dict(config: PointMAEConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
