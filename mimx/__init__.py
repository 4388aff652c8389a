"""mimx: masked-modelling suite (images, videos, point clouds, multi-modal images).

The core here is modality-agnostic; modalities live in ``mimx.modalities``.
"""

from mimx.autoencoder import MAEOutput, MaskedAutoencoder
from mimx.masking import Mask, block_mask, coarse_mask, random_mask, tube_mask
from mimx.pos_embed import sincos_1d, sincos_grid
from mimx.targets import HOGTarget, PixelTarget

__version__ = "0.1.0"

__all__ = [
    "HOGTarget", "MAEOutput", "Mask", "MaskedAutoencoder", "PixelTarget", "__version__", "block_mask", "coarse_mask",
    "random_mask", "sincos_1d", "sincos_grid", "tube_mask",
]
