"""The training engine shared by every modality's ``pretrain`` action.

Step-based: the schedule, checkpoints and logs count optimiser steps. One step
is ``accum_steps`` micro-batches of ``batch_size`` on each of ``world``
processes; lr = ``base_lr * global_batch / 256`` unless ``lr`` is set.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from mimx.config import UserError
from mimx.train import checkpoint as ckpt
from mimx.train import sharding
from mimx.train.allocator import tune_cpu_allocator
from mimx.train.distributed import DistInfo, all_reduce_mean, any_rank, gather_objects
from mimx.train.metrics import MetricsLog
from mimx.train.optim import WarmupCosine, build_adamw, param_groups
from mimx.train.precision import Precision
from mimx.transformer import set_fused_attention

CHECKPOINT_FORMAT = "mimx-checkpoint/1"


@dataclass
class TrainConfig:
    """``train`` section of a pretraining config."""

    epochs: float = 100.0
    steps: int | None = None  # total optimiser steps; overrides epochs
    stop_at_step: int | None = None  # stop early (schedule unchanged); rerun to continue
    batch_size: int = 64  # per process and micro-step
    accum_steps: int = 1
    base_lr: float = 1.5e-4
    lr: float | None = None  # absolute peak lr; overrides base_lr scaling
    min_lr: float = 0.0
    warmup_epochs: float = 10.0
    warmup_steps: int | None = None
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float | None = None
    precision: str = "auto"  # auto | fp32 | bf16 (autocast) | bf16-pure (bf16 weights, fp32 masters) | fp16
    fused_attention: str | bool = "auto"  # auto (SDPA; matmul + softmax under autograd, bf16 on CPU) | true | false
    device: str = "auto"  # auto | cpu | cuda
    strategy: str = "auto"  # auto (DDP) | ddp | fsdp (weights, gradients and optimizer state sharded; FSDP2)
    data_timeout: float = 1800  # seconds without a batch from the data workers before the run stops, saying so
    cpu_allocator: str = "auto"  # auto (heap on the CPU: no page faults for large tensors every step) | heap | system
    compile: bool | str = False  # false | true (torch.compile's default mode) | reduce-overhead | max-autotune
    grad_checkpointing: bool = False
    seed: int = 0
    log_every: int = 20
    ckpt_every: int = 500
    keep_every: int | None = None  # also keep step-N.pt every N steps
    figure_every: int = 500
    resume: str = "auto"  # auto | never | path to a checkpoint
    init: str | None = None  # weights a new run starts from (mimx run, checkpoint, weights; or a converted format)
    tensorboard: bool = True
    progress: bool = True

    def validate(self) -> None:
        """Raise UserError naming the first key whose value cannot make a run."""
        optional_counts = {"steps": self.steps, "stop_at_step": self.stop_at_step}
        checks = [(v is None or v >= 1, k, "at least 1 (or null)") for k, v in optional_counts.items()]
        checks += [
            (self.keep_every is None or self.keep_every >= 0, "keep_every", ">= 0 (0 or null: off)"),
            (self.steps is not None or self.epochs > 0, "epochs", "> 0 (or set train.steps)"),
            (self.batch_size >= 1, "batch_size", "at least 1"),
            (self.accum_steps >= 1, "accum_steps", "at least 1"),
            (self.base_lr >= 0, "base_lr", ">= 0"),
            (self.lr is None or self.lr >= 0, "lr", ">= 0 (or null: base_lr x global batch / 256)"),
            (self.min_lr >= 0, "min_lr", ">= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs", ">= 0"),
            (self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", ">= 0 (or null)"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "[beta1, beta2], each in [0, 1)"),
            (self.clip_grad is None or self.clip_grad >= 0, "clip_grad", ">= 0 (0 or null: no clipping)"),
            (self.log_every >= 1, "log_every", "at least 1"),
            (self.ckpt_every >= 0, "ckpt_every", ">= 0 (0: only at the end)"),
            (self.figure_every >= 0, "figure_every", ">= 0 (0: no figures)"),
        ]
        for ok, key, want in checks:
            if not ok:
                raise UserError(f"train.{key} must be {want}, got {getattr(self, key)!r}")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(value: bool | str) -> str | None:
    """The ``torch.compile`` mode for ``train.compile`` (``None``: run eagerly)."""
    if value is False or str(value).lower() == "false":
        return None
    if value is True or str(value).lower() == "true":
        return "default"
    if value not in COMPILE_MODES:
        raise UserError(f"train.compile={value!r}; choose false, true or one of {', '.join(COMPILE_MODES)} "
                        "(reduce-overhead adds CUDA graphs on a GPU)")
    return value


class Task(Protocol):
    """What a modality gives the engine."""

    modality: str

    def meta(self) -> dict[str, Any]:
        """``{"architecture": ..., "model_config": ...}`` stored in checkpoints and compared on resume."""

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> torch.Tensor:
        """Loss of one micro-batch (called under autocast)."""

    def figure(self, model: nn.Module, path: Path) -> None:
        """Write a reconstruction figure (main process, eval mode, no grad)."""

    # optional: ``report() -> str``, a line on the data printed when training ends;
    # ``convert_weights(path) -> (state, meta)``: another library's saved model as mimx weights (``train.init``)


@dataclass
class StepContext:
    """Per-micro-step facts and random sources for :meth:`Task.loss`."""

    step: int
    rank: int
    world: int
    device: torch.device
    shared: torch.Generator  # on the device; same seed and state on every rank
    local: torch.Generator  # on the device; seeded per rank
    dtype: torch.dtype = torch.float32  # dtype of the model's inputs (bf16 under bf16-pure)
    # CPU generators for draws made on the host (block masks, Dirichlet budgets): reading a seed
    # from a device generator would wait for the GPU every step
    host_shared: torch.Generator = field(default_factory=torch.Generator)
    host_local: torch.Generator = field(default_factory=torch.Generator)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # loss terms to log as ``loss_<name>``

    def global_noise(self, batch: int, length: int) -> torch.Tensor:
        """Noise for this rank's slice of the global batch, so masks do not depend on the process count."""
        noise = torch.rand(self.world * batch, length, generator=self.shared, device=self.device)
        return noise[self.rank * batch : (self.rank + 1) * batch]


@dataclass
class TrainResult:
    step: int
    total_steps: int
    last_loss: float | None
    checkpoint: Path | None
    stopped_early: bool


class Trainer:
    """Runs pretraining with auto-resume, atomic checkpoints, metrics and figures."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, loader: Any, task: Task, run_dir: str | Path,
                 samples_per_epoch: int, dist: DistInfo, config: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.task = task
        self.loader = loader
        self.dist = dist
        self.run_dir = Path(run_dir)
        self.config = config or {}
        self.device = dist.device
        self.allocator = tune_cpu_allocator(cfg.cpu_allocator, self.device)
        self.strategy = sharding.resolve_strategy(cfg.strategy, dist.world)
        self.sharded = self.strategy == "fsdp"
        self.precision = Precision(cfg.precision, self.device, sharded=self.sharded)
        cfg.validate()

        self.global_batch = cfg.batch_size * cfg.accum_steps * dist.world
        self.samples_per_epoch = max(1, samples_per_epoch)
        steps_per_epoch = self.samples_per_epoch / self.global_batch
        self.total_steps = cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_epochs * steps_per_epoch)
        if cfg.warmup_steps is None and warmup >= self.total_steps > 1:
            # warmup_epochs outlasting a short run would leave the lr rising to the end, never decayed
            capped = max(1, self.total_steps // 10)
            if dist.is_main:
                print(f"[mimx] train.warmup_epochs={cfg.warmup_epochs:g} is {warmup} steps, as long as the run's "
                      f"{self.total_steps}; warming up over {capped} instead (set train.warmup_steps to choose)",
                      file=sys.stderr)
            warmup = capped
        elif warmup >= self.total_steps > 1 and dist.is_main:
            print(f"[mimx] train.warmup_steps={warmup} is as long as the run's {self.total_steps} steps: the lr "
                  "rises to the end and never decays (lower train.warmup_steps for a schedule)", file=sys.stderr)
        self.peak_lr = cfg.lr if cfg.lr is not None else cfg.base_lr * self.global_batch / 256
        self.schedule = WarmupCosine(self.peak_lr, self.total_steps, warmup, cfg.min_lr)

        # FSDP: the main process keeps an unsharded CPU copy to draw figures with (loaded when one is drawn;
        # train.figure_every=0 spares that memory)
        twin = self.sharded and dist.is_main and bool(cfg.figure_every)
        self.figure_model = copy.deepcopy(model).cpu() if twin else None
        self.model = model.to(self.device)
        if cfg.grad_checkpointing:
            for m in self.model.modules():
                if hasattr(m, "grad_checkpointing"):
                    m.grad_checkpointing = True
        choices = {"auto": self.precision.prefers_fused_attention(), "true": True, "false": False}
        fused = choices.get(str(cfg.fused_attention).lower())
        if fused is None:
            raise UserError(f"train.fused_attention={cfg.fused_attention!r}; choose auto, true or false")
        set_fused_attention(self.model, fused)
        mode = compile_mode(cfg.compile)  # a wrong value stops here, before a checkpoint is read
        self.precision.attach(self.model)
        if self.sharded:
            sharding.shard(self.model, self.precision.param_dtype)
        groups = param_groups(self.model, cfg.weight_decay)
        self.param_names = [name for g in groups for name in g["names"]]  # the optimizer's order
        self.optimizer = build_adamw(self.precision.optimizer_groups(groups), self.peak_lr, tuple(cfg.betas),
                                     self.device)
        self.shared = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.local = torch.Generator(device=self.device).manual_seed(cfg.seed * 1000 + 17 + dist.rank)
        self.host_shared = torch.Generator().manual_seed(cfg.seed * 1000 + 29)
        self.host_local = torch.Generator().manual_seed(cfg.seed * 1000 + 31 + dist.rank)
        self.step = 0
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"
        self._stop_requested = False
        self._resume()
        if cfg.init and self.step == 0:
            self._initialize(cfg.init)
        elif cfg.init and dist.is_main:
            print(f"[mimx] train.init ignored: the run continues from its own checkpoint at step {self.step}",
                  file=sys.stderr)

        wrapped: nn.Module = self.model
        if self.strategy == "ddp":
            ids = [self.device.index] if self.device.type == "cuda" else None
            # buffers that never change (a token target's codebook) are the same on every rank: not re-sent each step
            constant = [f"{name}.{buffer}" for name, m in self.model.named_modules()
                        for buffer in getattr(m, "constant_buffers", ())]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, constant)
            wrapped = DistributedDataParallel(self.model, device_ids=ids)
        if mode is not None:
            wrapped = torch.compile(wrapped, mode=mode)
        self.wrapped = wrapped

    # ------------------------------------------------------------------ checkpoints
    def _meta(self) -> dict[str, Any]:
        return {"modality": self.task.modality, **self.task.meta()}

    def _schedule_plan(self) -> dict[str, float]:
        """What the lr at each step depends on; a resumed run that changes any of it is told so."""
        plan = self.schedule
        return {"steps": plan.total, "warm-up steps": plan.warmup, "peak lr": plan.peak, "min lr": plan.floor}

    def _resume(self) -> None:
        spec = self.cfg.resume
        path = ckpt.resume_path(spec, self.run_dir)
        if path is None:
            return
        if not path.exists():
            raise UserError(f"train.resume={spec} does not exist; give a checkpoint path, auto or never")
        state = ckpt.load(path, map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{path} is not a mimx training checkpoint (format {state.get('format')!r}); "
                            "point train.resume at a checkpoints/last.pt, or start over with train.resume=never")
        ckpt.check_compatible(state["meta"], self._meta(), path)
        if self.sharded:
            sharding.load_model_state(self.model, state["model"])
            sharding.load_optimizer_state(self.model, self.optimizer, state["optimizer"], self.param_names)
        else:
            self.precision.load_model_state(self.model, state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.precision.scaler.is_enabled():
            self.precision.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        planned = state.get("schedule") or {"steps": state.get("total_steps")}  # older checkpoints: steps only
        changed = [f"{key} {planned[key]:g} -> {value:g}" for key, value in self._schedule_plan().items()
                   if planned.get(key) is not None and planned[key] != value]
        if changed and self.dist.is_main:
            print(f"[mimx] the lr schedule differs from the one this run started with ({', '.join(changed)}): "
                  f"from step {self.step} on the lr follows the new one", file=sys.stderr)
        ranks = state.get("ranks", [])
        if len(ranks) == self.dist.world:
            mine = ranks[self.dist.rank]
            ckpt.set_rng_state(mine["rng"])
            self.shared.set_state(mine["shared"].to(self.shared.get_state().device))
            self.local.set_state(mine["local"])
            if "host_local" in mine:  # checkpoints from before the host generators keep their seeds
                self.host_shared.set_state(mine["host_shared"])
                self.host_local.set_state(mine["host_local"])
            if hasattr(self.loader, "load_state_dict"):
                self.loader.load_state_dict(mine["data"])
        else:
            if self.dist.is_main:
                print(f"[mimx] checkpoint was written by {len(ranks)} process(es), this run has "
                      f"{self.dist.world}: random streams and data order restart from the seed", file=sys.stderr)
            if ranks and hasattr(self.loader, "load_state_dict"):
                self.loader.load_state_dict({**ranks[0]["data"], "world": None})
        if self.dist.is_main:
            print(f"[mimx] resumed from {path} at step {self.step}/{self.total_steps}", file=sys.stderr)

    def _initialize(self, path: str) -> None:
        """Start from ``train.init``'s weights (the optimizer starts fresh)."""
        state = ckpt.initial_weights(path, self._meta(), getattr(self.task, "convert_weights", None))
        self._keep_configured_constants(state, path)
        try:
            if self.sharded:
                sharding.load_model_state(self.model, state)
            else:
                self.precision.load_model_state(self.model, state)
        except RuntimeError as exc:
            raise UserError(f"train.init={path} does not fit this model: {str(exc)[:300]}") from None
        if self.dist.is_main:
            print(f"[mimx] starting from the weights of {path}", file=sys.stderr)

    def _keep_configured_constants(self, state: dict[str, torch.Tensor], path: str) -> None:
        """Constant buffers this run's config already filled (a BEiT codebook from ``model.codebook``) win over
        ``train.init``'s; each that differs, and each taken from the init instead, is said."""
        notes = []
        for name, module in self.model.named_modules():
            for buffer in getattr(module, "constant_buffers", ()):
                key = f"{name}.{buffer}" if name else buffer
                if not getattr(module, "loaded", False):
                    if key in state:
                        notes.append(f"{key} taken from {path}")
                    continue
                mine = getattr(module, buffer).detach().cpu()
                theirs = state.get(key)
                if theirs is not None and not (theirs.shape == mine.shape and torch.equal(theirs.to(mine), mine)):
                    notes.append(f"{key} kept as configured, not {path}'s (the init's head learned other ids; "
                                 "leave the setting out to keep the init's)")
                state[key] = mine
        if self.dist.is_main:
            for note in notes:
                print(f"[mimx] train.init: {note}", file=sys.stderr)

    def model_state(self) -> dict[str, torch.Tensor]:
        """The whole model state with fp32 weights (collective under FSDP: ``{}`` off the main process)."""
        if self.sharded:
            return sharding.full_model_state(self.model)
        return self.precision.model_state(self.model)

    def save(self, path: Path | None = None, model_state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write a full training checkpoint (collective: every rank must call it)."""
        if model_state is None:
            model_state = self.model_state()
        optimizer_state = (sharding.full_optimizer_state(self.model, self.optimizer, self.param_names)
                           if self.sharded else None)
        mine = {"rng": ckpt.rng_state(), "shared": self.shared.get_state(), "local": self.local.get_state(),
                "host_shared": self.host_shared.get_state(), "host_local": self.host_local.get_state(),
                "data": self.loader.state_dict() if hasattr(self.loader, "state_dict") else {}}
        ranks = gather_objects(mine)
        path = path or self.ckpt_path
        if self.dist.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "meta": self._meta(),
                "config": self.config,
                "step": self.step,
                "total_steps": self.total_steps,
                "schedule": self._schedule_plan(),
                "model": model_state,
                "optimizer": optimizer_state if self.sharded else self.optimizer.state_dict(),
                "scaler": self.precision.scaler.state_dict() if self.precision.scaler.is_enabled() else None,
                "ranks": ranks,
            }
            ckpt.save_atomic(state, path)
        return path

    # ------------------------------------------------------------------ loop
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_requested:  # second signal: stop now
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self._stop_requested = True
        if self.dist.is_main:
            print(f"\n[mimx] signal {signum}: finishing this step, writing a checkpoint, then stopping "
                  "(send it again to stop at once)", file=sys.stderr)

    def _figure(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """Draw the task's figure with the current weights (collective under FSDP, which gathers them unless
        ``state``, this step's :meth:`model_state`, is at hand)."""
        if not hasattr(self.task, "figure"):
            return
        model = self.model
        if self.sharded:
            state = sharding.full_model_state(self.model) if state is None else state
            if self.figure_model is not None:
                self.figure_model.load_state_dict(state)
            model = self.figure_model
        if not self.dist.is_main:
            return
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.precision.autocast():
                self.task.figure(model, self.run_dir / "figures" / f"step-{self.step:07d}.png")
        finally:
            model.train(was_training)

    def fit(self) -> TrainResult:
        cfg = self.cfg
        main = self.dist.is_main
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(self.run_dir, cfg.tensorboard) if main else None
        end = self.total_steps if cfg.stop_at_step is None else min(self.total_steps, cfg.stop_at_step)
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                previous[sig] = signal.signal(sig, self._on_signal)
        # a progress bar on a terminal; plain log lines when stderr goes to a file
        bar_on = main and cfg.progress and sys.stderr.isatty()
        lines_on = main and cfg.progress and not bar_on
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not bar_on, dynamic_ncols=True,
                   desc=self.task.modality)
        if main:
            print(f"[mimx] {self.task.modality} pretraining: {self.total_steps} steps of {self.global_batch} samples "
                  f"({self.dist.world} process(es) x {cfg.batch_size} x {cfg.accum_steps} accumulation"
                  f"{'' if self.strategy == 'single' else ', ' + self.strategy.upper()}), "
                  f"peak lr {self.peak_lr:.3g}, precision {self.precision.label()}, "
                  f"device {self.device} ({self.allocator} allocator), run folder {self.run_dir}", file=sys.stderr)
            if cfg.strategy == "fsdp" and self.strategy == "single":
                print("[mimx] train.strategy=fsdp with one process: nothing to shard, training unsharded "
                      "(launch with torchrun --nproc-per-node=N to shard)", file=sys.stderr)
        if self.step == 0 and cfg.figure_every:
            self._figure()
        self.model.train()
        data = iter(self.loader)
        running = torch.zeros((), device=self.device)
        running_parts: dict[str, torch.Tensor] = {}
        running_n = 0
        last_loss: float | None = None
        tick, tick_step = time.perf_counter(), self.step
        stopped = False
        try:
            while self.step < end:
                lr = self.schedule.apply(self.optimizer, self.step)
                for micro in range(cfg.accum_steps):
                    batch = next(data)
                    ctx = StepContext(self.step, self.dist.rank, self.dist.world, self.device,
                                      self.shared, self.local, self.precision.input_dtype,
                                      host_shared=self.host_shared, host_local=self.host_local)
                    # bf16-pure moves gradients to fp32 after every backward, so it reduces every micro-step;
                    # FSDP (no ``no_sync``) reduce-scatters every micro-step into the sharded gradients
                    sync = micro == cfg.accum_steps - 1 or not self.dist.enabled or self.precision.keeps_masters
                    no_sync = getattr(self.wrapped, "no_sync", None)
                    with contextlib.nullcontext() if sync or no_sync is None else no_sync():
                        with self.precision.autocast():
                            loss = self.task.loss(self.wrapped, batch, ctx)
                        self.precision.backward(loss / cfg.accum_steps)
                    running += loss.detach().float()
                    for name, part in ctx.parts.items():
                        running_parts[name] = running_parts.get(name, 0) + part.detach().float()
                    running_n += 1
                self.precision.step(self.optimizer, self.model, cfg.clip_grad)
                self.step += 1
                bar.update(1)

                at_end = self.step >= end
                if self.step % cfg.log_every == 0 or at_end:
                    mean_loss = all_reduce_mean(running / max(1, running_n)).item()
                    if not math.isfinite(mean_loss):
                        raise FloatingPointError(
                            f"loss is {mean_loss} at step {self.step}; lower train.base_lr, add "
                            "train.clip_grad=1.0 or use train.precision=fp32. The last checkpoint is intact: "
                            f"{self.ckpt_path}")
                    last_loss = mean_loss
                    now = time.perf_counter()
                    speed = (self.step - tick_step) * self.global_batch / max(1e-9, now - tick)
                    tick, tick_step = now, self.step
                    running.zero_()
                    parts = {f"loss_{name}": round(all_reduce_mean(total / max(1, running_n)).item(), 6)
                             for name, total in sorted(running_parts.items())}
                    running_parts.clear()
                    running_n = 0
                    skipped = getattr(getattr(self.loader, "skips", None), "count", 0)
                    if main:
                        row = {"epoch": round(self.step * self.global_batch / self.samples_per_epoch, 4),
                               "loss": round(mean_loss, 6), "lr": lr, "samples_per_s": round(speed, 2),
                               "skipped": skipped, **parts}
                        metrics.log(row, self.step)
                        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", sps=f"{speed:.1f}")
                        if lines_on:
                            detail = "".join(f" {k[5:]} {v:.4f}" for k, v in parts.items())
                            print(f"[mimx] step {self.step}/{self.total_steps} epoch {row['epoch']:.2f} "
                                  f"loss {mean_loss:.4f}{f' ({detail.strip()})' if detail else ''} lr {lr:.2e} "
                                  f"{speed:.1f} samples/s", file=sys.stderr)
                    stopped = any_rank(self._stop_requested, self.device)
                if not self.dist.enabled:
                    stopped = self._stop_requested
                due_ckpt = bool(cfg.ckpt_every) and self.step % cfg.ckpt_every == 0 and not at_end
                due_keep = bool(cfg.keep_every) and self.step % cfg.keep_every == 0
                due_figure = bool(cfg.figure_every) and self.step % cfg.figure_every == 0 and not at_end
                # every rank takes part: FSDP gathers the weights, once for all that is due at this step
                state = self.model_state() if self.sharded and due_ckpt + due_keep + due_figure > 1 else None
                if due_ckpt:
                    self.save(model_state=state)
                if due_keep:
                    self.save(self.run_dir / "checkpoints" / f"step-{self.step:07d}.pt", model_state=state)
                if due_figure:
                    self._figure(state)
                state = None
                if stopped:
                    break
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        final = self.model_state()
        path = self.save(model_state=final)
        if cfg.figure_every:
            self._figure(final)
        if main:
            if self.step >= self.total_steps:
                self._export_weights(final)
            metrics.close()
            report = getattr(getattr(self.loader, "skips", None), "report", lambda: "")()
            state = "finished" if self.step >= self.total_steps else "stopped (run again to continue)"
            loss_text = f"loss {last_loss:.4f}" if last_loss is not None else "no step logged in this call"
            print(f"[mimx] {state} at step {self.step}/{self.total_steps}; {loss_text}; checkpoint {path}",
                  file=sys.stderr)
            if report:
                print(f"[mimx] data: {report}", file=sys.stderr)
            task_report = getattr(self.task, "report", None)
            if task_report is not None and task_report():
                print(f"[mimx] data: {task_report()}", file=sys.stderr)
        return TrainResult(self.step, self.total_steps, last_loss, path, self.step < self.total_steps)

    def _export_weights(self, state: dict[str, torch.Tensor]) -> None:
        meta = {"modality": self.task.modality, "format": "mimx-weights/1", "step": str(self.step),
                **{k: json.dumps(v) for k, v in self.task.meta().items()}}
        ckpt.write_safetensors(state, self.run_dir / "model.safetensors", meta)
