"""Image masked modelling: MAE (and SimMIM-style mask-token encoders) on ViT patch tokens."""

from mimx.modalities.image.model import PRESETS, ImageMAE, ImageMAEConfig, image_mae_config, mae_vit

__all__ = ["PRESETS", "ImageMAE", "ImageMAEConfig", "image_mae_config", "mae_vit"]
