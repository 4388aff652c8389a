"""A video classifier on a VideoMAE encoder, for fine-tuning (VideoMAE's recipe: mean pool + norm + linear)."""

from __future__ import annotations

import torch
from torch import nn

from mimx.modalities.video.model import VideoMAE
from mimx.train.finetune import average_views
from mimx.transformer import run_blocks


class VideoClassifier(nn.Module):
    """Tubelet embedding, fixed positions, the encoder's blocks, mean pool, ``fc_norm``, linear head.

    Parameter names follow timm's ViT (``patch_embed``, ``blocks.N``, ``fc_norm``,
    ``head``) so layer-wise lr decay finds the depth of each one. Input
    ``[B, C, T, H, W]``, or ``[B, V, C, T, H, W]`` for multi-view testing:
    then the output is the log of the views' mean class probabilities.
    """

    def __init__(self, mae: VideoMAE, num_classes: int, drop_path: float = 0.0) -> None:
        super().__init__()
        c = mae.config
        self.patch_embed = mae.tokenizer
        self.pos = mae.encoder_pos
        self.blocks = mae.encoder.copy_blocks(drop_path)
        self.fc_norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        if isinstance(mae.encoder.norm, nn.LayerNorm):  # start from the pretrained final norm
            self.fc_norm.load_state_dict(mae.encoder.norm.state_dict())
        self.head = nn.Linear(c.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)
        self.grad_checkpointing = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.patch_embed(x)
        x = tokens + self.pos(grid, tokens.device).to(tokens.dtype)
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.fc_norm(x.mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = x.shape[1] if x.dim() == 6 else 0
        return average_views(self.head(self.forward_features(x.flatten(0, 1) if views else x)), views)
