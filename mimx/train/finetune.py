"""Supervised fine-tuning of a ViT classifier as MAE does it.

AdamW with layer-wise lr decay, drop-path, label smoothing, optional
mixup/cutmix, warm-up then cosine per step. Each epoch ends with a validation
pass; the weights of the best validation epoch are kept (the test split is the
caller's, to be scored once with them). Under torchrun the processes train
one model with DDP (lr scaled by the global batch). With a state file, every
epoch ends with a checkpoint (atomic) and a rerun continues after the last one.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mimx.config import UserError
from mimx.train import checkpoint as ckpt
from mimx.train.allocator import tune_cpu_allocator
from mimx.train.distributed import DistInfo, all_reduce_mean, gather_objects
from mimx.train.optim import WarmupCosine, build_adamw, param_groups
from mimx.train.precision import Precision
from mimx.transformer import set_fused_attention


@dataclass
class FinetuneConfig:
    """``finetune`` section of eval configs (MAE's recipe, scaled down by default)."""

    epochs: int = 30
    batch_size: int = 64  # per process and micro-step
    accum_steps: int = 1  # micro-steps per optimiser step (global batch = batch_size x accum_steps x processes)
    base_lr: float = 1e-3  # lr = base_lr * global batch / 256
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    mixup: float = 0.0  # mixup alpha (0: off)
    cutmix: float = 0.0  # cutmix alpha (0: off)
    warmup_epochs: float = 3.0
    min_lr: float = 1e-6
    clip_grad: float | None = None
    precision: str = "auto"
    cpu_allocator: str = "auto"  # auto (heap on the CPU, as pretraining) | heap | system
    pool: str = "avg"  # avg (MAE fine-tuning: mean of patch tokens + norm) | token (class token)
    resume: str = "auto"  # auto: continue after the last finished epoch of the same fine-tuning | never
    stop_at_epoch: int | None = None  # stop after this epoch (schedule unchanged); run again to continue


def vit_layer_id(name: str, depth: int) -> int:
    """Depth of a timm ViT parameter for layer-wise lr decay: embeddings 0, block i -> i + 1, head depth + 1."""
    if name.startswith(("cls_token", "pos_embed", "patch_embed", "reg_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float, depth: int) -> list[dict]:
    """Parameter groups whose ``lr_scale`` is ``layer_decay ** (depth + 1 - layer id)``."""
    return param_groups(model, weight_decay, skip={"cls_token", "pos_embed"},
                        layer_scale=lambda n: layer_decay ** (depth + 1 - vit_layer_id(n, depth)))


def average_views(logits: torch.Tensor, views: int) -> torch.Tensor:
    """Multi-view testing: ``[B * views, K]`` logits -> log of each sample's mean class probabilities ``[B, K]``."""
    if views <= 1:
        return logits
    probs = logits.float().softmax(-1).view(-1, views, logits.shape[-1]).mean(1)
    return probs.clamp_min(1e-12).log()


@dataclass
class FinetuneResult:
    best_epoch: int
    best_val_top1: float
    state_dict: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    stopped_at_epoch: int | None = None  # set when ``stop_at_epoch`` ended the run early


FINETUNE_FORMAT = "mimx-finetune-state/1"


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[Any], prepare: Callable[[Any], tuple[torch.Tensor, torch.Tensor]],
            precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and labels over ``batches``."""
    model.eval()
    preds, labels = [], []
    for batch in batches:
        x, y = prepare(batch)
        with precision.autocast():
            logits = model(x.to(precision.input_dtype))
        preds.append(logits.float().argmax(1).cpu())
        labels.append(y.cpu())
    if not preds:  # a process whose share of the part is empty
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(preds), torch.cat(labels)


Scores = Callable[[nn.Module, Precision], tuple[torch.Tensor, torch.Tensor]]


def finetune(model: nn.Module, cfg: FinetuneConfig, *, depth: int, num_classes: int,
             train_epoch: Callable[[int], Iterable[Any]], val_scores: Scores,
             prepare: Callable[[Any], tuple[torch.Tensor, torch.Tensor]], steps_per_epoch: int,
             device: torch.device, seed: int = 0, log: Callable[[str], None] | None = None,
             dist: DistInfo | None = None, state_path: Path | None = None, train_loader: Any = None
             ) -> FinetuneResult:
    """Fine-tune ``model`` (a timm ViT with a classifier head) and keep its best validation epoch.

    ``val_scores(model, precision)`` gives predictions and labels of the whole validation part (the same
    on every process). With ``dist`` spanning several processes the steps run under DDP. With
    ``state_path`` each epoch ends with a checkpoint there, and a run finding one continues after it
    (``train_loader``: a loader whose ``state_dict`` positions the training data, when epochs share one).
    """
    dist = dist or DistInfo()
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    if log is None:
        log = (lambda text: print(text, file=sys.stderr)) if dist.is_main else (lambda text: None)
    ckpt.seed_everything(seed)
    tune_cpu_allocator(cfg.cpu_allocator, device)
    model.to(device)
    precision = Precision(cfg.precision, device)
    set_fused_attention(model, precision.prefers_fused_attention())  # as pretraining: per device and precision
    groups = layer_decay_groups(model, cfg.weight_decay, cfg.layer_decay, depth)
    precision.attach(model)
    if cfg.accum_steps < 1:
        raise UserError(f"finetune.accum_steps={cfg.accum_steps}; it must be at least 1")
    accum = cfg.accum_steps
    peak = cfg.base_lr * cfg.batch_size * accum * dist.world / 256
    optimizer = build_adamw(precision.optimizer_groups(groups), peak, (0.9, 0.999), device)
    trained: nn.Module = model
    if dist.enabled:  # DDP starts every process from rank 0's weights (the new head included)
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        ckpt.seed_everything(seed + 1000 * dist.rank)  # own drop-path and mixup draws per process
    total = max(1, cfg.epochs * steps_per_epoch)
    schedule = WarmupCosine(peak, total, round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr)
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                      num_classes=num_classes)
        soft_loss = SoftTargetCrossEntropy()

    best: FinetuneResult | None = None
    history: list[dict] = []
    step, done = 0, 0
    if cfg.resume not in ("auto", "never"):
        raise UserError(f"finetune.resume={cfg.resume!r}; choose auto or never")
    if state_path is not None and cfg.resume == "auto" and state_path.exists():
        saved = ckpt.load(state_path)
        if saved.get("format") != FINETUNE_FORMAT:
            raise UserError(f"{state_path} is not a mimx fine-tuning state; delete it or set finetune.resume=never")
        precision.load_model_state(model, saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step, done, history = int(saved["step"]), int(saved["epoch"]), list(saved["history"])
        best = FinetuneResult(int(saved["best_epoch"]), float(saved["best_val_top1"]), saved["best_state"])
        mine = saved["ranks"][dist.rank]
        ckpt.set_rng_state(mine["rng"])
        if train_loader is not None:
            train_loader.load_state_dict(mine["data"])
        log(f"[mimx] finetune: continuing after epoch {done}/{cfg.epochs} from {state_path}")

    def save_state(epoch: int) -> None:  # collective: every process gives its random and data state
        assert best is not None
        ranks = gather_objects({"rng": ckpt.rng_state(),
                                "data": train_loader.state_dict() if train_loader is not None else {}})
        if dist.is_main:
            ckpt.save_atomic({"format": FINETUNE_FORMAT, "epoch": epoch, "step": step,
                              "model": precision.model_state(model), "optimizer": optimizer.state_dict(),
                              "history": history, "best_epoch": best.best_epoch,
                              "best_val_top1": best.best_val_top1, "best_state": best.state_dict,
                              "ranks": ranks}, state_path)

    full = cfg.batch_size * accum  # samples of a whole optimiser step on one process

    def optimizer_step(samples: int) -> None:
        if samples != full:  # a short step (an epoch's last): the gradient of the mean over its samples
            grads = [t.grad for t in precision.trainable(model) if t.grad is not None]
            torch._foreach_mul_(grads, full / samples)
        precision.step(optimizer, model, cfg.clip_grad)

    stopped = None
    for epoch in range(done + 1, cfg.epochs + 1):
        model.train()
        start, seen, running = time.perf_counter(), 0, torch.zeros((), device=device)
        micro = taken = 0
        for batch in train_epoch(epoch):
            x, y = prepare(batch)
            if mixup is not None and len(x) % 2 == 0:
                x, soft = mixup(x, y)
            else:
                soft = None
            if micro == 0:
                schedule.apply(optimizer, min(step, total - 1))
            micro += 1
            # DDP reduces on the last micro-step only (bf16-pure moves gradients after every backward)
            sync = micro == accum or not dist.enabled or precision.keeps_masters
            with contextlib.nullcontext() if sync else trained.no_sync():
                with precision.autocast():
                    logits = trained(x.to(precision.input_dtype))
                    if soft is not None:
                        loss = soft_loss(logits.float(), soft)
                    else:
                        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                precision.backward(loss * (len(x) / full))  # each sample weighs the same
            running += loss.detach().float() * len(x)  # no host sync per step
            seen += len(x)
            taken += len(x)
            if micro == accum:
                optimizer_step(taken)
                step, micro, taken = step + 1, 0, 0
        if micro:
            optimizer_step(taken)
            step += 1
        train_loss = float(all_reduce_mean(running / max(1, seen)))
        pred, labels = val_scores(model, precision)
        val = 100.0 * float((pred == labels).float().mean())
        history.append({"epoch": epoch, "train_loss": train_loss, "val_top1": val,
                        "seconds": time.perf_counter() - start})
        log(f"[mimx] finetune epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f}, val top-1 {val:.2f}%")
        if best is None or val > best.best_val_top1:
            best = FinetuneResult(epoch, val, {k: v.detach().cpu().clone() for k, v in
                                               precision.model_state(model).items()})
        if state_path is not None:
            save_state(epoch)
        if cfg.stop_at_epoch is not None and epoch >= cfg.stop_at_epoch and epoch < cfg.epochs:
            stopped = epoch
            break
    assert best is not None
    best.history = history
    best.stopped_at_epoch = stopped
    if precision.pure:  # hand back an fp32 model with the best weights
        model.float()
    model.load_state_dict(best.state_dict)
    return best
