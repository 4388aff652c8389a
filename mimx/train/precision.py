"""Numeric precision of training: fp32, bf16 autocast, pure bf16 with fp32 master weights, fp16 autocast.

``bf16`` (autocast) keeps fp32 weights and casts inputs of matmuls to bf16.
``bf16-pure`` stores the model in bf16 end to end (activations, LayerNorm
outputs, residual stream) and keeps an fp32 master copy of every weight, its
gradient and the optimizer state: gradients are added into fp32 after each
backward, the optimizer updates the fp32 masters, and the bf16 weights are
refreshed from them. Checkpoints hold the fp32 masters. Under FSDP
(``sharded``) the sharded fp32 weights are the masters and FSDP gathers them in
bf16 for compute, so no separate copy is kept here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from mimx.config import UserError
from mimx.transformer import FUSED_UNLESS_GRAD, FusedUnlessGrad

MODES = ("auto", "fp32", "bf16", "bf16-pure", "fp16")


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_mode(spec: str, device: torch.device) -> str:
    """The concrete mode for ``train.precision`` on ``device`` (``auto``: bf16 where it is fast, else fp32)."""
    if spec not in MODES:
        raise UserError(f"train.precision={spec!r}; choose one of {', '.join(MODES)}")
    if spec == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if spec == "fp16" and device.type != "cuda":
        raise UserError("train.precision=fp16 needs a GPU; on the CPU use bf16, bf16-pure or fp32")
    return spec


class Precision:
    """Owns the autocast context, the loss scaler and (for ``bf16-pure``) the fp32 master weights."""

    def __init__(self, spec: str, device: torch.device, sharded: bool = False) -> None:
        self.mode = resolve_mode(spec, device)
        self.device = device
        self.sharded = sharded
        if sharded and self.mode == "fp16":
            raise UserError("train.strategy=fsdp trains in fp32, bf16 or bf16-pure; fp16 loss scaling of sharded "
                            "gradients is not supported: use train.precision=bf16")
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.mode == "fp16")
        self.masters: dict[str, torch.Tensor] = {}
        self._pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._first_backward = True  # bf16-pure: the masters' gradients hold nothing of this step yet

    @classmethod
    def for_fp32_model(cls, spec: str, device: torch.device) -> Precision:
        """The precision for a model that stays fp32 (no masters to keep): ``bf16-pure`` runs as bf16
        autocast, every other mode as itself."""
        return cls("bf16" if spec == "bf16-pure" else spec, device)

    @property
    def pure(self) -> bool:
        return self.mode == "bf16-pure"

    @property
    def keeps_masters(self) -> bool:
        """True when this object holds fp32 master weights (``bf16-pure`` without FSDP)."""
        return self.pure and not self.sharded

    @property
    def param_dtype(self) -> torch.dtype | None:
        """The dtype FSDP gathers weights in (``bf16-pure`` under FSDP), else ``None``."""
        return torch.bfloat16 if self.pure and self.sharded else None

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype a task should give the model's inputs."""
        return torch.bfloat16 if self.pure else torch.float32

    def label(self) -> str:
        return self.mode

    def prefers_fused_attention(self) -> bool | FusedUnlessGrad:
        """Fused SDPA, except when training in bf16 on the CPU, where its backward is slower than
        matmul + softmax (its forward stays the faster one, so inference keeps it)."""
        return True if self.device.type != "cpu" or self.mode == "fp32" else FUSED_UNLESS_GRAD

    def attach(self, model: nn.Module) -> None:
        """For ``bf16-pure``: keep fp32 masters of the trainable weights, then cast the model to bf16
        (under FSDP only the buffers: the weights stay fp32 shards, see :attr:`param_dtype`)."""
        if not self.pure:
            return
        if self.sharded:
            from mimx.train.sharding import cast_buffers

            cast_buffers(model, torch.bfloat16)
            return
        self.masters = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                master = p.detach().clone().float()
                master.grad = torch.zeros_like(master)
                self.masters[name] = master
        model.to(torch.bfloat16)
        params = dict(model.named_parameters())
        self._pairs = [(params[name], master) for name, master in self.masters.items()]

    def optimizer_groups(self, groups: list[dict]) -> list[dict]:
        """Point parameter groups (built from the model, with ``names``) at the fp32 masters."""
        if not self.keeps_masters:
            return groups
        return [{**g, "params": [self.masters[n] for n in g["names"]]} for g in groups]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.mode in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        if not self.keeps_masters:
            return
        # move the bf16 gradients into the fp32 masters' and free them: the step's first backward
        # copies (a casting copy, no fp32 temporary and no zeroing pass), later micro-steps add
        with_grad = [(p, m) for p, m in self._pairs if p.grad is not None]
        master_grads = [m.grad for _, m in with_grad]
        model_grads = [p.grad for p, _ in with_grad]
        if self._first_backward:
            torch._foreach_copy_(master_grads, model_grads)
            untouched = [m.grad for p, m in self._pairs if p.grad is None]
            if untouched:
                torch._foreach_zero_(untouched)
            self._first_backward = False
        else:
            torch._foreach_add_(master_grads, model_grads)
        for p, _ in with_grad:
            p.grad = None

    def trainable(self, model: nn.Module) -> list[torch.Tensor]:
        """The tensors whose ``.grad`` the optimizer reads (for clipping)."""
        if self.keeps_masters:
            return [m for _, m in self._pairs]
        return [p for p in model.parameters() if p.requires_grad]

    def step(self, optimizer: torch.optim.Optimizer, model: nn.Module, clip: float | None) -> None:
        if clip:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.trainable(model), clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        if self.keeps_masters:
            with torch.no_grad():
                torch._foreach_copy_([p for p, _ in self._pairs], [m for _, m in self._pairs])
            self._first_backward = True  # the next backward overwrites the masters' gradients
        else:
            optimizer.zero_grad(set_to_none=True)

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict, with fp32 masters in place of bf16 weights."""
        state = model.state_dict()
        return {k: self.masters.get(k, v) for k, v in state.items()}

    def load_model_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(state)
        if self.keeps_masters:
            with torch.no_grad():
                for name, master in self.masters.items():
                    master.copy_(state[name])
