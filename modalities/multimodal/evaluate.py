"""``mimx multimodal eval semseg|depth``: dense probes on frozen encoder features from any input subset.

The encoder sees the ``inputs`` modalities (default RGB only) with no masking; each patch's feature
(the mean of its tokens over the inputs) goes through a light head, one linear layer to the patch's
pixels, trained on the frozen features: class logits for ``semseg`` (scored by mIoU over the classes
present), log-depth for ``depth`` (scored by delta1 = share of pixels with max(pred/gt, gt/pred) < 1.25,
and abs-rel = mean |pred - gt| / gt, over valid pixels). The learning rate and epoch are chosen on
validation (``data.val`` shards, else a split carved from ``data.train``); the test split is scored once.
``head.kind=adapter`` trains nothing: it scores the model's own output adapter predicting the target from
the inputs (cross-modal prediction), with depth put back in metres by each image's true mean and spread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from mimx.config import UserError, from_mapping, name_list
from mimx.evaluation import fit_probe, probe_logits
from mimx.modalities.multimodal.data import MultiDataConfig, MultiDecoder
from mimx.modalities.multimodal.model import MultiMAE, depth_moments, multimae_config
from mimx.patches import patchify
from mimx.protocols import (
    EvalData,
    EvalSplitConfig,
    checkpoint_step,
    eval_processes,
    write_result,
)
from mimx.train.checkpoint import load_trained
from mimx.train.distributed import shutdown
from mimx.train.precision import Precision
from mimx.transformer import set_fused_attention

PROBES = ("semseg", "depth")
ENCODERS = ("pretrained", "random")


@dataclass
class MultiEvalDataConfig(EvalSplitConfig):
    """``data`` section of ``configs/multimodal/eval.yaml`` (the map size comes from the checkpoint)."""

    depth_unit: float = 0.001
    target: str | None = None  # the modality the probe predicts (default: semseg or depth by probe)


HEADS = ("linear", "adapter")


@dataclass
class ProbeConfig:
    kind: str = "linear"  # linear: trained per-patch head | adapter: the model's own output adapter, untrained
    lrs: list[float] = field(default_factory=lambda: [3e-3, 1e-2, 3e-2, 1e-1])
    epochs: int = 50
    batch_size: int = 64
    weight_decay: float = 1e-4
    finetune: bool = False  # train the encoder (and the inputs' adapters) with the head, on augmented crops
    finetune_lr: float = 3e-4  # fine-tuning: one lr for encoder and head; the epoch is chosen on validation


def load_multimae(path: str) -> MultiMAE:
    """A :class:`MultiMAE` with the weights of a run folder, checkpoint or ``model.safetensors``."""
    return load_trained(path, "multimodal", lambda config: MultiMAE(multimae_config(config)), "a MultiMAE")


def class_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> list[float | None]:
    """Intersection over union (in %) per class; None for a class in neither ``pred`` nor ``target``; -1 ignored."""
    valid = target >= 0
    p, t = pred[valid], target[valid]
    inter = torch.bincount(t[p == t], minlength=num_classes).float()
    union = (torch.bincount(p, minlength=num_classes) + torch.bincount(t, minlength=num_classes)).float() - inter
    return [float(i / u * 100) if u > 0 else None for i, u in zip(inter.tolist(), union.tolist(), strict=True)]


def mean_iou(ious: list[float | None]) -> float:
    """The mean of :func:`class_iou` over the classes seen (0 when none is)."""
    seen = [v for v in ious if v is not None]
    return sum(seen) / len(seen) if seen else 0.0


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean intersection over union (in %) over the classes present in ``pred`` or ``target``; -1 ignored."""
    return mean_iou(class_iou(pred, target, num_classes))


def depth_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """delta1 (%) and abs-rel over pixels with a valid (finite, > 0) target depth."""
    valid = torch.isfinite(target) & (target > 0)
    p, t = pred[valid].clamp_min(1e-3), target[valid]
    ratio = torch.maximum(p / t, t / p)
    return {"delta1": float((ratio < 1.25).float().mean() * 100), "abs_rel": float(((p - t).abs() / t).mean())}


def _outputs(model: MultiMAE, batch: dict[str, Any], inputs: list[str], target: str, kind: str, num_classes: int,
             device, precision: Precision, forward: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward(maps)`` of one batch (default: frozen patch features ``[B, L, D]``) on the CPU, and its
    per-patch targets ``[B, L, p*p]``."""
    maps = {n: batch[n].to(device) for n in inputs}
    with torch.no_grad(), precision.autocast():
        out = forward(maps) if forward is not None else model.patch_features(maps, inputs)
    return out.float().cpu(), _patch_targets(batch[target], kind, num_classes, model.config.patch_size)


def _collect(model: MultiMAE, loader, inputs: list[str], target: str, kind: str, num_classes: int, device,
             precision: Precision, forward: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_outputs` over one part, concatenated."""
    pairs = [_outputs(model, batch, inputs, target, kind, num_classes, device, precision, forward)
             for batch in loader if "present" in batch]
    if not pairs:
        raise UserError("no readable sample in this split; check data.train / data.val / data.test")
    return torch.cat([o for o, _ in pairs]), torch.cat([t for _, t in pairs])


def _patch_targets(raw: torch.Tensor, kind: str, num_classes: int, patch: int) -> torch.Tensor:
    """Per-patch probe targets ``[B, L, p*p]``: class ids (-1 ignored) or depth in metres (NaN invalid)."""
    if kind == "classes":
        ids = raw.long()
        ids = torch.where((ids < 0) | (ids >= num_classes), -1, ids)
        return patchify(ids.unsqueeze(1), (patch, patch))
    depth = raw.float()
    return patchify(depth if depth.dim() == 4 else depth.unsqueeze(1), (patch, patch))


def _scores(kind: str, logits: torch.Tensor, target: torch.Tensor, num_classes: int,
            per_class: bool = False) -> dict[str, Any]:
    """The probe's metrics; ``per_class`` adds each class's IoU (``iou``, a list) to mIoU."""
    if kind == "classes":
        pred = logits.unflatten(-1, (-1, num_classes)).argmax(-1)
        ious = class_iou(pred.flatten(), target.flatten(), num_classes)
        return {"miou": mean_iou(ious), **({"iou": ious} if per_class else {})}
    return depth_metrics(logits.exp(), target)


def _loss(kind: str, logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    if kind == "classes":
        return F.cross_entropy(logits.unflatten(-1, (-1, num_classes)).flatten(0, -2), target.flatten(),
                               ignore_index=-1)
    valid = torch.isfinite(target) & (target > 0)
    log_target = torch.where(valid, target.clamp_min(1e-3).log(), torch.zeros_like(target))
    return ((logits - log_target).abs() * valid).sum() / valid.sum().clamp_min(1)


def train_probe(kind: str, parts: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                cfg: ProbeConfig, seed: int = 0) -> dict[str, Any]:
    """Linear per-patch heads on frozen features (AdamW, constant lr); lr and epoch chosen on validation,
    test scored once."""
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = parts["train"], parts["val"], parts["test"]
    per_patch = tr_y.shape[-1] * (num_classes if kind == "classes" else 1)
    chosen = fit_probe(
        lambda: _head(tr_x.shape[-1], per_patch),
        lambda head, lr: torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=cfg.weight_decay),
        tr_x, tr_y, va_x, va_y, lrs=tuple(cfg.lrs), epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed,
        loss=lambda logits, target: _loss(kind, logits, target, num_classes),
        score=lambda logits, target: _scores(kind, logits, target, num_classes),
        metric="miou" if kind == "classes" else "delta1", cosine=False, min_batch=1)
    test = _scores(kind, probe_logits(chosen.model, te_x, cfg.batch_size), te_y, num_classes, per_class=True)
    return {"val": chosen.val, "test": test, "chosen": {"lr": chosen.lr, "epoch": chosen.epoch},
            "history": chosen.history}


def _head(dim: int, per_patch: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.LayerNorm(dim, elementwise_affine=False), torch.nn.Linear(dim, per_patch))


def adapter_scores(model: MultiMAE, data: EvalData, inputs: list[str], target: str, kind: str, num_classes: int,
                   device: torch.device, precision: Precision) -> dict[str, Any]:
    """Validation and test scores of the pretrained output adapter of ``target`` given ``inputs``; nothing is
    trained or chosen.

    Depth comes out standardised per image; it is put back in metres with the ground truth's own mean
    and spread over valid pixels (relative depth: scale and shift are not the model's to know).
    """
    def predict(maps: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.predict(maps, inputs, [target])[target]

    def score(part: str) -> dict[str, Any]:
        pred, targets = _collect(model, data.batches(part), inputs, target, kind, num_classes, device, precision,
                                 forward=predict)
        if kind == "depth":
            pred = _unstandardize(pred, targets).clamp_min(1e-3).log()
        return _scores(kind, pred, targets, num_classes, per_class=part == "test")

    return {"val": score("val"), "test": score("test"), "chosen": {}, "history": []}


def _unstandardize(pred: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Per-image standardised depth back in metres with the mean and spread of ``depth``'s valid pixels."""
    mean, std, _ = depth_moments(depth)
    return pred * std + mean


def finetune_dense(model: MultiMAE, kind: str, data: EvalData, inputs: list[str], target: str, num_classes: int,
                   cfg: ProbeConfig, device: torch.device, precision: Precision, seed: int = 0) -> dict[str, Any]:
    """Encoder + per-patch head trained end to end from ``inputs``; the epoch is chosen on validation."""
    p = model.config.patch_size
    head = _head(model.config.embed_dim, p * p * (num_classes if kind == "classes" else 1)).to(device)
    trained = [*model.encoder.parameters(), *head.parameters()]
    trained += [q for name in inputs for q in model.input_adapters[name].parameters()]
    optimizer = torch.optim.AdamW(trained, lr=cfg.finetune_lr, weight_decay=cfg.weight_decay)
    key = "miou" if kind == "classes" else "delta1"
    torch.manual_seed(seed)
    best, history = None, []

    def score(part: str) -> dict[str, Any]:
        model.eval()
        feats, targets = _collect(model, data.batches(part), inputs, target, kind, num_classes, device, precision)
        logits = probe_logits(head, feats, device=device).float()
        return _scores(kind, logits, targets, num_classes, per_class=part == "test")

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        head.train()
        for batch in data.batches("train", train_transform=True, batch_size=cfg.batch_size, seed=seed + epoch):
            if "present" not in batch:
                continue
            maps = {n: batch[n].to(device) for n in inputs}
            targets = _patch_targets(batch[target], kind, num_classes, p)
            with precision.autocast():
                logits = head(model.patch_features(maps, inputs)).float()
            loss = _loss(kind, logits, targets.to(device), num_classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val = score("val")
        history.append({"epoch": epoch, **val})
        if best is None or val[key] > best["val"][key]:
            best = {"epoch": epoch, "val": val, "model": {k: v.clone() for k, v in model.state_dict().items()},
                    "head": {k: v.clone() for k, v in head.state_dict().items()}}
    assert best is not None
    model.load_state_dict(best["model"])
    head.load_state_dict(best["head"])
    return {"val": best["val"], "test": score("test"), "chosen": {"epoch": best["epoch"]}, "history": history}


def _variant(cfg: ProbeConfig) -> str:
    return "-adapter" if cfg.kind == "adapter" else "-finetune" if cfg.finetune else ""


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run one dense probe as configured in ``configs/multimodal/eval.yaml``; returns the result dict."""
    if cfg.probe not in PROBES:
        raise UserError(f"probe {cfg.probe!r}; choose one of {', '.join(PROBES)} (mimx multimodal eval semseg ...)")
    if cfg.encoder not in ENCODERS:
        raise UserError(f"encoder={cfg.encoder!r}; choose one of {', '.join(ENCODERS)}")
    data_cfg = from_mapping(MultiEvalDataConfig, cfg.data, "data")
    probe_cfg = from_mapping(ProbeConfig, cfg.head, "head")
    if probe_cfg.kind not in HEADS:
        raise UserError(f"head.kind={probe_cfg.kind!r}; choose one of {', '.join(HEADS)}")
    frozen = probe_cfg.kind == "linear" and not probe_cfg.finetune  # the features extract on several processes
    dist = eval_processes(cfg.device, f"{cfg.probe}{_variant(probe_cfg)}", several=(cfg.probe,) if frozen else ())
    device = dist.device
    model = load_multimae(cfg.checkpoint)
    if cfg.encoder == "random":
        torch.manual_seed(cfg.seed)
        model = MultiMAE(model.config)
    model = model.eval().to(device)
    inputs = name_list(cfg.inputs)
    missing = [n for n in inputs if n not in model.inputs]
    if missing:
        raise UserError(f"inputs {missing} are not input modalities of this model ({model.inputs})")
    target = data_cfg.target or cfg.probe
    kind = "classes" if cfg.probe == "semseg" else "depth"
    specs = dict(model.specs)
    if target in specs and specs[target].kind != kind:
        want = "class ids (a semseg-like modality)" if kind == "classes" else "depth"
        raise UserError(f"data.target={target} is a {specs[target].kind} modality of this model; the {cfg.probe} "
                        f"probe predicts {want}: choose data.target among "
                        f"{[n for n, s in specs.items() if s.kind == kind] or '(none: give num_classes and a name)'}")
    if target not in specs:  # a probe target the model never saw (an RGB-only model): read it as well
        from mimx.modalities.multimodal.model import ModalitySpec

        if kind == "classes" and not cfg.num_classes:
            raise UserError(f"the model has no {target!r} modality: set num_classes for the probe")
        specs[target] = ModalitySpec(kind=kind, num_classes=int(cfg.num_classes or 0), loss=None)
        specs[target].check(target)
    num_classes = int(cfg.num_classes or (specs[target].num_classes if kind == "classes" else 1))
    # a sample lacking an input or the target is skipped and counted: scoring it would score placeholders
    maps = MultiDataConfig(image_size=model.config.img_size, depth_unit=data_cfg.depth_unit, missing="skip")
    wanted = {n: specs[n] for n in {*inputs, target}}
    data = EvalData(data_cfg, lambda train: MultiDecoder(maps, wanted, train=train), lambda sample: -1)
    precision = Precision.for_fp32_model(cfg.precision, device)  # the model and head train in fp32 here
    set_fused_attention(model, precision.prefers_fused_attention())
    started = time.perf_counter()
    if probe_cfg.kind == "adapter":
        if target not in model.targets:
            raise UserError(f"head.kind=adapter needs a model that predicts {target!r} (its tasks: {model.targets})")
        outcome = adapter_scores(model, data, inputs, target, kind, num_classes, device, precision)
        sizes = {"train": 0, "val": data.count("val"), "test": data.count("test")}
    elif probe_cfg.finetune:
        outcome = finetune_dense(model, kind, data, inputs, target, num_classes, probe_cfg, device, precision,
                                 seed=cfg.seed)
        sizes = {part: data.count(part) for part in ("train", "val", "test")}
    else:
        def featurize(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
            return _outputs(model, batch, inputs, target, kind, num_classes, device, precision)

        parts = data.frozen_features(featurize, "dense", dist)
        if parts is None:  # several processes: the main one trains and scores the probe on what they extracted
            shutdown()
            return {}
        outcome = train_probe(kind, parts, num_classes, probe_cfg, seed=cfg.seed)
        sizes = {part: len(parts[part][0]) for part in parts}
    key = "miou" if kind == "classes" else "delta1"
    result: dict[str, Any] = {
        "protocol": f"{cfg.probe}{_variant(probe_cfg)}-{'+'.join(inputs)}",
        "encoder": cfg.encoder, "checkpoint": str(cfg.checkpoint),
        "checkpoint_step": checkpoint_step(cfg.checkpoint), "inputs": inputs, "target": target,
        "metric": "mIoU" if kind == "classes" else "delta1",
        "val_top1": outcome["val"][key], "test_top1": outcome["test"][key], "val": outcome["val"],
        "test": outcome["test"], "chosen": outcome["chosen"], "history": outcome["history"],
        "train_samples": sizes["train"], "val_samples": sizes["val"], "test_samples": sizes["test"],
        "data": asdict(data_cfg), "head": asdict(probe_cfg),
        "seconds": round(time.perf_counter() - started, 1), "skipped": data.skipped(),
        "model": model.config.name}
    write_result(cfg, result)
    shutdown()
    return result
