"""A point-cloud classifier on a Point-MAE encoder, for fine-tuning (Point-MAE's head on pooled group features)."""

from __future__ import annotations

import torch
from torch import nn

from mimx.modalities.points.model import PointMAE
from mimx.train.finetune import average_views
from mimx.transformer import run_blocks


class PointClassifier(nn.Module):
    """Group embedding, centre positions (added at every block), the encoder's blocks, norm, max + mean pool,
    then Point-MAE's MLP head (256, BN, ReLU, dropout 0.5, twice).

    Names follow timm's ViT (``patch_embed``, ``pos_embed``, ``blocks.N``) so layer-wise lr decay finds
    each depth. Input ``[B, N, 3]``, or ``[B, V, N, 3]`` for voting: then the output is the log of the
    views' mean class probabilities.
    """

    def __init__(self, mae: PointMAE, num_classes: int, drop_path: float = 0.0, dropout: float = 0.5) -> None:
        super().__init__()
        c = mae.config
        self.patch_embed = mae.tokenizer
        self.pos_embed = mae.encoder_pos
        self.blocks = mae.encoder.copy_blocks(drop_path)
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.norm.load_state_dict(mae.encoder.norm.state_dict())
        width = 2 * c.embed_dim
        self.head = nn.Sequential(
            nn.Linear(width, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(256, num_classes))
        self.grad_checkpointing = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens, layout = self.patch_embed(x)
        pos = self.pos_embed(layout).to(tokens.dtype)
        tokens = self.norm(run_blocks(self.blocks, tokens, self.grad_checkpointing, pos))
        return torch.cat([tokens.amax(dim=1), tokens.mean(dim=1)], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = x.shape[1] if x.dim() == 4 else 0
        return average_views(self.head(self.forward_features(x.flatten(0, 1) if views else x)), views)
