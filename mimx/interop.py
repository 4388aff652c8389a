"""Weight-name plumbing shared by the transformers converters of every modality.

transformers' ViT-family layers (ViTMAE, VideoMAE) store attention as separate
query/key/value linears; timm blocks hold one fused ``qkv``. These helpers map
one onto the other and accept both the transformers 4.x and 5.x layer names.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch

from mimx.config import UserError

# transformers >= 5 layer names, and the 4.x names they replaced
_LAYER_RENAMES = [
    (r"attention\.attention\.query\.", "attention.q_proj."),
    (r"attention\.attention\.key\.", "attention.k_proj."),
    (r"attention\.attention\.value\.", "attention.v_proj."),
    (r"attention\.attention\.([qv])_bias$", r"attention.\1_proj.bias"),  # VideoMAE 4.x: q and v biases alone
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"intermediate\.dense\.", "mlp.fc1."),
    (r"(?<!attention\.)output\.dense\.", "mlp.fc2."),
    (r"^(vit|videomae|beit)\.encoder\.layer\.", r"\1.layers."),
    (r"^beit\.encoder\.relative_position_bias\.", "beit.shared_position_bias."),
    (r"\.attention\.attention\.relative_position_bias\.", ".relative_position_bias."),
    (r"^(vit|videomae)\.encoder\.", r"\1."),
]


def normalise_hf_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers state dict with its layer names in one (5.x-style) spelling."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _LAYER_RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def pop_hf_blocks(hf: dict[str, torch.Tensor], src: str, dst: str, depth: int) -> dict[str, torch.Tensor]:
    """Remove ``depth`` transformer layers under ``src`` from ``hf`` and return them as timm blocks under ``dst``.

    A missing key bias (VideoMAE has query and value biases only) becomes zeros:
    a key bias shifts every score of a query equally, so softmax ignores it.
    """
    state: dict[str, torch.Tensor] = {}
    for i in range(depth):
        s, d = f"{src}.{i}.", f"{dst}.{i}."
        weights = [hf.pop(f"{s}attention.{n}_proj.weight") for n in "qkv"]
        state[f"{d}attn.qkv.weight"] = torch.cat(weights, dim=0)
        biases = [hf.pop(f"{s}attention.{n}_proj.bias", None) for n in "qkv"]
        if any(b is not None for b in biases):
            biases = [torch.zeros(w.shape[0], dtype=w.dtype) if b is None else b
                      for b, w in zip(biases, weights, strict=True)]
            state[f"{d}attn.qkv.bias"] = torch.cat(biases, dim=0)
        for part in ("weight", "bias"):
            state[f"{d}attn.proj.{part}"] = hf.pop(f"{s}attention.o_proj.{part}")
            state[f"{d}norm1.{part}"] = hf.pop(f"{s}layernorm_before.{part}")
            state[f"{d}norm2.{part}"] = hf.pop(f"{s}layernorm_after.{part}")
            state[f"{d}mlp.fc1.{part}"] = hf.pop(f"{s}mlp.fc1.{part}")
            state[f"{d}mlp.fc2.{part}"] = hf.pop(f"{s}mlp.fc2.{part}")
    return state


def check_hf_blocks(hf_config: Any, name: str) -> None:
    """Refuse what timm blocks cannot hold (non-GELU activations); warn about dropout mimx does not have."""
    if getattr(hf_config, "hidden_act", "gelu") != "gelu":
        raise UserError(f"{name} config uses hidden_act={hf_config.hidden_act!r}; mimx blocks use exact GELU "
                        "('gelu')")
    if hf_config.hidden_dropout_prob or hf_config.attention_probs_dropout_prob:
        warnings.warn(f"{name} config has dropout; mimx blocks have none (it only matters for training)",
                      stacklevel=4)
