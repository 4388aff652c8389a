"""MultiMAE: one encoder over the visible tokens of several aligned modalities, one decoder per task.

Every modality is a config entry (:class:`ModalitySpec`): an input adapter (pixels, depth or class
maps -> tokens), an output adapter and a loss. Per sample, a Dirichlet(alpha) draw splits a fixed
budget of visible tokens across the modalities present (exactly ``num_visible`` in every sample, so
the encoder batches without padding); every task predicts all of its patches from the encoder
tokens, and its loss counts the hidden ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mimx.config import UserError, from_mapping
from mimx.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalizer
from mimx.devices import to_device
from mimx.masking import Mask, group_budget_mask, sample_dirichlet, split_budget
from mimx.modalities.multimodal.adapters import InputAdapter, OutputAdapter
from mimx.patches import normalize_patches, patchify
from mimx.transformer import VIT_PRESETS, MaskedEncoder, apply_preset, init_mae_weights

KINDS = ("pixels", "depth", "classes")
LOSSES = {"pixels": ("mse", "l1"), "depth": ("l1",), "classes": ("cross_entropy",)}


@dataclass
class ModalitySpec:
    """One modality: how it is tokenised, predicted and scored."""

    kind: str = "pixels"  # pixels (float maps, e.g. RGB, normals, grey) | depth | classes (segmentation)
    channels: int = 3  # pixels: channels; depth: 1; classes: ignored
    num_classes: int = 0  # classes: ids 0..num_classes-1; others are ignored
    ignore_index: int = 255
    class_dim: int = 64  # classes: width of the class embedding before the patch projection
    loss: str | None = None  # pixels: mse | l1; depth: l1 (masked, invalid pixels ignored); classes: cross_entropy
    weight: float = 1.0
    norm_pix: bool = False  # pixels: per-patch normalised targets
    mean: list[float] | None = None  # pixels: uint8 maps become (x / 255 - mean) / std; None: x / 255
    std: list[float] | None = None
    input: bool = True  # fed to the encoder
    target: bool = True  # reconstructed and scored

    def check(self, name: str) -> None:
        if self.kind not in KINDS:
            raise UserError(f"model.modalities.{name}.kind={self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.loss is None:
            self.loss = LOSSES[self.kind][0]
        if self.loss not in LOSSES[self.kind]:
            raise UserError(f"model.modalities.{name}.loss={self.loss!r}; a {self.kind} modality takes "
                            f"{', '.join(LOSSES[self.kind])}")
        if self.kind == "classes" and self.num_classes < 1:
            raise UserError(f"model.modalities.{name}.num_classes must be set for a classes modality")
        if self.kind == "depth":
            self.channels = 1
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != self.channels:
                raise UserError(f"model.modalities.{name}.{key} needs {self.channels} values")
        if not (self.input or self.target):
            raise UserError(f"model.modalities.{name} is neither an input nor a target")

    @property
    def values_per_pixel(self) -> int:
        return self.num_classes if self.kind == "classes" else self.channels


def _default_modalities() -> dict[str, dict[str, Any]]:
    return {"rgb": {"kind": "pixels", "channels": 3, "loss": "mse", "mean": list(IMAGENET_MEAN),
                    "std": list(IMAGENET_STD)},
            "depth": {"kind": "depth", "loss": "l1"},
            "semseg": {"kind": "classes", "num_classes": 8, "loss": "cross_entropy"}}


@dataclass
class MultiMAEConfig:
    """Architecture and objective of a MultiMAE."""

    img_size: int = 64
    patch_size: int = 8
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    num_visible: int = 32  # visible tokens per sample, over all modalities (MultiMAE: 98 of 3 x 196)
    alpha: float = 1.0  # Dirichlet concentration of the budget split
    drop_inputs: float = 0.0  # chance to hide each input modality entirely from a sample (one always stays)
    modalities: dict[str, dict[str, Any]] = field(default_factory=_default_modalities)
    name: str = "custom"

    @property
    def grid(self) -> tuple[int, int]:
        return (self.img_size // self.patch_size, self.img_size // self.patch_size)

    def specs(self) -> dict[str, ModalitySpec]:
        specs = {}
        for name, values in self.modalities.items():
            spec = from_mapping(ModalitySpec, values, f"model.modalities.{name}")
            spec.check(name)
            specs[name] = spec
        return specs

    def architecture(self) -> dict[str, Any]:
        keys = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "decoder_dim", "decoder_depth",
                "decoder_heads")
        return {**{k: getattr(self, k) for k in keys},
                "modalities": {n: dataclasses.asdict(s) for n, s in self.specs().items()}}


@dataclass
class MultiMAEOutput:
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]  # per task, unweighted
    preds: dict[str, torch.Tensor]  # per task, [B, L_task, patch * patch * values]
    mask: Mask  # over the input tokens laid end to end (input modalities in config order)
    counts: torch.Tensor  # [B, M_in] visible tokens per input modality


def valid_depth(depth: torch.Tensor) -> torch.Tensor:
    """Where a depth map holds a measurement: finite and > 0."""
    return torch.isfinite(depth) & (depth > 0)


def depth_moments(depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image mean and standard deviation of the valid pixels of ``depth [B, ...]`` (shaped to broadcast
    against it), and the valid mask."""
    depth = depth.float()
    valid = valid_depth(depth)
    safe = torch.where(valid, depth, torch.zeros_like(depth))
    shape = (-1,) + (1,) * (depth.dim() - 1)
    count = valid.flatten(1).sum(1).clamp_min(1).view(shape)
    mean = safe.flatten(1).sum(1).view(shape) / count
    var = (torch.where(valid, safe - mean, torch.zeros_like(safe)) ** 2).flatten(1).sum(1).view(shape) / count
    return mean, var.sqrt(), valid


def standardize_depth(depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image standardised depth ``[B, 1, H, W]`` over its valid pixels (finite, > 0); invalid -> 0.

    Returns ``(standardised, valid)``. An image without any valid pixel is all 0 and all invalid.
    """
    mean, std, valid = depth_moments(depth)
    depth = depth.float()
    return torch.where(valid, (depth - mean) / (std + 1e-6), torch.zeros_like(depth)), valid


class MultiMAE(nn.Module):
    """Input adapters -> Dirichlet budget masking -> shared encoder -> one output adapter per task."""

    def __init__(self, config: MultiMAEConfig) -> None:
        super().__init__()
        c = config
        if c.img_size % c.patch_size:
            raise UserError(f"model.img_size {c.img_size} is not divisible by model.patch_size {c.patch_size}")
        self.config = c
        self.specs = c.specs()
        self.inputs = [n for n, s in self.specs.items() if s.input]
        self.targets = [n for n, s in self.specs.items() if s.target]
        if not self.inputs or not self.targets:
            raise UserError("model.modalities needs at least one input and one target")
        # uint8 pixel maps -> (x / 255 - mean) / std, per modality that sets mean and std (and back, for figures)
        self.normalizers = {n: Normalizer(s.mean, s.std) for n, s in self.specs.items()
                            if s.mean is not None and s.std is not None}
        tokens = len(self.inputs) * c.grid[0] * c.grid[1]
        if not 0 < c.num_visible < tokens:
            raise UserError(f"model.num_visible={c.num_visible} must lie between 1 and {tokens - 1} "
                            f"({len(self.inputs)} input modalities x {c.grid[0] * c.grid[1]} patches)")
        p = c.patch_size
        self.input_adapters = nn.ModuleDict({
            n: InputAdapter("classes" if s.kind == "classes" else "pixels", s.channels, p, c.embed_dim,
                            num_classes=s.num_classes, class_dim=s.class_dim, ignore_index=s.ignore_index)
            for n, s in self.specs.items() if s.input})
        self.encoder = MaskedEncoder(c.embed_dim, c.depth, c.num_heads, mlp_ratio=c.mlp_ratio, drop_path=c.drop_path,
                                     class_token=True)
        self.output_adapters = nn.ModuleDict({
            n: OutputAdapter(c.embed_dim, c.decoder_dim, c.decoder_depth, c.decoder_heads, p * p * s.values_per_pixel)
            for n, s in self.specs.items() if s.target})
        init_mae_weights(self)
        for adapter in self.input_adapters.values():
            w = adapter.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    # ------------------------------------------------------------------ inputs and targets
    def pixels(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """A pixel map as the model sees it: uint8 -> ``(x / 255 - mean) / std``; float maps as given."""
        if x.dtype != torch.uint8:
            return x.float()
        return self.normalizers[name](x) if name in self.normalizers else x.float() / 255.0

    def prepare(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Model-ready maps: pixels normalised, depth standardised per image (invalid -> 0), class ids as given."""
        ready = {}
        for name, spec in self.specs.items():
            if name not in batch:
                continue
            x = batch[name]
            if spec.kind == "depth":
                x = standardize_depth(x if x.dim() == 4 else x.unsqueeze(1))[0]
            elif spec.kind == "pixels":
                x = self.pixels(name, x)
            ready[name] = x
        return ready

    def tokens(self, batch: Mapping[str, torch.Tensor], names: list[str],
               ready: Mapping[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, list[int]]:
        """Input tokens of ``names`` laid end to end, and the length of each group (``ready``: prepared maps)."""
        ready = self.prepare(batch) if ready is None else ready
        parts = [self.input_adapters[n](ready[n]) for n in names]
        return torch.cat(parts, dim=1), [t.shape[1] for t in parts]

    def target(self, name: str, raw: torch.Tensor,
               ready: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target [B, L, p*p*C or p*p], valid [B, L, p*p])`` of one task from its raw map.

        ``ready``: the map as :meth:`prepare` made it, when already at hand (saves standardising depth twice).
        """
        spec, p = self.specs[name], self.config.patch_size
        if spec.kind == "classes":
            ids = raw.long().unsqueeze(1)
            ids = torch.where((ids < 0) | (ids >= spec.num_classes), -1, ids)
            target = patchify(ids, (p, p))
            return target, target >= 0
        if spec.kind == "depth":
            raw = raw if raw.dim() == 4 else raw.unsqueeze(1)
            std = standardize_depth(raw)[0] if ready is None else ready
            return patchify(std, (p, p)), patchify(valid_depth(raw).float(), (p, p)) > 0
        target = patchify(self.pixels(name, raw) if ready is None else ready, (p, p))
        if spec.norm_pix:
            target = normalize_patches(target)
        valid = torch.ones(*target.shape[:2], p * p, dtype=torch.bool, device=target.device)
        return target, valid

    def task_loss(self, name: str, pred: torch.Tensor, raw: torch.Tensor, hidden: torch.Tensor,
                  ready: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss over the valid pixels of ``hidden`` patches (``[B, L]``) of one task."""
        spec = self.specs[name]
        target, valid = self.target(name, raw, ready)
        weight = valid & hidden.unsqueeze(-1)  # [B, L, p*p]
        pred = pred.float()
        if spec.kind == "classes":
            logits = pred.unflatten(-1, (-1, spec.num_classes))
            per_pixel = F.cross_entropy(logits.flatten(0, 2), target.clamp_min(0).flatten(), reduction="none")
            per_pixel = per_pixel.view_as(weight)
        else:
            diff = (pred - target).unflatten(-1, (valid.shape[-1], -1))
            per_pixel = (diff.abs() if spec.loss == "l1" else diff.square()).mean(-1)
        weight = weight.float()
        return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)

    # ------------------------------------------------------------------ masking
    def budget(self, batch: int, present: torch.Tensor | None, *, generator: torch.Generator | None = None,
               weights: torch.Tensor | None = None, device=None) -> torch.Tensor:
        """Visible tokens per input modality ``[B, M_in]`` (exact total ``num_visible``)."""
        c = self.config
        groups = len(self.inputs)
        if present is None:
            present = torch.ones(batch, groups, dtype=torch.bool)
        present = present.cpu().clone()
        if c.drop_inputs > 0 and groups > 1:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item()) if generator is not None else None
            draw_gen = torch.Generator().manual_seed(seed) if seed is not None else None
            drop = torch.rand(batch, groups, generator=draw_gen) < c.drop_inputs
            keep = present & ~drop
            # a sample keeps its drawn subset only if that still holds the visible budget
            enough = keep.sum(1, keepdim=True) * c.grid[0] * c.grid[1] >= c.num_visible
            present = torch.where(enough, keep, present)
        if weights is None:
            weights = sample_dirichlet(batch, c.alpha, groups, present=present, generator=generator)
        else:  # only modalities a sample has (and kept) share its budget
            weights = weights.detach().cpu().float() * present.float()
            weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
        lengths = [c.grid[0] * c.grid[1]] * groups
        present_tokens = (present.float() * lengths[0]).sum(1)
        if bool((present_tokens < c.num_visible).any()):
            raise UserError(f"a sample has fewer input tokens ({int(present_tokens.min())}) than model.num_visible="
                            f"{c.num_visible}; lower num_visible or keep more modalities")
        return split_budget(weights.cpu(), present.long() * lengths[0], c.num_visible).to(device)

    @torch.compiler.disable  # per-step integer budgeting with fresh seeds: traced, every step would recompile
    def sample_mask(self, lengths: list[int], present: torch.Tensor, *, noise: torch.Tensor | None = None,
                    weights: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    device=None) -> tuple[Mask, torch.Tensor]:
        """The step's mask over the input tokens and its visible counts per modality ``[B, M_in]``."""
        counts = self.budget(present.shape[0], present, generator=generator, weights=weights)  # on the host
        mask = group_budget_mask(lengths, counts, noise=noise, generator=generator, device=device)
        return mask, to_device(counts, device)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Mapping[str, torch.Tensor], *, present: torch.Tensor | None = None,
                noise: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> MultiMAEOutput:
        """Mask, encode, decode and score a batch of aligned maps ``{name: tensor}``.

        ``present [B, M]`` (config order of all modalities) marks the maps a sample really has:
        absent inputs get no visible token, absent targets no loss. ``noise [B, sum L_in]`` picks the
        visible tokens within each modality and ``weights [B, M_in]`` splits the budget; both are drawn
        from ``generator`` when not given.
        """
        names = list(self.specs)
        first = batch[self.inputs[0]]
        size = first.shape[0]
        device = first.device
        have = torch.ones(size, len(names), dtype=torch.bool) if present is None else present.cpu().bool()
        have_here = to_device(have, device)
        in_present = have[:, [names.index(n) for n in self.inputs]]
        ready = self.prepare(batch)
        tokens, lengths = self.tokens(batch, self.inputs, ready)
        mask, counts = self.sample_mask(lengths, in_present, noise=noise, weights=weights, generator=generator,
                                        device=device)
        latent = self.encoder(tokens, tokens.new_zeros(1, 1, tokens.shape[-1]), mask)
        prefix = self.encoder.num_prefix_tokens
        preds, losses = {}, {}
        total = tokens.new_zeros((), dtype=torch.float32)
        starts = {n: sum(lengths[:i]) for i, n in enumerate(self.inputs)}
        length = lengths[0]
        for name in self.targets:
            span = slice(starts[name], starts[name] + length) if name in starts else None
            pred = self.output_adapters[name](latent, self.config.grid, mask=mask, num_prefix=prefix, span=span)
            # a target that is never an input is hidden everywhere
            hidden = mask.mask[:, span] if span is not None else torch.ones(size, length, dtype=torch.bool,
                                                                              device=device)
            hidden = hidden & have_here[:, names.index(name)].unsqueeze(1)
            losses[name] = self.task_loss(name, pred, batch[name], hidden, ready.get(name))
            preds[name] = pred
            total = total + self.specs[name].weight * losses[name]
        return MultiMAEOutput(total, losses, preds, mask, counts)

    # ------------------------------------------------------------------ features
    def encode(self, batch: Mapping[str, torch.Tensor], names: list[str] | None = None) -> torch.Tensor:
        """Encoder features with no masking for any subset of input modalities: ``[B, 1 + sum L, D]``."""
        names = names or [n for n in self.inputs if n in batch]
        unknown = [n for n in names if n not in self.inputs]
        if unknown:
            raise UserError(f"{unknown} are not input modalities of this model (inputs: {self.inputs})")
        tokens, _ = self.tokens(batch, names)
        return self.encoder(tokens, tokens.new_zeros(1, 1, tokens.shape[-1]), None)

    def predict(self, batch: Mapping[str, torch.Tensor], inputs: list[str], targets: list[str] | None = None
                ) -> dict[str, torch.Tensor]:
        """Cross-modal prediction: every token of ``inputs`` visible, each target fully hidden and predicted by
        its output adapter: ``{target: [B, L, p*p*values]}`` (class logits; standardised depth; pixels)."""
        targets = targets or [n for n in self.targets if n not in inputs]
        unknown = [n for n in targets if n not in self.targets]
        if unknown:
            raise UserError(f"{unknown} are not output tasks of this model (tasks: {self.targets})")
        latent = self.encode(batch, inputs)
        return {n: self.output_adapters[n](latent, self.config.grid) for n in targets}

    def patch_features(self, batch: Mapping[str, torch.Tensor], names: list[str] | None = None) -> torch.Tensor:
        """Per-patch features ``[B, L, D]``: the mean over the given modalities of each patch's tokens."""
        names = names or [n for n in self.inputs if n in batch]
        feats = self.encode(batch, names)[:, self.encoder.num_prefix_tokens:]
        return feats.unflatten(1, (len(names), -1)).mean(1)


def multimae_config(cfg: Mapping[str, Any] | None = None, **overrides: Any) -> MultiMAEConfig:
    """Config from a mapping (a hydra ``model`` node) plus keyword overrides; ``preset`` fills sizes first."""
    values = apply_preset({**(cfg or {}), **overrides}, VIT_PRESETS)
    return from_mapping(MultiMAEConfig, values, "model")
